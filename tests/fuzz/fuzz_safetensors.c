/* fuzz_safetensors.c -- a safetensors file (u64 header length, JSON header, tensor
 * table with dtypes, shapes and data offsets) on arbitrary bytes. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *path;
    if (!path) { fz_install_allocator(); path = fz_tmp_path("x.safetensors"); }
    fz_write(path, data, size);
    ampr__err err = {0};
    ampr__model *m = NULL;
    ampr_status st = ampr__model_new("hf", &m, &err);
    if (st != AMPR_OK) return 0;
    st = ampr__st_load(m, path, &err);
    fz_check_err(st, &err);
    ampr__model_free(m);
    return 0;
}
