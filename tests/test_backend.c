/*
 * test_backend.c -- the open's device path without a GPU: a stand-in
 * backend (ampr__backend_test_open) takes the CUDA backend's place, so that
 * api.c's wiring runs here -- each tier uploaded as soon as it is built and
 * its host copy freed, KV arenas without host pages, and the fallbacks: an
 * upload that fails under "auto" (every tier built again for the CPU, the
 * context then generates as a CPU one does) and under "cuda" (open fails
 * with the upload's message), and a device that does not open at all.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "backend/backend.h"
#include "engine.h"

/* ---- the stand-in ------------------------------------------------------- */

static struct {
    int open_fails;            /* the backend itself does not open */
    int fail_at;               /* 1-based upload that fails, 0: none */
    int uploads;               /* calls so far */
    ampr_tier order[AMPR_TIER_COUNT];
    int host_weights_at_upload; /* every upload found the tier's host weights */
    int others_dropped;         /* ... and every tier uploaded before it already freed */
    int rings_made, rings_live; /* logits rings handed out, and not given back */
} g;

static ampr_status fake_upload(ampr__backend *b, ampr_ctx *c, ampr__tier *t, ampr__err *err) {
    (void)b;
    g.order[g.uploads++] = t->id;
    if (!t->embd.data || t->device_only || !ampr__tier_shard(t, 0, 0)->w_down.data)
        g.host_weights_at_upload = 0;
    for (ampr__tier *u = c->tiers; u < t; u++)
        if (!u->device_only) g.others_dropped = 0;
    if (ampr__kv_has_pages(t->kv)) g.others_dropped = 0; /* a device tier's arena counts only */
    if (g.uploads == g.fail_at)
        return ampr__fail(err, AMPR_ERR_NOMEM, "stand-in: no room for tier %s", ampr_tier_name(t->id));
    return AMPR_OK;
}

static ampr_status fake_forward(ampr__backend *b, ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq,
                                const int32_t *tokens, int32_t n, int32_t n_logits, ampr__row_want *want,
                                ampr__scratch *s, ampr__err *err) {
    (void)b; (void)c; (void)t; (void)seq; (void)tokens; (void)n; (void)n_logits; (void)want; (void)s;
    return ampr__fail(err, AMPR_ERR_BACKEND, "stand-in: no forward pass");
}

static ampr_status fake_decode(ampr__backend *b, ampr_ctx *c, ampr__tier *t,
                               ampr__kv_seq *const *seqs, const int32_t *tokens, int32_t n,
                               ampr__row_want *want, ampr__scratch *s, ampr__err *err) {
    (void)b; (void)c; (void)t; (void)seqs; (void)tokens; (void)n; (void)want; (void)s;
    return ampr__fail(err, AMPR_ERR_BACKEND, "stand-in: no decode");
}

static ampr_status fake_ring_new(ampr__backend *b, ampr_ctx *c, ampr__ring *r, ampr__err *err) {
    (void)b;
    r->dev = ampr__alloc_array((size_t)r->n_rows * (size_t)c->hp.vocab_size, sizeof(float), err);
    if (!r->dev) return AMPR_ERR_NOMEM;
    g.rings_live++;
    g.rings_made++;
    return AMPR_OK;
}

static void fake_ring_free(ampr__backend *b, ampr_ctx *c, ampr__ring *r) {
    (void)b;
    (void)c;
    ampr__free(r->dev);
    r->dev = NULL;
    g.rings_live--;
}

static void fake_close(ampr__backend *b) {
    ampr__free(b->impl);
    ampr__free(b);
}

static const ampr__backend_ops fake_ops = {"stand-in", fake_upload, fake_forward, fake_decode,
                                           fake_ring_new, fake_ring_free, NULL, fake_close, NULL};

static ampr_status fake_open(ampr_ctx *c, ampr__backend **out, char *name, size_t name_len,
                             ampr__err *err) {
    (void)c;
    *out = NULL;
    if (g.open_fails) return ampr__fail(err, AMPR_ERR_NO_DEVICE, "stand-in: no device today");
    ampr__backend *b = ampr__calloc(1, sizeof *b);
    void *impl = ampr__calloc(1, 16);
    if (!b || !impl) {
        ampr__free(b);
        ampr__free(impl);
        return ampr__fail(err, AMPR_ERR_NOMEM, "stand-in: out of memory");
    }
    b->ops = &fake_ops;
    b->impl = impl;
    snprintf(name, name_len, "stand-in device");
    *out = b;
    return AMPR_OK;
}

static void reset(int open_fails, int fail_at) {
    memset(&g, 0, sizeof g);
    g.open_fails = open_fails;
    g.fail_at = fail_at;
    g.host_weights_at_upload = 1;
    g.others_dropped = 1;
}

static int setup(void **state) {
    (void)state;
    if (tu_fixture_setup("backend", 64, 11)) return -1;
    ampr__backend_test_open = fake_open;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    ampr__backend_test_open = NULL;
    return tu_fixture_teardown();
}

#define TIERS "\"tiers\": [\"fp16\", \"int8\", \"nf4\"], \"kv\": {\"arena_tokens\": 128}"

/* Every tier goes up as soon as it is built, top first, while the host
 * still has it; by then the tiers before it are freed; none is left on the
 * host after open; the arenas count pages without storing them. */
