/*
 * hf.c -- Hugging Face directory loader (placeholder until the safetensors
 * reader lands: fails with AMPR_ERR_UNSUPPORTED).
 */
#include "model_int.h"

ampr_status ampr__model_load_hf(const char *dir, int check_finite, ampr__model **out,
                                ampr__err *err) {
    (void)check_finite;
    *out = NULL;
    return ampr__fail(err, AMPR_ERR_UNSUPPORTED, "%s: Hugging Face loading not built yet", dir);
}
