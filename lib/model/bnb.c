/*
 * bnb.c -- Hugging Face checkpoints quantized by transformers + bitsandbytes
 * 4-bit (quant_type "nf4"), both ways.
 *
 * On-disk layout (bitsandbytes Linear4bit._save_to_state_dict writes the
 * weight, then every item of QuantState.as_dict(packed=True) under
 * "X.weight." + key; transformers saves that state dict to safetensors):
 *   X.weight                      U8 [ceil(n/2), 1]  packed 4-bit codes of the
 *                                 flattened [out, in] matrix, element 2j in
 *                                 the high nibble of byte j
 *   X.weight.absmax               F32 [ceil(n/blocksize)], or U8 (8-bit codes)
 *                                 when nested (compress_statistics)
 *   X.weight.quant_map            F32 [16], the NF4 code table
 *   X.weight.nested_absmax        F32 [ceil(nb/nested_blocksize)]   (nested)
 *   X.weight.nested_quant_map     F32 [256], the signed dynamic map (nested)
 *   X.weight.quant_state.bitsandbytes__nf4
 *                                 U8: UTF-8 JSON (pack_dict_to_tensor of the
 *                                 non-tensor items): quant_type, blocksize,
 *                                 dtype ("float32"...), shape [out, in], and
 *                                 when nested nested_blocksize, nested_dtype,
 *                                 nested_offset
 * Dequantization (bitsandbytes dequantize_4bit / dequantize_blockwise):
 *   absmax[b] = nested_quant_map[qabsmax[b]] * nested_absmax[b / nbs] + offset
 *   w[e] = quant_map[code[e]] * absmax[e / blocksize].
 *
 * Reading: the safetensors reader keeps U8 tensors and files the companions
 * under "<canonical weight name><suffix>"; ampr__bnb_resolve() validates each
 * group and replaces it with one AMPR__DT_NF4 tensor (nested absmax
 * dequantized to fp32 into memory the model owns). Only blocksize 64 (our NF4
 * format) is accepted; fp4 and other block sizes are AMPR_ERR_UNSUPPORTED.
 */
#include "model_int.h"
#include "../quant/quant.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char *const k_suffixes[] = {
    ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
    ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4",
};
enum { SFX_ABSMAX, SFX_QMAP, SFX_NABSMAX, SFX_NQMAP, SFX_QS, SFX_QS_FP4, SFX_COUNT };

static int ends_with(const char *s, size_t n, const char *suf) {
    size_t k = strlen(suf);
    return n >= k && !memcmp(s + n - k, suf, k);
}

size_t ampr__bnb_suffix(const char *key) {
    size_t n = strlen(key);
    for (size_t i = 0; i < SFX_COUNT; i++) {
        size_t k = strlen(k_suffixes[i]);
        /* a companion of a weight: "<...>.weight<suffix>" */
        if (ends_with(key, n, k_suffixes[i]) && ends_with(key, n - k, ".weight")) return n - k;
    }
    return 0;
}

/* ---- reading ----------------------------------------------------------------- */

typedef struct group {
    ampr__tensor *w;
    ampr__tensor *part[SFX_COUNT];
} group;

static int cmp_tensor_ptr(const void *a, const void *b) {
    const ampr__tensor *x = *(ampr__tensor *const *)a, *y = *(ampr__tensor *const *)b;
    return strcmp(x->name, y->name);
}

static ampr__tensor *find(ampr__tensor **sorted, size_t n, const char *name) {
    ampr__tensor key = {.name = name}, *kp = &key;
    ampr__tensor **hit = bsearch(&kp, sorted, n, sizeof *sorted, cmp_tensor_ptr);
    return hit ? *hit : NULL;
}

static uint64_t elems(const ampr__tensor *t) {
    uint64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) n *= (uint64_t)t->ne[i];
    return n;
}

static ampr_status need(const group *g, int k, ampr__dtype dt, uint64_t count, ampr__err *err) {
    const ampr__tensor *t = g->part[k];
    if (!t)
        return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "bitsandbytes weight %s lacks %s%s",
                          g->w->name, g->w->name, k_suffixes[k]);
    if (t->dtype != dt)
        return ampr__fail(err, AMPR_ERR_MODEL_DTYPE, "%s has dtype %s, expected %s", t->name,
                          ampr__dtype_name(t->dtype), ampr__dtype_name(dt));
    if (count && elems(t) != count)
        return ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "%s holds %llu values, expected %llu",
                          t->name, (unsigned long long)elems(t), (unsigned long long)count);
    return AMPR_OK;
}

