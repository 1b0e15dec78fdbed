/*
 * ampr.h -- the public interface of libampr, and its reference manual.
 *
 * libampr loads a Llama-style checkpoint (GGUF v3, or a Hugging Face directory
 * with config.json + *.safetensors + tokenizer.json) and serves it at several
 * precisions at once: every context holds resident weight tiers (by default
 * FP16, INT8 and NF4; F32 or BF16 may be named as the top tier), each with its
 * own KV-cache arena. ampr_route() scores a prompt and picks a tier;
 * ampr_generate() runs a request on a tier.
 *
 * Conventions, which hold for every function below unless it says otherwise:
 *  - Every fallible call returns an ampr_status; AMPR_OK (0) is success.
 *    ampr_strerror() gives static text for a status; ampr_errmsg() gives the
 *    detailed message of the last failure on a context.
 *  - The library never prints, exits or aborts.
 *  - Structs passed in or out start with `uint32_t struct_size`; call the
 *    matching _init() macro first: it calls the exported _init_sized()
 *    function with the size of the struct the caller was compiled with, which
 *    fills defaults for exactly that many bytes and records it in
 *    struct_size. Fields are only ever appended, so a program built against
 *    an older header keeps working with a newer library (the library uses
 *    defaults for fields past struct_size and never writes beyond it).
 *    FFI callers (ctypes) call the _init_sized() functions directly.
 *  - Memory the library allocates for the caller is freed with the library's
 *    own function (ampr_result_free, ampr_free). Strings handed to callbacks
 *    are borrowed and valid only during the call.
 *  - Text is UTF-8 and passed with an explicit length, so it may contain NUL
 *    bytes; a length of AMPR_NUL_TERMINATED means "use strlen".
 *  - Thread safety: a context is read-only after ampr_open(); ampr_route(),
 *    ampr_generate(), ampr_tokenize(), ampr_detokenize(), the info getters and
 *    the metrics calls may be called from several threads on one context at
 *    once. ampr_close() must not race with any other call on the same context.
 *
 * Copyright (c) 2026 the libampr authors. MIT licence (see LICENSE).
 */
#ifndef AMPR_H
#define AMPR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version ------------------------------------------------------------ */

#define AMPR_VERSION_MAJOR 0
#define AMPR_VERSION_MINOR 2
#define AMPR_VERSION_PATCH 0
#define AMPR_VERSION_STRING "0.2.0"
/* MAJOR*10000 + MINOR*100 + PATCH */
#define AMPR_VERSION_NUMBER \
    (AMPR_VERSION_MAJOR * 10000 + AMPR_VERSION_MINOR * 100 + AMPR_VERSION_PATCH)

#if defined(_WIN32)
#define AMPR_API __declspec(dllexport)
#elif defined(__GNUC__)
#define AMPR_API __attribute__((visibility("default")))
#else
#define AMPR_API
#endif

/* The version of the library actually loaded: "MAJOR.MINOR.PATCH". Static
 * string, never NULL. */
AMPR_API const char *ampr_version(void);
/* Same as AMPR_VERSION_NUMBER, but of the loaded library. */
AMPR_API uint32_t ampr_version_number(void);

/* ---- status codes ------------------------------------------------------- */

/* Numbers are stable: they are never reused or renumbered. The list also
 * lives in lib/common/status.h (one X-macro generates the enum below's
 * checks, ampr_strerror() and ampr_status_name()). */
