/*
 * test_malformed.c -- malformed model files through the PUBLIC ampr_open().
 *
 * The test writes a small valid GGUF file and a Hugging Face directory with
 * ampr__model_write_random(), then corrupts a copy once per row of the table
 * below. Every row must fail with its expected status, an errmsg that
 * mentions something specific (the row's needle), and no leak: the allocator
 * hooks count live allocations across ampr_open() + ampr_close().
 * Run with AMPR_MALFORMED_TABLE=1 to print the table (row -> status name).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "testutil.h"

/* ---- counting allocator ------------------------------------------------------ */

static long g_live;
static void *cnt_malloc(size_t n, void *u) {
    (void)u;
    void *p = malloc(n);
    if (p) __atomic_add_fetch(&g_live, 1, __ATOMIC_RELAXED);
    return p;
}
static void *cnt_realloc(void *p, size_t n, void *u) {
    (void)u;
    void *q = realloc(p, n);
    if (q && !p) __atomic_add_fetch(&g_live, 1, __ATOMIC_RELAXED);
    return q;
}
static void cnt_free(void *p, void *u) {
    (void)u;
    if (p) __atomic_sub_fetch(&g_live, 1, __ATOMIC_RELAXED);
    free(p);
}

/* ---- fixture ----------------------------------------------------------------- */

static char *g_dir;
static char g_gguf[4200], g_hf[4200], g_bad[4200];
static char *g_buf; /* the valid GGUF file */
static size_t g_len;
static ampr__hparams g_hp;

static ampr__hparams small_hp(void) {
    ampr__hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.dim = 64, hp.hidden_dim = 128, hp.n_layers = 2, hp.n_heads = 8, hp.n_kv_heads = 2;
    hp.head_dim = 8, hp.vocab_size = 300, hp.context_length = 128;
    hp.norm_eps = 1e-5f, hp.rope_theta = 10000.0f;
    return hp;
}

static int setup(void **state) {
    (void)state;
    g_dir = tu_tmpdir("malformed");
    if (!g_dir) return -1;
    snprintf(g_gguf, sizeof g_gguf, "%s/base.gguf", g_dir);
    snprintf(g_hf, sizeof g_hf, "%s/base_hf", g_dir);
    g_hp = small_hp();
    ampr__err err = {0};
    if (ampr__model_write_random(g_gguf, "gguf", &g_hp, AMPR__DT_F32, 1, 3, &err) ||
        ampr__model_write_random(g_hf, "hf", &g_hp, AMPR__DT_F32, 1, 3, &err)) {
        fprintf(stderr, "write_random: %s\n", err.msg);
        return -1;
    }
    g_buf = tu_read_file(g_gguf, &g_len);
    return g_buf ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    free(g_buf);
    tu_rmtree(g_dir);
    free(g_dir);
    return 0;
}

/* ---- GGUF corruption helpers ------------------------------------------------- */

/* Offset just past the GGUF string s (u64 length + bytes) in the valid file. */
static size_t after_str(const char *s) {
    size_t n = strlen(s);
    char pat[256];
    uint64_t len = n;
    memcpy(pat, &len, 8);
    memcpy(pat + 8, s, n);
    char *hit = memmem(g_buf, g_len, pat, n + 8);
    assert_non_null(hit);
    return (size_t)(hit - g_buf) + 8 + n;
}

/* A copy of the valid file to corrupt. */
typedef struct gbuf {
    char *b;
    size_t len;
} gbuf;

static void put(gbuf *g, size_t at, const void *v, size_t n) {
    assert_true(at + n <= g->len);
    memcpy(g->b + at, v, n);
}
static void put_u32(gbuf *g, size_t at, uint32_t v) { put(g, at, &v, 4); }
static void put_u64(gbuf *g, size_t at, uint64_t v) { put(g, at, &v, 8); }

/* Tensor info of name: n_dims at +0, ne[] at +4, then u32 type, then u64 offset. */
static uint32_t t_ndims(const char *name) {
    uint32_t nd;
    memcpy(&nd, g_buf + after_str(name), 4);
    return nd;
}
static size_t t_ne(const char *name, int d) { return after_str(name) + 4 + 8 * (size_t)d; }
static size_t t_type(const char *name) { return after_str(name) + 4 + 8 * t_ndims(name); }
static size_t t_off(const char *name) { return t_type(name) + 4; }
static uint64_t t_offset_val(const char *name) {
    uint64_t v;
    memcpy(&v, g_buf + t_off(name), 8);
    return v;
}
/* The value of a scalar key: after the key string and its u32 type. */
static size_t kv_val(const char *key) { return after_str(key) + 4; }

/* Start of the data section: the first tensor's data is at offset 0. */
static size_t data_start(void) {
    size_t end_infos = t_off("output.weight") + 8;
    return (end_infos + 31) & ~(size_t)31;
}

