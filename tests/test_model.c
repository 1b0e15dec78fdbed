/*
 * test_model.c -- the model loaders: the real stories260K GGUF against its
 * llama2.c .bin, the llama2.c -> Hugging Face converter, random models in
 * both formats, and malformed files, each failing with its specific status.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "model/model.h"
#include "model/model_int.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------- */

/* A llama2.c v0 checkpoint read straight from its bytes. */
typedef struct l2c {
    char *buf;
    size_t len;
    int dim, hidden, n_layers, n_heads, n_kv, vocab, seq, shared;
    const float *embd, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
} l2c;

static void l2c_open(l2c *c, const char *path) {
    c->buf = tu_read_file(path, &c->len);
    assert_non_null(c->buf);
    int32_t h[7];
    memcpy(h, c->buf, sizeof h);
    c->dim = h[0], c->hidden = h[1], c->n_layers = h[2], c->n_heads = h[3], c->n_kv = h[4];
    c->shared = h[5] > 0;
    c->vocab = abs(h[5]), c->seq = h[6];
    int hs = c->dim / c->n_heads, kv_dim = c->n_kv * hs, L = c->n_layers;
    const float *p = (const float *)(c->buf + 28);
    c->embd = p, p += (size_t)c->vocab * c->dim;
    c->rms_att = p, p += (size_t)L * c->dim;
    c->wq = p, p += (size_t)L * c->dim * c->dim;
    c->wk = p, p += (size_t)L * kv_dim * c->dim;
    c->wv = p, p += (size_t)L * kv_dim * c->dim;
    c->wo = p, p += (size_t)L * c->dim * c->dim;
    c->rms_ffn = p, p += (size_t)L * c->dim;
    c->w1 = p, p += (size_t)L * c->hidden * c->dim;
    c->w2 = p, p += (size_t)L * c->dim * c->hidden;
    c->w3 = p, p += (size_t)L * c->hidden * c->dim;
    c->rms_final = p, p += c->dim;
    p += (size_t)c->seq * hs; /* freq_cis real + imag */
    c->wcls = c->shared ? c->embd : p;
}

/* Compare every row of t (as fp32) with ref[rows][cols]. */
static void expect_tensor(const ampr__tensor *t, const float *ref, int64_t rows, int64_t cols) {
    assert_non_null(t);
    assert_int_equal(t->ne[0], cols);
    assert_int_equal(t->n_dims == 1 ? 1 : t->ne[1], rows);
    float *row = malloc((size_t)cols * sizeof *row);
    for (int64_t r = 0; r < rows; r++) {
        ampr__tensor_row_f32(t, r, row);
        assert_memory_equal(row, ref + r * cols, (size_t)cols * sizeof *row);
    }
    free(row);
}

static void expect_l2c_layers(const ampr__model *m, const l2c *c, int permuted) {
    int hs = c->dim / c->n_heads, kv_dim = c->n_kv * hs, D = c->dim, H = c->hidden;
    expect_tensor(m->tok_embd, c->embd, c->vocab, D);
    expect_tensor(m->output_norm, c->rms_final, 1, D);
    expect_tensor(m->output, c->wcls, c->vocab, D);
    float *tmp = malloc((size_t)D * D * sizeof *tmp), *unp = malloc((size_t)D * D * sizeof *unp);
    for (int l = 0; l < c->n_layers; l++) {
        const ampr__layer *L = &m->layers[l];
        expect_tensor(L->attn_norm, c->rms_att + (size_t)l * D, 1, D);
        expect_tensor(L->ffn_norm, c->rms_ffn + (size_t)l * D, 1, D);
        if (permuted) {
            /* Q/K are stored half-split: un-permute and compare. */
            for (int64_t r = 0; r < D; r++) ampr__tensor_row_f32(L->wq, r, tmp + r * D);
            ampr__unpermute_qk(tmp, unp, c->n_heads, hs, D);
            assert_memory_equal(unp, c->wq + (size_t)l * D * D, (size_t)D * D * 4);
            /* and the permuted rows really moved: row 1 of head 0 is old row 2 */
            assert_memory_equal(tmp + 1 * D, c->wq + (size_t)l * D * D + 2 * D, (size_t)D * 4);
            for (int64_t r = 0; r < kv_dim; r++) ampr__tensor_row_f32(L->wk, r, tmp + r * D);
            ampr__unpermute_qk(tmp, unp, c->n_kv, hs, D);
            assert_memory_equal(unp, c->wk + (size_t)l * kv_dim * D, (size_t)kv_dim * D * 4);
        } else {
            expect_tensor(L->wq, c->wq + (size_t)l * D * D, D, D);
            expect_tensor(L->wk, c->wk + (size_t)l * kv_dim * D, kv_dim, D);
        }
        expect_tensor(L->wv, c->wv + (size_t)l * kv_dim * D, kv_dim, D);
        expect_tensor(L->wo, c->wo + (size_t)l * D * D, D, D);
        expect_tensor(L->w_gate, c->w1 + (size_t)l * H * D, H, D);
        expect_tensor(L->w_down, c->w2 + (size_t)l * D * H, D, H);
        expect_tensor(L->w_up, c->w3 + (size_t)l * H * D, H, D);
    }
    free(tmp);
    free(unp);
}

static ampr__model *load_ok(const char *path);
static void expect_same_encoding(const ampr__tokenizer *a, const ampr__tokenizer *b);

/* ---- stories260K ------------------------------------------------------------ */

