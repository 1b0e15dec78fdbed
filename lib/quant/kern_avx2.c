/*
 * kern_avx2.c -- AVX2 + FMA + F16C kernels of every format (compiled with
 * -mavx2 -mfma -mf16c; only called after quant.c found those on the CPU).
 *
 * Every matmul is a register-tiled GEMM: a tile of R weight rows x T tokens
 * keeps R*T accumulators in registers, so each weight vector (converted or
 * dequantized once) is used T times and each activation vector R times.
 * n = 1 (decode) runs the same tiles with T = 1, streaming the weights once.
 * Tokens go in chunks of TC so the chunk's activations stay in L2 while the
 * rows sweep over them.
 */
#include "quant_impl.h"

#include <float.h>
#include <immintrin.h>
#include <math.h>

#define UNROLL _Pragma("GCC unroll 16")
#define INLINE static inline __attribute__((always_inline))

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE int32_t hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* Row-tile / token-tile loop shared by every format. TILE(r, t, R, T) computes
 * rows r..r+R-1 for tokens t..t+T-1. */
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
            for (; t_ < t1_; t_++) TILE(r_, t_, R, 1);                            \
        }                                                                         \
        for (; r_ < r1; r_++) {                                                   \
            int64_t t_ = t0_;                                                     \
            for (; t_ + (T) <= t1_; t_ += (T)) TILE(r_, t_, 1, T);                \
            for (; t_ < t1_; t_++) TILE(r_, t_, 1, 1);                            \
        }                                                                         \
    }

/* ---- F32, F16, BF16 ------------------------------------------------------------ */

INLINE __m256 ld_f32(const float *p) { return _mm256_loadu_ps(p); }
INLINE __m256 ld_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
INLINE __m256 ld_bf16(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
INLINE float one_f32(const float *p) { return *p; }
INLINE float one_f16(const uint16_t *p) { return ampr__fp16_to_f32(*p); }
INLINE float one_bf16(const uint16_t *p) { return ampr__bf16_to_f32(*p); }

#define FR 4
#define FT 3
#define FRD 8 /* rows of a decode (n = 1) tile */
#define DEF_FLOAT(FMT, WT)                                                                 \
    INLINE void tile_##FMT(const WT *w, int64_t K, const float *x, float *y, int64_t ldy,  \
                           const int R, const int T) {                                     \
        __m256 acc[FRD][FT];                                                               \
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =  \
            _mm256_setzero_ps();                                                           \
        int64_t c = 0;                                                                     \
        for (; c + 8 <= K; c += 8) {                                                       \
            __m256 xv[FT];                                                                 \
            UNROLL for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * K + c);     \
            UNROLL for (int r = 0; r < R; r++) {                                           \
                __m256 wv = ld_##FMT(w + r * K + c);                                       \
                UNROLL for (int t = 0; t < T; t++) acc[r][t] =                             \
                    _mm256_fmadd_ps(wv, xv[t], acc[r][t]);                                 \
            }                                                                              \
        }                                                                                  \
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) {            \
            float s = hsum8(acc[r][t]);                                                    \
            for (int64_t k = c; k < K; k++) s += one_##FMT(w + r * K + k) * x[t * K + k];  \
            y[t * ldy + r] = s;                                                            \
        }                                                                                  \
    }                                                                                      \
    void ampr__##FMT##_matmul_avx2(const ampr__qmat *w, const float *x, const void *act,   \
                                   int64_t n, float *y, int64_t ldy, int64_t r0, int64_t r1) { \
        const WT *W = w->data;                                                             \
        int64_t K = w->cols;                                                               \
        DRIVE(FMT##_TILE, FR, FT, FRD)                                                          \
    }

#define f32_TILE(r, t, R, T) tile_f32(W + (r) * K, K, x + (t) * K, y + (t) * ldy + (r), ldy, R, T)
#define f16_TILE(r, t, R, T) tile_f16(W + (r) * K, K, x + (t) * K, y + (t) * ldy + (r), ldy, R, T)
#define bf16_TILE(r, t, R, T) \
    tile_bf16(W + (r) * K, K, x + (t) * K, y + (t) * ldy + (r), ldy, R, T)

DEF_FLOAT(f32, float)
DEF_FLOAT(f16, uint16_t)
DEF_FLOAT(bf16, uint16_t)

/* ---- INT8 -------------------------------------------------------------------------
 * vpmaddubsw multiplies unsigned by signed bytes; |w| * sign(x, w) = w * x, and
 * both factors stay within 127 so the pairwise int16 sums cannot saturate. */

#define IR 4
#define IT 2
INLINE void tile_int8(const int8_t *w, int64_t K, const int8_t *xq, int64_t kp, const float *ws,
                      const float *xs, float *y, int64_t ldy, const int R, const int T) {
    __m256i acc[IR][IT];
    const __m256i ones = _mm256_set1_epi16(1);
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =
        _mm256_setzero_si256();
    int64_t c = 0;
    for (; c + 32 <= K; c += 32) {
        __m256i xv[IT];
        UNROLL for (int t = 0; t < T; t++) xv[t] =
            _mm256_loadu_si256((const __m256i *)(xq + t * kp + c));
        UNROLL for (int r = 0; r < R; r++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + r * K + c));
            __m256i aw = _mm256_abs_epi8(wv);
            UNROLL for (int t = 0; t < T; t++) {
                __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[t], wv));
                acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(p, ones));
            }
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) {
        int32_t s = hsum8i(acc[r][t]);
        for (int64_t k = c; k < K; k++) s += (int32_t)w[r * K + k] * xq[t * kp + k];
        y[t * ldy + r] = (float)s * ws[r] * xs[t];
    }
}

