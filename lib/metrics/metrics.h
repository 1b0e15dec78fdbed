/*
 * metrics.h -- counters, gauges and fixed-bucket histograms for one context,
 * and their Prometheus text exposition (format 0.0.4).
 *
 * Recording is lock-free: every number is a relaxed 64-bit atomic, so a
 * request on one thread never waits for another's bookkeeping, and the cost
 * per generated token is one clock read and a few atomic adds. Histograms
 * keep per-bucket (not cumulative) counts; the exposition accumulates them
 * and derives _count from the buckets, so _count always equals the +Inf
 * bucket even while other threads are observing. Times are stored as integer
 * nanoseconds and exposed in seconds.
 *
 * Labelling rule: metrics about a whole request (requests, prompt tokens,
 * TTFT, queue/prefill/decode/e2e times, requests waiting/running) carry the
 * tier the request started on; metrics about single tokens (generation
 * tokens, inter-token latency) carry the tier that produced the token, which
 * differs after an escalation.
 *
 * This module knows nothing of struct ampr_ctx: generate.c and api.c call the
 * recording functions, and api.c hands the per-tier gauges it reads from the
 * arenas (ampr__metrics_tier_gauges) to ampr__metrics_expose().
 */
#ifndef AMPR_METRICS_H
#define AMPR_METRICS_H

#include <stdatomic.h>

#include "../common/common.h"

/* Bucket counts per histogram kind (upper bounds live in metrics.c). */
#define AMPR__MH_MAX_BUCKETS 20

typedef enum ampr__mhist {
    AMPR__MH_TTFT = 0,    /* ampr_time_to_first_token_seconds */
    AMPR__MH_ITL,         /* ampr_inter_token_latency_seconds */
    AMPR__MH_E2E,         /* ampr_e2e_request_latency_seconds */
    AMPR__MH_QUEUE,       /* ampr_request_queue_time_seconds */
    AMPR__MH_PREFILL,     /* ampr_request_prefill_time_seconds */
    AMPR__MH_DECODE,      /* ampr_request_decode_time_seconds */
    AMPR__MH_PROMPT_TOK,  /* ampr_request_prompt_tokens */
    AMPR__MH_GEN_TOK,     /* ampr_request_generation_tokens */
    AMPR__MH_COUNT
} ampr__mhist;

/* Escalation reasons: label values entropy, repetition, kl_check, nonfinite,
 * and other (a reason text this module does not recognise; never expected). */
#define AMPR__MREASON_COUNT 5
/* ampr_finish values, AMPR_FINISH_LENGTH .. AMPR_FINISH_ERROR. */
#define AMPR__MFINISH_COUNT 6
/* Statuses counted by ampr_request_failures_total (0 .. AMPR_ERR_INTERNAL;
 * anything larger is counted as AMPR_ERR_INTERNAL). */
#define AMPR__MSTATUS_COUNT (AMPR_ERR_INTERNAL + 1)

typedef struct ampr__mhistogram {
    _Atomic uint64_t bucket[AMPR__MH_MAX_BUCKETS + 1]; /* last one: above every bound */
    _Atomic uint64_t sum;                              /* ns for times, tokens for sizes */
} ampr__mhistogram;

typedef struct ampr__metrics {
    /* counters, indexed by ampr_tier */
    _Atomic uint64_t requests[AMPR_TIER_COUNT][AMPR__MFINISH_COUNT];
    _Atomic uint64_t failures[AMPR__MSTATUS_COUNT];
    _Atomic uint64_t routes[AMPR_TIER_COUNT];
    _Atomic uint64_t escalations[AMPR_TIER_COUNT][AMPR_TIER_COUNT][AMPR__MREASON_COUNT];
    _Atomic uint64_t prompt_tokens[AMPR_TIER_COUNT];
    _Atomic uint64_t generation_tokens[AMPR_TIER_COUNT];
    ampr__mhistogram hist[AMPR__MH_COUNT][AMPR_TIER_COUNT];
    /* gauges (live; ampr__metrics_reset leaves them alone) */
    _Atomic int64_t waiting[AMPR_TIER_COUNT];
    _Atomic int64_t running[AMPR_TIER_COUNT];
} ampr__metrics;

/* The bookkeeping of one request, owned by the request (no sharing). */
typedef struct ampr__metrics_req {
    double t0;          /* ms, when ampr_generate() began */
    double t_sched;     /* ms, when the KV pages were reserved (0: not yet) */
    double t_first;     /* ms, when the first token was produced (0: none yet) */
    double t_last;      /* ms, when the latest token was produced */
    ampr_tier tier;     /* the tier it started on; AMPR_TIER_AUTO before start */
    int scheduled;
} ampr__metrics_req;

/* Gauges read from a resident tier at exposition time. */
typedef struct ampr__metrics_tier_gauges {
    ampr_tier tier;
    uint64_t weight_bytes;
    uint64_t kv_bytes;
    int32_t kv_pages_used;
    int32_t kv_pages_total;
} ampr__metrics_tier_gauges;

/* Zero every counter and gauge (a freshly calloc'ed struct needs it too:
 * atomics are initialised through atomic_init, not by their bytes). */
void ampr__metrics_init(ampr__metrics *m);
/* Zero counters and histograms; the waiting/running gauges stay. */
void ampr__metrics_reset(ampr__metrics *m);

/* ---- recording (all thread-safe, none fails) ---------------------------- */

/* The router chose `tier` (ampr_route() or ampr_generate() with AUTO). */
void ampr__metrics_route(ampr__metrics *m, ampr_tier tier);
/* A call of ampr_generate() failed with st (not OK, not CANCELLED). */
void ampr__metrics_failure(ampr__metrics *m, ampr_status st);

/* A request that began at t0_ms (ampr__now_ms()); nothing recorded yet. */
ampr__metrics_req ampr__metrics_req_begin(double t0_ms);
/* The request has its tier and starts waiting for KV pages. */
void ampr__metrics_req_start(ampr__metrics *m, ampr__metrics_req *r, ampr_tier tier);
/* Its KV pages are reserved: waiting -> running, queue time observed. */
void ampr__metrics_req_scheduled(ampr__metrics *m, ampr__metrics_req *r);
/* `tier` produced one output token: TTFT (first) or inter-token latency. */
void ampr__metrics_req_token(ampr__metrics *m, ampr__metrics_req *r, ampr_tier tier);
/* The request is over (whatever st is). Does nothing unless started.
 * escalation_reason is generate.c's text ("entropy (...)", "repetition (...)",
 * "kl-check (...)") or "" when the request stayed on its tier; tier_final is
 * the tier it ended on. */
void ampr__metrics_req_end(ampr__metrics *m, ampr__metrics_req *r, ampr_status st,
                           ampr_finish finish, int32_t n_prompt, int32_t n_generated,
                           ampr_tier tier_final, const char *escalation_reason);

/* ---- exposition ----------------------------------------------------------- */

/* Prometheus text format 0.0.4 for the n resident tiers in g (top first).
 * *out is NUL-terminated, allocated with ampr__malloc; *len its length. */
ampr_status ampr__metrics_expose(const ampr__metrics *m, const ampr__metrics_tier_gauges *g,
                                 int n, char **out, size_t *len, ampr__err *err);

/* Escape a label value (\ -> \\, " -> \", newline -> \n) into buf of cap
 * bytes, NUL-terminated; returns the length it needs (like snprintf). */
size_t ampr__metrics_escape_label(const char *s, char *buf, size_t cap);

#endif
