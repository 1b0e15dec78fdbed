/*
 * generate.c -- the request loop behind ampr_generate(), top to bottom:
 *
 *   tokenize the prompt -> choose the tier (ampr_route unless fixed) ->
 *   reserve KV pages in that tier's arena for prompt + max_tokens ->
 *   prefill the prompt in chunks -> repeat { error signals (maybe escalate
 *   to the top tier); sample; detokenize (whole UTF-8 characters only);
 *   check stop strings; stream; decode step (batched with the other
 *   requests on the tier); every check_every tokens the KL check } ->
 *   release the pages -> build the result.
 *
 * Everything a request owns lives in `struct request`, so concurrent requests
 * on one context share nothing but the read-only weights, the arenas' free
 * lists (locked), the tiers' decode queues (locked) and the thread pool
 * (locked per forward pass).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <time.h>

#include "backend/backend.h"
#include "generate.h"
#include "sampler/sampler.h"

#define PREFILL_CHUNK 256
/* A nucleus without top-k asks for a list (sampler.h) until NUCLEUS_MISSES
 * lists in a row could not decide (the distribution is flat: its nucleus is
 * longer than a list, and the row came after the list anyway); then for
 * NUCLEUS_ROWS steps it asks for the row at once, and tries lists again. */
#define NUCLEUS_MISSES 4
#define NUCLEUS_ROWS 16

/* ---- routing ------------------------------------------------------------ */

void ampr__route(ampr_ctx *c, const char *prompt, size_t len, const char *system,
                 size_t system_len, ampr_route_result *out) {
    const ampr__router_config *rc = &c->cfg.router;
    float f[AMPR__F_COUNT];
    ampr__router_features(prompt, len, f);
    float score = ampr__router_score(rc, f);
    float user_score = score;
    if (system && system_len) {
        float fs[AMPR__F_COUNT];
        ampr__router_features(system, system_len, fs);
        score = (1.0f - rc->system_weight) * score + rc->system_weight * ampr__router_score(rc, fs);
    }
    int idx; /* index into c->tiers (top first) */
    const char *band;
    if (score < rc->thresholds[0]) { idx = c->n_tiers - 1; band = "below t_low"; }
    else if (score < rc->thresholds[1]) { idx = c->n_tiers >= 3 ? 1 : c->n_tiers - 1; band = "between t_low and t_high"; }
    else { idx = 0; band = "at or above t_high"; }
    memset((char *)out + sizeof(uint32_t), 0, sizeof *out - sizeof(uint32_t));
    out->tier = c->tiers[idx].id;
    out->score = score;
    memcpy(out->features, f, sizeof f);
    /* name the feature that contributed most */
    int top = 0;
    for (int i = 1; i < AMPR__F_COUNT; i++)
        if (rc->weights[i] * f[i] > rc->weights[top] * f[top]) top = i;
    static const char *const names[AMPR__F_COUNT] = {"lexical density", "code markers", "math operators",
                                                     "digits", "length", "non-ASCII"};
    snprintf(out->reason, sizeof out->reason,
             "score %.3f (user %.3f) %s [%.2f, %.2f] -> %s; strongest feature: %s %.2f", score,
             user_score, band, rc->thresholds[0], rc->thresholds[1], ampr_tier_name(out->tier),
             names[top], f[top]);
    ampr__metrics_route(&c->metrics, out->tier);
}

/* ---- text buffer with streaming and stop strings ------------------------ */

typedef struct textbuf {
    char *s;
    size_t len, cap;
    size_t emitted; /* bytes already handed to the callback */
} textbuf;

static ampr_status text_append(textbuf *b, const char *p, size_t n, ampr__err *err) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *s = ampr__realloc(b->s, cap);
        if (!s) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for generated text");
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
    return AMPR_OK;
}

/* First occurrence of any stop string that ends in the new bytes [from, len);
 * returns its start, or -1. */
static long find_stop(const textbuf *b, const ampr_gen_params *p, size_t from) {
    long best = -1;
    for (size_t k = 0; k < p->n_stop; k++) {
        const char *st = p->stop[k];
        size_t sl = st ? strlen(st) : 0;
        if (!sl || sl > b->len) continue;
        size_t start = from >= sl - 1 ? from - (sl - 1) : 0;
        for (size_t i = start; i + sl <= b->len; i++)
            if (!memcmp(b->s + i, st, sl)) {
                if (best < 0 || (long)i < best) best = (long)i;
                break;
            }
    }
    return best;
}

