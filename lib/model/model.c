/*
 * model.c -- the model object every loader fills: mappings, the tensor
 * table, the validation pass shared by the GGUF and Hugging Face loaders
 * (hyper-parameters, shapes, overlaps, finiteness), tensor names in both
 * conventions, and format detection in ampr__model_load().
 *
 * A loader maps its files, appends tensors whose bytes it has checked to lie
 * inside a mapping, sets m->hp, builds m->tok and calls ampr__model_finish();
 * on any failure it calls ampr__model_free() on the half-built model.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "model_int.h"
#include "../quant/quant.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char *ampr__dtype_name(ampr__dtype t) {
    switch (t) {
    case AMPR__DT_F32: return "F32";
    case AMPR__DT_F16: return "F16";
    case AMPR__DT_BF16: return "BF16";
    case AMPR__DT_Q8_0: return "Q8_0";
    case AMPR__DT_NF4: return "NF4";
    case AMPR__DT_U8: return "U8";
    }
    return "?";
}

/* ---- reading tensors ------------------------------------------------------ */

static float q8_block_scale(const uint8_t *b) {
    uint16_t h;
    memcpy(&h, b, 2);
    return ampr__fp16_to_f32(h);
}

void ampr__tensor_row_f32(const ampr__tensor *t, int64_t r, float *out) {
    int64_t n = t->ne[0];
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case AMPR__DT_F32:
        memcpy(out, p + (size_t)r * (size_t)n * 4, (size_t)n * 4);
        break;
    case AMPR__DT_F16:
        ampr__f16_to_f32_n(p + (size_t)r * (size_t)n * 2, out, (size_t)n);
        break;
    case AMPR__DT_BF16: {
        const uint8_t *row = p + (size_t)r * (size_t)n * 2;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, row + 2 * i, 2);
            out[i] = ampr__bf16_to_f32(h);
        }
        break;
    }
    case AMPR__DT_U8:
        memset(out, 0, (size_t)n * sizeof *out); /* never in a finished model */
        break;
    case AMPR__DT_NF4: {
        /* flattened elements [r*n, r*n + n): blocks and nibbles follow the
         * flat index (a row may start mid-block or on a low nibble) */
        int64_t e = r * n, e1 = e + n;
        while (e < e1) {
            int64_t b = e / 64, be = AMPR__MIN(e1, (b + 1) * 64);
            float a = t->absmax[b];
            for (; e < be; e++) {
                uint8_t byte = p[e / 2];
                *out++ = ampr__nf4_code[(e & 1) ? byte & 15 : byte >> 4] * a;
            }
        }
        break;
    }
    case AMPR__DT_Q8_0: {
        const uint8_t *row = p + (size_t)r * (size_t)(n / 32) * 34;
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t *blk = row + b * 34;
            float d = q8_block_scale(blk);
            for (int i = 0; i < 32; i++) out[b * 32 + i] = d * (float)(int8_t)blk[2 + i];
        }
        break;
    }
    }
}

/* ---- construction ----------------------------------------------------------- */

ampr_status ampr__model_new(const char *format, ampr__model **out, ampr__err *err) {
    *out = NULL;
    ampr__model *m = ampr__calloc(1, sizeof *m);
    ampr__model_priv *p = ampr__calloc(1, sizeof *p);
    if (!m || !p) {
        ampr__free(m);
        ampr__free(p);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory creating a model");
    }
    snprintf(m->format, sizeof m->format, "%s", format);
    m->priv = p;
    *out = m;
    return AMPR_OK;
}

