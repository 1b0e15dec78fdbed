/*
 * test_sampler.c -- the sampler against a plain reference written here: the
 * textbook algorithm (every logit / T, a full sort by value then id, softmax
 * over the top k, the nucleus by a cumulative walk, a draw) with the same RNG.
 *  - top-k draws are the reference's, draw for draw (the streaming heap must
 *    pick, order and normalise exactly the same candidates);
 *  - a nucleus without top-k normalises over the whole vocabulary in another
 *    order: draws agree except where the uniform lands within rounding of a
 *    boundary (in nuclei of thousands both walks add thousands of floats and
 *    may land a candidate apart), and never leave the reference's nucleus;
 *  - temperature alone draws in id order: the frequencies over many draws
 *    match the softmax;
 *  - greedy is the argmax; the same seed gives the same draws.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "sampler/sampler.h"

/* ---- the reference --------------------------------------------------------- */

typedef struct ref_cand {
    float v;
    int32_t id;
} ref_cand;

static int ref_cmp(const void *a, const void *b) { /* value descending, then id ascending */
    const ref_cand *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static float ref_rng(uint64_t *rng) { /* the sampler's xorshift64*, as sampler.c */
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    return (float)((*rng * 0x2545f4914f6cdd1dull) >> 40) / 16777216.0f;
}

/* The candidates of a row: c[0..*k) with their probabilities, *sum the mass
 * a draw is scaled by. The draws of one row share them. */
static void ref_prepare(const float *logits, int32_t n, float temp, int32_t top_k, float top_p,
                        ref_cand *c, int32_t *k_out, float *sum_out) {
    for (int32_t i = 0; i < n; i++) {
        c[i].v = logits[i] / temp;
        c[i].id = i;
    }
    qsort(c, (size_t)n, sizeof *c, ref_cmp);
    int32_t k = top_k > 0 && top_k < n ? top_k : n;
    float mx = c[0].v, sum = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        c[i].v = expf(c[i].v - mx);
        sum += c[i].v;
    }
    for (int32_t i = 0; i < k; i++) c[i].v /= sum;
    if (top_p > 0.0f && top_p < 1.0f) {
        float cum = 0.0f;
        int32_t keep = k;
        for (int32_t i = 0; i < k; i++) {
            cum += c[i].v;
            if (cum >= top_p) { keep = i + 1; break; }
        }
        k = keep;
        sum = cum < top_p ? cum : 0.0f;
        if (sum == 0.0f)
            for (int32_t i = 0; i < k; i++) sum += c[i].v;
    } else {
        sum = 1.0f;
    }
    *k_out = k;
    *sum_out = sum;
}

static int32_t ref_draw(const ref_cand *c, int32_t k, float sum, uint64_t *rng) {
    float r = ref_rng(rng) * sum, acc = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        acc += c[i].v;
        if (r < acc) return c[i].id;
    }
    return c[k - 1].id;
}

/* ---- rows of logits ---------------------------------------------------------- */

static uint64_t g_lcg = 99;
static float unif(void) {
    g_lcg = g_lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(g_lcg >> 40) / 16777216.0f;
}

/* kind 0: peaked (a few tokens carry most of the mass, as an LM's do);
 * 1: flat; 2: ties (values on a coarse grid) */
static void make_logits(float *x, int32_t n, int kind) {
    for (int32_t i = 0; i < n; i++) {
        float g = (unif() + unif() + unif() + unif() - 2.0f) * 1.7f;
        x[i] = kind == 0 ? 2.5f * g : kind == 1 ? 0.3f * g : roundf(3.0f * g) / 2.0f;
    }
    if (kind == 0)
        for (int j = 0; j < 5 && j < n; j++) x[(int32_t)(unif() * (float)n) % n] = 9.0f - (float)j;
}

/* the sampler on a copy (it may change the row: repetition penalty) */
static int32_t draw(ampr__sampler *s, const float *x, int32_t n, float *tmp) {
    memcpy(tmp, x, (size_t)n * sizeof *x);
    return ampr__sample(s, tmp, NULL, 0);
}

static void test_top_k_exact(void **state) {
    (void)state;
    const int32_t sizes[] = {50, 1031, 32000};
    const int32_t ks[] = {1, 5, 40, 49, 1000};
    const float ps[] = {1.0f, 0.95f, 0.5f};
    float *x = malloc(32000 * sizeof *x), *tmp = malloc(32000 * sizeof *tmp);
    ref_cand *c = malloc(32000 * sizeof *c);
    int compared = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (int kind = 0; kind < 3; kind++) {
            int32_t n = sizes[a];
            make_logits(x, n, kind);
            for (size_t b = 0; b < sizeof ks / sizeof *ks; b++)
                for (size_t d = 0; d < sizeof ps / sizeof *ps; d++) {
                    if (ks[b] >= n) continue;
                    ampr__sampler s;
                    ampr__err err = {0};
                    assert_int_equal(ampr__sampler_init(&s, n, 0.8f, ks[b], ps[d], 1.0f, 64, 7, &err), AMPR_OK);
                    uint64_t rng = s.rng;
                    int32_t kept;
                    float sum;
                    ref_prepare(x, n, 0.8f, ks[b], ps[d], c, &kept, &sum);
                    for (int t = 0; t < 20; t++) {
                        int32_t want = ref_draw(c, kept, sum, &rng);
                        int32_t got = draw(&s, x, n, tmp);
                        if (got != want)
                            fail_msg("n %d kind %d top_k %d top_p %g draw %d: %d, reference %d", n, kind,
                                     ks[b], ps[d], t, got, want);
                        compared++;
                    }
                    ampr__sampler_free(&s);
                }
        }
    assert_true(compared > 500);
    free(x);
    free(tmp);
    free(c);
}