/* Decode (one token): the rows one after another, one sequential stream per
 * thread (see kern_avx512.c); integer sums are exact, so two accumulators
 * give the tile's result bit for bit. */
static void gemv_int8(const int8_t *W, int64_t K, const int8_t *xq, const float *ws, float xs,
                      float *y, int64_t r0, int64_t r1) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *w = W + r * K;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0;
        int64_t c = 0;
        for (; c + 64 <= K; c += 64) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + c));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + c + 32));
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + c));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + c + 32));
            __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(x0, w0));
            __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(x1, w1));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(p0, ones));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(p1, ones));
        }
        for (; c + 32 <= K; c += 32) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + c));
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + c));
            __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(x0, w0));
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(p0, ones));
        }
        int32_t s = hsum8i(_mm256_add_epi32(a0, a1));
        for (; c < K; c++) s += (int32_t)w[c] * xq[c];
        y[r] = (float)s * ws[r] * xs;
    }
}

void ampr__int8_matmul_avx2(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                            float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const int8_t *W = w->data;
    int64_t K = w->cols, kp = ampr__int8_kp(K);
    void *a = (void *)act;
    const float *xs = ampr__int8_act_scale(a);
    const int8_t *xq = ampr__int8_act_q(a, n);
#define int8_TILE(r, t, R, T)                                                                 \
    tile_int8(W + (r) * K, K, xq + (t) * kp, kp, w->scales + (r), xs + (t), y + (t) * ldy + (r), \
              ldy, R, T)
    if (n == 1) {
        gemv_int8(W, K, xq, w->scales, xs[0], y, r0, r1);
        return;
    }
    DRIVE(int8_TILE, IR, IT, IR)
#undef int8_TILE
}

void ampr__int8_act_prepare_avx2(const float *x, int64_t n, int64_t cols, void *act) {
    int64_t kp = ampr__int8_kp(cols);
    float *scale = ampr__int8_act_scale(act);
    int32_t *sum = ampr__int8_act_sum(act, n);
    int8_t *q = ampr__int8_act_q(act, n);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 fmax = _mm256_set1_ps(FLT_MAX);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * cols;
        int8_t *qi = q + i * kp;
        __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8) {
            __m256 a = _mm256_and_ps(absmask, _mm256_loadu_ps(xi + c));
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ)); /* inf, NaN */
            m = _mm256_max_ps(m, a);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        int nonfinite = _mm256_movemask_ps(bad) != 0;
        for (; c < cols; c++) {
            float v = xi[c] < 0 ? -xi[c] : xi[c];
            nonfinite |= !(v <= FLT_MAX);
            if (v > amax) amax = v;
        }
        if (nonfinite) {
            ampr__int8_nonfinite(qi, kp, &scale[i], &sum[i]);
            continue;
        }
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        __m256 vinv = _mm256_set1_ps(inv);
        __m256i vs = _mm256_setzero_si256();
        c = 0;
        for (; c + 32 <= cols; c += 32) {
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xi + c), vinv));
            __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xi + c + 8), vinv));
            __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xi + c + 16), vinv));
            __m256i e = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xi + c + 24), vinv));
            vs = _mm256_add_epi32(vs, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(d, e)));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(d, e));
            _mm256_storeu_si256((__m256i *)(qi + c), _mm256_permutevar8x32_epi32(p, perm));
        }
        int32_t s = hsum8i(vs);
        for (; c < cols; c++) {
            float v = nearbyintf(xi[c] * inv);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            qi[c] = (int8_t)v;
            s += qi[c];
        }
        for (; c < kp; c++) qi[c] = 0;
        scale[i] = amax / 127.0f;
        sum[i] = s;
    }
}

