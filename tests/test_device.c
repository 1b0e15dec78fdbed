/*
 * test_device.c -- the CUDA backend itself, where a device is present: a GPU,
 * or the CPU emulation of CUDA (`make check-emu`, tests/emu). Skipped where
 * "device": "cuda" does not open (no GPU, or a build without CUDA).
 *
 * - device and CPU contexts give the same greedy text on each tier;
 * - requests on four threads at once (batched decode steps on the device) give
 *   the texts they give one at a time, also with two ranks on GPU 0 whose
 *   passes replay CUDA graphs (AMPR_CUDA_TP_GRAPHS) and without them;
 * - a device allocation that fails inside a request (injected through the
 *   emulation's hook, so only under check-emu) fails that request with
 *   AMPR_ERR_NOMEM and a message naming cudaMalloc, and nothing else: the
 *   same context then gives the text a fresh context gives, and closing it
 *   frees every device allocation. Each allocation a request makes is failed
 *   in turn, until the request makes no more;
 * - one rank per process ("tp_rank" / "tp_id"), here two ranks on two threads
 *   (NCCL allows several in one process; the emulation's communicators meet
 *   in a file whatever the process) with a GPU each: each rank's greedy text
 *   is the CPU's tp 2 text, and closing both frees every device allocation;
 *   a rank whose request fails on its own (an injected device allocation)
 *   aborts the group, so the other's request fails too rather than waiting,
 *   and both ranks' next requests fail at once; a rank alone fails its open
 *   at its "tp_timeout_ms", and an open whose progress callback stops it
 *   while it waits for the others is cancelled.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"

/* tests/emu/cuda_emu.cc; NULL in every other build */
extern void ampr_emu_fail_alloc_in(long n) __attribute__((weak));
extern long ampr_emu_live_allocs(void) __attribute__((weak));

#define TIERS "\"tiers\": [\"fp16\", \"int8\", \"nf4\"]"
/* a lower tier under the fallback's checks keeps a ring of rows on the device */
#define CHECKS "\"fallback\": {\"check_every\": 4, \"check_window\": 8, \"kl_max\": 0.1}"

static const char *model(void) { return tu_shared("models/stories260K/stories260K.gguf"); }

/* A device context, or NULL (and the test skips) where none opens. */
static ampr_ctx *open_device(const char *path, const char *config) {
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(path, config, &ctx);
    if (st == AMPR_ERR_NO_DEVICE || st == AMPR_ERR_UNSUPPORTED) {
        ampr_close(ctx);
        return NULL;
    }
    assert_int_equal(st, AMPR_OK);
    return ctx;
}

static void test_device_matches_cpu(void **state) {
    (void)state;
    const char *path = model();
    if (!path) skip();
    ampr_ctx *dev = open_device(path, "{" TIERS ", \"device\": \"cuda\"}");
    if (!dev) skip();
    ampr_ctx *cpu = tu_open_ok(path, "{" TIERS ", \"device\": \"cpu\"}");
    for (int t = AMPR_TIER_FP16; t <= AMPR_TIER_NF4; t++) {
        char *a = tu_greedy_text(cpu, t, 24), *b = tu_greedy_text(dev, t, 24);
        assert_string_equal(a, b);
        free(a);
        free(b);
    }
    ampr_close(cpu);
    ampr_close(dev);
}

/* nf4 under checks, sampled with a repetition penalty: the request that uses
 * the most device buffers (lists, penalties, a ring) */
static ampr_status request(ampr_ctx *ctx, char **text, char *msg, size_t msg_len) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = AMPR_TIER_NF4;
    p.max_tokens = 16;
    p.temperature = 0.8f;
    p.repetition_penalty = 1.2f;
    p.seed = 3;
    ampr_result *r = NULL;
    ampr_status st = ampr_generate(ctx, "Once upon a time", AMPR_NUL_TERMINATED, &p, &r);
    *text = st == AMPR_OK ? strdup(r->text) : NULL;
    snprintf(msg, msg_len, "%s", ampr_errmsg(ctx));
    ampr_result_free(r);
    return st;
}

/* one request per thread: a tier and a seed each, sampled (lists on the device) */
typedef struct {
    ampr_ctx *ctx;
    int tier;
    uint64_t seed;
    char *text;
    ampr_status st;
} job;

static void *run_job(void *arg) {
    job *j = (job *)arg;
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = (ampr_tier)j->tier;
    p.max_tokens = 20;
    p.seed = j->seed;
    p.fallback = 0;
    ampr_result *r = NULL;
    j->st = ampr_generate(j->ctx, "Once upon a time", AMPR_NUL_TERMINATED, &p, &r);
    j->text = j->st == AMPR_OK ? strdup(r->text) : NULL;
    ampr_result_free(r);
    return NULL;
}

