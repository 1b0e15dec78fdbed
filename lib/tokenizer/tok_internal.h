/*
 * tok_internal.h -- what the tokenizer's own files share and nothing else
 * sees: construction options beyond ampr__tok_spec, used by the llama2.c and
 * tokenizer.json loaders (tok_load.c) on top of the core (tokenizer.c).
 */
#ifndef AMPR_TOK_INTERNAL_H
#define AMPR_TOK_INTERNAL_H

#include "tokenizer.h"

/* Per-token flags for literal matching of added/special tokens in the input. */
enum {
    AMPR__TOKF_MATCH = 1,  /* matched literally in the text before BPE */
    AMPR__TOKF_LSTRIP = 2, /* swallows the whitespace on its left */
    AMPR__TOKF_RSTRIP = 4  /* swallows the whitespace on its right */
};

typedef struct ampr__tok_opts {
    /* llama2.c run.c semantics: a character whose piece is not in the vocab
     * (and a literal U+2581, which run.c's vocabulary stores as ' ') becomes
     * byte tokens at once and never merges; every vocab entry may be a merge
     * result, whatever its type. */
    int runc_compat;
    /* SPM: prepend the space only to the first text segment, not after each
     * literal special token (HF Metaspace prepend_scheme "first"). */
    int space_prefix_first_only;
    /* Byte-level BPE: the pre-tokenizer regex (PCRE2 syntax), overriding the
     * one chosen by spec->pre; NULL for none given. */
    const char *regex;
    size_t regex_len;
    int ignore_merges;    /* BPE: a pre-token that is itself a vocab entry is emitted whole */
    int bpe_prefix_space; /* BPE: ByteLevel add_prefix_space */
    /* n_vocab AMPR__TOKF_* flags, or NULL: then CONTROL and USER_DEFINED
     * tokens are matched (llama.cpp with parse_special), none in runc mode. */
    const uint8_t *tok_flags;
} ampr__tok_opts;

ampr_status ampr__tok_new_ex(const ampr__tok_spec *spec, const ampr__tok_opts *opts,
                             ampr__tokenizer **out, ampr__err *err);

#endif
