/*
 * bench.c -- `ampr bench` and `ampr gen-model`.
 *
 * bench: for each resident tier, side by side in one run: resident weight
 * bytes, prefill tokens/s (one batched forward over --prompt tokens), decode
 * tokens/s (--gen single-token steps) and the weight bandwidth that decode
 * achieves (bytes of weights read per token x tokens/s). The model is a file
 * (-m) or generated with random weights at a named shape (--shape).
 * Then the router's cost in ns per KiB of prompt.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ampr.h"
#include "backend/backend.h"
#include "engine.h"
#include "calib/calib.h"
#include "generate.h"
#include "sampler/sampler.h"
#include "tools.h"

/* A "Name:   N kB" line of /proc/self/status in MiB (Linux), or -1. */
static double proc_status_mib(const char *name) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    size_t n = strlen(name);
    double mib = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, name, n) && line[n] == ':') {
            mib = atof(line + n + 1) / 1024.0;
            break;
        }
    fclose(f);
    return mib;
}

int ampr_tool_shape(const char *name, ampr__hparams *hp) {
    memset(hp, 0, sizeof *hp);
    hp->norm_eps = 1e-5f;
    hp->rope_theta = 10000.0f;
    if (!strcmp(name, "tiny")) { /* the size of stories260K, with GQA */
        hp->dim = 64; hp->hidden_dim = 172; hp->n_layers = 5; hp->n_heads = 8; hp->n_kv_heads = 4;
        hp->vocab_size = 512; hp->context_length = 512;
    } else if (!strcmp(name, "small")) {
        hp->dim = 512; hp->hidden_dim = 1536; hp->n_layers = 8; hp->n_heads = 8; hp->n_kv_heads = 4;
        hp->vocab_size = 32000; hp->context_length = 2048;
    } else if (!strcmp(name, "1b")) { /* the 1.1B Llama shape of the issue */
        hp->dim = 2048; hp->hidden_dim = 8192; hp->n_layers = 16; hp->n_heads = 32; hp->n_kv_heads = 8;
        hp->vocab_size = 32000; hp->context_length = 2048;
    } else if (!strcmp(name, "8b")) { /* the Llama 3 8B shape (GPU benchmarks; ~16 GB as F16) */
        hp->dim = 4096; hp->hidden_dim = 14336; hp->n_layers = 32; hp->n_heads = 32; hp->n_kv_heads = 8;
        hp->vocab_size = 128256; hp->context_length = 8192; hp->rope_theta = 500000.0f;
    } else {
        return -1;
    }
    hp->head_dim = hp->dim / hp->n_heads;
    return 0;
}

int ampr_tool_gen_model(int argc, char **argv) {
    const char *out = NULL, *shape = "tiny", *format = "gguf", *dtype = "f16";
    uint64_t seed = 1;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (argv[i][0] != '-') { out = argv[i]; continue; }
        if (!v) { fprintf(stderr, "ampr gen-model: %s needs a value\n", argv[i]); return 2; }
        if (!strcmp(argv[i], "--shape")) shape = v;
        else if (!strcmp(argv[i], "--format")) format = v;
        else if (!strcmp(argv[i], "--dtype")) dtype = v;
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(v, NULL, 10);
        else { fprintf(stderr, "ampr gen-model: unknown option %s\n", argv[i]); return 2; }
        i++;
    }
    ampr__hparams hp;
    if (!out || ampr_tool_shape(shape, &hp) != 0) {
        fputs("usage: ampr gen-model OUT [--shape tiny|small|1b|8b] [--format gguf|hf] "
              "[--dtype f32|f16|bf16] [--seed N]\n", stderr);
        return 2;
    }
    ampr__dtype dt = !strcmp(dtype, "f32") ? AMPR__DT_F32 : !strcmp(dtype, "bf16") ? AMPR__DT_BF16 : AMPR__DT_F16;
    ampr__err err = {0};
    ampr_status st = ampr__model_write_random(out, format, &hp, dt, 1, seed, &err);
    if (st != AMPR_OK) {
        fprintf(stderr, "ampr gen-model: %s (%s)\n", err.msg, ampr_status_name(st));
        return 1;
    }
    return 0;
}

