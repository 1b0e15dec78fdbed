/*
 * test_calib.c -- calibration: the router fit finds the feature that drives
 * the divergence and meets the KL target with fewer bytes than all-top; the
 * calibration file round-trips through ampr_open (router, fallback tolerance,
 * SmoothQuant on the INT8 tier), and a file for another model shape or a
 * broken file is rejected.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "calib/calib.h"


static double frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 9007199254740992.0;
}

static void test_fit_router(void **state) {
    (void)state;
    enum { N = 60 };
    ampr__calib_sample s[N];
    memset(s, 0, sizeof s);
    uint64_t seed = 9;
    for (int i = 0; i < N; i++) {
        for (int f = 0; f < AMPR__F_COUNT; f++) s[i].features[f] = (float)(0.2 * frand(&seed));
        s[i].features[AMPR__F_CODE] = (float)frand(&seed);
        s[i].kl[AMPR_TIER_NF4] = 0.01 + 0.5 * s[i].features[AMPR__F_CODE] * s[i].features[AMPR__F_CODE];
        s[i].kl[AMPR_TIER_INT8] = 0.05 * s[i].kl[AMPR_TIER_NF4];
    }
    ampr_tier tiers[3] = {AMPR_TIER_FP16, AMPR_TIER_INT8, AMPR_TIER_NF4};
    double bytes[3] = {4.0, 2.0, 1.0};
    ampr__router_config rc;
    ampr__router_defaults(&rc);
    double kl = 0, by = 0;
    ampr__calib_fit_router(s, N, tiers, 3, bytes, 0.05, &rc, &kl, &by);
    for (int f = 0; f < AMPR__F_COUNT; f++)
        if (f != AMPR__F_CODE) assert_true(rc.weights[AMPR__F_CODE] > fabsf(rc.weights[f]));
    assert_true(kl <= 0.05);
    assert_true(by < 4.0); /* cheaper than everything on the top tier */
    assert_true(rc.thresholds[0] <= rc.thresholds[1]);
    /* an impossible target gives the lowest KL it can (all on the top tier) */
    ampr__calib_fit_router(s, N, tiers, 3, bytes, -1.0, &rc, &kl, &by);
    assert_true(kl == 0);
}

static void test_file_round_trip(void **state) {
    (void)state;
    ampr_ctx *c = NULL;
    assert_int_equal(ampr_open(tu_model, "{\"tiers\": [\"f32\", \"int8\"]}", &c), AMPR_OK);
    ampr__act_stats st;
    ampr__err err = {0};
    assert_int_equal(ampr__act_stats_new(&c->hp, &st, &err), AMPR_OK);
    int32_t ids[24];
    for (int i = 0; i < 24; i++) ids[i] = (i * 37 + 5) % 320;
    assert_int_equal(ampr__calib_ranges(c, &c->tiers[0], ids, 24, &st, &err), AMPR_OK);
    float any = 0;
    for (int m = 0; m < AMPR__MM_COUNT; m++) any = fmaxf(any, st.absmax[m][0]);
    assert_true(any > 0);
    ampr__router_config rc;
    ampr__router_defaults(&rc);
    rc.thresholds[0] = 0.125f;
    rc.thresholds[1] = 0.75f;
    rc.weights[AMPR__F_MATH] = 7.5f;
    char path[4096];
    snprintf(path, sizeof path, "%s/calib.json", tu_dir);
    assert_int_equal(ampr__calib_write(path, &rc, 0.25f, 0.5f, &st, &c->hp, 0.05, 10, &err), AMPR_OK);
    ampr__act_stats_free(&st);
    ampr_close(c);

    char cfg[4400];
    snprintf(cfg, sizeof cfg, "{\"tiers\": [\"f32\", \"int8\"], \"calibration\": \"%s\"}", path);
    assert_int_equal(ampr_open(tu_model, cfg, &c), AMPR_OK);
    assert_true(fabsf(c->cfg.router.thresholds[0] - 0.125f) < 1e-6f);
    assert_true(fabsf(c->cfg.router.thresholds[1] - 0.75f) < 1e-6f);
    assert_true(fabsf(c->cfg.router.weights[AMPR__F_MATH] - 7.5f) < 1e-6f);
    assert_true(fabsf(c->cfg.fallback.kl_max - 0.25f) < 1e-6f);
    ampr__tier *i8 = ampr__ctx_tier(c, AMPR_TIER_INT8);
    for (int m = 0; m < AMPR__MM_COUNT; m++) assert_non_null(i8->layers[0].smooth[m]);
    assert_null(c->tiers[0].layers[0].smooth[0]); /* only INT8 is smoothed */
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = AMPR_TIER_INT8;
    p.max_tokens = 8;
    p.temperature = 0;
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(c, "abc", 3, &p, &r), AMPR_OK);
    assert_int_equal(r->n_tokens, 8);
    ampr_result_free(r);
    ampr_close(c);
    /* config keys override the file */
    snprintf(cfg, sizeof cfg, "{\"tiers\": [\"f32\"], \"calibration\": \"%s\", \"router\": {\"thresholds\": [0.2, 0.3]}}", path);
    assert_int_equal(ampr_open(tu_model, cfg, &c), AMPR_OK);
    assert_true(fabsf(c->cfg.router.thresholds[0] - 0.2f) < 1e-6f);
    ampr_close(c);
}

