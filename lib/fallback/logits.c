/*
 * logits.c -- the scalar reference of logits.h and the choice of level.
 */
#include "logits.h"

#include "fallback.h"

#include <math.h>
#include <string.h>

#include "../quant/quant.h"

static int use_avx2(void) { return ampr__quant_simd() >= AMPR__SIMD_AVX2; }

int32_t ampr__argmax_scalar(const float *v, int32_t n) {
    int32_t best = 0;
    float b = v[0] != v[0] ? -INFINITY : v[0]; /* a NaN counts as -inf: it never wins */
    for (int32_t i = 1; i < n; i++)
        if (v[i] > b) {
            b = v[i];
            best = i;
        }
    return best;
}

void ampr__logit_stats_scalar(const float *x, int32_t n, ampr__logit_stats *st) {
    int32_t best = ampr__argmax_scalar(x, n);
    float mx = x[best], second = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (i != best && x[i] > second) second = x[i];
    double z = 0, s = 0;
    for (int32_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)mx, e = exp(d);
        z += e;
        if (e > 0) s += e * d; /* a -inf logit adds nothing (not 0 * -inf) */
    }
    st->argmax = best;
    st->max = mx;
    st->second = second;
    st->z = z;
    st->s = s;
}

double ampr__kl_scalar(const float *p, const float *q, int32_t n) {
    float mp = p[ampr__argmax_scalar(p, n)], mq = q[ampr__argmax_scalar(q, n)];
    double zp = 0, zq = 0;
    for (int32_t i = 0; i < n; i++) {
        zp += exp((double)p[i] - (double)mp);
        zq += exp((double)q[i] - (double)mq);
    }
    double lzp = log(zp), lzq = log(zq), kl = 0;
    for (int32_t i = 0; i < n; i++) {
        double lp = (double)p[i] - (double)mp - lzp, lq = (double)q[i] - (double)mq - lzq, e = exp(lp);
        if (e > 0) kl += e * (lp - lq);
    }
    return kl > 0 ? kl : 0;
}

void ampr__logit_stats_get(const float *x, int32_t n, ampr__logit_stats *st) {
    if (use_avx2()) ampr__logit_stats_avx2(x, n, st);
    else ampr__logit_stats_scalar(x, n, st);
}

double ampr__kl(const float *p, const float *q, int32_t n) {
    return use_avx2() ? ampr__kl_avx2(p, q, n) : ampr__kl_scalar(p, q, n);
}

int32_t ampr__argmax(const float *v, int32_t n) {
    return use_avx2() ? ampr__argmax_avx2(v, n) : ampr__argmax_scalar(v, n);
}

/* ampr__exp_det's fused multiply-adds are libm calls unless the compiler
 * may use the instruction: 9 calls an element, and on a CPU without FMA
 * each emulated (~60x slower than the instruction). So the scalar sum is
 * built twice on x86: with FMA, for CPUs that have it, and with an exact
 * fused multiply-add of our own (a float product is exact in double; the
 * double sum rounded to odd, then to float, rounds once: fma_odd; 3.9 ms
 * for 128k exps against 0.44 with the instruction, on this machine; equal
 * to it for every float in [-87, 0], checked exhaustively). */
#define EXP_DET_SUM(name, EXP)                                                      \
    double name(const float *x, int32_t n, float mx, float *out) {                   \
        double z = 0;                                                              \
        for (int32_t i = 0; i < n; i++) {                                          \
            float e = EXP(x[i] - mx);                                              \
            if (out) out[i] = e;                                                   \
            z += e;                                                                \
        }                                                                          \
        return z;                                                                  \
    }

static inline float fma_odd(float a, float b, float c) {
    double p = (double)a * (double)b, s = p + (double)c; /* p exact */
    double bb = s - p, e = (p - (s - bb)) + ((double)c - bb); /* s + e = p + c exactly */
    if (e != 0) {
        uint64_t u;
        memcpy(&u, &s, sizeof u);
        if (!(u & 1)) u += (e > 0) == (s > 0) ? 1 : (uint64_t)-1; /* the odd neighbour toward e */
        memcpy(&s, &u, sizeof s);
    }
    return (float)s;
}

