/*
 * quant.h -- weight formats as rows of one traits table.
 *
 * Every resident weight matrix is an ampr__qmat: W with `rows` output rows and
 * `cols` input columns, y = W x. Each format (F32, F16, BF16, INT8, NF4) is one
 * row of the traits table: how to quantize an fp32 matrix into it, how to read
 * a row back, and the matmul kernel used by the forward pass.
 *
 * The matmul runs in two steps so that threads can split the rows:
 *   act_prepare(x)  once per call (INT8 quantizes activations per token here),
 *   matmul(rows r0..r1) on each thread, writing Y[i][r] for r in [r0, r1).
 *
 * Formats:
 *   F32   fp32 weights.
 *   F16   IEEE half weights, fp32 accumulation.
 *   BF16  bfloat16 weights, fp32 accumulation.
 *   INT8  symmetric int8 weights, one fp32 scale per output row; activations
 *         quantized to int8 per token (absmax/127) at run time; int32 sums.
 *   NF4   bitsandbytes NF4: blocks of 64 weights along the flattened matrix,
 *         one fp32 absmax per block, two 4-bit codes per byte, first element
 *         in the high nibble; weight-only (activations stay fp32).
 *   NF4_DQ  NF4 with bitsandbytes' double quantization (compress_statistics):
 *         the per-block absmax values are themselves stored as 8-bit codes of
 *         bitsandbytes' signed dynamic map, blocks of 256, mean subtracted.
 *
 * Exact byte layouts (all little-endian, all arrays dense):
 *   F32    data = float[rows][cols]
 *   F16    data = uint16 (IEEE binary16)[rows][cols]
 *   BF16   data = uint16 (bfloat16)[rows][cols]
 *   INT8   data = int8[rows][cols], values in [-127, 127];
 *          scales = float[rows], scale = absmax(row) / 127 (0 for a zero row);
 *          q = nearbyintf(w * (127 / absmax)), clamped to [-127, 127];
 *          W[r][c] ~= q[r][c] * scales[r].
 *   INT8 activations (act_prepare, every SIMD level bit for bit; the CUDA
 *          backend must reproduce this exactly). Per token i (a row of cols
 *          fp32 values x[c]), all arithmetic in IEEE fp32, round to nearest
 *          even (the default rounding mode):
 *            absmax = max_c |x[c]|                       (exact)
 *            inv    = absmax > 0 ? 127.0f / absmax : 0.0f (one fp32 division)
 *            q[c]   = clamp(nearbyintf(x[c] * inv), -127, 127)
 *                     (one fp32 multiply, then round half to EVEN: 0.5 -> 0,
 *                     1.5 -> 2, -2.5 -> -2; NOT roundf, NOT x / scale)
 *            scale  = absmax / 127.0f                    (one fp32 division)
 *            sum    = sum_c q[c]                         (int32)
 *          absmax == 0 (an all-zero token): inv = 0, every q = 0, scale = 0,
 *          sum = 0. q is zero padded to kp = cols rounded up to 64. A token
 *          holding an inf or a NaN: every q = 0, sum = 0, scale = NaN, so
 *          each of its outputs is NaN (as on the fp16 and NF4 paths: the
 *          fallback's check then sees non-finite logits) and the other
 *          tokens are unaffected. The matmul then computes
 *          y[i][r] = (float)(sum_c qw[r][c] * q[c]) * w_scale[r] * scale
 *          (int32 sum; the two fp32 multiplies left to right).
 *   NF4    any rows x cols (n = rows*cols > 0). Blocks run over the flattened
 *          row-major matrix, as in bitsandbytes: block b covers flattened
 *          weights [64b, 64b + 64) (the last one may be partial), so when
 *          cols % 64 != 0 a block spans two (or more) rows, and when cols is
 *          odd a row may start on a low nibble. data = uint8[ceil(n/2)], byte
 *          j holds element 2j in bits 7..4 and element 2j+1 in bits 3..0 (odd
 *          n: the final low nibble is padding, the code of 0.0, i.e. 7);
 *          scales = float[nb] (nb = ceil(n/64)) absmax per block;
 *          W[r][c] ~= ampr__nf4_code[q[e]] * absmax[e / 64], e = r*cols + c.
 *   NF4_DQ data as NF4; scales = NULL; extra = ampr__nf4dq_header, followed by
 *          float absmax2[nb2] (nb2 = ceil(nb/256)), then uint8 qabsmax[nb]:
 *          absmax[b] = ampr__dynamic_map()[qabsmax[b]] * absmax2[b/256] + offset.
 */
#ifndef AMPR_QUANT_H
#define AMPR_QUANT_H

#include "../common/common.h"
#include "../common/pool.h"