/* Each corruption edits g (a copy of the valid GGUF) in place. */
typedef void (*gguf_fn)(gbuf *g);

static void g_empty(gbuf *g) { g->len = 0; }
static void g_magic(gbuf *g) { put(g, 0, "GGUX", 4); }
static void g_version(gbuf *g) { put_u32(g, 4, 1); }
static void g_cut_header(gbuf *g) { g->len = 20; }
static void g_cut_kv(gbuf *g) { g->len = after_str("tokenizer.ggml.tokens") + 40; }
static void g_cut_infos(gbuf *g) { g->len = after_str("blk.0.attn_q.weight") + 6; }
static void g_cut_data(gbuf *g) { g->len = g->len / 2; }
static void g_cut_last(gbuf *g) { g->len -= 1; }
static void g_huge_tensors(gbuf *g) { put_u64(g, 8, (uint64_t)1 << 60); }
static void g_huge_kvs(gbuf *g) { put_u64(g, 16, UINT64_MAX); }
static void g_huge_key(gbuf *g) { put_u64(g, 24, (uint64_t)1 << 62); }
static void g_huge_array(gbuf *g) { put_u64(g, after_str("tokenizer.ggml.tokens") + 4, (uint64_t)1 << 61); }
static void g_huge_astr(gbuf *g) { put_u64(g, after_str("tokenizer.ggml.tokens") + 12, (uint64_t)1 << 62); }
static void g_nested(gbuf *g) { put_u32(g, after_str("tokenizer.ggml.scores") + 4, 9); }
static void g_valtype(gbuf *g) { put_u32(g, after_str("general.name"), 77); }
static void g_align(gbuf *g) { put_u32(g, kv_val("general.alignment"), 48); }
static void g_off_oob(gbuf *g) { put_u64(g, t_off("blk.0.attn_q.weight"), (uint64_t)1 << 40); }
static void g_off_misaligned(gbuf *g) {
    put_u64(g, t_off("blk.0.attn_q.weight"), t_offset_val("blk.0.attn_q.weight") + 4);
}
static void g_overlap(gbuf *g) {
    put_u64(g, t_off("blk.0.attn_k.weight"), t_offset_val("blk.0.attn_q.weight"));
}
static void g_past_end(gbuf *g) {
    put_u64(g, t_off("output.weight"), t_offset_val("output.weight") + 32);
}
static void g_overflow(gbuf *g) {
    put_u64(g, t_ne("blk.0.attn_q.weight", 0), (uint64_t)1 << 40);
    put_u64(g, t_ne("blk.0.attn_q.weight", 1), (uint64_t)1 << 40);
}
static void g_dim_zero(gbuf *g) { put_u64(g, t_ne("blk.0.attn_q.weight", 0), 0); }
static void g_dim_negative(gbuf *g) { put_u64(g, t_ne("blk.0.attn_v.weight", 1), (uint64_t)-8); }
static void g_ndims(gbuf *g) { put_u32(g, after_str("blk.1.attn_norm.weight"), 5); }
static void g_wrong_shape(gbuf *g) { put_u64(g, t_ne("blk.1.attn_k.weight", 1), 8); }
static void g_dtype_unknown(gbuf *g) { put_u32(g, t_type("blk.0.ffn_up.weight"), 99); }
static void g_dtype_q4(gbuf *g) { put_u32(g, t_type("blk.0.ffn_up.weight"), 2); }
static void g_missing(gbuf *g) { put(g, after_str("blk.1.ffn_up.weight") - 9, "uq", 2); }
static void g_duplicate(gbuf *g) { put(g, after_str("blk.1.ffn_up.weight") - 15, "0", 1); }
static void g_layers0(gbuf *g) { put_u32(g, kv_val("llama.block_count"), 0); }
static void g_layers_huge(gbuf *g) { put_u32(g, kv_val("llama.block_count"), 0x7fffffff); }
static void g_heads(gbuf *g) { put_u32(g, kv_val("llama.attention.head_count"), 7); }
static void g_kv_heads(gbuf *g) { put_u32(g, kv_val("llama.attention.head_count_kv"), 3); }
static void g_ctx_huge(gbuf *g) { put_u32(g, kv_val("llama.context_length"), 0x7fffffff); }
static void g_embd_neg(gbuf *g) { put_u32(g, kv_val("llama.embedding_length"), 0xffffffffu); }
static void g_eps_nan(gbuf *g) {
    float x = NAN;
    put(g, kv_val("llama.attention.layer_norm_rms_epsilon"), &x, 4);
}
static void g_theta_inf(gbuf *g) {
    float x = INFINITY;
    put(g, kv_val("llama.rope.freq_base"), &x, 4);
}
static void g_arch(gbuf *g) { put(g, kv_val("general.architecture") + 8, "mamba", 5); }
static void g_bos(gbuf *g) { put_u32(g, kv_val("tokenizer.ggml.bos_token_id"), 1000); }
static void g_vocab_utf8(gbuf *g) {
    /* the piece "\xe2\x96\x81a" (U+2581 'a') becomes an invalid sequence */
    static const char pat[] = "\x04\0\0\0\0\0\0\0\xe2\x96\x81" "a";
    char *hit = memmem(g->b, g->len, pat, 12);
    assert_non_null(hit);
    hit[8] = (char)0xc0;
    hit[9] = (char)0xaf;
}
static void g_tok_missing(gbuf *g) { put(g, after_str("tokenizer.ggml.tokens") - 6, "tekens", 6); }
static void g_nan_weight(gbuf *g) {
    float x = NAN;
    put(g, data_start() + (size_t)t_offset_val("blk.1.ffn_down.weight") + 12, &x, 4);
}
static void g_inf_weight(gbuf *g) {
    float x = -INFINITY;
    put(g, data_start() + (size_t)t_offset_val("token_embd.weight") + 400, &x, 4);
}

