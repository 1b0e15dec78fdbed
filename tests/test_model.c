/*
 * test_model.c -- the model loaders: the real stories260K GGUF against its
 * llama2.c .bin, the llama2.c -> Hugging Face converter, random models in
 * both formats, and malformed files, each failing with its specific status.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories_gguf),
        cmocka_unit_test(test_stories_convert),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
