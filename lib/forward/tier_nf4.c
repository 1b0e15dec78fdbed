/*
 * tier_nf4.c -- NF4 tiers straight from NF4 checkpoint tensors (bitsandbytes
 * 4-bit checkpoints, see model/bnb.c), without dequantizing and
 * requantizing: the packed codes and block absmax values are copied.
 *
 * A tier matrix may be a row-wise concatenation of checkpoint tensors (wqkv =
 * Q|K|V, w_gu = gate|up). NF4 blocks run over the flattened matrix, so the
 * concatenation of the parts' blocks is the fused matrix's blocks exactly
 * when every part but the last holds a multiple of 64 elements (then each
 * part also starts on a whole byte). Otherwise -- and for SmoothQuant or
 * tensor-parallel shards -- tier.c builds the matrix the usual way, from the
 * dequantized fp32 rows (requantizing, which may change some codes).
 */
#include "../engine.h"

ampr_status ampr__tier_nf4_copy(const ampr__qtraits *qt, const ampr__tensor *const *parts,
                                int n_parts, ampr__qmat *dst, int *done, ampr__err *err) {
    *done = 0;
    if (qt->type != AMPR__Q_NF4 && qt->type != AMPR__Q_NF4_DQ) return AMPR_OK;
    int64_t rows = 0, cols = parts[0]->ne[0];
    for (int i = 0; i < n_parts; i++) {
        const ampr__tensor *t = parts[i];
        if (t->dtype != AMPR__DT_NF4 || t->ne[0] != cols) return AMPR_OK;
        if (i < n_parts - 1 && (t->ne[0] * t->ne[1]) % 64 != 0) return AMPR_OK;
        rows += t->ne[1];
    }
    AMPR__TRY(ampr__nf4_alloc(dst, rows, cols, err));
    uint8_t *p = dst->data;
    size_t e0 = 0;
    for (int i = 0; i < n_parts; i++) {
        const ampr__tensor *t = parts[i];
        size_t ne = (size_t)(t->ne[0] * t->ne[1]);
        memcpy(p + e0 / 2, t->data, (ne + 1) / 2);
        memcpy(dst->scales + e0 / 64, t->absmax, (ne + 63) / 64 * sizeof(float));
        e0 += ne;
    }
    if (qt->type == AMPR__Q_NF4_DQ) {
        ampr_status st = ampr__nf4dq_from_nf4(dst, err);
        if (st != AMPR_OK) {
            ampr__qmat_free(dst);
            return st;
        }
    }
    *done = 1;
    return AMPR_OK;
}
