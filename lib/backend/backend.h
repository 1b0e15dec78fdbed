/*
 * backend.h -- the seam between the request loop (generate.c) and the device
 * that runs the forward pass.
 *
 * A context has one backend, chosen at open ("device" in the config). The
 * CPU backend is lib/forward/forward.c itself; the CUDA backend
 * (backend_cuda.c over cuda/, only when built with AMPR_HAVE_CUDA) keeps
 * every tier's weights and KV pages in device memory. Page accounting is the
 * CPU arena's in both cases (lib/kv: free list, block tables, KV_FULL): a
 * device backend mirrors pages by id, so the same ampr__kv_seq drives both.
 *
 * Every op has the contract of the CPU function it replaces (engine.h):
 * forward = ampr__forward, decode_batch = ampr__forward_batch. Logits come
 * back to the host (s->logits), for sampling there, except the rows whose
 * request needs less (ampr__row_want, sampler.h): a greedy request only the
 * argmax, a top-k one the largest m logits, the fallback's monitor the
 * entropy, and its check the KL against rows the backend kept in a ring;
 * a device computes those there and copies bytes, not the row.
 */
#ifndef AMPR_BACKEND_H
#define AMPR_BACKEND_H

#include "../engine.h"
#include "../sampler/sampler.h"

typedef struct ampr__backend ampr__backend;

typedef struct ampr__backend_ops {
    const char *name;
    /* Make tier t resident (weights and a KV page pool mirroring t->kv).
     * On success the device holds its own copy: api.c then frees the host's
     * (ampr__tier_drop_host), leaving t->kv's page accounting. */
    ampr_status (*tier_upload)(ampr__backend *b, ampr_ctx *c, ampr__tier *t, ampr__err *err);
    /* n tokens of one sequence at positions seq->n_tokens..; the last
     * n_logits rows of logits to s->logits (want NULL), or what want[i]
     * asks of row i, as decode_batch. */
    ampr_status (*forward)(ampr__backend *b, ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq,
                           const int32_t *tokens, int32_t n, int32_t n_logits,
                           ampr__row_want *want, ampr__scratch *s, ampr__err *err);
    /* One next token for each of n sequences (distinct, same tier). want
     * NULL: row i of s->logits gets sequence i's next-token logits. Else
     * want[i] says what the host needs of row i (sampler.h): the row itself
     * (AMPR__WANT_ROW), or its argmax (AMPR__WANT_ARGMAX: want[i].argmax, by
     * ampr__argmax's rule), or its m largest logits (AMPR__WANT_CANDS:
     * want[i].n_cands = m with the list in cand_vals / cand_ids, as
     * ampr__topk_cands makes it, when that list decides the draw; else
     * n_cands = 0 and the row comes instead), or the token of a
     * temperature-only draw (AMPR__WANT_DRAW: want[i].drawn as
     * ampr__sample_walk says it, or -1 and the row comes instead), or none
     * of those (AMPR__WANT_NONE); and with any of them the monitor's: the entropy
     * (stats), the KL against a kept row (kl_ring, a ring of this backend's),
     * and keeping the row in a ring slot (keep), in that order. Rows not
     * asked for are left alone. */
    ampr_status (*decode_batch)(ampr__backend *b, ampr_ctx *c, ampr__tier *t,
                                ampr__kv_seq *const *seqs, const int32_t *tokens, int32_t n,
                                ampr__row_want *want, ampr__scratch *s, ampr__err *err);
    /* A ring of r->n_rows logits rows where the passes make them (r->dev);
     * ring_free gives it back (r->dev NULL: nothing). */
    ampr_status (*ring_new)(ampr__backend *b, ampr_ctx *c, ampr__ring *r, ampr__err *err);
    void (*ring_free)(ampr__backend *b, ampr_ctx *c, ampr__ring *r);
    /* Memory bandwidth the device's decode is bound by, GB/s (for ampr bench):
     * the sum over the backend's distinct devices; 0 when it cannot tell. */
    double (*mem_gbs)(ampr__backend *b);
    void (*close)(ampr__backend *b); /* frees everything the backend holds */
    /* Device memory in use, bytes (for ampr bench): the sum over the
     * backend's distinct devices of what they report in use (every
     * process's); 0 when it cannot tell; NULL: none. */
    uint64_t (*mem_used)(ampr__backend *b);
} ampr__backend_ops;

