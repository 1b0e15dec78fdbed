/*
 * check.cu -- GPU check of the CUDA backend: every op against a CPU
 * reference written here (double sums), then benchmarks at the 1.1B Llama
 * shape. Exit status 1 on any FAIL, 2 when no GPU is usable.
 *
 * Quantized formats are built on the CPU by the rules in cuda/ampr_cuda.h
 * (which mirror lib/quant/quant.h): INT8 per-row weight scales and per-token
 * activation quantization, bitsandbytes NF4 blocks of 64 with the first
 * element in the high nibble.
 *
 * Usage: check [--quick]   (--quick: correctness only, no benchmarks)
 *        check --bench       (the benchmarks only, no correctness checks)
 *        check --ops fp16|int8|nf4   (one tier's per-op profile only, each op
 *                                     run twice: a target for ncu)
 *        check --only NAME[,NAME]  (those op checks alone: names in main's table)
 *        check --gemv [fp16|int8|nf4]  (each format's matmuls of 1..32 tokens
 *                             on the 8B shape's matrices, every NF4 path; then
 *                             of 128 and 512, prefill's)
 */
#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "ampr_cuda.h"

static int g_fail = 0;
static ampr__err g_err;

#define OK(call)                                                                          \
    do {                                                                                  \
        ampr_status st_ = (call);                                                         \
        if (st_ != AMPR_OK) {                                                             \
            printf("FATAL %s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call,              \
                   ampr_status_name_local(st_), g_err.msg);                               \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)
#define CU(call)                                                                          \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            printf("FATAL %s:%d: %s -> %s\n", __FILE__, __LINE__, #call,                  \
                   cudaGetErrorString(e_));                                               \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

static const char *ampr_status_name_local(ampr_status s) {
    switch (s) {
    case AMPR_ERR_NOMEM: return "NOMEM";
    case AMPR_ERR_BACKEND: return "BACKEND";
    case AMPR_ERR_NO_DEVICE: return "NO_DEVICE";
    case AMPR_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case AMPR_ERR_INVALID_ARG: return "INVALID_ARG";
    case AMPR_ERR_INTERNAL: return "INTERNAL";
    default: return "other";
    }
}

/* ---- random numbers ---------------------------------------------------------- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd_u64(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
static float rnd_f(float lo, float hi) {
    return lo + (hi - lo) * (float)((rnd_u64() >> 40) * (1.0 / 16777216.0));
}
static std::vector<float> rnd_vec(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (auto &x : v) x = rnd_f(lo, hi);
    return v;
}

/* ---- reporting ----------------------------------------------------------------- */

/* relative error ||a-b|| / ||b|| and max abs error; NaN fails */
static void report(const char *name, const float *got, const double *ref, size_t n, double tol) {
    double num = 0, den = 0, mx = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) bad = 1;
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
        mx = std::max(mx, fabs(d));
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    int pass = !bad && rel <= tol;
    if (!pass) g_fail++;
    printf("%-44s max_abs %.3e  rel %.3e  tol %.0e  %s\n", name, mx, rel, tol,
           pass ? "PASS" : (bad ? "FAIL (non-finite)" : "FAIL"));
}
static void report_exact(const char *name, long mismatches, long total) {
    int pass = mismatches == 0;
    if (!pass) g_fail++;
    printf("%-44s mismatches %ld / %ld  %s\n", name, mismatches, total, pass ? "PASS" : "FAIL");
}

/* ---- device helpers ----------------------------------------------------------------- */

static ampr__cuda *g_c;

/* A kernel switch (ampr__cuda_set_switch) set for a scope, then set back to
 * what it was: what the environment chose at open */
struct SwitchScope {
    ampr__cuda_switch s;
    int was;
    SwitchScope(ampr__cuda_switch s_, int on) : s(s_), was(ampr__cuda_switch_on(g_c, s_)) {
        ampr__cuda_set_switch(g_c, s, on);
    }
    ~SwitchScope() { ampr__cuda_set_switch(g_c, s, was); }
    SwitchScope(const SwitchScope &) = delete;
    SwitchScope &operator=(const SwitchScope &) = delete;
};
static int flipped(ampr__cuda_switch s) { return !ampr__cuda_switch_on(g_c, s); }
/* NF4 on tensor cores (on) or not: the GEMV of 1..8 tokens (AMPR__CUDA_NF4_MMA)
 * and the batch kernel of 9..32 (AMPR__CUDA_NF4_BATCH) together */
struct MmaScope {
    SwitchScope gemv, batch;
    explicit MmaScope(int on) : gemv(AMPR__CUDA_NF4_MMA, on), batch(AMPR__CUDA_NF4_BATCH, on) {}
};

static void *dev_put(const void *src, size_t bytes) {
    void *p = NULL;
    OK(ampr__cuda_alloc(g_c, bytes, &p, &g_err));
    if (src) OK(ampr__cuda_upload(g_c, p, src, bytes, &g_err));
    else OK(ampr__cuda_memset(g_c, p, 0xff, bytes, &g_err)); /* poison (NaN floats) */
    return p;
}
template <typename T> static std::vector<T> dev_get(const void *d, size_t n) {
    std::vector<T> v(n);
    OK(ampr__cuda_sync(g_c, &g_err));
    OK(ampr__cuda_download(g_c, v.data(), d, n * sizeof(T), &g_err));
    return v;
}

/* ---- CPU formats ------------------------------------------------------------------------ */


/* A CPU matrix in one format, with its dequantized fp32 copy. */
struct HostMat {
    ampr__qmat q;
    std::vector<uint8_t> data;
    std::vector<float> scales;
    std::vector<float> deq; /* rows*cols, what the format represents */
};

/* Build the format with the CPU library's own quantizer (lib/quant), so the
 * device is checked against exactly what a CPU tier holds. */
static void host_quantize(HostMat &m, ampr__qtype t, const float *w, int64_t rows, int64_t cols,
                          bool keep_deq = true) {
    size_t n = (size_t)(rows * cols);
    const ampr__qtraits *qt = ampr__qtraits_get(t);
    ampr__qmat tmp;
    memset(&tmp, 0, sizeof tmp);
    ampr__err e = {};
    if (!qt || ampr__quantize(qt, &tmp, w, rows, cols, NULL, &e) != AMPR_OK) {
        printf("FATAL: CPU quantize %d %lldx%lld: %s\n", (int)t, (long long)rows, (long long)cols,
               e.msg);
        exit(1);
    }
    m.data.assign((const uint8_t *)tmp.data, (const uint8_t *)tmp.data + tmp.data_bytes);
    m.scales.assign(tmp.scales, tmp.scales + tmp.n_scales);
    if (keep_deq) {
        m.deq.resize(n);
        for (int64_t r = 0; r < rows; r++) qt->dequant_row(&tmp, r, m.deq.data() + r * cols);
    }
    ampr__qmat_free(&tmp);
    memset(&m.q, 0, sizeof m.q);
    m.q.type = t;
    m.q.rows = rows;
    m.q.cols = cols;
    m.q.data = m.data.data();
    m.q.data_bytes = m.data.size();
    m.q.scales = m.scales.empty() ? NULL : m.scales.data();
    m.q.n_scales = m.scales.size();
}

/* per-token int8 quantization, the CPU rule (lib/quant/quant.h) */
static void host_quant_act(const float *x, int64_t cols, int8_t *q, float *s) {
    float mx = 0;
    for (int64_t c = 0; c < cols; c++) mx = std::max(mx, fabsf(x[c]));
    float inv = mx > 0 ? 127.0f / mx : 0.0f;
    *s = mx / 127.0f;
    for (int64_t c = 0; c < cols; c++)
        q[c] = (int8_t)std::min(127.0f, std::max(-127.0f, nearbyintf(x[c] * inv)));
}

/* y[i][r] = W x_i the way the CPU tier computes it */
static void host_matmul(const HostMat &m, const float *x, int64_t n, double *y, int64_t ldy) {
    int64_t rows = m.q.rows, cols = m.q.cols;
    std::vector<int8_t> xq((size_t)cols);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * cols;
        float xs = 0;
        if (m.q.type == AMPR__Q_INT8) host_quant_act(xi, cols, xq.data(), &xs);
        for (int64_t r = 0; r < rows; r++) {
            if (m.q.type == AMPR__Q_INT8) {
                const int8_t *w = (const int8_t *)m.data.data() + r * cols;
                int64_t acc = 0;
                for (int64_t c = 0; c < cols; c++) acc += (int64_t)w[c] * xq[(size_t)c];
                y[i * ldy + r] = (double)(((float)acc * m.scales[(size_t)r]) * xs);
            } else {
                const float *w = m.deq.data() + r * cols;
                double s = 0;
                for (int64_t c = 0; c < cols; c++) s += (double)w[c] * xi[c];
                y[i * ldy + r] = s;
            }
        }
    }
}

static const ampr__qtype k_fmts[3] = {AMPR__Q_F16, AMPR__Q_INT8, AMPR__Q_NF4};
static const char *fmt_name(ampr__qtype t) {
    return t == AMPR__Q_F16 ? "fp16" : t == AMPR__Q_INT8 ? "int8" : "nf4";
}

/* ---- op checks ------------------------------------------------------------------ */

static void check_elementwise(void) {
    char name[96];
    int32_t n = 5, dim = 2048;
    auto x = rnd_vec((size_t)n * dim, -2, 2), w = rnd_vec((size_t)dim, 0.5f, 1.5f);
    float *dx = (float *)dev_put(x.data(), x.size() * 4), *dw = (float *)dev_put(w.data(), w.size() * 4);
    float *dout = (float *)dev_put(NULL, x.size() * 4);
    OK(ampr__cuda_rmsnorm(g_c, dx, dw, dout, n, dim, 1e-5f, &g_err));
    auto got = dev_get<float>(dout, x.size());
    std::vector<double> ref(x.size());
    for (int32_t i = 0; i < n; i++) {
        double ss = 0;
        for (int32_t j = 0; j < dim; j++) ss += (double)x[i * dim + j] * x[i * dim + j];
        double inv = 1.0 / sqrt(ss / dim + 1e-5);
        for (int32_t j = 0; j < dim; j++) ref[i * dim + j] = w[j] * inv * x[i * dim + j];
    }
    report("rmsnorm [5][2048]", got.data(), ref.data(), ref.size(), 1e-5);

    /* swiglu: gu [n][2h] */
    int32_t hidden = 1000;
    auto gu = rnd_vec((size_t)n * 2 * hidden, -4, 4);
    float *dgu = (float *)dev_put(gu.data(), gu.size() * 4);
    float *dh = (float *)dev_put(NULL, (size_t)n * hidden * 4);
    OK(ampr__cuda_swiglu(g_c, dgu, dh, n, hidden, &g_err));
    got = dev_get<float>(dh, (size_t)n * hidden);
    ref.assign((size_t)n * hidden, 0);
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < hidden; j++) {
            double g = gu[(size_t)i * 2 * hidden + j], u = gu[(size_t)i * 2 * hidden + hidden + j];
            ref[(size_t)i * hidden + j] = g / (1 + exp(-g)) * u;
        }
    report("swiglu [5][1000]", got.data(), ref.data(), ref.size(), 1e-6);

    /* add */
    auto y = rnd_vec(x.size(), -1, 1);
    float *dy = (float *)dev_put(y.data(), y.size() * 4);
    OK(ampr__cuda_add(g_c, dx, dy, (int64_t)x.size(), &g_err));
    got = dev_get<float>(dx, x.size());
    ref.resize(x.size());
    for (size_t e = 0; e < x.size(); e++) ref[e] = (double)(x[e] + y[e]);
    report("add [5][2048]", got.data(), ref.data(), ref.size(), 1e-7);

    /* rope, both layouts */
    int32_t heads = 8, hd = 64, ctx = 256, half = hd / 2;
    int64_t ld = heads * hd + 40;
    std::vector<float> cs((size_t)ctx * half), sn((size_t)ctx * half);
    for (int32_t p = 0; p < ctx; p++)
        for (int32_t k = 0; k < half; k++) {
            double th = p * pow(10000.0, -2.0 * k / hd);
            cs[(size_t)p * half + k] = (float)cos(th);
            sn[(size_t)p * half + k] = (float)sin(th);
        }
    float *dcs = (float *)dev_put(cs.data(), cs.size() * 4), *dsn = (float *)dev_put(sn.data(), sn.size() * 4);
    std::vector<int32_t> pos = {0, 17, 255, 100, 3};
    int32_t *dpos = (int32_t *)dev_put(pos.data(), pos.size() * 4);
    for (int il = 0; il < 2; il++) {
        auto v = rnd_vec((size_t)n * ld, -1, 1);
        float *dv = (float *)dev_put(v.data(), v.size() * 4);
        OK(ampr__cuda_rope(g_c, dv, ld, n, heads, hd, dpos, dcs, dsn, il, &g_err));
        got = dev_get<float>(dv, v.size());
        ref.assign(v.begin(), v.end());
        for (int32_t i = 0; i < n; i++)
            for (int32_t h = 0; h < heads; h++)
                for (int32_t k = 0; k < half; k++) {
                    int32_t a = il ? 2 * k : k, b = il ? 2 * k + 1 : k + half;
                    size_t o = (size_t)i * ld + (size_t)h * hd;
                    double c0 = cs[(size_t)pos[i] * half + k], s0 = sn[(size_t)pos[i] * half + k];
                    ref[o + a] = v[o + a] * c0 - v[o + b] * s0;
                    ref[o + b] = v[o + a] * s0 + v[o + b] * c0;
                }
        snprintf(name, sizeof name, "rope %s [5][8x64] ld %lld", il ? "interleaved" : "half-split",
                 (long long)ld);
        report(name, got.data(), ref.data(), ref.size(), 1e-6);
        ampr__cuda_free(g_c, dv);
    }

    /* per-token int8 quantization, bit-exact: tokens fewer than the SMs
     * take blocks of 1024 threads, more 256 (ampr__cuda_quant_act); rows
     * of whole and partial batches of 8 loads a thread */
    struct QCase { int32_t n, cols; } qcases[] = {{5, 2048}, {1, 14344}, {2, 1000}, {300, 520}};
    for (const QCase &qc : qcases) {
        int32_t qn = qc.n, cols = qc.cols;
        auto a = rnd_vec((size_t)qn * cols, -3, 3);
        if (qn > 2)
            for (int32_t c = 0; c < cols; c++) a[(size_t)2 * cols + c] = 0.0f; /* an all-zero token */
        float *da = (float *)dev_put(a.data(), a.size() * 4);
        int8_t *dq = (int8_t *)dev_put(NULL, a.size());
        float *ds = (float *)dev_put(NULL, (size_t)qn * 4);
        OK(ampr__cuda_quant_act(g_c, da, qn, cols, dq, ds, &g_err));
        auto gq = dev_get<int8_t>(dq, a.size());
        auto gs = dev_get<float>(ds, (size_t)qn);
        long mism = 0;
        std::vector<int8_t> hq((size_t)cols);
        for (int32_t i = 0; i < qn; i++) {
            float s;
            host_quant_act(a.data() + (size_t)i * cols, cols, hq.data(), &s);
            if (s != gs[(size_t)i]) mism++;
            for (int32_t c = 0; c < cols; c++) mism += hq[(size_t)c] != gq[(size_t)i * cols + c];
        }
        snprintf(name, sizeof name, "quant_act int8 [%d][%d] (q and scales)", qn, cols);
        report_exact(name, mism, (long)a.size() + qn);
        ampr__cuda_free(g_c, da);
        ampr__cuda_free(g_c, dq);
        ampr__cuda_free(g_c, ds);
    }

    /* argmax with planted ties: lowest index wins */
    int32_t vocab = 32000, rows = 3;
    auto lg = rnd_vec((size_t)rows * vocab, -5, 5);
    lg[(size_t)0 * vocab + 31999] = 9.0f;
    lg[(size_t)1 * vocab + 77] = 9.0f;
    lg[(size_t)1 * vocab + 20000] = 9.0f;
    lg[(size_t)2 * vocab + 0] = 9.5f;
    lg[(size_t)2 * vocab + 1] = 9.5f;
    float *dl = (float *)dev_put(lg.data(), lg.size() * 4);
    int32_t *dam = (int32_t *)dev_put(NULL, (size_t)rows * 4);
    OK(ampr__cuda_argmax(g_c, dl, rows, vocab, dam, &g_err));
    auto am = dev_get<int32_t>(dam, (size_t)rows);
    report_exact("argmax [3][32000] (ties -> lowest)",
                 (am[0] != 31999) + (am[1] != 77) + (am[2] != 0), rows);
    void *bufs[] = {dx, dw, dout, dgu, dh, dy, dcs, dsn, dpos, dl, dam};
    for (void *b : bufs) ampr__cuda_free(g_c, b);
}

/* The greedy token (ampr__cuda_argmax) against the host's rule (NaN as
 * -inf, the largest value, the lowest index among equals; a row of NaN
 * gives 0) on 128k-wide rows whose ties sit within one thread's elements
 * (8 x 1024 apart) and across threads, with NaN, +-inf, and a 5-wide row */
static void check_argmax(void) {
    for (int32_t cols : {128256, 5}) {
        const int32_t rows = cols > 5 ? 6 : 1;
        auto lg = rnd_vec((size_t)rows * cols, -5, 5);
        auto at = [&](int32_t r, int32_t j) -> float & { return lg[(size_t)r * cols + j]; };
        const float nan = NAN, inf = INFINITY;
        if (cols > 5) {
            at(0, 131 + 8192) = 9.0f, at(0, 131) = 9.0f;
            at(1, 1024) = 9.0f, at(1, 1023) = 9.0f;
            for (int32_t j = 0; j < cols; j++) at(2, j) = nan;
            for (int32_t j = 0; j < cols; j++) at(3, j) = j % 3 ? nan : -inf;
            at(3, 100000) = -1e30f;
            at(4, 90000) = inf, at(4, 70000) = inf, at(4, 5) = nan;
            at(5, cols - 1) = 6.0f;
        } else {
            float row[5] = {nan, 1.0f, 3.0f, 3.0f, nan};
            for (int32_t j = 0; j < 5; j++) at(0, j) = row[j];
        }
        float *dl = (float *)dev_put(lg.data(), lg.size() * 4);
        int32_t *dam = (int32_t *)dev_put(NULL, (size_t)rows * 4);
        OK(ampr__cuda_argmax(g_c, dl, rows, cols, dam, &g_err));
        auto am = dev_get<int32_t>(dam, (size_t)rows);
        long bad = 0;
        for (int32_t r = 0; r < rows; r++) {
            int32_t bi = 0;
            float best = -INFINITY;
            for (int32_t j = 0; j < cols; j++) {
                float a = at(r, j) != at(r, j) ? -INFINITY : at(r, j);
                if (a > best) best = a, bi = j;
            }
            bad += am[(size_t)r] != bi;
        }
        char name[96];
        snprintf(name, sizeof name, "argmax [%d][%d] (ties, NaN, inf)", rows, cols);
        report_exact(name, bad, rows);
        ampr__cuda_free(g_c, dl);
        ampr__cuda_free(g_c, dam);
    }
}

/* ampr__cuda_topk_cands on the rows x (cols wide) for req, lists m_max
 * long: the lists, the verdicts and a nucleus's masses, on the host. */
struct cand_lists {
    std::vector<float> v;
    std::vector<int32_t> id, n;
    std::vector<double> mass;
};
static cand_lists device_cands(int32_t cols, const std::vector<float> &x,
                               const std::vector<ampr__cuda_cand_req> &req, int32_t m_max) {
    int32_t n = (int32_t)req.size();
    float *dx = (float *)dev_put(x.data(), x.size() * 4);
    void *dreq = dev_put(req.data(), req.size() * sizeof req[0]);
    float *dv = (float *)dev_put(NULL, (size_t)n * m_max * 4);
    int32_t *di = (int32_t *)dev_put(NULL, (size_t)n * m_max * 4);
    int32_t *dn = (int32_t *)dev_put(NULL, (size_t)n * 4);
    double *dm = (double *)dev_put(NULL, (size_t)n * 8);
    OK(ampr__cuda_topk_cands(g_c, dx, cols, (const ampr__cuda_cand_req *)dreq, n, m_max, dv, di, dn, dm, &g_err));
    cand_lists out{dev_get<float>(dv, (size_t)n * m_max), dev_get<int32_t>(di, (size_t)n * m_max),
                   dev_get<int32_t>(dn, (size_t)n), dev_get<double>(dm, (size_t)n)};
    void *bufs[] = {dx, dreq, dv, di, dn, dm};
    for (void *b : bufs) ampr__cuda_free(g_c, b);
    return out;
}

/* Candidate lists against the host's ampr__topk_cands: normal rows, a row
 * of 256 distinct values (~125 ties at the top: an inexact list), -inf
 * masks, a NaN, +inf, k = 1 at a low temperature, a row where 2000 values
 * tie at the m-th (the device gives up: 0), m = cols. Lists must match id
 * for id and bit for bit, and the verdicts too. */
/* The residual add and norm of each row (ampr__cuda_add_rmsnorm: x += y,
 * written back, then out = rmsnorm(x) * w), as decode calls it (out is y's
 * rows) and without y, on rows held in registers (up to 4096: 16 a thread)
 * and longer ones (the loop), against the host in double */
