/*
 * engine.h -- the inside of an ampr_ctx: the loaded checkpoint, its resident
 * tiers (weights + KV arena each), the shared fp32 vectors, the thread pool,
 * and the per-request state that the generate loop drives.
 *
 * Reading order for one ampr_generate() call:
 *   api.c (checks, errors) -> generate.c (the request loop: tokenizer ->
 *   router -> kv reserve -> forward.c -> sampler -> detokenize -> result).
 */
#ifndef AMPR_ENGINE_H
#define AMPR_ENGINE_H

#include <pthread.h>

#include "common/common.h"
#include "common/pool.h"
#include "fallback/fallback.h"
#include "forward/tp.h"
#include "kv/kv.h"
#include "metrics/metrics.h"
#include "model/model.h"
#include "quant/quant.h"
#include "router/router.h"

/* The four matmuls of a layer, in order; their inputs are what calibration
 * measures and what SmoothQuant factors apply to. */
enum { AMPR__MM_QKV = 0, AMPR__MM_O = 1, AMPR__MM_GU = 2, AMPR__MM_DOWN = 3, AMPR__MM_COUNT = 4 };

/* Activation statistics from a calibration run: per layer and matmul, the
 * largest |x| seen on each input channel (width: dim, q_dim, dim, hidden). */
typedef struct ampr__act_stats {
    float *absmax[AMPR__MM_COUNT]; /* [n_layers][width] each */
} ampr__act_stats;
int32_t ampr__mm_width(const ampr__hparams *hp, int mm);

/* ---- configuration (config.c parses the JSON given to ampr_open) -------- */

typedef struct ampr__config {
    int n_tiers;
    ampr_tier tiers[AMPR_TIER_COUNT]; /* top first */
    int threads;
    int32_t context_length;           /* 0 = the model's */
    int32_t kv_block_size;
    int64_t kv_arena_tokens;          /* 0 = derive */
    int64_t kv_arena_bytes;           /* 0 = derive */
    int kv_dtype;                     /* -1 = per tier default, else ampr__kv_dtype */
    int64_t kv_wait_ms;               /* how long a request waits for free pages (0: fail at once) */
    int device;                       /* 0 cpu, 1 auto, 2 cuda */
    int nf4_double_quant;             /* "nf4": {"double_quant": true}: absmax in 8 bits */
    int nf4_bf16_act;                 /* "nf4": {"activations": "bf16"} */
    int tp_size;                      /* tensor-parallel ranks (1: none); see forward/tp.h */
    int n_gpus;                       /* "gpus": 0 = default */
    int32_t gpus[AMPR__TP_MAX];       /* GPU of each rank this process drives */
    int tp_allreduce;                 /* 0 auto, 1 nccl, 2 copy (CUDA, several ranks) */
    int tp_rank;                      /* -1, or this process's rank ("tp_rank", one per process) */
    int64_t tp_timeout_ms;            /* how long tp_rank waits for the other ranks to join (0: no limit) */
    unsigned char tp_id[AMPR_TP_ID_LEN / 2]; /* "tp_id" decoded (with tp_rank) */
    ampr__router_config router;
    ampr__fallback_config fallback;
    /* from a calibration file ("calibration" key): SmoothQuant inputs for INT8 */
    float smooth_alpha;               /* 0: no smoothing */
    ampr__act_stats calib_stats;      /* owned; NULL arrays when absent */
    size_t calib_len[AMPR__MM_COUNT]; /* floats in each calib_stats array */
} ampr__config;

void ampr__config_free(ampr__config *c);

void ampr__config_defaults(ampr__config *c);
ampr_status ampr__config_parse(const char *json, ampr__config *c, ampr__err *err);

/* ---- tiers -------------------------------------------------------------- */

typedef struct ampr__tier_layer {
    ampr__qmat wqkv;   /* [q_dim + 2*kv_dim][dim]: Q rows, then K, then V */
    ampr__qmat wo;     /* [dim][q_dim] */
    ampr__qmat w_gu;   /* [2*hidden][dim]: gate rows, then up rows */
    ampr__qmat w_down; /* [dim][hidden] */
    /* SmoothQuant factors s per input channel of each matmul (INT8 tier with
     * a calibration file), else NULL: weights were built as W diag(s), so the
     * forward pass divides that matmul's input by s. */
    float *smooth[AMPR__MM_COUNT];
} ampr__tier_layer;



