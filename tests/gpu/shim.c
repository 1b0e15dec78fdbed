/*
 * shim.c -- the few lib/common functions the CUDA backend calls, for GPU
 * check builds on machines without jansson (which lib/common/common.c needs).
 * Same behaviour: first failure wins; allocation through malloc.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/common.h"

ampr_status ampr__fail(ampr__err *err, ampr_status st, const char *fmt, ...) {
    if (!err || err->status != AMPR_OK) return st;
    err->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return st;
}
void ampr__err_clear(ampr__err *err) {
    if (!err) return;
    err->status = AMPR_OK;
    err->msg[0] = 0;
}
void *ampr__malloc(size_t n) { return malloc(n ? n : 1); }
void *ampr__calloc(size_t count, size_t size) { return calloc(count ? count : 1, size ? size : 1); }
void ampr__free(void *p) { free(p); }
double ampr__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}
void *ampr__alloc_array(size_t count, size_t size, ampr__err *err) {
    uint64_t n;
    void *p = ampr__mul_ok(count, size, &n) ? calloc(n ? (size_t)n : 1, 1) : NULL;
    if (!p) ampr__fail(err, AMPR_ERR_NOMEM, "out of memory (%zu x %zu bytes)", count, size);
    return p;
}
void *ampr__alloc_array_uninit(size_t count, size_t size, ampr__err *err) {
    uint64_t n;
    void *p = ampr__mul_ok(count, size, &n) ? malloc(n ? (size_t)n : 1) : NULL;
    if (!p) ampr__fail(err, AMPR_ERR_NOMEM, "out of memory (%zu x %zu bytes)", count, size);
    return p;
}