static ampr_status json_posint(json_t *o, const char *key, const char *name, int64_t *v,
                               ampr__err *err) {
    json_t *j = json_object_get(o, key);
    if (!j) return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "%s: quant_state lacks %s", name, key);
    if (!json_is_integer(j) || json_integer_value(j) <= 0)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: quant_state %s is not a positive integer",
                          name, key);
    *v = (int64_t)json_integer_value(j);
    return AMPR_OK;
}

static int float_dtype_name(json_t *j) {
    if (!json_is_string(j)) return 0;
    const char *s = json_string_value(j);
    return !strcmp(s, "float32") || !strcmp(s, "float16") || !strcmp(s, "bfloat16");
}

/* Validate one group and turn g->w into an NF4 tensor. */
static ampr_status resolve_group(ampr__model *m, group *g, ampr__err *err) {
    ampr__tensor *w = g->w;
    if (g->part[SFX_QS_FP4])
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                          "%s is bitsandbytes fp4; only nf4 is supported", w->name);
    AMPR__TRY(need(g, SFX_QS, AMPR__DT_U8, 0, err));
    const ampr__tensor *qs = g->part[SFX_QS];
    if (qs->n_dims != 1)
        return ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "%s is not 1-D", qs->name);
    json_error_t je;
    json_t *o = json_loadb(qs->data, (size_t)qs->nbytes, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: bad quant_state JSON: %s", qs->name,
                          je.text);
    ampr_status st = AMPR_OK;
    int64_t bs = 0, nbs = 0, out = 0, in = 0;
    float offset = 0.0f;
    json_t *qt = json_object_get(o, "quant_type"), *shape = json_object_get(o, "shape");
    int nested = g->part[SFX_NABSMAX] != NULL || json_object_get(o, "nested_blocksize") != NULL;
    if (!json_is_object(o))
        st = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: quant_state is not a JSON object",
                        qs->name);
    else if (!json_is_string(qt))
        st = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: quant_state lacks quant_type", qs->name);
    else if (strcmp(json_string_value(qt), "nf4") != 0)
        st = ampr__fail(err, AMPR_ERR_UNSUPPORTED, "%s: quant_type %.16s is not supported",
                        qs->name, json_string_value(qt));
    if (st == AMPR_OK) st = json_posint(o, "blocksize", qs->name, &bs, err);
    if (st == AMPR_OK && bs != 64)
        st = ampr__fail(err, AMPR_ERR_UNSUPPORTED,
                        "%s: blocksize %lld (only 64, bitsandbytes' default, is supported)",
                        qs->name, (long long)bs);
    if (st == AMPR_OK && !float_dtype_name(json_object_get(o, "dtype")))
        st = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: quant_state dtype is not a float type",
                        qs->name);
    if (st == AMPR_OK) {
        json_t *j0 = json_array_get(shape, 0), *j1 = json_array_get(shape, 1);
        if (!json_is_array(shape) || json_array_size(shape) != 2 || !json_is_integer(j0) ||
            !json_is_integer(j1) || json_integer_value(j0) <= 0 || json_integer_value(j1) <= 0 ||
            json_integer_value(j0) > ((int64_t)1 << 31) || json_integer_value(j1) > ((int64_t)1 << 31))
            st = ampr__fail(err, AMPR_ERR_MODEL_SHAPE,
                            "%s: quant_state shape is not two positive integers", qs->name);
        else {
            out = (int64_t)json_integer_value(j0);
            in = (int64_t)json_integer_value(j1);
        }
    }
    if (st == AMPR_OK && nested) {
        json_t *jo = json_object_get(o, "nested_offset");
        st = json_posint(o, "nested_blocksize", qs->name, &nbs, err);
        if (st == AMPR_OK && (nbs < 64 || nbs > 4096 || (nbs & (nbs - 1))))
            st = ampr__fail(err, AMPR_ERR_UNSUPPORTED, "%s: nested_blocksize %lld", qs->name,
                            (long long)nbs);
        if (st == AMPR_OK && (!json_is_number(jo) || !isfinite(json_number_value(jo))))
            st = ampr__fail(err, AMPR_ERR_MODEL_FORMAT,
                            "%s: nested_offset is missing or not a finite number", qs->name);
        if (st == AMPR_OK) offset = (float)json_number_value(jo);
        json_t *nd = json_object_get(o, "nested_dtype");
        if (st == AMPR_OK && nd && !(json_is_string(nd) && !strcmp(json_string_value(nd), "float32")))
            st = ampr__fail(err, AMPR_ERR_UNSUPPORTED, "%s: nested_dtype is not float32", qs->name);
    }
    json_decref(o);
    AMPR__TRY(st);

    uint64_t n = (uint64_t)out * (uint64_t)in, nb = (n + 63) / 64;
    if (w->dtype != AMPR__DT_U8 || w->nbytes != (n + 1) / 2)
        return ampr__fail(err, AMPR_ERR_MODEL_SHAPE,
                          "%s: %llu bytes of %s codes, a [%lld, %lld] matrix needs %llu",
                          w->name, (unsigned long long)w->nbytes, ampr__dtype_name(w->dtype),
                          (long long)out, (long long)in, (unsigned long long)((n + 1) / 2));
    AMPR__TRY(need(g, SFX_QMAP, AMPR__DT_F32, 16, err));
    const uint8_t *qm = g->part[SFX_QMAP]->data;
    for (int i = 0; i < 16; i++) {
        float v;
        memcpy(&v, qm + 4 * i, 4);
        if (!(fabsf(v - ampr__nf4_code[i]) <= 1e-6f))
            return ampr__fail(err, AMPR_ERR_MODEL_FORMAT,
                              "%s: quant_map[%d] = %g is not the NF4 code %g",
                              g->part[SFX_QMAP]->name, i, (double)v, (double)ampr__nf4_code[i]);
    }
    if (!nested) {
        AMPR__TRY(need(g, SFX_ABSMAX, AMPR__DT_F32, nb, err));
        if (g->part[SFX_NQMAP])
            return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: nested_quant_map without nesting",
                              w->name);
        if (((uintptr_t)g->part[SFX_ABSMAX]->data & 3u) == 0) {
            w->absmax = g->part[SFX_ABSMAX]->data;
        } else { /* unaligned inside the file: copy */
            float *a = ampr__alloc_array((size_t)nb, sizeof *a, err);
            if (!a) return AMPR_ERR_NOMEM;
            memcpy(a, g->part[SFX_ABSMAX]->data, (size_t)nb * 4);
            AMPR__TRY(ampr__model_own(m, a, err));
            w->absmax = a;
        }
    } else {
        uint64_t nb2 = (nb + (uint64_t)nbs - 1) / (uint64_t)nbs;
        AMPR__TRY(need(g, SFX_ABSMAX, AMPR__DT_U8, nb, err));
        AMPR__TRY(need(g, SFX_NABSMAX, AMPR__DT_F32, nb2, err));
        AMPR__TRY(need(g, SFX_NQMAP, AMPR__DT_F32, 256, err));
        const uint8_t *q = g->part[SFX_ABSMAX]->data, *a2p = g->part[SFX_NABSMAX]->data,
                      *mp = g->part[SFX_NQMAP]->data;
        float map[256];
        memcpy(map, mp, sizeof map);
        for (int i = 0; i < 256; i++)
            if (!isfinite(map[i]) || fabsf(map[i]) > 1.0f)
                return ampr__fail(err, AMPR_ERR_MODEL_FORMAT,
                                  "%s: nested_quant_map[%d] is not in [-1, 1]",
                                  g->part[SFX_NQMAP]->name, i);
        float *a = ampr__alloc_array((size_t)nb, sizeof *a, err);
        if (!a) return AMPR_ERR_NOMEM;
        for (uint64_t b = 0; b < nb; b++) {
            float a2;
            memcpy(&a2, a2p + 4 * (b / (uint64_t)nbs), 4);
            a[b] = map[q[b]] * a2 + offset;
        }
        AMPR__TRY(ampr__model_own(m, a, err));
        w->absmax = a;
    }
    w->dtype = AMPR__DT_NF4;
    w->n_dims = 2;
    w->ne[0] = in;
    w->ne[1] = out;
    w->ne[2] = w->ne[3] = 1;
    return AMPR_OK;
}

