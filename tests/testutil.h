/*
 * testutil.h -- helpers shared by the cmocka tests: where the shared test data
 * is, reading files, temporary directories.
 */
#ifndef AMPR_TESTUTIL_H
#define AMPR_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Path under ../shared (env AMPR_SHARED), written to a static buffer per call
 * slot (4 slots rotate). Returns NULL when the file does not exist. */
const char *tu_shared(const char *rel);
/* Skip the current test when the shared data is absent. */
#define TU_SHARED_OR_SKIP(var, rel)          \
    const char *var = tu_shared(rel);        \
    do {                                     \
        if (!var) { skip(); }                \
    } while (0)

/* Read a whole file (malloc'd, NUL-terminated); NULL on failure. */
char *tu_read_file(const char *path, size_t *len);
/* A fresh empty directory under $AMPR_TMP (or /tmp); malloc'd path. */
char *tu_tmpdir(const char *tag);
/* Write bytes to a file; 0 on success. */
int tu_write_file(const char *path, const void *data, size_t len);
/* Remove a directory tree (best effort). */
void tu_rmtree(const char *path);

/* The small random test model most tests share: dim 64, hidden 128, 2
 * layers, 4 heads / 2 KV heads (GQA), head_dim 16, vocab 320, F32 weights,
 * written as GGUF to dir/rand.gguf (path returned in a static buffer) with
 * the given context length and seed; NULL on failure (reason on stderr). */
const char *tu_small_model(const char *dir, int context_length, uint64_t seed);

/* The fixture most test binaries share: a fresh temporary folder (tu_dir)
 * holding the small random model (tu_model). Both return 0 on success, for
 * use as cmocka group setup/teardown. */
extern char *tu_dir;
extern char tu_model[4096];
int tu_fixture_setup(const char *tag, int context_length, uint64_t seed);
int tu_fixture_teardown(void);

/* ampr_open that fails the running test with the library's message. */
struct ampr_ctx *tu_open_ok(const char *path, const char *config);
/* Greedy text of max_tokens from "abc" on tier (EOS ignored), malloc'd;
 * fails the test when generation fails. */
char *tu_greedy_text(struct ampr_ctx *ctx, int tier, int max_tokens); /* tier: an ampr_tier */

#endif
