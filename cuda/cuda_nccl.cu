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
    ncclComm_t comm; /* NULL once aborted */
#endif
    int nonblocking;    /* a process-per-rank communicator (comm_init_rank, NCCL 2.14+) */
    int64_t timeout_ms; /* nonblocking: the longest wait on the other ranks (0: no limit) */
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

void ampr__cuda_comm_abort(ampr__cuda_comm *comm) {
    if (comm->comm) ncclCommAbort(comm->comm);
    comm->comm = NULL; /* every later call on it: aborted() */
}

static ampr_status aborted(ampr__err *err) {
    return ampr__fail(err, AMPR_ERR_BACKEND,
                      "NCCL: this tensor-parallel group was aborted (a rank failed or stopped "
                      "answering); open the context again");
}

/* One rank per process joins with a nonblocking communicator (NCCL 2.14+),
 * so that a rank that never arrives, or stops answering, costs a timeout
 * instead of a process stuck for ever: init runs in NCCL's own thread while
 * this one polls; every later call may answer ncclInProgress while NCCL
 * finishes it, which settle() waits out before the next call (as NCCL
 * requires); waits for the stream poll the communicator's state too
 * (comm_wait). At the deadline, or on a peer's failure, the communicator is
 * aborted: its kernels end and every later call fails. The communicators of
 * one process's GPUs (ncclCommInitAll) stay blocking. */
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
#define AMPR__NCCL_NONBLOCKING 1

static void nap_1ms(void) {
    struct timespec nap = {0, 1000000};
    nanosleep(&nap, NULL);
}

/* r from a call on cm: wait while it is in progress; the deadline aborts. */
static ampr_status settle(ampr__cuda_comm *cm, ncclResult_t r, const char *what, ampr__err *err) {
    double t0 = ampr__now_ms();
    while (r == ncclInProgress) {
        if (cm->timeout_ms > 0 && ampr__now_ms() - t0 > (double)cm->timeout_ms) {
            ampr__cuda_comm_abort(cm);
            return ampr__fail(err, AMPR_ERR_BACKEND,
                              "NCCL: %s did not complete within %lld ms (\"tp_timeout_ms\"): "
                              "another rank stopped answering; the group was aborted",
                              what, (long long)cm->timeout_ms);
        }
        sched_yield();
        if (ncclCommGetAsyncError(cm->comm, &r) != ncclSuccess) r = ncclInternalError;
    }
    if (r != ncclSuccess) {
        ampr__cuda_comm_abort(cm);
        if (r == ncclRemoteError)
            return ampr__fail(err, AMPR_ERR_BACKEND,
                              "NCCL: %s failed: another rank of the group failed or was lost (%s); "
                              "the group was aborted: open the context again", what,
                              ncclGetErrorString(r));
        return ampr__nccl_fail(err, r, what, __FILE__, __LINE__);
    }
    return AMPR_OK;
}

/* Wait until cm's stream is idle, watching the communicator: a peer's
 * failure or the deadline aborts it rather than waiting for ever. */
static ampr_status comm_wait(ampr__cuda_comm *cm, ampr__err *err) {
    if (!cm->comm) return aborted(err);
    AMPR__CU(err, cudaSetDevice(cm->c->device));
    double t0 = ampr__now_ms();
    for (;;) {
        cudaError_t q = cudaStreamQuery(cm->c->stream);
        if (q == cudaSuccess) return AMPR_OK;
        if (q != cudaErrorNotReady) return ampr__cuda_fail(err, q, "cudaStreamQuery", __FILE__, __LINE__);
        ncclResult_t a = ncclSuccess;
        if (ncclCommGetAsyncError(cm->comm, &a) != ncclSuccess || (a != ncclSuccess && a != ncclInProgress)) {
            ampr__cuda_comm_abort(cm);
            return ampr__fail(err, AMPR_ERR_BACKEND,
                              "NCCL: a collective failed (%s): another rank of the group failed; "
                              "the group was aborted", ncclGetErrorString(a));
        }
        double waited = ampr__now_ms() - t0;
        if (cm->timeout_ms > 0 && waited > (double)cm->timeout_ms) {
            ampr__cuda_comm_abort(cm);
            return ampr__fail(err, AMPR_ERR_BACKEND,
                              "NCCL: the group's work did not finish within %lld ms "
                              "(\"tp_timeout_ms\"): another rank stopped answering; the group was "
                              "aborted", (long long)cm->timeout_ms);
        }
        /* a decode pass ends within milliseconds: poll closely first, so the
         * wait adds no latency a synchronize would not; then nap */
        if (waited < 5.0) sched_yield();
        else nap_1ms();
    }
}
#else
#define AMPR__NCCL_NONBLOCKING 0
#endif

