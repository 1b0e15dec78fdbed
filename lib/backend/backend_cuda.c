/*
 * backend_cuda.c -- the CUDA backend of the request loop: every tier's
 * weights in device memory (cuda/ampr_cuda.h), and per tier a device page
 * pool mirroring the tier's CPU arena page for page. The CPU arena still does
 * all the accounting (reserve, release, KV_FULL, waiting); its host pages are
 * simply not used while this backend serves the tier.
 *
 * One pass at a time on the device (ctx->compute_lock, as the CPU pass): the
 * passes share one set of device activation buffers (ampr__cuda_work). Each
 * pass uploads the block tables of its sequences (a few ints per page), runs,
 * and downloads the logits rows the caller asked for into s->logits.
 *
 * Not on the device (AMPR_ERR_UNSUPPORTED at open): tensor parallelism,
 * F32/BF16 tiers, the q8 KV element type. Calibration (lib/calib) calls the
 * CPU pass directly on its own sequence and keeps working.
 */
#include "backend.h"

#if AMPR_HAVE_CUDA

#include <stdio.h>

#include "../../cuda/ampr_cuda.h"

typedef struct cuda_tier {
    ampr__cuda_model *model;
    ampr__cuda_kvpool *kv;
} cuda_tier;

typedef struct cuda_backend {
    ampr__cuda *cuda;
    ampr__cuda_work *work;
    ampr__cuda_hparams hp;
    cuda_tier tiers[AMPR_TIER_COUNT]; /* by index into ctx->tiers */
    int32_t stride;                   /* block-table row: pages of a full context */
    int32_t *blocks;                  /* host [AMPR__BATCH_MAX][stride] */
    int32_t *pos, *row_seq;           /* host, grown with the pass */
    int32_t cap;
} cuda_backend;

static void cb_free(cuda_backend *cb) {
    if (!cb) return;
    for (int i = 0; i < AMPR_TIER_COUNT; i++) {
        ampr__cuda_kvpool_free(cb->tiers[i].kv);
        ampr__cuda_model_free(cb->tiers[i].model);
    }
    ampr__cuda_work_free(cb->work);
    ampr__cuda_close(cb->cuda);
    ampr__free(cb->blocks);
    ampr__free(cb->pos);
    ampr__free(cb->row_seq);
    ampr__free(cb);
}

static int tier_index(const ampr_ctx *c, const ampr__tier *t) {
    return (int)(t - c->tiers);
}

static ampr_status cuda_tier_upload(ampr__backend *b, ampr_ctx *c, ampr__tier *t, ampr__err *err) {
    cuda_backend *cb = b->impl;
    const ampr__hparams *hp = &c->hp;
    int idx = tier_index(c, t);
    if (idx < 0 || idx >= AMPR_TIER_COUNT)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "tier is not one of the context's");
    if (t->tp != 1)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "\"device\": \"cuda\" with \"tp_size\" > 1 is not supported yet "
                          "(tensor parallelism runs on the CPU only)");
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
    ampr__qmat *layers = ampr__alloc_array(4 * (size_t)hp->n_layers, sizeof *layers, err);
    if (!layers) return AMPR_ERR_NOMEM;
    for (int32_t l = 0; l < hp->n_layers; l++) {
        const ampr__tier_layer *L = ampr__tier_shard(t, l, 0);
        layers[4 * (size_t)l + 0] = L->wqkv;
        layers[4 * (size_t)l + 1] = L->wo;
        layers[4 * (size_t)l + 2] = L->w_gu;
        layers[4 * (size_t)l + 3] = L->w_down;
    }
    cuda_tier *ct = &cb->tiers[idx];
    ampr_status st = ampr__cuda_model_new(cb->cuda, &cb->hp, &t->embd,
                                          t->output_is_embd ? NULL : &t->output, layers, c->norms,
                                          c->rope_cos, c->rope_sin, &ct->model, err);
    ampr__free(layers);
    for (int32_t l = 0; st == AMPR_OK && l < hp->n_layers; l++) {
        const ampr__tier_layer *L = ampr__tier_shard(t, l, 0);
        for (int mm = 0; st == AMPR_OK && mm < AMPR__MM_COUNT; mm++)
            if (L->smooth[mm])
                st = ampr__cuda_model_set_smooth(ct->model, l, mm, L->smooth[mm],
                                                 ampr__mm_width(hp, mm), err);
    }
    if (st == AMPR_OK)
        st = ampr__cuda_kvpool_new(cb->cuda, hp->n_layers, hp->n_kv_heads * hp->head_dim,
                                   ampr__kv_block_size(t->kv), ampr__kv_pages_total(t->kv),
                                   kd == AMPR__KV_F16 ? AMPR__CUDA_F16 : AMPR__CUDA_F32, &ct->kv,
                                   err);
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
                                ampr__scratch *s, ampr__err *err) {
    cuda_backend *cb = b->impl;
    cuda_tier *ct = &cb->tiers[tier_index(c, t)];
    if (n <= 0 || n_logits < 1 || n_logits > n || n_logits > s->max_logits)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "forward of %d tokens, %d logits (scratch: %d)", n,
                          n_logits, s->max_logits);
    if (!ct->model) return ampr__fail(err, AMPR_ERR_INTERNAL, "tier is not on the GPU");
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
        st = ampr__cuda_forward_paged(ct->model, ct->kv, cb->work, tokens, cb->pos, NULL, n,
                                      cb->blocks, 1, cb->stride, n_logits, s->logits, err);
    }
    pthread_mutex_unlock(&c->compute_lock);
    if (st == AMPR_OK) seq->n_tokens += n;
    return st;
}

