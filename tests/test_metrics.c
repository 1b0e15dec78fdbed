/*
 * test_metrics.c -- ampr_metrics_text() and what feeds it: counters move as
 * requests run, fail, are cancelled and escalate (a forced kl-check
 * escalation and an entropy one); histograms keep their invariants (buckets
 * monotone in le, +Inf == _count == requests); the text follows the
 * Prometheus 0.0.4 format line by line; reset, misuse, label escaping, and
 * exposition while requests run on other threads. The model is generated
 * by the test (random weights).
 */
#include "testutil.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "metrics/metrics.h"
#include "model/model.h"


static int setup(void **state) {
    (void)state;
    return tu_fixture_setup("metrics", 64, 42);
}

static int teardown(void **state) {
    (void)state;
    return tu_fixture_teardown();
}

static ampr_ctx *open_ok(const char *cfg) { return tu_open_ok(tu_model, cfg); }

static ampr_gen_params greedy(ampr_tier tier, int max_tokens) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = tier;
    p.max_tokens = max_tokens;
    p.temperature = 0.0f;
    p.ignore_eos = 1;
    return p;
}

/* ---- reading the text ------------------------------------------------------ */

/* The exposition; free with ampr_free(). Checks that len matches. */
static char *metrics(ampr_ctx *ctx) {
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(ampr_metrics_text(ctx, &text, &len), AMPR_OK);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

/* The value of the sample whose name and labels are exactly `series`, e.g.
 * ampr_requests_total{tier="int8",finish="length"}; -1 when it is absent. */
static double val(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p;) {
        if (!strncmp(p, series, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p) p++;
    }
    return -1;
}

/* The sum of the samples named `name` whose label text contains `filter`. */
static double sum_of(const char *text, const char *name, const char *filter) {
    size_t n = strlen(name);
    double s = 0;
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (!strncmp(p, name, n) && (p[n] == '{' || p[n] == ' ')) {
            const char *sp = memchr(p + n, ' ', ll - n);
            char line[512];
            snprintf(line, sizeof line, "%.*s", (int)(sp - p), p);
            if (!filter[0] || strstr(line, filter)) s += strtod(sp + 1, NULL);
        }
        p = eol ? eol + 1 : NULL;
    }
    return s;
}

static int name_char(int c, int first) {
    return isalpha(c) || c == '_' || c == ':' || (!first && isdigit(c));
}

static int ends_with(const char *s, size_t n, const char *suffix) {
    size_t k = strlen(suffix);
    return n >= k && !memcmp(s + n - k, suffix, k);
}

/* Check every line against the text format 0.0.4; returns the number of
 * samples. Fails the test on the first bad line. */
