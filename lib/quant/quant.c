/*
 * quant.c -- the traits tables (one per SIMD level), the run-time choice of
 * level, and the helpers every format shares.
 *
 * The level is chosen once per process (pthread_once): the best of
 * avx512 > avx2 > scalar the CPU supports, lowered (never raised) by the
 * environment variable AMPR_SIMD=scalar|avx2|avx512. The scalar kernels are
 * the reference; the tests run every level the CPU has against them.
 */
#include "quant_impl.h"

#include <pthread.h>
#include <stdlib.h>
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif

static size_t no_act_bytes(int64_t n, int64_t cols) {
    (void)n;
    (void)cols;
    return 0;
}

/* NF4 prepares activations only at the AVX-512 level (x permuted to the lane
 * order of its kernel). */
#define NF4_AB_scalar no_act_bytes
#define NF4_AP_scalar NULL
#define NF4_AB_avx2 no_act_bytes
#define NF4_AP_avx2 NULL
#define NF4_AB_avx512 ampr__nf4_act_bytes
#define NF4_AP_avx512 ampr__nf4_act_prepare_avx512

#define ROW(T, NAME, BLOCK, AL, FI, FN, DQ, AB, AP, MM) \
    [T] = {T, NAME, BLOCK, AL, FI, FN, DQ, AB, AP, MM}

