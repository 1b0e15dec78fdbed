/*
 * cuda_ctx.cu -- device contexts, buffers, weight upload, and the error
 * mapping declared in cuda_err.h.
 */
#include "cuda_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- error mapping (the one place) --------------------------------------- */

ampr_status ampr__cuda_fail(ampr__err *err, cudaError_t e, const char *what, const char *file,
                            int line) {
    ampr_status st = AMPR_ERR_BACKEND;
    if (e == cudaErrorMemoryAllocation) st = AMPR_ERR_NOMEM;
    else if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
             e == cudaErrorInvalidDevice)
        st = AMPR_ERR_NO_DEVICE;
    /* The runtime also keeps a failed call's error as this thread's last error
     * until someone reads it; unread, the next launch's AMPR__CU_LAUNCHED would
     * take it for its own and fail the next request (a cudaMalloc that ran out
     * of memory failed the request after it). Read it here: it is reported now.
     * A sticky error (a kernel fault) stays whatever is read. */
    (void)cudaGetLastError();
    return ampr__fail(err, st, "CUDA %s (%s) in %s at %s:%d", cudaGetErrorName(e),
                      cudaGetErrorString(e), what, file, line);
}

ampr_status ampr__cublas_fail(ampr__err *err, cublasStatus_t s, const char *what,
                              const char *file, int line) {
    ampr_status st = s == CUBLAS_STATUS_ALLOC_FAILED ? AMPR_ERR_NOMEM : AMPR_ERR_BACKEND;
    return ampr__fail(err, st, "cuBLASLt %s (%s) in %s at %s:%d", cublasLtGetStatusName(s),
                      cublasLtGetStatusString(s), what, file, line);
}

/* ---- context ----------------------------------------------------------- */

ampr_status ampr__cuda_device_count(int *n, ampr__err *err) {
    *n = 0;
    cudaError_t e = cudaGetDeviceCount(n);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError(); /* clear it: "no GPU" is an answer, not a fault */
        *n = 0;
        return AMPR_OK;
    }
    if (e != cudaSuccess) {
        *n = 0;
        return ampr__cuda_fail(err, e, "cudaGetDeviceCount", __FILE__, __LINE__);
    }
    return AMPR_OK;
}

static ampr_status ctx_init(ampr__cuda *c, int device, ampr__err *err) {
    AMPR__CU(err, cudaSetDevice(device));
    cudaDeviceProp p;
    AMPR__CU(err, cudaGetDeviceProperties(&p, device));
    c->cc = p.major * 10 + p.minor;
    c->sm_count = p.multiProcessorCount;
    for (int i = 0; i < AMPR__CUDA_N_SWITCHES; i++) { /* after cc: PDL needs 9.0 */
        ampr__cuda_switch s = (ampr__cuda_switch)i;
        const char *e = getenv(ampr__cuda_switch_env(s));
        int on = e && !strcmp(e, "1") ? 1 : e && !strcmp(e, "0") ? 0 : ampr__cuda_switch_default(s);
        ampr__cuda_set_switch(c, s, on);
    }
    snprintf(c->name, sizeof c->name, "%s", p.name);
    if (c->cc < 80)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "GPU %d (%s) has compute capability %d.%d; libampr needs 8.0 or newer",
                          device, p.name, p.major, p.minor);
    AMPR__CU(err, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    AMPR__CUBLAS(err, cublasLtCreate(&c->lt));
    c->lt_ws_bytes = (size_t)32 << 20;
    AMPR__CU(err, cudaMalloc(&c->lt_ws, c->lt_ws_bytes));
    c->att_part_bytes = (size_t)8 * (size_t)c->sm_count * (AMPR__CUDA_HD_MAX + 2) * sizeof(float);
    AMPR__CU(err, cudaMalloc((void **)&c->att_part, c->att_part_bytes));
    size_t cnt_bytes = (size_t)4 * (size_t)c->sm_count * sizeof(int32_t); /* att_splits' bound */
    AMPR__CU(err, cudaMalloc((void **)&c->att_cnt, cnt_bytes));
    AMPR__CU(err, cudaMemsetAsync(c->att_cnt, 0, cnt_bytes, c->stream));
    AMPR__CU(err, cudaMalloc((void **)&c->tail_cnt, sizeof(int32_t)));
    AMPR__CU(err, cudaMemsetAsync(c->tail_cnt, 0, sizeof(int32_t), c->stream));
    return AMPR_OK;
}

