/*
 * gguf.c -- load a GGUF (v2/v3) file as written by llama.cpp.
 *
 * Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv
 * key-value pairs (string key, u32 type, value); n_tensors tensor infos
 * (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset); then,
 * padded to general.alignment (default 32), the data section that the
 * offsets are relative to. A string is a u64 byte count and the bytes.
 *
 * The file is untrusted: every count is checked against the bytes left
 * before anything is allocated for it, every read is bounds-checked, and
 * values point into the read-only mapping, never copied unless they must be
 * aligned (scores, token types). Status choices: a file that ends inside
 * the header or inside a tensor is TRUNCATED; a tensor offset that is
 * misaligned or starts beyond the end of the file is BOUNDS.
 */
#include "model_int.h"

#include <math.h>
#include <stdio.h>

enum {
    GT_U8 = 0, GT_I8 = 1, GT_U16 = 2, GT_I16 = 3, GT_U32 = 4, GT_I32 = 5, GT_F32 = 6,
    GT_BOOL = 7, GT_STRING = 8, GT_ARRAY = 9, GT_U64 = 10, GT_I64 = 11, GT_F64 = 12,
    GT_COUNT
};

static const uint8_t k_type_size[GT_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

typedef struct cursor {
    const uint8_t *base;
    uint64_t pos, end;
} cursor;

typedef struct gguf_kv {
    const char *key;
    uint64_t key_len;
    uint32_t type;
    uint64_t val; /* file offset of the value (arrays: of the first element) */
    uint32_t arr_type;
    uint64_t arr_n;
} gguf_kv;

typedef struct gguf {
    const uint8_t *base;
    uint64_t size;
    gguf_kv *kv;
    uint64_t n_kv;
} gguf;

static ampr_status need(cursor *c, uint64_t n, const char *what, ampr__err *err) {
    if (n > c->end - c->pos)
        return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                          "GGUF: file ends inside %s (at byte %llu, %llu more needed)", what,
                          (unsigned long long)c->pos, (unsigned long long)n);
    return AMPR_OK;
}

static ampr_status rd_u32(cursor *c, uint32_t *v, const char *what, ampr__err *err) {
    AMPR__TRY(need(c, 4, what, err));
    memcpy(v, c->base + c->pos, 4);
    c->pos += 4;
    return AMPR_OK;
}

static ampr_status rd_u64(cursor *c, uint64_t *v, const char *what, ampr__err *err) {
    AMPR__TRY(need(c, 8, what, err));
    memcpy(v, c->base + c->pos, 8);
    c->pos += 8;
    return AMPR_OK;
}

static ampr_status rd_str(cursor *c, const char **s, uint64_t *len, const char *what,
                          ampr__err *err) {
    uint64_t n;
    AMPR__TRY(rd_u64(c, &n, what, err));
    if (n > c->end - c->pos)
        return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                          "GGUF: %s claims %llu bytes, more than the file holds", what,
                          (unsigned long long)n);
    *s = (const char *)c->base + c->pos;
    *len = n;
    c->pos += n;
    return AMPR_OK;
}

static ampr_status skip_value(cursor *c, gguf_kv *kv, ampr__err *err) {
    if (kv->type >= GT_COUNT)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "GGUF: key %.*s has unknown type %u",
                          (int)AMPR__MIN(kv->key_len, 200), kv->key, kv->type);
    if (kv->type == GT_STRING) {
        const char *s;
        uint64_t n;
        kv->val = c->pos;
        return rd_str(c, &s, &n, "a string value", err);
    }
    if (kv->type != GT_ARRAY) {
        kv->val = c->pos;
        AMPR__TRY(need(c, k_type_size[kv->type], "a value", err));
        c->pos += k_type_size[kv->type];
        return AMPR_OK;
    }
    AMPR__TRY(rd_u32(c, &kv->arr_type, "an array type", err));
    AMPR__TRY(rd_u64(c, &kv->arr_n, "an array length", err));
    kv->val = c->pos;
    if (kv->arr_type == GT_ARRAY)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "GGUF: key %.*s is a nested array",
                          (int)AMPR__MIN(kv->key_len, 200), kv->key);
    if (kv->arr_type >= GT_COUNT)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT,
                          "GGUF: key %.*s is an array of unknown type %u",
                          (int)AMPR__MIN(kv->key_len, 200), kv->key, kv->arr_type);
    if (kv->arr_type == GT_STRING) {
        if (kv->arr_n > (c->end - c->pos) / 8)
            return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                              "GGUF: array %.*s claims %llu strings, more than the file holds",
                              (int)AMPR__MIN(kv->key_len, 200), kv->key,
                              (unsigned long long)kv->arr_n);
        for (uint64_t i = 0; i < kv->arr_n; i++) {
            const char *s;
            uint64_t n;
            AMPR__TRY(rd_str(c, &s, &n, "an array string", err));
        }
        return AMPR_OK;
    }
    uint64_t bytes;
    if (!ampr__mul_ok(kv->arr_n, k_type_size[kv->arr_type], &bytes) || bytes > c->end - c->pos)
        return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                          "GGUF: array %.*s claims %llu elements, more than the file holds",
                          (int)AMPR__MIN(kv->key_len, 200), kv->key,
                          (unsigned long long)kv->arr_n);
    c->pos += bytes;
    return AMPR_OK;
}

