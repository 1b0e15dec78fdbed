/*
 * tok_load.c -- building a tokenizer from the two file formats that carry
 * one on their own: llama2.c's tokenizer.bin and Hugging Face's
 * tokenizer.json. Both are turned into an ampr__tok_spec plus a few
 * tokenizer.c options and handed to ampr__tok_new_ex(), which does all the
 * validation of the pieces themselves; this file checks the framing (sizes,
 * JSON structure, ids) and never trusts a length or an id it has not checked.
 *
 * tokenizer.json support, and what is decided here:
 *  - model.type "BPE" only (Unigram, WordPiece: AMPR_ERR_UNSUPPORTED).
 *  - Llama-2 style SentencePiece-BPE: no byte-level pre-tokenizer, spaces
 *    escaped to U+2581 (normalizer Prepend/Replace, or a Metaspace
 *    pre-tokenizer), byte_fallback; merges decide by rank as HF does.
 *  - Byte-level BPE: pre_tokenizer ByteLevel (GPT-2 regex when use_regex), or
 *    Sequence[Split(Regex), ByteLevel] (Llama 3), whose regex is compiled
 *    with PCRE2 as written in the file.
 *  - added_tokens are matched literally in the input before BPE, special or
 *    not, as HF does (lstrip/rstrip honoured); special ones are CONTROL
 *    tokens and decode to nothing, the others USER_DEFINED.
 *  - BOS: the first SpecialToken of post_processor.single (TemplateProcessing,
 *    also inside a Sequence) is the BOS and add_bos is then on; otherwise
 *    add_bos is off and BOS/EOS are looked up by their usual names.
 *  - Ids missing from both vocab and added_tokens become empty UNUSED tokens.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define MAX_VOCAB (1 << 24)

/* ---- llama2.c tokenizer.bin --------------------------------------------- */

static int32_t rd_i32(const unsigned char *p) {
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                 ((uint32_t)p[3] << 24);
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

static float rd_f32(const unsigned char *p) {
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                 ((uint32_t)p[3] << 24);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Trim ASCII whitespace from both ends of [*s, *s+*n). */
static void trim(const char **s, size_t *n) {
    while (*n && (**s == ' ' || **s == '\n' || **s == '\t' || **s == '\r')) { (*s)++; (*n)--; }
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\n' || (*s)[*n - 1] == '\t' ||
                  (*s)[*n - 1] == '\r'))
        (*n)--;
}

