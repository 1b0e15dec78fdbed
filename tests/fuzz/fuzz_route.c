/* fuzz_route.c -- ampr_route on arbitrary prompts (and, when the input holds a NUL,
 * an arbitrary system prompt after it), plus ampr_tokenize through the public API. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ampr_ctx *ctx;
    if (!ctx) {
        fz_install_allocator();
        const char *path = fz_tmp_path("route.gguf");
        fz_write_tiny(path, "gguf");
        if (ampr_open(path, "{\"tiers\": [\"fp16\", \"int8\", \"nf4\"], \"threads\": 1}", &ctx) !=
            AMPR_OK) {
            fprintf(stderr, "fuzz_route: open: %s\n", ampr_errmsg(ctx));
            abort();
        }
        unlink(path);
    }
    const char *p = (const char *)data;
    const uint8_t *nul = memchr(data, 0, size);
    size_t plen = nul ? (size_t)(nul - data) : size;
    const char *sys = nul ? (const char *)nul + 1 : NULL;
    size_t slen = nul ? size - plen - 1 : 0;
    ampr_route_result r;
    ampr_route_result_init(&r);
    ampr_status st = ampr_route(ctx, p, plen, sys, slen, &r);
    if (st != AMPR_OK && st != AMPR_ERR_BAD_UTF8) abort();
    if (st == AMPR_OK) {
        if (!(r.score >= 0.0f && r.score <= 1.0f)) abort();
        if (r.tier != AMPR_TIER_FP16 && r.tier != AMPR_TIER_INT8 && r.tier != AMPR_TIER_NF4) abort();
        if (!memchr(r.reason, 0, sizeof r.reason)) abort();
        for (int i = 0; i < AMPR_ROUTE_N_FEATURES; i++)
            if (r.features[i] != r.features[i]) abort(); /* NaN */
    }
    /* the whole input, NULs included, through the length API */
    int32_t ids[512];
    size_t n = 0;
    st = ampr_tokenize(ctx, p, size, 1, ids, 512, &n);
    if (st != AMPR_OK && st != AMPR_ERR_BAD_UTF8 && st != AMPR_ERR_BUFFER_TOO_SMALL) abort();
    if (st != AMPR_OK && ampr_errmsg(ctx)[0] == '\0') abort();
    if (st == AMPR_OK) {
        char out[4096];
        size_t len = 0;
        st = ampr_detokenize(ctx, ids, n, out, sizeof out, &len);
        if (st != AMPR_OK && st != AMPR_ERR_BUFFER_TOO_SMALL) abort();
    }
    return 0;
}
