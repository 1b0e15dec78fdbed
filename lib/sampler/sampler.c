/*
 * sampler.c -- see sampler.h. The order of operations follows the common
 * practice of llama.cpp and transformers: repetition penalty on raw logits,
 * then temperature, top-k, softmax, top-p (nucleus), and a draw.
 * Per token this touches the whole vocabulary (32k-128k logits) once or
 * twice and sorts only the candidates: top-k streams through a heap of k, a
 * nucleus without top-k is bounded by a histogram of the probability mass
 * first, and temperature alone draws in id order without sorting. The exps
 * of a nucleus without top-k and of temperature alone are ampr__exp_det's,
 * which a GPU computes bit for bit, so that a list or a walk made there
 * draws the row's token (sampler.h: what a draw needs of a row).
 */
#include "sampler.h"

#include <math.h>
#include <string.h>

#include "../fallback/logits.h"

static int penalizes(const ampr__sampler *s) {
    return s->repetition_penalty != 1.0f && s->repetition_penalty > 0.0f;
}

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
    int nucleus_only = temperature > 0.0f && !(top_k > 0 && top_k < n_vocab) && top_p > 0.0f &&
                       top_p < 1.0f;
    if (nucleus_only && s->ids && s->vals)
        s->keys = ampr__alloc_array(2 * (size_t)n_vocab, sizeof(uint64_t), err);
    int penalty = penalizes(s);
    if (penalty && s->ids && s->vals) s->seen = ampr__alloc_array((size_t)n_vocab, 1, err);
    if (!s->ids || !s->vals || (nucleus_only && !s->keys) || (penalty && !s->seen)) {
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
    ampr__free(s->keys);
    ampr__free(s->seen);
    s->seen = NULL;
    s->ids = NULL;
    s->vals = NULL;
    s->keys = NULL;
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
/* Heap -> the k candidates in [0,k) sorted descending (value, then id). */
static void heap_to_sorted(ampr__sampler *s, int32_t k) {
    for (int32_t end = k - 1; end > 0; end--) {
        swap_cand(s, 0, end);
        sift_down(s, 0, end);
    }
}

/* Sort the m candidates in [0,m) descending (value, then id). Many of them
 * (a flat nucleus: thousands) go through an LSD radix sort of 64-bit keys,
 * (value bits flipped to descending order) << 32 | id, 11 bits a pass over
 * the 32 + id bits; few, or without key space, through the heap. */
static uint32_t desc_bits(float v) {
    uint32_t u;
    if (v == 0.0f) v = 0.0f; /* -0 ties +0, as the comparisons have it */
    memcpy(&u, &v, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* ascending with v */
    return ~u;                                        /* descending */
}

static void sort_cands(ampr__sampler *s, int32_t m) {
    if (m <= 2048 || !s->keys) {
        for (int32_t i = m / 2 - 1; i >= 0; i--) sift_down(s, i, m);
        heap_to_sorted(s, m);
        return;
    }
    uint64_t *a = s->keys, *b = s->keys + s->n_vocab;
    int id_bits = 1;
    while (id_bits < 31 && ((int64_t)1 << id_bits) < (int64_t)s->n_vocab) id_bits++;
    for (int32_t i = 0; i < m; i++)
        a[i] = ((uint64_t)desc_bits(s->vals[i]) << id_bits) | (uint32_t)s->ids[i];
    for (int shift = 0; shift < 32 + id_bits; shift += 11) {
        size_t count[2048] = {0};
        for (int32_t i = 0; i < m; i++) count[(a[i] >> shift) & 2047]++;
        size_t sum = 0;
        for (int d = 0; d < 2048; d++) {
            size_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (int32_t i = 0; i < m; i++) b[count[(a[i] >> shift) & 2047]++] = a[i];
        uint64_t *t = a;
        a = b;
        b = t;
    }
    uint64_t id_mask = ((uint64_t)1 << id_bits) - 1;
    for (int32_t i = 0; i < m; i++) {
        uint32_t u = ~(uint32_t)(a[i] >> id_bits); /* back to ascending bits */
        u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
        memcpy(&s->vals[i], &u, sizeof u);
        s->ids[i] = (int32_t)(a[i] & id_mask);
    }
}

/* top-k: the k largest logits / T, sorted descending, in [0,k), streaming
 * over the logits with a min-heap of k. An element joins only when strictly
 * above the root (an equal value comes later, so its id is larger and it
 * loses the tie). Most elements are far below the root: a block of 16 is
 * first tested with x * (1/T), widened by a margin that covers the rounding
 * of both forms, and only candidates are divided exactly, so the result is
 * the one of dividing every element. */
static void top_k_stream(ampr__sampler *s, const float *logits, int32_t n, int32_t k) {
    const float t = s->temperature, inv = 1.0f / t;
    for (int32_t i = 0; i < k; i++) { /* a NaN counts as -inf (later ones never enter) */
        float v = logits[i] / t;
        s->ids[i] = i;
        s->vals[i] = v != v ? -INFINITY : v;
    }
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(s, i, k);
    int32_t i = k;
    int exact = !isfinite(inv); /* a temperature near 0: no prefilter */
    while (i < n) {
        float root = s->vals[0];
        float bar = root - fabsf(root) * 1e-6f - 1e-30f;
        int32_t end = i + 16 <= n ? i + 16 : n;
        int any = exact;
        for (int32_t j = i; j < end; j++) any |= logits[j] * inv > bar;
        if (any)
            for (int32_t j = i; j < end; j++) {
                float v = logits[j] / t;
                if (v > s->vals[0]) {
                    s->vals[0] = v;
                    s->ids[0] = j;
                    sift_down(s, 0, k);
                }
            }
        i = end;
    }
    heap_to_sorted(s, k);
}

/* v = x / t into out[0..n), and the largest (x[0]'s when it is a NaN). */
static float scale_into(const float *x, int32_t n, float t, float *out) {
    float mx = x[0] / t;
    for (int32_t i = 0; i < n; i++) {
        out[i] = x[i] / t;
        mx = out[i] > mx ? out[i] : mx;
    }
    return mx;
}

/* v = logits / T into vals[0..n), and the largest. */
static float scaled(ampr__sampler *s, const float *logits, int32_t n) {
    return scale_into(logits, n, s->temperature, s->vals);
}

/* Temperature alone: e[0..n) are the exps in id order; the first token
 * whose running sum passes r, with the sums before it (*below) and at it
 * (*at), or -1 when rounding ran past the end. The host's draw and the
 * walk a backend makes (ampr__sample_walk) are this one. */
static int32_t walk_to(const float *e, int32_t n, double r, double *below, double *at) {
    double acc = 0;
    for (int32_t i = 0; i < n; i++) {
        double prev = acc;
        acc += e[i];
        if (r < acc) {
            *below = prev;
            *at = acc;
            return i;
        }
    }
    return -1;
}

/* top-p without top-k: the candidates of the nucleus, sorted descending, in
 * [0,m) (m >= the nucleus, 0 when the row has no finite distribution), mx
 * and *total = sum over all n of exp_det(v - mx), v = logits / T. Sorting the
 * whole vocabulary for that took milliseconds a token; instead the mass goes
 * into buckets of 1/16 nat below the max, and the bucket where it crosses
 * top_p, with the next non-empty one against rounding, bounds the candidates;
 * only those are sorted. (ampr__sample still falls back to every candidate
 * if the float walk over them ends short of top_p.) */
#define NUC_BUCKETS 512 /* 32 nats; everything further down shares the last */
static int nuc_bucket(float mx, float v) {
    float d = (mx - v) * 16.0f;
    return d < (float)(NUC_BUCKETS - 1) ? (int)d : NUC_BUCKETS - 1; /* NaN: the last */
}

/* a softmax exists: finite max, positive finite normalizer */
static int finite_dist(float mx, double total) {
    return isfinite(mx) && total > 0 && isfinite(total);
}

static int32_t nucleus(ampr__sampler *s, const float *logits, int32_t n, float *mx_out,
                       double *total) {
    float mx = scaled(s, logits, n);
    *mx_out = mx;
    /* the exps go to ids' storage, reused as floats (malloc'd memory takes
     * the type of what is stored; ids are written only after the last read) */
    float *e = (float *)s->ids;
    *total = ampr__exp_det_sum(s->vals, n, mx, e);
    if (!finite_dist(mx, *total)) return 0;
    double mass[NUC_BUCKETS] = {0};
    int32_t count[NUC_BUCKETS] = {0};
    for (int32_t i = 0; i < n; i++) {
        int b = nuc_bucket(mx, s->vals[i]);
        mass[b] += e[i];
        count[b]++;
    }
    double goal = (double)s->top_p * *total, cum = 0;
    int last = NUC_BUCKETS - 1;
    for (int b = 0; b < NUC_BUCKETS; b++) {
        cum += mass[b];
        if (cum >= goal) {
            last = b + 1;
            while (last < NUC_BUCKETS - 1 && count[last] == 0) last++;
            if (last > NUC_BUCKETS - 1) last = NUC_BUCKETS - 1;
            break;
        }
    }
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++) { /* in place: m <= i */
        if (nuc_bucket(mx, s->vals[i]) <= last) {
            s->vals[m] = s->vals[i];
            s->ids[m] = i;
            m++;
        }
    }
    sort_cands(s, m);
    return m;
}

static int32_t draw(ampr__sampler *s, int32_t k, float sum, int nucleus_on);

/* A nucleus without top-k: vals[0..k) hold x / T of candidates sorted as
 * the whole row sorts them, mx the row's largest x / T, sum its mass:
 * their exps (ampr__exp_det's, as the mass's) in place; returns the
 * probability they reach, as draw() adds it up. */
static float nucleus_exps(ampr__sampler *s, int32_t k, float mx, float sum) {
    (void)ampr__exp_det_sum(s->vals, k, mx, s->vals); /* 8 lanes at a time where the CPU can */
    float reach = 0.0f;
    for (int32_t i = 0; i < k; i++) reach += s->vals[i] / sum;
    return reach;
}

/* How many of the probabilities p[0..k) (sorted descending) a nucleus
 * keeps: up to the first whose running sum reaches top_p, or all k when
 * none does; *cum: the sum at the last one kept. */
static int32_t nucleus_keep(const float *p, int32_t k, float top_p, float *cum) {
    float c = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        c += p[i];
        if (c >= top_p) {
            *cum = c;
            return i + 1;
        }
    }
    *cum = c;
    return k;
}

/* top-k: vals/ids hold the k largest logits / T (finite first), sorted
 * descending: their softmax, then the draw. */
static int32_t draw_top_k(ampr__sampler *s, int32_t k, int nucleus_on) {
    float mx = s->vals[0], sum = 0.0f;
    for (int32_t i = 0; i < k; i++) {
        s->vals[i] = expf(s->vals[i] - mx);
        sum += s->vals[i];
    }
    return draw(s, k, sum, nucleus_on);
}

int32_t ampr__sampler_penalized(ampr__sampler *s, const int32_t *history, size_t n_history,
                                int32_t *ids, int32_t max) {
    size_t from = n_history > (size_t)s->repetition_last_n && s->repetition_last_n > 0
                      ? n_history - (size_t)s->repetition_last_n
                      : 0;
    int32_t n = 0, over = 0;
    for (size_t i = from; history && i < n_history && !over; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= s->n_vocab) continue;
        int seen = 0;
        if (s->seen) seen = s->seen[id];
        else for (int32_t j = 0; j < n && !seen; j++) seen = ids[j] == id; /* (no penalty: a caller's question) */
        if (seen) continue;
        if (n == max) {
            over = 1;
            break;
        }
        if (s->seen) s->seen[id] = 1;
        ids[n++] = id;
    }
    for (int32_t j = 0; s->seen && j < n; j++) s->seen[ids[j]] = 0;
    return over ? -1 : n;
}

