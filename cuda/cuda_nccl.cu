/*
 * cuda_nccl.cu -- all-reduce for tensor parallelism over NCCL.
 *
 * Two ways to build communicators: one process driving several GPUs
 * (ncclCommInitAll over their contexts; collectives on them must be issued
 * as one group, see ampr__cuda_allreduce_sum_group), or one rank per process
 * (ncclCommInitRank with an id that rank 0 made and shared out of band).
 * Built without NCCL (no AMPR_HAVE_NCCL), every call is AMPR_ERR_UNSUPPORTED.
 */
#include "cuda_err.h"

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

ampr_status ampr__cuda_comm_init_rank(ampr__cuda *c, int n_ranks, int rank,
                                      const unsigned char id[AMPR__CUDA_COMM_ID_BYTES],
                                      ampr__cuda_comm **out, ampr__err *err) {
    *out = NULL;
    if (n_ranks <= 0 || rank < 0 || rank >= n_ranks)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "rank %d of %d", rank, n_ranks);
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    AMPR__CU(err, cudaSetDevice(c->device));
    ncclComm_t comm = NULL;
    AMPR__NCCL(err, ncclCommInitRank(&comm, n_ranks, u, rank));
    ampr__cuda_comm *cm = (ampr__cuda_comm *)ampr__calloc(1, sizeof *cm);
    if (!cm) {
        ncclCommDestroy(comm);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a communicator");
    }
    cm->c = c;
    cm->comm = comm;
    *out = cm;
    return AMPR_OK;
}

ampr_status ampr__cuda_comm_init_all(ampr__cuda *const *ctxs, int n, ampr__cuda_comm **out,
                                     ampr__err *err) {
    if (n <= 0 || n > 64) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "%d devices", n);
    for (int i = 0; i < n; i++) out[i] = NULL;
    int devs[64];
    ncclComm_t comms[64];
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
    ncclCommDestroy(comm->comm);
    ampr__free(comm);
}

ampr_status ampr__cuda_allreduce_sum(ampr__cuda_comm *comm, float *buf, size_t count,
                                     ampr__err *err) {
    AMPR__NCCL(err, ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, comm->comm,
                                  comm->c->stream));
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
                                      ampr__cuda_comm **out, ampr__err *err) {
    (void)c; (void)n_ranks; (void)rank; (void)id;
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
