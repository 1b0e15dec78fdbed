/*
 * hf.c -- Hugging Face model directories, both ways: the loader (config.json,
 * model.safetensors or an index with shards, tokenizer.json) and the writers
 * of config.json / generation_config.json / tokenizer.json /
 * tokenizer_config.json used by the llama2.c converter and the random-model
 * writer.
 *
 * Hugging Face Llama checkpoints rotate (i, i + head_dim/2) pairs, so a model
 * loaded from here has rope_layout AMPR__ROPE_HALF.
 *
 * The tokenizer.json we write is the Llama-2 "legacy" layout: a BPE model
 * with byte fallback whose merges are derived from SentencePiece scores --
 * every way of splitting a piece into two vocabulary pieces is a merge, and
 * merges rank by the merged piece's score, highest first -- which makes
 * rank-ordered BPE merge exactly as score-ordered SentencePiece BPE does.
 */
#include "model_int.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* ---- small file and JSON helpers ----------------------------------------------- */

/* Read a whole file (at most max bytes) into an ampr__malloc'd buffer. A
 * missing file is AMPR_ERR_MODEL_MISSING. */
static ampr_status read_file(const char *path, size_t max, char **buf, size_t *len,
                             ampr__err *err) {
    *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return ampr__fail(err, errno == ENOENT ? AMPR_ERR_MODEL_MISSING : AMPR_ERR_IO,
                          "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ampr__fail(err, AMPR_ERR_IO, "%s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        fclose(f);
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s is too large (%lld bytes)", path,
                          (long long)st.st_size);
    }
    size_t n = (size_t)st.st_size;
    char *b = ampr__malloc(n + 1);
    if (!b) {
        fclose(f);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory reading %s", path);
    }
    size_t got = fread(b, 1, n, f);
    fclose(f);
    if (got != n) {
        ampr__free(b);
        return ampr__fail(err, AMPR_ERR_IO, "cannot read %s", path);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return AMPR_OK;
}

static ampr_status load_json(const char *path, json_t **out, ampr__err *err) {
    char *buf;
    size_t len;
    *out = NULL;
    AMPR__TRY(read_file(path, (size_t)64 << 20, &buf, &len, err));
    json_error_t je;
    int oom;
    json_t *j = ampr__json_parse(buf, len, JSON_REJECT_DUPLICATES, &je, &oom);
    ampr__free(buf);
    if (oom)
        return ampr__fail(err, AMPR_ERR_NOMEM, "%s: out of memory parsing the JSON", path);
    if (!j)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: bad JSON at line %d: %s", path,
                          je.line, je.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s is not a JSON object", path);
    }
    *out = j;
    return AMPR_OK;
}

/* ---- config.json ---------------------------------------------------------------- */

static ampr_status cfg_int(json_t *o, const char *key, int required, int32_t dflt, int32_t *v,
                           ampr__err *err) {
    json_t *j = json_object_get(o, key);
    if (!j || json_is_null(j)) {
        if (required)
            return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "config.json: %s is missing", key);
        *v = dflt;
        return AMPR_OK;
    }
    if (!json_is_integer(j) || json_integer_value(j) < 0 || json_integer_value(j) > INT32_MAX)
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS,
                          "config.json: %s is not a non-negative integer", key);
    *v = (int32_t)json_integer_value(j);
    return AMPR_OK;
}

static ampr_status cfg_float(json_t *o, const char *key, float dflt, float *v, ampr__err *err) {
    json_t *j = json_object_get(o, key);
    if (!j || json_is_null(j)) {
        *v = dflt;
        return AMPR_OK;
    }
    if (!json_is_number(j))
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "config.json: %s is not a number", key);
    *v = (float)json_number_value(j);
    return AMPR_OK;
}

static int json_str_is(json_t *j, const char *s) {
    return json_is_string(j) && !strcmp(json_string_value(j), s);
}

