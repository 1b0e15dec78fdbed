/*
 * pool.c -- a fixed pool of worker threads (see pool.h).
 *
 * ampr__pool_run() publishes a job (fn, arg, n), bumps a generation counter
 * and takes part in the work itself. Items are claimed with an atomic counter
 * (tagged with the generation), so uneven items balance out, and the caller
 * waits only for items that were claimed, never for a worker to show up: on
 * a busy machine a worker that is not scheduled would otherwise hold every
 * job for a time slice (2 threads beside another busy process: decode 9x
 * slower than 1 thread).
 *
 * A decode step is ~100 short jobs back to back (a few matmuls per layer), so
 * waking a sleeping thread for each would cost more than the work: waiting
 * threads first spin on the counters for up to SPIN_NS, and only then sleep
 * on a condition variable. The publisher broadcasts only when a worker sleeps.
 * Between requests the workers are asleep and cost nothing.
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
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

/* The job of one generation g lives in job[g & 1]: a worker that wakes late
 * may still read the slot of a job that has finished, but it can no longer
 * claim an item of it (the generation in `next` has moved on). */
typedef struct pool_job {
    _Atomic(ampr__pool_fn) fn;
    _Atomic(void *) arg;
    atomic_int n;
} pool_job;

struct ampr__pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t wake, done_cv;
    atomic_uint_least64_t generation; /* bumped (under mu) for each job */
    atomic_int stop;
    int sleepers; /* workers waiting on `wake` (under mu) */
    pool_job job[2];
    /* (generation << 32) | next item: an item is claimed by a compare-and-
     * swap that also checks the generation */
    atomic_uint_least64_t next;
    atomic_int done; /* items of the current job finished */
    int waiting;     /* the caller sleeps on done_cv (under mu) */
};

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin until `cond` holds or SPIN_NS have passed (the clock is read every 64
 * turns, with a yield: on a machine with more runnable threads than cores the
 * thread being waited for may need this one's core). */
#define SPIN_UNTIL(cond)                                                          \
    do {                                                                          \
        int64_t t_end_ = 0;                                                       \
        for (unsigned k_ = 0; !(cond); k_++) {                                    \
            CPU_RELAX();                                                          \
            if ((k_ & 63) == 63) {                                                \
                int64_t t_ = mono_ns();                                           \
                if (!t_end_) t_end_ = t_ + SPIN_NS;                               \
                else if (t_ > t_end_) break;                                      \
                sched_yield();                                                    \
            }                                                                     \
        }                                                                         \
    } while (0)

/* Claim and run items of generation g until none is left. The caller's
 * thread does this too, so a worker that is slow to wake (asleep, or not
 * scheduled on a busy machine) delays nothing: the items it never claimed
 * are done by the others, and nobody waits for it to show up. */
static void run_items(ampr__pool *p, uint32_t g) {
    pool_job *j = &p->job[g & 1];
    /* acquire: a slot already rewritten for a later job then orders the
     * caller's later store of `next` before our claim, which fails */
    ampr__pool_fn fn = atomic_load_explicit(&j->fn, memory_order_acquire);
    void *arg = atomic_load_explicit(&j->arg, memory_order_acquire);
    int n = atomic_load_explicit(&j->n, memory_order_acquire);
    uint64_t v = atomic_load_explicit(&p->next, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(v >> 32) != g || (int64_t)(uint32_t)v >= n) return;
        if (!atomic_compare_exchange_weak_explicit(&p->next, &v, v + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* v was reloaded */
        fn(arg, (int)(uint32_t)v, n);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == n) {
            pthread_mutex_lock(&p->mu); /* the last item: wake the caller if it sleeps */
            if (p->waiting) pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
        v = atomic_load_explicit(&p->next, memory_order_acquire);
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
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        run_items(p, (uint32_t)seen);
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
    pthread_cond_init(&p->done_cv, NULL);
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
    pthread_cond_destroy(&p->done_cv);
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
    /* one run at a time (pool.h): the previous job's items are all done */
    uint32_t g = (uint32_t)atomic_load(&p->generation) + 1;
    pool_job *j = &p->job[g & 1];
    atomic_store_explicit(&j->fn, fn, memory_order_release);
    atomic_store_explicit(&j->arg, arg, memory_order_release);
    atomic_store_explicit(&j->n, n, memory_order_release);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->next, (uint64_t)g << 32, memory_order_release);
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->generation, g, memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_items(p, g);
    /* items other threads claimed may still run: wait for them alone */
    SPIN_UNTIL(atomic_load_explicit(&p->done, memory_order_acquire) >= n);
    if (atomic_load_explicit(&p->done, memory_order_acquire) < n) {
        pthread_mutex_lock(&p->mu);
        p->waiting = 1;
        while (atomic_load_explicit(&p->done, memory_order_acquire) < n)
            pthread_cond_wait(&p->done_cv, &p->mu);
        p->waiting = 0;
        pthread_mutex_unlock(&p->mu);
    }
}

int ampr__cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}