/* Requests on N threads give the texts they give one at a time. */
static void concurrent_case(const char *config) {
    const char *path = model();
    if (!path) skip();
    ampr_ctx *ctx = open_device(path, config);
    if (!ctx) skip();
    enum { N = 4 };
    job serial[N], par[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        serial[i] = (job){ctx, i % 2 ? AMPR_TIER_NF4 : AMPR_TIER_FP16, (uint64_t)(11 + i), NULL, AMPR_OK};
        run_job(&serial[i]);
        assert_int_equal(serial[i].st, AMPR_OK);
    }
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            par[i] = serial[i];
            par[i].text = NULL;
            assert_int_equal(pthread_create(&th[i], NULL, run_job, &par[i]), 0);
        }
        for (int i = 0; i < N; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(par[i].st, AMPR_OK);
            assert_string_equal(par[i].text, serial[i].text);
            free(par[i].text);
        }
    }
    for (int i = 0; i < N; i++) free(serial[i].text);
    ampr_close(ctx);
}

static void test_concurrent_requests(void **state) {
    (void)state;
    concurrent_case("{" TIERS ", \"device\": \"cuda\"}");
}

/* Two ranks on GPU 0 with their segments replayed from CUDA graphs (the
 * default, AMPR_CUDA_TP_GRAPHS): decode batches of several sequences (a row
 * map) and single ones, captured and replayed; then eager
 * (AMPR_CUDA_TP_GRAPHS=0, read when the contexts open) */
static void test_concurrent_requests_tp_graphs(void **state) {
    (void)state;
    concurrent_case("{" TIERS ", \"device\": \"cuda\", \"tp_size\": 2, \"gpus\": [0, 0]}");
    assert_int_equal(setenv("AMPR_CUDA_TP_GRAPHS", "0", 1), 0);
    concurrent_case("{" TIERS ", \"device\": \"cuda\", \"tp_size\": 2, \"gpus\": [0, 0]}");
    unsetenv("AMPR_CUDA_TP_GRAPHS");
}

static void test_alloc_failure_in_request(void **state) {
    (void)state;
    const char *path = model();
    if (!path || !ampr_emu_fail_alloc_in || !ampr_emu_live_allocs) skip();
    const char *config = "{" TIERS ", \"device\": \"cuda\", " CHECKS "}";
    long live0 = ampr_emu_live_allocs();
    ampr_ctx *ctx = open_device(path, config);
    if (!ctx) skip();
    char msg[512], *ref = NULL;
    assert_int_equal(request(ctx, &ref, msg, sizeof msg), AMPR_OK);
    ampr_close(ctx);
    assert_int_equal(ampr_emu_live_allocs(), live0);

    int failed = 0, k;
    for (k = 1; k <= 400; k++) {
        ctx = open_device(path, config);
        assert_non_null(ctx);
        char *text = NULL;
        ampr_emu_fail_alloc_in(k);
        ampr_status st = request(ctx, &text, msg, sizeof msg);
        ampr_emu_fail_alloc_in(0);
        if (st == AMPR_OK) { /* the request made fewer than k allocations */
            assert_string_equal(text, ref);
            free(text);
            ampr_close(ctx);
            break;
        }
        assert_int_equal(st, AMPR_ERR_NOMEM);
        assert_non_null(strstr(msg, "cudaMalloc"));
        failed++;
        /* the context goes on: the same request gives the reference text */
        char msg1[512];
        snprintf(msg1, sizeof msg1, "%s", msg);
        st = request(ctx, &text, msg, sizeof msg);
        if (st != AMPR_OK)
            printf("allocation %d: after '%s' the next request failed: %s\n", k, msg1, msg);
        assert_int_equal(st, AMPR_OK);
        assert_string_equal(text, ref);
        free(text);
        ampr_close(ctx);
        assert_int_equal(ampr_emu_live_allocs(), live0);
    }
    assert_true(k <= 400);
    assert_true(failed > 0); /* a first request allocates on the device */
    printf("device allocations failed inside the first request: %d, each recovered\n", failed);
    free(ref);
}

/* ---- one rank per process ---- */

typedef struct {
    const char *path;
    char cfg[1024];
    ampr_open_params *params; /* or NULL */
    ampr_ctx *ctx;            /* rank_open's, for rank_gen */
    ampr_status open_st, gen_st, first_st; /* first_st: rank_gen_retry's first request */
    char msg[512];
    char *text;
    double open_ms;
} rank_job;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A rank's open (j->ctx; NULL after a failure), its greedy fp16 text (as
 * tu_greedy_text's: j->text, or j->msg), both, all three with the close. No
 * cmocka asserts: they run off the main thread. */
