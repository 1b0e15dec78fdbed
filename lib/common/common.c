/*
 * common.c -- allocation hooks, error recording, half-precision conversion,
 * UTF-8 validation and the clock shared by the rest of the library.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* madvise(MADV_HUGEPAGE) */
#endif
#include "common.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

/* ---- allocation --------------------------------------------------------- */

/* Weight matrices are large and written once, then streamed once per token:
 * ask for transparent huge pages on their 2 MiB-aligned interior (far fewer
 * page faults while the tiers are built: the 1.1B shape opens in 7 s instead of
 * 13 s here; fewer TLB misses when they are read). Advisory: where the kernel
 * has THP off, nothing changes. Only for the default allocator's own memory. */
#define HUGE_MIN ((size_t)8 << 20)
static void advise_huge(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
    const uintptr_t two_mib = (uintptr_t)2 << 20;
    uintptr_t a = ((uintptr_t)p + two_mib - 1) & ~(two_mib - 1);
    uintptr_t b = ((uintptr_t)p + n) & ~(two_mib - 1);
    if (b > a) (void)madvise((void *)a, b - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

static void *default_malloc(size_t n, void *u) {
    (void)u;
    void *p = malloc(n);
    if (p && n >= HUGE_MIN) advise_huge(p, n);
    return p;
}
static void *default_realloc(void *p, size_t n, void *u) { (void)u; return realloc(p, n); }
static void default_free(void *p, void *u) { (void)u; free(p); }

static ampr_malloc_fn g_malloc = default_malloc;
static ampr_realloc_fn g_realloc = default_realloc;
static ampr_free_fn g_free = default_free;
static void *g_alloc_user;

static _Thread_local unsigned g_alloc_failures;

unsigned ampr__alloc_failures(void) { return g_alloc_failures; }

void *ampr__malloc(size_t n) {
    void *p = g_malloc(n ? n : 1, g_alloc_user);
    if (AMPR__UNLIKELY(!p)) g_alloc_failures++;
    return p;
}

void *ampr__calloc(size_t count, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) return NULL;
    void *p = ampr__malloc(total);
    if (p) memset(p, 0, total);
    return p;
}

void *ampr__realloc(void *p, size_t n) {
    void *q = g_realloc(p, n ? n : 1, g_alloc_user);
    if (AMPR__UNLIKELY(!q)) g_alloc_failures++;
    return q;
}

void ampr__free(void *p) {
    if (p) g_free(p, g_alloc_user);
}

char *ampr__strndup(const char *s, size_t n) {
    char *d = ampr__malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static void *alloc_array(size_t count, size_t size, int zero, ampr__err *err) {
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
        ampr__fail(err, AMPR_ERR_NOMEM, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    void *p = zero ? ampr__calloc(count, size) : ampr__malloc(total);
    if (!p) ampr__fail(err, AMPR_ERR_NOMEM, "out of memory allocating %zu bytes", total);
    return p;
}

void *ampr__alloc_array(size_t count, size_t size, ampr__err *err) {
    return alloc_array(count, size, 1, err);
}

void *ampr__alloc_array_uninit(size_t count, size_t size, ampr__err *err) {
    return alloc_array(count, size, 0, err);
}

/* jansson allocates through these once hooks are installed, so its memory is
 * counted (and can be failed) like ours. During ampr__json_parse() a failed
 * allocation is served from that parse's reserve (see ampr__json_parse). */
typedef struct json_reserve {
    unsigned char *base;
    size_t size, used;
} json_reserve;
static _Thread_local json_reserve *g_json_reserve;

static void *json_malloc_hook(size_t n) {
    void *p = ampr__malloc(n);
    json_reserve *r = g_json_reserve;
    if (!p && r) {
        size_t need = (n + 15) & ~(size_t)15;
        if (need >= n && need <= r->size - r->used) {
            p = r->base + r->used;
            r->used += need;
        }
    }
    return p;
}
static void json_free_hook(void *p) {
    json_reserve *r = g_json_reserve;
    if (r && (unsigned char *)p >= r->base && (unsigned char *)p < r->base + r->size) return;
    ampr__free(p);
}

#define JSON_RESERVE_BYTES ((size_t)64 << 10)
#define JSON_CHUNK 64

typedef struct json_src {
    const char *p;
    size_t left;
    unsigned failures0;
} json_src;

static size_t json_read(void *buf, size_t cap, void *data) {
    json_src *s = data;
    if (ampr__alloc_failures() != s->failures0) return (size_t)-1; /* stop the parse */
    size_t n = AMPR__MIN(AMPR__MIN(s->left, cap), (size_t)JSON_CHUNK);
    memcpy(buf, s->p, n);
    s->p += n;
    s->left -= n;
    return n;
}

json_t *ampr__json_parse(const char *buf, size_t len, size_t flags, json_error_t *je,
                         int *oom) {
    *oom = 0;
    json_reserve r = {ampr__malloc(JSON_RESERVE_BYTES), JSON_RESERVE_BYTES, 0};
    if (!r.base) {
        *oom = 1;
        return NULL;
    }
    json_reserve *saved = g_json_reserve;
    g_json_reserve = &r;
    json_src src = {buf, len, ampr__alloc_failures()};
    json_t *j = json_load_callback(json_read, &src, flags, je);
    if (ampr__alloc_failures() != src.failures0) {
        json_decref(j); /* frees into the reserve are no-ops */
        j = NULL;
        *oom = 1;
    }
    g_json_reserve = saved;
    ampr__free(r.base);
    return j;
}

AMPR_API ampr_status ampr_set_allocator(ampr_malloc_fn m, ampr_realloc_fn r,
                                        ampr_free_fn f, void *user) {
    if (!m && !r && !f) {
        g_malloc = default_malloc;
        g_realloc = default_realloc;
        g_free = default_free;
        g_alloc_user = NULL;
        json_set_alloc_funcs(malloc, free);
        return AMPR_OK;
    }
    if (!m || !r || !f) return AMPR_ERR_INVALID_ARG;
    g_malloc = m;
    g_realloc = r;
    g_free = f;
    g_alloc_user = user;
    json_set_alloc_funcs(json_malloc_hook, json_free_hook);
    return AMPR_OK;
}

/* ---- errors ------------------------------------------------------------- */

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
    err->status = AMPR_OK;
    err->msg[0] = '\0';
}

/* ---- time and text ------------------------------------------------------ */

double ampr__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void ampr__deadline_in(struct timespec *deadline, int64_t us) {
    clock_gettime(CLOCK_REALTIME, deadline);
    deadline->tv_sec += (time_t)(us / 1000000);
    deadline->tv_nsec += (long)(us % 1000000) * 1000L;
    if (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_sec++;
        deadline->tv_nsec -= 1000000000L;
    }
}

int ampr__utf8_seq_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned min;
    if ((c & 0xe0) == 0xc0) { len = 2; min = 0x80; c &= 0x1f; }
    else if ((c & 0xf0) == 0xe0) { len = 3; min = 0x800; c &= 0x0f; }
    else if ((c & 0xf8) == 0xf0) { len = 4; min = 0x10000; c &= 0x07; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
    return len;
}

int ampr__utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) { i++; continue; }
        int l = ampr__utf8_seq_len(p + i, n - i);
        if (!l) return 0;
        i += (size_t)l;
    }
    return 1;
}