/* ---- memory read bandwidth: the decode ceiling, measured in the same run -- */

typedef struct bw_job {
    const uint64_t *p;
    size_t n_words;
    uint64_t sums[256];
} bw_job;

static void bw_task(void *arg, int i, int n) {
    bw_job *j = arg;
    size_t per = j->n_words / (size_t)n;
    const uint64_t *p = j->p + per * (size_t)i;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t k = 0; k + 4 <= per; k += 4) {
        a += p[k];
        b += p[k + 1];
        c += p[k + 2];
        d += p[k + 3];
    }
    j->sums[i] = a ^ b ^ c ^ d;
}

/* GB/s of reading 512 MiB with the context's threads, best of 5 passes. */
static double read_bandwidth(ampr_ctx *c) {
    size_t bytes = (size_t)512 << 20;
    uint64_t *buf = malloc(bytes);
    if (!buf) return 0;
    memset(buf, 1, bytes);
    bw_job j = {buf, bytes / 8, {0}};
    int n = ampr__pool_size(c->pool);
    if (n > 256) n = 256;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = ampr__now_ms();
        ampr__pool_run(c->pool, n, bw_task, &j);
        double gbs = (double)bytes / ((ampr__now_ms() - t0) / 1e3) / 1e9;
        if (gbs > best) best = gbs;
    }
    free(buf);
    return best;
}

/* Prefill n_prompt tokens into seq in chunks of at most chunk, then decode
 * n_gen greedy tokens; the wall time of each half in *prefill_ms and
 * *decode_ms, and *bw (when not NULL) measured between the two. */
static int prefill_decode(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq, const int32_t *toks,
                          int n_prompt, int chunk, int n_gen, ampr__scratch *s, double *prefill_ms,
                          double *decode_ms, double *bw, ampr__err *err) {
    int ok = 1;
    double t0 = ampr__now_ms();
    for (int i = 0; i < n_prompt && ok; i += chunk) {
        int k = n_prompt - i < chunk ? n_prompt - i : chunk;
        ok = ampr__backend_forward(c, t, seq, toks + i, k, 1, NULL, s, err) == AMPR_OK;
    }
    *prefill_ms = ampr__now_ms() - t0;
    if (bw) *bw = c->backend ? ampr__backend_mem_gbs(c) : read_bandwidth(c);
    /* decode as a greedy request does (generate.c decode_step, AMPR__WANT_ARGMAX):
     * one-sequence decode batches that return only the argmax */
    double t1 = ampr__now_ms();
    int32_t next = ampr__argmax(s->logits, c->hp.vocab_size);
    for (int i = 0; i < n_gen && ok; i++) {
        ampr__kv_seq *one = seq;
        ampr__row_want want = {.what = AMPR__WANT_ARGMAX};
        ok = ampr__backend_decode_batch(c, t, &one, &next, 1, &want, s, err) == AMPR_OK;
        next = want.argmax;
    }
    *decode_ms = ampr__now_ms() - t1;
    return ok;
}

/* Prefill n_prompt random tokens, then decode n_gen; *bw is the memory read
 * bandwidth measured between the two (it moves from minute to minute on a
 * shared machine, so each tier is compared with its own). */
