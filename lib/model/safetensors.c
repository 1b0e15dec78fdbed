/*
 * safetensors.c -- read and write the safetensors format.
 *
 * Layout: u64 little-endian N, N bytes of JSON header, then the data. The
 * header maps each tensor name to {"dtype", "shape", "data_offsets": [begin,
 * end]} (offsets relative to the data start); "__metadata__" holds strings
 * and is ignored. Shapes are outermost-first ([out, in]); ne[] is their
 * reverse.
 *
 * Reading validates every entry (dtype F32/F16/BF16, or U8 for
 * bitsandbytes 4-bit groups that bnb.c then resolves, rank 1..4, positive
 * dims, offsets inside the data, end - begin == elements * dtype size);
 * overlaps between tensors are caught by ampr__model_finish(). Writing is
 * streamed: the header is computed up front, the data produced tensor by
 * tensor by a callback.
 */
#include "model_int.h"

#include <jansson.h>
#include <stdio.h>
#include <sys/types.h>

/* Header JSON larger than this is refused (safetensors itself caps it at 100 MB). */
#define ST_MAX_HEADER ((uint64_t)100 << 20)

static ampr_status st_dtype(const char *s, const char *name, ampr__dtype *dt, ampr__err *err) {
    if (!strcmp(s, "F32")) *dt = AMPR__DT_F32;
    else if (!strcmp(s, "F16")) *dt = AMPR__DT_F16;
    else if (!strcmp(s, "BF16")) *dt = AMPR__DT_BF16;
    else if (!strcmp(s, "U8")) *dt = AMPR__DT_U8; /* bitsandbytes 4-bit, see bnb.c */
    else
        return ampr__fail(err, AMPR_ERR_MODEL_DTYPE, "safetensors: tensor %s has dtype %.32s",
                          name, s);
    return AMPR_OK;
}

static ampr_status st_entry(ampr__model *m, const char *path, const char *key, json_t *v,
                            const uint8_t *data, uint64_t data_size, ampr__err *err) {
    if (!json_is_object(v))
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: entry %s is not an object", path, key);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) ||
        json_array_size(jo) != 2)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT,
                          "%s: entry %s lacks dtype, shape or data_offsets", path, key);
    ampr__dtype dt = AMPR__DT_F32;
    AMPR__TRY(st_dtype(json_string_value(jd), key, &dt, err));
    size_t rank = json_array_size(js);
    if (rank < 1 || rank > 4)
        return ampr__fail(err, AMPR_ERR_MODEL_SHAPE, "%s: tensor %s has rank %zu", path, key,
                          rank);
    int64_t ne[4] = {1, 1, 1, 1};
    for (size_t i = 0; i < rank; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: tensor %s shape is not integers",
                              path, key);
        ne[rank - 1 - i] = (int64_t)json_integer_value(d);
    }
    uint64_t nbytes;
    AMPR__TRY(ampr__tensor_size(key, (int)rank, ne, dt, &nbytes, err));
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_integer(jb) || !json_is_integer(je))
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: tensor %s data_offsets not integers",
                          path, key);
    json_int_t b = json_integer_value(jb), e = json_integer_value(je);
    if (b < 0 || e < b || (uint64_t)e > data_size)
        return ampr__fail(err, AMPR_ERR_MODEL_BOUNDS,
                          "%s: tensor %s bytes [%lld, %lld) lie outside the %llu data bytes", path,
                          key, (long long)b, (long long)e, (unsigned long long)data_size);
    if ((uint64_t)(e - b) != nbytes)
        return ampr__fail(err, AMPR_ERR_MODEL_SHAPE,
                          "%s: tensor %s spans %lld bytes, its shape needs %llu", path, key,
                          (long long)(e - b), (unsigned long long)nbytes);
    char canon[AMPR__NAME_MAX], base[AMPR__NAME_MAX];
    const char *name = ampr__hf_to_canon(key, canon, sizeof canon) ? canon : key;
    size_t bl = ampr__bnb_suffix(key);
    if (bl && bl < sizeof base) { /* a bitsandbytes companion: canonical base + suffix */
        memcpy(base, key, bl);
        base[bl] = '\0';
        char cb[AMPR__NAME_MAX];
        if (ampr__hf_to_canon(base, cb, sizeof cb) &&
            snprintf(canon, sizeof canon, "%s%s", cb, key + bl) < (int)sizeof canon)
            name = canon;
    }
    ampr__tensor *t;
    AMPR__TRY(ampr__model_add_tensor(m, name, strlen(name), &t, err));
    t->dtype = dt;
    t->n_dims = (int32_t)rank;
    memcpy(t->ne, ne, sizeof ne);
    t->nbytes = nbytes;
    t->data = data + b;
    return AMPR_OK;
}

