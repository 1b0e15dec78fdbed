/*
 * tier.c -- build the resident weight tiers of a context from its checkpoint.
 *
 * Each tier gets its own copy of every matrix in the tier's format, built by
 * reading the checkpoint's rows as fp32 (whatever the stored type) and
 * quantizing through the traits table. Q/K/V rows are fused into one matrix
 * and gate/up into another, so a layer is four matmuls. Norm vectors stay
 * fp32 and are shared (ctx->norms). Each tier also gets its KV arena.
 * NF4 checkpoint tensors (bitsandbytes) go into NF4 tiers by copying when
 * the fused blocks line up (tier_nf4.c; tp = 1 only).
 * With tp_size > 1 every layer matrix is stored as tp per-rank shards cut from
 * the same fp32 rows before quantization, as forward/tp.h plans; a process
 * that is one rank of a group ("tp_rank") builds only its own shards.
 */
#include "../engine.h"
#include "tp.h"

#include <stdio.h>

static ampr__qtype tier_qtype(const ampr_ctx *c, ampr_tier t) {
    switch (t) {
    case AMPR_TIER_F32: return AMPR__Q_F32;
    case AMPR_TIER_BF16: return AMPR__Q_BF16;
    case AMPR_TIER_INT8: return AMPR__Q_INT8;
    case AMPR_TIER_NF4: return c->cfg.nf4_double_quant ? AMPR__Q_NF4_DQ : AMPR__Q_NF4;
    default: return AMPR__Q_F16;
    }
}

/* The rows of up to three 2-D checkpoint tensors (same column count), one
 * after another, into dst (row-major), split over the pool: as fp32, or
 * (f16_bits) the stored F16 values as they are. */
typedef struct rows_job {
    const ampr__tensor *const *parts;
    int n_parts, f16_bits;
    void *dst;
    int64_t rows;
} rows_job;

static void rows_task(void *arg, int i, int n) {
    const rows_job *j = arg;
    int64_t r0 = j->rows * i / n, r1 = j->rows * (i + 1) / n, base = 0, cols = j->parts[0]->ne[0];
    for (int p = 0; p < j->n_parts && r0 < r1; p++) {
        const ampr__tensor *t = j->parts[p];
        for (; r0 < r1 && r0 < base + t->ne[1]; r0++) {
            if (j->f16_bits)
                memcpy((uint16_t *)j->dst + r0 * cols, (const uint16_t *)t->data + (r0 - base) * cols,
                       (size_t)cols * sizeof(uint16_t));
            else
                ampr__tensor_row_f32(t, r0 - base, (float *)j->dst + r0 * cols);
        }
        base += t->ne[1];
    }
}

static int64_t total_rows(const ampr__tensor *const *parts, int n_parts) {
    int64_t rows = 0;
    for (int i = 0; i < n_parts; i++) rows += parts[i]->ne[1];
    return rows;
}

static int64_t parts_rows(ampr__pool *pool, const ampr__tensor *const *parts, int n_parts,
                          void *dst, int f16_bits) {
    rows_job j = {parts, n_parts, f16_bits, dst, total_rows(parts, n_parts)};
    int64_t tasks = 4 * (int64_t)ampr__pool_size(pool);
    if (tasks > j.rows) tasks = j.rows;
    if (tasks > 0) ampr__pool_run(pool, (int)tasks, rows_task, &j);
    return j.rows;
}

/* Quantize the row-wise concatenation of up to three tensors. With act_absmax
 * (calibrated input ranges), apply SmoothQuant first: the weights become
 * W diag(s) and *smooth receives s (the forward pass divides inputs by it). */
