/*
 * model.h -- a checkpoint as the rest of libampr sees it: hyper-parameters,
 * a table of tensors in one canonical naming and layout, and a tokenizer.
 *
 * Loaders (gguf.c, hf.c) validate everything they read: every tensor lies
 * inside its file and overlaps no other, shapes match the hyper-parameters,
 * sizes cannot overflow, weights are finite. Tensor data is memory-mapped and
 * stays mapped until ampr__model_drop_weights() (an opened context calls it
 * once its tiers are built) or ampr__model_free().
 *
 * Layout convention (GGUF's): ne[0] is the innermost (contiguous) dimension.
 * A weight matrix used as y = W x with W of `out` rows and `in` columns has
 * ne[0] = in, ne[1] = out, i.e. it is row-major [out][in]; this is also the
 * layout of a Hugging Face nn.Linear weight of shape [out, in].
 */
#ifndef AMPR_MODEL_H
#define AMPR_MODEL_H

#include "../common/common.h"
#include "../tokenizer/tokenizer.h"

typedef enum ampr__dtype {
    AMPR__DT_F32 = 0,
    AMPR__DT_F16 = 1,
    AMPR__DT_BF16 = 2,
    AMPR__DT_Q8_0 = 3, /* GGUF Q8_0: blocks of 32 int8 with one fp16 scale (34 bytes) */
    /* bitsandbytes NF4 (blocksize 64) as loaded from a transformers +
     * bitsandbytes 4-bit checkpoint (see bnb.c): data = packed codes
     * uint8[ceil(n/2)] over the flattened row-major matrix (element 2j in the
     * high nibble of byte j), absmax = float[ceil(n/64)] (double-quantized
     * checkpoints are dequantized to fp32 at load, as bitsandbytes does). */
    AMPR__DT_NF4 = 4,
    /* raw bytes (safetensors U8): only while loading, never in a finished model */
    AMPR__DT_U8 = 5
} ampr__dtype;

const char *ampr__dtype_name(ampr__dtype t);

typedef struct ampr__tensor {
    const char *name;  /* canonical name, see ampr__model below */
    ampr__dtype dtype;
    int32_t n_dims;
    int64_t ne[4];     /* ne[0] innermost; unused dims are 1 */
    const void *data;  /* inside a mapping owned by the model (until it drops its weights) */
    uint64_t nbytes;
    const float *absmax; /* NF4: one fp32 absmax per block of 64; else NULL */
} ampr__tensor;

/* Read row r of a 2-D tensor (or the whole of a 1-D one, r = 0) as fp32.
 * out holds ne[0] floats. Works for every ampr__dtype. */
void ampr__tensor_row_f32(const ampr__tensor *t, int64_t r, float *out);

typedef enum ampr__rope_layout {
    /* rotate pairs (2i, 2i+1) of each head: llama2.c, and GGUF from llama.cpp
     * (its converter permutes Q/K rows so that this layout is right) */
    AMPR__ROPE_INTERLEAVED = 0,
    /* rotate pairs (i, i + head_dim/2): Hugging Face transformers' rotate_half */
    AMPR__ROPE_HALF = 1
} ampr__rope_layout;

typedef struct ampr__hparams {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim;
    int32_t vocab_size, context_length;
    float norm_eps;
    float rope_theta;
    ampr__rope_layout rope_layout;
    /* rope_scaling {"rope_type": "llama3"} (Llama 3.1+) */
    int rope_llama3;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int32_t rope_orig_context;
    int tied_embeddings; /* output head shares tok_embd */
} ampr__hparams;

typedef struct ampr__layer {
    const ampr__tensor *attn_norm; /* [dim] */
    const ampr__tensor *wq;        /* [n_heads*head_dim][dim] */
    const ampr__tensor *wk;        /* [n_kv_heads*head_dim][dim] */
    const ampr__tensor *wv;        /* [n_kv_heads*head_dim][dim] */
    const ampr__tensor *wo;        /* [dim][n_heads*head_dim] */
    const ampr__tensor *ffn_norm;  /* [dim] */
    const ampr__tensor *w_gate;    /* [hidden][dim]  (llama2.c w1) */
    const ampr__tensor *w_up;      /* [hidden][dim]  (llama2.c w3) */
    const ampr__tensor *w_down;    /* [dim][hidden]  (llama2.c w2) */
} ampr__layer;

typedef struct ampr__model_priv ampr__model_priv;

