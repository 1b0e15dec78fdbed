/* fuzz_llama2c_tok.c -- the llama2.c tokenizer.bin parser (max_token_length, then per
 * token a float score, an int32 length and the bytes). The first two input bytes give
 * n_vocab; when it parses, a fixed text is encoded and every id decoded. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int init;
    if (!init) { fz_install_allocator(); init = 1; }
    if (size < 2) return 0;
    int32_t n_vocab = (int32_t)(data[0] | (data[1] << 8)) - 8; /* includes 0 and negatives */
    ampr__err err = {0};
    ampr__tokenizer *tok = NULL;
    ampr_status st = ampr__tok_from_llama2c(data + 2, size - 2, n_vocab, &tok, &err);
    fz_check_err(st, &err);
    if (st != AMPR_OK) return 0;
    static const char text[] = "Once upon a time, \xe2\x96\x81 <0x41> \xf0\x9f\x98\x80!";
    int32_t *ids = NULL;
    size_t n = 0;
    ampr__err e2 = {0};
    if (ampr__tok_encode(tok, text, sizeof text - 1, 1, &ids, &n, &e2) == AMPR_OK) {
        ampr__detok d;
        ampr__detok_init(&d);
        char out[AMPR__DETOK_MAX_PIECE + 8];
        for (size_t i = 0; i < n; i++) ampr__detok_push(tok, &d, ids[i], out, sizeof out);
        for (int32_t i = 0; i < ampr__tok_n_vocab(tok); i++)
            ampr__detok_push(tok, &d, i, out, sizeof out);
        ampr__detok_flush(&d, out, sizeof out);
    }
    ampr__free(ids);
    ampr__tok_free(tok);
    return 0;
}