/* ---- Hugging Face directory corruption --------------------------------------- */

static char g_cur[4300]; /* the corrupted directory of the current row */

static void copy_file(const char *from_dir, const char *to_dir, const char *name) {
    char a[4400], b[4400];
    snprintf(a, sizeof a, "%s/%s", from_dir, name);
    snprintf(b, sizeof b, "%s/%s", to_dir, name);
    size_t len;
    char *buf = tu_read_file(a, &len);
    if (!buf) return;
    assert_int_equal(tu_write_file(b, buf, len), 0);
    free(buf);
}

static void cur_path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", g_cur, name);
}

static json_t *load_json(const char *name) {
    char p[4400];
    cur_path(p, sizeof p, name);
    json_t *j = json_load_file(p, 0, NULL);
    assert_non_null(j);
    return j;
}
static void save_json(const char *name, json_t *j) {
    char p[4400];
    cur_path(p, sizeof p, name);
    assert_int_equal(json_dump_file(j, p, 0), 0);
    json_decref(j);
}
static void write_text(const char *name, const char *text) {
    char p[4400];
    cur_path(p, sizeof p, name);
    assert_int_equal(tu_write_file(p, text, strlen(text)), 0);
}
static void cfg_set(const char *key, json_t *v) {
    json_t *j = load_json("config.json");
    if (v) json_object_set_new(j, key, v);
    else json_object_del(j, key);
    save_json("config.json", j);
}

/* Rewrite model.safetensors with its JSON header edited (data unchanged). */
typedef void (*hdr_fn)(json_t *h);
static void st_edit(hdr_fn edit) {
    char p[4400];
    cur_path(p, sizeof p, "model.safetensors");
    size_t len;
    char *buf = tu_read_file(p, &len);
    assert_non_null(buf);
    uint64_t n;
    memcpy(&n, buf, 8);
    json_t *h = json_loadb(buf + 8, n, 0, NULL);
    assert_non_null(h);
    edit(h);
    char *txt = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    uint64_t nn = strlen(txt);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fwrite(&nn, 8, 1, f);
    fwrite(txt, 1, nn, f);
    fwrite(buf + 8 + n, 1, len - 8 - n, f);
    fclose(f);
    free(txt);
    free(buf);
}
static void st_raw(void (*edit)(char *buf, size_t *len)) {
    char p[4400];
    cur_path(p, sizeof p, "model.safetensors");
    size_t len;
    char *buf = tu_read_file(p, &len);
    assert_non_null(buf);
    edit(buf, &len);
    assert_int_equal(tu_write_file(p, buf, len), 0);
    free(buf);
}
static json_t *entry(json_t *h, const char *name) {
    json_t *e = json_object_get(h, name);
    assert_non_null(e);
    return e;
}
static json_t *offs(json_t *h, const char *name) {
    return json_object_get(entry(h, name), "data_offsets");
}

typedef void (*hf_fn)(void);

static void r_len_beyond(char *b, size_t *len) { uint64_t n = *len; memcpy(b, &n, 8); }
static void r_len_huge(char *b, size_t *len) { (void)len; uint64_t n = (uint64_t)1 << 60; memcpy(b, &n, 8); }
static void r_len_short(char *b, size_t *len) { (void)len; uint64_t n = 16; memcpy(b, &n, 8); }
static void r_cut5(char *b, size_t *len) { (void)b; *len = 5; }
static void r_cut_data(char *b, size_t *len) { (void)b; *len -= 100; }
static void h_st_len_beyond(void) { st_raw(r_len_beyond); }
static void h_st_len_huge(void) { st_raw(r_len_huge); }
static void h_st_len_short(void) { st_raw(r_len_short); }
static void h_st_cut5(void) { st_raw(r_cut5); }
static void h_st_cut_data(void) { st_raw(r_cut_data); }