static int bench_tier(ampr_ctx *c, ampr__tier *t, int n_prompt, int n_gen, double *prefill_tps,
                      double *decode_tps, double *bw) {
    ampr__err err = {0};
    ampr__kv_seq seq = {0};
    ampr__scratch s;
    int32_t *toks = malloc((size_t)n_prompt * sizeof *toks);
    uint64_t x = 12345;
    for (int i = 0; i < n_prompt; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((x >> 33) % (uint64_t)c->hp.vocab_size);
    }
    int rc = 1;
    int chunk = n_prompt < 256 ? n_prompt : 256;
    if (ampr__kv_seq_reserve(&seq, t->kv, n_prompt + n_gen, &err) == AMPR_OK &&
        ampr__scratch_new(c, chunk, 1, &s, &err) == AMPR_OK) {
        int ok = 1;
        double pre_ms, dec_ms;
        /* A device backend sets up lazily (matmul plans, scratch growth, the
         * decode graph captured on a shape's second pass): one untimed round
         * of the same shapes first, on a sequence of its own. */
        if (c->backend) {
            ampr__kv_seq warm = {0};
            ok = ampr__kv_seq_reserve(&warm, t->kv, chunk + 3, &err) == AMPR_OK &&
                 prefill_decode(c, t, &warm, toks, chunk, chunk, 3, &s, &pre_ms, &dec_ms, NULL,
                                &err);
            ampr__kv_seq_release(&warm);
        }
        if (ok && prefill_decode(c, t, &seq, toks, n_prompt, chunk, n_gen, &s, &pre_ms, &dec_ms,
                                 bw, &err)) {
            *prefill_tps = n_prompt / (pre_ms / 1e3);
            *decode_tps = n_gen / (dec_ms / 1e3);
            rc = 0;
        }
        ampr__scratch_free(&s);
    }
    if (rc) fprintf(stderr, "ampr bench: %s\n", err.msg);
    ampr__kv_seq_release(&seq);
    free(toks);
    return rc;
}

typedef struct conc_job {
    ampr_ctx *c;
    ampr_tier tier;
    int n_gen;
    size_t tokens;
    int ok;
} conc_job;

static void *conc_run(void *arg) {
    conc_job *j = arg;
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.tier = j->tier;
    p.temperature = 0;
    p.max_tokens = j->n_gen;
    p.ignore_eos = 1;
    p.fallback = 0;
    ampr_result *r = NULL;
    j->ok = ampr_generate(j->c, "Once upon a time", AMPR_NUL_TERMINATED, &p, &r) == AMPR_OK;
    j->tokens = r ? r->n_tokens : 0;
    ampr_result_free(r);
    return NULL;
}

/* Aggregate decode tokens/s of n concurrent requests on one tier. */
static double concurrent_tps(ampr_ctx *c, ampr_tier tier, int n, int n_gen) {
    conc_job jobs[64];
    pthread_t th[64];
    double t0 = ampr__now_ms();
    for (int i = 0; i < n; i++) {
        jobs[i] = (conc_job){c, tier, n_gen, 0, 0};
        pthread_create(&th[i], NULL, conc_run, &jobs[i]);
    }
    size_t total = 0;
    int ok = 1;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        total += jobs[i].tokens;
        ok &= jobs[i].ok;
    }
    return ok ? (double)total / ((ampr__now_ms() - t0) / 1e3) : 0;
}