ampr_status ampr__tok_from_llama2c(const void *data, size_t len, int32_t n_vocab,
                                   ampr__tokenizer **out, ampr__err *err) {
    if (!out) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "tokenizer.bin: out is NULL");
    *out = NULL;
    if (!data && len) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "tokenizer.bin: data is NULL");
    if (n_vocab <= 0 || n_vocab > MAX_VOCAB)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.bin: bad vocabulary size %d",
                          (int)n_vocab);
    const unsigned char *p = data;
    if (len < 4)
        return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED, "tokenizer.bin: no header (%zu bytes)", len);
    if (rd_i32(p) < 0)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.bin: negative max_token_length");
    /* first pass: check the framing and size the text */
    size_t pos = 4, text_bytes = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (len - pos < 8)
            return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                              "tokenizer.bin: ends in token %d of %d", (int)i, (int)n_vocab);
        int32_t l = rd_i32(p + pos + 4);
        if (l < 0)
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.bin: token %d has length %d",
                              (int)i, (int)l);
        pos += 8;
        if ((size_t)l > len - pos)
            return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                              "tokenizer.bin: token %d (%d bytes) runs past the end", (int)i, (int)l);
        pos += (size_t)l;
        text_bytes += (size_t)l * 3; /* ' ' -> U+2581 at most triples it */
    }
    ampr_status st = AMPR_OK;
    size_t nv = (size_t)n_vocab;
    char *blob = ampr__malloc(text_bytes + 1);
    const char **toks = ampr__calloc(nv, sizeof *toks);
    uint32_t *lens = ampr__calloc(nv, sizeof *lens);
    float *scores = ampr__calloc(nv, sizeof *scores);
    int32_t *types = ampr__calloc(nv, sizeof *types);
    if (!blob || !toks || !lens || !scores || !types) {
        st = ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer.bin: out of memory");
        goto done;
    }
    pos = 4;
    size_t o = 0;
    for (size_t i = 0; i < nv; i++) {
        scores[i] = rd_f32(p + pos);
        size_t l = (size_t)rd_i32(p + pos + 4);
        const char *s = (const char *)p + pos + 8;
        pos += 8 + l;
        const char *ts = s;
        size_t tl = l;
        trim(&ts, &tl);
        int32_t ty = AMPR__TT_NORMAL;
        if (i <= 2 && ((tl == 5 && !memcmp(ts, "<unk>", 5)) || (tl == 3 && !memcmp(ts, "<s>", 3)) ||
                       (tl == 4 && !memcmp(ts, "</s>", 4)))) {
            ty = i == 0 ? AMPR__TT_UNKNOWN : AMPR__TT_CONTROL; /* id 2 is stored "\n</s>\n" */
            s = ts;
            l = tl;
        } else if (l == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
            ty = AMPR__TT_BYTE;
        }
        toks[i] = blob + o;
        for (size_t k = 0; k < l; k++) {
            if (s[k] == ' ' && ty == AMPR__TT_NORMAL) {
                memcpy(blob + o, "\xe2\x96\x81", 3);
                o += 3;
            } else {
                blob[o++] = s[k];
            }
        }
        lens[i] = (uint32_t)(blob + o - toks[i]);
        types[i] = ty;
    }
    ampr__tok_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.kind = AMPR__TOK_SPM;
    spec.n_vocab = n_vocab;
    spec.tokens = toks;
    spec.token_lens = lens;
    spec.scores = scores;
    spec.types = types;
    spec.unk_id = n_vocab > 0 ? 0 : -1;
    spec.bos_id = n_vocab > 1 ? 1 : -1;
    spec.eos_id = n_vocab > 2 ? 2 : -1;
    spec.pad_id = -1;
    spec.add_bos = 1;
    spec.add_space_prefix = 1;
    ampr__tok_opts opts;
    memset(&opts, 0, sizeof opts);
    opts.runc_compat = 1;
    st = ampr__tok_new_ex(&spec, &opts, out, err);
done:
    ampr__free(blob);
    ampr__free(toks);
    ampr__free(lens);
    ampr__free(scores);
    ampr__free(types);
    return st;
}

/* ---- Hugging Face tokenizer.json ---------------------------------------- */

typedef struct hf {
    ampr__err *err;
    int32_t n_vocab;
    const char **toks; /* borrowed from the JSON document */
    uint32_t *lens;
    int32_t *types;
    uint8_t *flags;
    char **merge_strs; /* owned */
    uint32_t *merge_lens;
    int32_t n_merges;
} hf;

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(json_t *o, const char *key, int dflt) {
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int32_t find_tok(const hf *h, const char *s) {
    size_t n = strlen(s);
    for (int32_t i = 0; i < h->n_vocab; i++)
        if (h->toks[i] && h->lens[i] == n && memcmp(h->toks[i], s, n) == 0) return i;
    return -1;
}

/* The first SpecialToken of a TemplateProcessing "single" template, or -1. */
static int32_t template_bos(const hf *h, json_t *pp) {
    if (!json_is_object(pp)) return -1;
    const char *ty = jstr(pp, "type");
    if (ty && !strcmp(ty, "Sequence")) {
        json_t *procs = json_object_get(pp, "processors");
        size_t i;
        json_t *p;
        json_array_foreach(procs, i, p) {
            int32_t b = template_bos(h, p);
            if (b >= 0) return b;
        }
        return -1;
    }
    if (!ty || strcmp(ty, "TemplateProcessing")) return -1;
    json_t *single = json_object_get(pp, "single");
    json_t *first = json_array_get(single, 0);
    json_t *stok = json_object_get(first, "SpecialToken");
    const char *name = jstr(stok, "id");
    if (!name) return -1;
    json_t *ids = json_object_get(json_object_get(json_object_get(pp, "special_tokens"), name), "ids");
    json_t *id0 = json_array_get(ids, 0);
    if (json_is_integer(id0)) {
        json_int_t v = json_integer_value(id0);
        if (v >= 0 && v < h->n_vocab) return (int32_t)v;
    }
    return find_tok(h, name);
}

static int32_t find_first(const hf *h, const char *const *names) {
    for (; *names; names++) {
        int32_t id = find_tok(h, *names);
        if (id >= 0) return id;
    }
    return -1;
}

static int has_metaspace_char(const char *s) { return s && strstr(s, "\xe2\x96\x81") != NULL; }

/* Does the normalizer prepend U+2581 (or mention it at all: *mentions)? */
static void scan_normalizer(json_t *n, int *prepend, int *mentions) {
    if (!json_is_object(n)) return;
    const char *ty = jstr(n, "type");
    if (!ty) return;
    if (!strcmp(ty, "Sequence")) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(n, "normalizers"), i, x) scan_normalizer(x, prepend, mentions);
    } else if (!strcmp(ty, "Prepend")) {
        if (has_metaspace_char(jstr(n, "prepend"))) *prepend = *mentions = 1;
    } else if (!strcmp(ty, "Replace")) {
        if (has_metaspace_char(jstr(n, "content"))) *mentions = 1;
    }
}