typedef enum ampr_status {
    AMPR_OK = 0,
    AMPR_ERR_INVALID_ARG = 1,     /* a NULL or out-of-range argument */
    AMPR_ERR_NOMEM = 2,           /* an allocation failed */
    AMPR_ERR_IO = 3,              /* a file could not be opened, read or mapped */
    AMPR_ERR_CONFIG = 4,          /* the JSON config is malformed or has a bad key or value */
    AMPR_ERR_MODEL_FORMAT = 5,    /* not a model file, or bad magic/version/structure */
    AMPR_ERR_MODEL_TRUNCATED = 6, /* the file ends before its declared contents */
    AMPR_ERR_MODEL_BOUNDS = 7,    /* a tensor lies outside the file or overlaps another */
    AMPR_ERR_MODEL_SHAPE = 8,     /* a tensor has the wrong shape, or its size overflows */
    AMPR_ERR_MODEL_DTYPE = 9,     /* a tensor type that is unknown or not allowed there */
    AMPR_ERR_MODEL_MISSING = 10,  /* a required tensor or metadata key is absent */
    AMPR_ERR_MODEL_HPARAMS = 11,  /* hyper-parameters that are absent, absurd or inconsistent */
    AMPR_ERR_MODEL_NONFINITE = 12,/* a weight is NaN or infinite */
    AMPR_ERR_MODEL_VOCAB = 13,    /* the tokenizer data is malformed (e.g. bad UTF-8) */
    AMPR_ERR_UNSUPPORTED = 14,    /* valid input this build does not support */
    AMPR_ERR_BAD_UTF8 = 15,       /* the prompt is not valid UTF-8 */
    AMPR_ERR_PROMPT_EMPTY = 16,   /* the prompt tokenizes to nothing and no BOS is added */
    AMPR_ERR_PROMPT_TOO_LONG = 17,/* the prompt does not fit the context window */
    AMPR_ERR_KV_FULL = 18,        /* the tier's KV arena has no free pages for the request */
    AMPR_ERR_CANCELLED = 19,      /* the token callback asked to stop (not a failure of the model) */
    AMPR_ERR_TIER_UNAVAILABLE = 20,/* the requested tier is not resident in this context */
    AMPR_ERR_BACKEND = 21,        /* the compute backend failed (CUDA, cuBLASLt, NCCL) */
    AMPR_ERR_NO_DEVICE = 22,      /* a GPU was required but none is usable */
    AMPR_ERR_BUFFER_TOO_SMALL = 23,/* an output buffer is too small; the needed size is reported */
    AMPR_ERR_INTERNAL = 24        /* a bug in libampr: please report it */
} ampr_status;

/* Static English text describing a status; never NULL (unknown values give
 * "unknown status"). Thread-safe. */
AMPR_API const char *ampr_strerror(ampr_status status);
/* The enumerator's name without the "AMPR_" prefix, e.g. "ERR_KV_FULL" or
 * "OK"; "UNKNOWN" for unknown values; never NULL. */
AMPR_API const char *ampr_status_name(ampr_status status);

/* ---- allocation hooks --------------------------------------------------- */

/* Replace the allocator used for every allocation the library makes
 * (including jansson's). All three must be given, or all three NULL to
 * restore the C library's. Call before any ampr_open(), never while a
 * context is alive. Not thread-safe. */
typedef void *(*ampr_malloc_fn)(size_t size, void *user);
typedef void *(*ampr_realloc_fn)(void *ptr, size_t size, void *user);
typedef void (*ampr_free_fn)(void *ptr, void *user);
AMPR_API ampr_status ampr_set_allocator(ampr_malloc_fn m, ampr_realloc_fn r,
                                        ampr_free_fn f, void *user);

/* ---- tiers -------------------------------------------------------------- */

/* A tier is one resident copy of the weights at one precision. */
typedef enum ampr_tier {
    AMPR_TIER_AUTO = 0, /* let ampr_route() choose */
    AMPR_TIER_FP16 = 1, /* IEEE half weights, FP32 accumulation */
    AMPR_TIER_INT8 = 2, /* int8 weights (per output channel) x int8 activations (per token) */
    AMPR_TIER_NF4 = 3,  /* bitsandbytes NF4, blocks of 64, weight-only */
    AMPR_TIER_F32 = 4,  /* full precision (only when the config lists it) */
    AMPR_TIER_BF16 = 5  /* bfloat16 weights (only when the config lists it) */
} ampr_tier;
#define AMPR_TIER_COUNT 6