static int check_format(const char *text) {
    enum { MAXF = 64, MAXS = 4096 };
    char fam[MAXF][96], type[MAXF][16];
    int nf = 0, ns = 0;
    char **seen = calloc(MAXS, sizeof *seen);
    assert_non_null(seen);
    size_t tl = strlen(text);
    assert_true(tl > 0 && text[tl - 1] == '\n');
    int lineno = 0;
    for (const char *p = text; *p;) {
        const char *eol = strchr(p, '\n');
        assert_non_null(eol);
        char line[1024];
        size_t ll = (size_t)(eol - p);
        assert_true(ll > 0 && ll < sizeof line);
        memcpy(line, p, ll);
        line[ll] = '\0';
        lineno++;
        p = eol + 1;
        if (line[0] == '#') {
            char kind[8], name[96], rest[600];
            rest[0] = '\0';
            int k = sscanf(line, "# %7s %95s %599[^\n]", kind, name, rest);
            assert_true(k >= 2);
            for (const char *c = name; *c; c++)
                if (!name_char((unsigned char)*c, c == name)) fail_msg("line %d: bad name: %s", lineno, line);
            if (!strcmp(kind, "HELP")) {
                assert_int_equal(k, 3);
                /* only \\ and \n may follow a backslash */
                for (const char *c = rest; *c; c++)
                    if (*c == '\\') { c++; assert_true(*c == '\\' || *c == 'n'); }
            } else if (!strcmp(kind, "TYPE")) {
                assert_int_equal(k, 3);
                if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram"))
                    fail_msg("line %d: bad type: %s", lineno, line);
                for (int i = 0; i < nf; i++)
                    if (!strcmp(fam[i], name)) fail_msg("line %d: second TYPE for %s", lineno, name);
                if (!strcmp(rest, "counter") && !ends_with(name, strlen(name), "_total"))
                    fail_msg("line %d: counter without _total: %s", lineno, name);
                if (strcmp(rest, "counter") && ends_with(name, strlen(name), "_total"))
                    fail_msg("line %d: _total on a non-counter: %s", lineno, name);
                assert_true(nf < MAXF);
                snprintf(fam[nf], sizeof fam[nf], "%s", name);
                snprintf(type[nf], sizeof type[nf], "%.15s", rest);
                nf++;
            } else {
                fail_msg("line %d: unknown comment: %s", lineno, line);
            }
            continue;
        }
        /* a sample: name[{labels}] value */
        const char *c = line;
        while (name_char((unsigned char)*c, c == line)) c++;
        size_t name_len = (size_t)(c - line);
        assert_true(name_len > 0);
        int has_le = 0;
        if (*c == '{') {
            c++;
            while (*c != '}') {
                const char *ln = c;
                while (name_char((unsigned char)*c, c == ln) && *c != ':') c++;
                if (c == ln) fail_msg("line %d: bad label name: %s", lineno, line);
                if (c - ln == 2 && !memcmp(ln, "le", 2)) has_le = 1;
                if (c[0] != '=' || c[1] != '"') fail_msg("line %d: bad label: %s", lineno, line);
                c += 2;
                while (*c != '"') {
                    if (!*c) fail_msg("line %d: unterminated label value: %s", lineno, line);
                    if (*c == '\\') {
                        c++;
                        if (*c != '\\' && *c != '"' && *c != 'n')
                            fail_msg("line %d: bad escape: %s", lineno, line);
                    }
                    c++;
                }
                c++;
                if (*c == ',') c++;
                else if (*c != '}') fail_msg("line %d: bad label list: %s", lineno, line);
            }
            c++;
        }
        if (*c != ' ') fail_msg("line %d: no space before the value: %s", lineno, line);
        c++;
        if (strcmp(c, "+Inf") && strcmp(c, "-Inf") && strcmp(c, "NaN")) {
            char *end;
            strtod(c, &end);
            if (end == c || *end) fail_msg("line %d: bad value: %s", lineno, line);
        }
        /* the sample belongs to the family of the last TYPE */
        assert_true(nf > 0);
        const char *f = fam[nf - 1];
        size_t fl = strlen(f);
        if (!strcmp(type[nf - 1], "histogram")) {
            if (!(name_len > fl && !memcmp(line, f, fl) &&
                  (ends_with(line, name_len, "_bucket") || ends_with(line, name_len, "_sum") ||
                   ends_with(line, name_len, "_count")) &&
                  name_len - fl <= strlen("_bucket")))
                fail_msg("line %d: not a sample of histogram %s: %s", lineno, f, line);
            if (ends_with(line, name_len, "_bucket") != has_le)
                fail_msg("line %d: le on a non-bucket or bucket without le: %s", lineno, line);
        } else if (name_len != fl || memcmp(line, f, fl)) {
            fail_msg("line %d: not a sample of %s: %s", lineno, f, line);
        }
        /* no series twice */
        size_t key_len = (size_t)(strchr(line, ' ') - line);
        for (int i = 0; i < ns; i++)
            if (strlen(seen[i]) == key_len && !memcmp(seen[i], line, key_len))
                fail_msg("line %d: duplicate series: %s", lineno, line);
        assert_true(ns < MAXS);
        seen[ns] = calloc(1, key_len + 1);
        memcpy(seen[ns++], line, key_len);
    }
    for (int i = 0; i < ns; i++) free(seen[i]);
    free(seen);
    return ns;
}

/* For every histogram series: le strictly increasing and ending in +Inf,
 * cumulative counts non-decreasing, _count == the +Inf bucket, _sum >= 0.
 * Returns how many series were checked. */
