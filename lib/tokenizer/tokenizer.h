/*
 * tokenizer.h -- text <-> token ids, exactly as the reference tokenizers do it.
 *
 * Two families:
 *  - SPM: SentencePiece-style BPE over U+2581-escaped text with byte fallback
 *    (Llama 1/2, TinyLlama, Mistral, the llama2.c .bin vocabularies). Built from
 *    GGUF metadata (tokenizer.ggml.model = "llama"), from a Hugging Face
 *    tokenizer.json whose model is BPE with byte_fallback, or from a llama2.c
 *    tokenizer.bin.
 *  - BPE: byte-level BPE with a pre-tokenizer regex (GPT-2, Llama 3). Built
 *    from GGUF metadata (tokenizer.ggml.model = "gpt2") or a tokenizer.json
 *    with a ByteLevel pre-tokenizer.
 *
 * A tokenizer is immutable after construction and safe to use from many
 * threads. Decoding is streaming-safe: ampr__detok_push() only ever emits whole
 * UTF-8 characters (invalid bytes become U+FFFD).
 */
#ifndef AMPR_TOKENIZER_H
#define AMPR_TOKENIZER_H

#include "../common/common.h"

typedef struct ampr__tokenizer ampr__tokenizer;

typedef enum ampr__tok_kind {
    AMPR__TOK_SPM = 1, /* SentencePiece BPE, scores decide merges, byte fallback */
    AMPR__TOK_BPE = 2  /* byte-level BPE, merge ranks decide merges */
} ampr__tok_kind;

typedef enum ampr__tok_pre {
    AMPR__PRE_DEFAULT = 0, /* SPM: none; BPE: the GPT-2 regex */
    AMPR__PRE_GPT2 = 1,
    AMPR__PRE_LLAMA3 = 2
} ampr__tok_pre;

/* Token types, numbered as GGUF's tokenizer.ggml.token_type. */
enum {
    AMPR__TT_NORMAL = 1,
    AMPR__TT_UNKNOWN = 2,
    AMPR__TT_CONTROL = 3,
    AMPR__TT_USER_DEFINED = 4,
    AMPR__TT_UNUSED = 5,
    AMPR__TT_BYTE = 6
};

/* A neutral description of a vocabulary; ampr__tok_new() copies all of it, so
 * the arrays may point into a mapped file. */
typedef struct ampr__tok_spec {
    ampr__tok_kind kind;
    ampr__tok_pre pre;
    int32_t n_vocab;
    const char *const *tokens;   /* n_vocab strings as stored (SPM: U+2581 for space) */
    const uint32_t *token_lens;  /* byte length of each (they need not be NUL-terminated) */
    const float *scores;         /* n_vocab, or NULL (BPE) */
    const int32_t *types;        /* n_vocab AMPR__TT_*, or NULL (all NORMAL, <0xNN> = BYTE) */
    int32_t n_merges;            /* BPE (and tokenizer.json SPM-BPE): "left right" pairs */
    const char *const *merges;
    const uint32_t *merge_lens;
    int32_t bos_id, eos_id, unk_id, pad_id; /* -1 when absent */
    int add_bos;                 /* default for callers that do not say */
    int add_space_prefix;        /* SPM: prepend one space (add_dummy_prefix) */
    /* SPM: SentencePiece remove_extra_whitespaces (drop leading and trailing
     * spaces, collapse runs of spaces to one); GGUF's
     * tokenizer.ggml.remove_extra_whitespaces. 0 for Llama 2. (Appended field.) */
    int remove_extra_ws;
} ampr__tok_spec;

ampr_status ampr__tok_new(const ampr__tok_spec *spec, ampr__tokenizer **out, ampr__err *err);
/* Parse a Hugging Face tokenizer.json (len bytes, need not be NUL-terminated). */
ampr_status ampr__tok_from_hf_json(const char *json, size_t len, ampr__tokenizer **out,
                                   ampr__err *err);