static void check_add_rmsnorm(void) {
    char name[96];
    const int32_t n = 3;
    for (int32_t dim : {1000, 4096, 4100, 8192})
        for (int add = 0; add < 2; add++) {
            auto x = rnd_vec((size_t)n * dim, -2, 2), y = rnd_vec((size_t)n * dim, -1, 1);
            auto w = rnd_vec((size_t)dim, 0.5f, 1.5f);
            float *dx = (float *)dev_put(x.data(), x.size() * 4), *dw = (float *)dev_put(w.data(), w.size() * 4);
            float *dy = (float *)dev_put(y.data(), y.size() * 4);
            float *dout = add ? dy : (float *)dev_put(NULL, x.size() * 4);
            OK(ampr__cuda_add_rmsnorm(g_c, dx, add ? dy : NULL, dw, dout, n, dim, 1e-5f, &g_err));
            auto got = dev_get<float>(dout, x.size()), gx = dev_get<float>(dx, x.size());
            std::vector<double> ref(x.size());
            long xbad = 0;
            for (int32_t i = 0; i < n; i++) {
                double ss = 0;
                for (int32_t j = 0; j < dim; j++) {
                    size_t e = (size_t)i * dim + j;
                    float v = add ? x[e] + y[e] : x[e];
                    xbad += memcmp(&v, &gx[e], 4) != 0;
                    ss += (double)v * v;
                }
                double inv = 1.0 / sqrt(ss / dim + 1e-5);
                for (int32_t j = 0; j < dim; j++) {
                    size_t e = (size_t)i * dim + j;
                    ref[e] = w[j] * inv * (double)(add ? x[e] + y[e] : x[e]);
                }
            }
            snprintf(name, sizeof name, "%s [%d][%d]", add ? "add+rmsnorm, out = y" : "rmsnorm", n, dim);
            report(name, got.data(), ref.data(), ref.size(), 1e-5);
            snprintf(name, sizeof name, "%s [%d][%d]: x", add ? "add+rmsnorm, out = y" : "rmsnorm", n, dim);
            report_exact(name, xbad, (long)x.size());
            void *bufs[] = {dx, dw, dy, add ? NULL : dout};
            for (void *b : bufs)
                if (b) ampr__cuda_free(g_c, b);
        }
}

static void check_topk_cands(void) {
    const int32_t cols = 32000, rows = 7;
    std::vector<float> x((size_t)rows * cols);
    std::vector<ampr__cuda_cand_req> req;
    for (int32_t r = 0; r < rows; r++) {
        float *xr = &x[(size_t)r * cols];
        for (int32_t j = 0; j < cols; j++) xr[j] = rnd_f(-8, 8);
        if (r == 1)
            for (int32_t j = 0; j < cols; j++) xr[j] = (float)(int)(xr[j] * 16) * 0.0625f; /* ties */
        if (r == 2)
            for (int32_t j = 0; j < cols; j++) if (j % 7) xr[j] = -INFINITY;
        if (r == 3) xr[123] = NAN;
        if (r == 4)
            for (int32_t j = 0; j < 2000; j++) xr[j * 16] = 20.0f; /* 2000 ties at the top */
        if (r == 5) xr[31999] = INFINITY;
        req.push_back(ampr__cuda_cand_req{r, r == 6 ? 1 : 40, 48, r == 6 ? 0.3f : 0.8f, 1.0f});
    }
    int32_t n = (int32_t)req.size(), m_max = 48;
    cand_lists got = device_cands(cols, x, req, m_max);
    const auto &v = got.v;
    const auto &id = got.id;
    const auto &nn = got.n;
    long bad = 0, total = 0;
    for (int32_t q = 0; q < n; q++) {
        const ampr__cuda_cand_req &rq = req[(size_t)q];
        float hv[AMPR__CANDS_MAX];
        int32_t hi[AMPR__CANDS_MAX];
        const float *xr = &x[(size_t)rq.row * cols];
        int exact = ampr__topk_cands(xr, cols, rq.m, rq.t, rq.k, hv, hi);
        long ties = 0; /* values equal to the m-th (NaN as -inf): over 1024, the device gives up */
        float last = std::isnan(hv[rq.m - 1]) ? -INFINITY : hv[rq.m - 1];
        for (int32_t j = 0; j < cols; j++) ties += (std::isnan(xr[j]) ? -INFINITY : xr[j]) == last;
        bad += (rq.row == 4) != (ties > 1024); /* the row built for it */
        if (ties > 1024) {
            bad += nn[(size_t)q] != 0;
            total += 2;
            continue;
        }
        bad += nn[(size_t)q] != (exact ? rq.m : 0);
        for (int32_t i = 0; i < rq.m; i++) {
            bad += id[(size_t)q * m_max + i] != hi[i];
            bad += memcmp(&v[(size_t)q * m_max + i], &hv[i], 4) != 0;
        }
        total += 2 + 2 * rq.m;
    }
    /* m = cols on a 40-column row: every column, exact */
    std::vector<float> y(40);
    for (auto &e : y) e = rnd_f(-3, 3);
    y[5] = y[6];
    cand_lists l40 = device_cands(40, y, {ampr__cuda_cand_req{0, 10, 40, 1.0f, 1.0f}}, 40);
    const auto &v40 = l40.v;
    const auto &i40 = l40.id;
    const auto &n40 = l40.n;
    float hv[40];
    int32_t hi[40];
    int exact = ampr__topk_cands(y.data(), 40, 40, 1.0f, 10, hv, hi);
    bad += !exact || n40[0] != 40;
    for (int32_t i = 0; i < 40; i++) bad += i40[(size_t)i] != hi[i] || memcmp(&v40[(size_t)i], &hv[i], 4) != 0;
    total += 1 + 40;
    report_exact("top-m candidate lists vs the host's (ties, masks, NaN, m = cols)", bad, total);
}

/* One batch of nucleus lists (k 0) of cols-wide rows against the host's
 * ampr__nucleus_cands: the list id for id and bit for bit, the verdict, the
 * mass within 1e-12; and for decided rows, 16 draws from the list with the
 * device's mass against ampr__sample's from the row. */
static void nucleus_batch(int32_t cols, const std::vector<float> &x, const std::vector<ampr__cuda_cand_req> &req,
                          long *bad, long *total, int *decided, int *undecided) {
    int32_t n = (int32_t)req.size(), m_max = AMPR__CANDS_MAX;
    cand_lists got = device_cands(cols, x, req, m_max);
    auto &v = got.v;
    auto &id = got.id;
    const auto &nn = got.n;
    const auto &mass = got.mass;
    std::vector<float> scr((size_t)cols), row((size_t)cols);
    for (int32_t q = 0; q < n; q++) {
        const ampr__cuda_cand_req &rq = req[(size_t)q];
        const float *xr = &x[(size_t)rq.row * cols];
        float hv[AMPR__CANDS_MAX];
        int32_t hi[AMPR__CANDS_MAX];
        double hm = 0;
        int ok = ampr__nucleus_cands(xr, cols, rq.m, rq.t, rq.top_p, hv, hi, &hm, scr.data());
        (void)ampr__topk_cands(xr, cols, rq.m, rq.t, 1, hv, hi); /* the list, also where undecided */
        int got = nn[(size_t)q] == rq.m;
        *bad += nn[(size_t)q] != (ok ? rq.m : 0);
        for (int32_t i = 0; i < rq.m; i++) {
            *bad += id[(size_t)q * m_max + i] != hi[i];
            *bad += memcmp(&v[(size_t)q * m_max + i], &hv[i], 4) != 0;
        }
        *total += 1 + 2 * rq.m;
        if (!got) {
            ++*undecided;
            continue;
        }
        ++*decided;
        *bad += !(fabs(mass[(size_t)q] - hm) <= 1e-12 * hm);
        ampr__sampler full, list;
        ampr__err e = {};
        OK(ampr__sampler_init(&full, cols, rq.t, 0, rq.top_p, 1.0f, 64, 5 + (uint64_t)q, &e));
        OK(ampr__sampler_init(&list, cols, rq.t, 0, rq.top_p, 1.0f, 64, 5 + (uint64_t)q, &e));
        for (int r = 0; r < 16; r++) {
            memcpy(row.data(), xr, (size_t)cols * 4);
            int32_t want = ampr__sample(&full, row.data(), NULL, 0);
            *bad += ampr__sample_cands(&list, &v[(size_t)q * m_max], &id[(size_t)q * m_max], rq.m,
                                       mass[(size_t)q]) != want;
        }
        *total += 17;
        ampr__sampler_free(&full);
        ampr__sampler_free(&list);
    }
}

/* Nucleus lists without top-k (k 0: the row's mass and the verdict on the
 * device): peaked rows (decided), flat ones (the nucleus is longer than
 * the list), ties going on past the list's end, masks, a NaN, +inf, the
 * 128k vocabulary, and a 200-wide row (m = cols: always decided). */
static void check_nucleus_cands(void) {
    long bad = 0, total = 0;
    int decided = 0, undecided = 0;
    const int32_t widths[] = {32000, 128256, 200};
    for (int wdt = 0; wdt < 3; wdt++) {
        const int32_t cols = widths[wdt], rows = 8, m = AMPR__MIN(cols, AMPR__CANDS_MAX);
        std::vector<float> x((size_t)rows * cols);
        std::vector<ampr__cuda_cand_req> req;
        for (int32_t r = 0; r < rows; r++) {
            float *xr = &x[(size_t)r * cols];
            int flat = r == 1;
            for (int32_t j = 0; j < cols; j++) xr[j] = flat ? rnd_f(-1, 1) : rnd_f(-4, 4);
            if (!flat)
                for (int32_t j = 0; j < 24; j++) xr[(rnd_u64() >> 11) % (uint64_t)cols] = 12.0f + rnd_f(-2, 2);
            if (r == 2 && cols > 1000) { /* 300 equal values the nucleus ends among, past the list */
                for (int32_t j = 0; j < 300; j++) xr[100 + 3 * j] = 13.0f;
                xr[7] = 16.0f;
            }
            if (r == 3)
                for (int32_t j = 0; j < cols; j++) if (j % 7 && xr[j] < 10.0f) xr[j] = -INFINITY;
            if (r == 4) xr[cols / 2] = NAN;
            if (r == 5) xr[cols - 1] = INFINITY;
            float t = r == 6 ? 0.3f : r == 7 ? 1.7f : 0.9f, p = r == 6 ? 0.5f : r == 7 ? 0.99f : 0.9f;
            req.push_back(ampr__cuda_cand_req{r, 0, m, t, p});
        }
        nucleus_batch(cols, x, req, &bad, &total, &decided, &undecided);
    }
    bad += decided < 8 || undecided < 5; /* both verdicts seen */
    printf("nucleus lists: %d decided, %d not\n", decided, undecided);
    report_exact("nucleus lists + row mass vs the host's, draws", bad, total + 1);
}

/* The fallback's monitor on the device (ampr__cuda_row_monitor, merged on
 * the host as fetch_logits does): broken rows (a NaN or +inf in any slice) flagged, entropies and KL(row || kept row) against
 * the host's double references, on plain rows, masked ones (-inf), a row
 * whose first half is masked, a kept row masked under the row's mass (KL
 * +inf), at 1, the usual and 64 slices; the kept copies bit for bit; a row
 * compared with the slot it replaces measures the old contents. */
static void check_row_monitor(void) {
    const int32_t cols_list[] = {1000, 32000, 128256};
    long bad = 0, total = 0;
    double worst_h = 0, worst_kl = 0;
    for (int32_t cols : cols_list) {
        const int32_t rows = 5;
        std::vector<float> x((size_t)rows * cols), q((size_t)rows * cols);
        for (int32_t r = 0; r < rows; r++) {
            float *xr = &x[(size_t)r * cols], *qr = &q[(size_t)r * cols];
            for (int32_t j = 0; j < cols; j++) {
                xr[j] = rnd_f(-6, 6) + (j % 97 == 0 ? 8.0f : 0.0f);
                qr[j] = xr[j] + rnd_f(-0.5f, 0.5f);
            }
            if (r == 1)
                for (int32_t j = 1; j < cols; j += 3) xr[j] = qr[j] = -INFINITY;
            if (r == 2)
                for (int32_t j = 0; j < cols / 2; j++) xr[j] = -INFINITY;
            if (r == 3) qr[cols - 1] = -INFINITY; /* under p's mass: +inf */
        }
        float *dx = (float *)dev_put(x.data(), x.size() * 4);
        float *dq = (float *)dev_put(q.data(), q.size() * 4); /* the "ring": row r is slot r */
        float *dk = (float *)dev_put(NULL, x.size() * 4);    /* rows kept here */
        /* requests: every row with its q and a keep slot; then row 4 again,
         * compared with q's slot 4 and kept into that same slot */
        std::vector<ampr__cuda_mon_req> req;
        for (int32_t r = 0; r < rows - 1; r++)
            req.push_back(ampr__cuda_mon_req{r, dq + (size_t)r * cols, dk + (size_t)r * cols});
        req.push_back(ampr__cuda_mon_req{4, dq + (size_t)4 * cols, dq + (size_t)4 * cols});
        req.push_back(ampr__cuda_mon_req{0, NULL, NULL}); /* entropy alone */
        int32_t n = (int32_t)req.size();
        void *dreq = dev_put(req.data(), req.size() * sizeof req[0]);
        const int32_t parts_list[] = {1, std::min((cols + 4095) / 4096, AMPR__CUDA_MON_PARTS), AMPR__CUDA_MON_PARTS};
        for (int32_t np : parts_list) {
            OK(ampr__cuda_upload(g_c, dq, q.data(), q.size() * 4, &g_err)); /* slot 4 again */
            ampr__row_part *dp = (ampr__row_part *)dev_put(NULL, (size_t)n * np * sizeof(ampr__row_part));
            OK(ampr__cuda_row_monitor(g_c, dx, cols, (const ampr__cuda_mon_req *)dreq, n, np, dp, &g_err));
            auto parts = dev_get<ampr__row_part>(dp, (size_t)n * np);
            auto kept = dev_get<float>(dk, x.size());
            auto q4 = dev_get<float>(dq + (size_t)4 * cols, (size_t)cols);
            for (int32_t k = 0; k < n; k++) {
                int32_t r = req[(size_t)k].row;
                const float *xr = &x[(size_t)r * cols];
                int with_q = req[(size_t)k].q != NULL;
                float h = 0;
                double kl = 0;
                int broken = ampr__row_parts_merge(parts.data() + (size_t)k * np, np, &h, with_q ? &kl : NULL);
                bad += broken != ampr__row_nonfinite(xr, cols);
                total++;
                if (broken) continue; /* no distribution to compare */
                ampr__logit_stats st;
                ampr__logit_stats_scalar(xr, cols, &st);
                double h_ref = log(st.z) - st.s / st.z;
                double dh = fabs((double)h - h_ref) / (1 + fabs(h_ref));
                worst_h = std::max(worst_h, dh);
                bad += !(dh <= 1e-4);
                total++;
                if (with_q) {
                    double kl_ref = ampr__kl_scalar(xr, &q[(size_t)r * cols], cols);
                    if (std::isinf(kl_ref)) bad += !std::isinf(kl);
                    else {
                        double dk_ = fabs(kl - kl_ref) / (1 + kl_ref);
                        worst_kl = std::max(worst_kl, dk_);
                        bad += !(dk_ <= 1e-4);
                    }
                    total++;
                }
            }
            for (int32_t r = 0; r < rows - 1; r++)
                bad += memcmp(&kept[(size_t)r * cols], &x[(size_t)r * cols], (size_t)cols * 4) != 0;
            bad += memcmp(q4.data(), &x[(size_t)4 * cols], (size_t)cols * 4) != 0;
            total += rows;
            ampr__cuda_free(g_c, dp);
        }
        void *bufs[] = {dx, dq, dk, dreq};
        for (void *b : bufs) ampr__cuda_free(g_c, b);
    }
    /* broken rows, flagged whatever slice holds the NaN or +inf; -inf alone is a mask */
    {
        const int32_t cols = 32000;
        std::vector<float> y((size_t)4 * cols);
        for (auto &e : y) e = rnd_f(-6, 6);
        y[(size_t)0 * cols + cols - 1] = NAN;      /* the last slice */
        y[(size_t)1 * cols + cols / 2] = INFINITY; /* a middle one */
        y[(size_t)2 * cols + 5000] = -INFINITY;    /* not broken */
        y[(size_t)3 * cols + 4097] = -NAN;         /* the second slice, a negative NaN */
        float *dy = (float *)dev_put(y.data(), y.size() * 4);
        std::vector<ampr__cuda_mon_req> rq;
        for (int32_t r = 0; r < 4; r++) rq.push_back(ampr__cuda_mon_req{r, NULL, NULL});
        void *drq = dev_put(rq.data(), rq.size() * sizeof rq[0]);
        int32_t np = (cols + 4095) / 4096;
        ampr__row_part *dp = (ampr__row_part *)dev_put(NULL, (size_t)4 * np * sizeof(ampr__row_part));
        OK(ampr__cuda_row_monitor(g_c, dy, cols, (const ampr__cuda_mon_req *)drq, 4, np, dp, &g_err));
        auto parts = dev_get<ampr__row_part>(dp, (size_t)4 * np);
        for (int32_t r = 0; r < 4; r++) {
            float h = 0;
            bad += ampr__row_parts_merge(parts.data() + (size_t)r * np, np, &h, NULL) != (r != 2);
            total++;
        }
        void *bufs[] = {dy, drq, dp};
        for (void *b : bufs) ampr__cuda_free(g_c, b);
    }
    char name[128];
    snprintf(name, sizeof name, "monitor: entropy / KL / kept rows / broken rows (rel %.1e / %.1e)", worst_h,
             worst_kl);
    report_exact(name, bad, total);
}

/* Temperature-only draws on the device (ampr__cuda_temp_draw) against the
 * host's walk (ampr__sample_walk): the exps bit for bit (ampr__exp_det over
 * [-90, 0], -0, -inf, NaN), then rows of 1000 / 32000 / 128256 logits (plain,
 * flat, masked), 64 uniform numbers each, at T 0.7 and 1.3: every token
 * the device decides is the host's; a decision only one side makes (the
 * totals' last bits) is counted, and must stay rare. */
static void check_temp_draw(void) {
    long bad = 0, total = 0, one_sided = 0, decided = 0;
    std::vector<float> d(200000);
    for (size_t i = 0; i < d.size(); i++) d[i] = -90.0f * (float)i / (float)d.size() - rnd_f(0, 1e-3f);
    d[0] = -0.0f;
    d[1] = 0.0f;
    d[2] = -INFINITY;
    d[3] = NAN;
    d[4] = -87.0f;
    d[5] = nextafterf(-87.0f, 0.0f);
    float *dd = (float *)dev_put(d.data(), d.size() * 4), *de = (float *)dev_put(NULL, d.size() * 4);
    OK(ampr__cuda_exp_det(g_c, dd, (int32_t)d.size(), de, &g_err));
    auto e = dev_get<float>(de, d.size());
    for (size_t i = 0; i < d.size(); i++) {
        float h = ampr__exp_det(d[i]);
        bad += memcmp(&h, &e[i], 4) != 0;
    }
    total += (long)d.size();
    ampr__cuda_free(g_c, dd);
    ampr__cuda_free(g_c, de);
    const int32_t cols_list[] = {1000, 32000, 128256};
    for (int32_t cols : cols_list)
        for (int kind = 0; kind < 3; kind++) {
            std::vector<float> x((size_t)cols), tmp((size_t)cols);
            for (int32_t j = 0; j < cols; j++)
                x[(size_t)j] = kind == 1 ? rnd_f(-0.1f, 0.1f) : rnd_f(-8, 8) + (j % 211 == 0 ? 6.0f : 0.0f);
            if (kind == 2)
                for (int32_t j = 0; j < cols; j++) if (j % 3) x[(size_t)j] = -INFINITY;
            float *dx = (float *)dev_put(x.data(), x.size() * 4);
            std::vector<ampr__cuda_draw_req> req;
            for (int k = 0; k < 64; k++)
                req.push_back(ampr__cuda_draw_req{0, k % 2 ? 1.3f : 0.7f, (float)(rnd_u64() >> 40) / 16777216.0f});
            void *dreq = dev_put(req.data(), req.size() * sizeof req[0]);
            int32_t *dout = (int32_t *)dev_put(NULL, req.size() * 4);
            OK(ampr__cuda_temp_draw(g_c, dx, cols, (const ampr__cuda_draw_req *)dreq, (int32_t)req.size(), dout,
                                    &g_err));
            auto out = dev_get<int32_t>(dout, req.size());
            for (size_t k = 0; k < req.size(); k++) {
                int32_t h = ampr__sample_walk(x.data(), cols, req[k].t, req[k].u, tmp.data());
                if (h >= 0 && out[k] >= 0) bad += h != out[k];
                else one_sided += (h < 0) != (out[k] < 0);
                decided += out[k] >= 0;
                total++;
            }
            void *bufs[] = {dx, dreq, dout};
            for (void *b : bufs) ampr__cuda_free(g_c, b);
        }
    bad += one_sided > 2 || decided < 9 * 64 * 9 / 10; /* rare, and most draws decided */
    char name[128];
    snprintf(name, sizeof name, "temperature draws vs the host's walk (%ld decided, %ld one-sided)", decided,
             one_sided);
    report_exact(name, bad, total);
}

