/*
 * cuda_nccl.cu -- all-reduce for tensor parallelism over NCCL.
 *
 * Two ways to build communicators: one process driving several GPUs
 * (ncclCommInitAll over their contexts; collectives on them must be issued
 * as one group, see ampr__cuda_allreduce_sum_group), or one rank per process
 * (ncclCommInitRank with an id that rank 0 made and shared out of band).
 * Built without NCCL (no AMPR_HAVE_NCCL), every call is AMPR_ERR_UNSUPPORTED.
 *
 * Over these, ampr__cuda_reduce is what the forward pass calls: NCCL, or the
 * copy all-reduce of one process's ranks (at the end of this file), which
 * needs no NCCL and allows several ranks on one GPU.
 */
#include "cuda_err.h"

#include <sched.h>
#include <time.h>

struct ampr__cuda_comm {
    ampr__cuda *c;
#ifdef AMPR_HAVE_NCCL
    ncclComm_t comm;
#endif
};

#ifdef AMPR_HAVE_NCCL

static_assert(sizeof(ncclUniqueId) == AMPR__CUDA_COMM_ID_BYTES, "ncclUniqueId size changed");

ampr_status ampr__nccl_fail(ampr__err *err, ncclResult_t r, const char *what, const char *file,
                            int line) {
    /* NCCL reports allocation failures as system errors too: all map to BACKEND */
    return ampr__fail(err, AMPR_ERR_BACKEND, "NCCL error %d (%s) in %s at %s:%d", (int)r,
                      ncclGetErrorString(r), what, file, line);
}

int ampr__cuda_have_nccl(void) { return 1; }

ampr_status ampr__cuda_comm_id_new(unsigned char id[AMPR__CUDA_COMM_ID_BYTES], ampr__err *err) {
    ncclUniqueId u;
    AMPR__NCCL(err, ncclGetUniqueId(&u));
    memcpy(id, &u, sizeof u);
    return AMPR_OK;
}

/* One rank per process joins with a nonblocking communicator (NCCL 2.14+),
 * so a rank that never arrives costs a timeout instead of a process stuck in
 * ampr_open: init runs in NCCL's own thread while this one polls, and is
 * aborted at the deadline. Every later call on such a communicator may answer
 * ncclInProgress while NCCL finishes enqueueing; settle() waits that out
 * before the next call, as NCCL requires. */
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
#define AMPR__NCCL_NONBLOCKING 1
#else
#define AMPR__NCCL_NONBLOCKING 0
#endif

static ncclResult_t settle(ncclComm_t comm, ncclResult_t r) {
    while (r == ncclInProgress) {
        sched_yield();
        if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) return ncclInternalError;
    }
    return r;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

ampr_status ampr__cuda_comm_init_rank(ampr__cuda *c, int n_ranks, int rank,
                                      const unsigned char id[AMPR__CUDA_COMM_ID_BYTES],
                                      int64_t timeout_ms, ampr__cuda_comm **out, ampr__err *err) {
    *out = NULL;
    if (n_ranks <= 0 || rank < 0 || rank >= n_ranks)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "rank %d of %d", rank, n_ranks);
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    AMPR__CU(err, cudaSetDevice(c->device));
    ncclComm_t comm = NULL;
#if AMPR__NCCL_NONBLOCKING
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm, n_ranks, u, rank, &config);
    double t0 = now_ms();
    while (r == ncclInProgress) {
        if (timeout_ms > 0 && now_ms() - t0 > (double)timeout_ms) {
            ncclCommAbort(comm);
            return ampr__fail(err, AMPR_ERR_BACKEND,
                              "NCCL: rank %d of %d: the other ranks did not all join within "
                              "%lld ms (\"tp_timeout_ms\")",
                              rank, n_ranks, (long long)timeout_ms);
        }
        struct timespec nap = {0, 1000000}; /* 1 ms */
        nanosleep(&nap, NULL);
        if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) r = ncclInternalError;
    }
    if (r != ncclSuccess) {
        if (comm) ncclCommAbort(comm);
        return ampr__nccl_fail(err, r, "ncclCommInitRankConfig", __FILE__, __LINE__);
    }
#else
    (void)timeout_ms; /* an old NCCL: init blocks until every rank arrives */
    AMPR__NCCL(err, ncclCommInitRank(&comm, n_ranks, u, rank));
