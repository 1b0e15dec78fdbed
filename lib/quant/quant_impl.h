/*
 * quant_impl.h -- what the files of lib/quant share and nobody else sees: the
 * kernels of every SIMD level (one set per level, gathered into tables in
 * quant.c) and the layout of INT8 prepared activations.
 */
#ifndef AMPR_QUANT_IMPL_H
#define AMPR_QUANT_IMPL_H

#include "quant.h"

typedef void ampr__matmul_fn(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                             float *y, int64_t ldy, int64_t r0, int64_t r1);
typedef void ampr__act_prepare_fn(const float *x, int64_t n, int64_t cols, void *act);

/* Scalar (reference) kernels and format functions. */
/* alloc / fill of the traits table (see quant.h); NF4_DQ allocates and fills
 * as NF4, then its finish is ampr__nf4dq_from_nf4. */
ampr_status ampr__f32_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err);
ampr_status ampr__f16_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err);
ampr_status ampr__bf16_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err);
ampr_status ampr__int8_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err);
ampr_status ampr__nf4_alloc_checked(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err);
void ampr__f32_fill(ampr__qmat *d, const float *src, int64_t r0, int64_t r1);
void ampr__half_fill(ampr__qmat *d, const float *src, int64_t r0, int64_t r1);
void ampr__int8_fill(ampr__qmat *d, const float *src, int64_t r0, int64_t r1);
void ampr__nf4_fill(ampr__qmat *d, const float *src, int64_t r0, int64_t r1);
void ampr__f32_dequant_row(const ampr__qmat *m, int64_t row, float *out);
void ampr__f16_dequant_row(const ampr__qmat *m, int64_t row, float *out);
void ampr__bf16_dequant_row(const ampr__qmat *m, int64_t row, float *out);
void ampr__int8_dequant_row(const ampr__qmat *m, int64_t row, float *out);
void ampr__nf4_dequant_row(const ampr__qmat *m, int64_t row, float *out);
size_t ampr__int8_act_bytes(int64_t n, int64_t cols);
/* An INT8 token or weight row holding an inf or NaN (quant.h): its n q = 0,
 * scale NaN, and (a token's; NULL for a row) sum 0. Every level's
 * act_prepare and weight quantization calls it for such a token or row. */
void ampr__int8_nonfinite(int8_t *q, int64_t n, float *scale, int32_t *sum);
ampr__act_prepare_fn ampr__int8_act_prepare_scalar, ampr__int8_act_prepare_avx2,
    ampr__int8_act_prepare_avx512;

ampr__matmul_fn ampr__f32_matmul_scalar, ampr__f16_matmul_scalar, ampr__bf16_matmul_scalar,
    ampr__int8_matmul_scalar, ampr__nf4_matmul_scalar;
ampr__matmul_fn ampr__f32_matmul_avx2, ampr__f16_matmul_avx2, ampr__bf16_matmul_avx2,
    ampr__int8_matmul_avx2, ampr__nf4_matmul_avx2;
ampr__matmul_fn ampr__f32_matmul_avx512, ampr__f16_matmul_avx512, ampr__bf16_matmul_avx512,
    ampr__int8_matmul_avx512, ampr__nf4_matmul_avx512;

/* INT8 prepared activations for n tokens of `cols` values:
 *   float  scale[n]      absmax/127 of each token (0 for a zero token)
 *   int32  sum[n]        sum of the token's int8 values (for the VNNI offset)
 *   int8   q[n][kp]      kp = cols rounded up to 64, zero padded
 */
static inline int64_t ampr__int8_kp(int64_t cols) { return (cols + 63) & ~(int64_t)63; }
static inline float *ampr__int8_act_scale(void *act) { return act; }
static inline int32_t *ampr__int8_act_sum(void *act, int64_t n) {
    return (int32_t *)((char *)act + (size_t)n * sizeof(float));
}
static inline int8_t *ampr__int8_act_q(void *act, int64_t n) {
    return (int8_t *)((char *)act + (size_t)n * (sizeof(float) + sizeof(int32_t)));
}

/* NF4 / NF4_DQ absmax access for kernels: either a plain array, or the double
 * quantized form. */