static ampr_status build_mat(ampr__pool *pool, const ampr__qtraits *qt,
                             const ampr__tensor *const *parts, int n_parts, float *tmp,
                             const float *act_absmax, float alpha, float **smooth,
                             ampr__qmat *dst, ampr__err *err) {
    /* NF4 checkpoint (bitsandbytes) into an NF4 tier: copy, see tier_nf4.c */
    if (!act_absmax) {
        int done;
        AMPR__TRY(ampr__tier_nf4_copy(qt, parts, n_parts, dst, &done, err));
        if (done) return AMPR_OK;
    }
    /* F16 checkpoint into an F16 tier: the stored bits are the tier's (fp16 ->
     * fp32 -> fp16 is exact for every finite value, and ampr_open's load
     * rejects NaN and inf) */
    int f16_bits = !act_absmax && qt->type == AMPR__Q_F16;
    for (int i = 0; i < n_parts; i++) f16_bits &= parts[i]->dtype == AMPR__DT_F16;
    if (f16_bits) {
        memset(dst, 0, sizeof *dst);
        AMPR__TRY(qt->alloc(dst, total_rows(parts, n_parts), parts[0]->ne[0], err));
        parts_rows(pool, parts, n_parts, dst->data, 1);
        return AMPR_OK;
    }
    int64_t cols = parts[0]->ne[0], rows = parts_rows(pool, parts, n_parts, tmp, 0);
    if (act_absmax) {
        *smooth = ampr__alloc_array((size_t)cols, sizeof(float), err);
        if (!*smooth) return AMPR_ERR_NOMEM;
        ampr__smooth_factors(act_absmax, tmp, rows, cols, alpha, *smooth);
        ampr__smooth_weights(tmp, rows, cols, *smooth);
    }
    ampr_status st = ampr__quantize(qt, dst, tmp, rows, cols, pool, err);
    if (st != AMPR_OK)
        return ampr__fail(err, st, "cannot build %s weights of %s (%lld x %lld)", qt->name,
                          parts[0]->name, (long long)rows, (long long)cols);
    return AMPR_OK;
}

/* One matrix of a layer (mm), sharded over tp ranks as forward/tp.h plans.
 * The full fp32 matrix (the fused parts, smoothed as a whole so every rank
 * divides by the same factors as tp = 1) is built once in tmp; each rank's
 * shard is then copied into shard and quantized on its own.
 *   wqkv, w_gu (column-parallel): rows [off, off+len) of every part, all
 *              columns; SmoothQuant factors s replicated.
 *   wo, w_down (row-parallel): all rows, columns [off, off+len); s split the
 *              same way.
 * only >= 0 (one rank per process, "tp_rank"): just that rank's shard; the
 * others stay empty (rows = cols = 0), the process never touches them. */
static void shard_range(const ampr__tp_plan *p, int mm, int part, int64_t *off, int64_t *len) {
    switch (mm) {
    case AMPR__MM_QKV: *off = part == 0 ? p->q0 : p->kv0; *len = part == 0 ? p->q_len : p->kv_len; break;
    case AMPR__MM_O: *off = p->q0; *len = p->q_len; break;
    default: *off = p->ff0; *len = p->ff_len; break; /* gate, up rows; w_down columns */
    }
}

static ampr_status build_sharded(ampr__pool *pool, const ampr__qtraits *qt,
                                 const ampr__hparams *hp,
                                 const ampr__tensor *const *parts, int n_parts, int32_t tp,
                                 float *tmp, float *shard, const float *act_absmax, float alpha,
                                 ampr__tier_layer *shards, int mm, int32_t only, ampr__err *err) {
    int by_rows = mm == AMPR__MM_QKV || mm == AMPR__MM_GU;
    int64_t cols = parts[0]->ne[0], rows = parts_rows(pool, parts, n_parts, tmp, 0);
    int64_t part_row0[3] = {0, 0, 0};
    for (int i = 1; i < n_parts; i++) part_row0[i] = part_row0[i - 1] + parts[i - 1]->ne[1];
    float *s_full = NULL;
    if (act_absmax) {
        s_full = ampr__alloc_array((size_t)cols, sizeof(float), err);
        if (!s_full) return AMPR_ERR_NOMEM;
        ampr__smooth_factors(act_absmax, tmp, rows, cols, alpha, s_full);
        ampr__smooth_weights(tmp, rows, cols, s_full);
    }
    ampr_status st = AMPR_OK;
    for (int32_t r = 0; r < tp && st == AMPR_OK; r++) {
        if (only >= 0 && r != only) continue;
        ampr__tier_layer *T = &shards[r];
        ampr__tp_plan p = ampr__tp_plan_of(hp, tp, r);
        int64_t off, len;
        shard_range(&p, mm, 0, &off, &len);
        ampr__qmat *dst = mm == AMPR__MM_QKV ? &T->wqkv : mm == AMPR__MM_O ? &T->wo
                          : mm == AMPR__MM_GU ? &T->w_gu : &T->w_down;
        int64_t srows = 0, scols = cols;
        if (by_rows) {
            for (int i = 0; i < n_parts; i++) {
                shard_range(&p, mm, i, &off, &len);
                const float *src = tmp + (part_row0[i] + off) * cols;
                memcpy(shard + srows * cols, src, (size_t)(len * cols) * sizeof(float));
                srows += len;
            }
        } else {
            scols = len;
            srows = rows;
            for (int64_t row = 0; row < rows; row++)
                memcpy(shard + row * scols, tmp + row * cols + off, (size_t)scols * sizeof(float));
        }
        if (s_full) {
            int64_t n = by_rows ? cols : scols, c0 = by_rows ? 0 : off;
            T->smooth[mm] = ampr__alloc_array((size_t)n, sizeof(float), err);
            if (!T->smooth[mm]) {
                st = AMPR_ERR_NOMEM;
                break;
            }
            memcpy(T->smooth[mm], s_full + c0, (size_t)n * sizeof(float));
        }
        st = ampr__quantize(qt, dst, shard, srows, scols, pool, err);
        if (st != AMPR_OK)
            st = ampr__fail(err, st, "cannot build %s weights of %s, rank %d of %d (%lld x %lld)",
                            qt->name, parts[0]->name, r, tp, (long long)srows, (long long)scols);
    }
    ampr__free(s_full);
    return st;
}

