/*
 * bench_quant.c -- microbenchmark of the matmul kernels: per format and SIMD
 * level, decode GEMV (n = 1) in GB/s of weight bytes read and prefill GEMM
 * (n tokens) in GFLOP/s, at the TinyLlama-1.1B shapes, on 1 thread and on 2
 * threads splitting the rows (as the forward pass does; the two threads meet
 * by spinning on atomics, as the library's pool does for short jobs), plus
 * "GEMV L2": 1 thread over the first rows of the matrix (<= 512 KiB), which
 * stay in cache, i.e. the kernel's arithmetic ceiling without memory stalls.
 *
 *   bench_quant [n_tokens (64)] [seconds per case (0.25)] [formats (all), e.g. nf4,int8]
 *   bench_quant quantize [rows (32000)] [cols (2048)]   time quantize() per format
 *   bench_quant logits                                  the per-token logits statistics
 *       (fallback/logits.h: argmax, entropy sums, KL) per SIMD level at vocab 32000 and
 *       128256: host work every decode step does, however fast the device is
 *
 * It lives in tests/bench/ because the Makefile links every C file directly in tests/ other
 * than test_*.c into each test binary. Build:
 *   gcc -std=c11 -O2 -Iinclude -Ilib -pthread tests/bench/bench_quant.c build/libampr.a \
 *       -ljansson -lpcre2-8 -lm -o bench_quant
 *
 * The GEMV cycles through enough copies of the matrix (>= 160 MB) that the
 * weights come from DRAM, not the 32 MB L3. INT8 times include act_prepare.
 * Where the CPU has AVX512_BF16, NF4 gets one more row, "bf16act": the
 * kernel of the config's "nf4": {"activations": "bf16"}.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fallback/logits.h"
#include "quant/quant.h"
#include "sampler/sampler.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct job {
    const ampr__qtraits *tr;
    const ampr__qmat *w;
    const float *x;
    const void *act;
    int64_t n;
    float *y;
    int64_t r0, r1;
} job;

static job g_job2; /* the second thread's half */
static _Atomic long g_posted, g_done; /* jobs handed to the worker / finished by it */
static _Atomic int g_quit;

static void *worker(void *arg) {
    (void)arg;
    for (long seen = 0;; seen++) {
        while (atomic_load(&g_posted) == seen) {
        }
        if (atomic_load(&g_quit)) return NULL;
        job *j = &g_job2;
        j->tr->matmul(j->w, j->x, j->act, j->n, j->y, j->w->rows, j->r0, j->r1);
        atomic_fetch_add(&g_done, 1);
    }
}

/* One matmul with `threads` threads (the caller is one of them). */
static void matmul(const ampr__qtraits *tr, const ampr__qmat *w, const float *x, void *act,
                   int64_t n, float *y, int threads) {
    if (tr->act_prepare) tr->act_prepare(x, n, w->cols, act);
    if (threads == 1) {
        tr->matmul(w, x, act, n, y, w->rows, 0, w->rows);
        return;
    }
    int64_t mid = (w->rows / 2 + 3) & ~(int64_t)3;
    g_job2 = (job){tr, w, x, act, n, y, mid, w->rows};
    long done = atomic_load(&g_done);
    atomic_fetch_add(&g_posted, 1);
    tr->matmul(w, x, act, n, y, w->rows, 0, mid);
    while (atomic_load(&g_done) == done) {
    }
}

static void copy_qmat(ampr__qmat *d, const ampr__qmat *s) {
    *d = *s;
    d->data = malloc(s->data_bytes);
    memcpy(d->data, s->data, s->data_bytes);
    if (s->scales) {
        d->scales = malloc(s->n_scales * sizeof(float));
        memcpy(d->scales, s->scales, s->n_scales * sizeof(float));
    }
    if (s->extra) {
        d->extra = malloc(s->extra_bytes);
        memcpy(d->extra, s->extra, s->extra_bytes);
    }
}

