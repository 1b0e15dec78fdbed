/*
 * sampler.h -- choosing the next token from logits: greedy, temperature,
 * top-k, top-p, repetition penalty, with a seeded RNG owned by the request.
 */
#ifndef AMPR_SAMPLER_H
#define AMPR_SAMPLER_H

#include "../common/common.h"
#include "../fallback/logits.h"

typedef struct ampr__sampler {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* <= 0: off */
    float top_p;              /* >= 1: off */
    float repetition_penalty; /* 1: off */
    int32_t repetition_last_n;
    uint64_t rng;             /* xorshift64* state */
    int32_t n_vocab;
    /* scratch: candidate (id, value) pairs, sized n_vocab */
    int32_t *ids;
    float *vals;
    /* a nucleus without top-k: 2 x n_vocab sort keys for large nuclei */
    uint64_t *keys;
    /* a repetition penalty: n_vocab marks, all 0 between calls (which ids
     * of a window were seen: ampr__sampler_penalized) */
    uint8_t *seen;
} ampr__sampler; /* a request's own: its scratch and marks are used by one thread at a time */

ampr_status ampr__sampler_init(ampr__sampler *s, int32_t n_vocab, float temperature,
                               int32_t top_k, float top_p, float repetition_penalty,
                               int32_t repetition_last_n, uint64_t seed, ampr__err *err);
void ampr__sampler_free(ampr__sampler *s);
/* Restart the RNG as ampr__sampler_init did for this seed. */
void ampr__sampler_reseed(ampr__sampler *s, uint64_t seed);

/* Pick the next token. logits (n_vocab) may be modified. history holds the
 * ids seen so far (prompt + generated), used by the repetition penalty. */
int32_t ampr__sample(ampr__sampler *s, float *logits, const int32_t *history, size_t n_history);

/* ---- what a draw needs of a row ------------------------------------------
 * A device backend need not copy a whole row of logits (128-512 KB) to the
 * host for every token:
 *   greedy (no temperature): the argmax is the token;
 *   top-k (0 < top_k < n_vocab, top_k + AMPR__CAND_SLACK <= AMPR__CANDS_MAX,
 *     a finite temperature, with or without top-p):
 *     the draw depends only on the k largest logits / T. The m = top_k +
 *     AMPR__CAND_SLACK largest logits of the row, by (value desc, id asc),
 *     give the same token for the same RNG state as the whole row, unless
 *     a tie in logits / T reaches from the k-th of them to the m-th (then
 *     the whole row is needed: ampr__topk_cands says which);
 *   temperature alone (no top-k, no top-p, a finite T > 0): the draw walks
 *     the whole row's exp(x/T - max) in id order to u * their sum, u the
 *     request's next uniform number, which the host knows before the step:
 *     the backend makes the walk and says the token, unless u * sum lies
 *     within AMPR__DRAW_MARGIN * sum of a token's edge (then the double
 *     rounding of the host's own sum could pick the neighbour, and the row
 *     comes instead; ampr__sample_walk; the exps are bit for bit the same
 *     everywhere, ampr__exp_det);
 *   a nucleus without top-k (0 < top_p < 1, a finite T > 0): the draw
 *     depends on the tokens whose mass, largest first, first reaches top_p,
 *     and on the row's whole mass (sum of exp(x/T - max), each exp
 *     ampr__exp_det's). The AMPR__CANDS_MAX largest logits and that mass
 *     give the same token for the same RNG state as the whole row when the
 *     nucleus ends within the list, away from a tie with the list's last,
 *     and the mass's rounding to float is the same wherever it is summed
 *     (ampr__nucleus_cands says which); otherwise the row (and a request
 *     whose lists keep failing asks for rows a while: generate.c);
 * With a repetition penalty, these draws name the ids it applies to (at
 * most AMPR__PEN_MAX; more: the row): the backend penalizes them in the
 * row, takes the argmax, the list or the walk, and puts the logits back. */
#define AMPR__CAND_SLACK 8
#define AMPR__CANDS_MAX 256 /* the most candidates a row may ask for */
#define AMPR__PEN_MAX 1024  /* the most penalized ids a row may name (a whole history's
                             * distinct ids, repetition_last_n <= 0, as transformers
                             * penalizes: ~800 for a 2k-token prompt) */