#define TABLE(SFX)                                                                          \
    {                                                                                       \
        ROW(AMPR__Q_F32, "f32", 0, ampr__f32_alloc, ampr__f32_fill, NULL,                   \
            ampr__f32_dequant_row, no_act_bytes, NULL, ampr__f32_matmul_##SFX),             \
        ROW(AMPR__Q_F16, "fp16", 0, ampr__f16_alloc, ampr__half_fill, NULL,                 \
            ampr__f16_dequant_row, no_act_bytes, NULL, ampr__f16_matmul_##SFX),             \
        ROW(AMPR__Q_BF16, "bf16", 0, ampr__bf16_alloc, ampr__half_fill, NULL,               \
            ampr__bf16_dequant_row, no_act_bytes, NULL, ampr__bf16_matmul_##SFX),           \
        ROW(AMPR__Q_INT8, "int8", -1, ampr__int8_alloc, ampr__int8_fill, NULL,              \
            ampr__int8_dequant_row, ampr__int8_act_bytes, ampr__int8_act_prepare_##SFX,     \
            ampr__int8_matmul_##SFX),                                                       \
        ROW(AMPR__Q_NF4, "nf4", 64, ampr__nf4_alloc_checked, ampr__nf4_fill, NULL,          \
            ampr__nf4_dequant_row, NF4_AB_##SFX, NF4_AP_##SFX, ampr__nf4_matmul_##SFX),     \
        ROW(AMPR__Q_NF4_DQ, "nf4dq", 64, ampr__nf4_alloc_checked, ampr__nf4_fill,           \
            ampr__nf4dq_from_nf4, ampr__nf4_dequant_row, NF4_AB_##SFX, NF4_AP_##SFX,        \
            ampr__nf4_matmul_##SFX),                                                        \
    }

static const ampr__qtraits k_traits[AMPR__SIMD_COUNT][AMPR__Q_COUNT] = {
    [AMPR__SIMD_SCALAR] = TABLE(scalar),
    [AMPR__SIMD_AVX2] = TABLE(avx2),
    [AMPR__SIMD_AVX512] = TABLE(avx512),
};

/* ---- the run-time choice ------------------------------------------------------ */

static ampr__simd g_max = AMPR__SIMD_SCALAR, g_level = AMPR__SIMD_SCALAR;
static int g_bf16; /* AVX512_BF16 (with the AVX-512 level) */
/* NF4 and NF4_DQ with bf16 activations: their AVX-512 rows (the format
 * functions) with the activation kernels of kern_avx512bf16.c; set up once,
 * with the level, when g_bf16 */
static ampr__qtraits g_nf4_bf16[2];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
/* F16C from CPUID leaf 1 (clang 14's __builtin_cpu_supports does not know "f16c"). */
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
/* AVX512_BF16: CPUID leaf 7, subleaf 1, EAX bit 5. */
static int cpu_has_avx512bf16(void) {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
}
#endif

static void simd_init(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               cpu_has_f16c();
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
    g_max = avx512 ? AMPR__SIMD_AVX512 : avx2 ? AMPR__SIMD_AVX2 : AMPR__SIMD_SCALAR;
    g_bf16 = avx512 && cpu_has_avx512bf16();
#endif
    for (int i = 0; g_bf16 && i < 2; i++) {
        ampr__qtraits *q = &g_nf4_bf16[i];
        *q = k_traits[AMPR__SIMD_AVX512][AMPR__Q_NF4 + i];
        q->act_bytes = ampr__nf4_act_bytes_bf16;
        q->act_prepare = ampr__nf4_act_prepare_bf16;
        q->matmul = ampr__nf4_matmul_bf16;
    }
    g_level = g_max;
    const char *env = getenv("AMPR_SIMD");
    if (env)
        for (int l = 0; l < AMPR__SIMD_COUNT; l++)
            if (!strcmp(env, ampr__simd_name((ampr__simd)l)) && l < (int)g_level)
                g_level = (ampr__simd)l;
}

ampr__simd ampr__quant_simd(void) {
    pthread_once(&g_once, simd_init);
    return g_level;
}

ampr__simd ampr__quant_simd_max(void) {
    pthread_once(&g_once, simd_init);
    return g_max;
}

const char *ampr__simd_name(ampr__simd level) {
    switch (level) {
    case AMPR__SIMD_SCALAR: return "scalar";
    case AMPR__SIMD_AVX2: return "avx2";
    case AMPR__SIMD_AVX512: return "avx512";
    default: return "?";
    }
}

const char *ampr__quant_simd_name(void) { return ampr__simd_name(ampr__quant_simd()); }

const ampr__qtraits *ampr__qtraits_get_simd(ampr__qtype t, ampr__simd level) {
    if ((int)t < 0 || t >= AMPR__Q_COUNT || (int)level < 0 || level > ampr__quant_simd_max())
        return NULL;
    return &k_traits[level][t];
}

const ampr__qtraits *ampr__qtraits_get(ampr__qtype t) {
    return ampr__qtraits_get_simd(t, ampr__quant_simd());
}

const ampr__qtraits *ampr__qtraits_nf4_bf16(ampr__qtype t) {
    if (ampr__quant_simd() < AMPR__SIMD_AVX512 || !g_bf16) return NULL;
    if (t != AMPR__Q_NF4 && t != AMPR__Q_NF4_DQ) return NULL;
    return &g_nf4_bf16[t - AMPR__Q_NF4];
}

ampr_status ampr__qtype_from_name(const char *name, ampr__qtype *out) {
    if (!name || !out) return AMPR_ERR_INVALID_ARG;
    for (int t = 0; t < AMPR__Q_COUNT; t++)
        if (!strcmp(k_traits[0][t].name, name)) {
            *out = (ampr__qtype)t;
            return AMPR_OK;
        }
    return AMPR_ERR_INVALID_ARG;
}

size_t ampr__qmat_bytes(const ampr__qmat *m) {
    return m->data_bytes + m->n_scales * sizeof(float) + m->extra_bytes;
}

void ampr__qmat_drop_data(ampr__qmat *m) {
    ampr__free(m->data);
    ampr__free(m->scales);
    ampr__free(m->extra);
    m->data = NULL;
    m->scales = NULL;
    m->extra = NULL;
}

void ampr__qmat_free(ampr__qmat *m) {
    if (!m) return;
    ampr__qmat_drop_data(m);
    memset(m, 0, sizeof *m);
}

/* ---- quantizing a whole matrix, rows split over a pool ------------------------ */

typedef struct fill_job {
    const ampr__qtraits *qt;
    ampr__qmat *d;
    const float *src;
    int64_t units, align; /* rows come in units of align rows (the last may be short) */
} fill_job;

static void fill_task(void *arg, int i, int n) {
    const fill_job *j = arg;
    int64_t r0 = j->units * i / n * j->align;
    int64_t r1 = AMPR__MIN(j->d->rows, j->units * (i + 1) / n * j->align);
    if (r0 < r1) j->qt->fill(j->d, j->src, r0, r1);
}

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

ampr_status ampr__quantize(const ampr__qtraits *qt, ampr__qmat *dst, const float *src,
                           int64_t rows, int64_t cols, ampr__pool *pool, ampr__err *err) {
    memset(dst, 0, sizeof *dst);
    AMPR__TRY(qt->alloc(dst, rows, cols, err));
    /* blocked formats run their blocks over the flattened matrix: a range of
     * rows must start on a block boundary */
    int64_t align = qt->block > 0 && cols > 0 ? qt->block / gcd64(cols, qt->block) : 1;
    fill_job j = {qt, dst, src, (rows + align - 1) / align, align};
    /* a few ranges per thread, so that a slow one (page faults) evens out */
    int64_t tasks = pool ? 4 * (int64_t)ampr__pool_size(pool) : 1;
    if (tasks > j.units) tasks = j.units;
    if (tasks > 1)
        ampr__pool_run(pool, (int)tasks, fill_task, &j);
    else if (j.units > 0)
        fill_task(&j, 0, 1);
    if (qt->finish) {
        ampr_status st = qt->finish(dst, err);
        if (st != AMPR_OK) {
            ampr__qmat_free(dst);
            return st;
        }
    }
    return AMPR_OK;
}
