/*
 * test_bnb.c -- transformers + bitsandbytes 4-bit NF4 checkpoints: write one
 * from a float model, load it back (codes and absmax bit-exact against our
 * NF4 quantizer), NF4 tiers copied from it generate what the NF4 tier built
 * from the float checkpoint generates, other tiers build from its dequantized
 * weights, and malformed groups fail with clear statuses.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <sys/stat.h>
#include "ampr.h"
#include "engine.h"
#include "model/model.h"
#include "model/model_int.h"
#include "quant/quant.h"
#include "quant/quant_impl.h"
#include "testutil.h"

static const ampr__tensor *layer_tensor(const ampr__model *m, int l, int k) {
    const ampr__layer *L = &m->layers[l];
    const ampr__tensor *ts[7] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    return ts[k];
}

/* Every Linear of b (a bnb checkpoint) is NF4 with the codes/absmax our
 * quantizer makes from a's weights; everything else equals a. */
static void check_exact(const ampr__model *a, const ampr__model *b, int dq) {
    for (int l = 0; l < a->hp.n_layers; l++) {
        for (int k = 0; k < 7; k++) {
            const ampr__tensor *ta = layer_tensor(a, l, k), *tb = layer_tensor(b, l, k);
            assert_int_equal(tb->dtype, AMPR__DT_NF4);
            assert_int_equal(tb->ne[0], ta->ne[0]);
            assert_int_equal(tb->ne[1], ta->ne[1]);
            size_t n = (size_t)(ta->ne[0] * ta->ne[1]), nb = (n + 63) / 64;
            float *w = malloc(n * sizeof *w);
            for (int64_t r = 0; r < ta->ne[1]; r++) ampr__tensor_row_f32(ta, r, w + r * ta->ne[0]);
            ampr__qmat q = {0};
            ampr__err err = {0};
            assert_int_equal(ampr__quantize(ampr__qtraits_get(dq ? AMPR__Q_NF4_DQ : AMPR__Q_NF4), &q,
                                            w, ta->ne[1], ta->ne[0], NULL, &err),
                             AMPR_OK);
            assert_int_equal(tb->nbytes, q.data_bytes);
            assert_memory_equal(tb->data, q.data, q.data_bytes);
            for (size_t i = 0; i < nb; i++) {
                float x = ampr__nf4_block_absmax(&q, (int64_t)i);
                assert_memory_equal(&tb->absmax[i], &x, 4);
            }
            /* rows dequantize as the tier format does */
            const ampr__qtraits *qt = ampr__qtraits_get(q.type);
            float *r1 = malloc((size_t)ta->ne[0] * sizeof *r1), *r2 = malloc((size_t)ta->ne[0] * sizeof *r2);
            for (int64_t r = 0; r < ta->ne[1]; r++) {
                ampr__tensor_row_f32(tb, r, r1);
                qt->dequant_row(&q, r, r2);
                assert_memory_equal(r1, r2, (size_t)ta->ne[0] * 4);
            }
            free(r1);
            free(r2);
            ampr__qmat_free(&q);
            free(w);
        }
        assert_int_equal(b->layers[l].attn_norm->dtype, a->layers[l].attn_norm->dtype);
        assert_memory_equal(b->layers[l].attn_norm->data, a->layers[l].attn_norm->data,
                            a->layers[l].attn_norm->nbytes);
    }
    assert_memory_equal(b->tok_embd->data, a->tok_embd->data, a->tok_embd->nbytes);
    assert_memory_equal(b->output->data, a->output->data, a->output->nbytes);
}

static void roundtrip_random(int dq, int dim, int n_heads, int n_kv, int hidden) {
    char *dir = tu_tmpdir("bnbrand");
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(dst, sizeof dst, "%s/bnb", dir);
    ampr__hparams hp = {0};
    hp.dim = dim;
    hp.hidden_dim = hidden;
    hp.n_layers = 2;
    hp.n_heads = n_heads;
    hp.n_kv_heads = n_kv;
    hp.head_dim = dim / n_heads;
    hp.vocab_size = 320;
    hp.context_length = 64;
    hp.norm_eps = 1e-5f;
    hp.rope_theta = 10000.0f;
    ampr__err err = {0};
    assert_int_equal(ampr__model_write_random(src, "hf", &hp, AMPR__DT_F32, 2, 7, &err), AMPR_OK);
    ampr__model *a = NULL, *b = NULL;
    assert_int_equal(ampr__model_load(src, 1, &a, &err), AMPR_OK);
    assert_int_equal(mkdir(dst, 0755), 0);
    ampr_status st = ampr__model_write_bnb_nf4(a, src, dst, dq, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, AMPR_OK);
    st = ampr__model_load(dst, 1, &b, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, AMPR_OK);
    check_exact(a, b, dq);
    ampr__model_free(a);
    ampr__model_free(b);
    tu_rmtree(dir);
    free(dir);
}