/* quantize() of one rows x cols fp32 matrix per format (the dispatched level). */
static int bench_quantize(int64_t rows, int64_t cols) {
    float *src = malloc((size_t)(rows * cols) * sizeof(float));
    if (!src) return 1;
    for (int64_t i = 0; i < rows * cols; i++) src[i] = (float)sin((double)i * 0.7) * 0.05f;
    printf("quantize %lldx%lld (simd %s)\n", (long long)rows, (long long)cols,
           ampr__quant_simd_name());
    for (int t = 0; t < AMPR__Q_COUNT; t++) {
        const ampr__qtraits *tr = ampr__qtraits_get((ampr__qtype)t);
        double best = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            ampr__qmat q = {0};
            ampr__err err = {0};
            double t0 = now_s();
            ampr_status st = ampr__quantize(tr, &q, src, rows, cols, NULL, &err);
            double el = now_s() - t0;
            ampr__qmat_free(&q);
            if (st) break;
            if (el < best) best = el;
        }
        printf("%-6s %8.3f s  (%.2f GB/s of fp32 input)\n", tr->name, best,
               (double)(rows * cols) * 4.0 / best / 1e9);
        fflush(stdout);
    }
    free(src);
    return 0;
}

static int wanted(const char *list, const char *name) {
    if (!list) return 1;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return 1;
    return 0;
}

