/*
 * test_router.c -- the complexity scorer and the tier decision: features
 * respond to what they claim to measure, the score is monotone in them, the
 * thresholds map scores to the lowest, middle and top tier (with one, two or
 * three tiers resident), a system prompt counts by its weight, and routing
 * costs microseconds.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "engine.h"
#include "generate.h"
#include "router/router.h"

static void features_of(const char *s, float *f) { ampr__router_features(s, strlen(s), f); }

static void test_features(void **state) {
    (void)state;
    float story[AMPR__F_COUNT], code[AMPR__F_COUNT], math[AMPR__F_COUNT], intl[AMPR__F_COUNT];
    features_of("Once upon a time, there was a little girl named Lily. She loved to play.", story);
    features_of("static int f(int *p) {\n    if (!p) { return -1; }\n    return p[0] + g(p[1]);\n}\n", code);
    features_of("Compute (345 * 12 - 7) / 3 + 2^5 = ?", math);
    features_of("Schöne Grüße aus Köln, 日本語のテキスト", intl);
    for (int i = 0; i < AMPR__F_COUNT; i++) {
        assert_true(story[i] >= 0 && story[i] <= 1);
        assert_true(code[i] >= 0 && code[i] <= 1);
    }
    assert_true(code[AMPR__F_CODE] > story[AMPR__F_CODE] + 0.3f);
    assert_true(math[AMPR__F_MATH] > story[AMPR__F_MATH] + 0.3f);
    assert_true(math[AMPR__F_DIGITS] > story[AMPR__F_DIGITS]);
    assert_true(intl[AMPR__F_NONASCII] > 0.2f && story[AMPR__F_NONASCII] == 0);
    float shortf[AMPR__F_COUNT], longf[AMPR__F_COUNT];
    features_of("hi", shortf);
    char big[4000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    features_of(big, longf);
    assert_true(longf[AMPR__F_LENGTH] > shortf[AMPR__F_LENGTH]);
    float empty[AMPR__F_COUNT];
    ampr__router_features("", 0, empty);
    for (int i = 0; i < AMPR__F_COUNT; i++) assert_true(empty[i] == 0);

    ampr__router_config rc;
    ampr__router_defaults(&rc);
    assert_true(ampr__router_score(&rc, code) > ampr__router_score(&rc, story));
    assert_true(ampr__router_score(&rc, math) > ampr__router_score(&rc, story));
    /* monotone in every feature with a positive weight */
    for (int i = 0; i < AMPR__F_COUNT; i++) {
        float f[AMPR__F_COUNT] = {0};
        float lo = ampr__router_score(&rc, f);
        f[i] = 1;
        assert_true(ampr__router_score(&rc, f) > lo);
    }
}


static ampr_ctx *open_tiers(const char *cfg) { return tu_open_ok(tu_model, cfg); }

static ampr_tier route(ampr_ctx *ctx, const char *p, const char *sys, float *score) {
    ampr_route_result r;
    ampr_route_result_init(&r);
    assert_int_equal(ampr_route(ctx, p, AMPR_NUL_TERMINATED, sys, sys ? AMPR_NUL_TERMINATED : 0, &r), AMPR_OK);
    if (score) *score = r.score;
    assert_non_null(strstr(r.reason, ampr_tier_name(r.tier)));
    return r.tier;
}

static void test_thresholds(void **state) {
    (void)state;
    const char *story = "Once upon a time there was a cat.";
    const char *code = "int main(void) { for (int i = 0; i < 10; i++) { x[i] = y[i] * 2; } return 0; }";
    /* thresholds [0, 0]: everything to the top; [1, 1]: everything to the lowest */
    ampr_ctx *top = open_tiers("{\"tiers\": [\"f32\", \"fp16\", \"nf4\"], \"router\": {\"thresholds\": [0, 0]}}");
    ampr_ctx *low = open_tiers("{\"tiers\": [\"f32\", \"fp16\", \"nf4\"], \"router\": {\"thresholds\": [1, 1]}}");
    assert_int_equal(route(top, story, NULL, NULL), AMPR_TIER_F32);
    assert_int_equal(route(low, code, NULL, NULL), AMPR_TIER_NF4);
    ampr_close(top);
    ampr_close(low);
    /* between the scores of the two prompts: story low, code top */
    ampr_ctx *c = open_tiers("{\"tiers\": [\"f32\", \"fp16\", \"nf4\"]}");
    float s_story, s_code;
    route(c, story, NULL, &s_story);
    route(c, code, NULL, &s_code);
    ampr_close(c);
    assert_true(s_code > s_story);
    char cfg[256];
    float mid = (s_story + s_code) / 2;
    snprintf(cfg, sizeof cfg, "{\"tiers\": [\"f32\", \"fp16\", \"nf4\"], \"router\": {\"thresholds\": [%.6f, %.6f]}}",
             mid, (s_code + 1.0f) / 2);
    c = open_tiers(cfg);
    assert_int_equal(route(c, story, NULL, NULL), AMPR_TIER_NF4);
    assert_int_equal(route(c, code, NULL, NULL), AMPR_TIER_FP16);
    /* a system prompt full of code counts only by its weight */
    float with_sys;
    route(c, story, code, &with_sys);
    assert_true(with_sys > s_story && with_sys < s_code);
    ampr_close(c);
    /* two tiers: no middle band; one tier: always it */
    snprintf(cfg, sizeof cfg, "{\"tiers\": [\"f32\", \"nf4\"], \"router\": {\"thresholds\": [%.6f, %.6f]}}", mid, mid);
    c = open_tiers(cfg);
    assert_int_equal(route(c, story, NULL, NULL), AMPR_TIER_NF4);
    assert_int_equal(route(c, code, NULL, NULL), AMPR_TIER_F32);
    ampr_close(c);
    c = open_tiers("{\"tiers\": [\"nf4\"]}");
    assert_int_equal(route(c, code, NULL, NULL), AMPR_TIER_NF4);
    ampr_route_result r;
    ampr_route_result_init(&r);
    assert_int_equal(ampr_route(c, "\xff", 1, NULL, 0, &r), AMPR_ERR_BAD_UTF8);
    ampr_close(c);
}

static void test_route_cost(void **state) {
    (void)state;
    ampr_ctx *c = open_tiers("{\"tiers\": [\"f32\"]}");
    size_t n = 16 * 1024;
    char *text = malloc(n + 1);
    for (size_t i = 0; i < n; i++) text[i] = "int x = 3 * y; // the cat sat\n"[i % 30];
    text[n] = 0;
    ampr_route_result r;
    ampr_route_result_init(&r);
    double t0 = ampr__now_ms();
    for (int i = 0; i < 100; i++) assert_int_equal(ampr_route(c, text, n, NULL, 0, &r), AMPR_OK);
    double us_per_kib = (ampr__now_ms() - t0) * 1000.0 / 100 / 16;
    print_message("router: %.2f us per KiB\n", us_per_kib);
    /* a behaviour bound, not a benchmark: microseconds, not milliseconds */
    assert_true(us_per_kib < 500);
    free(text);
    ampr_close(c);
}

static int setup(void **state) {
    (void)state;
    return tu_fixture_setup("router", 64, 3);
}

static int teardown(void **state) {
    (void)state;
    return tu_fixture_teardown();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features),
        cmocka_unit_test(test_thresholds),
        cmocka_unit_test(test_route_cost),
    };
    return cmocka_run_group_tests_name("router", tests, setup, teardown);
}
