/* fuzz_tokenizer_json.c -- a Hugging Face tokenizer.json (BPE with byte fallback or
 * byte-level, added tokens, merges) on arbitrary bytes; when it parses, a fixed text is
 * encoded and decoded with it. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int init;
    if (!init) { fz_install_allocator(); init = 1; }
    ampr__err err = {0};
    ampr__tokenizer *tok = NULL;
    ampr_status st = ampr__tok_from_hf_json((const char *)data, size, &tok, &err);
    fz_check_err(st, &err);
    if (st != AMPR_OK) return 0;
    static const char text[] = "Hello, world! \xc3\xa9t\xc3\xa9 <s> 12345 \t\n  x";
    int32_t *ids = NULL;
    size_t n = 0;
    ampr__err e2 = {0};
    if (ampr__tok_encode(tok, text, sizeof text - 1, 1, &ids, &n, &e2) == AMPR_OK) {
        ampr__detok d;
        ampr__detok_init(&d);
        char out[AMPR__DETOK_MAX_PIECE + 8];
        for (size_t i = 0; i < n; i++) ampr__detok_push(tok, &d, ids[i], out, sizeof out);
        ampr__detok_flush(&d, out, sizeof out);
    }
    ampr__free(ids);
    ampr__tok_free(tok);
    return 0;
}