static void e_offset_range(json_t *h) {
    json_t *o = offs(h, "model.norm.weight");
    json_int_t e = json_integer_value(json_array_get(o, 1));
    json_array_set_new(o, 0, json_integer(e + 1000000));
    json_array_set_new(o, 1, json_integer(e + 1000000 + 256));
}
static void e_overlap(json_t *h) {
    json_t *q = offs(h, "model.layers.0.self_attn.q_proj.weight");
    json_t *k = offs(h, "model.layers.0.self_attn.k_proj.weight");
    json_int_t b = json_integer_value(json_array_get(q, 0));
    json_array_set_new(k, 0, json_integer(b));
    json_array_set_new(k, 1, json_integer(b + 16 * 64 * 4));
}
static void e_reversed(json_t *h) {
    json_t *o = offs(h, "model.norm.weight");
    json_t *a = json_incref(json_array_get(o, 0));
    json_array_set(o, 0, json_array_get(o, 1));
    json_array_set_new(o, 1, a);
}
static void e_negative_off(json_t *h) {
    json_array_set_new(offs(h, "model.norm.weight"), 0, json_integer(-256));
}
static void e_dtype(json_t *h) {
    json_object_set_new(entry(h, "model.layers.1.mlp.up_proj.weight"), "dtype", json_string("I64"));
}
static void e_dtype_type(json_t *h) {
    json_object_set_new(entry(h, "model.layers.1.mlp.up_proj.weight"), "dtype", json_integer(7));
}
static void e_size(json_t *h) {
    json_array_set_new(json_object_get(entry(h, "model.layers.1.mlp.up_proj.weight"), "shape"), 0,
                       json_integer(95));
}
static void e_rank(json_t *h) {
    json_object_set_new(entry(h, "model.layers.0.input_layernorm.weight"), "shape",
                        json_pack("[i,i,i,i,i]", 1, 1, 1, 2, 32));
}
static void e_neg_dim(json_t *h) {
    json_object_set_new(entry(h, "model.layers.0.input_layernorm.weight"), "shape",
                        json_pack("[i,i]", -1, -64));
}
static void e_zero_dim(json_t *h) {
    json_object_set_new(entry(h, "model.layers.0.input_layernorm.weight"), "shape",
                        json_pack("[i]", 0));
}
static void e_overflow(json_t *h) {
    json_object_set_new(entry(h, "model.norm.weight"), "shape",
                        json_pack("[I,I,I]", (json_int_t)1 << 40, (json_int_t)1 << 40,
                                  (json_int_t)1 << 40));
}
static void e_missing(json_t *h) { json_object_del(h, "model.layers.1.mlp.up_proj.weight"); }
static void e_not_object(json_t *h) {
    json_object_set_new(h, "model.layers.1.mlp.up_proj.weight", json_string("x"));
}
static void h_st_offset_range(void) { st_edit(e_offset_range); }
static void h_st_overlap(void) { st_edit(e_overlap); }
static void h_st_reversed(void) { st_edit(e_reversed); }
static void h_st_negative_off(void) { st_edit(e_negative_off); }
static void h_st_dtype(void) { st_edit(e_dtype); }
static void h_st_dtype_type(void) { st_edit(e_dtype_type); }
static void h_st_size(void) { st_edit(e_size); }
static void h_st_rank(void) { st_edit(e_rank); }
static void h_st_neg_dim(void) { st_edit(e_neg_dim); }
static void h_st_zero_dim(void) { st_edit(e_zero_dim); }
static void h_st_overflow(void) { st_edit(e_overflow); }
static void h_st_missing(void) { st_edit(e_missing); }
static void h_st_not_object(void) { st_edit(e_not_object); }
static void h_st_gone(void) {
    char p[4400];
    cur_path(p, sizeof p, "model.safetensors");
    unlink(p);
}
static void h_st_index_escape(void) {
    h_st_gone();
    write_text("model.safetensors.index.json",
               "{\"weight_map\": {\"lm_head.weight\": \"../x.safetensors\"}}");
}