/* Bytes at the end of the text that could still grow into a stop string. */
static size_t stop_holdback(const textbuf *b, const ampr_gen_params *p) {
    size_t hold = 0;
    for (size_t k = 0; k < p->n_stop; k++) {
        const char *st = p->stop[k];
        size_t sl = st ? strlen(st) : 0;
        for (size_t l = AMPR__MIN(sl - (sl > 0), b->len); l > hold; l--)
            if (!memcmp(b->s + b->len - l, st, l)) { hold = l; break; }
    }
    return hold;
}

/* ---- the request -------------------------------------------------------- */

static void decoders_add(ampr__tier *t, int d);

struct request {
    ampr__tier *tier;     /* the tier producing tokens now */
    ampr__tier *decoding; /* the tier counting it in n_decoding (decode batching) */
    ampr__tier *top;      /* the escalation target (the context's top tier) */
    ampr__kv_seq seq;     /* KV of `tier` */
    ampr__kv_seq seq_top; /* KV of `top` while checking or after escalating */
    ampr__scratch scratch;/* forward scratch; scratch.logits row 0 = next-token logits */
    ampr__scratch check;  /* scratch for the top tier's catch-up passes */
    ampr__sampler sampler;
    int32_t *ids;         /* prompt then generated ids */
    size_t n_ids, cap_ids;
    int32_t n_positions;  /* KV positions reserved per sequence */
    /* A lower tier under the fallback's checks: the backend keeps the tier's
     * next-token rows in ring (slot = predicted index % check_window, where
     * the passes make them) and says each row's entropy; the KL check
     * compares the top tier's rows with them there (check_want, one per
     * position of the window). The host sees neither row. */
    ampr__ring *ring;
    ampr__row_want *check_want;
    float entropy;        /* of the next-token logits in hand, while monitored */
    int nonfinite;        /* ... which hold a NaN or +inf */
    /* What the last decode step brought back (decode_step's want): the row
     * into scratch.logits, or for a greedy request its argmax (pending >= 0:
     * the next token), or for a temperature-only one its draw (pending, and
     * pending_drew: the RNG must step past the number it used), or for a
     * top-k one or a nucleus its n_cands largest logits (n_cands > 0; a
     * nucleus's with the row's mass). Both -1 / 0 when scratch.logits holds
     * the row. */
    int32_t pending;
    int pending_drew;
    int32_t n_cands;
    float cand_vals[AMPR__CANDS_MAX];
    int32_t cand_ids[AMPR__CANDS_MAX];
    double cand_mass;
    int32_t pen_ids[AMPR__PEN_MAX];  /* the ids a repetition penalty applies to (decode_step's want) */
    /* a nucleus without top-k: lists undecided in a row (its nucleus was
     * longer than a list), and steps left that ask for the row instead */
    int32_t nucleus_misses, nucleus_rows;
    float ent_ema;        /* smoothed next-token entropy */
    textbuf text;
    ampr__detok dt;
};

static void request_free(ampr_ctx *c, struct request *r) {
    decoders_add(r->decoding, -1);
    r->decoding = NULL;
    ampr__kv_seq_release(&r->seq);
    ampr__kv_seq_release(&r->seq_top);
    ampr__scratch_free(&r->scratch);
    ampr__scratch_free(&r->check);
    ampr__sampler_free(&r->sampler);
    ampr__free(r->ids);
    ampr__backend_ring_free(c, r->ring);
    ampr__free(r->check_want);
    ampr__free(r->text.s);
}

static ampr_status choose_tier(ampr_ctx *c, const char *prompt, size_t len, const ampr_gen_params *p,
                               ampr__tier **out, ampr__err *err) {
    ampr_tier id = p->tier;
    if (id == AMPR_TIER_AUTO) {
        ampr_route_result rr;
        ampr_route_result_init(&rr);
        ampr__route(c, prompt, len, NULL, 0, &rr);
        id = rr.tier;
    }
    *out = ampr__ctx_tier(c, id);
    if (!*out) {
        if ((unsigned)id >= AMPR_TIER_COUNT)
            return ampr__fail(err, AMPR_ERR_INVALID_ARG, "tier %d is not a tier", (int)id);
        return ampr__fail(err, AMPR_ERR_TIER_UNAVAILABLE,
                          "tier %s is not resident (the config's \"tiers\" list decides)",
                          ampr_tier_name(id));
    }
    return AMPR_OK;
}

/* ---- batched decode steps ------------------------------------------------- */

/* One request's next-token step, queued on its tier. */
typedef struct ampr__step {
    ampr__kv_seq *seq;
    int32_t token;
    float *logits;        /* where its next-token logits go (vocab floats), when asked */
    ampr__row_want *want; /* what the request needs of them (sampler.h) */
    ampr__err *err;
    ampr_status st;
    int done;
    struct ampr__step *next;
} ampr__step;