#endif
    ampr__cuda_comm *cm = (ampr__cuda_comm *)ampr__calloc(1, sizeof *cm);
    if (!cm) {
        ncclCommAbort(comm);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a communicator");
    }
    cm->c = c;
    cm->comm = comm;
    *out = cm;
    return AMPR_OK;
}

ampr_status ampr__cuda_comm_init_all(ampr__cuda *const *ctxs, int n, ampr__cuda_comm **out,
                                     ampr__err *err) {
    if (n <= 0 || n > AMPR__TP_MAX) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "%d devices", n);
    for (int i = 0; i < n; i++) out[i] = NULL;
    int devs[AMPR__TP_MAX] = {0};
    ncclComm_t comms[AMPR__TP_MAX];
    for (int i = 0; i < n; i++) devs[i] = ctxs[i]->device;
    AMPR__NCCL(err, ncclCommInitAll(comms, n, devs));
    for (int i = 0; i < n; i++) {
        out[i] = (ampr__cuda_comm *)ampr__calloc(1, sizeof **out);
        if (!out[i]) {
            for (int j = 0; j < n; j++) {
                if (j < i) ampr__free(out[j]);
                out[j] = NULL;
                ncclCommDestroy(comms[j]);
            }
            return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for communicators");
        }
        out[i]->c = ctxs[i];
        out[i]->comm = comms[i];
    }
    return AMPR_OK;
}

void ampr__cuda_comm_free(ampr__cuda_comm *comm) {
    if (!comm) return;
#if AMPR__NCCL_NONBLOCKING
    /* finalize (flushes outstanding work; may be in progress on a
     * nonblocking communicator), then destroy */
    if (settle(comm->comm, ncclCommFinalize(comm->comm)) == ncclSuccess) ncclCommDestroy(comm->comm);
    else ncclCommAbort(comm->comm);
#else
    ncclCommDestroy(comm->comm);
#endif
    ampr__free(comm);
}

ampr_status ampr__cuda_allreduce_sum(ampr__cuda_comm *comm, float *buf, size_t count,
                                     ampr__err *err) {
    ncclResult_t r = ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, comm->comm, comm->c->stream);
#if AMPR__NCCL_NONBLOCKING
    r = settle(comm->comm, r);
#endif
    if (r != ncclSuccess) return ampr__nccl_fail(err, r, "ncclAllReduce", __FILE__, __LINE__);
    return AMPR_OK;
}

ampr_status ampr__cuda_allreduce_sum_group(ampr__cuda_comm *const *comms, float *const *bufs,
                                           int n, size_t count, ampr__err *err) {
    AMPR__NCCL(err, ncclGroupStart());
    ampr_status st = AMPR_OK;
    for (int i = 0; i < n && st == AMPR_OK; i++) {
        ncclResult_t r = ncclAllReduce(bufs[i], bufs[i], count, ncclFloat32, ncclSum,
                                       comms[i]->comm, comms[i]->c->stream);
        if (r != ncclSuccess) st = ampr__nccl_fail(err, r, "ncclAllReduce", __FILE__, __LINE__);
    }
    ncclResult_t r = ncclGroupEnd(); /* always close the group */
#if AMPR__NCCL_NONBLOCKING
    for (int i = 0; i < n && r == ncclInProgress; i++) r = settle(comms[i]->comm, r);
    /* (ncclCommInitAll's communicators are blocking: only a one-rank group of
     * a process-per-rank communicator answers ncclInProgress here) */
#endif
    if (st != AMPR_OK) return st;
    if (r != ncclSuccess) return ampr__nccl_fail(err, r, "ncclGroupEnd", __FILE__, __LINE__);
    return AMPR_OK;
}

#else /* no NCCL in this build */