/* Parse a llama2.c tokenizer.bin holding n_vocab entries (ids 0/1/2 are
 * <unk>/<s>/</s>, 3..258 the byte tokens; a stored ' ' means U+2581). */
ampr_status ampr__tok_from_llama2c(const void *data, size_t len, int32_t n_vocab,
                                   ampr__tokenizer **out, ampr__err *err);
void ampr__tok_free(ampr__tokenizer *tok);

int32_t ampr__tok_n_vocab(const ampr__tokenizer *tok);
int32_t ampr__tok_bos(const ampr__tokenizer *tok); /* -1 if none */
int32_t ampr__tok_eos(const ampr__tokenizer *tok); /* -1 if none */
int ampr__tok_add_bos_default(const ampr__tokenizer *tok);
/* 1 for control/unknown/unused tokens, which decode to nothing. */
int ampr__tok_is_special(const ampr__tokenizer *tok, int32_t id);
/* The stored text of a token (for the converter and debugging). */
const char *ampr__tok_text(const ampr__tokenizer *tok, int32_t id, uint32_t *len);
float ampr__tok_score(const ampr__tokenizer *tok, int32_t id);
int32_t ampr__tok_type(const ampr__tokenizer *tok, int32_t id);

/* Encode n bytes of UTF-8 text. *ids is allocated with ampr__malloc (free
 * with ampr__free) and holds *n_ids ids, BOS first when add_bos and the
 * vocabulary has one. Invalid UTF-8 fails with AMPR_ERR_BAD_UTF8. Empty text
 * gives zero ids (plus BOS). */
ampr_status ampr__tok_encode(const ampr__tokenizer *tok, const char *text, size_t n,
                             int add_bos, int32_t **ids, size_t *n_ids, ampr__err *err);

/* As ampr__tok_encode with flags. By default (flags 0) the text of added and
 * special tokens (CONTROL/USER_DEFINED from a spec, added_tokens of a
 * tokenizer.json; never for a llama2.c vocabulary) is matched literally in the
 * input and becomes that token, as llama.cpp with parse_special and HF
 * tokenizers do; AMPR__ENC_NO_SPECIAL treats all text as plain text, as
 * SentencePiece does. */
enum {
    AMPR__ENC_ADD_BOS = 1,
    AMPR__ENC_NO_SPECIAL = 2,
    AMPR__ENC_NO_CUT = 4 /* testing: SPM merges each segment whole (same ids, slower) */
};
ampr_status ampr__tok_encode_ex(const ampr__tokenizer *tok, const char *text, size_t n,
                                unsigned flags, int32_t **ids, size_t *n_ids, ampr__err *err);

/* Streaming decoder. Zero-initialise (or ampr__detok_init), then push ids one
 * by one; each push writes the bytes that became complete. */
typedef struct ampr__detok {
    unsigned char pending[8]; /* bytes of an incomplete UTF-8 character */
    int n_pending;
    int32_t prev; /* previous id, -1 at start (SPM strips the space after BOS) */
} ampr__detok;
void ampr__detok_init(ampr__detok *d);
/* Append the text of id to out[0..cap); returns the bytes written. cap must be
 * at least AMPR__DETOK_MAX_PIECE + 8. Special tokens write nothing. Never
 * writes past cap: bytes that do not fit are dropped, which can only happen
 * for a token that decodes to more than AMPR__DETOK_MAX_PIECE bytes or whose
 * invalid bytes expand to U+FFFD past that. SPM vocabularies strip one
 * leading space from the first piece at stream start or right after BOS. */
#define AMPR__DETOK_MAX_PIECE 256
size_t ampr__detok_push(const ampr__tokenizer *tok, ampr__detok *d, int32_t id, char *out,
                        size_t cap);
/* End of stream: a dangling incomplete character becomes U+FFFD. */
size_t ampr__detok_flush(ampr__detok *d, char *out, size_t cap);

#endif