typedef struct ampr__nf4_absmax {
    const float *plain;   /* NF4: scales */
    const float *absmax2; /* NF4_DQ */
    const uint8_t *q;     /* NF4_DQ */
    const float *map;     /* NF4_DQ: the dynamic map */
    float offset;
} ampr__nf4_absmax;
void ampr__nf4_absmax_view(const ampr__qmat *m, ampr__nf4_absmax *v);
static inline float ampr__nf4_absmax_at(const ampr__nf4_absmax *v, int64_t b) {
    if (v->plain) return v->plain[b];
    return v->map[v->q[b]] * v->absmax2[b >> 8] + v->offset;
}

/* Quantize helpers of the AVX2 level (bit-identical to the scalar code; the
 * scalar quantize functions call them when ampr__quant_simd() >= AVX2). */
void ampr__f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n);
void ampr__f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n);
/* NF4 quantization of whole 64-element blocks (n % 64 == 0), bit-identical to
 * the scalar ampr__nf4_quantize_flat_scalar. */
void ampr__nf4_quantize_blocks_avx512(const float *x, size_t n, uint8_t *packed, float *absmax);
void ampr__f32_to_bf16_avx2(const float *src, uint16_t *dst, size_t n);
void ampr__int8_quantize_row_avx2(const float *w, int64_t cols, int8_t *q, float *scale);

/* Dequantize the flattened NF4 elements [e0, e0 + count) of the packed data
 * P (any alignment: blocks and nibbles follow the flattened index). */
void ampr__nf4_dequant_span(const uint8_t *P, const ampr__nf4_absmax *v, int64_t e0, int64_t count,
                            float *out);

/* NF4 prepared activations (AVX-512 level only): x permuted in groups of 16
 * so that lane L of a group holds element 8*(L&1) + (L>>1), the order in
 * which one broadcast 8-byte load of codes shifts into lanes; n rows of
 * ampr__nf4_kp(cols) floats, zero padded. */
static inline int64_t ampr__nf4_kp(int64_t cols) { return (cols + 15) & ~(int64_t)15; }
size_t ampr__nf4_act_bytes(int64_t n, int64_t cols);
ampr__act_prepare_fn ampr__nf4_act_prepare_avx512;
/* How the AVX-512 NF4 fast paths (fp32 and bf16 activations) walk a matmul
 * of n tokens over rows [r0, r1) (names from the caller's scope): tokens in
 * chunks of 8 * NTOK; a single token in tiles of 8 rows (8 streams in
 * flight); else tiles of 4 rows x NTOK tokens, the last 1..NTOK-1 tokens by
 * TAIL(r, t, R, nt), and rows left over one at a time. TILE(r, t, R, T)
 * computes rows [r, r + R) for tokens [t, t + T). */
#define AMPR__NF4_WALK(TILE, TAIL, NTOK)                                                     \
    for (int64_t t0_ = 0; t0_ < n; t0_ += 8 * (NTOK)) {                                      \
        int64_t t1_ = AMPR__MIN(n, t0_ + 8 * (NTOK)), r_ = r0;                                \
        if (t1_ - t0_ == 1)                                                                  \
            for (; r_ + 8 <= r1; r_ += 8) TILE(r_, t0_, 8, 1);                               \
        for (; r_ + 4 <= r1; r_ += 4) {                                                      \
            int64_t t_ = t0_;                                                                \
            for (; t_ + (NTOK) <= t1_; t_ += (NTOK)) TILE(r_, t_, 4, NTOK);                  \
            if (t_ < t1_) TAIL(r_, t_, 4, t1_ - t_)                                          \
        }                                                                                    \
        for (; r_ < r1; r_++) {                                                              \
            int64_t t_ = t0_;                                                                \
            for (; t_ + (NTOK) <= t1_; t_ += (NTOK)) TILE(r_, t_, 1, NTOK);                  \
            if (t_ < t1_) TAIL(r_, t_, 1, t1_ - t_)                                          \
        }                                                                                    \
    }

/* kern_avx512bf16.c: NF4 with bf16 activations (AVX512_BF16 only) */
size_t ampr__nf4_act_bytes_bf16(int64_t n, int64_t cols);
ampr__act_prepare_fn ampr__nf4_act_prepare_bf16;
ampr__matmul_fn ampr__nf4_matmul_bf16;

#endif