static void test_stories_gguf(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(gguf, "models/stories260K/stories260K.gguf");
    TU_SHARED_OR_SKIP(bin, "models/stories260K/stories260K.bin");
    ampr__err err = {0};
    ampr__model *m = NULL;
    ampr_status st = ampr__model_load(gguf, 1, &m, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, AMPR_OK);
    assert_string_equal(m->format, "gguf");
    const ampr__hparams *hp = &m->hp;
    assert_int_equal(hp->dim, 64);
    assert_int_equal(hp->hidden_dim, 172);
    assert_int_equal(hp->n_layers, 5);
    assert_int_equal(hp->n_heads, 8);
    assert_int_equal(hp->n_kv_heads, 4);
    assert_int_equal(hp->head_dim, 8);
    assert_int_equal(hp->vocab_size, 512);
    assert_int_equal(hp->context_length, 2048);
    assert_int_equal(hp->rope_layout, AMPR__ROPE_INTERLEAVED);
    assert_true(fabsf(hp->norm_eps - 1e-5f) < 1e-9f);
    assert_true(hp->rope_theta == 10000.0f);
    assert_false(hp->tied_embeddings);
    assert_non_null(m->tok);
    assert_int_equal(ampr__tok_n_vocab(m->tok), 512);
    assert_int_equal(m->layers[0].wk->ne[1], 32);
    assert_int_equal(m->layers[0].w_down->ne[0], 172);
    l2c c;
    l2c_open(&c, bin);
    expect_l2c_layers(m, &c, 0);
    /* tok_embd (512*64) + output (512*64) + final norm + 5 layers */
    uint64_t per_layer = 2 * 64 + 64 * 64 * 2 + 2 * 32 * 64 + 3 * 172 * 64;
    assert_int_equal(m->n_params, 2 * 512 * 64 + 64 + 5 * per_layer);
    free(c.buf);
    ampr__model_free(m);
}

static void test_stories_convert(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "models/stories260K/stories260K.bin");
    TU_SHARED_OR_SKIP(tok, "models/stories260K/tok512.bin");
    char *dir = tu_tmpdir("conv");
    ampr__err err = {0};
    ampr_status st = ampr__convert_llama2c(bin, tok, dir, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, AMPR_OK);
    ampr__model *m = NULL;
    st = ampr__model_load(dir, 1, &m, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, AMPR_OK);
    assert_string_equal(m->format, "hf");
    const ampr__hparams *hp = &m->hp;
    assert_int_equal(hp->dim, 64);
    assert_int_equal(hp->hidden_dim, 172);
    assert_int_equal(hp->n_layers, 5);
    assert_int_equal(hp->n_heads, 8);
    assert_int_equal(hp->n_kv_heads, 4);
    assert_int_equal(hp->head_dim, 8);
    assert_int_equal(hp->vocab_size, 512);
    assert_int_equal(hp->context_length, 512);
    assert_int_equal(hp->rope_layout, AMPR__ROPE_HALF);
    assert_true(hp->norm_eps == 1e-5f);
    assert_true(hp->tied_embeddings);
    assert_ptr_equal(m->output, m->tok_embd);
    assert_int_equal(ampr__tok_n_vocab(m->tok), 512);
    l2c c;
    l2c_open(&c, bin);
    expect_l2c_layers(m, &c, 1);
    free(c.buf);
    /* the converted tokenizer.json encodes like the GGUF vocabulary */
    TU_SHARED_OR_SKIP(gguf, "models/stories260K/stories260K.gguf");
    ampr__model *mg = load_ok(gguf);
    expect_same_encoding(mg->tok, m->tok);
    ampr__model_free(mg);
    ampr__model_free(m);

    /* tokenizer.json: byte-fallback BPE with U+2581 pieces and score-ranked merges */
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *tj = tu_read_file(path, NULL);
    assert_non_null(tj);
    assert_non_null(strstr(tj, "\"byte_fallback\": true"));
    assert_non_null(strstr(tj, "\"<0x0A>\": 13"));
    /* the first merge is the best-scored pair, "\u2581 t" (SentencePiece id 259) */
    const char *merges = strstr(tj, "\"merges\": [");
    assert_non_null(merges);
    assert_non_null(strstr(merges, "\"\xe2\x96\x81 t\""));
    assert_true(strstr(merges, "\"\xe2\x96\x81 t\"") < strstr(merges, "\"h e\""));
    free(tj);
    tu_rmtree(dir);
    free(dir);
}

/* ---- random models ------------------------------------------------------------ */

static ampr__hparams small_hp(void) {
    ampr__hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.dim = 64, hp.hidden_dim = 96, hp.n_layers = 2, hp.n_heads = 8, hp.n_kv_heads = 2;
    hp.head_dim = 8, hp.vocab_size = 300, hp.context_length = 128;
    hp.norm_eps = 1e-5f, hp.rope_theta = 10000.0f;
    return hp;
}

static ampr__model *load_ok(const char *path) {
    ampr__err err = {0};
    ampr__model *m = NULL;
    ampr_status st = ampr__model_load(path, 1, &m, &err);
    if (st) fprintf(stderr, "load %s: %s\n", path, err.msg);
    assert_int_equal(st, AMPR_OK);
    return m;
}

static void expect_status(const char *path, ampr_status want) {
    ampr__err err = {0};
    ampr__model *m = NULL;
    ampr_status st = ampr__model_load(path, 1, &m, &err);
    if (st != want) fprintf(stderr, "%s: got %d (%s), want %d\n", path, st, err.msg, want);
    assert_int_equal(st, want);
    assert_null(m);
    assert_int_equal(err.status, want);
    assert_true(err.msg[0] != '\0');
}