typedef struct ampr__tier {
    ampr_tier id;
    ampr__qtype qtype;
    const ampr__qtraits *qt;
    ampr__qmat embd;          /* [vocab][dim] */
    ampr__qmat output;        /* [vocab][dim]; unused when output_is_embd */
    int output_is_embd;
    int32_t tp;               /* tensor-parallel ranks the layers are sharded over (>= 1) */
    ampr__tier_layer *layers; /* [n_layers][tp]: rank r's shard of layer l (forward/tp.h) */
    ampr__kv_arena *kv;
    uint64_t weight_bytes;
    /* Set once a device backend holds the tier (api.c, after its upload):
     * the host copy of the weights and the KV page storage are freed, only
     * shapes, byte counts and the arena's page accounting remain, and the
     * CPU forward pass refuses the tier (ampr__tier_drop_host). */
    int device_only;
    /* Decode batching (generate.c): requests on this tier queue their
     * next-token steps, and whichever finds the tier idle runs the whole
     * queue as one batched forward pass. */
    pthread_mutex_t batch_mu;
    pthread_cond_t batch_cv;
    struct ampr__step *queue, *queue_tail;
    int batch_busy;
    int32_t n_queued;              /* steps in the queue */
    int32_t n_decoding;            /* requests generating on this tier (they queue steps) */
    int batch_ready;               /* mutex and condition initialised */
    uint64_t n_batches, n_batched; /* decode batches run, and steps in them (under batch_mu) */
    struct ampr__scratch *batch_scratch; /* allocated by the first batch */
} ampr__tier;

struct ampr_ctx {
    ampr__err open_err;       /* why ampr_open failed, if it did */
    char device[96];          /* the backend in use and why (ampr_model_info.device) */
    int ready;
    ampr__model *model;
    ampr__hparams hp;         /* the model's, context_length capped by the config */
    ampr__config cfg;
    float *norms;             /* fp32, shared by all tiers: [L][dim] attn, [L][dim] ffn, [dim] final */
    float *rope_cos, *rope_sin; /* [context_length][head_dim/2] */
    int n_tiers;
    ampr__tier tiers[AMPR_TIER_COUNT]; /* top first */
    ampr__pool *pool;
    pthread_mutex_t compute_lock;   /* one forward step on the pool at a time */
    ampr__metrics metrics;          /* counters and histograms (lib/metrics), lock-free */
    struct ampr__backend *backend;  /* device backend (lib/backend); NULL: the CPU forward */
    ampr_progress_fn open_progress; /* ampr_open_ex's callback, during the open only */
    void *open_user;
    int full_logits;                /* AMPR_FULL_LOGITS=1 at open: every decode step brings
                                     * its whole row back (generate.c; a switch to compare) */
    int test_lists_undecided;       /* tests only: the CPU pass calls every candidate list
                                     * and draw undecided, so the row comes instead (backend.c) */
    uint64_t test_rows_back;        /* tests only: decode rows that came back whole
                                     * (generate.c run_batch; atomic) */
    uint64_t test_nucleus_lists;    /* tests only: decode steps that asked for a nucleus's
                                     * list (generate.c; atomic) */
};

static inline const float *ampr__attn_norm(const ampr_ctx *c, int l) {
    return c->norms + (size_t)l * (size_t)c->hp.dim;
}
static inline const float *ampr__ffn_norm(const ampr_ctx *c, int l) {
    return c->norms + ((size_t)c->hp.n_layers + (size_t)l) * (size_t)c->hp.dim;
}
static inline const float *ampr__final_norm(const ampr_ctx *c) {
    return c->norms + 2 * (size_t)c->hp.n_layers * (size_t)c->hp.dim;
}

static inline const ampr__tier_layer *ampr__tier_shard(const ampr__tier *t, int32_t l, int32_t r) {
    return &t->layers[(size_t)l * (size_t)t->tp + (size_t)r];
}

