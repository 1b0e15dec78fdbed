/*
 * backend.c -- dispatch from the request loop to the context's backend; the
 * CPU backend is the forward pass in lib/forward (no state of its own).
 */
#include "backend.h"

#include "../fallback/fallback.h"
#include "../fallback/logits.h"

/* The CPU pass makes every row on the host: what a request wants of a row
 * is read from it here, as a device makes it there, so that the engine's
 * path is the same on both. A penalty is applied for the argmax or the list
 * and taken back: the row stays as the pass made it. */
ampr_status ampr__host_wants(float *rows, int32_t n, int32_t V, ampr__row_want *want, int undecided,
                             ampr__err *err) {
    float *tmp = NULL; /* a walk's or a nucleus's scratch */
    for (int32_t i = 0; want && i < n; i++) {
        int scratch = want[i].what == AMPR__WANT_DRAW || (want[i].what == AMPR__WANT_CANDS && want[i].top_k == 0);
        if (scratch && !tmp && !(tmp = ampr__alloc_array_uninit((size_t)V, sizeof *tmp, err)))
            return AMPR_ERR_NOMEM;
    }
    ampr_status st = AMPR_OK;
    for (int32_t i = 0; want && i < n && st == AMPR_OK; i++) {
        float *row = rows + (size_t)i * (size_t)V;
        ampr__row_want *w = &want[i];
        if ((w->kl_ring && (!w->kl_ring->host || w->kl_slot < 0 || w->kl_slot >= w->kl_ring->n_rows)) ||
            (w->keep && (!w->keep->host || w->keep_slot < 0 || w->keep_slot >= w->keep->n_rows))) {
            st = ampr__fail(err, AMPR_ERR_INTERNAL, "row %d asks for a slot no host ring has", i);
            break;
        }
        if (w->kl_ring) w->kl = ampr__kl(row, w->kl_ring->host + (size_t)w->kl_slot * (size_t)V, V);
        if (w->stats) {
            w->entropy = ampr__entropy(row, V, NULL);
            w->nonfinite = ampr__row_nonfinite(row, V);
        }
        if (w->keep)
            memcpy(w->keep->host + (size_t)w->keep_slot * (size_t)V, row, (size_t)V * sizeof *row);
        if (!ampr__row_draws(w)) continue;
        float kept[AMPR__PEN_MAX];
        int32_t n_pen = w->n_pen, bad = n_pen < 0 || n_pen > AMPR__PEN_MAX;
        for (int32_t p = 0; !bad && p < n_pen; p++) bad = w->pen_ids[p] < 0 || w->pen_ids[p] >= V;
        if (bad) {
            st = ampr__fail(err, AMPR_ERR_INTERNAL, "row %d names penalized ids out of range", i);
            break;
        }
        if (w->what == AMPR__WANT_CANDS && w->top_k == 0 && !(w->top_p > 0.0f && w->top_p < 1.0f)) {
            st = ampr__fail(err, AMPR_ERR_INTERNAL, "row %d asks for a nucleus of top_p %g", i, (double)w->top_p);
            break;
        }
        for (int32_t p = 0; p < n_pen; p++) {
            kept[p] = row[w->pen_ids[p]];
            row[w->pen_ids[p]] = ampr__penalize(row[w->pen_ids[p]], w->penalty);
        }
        w->argmax = ampr__argmax(row, V);
        if (w->what == AMPR__WANT_CANDS) {
            int decided = w->top_k == 0 ? ampr__nucleus_cands(row, V, w->m, w->temperature, w->top_p, w->cand_vals,
                                                              w->cand_ids, &w->mass, tmp)
                                        : ampr__topk_cands(row, V, w->m, w->temperature, w->top_k, w->cand_vals,
                                                           w->cand_ids);
            w->n_cands = decided && !undecided ? w->m : 0;
        }
        if (w->what == AMPR__WANT_DRAW)
            w->drawn = undecided ? -1 : ampr__sample_walk(row, V, w->temperature, w->u, tmp);
        for (int32_t p = n_pen - 1; p >= 0; p--) row[w->pen_ids[p]] = kept[p];
    }
    ampr__free(tmp);
    return st;
}

