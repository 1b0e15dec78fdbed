/*
 * test_fallback.c -- escalation from a lower tier to the top tier inside
 * ampr_generate: each signal (KL check, entropy, repetition) triggers when its
 * tolerance is set to zero, the result reports it, the tokens after the switch
 * are exactly what the top tier predicts for the sequence so far (so the KV
 * the top tier built while catching up is right), restart mode equals a plain
 * top-tier run, and no KV pages are left behind in either arena.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "engine.h"
#include "fallback/fallback.h"
#include "fallback/logits.h"
#include "model/model.h"
#include "quant/quant.h"

#include <math.h>


static int setup(void **state) {
    (void)state;
    return tu_fixture_setup("fallback", 128, 7);
}

static int teardown(void **state) {
    (void)state;
    return tu_fixture_teardown();
}

static ampr_ctx *open_cfg(const char *fallback) {
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"tiers\": [\"f32\", \"fp16\", \"nf4\"], \"fallback\": %s}", fallback);
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(tu_model, cfg, &ctx);
    if (st != AMPR_OK) fail_msg("open: %s", ampr_errmsg(ctx));
    return ctx;
}

/* greedy on a tier, max_tokens of them, past the end of sequence */
static ampr_gen_params greedy_on(ampr_tier tier, int max_tokens) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = tier;
    p.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    return p;
}

static ampr_result *run(ampr_ctx *ctx, ampr_tier tier, int max_tokens, int fallback) {
    ampr_gen_params p = greedy_on(tier, max_tokens);
    p.fallback = fallback;
    ampr_result *r = NULL;
    ampr_status st = ampr_generate(ctx, "the cat sat", AMPR_NUL_TERMINATED, &p, &r);
    if (st != AMPR_OK) fail_msg("generate: %s", ampr_errmsg(ctx));
    return r;
}

/* Every token from index `from` on must be the top tier's greedy choice
 * given everything before it. */
static void assert_top_greedy_from(ampr_ctx *ctx, const ampr_result *r, int from) {
    int32_t ids[256];
    size_t n = 0;
    assert_int_equal(ampr_tokenize(ctx, "the cat sat", AMPR_NUL_TERMINATED, 1, ids, 256, &n), AMPR_OK);
    assert_int_equal((int)n, r->n_prompt_tokens);
    memcpy(ids + n, r->tokens, r->n_tokens * sizeof(int32_t));
    size_t total = n + r->n_tokens, V = 320;
    float *lg = malloc(total * V * sizeof(float));
    assert_int_equal(ampr_logits(ctx, AMPR_TIER_F32, ids, total, lg, total * V), AMPR_OK);
    for (size_t j = (size_t)from; j < r->n_tokens; j++) {
        const float *row = lg + (n - 1 + j) * V;
        int32_t best = 0;
        for (size_t v = 1; v < V; v++)
            if (row[v] > row[best]) best = (int32_t)v;
        if (best != r->tokens[j]) fail_msg("token %zu is %d, the top tier predicts %d", j, r->tokens[j], best);
    }
    free(lg);
}

/* r escalated to the top tier at token `token` for `reason` (how its
 * reason string starts), and every token from there is the top tier's. */
static void assert_escalated(ampr_ctx *ctx, const ampr_result *r, int token, const char *reason) {
    assert_int_equal(r->escalated, 1);
    assert_int_equal(r->escalation_token, token);
    assert_int_equal(r->tier_final, AMPR_TIER_F32);
    if (strncmp(r->escalation_reason, reason, strlen(reason)))
        fail_msg("escalated for \"%s\", not %s", r->escalation_reason, reason);
    assert_top_greedy_from(ctx, r, token);
}

static void assert_no_pages(ampr_ctx *ctx) {
    ampr_tier tiers[] = {AMPR_TIER_F32, AMPR_TIER_FP16, AMPR_TIER_NF4};
    for (int i = 0; i < 3; i++) {
        ampr_tier_info ti;
        ampr_tier_info_init(&ti);
        assert_int_equal(ampr_get_tier_info(ctx, tiers[i], &ti), AMPR_OK);
        assert_int_equal(ti.kv_pages_used, 0);
    }
}

