/*
 * api.c -- the public entry points: argument checks, error recording, and
 * dispatch into the modules. Nothing here computes; it checks and delegates.
 *
 * Error messages: internal calls fill an ampr__err; record() copies the
 * message into thread-local storage tagged with the context, which is what
 * ampr_errmsg() returns, so concurrent requests never see each other's
 * messages.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend/backend.h"
#include "engine.h"
#include "generate.h"
#if AMPR_HAVE_CUDA
#include "../cuda/ampr_cuda.h"
#endif

/* ---- version, names, _init ---------------------------------------------- */

AMPR_API const char *ampr_version(void) { return AMPR_VERSION_STRING; }
AMPR_API uint32_t ampr_version_number(void) { return AMPR_VERSION_NUMBER; }

static const char *const k_tier_names[AMPR_TIER_COUNT] = {"auto", "fp16", "int8", "nf4", "f32", "bf16"};

AMPR_API const char *ampr_tier_name(ampr_tier tier) {
    return ((unsigned)tier < AMPR_TIER_COUNT) ? k_tier_names[tier] : "?";
}

AMPR_API ampr_status ampr_tier_from_name(const char *name, ampr_tier *out) {
    if (!name || !out) return AMPR_ERR_INVALID_ARG;
    for (int i = 0; i < AMPR_TIER_COUNT; i++)
        if (!strcmp(name, k_tier_names[i])) {
            *out = (ampr_tier)i;
            return AMPR_OK;
        }
    return AMPR_ERR_INVALID_ARG;
}

/* The _init_sized functions: defaults for exactly `size` bytes of the
 * caller's struct (which may be older and smaller, or newer and larger, than
 * this library's), and struct_size = size. */
static void init_sized(void *p, size_t size, const void *defaults, size_t lib_size) {
    if (!p || size < sizeof(uint32_t)) return;
    memset(p, 0, size);
    memcpy(p, defaults, AMPR__MIN(size, lib_size));
    *(uint32_t *)p = (uint32_t)(size > UINT32_MAX ? UINT32_MAX : size);
}

AMPR_API void ampr_open_params_init_sized(ampr_open_params *p, size_t size) {
    ampr_open_params d;
    memset(&d, 0, sizeof d);
    init_sized(p, size, &d, sizeof d);
}

AMPR_API void ampr_model_info_init_sized(ampr_model_info *info, size_t size) {
    ampr_model_info d;
    memset(&d, 0, sizeof d);
    init_sized(info, size, &d, sizeof d);
}

AMPR_API void ampr_tier_info_init_sized(ampr_tier_info *info, size_t size) {
    ampr_tier_info d;
    memset(&d, 0, sizeof d);
    init_sized(info, size, &d, sizeof d);
}

AMPR_API void ampr_route_result_init_sized(ampr_route_result *r, size_t size) {
    ampr_route_result d;
    memset(&d, 0, sizeof d);
    init_sized(r, size, &d, sizeof d);
}

AMPR_API void ampr_gen_params_init_sized(ampr_gen_params *p, size_t size) {
    ampr_gen_params d;
    memset(&d, 0, sizeof d);
    d.tier = AMPR_TIER_AUTO;
    d.max_tokens = 256;
    d.temperature = 0.8f;
    d.top_k = 40;
    d.top_p = 0.95f;
    d.repetition_penalty = 1.0f;
    d.repetition_last_n = 64;
    d.seed = 0x5eed;
    d.add_bos = 1;
    d.fallback = 1;
    init_sized(p, size, &d, sizeof d);
}

/* ---- errors ------------------------------------------------------------- */

static _Thread_local const ampr_ctx *tl_err_ctx;
static _Thread_local char tl_err_msg[AMPR__ERRMSG_MAX];

static ampr_status record(const ampr_ctx *c, ampr__err *e, ampr_status st) {
    if (st == AMPR_OK || st == AMPR_ERR_CANCELLED) {
        if (st == AMPR_ERR_CANCELLED && tl_err_ctx == c) tl_err_msg[0] = '\0';
        return st;
    }
    tl_err_ctx = c;
    snprintf(tl_err_msg, sizeof tl_err_msg, "%s", e->msg[0] ? e->msg : ampr_strerror(st));
    return st;
}

