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
 *
 * Tensor parallelism (cfg.tp_size = tp > 1, plan in tp.h): the layers run on
 * tp simulated ranks, one thread each (the caller is rank 0). Rank r holds
 * the shards of its heads and hidden units and computes
 *     qkv_r = xb . Wqkv_r^T;  attention over its heads (its KV slice);
 *     part_r = att_r . Wo_r^T             (a partial sum of att . Wo^T)
 *     x += all_reduce(part_0 .. part_{tp-1})
 *     hb_r = xb . Wgu_r^T;  part_r = swiglu(hb_r) . Wdown_r^T;  x += all_reduce
 * The CPU all-reduce sums the partials in rank order 0..tp-1 (deterministic),
 * each rank adding a slice of x, between two barriers. Every rank keeps its
 * own normed copy xb of the replicated x, as a GPU rank would. Embedding and
 * logits run once, on the pool, before and after the ranks. With tp = 1 the
 * same layer code runs as the single rank, its matmuls and attention on the
 * pool.
 */
#include "../engine.h"
#include "tp.h"

#include <math.h>

#include "../quant/quant.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ATTN_X86 1
#endif

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
    int ranks_ok = 1;
    s->tp = c->cfg.tp_size;
    if (s->tp > 1) {
        s->rank = ampr__alloc_array((size_t)s->tp, sizeof *s->rank, err);
        ranks_ok = s->rank != NULL;
        for (int32_t r = 0; r < s->tp && ranks_ok; r++) {
            ampr__tp_plan p = ampr__tp_plan_of(hp, s->tp, r);
            ampr__rank_scratch *rs = &s->rank[r];
            rs->xb = ampr__alloc_array(n * (size_t)hp->dim, sizeof(float), err);
            rs->qkv = ampr__alloc_array(n * (size_t)(p.q_len + 2 * p.kv_len), sizeof(float), err);
            rs->att = ampr__alloc_array(n * (size_t)p.q_len, sizeof(float), err);
            rs->hb = ampr__alloc_array(n * 2 * (size_t)p.ff_len, sizeof(float), err);
            rs->hb2 = ampr__alloc_array(n * (size_t)p.ff_len, sizeof(float), err);
            rs->part = ampr__alloc_array(n * (size_t)hp->dim, sizeof(float), err);
            rs->scores = ampr__alloc_array((size_t)hp->context_length, sizeof(float), err);
            rs->act = act ? ampr__malloc(act) : NULL;
            ranks_ok = rs->xb && rs->qkv && rs->att && rs->hb && rs->hb2 && rs->part &&
                       rs->scores && (!act || rs->act);
        }
    }
    if (!s->x || !s->xb || !s->qkv || !s->att || !s->hb || !s->hb2 || !s->scores || !s->logits ||
        (act && !s->act) || !ranks_ok) {
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
    for (int32_t r = 0; s->rank && r < s->tp; r++) {
        ampr__rank_scratch *rs = &s->rank[r];
        ampr__free(rs->xb);
        ampr__free(rs->qkv);
        ampr__free(rs->att);
        ampr__free(rs->hb);
        ampr__free(rs->hb2);
        ampr__free(rs->part);
        ampr__free(rs->scores);
        ampr__free(rs->act);
    }
    ampr__free(s->rank);
    memset(s, 0, sizeof *s);
}

/* ---- one rank's view ------------------------------------------------------ */

typedef struct tp_shared tp_shared;

/* What one rank computes with; with tp = 1 the single rank is the whole model
 * and its buffers are the scratch's own. */
