/*
 * nf4.c -- NF4 and NF4 with double quantization, bit-compatible with
 * bitsandbytes' quantize_4bit(quant_type="nf4", blocksize=64) and its
 * compress_statistics option; the scalar (reference) matmul.
 *
 * What bitsandbytes does, and this file reproduces:
 *   - blocks of 64 consecutive values of the flattened row-major matrix;
 *     absmax = max |w| over the block, stored as fp32;
 *   - each value is multiplied by 1/absmax (fp32) and encoded by a fixed
 *     decision tree whose thresholds lie halfway between neighbouring codes;
 *     a value equal to a threshold goes to the lower code ("x > t" tests);
 *   - two codes per byte, the first element in the high nibble;
 *   - double quantization: offset = mean(absmax), then absmax - offset is
 *     quantized blockwise (blocks of 256, fp32 absmax2 each) with the signed
 *     dynamic 8-bit map, each value * (1/absmax2) mapped by a binary search
 *     over the sorted map followed by a midpoint test.
 */
#include "quant_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>

const float ampr__nf4_code[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* Thresholds between code i and i+1 (fp32 literals as bitsandbytes writes
 * them: the double midpoints rounded to float). */
static const float k_nf4_mid[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f,
    -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
    -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
    0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f,
};

float ampr__nf4_mid(int k) { return k_nf4_mid[k]; }

uint8_t ampr__nf4_encode(float x) {
    /* The same comparisons as bitsandbytes' balanced tree; a NaN fails every
     * "x > t" and lands on code 0, as there. */
    uint8_t c;
    if (x > k_nf4_mid[7]) {
        if (x > k_nf4_mid[11])
            c = x > k_nf4_mid[13] ? (x > k_nf4_mid[14] ? 15 : 14) : (x > k_nf4_mid[12] ? 13 : 12);
        else
            c = x > k_nf4_mid[9] ? (x > k_nf4_mid[10] ? 11 : 10) : (x > k_nf4_mid[8] ? 9 : 8);
    } else {
        if (x > k_nf4_mid[3])
            c = x > k_nf4_mid[5] ? (x > k_nf4_mid[6] ? 7 : 6) : (x > k_nf4_mid[4] ? 5 : 4);
        else
            c = x > k_nf4_mid[1] ? (x > k_nf4_mid[2] ? 3 : 2) : (x > k_nf4_mid[0] ? 1 : 0);
    }
    return c;
}

void ampr__nf4_quantize_flat(const float *x, size_t n, int64_t block, uint8_t *packed,
                             float *absmax) {
    if (block == 64 && ampr__quant_simd() >= AMPR__SIMD_AVX512) {
        size_t whole = n & ~(size_t)63; /* whole blocks: even, so tails start on a byte */
        ampr__nf4_quantize_blocks_avx512(x, whole, packed, absmax);
        if (whole < n) ampr__nf4_quantize_flat_scalar(x + whole, n - whole, 64, packed + whole / 2,
                                                      absmax + whole / 64);
        return;
    }
    ampr__nf4_quantize_flat_scalar(x, n, block, packed, absmax);
}

void ampr__nf4_quantize_flat_scalar(const float *x, size_t n, int64_t block, uint8_t *packed,
                                    float *absmax) {
    size_t nb = (n + (size_t)block - 1) / (size_t)block;
    memset(packed, 0, (n + 1) / 2);
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * (size_t)block, i1 = AMPR__MIN(n, i0 + (size_t)block);
        float amax = 0.0f;
        for (size_t i = i0; i < i1; i++) amax = fmaxf(amax, fabsf(x[i]));
        absmax[b] = amax;
        float inv = 1.0f / amax; /* inf for an all-zero block: 0 * inf = NaN -> code 0 */
        for (size_t i = i0; i < i1; i++) {
            uint8_t c = ampr__nf4_encode(x[i] * inv);
            packed[i / 2] |= (uint8_t)((i & 1) ? c : c << 4);
        }
    }
    if (n & 1) packed[n / 2] |= ampr__nf4_encode(0.0f); /* bitsandbytes pads with 0.0 */
}

/* ---- the dynamic map and blockwise 8-bit quantization ------------------------ */

static float k_dmap[256];
static pthread_once_t k_dmap_once = PTHREAD_ONCE_INIT;

/* torch.linspace(0.1, 1, steps) in float32, element i (torch's scalar formula:
 * from the start below the halfway point, from the end above it). */