static int check_histograms(const char *text) {
    char key[256] = "";
    double prev_le = -1, prev_cnt = 0, inf_cnt = -1;
    int series = 0;
    for (const char *p = text; *p;) {
        const char *eol = strchr(p, '\n');
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(eol - p), p);
        p = eol + 1;
        if (line[0] == '#') continue;
        char *sp = strchr(line, ' ');
        double v = strtod(sp + 1, NULL);
        *sp = '\0';
        char *brace = strchr(line, '{');
        char *suffix = brace ? brace : sp;
        char k[256];
        if (suffix - line > 7 && !memcmp(suffix - 7, "_bucket", 7)) {
            char *le = strstr(line, ",le=\"");
            assert_non_null(le);
            snprintf(k, sizeof k, "%.*s%.*s", (int)(suffix - 7 - line), line, (int)(le - suffix), suffix);
            if (strcmp(k, key)) { /* a new series */
                assert_true(key[0] == '\0' || inf_cnt < 0); /* the last one was closed by _count */
                snprintf(key, sizeof key, "%s", k);
                prev_le = -1;
                prev_cnt = 0;
            }
            double lev = !strncmp(le + 5, "+Inf", 4) ? 1e300 : strtod(le + 5, NULL);
            assert_true(lev > prev_le);
            assert_true(v >= prev_cnt);
            prev_le = lev;
            prev_cnt = v;
            if (lev == 1e300) inf_cnt = v;
        } else if (suffix - line > 4 && !memcmp(suffix - 4, "_sum", 4)) {
            assert_true(v >= 0);
        } else if (suffix - line > 6 && !memcmp(suffix - 6, "_count", 6)) {
            char *close = brace ? strchr(brace, '}') : sp;
            snprintf(k, sizeof k, "%.*s%.*s", (int)(suffix - 6 - line), line,
                     (int)(close - suffix), suffix);
            assert_string_equal(k, key);
            assert_true(inf_cnt >= 0);
            assert_true(v == inf_cnt);
            inf_cnt = -1;
            key[0] = '\0';
            series++;
        }
    }
    assert_true(key[0] == '\0');
    return series;
}

/* ---- tests ------------------------------------------------------------------- */

static void test_escape_label(void **state) {
    (void)state;
    char buf[64];
    assert_int_equal(ampr__metrics_escape_label("fp16", buf, sizeof buf), 4);
    assert_string_equal(buf, "fp16");
    assert_int_equal(ampr__metrics_escape_label("a\\b\"c\nd", buf, sizeof buf), 10);
    assert_string_equal(buf, "a\\\\b\\\"c\\nd");
    /* too small: cut, still terminated, the needed length reported */
    assert_int_equal(ampr__metrics_escape_label("\"\"\"", buf, 4), 6);
    assert_string_equal(buf, "\\\"\\");
    assert_int_equal(ampr__metrics_escape_label("", buf, sizeof buf), 0);
    assert_string_equal(buf, "");
}

static void test_misuse(void **state) {
    (void)state;
    char *text = (char *)"x";
    size_t len = 7;
    assert_int_equal(ampr_metrics_text(NULL, &text, &len), AMPR_ERR_INVALID_ARG);
    assert_null(text);
    assert_int_equal(len, 0);
    assert_int_equal(ampr_metrics_reset(NULL), AMPR_ERR_INVALID_ARG);
    ampr_free(NULL);
    /* a context whose open failed */
    ampr_ctx *bad = NULL;
    assert_int_not_equal(ampr_open("/nonexistent/model.gguf", NULL, &bad), AMPR_OK);
    assert_non_null(bad);
    assert_int_equal(ampr_metrics_text(bad, &text, &len), AMPR_ERR_INVALID_ARG);
    assert_null(text);
    assert_int_equal(ampr_metrics_reset(bad), AMPR_ERR_INVALID_ARG);
    ampr_close(bad);
    ampr_ctx *ctx = open_ok("{\"tiers\": [\"fp16\"]}");
    assert_int_equal(ampr_metrics_text(ctx, NULL, &len), AMPR_ERR_INVALID_ARG);
    /* len is optional */
    assert_int_equal(ampr_metrics_text(ctx, &text, NULL), AMPR_OK);
    ampr_free(text);
    ampr_close(ctx);
}

static void test_fresh_context(void **state) {
    (void)state;
    ampr_ctx *ctx = open_ok(NULL);
    char *t = metrics(ctx);
    check_format(t);
    /* 8 histograms x 3 resident tiers */
    assert_int_equal(check_histograms(t), 8 * 3);
    assert_true(sum_of(t, "ampr_requests_total", "") == 0);
    assert_true(val(t, "ampr_build_info{version=\"" AMPR_VERSION_STRING "\"}") == 1);
    ampr_tier_info ti;
    ampr_tier_info_init(&ti);
    assert_int_equal(ampr_get_tier_info(ctx, AMPR_TIER_INT8, &ti), AMPR_OK);
    assert_true(val(t, "ampr_kv_pages_capacity{tier=\"int8\"}") == ti.kv_pages_total);
    assert_true(val(t, "ampr_kv_cache_bytes{tier=\"int8\"}") == (double)ti.kv_bytes);
    assert_true(val(t, "ampr_weight_bytes{tier=\"int8\"}") == (double)ti.weight_bytes);
    assert_true(val(t, "ampr_kv_pages_used{tier=\"nf4\"}") == 0);
    assert_true(val(t, "ampr_kv_usage_ratio{tier=\"fp16\"}") == 0);
    /* no non-resident tier appears */
    assert_null(strstr(t, "tier=\"f32\""));
    ampr_free(t);
    ampr_close(ctx);
}