ampr_status ampr__bnb_resolve(ampr__model *m, ampr__err *err) {
    ampr__model_priv *p = m->priv;
    size_t n = p->n_tensors;
    int any = 0;
    for (size_t i = 0; i < n && !any; i++) any = p->tensors[i].dtype == AMPR__DT_U8;
    if (!any) return AMPR_OK;
    ampr__tensor **sorted = ampr__alloc_array(n, sizeof *sorted, err);
    uint8_t *drop = ampr__alloc_array(n, 1, err);
    if (!sorted || !drop) {
        ampr__free(sorted);
        ampr__free(drop);
        return AMPR_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) sorted[i] = &p->tensors[i];
    qsort(sorted, n, sizeof *sorted, cmp_tensor_ptr);
    ampr_status st = AMPR_OK;
    char name[2 * AMPR__NAME_MAX];
    /* companions first: each must belong to a weight */
    for (size_t i = 0; i < n && st == AMPR_OK; i++) {
        const ampr__tensor *t = &p->tensors[i];
        size_t bl = ampr__bnb_suffix(t->name);
        if (!bl) continue;
        drop[i] = 1;
        if (bl >= sizeof name) continue;
        memcpy(name, t->name, bl);
        name[bl] = '\0';
        if (!find(sorted, n, name))
            st = ampr__fail(err, AMPR_ERR_MODEL_MISSING, "%s has no weight %s", t->name, name);
    }
    for (size_t i = 0; i < n && st == AMPR_OK; i++) {
        ampr__tensor *t = &p->tensors[i];
        if (drop[i]) continue;
        group g = {t, {NULL}};
        int has = 0;
        for (int k = 0; k < SFX_COUNT; k++) {
            if (snprintf(name, sizeof name, "%s%s", t->name, k_suffixes[k]) >= (int)sizeof name)
                continue;
            g.part[k] = find(sorted, n, name);
            has |= g.part[k] != NULL;
        }
        if (!has) {
            if (t->dtype == AMPR__DT_U8)
                st = ampr__fail(err, AMPR_ERR_MODEL_DTYPE,
                                "tensor %s has dtype U8 but no bitsandbytes quant_state", t->name);
            continue;
        }
        st = resolve_group(m, &g, err);
    }
    ampr__free(sorted);
    if (st == AMPR_OK) { /* drop the companions */
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (drop[i]) ampr__free((void *)p->tensors[i].name);
            else p->tensors[k++] = p->tensors[i];
        }
        p->n_tensors = k;
    }
    ampr__free(drop);
    return st;
}