static void test_nucleus(void **state) {
    (void)state;
    const int32_t sizes[] = {50, 1031, 32000};
    const float ps[] = {0.95f, 0.5f, 0.99f};
    float *x = malloc(32000 * sizeof *x), *tmp = malloc(32000 * sizeof *tmp);
    ref_cand *c = malloc(32000 * sizeof *c);
    char *in = malloc(32000);
    int draws = 0, agree = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (int kind = 0; kind < 3; kind++)
            for (size_t d = 0; d < sizeof ps / sizeof *ps; d++) {
                int32_t n = sizes[a];
                make_logits(x, n, kind);
                ampr__sampler s;
                ampr__err err = {0};
                assert_int_equal(ampr__sampler_init(&s, n, 0.7f, 0, ps[d], 1.0f, 64, 11, &err), AMPR_OK);
                uint64_t rng = s.rng;
                int32_t kept;
                float sum;
                ref_prepare(x, n, 0.7f, 0, ps[d], c, &kept, &sum);
                /* the reference's nucleus, and one more candidate: a boundary
                 * within rounding may keep one more */
                memset(in, 0, (size_t)n);
                for (int32_t i = 0; i < kept + 1 && i < n; i++) in[c[i].id] = 1;
                for (int t = 0; t < 40; t++) {
                    int32_t want = ref_draw(c, kept, sum, &rng);
                    int32_t got = draw(&s, x, n, tmp);
                    if (!in[got])
                        fail_msg("n %d kind %d top_p %g: drew %d, outside the nucleus of %d", n, kind,
                                 ps[d], got, kept);
                    /* the same draw where the nucleus is short; in nuclei of
                     * thousands both walks add thousands of floats and may
                     * land one candidate apart, not more */
                    int32_t pg = -1, pw = -1;
                    for (int32_t i = 0; i < kept + 1 && i < n; i++) {
                        if (c[i].id == got) pg = i;
                        if (c[i].id == want) pw = i;
                    }
                    if (kept <= 500) {
                        agree += got == want;
                        draws++;
                    } else if (abs(pg - pw) > 1 + kept / 1000) {
                        fail_msg("n %d kind %d top_p %g: drew candidate %d, the reference %d of %d", n,
                                 kind, ps[d], pg, pw, kept);
                    }
                }
                ampr__sampler_free(&s);
            }
    if (getenv("AMPR_TEST_VERBOSE")) printf("nucleus: %d of %d draws as the reference's\n", agree, draws);
    if (agree < draws - draws / 100) /* boundaries within float rounding: rare */
        fail_msg("%d of %d nucleus draws agree with the reference", agree, draws);
    free(x);
    free(tmp);
    free(c);
    free(in);
}

static void test_temperature_frequencies(void **state) {
    (void)state;
    const int32_t n = 20;
    const int draws = 40000;
    float x[20], tmp[20];
    make_logits(x, n, 0);
    for (int32_t i = 0; i < n; i++) x[i] = x[i] / 3.0f; /* every token likely enough to count */
    ampr__sampler s;
    ampr__err err = {0};
    assert_int_equal(ampr__sampler_init(&s, n, 1.3f, 0, 1.0f, 1.0f, 64, 5, &err), AMPR_OK);
    long count[20] = {0};
    for (int t = 0; t < draws; t++) count[draw(&s, x, n, tmp)]++;
    double z = 0, p[20];
    for (int32_t i = 0; i < n; i++) z += exp((double)x[i] / 1.3);
    for (int32_t i = 0; i < n; i++) {
        p[i] = exp((double)x[i] / 1.3) / z;
        double sd = sqrt((double)draws * p[i] * (1 - p[i]));
        if (fabs((double)count[i] - draws * p[i]) > 5 * sd + 2)
            fail_msg("token %d: %ld draws, expected %.0f +- %.0f", i, count[i], draws * p[i], sd);
    }
    ampr__sampler_free(&s);
}

static void test_greedy_and_seed(void **state) {
    (void)state;
    const int32_t n = 32000;
    float *x = malloc(n * sizeof *x), *tmp = malloc(n * sizeof *tmp);
    make_logits(x, n, 2); /* ties: the first index of the max */
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    ampr__sampler g, a, b;
    ampr__err err = {0};
    assert_int_equal(ampr__sampler_init(&g, n, 0.0f, 40, 0.9f, 1.0f, 64, 1, &err), AMPR_OK);
    assert_int_equal(draw(&g, x, n, tmp), best);
    const float temps[] = {0.7f, 1.0f};
    const int32_t ks[] = {0, 40};
    const float ps[] = {1.0f, 0.9f};
    for (int m = 0; m < 4; m++) {
        assert_int_equal(ampr__sampler_init(&a, n, temps[m & 1], ks[m >> 1], ps[m & 1], 1.0f, 64, 42, &err), AMPR_OK);
        assert_int_equal(ampr__sampler_init(&b, n, temps[m & 1], ks[m >> 1], ps[m & 1], 1.0f, 64, 42, &err), AMPR_OK);
        for (int t = 0; t < 30; t++) assert_int_equal(draw(&a, x, n, tmp), draw(&b, x, n, tmp));
        ampr__sampler_free(&a);
        ampr__sampler_free(&b);
    }
    ampr__sampler_free(&g);
    free(x);
    free(tmp);
}

