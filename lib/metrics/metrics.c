/*
 * metrics.c -- recording into the atomic counters and histograms of
 * metrics.h, and writing them out as Prometheus text (format 0.0.4).
 *
 * Names follow Prometheus conventions: the ampr_ prefix, base units
 * (seconds, bytes, tokens), _total on counters, a ratio in [0,1] rather than
 * a percentage. The list mirrors the request-level metrics of vLLM where they
 * apply to a single-process, several-tier library (queue time is the wait
 * for KV pages; escalations take the place of preemptions).
 */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define RELAXED memory_order_relaxed

static const char *const k_finish_names[AMPR__MFINISH_COUNT] = {"length", "eos", "stop",
                                                                "cancelled", "context", "error"};
static const char *const k_reason_names[AMPR__MREASON_COUNT] = {"entropy", "repetition", "kl_check",
                                                                "nonfinite", "other"};

/* ---- histogram kinds ------------------------------------------------------ */

/* Upper bounds in storage units (ns for times, tokens for sizes), ascending,
 * ended by 0. Times span 0.1 ms .. 10 min; sizes a 1-2-5 series. */
#define MS(x) ((uint64_t)(x) * 1000000u)
#define US(x) ((uint64_t)(x) * 1000u)
static const uint64_t k_bounds_ttft[] = {US(500), MS(1), MS(5), MS(10), MS(25), MS(50), MS(100),
                                         MS(250), MS(500), MS(1000), MS(2500), MS(5000),
                                         MS(10000), MS(30000), MS(60000), 0};
static const uint64_t k_bounds_itl[] = {US(100), US(250), US(500), MS(1), MS(2), MS(5), MS(10),
                                        MS(20), MS(50), MS(100), MS(200), MS(500), MS(1000),
                                        MS(2500), MS(5000), 0};
static const uint64_t k_bounds_long[] = {MS(10), MS(25), MS(50), MS(100), MS(250), MS(500),
                                         MS(1000), MS(2500), MS(5000), MS(10000), MS(30000),
                                         MS(60000), MS(120000), MS(300000), MS(600000), 0};
static const uint64_t k_bounds_queue[] = {US(100), MS(1), MS(10), MS(100), MS(500), MS(1000),
                                          MS(2500), MS(5000), MS(10000), MS(30000), MS(60000), 0};
static const uint64_t k_bounds_tokens[] = {1,    2,    5,     10,    20,    50,     100,
                                           200,  500,  1000,  2000,  5000,  10000,  20000,
                                           50000, 100000, 200000, 500000, 1000000, 0};
#undef MS
#undef US
#define FITS(b) (sizeof(b) / sizeof(b[0]) - 1 <= AMPR__MH_MAX_BUCKETS)
_Static_assert(FITS(k_bounds_ttft) && FITS(k_bounds_itl) && FITS(k_bounds_long) &&
                   FITS(k_bounds_queue) && FITS(k_bounds_tokens),
               "raise AMPR__MH_MAX_BUCKETS");
#undef FITS
_Static_assert(sizeof(ampr__mhistogram) == (AMPR__MH_MAX_BUCKETS + 2) * sizeof(_Atomic uint64_t),
               "zero_counters() treats a histogram as a flat array of counters");

typedef struct hist_kind {
    const char *name, *help;
    const uint64_t *bounds;
    double unit; /* storage units per exposed unit: 1e9 for ns -> s, 1 for tokens */
} hist_kind;

static const hist_kind k_hist[AMPR__MH_COUNT] = {
    [AMPR__MH_TTFT] = {"ampr_time_to_first_token_seconds",
                       "Time from the start of ampr_generate() to the first output token, by the "
                       "tier the request started on.",
                       k_bounds_ttft, 1e9},
    [AMPR__MH_ITL] = {"ampr_inter_token_latency_seconds",
                      "Time between successive output tokens of a request (time per output token), "
                      "by the tier that produced the later token.",
                      k_bounds_itl, 1e9},
    [AMPR__MH_E2E] = {"ampr_e2e_request_latency_seconds",
                      "Time from the start to the end of ampr_generate(), by the tier the request "
                      "started on.",
                      k_bounds_long, 1e9},
    [AMPR__MH_QUEUE] = {"ampr_request_queue_time_seconds",
                        "Time a request waited for free KV pages in its tier's arena.",
                        k_bounds_queue, 1e9},
    [AMPR__MH_PREFILL] = {"ampr_request_prefill_time_seconds",
                          "Time from reserving KV pages to the first output token.",
                          k_bounds_long, 1e9},
    [AMPR__MH_DECODE] = {"ampr_request_decode_time_seconds",
                         "Time from the first to the last output token of a request.",
                         k_bounds_long, 1e9},
    [AMPR__MH_PROMPT_TOK] = {"ampr_request_prompt_tokens",
                             "Prompt tokens per request (BOS included).", k_bounds_tokens, 1},
    [AMPR__MH_GEN_TOK] = {"ampr_request_generation_tokens",
                          "Output tokens per finished request (as in ampr_result.n_tokens).",
                          k_bounds_tokens, 1},
};