void ampr__sampler_want(ampr__sampler *s, const int32_t *history, size_t n_history,
                        int32_t *pen_buf, ampr__row_want *w) {
    w->what = AMPR__WANT_ROW;
    w->temperature = s->temperature;
    w->top_k = s->top_k;
    w->m = 0;
    w->top_p = s->top_p;
    w->penalty = 1.0f;
    w->n_pen = 0;
    w->pen_ids = NULL;
    if (!isfinite(s->temperature)) return;
    int no_k = !(s->top_k > 0 && s->top_k < s->n_vocab), with_p = s->top_p > 0.0f && s->top_p < 1.0f;
    int topk = !no_k && s->top_k + AMPR__CAND_SLACK <= AMPR__CANDS_MAX;
    if (s->temperature > 0.0f && !topk && !no_k) return; /* k beyond a list */
    if (penalizes(s)) { /* the penalty's ids, or the row */
        int32_t n = pen_buf ? ampr__sampler_penalized(s, history, n_history, pen_buf, AMPR__PEN_MAX) : -1;
        if (n < 0) return;
        w->penalty = s->repetition_penalty;
        w->n_pen = n;
        w->pen_ids = pen_buf;
    }
    if (s->temperature <= 0.0f) {
        w->what = AMPR__WANT_ARGMAX;
    } else if (topk) {
        w->what = AMPR__WANT_CANDS;
        w->m = AMPR__MIN(s->top_k + AMPR__CAND_SLACK, s->n_vocab);
    } else if (with_p) { /* a nucleus without top-k: the longest list */
        w->what = AMPR__WANT_CANDS;
        w->top_k = 0;
        w->m = AMPR__MIN(AMPR__CANDS_MAX, s->n_vocab);
    } else { /* temperature alone: the next uniform number, not taken yet */
        ampr__sampler peek = *s;
        w->what = AMPR__WANT_DRAW;
        w->u = rng_f32(&peek);
        w->drawn = -1; /* until a backend says otherwise: the row */
    }
}