/* Rows without a finite distribution (+inf, all -inf, NaN, a temperature
 * that overflows every value) in every path: a valid index, the +inf token
 * where there is one. Run under ASan/valgrind by check-asan/check-valgrind. */
static void test_nonfinite(void **state) {
    (void)state;
    const int32_t n = 32000;
    float *x = malloc(n * sizeof *x), *tmp = malloc(n * sizeof *tmp);
    const int32_t ks[] = {0, 40};
    const float ps[] = {1.0f, 0.9f};
    const float temps[] = {0.8f, 1e-38f};
    for (int row = 0; row < 4; row++)
        for (int m = 0; m < 8; m++) {
            make_logits(x, n, 0);
            if (row == 0) x[777] = INFINITY;
            if (row == 1)
                for (int32_t i = 0; i < n; i++) x[i] = -INFINITY;
            if (row == 2) x[0] = NAN;
            ampr__sampler s;
            ampr__err err = {0};
            assert_int_equal(ampr__sampler_init(&s, n, temps[m >> 2], ks[m & 1], ps[(m >> 1) & 1], 1.0f,
                                                64, 3, &err), AMPR_OK);
            /* row 0: the +inf token, also at T = 1e-38 where every logit above
             * ~3.4 overflows to +inf after dividing (the limit is greedy) */
            for (int t = 0; t < 3; t++) {
                int32_t got = draw(&s, x, n, tmp);
                assert_true(got >= 0 && got < n);
                if (row == 0) assert_int_equal(got, 777);
            }
            ampr__sampler_free(&s);
        }
    free(x);
    free(tmp);
}

/* top-k's prefilter tests x * (1/T) against the heap's root before dividing:
 * a logit whose x / T is one float above the root while x * (1/T) rounds to
 * it must still get in (the margin). Found by search, then drawn with k = 1. */
static void test_top_k_prefilter_margin(void **state) {
    (void)state;
    const float t = 0.55f, inv = 1.0f / t; /* the first such T on a 0.05 grid from 0.5 */
    float y = 0, xv = 0;
    int found = 0;
    for (float a = 1.0f; a < 1.5f && !found; a = nextafterf(a, 2.0f)) {
        float b = nextafterf(a, 2.0f);
        if (a / t < b / t && b * inv <= a / t) {
            y = a;
            xv = b;
            found = 1;
        }
    }
    assert_true(found);
    float row[32], tmp[32];
    for (int i = 0; i < 32; i++) row[i] = -5.0f;
    row[0] = y;  /* the first element: the heap's root */
    row[20] = xv; /* a later block, larger by one float after dividing */
    ampr__sampler s;
    ampr__err err = {0};
    assert_int_equal(ampr__sampler_init(&s, 32, t, 1, 1.0f, 1.0f, 64, 3, &err), AMPR_OK);
    assert_int_equal(draw(&s, row, 32, tmp), 20);
    ampr__sampler_free(&s);
}

/* Candidate lists (what a device sends instead of the row): the list is the
 * reference's order of the m largest (value desc, id asc; NaN as -inf, -0
 * as +0); when ampr__topk_cands calls it exact, a draw from it is the draw
 * from the whole row, token for token with the same RNG; it is called
 * inexact exactly when a tie in x / T reaches from the k-th to the m-th.
 * Rows: peaked, flat, ties on a coarse grid, masked (-inf), with NaN / -0. */
