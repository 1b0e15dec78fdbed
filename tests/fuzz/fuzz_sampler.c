/* fuzz_sampler.c -- what a draw needs of a row (lib/sampler/sampler.h,
 * ampr__row_want) against the draw from the whole row. A device backend
 * sends back an argmax, a candidate list, a nucleus's list and mass or a
 * walked token instead of the row, and the engine draws from that; the
 * CPU backend makes the same from its rows (ampr__host_wants), which is
 * the reference a GPU is checked against. For arbitrary rows (half-float
 * logits: NaN, +-inf, -0, ties), temperatures, top-k, top-p, repetition
 * penalties and histories, four draws in a row must each give ampr__sample's
 * token from the whole row with the same RNG state, and leave the row as
 * it came.
 * Layout: byte 0 and the low 2 bits of byte 1: the vocabulary (1..1024);
 * bytes 2-6: indices into the temperature, top-k, top-p, penalty and window
 * tables; byte 7: the seed; byte 8: the history's length (mod 64), then its
 * ids (2 bytes each, some out of range); then the logits as IEEE halves,
 * repeated from the start when the input ends (ties). */
#include "fuzz_util.h"

#include <math.h>

#include "backend/backend.h"
#include "quant/quant.h"
#include "sampler/sampler.h"

static const float temps[] = {0.0f, 1e-30f, 0.05f, 0.3f, 0.8f, 1.0f, 1.7f, 5.0f};
static const float top_ps[] = {1.0f, 0.05f, 0.5f, 0.9f, 0.95f, 0.999f, 0.0f, 0.3f};
static const float penalties[] = {1.0f, 1.3f, 0.7f, 2.0f};
static const int32_t windows[] = {64, 0, 3, 1};

static void fail(const char *what, int draw, int32_t a, int32_t b) {
    fprintf(stderr, "fuzz_sampler: draw %d: %s (%d vs %d)\n", draw, what, a, b);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        fz_install_allocator();
        ready = 1;
    }
    if (size < 9) return 0;
    int32_t n = 1 + data[0] + (int32_t)(data[1] & 3) * 256;
    int32_t ks[] = {0, 1, 3, 40, 247, 248, 1000, n};
    float t = temps[data[2] % 8], top_p = top_ps[data[4] % 8], pen = penalties[data[5] % 4];
    int32_t top_k = ks[data[3] % 8], last_n = windows[data[6] % 4];
    uint64_t seed = data[7];
    size_t pos = 9;
    int32_t hist[64 + 4];
    int32_t n_hist = data[8] % 64;
    for (int32_t i = 0; i < n_hist; i++, pos += 2) {
        uint16_t v = pos + 1 < size ? (uint16_t)(data[pos] | data[pos + 1] << 8) : (uint16_t)i;
        hist[i] = (int32_t)(v % (uint32_t)(n + 8)) - 4; /* a few out of range, both ends */
    }
    if (pos >= size) return 0;
    size_t have = (size - pos) / 2;
    if (have == 0) return 0;
    uint16_t *halves = malloc((size_t)n * sizeof *halves);
    float *x = malloc((size_t)n * sizeof *x), *row = malloc((size_t)n * sizeof *row);
    float *row2 = malloc((size_t)n * sizeof *row2);
    if (!halves || !x || !row || !row2) abort();
    for (int32_t i = 0; i < n; i++) {
        size_t j = pos + 2 * ((size_t)i % have);
        halves[i] = (uint16_t)(data[j] | data[j + 1] << 8);
    }
    ampr__f16_to_f32_n(halves, x, (size_t)n);

    ampr__sampler full, want;
    ampr__err err = {0};
    if (ampr__sampler_init(&full, n, t, top_k, top_p, pen, last_n, seed, &err) != AMPR_OK ||
        ampr__sampler_init(&want, n, t, top_k, top_p, pen, last_n, seed, &err) != AMPR_OK)
        abort();
    int32_t pen_buf[AMPR__PEN_MAX];
    float vals[AMPR__CANDS_MAX];
    int32_t ids[AMPR__CANDS_MAX];
    for (int d = 0; d < 4; d++) {
        memcpy(row, x, (size_t)n * sizeof *row);
        int32_t tok = ampr__sample(&full, row, hist, (size_t)n_hist);

        ampr__row_want w = {0};
        ampr__sampler_want(&want, hist, (size_t)n_hist, pen_buf, &w);
        w.cand_vals = vals;
        w.cand_ids = ids;
        memcpy(row, x, (size_t)n * sizeof *row);
        if (ampr__host_wants(row, 1, n, &w, 0, &err) != AMPR_OK) abort();
        if (memcmp(row, x, (size_t)n * sizeof *row) != 0) fail("the row changed", d, 0, 0);
        int32_t got; /* as generate.c takes the next token */
        if (w.what == AMPR__WANT_ARGMAX) {
            got = w.argmax;
        } else if (w.what == AMPR__WANT_DRAW && w.drawn >= 0) {
            got = w.drawn;
            ampr__sampler_drew(&want);
        } else if (w.what == AMPR__WANT_CANDS && w.n_cands > 0) {
            got = ampr__sample_cands(&want, vals, ids, w.n_cands, w.mass);
        } else {
            memcpy(row2, x, (size_t)n * sizeof *row2);
            got = ampr__sample(&want, row2, hist, (size_t)n_hist);
        }
        if (got != tok) fail("a different token", d, got, tok);
        if (want.rng != full.rng) fail("a different RNG state", d, (int32_t)w.what, 0);
        if (tok < 0 || tok >= n) fail("a token out of range", d, tok, n);
        hist[n_hist++] = tok; /* (63 + 4 at most) */
    }
    ampr__sampler_free(&full);
    ampr__sampler_free(&want);
    free(halves);
    free(x);
    free(row);
    free(row2);
    return 0;
}