static void h_cfg_layers0(void) { cfg_set("num_hidden_layers", json_integer(0)); }
static void h_cfg_layers_huge(void) { cfg_set("num_hidden_layers", json_integer(1000000000)); }
static void h_cfg_heads(void) { cfg_set("num_attention_heads", json_integer(7)); }
static void h_cfg_kv_heads(void) { cfg_set("num_key_value_heads", json_integer(3)); }
static void h_cfg_hidden_str(void) { cfg_set("hidden_size", json_string("64")); }
static void h_cfg_hidden_gone(void) { cfg_set("hidden_size", NULL); }
static void h_cfg_hidden_neg(void) { cfg_set("hidden_size", json_integer(-64)); }
static void h_cfg_hidden_big(void) { cfg_set("hidden_size", json_integer((json_int_t)1 << 40)); }
static void h_cfg_eps(void) { cfg_set("rms_norm_eps", json_real(-1.0)); }
static void h_cfg_ctx(void) { cfg_set("max_position_embeddings", json_integer(-5)); }
static void h_cfg_vocab(void) { cfg_set("vocab_size", json_integer(200)); }
static void h_cfg_ffn(void) { cfg_set("intermediate_size", json_integer(100)); }
static void h_cfg_yarn(void) {
    cfg_set("rope_scaling", json_pack("{s:s, s:f}", "rope_type", "yarn", "factor", 4.0));
}
static void h_cfg_arch(void) {
    cfg_set("architectures", json_pack("[s]", "GPT2LMHeadModel"));
    cfg_set("model_type", json_string("gpt2"));
}
static void h_cfg_bad_json(void) { write_text("config.json", "{\"hidden_size\": 64,"); }
static void h_cfg_not_object(void) { write_text("config.json", "[1, 2, 3]"); }
static void h_cfg_gone(void) {
    char p[4400];
    cur_path(p, sizeof p, "config.json");
    unlink(p);
}
static void h_tok_gone(void) {
    char p[4400];
    cur_path(p, sizeof p, "tokenizer.json");
    unlink(p);
}
static void h_tok_bad_json(void) { write_text("tokenizer.json", "{\"model\": {\"type\": \"BPE\", "); }
static void h_tok_unigram(void) {
    json_t *j = load_json("tokenizer.json");
    json_object_set_new(json_object_get(j, "model"), "type", json_string("Unigram"));
    save_json("tokenizer.json", j);
}
static void h_tok_vocab_array(void) {
    json_t *j = load_json("tokenizer.json");
    json_object_set_new(json_object_get(j, "model"), "vocab", json_pack("[s]", "a"));
    save_json("tokenizer.json", j);
}
static void h_tok_bad_id(void) {
    json_t *j = load_json("tokenizer.json");
    json_object_set_new(json_object_get(json_object_get(j, "model"), "vocab"), "a",
                        json_integer(100000));
    save_json("tokenizer.json", j);
}
static void h_tok_dup_id(void) {
    json_t *j = load_json("tokenizer.json");
    json_object_set_new(json_object_get(json_object_get(j, "model"), "vocab"), "a",
                        json_integer(261));
    save_json("tokenizer.json", j);
}
static void h_tok_bad_merge(void) {
    json_t *j = load_json("tokenizer.json");
    json_array_append_new(json_object_get(json_object_get(j, "model"), "merges"),
                          json_string("nospace"));
    save_json("tokenizer.json", j);
}
static void h_tok_bad_utf8(void) {
    /* raw bytes: jansson refuses invalid UTF-8 in the JSON text itself */
    char p[4400];
    cur_path(p, sizeof p, "tokenizer.json");
    size_t len;
    char *buf = tu_read_file(p, &len);
    char *hit = strstr(buf, "\"\xe2\x96\x81" "a\"");
    assert_non_null(hit);
    hit[1] = (char)0xff;
    assert_int_equal(tu_write_file(p, buf, len), 0);
    free(buf);
}

/* ---- the table --------------------------------------------------------------- */

typedef struct mrow {
    const char *name;
    gguf_fn gguf; /* a GGUF corruption, or */
    hf_fn hf;     /* a Hugging Face directory corruption */
    ampr_status want;
    const char *needle; /* must occur in ampr_errmsg() */
} mrow;

#define G(n, f, st, nd) {n, f, NULL, st, nd}
#define H(n, f, st, nd) {n, NULL, f, st, nd}