static void test_candidate_lists(void **state) {
    (void)state;
    const int32_t n = 3000;
    const float temps[] = {0.3f, 0.8f, 1.7f};
    const float ps[] = {1.0f, 0.9f};
    const int32_t ks[] = {1, 7, 40, 200};
    float *x = malloc(n * sizeof *x), *tmp = malloc(n * sizeof *tmp);
    ref_cand *c = malloc(n * sizeof *c);
    float vals[AMPR__CANDS_MAX];
    int32_t ids[AMPR__CANDS_MAX];
    int exact_rows = 0, inexact_rows = 0, draws = 0;
    for (int kind = 0; kind < 5; kind++)
        for (size_t a = 0; a < sizeof temps / sizeof *temps; a++)
            for (size_t b = 0; b < sizeof ks / sizeof *ks; b++)
                for (size_t d = 0; d < sizeof ps / sizeof *ps; d++) {
                    make_logits(x, n, kind < 3 ? kind : 0);
                    if (kind == 3) /* masked: few finite */
                        for (int32_t i = 0; i < n; i++) if (i % 97) x[i] = -INFINITY;
                    if (kind == 4) {
                        x[17] = NAN;
                        x[18] = -0.0f;
                        x[19] = 0.0f;
                    }
                    float t = temps[a];
                    int32_t k = ks[b], m = k + AMPR__CAND_SLACK;
                    ampr__sampler full, cand;
                    ampr__err err = {0};
                    assert_int_equal(ampr__sampler_init(&full, n, t, k, ps[d], 1.0f, 64, 11, &err), AMPR_OK);
                    assert_int_equal(ampr__sampler_init(&cand, n, t, k, ps[d], 1.0f, 64, 11, &err), AMPR_OK);
                    ampr__row_want w;
                    ampr__sampler_want(&cand, NULL, 0, NULL, &w);
                    assert_int_equal(w.what, AMPR__WANT_CANDS);
                    assert_int_equal(w.m, m);
                    int ex = ampr__topk_cands(x, n, m, t, k, vals, ids);
                    /* the list: the reference's order of the values, NaN as -inf */
                    for (int32_t i = 0; i < n; i++) {
                        c[i].v = isnan(x[i]) ? -INFINITY : x[i] == 0.0f ? 0.0f : x[i];
                        c[i].id = i;
                    }
                    qsort(c, (size_t)n, sizeof *c, ref_cmp);
                    for (int32_t i = 0; i < m; i++) assert_int_equal(ids[i], c[i].id);
                    /* exact iff no tie of x / T reaches from the k-th to the m-th */
                    float vm = isnan(vals[m - 1]) ? -INFINITY : vals[m - 1] / t;
                    float vk = isnan(vals[k - 1]) ? -INFINITY : vals[k - 1] / t;
                    assert_int_equal(ex, vm < vk);
                    if (ex) exact_rows++;
                    else inexact_rows++;
                    for (int r = 0; r < 10 && ex; r++, draws++) {
                        int32_t want = draw(&full, x, n, tmp);
                        int32_t got = ampr__sample_cands(&cand, vals, ids, m, 0);
                        if (got != want)
                            fail_msg("kind %d T %g k %d p %g draw %d: %d from the list, %d from the row",
                                     kind, t, k, ps[d], r, got, want);
                    }
                    ampr__sampler_free(&full);
                    ampr__sampler_free(&cand);
                }
    assert_true(exact_rows > 60 && inexact_rows > 5 && draws > 600);
    /* two neighbouring floats that x / T makes equal, the larger one at the
     * larger id, as the row's two best: the list has the larger first, the
     * whole-row path the smaller id first (equal values go by id) */
    {
        const float t = 1.7f;
        float lo = 6.0f, hi = nextafterf(lo, INFINITY);
        while (lo / t != hi / t) {
            lo = hi;
            hi = nextafterf(lo, INFINITY);
        }
        for (int32_t i = 0; i < n; i++) x[i] = -4.0f + 0.0001f * (float)i; /* distinct */
        x[5] = lo;
        x[900] = hi;
        ampr__sampler full, cand;
        ampr__err err = {0};
        assert_int_equal(ampr__sampler_init(&full, n, t, 3, 1.0f, 1.0f, 64, 5, &err), AMPR_OK);
        assert_int_equal(ampr__sampler_init(&cand, n, t, 3, 1.0f, 1.0f, 64, 5, &err), AMPR_OK);
        assert_true(ampr__topk_cands(x, n, 3 + AMPR__CAND_SLACK, t, 3, vals, ids));
        assert_int_equal(ids[0], 900); /* by value */
        int seen5 = 0, seen900 = 0;
        for (int r = 0; r < 40; r++) {
            int32_t want = draw(&full, x, n, tmp);
            assert_int_equal(ampr__sample_cands(&cand, vals, ids, 3 + AMPR__CAND_SLACK, 0), want);
            seen5 += want == 5;
            seen900 += want == 900;
        }
        assert_true(seen5 > 0 && seen900 > 0);
        ampr__sampler_free(&full);
        ampr__sampler_free(&cand);
    }
    /* what draws need: greedy the argmax, top-k a list, the rest the row */
    ampr__sampler s;
    ampr__err err = {0};
    ampr__row_want w;
    assert_int_equal(ampr__sampler_init(&s, n, 0.0f, 40, 0.9f, 1.0f, 64, 1, &err), AMPR_OK);
    ampr__sampler_want(&s, NULL, 0, NULL, &w);
    assert_int_equal(w.what, AMPR__WANT_ARGMAX);
    ampr__sampler_free(&s);
    assert_int_equal(ampr__sampler_init(&s, n, 0.8f, 0, 0.9f, 1.0f, 64, 1, &err), AMPR_OK);
    ampr__sampler_want(&s, NULL, 0, NULL, &w);
    assert_int_equal(w.what, AMPR__WANT_CANDS); /* a nucleus over the whole row: the longest list */
    assert_true(w.top_k == 0 && w.m == AMPR__CANDS_MAX && w.top_p == 0.9f);
    ampr__sampler_free(&s);
    assert_int_equal(ampr__sampler_init(&s, n, 0.8f, 40, 0.9f, 1.1f, 64, 1, &err), AMPR_OK);
    ampr__sampler_want(&s, NULL, 0, NULL, &w);
    assert_int_equal(w.what, AMPR__WANT_ROW); /* a penalty without a buffer for its ids */
    ampr__sampler_free(&s);
    assert_int_equal(ampr__sampler_init(&s, n, 0.8f, AMPR__CANDS_MAX, 1.0f, 1.0f, 64, 1, &err), AMPR_OK);
    ampr__sampler_want(&s, NULL, 0, NULL, &w);
    assert_int_equal(w.what, AMPR__WANT_ROW); /* k + slack beyond a list */
    ampr__sampler_free(&s);
    free(x);
    free(tmp);
    free(c);
}

/* A repetition penalty with a list or an argmax (sampler.h): the ids it
 * names are the last repetition_last_n of the history, in range, each once
 * (more than AMPR__PEN_MAX: the row); penalizing them in the row, taking
 * the list or the argmax and putting the row back (as backend.c and the
 * GPU do) draws what ampr__sample draws from the row, for penalties above
 * and below 1, greedy and top-k with and without top-p, and a nucleus
 * without top-k. */