static ampr_status no_nccl(ampr__err *err) {
    return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "this build of libampr has no NCCL");
}
int ampr__cuda_have_nccl(void) { return 0; }
ampr_status ampr__cuda_comm_id_new(unsigned char id[AMPR__CUDA_COMM_ID_BYTES], ampr__err *err) {
    (void)id;
    return no_nccl(err);
}
ampr_status ampr__cuda_comm_init_rank(ampr__cuda *c, int n_ranks, int rank,
                                      const unsigned char id[AMPR__CUDA_COMM_ID_BYTES],
                                      int64_t timeout_ms, ampr__cuda_comm **out, ampr__err *err) {
    (void)c; (void)n_ranks; (void)rank; (void)id; (void)timeout_ms;
    *out = NULL;
    return no_nccl(err);
}
ampr_status ampr__cuda_comm_init_all(ampr__cuda *const *ctxs, int n, ampr__cuda_comm **out,
                                     ampr__err *err) {
    (void)ctxs;
    for (int i = 0; i < n; i++) out[i] = NULL;
    return no_nccl(err);
}
void ampr__cuda_comm_free(ampr__cuda_comm *comm) { ampr__free(comm); }
ampr_status ampr__cuda_allreduce_sum(ampr__cuda_comm *comm, float *buf, size_t count,
                                     ampr__err *err) {
    (void)comm; (void)buf; (void)count;
    return no_nccl(err);
}
ampr_status ampr__cuda_allreduce_sum_group(ampr__cuda_comm *const *comms, float *const *bufs,
                                           int n, size_t count, ampr__err *err) {
    (void)comms; (void)bufs; (void)n; (void)count;
    return no_nccl(err);
}

#endif

/* ---- the all-reduce of a tensor-parallel group -------------------------------- */

struct ampr__cuda_reduce {
    int n;                               /* ranks this process drives */
    int nccl;                            /* 1: comm[], 0: the copy all-reduce */
    ampr__cuda *ctx[AMPR__TP_MAX];
    ampr__cuda_comm *comm[AMPR__TP_MAX];
    cudaEvent_t ev[AMPR__TP_MAX]; /* copy: rank i's partial is ready / the sum is */
    float *tmp;                          /* copy: on rank 0's device, (n-1) partials */
    size_t tmp_count;
};

void ampr__cuda_reduce_free(ampr__cuda_reduce *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        if (r->ctx[i] && r->ctx[i]->stream) {
            cudaSetDevice(r->ctx[i]->device);
            cudaStreamSynchronize(r->ctx[i]->stream);
        }
    }
    for (int i = 0; i < r->n; i++) {
        ampr__cuda_comm_free(r->comm[i]);
        if (r->ev[i]) {
            cudaSetDevice(r->ctx[i]->device);
            cudaEventDestroy(r->ev[i]);
        }
    }
    if (r->tmp) ampr__cuda_free(r->ctx[0], r->tmp);
    (void)cudaGetLastError();
    ampr__free(r);
}

static ampr_status reduce_alloc(int n, ampr__cuda_reduce **out, ampr__err *err) {
    *out = NULL;
    if (n < 1 || n > AMPR__TP_MAX)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "%d tensor-parallel ranks in one process", n);
    *out = (ampr__cuda_reduce *)ampr__calloc(1, sizeof **out);
    if (!*out) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for an all-reduce");
    (*out)->n = n;
    return AMPR_OK;
}

static ampr_status reduce_local_init(ampr__cuda_reduce *r, ampr__cuda *const *ctxs, int use_nccl,
                                     ampr__err *err) {
    for (int i = 0; i < r->n; i++) r->ctx[i] = ctxs[i];
    if (use_nccl) {
        for (int i = 0; i < r->n; i++)
            for (int j = 0; j < i; j++)
                if (ctxs[i]->device == ctxs[j]->device)
                    return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                                      "NCCL needs a GPU per rank; ranks %d and %d share GPU %d "
                                      "(the copy all-reduce allows that)",
                                      j, i, ctxs[i]->device);
        r->nccl = 1;
        return ampr__cuda_comm_init_all(ctxs, r->n, r->comm, err);
    }
    for (int i = 0; i < r->n; i++) {
        AMPR__CU(err, cudaSetDevice(ctxs[i]->device));
        AMPR__CU(err, cudaEventCreateWithFlags(&r->ev[i], cudaEventDisableTiming));
    }
    return AMPR_OK;
}

ampr_status ampr__cuda_reduce_local(ampr__cuda *const *ctxs, int n, int use_nccl,
                                    ampr__cuda_reduce **out, ampr__err *err) {
    ampr__cuda_reduce *r = NULL;
    AMPR__TRY(reduce_alloc(n, &r, err));
    ampr_status st = reduce_local_init(r, ctxs, use_nccl, err);
    if (st != AMPR_OK) {
        ampr__cuda_reduce_free(r);
        return st;
    }
    *out = r;
    return AMPR_OK;
}