ampr_status ampr__map_file(const char *path, size_t min_size, ampr__map *out, ampr__err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ampr__fail(err, AMPR_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ampr__fail(err, AMPR_ERR_IO, "%s is not a regular file", path);
    }
    if ((uint64_t)st.st_size < min_size || st.st_size == 0) {
        close(fd);
        return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED, "%s: file too short (%lld bytes)", path,
                          (long long)st.st_size);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return ampr__fail(err, AMPR_ERR_IO, "%s: too large to map", path);
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (base == MAP_FAILED)
        return ampr__fail(err, AMPR_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    out->base = base;
    out->size = (size_t)st.st_size;
    return AMPR_OK;
}

void ampr__unmap(ampr__map *m) {
    if (m->base) munmap((void *)m->base, m->size);
    m->base = NULL;
    m->size = 0;
}

ampr_status ampr__model_map(ampr__model *m, const char *path, size_t min_size,
                            ampr__map *out, ampr__err *err) {
    ampr__model_priv *p = m->priv;
    if (p->n_maps == p->cap_maps) {
        int cap = p->cap_maps ? 2 * p->cap_maps : 4;
        ampr__map *nm = ampr__realloc(p->maps, (size_t)cap * sizeof *nm);
        if (!nm) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        p->maps = nm;
        p->cap_maps = cap;
    }
    AMPR__TRY(ampr__map_file(path, min_size, &p->maps[p->n_maps], err));
    *out = p->maps[p->n_maps++];
    return AMPR_OK;
}

ampr_status ampr__model_own(ampr__model *m, void *ptr, ampr__err *err) {
    ampr__model_priv *p = m->priv;
    if (p->n_owned == p->cap_owned) {
        size_t cap = p->cap_owned ? 2 * p->cap_owned : 16;
        void **no = ampr__realloc(p->owned, cap * sizeof *no);
        if (!no) {
            ampr__free(ptr);
            return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        }
        p->owned = no;
        p->cap_owned = cap;
    }
    p->owned[p->n_owned++] = ptr;
    return AMPR_OK;
}

ampr_status ampr__model_add_tensor(ampr__model *m, const char *name, size_t name_len,
                                   ampr__tensor **out, ampr__err *err) {
    ampr__model_priv *p = m->priv;
    if (p->n_tensors == p->cap_tensors) {
        size_t cap = p->cap_tensors ? 2 * p->cap_tensors : 64;
        ampr__tensor *nt = ampr__realloc(p->tensors, cap * sizeof *nt);
        if (!nt) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        p->tensors = nt;
        p->cap_tensors = cap;
    }
    char *nm = ampr__strndup(name, name_len);
    if (!nm) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    ampr__tensor *t = &p->tensors[p->n_tensors++];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->n_dims = 1;
    for (int i = 0; i < 4; i++) t->ne[i] = 1;
    *out = t;
    return AMPR_OK;
}

ampr_status ampr__tensor_size(const char *name, int n_dims, const int64_t *ne, ampr__dtype dt,
                              uint64_t *nbytes, ampr__err *err) {
    uint64_t n = 1;
    for (int i = 0; i < n_dims; i++) {
        if (ne[i] <= 0)
            return ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "tensor %s: dimension %d is %lld", name,
                              i, (long long)ne[i]);
        if (!ampr__mul_ok(n, (uint64_t)ne[i], &n) || n > ((uint64_t)1 << 56))
            return ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "tensor %s: element count overflows",
                              name);
    }
    switch (dt) {
    case AMPR__DT_F32: *nbytes = n * 4; break;
    case AMPR__DT_F16:
    case AMPR__DT_BF16: *nbytes = n * 2; break;
    case AMPR__DT_U8: *nbytes = n; break;
    case AMPR__DT_NF4: *nbytes = (n + 1) / 2; break;
    case AMPR__DT_Q8_0:
        if (ne[0] % 32 != 0)
            return ampr__fail(err, AMPR_ERR_MODEL_SHAPE,
                              "tensor %s: Q8_0 row of %lld is not a multiple of 32", name,
                              (long long)ne[0]);
        *nbytes = n / 32 * 34;
        break;
    default:
        return ampr__fail(err, AMPR_ERR_MODEL_DTYPE, "tensor %s: unknown dtype", name);
    }
    return AMPR_OK;
}

/* ---- validation ------------------------------------------------------------- */

