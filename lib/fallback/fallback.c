/*
 * fallback.c -- the error signals (see fallback.h).
 */
#include "fallback.h"

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
    float mx = logits[0];
    for (int32_t i = 1; i < n; i++) mx = logits[i] > mx ? logits[i] : mx;
    double z = 0, s = 0, p1 = 0, p2 = 0;
    for (int32_t i = 0; i < n; i++) {
        double e = exp((double)(logits[i] - mx));
        z += e;
        s += e * (double)(logits[i] - mx);
        if (e > p1) { p2 = p1; p1 = e; }
        else if (e > p2) p2 = e;
    }
    /* H = log Z - E[x - mx] */
    if (margin) *margin = (float)((p1 - p2) / z);
    return (float)(log(z) - s / z);
}

double ampr__kl(const float *p, const float *q, int32_t n) {
    float mp = p[0], mq = q[0];
    for (int32_t i = 1; i < n; i++) {
        mp = p[i] > mp ? p[i] : mp;
        mq = q[i] > mq ? q[i] : mq;
    }
    double zp = 0, zq = 0;
    for (int32_t i = 0; i < n; i++) {
        zp += exp((double)(p[i] - mp));
        zq += exp((double)(q[i] - mq));
    }
    double lzp = log(zp), lzq = log(zq), kl = 0;
    for (int32_t i = 0; i < n; i++) {
        double lp = (double)(p[i] - mp) - lzp, lq = (double)(q[i] - mq) - lzq;
        kl += exp(lp) * (lp - lq);
    }
    return kl > 0 ? kl : 0;
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
