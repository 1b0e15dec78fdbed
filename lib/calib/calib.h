/*
 * calib.h -- calibration: measure how far each tier drifts from the top tier
 * on sample prompts, record INT8 activation ranges, fit the router to a
 * quality target, and save it all as JSON that ampr_open loads through the
 * "calibration" config key (config.c).
 *
 * `ampr calibrate` (tools/calibrate.c) drives it; the pieces here are the
 * ones that need the engine's insides or are worth testing alone.
 */
#ifndef AMPR_CALIB_H
#define AMPR_CALIB_H

#include "../engine.h"

/* One calibration prompt, measured. */
typedef struct ampr__calib_sample {
    float features[AMPR__F_COUNT];
    double kl[AMPR_TIER_COUNT];   /* mean KL(top || tier) per generated position, by tier id */
    double top1[AMPR_TIER_COUNT]; /* share of positions where tier's argmax == top's */
} ampr__calib_sample;

/* Allocate stats arrays for the model's shape (zeroed). */
ampr_status ampr__act_stats_new(const ampr__hparams *hp, ampr__act_stats *st, ampr__err *err);
void ampr__act_stats_free(ampr__act_stats *st);

/* Run ids[0..n) through tier t, taking the max of |activation| per input
 * channel of every layer matmul into st. */
ampr_status ampr__calib_ranges(ampr_ctx *c, ampr__tier *t, const int32_t *ids, int32_t n,
                               ampr__act_stats *st, ampr__err *err);

/* Fit the router to the samples. Weights: a ridge regression of
 * log(KL of the lowest tier) on the features, standardised so scores spread
 * over (0,1). Thresholds: among all cut points, the pair that minimises the
 * weight bytes read per token (bytes_low/mid/top) subject to the mean KL
 * over the samples staying <= target_kl; lowest KL if none meets it.
 * tiers[0..n_tiers) top first, as in the context. Writes rc (keeps
 * system_weight) and *fit_kl, *fit_bytes for the chosen cut. */
void ampr__calib_fit_router(const ampr__calib_sample *s, size_t n, const ampr_tier *tiers,
                            int n_tiers, const double *tier_bytes, double target_kl,
                            ampr__router_config *rc, double *fit_kl, double *fit_bytes);

/* Write the calibration file. */
ampr_status ampr__calib_write(const char *path, const ampr__router_config *rc, float kl_max,
                              float alpha, const ampr__act_stats *st, const ampr__hparams *hp,
                              double target_kl, size_t n_samples, ampr__err *err);

/* Bytes of weights one decode step of tier t reads (every matmul, not the
 * embedding table). */
uint64_t ampr__tier_decode_bytes(const ampr_ctx *c, const ampr__tier *t);

#endif