static void test_penalized_lists(void **state) {
    (void)state;
    const int32_t n = 3000;
    int32_t hist[400], pen[AMPR__PEN_MAX];
    ampr__sampler s;
    ampr__err err = {0};
    ampr__row_want w;
    /* the ids: window, range, distinct */
    for (int32_t i = 0; i < 400; i++) hist[i] = (i * 7) % 50;
    hist[398] = -3;
    hist[399] = n; /* the first id out of range */
    assert_int_equal(ampr__sampler_init(&s, n, 0.8f, 40, 0.95f, 1.3f, 64, 1, &err), AMPR_OK);
    assert_int_equal(ampr__sampler_penalized(&s, hist, 400, pen, AMPR__PEN_MAX), 50); /* 62 of 64 valid, 50 distinct */
    assert_int_equal(ampr__sampler_penalized(&s, hist, 3, pen, AMPR__PEN_MAX), 3);
    assert_int_equal(ampr__sampler_penalized(&s, hist, 400, pen, 49), -1);
    assert_int_equal(ampr__sampler_penalized(&s, NULL, 0, pen, AMPR__PEN_MAX), 0);
    ampr__sampler_want(&s, hist, 400, pen, &w);
    assert_int_equal(w.what, AMPR__WANT_CANDS);
    assert_int_equal(w.n_pen, 50);
    assert_true(w.pen_ids == pen && w.penalty == 1.3f);
    ampr__sampler_free(&s);
    /* the whole history (last_n 0, as transformers penalizes): 1000 distinct
     * ids, each once, twice over; then 1100 distinct in a window: the row */
    static int32_t longh[2200];
    for (int32_t i = 0; i < 2200; i++) longh[i] = (i % 1000) * 3;
    assert_int_equal(ampr__sampler_init(&s, n, 0.8f, 40, 0.95f, 1.3f, 0, 1, &err), AMPR_OK);
    for (int rep = 0; rep < 2; rep++) { /* (the marks are cleared between calls) */
        ampr__sampler_want(&s, longh, 2200, pen, &w);
        assert_int_equal(w.what, AMPR__WANT_CANDS);
        assert_int_equal(w.n_pen, 1000);
        for (int32_t i = 0; i < 1000; i++) assert_int_equal(pen[i], i * 3);
    }
    ampr__sampler_free(&s);
    for (int32_t i = 0; i < 2200; i++) longh[i] = i;
    assert_int_equal(ampr__sampler_init(&s, n, 0.8f, 40, 0.95f, 1.3f, 1100, 1, &err), AMPR_OK);
    ampr__sampler_want(&s, longh, 2200, pen, &w);
    assert_int_equal(w.what, AMPR__WANT_ROW);
    assert_int_equal(w.n_pen, 0);
    assert_int_equal(ampr__sampler_penalized(&s, longh, 2200, pen, AMPR__PEN_MAX), -1);
    for (int32_t i = 0; i < n; i++) assert_int_equal(s.seen[i], 0); /* cleared after giving up too */
    ampr__sampler_free(&s);

    float *x = malloc(n * sizeof *x), *row = malloc(n * sizeof *row), *tmp = malloc(n * sizeof *tmp);
    float *scr = malloc(n * sizeof *scr);
    float vals[AMPR__CANDS_MAX];
    int32_t ids[AMPR__CANDS_MAX];
    const float pens[] = {1.3f, 0.7f};
    const float temps[] = {0.0f, 0.8f, 1.5f};
    const float ps[] = {1.0f, 0.9f};
    int draws = 0, moved = 0, nucleus_draws = 0;
    for (int kind = 0; kind < 3; kind++)
        for (size_t a = 0; a < 2; a++)
            for (size_t b = 0; b < 3; b++)
                for (size_t d = 0; d < 4; d++) {
                    int32_t top_k = d < 2 ? 20 : 0; /* 0: a nucleus alone (d == 3; 2 is a plain draw) */
                    if (d == 2) continue;
                    make_logits(x, n, kind);
                    /* the history: the row's best ids and some others, repeated */
                    int32_t best = ampr__argmax(x, n);
                    for (int32_t i = 0; i < 96; i++) hist[i] = i % 3 == 0 ? best : (i * 37 + kind) % n;
                    ampr__sampler full, cand;
                    assert_int_equal(ampr__sampler_init(&full, n, temps[b], top_k, ps[d % 2], pens[a], 64, 9, &err), AMPR_OK);
                    assert_int_equal(ampr__sampler_init(&cand, n, temps[b], top_k, ps[d % 2], pens[a], 64, 9, &err), AMPR_OK);
                    for (int r = 0; r < 8; r++) {
                        ampr__sampler_want(&cand, hist, 96, pen, &w);
                        assert_int_equal(w.what, temps[b] > 0 ? AMPR__WANT_CANDS : AMPR__WANT_ARGMAX);
                        memcpy(row, x, n * sizeof *row);
                        float kept[AMPR__PEN_MAX];
                        for (int32_t p = 0; p < w.n_pen; p++) {
                            kept[p] = row[pen[p]];
                            row[pen[p]] = ampr__penalize(row[pen[p]], w.penalty);
                        }
                        int32_t got;
                        double mass = 0;
                        if (w.what == AMPR__WANT_ARGMAX) got = ampr__argmax(row, n);
                        else if (w.top_k == 0 ? ampr__nucleus_cands(row, n, w.m, w.temperature, w.top_p, vals, ids, &mass, scr)
                                              : ampr__topk_cands(row, n, w.m, w.temperature, w.top_k, vals, ids))
                            got = ampr__sample_cands(&cand, vals, ids, w.m, mass);
                        else continue; /* undecided: the row would come */
                        draws++;
                        nucleus_draws += w.top_k == 0;
                        for (int32_t p = w.n_pen - 1; p >= 0; p--) row[pen[p]] = kept[p];
                        assert_memory_equal(row, x, n * sizeof *row);
                        memcpy(tmp, x, n * sizeof *tmp);
                        int32_t want = ampr__sample(&full, tmp, hist, 96);
                        if (got != want)
                            fail_msg("kind %d penalty %g T %g k %d p %g draw %d: %d with the ids, %d from the row",
                                     kind, pens[a], temps[b], top_k, ps[d % 2], r, got, want);
                        moved += temps[b] == 0 && want != best;
                    }
                    ampr__sampler_free(&full);
                    ampr__sampler_free(&cand);
                }
    if (getenv("AMPR_TEST_VERBOSE")) printf("penalized lists: %d draws, %d of a nucleus\n", draws, nucleus_draws);
    assert_true(draws > 250 && moved > 0 && nucleus_draws > 30); /* the penalty changed some greedy choices */
    free(x);
    free(row);
    free(tmp);
    free(scr);
}