static ampr_status build_kv(ampr_ctx *c, ampr__tier *t, ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    int kv_dtype = c->cfg.kv_dtype;
    if (kv_dtype < 0) kv_dtype = t->id == AMPR_TIER_F32 ? AMPR__KV_F32 : AMPR__KV_F16;
    int32_t bs = c->cfg.kv_block_size;
    int64_t kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
    int64_t tokens = c->cfg.kv_arena_tokens;
    if (c->cfg.kv_arena_bytes > 0) {
        int64_t per_head = kv_dtype == AMPR__KV_F32 ? 4 * (int64_t)hp->head_dim
                           : kv_dtype == AMPR__KV_F16 ? 2 * (int64_t)hp->head_dim
                                                      : (int64_t)hp->head_dim + 4;
        int64_t per_token = 2 * (int64_t)hp->n_layers * (int64_t)hp->n_kv_heads * per_head;
        tokens = c->cfg.kv_arena_bytes / per_token;
    }
    if (tokens <= 0) tokens = 4 * (int64_t)hp->context_length;
    int64_t pages = tokens / bs;
    if (pages < 1 || pages > INT32_MAX)
        return ampr__fail(err, AMPR_ERR_CONFIG,
                          "KV arena of %lld tokens gives %lld pages of %d tokens; need at least one",
                          (long long)tokens, (long long)pages, bs);
    /* a tier a device serves keeps its pages there: the host only counts them */
    return ampr__kv_arena_new_ex(hp->n_layers, (int32_t)kv_dim, hp->head_dim, bs, (int32_t)pages,
                                 (ampr__kv_dtype)kv_dtype, t->tp, c->backend == NULL, &t->kv, err);
}