ampr_status ampr__hparams_check(const ampr__hparams *hp, ampr__err *err) {
#define HP_RANGE(field, lo, hi)                                                            \
    if (hp->field < (lo) || hp->field > (hi))                                              \
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, #field " = %lld is outside [%lld, %lld]", \
                          (long long)hp->field, (long long)(lo), (long long)(hi));
    HP_RANGE(dim, 1, 1 << 16)
    HP_RANGE(hidden_dim, 1, 1 << 20)
    HP_RANGE(n_layers, 1, 1024)
    HP_RANGE(n_heads, 1, 1024)
    HP_RANGE(n_kv_heads, 1, hp->n_heads)
    HP_RANGE(head_dim, 2, 4096)
    HP_RANGE(vocab_size, 1, 1 << 24)
    HP_RANGE(context_length, 1, 1 << 24)
#undef HP_RANGE
    if (hp->n_heads % hp->n_kv_heads != 0)
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS,
                          "n_kv_heads %d does not divide n_heads %d", hp->n_kv_heads, hp->n_heads);
    if (hp->head_dim % 2 != 0)
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "head_dim %d is odd", hp->head_dim);
    if ((int64_t)hp->n_heads * hp->head_dim > (1 << 20))
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "n_heads * head_dim is too large");
    if (!(hp->norm_eps > 0.0f && hp->norm_eps < 1.0f))
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "rms norm epsilon %g is not in (0, 1)",
                          (double)hp->norm_eps);
    if (!(hp->rope_theta > 0.0f) || !isfinite(hp->rope_theta))
        return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "rope theta %g is not positive",
                          (double)hp->rope_theta);
    if (hp->rope_llama3) {
        if (!(hp->rope_factor >= 1.0f && isfinite(hp->rope_factor)) ||
            !(hp->rope_low_freq_factor > 0.0f && isfinite(hp->rope_low_freq_factor)) ||
            !(hp->rope_high_freq_factor > hp->rope_low_freq_factor &&
              isfinite(hp->rope_high_freq_factor)) ||
            hp->rope_orig_context < 1)
            return ampr__fail(err, AMPR_ERR_MODEL_HPARAMS, "bad llama3 rope_scaling values");
    }
    return AMPR_OK;
}

static int cmp_by_name(const void *a, const void *b) {
    const ampr__tensor *x = *(const ampr__tensor *const *)a, *y = *(const ampr__tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_by_addr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)(*(const ampr__tensor *const *)a)->data;
    uintptr_t y = (uintptr_t)(*(const ampr__tensor *const *)b)->data;
    return x < y ? -1 : x > y;
}

const ampr__tensor *ampr__model_find(const ampr__model *m, const char *name) {
    const ampr__model_priv *p = m->priv;
    size_t lo = 0, hi = p->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(p->by_name[mid]->name, name);
        if (c == 0) return p->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* Find tensor kind of layer and check it is [rows][cols] (rows 0: 1-D [cols]). */
static ampr_status bind(ampr__model *m, int kind, int layer, int64_t rows, int64_t cols,
                        const ampr__tensor **out, ampr__err *err) {
    char name[AMPR__NAME_MAX];
    ampr__tensor_name(kind, layer, 0, name, sizeof name);
    const ampr__tensor *t = ampr__model_find(m, name);
    if (!t) return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "tensor %s is missing", name);
    /* Trailing dimensions of 1 are allowed (a [dim] norm stored as [dim, 1]). */
    int extra = 0;
    for (int d = rows ? 2 : 1; d < 4; d++) extra |= t->ne[d] != 1;
    if (extra || t->n_dims < (rows ? 2 : 1) || t->ne[0] != cols || (rows && t->ne[1] != rows))
        return ampr__fail(err, AMPR_ERR_MODEL_SHAPE,
                          "tensor %s has shape [%lld, %lld] (%d dims), expected [%lld, %lld]",
                          name, (long long)t->ne[0], (long long)t->ne[1], t->n_dims,
                          (long long)cols, (long long)(rows ? rows : 1));
    *out = t;
    return AMPR_OK;
}

/* 1 if no 16-bit float at p, p + stride, ... (n bytes) has an all-ones
 * exponent (exp_mask): fp16 and bf16 differ only in that mask. */