struct ampr__backend {
    const ampr__backend_ops *ops;
    void *impl; /* the backend's own state */
};

/* The request loop's entry points: ctx->backend when set, else the CPU. */
ampr_status ampr__backend_forward(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq,
                                  const int32_t *tokens, int32_t n, int32_t n_logits,
                                  ampr__row_want *want, ampr__scratch *s, ampr__err *err);
ampr_status ampr__backend_decode_batch(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *const *seqs,
                                       const int32_t *tokens, int32_t n, ampr__row_want *want,
                                       ampr__scratch *s, ampr__err *err);
/* What the CPU backend reads from the rows[0..n) (each vocab wide) it made
 * for want[0..n) (sampler.h ampr__row_want; want NULL: nothing): the host's
 * reference of what a device computes where its rows are. undecided: call
 * every list and walk undecided (tests; the row comes instead). The rows
 * stay as they came (a penalty is applied for the argmax or list and taken
 * back). */
ampr_status ampr__host_wants(float *rows, int32_t n, int32_t vocab, ampr__row_want *want, int undecided,
                             ampr__err *err);
/* A request's ring of n_rows logits rows (the monitor's, sampler.h), where
 * the context's passes make them; *out NULL on failure. */
ampr_status ampr__backend_ring_new(ampr_ctx *c, int32_t n_rows, ampr__ring **out, ampr__err *err);
void ampr__backend_ring_free(ampr_ctx *c, ampr__ring *r); /* NULL-safe */
void ampr__backend_close(ampr_ctx *c); /* NULL-safe; the context falls back to none */
/* ctx->backend's mem_gbs, or 0 on the CPU (which measures its own). */
double ampr__backend_mem_gbs(ampr_ctx *c);
/* ctx->backend's mem_used, or 0 (the CPU, a backend that cannot tell). */
uint64_t ampr__backend_mem_used(ampr_ctx *c);

/* Tests only (tests/test_backend.c): when set, "device": "cuda" and "auto"
 * open this stand-in instead of the CUDA backend, in any build, so that the
 * open's device path (streamed uploads, freed host copies, the fallbacks)
 * runs without a GPU. NULL in the library's own use. */
typedef ampr_status (*ampr__backend_open_fn)(ampr_ctx *c, ampr__backend **out, char *name,
                                             size_t name_len, ampr__err *err);
extern ampr__backend_open_fn ampr__backend_test_open;

/* ctx->backend's tier_upload: make t resident on the device. */
ampr_status ampr__backend_tier_upload(ampr_ctx *c, ampr__tier *t, ampr__err *err);

#if AMPR_HAVE_CUDA
/* Open the GPUs of c's config ("gpus", "tp_size", "tp_rank") with their work
 * buffers, before any tier exists (c->hp and c->cfg set); api.c then uploads
 * each tier as it is built (ampr__backend_tier_upload). *out NULL on failure.
 * Fills name (for ampr_model_info.device). */
ampr_status ampr__backend_cuda_open(ampr_ctx *c, ampr__backend **out, char *name, size_t name_len,
                                    ampr__err *err);
/* One rank per process ("tp_rank"): a collective at the end of every rank's
 * open, *all_ok = every rank's ok (bounded by "tp_timeout_ms"), so that a
 * rank whose open failed after joining does not leave the others' first
 * pass waiting for it. Otherwise *all_ok = ok. */
ampr_status ampr__backend_cuda_group_ok(ampr_ctx *c, int ok, int *all_ok, ampr__err *err);
/* One rank per process: a call that fails on one rank with a failure of its
 * own (NOMEM, BACKEND, INTERNAL) after it began a pass leaves the ranks at
 * different passes: the next call's collectives would pair with the others'
 * unfinished ones. So it aborts the group (ampr__cuda_reduce_abort): the
 * others' pending and later passes fail, and this rank's later ones too.
 * passes: ampr__backend_cuda_passes() before the call. Else nothing. */
uint64_t ampr__backend_cuda_passes(ampr_ctx *c);
void ampr__backend_cuda_call_failed(ampr_ctx *c, ampr_status st, uint64_t passes);
#else
static inline uint64_t ampr__backend_cuda_passes(ampr_ctx *c) {
    (void)c;
    return 0;
}
static inline void ampr__backend_cuda_call_failed(ampr_ctx *c, ampr_status st, uint64_t passes) {
    (void)c;
    (void)st;
    (void)passes;
}
#endif

#endif