void ampr__sampler_drew(ampr__sampler *s) { (void)rng_f32(s); }

/* What a backend's walk or nucleus list starts from: the row's largest
 * x / T (*mx, as ampr__sample's) and mass (*total, 0 when none), with
 * tmp[0..n) = the exps; 0 when the row is no distribution (a NaN, +inf,
 * nothing finite), which a backend leaves to the host's row. */
static int row_mass(const float *x, int32_t n, float t, float *tmp, float *mx, double *total) {
    *total = 0;
    *mx = scale_into(x, n, t, tmp);
    if (!isfinite(*mx) || ampr__row_nonfinite(tmp, n)) return 0;
    *total = ampr__exp_det_sum(tmp, n, *mx, tmp);
    return finite_dist(*mx, *total);
}

int32_t ampr__sample_walk(const float *x, int32_t n, float t, float u, float *tmp) {
    float mx;
    double total;
    if (!row_mass(x, n, t, tmp, &mx, &total)) return -1;
    double r = (double)u * total, eps = AMPR__DRAW_MARGIN * total, below = 0, at = 0;
    int32_t i = walk_to(tmp, n, r, &below, &at);
    return i >= 0 && r - below > eps && at - r > eps ? i : -1;
}

/* ---- candidate lists ------------------------------------------------------- */