typedef struct pre_info {
    int byte_level, use_regex, prefix_space;
    const char *regex;
    int metaspace, meta_prefix, meta_first;
    int unsupported;
} pre_info;

static void scan_pre(json_t *p, pre_info *pi) {
    if (!json_is_object(p)) return;
    const char *ty = jstr(p, "type");
    if (!ty) { pi->unsupported = 1; return; }
    if (!strcmp(ty, "Sequence")) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(p, "pretokenizers"), i, x) scan_pre(x, pi);
    } else if (!strcmp(ty, "ByteLevel")) {
        pi->byte_level = 1;
        pi->use_regex = jbool(p, "use_regex", 1);
        pi->prefix_space = jbool(p, "add_prefix_space", 0);
    } else if (!strcmp(ty, "Split")) {
        const char *re = jstr(json_object_get(p, "pattern"), "Regex");
        if (!re || jbool(p, "invert", 0) || pi->regex) pi->unsupported = 1;
        else pi->regex = re;
    } else if (!strcmp(ty, "Metaspace")) {
        pi->metaspace = 1;
        const char *scheme = jstr(p, "prepend_scheme");
        if (scheme) {
            pi->meta_prefix = strcmp(scheme, "never") != 0;
            pi->meta_first = !strcmp(scheme, "first");
        } else {
            pi->meta_prefix = jbool(p, "add_prefix_space", 1);
        }
        if (jbool(p, "split", 0)) pi->unsupported = 1;
    } else {
        pi->unsupported = 1; /* Whitespace, Digits, Punctuation, ... */
    }
}

static ampr_status set_token(hf *h, json_int_t id, const char *s, size_t n, const char *what) {
    if (id < 0 || id >= h->n_vocab)
        return ampr__fail(h->err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: %s id %lld out of range",
                          what, (long long)id);
    if (h->toks[id]) {
        if (h->lens[id] == n && memcmp(h->toks[id], s, n) == 0) return AMPR_OK;
        return ampr__fail(h->err, AMPR_ERR_MODEL_VOCAB,
                          "tokenizer.json: id %lld is given to two different tokens", (long long)id);
    }
    h->toks[id] = s;
    h->lens[id] = (uint32_t)n;
    return AMPR_OK;
}