AMPR__EXP_DET_DEF(exp_det_odd, fma_odd)
EXP_DET_SUM(ampr__exp_det_sum_soft, exp_det_odd)
/* ampr__exp_det inlined here: its fmaf calls become instructions */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
__attribute__((target("fma"))) static EXP_DET_SUM(exp_det_sum_fma, ampr__exp_det)
#else
static EXP_DET_SUM(exp_det_sum_fma, ampr__exp_det) /* (an instruction on most others: AArch64) */
#endif

double ampr__exp_det_sum_scalar(const float *x, int32_t n, float mx, float *out) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    if (__builtin_cpu_supports("fma")) return exp_det_sum_fma(x, n, mx, out);
    return ampr__exp_det_sum_soft(x, n, mx, out);
#else
    return exp_det_sum_fma(x, n, mx, out);
#endif
}

double ampr__exp_det_sum(const float *x, int32_t n, float mx, float *out) {
    return use_avx2() ? ampr__exp_det_sum_avx2(x, n, mx, out) : ampr__exp_det_sum_scalar(x, n, mx, out);
}

/* ---- the monitor's statistics in slices -------------------------------------- */

static float slice_max(const float *x, int32_t n) {
    float m = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (x[i] > m) m = x[i];
    return m;
}

void ampr__row_part_get(const float *p, const float *q, int32_t n, ampr__row_part *part) {
    memset(part, 0, sizeof *part);
    part->bad = ampr__row_nonfinite(p, n);
    part->mp = slice_max(p, n);
    part->mq = q ? slice_max(q, n) : 0.0f;
    int has_p = part->mp > -INFINITY, has_q = q && part->mq > -INFINITY; /* any mass here */
    double zp = 0, sp = 0, zq = 0, a = 0;
    for (int32_t i = 0; i < n; i++) {
        double d = has_p ? (double)p[i] - (double)part->mp : -INFINITY, e = exp(d);
        zp += e;
        if (e > 0) sp += e * d;
        if (!q) continue;
        double dq = has_q ? (double)q[i] - (double)part->mq : -INFINITY;
        zq += exp(dq);
        if (e > 0) a += e * (d - dq); /* q's -inf under p's mass: +inf */
    }
    part->zp = (float)zp;
    part->sp = (float)sp;
    part->zq = (float)zq;
    part->a = (float)a;
}

int ampr__row_nonfinite(const float *x, int32_t n) {
    return use_avx2() ? ampr__row_nonfinite_avx2(x, n) : ampr__row_nonfinite_scalar(x, n);
}

int ampr__row_nonfinite_scalar(const float *x, int32_t n) {
    /* on the bits: +inf and positive NaNs are [0x7f800000, 0x80000000),
     * negative NaNs above 0xff800000 (-inf) */
    uint32_t bad = 0;
    for (int32_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        bad |= (uint32_t)(u - 0x7f800000u < 0x00800000u) | (uint32_t)(u > 0xff800000u);
    }
    return bad != 0;
}

int ampr__row_parts_merge(const ampr__row_part *parts, int32_t n_parts, float *entropy, double *kl) {
    double mp = -INFINITY, mq = -INFINITY;
    int bad = 0;
    for (int32_t k = 0; k < n_parts; k++) bad |= parts[k].bad != 0;
    for (int32_t k = 0; k < n_parts; k++) { /* slices with mass (a NaN sum counts: it must show) */
        if (parts[k].zp != 0 && parts[k].mp > mp) mp = parts[k].mp;
        if (parts[k].zq != 0 && parts[k].mq > mq) mq = parts[k].mq;
    }
    double zp = 0, sp = 0, zq = 0, a = 0;
    for (int32_t k = 0; k < n_parts; k++) {
        const ampr__row_part *t = &parts[k];
        if (t->zq != 0) zq += exp((double)t->mq - mq) * (double)t->zq;
        if (t->zp == 0) continue;
        double dm = (double)t->mp - mp, s = exp(dm);
        if (s == 0) continue; /* p's mass there is below a double's reach, as ampr__kl's terms */
        zp += s * (double)t->zp;
        sp += s * ((double)t->sp + dm * (double)t->zp);
        /* relative to the row's maxima: sum e^(p-Mp) ((p-Mp) - (q-Mq)) */
        if (kl) a += s * ((double)t->a + (double)t->zp * (dm - ((double)t->mq - mq)));
    }
    *entropy = (float)(log(zp) - sp / zp);
    if (kl) {
        double v = a / zp - log(zp) + log(zq);
        *kl = v > 0 ? v : 0;
    }
    return bad;
}