static const gguf_kv *find_kv(const gguf *g, const char *key) {
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key_len == n && !memcmp(g->kv[i].key, key, n)) return &g->kv[i];
    return NULL;
}

/* Integer-typed key (any width) into *v; *found = 0 when absent. */
static ampr_status get_int(const gguf *g, const char *key, int64_t *v, int *found,
                           ampr__err *err) {
    const gguf_kv *kv = find_kv(g, key);
    *found = kv != NULL;
    if (!kv) return AMPR_OK;
    const uint8_t *p = g->base + kv->val;
    switch (kv->type) {
    case GT_U8: *v = p[0]; break;
    case GT_I8: *v = (int8_t)p[0]; break;
    case GT_BOOL: *v = p[0] != 0; break;
    case GT_U16: { uint16_t x; memcpy(&x, p, 2); *v = x; break; }
    case GT_I16: { int16_t x; memcpy(&x, p, 2); *v = x; break; }
    case GT_U32: { uint32_t x; memcpy(&x, p, 4); *v = x; break; }
    case GT_I32: { int32_t x; memcpy(&x, p, 4); *v = x; break; }
    case GT_U64: {
        uint64_t x;
        memcpy(&x, p, 8);
        *v = x > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)x;
        break;
    }
    case GT_I64: { int64_t x; memcpy(&x, p, 8); *v = x; break; }
    default:
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "GGUF: key %s is not an integer", key);
    }
    return AMPR_OK;
}

static ampr_status get_f32(const gguf *g, const char *key, float *v, int *found,
                           ampr__err *err) {
    const gguf_kv *kv = find_kv(g, key);
    *found = kv != NULL;
    if (!kv) return AMPR_OK;
    const uint8_t *p = g->base + kv->val;
    if (kv->type == GT_F32) {
        memcpy(v, p, 4);
    } else if (kv->type == GT_F64) {
        double d;
        memcpy(&d, p, 8);
        *v = (float)d;
    } else {
        int64_t i;
        AMPR__TRY(get_int(g, key, &i, found, err));
        *v = (float)i;
    }
    return AMPR_OK;
}

static ampr_status get_str(const gguf *g, const char *key, const char **s, uint64_t *len,
                           ampr__err *err) {
    const gguf_kv *kv = find_kv(g, key);
    *s = NULL;
    *len = 0;
    if (!kv) return AMPR_OK;
    if (kv->type != GT_STRING)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "GGUF: key %s is not a string", key);
    memcpy(len, g->base + kv->val, 8);
    *s = (const char *)g->base + kv->val + 8;
    return AMPR_OK;
}

/* An array key whose elements have type want (NULL when absent). */
static ampr_status get_arr(const gguf *g, const char *key, uint32_t want, const gguf_kv **out,
                           ampr__err *err) {
    const gguf_kv *kv = find_kv(g, key);
    *out = NULL;
    if (!kv) return AMPR_OK;
    if (kv->type != GT_ARRAY || kv->arr_type != want)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "GGUF: key %s is not an array of type %u",
                          key, want);
    *out = kv;
    return AMPR_OK;
}

static int str_is(const char *s, uint64_t n, const char *lit) {
    return s && n == strlen(lit) && !memcmp(s, lit, n);
}