typedef struct ampr__model {
    char format[16];               /* "gguf" or "hf" */
    ampr__hparams hp;
    const ampr__tensor *tok_embd;  /* [vocab][dim] */
    const ampr__tensor *output_norm; /* [dim] */
    const ampr__tensor *output;    /* [vocab][dim]; == tok_embd when tied */
    ampr__layer *layers;           /* n_layers */
    ampr__tokenizer *tok;
    uint64_t n_params;
    ampr__model_priv *priv;        /* mappings, tensor storage, metadata */
} ampr__model;

/* Load a GGUF file or a Hugging Face directory (detected from path).
 * check_finite: scan every weight for NaN/Inf (AMPR_ERR_MODEL_NONFINITE). */
ampr_status ampr__model_load(const char *path, int check_finite, ampr__model **out,
                             ampr__err *err);
void ampr__model_free(ampr__model *m);
/* Unmap the checkpoint and free its tensors (the tiers hold their own
 * copies once built): m keeps its format, hyper-parameters, tokenizer and
 * parameter count; its tensor pointers become NULL. */
void ampr__model_drop_weights(ampr__model *m);

/* Loaders used by ampr__model_load (also reachable for tests). */
ampr_status ampr__model_load_gguf(const char *path, int check_finite, ampr__model **out,
                                  ampr__err *err);
ampr_status ampr__model_load_hf(const char *dir, int check_finite, ampr__model **out,
                                ampr__err *err);

/* ---- writers (converter, tests, benchmarks) ------------------------------ */

/* Convert a llama2.c checkpoint (.bin, "legacy" v0 fp32) plus its
 * tokenizer.bin into a Hugging Face directory: config.json,
 * model.safetensors (F32, Q/K rows permuted to the half-split RoPE layout as
 * transformers' own converter does), tokenizer.json (SPM-style BPE with
 * byte_fallback), tokenizer_config.json, generation_config.json. */
ampr_status ampr__convert_llama2c(const char *bin_path, const char *tok_path,
                                  const char *out_dir, ampr__err *err);

/* Write a model with random weights (normal, std 0.02; norms 1 +- noise) of
 * the given shape, for tests and benchmarks. dtype: F32, F16 or BF16.
 * format "gguf" writes one file at path, "hf" a directory (split into
 * n_shards safetensors files with an index when n_shards > 1). The vocabulary
 * is an SPM one: <unk>, <s>, </s>, 256 byte tokens, then pieces up to
 * hp->vocab_size. Deterministic for a given seed. */
ampr_status ampr__model_write_random(const char *path, const char *format,
                                     const ampr__hparams *hp, ampr__dtype dtype,
                                     int n_shards, uint64_t seed, ampr__err *err);
/* The same with n_threads making the values (0: the machine's CPUs); the
 * files are the same for any n_threads. */
ampr_status ampr__model_write_random_threads(const char *path, const char *format,
                                             const ampr__hparams *hp, ampr__dtype dtype,
                                             int n_shards, uint64_t seed, int n_threads,
                                             ampr__err *err);

/* ---- bitsandbytes NF4 checkpoints (bnb.c) --------------------------------- */

/* Write a Hugging Face directory whose Linear weights (q/k/v/o_proj,
 * gate/up/down_proj) are stored as transformers + bitsandbytes 4-bit NF4
 * (blocksize 64, quant_storage uint8; double_quant: compress_statistics,
 * nested blocks of 256) by bitsandbytes' documented layout: per weight
 * X.weight (U8 [ceil(n/2), 1]), X.weight.absmax (F32 [nb], or U8 [nb] when
 * nested, with X.weight.nested_absmax F32 and X.weight.nested_quant_map
 * F32[256]), X.weight.quant_map (F32[16]) and
 * X.weight.quant_state.bitsandbytes__nf4 (U8: the JSON of quant_type,
 * blocksize, dtype, shape[, nested_blocksize, nested_dtype, nested_offset]).
 * Embeddings, norms and lm_head stay float (their source dtype, F32 for
 * Q8_0 sources), as transformers leaves them. config.json gets a
 * quantization_config. Q/K rows are permuted to the half-split RoPE layout
 * when m has the interleaved one. tokenizer.json and tokenizer_config.json are
 * copied from tok_dir (a Hugging Face directory). */
ampr_status ampr__model_write_bnb_nf4(const ampr__model *m, const char *tok_dir,
                                      const char *out_dir, int double_quant, ampr__err *err);

#endif
