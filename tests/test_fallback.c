/*
 * test_fallback.c -- escalation from a lower tier to the top tier inside
 * ampr_generate: each signal (KL check, entropy, repetition) triggers when its
 * tolerance is set to zero, the result reports it, the tokens after the switch
 * are exactly what the top tier predicts for the sequence so far (so the KV
 * the top tier built while catching up is right), restart mode equals a plain
 * top-tier run, and no KV pages are left behind in either arena.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "model/model.h"


static int setup(void **state) {
    (void)state;
    return tu_fixture_setup("fallback", 128, 7);
}

static int teardown(void **state) {
    (void)state;
    return tu_fixture_teardown();
}

static ampr_ctx *open_cfg(const char *fallback) {
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"tiers\": [\"f32\", \"fp16\", \"nf4\"], \"fallback\": %s}", fallback);
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(tu_model, cfg, &ctx);
    if (st != AMPR_OK) fail_msg("open: %s", ampr_errmsg(ctx));
    return ctx;
}

static ampr_result *run(ampr_ctx *ctx, ampr_tier tier, int max_tokens, int fallback) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = tier;
    p.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    p.fallback = fallback;
    ampr_result *r = NULL;
    ampr_status st = ampr_generate(ctx, "the cat sat", AMPR_NUL_TERMINATED, &p, &r);
    if (st != AMPR_OK) fail_msg("generate: %s", ampr_errmsg(ctx));
    return r;
}

/* Every token from index `from` on must be the top tier's greedy choice
 * given everything before it. */
static void assert_top_greedy_from(ampr_ctx *ctx, const ampr_result *r, int from) {
    int32_t ids[256];
    size_t n = 0;
    assert_int_equal(ampr_tokenize(ctx, "the cat sat", AMPR_NUL_TERMINATED, 1, ids, 256, &n), AMPR_OK);
    assert_int_equal((int)n, r->n_prompt_tokens);
    memcpy(ids + n, r->tokens, r->n_tokens * sizeof(int32_t));
    size_t total = n + r->n_tokens, V = 320;
    float *lg = malloc(total * V * sizeof(float));
    assert_int_equal(ampr_logits(ctx, AMPR_TIER_F32, ids, total, lg, total * V), AMPR_OK);
    for (size_t j = (size_t)from; j < r->n_tokens; j++) {
        const float *row = lg + (n - 1 + j) * V;
        int32_t best = 0;
        for (size_t v = 1; v < V; v++)
            if (row[v] > row[best]) best = (int32_t)v;
        if (best != r->tokens[j]) fail_msg("token %zu is %d, the top tier predicts %d", j, r->tokens[j], best);
    }
    free(lg);
}

static void assert_no_pages(ampr_ctx *ctx) {
    ampr_tier tiers[] = {AMPR_TIER_F32, AMPR_TIER_FP16, AMPR_TIER_NF4};
    for (int i = 0; i < 3; i++) {
        ampr_tier_info ti;
        ampr_tier_info_init(&ti);
        assert_int_equal(ampr_get_tier_info(ctx, tiers[i], &ti), AMPR_OK);
        assert_int_equal(ti.kv_pages_used, 0);
    }
}

static void test_kl_check_escalates(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"kl_max\": 0.0, \"entropy_max\": 0, \"repeat_ngram\": 0, \"check_every\": 16}");
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 40, 1);
    assert_int_equal(r->tier_first, AMPR_TIER_NF4);
    assert_int_equal(r->tier_final, AMPR_TIER_F32);
    assert_int_equal(r->escalated, 1);
    assert_int_equal(r->escalation_token, 16);
    assert_non_null(strstr(r->escalation_reason, "kl-check"));
    assert_int_equal(r->n_tokens, 40);
    assert_top_greedy_from(ctx, r, 16);
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

static void test_entropy_escalates(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"entropy_max\": 0.0001, \"min_tokens\": 5, \"check_every\": 0, \"repeat_ngram\": 0}");
    ampr_result *r = run(ctx, AMPR_TIER_FP16, 30, 1);
    assert_int_equal(r->escalated, 1);
    assert_int_equal(r->escalation_token, 5);
    assert_int_equal(r->tier_final, AMPR_TIER_F32);
    assert_non_null(strstr(r->escalation_reason, "entropy"));
    assert_top_greedy_from(ctx, r, 5);
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