static ampr_status read_config(json_t *cfg, ampr__hparams *hp, ampr__err *err) {
    json_t *arch = json_object_get(cfg, "architectures");
    int is_llama = json_str_is(json_object_get(cfg, "model_type"), "llama");
    for (size_t i = 0; json_is_array(arch) && i < json_array_size(arch); i++)
        is_llama |= json_str_is(json_array_get(arch, i), "LlamaForCausalLM");
    if (!is_llama)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "config.json: not a Llama model (model_type / architectures)");
    memset(hp, 0, sizeof *hp);
    AMPR__TRY(cfg_int(cfg, "hidden_size", 1, 0, &hp->dim, err));
    AMPR__TRY(cfg_int(cfg, "intermediate_size", 1, 0, &hp->hidden_dim, err));
    AMPR__TRY(cfg_int(cfg, "num_hidden_layers", 1, 0, &hp->n_layers, err));
    AMPR__TRY(cfg_int(cfg, "num_attention_heads", 1, 0, &hp->n_heads, err));
    AMPR__TRY(cfg_int(cfg, "num_key_value_heads", 0, hp->n_heads, &hp->n_kv_heads, err));
    AMPR__TRY(cfg_int(cfg, "vocab_size", 1, 0, &hp->vocab_size, err));
    AMPR__TRY(cfg_int(cfg, "max_position_embeddings", 0, 2048, &hp->context_length, err));
    if (hp->n_heads <= 0)
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "config.json: num_attention_heads is 0");
    int32_t head_dim;
    AMPR__TRY(cfg_int(cfg, "head_dim", 0, 0, &head_dim, err));
    if (!head_dim) {
        if (hp->dim % hp->n_heads != 0)
            return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS,
                              "config.json: num_attention_heads %d does not divide hidden_size %d",
                              hp->n_heads, hp->dim);
        head_dim = hp->dim / hp->n_heads;
    }
    hp->head_dim = head_dim;
    AMPR__TRY(cfg_float(cfg, "rms_norm_eps", 1e-6f, &hp->norm_eps, err));
    AMPR__TRY(cfg_float(cfg, "rope_theta", 10000.0f, &hp->rope_theta, err));
    json_t *tie = json_object_get(cfg, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie) && !json_is_null(tie))
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS,
                          "config.json: tie_word_embeddings is not a boolean");
    hp->tied_embeddings = json_is_true(tie);
    hp->rope_layout = AMPR__ROPE_HALF;

    json_t *rs = json_object_get(cfg, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS,
                              "config.json: rope_scaling is not an object");
        json_t *ty = json_object_get(rs, "rope_type");
        if (!ty) ty = json_object_get(rs, "type");
        if (json_str_is(ty, "llama3")) {
            hp->rope_llama3 = 1;
            AMPR__TRY(cfg_float(rs, "factor", 0.0f, &hp->rope_factor, err));
            AMPR__TRY(cfg_float(rs, "low_freq_factor", 0.0f, &hp->rope_low_freq_factor, err));
            AMPR__TRY(cfg_float(rs, "high_freq_factor", 0.0f, &hp->rope_high_freq_factor, err));
            AMPR__TRY(cfg_int(rs, "original_max_position_embeddings", 1, 0,
                              &hp->rope_orig_context, err));
        } else if (!json_str_is(ty, "default")) {
            return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                              "config.json: rope_scaling type %.40s is not supported",
                              json_is_string(ty) ? json_string_value(ty) : "(none)");
        }
    }
    return AMPR_OK;
}

/* A shard file name from the index: a plain name inside the directory. */
static int safe_file_name(const char *s) {
    return s[0] && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..");
}

static ampr_status load_weights(ampr__model *m, const char *dir, ampr__err *err) {
    char path[4096];
    AMPR__TRY(ampr__path_join(path, sizeof path, dir, "model.safetensors.index.json", err));
    struct stat st;
    if (stat(path, &st) != 0) {
        AMPR__TRY(ampr__path_join(path, sizeof path, dir, "model.safetensors", err));
        if (stat(path, &st) != 0)
            return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "%s: no model.safetensors", dir);
        return ampr__st_load(m, path, err);
    }
    json_t *idx;
    AMPR__TRY(load_json(path, &idx, err));
    json_t *wm = json_object_get(idx, "weight_map");
    ampr_status st2 = AMPR_OK;
    if (!json_is_object(wm) || json_object_size(wm) == 0)
        st2 = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: no weight_map", path);
    /* Load each distinct shard once (shard lists are short: quadratic is fine). */
    json_t *done = json_object();
    if (!done && st2 == AMPR_OK) st2 = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    const char *key;
    json_t *v;
    if (st2 == AMPR_OK) {
        json_object_foreach(wm, key, v) {
            if (!json_is_string(v) || !safe_file_name(json_string_value(v))) {
                st2 = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: bad shard name for %s", path,
                                 key);
                break;
            }
            const char *shard = json_string_value(v);
            if (json_object_get(done, shard)) continue;
            if (json_object_set_new(done, shard, json_true())) {
                st2 = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
                break;
            }
            char sp[4096];
            st2 = ampr__path_join(sp, sizeof sp, dir, shard, err);
            if (st2 == AMPR_OK) st2 = ampr__st_load(m, sp, err);
            if (st2 != AMPR_OK) break;
        }
    }
    json_decref(done);
    json_decref(idx);
    return st2;
}

