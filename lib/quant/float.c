/*
 * float.c -- the floating-point formats F32, F16 and BF16: conversion from
 * fp32 and the scalar (reference) kernels. The SIMD kernels are in
 * kern_avx2.c and kern_avx512.c.
 */
#include "quant_impl.h"

/* One buffer of rows x cols elements of esize bytes, not zeroed (fill
 * writes every element). */
static ampr_status float_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__qtype t,
                               size_t esize, ampr__err *err) {
    size_t n = (size_t)rows * (size_t)cols;
    void *w = ampr__alloc_array_uninit(n ? n : 1, esize, err);
    if (!w) return AMPR_ERR_NOMEM;
    d->type = t;
    d->rows = rows;
    d->cols = cols;
    d->data = w;
    d->data_bytes = n * esize;
    return AMPR_OK;
}

ampr_status ampr__f32_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err) {
    return float_alloc(d, rows, cols, AMPR__Q_F32, sizeof(float), err);
}
ampr_status ampr__f16_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err) {
    return float_alloc(d, rows, cols, AMPR__Q_F16, sizeof(uint16_t), err);
}
ampr_status ampr__bf16_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err) {
    return float_alloc(d, rows, cols, AMPR__Q_BF16, sizeof(uint16_t), err);
}

void ampr__f32_fill(ampr__qmat *d, const float *src, int64_t r0, int64_t r1) {
    size_t e0 = (size_t)r0 * (size_t)d->cols, n = (size_t)(r1 - r0) * (size_t)d->cols;
    memcpy((float *)d->data + e0, src + e0, n * sizeof(float));
}

/* F16 and BF16 (by d->type). */
void ampr__half_fill(ampr__qmat *d, const float *src, int64_t r0, int64_t r1) {
    size_t e0 = (size_t)r0 * (size_t)d->cols, n = (size_t)(r1 - r0) * (size_t)d->cols;
    const float *x = src + e0;
    uint16_t *w = (uint16_t *)d->data + e0;
    if (ampr__quant_simd() >= AMPR__SIMD_AVX2) {
        if (d->type == AMPR__Q_F16)
            ampr__f32_to_f16_avx2(x, w, n);
        else
            ampr__f32_to_bf16_avx2(x, w, n);
    } else if (d->type == AMPR__Q_F16) {
        for (size_t i = 0; i < n; i++) w[i] = ampr__f32_to_fp16(x[i]);
    } else {
        for (size_t i = 0; i < n; i++) w[i] = ampr__f32_to_bf16(x[i]);
    }
}

void ampr__f32_dequant_row(const ampr__qmat *m, int64_t row, float *out) {
    memcpy(out, (const float *)m->data + row * m->cols, (size_t)m->cols * sizeof(float));
}
void ampr__f16_dequant_row(const ampr__qmat *m, int64_t row, float *out) {
    const uint16_t *w = (const uint16_t *)m->data + row * m->cols;
    for (int64_t c = 0; c < m->cols; c++) out[c] = ampr__fp16_to_f32(w[c]);
}
void ampr__bf16_dequant_row(const ampr__qmat *m, int64_t row, float *out) {
    const uint16_t *w = (const uint16_t *)m->data + row * m->cols;
    for (int64_t c = 0; c < m->cols; c++) out[c] = ampr__bf16_to_f32(w[c]);
}

/* The reference kernels accumulate in double so that they are a fixed point
 * the SIMD kernels (fp32, other summation orders) are compared against. */
void ampr__f32_matmul_scalar(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                             float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const float *W = w->data;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * w->cols;
        for (int64_t r = r0; r < r1; r++) {
            const float *wr = W + r * w->cols;
            double s = 0.0;
            for (int64_t c = 0; c < w->cols; c++) s += (double)wr[c] * xi[c];
            y[i * ldy + r] = (float)s;
        }
    }
}

void ampr__f16_matmul_scalar(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                             float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const uint16_t *W = w->data;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * w->cols;
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *wr = W + r * w->cols;
            double s = 0.0;
            for (int64_t c = 0; c < w->cols; c++) s += (double)ampr__fp16_to_f32(wr[c]) * xi[c];
            y[i * ldy + r] = (float)s;
        }
    }
}

void ampr__bf16_matmul_scalar(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                              float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const uint16_t *W = w->data;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * w->cols;
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *wr = W + r * w->cols;
            double s = 0.0;
            for (int64_t c = 0; c < w->cols; c++) s += (double)ampr__bf16_to_f32(wr[c]) * xi[c];
            y[i * ldy + r] = (float)s;
        }
    }
}

void ampr__f16_to_f32_n(const void *src, float *dst, size_t n) {
    const uint8_t *b = src;
    if (((uintptr_t)src & 1) == 0 && ampr__quant_simd() >= AMPR__SIMD_AVX2) {
        ampr__f16_to_f32_avx2((const uint16_t *)src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, b + 2 * i, 2);
        dst[i] = ampr__fp16_to_f32(h);
    }
}
