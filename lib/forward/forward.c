/*
 * forward.c -- the transformer forward pass, written against the quant traits
 * (matmul) and the paged KV cache only.
 *
 * For n tokens at positions p0 .. p0+n-1 (n = 1 for decode, n > 1 for a
 * prefill chunk, all in one batch so every weight is read once per chunk):
 *
 *   x[n][dim]          = embedding rows
 *   for each layer l:
 *     xb               = rmsnorm(x) * attn_norm[l]
 *     qkv[n][q+2kv]    = xb . Wqkv^T          (Q | K | V)
 *     rope(Q), rope(K); K, V -> KV pages at p0..p0+n-1
 *     att[n][q]        = softmax(Q K^T / sqrt(hd)) V  (causal, GQA)
 *     x               += att . Wo^T
 *     xb               = rmsnorm(x) * ffn_norm[l]
 *     hb[n][2*hidden]  = xb . Wgu^T           (gate | up)
 *     hb2[n][hidden]   = silu(gate) * up
 *     x               += hb2 . Wdown^T
 *   logits             = rmsnorm(x) * final_norm . Wout^T
 *
 * Matmuls split output rows across the thread pool; attention splits
 * (token, head) pairs. Each output element is computed by one thread in a
 * fixed order, so results do not depend on the number of threads.
 */
#include "../engine.h"

#include <math.h>

/* ---- scratch ------------------------------------------------------------ */

ampr_status ampr__scratch_new(const ampr_ctx *c, int32_t max_tokens, int32_t max_logits,
                              ampr__scratch *s, ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    memset(s, 0, sizeof *s);
    s->max_tokens = max_tokens;
    s->max_logits = AMPR__MAX(1, AMPR__MIN(max_logits, max_tokens));
    size_t n = (size_t)max_tokens;
    size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim;
    size_t kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    size_t widest = AMPR__MAX((size_t)hp->dim, AMPR__MAX(q_dim, (size_t)hp->hidden_dim));
    size_t act = 0;
    for (int i = 0; i < c->n_tiers; i++)
        act = AMPR__MAX(act, c->tiers[i].qt->act_bytes((int64_t)n, (int64_t)widest));
    s->x = ampr__alloc_array(n * (size_t)hp->dim, sizeof(float), err);
    s->xb = ampr__alloc_array(n * (size_t)hp->dim, sizeof(float), err);
    s->qkv = ampr__alloc_array(n * (q_dim + 2 * kv_dim), sizeof(float), err);
    s->att = ampr__alloc_array(n * q_dim, sizeof(float), err);
    s->hb = ampr__alloc_array(n * 2 * (size_t)hp->hidden_dim, sizeof(float), err);
    s->hb2 = ampr__alloc_array(n * (size_t)hp->hidden_dim, sizeof(float), err);
    s->scores = ampr__alloc_array((size_t)ampr__pool_size(c->pool) * (size_t)hp->context_length,
                                  sizeof(float), err);
    s->logits = ampr__alloc_array((size_t)s->max_logits * (size_t)hp->vocab_size, sizeof(float), err);
    s->act_bytes = act;
    s->act = act ? ampr__malloc(act) : NULL;
    if (!s->x || !s->xb || !s->qkv || !s->att || !s->hb || !s->hb2 || !s->scores || !s->logits ||
        (act && !s->act)) {
        ampr__scratch_free(s);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for request scratch (%d tokens)",
                          max_tokens);
    }
    return AMPR_OK;
}

void ampr__scratch_free(ampr__scratch *s) {
    ampr__free(s->x);
    ampr__free(s->xb);
    ampr__free(s->qkv);
    ampr__free(s->att);
    ampr__free(s->hb);
    ampr__free(s->hb2);
    ampr__free(s->scores);
    ampr__free(s->act);
    ampr__free(s->logits);
    memset(s, 0, sizeof *s);
}

/* ---- parallel matmul ---------------------------------------------------- */

typedef struct matmul_job {
    const ampr__qtraits *qt;
    const ampr__qmat *w;
    const float *x;
    const void *act;
    int64_t n;
    float *y;
    int64_t ldy;
} matmul_job;