static void test_kl_check_escalates(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"kl_max\": 0.0, \"entropy_max\": 0, \"repeat_ngram\": 0, \"check_every\": 16}");
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 40, 1);
    assert_int_equal(r->tier_first, AMPR_TIER_NF4);
    assert_int_equal(r->n_tokens, 40);
    assert_escalated(ctx, r, 16, "kl-check");
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

static void test_entropy_escalates(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"entropy_max\": 0.0001, \"min_tokens\": 5, \"check_every\": 0, \"repeat_ngram\": 0}");
    ampr_result *r = run(ctx, AMPR_TIER_FP16, 30, 1);
    assert_escalated(ctx, r, 5, "entropy");
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

static void test_repetition_escalates(void **state) {
    (void)state;
    /* a unigram seen twice within the window: fires at the first repeat */
    ampr_ctx *ctx = open_cfg("{\"entropy_max\": 0, \"check_every\": 0, \"min_tokens\": 0, "
                             "\"repeat_ngram\": 1, \"repeat_count\": 2, \"repeat_window\": 64}");
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 60, 1);
    assert_int_equal(r->escalated, 1);
    assert_non_null(strstr(r->escalation_reason, "repetition"));
    /* the token before the switch repeated an earlier one */
    int k = r->escalation_token, seen = 0;
    assert_true(k >= 1);
    for (int i = 0; i < k - 1; i++) seen |= r->tokens[i] == r->tokens[k - 1];
    assert_true(seen);
    assert_top_greedy_from(ctx, r, k);
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

/* An escalation on the step right after a check that passed: the top tier
 * has seen every position already (the check caught it up), and scores the
 * last one again for the logits in hand. It used to fail the request with
 * AMPR_ERR_INTERNAL ("forward of 0 tokens"). */
static void test_entropy_right_after_check(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"check_every\": 1, \"check_window\": 1, \"kl_max\": 100, "
                             "\"entropy_max\": 0.0001, \"min_tokens\": 3, \"repeat_ngram\": 0}");
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 24, 1);
    assert_escalated(ctx, r, 3, "entropy");
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

/* A check window longer than the checks' spacing (6 positions every 2
 * tokens): every check compares the last 6 positions, the ones an earlier
 * check compared included, with the top tier's logits for them. It used to
 * compare the overlap with stale rows of the previous check (other
 * positions' logits: several nats). What each check must measure comes from
 * teacher-forced logits of both tiers: with kl_max twice the largest of
 * them no check escalates in 100 tokens; with half the smallest the first
 * check does. */
