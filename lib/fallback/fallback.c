/*
 * fallback.c -- the error signals (see fallback.h).
 */
#include "fallback.h"
#include "logits.h"

#include <math.h>

void ampr__fallback_defaults(ampr__fallback_config *fc) {
    fc->enabled = 1;
    fc->entropy_max = 4.0f;
    fc->min_tokens = 8;
    fc->repeat_ngram = 4;
    fc->repeat_count = 4;
    fc->repeat_window = 64;
    fc->check_every = 16;
    fc->check_window = 16;
    fc->kl_max = 0.5f;
    fc->restart = 0;
}

float ampr__entropy(const float *logits, int32_t n, float *margin) {
    ampr__logit_stats st;
    ampr__logit_stats_get(logits, n, &st);
    /* H = log z - E[x - max]; p(top1) - p(top2) = (1 - e^(second - max)) / z */
    if (margin) *margin = (float)((1.0 - exp((double)st.second - (double)st.max)) / st.z);
    return (float)(log(st.z) - st.s / st.z);
}

int32_t ampr__repeats(const int32_t *ids, size_t n, int32_t ngram, int32_t window) {
    if (ngram <= 0 || n < (size_t)ngram) return 0;
    size_t from = n > (size_t)window ? n - (size_t)window : 0;
    const int32_t *last = ids + n - (size_t)ngram;
    int32_t count = 0;
    for (size_t i = from; i + (size_t)ngram <= n; i++)
        if (!memcmp(ids + i, last, (size_t)ngram * sizeof *ids)) count++;
    return count;
}
