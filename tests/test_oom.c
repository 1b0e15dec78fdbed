/*
 * test_oom.c -- out-of-memory injection through ampr_set_allocator().
 *
 * The allocator fails the Nth allocation and counts live allocations. Two
 * modes: "once" fails only the Nth (later steps on the same context must
 * then work as if nothing happened), "sticky" fails the Nth and every later
 * one (no retry can heal it). One scenario -- open, tokenize, route, generate (plain,
 * streaming with a stop string, on another tier), detokenize, close -- is run
 * once to count its allocations T, then again for every N = 1..T. Every run
 * must end in AMPR_OK or AMPR_ERR_NOMEM at each step (never a crash or another
 * status), and with zero live allocations after ampr_close().
 * Models: a small generated GGUF (always) and stories260K (when present; its
 * sweep is strided unless AMPR_OOM_FULL=1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "testutil.h"

static long g_count, g_fail_at, g_live, g_failed;
static int g_sticky;

static int should_fail(void) {
    long n = __atomic_add_fetch(&g_count, 1, __ATOMIC_SEQ_CST);
    if (g_fail_at > 0 && (g_sticky ? n >= g_fail_at : n == g_fail_at)) {
        __atomic_add_fetch(&g_failed, 1, __ATOMIC_SEQ_CST);
        return 1;
    }
    return 0;
}
static void *oom_malloc(size_t n, void *u) {
    (void)u;
    if (should_fail()) return NULL;
    void *p = malloc(n);
    if (p) __atomic_add_fetch(&g_live, 1, __ATOMIC_SEQ_CST);
    return p;
}
static void *oom_realloc(void *p, size_t n, void *u) {
    (void)u;
    if (should_fail()) return NULL;
    void *q = realloc(p, n);
    if (q && !p) __atomic_add_fetch(&g_live, 1, __ATOMIC_SEQ_CST);
    return q;
}
static void oom_free(void *p, void *u) {
    (void)u;
    if (p) __atomic_sub_fetch(&g_live, 1, __ATOMIC_SEQ_CST);
    free(p);
}

static int on_token(void *user, const char *piece, size_t len, int32_t id) {
    (void)piece, (void)id;
    *(size_t *)user += len;
    return 0;
}

/* Count a step's status: only OK and NOMEM are acceptable. */
typedef struct tally {
    int bad;
    char what[256];
} tally;

static int step(tally *t, const char *name, ampr_status st, ampr_ctx *ctx, long n) {
    if (st == AMPR_OK) return 1;
    if (st != AMPR_ERR_NOMEM && !t->bad) {
        snprintf(t->what, sizeof t->what, "N=%ld %s: %s (%s)", n, name, ampr_status_name(st),
                 ampr_errmsg(ctx));
        t->bad = 1;
    }
    if (st == AMPR_ERR_NOMEM && ctx && ampr_errmsg(ctx)[0] == '\0' && !t->bad) {
        snprintf(t->what, sizeof t->what, "N=%ld %s: NOMEM without a message", n, name);
        t->bad = 1;
    }
    return 0;
}

/* The scenario; returns 0 when every step was OK (nothing failed). */
static int scenario(const char *model, const char *cfg, ampr_tier low, long n, tally *t) {
    ampr_ctx *ctx = NULL;
    int all_ok = 1;
    ampr_status st = ampr_open(model, cfg, &ctx);
    if (!step(t, "open", st, ctx, n)) {
        ampr_close(ctx);
        return 1;
    }
    int32_t ids[256];
    size_t n_ids = 0;
    all_ok &= step(t, "tokenize",
                   ampr_tokenize(ctx, "Once upon a time, there was", AMPR_NUL_TERMINATED, 1, ids,
                                 256, &n_ids), ctx, n);
    ampr_route_result rr;
    ampr_route_result_init(&rr);
    all_ok &= step(t, "route", ampr_route(ctx, "int x = 1;", 10, "system", 6, &rr), ctx, n);

    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.max_tokens = 6;
    p.temperature = 0;
    p.tier = AMPR_TIER_INT8;
    ampr_result *r = NULL;
    all_ok &= step(t, "generate", ampr_generate(ctx, "Once upon a time", AMPR_NUL_TERMINATED, &p, &r),
                   ctx, n);
    ampr_result_free(r);
    r = NULL;

    static const char *const stops[] = {"the", "zz\xc3\xa9", "."};
    size_t streamed = 0;
    p.tier = low;
    p.temperature = 0.8f;
    p.top_k = 20;
    p.repetition_penalty = 1.1f;
    p.stop = stops;
    p.n_stop = 3;
    p.on_token = on_token;
    p.user = &streamed;
    all_ok &= step(t, "generate (stream, stops)",
                   ampr_generate(ctx, "Lily and Ben", AMPR_NUL_TERMINATED, &p, &r), ctx, n);
    ampr_result_free(r);
    r = NULL;
    p.on_token = NULL;
    p.tier = AMPR_TIER_AUTO;
    p.max_tokens = 3;
    all_ok &= step(t, "generate (auto)", ampr_generate(ctx, "x", 1, &p, NULL), ctx, n);

    if (n_ids) {
        char buf[512];
        size_t len = 0;
        all_ok &= step(t, "detokenize", ampr_detokenize(ctx, ids, n_ids, buf, sizeof buf, &len),
                       ctx, n);
    }
    ampr_close(ctx);
    return all_ok ? 0 : 1;
}