/* ---- NF4 ----------------------------------------------------------------------------
 * 64 weights (one block) are 32 bytes; 8 weights are 4 bytes. One broadcast
 * load puts them in every dword, and vpsrlvd shifts lane j's code down to
 * bits 0..3 (by 4 for element 0, the high nibble of byte 0; by 0 for element
 * 1; 12, 8, ... for the next bytes), so lane j = element j. vpermps reads
 * bits 0..2 and picks one of 8 table entries; the code's bit 3, moved to the
 * sign bit by a shift of 28, picks the table of codes 0..7 or 8..15
 * (vblendvps). The tables are pre-multiplied by the block's absmax. */

#define NT 6
INLINE __m256 nf4_w(const uint8_t *p, __m256 lut_lo, __m256 lut_hi) {
    const __m256i sh = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
    int32_t q;
    memcpy(&q, p, 4);
    __m256i k = _mm256_srlv_epi32(_mm256_set1_epi32(q), sh);
    __m256 lo = _mm256_permutevar8x32_ps(lut_lo, k), hi = _mm256_permutevar8x32_ps(lut_hi, k);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(k, 28)));
}

/* One weight row per tile (the dequantized vector feeds T tokens); a single
 * token (decode) keeps 4 accumulators so the FMA latency is hidden. */
INLINE void tile_nf4(const uint8_t *p, int64_t K, const ampr__nf4_absmax *am, int64_t b0,
                     const float *x, float *y, int64_t ldy, const int T) {
    const int NA = T == 1 ? 4 : 1;
    __m256 acc[NT][4];
    UNROLL for (int t = 0; t < T; t++) UNROLL for (int j = 0; j < NA; j++) acc[t][j] =
        _mm256_setzero_ps();
    const __m256 clo = _mm256_loadu_ps(ampr__nf4_code), chi = _mm256_loadu_ps(ampr__nf4_code + 8);
    int64_t nbr = K / 64; /* blocks per row */
    for (int64_t kb = 0; kb < nbr; kb++) {
        __m256 a = _mm256_set1_ps(ampr__nf4_absmax_at(am, b0 + kb));
        __m256 llo = _mm256_mul_ps(clo, a), lhi = _mm256_mul_ps(chi, a);
        const float *xb = x + kb * 64;
        UNROLL for (int j = 0; j < 8; j++) {
            __m256 wv = nf4_w(p + kb * 32 + 4 * j, llo, lhi);
            UNROLL for (int t = 0; t < T; t++) acc[t][j % NA] =
                _mm256_fmadd_ps(wv, _mm256_loadu_ps(xb + t * K + j * 8), acc[t][j % NA]);
        }
    }
    UNROLL for (int t = 0; t < T; t++) {
        __m256 s = acc[t][0];
        UNROLL for (int j = 1; j < NA; j++) s = _mm256_add_ps(s, acc[t][j]);
        y[t * ldy] = hsum8(s);
    }
}

/* Any other shape (cols % 64 != 0: rows start mid-block, maybe on a low
 * nibble): dequantize the row in chunks with ampr__nf4_dequant_span, then
 * multiply; the last < 8 columns scalar. */
#define NG 256
INLINE void tile_nf4_any(const uint8_t *P, int64_t K, const ampr__nf4_absmax *am, int64_t r,
                         const float *x, float *y, int64_t ldy, const int T) {
    __m256 acc[NT];
    float buf[NG], tail[NT];
    UNROLL for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        tail[t] = 0.0f;
    }
    for (int64_t c0 = 0; c0 < K; c0 += NG) {
        int64_t len = AMPR__MIN(NG, K - c0), c = 0;
        ampr__nf4_dequant_span(P, am, r * K + c0, len, buf);
        for (; c + 8 <= len; c += 8) {
            __m256 wv = _mm256_loadu_ps(buf + c);
            UNROLL for (int t = 0; t < T; t++) acc[t] =
                _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * K + c0 + c), acc[t]);
        }
        for (; c < len; c++)
            UNROLL for (int t = 0; t < T; t++) tail[t] += buf[c] * x[t * K + c0 + c];
    }
    UNROLL for (int t = 0; t < T; t++) y[t * ldy] = hsum8(acc[t]) + tail[t];
}

