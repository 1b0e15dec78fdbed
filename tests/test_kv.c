/*
 * test_kv.c -- the paged KV arena on its own (accounting, all-or-nothing
 * reservation, waiting for pages, sizes per element type) and the KV element
 * types end to end (f16 and q8 against f32 on the real stories260K model).
 */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ampr.h"
#include "engine.h"
#include "kv/kv.h"

static void test_arena_accounting(void **state) {
    (void)state;
    ampr__err err = {0};
    ampr__kv_arena *a = NULL;
    /* 2 layers, kv_dim 32 (4 heads of 8), 16 tokens a page, 4 pages */
    assert_int_equal(ampr__kv_arena_new(2, 32, 8, 16, 4, AMPR__KV_F32, 1, &a, &err), AMPR_OK);
    assert_int_equal(ampr__kv_pages_total(a), 4);
    assert_int_equal(ampr__kv_bytes(a), 2ull * 4 * 2 * 16 * 32 * 4);
    ampr__kv_seq s1 = {0}, s2 = {0};
    assert_int_equal(ampr__kv_seq_reserve(&s1, a, 33, &err), AMPR_OK); /* 3 pages */
    assert_int_equal(s1.n_blocks, 3);
    assert_int_equal(ampr__kv_pages_used(a), 3);
    assert_int_equal(ampr__kv_seq_reserve(&s1, a, 20, &err), AMPR_OK); /* already enough */
    assert_int_equal(s1.n_blocks, 3);
    /* all or nothing: 2 more pages are not there, s2 stays empty */
    assert_int_equal(ampr__kv_seq_reserve(&s2, a, 17, &err), AMPR_ERR_KV_FULL);
    assert_non_null(strstr(err.msg, "KV arena full"));
    assert_int_equal(s2.n_blocks, 0);
    assert_int_equal(ampr__kv_pages_used(a), 3);
    ampr__err_clear(&err);
    /* a request that could never fit fails at once even when waiting */
    assert_int_equal(ampr__kv_seq_reserve_wait(&s2, a, 16 * 5, 10000, &err), AMPR_ERR_KV_FULL);
    ampr__err_clear(&err);
    /* pages of different sequences are distinct */
    assert_int_equal(ampr__kv_seq_reserve(&s2, a, 16, &err), AMPR_OK);
    for (int i = 0; i < 3; i++) assert_int_not_equal(s1.blocks[i], s2.blocks[0]);
    assert_ptr_not_equal(ampr__kv_k(&s1, 0, 0, 0), ampr__kv_k(&s2, 0, 0, 0));
    ampr__kv_seq_release(&s1);
    ampr__kv_seq_release(&s1); /* idempotent */
    assert_int_equal(ampr__kv_pages_used(a), 1);
    ampr__kv_seq_release(&s2);
    assert_int_equal(ampr__kv_pages_used(a), 0);
    ampr__kv_arena_free(a);
}

static void test_arena_sizes(void **state) {
    (void)state;
    ampr__err err = {0};
    ampr__kv_arena *a = NULL;
    size_t want[3] = {32 * 4, 32 * 2, 32 + 4 * 4}; /* f32, f16, q8 (4 heads of 8) */
    for (int dt = 0; dt < 3; dt++) {
        assert_int_equal(ampr__kv_arena_new(2, 32, 8, 16, 4, (ampr__kv_dtype)dt, 1, &a, &err), AMPR_OK);
        assert_int_equal(ampr__kv_pos_bytes(a), want[dt]);
        assert_int_equal(ampr__kv_bytes(a), 2ull * 4 * 2 * 16 * want[dt]);
        ampr__kv_arena_free(a);
    }
    assert_int_equal(ampr__kv_arena_new(2, 32, 5, 16, 4, AMPR__KV_Q8, 1, &a, &err), AMPR_ERR_CONFIG);
    ampr__err_clear(&err);
    assert_int_equal(ampr__kv_arena_new(0, 32, 8, 16, 4, AMPR__KV_F32, 1, &a, &err), AMPR_ERR_CONFIG);
}

typedef struct release_later {
    ampr__kv_seq *seq;
} release_later;

static void *release_after_sleep(void *arg) {
    release_later *r = arg;
    usleep(50 * 1000);
    ampr__kv_seq_release(r->seq);
    return NULL;
}

/* An arena of accounting only (a tier a device serves): the same pages,
 * bytes and KV_FULL, no storage; dropping a full arena's pages keeps its
 * accounting too. */