static void test_streamed_upload(void **state) {
    (void)state;
    reset(0, 0);
    ampr_ctx *ctx = NULL;
    assert_int_equal(ampr_open(tu_model, "{" TIERS ", \"device\": \"cuda\"}", &ctx), AMPR_OK);
    assert_int_equal(g.uploads, 3);
    assert_int_equal(g.order[0], AMPR_TIER_FP16);
    assert_int_equal(g.order[1], AMPR_TIER_INT8);
    assert_int_equal(g.order[2], AMPR_TIER_NF4);
    assert_true(g.host_weights_at_upload);
    assert_true(g.others_dropped);
    ampr_model_info mi;
    ampr_model_info_init(&mi);
    assert_int_equal(ampr_get_model_info(ctx, &mi), AMPR_OK);
    assert_string_equal(mi.device, "stand-in device");
    for (int i = 0; i < ctx->n_tiers; i++) {
        const ampr__tier *t = &ctx->tiers[i];
        assert_true(t->device_only);
        assert_null(t->embd.data);
        assert_false(ampr__kv_has_pages(t->kv));
        ampr_tier_info ti;
        ampr_tier_info_init(&ti);
        assert_int_equal(ampr_get_tier_info(ctx, t->id, &ti), AMPR_OK);
        assert_true(ti.weight_bytes > 0 && ti.kv_bytes > 0);
    }
    /* requests go to the device: the stand-in's failure comes back whole,
     * and the request's pages go back to the arena */
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.max_tokens = 4;
    p.tier = AMPR_TIER_NF4;
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(ctx, "abc", 3, &p, &r), AMPR_ERR_BACKEND);
    assert_non_null(strstr(ampr_errmsg(ctx), "stand-in"));
    assert_null(r);
    assert_int_equal(g.rings_made, 1); /* checks are on: the request had a ring on the device */
    assert_int_equal(g.rings_live, 0); /* ... and gave it back */
    ampr_tier_info ti;
    ampr_tier_info_init(&ti);
    assert_int_equal(ampr_get_tier_info(ctx, AMPR_TIER_NF4, &ti), AMPR_OK);
    assert_int_equal(ti.kv_pages_used, 0);
    ampr_close(ctx);
}

/* "auto": an upload fails after the first tier was freed: every tier is
 * built again for the CPU, which generates what a CPU context does. */
static void test_auto_upload_failure(void **state) {
    (void)state;
    ampr__backend_test_open = NULL;
    ampr_ctx *cpu = tu_open_ok(tu_model, "{" TIERS "}");
    ampr__backend_test_open = fake_open;
    reset(0, 2);
    ampr_ctx *ctx = NULL;
    assert_int_equal(ampr_open(tu_model, "{" TIERS ", \"device\": \"auto\"}", &ctx), AMPR_OK);
    assert_int_equal(g.uploads, 2);
    ampr_model_info mi;
    ampr_model_info_init(&mi);
    assert_int_equal(ampr_get_model_info(ctx, &mi), AMPR_OK);
    assert_non_null(strstr(mi.device, "cpu (auto: "));
    assert_non_null(strstr(mi.device, "no room for tier int8"));
    assert_null(ctx->backend);
    for (int i = 0; i < ctx->n_tiers; i++) {
        assert_false(ctx->tiers[i].device_only);
        assert_true(ampr__kv_has_pages(ctx->tiers[i].kv));
        char *a = tu_greedy_text(cpu, ctx->tiers[i].id, 12), *b = tu_greedy_text(ctx, ctx->tiers[i].id, 12);
        assert_string_equal(a, b);
        free(a);
        free(b);
    }
    ampr_close(ctx);
    ampr_close(cpu);
}

/* "cuda": the same failure fails the open, with the upload's message. */
static void test_cuda_upload_failure(void **state) {
    (void)state;
    reset(0, 3);
    ampr_ctx *ctx = NULL;
    assert_int_equal(ampr_open(tu_model, "{" TIERS ", \"device\": \"cuda\"}", &ctx), AMPR_ERR_NOMEM);
    assert_non_null(strstr(ampr_errmsg(ctx), "\"device\": \"cuda\""));
    assert_non_null(strstr(ampr_errmsg(ctx), "no room for tier nf4"));
    assert_int_equal(g.uploads, 3);
    ampr_close(ctx);
}

/* A device that does not open: "auto" keeps the CPU with a note (no
 * upload is tried), "cuda" fails. */
static void test_device_does_not_open(void **state) {
    (void)state;
    reset(1, 0);
    ampr_ctx *ctx = NULL;
    assert_int_equal(ampr_open(tu_model, "{" TIERS ", \"device\": \"auto\"}", &ctx), AMPR_OK);
    ampr_model_info mi;
    ampr_model_info_init(&mi);
    assert_int_equal(ampr_get_model_info(ctx, &mi), AMPR_OK);
    assert_non_null(strstr(mi.device, "no device today"));
    assert_int_equal(g.uploads, 0);
    char *t = tu_greedy_text(ctx, AMPR_TIER_INT8, 12);
    free(t);
    ampr_close(ctx);
    ctx = NULL;
    assert_int_equal(ampr_open(tu_model, "{" TIERS ", \"device\": \"cuda\"}", &ctx), AMPR_ERR_NO_DEVICE);
    assert_non_null(strstr(ampr_errmsg(ctx), "no device today"));
    ampr_close(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_streamed_upload),
        cmocka_unit_test(test_auto_upload_failure),
        cmocka_unit_test(test_cuda_upload_failure),
        cmocka_unit_test(test_device_does_not_open),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
