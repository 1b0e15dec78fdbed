/*
 * config.c -- the JSON configuration given to ampr_open(), parsed with
 * jansson in this one place. Unknown keys, wrong types and out-of-range values
 * are rejected with a message naming the key.
 */
#include <jansson.h>
#include <math.h>

#include "engine.h"
#include "forward/tp.h"

void ampr__config_defaults(ampr__config *c) {
    memset(c, 0, sizeof *c);
    c->n_tiers = 3;
    c->tiers[0] = AMPR_TIER_FP16;
    c->tiers[1] = AMPR_TIER_INT8;
    c->tiers[2] = AMPR_TIER_NF4;
    c->threads = 0;
    c->kv_block_size = 16;
    c->kv_dtype = -1;
    c->device = 0;
    c->tp_size = 1;
    c->tp_rank = -1;
    c->tp_timeout_ms = 300000;
    ampr__router_defaults(&c->router);
    ampr__fallback_defaults(&c->fallback);
}

/* Fail on any key of obj not in allowed (NULL-terminated). */
static ampr_status check_keys(json_t *obj, const char *where, const char *const *allowed,
                              ampr__err *err) {
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val) {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++) ok = !strcmp(*a, key);
        if (!ok) return ampr__fail(err, AMPR_ERR_CONFIG, "config: unknown key \"%s\"%s", key, where);
    }
    return AMPR_OK;
}

static ampr_status get_int(json_t *obj, const char *key, int64_t lo, int64_t hi, int64_t *out,
                           ampr__err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return AMPR_OK;
    if (!json_is_integer(v))
        return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"%s\" must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"%s\" = %lld is outside [%lld, %lld]", key,
                          (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return AMPR_OK;
}

static ampr_status parse_tiers(json_t *v, ampr__config *c, ampr__err *err) {
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 5)
        return ampr__fail(err, AMPR_ERR_CONFIG,
                          "config: \"tiers\" must be a list of 1 to 5 tier names, top first");
    c->n_tiers = 0;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        ampr_tier t;
        if (!json_is_string(e) || ampr_tier_from_name(json_string_value(e), &t) != AMPR_OK ||
            t == AMPR_TIER_AUTO)
            return ampr__fail(err, AMPR_ERR_CONFIG,
                              "config: tiers[%zu] must be one of \"f32\", \"bf16\", \"fp16\", "
                              "\"int8\", \"nf4\"", i);
        for (int k = 0; k < c->n_tiers; k++)
            if (c->tiers[k] == t)
                return ampr__fail(err, AMPR_ERR_CONFIG, "config: tier \"%s\" is listed twice",
                                  json_string_value(e));
        c->tiers[c->n_tiers++] = t;
    }
    return AMPR_OK;
}

static ampr_status parse_kv(json_t *kv, ampr__config *c, ampr__err *err) {
    static const char *const keys[] = {"block_size", "arena_tokens", "arena_bytes", "dtype",
                                       "wait_ms", NULL};
    if (!json_is_object(kv)) return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"kv\" must be an object");
    AMPR__TRY(check_keys(kv, " in \"kv\"", keys, err));
    int64_t bs = c->kv_block_size;
    AMPR__TRY(get_int(kv, "block_size", 1, 4096, &bs, err));
    c->kv_block_size = (int32_t)bs;
    AMPR__TRY(get_int(kv, "arena_tokens", 1, (int64_t)1 << 40, &c->kv_arena_tokens, err));
    AMPR__TRY(get_int(kv, "arena_bytes", 1, (int64_t)1 << 50, &c->kv_arena_bytes, err));
    AMPR__TRY(get_int(kv, "wait_ms", 0, 24 * 3600 * 1000, &c->kv_wait_ms, err));
    if (c->kv_arena_tokens && c->kv_arena_bytes)
        return ampr__fail(err, AMPR_ERR_CONFIG,
                          "config: give \"kv.arena_tokens\" or \"kv.arena_bytes\", not both");
    json_t *dt = json_object_get(kv, "dtype");
    if (dt) {
        const char *s = json_string_value(dt);
        if (s && !strcmp(s, "f16")) c->kv_dtype = AMPR__KV_F16;
        else if (s && !strcmp(s, "f32")) c->kv_dtype = AMPR__KV_F32;
        else if (s && !strcmp(s, "q8")) c->kv_dtype = AMPR__KV_Q8;
        else return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"kv.dtype\" must be \"f32\", \"f16\" or \"q8\"");
    }
    return AMPR_OK;
}