typedef struct rank_ctx {
    ampr_ctx *c;
    const ampr__tier *t;
    ampr__kv_seq *const *seqs; /* [n]: the sequence of each token */
    const int32_t *pos;        /* [n]: the position of each token in its sequence */
    ampr__act_stats *stats;
    ampr__tp_plan plan;
    int32_t n;
    ampr__pool *pool; /* helper threads for matmuls and attention; NULL: this thread alone */
    float *x;         /* [n][dim] the residual stream, shared by all ranks */
    float *xb, *qkv, *att, *hb, *hb2, *part, *scores; /* see ampr__rank_scratch */
    void *act;
    tp_shared *sh;    /* NULL when tp = 1 */
} rank_ctx;

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

/* y[n][w->rows] (row stride ldy) = x[n][w->cols] . W^T, on pool (or on this
 * thread alone when pool is NULL); act: the prepared-activation buffer. */
static void matmul(ampr__pool *pool, const ampr__tier *t, const ampr__qmat *w, const float *x,
                   int64_t n, float *y, int64_t ldy, void *act_buf) {
    const void *act = NULL;
    if (t->qt->act_prepare) {
        t->qt->act_prepare(x, n, w->cols, act_buf);
        act = act_buf;
    }
    matmul_job j = {t->qt, w, x, act, n, y, ldy};
    if (!pool) {
        matmul_task(&j, 0, 1);
        return;
    }
    int tasks = ampr__pool_size(pool);
    if ((int64_t)tasks * 16 > w->rows) tasks = (int)((w->rows + 15) / 16);
    ampr__pool_run(pool, tasks, matmul_task, &j);
}

int32_t ampr__mm_width(const ampr__hparams *hp, int mm) {
    switch (mm) {
    case AMPR__MM_O: return hp->n_heads * hp->head_dim;
    case AMPR__MM_DOWN: return hp->hidden_dim;
    default: return hp->dim;
    }
}

/* Before a layer's matmul: record activation ranges (calibration) and apply
 * SmoothQuant's 1/s to the input (single-use buffers, so in place is safe).
 * x is the rank's input, [n][w->cols]: for wo and w_down the columns
 * [col0, col0 + cols) of the full input, for wqkv and w_gu all of it (then
 * only rank 0 records, the other ranks see the same values). */
static void mm_input(const rank_ctx *rc, const ampr__tier_layer *L, int32_t l, int mm,
                     const ampr__qmat *w, float *x) {
    int32_t full = ampr__mm_width(&rc->c->hp, mm), cols = (int32_t)w->cols, n = rc->n;
    int32_t col0 = mm == AMPR__MM_O ? rc->plan.q0 : mm == AMPR__MM_DOWN ? rc->plan.ff0 : 0;
    int record = rc->stats && rc->stats->absmax[mm] && (col0 > 0 || rc->plan.rank == 0);
    if (record) {
        float *mx = rc->stats->absmax[mm] + (size_t)l * (size_t)full + (size_t)col0;
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = 0; j < cols; j++) {
                float a = fabsf(x[(size_t)i * cols + j]);
                if (a > mx[j]) mx[j] = a;
            }
    }
    if (L->smooth[mm]) ampr__smooth_act(x, n, cols, L->smooth[mm]);
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

/* o[n][ff] = silu(gate) * up, from hb[n][2*ff] = gate | up */
static void swiglu(float *o, const float *hb, int32_t n, int32_t ff) {
    for (int32_t i = 0; i < n; i++) {
        const float *g = hb + (size_t)i * 2 * ff, *u = g + ff;
        float *oi = o + (size_t)i * ff;
        for (int32_t e = 0; e < ff; e++) oi[e] = g[e] * (1.0f / (1.0f + expf(-g[e]))) * u[e];
    }
}