/* x / T as the top-k path sees it: NaN as -inf. */
static float scaled_or_ninf(float x, float t) {
    float v = x / t;
    return v != v ? -INFINITY : v;
}

/* a below b in (value desc, id asc) order, values with NaN as -inf (-0 and
 * +0 compare equal as floats): b is the better candidate */
static int cand_below(float va, int32_t ia, float vb, int32_t ib) {
    return va < vb || (va == vb && ia > ib);
}

static void cand_sift(float *eff, int32_t *ids, int32_t i, int32_t n) {
    for (;;) { /* min-heap: the worst candidate at the root */
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_below(eff[l], ids[l], eff[m], ids[m])) m = l;
        if (r < n && cand_below(eff[r], ids[r], eff[m], ids[m])) m = r;
        if (m == i) return;
        float tv = eff[i]; eff[i] = eff[m]; eff[m] = tv;
        int32_t ti = ids[i]; ids[i] = ids[m]; ids[m] = ti;
        i = m;
    }
}

/* As top_k_stream, on the logits themselves: a heap of m streams over the
 * row, blocks of 16 first tested against the root (most of a row is far
 * below it; a NaN or an equal value never enters: a later id loses ties). */
int ampr__topk_cands(const float *x, int32_t n, int32_t m, float t, int32_t k, float *vals,
                     int32_t *ids) {
    float eff[AMPR__CANDS_MAX];
    if (m > AMPR__CANDS_MAX) m = AMPR__CANDS_MAX; /* (callers ask for at most that) */
    for (int32_t i = 0; i < m; i++) {
        eff[i] = x[i] != x[i] ? -INFINITY : x[i];
        ids[i] = i;
    }
    for (int32_t i = m / 2 - 1; i >= 0; i--) cand_sift(eff, ids, i, m);
    for (int32_t i = m; i < n;) {
        int32_t end = i + 16 <= n ? i + 16 : n;
        float root = eff[0];
        int any = 0;
        for (int32_t j = i; j < end; j++) any |= x[j] > root;
        if (any)
            for (int32_t j = i; j < end; j++)
                if (x[j] > eff[0]) {
                    eff[0] = x[j];
                    ids[0] = j;
                    cand_sift(eff, ids, 0, m);
                }
        i = end;
    }
    for (int32_t end = m - 1; end > 0; end--) { /* heap -> best first */
        float tv = eff[0]; eff[0] = eff[end]; eff[end] = tv;
        int32_t ti = ids[0]; ids[0] = ids[end]; ids[end] = ti;
        cand_sift(eff, ids, 0, end);
    }
    for (int32_t i = 0; i < m; i++) vals[i] = x[ids[i]];
    return m == n || scaled_or_ninf(vals[m - 1], t) < scaled_or_ninf(vals[k - 1], t);
}