/* ---- writing ------------------------------------------------------------------- */

static int is_linear(int kind) {
    return kind == AMPR__TK_ATTN_Q || kind == AMPR__TK_ATTN_K || kind == AMPR__TK_ATTN_V ||
           kind == AMPR__TK_ATTN_OUT || kind == AMPR__TK_FFN_GATE || kind == AMPR__TK_FFN_UP ||
           kind == AMPR__TK_FFN_DOWN;
}

static const ampr__tensor *model_tensor(const ampr__model *m, int kind, int layer) {
    const ampr__layer *L = &m->layers[layer];
    switch (kind) {
    case AMPR__TK_TOK_EMBD: return m->tok_embd;
    case AMPR__TK_OUTPUT_NORM: return m->output_norm;
    case AMPR__TK_OUTPUT: return m->output;
    case AMPR__TK_ATTN_NORM: return L->attn_norm;
    case AMPR__TK_ATTN_Q: return L->wq;
    case AMPR__TK_ATTN_K: return L->wk;
    case AMPR__TK_ATTN_V: return L->wv;
    case AMPR__TK_ATTN_OUT: return L->wo;
    case AMPR__TK_FFN_NORM: return L->ffn_norm;
    case AMPR__TK_FFN_GATE: return L->w_gate;
    case AMPR__TK_FFN_UP: return L->w_up;
    default: return L->w_down;
    }
}

static const char *torch_name(ampr__dtype dt) {
    return dt == AMPR__DT_F16 ? "float16" : dt == AMPR__DT_BF16 ? "bfloat16" : "float32";
}

/* One entry of the output file: which tensor, which part of its group. */
typedef struct wentry {
    int src;  /* index into the plan */
    int part; /* -1: the weight itself (or a float tensor), else SFX_* */
} wentry;

typedef struct wctx {
    const ampr__model *m;
    const ampr__wtensor *plan;
    const wentry *ents;
    size_t next;
    int dq;
    /* the group being written */
    int cur;          /* plan index quantized into the buffers below, -1 none */
    float *rows;      /* fp32 matrix */
    float *tmp;
    uint8_t *codes;
    float *absmax;
    uint8_t *qabsmax;
    float *absmax2;
    float offset;
    char blob[512];
} wctx;