ampr_status ampr__cuda_reduce_rank(ampr__cuda *c, int n_ranks, int rank,
                                   const unsigned char id[AMPR__CUDA_COMM_ID_BYTES],
                                   int64_t timeout_ms, ampr__cuda_reduce **out, ampr__err *err) {
    ampr__cuda_reduce *r = NULL;
    AMPR__TRY(reduce_alloc(1, &r, err));
    r->nccl = 1;
    r->ctx[0] = c;
    ampr_status st = ampr__cuda_comm_init_rank(c, n_ranks, rank, id, timeout_ms, &r->comm[0], err);
    if (st != AMPR_OK) {
        ampr__cuda_reduce_free(r);
        return st;
    }
    *out = r;
    return AMPR_OK;
}

const char *ampr__cuda_reduce_kind(const ampr__cuda_reduce *r) { return r->nccl ? "nccl" : "copy"; }

/* acc[e] = ((acc[e] + parts[0][e]) + parts[1][e]) + ...: rank order, as the
 * CPU's all-reduce (lib/forward/forward.c, allreduce_add). */
__global__ void sum_ranks_kernel(float *acc, const float *__restrict__ parts, int n_parts,
                                 size_t count) {
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < count;
         e += (size_t)gridDim.x * blockDim.x) {
        float s = acc[e];
        for (int k = 0; k < n_parts; k++) s = __fadd_rn(s, parts[(size_t)k * count + e]);
        acc[e] = s;
    }
}

/* Rank 0's stream does all the copying: it waits for every partial, gathers
 * them into tmp, sums, and writes the sum back to every rank; the other ranks'
 * streams then wait for it. So no rank overwrites a buffer another stream
 * still reads: rank i writes bufs[i] next only after the event, rank 0
 * writes bufs[0] and tmp only on its own stream. */
static ampr_status copy_sum(ampr__cuda_reduce *r, float *const *bufs, size_t count,
                            ampr__err *err) {
    ampr__cuda *c0 = r->ctx[0];
    size_t bytes = count * sizeof(float), need = (size_t)(r->n - 1) * count;
    if (need > r->tmp_count) {
        AMPR__TRY(ampr__cuda_sync(c0, err)); /* tmp may still be read */
        ampr__cuda_free(c0, r->tmp);
        r->tmp = NULL;
        r->tmp_count = 0;
        void *p = NULL;
        size_t cap = need < ((size_t)1 << 18) ? ((size_t)1 << 18) : need;
        AMPR__TRY(ampr__cuda_alloc(c0, cap * sizeof(float), &p, err));
        r->tmp = (float *)p;
        r->tmp_count = cap;
    }
    for (int i = 1; i < r->n; i++) {
        AMPR__CU(err, cudaSetDevice(r->ctx[i]->device));
        AMPR__CU(err, cudaEventRecord(r->ev[i], r->ctx[i]->stream));
    }
    AMPR__CU(err, cudaSetDevice(c0->device));
    for (int i = 1; i < r->n; i++) {
        AMPR__CU(err, cudaStreamWaitEvent(c0->stream, r->ev[i], 0));
        AMPR__CU(err, cudaMemcpyPeerAsync(r->tmp + (size_t)(i - 1) * count, c0->device, bufs[i],
                                          r->ctx[i]->device, bytes, c0->stream));
    }
    sum_ranks_kernel<<<ampr__cuda_grid(count, 256), 256, 0, c0->stream>>>(bufs[0], r->tmp,
                                                                           r->n - 1, count);
    AMPR__CU_LAUNCHED(err, "sum_ranks");
    for (int i = 1; i < r->n; i++)
        AMPR__CU(err, cudaMemcpyPeerAsync(bufs[i], r->ctx[i]->device, bufs[0], c0->device, bytes,
                                          c0->stream));
    AMPR__CU(err, cudaEventRecord(r->ev[0], c0->stream));
    for (int i = 1; i < r->n; i++) {
        AMPR__CU(err, cudaSetDevice(r->ctx[i]->device));
        AMPR__CU(err, cudaStreamWaitEvent(r->ctx[i]->stream, r->ev[0], 0));
    }
    return AMPR_OK;
}

ampr_status ampr__cuda_reduce_sum(ampr__cuda_reduce *r, float *const *bufs, size_t count,
                                  ampr__err *err) {
    if (!count) return AMPR_OK;
    if (r->nccl) return ampr__cuda_allreduce_sum_group(r->comm, bufs, r->n, count, err);
    return r->n > 1 ? copy_sum(r, bufs, count, err) : AMPR_OK;
}