static void test_check_window_longer_than_spacing(void **state) {
    (void)state;
    const int every = 2, window = 6, n_gen = 100;
    const size_t V = 320;
    ampr_ctx *ctx = open_cfg("{\"enabled\": false}");
    ampr_result *plain = run(ctx, AMPR_TIER_NF4, n_gen, 0);
    int32_t ids[256];
    size_t n = 0;
    assert_int_equal(ampr_tokenize(ctx, "the cat sat", AMPR_NUL_TERMINATED, 1, ids, 256, &n), AMPR_OK);
    memcpy(ids + n, plain->tokens, plain->n_tokens * sizeof(int32_t));
    size_t total = n + plain->n_tokens;
    float *top = malloc(total * V * sizeof(float)), *low = malloc(total * V * sizeof(float));
    assert_int_equal(ampr_logits(ctx, AMPR_TIER_F32, ids, total, top, total * V), AMPR_OK);
    assert_int_equal(ampr_logits(ctx, AMPR_TIER_NF4, ids, total, low, total * V), AMPR_OK);
    /* the check after token g covers the rows predicting indices
     * n_ids - w + 1 .. n_ids, n_ids = n + g + 1; row i predicts index i + 1 */
    double lo = INFINITY, hi = 0;
    for (int g = every - 1; g < n_gen - 1; g += every) {
        size_t n_ids = n + (size_t)g + 1;
        int w = window < g + 1 ? window : g + 1;
        double kl = 0;
        for (int j = 0; j < w; j++) {
            size_t row = n_ids - (size_t)w + (size_t)j;
            kl += ampr__kl_scalar(top + row * V, low + row * V, (int32_t)V);
        }
        kl /= w;
        lo = kl < lo ? kl : lo;
        hi = kl > hi ? kl : hi;
    }
    assert_true(lo > 0 && hi < 0.01);
    ampr_close(ctx);
    for (int k = 0; k < 2; k++) {
        char cfg[256];
        snprintf(cfg, sizeof cfg, "{\"check_every\": %d, \"check_window\": %d, \"kl_max\": %.9g, "
                 "\"entropy_max\": 0, \"repeat_ngram\": 0}", every, window, k ? lo / 2 : 2 * hi);
        ctx = open_cfg(cfg);
        ampr_result *r = run(ctx, AMPR_TIER_NF4, n_gen, 1);
        if (k == 0) {
            if (r->escalated) fail_msg("escalated at %d: %s", r->escalation_token, r->escalation_reason);
            assert_memory_equal(r->tokens, plain->tokens, (size_t)n_gen * sizeof(int32_t));
        } else {
            assert_escalated(ctx, r, every, "kl-check");
        }
        ampr_result_free(r);
        assert_no_pages(ctx);
        ampr_close(ctx);
    }
    ampr_result_free(plain);
    free(top);
    free(low);
}

/* The NF4 tier's logits matrix (its output, or the embeddings it is tied
 * to), and breaking it: a NaN in every fourth block scale. */
static ampr__qmat *nf4_logits_matrix(ampr_ctx *ctx) {
    ampr__tier *t = ampr__ctx_tier(ctx, AMPR_TIER_NF4);
    assert_non_null(t);
    ampr__qmat *m = t->output_is_embd ? &t->embd : &t->output;
    assert_true(m->scales && m->n_scales > 4);
    return m;
}

static void break_scales(ampr__qmat *m) {
    for (size_t b = 0; b < m->n_scales; b += 4) m->scales[b] = NAN;
}

/* A tier whose logits hold a NaN (here a corrupted NF4 block scale of its
 * output matrix) escalates at once, whatever min_tokens says: neither the
 * entropy (NaN) nor the KL (0) would ever catch it. The continuation is the
 * top tier's. */
static void test_nonfinite_escalates(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"min_tokens\": 8}");
    break_scales(nf4_logits_matrix(ctx));
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 12, 1);
    assert_escalated(ctx, r, 0, "non-finite logits");
    assert_string_equal(r->escalation_reason, "non-finite logits");
    ampr_result_free(r);
    char *text = NULL; /* counted under its own reason */
    size_t text_len = 0;
    assert_int_equal(ampr_metrics_text(ctx, &text, &text_len), AMPR_OK);
    assert_non_null(strstr(text, "ampr_escalations_total{from_tier=\"nf4\",to_tier=\"f32\",reason=\"nonfinite\"} 1"));
    ampr_free(text);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

/* hog: every page of the top tier's (f32) KV arena, so that no request can
 * escalate until it is released */
static void fill_top_arena(ampr_ctx *ctx, ampr__kv_seq *hog) {
    ampr__tier *top = ampr__ctx_tier(ctx, AMPR_TIER_F32);
    assert_non_null(top);
    ampr__err err = {0};
    int32_t all = ampr__kv_pages_total(top->kv) * ampr__kv_block_size(top->kv);
    assert_int_equal(ampr__kv_seq_reserve(hog, top->kv, all, &err), AMPR_OK);
}

/* A broken tier whose request the top tier cannot take over (its KV arena
 * is full) fails the request with AMPR_ERR_KV_FULL and says why, instead of
 * drawing tokens from NaN logits; nothing leaks, and once the top tier has
 * room the same request escalates. */