typedef struct kv_peek {
    ampr_ctx *ctx;
    double pages_used, ratio, running;
} kv_peek;

/* Streaming callback that reads the gauges while its request runs. */
static int peek_gauges(void *user, const char *piece, size_t len, int32_t id) {
    (void)piece;
    (void)len;
    kv_peek *k = user;
    if (id < 0 || k->running >= 0) return 0;
    char *t = metrics(k->ctx);
    k->pages_used = val(t, "ampr_kv_pages_used{tier=\"int8\"}");
    k->ratio = val(t, "ampr_kv_usage_ratio{tier=\"int8\"}");
    k->running = val(t, "ampr_requests_running{tier=\"int8\"}");
    ampr_free(t);
    return 0;
}

static int cancel_at_3(void *user, const char *piece, size_t len, int32_t id) {
    (void)piece;
    (void)len;
    (void)id;
    return ++*(int *)user >= 3;
}

static void test_counters(void **state) {
    (void)state;
    ampr_ctx *ctx = open_ok(NULL); /* fp16, int8, nf4 */
    ampr_result *r = NULL;

    /* 1. a plain request on int8, 6 tokens, gauges read while it runs */
    kv_peek k = {ctx, -1, -1, -1};
    ampr_gen_params p = greedy(AMPR_TIER_INT8, 6);
    p.fallback = 0;
    p.on_token = peek_gauges;
    p.user = &k;
    assert_int_equal(ampr_generate(ctx, "hello world", AMPR_NUL_TERMINATED, &p, &r), AMPR_OK);
    assert_int_equal(r->n_tokens, 6);
    int32_t n_prompt = r->n_prompt_tokens;
    ampr_result_free(r);
    assert_true(k.running == 1);
    assert_true(k.pages_used >= 1);
    assert_true(k.ratio > 0 && k.ratio <= 1);
    char *t = metrics(ctx);
    assert_true(val(t, "ampr_requests_total{tier=\"int8\",finish=\"length\"}") == 1);
    assert_true(sum_of(t, "ampr_requests_total", "") == 1);
    assert_true(val(t, "ampr_generation_tokens_total{tier=\"int8\"}") == 6);
    assert_true(val(t, "ampr_prompt_tokens_total{tier=\"int8\"}") == n_prompt);
    assert_true(val(t, "ampr_time_to_first_token_seconds_count{tier=\"int8\"}") == 1);
    assert_true(val(t, "ampr_time_to_first_token_seconds_sum{tier=\"int8\"}") > 0);
    assert_true(val(t, "ampr_inter_token_latency_seconds_count{tier=\"int8\"}") == 5);
    assert_true(val(t, "ampr_e2e_request_latency_seconds_count{tier=\"int8\"}") == 1);
    assert_true(val(t, "ampr_e2e_request_latency_seconds_sum{tier=\"int8\"}") >=
                val(t, "ampr_time_to_first_token_seconds_sum{tier=\"int8\"}"));
    assert_true(val(t, "ampr_request_queue_time_seconds_count{tier=\"int8\"}") == 1);
    assert_true(val(t, "ampr_request_prefill_time_seconds_count{tier=\"int8\"}") == 1);
    assert_true(val(t, "ampr_request_decode_time_seconds_count{tier=\"int8\"}") == 1);
    assert_true(val(t, "ampr_request_generation_tokens_sum{tier=\"int8\"}") == 6);
    assert_true(val(t, "ampr_request_generation_tokens_bucket{tier=\"int8\",le=\"5\"}") == 0);
    assert_true(val(t, "ampr_request_generation_tokens_bucket{tier=\"int8\",le=\"10\"}") == 1);
    assert_true(val(t, "ampr_request_prompt_tokens_sum{tier=\"int8\"}") == n_prompt);
    assert_true(sum_of(t, "ampr_route_decisions_total", "") == 0); /* the tier was given */
    assert_true(val(t, "ampr_requests_running{tier=\"int8\"}") == 0);
    assert_true(val(t, "ampr_requests_waiting{tier=\"int8\"}") == 0);
    assert_true(val(t, "ampr_kv_pages_used{tier=\"int8\"}") == 0);
    assert_true(sum_of(t, "ampr_escalations_total", "") == 0);
    assert_true(sum_of(t, "ampr_request_failures_total", "") == 0);
    ampr_free(t);

    /* 2. routing: ampr_route() and an AUTO request count a decision each */
    ampr_route_result rr;
    ampr_route_result_init(&rr);
    assert_int_equal(ampr_route(ctx, "2+2", 3, NULL, 0, &rr), AMPR_OK);
    p = greedy(AMPR_TIER_AUTO, 2);
    p.fallback = 0;
    assert_int_equal(ampr_generate(ctx, "2+2", 3, &p, &r), AMPR_OK);
    ampr_tier routed = r->tier_first;
    assert_int_equal(routed, rr.tier);
    ampr_result_free(r);
    t = metrics(ctx);
    char series[160];
    snprintf(series, sizeof series, "ampr_route_decisions_total{tier=\"%s\"}", ampr_tier_name(routed));
    assert_true(val(t, series) == 2);
    assert_true(sum_of(t, "ampr_route_decisions_total", "") == 2);
    ampr_free(t);

    /* 3. cancellation is a finish, not a failure */
    int calls = 0;
    p = greedy(AMPR_TIER_NF4, 10);
    p.fallback = 0;
    p.on_token = cancel_at_3;
    p.user = &calls;
    assert_int_equal(ampr_generate(ctx, "abc", 3, &p, &r), AMPR_ERR_CANCELLED);
    assert_int_equal(r->n_tokens, 3);
    ampr_result_free(r);
    /* 4. failures: before a tier (prompt too long, bad params), and on one (bad max_tokens) */
    char longp[400];
    memset(longp, 'x', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    for (int i = 0; i < (int)sizeof longp - 1; i += 2) longp[i] = ' ';
    p = greedy(AMPR_TIER_FP16, 4);
    assert_int_equal(ampr_generate(ctx, longp, AMPR_NUL_TERMINATED, &p, &r), AMPR_ERR_PROMPT_TOO_LONG);
    ampr_gen_params bad = p;
    bad.struct_size = 0;
    assert_int_equal(ampr_generate(ctx, "a", 1, &bad, &r), AMPR_ERR_INVALID_ARG);
    p.tier = AMPR_TIER_F32; /* not resident */
    assert_int_equal(ampr_generate(ctx, "a", 1, &p, &r), AMPR_ERR_TIER_UNAVAILABLE);
    t = metrics(ctx);
    check_format(t);
    check_histograms(t);
    assert_true(val(t, "ampr_requests_total{tier=\"nf4\",finish=\"cancelled\"}") == 1);
    assert_true(val(t, "ampr_generation_tokens_total{tier=\"nf4\"}") == 3);
    assert_true(val(t, "ampr_request_failures_total{status=\"prompt_too_long\"}") == 1);
    assert_true(val(t, "ampr_request_failures_total{status=\"invalid_arg\"}") == 1);
    assert_true(val(t, "ampr_request_failures_total{status=\"tier_unavailable\"}") == 1);
    assert_true(val(t, "ampr_request_failures_total{status=\"kv_full\"}") == 0);
    assert_true(val(t, "ampr_request_failures_total{status=\"cancelled\"}") == -1);
    assert_true(sum_of(t, "ampr_request_failures_total", "") == 3);
    /* failures before a tier is chosen are not requests of a tier */
    assert_true(sum_of(t, "ampr_requests_total", "") == 3);
    assert_true(sum_of(t, "ampr_e2e_request_latency_seconds_count", "") == 3);
    ampr_free(t);
    ampr_close(ctx);
}

static void test_kv_full(void **state) {
    (void)state;
    /* 2 pages of 16 tokens: a 40-token request cannot get its pages */
    ampr_ctx *ctx = open_ok("{\"tiers\": [\"fp16\"], \"kv\": {\"arena_tokens\": 32, \"block_size\": 16}}");
    ampr_gen_params p = greedy(AMPR_TIER_FP16, 40);
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(ctx, "abc", 3, &p, &r), AMPR_ERR_KV_FULL);
    char *t = metrics(ctx);
    check_format(t);
    check_histograms(t);
    assert_true(val(t, "ampr_request_failures_total{status=\"kv_full\"}") == 1);
    assert_true(val(t, "ampr_requests_total{tier=\"fp16\",finish=\"error\"}") == 1);
    assert_true(val(t, "ampr_requests_waiting{tier=\"fp16\"}") == 0);
    assert_true(val(t, "ampr_requests_running{tier=\"fp16\"}") == 0);
    assert_true(val(t, "ampr_request_queue_time_seconds_count{tier=\"fp16\"}") == 0);
    assert_true(val(t, "ampr_e2e_request_latency_seconds_count{tier=\"fp16\"}") == 1);
    assert_true(val(t, "ampr_request_generation_tokens_count{tier=\"fp16\"}") == 0);
    assert_true(val(t, "ampr_kv_pages_capacity{tier=\"fp16\"}") == 2);
    ampr_free(t);
    ampr_close(ctx);
}