static void test_repetition_escalates(void **state) {
    (void)state;
    /* a unigram seen twice within the window: fires at the first repeat */
    ampr_ctx *ctx = open_cfg("{\"entropy_max\": 0, \"check_every\": 0, \"min_tokens\": 0, "
                             "\"repeat_ngram\": 1, \"repeat_count\": 2, \"repeat_window\": 64}");
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 60, 1);
    assert_int_equal(r->escalated, 1);
    assert_non_null(strstr(r->escalation_reason, "repetition"));
    /* the token before the switch repeated an earlier one */
    int k = r->escalation_token, seen = 0;
    assert_true(k >= 1);
    for (int i = 0; i < k - 1; i++) seen |= r->tokens[i] == r->tokens[k - 1];
    assert_true(seen);
    assert_top_greedy_from(ctx, r, k);
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

static void test_no_fallback_when_disabled(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"kl_max\": 0.0, \"entropy_max\": 0.0001}");
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 40, 0); /* per request */
    assert_int_equal(r->escalated, 0);
    assert_int_equal(r->escalation_token, -1);
    assert_int_equal(r->tier_final, AMPR_TIER_NF4);
    ampr_result_free(r);
    ampr_close(ctx);
    ctx = open_cfg("{\"enabled\": false, \"kl_max\": 0.0}"); /* per context */
    r = run(ctx, AMPR_TIER_NF4, 40, 1);
    assert_int_equal(r->escalated, 0);
    ampr_result_free(r);
    /* the top tier never escalates */
    r = run(ctx, AMPR_TIER_F32, 20, 1);
    assert_int_equal(r->escalated, 0);
    ampr_result_free(r);
    ampr_close(ctx);
}

static void test_restart_equals_top_tier(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"kl_max\": 0.0, \"entropy_max\": 0, \"repeat_ngram\": 0, \"restart\": true}");
    ampr_result *top = run(ctx, AMPR_TIER_F32, 40, 1);
    ampr_result *r = run(ctx, AMPR_TIER_NF4, 40, 1);
    assert_int_equal(r->escalated, 1);
    assert_int_equal(r->escalation_token, 0);
    assert_int_equal(r->tier_first, AMPR_TIER_NF4);
    assert_int_equal(r->tier_final, AMPR_TIER_F32);
    assert_int_equal(r->n_tokens, top->n_tokens);
    assert_memory_equal(r->tokens, top->tokens, top->n_tokens * sizeof(int32_t));
    assert_int_equal(r->text_len, top->text_len);
    assert_memory_equal(r->text, top->text, top->text_len);
    ampr_result_free(top);
    ampr_result_free(r);
    assert_no_pages(ctx);
    ampr_close(ctx);
}

typedef struct stream_buf {
    char text[8192];
    size_t len;
} stream_buf;

static int collect(void *user, const char *piece, size_t len, int32_t id) {
    (void)id;
    stream_buf *b = user;
    memcpy(b->text + b->len, piece, len);
    b->len += len;
    return 0;
}

/* Streaming never retracts: with restart configured, a streaming request
 * continues on the top tier, and what was streamed is the final text. */
static void test_streaming_escalation_keeps_output(void **state) {
    (void)state;
    ampr_ctx *ctx = open_cfg("{\"kl_max\": 0.0, \"entropy_max\": 0, \"repeat_ngram\": 0, \"restart\": true}");
    stream_buf b = {{0}, 0};
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = AMPR_TIER_NF4;
    p.temperature = 0;
    p.max_tokens = 40;
    p.ignore_eos = 1;
    p.on_token = collect;
    p.user = &b;
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(ctx, "the cat sat", AMPR_NUL_TERMINATED, &p, &r), AMPR_OK);
    assert_int_equal(r->escalation_token, 16);
    assert_int_equal(b.len, r->text_len);
    assert_memory_equal(b.text, r->text, r->text_len);
    ampr_result_free(r);
    ampr_close(ctx);
}

static void test_fallback_config_errors(void **state) {
    (void)state;
    const char *bad[] = {"{\"kl_max\": -1}", "{\"check_window\": 0}", "{\"nope\": 1}",
                         "{\"enabled\": 1}", "[]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cfg[256];
        snprintf(cfg, sizeof cfg, "{\"fallback\": %s}", bad[i]);
        ampr_ctx *ctx = NULL;
        assert_int_equal(ampr_open(tu_model, cfg, &ctx), AMPR_ERR_CONFIG);
        assert_non_null(strstr(ampr_errmsg(ctx), "config"));
        ampr_close(ctx);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kl_check_escalates),
        cmocka_unit_test(test_entropy_escalates),
        cmocka_unit_test(test_repetition_escalates),
        cmocka_unit_test(test_no_fallback_when_disabled),
        cmocka_unit_test(test_restart_equals_top_tier),
        cmocka_unit_test(test_streaming_escalation_keeps_output),
        cmocka_unit_test(test_fallback_config_errors),
    };
    return cmocka_run_group_tests_name("fallback", tests, setup, teardown);
}