static int halves_finite(const uint8_t *p, uint64_t n, uint64_t stride, uint16_t exp_mask) {
    uint64_t i = 0;
    if (stride == 2) {
        /* Four halves per 64-bit word: lane h of v = (u & m) ^ m is zero
         * exactly when half h is inf/NaN, and (v - 1) & ~v & 0x8000 flags a
         * zero lane (v < 0x8000 in every lane, so a borrow only passes on from
         * a lane that is itself zero). A 4 KiB chunk at a time, branch-free
         * inside, so the compiler can vectorize it: ~3x the one-half loop. */
        const uint64_t m = exp_mask * 0x0001000100010001ull;
        const uint64_t one = 0x0001000100010001ull, top = 0x8000800080008000ull;
        for (; i + 4096 <= n; i += 4096) {
            uint64_t bad = 0;
            for (uint64_t j = 0; j < 4096; j += 8) {
                uint64_t u;
                memcpy(&u, p + i + j, 8);
                uint64_t v = (u & m) ^ m;
                bad |= (v - one) & ~v & top;
            }
            if (bad) return 0;
        }
    }
    for (; i + 2 <= n; i += stride) {
        uint16_t u;
        memcpy(&u, p + i, 2);
        if ((u & exp_mask) == exp_mask) return 0;
    }
    return 1;
}

static int tensor_finite(const ampr__tensor *t) {
    const uint8_t *p = t->data;
    uint64_t n = t->nbytes;
    switch (t->dtype) {
    case AMPR__DT_F32:
        for (uint64_t i = 0; i < n; i += 4) {
            uint32_t u;
            memcpy(&u, p + i, 4);
            if ((u & 0x7f800000u) == 0x7f800000u) return 0;
        }
        return 1;
    case AMPR__DT_F16: return halves_finite(p, n, 2, 0x7c00u);
    case AMPR__DT_BF16: return halves_finite(p, n, 2, 0x7f80u);
    case AMPR__DT_Q8_0: return halves_finite(p, n, 34, 0x7c00u); /* each block's fp16 scale */
    case AMPR__DT_NF4: {
        uint64_t ne = (uint64_t)(t->ne[0] * t->ne[1]), nb = (ne + 63) / 64;
        for (uint64_t b = 0; b < nb; b++)
            if (!isfinite(t->absmax[b])) return 0;
        return 1;
    }
    case AMPR__DT_U8: return 1;
    }
    return 0;
}