static void test_arena_without_pages(void **state) {
    (void)state;
    ampr__err err = {0};
    ampr__kv_arena *a = NULL, *b = NULL;
    assert_int_equal(ampr__kv_arena_new_ex(2, 32, 8, 16, 4, AMPR__KV_F16, 1, 0, &a, &err), AMPR_OK);
    assert_int_equal(ampr__kv_arena_new(2, 32, 8, 16, 4, AMPR__KV_F16, 1, &b, &err), AMPR_OK);
    assert_false(ampr__kv_has_pages(a));
    assert_true(ampr__kv_has_pages(b));
    assert_true(ampr__kv_bytes(a) == ampr__kv_bytes(b));
    ampr__kv_seq s = {0}, t = {0};
    assert_int_equal(ampr__kv_seq_reserve(&s, a, 48, &err), AMPR_OK);
    assert_int_equal(ampr__kv_pages_used(a), 3);
    assert_int_equal(ampr__kv_seq_reserve(&t, a, 32, &err), AMPR_ERR_KV_FULL);
    ampr__kv_seq_release(&s);
    assert_int_equal(ampr__kv_pages_used(a), 0);
    ampr__kv_seq_release(&t); /* (a failed reserve leaves t tied to a) */
    ampr__kv_arena_drop_pages(b);
    assert_false(ampr__kv_has_pages(b));
    ampr__kv_seq u = {0};
    assert_int_equal(ampr__kv_seq_reserve(&u, b, 64, &err), AMPR_OK);
    assert_int_equal(ampr__kv_pages_used(b), 4);
    ampr__kv_seq_release(&u);
    ampr__kv_arena_free(a);
    ampr__kv_arena_free(b);
}

static void test_arena_wait(void **state) {
    (void)state;
    ampr__err err = {0};
    ampr__kv_arena *a = NULL;
    assert_int_equal(ampr__kv_arena_new(1, 8, 8, 16, 2, AMPR__KV_F16, 1, &a, &err), AMPR_OK);
    ampr__kv_seq held = {0}, want = {0};
    assert_int_equal(ampr__kv_seq_reserve(&held, a, 32, &err), AMPR_OK);
    assert_int_equal(ampr__kv_seq_reserve_wait(&want, a, 16, 20, &err), AMPR_ERR_KV_FULL); /* times out */
    assert_non_null(strstr(err.msg, "after waiting"));
    ampr__err_clear(&err);
    release_later rl = {&held};
    pthread_t th;
    pthread_create(&th, NULL, release_after_sleep, &rl);
    assert_int_equal(ampr__kv_seq_reserve_wait(&want, a, 16, 10000, &err), AMPR_OK);
    pthread_join(th, NULL);
    ampr__kv_seq_release(&want);
    assert_int_equal(ampr__kv_pages_used(a), 0);
    ampr__kv_arena_free(a);
}

/* f16 and q8 KV against f32 KV, same weights: logits close, greedy text equal. */
static void test_kv_dtypes_end_to_end(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(path, "models/stories260K/stories260K.gguf");
    const char *dts[3] = {"f32", "f16", "q8"};
    float *lg[3];
    ampr_result *res[3];
    int32_t ids[64];
    size_t n = 0;
    for (int d = 0; d < 3; d++) {
        char cfg[128];
        snprintf(cfg, sizeof cfg, "{\"tiers\": [\"f32\"], \"kv\": {\"dtype\": \"%s\"}}", dts[d]);
        ampr_ctx *ctx = NULL;
        assert_int_equal(ampr_open(path, cfg, &ctx), AMPR_OK);
        assert_int_equal(ampr_tokenize(ctx, "Lily and Ben went to the park. They saw a big dog and", AMPR_NUL_TERMINATED,
                                       1, ids, 64, &n), AMPR_OK);
        lg[d] = malloc(n * 512 * sizeof(float));
        assert_int_equal(ampr_logits(ctx, AMPR_TIER_F32, ids, n, lg[d], n * 512), AMPR_OK);
        ampr_gen_params p;
        ampr_gen_params_init(&p);
        p.temperature = 0;
        p.max_tokens = 40;
        p.tier = AMPR_TIER_F32;
        assert_int_equal(ampr_generate(ctx, "Once upon a time", AMPR_NUL_TERMINATED, &p, &res[d]), AMPR_OK);
        ampr_close(ctx);
    }
    double tol[3] = {0, 1e-2, 1e-1}; /* 8-bit KV with per-head scales costs more */
    for (int d = 1; d < 3; d++) {
        double worst = 0;
        for (size_t i = 0; i < n; i++) {
            double mx = 0, diff = 0;
            for (int v = 0; v < 512; v++) {
                mx = fmax(mx, fabs(lg[0][i * 512 + v]));
                diff = fmax(diff, fabs(lg[0][i * 512 + v] - lg[d][i * 512 + v]));
            }
            worst = fmax(worst, diff / mx);
        }
        print_message("kv %s vs f32: worst relative logit difference %.2e\n", dts[d], worst);
        assert_true(worst > 0 && worst < tol[d]);
        assert_int_equal(res[d]->n_tokens, res[0]->n_tokens);
        assert_memory_equal(res[d]->tokens, res[0]->tokens, res[0]->n_tokens * sizeof(int32_t));
    }
    for (int d = 0; d < 3; d++) {
        free(lg[d]);
        ampr_result_free(res[d]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_accounting),
        cmocka_unit_test(test_arena_sizes),
        cmocka_unit_test(test_arena_wait),
        cmocka_unit_test(test_arena_without_pages),
        cmocka_unit_test(test_kv_dtypes_end_to_end),
    };
    return cmocka_run_group_tests_name("kv", tests, NULL, NULL);
}