/* Q8 KV: width values as int8 per head of hd, then the per-head scales. */
static void q8_store(void *dst, const float *x, int32_t width, int32_t hd) {
    int8_t *q = dst;
    unsigned char *scales = (unsigned char *)dst + width;
    for (int32_t h = 0; h < width / hd; h++) {
        const float *xh = x + (size_t)h * hd;
        float mx = ampr__absmax_finite(xh, hd);
        /* a head with an inf or NaN: q 0 and scale NaN, so what reads it is
         * NaN too (casting NaN to int8 would be undefined) */
        int bad = isnan(mx);
        float scale = bad ? NAN : mx / 127.0f, inv = !bad && mx > 0 ? 127.0f / mx : 0.0f;
        for (int32_t d = 0; d < hd; d++)
            q[(size_t)h * hd + d] = bad ? 0 : (int8_t)nearbyintf(xh[d] * inv);
        memcpy(scales + (size_t)h * sizeof(float), &scale, sizeof scale);
    }
}

/* Store a rank's K and V slices (width elements) of layer l at pos. */
static void kv_store(const ampr__kv_seq *seq, int32_t rank, int32_t l, int32_t pos, const float *k,
                     const float *v, int32_t width, int32_t seq_head_dim) {
    void *kd = ampr__kv_k(seq, rank, l, pos), *vd = ampr__kv_v(seq, rank, l, pos);
    ampr__kv_dtype dt = ampr__kv_dtype_of(seq->arena);
    if (dt == AMPR__KV_F32) {
        memcpy(kd, k, (size_t)width * sizeof(float));
        memcpy(vd, v, (size_t)width * sizeof(float));
    } else if (dt == AMPR__KV_Q8) {
        q8_store(kd, k, width, seq_head_dim);
        q8_store(vd, v, width, seq_head_dim);
    } else {
        uint16_t *kh = kd, *vh = vd;
        for (int32_t i = 0; i < width; i++) {
            kh[i] = ampr__f32_to_fp16(k[i]);
            vh[i] = ampr__f32_to_fp16(v[i]);
        }
    }
}

/* ---- attention over a rank's heads --------------------------------------- */

typedef struct attn_job {
    const ampr_ctx *c;
    ampr__kv_seq *const *seqs;
    const int32_t *pos;
    int32_t rank, n_heads, n_kv_heads; /* the rank's heads (plan), local indices */
    int32_t layer, n;
    const float *qkv; /* [n][q_len + 2*kv_len] */
    float *att;       /* [n][q_len] */
    float *scores;    /* [tasks][context_length] */
} attn_job;

/* fp16 -> fp32, exactly ampr__fp16_to_f32 (an exact conversion), inline and
 * branch-free: the 15 magnitude bits moved to fp32 position
 * and scaled by 2^112 rebias normals and turn subnormals into normals. */
static inline float h2f(uint16_t h) {
    uint32_t u = (uint32_t)(h & 0x7fff) << 13, n;
    float f;
    memcpy(&f, &u, sizeof f);
    f *= 0x1p112f;
    memcpy(&n, &f, sizeof n);
    n = (h & 0x7c00) == 0x7c00 ? u | 0x7f800000u : n; /* inf, NaN */
    n |= (uint32_t)(h & 0x8000) << 16;
    memcpy(&f, &n, sizeof f);
    return f;
}

/* q . k over hd values in 8 interleaved partial sums (independent chains the
 * compiler can keep in vector lanes), combined in a fixed order. */
