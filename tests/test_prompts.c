/*
 * test_prompts.c -- prompt and parameter edge cases through the public API:
 * empty prompts, invalid UTF-8, embedded NULs, prompts longer than the
 * context, max_tokens 0, stop strings (across token boundaries, at the very
 * start, very long, thousands of them), NULL and out-of-range parameters,
 * cancellation. Each failure must come with its status and a message, and
 * must not disturb the next request on the same context.
 * Uses stories260K when present (meaningful text for stop strings), and a
 * small generated model otherwise / in addition.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "testutil.h"

static char *g_dir;
static ampr_ctx *g_ctx; /* stories260K if present, else the generated model */
static ampr_ctx *g_tiny;

static int setup(void **state) {
    (void)state;
    g_dir = tu_tmpdir("prompts");
    char p[4300];
    snprintf(p, sizeof p, "%s/tiny.gguf", g_dir);
    ampr__hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.dim = 64, hp.hidden_dim = 128, hp.n_layers = 1, hp.n_heads = 4, hp.n_kv_heads = 2;
    hp.head_dim = 16, hp.vocab_size = 300, hp.context_length = 64;
    hp.norm_eps = 1e-5f, hp.rope_theta = 10000.0f;
    ampr__err err = {0};
    if (ampr__model_write_random(p, "gguf", &hp, AMPR__DT_F32, 1, 9, &err)) return -1;
    if (ampr_open(p, "{\"threads\": 2, \"context_length\": 32}", &g_tiny) != AMPR_OK) return -1;
    const char *s = tu_shared("models/stories260K/stories260K.gguf");
    if (s) {
        if (ampr_open(s, "{\"tiers\": [\"f32\", \"fp16\"], \"threads\": 2}", &g_ctx) != AMPR_OK)
            return -1;
    } else {
        g_ctx = g_tiny;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (g_ctx != g_tiny) ampr_close(g_ctx);
    ampr_close(g_tiny);
    tu_rmtree(g_dir);
    free(g_dir);
    return 0;
}

static ampr_gen_params greedy(int max_tokens) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.temperature = 0;
    p.max_tokens = max_tokens;
    p.tier = AMPR_TIER_FP16;
    return p;
}

static void expect_fail(ampr_ctx *ctx, ampr_status got, ampr_status want, const char *needle) {
    if (got != want)
        fprintf(stderr, "got %s (%s), want %s\n", ampr_status_name(got), ampr_errmsg(ctx),
                ampr_status_name(want));
    assert_int_equal(got, want);
    assert_true(ampr_errmsg(ctx)[0] != '\0');
    if (needle && !strcasestr(ampr_errmsg(ctx), needle)) {
        fprintf(stderr, "message \"%s\" lacks \"%s\"\n", ampr_errmsg(ctx), needle);
        fail();
    }
}

/* Greedy output of a prompt (the reference the other tests compare with). */
static ampr_result *run(ampr_ctx *ctx, const char *prompt, size_t len, const ampr_gen_params *p) {
    ampr_result *r = NULL;
    ampr_status st = ampr_generate(ctx, prompt, len, p, &r);
    if (st) fprintf(stderr, "generate: %s\n", ampr_errmsg(ctx));
    assert_int_equal(st, AMPR_OK);
    assert_non_null(r);
    return r;
}

static void test_empty(void **state) {
    (void)state;
    ampr_gen_params p = greedy(4);
    ampr_result *r = run(g_ctx, "", 0, &p); /* BOS only */
    assert_int_equal(r->n_prompt_tokens, 1);
    ampr_result_free(r);
    r = run(g_ctx, NULL, 0, &p); /* NULL with length 0 is the empty prompt */
    ampr_result_free(r);
    p.add_bos = 0;
    expect_fail(g_ctx, ampr_generate(g_ctx, "", 0, &p, &r), AMPR_ERR_PROMPT_EMPTY, "empty");
    assert_null(r);
    size_t n = 99;
    int32_t ids[4];
    assert_int_equal(ampr_tokenize(g_ctx, "", 0, 0, ids, 4, &n), AMPR_OK);
    assert_int_equal(n, 0);
}