static void *rank_open(void *arg) {
    rank_job *j = (rank_job *)arg;
    double t0 = now_ms();
    j->open_st = ampr_open_ex(j->path, j->cfg, j->params, &j->ctx);
    j->open_ms = now_ms() - t0;
    snprintf(j->msg, sizeof j->msg, "%s", ampr_errmsg(j->ctx));
    if (j->open_st != AMPR_OK) {
        ampr_close(j->ctx);
        j->ctx = NULL;
    }
    return NULL;
}

static void *rank_gen(void *arg) {
    rank_job *j = (rank_job *)arg;
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = AMPR_TIER_FP16;
    p.max_tokens = 20;
    p.temperature = 0.0f;
    p.ignore_eos = 1;
    ampr_result *r = NULL;
    free(j->text);
    j->gen_st = ampr_generate(j->ctx, "abc", 3, &p, &r);
    j->text = j->gen_st == AMPR_OK ? strdup(r->text) : NULL;
    snprintf(j->msg, sizeof j->msg, "%s", ampr_errmsg(j->ctx));
    ampr_result_free(r);
    return NULL;
}

/* rank_gen; after an out-of-memory failure, at once again (a server's retry) */
static void *rank_gen_retry(void *arg) {
    rank_job *j = (rank_job *)arg;
    rank_gen(j);
    j->first_st = j->gen_st;
    if (j->gen_st == AMPR_ERR_NOMEM) rank_gen(j);
    return NULL;
}

static void *rank_main(void *arg) {
    rank_job *j = (rank_job *)arg;
    rank_open(j);
    if (j->ctx) rank_gen(j);
    ampr_close(j->ctx);
    j->ctx = NULL;
    return NULL;
}

/* fn on both ranks at once (the passes are collectives) */
static void both(rank_job *jobs, void *(*fn)(void *)) {
    pthread_t th[2];
    for (int r = 0; r < 2; r++) assert_int_equal(pthread_create(&th[r], NULL, fn, &jobs[r]), 0);
    for (int r = 0; r < 2; r++) pthread_join(th[r], NULL);
}

/* the two ranks' configs, with a fresh group id */
static void rank_jobs(rank_job *jobs, const char *path, const char *id) {
    for (int r = 0; r < 2; r++) {
        memset(&jobs[r], 0, sizeof jobs[r]);
        jobs[r].path = path;
        snprintf(jobs[r].cfg, sizeof jobs[r].cfg,
                 "{" TIERS ", \"device\": \"cuda\", \"tp_size\": 2, \"tp_rank\": %d, \"tp_id\": \"%s\", "
                 "\"gpus\": [%d], \"tp_timeout_ms\": 60000}", r, id, r);
    }
}

/* Whether "device": "cuda" opens here at all. */
static int open_device_ok(const char *path) {
    ampr_ctx *ctx = open_device(path, "{\"tiers\": [\"fp16\"], \"device\": \"cuda\"}");
    ampr_close(ctx);
    return ctx != NULL;
}

/* A fresh group id, or NULL (skip) where this build has no NCCL. */
static char *group_id(void) {
    static char id[AMPR_TP_ID_LEN + 1];
    return ampr_tp_id_new(id, sizeof id) == AMPR_OK ? id : NULL;
}

/* Whether two GPUs are there for two ranks (NCCL wants a GPU a rank). */
static int two_gpus(const char *path) {
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(path, "{\"tiers\": [\"fp16\"], \"device\": \"cuda\", \"tp_size\": 2, "
                                     "\"gpus\": [0, 1]}", &ctx);
    ampr_close(ctx);
    return st == AMPR_OK;
}

static long live_allocs(void) { return ampr_emu_live_allocs ? ampr_emu_live_allocs() : 0; }

static void test_rank_per_process(void **state) {
    (void)state;
    const char *path = model();
    char *id = group_id();
    if (!path || !id || !two_gpus(path)) skip(); /* the emulation: AMPR_EMU_DEVICES=2 */
    long live0 = live_allocs();
    ampr_ctx *cpu = tu_open_ok(path, "{" TIERS ", \"device\": \"cpu\", \"tp_size\": 2}");
    char *ref = tu_greedy_text(cpu, AMPR_TIER_FP16, 20);
    ampr_close(cpu);
    rank_job jobs[2];
    rank_jobs(jobs, path, id);
    both(jobs, rank_main);
    for (int r = 0; r < 2; r++) {
        if (jobs[r].open_st != AMPR_OK || jobs[r].gen_st != AMPR_OK) fail_msg("rank %d: %s", r, jobs[r].msg);
        assert_string_equal(jobs[r].text, ref);
        free(jobs[r].text);
    }
    free(ref);
    assert_int_equal(live_allocs(), live0);
}