/* Run items[0..n) as one forward pass; every item gets its status. */
static void run_batch(ampr_ctx *c, ampr__tier *t, ampr__step **items, int32_t n) {
    ampr__err berr = {0};
    ampr_status st = AMPR_OK;
    if (!t->batch_scratch) {
        t->batch_scratch = ampr__calloc(1, sizeof *t->batch_scratch);
        st = t->batch_scratch
                 ? ampr__scratch_new(c, AMPR__BATCH_MAX, AMPR__BATCH_MAX, t->batch_scratch, &berr)
                 : ampr__fail(&berr, AMPR_ERR_NOMEM, "out of memory for the decode batch");
        if (st) {
            ampr__free(t->batch_scratch);
            t->batch_scratch = NULL;
        }
    }
    ampr__kv_seq *seqs[AMPR__BATCH_MAX];
    int32_t tokens[AMPR__BATCH_MAX];
    ampr__row_want want[AMPR__BATCH_MAX];
    for (int32_t i = 0; i < n; i++) {
        seqs[i] = items[i]->seq;
        tokens[i] = items[i]->token;
        want[i] = *items[i]->want; /* its candidate buffers are the request's */
    }
    if (st == AMPR_OK) st = ampr__backend_decode_batch(c, t, seqs, tokens, n, want, t->batch_scratch, &berr);
    for (int32_t i = 0; i < n; i++) {
        items[i]->st = st;
        if (st != AMPR_OK) {
            ampr__fail(items[i]->err, st, "%s", berr.msg);
            continue;
        }
        *items[i]->want = want[i];
        if (ampr__row_came(&want[i])) {
            __atomic_add_fetch(&c->test_rows_back, 1, __ATOMIC_RELAXED);
            memcpy(items[i]->logits, t->batch_scratch->logits + (size_t)i * (size_t)c->hp.vocab_size,
                   (size_t)c->hp.vocab_size * sizeof(float));
        }
    }
}

/* How long a leader waits for the other requests generating on its tier to
 * queue their next steps (they are sampling their tokens meanwhile). */
#define BATCH_GATHER_US 1000

/* A request starts (d = 1) or stops (d = -1) generating on tier t. */
static void decoders_add(ampr__tier *t, int d) {
    if (!t) return;
    pthread_mutex_lock(&t->batch_mu);
    t->n_decoding += d;
    if (!t->batch_busy) pthread_cond_broadcast(&t->batch_cv); /* a gathering leader re-checks */
    pthread_mutex_unlock(&t->batch_mu);
}

/* Feed one token to seq and get what want asks of its next-token logits:
 * the row into logits, or its argmax, or its largest (want, sampler.h; a
 * device backend then copies bytes, not the row). Concurrent requests
 * on the same tier share the step: the first to find the tier idle takes
 * everything queued (up to AMPR__BATCH_MAX) and runs it as one batch, so the
 * weights are read once for all of them; the others wait for their turn.
 * Before it starts, the leader gives the other requests generating on the
 * tier up to BATCH_GATHER_US to queue theirs, so that a batch does not split
 * into a batch of the quickest request and a batch of the rest. */
static ampr_status decode_step(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq, int32_t token,
                               float *logits, ampr__row_want *want, ampr__err *err) {
    ampr__step me = {seq, token, logits, want, err, AMPR_OK, 0, NULL};
    pthread_mutex_lock(&t->batch_mu);
    if (t->queue_tail) t->queue_tail->next = &me;
    else t->queue = &me;
    t->queue_tail = &me;
    t->n_queued++;
    if (t->batch_busy == 0 && t->n_queued > 1) pthread_cond_broadcast(&t->batch_cv);
    int gathered = 0;
    while (!me.done) {
        if (t->batch_busy) {
            pthread_cond_wait(&t->batch_cv, &t->batch_mu);
            continue;
        }
        if (!gathered && t->n_queued < AMPR__MIN(t->n_decoding, AMPR__BATCH_MAX)) {
            struct timespec deadline;
            ampr__deadline_in(&deadline, BATCH_GATHER_US);
            gathered = 1;
            while (!t->batch_busy && !me.done &&
                   t->n_queued < AMPR__MIN(t->n_decoding, AMPR__BATCH_MAX))
                if (pthread_cond_timedwait(&t->batch_cv, &t->batch_mu, &deadline) == ETIMEDOUT) break;
            continue; /* someone else may have started the batch meanwhile */
        }
        t->batch_busy = 1;
        ampr__step *items[AMPR__BATCH_MAX];
        int32_t n = 0;
        while (t->queue && n < AMPR__BATCH_MAX) {
            items[n++] = t->queue;
            t->queue = t->queue->next;
        }
        if (!t->queue) t->queue_tail = NULL;
        t->n_queued -= n;
        pthread_mutex_unlock(&t->batch_mu);
        run_batch(c, t, items, n);
        pthread_mutex_lock(&t->batch_mu);
        for (int32_t i = 0; i < n; i++) items[i]->done = 1;
        t->n_batches++;
        t->n_batched += (uint64_t)n;
        t->batch_busy = 0;
        pthread_cond_broadcast(&t->batch_cv);
    }
    pthread_mutex_unlock(&t->batch_mu);
    return me.st;
}