static ampr_status build_tier(ampr_ctx *c, ampr__tier *t, float *tmp, float *shard,
                              ampr_progress_fn progress,
                              void *user, int tier_index, ampr__err *err) {
    const ampr__model *m = c->model;
    const ampr__hparams *hp = &c->hp;
    t->qtype = tier_qtype(c, t->id);
    t->qt = ampr__qtraits_get(t->qtype);
    /* bf16 activations where the CPU has the instructions; else fp32 */
    if (t->id == AMPR_TIER_NF4 && c->cfg.nf4_bf16_act && ampr__qtraits_nf4_bf16(t->qtype))
        t->qt = ampr__qtraits_nf4_bf16(t->qtype);
    if (!t->qt)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "tier %s is not available in this build",
                          ampr_tier_name(t->id));
    t->tp = c->cfg.tp_size;
    t->layers = ampr__alloc_array((size_t)hp->n_layers * (size_t)t->tp, sizeof *t->layers, err);
    if (!t->layers) return AMPR_ERR_NOMEM;

    char stage[32];
    snprintf(stage, sizeof stage, "tier %s", ampr_tier_name(t->id));
    AMPR__TRY(build_mat(c->pool, t->qt, &m->tok_embd, 1, tmp, NULL, 0, NULL, &t->embd, err));
    t->output_is_embd = m->output == m->tok_embd;
    if (!t->output_is_embd)
        AMPR__TRY(build_mat(c->pool, t->qt, &m->output, 1, tmp, NULL, 0, NULL, &t->output, err));
    /* SmoothQuant applies to the INT8 tier when a calibration file gave ranges */
    const ampr__act_stats *cs = &c->cfg.calib_stats;
    int smooth = t->id == AMPR_TIER_INT8 && c->cfg.smooth_alpha > 0;
    for (int l = 0; l < hp->n_layers; l++) {
        const ampr__layer *L = &m->layers[l];
        ampr__tier_layer *T = &t->layers[(size_t)l * (size_t)t->tp];
        const ampr__tensor *qkv[3] = {L->wq, L->wk, L->wv};
        const ampr__tensor *gu[2] = {L->w_gate, L->w_up};
        const float *am[AMPR__MM_COUNT] = {NULL, NULL, NULL, NULL};
        for (int k = 0; smooth && k < AMPR__MM_COUNT; k++)
            am[k] = cs->absmax[k] + (size_t)l * (size_t)ampr__mm_width(hp, k);
        float a = c->cfg.smooth_alpha;
        if (t->tp == 1) {
            AMPR__TRY(build_mat(c->pool, t->qt, qkv, 3, tmp, am[0], a, &T->smooth[0], &T->wqkv, err));
            AMPR__TRY(build_mat(c->pool, t->qt, &L->wo, 1, tmp, am[1], a, &T->smooth[1], &T->wo, err));
            AMPR__TRY(build_mat(c->pool, t->qt, gu, 2, tmp, am[2], a, &T->smooth[2], &T->w_gu, err));
            AMPR__TRY(build_mat(c->pool, t->qt, &L->w_down, 1, tmp, am[3], a, &T->smooth[3], &T->w_down, err));
        } else {
            AMPR__TRY(build_sharded(c->pool, t->qt, hp, qkv, 3, t->tp, tmp, shard, am[0], a, T,
                                    AMPR__MM_QKV, c->cfg.tp_rank, err));
            AMPR__TRY(build_sharded(c->pool, t->qt, hp, &L->wo, 1, t->tp, tmp, shard, am[1], a, T,
                                    AMPR__MM_O, c->cfg.tp_rank, err));
            AMPR__TRY(build_sharded(c->pool, t->qt, hp, gu, 2, t->tp, tmp, shard, am[2], a, T,
                                    AMPR__MM_GU, c->cfg.tp_rank, err));
            AMPR__TRY(build_sharded(c->pool, t->qt, hp, &L->w_down, 1, t->tp, tmp, shard, am[3], a, T,
                                    AMPR__MM_DOWN, c->cfg.tp_rank, err));
        }
        if (progress &&
            progress(user, stage, (float)(tier_index * hp->n_layers + l + 1) /
                                      (float)(c->cfg.n_tiers * hp->n_layers)))
            return ampr__fail(err, AMPR_ERR_CANCELLED, "open cancelled by the progress callback");
    }
    uint64_t bytes = ampr__qmat_bytes(&t->embd) + ampr__qmat_bytes(&t->output);
    for (size_t l = 0; l < (size_t)hp->n_layers * (size_t)t->tp; l++) {
        const ampr__tier_layer *T = &t->layers[l];
        bytes += ampr__qmat_bytes(&T->wqkv) + ampr__qmat_bytes(&T->wo) +
                 ampr__qmat_bytes(&T->w_gu) + ampr__qmat_bytes(&T->w_down);
    }
    t->weight_bytes = bytes;
    return build_kv(c, t, err);
}