static const mrow k_rows[] = {
    G("gguf: empty file", g_empty, AMPR_ERR_MODEL_FORMAT, "GGUF"),
    G("gguf: bad magic", g_magic, AMPR_ERR_MODEL_FORMAT, "neither a GGUF"),
    G("gguf: version 1", g_version, AMPR_ERR_MODEL_FORMAT, "version 1"),
    G("gguf: truncated in header", g_cut_header, AMPR_ERR_MODEL_TRUNCATED, "too short"),
    G("gguf: truncated in key-values", g_cut_kv, AMPR_ERR_MODEL_TRUNCATED, "GGUF"),
    G("gguf: truncated in tensor infos", g_cut_infos, AMPR_ERR_MODEL_TRUNCATED, "tensor"),
    G("gguf: truncated in data", g_cut_data, AMPR_ERR_MODEL_TRUNCATED, "tensor"),
    G("gguf: last byte missing", g_cut_last, AMPR_ERR_MODEL_TRUNCATED, "output.weight"),
    G("gguf: 2^60 tensors", g_huge_tensors, AMPR_ERR_MODEL_TRUNCATED, "tensors cannot fit"),
    G("gguf: 2^64-1 key-values", g_huge_kvs, AMPR_ERR_MODEL_TRUNCATED, "key-value pairs"),
    G("gguf: 2^62-byte key", g_huge_key, AMPR_ERR_MODEL_TRUNCATED, "key"),
    G("gguf: 2^61-element token array", g_huge_array, AMPR_ERR_MODEL_TRUNCATED, "tokenizer.ggml.tokens"),
    G("gguf: 2^62-byte token string", g_huge_astr, AMPR_ERR_MODEL_TRUNCATED, "string"),
    G("gguf: nested array", g_nested, AMPR_ERR_MODEL_FORMAT, "nested"),
    G("gguf: unknown value type", g_valtype, AMPR_ERR_MODEL_FORMAT, "unknown type 77"),
    G("gguf: alignment 48", g_align, AMPR_ERR_MODEL_FORMAT, "alignment"),
    G("gguf: offset out of range", g_off_oob, AMPR_ERR_MODEL_BOUNDS, "blk.0.attn_q.weight"),
    G("gguf: misaligned offset", g_off_misaligned, AMPR_ERR_MODEL_BOUNDS, "not aligned"),
    G("gguf: overlapping tensors", g_overlap, AMPR_ERR_MODEL_BOUNDS, "overlap"),
    G("gguf: tensor past the end", g_past_end, AMPR_ERR_MODEL_TRUNCATED, "output.weight"),
    G("gguf: shape product overflows", g_overflow, AMPR_ERR_MODEL_SHAPE, "blk.0.attn_q.weight"),
    G("gguf: zero dimension", g_dim_zero, AMPR_ERR_MODEL_SHAPE, "blk.0.attn_q.weight"),
    G("gguf: negative dimension", g_dim_negative, AMPR_ERR_MODEL_SHAPE, "blk.0.attn_v.weight"),
    G("gguf: 5 dimensions", g_ndims, AMPR_ERR_MODEL_SHAPE, "5 dimensions"),
    G("gguf: shape mismatch", g_wrong_shape, AMPR_ERR_MODEL_SHAPE, "blk.1.attn_k.weight"),
    G("gguf: unknown dtype 99", g_dtype_unknown, AMPR_ERR_MODEL_DTYPE, "blk.0.ffn_up.weight"),
    G("gguf: dtype Q4_0", g_dtype_q4, AMPR_ERR_MODEL_DTYPE, "Q4_0"),
    G("gguf: tensor missing", g_missing, AMPR_ERR_MODEL_MISSING, "blk.1.ffn_up.weight"),
    G("gguf: duplicate tensor name", g_duplicate, AMPR_ERR_MODEL_FORMAT, "blk.0.ffn_up.weight"),
    G("gguf: 0 layers", g_layers0, AMPR_ERR_MODEL_HPARAMS, "layers"),
    G("gguf: 2^31-1 layers", g_layers_huge, AMPR_ERR_MODEL_HPARAMS, "layers"),
    G("gguf: 7 heads for dim 64", g_heads, AMPR_ERR_MODEL_HPARAMS, "head"),
    G("gguf: 3 kv heads for 8 heads", g_kv_heads, AMPR_ERR_MODEL_HPARAMS, "head"),
    G("gguf: context 2^31-1", g_ctx_huge, AMPR_ERR_MODEL_HPARAMS, "context"),
    G("gguf: embedding 2^32-1", g_embd_neg, AMPR_ERR_MODEL_HPARAMS, "embedding_length"),
    G("gguf: rms eps NaN", g_eps_nan, AMPR_ERR_MODEL_HPARAMS, "eps"),
    G("gguf: rope theta inf", g_theta_inf, AMPR_ERR_MODEL_HPARAMS, "rope"),
    G("gguf: architecture mamba", g_arch, AMPR_ERR_UNSUPPORTED, "mamba"),
    G("gguf: bos id beyond vocab", g_bos, AMPR_ERR_MODEL_VOCAB, "bos_token_id"),
    G("gguf: bad UTF-8 in vocab", g_vocab_utf8, AMPR_ERR_MODEL_VOCAB, "UTF-8"),
    G("gguf: token list missing", g_tok_missing, AMPR_ERR_MODEL_MISSING, "tokenizer.ggml.tokens"),
    G("gguf: NaN weight", g_nan_weight, AMPR_ERR_MODEL_NONFINITE, "blk.1.ffn_down.weight"),
    G("gguf: -inf weight", g_inf_weight, AMPR_ERR_MODEL_NONFINITE, "token_embd.weight"),
    H("st: header length beyond file", h_st_len_beyond, AMPR_ERR_MODEL_TRUNCATED, "header"),
    H("st: header length 2^60", h_st_len_huge, AMPR_ERR_MODEL_FORMAT, "header"),
    H("st: header cut (bad JSON)", h_st_len_short, AMPR_ERR_MODEL_FORMAT, "JSON"),
    H("st: file of 5 bytes", h_st_cut5, AMPR_ERR_MODEL_TRUNCATED, "model.safetensors"),
    H("st: data truncated", h_st_cut_data, AMPR_ERR_MODEL_BOUNDS, "lm_head.weight"),
    H("st: offset out of range", h_st_offset_range, AMPR_ERR_MODEL_BOUNDS, "model.norm.weight"),
    H("st: overlapping tensors", h_st_overlap, AMPR_ERR_MODEL_BOUNDS, "overlap"),
    H("st: offsets reversed", h_st_reversed, AMPR_ERR_MODEL_BOUNDS, "model.norm.weight"),
    H("st: negative offset", h_st_negative_off, AMPR_ERR_MODEL_BOUNDS, "model.norm.weight"),
    H("st: dtype I64", h_st_dtype, AMPR_ERR_MODEL_DTYPE, "I64"),
    H("st: dtype not a string", h_st_dtype_type, AMPR_ERR_MODEL_FORMAT, "up_proj"),
    H("st: size differs from shape", h_st_size, AMPR_ERR_MODEL_SHAPE, "up_proj"),
    H("st: rank 5", h_st_rank, AMPR_ERR_MODEL_SHAPE, "rank 5"),
    H("st: negative dims", h_st_neg_dim, AMPR_ERR_MODEL_SHAPE, "input_layernorm"),
    H("st: zero dim", h_st_zero_dim, AMPR_ERR_MODEL_SHAPE, "input_layernorm"),
    H("st: shape product overflows", h_st_overflow, AMPR_ERR_MODEL_SHAPE, "model.norm.weight"),
    H("st: tensor missing", h_st_missing, AMPR_ERR_MODEL_MISSING, "blk.1.ffn_up.weight"),
    H("st: entry not an object", h_st_not_object, AMPR_ERR_MODEL_FORMAT, "up_proj"),
    H("st: file missing", h_st_gone, AMPR_ERR_MODEL_MISSING, "safetensors"),
    H("st: index escapes the dir", h_st_index_escape, AMPR_ERR_MODEL_FORMAT, "bad shard name"),
    H("config: 0 layers", h_cfg_layers0, AMPR_ERR_MODEL_HPARAMS, "n_layers = 0"),
    H("config: 10^9 layers", h_cfg_layers_huge, AMPR_ERR_MODEL_HPARAMS, "n_layers"),
    H("config: 7 heads", h_cfg_heads, AMPR_ERR_MODEL_HPARAMS, "head"),
    H("config: 3 kv heads", h_cfg_kv_heads, AMPR_ERR_MODEL_HPARAMS, "head"),
    H("config: hidden_size a string", h_cfg_hidden_str, AMPR_ERR_MODEL_HPARAMS, "hidden_size"),
    H("config: hidden_size missing", h_cfg_hidden_gone, AMPR_ERR_MODEL_MISSING, "hidden_size"),
    H("config: hidden_size -64", h_cfg_hidden_neg, AMPR_ERR_MODEL_HPARAMS, "hidden_size"),
    H("config: hidden_size 2^40", h_cfg_hidden_big, AMPR_ERR_MODEL_HPARAMS, "hidden_size"),
    H("config: rms_norm_eps -1", h_cfg_eps, AMPR_ERR_MODEL_HPARAMS, "epsilon"),
    H("config: context -5", h_cfg_ctx, AMPR_ERR_MODEL_HPARAMS, "max_position_embeddings"),
    H("config: vocab 200 vs tensors", h_cfg_vocab, AMPR_ERR_MODEL_SHAPE, "token_embd.weight"),
    H("config: ffn 100 vs tensors", h_cfg_ffn, AMPR_ERR_MODEL_SHAPE, "ffn_gate"),
    H("config: rope_scaling yarn", h_cfg_yarn, AMPR_ERR_UNSUPPORTED, "yarn"),
    H("config: GPT-2 architecture", h_cfg_arch, AMPR_ERR_UNSUPPORTED, "not a Llama"),
    H("config: bad JSON", h_cfg_bad_json, AMPR_ERR_MODEL_FORMAT, "config.json"),
    H("config: not an object", h_cfg_not_object, AMPR_ERR_MODEL_FORMAT, "config.json"),
    H("config: file missing", h_cfg_gone, AMPR_ERR_MODEL_MISSING, "config.json"),
    H("tokenizer.json: missing", h_tok_gone, AMPR_ERR_MODEL_MISSING, "tokenizer.json"),
    H("tokenizer.json: bad JSON", h_tok_bad_json, AMPR_ERR_MODEL_VOCAB, "tokenizer.json"),
    H("tokenizer.json: Unigram model", h_tok_unigram, AMPR_ERR_UNSUPPORTED, "Unigram"),
    H("tokenizer.json: vocab an array", h_tok_vocab_array, AMPR_ERR_MODEL_VOCAB, "vocab"),
    H("tokenizer.json: id beyond vocab", h_tok_bad_id, AMPR_ERR_MODEL_VOCAB, "100000"),
    H("tokenizer.json: duplicate id", h_tok_dup_id, AMPR_ERR_MODEL_VOCAB, "261"),
    H("tokenizer.json: merge without space", h_tok_bad_merge, AMPR_ERR_MODEL_VOCAB, "merge"),
    H("tokenizer.json: bad UTF-8", h_tok_bad_utf8, AMPR_ERR_MODEL_VOCAB, "0xff"),
};