ampr_status ampr__backend_forward(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq,
                                  const int32_t *tokens, int32_t n, int32_t n_logits,
                                  ampr__row_want *want, ampr__scratch *s, ampr__err *err) {
    ampr__backend *b = c->backend;
    if (b) return b->ops->forward(b, c, t, seq, tokens, n, n_logits, want, s, err);
    AMPR__TRY(ampr__forward(c, t, seq, tokens, n, n_logits, s, err));
    return ampr__host_wants(s->logits, n_logits, c->hp.vocab_size, want, c->test_lists_undecided, err);
}

ampr_status ampr__backend_decode_batch(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *const *seqs,
                                       const int32_t *tokens, int32_t n, ampr__row_want *want,
                                       ampr__scratch *s, ampr__err *err) {
    ampr__backend *b = c->backend;
    if (b) return b->ops->decode_batch(b, c, t, seqs, tokens, n, want, s, err);
    AMPR__TRY(ampr__forward_batch(c, t, seqs, tokens, n, s, err));
    return ampr__host_wants(s->logits, n, c->hp.vocab_size, want, c->test_lists_undecided, err);
}

ampr_status ampr__backend_ring_new(ampr_ctx *c, int32_t n_rows, ampr__ring **out, ampr__err *err) {
    ampr__backend *b = c->backend;
    *out = NULL;
    if (n_rows < 1) return ampr__fail(err, AMPR_ERR_INTERNAL, "a ring of %d rows", n_rows);
    if (b && !b->ops->ring_new)
        return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "the %s backend keeps no logits rows", b->ops->name);
    ampr__ring *r = ampr__calloc(1, sizeof *r);
    if (!r) return ampr__fail(err, AMPR_ERR_NOMEM, "out of memory for a logits ring");
    r->n_rows = n_rows;
    ampr_status st = AMPR_OK;
    if (b) {
        st = b->ops->ring_new(b, c, r, err);
    } else {
        r->host = ampr__alloc_array((size_t)n_rows * (size_t)c->hp.vocab_size, sizeof(float), err);
        if (!r->host) st = AMPR_ERR_NOMEM;
    }
    if (st != AMPR_OK) {
        ampr__free(r);
        return st;
    }
    *out = r;
    return AMPR_OK;
}

void ampr__backend_ring_free(ampr_ctx *c, ampr__ring *r) {
    if (!r) return;
    if (r->dev && c->backend && c->backend->ops->ring_free) c->backend->ops->ring_free(c->backend, c, r);
    ampr__free(r->host);
    ampr__free(r);
}

ampr__backend_open_fn ampr__backend_test_open = NULL;

ampr_status ampr__backend_tier_upload(ampr_ctx *c, ampr__tier *t, ampr__err *err) {
    ampr__backend *b = c->backend;
    if (!b) return ampr__fail(err, AMPR_ERR_INTERNAL, "no device backend to upload tier %s to",
                              ampr_tier_name(t->id));
    return b->ops->tier_upload(b, c, t, err);
}

void ampr__backend_close(ampr_ctx *c) {
    if (!c || !c->backend) return;
    ampr__backend *b = c->backend;
    c->backend = NULL;
    b->ops->close(b);
}

uint64_t ampr__backend_mem_used(ampr_ctx *c) {
    ampr__backend *b = c ? c->backend : NULL;
    return b && b->ops->mem_used ? b->ops->mem_used(b) : 0;
}

double ampr__backend_mem_gbs(ampr_ctx *c) {
    ampr__backend *b = c ? c->backend : NULL;
    if (!b || !b->ops->mem_gbs) return 0;
    pthread_mutex_lock(&c->compute_lock);
    double gbs = b->ops->mem_gbs(b);
    pthread_mutex_unlock(&c->compute_lock);
    return gbs;
}
