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
 */
#ifndef AMPR_QUANT_H
#define AMPR_QUANT_H

#include "../common/common.h"

typedef enum ampr__qtype {
    AMPR__Q_F32 = 0,
    AMPR__Q_F16 = 1,
    AMPR__Q_BF16 = 2,
    AMPR__Q_INT8 = 3,
    AMPR__Q_NF4 = 4,
    AMPR__Q_COUNT = 5
} ampr__qtype;

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
    /* dst is zeroed by the caller; on success it owns new allocations.
     * src is rows x cols fp32, row-major. */
    ampr_status (*quantize)(ampr__qmat *dst, const float *src, int64_t rows, int64_t cols,
                            ampr__err *err);
    void (*dequant_row)(const ampr__qmat *m, int64_t row, float *out);
    /* bytes of prepared activations for n tokens of cols values (0: none) */
    size_t (*act_bytes)(int64_t n, int64_t cols);
    void (*act_prepare)(const float *x, int64_t n, int64_t cols, void *act);
    /* Y[i*ldy + r] = sum_c W[r][c] * X[i][c] for i < n, r0 <= r < r1.
     * x is the fp32 input (n x cols); act the prepared one (may be NULL). */
    void (*matmul)(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                   float *y, int64_t ldy, int64_t r0, int64_t r1);
} ampr__qtraits;

const ampr__qtraits *ampr__qtraits_get(ampr__qtype t);
ampr_status ampr__qtype_from_name(const char *name, ampr__qtype *out);
/* Bytes resident for m (data + scales + extra). */
size_t ampr__qmat_bytes(const ampr__qmat *m);
void ampr__qmat_free(ampr__qmat *m);

/* Which SIMD level the kernels dispatched to ("scalar", "avx2", "avx512"). */
const char *ampr__quant_simd_name(void);

#endif
