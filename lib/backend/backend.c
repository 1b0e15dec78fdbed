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
                                       const int32_t *tokens, int32_t n, const unsigned char *want,
                                       int32_t *argmax, ampr__scratch *s, ampr__err *err) {
    ampr__backend *b = c->backend;
    if (b) return b->ops->decode_batch(b, c, t, seqs, tokens, n, want, argmax, s, err);
    /* the CPU pass makes every row anyway: the argmax is read from it */
    AMPR__TRY(ampr__forward_batch(c, t, seqs, tokens, n, s, err));
    for (int32_t i = 0; argmax && i < n; i++)
        argmax[i] = ampr__argmax(s->logits + (size_t)i * (size_t)c->hp.vocab_size, c->hp.vocab_size);
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