static ampr_status read_rows(const wctx *c, const ampr__wtensor *t, float *dst) {
    const ampr__tensor *src = model_tensor(c->m, t->kind, t->layer);
    int64_t rows = t->ne[1], cols = t->ne[0];
    for (int64_t r = 0; r < rows; r++) ampr__tensor_row_f32(src, r, dst + r * cols);
    const ampr__hparams *hp = &c->m->hp;
    if (hp->rope_layout == AMPR__ROPE_INTERLEAVED &&
        (t->kind == AMPR__TK_ATTN_Q || t->kind == AMPR__TK_ATTN_K)) {
        int heads = t->kind == AMPR__TK_ATTN_Q ? hp->n_heads : hp->n_kv_heads;
        ampr__permute_qk(dst, c->tmp, heads, hp->head_dim, cols);
        memcpy(dst, c->tmp, (size_t)(rows * cols) * sizeof *dst);
    }
    return AMPR_OK;
}

static ampr_status quantize_group(wctx *c, int idx, const char *dtype_name) {
    const ampr__wtensor *t = &c->plan[idx];
    size_t n = (size_t)(t->ne[0] * t->ne[1]), nb = (n + 63) / 64;
    read_rows(c, t, c->rows);
    ampr__nf4_quantize_flat(c->rows, n, 64, c->codes, c->absmax);
    int k;
    if (c->dq) {
        /* bitsandbytes quantize_4bit(compress_statistics=True): offset =
         * absmax.mean(), absmax - offset quantized blockwise (256) with the
         * signed dynamic map (same arithmetic as our NF4_DQ format) */
        double sum = 0.0;
        for (size_t b = 0; b < nb; b++) sum += c->absmax[b];
        c->offset = (float)(sum / (double)nb);
        for (size_t b = 0; b < nb; b++) c->tmp[b] = c->absmax[b] - c->offset;
        ampr__dynamic_quantize(c->tmp, nb, 256, c->qabsmax, c->absmax2);
        k = snprintf(c->blob, sizeof c->blob,
                     "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"%s\", "
                     "\"shape\": [%lld, %lld], \"nested_blocksize\": 256, "
                     "\"nested_dtype\": \"float32\", \"nested_offset\": %.17g}",
                     dtype_name, (long long)t->ne[1], (long long)t->ne[0], (double)c->offset);
    } else {
        k = snprintf(c->blob, sizeof c->blob,
                     "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"%s\", "
                     "\"shape\": [%lld, %lld]}",
                     dtype_name, (long long)t->ne[1], (long long)t->ne[0]);
    }
    (void)k;
    c->cur = idx;
    return AMPR_OK;
}

static ampr_status wr(FILE *f, const void *p, size_t n, ampr__err *err) {
    if (n && fwrite(p, 1, n, f) != n) return ampr__fail(err, AMPR_ERR_IO, "write failed");
    return AMPR_OK;
}

static ampr_status fill(void *ctx, const ampr__wtensor *wt, FILE *f, ampr__err *err) {
    wctx *c = ctx;
    const wentry *e = &c->ents[c->next++];
    const ampr__wtensor *t = &c->plan[e->src];
    size_t n = (size_t)(t->ne[0] * t->ne[1]), nb = (n + 63) / 64;
    const ampr__tensor *src = model_tensor(c->m, t->kind, t->layer);
    if (!is_linear(t->kind)) { /* float tensor, in wt->dtype */
        int64_t rows = t->ne[1], cols = t->ne[0];
        for (int64_t r = 0; r < rows; r++) {
            ampr__tensor_row_f32(src, r, c->rows);
            AMPR__TRY(ampr__write_f32_as(f, c->rows, (size_t)cols, wt->dtype, err));
        }
        return AMPR_OK;
    }
    if (c->cur != e->src) AMPR__TRY(quantize_group(c, e->src, torch_name(src->dtype)));
    switch (e->part) {
    case -1: return wr(f, c->codes, (n + 1) / 2, err);
    case SFX_ABSMAX:
        return c->dq ? wr(f, c->qabsmax, nb, err) : wr(f, c->absmax, nb * 4, err);
    case SFX_QMAP: return wr(f, ampr__nf4_code, 16 * 4, err);
    case SFX_NABSMAX: return wr(f, c->absmax2, (nb + 255) / 256 * 4, err);
    case SFX_NQMAP: return wr(f, ampr__dynamic_map(), 256 * 4, err);
    default: return wr(f, c->blob, strlen(c->blob), err);
    }
}

