/*
 * convert.c -- llama2.c checkpoint (+ tokenizer.bin) -> Hugging Face directory.
 *
 * The v0 ("legacy") .bin is 7 int32 (dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, seq_len; vocab_size < 0 means a separate
 * classifier) followed by fp32 tensors:
 *   token_embedding[vocab][dim], rms_att[L][dim], wq[L][dim][dim],
 *   wk[L][kv_dim][dim], wv[L][kv_dim][dim], wo[L][dim][dim], rms_ffn[L][dim],
 *   w1[L][hidden][dim], w2[L][dim][hidden], w3[L][hidden][dim], rms_final[dim],
 *   freq_cis_real[seq][head_size/2], freq_cis_imag[seq][head_size/2],
 *   [wcls[vocab][dim]].
 * llama2.c rotates interleaved pairs; transformers rotates halves, so wq and
 * wk rows are permuted on the way out (ampr__permute_qk), exactly as
 * transformers' convert_llama_weights_to_hf.py does.
 *
 * tokenizer.bin: int32 max_token_length, then per token f32 score, int32
 * length, bytes (a stored ' ' is U+2581).
 */
#include "model_int.h"

#include <errno.h>
#include <sys/stat.h>

typedef struct l2c {
    ampr__hparams hp;
    const float *t[AMPR__TK_COUNT]; /* first layer's copy of each tensor kind */
    uint64_t layer_stride[AMPR__TK_COUNT]; /* floats between layers */
} l2c;

static ampr_status l2c_parse(const ampr__map *mp, l2c *c, ampr__err *err) {
    int32_t h[7];
    memcpy(h, mp->base, sizeof h);
    ampr__hparams *hp = &c->hp;
    memset(c, 0, sizeof *c);
    for (int i = 0; i < 7; i++)
        if (h[i] == 0 || (i != 5 && h[i] < 0) || h[i] == INT32_MIN)
            return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "llama2.c header field %d is %d", i,
                              h[i]);
    hp->dim = h[0], hp->hidden_dim = h[1], hp->n_layers = h[2], hp->n_heads = h[3];
    hp->n_kv_heads = h[4], hp->vocab_size = h[5] < 0 ? -h[5] : h[5], hp->context_length = h[6];
    hp->tied_embeddings = h[5] > 0;
    if (hp->dim % hp->n_heads != 0)
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "n_heads %d does not divide dim %d",
                          hp->n_heads, hp->dim);
    hp->head_dim = hp->dim / hp->n_heads;
    hp->norm_eps = 1e-5f;
    hp->rope_theta = 10000.0f;
    hp->rope_layout = AMPR__ROPE_INTERLEAVED;
    AMPR__TRY(ampr__hparams_check(hp, err));

    uint64_t D = (uint64_t)hp->dim, L = (uint64_t)hp->n_layers, H = (uint64_t)hp->hidden_dim;
    uint64_t KV = (uint64_t)hp->n_kv_heads * (uint64_t)hp->head_dim, V = (uint64_t)hp->vocab_size;
    /* Sizes (in floats) of each block, in file order; hparams_check bounds
     * every factor, so the products cannot overflow 64 bits. */
    struct { int kind; uint64_t per_layer; int layered; } blocks[] = {
        {AMPR__TK_TOK_EMBD, V * D, 0},   {AMPR__TK_ATTN_NORM, D, 1},
        {AMPR__TK_ATTN_Q, D * D, 1},     {AMPR__TK_ATTN_K, KV * D, 1},
        {AMPR__TK_ATTN_V, KV * D, 1},    {AMPR__TK_ATTN_OUT, D * D, 1},
        {AMPR__TK_FFN_NORM, D, 1},       {AMPR__TK_FFN_GATE, H * D, 1},
        {AMPR__TK_FFN_DOWN, D * H, 1},   {AMPR__TK_FFN_UP, H * D, 1},
        {AMPR__TK_OUTPUT_NORM, D, 0},    {-1, (uint64_t)hp->context_length * hp->head_dim, 0},
        {AMPR__TK_OUTPUT, hp->tied_embeddings ? 0 : V * D, 0}};
    uint64_t off = 7, avail = (mp->size - 28) / 4 + 7;
    for (size_t i = 0; i < AMPR__ARRAY_LEN(blocks); i++) {
        uint64_t n = blocks[i].per_layer * (blocks[i].layered ? L : 1);
        if (n > avail - off)
            return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                              "llama2.c checkpoint of %zu bytes is too short for its header",
                              mp->size);
        if (blocks[i].kind >= 0) {
            c->t[blocks[i].kind] = (const float *)mp->base + off;
            c->layer_stride[blocks[i].kind] = blocks[i].per_layer;
        }
        off += n;
    }
    if (hp->tied_embeddings) c->t[AMPR__TK_OUTPUT] = c->t[AMPR__TK_TOK_EMBD];
    return AMPR_OK;
}

static ampr_status l2c_fill(void *ctx, const ampr__wtensor *t, FILE *f, ampr__err *err) {
    const l2c *c = ctx;
    const float *src = c->t[t->kind] + c->layer_stride[t->kind] * (uint64_t)t->layer;
    size_t n = (size_t)(t->ne[0] * t->ne[1]);
    if (t->kind != AMPR__TK_ATTN_Q && t->kind != AMPR__TK_ATTN_K)
        return ampr__write_f32_as(f, src, n, t->dtype, err);
    float *tmp = ampr__alloc_array(n, sizeof *tmp, err);
    if (!tmp) return AMPR_ERR_NOMEM;
    int heads = t->kind == AMPR__TK_ATTN_Q ? c->hp.n_heads : c->hp.n_kv_heads;
    ampr__permute_qk(src, tmp, heads, c->hp.head_dim, t->ne[0]);
    ampr_status st = ampr__write_f32_as(f, tmp, n, t->dtype, err);
    ampr__free(tmp);
    return st;
}

