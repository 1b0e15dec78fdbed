/*
 * kern_avx512.c -- AVX-512 (F/BW/VL/DQ/VNNI) kernels of every format; only
 * called after quant.c found those on the CPU. Same tiling as kern_avx2.c
 * (R weight rows x T tokens of accumulators), 16 lanes, 32 registers.
 */
#include "quant_impl.h"

#include <float.h>
#include <immintrin.h>
#include <math.h>

#define UNROLL _Pragma("GCC unroll 16")
#define INLINE static inline __attribute__((always_inline))

#define RD 8 /* rows of a decode (n = 1) tile: RD streams in flight */

/* The token tail of a chunk (1..T-1 tokens, T <= 6) in one tile, so that a
 * small batch (batched decode) reads each weight once. */
#define DRIVE_TAIL(TILE, r, t, R, T, nt)                                          \
    switch (nt) {                                                                 \
    case 0: break;                                                                \
    case 1: TILE(r, t, R, 1); break;                                              \
    case 2: if ((T) > 2) TILE(r, t, R, 2); break;                                 \
    case 3: if ((T) > 3) TILE(r, t, R, 3); break;                                 \
    case 4: if ((T) > 4) TILE(r, t, R, 4); break;                                 \
    default: if ((T) > 5) TILE(r, t, R, 5); break;                                \
    }
#define DRIVE(TILE, R, T, RDEC)                                                   \
    if (n == 1) { /* decode: RDEC rows in flight, one stream each */              \
        int64_t r_ = r0;                                                          \
        for (; r_ + (RDEC) <= r1; r_ += (RDEC)) TILE(r_, 0, RDEC, 1);             \
        for (; r_ < r1; r_++) TILE(r_, 0, 1, 1);                                  \
    } else                                                                        \
    for (int64_t t0_ = 0; t0_ < n; t0_ += 8 * (T)) {                              \
        int64_t t1_ = AMPR__MIN(n, t0_ + 8 * (T));                                \
        int64_t r_ = r0;                                                          \
        for (; r_ + (R) <= r1; r_ += (R)) {                                       \
            int64_t t_ = t0_;                                                     \
            for (; t_ + (T) <= t1_; t_ += (T)) TILE(r_, t_, R, T);                \
            DRIVE_TAIL(TILE, r_, t_, R, T, t1_ - t_)                              \
        }                                                                         \
        for (; r_ < r1; r_++) {                                                   \
            int64_t t_ = t0_;                                                     \
            for (; t_ + (T) <= t1_; t_ += (T)) TILE(r_, t_, 1, T);                \
            DRIVE_TAIL(TILE, r_, t_, 1, T, t1_ - t_)                              \
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
        __m512 acc[RD][FT];                                                                  \
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =    \
            _mm512_setzero_ps();                                                             \
        int64_t c = 0;                                                                       \
        for (; c + 16 <= K; c += 16) {                                                       \
            __m512 xv[FT];                                                                   \
            UNROLL for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + t * K + c);       \
            UNROLL for (int r = 0; r < R; r++) {                                             \
                __m512 wv = ld_##FMT(w + r * K + c, (__mmask16)0xffff);                      \
                UNROLL for (int t = 0; t < T; t++) acc[r][t] =                               \
                    _mm512_fmadd_ps(wv, xv[t], acc[r][t]);                                   \
            }                                                                                \
        }                                                                                    \
        if (c < K) {                                                                         \
            __mmask16 m = (__mmask16)((1u << (K - c)) - 1);                                  \
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
        DRIVE(FMT##_TILE, FR, FT, RD)                                                            \
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
#define IT 6
INLINE void tile_int8(const int8_t *w, int64_t K, const int8_t *xq, int64_t kp, const float *ws,
                      const float *xs, const int32_t *xsum, float *y, int64_t ldy, const int R,
                      const int T) {
    __m512i acc[IR][IT];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =
        _mm512_setzero_si512();
    int64_t c = 0;
    for (; c + 64 <= K; c += 64) {
        /* batched decode: rows are short streams; fetch the next R rows' line */
        if (T <= 4)
            UNROLL for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)(w + (r + R) * K + c), _MM_HINT_T0);
        __m512i wv[IR];
        UNROLL for (int r = 0; r < R; r++) wv[r] =
            _mm512_xor_si512(_mm512_loadu_si512(w + r * K + c), flip);
        UNROLL for (int t = 0; t < T; t++) {
            __m512i xv = _mm512_loadu_si512(xq + t * kp + c);
            UNROLL for (int r = 0; r < R; r++) acc[r][t] =
                _mm512_dpbusd_epi32(acc[r][t], wv[r], xv);
        }
    }
    if (c < K) {
        __mmask64 m = ((__mmask64)1 << (K - c)) - 1;
        __m512i wv[IR];
        UNROLL for (int r = 0; r < R; r++) wv[r] =
            _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + r * K + c), flip);
        UNROLL for (int t = 0; t < T; t++) {
            __m512i xv = _mm512_loadu_si512(xq + t * kp + c);
            UNROLL for (int r = 0; r < R; r++) acc[r][t] =
                _mm512_dpbusd_epi32(acc[r][t], wv[r], xv);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) {
        int32_t s = _mm512_reduce_add_epi32(acc[r][t]) - 128 * xsum[t];
        y[t * ldy + r] = (float)s * ws[r] * xs[t];
    }
}