ampr_status ampr__cuda_comm_init_rank(ampr__cuda *c, int n_ranks, int rank,
                                      const unsigned char id[AMPR__CUDA_COMM_ID_BYTES],
                                      int64_t timeout_ms, ampr__cuda_cancel_fn cancel,
                                      void *cancel_user, ampr__cuda_comm **out, ampr__err *err) {
    *out = NULL;
    if (n_ranks <= 0 || rank < 0 || rank >= n_ranks)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "rank %d of %d", rank, n_ranks);
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    AMPR__CU(err, cudaSetDevice(c->device));
    ampr__cuda_comm *cm = (ampr__cuda_comm *)ampr__calloc(1, sizeof *cm);
    if (!cm) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a communicator");
    cm->c = c;
    cm->timeout_ms = timeout_ms;
#if AMPR__NCCL_NONBLOCKING
    cm->nonblocking = 1;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&cm->comm, n_ranks, u, rank, &config);
    double t0 = ampr__now_ms(), asked = t0;
    while (r == ncclInProgress) {
        if (cancel && ampr__now_ms() - asked >= 100.0) {
            asked = ampr__now_ms();
            if (cancel(cancel_user)) {
                ampr__cuda_comm_abort(cm);
                ampr__free(cm);
                return ampr__fail(err, AMPR_ERR_CANCELLED,
                                  "open cancelled while rank %d of %d waited for the others",
                                  rank, n_ranks);
            }
        }
        if (timeout_ms > 0 && ampr__now_ms() - t0 > (double)timeout_ms) {
            ampr__cuda_comm_abort(cm);
            ampr__free(cm);
            return ampr__fail(err, AMPR_ERR_BACKEND,
                              "NCCL: rank %d of %d: the other ranks did not all join within "
                              "%lld ms (\"tp_timeout_ms\")",
                              rank, n_ranks, (long long)timeout_ms);
        }
        nap_1ms();
        if (ncclCommGetAsyncError(cm->comm, &r) != ncclSuccess) r = ncclInternalError;
    }
    if (r != ncclSuccess) {
        ampr__cuda_comm_abort(cm);
        ampr__free(cm);
        return ampr__nccl_fail(err, r, "ncclCommInitRankConfig", __FILE__, __LINE__);
    }
#else
    /* an old NCCL: init blocks until every rank arrives */
    (void)cancel;
    (void)cancel_user;
    ncclResult_t r = ncclCommInitRank(&cm->comm, n_ranks, u, rank);
    if (r != ncclSuccess) {
        ampr__free(cm);
        return ampr__nccl_fail(err, r, "ncclCommInitRank", __FILE__, __LINE__);
    }
#endif
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
    if (comm->nonblocking) {
        /* finalize (flushes outstanding work; in progress for a while on a
         * nonblocking communicator), then destroy; a failure aborts */
        ampr__err e = {AMPR_OK, {0}};
        if (comm->comm && settle(comm, ncclCommFinalize(comm->comm), "ncclCommFinalize", &e) == AMPR_OK) {
            ncclCommDestroy(comm->comm);
            comm->comm = NULL;
        }
        ampr__cuda_comm_abort(comm); /* only if finalizing failed without aborting (settle aborts) */
        ampr__free(comm);
        return;
    }
#endif
    /* blocking communicators (one process's GPUs): a plain destroy, which
     * does not wait for the other ranks' */
    ncclCommDestroy(comm->comm);
    ampr__free(comm);
}

ampr_status ampr__cuda_allreduce_sum(ampr__cuda_comm *comm, float *buf, size_t count,
                                     ampr__err *err) {
    if (!comm->comm) return aborted(err);
#if AMPR__NCCL_NONBLOCKING
    if (comm->nonblocking) {
        return settle(comm, ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, comm->comm, comm->c->stream),
                      "ncclAllReduce", err);
    }
#endif
    AMPR__NCCL(err, ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, comm->comm,
                                  comm->c->stream));
    return AMPR_OK;
}

ampr_status ampr__cuda_allreduce_sum_group(ampr__cuda_comm *const *comms, float *const *bufs,
                                           int n, size_t count, ampr__err *err) {
    /* a process-per-rank communicator is alone in its group */
    if (n == 1) return ampr__cuda_allreduce_sum(comms[0], bufs[0], count, err);
    AMPR__NCCL(err, ncclGroupStart());
    ampr_status st = AMPR_OK;
    for (int i = 0; i < n && st == AMPR_OK; i++) {
        ncclResult_t r = ncclAllReduce(bufs[i], bufs[i], count, ncclFloat32, ncclSum,
                                       comms[i]->comm, comms[i]->c->stream);
        if (r != ncclSuccess) st = ampr__nccl_fail(err, r, "ncclAllReduce", __FILE__, __LINE__);
    }
    ncclResult_t r = ncclGroupEnd(); /* always close the group */
    if (st != AMPR_OK) return st;
    if (r != ncclSuccess) return ampr__nccl_fail(err, r, "ncclGroupEnd", __FILE__, __LINE__);
    return AMPR_OK;
}