static void test_random_roundtrip(void **state) {
    (void)state;
    roundtrip_random(0, 64, 4, 2, 128);
    roundtrip_random(1, 64, 4, 2, 128);
    /* K/V of 20 x 40 = 800 elements: not whole blocks (the tier requantizes) */
    roundtrip_random(0, 40, 4, 2, 72);
}

/* ---- stories260K -------------------------------------------------------------- */

static ampr_ctx *open_ctx(const char *path, const char *cfg) {
    ampr_ctx *c = NULL;
    ampr_status st = ampr_open(path, cfg, &c);
    if (st) fprintf(stderr, "open %s: %s\n", path, ampr_errmsg(c));
    assert_int_equal(st, AMPR_OK);
    return c;
}

static ampr_result *gen(ampr_ctx *c) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.temperature = 0;
    p.max_tokens = 40;
    p.ignore_eos = 1;
    ampr_result *r = NULL;
    assert_int_equal(ampr_generate(c, "Once upon a time", 16, &p, &r), AMPR_OK);
    assert_int_equal(r->n_tokens, 40);
    return r;
}

static void same_tokens(const char *a, const char *b, const char *cfg) {
    ampr_ctx *ca = open_ctx(a, cfg), *cb = open_ctx(b, cfg);
    ampr_result *ra = gen(ca), *rb = gen(cb);
    assert_memory_equal(ra->tokens, rb->tokens, 40 * sizeof(int32_t));
    ampr_result_free(ra);
    ampr_result_free(rb);
    ampr_close(ca);
    ampr_close(cb);
}

static void test_stories260k(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "models/stories260K/stories260K.bin");
    TU_SHARED_OR_SKIP(tok, "models/stories260K/tok512.bin");
    char *dir = tu_tmpdir("bnb260k");
    char hf[1024], q[1024], qdq[1024];
    snprintf(hf, sizeof hf, "%s/hf", dir);
    snprintf(q, sizeof q, "%s/nf4", dir);
    snprintf(qdq, sizeof qdq, "%s/nf4dq", dir);
    ampr__err err = {0};
    assert_int_equal(mkdir(hf, 0755), 0);
    assert_int_equal(mkdir(q, 0755), 0);
    assert_int_equal(mkdir(qdq, 0755), 0);
    assert_int_equal(ampr__convert_llama2c(bin, tok, hf, &err), AMPR_OK);
    ampr__model *a = NULL, *b = NULL;
    assert_int_equal(ampr__model_load(hf, 1, &a, &err), AMPR_OK);
    assert_int_equal(ampr__model_write_bnb_nf4(a, hf, q, 0, &err), AMPR_OK);
    assert_int_equal(ampr__model_write_bnb_nf4(a, hf, qdq, 1, &err), AMPR_OK);
    assert_int_equal(ampr__model_load(q, 1, &b, &err), AMPR_OK);
    check_exact(a, b, 0);
    ampr__model_free(b);
    assert_int_equal(ampr__model_load(qdq, 1, &b, &err), AMPR_OK);
    check_exact(a, b, 1);
    ampr__model_free(b);

    /* the NF4 tier copied from the checkpoint = the one built from floats */
    same_tokens(hf, q, "{\"tiers\": [\"nf4\"]}");
    same_tokens(hf, q, "{\"tiers\": [\"nf4\"], \"nf4\": {\"double_quant\": true}}");
    same_tokens(hf, qdq, "{\"tiers\": [\"nf4\"], \"nf4\": {\"double_quant\": true}}");

    /* the fp16 tier from the NF4 checkpoint holds the dequantized weights */
    assert_int_equal(ampr__model_load(q, 1, &b, &err), AMPR_OK);
    ampr_ctx *c = open_ctx(q, "{\"tiers\": [\"fp16\"]}");
    ampr__tier *t = ampr__ctx_tier(c, AMPR_TIER_FP16);
    assert_non_null(t);
    const ampr__layer *L = &b->layers[0];
    int64_t cols = L->wq->ne[0];
    float *x = malloc((size_t)cols * sizeof *x), *y = malloc((size_t)cols * sizeof *y);
    const ampr__tensor *parts[3] = {L->wq, L->wk, L->wv};
    int64_t row = 0;
    for (int i = 0; i < 3; i++)
        for (int64_t r = 0; r < parts[i]->ne[1]; r++, row++) {
            ampr__tensor_row_f32(parts[i], r, x);
            t->qt->dequant_row(&t->layers[0].wqkv, row, y);
            for (int64_t j = 0; j < cols; j++)
                assert_true(y[j] == ampr__fp16_to_f32(ampr__f32_to_fp16(x[j])));
        }
    free(x);
    free(y);
    ampr_close(c);
    ampr__model_free(b);
    ampr__model_free(a);
    tu_rmtree(dir);
    free(dir);
}

