/*
 * calib.c -- activation ranges, router fitting and the calibration file (see
 * calib.h).
 */
#include "calib.h"

#include <jansson.h>
#include <math.h>

ampr_status ampr__act_stats_new(const ampr__hparams *hp, ampr__act_stats *st, ampr__err *err) {
    memset(st, 0, sizeof *st);
    for (int m = 0; m < AMPR__MM_COUNT; m++) {
        st->absmax[m] = ampr__alloc_array((size_t)hp->n_layers * (size_t)ampr__mm_width(hp, m),
                                          sizeof(float), err);
        if (!st->absmax[m]) {
            ampr__act_stats_free(st);
            return AMPR_ERR_NOMEM;
        }
    }
    return AMPR_OK;
}

void ampr__act_stats_free(ampr__act_stats *st) {
    for (int m = 0; m < AMPR__MM_COUNT; m++) {
        ampr__free(st->absmax[m]);
        st->absmax[m] = NULL;
    }
}

ampr_status ampr__calib_ranges(ampr_ctx *c, ampr__tier *t, const int32_t *ids, int32_t n,
                               ampr__act_stats *st, ampr__err *err) {
    ampr__kv_seq seq = {0};
    ampr__scratch s;
    int32_t chunk = AMPR__MIN(n, 256);
    ampr_status rc = ampr__kv_seq_reserve(&seq, t->kv, n, err);
    if (rc == AMPR_OK) rc = ampr__scratch_new(c, chunk, 1, &s, err);
    if (rc == AMPR_OK) {
        s.stats = st;
        for (int32_t i = 0; i < n && rc == AMPR_OK; i += chunk)
            rc = ampr__forward(c, t, &seq, ids + i, AMPR__MIN(chunk, n - i), 1, &s, err);
        ampr__scratch_free(&s);
    }
    ampr__kv_seq_release(&seq);
    return rc;
}

uint64_t ampr__tier_decode_bytes(const ampr_ctx *c, const ampr__tier *t) {
    uint64_t b = ampr__qmat_bytes(t->output_is_embd ? &t->embd : &t->output);
    for (size_t l = 0; l < (size_t)c->hp.n_layers * (size_t)t->tp; l++) { /* every rank's shard */
        const ampr__tier_layer *L = &t->layers[l];
        b += ampr__qmat_bytes(&L->wqkv) + ampr__qmat_bytes(&L->wo) + ampr__qmat_bytes(&L->w_gu) +
             ampr__qmat_bytes(&L->w_down);
    }
    return b;
}

/* ---- router fitting ------------------------------------------------------- */

/* Solve the (k x k) system A x = b in place (Gaussian elimination, partial
 * pivoting). A is small (features + 1). */
static void solve(double *A, double *b, int k) {
    for (int i = 0; i < k; i++) {
        int p = i;
        for (int r = i + 1; r < k; r++)
            if (fabs(A[r * k + i]) > fabs(A[p * k + i])) p = r;
        for (int j = 0; j < k; j++) {
            double tmp = A[i * k + j]; A[i * k + j] = A[p * k + j]; A[p * k + j] = tmp;
        }
        double tb = b[i]; b[i] = b[p]; b[p] = tb;
        if (fabs(A[i * k + i]) < 1e-12) continue;
        for (int r = i + 1; r < k; r++) {
            double f = A[r * k + i] / A[i * k + i];
            for (int j = i; j < k; j++) A[r * k + j] -= f * A[i * k + j];
            b[r] -= f * b[i];
        }
    }
    for (int i = k - 1; i >= 0; i--) {
        double sum = b[i];
        for (int j = i + 1; j < k; j++) sum -= A[i * k + j] * b[j];
        b[i] = fabs(A[i * k + i]) < 1e-12 ? 0 : sum / A[i * k + i];
    }
}

/* mean KL and bytes/token when samples with score < t0 go to the lowest tier,
 * < t1 to the middle one, the rest to the top */