ampr_status ampr__cuda_open(int device, ampr__cuda **out, ampr__err *err) {
    *out = NULL;
    int n = 0;
    AMPR__TRY(ampr__cuda_device_count(&n, err));
    if (n == 0) return ampr__fail(err, AMPR_ERR_NO_DEVICE, "no CUDA device or driver");
    if (device < 0 || device >= n)
        return ampr__fail(err, AMPR_ERR_NO_DEVICE, "CUDA device %d does not exist (%d found)",
                          device, n);
    ampr__cuda *c = (ampr__cuda *)ampr__calloc(1, sizeof *c);
    if (!c) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a CUDA context");
    c->device = device;
    c->gemv_max = AMPR__CUDA_GEMV_MAX;
    ampr_status st = ctx_init(c, device, err);
    if (st != AMPR_OK) {
        ampr__cuda_close(c);
        return st;
    }
    *out = c;
    return AMPR_OK;
}


void ampr__cuda_close(ampr__cuda *c) {
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    for (int i = 0; i < AMPR__CUDA_MAX_PLANS; i++) ampr__cuda_plan_destroy(&c->plans[i]);
    if (c->lt) cublasLtDestroy(c->lt);
    cudaFree(c->lt_ws);
    cudaFree(c->xh);
    cudaFree(c->xq);
    cudaFree(c->xs);
    cudaFree(c->acc);
    cudaFree(c->wdq);
    for (int s = 0; s < 2; s++)
        if (c->dq_side[s]) cudaStreamSynchronize(c->dq_side[s]);
    cudaFree(c->dq_buf);
    cudaFree(c->dq_ws);
    for (int s = 0; s < 2; s++)
        if (c->dq_side[s]) cudaStreamDestroy(c->dq_side[s]);
    for (int e = 0; e < 3; e++)
        if (c->dq_ev[e]) cudaEventDestroy(c->dq_ev[e]);
    cudaFree(c->nf4b_part);
    cudaFree(c->nf4b_cnt);
    cudaFree(c->att_part);
    cudaFree(c->att_cnt);
    cudaFree(c->tail_cnt);
    if (c->stream) cudaStreamDestroy(c->stream);
    (void)cudaGetLastError();
    ampr__free(c);
}

ampr_status ampr__cuda_use(ampr__cuda *c, ampr__err *err) {
    AMPR__CU(err, cudaSetDevice(c->device));
    return AMPR_OK;
}

ampr_status ampr__cuda_sync(ampr__cuda *c, ampr__err *err) {
    AMPR__CU(err, cudaSetDevice(c->device));
    AMPR__CU(err, cudaStreamSynchronize(c->stream));
    AMPR__CU(err, cudaGetLastError());
    return AMPR_OK;
}

const char *ampr__cuda_device_name(const ampr__cuda *c) { return c->name; }
int ampr__cuda_device(const ampr__cuda *c) { return c->device; }
int ampr__cuda_cc(const ampr__cuda *c) { return c->cc; }
void *ampr__cuda_stream(ampr__cuda *c) { return (void *)c->stream; }
void ampr__cuda_set_gemv_max(ampr__cuda *c, int n) {
    c->scratch_gen++; /* captured graphs chose their matmul paths by the old value */
    c->gemv_max = n < 0 ? 0 : (n > AMPR__CUDA_GEMV_MAX ? AMPR__CUDA_GEMV_MAX : n);
}

void ampr__cuda_set_nf4_gemv1(ampr__cuda *c, int ru) {
    c->scratch_gen++; /* captured graphs chose their kernels by the old value */
    c->nf4_gemv1 = ru;
}

void ampr__cuda_set_nf4_ring(ampr__cuda *c, int stages) {
    c->scratch_gen++; /* captured graphs chose their kernels by the old value */
    c->nf4_ring = stages == 4 || stages == 8 ? stages : 0;
}

unsigned long ampr__cuda_set_probe(ampr__cuda *c, const char *name, int times) {
    c->scratch_gen++; /* captured graphs launched each kernel as the old probe said */
    unsigned long n = c->probe_launches;
    c->probe_launches = 0;
    c->probe_times = times == 2 ? 2 : 0;
    snprintf(c->probe, sizeof c->probe, "%s", name ? name : "");
    return n;
}

const char *ampr__cuda_switch_env(ampr__cuda_switch s) {
    static const char *const names[AMPR__CUDA_N_SWITCHES] = {
        "AMPR_CUDA_NF4_MMA", "AMPR_CUDA_ATT_MMA", "AMPR_CUDA_ATT_DEC", "AMPR_CUDA_FUSE",
        "AMPR_CUDA_PDL", "AMPR_CUDA_TP_GRAPHS", "AMPR_CUDA_PREFETCH",
        "AMPR_CUDA_FUSE_TAIL", "AMPR_CUDA_NF4_BATCH", "AMPR_CUDA_NF4_RING", "AMPR_CUDA_DQ_WIDE",
        "AMPR_CUDA_DQ_PIPE", "AMPR_CUDA_I8_ONCE"};
    return (unsigned)s < AMPR__CUDA_N_SWITCHES ? names[s] : "?";
}
/* On at open unless the environment says 0: the paths the H200 measured
 * faster (2026-11-28, cuda/NOTES.md), each of whose checks passed there */