enum { AMPR__WANT_ROW = 0, AMPR__WANT_ARGMAX = 1, AMPR__WANT_CANDS = 2, AMPR__WANT_NONE = 3,
       AMPR__WANT_DRAW = 4 };
/* A temperature-only draw is decided away from the host only this far (a
 * fraction of the row's mass) from a token's edge: far above what summing
 * 128k exps in another order can move an edge (~1e-11 of the mass). */
#define AMPR__DRAW_MARGIN 1e-9
/* A nucleus's mass over n logits, summed in double in another order, rounds
 * to the same float when it lies this far (relatively) from a float rounding
 * edge: about twice the two sums' error bounds (the host's in id order,
 * (n - 1) 2^-53; a GPU block's, per thread, warp and block, (n / 1024 + 37)
 * 2^-53): 2.9e-11 at a 128k vocabulary. */
#define AMPR__MASS_MARGIN(n) (2.3e-16 * (double)(n) + 1e-14)

/* ---- what the fallback's monitor needs of a row ----------------------------
 * A request on a lower tier under the fallback's checks (fallback.h) reads
 * each next-token row's entropy, and every check_every tokens compares its
 * last check_window rows with the top tier's (KL). Neither needs the row on
 * the host: the backend computes the entropy where the row is, and keeps the
 * rows in a ring of its own (host memory on the CPU, device memory on a
 * GPU), against which the top tier's check rows are compared there. */
typedef struct ampr__ring {
    int32_t n_rows; /* slots, each a row of the vocabulary's logits */
    float *host;    /* the CPU's storage: [n_rows][vocab] */
    void *dev;      /* a device backend's (backend.h ring_new) */
} ampr__ring;

/* What a pass brings back to the host for one row of logits (backend.h),
 * and what it brought. */
typedef struct ampr__row_want {
    int what;          /* AMPR__WANT_*: the row, its argmax, its largest, or nothing */
    float temperature; /* AMPR__WANT_CANDS, _DRAW: the draw's T; CANDS: k and m candidates */
    int32_t top_k, m;  /* CANDS with top_k 0: a nucleus without top-k, */
    float top_p;       /* ... of this top_p (0 < top_p < 1) */
    float u;           /* AMPR__WANT_DRAW: the draw's uniform number in [0, 1) */
    float *cand_vals;  /* AMPR__WANT_CANDS: [m] logits, the caller's memory */
    int32_t *cand_ids; /* [m] their token ids */
    /* AMPR__WANT_ARGMAX / CANDS / DRAW: the repetition penalty, applied to the n_pen
     * (distinct) ids before the argmax or the list (x > 0 ? x / penalty :
     * x * penalty, as ampr__sample); the row itself, and the monitor, see
     * the logits as they came. n_pen 0: none. */
    float penalty;
    int32_t n_pen;
    const int32_t *pen_ids; /* [n_pen], the caller's memory */
    /* the monitor's, with any `what` */
    int stats;                 /* fill entropy */
    const ampr__ring *kl_ring; /* non-NULL: fill kl against row kl_slot of kl_ring */
    int32_t kl_slot;
    ampr__ring *keep;          /* non-NULL: store the row in slot keep_slot of keep */
    int32_t keep_slot;         /* (after the KL: a row may be compared with the slot it replaces) */
    /* filled by the backend */
    int32_t argmax;    /* the row's argmax (ampr__argmax's rule; penalized, with n_pen), for
                        * AMPR__WANT_ARGMAX and AMPR__WANT_CANDS rows (a device may set it
                        * for every row) */
    int32_t n_cands;   /* AMPR__WANT_CANDS: m when the list decides the draw, 0 when
                        * it cannot and the row came instead */
    double mass;       /* a decided nucleus list: the row's mass (ampr__nucleus_cands) */
    int32_t drawn;     /* AMPR__WANT_DRAW: the token, or -1 when the walk could not
                        * decide and the row came instead */
    float entropy;     /* stats: nats of softmax(row) */
    int nonfinite;     /* stats: the row holds a NaN or +inf (a broken tier: fallback.h) */
    double kl;         /* kl_ring: KL(softmax(row) || softmax(ring row)), nats */
} ampr__row_want;

/* Whether the backend takes w's argmax, list or walk (applying its
 * repetition penalty first, and taking it back after). */