AMPR_API const char *ampr_errmsg(const ampr_ctx *ctx) {
    if (!ctx) return "no context";
    if (tl_err_ctx == ctx) return tl_err_msg;
    return ctx->open_err.msg;
}

/* ---- open / close ------------------------------------------------------- */

static ampr_status build_rope(ampr_ctx *c, ampr__err *err) {
    const ampr__hparams *hp = &c->hp;
    int32_t half = hp->head_dim / 2;
    size_t n = (size_t)hp->context_length * (size_t)half;
    c->rope_cos = ampr__alloc_array(n, sizeof(float), err);
    c->rope_sin = ampr__alloc_array(n, sizeof(float), err);
    if (!c->rope_cos || !c->rope_sin) return AMPR_ERR_NOMEM;
    for (int32_t i = 0; i < half; i++) {
        /* the same fp32 arithmetic as the reference run.c */
        float freq = 1.0f / powf(hp->rope_theta, (float)(2 * i) / (float)hp->head_dim);
        if (hp->rope_llama3) { /* Llama 3.1 frequency scaling */
            float lo_wl = (float)hp->rope_orig_context / hp->rope_low_freq_factor;
            float hi_wl = (float)hp->rope_orig_context / hp->rope_high_freq_factor;
            float wl = 2.0f * (float)M_PI / freq;
            if (wl > lo_wl) {
                freq /= hp->rope_factor;
            } else if (wl >= hi_wl) {
                float smooth = ((float)hp->rope_orig_context / wl - hp->rope_low_freq_factor) /
                               (hp->rope_high_freq_factor - hp->rope_low_freq_factor);
                freq = (1.0f - smooth) * freq / hp->rope_factor + smooth * freq;
            }
        }
        for (int32_t p = 0; p < hp->context_length; p++) {
            float val = (float)p * freq;
            c->rope_cos[(size_t)p * half + i] = cosf(val);
            c->rope_sin[(size_t)p * half + i] = sinf(val);
        }
    }
    return AMPR_OK;
}

/* "device": the CPU backend always works; "auto" falls back to it with a
 * note, "cuda" insists. Before loading: decide whether to try the GPU
 * (*want_cuda); the backend itself opens once the tiers exist (open_device). */
static ampr_status choose_device(ampr_ctx *c, int *want_cuda, ampr__err *err) {
    snprintf(c->device, sizeof c->device, "cpu");
    *want_cuda = 0;
    if (c->cfg.device == 0) return AMPR_OK;
    if (ampr__backend_test_open) { /* tests: a stand-in device */
        *want_cuda = 1;
        return AMPR_OK;
    }
    int n_dev = 0;
    char why[AMPR__ERRMSG_MAX] = "this build has no CUDA backend (nvcc was not found)";
#if AMPR_HAVE_CUDA
    ampr__err derr = {0};
    if (ampr__cuda_device_count(&n_dev, &derr) != AMPR_OK)
        snprintf(why, sizeof why, "CUDA: %.400s", derr.msg);
    else if (n_dev == 0)
        snprintf(why, sizeof why, "no CUDA device or driver");
    else {
        *want_cuda = 1;
        return AMPR_OK;
    }
#endif
    if (c->cfg.device == 1) {
        snprintf(c->device, sizeof c->device, "cpu (auto: %.80s)", why);
        return AMPR_OK;
    }
    return ampr__fail(err, n_dev > 0 ? AMPR_ERR_UNSUPPORTED : AMPR_ERR_NO_DEVICE,
                      "config asks for \"device\": \"cuda\": %s", why);
}

/* The GPU failed (to open, or to take a tier): "auto" goes on on the CPU
 * with a note saying why (AMPR_OK), "cuda" fails the open. */
