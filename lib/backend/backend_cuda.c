/*
 * backend_cuda.c -- the CUDA backend of the request loop: every tier's
 * weights in device memory (cuda/ampr_cuda.h), and per tier a device page
 * pool mirroring the tier's CPU arena page for page. The CPU arena still does
 * all the accounting (reserve, release, KV_FULL, waiting); once a tier is
 * uploaded api.c frees its host weights and page storage (device_only).
 *
 * One pass at a time on the device (ctx->compute_lock, as the CPU pass): the
 * passes share one set of device activation buffers (ampr__cuda_work). Each
 * pass uploads the block tables of its sequences (a few ints per page), runs,
 * and downloads the logits rows the caller asked for into s->logits.
 *
 * Tensor parallelism ("tp_size" > 1): this process drives n ranks, each an
 * ampr__cuda context on its GPU ("gpus"; several ranks may share one) holding
 * its shard of every tier (the CPU tier's shards, forward/tp.h) and a KV pool
 * of its KV heads; the ranks meet in an all-reduce (cuda/cuda_nccl.cu) after
 * wo and w_down. With "tp_rank" the process is one rank of a group spread
 * over processes (n = 1, NCCL over the network).
 *
 * Not on the device (AMPR_ERR_UNSUPPORTED at open): F32/BF16 tiers, the q8
 * KV element type. Calibration (lib/calib, `ampr calibrate`) runs the CPU
 * pass and needs a CPU context: on a device context it fails cleanly.
 */
#include "backend.h"

#if AMPR_HAVE_CUDA

#include <stdio.h>

#include "../../cuda/ampr_cuda.h"
#include "../forward/tp.h"

typedef struct cuda_tier {
    ampr__cuda_model *model[AMPR__TP_MAX]; /* by local rank */
    ampr__cuda_kvpool *kv[AMPR__TP_MAX];
} cuda_tier;

typedef struct cuda_backend {
    int n;                            /* ranks this process drives */
    int rank0;                        /* the group rank of local rank 0 */
    int tp;                           /* ranks in the whole group */
    ampr__cuda *cuda[AMPR__TP_MAX];   /* one context per local rank */
    ampr__cuda_work *work[AMPR__TP_MAX];
    ampr__cuda_reduce *red;           /* NULL when tp == 1 */
    cuda_tier tiers[AMPR_TIER_COUNT]; /* by index into ctx->tiers */
    int32_t stride;                   /* block-table row: pages of a full context */
    int32_t *blocks;                  /* host [AMPR__BATCH_MAX][stride] */
    int32_t *pos, *row_seq;           /* host, grown with the pass */
    uint64_t passes;                  /* passes begun (under compute_lock) */
    int32_t cap;
    /* requests' logits rings (sampler.h) on rank 0's GPU, where the logits
     * are: those given back wait here for the next request (a cudaFree
     * would wait for the device), all of ring_rows rows */
    pthread_mutex_t ring_mu;
    void **rings;
    int n_rings, cap_rings;
    int32_t ring_rows;
} cuda_backend;

static void cb_free(cuda_backend *cb) {
    if (!cb) return;
    for (int i = 0; i < AMPR_TIER_COUNT; i++)
        for (int r = 0; r < cb->n; r++) {
            ampr__cuda_kvpool_free(cb->tiers[i].kv[r]);
            ampr__cuda_model_free(cb->tiers[i].model[r]);
        }
    ampr__cuda_reduce_free(cb->red);
    for (int i = 0; i < cb->n_rings; i++) ampr__cuda_free(cb->cuda[0], cb->rings[i]);
    ampr__free(cb->rings);
    pthread_mutex_destroy(&cb->ring_mu);
    for (int r = 0; r < cb->n; r++) {
        ampr__cuda_work_free(cb->work[r]);
        ampr__cuda_close(cb->cuda[r]);
    }
    ampr__free(cb->blocks);
    ampr__free(cb->pos);
    ampr__free(cb->row_seq);
    ampr__free(cb);
}

/* The device hyper-parameters of group rank g: its share of the heads and
 * hidden units (all of them when tp == 1). */