static void hist_observe(ampr__mhistogram *h, const uint64_t *bounds, uint64_t v) {
    size_t i = 0;
    while (bounds[i] && v > bounds[i]) i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, RELAXED);
    atomic_fetch_add_explicit(&h->sum, v, RELAXED);
}

static uint64_t ms_to_ns(double ms) {
    if (!(ms > 0)) return 0; /* also NaN */
    if (ms > 1.8e13) return UINT64_MAX / 2;
    return (uint64_t)(ms * 1e6 + 0.5);
}

static int tier_ok(ampr_tier t) { return (unsigned)t < AMPR_TIER_COUNT; }

/* ---- init / reset --------------------------------------------------------- */

static void zero_array(_Atomic uint64_t *a, size_t n, int init) {
    for (size_t i = 0; i < n; i++) {
        if (init) atomic_init(&a[i], 0);
        else atomic_store_explicit(&a[i], 0, RELAXED);
    }
}

/* Each counter array, seen as a flat array of its elements. */
#define ZERO(field, init) \
    zero_array((_Atomic uint64_t *)(void *)&(field), sizeof(field) / sizeof(_Atomic uint64_t), init)

static void zero_counters(ampr__metrics *m, int init) {
    ZERO(m->requests, init);
    ZERO(m->failures, init);
    ZERO(m->routes, init);
    ZERO(m->escalations, init);
    ZERO(m->prompt_tokens, init);
    ZERO(m->generation_tokens, init);
    ZERO(m->hist, init); /* ampr__mhistogram holds only _Atomic uint64_t */
}
#undef ZERO

void ampr__metrics_init(ampr__metrics *m) {
    zero_counters(m, 1);
    for (int t = 0; t < AMPR_TIER_COUNT; t++) {
        atomic_init(&m->waiting[t], 0);
        atomic_init(&m->running[t], 0);
    }
}

void ampr__metrics_reset(ampr__metrics *m) { zero_counters(m, 0); }

/* ---- recording ------------------------------------------------------------ */

void ampr__metrics_route(ampr__metrics *m, ampr_tier tier) {
    if (tier_ok(tier)) atomic_fetch_add_explicit(&m->routes[tier], 1, RELAXED);
}

void ampr__metrics_failure(ampr__metrics *m, ampr_status st) {
    if (st == AMPR_OK || st == AMPR_ERR_CANCELLED) return;
    unsigned i = (unsigned)st < AMPR__MSTATUS_COUNT ? (unsigned)st : AMPR_ERR_INTERNAL;
    atomic_fetch_add_explicit(&m->failures[i], 1, RELAXED);
}

ampr__metrics_req ampr__metrics_req_begin(double t0_ms) {
    ampr__metrics_req r;
    memset(&r, 0, sizeof r);
    r.t0 = t0_ms;
    r.tier = AMPR_TIER_AUTO;
    return r;
}

void ampr__metrics_req_start(ampr__metrics *m, ampr__metrics_req *r, ampr_tier tier) {
    if (!tier_ok(tier) || tier == AMPR_TIER_AUTO) return;
    r->tier = tier;
    atomic_fetch_add_explicit(&m->waiting[tier], 1, RELAXED);
}

void ampr__metrics_req_scheduled(ampr__metrics *m, ampr__metrics_req *r) {
    if (r->tier == AMPR_TIER_AUTO || r->scheduled) return;
    r->scheduled = 1;
    r->t_sched = ampr__now_ms();
    atomic_fetch_sub_explicit(&m->waiting[r->tier], 1, RELAXED);
    atomic_fetch_add_explicit(&m->running[r->tier], 1, RELAXED);
    hist_observe(&m->hist[AMPR__MH_QUEUE][r->tier], k_bounds_queue, ms_to_ns(r->t_sched - r->t0));
}