ampr_status ampr__st_load(ampr__model *m, const char *path, ampr__err *err) {
    ampr__map map;
    AMPR__TRY(ampr__model_map(m, path, 8, &map, err));
    uint64_t n;
    memcpy(&n, map.base, 8);
    if (n > ST_MAX_HEADER)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: header length %llu is absurd", path,
                          (unsigned long long)n);
    if (n > map.size - 8)
        return ampr__fail(err, AMPR_ERR_MODEL_TRUNCATED,
                          "%s: header of %llu bytes but the file has %zu", path,
                          (unsigned long long)n, map.size);
    json_error_t je;
    int oom;
    json_t *hdr = ampr__json_parse((const char *)map.base + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je,
                                   &oom);
    if (oom)
        return ampr__fail(err, AMPR_ERR_NOMEM, "%s: out of memory parsing the header", path);
    if (!hdr)
        return ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: bad header JSON: %s", path, je.text);
    ampr_status st = AMPR_OK;
    if (!json_is_object(hdr))
        st = ampr__fail(err, AMPR_ERR_MODEL_FORMAT, "%s: header is not a JSON object", path);
    const char *key;
    json_t *v;
    const uint8_t *data = map.base + 8 + n;
    uint64_t data_size = map.size - 8 - n;
    if (st == AMPR_OK) {
        json_object_foreach(hdr, key, v) {
            if (!strcmp(key, "__metadata__")) continue;
            st = st_entry(m, path, key, v, data, data_size, err);
            if (st != AMPR_OK) break;
        }
    }
    json_decref(hdr);
    return st;
}

/* ---- writing -------------------------------------------------------------- */

static const char *st_dtype_name(ampr__dtype dt) {
    switch (dt) {
    case AMPR__DT_F32: return "F32";
    case AMPR__DT_F16: return "F16";
    case AMPR__DT_BF16: return "BF16";
    case AMPR__DT_U8: return "U8";
    default: return NULL;
    }
}

static json_t *st_header(ampr__wtensor *ts, size_t n, ampr__err *err) {
    json_t *h = json_object(), *meta = json_pack("{s:s}", "format", "pt");
    if (!h || !meta || json_object_set_new(h, "__metadata__", meta)) {
        json_decref(h);
        ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        return NULL;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        ampr__wtensor *t = &ts[i];
        const char *dn = st_dtype_name(t->dtype);
        if (!dn) {
            json_decref(h);
            ampr__fail(err, AMPR_ERR_UNSUPPORTED, "safetensors cannot hold %s",
                       ampr__dtype_name(t->dtype));
            return NULL;
        }
        if (ampr__tensor_size(t->name, t->n_dims, t->ne, t->dtype, &t->nbytes, err)) {
            json_decref(h);
            return NULL;
        }
        t->offset = off;
        json_t *shape = json_array();
        for (int d = t->n_dims - 1; d >= 0; d--)
            json_array_append_new(shape, json_integer((json_int_t)t->ne[d]));
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", dn, "shape", shape, "data_offsets",
                              (json_int_t)off, (json_int_t)(off + t->nbytes));
        if (!e || json_object_set_new(h, t->name, e)) {
            json_decref(h);
            ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
            return NULL;
        }
        off += t->nbytes;
    }
    return h;
}

ampr_status ampr__st_write(const char *path, ampr__wtensor *ts, size_t n, ampr__wfill_fn fill,
                           void *ctx, ampr__err *err) {
    json_t *h = st_header(ts, n, err);
    if (!h) return err ? err->status : AMPR_ERR_INTERNAL;
    char *txt = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!txt) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
    size_t len = strlen(txt), padded = (len + 7) & ~(size_t)7;
    FILE *f = fopen(path, "wb");
    if (!f) {
        ampr__free(txt);
        return ampr__fail(err, AMPR_ERR_IO, "cannot create %s", path);
    }
    ampr_status st = AMPR_OK;
    uint64_t n64 = padded;
    if (fwrite(&n64, 8, 1, f) != 1 || fwrite(txt, 1, len, f) != len)
        st = ampr__fail(err, AMPR_ERR_IO, "write to %s failed", path);
    ampr__free(txt);
    for (size_t i = len; i < padded && st == AMPR_OK; i++)
        if (fputc(' ', f) == EOF) st = ampr__fail(err, AMPR_ERR_IO, "write to %s failed", path);
    off_t start = ftello(f);
    for (size_t i = 0; i < n && st == AMPR_OK; i++) {
        st = fill(ctx, &ts[i], f, err);
        if (st == AMPR_OK && ftello(f) != start + (off_t)(ts[i].offset + ts[i].nbytes))
            st = ampr__fail(err, AMPR_ERR_INTERNAL, "tensor %s: wrong byte count written",
                            ts[i].name);
    }
    if (fclose(f) != 0 && st == AMPR_OK)
        st = ampr__fail(err, AMPR_ERR_IO, "write to %s failed", path);
    return st;
}