static int strcasestr_ok(const char *hay, const char *needle) { return strcasestr(hay, needle) != NULL; }

/* Build the corrupted model of row r at g_bad (file) or g_cur (directory). */
static const char *make_bad(const mrow *r, size_t i) {
    if (r->gguf) {
        gbuf g = {malloc(g_len), g_len};
        memcpy(g.b, g_buf, g_len);
        r->gguf(&g);
        snprintf(g_bad, sizeof g_bad, "%s/bad%zu.gguf", g_dir, i);
        assert_int_equal(tu_write_file(g_bad, g.b, g.len), 0);
        free(g.b);
        return g_bad;
    }
    snprintf(g_cur, sizeof g_cur, "%s/bad%zu", g_dir, i);
    assert_int_equal(mkdir(g_cur, 0755), 0);
    static const char *const files[] = {"config.json", "generation_config.json",
                                        "model.safetensors", "tokenizer.json",
                                        "tokenizer_config.json"};
    for (size_t k = 0; k < AMPR__ARRAY_LEN(files); k++) copy_file(g_hf, g_cur, files[k]);
    r->hf();
    return g_cur;
}

static void remove_bad(const mrow *r) {
    if (r->gguf) unlink(g_bad);
    else tu_rmtree(g_cur);
}

static void test_valid_controls(void **state) {
    (void)state;
    const char *paths[2] = {g_gguf, g_hf};
    for (int i = 0; i < 2; i++) {
        ampr_ctx *ctx = NULL;
        ampr_status st = ampr_open(paths[i], "{\"tiers\": [\"f32\", \"nf4\"], \"threads\": 1}", &ctx);
        if (st) fprintf(stderr, "%s: %s\n", paths[i], ampr_errmsg(ctx));
        assert_int_equal(st, AMPR_OK);
        ampr_close(ctx);
    }
}

