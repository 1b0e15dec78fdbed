/*
 * fuzz_util.h -- helpers shared by the libFuzzer targets in tests/fuzz/.
 *
 * Every target treats its input as an untrusted model file, config or prompt.
 * The library must answer with a status, never crash, leak, abort or print.
 * Allocations go through a capped allocator (ampr_set_allocator): anything
 * larger than FUZZ_ALLOC_CAP fails, so absurd sizes in the input exercise the
 * AMPR_ERR_NOMEM paths instead of tripping libFuzzer's malloc limit.
 * Shared data (real models) is found through $AMPR_SHARED (default ../shared).
 */
#ifndef AMPR_FUZZ_UTIL_H
#define AMPR_FUZZ_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model.h"
#include "model/model_int.h"

#define FUZZ_ALLOC_CAP ((size_t)256 << 20)

static void *fz_malloc(size_t n, void *u) { (void)u; return n > FUZZ_ALLOC_CAP ? NULL : malloc(n); }
static void *fz_realloc(void *p, size_t n, void *u) {
    (void)u;
    return n > FUZZ_ALLOC_CAP ? NULL : realloc(p, n);
}
static void fz_free(void *p, void *u) { (void)u; free(p); }

static void fz_install_allocator(void) { ampr_set_allocator(fz_malloc, fz_realloc, fz_free, NULL); }

/* A per-process scratch path under $TMPDIR (or /tmp): "<tmp>/ampr-fuzz-<pid>-<tag>".
 * Every path handed out is removed when the process exits (libFuzzer ends a
 * -max_total_time run with exit()): a file, or a directory with the files in it. */
static char fz_tmp_paths[8][512];
static int fz_tmp_count;

static void fz_tmp_cleanup(void) {
    for (int i = 0; i < fz_tmp_count && i < 8; i++) {
        const char *p = fz_tmp_paths[i];
        struct stat st;
        if (stat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            DIR *d = opendir(p);
            struct dirent *e;
            while (d && (e = readdir(d)) != NULL) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                char f[1024];
                snprintf(f, sizeof f, "%s/%s", p, e->d_name);
                unlink(f);
            }
            if (d) closedir(d);
            rmdir(p);
        } else {
            unlink(p);
        }
    }
}

static const char *fz_tmp_path(const char *tag) {
    const char *root = getenv("TMPDIR");
    if (!root || !*root) root = "/tmp";
    if (fz_tmp_count == 0) atexit(fz_tmp_cleanup);
    char *b = fz_tmp_paths[fz_tmp_count++ & 7];
    snprintf(b, sizeof fz_tmp_paths[0], "%s/ampr-fuzz-%d-%s", root, (int)getpid(), tag);
    return b;
}

static void fz_write(const char *path, const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();
}

/* A file under $AMPR_SHARED, or NULL when absent. */
static const char *fz_shared(const char *rel) {
    static char buf[4][1024];
    static int slot;
    const char *root = getenv("AMPR_SHARED");
    if (!root) root = "../shared";
    char *b = buf[slot++ & 3];
    snprintf(b, sizeof buf[0], "%s/%s", root, rel);
    struct stat st;
    return stat(b, &st) == 0 ? b : NULL;
}

/* The tiny random model the fuzzers open (fast to build: every input opens it). */
static ampr__hparams fz_tiny_hp(void) {
    ampr__hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.dim = 64, hp.hidden_dim = 128, hp.n_layers = 1, hp.n_heads = 4, hp.n_kv_heads = 2;
    hp.head_dim = 16, hp.vocab_size = 300, hp.context_length = 64;
    hp.norm_eps = 1e-5f, hp.rope_theta = 10000.0f;
    return hp;
}

static void fz_write_tiny(const char *path, const char *format) {
    ampr__hparams hp = fz_tiny_hp();
    ampr__err err = {0};
    if (ampr__model_write_random(path, format, &hp, AMPR__DT_F32, 1, 7, &err) != AMPR_OK) {
        fprintf(stderr, "fuzz: cannot write %s: %s\n", path, err.msg);
        abort();
    }
}

/* A failed internal call must say why. */
static void fz_check_err(ampr_status st, const ampr__err *err) {
    if (st != AMPR_OK && (err->status != st || err->msg[0] == '\0')) {
        fprintf(stderr, "fuzz: status %d with err status %d, message \"%s\"\n", (int)st,
                (int)err->status, err->msg);
        abort();
    }
}

#endif