static void test_forced_kl_escalation(void **state) {
    (void)state;
    /* kl_max 0: the first check (after check_every = 16 tokens) escalates;
     * entropy and repetition are off so that the check is what fires */
    ampr_ctx *ctx = open_ok("{\"tiers\": [\"f32\", \"fp16\"], \"fallback\": {\"kl_max\": 0.0, "
                            "\"entropy_max\": 0, \"repeat_ngram\": 0}}");
    ampr_gen_params p = greedy(AMPR_TIER_FP16, 24);
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(ctx, "hello", 5, &p, &r), AMPR_OK);
    assert_int_equal(r->escalated, 1);
    assert_int_equal(r->escalation_token, 16);
    assert_int_equal(strncmp(r->escalation_reason, "kl-check", 8), 0);
    assert_int_equal(r->tier_first, AMPR_TIER_FP16);
    assert_int_equal(r->tier_final, AMPR_TIER_F32);
    assert_int_equal(r->n_tokens, 24);
    ampr_result_free(r);
    char *t = metrics(ctx);
    check_format(t);
    check_histograms(t);
    assert_true(val(t, "ampr_escalations_total{from_tier=\"fp16\",to_tier=\"f32\",reason=\"kl_check\"}") == 1);
    assert_true(val(t, "ampr_escalations_total{from_tier=\"fp16\",to_tier=\"f32\",reason=\"entropy\"}") == 0);
    assert_true(sum_of(t, "ampr_escalations_total", "") == 1);
    /* the request is fp16's; its tokens are split by the tier producing them */
    assert_true(val(t, "ampr_requests_total{tier=\"fp16\",finish=\"length\"}") == 1);
    assert_true(val(t, "ampr_generation_tokens_total{tier=\"fp16\"}") == 16);
    assert_true(val(t, "ampr_generation_tokens_total{tier=\"f32\"}") == 8);
    assert_true(val(t, "ampr_inter_token_latency_seconds_count{tier=\"fp16\"}") == 15);
    assert_true(val(t, "ampr_inter_token_latency_seconds_count{tier=\"f32\"}") == 8);
    assert_true(val(t, "ampr_time_to_first_token_seconds_count{tier=\"fp16\"}") == 1);
    assert_true(val(t, "ampr_time_to_first_token_seconds_count{tier=\"f32\"}") == 0);
    assert_true(val(t, "ampr_kv_pages_used{tier=\"f32\"}") == 0);
    ampr_free(t);

    /* the config exactly as the brief gives it: some escalation, counted once */
    ampr_close(ctx);
    ctx = open_ok("{\"tiers\": [\"f32\", \"fp16\"], \"fallback\": {\"kl_max\": 0.0}}");
    assert_int_equal(ampr_generate(ctx, "hello", 5, &p, &r), AMPR_OK);
    assert_int_equal(r->escalated, 1);
    print_message("the brief's config escalated by: %s at token %d\n", r->escalation_reason,
                  r->escalation_token);
    const char *label = !strncmp(r->escalation_reason, "kl-check", 8) ? "kl_check"
                        : !strncmp(r->escalation_reason, "entropy", 7) ? "entropy"
                                                                       : "repetition";
    ampr_result_free(r);
    t = metrics(ctx);
    char series[160];
    snprintf(series, sizeof series,
             "ampr_escalations_total{from_tier=\"fp16\",to_tier=\"f32\",reason=\"%s\"}", label);
    assert_true(val(t, series) == 1);
    assert_true(sum_of(t, "ampr_escalations_total", "") == 1);
    ampr_free(t);
    ampr_close(ctx);
}