ampr_status ampr__model_finish(ampr__model *m, int check_finite, ampr__err *err) {
    ampr__model_priv *p = m->priv;
    ampr__hparams *hp = &m->hp;
    size_t n = p->n_tensors;
    p->by_name = ampr__alloc_array(n ? n : 1, sizeof *p->by_name, err);
    const ampr__tensor **by_addr = ampr__alloc_array(n ? n : 1, sizeof *by_addr, err);
    if (!p->by_name || !by_addr) {
        ampr__free(by_addr);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) p->by_name[i] = by_addr[i] = &p->tensors[i];
    qsort(p->by_name, n, sizeof *p->by_name, cmp_by_name);
    qsort(by_addr, n, sizeof *by_addr, cmp_by_addr);
    ampr_status st = AMPR_OK;
    for (size_t i = 1; i < n && st == AMPR_OK; i++) {
        if (!strcmp(p->by_name[i - 1]->name, p->by_name[i]->name))
            st = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "tensor %s appears twice",
                            p->by_name[i]->name);
        const ampr__tensor *a = by_addr[i - 1], *b = by_addr[i];
        if (st == AMPR_OK && (uintptr_t)a->data + a->nbytes > (uintptr_t)b->data)
            st = ampr__fail(err, AMPR_ERR_MODEL_BOUNDS, "tensors %s and %s overlap", a->name,
                            b->name);
    }
    ampr__free(by_addr);
    AMPR__TRY(st);
    AMPR__TRY(ampr__hparams_check(hp, err));

    int64_t dim = hp->dim, q_dim = (int64_t)hp->n_heads * hp->head_dim;
    int64_t kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim, hid = hp->hidden_dim;
    AMPR__TRY(bind(m, AMPR__TK_TOK_EMBD, 0, hp->vocab_size, dim, &m->tok_embd, err));
    AMPR__TRY(bind(m, AMPR__TK_OUTPUT_NORM, 0, 0, dim, &m->output_norm, err));
    if (hp->tied_embeddings) {
        m->output = m->tok_embd;
    } else {
        AMPR__TRY(bind(m, AMPR__TK_OUTPUT, 0, hp->vocab_size, dim, &m->output, err));
    }
    m->layers = ampr__alloc_array((size_t)hp->n_layers, sizeof *m->layers, err);
    if (!m->layers) return AMPR_ERR_NOMEM;
    for (int l = 0; l < hp->n_layers; l++) {
        ampr__layer *L = &m->layers[l];
        AMPR__TRY(bind(m, AMPR__TK_ATTN_NORM, l, 0, dim, &L->attn_norm, err));
        AMPR__TRY(bind(m, AMPR__TK_ATTN_Q, l, q_dim, dim, &L->wq, err));
        AMPR__TRY(bind(m, AMPR__TK_ATTN_K, l, kv_dim, dim, &L->wk, err));
        AMPR__TRY(bind(m, AMPR__TK_ATTN_V, l, kv_dim, dim, &L->wv, err));
        AMPR__TRY(bind(m, AMPR__TK_ATTN_OUT, l, dim, q_dim, &L->wo, err));
        AMPR__TRY(bind(m, AMPR__TK_FFN_NORM, l, 0, dim, &L->ffn_norm, err));
        AMPR__TRY(bind(m, AMPR__TK_FFN_GATE, l, hid, dim, &L->w_gate, err));
        AMPR__TRY(bind(m, AMPR__TK_FFN_UP, l, hid, dim, &L->w_up, err));
        AMPR__TRY(bind(m, AMPR__TK_FFN_DOWN, l, dim, hid, &L->w_down, err));
    }
    if (m->tok && ampr__tok_n_vocab(m->tok) > hp->vocab_size)
        return ampr__fail(err, AMPR_ERR_MODEL_VOCAB,
                          "tokenizer has %d tokens but the embedding only %d rows",
                          ampr__tok_n_vocab(m->tok), hp->vocab_size);

    /* Parameters of the model proper (tensors the forward pass uses). */
    uint64_t np = 0;
    const ampr__tensor *used[3] = {m->tok_embd, m->output_norm,
                                   hp->tied_embeddings ? NULL : m->output};
    for (int i = 0; i < 3; i++)
        if (used[i]) np += (uint64_t)(used[i]->ne[0] * used[i]->ne[1]);
    for (int l = 0; l < hp->n_layers; l++) {
        const ampr__tensor *const *lt = (const ampr__tensor *const *)&m->layers[l];
        for (size_t k = 0; k < sizeof(ampr__layer) / sizeof(lt[0]); k++)
            np += (uint64_t)(lt[k]->ne[0] * lt[k]->ne[1]);
    }
    m->n_params = np;

    if (check_finite)
        for (size_t i = 0; i < n; i++)
            if (!tensor_finite(&p->tensors[i]))
                return ampr__fail(err, AMPR_ERR_MODEL_NONFINITE,
                                  "tensor %s holds NaN or infinite values", p->tensors[i].name);
    return AMPR_OK;
}

/* ---- names ---------------------------------------------------------------- */