static float linspace_f32(int i, int steps) {
    const float start = 0.1f, end = 1.0f;
    float step = (end - start) / (float)(steps - 1);
    int half = steps / 2;
    return i < half ? start + step * (float)i : end - step * (float)(steps - i - 1);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void dmap_init(void) {
    /* create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
     * for i in 0..6, 2^i + 1 boundaries in [0.1, 1], their midpoints scaled
     * by +-10^(i-6); then 0 and 1.0; sorted. */
    int k = 0;
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1;
        float p10 = (float)pow(10.0, (double)(i - 6));
        for (int j = 0; j + 1 < items; j++) {
            float mean = (linspace_f32(j, items) + linspace_f32(j + 1, items)) / 2.0f;
            k_dmap[k++] = p10 * mean;
        }
        for (int j = 0; j + 1 < items; j++) {
            float mean = (linspace_f32(j, items) + linspace_f32(j + 1, items)) / 2.0f;
            k_dmap[k++] = -p10 * mean;
        }
    }
    k_dmap[k++] = 0.0f;
    k_dmap[k++] = 1.0f;
    qsort(k_dmap, 256, sizeof(float), cmp_float);
}

const float *ampr__dynamic_map(void) {
    pthread_once(&k_dmap_once, dmap_init);
    return k_dmap;
}

/* bitsandbytes' search: 7 halving steps from the middle of the sorted map,
 * then compare with the midpoint to the neighbour on the side x lies. */
static uint8_t dmap_encode(const float *code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f, val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) {
        float mid = (upper + val) * 0.5f;
        return (uint8_t)(x > mid ? upper_pivot : pivot);
    }
    float mid = (lower + val) * 0.5f;
    return (uint8_t)(x < mid ? lower_pivot : pivot);
}

void ampr__dynamic_quantize(const float *x, size_t n, int64_t block, uint8_t *q,
                            float *absmax) {
    const float *code = ampr__dynamic_map();
    size_t nb = (n + (size_t)block - 1) / (size_t)block;
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * (size_t)block, i1 = AMPR__MIN(n, i0 + (size_t)block);
        float amax = 0.0f;
        for (size_t i = i0; i < i1; i++) amax = fmaxf(amax, fabsf(x[i]));
        absmax[b] = amax;
        float inv = 1.0f / amax;
        for (size_t i = i0; i < i1; i++) q[i] = dmap_encode(code, x[i] * inv);
    }
}

/* ---- the formats ------------------------------------------------------------- */

static ampr_status nf4_check(int64_t rows, int64_t cols, ampr__err *err) {
    if (rows <= 0 || cols <= 0 || rows > INT64_MAX / cols)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "NF4 needs a positive row and column count (got %lld x %lld)",
                          (long long)rows, (long long)cols);
    return AMPR_OK;
}

/* Not zeroed: the quantizer and the bitsandbytes copy (tier_nf4.c) write
 * every byte. */
ampr_status ampr__nf4_alloc(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err) {
    size_t n = (size_t)rows * (size_t)cols, nb = (n + 63) / 64, bytes = (n + 1) / 2;
    uint8_t *p = ampr__alloc_array_uninit(bytes, 1, err);
    if (!p) return AMPR_ERR_NOMEM;
    float *am = ampr__alloc_array_uninit(nb, sizeof(float), err);
    if (!am) {
        ampr__free(p);
        return AMPR_ERR_NOMEM;
    }
    memset(d, 0, sizeof *d);
    d->type = AMPR__Q_NF4;
    d->rows = rows;
    d->cols = cols;
    d->data = p;
    d->data_bytes = bytes;
    d->scales = am;
    d->n_scales = nb;
    return AMPR_OK;
}

ampr_status ampr__nf4_alloc_checked(ampr__qmat *d, int64_t rows, int64_t cols, ampr__err *err) {
    AMPR__TRY(nf4_check(rows, cols, err));
    return ampr__nf4_alloc(d, rows, cols, err);
}

/* Rows [r0, r1) are the flattened elements [r0*cols, r1*cols): whole blocks,
 * since the caller aligns r0 (and r1 < rows) to 64 / gcd(cols, 64) rows. */
void ampr__nf4_fill(ampr__qmat *d, const float *src, int64_t r0, int64_t r1) {
    size_t e0 = (size_t)r0 * (size_t)d->cols, e1 = (size_t)r1 * (size_t)d->cols;
    ampr__nf4_quantize_flat(src + e0, e1 - e0, 64, (uint8_t *)d->data + e0 / 2,
                            d->scales + e0 / 64);
}

