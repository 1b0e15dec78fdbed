/*
 * pool.c -- a fixed pool of worker threads (see pool.h).
 *
 * Workers sleep on a condition variable; ampr__pool_run() publishes a job
 * (fn, arg, n), bumps a generation counter and takes part in the work itself.
 * Items are claimed with an atomic counter, so uneven items balance out.
 */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>

struct ampr__pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;
    int stop;
    /* the current job */
    ampr__pool_fn fn;
    void *arg;
    int n;
    atomic_int next;
    int active; /* workers still inside the current job */
};

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
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_items(p);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
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
    p->stop = 1;
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
    p->active = p->n_started;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_items(p);
    pthread_mutex_lock(&p->mu);
    while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