/* What the fallback's monitor asks of the row predicting ids[n_ids] on a
 * lower tier (struct request): its entropy, and to keep it in the ring's
 * slot for that index (the KL check's). */
static void monitor_ask(const struct request *r, int32_t check_window, ampr__row_want *w) {
    w->stats = 1;
    w->keep = r->ring;
    w->keep_slot = r->ring ? (int32_t)(r->n_ids % (size_t)check_window) : 0;
}

/* Bring the top tier's sequence up to all r->ids, in batched passes, leaving
 * the logits of the last n_logits positions in r->check.logits, or what
 * want[0..n_logits) asks of them (backend.h; want NULL: the rows). Positions
 * the top tier has seen already but whose logits are asked for (a check
 * window longer than the checks' spacing; an escalation right after a
 * check) are scored again: their K/V are written again, the same. */
static ampr_status top_catch_up(ampr_ctx *c, struct request *r, int32_t n_logits, ampr__row_want *want,
                                ampr__err *err) {
    if (!r->check.logits) {
        int32_t w = AMPR__MAX(1, c->cfg.fallback.check_window);
        AMPR__TRY(ampr__scratch_new(c, PREFILL_CHUNK, AMPR__MIN(w, PREFILL_CHUNK), &r->check, err));
    }
    AMPR__TRY(ampr__kv_seq_reserve_wait(&r->seq_top, r->top->kv, r->n_positions,
                                        c->cfg.kv_wait_ms, err));
    int32_t to = (int32_t)r->n_ids;
    if (n_logits < 1 || n_logits > to)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "top tier logits for %d of %d positions", n_logits, to);
    if (r->seq_top.n_tokens > to - n_logits) r->seq_top.n_tokens = to - n_logits;
    int32_t from = r->seq_top.n_tokens;
    int32_t split = to - n_logits; /* [from, split) without logits, [split, to) with */
    for (int32_t i = from; i < split; i += PREFILL_CHUNK) {
        int32_t k = AMPR__MIN(PREFILL_CHUNK, split - i);
        AMPR__TRY(ampr__backend_forward(c, r->top, &r->seq_top, r->ids + i, k, 1, NULL, &r->check, err));
    }
    return ampr__backend_forward(c, r->top, &r->seq_top, r->ids + split, to - split, to - split, want,
                                 &r->check, err);
}

/* Continue the request on the top tier from here. r->check.logits' last row
 * (row `row`) holds the top tier's next-token logits for the current position. */
static void switch_to_top(ampr_ctx *c, struct request *r, int32_t row) {
    memcpy(r->scratch.logits, r->check.logits + (size_t)row * (size_t)c->hp.vocab_size,
           (size_t)c->hp.vocab_size * sizeof(float));
    r->pending = -1; /* the logits in hand are these */
    r->pending_drew = 0;
    r->n_cands = 0;
    r->nucleus_misses = r->nucleus_rows = 0; /* another tier's rows */
    ampr__kv_seq_release(&r->seq);
    r->seq = r->seq_top;
    memset(&r->seq_top, 0, sizeof r->seq_top);
    r->tier = r->top;
}

/* fallback.restart, non-streaming: throw the output away and start over on
 * the top tier from the prompt (after switch_to_top; its KV for the prompt
 * is reused: no second reservation in the top tier's arena). */
static ampr_status restart_on_top(ampr_ctx *c, struct request *r, int32_t n_prompt,
                                  const ampr_gen_params *p, ampr__err *err) {
    r->seq_top = r->seq; /* switch_to_top made the top tier's sequence r->seq */
    memset(&r->seq, 0, sizeof r->seq);
    r->n_ids = (size_t)n_prompt;
    if (r->seq_top.n_tokens > n_prompt - 1) r->seq_top.n_tokens = n_prompt - 1;
    AMPR__TRY(top_catch_up(c, r, 1, NULL, err));
    switch_to_top(c, r, 0);
    r->text.len = r->text.emitted = 0;
    if (r->text.s) r->text.s[0] = '\0';
    ampr__detok_init(&r->dt);
    r->dt.prev = r->ids[n_prompt - 1];
    ampr__sampler_reseed(&r->sampler, p->seed);
    return AMPR_OK;
}

