/*
 * test_quant.c -- the weight formats: bitsandbytes-exact NF4 (hand-checked
 * bytes), double quantization, INT8 round trips, every SIMD level the CPU has
 * against the scalar reference, SmoothQuant, and a per-row vs per-group
 * INT8 error report.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "quant/quant.h"

/* ---- helpers ----------------------------------------------------------------- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* xorshift64*, in (0, 1) */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return ((double)((g_rng * 2685821657736338717ull) >> 11) + 0.5) / 9007199254740992.0;
}
static float nrand(void) { return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand())); }
/* heavy tailed: Student t with 3 degrees of freedom */
static float trand(void) {
    double c = 0;
    for (int i = 0; i < 3; i++) { double g = nrand(); c += g * g; }
    return (float)(nrand() / sqrt(c / 3.0));
}
static float *rand_mat(int64_t n, int heavy, float scale) {
    float *m = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) m[i] = (heavy ? trand() : nrand()) * scale;
    return m;
}

static void quantize_or_fail(ampr__qtype t, const float *w, int64_t rows, int64_t cols,
                             ampr__qmat *q) {
    memset(q, 0, sizeof *q);
    ampr__err err = {0};
    const ampr__qtraits *tr = ampr__qtraits_get_simd(t, AMPR__SIMD_SCALAR);
    assert_non_null(tr);
    assert_int_equal(ampr__quantize(tr, q, w, rows, cols, NULL, &err), AMPR_OK);
}

/* Run one level's kernels: y (n x ldy). */
static void run_matmul(const ampr__qtraits *tr, const ampr__qmat *q, const float *x, int64_t n,
                       float *y, int64_t ldy, int64_t r0, int64_t r1) {
    size_t ab = tr->act_bytes(n, q->cols);
    void *act = ab ? malloc(ab) : NULL;
    if (tr->act_prepare) tr->act_prepare(x, n, q->cols, act);
    tr->matmul(q, x, act, n, y, ldy, r0, r1);
    free(act);
}

/* ---- NF4: the format, byte by byte --------------------------------------------- */

