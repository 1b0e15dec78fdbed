/*
 * kv.c -- paged KV arenas: page storage, a free list under a mutex, and the
 * per-sequence block tables (see kv.h).
 */
#include "kv.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

struct ampr__kv_arena {
    int32_t n_layers, kv_dim, block_size, n_pages;
    int32_t n_ranks, rank_dim; /* rank_dim = kv_dim / n_ranks */
    size_t rank_stride;        /* bytes of one rank's slice of a page (all layers) */
    ampr__kv_dtype dtype;
    size_t elem;        /* bytes per element */
    size_t page_stride; /* bytes of one page of K (or V) for all layers */
    size_t pos_bytes;   /* bytes of one position of one rank and layer */
    unsigned char *k, *v;
    pthread_mutex_t mu;
    pthread_cond_t freed; /* signalled when pages are released */
    int32_t *free_list; /* stack of free page ids */
    int32_t n_free;
};

ampr_status ampr__kv_arena_new(int32_t n_layers, int32_t kv_dim, int32_t head_dim,
                               int32_t block_size, int32_t n_pages, ampr__kv_dtype dtype,
                               int32_t n_ranks, ampr__kv_arena **out, ampr__err *err) {
    return ampr__kv_arena_new_ex(n_layers, kv_dim, head_dim, block_size, n_pages, dtype, n_ranks, 1,
                                 out, err);
}

ampr_status ampr__kv_arena_new_ex(int32_t n_layers, int32_t kv_dim, int32_t head_dim,
                                  int32_t block_size, int32_t n_pages, ampr__kv_dtype dtype,
                                  int32_t n_ranks, int with_pages, ampr__kv_arena **out,
                                  ampr__err *err) {
    *out = NULL;
    if (n_layers <= 0 || kv_dim <= 0 || block_size <= 0 || n_pages <= 0)
        return ampr__fail(err, AMPR_ERR_CONFIG, "KV arena needs positive sizes (pages %d, block %d)",
                          n_pages, block_size);
    if (n_ranks <= 0 || kv_dim % n_ranks != 0)
        return ampr__fail(err, AMPR_ERR_CONFIG, "KV arena: %d ranks do not divide kv_dim %d",
                          n_ranks, kv_dim);
    if (head_dim <= 0 || (kv_dim / n_ranks) % head_dim != 0)
        return ampr__fail(err, AMPR_ERR_CONFIG, "KV arena: head_dim %d does not divide %d",
                          head_dim, kv_dim / n_ranks);
    size_t elem = dtype == AMPR__KV_F32 ? 4 : dtype == AMPR__KV_F16 ? 2 : 1;
    /* bytes per position and rank: the elements, then Q8's per-head scales */
    size_t pos_bytes = (size_t)(kv_dim / n_ranks) * elem +
                       (dtype == AMPR__KV_Q8 ? (size_t)(kv_dim / n_ranks / head_dim) * sizeof(float) : 0);
    uint64_t stride, total;
    if (!ampr__mul_ok((uint64_t)n_layers * (uint64_t)block_size, (uint64_t)pos_bytes * (uint64_t)n_ranks, &stride) ||
        !ampr__mul_ok(stride, (uint64_t)n_pages, &total) || total > SIZE_MAX / 2)
        return ampr__fail(err, AMPR_ERR_CONFIG, "KV arena of %d pages is too large", n_pages);
    ampr__kv_arena *a = ampr__calloc(1, sizeof *a);
    if (!a) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for the KV arena");
    a->n_layers = n_layers;
    a->kv_dim = kv_dim;
    a->block_size = block_size;
    a->n_pages = n_pages;
    a->dtype = dtype;
    a->elem = elem;
    a->page_stride = (size_t)stride;
    a->n_ranks = n_ranks;
    a->rank_dim = kv_dim / n_ranks;
    a->pos_bytes = pos_bytes;
    a->rank_stride = (size_t)stride / (size_t)n_ranks;
    a->k = with_pages ? ampr__malloc((size_t)total) : NULL;
    a->v = with_pages ? ampr__malloc((size_t)total) : NULL;
    a->free_list = ampr__calloc((size_t)n_pages, sizeof(int32_t));
    if ((with_pages && (!a->k || !a->v)) || !a->free_list) {
        ampr__free(a->k);
        ampr__free(a->v);
        ampr__free(a->free_list);
        ampr__free(a);
        return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a KV arena of %llu bytes",
                          (unsigned long long)(2 * total));
    }
    /* pop order 0, 1, 2, ... so a fresh arena hands out pages in order */
    for (int32_t i = 0; i < n_pages; i++) a->free_list[i] = n_pages - 1 - i;
    a->n_free = n_pages;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->freed, NULL);
    *out = a;
    return AMPR_OK;
}

void ampr__kv_arena_free(ampr__kv_arena *a) {
    if (!a) return;
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->freed);
    ampr__kv_arena_drop_pages(a);
    ampr__free(a->free_list);
    ampr__free(a);
}

