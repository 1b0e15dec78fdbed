/*
 * fallback.h -- noticing, while a request runs on a cheap tier, that the
 * quantization error is hurting it, and deciding to escalate.
 *
 * Signals, each cheap and computed from what the model already gives us:
 *  - next-token entropy (smoothed): a quantized model that is unsure where
 *    the full-precision one would not be drifts into high entropy;
 *  - repetition: the last n-gram keeps recurring (a classic failure of
 *    low-precision greedy decoding);
 *  - a verification check every `check_every` tokens: the top tier scores the
 *    last `check_window` positions in one batched forward pass and we take
 *    the mean KL(top || tier) of the next-token distributions. This is the
 *    direct measurement; the other two are early warnings between checks;
 *  - non-finite logits (a NaN or +inf in the row: an overflowing tier),
 *    which no statistic above can see; they escalate at once.
 * generate.c drives the checks and the switch; this file holds the maths and
 * the configuration.
 */
#ifndef AMPR_FALLBACK_H
#define AMPR_FALLBACK_H

#include "../common/common.h"

typedef struct ampr__fallback_config {
    int enabled;           /* 0: never escalate */
    float entropy_max;     /* nats; smoothed entropy above this escalates (0: off) */
    int32_t min_tokens;    /* no entropy/repetition escalation before this many tokens */
    int32_t repeat_ngram;  /* n-gram length for the repetition signal (0: off) */
    int32_t repeat_count;  /* ... escalate when it occurred this often ... */
    int32_t repeat_window; /* ... within this many trailing tokens */
    int32_t check_every;   /* verify against the top tier every N tokens (0: off) */
    int32_t check_window;  /* positions compared per check */
    float kl_max;          /* mean KL(top || tier) above this escalates */
    int restart;           /* non-streaming: restart on the top tier instead of continuing */
} ampr__fallback_config;

void ampr__fallback_defaults(ampr__fallback_config *fc);

/* Entropy (nats) of softmax(logits); *margin gets p(top1) - p(top2). */
float ampr__entropy(const float *logits, int32_t n, float *margin);
/* KL(softmax(p) || softmax(q)) in nats. */
double ampr__kl(const float *p, const float *q, int32_t n);
/* How often the last `ngram` ids occur (overlaps counted) in the trailing
 * `window` ids, the last occurrence included; 0 if there are too few ids. */
int32_t ampr__repeats(const int32_t *ids, size_t n, int32_t ngram, int32_t window);

#endif
