/* testutil.c -- see testutil.h. */
#include "testutil.h"

#include "ampr.h"
#include "model/model.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *tu_shared(const char *rel) {
    static char bufs[4][4096];
    static int slot;
    const char *root = getenv("AMPR_SHARED");
    if (!root) root = "../shared";
    char *b = bufs[slot++ & 3];
    snprintf(b, sizeof bufs[0], "%s/%s", root, rel);
    struct stat st;
    return stat(b, &st) == 0 ? b : NULL;
}

char *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = 0; if (len) *len = (size_t)n; }
    return buf;
}

char *tu_tmpdir(const char *tag) {
    const char *root = getenv("AMPR_TMP");
    if (!root) root = "/tmp";
    mkdir(root, 0755);
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/%s-XXXXXX", root, tag);
    if (!mkdtemp(p)) { free(p); return NULL; }
    return p;
}

int tu_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

void tu_rmtree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            struct stat st;
            if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode)) tu_rmtree(sub);
            else unlink(sub);
        }
        closedir(d);
    }
    rmdir(path);
}

const char *tu_small_model(const char *dir, int context_length, uint64_t seed) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/rand.gguf", dir);
    ampr__hparams hp = {0};
    hp.dim = 64;
    hp.hidden_dim = 128;
    hp.n_layers = 2;
    hp.n_heads = 4;
    hp.n_kv_heads = 2;
    hp.head_dim = 16;
    hp.vocab_size = 320;
    hp.context_length = context_length;
    hp.norm_eps = 1e-5f;
    hp.rope_theta = 10000.0f;
    ampr__err err = {0};
    if (ampr__model_write_random(path, "gguf", &hp, AMPR__DT_F32, 1, seed, &err) != AMPR_OK) {
        fprintf(stderr, "write_random: %s\n", err.msg);
        return NULL;
    }
    return path;
}

char *tu_dir;
char tu_model[4096];

int tu_fixture_setup(const char *tag, int context_length, uint64_t seed) {
    tu_dir = tu_tmpdir(tag);
    const char *path = tu_dir ? tu_small_model(tu_dir, context_length, seed) : NULL;
    if (!path) return -1;
    snprintf(tu_model, sizeof tu_model, "%s", path);
    return 0;
}

int tu_fixture_teardown(void) {
    if (tu_dir) tu_rmtree(tu_dir);
    free(tu_dir);
    tu_dir = NULL;
    return 0;
}

ampr_ctx *tu_open_ok(const char *path, const char *config) {
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(path, config, &ctx);
    if (st != AMPR_OK) fail_msg("open %s: %s: %s", path, ampr_status_name(st), ampr_errmsg(ctx));
    return ctx;
}

char *tu_greedy_text(ampr_ctx *ctx, int tier, int max_tokens) {
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    p.tier = (ampr_tier)tier;
    ampr_result *r = NULL;
    ampr_status st = ampr_generate(ctx, "abc", 3, &p, &r);
    if (st != AMPR_OK)
        fail_msg("generate on %s: %s: %s", ampr_tier_name((ampr_tier)tier), ampr_status_name(st), ampr_errmsg(ctx));
    char *text = strdup(r->text);
    ampr_result_free(r);
    return text;
}