ampr_status ampr__generate(ampr_ctx *c, const char *prompt, size_t len, const ampr_gen_params *p,
                           ampr_result **out, ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    const ampr__fallback_config *fb = &c->cfg.fallback;
    const ampr__tokenizer *tok = c->model->tok;
    const int32_t V = hp->vocab_size;
    double t0 = ampr__now_ms();
    if (p->max_tokens < 0)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "max_tokens must be >= 0 (got %d)", p->max_tokens);
    if (p->n_stop && !p->stop)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "n_stop is %zu but stop is NULL", p->n_stop);
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature) || !(p->top_p >= 0.0f) ||
        !(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return ampr__fail(err, AMPR_ERR_INVALID_ARG,
                          "temperature and top_p must be >= 0, repetition_penalty > 0, and the "
                          "temperature and penalty finite");

    struct request r;
    memset(&r, 0, sizeof r);
    r.pending = -1;
    ampr_finish finish = AMPR_FINISH_LENGTH;
    ampr_status st;
    double t_first = 0;
    int32_t n_prompt = 0, n_gen = 0;
    ampr_tier tier_first = AMPR_TIER_AUTO;
    int32_t escalation_token = -1;
    char escalation_reason[64] = "";
    ampr__metrics_req mreq = ampr__metrics_req_begin(t0);

    /* 1. tokens */
    st = ampr__tok_encode(tok, prompt, len, p->add_bos, &r.ids, &r.n_ids, err);
    if (st) goto done;
    if (r.n_ids == 0) {
        st = ampr__fail(err, AMPR_ERR_PROMPT_EMPTY, "the prompt is empty and no BOS token is added");
        goto done;
    }
    if (r.n_ids > (size_t)hp->context_length) {
        st = ampr__fail(err, AMPR_ERR_PROMPT_TOO_LONG,
                        "the prompt is %zu tokens; the context window is %d", r.n_ids,
                        hp->context_length);
        goto done;
    }
    n_prompt = (int32_t)r.n_ids;
    r.n_positions = (int32_t)AMPR__MIN((int64_t)n_prompt + p->max_tokens, (int64_t)hp->context_length);
    r.cap_ids = (size_t)r.n_positions + 1;
    int32_t *grown = ampr__realloc(r.ids, r.cap_ids * sizeof(int32_t));
    if (!grown) {
        st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for %zu token ids", r.cap_ids);
        goto done;
    }
    r.ids = grown;

    /* 2. tier (routing), KV pages, scratch, sampler */
    st = choose_tier(c, prompt, len, p, &r.tier, err);
    if (st) goto done;
    tier_first = r.tier->id;
    ampr__metrics_req_start(&c->metrics, &mreq, tier_first);
    r.top = &c->tiers[0];
    /* watching: the fallback applies to this request; checking: its signals
     * are still read (a skipped escalation turns them off, but not the
     * watch for non-finite logits: a broken tier has no tokens to give) */
    int watching = p->fallback && fb->enabled && r.tier != r.top, checking = watching;
    st = ampr__kv_seq_reserve_wait(&r.seq, r.tier->kv, r.n_positions, c->cfg.kv_wait_ms, err);
    if (st) goto done;
    ampr__metrics_req_scheduled(&c->metrics, &mreq);
    st = ampr__scratch_new(c, AMPR__MIN(n_prompt, PREFILL_CHUNK), 1, &r.scratch, err);
    if (st) goto done;
    st = ampr__sampler_init(&r.sampler, V, p->temperature, p->top_k, p->top_p,
                            p->repetition_penalty, p->repetition_last_n, p->seed, err);
    if (st) goto done;
    if (checking && fb->check_every > 0) {
        st = ampr__backend_ring_new(c, fb->check_window, &r.ring, err);
        if (st) goto done;
        r.check_want = ampr__alloc_array((size_t)fb->check_window, sizeof *r.check_want, err);
        if (!r.check_want) { st = AMPR_ERR_NOMEM; goto done; }
    }

    /* 3. prefill; under checks the backend also says the last row's entropy
     * and keeps it (the monitor's, struct request) */
    for (int32_t i = 0; i < n_prompt; i += PREFILL_CHUNK) {
        int32_t n = AMPR__MIN(PREFILL_CHUNK, n_prompt - i);
        ampr__row_want mon = {.what = AMPR__WANT_ROW};
        monitor_ask(&r, fb->check_window, &mon);
        int last = i + n == n_prompt;
        st = ampr__backend_forward(c, r.tier, &r.seq, r.ids + i, n, 1, checking && last ? &mon : NULL,
                                   &r.scratch, err);
        if (st) goto done;
        r.entropy = mon.entropy;
        r.nonfinite = mon.nonfinite;
    }
    t_first = ampr__now_ms();

    /* 4. decode: r.scratch.logits always predicts ids[n_ids] */
    ampr__detok_init(&r.dt);
    r.dt.prev = r.ids[n_prompt - 1];
    int32_t eos = ampr__tok_eos(tok);
    char piece[AMPR__DETOK_MAX_PIECE + 16];
    for (n_gen = 0;; n_gen++) {
        if (n_gen >= p->max_tokens) { finish = AMPR_FINISH_LENGTH; break; }
        /* the logits in hand came from position n_ids - 1: once that was the
         * window's last position, the token they give is the last one */
        if (r.n_ids > (size_t)hp->context_length) { finish = AMPR_FINISH_CONTEXT; break; }
        float *logits = r.scratch.logits;

        /* 4a. early-warning signals on a lower tier */
        if (watching && r.tier != r.top) {
            if (checking) {
                float ent = r.entropy; /* the backend's, of the row in hand */
                r.ent_ema = n_gen == 0 ? ent : 0.75f * r.ent_ema + 0.25f * ent;
            }
            const char *why = NULL;
            if (r.nonfinite) why = "non-finite logits"; /* a broken tier: at once */
            else if (checking && n_gen >= fb->min_tokens) {
                if (fb->entropy_max > 0 && r.ent_ema > fb->entropy_max) why = "entropy";
                else if (fb->repeat_ngram > 0 &&
                         ampr__repeats(r.ids + n_prompt, (size_t)n_gen, fb->repeat_ngram,
                                       fb->repeat_window) >= fb->repeat_count)
                    why = "repetition";
            }
            if (why) {
                st = top_catch_up(c, &r, 1, NULL, err);
                if (st == AMPR_ERR_KV_FULL && r.nonfinite) { /* a broken tier has no tokens to go on with */
                    ampr__err_clear(err);
                    st = ampr__fail(err, AMPR_ERR_KV_FULL,
                                    "tier %s gave non-finite logits at token %d and the %s tier's KV arena "
                                    "has no room to take the request over",
                                    ampr_tier_name(r.tier->id), n_gen, ampr_tier_name(r.top->id));
                    goto done;
                }
                if (st == AMPR_ERR_KV_FULL) { /* cannot escalate: carry on, stop checking */
                    ampr__err_clear(err);
                    st = AMPR_OK;
                    checking = 0;
                    snprintf(escalation_reason, sizeof escalation_reason,
                             "skipped (top tier KV full) at %d: %.10s", n_gen, why);
                } else if (st) {
                    goto done;
                } else {
                    if (r.nonfinite) snprintf(escalation_reason, sizeof escalation_reason, "%s", why);
                    else snprintf(escalation_reason, sizeof escalation_reason, "%s (%.2f nats)", why, r.ent_ema);
                    escalation_token = n_gen;
                    switch_to_top(c, &r, 0);
                    if (fb->restart && !p->on_token) {
                        st = restart_on_top(c, &r, n_prompt, p, err);
                        if (st) goto done;
                        escalation_token = 0;
                        n_gen = -1;
                        continue;
                    }
                    logits = r.scratch.logits;
                }
            }
        }

        /* 4b. the next token (a greedy or temperature-only step's came with the step) */
        if (r.pending >= 0 && r.pending_drew) ampr__sampler_drew(&r.sampler);
        int32_t next = r.pending >= 0  ? r.pending
                       : r.n_cands > 0 ? ampr__sample_cands(&r.sampler, r.cand_vals, r.cand_ids, r.n_cands, r.cand_mass)
                                       : ampr__sample(&r.sampler, logits, r.ids, r.n_ids);
        r.pending = -1;
        r.pending_drew = 0;
        r.n_cands = 0;
        if (next == eos && !p->ignore_eos) { finish = AMPR_FINISH_EOS; break; }
        r.ids[r.n_ids++] = next;
        ampr__metrics_req_token(&c->metrics, &mreq, r.tier->id);

        /* 4c. text: whole UTF-8 characters, stop strings, streaming */
        size_t before = r.text.len;
        size_t k = ampr__detok_push(tok, &r.dt, next, piece, sizeof piece);
        st = text_append(&r.text, piece, k, err);
        if (st) goto done;
        long stop_at = p->n_stop ? find_stop(&r.text, p, before) : -1;
        int stopping = stop_at >= 0;
        if (stopping) {
            r.text.len = (size_t)stop_at;
            r.text.s[r.text.len] = '\0';
        }
        if (p->on_token) {
            size_t upto = stopping ? r.text.len : r.text.len - stop_holdback(&r.text, p);
            if (upto < r.text.emitted) upto = r.text.emitted;
            int cancel = p->on_token(p->user, r.text.s + r.text.emitted, upto - r.text.emitted, next);
            r.text.emitted = upto;
            if (cancel) { n_gen++; finish = AMPR_FINISH_CANCELLED; break; }
        }
        if (stopping) { n_gen++; finish = AMPR_FINISH_STOP; break; }
        if (n_gen + 1 >= p->max_tokens || r.n_ids > (size_t)hp->context_length) continue;

        /* 4d. forward the new token */
        if (r.decoding != r.tier) {
            decoders_add(r.decoding, -1);
            decoders_add(r.tier, 1);
            r.decoding = r.tier;
        }
        /* the host needs only what the draw needs (its argmax, or its largest
         * logits: sampler.h); on a lower tier under checks, the backend says
         * the row's entropy (4a) and keeps it for the KL check (4e) */
        ampr__row_want want = {0};
        ampr__sampler_want(&r.sampler, r.ids, r.n_ids, r.pen_ids, &want);
        int nucleus = want.what == AMPR__WANT_CANDS && want.top_k == 0;
        if (nucleus && r.nucleus_rows > 0) { /* a flat stretch: its lists would not decide */
            want.what = AMPR__WANT_ROW;
            nucleus = 0;
            r.nucleus_rows--;
        }
        if (c->full_logits) want.what = AMPR__WANT_ROW;
        if (nucleus && want.what == AMPR__WANT_CANDS) __atomic_add_fetch(&c->test_nucleus_lists, 1, __ATOMIC_RELAXED);
        want.cand_vals = r.cand_vals;
        want.cand_ids = r.cand_ids;
        if (checking && r.tier != r.top) monitor_ask(&r, fb->check_window, &want);
        else if (watching && r.tier != r.top) want.stats = 1; /* whether the row is finite */
        st = decode_step(c, r.tier, &r.seq, next, r.scratch.logits, &want, err);
        if (st) goto done;
        r.entropy = want.entropy;
        r.nonfinite = want.nonfinite;
        if (want.what == AMPR__WANT_ARGMAX) r.pending = want.argmax;
        if (want.what == AMPR__WANT_DRAW && want.drawn >= 0) { /* -1: the row came */
            r.pending = want.drawn;
            r.pending_drew = 1;
        }
        if (want.what == AMPR__WANT_CANDS) { /* n_cands 0: the row came */
            r.n_cands = want.n_cands;
            r.cand_mass = want.mass;
        }
        if (nucleus && want.what == AMPR__WANT_CANDS) { /* after NUCLEUS_MISSES undecided lists, rows */
            r.nucleus_misses = want.n_cands > 0 ? 0 : r.nucleus_misses + 1;
            if (r.nucleus_misses == NUCLEUS_MISSES) {
                r.nucleus_misses = 0;
                r.nucleus_rows = NUCLEUS_ROWS;
            }
        }

        /* 4e. the verification check against the top tier */
        if (checking && r.ring && r.tier != r.top && (n_gen + 1) % fb->check_every == 0) {
            int32_t w = AMPR__MIN(fb->check_window, n_gen + 1);
            /* row j of the check predicts index n_ids - w + 1 + j: the
             * backend compares it with the tier's row kept for that index;
             * the last comes back too (the logits in hand if we escalate) */
            for (int32_t j = 0; j < w; j++) {
                size_t idx = r.n_ids - (size_t)w + 1 + (size_t)j;
                r.check_want[j] = (ampr__row_want){
                    .what = j == w - 1 ? AMPR__WANT_ROW : AMPR__WANT_NONE,
                    .kl_ring = r.ring, .kl_slot = (int32_t)(idx % (size_t)fb->check_window)};
            }
            st = top_catch_up(c, &r, w, r.check_want, err);
            if (st == AMPR_ERR_KV_FULL) { /* no check possible: carry on unchecked */
                ampr__err_clear(err);
                st = AMPR_OK;
                checking = 0;
                snprintf(escalation_reason, sizeof escalation_reason,
                         "skipped (top tier KV full) at %d: kl-check", n_gen + 1);
                continue;
            }
            if (st) goto done;
            double kl = 0;
            for (int32_t j = 0; j < w; j++) kl += r.check_want[j].kl;
            kl /= w;
            if (kl > fb->kl_max) {
                snprintf(escalation_reason, sizeof escalation_reason, "kl-check (%.3f nats > %.3f)", kl,
                         fb->kl_max);
                escalation_token = n_gen + 1;
                switch_to_top(c, &r, w - 1);
                if (fb->restart && !p->on_token) {
                    st = restart_on_top(c, &r, n_prompt, p, err);
                    if (st) goto done;
                    escalation_token = 0;
                    n_gen = -1;
                }
            }
        }
    }
    if (finish != AMPR_FINISH_STOP && finish != AMPR_FINISH_CANCELLED) {
        size_t before = r.text.len;
        size_t k = ampr__detok_flush(&r.dt, piece, sizeof piece);
        st = text_append(&r.text, piece, k, err);
        if (st) goto done;
        /* the flushed bytes (U+FFFD for a dangling sequence) may complete a stop string */
        long stop_at = k && p->n_stop ? find_stop(&r.text, p, before) : -1;
        if (stop_at >= 0) {
            r.text.len = AMPR__MAX((size_t)stop_at, r.text.emitted);
            r.text.s[r.text.len] = '\0';
            finish = AMPR_FINISH_STOP;
        }
        if (p->on_token && r.text.len > r.text.emitted) {
            p->on_token(p->user, r.text.s + r.text.emitted, r.text.len - r.text.emitted, -1);
            r.text.emitted = r.text.len;
        }
    }
    st = finish == AMPR_FINISH_CANCELLED ? AMPR_ERR_CANCELLED : AMPR_OK;

done:
    /* pages go back first, whatever happened */
    ampr__kv_seq_release(&r.seq);
    ampr__kv_seq_release(&r.seq_top);
    if ((st == AMPR_OK || st == AMPR_ERR_CANCELLED) && out) {
        size_t n_out = r.n_ids - (size_t)n_prompt;
        ampr_result *res = ampr__calloc(1, sizeof *res);
        int32_t *gen = ampr__malloc((n_out ? n_out : 1) * sizeof(int32_t));
        char *text = r.text.s ? r.text.s : ampr__strndup("", 0);
        if (!res || !gen || !text) {
            ampr__free(res);
            ampr__free(gen);
            if (!r.text.s) ampr__free(text);
            st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for the result");
        } else {
            double t_end = ampr__now_ms();
            memcpy(gen, r.ids + n_prompt, n_out * sizeof(int32_t));
            r.text.s = NULL;
            res->struct_size = sizeof *res;
            res->text = text;
            res->text_len = r.text.len;
            res->tokens = gen;
            res->n_tokens = n_out;
            res->n_prompt_tokens = n_prompt;
            res->finish = finish;
            res->tier_first = tier_first;
            res->tier_final = r.tier->id;
            res->escalated = escalation_token >= 0;
            res->escalation_token = escalation_token;
            snprintf(res->escalation_reason, sizeof res->escalation_reason, "%s", escalation_reason);
            res->prefill_ms = t_first - t0;
            res->decode_ms = t_end - t_first;
            res->total_ms = t_end - t0;
            *out = res;
        }
    }
    ampr__metrics_req_end(&c->metrics, &mreq, st, finish, n_prompt, (int32_t)(r.n_ids - (size_t)n_prompt),
                          r.tier ? r.tier->id : tier_first, escalation_reason);
    request_free(c, &r);
    return st;
}