/* "auto", "fp16", "int8", "nf4", "f32", "bf16"; "?" for unknown. Static. */
AMPR_API const char *ampr_tier_name(ampr_tier tier);
/* Inverse of ampr_tier_name(); AMPR_ERR_INVALID_ARG for unknown names. */
AMPR_API ampr_status ampr_tier_from_name(const char *name, ampr_tier *out);

/* ---- opening a model ---------------------------------------------------- */

typedef struct ampr_ctx ampr_ctx;

/* Load progress: stage is a static string ("map", "tokenizer", "tier fp16",
 * "tp join" every 100 ms while a "tp_rank" open waits for the other ranks,
 * ...), fraction in [0,1]. Return nonzero to abort the open (which then
 * fails with AMPR_ERR_CANCELLED). Called on the thread that called
 * ampr_open_ex(). */
typedef int (*ampr_progress_fn)(void *user, const char *stage, float fraction);

typedef struct ampr_open_params {
    uint32_t struct_size;      /* = sizeof(ampr_open_params), set by _init */
    ampr_progress_fn progress; /* may be NULL */
    void *progress_user;
} ampr_open_params;
AMPR_API void ampr_open_params_init_sized(ampr_open_params *p, size_t size);
#define ampr_open_params_init(p) ampr_open_params_init_sized((p), sizeof *(p))