/* Pieces of a llama2.c tokenizer.bin, with ' ' -> U+2581 and the special
 * tokens renamed to <unk>, <s>, </s>. All arrays ampr__malloc'd. */
typedef struct l2c_vocab {
    ampr__spm_vocab v;
    char **pieces;
    uint32_t *lens;
    float *scores;
    int32_t *types;
    int32_t max_len;
} l2c_vocab;

static void vocab_free(l2c_vocab *tv) {
    for (int32_t i = 0; tv->pieces && i < tv->v.n; i++) ampr__free(tv->pieces[i]);
    ampr__free(tv->pieces);
    ampr__free(tv->lens);
    ampr__free(tv->scores);
    ampr__free(tv->types);
}

static int is_byte_piece(const char *s, uint32_t n) {
    static const char hex[] = "0123456789ABCDEF";
    return n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' && strchr(hex, s[3]) && s[3] &&
           strchr(hex, s[4]) && s[4];
}

static ampr_status vocab_read(const ampr__map *mp, int32_t n, l2c_vocab *tv, ampr__err *err) {
    memset(tv, 0, sizeof *tv);
    tv->pieces = ampr__alloc_array((size_t)n, sizeof *tv->pieces, err);
    tv->lens = ampr__alloc_array((size_t)n, sizeof *tv->lens, err);
    tv->scores = ampr__alloc_array((size_t)n, sizeof *tv->scores, err);
    tv->types = ampr__alloc_array((size_t)n, sizeof *tv->types, err);
    tv->v.n = n;
    if (!tv->pieces || !tv->lens || !tv->scores || !tv->types) return AMPR_ERR_NOMEM;
    size_t pos = 4;
    memcpy(&tv->max_len, mp->base, 4);
    static const char *const special[3] = {"<unk>", "<s>", "</s>"};
    for (int32_t i = 0; i < n; i++) {
        int32_t len;
        if (mp->size - pos < 8)
            return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED, "tokenizer.bin ends at token %d", i);
        memcpy(&tv->scores[i], mp->base + pos, 4);
        memcpy(&len, mp->base + pos + 4, 4);
        pos += 8;
        if (len < 0 || (size_t)len > mp->size - pos)
            return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                              "tokenizer.bin: token %d claims %d bytes", i, len);
        const char *s = (const char *)mp->base + pos;
        pos += (size_t)len;
        if (i < 3) {
            s = special[i];
            len = (int32_t)strlen(s);
        }
        size_t spaces = 0;
        for (int32_t k = 0; k < len; k++) spaces += s[k] == ' ';
        char *d = ampr__malloc((size_t)len + 2 * spaces + 1);
        if (!d) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        tv->pieces[i] = d;
        size_t o = 0;
        for (int32_t k = 0; k < len; k++) {
            if (s[k] == ' ') {
                memcpy(d + o, "\xe2\x96\x81", 3);
                o += 3;
            } else {
                d[o++] = s[k];
            }
        }
        d[o] = '\0';
        tv->lens[i] = (uint32_t)o;
        tv->types[i] = i == 0 ? AMPR__TT_UNKNOWN
                       : i < 3 ? AMPR__TT_CONTROL
                       : is_byte_piece(d, (uint32_t)o) ? AMPR__TT_BYTE
                                                       : AMPR__TT_NORMAL;
    }
    tv->v.pieces = (const char *const *)tv->pieces;
    tv->v.lens = tv->lens;
    tv->v.scores = tv->scores;
    tv->v.types = tv->types;
    return AMPR_OK;
}

static ampr_status convert(const ampr__map *bin, const ampr__map *tok, const char *out_dir,
                           ampr__err *err) {
    l2c c;
    AMPR__TRY(l2c_parse(bin, &c, err));
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        return ampr__fail(err, AMPR_ERR_IO, "cannot create %s: %s", out_dir, strerror(errno));
    l2c_vocab tv;
    ampr_status st = vocab_read(tok, c.hp.vocab_size, &tv, err);
    if (st == AMPR_OK) st = ampr__hf_write_tokenizer(out_dir, &tv.v, c.hp.context_length, err);
    vocab_free(&tv);
    AMPR__TRY(st);
    AMPR__TRY(ampr__hf_write_config(out_dir, &c.hp, "float32", err));
    size_t cap = 9 * (size_t)c.hp.n_layers + 4;
    ampr__wtensor *ts = ampr__alloc_array(cap, sizeof *ts, err);
    if (!ts) return AMPR_ERR_NOMEM;
    size_t n = ampr__model_plan(&c.hp, AMPR__DT_F32, 1, ts);
    char path[4096];
    st = ampr__path_join(path, sizeof path, out_dir, "model.safetensors", err);
    if (st == AMPR_OK) st = ampr__st_write(path, ts, n, l2c_fill, &c, err);
    ampr__free(ts);
    return st;
}

ampr_status ampr__convert_llama2c(const char *bin_path, const char *tok_path,
                                  const char *out_dir, ampr__err *err) {
    ampr__map bin = {0}, tok = {0};
    ampr_status st = ampr__map_file(bin_path, 28, &bin, err);
    if (st == AMPR_OK) st = ampr__map_file(tok_path, 4, &tok, err);
    if (st == AMPR_OK) st = convert(&bin, &tok, out_dir, err);
    ampr__unmap(&bin);
    ampr__unmap(&tok);
    return st;
}