static void test_nonfinite_top_full(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"min_tokens\": 8}");
    break_scales(nf4_logits_matrix(ctx));
    ampr__kv_seq hog = {0};
    fill_top_arena(ctx, &hog);
    ampr_gen_params p = greedy_on(AMPR_TIER_NF4, 12);
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(ctx, "the cat sat", AMPR_NUL_TERMINATED, &p, &r), AMPR_ERR_KV_FULL);
    assert_null(r);
    assert_non_null(strstr(ampr_errmsg(ctx), "non-finite logits"));
    assert_int_equal(ampr__kv_pages_used(ampr__ctx_tier(ctx, AMPR_TIER_NF4)->kv), 0);
    ampr__kv_seq_release(&hog);
    assert_no_pages(ctx);
    r = run(ctx, AMPR_TIER_NF4, 12, 1);
    assert_escalated(ctx, r, 0, "non-finite logits");
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

/* ... also when the tier breaks while generating: the decode step's row
 * says so (the NaN scales are planted from the stream callback of token 3,
 * before the step that feeds it), and the request escalates at token 4. */
typedef struct breaker {
    ampr__qmat *m;
    int calls;
} breaker;

static int break_at_3(void *user, const char *piece, size_t len, int32_t id) {
    (void)piece;
    (void)len;
    (void)id;
    breaker *b = user;
    if (b->calls++ == 3) break_scales(b->m);
    return 0;
}

static void test_nonfinite_while_decoding(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"entropy_max\": 0, \"repeat_ngram\": 0, \"check_every\": 0}");
    breaker b = {nf4_logits_matrix(ctx), 0};
    ampr_gen_params p = greedy_on(AMPR_TIER_NF4, 12);
    p.on_token = break_at_3;
    p.user = &b;
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(ctx, "the cat sat", AMPR_NUL_TERMINATED, &p, &r), AMPR_OK);
    assert_escalated(ctx, r, 4, "non-finite logits");
    assert_string_equal(r->escalation_reason, "non-finite logits");
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

/* ... also when an earlier escalation was skipped for want of room (the
 * other signals stop; the watch for non-finite logits does not): an
 * entropy escalation at token 2 finds the top tier's arena full, the tier
 * breaks after token 3, and the request fails at token 4 instead of drawing
 * tokens from NaN rows. Unbroken, the same request finishes unchecked. */
static void test_nonfinite_after_skipped_escalation(void **state) {
    (void)state;
    for (int broken = 1; broken >= 0; broken--) {
        ampr_ctx *ctx = open_cfg("{\"entropy_max\": 0.0001, \"min_tokens\": 2, \"check_every\": 0}");
        ampr__kv_seq hog = {0};
        fill_top_arena(ctx, &hog);
        breaker b = {nf4_logits_matrix(ctx), 0};
        ampr_gen_params p = greedy_on(AMPR_TIER_NF4, 12);
        if (broken) {
            p.on_token = break_at_3;
            p.user = &b;
        }
        ampr_result *r = NULL;
        ampr_status st = ampr_generate(ctx, "the cat sat", AMPR_NUL_TERMINATED, &p, &r);
        if (broken) {
            assert_int_equal(st, AMPR_ERR_KV_FULL);
            assert_null(r);
            assert_non_null(strstr(ampr_errmsg(ctx), "non-finite logits at token 4"));
            assert_int_equal(b.calls, 4); /* tokens 0-3 streamed, none from the broken rows */
        } else {
            assert_int_equal(st, AMPR_OK);
            assert_int_equal(r->n_tokens, 12);
            assert_string_equal(r->escalation_reason, "skipped (top tier KV full) at 2: entropy");
            ampr_result_free(r);
        }
        ampr__kv_seq_release(&hog);
        assert_no_pages(ctx);
        ampr_close(ctx);
    }
}