/* Open a model and build its tiers.
 *
 * model_path: a GGUF file, or a directory holding config.json, tokenizer.json
 *   and model.safetensors (or model.safetensors.index.json + shards); linear
 *   weights there may be bitsandbytes NF4 (their codes feed the NF4 tier).
 * config_json: a JSON object (NUL-terminated) or NULL for defaults. Keys (any
 *   other key is rejected with AMPR_ERR_CONFIG):
 *     "tiers":   ordered list, top tier first, of "f32","bf16","fp16","int8",
 *                "nf4" (default ["fp16","int8","nf4"])
 *     "threads": worker threads for the CPU backend (default: online CPUs, max 64);
 *                they also build the tiers during the open; they spin for up
 *                to 0.2 ms after each parallel job, then sleep
 *     "nf4":     {"double_quant": true} quantizes NF4 absmax values to 8 bits
 *                (bitsandbytes' double quantization; default false);
 *                {"activations": "bf16"} lets the CPU's NF4 matmuls round their
 *                input activations (and the 16 code values) to bf16 where the
 *                CPU has AVX512_BF16: about 2x the NF4 kernel's speed, adding
 *                ~2^-9 relative error per product (NF4's own error is ~100x
 *                that). Default "fp32": activations stay fp32. Matrices whose
 *                inputs are not a multiple of 64 wide, CPUs without the
 *                extension and the CUDA backend (fp16 activations there)
 *                compute as with "fp32".
 *     "context_length": cap on the context window (default: the model's)
 *     "kv": {"block_size": tokens per page (default 16),
 *            "wait_ms": wait for free pages when the arena is full (default 0),
 *            "dtype": "f32", "f16" or "q8" KV elements (default f32 on the f32 tier,
 *                     else f16; q8 = int8 with one fp32 scale per head and position),
 *            "arena_tokens": tokens per tier arena (default context_length*4),
 *            "arena_bytes": alternative to arena_tokens}
 *     "device":  "cpu" (default) | "auto" | "cuda". "cuda" uploads every tier
 *                to the GPU (GPU 0 unless "gpus" says; one GPU per rank with
 *                "tp_size") and generates there (built with nvcc only;
 *                fails with AMPR_ERR_NO_DEVICE when no GPU is usable, and
 *                with AMPR_ERR_UNSUPPORTED for q8 KV or f32/bf16 tiers).
 *                Each tier is uploaded as soon as it is built and its host
 *                copy freed: the host holds at most one tier's weights
 *                while ampr_open() runs and none after, and no KV pages
 *                (their accounting stays on the host, the pages are on the
 *                GPU); the checkpoint stays mapped (file-backed memory).
 *                "auto" uses the GPU when that works, else the CPU (when
 *                an upload fails it builds the tiers again for the CPU),
 *                and ampr_model_info.device says which and why. The GPU
 *                path is checked by tests/gpu/check.sh on a machine with a
 *                GPU.
 *     "tp_size": tensor-parallel ranks, 1 to 64 (default 1): attention heads,
 *                KV heads and FFN hidden units are split evenly over the
 *                ranks (column-parallel QKV and gate/up, row-parallel output
 *                and down projections, each followed by an all-reduce); must
 *                divide the model's n_heads, n_kv_heads and hidden_dim, else
 *                AMPR_ERR_CONFIG. On the CPU backend the ranks are threads
 *                and the all-reduce sums in rank order, so results are
 *                deterministic; f32/bf16/fp16 logits equal tp_size 1 up to
 *                float summation order, int8/nf4 shards are quantized with
 *                their own scales. KV pages and their accounting are the
 *                same for every tp_size. With "device": "cuda" the ranks are
 *                GPUs (all in this process unless "tp_rank" is given).
 *     "gpus", "tp_allreduce", "tp_rank", "tp_id" place tensor-parallel ranks
 *                on GPUs; the CPU backend ignores "gpus" and "tp_allreduce"
 *                ("auto" falling back to the CPU keeps the context usable).
 *     "gpus":    GPU ids of this process's ranks: tp_size of them (default
 *                0, 1, ..., tp_size-1), or one with "tp_rank" (default
 *                tp_rank modulo the GPUs found). An id may repeat: those
 *                ranks share the GPU (useful to test sharding on one card;
 *                it needs the copy all-reduce).
 *     "tp_allreduce": how the GPU ranks of one process sum the partial
 *                results: "nccl" (ncclAllReduce; one GPU per rank), "copy"
 *                (peer copies to the first rank's GPU, summed there in rank
 *                order like the CPU backend, copied back; any GPUs, no NCCL
 *                needed), or "auto" (default): NCCL when this build has it,
 *                the GPUs differ and NCCL starts, else copy.
 *     "tp_rank", "tp_id": one rank per process, on several machines or
 *                processes: this process is rank tp_rank of tp_size, holds
 *                only that rank's shard on its GPU, and sums with the others
 *                over NCCL ("tp_allreduce" does not apply; the host
 *                quantizes only this rank's shards); tp_id is the string
 *                ampr_tp_id_new() made in one of the processes, the same for
 *                every rank. Needs "device": "cuda" and NCCL. The ranks
 *                meet when they join (before building their tiers) and
 *                at the end of their opens, where each learns whether all
 *                opened: a rank that never joins, or fails its open, makes
 *                the others' ampr_open() fail with AMPR_ERR_BACKEND after
 *                at most "tp_timeout_ms" (default 300000; 0 = no limit;
 *                NCCL 2.14 or later). A rank that stops answering later
 *                aborts the group at the others' next pass after the same
 *                time (those contexts then fail every pass). A call that
 *                fails on one rank for a reason of that rank's own
 *                (AMPR_ERR_NOMEM, _BACKEND, _INTERNAL) once it has begun a
 *                pass aborts the group at once, so that no rank's next call
 *                pairs its collectives with another's unfinished ones: the
 *                others' pending pass fails (NCCL reports the lost peer, or
 *                "tp_timeout_ms" ends the wait) and every later pass on
 *                every rank fails with AMPR_ERR_BACKEND. Every forward
 *                pass is a collective: every rank must
 *                make the same ampr_generate() / ampr_logits() calls, with
 *                the same arguments (and seed), in the same order, one at a
 *                time; the ranks then produce the same tokens.
 *     "router":  {"thresholds": [t_low, t_high]} scores below t_low go to the
 *                lowest tier, below t_high to the middle one, else the top
 *                one; "weights" (6 numbers) and "bias" of the scorer;
 *                "system_weight" of a system prompt's score (default 0.25)
 *     "fallback": {"enabled", "entropy_max", "min_tokens", "repeat_ngram",
 *                "repeat_count", "repeat_window", "check_every", "check_window",
 *                "kl_max", "restart"} -- when a request on a lower tier escalates
 *                to the top tier (see README, "Routing, error fallback and
 *                calibration")
 *     "calibration": path of a file written by `ampr calibrate` (router,
 *                fallback.kl_max, INT8 SmoothQuant ranges); keys given in the
 *                config itself override it
 *
 * On success *out is a new context. On failure *out is still set to a context
 * that holds only the error (read it with ampr_errmsg(), free it with
 * ampr_close()), except when even that could not be allocated, where *out is
 * NULL. Thread-safe (separate contexts share nothing).
 */