static ampr_status parse_router(json_t *r, ampr__config *c, ampr__err *err) {
    static const char *const keys[] = {"thresholds", "system_weight", "weights", "bias", NULL};
    if (!json_is_object(r))
        return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"router\" must be an object");
    AMPR__TRY(check_keys(r, " in \"router\"", keys, err));
    json_t *th = json_object_get(r, "thresholds");
    if (th) {
        if (!json_is_array(th) || json_array_size(th) != 2 ||
            !json_is_number(json_array_get(th, 0)) || !json_is_number(json_array_get(th, 1)))
            return ampr__fail(err, AMPR_ERR_CONFIG,
                              "config: \"router.thresholds\" must be two numbers [t_low, t_high]");
        double a = json_number_value(json_array_get(th, 0)), b = json_number_value(json_array_get(th, 1));
        if (!(a >= 0 && a <= b && b <= 1))
            return ampr__fail(err, AMPR_ERR_CONFIG,
                              "config: \"router.thresholds\" must satisfy 0 <= t_low <= t_high <= 1");
        c->router.thresholds[0] = (float)a;
        c->router.thresholds[1] = (float)b;
    }
    json_t *w = json_object_get(r, "weights");
    if (w) {
        if (!json_is_array(w) || json_array_size(w) != AMPR__F_COUNT)
            return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"router.weights\" must be %d numbers",
                              AMPR__F_COUNT);
        for (int i = 0; i < AMPR__F_COUNT; i++) {
            json_t *e = json_array_get(w, (size_t)i);
            double x = json_number_value(e);
            if (!json_is_number(e) || !isfinite(x) || fabs(x) > 1e4)
                return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"router.weights\"[%d] is not a sane number", i);
            c->router.weights[i] = (float)x;
        }
    }
    json_t *b = json_object_get(r, "bias");
    if (b) {
        double x = json_number_value(b);
        if (!json_is_number(b) || !isfinite(x) || fabs(x) > 1e4)
            return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"router.bias\" must be a number");
        c->router.bias = (float)x;
    }
    json_t *sw = json_object_get(r, "system_weight");
    if (sw) {
        double x = json_number_value(sw);
        if (!json_is_number(sw) || x < 0 || x > 1)
            return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"router.system_weight\" must be in [0, 1]");
        c->router.system_weight = (float)x;
    }
    return AMPR_OK;
}

static ampr_status get_float(json_t *obj, const char *key, double lo, double hi, float *out,
                             ampr__err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return AMPR_OK;
    double x = json_number_value(v);
    if (!json_is_number(v) || !(x >= lo && x <= hi))
        return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"%s\" must be a number in [%g, %g]", key,
                          lo, hi);
    *out = (float)x;
    return AMPR_OK;
}

static ampr_status get_i32(json_t *obj, const char *key, int32_t lo, int32_t hi, int32_t *out,
                           ampr__err *err) {
    int64_t x = *out;
    AMPR__TRY(get_int(obj, key, lo, hi, &x, err));
    *out = (int32_t)x;
    return AMPR_OK;
}

static ampr_status get_bool(json_t *obj, const char *key, int *out, ampr__err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return AMPR_OK;
    if (!json_is_boolean(v))
        return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"%s\" must be true or false", key);
    *out = json_is_true(v);
    return AMPR_OK;
}

static ampr_status parse_fallback(json_t *o, ampr__fallback_config *f, ampr__err *err) {
    static const char *const keys[] = {"enabled", "entropy_max", "min_tokens", "repeat_ngram",
                                       "repeat_count", "repeat_window", "check_every",
                                       "check_window", "kl_max", "restart", NULL};
    if (!json_is_object(o))
        return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"fallback\" must be an object");
    AMPR__TRY(check_keys(o, " in \"fallback\"", keys, err));
    AMPR__TRY(get_bool(o, "enabled", &f->enabled, err));
    AMPR__TRY(get_bool(o, "restart", &f->restart, err));
    AMPR__TRY(get_float(o, "entropy_max", 0, 100, &f->entropy_max, err));
    AMPR__TRY(get_float(o, "kl_max", 0, 100, &f->kl_max, err));
    AMPR__TRY(get_i32(o, "min_tokens", 0, 1 << 20, &f->min_tokens, err));
    AMPR__TRY(get_i32(o, "repeat_ngram", 0, 64, &f->repeat_ngram, err));
    AMPR__TRY(get_i32(o, "repeat_count", 2, 1 << 20, &f->repeat_count, err));
    AMPR__TRY(get_i32(o, "repeat_window", 1, 1 << 20, &f->repeat_window, err));
    AMPR__TRY(get_i32(o, "check_every", 0, 1 << 20, &f->check_every, err));
    AMPR__TRY(get_i32(o, "check_window", 1, 256, &f->check_window, err));
    return AMPR_OK;
}