static void evaluate_cut(const ampr__calib_sample *s, const float *score, size_t n, const ampr_tier *tiers,
                         int n_tiers, const double *tier_bytes, float t0, float t1, double *kl,
                         double *bytes) {
    double k = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        int idx = score[i] < t0 ? n_tiers - 1 : score[i] < t1 ? (n_tiers >= 3 ? 1 : n_tiers - 1) : 0;
        k += idx == 0 ? 0 : s[i].kl[tiers[idx]];
        b += tier_bytes[idx];
    }
    *kl = k / (double)n;
    *bytes = b / (double)n;
}

void ampr__calib_fit_router(const ampr__calib_sample *s, size_t n, const ampr_tier *tiers,
                            int n_tiers, const double *tier_bytes, double target_kl,
                            ampr__router_config *rc, double *fit_kl, double *fit_bytes) {
    enum { K = AMPR__F_COUNT + 1 };
    ampr_tier low = tiers[n_tiers - 1];
    /* ridge regression: y = log(kl_low + 1e-4) on [features, 1] */
    double A[K * K] = {0}, b[K] = {0};
    for (size_t i = 0; i < n; i++) {
        double x[K];
        for (int j = 0; j < AMPR__F_COUNT; j++) x[j] = s[i].features[j];
        x[K - 1] = 1.0;
        double y = log(s[i].kl[low] + 1e-4);
        for (int r = 0; r < K; r++) {
            b[r] += x[r] * y;
            for (int q = 0; q < K; q++) A[r * K + q] += x[r] * x[q];
        }
    }
    for (int r = 0; r < K - 1; r++) A[r * K + r] += 1e-2 * (double)n; /* ridge, not on the bias */
    solve(A, b, K);
    /* standardise z = w.f + b so that scores spread over (0,1) */
    double mean = 0, var = 0;
    float *score = ampr__calloc(n ? n : 1, sizeof(float));
    double *z = ampr__calloc(n ? n : 1, sizeof(double));
    if (!score || !z) { /* keep the old router: fitting is best effort */
        ampr__free(score);
        ampr__free(z);
        *fit_kl = *fit_bytes = NAN;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        z[i] = b[K - 1];
        for (int j = 0; j < AMPR__F_COUNT; j++) z[i] += b[j] * s[i].features[j];
        mean += z[i];
    }
    mean /= (double)(n ? n : 1);
    for (size_t i = 0; i < n; i++) var += (z[i] - mean) * (z[i] - mean);
    double sd = sqrt(var / (double)(n ? n : 1));
    if (sd < 1e-9) sd = 1;
    for (int j = 0; j < AMPR__F_COUNT; j++) rc->weights[j] = (float)(b[j] / sd);
    rc->bias = (float)((b[K - 1] - mean) / sd);
    for (size_t i = 0; i < n; i++) score[i] = ampr__router_score(rc, s[i].features);

    /* thresholds: try every cut point pair (scores sorted implicitly) */
    float best0 = 1.0f, best1 = 1.0f;
    double best_b = INFINITY, best_k = INFINITY;
    int feasible = 0;
    for (size_t a = 0; a <= n; a++) {
        float t0 = a == n ? 1.0f : score[a];
        if (a == n) t0 = 1.0f;
        for (size_t c2 = 0; c2 <= n; c2++) {
            float t1 = c2 == n ? 1.0f : score[c2];
            if (t1 < t0) continue;
            double k, by;
            evaluate_cut(s, score, n, tiers, n_tiers, tier_bytes, t0, t1, &k, &by);
            int ok = k <= target_kl;
            if ((ok && (!feasible || by < best_b || (by == best_b && k < best_k))) ||
                (!ok && !feasible && k < best_k)) {
                feasible |= ok;
                best0 = t0;
                best1 = t1;
                best_b = by;
                best_k = k;
            }
        }
    }
    rc->thresholds[0] = best0;
    rc->thresholds[1] = best1;
    *fit_kl = best_k;
    *fit_bytes = best_b;
    ampr__free(score);
    ampr__free(z);
}