static ampr__cuda_hparams rank_hparams(const ampr__hparams *hp, int32_t tp, int32_t g) {
    ampr__tp_plan p = ampr__tp_plan_of(hp, tp, g);
    return (ampr__cuda_hparams){hp->n_layers, hp->dim, p.ff_len, p.n_heads, p.n_kv_heads,
                                hp->head_dim, hp->vocab_size, hp->context_length, hp->norm_eps,
                                hp->rope_layout == AMPR__ROPE_INTERLEAVED};
}

static int tier_index(const ampr_ctx *c, const ampr__tier *t) {
    return (int)(t - c->tiers);
}

/* Group rank g's shard of tier t onto local rank r's GPU: weights, SmoothQuant
 * divisors (the shard's slice) and a KV pool of the rank's KV heads. */
static ampr_status rank_upload(cuda_backend *cb, ampr_ctx *c, ampr__tier *t, cuda_tier *ct, int r,
                               ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    int32_t g = cb->rank0 + r;
    ampr__tp_plan plan = ampr__tp_plan_of(hp, cb->tp, g);
    ampr__cuda_hparams rhp = rank_hparams(hp, cb->tp, g);
    ampr__qmat *layers = ampr__alloc_array(4 * (size_t)hp->n_layers, sizeof *layers, err);
    if (!layers) return AMPR_ERR_NOMEM;
    for (int32_t l = 0; l < hp->n_layers; l++) {
        const ampr__tier_layer *L = ampr__tier_shard(t, l, g);
        layers[4 * (size_t)l + 0] = L->wqkv;
        layers[4 * (size_t)l + 1] = L->wo;
        layers[4 * (size_t)l + 2] = L->w_gu;
        layers[4 * (size_t)l + 3] = L->w_down;
    }
    /* only a process's first rank makes logits: the others skip the output
     * matrix (NULL reads as tied there, and is never used) */
    ampr_status st = ampr__cuda_model_new(cb->cuda[r], &rhp, &t->embd,
                                          t->output_is_embd || r > 0 ? NULL : &t->output, layers,
                                          c->norms, c->rope_cos, c->rope_sin, &ct->model[r], err);
    ampr__free(layers);
    /* the inputs of wo and w_down are the rank's columns (tier.c shards s so) */
    const int32_t width[AMPR__MM_COUNT] = {hp->dim, plan.q_len, hp->dim, plan.ff_len};
    for (int32_t l = 0; st == AMPR_OK && l < hp->n_layers; l++) {
        const ampr__tier_layer *L = ampr__tier_shard(t, l, g);
        for (int mm = 0; st == AMPR_OK && mm < AMPR__MM_COUNT; mm++)
            if (L->smooth[mm])
                st = ampr__cuda_model_set_smooth(ct->model[r], l, mm, L->smooth[mm], width[mm], err);
    }
    ampr__kv_dtype kd = ampr__kv_dtype_of(t->kv);
    if (st == AMPR_OK)
        st = ampr__cuda_kvpool_new(cb->cuda[r], hp->n_layers, plan.kv_len,
                                   ampr__kv_block_size(t->kv), ampr__kv_pages_total(t->kv),
                                   kd == AMPR__KV_F16 ? AMPR__CUDA_F16 : AMPR__CUDA_F32, &ct->kv[r],
                                   err);
    return st;
}

static ampr_status cuda_tier_upload(ampr__backend *b, ampr_ctx *c, ampr__tier *t, ampr__err *err) {
    cuda_backend *cb = b->impl;
    int idx = tier_index(c, t);
    if (idx < 0 || idx >= AMPR_TIER_COUNT)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "tier is not one of the context's");
    if (t->tp != cb->tp)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "tier %s is sharded over %d ranks, the GPUs %d",
                          ampr_tier_name(t->id), t->tp, cb->tp);
    if (t->qtype != AMPR__Q_F16 && t->qtype != AMPR__Q_INT8 && t->qtype != AMPR__Q_NF4 &&
        t->qtype != AMPR__Q_NF4_DQ)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "tier %s has no CUDA kernels (fp16, int8 and nf4 do)",
                          ampr_tier_name(t->id));
    ampr__kv_dtype kd = ampr__kv_dtype_of(t->kv);
    if (kd != AMPR__KV_F32 && kd != AMPR__KV_F16)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "tier %s: the q8 KV element type has no CUDA kernels (use f16 or f32)",
                          ampr_tier_name(t->id));
    ampr_status st = AMPR_OK;
    for (int r = 0; st == AMPR_OK && r < cb->n; r++)
        st = rank_upload(cb, c, t, &cb->tiers[idx], r, err);
    /* the copies are done before the caller may free the host weights */
    for (int r = 0; st == AMPR_OK && r < cb->n; r++) st = ampr__cuda_sync(cb->cuda[r], err);
    if (st != AMPR_OK)
        ampr__fail(err, st, "cannot put tier %s on the GPU", ampr_tier_name(t->id));
    return st;
}

