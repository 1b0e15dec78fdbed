/*
 * model_int.h -- what the files of lib/model share with each other and with
 * nobody else: file mappings, the tensor table under construction, the one
 * validation pass every loader ends with, the canonical <-> Hugging Face
 * tensor names, and the streaming writers used by the converter and the
 * random-model writer.
 *
 * Canonical tensor names are GGUF's (token_embd.weight, blk.N.attn_q.weight,
 * ...); the HF loader renames safetensors tensors to them on the way in.
 */
#ifndef AMPR_MODEL_INT_H
#define AMPR_MODEL_INT_H

#include <stdio.h>

#include "model.h"

/* ---- mappings and the tensor table ------------------------------------- */

typedef struct ampr__map {
    const uint8_t *base;
    size_t size;
} ampr__map;

struct ampr__model_priv {
    ampr__map *maps;
    int n_maps, cap_maps;
    ampr__tensor *tensors; /* names owned (ampr__strndup) */
    size_t n_tensors, cap_tensors;
    const ampr__tensor **by_name; /* sorted by name, for lookups */
    void **owned; /* allocations freed with the model (dequantized NF4 absmax) */
    size_t n_owned, cap_owned;
};

/* Hand an ampr__malloc'd block to the model (freed by ampr__model_free; on
 * failure it is freed here). */
ampr_status ampr__model_own(ampr__model *m, void *ptr, ampr__err *err);
/* bitsandbytes 4-bit groups: the safetensors reader keeps the companions of a
 * quantized weight under the canonical name of the weight plus the suffix
 * (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
 * ".quant_state.bitsandbytes__nf4"); this returns the length of key without
 * such a suffix, or 0 when it has none. */
size_t ampr__bnb_suffix(const char *key);
/* After all shards are read: turn each group into one AMPR__DT_NF4 tensor
 * (validated) and drop the companions; any U8 tensor left over fails. */
ampr_status ampr__bnb_resolve(ampr__model *m, ampr__err *err);

/* Map a whole file read-only (fewer than min_size bytes: TRUNCATED). */
ampr_status ampr__map_file(const char *path, size_t min_size, ampr__map *out, ampr__err *err);
void ampr__unmap(ampr__map *m);

/* A model with no tensors yet; format is "gguf" or "hf". */
ampr_status ampr__model_new(const char *format, ampr__model **out, ampr__err *err);
/* Map path read-only and keep the mapping until ampr__model_free(). A file
 * of fewer than min_size bytes fails with AMPR_ERR_MODEL_TRUNCATED. */
ampr_status ampr__model_map(ampr__model *m, const char *path, size_t min_size,
                            ampr__map *out, ampr__err *err);
/* Append a tensor (name copied); the caller fills the other fields. */
ampr_status ampr__model_add_tensor(ampr__model *m, const char *name, size_t name_len,
                                   ampr__tensor **out, ampr__err *err);
/* Bytes of a tensor of n_dims dims ne[]; AMPR_ERR_MODEL_SHAPE when a
 * dimension is not positive, the size overflows or Q8_0 rows are not whole
 * blocks. */
ampr_status ampr__tensor_size(const char *name, int n_dims, const int64_t *ne, ampr__dtype dt,
                              uint64_t *nbytes, ampr__err *err);
/* Validate hp (ranges and divisibility): AMPR_ERR_MODEL_HPARAMS. */
ampr_status ampr__hparams_check(const ampr__hparams *hp, ampr__err *err);
/* The last step of every loader: index names (duplicates fail), check that
 * no two tensors overlap, check hp, wire m->tok_embd/output/layers with
 * their shapes checked, count parameters, optionally scan for NaN/Inf. */
ampr_status ampr__model_finish(ampr__model *m, int check_finite, ampr__err *err);
const ampr__tensor *ampr__model_find(const ampr__model *m, const char *name);

/* ---- names ---------------------------------------------------------------- */

/* The tensors of a model, in file order: token_embd, then per layer the nine
 * of ampr__layer, then output_norm and (untied) output. */