/* A list (value desc, id asc) as x / T in the whole row's order into
 * v / vid: division can make neighbours equal, which the whole-row path
 * orders by id: insertion sort (runs are short). */
static void list_scaled(const float *vals, const int32_t *ids, int32_t m, float t, float *v,
                        int32_t *vid) {
    for (int32_t i = 0; i < m; i++) {
        float x = scaled_or_ninf(vals[i], t);
        int32_t id = ids[i], j = i;
        while (j > 0 && v[j - 1] == x && vid[j - 1] > id) {
            v[j] = v[j - 1];
            vid[j] = vid[j - 1];
            j--;
        }
        v[j] = x;
        vid[j] = id;
    }
}

int ampr__nucleus_cands(const float *x, int32_t n, int32_t m, float t, float top_p, float *vals,
                        int32_t *ids, double *mass, float *tmp) {
    m = AMPR__MIN(AMPR__MIN(m, n), AMPR__CANDS_MAX);
    float mx;
    if (!row_mass(x, n, t, tmp, &mx, mass)) return 0;
    double z = *mass, margin = AMPR__MASS_MARGIN(n);
    if ((float)(z * (1 - margin)) != (float)(z * (1 + margin))) return 0;
    float sum = (float)z;
    /* no probability exceeds 1 / sum (the largest's exp is 1): when m of
     * them, with their float sums' rounding, cannot reach top_p, the row is
     * too flat for any list of m (no need to make it) */
    if ((double)m / sum * 1.001 < (double)top_p) return 0;
    ampr__topk_cands(x, n, m, t, 1, vals, ids);
    float v[AMPR__CANDS_MAX], p[AMPR__CANDS_MAX], cum;
    int32_t vid[AMPR__CANDS_MAX];
    list_scaled(vals, ids, m, t, v, vid);
    (void)ampr__exp_det_sum(v, m, mx, p);
    for (int32_t i = 0; i < m; i++) p[i] /= sum; /* as draw() */
    int32_t j = nucleus_keep(p, m, top_p, &cum);
    return cum >= top_p && (m == n || v[m - 1] < v[j - 1]);
}

