/*
 * logits_avx2.c -- the statistics of a row of logits that every decode step
 * asks for (argmax for greedy sampling, softmax entropy and KL for the
 * fallback monitor), 8 lanes at a time. Built with AVX2/FMA (the file name);
 * called only after the CPU check (logits.c). The scalar versions there are
 * the reference: argmax is the same index, sums agree to ~1e-6 relative.
 *
 * exp: x = n ln2 + r with n = round(x / ln2), |r| <= ln2/2, e^r by its Taylor
 * series to r^7 (relative error < 2e-7 there), 2^n put in the exponent.
 * Arguments are <= 0 here (x - max); below -87 (e^-87 ~ 1.6e-38, the
 * smallest normal float) a term counts as 0 (expf would still give
 * subnormals down to -103, which cannot matter next to the max's e^0 = 1), so
 * -inf logits add nothing. KL's log ratios use the unclamped differences.
 */
#include "logits.h"

#include <immintrin.h>
#include <math.h>

#define CLAMP_LO -87.0f

static inline __m256 exp_neg(__m256 x) { /* x in [-87, 0] */
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e)); /* n >= -126: a normal 2^n */
}

/* e^d for d <= 0, exactly 0 below -87 (and for -inf) */
static inline __m256 exp_or_zero(__m256 d) {
    const __m256 lo = _mm256_set1_ps(CLAMP_LO);
    return _mm256_and_ps(exp_neg(_mm256_max_ps(d, lo)), _mm256_cmp_ps(d, lo, _CMP_GE_OQ));
}

static inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline double hsum(__m256 v) {
    float f[8];
    _mm256_storeu_ps(f, v);
    double s = 0;
    for (int i = 0; i < 8; i++) s += (double)f[i];
    return s;
}

/* The largest value; NaNs are skipped as the scalar loop's comparisons skip them. */
static float row_max(const float *x, int32_t n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m); /* NaN in x: m kept */
    float mx = hmax(m);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

int32_t ampr__argmax_avx2(const float *v, int32_t n) {
    if (n <= 0) return 0;
    float mx = row_max(v, n); /* (NaN never wins: max_ps keeps the other operand) */
    if (v[0] == mx || mx == -INFINITY) return 0; /* (nothing above -inf: the first) */
    __m256 m = _mm256_set1_ps(mx);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v + i), m, _CMP_EQ_OQ));
        if (bits) return i + __builtin_ctz((unsigned)bits);
    }
    for (; i < n; i++)
        if (v[i] == mx) return i;
    return 0; /* all -inf or NaN after v[0]: unreachable for finite rows */
}

/* Sums are kept per lane in float over blocks of 1024 values, then added in
 * double, so a 128k-entry row loses no more than a short float sum does. */
#define BLOCK 1024

void ampr__logit_stats_avx2(const float *x, int32_t n, ampr__logit_stats *st) {
    float mx = row_max(x, n);
    st->max = mx;
    st->argmax = ampr__argmax_avx2(x, n);
    /* with the sums: the largest value below the max, and how often the max
     * occurs (twice or more: the second largest is the max again) */
    const __m256 vm = _mm256_set1_ps(mx), lo = _mm256_set1_ps(CLAMP_LO);
    __m256 below = _mm256_set1_ps(-INFINITY);
    int64_t n_max = 0;
    double z = 0, s = 0;
    int32_t i = 0;
    while (i + 8 <= n) {
        __m256 az = _mm256_setzero_ps(), as = _mm256_setzero_ps();
        int32_t end = i + BLOCK < n ? i + BLOCK : n;
        for (; i + 8 <= end; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            __m256 lt = _mm256_cmp_ps(v, vm, _CMP_LT_OQ);
            below = _mm256_max_ps(below, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, lt));
            n_max += __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, vm, _CMP_EQ_OQ)));
            __m256 d = _mm256_sub_ps(v, vm), e = exp_or_zero(d);
            az = _mm256_add_ps(az, e);
            as = _mm256_fmadd_ps(e, _mm256_max_ps(d, lo), as); /* clamped: never 0 * -inf */
        }
        z += hsum(az);
        s += hsum(as);
    }
    float second = hmax(below);
    for (; i < n; i++) {
        if (x[i] < mx && x[i] > second) second = x[i];
        n_max += x[i] == mx;
        float d = x[i] - mx;
        double e = d >= CLAMP_LO ? exp((double)d) : 0.0;
        z += e;
        s += e * (double)d;
    }
    st->second = n_max >= 2 ? mx : second;
    st->z = z;
    st->s = s;
}