int ampr__cuda_switch_default(ampr__cuda_switch s) {
    return s == AMPR__CUDA_ATT_MMA || s == AMPR__CUDA_ATT_DEC || s == AMPR__CUDA_NF4_BATCH ||
           s == AMPR__CUDA_TP_GRAPHS || s == AMPR__CUDA_PDL || s == AMPR__CUDA_NF4_MMA;
}
void ampr__cuda_set_switch(ampr__cuda *c, ampr__cuda_switch s, int on) {
    if ((unsigned)s >= AMPR__CUDA_N_SWITCHES) return;
    c->scratch_gen++; /* captured graphs chose their kernels by the old value */
    c->sw[s] = on != 0 && (s != AMPR__CUDA_PDL || c->cc >= 90);
}
int ampr__cuda_switch_on(const ampr__cuda *c, ampr__cuda_switch s) {
    return (unsigned)s < AMPR__CUDA_N_SWITCHES && c->sw[s];
}

void ampr__cuda_plan_destroy(ampr__cuda_plan *p) {
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->cd) cublasLtMatrixLayoutDestroy(p->cd);
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

int ampr__cuda_capturing(ampr__cuda *c) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(c->stream, &cs) != cudaSuccess) return 0;
    return cs != cudaStreamCaptureStatusNone;
}

/* ---- buffers ----------------------------------------------------------- */

ampr_status ampr__cuda_alloc(ampr__cuda *c, size_t bytes, void **dptr, ampr__err *err) {
    *dptr = NULL;
    AMPR__CU(err, cudaSetDevice(c->device));
    AMPR__CU(err, cudaMalloc(dptr, bytes ? bytes : 1));
    return AMPR_OK;
}

void ampr__cuda_free(ampr__cuda *c, void *dptr) {
    if (!c || !dptr) return;
    cudaSetDevice(c->device);
    cudaFree(dptr);
}