static ampr_status device_failed(ampr_ctx *c, ampr_status st, const char *why, ampr__err *err) {
    if (c->cfg.device != 1)
        return ampr__fail(err, st, "config asks for \"device\": \"cuda\": %s", why);
    snprintf(c->device, sizeof c->device, "cpu (auto: %.70s)", why);
    return AMPR_OK;
}

/* Before the tiers are built: open the GPUs (their work buffers, no weights
 * yet). "auto" keeps the CPU (with a note) when that fails; "cuda" fails the
 * open. */
static ampr_status open_device(ampr_ctx *c, int want_cuda, ampr__err *err) {
    if (!want_cuda) return AMPR_OK;
    ampr__err derr = {0};
    char name[sizeof c->device];
    ampr_status st;
    if (ampr__backend_test_open)
        st = ampr__backend_test_open(c, &c->backend, name, sizeof name, &derr);
    else
#if AMPR_HAVE_CUDA
        st = ampr__backend_cuda_open(c, &c->backend, name, sizeof name, &derr);
#else
        return ampr__fail(err, AMPR_ERR_INTERNAL, "no CUDA backend in this build");
#endif
    if (st == AMPR_OK) {
        snprintf(c->device, sizeof c->device, "%s", name);
        return AMPR_OK;
    }
    return device_failed(c, st, derr.msg, err);
}

/* ampr__tiers_build's hook with a device backend: each tier goes to the
 * device as soon as it is built and its host copy is freed, so the host
 * holds one tier's weights at a time and none once open returns. */
typedef struct upload_state {
    ampr_status st; /* the first upload failure */
    ampr__err err;
} upload_state;

static ampr_status upload_tier(ampr_ctx *c, ampr__tier *t, void *user, ampr__err *err) {
    upload_state *u = user;
    u->st = ampr__backend_tier_upload(c, t, &u->err);
    if (u->st != AMPR_OK) return ampr__fail(err, u->st, "%s", u->err.msg);
    ampr__tier_drop_host(c, t);
    return AMPR_OK;
}

/* Build the tiers: on the host for the CPU, or streamed to the device. When
 * an upload fails, "cuda" fails the open and "auto" closes the device and
 * builds every tier again on the host (the freed ones are gone), with a note. */
static ampr_status build_tiers(ampr_ctx *c, ampr_progress_fn progress, void *user,
                               ampr__err *err) {
    if (!c->backend) return ampr__tiers_build(c, progress, user, NULL, NULL, err);
    upload_state u = {AMPR_OK, {0}};
    ampr__err berr = {0};
    ampr_status st = ampr__tiers_build(c, progress, user, upload_tier, &u, &berr);
    if (st == AMPR_OK) return AMPR_OK;
    if (u.st == AMPR_OK) return ampr__fail(err, st, "%s", berr.msg); /* not the device's fault */
    AMPR__TRY(device_failed(c, st, u.err.msg, err));
    ampr__backend_close(c);
    ampr__tiers_free(c);
    return ampr__tiers_build(c, progress, user, NULL, NULL, err);
}

static ampr_status open_ctx(ampr_ctx *c, const char *path, const char *config,
                            const ampr_open_params *params, ampr__err *err) {
    ampr_progress_fn progress = params ? params->progress : NULL;
    void *user = params ? params->progress_user : NULL;
    c->open_progress = progress; /* (a tensor-parallel join asks it while it waits) */
    c->open_user = user;
    if (!path) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "model_path is NULL");
    AMPR__TRY(ampr__config_parse(config, &c->cfg, err));
    int want_cuda = 0;
    AMPR__TRY(choose_device(c, &want_cuda, err));
    if (progress && progress(user, "load", 0.0f))
        return ampr__fail(err, AMPR_ERR_CANCELLED, "open cancelled by the progress callback");
    AMPR__TRY(ampr__model_load(path, 1, &c->model, err));
    c->hp = c->model->hp;
    if (c->cfg.context_length > 0 && c->cfg.context_length < c->hp.context_length)
        c->hp.context_length = c->cfg.context_length;
    if (progress && progress(user, "load", 1.0f))
        return ampr__fail(err, AMPR_ERR_CANCELLED, "open cancelled by the progress callback");

    int threads = c->cfg.threads > 0 ? c->cfg.threads : ampr__cpu_count();
    AMPR__TRY(ampr__pool_new(threads, &c->pool, err));
    AMPR__TRY(build_rope(c, err));
    AMPR__TRY(open_device(c, want_cuda, err));
    ampr_status st = build_tiers(c, progress, user, err);
    /* the tiers hold their own weights: the checkpoint's mapping goes (its
     * pages no longer count toward the process's memory) */
    if (st == AMPR_OK) ampr__model_drop_weights(c->model);