double ampr__kl_avx2(const float *p, const float *q, int32_t n) {
    float mp = row_max(p, n), mq = row_max(q, n);
    const __m256 vmp = _mm256_set1_ps(mp), vmq = _mm256_set1_ps(mq);
    const __m256 big = _mm256_set1_ps(-1e30f);
    double zp = 0, zq = 0, s = 0;
    int32_t i = 0;
    while (i + 8 <= n) {
        __m256 ap = _mm256_setzero_ps(), aq = _mm256_setzero_ps(), as = _mm256_setzero_ps();
        int32_t end = i + BLOCK < n ? i + BLOCK : n;
        for (; i + 8 <= end; i += 8) {
            /* the differences unclamped (finite: -inf as -1e30) for the log
             * ratio, clamped for exp: P's mass where Q is below e^-87 counts */
            __m256 dp = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(p + i), vmp), big);
            __m256 dq = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(q + i), vmq), big);
            __m256 ep = exp_or_zero(dp);
            ap = _mm256_add_ps(ap, ep);
            aq = _mm256_add_ps(aq, exp_or_zero(dq));
            as = _mm256_fmadd_ps(ep, _mm256_sub_ps(dp, dq), as); /* e_p * (lp - lq + consts) */
        }
        zp += hsum(ap);
        zq += hsum(aq);
        s += hsum(as);
    }
    for (; i < n; i++) {
        float dp = p[i] - mp, dq = q[i] - mq;
        dp = dp < -1e30f ? -1e30f : dp;
        dq = dq < -1e30f ? -1e30f : dq;
        double ep = dp >= CLAMP_LO ? exp((double)dp) : 0.0;
        zp += ep;
        zq += dq >= CLAMP_LO ? exp((double)dq) : 0.0;
        s += ep * ((double)dp - (double)dq);
    }
    /* KL = sum P (lp - lq), lp = dp - log zp, lq = dq - log zq */
    double kl = s / zp - log(zp) + log(zq);
    return kl > 0 ? kl : 0;
}

double ampr__exp_det_sum_avx2(const float *x, int32_t n, float mx, float *out) {
    const __m256 vm = _mm256_set1_ps(mx);
    __m256d z4 = _mm256_setzero_pd(); /* in double: a draw's total (sampler.c) */
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp_or_zero(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        if (out) _mm256_storeu_ps(out + i, e);
        z4 = _mm256_add_pd(z4, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        z4 = _mm256_add_pd(z4, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double d[4];
    _mm256_storeu_pd(d, z4);
    double z = (d[0] + d[1]) + (d[2] + d[3]);
    for (; i < n; i++) {
        float e = ampr__exp_det(x[i] - mx);
        if (out) out[i] = e;
        z += e;
    }
    return z;
}

int ampr__row_nonfinite_avx2(const float *x, int32_t n) {
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 acc = _mm256_setzero_ps();
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) /* not below +inf: +inf or NaN */
        acc = _mm256_or_ps(acc, _mm256_cmp_ps(_mm256_loadu_ps(x + i), inf, _CMP_NLT_UQ));
    int bad = _mm256_movemask_ps(acc) != 0;
    for (; i < n; i++) bad |= !(x[i] < INFINITY);
    return bad;
}
