/* fuzz_open_config.c -- the JSON config of ampr_open: a tiny generated GGUF model
 * opened with the input as config text (through the public API). A failure must come
 * with a message; a success must give a usable context. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *path;
    if (!path) {
        fz_install_allocator();
        path = fz_tmp_path("tiny.gguf");
        fz_write_tiny(path, "gguf");
    }
    if (size > 4096) return 0;
    char *cfg = malloc(size + 1);
    memcpy(cfg, data, size);
    cfg[size] = '\0';
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(path, cfg, &ctx);
    free(cfg);
    if (st != AMPR_OK) {
        if (ctx && ampr_errmsg(ctx)[0] == '\0') abort();
    } else {
        ampr_model_info mi;
        ampr_model_info_init(&mi);
        if (ampr_get_model_info(ctx, &mi) != AMPR_OK || mi.n_tiers < 1) abort();
        ampr_route_result rr;
        ampr_route_result_init(&rr);
        if (ampr_route(ctx, "a b", 3, NULL, 0, &rr) != AMPR_OK) abort();
    }
    ampr_close(ctx);
    return 0;
}