/* A random rows x cols matrix (uniform in [-amp, amp]) quantized to t on
 * the host (hm: its reference) and uploaded (dm) */
static void random_mat(HostMat &hm, ampr__cuda_mat &dm, ampr__qtype t, int64_t rows, int64_t cols,
                       float amp) {
    auto w = rnd_vec((size_t)(rows * cols), -amp, amp);
    host_quantize(hm, t, w.data(), rows, cols);
    OK(ampr__cuda_mat_upload(g_c, &hm.q, &dm, &g_err));
}

/* The gate/up GEMV with SwiGLU fused (AMPR__CUDA_FUSE) against the
 * matmul + swiglu it replaces: the same floats, bit for bit, on every path
 * that fuses (one token: the GEMV kernels of each format; NF4 on tensor
 * cores: 1..8 tokens, and 12 and 32 in the batch kernel), with rows split
 * over 1..8 warps or columns over blocks */
static void check_gemv_swiglu(void) {
    char name[128];
    struct Shape { int64_t hidden, cols; } shapes[] = {{512, 512}, {40, 4096}, {8, 2048}, {172, 64}};
    for (ampr__qtype t : k_fmts)
        for (const Shape &sh : shapes)
            for (int mma = 0; mma < (t == AMPR__Q_NF4 ? 2 : 1); mma++)
                for (int32_t n : {1, 3, 8, 12, 32}) {
                    if (n > 1 && !mma) continue; /* only the tensor-core GEMV fuses more tokens */
                    int64_t rows = 2 * sh.hidden, cols = sh.cols;
                    HostMat hm;
                    ampr__cuda_mat dm;
                    random_mat(hm, dm, t, rows, cols, 0.2f);
                    auto x = rnd_vec((size_t)(n * cols), -1, 1);
                    float *dx = (float *)dev_put(x.data(), x.size() * 4);
                    float *dgu = (float *)dev_put(NULL, (size_t)(n * rows) * 4);
                    float *d0 = (float *)dev_put(NULL, (size_t)(n * sh.hidden) * 4);
                    float *d1 = (float *)dev_put(NULL, (size_t)(n * sh.hidden) * 4);
                    {
                        MmaScope sw_mma(mma);
                        {
                            SwitchScope sw(AMPR__CUDA_FUSE, 0);
                            OK(ampr__cuda_matmul_swiglu(g_c, &dm, dx, n, dgu, d0, &g_err));
                        }
                        SwitchScope sw(AMPR__CUDA_FUSE, 1);
                        OK(ampr__cuda_matmul_swiglu(g_c, &dm, dx, n, dgu, d1, &g_err));
                    }
                    auto g0 = dev_get<float>(d0, (size_t)(n * sh.hidden));
                    auto g1 = dev_get<float>(d1, (size_t)(n * sh.hidden));
                    long mism = 0;
                    for (size_t e = 0; e < g0.size(); e++) mism += memcmp(&g0[e], &g1[e], 4) != 0;
                    snprintf(name, sizeof name, "gemv+swiglu fused %s %lldx%lld n=%d%s", fmt_name(t),
                             (long long)rows, (long long)cols, n, mma ? " mma" : "");
                    report_exact(name, mism, (long)g0.size());
                    void *bufs[] = {dx, dgu, d0, d1};
                    for (void *b : bufs) ampr__cuda_free(g_c, b);
                    ampr__cuda_mat_free(g_c, &dm);
                }
}

/* NF4's tensor-core GEMV with its weights through the cp.async ring
 * (AMPR__CUDA_NF4_RING; 4 and 8 stages, and as chosen by size) against the
 * register kernel it replaces: the same blocks in the same order, so the
 * same floats, bit for bit; matmul and fused SwiGLU, on shapes whose warps
 * run fewer blocks than the ring's stages, more (the ring wraps), one
 * block a row (cols 64) and a last tile of fewer than 16 rows */
static void check_nf4_ring(void) {
    char name[128];
    struct Shape { int64_t rows, cols; } shapes[] = {{1004, 512}, {96, 2048}, {8453, 64}, {40, 4096}, {2048, 256}};
    for (const Shape &sh : shapes)
        for (int32_t n : {1, 3, 8}) {
            if ((size_t)n * (size_t)(sh.cols * 2 + 8) > 48 * 1024) continue; /* x not staged: no ring */
            HostMat hm;
            ampr__cuda_mat dm;
            random_mat(hm, dm, AMPR__Q_NF4, sh.rows, sh.cols, 0.2f);
            auto x = rnd_vec((size_t)(n * sh.cols), -1, 1);
            float *dx = (float *)dev_put(x.data(), x.size() * 4);
            size_t ny = (size_t)(n * sh.rows);
            float *dy = (float *)dev_put(NULL, ny * 4), *dgu = (float *)dev_put(NULL, ny * 4);
            float *dh = (float *)dev_put(NULL, ny / 2 * 4);
            MmaScope mma(1);
            SwitchScope fuse(AMPR__CUDA_FUSE, 1);
            /* out[0]: the matmul, out[1]: SwiGLU fused (rows as gate/up pairs) */
            auto run = [&](int ring, int stages, std::vector<float> (&out)[2]) {
                SwitchScope sw(AMPR__CUDA_NF4_RING, ring);
                ampr__cuda_set_nf4_ring(g_c, stages);
                OK(ampr__cuda_matmul(g_c, &dm, dx, n, dy, sh.rows, &g_err));
                out[0] = dev_get<float>(dy, ny);
                OK(ampr__cuda_matmul_swiglu(g_c, &dm, dx, n, dgu, dh, &g_err));
                out[1] = dev_get<float>(dh, ny / 2);
                ampr__cuda_set_nf4_ring(g_c, 0);
            };
            std::vector<float> ref[2], got[2];
            run(0, 0, ref);
            for (int stages : {0, 4, 8}) {
                run(1, stages, got);
                for (int f = 0; f < 2; f++) {
                    long mism = 0;
                    for (size_t e = 0; e < ref[f].size(); e++) mism += memcmp(&ref[f][e], &got[f][e], 4) != 0;
                    snprintf(name, sizeof name, "nf4 ring%s S %s %lldx%lld n=%d == registers", f ? "+swiglu" : "",
                             stages == 4 ? "4" : stages == 8 ? "8" : "auto", (long long)sh.rows, (long long)sh.cols, n);
                    report_exact(name, mism, (long)ref[f].size());
                }
            }
            void *bufs[] = {dx, dy, dgu, dh};
            for (void *b : bufs) ampr__cuda_free(g_c, b);
            ampr__cuda_mat_free(g_c, &dm);
        }
}

static void check_embed_matmul(void) {
    char name[128];
    int64_t vocab = 300;
    std::vector<int32_t> toks = {0, 299, 17, 17, 150};
    int32_t *dt = (int32_t *)dev_put(toks.data(), toks.size() * 4);
    /* rows of one element a thread and of a whole and a part batch of 8
     * (embed_kernel's 256 threads) */
    for (int64_t dim : {256, 2112})
    for (ampr__qtype t : k_fmts) {
        HostMat hm;
        ampr__cuda_mat dm;
        random_mat(hm, dm, t, vocab, dim, 0.5f);
        for (int f16 = 0; f16 < 2; f16++) {
            void *dout = dev_put(NULL, toks.size() * (size_t)dim * 4);
            OK(ampr__cuda_embed(g_c, &dm, dt, (int32_t)toks.size(), dout,
                                f16 ? AMPR__CUDA_F16 : AMPR__CUDA_F32, &g_err));
            std::vector<float> got(toks.size() * (size_t)dim);
            if (f16) {
                auto h = dev_get<__half>(dout, got.size());
                for (size_t e = 0; e < got.size(); e++) got[e] = __half2float(h[e]);
            } else {
                got = dev_get<float>(dout, got.size());
            }
            std::vector<double> ref(got.size());
            for (size_t i = 0; i < toks.size(); i++)
                for (int64_t c = 0; c < dim; c++)
                    ref[i * dim + c] = hm.deq[(size_t)(toks[i] * dim + c)];
            snprintf(name, sizeof name, "embed %s dim %lld -> %s", fmt_name(t), (long long)dim, f16 ? "f16" : "f32");
            report(name, got.data(), ref.data(), ref.size(), f16 ? 1e-3 : 1e-7);
            ampr__cuda_free(g_c, dout);
        }
        ampr__cuda_mat_free(g_c, &dm);
    }
    ampr__cuda_free(g_c, dt);

    /* matmul: GEMV path (n <= 8), cuBLASLt path (n > 8, and n = 3 forced) */
    /* odd shapes: NF4 blocks spanning rows (cols % 64 != 0; stories260K's
     * w_down is 64 x 172) and rows starting on a low nibble (odd cols) */
    /* the one-token kernels split a row over 1..8 warps by rows and chunks
     * (cuda_matmul.cu gemv1): 33 x 8192 and 40 x 4096 take 8 and 4 warps a
     * row; NF4 pairs rows, so odd row counts leave a tail */
    struct Shape { int64_t rows, cols; } shapes[] = {{1004, 512}, {96, 2048}, {1024, 1024},
                                                     {64, 172}, {344, 64}, {7, 33}, {5, 67},
                                                     {8453, 64}, {33, 8192}, {40, 4096}};
    /* n = 12 and 32: NF4's tensor-core batch kernel only (16 and 32 tokens'
     * tiles; one column split on 64 columns, several on the wider ones) */
    struct Case { int32_t n; int gemv_max; } cases[] = {{1, 8}, {3, 8}, {8, 8}, {3, 0}, {37, 8},
                                                        {12, 8}, {32, 8}};
    for (ampr__qtype t : k_fmts)
        for (const Shape &sh : shapes) {
            HostMat hm;
            ampr__cuda_mat dm;
            random_mat(hm, dm, t, sh.rows, sh.cols, 0.2f);
            for (const Case &cs : cases)
            for (int mma = 0; mma < 2; mma++) {
                /* NF4's tensor-core GEMV and batch kernel (MmaScope),
                 * where they apply */
                bool batch = cs.gemv_max > 0 && cs.n > 8 /* the GEMV's most */ &&
                             cs.n <= AMPR__CUDA_NF4_BATCH_MAX;
                if (mma && (t != AMPR__Q_NF4 || (cs.n > cs.gemv_max && !batch) || sh.cols % 64)) continue;
                if (!mma && batch) continue;
                batch = batch && mma;
                int64_t ldy = sh.rows + 3;
                auto x = rnd_vec((size_t)(cs.n * sh.cols), -1, 1);
                float *dx = (float *)dev_put(x.data(), x.size() * 4);
                float *dy = (float *)dev_put(NULL, (size_t)(cs.n * ldy) * 4);
                ampr__cuda_set_gemv_max(g_c, cs.gemv_max);
                {
                    MmaScope sw(mma);
                    OK(ampr__cuda_matmul(g_c, &dm, dx, cs.n, dy, ldy, &g_err));
                }
                ampr__cuda_set_gemv_max(g_c, 8);
                auto gy = dev_get<float>(dy, (size_t)(cs.n * ldy));
                std::vector<double> ref((size_t)(cs.n * ldy));
                host_matmul(hm, x.data(), cs.n, ref.data(), ldy);
                std::vector<float> g2;
                std::vector<double> r2;
                for (int32_t i = 0; i < cs.n; i++)
                    for (int64_t r = 0; r < sh.rows; r++) {
                        g2.push_back(gy[(size_t)(i * ldy + r)]);
                        r2.push_back(ref[(size_t)(i * ldy + r)]);
                    }
                /* which path ampr__cuda_matmul takes (lt_ok in cuda_matmul.cu) */
                bool gemv = cs.n <= cs.gemv_max;
                bool lt = !gemv && !batch && sh.rows % 64 == 0 && sh.cols % 64 == 0 &&
                          (cs.gemv_max == 0 || (sh.rows >= 1024 && sh.cols >= 1024));
                /* cuBLASLt fp16 and the tensor-core GEMV round activations (and
                 * NF4 weights) to half */
                double tol = t == AMPR__Q_INT8 ? 1e-5 : (lt || mma ? 3e-3 : 1e-5);
                snprintf(name, sizeof name, "matmul %s %lldx%lld n=%d %s", fmt_name(t),
                         (long long)sh.rows, (long long)sh.cols, cs.n,
                         lt ? "cuBLASLt" : batch ? "batch-mma" : gemv ? (mma ? "GEMV-mma" : "GEMV") : "simple");
                report(name, g2.data(), r2.data(), r2.size(), tol);
                ampr__cuda_free(g_c, dx);
                ampr__cuda_free(g_c, dy);
            }
            ampr__cuda_mat_free(g_c, &dm);
        }
}

/* Decode batches that cuBLASLt takes instead of the GEMV (lt_batch in
 * cuda_matmul.cu: FP16 from 2 tokens, INT8 from 4, once n x rows x cols >=
 * 2^26), on a matrix where 2 tokens stay on the GEMV and 4 and 8 do not,
 * against the host reference (INT8: the same integer sums either way) */
static void check_batch_lt(void) {
    char name[128];
    const int64_t rows = 4096, cols = 4096;
    for (ampr__qtype t : {AMPR__Q_F16, AMPR__Q_INT8}) {
        HostMat hm;
        ampr__cuda_mat dm;
        random_mat(hm, dm, t, rows, cols, 0.2f);
        for (int32_t n : {2, 4, 8}) {
            bool lt = n >= (t == AMPR__Q_INT8 ? 4 : 2) && (double)n * rows * cols >= 67108864.0;
            auto x = rnd_vec((size_t)(n * cols), -1, 1);
            float *dx = (float *)dev_put(x.data(), x.size() * 4);
            float *dy = (float *)dev_put(NULL, (size_t)(n * rows) * 4);
            OK(ampr__cuda_matmul(g_c, &dm, dx, n, dy, rows, &g_err));
            auto gy = dev_get<float>(dy, (size_t)(n * rows));
            std::vector<double> ref((size_t)(n * rows));
            host_matmul(hm, x.data(), n, ref.data(), rows);
            snprintf(name, sizeof name, "matmul %s %lldx%lld n=%d %s", fmt_name(t), (long long)rows,
                     (long long)cols, n, lt ? "cuBLASLt (batch)" : "GEMV");
            report(name, gy.data(), ref.data(), ref.size(), t == AMPR__Q_F16 && lt ? 3e-3 : 1e-5);
            ampr__cuda_free(g_c, dx);
            ampr__cuda_free(g_c, dy);
        }
        ampr__cuda_mat_free(g_c, &dm);
    }
}

/* The chunks' sizes: by default 16 MB of fp16 (8M elements) or 64 rows;
 * with AMPR__CUDA_DQ_WIDE no more chunks than chunks of W rows would make,
 * W being rows enough for 4 tiles of 128 x 128 an SM at n tokens, but at
 * least the default's and at most 128M elements, and all of one size (the
 * last within 64 rows a chunk of the others); always multiples of 64 rows
 * or the whole matrix, and within what ampr__cuda_dequant_elems reserves.
 * Written here from the rule, not from the code. */
static void check_nf4_chunk_sizes(void) {
    cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, 0));
    const int64_t tiles = 4 * (int64_t)p.multiProcessorCount * 128 * 128, cap = (int64_t)128 << 20;
    const int64_t shapes[][2] = {{28672, 4096}, {128256, 4096}, {4096, 14336}, {6144, 4096}, {1088, 1024},
                                 {100, 64}};
    for (int wide : {0, 1}) {
        SwitchScope sw(AMPR__CUDA_DQ_WIDE, wide);
        int bad = 0, cases = 0;
        for (auto &sh : shapes)
            for (int32_t n : {1, 33, 128, 512, 4096}) {
                int64_t r = sh[0], cl = sh[1], ch = ampr__cuda_dequant_rows(g_c, r, cl, n), k = (r + ch - 1) / ch;
                int64_t last = r - (k - 1) * ch, elems = wide ? cap : (int64_t)8 << 20;
                int64_t def = std::max<int64_t>(64, ((int64_t)8 << 20) / cl / 64 * 64);
                int64_t w = std::max(def, std::min((tiles / n + 63) / 64 * 64, cap / cl / 64 * 64));
                bool ok = ch > 0 && ch <= r && (ch == r || ch % 64 == 0) &&
                          (ch * cl <= elems || ch == 64);
                if (wide) /* no more chunks than W rows each would make; of one size */
                    ok = ok && k <= (r + w - 1) / w && last > ch - 64 * k;
                else
                    ok = ok && (ch == r || ch == def);
                if (ampr__cuda_dequant_elems(g_c, r, cl) < ch * cl) ok = false; /* the reservation covers it */
                cases++;
                if (!ok) {
                    bad++;
                    printf("  %lld x %lld, %d tokens: %lld-row chunks (%s)\n", (long long)r, (long long)cl, n,
                           (long long)ch, wide ? "wide" : "default");
                }
            }
        char name[128];
        snprintf(name, sizeof name, "NF4 dequant chunk sizes, %s (%d SMs)", wide ? "AMPR_CUDA_DQ_WIDE" : "default",
                 p.multiProcessorCount);
        report_exact(name, bad, cases);
    }
}

/* NF4 on cuBLASLt (prefill) dequantizes a chunk of rows at a time: one
 * chunk (the default at this size), chunks of 256 rows with a last one of 64,
 * and of 64 rows, each against the host reference; then with DQ_WIDE at 512
 * tokens (one chunk here too: the chunking itself is the same code) */
static void check_nf4_chunks(void) {
    char name[128];
    int64_t rows = 1088, cols = 1024;
    int32_t n = 37;
    HostMat hm;
    ampr__cuda_mat dm;
    random_mat(hm, dm, AMPR__Q_NF4, rows, cols, 0.2f);
    auto x = rnd_vec((size_t)(n * cols), -1, 1);
    std::vector<double> ref((size_t)(n * rows));
    host_matmul(hm, x.data(), n, ref.data(), rows);
    float *dx = (float *)dev_put(x.data(), x.size() * 4);
    float *dy = (float *)dev_put(NULL, ref.size() * 4);
    for (int64_t ch : {0, 256, 64}) {
        ampr__cuda_set_dequant_rows(g_c, ch);
        OK(ampr__cuda_matmul(g_c, &dm, dx, n, dy, rows, &g_err));
        auto gy = dev_get<float>(dy, ref.size());
        snprintf(name, sizeof name, "matmul nf4 %lldx%lld n=%d cuBLASLt, %lld-row chunks", (long long)rows,
                 (long long)cols, n, (long long)(ch ? ch : rows));
        report(name, gy.data(), ref.data(), ref.size(), 3e-3);
        if (!ch) continue;
        /* AMPR__CUDA_DQ_PIPE: the same chunks on two streams, the same floats;
         * then the default's again on the context's stream after it */
        for (int pipe : {1, 0}) {
            SwitchScope sw(AMPR__CUDA_DQ_PIPE, pipe);
            CU(cudaMemset(dy, 0xff, ref.size() * 4));
            OK(ampr__cuda_matmul(g_c, &dm, dx, n, dy, rows, &g_err));
            OK(ampr__cuda_sync(g_c, &g_err));
            auto gp = dev_get<float>(dy, ref.size());
            snprintf(name, sizeof name, "  %s, %lld-row chunks == one stream's", pipe ? "DQ_PIPE" : "after it",
                     (long long)ch);
            long bad = 0;
            for (size_t e = 0; e < gy.size(); e++) bad += memcmp(&gp[e], &gy[e], 4) != 0;
            report_exact(name, bad, (long)gy.size());
        }
    }
    ampr__cuda_set_dequant_rows(g_c, 0);
    ampr__cuda_free(g_c, dx);
    ampr__cuda_free(g_c, dy);
    { /* DQ_WIDE at 512 tokens */
        SwitchScope wide(AMPR__CUDA_DQ_WIDE, 1);
        n = 512;
        x = rnd_vec((size_t)(n * cols), -1, 1);
        ref.assign((size_t)(n * rows), 0.0);
        host_matmul(hm, x.data(), n, ref.data(), rows);
        dx = (float *)dev_put(x.data(), x.size() * 4);
        dy = (float *)dev_put(NULL, ref.size() * 4);
        OK(ampr__cuda_matmul(g_c, &dm, dx, n, dy, rows, &g_err));
        auto gy = dev_get<float>(dy, ref.size());
        snprintf(name, sizeof name, "matmul nf4 %lldx%lld n=%d cuBLASLt, DQ_WIDE %lld-row chunks", (long long)rows,
                 (long long)cols, n, (long long)ampr__cuda_dequant_rows(g_c, rows, cols, n));
        report(name, gy.data(), ref.data(), ref.size(), 3e-3);
        ampr__cuda_free(g_c, dx);
        ampr__cuda_free(g_c, dy);
    }
    ampr__cuda_mat_free(g_c, &dm);
}