static void test_no_fallback_when_disabled(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"kl_max\": 0.0, \"entropy_max\": 0.0001}");
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 40, 0); /* per request */
    assert_int_equal(r->escalated, 0);
    assert_int_equal(r->escalation_token, -1);
    assert_int_equal(r->tier_final, AMPR_TIER_NF4);
    ampr_result_free(r);
    ampr_close(ctx);
    ctx = open_cfg("{\"enabled\": false, \"kl_max\": 0.0}"); /* per context */
    r = run(ctx, AMPR_TIER_NF4, 40, 1);
    assert_int_equal(r->escalated, 0);
    ampr_result_free(r);
    /* the top tier never escalates */
    r = run(ctx, AMPR_TIER_F32, 20, 1);
    assert_int_equal(r->escalated, 0);
    ampr_result_free(r);
    ampr_close(ctx);
}

static void test_restart_equals_top_tier(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"kl_max\": 0.0, \"entropy_max\": 0, \"repeat_ngram\": 0, \"restart\": true}");
    ampr_result *top = run(ctx, AMPR_TIER_F32, 40, 1);
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 40, 1);
    assert_int_equal(r->escalated, 1);
    assert_int_equal(r->escalation_token, 0);
    assert_int_equal(r->tier_first, AMPR_TIER_NF4);
    assert_int_equal(r->tier_final, AMPR_TIER_F32);
    assert_int_equal(r->n_tokens, top->n_tokens);
    assert_memory_equal(r->tokens, top->tokens, top->n_tokens * sizeof(int32_t));
    assert_int_equal(r->text_len, top->text_len);
    assert_memory_equal(r->text, top->text, top->text_len);
    ampr_result_free(top);
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
    /* the restart reuses the top tier's pages: an arena with room for one
     * request's positions is enough (a second reservation used to fail
     * with AMPR_ERR_KV_FULL) */
    ctx = NULL;
    assert_int_equal(ampr_open(tu_model, "{\"tiers\": [\"f32\", \"nf4\"], \"kv\": {\"arena_tokens\": 32}, "
                               "\"fallback\": {\"kl_max\": 0.0, \"entropy_max\": 0, \"repeat_ngram\": 0, "
                               "\"restart\": true}}", &ctx), AMPR_OK);
    r = run(ctx, AMPR_TIER_NF4, 20, 1); /* 2 pages of 16 */
    assert_int_equal(r->escalated, 1);
    assert_int_equal(r->tier_final, AMPR_TIER_F32);
    ampr_result_free(r);
    ampr_close(ctx);
}

typedef struct stream_buf {
    char text[8192];
    size_t len;
} stream_buf;

static int collect(void *user, const char *piece, size_t len, int32_t id) {
    (void)id;
    stream_buf *b = user;
    memcpy(b->text + b->len, piece, len);
    b->len += len;
    return 0;
}

/* Streaming never retracts: with restart configured, a streaming request
 * continues on the top tier, and what was streamed is the final text. */
static void test_streaming_escalation_keeps_output(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"kl_max\": 0.0, \"entropy_max\": 0, \"repeat_ngram\": 0, \"restart\": true}");
    stream_buf b = {{0}, 0};
    ampr_gen_params p = greedy_on(AMPR_TIER_NF4, 40);
    p.on_token = collect;
    p.user = &b;
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(ctx, "the cat sat", AMPR_NUL_TERMINATED, &p, &r), AMPR_OK);
    assert_int_equal(r->escalation_token, 16);
    assert_int_equal(b.len, r->text_len);
    assert_memory_equal(b.text, r->text, r->text_len);
    ampr_result_free(r);
    ampr_close(ctx);
}

/* ---- the monitor's maths: logits.c (scalar, double exp) and logits_avx2.c */

/* -sum p log p and sum p (log p - log q) straight from the definitions, in
 * long double: a third opinion, written here, on both levels */
static long double ref_entropy(const float *x, int32_t n) {
    long double mx = x[0], z = 0, h = 0;
    for (int32_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int32_t i = 0; i < n; i++) z += expl((long double)x[i] - mx);
    for (int32_t i = 0; i < n; i++) {
        long double lp = (long double)x[i] - mx - logl(z);
        h -= expl(lp) * lp;
    }
    return h;
}