#define DOT8(EXPR)                                                                         \
    do {                                                                                   \
        float p_[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                           \
        int32_t d = 0;                                                                     \
        for (; d + 8 <= hd; d += 8)                                                        \
            for (int k_ = 0; k_ < 8; k_++) p_[k_] += q[d + k_] * (EXPR(d + k_));           \
        s = ((p_[0] + p_[4]) + (p_[1] + p_[5])) + ((p_[2] + p_[6]) + (p_[3] + p_[7]));     \
        for (; d < hd; d++) s += q[d] * (EXPR(d));                                         \
    } while (0)

#ifdef ATTN_X86
/* AVX2 forms of DOT8 and of o += a * v, bit for bit the scalar ones: the 8
 * partial sums are the 8 lanes (separate multiply and add, as the scalar code
 * compiled without FP contraction), combined in the same order. */
#define ATTN_AVX2 __attribute__((target("avx2,fma,f16c")))
ATTN_AVX2 static inline float dot_combine(__m256 p, const float *q, int32_t d, int32_t hd,
                                          float tail(const void *, int32_t), const void *k) {
    float p_[8];
    _mm256_storeu_ps(p_, p);
    float s = ((p_[0] + p_[4]) + (p_[1] + p_[5])) + ((p_[2] + p_[6]) + (p_[3] + p_[7]));
    for (; d < hd; d++) s += q[d] * tail(k, d);
    return s;
}
static float tail_f16(const void *k, int32_t d) { return h2f(((const uint16_t *)k)[d]); }
static float tail_f32(const void *k, int32_t d) { return ((const float *)k)[d]; }
ATTN_AVX2 static float dot_f16_avx2(const float *q, const uint16_t *k, int32_t hd) {
    __m256 p = _mm256_setzero_ps();
    int32_t d = 0;
    for (; d + 8 <= hd; d += 8)
        p = _mm256_add_ps(p, _mm256_mul_ps(_mm256_loadu_ps(q + d),
                                           _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d)))));
    return dot_combine(p, q, d, hd, tail_f16, k);
}
ATTN_AVX2 static float dot_f32_avx2(const float *q, const float *k, int32_t hd) {
    __m256 p = _mm256_setzero_ps();
    int32_t d = 0;
    for (; d + 8 <= hd; d += 8)
        p = _mm256_add_ps(p, _mm256_mul_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d)));
    return dot_combine(p, q, d, hd, tail_f32, k);
}
ATTN_AVX2 static void axpy_f16_avx2(float *o, float a, const uint16_t *v, int32_t hd) {
    __m256 av = _mm256_set1_ps(a);
    int32_t d = 0;
    for (; d + 8 <= hd; d += 8)
        _mm256_storeu_ps(o + d, _mm256_add_ps(_mm256_loadu_ps(o + d),
                                              _mm256_mul_ps(av, _mm256_cvtph_ps(_mm_loadu_si128(
                                                                    (const __m128i *)(v + d))))));
    for (; d < hd; d++) o[d] += a * h2f(v[d]);
}
ATTN_AVX2 static void axpy_f32_avx2(float *o, float a, const float *v, int32_t hd) {
    __m256 av = _mm256_set1_ps(a);
    int32_t d = 0;
    for (; d + 8 <= hd; d += 8)
        _mm256_storeu_ps(o + d, _mm256_add_ps(_mm256_loadu_ps(o + d),
                                              _mm256_mul_ps(av, _mm256_loadu_ps(v + d))));
    for (; d < hd; d++) o[d] += a * v[d];
}
#endif

