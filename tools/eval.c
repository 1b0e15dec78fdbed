/*
 * eval.c -- `ampr eval`: quality of every resident tier on real text.
 *
 * The text is tokenized once and cut into windows of the context size, each
 * starting with BOS. Every tier scores every window teacher-forced
 * (ampr_logits); per tier we print the mean negative log-likelihood and
 * perplexity and, against the reference tier (FP16 when resident, else the
 * top tier), the mean KL divergence KL(ref || tier) of the next-token
 * distributions and how often the two agree on the top-1 token.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ampr.h"
#include "tools.h"

/* log-softmax of v (n) into out, in double */
static void log_softmax(const float *v, int n, double *out) {
    double mx = v[0];
    for (int i = 1; i < n; i++) mx = v[i] > mx ? v[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)v[i] - mx);
    double lse = mx + log(sum);
    for (int i = 0; i < n; i++) out[i] = (double)v[i] - lse;
}

static int argmax_f(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

int ampr_tool_eval(int argc, char **argv) {
    const char *model = NULL, *file = NULL, *config = NULL;
    int ctx_len = 0;
    long max_tokens = 0;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "ampr eval: %s needs a value\n", argv[i]); return 2; }
        if (!strcmp(argv[i], "-m")) model = v;
        else if (!strcmp(argv[i], "-f")) file = v;
        else if (!strcmp(argv[i], "--config")) config = v;
        else if (!strcmp(argv[i], "--ctx")) ctx_len = atoi(v);
        else if (!strcmp(argv[i], "--max-tokens")) max_tokens = atol(v);
        else { fprintf(stderr, "ampr eval: unknown option %s\n", argv[i]); return 2; }
        i++;
    }
    if (!model || !file) {
        fputs("usage: ampr eval -m MODEL -f TEXT [--ctx N] [--max-tokens N] [--config JSON]\n", stderr);
        return 2;
    }
    FILE *f = fopen(file, "rb");
    if (!f) { fprintf(stderr, "ampr eval: cannot open %s\n", file); return 1; }
    fseek(f, 0, SEEK_END);
    long flen = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)flen + 1);
    if (!text || fread(text, 1, (size_t)flen, f) != (size_t)flen) {
        fclose(f);
        free(text);
        fprintf(stderr, "ampr eval: cannot read %s\n", file);
        return 1;
    }
    fclose(f);

    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(model, config, &ctx);
    if (st != AMPR_OK) {
        fprintf(stderr, "ampr eval: cannot open %s: %s\n", model, ampr_errmsg(ctx));
        ampr_close(ctx);
        free(text);
        return 1;
    }
    ampr_model_info mi;
    ampr_model_info_init(&mi);
    ampr_get_model_info(ctx, &mi);
    int V = mi.vocab_size;
    if (ctx_len <= 1 || ctx_len > mi.context_length) ctx_len = mi.context_length;

    size_t n_ids = 0;
    ampr_tokenize(ctx, text, (size_t)flen, 0, NULL, 0, &n_ids);
    int32_t *ids = malloc((n_ids ? n_ids : 1) * sizeof *ids);
    st = ampr_tokenize(ctx, text, (size_t)flen, 0, ids, n_ids, &n_ids);
    free(text);
    if (st != AMPR_OK) {
        fprintf(stderr, "ampr eval: tokenize: %s\n", ampr_errmsg(ctx));
        free(ids);
        ampr_close(ctx);
        return 1;
    }
    if (max_tokens > 0 && (size_t)max_tokens < n_ids) n_ids = (size_t)max_tokens;

    int ref = 0; /* reference tier: fp16 if resident */
    for (int t = 0; t < mi.n_tiers; t++)
        if (mi.tiers[t] == AMPR_TIER_FP16) ref = t;
    int nt = mi.n_tiers;
    double nll[AMPR_TIER_COUNT] = {0}, kl[AMPR_TIER_COUNT] = {0};
    long agree[AMPR_TIER_COUNT] = {0}, count = 0;
    int W = ctx_len;
    int32_t *win = malloc((size_t)W * sizeof *win);
    float *lg[AMPR_TIER_COUNT];
    for (int t = 0; t < nt; t++) lg[t] = malloc((size_t)W * (size_t)V * sizeof(float));
    double *lp_ref = malloc((size_t)V * sizeof(double)), *lp = malloc((size_t)V * sizeof(double));
    int rc = 0;
    for (size_t start = 0; start < n_ids && rc == 0; start += (size_t)(W - 1)) {
        int n = 0;
        win[n++] = mi.bos_id >= 0 ? mi.bos_id : ids[start];
        for (size_t k = start + (mi.bos_id >= 0 ? 0 : 1); k < n_ids && n < W; k++) win[n++] = ids[k];
        if (n < 2) break;
        for (int t = 0; t < nt && rc == 0; t++) {
            st = ampr_logits(ctx, mi.tiers[t], win, (size_t)n, lg[t], (size_t)W * (size_t)V);
            if (st != AMPR_OK) {
                fprintf(stderr, "ampr eval: %s: %s\n", ampr_tier_name(mi.tiers[t]), ampr_errmsg(ctx));
                rc = 1;
            }
        }
        for (int i = 0; i + 1 < n && rc == 0; i++) {
            log_softmax(lg[ref] + (size_t)i * V, V, lp_ref);
            int top_ref = argmax_f(lg[ref] + (size_t)i * V, V);
            for (int t = 0; t < nt; t++) {
                const float *row = lg[t] + (size_t)i * V;
                log_softmax(row, V, lp);
                nll[t] -= lp[win[i + 1]];
                double d = 0;
                for (int v = 0; v < V; v++) d += exp(lp_ref[v]) * (lp_ref[v] - lp[v]);
                kl[t] += d;
                agree[t] += argmax_f(row, V) == top_ref;
            }
            count++;
        }
        if (start + (size_t)W - 1 >= n_ids) break;
    }
    if (rc == 0 && count > 0) {
        printf("tokens scored: %ld (windows of %d, reference tier %s)\n", count, W,
               ampr_tier_name(mi.tiers[ref]));
        printf("%-6s %10s %10s %12s %10s %12s\n", "tier", "mean_nll", "ppl", "kl_vs_ref", "top1_agree",
               "weights_MiB");
        for (int t = 0; t < nt; t++) {
            ampr_tier_info ti;
            ampr_tier_info_init(&ti);
            ampr_get_tier_info(ctx, mi.tiers[t], &ti);
            printf("%-6s %10.5f %10.4f %12.6f %9.2f%% %12.2f\n", ampr_tier_name(mi.tiers[t]),
                   nll[t] / (double)count, exp(nll[t] / (double)count), kl[t] / (double)count,
                   100.0 * (double)agree[t] / (double)count, (double)ti.weight_bytes / 1048576.0);
        }
    }
    for (int t = 0; t < nt; t++) free(lg[t]);
    free(lp_ref);
    free(lp);
    free(win);
    free(ids);
    ampr_close(ctx);
    return rc;
}