static ampr_status copy_file(const char *from_dir, const char *to_dir, const char *name,
                             ampr__err *err) {
    char a[4096], b[4096];
    AMPR__TRY(ampr__path_join(a, sizeof a, from_dir, name, err));
    AMPR__TRY(ampr__path_join(b, sizeof b, to_dir, name, err));
    FILE *in = fopen(a, "rb");
    if (!in) return ampr__fail(err, AMPR_ERR_MODEL_MISSING, "cannot open %s", a);
    FILE *out = fopen(b, "wb");
    if (!out) {
        fclose(in);
        return ampr__fail(err, AMPR_ERR_IO, "cannot create %s", b);
    }
    char buf[65536];
    size_t k;
    ampr_status st = AMPR_OK;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, k, out) != k) {
            st = ampr__fail(err, AMPR_ERR_IO, "write to %s failed", b);
            break;
        }
    if (st == AMPR_OK && ferror(in)) st = ampr__fail(err, AMPR_ERR_IO, "cannot read %s", a);
    fclose(in);
    if (fclose(out) != 0 && st == AMPR_OK)
        st = ampr__fail(err, AMPR_ERR_IO, "write to %s failed", b);
    return st;
}

/* config.json (written by ampr__hf_write_config) plus transformers'
 * BitsAndBytesConfig.to_dict() fields. */
static ampr_status add_quant_config(const char *dir, int dq, ampr__err *err) {
    char path[4096];
    AMPR__TRY(ampr__path_join(path, sizeof path, dir, "config.json", err));
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    if (!c) return ampr__fail(err, AMPR_ERR_IO, "cannot read back %s", path);
    json_t *q = json_pack("{s:s, s:b, s:b, s:f, s:n, s:b, s:b, s:s, s:s, s:b, s:s, s:b}",
                          "quant_method", "bitsandbytes", "load_in_4bit", 1, "load_in_8bit", 0,
                          "llm_int8_threshold", 6.0, "llm_int8_skip_modules",
                          "llm_int8_enable_fp32_cpu_offload", 0, "llm_int8_has_fp16_weight", 0,
                          "bnb_4bit_quant_type", "nf4", "bnb_4bit_compute_dtype", "float32",
                          "bnb_4bit_use_double_quant", dq, "bnb_4bit_quant_storage", "uint8",
                          "_load_in_4bit", 1);
    ampr_status st = AMPR_OK;
    if (!q || json_object_set_new(c, "quantization_config", q))
        st = ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    if (st == AMPR_OK &&
        json_dump_file(c, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9)))
        st = ampr__fail(err, AMPR_ERR_IO, "cannot write %s", path);
    json_decref(c);
    return st;
}