void ampr__metrics_req_token(ampr__metrics *m, ampr__metrics_req *r, ampr_tier tier) {
    if (r->tier == AMPR_TIER_AUTO || !tier_ok(tier)) return;
    double now = ampr__now_ms();
    atomic_fetch_add_explicit(&m->generation_tokens[tier], 1, RELAXED);
    if (r->t_first == 0) {
        r->t_first = now;
        hist_observe(&m->hist[AMPR__MH_TTFT][r->tier], k_bounds_ttft, ms_to_ns(now - r->t0));
    } else {
        hist_observe(&m->hist[AMPR__MH_ITL][tier], k_bounds_itl, ms_to_ns(now - r->t_last));
    }
    r->t_last = now;
}

static int reason_index(const char *why) {
    if (!strncmp(why, "entropy", 7)) return 0;
    if (!strncmp(why, "repetition", 10)) return 1;
    if (!strncmp(why, "kl-check", 8) || !strncmp(why, "kl_check", 8)) return 2;
    if (!strncmp(why, "non-finite", 10)) return 3;
    return 4;
}

void ampr__metrics_req_end(ampr__metrics *m, ampr__metrics_req *r, ampr_status st,
                           ampr_finish finish, int32_t n_prompt, int32_t n_generated,
                           ampr_tier tier_final, const char *escalation_reason) {
    ampr_tier t = r->tier;
    if (t == AMPR_TIER_AUTO) return;
    double now = ampr__now_ms();
    if (r->scheduled) atomic_fetch_sub_explicit(&m->running[t], 1, RELAXED);
    else atomic_fetch_sub_explicit(&m->waiting[t], 1, RELAXED);
    r->tier = AMPR_TIER_AUTO; /* ended: a second call records nothing */

    int f = (st == AMPR_OK || st == AMPR_ERR_CANCELLED) ? (int)finish : (int)AMPR_FINISH_ERROR;
    if (f < 0 || f >= AMPR__MFINISH_COUNT) f = AMPR_FINISH_ERROR;
    atomic_fetch_add_explicit(&m->requests[t][f], 1, RELAXED);
    if (n_prompt > 0) {
        atomic_fetch_add_explicit(&m->prompt_tokens[t], (uint64_t)n_prompt, RELAXED);
        hist_observe(&m->hist[AMPR__MH_PROMPT_TOK][t], k_bounds_tokens, (uint64_t)n_prompt);
    }
    hist_observe(&m->hist[AMPR__MH_E2E][t], k_bounds_long, ms_to_ns(now - r->t0));
    if (f != AMPR_FINISH_ERROR)
        hist_observe(&m->hist[AMPR__MH_GEN_TOK][t], k_bounds_tokens,
                     n_generated > 0 ? (uint64_t)n_generated : 0);
    if (r->t_first > 0) {
        hist_observe(&m->hist[AMPR__MH_PREFILL][t], k_bounds_long, ms_to_ns(r->t_first - r->t_sched));
        hist_observe(&m->hist[AMPR__MH_DECODE][t], k_bounds_long, ms_to_ns(r->t_last - r->t_first));
    }
    /* a reason with no change of tier is a skipped escalation, not counted */
    if (escalation_reason && escalation_reason[0] && tier_ok(tier_final) && tier_final != t)
        atomic_fetch_add_explicit(&m->escalations[t][tier_final][reason_index(escalation_reason)], 1,
                                  RELAXED);
}

/* ---- text building -------------------------------------------------------- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_reserve(sbuf *b, size_t more) {
    if (b->oom || b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 8192;
    while (cap < b->len + more + 1) cap *= 2;
    char *s = ampr__realloc(b->s, cap);
    if (!s) { b->oom = 1; return; }
    b->s = s;
    b->cap = cap;
}

static void sb_printf(sbuf *b, const char *fmt, ...) AMPR__PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return; }
    sb_reserve(b, (size_t)n);
    if (b->oom) return;
    if ((size_t)n < sizeof tmp) {
        memcpy(b->s + b->len, tmp, (size_t)n + 1);
    } else {
        va_start(ap, fmt);
        vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

size_t ampr__metrics_escape_label(const char *s, char *buf, size_t cap) {
    size_t n = 0;
    for (; *s; s++) {
        char esc = *s == '\\' ? '\\' : *s == '"' ? '"' : *s == '\n' ? 'n' : 0;
        if (esc) {
            if (n + 1 < cap) buf[n] = '\\';
            n++;
        }
        if (n + 1 < cap) buf[n] = esc ? esc : *s;
        n++;
    }
    if (cap) buf[n < cap ? n : cap - 1] = '\0';
    return n;
}

/* A label value, escaped; values here are short, longer ones are cut. */
static const char *lv(const char *s, char buf[128]) {
    ampr__metrics_escape_label(s, buf, 128);
    return buf;
}

/* The shortest decimal that reads back as the same double ("0.001", "20",
 * "2.5e-05"): Prometheus parses any Go float syntax. */