static void test_nf4_code_table(void **state) {
    (void)state;
    static const double want[16] = {
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
    for (int i = 0; i < 16; i++) {
        assert_true(ampr__nf4_code[i] == (float)want[i]);
        assert_int_equal(ampr__nf4_encode(ampr__nf4_code[i]), i);
    }
    /* bitsandbytes' decision thresholds (fp32 literals of its kernel): the
     * threshold itself goes to the lower code, the next float up to the upper */
    static const float mid[15] = {
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f,
        -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
        -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
        0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
        0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
    for (int i = 0; i < 15; i++) {
        assert_true(fabs(mid[i] - (want[i] + want[i + 1]) / 2.0) < 1e-7);
        assert_int_equal(ampr__nf4_encode(mid[i]), i);
        assert_int_equal(ampr__nf4_encode(nextafterf(mid[i], 2.0f)), i + 1);
        assert_int_equal(ampr__nf4_encode(nextafterf(mid[i], -2.0f)), i);
    }
    assert_int_equal(ampr__nf4_encode(-0.0f), 7);
    assert_int_equal(ampr__nf4_encode(NAN), 0);
}

static void test_nf4_hand_vector(void **state) {
    (void)state;
    /* One block, absmax 2.0 (a power of two: x * (1/absmax) is exact). */
    static const float mid[15] = {
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f,
        -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
        -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
        0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
        0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
    float x[64];
    for (int i = 0; i < 16; i++) x[i] = 2.0f * ampr__nf4_code[i]; /* codes 0..15 */
    for (int i = 0; i < 15; i++) x[16 + i] = 2.0f * mid[i];       /* ties: codes 0..14 */
    x[31] = 1.9f;                                                 /* 0.95 -> 15 */
    x[32] = 0.2f;   /* 0.1: between 0.0796 and 0.1609, below their midpoint 0.1203 -> 8 */
    x[33] = -1.9f;  /* -0.95 -> 0 */
    x[34] = -0.0f;  /* -> 7 */
    x[35] = 1e-30f; /* -> 7 */
    x[36] = 0.25f;  /* 0.125 > 0.1203 -> 9 */
    x[37] = -0.7f;  /* -0.35 <= -0.3397 -> 3 */
    for (int i = 38; i < 64; i++) x[i] = 0.0f;
    static const uint8_t want[32] = {
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, /* exact codes, high nibble first */
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, /* ties to the lower code */
        0x80, 0x77, 0x93, 0x77, 0x77, 0x77, 0x77, 0x77,
        0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77};
    uint8_t packed[32];
    float absmax[1];
    ampr__nf4_quantize_flat(x, 64, 64, packed, absmax);
    assert_true(absmax[0] == 2.0f);
    assert_memory_equal(packed, want, 32);

    /* The same block as a 1 x 64 NF4 matrix: same bytes, dequantized codes. */
    ampr__qmat q;
    quantize_or_fail(AMPR__Q_NF4, x, 1, 64, &q);
    assert_int_equal(q.data_bytes, 32);
    assert_int_equal(q.n_scales, 1);
    assert_memory_equal(q.data, want, 32);
    float row[64];
    ampr__qtraits_get(AMPR__Q_NF4)->dequant_row(&q, 0, row);
    assert_true(row[1] == 2.0f * ampr__nf4_code[1]);
    assert_true(row[16] == -2.0f && row[30] == 2.0f * ampr__nf4_code[14]);
    ampr__qmat_free(&q);

    /* Odd length: the missing last element encodes 0.0 (code 7); an all-zero
     * block has absmax 0 and every weight reads back as 0. */
    float y3[67];
    for (int i = 0; i < 64; i++) y3[i] = 0.0f;
    y3[64] = 1.0f; y3[65] = -1.0f; y3[66] = 0.5f;
    uint8_t p3[34];
    float a3[2];
    ampr__nf4_quantize_flat(y3, 67, 64, p3, a3);
    assert_true(a3[0] == 0.0f && a3[1] == 1.0f);
    assert_int_equal(p3[32], 0xf0);
    assert_int_equal(p3[33], 0xc7); /* 0.5 -> 12: below the 12/13 threshold 0.50166 */
    for (int i = 0; i < 32; i++) assert_true(ampr__nf4_code[p3[i] >> 4] * a3[0] == 0.0f);
}

/* NF4 / NF4_DQ of any shape: blocks run over the flattened matrix, so with
 * cols % 64 != 0 blocks cross rows, and with odd cols rows start on a low
 * nibble. The bytes must be exactly ampr__nf4_quantize_flat of the whole
 * matrix; dequant_row and every level's matmul must match an fp64 product of
 * weights decoded here independently from those bytes. */
static void test_nf4_any_shape(void **state) {
    (void)state;
    static const int64_t shapes[][2] = {{64, 172}, {3, 100}, {5, 33}, {7, 1}, {13, 257},
                                        {1, 5},    {2, 64},  {9, 192}, {4, 31}};
    static const int64_t n_v[] = {1, 2, 3, 4, 7};
    float half_gap = 0;
    for (int i = 0; i < 15; i++)
        half_gap = fmaxf(half_gap, (ampr__nf4_code[i + 1] - ampr__nf4_code[i]) / 2.0f);
    for (size_t s = 0; s < AMPR__ARRAY_LEN(shapes); s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        size_t n = (size_t)(rows * cols), nb = (n + 63) / 64;
        float *w = rand_mat((int64_t)n, 1, 0.03f);
        uint8_t *flat = malloc((n + 1) / 2);
        float *absmax = malloc(nb * sizeof(float));
        ampr__nf4_quantize_flat(w, n, 64, flat, absmax);
        if (n & 1) assert_int_equal(flat[n / 2] & 15, 7); /* padding: 0.0 encodes 7 */
        for (int t = AMPR__Q_NF4; t <= AMPR__Q_NF4_DQ; t++) {
            ampr__qmat q;
            quantize_or_fail((ampr__qtype)t, w, rows, cols, &q);
            assert_int_equal(q.rows, rows);
            assert_int_equal(q.cols, cols);
            assert_int_equal(q.data_bytes, (n + 1) / 2);
            assert_memory_equal(q.data, flat, (n + 1) / 2);
            if (t == AMPR__Q_NF4) {
                assert_int_equal(q.n_scales, nb);
                assert_memory_equal(q.scales, absmax, nb * sizeof(float));
            } else {
                ampr__nf4dq_header h;
                memcpy(&h, q.extra, sizeof h);
                assert_int_equal(h.n_blocks, nb);
                assert_int_equal(h.n_blocks2, (nb + 255) / 256);
            }
            /* the reference decode, element by element from the flat bytes */
            float *ref = malloc(n * sizeof(float));
            for (size_t e = 0; e < n; e++) {
                uint8_t byte = flat[e / 2];
                ref[e] = ampr__nf4_code[(e & 1) ? byte & 15 : byte >> 4] *
                         ampr__nf4_block_absmax(&q, (int64_t)(e / 64));
            }
            float *row = malloc((size_t)cols * sizeof(float));
            for (int64_t r = 0; r < rows; r++) {
                ampr__qtraits_get_simd((ampr__qtype)t, AMPR__SIMD_SCALAR)->dequant_row(&q, r, row);
                assert_memory_equal(row, ref + r * cols, (size_t)cols * sizeof(float));
                if (t == AMPR__Q_NF4) /* round trip */
                    for (int64_t c = 0; c < cols; c++)
                        assert_true(fabsf(row[c] - w[r * cols + c]) <=
                                    half_gap * absmax[(r * cols + c) / 64] * 1.0001f);
            }
            for (size_t a = 0; a < AMPR__ARRAY_LEN(n_v); a++) {
                int64_t nt = n_v[a], ldy = rows + 1;
                float *x = rand_mat(nt * cols, 1, 1.0f);
                float *y0 = malloc((size_t)(nt * ldy) * sizeof(float));
                float *y = malloc((size_t)(nt * ldy) * sizeof(float));
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t i = 0; i < nt; i++) {
                        double acc = 0;
                        for (int64_t c = 0; c < cols; c++)
                            acc += (double)ref[r * cols + c] * x[i * cols + c];
                        y0[i * ldy + r] = (float)acc;
                    }
                for (int l = 0; l <= (int)ampr__quant_simd_max(); l++) {
                    const ampr__qtraits *tr = ampr__qtraits_get_simd((ampr__qtype)t, (ampr__simd)l);
                    for (int64_t i = 0; i < nt * ldy; i++) y[i] = -777.0f;
                    int64_t m = rows / 2;
                    run_matmul(tr, &q, x, nt, y, ldy, 0, m);
                    run_matmul(tr, &q, x, nt, y, ldy, m, rows);
                    for (int64_t i = 0; i < nt; i++) {
                        assert_true(y[i * ldy + rows] == -777.0f);
                        for (int64_t r = 0; r < rows; r++) {
                            double mag = 0;
                            for (int64_t c = 0; c < cols; c++)
                                mag += fabs((double)ref[r * cols + c] * x[i * cols + c]);
                            double d = fabs((double)y[i * ldy + r] - y0[i * ldy + r]);
                            if (!(d <= 2e-6 * mag + 1e-30))
                                fail_msg("%s %s %lldx%lld n=%lld: y[%lld][%lld] %g vs fp64 %g",
                                         tr->name, ampr__simd_name((ampr__simd)l),
                                         (long long)rows, (long long)cols, (long long)nt,
                                         (long long)i, (long long)r, y[i * ldy + r],
                                         y0[i * ldy + r]);
                        }
                    }
                }
                free(x);
                free(y0);
                free(y);
            }
            free(row);
            free(ref);
            ampr__qmat_free(&q);
        }
        free(w);
        free(flat);
        free(absmax);
    }
    /* still refused: an empty matrix */
    float z[1] = {0};
    ampr__qmat q = {0};
    ampr__err err = {0};
    assert_int_equal(ampr__quantize(ampr__qtraits_get(AMPR__Q_NF4), &q, z, 0, 64, NULL, &err),
                     AMPR_ERR_UNSUPPORTED);
    assert_null(q.data);
}

/* The dispatched NF4 quantizer (AVX-512 where the CPU has it) gives the scalar
 * reference's bytes and absmax: random blocks, exact midpoints, an all-zero
 * block, a NaN, huge and tiny values, and a tail that is not a whole block. */
static void test_nf4_quantize_simd_matches_scalar(void **state) {
    (void)state;
    const size_t n = 64 * 40 + 33;
    float *x = rand_mat((int64_t)n, 1, 0.05f);
    for (int k = 0; k < 64; k++) x[64 + k] = 0.0f;                    /* block 1: zeros */
    for (int k = 0; k < 15; k++) x[128 + k] = 0.5f * ampr__nf4_mid(k); /* block 2: ties */
    x[128 + 20] = 0.5f;                                               /* its absmax */
    x[256 + 3] = NAN;                                                 /* block 4 */
    x[320 + 5] = 3e38f;
    x[384 + 7] = 1e-38f;
    uint8_t *a = malloc((n + 1) / 2), *b = malloc((n + 1) / 2);
    size_t nb = (n + 63) / 64;
    float *am = malloc(nb * sizeof(float)), *bm = malloc(nb * sizeof(float));
    ampr__nf4_quantize_flat_scalar(x, n, 64, a, am);
    ampr__nf4_quantize_flat(x, n, 64, b, bm);
    printf("nf4 quantize at %s vs scalar\n", ampr__quant_simd_name());
    assert_memory_equal(a, b, (n + 1) / 2);
    assert_memory_equal(am, bm, nb * sizeof(float));
    free(x);
    free(a);
    free(b);
    free(am);
    free(bm);
}

static void test_nf4_roundtrip(void **state) {
    (void)state;
    int64_t rows = 37, cols = 192;
    float *w = rand_mat(rows * cols, 1, 0.02f);
    ampr__qmat q;
    quantize_or_fail(AMPR__Q_NF4, w, rows, cols, &q);
    assert_int_equal(ampr__qmat_bytes(&q), (size_t)(rows * cols / 2 + rows * cols / 64 * 4));
    float *row = malloc((size_t)cols * sizeof(float));
    float half_gap = 0; /* half the largest gap between codes (between -1 and -0.696) */
    for (int i = 0; i < 15; i++)
        half_gap = fmaxf(half_gap, (ampr__nf4_code[i + 1] - ampr__nf4_code[i]) / 2.0f);
    for (int64_t r = 0; r < rows; r++) {
        ampr__qtraits_get(AMPR__Q_NF4)->dequant_row(&q, r, row);
        for (int64_t c = 0; c < cols; c++) {
            float a = q.scales[(r * cols + c) / 64];
            assert_true(fabsf(row[c] - w[r * cols + c]) <= half_gap * a * 1.0001f);
        }
    }
    free(row);
    free(w);
    ampr__qmat_free(&q);
}

/* ---- double quantization ------------------------------------------------------------- */

static void test_dynamic_map(void **state) {
    (void)state;
    const float *m = ampr__dynamic_map();
    int zeros = 0;
    for (int i = 0; i < 256; i++) zeros += m[i] == 0.0f;
    for (int i = 1; i < 256; i++) assert_true(m[i - 1] < m[i]);
    assert_int_equal(zeros, 1);
    assert_true(m[255] == 1.0f);
    assert_true(m[127] == 0.0f);       /* 127 negatives below 0 */
    assert_true(fabsf(m[128] - 5.5e-7f) < 1e-12f); /* 1e-6 * (0.1 + 1) / 2 */
    assert_true(fabsf(m[0] + 0.99296875f) < 1e-6f); /* -(1 - 0.9/64/2) */
    /* a map entry encodes to itself */
    uint8_t q[256];
    float a;
    float v[256];
    memcpy(v, m, sizeof v);
    ampr__dynamic_quantize(v, 256, 256, q, &a);
    assert_true(a == 1.0f);
    for (int i = 0; i < 256; i++) assert_int_equal(q[i], i);
}

static void test_nf4_double_quant(void **state) {
    (void)state;
    int64_t rows = 300, cols = 128; /* 600 blocks: 3 absmax blocks, the last partial */
    float *w = rand_mat(rows * cols, 1, 0.05f);
    ampr__qmat q, p;
    quantize_or_fail(AMPR__Q_NF4_DQ, w, rows, cols, &q);
    quantize_or_fail(AMPR__Q_NF4, w, rows, cols, &p);
    assert_int_equal(q.type, AMPR__Q_NF4_DQ);
    assert_memory_equal(q.data, p.data, p.data_bytes); /* the same codes */
    ampr__nf4dq_header h;
    memcpy(&h, q.extra, sizeof h);
    assert_int_equal(h.n_blocks, 600);
    assert_int_equal(h.n_blocks2, 3);
    assert_int_equal(q.extra_bytes, sizeof h + 3 * 4 + 600);
    double mean = 0;
    for (int b = 0; b < 600; b++) mean += p.scales[b];
    mean /= 600;
    assert_true(fabs(h.offset - mean) < 1e-6 * mean);
    const float *a2 = (const float *)((const char *)q.extra + sizeof h);
    /* the dynamic map's largest gap is 0.9/64 (top decade): half of it bounds the error */
    for (int b = 0; b < 600; b++) {
        float got = ampr__nf4_block_absmax(&q, b);
        float bound = 0.9f / 64.0f / 2.0f * a2[b / 256] * 1.001f + 1e-7f;
        assert_true(fabsf(got - p.scales[b]) <= bound);
    }
    assert_true(ampr__qmat_bytes(&q) < ampr__qmat_bytes(&p));
    free(w);
    ampr__qmat_free(&q);
    ampr__qmat_free(&p);
}

/* ---- INT8 ------------------------------------------------------------------------------ */

static void test_int8_roundtrip(void **state) {
    (void)state;
    int64_t rows = 19, cols = 77;
    float *w = rand_mat(rows * cols, 1, 0.1f);
    for (int64_t c = 0; c < cols; c++) w[3 * cols + c] = 0.0f; /* a zero row */
    ampr__qmat q;
    quantize_or_fail(AMPR__Q_INT8, w, rows, cols, &q);
    assert_int_equal(q.n_scales, rows);
    float *row = malloc((size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        float amax = 0;
        for (int64_t c = 0; c < cols; c++) amax = fmaxf(amax, fabsf(w[r * cols + c]));
        assert_true(q.scales[r] == amax / 127.0f);
        ampr__qtraits_get(AMPR__Q_INT8)->dequant_row(&q, r, row);
        for (int64_t c = 0; c < cols; c++) {
            int8_t v = ((const int8_t *)q.data)[r * cols + c];
            assert_true(v != -128);
            assert_true(fabsf(row[c] - w[r * cols + c]) <= q.scales[r] * 0.5001f);
        }
    }
    free(row);
    free(w);
    ampr__qmat_free(&q);
}

static void test_int8_act_prepare_levels(void **state) {
    (void)state;
    int64_t n = 5, cols = 131;
    float *x = rand_mat(n * cols, 1, 3.0f);
    const ampr__qtraits *ref = ampr__qtraits_get_simd(AMPR__Q_INT8, AMPR__SIMD_SCALAR);
    size_t ab = ref->act_bytes(n, cols);
    assert_int_equal(ab, (size_t)n * (8 + 192));
    unsigned char *a0 = malloc(ab), *a1 = malloc(ab);
    ref->act_prepare(x, n, cols, a0);
    for (int l = 1; l <= (int)ampr__quant_simd_max(); l++) {
        const ampr__qtraits *tr = ampr__qtraits_get_simd(AMPR__Q_INT8, (ampr__simd)l);
        memset(a1, 0x55, ab);
        tr->act_prepare(x, n, cols, a1);
        assert_memory_equal(a0, a1, ab);
    }
    free(a0);
    free(a1);
    free(x);
}

/* The INT8 activation rule documented in quant.h, pinned at every level:
 * inv = 127/absmax (fp32), q = nearbyintf(x * inv) (ties to even), clamp,
 * scale = absmax/127; an all-zero token gives scale 0 and q 0. */
static void test_int8_act_rule(void **state) {
    (void)state;
    enum { C = 12, N = 3 };
    /* token 0: absmax 127 -> inv 1 exactly: the ties show the rounding */
    static const float t0[C] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.49f, -127.0f,
                                0.0f,   -0.0f, 126.5f};
    static const int8_t q0[C] = {127, 0, 2, 2, 0, -2, -2, 3, -127, 0, 0, 126};
    /* token 1: absmax 3 -> inv = 127/3 in fp32 = 42.33333206f */
    static const float t1[C] = {3.0f, -3.0f, 1.0f, 0.0118110236f, 1.5f, -0.75f, 2.9f, 0.1f,
                                -0.2f, 0.05f, 1e-3f, -1e-3f};
    float x[N][C];
    memcpy(x[0], t0, sizeof t0);
    memcpy(x[1], t1, sizeof t1);
    memset(x[2], 0, sizeof x[2]); /* token 2: all zero */
    x[2][5] = -0.0f;
    float inv1 = 127.0f / 3.0f;
    assert_true(inv1 == 42.33333206f);
    int8_t q1[C];
    for (int c = 0; c < C; c++) q1[c] = (int8_t)nearbyintf(t1[c] * inv1);
    assert_int_equal(q1[0], 127);
    assert_int_equal(q1[1], -127);
    assert_int_equal(q1[2], 42);   /* 42.333 */
    assert_int_equal(q1[4], 64);   /* 63.4999... */
    assert_int_equal(q1[5], -32);  /* -31.75 */
    for (int l = 0; l <= (int)ampr__quant_simd_max(); l++) {
        const ampr__qtraits *tr = ampr__qtraits_get_simd(AMPR__Q_INT8, (ampr__simd)l);
        size_t ab = tr->act_bytes(N, C);
        unsigned char *a = malloc(ab);
        memset(a, 0x55, ab);
        tr->act_prepare(&x[0][0], N, C, a);
        const float *sc = (const float *)a;
        const int32_t *sum = (const int32_t *)(a + N * sizeof(float));
        const int8_t *q = (const int8_t *)(a + N * (sizeof(float) + sizeof(int32_t)));
        assert_true(sc[0] == 1.0f && sc[1] == 3.0f / 127.0f && sc[2] == 0.0f);
        assert_memory_equal(q, q0, C);
        assert_memory_equal(q + 64, q1, C);
        int32_t s0 = 0, s1 = 0;
        for (int c = 0; c < C; c++) {
            s0 += q0[c];
            s1 += q1[c];
        }
        assert_int_equal(sum[0], s0);
        assert_int_equal(sum[1], s1);
        assert_int_equal(sum[2], 0);
        for (int c = 0; c < 64; c++) {
            if (c >= C) assert_int_equal(q[c], 0);
            if (c >= C) assert_int_equal(q[64 + c], 0);
            assert_int_equal(q[128 + c], 0);
        }
        free(a);
    }
    /* a value where x * inv and x / scale round differently: the kernels
     * follow x * inv */
    float sc1 = 3.0f / 127.0f, xd = 0;
    for (int k = 0; k < 127 && xd == 0; k++)
        for (int d = -3; d <= 3 && xd == 0; d++) {
            float v = ((float)k + 0.5f) / inv1;
            for (int j = 0; j < (d < 0 ? -d : d); j++) v = nextafterf(v, d < 0 ? 0.0f : 4.0f);
            if (nearbyintf(v * inv1) != nearbyintf(v / sc1)) xd = v;
        }
    assert_true(xd != 0);
    float xt[2] = {3.0f, xd};
    for (int l = 0; l <= (int)ampr__quant_simd_max(); l++) {
        const ampr__qtraits *tr = ampr__qtraits_get_simd(AMPR__Q_INT8, (ampr__simd)l);
        unsigned char *a = malloc(tr->act_bytes(1, 2));
        tr->act_prepare(xt, 1, 2, a);
        const int8_t *q = (const int8_t *)(a + sizeof(float) + sizeof(int32_t));
        assert_int_equal(q[1], (int)nearbyintf(xd * inv1));
        free(a);
    }
}

/* A token holding an inf or a NaN (quant.h): at every level q = 0, sum = 0
 * and scale NaN, so each of its outputs is NaN, and the other tokens get
 * exactly what they get alone. Non-finite values in the vector part and in
 * the scalar tail (cols 131: 16 vectors of 8 and 3 more), and a weight row
 * with a NaN or an inf: scale NaN, q 0, its outputs NaN. */
static void test_int8_nonfinite(void **state) {
    (void)state;
    enum { N = 5, C = 131, R = 6 };
    float *x = rand_mat(N * C, 1, 2.0f);
    x[1 * C + 5] = NAN;
    x[2 * C + 130] = INFINITY;
    x[3 * C + 64] = -INFINITY;
    x[4 * C + 129] = -NAN;
    float *w = rand_mat(R * C, 2, 0.1f);
    w[2 * C + 7] = NAN;
    w[4 * C + 130] = -INFINITY;
    ampr__qmat q;
    quantize_or_fail(AMPR__Q_INT8, w, R, C, &q);
    for (int64_t r = 0; r < R; r++) {
        int bad = r == 2 || r == 4;
        assert_int_equal(isnan(q.scales[r]), bad);
        for (int64_t c = 0; bad && c < C; c++) assert_int_equal(((const int8_t *)q.data)[r * C + c], 0);
    }
    for (int l = 0; l <= (int)ampr__quant_simd_max(); l++) {
        const ampr__qtraits *tr = ampr__qtraits_get_simd(AMPR__Q_INT8, (ampr__simd)l);
        size_t ab = tr->act_bytes(N, C);
        unsigned char *a = malloc(ab);
        memset(a, 0x55, ab);
        tr->act_prepare(x, N, C, a);
        const float *sc = (const float *)a;
        const int32_t *sum = (const int32_t *)(a + N * sizeof(float));
        const int8_t *qx = (const int8_t *)(a + N * (sizeof(float) + sizeof(int32_t)));
        assert_true(isfinite(sc[0]) && sc[0] > 0);
        for (int i = 1; i < N; i++) {
            assert_true(isnan(sc[i]));
            assert_int_equal(sum[i], 0);
            for (int c = 0; c < 192; c++) assert_int_equal(qx[i * 192 + c], 0);
        }
        float y[N * R], y0[R];
        run_matmul(tr, &q, x, N, y, R, 0, R);
        run_matmul(tr, &q, x, 1, y0, R, 0, R); /* token 0 alone */
        for (int r = 0; r < R; r++) {
            int bad = r == 2 || r == 4;
            if (bad) assert_true(isnan(y[r]));
            else assert_memory_equal(&y[r], &y0[r], sizeof(float));
            for (int i = 1; i < N; i++) assert_true(isnan(y[i * R + r]));
        }
        free(a);
    }
    ampr__qmat_free(&q);
    free(w);
    free(x);
}

/* quantize() may use SIMD conversions (by the dispatched level): they must be
 * bit-identical to the scalar element conversions, specials included. */
static void test_quantize_bit_exact(void **state) {
    (void)state;
    int64_t rows = 7, cols = 203; /* not a multiple of 8, 16 or 32 */
    int64_t n = rows * cols;
    float *w = rand_mat(n, 1, 0.5f);
    static const float special[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -70000.0f,
                                    1e-8f, -3e-6f, 6.1e-5f, 5.96e-8f, 2.98e-8f, 1e30f,
                                    INFINITY, -INFINITY, 1.00048828125f, 1.0009765625f,
                                    3.3895314e38f, -1.0039062f};
    for (size_t k = 0; k < AMPR__ARRAY_LEN(special); k++) w[3 + 11 * k] = special[k];
    w[cols * 2 + 40] = NAN; /* one NaN: its vector takes the scalar conversion */
    for (int64_t c = 0; c < cols; c++) w[5 * cols + c] *= 1e-6f; /* fp16 subnormals */
    ampr__qmat q;
    quantize_or_fail(AMPR__Q_F16, w, rows, cols, &q);
    for (int64_t i = 0; i < n; i++)
        if (((const uint16_t *)q.data)[i] != ampr__f32_to_fp16(w[i]))
            fail_msg("f16 of %a: %04x vs %04x", (double)w[i], ((const uint16_t *)q.data)[i],
                     ampr__f32_to_fp16(w[i]));
    ampr__qmat_free(&q);
    quantize_or_fail(AMPR__Q_BF16, w, rows, cols, &q);
    for (int64_t i = 0; i < n; i++)
        assert_int_equal(((const uint16_t *)q.data)[i], ampr__f32_to_bf16(w[i]));
    ampr__qmat_free(&q);
    w[cols * 2 + 40] = 0.25f;
    for (size_t k = 0; k < AMPR__ARRAY_LEN(special); k++)
        if (isinf(special[k]) || fabsf(special[k]) > 1e6f) w[3 + 11 * k] = 0.5f;
    for (int64_t c = 0; c < cols; c++) w[6 * cols + c] = 0.0f; /* a zero row */
    quantize_or_fail(AMPR__Q_INT8, w, rows, cols, &q);
    for (int64_t r = 0; r < rows; r++) {
        float amax = 0;
        for (int64_t c = 0; c < cols; c++) amax = fmaxf(amax, fabsf(w[r * cols + c]));
        float inv = amax > 0 ? 127.0f / amax : 0.0f;
        assert_true(q.scales[r] == amax / 127.0f);
        for (int64_t c = 0; c < cols; c++) {
            float v = nearbyintf(w[r * cols + c] * inv);
            v = v > 127 ? 127 : v < -127 ? -127 : v;
            assert_int_equal(((const int8_t *)q.data)[r * cols + c], (int)v);
        }
    }
    ampr__qmat_free(&q);
    free(w);
}

/* ---- every level against the scalar reference --------------------------------------------- */

static void check_level(ampr__qtype t, ampr__simd level, int64_t rows, int64_t cols, int64_t n) {
    float *w = rand_mat(rows * cols, 0, 0.05f);
    float *x = rand_mat(n * cols, 1, 1.0f);
    ampr__qmat q;
    quantize_or_fail(t, w, rows, cols, &q);
    const ampr__qtraits *ref = ampr__qtraits_get_simd(t, AMPR__SIMD_SCALAR);
    const ampr__qtraits *tr = ampr__qtraits_get_simd(t, level);
    assert_non_null(tr);
    int64_t ldy = rows + 3;
    float *y0 = malloc((size_t)(n * ldy) * sizeof(float));
    float *y1 = malloc((size_t)(n * ldy) * sizeof(float));
    for (int64_t i = 0; i < n * ldy; i++) y0[i] = y1[i] = -777.0f;
    run_matmul(ref, &q, x, n, y0, ldy, 0, rows);
    /* split the rows as threads would: [0, m) and [m, rows) */
    int64_t m = rows / 3;
    run_matmul(tr, &q, x, n, y1, ldy, 0, m);
    run_matmul(tr, &q, x, n, y1, ldy, m, rows);
    /* tolerance relative to sum |w x| (the dequantized w: the formats agree exactly on it) */
    float *row = malloc((size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        ref->dequant_row(&q, r, row);
        for (int64_t i = 0; i < n; i++) {
            double mag = 0;
            for (int64_t c = 0; c < cols; c++) mag += fabs((double)row[c] * x[i * cols + c]);
            double tol = 2e-6 * mag + 1e-7 * (double)cols / 64.0 + 1e-30;
            double d = fabs((double)y0[i * ldy + r] - y1[i * ldy + r]);
            if (!(d <= tol))
                fail_msg("%s %s %lldx%lld n=%lld: y[%lld][%lld] %g vs %g", ref->name,
                         ampr__simd_name(level), (long long)rows, (long long)cols, (long long)n,
                         (long long)i, (long long)r, y1[i * ldy + r], y0[i * ldy + r]);
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = rows; r < ldy; r++) assert_true(y1[i * ldy + r] == -777.0f);
    /* Batched decode must give the tokens of serial decode: at the AVX-512
     * level each output is bit for bit the same for a token run alone and
     * in a batch, whatever the row split. */
    if (level == AMPR__SIMD_AVX512) {
        float *y2 = malloc((size_t)ldy * sizeof(float));
        for (int64_t i = 0; i < n; i++) {
            run_matmul(tr, &q, x + i * cols, 1, y2, ldy, 0, rows);
            for (int64_t r = 0; r < rows; r++)
                if (memcmp(&y2[r], &y1[i * ldy + r], sizeof(float)) != 0)
                    fail_msg("%s avx512 %lldx%lld n=%lld: y[%lld][%lld] %.9g alone, %.9g in "
                             "the batch", ref->name, (long long)rows, (long long)cols,
                             (long long)n, (long long)i, (long long)r, y2[r], y1[i * ldy + r]);
        }
        free(y2);
    }
    free(row);
    free(y0);
    free(y1);
    free(w);
    free(x);
    ampr__qmat_free(&q);
}

static void test_levels_match_scalar(void **state) {
    (void)state;
    static const int64_t rows_v[] = {1, 3, 5, 13, 64, 67};
    static const int64_t cols_any[] = {1, 7, 16, 33, 64, 100, 130, 257};
    static const int64_t cols_nf4[] = {1, 7, 16, 33, 64, 100, 128, 172, 257, 320};
    static const int64_t n_v[] = {1, 3, 17, 50};
    for (int l = 1; l <= (int)ampr__quant_simd_max(); l++)
        for (int t = 0; t < AMPR__Q_COUNT; t++) {
            /* NF4 at every shape too (blocks cross rows when cols % 64 != 0) */
            int nf4 = t == AMPR__Q_NF4 || t == AMPR__Q_NF4_DQ;
            const int64_t *cv = nf4 ? cols_nf4 : cols_any;
            size_t nc = nf4 ? AMPR__ARRAY_LEN(cols_nf4) : AMPR__ARRAY_LEN(cols_any);
            for (size_t a = 0; a < AMPR__ARRAY_LEN(rows_v); a++)
                for (size_t b = 0; b < nc; b++)
                    for (size_t c = 0; c < AMPR__ARRAY_LEN(n_v); c++)
                        check_level((ampr__qtype)t, (ampr__simd)l, rows_v[a], cv[b], n_v[c]);
        }
}

/* ---- NF4 with bf16 activations (config "nf4": {"activations": "bf16"}) ---------- */

static float bf16_round(float f) { /* to nearest even, as vcvtneps2bf16 (normal values) */
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* The bf16 kernel against an fp64 product of the bf16-rounded codes and
 * activations (cols % 64 == 0), or against the fp32 kernels (other shapes,
 * which it hands to them); within 2^-8 of the fp32 result everywhere; each
 * token alone bit for bit as in its batch. */
static void check_nf4_bf16(ampr__qtype t, int64_t rows, int64_t cols, int64_t n) {
    const ampr__qtraits *tr = ampr__qtraits_nf4_bf16(t);
    const ampr__qtraits *ref = ampr__qtraits_get_simd(t, AMPR__SIMD_SCALAR);
    float *w = rand_mat(rows * cols, 0, 0.05f);
    float *x = rand_mat(n * cols, 1, 1.0f);
    ampr__qmat q;
    quantize_or_fail(t, w, rows, cols, &q);
    int64_t ldy = rows + 3, m = rows / 3;
    float *y = malloc((size_t)(n * ldy) * sizeof(float));
    float *yf = malloc((size_t)(n * ldy) * sizeof(float));
    float *y1 = malloc((size_t)ldy * sizeof(float));
    for (int64_t i = 0; i < n * ldy; i++) y[i] = -777.0f;
    run_matmul(tr, &q, x, n, y, ldy, 0, m);
    run_matmul(tr, &q, x, n, y, ldy, m, rows);
    run_matmul(ref, &q, x, n, yf, ldy, 0, rows);
    const uint8_t *P = q.data;
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0, mag = 0;
            for (int64_t c = 0; c < cols; c++) {
                int64_t e = r * cols + c;
                uint8_t byte = P[e / 2];
                float code = ampr__nf4_code[(e & 1) ? byte & 15 : byte >> 4];
                float a = ampr__nf4_block_absmax(&q, e / 64);
                double xv = x[i * cols + c];
                if (cols % 64 == 0) {
                    double p = (double)bf16_round(code) * bf16_round(x[i * cols + c]) * a;
                    s += p;
                    mag += fabs(p);
                } else
                    mag += fabs((double)code * a * xv);
            }
            double got = y[i * ldy + r], tol = 2e-6 * mag + 1e-7 * (double)cols / 64.0 + 1e-30;
            double want = cols % 64 == 0 ? s : yf[i * ldy + r];
            if (!(fabs(got - want) <= tol))
                fail_msg("%s bf16 %lldx%lld n=%lld: y[%lld][%lld] %.9g, want %.9g", ref->name,
                         (long long)rows, (long long)cols, (long long)n, (long long)i,
                         (long long)r, got, want);
            if (!(fabs(got - yf[i * ldy + r]) <= mag / 256.0 + 1e-30))
                fail_msg("%s bf16 %lldx%lld: y[%lld][%lld] %.9g, fp32 %.9g, sum|wx| %g", ref->name,
                         (long long)rows, (long long)cols, (long long)i, (long long)r, got,
                         yf[i * ldy + r], mag);
        }
    for (int64_t i = 0; i < n; i++) {
        for (int64_t r = rows; r < ldy; r++) assert_true(y[i * ldy + r] == -777.0f);
        run_matmul(tr, &q, x + i * cols, 1, y1, ldy, 0, rows);
        for (int64_t r = 0; r < rows; r++)
            if (memcmp(&y1[r], &y[i * ldy + r], sizeof(float)) != 0)
                fail_msg("%s bf16 %lldx%lld n=%lld: y[%lld][%lld] %.9g alone, %.9g in the batch",
                         ref->name, (long long)rows, (long long)cols, (long long)n, (long long)i,
                         (long long)r, y1[r], y[i * ldy + r]);
    }
    free(y1);
    free(yf);
    free(y);
    free(w);
    free(x);
    ampr__qmat_free(&q);
}

static void test_nf4_bf16_activations(void **state) {
    (void)state;
    /* not NF4 -> no bf16 traits, on any CPU */
    assert_null(ampr__qtraits_nf4_bf16(AMPR__Q_INT8));
    if (!ampr__qtraits_nf4_bf16(AMPR__Q_NF4)) {
        assert_null(ampr__qtraits_nf4_bf16(AMPR__Q_NF4_DQ));
        skip(); /* this CPU (or AMPR_SIMD) has no AVX512_BF16 */
    }
    static const int64_t rows_v[] = {1, 3, 13, 64, 67};
    static const int64_t cols_v[] = {64, 128, 192, 320, 1024, 100, 172};
    static const int64_t n_v[] = {1, 2, 5, 17, 50};
    for (int t = AMPR__Q_NF4; t <= AMPR__Q_NF4_DQ; t++)
        for (size_t a = 0; a < AMPR__ARRAY_LEN(rows_v); a++)
            for (size_t b = 0; b < AMPR__ARRAY_LEN(cols_v); b++)
                for (size_t c = 0; c < AMPR__ARRAY_LEN(n_v); c++)
                    check_nf4_bf16((ampr__qtype)t, rows_v[a], cols_v[b], n_v[c]);
}

/* The scalar kernels against a plain fp64 product of the dequantized weights. */
static void test_scalar_matches_dequant(void **state) {
    (void)state;
    int64_t rows = 9, cols = 128, n = 4;
    float *w = rand_mat(rows * cols, 0, 0.05f);
    float *x = rand_mat(n * cols, 0, 1.0f);
    for (int t = 0; t < AMPR__Q_COUNT; t++) {
        ampr__qmat q;
        quantize_or_fail((ampr__qtype)t, w, rows, cols, &q);
        const ampr__qtraits *tr = ampr__qtraits_get_simd((ampr__qtype)t, AMPR__SIMD_SCALAR);
        float y[36], row[128];
        run_matmul(tr, &q, x, n, y, rows, 0, rows);
        for (int64_t r = 0; r < rows; r++) {
            tr->dequant_row(&q, r, row);
            for (int64_t i = 0; i < n; i++) {
                double s = 0, mag = 0, e = 0;
                for (int64_t c = 0; c < cols; c++) {
                    s += (double)row[c] * x[i * cols + c];
                    mag += fabs((double)row[c] * x[i * cols + c]);
                }
                /* INT8 also rounds the activations: up to half a step each */
                if (t == AMPR__Q_INT8) {
                    float amax = 0;
                    for (int64_t c = 0; c < cols; c++) amax = fmaxf(amax, fabsf(x[i * cols + c]));
                    for (int64_t c = 0; c < cols; c++) e += fabs(row[c]) * amax / 127.0 / 2.0;
                }
                assert_true(fabs(s - y[i * rows + r]) <= 1e-5 * mag + e + 1e-6);
            }
        }
        ampr__qmat_free(&q);
    }
    free(w);
    free(x);
}

static void test_names_and_dispatch(void **state) {
    (void)state;
    ampr__qtype t;
    assert_int_equal(ampr__qtype_from_name("nf4dq", &t), AMPR_OK);
    assert_int_equal(t, AMPR__Q_NF4_DQ);
    assert_int_equal(ampr__qtype_from_name("int8", &t), AMPR_OK);
    assert_int_equal(ampr__qtype_from_name("int3", &t), AMPR_ERR_INVALID_ARG);
    assert_null(ampr__qtraits_get(AMPR__Q_COUNT));
    assert_null(ampr__qtraits_get_simd(AMPR__Q_F16, AMPR__SIMD_COUNT));
    const char *s = ampr__quant_simd_name();
    assert_true(!strcmp(s, "scalar") || !strcmp(s, "avx2") || !strcmp(s, "avx512"));
    assert_true(ampr__quant_simd() <= ampr__quant_simd_max());
    print_message("simd: chosen %s, cpu max %s\n", s, ampr__simd_name(ampr__quant_simd_max()));
}

/* ---- SmoothQuant ------------------------------------------------------------------------ */

static double int8_rel_err(const float *w, const float *x, int64_t rows, int64_t cols, int64_t n) {
    ampr__qmat q;
    quantize_or_fail(AMPR__Q_INT8, w, rows, cols, &q);
    const ampr__qtraits *tr = ampr__qtraits_get(AMPR__Q_INT8);
    float *y = malloc((size_t)(n * rows) * sizeof(float));
    run_matmul(tr, &q, x, n, y, rows, 0, rows);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0;
            for (int64_t c = 0; c < cols; c++) s += (double)w[r * cols + c] * x[i * cols + c];
            num += (s - y[i * rows + r]) * (s - y[i * rows + r]);
            den += s * s;
        }
    free(y);
    ampr__qmat_free(&q);
    return sqrt(num / den);
}

static void test_smoothquant(void **state) {
    (void)state;
    int64_t rows = 64, cols = 256, n = 16;
    float *w = rand_mat(rows * cols, 0, 0.05f);
    float *x = rand_mat(n * cols, 0, 1.0f);
    for (int64_t i = 0; i < n; i++) /* activation outliers in a few channels, as in LLMs */
        for (int64_t c = 0; c < cols; c += 37) x[i * cols + c] *= 60.0f;
    double before = int8_rel_err(w, x, rows, cols, n);
    float amax[256], s[256];
    for (int64_t c = 0; c < cols; c++) {
        amax[c] = 0;
        for (int64_t i = 0; i < n; i++) amax[c] = fmaxf(amax[c], fabsf(x[i * cols + c]));
    }
    ampr__smooth_factors(amax, w, rows, cols, 0.5f, s);
    ampr__smooth_weights(w, rows, cols, s);
    ampr__smooth_act(x, n, cols, s);
    double after = int8_rel_err(w, x, rows, cols, n);
    print_message("smoothquant: int8 relative error %.4f%% -> %.4f%%\n", 100 * before, 100 * after);
    assert_true(after < before * 0.7);
    free(w);
    free(x);
}

/* ---- per-row vs per-group INT8 weight scales (a report) ------------------------------------- */

static double group_err(const float *w, int64_t rows, int64_t cols, int64_t g) {
    double num = 0, den = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += g) {
            const float *p = w + r * cols + c0;
            float amax = 0;
            for (int64_t c = 0; c < g; c++) amax = fmaxf(amax, fabsf(p[c]));
            float inv = amax > 0 ? 127.0f / amax : 0, sc = amax / 127.0f;
            for (int64_t c = 0; c < g; c++) {
                double e = p[c] - nearbyintf(p[c] * inv) * sc;
                num += e * e;
                den += (double)p[c] * p[c];
            }
        }
    return sqrt(num / den);
}

static void test_int8_group_report(void **state) {
    (void)state;
    int64_t rows = 256, cols = 2048;
    for (int heavy = 0; heavy < 2; heavy++) {
        float *w = rand_mat(rows * cols, heavy, 0.02f);
        double e_row = group_err(w, rows, cols, cols);
        double e32 = group_err(w, rows, cols, 32), e64 = group_err(w, rows, cols, 64),
               e128 = group_err(w, rows, cols, 128);
        print_message("int8 weight rel. RMS error (%s, %lldx%lld): per-row %.3f%%, group128 "
                      "%.3f%%, group64 %.3f%%, group32 %.3f%%\n",
                      heavy ? "Student-t(3)" : "Gaussian", (long long)rows, (long long)cols,
                      100 * e_row, 100 * e128, 100 * e64, 100 * e32);
        assert_true(e32 <= e_row && e_row < (heavy ? 0.05 : 0.01));
        free(w);
    }
}

/* ampr__quantize split over a pool (as ampr_open builds its tiers) gives the
 * same bytes as one thread, for every format and level, also where NF4
 * blocks span rows (the row ranges must then start on a block boundary) and
 * with an odd element count (the padding nibble). */
static void test_quantize_pool_matches_serial(void **state) {
    (void)state;
    static const int64_t shapes[][2] = {{67, 40}, {33, 203}, {257, 64}, {5, 7}, {129, 96}};
    ampr__pool *pool = NULL;
    ampr__err err = {0};
    assert_int_equal(ampr__pool_new(3, &pool, &err), AMPR_OK);
    for (size_t s = 0; s < AMPR__ARRAY_LEN(shapes); s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        float *w = rand_mat(rows * cols, 1, 0.05f);
        for (int lv = 0; lv < AMPR__SIMD_COUNT; lv++)
            for (int t = 0; t < AMPR__Q_COUNT; t++) {
                const ampr__qtraits *tr = ampr__qtraits_get_simd((ampr__qtype)t, (ampr__simd)lv);
                if (!tr) continue;
                ampr__qmat a, b;
                assert_int_equal(ampr__quantize(tr, &a, w, rows, cols, NULL, &err), AMPR_OK);
                assert_int_equal(ampr__quantize(tr, &b, w, rows, cols, pool, &err), AMPR_OK);
                assert_int_equal(a.type, b.type);
                assert_int_equal(a.data_bytes, b.data_bytes);
                assert_int_equal(a.n_scales, b.n_scales);
                assert_int_equal(a.extra_bytes, b.extra_bytes);
                if (memcmp(a.data, b.data, a.data_bytes) ||
                    (a.n_scales && memcmp(a.scales, b.scales, a.n_scales * sizeof(float))) ||
                    (a.extra_bytes && memcmp(a.extra, b.extra, a.extra_bytes)))
                    fail_msg("%s at level %d, %lld x %lld: pool result differs", tr->name, lv,
                             (long long)rows, (long long)cols);
                ampr__qmat_free(&a);
                ampr__qmat_free(&b);
            }
        free(w);
    }
    ampr__pool_free(pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nf4_code_table),
        cmocka_unit_test(test_nf4_hand_vector),
        cmocka_unit_test(test_nf4_any_shape),
        cmocka_unit_test(test_nf4_quantize_simd_matches_scalar),
        cmocka_unit_test(test_nf4_roundtrip),
        cmocka_unit_test(test_dynamic_map),
        cmocka_unit_test(test_nf4_double_quant),
        cmocka_unit_test(test_int8_roundtrip),
        cmocka_unit_test(test_int8_act_prepare_levels),
        cmocka_unit_test(test_int8_nonfinite),
        cmocka_unit_test(test_int8_act_rule),
        cmocka_unit_test(test_quantize_bit_exact),
        cmocka_unit_test(test_quantize_pool_matches_serial),
        cmocka_unit_test(test_scalar_matches_dequant),
        cmocka_unit_test(test_levels_match_scalar),
        cmocka_unit_test(test_nf4_bf16_activations),
        cmocka_unit_test(test_names_and_dispatch),
        cmocka_unit_test(test_smoothquant),
        cmocka_unit_test(test_int8_group_report),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