AMPR_API ampr_status ampr_open(const char *model_path, const char *config_json,
                               ampr_ctx **out);
/* As ampr_open(), with a progress callback. params may be NULL. */
AMPR_API ampr_status ampr_open_ex(const char *model_path, const char *config_json,
                                  const ampr_open_params *params, ampr_ctx **out);

/* Hex characters of a tensor-parallel group id, without the NUL. */
#define AMPR_TP_ID_LEN 256

/* A fresh id for a group of processes that serve one model together, one GPU
 * each ("tp_rank" / "tp_id" in ampr_open()'s config). One process makes it
 * and hands it to the others (a file, an environment variable, the
 * network); the process that made it must stay alive until every rank has
 * opened, because it answers the ranks' first contact (NCCL's bootstrap):
 * each call starts a listening thread there that lasts until the group has
 * formed (or the process ends). One id serves one group's open.
 * Writes AMPR_TP_ID_LEN hex characters and a NUL to out. Needs no GPU.
 * Errors: AMPR_ERR_INVALID_ARG (out NULL or out_len < AMPR_TP_ID_LEN + 1),
 * AMPR_ERR_UNSUPPORTED (built without CUDA or NCCL), AMPR_ERR_BACKEND (NCCL
 * failed, e.g. no usable network interface). Thread-safe. */
AMPR_API ampr_status ampr_tp_id_new(char *out, size_t out_len);

/* Free a context and everything it owns. NULL is a no-op. */
AMPR_API void ampr_close(ampr_ctx *ctx);

/* The detail of the most recent failure of a call on ctx made by the calling
 * thread (or of ampr_open() that produced ctx). Never NULL: "" when none,
 * "no context" for NULL. Valid until the next failing call on ctx by this
 * thread, or ampr_close(). */
AMPR_API const char *ampr_errmsg(const ampr_ctx *ctx);

/* ---- model and tier information ---------------------------------------- */

typedef struct ampr_model_info {
    uint32_t struct_size;
    int32_t dim;            /* embedding width */
    int32_t hidden_dim;     /* FFN width */
    int32_t n_layers;
    int32_t n_heads;        /* query heads */
    int32_t n_kv_heads;     /* key/value heads (GQA when < n_heads) */
    int32_t head_dim;
    int32_t vocab_size;
    int32_t context_length; /* usable context window (after the config's cap) */
    uint64_t n_params;      /* parameters in the checkpoint */
    int32_t bos_id, eos_id; /* -1 when the vocabulary has none */
    int32_t n_tiers;        /* resident tiers */
    ampr_tier tiers[AMPR_TIER_COUNT]; /* resident tiers, top first */
    char format[16];        /* "gguf" or "hf" */
    char device[96];        /* the backend serving requests, e.g. "cpu", or
                             * "cpu (auto: no CUDA device)" */
} ampr_model_info;
AMPR_API void ampr_model_info_init_sized(ampr_model_info *info, size_t size);
#define ampr_model_info_init(info) ampr_model_info_init_sized((info), sizeof *(info))
AMPR_API ampr_status ampr_get_model_info(const ampr_ctx *ctx, ampr_model_info *info);

