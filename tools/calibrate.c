/*
 * calibrate.c -- `ampr calibrate`: fit the router and record INT8 activation
 * ranges on sample prompts, then show on held-out prompts how the fitted
 * routing compares with all-FP16, all-NF4 and the default routing.
 *
 *   ampr calibrate -m MODEL -f PROMPTS.jsonl -o calib.json [--target-kl X]
 *                  [--gen N] [--holdout F] [--alpha A] [--kl-max K] [--threads N]
 *
 * PROMPTS.jsonl: one {"prompt": "...", "kind": "..."} per line. Every prompt
 * is continued greedily by the top tier; each tier then scores that sequence
 * teacher-forced, giving per prompt the mean KL(top || tier) over the
 * continuation. The router is fitted on the training prompts (calib.h); the
 * held-out prompts are then generated for real under four policies.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "calib/calib.h"
#include "fallback/fallback.h"
#include "tools.h"

typedef struct prompt {
    char *text;
    char kind[16];
} prompt;

static prompt *load_prompts(const char *path, size_t *n) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t cap = 64;
    prompt *v = calloc(cap, sizeof *v);
    char *line = NULL;
    size_t lcap = 0;
    *n = 0;
    while (v && getline(&line, &lcap, f) > 0) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        const char *t = json_string_value(json_object_get(o, "prompt"));
        const char *k = json_string_value(json_object_get(o, "kind"));
        if (t) {
            if (*n == cap) {
                prompt *g = realloc(v, 2 * cap * sizeof *v);
                if (!g) { json_decref(o); break; }
                v = g;
                cap *= 2;
            }
            v[*n].text = strdup(t);
            snprintf(v[*n].kind, sizeof v[*n].kind, "%s", k ? k : "-");
            (*n)++;
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    return v;
}

static int argmax_f(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* prompt ids + the top tier's greedy continuation of n_gen tokens */
static int32_t *reference_sequence(ampr_ctx *c, const char *text, int n_gen, size_t *n, size_t *n_prompt) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = c->tiers[0].id;
    p.temperature = 0;
    p.max_tokens = n_gen;
    p.fallback = 0;
    p.ignore_eos = 1;
    ampr_result *r = NULL;
    if (ampr_generate(c, text, AMPR_NUL_TERMINATED, &p, &r) != AMPR_OK) return NULL;
    size_t np = (size_t)r->n_prompt_tokens;
    int32_t *ids = malloc((np + r->n_tokens) * sizeof *ids);
    size_t got = 0;
    if (ids && ampr_tokenize(c, text, AMPR_NUL_TERMINATED, 1, ids, np, &got) == AMPR_OK && got == np) {
        memcpy(ids + np, r->tokens, r->n_tokens * sizeof *ids);
        *n = np + r->n_tokens;
        *n_prompt = np;
    } else {
        free(ids);
        ids = NULL;
    }
    ampr_result_free(r);
    return ids;
}

/* Measure one prompt: KL and top-1 of every tier vs the top tier. */
static int measure(ampr_ctx *c, const char *text, int n_gen, ampr__calib_sample *s, ampr__act_stats *st) {
    size_t n = 0, np = 0;
    int32_t *ids = reference_sequence(c, text, n_gen, &n, &np);
    if (!ids || n <= np) { free(ids); return -1; }
    int V = c->hp.vocab_size;
    float *ref = malloc(n * (size_t)V * sizeof(float)), *lg = malloc(n * (size_t)V * sizeof(float));
    int rc = (ref && lg) ? 0 : -1;
    memset(s, 0, sizeof *s);
    ampr__router_features(text, strlen(text), s->features);
    if (!rc) rc = ampr_logits(c, c->tiers[0].id, ids, n, ref, n * (size_t)V) == AMPR_OK ? 0 : -1;
    for (int t = 1; t < c->n_tiers && !rc; t++) {
        if (ampr_logits(c, c->tiers[t].id, ids, n, lg, n * (size_t)V) != AMPR_OK) { rc = -1; break; }
        double kl = 0, agree = 0;
        for (size_t i = np - 1; i + 1 < n; i++) {
            kl += ampr__kl(ref + i * V, lg + i * V, V);
            agree += argmax_f(ref + i * V, V) == argmax_f(lg + i * V, V);
        }
        s->kl[c->tiers[t].id] = kl / (double)(n - np);
        s->top1[c->tiers[t].id] = agree / (double)(n - np);
    }
    s->top1[c->tiers[0].id] = 1;
    ampr__err err = {0};
    if (!rc && st) rc = ampr__calib_ranges(c, &c->tiers[0], ids, (int32_t)n, st, &err) == AMPR_OK ? 0 : -1;
    free(ref);
    free(lg);
    free(ids);
    return rc;
}

typedef struct policy_stats {
    long requests, escalations, tokens;
    long first_tier[AMPR_TIER_COUNT];
    double kl, agree, bytes;
} policy_stats;

