/*
 * sampler.c -- see sampler.h. The order of operations follows the common
 * practice of llama.cpp and transformers: repetition penalty on raw logits,
 * then temperature, top-k, softmax, top-p (nucleus), and a draw.
 */
#include "sampler.h"

#include <math.h>

ampr_status ampr__sampler_init(ampr__sampler *s, int32_t n_vocab, float temperature,
                               int32_t top_k, float top_p, float repetition_penalty,
                               int32_t repetition_last_n, uint64_t seed, ampr__err *err) {
    memset(s, 0, sizeof *s);
    s->n_vocab = n_vocab;
    s->temperature = temperature;
    s->top_k = top_k;
    s->top_p = top_p;
    s->repetition_penalty = repetition_penalty;
    s->repetition_last_n = repetition_last_n;
    ampr__sampler_reseed(s, seed);
    s->ids = ampr__alloc_array((size_t)n_vocab, sizeof(int32_t), err);
    s->vals = ampr__alloc_array((size_t)n_vocab, sizeof(float), err);
    if (!s->ids || !s->vals) {
        ampr__sampler_free(s);
        return AMPR_ERR_NOMEM;
    }
    return AMPR_OK;
}

void ampr__sampler_reseed(ampr__sampler *s, uint64_t seed) {
    /* splitmix64 of the seed, so that seed 0 is fine for xorshift */
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    s->rng = (z ^ (z >> 31)) | 1;
}

void ampr__sampler_free(ampr__sampler *s) {
    ampr__free(s->ids);
    ampr__free(s->vals);
    s->ids = NULL;
    s->vals = NULL;
}

static float rng_f32(ampr__sampler *s) { /* uniform in [0,1) */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (float)((s->rng * 0x2545f4914f6cdd1dull) >> 40) / 16777216.0f;
}

/* sort candidates by value, descending (heap sort of the first k: O(n log k)) */
static void swap_cand(ampr__sampler *s, int32_t a, int32_t b) {
    float tv = s->vals[a]; s->vals[a] = s->vals[b]; s->vals[b] = tv;
    int32_t ti = s->ids[a]; s->ids[a] = s->ids[b]; s->ids[b] = ti;
}
static int cand_less(const ampr__sampler *s, int32_t a, int32_t b) {
    return s->vals[a] < s->vals[b] || (s->vals[a] == s->vals[b] && s->ids[a] > s->ids[b]);
}
static void sift_down(ampr__sampler *s, int32_t i, int32_t n) { /* min-heap on [0,n) */
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_less(s, l, m)) m = l;
        if (r < n && cand_less(s, r, m)) m = r;
        if (m == i) return;
        swap_cand(s, i, m);
        i = m;
    }
}
/* Keep the k largest candidates of n, sorted descending, in [0,k). */
static void top_k_sorted(ampr__sampler *s, int32_t n, int32_t k) {
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(s, i, k);
    for (int32_t i = k; i < n; i++) {
        if (cand_less(s, 0, i)) {
            swap_cand(s, 0, i);
            sift_down(s, 0, k);
        }
    }
    for (int32_t end = k - 1; end > 0; end--) { /* heap -> descending order */
        swap_cand(s, 0, end);
        sift_down(s, 0, end);
    }
}

int32_t ampr__sample(ampr__sampler *s, float *logits, const int32_t *history, size_t n_history) {
    int32_t n = s->n_vocab;
    if (s->repetition_penalty != 1.0f && s->repetition_penalty > 0.0f && history) {
        size_t from = n_history > (size_t)s->repetition_last_n && s->repetition_last_n > 0
                          ? n_history - (size_t)s->repetition_last_n
                          : 0;
        /* each distinct token is penalised once */
        for (size_t i = from; i < n_history; i++) {
            int32_t id = history[i];
            if (id < 0 || id >= n) continue;
            int seen = 0;
            for (size_t j = from; j < i && !seen; j++) seen = history[j] == id;
            if (seen) continue;
            logits[id] = logits[id] > 0 ? logits[id] / s->repetition_penalty
                                        : logits[id] * s->repetition_penalty;
        }
    }
    if (s->temperature <= 0.0f) return ampr__argmax(logits, n);

    for (int32_t i = 0; i < n; i++) {
        s->ids[i] = i;
        s->vals[i] = logits[i] / s->temperature;
    }
    int32_t k = (s->top_k > 0 && s->top_k < n) ? s->top_k : n;
    top_k_sorted(s, n, k);
    /* softmax over the k candidates */
    float mx = s->vals[0], sum = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        s->vals[i] = expf(s->vals[i] - mx);
        sum += s->vals[i];
    }
    for (int32_t i = 0; i < k; i++) s->vals[i] /= sum;
    if (s->top_p > 0.0f && s->top_p < 1.0f) {
        float cum = 0.0f;
        int32_t keep = k;
        for (int32_t i = 0; i < k; i++) {
            cum += s->vals[i];
            if (cum >= s->top_p) { keep = i + 1; break; }
        }
        k = keep;
        sum = cum < s->top_p ? cum : 0.0f;
        if (sum == 0.0f)
            for (int32_t i = 0; i < k; i++) sum += s->vals[i];
    } else {
        sum = 1.0f;
    }
    float r = rng_f32(s) * sum, acc = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        acc += s->vals[i];
        if (r < acc) return s->ids[i];
    }
    return s->ids[k - 1];
}
