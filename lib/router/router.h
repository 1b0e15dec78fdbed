/*
 * router.h -- the complexity scorer behind ampr_route().
 *
 * A prompt is reduced to a handful of cheap structural features, each in
 * [0,1], in one pass over its bytes; a weighted sum squashed to [0,1] is the
 * score; two thresholds map it to the lowest, middle or top resident tier.
 */
#ifndef AMPR_ROUTER_H
#define AMPR_ROUTER_H

#include "../common/common.h"

enum {
    AMPR__F_LEXICAL = 0, /* lexical density: share of long/rare-looking words */
    AMPR__F_CODE = 1,    /* code markers: braces, semicolons, keywords, indentation */
    AMPR__F_MATH = 2,    /* math operator density */
    AMPR__F_DIGITS = 3,  /* digit share */
    AMPR__F_LENGTH = 4,  /* log-scaled length */
    AMPR__F_NONASCII = 5,/* non-ASCII share */
    AMPR__F_COUNT = 6
};

typedef struct ampr__router_config {
    float weights[AMPR__F_COUNT];
    float bias;
    float thresholds[2]; /* score < t[0]: lowest tier; < t[1]: middle; else top */
    float system_weight; /* how much the system prompt's score counts (0..1) */
} ampr__router_config;

void ampr__router_defaults(ampr__router_config *rc);
/* features[AMPR__F_COUNT] from n bytes of text. */
void ampr__router_features(const char *text, size_t n, float *features);
float ampr__router_score(const ampr__router_config *rc, const float *features);

#endif
