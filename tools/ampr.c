/*
 * ampr.c -- the `ampr` command-line program.
 *
 *   ampr run -m MODEL [-p PROMPT] [-n MAX_NEW] [--tier T] [--temp T] [--top-p P]
 *            [--top-k K] [--repeat-penalty R] [--repeat-last-n N] [--seed S] [--stop STR]...
 *            [--threads N] [--config JSON] [--quiet] [--metrics]
 *   ampr route -m MODEL -p PROMPT [--system TEXT] [--config JSON]
 *   ampr info -m MODEL [--config JSON]
 *   ampr tokenize -m MODEL -p TEXT [--no-bos]
 *   ampr convert LLAMA2C.bin TOKENIZER.bin OUT_DIR
 *   ampr convert --nf4 [--double-quant] HF_DIR OUT_DIR
 *   ampr eval -m MODEL -f TEXT        per-tier perplexity, KL and top-1 vs FP16
 *   ampr bench [-m MODEL | --shape S] per-tier prefill/decode tokens/s, memory
 *   ampr calibrate -m MODEL -f P -o C fit router + INT8 ranges, held-out table
 *   ampr gen-model OUT --shape S      write a model with random weights
 *
 * `run` writes the prompt and the generated text to stdout and nothing else;
 * progress, the tier, timings and tokens/s go to stderr. --metrics adds the
 * Prometheus text exposition (ampr_metrics_text) to stderr after the run;
 * with --quiet it is all that stderr gets, unless something fails.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ampr.h"
#include "engine.h"
#include "model/model.h"
#include "tools.h"

typedef struct opts {
    const char *model, *prompt, *system, *config, *tier;
    int max_new, top_k, threads, no_bos, quiet, metrics, repeat_last_n;
    float temp, top_p, repeat_penalty;
    unsigned long long seed;
    const char *stop[16];
    size_t n_stop;
} opts;

static void usage(FILE *f) {
    fputs("usage:\n"
          "  ampr run -m MODEL [-p PROMPT] [-n MAX_NEW] [--tier auto|f32|bf16|fp16|int8|nf4]\n"
          "           [--temp T] [--top-p P] [--top-k K] [--repeat-penalty R] [--repeat-last-n N]\n"
          "           [--seed S] [--stop STR]... [--threads N] [--config JSON] [--quiet] [--metrics]\n"
          "  ampr route -m MODEL -p PROMPT [--system TEXT] [--config JSON]\n"
          "  ampr info -m MODEL [--config JSON]\n"
          "  ampr tokenize -m MODEL -p TEXT [--no-bos]\n"
          "  ampr convert LLAMA2C.bin TOKENIZER.bin OUT_DIR\n"
          "  ampr convert --nf4 [--double-quant] HF_DIR OUT_DIR   (bitsandbytes 4-bit NF4)\n"
          "  ampr eval -m MODEL -f TEXT [--ctx N] [--max-tokens N] [--config JSON]\n"
          "  ampr bench [-m MODEL | --shape tiny|small|1b|8b] [--tiers LIST] [--prompt N] [--gen N]\n"
          "             [--threads N] [--concurrent N] [--device cpu|cuda|auto] [--nf4-act fp32|bf16]\n"
          "             [--tp N] [--gpus 0,1,...]\n"
          "  ampr calibrate -m MODEL -f PROMPTS.jsonl -o calib.json [--target-kl X] [--gen N]\n"
          "  ampr gen-model OUT [--shape tiny|small|1b|8b] [--format gguf|hf] [--dtype f32|f16|bf16]\n"
          "  ampr version\n"
          "MODEL is a GGUF file or a Hugging Face directory (config.json, *.safetensors,\n"
          "tokenizer.json). Without --config and with an explicit --tier, only that tier\n"
          "is built.\n",
          f);
}

static int parse_num(const char *s, double *out) {
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    return errno == 0 && end != s && *end == '\0';
}

/* Returns 0 on success, 2 on a usage error (after printing it). */
static int parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->max_new = 256;
    o->temp = 0.8f;
    o->top_p = 0.95f;
    o->top_k = 40;
    o->repeat_penalty = 1.0f;
    o->repeat_last_n = 64; /* the library's default; 0: the whole history */
    o->seed = 0x5eed;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d = 0;
#define NEED_VALUE()                                                   \
    do {                                                               \
        if (!v) { fprintf(stderr, "ampr: %s needs a value\n", a); return 2; } \
        i++;                                                           \
    } while (0)