/* ---- the file -------------------------------------------------------------- */

static json_t *float_array(const float *v, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_real((double)v[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

ampr_status ampr__calib_write(const char *path, const ampr__router_config *rc, float kl_max,
                              float alpha, const ampr__act_stats *st, const ampr__hparams *hp,
                              double target_kl, size_t n_samples, ampr__err *err) {
    static const char *const names[AMPR__MM_COUNT] = {"qkv", "o", "gu", "down"};
    json_t *root = json_object(), *router = json_object(), *fb = json_object(), *int8 = json_object(),
           *am = json_object(), *fitted = json_object();
    int bad = !root || !router || !fb || !int8 || !am || !fitted;
    if (!bad) {
        bad |= json_object_set_new(root, "version", json_integer(1));
        bad |= json_object_set_new(router, "weights", float_array(rc->weights, AMPR__F_COUNT));
        bad |= json_object_set_new(router, "bias", json_real(rc->bias));
        bad |= json_object_set_new(router, "thresholds", float_array(rc->thresholds, 2));
        bad |= json_object_set_new(router, "system_weight", json_real(rc->system_weight));
        bad |= json_object_set_new(fitted, "target_kl", json_real(target_kl));
        bad |= json_object_set_new(fitted, "samples", json_integer((json_int_t)n_samples));
        bad |= json_object_set_new(router, "fitted", fitted);
        fitted = NULL;
        bad |= json_object_set_new(fb, "kl_max", json_real(kl_max));
        bad |= json_object_set_new(int8, "alpha", json_real(alpha));
        for (int m = 0; m < AMPR__MM_COUNT && !bad; m++) {
            json_t *layers = json_array();
            int32_t w = ampr__mm_width(hp, m);
            for (int32_t l = 0; layers && l < hp->n_layers; l++)
                if (json_array_append_new(layers, float_array(st->absmax[m] + (size_t)l * (size_t)w, (size_t)w)))
                    bad = 1;
            bad |= !layers || json_object_set_new(am, names[m], layers);
        }
        bad |= json_object_set_new(int8, "act_absmax", am);
        am = NULL;
        /* static per-tensor INT8 activation scales (absmax/127 over all
         * channels), for backends that quantize activations statically; the
         * CPU backend keeps dynamic per-token scales, which lose less */
        json_t *ss = json_object();
        for (int m = 0; ss && m < AMPR__MM_COUNT && !bad; m++) {
            int32_t w = ampr__mm_width(hp, m);
            float *v = ampr__calloc((size_t)hp->n_layers, sizeof(float));
            if (!v) { bad = 1; break; }
            for (int32_t l = 0; l < hp->n_layers; l++) {
                float mx = 0;
                for (int32_t j = 0; j < w; j++) mx = fmaxf(mx, st->absmax[m][(size_t)l * (size_t)w + (size_t)j]);
                v[l] = mx / 127.0f;
            }
            bad |= json_object_set_new(ss, names[m], float_array(v, (size_t)hp->n_layers));
            ampr__free(v);
        }
        bad |= !ss || json_object_set_new(int8, "static_scales", ss);
        bad |= json_object_set_new(root, "router", router);
        bad |= json_object_set_new(root, "fallback", fb);
        bad |= json_object_set_new(root, "int8", int8);
        router = fb = int8 = NULL;
    }
    ampr_status s = AMPR_OK;
    if (bad) s = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory building the calibration file");
    else if (json_dump_file(root, path, JSON_INDENT(1) | JSON_REAL_PRECISION(7)) != 0)
        s = ampr__fail(err, AMPR_ERR_IO, "cannot write %s", path);
    json_decref(root);
    json_decref(router);
    json_decref(fb);
    json_decref(int8);
    json_decref(am);
    json_decref(fitted);
    return s;
}