void ampr__nf4_matmul_avx2(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                           float *y, int64_t ldy, int64_t r0, int64_t r1) {
    (void)act;
    ampr__nf4_absmax am;
    ampr__nf4_absmax_view(w, &am);
    const uint8_t *P = w->data;
    int64_t K = w->cols;
    if (K % 64 == 0) {
#define nf4_TILE(r, t, R, T) \
    tile_nf4(P + (r) * K / 2, K, &am, (r) * (K / 64), x + (t) * K, y + (t) * ldy + (r), ldy, T)
        DRIVE(nf4_TILE, 1, NT, 1)
#undef nf4_TILE
    } else {
#define nf4_TILE(r, t, R, T) tile_nf4_any(P, K, &am, r, x + (t) * K, y + (t) * ldy + (r), ldy, T)
        DRIVE(nf4_TILE, 1, NT, 1)
#undef nf4_TILE
    }
}

/* ---- quantize helpers (called by float.c / int8.c when the level is >= AVX2) ----
 * Bit-identical to the scalar conversions: F16C rounds to nearest even and
 * overflows to inf exactly as ampr__f32_to_fp16; vectors holding a NaN are
 * converted by the scalar function (its NaN encoding differs from F16C's). */

void ampr__f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(src + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
            for (size_t k = i; k < i + 8; k++) dst[k] = ampr__f32_to_fp16(src[k]);
            continue;
        }
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < n; i++) dst[i] = ampr__f32_to_fp16(src[i]);
}

/* fp16 -> fp32 is exact for every finite and infinite value; a NaN keeps its
 * sign and payload with the quiet bit set, while the scalar function keeps a
 * signalling NaN's bits. Models are checked to be finite before this runs. */
void ampr__f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = ampr__fp16_to_f32(src[i]);
}

void ampr__f32_to_bf16_avx2(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff),
                  absm = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000),
                  qbit = _mm256_set1_epi32(0x40);
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        UNROLL for (int h = 0; h < 2; h++) {
            __m256i u = _mm256_loadu_si256((const __m256i *)(src + i + 8 * h));
            __m256i hi = _mm256_srli_epi32(u, 16);
            __m256i t = _mm256_add_epi32(u, _mm256_add_epi32(bias, _mm256_and_si256(hi, one)));
            __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), inf);
            r[h] = _mm256_blendv_epi8(_mm256_srli_epi32(t, 16), _mm256_or_si256(hi, qbit), nan);
        }
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xd8);
        _mm256_storeu_si256((__m256i *)(dst + i), p);
    }
    for (; i < n; i++) dst[i] = ampr__f32_to_bf16(src[i]);
}

/* One INT8 weight row: scale = absmax/127, q = clamp(nearbyintf(w * (127/absmax))). */
void ampr__int8_quantize_row_avx2(const float *w, int64_t cols, int8_t *q, float *scale) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 fmax = _mm256_set1_ps(FLT_MAX);
    __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 a = _mm256_and_ps(absmask, _mm256_loadu_ps(w + c));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ)); /* inf, NaN */
        m = _mm256_max_ps(m, a);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    int nonfinite = _mm256_movemask_ps(bad) != 0;
    for (; c < cols; c++) {
        nonfinite |= !(fabsf(w[c]) <= FLT_MAX);
        amax = fmaxf(amax, fabsf(w[c]));
    }
    if (nonfinite) {
        ampr__int8_nonfinite(q, cols, scale, NULL);
        return;
    }
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    c = 0;
    for (; c + 32 <= cols; c += 32) {
        __m256i v[4];
        UNROLL for (int k = 0; k < 4; k++) {
            v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(w + c + 8 * k), vinv));
            v[k] = _mm256_min_epi32(_mm256_max_epi32(v[k], lo), hi);
        }
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(q + c), _mm256_permutevar8x32_epi32(p, perm));
    }
    for (; c < cols; c++) {
        float v = nearbyintf(w[c] * inv);
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[c] = (int8_t)v;
    }
    *scale = amax / 127.0f;
}