static void test_bad_utf8(void **state) {
    (void)state;
    static const char *const bad[] = {"\xff", "abc\xc3", "\xc0\xaf", "\xed\xa0\x80",
                                      "\xf4\x90\x80\x80", "ok \xe2\x82", "\x80\x80"};
    ampr_gen_params p = greedy(2);
    for (size_t i = 0; i < AMPR__ARRAY_LEN(bad); i++) {
        ampr_result *r = NULL;
        expect_fail(g_ctx, ampr_generate(g_ctx, bad[i], strlen(bad[i]), &p, &r), AMPR_ERR_BAD_UTF8,
                    "UTF-8");
        assert_null(r);
        int32_t ids[16];
        size_t n;
        expect_fail(g_ctx, ampr_tokenize(g_ctx, bad[i], strlen(bad[i]), 1, ids, 16, &n),
                    AMPR_ERR_BAD_UTF8, "UTF-8");
        ampr_route_result rr;
        ampr_route_result_init(&rr);
        ampr_status st = ampr_route(g_ctx, bad[i], strlen(bad[i]), bad[i], strlen(bad[i]), &rr);
        assert_true(st == AMPR_OK || st == AMPR_ERR_BAD_UTF8);
    }
    /* the context still works */
    ampr_result_free(run(g_ctx, "Once", AMPR_NUL_TERMINATED, &p));
}

static void test_embedded_nul(void **state) {
    (void)state;
    int32_t a[64], b[64];
    size_t na, nb;
    assert_int_equal(ampr_tokenize(g_ctx, "Lily", 4, 1, a, 64, &na), AMPR_OK);
    assert_int_equal(ampr_tokenize(g_ctx, "Lily\0and\0Ben", 12, 1, b, 64, &nb), AMPR_OK);
    assert_true(nb > na); /* the bytes after the NULs count */
    ampr_gen_params p = greedy(3);
    ampr_result *r = run(g_ctx, "Lily\0and\0Ben", 12, &p);
    assert_int_equal(r->n_prompt_tokens, (int32_t)nb);
    ampr_result_free(r);
    /* decoding keeps NULs when a token is a NUL byte */
    char buf[64];
    size_t len;
    assert_int_equal(ampr_detokenize(g_ctx, b, nb, buf, sizeof buf, &len), AMPR_OK);
    assert_true(len >= 10);
}

static void test_too_long(void **state) {
    (void)state;
    /* g_tiny's context is capped at 32 tokens by its config */
    char prompt[400];
    memset(prompt, 'a', sizeof prompt);
    for (size_t i = 1; i < sizeof prompt; i += 2) prompt[i] = ' ';
    ampr_gen_params p = greedy(4);
    ampr_result *r = NULL;
    expect_fail(g_tiny, ampr_generate(g_tiny, prompt, sizeof prompt, &p, &r),
                AMPR_ERR_PROMPT_TOO_LONG, NULL);
    assert_null(r);
    /* exactly at the limit: fits; the last position's logits still give one
     * token (it needs no position of its own), then the window is full */
    int32_t ids[64];
    size_t n;
    size_t len = 2;
    for (; len < sizeof prompt; len += 2) {
        assert_int_equal(ampr_tokenize(g_tiny, prompt, len, 1, ids, 64, &n), AMPR_OK);
        if (n >= 32) break;
    }
    if (n == 32) {
        r = run(g_tiny, prompt, len, &p);
        assert_int_equal(r->n_tokens, 1);
        assert_int_equal(r->finish, AMPR_FINISH_CONTEXT);
        ampr_result_free(r);
    }
    /* logits of more ids than the window */
    int32_t many[40] = {0};
    float *lg = malloc(sizeof(float) * 40 * 300);
    expect_fail(g_tiny, ampr_logits(g_tiny, AMPR_TIER_FP16, many, 40, lg, 40 * 300),
                AMPR_ERR_PROMPT_TOO_LONG, NULL);
    free(lg);
}

static void test_max_tokens(void **state) {
    (void)state;
    ampr_gen_params p = greedy(0);
    ampr_result *r = run(g_ctx, "Once upon", AMPR_NUL_TERMINATED, &p);
    assert_int_equal(r->n_tokens, 0);
    assert_int_equal(r->text_len, 0);
    assert_string_equal(r->text, "");
    ampr_result_free(r);
    p.max_tokens = -1;
    expect_fail(g_ctx, ampr_generate(g_ctx, "x", 1, &p, &r), AMPR_ERR_INVALID_ARG, "max_tokens");
    p.max_tokens = INT32_MAX; /* capped by the window */
    p.ignore_eos = 1;
    r = run(g_tiny, "a", 1, &p);
    assert_int_equal(r->finish, AMPR_FINISH_CONTEXT);
    ampr_result_free(r);
}

typedef struct stream {
    char buf[8192];
    size_t len;
    int cancel_after;
    int calls;
} stream;

static int on_tok(void *user, const char *piece, size_t len, int32_t id) {
    (void)id;
    stream *s = user;
    assert_true(s->len + len < sizeof s->buf);
    memcpy(s->buf + s->len, piece, len);
    s->len += len;
    return s->cancel_after && ++s->calls >= s->cancel_after;
}

