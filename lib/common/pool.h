/*
 * pool.h -- a fixed pool of worker threads for data-parallel loops.
 *
 * ampr__pool_run(pool, n, fn, arg) calls fn(arg, i, n) for i in [0, n) with
 * each i on some thread (the caller's thread takes part) and returns when all
 * are done. One run at a time per pool: callers serialise with their own lock.
 */
#ifndef AMPR_COMMON_POOL_H
#define AMPR_COMMON_POOL_H

#include "common.h"

typedef struct ampr__pool ampr__pool;
typedef void (*ampr__pool_fn)(void *arg, int i, int n);

ampr_status ampr__pool_new(int n_threads, ampr__pool **out, ampr__err *err);
void ampr__pool_free(ampr__pool *p);
int ampr__pool_size(const ampr__pool *p);
void ampr__pool_run(ampr__pool *p, int n, ampr__pool_fn fn, void *arg);
/* The machine's online CPUs, 1 to 64: the default thread count. */
int ampr__cpu_count(void);

#endif