static void attn_task(void *arg, int task, int n_tasks) {
    const attn_job *j = arg;
    const ampr__hparams *hp = &j->c->hp;
    int32_t hd = hp->head_dim, q_dim = j->n_heads * hd, kv_dim = j->n_kv_heads * hd;
    int32_t group = hp->n_heads / hp->n_kv_heads; /* = j->n_heads / j->n_kv_heads */
    ampr__kv_dtype dt = ampr__kv_dtype_of(j->seqs[0]->arena);
    float scale = 1.0f / sqrtf((float)hd);
    float *sc = j->scores + (size_t)task * (size_t)hp->context_length;
#ifdef ATTN_X86
    int avx2 = ampr__quant_simd() >= AMPR__SIMD_AVX2;
#endif
    int32_t items = j->n * j->n_heads;
    for (int32_t it = task; it < items; it += n_tasks) {
        int32_t i = it / j->n_heads, h = it % j->n_heads;
        const ampr__kv_seq *seq = j->seqs[i];
        int32_t pos = j->pos[i], kvh = h / group;
        const float *q = j->qkv + (size_t)i * (size_t)(q_dim + 2 * kv_dim) + (size_t)h * (size_t)hd;
        /* scores over positions 0..pos */
        float mx = -INFINITY;
        for (int32_t t = 0; t <= pos; t++) {
            const void *kp = ampr__kv_k(seq, j->rank, j->layer, t);
            float s = 0.0f;
            if (dt == AMPR__KV_F16) {
                const uint16_t *k = (const uint16_t *)kp + (size_t)kvh * (size_t)hd;
#ifdef ATTN_X86
                if (avx2)
                    s = dot_f16_avx2(q, k, hd);
                else
#endif
                {
#define KE(i) h2f(k[i])
                    DOT8(KE);
#undef KE
                }
            } else if (dt == AMPR__KV_Q8) {
                const int8_t *k = (const int8_t *)kp + (size_t)kvh * (size_t)hd;
                float ks;
                memcpy(&ks, (const unsigned char *)kp + kv_dim + (size_t)kvh * sizeof(float), sizeof ks);
#define KE(i) (float)k[i]
                DOT8(KE);
#undef KE
                s *= ks;
            } else {
                const float *k = (const float *)kp + (size_t)kvh * (size_t)hd;
#ifdef ATTN_X86
                if (avx2)
                    s = dot_f32_avx2(q, k, hd);
                else
#endif
                {
#define KE(i) k[i]
                    DOT8(KE);
#undef KE
                }
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
            const void *vp = ampr__kv_v(seq, j->rank, j->layer, t);
            if (dt == AMPR__KV_F16) {
                const uint16_t *v = (const uint16_t *)vp + (size_t)kvh * (size_t)hd;
                #ifdef ATTN_X86
                if (avx2) {
                    axpy_f16_avx2(o, a, v, hd);
                    continue;
                }
#endif
                for (int32_t d = 0; d < hd; d++) o[d] += a * h2f(v[d]);
            } else if (dt == AMPR__KV_Q8) {
                const int8_t *v = (const int8_t *)vp + (size_t)kvh * (size_t)hd;
                float vs;
                memcpy(&vs, (const unsigned char *)vp + kv_dim + (size_t)kvh * sizeof(float), sizeof vs);
                float av = a * vs;
                for (int32_t d = 0; d < hd; d++) o[d] += av * (float)v[d];
            } else {
                const float *v = (const float *)vp + (size_t)kvh * (size_t)hd;
#ifdef ATTN_X86
                if (avx2) {
                    axpy_f32_avx2(o, a, v, hd);
                    continue;
                }
#endif
                for (int32_t d = 0; d < hd; d++) o[d] += a * v[d];
            }
        }
    }
}

static void attention(const rank_ctx *rc, int32_t l) {
    const ampr__tp_plan *p = &rc->plan;
    attn_job aj = {rc->c, rc->seqs, rc->pos, p->rank, p->n_heads, p->n_kv_heads, l,
                   rc->n, rc->qkv,  rc->att, rc->scores};
    if (!rc->pool) {
        attn_task(&aj, 0, 1);
        return;
    }
    int tasks = AMPR__MIN(ampr__pool_size(rc->pool), rc->n * p->n_heads);
    ampr__pool_run(rc->pool, tasks, attn_task, &aj);
}

/* ---- the CPU all-reduce ------------------------------------------------------ */

struct tp_shared {
    pthread_barrier_t barrier;
    float *part[AMPR__TP_MAX]; /* each rank's partial sums, [n][dim] */
};

/* x += sum over ranks of part_r (rank order 0..tp-1, so every run and every
 * rank gets the same bits). Rank r reduces elements [r*N/tp, (r+1)*N/tp);
 * the first barrier waits for every partial, the second for every slice. */
static void allreduce_add(const rank_ctx *rc) {
    size_t total = (size_t)rc->n * (size_t)rc->c->hp.dim;
    if (!rc->sh) {
        for (size_t e = 0; e < total; e++) rc->x[e] += rc->part[e];
        return;
    }
    size_t tp = (size_t)rc->plan.tp, r = (size_t)rc->plan.rank;
    size_t e0 = total * r / tp, e1 = total * (r + 1) / tp;
    pthread_barrier_wait(&rc->sh->barrier);
    for (size_t e = e0; e < e1; e++) {
        float acc = rc->sh->part[0][e];
        for (size_t k = 1; k < tp; k++) acc += rc->sh->part[k][e];
        rc->x[e] += acc;
    }
    pthread_barrier_wait(&rc->sh->barrier);
}

/* ---- one layer on one rank ------------------------------------------------- */

static void layer_forward(const rank_ctx *rc, int32_t l) {
    ampr_ctx *c = rc->c;
    const ampr__hparams *hp = &c->hp;
    const ampr__tp_plan *p = &rc->plan;
    const ampr__tier_layer *L = ampr__tier_shard(rc->t, l, p->rank);
    int32_t dim = hp->dim, n = rc->n, qkv_len = p->q_len + 2 * p->kv_len;

    for (int32_t i = 0; i < n; i++)
        rmsnorm(rc->xb + (size_t)i * dim, rc->x + (size_t)i * dim, ampr__attn_norm(c, l), dim,
                hp->norm_eps);
    mm_input(rc, L, l, AMPR__MM_QKV, &L->wqkv, rc->xb);
    matmul(rc->pool, rc->t, &L->wqkv, rc->xb, n, rc->qkv, qkv_len, rc->act);
    for (int32_t i = 0; i < n; i++) {
        float *q = rc->qkv + (size_t)i * qkv_len, *k = q + p->q_len, *v = k + p->kv_len;
        rope(c, q, p->n_heads, rc->pos[i]);
        rope(c, k, p->n_kv_heads, rc->pos[i]);
        kv_store(rc->seqs[i], p->rank, l, rc->pos[i], k, v, p->kv_len, hp->head_dim);
    }
    attention(rc, l);
    mm_input(rc, L, l, AMPR__MM_O, &L->wo, rc->att);
    matmul(rc->pool, rc->t, &L->wo, rc->att, n, rc->part, dim, rc->act);
    allreduce_add(rc);

    for (int32_t i = 0; i < n; i++)
        rmsnorm(rc->xb + (size_t)i * dim, rc->x + (size_t)i * dim, ampr__ffn_norm(c, l), dim,
                hp->norm_eps);
    mm_input(rc, L, l, AMPR__MM_GU, &L->w_gu, rc->xb);
    matmul(rc->pool, rc->t, &L->w_gu, rc->xb, n, rc->hb, 2 * (int64_t)p->ff_len, rc->act);
    swiglu(rc->hb2, rc->hb, n, p->ff_len);
    mm_input(rc, L, l, AMPR__MM_DOWN, &L->w_down, rc->hb2);
    matmul(rc->pool, rc->t, &L->w_down, rc->hb2, n, rc->part, dim, rc->act);
    allreduce_add(rc);
}

/* ---- simulated ranks ----------------------------------------------------------- */

/* Rank threads wait at a gate until every one of them was started, so a
 * failed pthread_create never leaves the others stuck in a barrier. */
typedef struct rank_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state; /* 0 wait, 1 go, -1 give up */
} rank_gate;