static ampr_status grow_rows(cuda_backend *cb, int32_t n, ampr__err *err) {
    if (n <= cb->cap) return AMPR_OK;
    int32_t cap = AMPR__MAX(n, 256);
    int32_t *p = ampr__alloc_array((size_t)cap, sizeof *p, err);
    int32_t *q = ampr__alloc_array((size_t)cap, sizeof *q, err);
    if (!p || !q) {
        ampr__free(p);
        ampr__free(q);
        return AMPR_ERR_NOMEM;
    }
    ampr__free(cb->pos);
    ampr__free(cb->row_seq);
    cb->pos = p;
    cb->row_seq = q;
    cb->cap = cap;
    return AMPR_OK;
}

/* Row i of cb->blocks = seq's block table, zero padded (page 0 is never read
 * past the sequence's own positions). */
static ampr_status put_table(cuda_backend *cb, const ampr__tier *t, int32_t i,
                             const ampr__kv_seq *seq, int32_t last_pos, ampr__err *err) {
    if (seq->arena != t->kv)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "sequence is not in this tier's arena");
    if (seq->n_blocks > cb->stride ||
        (int64_t)seq->n_blocks * ampr__kv_block_size(t->kv) <= (int64_t)last_pos)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "sequence holds too few KV pages");
    int32_t *row = cb->blocks + (size_t)i * (size_t)cb->stride;
    memset(row, 0, (size_t)cb->stride * sizeof *row);
    memcpy(row, seq->blocks, (size_t)seq->n_blocks * sizeof *row);
    return AMPR_OK;
}

static ampr_status cuda_forward(ampr__backend *b, ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq,
                                const int32_t *tokens, int32_t n, int32_t n_logits,
                                ampr__row_want *want, ampr__scratch *s, ampr__err *err) {
    cuda_backend *cb = b->impl;
    cuda_tier *ct = &cb->tiers[tier_index(c, t)];
    if (n <= 0 || n_logits < 1 || n_logits > n || n_logits > s->max_logits)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "forward of %d tokens, %d logits (scratch: %d)", n,
                          n_logits, s->max_logits);
    if (!ct->model[0]) return ampr__fail(err, AMPR_ERR_INTERNAL, "tier is not on the GPU");
    if (s->stats)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "activation statistics need the CPU pass");
    if (seq->n_tokens + n > c->hp.context_length)
        return ampr__fail(err, AMPR_ERR_PROMPT_TOO_LONG,
                          "positions %d..%d exceed the context window of %d", seq->n_tokens,
                          seq->n_tokens + n - 1, c->hp.context_length);
    pthread_mutex_lock(&c->compute_lock);
    ampr_status st = grow_rows(cb, n, err);
    if (st == AMPR_OK) st = put_table(cb, t, 0, seq, seq->n_tokens + n - 1, err);
    if (st == AMPR_OK) {
        for (int32_t i = 0; i < n; i++) cb->pos[i] = seq->n_tokens + i;
        cb->passes++;
        st = ampr__cuda_forward_paged(ct->model, ct->kv, cb->work, cb->n, cb->red, tokens, cb->pos,
                                      NULL, n, cb->blocks, 1, cb->stride, n_logits, s->logits, want,
                                      err);
    }
    pthread_mutex_unlock(&c->compute_lock);
    if (st == AMPR_OK) seq->n_tokens += n;
    return st;
}