/* Decode (one token): the rows one after another, so each thread reads one
 * sequential stream (short rows read side by side are many short streams,
 * which the hardware prefetcher follows poorly). Integer sums are exact, so
 * splitting a row over four accumulators gives the tile's result bit for bit. */
static void gemv_int8(const int8_t *W, int64_t K, const int8_t *xq, const float *ws, float xs,
                      int32_t xsum, float *y, int64_t r0, int64_t r1) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *w = W + r * K;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        int64_t c = 0;
        for (; c + 256 <= K; c += 256) {
            a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_loadu_si512(w + c), flip),
                                     _mm512_loadu_si512(xq + c));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(_mm512_loadu_si512(w + c + 64), flip),
                                     _mm512_loadu_si512(xq + c + 64));
            a2 = _mm512_dpbusd_epi32(a2, _mm512_xor_si512(_mm512_loadu_si512(w + c + 128), flip),
                                     _mm512_loadu_si512(xq + c + 128));
            a3 = _mm512_dpbusd_epi32(a3, _mm512_xor_si512(_mm512_loadu_si512(w + c + 192), flip),
                                     _mm512_loadu_si512(xq + c + 192));
        }
        for (; c < K; c += 64) {
            __mmask64 m = K - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - c)) - 1);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, w + c), flip),
                                     _mm512_loadu_si512(xq + c));
        }
        __m512i a = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
        int32_t s = _mm512_reduce_add_epi32(a) - 128 * xsum;
        y[r] = (float)s * ws[r] * xs;
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
    if (n == 1) {
        gemv_int8(W, K, xq, w->scales, xs[0], xsum[0], y, r0, r1);
        return;
    }
    DRIVE(int8_TILE, IR, IT, IR)
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
        __mmask16 bad = 0;
        for (int64_t c = 0; c < cols; c += 16) {
            __mmask16 k = cols - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - c)) - 1);
            __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(k, xi + c));
            bad |= _mm512_cmp_ps_mask(a, _mm512_set1_ps(FLT_MAX), _CMP_NLE_UQ); /* inf, NaN */
            m = _mm512_max_ps(m, a);
        }
        if (bad) {
            ampr__int8_nonfinite(qi, kp, &scale[i], &sum[i]);
            continue;
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
 * Fast path (cols % 64 == 0, so every row is whole blocks and starts on a
 * byte): 16 weights are 8 bytes. One broadcast load puts them in every qword;
 * vpsrlvd shifts nibble j of dword h down to bits 0..3 of lane L = 2j + h, and
 * vpermps with a 16-entry table (the codes times the block's absmax) reads
 * only those 4 bits. That lane order is element 8*(L&1) + (L>>1) of the
 * group, so act_prepare stores x permuted the same way, once per call.
 * Per 16 weights: a load, a shift, a permute and one FMA per token.
 *
 * General path (any other shape, or no prepared activations): the row is
 * dequantized in chunks by ampr__nf4_dequant_span (blocks and nibbles
 * follow the flattened index) and multiplied with masked fp32 loads. */

INLINE __m512i nf4_lane_shifts(void) {
    /* lane L: 8 * (L >> 2) + (L & 2 ? 0 : 4) */
    return _mm512_setr_epi32(4, 4, 0, 0, 12, 12, 8, 8, 20, 20, 16, 16, 28, 28, 24, 24);
}

void ampr__nf4_act_prepare_avx512(const float *x, int64_t n, int64_t cols, void *act) {
    int64_t kp = ampr__nf4_kp(cols);
    float *xp = act;
    const __m512i perm = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < kp; c += 16) {
            __mmask16 k = cols - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - c)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(k, x + i * cols + c);
            _mm512_storeu_ps(xp + i * kp + c, _mm512_permutexvar_ps(perm, v));
        }
}

