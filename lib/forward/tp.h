/*
 * tp.h -- the tensor-parallel sharding plan: which rows and columns of each
 * layer matrix, which attention heads and which KV slice rank r of tp owns.
 * The CPU backend's simulated ranks (forward.c, tier.c) and the CUDA backend's
 * NCCL ranks use this one plan, so a checkpoint shards the same way on both.
 *
 * Megatron-style: column-parallel QKV and gate/up (a rank owns whole heads
 * and a contiguous range of hidden units), row-parallel wo and w_down (a rank
 * owns the input columns matching its heads / hidden units, all dim output
 * rows) followed by an all-reduce (sum over ranks, in rank order 0..tp-1).
 * Embedding, output and norms are replicated.
 *
 *   wqkv  [q_dim + 2*kv_dim][dim]  -> rank r: rows Q[q0, q0+q_len) | K[kv0, kv0+kv_len)
 *                                      | V[kv0, kv0+kv_len)   ([q_len + 2*kv_len][dim])
 *   wo    [dim][q_dim]             -> rank r: columns [q0, q0+q_len)     ([dim][q_len])
 *   w_gu  [2*hidden][dim]          -> rank r: gate rows [ff0, ff0+ff_len) | up rows the same
 *                                                                        ([2*ff_len][dim])
 *   w_down [dim][hidden]           -> rank r: columns [ff0, ff0+ff_len)  ([dim][ff_len])
 *   KV cache                       -> rank r: kv vector elements [kv0, kv0+kv_len)
 *
 * Header-only (static inline, plain C) so cuda/ can include it as is.
 */
#ifndef AMPR_FORWARD_TP_H
#define AMPR_FORWARD_TP_H

#include "model/model.h"

#define AMPR__TP_MAX 64

typedef struct ampr__tp_plan {
    int32_t tp, rank;
    int32_t head0, n_heads;       /* query heads [head0, head0 + n_heads) */
    int32_t kv_head0, n_kv_heads; /* kv heads [kv_head0, kv_head0 + n_kv_heads) */
    int32_t q0, q_len;            /* Q rows of wqkv = columns of wo: head0*hd, n_heads*hd */
    int32_t kv0, kv_len;          /* K (and V) rows of wqkv, KV vector slice: kv_head0*hd, ... */
    int32_t ff0, ff_len;          /* hidden units: gate/up rows, w_down columns */
} ampr__tp_plan;

/* Nonzero when tp ranks can shard this model: tp divides n_heads, n_kv_heads
 * and hidden_dim (whole heads per rank, GQA groups never split). */
static inline int ampr__tp_fits(const ampr__hparams *hp, int32_t tp) {
    return tp >= 1 && tp <= AMPR__TP_MAX && hp->n_heads % tp == 0 && hp->n_kv_heads % tp == 0 &&
           hp->hidden_dim % tp == 0;
}

/* The plan of rank (0 <= rank < tp) for a model where ampr__tp_fits(). */
static inline ampr__tp_plan ampr__tp_plan_of(const ampr__hparams *hp, int32_t tp, int32_t rank) {
    ampr__tp_plan p;
    p.tp = tp;
    p.rank = rank;
    p.n_heads = hp->n_heads / tp;
    p.head0 = rank * p.n_heads;
    p.n_kv_heads = hp->n_kv_heads / tp;
    p.kv_head0 = rank * p.n_kv_heads;
    p.q0 = p.head0 * hp->head_dim;
    p.q_len = p.n_heads * hp->head_dim;
    p.kv0 = p.kv_head0 * hp->head_dim;
    p.kv_len = p.n_kv_heads * hp->head_dim;
    p.ff_len = hp->hidden_dim / tp;
    p.ff0 = rank * p.ff_len;
    return p;
}

#endif