static void expect_hp_equal(const ampr__hparams *a, const ampr__hparams *b) {
    assert_int_equal(a->dim, b->dim);
    assert_int_equal(a->hidden_dim, b->hidden_dim);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->n_heads, b->n_heads);
    assert_int_equal(a->n_kv_heads, b->n_kv_heads);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->context_length, b->context_length);
    assert_int_equal(a->tied_embeddings, b->tied_embeddings);
    assert_true(a->norm_eps == b->norm_eps);
    assert_true(a->rope_theta == b->rope_theta);
}

/* Every weight of a (GGUF) equals b (HF), Q/K after un-permuting b's rows. */
static void expect_same_weights(const ampr__model *a, const ampr__model *b) {
    const ampr__hparams *hp = &a->hp;
    size_t big = (size_t)hp->vocab_size * hp->dim + (size_t)hp->hidden_dim * hp->dim;
    float *x = malloc(big * 4), *y = malloc(big * 4), *u = malloc(big * 4);
    for (int l = -1; l < hp->n_layers; l++) {
        const ampr__tensor *ta[9], *tb[9];
        int n = 0;
        if (l < 0) {
            ta[0] = a->tok_embd, tb[0] = b->tok_embd;
            ta[1] = a->output_norm, tb[1] = b->output_norm;
            ta[2] = a->output, tb[2] = b->output;
            n = 3;
        } else {
            memcpy(ta, &a->layers[l], sizeof ta);
            memcpy(tb, &b->layers[l], sizeof tb);
            n = 9;
        }
        for (int k = 0; k < n; k++) {
            assert_int_equal(ta[k]->ne[0], tb[k]->ne[0]);
            assert_int_equal(ta[k]->ne[1], tb[k]->ne[1]);
            int64_t rows = ta[k]->ne[1], cols = ta[k]->ne[0];
            for (int64_t r = 0; r < rows; r++) {
                ampr__tensor_row_f32(ta[k], r, x + r * cols);
                ampr__tensor_row_f32(tb[k], r, y + r * cols);
            }
            if (l >= 0 && (k == 1 || k == 2)) {
                ampr__unpermute_qk(y, u, k == 1 ? hp->n_heads : hp->n_kv_heads, hp->head_dim,
                                   cols);
                assert_memory_equal(x, u, (size_t)(rows * cols) * 4);
                assert_memory_not_equal(x, y, (size_t)(rows * cols) * 4);
            } else {
                assert_memory_equal(x, y, (size_t)(rows * cols) * 4);
            }
        }
    }
    free(x);
    free(y);
    free(u);
}

/* Both tokenizers encode a few texts to the same ids. */
static void expect_same_encoding(const ampr__tokenizer *a, const ampr__tokenizer *b) {
    static const char *const texts[] = {"Once upon a time, there was a little girl.",
                                        "  two  spaces\nand a newline", "caf\xc3\xa9 \xe2\x82\xac" "5",
                                        "abc abd zzz qq"};
    for (size_t i = 0; i < AMPR__ARRAY_LEN(texts); i++) {
        ampr__err err = {0};
        int32_t *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        assert_int_equal(ampr__tok_encode(a, texts[i], strlen(texts[i]), 1, &x, &nx, &err), 0);
        assert_int_equal(ampr__tok_encode(b, texts[i], strlen(texts[i]), 1, &y, &ny, &err), 0);
        assert_int_equal(nx, ny);
        assert_memory_equal(x, y, nx * sizeof *x);
        ampr__free(x);
        ampr__free(y);
    }
}

static void test_random_roundtrip(void **state) {
    (void)state;
    char *dir = tu_tmpdir("rand");
    char g[4200], h[4200], h3[4200], g16[4200];
    snprintf(g, sizeof g, "%s/m.gguf", dir);
    snprintf(h, sizeof h, "%s/hf", dir);
    snprintf(h3, sizeof h3, "%s/hf3", dir);
    snprintf(g16, sizeof g16, "%s/m16.gguf", dir);
    ampr__hparams hp = small_hp();
    ampr__err err = {0};
    assert_int_equal(ampr__model_write_random(g, "gguf", &hp, AMPR__DT_F32, 1, 42, &err), 0);
    assert_int_equal(ampr__model_write_random(h, "hf", &hp, AMPR__DT_F32, 1, 42, &err), 0);
    assert_int_equal(ampr__model_write_random(h3, "hf", &hp, AMPR__DT_BF16, 3, 42, &err), 0);
    ampr__hparams tied = hp;
    tied.tied_embeddings = 1;
    tied.n_kv_heads = 8;
    assert_int_equal(ampr__model_write_random(g16, "gguf", &tied, AMPR__DT_F16, 1, 7, &err), 0);

    ampr__model *mg = load_ok(g), *mh = load_ok(h), *mh3 = load_ok(h3), *mg16 = load_ok(g16);
    expect_hp_equal(&mg->hp, &hp);
    expect_hp_equal(&mh->hp, &hp);
    expect_hp_equal(&mh3->hp, &hp);
    expect_hp_equal(&mg16->hp, &tied);
    assert_int_equal(mg->hp.rope_layout, AMPR__ROPE_INTERLEAVED);
    assert_int_equal(mh->hp.rope_layout, AMPR__ROPE_HALF);
    assert_int_equal(mg->layers[1].wk->ne[1], 16); /* GQA: 2 kv heads x 8 */
    assert_int_equal(mh3->layers[1].wv->ne[1], 16);
    assert_int_equal(mh3->layers[0].wq->dtype, AMPR__DT_BF16);
    assert_int_equal(mg16->layers[0].wq->dtype, AMPR__DT_F16);
    assert_ptr_equal(mg16->output, mg16->tok_embd);
    assert_int_equal(ampr__tok_n_vocab(mg->tok), 300);
    assert_int_equal(ampr__tok_n_vocab(mh->tok), 300);
    assert_int_equal(mg->n_params, mh->n_params);
    assert_int_equal(mg->n_params, mh3->n_params);
    /* the same seed gives the same model in both formats */
    expect_same_weights(mg, mh);
    expect_same_encoding(mg->tok, mh->tok);
    /* statistics: std about 0.02, norms about 1 */
    float row[64];
    ampr__tensor_row_f32(mg->layers[0].attn_norm, 0, row);
    assert_true(fabsf(row[3] - 1.0f) < 0.2f);
    double s2 = 0;
    for (int r = 0; r < 64; r++) {
        ampr__tensor_row_f32(mg->layers[0].wq, r, row);
        for (int i = 0; i < 64; i++) s2 += (double)row[i] * row[i];
    }
    double sd = sqrt(s2 / 4096);
    assert_true(sd > 0.018 && sd < 0.022);
    /* sharded: three shard files and an index */
    char p[4300];
    snprintf(p, sizeof p, "%s/model-00003-of-00003.safetensors", h3);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    ampr__model_free(mg);
    ampr__model_free(mh);
    ampr__model_free(mh3);
    ampr__model_free(mg16);
    tu_rmtree(dir);
    free(dir);
}