typedef struct ampr_tier_info {
    uint32_t struct_size;
    ampr_tier tier;
    uint64_t weight_bytes;    /* resident bytes of this tier's weights (with
                               * "tp_rank": this process's shard) */
    uint64_t kv_bytes;        /* bytes of this tier's KV arena */
    int32_t kv_block_size;    /* tokens per KV page */
    int32_t kv_pages_total;
    int32_t kv_pages_used;    /* pages held by running requests right now */
    char kernels[32];         /* the matmul kernels serving the tier: "scalar",
                               * "avx2", "avx512", "avx512-bf16" (NF4 with
                               * bf16 activations, see "nf4" in ampr_open)
                               * or "cuda" (added in 0.2: absent from smaller
                               * structs) */
} ampr_tier_info;
AMPR_API void ampr_tier_info_init_sized(ampr_tier_info *info, size_t size);
#define ampr_tier_info_init(info) ampr_tier_info_init_sized((info), sizeof *(info))
/* AMPR_ERR_TIER_UNAVAILABLE when the tier is not resident. */
AMPR_API ampr_status ampr_get_tier_info(const ampr_ctx *ctx, ampr_tier tier,
                                        ampr_tier_info *info);

/* ---- tokenization ------------------------------------------------------- */

#define AMPR_NUL_TERMINATED ((size_t)-1)

/* Tokenize text. When add_bos is nonzero and the vocabulary has a BOS token
 * it comes first. Writes at most cap ids; *n_out receives the number of ids
 * the text needs (also when cap is too small, which returns
 * AMPR_ERR_BUFFER_TOO_SMALL). Invalid UTF-8 gives AMPR_ERR_BAD_UTF8. */
AMPR_API ampr_status ampr_tokenize(ampr_ctx *ctx, const char *text, size_t len,
                                   int add_bos, int32_t *ids, size_t cap,
                                   size_t *n_out);
/* Decode ids to UTF-8 text (special tokens such as BOS/EOS are skipped; an
 * incomplete UTF-8 sequence at the end is kept as is). Writes at most cap
 * bytes plus a NUL when room is left; *len_out receives the bytes needed. */
AMPR_API ampr_status ampr_detokenize(ampr_ctx *ctx, const int32_t *ids, size_t n,
                                     char *buf, size_t cap, size_t *len_out);

/* ---- routing ------------------------------------------------------------ */

#define AMPR_ROUTE_N_FEATURES 8

typedef struct ampr_route_result {
    uint32_t struct_size;
    ampr_tier tier;      /* the tier chosen (one of the resident ones) */
    float score;         /* complexity in [0,1]; higher needs more precision */
    /* lexical density, code markers, math operators, digits, length,
     * non-ASCII share, and two reserved (0) */
    float features[AMPR_ROUTE_N_FEATURES];
    char reason[160];    /* a one-line explanation, NUL-terminated */
} ampr_route_result;
AMPR_API void ampr_route_result_init_sized(ampr_route_result *r, size_t size);
#define ampr_route_result_init(r) ampr_route_result_init_sized((r), sizeof *(r))

/* Score a prompt and choose a tier. system may be NULL; when given it is
 * scored separately and weighs less. Both must be valid UTF-8
 * (AMPR_ERR_BAD_UTF8). Thread-safe; costs microseconds. */
AMPR_API ampr_status ampr_route(ampr_ctx *ctx, const char *prompt, size_t len,
                                const char *system, size_t system_len,
                                ampr_route_result *out);

/* ---- generation --------------------------------------------------------- */

/* Called once per generated token with the text that became final (borrowed,
 * valid during the call only). The piece never splits a UTF-8 character and
 * may be empty: while a character is incomplete, or while the text could
 * still turn into one of the stop strings (which are never streamed). After
 * the last token, held-back text is delivered in one more call with token_id
 * -1. The concatenated pieces equal ampr_result.text. Text already delivered
 * is never retracted, also when the request escalates to another tier.
 * Return 0 to go on, nonzero to cancel: generation stops, and
 * ampr_generate() returns AMPR_ERR_CANCELLED with the result so far. */
typedef int (*ampr_token_fn)(void *user, const char *piece, size_t len,
                             int32_t token_id);