int ampr_tool_bench(int argc, char **argv) {
    const char *model = NULL, *shape = NULL, *tiers = "fp16,int8,nf4", *device = "cpu";
    const char *nf4_act = "fp32", *gpus = NULL;
    int n_prompt = 128, n_gen = 32, threads = 0, conc = 8, tp = 1;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "ampr bench: %s needs a value\n", argv[i]); return 2; }
        if (!strcmp(argv[i], "-m")) model = v;
        else if (!strcmp(argv[i], "--shape")) shape = v;
        else if (!strcmp(argv[i], "--tiers")) tiers = v;
        else if (!strcmp(argv[i], "--device")) device = v;
        else if (!strcmp(argv[i], "--prompt")) n_prompt = atoi(v);
        else if (!strcmp(argv[i], "--gen")) n_gen = atoi(v);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(v);
        else if (!strcmp(argv[i], "--concurrent")) conc = atoi(v);
        else if (!strcmp(argv[i], "--nf4-act")) nf4_act = v;
        else if (!strcmp(argv[i], "--tp")) tp = atoi(v);
        else if (!strcmp(argv[i], "--gpus")) gpus = v;
        else { fprintf(stderr, "ampr bench: unknown option %s\n", argv[i]); return 2; }
        i++;
    }
    if (n_prompt < 1 || n_gen < 1 || conc < 0 || conc > 64 || tp < 1 || tp > 64) {
        fputs("ampr bench: --prompt and --gen must be >= 1, --concurrent in [0, 64], --tp in [1, 64]\n",
              stderr);
        return 2;
    }
    if (gpus && (strspn(gpus, "0123456789,") != strlen(gpus) || strlen(gpus) > 200)) {
        fputs("ampr bench: --gpus takes GPU ids separated by commas, e.g. 0,1\n", stderr);
        return 2;
    }
    char tmp_model[4096] = "";
    if (!model) {
        ampr__hparams hp;
        if (ampr_tool_shape(shape ? shape : "small", &hp) != 0) {
            fprintf(stderr, "ampr bench: unknown shape %s (tiny, small, 1b, 8b)\n", shape);
            return 2;
        }
        const char *dir = getenv("TMPDIR");
        snprintf(tmp_model, sizeof tmp_model, "%s/ampr-bench-%s-%d.gguf", dir ? dir : "/tmp",
                 shape ? shape : "small", (int)getpid());
        fprintf(stderr, "ampr bench: writing a random %s model to %s\n", shape ? shape : "small", tmp_model);
        ampr__err err = {0};
        if (ampr__model_write_random(tmp_model, "gguf", &hp, AMPR__DT_F16, 1, 7, &err) != AMPR_OK) {
            fprintf(stderr, "ampr bench: %s\n", err.msg);
            return 1;
        }
        model = tmp_model;
    }
    /* tiers "a,b,c" -> JSON list */
    if (strcmp(device, "cpu") && strcmp(device, "cuda") && strcmp(device, "auto")) {
        fputs("ampr bench: --device must be cpu, cuda or auto\n", stderr);
        return 2;
    }
    if (strcmp(nf4_act, "fp32") && strcmp(nf4_act, "bf16")) {
        fputs("ampr bench: --nf4-act must be fp32 or bf16\n", stderr);
        return 2;
    }
    char cfg[1024], list[256] = "";
    size_t k = 0;
    for (const char *p = tiers; *p && k + 8 < sizeof list; p++) {
        if (p == tiers || p[-1] == ',') k += (size_t)snprintf(list + k, sizeof list - k, "%s\"", k ? "," : "");
        if (*p != ',') list[k++] = *p;
        if (p[1] == ',' || p[1] == '\0') list[k++] = '"';
        list[k] = '\0';
    }
    int arena = (n_prompt + n_gen + 16) * (conc > 1 ? conc : 1) + 64 * (conc + 1);
    snprintf(cfg, sizeof cfg,
             "{\"tiers\": [%s], \"threads\": %d, \"kv\": {\"arena_tokens\": %d}, \"device\": \"%s\", "
             "\"nf4\": {\"activations\": \"%s\"}, \"tp_size\": %d%s%.200s%s}",
             list, threads, arena, device, nf4_act, tp, gpus ? ", \"gpus\": [" : "",
             gpus ? gpus : "", gpus ? "]" : "");
    ampr_ctx *c = NULL;
    double t0 = ampr__now_ms();
    ampr_status st = ampr_open(model, cfg, &c);
    double open_ms = ampr__now_ms() - t0;
    if (tmp_model[0]) unlink(tmp_model);
    if (st != AMPR_OK) {
        fprintf(stderr, "ampr bench: cannot open: %s\n", ampr_errmsg(c));
        ampr_close(c);
        return 1;
    }
    printf("model: %s | dim %d, layers %d, heads %d/%d, ffn %d, vocab %d | threads %d | kernels %s\n",
           shape ? shape : model, c->hp.dim, c->hp.n_layers, c->hp.n_heads, c->hp.n_kv_heads,
           c->hp.hidden_dim, c->hp.vocab_size, ampr__pool_size(c->pool), ampr__quant_simd_name());
    printf("device: %s\n", c->device);
    ampr_tier_info nti;
    ampr_tier_info_init(&nti);
    if (ampr_get_tier_info(c, AMPR_TIER_NF4, &nti) == AMPR_OK)
        printf("nf4 activations: %s\n",
               strstr(nti.kernels, "-bf16") ? "bf16 (AVX512_BF16 kernel)"
               : !strcmp(nf4_act, "bf16") ? "fp32 (bf16 asked for; this CPU or AMPR_SIMD has no AVX512_BF16)"
                                          : "fp32");
    printf("open + quantize all tiers: %.0f ms; prefill %d tokens, decode %d tokens\n", open_ms, n_prompt, n_gen);
    /* the host's share: with a device backend the tiers' host copies are
     * freed as they are uploaded (anonymous memory), the checkpoint stays
     * mapped (file-backed, reclaimable) */
    printf("host memory after open: %.0f MiB anonymous, %.0f MiB file-backed; peak resident %.0f MiB\n\n",
           proc_status_mib("RssAnon"), proc_status_mib("RssFile"), proc_status_mib("VmHWM"));
    /* the GPUs' total - free: the tiers, their KV arenas, the work buffers
     * so far, the CUDA contexts themselves (and any other process's use) */
    uint64_t dev_used = ampr__backend_mem_used(c);
    if (dev_used) printf("GPU memory in use after open: %.0f MiB (total - free)\n\n", (double)dev_used / 1048576.0);
    if (c->backend)
        printf("copy bw: the GPU's device-to-device copy bandwidth (read + write, 256 MiB, best of\n"
               "5, times the distinct GPUs of the ranks), measured right before each tier's decode\n\n");
    else
        printf("read bw: the memory read bandwidth of %d threads (512 MiB, best of 5 passes), measured\n"
               "right before each tier's decode\n\n", ampr__pool_size(c->pool));
    printf("| tier | weights MiB | prefill tok/s | decode tok/s | decode weight GB/s | %s bw GB/s | share |\n",
           c->backend ? "copy" : "read");
    printf("|------|------------:|--------------:|-------------:|-------------------:|-------------:|------:|\n");
    int rc = 0;
    for (int i = 0; i < c->n_tiers && !rc; i++) {
        ampr__tier *t = &c->tiers[i];
        double ptps = 0, dtps = 0, bw = 0;
        rc = bench_tier(c, t, n_prompt, n_gen, &ptps, &dtps, &bw);
        if (!rc) {
            double gbs = (double)ampr__tier_decode_bytes(c, t) * dtps / 1e9;
            printf("| %s | %.1f | %.1f | %.2f | %.2f | %.1f | %.0f%% |\n", ampr_tier_name(t->id),
                   (double)t->weight_bytes / 1048576.0, ptps, dtps, gbs, bw, bw > 0 ? 100 * gbs / bw : 0);
        }
    }
    /* the runs grew the matmul scratch and work buffers (prefill) */
    if (!rc && dev_used)
        printf("\nGPU memory in use after the runs: %.0f MiB\n", (double)ampr__backend_mem_used(c) / 1048576.0);
    /* batched decode: aggregate tokens/s of concurrent requests on one tier */
    if (!rc && conc > 1) {
        printf("\n| tier | 1 request tok/s | %d concurrent requests, total tok/s | speed-up |\n", conc);
        printf("|------|----------------:|-----------------------------------:|---------:|\n");
        for (int i = 0; i < c->n_tiers; i++) {
            double one = concurrent_tps(c, c->tiers[i].id, 1, n_gen);
            double many = concurrent_tps(c, c->tiers[i].id, conc, n_gen);
            printf("| %s | %.1f | %.1f | %.2fx |\n", ampr_tier_name(c->tiers[i].id), one, many,
                   one > 0 ? many / one : 0);
        }
    }
    /* router cost */
    static const char para[] = "Write a function in C that parses 3.5e+2 * (x - y) / 7; then explain it. ";
    size_t n = 64 * 1024;
    char *text = malloc(n);
    for (size_t i = 0; i < n; i++) text[i] = para[i % (sizeof para - 1)];
    ampr_route_result rr;
    ampr_route_result_init(&rr);
    int reps = 200;
    double r0 = ampr__now_ms();
    for (int r = 0; r < reps; r++) ampr_route(c, text, n, NULL, 0, &rr);
    double ns_per_kib = (ampr__now_ms() - r0) * 1e6 / reps / (double)(n / 1024);
    printf("\nrouter: %.0f ns per KiB of prompt (%zu KiB prompt, %d runs)\n", ns_per_kib, n / 1024, reps);
    free(text);
    ampr_close(c);
    return rc;
}