static void sweep(const char *model, const char *cfg, ampr_tier low, long stride_cap) {
    tally t = {0};
    /* count the allocations of a clean run */
    g_count = 0, g_fail_at = 0, g_live = 0, g_failed = 0;
    assert_int_equal(ampr_set_allocator(oom_malloc, oom_realloc, oom_free, NULL), AMPR_OK);
    int r0 = scenario(model, cfg, low, 0, &t);
    long total = g_count, live0 = g_live;
    ampr_set_allocator(NULL, NULL, NULL, NULL);
    if (t.bad) fprintf(stderr, "%s\n", t.what);
    assert_int_equal(r0, 0);
    assert_int_equal(live0, 0);
    long stride = 1;
    if (stride_cap > 0 && total > stride_cap && !getenv("AMPR_OOM_FULL"))
        stride = (total + stride_cap - 1) / stride_cap;
    for (g_sticky = 0; g_sticky < 2 && !t.bad; g_sticky++) {
    long runs = 0, leaks = 0, nomem_runs = 0;
    char leak_at[128] = "";
    for (long n = 1; n <= total + 1; n += stride) {
        g_count = 0, g_fail_at = n, g_live = 0, g_failed = 0;
        assert_int_equal(ampr_set_allocator(oom_malloc, oom_realloc, oom_free, NULL), AMPR_OK);
        int failed = scenario(model, cfg, low, n, &t);
        long live = g_live;
        ampr_set_allocator(NULL, NULL, NULL, NULL);
        runs++;
        nomem_runs += failed;
        if (live != 0) {
            if (!leaks) snprintf(leak_at, sizeof leak_at, "N=%ld: %ld allocations live", n, live);
            leaks++;
        }
        if (t.bad) break;
    }
    printf("%s [%s]: %ld allocations per clean run; %ld runs (stride %ld), %ld saw a failure, "
           "%ld leaked%s%s\n",
           model, g_sticky ? "sticky" : "once", total, runs, stride, nomem_runs, leaks,
           leaks ? ", first " : "", leak_at);
    if (t.bad) fprintf(stderr, "bad status: %s\n", t.what);
    assert_false(t.bad);
    assert_int_equal(leaks, 0);
    }
}

static char *g_dir;
static char g_tiny[4200];

static int setup(void **state) {
    (void)state;
    g_dir = tu_tmpdir("oom");
    snprintf(g_tiny, sizeof g_tiny, "%s/tiny.gguf", g_dir);
    ampr__hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.dim = 64, hp.hidden_dim = 128, hp.n_layers = 1, hp.n_heads = 4, hp.n_kv_heads = 2;
    hp.head_dim = 16, hp.vocab_size = 300, hp.context_length = 64;
    hp.norm_eps = 1e-5f, hp.rope_theta = 10000.0f;
    ampr__err err = {0};
    return ampr__model_write_random(g_tiny, "gguf", &hp, AMPR__DT_F32, 1, 11, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    tu_rmtree(g_dir);
    free(g_dir);
    return 0;
}

static void test_oom_tiny(void **state) {
    (void)state;
    sweep(g_tiny, "{\"tiers\": [\"fp16\", \"int8\", \"nf4\"], \"threads\": 1, "
                  "\"kv\": {\"arena_tokens\": 256}}", AMPR_TIER_NF4, 0);
}

static void test_oom_tiny_hf(void **state) {
    (void)state;
    char hf[4300];
    snprintf(hf, sizeof hf, "%s/hf", g_dir);
    ampr__hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.dim = 64, hp.hidden_dim = 128, hp.n_layers = 1, hp.n_heads = 4, hp.n_kv_heads = 4;
    hp.head_dim = 16, hp.vocab_size = 320, hp.context_length = 64;
    hp.norm_eps = 1e-5f, hp.rope_theta = 10000.0f;
    ampr__err err = {0};
    assert_int_equal(ampr__model_write_random(hf, "hf", &hp, AMPR__DT_BF16, 2, 5, &err), 0);
    sweep(hf, "{\"tiers\": [\"f32\", \"int8\", \"nf4\"], \"threads\": 1}", AMPR_TIER_NF4, 0);
}

static void test_oom_stories(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(path, "models/stories260K/stories260K.gguf");
    sweep(path, "{\"tiers\": [\"fp16\", \"int8\"], \"threads\": 1, \"kv\": {\"arena_tokens\": 512}}",
          AMPR_TIER_INT8, 3000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oom_tiny),
        cmocka_unit_test(test_oom_tiny_hf),
        cmocka_unit_test(test_oom_stories),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
