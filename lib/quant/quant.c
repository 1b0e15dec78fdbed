/*
 * quant.c -- the traits table and the reference (scalar) kernels of the
 * floating-point formats F32, F16 and BF16.
 */
#include "quant.h"

#include <math.h>

/* ---- F32 ------------------------------------------------------------------ */

static ampr_status f32_quantize(ampr__qmat *d, const float *src, int64_t rows, int64_t cols,
                                ampr__err *err) {
    float *w = ampr__alloc_array((size_t)(rows * cols), sizeof(float), err);
    if (!w) return AMPR_ERR_NOMEM;
    memcpy(w, src, (size_t)(rows * cols) * sizeof(float));
    d->type = AMPR__Q_F32;
    d->rows = rows;
    d->cols = cols;
    d->data = w;
    d->data_bytes = (size_t)(rows * cols) * sizeof(float);
    return AMPR_OK;
}

static void f32_dequant_row(const ampr__qmat *m, int64_t row, float *out) {
    memcpy(out, (const float *)m->data + row * m->cols, (size_t)m->cols * sizeof(float));
}

static void f32_matmul(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                       float *y, int64_t ldy, int64_t r0, int64_t r1) {
    (void)act;
    const float *W = w->data;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * w->cols;
        for (int64_t r = r0; r < r1; r++) {
            const float *wr = W + r * w->cols;
            float s = 0.0f;
            for (int64_t c = 0; c < w->cols; c++) s += wr[c] * xi[c];
            y[i * ldy + r] = s;
        }
    }
}

/* ---- F16 and BF16 ----------------------------------------------------------- */

static ampr_status half_quantize(ampr__qmat *d, const float *src, int64_t rows, int64_t cols,
                                 ampr__qtype t, ampr__err *err) {
    size_t n = (size_t)(rows * cols);
    uint16_t *w = ampr__alloc_array(n, sizeof(uint16_t), err);
    if (!w) return AMPR_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        w[i] = t == AMPR__Q_F16 ? ampr__f32_to_fp16(src[i]) : ampr__f32_to_bf16(src[i]);
    d->type = t;
    d->rows = rows;
    d->cols = cols;
    d->data = w;
    d->data_bytes = n * sizeof(uint16_t);
    return AMPR_OK;
}

static ampr_status f16_quantize(ampr__qmat *d, const float *src, int64_t rows, int64_t cols,
                                ampr__err *err) {
    return half_quantize(d, src, rows, cols, AMPR__Q_F16, err);
}
static ampr_status bf16_quantize(ampr__qmat *d, const float *src, int64_t rows, int64_t cols,
                                 ampr__err *err) {
    return half_quantize(d, src, rows, cols, AMPR__Q_BF16, err);
}

static void f16_dequant_row(const ampr__qmat *m, int64_t row, float *out) {
    const uint16_t *w = (const uint16_t *)m->data + row * m->cols;
    for (int64_t c = 0; c < m->cols; c++) out[c] = ampr__fp16_to_f32(w[c]);
}
static void bf16_dequant_row(const ampr__qmat *m, int64_t row, float *out) {
    const uint16_t *w = (const uint16_t *)m->data + row * m->cols;
    for (int64_t c = 0; c < m->cols; c++) out[c] = ampr__bf16_to_f32(w[c]);
}

static void half_matmul(const ampr__qmat *w, const float *x, int64_t n, float *y, int64_t ldy,
                        int64_t r0, int64_t r1) {
    const uint16_t *W = w->data;
    int is_bf = w->type == AMPR__Q_BF16;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * w->cols;
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *wr = W + r * w->cols;
            float s = 0.0f;
            for (int64_t c = 0; c < w->cols; c++)
                s += (is_bf ? ampr__bf16_to_f32(wr[c]) : ampr__fp16_to_f32(wr[c])) * xi[c];
            y[i * ldy + r] = s;
        }
    }
}
static void f16_matmul(const ampr__qmat *w, const float *x, const void *act, int64_t n, float *y,
                       int64_t ldy, int64_t r0, int64_t r1) {
    (void)act;
    half_matmul(w, x, n, y, ldy, r0, r1);
}

/* ---- the table ---------------------------------------------------------------- */

static size_t no_act_bytes(int64_t n, int64_t cols) { (void)n; (void)cols; return 0; }

static const ampr__qtraits k_traits[AMPR__Q_COUNT] = {
    [AMPR__Q_F32] = {AMPR__Q_F32, "f32", 0, f32_quantize, f32_dequant_row, no_act_bytes, NULL,
                     f32_matmul},
    [AMPR__Q_F16] = {AMPR__Q_F16, "fp16", 0, f16_quantize, f16_dequant_row, no_act_bytes, NULL,
                     f16_matmul},
    [AMPR__Q_BF16] = {AMPR__Q_BF16, "bf16", 0, bf16_quantize, bf16_dequant_row, no_act_bytes,
                      NULL, f16_matmul},
};

const ampr__qtraits *ampr__qtraits_get(ampr__qtype t) {
    if ((int)t < 0 || t >= AMPR__Q_COUNT || !k_traits[t].quantize) return NULL;
    return &k_traits[t];
}

ampr_status ampr__qtype_from_name(const char *name, ampr__qtype *out) {
    for (int t = 0; t < AMPR__Q_COUNT; t++)
        if (k_traits[t].name && !strcmp(k_traits[t].name, name)) {
            *out = (ampr__qtype)t;
            return AMPR_OK;
        }
    return AMPR_ERR_INVALID_ARG;
}

size_t ampr__qmat_bytes(const ampr__qmat *m) {
    return m->data_bytes + m->n_scales * sizeof(float) + m->extra_bytes;
}

void ampr__qmat_free(ampr__qmat *m) {
    if (!m) return;
    ampr__free(m->data);
    ampr__free(m->scales);
    ampr__free(m->extra);
    memset(m, 0, sizeof *m);
}

const char *ampr__quant_simd_name(void) { return "scalar"; }