/* Kernels a matmul with a tail runs where a fused kernel takes it (gemv_ok,
 * up to 8 tokens: INT8 of more than one token, or of one with
 * AMPR_CUDA_I8_ONCE, quantizes x in a kernel of its own first), or 0 where
 * none does */
static unsigned long tail_kernels(ampr__qtype t, int64_t cols, int32_t n) {
    if (cols % (t == AMPR__Q_F16 ? 8 : t == AMPR__Q_INT8 ? 16 : 32) || n > 8) return 0; /* gemv_max */
    return t == AMPR__Q_INT8 && (n > 1 || ampr__cuda_switch_on(g_c, AMPR__CUDA_I8_ONCE)) ? 2 : 1;
}

/* ampr__cuda_matmul_addnorm with AMPR_CUDA_FUSE_TAIL (the matmul kernel's
 * last block adds y into the residual and normalizes) against it without
 * (the matmul, then ampr__cuda_add_rmsnorm): y and the residual bit for bit,
 * twice in a row (the block count is set back for the next call). 1 and 3
 * tokens on each format's GEMV kernels (one-token, 2-8 tokens), NF4 on
 * tensor cores at 1, 3 and 8; and shapes no fused kernel takes (cols not a
 * multiple of the format's chunk), which must give the same by the other
 * path. On the CPU emulation the fused calls are also seen to run their
 * kernels only (tail_kernels). */
static void check_addnorm(void) {
    char name[160];
    struct Shape { int64_t rows, cols; } shapes[] = {{300, 512}, {1000, 4096}, {64, 172}, {2048, 256}};
    for (ampr__qtype t : k_fmts)
        for (const Shape &sh : shapes)
            for (int mma = 0; mma < (t == AMPR__Q_NF4 ? 2 : 1); mma++)
                for (int32_t n : {1, 3, 8}) {
                    if (n == 8 && !mma) continue;
                    int64_t rows = sh.rows, cols = sh.cols;
                    HostMat hm;
                    ampr__cuda_mat dm;
                    random_mat(hm, dm, t, rows, cols, 0.3f);
                    auto x = rnd_vec((size_t)n * (size_t)cols, -1, 1);
                    auto r0 = rnd_vec((size_t)n * (size_t)rows, -2, 2);
                    auto nw = rnd_vec((size_t)rows, 0.5f, 1.5f);
                    float *dx = (float *)dev_put(x.data(), x.size() * 4);
                    float *dw = (float *)dev_put(nw.data(), nw.size() * 4);
                    size_t ny = (size_t)n * (size_t)rows;
                    std::vector<float> got[3][2]; /* [unfused, fused, fused again][y, r] */
#ifdef AMPR_CUDA_EMU
                    bool one_kernel = true; /* each fused call ran its kernels (tail_kernels) */
#endif
                    MmaScope sw_mma(mma);
                    for (int v = 0; v < 3; v++) {
                        SwitchScope sw(AMPR__CUDA_FUSE_TAIL, v > 0);
                        float *dr = (float *)dev_put(r0.data(), ny * 4);
                        float *dy = (float *)dev_put(NULL, ny * 4);
#ifdef AMPR_CUDA_EMU
                        unsigned long k0 = ampr_emu::kernels_run();
#endif
                        OK(ampr__cuda_matmul_addnorm(g_c, &dm, dx, n, dy, dr, dw, 1e-5f, &g_err));
                        OK(ampr__cuda_sync(g_c, &g_err));
#ifdef AMPR_CUDA_EMU
                        if (v > 0) one_kernel = one_kernel && ampr_emu::kernels_run() - k0 == tail_kernels(t, cols, n);
#endif
                        got[v][0] = dev_get<float>(dy, ny);
                        got[v][1] = dev_get<float>(dr, ny);
                        ampr__cuda_free(g_c, dr);
                        ampr__cuda_free(g_c, dy);
                    }
                    long mism = 0;
                    for (int v = 1; v < 3; v++)
                        for (int k = 0; k < 2; k++)
                            for (size_t e = 0; e < ny; e++) mism += memcmp(&got[0][k][e], &got[v][k][e], 4) != 0;
                    bool fusable = tail_kernels(t, cols, n) > 0;
#ifdef AMPR_CUDA_EMU
                    if (fusable && !one_kernel) mism++;
#endif
                    snprintf(name, sizeof name, "matmul+add+rmsnorm %s %lldx%lld n=%d%s%s", fmt_name(t),
                             (long long)rows, (long long)cols, n, mma ? " mma" : "",
                             fusable ? " fused" : " (not fused)");
                    report_exact(name, mism, (long)(4 * ny));
                    ampr__cuda_free(g_c, dx);
                    ampr__cuda_free(g_c, dw);
                    ampr__cuda_mat_free(g_c, &dm);
                }
}

/* ampr__cuda_matmul_rope_kv with AMPR_CUDA_FUSE_TAIL (the QKV matmul's last
 * block rotates Q and K and stores K and V in the pages) against it without
 * (the matmul, then ampr__cuda_rope_kv): the rows and both caches bit for
 * bit, twice in a row; f16 and f32 caches, both rotations, GQA, rows of
 * several sequences (row_seq) at several positions; on the emulation the
 * fused calls run their kernels only (tail_kernels). */
static void check_rope_tail(void) {
    char name[160];
    const int32_t nq = 8, nkv = 2, hd = 64, bs = 16, n_layers = 2, layer = 1, pages = 12, stride = 6;
    const int32_t kv_dim = nkv * hd, rows = (nq + 2 * nkv) * hd, cols = 256, max_pos = pages / 2 * bs;
    /* two sequences' block tables (6 pages each, shuffled) and the rope tables */
    std::vector<int32_t> blocks = {7, 2, 9, 0, 5, 1, 3, 8, 11, 4, 10, 6};
    int32_t *dblk = (int32_t *)dev_put(blocks.data(), blocks.size() * 4);
    std::vector<float> cs((size_t)max_pos * hd / 2), sn(cs.size());
    for (int32_t p = 0; p < max_pos; p++)
        for (int32_t k = 0; k < hd / 2; k++) {
            double f = p * pow(10000.0, -2.0 * k / hd);
            cs[(size_t)p * hd / 2 + k] = (float)cos(f);
            sn[(size_t)p * hd / 2 + k] = (float)sin(f);
        }
    float *dcs = (float *)dev_put(cs.data(), cs.size() * 4), *dsn = (float *)dev_put(sn.data(), sn.size() * 4);
    size_t cache = (size_t)pages * n_layers * bs * kv_dim;
    for (ampr__qtype t : k_fmts)
        for (int f16 = 0; f16 < 2; f16++)
            for (int mma = 0; mma < (t == AMPR__Q_NF4 ? 2 : 1); mma++)
                for (int32_t n : {1, 3})
                for (int inter = 0; inter < 2; inter++) {
                    HostMat hm;
                    ampr__cuda_mat dm;
                    random_mat(hm, dm, t, rows, cols, 0.3f);
                    auto x = rnd_vec((size_t)n * cols, -1, 1);
                    float *dx = (float *)dev_put(x.data(), x.size() * 4);
                    std::vector<int32_t> pos((size_t)n), seq((size_t)n);
                    int32_t p0 = (int32_t)(rnd_u64() % (uint64_t)max_pos);
                    for (int32_t i = 0; i < n; i++) { /* rows of one sequence at distinct positions */
                        pos[(size_t)i] = (p0 + 37 * i) % max_pos;
                        seq[(size_t)i] = i % 2;
                    }
                    int32_t *dpos = (int32_t *)dev_put(pos.data(), pos.size() * 4);
                    int32_t *dseq = (int32_t *)dev_put(seq.data(), seq.size() * 4);
                    size_t es = f16 ? 2 : 4, ny = (size_t)n * rows;
                    std::vector<uint8_t> got[3][3]; /* [unfused, fused, fused again][qkv, K, V] */
#ifdef AMPR_CUDA_EMU
                    bool one_kernel = true;
#endif
                    MmaScope sw_mma(mma);
                    for (int v = 0; v < 3; v++) {
                        SwitchScope sw(AMPR__CUDA_FUSE_TAIL, v > 0);
                        std::vector<uint8_t> zero(cache * es, 0);
                        void *dk = dev_put(zero.data(), zero.size()), *dv = dev_put(zero.data(), zero.size());
                        float *dy = (float *)dev_put(NULL, ny * 4);
                        ampr__cuda_kv_view kv = {dk, dv, f16 ? AMPR__CUDA_F16 : AMPR__CUDA_F32, n_layers, bs,
                                                 kv_dim, layer, dblk, dseq, stride};
#ifdef AMPR_CUDA_EMU
                        unsigned long k0 = ampr_emu::kernels_run();
#endif
                        OK(ampr__cuda_matmul_rope_kv(g_c, &dm, dx, n, dy, &kv, nq, nkv, hd, dpos, dcs, dsn,
                                                     inter, &g_err));
                        OK(ampr__cuda_sync(g_c, &g_err));
#ifdef AMPR_CUDA_EMU
                        if (v > 0) one_kernel = one_kernel && ampr_emu::kernels_run() - k0 == tail_kernels(t, cols, n);
#endif
                        got[v][0] = dev_get<uint8_t>(dy, ny * 4);
                        got[v][1] = dev_get<uint8_t>(dk, cache * es);
                        got[v][2] = dev_get<uint8_t>(dv, cache * es);
                        for (void *b : {(void *)dy, dk, dv}) ampr__cuda_free(g_c, b);
                    }
                    long mism = 0, total = 0;
                    for (int v = 1; v < 3; v++)
                        for (int k = 0; k < 3; k++) {
                            total += (long)got[0][k].size();
                            for (size_t e = 0; e < got[0][k].size(); e++) mism += got[0][k][e] != got[v][k][e];
                        }
                    bool fusable = tail_kernels(t, cols, n) > 0;
#ifdef AMPR_CUDA_EMU
                    if (fusable && !one_kernel) mism++;
#endif
                    snprintf(name, sizeof name, "matmul+rope+kv %s n=%d%s %s cache %s%s", fmt_name(t), n,
                             mma ? " mma" : "", f16 ? "f16" : "f32", inter ? "interleaved" : "half-split",
                             fusable ? " fused" : " (not fused)");
                    report_exact(name, mism, total);
                    for (void *b : {(void *)dx, (void *)dpos, (void *)dseq}) ampr__cuda_free(g_c, b);
                    ampr__cuda_mat_free(g_c, &dm);
                }
    for (void *b : {(void *)dblk, (void *)dcs, (void *)dsn}) ampr__cuda_free(g_c, b);
}

/* A switch's two settings on the same work, bit for bit: run(out) enqueues
 * ny floats into out, with sw off and then on; count() is a counter (the
 * emulation's prefetches, a probe's launches; 0 on a GPU) read
 * around each run into counted[off / on]. Returns the floats that differ. */
template <typename Run, typename Count>
static long both_ways(ampr__cuda_switch sw, size_t ny, Run run, Count count, unsigned long (&counted)[2]) {
    float *d[2] = {(float *)dev_put(NULL, ny * 4), (float *)dev_put(NULL, ny * 4)};
    for (int on = 0; on < 2; on++) {
        SwitchScope scope(sw, on);
        unsigned long before = count();
        run(d[on]);
        OK(ampr__cuda_sync(g_c, &g_err));
        counted[on] = count() - before;
    }
    auto g0 = dev_get<float>(d[0], ny), g1 = dev_get<float>(d[1], ny);
    long mism = 0;
    for (size_t e = 0; e < ny; e++) mism += memcmp(&g0[e], &g1[e], 4) != 0;
    for (float *b : d) ampr__cuda_free(g_c, b);
    return mism;
}

#ifdef AMPR_CUDA_EMU
static unsigned long count_prefetches(void) { return ampr_emu::prefetches(); }
#else
static unsigned long count_prefetches(void) { return 0; }
#endif

/* AMPR_CUDA_PREFETCH: a hint, so every decode GEMV gives the same floats
 * with it as without (one token: gemv1_kernel of each format; NF4 on tensor
 * cores: its GEMV at 4 tokens and its batch kernel at 16; a matrix longer than
 * a grid's first rows; rows that end a block early; NF4 scales that span
 * rows). On the CPU emulation each prefetched address is checked to lie in a
 * device allocation, and the kernels are seen to prefetch at all (a count). */
static void check_prefetch(void) {
    char name[160];
    struct Shape { int64_t rows, cols; } shapes[] = {{300, 512}, {33, 8192}, {4099, 2048}, {72, 96}};
    for (ampr__qtype t : k_fmts)
        for (const Shape &sh : shapes)
            for (int mma = 0; mma < (t == AMPR__Q_NF4 ? 2 : 1); mma++)
                for (int32_t n : {1, 4, 16}) {
                    if (n > 1 && !mma) continue; /* those take cuBLASLt or the any-shape kernel */
                    if (mma && sh.cols % 64) continue;
                    HostMat hm;
                    ampr__cuda_mat dm;
                    random_mat(hm, dm, t, sh.rows, sh.cols, 0.3f);
                    auto x = rnd_vec((size_t)n * (size_t)sh.cols, -1, 1);
                    float *dx = (float *)dev_put(x.data(), x.size() * 4);
                    size_t ny = (size_t)n * (size_t)sh.rows;
                    unsigned long pf[2] = {0, 0}; /* lines prefetched without, with */
                    MmaScope sw_mma(mma);
                    /* the ring kernel has no prefetch: its first copies are
                     * issued before its PDL wait whatever the switch says */
                    SwitchScope no_ring(AMPR__CUDA_NF4_RING, 0);
                    long mism = both_ways(AMPR__CUDA_PREFETCH, ny, [&](float *out) {
                        OK(ampr__cuda_matmul(g_c, &dm, dx, n, out, sh.rows, &g_err)); }, count_prefetches, pf);
#ifdef AMPR_CUDA_EMU
                    if (pf[0] != 0 || pf[1] == 0) mism++; /* none without the switch, some with it */
                    snprintf(name, sizeof name, "prefetch %s %lldx%lld n=%d%s (%lu lines)", fmt_name(t),
                             (long long)sh.rows, (long long)sh.cols, n, mma ? " mma" : "", pf[1]);
#else
                    snprintf(name, sizeof name, "prefetch %s %lldx%lld n=%d%s", fmt_name(t),
                             (long long)sh.rows, (long long)sh.cols, n, mma ? " mma" : "");
#endif
                    report_exact(name, mism, (long)ny);
                    ampr__cuda_free(g_c, dx);
                    ampr__cuda_mat_free(g_c, &dm);
                }
}

/* AMPR__CUDA_I8_ONCE: INT8's one-token GEMV with x quantized once by
 * quant_act_kernel gives the bytes of the GEMV that quantizes x in each
 * block (the same rule, the same int32 sums and scaling), on the plain and
 * the SwiGLU-fused kernel, for tokens with an inf, a NaN or only zeros too;
 * and it launches one quant_act_kernel (counted by the launch probe) where
 * the default launches none. */
static void check_i8_once(void) {
    char name[160];
    struct Shape { int64_t rows, cols; } shapes[] = {{300, 512}, {33, 8192}, {4099, 2048}, {72, 96}, {64, 14336}};
    for (const Shape &sh : shapes)
        for (int fuse = 0; fuse < 2; fuse++)
            for (int kind = 0; kind < 4; kind++) { /* x: random, an inf, a NaN, zeros */
                if (kind && (sh.rows != 300 || fuse)) continue;
                HostMat hm;
                ampr__cuda_mat dm;
                random_mat(hm, dm, AMPR__Q_INT8, sh.rows, sh.cols, 0.3f);
                auto x = rnd_vec((size_t)sh.cols, -1, 1);
                if (kind == 1) x[7] = INFINITY;
                if (kind == 2) x[5] = NAN;
                if (kind == 3) std::fill(x.begin(), x.end(), 0.0f);
                float *dx = (float *)dev_put(x.data(), x.size() * 4);
                size_t ny = (size_t)(fuse ? sh.rows / 2 : sh.rows);
                float *gu = (float *)dev_put(NULL, (size_t)sh.rows * 4);
                unsigned long quants[2] = {0, 0};
                SwitchScope fs(AMPR__CUDA_FUSE, fuse);
                ampr__cuda_set_probe(g_c, "quant_act_kernel", 2); /* twice: the same bytes again */
                long mism = both_ways(AMPR__CUDA_I8_ONCE, ny, [&](float *out) {
                    if (fuse) OK(ampr__cuda_matmul_swiglu(g_c, &dm, dx, 1, gu, out, &g_err));
                    else OK(ampr__cuda_matmul(g_c, &dm, dx, 1, out, sh.rows, &g_err));
                }, [] {
                    static unsigned long launches = 0; /* the probe's count since its last call */
                    return launches += ampr__cuda_set_probe(g_c, "quant_act_kernel", 2);
                }, quants);
                ampr__cuda_set_probe(g_c, NULL, 0);
                mism += quants[0] != 0 || quants[1] != 1; /* the path each took */
                static const char *const kinds[] = {"", ", an inf", ", a NaN", ", zeros"};
                snprintf(name, sizeof name, "int8 %lldx%lld n=1%s%s, x quantized once == in each block",
                         (long long)sh.rows, (long long)sh.cols, fuse ? " SwiGLU" : "", kinds[kind]);
                report_exact(name, mism, (long)ny + 1);
                ampr__cuda_free(g_c, dx);
                ampr__cuda_free(g_c, gu);
                ampr__cuda_mat_free(g_c, &dm);
            }
}

/* A NaN activation gives NaN outputs on the fp16 and NF4 paths that round
 * activations to half (the tensor-core GEMV, cuBLASLt) as on the fp32 ones,
 * and on INT8, whose token then has scale NaN (lib/quant/quant.h; the one-
 * token GEMV quantizes in its prologue, the others in quant_act_kernel), so
 * that the fallback's check can flag the row; the other tokens stay finite. */
static void check_nan_matmul(void) {
    char name[128];
    int64_t rows = 1024, cols = 1024;
    for (ampr__qtype t : k_fmts) {
        HostMat hm;
        ampr__cuda_mat dm;
        random_mat(hm, dm, t, rows, cols, 0.2f);
        struct Case { int32_t n; int mma; const char *path; } cases[] = {
            {1, 0, "GEMV"}, {2, 0, "GEMV"}, {2, 1, "GEMV-mma"}, {12, 1, "batch-mma"}, {37, 0, "cuBLASLt"}};
        for (const Case &cs : cases) {
            if (cs.mma && t != AMPR__Q_NF4) continue;
            auto x = rnd_vec((size_t)(cs.n * cols), -1, 1);
            x[7] = NAN;
            float *dx = (float *)dev_put(x.data(), x.size() * 4);
            float *dy = (float *)dev_put(NULL, (size_t)(cs.n * rows) * 4);
            {
                MmaScope sw(cs.mma);
                OK(ampr__cuda_matmul(g_c, &dm, dx, cs.n, dy, rows, &g_err));
            }
            auto y = dev_get<float>(dy, (size_t)(cs.n * rows));
            long bad = 0;
            for (int32_t i = 0; i < cs.n; i++)
                for (int64_t r = 0; r < rows; r++) {
                    float v = y[(size_t)(i * rows + r)];
                    bad += i == 0 ? !isnan(v) : !isfinite(v);
                }
            snprintf(name, sizeof name, "matmul %s NaN in x -> NaN row (%s, n=%d)", fmt_name(t), cs.path, cs.n);
            report_exact(name, bad, (long)(cs.n * rows));
            ampr__cuda_free(g_c, dx);
            ampr__cuda_free(g_c, dy);
        }
        ampr__cuda_mat_free(g_c, &dm);
    }
}