/* ---- malformed GGUF ------------------------------------------------------------ */

typedef struct blob {
    char *dir;
    char base[4200], bad[4200];
    char *buf;
    size_t len;
} blob;

static void blob_gguf(blob *b) {
    b->dir = tu_tmpdir("bad");
    snprintf(b->base, sizeof b->base, "%s/base.gguf", b->dir);
    snprintf(b->bad, sizeof b->bad, "%s/bad.gguf", b->dir);
    ampr__hparams hp = small_hp();
    ampr__err err = {0};
    assert_int_equal(ampr__model_write_random(b->base, "gguf", &hp, AMPR__DT_F32, 1, 1, &err), 0);
    b->buf = tu_read_file(b->base, &b->len);
    assert_non_null(b->buf);
}

static void blob_free(blob *b) {
    free(b->buf);
    tu_rmtree(b->dir);
    free(b->dir);
}

/* Offset just past the GGUF string s (u64 length + bytes). */
static size_t after_str(const blob *b, const char *s) {
    size_t n = strlen(s);
    char *pat = malloc(n + 8);
    uint64_t len = n;
    memcpy(pat, &len, 8);
    memcpy(pat + 8, s, n);
    char *hit = memmem(b->buf, b->len, pat, n + 8);
    free(pat);
    assert_non_null(hit);
    return (size_t)(hit - b->buf) + 8 + n;
}

/* Write buf with bytes [at, at+n) replaced by v, truncated to len. */
static void write_patched(const blob *b, size_t at, const void *v, size_t n, size_t len) {
    char *c = malloc(b->len);
    memcpy(c, b->buf, b->len);
    if (v) memcpy(c + at, v, n);
    assert_int_equal(tu_write_file(b->bad, c, len), 0);
    free(c);
}

static void gguf_case(const blob *b, size_t at, const void *v, size_t n, ampr_status want) {
    write_patched(b, at, v, n, b->len);
    expect_status(b->bad, want);
}

/* Tensor info fields of name: n_dims at +0, ne at +4, type, offset after. */
static void tensor_case(const blob *b, const char *name, int field, uint64_t v,
                        ampr_status want) {
    size_t at = after_str(b, name);
    uint32_t nd;
    memcpy(&nd, b->buf + at, 4);
    if (field == 0) gguf_case(b, at + 4, &v, 8, want); /* ne[0] */
    else if (field == 1) gguf_case(b, at + 12, &v, 8, want); /* ne[1] */
    else if (field == 2) {
        uint32_t t = (uint32_t)v;
        gguf_case(b, at + 4 + 8 * nd, &t, 4, want);
    } else gguf_case(b, at + 8 + 8 * nd, &v, 8, want); /* offset */
}

static uint64_t tensor_offset(const blob *b, const char *name) {
    size_t at = after_str(b, name);
    uint32_t nd;
    uint64_t off;
    memcpy(&nd, b->buf + at, 4);
    memcpy(&off, b->buf + at + 8 + 8 * nd, 8);
    return off;
}

/* The load's scan for inf/NaN in 16-bit weights reads four halves per word,
 * a 4 KiB chunk at a time, then a tail: one bad half anywhere (first and last
 * lane of a word, across chunks, in the tail), as inf, -NaN or a signalling
 * NaN, must be found, and the largest finite half must not be. */
static void half_case(const char *path, const char *file, const char *buf, size_t len,
                      size_t at, uint16_t v, ampr_status want) {
    char *b = malloc(len);
    memcpy(b, buf, len);
    memcpy(b + at, &v, 2);
    assert_int_equal(tu_write_file(file, b, len), 0);
    free(b);
    ampr__err err = {0};
    ampr__model *m = NULL;
    ampr_status st = ampr__model_load(path, 1, &m, &err);
    if (st != want)
        fail_msg("%s: half 0x%04x at byte %zu: status %d (%s), want %d", path, v, at, (int)st,
                 err.msg, (int)want);
    ampr__model_free(m);
}