/* An int32 hyper-parameter: required ones fail MISSING when absent. */
static ampr_status get_hp(const gguf *g, const char *key, int required, int32_t dflt,
                          int32_t *v, ampr__err *err) {
    int64_t x;
    int found;
    AMPR__TRY(get_int(g, key, &x, &found, err));
    if (!found) {
        if (required)
            return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "GGUF: key %s is missing", key);
        *v = dflt;
        return AMPR_OK;
    }
    if (x < 0 || x > INT32_MAX)
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "GGUF: %s = %lld is out of range", key,
                          (long long)x);
    *v = (int32_t)x;
    return AMPR_OK;
}

static ampr_status read_hparams(const gguf *g, ampr__hparams *hp, ampr__err *err) {
    const char *arch;
    uint64_t arch_len;
    AMPR__TRY(get_str(g, "general.architecture", &arch, &arch_len, err));
    if (!arch)
        return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "GGUF: general.architecture is missing");
    if (!str_is(arch, arch_len, "llama"))
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "GGUF: architecture \"%.*s\" is not llama",
                          (int)AMPR__MIN(arch_len, 64), arch);
    memset(hp, 0, sizeof *hp);
    AMPR__TRY(get_hp(g, "llama.embedding_length", 1, 0, &hp->dim, err));
    AMPR__TRY(get_hp(g, "llama.feed_forward_length", 1, 0, &hp->hidden_dim, err));
    AMPR__TRY(get_hp(g, "llama.block_count", 1, 0, &hp->n_layers, err));
    AMPR__TRY(get_hp(g, "llama.attention.head_count", 1, 0, &hp->n_heads, err));
    AMPR__TRY(get_hp(g, "llama.attention.head_count_kv", 0, hp->n_heads, &hp->n_kv_heads, err));
    AMPR__TRY(get_hp(g, "llama.context_length", 1, 0, &hp->context_length, err));
    if (hp->n_heads <= 0 || hp->dim <= 0)
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "GGUF: dim %d, heads %d", hp->dim,
                          hp->n_heads);
    int32_t key_len;
    AMPR__TRY(get_hp(g, "llama.attention.key_length", 0, 0, &key_len, err));
    if (key_len) {
        hp->head_dim = key_len;
    } else {
        if (hp->dim % hp->n_heads != 0)
            return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS,
                              "GGUF: head_count %d does not divide embedding_length %d",
                              hp->n_heads, hp->dim);
        hp->head_dim = hp->dim / hp->n_heads;
    }
    int32_t rot;
    AMPR__TRY(get_hp(g, "llama.rope.dimension_count", 0, hp->head_dim, &rot, err));
    if (rot != hp->head_dim)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "GGUF: partial rotary embedding (%d of %d dims)", rot, hp->head_dim);
    int found;
    hp->norm_eps = 1e-5f;
    AMPR__TRY(get_f32(g, "llama.attention.layer_norm_rms_epsilon", &hp->norm_eps, &found, err));
    hp->rope_theta = 10000.0f;
    AMPR__TRY(get_f32(g, "llama.rope.freq_base", &hp->rope_theta, &found, err));
    hp->rope_layout = AMPR__ROPE_INTERLEAVED;
    return AMPR_OK;
}

