/*
 * pool.c -- a fixed pool of worker threads (see pool.h).
 *
 * ampr__pool_run() publishes a job (fn, arg, n), bumps a generation counter
 * and takes part in the work itself. Items are claimed with an atomic counter,
 * so uneven items balance out.
 *
 * A decode step is ~100 short jobs back to back (a few matmuls per layer), so
 * waking a sleeping thread for each would cost more than the work: waiting
 * threads first spin on the counters for up to SPIN_NS, and only then sleep
 * on a condition variable. The publisher broadcasts only when a worker sleeps.
 * Between requests the workers are asleep and cost nothing.
 */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_NS 200000 /* 0.2 ms */

struct ampr__pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_uint_least64_t generation; /* written under mu */
    atomic_int stop;
    int sleepers; /* workers waiting on `wake` (under mu) */
    /* the current job: written under mu before `generation` is bumped */
    ampr__pool_fn fn;
    void *arg;
    int n;
    atomic_int next;
    atomic_int active; /* workers still inside the current job */
};

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until `cond` holds or SPIN_NS have passed (the clock is read every 64 turns). */
#define SPIN_UNTIL(cond)                                                          \
    do {                                                                          \
        int64_t t_end_ = 0;                                                       \
        for (unsigned k_ = 0; !(cond); k_++) {                                    \
            CPU_RELAX();                                                          \
            if ((k_ & 63) == 63) {                                                \
                int64_t t_ = mono_ns();                                           \
                if (!t_end_) t_end_ = t_ + SPIN_NS;                               \
                else if (t_ > t_end_) break;                                      \
            }                                                                     \
        }                                                                         \
    } while (0)

static void run_items(ampr__pool *p) {
    for (;;) {
        int i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n) break;
        p->fn(p->arg, i, p->n);
    }
}

static void *worker(void *vp) {
    ampr__pool *p = vp;
    uint64_t seen = 0;
    for (;;) {
        SPIN_UNTIL(atomic_load(&p->generation) != seen || atomic_load(&p->stop));
        if (atomic_load(&p->generation) == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (!atomic_load(&p->stop) && atomic_load(&p->generation) == seen)
                pthread_cond_wait(&p->wake, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = atomic_load(&p->generation);
        run_items(p);
        if (atomic_fetch_sub(&p->active, 1) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

ampr_status ampr__pool_new(int n_threads, ampr__pool **out, ampr__err *err) {
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    ampr__pool *p = ampr__calloc(1, sizeof *p);
    if (!p) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory creating the thread pool");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (n_threads > 1) {
        p->threads = ampr__calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!p->threads) {
            ampr__pool_free(p);
            return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory creating the thread pool");
        }
        for (int i = 0; i < n_threads - 1; i++) {
            if (pthread_create(&p->threads[i], NULL, worker, p) != 0) {
                ampr__pool_free(p);
                return ampr__fail(err, AMPR_ERR_NOMEM, "cannot start worker thread %d", i);
            }
            p->n_started++;
        }
    }
    *out = p;
    return AMPR_OK;
}

void ampr__pool_free(ampr__pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    ampr__free(p->threads);
    ampr__free(p);
}

int ampr__pool_size(const ampr__pool *p) { return p ? p->n_threads : 1; }

void ampr__pool_run(ampr__pool *p, int n, ampr__pool_fn fn, void *arg) {
    if (n <= 0) return;
    if (!p || p->n_started == 0 || n == 1) {
        for (int i = 0; i < n; i++) fn(arg, i, n);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    atomic_store(&p->next, 0);
    atomic_store(&p->active, p->n_started);
    atomic_fetch_add(&p->generation, 1);
    if (p->sleepers) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_items(p);
    SPIN_UNTIL(atomic_load(&p->active) == 0);
    if (atomic_load(&p->active) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->active) > 0) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

int ampr__cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}