/* x / T sorted as the whole row sorts it (value desc, id asc), by qsort */
static void ref_sorted(const float *x, int32_t n, float t, ref_cand *c) {
    for (int32_t i = 0; i < n; i++) {
        c[i].v = x[i] / t;
        if (c[i].v == 0.0f) c[i].v = 0.0f;
        c[i].id = i;
    }
    qsort(c, (size_t)n, sizeof *c, ref_cmp);
}

/* A nucleus without top-k from a list (sampler.h): ampr__nucleus_cands
 * calls a list decided exactly when, by a full sort of the row, the
 * nucleus's float walk ends within the list's length, no value of x / T
 * beyond the list ties the last one kept, and the row's mass is clear of a
 * float rounding edge; a decided list draws ampr__sample's token from the
 * row, draw for draw, with the same RNG steps. Rows: peaked, flat, ties,
 * masked; vocabularies below, at and above the list's 256. */
static void test_nucleus_lists(void **state) {
    (void)state;
    const int32_t sizes[] = {50, 256, 3000, 32000};
    const float temps[] = {0.5f, 0.9f, 1.5f};
    const float ps[] = {0.5f, 0.9f, 0.99f};
    float *x = malloc(32000 * sizeof *x), *tmp = malloc(32000 * sizeof *tmp), *scr = malloc(32000 * sizeof *scr);
    ref_cand *c = malloc(32000 * sizeof *c);
    float vals[AMPR__CANDS_MAX];
    int32_t ids[AMPR__CANDS_MAX];
    ampr__err err = {0};
    int decided = 0, undecided = 0, draws = 0, long_nuclei = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (int kind = 0; kind < 4; kind++)
            for (size_t b = 0; b < sizeof temps / sizeof *temps; b++)
                for (size_t d = 0; d < sizeof ps / sizeof *ps; d++) {
                    int32_t n = sizes[a];
                    make_logits(x, n, kind < 3 ? kind : 0);
                    if (kind == 3) /* masked: few finite */
                        for (int32_t i = 0; i < n; i++) if (i % 7) x[i] = -INFINITY;
                    float t = temps[b], top_p = ps[d];
                    ampr__sampler full, cand;
                    assert_int_equal(ampr__sampler_init(&full, n, t, 0, top_p, 1.0f, 64, 21, &err), AMPR_OK);
                    assert_int_equal(ampr__sampler_init(&cand, n, t, 0, top_p, 1.0f, 64, 21, &err), AMPR_OK);
                    ampr__row_want w;
                    ampr__sampler_want(&cand, NULL, 0, NULL, &w);
                    assert_int_equal(w.what, AMPR__WANT_CANDS);
                    assert_int_equal(w.m, n < AMPR__CANDS_MAX ? n : AMPR__CANDS_MAX);
                    double mass;
                    int ok = ampr__nucleus_cands(x, n, w.m, t, top_p, vals, ids, &mass, scr);
                    /* the reference: the row's mass, its full sort, the walk */
                    ref_sorted(x, n, t, c);
                    float mx = c[0].v;
                    double z = 0;
                    for (int32_t i = 0; i < n; i++) z += ampr__exp_det(x[i] / t - mx);
                    assert_true(fabs(mass - z) <= 1e-12 * z);
                    float sum = (float)z, cum = 0.0f;
                    int32_t j = 0;
                    while (j < n && cum < top_p) cum += ampr__exp_det(c[j++].v - mx) / sum;
                    int32_t m = w.m;
                    double mg = AMPR__MASS_MARGIN(n);
                    int clear = (float)(z * (1 - mg)) == (float)(z * (1 + mg));
                    int want_ok = cum >= top_p && j <= m && (m == n || c[m - 1].v < c[j - 1].v) && clear;
                    if (ok != want_ok)
                        fail_msg("n %d kind %d T %g p %g: decided %d, the reference %d (nucleus %d of a list of %d)", n,
                                 kind, t, top_p, ok, want_ok, j, m);
                    long_nuclei += j > m;
                    if (ok) decided++;
                    else undecided++;
                    for (int r = 0; r < 12 && ok; r++, draws++) {
                        int32_t want = draw(&full, x, n, tmp);
                        int32_t got = ampr__sample_cands(&cand, vals, ids, m, mass);
                        if (got != want)
                            fail_msg("n %d kind %d T %g p %g draw %d: %d from the list, %d from the row", n, kind,
                                     t, top_p, r, got, want);
                        assert_true(full.rng == cand.rng);
                    }
                    ampr__sampler_free(&full);
                    ampr__sampler_free(&cand);
                }
    if (getenv("AMPR_TEST_VERBOSE"))
        printf("nucleus lists: %d decided, %d not (%d nuclei beyond the list), %d draws\n", decided, undecided,
               long_nuclei, draws);
    assert_true(decided > 60 && long_nuclei > 10 && draws > 700);
    /* the mass at a float rounding edge: e^d next to 2^-25 (d's floats are
     * 1.9e-6 apart), so that 1 + 2 e^d is within ~1e-13 of the midpoint of 1
     * and its next float, in a row of 32000 (the rest -inf: no mass; the
     * margin 7.4e-12); 1 + e^d is far from any edge */
    float d = -17.3286795f, edge = ldexpf(1.0f, -25);
    while (ampr__exp_det(d) < edge) d = nextafterf(d, 0.0f);
    if (ampr__exp_det(nextafterf(d, -INFINITY)) - edge > edge - ampr__exp_det(d)) d = nextafterf(d, -INFINITY);
    for (int32_t i = 0; i < 32000; i++) x[i] = -INFINITY;
    x[0] = 0.0f;
    x[1] = d;
    x[2] = d;
    double mass;
    assert_int_equal(ampr__nucleus_cands(x, 32000, AMPR__CANDS_MAX, 1.0f, 0.5f, vals, ids, &mass, scr), 0);
    assert_true(fabs(mass - (1.0 + ldexp(1.0, -24))) < 1e-12);
    x[2] = -INFINITY;
    assert_int_equal(ampr__nucleus_cands(x, 32000, AMPR__CANDS_MAX, 1.0f, 0.5f, vals, ids, &mass, scr), 1);
    /* the nucleus ends among equal values that go on beyond the list:
     * undecided (which of them the row's order keeps depends on ids the list
     * lacks); ending above them: decided */
    for (int32_t i = 0; i < 3000; i++) x[i] = -30.0f - 0.001f * (float)i;
    x[10] = 4.0f;
    x[2000] = 4.0f;
    for (int32_t i = 0; i < 300; i++) x[100 + i] = 3.0f; /* the list ends among these */
    x[2500] = 5.0f;
    assert_int_equal(ampr__nucleus_cands(x, 3000, AMPR__CANDS_MAX, 1.0f, 0.5f, vals, ids, &mass, scr), 0);
    assert_int_equal(ampr__nucleus_cands(x, 3000, AMPR__CANDS_MAX, 1.0f, 0.03f, vals, ids, &mass, scr), 1);
    /* no distribution: NaN, +inf, nothing finite */
    x[7] = NAN;
    assert_int_equal(ampr__nucleus_cands(x, 3000, AMPR__CANDS_MAX, 1.0f, 0.03f, vals, ids, &mass, scr), 0);
    x[7] = INFINITY;
    assert_int_equal(ampr__nucleus_cands(x, 3000, AMPR__CANDS_MAX, 1.0f, 0.03f, vals, ids, &mass, scr), 0);
    for (int32_t i = 0; i < 3000; i++) x[i] = -INFINITY;
    assert_int_equal(ampr__nucleus_cands(x, 3000, AMPR__CANDS_MAX, 1.0f, 0.03f, vals, ids, &mass, scr), 0);
    free(x);
    free(tmp);
    free(scr);
    free(c);
}