typedef struct rank_thread {
    rank_ctx rc;
    rank_gate *gate;
} rank_thread;

static void rank_layers(const rank_ctx *rc) {
    for (int32_t l = 0; l < rc->c->hp.n_layers; l++) layer_forward(rc, l);
}

static void *rank_main(void *arg) {
    rank_thread *rt = arg;
    pthread_mutex_lock(&rt->gate->mu);
    while (rt->gate->state == 0) pthread_cond_wait(&rt->gate->cv, &rt->gate->mu);
    int go = rt->gate->state == 1;
    pthread_mutex_unlock(&rt->gate->mu);
    if (go) rank_layers(&rt->rc);
    return NULL;
}

static void gate_open(rank_gate *g, int state) {
    pthread_mutex_lock(&g->mu);
    g->state = state;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Run every layer on tp rank threads (rank 0 on the calling thread). */
static ampr_status run_ranks(const rank_ctx *base, ampr__scratch *s, ampr__err *err) {
    int32_t tp = s->tp;
    tp_shared sh;
    rank_gate gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    rank_thread rt[AMPR__TP_MAX];
    pthread_t th[AMPR__TP_MAX];
    if (pthread_barrier_init(&sh.barrier, NULL, (unsigned)tp) != 0)
        return ampr__fail(err, AMPR_ERR_NOMEM, "cannot create the tensor-parallel barrier");
    for (int32_t r = 0; r < tp; r++) {
        const ampr__rank_scratch *rs = &s->rank[r];
        rank_ctx *rc = &rt[r].rc;
        *rc = *base;
        rc->plan = ampr__tp_plan_of(&base->c->hp, tp, r);
        rc->pool = NULL;
        rc->xb = rs->xb;
        rc->qkv = rs->qkv;
        rc->att = rs->att;
        rc->hb = rs->hb;
        rc->hb2 = rs->hb2;
        rc->part = rs->part;
        rc->scores = rs->scores;
        rc->act = rs->act;
        rc->sh = &sh;
        rt[r].gate = &gate;
        sh.part[r] = rs->part;
    }
    int32_t started = 1;
    for (; started < tp; started++)
        if (pthread_create(&th[started], NULL, rank_main, &rt[started]) != 0) break;
    ampr_status st = AMPR_OK;
    if (started < tp) {
        gate_open(&gate, -1);
        st = ampr__fail(err, AMPR_ERR_NOMEM, "cannot start tensor-parallel rank thread %d of %d",
                        started, tp);
    } else {
        gate_open(&gate, 1);
        rank_layers(&rt[0].rc);
    }
    for (int32_t r = 1; r < started; r++) pthread_join(th[r], NULL);
    pthread_barrier_destroy(&sh.barrier);
    pthread_mutex_destroy(&gate.mu);
    pthread_cond_destroy(&gate.cv);
    return st;
}

/* ---- the pass ----------------------------------------------------------- */

/* The pass over a batch: token i belongs to seqs[i] at position pos[i]. Tokens
 * of one sequence must come in position order; every K/V is written before
 * any attention, so a sequence's later tokens in the batch see its earlier
 * ones. Logits rows: the last n_logits tokens. */
static ampr_status forward_batch(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *const *seqs,
                                 const int32_t *pos, const int32_t *tokens, int32_t n,
                                 int32_t n_logits, ampr__scratch *s, ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    int32_t dim = hp->dim;
    if (n <= 0 || n > s->max_tokens || n_logits < 1 || n_logits > n || n_logits > s->max_logits)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "forward of %d tokens, %d logits (scratch: %d, %d)",
                          n, n_logits, s->max_tokens, s->max_logits);
    if (t->device_only)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "tier %s lives on the device only: the CPU pass has no weights for it",
                          ampr_tier_name(t->id));
    if (t->tp != s->tp)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "tensor-parallel ranks differ: tier %d, scratch %d",
                          t->tp, s->tp);
    for (int32_t i = 0; i < n; i++) {
        const ampr__kv_seq *q = seqs[i];
        if (q->arena != t->kv || ampr__kv_ranks(q->arena) != t->tp)
            return ampr__fail(err, AMPR_ERR_INTERNAL, "sequence of token %d is not in this tier's arena", i);
        if (pos[i] < 0 || pos[i] >= hp->context_length)
            return ampr__fail(err, AMPR_ERR_PROMPT_TOO_LONG,
                              "position %d exceeds the context window of %d", pos[i], hp->context_length);
        if ((int64_t)q->n_blocks * ampr__kv_block_size(q->arena) <= (int64_t)pos[i])
            return ampr__fail(err, AMPR_ERR_INTERNAL, "sequence holds too few KV pages");
        if (tokens[i] < 0 || tokens[i] >= hp->vocab_size)
            return ampr__fail(err, AMPR_ERR_INVALID_ARG, "token id %d out of range [0, %d)",
                              tokens[i], hp->vocab_size);
    }

    pthread_mutex_lock(&c->compute_lock);
    for (int32_t i = 0; i < n; i++) t->qt->dequant_row(&t->embd, tokens[i], s->x + (size_t)i * dim);

    /* the single rank of tp = 1: the whole model, on the pool, in the scratch */
    rank_ctx rc = {c, t, seqs, pos, s->stats, ampr__tp_plan_of(hp, 1, 0), n, c->pool, s->x, s->xb,
                   s->qkv, s->att, s->hb, s->hb2, s->xb, s->scores, s->act, NULL};
    ampr_status st = AMPR_OK;
    if (t->tp == 1) rank_layers(&rc);
    else st = run_ranks(&rc, s, err);
    if (st != AMPR_OK) {
        pthread_mutex_unlock(&c->compute_lock);
        return st;
    }

    const ampr__qmat *out = t->output_is_embd ? &t->embd : &t->output;
    int32_t first = n - n_logits, n_out = n_logits;
    for (int32_t i = 0; i < n_out; i++)
        rmsnorm(s->xb + (size_t)i * dim, s->x + (size_t)(first + i) * dim, ampr__final_norm(c), dim,
                hp->norm_eps);
    matmul(c->pool, t, out, s->xb, n_out, s->logits, hp->vocab_size, s->act);
    pthread_mutex_unlock(&c->compute_lock);
    for (int32_t i = 0; i < n; i++)
        if (seqs[i]->n_tokens < pos[i] + 1) seqs[i]->n_tokens = pos[i] + 1;
    return AMPR_OK;
}