static ampr_status cuda_decode_batch(ampr__backend *b, ampr_ctx *c, ampr__tier *t,
                                     ampr__kv_seq *const *seqs, const int32_t *tokens, int32_t n,
                                     ampr__scratch *s, ampr__err *err) {
    cuda_backend *cb = b->impl;
    cuda_tier *ct = &cb->tiers[tier_index(c, t)];
    if (n <= 0 || n > AMPR__BATCH_MAX || n > s->max_logits)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "decode batch of %d sequences", n);
    if (!ct->model) return ampr__fail(err, AMPR_ERR_INTERNAL, "tier is not on the GPU");
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
    if (st == AMPR_OK)
        st = ampr__cuda_forward_paged(ct->model, ct->kv, cb->work, tokens, cb->pos, cb->row_seq, n,
                                      cb->blocks, n, cb->stride, n, s->logits, err);
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

static const ampr__backend_ops cuda_ops = {"cuda", cuda_tier_upload, cuda_forward,
                                           cuda_decode_batch, cuda_close};

ampr_status ampr__backend_cuda_open(ampr_ctx *c, int device, ampr__backend **out, char *name,
                                    size_t name_len, ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    *out = NULL;
    if (c->cfg.tp_size > 1)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "\"device\": \"cuda\" with \"tp_size\" = %d is not supported yet "
                          "(tensor parallelism runs on the CPU only)", c->cfg.tp_size);
    ampr__backend *b = ampr__calloc(1, sizeof *b);
    cuda_backend *cb = ampr__calloc(1, sizeof *cb);
    if (!b || !cb) {
        ampr__free(b);
        ampr__free(cb);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for the CUDA backend");
    }
    b->ops = &cuda_ops;
    b->impl = cb;
    cb->hp = (ampr__cuda_hparams){hp->n_layers, hp->dim, hp->hidden_dim, hp->n_heads,
                                  hp->n_kv_heads, hp->head_dim, hp->vocab_size,
                                  hp->context_length, hp->norm_eps,
                                  hp->rope_layout == AMPR__ROPE_INTERLEAVED};
    int32_t bs = c->n_tiers > 0 ? ampr__kv_block_size(c->tiers[0].kv) : 1;
    for (int i = 1; i < c->n_tiers; i++) bs = AMPR__MIN(bs, ampr__kv_block_size(c->tiers[i].kv));
    cb->stride = (hp->context_length + bs - 1) / bs;
    cb->blocks = ampr__alloc_array((size_t)AMPR__BATCH_MAX * (size_t)cb->stride, sizeof(int32_t), err);
    ampr_status st = cb->blocks ? AMPR_OK : AMPR_ERR_NOMEM;
    if (st == AMPR_OK) st = ampr__cuda_open(device, &cb->cuda, err);
    if (st == AMPR_OK) st = ampr__cuda_work_new(cb->cuda, &cb->hp, &cb->work, err);
    for (int i = 0; st == AMPR_OK && i < c->n_tiers; i++)
        st = cuda_tier_upload(b, c, &c->tiers[i], err);
    if (st == AMPR_OK) st = ampr__cuda_sync(cb->cuda, err);
    if (st != AMPR_OK) {
        cuda_close(b);
        return st;
    }
    snprintf(name, name_len, "cuda:%d %s", device, ampr__cuda_device_name(cb->cuda));
    *out = b;
    return AMPR_OK;
}

#else

/* ISO C wants a declaration in every translation unit. */
typedef int ampr__backend_cuda_unused;

#endif
