/*
 * sampler.h -- choosing the next token from logits: greedy, temperature,
 * top-k, top-p, repetition penalty, with a seeded RNG owned by the request.
 */
#ifndef AMPR_SAMPLER_H
#define AMPR_SAMPLER_H

#include "../common/common.h"
#include "../fallback/logits.h"

typedef struct ampr__sampler {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* <= 0: off */
    float top_p;              /* >= 1: off */
    float repetition_penalty; /* 1: off */
    int32_t repetition_last_n;
    uint64_t rng;             /* xorshift64* state */
    int32_t n_vocab;
    /* scratch: candidate (id, value) pairs, sized n_vocab */
    int32_t *ids;
    float *vals;
    /* a nucleus without top-k: 2 x n_vocab sort keys for large nuclei */
    uint64_t *keys;
} ampr__sampler;

ampr_status ampr__sampler_init(ampr__sampler *s, int32_t n_vocab, float temperature,
                               int32_t top_k, float top_p, float repetition_penalty,
                               int32_t repetition_last_n, uint64_t seed, ampr__err *err);
void ampr__sampler_free(ampr__sampler *s);
/* Restart the RNG as ampr__sampler_init did for this seed. */
void ampr__sampler_reseed(ampr__sampler *s, uint64_t seed);

/* Pick the next token. logits (n_vocab) may be modified. history holds the
 * ids seen so far (prompt + generated), used by the repetition penalty. */
int32_t ampr__sample(ampr__sampler *s, float *logits, const int32_t *history, size_t n_history);

/* 1 when ampr__sample is ampr__argmax of the logits as they are (no
 * temperature, no repetition penalty): such a request needs no logits on the
 * host, only their argmax (generate.c asks a device backend for just that). */
int ampr__sampler_is_greedy(const ampr__sampler *s);

/* ampr__argmax (the first index of the largest value): fallback/logits.h */

#endif