static ampr_status cuda_decode_batch(ampr__backend *b, ampr_ctx *c, ampr__tier *t,
                                     ampr__kv_seq *const *seqs, const int32_t *tokens, int32_t n,
                                     ampr__row_want *want, ampr__scratch *s, ampr__err *err) {
    cuda_backend *cb = b->impl;
    cuda_tier *ct = &cb->tiers[tier_index(c, t)];
    if (n <= 0 || n > AMPR__BATCH_MAX || n > s->max_logits)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "decode batch of %d sequences", n);
    if (!ct->model[0]) return ampr__fail(err, AMPR_ERR_INTERNAL, "tier is not on the GPU");
    for (int32_t i = 0; i < n; i++) {
        for (int32_t k = 0; k < i; k++)
            if (seqs[k] == seqs[i])
                return ampr__fail(err, AMPR_ERR_INTERNAL, "a sequence appears twice in a decode batch");
        if (seqs[i]->n_tokens >= c->hp.context_length)
            return ampr__fail(err, AMPR_ERR_PROMPT_TOO_LONG,
                              "position %d exceeds the context window of %d", seqs[i]->n_tokens,
                              c->hp.context_length);
    }
    pthread_mutex_lock(&c->compute_lock);
    ampr_status st = grow_rows(cb, n, err);
    for (int32_t i = 0; st == AMPR_OK && i < n; i++) {
        cb->pos[i] = seqs[i]->n_tokens;
        cb->row_seq[i] = i;
        st = put_table(cb, t, i, seqs[i], seqs[i]->n_tokens, err);
    }
    if (st == AMPR_OK) {
        cb->passes++;
        st = ampr__cuda_forward_paged(ct->model, ct->kv, cb->work, cb->n, cb->red, tokens, cb->pos,
                                      cb->row_seq, n, cb->blocks, n, cb->stride, n, s->logits,
                                      want, err);
    }
    pthread_mutex_unlock(&c->compute_lock);
    if (st == AMPR_OK)
        for (int32_t i = 0; i < n; i++) seqs[i]->n_tokens += 1;
    return st;
}

static void cuda_close(ampr__backend *b) {
    if (!b) return;
    cb_free(b->impl);
    ampr__free(b);
}

/* Whether rank r is the first of the local ranks on its GPU. */
static int first_on_gpu(const cuda_backend *cb, int r) {
    for (int q = 0; q < r; q++)
        if (ampr__cuda_device(cb->cuda[q]) == ampr__cuda_device(cb->cuda[r])) return 0;
    return 1;
}

/* How many different GPUs the local ranks' contexts are on. */
static int distinct_gpus(const cuda_backend *cb) {
    int distinct = 0;
    for (int r = 0; r < cb->n; r++) distinct += first_on_gpu(cb, r);
    return distinct;
}

/* Copy bandwidth of the first rank's GPU (256 MiB, best of 5) times the
 * number of distinct GPUs the ranks use. The caller holds the compute lock
 * (ampr__backend_mem_gbs), so no pass shares the stream meanwhile. */
static double cuda_mem_gbs(ampr__backend *b) {
    cuda_backend *cb = b->impl;
    double gbs = 0;
    ampr__err err = {0};
    if (ampr__cuda_copy_gbs(cb->cuda[0], (size_t)256 << 20, 5, &gbs, &err) != AMPR_OK) return 0;
    return gbs * distinct_gpus(cb);
}

static ampr_status cuda_ring_new(ampr__backend *b, ampr_ctx *c, ampr__ring *r, ampr__err *err) {
    cuda_backend *cb = b->impl;
    pthread_mutex_lock(&cb->ring_mu);
    if (cb->n_rings > 0 && r->n_rows == cb->ring_rows) r->dev = cb->rings[--cb->n_rings];
    if (!cb->ring_rows) cb->ring_rows = r->n_rows;
    pthread_mutex_unlock(&cb->ring_mu);
    if (r->dev) return AMPR_OK;
    /* not beside a pass (or its graph capture) of another request */
    pthread_mutex_lock(&c->compute_lock);
    ampr_status st = ampr__cuda_alloc(cb->cuda[0], (size_t)r->n_rows * (size_t)c->hp.vocab_size * sizeof(float),
                                      &r->dev, err);
    pthread_mutex_unlock(&c->compute_lock);
    return st;
}