static void test_malformed_table(void **state) {
    (void)state;
    int print = getenv("AMPR_MALFORMED_TABLE") != NULL;
    int bad = 0;
    if (print) printf("| malformed input | status |\n|---|---|\n");
    for (size_t i = 0; i < AMPR__ARRAY_LEN(k_rows); i++) {
        const mrow *r = &k_rows[i];
        const char *path = make_bad(r, i);
        g_live = 0;
        assert_int_equal(ampr_set_allocator(cnt_malloc, cnt_realloc, cnt_free, NULL), AMPR_OK);
        ampr_ctx *ctx = NULL;
        ampr_status st = ampr_open(path, "{\"tiers\": [\"f32\"], \"threads\": 1}", &ctx);
        char msg[AMPR__ERRMSG_MAX + 1];
        snprintf(msg, sizeof msg, "%s", ampr_errmsg(ctx));
        ampr_close(ctx);
        long live = g_live;
        ampr_set_allocator(NULL, NULL, NULL, NULL);
        int ok = st == r->want && msg[0] && strcasestr_ok(msg, r->needle) && live == 0;
        if (!ok) {
            fprintf(stderr, "FAIL %-36s got %s (\"%s\"), want %s with \"%s\", %ld live\n",
                    r->name, ampr_status_name(st), msg, ampr_status_name(r->want), r->needle,
                    live);
            bad++;
        }
        if (print) printf("| %s | %s |\n", r->name, ampr_status_name(st));
        remove_bad(r);
    }
    printf("%zu malformed models, %d mismatches\n", AMPR__ARRAY_LEN(k_rows), bad);
    assert_int_equal(bad, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_controls),
        cmocka_unit_test(test_malformed_table),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