static void test_entropy_escalation(void **state) {
    (void)state;
    /* any random-weight distribution is above 0.1 nats: escalates at token 1 */
    ampr_ctx *ctx = open_ok("{\"tiers\": [\"f32\", \"int8\"], \"fallback\": {\"entropy_max\": 0.1, "
                            "\"min_tokens\": 1, \"check_every\": 0}}");
    ampr_gen_params p = greedy(AMPR_TIER_INT8, 4);
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(ctx, "hello", 5, &p, &r), AMPR_OK);
    assert_int_equal(r->escalated, 1);
    assert_int_equal(strncmp(r->escalation_reason, "entropy", 7), 0);
    ampr_result_free(r);
    char *t = metrics(ctx);
    assert_true(val(t, "ampr_escalations_total{from_tier=\"int8\",to_tier=\"f32\",reason=\"entropy\"}") == 1);
    assert_true(val(t, "ampr_generation_tokens_total{tier=\"int8\"}") == 1);
    assert_true(val(t, "ampr_generation_tokens_total{tier=\"f32\"}") == 3);
    ampr_free(t);
    ampr_close(ctx);
}

static void test_histograms_and_reset(void **state) {
    (void)state;
    ampr_ctx *ctx = open_ok(NULL);
    const ampr_tier tiers[] = {AMPR_TIER_FP16, AMPR_TIER_INT8, AMPR_TIER_NF4};
    int n_req = 0;
    for (int i = 0; i < 7; i++) {
        ampr_gen_params p = greedy(tiers[i % 3], 1 + 3 * i);
        p.fallback = 0;
        ampr_result *r = NULL;
        assert_int_equal(ampr_generate(ctx, "some words here", AMPR_NUL_TERMINATED, &p, &r), AMPR_OK);
        ampr_result_free(r);
        n_req++;
    }
    char *t = metrics(ctx);
    int samples = check_format(t);
    assert_true(samples > 100);
    assert_int_equal(check_histograms(t), 8 * 3);
    assert_true(sum_of(t, "ampr_e2e_request_latency_seconds_count", "") == n_req);
    assert_true(sum_of(t, "ampr_time_to_first_token_seconds_count", "") == n_req);
    assert_true(sum_of(t, "ampr_request_prompt_tokens_count", "") == n_req);
    assert_true(sum_of(t, "ampr_request_generation_tokens_count", "") == n_req);
    assert_true(sum_of(t, "ampr_e2e_request_latency_seconds_bucket", "le=\"+Inf\"") == n_req);
    assert_true(sum_of(t, "ampr_requests_total", "") == n_req);
    /* 1+4+...+19 tokens, of which one per request is not after another */
    double gen = 0;
    for (int i = 0; i < 7; i++) gen += 1 + 3 * i;
    assert_true(sum_of(t, "ampr_generation_tokens_total", "") == gen);
    assert_true(sum_of(t, "ampr_request_generation_tokens_sum", "") == gen);
    assert_true(sum_of(t, "ampr_inter_token_latency_seconds_count", "") == gen - n_req);
    double cap = val(t, "ampr_kv_pages_capacity{tier=\"nf4\"}");
    ampr_free(t);

    assert_int_equal(ampr_metrics_reset(ctx), AMPR_OK);
    t = metrics(ctx);
    check_format(t);
    assert_int_equal(check_histograms(t), 8 * 3);
    assert_true(sum_of(t, "ampr_requests_total", "") == 0);
    assert_true(sum_of(t, "ampr_e2e_request_latency_seconds_count", "") == 0);
    assert_true(sum_of(t, "ampr_e2e_request_latency_seconds_sum", "") == 0);
    assert_true(sum_of(t, "ampr_generation_tokens_total", "") == 0);
    assert_true(val(t, "ampr_kv_pages_capacity{tier=\"nf4\"}") == cap); /* gauges stay */
    ampr_free(t);
    ampr_close(ctx);
}