typedef enum ampr__qtype {
    AMPR__Q_F32 = 0,
    AMPR__Q_F16 = 1,
    AMPR__Q_BF16 = 2,
    AMPR__Q_INT8 = 3,
    AMPR__Q_NF4 = 4,
    AMPR__Q_NF4_DQ = 5,
    AMPR__Q_COUNT = 6
} ampr__qtype;

/* SIMD levels of the kernels, lowest first. */
typedef enum ampr__simd {
    AMPR__SIMD_SCALAR = 0, /* portable C: the reference */
    AMPR__SIMD_AVX2 = 1,   /* AVX2 + FMA + F16C */
    AMPR__SIMD_AVX512 = 2, /* AVX-512 F/BW/VL/DQ/VNNI (+ the AVX2 set) */
    AMPR__SIMD_COUNT = 3
} ampr__simd;

typedef struct ampr__qmat {
    ampr__qtype type;
    int64_t rows, cols;
    void *data;       /* packed weights, row-major */
    size_t data_bytes;
    float *scales;    /* INT8: one per row; NF4: one absmax per block; else NULL */
    size_t n_scales;
    void *extra;      /* format-specific (e.g. NF4 double quantization), or NULL */
    size_t extra_bytes;
} ampr__qmat;

typedef struct ampr__qtraits {
    ampr__qtype type;
    const char *name;
    int32_t block; /* weights sharing one scale (0: none, -1: a whole row) */
    /* Quantization in three steps, so that threads can fill disjoint rows
     * (ampr__quantize below drives them):
     *   alloc   dst (zeroed by the caller) gets buffers for rows x cols; on
     *           success it owns them (ampr__qmat_free);
     *   fill    quantizes rows [r0, r1) of src (rows x cols fp32, row-major,
     *           src = row 0); r0 and r1 are multiples of the row alignment
     *           (block / gcd(cols, block) for blocked formats, else 1) or
     *           r1 = rows; every byte of those rows' data and scales is written;
     *   finish  once all rows are in (NF4_DQ: double-quantize the absmax
     *           values), or NULL. On failure dst keeps its buffers. */
    ampr_status (*alloc)(ampr__qmat *dst, int64_t rows, int64_t cols, ampr__err *err);
    void (*fill)(ampr__qmat *dst, const float *src, int64_t r0, int64_t r1);
    ampr_status (*finish)(ampr__qmat *dst, ampr__err *err);
    void (*dequant_row)(const ampr__qmat *m, int64_t row, float *out);
    /* bytes of prepared activations for n tokens of cols values (0: none) */
    size_t (*act_bytes)(int64_t n, int64_t cols);
    void (*act_prepare)(const float *x, int64_t n, int64_t cols, void *act);
    /* Y[i*ldy + r] = sum_c W[r][c] * X[i][c] for i < n, r0 <= r < r1.
     * x is the fp32 input (n x cols); act the prepared one (may be NULL). */
    void (*matmul)(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                   float *y, int64_t ldy, int64_t r0, int64_t r1);
} ampr__qtraits;

/* The traits of t at the SIMD level chosen once per process (the best the CPU
 * has, lowered by the environment variable AMPR_SIMD=scalar|avx2|avx512).
 * NULL for an unknown t. Thread-safe. */
const ampr__qtraits *ampr__qtraits_get(ampr__qtype t);
/* The traits of t at a given level; NULL when the CPU lacks that level (tests
 * and benchmarks compare every level against AMPR__SIMD_SCALAR). */
const ampr__qtraits *ampr__qtraits_get_simd(ampr__qtype t, ampr__simd level);
/* NF4 / NF4_DQ computed with bf16 activations (config "nf4": {"activations":
 * "bf16"}; see kern_avx512bf16.c for what that computes): the same formats,
 * bf16 act_prepare and matmul. NULL when t is not NF4 / NF4_DQ, or the level
 * in use is below AVX-512, or the CPU lacks AVX512_BF16: then callers keep
 * ampr__qtraits_get(t), i.e. fp32 activations. */
const ampr__qtraits *ampr__qtraits_nf4_bf16(ampr__qtype t);
/* The level ampr__qtraits_get() uses, and the best one this CPU supports. */
ampr__simd ampr__quant_simd(void);
ampr__simd ampr__quant_simd_max(void);
const char *ampr__simd_name(ampr__simd level);
ampr_status ampr__qtype_from_name(const char *name, ampr__qtype *out);
/* Quantize src (rows x cols fp32, row-major) into dst (overwritten) in
 * format qt: alloc, fill split into row ranges over pool (NULL: this thread
 * alone; the result is the same byte for byte), finish. On failure dst is
 * left empty and err says why. */
ampr_status ampr__quantize(const ampr__qtraits *qt, ampr__qmat *dst, const float *src,
                           int64_t rows, int64_t cols, ampr__pool *pool, ampr__err *err);