#if AMPR_HAVE_CUDA
    if (c->backend && c->cfg.tp_rank >= 0) { /* the group opens together or not at all */
        int all_ok = 0;
        ampr__err gerr = {0};
        ampr_status gst = ampr__backend_cuda_group_ok(c, st == AMPR_OK, &all_ok, &gerr);
        if (st == AMPR_OK && gst != AMPR_OK) return ampr__fail(err, gst, "%s", gerr.msg);
        if (st == AMPR_OK && !all_ok)
            return ampr__fail(err, AMPR_ERR_BACKEND,
                              "another rank of the tensor-parallel group failed to open "
                              "(this rank, %d of %d, opened)", c->cfg.tp_rank, c->cfg.tp_size);
    }
#endif
    return st;
}

AMPR_API ampr_status ampr_open_ex(const char *model_path, const char *config_json,
                                  const ampr_open_params *params, ampr_ctx **out) {
    if (!out) return AMPR_ERR_INVALID_ARG;
    *out = NULL;
    ampr_ctx *c = ampr__calloc(1, sizeof *c);
    if (!c) return AMPR_ERR_NOMEM;
    pthread_mutex_init(&c->compute_lock, NULL);
    ampr__metrics_init(&c->metrics);
    const char *fl = getenv("AMPR_FULL_LOGITS");
    c->full_logits = fl && !strcmp(fl, "1");
    if (params && params->struct_size < sizeof(uint32_t)) params = NULL;
    ampr_status st = open_ctx(c, model_path, config_json, params, &c->open_err);
    c->open_progress = NULL; /* the caller's callback is for the open only */
    c->open_user = NULL;
    if (st != AMPR_OK) {
        /* keep only the message: free everything else now */
        ampr__backend_close(c);
        ampr__tiers_free(c);
        ampr__pool_free(c->pool);
        c->pool = NULL;
        ampr__model_free(c->model);
        c->model = NULL;
        ampr__free(c->rope_cos);
        ampr__free(c->rope_sin);
        c->rope_cos = c->rope_sin = NULL;
        ampr__config_free(&c->cfg);
        if (!c->open_err.msg[0]) snprintf(c->open_err.msg, sizeof c->open_err.msg, "%s", ampr_strerror(st));
        c->open_err.status = st;
    } else {
        c->ready = 1;
    }
    *out = c;
    return st;
}

AMPR_API ampr_status ampr_tp_id_new(char *out, size_t out_len) {
    if (!out || out_len < AMPR_TP_ID_LEN + 1) {
        if (out && out_len) out[0] = '\0';
        return AMPR_ERR_INVALID_ARG;
    }
    out[0] = '\0';
#if AMPR_HAVE_CUDA
    unsigned char id[AMPR_TP_ID_LEN / 2];
    ampr__err err = {0};
    ampr_status st = ampr__cuda_comm_id_new(id, &err);
    if (st != AMPR_OK) return st;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof id; i++) {
        out[2 * i] = hex[id[i] >> 4];
        out[2 * i + 1] = hex[id[i] & 15];
    }
    out[AMPR_TP_ID_LEN] = '\0';
    return AMPR_OK;
#else
    return AMPR_ERR_UNSUPPORTED;
#endif
}

AMPR_API ampr_status ampr_open(const char *model_path, const char *config_json, ampr_ctx **out) {
    return ampr_open_ex(model_path, config_json, NULL, out);
}