ampr_status ampr__model_write_bnb_nf4(const ampr__model *m, const char *tok_dir,
                                      const char *out_dir, int double_quant, ampr__err *err) {
    if (!m || !tok_dir || !out_dir)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "model, tok_dir and out_dir are required");
    const ampr__hparams *hp = &m->hp;
    size_t cap = 9 * (size_t)hp->n_layers + 4;
    ampr__wtensor *plan = ampr__alloc_array(cap, sizeof *plan, err);
    ampr__wtensor *ts = ampr__alloc_array(cap * 6, sizeof *ts, err);
    wentry *ents = ampr__alloc_array(cap * 6, sizeof *ents, err);
    wctx c = {.m = m, .plan = plan, .ents = ents, .dq = double_quant, .cur = -1};
    ampr_status st = AMPR_OK;
    if (!plan || !ts || !ents) st = AMPR_ERR_NOMEM;
    size_t np = 0, n = 0, biggest = 0;
    if (st == AMPR_OK) np = ampr__model_plan(hp, AMPR__DT_F32, 1, plan);
    for (size_t i = 0; i < np && st == AMPR_OK; i++) {
        const ampr__wtensor *p = &plan[i];
        const ampr__tensor *src = model_tensor(m, p->kind, p->layer);
        size_t ne = (size_t)(p->ne[0] * p->ne[1]);
        biggest = AMPR__MAX(biggest, ne);
        if (!is_linear(p->kind)) {
            ts[n] = *p;
            ts[n].dtype = src->dtype == AMPR__DT_F16 || src->dtype == AMPR__DT_BF16
                              ? src->dtype : AMPR__DT_F32;
            ents[n++] = (wentry){(int)i, -1};
            continue;
        }
        size_t nb = (ne + 63) / 64;
        static const int dq_parts[] = {-1, SFX_ABSMAX, SFX_QMAP, SFX_NABSMAX, SFX_NQMAP, SFX_QS};
        static const int plain_parts[] = {-1, SFX_ABSMAX, SFX_QMAP, SFX_QS};
        const int *parts = double_quant ? dq_parts : plain_parts;
        int n_parts = double_quant ? 6 : 4;
        for (int k = 0; k < n_parts; k++) {
            ampr__wtensor *w = &ts[n];
            memset(w, 0, sizeof *w);
            w->kind = p->kind;
            w->layer = p->layer;
            w->n_dims = 1;
            w->ne[0] = w->ne[1] = w->ne[2] = w->ne[3] = 1;
            snprintf(w->name, sizeof w->name, "%s%s", p->name, parts[k] < 0 ? "" : k_suffixes[parts[k]]);
            switch (parts[k]) {
            case -1: /* [ceil(n/2), 1] */
                w->dtype = AMPR__DT_U8;
                w->n_dims = 2;
                w->ne[1] = (int64_t)((ne + 1) / 2);
                break;
            case SFX_ABSMAX:
                w->dtype = double_quant ? AMPR__DT_U8 : AMPR__DT_F32;
                w->ne[0] = (int64_t)nb;
                break;
            case SFX_QMAP: w->dtype = AMPR__DT_F32; w->ne[0] = 16; break;
            case SFX_NABSMAX: w->dtype = AMPR__DT_F32; w->ne[0] = (int64_t)((nb + 255) / 256); break;
            case SFX_NQMAP: w->dtype = AMPR__DT_F32; w->ne[0] = 256; break;
            default: /* the quant_state blob: its length is set below */
                w->dtype = AMPR__DT_U8;
                break;
            }
            ents[n++] = (wentry){(int)i, parts[k]};
        }
    }
    if (st == AMPR_OK) {
        c.rows = ampr__alloc_array(biggest, sizeof(float), err);
        c.tmp = ampr__alloc_array(biggest, sizeof(float), err);
        c.codes = ampr__alloc_array(biggest / 2 + 1, 1, err);
        c.absmax = ampr__alloc_array(biggest / 64 + 1, sizeof(float), err);
        c.qabsmax = ampr__alloc_array(biggest / 64 + 1, 1, err);
        c.absmax2 = ampr__alloc_array(biggest / 64 / 256 + 1, sizeof(float), err);
        if (!c.rows || !c.tmp || !c.codes || !c.absmax || !c.qabsmax || !c.absmax2)
            st = AMPR_ERR_NOMEM;
    }
    /* The blob length depends on nested_offset's digits: quantize each group
     * once up front to size it (cheap next to writing). */
    for (size_t i = 0; i < n && st == AMPR_OK; i++) {
        if (ents[i].part != SFX_QS) continue;
        const ampr__tensor *src = model_tensor(m, plan[ents[i].src].kind, plan[ents[i].src].layer);
        st = quantize_group(&c, ents[i].src, torch_name(src->dtype));
        ts[i].ne[0] = (int64_t)strlen(c.blob);
    }
    c.cur = -1;
    char path[4096];
    if (st == AMPR_OK) st = ampr__path_join(path, sizeof path, out_dir, "model.safetensors", err);
    if (st == AMPR_OK) st = ampr__st_write(path, ts, n, fill, &c, err);
    if (st == AMPR_OK) {
        ampr__dtype fdt = m->tok_embd->dtype;
        st = ampr__hf_write_config(out_dir, hp, torch_name(fdt), err);
    }
    if (st == AMPR_OK) st = add_quant_config(out_dir, double_quant, err);
    if (st == AMPR_OK) st = copy_file(tok_dir, out_dir, "tokenizer.json", err);
    if (st == AMPR_OK) st = copy_file(tok_dir, out_dir, "tokenizer_config.json", err);
    ampr__free(c.rows);
    ampr__free(c.tmp);
    ampr__free(c.codes);
    ampr__free(c.absmax);
    ampr__free(c.qabsmax);
    ampr__free(c.absmax2);
    ampr__free(plan);
    ampr__free(ts);
    ampr__free(ents);
    if (st == AMPR_ERR_NOMEM && err && err->status != AMPR_ERR_NOMEM)
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    return st;
}