ampr_status ampr__nf4dq_from_nf4(ampr__qmat *d, ampr__err *err) {
    size_t nb = d->n_scales, nb2 = (nb + 255) / 256;
    if (d->type != AMPR__Q_NF4 || !d->scales)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "NF4_DQ: source is not an NF4 matrix");
    if (nb > UINT32_MAX) return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "NF4_DQ: matrix too large");
    size_t extra = sizeof(ampr__nf4dq_header) + nb2 * sizeof(float) + nb;
    unsigned char *e = ampr__alloc_array(extra, 1, err);
    if (!e) return AMPR_ERR_NOMEM;
    /* offset = absmax.mean() (torch sums in fp32 pairwise; a double sum
     * rounded to fp32 agrees to within an ulp). */
    double sum = 0.0;
    for (size_t b = 0; b < nb; b++) sum += d->scales[b];
    float offset = (float)(sum / (double)nb);
    for (size_t b = 0; b < nb; b++) d->scales[b] -= offset;
    ampr__nf4dq_header h = {offset, (uint32_t)nb, (uint32_t)nb2, 0};
    memcpy(e, &h, sizeof h);
    float *a2 = (float *)(e + sizeof h);
    uint8_t *qa = e + sizeof h + nb2 * sizeof(float);
    ampr__dynamic_quantize(d->scales, nb, 256, qa, a2);
    ampr__free(d->scales);
    d->type = AMPR__Q_NF4_DQ;
    d->scales = NULL;
    d->n_scales = 0;
    d->extra = e;
    d->extra_bytes = extra;
    return AMPR_OK;
}

void ampr__nf4_absmax_view(const ampr__qmat *m, ampr__nf4_absmax *v) {
    memset(v, 0, sizeof *v);
    if (m->type == AMPR__Q_NF4) {
        v->plain = m->scales;
        return;
    }
    ampr__nf4dq_header h;
    memcpy(&h, m->extra, sizeof h);
    const unsigned char *e = m->extra;
    v->absmax2 = (const float *)(e + sizeof h);
    v->q = e + sizeof h + (size_t)h.n_blocks2 * sizeof(float);
    v->map = ampr__dynamic_map();
    v->offset = h.offset;
}

float ampr__nf4_block_absmax(const ampr__qmat *m, int64_t b) {
    ampr__nf4_absmax v;
    ampr__nf4_absmax_view(m, &v);
    return ampr__nf4_absmax_at(&v, b);
}

void ampr__nf4_dequant_span(const uint8_t *P, const ampr__nf4_absmax *v, int64_t e0, int64_t count,
                            float *out) {
    int64_t e = e0, e1 = e0 + count;
    while (e < e1) {
        int64_t b = e / 64, be = AMPR__MIN(e1, (b + 1) * 64);
        float a = ampr__nf4_absmax_at(v, b);
        for (; e < be; e++) {
            uint8_t byte = P[e / 2];
            *out++ = ampr__nf4_code[(e & 1) ? byte & 15 : byte >> 4] * a;
        }
    }
}

size_t ampr__nf4_act_bytes(int64_t n, int64_t cols) {
    return (size_t)n * (size_t)ampr__nf4_kp(cols) * sizeof(float);
}

void ampr__nf4_dequant_row(const ampr__qmat *m, int64_t row, float *out) {
    ampr__nf4_absmax v;
    ampr__nf4_absmax_view(m, &v);
    ampr__nf4_dequant_span(m->data, &v, row * m->cols, m->cols, out);
}

/* Any shape: row r is the flattened elements [r*K, (r+1)*K); it may start in
 * the middle of a block and on a low nibble (odd K). Each row-block segment is
 * summed in double, then scaled by the block's absmax. */
void ampr__nf4_matmul_scalar(const ampr__qmat *w, const float *x, const void *act, int64_t n,
                             float *y, int64_t ldy, int64_t r0, int64_t r1) {
    (void)act;
    ampr__nf4_absmax v;
    ampr__nf4_absmax_view(w, &v);
    int64_t K = w->cols;
    const uint8_t *P = w->data;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * K;
        for (int64_t r = r0; r < r1; r++) {
            int64_t e = r * K, e1 = e + K, base = r * K;
            double s = 0.0;
            while (e < e1) {
                int64_t b = e / 64, be = AMPR__MIN(e1, (b + 1) * 64);
                double bs = 0.0;
                for (; e < be; e++) {
                    uint8_t byte = P[e / 2];
                    bs += (double)ampr__nf4_code[(e & 1) ? byte & 15 : byte >> 4] * xi[e - base];
                }
                s += bs * ampr__nf4_absmax_at(&v, b);
            }
            y[i * ldy + r] = (float)s;
        }
    }
}