static long double ref_kl(const float *p, const float *q, int32_t n) {
    long double mp = p[0], mq = q[0], zp = 0, zq = 0, kl = 0;
    for (int32_t i = 1; i < n; i++) {
        mp = p[i] > mp ? p[i] : mp;
        mq = q[i] > mq ? q[i] : mq;
    }
    for (int32_t i = 0; i < n; i++) {
        zp += expl((long double)p[i] - mp);
        zq += expl((long double)q[i] - mq);
    }
    for (int32_t i = 0; i < n; i++) {
        long double lp = (long double)p[i] - mp - logl(zp), lq = (long double)q[i] - mq - logl(zq);
        kl += expl(lp) * (lp - lq);
    }
    return kl;
}

static float rnd_normal(uint64_t *s) { /* sum of 4 uniforms, var 1 */
    float a = 0;
    for (int k = 0; k < 4; k++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        a += (float)(*s >> 40) / 16777216.0f;
    }
    return (a - 2.0f) * 1.7320508f;
}

static void test_logit_stats(void **state) {
    (void)state;
    int avx2 = ampr__quant_simd_max() >= AMPR__SIMD_AVX2;
    const int32_t sizes[] = {1, 2, 7, 8, 9, 15, 17, 1000, 1031, 1032, 32000, 128256};
    const float scales[] = {0.5f, 4.0f, 25.0f};
    uint64_t seed = 12345;
    float *x = malloc(128256 * sizeof *x), *y = malloc(128256 * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    int checked = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (size_t b = 0; b < sizeof scales / sizeof *scales; b++)
            for (int plant = 0; plant < 4; plant++) {
                int32_t n = sizes[a];
                for (int32_t i = 0; i < n; i++) {
                    x[i] = scales[b] * rnd_normal(&seed);
                    y[i] = x[i] + 0.3f * rnd_normal(&seed); /* a nearby distribution */
                }
                /* ties and places for the maximum: twice (the first counts), at
                 * the end (the scalar tail), the whole row equal */
                if (plant == 1 && n > 3) x[n / 3] = x[n - 2] = 1000.0f;
                if (plant == 2) x[n - 1] = 1000.0f;
                if (plant == 3)
                    for (int32_t i = 0; i < n; i++) x[i] = -2.5f;
                ampr__logit_stats s0, s1;
                ampr__logit_stats_scalar(x, n, &s0);
                long double h = ref_entropy(x, n);
                double h0 = log(s0.z) - s0.s / s0.z;
                assert_true(fabsl((long double)h0 - h) <= 1e-9L * (1 + fabsl(h)));
                assert_int_equal(s0.argmax, ampr__argmax_scalar(x, n));
                if (plant == 1 && n > 3) assert_int_equal(s0.argmax, n / 3);
                if (plant == 1 && n > 3) assert_true(s0.second == s0.max);
                long double kl = ref_kl(x, y, n);
                assert_true(fabsl((long double)ampr__kl_scalar(x, y, n) - kl) <= 1e-9L * (1 + kl));
                if (avx2) {
                    ampr__logit_stats_avx2(x, n, &s1);
                    assert_int_equal(s1.argmax, s0.argmax);
                    assert_int_equal(ampr__argmax_avx2(x, n), s0.argmax);
                    assert_true(s1.max == s0.max && s1.second == s0.second);
                    assert_true(fabs(s1.z - s0.z) <= 2e-6 * s0.z);
                    double h1 = log(s1.z) - s1.s / s1.z;
                    if (getenv("AMPR_TEST_VERBOSE"))
                        printf("n %6d scale %5.1f plant %d: dz %.2e dh %.2e dkl %.2e (kl %.4f)\n", n,
                               scales[b], plant, fabs(s1.z - s0.z) / s0.z, fabs(h1 - h0),
                               fabs(ampr__kl_avx2(x, y, n) - (double)kl), (double)kl);
                    if (fabs(h1 - h0) > 2e-6 * (1 + fabs(h0)))
                        fail_msg("n %d scale %g plant %d: entropy %.9g vs %.9g", n, scales[b], plant, h1, h0);
                    double k1 = ampr__kl_avx2(x, y, n);
                    if (fabs(k1 - (double)kl) > 2e-6 * (1 + (double)kl))
                        fail_msg("n %d scale %g plant %d: kl %.9g vs %.9g", n, scales[b], plant, k1, (double)kl);
                    checked++;
                }
                /* what generate.c calls */
                float margin = 0;
                float he = ampr__entropy(x, n, &margin);
                assert_true(fabsf(he - (float)h0) <= 2e-6f * (1 + fabsf((float)h0)) + 1e-6f);
                assert_true(margin >= 0 && margin <= 1);
                assert_int_equal(ampr__argmax(x, n), s0.argmax);
            }
    if (avx2) assert_int_equal(checked, 12 * 3 * 4);
    free(x);
    free(y);
}

/* The monitor's statistics in slices (as a GPU computes them, then merged
 * on the host) against the long double references: whole rows, rows cut
 * into 1 to 64 slices, masked logits (-inf), a slice all -inf in p or in q,
 * and q masked under p's mass (KL +inf). */
static void test_row_parts(void **state) {
    (void)state;
    const int32_t sizes[] = {1, 7, 320, 4097, 32000, 128256};
    const int32_t splits[] = {1, 2, 3, 8, 32, 64};
    uint64_t seed = 777;
    float *x = malloc(128256 * sizeof *x), *y = malloc(128256 * sizeof *y);
    ampr__row_part parts[64];
    assert_non_null(x);
    assert_non_null(y);
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (int plant = 0; plant < 5; plant++) {
            int32_t n = sizes[a];
            for (int32_t i = 0; i < n; i++) {
                x[i] = 3.0f * rnd_normal(&seed);
                y[i] = x[i] + 0.5f * rnd_normal(&seed);
            }
            if (plant == 1) /* masked tokens in both */
                for (int32_t i = 1; i < n; i += 3) x[i] = y[i] = -INFINITY;
            if (plant == 2 && n > 1) /* p's first half masked: whole slices of it */
                for (int32_t i = 0; i < n / 2; i++) x[i] = -INFINITY;
            if (plant == 3 && n > 1) /* q's last half masked where p has no mass */
                for (int32_t i = n / 2; i < n; i++) { x[i] = -INFINITY; y[i] = -INFINITY; }
            if (plant == 4 && n > 1) y[n - 1] = -INFINITY; /* q masked under p's mass */
            long double h = ref_entropy(x, n), kl = ref_kl(x, y, n);
            for (size_t b = 0; b < sizeof splits / sizeof *splits; b++) {
                int32_t k = splits[b] < n ? splits[b] : n, len = (n + k - 1) / k, np = 0;
                for (int32_t from = 0; from < n; from += len, np++)
                    ampr__row_part_get(x + from, y + from, n - from < len ? n - from : len, &parts[np]);
                float he = 0, hq = 0;
                double got = -1;
                assert_int_equal(ampr__row_parts_merge(parts, np, &he, &got), 0); /* -inf masks are fine */
                if (fabsl((long double)he - h) > 1e-5L * (1 + fabsl(h)))
                    fail_msg("n %d plant %d, %d slices: entropy %.9g vs %.9Lg", n, plant, np, he, h);
                if (isinf(kl) ? !isinf(got) : fabsl((long double)got - kl) > 2e-5L * (1 + kl))
                    fail_msg("n %d plant %d, %d slices: kl %.9g vs %.9Lg", n, plant, np, got, kl);
                /* without q: the entropy alone */
                for (int32_t i = 0, from = 0; from < n; from += len, i++)
                    ampr__row_part_get(x + from, NULL, n - from < len ? n - from : len, &parts[i]);
                ampr__row_parts_merge(parts, np, &hq, NULL);
                if (!(fabsf(hq - he) <= 1e-6f * (1 + fabsf(he)))) fail_msg("n %d plant %d np %d: %.9g vs %.9g", n, plant, np, hq, he);
            }
        }
    /* a slice whose mass is below a double's reach next to the row's
     * maximum, masked in q: the merge skips it, as ampr__kl's terms do (it
     * once made 0 * inf = NaN, read as KL 0) */
    float p8[8] = {800, 0, 1, 2, -5, -6, -7, -8}, q8[8] = {1, 800, 3, 2, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    ampr__row_part_get(p8, q8, 4, &parts[0]);
    ampr__row_part_get(p8 + 4, q8 + 4, 4, &parts[1]);
    float h8 = 0;
    double kl8 = 0;
    ampr__row_parts_merge(parts, 2, &h8, &kl8);
    assert_true(fabs(kl8 - ampr__kl_scalar(p8, q8, 8)) <= 1e-6 * kl8 && kl8 > 700);
    assert_int_equal(ampr__row_parts_merge(parts, 2, &h8, NULL), 0); /* -inf is a mask */
    /* a NaN or +inf anywhere in p: the row is broken (the merge says so) */
    const float bads[2] = {NAN, INFINITY};
    for (int b = 0; b < 2; b++) {
        p8[6] = bads[b];
        ampr__row_part_get(p8, q8, 4, &parts[0]);
        ampr__row_part_get(p8 + 4, q8 + 4, 4, &parts[1]);
        assert_int_equal(ampr__row_parts_merge(parts, 2, &h8, NULL), 1);
        assert_int_equal(ampr__row_nonfinite(p8, 8), 1);
    }
    /* both levels, a bad value at every place of a row (lanes and tail) */
    for (int32_t at = 0; at < 21; at++)
        for (int b = 0; b < 3; b++) {
            float row[21];
            for (int32_t i = 0; i < 21; i++) row[i] = i % 4 ? (float)i : -INFINITY;
            int want = b < 2;
            row[at] = b == 0 ? NAN : b == 1 ? INFINITY : -INFINITY;
            if (b == 0 && at % 2) row[at] = -NAN;
            assert_int_equal(ampr__row_nonfinite_scalar(row, 21), want);
            if (ampr__quant_simd_max() >= AMPR__SIMD_AVX2) assert_int_equal(ampr__row_nonfinite_avx2(row, 21), want);
        }
    free(x);
    free(y);
}

static void test_fallback_config_errors(void **state) {
    (void)state;
    const char *bad[] = {"{\"kl_max\": -1}", "{\"check_window\": 0}", "{\"nope\": 1}",
                         "{\"enabled\": 1}", "[]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cfg[256];
        snprintf(cfg, sizeof cfg, "{\"fallback\": %s}", bad[i]);
        ampr_ctx *ctx = NULL;
        assert_int_equal(ampr_open(tu_model, cfg, &ctx), AMPR_ERR_CONFIG);
        assert_non_null(strstr(ampr_errmsg(ctx), "config"));
        ampr_close(ctx);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kl_check_escalates),
        cmocka_unit_test(test_entropy_escalates),
        cmocka_unit_test(test_repetition_escalates),
        cmocka_unit_test(test_entropy_right_after_check),
        cmocka_unit_test(test_check_window_longer_than_spacing),
        cmocka_unit_test(test_nonfinite_escalates),
        cmocka_unit_test(test_nonfinite_top_full),
        cmocka_unit_test(test_nonfinite_while_decoding),
        cmocka_unit_test(test_nonfinite_after_skipped_escalation),
        cmocka_unit_test(test_no_fallback_when_disabled),
        cmocka_unit_test(test_restart_equals_top_tier),
        cmocka_unit_test(test_streaming_escalation_keeps_output),
        cmocka_unit_test(test_fallback_config_errors),
        cmocka_unit_test(test_logit_stats),
        cmocka_unit_test(test_row_parts),
    };
    return cmocka_run_group_tests_name("fallback", tests, setup, teardown);
}