/* ---- out of memory ----------------------------------------------------------- */

static atomic_int oom_after; /* allocations left before failing; -1: never fail */

static void *oom_malloc(size_t n, void *user) {
    (void)user;
    if (atomic_load(&oom_after) >= 0 && atomic_fetch_sub(&oom_after, 1) <= 0) return NULL;
    return malloc(n);
}
static void *oom_realloc(void *p, size_t n, void *user) {
    (void)user;
    if (atomic_load(&oom_after) >= 0 && atomic_fetch_sub(&oom_after, 1) <= 0) return NULL;
    return realloc(p, n);
}
static void oom_free(void *p, void *user) {
    (void)user;
    free(p);
}

static void test_out_of_memory(void **state) {
    (void)state;
    atomic_store(&oom_after, -1);
    assert_int_equal(ampr_set_allocator(oom_malloc, oom_realloc, oom_free, NULL), AMPR_OK);
    ampr_ctx *ctx = open_ok("{\"tiers\": [\"fp16\"]}");
    /* the first allocation, then later growths of the buffer, fail */
    for (int k = 0; k < 4; k++) {
        char *text = (char *)"x";
        size_t len = 1;
        atomic_store(&oom_after, k);
        ampr_status st = ampr_metrics_text(ctx, &text, &len);
        atomic_store(&oom_after, -1);
        if (st == AMPR_OK) { /* the text fitted in k buffers */
            assert_true(k > 0);
            ampr_free(text);
            continue;
        }
        assert_int_equal(st, AMPR_ERR_NOMEM);
        assert_null(text);
        assert_int_equal(len, 0);
        assert_non_null(strstr(ampr_errmsg(ctx), "metrics"));
    }
    char *t = metrics(ctx);
    check_format(t);
    ampr_free(t); /* through the hooks */
    ampr_close(ctx);
    assert_int_equal(ampr_set_allocator(NULL, NULL, NULL, NULL), AMPR_OK);
}