/* A rank whose request fails on its own (a device allocation, injected: the
 * first of either rank's) aborts the group. Its retry, made at once while the
 * other rank still waits in the failed request's pass, must not pair its
 * collectives with that pass's: it fails, saying the group was aborted. The
 * other rank's request fails too, without waiting out a timeout (here the
 * abort reaches it at once; on a GPU NCCL reports the lost peer, or
 * tp_timeout_ms ends the wait); later requests of both fail at once. */
static void test_rank_fails_request(void **state) {
    (void)state;
    const char *path = model();
    char *id = group_id();
    if (!path || !id || !ampr_emu_fail_alloc_in || !two_gpus(path)) skip();
    long live0 = live_allocs();
    rank_job jobs[2];
    rank_jobs(jobs, path, id);
    both(jobs, rank_open);
    for (int r = 0; r < 2; r++)
        if (jobs[r].open_st != AMPR_OK) fail_msg("rank %d: %s", r, jobs[r].msg);
    ampr_emu_fail_alloc_in(1);
    double t0 = now_ms();
    both(jobs, rank_gen_retry);
    ampr_emu_fail_alloc_in(0);
    assert_true(now_ms() - t0 < 20000); /* not AMPR_EMU_NCCL_WAIT_MS's 60 s */
    int nomem = 0;
    for (int r = 0; r < 2; r++) {
        assert_int_equal(jobs[r].gen_st, AMPR_ERR_BACKEND);
        if (jobs[r].first_st == AMPR_ERR_NOMEM) { /* the retry */
            nomem++;
            assert_non_null(strstr(jobs[r].msg, "this tensor-parallel group was aborted"));
        } else {
            assert_non_null(strstr(jobs[r].msg, "another rank of the group failed or was lost"));
        }
    }
    assert_int_equal(nomem, 1);
    t0 = now_ms();
    both(jobs, rank_gen);
    for (int r = 0; r < 2; r++) {
        assert_int_equal(jobs[r].gen_st, AMPR_ERR_BACKEND);
        assert_non_null(strstr(jobs[r].msg, "group was aborted"));
    }
    assert_true(now_ms() - t0 < 10000);
    for (int r = 0; r < 2; r++) ampr_close(jobs[r].ctx);
    assert_int_equal(live_allocs(), live0);
}

static int stop_at_join(void *user, const char *stage, float fraction) {
    (void)fraction;
    int *calls = (int *)user;
    return !strcmp(stage, "tp join") && ++*calls >= 2; /* the second call: 100-200 ms in */
}

static void test_rank_alone(void **state) {
    (void)state;
    const char *path = model();
    char *id = group_id();
    if (!path || !id) skip();
    if (!open_device_ok(path)) skip();
    long live0 = live_allocs();
    rank_job j;
    memset(&j, 0, sizeof j);
    j.path = path;
    snprintf(j.cfg, sizeof j.cfg,
             "{" TIERS ", \"device\": \"cuda\", \"tp_size\": 2, \"tp_rank\": 0, \"tp_id\": \"%s\", "
             "\"tp_timeout_ms\": 500}", id);
    rank_main(&j); /* nobody else comes: the timeout */
    assert_int_equal(j.open_st, AMPR_ERR_BACKEND);
    assert_non_null(strstr(j.msg, "did not all join within 500 ms"));
    assert_true(j.open_ms >= 450 && j.open_ms < 30000);
    assert_int_equal(live_allocs(), live0);

    /* the progress callback stops it (a fresh id: one id serves one open) */
    id = group_id();
    assert_non_null(id);
    int calls = 0;
    ampr_open_params op;
    ampr_open_params_init(&op);
    op.progress = stop_at_join;
    op.progress_user = &calls;
    memset(&j, 0, sizeof j);
    j.path = path;
    j.params = &op;
    snprintf(j.cfg, sizeof j.cfg,
             "{" TIERS ", \"device\": \"cuda\", \"tp_size\": 2, \"tp_rank\": 1, \"tp_id\": \"%s\"}", id);
    rank_main(&j);
    assert_int_equal(j.open_st, AMPR_ERR_CANCELLED);
    assert_int_equal(calls, 2);
    assert_true(j.open_ms < 30000); /* not the default 300 s timeout */
    assert_int_equal(live_allocs(), live0);
}

int main(void) {
    /* a rank that never comes to a collective fails it after 60 s rather than
     * hanging the test (the emulation's NCCL; on a GPU tp_timeout_ms does) */
    setenv("AMPR_EMU_NCCL_WAIT_MS", "60000", 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_matches_cpu),
        cmocka_unit_test(test_concurrent_requests),
        cmocka_unit_test(test_concurrent_requests_tp_graphs),
        cmocka_unit_test(test_alloc_failure_in_request),
        cmocka_unit_test(test_rank_per_process),
        cmocka_unit_test(test_rank_fails_request),
        cmocka_unit_test(test_rank_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