/* Temperature alone (sampler.h AMPR__WANT_DRAW): the walk a backend makes
 * (ampr__sample_walk) gives the token ampr__sample draws from the row with
 * the same uniform number, or -1 near an edge (rarely: the margin is 1e-9
 * of the mass) or without a distribution; the exps are the same floats from
 * the scalar code and the AVX2 lanes. */
static void test_temperature_walk(void **state) {
    (void)state;
    const int32_t sizes[] = {7, 320, 32000, 128256};
    float *x = malloc(128256 * sizeof *x), *tmp = malloc(128256 * sizeof *tmp), *row = malloc(128256 * sizeof *row);
    float *e0 = malloc(128256 * sizeof *e0), *e1 = malloc(128256 * sizeof *e1);
    ampr__err err = {0};
    int decided = 0, undecided = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (int kind = 0; kind < 4; kind++) {
            int32_t n = sizes[a];
            make_logits(x, n, kind < 3 ? kind : 0);
            if (kind == 3) /* masked */
                for (int32_t i = 0; i < n; i++) if (i % 5) x[i] = -INFINITY;
            /* the exps, bit for bit at both levels */
            double z0 = ampr__exp_det_sum_scalar(x, n, 9.5f, e0);
            assert_true(ampr__exp_det_sum_soft(x, n, 9.5f, e1) == z0); /* a CPU without FMA */
            assert_memory_equal(e0, e1, (size_t)n * sizeof *e0);
            if (ampr__quant_simd_max() >= AMPR__SIMD_AVX2) {
                double z1 = ampr__exp_det_sum_avx2(x, n, 9.5f, e1);
                assert_memory_equal(e0, e1, (size_t)n * sizeof *e0);
                assert_true(fabs(z1 - z0) <= 1e-12 * z0);
            }
            const float temps[] = {0.7f, 1.0f, 1.6f};
            for (int b = 0; b < 3; b++) {
                ampr__sampler full, walk;
                uint64_t seed = 100 + (uint64_t)(a * 16 + (size_t)kind * 4 + (size_t)b);
                assert_int_equal(ampr__sampler_init(&full, n, temps[b], 0, 1.0f, 1.0f, 64, seed, &err), AMPR_OK);
                assert_int_equal(ampr__sampler_init(&walk, n, temps[b], n + 1, 1.0f, 1.0f, 64, seed, &err), AMPR_OK);
                for (int r = 0; r < 40; r++) {
                    ampr__row_want w;
                    ampr__sampler_want(&walk, NULL, 0, NULL, &w);
                    assert_int_equal(w.what, AMPR__WANT_DRAW);
                    int32_t got = ampr__sample_walk(x, n, w.temperature, w.u, tmp);
                    memcpy(row, x, (size_t)n * sizeof *row);
                    int32_t want = ampr__sample(&full, row, NULL, 0);
                    if (got < 0) { /* the row would come: the walker draws from it */
                        undecided++;
                        memcpy(row, x, (size_t)n * sizeof *row);
                        got = ampr__sample(&walk, row, NULL, 0);
                    } else {
                        decided++;
                        ampr__sampler_drew(&walk);
                    }
                    if (got != want) fail_msg("n %d kind %d T %g draw %d: walked %d, drew %d", n, kind, temps[b], r, got, want);
                }
                ampr__sampler_free(&full);
                ampr__sampler_free(&walk);
            }
        }
    assert_true(decided >= 1900 && undecided <= 5);
    /* no distribution: the row decides (its argmax) */
    x[0] = NAN;
    assert_int_equal(ampr__sample_walk(x, 320, 1.0f, 0.5f, tmp), -1);
    x[0] = INFINITY;
    assert_int_equal(ampr__sample_walk(x, 320, 1.0f, 0.5f, tmp), -1);
    for (int32_t i = 0; i < 320; i++) x[i] = -INFINITY;
    assert_int_equal(ampr__sample_walk(x, 320, 1.0f, 0.5f, tmp), -1);
    free(x);
    free(tmp);
    free(row);
    free(e0);
    free(e1);
}

