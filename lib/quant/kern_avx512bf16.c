/*
 * kern_avx512bf16.c -- NF4 matmul with bf16 activations (the opt-in
 * "nf4": {"activations": "bf16"} of the config), for CPUs with AVX512_BF16;
 * quant.c hands these out only after it found that extension.
 *
 * Why: with fp32 activations an NF4 weight costs a 16-lane table lookup
 * (vpermps) and a 16-lane FMA per 16 weights, and those two instructions, not
 * memory, bound NF4 decode on the CPUs measured (README, issue 3). vpermw looks
 * up 32 bf16 codes at once and vdpbf16ps does 32 multiply-adds, so the same
 * weights cost about half the instructions, and NF4 decode can run at the
 * memory's speed.
 *
 * What it computes: y[t][r] = sum over blocks b of absmax[b] *
 * (sum over the block's elements e of bf16(code[q[e]]) * bf16(x[t][e])),
 * bf16() rounding to nearest even. The products are exact in fp32 and are
 * summed in fp32; the block absmax stays fp32. Against fp32 activations this
 * adds a relative error of about 2^-9 per product, far below NF4's own
 * quantization error (tests/test_quant.c checks the bound).
 *
 * Layout. The fast path needs cols % 64 == 0 (every row is whole blocks,
 * starting on a byte); other shapes use the fp32 kernel (act = NULL), so
 * the mode applies per matrix. A row is read in chunks of 128 weights (64
 * bytes, two blocks). A load at byte offset o (0 or 1) puts byte 2j + o in
 * the low half of word j; vpermw with the 16 codes stored twice (it reads
 * index bits 0..4, bit 4 is then irrelevant) gives the low nibbles' weights,
 * and after a 16-bit shift by 4 the high nibbles'. vdpbf16ps adds word pairs
 * (2i, 2i + 1) into fp32 lane i, so lanes 0..7 hold block 0 and 8..15 block
 * 1; the chunk's sum is multiplied by those two absmax values once. A final
 * half chunk (cols % 128 == 64) does the same in 256-bit registers.
 * act_prepare stores each token's x rounded to bf16 in that order: per chunk
 * [o=0 low][o=0 high][o=1 low][o=1 high], 32 values each (16 in a half
 * chunk); low nibble of byte k = element 2k + 1, high nibble = element 2k,
 * so word j of part (o, low) is element 4j + 2o + 1.
 *
 * As in the fp32 kernels, every (row, token) output has one accumulator
 * summed over the row in the same order whatever the tile, batch or row
 * range, so a token's result does not depend on what it is batched with.
 */
#include "quant_impl.h"

#include <immintrin.h>

#define UNROLL _Pragma("GCC unroll 16")
#define INLINE static inline __attribute__((always_inline))

size_t ampr__nf4_act_bytes_bf16(int64_t n, int64_t cols) {
    return (size_t)n * (size_t)((cols + 63) & ~(int64_t)63) * sizeof(uint16_t);
}

void ampr__nf4_act_prepare_bf16(const float *x, int64_t n, int64_t cols, void *act) {
    if (cols % 64) return; /* the fp32 kernel does these matrices */
    /* part (o, low/high) of a chunk holds elements 4j + k, k = 2o + (low):
     * the chunk de-interleaved by 4, in the order k = 1, 0, 3, 2 */
    static const int korder[4] = {1, 0, 3, 2};
    uint16_t *out = act;
    float perm[128];
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * cols;
        uint16_t *oi = out + i * cols;
        for (int64_t c = 0; c < cols; c += 128) {
            int64_t len = AMPR__MIN(128, cols - c), q = len / 4, p = 0;
            for (int k = 0; k < 4; k++)
                for (int64_t j = 0; j < q; j++) perm[p++] = xi[c + 4 * j + korder[k]];
            for (p = 0; p < len; p += 16)
                _mm256_storeu_si256((__m256i *)(oi + c + p),
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(perm + p)));
        }
    }
}

/* The 16 codes in bf16, twice (vpermw zmm reads 5 index bits). */
INLINE __m512i code_table(void) {
    __m256i c = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(ampr__nf4_code));
    return _mm512_inserti64x4(_mm512_castsi256_si512(c), c, 1);
}

#define BR 8 /* rows of a decode tile (AMPR__NF4_WALK) */
#define BT 4 /* tokens of a prefill tile of 4 rows */

/* R rows x T tokens: rows from p (row stride K/2 bytes), their first absmax
 * block b0 (K/64 per row), prepared tokens xa (stride K), outputs y. */