ampr_status ampr__cuda_upload(ampr__cuda *c, void *dst, const void *src, size_t bytes,
                              ampr__err *err) {
    if (!bytes) return AMPR_OK;
    AMPR__CU(err, cudaSetDevice(c->device));
    AMPR__CU(err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    /* src is host memory the caller may free or reuse at once */
    AMPR__CU(err, cudaStreamSynchronize(c->stream));
    return AMPR_OK;
}

ampr_status ampr__cuda_download(ampr__cuda *c, void *dst, const void *src, size_t bytes,
                                ampr__err *err) {
    if (!bytes) return AMPR_OK;
    AMPR__CU(err, cudaSetDevice(c->device));
    AMPR__CU(err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    AMPR__CU(err, cudaStreamSynchronize(c->stream));
    return AMPR_OK;
}

static ampr_status copy_gbs(ampr__cuda *c, void *a, void *b, size_t bytes, int reps, double *gbs,
                            cudaEvent_t e0, cudaEvent_t e1, ampr__err *err) {
    AMPR__CU(err, cudaMemsetAsync(a, 1, bytes, c->stream));
    for (int r = 0; r <= reps; r++) { /* the first copy warms up */
        AMPR__CU(err, cudaEventRecord(e0, c->stream));
        AMPR__CU(err, cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, c->stream));
        AMPR__CU(err, cudaEventRecord(e1, c->stream));
        AMPR__CU(err, cudaEventSynchronize(e1));
        float ms = 0;
        AMPR__CU(err, cudaEventElapsedTime(&ms, e0, e1));
        double g = ms > 0 ? 2.0 * (double)bytes / ((double)ms * 1e-3) / 1e9 : 0;
        if (r > 0 && g > *gbs) *gbs = g;
    }
    return AMPR_OK;
}

uint64_t ampr__cuda_mem_used(ampr__cuda *c) {
    size_t free_b = 0, total = 0;
    if (cudaSetDevice(c->device) != cudaSuccess || cudaMemGetInfo(&free_b, &total) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return (uint64_t)(total - free_b);
}

ampr_status ampr__cuda_copy_gbs(ampr__cuda *c, size_t bytes, int reps, double *gbs,
                                ampr__err *err) {
    *gbs = 0;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    ampr_status st = ampr__cuda_alloc(c, bytes, &a, err);
    if (st == AMPR_OK) st = ampr__cuda_alloc(c, bytes, &b, err);
    if (st == AMPR_OK && (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess))
        st = ampr__cuda_fail(err, cudaGetLastError(), "cudaEventCreate", __FILE__, __LINE__);
    if (st == AMPR_OK) st = copy_gbs(c, a, b, bytes, reps, gbs, e0, e1, err);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    ampr__cuda_free(c, a);
    ampr__cuda_free(c, b);
    /* best effort: an allocation that failed (a full card) must not be the
     * "last error" the next pass's first launch check finds */
    if (st != AMPR_OK) (void)cudaGetLastError();
    return st;
}

ampr_status ampr__cuda_memset(ampr__cuda *c, void *dst, int value, size_t bytes, ampr__err *err) {
    AMPR__CU(err, cudaSetDevice(c->device));
    AMPR__CU(err, cudaMemsetAsync(dst, value, bytes, c->stream));
    return AMPR_OK;
}

/* ---- weights ----------------------------------------------------------- */

static ampr_status mat_upload(ampr__cuda *c, const ampr__qmat *src, ampr__cuda_mat *d,
                              ampr__err *err) {
    uint64_t n = 0;
    if (!ampr__mul_ok((uint64_t)src->rows, (uint64_t)src->cols, &n))
        return ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "matrix size overflows");
    size_t data_bytes = 0, n_scales = 0;
    switch (src->type) {
    case AMPR__Q_F16:
        data_bytes = (size_t)n * 2;
        break;
    case AMPR__Q_INT8:
        data_bytes = (size_t)n;
        n_scales = (size_t)src->rows;
        break;
    case AMPR__Q_NF4:
    case AMPR__Q_NF4_DQ:
        /* any shape: blocks of 64 run over the flattened matrix (quant.h) */
        data_bytes = (size_t)((n + 1) / 2);
        n_scales = (size_t)((n + 63) / 64);
        break;
    default:
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "weight format %d has no CUDA kernels",
                          (int)src->type);
    }
    int dq = src->type == AMPR__Q_NF4_DQ;
    if (src->data_bytes < data_bytes || (!dq && (src->n_scales < n_scales || (n_scales && !src->scales))))
        return ampr__fail(err, AMPR_ERR_INVALID_ARG,
                          "matrix %lldx%lld holds %zu bytes and %zu scales, expected %zu and %zu",
                          (long long)src->rows, (long long)src->cols, src->data_bytes,
                          src->n_scales, data_bytes, n_scales);
    if (dq && (!src->extra || src->extra_bytes < sizeof(ampr__nf4dq_header)))
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "NF4_DQ matrix without its absmax codes");
    d->type = dq ? AMPR__Q_NF4 : src->type; /* NF4_DQ runs as NF4: absmax decoded below */
    d->rows = src->rows;
    d->cols = src->cols;
    AMPR__TRY(ampr__cuda_alloc(c, data_bytes, &d->data, err));
    AMPR__TRY(ampr__cuda_upload(c, d->data, src->data, data_bytes, err));
    if (n_scales) {
        void *s = NULL;
        AMPR__TRY(ampr__cuda_alloc(c, n_scales * sizeof(float), &s, err));
        d->scales = (float *)s;
        if (dq) {
            float *host = (float *)ampr__alloc_array(n_scales, sizeof(float), err);
            if (!host) return AMPR_ERR_NOMEM;
            for (size_t b = 0; b < n_scales; b++) host[b] = ampr__nf4_block_absmax(src, (int64_t)b);
            ampr_status st = ampr__cuda_upload(c, d->scales, host, n_scales * sizeof(float), err);
            ampr__free(host);
            AMPR__TRY(st);
        } else {
            AMPR__TRY(ampr__cuda_upload(c, d->scales, src->scales, n_scales * sizeof(float), err));
        }
    }
    return AMPR_OK;
}

ampr_status ampr__cuda_mat_upload(ampr__cuda *c, const ampr__qmat *src, ampr__cuda_mat *dst,
                                  ampr__err *err) {
    memset(dst, 0, sizeof *dst);
    ampr_status st = mat_upload(c, src, dst, err);
    if (st != AMPR_OK) ampr__cuda_mat_free(c, dst);
    return st;
}

uint64_t ampr__cuda_mat_bytes(const ampr__cuda_mat *m) {
    uint64_t n = (uint64_t)m->rows * (uint64_t)m->cols;
    switch (m->type) {
    case AMPR__Q_F16: return 2 * n;
    case AMPR__Q_INT8: return n + 4 * (uint64_t)m->rows;
    default: return (n + 1) / 2 + 4 * ((n + 63) / 64);
    }
}

void ampr__cuda_mat_free(ampr__cuda *c, ampr__cuda_mat *m) {
    if (!m) return;
    ampr__cuda_free(c, m->data);
    ampr__cuda_free(c, m->scales);
    memset(m, 0, sizeof *m);
}