void ampr__config_free(ampr__config *c) {
    for (int m = 0; m < AMPR__MM_COUNT; m++) {
        ampr__free(c->calib_stats.absmax[m]);
        c->calib_stats.absmax[m] = NULL;
        c->calib_len[m] = 0;
    }
}

/* "int8": {"alpha": a, "act_absmax": {"qkv": [[...]...], "o": ..., "gu": ..., "down": ...}}
 * Layer and width counts are checked against the model when tiers are built. */
static ampr_status parse_int8_calib(json_t *o, ampr__config *c, const char *path, ampr__err *err) {
    static const char *const names[AMPR__MM_COUNT] = {"qkv", "o", "gu", "down"};
    json_t *alpha = json_object_get(o, "alpha"), *am = json_object_get(o, "act_absmax");
    if (!json_is_number(alpha) || !json_is_object(am) || json_number_value(alpha) <= 0 ||
        json_number_value(alpha) >= 1)
        return ampr__fail(err, AMPR_ERR_CONFIG,
                          "calibration %s: \"int8\" needs \"alpha\" in (0,1) and \"act_absmax\"", path);
    c->smooth_alpha = (float)json_number_value(alpha);
    for (int m = 0; m < AMPR__MM_COUNT; m++) {
        json_t *layers = json_object_get(am, names[m]);
        if (!json_is_array(layers) || json_array_size(layers) == 0)
            return ampr__fail(err, AMPR_ERR_CONFIG, "calibration %s: act_absmax.%s must be a list of layers",
                              path, names[m]);
        size_t width = json_array_size(json_array_get(layers, 0)), total = 0;
        if (width == 0 || width > (1u << 20) || json_array_size(layers) > (1u << 16))
            return ampr__fail(err, AMPR_ERR_CONFIG, "calibration %s: act_absmax.%s has a bad shape", path,
                              names[m]);
        float *v = ampr__alloc_array(json_array_size(layers) * width, sizeof(float), err);
        if (!v) return AMPR_ERR_NOMEM;
        c->calib_stats.absmax[m] = v;
        size_t i;
        json_t *row;
        json_array_foreach(layers, i, row) {
            if (!json_is_array(row) || json_array_size(row) != width)
                return ampr__fail(err, AMPR_ERR_CONFIG, "calibration %s: act_absmax.%s[%zu] has the wrong length",
                                  path, names[m], i);
            for (size_t j = 0; j < width; j++) {
                double x = json_number_value(json_array_get(row, j));
                if (!json_is_number(json_array_get(row, j)) || !(x >= 0) || !isfinite(x))
                    return ampr__fail(err, AMPR_ERR_CONFIG, "calibration %s: act_absmax.%s[%zu][%zu] is not >= 0",
                                      path, names[m], i, j);
                v[total++] = (float)x;
            }
        }
        c->calib_len[m] = total;
    }
    return AMPR_OK;
}

/* A file written by `ampr calibrate`: router weights and thresholds, the
 * fallback tolerance, and INT8 activation ranges. Keys given directly in the
 * config override the file's. */