/* head_dim 64 and 128: the attention kernel keeps head_dim/32 dims per lane */
static void check_kv_attention(int32_t hd) {
    char name[128];
    int32_t n_layers = 2, layer = 1, bs = 16, n_pages = 40, heads = 8, kvh = 2;
    int32_t kv_dim = kvh * hd;
    /* 576 positions in 36 pages out of order */
    std::vector<int32_t> blocks = {7, 2, 9, 0, 5, 1, 3, 8, 38, 11, 24, 17, 30, 12, 35, 20, 27, 14,
                                   33, 22, 10, 29, 16, 37, 25, 13, 31, 19, 36, 23, 15, 28, 21, 34,
                                   18, 26};
    int32_t *dblk = (int32_t *)dev_put(blocks.data(), blocks.size() * 4);
    size_t elems = (size_t)n_pages * n_layers * bs * kv_dim;
    for (int f16 = 0; f16 < 2; f16++) {
        size_t esz = f16 ? 2 : 4;
        /* the whole arena random; then kv_store writes a few rows */
        auto kf = rnd_vec(elems, -1, 1), vf = rnd_vec(elems, -1, 1);
        std::vector<uint8_t> kb(elems * esz), vb(elems * esz);
        for (size_t e = 0; e < elems; e++) {
            if (f16) {
                ((__half *)kb.data())[e] = __float2half_rn(kf[e]);
                ((__half *)vb.data())[e] = __float2half_rn(vf[e]);
                kf[e] = __half2float(((__half *)kb.data())[e]);
                vf[e] = __half2float(((__half *)vb.data())[e]);
            } else {
                memcpy(kb.data(), kf.data(), elems * 4);
                memcpy(vb.data(), vf.data(), elems * 4);
                break;
            }
        }
        void *dk = dev_put(kb.data(), kb.size()), *dv = dev_put(vb.data(), vb.size());
        ampr__cuda_kv_view kv = {dk, dv, f16 ? AMPR__CUDA_F16 : AMPR__CUDA_F32, n_layers, bs,
                                 kv_dim, layer, dblk, NULL, 0};
        auto off = [&](int32_t p) {
            return (((size_t)blocks[(size_t)(p / bs)] * n_layers + layer) * bs + p % bs) * kv_dim;
        };
        /* kv_store: 3 rows (K then V) at positions 5, 16, 127, padded rows */
        std::vector<int32_t> spos = {5, 16, 127};
        int64_t ld = 2 * kv_dim + 44;
        auto rows = rnd_vec((size_t)3 * ld, -1, 1);
        float *drows = (float *)dev_put(rows.data(), rows.size() * 4);
        int32_t *dspos = (int32_t *)dev_put(spos.data(), spos.size() * 4);
        OK(ampr__cuda_kv_store(g_c, &kv, drows, ld, 3, dspos, &g_err));
        for (int i = 0; i < 3; i++)
            for (int32_t d = 0; d < kv_dim; d++) {
                float kk = rows[(size_t)(i * ld + d)], vv = rows[(size_t)(i * ld + kv_dim + d)];
                if (f16) { kk = __half2float(__float2half_rn(kk)); vv = __half2float(__float2half_rn(vv)); }
                kf[off(spos[(size_t)i]) + (size_t)d] = kk;
                vf[off(spos[(size_t)i]) + (size_t)d] = vv;
            }
        std::vector<float> gk(elems), gv(elems);
        if (f16) {
            auto hk = dev_get<__half>(dk, elems), hv = dev_get<__half>(dv, elems);
            for (size_t e = 0; e < elems; e++) { gk[e] = __half2float(hk[e]); gv[e] = __half2float(hv[e]); }
        } else {
            gk = dev_get<float>(dk, elems);
            gv = dev_get<float>(dv, elems);
        }
        long mism = 0;
        for (size_t e = 0; e < elems; e++) mism += (gk[e] != kf[e]) + (gv[e] != vf[e]);
        snprintf(name, sizeof name, "kv_store %s hd %d (whole arena compared)", f16 ? "f16" : "f32", hd);
        report_exact(name, mism, (long)(2 * elems));

        /* attention: decode (1 row at 127, 0, 300 and 575, 3 rows at 497..499;
         * position splits, tiles partly full), a short prefill (20 rows at
         * 30..49; splits) and long ones (100 rows at 20..119, 70 at 0..69:
         * enough rows for the query-tile kernel even with 132 SMs, the last
         * tile partly full) */
        struct AC { int32_t n, p0; } acs[] = {{1, 127}, {1, 0},  {20, 30}, {100, 20},
                                              {70, 0},  {1, 300}, {1, 575}, {3, 497}};
        for (const AC &ac : acs)
        for (int variant = 0; variant < 3; variant++) {
            /* 1: the tensor-core prefill kernel (AMPR__CUDA_ATT_MMA) on the
             * tile path; 2: the split kernel's 16-byte V loop (AMPR__CUDA_ATT_DEC) */
            if ((variant == 1 && ac.n < 32) || (variant == 2 && ac.n >= 32)) continue;
            int mma = variant == 1;
            int64_t ldq = heads * hd + 2 * kv_dim;
            auto q = rnd_vec((size_t)(ac.n * ldq), -1, 1);
            std::vector<int32_t> pos((size_t)ac.n);
            for (int32_t i = 0; i < ac.n; i++) pos[(size_t)i] = ac.p0 + i;
            float *dq = (float *)dev_put(q.data(), q.size() * 4);
            int32_t *dp = (int32_t *)dev_put(pos.data(), pos.size() * 4);
            float *dout = (float *)dev_put(NULL, (size_t)ac.n * heads * hd * 4);
            {
                SwitchScope sw_mma(AMPR__CUDA_ATT_MMA, mma), sw_dec(AMPR__CUDA_ATT_DEC, variant == 2);
                OK(ampr__cuda_attention(g_c, &kv, dq, ldq, ac.n, dp, heads, kvh, hd, dout, &g_err));
            }
            auto got = dev_get<float>(dout, (size_t)ac.n * heads * hd);
            std::vector<double> ref(got.size());
            for (int32_t i = 0; i < ac.n; i++)
                for (int32_t h = 0; h < heads; h++) {
                    int32_t g = h / (heads / kvh);
                    int32_t P = pos[(size_t)i];
                    std::vector<double> sc((size_t)P + 1);
                    double mx = -1e300;
                    for (int32_t t = 0; t <= P; t++) {
                        double s = 0;
                        for (int32_t d = 0; d < hd; d++)
                            s += (double)q[(size_t)(i * ldq + h * hd + d)] * kf[off(t) + (size_t)(g * hd + d)];
                        sc[(size_t)t] = s / sqrt((double)hd);
                        mx = std::max(mx, sc[(size_t)t]);
                    }
                    double sum = 0;
                    for (auto &s : sc) sum += (s = exp(s - mx));
                    for (int32_t d = 0; d < hd; d++) {
                        double o = 0;
                        for (int32_t t = 0; t <= P; t++) o += sc[(size_t)t] * vf[off(t) + (size_t)(g * hd + d)];
                        ref[(size_t)(i * heads * hd + h * hd + d)] = o / sum;
                    }
                }
            snprintf(name, sizeof name, "attention %s hd %d n=%d pos %d..%d (GQA 8/2)%s",
                     f16 ? "f16" : "f32", hd, ac.n, ac.p0, ac.p0 + ac.n - 1,
                     variant == 1 ? " mma" : variant == 2 ? " dec16" : "");
            /* the tensor-core kernel rounds Q, K, V and P to fp16 */
            report(name, got.data(), ref.data(), ref.size(), mma ? 3e-3 : 1e-5);
            ampr__cuda_free(g_c, dq);
            ampr__cuda_free(g_c, dp);
            ampr__cuda_free(g_c, dout);
        }
        void *bufs[] = {dk, dv, drows, dspos};
        for (void *b : bufs) ampr__cuda_free(g_c, b);
    }
    ampr__cuda_free(g_c, dblk);
}

static void check_nccl(void) {
    if (!ampr__cuda_have_nccl()) {
        printf("%-44s SKIP (built without NCCL)\n", "nccl all-reduce");
        return;
    }
    int ndev = 0;
    OK(ampr__cuda_device_count(&ndev, &g_err));
    int n = ndev >= 2 ? 2 : 1;
    ampr__cuda *ctx[2] = {g_c, NULL};
    if (n == 2) OK(ampr__cuda_open(1, &ctx[1], &g_err));
    ampr__cuda_comm *comms[2] = {NULL, NULL};
    ampr_status st = ampr__cuda_comm_init_all(ctx, n, comms, &g_err);
    if (st != AMPR_OK) {
        printf("%-44s FAIL (init: %s)\n", "nccl all-reduce", g_err.msg);
        g_fail++;
        ampr__err_clear(&g_err);
        ampr__cuda_close(ctx[1]);
        return;
    }
    size_t cnt = 1 << 20;
    std::vector<std::vector<float>> host((size_t)n);
    float *bufs[2] = {NULL, NULL};
    for (int r = 0; r < n; r++) {
        host[(size_t)r] = rnd_vec(cnt, -1, 1);
        void *p = NULL;
        OK(ampr__cuda_alloc(ctx[r], cnt * 4, &p, &g_err));
        OK(ampr__cuda_upload(ctx[r], p, host[(size_t)r].data(), cnt * 4, &g_err));
        bufs[r] = (float *)p;
    }
    OK(ampr__cuda_allreduce_sum_group(comms, bufs, n, cnt, &g_err));
    std::vector<double> ref(cnt, 0.0);
    for (int r = 0; r < n; r++)
        for (size_t e = 0; e < cnt; e++) ref[e] += host[(size_t)r][e];
    for (int r = 0; r < n; r++) {
        OK(ampr__cuda_sync(ctx[r], &g_err));
        std::vector<float> got(cnt);
        OK(ampr__cuda_download(ctx[r], got.data(), bufs[r], cnt * 4, &g_err));
        char name[64];
        snprintf(name, sizeof name, "nccl all-reduce sum, %d rank(s), rank %d", n, r);
        report(name, got.data(), ref.data(), cnt, 1e-6);
        ampr__cuda_free(ctx[r], bufs[r]);
        ampr__cuda_comm_free(comms[r]);
    }
    ampr__cuda_close(ctx[1]);
}