/* The random writer's threads each make a part of a chunk: the files must
 * not depend on how many there are. One thread runs the stream straight
 * through, chunk after chunk (the reference); three compute each part's
 * start. Tensors of 2^16 values and more are split, including a Q matrix of
 * the HF permutation; the embedding (4608 x 256) spans two 2^20-value chunks. */
static void test_random_threads(void **state) {
    (void)state;
    char *dir = tu_tmpdir("randthr");
    ampr__hparams hp = small_hp();
    hp.dim = 256, hp.hidden_dim = 768, hp.n_layers = 1, hp.n_heads = 4, hp.n_kv_heads = 2;
    hp.head_dim = 64, hp.vocab_size = 4608;
    struct { const char *fmt; ampr__dtype dt; const char *file; } cases[] = {
        {"gguf", AMPR__DT_F16, ""}, {"gguf", AMPR__DT_F32, ""},
        {"hf", AMPR__DT_BF16, "/model.safetensors"}};
    for (size_t k = 0; k < AMPR__ARRAY_LEN(cases); k++) {
        char out[2][4200], file[2][4400];
        char *buf[2];
        size_t len[2];
        for (int t = 0; t < 2; t++) {
            ampr__err err = {0};
            snprintf(out[t], sizeof out[t], "%s/m%zu-%d", dir, k, t);
            assert_int_equal(ampr__model_write_random_threads(out[t], cases[k].fmt, &hp,
                                                              cases[k].dt, 1, 11, t ? 3 : 1, &err),
                             AMPR_OK);
            snprintf(file[t], sizeof file[t], "%s/m%zu-%d%s", dir, k, t, cases[k].file);
            buf[t] = tu_read_file(file[t], &len[t]);
            assert_non_null(buf[t]);
        }
        assert_true(len[0] > (size_t)hp.vocab_size * (size_t)hp.dim * 2);
        assert_int_equal(len[0], len[1]);
        assert_memory_equal(buf[0], buf[1], len[0]);
        free(buf[0]);
        free(buf[1]);
    }
    tu_rmtree(dir);
    free(dir);
}

static void test_half_nonfinite(void **state) {
    (void)state;
    char *dir = tu_tmpdir("halfnan");
    char g16[4200], hbf[4200], file[4300];
    snprintf(g16, sizeof g16, "%s/m16.gguf", dir);
    snprintf(hbf, sizeof hbf, "%s/hfbf", dir);
    ampr__hparams hp = small_hp();
    ampr__err err = {0};
    assert_int_equal(ampr__model_write_random(g16, "gguf", &hp, AMPR__DT_F16, 1, 5, &err), 0);
    assert_int_equal(ampr__model_write_random(hbf, "hf", &hp, AMPR__DT_BF16, 1, 5, &err), 0);
    for (int f = 0; f < 2; f++) {
        const char *path = f ? hbf : g16;
        if (f) snprintf(file, sizeof file, "%s/model.safetensors", hbf);
        else snprintf(file, sizeof file, "%s", g16);
        ampr__model *m = load_ok(path);
        const ampr__tensor *t = m->tok_embd; /* 300 x 64 halves: 9 whole chunks + a tail */
        assert_int_equal(t->dtype, f ? AMPR__DT_BF16 : AMPR__DT_F16);
        assert_true(t->nbytes > 2 * 4096 && t->nbytes % 4096 != 0);
        size_t len;
        char *buf = tu_read_file(file, &len);
        char *hit = memmem(buf, len, t->data, 64);
        assert_non_null(hit);
        size_t base = (size_t)(hit - buf), nb = (size_t)t->nbytes;
        ampr__model_free(m);
        const size_t at[] = {0, 6, 4094, 4096 + 2, 3 * 4096 + 6, nb / 4096 * 4096, nb - 2};
        const uint16_t bad16[] = {0x7c00, 0xfe00, 0x7c01}, badbf[] = {0x7f80, 0xffc0, 0x7f81};
        for (size_t i = 0; i < AMPR__ARRAY_LEN(at); i++) {
            for (int k = 0; k < 3; k++)
                half_case(path, file, buf, len, base + at[i], f ? badbf[k] : bad16[k],
                          AMPR_ERR_MODEL_NONFINITE);
            half_case(path, file, buf, len, base + at[i], f ? 0x7f7f : 0x7bff, AMPR_OK);
        }
        free(buf);
    }
    tu_rmtree(dir);
    free(dir);
}