typedef struct ampr_gen_params {
    uint32_t struct_size;
    ampr_tier tier;            /* AMPR_TIER_AUTO (default) routes the prompt */
    int32_t max_tokens;        /* new tokens at most (default 256; 0 = prefill only) */
    float temperature;         /* 0 = greedy (default 0.8); finite */
    int32_t top_k;             /* 0 = off (default 40) */
    float top_p;               /* 1 = off (default 0.95) */
    float repetition_penalty;  /* 1 = off (default 1.0) */
    int32_t repetition_last_n; /* window for the penalty, in tokens of prompt and output
                                * (default 64; <= 0: all of them, as transformers does) */
    uint64_t seed;             /* RNG seed (default 0x5eed) */
    const char *const *stop;   /* stop strings (may be NULL) */
    size_t n_stop;
    int add_bos;               /* prepend BOS (default 1) */
    int ignore_eos;            /* keep going past end-of-sequence (default 0) */
    ampr_token_fn on_token;    /* streaming callback (may be NULL) */
    void *user;                /* passed to on_token */
    int32_t fallback;          /* 1 (default): escalate to the top tier when the
                                * quantization error estimate passes the config's
                                * tolerance; 0: stay on the chosen tier */
} ampr_gen_params;
AMPR_API void ampr_gen_params_init_sized(ampr_gen_params *p, size_t size);
#define ampr_gen_params_init(p) ampr_gen_params_init_sized((p), sizeof *(p))

typedef enum ampr_finish {
    AMPR_FINISH_LENGTH = 0,    /* max_tokens reached */
    AMPR_FINISH_EOS = 1,       /* the model produced end-of-sequence */
    AMPR_FINISH_STOP = 2,      /* a stop string was produced */
    AMPR_FINISH_CANCELLED = 3, /* the callback asked to stop */
    AMPR_FINISH_CONTEXT = 4,   /* the context window is full */
    AMPR_FINISH_ERROR = 5      /* a failure after some output */
} ampr_finish;

/* A finished request. Allocated by the library; free with ampr_result_free. */
typedef struct ampr_result {
    uint32_t struct_size;
    char *text;                /* generated text only (not the prompt), NUL-terminated */
    size_t text_len;           /* bytes in text (it may contain NULs) */
    int32_t *tokens;           /* generated token ids */
    size_t n_tokens;
    int32_t n_prompt_tokens;
    ampr_finish finish;
    ampr_tier tier_first;      /* the tier the request started on */
    ampr_tier tier_final;      /* the tier that produced the last token */
    int32_t escalated;         /* 1 if it moved to a higher tier */
    int32_t escalation_token;  /* index of the first token after escalation, or -1 */
    char escalation_reason[64];/* why it escalated ("kl-check (...)", "entropy (...)",
                                * "repetition (...)", "non-finite logits": a NaN or
                                * +inf in the lower tier's row); with escalated == 0, empty, or
                                * "skipped (top tier KV full) at N: ..." when the top
                                * tier's KV arena had no room to escalate or check
                                * (non-finite logits then fail the request:
                                * AMPR_ERR_KV_FULL, no tokens to go on with) */
    double prefill_ms;         /* time to first token */
    double decode_ms;          /* time for the remaining tokens */
    double total_ms;
} ampr_result;
AMPR_API void ampr_result_free(ampr_result *r); /* NULL is a no-op */

/* Run one request. prompt has len bytes (AMPR_NUL_TERMINATED for strlen).
 * params may be NULL for defaults. out may be NULL when only the streaming
 * callback is wanted; otherwise *out receives a result also when the status
 * is AMPR_ERR_CANCELLED (partial output) and NULL on other failures.
 * Thread-safe: concurrent calls on one ctx are independent. */
AMPR_API ampr_status ampr_generate(ampr_ctx *ctx, const char *prompt, size_t len,
                                   const ampr_gen_params *params, ampr_result **out);

/* ---- scoring ------------------------------------------------------------ */

/* Teacher-forced forward pass over n ids on one tier (no AUTO): writes the
 * logits of every position, row i (vocab_size floats) being the distribution
 * of the token after ids[i]. logits must hold n * vocab_size floats (cap is
 * their count; AMPR_ERR_BUFFER_TOO_SMALL otherwise). Uses KV pages of the
 * tier's arena during the call (AMPR_ERR_KV_FULL if none are free); n must
 * not exceed the context window. Thread-safe. Used by perplexity and
 * divergence tools (`ampr eval`). */