static void cuda_ring_free(ampr__backend *b, ampr_ctx *c, ampr__ring *r) {
    cuda_backend *cb = b->impl;
    pthread_mutex_lock(&cb->ring_mu);
    if (r->n_rows == cb->ring_rows && cb->n_rings == cb->cap_rings) {
        int cap = cb->cap_rings ? 2 * cb->cap_rings : 8;
        void **grown = ampr__realloc(cb->rings, (size_t)cap * sizeof *grown);
        if (grown) {
            cb->rings = grown;
            cb->cap_rings = cap;
        }
    }
    if (r->n_rows == cb->ring_rows && cb->n_rings < cb->cap_rings) {
        cb->rings[cb->n_rings++] = r->dev;
        r->dev = NULL;
    }
    pthread_mutex_unlock(&cb->ring_mu);
    if (r->dev) { /* a ring the list could not take */
        pthread_mutex_lock(&c->compute_lock);
        ampr__cuda_free(cb->cuda[0], r->dev);
        pthread_mutex_unlock(&c->compute_lock);
        r->dev = NULL;
    }
}

/* What the distinct GPUs of the ranks have in use. */
static uint64_t cuda_mem_used(ampr__backend *b) {
    cuda_backend *cb = b->impl;
    uint64_t used = 0;
    for (int r = 0; r < cb->n; r++)
        if (first_on_gpu(cb, r)) used += ampr__cuda_mem_used(cb->cuda[r]);
    return used;
}

static const ampr__backend_ops cuda_ops = {"cuda",        cuda_tier_upload, cuda_forward, cuda_decode_batch,
                                           cuda_ring_new, cuda_ring_free,   cuda_mem_gbs, cuda_close,
                                           cuda_mem_used};

/* While a process-per-rank open waits for the other ranks: the open's
 * progress callback, which may cancel it. */
static int join_cancelled(void *user) {
    ampr_ctx *c = user;
    return c->open_progress && c->open_progress(c->open_user, "tp join", 0.0f);
}

/* Which GPU each local rank runs on ("gpus", else 0..n-1, or tp_rank modulo
 * the GPUs found for one rank per process), and the all-reduce between them. */
static ampr_status open_ranks(cuda_backend *cb, ampr_ctx *c, const ampr__config *cfg,
                              ampr__err *err) {
    int n_dev = 0;
    AMPR__TRY(ampr__cuda_device_count(&n_dev, err));
    if (n_dev == 0) return ampr__fail(err, AMPR_ERR_NO_DEVICE, "no CUDA device or driver");
    int dev[AMPR__TP_MAX];
    for (int r = 0; r < cb->n; r++) {
        dev[r] = cfg->n_gpus ? cfg->gpus[r] : cfg->tp_rank >= 0 ? cfg->tp_rank % n_dev : r;
        if (dev[r] >= n_dev)
            return ampr__fail(err, AMPR_ERR_NO_DEVICE,
                              "rank %d wants GPU %d, %d found (\"gpus\" may list one GPU for "
                              "several ranks)", cb->rank0 + r, dev[r], n_dev);
    }
    for (int r = 0; r < cb->n; r++) AMPR__TRY(ampr__cuda_open(dev[r], &cb->cuda[r], err));
    if (cb->tp == 1) return AMPR_OK;
    if (cfg->tp_rank >= 0)
        return ampr__cuda_reduce_rank(cb->cuda[0], cb->tp, cb->rank0, cfg->tp_id, cfg->tp_timeout_ms,
                                      join_cancelled, c, &cb->red, err);
    if (cfg->tp_allreduce == 1) return ampr__cuda_reduce_local(cb->cuda, cb->n, 1, &cb->red, err);
    if (cfg->tp_allreduce == 0 && distinct_gpus(cb) == cb->n && ampr__cuda_have_nccl()) {
        /* "auto": NCCL where it comes up, else the copy all-reduce */
        ampr__err nerr = {0};
        if (ampr__cuda_reduce_local(cb->cuda, cb->n, 1, &cb->red, &nerr) == AMPR_OK) return AMPR_OK;
    }
    return ampr__cuda_reduce_local(cb->cuda, cb->n, 0, &cb->red, err);
}