static void test_gguf_malformed(void **state) {
    (void)state;
    blob b;
    blob_gguf(&b);
    ampr__model *ok = load_ok(b.base);
    uint32_t u32;
    uint64_t u64;

    gguf_case(&b, 0, "GGUX", 4, AMPR_ERR_MODEL_FORMAT); /* bad magic */
    {
        ampr__err err = {0};
        ampr__model *m = NULL;
        write_patched(&b, 0, "GGUX", 4, b.len);
        assert_int_equal(ampr__model_load_gguf(b.bad, 0, &m, &err), AMPR_ERR_MODEL_FORMAT);
    }
    u32 = 4;
    gguf_case(&b, 4, &u32, 4, AMPR_ERR_MODEL_FORMAT); /* version 4 */
    u32 = 1;
    gguf_case(&b, 4, &u32, 4, AMPR_ERR_MODEL_FORMAT); /* version 1 */
    u64 = (uint64_t)1 << 60;
    gguf_case(&b, 8, &u64, 8, AMPR_ERR_MODEL_TRUNCATED);  /* huge tensor count */
    gguf_case(&b, 16, &u64, 8, AMPR_ERR_MODEL_TRUNCATED); /* huge KV count */
    u64 = (uint64_t)1 << 62;
    gguf_case(&b, 24, &u64, 8, AMPR_ERR_MODEL_TRUNCATED); /* huge key length */
    /* huge token string length inside the tokens array */
    size_t toks = after_str(&b, "tokenizer.ggml.tokens");
    gguf_case(&b, toks + 12, &u64, 8, AMPR_ERR_MODEL_TRUNCATED);
    /* truncated at several points: header, KVs, tensor infos, data */
    size_t cuts[] = {5, 20, 30, toks, after_str(&b, "blk.0.attn_q.weight"), b.len / 2,
                     b.len - 1};
    for (size_t i = 0; i < AMPR__ARRAY_LEN(cuts); i++) {
        write_patched(&b, 0, NULL, 0, cuts[i]);
        ampr__err err = {0};
        ampr__model *m = NULL;
        ampr_status st = ampr__model_load_gguf(b.bad, 1, &m, &err);
        if (st != AMPR_ERR_MODEL_TRUNCATED) fprintf(stderr, "cut %zu: %s\n", cuts[i], err.msg);
        assert_int_equal(st, AMPR_ERR_MODEL_TRUNCATED);
        assert_null(m);
    }
    write_patched(&b, 0, NULL, 0, 0); /* empty file */
    expect_status(b.bad, AMPR_ERR_MODEL_FORMAT);

    tensor_case(&b, "blk.0.attn_q.weight", 3, (uint64_t)1 << 40, AMPR_ERR_MODEL_BOUNDS);
    tensor_case(&b, "blk.0.attn_q.weight", 3, tensor_offset(&b, "blk.0.attn_q.weight") + 4,
                AMPR_ERR_MODEL_BOUNDS); /* misaligned */
    tensor_case(&b, "blk.0.attn_k.weight", 3, tensor_offset(&b, "blk.0.attn_q.weight"),
                AMPR_ERR_MODEL_BOUNDS); /* overlaps attn_q */
    tensor_case(&b, "output.weight", 3, tensor_offset(&b, "output.weight") + 32,
                AMPR_ERR_MODEL_TRUNCATED); /* runs past the end */
    /* a huge but representable size: the file is too short for it */
    tensor_case(&b, "blk.0.attn_q.weight", 0, (uint64_t)1 << 40, AMPR_ERR_MODEL_TRUNCATED);
    {   /* ne product overflow: two dims of 2^40 */
        size_t at = after_str(&b, "blk.0.attn_q.weight");
        uint64_t big[2] = {(uint64_t)1 << 40, (uint64_t)1 << 40};
        gguf_case(&b, at + 4, big, 16, AMPR_ERR_MODEL_SHAPE);
    }
    tensor_case(&b, "blk.0.attn_q.weight", 2, 99, AMPR_ERR_MODEL_DTYPE); /* unknown */
    tensor_case(&b, "blk.0.attn_q.weight", 2, 2, AMPR_ERR_MODEL_DTYPE);  /* Q4_0 */
    tensor_case(&b, "blk.0.attn_norm.weight", 0, 32, AMPR_ERR_MODEL_SHAPE);
    tensor_case(&b, "blk.1.attn_k.weight", 1, 8, AMPR_ERR_MODEL_SHAPE);
    {
        size_t at = after_str(&b, "blk.1.ffn_up.weight");
        gguf_case(&b, at - 9, "uq", 2, AMPR_ERR_MODEL_MISSING); /* renamed away */
    }
    /* hyper-parameters: value after key + u32 type */
    u32 = 0;
    gguf_case(&b, after_str(&b, "llama.block_count") + 4, &u32, 4, AMPR_ERR_MODEL_HPARAMS);
    u32 = 7;
    gguf_case(&b, after_str(&b, "llama.attention.head_count") + 4, &u32, 4,
              AMPR_ERR_MODEL_HPARAMS);
    u32 = 3;
    gguf_case(&b, after_str(&b, "llama.attention.head_count_kv") + 4, &u32, 4,
              AMPR_ERR_MODEL_HPARAMS);
    float nan = NAN;
    gguf_case(&b, after_str(&b, "llama.attention.layer_norm_rms_epsilon") + 4, &nan, 4,
              AMPR_ERR_MODEL_HPARAMS);
    gguf_case(&b, after_str(&b, "general.architecture") + 12, "mamba", 5, AMPR_ERR_UNSUPPORTED);
    u32 = 9; /* scores: an array of arrays */
    gguf_case(&b, after_str(&b, "tokenizer.ggml.scores") + 4, &u32, 4, AMPR_ERR_MODEL_FORMAT);
    u32 = 77; /* unknown value type */
    gguf_case(&b, after_str(&b, "general.name") , &u32, 4, AMPR_ERR_MODEL_FORMAT);
    u32 = 1000; /* bos id beyond the vocabulary */
    gguf_case(&b, after_str(&b, "tokenizer.ggml.bos_token_id") + 4, &u32, 4,
              AMPR_ERR_MODEL_VOCAB);

    /* NaN in a weight: found only when asked to look */
    const ampr__tensor *t = ok->layers[1].w_down;
    char *hit = memmem(b.buf, b.len, t->data, 16);
    assert_non_null(hit);
    gguf_case(&b, (size_t)(hit - b.buf) + 4, &nan, 4, AMPR_ERR_MODEL_NONFINITE);
    {
        ampr__err err = {0};
        ampr__model *m = NULL;
        assert_int_equal(ampr__model_load(b.bad, 0, &m, &err), AMPR_OK);
        ampr__model_free(m);
    }
    ampr__model_free(ok);
    blob_free(&b);
}