static const char *const k_layer_names[][2] = {
    /* canonical (GGUF)   Hugging Face, under model.layers.N. */
    {"attn_norm", "input_layernorm"},
    {"attn_q", "self_attn.q_proj"},
    {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"},
    {"ffn_norm", "post_attention_layernorm"},
    {"ffn_gate", "mlp.gate_proj"},
    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};

void ampr__tensor_name(int kind, int layer, int hf, char *buf, size_t cap) {
    switch (kind) {
    case AMPR__TK_TOK_EMBD:
        snprintf(buf, cap, "%s", hf ? "model.embed_tokens.weight" : "token_embd.weight");
        return;
    case AMPR__TK_OUTPUT_NORM:
        snprintf(buf, cap, "%s", hf ? "model.norm.weight" : "output_norm.weight");
        return;
    case AMPR__TK_OUTPUT:
        snprintf(buf, cap, "%s", hf ? "lm_head.weight" : "output.weight");
        return;
    default:
        if (kind > AMPR__TK_TOK_EMBD && kind < AMPR__TK_OUTPUT_NORM) {
            const char *const *nm = k_layer_names[kind - AMPR__TK_ATTN_NORM];
            if (hf) snprintf(buf, cap, "model.layers.%d.%s.weight", layer, nm[1]);
            else snprintf(buf, cap, "blk.%d.%s.weight", layer, nm[0]);
            return;
        }
    }
    snprintf(buf, cap, "?");
}

int ampr__hf_to_canon(const char *hf, char *buf, size_t cap) {
    static const char *const top[][2] = {{"model.embed_tokens.weight", "token_embd.weight"},
                                         {"model.norm.weight", "output_norm.weight"},
                                         {"lm_head.weight", "output.weight"}};
    for (size_t i = 0; i < AMPR__ARRAY_LEN(top); i++)
        if (!strcmp(hf, top[i][0])) {
            snprintf(buf, cap, "%s", top[i][1]);
            return 1;
        }
    static const char prefix[] = "model.layers.";
    if (strncmp(hf, prefix, sizeof prefix - 1) != 0) return 0;
    const char *s = hf + sizeof prefix - 1;
    long layer = 0;
    int digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 6) layer = layer * 10 + (*s++ - '0'), digits++;
    if (!digits || *s++ != '.') return 0;
    size_t rest = strlen(s);
    if (rest < 8 || strcmp(s + rest - 7, ".weight") != 0) return 0;
    for (size_t k = 0; k < AMPR__ARRAY_LEN(k_layer_names); k++) {
        const char *h = k_layer_names[k][1];
        if (strlen(h) == rest - 7 && !strncmp(s, h, rest - 7)) {
            snprintf(buf, cap, "blk.%ld.%s.weight", layer, k_layer_names[k][0]);
            return 1;
        }
    }
    return 0;
}

size_t ampr__model_plan(const ampr__hparams *hp, ampr__dtype dt, int hf, ampr__wtensor *ts) {
    int64_t dim = hp->dim, q_dim = (int64_t)hp->n_heads * hp->head_dim;
    int64_t kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim, hid = hp->hidden_dim;
    size_t n = 0;
#define PLAN(k, l, rows, cols)                                                   \
    do {                                                                         \
        ampr__wtensor *t = &ts[n++];                                             \
        memset(t, 0, sizeof *t);                                                 \
        t->kind = (k);                                                           \
        t->layer = (l);                                                          \
        t->dtype = dt;                                                           \
        t->n_dims = (rows) ? 2 : 1;                                              \
        t->ne[0] = (cols);                                                       \
        t->ne[1] = (rows) ? (rows) : 1;                                          \
        t->ne[2] = t->ne[3] = 1;                                                 \
        ampr__tensor_name((k), (l), hf, t->name, sizeof t->name);                \
    } while (0)
    PLAN(AMPR__TK_TOK_EMBD, 0, hp->vocab_size, dim);
    for (int l = 0; l < hp->n_layers; l++) {
        PLAN(AMPR__TK_ATTN_NORM, l, 0, dim);
        PLAN(AMPR__TK_ATTN_Q, l, q_dim, dim);
        PLAN(AMPR__TK_ATTN_K, l, kv_dim, dim);
        PLAN(AMPR__TK_ATTN_V, l, kv_dim, dim);
        PLAN(AMPR__TK_ATTN_OUT, l, dim, q_dim);
        PLAN(AMPR__TK_FFN_NORM, l, 0, dim);
        PLAN(AMPR__TK_FFN_GATE, l, hid, dim);
        PLAN(AMPR__TK_FFN_UP, l, hid, dim);
        PLAN(AMPR__TK_FFN_DOWN, l, dim, hid);
    }
    PLAN(AMPR__TK_OUTPUT_NORM, 0, 0, dim);
    if (!hp->tied_embeddings) PLAN(AMPR__TK_OUTPUT, 0, hp->vocab_size, dim);
#undef PLAN
    return n;
}

/* ---- writing helpers -------------------------------------------------------- */