AMPR_API void ampr_close(ampr_ctx *ctx) {
    if (!ctx) return;
    if (tl_err_ctx == ctx) tl_err_ctx = NULL;
    ampr__backend_close(ctx);
    ampr__tiers_free(ctx);
    ampr__pool_free(ctx->pool);
    ampr__model_free(ctx->model);
    ampr__free(ctx->rope_cos);
    ampr__free(ctx->rope_sin);
    ampr__config_free(&ctx->cfg);
    pthread_mutex_destroy(&ctx->compute_lock);
    ampr__free(ctx);
}

/* A context whose open failed answers every call with this. */
static ampr_status check_ready(const ampr_ctx *c, ampr__err *err) {
    if (!c) return ampr__fail(err, AMPR_ERR_INVALID_ARG, "context is NULL");
    if (!c->ready)
        return ampr__fail(err, AMPR_ERR_INVALID_ARG, "context failed to open: %s", c->open_err.msg);
    return AMPR_OK;
}

static int struct_ok(const void *p, size_t min) {
    return p && *(const uint32_t *)p >= min;
}

/* ---- information -------------------------------------------------------- */

AMPR_API ampr_status ampr_get_model_info(const ampr_ctx *ctx, ampr_model_info *info) {
    ampr__err err = {0};
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    if (!struct_ok(info, offsetof(ampr_model_info, format)))
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG,
                                            "info is NULL or not initialised with ampr_model_info_init"));
    uint32_t size = info->struct_size;
    ampr_model_info m;
    memset(&m, 0, sizeof m);
    const ampr__hparams *hp = &ctx->hp;
    m.struct_size = size;
    m.dim = hp->dim;
    m.hidden_dim = hp->hidden_dim;
    m.n_layers = hp->n_layers;
    m.n_heads = hp->n_heads;
    m.n_kv_heads = hp->n_kv_heads;
    m.head_dim = hp->head_dim;
    m.vocab_size = hp->vocab_size;
    m.context_length = hp->context_length;
    m.n_params = ctx->model->n_params;
    m.bos_id = ampr__tok_bos(ctx->model->tok);
    m.eos_id = ampr__tok_eos(ctx->model->tok);
    m.n_tiers = ctx->n_tiers;
    for (int i = 0; i < ctx->n_tiers; i++) m.tiers[i] = ctx->tiers[i].id;
    snprintf(m.format, sizeof m.format, "%s", ctx->model->format);
    snprintf(m.device, sizeof m.device, "%s", ctx->device);
    memcpy(info, &m, AMPR__MIN(size, sizeof m));
    return AMPR_OK;
}

AMPR_API ampr_status ampr_get_tier_info(const ampr_ctx *ctx, ampr_tier tier, ampr_tier_info *info) {
    ampr__err err = {0};
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    if (!struct_ok(info, offsetof(ampr_tier_info, kv_pages_used) + sizeof(int32_t)))
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG,
                                            "info is NULL or not initialised with ampr_tier_info_init"));
    ampr__tier *t = ampr__ctx_tier((ampr_ctx *)ctx, tier);
    if (!t)
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_TIER_UNAVAILABLE,
                                            "tier %s is not resident", ampr_tier_name(tier)));
    uint32_t size = info->struct_size;
    ampr_tier_info ti;
    memset(&ti, 0, sizeof ti);
    ti.struct_size = size;
    ti.tier = tier;
    ti.weight_bytes = t->weight_bytes;
    ti.kv_bytes = ampr__kv_bytes(t->kv);
    ti.kv_block_size = ampr__kv_block_size(t->kv);
    ti.kv_pages_total = ampr__kv_pages_total(t->kv);
    ti.kv_pages_used = ampr__kv_pages_used(t->kv);
    const char *k = ctx->backend ? "cuda" : ampr__quant_simd_name();
    snprintf(ti.kernels, sizeof ti.kernels, "%s%s", k,
             !ctx->backend && t->qt == ampr__qtraits_nf4_bf16(t->qtype) ? "-bf16" : "");
    memcpy(info, &ti, AMPR__MIN((size_t)size, sizeof ti));
    return AMPR_OK;
}