/* ---- malformed Hugging Face directories ------------------------------------------------ */

static char *hf_dir(const char *tag) {
    char *dir = tu_tmpdir(tag);
    char *sub = malloc(4200);
    snprintf(sub, 4200, "%s/m", dir);
    ampr__hparams hp = small_hp();
    ampr__err err = {0};
    assert_int_equal(ampr__model_write_random(sub, "hf", &hp, AMPR__DT_F32, 1, 5, &err), 0);
    free(dir);
    return sub;
}

static void hf_done(char *sub) {
    tu_rmtree(sub);
    *strrchr(sub, '/') = '\0';
    tu_rmtree(sub);
    free(sub);
}

static void edit_json_file(const char *path, const char *key, json_t *v) {
    json_t *j = json_load_file(path, 0, NULL);
    assert_non_null(j);
    if (v) json_object_set_new(j, key, v);
    else json_object_del(j, key);
    assert_int_equal(json_dump_file(j, path, 0), 0);
    json_decref(j);
}

static void cfg_case(const char *key, json_t *v, ampr_status want) {
    char *d = hf_dir("cfg");
    char p[4300];
    snprintf(p, sizeof p, "%s/config.json", d);
    edit_json_file(p, key, v);
    expect_status(d, want);
    hf_done(d);
}

typedef void (*hdr_edit_fn)(json_t *hdr);

/* Rewrite model.safetensors with its header edited (data unchanged). */
static void st_case(hdr_edit_fn edit, ampr_status want) {
    char *d = hf_dir("st");
    char p[4300];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    size_t len;
    char *buf = tu_read_file(p, &len);
    uint64_t n;
    memcpy(&n, buf, 8);
    json_t *h = json_loadb(buf + 8, n, 0, NULL);
    assert_non_null(h);
    edit(h);
    char *txt = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    uint64_t nn = strlen(txt);
    FILE *f = fopen(p, "wb");
    fwrite(&nn, 8, 1, f);
    fwrite(txt, 1, nn, f);
    fwrite(buf + 8 + n, 1, len - 8 - n, f);
    fclose(f);
    free(txt);
    free(buf);
    expect_status(d, want);
    hf_done(d);
}

static json_t *entry(json_t *h, const char *name) {
    json_t *e = json_object_get(h, name);
    assert_non_null(e);
    return e;
}

static void ed_offset_range(json_t *h) {
    json_t *o = json_object_get(entry(h, "model.norm.weight"), "data_offsets");
    json_int_t e = json_integer_value(json_array_get(o, 1));
    json_array_set_new(o, 0, json_integer(e + 1000000));
    json_array_set_new(o, 1, json_integer(e + 1000000 + 256));
}
static void ed_overlap(json_t *h) {
    json_t *q = json_object_get(entry(h, "model.layers.0.self_attn.q_proj.weight"), "data_offsets");
    json_t *k = json_object_get(entry(h, "model.layers.0.self_attn.k_proj.weight"), "data_offsets");
    json_int_t b = json_integer_value(json_array_get(q, 0));
    json_array_set_new(k, 0, json_integer(b));
    json_array_set_new(k, 1, json_integer(b + 16 * 64 * 4));
}
static void ed_dtype(json_t *h) {
    json_object_set_new(entry(h, "model.layers.1.mlp.up_proj.weight"), "dtype", json_string("I64"));
}
static void ed_size(json_t *h) {
    json_t *s = json_object_get(entry(h, "model.layers.1.mlp.up_proj.weight"), "shape");
    json_array_set_new(s, 0, json_integer(95));
}
static void ed_shape(json_t *h) {
    json_object_set_new(entry(h, "model.layers.0.input_layernorm.weight"), "shape",
                        json_pack("[i,i]", 2, 32));
}
static void ed_missing(json_t *h) {
    assert_int_equal(json_object_del(h, "model.layers.1.mlp.up_proj.weight"), 0);
}
static void ed_lm_head(json_t *h) {
    assert_int_equal(json_object_del(h, "lm_head.weight"), 0);
}
static void ed_overflow(json_t *h) {
    json_object_set_new(entry(h, "model.norm.weight"), "shape",
                        json_pack("[I,I,I]", (json_int_t)1 << 40, (json_int_t)1 << 40,
                                  (json_int_t)1 << 40));
}