/* ---- concurrency ----------------------------------------------------------- */

typedef struct worker {
    ampr_ctx *ctx;
    ampr_tier tier;
    int ok;
} worker;

static atomic_int workers_left;

static void *run_worker(void *arg) {
    worker *w = arg;
    w->ok = 1;
    for (int i = 0; i < 3; i++) {
        ampr_gen_params p = greedy(w->tier, 5);
        p.fallback = 0;
        ampr_result *r = NULL;
        if (ampr_generate(w->ctx, "the quick brown fox", AMPR_NUL_TERMINATED, &p, &r) != AMPR_OK)
            w->ok = 0;
        ampr_result_free(r);
    }
    atomic_fetch_sub(&workers_left, 1);
    return NULL;
}

static void test_concurrent(void **state) {
    (void)state;
    ampr_ctx *ctx = open_ok("{\"threads\": 2}");
    enum { NW = 4 };
    pthread_t th[NW];
    worker w[NW];
    atomic_store(&workers_left, NW);
    for (int i = 0; i < NW; i++) {
        w[i].ctx = ctx;
        w[i].tier = i % 2 ? AMPR_TIER_INT8 : AMPR_TIER_NF4;
        assert_int_equal(pthread_create(&th[i], NULL, run_worker, &w[i]), 0);
    }
    int reads = 0;
    while (atomic_load(&workers_left) > 0 || reads == 0) {
        char *t = metrics(ctx);
        check_histograms(t); /* _count == +Inf even mid-flight */
        assert_true(sum_of(t, "ampr_requests_running", "") <= NW);
        ampr_free(t);
        reads++;
    }
    for (int i = 0; i < NW; i++) {
        pthread_join(th[i], NULL);
        assert_true(w[i].ok);
    }
    char *t = metrics(ctx);
    check_format(t);
    assert_true(sum_of(t, "ampr_requests_total", "finish=\"length\"") == NW * 3);
    assert_true(val(t, "ampr_generation_tokens_total{tier=\"int8\"}") == 2 * 3 * 5);
    assert_true(val(t, "ampr_generation_tokens_total{tier=\"nf4\"}") == 2 * 3 * 5);
    assert_true(sum_of(t, "ampr_inter_token_latency_seconds_count", "") == NW * 3 * 4);
    assert_true(sum_of(t, "ampr_requests_running", "") == 0);
    assert_true(sum_of(t, "ampr_kv_pages_used", "") == 0);
    ampr_free(t);
    ampr_close(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_label),
        cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_fresh_context),
        cmocka_unit_test(test_counters),
        cmocka_unit_test(test_kv_full),
        cmocka_unit_test(test_forced_kl_escalation),
        cmocka_unit_test(test_entropy_escalation),
        cmocka_unit_test(test_histograms_and_reset),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests_name("metrics", tests, setup, teardown);
}