int32_t ampr__sample_cands(ampr__sampler *s, const float *vals, const int32_t *ids, int32_t m,
                           double mass) {
    list_scaled(vals, ids, m, s->temperature, s->vals, s->ids);
    /* as ampr__sample: without a finite largest value, greedy on the logits,
     * whose argmax is the list's first */
    if (!isfinite(s->vals[0])) return ids[0];
    if (s->top_k > 0 && s->top_k < s->n_vocab) return draw_top_k(s, s->top_k, s->top_p > 0.0f && s->top_p < 1.0f);
    /* a nucleus without top-k: the row's largest is the list's first */
    nucleus_exps(s, m, s->vals[0], (float)mass);
    return draw(s, m, (float)mass, 1);
}

int32_t ampr__sample(ampr__sampler *s, float *logits, const int32_t *history, size_t n_history) {
    int32_t n = s->n_vocab;
    if (penalizes(s) && history) { /* each distinct token once (s->ids is scratch until top-k) */
        int32_t np = ampr__sampler_penalized(s, history, n_history, s->ids, n);
        for (int32_t i = 0; i < np; i++) logits[s->ids[i]] = ampr__penalize(logits[s->ids[i]], s->repetition_penalty);
    }
    if (s->temperature <= 0.0f) return ampr__argmax(logits, n);

    int nucleus_on = s->top_p > 0.0f && s->top_p < 1.0f;
    int32_t k = (s->top_k > 0 && s->top_k < n) ? s->top_k : n;
    float sum;
    if (k < n) {
        top_k_stream(s, logits, n, k);
        /* logits / T overflowed (a tiny T), or +inf / nothing finite: the
         * limit is greedy on the logits themselves */
        if (!isfinite(s->vals[0])) return ampr__argmax(logits, n);
        return draw_top_k(s, k, nucleus_on);
    } else if (nucleus_on) {
        double total;
        float mx;
        k = nucleus(s, logits, n, &mx, &total);
        if (k == 0) return ampr__argmax(logits, n); /* +inf, NaN or nothing finite */
        sum = (float)total; /* the softmax is over the whole vocabulary */
        if (nucleus_exps(s, k, mx, sum) < s->top_p && k < n) { /* rounding left the walk short: all */
            scaled(s, logits, n);
            for (int32_t i = 0; i < n; i++) s->ids[i] = i;
            sort_cands(s, n);
            k = n;
            nucleus_exps(s, k, mx, sum);
        }
    } else {
        /* temperature alone: a draw over the whole vocabulary, in id order,
         * with exps a GPU makes bit for bit (ampr__sample_walk) */
        float mx = scaled(s, logits, n);
        double total = ampr__exp_det_sum(s->vals, n, mx, s->vals);
        if (!finite_dist(mx, total)) return ampr__argmax(logits, n);
        double below, at;
        int32_t i = walk_to(s->vals, n, (double)rng_f32(s) * total, &below, &at);
        if (i >= 0) return i;
        /* rounding ran past the end: the last token with mass */
        for (i = n - 1; i > 0 && !(s->vals[i] > 0); i--) {}
        return i;
    }
    return draw(s, k, sum, nucleus_on);
}

/* The draw over the k candidates in vals/ids, sorted descending, vals
 * holding their unnormalized probabilities summing to sum: normalize, cut
 * the nucleus, draw. */
static int32_t draw(ampr__sampler *s, int32_t k, float sum, int nucleus_on) {
    for (int32_t i = 0; i < k; i++) s->vals[i] /= sum;
    if (nucleus_on) {
        float cum;
        k = nucleus_keep(s->vals, k, s->top_p, &cum);
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