static void matmul_task(void *arg, int i, int n_tasks) {
    const matmul_job *j = arg;
    /* chunks of whole 16-row tiles so SIMD kernels see aligned ranges */
    int64_t tiles = (j->w->rows + 15) / 16;
    int64_t t0 = tiles * i / n_tasks, t1 = tiles * (i + 1) / n_tasks;
    int64_t r0 = t0 * 16, r1 = AMPR__MIN(t1 * 16, j->w->rows);
    if (r0 < r1) j->qt->matmul(j->w, j->x, j->act, j->n, j->y, j->ldy, r0, r1);
}

/* y[n][w->rows] (row stride ldy) = x[n][w->cols] . W^T */
static void matmul(ampr_ctx *c, const ampr__tier *t, const ampr__qmat *w, const float *x,
                   int64_t n, float *y, int64_t ldy, ampr__scratch *s) {
    const void *act = NULL;
    if (t->qt->act_prepare) {
        t->qt->act_prepare(x, n, w->cols, s->act);
        act = s->act;
    }
    matmul_job j = {t->qt, w, x, act, n, y, ldy};
    int tasks = ampr__pool_size(c->pool);
    if ((int64_t)tasks * 16 > w->rows) tasks = (int)((w->rows + 15) / 16);
    ampr__pool_run(c->pool, tasks, matmul_task, &j);
}

int32_t ampr__mm_width(const ampr__hparams *hp, int mm) {
    switch (mm) {
    case AMPR__MM_O: return hp->n_heads * hp->head_dim;
    case AMPR__MM_DOWN: return hp->hidden_dim;
    default: return hp->dim;
    }
}

/* Before a layer's matmul: record activation ranges (calibration) and apply
 * SmoothQuant's 1/s to the input (single-use buffers, so in place is safe). */
static void mm_input(const ampr_ctx *c, const ampr__tier_layer *L, ampr__scratch *s, int32_t l,
                     int mm, float *x, int32_t n) {
    int32_t w = ampr__mm_width(&c->hp, mm);
    if (s->stats && s->stats->absmax[mm]) {
        float *mx = s->stats->absmax[mm] + (size_t)l * (size_t)w;
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < w; j++) {
                float a = fabsf(x[(size_t)i * w + j]);
                if (a > mx[j]) mx[j] = a;
            }
    }
    if (L->smooth[mm]) ampr__smooth_act(x, n, w, L->smooth[mm]);
}

/* ---- elementwise pieces ----------------------------------------------------- */

static void rmsnorm(float *o, const float *x, const float *w, int32_t size, float eps) {
    float ss = 0.0f;
    for (int32_t j = 0; j < size; j++) ss += x[j] * x[j];
    ss /= (float)size;
    ss += eps;
    ss = 1.0f / sqrtf(ss);
    for (int32_t j = 0; j < size; j++) o[j] = w[j] * (ss * x[j]);
}