enum {
    AMPR__TK_TOK_EMBD = 0,
    AMPR__TK_ATTN_NORM, AMPR__TK_ATTN_Q, AMPR__TK_ATTN_K, AMPR__TK_ATTN_V, AMPR__TK_ATTN_OUT,
    AMPR__TK_FFN_NORM, AMPR__TK_FFN_GATE, AMPR__TK_FFN_UP, AMPR__TK_FFN_DOWN,
    AMPR__TK_OUTPUT_NORM, AMPR__TK_OUTPUT,
    AMPR__TK_COUNT
};
#define AMPR__NAME_MAX 96

/* A tensor to be written: name, dtype, shape; nbytes/offset filled by the
 * writer. kind/layer say which model tensor it is. */
typedef struct ampr__wtensor {
    char name[AMPR__NAME_MAX];
    int kind, layer;
    ampr__dtype dtype;
    int n_dims;
    int64_t ne[4];
    uint64_t nbytes, offset;
} ampr__wtensor;

/* Canonical (hf = 0) or Hugging Face (hf = 1) name of tensor kind of layer. */
void ampr__tensor_name(int kind, int layer, int hf, char *buf, size_t cap);
/* Rename a Hugging Face tensor name to the canonical one; 0 if unknown. */
int ampr__hf_to_canon(const char *hf, char *buf, size_t cap);
/* Fill ts[] (capacity 9 * n_layers + 4) with the tensors of a model of shape
 * hp, in file order, all of dtype dt (norms too). Returns the count. */
size_t ampr__model_plan(const ampr__hparams *hp, ampr__dtype dt, int hf, ampr__wtensor *ts);

/* ---- writing -------------------------------------------------------------- */

/* Produces the nbytes of tensor t into f. */
typedef ampr_status (*ampr__wfill_fn)(void *ctx, const ampr__wtensor *t, FILE *f,
                                      ampr__err *err);
/* Map a safetensors file into m and append its tensors (Hugging Face names
 * renamed to canonical ones, unknown names kept). */
ampr_status ampr__st_load(ampr__model *m, const char *path, ampr__err *err);
/* Write a safetensors file holding ts[0..n) (offsets assigned here); the
 * tensor data comes from fill, in order. */
ampr_status ampr__st_write(const char *path, ampr__wtensor *ts, size_t n, ampr__wfill_fn fill,
                           void *ctx, ampr__err *err);
/* n floats as F16 or BF16 (dt), rounded to nearest even. */
void ampr__f32_to_half_as(const float *x, uint16_t *out, size_t n, ampr__dtype dt);
/* Convert n floats to dt and append them to f. */
ampr_status ampr__write_f32_as(FILE *f, const float *x, size_t n, ampr__dtype dt,
                               ampr__err *err);
/* Rows of a Q or K weight, interleaved RoPE pairs -> half split (what
 * transformers' convert_llama_weights_to_hf.py permute() does): within each
 * head, row 2i+t moves to row t*head_dim/2 + i. in/out: [n_heads*head_dim][cols] */
void ampr__permute_qk(const float *in, float *out, int n_heads, int head_dim, int64_t cols);
/* The inverse (half split -> interleaved). */
void ampr__unpermute_qk(const float *in, float *out, int n_heads, int head_dim, int64_t cols);

/* An SPM vocabulary for the writers: pieces with U+2581 for spaces. */
typedef struct ampr__spm_vocab {
    int32_t n;
    const char *const *pieces;
    const uint32_t *lens;
    const float *scores;
    const int32_t *types; /* AMPR__TT_* */
} ampr__spm_vocab;

/* Write config.json and generation_config.json of a LlamaForCausalLM. */
ampr_status ampr__hf_write_config(const char *dir, const ampr__hparams *hp,
                                  const char *torch_dtype, ampr__err *err);
/* Write tokenizer.json (HF Llama-2 "legacy" layout: BPE with byte fallback,
 * merges derived from the piece scores) and tokenizer_config.json. */
ampr_status ampr__hf_write_tokenizer(const char *dir, const ampr__spm_vocab *v,
                                     int32_t max_len, ampr__err *err);
/* dir/name into buf; AMPR_ERR_INVALID_ARG if it does not fit. */
ampr_status ampr__path_join(char *buf, size_t cap, const char *dir, const char *name,
                            ampr__err *err);

#endif
