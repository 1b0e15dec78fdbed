/*
 * int8.c -- INT8 (W8A8): symmetric int8 weights with one fp32 scale per
 * output row, activations quantized per token at run time, int32 sums:
 *   y[i][r] = (sum_c qw[r][c] * qx[i][c]) * w_scale[r] * x_scale[i].
 * Also the SmoothQuant helpers that scale weight columns before quantizing.
 */
#include "quant_impl.h"

#include <float.h>
#include <math.h>
#include <string.h>

void ampr__int8_nonfinite(int8_t *q, int64_t n, float *scale, int32_t *sum) {
    memset(q, 0, (size_t)n);
    *scale = NAN;
    if (sum) *sum = 0;
}

float ampr__absmax_finite(const float *x, int64_t n) {
    float amax = 0.0f;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        bad |= !(a <= FLT_MAX);
        amax = fmaxf(amax, a);
    }
    return bad ? NAN : amax;
}

/* q = nearest(v * inv) in [-127, 127], ties to even (the SIMD kernels use the
 * same rounding: cvtps2dq in the default MXCSR mode). */
static inline int8_t q127(float v, float inv) {
    float q = nearbyintf(v * inv);
    if (q > 127.0f) q = 127.0f;
    if (q < -127.0f) q = -127.0f;
    return (int8_t)q;
}

ampr_status ampr__int8_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err) {
    size_t n = (size_t)rows * (size_t)cols;
    int8_t *q = ampr__alloc_array_uninit(n ? n : 1, 1, err);
    if (!q) return AMPR_ERR_NOMEM;
    float *sc = ampr__alloc_array_uninit((size_t)rows ? (size_t)rows : 1, sizeof(float), err);
    if (!sc) {
        ampr__free(q);
        return AMPR_ERR_NOMEM;
    }
    d->type = AMPR__Q_INT8;
    d->rows = rows;
    d->cols = cols;
    d->data = q;
    d->data_bytes = n;
    d->scales = sc;
    d->n_scales = (size_t)rows;
    return AMPR_OK;
}

void ampr__int8_fill(ampr__qmat *d, const float *src, int64_t r0, int64_t r1) {
    int64_t cols = d->cols;
    int8_t *q = d->data;
    float *sc = d->scales;
    int simd = ampr__quant_simd() >= AMPR__SIMD_AVX2;
    for (int64_t r = r0; r < r1; r++) {
        const float *w = src + r * cols;
        if (simd) {
            ampr__int8_quantize_row_avx2(w, cols, q + r * cols, &sc[r]);
            continue;
        }
        float amax = ampr__absmax_finite(w, cols);
        if (isnan(amax)) { /* a row with an inf or NaN: q 0, scale NaN (its outputs NaN) */
            ampr__int8_nonfinite(q + r * cols, cols, &sc[r], NULL);
            continue;
        }
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        sc[r] = amax / 127.0f;
        for (int64_t c = 0; c < cols; c++) q[r * cols + c] = q127(w[c], inv);
    }
}

void ampr__int8_dequant_row(const ampr__qmat *m, int64_t row, float *out) {
    const int8_t *q = (const int8_t *)m->data + row * m->cols;
    float s = m->scales[row];
    for (int64_t c = 0; c < m->cols; c++) out[c] = (float)q[c] * s;
}

size_t ampr__int8_act_bytes(int64_t n, int64_t cols) {
    return (size_t)n * (sizeof(float) + sizeof(int32_t) + (size_t)ampr__int8_kp(cols));
}

void ampr__int8_act_prepare_scalar(const float *x, int64_t n, int64_t cols, void *act) {
    int64_t kp = ampr__int8_kp(cols);
    float *scale = ampr__int8_act_scale(act);
    int32_t *sum = ampr__int8_act_sum(act, n);
    int8_t *q = ampr__int8_act_q(act, n);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * cols;
        int8_t *qi = q + i * kp;
        float amax = ampr__absmax_finite(xi, cols);
        if (isnan(amax)) {
            ampr__int8_nonfinite(qi, kp, &scale[i], &sum[i]);
            continue;
        }
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t s = 0;
        for (int64_t c = 0; c < cols; c++) {
            qi[c] = q127(xi[c], inv);
            s += qi[c];
        }
        for (int64_t c = cols; c < kp; c++) qi[c] = 0;
        scale[i] = amax / 127.0f;
        sum[i] = s;
    }
}

void ampr__int8_matmul_scalar(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                              float *y, int64_t ldy, int64_t r0, int64_t r1) {
    int64_t K = w->cols, kp = ampr__int8_kp(K);
    void *a = (void *)act;
    const float *xs = ampr__int8_act_scale(a);
    const int8_t *xq = ampr__int8_act_q(a, n);
    const int8_t *W = w->data;
    for (int64_t i = 0; i < n; i++) {
        const int8_t *xi = xq + i * kp;
        for (int64_t r = r0; r < r1; r++) {
            const int8_t *wr = W + r * K;
            int32_t acc = 0;
            for (int64_t c = 0; c < K; c++) acc += (int32_t)wr[c] * xi[c];
            y[i * ldy + r] = (float)acc * w->scales[r] * xs[i];
        }
    }
}

/* ---- SmoothQuant ------------------------------------------------------------ */

void ampr__smooth_factors(const float *act_absmax, const float *w, int64_t rows, int64_t cols,
                          float alpha, float *s) {
    for (int64_t c = 0; c < cols; c++) {
        float wmax = 0.0f;
        for (int64_t r = 0; r < rows; r++) wmax = fmaxf(wmax, fabsf(w[r * cols + c]));
        float a = act_absmax[c];
        float v = (a > 0.0f && wmax > 0.0f) ? powf(a, alpha) / powf(wmax, 1.0f - alpha) : 1.0f;
        s[c] = v < 1e-5f ? 1e-5f : v;
    }
}

void ampr__smooth_weights(float *w, int64_t rows, int64_t cols, const float *s) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) w[r * cols + c] *= s[c];
}

void ampr__smooth_act(float *x, int64_t n, int64_t cols, const float *s) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < cols; c++) x[i * cols + c] /= s[c];
}