void ampr__kv_arena_drop_pages(ampr__kv_arena *a) {
    if (!a) return;
    ampr__free(a->k);
    ampr__free(a->v);
    a->k = a->v = NULL;
}

int ampr__kv_has_pages(const ampr__kv_arena *a) { return a->k != NULL; }

int32_t ampr__kv_block_size(const ampr__kv_arena *a) { return a->block_size; }
int32_t ampr__kv_pages_total(const ampr__kv_arena *a) { return a->n_pages; }
uint64_t ampr__kv_bytes(const ampr__kv_arena *a) { return 2 * (uint64_t)a->page_stride * (uint64_t)a->n_pages; }
ampr__kv_dtype ampr__kv_dtype_of(const ampr__kv_arena *a) { return a->dtype; }
size_t ampr__kv_elem_size(const ampr__kv_arena *a) { return a->elem; }
size_t ampr__kv_pos_bytes(const ampr__kv_arena *a) { return a->pos_bytes; }
int32_t ampr__kv_ranks(const ampr__kv_arena *a) { return a->n_ranks; }

int32_t ampr__kv_pages_used(ampr__kv_arena *a) {
    pthread_mutex_lock(&a->mu);
    int32_t used = a->n_pages - a->n_free;
    pthread_mutex_unlock(&a->mu);
    return used;
}

ampr_status ampr__kv_seq_reserve_wait(ampr__kv_seq *seq, ampr__kv_arena *a, int32_t n_positions,
                                      int64_t wait_ms, ampr__err *err) {
    if (seq->arena && seq->arena != a)
        return ampr__fail(err, AMPR_ERR_INTERNAL, "sequence already belongs to another arena");
    int32_t need = (n_positions + a->block_size - 1) / a->block_size;
    if (need <= seq->n_blocks) return AMPR_OK;
    int32_t more = need - seq->n_blocks;
    if (more > a->n_pages) /* could never fit: waiting would not help */
        return ampr__fail(err, AMPR_ERR_KV_FULL,
                          "KV arena full: %d more pages of %d tokens needed, the arena has %d",
                          more, a->block_size, a->n_pages);
    int32_t *blocks = ampr__realloc(seq->blocks, (size_t)need * sizeof(int32_t));
    if (!blocks) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a block table");
    seq->blocks = blocks;
    seq->arena = a;
    struct timespec deadline;
    ampr__deadline_in(&deadline, (int64_t)wait_ms * 1000);
    pthread_mutex_lock(&a->mu);
    while (more > a->n_free && wait_ms > 0) {
        if (pthread_cond_timedwait(&a->freed, &a->mu, &deadline) == ETIMEDOUT) break;
    }
    if (more > a->n_free) {
        int32_t free_now = a->n_free;
        pthread_mutex_unlock(&a->mu);
        return ampr__fail(err, AMPR_ERR_KV_FULL,
                          "KV arena full: %d more pages of %d tokens needed, %d of %d free%s", more,
                          a->block_size, free_now, a->n_pages, wait_ms > 0 ? " after waiting" : "");
    }
    for (int32_t i = 0; i < more; i++) seq->blocks[seq->n_blocks++] = a->free_list[--a->n_free];
    pthread_mutex_unlock(&a->mu);
    return AMPR_OK;
}

ampr_status ampr__kv_seq_reserve(ampr__kv_seq *seq, ampr__kv_arena *a, int32_t n_positions,
                                 ampr__err *err) {
    return ampr__kv_seq_reserve_wait(seq, a, n_positions, 0, err);
}

void ampr__kv_seq_release(ampr__kv_seq *seq) {
    if (!seq) return;
    ampr__kv_arena *a = seq->arena;
    if (a && seq->n_blocks > 0) {
        pthread_mutex_lock(&a->mu);
        for (int32_t i = seq->n_blocks - 1; i >= 0; i--) a->free_list[a->n_free++] = seq->blocks[i];
        pthread_cond_broadcast(&a->freed);
        pthread_mutex_unlock(&a->mu);
    }
    ampr__free(seq->blocks);
    memset(seq, 0, sizeof *seq);
}

static inline size_t kv_offset(const ampr__kv_seq *seq, int32_t rank, int32_t l, int32_t pos) {
    const ampr__kv_arena *a = seq->arena;
    int32_t page = seq->blocks[pos / a->block_size];
    int32_t slot = pos % a->block_size;
    return (size_t)page * a->page_stride + (size_t)rank * a->rank_stride +
           ((size_t)l * (size_t)a->block_size + (size_t)slot) * a->pos_bytes;
}

void *ampr__kv_k(const ampr__kv_seq *seq, int32_t rank, int32_t l, int32_t pos) {
    return seq->arena->k + kv_offset(seq, rank, l, pos);
}
void *ampr__kv_v(const ampr__kv_seq *seq, int32_t rank, int32_t l, int32_t pos) {
    return seq->arena->v + kv_offset(seq, rank, l, pos);
}