INLINE void tile_bf16(const uint8_t *p, int64_t K, const ampr__nf4_absmax *am, int64_t b0,
                      const uint16_t *xa, float *y, int64_t ldy, const int R, const int T) {
    const __m512i tab = code_table();
    const __m256i tab_h = _mm512_castsi512_si256(tab);
    const int64_t nbr = K / 64, rs = K / 2;
    __m512 acc[BR][BT];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =
        _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 128 <= K; c += 128) {
        const uint8_t *pc = p + c / 2;
        /* decode: keep the rows two tiles on coming (as the fp32 kernel) */
        if (T <= 2)
            UNROLL for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)(pc + (r + 2 * R) * rs), _MM_HINT_T2);
        UNROLL for (int r = 0; r < R; r++) {
            const uint8_t *pr = pc + r * rs;
            /* the offset-1 load stops at the chunk's last byte */
            __m512i v0 = _mm512_loadu_si512(pr), v1 = _mm512_maskz_loadu_epi8(~0ULL >> 1, pr + 1);
            __m512bh w0 = (__m512bh)_mm512_permutexvar_epi16(v0, tab);
            __m512bh w1 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v0, 4), tab);
            __m512bh w2 = (__m512bh)_mm512_permutexvar_epi16(v1, tab);
            __m512bh w3 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v1, 4), tab);
            int64_t b = b0 + r * nbr + c / 64;
            __m512 a = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(ampr__nf4_absmax_at(am, b)),
                                            _mm512_set1_ps(ampr__nf4_absmax_at(am, b + 1)));
            UNROLL for (int t = 0; t < T; t++) {
                const uint16_t *xt = xa + t * K + c;
                __m512 s = _mm512_dpbf16_ps(_mm512_setzero_ps(), w0,
                                            (__m512bh)_mm512_loadu_si512(xt));
                s = _mm512_dpbf16_ps(s, w1, (__m512bh)_mm512_loadu_si512(xt + 32));
                s = _mm512_dpbf16_ps(s, w2, (__m512bh)_mm512_loadu_si512(xt + 64));
                s = _mm512_dpbf16_ps(s, w3, (__m512bh)_mm512_loadu_si512(xt + 96));
                acc[r][t] = _mm512_fmadd_ps(s, a, acc[r][t]);
            }
        }
    }
    if (c < K) { /* one block left: the same in 256-bit registers */
        UNROLL for (int r = 0; r < R; r++) {
            const uint8_t *pr = p + c / 2 + r * rs;
            __m256i v0 = _mm256_loadu_si256((const __m256i *)pr);
            __m256i v1 = _mm256_maskz_loadu_epi8(~0u >> 1, pr + 1);
            __m256bh w0 = (__m256bh)_mm256_permutexvar_epi16(v0, tab_h);
            __m256bh w1 = (__m256bh)_mm256_permutexvar_epi16(_mm256_srli_epi16(v0, 4), tab_h);
            __m256bh w2 = (__m256bh)_mm256_permutexvar_epi16(v1, tab_h);
            __m256bh w3 = (__m256bh)_mm256_permutexvar_epi16(_mm256_srli_epi16(v1, 4), tab_h);
            __m512 a = _mm512_set1_ps(ampr__nf4_absmax_at(am, b0 + r * nbr + c / 64));
            UNROLL for (int t = 0; t < T; t++) {
                const uint16_t *xt = xa + t * K + c;
                __m256 s = _mm256_dpbf16_ps(_mm256_setzero_ps(), w0,
                                            (__m256bh)_mm256_loadu_si256((const __m256i *)xt));
                s = _mm256_dpbf16_ps(s, w1, (__m256bh)_mm256_loadu_si256((const __m256i *)(xt + 16)));
                s = _mm256_dpbf16_ps(s, w2, (__m256bh)_mm256_loadu_si256((const __m256i *)(xt + 32)));
                s = _mm256_dpbf16_ps(s, w3, (__m256bh)_mm256_loadu_si256((const __m256i *)(xt + 48)));
                /* lanes 8..15 add 0 * a: a is finite (the load rejects inf) */
                acc[r][t] = _mm512_fmadd_ps(_mm512_zextps256_ps512(s), a, acc[r][t]);
            }
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++)
        y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

void ampr__nf4_matmul_bf16(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                           float *y, int64_t ldy, int64_t r0, int64_t r1) {
    int64_t K = w->cols;
    if (K % 64 || !act) {
        ampr__nf4_matmul_avx512(w, x, NULL, n, y, ldy, r0, r1);
        return;
    }
    ampr__nf4_absmax am;
    ampr__nf4_absmax_view(w, &am);
    const uint8_t *P = w->data;
    const uint16_t *xa = act;
#define BF_T(r, t, R, T) \
    tile_bf16(P + (r) * (K / 2), K, &am, (r) * (K / 64), xa + (t) * K, y + (t) * ldy + (r), ldy, R, T)
#define BF_TAIL(r, t, R, nt)                                                                 \
    switch (nt) {                                                                            \
    case 1: BF_T(r, t, R, 1); break;                                                         \
    case 2: BF_T(r, t, R, 2); break;                                                         \
    default: BF_T(r, t, R, 3); break;                                                        \
    }
    AMPR__NF4_WALK(BF_T, BF_TAIL, BT)
#undef BF_TAIL
#undef BF_T
}