/* ---- malformed groups ---------------------------------------------------------- */

/* A safetensors file held in memory as (name, dtype, shape, bytes) entries. */
typedef struct st_ent {
    char name[128], dtype[8];
    int64_t shape[4];
    int rank;
    unsigned char *data;
    size_t len;
} st_ent;

static int st_read(const char *path, st_ent **out) {
    size_t len;
    char *buf = tu_read_file(path, &len);
    assert_non_null(buf);
    uint64_t hn;
    memcpy(&hn, buf, 8);
    json_t *h = json_loadb(buf + 8, hn, 0, NULL);
    assert_non_null(h);
    st_ent *e = calloc(json_object_size(h), sizeof *e);
    int n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(h, k, v) {
        if (!strcmp(k, "__metadata__")) continue;
        st_ent *x = &e[n++];
        snprintf(x->name, sizeof x->name, "%s", k);
        snprintf(x->dtype, sizeof x->dtype, "%s", json_string_value(json_object_get(v, "dtype")));
        json_t *s = json_object_get(v, "shape");
        x->rank = (int)json_array_size(s);
        for (int i = 0; i < x->rank; i++) x->shape[i] = json_integer_value(json_array_get(s, (size_t)i));
        json_t *o = json_object_get(v, "data_offsets");
        size_t b = (size_t)json_integer_value(json_array_get(o, 0));
        x->len = (size_t)json_integer_value(json_array_get(o, 1)) - b;
        x->data = malloc(x->len + 1);
        memcpy(x->data, buf + 8 + hn + b, x->len);
    }
    json_decref(h);
    free(buf);
    *out = e;
    return n;
}

static void st_write(const char *path, st_ent *e, int n) {
    json_t *h = json_object();
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!e[i].name[0]) continue;
        json_t *s = json_array();
        for (int d = 0; d < e[i].rank; d++) json_array_append_new(s, json_integer(e[i].shape[d]));
        json_object_set_new(h, e[i].name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", e[i].dtype, "shape", s,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + e[i].len)));
        off += e[i].len;
    }
    char *txt = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    FILE *f = fopen(path, "wb");
    uint64_t hn = strlen(txt);
    fwrite(&hn, 8, 1, f);
    fwrite(txt, 1, hn, f);
    for (int i = 0; i < n; i++)
        if (e[i].name[0]) fwrite(e[i].data, 1, e[i].len, f);
    fclose(f);
    free(txt);
}

static st_ent *find_ent(st_ent *e, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(e[i].name, name)) return &e[i];
    fail_msg("no %s", name);
    return NULL;
}

static void set_blob(st_ent *x, const char *s) {
    free(x->data);
    x->len = strlen(s);
    x->data = (unsigned char *)strdup(s);
    x->shape[0] = (int64_t)x->len;
}

#define W "model.layers.1.self_attn.k_proj.weight"

