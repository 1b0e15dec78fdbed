/*
 * backend.c -- dispatch from the request loop to the context's backend; the
 * CPU backend is the forward pass in lib/forward (no state of its own).
 */
#include "backend.h"

#include "../fallback/logits.h"

ampr_status ampr__backend_forward(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *seq,
                                  const int32_t *tokens, int32_t n, int32_t n_logits,
                                  ampr__scratch *s, ampr__err *err) {
    ampr__backend *b = c->backend;
    if (!b) return ampr__forward(c, t, seq, tokens, n, n_logits, s, err);
    return b->ops->forward(b, c, t, seq, tokens, n, n_logits, s, err);
}

ampr_status ampr__backend_decode_batch(ampr_ctx *c, ampr__tier *t, ampr__kv_seq *const *seqs,
                                       const int32_t *tokens, int32_t n, ampr__row_want *want,
                                       ampr__scratch *s, ampr__err *err) {
    ampr__backend *b = c->backend;
    if (b) return b->ops->decode_batch(b, c, t, seqs, tokens, n, want, s, err);
    /* the CPU pass makes every row anyway: what a request wants is read from
     * it, as a device would make it (so the engine's path is the same) */
    AMPR__TRY(ampr__forward_batch(c, t, seqs, tokens, n, s, err));
    int32_t V = c->hp.vocab_size;
    for (int32_t i = 0; want && i < n; i++) {
        const float *row = s->logits + (size_t)i * (size_t)V;
        ampr__row_want *w = &want[i];
        if (w->what == AMPR__WANT_ROW) continue; /* the caller has the row itself */
        w->argmax = ampr__argmax(row, V);
        if (w->what == AMPR__WANT_CANDS)
            w->n_cands = ampr__topk_cands(row, V, w->m, w->temperature, w->top_k, w->cand_vals,
                                          w->cand_ids) && !c->test_lists_undecided ? w->m : 0;
    }
    return AMPR_OK;
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

double ampr__backend_mem_gbs(ampr_ctx *c) {
    ampr__backend *b = c ? c->backend : NULL;
    if (!b || !b->ops->mem_gbs) return 0;
    pthread_mutex_lock(&c->compute_lock);
    double gbs = b->ops->mem_gbs(b);
    pthread_mutex_unlock(&c->compute_lock);
    return gbs;
}