/* Bytes resident for m (data + scales + extra). */
size_t ampr__qmat_bytes(const ampr__qmat *m);
void ampr__qmat_free(ampr__qmat *m);
/* Free m's buffers but keep its shape, type and byte counts (so
 * ampr__qmat_bytes still answers): for a matrix whose only copy now lives on
 * a device. m->data is NULL afterwards; ampr__qmat_free stays safe. */
void ampr__qmat_drop_data(ampr__qmat *m);

/* Which SIMD level the kernels dispatched to ("scalar", "avx2", "avx512"). */
const char *ampr__quant_simd_name(void);

/* ---- NF4 details (bitsandbytes-compatible) --------------------------------- */

/* The 16 NF4 code values, in bitsandbytes' order (index = 4-bit code). */
extern const float ampr__nf4_code[16];
/* The 4-bit code bitsandbytes' decision tree gives x (x already divided by the
 * block absmax): thresholds halfway between codes, x equal to a threshold goes
 * to the lower code, NaN to code 0. */
uint8_t ampr__nf4_encode(float x);
float ampr__nf4_mid(int k); /* midpoint k (0..14) between NF4 codes k and k + 1 */
/* The scalar reference of ampr__nf4_quantize_flat (which uses SIMD when it can). */
void ampr__nf4_quantize_flat_scalar(const float *x, size_t n, int64_t block, uint8_t *packed,
                                    float *absmax);
/* n IEEE halves (unaligned, little-endian) to floats, at the dispatched SIMD level. */
void ampr__f16_to_f32_n(const void *src, float *dst, size_t n);
/* Quantize n fp32 values (blocks of `block` along the array) exactly as
 * bitsandbytes' quantize_4bit(quant_type="nf4"): absmax[ceil(n/block)],
 * packed[ceil(n/2)] (high nibble first; a missing last element encodes 0.0).
 * Each value is multiplied by 1/absmax in fp32 before encoding, as the
 * bitsandbytes kernel does. */
void ampr__nf4_quantize_flat(const float *x, size_t n, int64_t block, uint8_t *packed,
                             float *absmax);
/* bitsandbytes' create_dynamic_map(signed=True): 256 sorted fp32 values. */
const float *ampr__dynamic_map(void);
/* bitsandbytes' quantize_blockwise with the dynamic map: per block of
 * `block` values an fp32 absmax, each value * (1/absmax) mapped to the nearest
 * map entry by bitsandbytes' binary search (ties as its kernel does). */
void ampr__dynamic_quantize(const float *x, size_t n, int64_t block, uint8_t *q,
                            float *absmax);

/* NF4_DQ: the start of qmat.extra. */
typedef struct ampr__nf4dq_header {
    float offset;      /* mean of the block absmax values, subtracted before coding */
    uint32_t n_blocks; /* nb: NF4 blocks (of 64) */
    uint32_t n_blocks2;/* nb2: absmax blocks (of 256) */
    uint32_t reserved;
} ampr__nf4dq_header;
/* d = an NF4 matrix of rows x cols (the bitsandbytes layout) with room for
 * its packed codes and fp32 absmax values, contents not yet written. */
ampr_status ampr__nf4_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err);
/* Turn an NF4 matrix into NF4_DQ in place (double-quantize its absmax; the
 * NF4_DQ traits' finish); on failure d is unchanged. */
ampr_status ampr__nf4dq_from_nf4(ampr__qmat *d, ampr__err *err);
/* The fp32 absmax of NF4 block b of m (NF4 or NF4_DQ). */
float ampr__nf4_block_absmax(const ampr__qmat *m, int64_t b);
/* max |x[i]| of n values, or NaN when one of them is an inf or a NaN (the
 * INT8 rule: such a token, weight row or q8 KV head quantizes to 0 with
 * scale NaN) */
float ampr__absmax_finite(const float *x, int64_t n);

/* ---- SmoothQuant hook (INT8) ------------------------------------------------
 * SmoothQuant moves activation outliers into the weights: with per-input-
 * channel factors s[c] > 0, X W^T = (X diag(1/s)) (W diag(s))^T exactly in
 * real arithmetic, and the smoothed activations quantize to int8 with much
 * less error. Use:
 *   1. calibrate act_absmax[c] = max |X[:, c]| over sample prompts;
 *   2. ampr__smooth_factors(act_absmax, W, rows, cols, alpha = 0.5, s);
 *   3. ampr__smooth_weights(W, rows, cols, s) before INT8 quantize();
 *   4. at run time divide the activations by s: fold 1/s into the gain of
 *      the RMSNorm that produces X (free), or call ampr__smooth_act().
 * All matrices that consume the same X (q/k/v, or gate/up) must share s. */
void ampr__smooth_factors(const float *act_absmax, const float *w, int64_t rows, int64_t cols,
                          float alpha, float *s);
void ampr__smooth_weights(float *w, int64_t rows, int64_t cols, const float *s);
void ampr__smooth_act(float *x, int64_t n, int64_t cols, const float *s);

#endif