static void fmt_double(double v, char out[32]) {
    if (v == (double)(int64_t)v && v > -1e15 && v < 1e15) { /* integers as integers */
        snprintf(out, 32, "%lld", (long long)v);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(out, 32, "%.*g", p, v);
        if (strtod(out, NULL) == v) return;
    }
}

static void header(sbuf *b, const char *name, const char *type, const char *help) {
    /* HELP text escapes \ and newline; ours has neither, but stay safe */
    sb_printf(b, "# HELP %s ", name);
    for (const char *p = help; *p; p++) {
        if (*p == '\\') sb_printf(b, "\\\\");
        else if (*p == '\n') sb_printf(b, "\\n");
        else sb_printf(b, "%c", *p);
    }
    sb_printf(b, "\n# TYPE %s %s\n", name, type);
}

static uint64_t ld(const _Atomic uint64_t *a) { return atomic_load_explicit(a, RELAXED); }

/* One counter per resident tier: name{tier="..."} value */
static void per_tier_counter(sbuf *b, const char *name, const char *help,
                             const _Atomic uint64_t *v, const ampr__metrics_tier_gauges *g, int n) {
    char lb[128];
    header(b, name, "counter", help);
    for (int i = 0; i < n; i++)
        sb_printf(b, "%s{tier=\"%s\"} %llu\n", name, lv(ampr_tier_name(g[i].tier), lb),
                  (unsigned long long)ld(&v[g[i].tier]));
}

static void per_tier_gauge(sbuf *b, const char *name, const char *help, const double *v,
                           const ampr__metrics_tier_gauges *g, int n) {
    char lb[128], num[32];
    header(b, name, "gauge", help);
    for (int i = 0; i < n; i++) {
        fmt_double(v[i], num);
        sb_printf(b, "%s{tier=\"%s\"} %s\n", name, lv(ampr_tier_name(g[i].tier), lb), num);
    }
}

static void histogram(sbuf *b, const ampr__metrics *m, ampr__mhist kind,
                      const ampr__metrics_tier_gauges *g, int n) {
    const hist_kind *k = &k_hist[kind];
    char lb[128], num[32];
    header(b, k->name, "histogram", k->help);
    for (int i = 0; i < n; i++) {
        const ampr__mhistogram *h = &m->hist[kind][g[i].tier];
        const char *tier = lv(ampr_tier_name(g[i].tier), lb);
        uint64_t cum = 0;
        size_t j = 0;
        for (; k->bounds[j]; j++) {
            cum += ld(&h->bucket[j]);
            fmt_double((double)k->bounds[j] / k->unit, num);
            sb_printf(b, "%s_bucket{tier=\"%s\",le=\"%s\"} %llu\n", k->name, tier, num,
                      (unsigned long long)cum);
        }
        cum += ld(&h->bucket[j]);
        sb_printf(b, "%s_bucket{tier=\"%s\",le=\"+Inf\"} %llu\n", k->name, tier,
                  (unsigned long long)cum);
        fmt_double((double)ld(&h->sum) / k->unit, num);
        sb_printf(b, "%s_sum{tier=\"%s\"} %s\n", k->name, tier, num);
        sb_printf(b, "%s_count{tier=\"%s\"} %llu\n", k->name, tier, (unsigned long long)cum);
    }
}

static int resident(const ampr__metrics_tier_gauges *g, int n, int tier) {
    for (int i = 0; i < n; i++)
        if ((int)g[i].tier == tier) return 1;
    return 0;
}

