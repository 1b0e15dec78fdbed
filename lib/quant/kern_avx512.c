/*
 * kern_avx512.c -- AVX-512 (F/BW/VL/DQ/VNNI) kernels of every format; only
 * called after quant.c found those on the CPU. Same tiling as kern_avx2.c
 * (R weight rows x T tokens of accumulators), 16 lanes, 32 registers.
 */
#include "quant_impl.h"

#include <immintrin.h>
#include <math.h>

#define UNROLL _Pragma("GCC unroll 16")
#define INLINE static inline __attribute__((always_inline))

#define DRIVE(TILE, R, T)                                                         \
    for (int64_t t0_ = 0; t0_ < n; t0_ += 8 * (T)) {                              \
        int64_t t1_ = AMPR__MIN(n, t0_ + 8 * (T));                                \
        int64_t r_ = r0;                                                          \
        for (; r_ + (R) <= r1; r_ += (R)) {                                       \
            int64_t t_ = t0_;                                                     \
            for (; t_ + (T) <= t1_; t_ += (T)) TILE(r_, t_, R, T);                \
            for (; t_ < t1_; t_++) TILE(r_, t_, R, 1);                            \
        }                                                                         \
        for (; r_ < r1; r_++) {                                                   \
            int64_t t_ = t0_;                                                     \
            for (; t_ + (T) <= t1_; t_ += (T)) TILE(r_, t_, 1, T);                \
            for (; t_ < t1_; t_++) TILE(r_, t_, 1, 1);                            \
        }                                                                         \
    }

/* ---- F32, F16, BF16 ---------------------------------------------------------------
 * The column tail (cols % 16) is done with masked loads: masked-off lanes
 * read as 0 and add nothing. */

INLINE __m512 ld_f32(const float *p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
INLINE __m512 ld_f16(const uint16_t *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
INLINE __m512 ld_bf16(const uint16_t *p, __mmask16 m) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

#define FR 4
#define FT 6
#define DEF_FLOAT(FMT, WT)                                                                   \
    INLINE void tile_##FMT(const WT *w, int64_t K, const float *x, float *y, int64_t ldy,    \
                           const int R, const int T) {                                       \
        __m512 acc[FR][FT];                                                                  \
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =    \
            _mm512_setzero_ps();                                                             \
        for (int64_t c = 0; c < K; c += 16) {                                                \
            __mmask16 m = K - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - c)) - 1); \
            __m512 xv[FT];                                                                   \
            UNROLL for (int t = 0; t < T; t++) xv[t] = _mm512_maskz_loadu_ps(m, x + t * K + c); \
            UNROLL for (int r = 0; r < R; r++) {                                             \
                __m512 wv = ld_##FMT(w + r * K + c, m);                                      \
                UNROLL for (int t = 0; t < T; t++) acc[r][t] =                               \
                    _mm512_fmadd_ps(wv, xv[t], acc[r][t]);                                   \
            }                                                                                \
        }                                                                                    \
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++)                \
            y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);                                \
    }                                                                                        \
    void ampr__##FMT##_matmul_avx512(const ampr__qmat *w, const float *x, const void *act,   \
                                     int64_t n, float *y, int64_t ldy, int64_t r0, int64_t r1) { \
        const WT *W = w->data;                                                               \
        int64_t K = w->cols;                                                                 \
        DRIVE(FMT##_TILE, FR, FT)                                                            \
    }

#define f32_TILE(r, t, R, T) tile_f32(W + (r) * K, K, x + (t) * K, y + (t) * ldy + (r), ldy, R, T)
#define f16_TILE(r, t, R, T) tile_f16(W + (r) * K, K, x + (t) * K, y + (t) * ldy + (r), ldy, R, T)
#define bf16_TILE(r, t, R, T) \
    tile_bf16(W + (r) * K, K, x + (t) * K, y + (t) * ldy + (r), ldy, R, T)

DEF_FLOAT(f32, float)
DEF_FLOAT(f16, uint16_t)
DEF_FLOAT(bf16, uint16_t)

/* ---- INT8 -------------------------------------------------------------------------
 * vpdpbusd multiplies unsigned by signed bytes. The weights are made unsigned
 * by flipping their top bit (w + 128), so the sum is sum(w*x) + 128*sum(x);
 * act_prepare stored sum(x) per token and the kernel subtracts 128*sum(x).
 * Masked-off tail lanes load w = 0 -> 128, against x = 0 padding: adds 0. */

#define IR 4
#define IT 4
INLINE void tile_int8(const int8_t *w, int64_t K, const int8_t *xq, int64_t kp, const float *ws,
                      const float *xs, const int32_t *xsum, float *y, int64_t ldy, const int R,
                      const int T) {
    __m512i acc[IR][IT];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =
        _mm512_setzero_si512();
    for (int64_t c = 0; c < K; c += 64) {
        __mmask64 m = K - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - c)) - 1);
        __m512i xv[IT];
        UNROLL for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_si512(xq + t * kp + c);
        UNROLL for (int r = 0; r < R; r++) {
            __m512i wv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + r * K + c), flip);
            UNROLL for (int t = 0; t < T; t++) acc[r][t] =
                _mm512_dpbusd_epi32(acc[r][t], wv, xv[t]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) {
        int32_t s = _mm512_reduce_add_epi32(acc[r][t]) - 128 * xsum[t];
        y[t * ldy + r] = (float)s * ws[r] * xs[t];
    }
}