/* One argmax rule everywhere (logits.h): the first index of the largest
 * value, a NaN counting as -inf: the scalar and AVX2 levels agree with it,
 * and so does a candidate list's first id (a GPU's greedy and lists). */
static void test_argmax_nan(void **state) {
    (void)state;
    enum { N = 40 };
    int avx2 = ampr__quant_simd_max() >= AMPR__SIMD_AVX2;
    float x[N], vals[AMPR__CANDS_MAX];
    int32_t ids[AMPR__CANDS_MAX];
    struct { int nan_at[3]; int big_at; float big; int32_t want; } rows[] = {
        {{0, -1, -1}, 25, 5.0f, 25},   /* NaN first, the max later */
        {{3, 17, 33}, 9, 1.0f, 9},     /* NaNs around it */
        {{0, 1, 2}, -1, 0.0f, 3},      /* zeros after NaNs: the first zero */
        {{-1, -1, -1}, 30, INFINITY, 30},
    };
    for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
        for (int i = 0; i < N; i++) x[i] = r == 2 ? 0.0f : -1.0f - 0.01f * (float)i;
        for (int k = 0; k < 3; k++) if (rows[r].nan_at[k] >= 0) x[rows[r].nan_at[k]] = NAN;
        if (rows[r].big_at >= 0) x[rows[r].big_at] = rows[r].big;
        assert_int_equal(ampr__argmax_scalar(x, N), rows[r].want);
        if (avx2) assert_int_equal(ampr__argmax_avx2(x, N), rows[r].want);
        ampr__topk_cands(x, N, 8, 1.0f, 4, vals, ids);
        assert_int_equal(ids[0], rows[r].want);
    }
    for (int i = 0; i < N; i++) x[i] = i % 2 ? NAN : -INFINITY; /* nothing above -inf: 0 */
    assert_int_equal(ampr__argmax_scalar(x, N), 0);
    if (avx2) assert_int_equal(ampr__argmax_avx2(x, N), 0);
    ampr__topk_cands(x, N, 8, 1.0f, 4, vals, ids);
    assert_int_equal(ids[0], 0);
}

/* The repetition penalty: the greedy pick is the argmax after dividing the
 * positive (multiplying the negative) logits of the last n ids once each. */
static void test_repetition_penalty(void **state) {
    (void)state;
    float x[8] = {1.0f, 3.0f, 2.9f, -1.0f, 0.5f, 2.0f, 2.8f, -0.5f};
    int32_t hist[5] = {1, 1, 6, 3, 0};
    ampr__sampler s;
    ampr__err err = {0};
    assert_int_equal(ampr__sampler_init(&s, 8, 0.0f, 0, 1.0f, 1.2f, 64, 1, &err), AMPR_OK);
    /* 3.0 -> 2.5, 2.8 -> 2.33: token 2 (2.9) wins */
    assert_int_equal(ampr__sample(&s, x, hist, 5), 2);
    assert_true(fabsf(x[1] - 2.5f) < 1e-6f && fabsf(x[3] + 1.2f) < 1e-6f);
    ampr__sampler_free(&s);
    float y[8] = {1.0f, 3.0f, 2.9f, -1.0f, 0.5f, 2.0f, 2.8f, -0.5f};
    assert_int_equal(ampr__sampler_init(&s, 8, 0.0f, 0, 1.0f, 1.2f, 2, 1, &err), AMPR_OK);
    /* only the last 2 ids (3, 0) count: token 1 keeps 3.0 */
    assert_int_equal(ampr__sample(&s, y, hist, 5), 1);
    ampr__sampler_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_top_k_exact),
        cmocka_unit_test(test_nucleus),
        cmocka_unit_test(test_temperature_frequencies),
        cmocka_unit_test(test_greedy_and_seed),
        cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_top_k_prefilter_margin),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_candidate_lists),
        cmocka_unit_test(test_penalized_lists),
        cmocka_unit_test(test_nucleus_lists),
        cmocka_unit_test(test_temperature_walk),
        cmocka_unit_test(test_argmax_nan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
