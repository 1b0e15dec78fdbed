/* fuzz_hf_config.c -- config.json of a Hugging Face directory: a valid tiny model's
 * directory whose config.json is replaced by the input, loaded whole. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *dir;
    static char cfg[600];
    if (!dir) {
        fz_install_allocator();
        dir = fz_tmp_path("hf");
        fz_write_tiny(dir, "hf");
        snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    }
    fz_write(cfg, data, size);
    ampr__err err = {0};
    ampr__model *m = NULL;
    ampr_status st = ampr__model_load_hf(dir, 1, &m, &err);
    fz_check_err(st, &err);
    ampr__model_free(m);
    return 0;
}