static void bad_case(const char *good, const char *work, int which, ampr_status want) {
    char p[1200];
    snprintf(p, sizeof p, "%s/model.safetensors", good);
    st_ent *e;
    int n = st_read(p, &e);
    st_ent *blob = find_ent(e, n, W ".quant_state.bitsandbytes__nf4");
    switch (which) {
    case 0: /* blocksize 128 */
        set_blob(blob, "{\"quant_type\": \"nf4\", \"blocksize\": 128, \"dtype\": \"float32\", \"shape\": [32, 64]}");
        break;
    case 1: find_ent(e, n, W ".absmax")->name[0] = 0; break; /* missing absmax */
    case 2: set_blob(blob, "{\"quant_type\": \"nf4\", \"blocksize\": 64,"); break; /* bad JSON */
    case 3: { /* truncated codes */
        st_ent *w = find_ent(e, n, W);
        w->len -= 1;
        w->shape[0] -= 1;
        break;
    }
    case 4: /* fp4 */
        set_blob(blob, "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [32, 64]}");
        break;
    case 5: { /* a wrong code table */
        st_ent *qm = find_ent(e, n, W ".quant_map");
        float v = 0.5f;
        memcpy(qm->data + 4, &v, 4);
        break;
    }
    case 6: /* absmax of the wrong length */
        find_ent(e, n, W ".absmax")->len -= 4;
        find_ent(e, n, W ".absmax")->shape[0] -= 1;
        break;
    case 7: /* shape disagrees with the codes */
        set_blob(blob, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [33, 64]}");
        break;
    case 8: /* a companion without its weight */
        find_ent(e, n, W)->name[0] = 0;
        break;
    case 9: /* a stray U8 tensor */
    {
        st_ent *x = find_ent(e, n, "model.layers.1.input_layernorm.weight");
        if (x) {
            snprintf(x->dtype, sizeof x->dtype, "%s", "U8");
            x->shape[0] = (int64_t)x->len;
        }
    }
        break;
    }
    char q[1200];
    snprintf(q, sizeof q, "%s/model.safetensors", work);
    st_write(q, e, n);
    for (int i = 0; i < n; i++) free(e[i].data);
    free(e);
    ampr__model *m = NULL;
    ampr__err err = {0};
    ampr_status st = ampr__model_load(work, 1, &m, &err);
    if (st != want) fprintf(stderr, "case %d: got %s: %s\n", which, ampr_status_name(st), err.msg);
    assert_int_equal(st, want);
    assert_null(m);
    assert_true(err.msg[0] != 0);
}

static void test_malformed(void **state) {
    (void)state;
    char *dir = tu_tmpdir("bnbbad");
    char src[512], good[512], work[512];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(good, sizeof good, "%s/good", dir);
    snprintf(work, sizeof work, "%s/work", dir);
    ampr__hparams hp = {0};
    hp.dim = 64;
    hp.hidden_dim = 128;
    hp.n_layers = 2;
    hp.n_heads = 4;
    hp.n_kv_heads = 2;
    hp.head_dim = 16;
    hp.vocab_size = 320;
    hp.context_length = 64;
    hp.norm_eps = 1e-5f;
    hp.rope_theta = 10000.0f;
    ampr__err err = {0};
    assert_int_equal(ampr__model_write_random(src, "hf", &hp, AMPR__DT_F32, 1, 3, &err), AMPR_OK);
    ampr__model *a = NULL;
    assert_int_equal(ampr__model_load(src, 1, &a, &err), AMPR_OK);
    assert_int_equal(mkdir(good, 0755), 0);
    assert_int_equal(ampr__model_write_bnb_nf4(a, src, good, 0, &err), AMPR_OK);
    ampr__model_free(a);
    assert_int_equal(ampr__model_write_bnb_nf4(NULL, src, good, 0, &err), AMPR_ERR_INVALID_ARG);
    /* work = good with a rewritten model.safetensors */
    assert_int_equal(mkdir(work, 0755), 0);
    const char *files[] = {"config.json", "generation_config.json", "tokenizer.json",
                           "tokenizer_config.json"};
    for (int i = 0; i < 4; i++) {
        char p[1200];
        size_t len;
        snprintf(p, sizeof p, "%s/%s", good, files[i]);
        char *b = tu_read_file(p, &len);
        assert_non_null(b);
        snprintf(p, sizeof p, "%s/%s", work, files[i]);
        assert_int_equal(tu_write_file(p, b, len), 0);
        free(b);
    }
    const ampr_status want[] = {AMPR_ERR_UNSUPPORTED, AMPR_ERR_MODEL_MISSING,
                                AMPR_ERR_MODEL_FORMAT, AMPR_ERR_MODEL_SHAPE,
                                AMPR_ERR_UNSUPPORTED, AMPR_ERR_MODEL_FORMAT,
                                AMPR_ERR_MODEL_SHAPE, AMPR_ERR_MODEL_SHAPE,
                                AMPR_ERR_MODEL_MISSING, AMPR_ERR_MODEL_DTYPE};
    for (int i = 0; i < 10; i++) bad_case(good, work, i, want[i]);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_roundtrip),
        cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