ampr_status ampr__metrics_expose(const ampr__metrics *m, const ampr__metrics_tier_gauges *g,
                                 int n, char **out, size_t *len, ampr__err *err) {
    sbuf b = {0};
    char lb[128], lb2[128];
    double v[AMPR_TIER_COUNT] = {0};
    if (n > AMPR_TIER_COUNT) n = AMPR_TIER_COUNT;

    header(&b, "ampr_build_info", "gauge", "Always 1; the version of libampr that is loaded.");
    sb_printf(&b, "ampr_build_info{version=\"%s\"} 1\n", lv(AMPR_VERSION_STRING, lb));

    /* requests and their outcome */
    header(&b, "ampr_requests_total", "counter",
           "Requests that reached a tier, by the tier they started on and how they finished "
           "(error: the call failed).");
    for (int i = 0; i < n; i++)
        for (int f = 0; f < AMPR__MFINISH_COUNT; f++)
            sb_printf(&b, "ampr_requests_total{tier=\"%s\",finish=\"%s\"} %llu\n",
                      lv(ampr_tier_name(g[i].tier), lb), k_finish_names[f],
                      (unsigned long long)ld(&m->requests[g[i].tier][f]));
    header(&b, "ampr_request_failures_total", "counter",
           "Calls of ampr_generate() that failed, by status (cancellations are not failures).");
    for (int s = 1; s < AMPR__MSTATUS_COUNT; s++) {
        uint64_t c = ld(&m->failures[s]);
        if (!c && s != AMPR_ERR_KV_FULL) continue; /* KV_FULL: the one worth alerting on */
        const char *name = ampr_status_name((ampr_status)s);
        if (!strncmp(name, "ERR_", 4)) name += 4;
        char low[64];
        size_t k = 0;
        for (; name[k] && k + 1 < sizeof low; k++)
            low[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] - 'A' + 'a' : name[k]);
        low[k] = '\0';
        sb_printf(&b, "ampr_request_failures_total{status=\"%s\"} %llu\n", lv(low, lb),
                  (unsigned long long)c);
    }
    per_tier_counter(&b, "ampr_route_decisions_total",
                     "Tiers chosen by the router (ampr_route(), or ampr_generate() with "
                     "AMPR_TIER_AUTO).",
                     m->routes, g, n);
    header(&b, "ampr_escalations_total", "counter",
           "Requests that moved from a lower tier to the top tier during generation, by reason.");
    for (int from = 0; from < AMPR_TIER_COUNT; from++)
        for (int to = 0; to < AMPR_TIER_COUNT; to++)
            for (int r = 0; r < AMPR__MREASON_COUNT; r++) {
                uint64_t c = ld(&m->escalations[from][to][r]);
                int usual = n > 1 && to == (int)g[0].tier && from != to && resident(g, n, from) &&
                            r != AMPR__MREASON_COUNT - 1;
                if (!c && !usual) continue;
                sb_printf(&b,
                          "ampr_escalations_total{from_tier=\"%s\",to_tier=\"%s\",reason=\"%s\"} "
                          "%llu\n",
                          lv(ampr_tier_name((ampr_tier)from), lb), lv(ampr_tier_name((ampr_tier)to), lb2),
                          k_reason_names[r], (unsigned long long)c);
            }

    /* tokens */
    per_tier_counter(&b, "ampr_prompt_tokens_total",
                     "Prompt tokens of requests that reached a tier, by the tier they started on.",
                     m->prompt_tokens, g, n);
    per_tier_counter(&b, "ampr_generation_tokens_total",
                     "Output tokens, by the tier that produced them (tokens a fallback restart "
                     "discards included).",
                     m->generation_tokens, g, n);

    /* latency and size distributions */
    for (int k = 0; k < AMPR__MH_COUNT; k++) histogram(&b, m, (ampr__mhist)k, g, n);

    /* gauges */
    for (int i = 0; i < n; i++)
        v[i] = (double)atomic_load_explicit(&m->running[g[i].tier], RELAXED);
    per_tier_gauge(&b, "ampr_requests_running", "Requests holding KV pages and generating.", v, g, n);
    for (int i = 0; i < n; i++)
        v[i] = (double)atomic_load_explicit(&m->waiting[g[i].tier], RELAXED);
    per_tier_gauge(&b, "ampr_requests_waiting", "Requests waiting for free KV pages.", v, g, n);
    for (int i = 0; i < n; i++) v[i] = (double)g[i].kv_pages_used;
    per_tier_gauge(&b, "ampr_kv_pages_used", "KV-cache pages held by running requests.", v, g, n);
    for (int i = 0; i < n; i++) v[i] = (double)g[i].kv_pages_total;
    per_tier_gauge(&b, "ampr_kv_pages_capacity", "KV-cache pages in the tier's arena (used + free).", v, g, n);
    for (int i = 0; i < n; i++)
        v[i] = g[i].kv_pages_total > 0 ? (double)g[i].kv_pages_used / g[i].kv_pages_total : 0.0;
    per_tier_gauge(&b, "ampr_kv_usage_ratio", "Fraction of the tier's KV-cache pages in use (0..1).",
                   v, g, n);
    for (int i = 0; i < n; i++) v[i] = (double)g[i].kv_bytes;
    per_tier_gauge(&b, "ampr_kv_cache_bytes", "Bytes of the tier's KV-cache arena.", v, g, n);
    for (int i = 0; i < n; i++) v[i] = (double)g[i].weight_bytes;
    per_tier_gauge(&b, "ampr_weight_bytes", "Resident bytes of the tier's weights.", v, g, n);

    if (b.oom || !b.s) {
        ampr__free(b.s);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for the metrics text");
    }
    *out = b.s;
    if (len) *len = b.len;
    return AMPR_OK;
}