/* ---- teacher-forced scoring --------------------------------------------- */

ampr_status ampr__logits(ampr_ctx *c, ampr__tier *t, const int32_t *ids, int32_t n, float *logits,
                         ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    if (n <= 0) return AMPR_OK;
    if (n > hp->context_length)
        return ampr__fail(err, AMPR_ERR_PROMPT_TOO_LONG, "%d ids exceed the context window of %d", n,
                          hp->context_length);
    ampr__kv_seq seq = {0};
    ampr__scratch s;
    memset(&s, 0, sizeof s);
    int32_t chunk = AMPR__MIN(n, PREFILL_CHUNK);
    ampr_status st = ampr__kv_seq_reserve(&seq, t->kv, n, err);
    if (st == AMPR_OK) st = ampr__scratch_new(c, chunk, chunk, &s, err);
    for (int32_t i = 0; st == AMPR_OK && i < n; i += chunk) {
        int32_t k = AMPR__MIN(chunk, n - i);
        st = ampr__backend_forward(c, t, &seq, ids + i, k, k, NULL, &s, err);
        if (st == AMPR_OK)
            memcpy(logits + (size_t)i * (size_t)hp->vocab_size, s.logits,
                   (size_t)k * (size_t)hp->vocab_size * sizeof(float));
    }
    ampr__scratch_free(&s);
    ampr__kv_seq_release(&seq);
    return st;
}