static inline int ampr__row_draws(const ampr__row_want *w) {
    return w->what == AMPR__WANT_ARGMAX || w->what == AMPR__WANT_CANDS || w->what == AMPR__WANT_DRAW;
}

/* After a pass: whether w's row itself came back (it was asked for, or a
 * list or a walk could not decide and it came instead). */
static inline int ampr__row_came(const ampr__row_want *w) {
    return w->what == AMPR__WANT_ROW || (w->what == AMPR__WANT_CANDS && w->n_cands == 0) ||
           (w->what == AMPR__WANT_DRAW && w->drawn < 0);
}

/* What s's next draw, after history[0..n_history), needs: w->what, and
 * temperature, top_k, m for candidates (the caller sets cand_vals /
 * cand_ids); with a repetition penalty, its ids go to pen_buf
 * (AMPR__PEN_MAX ints, the caller's) and w names them. */
void ampr__sampler_want(ampr__sampler *s, const int32_t *history, size_t n_history,
                        int32_t *pen_buf, ampr__row_want *w);
/* The ids s's repetition penalty applies to after history: the last
 * repetition_last_n (all when <= 0), in range, each once, into ids[0..max).
 * Returns their count, or -1 when there are more than max. */
int32_t ampr__sampler_penalized(ampr__sampler *s, const int32_t *history, size_t n_history,
                                int32_t *ids, int32_t max);
/* AMPR__WANT_DRAW: the token a temperature-only draw with uniform u makes
 * from x[0..n) at temperature t (tmp: n floats of scratch), or -1 when
 * u * sum lies within AMPR__DRAW_MARGIN * sum of a token's edge, or the row
 * has a NaN or no finite distribution (the host's reference of what a
 * backend says; ampr__sample's draw from the row is the same token). */
int32_t ampr__sample_walk(const float *x, int32_t n, float t, float u, float *tmp);
/* After a decided AMPR__WANT_DRAW: the RNG steps past the u it used (the
 * draw from the row would have drawn it). */
void ampr__sampler_drew(ampr__sampler *s);

/* The penalty's rule for one logit. */
static inline float ampr__penalize(float x, float penalty) { return x > 0 ? x / penalty : x * penalty; }

/* The m largest of x[0..n) (1 <= m <= n) by (value desc, id asc; a NaN
 * counts as -inf, -0 as +0) into vals[0..m) and ids[0..m), in that order.
 * Returns 1 when a top-k draw at temperature t (0 < k <= m) from them is the
 * draw from the whole row: m == n, or x/t of the m-th is below x/t of the
 * k-th. The host's reference for the CUDA kernel of the same contract. */
int ampr__topk_cands(const float *x, int32_t n, int32_t m, float t, int32_t k, float *vals,
                     int32_t *ids);
/* A nucleus without top-k: *mass = the sum of ampr__exp_det(x[i]/t - max)
 * over x[0..n), in double, and the m largest of the row as ampr__topk_cands
 * makes them into vals / ids. Returns 1 when a draw at temperature t with
 * top_p from them and (float)*mass is the draw from the whole row: the row
 * has no NaN and a finite max; the list's cumulative probability (the
 * floats the draw adds) reaches top_p at some j-th candidate, and m == n or
 * x/t of the m-th is below x/t of the j-th; and *mass lies
 * AMPR__MASS_MARGIN(n) from a float rounding edge. Returns 0 otherwise (then
 * the list may not be made: a row too flat for m candidates to reach top_p
 * is told from its mass). tmp: n floats of scratch. The host's reference
 * for the CUDA kernel of the same contract. */
int ampr__nucleus_cands(const float *x, int32_t n, int32_t m, float t, float top_p, float *vals,
                        int32_t *ids, double *mass, float *tmp);
/* ampr__sample's draw from a list for which ampr__topk_cands (top-k) or
 * ampr__nucleus_cands (a nucleus without top-k; mass: the row's mass it
 * gave, unused for top-k) returned 1 (m from ampr__sampler_want): the same
 * token, the same RNG step. */
int32_t ampr__sample_cands(ampr__sampler *s, const float *vals, const int32_t *ids, int32_t m,
                           double mass);

/* ampr__argmax (the first index of the largest value): fallback/logits.h */

#endif
