/*
 * kv.h -- paged KV-cache arenas.
 *
 * Each tier owns one arena: a fixed pool of pages, each holding `block_size`
 * token positions of keys and values for every layer. A sequence owns a block
 * table (page ids in position order), so its KV needs no contiguous memory
 * and pages go back to the free list the moment a request ends. Arenas are
 * isolated: a tier that runs out of pages fails its own requests with
 * AMPR_ERR_KV_FULL and cannot touch another tier's memory.
 *
 * Page layout, elements of type `dtype` (f32 or f16), for an arena shared by
 * n_ranks tensor-parallel ranks (1 without TP; see forward/tp.h):
 *   K: [n_pages][n_ranks][n_layers][block_size][kv_dim / n_ranks]   (V the same)
 * so one layer's keys of one rank for one page are a contiguous
 * block_size x (kv_dim / n_ranks) tile. A sequence has one block table for
 * all ranks: page p holds every rank's slice of its positions, so reserving,
 * releasing, AMPR_ERR_KV_FULL and page accounting do not depend on n_ranks.
 * (On GPUs each rank keeps its own [n_pages][n_layers][block][kv_dim/n_ranks]
 * pool, indexed by the same page ids; on the CPU the ranks share memory.)
 */
#ifndef AMPR_KV_H
#define AMPR_KV_H

#include "../common/common.h"

/* AMPR__KV_Q8: each head's vector at each position is int8 (absmax/127 per
 * head, round to nearest even) followed, after the rank's whole slice, by the
 * per-head fp32 scales: a position holds [kv_dim/n_ranks int8][heads fp32]. */
typedef enum ampr__kv_dtype { AMPR__KV_F32 = 0, AMPR__KV_F16 = 1, AMPR__KV_Q8 = 2 } ampr__kv_dtype;

typedef struct ampr__kv_arena ampr__kv_arena;

typedef struct ampr__kv_seq {
    ampr__kv_arena *arena;
    int32_t *blocks;  /* page ids, position p lives in blocks[p / block_size] */
    int32_t n_blocks;
    int32_t n_tokens; /* positions whose K/V have been written */
} ampr__kv_seq;

/* n_ranks >= 1 must divide kv_dim; head_dim must divide kv_dim / n_ranks. */
ampr_status ampr__kv_arena_new(int32_t n_layers, int32_t kv_dim, int32_t head_dim,
                               int32_t block_size, int32_t n_pages, ampr__kv_dtype dtype,
                               int32_t n_ranks, ampr__kv_arena **out, ampr__err *err);
/* The same; with_pages = 0 makes an arena of accounting only (no page
 * storage, as after ampr__kv_arena_drop_pages): for a tier a device serves. */
ampr_status ampr__kv_arena_new_ex(int32_t n_layers, int32_t kv_dim, int32_t head_dim,
                                  int32_t block_size, int32_t n_pages, ampr__kv_dtype dtype,
                                  int32_t n_ranks, int with_pages, ampr__kv_arena **out,
                                  ampr__err *err);
/* Bytes of K (or V) per position and rank (the element data, plus the
 * per-head scales for AMPR__KV_Q8). */
size_t ampr__kv_pos_bytes(const ampr__kv_arena *a);
void ampr__kv_arena_free(ampr__kv_arena *a);
/* Free the arena's page storage but keep its accounting (free list, block
 * tables, sizes, ampr__kv_bytes): for a tier whose pages live on a device
 * that mirrors them by id. ampr__kv_k / ampr__kv_v must not be called after. */
void ampr__kv_arena_drop_pages(ampr__kv_arena *a);
int ampr__kv_has_pages(const ampr__kv_arena *a); /* 0 after ampr__kv_arena_drop_pages */

int32_t ampr__kv_block_size(const ampr__kv_arena *a);
int32_t ampr__kv_pages_total(const ampr__kv_arena *a);
int32_t ampr__kv_pages_used(ampr__kv_arena *a); /* takes the arena lock */
uint64_t ampr__kv_bytes(const ampr__kv_arena *a);
ampr__kv_dtype ampr__kv_dtype_of(const ampr__kv_arena *a);
size_t ampr__kv_elem_size(const ampr__kv_arena *a);

/* Make seq hold pages for positions [0, n_positions). All or nothing: on
 * AMPR_ERR_KV_FULL the sequence is unchanged. Thread-safe. */
ampr_status ampr__kv_seq_reserve(ampr__kv_seq *seq, ampr__kv_arena *a, int32_t n_positions,
                                 ampr__err *err);
/* As above, but when the pages could become free (other sequences hold
 * them), wait up to wait_ms milliseconds for releases before failing. */
ampr_status ampr__kv_seq_reserve_wait(ampr__kv_seq *seq, ampr__kv_arena *a, int32_t n_positions,
                                      int64_t wait_ms, ampr__err *err);
/* Give every page back; the seq is empty again. NULL-safe, idempotent. */
void ampr__kv_seq_release(ampr__kv_seq *seq);

int32_t ampr__kv_ranks(const ampr__kv_arena *a);

/* Address of rank's slice (kv_dim / n_ranks elements) of the K (or V) vector
 * of layer l at position pos of seq. With one rank: the whole vector. */
void *ampr__kv_k(const ampr__kv_seq *seq, int32_t rank, int32_t l, int32_t pos);
void *ampr__kv_v(const ampr__kv_seq *seq, int32_t rank, int32_t l, int32_t pos);

#endif