AMPR_API ampr_status ampr_logits(ampr_ctx *ctx, ampr_tier tier, const int32_t *ids, size_t n,
                                 float *logits, size_t cap);

/* ---- metrics ------------------------------------------------------------ */

/* Free memory the library allocated for the caller and handed over as a bare
 * pointer (the text of ampr_metrics_text()). NULL is a no-op. Uses the
 * allocator set with ampr_set_allocator(). Thread-safe. */
AMPR_API void ampr_free(void *p);

/* The context's metrics as Prometheus text exposition, format 0.0.4 (serve it
 * with "Content-Type: text/plain; version=0.0.4"). *out receives a
 * NUL-terminated string allocated by the library, to be freed with
 * ampr_free(); *len (len may be NULL) its length without the NUL. On failure
 * *out is NULL. AMPR_ERR_INVALID_ARG for a NULL ctx or out, or a context
 * whose open failed; AMPR_ERR_NOMEM.
 *
 * Counters and histograms count from ampr_open() (or the last
 * ampr_metrics_reset()); gauges are read when the text is made. Requests are
 * labelled by the tier they started on, tokens by the tier that produced
 * them. Every metric below carries the label tier="fp16"|"int8"|"nf4"|
 * "f32"|"bf16" (one series per resident tier) unless it says otherwise:
 *
 *  counters
 *   ampr_requests_total{tier,finish}   requests that reached a tier; finish is
 *       length|eos|stop|cancelled|context, or error when the call failed
 *   ampr_request_failures_total{status} failed ampr_generate() calls, by the
 *       lowercase status name without "ERR_" (kv_full, invalid_arg, ...);
 *       cancellations are not failures
 *   ampr_route_decisions_total         tiers chosen by the router (ampr_route()
 *       and ampr_generate() with AMPR_TIER_AUTO)
 *   ampr_escalations_total{from_tier,to_tier,reason} requests that moved to
 *       the top tier; reason is entropy|repetition|kl_check|nonfinite
 *   ampr_prompt_tokens_total           prompt tokens (BOS included)
 *   ampr_generation_tokens_total       output tokens, including any that a
 *       fallback restart discards
 *  histograms (_bucket{le}, _sum, _count)
 *   ampr_time_to_first_token_seconds   start of the call to the first token
 *   ampr_inter_token_latency_seconds   between successive tokens (time per
 *       output token), one observation per token after the first; it
 *       includes the time spent in the on_token callback
 *   ampr_e2e_request_latency_seconds   start to end of the call
 *   ampr_request_queue_time_seconds    waiting for free KV pages
 *   ampr_request_prefill_time_seconds  KV pages reserved to the first token
 *   ampr_request_decode_time_seconds   first token to last token
 *   ampr_request_prompt_tokens         prompt tokens per request
 *   ampr_request_generation_tokens     output tokens per request that did
 *       not fail (ampr_result.n_tokens)
 *  gauges
 *   ampr_requests_running, ampr_requests_waiting (for KV pages)
 *   ampr_kv_pages_used, ampr_kv_pages_capacity (not _total: that suffix
 *   is for counters), ampr_kv_usage_ratio (0..1),
 *   ampr_kv_cache_bytes, ampr_weight_bytes
 *   ampr_build_info{version} (no tier label) always 1
 *
 * Recording costs a few relaxed atomic operations per token and takes no
 * lock. Thread-safe: may run while requests are running; a histogram's
 * _count always equals its +Inf bucket, though its _sum may lag by the
 * observations in flight. */
AMPR_API ampr_status ampr_metrics_text(ampr_ctx *ctx, char **out, size_t *len);

/* Set every counter and histogram of ctx back to zero (gauges, which describe
 * the present, stay). AMPR_ERR_INVALID_ARG for a NULL ctx or a context whose
 * open failed. Thread-safe; observations made while it runs may survive it
 * in part. */
AMPR_API ampr_status ampr_metrics_reset(ampr_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif /* AMPR_H */