ampr_status ampr__forward(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq, const int32_t *tokens,
                          int32_t n, int32_t n_logits, ampr__scratch *s, ampr__err *err) {
    if (n <= 0 || n > s->max_tokens)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "forward of %d tokens (scratch holds %d)", n,
                          s->max_tokens);
    if (seq->n_tokens + n > c->hp.context_length)
        return ampr__fail(err, AMPR_ERR_PROMPT_TOO_LONG,
                          "positions %d..%d exceed the context window of %d", seq->n_tokens,
                          seq->n_tokens + n - 1, c->hp.context_length);
    ampr__kv_seq **seqs = ampr__alloc_array((size_t)n, sizeof *seqs, err);
    int32_t *pos = ampr__alloc_array((size_t)n, sizeof *pos, err);
    ampr_status st = AMPR_ERR_NOMEM;
    if (seqs && pos) {
        for (int32_t i = 0; i < n; i++) {
            seqs[i] = seq;
            pos[i] = seq->n_tokens + i;
        }
        st = forward_batch(c, t, seqs, pos, tokens, n, n_logits, s, err);
    }
    ampr__free(seqs);
    ampr__free(pos);
    return st;
}

ampr_status ampr__forward_batch(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *const *seqs,
                                const int32_t *tokens, int32_t n, ampr__scratch *s, ampr__err *err) {
    int32_t pos[AMPR__BATCH_MAX];
    if (n <= 0 || n > AMPR__BATCH_MAX)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "decode batch of %d sequences", n);
    for (int32_t i = 0; i < n; i++) pos[i] = seqs[i]->n_tokens;
    for (int32_t i = 0; i < n; i++)
        for (int32_t k = 0; k < i; k++)
            if (seqs[k] == seqs[i])
                return ampr__fail(err, AMPR_ERR_INTERNAL, "a sequence appears twice in a decode batch");
    return forward_batch(c, t, seqs, pos, tokens, n, n, s, err);
}