void ampr__permute_qk(const float *in, float *out, int n_heads, int head_dim, int64_t cols) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < half; i++)
            for (int t = 0; t < 2; t++) {
                const float *src = in + ((int64_t)h * head_dim + 2 * i + t) * cols;
                float *dst = out + ((int64_t)h * head_dim + t * half + i) * cols;
                memcpy(dst, src, (size_t)cols * sizeof *dst);
            }
}

void ampr__unpermute_qk(const float *in, float *out, int n_heads, int head_dim, int64_t cols) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < half; i++)
            for (int t = 0; t < 2; t++) {
                const float *src = in + ((int64_t)h * head_dim + t * half + i) * cols;
                float *dst = out + ((int64_t)h * head_dim + 2 * i + t) * cols;
                memcpy(dst, src, (size_t)cols * sizeof *dst);
            }
}

void ampr__f32_to_half_as(const float *x, uint16_t *out, size_t n, ampr__dtype dt) {
    for (size_t i = 0; i < n; i++)
        out[i] = dt == AMPR__DT_F16 ? ampr__f32_to_fp16(x[i]) : ampr__f32_to_bf16(x[i]);
}

ampr_status ampr__write_f32_as(FILE *f, const float *x, size_t n, ampr__dtype dt,
                               ampr__err *err) {
    if (dt == AMPR__DT_F32) {
        if (fwrite(x, 4, n, f) != n) return ampr__fail(err, AMPR_ERR_IO, "write failed");
        return AMPR_OK;
    }
    if (dt != AMPR__DT_F16 && dt != AMPR__DT_BF16)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "cannot write dtype %s",
                          ampr__dtype_name(dt));
    uint16_t buf[4096];
    while (n) {
        size_t k = AMPR__MIN(n, AMPR__ARRAY_LEN(buf));
        ampr__f32_to_half_as(x, buf, k, dt);
        if (fwrite(buf, 2, k, f) != k) return ampr__fail(err, AMPR_ERR_IO, "write failed");
        x += k;
        n -= k;
    }
    return AMPR_OK;
}

ampr_status ampr__path_join(char *buf, size_t cap, const char *dir, const char *name,
                            ampr__err *err) {
    int k = snprintf(buf, cap, "%s/%s", dir, name);
    if (k < 0 || (size_t)k >= cap)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "path too long: %s/%s", dir, name);
    return AMPR_OK;
}

/* ---- load / free ---------------------------------------------------------- */

ampr_status ampr__model_load(const char *path, int check_finite, ampr__model **out,
                             ampr__err *err) {
    *out = NULL;
    if (!path) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "model path is NULL");
    struct stat st;
    if (stat(path, &st) != 0)
        return ampr__fail(err, AMPR_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return ampr__model_load_hf(path, check_finite, out, err);
    FILE *f = fopen(path, "rb");
    if (!f) return ampr__fail(err, AMPR_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got == 4 && !memcmp(magic, "GGUF", 4))
        return ampr__model_load_gguf(path, check_finite, out, err);
    return ampr__fail(err, AMPR_ERR_MODEL_FORMAT,
                      "%s is neither a GGUF file nor a Hugging Face model directory", path);
}

void ampr__model_drop_weights(ampr__model *m) {
    if (!m) return;
    ampr__model_priv *p = m->priv;
    if (p) {
        for (size_t i = 0; i < p->n_tensors; i++) ampr__free((void *)p->tensors[i].name);
        ampr__free(p->tensors);
        ampr__free(p->by_name);
        for (int i = 0; i < p->n_maps; i++) ampr__unmap(&p->maps[i]);
        ampr__free(p->maps);
        for (size_t i = 0; i < p->n_owned; i++) ampr__free(p->owned[i]);
        ampr__free(p->owned);
        memset(p, 0, sizeof *p);
    }
    ampr__free(m->layers);
    m->layers = NULL;
    m->tok_embd = m->output_norm = m->output = NULL;
}

void ampr__model_free(ampr__model *m) {
    if (!m) return;
    ampr__model_drop_weights(m);
    ampr__free(m->priv);
    if (m->tok) ampr__tok_free(m->tok);
    ampr__free(m);
}