/* Microseconds per call of each logits statistic, best of 5 rounds of 50. */
static int bench_logits(void) {
    static const int32_t vocab[] = {32000, 128256};
    printf("logits statistics, us per row (best of 5 x 50 calls)\n");
    printf("%-8s %-7s %10s %10s %10s\n", "vocab", "simd", "argmax", "entropy", "kl");
    for (size_t v = 0; v < sizeof vocab / sizeof *vocab; v++) {
        int32_t n = vocab[v];
        float *p = malloc((size_t)n * sizeof *p), *q = malloc((size_t)n * sizeof *q);
        for (int32_t i = 0; i < n; i++) {
            p[i] = (float)(8.0 * sin(0.37 * i) * cos(0.011 * i));
            q[i] = p[i] + (float)(0.3 * sin(1.3 * i));
        }
        for (int l = 0; l <= (int)ampr__quant_simd_max() && l <= (int)AMPR__SIMD_AVX2; l++) {
            double best[3] = {1e30, 1e30, 1e30}, sink = 0;
            for (int round = 0; round < 5; round++)
                for (int f = 0; f < 3; f++) {
                    double t0 = now_s();
                    for (int k = 0; k < 50; k++) {
                        ampr__logit_stats st;
                        if (f == 0) sink += l ? ampr__argmax_avx2(p, n) : ampr__argmax_scalar(p, n);
                        else if (f == 1) {
                            if (l) ampr__logit_stats_avx2(p, n, &st);
                            else ampr__logit_stats_scalar(p, n, &st);
                            sink += st.z;
                        } else sink += l ? ampr__kl_avx2(p, q, n) : ampr__kl_scalar(p, q, n);
                    }
                    double us = (now_s() - t0) / 50 * 1e6;
                    if (us < best[f]) best[f] = us;
                }
            printf("%-8d %-7s %10.1f %10.1f %10.1f%s\n", n, ampr__simd_name((ampr__simd)l), best[0],
                   best[1], best[2], sink == 0.5 ? " " : "");
        }
        /* the sampler: one draw (the row copied back each time: the draw
         * may change it), default top-k 40 and a nucleus without top-k */
        static const struct { float temp; int32_t k; float p; } cfg[] = {{0.8f, 40, 0.95f},
                                                                        {0.8f, 0, 0.95f},
                                                                        {0.8f, 0, 1.0f}};
        for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
            ampr__sampler smp;
            ampr__err err = {0};
            if (ampr__sampler_init(&smp, n, cfg[c].temp, cfg[c].k, cfg[c].p, 1.0f, 64, 1, &err)) return 1;
            double best = 1e30, sink = 0;
            for (int round = 0; round < 5; round++) {
                double t0 = now_s();
                for (int k = 0; k < 10; k++) {
                    memcpy(q, p, (size_t)n * sizeof *p);
                    sink += ampr__sample(&smp, q, NULL, 0);
                }
                double us = (now_s() - t0) / 10 * 1e6;
                if (us < best) best = us;
            }
            printf("%-8d sample temp %.1f top_k %2d top_p %.2f: %10.1f us%s\n", n, cfg[c].temp, cfg[c].k,
                   cfg[c].p, best, sink == 0.5 ? " " : "");
            ampr__sampler_free(&smp);
        }
        /* the default draw in two halves: the candidate list of a row (what
         * a GPU makes on the device, the CPU backend on the host), and the
         * draw from it (the host's whole share when a GPU sends the list) */
        {
            ampr__sampler smp;
            ampr__err err = {0};
            if (ampr__sampler_init(&smp, n, 0.8f, 40, 0.95f, 1.0f, 64, 1, &err)) return 1;
            float vals[AMPR__CANDS_MAX];
            int32_t ids[AMPR__CANDS_MAX];
            int32_t m = 40 + AMPR__CAND_SLACK;
            double best[2] = {1e30, 1e30}, sink = 0;
            for (int round = 0; round < 5; round++) {
                double t0 = now_s();
                for (int k = 0; k < 10; k++) sink += ampr__topk_cands(p, n, m, 0.8f, 40, vals, ids);
                double t1 = now_s();
                for (int k = 0; k < 10; k++) sink += ampr__sample_cands(&smp, vals, ids, m, 0);
                double t2 = now_s();
                best[0] = fmin(best[0], (t1 - t0) / 10 * 1e6);
                best[1] = fmin(best[1], (t2 - t1) / 10 * 1e6);
            }
            printf("%-8d the same default draw as a %d-candidate list: making it %.1f us, drawing from it "
                   "%.2f us%s\n", n, m, best[0], best[1], sink == 0.5 ? " " : "");
            ampr__sampler_free(&smp);
        }
        /* a nucleus without top-k the same way: the 256-candidate list and
         * the row's mass, and the draw from them, on the row above (flat
         * for T 0.8: the nucleus is longer than any list) and on a peaked
         * one (an LM's typical row: 24 tokens far above the rest); the
         * whole-row draw from the peaked row beside them */
        float *pk = malloc((size_t)n * sizeof *pk), *row = malloc((size_t)n * sizeof *row);
        for (int32_t i = 0; i < n; i++) pk[i] = 0.3f * p[i];
        for (int32_t j = 0; j < 24; j++) pk[(j * 7919) % n] = 12.0f - 0.25f * (float)j;
        for (int peaked = 0; peaked < 2; peaked++) {
            const float *x = peaked ? pk : p;
            ampr__sampler smp;
            ampr__err err = {0};
            if (ampr__sampler_init(&smp, n, 0.8f, 0, 0.95f, 1.0f, 64, 1, &err)) return 1;
            float vals[AMPR__CANDS_MAX];
            int32_t ids[AMPR__CANDS_MAX];
            double best[3] = {1e30, 1e30, 1e30}, sink = 0, mass = 0;
            int decided = 0;
            for (int round = 0; round < 5; round++) {
                double t0 = now_s();
                for (int k = 0; k < 10; k++)
                    decided = ampr__nucleus_cands(x, n, AMPR__CANDS_MAX, 0.8f, 0.95f, vals, ids, &mass, q);
                double t1 = now_s();
                for (int k = 0; k < 10 && decided; k++) sink += ampr__sample_cands(&smp, vals, ids, AMPR__CANDS_MAX, mass);
                double t2 = now_s();
                for (int k = 0; k < 10; k++) {
                    memcpy(row, x, (size_t)n * sizeof *row);
                    sink += ampr__sample(&smp, row, NULL, 0);
                }
                double t3 = now_s();
                best[0] = fmin(best[0], (t1 - t0) / 10 * 1e6);
                best[1] = fmin(best[1], (t2 - t1) / 10 * 1e6);
                best[2] = fmin(best[2], (t3 - t2) / 10 * 1e6);
            }
            printf("%-8d nucleus draw, %s row: as a %d-candidate list and the mass %.1f us + drawing from them "
                   "%.2f us (%s); from the row %.1f us%s\n", n, peaked ? "peaked" : "flat", AMPR__CANDS_MAX, best[0],
                   best[1], decided ? "decided" : "undecided: the row follows", best[2], sink == 0.5 ? " " : "");
            ampr__sampler_free(&smp);
        }
        free(pk);
        free(row);
        free(p);
        free(q);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "logits")) return bench_logits();
    if (argc > 1 && !strcmp(argv[1], "quantize"))
        return bench_quantize(argc > 2 ? atoll(argv[2]) : 32000, argc > 3 ? atoll(argv[3]) : 2048);
    const char *formats = argc > 3 ? argv[3] : NULL;
    int64_t ntok = argc > 1 ? atoll(argv[1]) : 64;
    double secs = argc > 2 ? atof(argv[2]) : 0.25;
    static const int64_t shapes[][2] = {{2048, 2048}, {8192, 2048}, {2048, 8192}};
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    printf("cpu max simd: %s; GEMV = n 1 (GB/s of weights), GEMM = n %lld (GFLOP/s)\n",
           ampr__simd_name(ampr__quant_simd_max()), (long long)ntok);
    printf("%-6s %-7s %-11s %10s %10s %10s %10s %10s\n", "format", "simd", "rows x cols",
           "GEMV 1T", "GEMV 2T", "GEMV L2", "GEMM 1T", "GEMM 2T");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        float *src = malloc((size_t)(rows * cols) * sizeof(float));
        for (int64_t i = 0; i < rows * cols; i++) src[i] = (float)sin((double)i * 0.7) * 0.05f;
        float *x = malloc((size_t)(ntok * cols) * sizeof(float));
        for (int64_t i = 0; i < ntok * cols; i++) x[i] = (float)cos((double)i * 0.3);
        float *y = malloc((size_t)(ntok * rows) * sizeof(float));
        for (int t = 0; t < AMPR__Q_COUNT; t++) {
            if (!wanted(formats, ampr__qtraits_get((ampr__qtype)t)->name)) continue;
            ampr__qmat q = {0};
            ampr__err err = {0};
            if (ampr__quantize(ampr__qtraits_get((ampr__qtype)t), &q, src, rows, cols, NULL, &err)) continue;
            size_t bytes = ampr__qmat_bytes(&q);
            int ncopies = (int)((160u << 20) / bytes) + 1;
            if (ncopies > 64) ncopies = 64;
            ampr__qmat *cp = calloc((size_t)ncopies, sizeof *cp);
            cp[0] = q;
            for (int c = 1; c < ncopies; c++) copy_qmat(&cp[c], &q);
            /* one level past the CPU's best: NF4 with bf16 activations (kern_avx512bf16.c) */
            for (int l = 0; l <= (int)ampr__quant_simd_max() + 1; l++) {
                int bf = l > (int)ampr__quant_simd_max();
                const ampr__qtraits *tr = bf ? ampr__qtraits_nf4_bf16((ampr__qtype)t)
                                             : ampr__qtraits_get_simd((ampr__qtype)t, (ampr__simd)l);
                if (!tr) continue;
                size_t ab = tr->act_bytes(ntok, cols);
                void *act = ab ? malloc(ab) : NULL;
                double res[4];
                /* GEMV L2: the first rows (multiple of 16, <= 512 KiB) again and again */
                int64_t l2_rows = (int64_t)((512u << 10) / (bytes / (size_t)rows)) & ~(int64_t)15;
                if (l2_rows < 16) l2_rows = 16;
                if (l2_rows > rows) l2_rows = rows;
                double l2, t_l2 = now_s();
                long reps_l2 = 0;
                do {
                    if (tr->act_prepare) tr->act_prepare(x, 1, cols, act);
                    tr->matmul(&q, x, act, 1, y, rows, 0, l2_rows);
                    reps_l2++;
                    l2 = now_s() - t_l2;
                } while (l2 < secs);
                l2 = (double)bytes * (double)l2_rows / (double)rows * (double)reps_l2 / l2 / 1e9;
                for (int k = 0; k < 4; k++) {
                    int gemm = k >= 2, threads = (k & 1) + 1;
                    int64_t n = gemm ? ntok : 1;
                    double t0 = now_s(), el;
                    long reps = 0;
                    do {
                        const ampr__qmat *w = &cp[gemm ? 0 : reps % ncopies];
                        matmul(tr, w, x, act, n, y, threads);
                        reps++;
                        el = now_s() - t0;
                    } while (el < secs);
                    res[k] = gemm ? 2.0 * (double)rows * (double)cols * (double)n * (double)reps / el / 1e9
                                  : (double)bytes * (double)reps / el / 1e9;
                }
                printf("%-6s %-7s %5lldx%-5lld %10.2f %10.2f %10.2f %10.2f %10.2f\n", tr->name,
                       bf ? "bf16act" : ampr__simd_name((ampr__simd)l), (long long)rows, (long long)cols, res[0],
                       res[1], l2, res[2], res[3]);
                fflush(stdout);
                free(act);
            }
            for (int c = 0; c < ncopies; c++) ampr__qmat_free(&cp[c]);
            free(cp);
        }
        free(src);
        free(x);
        free(y);
    }
    atomic_store(&g_quit, 1);
    atomic_fetch_add(&g_posted, 1);
    pthread_join(th, NULL);
    return 0;
}