#define NEED_NUMBER()                                                          \
    do {                                                                       \
        NEED_VALUE();                                                          \
        if (!parse_num(v, &d)) { fprintf(stderr, "ampr: %s: not a number: %s\n", a, v); return 2; } \
    } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEED_VALUE(); o->model = v; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { NEED_VALUE(); o->prompt = v; }
        else if (!strcmp(a, "--system")) { NEED_VALUE(); o->system = v; }
        else if (!strcmp(a, "--config")) { NEED_VALUE(); o->config = v; }
        else if (!strcmp(a, "--tier")) { NEED_VALUE(); o->tier = v; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--max-new")) { NEED_NUMBER(); o->max_new = (int)d; }
        else if (!strcmp(a, "--temp")) { NEED_NUMBER(); o->temp = (float)d; }
        else if (!strcmp(a, "--top-p")) { NEED_NUMBER(); o->top_p = (float)d; }
        else if (!strcmp(a, "--top-k")) { NEED_NUMBER(); o->top_k = (int)d; }
        else if (!strcmp(a, "--repeat-penalty")) { NEED_NUMBER(); o->repeat_penalty = (float)d; }
        else if (!strcmp(a, "--repeat-last-n")) { NEED_NUMBER(); o->repeat_last_n = (int)d; }
        else if (!strcmp(a, "--seed")) { NEED_NUMBER(); o->seed = (unsigned long long)d; }
        else if (!strcmp(a, "--threads")) { NEED_NUMBER(); o->threads = (int)d; }
        else if (!strcmp(a, "--stop")) {
            NEED_VALUE();
            if (o->n_stop == 16) { fputs("ampr: at most 16 --stop strings\n", stderr); return 2; }
            o->stop[o->n_stop++] = v;
        }
        else if (!strcmp(a, "--no-bos")) o->no_bos = 1;
        else if (!strcmp(a, "--quiet")) o->quiet = 1;
        else if (!strcmp(a, "--metrics")) o->metrics = 1;
        else { fprintf(stderr, "ampr: unknown option %s\n", a); usage(stderr); return 2; }
#undef NEED_VALUE
#undef NEED_NUMBER
    }
    if (!o->model) { fputs("ampr: -m MODEL is required\n", stderr); return 2; }
    return 0;
}

static int on_progress(void *user, const char *stage, float fraction) {
    (void)user;
    fprintf(stderr, "\rampr: loading %-12s %3d%%", stage, (int)(fraction * 100.0f + 0.5f));
    if (fraction >= 1.0f && strncmp(stage, "tier", 4) == 0) fputc('\n', stderr);
    return 0;
}

static ampr_ctx *open_model(const opts *o, int quiet) {
    char cfg[256];
    const char *config = o->config;
    int one_tier = o->tier && strcmp(o->tier, "auto") != 0;
    if (!config && (one_tier || o->threads)) {
        /* tier names are checked by the library, so a bad one fails cleanly */
        if (one_tier && strlen(o->tier) > 16) {
            fprintf(stderr, "ampr: unknown tier %s\n", o->tier);
            return NULL;
        }
        snprintf(cfg, sizeof cfg, "{\"threads\": %d%s%s%s}", o->threads,
                 one_tier ? ", \"tiers\": [\"" : "", one_tier ? o->tier : "", one_tier ? "\"]" : "");
        config = cfg;
    }
    ampr_open_params op;
    ampr_open_params_init(&op);
    if (!quiet) op.progress = on_progress;
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open_ex(o->model, config, &op, &ctx);
    if (st != AMPR_OK) {
        if (!quiet) fputc('\n', stderr);
        fprintf(stderr, "ampr: cannot open %s: %s (%s)\n", o->model, ampr_errmsg(ctx),
                ampr_status_name(st));
        ampr_close(ctx);
        return NULL;
    }
    return ctx;
}