void ampr__int8_matmul_avx512(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                              float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const int8_t *W = w->data;
    int64_t K = w->cols, kp = ampr__int8_kp(K);
    void *a = (void *)act;
    const float *xs = ampr__int8_act_scale(a);
    const int32_t *xsum = ampr__int8_act_sum(a, n);
    const int8_t *xq = ampr__int8_act_q(a, n);
#define int8_TILE(r, t, R, T)                                                                 \
    tile_int8(W + (r) * K, K, xq + (t) * kp, kp, w->scales + (r), xs + (t), xsum + (t),       \
              y + (t) * ldy + (r), ldy, R, T)
    DRIVE(int8_TILE, IR, IT)
#undef int8_TILE
}

void ampr__int8_act_prepare_avx512(const float *x, int64_t n, int64_t cols, void *act) {
    int64_t kp = ampr__int8_kp(cols);
    float *scale = ampr__int8_act_scale(act);
    int32_t *sum = ampr__int8_act_sum(act, n);
    int8_t *q = ampr__int8_act_q(act, n);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * cols;
        int8_t *qi = q + i * kp;
        __m512 m = _mm512_setzero_ps();
        for (int64_t c = 0; c < cols; c += 16) {
            __mmask16 k = cols - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - c)) - 1);
            m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(k, xi + c)));
        }
        float amax = _mm512_reduce_max_ps(m);
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        __m512 vinv = _mm512_set1_ps(inv);
        __m512i vs = _mm512_setzero_si512();
        const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
        int64_t c = 0;
        for (; c < kp; c += 16) {
            /* beyond cols the masked load gives 0: the padding is written too */
            __mmask16 k = c >= cols ? 0
                          : cols - c >= 16 ? (__mmask16)0xffff
                                           : (__mmask16)((1u << (cols - c)) - 1);
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, xi + c), vinv));
            v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
            vs = _mm512_add_epi32(vs, v);
            _mm_storeu_si128((__m128i *)(qi + c), _mm512_cvtepi32_epi8(v));
        }
        scale[i] = amax / 127.0f;
        sum[i] = _mm512_reduce_add_epi32(vs);
    }
}

/* ---- NF4 ----------------------------------------------------------------------------
 * One block (64 weights) is 32 bytes. vpermps with a 16-entry table (the
 * codes times the block's absmax) turns the low 4 bits of each int32 lane
 * into a weight, so the nibbles only have to be spread into lanes in element
 * order; the bits above the nibble are ignored by vpermps. */

#define NR 4
#define NT 4
INLINE void tile_nf4(const uint8_t *p, int64_t K, const ampr__nf4_absmax *am, int64_t b0,
                     const float *x, float *y, int64_t ldy, const int R, const int T) {
    __m512 acc[NR][NT];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =
        _mm512_setzero_ps();
    const __m512 code = _mm512_loadu_ps(ampr__nf4_code);
    int64_t nbr = K / 64;
    for (int64_t kb = 0; kb < nbr; kb++) {
        __m512 lut[NR];
        __m256i ia[NR], ib[NR];
        UNROLL for (int r = 0; r < R; r++) {
            lut[r] = _mm512_mul_ps(code, _mm512_set1_ps(ampr__nf4_absmax_at(am, b0 + r * nbr + kb)));
            __m256i v = _mm256_loadu_si256((const __m256i *)(p + r * K / 2 + kb * 32));
            __m256i h = _mm256_srli_epi16(v, 4); /* low nibble of each byte: its high code */
            ia[r] = _mm256_unpacklo_epi8(h, v);  /* elements 0..15 | 32..47 */
            ib[r] = _mm256_unpackhi_epi8(h, v);  /* elements 16..31 | 48..63 */
        }
        const float *xb = x + kb * 64;
        UNROLL for (int j = 0; j < 4; j++) {
            UNROLL for (int r = 0; r < R; r++) {
                __m256i src = (j & 1) ? ib[r] : ia[r];
                __m128i e = (j & 2) ? _mm256_extracti128_si256(src, 1) : _mm256_castsi256_si128(src);
                __m512 wv = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(e), lut[r]);
                UNROLL for (int t = 0; t < T; t++) acc[r][t] =
                    _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb + t * K + j * 16), acc[r][t]);
            }
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) y[t * ldy + r] =
        _mm512_reduce_add_ps(acc[r][t]);
}

void ampr__nf4_matmul_avx512(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                             float *y, int64_t ldy, int64_t r0, int64_t r1) {
    ampr__nf4_absmax am;
    ampr__nf4_absmax_view(w, &am);
    const uint8_t *P = w->data;
    int64_t K = w->cols;
#define nf4_TILE(r, t, R, T) \
    tile_nf4(P + (r) * K / 2, K, &am, (r) * (K / 64), x + (t) * K, y + (t) * ldy + (r), ldy, R, T)
    DRIVE(nf4_TILE, NR, NT)
#undef nf4_TILE
}
