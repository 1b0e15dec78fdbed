/* fuzz_tok_encode.c -- encode and decode arbitrary bytes with two real vocabularies:
 * stories260K (SentencePiece BPE with byte fallback, from the GGUF) and GPT-2
 * (byte-level BPE, from tokenizer.json). The first byte picks the vocabulary and
 * flags. Checks: encoding valid UTF-8 succeeds; with the byte-level vocabulary the
 * decoded text equals the input; ids decode without error whatever they are. */
#include "fuzz_util.h"

static ampr__model *g_stories;
static ampr__tokenizer *g_gpt2;

static void init(void) {
    fz_install_allocator();
    ampr__err err = {0};
    const char *p = fz_shared("models/stories260K/stories260K.gguf");
    if (!p || ampr__model_load_gguf(p, 0, &g_stories, &err) != AMPR_OK) {
        fprintf(stderr, "fuzz_tok_encode: stories260K.gguf not loadable (AMPR_SHARED?)\n");
        abort();
    }
    p = fz_shared("tokenizers/gpt2/tokenizer.json");
    FILE *f = p ? fopen(p, "rb") : NULL;
    if (!f) { fprintf(stderr, "fuzz_tok_encode: gpt2 tokenizer.json missing\n"); abort(); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) abort();
    fclose(f);
    if (ampr__tok_from_hf_json(buf, (size_t)n, &g_gpt2, &err) != AMPR_OK) abort();
    free(buf);
}

static size_t decode_all(const ampr__tokenizer *tok, const int32_t *ids, size_t n, char *out,
                         size_t cap) {
    ampr__detok d;
    ampr__detok_init(&d);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        if (cap - len < AMPR__DETOK_MAX_PIECE + 8) return len;
        len += ampr__detok_push(tok, &d, ids[i], out + len, cap - len);
    }
    if (cap - len >= 16) len += ampr__detok_flush(&d, out + len, cap - len);
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_gpt2) init();
    if (size < 1 || size > 8192) return 0;
    unsigned sel = data[0];
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    const ampr__tokenizer *tok = (sel & 1) ? g_gpt2 : g_stories->tok;
    unsigned flags = (sel & 2 ? AMPR__ENC_ADD_BOS : 0) | (sel & 4 ? AMPR__ENC_NO_SPECIAL : 0) |
                     (sel & 8 ? AMPR__ENC_NO_CUT : 0);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    ampr__err err = {0};
    ampr_status st = ampr__tok_encode_ex(tok, text, n, flags, &ids, &n_ids, &err);
    fz_check_err(st, &err);
    int valid = ampr__utf8_valid(text, n);
    if (valid && st != AMPR_OK && st != AMPR_ERR_NOMEM) {
        fprintf(stderr, "valid UTF-8 failed to encode: %s\n", err.msg);
        abort();
    }
    if (!valid && st == AMPR_OK) {
        fprintf(stderr, "invalid UTF-8 encoded without error\n");
        abort();
    }
    int32_t nv = ampr__tok_n_vocab(tok);
    if (st == AMPR_OK) {
        for (size_t i = 0; i < n_ids; i++)
            if (ids[i] < 0 || ids[i] >= nv) { fprintf(stderr, "id %d out of range\n", ids[i]); abort(); }
        size_t cap = n_ids * (AMPR__DETOK_MAX_PIECE + 8) + 64;
        char *out = malloc(cap);
        size_t len = decode_all(tok, ids, n_ids, out, cap);
        /* byte-level BPE without special-token matching is lossless */
        if ((sel & 1) && (sel & 4) && (len != n || memcmp(out, text, n) != 0)) {
            fprintf(stderr, "gpt2 round trip differs: %zu bytes in, %zu out\n", n, len);
            abort();
        }
        free(out);
    }
    ampr__free(ids);
    /* the input read as ids (in range, as the public API guarantees) */
    size_t m = n / 4;
    if (m) {
        int32_t *raw = malloc(m * sizeof *raw);
        for (size_t i = 0; i < m; i++) {
            uint32_t v;
            memcpy(&v, text + 4 * i, 4);
            raw[i] = (int32_t)(v % (uint32_t)nv);
        }
        size_t cap = m * (AMPR__DETOK_MAX_PIECE + 8) + 64;
        char *out = malloc(cap);
        decode_all(tok, raw, m, out, cap);
        free(out);
        free(raw);
    }
    return 0;
}