static void test_stops(void **state) {
    (void)state;
    const char *prompt = "Once upon a time";
    ampr_gen_params p = greedy(40);
    ampr_result *ref = run(g_ctx, prompt, AMPR_NUL_TERMINATED, &p);
    assert_true(ref->n_tokens >= 6);
    /* piece boundaries of the reference text */
    size_t bounds[64], nb = 0, off = 0;
    for (size_t i = 0; i < ref->n_tokens && nb < 64; i++) {
        char piece[256];
        size_t l;
        assert_int_equal(ampr_detokenize(g_ctx, ref->tokens, i + 1, piece, sizeof piece, &l) ==
                             AMPR_OK ||
                             l >= sizeof piece,
                         1);
        bounds[nb++] = off = l;
    }
    (void)off;
    /* a stop string spanning two token boundaries: from inside token 2 to inside token 4 */
    size_t from = bounds[1] > 0 ? bounds[1] - 1 : 0, to = bounds[3] + 1;
    if (to > ref->text_len) to = ref->text_len;
    char stop_s[256];
    snprintf(stop_s, sizeof stop_s, "%.*s", (int)(to - from), ref->text + from);
    const char *stops[] = {stop_s};
    char *first = strstr(ref->text, stop_s);
    assert_non_null(first);
    size_t want = (size_t)(first - ref->text);
    stream s = {.len = 0};
    p.stop = stops;
    p.n_stop = 1;
    p.on_token = on_tok;
    p.user = &s;
    ampr_result *r = run(g_ctx, prompt, AMPR_NUL_TERMINATED, &p);
    assert_int_equal(r->finish, AMPR_FINISH_STOP);
    assert_int_equal(r->text_len, want);
    assert_memory_equal(r->text, ref->text, want);
    assert_int_equal(s.len, want); /* the stop string is never streamed */
    assert_memory_equal(s.buf, ref->text, want);
    ampr_result_free(r);

    /* a stop string at the very start */
    char head[3] = {ref->text[0], ref->text[1], 0};
    stops[0] = head;
    s.len = 0;
    r = run(g_ctx, prompt, AMPR_NUL_TERMINATED, &p);
    assert_int_equal(r->finish, AMPR_FINISH_STOP);
    assert_int_equal(r->text_len, 0);
    assert_int_equal(s.len, 0);
    ampr_result_free(r);

    /* a very long stop string (never matches) and one that is the whole output + more */
    char *longs = malloc(20001);
    memset(longs, 'x', 20000);
    longs[20000] = 0;
    char *whole = malloc(ref->text_len + 2);
    memcpy(whole, ref->text, ref->text_len);
    memcpy(whole + ref->text_len, "#", 2);
    const char *two[] = {longs, whole};
    p.stop = two;
    p.n_stop = 2;
    s.len = 0;
    r = run(g_ctx, prompt, AMPR_NUL_TERMINATED, &p);
    assert_int_equal(r->text_len, ref->text_len);
    assert_memory_equal(r->text, ref->text, ref->text_len);
    assert_int_equal(s.len, ref->text_len);
    ampr_result_free(r);
    free(longs);
    free(whole);

    /* thousands of stop strings, one of which matches late */
    enum { N = 5000 };
    char **many = malloc(N * sizeof *many);
    for (int i = 0; i < N; i++) {
        many[i] = malloc(24);
        snprintf(many[i], 24, "zq%dwv", i);
    }
    snprintf(many[N - 1], 24, "%.*s", (int)AMPR__MIN((size_t)5, ref->text_len - bounds[4]),
             ref->text + bounds[4]);
    p.stop = (const char *const *)many;
    p.n_stop = N;
    s.len = 0;
    double t0 = ampr__now_ms();
    r = run(g_ctx, prompt, AMPR_NUL_TERMINATED, &p);
    double ms = ampr__now_ms() - t0;
    char *hit = strstr(ref->text, many[N - 1]);
    assert_non_null(hit);
    assert_int_equal(r->finish, AMPR_FINISH_STOP);
    assert_int_equal(r->text_len, (size_t)(hit - ref->text));
    printf("5000 stop strings: %.1f ms\n", ms);
    ampr_result_free(r);
    for (int i = 0; i < N; i++) free(many[i]);
    free(many);

    /* odd stop lists */
    const char *odd[] = {NULL, "", "\xff\xfe"};
    p.stop = odd;
    p.n_stop = 3;
    s.len = 0;
    ampr_status st = ampr_generate(g_ctx, prompt, AMPR_NUL_TERMINATED, &p, &r);
    if (st == AMPR_OK) { /* NULL and "" are ignored, invalid UTF-8 never matches */
        assert_int_equal(r->text_len, ref->text_len);
        ampr_result_free(r);
    } else {
        expect_fail(g_ctx, st, AMPR_ERR_INVALID_ARG, "stop");
    }
    p.stop = NULL;
    p.n_stop = 2;
    expect_fail(g_ctx, ampr_generate(g_ctx, prompt, AMPR_NUL_TERMINATED, &p, &r),
                AMPR_ERR_INVALID_ARG, "stop");

    /* cancellation after 3 pieces: partial result */
    p.stop = NULL;
    p.n_stop = 0;
    s.len = 0;
    s.cancel_after = 3;
    s.calls = 0;
    st = ampr_generate(g_ctx, prompt, AMPR_NUL_TERMINATED, &p, &r);
    assert_int_equal(st, AMPR_ERR_CANCELLED);
    assert_non_null(r);
    assert_int_equal(r->finish, AMPR_FINISH_CANCELLED);
    assert_int_equal(r->n_tokens, 3);
    ampr_result_free(r);
    ampr_result_free(ref);
}