/* Rotate n_heads heads of head_dim values at position pos, in place. */
static void rope(const ampr_ctx *c, float *v, int32_t n_heads, int32_t pos) {
    int32_t hd = c->hp.head_dim, half = hd / 2;
    const float *cs = c->rope_cos + (size_t)pos * (size_t)half;
    const float *sn = c->rope_sin + (size_t)pos * (size_t)half;
    for (int32_t h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * (size_t)hd;
        for (int32_t i = 0; i < half; i++) {
            int32_t a, b;
            if (c->hp.rope_layout == AMPR__ROPE_INTERLEAVED) { a = 2 * i; b = 2 * i + 1; }
            else { a = i; b = i + half; }
            float x0 = x[a], x1 = x[b];
            x[a] = x0 * cs[i] - x1 * sn[i];
            x[b] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

static void kv_store(const ampr__kv_seq *seq, int32_t l, int32_t pos, const float *k,
                     const float *v, int32_t kv_dim) {
    void *kd = ampr__kv_k(seq, l, pos), *vd = ampr__kv_v(seq, l, pos);
    if (ampr__kv_dtype_of(seq->arena) == AMPR__KV_F32) {
        memcpy(kd, k, (size_t)kv_dim * sizeof(float));
        memcpy(vd, v, (size_t)kv_dim * sizeof(float));
    } else {
        uint16_t *kh = kd, *vh = vd;
        for (int32_t i = 0; i < kv_dim; i++) {
            kh[i] = ampr__f32_to_fp16(k[i]);
            vh[i] = ampr__f32_to_fp16(v[i]);
        }
    }
}

/* ---- attention ---------------------------------------------------------- */

typedef struct attn_job {
    const ampr_ctx *c;
    const ampr__kv_seq *seq;
    int32_t layer, n, p0;
    const float *qkv; /* [n][q+2kv] */
    float *att;       /* [n][q] */
    float *scores;    /* [tasks][context_length] */
} attn_job;

static void attn_task(void *arg, int task, int n_tasks) {
    const attn_job *j = arg;
    const ampr__hparams *hp = &j->c->hp;
    int32_t hd = hp->head_dim, q_dim = hp->n_heads * hd, kv_dim = hp->n_kv_heads * hd;
    int32_t group = hp->n_heads / hp->n_kv_heads;
    int f16 = ampr__kv_dtype_of(j->seq->arena) == AMPR__KV_F16;
    float scale = 1.0f / sqrtf((float)hd);
    float *sc = j->scores + (size_t)task * (size_t)hp->context_length;
    int32_t items = j->n * hp->n_heads;
    for (int32_t it = task; it < items; it += n_tasks) {
        int32_t i = it / hp->n_heads, h = it % hp->n_heads;
        int32_t pos = j->p0 + i, kvh = h / group;
        const float *q = j->qkv + (size_t)i * (size_t)(q_dim + 2 * kv_dim) + (size_t)h * (size_t)hd;
        /* scores over positions 0..pos */
        float mx = -INFINITY;
        for (int32_t t = 0; t <= pos; t++) {
            const void *kp = ampr__kv_k(j->seq, j->layer, t);
            float s = 0.0f;
            if (f16) {
                const uint16_t *k = (const uint16_t *)kp + (size_t)kvh * (size_t)hd;
                for (int32_t d = 0; d < hd; d++) s += q[d] * ampr__fp16_to_f32(k[d]);
            } else {
                const float *k = (const float *)kp + (size_t)kvh * (size_t)hd;
                for (int32_t d = 0; d < hd; d++) s += q[d] * k[d];
            }
            s *= scale;
            sc[t] = s;
            if (s > mx) mx = s;
        }
        float sum = 0.0f;
        for (int32_t t = 0; t <= pos; t++) {
            sc[t] = expf(sc[t] - mx);
            sum += sc[t];
        }
        float *o = j->att + (size_t)i * (size_t)q_dim + (size_t)h * (size_t)hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int32_t t = 0; t <= pos; t++) {
            float a = sc[t] / sum;
            const void *vp = ampr__kv_v(j->seq, j->layer, t);
            if (f16) {
                const uint16_t *v = (const uint16_t *)vp + (size_t)kvh * (size_t)hd;
                for (int32_t d = 0; d < hd; d++) o[d] += a * ampr__fp16_to_f32(v[d]);
            } else {
                const float *v = (const float *)vp + (size_t)kvh * (size_t)hd;
                for (int32_t d = 0; d < hd; d++) o[d] += a * v[d];
            }
        }
    }
}

/* ---- the pass ----------------------------------------------------------- */

ampr_status ampr__forward(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq, const int32_t *tokens,
                          int32_t n, int32_t n_logits, ampr__scratch *s, ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    int32_t dim = hp->dim, hd = hp->head_dim, hidden = hp->hidden_dim;
    int32_t q_dim = hp->n_heads * hd, kv_dim = hp->n_kv_heads * hd, qkv_dim = q_dim + 2 * kv_dim;
    int32_t p0 = seq->n_tokens;
    if (n <= 0 || n > s->max_tokens || n_logits < 1 || n_logits > n || n_logits > s->max_logits)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "forward of %d tokens, %d logits (scratch: %d, %d)",
                          n, n_logits, s->max_tokens, s->max_logits);
    if (p0 + n > hp->context_length)
        return ampr__fail(err, AMPR_ERR_PROMPT_TOO_LONG,
                          "positions %d..%d exceed the context window of %d", p0, p0 + n - 1,
                          hp->context_length);
    if ((int64_t)seq->n_blocks * ampr__kv_block_size(seq->arena) < (int64_t)p0 + n)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "sequence holds too few KV pages");
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= hp->vocab_size)
            return ampr__fail(err, AMPR_ERR_INVALID_ARG, "token id %d out of range [0, %d)",
                              tokens[i], hp->vocab_size);
    }

    pthread_mutex_lock(&c->compute_lock);
    for (int32_t i = 0; i < n; i++) t->qt->dequant_row(&t->embd, tokens[i], s->x + (size_t)i * dim);

    for (int32_t l = 0; l < hp->n_layers; l++) {
        const ampr__tier_layer *L = &t->layers[l];
        for (int32_t i = 0; i < n; i++)
            rmsnorm(s->xb + (size_t)i * dim, s->x + (size_t)i * dim, ampr__attn_norm(c, l), dim,
                    hp->norm_eps);
        mm_input(c, L, s, l, AMPR__MM_QKV, s->xb, n);
        matmul(c, t, &L->wqkv, s->xb, n, s->qkv, qkv_dim, s);
        for (int32_t i = 0; i < n; i++) {
            float *q = s->qkv + (size_t)i * qkv_dim, *k = q + q_dim, *v = k + kv_dim;
            rope(c, q, hp->n_heads, p0 + i);
            rope(c, k, hp->n_kv_heads, p0 + i);
            kv_store(seq, l, p0 + i, k, v, kv_dim);
        }
        attn_job aj = {c, seq, l, n, p0, s->qkv, s->att, s->scores};
        int tasks = AMPR__MIN(ampr__pool_size(c->pool), n * hp->n_heads);
        ampr__pool_run(c->pool, tasks, attn_task, &aj);
        mm_input(c, L, s, l, AMPR__MM_O, s->att, n);
        matmul(c, t, &L->wo, s->att, n, s->xb, dim, s);
        for (size_t e = 0; e < (size_t)n * (size_t)dim; e++) s->x[e] += s->xb[e];

        for (int32_t i = 0; i < n; i++)
            rmsnorm(s->xb + (size_t)i * dim, s->x + (size_t)i * dim, ampr__ffn_norm(c, l), dim,
                    hp->norm_eps);
        mm_input(c, L, s, l, AMPR__MM_GU, s->xb, n);
        matmul(c, t, &L->w_gu, s->xb, n, s->hb, 2 * hidden, s);
        for (int32_t i = 0; i < n; i++) {
            const float *g = s->hb + (size_t)i * 2 * hidden, *u = g + hidden;
            float *o = s->hb2 + (size_t)i * hidden;
            for (int32_t e = 0; e < hidden; e++) o[e] = g[e] * (1.0f / (1.0f + expf(-g[e]))) * u[e];
        }
        mm_input(c, L, s, l, AMPR__MM_DOWN, s->hb2, n);
        matmul(c, t, &L->w_down, s->hb2, n, s->xb, dim, s);
        for (size_t e = 0; e < (size_t)n * (size_t)dim; e++) s->x[e] += s->xb[e];
    }

    const ampr__qmat *out = t->output_is_embd ? &t->embd : &t->output;
    int32_t first = n - n_logits, n_out = n_logits;
    for (int32_t i = 0; i < n_out; i++)
        rmsnorm(s->xb + (size_t)i * dim, s->x + (size_t)(first + i) * dim, ampr__final_norm(c), dim,
                hp->norm_eps);
    matmul(c, t, out, s->xb, n_out, s->logits, hp->vocab_size, s);
    pthread_mutex_unlock(&c->compute_lock);
    seq->n_tokens = p0 + n;
    return AMPR_OK;
}