static void test_hf_malformed(void **state) {
    (void)state;
    char p[4300];
    /* safetensors header */
    {
        char *d = hf_dir("hdr");
        snprintf(p, sizeof p, "%s/model.safetensors", d);
        size_t len;
        char *buf = tu_read_file(p, &len);
        uint64_t n = len; /* header length beyond the file */
        memcpy(buf, &n, 8);
        tu_write_file(p, buf, len);
        expect_status(d, AMPR_ERR_MODEL_TRUNCATED);
        n = (uint64_t)1 << 60;
        memcpy(buf, &n, 8);
        tu_write_file(p, buf, len);
        expect_status(d, AMPR_ERR_MODEL_FORMAT);
        memcpy(&n, "\x10\0\0\0\0\0\0\0", 8);
        memcpy(buf, &n, 8);
        tu_write_file(p, buf, len); /* header cut short: bad JSON */
        expect_status(d, AMPR_ERR_MODEL_FORMAT);
        tu_write_file(p, buf, 5);
        expect_status(d, AMPR_ERR_MODEL_TRUNCATED);
        free(buf);
        hf_done(d);
    }
    st_case(ed_offset_range, AMPR_ERR_MODEL_BOUNDS);
    st_case(ed_overlap, AMPR_ERR_MODEL_BOUNDS);
    st_case(ed_dtype, AMPR_ERR_MODEL_DTYPE);
    st_case(ed_size, AMPR_ERR_MODEL_SHAPE);
    st_case(ed_shape, AMPR_ERR_MODEL_SHAPE);
    st_case(ed_overflow, AMPR_ERR_MODEL_SHAPE);
    st_case(ed_missing, AMPR_ERR_MODEL_MISSING);
    st_case(ed_lm_head, AMPR_ERR_MODEL_MISSING);

    /* config.json */
    cfg_case("num_hidden_layers", json_integer(0), AMPR_ERR_MODEL_HPARAMS);
    cfg_case("num_attention_heads", json_integer(7), AMPR_ERR_MODEL_HPARAMS);
    cfg_case("num_key_value_heads", json_integer(3), AMPR_ERR_MODEL_HPARAMS);
    cfg_case("hidden_size", json_string("64"), AMPR_ERR_MODEL_HPARAMS);
    cfg_case("hidden_size", NULL, AMPR_ERR_MODEL_MISSING);
    cfg_case("rms_norm_eps", json_real(-1.0), AMPR_ERR_MODEL_HPARAMS);
    cfg_case("intermediate_size", json_integer(100), AMPR_ERR_MODEL_SHAPE);
    cfg_case("vocab_size", json_integer(200), AMPR_ERR_MODEL_SHAPE);
    cfg_case("rope_scaling", json_pack("{s:s, s:f}", "rope_type", "yarn", "factor", 4.0),
             AMPR_ERR_UNSUPPORTED);
    {
        char *d = hf_dir("arch");
        snprintf(p, sizeof p, "%s/config.json", d);
        edit_json_file(p, "architectures", json_pack("[s]", "GPT2LMHeadModel"));
        edit_json_file(p, "model_type", json_string("gpt2"));
        expect_status(d, AMPR_ERR_UNSUPPORTED);
        /* llama3 rope scaling is read */
        edit_json_file(p, "model_type", json_string("llama"));
        edit_json_file(p, "rope_scaling",
                       json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor",
                                 8.0, "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                                 "original_max_position_embeddings", 8192));
        ampr__model *m = load_ok(d);
        assert_true(m->hp.rope_llama3);
        assert_true(m->hp.rope_factor == 8.0f);
        assert_int_equal(m->hp.rope_orig_context, 8192);
        ampr__model_free(m);
        /* bad JSON */
        tu_write_file(p, "{\"hidden_size\": 64,", 19);
        expect_status(d, AMPR_ERR_MODEL_FORMAT);
        unlink(p);
        expect_status(d, AMPR_ERR_MODEL_MISSING);
        hf_done(d);
    }
    {
        char *d = hf_dir("files");
        snprintf(p, sizeof p, "%s/tokenizer.json", d);
        unlink(p);
        expect_status(d, AMPR_ERR_MODEL_MISSING);
        hf_done(d);
        d = hf_dir("files");
        snprintf(p, sizeof p, "%s/model.safetensors", d);
        unlink(p);
        expect_status(d, AMPR_ERR_MODEL_MISSING);
        /* an index pointing outside the directory */
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
        tu_write_file(p, "{\"weight_map\": {\"lm_head.weight\": \"../x.safetensors\"}}", 55);
        expect_status(d, AMPR_ERR_MODEL_FORMAT);
        hf_done(d);
    }
    {   /* NaN weight */
        char *d = hf_dir("nan");
        ampr__model *m = load_ok(d);
        snprintf(p, sizeof p, "%s/model.safetensors", d);
        size_t len;
        char *buf = tu_read_file(p, &len);
        char *hit = memmem(buf, len, m->layers[0].wv->data, 16);
        assert_non_null(hit);
        float inf = INFINITY;
        memcpy(hit + 8, &inf, 4);
        tu_write_file(p, buf, len);
        free(buf);
        ampr__model_free(m);
        expect_status(d, AMPR_ERR_MODEL_NONFINITE);
        hf_done(d);
    }
    expect_status("/nonexistent/model", AMPR_ERR_IO);
}

static void test_convert_malformed(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "models/stories260K/stories260K.bin");
    TU_SHARED_OR_SKIP(tok, "models/stories260K/tok512.bin");
    char *dir = tu_tmpdir("convbad");
    char p[4200], out[4200];
    snprintf(p, sizeof p, "%s/x.bin", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    size_t len;
    char *buf = tu_read_file(bin, &len);
    ampr__err err = {0};
    tu_write_file(p, buf, len - 100);
    assert_int_equal(ampr__convert_llama2c(p, tok, out, &err), AMPR_ERR_MODEL_TRUNCATED);
    int32_t zero = 0;
    memcpy(buf + 8, &zero, 4); /* n_layers 0 */
    tu_write_file(p, buf, len);
    ampr__err_clear(&err);
    assert_int_equal(ampr__convert_llama2c(p, tok, out, &err), AMPR_ERR_MODEL_HPARAMS);
    ampr__err_clear(&err);
    assert_int_equal(ampr__convert_llama2c(bin, p, out, &err), AMPR_ERR_MODEL_TRUNCATED);
    free(buf);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories_gguf),
        cmocka_unit_test(test_stories_convert),
        cmocka_unit_test(test_random_roundtrip),
        cmocka_unit_test(test_random_threads),
        cmocka_unit_test(test_half_nonfinite),
        cmocka_unit_test(test_gguf_malformed),
        cmocka_unit_test(test_hf_malformed),
        cmocka_unit_test(test_convert_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