static ampr_status load_hf(const char *dir, int check_finite, ampr__model *m, ampr__err *err) {
    char path[4096];
    json_t *cfg;
    AMPR__TRY(ampr__path_join(path, sizeof path, dir, "config.json", err));
    AMPR__TRY(load_json(path, &cfg, err));
    ampr_status st = read_config(cfg, &m->hp, err);
    json_decref(cfg);
    AMPR__TRY(st);
    AMPR__TRY(ampr__hparams_check(&m->hp, err));
    AMPR__TRY(load_weights(m, dir, err));
    AMPR__TRY(ampr__bnb_resolve(m, err)); /* bitsandbytes 4-bit groups -> NF4 tensors */

    char *tj;
    size_t tlen;
    AMPR__TRY(ampr__path_join(path, sizeof path, dir, "tokenizer.json", err));
    AMPR__TRY(read_file(path, (size_t)256 << 20, &tj, &tlen, err));
    st = ampr__tok_from_hf_json(tj, tlen, &m->tok, err);
    ampr__free(tj);
    AMPR__TRY(st);
    return ampr__model_finish(m, check_finite, err);
}

ampr_status ampr__model_load_hf(const char *dir, int check_finite, ampr__model **out,
                                ampr__err *err) {
    *out = NULL;
    ampr__model *m;
    AMPR__TRY(ampr__model_new("hf", &m, err));
    ampr_status st = load_hf(dir, check_finite, m, err);
    if (st != AMPR_OK) {
        ampr__model_free(m);
        return st;
    }
    *out = m;
    return AMPR_OK;
}

/* ---- writers ----------------------------------------------------------------------- */

/* The shortest decimal that reads back as f, as a double, so that 1e-5f is
 * written "1e-05" rather than "9.9999997473787516e-06". */
static double nice_double(float f) {
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

static ampr_status write_json(const char *dir, const char *name, json_t *j, ampr__err *err) {
    char path[4096];
    if (!j) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory building %s", name);
    ampr_status st = ampr__path_join(path, sizeof path, dir, name, err);
    if (st == AMPR_OK &&
        json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9)))
        st = ampr__fail(err, AMPR_ERR_IO, "cannot write %s", path);
    json_decref(j);
    return st;
}

ampr_status ampr__hf_write_config(const char *dir, const ampr__hparams *hp,
                                  const char *torch_dtype, ampr__err *err) {
    json_t *c = json_pack(
        "{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:i, s:f, s:f, s:i, s:b, s:i, s:i, s:s,"
        " s:b, s:b}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", hp->dim,
        "intermediate_size", hp->hidden_dim, "num_hidden_layers", hp->n_layers,
        "num_attention_heads", hp->n_heads, "num_key_value_heads", hp->n_kv_heads, "head_dim",
        hp->head_dim, "hidden_act", "silu", "max_position_embeddings", hp->context_length,
        "rms_norm_eps", nice_double(hp->norm_eps), "rope_theta", nice_double(hp->rope_theta),
        "vocab_size", hp->vocab_size, "tie_word_embeddings", hp->tied_embeddings,
        "bos_token_id", 1, "eos_token_id", 2, "torch_dtype", torch_dtype, "attention_bias", 0,
        "mlp_bias", 0);
    if (c && hp->rope_llama3) {
        json_t *rs = json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor",
                               nice_double(hp->rope_factor), "low_freq_factor",
                               nice_double(hp->rope_low_freq_factor), "high_freq_factor",
                               nice_double(hp->rope_high_freq_factor),
                               "original_max_position_embeddings", hp->rope_orig_context);
        if (!rs || json_object_set_new(c, "rope_scaling", rs)) {
            json_decref(c);
            c = NULL;
        }
    }
    AMPR__TRY(write_json(dir, "config.json", c, err));
    json_t *g = json_pack("{s:b, s:i, s:i}", "_from_model_config", 1, "bos_token_id", 1,
                          "eos_token_id", 2);
    return write_json(dir, "generation_config.json", g, err);
}