#define NT 5
#define NR 8
/* R weight rows (R <= NR) x T tokens (T <= NT). Each row's 16 weights are
 * decoded once and used for all T tokens. Every (row, token) output has one
 * accumulator over the whole row, in column order, then the same horizontal
 * reduction: its value does not depend on R, T, n, r0 or r1. */
INLINE void tile_nf4(const uint8_t *p, int64_t K, const ampr__nf4_absmax *am, int64_t b0,
                     const float *xp, int64_t kp, float *y, int64_t ldy, const int R, const int T) {
    __m512 acc[NR][NT];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =
        _mm512_setzero_ps();
    const __m512 code = _mm512_loadu_ps(ampr__nf4_code);
    const __m512i sh = nf4_lane_shifts();
    int64_t nbr = K / 64;
    for (int64_t kb = 0; kb < nbr; kb++) {
        __m512 lut[NR];
        UNROLL for (int r = 0; r < R; r++) lut[r] =
            _mm512_mul_ps(code, _mm512_set1_ps(ampr__nf4_absmax_at(am, b0 + r * nbr + kb)));
        const uint8_t *pb = p + kb * 32;
        const float *xb = xp + kb * 64;
        /* decode reads R rows at once: keep the streams of the rows two tiles
         * on coming (rows are short, the hardware prefetcher sees R streams;
         * two tiles ahead, into L2/L3 (_MM_HINT_T2), measured best here) */
        if (T <= 2 && (kb & 1) == 0)
            UNROLL for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)(pb + (r + 2 * R) * (K / 2)), _MM_HINT_T2);
        UNROLL for (int j = 0; j < 4; j++) {
            __m512 xv[NT];
            UNROLL for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(xb + t * kp + j * 16);
            UNROLL for (int r = 0; r < R; r++) {
                int64_t q;
                memcpy(&q, pb + r * (K / 2) + 8 * j, 8);
                __m512i idx = _mm512_srlv_epi32(_mm512_set1_epi64(q), sh);
                __m512 wv = _mm512_permutexvar_ps(idx, lut[r]);
                UNROLL for (int t = 0; t < T; t++) acc[r][t] =
                    _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
            }
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++)
        y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define NG 256 /* general path: columns dequantized at a time */
