/*
 * common.h -- what every part of libampr shares: allocation through the
 * user's hooks, error recording, checked arithmetic, small numeric helpers.
 *
 * Internal functions that can fail return ampr_status and take an
 * `ampr__err *err` as their last argument; on failure they fill it with a
 * message through ampr__fail(), which returns the status so that
 * `return ampr__fail(err, AMPR_ERR_X, "...")` reads as one statement.
 */
#ifndef AMPR_COMMON_H
#define AMPR_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ampr.h"

#define AMPR__ERRMSG_MAX 512

typedef struct ampr__err {
    ampr_status status;
    char msg[AMPR__ERRMSG_MAX];
} ampr__err;

#if defined(__GNUC__)
#define AMPR__PRINTF(a, b) __attribute__((format(printf, a, b)))
#define AMPR__UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define AMPR__PRINTF(a, b)
#define AMPR__UNLIKELY(x) (x)
#endif

/* Record a failure (first failure wins: a later, more generic message does
 * not overwrite the root cause). Returns st. err may be NULL. */
ampr_status ampr__fail(ampr__err *err, ampr_status st, const char *fmt, ...)
    AMPR__PRINTF(3, 4);
void ampr__err_clear(ampr__err *err);

/* Forward a failing status upward. */
#define AMPR__TRY(expr)                                                         \
    do {                                                                        \
        ampr_status ampr__st_ = (expr);                                         \
        if (AMPR__UNLIKELY(ampr__st_ != AMPR_OK)) return ampr__st_;             \
    } while (0)

/* Allocation: every byte the library allocates goes through these, so that
 * ampr_set_allocator() hooks (and the OOM-injection tests) see all of it. */
void *ampr__malloc(size_t n);
void *ampr__calloc(size_t count, size_t size); /* overflow-checked */
void *ampr__realloc(void *p, size_t n);
void ampr__free(void *p);
char *ampr__strndup(const char *s, size_t n);
/* count*size, or NULL/ERR_NOMEM with a message on overflow or failure */
void *ampr__alloc_array(size_t count, size_t size, ampr__err *err);
/* The same without zeroing, for buffers the caller writes in full (weights:
 * their pages are then first touched by the threads that fill them). */
void *ampr__alloc_array_uninit(size_t count, size_t size, ampr__err *err);

/* How many allocations have failed on the calling thread so far. */
unsigned ampr__alloc_failures(void);

/* Parse len bytes of JSON with jansson (flags as for json_loadb). Use this,
 * never json_load*: jansson 2.14 does not survive a failed allocation while
 * lexing (it drops the byte being saved and may then read past its buffer),
 * and reports other failed allocations as syntax errors. Here a failed
 * allocation is served from a small reserve, the parse is stopped at the next
 * 64-byte chunk, and *oom is set (the result is then NULL). Otherwise the
 * result and *je are jansson's. */
struct json_t;
struct json_error_t;
struct json_t *ampr__json_parse(const char *buf, size_t len, size_t flags,
                                struct json_error_t *je, int *oom);

/* Checked arithmetic: return 0 on overflow. */
static inline int ampr__mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline int ampr__add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* IEEE half and bfloat16 <-> float, portable (the SIMD kernels have their own). */
float ampr__fp16_to_f32(uint16_t h);
uint16_t ampr__f32_to_fp16(float f); /* round to nearest even */
static inline float ampr__bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t ampr__f32_to_bf16(float f); /* round to nearest even */

/* Monotonic clock in milliseconds. */
double ampr__now_ms(void);

/* *deadline = now + us microseconds on CLOCK_REALTIME, the clock
 * pthread_cond_timedwait measures. */
struct timespec;
void ampr__deadline_in(struct timespec *deadline, int64_t us);

/* UTF-8: length of the valid sequence starting at s (1..4), or 0 if s does
 * not start a valid, complete sequence within n bytes. */
int ampr__utf8_seq_len(const unsigned char *s, size_t n);
/* 1 if all n bytes are valid UTF-8. */
int ampr__utf8_valid(const char *s, size_t n);

#define AMPR__MIN(a, b) ((a) < (b) ? (a) : (b))
#define AMPR__MAX(a, b) ((a) > (b) ? (a) : (b))
#define AMPR__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