/* ---- tokenization ------------------------------------------------------- */

AMPR_API ampr_status ampr_tokenize(ampr_ctx *ctx, const char *text, size_t len, int add_bos,
                                   int32_t *ids, size_t cap, size_t *n_out) {
    ampr__err err = {0};
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    if ((!text && len) || (!ids && cap) || !n_out)
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG, "NULL text, ids or n_out"));
    if (len == AMPR_NUL_TERMINATED) len = strlen(text);
    int32_t *tmp = NULL;
    size_t n = 0;
    st = ampr__tok_encode(ctx->model->tok, text ? text : "", len, add_bos, &tmp, &n, &err);
    if (st) return record(ctx, &err, st);
    *n_out = n;
    if (n > cap) {
        ampr__free(tmp);
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_BUFFER_TOO_SMALL,
                                            "%zu ids needed, room for %zu", n, cap));
    }
    if (n) memcpy(ids, tmp, n * sizeof *ids);
    ampr__free(tmp);
    return AMPR_OK;
}

AMPR_API ampr_status ampr_detokenize(ampr_ctx *ctx, const int32_t *ids, size_t n, char *buf,
                                     size_t cap, size_t *len_out) {
    ampr__err err = {0};
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    if ((!ids && n) || (!buf && cap) || !len_out)
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG, "NULL ids, buf or len_out"));
    const ampr__tokenizer *tok = ctx->model->tok;
    int32_t nv = ampr__tok_n_vocab(tok);
    ampr__detok d;
    ampr__detok_init(&d);
    char piece[AMPR__DETOK_MAX_PIECE + 16];
    size_t total = 0;
    for (size_t i = 0; i <= n; i++) {
        size_t k;
        if (i < n) {
            if (ids[i] < 0 || ids[i] >= nv)
                return record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG,
                                                    "ids[%zu] = %d is out of range", i, ids[i]));
            k = ampr__detok_push(tok, &d, ids[i], piece, sizeof piece);
        } else {
            k = ampr__detok_flush(&d, piece, sizeof piece);
        }
        if (total + k <= cap) memcpy(buf + total, piece, k);
        total += k;
    }
    *len_out = total;
    if (total < cap) buf[total] = '\0';
    if (total > cap)
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_BUFFER_TOO_SMALL,
                                            "%zu bytes needed, room for %zu", total, cap));
    return AMPR_OK;
}

/* ---- routing and generation --------------------------------------------- */

AMPR_API ampr_status ampr_route(ampr_ctx *ctx, const char *prompt, size_t len, const char *system,
                                size_t system_len, ampr_route_result *out) {
    ampr__err err = {0};
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    /* the first release's struct ends with reason[]; later fields are appended */
    if ((!prompt && len) || !struct_ok(out, offsetof(ampr_route_result, reason) + sizeof out->reason))
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG,
                                            "NULL prompt, or out not initialised with ampr_route_result_init"));
    if (len == AMPR_NUL_TERMINATED) len = strlen(prompt);
    if (system && system_len == AMPR_NUL_TERMINATED) system_len = strlen(system);
    if (!ampr__utf8_valid(prompt ? prompt : "", len) || (system && !ampr__utf8_valid(system, system_len)))
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_BAD_UTF8, "the prompt or system text is not valid UTF-8"));
    ampr_route_result r;
    ampr_route_result_init(&r);
    ampr__route(ctx, prompt ? prompt : "", len, system, system ? system_len : 0, &r);
    uint32_t size = out->struct_size;
    memcpy((char *)out + sizeof(uint32_t), (const char *)&r + sizeof(uint32_t),
           AMPR__MIN((size_t)size, sizeof r) - sizeof(uint32_t));
    return AMPR_OK;
}

/* record() for ampr_generate(): also counts failures in the metrics. */
static ampr_status generate_record(ampr_ctx *ctx, ampr__err *err, ampr_status st) {
    ampr__metrics_failure(&ctx->metrics, st);
    return record(ctx, err, st);
}