/* Burn about `cycles` GPU clocks on a stream: makes a stream late on purpose. */
__global__ void spin_kernel(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

/* The copy all-reduce (no NCCL): 2 and 4 ranks as separate contexts on GPU 0
 * (and 2 ranks on GPUs 0 and 1 when there are two), each rank's buffer the
 * rank-order fp32 sum, bit for bit (the CPU backend's order); three rounds in
 * a row. Nothing synchronizes the ranks' streams but the all-reduce itself:
 * every rank >= 1 spins before writing its partial and rank 0 spins before
 * the reduce, and the results are read back from the last rank first, so a
 * missing event wait (rank 0 not waiting for a partial, a rank not waiting
 * for the sum) reads stale data and fails the check. */
static void check_copy_reduce(void) {
    int ndev = 0;
    OK(ampr__cuda_device_count(&ndev, &g_err));
    struct { int n; int dev[4]; } cases[3] = {{2, {0, 0}}, {4, {0, 0, 0, 0}}, {2, {0, 1}}};
    int n_cases = ndev >= 2 ? 3 : 2;
    const long long spin = 2000000; /* ~1 ms */
    for (int ci = 0; ci < n_cases; ci++) {
        int n = cases[ci].n;
        ampr__cuda *ctx[4] = {g_c, NULL, NULL, NULL};
        for (int r = 1; r < n; r++) OK(ampr__cuda_open(cases[ci].dev[r], &ctx[r], &g_err));
        ampr__cuda_reduce *red = NULL;
        OK(ampr__cuda_reduce_local(ctx, n, 0, &red, &g_err));
        for (size_t cnt : {(size_t)5, (size_t)2048 * 7, (size_t)1 << 20}) {
            std::vector<std::vector<float>> host((size_t)n);
            float *bufs[4] = {NULL, NULL, NULL, NULL}, *orig[4] = {NULL, NULL, NULL, NULL};
            for (int r = 0; r < n; r++) {
                host[(size_t)r] = rnd_vec(cnt, -1, 1);
                void *p = NULL, *q = NULL;
                OK(ampr__cuda_alloc(ctx[r], cnt * 4, &p, &g_err));
                OK(ampr__cuda_alloc(ctx[r], cnt * 4, &q, &g_err));
                OK(ampr__cuda_upload(ctx[r], p, host[(size_t)r].data(), cnt * 4, &g_err));
                OK(ampr__cuda_upload(ctx[r], q, host[(size_t)r].data(), cnt * 4, &g_err));
                bufs[r] = (float *)p;
                orig[r] = (float *)q;
            }
            std::vector<float> want(cnt);
            long bad = 0;
            for (int round = 0; round < 3; round++) {
                /* host: the rank-order sum; device: the same, after every rank
                 * added its original values to the last sum (x += y) */
                for (size_t e = 0; e < cnt; e++) {
                    float a = round ? want[e] + host[0][e] : host[0][e];
                    for (int r = 1; r < n; r++)
                        a += round ? want[e] + host[(size_t)r][e] : host[(size_t)r][e];
                    want[e] = a;
                }
                for (int r = 0; r < n; r++) {
                    OK(ampr__cuda_use(ctx[r], &g_err));
                    cudaStream_t st = (cudaStream_t)ampr__cuda_stream(ctx[r]);
                    if (r > 0) spin_kernel<<<1, 1, 0, st>>>(spin);
                    if (round) OK(ampr__cuda_add(ctx[r], bufs[r], orig[r], (int64_t)cnt, &g_err));
                }
                OK(ampr__cuda_use(ctx[0], &g_err));
                spin_kernel<<<1, 1, 0, (cudaStream_t)ampr__cuda_stream(ctx[0])>>>(spin);
                OK(ampr__cuda_reduce_sum(red, bufs, cnt, &g_err));
                for (int r = n - 1; r >= 0; r--) {
                    std::vector<float> got(cnt);
                    OK(ampr__cuda_download(ctx[r], got.data(), bufs[r], cnt * 4, &g_err));
                    for (size_t e = 0; e < cnt; e++) bad += memcmp(&got[e], &want[e], 4) != 0;
                }
            }
            for (int r = 0; r < n; r++) OK(ampr__cuda_sync(ctx[r], &g_err));
            char name[96];
            snprintf(name, sizeof name, "copy all-reduce, %d ranks on GPU%s %s, %zu floats x3", n,
                     ci == 2 ? "s" : "", ci == 2 ? "0,1" : "0", cnt);
            report_exact(name, bad, (long)(3 * n * cnt));
            for (int r = 0; r < n; r++) {
                ampr__cuda_free(ctx[r], bufs[r]);
                ampr__cuda_free(ctx[r], orig[r]);
            }
        }
        ampr__cuda_reduce_free(red);
        for (int r = 1; r < n; r++) ampr__cuda_close(ctx[r]);
    }
}

/* ---- whole model ------------------------------------------------------------------------ */

struct HostModel {
    ampr__cuda_hparams hp;
    HostMat embd, output;
    std::vector<HostMat> layers; /* 4 per layer */
    std::vector<float> norms, cs, sn;
    std::vector<ampr__qmat> qlayers;
};

static void model_make(HostModel &m, ampr__qtype t, const ampr__cuda_hparams &hp, bool random_bits) {
    m.hp = hp;
    int64_t q = (int64_t)hp.n_heads * hp.head_dim, kv = (int64_t)hp.n_kv_heads * hp.head_dim;
    auto mk = [&](HostMat &hm, int64_t rows, int64_t cols, float amp) {
        if (!random_bits) {
            auto w = rnd_vec((size_t)(rows * cols), -amp, amp);
            host_quantize(hm, t, w.data(), rows, cols);
            return;
        }
        /* benchmark weights: random bits of the format directly (fast, never zero) */
        size_t n = (size_t)(rows * cols);
        memset(&hm.q, 0, sizeof hm.q);
        size_t bytes = t == AMPR__Q_F16 ? 2 * n : t == AMPR__Q_INT8 ? n : n / 2;
        hm.data.resize(bytes);
        for (size_t i = 0; i < bytes; i += 8) {
            uint64_t r = rnd_u64();
            if (t == AMPR__Q_F16) r = (r & 0x83ff83ff83ff83ffull) | 0x2000200020002000ull;
            memcpy(hm.data.data() + i, &r, std::min((size_t)8, bytes - i));
        }
        size_t ns = t == AMPR__Q_INT8 ? (size_t)rows : t == AMPR__Q_NF4 ? (n + 63) / 64 : 0;
        hm.scales.resize(ns);
        for (auto &s : hm.scales) s = t == AMPR__Q_INT8 ? amp / 127.0f : amp;
        hm.q.type = t;
        hm.q.rows = rows;
        hm.q.cols = cols;
        hm.q.data = hm.data.data();
        hm.q.data_bytes = bytes;
        hm.q.scales = ns ? hm.scales.data() : NULL;
        hm.q.n_scales = ns;
    };
    mk(m.embd, hp.vocab_size, hp.dim, 1.0f);
    mk(m.output, hp.vocab_size, hp.dim, 0.1f);
    m.layers.resize(4 * (size_t)hp.n_layers);
    for (int32_t l = 0; l < hp.n_layers; l++) {
        mk(m.layers[4 * (size_t)l + 0], q + 2 * kv, hp.dim, 0.1f);
        mk(m.layers[4 * (size_t)l + 1], hp.dim, q, 0.1f);
        mk(m.layers[4 * (size_t)l + 2], 2 * (int64_t)hp.hidden_dim, hp.dim, 0.1f);
        mk(m.layers[4 * (size_t)l + 3], hp.dim, hp.hidden_dim, 0.1f);
    }
    for (auto &L : m.layers) m.qlayers.push_back(L.q);
    m.norms = rnd_vec((2 * (size_t)hp.n_layers + 1) * hp.dim, 0.8f, 1.2f);
    int32_t half = hp.head_dim / 2;
    m.cs.resize((size_t)hp.context_length * half);
    m.sn.resize(m.cs.size());
    for (int32_t p = 0; p < hp.context_length; p++)
        for (int32_t k = 0; k < half; k++) {
            double th = p * pow(10000.0, -2.0 * k / hp.head_dim);
            m.cs[(size_t)p * half + k] = (float)cos(th);
            m.sn[(size_t)p * half + k] = (float)sin(th);
        }
}

/* CPU forward of one token at pos (KV kept in fp32 host arrays [L][ctx][kv]);
 * returns logits. Mirrors lib/forward/forward.c. */
static std::vector<float> host_step(const HostModel &m, std::vector<float> &K, std::vector<float> &V,
                                    int32_t tok, int32_t pos) {
    const ampr__cuda_hparams &hp = m.hp;
    int32_t dim = hp.dim, hd = hp.head_dim, half = hd / 2, hid = hp.hidden_dim;
    int32_t q_dim = hp.n_heads * hd, kv_dim = hp.n_kv_heads * hd;
    std::vector<float> x(m.embd.deq.begin() + (size_t)tok * dim, m.embd.deq.begin() + (size_t)(tok + 1) * dim);
    std::vector<float> xb((size_t)dim), qkv((size_t)(q_dim + 2 * kv_dim)), att((size_t)q_dim),
        hb((size_t)2 * hid), hb2((size_t)hid);
    std::vector<double> tmp;
    auto norm = [&](const float *w) {
        double ss = 0;
        for (int32_t j = 0; j < dim; j++) ss += (double)x[(size_t)j] * x[(size_t)j];
        float inv = (float)(1.0 / sqrt(ss / dim + hp.norm_eps));
        for (int32_t j = 0; j < dim; j++) xb[(size_t)j] = w[j] * (inv * x[(size_t)j]);
    };
    auto mm = [&](const HostMat &w, const float *in, float *out) {
        tmp.assign((size_t)w.q.rows, 0.0);
        host_matmul(w, in, 1, tmp.data(), w.q.rows);
        for (int64_t r = 0; r < w.q.rows; r++) out[r] = (float)tmp[(size_t)r];
    };
    auto rope = [&](float *v, int32_t nh) {
        for (int32_t h = 0; h < nh; h++)
            for (int32_t k = 0; k < half; k++) {
                int32_t a = hp.rope_interleaved ? 2 * k : k, b = hp.rope_interleaved ? 2 * k + 1 : k + half;
                float c0 = m.cs[(size_t)pos * half + k], s0 = m.sn[(size_t)pos * half + k];
                float x0 = v[h * hd + a], x1 = v[h * hd + b];
                v[h * hd + a] = x0 * c0 - x1 * s0;
                v[h * hd + b] = x0 * s0 + x1 * c0;
            }
    };
    size_t ctx = (size_t)hp.context_length;
    for (int32_t l = 0; l < hp.n_layers; l++) {
        const HostMat *L = &m.layers[4 * (size_t)l];
        norm(m.norms.data() + (size_t)l * dim);
        mm(L[0], xb.data(), qkv.data());
        rope(qkv.data(), hp.n_heads);
        rope(qkv.data() + q_dim, hp.n_kv_heads);
        float *Kl = K.data() + (size_t)l * ctx * kv_dim, *Vl = V.data() + (size_t)l * ctx * kv_dim;
        memcpy(Kl + (size_t)pos * kv_dim, qkv.data() + q_dim, (size_t)kv_dim * 4);
        memcpy(Vl + (size_t)pos * kv_dim, qkv.data() + q_dim + kv_dim, (size_t)kv_dim * 4);
        for (int32_t h = 0; h < hp.n_heads; h++) {
            int32_t g = h / (hp.n_heads / hp.n_kv_heads);
            std::vector<double> sc((size_t)pos + 1);
            double mx = -1e300, sum = 0;
            for (int32_t t = 0; t <= pos; t++) {
                double s = 0;
                for (int32_t d = 0; d < hd; d++) s += (double)qkv[(size_t)(h * hd + d)] * Kl[(size_t)t * kv_dim + g * hd + d];
                sc[(size_t)t] = s / sqrt((double)hd);
                mx = std::max(mx, sc[(size_t)t]);
            }
            for (auto &s : sc) sum += (s = exp(s - mx));
            for (int32_t d = 0; d < hd; d++) {
                double o = 0;
                for (int32_t t = 0; t <= pos; t++) o += sc[(size_t)t] * Vl[(size_t)t * kv_dim + g * hd + d];
                att[(size_t)(h * hd + d)] = (float)(o / sum);
            }
        }
        mm(L[1], att.data(), xb.data());
        for (int32_t j = 0; j < dim; j++) x[(size_t)j] += xb[(size_t)j];
        norm(m.norms.data() + ((size_t)hp.n_layers + l) * dim);
        mm(L[2], xb.data(), hb.data());
        for (int32_t e = 0; e < hid; e++) {
            float g = hb[(size_t)e];
            hb2[(size_t)e] = g * (1.0f / (1.0f + expf(-g))) * hb[(size_t)(hid + e)];
        }
        mm(L[3], hb2.data(), xb.data());
        for (int32_t j = 0; j < dim; j++) x[(size_t)j] += xb[(size_t)j];
    }
    norm(m.norms.data() + 2 * (size_t)hp.n_layers * dim);
    std::vector<float> logits((size_t)hp.vocab_size);
    mm(m.output, xb.data(), logits.data());
    return logits;
}

static void check_forward(void) {
    char name[128];
    ampr__cuda_hparams hp = {2, 128, 256, 4, 2, 32, 512, 64, 1e-5f, 0};
    for (ampr__qtype t : k_fmts)
        for (int il = 0; il < 2; il++) {
            hp.rope_interleaved = il;
            HostModel hm;
            model_make(hm, t, hp, false);
            ampr__cuda_model *dm = NULL;
            OK(ampr__cuda_model_new(g_c, &hp, &hm.embd.q, &hm.output.q, hm.qlayers.data(),
                                    hm.norms.data(), hm.cs.data(), hm.sn.data(), &dm, &g_err));
            ampr__cuda_seq *s = NULL;
            int32_t bs = 16, n_pages = 6;
            OK(ampr__cuda_seq_new(dm, 16, bs, n_pages, AMPR__CUDA_F32, &s, &g_err));
            std::vector<int32_t> blocks = {4, 0, 5, 2};
            OK(ampr__cuda_seq_set_blocks(s, blocks.data(), 4, &g_err));
            std::vector<float> K((size_t)hp.n_layers * hp.context_length * 64, 0.0f), V(K.size(), 0.0f);
            /* prefill 12 tokens with all logits */
            int32_t np = 12;
            std::vector<int32_t> toks((size_t)np);
            for (auto &x : toks) x = (int32_t)(rnd_u64() % (uint64_t)hp.vocab_size);
            OK(ampr__cuda_forward(s, toks.data(), np, 0, 1, &g_err));
            auto got = dev_get<float>(ampr__cuda_seq_logits(s), (size_t)np * hp.vocab_size);
            std::vector<double> ref;
            for (int32_t i = 0; i < np; i++) {
                auto lg = host_step(hm, K, V, toks[(size_t)i], i);
                ref.insert(ref.end(), lg.begin(), lg.end());
            }
            snprintf(name, sizeof name, "forward %s rope %s prefill 12 (all logits)", fmt_name(t),
                     il ? "interleaved" : "half-split");
            report(name, got.data(), ref.data(), ref.size(), 2e-2);
            /* greedy decode: eager step, then graph steps that feed themselves */
            int32_t am = dev_get<int32_t>(ampr__cuda_seq_argmax(s), 1)[0];
            OK(ampr__cuda_decode_set(s, am, np, &g_err));
            std::vector<float> gl;
            std::vector<double> rl;
            int32_t tok = am, agree = 0, steps = 6;
            for (int32_t k = 0; k < steps; k++) {
                OK(ampr__cuda_decode(s, 1, k > 0, &g_err));
                auto g = dev_get<float>(ampr__cuda_seq_logits(s), (size_t)hp.vocab_size);
                auto r = host_step(hm, K, V, tok, np + k);
                gl.insert(gl.end(), g.begin(), g.end());
                rl.insert(rl.end(), r.begin(), r.end());
                int32_t next = dev_get<int32_t>(ampr__cuda_seq_argmax(s), 1)[0];
                int32_t rnext = (int32_t)(std::max_element(r.begin(), r.end()) - r.begin());
                agree += next == rnext;
                tok = next; /* follow the device's choice so both see the same tokens */
            }
            snprintf(name, sizeof name, "forward %s rope %s decode x6 (graph, greedy)",
                     fmt_name(t), il ? "interleaved" : "half-split");
            report(name, gl.data(), rl.data(), rl.size(), 1e-2);
            printf("%-44s greedy argmax agrees %d/%d\n", "", agree, steps);
            ampr__cuda_seq_free(s);
            ampr__cuda_model_free(dm);
        }
}

/* The engine's paged passes with CUDA graphs against the same passes run
 * eagerly: a model big enough for the cuBLASLt, INT8-IMMA and NF4-dequant
 * paths (n > 8 tokens, matrices of 1024+), two work/KV sets fed the same
 * tokens. Decode batches of n in {1, 4, 9, 16, 32} sequences (row map) and
 * check windows of n tokens of one sequence (no row map) come round three
 * times each (eager, capture, replay), then once more after the context's
 * generation changed (graphs dropped and recaptured). Logits must agree bit for
 * bit, and graphs must have been used. */
static void check_paged_graphs(void) {
    ampr__cuda_hparams hp = {2, 1024, 2048, 16, 4, 64, 1024, 256, 1e-5f, 0};
    const int32_t S = 33, bs = 16, P = hp.context_length / bs; /* seq 32: the windows' */
    const int32_t ns[5] = {1, 4, 9, 16, 32};
    char name[128];
    for (ampr__qtype t : k_fmts) {
        HostModel hm;
        model_make(hm, t, hp, false);
        ampr__cuda_model *dm = NULL;
        OK(ampr__cuda_model_new(g_c, &hp, &hm.embd.q, &hm.output.q, hm.qlayers.data(),
                                hm.norms.data(), hm.cs.data(), hm.sn.data(), &dm, &g_err));
        ampr__cuda_kvpool *kv[2] = {NULL, NULL};
        ampr__cuda_work *w[2] = {NULL, NULL};
        for (int k = 0; k < 2; k++) {
            OK(ampr__cuda_kvpool_new(g_c, hp.n_layers, hp.n_kv_heads * hp.head_dim, bs, S * P,
                                     AMPR__CUDA_F16, &kv[k], &g_err));
            OK(ampr__cuda_work_new(g_c, &hp, &w[k], &g_err));
            ampr__cuda_work_set_graphs(w[k], k == 1);
        }
        std::vector<int32_t> len((size_t)S, 0), blocks;
        long diff = 0, total = 0, draws = 0, draws_decided = 0, nuclei = 0, nuclei_decided = 0;
        /* one pass on both sets: rows i < n, of sequence seq[i] */
        auto pass = [&](const std::vector<int32_t> &seq, int32_t n_logits) {
            int32_t n = (int32_t)seq.size();
            std::vector<int32_t> toks((size_t)n), pos((size_t)n), rs((size_t)n);
            bool window = n > 1 && seq[0] == seq[1];
            int32_t n_seqs = window ? 1 : n;
            blocks.assign((size_t)n_seqs * P, 0);
            for (int32_t i = 0; i < n; i++) {
                toks[(size_t)i] = (int32_t)(rnd_u64() % (uint64_t)hp.vocab_size);
                pos[(size_t)i] = len[(size_t)seq[(size_t)i]]++;
                rs[(size_t)i] = window ? 0 : i;
            }
            for (int32_t q = 0; q < n_seqs; q++)
                for (int32_t b = 0; b < P; b++) blocks[(size_t)q * P + b] = seq[(size_t)q] * P + b;
            std::vector<float> lg[2];
            /* the graph side asks, row by row, for the row, its argmax or
             * its candidate list (sampler.h), every other argmax / list
             * row under a repetition penalty of the eager row's 8 best ids
             * and 8 others, every fourth row its entropy: rows not asked
             * for must stay untouched, rows that come back as they were
             * made, argmaxes and lists equal the host's of the (penalized)
             * eager rows (a list that cannot decide brings the row
             * instead), entropies the host's; and through a device ring
             * (the monitor's, sampler.h), every fourth row kept in its slot,
             * every fourth compared (KL) with its slot's random row; every
             * fifth argmax / list row a temperature-only draw instead, whose
             * token must be the host's walk's; some lists a nucleus without
             * top-k (its verdict and the row's mass the host's) */
            std::vector<ampr__row_want> want((size_t)n_logits);
            std::vector<float> cv((size_t)n_logits * AMPR__CANDS_MAX);
            std::vector<int32_t> ci((size_t)n_logits * AMPR__CANDS_MAX);
            std::vector<int32_t> pi((size_t)n_logits * 16);
            size_t V0 = (size_t)hp.vocab_size;
            std::vector<float> qrows = rnd_vec((size_t)n_logits * V0, -6, 6);
            ampr__ring ring = {n_logits, NULL, dev_put(qrows.data(), qrows.size() * 4)};
            for (int32_t i = 0; i < n_logits; i++) {
                ampr__row_want &wi = want[(size_t)i];
                memset(&wi, 0, sizeof wi);
                wi.what = i % 3 == 0 ? AMPR__WANT_ROW : i % 3 == 1 ? AMPR__WANT_ARGMAX : AMPR__WANT_CANDS;
                wi.temperature = 0.8f;
                wi.top_k = 40;
                wi.m = 40 + AMPR__CAND_SLACK;
                wi.cand_vals = &cv[(size_t)i * AMPR__CANDS_MAX];
                wi.cand_ids = &ci[(size_t)i * AMPR__CANDS_MAX];
                wi.argmax = -1;
                if (wi.what == AMPR__WANT_CANDS && i % 7 == 5) { /* a nucleus */
                    wi.top_k = 0;
                    wi.top_p = i % 2 ? 0.9f : 0.5f;
                    wi.m = AMPR__MIN(AMPR__CANDS_MAX, hp.vocab_size);
                }
                if (i % 5 == 4 && wi.what != AMPR__WANT_ROW) { /* a temperature-only draw */
                    wi.what = AMPR__WANT_DRAW;
                    wi.temperature = 1.0f;
                    wi.u = (float)((i * 2654435761u) >> 8 & 0xffffff) / 16777216.0f;
                }
                wi.stats = i % 4 == 3;
                wi.entropy = -1.0f;
                if (i % 4 == 1) {
                    wi.keep = &ring;
                    wi.keep_slot = i;
                }
                if (i % 4 == 2) {
                    wi.kl_ring = &ring;
                    wi.kl_slot = i;
                }
            }
            for (int k = 0; k < 2; k++) {
                if (k == 1) /* the penalized ids, from the eager rows */
                    for (int32_t i = 0; i < n_logits; i++) {
                        ampr__row_want &wi = want[(size_t)i];
                        if (wi.what == AMPR__WANT_ROW || (i / 3) % 2) continue;
                        /* 1.3 lowers the 8 best, 0.7 raises the 2nd to 9th:
                         * either moves the argmax */
                        float top9[9];
                        int32_t id9[9];
                        int up = (i / 6) % 2;
                        (void)ampr__topk_cands(&lg[0][(size_t)i * hp.vocab_size], hp.vocab_size, 9, 1.0f, 1,
                                               top9, id9);
                        for (int32_t e = 0; e < 8; e++) pi[(size_t)i * 16 + e] = id9[e + up];
                        for (int32_t e = 8; e < 16; e++)
                            pi[(size_t)i * 16 + e] = (int32_t)((e * 7919 + i * 31) % hp.vocab_size);
                        std::sort(&pi[(size_t)i * 16], &pi[(size_t)i * 16] + 16);
                        wi.n_pen = (int32_t)(std::unique(&pi[(size_t)i * 16], &pi[(size_t)i * 16] + 16) -
                                             &pi[(size_t)i * 16]);
                        wi.pen_ids = &pi[(size_t)i * 16];
                        wi.penalty = (i / 6) % 2 ? 0.7f : 1.3f;
                        /* a list no temperature can decide (x / inf ties at 0):
                         * the row comes, and must come as it was made */
                        if (wi.what == AMPR__WANT_CANDS && i % 4 == 2) wi.temperature = INFINITY;
                    }
                lg[k].assign((size_t)n_logits * hp.vocab_size, 0.0f);
                OK(ampr__cuda_forward_paged(&dm, &kv[k], &w[k], 1, NULL, toks.data(), pos.data(),
                                            window || n == 1 ? NULL : rs.data(), n, blocks.data(),
                                            n_seqs, P, n_logits, lg[k].data(), k ? want.data() : NULL,
                                            &g_err));
            }
            size_t V = (size_t)hp.vocab_size;
            std::vector<float> pa(V);
            for (int32_t i = 0; i < n_logits; i++) {
                const ampr__row_want &wi = want[(size_t)i];
                const float *raw = &lg[0][(size_t)i * V], *b = &lg[1][(size_t)i * V];
                memcpy(pa.data(), raw, V * 4);
                for (int32_t e = 0; e < wi.n_pen; e++) pa[(size_t)wi.pen_ids[e]] = ampr__penalize(pa[(size_t)wi.pen_ids[e]], wi.penalty);
                const float *a = pa.data();
                float hv[AMPR__CANDS_MAX];
                int32_t hi[AMPR__CANDS_MAX];
                std::vector<float> scr(V);
                double hm = 0;
                int nucleus = wi.what == AMPR__WANT_CANDS && wi.top_k == 0;
                int exact = nucleus ? ampr__nucleus_cands(a, (int32_t)V, wi.m, wi.temperature, wi.top_p, hv, hi, &hm,
                                                          scr.data())
                                    : ampr__topk_cands(a, (int32_t)V, wi.m, wi.temperature, wi.top_k, hv, hi);
                if (nucleus) (void)ampr__topk_cands(a, (int32_t)V, wi.m, wi.temperature, 1, hv, hi);
                nuclei += nucleus;
                nuclei_decided += nucleus && wi.n_cands > 0;
                if (nucleus && wi.n_cands > 0) diff += !(fabs(wi.mass - hm) <= 1e-12 * hm);
                bool row = ampr__row_came(&wi);
                if (wi.what == AMPR__WANT_DRAW) { /* the host's walk decides the same (or not at all) */
                    std::vector<float> tmp(V);
                    int32_t h = ampr__sample_walk(a, (int32_t)V, wi.temperature, wi.u, tmp.data());
                    diff += h >= 0 && wi.drawn >= 0 && h != wi.drawn;
                    draws++;
                    draws_decided += wi.drawn >= 0;
                }
                size_t best = 0;
                for (size_t e = 0; e < V; e++) {
                    if (a[e] > a[best]) best = e;
                    diff += row ? memcmp(&raw[e], &b[e], 4) != 0 : b[e] != 0.0f;
                }
                if (wi.stats) {
                    ampr__logit_stats st;
                    ampr__logit_stats_scalar(raw, (int32_t)V, &st);
                    double h = log(st.z) - st.s / st.z;
                    diff += !(fabs((double)wi.entropy - h) <= 1e-4 * (1 + fabs(h)));
                }
                if (wi.kl_ring) {
                    double kl = ampr__kl_scalar(raw, &qrows[(size_t)i * V], (int32_t)V);
                    diff += !(fabs(wi.kl - kl) <= 1e-4 * (1 + kl));
                }
                if (wi.keep) {
                    auto kept = dev_get<float>((float *)ring.dev + (size_t)i * V, V);
                    diff += memcmp(kept.data(), raw, V * 4) != 0;
                }
                diff += wi.argmax != (int32_t)best;
                if (wi.what == AMPR__WANT_CANDS) {
                    long ties = 0; /* over 1024 at the m-th: the device gives up (0) */
                    for (size_t e = 0; e < V; e++) ties += a[e] == hv[wi.m - 1];
                    diff += wi.n_cands != (exact && ties <= 1024 ? wi.m : 0);
                    for (int32_t e = 0; e < wi.n_cands; e++)
                        diff += wi.cand_ids[e] != hi[e] || memcmp(&wi.cand_vals[e], &hv[e], 4) != 0;
                }
            }
            total += (long)lg[0].size() + 2 * n_logits;
            ampr__cuda_free(g_c, ring.dev);
        };
        for (int32_t q = 0; q < S; q++) pass(std::vector<int32_t>(6, q), 1); /* prompts */
        for (int round = 0; round < 4; round++) {
            if (round == 3) /* same value, new generation: every graph must be recaptured */
                ampr__cuda_set_gemv_max(g_c, 8); /* the default */
            for (int32_t n : ns) {
                std::vector<int32_t> batch((size_t)n), window((size_t)n, S - 1);
                for (int32_t i = 0; i < n; i++) batch[(size_t)i] = i;
                pass(batch, n);
                pass(window, n);
            }
        }
        int live = ampr__cuda_work_graphs_live(w[1]);
        snprintf(name, sizeof name, "paged %s: graphs vs eager, rows / argmax / lists (%d graphs live)",
                 fmt_name(t), live);
        /* the walks: most must decide (1e-9 margins), and some were asked */
        report_exact(name, diff + (live == 0 ? 1 : 0) + (draws == 0 || draws_decided * 10 < draws * 9) + (nuclei == 0),
                     total);
        printf("  (%ld of %ld nucleus lists decided)\n", nuclei_decided, nuclei);
        for (int k = 0; k < 2; k++) {
            ampr__cuda_work_free(w[k]);
            ampr__cuda_kvpool_free(kv[k]);
        }
        ampr__cuda_model_free(dm);
    }
}

/* ---- benchmarks ---------------------------------------------------------------------------- */

static cudaStream_t g_s;

template <typename F> static double time_ms(F f, int reps) {
    cudaEvent_t a, b;
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
    f(); /* warm-up */
    OK(ampr__cuda_sync(g_c, &g_err));
    std::vector<float> ts;
    for (int r = 0; r < reps; r++) {
        CU(cudaEventRecord(a, g_s));
        f();
        CU(cudaEventRecord(b, g_s));
        CU(cudaEventSynchronize(b));
        float ms = 0;
        CU(cudaEventElapsedTime(&ms, a, b));
        ts.push_back(ms);
    }
    OK(ampr__cuda_sync(g_c, &g_err));
    CU(cudaEventDestroy(a));
    CU(cudaEventDestroy(b));
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

static double bench_copy_gbs(void) {
    size_t bytes = (size_t)1 << 30;
    void *a = dev_put(NULL, bytes), *b = dev_put(NULL, bytes);
    double ms = time_ms([&] { CU(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_s)); }, 10);
    ampr__cuda_free(g_c, a);
    ampr__cuda_free(g_c, b);
    return 2.0 * (double)bytes / (ms * 1e-3) / 1e9; /* read + write */
}

/* cuBLASLt alone on an m x n x k product in the library's layout (A = W^T,
 * "TN"): fp16 x fp16 -> fp32 with fp32 accumulation, or int8 x int8 ->
 * int32; its heuristic's first algorithm, median of 10. TFLOP/s (TOP/s for
 * int8), 0 if cuBLASLt has no algorithm. 8192^3 fp16 is the card's peak to
 * compare with; a layer's shapes give what the library's prefill GEMMs can
 * reach at most. */
static double lt_rate(int64_t m, int64_t n, int64_t k, bool i8) {
    size_t ea = i8 ? 1 : 2, ec = 4;
    void *A = dev_put(NULL, (size_t)(m * k) * ea), *B = dev_put(NULL, (size_t)(k * n) * ea);
    void *C = dev_put(NULL, (size_t)(m * n) * ec), *ws = dev_put(NULL, (size_t)32 << 20);
    std::vector<uint8_t> h((size_t)std::max(m * k, k * n) * ea);
    for (size_t e = 0; e < h.size(); e += ea) {
        if (i8) h[e] = (uint8_t)(rnd_u64() % 255 + 129);
        else {
            __half v = __float2half_rn(rnd_f(-1, 1));
            memcpy(&h[e], &v, 2);
        }
    }
    OK(ampr__cuda_upload(g_c, A, h.data(), (size_t)(m * k) * ea, &g_err));
    OK(ampr__cuda_upload(g_c, B, h.data(), (size_t)(k * n) * ea, &g_err));
    cudaDataType_t ab = i8 ? CUDA_R_8I : CUDA_R_16F, cd = i8 ? CUDA_R_32I : CUDA_R_32F;
    cublasComputeType_t ct = i8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulPreference_t pref;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    size_t wsb = (size_t)32 << 20;
    int found = 0;
    cublasLtMatmulHeuristicResult_t res;
    bool ok = cublasLtCreate(&lt) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescCreate(&op, ct, cd) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&la, ab, k, m, k) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&lb, ab, k, n, k) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&lc, cd, m, n, m) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &res, &found) == CUBLAS_STATUS_SUCCESS &&
              found > 0;
    double rate = 0;
    if (ok) {
        float fone = 1, fzero = 0;
        int32_t ione = 1, izero = 0;
        const void *alpha = i8 ? (const void *)&ione : (const void *)&fone;
        const void *beta = i8 ? (const void *)&izero : (const void *)&fzero;
        bool run_ok = true;
        double ms = time_ms([&] {
            if (cublasLtMatmul(lt, op, alpha, A, la, B, lb, beta, C, lc, C, lc, &res.algo, ws, wsb, g_s) != CUBLAS_STATUS_SUCCESS)
                run_ok = false;
        }, 10);
        if (run_ok) rate = 2.0 * (double)m * n * k / (ms * 1e-3) / 1e12;
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(op);
        cublasLtDestroy(lt);
    }
    void *bufs[] = {A, B, C, ws};
    for (void *p : bufs) ampr__cuda_free(g_c, p);
    return rate;
}

static double bench_lt_peak(void) {
    double r = lt_rate(8192, 8192, 8192, false);
    if (r == 0) printf("cuBLASLt peak measurement failed\n");
    return r;
}