ampr_status ampr__cuda_comm_wait(ampr__cuda_comm *comm, ampr__err *err) {
#if AMPR__NCCL_NONBLOCKING
    if (comm->nonblocking) return comm_wait(comm, err);
#endif
    return ampr__cuda_sync(comm->c, err);
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
                                      int64_t timeout_ms, ampr__cuda_cancel_fn cancel,
                                      void *cancel_user, ampr__cuda_comm **out, ampr__err *err) {
    (void)c; (void)n_ranks; (void)rank; (void)id; (void)timeout_ms; (void)cancel; (void)cancel_user;
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
void ampr__cuda_comm_abort(ampr__cuda_comm *comm) { (void)comm; }
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
ampr_status ampr__cuda_comm_wait(ampr__cuda_comm *comm, ampr__err *err) {
    return ampr__cuda_sync(comm->c, err);
}

#endif

/* ---- the all-reduce of a tensor-parallel group -------------------------------- */

struct ampr__cuda_reduce {
    int n;                               /* ranks this process drives */
    int n_group;                         /* ranks in the whole group */
    int nccl;                            /* 1: comm[], 0: the copy all-reduce */
    ampr__cuda *ctx[AMPR__TP_MAX];
    ampr__cuda_comm *comm[AMPR__TP_MAX];
    cudaEvent_t ev[AMPR__TP_MAX]; /* copy: rank i's partial is ready / the sum is */
    float *tmp;                          /* copy: on rank 0's device, (n-1) partials */
    size_t tmp_count;
    float *flag;                         /* process per rank: 1 float for ampr__cuda_reduce_agree */
};

void ampr__cuda_reduce_free(ampr__cuda_reduce *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        ampr__err e = {AMPR_OK, {0}};
        if (r->comm[i]) { /* bounded for a process-per-rank group */
            (void)ampr__cuda_comm_wait(r->comm[i], &e);
        } else if (r->ctx[i] && r->ctx[i]->stream) {
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
    if (r->flag) ampr__cuda_free(r->ctx[0], r->flag);
    (void)cudaGetLastError();
    ampr__free(r);
}

/* One rank per process (ampr__cuda_reduce_rank): a group whose other ranks
 * are elsewhere */
static int per_process(const ampr__cuda_reduce *r) { return r && r->nccl && r->n == 1; }

ampr_status ampr__cuda_reduce_wait(ampr__cuda_reduce *r, ampr__err *err) {
    if (per_process(r)) return ampr__cuda_comm_wait(r->comm[0], err);
    return AMPR_OK;
}

void ampr__cuda_reduce_abort(ampr__cuda_reduce *r) {
    if (per_process(r) && r->comm[0]) ampr__cuda_comm_abort(r->comm[0]);
}

ampr_status ampr__cuda_reduce_agree(ampr__cuda_reduce *r, int ok, int *all_ok, ampr__err *err) {
    *all_ok = ok;
    if (!per_process(r)) return AMPR_OK; /* one process: nobody else to ask */
    ampr__cuda *c = r->ctx[0];
    if (!r->flag) {
        void *p = NULL;
        AMPR__TRY(ampr__cuda_alloc(c, sizeof(float), &p, err));
        r->flag = (float *)p;
    }
    float mine = ok ? 1.0f : 0.0f, sum = 0.0f;
    AMPR__TRY(ampr__cuda_use(c, err));
    AMPR__CU(err, cudaMemcpyAsync(r->flag, &mine, sizeof mine, cudaMemcpyHostToDevice, c->stream));
    AMPR__TRY(ampr__cuda_allreduce_sum(r->comm[0], r->flag, 1, err));
    AMPR__CU(err, cudaMemcpyAsync(&sum, r->flag, sizeof sum, cudaMemcpyDeviceToHost, c->stream));
    AMPR__TRY(ampr__cuda_comm_wait(r->comm[0], err));
    *all_ok = ok && sum == (float)r->n_group;
    return AMPR_OK;
}

static ampr_status reduce_alloc(int n, ampr__cuda_reduce **out, ampr__err *err) {
    *out = NULL;
    if (n < 1 || n > AMPR__TP_MAX)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "%d tensor-parallel ranks in one process", n);
    *out = (ampr__cuda_reduce *)ampr__calloc(1, sizeof **out);
    if (!*out) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for an all-reduce");
    (*out)->n = n;
    (*out)->n_group = n;
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
                                   int64_t timeout_ms, ampr__cuda_cancel_fn cancel,
                                   void *cancel_user, ampr__cuda_reduce **out, ampr__err *err) {
    ampr__cuda_reduce *r = NULL;
    AMPR__TRY(reduce_alloc(1, &r, err));
    r->nccl = 1;
    r->n_group = n_ranks;
    r->ctx[0] = c;
    ampr_status st = ampr__cuda_comm_init_rank(c, n_ranks, rank, id, timeout_ms, cancel, cancel_user,
                                               &r->comm[0], err);
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