AMPR_API ampr_status ampr_generate(ampr_ctx *ctx, const char *prompt, size_t len,
                                   const ampr_gen_params *params, ampr_result **out) {
    ampr__err err = {0};
    if (out) *out = NULL;
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    if (!prompt && len && len != AMPR_NUL_TERMINATED)
        return generate_record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG, "prompt is NULL"));
    if (!prompt) { prompt = ""; len = 0; }
    if (len == AMPR_NUL_TERMINATED) len = strlen(prompt);
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    if (params) {
        if (params->struct_size < offsetof(ampr_gen_params, user) + sizeof(void *))
            return generate_record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG,
                                                         "params not initialised with ampr_gen_params_init"));
        memcpy(&p, params, AMPR__MIN((size_t)params->struct_size, sizeof p));
        p.struct_size = sizeof p;
    }
    uint64_t passes = ampr__backend_cuda_passes(ctx);
    st = ampr__generate(ctx, prompt, len, &p, out, &err);
    if (st != AMPR_OK) ampr__backend_cuda_call_failed(ctx, st, passes);
    return generate_record(ctx, &err, st);
}

AMPR_API ampr_status ampr_logits(ampr_ctx *ctx, ampr_tier tier, const int32_t *ids, size_t n,
                                 float *logits, size_t cap) {
    ampr__err err = {0};
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    if ((!ids || !logits) && n)
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG, "NULL ids or logits"));
    ampr__tier *t = ampr__ctx_tier(ctx, tier);
    if (!t)
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_TIER_UNAVAILABLE,
                                            "tier %s is not resident", ampr_tier_name(tier)));
    if (n > (size_t)ctx->hp.context_length)
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_PROMPT_TOO_LONG,
                                            "%zu ids exceed the context window of %d", n,
                                            ctx->hp.context_length));
    if (cap / (size_t)ctx->hp.vocab_size < n)
        return record(ctx, &err, ampr__fail(&err, AMPR_ERR_BUFFER_TOO_SMALL,
                                            "logits needs %zu floats, room for %zu",
                                            n * (size_t)ctx->hp.vocab_size, cap));
    uint64_t passes = ampr__backend_cuda_passes(ctx);
    st = ampr__logits(ctx, t, ids, (int32_t)n, logits, &err);
    if (st != AMPR_OK) ampr__backend_cuda_call_failed(ctx, st, passes);
    return record(ctx, &err, st);
}

AMPR_API void ampr_result_free(ampr_result *r) {
    if (!r) return;
    ampr__free(r->text);
    ampr__free(r->tokens);
    ampr__free(r);
}

/* ---- metrics (lib/metrics) ------------------------------------------------ */

AMPR_API ampr_status ampr_metrics_text(ampr_ctx *ctx, char **out, size_t *len) {
    ampr__err err = {0};
    if (out) *out = NULL;
    if (len) *len = 0;
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    if (!out) return record(ctx, &err, ampr__fail(&err, AMPR_ERR_INVALID_ARG, "out is NULL"));
    /* gauges come from the arenas now; counters from ctx->metrics */
    ampr__metrics_tier_gauges g[AMPR_TIER_COUNT];
    for (int i = 0; i < ctx->n_tiers; i++) {
        const ampr__tier *t = &ctx->tiers[i];
        g[i].tier = t->id;
        g[i].weight_bytes = t->weight_bytes;
        g[i].kv_bytes = ampr__kv_bytes(t->kv);
        g[i].kv_pages_used = ampr__kv_pages_used(t->kv);
        g[i].kv_pages_total = ampr__kv_pages_total(t->kv);
    }
    st = ampr__metrics_expose(&ctx->metrics, g, ctx->n_tiers, out, len, &err);
    return record(ctx, &err, st);
}

AMPR_API ampr_status ampr_metrics_reset(ampr_ctx *ctx) {
    ampr__err err = {0};
    ampr_status st = check_ready(ctx, &err);
    if (st) return record(ctx, &err, st);
    ampr__metrics_reset(&ctx->metrics);
    return AMPR_OK;
}

AMPR_API void ampr_free(void *p) { ampr__free(p); }