/* Where a decode step and a prefill spend their time: each op of one layer
 * timed alone (median of 20 runs, events) at the bench shape, for decode
 * (n = 1, attention at position 512) and prefill (n = 512, positions
 * 0..511), then summed over the layers. The sum against the whole step's
 * time shows what the gaps between kernels cost. */
static int g_op_reps = 20; /* check --ops (for a profiler): 1 */

static void bench_ops(ampr__qtype t, HostModel &hm, double copy, double peak) {
    const ampr__cuda_hparams &hp = hm.hp;
    int32_t dim = hp.dim, hd = hp.head_dim, hid = hp.hidden_dim;
    int32_t q_dim = hp.n_heads * hd, kv_dim = hp.n_kv_heads * hd, qkv_dim = q_dim + 2 * kv_dim;
    int32_t np = 512, bs = 16, pages = 40; /* 640 positions */
    ampr__cuda_mat mats[5];
    const HostMat *src[5] = {&hm.layers[0], &hm.layers[1], &hm.layers[2], &hm.layers[3], &hm.output};
    const char *mname[5] = {"wqkv", "wo", "w_gu", "w_down", "output"};
    for (int k = 0; k < 5; k++) OK(ampr__cuda_mat_upload(g_c, &src[k]->q, &mats[k], &g_err));
    size_t big = (size_t)np * (size_t)std::max(2 * hid, std::max(qkv_dim, hp.vocab_size));
    auto xin = rnd_vec(big, -1, 1);
    float *dx = (float *)dev_put(xin.data(), big * 4), *dy = (float *)dev_put(NULL, big * 4);
    float *dz = (float *)dev_put(xin.data(), big * 4);
    std::vector<int32_t> blocks((size_t)pages), pos((size_t)np);
    for (int32_t i = 0; i < pages; i++) blocks[(size_t)i] = i;
    int32_t *dblk = (int32_t *)dev_put(blocks.data(), blocks.size() * 4);
    size_t kv_elems = (size_t)pages * bs * kv_dim; /* one layer */
    auto kvr = rnd_vec(kv_elems, -1, 1);
    std::vector<__half> kvh(kv_elems);
    for (size_t e = 0; e < kv_elems; e++) kvh[e] = __float2half_rn(kvr[e]);
    void *dk = dev_put(kvh.data(), kv_elems * 2), *dv = dev_put(kvh.data(), kv_elems * 2);
    ampr__cuda_kv_view kv = {dk, dv, AMPR__CUDA_F16, 1, bs, kv_dim, 0, dblk, NULL, 0};
    float *dcs = (float *)dev_put(hm.cs.data(), hm.cs.size() * 4);
    float *dsn = (float *)dev_put(hm.sn.data(), hm.sn.size() * 4);
    float *dw = (float *)dev_put(hm.norms.data(), (size_t)dim * 4);
    printf("  %s, one layer's ops alone (us; x %d layers in the totals):\n", fmt_name(t), hp.n_layers);
    printf("  %-10s %10s %9s %12s %9s %14s\n", "op", "decode us", "GB/s", "prefill us", "TFLOP/s",
           "cuBLASLt alone");
    double us_ph[2][9], total[2]; /* [decode, prefill][op] */
    for (int ph = 0; ph < 2; ph++) {
        int32_t n = ph ? np : 1;
        for (int32_t i = 0; i < n; i++) pos[(size_t)i] = ph ? i : np;
        int32_t *dpos = (int32_t *)dev_put(pos.data(), (size_t)n * 4);
        double *us = us_ph[ph];
        for (int k = 0; k < 5; k++) {
            int32_t nn = k == 4 ? 1 : n; /* logits of the last token only */
            us[k] = 1e3 * time_ms([&] { OK(ampr__cuda_matmul(g_c, &mats[k], dx, nn, dy, mats[k].rows, &g_err)); }, g_op_reps);
        }
        us[5] = 1e3 * time_ms([&] { OK(ampr__cuda_add_rmsnorm(g_c, dz, dx, dw, dy, n, dim, 1e-5f, &g_err)); }, g_op_reps);
        us[6] = 1e3 * time_ms([&] {
            OK(ampr__cuda_rope_kv(g_c, &kv, dz, qkv_dim, n, hp.n_heads, hp.n_kv_heads, hd, dpos, dcs, dsn, 0, &g_err));
        }, g_op_reps);
        us[7] = 1e3 * time_ms([&] {
            OK(ampr__cuda_attention(g_c, &kv, dx, qkv_dim, n, dpos, hp.n_heads, hp.n_kv_heads, hd, dy, &g_err));
        }, g_op_reps);
        us[8] = 1e3 * time_ms([&] { OK(ampr__cuda_swiglu(g_c, dx, dy, n, hid, &g_err)); }, g_op_reps);
        ampr__cuda_free(g_c, dpos);
        /* per layer: 4 matmuls, 2 norms, rope_kv, attention, swiglu */
        double layer = us[0] + us[1] + us[2] + us[3] + 2 * us[5] + us[6] + us[7] + us[8];
        total[ph] = layer * hp.n_layers + us[4] + us[5];
    }
    const double *dec_us = us_ph[0], *us = us_ph[1];
    const char *oname[4] = {"add+norm", "rope_kv", "attention", "swiglu"};
    for (int k = 0; k < 9; k++) {
        double gbs = k < 5 ? (double)ampr__cuda_mat_bytes(&mats[k]) / (dec_us[k] * 1e-6) / 1e9 : 0;
        double fl = k < 5 ? 2.0 * mats[k].rows * mats[k].cols * (k == 4 ? 1 : np) / (us[k] * 1e-6) / 1e12 : 0;
        /* the GEMM the prefill runs (NF4: fp16 after dequantizing), alone */
        double alone = k < 4 ? lt_rate(mats[k].rows, np, mats[k].cols, t == AMPR__Q_INT8) : 0;
        if (k < 4)
            printf("  %-10s %10.1f %9.0f %12.1f %9.1f %8.1f (%3.0f%%)\n", mname[k], dec_us[k], gbs,
                   us[k], fl, alone, alone > 0 ? 100 * fl / alone : 0.0);
        else if (k < 5)
            printf("  %-10s %10.1f %9.0f %12.1f %9.1f\n", mname[k], dec_us[k], gbs, us[k], fl);
        else
            printf("  %-10s %10.1f %9s %12.1f %9s\n", oname[k - 5], dec_us[k], "", us[k], "");
    }
    printf("  sum of ops: decode %.3f ms (copy bw %.0f GB/s), prefill %.3f ms (peak %.0f TFLOP/s)\n",
           total[0] / 1e3, copy, total[1] / 1e3, peak);
    if (t == AMPR__Q_F16) { /* the attention ops again with the other kernels */
        /* prefill at positions 0..511, decode at 512 as above */
        for (int32_t i = 0; i < np; i++) pos[(size_t)i] = i;
        auto att_us = [&](ampr__cuda_switch sw_id, int32_t n, int32_t p0) {
            pos[0] = p0;
            int32_t *dpos = (int32_t *)dev_put(pos.data(), (size_t)n * 4);
            SwitchScope sw(sw_id, flipped(sw_id));
            double u = 1e3 * time_ms([&] {
                OK(ampr__cuda_attention(g_c, &kv, dx, qkv_dim, n, dpos, hp.n_heads, hp.n_kv_heads, hd, dy, &g_err));
            }, g_op_reps);
            ampr__cuda_free(g_c, dpos);
            return u;
        };
        int mma = flipped(AMPR__CUDA_ATT_MMA), dec = flipped(AMPR__CUDA_ATT_DEC);
        printf("  prefill attention on %s: %.1f us\n", mma ? "tensor cores" : "fp32 tiles",
               att_us(AMPR__CUDA_ATT_MMA, np, 0));
        printf("  decode attention %s: %.1f us\n",
               dec ? "with 16-byte V loads, merged in the kernel" : "(default V loop, merge kernel)",
               att_us(AMPR__CUDA_ATT_DEC, 1, np));
    }
    { /* decode GEMVs again with the other prefetch setting */
        SwitchScope sw(AMPR__CUDA_PREFETCH, flipped(AMPR__CUDA_PREFETCH));
        printf("  GEMV, decode, %s AMPR_CUDA_PREFETCH:", sw.was ? "without" : "with");
        for (int k = 0; k < 5; k++) {
            double u = 1e3 * time_ms([&] { OK(ampr__cuda_matmul(g_c, &mats[k], dx, 1, dy, mats[k].rows, &g_err)); }, g_op_reps);
            printf(" %s %.1f us (%.0f GB/s)%s", mname[k], u,
                   (double)ampr__cuda_mat_bytes(&mats[k]) / (u * 1e-6) / 1e9, k < 4 ? "," : "\n");
        }
    }
    { /* wo and down at decode, then add+RMSNorm: two kernels, or one (AMPR_CUDA_FUSE_TAIL) */
        printf("  decode, matmul then add+norm vs in one kernel:");
        for (int k : {1, 3}) {
            double u[2];
            for (int f = 0; f < 2; f++) {
                SwitchScope sw(AMPR__CUDA_FUSE_TAIL, f);
                u[f] = 1e3 * time_ms([&] { OK(ampr__cuda_matmul_addnorm(g_c, &mats[k], dx, 1, dy, dz, dw, 1e-5f, &g_err)); }, g_op_reps);
            }
            printf(" %s %.1f vs %.1f us%s", mname[k], u[0], u[1], k == 1 ? "," : "\n");
        }
    }
    if (t == AMPR__Q_NF4) {
        /* each NF4 matmul of a decode batch's size on tensor cores and not:
         * up to 8 tokens the GEMVs (one token: AMPR__CUDA_NF4_MMA, more
         * AMPR__CUDA_NF4_BATCH), 16 and 32 the batch kernel against the
         * prefill path (the matrix dequantized to fp16, then cuBLASLt) */
        for (int32_t nb : {1, 4, 8, 16, 32}) {
            ampr__cuda_switch sw_id = nb == 1 ? AMPR__CUDA_NF4_MMA : AMPR__CUDA_NF4_BATCH;
            printf("  %d token(s), tensor cores vs %s:", nb, nb <= 8 ? "fp32 GEMV" : "dequantize + cuBLASLt");
            for (int k = 0; k < 5; k++) {
                double u[2];
                for (int mma = 0; mma < 2; mma++) {
                    SwitchScope on(sw_id, mma);
                    u[mma] = 1e3 * time_ms([&] { OK(ampr__cuda_matmul(g_c, &mats[k], dx, nb, dy, mats[k].rows, &g_err)); }, g_op_reps);
                }
                printf(" %s %.1f vs %.1f us (%.0f GB/s)%s", mname[k], u[1], u[0],
                       (double)ampr__cuda_mat_bytes(&mats[k]) / (u[1] * 1e-6) / 1e9, k < 4 ? "," : "\n");
            }
        }
    }
    for (auto &m : mats) ampr__cuda_mat_free(g_c, &m);
    void *bufs[] = {dx, dy, dz, dblk, dk, dv, dcs, dsn, dw};
    for (void *b : bufs) ampr__cuda_free(g_c, b);
}

static void bench(void) {
    /* AMPR_CHECK_BENCH_SMALL=1: a 2-layer model of dim 256 and no ceilings,
     * so that the benchmark's code runs on the CPU emulation (its numbers
     * mean nothing there) */
    bool small = getenv("AMPR_CHECK_BENCH_SMALL") != NULL;
    double copy = small ? 0 : bench_copy_gbs(), peak = small ? 0 : bench_lt_peak();
    printf("\nD2D copy bandwidth: %.0f GB/s (read+write)   cuBLASLt fp16 peak: %.0f TFLOP/s\n",
           copy, peak);
    ampr__cuda_hparams hp = {16, 2048, 8192, 32, 8, 64, 32000, 2048, 1e-5f, 0};
    if (small) hp = {2, 256, 512, 8, 2, 32, 1000, 2048, 1e-5f, 0};
    /* TinyLlama's real ffn is 5632: AMPR_CHECK_FFN=5632 measures that */
    const char *ffn = getenv("AMPR_CHECK_FFN");
    if (ffn) hp.hidden_dim = atoi(ffn);
    printf("shape: dim %d ffn %d layers %d heads %d kv heads %d vocab %d\n", hp.dim, hp.hidden_dim,
           hp.n_layers, hp.n_heads, hp.n_kv_heads, hp.vocab_size);
    printf("switches on as opened:");
    for (int i = 0; i < AMPR__CUDA_N_SWITCHES; i++)
        if (ampr__cuda_switch_on(g_c, (ampr__cuda_switch)i)) printf(" %s", ampr__cuda_switch_env((ampr__cuda_switch)i));
    printf("\n");
    printf("%-6s %14s %10s %9s %16s %10s %12s %12s\n", "tier", "weights MB", "gemv ms", "GB/s",
           "% of copy bw", "prefill ms", "TFLOP/s", "decode tok/s");
    /* 1: each tier's decode step and prefill as opened, before any switch is
     * flipped (a kernel that faults leaves the context unusable: the
     * baselines come first); 2: the switches side by side; 3: with
     * AMPR_CHECK_OPS, each op alone */
    const int32_t np = 512;
    const int steps = 64;
    bool ops = getenv("AMPR_CHECK_OPS") != NULL;
    struct TierBench {
        ampr__qtype t;
        HostModel hm; /* kept for 3 */
        ampr__cuda_model *dm;
        ampr__cuda_seq *s;
        std::vector<int32_t> toks;
        double pre_ms, dec_ms, step_bytes;
    };
    std::vector<std::unique_ptr<TierBench>> tiers;
    /* steps decode steps from position np (graph: replayed, captured again
     * after a switch changed), the position set back after */
    auto decode_ms = [&](ampr__cuda_seq *s, int graph) {
        OK(ampr__cuda_decode_set(s, 1, np, &g_err));
        double ms = time_ms([&] {
            for (int k = 0; k < steps; k++) OK(ampr__cuda_decode(s, 1, graph, &g_err));
        }, 1);
        OK(ampr__cuda_decode_set(s, 1, np, &g_err));
        return ms;
    };
    for (ampr__qtype t : k_fmts) {
        tiers.emplace_back(new TierBench());
        TierBench &tb = *tiers.back();
        tb.t = t;
        HostModel &hm = tb.hm;
        model_make(hm, t, hp, true);
        ampr__cuda_model *dm = NULL;
        OK(ampr__cuda_model_new(g_c, &hp, &hm.embd.q, &hm.output.q, hm.qlayers.data(),
                                hm.norms.data(), hm.cs.data(), hm.sn.data(), &dm, &g_err));
        if (!ops) hm = HostModel(); /* free host copies */
        ampr__cuda_seq *s = NULL;
        OK(ampr__cuda_seq_new(dm, np, 16, 2048 / 16, AMPR__CUDA_F16, &s, &g_err));
        tb.dm = dm;
        tb.s = s;
        std::vector<int32_t> blocks(128);
        for (int32_t i = 0; i < 128; i++) blocks[(size_t)i] = i;
        OK(ampr__cuda_seq_set_blocks(s, blocks.data(), 128, &g_err));
        uint64_t wbytes = ampr__cuda_model_bytes(dm);
        std::vector<int32_t> &toks = tb.toks;
        toks.resize((size_t)np);
        for (auto &x : toks) x = (int32_t)(rnd_u64() % (uint64_t)hp.vocab_size);
        double pre_ms = time_ms([&] { OK(ampr__cuda_forward(s, toks.data(), np, 0, 0, &g_err)); }, 3);
        double params = 0;
        int64_t q = (int64_t)hp.n_heads * hp.head_dim, kv = (int64_t)hp.n_kv_heads * hp.head_dim;
        params = (double)hp.n_layers * ((double)(q + 2 * kv) * hp.dim + (double)hp.dim * q +
                                        2.0 * hp.hidden_dim * hp.dim + (double)hp.dim * hp.hidden_dim) +
                 (double)hp.vocab_size * hp.dim / np; /* logits for the last token only */
        double tflops = 2.0 * params * np / (pre_ms * 1e-3) / 1e12;
        /* decode: graph replay, greedy, 64 steps */
        OK(ampr__cuda_decode_set(s, 1, np, &g_err));
        OK(ampr__cuda_decode(s, 1, 1, &g_err)); /* capture */
        OK(ampr__cuda_sync(g_c, &g_err));
        double dec_ms = decode_ms(s, 1), eager_ms = decode_ms(s, 0);
        /* per-step weight bytes (embedding reads one row only) */
        double step_bytes = (double)wbytes - (double)(t == AMPR__Q_F16 ? 2 : t == AMPR__Q_INT8 ? 1 : 0.5) *
                                                 hp.vocab_size * hp.dim;
        double gbs = step_bytes / (dec_ms / steps * 1e-3) / 1e9;
        printf("%-6s %14.0f %10.3f %9.0f %15.1f%% %10.2f %6.1f (%2.0f%%) %12.0f  (eager %.0f tok/s)\n",
               fmt_name(t), wbytes / 1e6, dec_ms / steps, gbs, 100 * gbs / copy, pre_ms, tflops,
               peak > 0 ? 100 * tflops / peak : 0.0, steps / (dec_ms * 1e-3),
               steps / (eager_ms * 1e-3));
        tb.pre_ms = pre_ms;
        tb.dec_ms = dec_ms;
        tb.step_bytes = step_bytes;
    }
    for (auto &tp : tiers) {
        ampr__qtype t = tp->t;
        ampr__cuda_seq *s = tp->s;
        const std::vector<int32_t> &toks = tp->toks;
        double pre_ms = tp->pre_ms, dec_ms = tp->dec_ms;
        const char *pdl = ampr__cuda_switch_on(g_c, AMPR__CUDA_PDL) ? "" : ", PDL off in both";
        /* the decode step with one switch flipped, side by side: "on" and
         * "off" whichever the default is */
        auto ab = [&](ampr__cuda_switch sw_id, const char *what) {
            SwitchScope sw(sw_id, flipped(sw_id));
            double alt_ms = decode_ms(s, 1);
            double on_ms = sw.was ? dec_ms : alt_ms, off_ms = sw.was ? alt_ms : dec_ms;
            printf("%s decode step, %s (%s=1%s, %s by default) %.3f ms vs off %.3f ms: %.2fx\n",
                   fmt_name(t), what, ampr__cuda_switch_env(sw_id), pdl, sw.was ? "on" : "off",
                   on_ms / steps, off_ms / steps, off_ms / on_ms);
        };
        { /* every decode switch that is off by default, on together */
            const ampr__cuda_switch off_sw[] = {AMPR__CUDA_FUSE, AMPR__CUDA_FUSE_TAIL, AMPR__CUDA_PREFETCH,
                                                AMPR__CUDA_NF4_RING, AMPR__CUDA_I8_ONCE};
            std::vector<std::unique_ptr<SwitchScope>> on;
            for (ampr__cuda_switch w : off_sw) on.emplace_back(new SwitchScope(w, 1));
            double alt_ms = decode_ms(s, 1);
            printf("%s decode step, with AMPR_CUDA_FUSE, _FUSE_TAIL, _PREFETCH, _NF4_RING and _I8_ONCE on%s %.3f ms "
                   "vs as opened %.3f ms: %.2fx\n", fmt_name(t), pdl, alt_ms / steps, dec_ms / steps,
                   dec_ms / alt_ms);
        }
        ab(AMPR__CUDA_ATT_DEC, "attention with 16-byte V loads and its merge in the kernel");
        ab(AMPR__CUDA_FUSE, "SwiGLU in the gate/up GEMV");
        ab(AMPR__CUDA_FUSE_TAIL, "add+RMSNorm and RoPE+KV done by the matmul before them");
        ab(AMPR__CUDA_PREFETCH, "weights prefetched into L2 before each GEMV's wait");
        if (t == AMPR__Q_NF4) ab(AMPR__CUDA_NF4_MMA, "GEMV on tensor cores");
        if (t == AMPR__Q_NF4) ab(AMPR__CUDA_NF4_RING, "tensor-core GEMV's weights through a cp.async ring");
        if (t == AMPR__Q_INT8) ab(AMPR__CUDA_I8_ONCE, "one-token GEMV's x quantized once, not by every block");
        if (t == AMPR__Q_INT8) { /* both with the first weights prefetched before the wait */
            SwitchScope pf(AMPR__CUDA_PREFETCH, 1);
            double ms[2];
            for (int on = 0; on < 2; on++) {
                SwitchScope sw(AMPR__CUDA_I8_ONCE, on);
                ms[on] = decode_ms(s, 1);
            }
            printf("int8 decode step, with AMPR_CUDA_PREFETCH=1: x quantized once (AMPR_CUDA_I8_ONCE=1%s) "
                   "%.3f ms vs off %.3f ms: %.2fx\n", pdl, ms[1] / steps, ms[0] / steps, ms[0] / ms[1]);
        }
        { /* where the step's time goes: each kind of kernel launched twice
           * and left out (ampr__cuda_set_probe), the difference with the
           * default's step is what that kernel costs inside the replayed
           * graph, its boundary with the next kernel included. Twice
           * understates a matmul whose weights fit in L2 (the second launch
           * finds them there); left out does not. The launches a step are
           * counted on one eager step. */
            const char *probes[] = {"gemv", "rmsnorm_kernel", "rope_kv_kernel", "attention", "swiglu_kernel",
                                    "add_kernel", "embed_kernel", "argmax_kernel"};
            for (int times : {2, 0}) {
                printf("%s decode step %.3f ms; each kernel's cost in it (%s):", fmt_name(t), dec_ms / steps,
                       times ? "launched twice, less the step" : "the step less the step without it");
                double sum_us = 0;
                for (const char *pr : probes) {
                    ampr__cuda_set_probe(g_c, pr, times);
                    OK(ampr__cuda_decode_set(s, 1, np, &g_err));
                    OK(ampr__cuda_decode(s, 1, 0, &g_err));
                    OK(ampr__cuda_sync(g_c, &g_err));
                    unsigned long k = ampr__cuda_set_probe(g_c, pr, times); /* the count; probing goes on */
                    double ms = decode_ms(s, 1);
                    double us = 1e3 * (times ? ms - dec_ms : dec_ms - ms) / steps;
                    ampr__cuda_set_probe(g_c, NULL, 0);
                    if (!k) continue;
                    sum_us += us;
                    printf(" %s x%lu %+.1f us,", pr, k, us);
                }
                printf(" together %.1f us of %.1f\n", sum_us, 1e3 * dec_ms / steps);
            }
        }
        if (t == AMPR__Q_F16) { /* the other prefill attention kernel, side by side */
            SwitchScope sw(AMPR__CUDA_ATT_MMA, flipped(AMPR__CUDA_ATT_MMA));
            double alt_ms = time_ms([&] { OK(ampr__cuda_forward(s, toks.data(), np, 0, 0, &g_err)); }, 3);
            double mma_ms = sw.was ? pre_ms : alt_ms, f32_ms = sw.was ? alt_ms : pre_ms;
            printf("fp16 prefill of %d tokens, attention on tensor cores %.2f ms vs fp32 tiles %.2f ms: "
                   "%.2fx\n", np, mma_ms, f32_ms, f32_ms / mma_ms);
        }
        if (t == AMPR__Q_NF4) /* prefill's dequantization chunks, side by side */
            for (int32_t n : {128, np}) {
                auto pre = [&](int wide, int pipe) {
                    SwitchScope sw(AMPR__CUDA_DQ_WIDE, wide), sp(AMPR__CUDA_DQ_PIPE, pipe);
                    return time_ms([&] { OK(ampr__cuda_forward(s, toks.data(), n, 0, 0, &g_err)); }, 3);
                };
                double w_ms = pre(1, 0), p_ms = pre(0, 1), d_ms = pre(0, 0);
                printf("nf4 prefill of %d tokens, dequantized in chunks for 4 waves of cuBLASLt tiles "
                       "(AMPR_CUDA_DQ_WIDE=1, off by default) %.2f ms vs 16 MB chunks %.2f ms: %.2fx\n", n, w_ms,
                       d_ms, d_ms / w_ms);
                printf("nf4 prefill of %d tokens, 16 MB chunks on two streams (AMPR_CUDA_DQ_PIPE=1, off by "
                       "default) %.2f ms vs on one %.2f ms: %.2fx\n", n, p_ms, d_ms, d_ms / p_ms);
            }
        if (t == AMPR__Q_NF4) { /* passes of a few tokens: a decode batch's matmuls */
            auto pass_ms = [&](ampr__cuda_switch sw_id, int on, int32_t n) {
                SwitchScope sw(sw_id, on);
                return time_ms([&] { OK(ampr__cuda_forward(s, toks.data(), n, 0, 0, &g_err)); }, 5);
            };
            for (int32_t n : {2, 4, 8}) {
                double m_ms = pass_ms(AMPR__CUDA_NF4_BATCH, 1, n), f_ms = pass_ms(AMPR__CUDA_NF4_BATCH, 0, n);
                printf("nf4 pass of %d tokens, GEMV on tensor cores %.3f ms vs fp32 %.3f ms: %.2fx\n", n,
                       m_ms, f_ms, f_ms / m_ms);
            }
            double b_ms = pass_ms(AMPR__CUDA_NF4_BATCH, 1, 32), d_ms = pass_ms(AMPR__CUDA_NF4_BATCH, 0, 32);
            printf("nf4 pass of 32 tokens, batch matmuls on tensor cores %.3f ms vs dequantize + "
                   "cuBLASLt %.3f ms: %.2fx\n", b_ms, d_ms, d_ms / b_ms);
        }
    }
    for (auto &tp : tiers) {
        if (ops) bench_ops(tp->t, tp->hm, copy, peak);
        ampr__cuda_seq_free(tp->s);
        ampr__cuda_model_free(tp->dm);
    }
    printf("gemv ms / GB/s: one whole greedy decode step (graph), all weight bytes except the "
           "embedding table; prefill: 512 tokens, logits of the last\n");
}

