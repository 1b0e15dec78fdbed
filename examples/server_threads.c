/*
 * server_threads.c -- a small multi-threaded "service": one context, N
 * requests served at once by N threads (a context is read-only after open,
 * and each request owns its own state, so no locking is needed around
 * ampr_generate). Results are collected per request and printed in request
 * order once all threads are done.
 *
 *   build/examples/server_threads [MODEL] [N_THREADS]
 *
 * To show that concurrency does not change answers, every request is greedy
 * and is then run again alone; the program fails if any concurrent answer
 * differs from its sequential rerun. Config from $AMPR_CONFIG (common.h).
 * Exits 0 on success, 1 on any failure.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "common.h"

static const char *const k_prompts[] = {
    "Once upon a time",
    "Lily and Ben went to the park",
    "The little dog was very sad because",
    "One day, a big bear found a shiny",
    "Tom had a red ball",
    "Sara said",
    "The sun was hot and",
    "Mom and dad",
};
#define N_PROMPTS (sizeof k_prompts / sizeof k_prompts[0])

struct request {
    ampr_ctx *ctx;          /* shared by all threads */
    const char *prompt;
    ampr_status status;
    ampr_result *result;    /* owned by this request until freed */
    char errmsg[256];       /* ampr_errmsg is per thread: copy it on the thread that failed */
};

static ampr_status run_one(struct request *r) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.max_tokens = 48;
    p.temperature = 0.0f;
    r->result = NULL;
    r->status = ampr_generate(r->ctx, r->prompt, AMPR_NUL_TERMINATED, &p, &r->result);
    if (r->status != AMPR_OK)
        snprintf(r->errmsg, sizeof r->errmsg, "%s", ampr_errmsg(r->ctx));
    return r->status;
}

static void *worker(void *arg) {
    run_one(arg);
    return NULL;
}

int main(int argc, char **argv) {
    const char *model = example_model(argc, argv);
    int n = argc > 2 ? atoi(argv[2]) : 4;
    if (n < 1 || n > 64) {
        fprintf(stderr, "server_threads: N_THREADS must be 1..64\n");
        return 2;
    }
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(model, example_config(), &ctx);
    if (st != AMPR_OK) {
        fprintf(stderr, "server_threads: cannot open %s: %s\n", model, ampr_errmsg(ctx));
        ampr_close(ctx);
        return 1;
    }

    struct request *reqs = calloc((size_t)n, sizeof *reqs);
    pthread_t *threads = calloc((size_t)n, sizeof *threads);
    if (!reqs || !threads) { fprintf(stderr, "server_threads: out of memory\n"); return 1; }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        reqs[i].ctx = ctx;
        reqs[i].prompt = k_prompts[(size_t)i % N_PROMPTS];
        if (pthread_create(&threads[i], NULL, worker, &reqs[i]) != 0) {
            fprintf(stderr, "server_threads: cannot start thread %d\n", i);
            return 1;
        }
    }
    for (int i = 0; i < n; i++) pthread_join(threads[i], NULL);

    /* every thread has finished: print in request order, then check */
    for (int i = 0; i < n; i++) {
        struct request *r = &reqs[i];
        if (r->status != AMPR_OK) {
            printf("[%d] FAILED: %s (%s)\n", i, r->errmsg, ampr_status_name(r->status));
            rc = 1;
            continue;
        }
        printf("[%d] (%s, %zu tokens) %s%.*s\n", i, ampr_tier_name(r->result->tier_final),
               r->result->n_tokens, r->prompt, (int)r->result->text_len, r->result->text);
    }
    for (int i = 0; i < n && rc == 0; i++) {
        struct request alone = {.ctx = ctx, .prompt = reqs[i].prompt};
        if (run_one(&alone) != AMPR_OK) {
            fprintf(stderr, "[%d] rerun failed: %s\n", i, alone.errmsg);
            rc = 1;
        } else if (alone.result->n_tokens != reqs[i].result->n_tokens ||
                   memcmp(alone.result->tokens, reqs[i].result->tokens,
                          alone.result->n_tokens * sizeof(int32_t)) != 0) {
            fprintf(stderr, "[%d] concurrent and sequential answers differ\n", i);
            rc = 1;
        }
        ampr_result_free(alone.result);
    }
    if (rc == 0) fprintf(stderr, "%d concurrent requests match their sequential reruns\n", n);
    for (int i = 0; i < n; i++) ampr_result_free(reqs[i].result);
    free(reqs);
    free(threads);
    ampr_close(ctx);
    return rc;
}
