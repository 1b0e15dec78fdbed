/*
 * generate.h -- one request, start to finish (generate.c), and the routing
 * decision that starts it.
 */
#ifndef AMPR_GENERATE_H
#define AMPR_GENERATE_H

#include "engine.h"

void ampr__route(ampr_ctx *c, const char *prompt, size_t len, const char *system,
                 size_t system_len, ampr_route_result *out);

/* p is complete (defaults filled). On success or AMPR_ERR_CANCELLED, *out (if
 * out is not NULL) receives the result. */
ampr_status ampr__generate(ampr_ctx *c, const char *prompt, size_t len, const ampr_gen_params *p,
                           ampr_result **out, ampr__err *err);

/* Teacher-forced logits of every position (see ampr_logits). */
ampr_status ampr__logits(ampr_ctx *c, ampr__tier *t, const int32_t *ids, int32_t n, float *logits,
                         ampr__err *err);

#endif