/* check --gemv: each format's matmul of 1..32 tokens (a decode batch's size)
 * on the matrices of an 8B model (Llama-3-8B: dim 4096, ffn 14336, 32/8
 * heads, vocab 128256), where the weights, not the launches, set the time;
 * NF4 on each of its paths. Per call: 10 calls between two events, median of
 * 5; GB/s counts the matrix's bytes once a call. Each call reads another
 * copy of the matrix, in turn over as many copies as take 4 x the GPU's L2
 * (up to 64): in a decode step a matrix's weights come from DRAM, and a
 * matrix that fits in L2 (NF4's wqkv, wo and w_down; INT8's wqkv and wo;
 * FP16's wo) read again at once would come from L2, faster, the more so for
 * a kernel that waits on latency. One row a format ("warm L2") calls one
 * copy, for the difference. only: a format's name (the others are skipped);
 * AMPR_CHECK_GEMV_PROFILE=1: for a profiler, 1 and 4 tokens only, each
 * matmul run twice (tests/gpu/profile.sh). */
static void bench_gemv(const char *only) {
    const bool small = getenv("AMPR_CHECK_BENCH_SMALL") != NULL;
    struct Shape { const char *name; int64_t rows, cols; } shapes[] = {
        {"wqkv", 6144, 4096}, {"wo", 4096, 4096}, {"w_gu", 28672, 4096}, {"w_down", 4096, 14336},
        {"output", 128256, 4096}};
    if (small) /* the code path on the emulation */
        shapes[0] = {"wqkv", 384, 256}, shapes[1] = {"wo", 256, 256}, shapes[2] = {"w_gu", 1024, 256},
        shapes[3] = {"w_down", 256, 512}, shapes[4] = {"output", 1000, 256};
    const bool prof = getenv("AMPR_CHECK_GEMV_PROFILE") != NULL;
    const int32_t ns[] = {1, 2, 4, 8, 16, 32}, ns_prof[] = {1, 4};
    const int NS = prof ? 2 : 6, NM = 5, calls = prof ? 1 : 10, reps = prof ? 1 : 5;
    int dev = 0;
    cudaDeviceProp prop;
    CU(cudaGetDevice(&dev));
    CU(cudaGetDeviceProperties(&prop, dev));
    const double cold_bytes = 4.0 * prop.l2CacheSize; /* a turn over the copies */
    printf("\nmatmuls on the 8B shape: us a call (GB/s of the matrix's bytes); copy bw %.0f GB/s; "
           "each call another copy of the matrix, %.0f MB of copies (4 x L2) unless said\n",
           bench_copy_gbs(), cold_bytes / 1e6);
    printf("%-5s %-22s %3s", "fmt", "path", "n");
    for (const Shape &sh : shapes) printf(" %17s", sh.name);
    printf(" %17s\n", "sum (GB/s)");
    float *dx = (float *)dev_put(NULL, (size_t)32 * 14336 * 4);
    {
        auto x = rnd_vec((size_t)32 * 14336, -1, 1);
        CU(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    }
    float *dy = (float *)dev_put(NULL, (size_t)32 * 128256 * 4);
    std::vector<ampr__cuda_mat> mats[3][5]; /* each matrix's copies */
    for (int k = 0; k < NM; k++) { /* one fp32 matrix at a time, in each format */
        auto w = rnd_vec((size_t)(shapes[k].rows * shapes[k].cols), -0.05f, 0.05f);
        for (int f = 0; f < 3; f++) {
            if (only && strcmp(only, fmt_name(k_fmts[f]))) continue;
            HostMat hm;
            host_quantize(hm, k_fmts[f], w.data(), shapes[k].rows, shapes[k].cols, false);
            std::vector<ampr__cuda_mat> &cp = mats[f][k];
            do {
                cp.push_back(ampr__cuda_mat());
                OK(ampr__cuda_mat_upload(g_c, &hm.q, &cp.back(), &g_err));
            } while (cp.size() < 64 && (double)ampr__cuda_mat_bytes(&cp[0]) * (double)cp.size() < cold_bytes);
        }
    }
    /* one line: format f's matrices at n tokens, each alone, then their sum;
     * warm: every call on the first copy */
    size_t turn = 0; /* the next copy: no copy twice in a row, also across timings */
    auto time_row = [&](int f, const char *path, int32_t n, bool warm) {
        double sum_us = 0, sum_bytes = 0;
        printf("%-5s %-22s %3d", fmt_name(k_fmts[f]), path, n);
        for (int k = 0; k < NM; k++) {
            std::vector<ampr__cuda_mat> &cp = mats[f][k];
            double us = 1e3 / calls * time_ms([&] {
                for (int r = 0; r < calls; r++) {
                    ampr__cuda_mat *w = &cp[warm ? 0 : turn++ % cp.size()];
                    OK(ampr__cuda_matmul(g_c, w, dx, n, dy, w->rows, &g_err));
                }
            }, reps);
            double bytes = (double)ampr__cuda_mat_bytes(&cp[0]);
            sum_us += us;
            sum_bytes += bytes;
            printf(" %8.1f (%6.0f)", us, bytes / (us * 1e-6) / 1e9);
        }
        printf(" %8.1f (%6.0f)\n", sum_us, sum_bytes / (sum_us * 1e-6) / 1e9);
    };
    /* lt: every n on cuBLASLt (gemv_max 0), the GEMVs' alternative */
    /* ring: -1 as opened, else AMPR__CUDA_NF4_RING on with that many stages (0: by size) */
    /* warm: one token, every call on one copy; on: a switch of the one-token
     * GEMV turned on (-1 none), one token only */
    struct Path { int f; const char *name; int mma, batch, lt, ring, warm, on = -1; } paths[] = {
        {0, "as opened", -1, -1, 0, -1, 0}, {0, "as opened, warm L2", -1, -1, 0, -1, 1},
        {0, "cuBLASLt", -1, -1, 1, -1, 0},
        {1, "as opened", -1, -1, 0, -1, 0}, {1, "as opened, warm L2", -1, -1, 0, -1, 1},
        {1, "x quantized once", -1, -1, 0, -1, 0, AMPR__CUDA_I8_ONCE},
        {1, "cuBLASLt", -1, -1, 1, -1, 0},
        {2, "fp32 GEMV / cuBLASLt", 0, 0, 0, -1, 0}, {2, "tensor cores", 1, 1, 0, -1, 0},
        {2, "tensor cores, ring", 1, 1, 0, 0, 0}, {2, "tensor cores, ring S 4", 1, 1, 0, 4, 0},
        {2, "tensor cores, ring S 8", 1, 1, 0, 8, 0}, {2, "as opened", -1, -1, 0, -1, 0},
        {2, "as opened, warm L2", -1, -1, 0, -1, 1}, {2, "ring, warm L2", 1, 1, 0, 0, 1}};
    for (const Path &pa : paths) {
        if ((only && strcmp(only, fmt_name(k_fmts[pa.f]))) ||
            (prof && (pa.lt || (pa.mma < 0 && pa.f == 2) || pa.ring > 0 || pa.warm || pa.on >= 0)))
            continue;
        std::unique_ptr<SwitchScope> m, b, r, o;
        if (pa.on >= 0) o.reset(new SwitchScope((ampr__cuda_switch)pa.on, 1));
        if (pa.mma >= 0) m.reset(new SwitchScope(AMPR__CUDA_NF4_MMA, pa.mma));
        if (pa.batch >= 0) b.reset(new SwitchScope(AMPR__CUDA_NF4_BATCH, pa.batch));
        if (pa.ring >= 0) r.reset(new SwitchScope(AMPR__CUDA_NF4_RING, 1));
        ampr__cuda_set_nf4_ring(g_c, pa.ring > 0 ? pa.ring : 0);
        if (pa.lt) ampr__cuda_set_gemv_max(g_c, 0);
        for (int i = 0; i < (pa.warm || pa.on >= 0 ? 1 : NS); i++)
            time_row(pa.f, pa.name, prof ? ns_prof[i] : ns[i], pa.warm);
        ampr__cuda_set_gemv_max(g_c, 8); /* the default */
        ampr__cuda_set_nf4_ring(g_c, 0);
    }
    /* the one-token fp32 NF4 GEMV in each of its shapes (ampr__cuda_set_nf4_gemv1) */
    for (int ru : {21, 22, 24, 41, 42, 44}) {
        if (prof || (only && strcmp(only, "nf4"))) break;
        SwitchScope m(AMPR__CUDA_NF4_MMA, 0);
        ampr__cuda_set_nf4_gemv1(g_c, ru);
        char name[32];
        snprintf(name, sizeof name, "fp32 GEMV R %d U %d", ru / 10, ru % 10);
        time_row(2, name, 1, false);
    }
    ampr__cuda_set_nf4_gemv1(g_c, 0);
    /* prefill's matmuls: fp16 and int8 on cuBLASLt, nf4 dequantized in 16 MB
     * chunks and in AMPR_CUDA_DQ_WIDE's (TFLOP/s instead of GB/s); small: one
     * call of 40 tokens (the emulation's matmuls are loops) */
    const int32_t pre_ns[] = {128, 512};
    const int pre_calls = small ? 1 : calls, pre_reps = small ? 1 : reps;
    float *px = NULL, *py = NULL;
    if (!prof) {
        const int32_t most = small ? 40 : 512;
        px = (float *)dev_put(NULL, (size_t)most * 14336 * 4);
        auto x = rnd_vec((size_t)most * 14336, -1, 1);
        CU(cudaMemcpy(px, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
        py = (float *)dev_put(NULL, (size_t)most * 128256 * 4);
        printf("\nprefill matmuls on the 8B shape: us a call (TFLOP/s)\n");
    }
    struct PrePath { int f; const char *name; int waves, pipe; } pre_paths[] = {
        {0, "cuBLASLt", 0, 0}, {1, "cuBLASLt", 0, 0}, {2, "16 MB chunks", 0, 0},
        {2, "16 MB chunks, DQ_PIPE", 0, 1}, {2, "DQ_WIDE, 1 wave", 1, 0}, {2, "DQ_WIDE, 2 waves", 2, 0},
        {2, "DQ_WIDE, 4 waves", 4, 0}, {2, "WIDE 1 wave, DQ_PIPE", 1, 1}};
    for (const PrePath &pp : pre_paths) {
        if (prof || (only && strcmp(only, fmt_name(k_fmts[pp.f])))) continue;
        SwitchScope wide(AMPR__CUDA_DQ_WIDE, pp.waves > 0), pipe(AMPR__CUDA_DQ_PIPE, pp.pipe);
        ampr__cuda_set_dequant_waves(g_c, pp.waves);
        for (int32_t n : pre_ns) {
            if (small && n != pre_ns[0]) break;
            if (small) n = 40;
            double sum_us = 0, sum_flop = 0;
            printf("%-5s %-22s %3d", fmt_name(k_fmts[pp.f]), pp.name, n);
            for (int k = 0; k < NM; k++) {
                ampr__cuda_mat *w = &mats[pp.f][k][0]; /* compute sets the time: one copy */
                OK(ampr__cuda_matmul(g_c, w, px, n, py, w->rows, &g_err)); /* scratch, plans */
                double us = 1e3 / pre_calls * time_ms([&] {
                    for (int r = 0; r < pre_calls; r++) OK(ampr__cuda_matmul(g_c, w, px, n, py, w->rows, &g_err));
                }, pre_reps);
                double flop = 2.0 * (double)w->rows * (double)w->cols * n;
                sum_us += us;
                sum_flop += flop;
                printf(" %8.1f (%6.1f)", us, flop / (us * 1e-6) / 1e12);
            }
            printf(" %8.1f (%6.1f)\n", sum_us, sum_flop / (sum_us * 1e-6) / 1e12);
        }
        ampr__cuda_set_dequant_waves(g_c, 0);
    }
    if (px) ampr__cuda_free(g_c, px);
    if (py) ampr__cuda_free(g_c, py);
    for (auto &row : mats)
        for (auto &cp : row)
            for (ampr__cuda_mat &m : cp) ampr__cuda_mat_free(g_c, &m);
    ampr__cuda_free(g_c, dx);
    ampr__cuda_free(g_c, dy);
}

/* check --ops TIER: only bench_ops for one tier, each op run twice (a
 * profiler's target: ncu --kernel-name ... check --ops nf4) */
static void ops_only(const char *tier) {
    ampr__cuda_hparams hp = {16, 2048, 8192, 32, 8, 64, 32000, 2048, 1e-5f, 0};
    g_op_reps = 1;
    for (ampr__qtype t : k_fmts) {
        if (strcmp(fmt_name(t), tier)) continue;
        HostModel hm;
        model_make(hm, t, hp, true);
        bench_ops(t, hm, 0, 0);
    }
}

/* whether name is one of the comma-separated names in list */
static bool listed(const char *list, const char *name) {
    size_t len = strlen(name);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t k = end ? (size_t)(end - p) : strlen(p);
        if (k == len && !strncmp(p, name, len)) return true;
        p += k + (end ? 1 : 0);
    }
    return false;
}

int main(int argc, char **argv) {
    bool quick = argc > 1 && !strcmp(argv[1], "--quick");
    bool bench_only = argc > 1 && !strcmp(argv[1], "--bench");
    bool ops = argc > 2 && !strcmp(argv[1], "--ops");
    bool gemv_only = argc > 1 && !strcmp(argv[1], "--gemv");
    int n = 0;
    OK(ampr__cuda_device_count(&n, &g_err));
    if (n == 0) {
        int raw = 0;
        cudaError_t e = cudaGetDeviceCount(&raw); /* say why: no GPU, or an old driver */
        printf("no CUDA device: nothing to check (cudaGetDeviceCount: %s)\n", cudaGetErrorString(e));
        return 2;
    }
    ampr_status st = ampr__cuda_open(0, &g_c, &g_err);
    if (st != AMPR_OK) {
        printf("cannot open device 0: %s\n", g_err.msg);
        return 2;
    }
    g_s = (cudaStream_t)ampr__cuda_stream(g_c);
    printf("device: %s (cc %d.%d), NCCL %s\n", ampr__cuda_device_name(g_c), ampr__cuda_cc(g_c) / 10,
           ampr__cuda_cc(g_c) % 10, ampr__cuda_have_nccl() ? "yes" : "no");
    if (gemv_only) {
        bench_gemv(argc > 2 ? argv[2] : NULL);
        ampr__cuda_close(g_c);
        return 0;
    }
    if (ops) {
        ops_only(argv[2]);
        ampr__cuda_close(g_c);
        return 0;
    }
    static const struct {
        const char *name;
        void (*fn)(void);
    } checks[] = {
        {"elementwise", check_elementwise}, {"add_rmsnorm", check_add_rmsnorm}, {"argmax", check_argmax},
        {"topk_cands", check_topk_cands}, {"nucleus_cands", check_nucleus_cands},
        {"row_monitor", check_row_monitor}, {"temp_draw", check_temp_draw},
        {"embed_matmul", check_embed_matmul}, {"gemv_swiglu", check_gemv_swiglu}, {"nf4_ring", check_nf4_ring},
        {"i8_once", check_i8_once}, {"prefetch", check_prefetch}, {"addnorm", check_addnorm}, {"rope_tail", check_rope_tail},
        {"nan_matmul", check_nan_matmul}, {"nf4_chunk_sizes", check_nf4_chunk_sizes},
        {"nf4_chunks", check_nf4_chunks}, {"batch_lt", check_batch_lt},
        {"kv_attention_64", [] { check_kv_attention(64); }}, {"kv_attention_128", [] { check_kv_attention(128); }},
        {"nccl", check_nccl}, {"copy_reduce", check_copy_reduce}, {"forward", check_forward},
        {"paged_graphs", check_paged_graphs}};
    /* check --only NAME[,NAME...]: those checks alone (names as in the table) */
    const char *only = argc > 2 && !strcmp(argv[1], "--only") ? argv[2] : NULL;
    if (only || !bench_only) {
        int ran = 0;
        for (const auto &ck : checks) {
            if (only && !listed(only, ck.name)) continue;
            ck.fn();
            ran++;
        }
        if (only && !ran) {
            printf("check --only %s: no such check\n", only);
            g_fail++;
        }
    }
    if (!quick && !only) bench();
    ampr__cuda_close(g_c);
    printf("\n%s: %d failure(s)\n", g_fail ? "FAIL" : "PASS", g_fail);
    return g_fail ? 1 : 0;
}