INLINE void tile_nf4_any(const uint8_t *P, int64_t K, const ampr__nf4_absmax *am, int64_t r,
                         const float *x, float *y, int64_t ldy, const int T) {
    __m512 acc[NT];
    float buf[NG];
    UNROLL for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < K; c0 += NG) {
        int64_t len = AMPR__MIN(NG, K - c0);
        ampr__nf4_dequant_span(P, am, r * K + c0, len, buf);
        for (int64_t c = 0; c < len; c += 16) {
            __mmask16 m = len - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - c)) - 1);
            __m512 wv = _mm512_maskz_loadu_ps(m, buf + c);
            UNROLL for (int t = 0; t < T; t++) acc[t] =
                _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * K + c0 + c), acc[t]);
        }
    }
    UNROLL for (int t = 0; t < T; t++) y[t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

void ampr__nf4_matmul_avx512(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                             float *y, int64_t ldy, int64_t r0, int64_t r1) {
    ampr__nf4_absmax am;
    ampr__nf4_absmax_view(w, &am);
    const uint8_t *P = w->data;
    int64_t K = w->cols, kp = ampr__nf4_kp(K);
    const float *xp = act;
    if (K % 64 == 0 && xp) {
#define NF4_T(r, t, R, T)                                                                    \
    tile_nf4(P + (r) * K / 2, K, &am, (r) * (K / 64), xp + (t) * kp, kp, y + (t) * ldy + (r), \
             ldy, R, T)
#define NF4_TAIL(r, t, R, nt)                                                                \
    switch (nt) {                                                                            \
    case 1: NF4_T(r, t, R, 1); break;                                                        \
    case 2: NF4_T(r, t, R, 2); break;                                                        \
    case 3: NF4_T(r, t, R, 3); break;                                                        \
    default: NF4_T(r, t, R, 4); break;                                                       \
    }
        AMPR__NF4_WALK(NF4_T, NF4_TAIL, NT)
#undef NF4_TAIL
#undef NF4_T
    } else {
#define nf4_TILE(r, t, R, T) tile_nf4_any(P, K, &am, r, x + (t) * K, y + (t) * ldy + (r), ldy, T)
        DRIVE(nf4_TILE, 1, NT, 1)
#undef nf4_TILE
    }
}

/* ---- NF4 quantization -----------------------------------------------------------
 * Per block of 64: absmax (max of |x|; _mm512_max_ps returns its second operand
 * when the first is NaN, so a NaN is skipped as fmaxf skips it), then each
 * x * (1/absmax) is encoded by the same four "x > midpoint" comparisons as the
 * scalar tree (a vector binary search over the 15 sorted midpoints; NaN fails
 * every comparison and gets code 0), and two codes go into a byte, the first in
 * the high nibble. */
void ampr__nf4_quantize_blocks_avx512(const float *x, size_t n, uint8_t *packed, float *absmax) {
    float midf[16];
    for (int k = 0; k < 15; k++) midf[k] = ampr__nf4_mid(k);
    midf[15] = INFINITY; /* never selected: the search index stays <= 14 */
    const __m512 mid = _mm512_loadu_ps(midf);
    const __m512i k1 = _mm512_set1_epi32(1), k3 = _mm512_set1_epi32(3), k7 = _mm512_set1_epi32(7);
    const __m512i k2 = _mm512_set1_epi32(2), k4 = _mm512_set1_epi32(4), k8 = _mm512_set1_epi32(8);
    const __m128i lo = _mm_set1_epi16(0x00f0);
    for (size_t b = 0; b < n / 64; b++) {
        const float *xb = x + b * 64;
        __m512 v[4];
        __m512 m = _mm512_setzero_ps();
        UNROLL for (int j = 0; j < 4; j++) {
            v[j] = _mm512_loadu_ps(xb + 16 * j);
            m = _mm512_max_ps(_mm512_abs_ps(v[j]), m);
        }
        float amax = _mm512_reduce_max_ps(m);
        absmax[b] = amax;
        __m512 inv = _mm512_set1_ps(1.0f / amax);
        uint8_t codes[64];
        UNROLL for (int j = 0; j < 4; j++) {
            __m512 y = _mm512_mul_ps(v[j], inv);
            __m512i idx = _mm512_setzero_si512();
            __mmask16 g = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(k7, mid), _CMP_GT_OQ);
            idx = _mm512_mask_add_epi32(idx, g, idx, k8);
            g = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(_mm512_add_epi32(idx, k3), mid),
                                   _CMP_GT_OQ);
            idx = _mm512_mask_add_epi32(idx, g, idx, k4);
            g = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(_mm512_add_epi32(idx, k1), mid),
                                   _CMP_GT_OQ);
            idx = _mm512_mask_add_epi32(idx, g, idx, k2);
            g = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(idx, mid), _CMP_GT_OQ);
            idx = _mm512_mask_add_epi32(idx, g, idx, k1);
            _mm_storeu_si128((__m128i *)(codes + 16 * j), _mm512_cvtepi32_epi8(idx));
        }
        /* 16-bit lane h = c0 | c1 << 8 (little-endian) -> byte c0 << 4 | c1 */
        UNROLL for (int j = 0; j < 4; j += 2) {
            __m128i a = _mm_loadu_si128((const __m128i *)(codes + 16 * j));
            __m128i c = _mm_loadu_si128((const __m128i *)(codes + 16 * j + 16));
            __m128i pa = _mm_or_si128(_mm_and_si128(_mm_slli_epi16(a, 4), lo), _mm_srli_epi16(a, 8));
            __m128i pc = _mm_or_si128(_mm_and_si128(_mm_slli_epi16(c, 4), lo), _mm_srli_epi16(c, 8));
            _mm_storeu_si128((__m128i *)(packed + b * 32 + 8 * j), _mm_packus_epi16(pa, pc));
        }
    }
}