static ampr_status load_calibration(const char *path, ampr__config *c, ampr__err *err) {
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return ampr__fail(err, AMPR_ERR_CONFIG, "calibration file %s: %s (line %d)", path, je.text, je.line);
    ampr_status st = AMPR_OK;
    json_t *v;
    if (!json_is_object(root) || json_integer_value(json_object_get(root, "version")) != 1)
        st = ampr__fail(err, AMPR_ERR_CONFIG, "calibration file %s: not a version 1 calibration object", path);
    if (!st && (v = json_object_get(root, "router"))) {
        json_t *r = json_deep_copy(v);
        json_object_del(r, "fitted");
        st = r ? parse_router(r, c, err) : ampr__fail(err, AMPR_ERR_NOMEM, "out of memory");
        json_decref(r);
    }
    if (!st && (v = json_object_get(root, "fallback")) && json_is_object(v)) {
        json_t *k = json_object_get(v, "kl_max");
        double x = json_number_value(k);
        if (k && (!json_is_number(k) || !(x >= 0 && x <= 100)))
            st = ampr__fail(err, AMPR_ERR_CONFIG, "calibration file %s: fallback.kl_max must be in [0, 100]", path);
        else if (k)
            c->fallback.kl_max = (float)x;
    }
    if (!st && (v = json_object_get(root, "int8"))) st = parse_int8_calib(v, c, path, err);
    json_decref(root);
    return st;
}

static int hex_digit(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* "gpus", "tp_allreduce", "tp_rank", "tp_id", "tp_timeout_ms": where the tensor-parallel ranks
 * run (the CUDA backend; see ampr.h). Checked against each other here, against
 * the GPUs found when the backend opens. */
static ampr_status parse_tp(json_t *root, ampr__config *c, ampr__err *err) {
    json_t *v;
    if ((v = json_object_get(root, "gpus"))) {
        if (!json_is_array(v) || json_array_size(v) < 1 || json_array_size(v) > AMPR__TP_MAX)
            return ampr__fail(err, AMPR_ERR_CONFIG,
                              "config: \"gpus\" must be a list of 1 to %d GPU ids", AMPR__TP_MAX);
        size_t i;
        json_t *g;
        json_array_foreach(v, i, g) {
            if (!json_is_integer(g) || json_integer_value(g) < 0 || json_integer_value(g) > 1023)
                return ampr__fail(err, AMPR_ERR_CONFIG,
                                  "config: \"gpus\"[%zu] must be a GPU id (an integer 0..1023)", i);
            c->gpus[i] = (int32_t)json_integer_value(g);
        }
        c->n_gpus = (int)json_array_size(v);
    }
    if ((v = json_object_get(root, "tp_allreduce"))) {
        const char *s = json_string_value(v);
        if (s && !strcmp(s, "auto")) c->tp_allreduce = 0;
        else if (s && !strcmp(s, "nccl")) c->tp_allreduce = 1;
        else if (s && !strcmp(s, "copy")) c->tp_allreduce = 2;
        else return ampr__fail(err, AMPR_ERR_CONFIG,
                               "config: \"tp_allreduce\" must be \"auto\", \"nccl\" or \"copy\"");
    }
    json_t *rank = json_object_get(root, "tp_rank"), *id = json_object_get(root, "tp_id");
    if (!rank != !id)
        return ampr__fail(err, AMPR_ERR_CONFIG,
                          "config: \"tp_rank\" and \"tp_id\" go together (one rank per process)");
    if (rank) {
        int64_t x = 0;
        AMPR__TRY(get_int(root, "tp_rank", 0, AMPR__TP_MAX - 1, &x, err));
        if (x >= c->tp_size)
            return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"tp_rank\" %lld is not below \"tp_size\" %d",
                              (long long)x, c->tp_size);
        const char *s = json_string_value(id);
        if (!s || strlen(s) != AMPR_TP_ID_LEN)
            return ampr__fail(err, AMPR_ERR_CONFIG,
                              "config: \"tp_id\" must be the %d hex characters of ampr_tp_id_new()",
                              AMPR_TP_ID_LEN);
        for (size_t i = 0; i < AMPR_TP_ID_LEN / 2; i++) {
            int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return ampr__fail(err, AMPR_ERR_CONFIG,
                                  "config: \"tp_id\" has a non-hex character at %zu",
                                  hi < 0 ? 2 * i : 2 * i + 1);
            c->tp_id[i] = (unsigned char)(hi << 4 | lo);
        }
        c->tp_rank = (int)x;
        if (json_object_get(root, "tp_timeout_ms"))
            AMPR__TRY(get_int(root, "tp_timeout_ms", 0, 86400000, &c->tp_timeout_ms, err));
        if (c->device != 2)
            return ampr__fail(err, AMPR_ERR_CONFIG,
                              "config: \"tp_rank\" (one rank per process) needs \"device\": \"cuda\"");
    }
    if (!rank && json_object_get(root, "tp_timeout_ms"))
        return ampr__fail(err, AMPR_ERR_CONFIG,
                          "config: \"tp_timeout_ms\" applies to one rank per process (\"tp_rank\")");
    int want = c->tp_rank >= 0 ? 1 : c->tp_size;
    if (c->n_gpus && c->n_gpus != want)
        return ampr__fail(err, AMPR_ERR_CONFIG,
                          "config: \"gpus\" lists %d GPUs for %d rank%s in this process", c->n_gpus,
                          want, want == 1 ? "" : "s");
    return AMPR_OK;
}