ampr__tier *ampr__ctx_tier(ampr_ctx *c, ampr_tier id); /* NULL if not resident */

/* tier.c: build every configured tier from the checkpoint, top first. When
 * done is given it runs after each tier is built, before the next one starts
 * (api.c: upload the tier to the GPU and drop its host copy, so the host
 * never holds more than one tier's weights); its failure ends the build. */
typedef ampr_status (*ampr__tier_done_fn)(ampr_ctx *c, ampr__tier *t, void *user, ampr__err *err);
ampr_status ampr__tiers_build(ampr_ctx *c, ampr_progress_fn progress, void *user,
                              ampr__tier_done_fn done, void *done_user, ampr__err *err);
void ampr__tiers_free(ampr_ctx *c);
/* Free t's host weights (keeping shapes and byte counts) and its KV page
 * storage (keeping the page accounting), and mark it device_only. */
void ampr__tier_drop_host(ampr_ctx *c, ampr__tier *t);
/* tier_nf4.c: when qt is NF4 / NF4_DQ and the parts are NF4 checkpoint
 * tensors that concatenate block-exactly, copy them into dst (*done = 1);
 * otherwise leave dst alone (*done = 0) and let tier.c requantize. */
ampr_status ampr__tier_nf4_copy(const ampr__qtraits *qt, const ampr__tensor *const *parts,
                                int n_parts, ampr__qmat *dst, int *done, ampr__err *err);

/* ---- the forward pass (forward.c) --------------------------------------- */

/* One tensor-parallel rank's activations (widths are the rank's shard's). */
typedef struct ampr__rank_scratch {
    float *xb;     /* [max_tokens][dim] normed input (each rank its own copy) */
    float *qkv;    /* [max_tokens][q_len + 2*kv_len] */
    float *att;    /* [max_tokens][q_len] */
    float *hb;     /* [max_tokens][2*ff_len] */
    float *hb2;    /* [max_tokens][ff_len] */
    float *part;   /* [max_tokens][dim] row-parallel partial sum, input of the all-reduce */
    float *scores; /* [context_length] */
    void *act;     /* prepared activations */
} ampr__rank_scratch;

/* Scratch for one request, sized for up to max_tokens tokens per call. */
typedef struct ampr__scratch {
    int32_t max_tokens;
    float *x, *xb, *qkv, *att, *hb, *hb2; /* activations, [max_tokens][...] */
    float *scores;                        /* [n_threads][context_length] */
    void *act;                            /* prepared activations for the tier's matmul */
    size_t act_bytes;
    int32_t tp;                           /* ranks (cfg.tp_size) */
    ampr__rank_scratch *rank;             /* [tp] when tp > 1, else NULL */
    int32_t max_logits;
    float *logits;                        /* [max_logits][vocab] */
    ampr__act_stats *stats;               /* when set, forward records activation ranges */
} ampr__scratch;

/* max_logits: most rows of logits one call may ask for (1..max_tokens). */
ampr_status ampr__scratch_new(const ampr_ctx *c, int32_t max_tokens, int32_t max_logits,
                              ampr__scratch *s, ampr__err *err);
void ampr__scratch_free(ampr__scratch *s);

/* Run tokens[0..n) at positions seq->n_tokens.. through the tier, writing
 * their K/V into seq (which must hold pages for them). The logits of the
 * last n_logits tokens (1 <= n_logits <= n, <= s->max_logits) go to
 * s->logits, one row of vocab floats each, in order. n <= s->max_tokens. */
ampr_status ampr__forward(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq,
                          const int32_t *tokens, int32_t n, int32_t n_logits,
                          ampr__scratch *s, ampr__err *err);

/* One decode step for several sequences of the same tier at once: token i
 * goes to seqs[i] at its next position; row i of s->logits gets its
 * next-token logits. The weights are read once for the whole batch. */
#define AMPR__BATCH_MAX 32
ampr_status ampr__forward_batch(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *const *seqs,
                                const int32_t *tokens, int32_t n, ampr__scratch *s, ampr__err *err);

#endif