static void test_null_and_odd_params(void **state) {
    (void)state;
    ampr_result *r = NULL;
    ampr_gen_params p = greedy(2);
    assert_int_equal(ampr_generate(NULL, "x", 1, &p, &r), AMPR_ERR_INVALID_ARG);
    expect_fail(g_ctx, ampr_generate(g_ctx, NULL, 5, &p, &r), AMPR_ERR_INVALID_ARG, "NULL");
    ampr_gen_params q = p;
    q.struct_size = 4;
    expect_fail(g_ctx, ampr_generate(g_ctx, "x", 1, &q, &r), AMPR_ERR_INVALID_ARG, "init");
    q = p;
    q.tier = (ampr_tier)99;
    expect_fail(g_ctx, ampr_generate(g_ctx, "x", 1, &q, &r), AMPR_ERR_INVALID_ARG, "tier");
    q = p;
    q.tier = AMPR_TIER_BF16; /* not resident */
    expect_fail(g_ctx, ampr_generate(g_ctx, "x", 1, &q, &r), AMPR_ERR_TIER_UNAVAILABLE, "bf16");
    q = p;
    q.temperature = NAN;
    expect_fail(g_ctx, ampr_generate(g_ctx, "x", 1, &q, &r), AMPR_ERR_INVALID_ARG, "temperature");
    q = p;
    q.temperature = -1;
    expect_fail(g_ctx, ampr_generate(g_ctx, "x", 1, &q, &r), AMPR_ERR_INVALID_ARG, "temperature");
    q = p;
    q.repetition_penalty = 0;
    expect_fail(g_ctx, ampr_generate(g_ctx, "x", 1, &q, &r), AMPR_ERR_INVALID_ARG, "repetition");
    q = p;
    q.temperature = 1e30f, q.top_k = -5, q.top_p = 7.0f, q.repetition_last_n = -3;
    q.seed = UINT64_MAX;
    ampr_status st = ampr_generate(g_ctx, "x", 1, &q, &r); /* odd but harmless values */
    assert_true(st == AMPR_OK || st == AMPR_ERR_INVALID_ARG);
    if (st == AMPR_OK) ampr_result_free(r);
    r = NULL;
    /* no out pointer: streaming only */
    stream s = {.len = 0};
    q = p;
    q.on_token = on_tok;
    q.user = &s;
    assert_int_equal(ampr_generate(g_ctx, "x", 1, &q, NULL), AMPR_OK);
    /* params NULL: defaults */
    assert_int_equal(ampr_generate(g_ctx, "Once", 4, NULL, &r), AMPR_OK);
    ampr_result_free(r);
    ampr_result_free(NULL);
    /* tokenize / detokenize odd arguments */
    int32_t ids[4];
    size_t n;
    expect_fail(g_ctx, ampr_tokenize(g_ctx, "Once upon a time there was", AMPR_NUL_TERMINATED, 1,
                                     ids, 2, &n),
                AMPR_ERR_BUFFER_TOO_SMALL, NULL);
    assert_true(n > 2);
    int32_t badids[2] = {-1, 1 << 30};
    char buf[16];
    size_t len;
    expect_fail(g_ctx, ampr_detokenize(g_ctx, badids, 2, buf, sizeof buf, &len),
                AMPR_ERR_INVALID_ARG, NULL);
    expect_fail(g_ctx, ampr_tokenize(g_ctx, NULL, 3, 1, ids, 4, &n), AMPR_ERR_INVALID_ARG, NULL);
    ampr_route_result rr;
    ampr_route_result_init(&rr);
    assert_int_equal(ampr_route(g_ctx, NULL, 0, NULL, 0, &rr), AMPR_OK);
    assert_int_equal(ampr_route(g_ctx, "x", 1, NULL, 0, NULL), AMPR_ERR_INVALID_ARG);
    assert_string_equal(ampr_errmsg(NULL), "no context");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),        cmocka_unit_test(test_bad_utf8),
        cmocka_unit_test(test_embedded_nul), cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_max_tokens),   cmocka_unit_test(test_stops),
        cmocka_unit_test(test_null_and_odd_params),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