static ampr_status parse_root(json_t *root, ampr__config *c, ampr__err *err) {
    static const char *const keys[] = {"tiers", "threads", "context_length", "kv", "device",
                                       "router", "fallback", "calibration", "nf4", "tp_size",
                                       "gpus", "tp_allreduce", "tp_rank", "tp_id", "tp_timeout_ms", NULL};
    if (!json_is_object(root))
        return ampr__fail(err, AMPR_ERR_CONFIG, "config: the top level must be a JSON object");
    AMPR__TRY(check_keys(root, "", keys, err));
    json_t *v;
    if ((v = json_object_get(root, "calibration"))) {
        if (!json_is_string(v))
            return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"calibration\" must be a file path");
        AMPR__TRY(load_calibration(json_string_value(v), c, err));
    }
    if ((v = json_object_get(root, "tiers"))) AMPR__TRY(parse_tiers(v, c, err));
    int64_t x = c->threads;
    AMPR__TRY(get_int(root, "threads", 0, 256, &x, err));
    c->threads = (int)x;
    x = 0;
    AMPR__TRY(get_int(root, "context_length", 1, (int64_t)1 << 24, &x, err));
    c->context_length = (int32_t)x;
    x = c->tp_size; /* divisibility by the model's heads is checked when tiers are built */
    AMPR__TRY(get_int(root, "tp_size", 1, AMPR__TP_MAX, &x, err));
    c->tp_size = (int)x;
    if ((v = json_object_get(root, "kv"))) AMPR__TRY(parse_kv(v, c, err));
    if ((v = json_object_get(root, "router"))) AMPR__TRY(parse_router(v, c, err));
    if ((v = json_object_get(root, "fallback"))) AMPR__TRY(parse_fallback(v, &c->fallback, err));
    if ((v = json_object_get(root, "nf4"))) {
        static const char *const nkeys[] = {"double_quant", "activations", NULL};
        if (!json_is_object(v)) return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"nf4\" must be an object");
        AMPR__TRY(check_keys(v, " in \"nf4\"", nkeys, err));
        AMPR__TRY(get_bool(v, "double_quant", &c->nf4_double_quant, err));
        json_t *a = json_object_get(v, "activations");
        if (a) {
            const char *s = json_string_value(a);
            if (s && !strcmp(s, "fp32")) c->nf4_bf16_act = 0;
            else if (s && !strcmp(s, "bf16")) c->nf4_bf16_act = 1;
            else return ampr__fail(err, AMPR_ERR_CONFIG,
                                   "config: \"nf4\": \"activations\" must be \"fp32\" or \"bf16\"");
        }
    }
    if ((v = json_object_get(root, "device"))) {
        const char *s = json_string_value(v);
        if (s && !strcmp(s, "cpu")) c->device = 0;
        else if (s && !strcmp(s, "auto")) c->device = 1;
        else if (s && !strcmp(s, "cuda")) c->device = 2;
        else return ampr__fail(err, AMPR_ERR_CONFIG, "config: \"device\" must be \"cpu\", \"auto\" or \"cuda\"");
    }
    return parse_tp(root, c, err); /* after "device" and "tp_size" */
}

ampr_status ampr__config_parse(const char *json, ampr__config *c, ampr__err *err) {
    ampr__config_defaults(c);
    if (!json) return AMPR_OK;
    json_error_t je;
    int oom;
    json_t *root = ampr__json_parse(json, strlen(json), JSON_REJECT_DUPLICATES, &je, &oom);
    if (oom)
        return ampr__fail(err, AMPR_ERR_NOMEM, "config: out of memory parsing the JSON");
    if (!root)
        return ampr__fail(err, AMPR_ERR_CONFIG, "config: invalid JSON at line %d column %d: %s",
                          je.line, je.column, je.text);
    ampr_status st = parse_root(root, c, err);
    json_decref(root);
    return st;
}