/* Generate for real under a policy and score what came out against FP16. */
static int run_policy(ampr_ctx *c, ampr_ctx *ref_ctx, const char *text, ampr_tier tier, int fallback, int n_gen,
                      policy_stats *ps) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = tier;
    p.temperature = 0;
    p.max_tokens = n_gen;
    p.fallback = fallback;
    p.ignore_eos = 1;
    ampr_result *r = NULL;
    if (ampr_generate(c, text, AMPR_NUL_TERMINATED, &p, &r) != AMPR_OK) return -1;
    size_t np = (size_t)r->n_prompt_tokens, n = np + r->n_tokens;
    int V = c->hp.vocab_size;
    int32_t *ids = malloc(n * sizeof *ids);
    float *ref = malloc(n * (size_t)V * sizeof(float)), *first = malloc(n * (size_t)V * sizeof(float));
    size_t got = 0;
    int rc = ids && ref && first && ampr_tokenize(c, text, AMPR_NUL_TERMINATED, 1, ids, np, &got) == AMPR_OK ? 0 : -1;
    if (!rc) {
        memcpy(ids + np, r->tokens, r->n_tokens * sizeof *ids);
        rc = ampr_logits(ref_ctx, AMPR_TIER_FP16, ids, n, ref, n * (size_t)V) == AMPR_OK &&
                     ampr_logits(c, r->tier_first, ids, n, first, n * (size_t)V) == AMPR_OK
                 ? 0 : -1;
    }
    const ampr__tier *t_first = ampr__ctx_tier(c, r->tier_first), *t_top = &c->tiers[0];
    double b_first = (double)ampr__tier_decode_bytes(c, t_first), b_top = (double)ampr__tier_decode_bytes(c, t_top);
    long esc = r->escalated ? r->escalation_token : (long)r->n_tokens;
    for (size_t j = 0; !rc && j < r->n_tokens; j++) {
        const float *row = ref + (np - 1 + j) * V;
        ps->agree += argmax_f(row, V) == r->tokens[j];
        /* tokens after an escalation come from the top tier (FP16 or higher) */
        if ((long)j < esc && r->tier_first != AMPR_TIER_FP16) ps->kl += ampr__kl(row, first + (np - 1 + j) * V, V);
        ps->bytes += (long)j < esc ? b_first : b_top;
    }
    /* the verification passes read the top tier's weights once each */
    const ampr__fallback_config *fb = &c->cfg.fallback;
    if (!rc && fallback && fb->enabled && fb->check_every > 0 && t_first != t_top)
        ps->bytes += b_top * (double)(esc / fb->check_every + (r->escalated ? 1 : 0));
    ps->requests++;
    ps->tokens += (long)r->n_tokens;
    ps->escalations += r->escalated;
    ps->first_tier[r->tier_first]++;
    free(ids);
    free(ref);
    free(first);
    ampr_result_free(r);
    return rc;
}

static void print_policy(const char *name, const policy_stats *ps) {
    printf("| %-18s | %5.1f%% | %5.1f%% | %5.1f%% | %5.1f%% | %8.4f | %6.2f%% | %8.3f |\n", name,
           100.0 * (double)ps->first_tier[AMPR_TIER_FP16] / (double)ps->requests,
           100.0 * (double)ps->first_tier[AMPR_TIER_INT8] / (double)ps->requests,
           100.0 * (double)ps->first_tier[AMPR_TIER_NF4] / (double)ps->requests,
           100.0 * (double)ps->escalations / (double)ps->requests, ps->kl / (double)ps->tokens,
           100.0 * ps->agree / (double)ps->tokens, ps->bytes / (double)ps->tokens / 1e6);
}