/* A piece -> id hash table (open addressing) for deriving merges. */
typedef struct piece_map {
    int32_t *slots; /* id + 1, 0 = empty */
    size_t mask;
    const ampr__spm_vocab *v;
} piece_map;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int32_t pm_find(const piece_map *pm, const char *s, size_t n) {
    for (size_t i = hash_bytes(s, n) & pm->mask;; i = (i + 1) & pm->mask) {
        int32_t id = pm->slots[i] - 1;
        if (id < 0) return -1;
        if (pm->v->lens[id] == n && !memcmp(pm->v->pieces[id], s, n)) return id;
    }
}

typedef struct merge {
    float score;
    int32_t id, left, right;
} merge;

static int cmp_merge(const void *a, const void *b) {
    const merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return (x->left > y->left) - (x->left < y->left);
}

static int is_mergeable(const ampr__spm_vocab *v, int32_t id) {
    return v->types[id] == AMPR__TT_NORMAL || v->types[id] == AMPR__TT_USER_DEFINED;
}

/* The merges of v, best first, as "left right" JSON strings. */
static ampr_status build_merges(const ampr__spm_vocab *v, json_t *out, ampr__err *err) {
    piece_map pm = {NULL, 0, v};
    size_t cap = 16;
    while (cap < 2 * (size_t)v->n) cap *= 2;
    pm.slots = ampr__alloc_array(cap, sizeof *pm.slots, err);
    if (!pm.slots) return AMPR_ERR_NOMEM;
    pm.mask = cap - 1;
    ampr_status st = AMPR_OK;
    size_t n_merges = 0, cap_merges = 0;
    merge *ms = NULL;
    for (int32_t id = 0; id < v->n && st == AMPR_OK; id++) {
        if (pm_find(&pm, v->pieces[id], v->lens[id]) >= 0)
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "piece %d appears twice in the vocabulary",
                            id);
        size_t i = hash_bytes(v->pieces[id], v->lens[id]) & pm.mask;
        while (pm.slots[i]) i = (i + 1) & pm.mask;
        pm.slots[i] = id + 1;
    }
    for (int32_t id = 0; id < v->n && st == AMPR_OK; id++) {
        if (!is_mergeable(v, id)) continue;
        const char *p = v->pieces[id];
        for (uint32_t k = 1; k < v->lens[id] && st == AMPR_OK; k++) {
            if (((uint8_t)p[k] & 0xc0) == 0x80) continue; /* not a character boundary */
            int32_t l = pm_find(&pm, p, k), r = pm_find(&pm, p + k, v->lens[id] - k);
            if (l < 0 || r < 0 || !is_mergeable(v, l) || !is_mergeable(v, r)) continue;
            if (n_merges == cap_merges) {
                cap_merges = cap_merges ? 2 * cap_merges : 1024;
                merge *nm = ampr__realloc(ms, cap_merges * sizeof *nm);
                if (!nm) {
                    st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
                    break;
                }
                ms = nm;
            }
            ms[n_merges++] = (merge){v->scores[id], id, l, r};
        }
    }
    ampr__free(pm.slots);
    if (st == AMPR_OK) qsort(ms, n_merges, sizeof *ms, cmp_merge);
    char *buf = NULL;
    size_t buf_cap = 0;
    for (size_t i = 0; i < n_merges && st == AMPR_OK; i++) {
        uint32_t ll = v->lens[ms[i].left], rl = v->lens[ms[i].right];
        if (ll + rl + 1 > buf_cap) {
            buf_cap = 2 * (ll + rl + 1);
            ampr__free(buf);
            buf = ampr__malloc(buf_cap);
            if (!buf) st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        }
        if (st != AMPR_OK) break;
        memcpy(buf, v->pieces[ms[i].left], ll);
        buf[ll] = ' ';
        memcpy(buf + ll + 1, v->pieces[ms[i].right], rl);
        if (json_array_append_new(out, json_stringn(buf, ll + rl + 1)))
            st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    }
    ampr__free(buf);
    ampr__free(ms);
    return st;
}

