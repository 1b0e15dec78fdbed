/* fuzz_gguf.c -- the GGUF loader (header, key-values, tensor infos, data, tokenizer) on
 * arbitrary bytes, with the NaN/Inf scan on. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *path;
    if (!path) { fz_install_allocator(); path = fz_tmp_path("x.gguf"); }
    fz_write(path, data, size);
    ampr__err err = {0};
    ampr__model *m = NULL;
    ampr_status st = ampr__model_load_gguf(path, 1, &m, &err);
    fz_check_err(st, &err);
    if ((st == AMPR_OK) != (m != NULL)) abort();
    ampr__model_free(m);
    return 0;
}