static void test_bad_files(void **state) {
    (void)state;
    char path[4096], cfg[4400];
    /* a file for another shape: the tiers refuse it */
    char *other = tu_tmpdir("calib-other");
    ampr__hparams hp = {0};
    hp.dim = 32; hp.hidden_dim = 64; hp.n_layers = 1; hp.n_heads = 2; hp.n_kv_heads = 1; hp.head_dim = 16;
    hp.vocab_size = 300; hp.context_length = 32; hp.norm_eps = 1e-5f; hp.rope_theta = 10000.0f;
    ampr__act_stats st;
    ampr__err err = {0};
    assert_int_equal(ampr__act_stats_new(&hp, &st, &err), AMPR_OK);
    ampr__router_config rc;
    ampr__router_defaults(&rc);
    snprintf(path, sizeof path, "%s/other.json", other);
    assert_int_equal(ampr__calib_write(path, &rc, 0.2f, 0.5f, &st, &hp, 0.05, 1, &err), AMPR_OK);
    ampr__act_stats_free(&st);
    snprintf(cfg, sizeof cfg, "{\"tiers\": [\"int8\"], \"calibration\": \"%s\"}", path);
    ampr_ctx *c = NULL;
    assert_int_equal(ampr_open(tu_model, cfg, &c), AMPR_ERR_CONFIG);
    assert_non_null(strstr(ampr_errmsg(c), "another model shape"));
    ampr_close(c);
    /* broken or absent files */
    const char *bodies[] = {"{", "[]", "{\"version\": 2}", "{\"version\": 1, \"int8\": {\"alpha\": 2}}",
                            "{\"version\": 1, \"router\": {\"weights\": [1, 2]}}"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        snprintf(path, sizeof path, "%s/bad%zu.json", other, i);
        assert_int_equal(tu_write_file(path, bodies[i], strlen(bodies[i])), 0);
        snprintf(cfg, sizeof cfg, "{\"tiers\": [\"f32\"], \"calibration\": \"%s\"}", path);
        assert_int_equal(ampr_open(tu_model, cfg, &c), AMPR_ERR_CONFIG);
        ampr_close(c);
    }
    assert_int_equal(ampr_open(tu_model, "{\"calibration\": \"/nonexistent/calib.json\"}", &c), AMPR_ERR_CONFIG);
    ampr_close(c);
    tu_rmtree(other);
    free(other);
}

static int setup(void **state) {
    (void)state;
    return tu_fixture_setup("calib", 64, 11);
}

static int teardown(void **state) {
    (void)state;
    return tu_fixture_teardown();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_router),
        cmocka_unit_test(test_file_round_trip),
        cmocka_unit_test(test_bad_files),
    };
    return cmocka_run_group_tests_name("calib", tests, setup, teardown);
}