static int on_token(void *user, const char *piece, size_t len, int32_t id) {
    (void)user;
    (void)id;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int cmd_run(const opts *o) {
    ampr_ctx *ctx = open_model(o, o->quiet);
    if (!ctx) return 1;
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.max_tokens = o->max_new;
    p.temperature = o->temp;
    p.top_p = o->top_p;
    p.top_k = o->top_k;
    p.repetition_penalty = o->repeat_penalty;
    p.repetition_last_n = o->repeat_last_n;
    p.seed = o->seed;
    p.stop = o->stop;
    p.n_stop = o->n_stop;
    p.add_bos = !o->no_bos;
    p.on_token = on_token;
    if (o->tier && ampr_tier_from_name(o->tier, &p.tier) != AMPR_OK) {
        fprintf(stderr, "ampr: unknown tier %s\n", o->tier);
        ampr_close(ctx);
        return 2;
    }
    const char *prompt = o->prompt ? o->prompt : "";
    fputs(prompt, stdout);
    fflush(stdout);
    ampr_result *res = NULL;
    ampr_status st = ampr_generate(ctx, prompt, AMPR_NUL_TERMINATED, &p, &res);
    fputc('\n', stdout);
    fflush(stdout);
    int rc = 0;
    if (st != AMPR_OK) {
        fprintf(stderr, "ampr: generation failed: %s (%s)\n", ampr_errmsg(ctx), ampr_status_name(st));
        rc = 1;
    } else if (!o->quiet) {
        static const char *const finish[] = {"length", "eos", "stop", "cancelled", "context", "error"};
        double decode_tps = res->n_tokens > 1 ? (double)(res->n_tokens - 1) / (res->decode_ms / 1e3) : 0;
        char tiers[160];
        if (res->escalated)
            snprintf(tiers, sizeof tiers, "%s -> %s at token %d (%s)", ampr_tier_name(res->tier_first),
                     ampr_tier_name(res->tier_final), res->escalation_token, res->escalation_reason);
        else
            snprintf(tiers, sizeof tiers, "%s", ampr_tier_name(res->tier_final));
        fprintf(stderr,
                "ampr: tier %s | prompt %d tokens, %.1f ms (%.1f tok/s) | generated %zu tokens, "
                "%.1f ms (%.1f tok/s) | finish %s\n",
                tiers, res->n_prompt_tokens, res->prefill_ms,
                res->n_prompt_tokens / (res->prefill_ms / 1e3), res->n_tokens, res->decode_ms,
                decode_tps, finish[res->finish]);
    }
    ampr_result_free(res);
    if (o->metrics) {
        char *text = NULL;
        size_t text_len = 0;
        st = ampr_metrics_text(ctx, &text, &text_len);
        if (st == AMPR_OK) {
            fwrite(text, 1, text_len, stderr);
        } else {
            fprintf(stderr, "ampr: metrics failed: %s (%s)\n", ampr_errmsg(ctx), ampr_status_name(st));
            rc = 1;
        }
        ampr_free(text);
    }
    ampr_close(ctx);
    return rc;
}

static int cmd_route(const opts *o) {
    if (!o->prompt) { fputs("ampr: route needs -p PROMPT\n", stderr); return 2; }
    ampr_ctx *ctx = open_model(o, 1);
    if (!ctx) return 1;
    ampr_route_result r;
    ampr_route_result_init(&r);
    ampr_status st = ampr_route(ctx, o->prompt, AMPR_NUL_TERMINATED, o->system,
                                o->system ? AMPR_NUL_TERMINATED : 0, &r);
    if (st == AMPR_OK) {
        static const char *const names[] = {"lexical_density", "code_markers", "math_operators",
                                            "digits", "length", "non_ascii"};
        printf("tier: %s\nscore: %.4f\n", ampr_tier_name(r.tier), r.score);
        for (int i = 0; i < 6; i++) printf("%s: %.4f\n", names[i], r.features[i]);
        printf("reason: %s\n", r.reason);
    } else {
        fprintf(stderr, "ampr: route failed: %s\n", ampr_errmsg(ctx));
    }
    ampr_close(ctx);
    return st == AMPR_OK ? 0 : 1;
}

static int cmd_info(const opts *o) {
    ampr_ctx *ctx = open_model(o, 1);
    if (!ctx) return 1;
    ampr_model_info mi;
    ampr_model_info_init(&mi);
    ampr_get_model_info(ctx, &mi);
    printf("format: %s\ndevice: %s\nparams: %llu\ndim: %d\nhidden_dim: %d\nlayers: %d\nheads: %d\nkv_heads: %d\n"
           "head_dim: %d\nvocab: %d\ncontext: %d\nbos: %d\neos: %d\n",
           mi.format, mi.device, (unsigned long long)mi.n_params, mi.dim, mi.hidden_dim, mi.n_layers, mi.n_heads,
           mi.n_kv_heads, mi.head_dim, mi.vocab_size, mi.context_length, mi.bos_id, mi.eos_id);
    for (int i = 0; i < mi.n_tiers; i++) {
        ampr_tier_info ti;
        ampr_tier_info_init(&ti);
        ampr_get_tier_info(ctx, mi.tiers[i], &ti);
        printf("tier %s: weights %llu bytes, kv arena %llu bytes (%d pages of %d tokens), "
               "kernels %s\n",
               ampr_tier_name(ti.tier), (unsigned long long)ti.weight_bytes,
               (unsigned long long)ti.kv_bytes, ti.kv_pages_total, ti.kv_block_size, ti.kernels);
    }
    ampr_close(ctx);
    return 0;
}

static int cmd_tokenize(const opts *o) {
    if (!o->prompt) { fputs("ampr: tokenize needs -p TEXT\n", stderr); return 2; }
    ampr_ctx *ctx = open_model(o, 1);
    if (!ctx) return 1;
    size_t n = 0;
    ampr_status st = ampr_tokenize(ctx, o->prompt, AMPR_NUL_TERMINATED, !o->no_bos, NULL, 0, &n);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (ids && (st == AMPR_OK || st == AMPR_ERR_BUFFER_TOO_SMALL))
        st = ampr_tokenize(ctx, o->prompt, AMPR_NUL_TERMINATED, !o->no_bos, ids, n, &n);
    if (st == AMPR_OK) {
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
        putchar('\n');
    } else {
        fprintf(stderr, "ampr: tokenize failed: %s\n", ampr_errmsg(ctx));
    }
    free(ids);
    ampr_close(ctx);
    return st == AMPR_OK ? 0 : 1;
}

/* ampr convert --nf4 [--double-quant] HF_DIR OUT_DIR: a bitsandbytes 4-bit
 * NF4 checkpoint (see lib/model/bnb.c) from a Hugging Face directory. */
static int cmd_convert_nf4(int argc, char **argv) {
    int dq = 0;
    if (argc == 3 && !strcmp(argv[0], "--double-quant")) {
        dq = 1;
        argc--;
        argv++;
    }
    if (argc != 2) {
        fputs("usage: ampr convert --nf4 [--double-quant] HF_DIR OUT_DIR\n", stderr);
        return 2;
    }
    ampr__err err = {0};
    ampr__model *m = NULL;
    ampr_status st = ampr__model_load_hf(argv[0], 1, &m, &err);
    if (st == AMPR_OK && mkdir(argv[1], 0755) != 0 && errno != EEXIST)
        st = ampr__fail(&err, AMPR_ERR_IO, "cannot create %s", argv[1]);
    if (st == AMPR_OK) st = ampr__model_write_bnb_nf4(m, argv[0], argv[1], dq, &err);
    ampr__model_free(m);
    if (st != AMPR_OK) {
        fprintf(stderr, "ampr: convert failed: %s (%s)\n", err.msg, ampr_status_name(st));
        return 1;
    }
    fprintf(stderr, "ampr: wrote %s\n", argv[1]);
    return 0;
}

static int cmd_convert(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "--nf4")) return cmd_convert_nf4(argc - 1, argv + 1);
    if (argc != 3) {
        fputs("usage: ampr convert LLAMA2C.bin TOKENIZER.bin OUT_DIR\n", stderr);
        return 2;
    }
    ampr__err err = {0};
    ampr_status st = ampr__convert_llama2c(argv[0], argv[1], argv[2], &err);
    if (st != AMPR_OK) {
        fprintf(stderr, "ampr: convert failed: %s (%s)\n", err.msg, ampr_status_name(st));
        return 1;
    }
    fprintf(stderr, "ampr: wrote %s\n", argv[2]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("ampr %s\n", ampr_version());
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "convert")) return cmd_convert(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval")) return ampr_tool_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) return ampr_tool_bench(argc - 2, argv + 2);
    if (!strcmp(cmd, "gen-model")) return ampr_tool_gen_model(argc - 2, argv + 2);
    if (!strcmp(cmd, "calibrate")) return ampr_tool_calibrate(argc - 2, argv + 2);
    opts o;
    int rc = parse_opts(argc - 2, argv + 2, &o);
    if (rc) return rc;
    if (!strcmp(cmd, "run")) return cmd_run(&o);
    if (!strcmp(cmd, "route")) return cmd_route(&o);
    if (!strcmp(cmd, "info")) return cmd_info(&o);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(&o);
    fprintf(stderr, "ampr: unknown command %s\n", cmd);
    usage(stderr);
    return 2;
}