/* Build the tokenizer from tokenizer.ggml.*. */
static ampr_status read_tokenizer(const gguf *g, ampr__tokenizer **out, ampr__err *err) {
    const char *model, *pre;
    uint64_t model_len, pre_len;
    AMPR__TRY(get_str(g, "tokenizer.ggml.model", &model, &model_len, err));
    AMPR__TRY(get_str(g, "tokenizer.ggml.pre", &pre, &pre_len, err));
    if (!model)
        return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "GGUF: tokenizer.ggml.model is missing");
    ampr__tok_spec sp;
    memset(&sp, 0, sizeof sp);
    if (str_is(model, model_len, "llama")) {
        sp.kind = AMPR__TOK_SPM;
        sp.pre = AMPR__PRE_DEFAULT;
    } else if (str_is(model, model_len, "gpt2")) {
        sp.kind = AMPR__TOK_BPE;
        sp.pre = (str_is(pre, pre_len, "llama-bpe") || str_is(pre, pre_len, "llama3"))
                     ? AMPR__PRE_LLAMA3
                     : AMPR__PRE_GPT2;
    } else {
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "GGUF: tokenizer model \"%.*s\"",
                          (int)AMPR__MIN(model_len, 64), model);
    }
    const gguf_kv *toks, *scores, *types, *merges;
    AMPR__TRY(get_arr(g, "tokenizer.ggml.tokens", GT_STRING, &toks, err));
    AMPR__TRY(get_arr(g, "tokenizer.ggml.scores", GT_F32, &scores, err));
    AMPR__TRY(get_arr(g, "tokenizer.ggml.token_type", GT_I32, &types, err));
    AMPR__TRY(get_arr(g, "tokenizer.ggml.merges", GT_STRING, &merges, err));
    if (!toks)
        return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "GGUF: tokenizer.ggml.tokens is missing");
    if (toks->arr_n == 0 || toks->arr_n > (1u << 24))
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "GGUF: %llu tokens",
                          (unsigned long long)toks->arr_n);
    if ((scores && scores->arr_n != toks->arr_n) || (types && types->arr_n != toks->arr_n))
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB,
                          "GGUF: scores/token_type lengths differ from the token count");
    if (merges && merges->arr_n > (1u << 24))
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "GGUF: too many merges");
    size_t n = (size_t)toks->arr_n, nm = merges ? (size_t)merges->arr_n : 0;
    const char **tok_s = ampr__alloc_array(n, sizeof *tok_s, err);
    uint32_t *tok_l = ampr__alloc_array(n, sizeof *tok_l, err);
    float *sc = scores ? ampr__alloc_array(n, sizeof *sc, err) : NULL;
    int32_t *ty = types ? ampr__alloc_array(n, sizeof *ty, err) : NULL;
    const char **mg_s = ampr__alloc_array(nm ? nm : 1, sizeof *mg_s, err);
    uint32_t *mg_l = ampr__alloc_array(nm ? nm : 1, sizeof *mg_l, err);
    ampr_status st = AMPR_OK;
    if (!tok_s || !tok_l || (scores && !sc) || (types && !ty) || !mg_s || !mg_l) {
        st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        goto done;
    }
    /* Strings were bounds-checked when the keys were skipped over. */
    cursor c = {g->base, toks->val, g->size};
    for (size_t i = 0; i < n && st == AMPR_OK; i++) {
        uint64_t len;
        st = rd_str(&c, &tok_s[i], &len, "a token", err);
        if (st == AMPR_OK && len > UINT32_MAX)
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "GGUF: token %zu is too long", i);
        tok_l[i] = (uint32_t)len;
    }
    if (merges) {
        c.pos = merges->val;
        for (size_t i = 0; i < nm && st == AMPR_OK; i++) {
            uint64_t len;
            st = rd_str(&c, &mg_s[i], &len, "a merge", err);
            if (st == AMPR_OK && len > UINT32_MAX)
                st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "GGUF: merge %zu is too long", i);
            mg_l[i] = (uint32_t)len;
        }
    }
    if (st != AMPR_OK) goto done;
    if (sc) memcpy(sc, g->base + scores->val, n * sizeof *sc);
    if (ty) memcpy(ty, g->base + types->val, n * sizeof *ty);

    sp.n_vocab = (int32_t)n;
    sp.tokens = tok_s;
    sp.token_lens = tok_l;
    sp.scores = sc;
    sp.types = ty;
    sp.n_merges = (int32_t)nm;
    sp.merges = mg_s;
    sp.merge_lens = mg_l;
    static const char *const id_keys[4] = {
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"};
    int32_t *ids[4] = {&sp.bos_id, &sp.eos_id, &sp.unk_id, &sp.pad_id};
    for (int k = 0; k < 4 && st == AMPR_OK; k++) {
        int64_t v;
        int found;
        st = get_int(g, id_keys[k], &v, &found, err);
        *ids[k] = -1;
        /* -1, stored as u32 0xFFFFFFFF by llama.cpp, means "none". */
        if (st == AMPR_OK && found && v != -1 && v != (int64_t)UINT32_MAX) {
            if (v < 0 || v >= (int64_t)n)
                st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "GGUF: %s = %lld is not a token",
                                id_keys[k], (long long)v);
            else *ids[k] = (int32_t)v;
        }
    }
    if (st != AMPR_OK) goto done;
    int64_t v;
    int found;
    sp.add_bos = sp.kind == AMPR__TOK_SPM;
    st = get_int(g, "tokenizer.ggml.add_bos_token", &v, &found, err);
    if (st == AMPR_OK && found) sp.add_bos = v != 0;
    sp.add_space_prefix = sp.kind == AMPR__TOK_SPM;
    if (st == AMPR_OK) st = get_int(g, "tokenizer.ggml.add_space_prefix", &v, &found, err);
    if (st == AMPR_OK && found) sp.add_space_prefix = v != 0;
    if (st == AMPR_OK) st = ampr__tok_new(&sp, out, err);