int ampr_tool_calibrate(int argc, char **argv) {
    const char *model = NULL, *file = NULL, *out = NULL;
    double target = 0.05, holdout = 0.3, alpha = 0.5, kl_max = -1;
    int n_gen = 32, threads = 0;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "ampr calibrate: %s needs a value\n", argv[i]); return 2; }
        if (!strcmp(argv[i], "-m")) model = v;
        else if (!strcmp(argv[i], "-f")) file = v;
        else if (!strcmp(argv[i], "-o")) out = v;
        else if (!strcmp(argv[i], "--target-kl")) target = atof(v);
        else if (!strcmp(argv[i], "--holdout")) holdout = atof(v);
        else if (!strcmp(argv[i], "--alpha")) alpha = atof(v);
        else if (!strcmp(argv[i], "--kl-max")) kl_max = atof(v);
        else if (!strcmp(argv[i], "--gen")) n_gen = atoi(v);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(v);
        else { fprintf(stderr, "ampr calibrate: unknown option %s\n", argv[i]); return 2; }
        i++;
    }
    if (!model || !file || !out || n_gen < 2 || holdout < 0 || holdout >= 1 || alpha <= 0 || alpha >= 1) {
        fputs("usage: ampr calibrate -m MODEL -f PROMPTS.jsonl -o calib.json [--target-kl X] [--gen N]\n"
              "                      [--holdout F] [--alpha A] [--kl-max K] [--threads N]\n", stderr);
        return 2;
    }
    if (kl_max < 0) kl_max = 3 * target;
    size_t n_prompts = 0;
    prompt *prompts = load_prompts(file, &n_prompts);
    if (!prompts || n_prompts < 4) {
        fprintf(stderr, "ampr calibrate: need at least 4 prompts in %s\n", file);
        free(prompts);
        return 1;
    }
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"tiers\": [\"fp16\", \"int8\", \"nf4\"], \"threads\": %d}", threads);
    ampr_ctx *c = NULL;
    if (ampr_open(model, cfg, &c) != AMPR_OK) {
        fprintf(stderr, "ampr calibrate: cannot open %s: %s\n", model, ampr_errmsg(c));
        ampr_close(c);
        free(prompts);
        return 1;
    }
    /* every k-th prompt is held out */
    size_t stride = holdout > 0 ? (size_t)fmax(2.0, round(1.0 / holdout)) : 0;
    ampr__calib_sample *samples = calloc(n_prompts, sizeof *samples);
    ampr__act_stats st;
    ampr__err err = {0};
    int rc = ampr__act_stats_new(&c->hp, &st, &err) == AMPR_OK && samples ? 0 : 1;
    size_t n_train = 0;
    double sum_kl[AMPR_TIER_COUNT] = {0};
    for (size_t i = 0; i < n_prompts && !rc; i++) {
        if (stride && i % stride == stride - 1) continue;
        if (measure(c, prompts[i].text, n_gen, &samples[n_train], &st) != 0) {
            fprintf(stderr, "ampr calibrate: prompt %zu failed: %s\n", i, ampr_errmsg(c));
            rc = 1;
            break;
        }
        for (int t = 0; t < AMPR_TIER_COUNT; t++) sum_kl[t] += samples[n_train].kl[t];
        n_train++;
        fprintf(stderr, "\rampr calibrate: measured %zu prompts", n_train);
    }
    if (!rc) {
        fputc('\n', stderr);
        double tier_bytes[3];
        for (int t = 0; t < 3; t++) tier_bytes[t] = (double)ampr__tier_decode_bytes(c, &c->tiers[t]);
        ampr__router_config rcfg = c->cfg.router;
        double fit_kl = 0, fit_bytes = 0;
        ampr__calib_fit_router(samples, n_train, c->cfg.tiers, c->n_tiers, tier_bytes, target, &rcfg, &fit_kl,
                               &fit_bytes);
        printf("training prompts: %zu; mean KL vs fp16: int8 %.4f, nf4 %.4f\n", n_train,
               sum_kl[AMPR_TIER_INT8] / (double)n_train, sum_kl[AMPR_TIER_NF4] / (double)n_train);
        printf("fitted router: thresholds [%.4f, %.4f], training mean KL %.4f (target %.4f), "
               "%.3f MB of weights per token\n", rcfg.thresholds[0], rcfg.thresholds[1], fit_kl, target,
               fit_bytes / 1e6);
        if (ampr__calib_write(out, &rcfg, (float)kl_max, (float)alpha, &st, &c->hp, target, n_train, &err) != AMPR_OK) {
            fprintf(stderr, "ampr calibrate: %s\n", err.msg);
            rc = 1;
        } else {
            printf("wrote %s\n", out);
        }
    }
    /* held-out comparison */
    ampr_ctx *cal = NULL;
    if (!rc && stride) {
        char cfg2[4300];
        snprintf(cfg2, sizeof cfg2, "{\"tiers\": [\"fp16\", \"int8\", \"nf4\"], \"threads\": %d, \"calibration\": \"%s\"}",
                 threads, out);
        if (ampr_open(model, cfg2, &cal) != AMPR_OK) {
            fprintf(stderr, "ampr calibrate: cannot reopen with %s: %s\n", out, ampr_errmsg(cal));
            rc = 1;
        }
    }
    if (!rc && stride) {
        policy_stats ps[4];
        memset(ps, 0, sizeof ps);
        for (size_t i = stride - 1; i < n_prompts && !rc; i += stride) {
            const char *t = prompts[i].text;
            rc |= run_policy(c, c, t, AMPR_TIER_FP16, 0, n_gen, &ps[0]);
            rc |= run_policy(c, c, t, AMPR_TIER_NF4, 0, n_gen, &ps[1]);
            rc |= run_policy(c, c, t, AMPR_TIER_AUTO, 1, n_gen, &ps[2]);
            rc |= run_policy(cal, c, t, AMPR_TIER_AUTO, 1, n_gen, &ps[3]);
        }
        if (!rc) {
            printf("\nheld-out prompts: %ld, %d generated tokens each (greedy); quality vs FP16 teacher-forced\n\n",
                   ps[0].requests, n_gen);
            printf("| policy             | fp16   | int8   | nf4    | escal. | mean KL  | top-1    | MB/token |\n");
            printf("|--------------------|-------:|-------:|-------:|-------:|---------:|---------:|---------:|\n");
            print_policy("all FP16", &ps[0]);
            print_policy("all NF4", &ps[1]);
            print_policy("default routing", &ps[2]);
            print_policy("calibrated routing", &ps[3]);
        }
    }
    ampr_close(cal);
    ampr__act_stats_free(&st);
    ampr_close(c);
    for (size_t i = 0; i < n_prompts; i++) free(prompts[i].text);
    free(prompts);
    free(samples);
    return rc;
}