/* "cuda:0 NVIDIA H100 ..." or "cuda:0,1 NVIDIA H100 ... (tp 2, nccl)". */
static void backend_name(const cuda_backend *cb, char *name, size_t name_len) {
    char ids[64] = "";
    size_t k = 0;
    for (int r = 0; r < cb->n && k + 8 < sizeof ids; r++)
        k += (size_t)snprintf(ids + k, sizeof ids - k, "%s%d", r ? "," : "",
                              ampr__cuda_device(cb->cuda[r]));
    const char *dn = ampr__cuda_device_name(cb->cuda[0]);
    if (cb->tp == 1) snprintf(name, name_len, "cuda:%s %s", ids, dn);
    else if (cb->n == cb->tp)
        snprintf(name, name_len, "cuda:%s %s (tp %d, %s)", ids, dn, cb->tp,
                 ampr__cuda_reduce_kind(cb->red));
    else
        snprintf(name, name_len, "cuda:%s %s (tp rank %d of %d, %s)", ids, dn, cb->rank0, cb->tp,
                 ampr__cuda_reduce_kind(cb->red));
}

static cuda_backend *group_backend(const ampr_ctx *c) {
    return c && c->backend && c->backend->ops == &cuda_ops && c->cfg.tp_rank >= 0 ? c->backend->impl : NULL;
}

uint64_t ampr__backend_cuda_passes(ampr_ctx *c) {
    cuda_backend *cb = group_backend(c);
    if (!cb) return 0;
    pthread_mutex_lock(&c->compute_lock);
    uint64_t n = cb->passes;
    pthread_mutex_unlock(&c->compute_lock);
    return n;
}

void ampr__backend_cuda_call_failed(ampr_ctx *c, ampr_status st, uint64_t passes) {
    cuda_backend *cb = group_backend(c);
    if (!cb || (st != AMPR_ERR_NOMEM && st != AMPR_ERR_BACKEND && st != AMPR_ERR_INTERNAL)) return;
    pthread_mutex_lock(&c->compute_lock);
    if (cb->passes != passes) ampr__cuda_reduce_abort(cb->red);
    pthread_mutex_unlock(&c->compute_lock);
}

ampr_status ampr__backend_cuda_group_ok(ampr_ctx *c, int ok, int *all_ok, ampr__err *err) {
    *all_ok = ok;
    if (!c->backend) return AMPR_OK;
    cuda_backend *cb = c->backend->impl;
    return ampr__cuda_reduce_agree(cb->red, ok, all_ok, err);
}

ampr_status ampr__backend_cuda_open(ampr_ctx *c, ampr__backend **out, char *name, size_t name_len,
                                    ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    *out = NULL;
    ampr__backend *b = ampr__calloc(1, sizeof *b);
    cuda_backend *cb = ampr__calloc(1, sizeof *cb);
    if (!b || !cb) {
        ampr__free(b);
        ampr__free(cb);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for the CUDA backend");
    }
    b->ops = &cuda_ops;
    b->impl = cb;
    pthread_mutex_init(&cb->ring_mu, NULL);
    cb->tp = c->cfg.tp_size;
    cb->n = c->cfg.tp_rank >= 0 ? 1 : cb->tp;
    cb->rank0 = c->cfg.tp_rank >= 0 ? c->cfg.tp_rank : 0;
    int32_t bs = c->cfg.kv_block_size; /* every tier's arena pages (tier.c build_kv) */
    cb->stride = (hp->context_length + bs - 1) / bs;
    cb->blocks = ampr__alloc_array((size_t)AMPR__BATCH_MAX * (size_t)cb->stride, sizeof(int32_t), err);
    ampr_status st = cb->blocks ? AMPR_OK : AMPR_ERR_NOMEM;
    if (st == AMPR_OK && !ampr__tp_fits(hp, cb->tp))
        st = ampr__fail(err, AMPR_ERR_CONFIG, "\"tp_size\" %d does not divide the model's heads",
                        cb->tp);
    if (st == AMPR_OK) st = open_ranks(cb, c, &c->cfg, err);
    for (int r = 0; st == AMPR_OK && r < cb->n; r++) {
        ampr__cuda_hparams rhp = rank_hparams(hp, cb->tp, cb->rank0 + r);
        st = ampr__cuda_work_new(cb->cuda[r], &rhp, &cb->work[r], err);
    }
    if (st != AMPR_OK) {
        cuda_close(b);
        return st;
    }
    backend_name(cb, name, name_len);
    *out = b;
    return AMPR_OK;
}

#else

/* ISO C wants a declaration in every translation unit. */
typedef int ampr__backend_cuda_unused;

#endif