done:
    ampr__free(tok_s);
    ampr__free(tok_l);
    ampr__free(sc);
    ampr__free(ty);
    ampr__free(mg_s);
    ampr__free(mg_l);
    return st;
}

static ampr_status map_dtype(uint32_t t, const char *name, uint64_t name_len, ampr__dtype *dt,
                             ampr__err *err) {
    static const char *const known[] = {
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
        "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64",
        "IQ1_M", "BF16"};
    switch (t) {
    case 0: *dt = AMPR__DT_F32; return AMPR_OK;
    case 1: *dt = AMPR__DT_F16; return AMPR_OK;
    case 8: *dt = AMPR__DT_Q8_0; return AMPR_OK;
    case 30: *dt = AMPR__DT_BF16; return AMPR_OK;
    }
    return ampr__fail(err, AMPR_ERR_MODEL_DTYPE, "GGUF: tensor %.*s has type %s (%u), unsupported",
                      (int)AMPR__MIN(name_len, 200), name,
                      t < AMPR__ARRAY_LEN(known) ? known[t] : "unknown", t);
}

static ampr_status load(const char *path, int check_finite, ampr__model *m, ampr__err *err) {
    ampr__map map;
    AMPR__TRY(ampr__model_map(m, path, 24, &map, err));
    gguf g = {map.base, map.size, NULL, 0};
    cursor c = {map.base, 0, map.size};
    uint32_t magic, version;
    uint64_t n_tensors;
    AMPR__TRY(rd_u32(&c, &magic, "the header", err));
    if (memcmp(map.base, "GGUF", 4) != 0)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: not a GGUF file (bad magic)", path);
    AMPR__TRY(rd_u32(&c, &version, "the header", err));
    if (version != 2 && version != 3)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: GGUF version %u (2 or 3 supported)",
                          path, version);
    AMPR__TRY(rd_u64(&c, &n_tensors, "the header", err));
    AMPR__TRY(rd_u64(&c, &g.n_kv, "the header", err));
    /* A pair takes at least 13 bytes, a tensor info at least 32. */
    if (g.n_kv > (c.end - c.pos) / 13)
        return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                          "%s: %llu key-value pairs cannot fit in the file", path,
                          (unsigned long long)g.n_kv);
    if (n_tensors > (c.end - c.pos) / 32)
        return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED, "%s: %llu tensors cannot fit in the file",
                          path, (unsigned long long)n_tensors);

    ampr_status st = AMPR_OK;
    g.kv = ampr__alloc_array(g.n_kv ? (size_t)g.n_kv : 1, sizeof *g.kv, err);
    if (!g.kv) return AMPR_ERR_NOMEM;
    for (uint64_t i = 0; i < g.n_kv && st == AMPR_OK; i++) {
        gguf_kv *kv = &g.kv[i];
        st = rd_str(&c, &kv->key, &kv->key_len, "a key", err);
        if (st == AMPR_OK) st = rd_u32(&c, &kv->type, "a value type", err);
        if (st == AMPR_OK) st = skip_value(&c, kv, err);
    }
    if (st != AMPR_OK) goto done;

    int64_t align = 32;
    int found;
    st = get_int(&g, "general.alignment", &align, &found, err);
    if (st != AMPR_OK) goto done;
    if (align < 1 || align > (1 << 20) || (align & (align - 1)) != 0) {
        st = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: general.alignment %lld", path,
                        (long long)align);
        goto done;
    }

    /* Tensor infos: checked and appended as canonical tensors (GGUF names
     * are the canonical ones). Data pointers are fixed up below, once the
     * data section's start is known. */
    uint64_t *offsets = ampr__alloc_array(n_tensors ? (size_t)n_tensors : 1, 8, err);
    if (!offsets) {
        st = AMPR_ERR_NOMEM;
        goto done;
    }
    for (uint64_t i = 0; i < n_tensors && st == AMPR_OK; i++) {
        const char *name;
        uint64_t name_len;
        uint32_t n_dims = 0, type = 0;
        int64_t ne[4] = {1, 1, 1, 1};
        st = rd_str(&c, &name, &name_len, "a tensor name", err);
        if (st == AMPR_OK) st = rd_u32(&c, &n_dims, "a tensor info", err);
        if (st == AMPR_OK && (n_dims < 1 || n_dims > 4))
            st = ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "GGUF: tensor %.*s has %u dimensions",
                            (int)AMPR__MIN(name_len, 200), name, n_dims);
        for (uint32_t d = 0; d < n_dims && st == AMPR_OK; d++) {
            uint64_t x;
            st = rd_u64(&c, &x, "a tensor info", err);
            if (st == AMPR_OK && x > (uint64_t)INT64_MAX)
                st = ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "GGUF: tensor %.*s dimension too large",
                                (int)AMPR__MIN(name_len, 200), name);
            ne[d] = (int64_t)x;
        }
        if (st == AMPR_OK) st = rd_u32(&c, &type, "a tensor info", err);
        if (st == AMPR_OK) st = rd_u64(&c, &offsets[i], "a tensor info", err);
        if (st == AMPR_OK && (name_len == 0 || name_len >= AMPR__NAME_MAX ||
                              memchr(name, 0, name_len)))
            st = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "GGUF: bad tensor name of %llu bytes",
                            (unsigned long long)name_len);
        ampr__dtype dt = AMPR__DT_F32;
        if (st == AMPR_OK) st = map_dtype(type, name, name_len, &dt, err);
        ampr__tensor *t = NULL;
        if (st == AMPR_OK) st = ampr__model_add_tensor(m, name, (size_t)name_len, &t, err);
        if (st == AMPR_OK) {
            t->dtype = dt;
            t->n_dims = (int32_t)n_dims;
            memcpy(t->ne, ne, sizeof ne);
            st = ampr__tensor_size(t->name, t->n_dims, t->ne, dt, &t->nbytes, err);
        }
    }
    uint64_t data_start = (c.pos + (uint64_t)align - 1) & ~((uint64_t)align - 1);
    if (st == AMPR_OK && n_tensors && data_start > map.size)
        st = ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED, "%s: file ends before its tensor data",
                        path);
    ampr__model_priv *p = m->priv;
    for (size_t i = 0; i < p->n_tensors && st == AMPR_OK; i++) {
        ampr__tensor *t = &p->tensors[i];
        uint64_t off = offsets[i], avail = map.size - data_start;
        if (off % (uint64_t)align != 0)
            st = ampr__fail(err, AMPR_ERR_MODEL_BOUNDS, "GGUF: tensor %s offset %llu not aligned",
                            t->name, (unsigned long long)off);
        else if (off >= avail)
            st = ampr__fail(err, AMPR_ERR_MODEL_BOUNDS,
                            "GGUF: tensor %s starts at %llu, beyond the end of the file",
                            t->name, (unsigned long long)off);
        else if (t->nbytes > avail - off)
            st = ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                            "GGUF: tensor %s (%llu bytes at %llu) runs past the end of the file",
                            t->name, (unsigned long long)t->nbytes, (unsigned long long)off);
        else
            t->data = map.base + data_start + off;
    }
    ampr__free(offsets);
    if (st != AMPR_OK) goto done;

    st = read_hparams(&g, &m->hp, err);
    if (st != AMPR_OK) goto done;
    /* Vocabulary size and tied head come from the tensors present. */
    const ampr__tensor *embd = NULL;
    int has_output = 0;
    for (size_t i = 0; i < p->n_tensors; i++) {
        if (!strcmp(p->tensors[i].name, "token_embd.weight")) embd = &p->tensors[i];
        if (!strcmp(p->tensors[i].name, "output.weight")) has_output = 1;
    }
    if (!embd) {
        st = ampr__fail(err, AMPR_ERR_MODEL_MISSING, "tensor token_embd.weight is missing");
        goto done;
    }
    m->hp.vocab_size = embd->ne[1] > INT32_MAX ? INT32_MAX : (int32_t)embd->ne[1];
    m->hp.tied_embeddings = !has_output;
    st = ampr__hparams_check(&m->hp, err);
    if (st == AMPR_OK) st = read_tokenizer(&g, &m->tok, err);
    if (st == AMPR_OK) st = ampr__model_finish(m, check_finite, err);
done:
    ampr__free(g.kv);
    return st;
}

ampr_status ampr__model_load_gguf(const char *path, int check_finite, ampr__model **out,
                                  ampr__err *err) {
    *out = NULL;
    ampr__model *m;
    AMPR__TRY(ampr__model_new("gguf", &m, err));
    ampr_status st = load(path, check_finite, m, err);
    if (st != AMPR_OK) {
        ampr__model_free(m);
        return st;
    }
    *out = m;
    return AMPR_OK;
}