static ampr_status load_merges(hf *h, json_t *merges) {
    size_t nm = json_array_size(merges);
    if (!json_is_array(merges) || nm == 0)
        return ampr__fail(h->err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: model.merges missing or empty");
    if (nm >= MAX_VOCAB)
        return ampr__fail(h->err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: too many merges");
    h->merge_strs = ampr__calloc(nm, sizeof(char *));
    h->merge_lens = ampr__calloc(nm, sizeof(uint32_t));
    if (!h->merge_strs || !h->merge_lens)
        return ampr__fail(h->err, AMPR_ERR_NOMEM, "tokenizer.json: out of memory");
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        const char *a, *b = NULL;
        size_t al, bl = 0;
        if (json_is_string(m)) {
            a = json_string_value(m);
            al = json_string_length(m);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
            if (memchr(a, ' ', al) || memchr(b, ' ', bl))
                return ampr__fail(h->err, AMPR_ERR_UNSUPPORTED,
                                  "tokenizer.json: merge %zu has a piece containing a space", i);
        } else {
            return ampr__fail(h->err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: merge %zu is malformed", i);
        }
        size_t tot = al + (b ? 1 + bl : 0);
        if (tot > 1u << 20)
            return ampr__fail(h->err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: merge %zu too long", i);
        char *s = ampr__malloc(tot + 1);
        if (!s) return ampr__fail(h->err, AMPR_ERR_NOMEM, "tokenizer.json: out of memory");
        memcpy(s, a, al);
        if (b) {
            s[al] = ' ';
            memcpy(s + al + 1, b, bl);
        }
        s[tot] = 0;
        h->merge_strs[i] = s;
        h->merge_lens[i] = (uint32_t)tot;
        h->n_merges = (int32_t)(i + 1);
    }
    return AMPR_OK;
}

static ampr_status hf_build(hf *h, json_t *root, ampr__tokenizer **out) {
    ampr__err *err = h->err;
    if (!json_is_object(root))
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: not a JSON object");
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: no \"model\" object");
    json_t *mtype = json_object_get(model, "type");
    if (mtype && !json_is_string(mtype))
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: model.type is not a string");
    if (mtype && strcmp(json_string_value(mtype), "BPE") != 0)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "tokenizer.json: model type \"%.40s\" is not supported",
                          json_string_value(mtype));
    const char *csp = jstr(model, "continuing_subword_prefix"), *eow = jstr(model, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "tokenizer.json: BPE with subword prefixes/suffixes is not supported");
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab) || json_object_size(vocab) == 0)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: model.vocab missing or empty");
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added) && !json_is_null(added))
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: added_tokens is not an array");

    /* ids: size the vocabulary */
    json_int_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val))
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: vocab id of \"%.40s\" is not an integer", key);
        json_int_t v = json_integer_value(val);
        if (v < 0 || v >= MAX_VOCAB)
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: vocab id %lld out of range", (long long)v);
        if (v > max_id) max_id = v;
    }
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        json_t *id = json_object_get(a, "id");
        if (!json_is_object(a) || !json_is_integer(id) || !json_is_string(json_object_get(a, "content")))
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: added token %zu is malformed", i);
        json_int_t v = json_integer_value(id);
        if (v < 0 || v >= MAX_VOCAB)
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: added token id %lld out of range", (long long)v);
        if (v > max_id) max_id = v;
    }
    size_t n_entries = json_object_size(vocab) + json_array_size(added);
    if ((size_t)max_id + 1 > 2 * n_entries + 1024)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB,
                          "tokenizer.json: ids up to %lld for %zu tokens (far from dense)",
                          (long long)max_id, n_entries);
    h->n_vocab = (int32_t)max_id + 1;
    size_t nv = (size_t)h->n_vocab;
    h->toks = ampr__calloc(nv, sizeof *h->toks);
    h->lens = ampr__calloc(nv, sizeof *h->lens);
    h->types = ampr__calloc(nv, sizeof *h->types);
    h->flags = ampr__calloc(nv, 1);
    if (!h->toks || !h->lens || !h->types || !h->flags)
        return ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer.json: out of memory");

    /* the family */
    pre_info pi;
    memset(&pi, 0, sizeof pi);
    json_t *pre = json_object_get(root, "pre_tokenizer");
    scan_pre(pre, &pi);
    int norm_prepend = 0, norm_mentions = 0;
    scan_normalizer(json_object_get(root, "normalizer"), &norm_prepend, &norm_mentions);
    int byte_fallback = jbool(model, "byte_fallback", 0);
    ampr__tok_kind kind;
    if (pi.byte_level) kind = AMPR__TOK_BPE;
    else if (pi.metaspace || norm_mentions || byte_fallback) kind = AMPR__TOK_SPM;
    else
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "tokenizer.json: BPE that is neither byte-level nor SentencePiece-style");
    if (pi.unsupported || (kind == AMPR__TOK_SPM && pi.regex))
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "tokenizer.json: unsupported pre_tokenizer");

    json_object_foreach(vocab, key, val) {
        size_t kl = strlen(key);
        AMPR__TRY(set_token(h, json_integer_value(val), key, kl, "vocab"));
        int32_t id = (int32_t)json_integer_value(val);
        h->types[id] = AMPR__TT_NORMAL;
        if (kind == AMPR__TOK_SPM && kl == 6 && !memcmp(key, "<0x", 3) && key[5] == '>') {
            const char *hx = "0123456789ABCDEF";
            if (key[3] && key[4] && strchr(hx, key[3]) && strchr(hx, key[4]))
                h->types[id] = AMPR__TT_BYTE;
        }
    }
    json_array_foreach(added, i, a) {
        json_t *c = json_object_get(a, "content");
        json_int_t v = json_integer_value(json_object_get(a, "id"));
        AMPR__TRY(set_token(h, v, json_string_value(c), json_string_length(c), "added token"));
        h->types[v] = jbool(a, "special", 0) ? AMPR__TT_CONTROL : AMPR__TT_USER_DEFINED;
        h->flags[v] = AMPR__TOKF_MATCH | (jbool(a, "lstrip", 0) ? AMPR__TOKF_LSTRIP : 0) |
                      (jbool(a, "rstrip", 0) ? AMPR__TOKF_RSTRIP : 0);
    }
    for (size_t k = 0; k < nv; k++) {
        if (!h->toks[k]) {
            h->toks[k] = "";
            h->types[k] = AMPR__TT_UNUSED;
        } else if (memchr(h->toks[k], 0, h->lens[k])) {
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: token %zu contains NUL", k);
        }
    }
    int32_t unk = -1;
    const char *unk_s = jstr(model, "unk_token");
    if (unk_s) {
        unk = find_tok(h, unk_s);
        if (unk < 0)
            return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: unk_token \"%.40s\" not in the vocabulary", unk_s);
        h->types[unk] = AMPR__TT_UNKNOWN;
    }
    AMPR__TRY(load_merges(h, json_object_get(model, "merges")));

    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>",
                                            "<|endoftext|>", NULL};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", NULL};
    json_t *pp = json_object_get(root, "post_processor");
    int32_t bos = template_bos(h, pp);
    int add_bos = bos >= 0;
    if (bos < 0) bos = find_first(h, bos_names);

    ampr__tok_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.kind = kind;
    spec.pre = pi.byte_level && pi.use_regex ? AMPR__PRE_GPT2 : AMPR__PRE_DEFAULT;
    spec.n_vocab = h->n_vocab;
    spec.tokens = h->toks;
    spec.token_lens = h->lens;
    spec.types = h->types;
    spec.n_merges = h->n_merges;
    spec.merges = (const char *const *)h->merge_strs;
    spec.merge_lens = h->merge_lens;
    spec.bos_id = bos;
    spec.eos_id = find_first(h, eos_names);
    spec.unk_id = unk;
    spec.pad_id = -1;
    spec.add_bos = add_bos;
    spec.add_space_prefix = kind == AMPR__TOK_SPM && (norm_prepend || (pi.metaspace && pi.meta_prefix));
    ampr__tok_opts opts;
    memset(&opts, 0, sizeof opts);
    opts.space_prefix_first_only = pi.metaspace && pi.meta_first;
    if (pi.regex) {
        opts.regex = pi.regex;
        opts.regex_len = strlen(pi.regex);
    } else if (pi.byte_level && !pi.use_regex) {
        /* no splitting at all: one pre-token per segment */
        opts.regex = "(?s).+";
        opts.regex_len = 5;
    }
    opts.ignore_merges = jbool(model, "ignore_merges", 0);
    opts.bpe_prefix_space = pi.prefix_space;
    opts.tok_flags = h->flags;
    return ampr__tok_new_ex(&spec, &opts, out, err);
}

ampr_status ampr__tok_from_hf_json(const char *json, size_t len, ampr__tokenizer **out,
                                   ampr__err *err) {
    if (!out) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "tokenizer.json: out is NULL");
    *out = NULL;
    if (!json && len) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "tokenizer.json: NULL text");
    json_error_t je;
    int oom;
    json_t *root = ampr__json_parse(json ? json : "", len, 0, &je, &oom);
    if (oom)
        return ampr__fail(err, AMPR_ERR_NOMEM, "tokenizer.json: out of memory parsing it");
    if (!root)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "tokenizer.json: line %d column %d: %s",
                          je.line, je.column, je.text);
    hf h;
    memset(&h, 0, sizeof h);
    h.err = err;
    ampr_status st = hf_build(&h, root, out);
    for (int32_t i = 0; i < h.n_merges; i++) ampr__free(h.merge_strs[i]);
    ampr__free(h.merge_strs);
    ampr__free(h.merge_lens);
    ampr__free(h.toks);
    ampr__free(h.lens);
    ampr__free(h.types);
    ampr__free(h.flags);
    json_decref(root);
    return st;
}