ampr_status ampr__tiers_build(ampr_ctx *c, ampr_progress_fn progress, void *user,
                              ampr__tier_done_fn done, void *done_user, ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    if (!c->model->layers)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "tiers built again after the checkpoint's weights were dropped");
    int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim;
    int64_t kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
    int64_t biggest = (int64_t)hp->vocab_size * hp->dim;
    biggest = AMPR__MAX(biggest, (q_dim + 2 * kv_dim) * hp->dim);
    biggest = AMPR__MAX(biggest, 2 * (int64_t)hp->hidden_dim * hp->dim);
    biggest = AMPR__MAX(biggest, q_dim * hp->dim);
    int32_t tp = c->cfg.tp_size;
    if (!ampr__tp_fits(hp, tp))
        return ampr__fail(err, AMPR_ERR_CONFIG,
                          "config: \"tp_size\" = %d must divide n_heads (%d), n_kv_heads (%d) "
                          "and hidden_dim (%d) of this model",
                          tp, hp->n_heads, hp->n_kv_heads, hp->hidden_dim);
    float *tmp = ampr__alloc_array((size_t)biggest * (tp > 1 ? 2 : 1), sizeof(float), err);
    if (!tmp) return AMPR_ERR_NOMEM;
    float *shard = tp > 1 ? tmp + biggest : NULL; /* one rank's shard of a matrix */

    /* shared fp32 norms */
    size_t nd = (size_t)hp->dim;
    c->norms = ampr__alloc_array((2 * (size_t)hp->n_layers + 1) * nd, sizeof(float), err);
    if (!c->norms) {
        ampr__free(tmp);
        return AMPR_ERR_NOMEM;
    }
    for (int l = 0; l < hp->n_layers; l++) {
        ampr__tensor_row_f32(c->model->layers[l].attn_norm, 0, c->norms + (size_t)l * nd);
        ampr__tensor_row_f32(c->model->layers[l].ffn_norm, 0,
                             c->norms + ((size_t)hp->n_layers + (size_t)l) * nd);
    }
    ampr__tensor_row_f32(c->model->output_norm, 0, c->norms + 2 * (size_t)hp->n_layers * nd);

    ampr_status st = AMPR_OK;
    if (c->cfg.smooth_alpha > 0) { /* the calibration must be of this model's shape */
        for (int k = 0; k < AMPR__MM_COUNT && st == AMPR_OK; k++)
            if (c->cfg.calib_len[k] != (size_t)hp->n_layers * (size_t)ampr__mm_width(hp, k))
                st = ampr__fail(err, AMPR_ERR_CONFIG,
                                "the calibration file was made for another model shape "
                                "(%zu activation ranges for matmul %d, this model needs %d x %d)",
                                c->cfg.calib_len[k], k, hp->n_layers, ampr__mm_width(hp, k));
    }
    for (int i = 0; i < c->cfg.n_tiers && st == AMPR_OK; i++) {
        ampr__tier *t = &c->tiers[i];
        t->id = c->cfg.tiers[i];
        pthread_mutex_init(&t->batch_mu, NULL);
        pthread_cond_init(&t->batch_cv, NULL);
        t->batch_ready = 1;
        c->n_tiers = i + 1;
        st = build_tier(c, t, tmp, shard, progress, user, i, err);
        if (st == AMPR_OK && done) st = done(c, t, done_user, err);
    }
    ampr__free(tmp);
    return st;
}

void ampr__tiers_free(ampr_ctx *c) {
    for (int i = 0; i < c->n_tiers; i++) {
        ampr__tier *t = &c->tiers[i];
        ampr__qmat_free(&t->embd);
        ampr__qmat_free(&t->output);
        if (t->layers) {
            for (size_t l = 0; l < (size_t)c->hp.n_layers * (size_t)t->tp; l++) {
                ampr__qmat_free(&t->layers[l].wqkv);
                ampr__qmat_free(&t->layers[l].wo);
                ampr__qmat_free(&t->layers[l].w_gu);
                ampr__qmat_free(&t->layers[l].w_down);
                for (int k = 0; k < AMPR__MM_COUNT; k++) ampr__free(t->layers[l].smooth[k]);
            }
        }
        ampr__free(t->layers);
        ampr__kv_arena_free(t->kv);
        if (t->batch_scratch) {
            ampr__scratch_free(t->batch_scratch);
            ampr__free(t->batch_scratch);
        }
        if (t->batch_ready) {
            pthread_mutex_destroy(&t->batch_mu);
            pthread_cond_destroy(&t->batch_cv);
        }
        memset(t, 0, sizeof *t);
    }
    c->n_tiers = 0;
    ampr__free(c->norms);
    c->norms = NULL;
}

void ampr__tier_drop_host(ampr_ctx *c, ampr__tier *t) {
    ampr__qmat_drop_data(&t->embd);
    ampr__qmat_drop_data(&t->output);
    for (size_t l = 0; t->layers && l < (size_t)c->hp.n_layers * (size_t)t->tp; l++) {
        ampr__qmat_drop_data(&t->layers[l].wqkv);
        ampr__qmat_drop_data(&t->layers[l].wo);
        ampr__qmat_drop_data(&t->layers[l].w_gu);
        ampr__qmat_drop_data(&t->layers[l].w_down);
    }
    ampr__kv_arena_drop_pages(t->kv);
    t->device_only = 1;
}

ampr__tier *ampr__ctx_tier(ampr_ctx *c, ampr_tier id) {
    for (int i = 0; i < c->n_tiers; i++)
        if (c->tiers[i].id == id) return &c->tiers[i];
    return NULL;
}
