/*
 * logits.h -- statistics of a row of logits, asked for at every decode step:
 * the argmax (greedy sampling), the softmax's normalizer and mean log-ratio
 * (the monitor's entropy) and KL between two rows (its verification check).
 * Rows are a vocabulary long (32k to 128k): computed in double one exp at a
 * time they cost more host time per token than a GPU decode step's slack, so
 * logits_avx2.c does them 8 lanes at a time where the CPU allows
 * (ampr__quant_simd() >= AVX2; AMPR_SIMD=scalar forces the reference).
 */
#ifndef AMPR_LOGITS_H
#define AMPR_LOGITS_H

#include "../common/common.h"

#include <math.h>

typedef struct ampr__logit_stats {
    int32_t argmax; /* first index of the largest value (NaN counts as -inf) */
    float max;      /* that value */
    float second;   /* the largest of the others (= max when it occurs twice; -inf for n = 1) */
    double z;       /* sum of exp(x - max) */
    double s;       /* sum of exp(x - max) * (x - max) */
} ampr__logit_stats;

/* n >= 1. Entropy = log z - s / z; p(top1) - p(top2) = (1 - exp(second - max)) / z. */
void ampr__logit_stats_get(const float *x, int32_t n, ampr__logit_stats *st);

/* Index of the largest value: the first one on ties, a NaN counting as -inf
 * (all NaN or -inf: 0). The one rule of the host's greedy draws and the
 * sampler's fallbacks, the GPU's argmax and candidate lists. */
int32_t ampr__argmax(const float *v, int32_t n);

/* ---- the monitor's statistics in slices --------------------------------------
 * A GPU computes a row's entropy and KL(p || q) (fallback.h) one slice of the
 * vocabulary per thread block, each slice relative to its own maxima
 * (cuda_ops.cu, ampr__cuda_row_monitor), and the host merges the slices in
 * double. ampr__row_part_get is the host's reference of one slice's sums. */
typedef struct ampr__row_part {
    float mp, zp, sp; /* p's max in the slice; sum e^(p-mp); sum e^(p-mp) (p-mp) */
    float mq, zq, a;  /* q's max; sum e^(q-mq); sum e^(p-mp) ((p-mp) - (q-mq)) */
    int32_t bad;      /* p holds a NaN or +inf in the slice */
} ampr__row_part;

/* The sums of p[0..n) (q NULL: its three are 0). A -inf logit adds nothing;
 * a slice of p all -inf has zp = 0; a finite p where q is -inf makes a = +inf. */
void ampr__row_part_get(const float *p, const float *q, int32_t n, ampr__row_part *part);
/* Merge a row's slices: *entropy of softmax(p); *kl (when kl is not NULL)
 * KL(softmax(p) || softmax(q)), as ampr__kl (>= 0). A NaN among a slice's
 * logits makes the entropy NaN (as ampr__entropy) and the KL 0 (as ampr__kl).
 * Returns 1 when p holds a NaN or +inf (ampr__row_nonfinite). */
int ampr__row_parts_merge(const ampr__row_part *parts, int32_t n_parts, float *entropy, double *kl);
/* 1 when x[0..n) holds a NaN or +inf: no distribution a tier should give
 * (-inf is a masked token). */
int ampr__row_nonfinite(const float *x, int32_t n);
int ampr__row_nonfinite_scalar(const float *x, int32_t n);
int ampr__row_nonfinite_avx2(const float *x, int32_t n);

/* ---- the temperature-only draw's exps ------------------------------------------
 * e^d for d <= 0 by the AVX2 statistics' method (logits_avx2.c: n = round(d
 * log2 e), r = d - n ln2 in two fused steps, e^r by Horner to r^7 with fused
 * multiply-adds, 2^n in the exponent), 0 below -87 (and for -inf or NaN):
 * the same float, bit for bit, from this scalar code, the AVX2 lanes and the
 * GPU (cuda_ops.cu), so that a draw walked on the GPU is the host's walk.
 * AMPR__EXP_DET_DEF defines it over a given fused multiply-add (logits.c
 * also builds it over an exact one of its own, for CPUs without FMA). */
#define AMPR__EXP_DET_DEF(name, FMA)                                                  \
    static inline float name(float d) {                                              \
        if (!(d >= -87.0f)) return 0.0f;                                             \
        float n = rintf(d * 1.44269504088896341f);                                   \
        float r = FMA(-n, 0.693359375f, d);                                          \
        r = FMA(-n, -2.12194440e-4f, r);                                             \
        float p = 1.0f / 5040.0f;                                                    \
        p = FMA(p, r, 1.0f / 720.0f);                                                \
        p = FMA(p, r, 1.0f / 120.0f);                                                \
        p = FMA(p, r, 1.0f / 24.0f);                                                 \
        p = FMA(p, r, 1.0f / 6.0f);                                                  \
        p = FMA(p, r, 0.5f);                                                         \
        p = FMA(p, r, 1.0f);                                                         \
        p = FMA(p, r, 1.0f);                                                         \
        union { uint32_t u; float f; } two = {(uint32_t)((int32_t)n + 127) << 23};   \
        return p * two.f;                                                            \
    }
AMPR__EXP_DET_DEF(ampr__exp_det, fmaf)
/* out[i] = ampr__exp_det(x[i] - mx) (out may be x or NULL); returns their
 * sum, in double. */
double ampr__exp_det_sum(const float *x, int32_t n, float mx, float *out);
/* (the same floats as ampr__exp_det, with FMA instructions where the CPU has
 * them and an exact fused multiply-add of its own where it does not) */
double ampr__exp_det_sum_scalar(const float *x, int32_t n, float mx, float *out);
double ampr__exp_det_sum_soft(const float *x, int32_t n, float mx, float *out); /* the latter, for tests */
double ampr__exp_det_sum_avx2(const float *x, int32_t n, float mx, float *out);

/* The levels, for tests: the scalar one is the reference (double exp). */
void ampr__logit_stats_scalar(const float *x, int32_t n, ampr__logit_stats *st);
void ampr__logit_stats_avx2(const float *x, int32_t n, ampr__logit_stats *st);
int32_t ampr__argmax_scalar(const float *v, int32_t n);
int32_t ampr__argmax_avx2(const float *v, int32_t n);
double ampr__kl_scalar(const float *p, const float *q, int32_t n);
double ampr__kl_avx2(const float *p, const float *q, int32_t n);

#endif