static json_t *added_token(int32_t id, const char *content) {
    return json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", content,
                     "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1);
}

ampr_status ampr__hf_write_tokenizer(const char *dir, const ampr__spm_vocab *v, int32_t max_len,
                                     ampr__err *err) {
    if (v->n < 3)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "vocabulary of %d pieces is too small",
                          v->n);
    json_t *vocab = json_object(), *merges = json_array(), *added = json_array();
    ampr_status st = AMPR_OK;
    if (!vocab || !merges || !added) st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    for (int32_t id = 0; id < v->n && st == AMPR_OK; id++) {
        char *key = ampr__strndup(v->pieces[id], v->lens[id]);
        if (!key) {
            st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
            break;
        }
        if (strlen(key) != v->lens[id] || !ampr__utf8_valid(key, v->lens[id]))
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "piece %d is not valid UTF-8 text", id);
        else if (json_object_get(vocab, key))
            st = ampr__fail(err, AMPR_ERR_MODEL_VOCAB, "piece %d appears twice", id);
        else if (json_object_set_new(vocab, key, json_integer(id)))
            st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        if (st == AMPR_OK && (v->types[id] == AMPR__TT_CONTROL ||
                              v->types[id] == AMPR__TT_UNKNOWN))
            if (json_array_append_new(added, added_token(id, key)))
                st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        ampr__free(key);
    }
    if (st == AMPR_OK) st = build_merges(v, merges, err);
    if (st != AMPR_OK) {
        json_decref(vocab);
        json_decref(merges);
        json_decref(added);
        return st;
    }
    /* Ids 0, 1, 2 are <unk>, <s>, </s> in every SPM vocabulary we write. */
    json_t *tok = json_pack(
        "{s:s, s:n, s:n, s:o,"
        " s:{s:s, s:[{s:s, s:s}, {s:s, s:{s:s}, s:s}]},"
        " s:n,"
        " s:{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}],"
        "   s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}],"
        "   s:{s:{s:s, s:[i], s:[s]}}},"
        " s:{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}, {s:s}, {s:s, s:s, s:i, s:i}]},"
        " s:{s:s, s:n, s:s, s:n, s:n, s:b, s:b, s:b, s:o, s:o}}",
        "version", "1.0", "truncation", "padding", "added_tokens", added,
        "normalizer", "type", "Sequence", "normalizers", "type", "Prepend", "prepend", "\xe2\x96\x81",
        "type", "Replace", "pattern", "String", " ", "content", "\xe2\x96\x81",
        "pre_tokenizer",
        "post_processor", "type", "TemplateProcessing",
        "single", "SpecialToken", "id", "<s>", "type_id", 0, "Sequence", "id", "A", "type_id", 0,
        "pair", "SpecialToken", "id", "<s>", "type_id", 0, "Sequence", "id", "A", "type_id", 0,
        "SpecialToken", "id", "<s>", "type_id", 1, "Sequence", "id", "B", "type_id", 1,
        "special_tokens", "<s>", "id", "<s>", "ids", 1, "tokens", "<s>",
        "decoder", "type", "Sequence", "decoders", "type", "Replace", "pattern", "String",
        "\xe2\x96\x81", "content", " ", "type", "ByteFallback", "type", "Fuse", "type", "Strip",
        "content", " ", "start", 1, "stop", 0,
        "model", "type", "BPE", "dropout", "unk_token", "<unk>", "continuing_subword_prefix",
        "end_of_word_suffix", "fuse_unk", 1, "byte_fallback", 1, "ignore_merges", 0, "vocab",
        vocab, "merges", merges);
    AMPR__TRY(write_json(dir, "tokenizer.json", tok, err));
    json_t *tc = json_pack("{s:b, s:b, s:s, s:s, s:s, s:n, s:b, s:b, s:i, s:s, s:b}",
                           "add_bos_token", 1, "add_eos_token", 0, "bos_token", "<s>",
                           "eos_token", "</s>", "unk_token", "<unk>", "pad_token", "legacy", 1,
                           "clean_up_tokenization_spaces", 0, "model_max_length", max_len,
                           "tokenizer_class", "LlamaTokenizer", "add_prefix_space", 1);
    return write_json(dir, "tokenizer_config.json", tc, err);
}
