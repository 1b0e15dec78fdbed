/*
 * test_tokenizer.c -- the tokenizer against real reference outputs:
 * llama2.c run.c encode() (tok512.bin, Llama-2 tokenizer.bin), SentencePiece
 * (golden.jsonl, tok512_golden.jsonl), llama.cpp's test-tokenizer-0 vectors
 * (Llama-2 SPM and GPT-2), HF tokenizer.json files (phi3 = Llama-2 vocab,
 * GPT-2); streaming decode; malformed inputs. Tests skip when ../shared is
 * absent. Every test frees everything.
 */
#include "testutil.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

/* ---- helpers ------------------------------------------------------------- */

static ampr__tokenizer *load_bin(const char *path, int32_t n_vocab) {
    size_t len;
    char *data = tu_read_file(path, &len);
    assert_non_null(data);
    ampr__tokenizer *t = NULL;
    ampr__err err = {0};
    ampr_status st = ampr__tok_from_llama2c(data, len, n_vocab, &t, &err);
    if (st) print_error("%s\n", err.msg);
    assert_int_equal(st, AMPR_OK);
    free(data);
    return t;
}

static ampr__tokenizer *load_json(const char *path) {
    size_t len;
    char *data = tu_read_file(path, &len);
    assert_non_null(data);
    ampr__tokenizer *t = NULL;
    ampr__err err = {0};
    ampr_status st = ampr__tok_from_hf_json(data, len, &t, &err);
    if (st) print_error("%s\n", err.msg);
    assert_int_equal(st, AMPR_OK);
    free(data);
    return t;
}

/* A spec built by hand from a llama2.c tokenizer.bin (as the GGUF loader would
 * build one from GGUF metadata): SentencePiece semantics, not run.c's. */
typedef struct bin_spec {
    ampr__tok_spec spec;
    char *blob;
    const char **toks;
    uint32_t *lens;
    float *scores;
    int32_t *types;
} bin_spec;

static void bin_spec_load(bin_spec *b, const char *path, int32_t n_vocab, int remove_ws) {
    size_t len;
    unsigned char *d = (unsigned char *)tu_read_file(path, &len);
    assert_non_null(d);
    b->blob = malloc(len * 3 + 16);
    b->toks = calloc((size_t)n_vocab, sizeof *b->toks);
    b->lens = calloc((size_t)n_vocab, sizeof *b->lens);
    b->scores = calloc((size_t)n_vocab, sizeof *b->scores);
    b->types = calloc((size_t)n_vocab, sizeof *b->types);
    size_t pos = 4, o = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        int32_t l;
        memcpy(&b->scores[i], d + pos, 4);
        memcpy(&l, d + pos + 4, 4);
        const char *s = (const char *)d + pos + 8;
        pos += 8 + (size_t)l;
        b->toks[i] = b->blob + o;
        int32_t ty = AMPR__TT_NORMAL;
        if (i == 0) { ty = AMPR__TT_UNKNOWN; s = "<unk>"; l = 5; }
        else if (i == 1) { ty = AMPR__TT_CONTROL; s = "<s>"; l = 3; }
        else if (i == 2) { ty = AMPR__TT_CONTROL; s = "</s>"; l = 4; }
        else if (l == 6 && !memcmp(s, "<0x", 3)) ty = AMPR__TT_BYTE;
        for (int32_t k = 0; k < l; k++) {
            if (s[k] == ' ' && ty == AMPR__TT_NORMAL) { memcpy(b->blob + o, "\xe2\x96\x81", 3); o += 3; }
            else b->blob[o++] = s[k];
        }
        b->lens[i] = (uint32_t)(b->blob + o - b->toks[i]);
        b->types[i] = ty;
    }
    free(d);
    memset(&b->spec, 0, sizeof b->spec);
    b->spec.kind = AMPR__TOK_SPM;
    b->spec.n_vocab = n_vocab;
    b->spec.tokens = b->toks;
    b->spec.token_lens = b->lens;
    b->spec.scores = b->scores;
    b->spec.types = b->types;
    b->spec.unk_id = 0;
    b->spec.bos_id = 1;
    b->spec.eos_id = 2;
    b->spec.pad_id = -1;
    b->spec.add_bos = 1;
    b->spec.add_space_prefix = 1;
    b->spec.remove_extra_ws = remove_ws;
}

static void bin_spec_free(bin_spec *b) {
    free(b->blob);
    free(b->toks);
    free(b->lens);
    free(b->scores);
    free(b->types);
}

static ampr__tokenizer *spec_tok(bin_spec *b) {
    ampr__tokenizer *t = NULL;
    ampr__err err = {0};
    ampr_status st = ampr__tok_new(&b->spec, &t, &err);
    if (st) print_error("%s\n", err.msg);
    assert_int_equal(st, AMPR_OK);
    return t;
}

static void print_ids(const char *tag, const int32_t *ids, size_t n) {
    char buf[2048];
    size_t o = 0;
    for (size_t i = 0; i < n && o < sizeof buf - 16; i++) o += (size_t)snprintf(buf + o, sizeof buf - o, " %d", ids[i]);
    print_message("    %s:%s\n", tag, buf);
}

/* Encode text and compare with the JSON array want. Returns 1 when equal. */
static int check_ids(const ampr__tokenizer *t, const char *text, size_t n, unsigned flags,
                     json_t *want) {
    int32_t *ids = NULL;
    size_t n_ids = 0;
    ampr__err err = {0};
    ampr_status st = ampr__tok_encode_ex(t, text, n, flags, &ids, &n_ids, &err);
    int ok = st == AMPR_OK && n_ids == json_array_size(want);
    for (size_t i = 0; ok && i < n_ids; i++)
        ok = ids[i] == (int32_t)json_integer_value(json_array_get(want, i));
    if (!ok) {
        print_message("  MISMATCH for \"%.60s\" (status %d)\n", text, (int)st);
        print_ids("got ", ids, n_ids);
        int32_t w[512];
        size_t k;
        for (k = 0; k < json_array_size(want) && k < 512; k++)
            w[k] = (int32_t)json_integer_value(json_array_get(want, k));
        print_ids("want", w, k);
    }
    ampr__free(ids);
    return ok;
}

/* Run every line of a .jsonl golden file; returns the number of failures. */
static int run_jsonl(const ampr__tokenizer *t, const char *path, const char *ids_key,
                     unsigned flags, int *n_total, int (*skip_fn)(const char *, size_t)) {
    size_t len;
    char *data = tu_read_file(path, &len);
    assert_non_null(data);
    int fails = 0;
    *n_total = 0;
    char *line = data;
    while (line < data + len) {
        char *nl = memchr(line, '\n', (size_t)(data + len - line));
        size_t ll = nl ? (size_t)(nl - line) : (size_t)(data + len - line);
        json_error_t je;
        json_t *o = json_loadb(line, ll, JSON_ALLOW_NUL, &je);
        if (o) {
            json_t *tx = json_object_get(o, "text");
            const char *s = json_string_value(tx);
            size_t sl = json_string_length(tx);
            if (!skip_fn || !skip_fn(s, sl)) {
                (*n_total)++;
                if (!check_ids(t, s, sl, flags, json_object_get(o, ids_key))) fails++;
            }
            json_decref(o);
        }
        line += ll + 1;
    }
    free(data);
    return fails;
}

/* llama.cpp's .inp/.out test vectors; returns failures. */
static int run_ggml_vectors(const ampr__tokenizer *t, const char *inp, const char *outp,
                            unsigned flags, int *n_total) {
    size_t il, ol;
    char *in = tu_read_file(inp, &il), *out = tu_read_file(outp, &ol);
    assert_non_null(in);
    assert_non_null(out);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    int fails = 0;
    *n_total = 0;
    char *p = in, *q = out;
    for (;;) {
        char *e = strstr(p, sep);
        if (!e) break;
        char *qe = strchr(q, '\n');
        assert_non_null(qe);
        *qe = 0;
        json_t *want = json_array();
        for (char *tok = strtok(q, " "); tok; tok = strtok(NULL, " "))
            json_array_append_new(want, json_integer(atoi(tok)));
        (*n_total)++;
        if (!check_ids(t, p, (size_t)(e - p), flags, want)) fails++;
        json_decref(want);
        p = e + sizeof sep - 1;
        q = qe + 1;
    }
    free(in);
    free(out);
    return fails;
}

/* Decode ids with the streaming decoder into a malloc'd string. */
static char *decode_all(const ampr__tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    size_t cap = n * 300 + 64, o = 0;
    char *buf = malloc(cap);
    ampr__detok d;
    ampr__detok_init(&d);
    for (size_t i = 0; i < n; i++) o += ampr__detok_push(t, &d, ids[i], buf + o, cap - o);
    o += ampr__detok_flush(&d, buf + o, cap - o);
    buf[o] = 0;
    *len = o;
    return buf;
}

/* decode(encode(text)) == text for every golden text; returns failures. */
static int run_roundtrip(const ampr__tokenizer *t, const char *path, int *n_total,
                         int (*skip_fn)(const char *, size_t)) {
    size_t len;
    char *data = tu_read_file(path, &len);
    assert_non_null(data);
    int fails = 0;
    *n_total = 0;
    char *line = data;
    while (line < data + len) {
        char *nl = memchr(line, '\n', (size_t)(data + len - line));
        size_t ll = nl ? (size_t)(nl - line) : (size_t)(data + len - line);
        json_error_t je;
        json_t *o = json_loadb(line, ll, JSON_ALLOW_NUL, &je);
        if (o) {
            json_t *tx = json_object_get(o, "text");
            const char *s = json_string_value(tx);
            size_t sl = json_string_length(tx);
            if (!skip_fn || !skip_fn(s, sl)) {
                int32_t *ids = NULL;
                size_t n_ids = 0;
                assert_int_equal(ampr__tok_encode_ex(t, s, sl, AMPR__ENC_ADD_BOS | AMPR__ENC_NO_SPECIAL,
                                                     &ids, &n_ids, NULL), AMPR_OK);
                size_t dl;
                char *dec = decode_all(t, ids, n_ids, &dl);
                (*n_total)++;
                if (dl != sl || memcmp(dec, s, sl) != 0) {
                    fails++;
                    print_message("  ROUNDTRIP \"%.60s\" -> \"%.60s\"\n", s, dec);
                }
                free(dec);
                ampr__free(ids);
            }
            json_decref(o);
        }
        line += ll + 1;
    }
    free(data);
    return fails;
}

static int has_2581(const char *s, size_t n) { return memmem(s, n, "\xe2\x96\x81", 3) != NULL; }

/* ---- golden vectors ------------------------------------------------------ */

static void test_runc_tok512(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "models/stories260K/tok512.bin");
    TU_SHARED_OR_SKIP(gold, "models/stories260K/tok512_runc_encode.jsonl");
    ampr__tokenizer *t = load_bin(bin, 512);
    int n, f = run_jsonl(t, gold, "ids_with_bos", AMPR__ENC_ADD_BOS, &n, NULL);
    print_message("tok512.bin vs run.c: %d/%d match\n", n - f, n);
    assert_int_equal(n, 63);
    assert_int_equal(f, 0);
    ampr__tok_free(t);
}

static void test_runc_llama2(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "tokenizers/llama2/tokenizer.bin");
    TU_SHARED_OR_SKIP(gold, "tokenizers/llama2/runc_encode.jsonl");
    ampr__tokenizer *t = load_bin(bin, 32000);
    int n, f = run_jsonl(t, gold, "ids_with_bos", AMPR__ENC_ADD_BOS, &n, NULL);
    print_message("llama2 tokenizer.bin vs run.c: %d/%d match\n", n - f, n);
    assert_int_equal(n, 63);
    assert_int_equal(f, 0);
    assert_int_equal(ampr__tok_bos(t), 1);
    assert_int_equal(ampr__tok_eos(t), 2);
    assert_int_equal(ampr__tok_n_vocab(t), 32000);
    uint32_t l;
    const char *s = ampr__tok_text(t, 2, &l);
    assert_int_equal(l, 4);
    assert_memory_equal(s, "</s>", 4);
    assert_true(ampr__tok_is_special(t, 1));
    assert_false(ampr__tok_is_special(t, 100));
    ampr__tok_free(t);
}

static void test_spm_spec_tok512_sentencepiece(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "models/stories260K/tok512.bin");
    TU_SHARED_OR_SKIP(gold, "models/stories260K/tok512_golden.jsonl");
    bin_spec b;
    bin_spec_load(&b, bin, 512, 1);
    ampr__tokenizer *t = spec_tok(&b);
    int n, f = run_jsonl(t, gold, "ids", AMPR__ENC_NO_SPECIAL, &n, NULL);
    print_message("tok512 spec (remove_extra_ws) vs SentencePiece: %d/%d match\n", n - f, n);
    assert_int_equal(n, 64);
    assert_int_equal(f, 0);
    ampr__tok_free(t);
    bin_spec_free(&b);
}

static void test_spm_spec_llama2(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "tokenizers/llama2/tokenizer.bin");
    TU_SHARED_OR_SKIP(gold, "tokenizers/llama2/golden.jsonl");
    TU_SHARED_OR_SKIP(inp, "tokenizers/llama2/ggml-vocab-llama-spm.gguf.inp");
    TU_SHARED_OR_SKIP(outp, "tokenizers/llama2/ggml-vocab-llama-spm.gguf.out");
    bin_spec b;
    bin_spec_load(&b, bin, 32000, 0);
    ampr__tokenizer *t = spec_tok(&b);
    int n, f = run_jsonl(t, gold, "ids", AMPR__ENC_NO_SPECIAL, &n, NULL);
    print_message("llama2 spec vs SentencePiece golden: %d/%d match\n", n - f, n);
    assert_int_equal(n, 64);
    assert_int_equal(f, 0);
    f = run_ggml_vectors(t, inp, outp, AMPR__ENC_NO_SPECIAL, &n);
    print_message("llama2 spec vs llama.cpp test vectors: %d/%d match\n", n - f, n);
    assert_int_equal(n, 46);
    assert_int_equal(f, 0);
    f = run_roundtrip(t, gold, &n, has_2581);
    print_message("llama2 spec round trips: %d/%d\n", n - f, n);
    assert_int_equal(f, 0);
    ampr__tok_free(t);
    bin_spec_free(&b);
}

static void test_hf_phi3(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(js, "tokenizers/phi3-mini-llama2-vocab/tokenizer.json");
    TU_SHARED_OR_SKIP(gold, "tokenizers/llama2/golden.jsonl");
    TU_SHARED_OR_SKIP(inp, "tokenizers/llama2/ggml-vocab-llama-spm.gguf.inp");
    TU_SHARED_OR_SKIP(outp, "tokenizers/llama2/ggml-vocab-llama-spm.gguf.out");
    ampr__tokenizer *t = load_json(js);
    assert_int_equal(ampr__tok_n_vocab(t), 32011);
    assert_int_equal(ampr__tok_bos(t), 1);
    assert_int_equal(ampr__tok_eos(t), 2);
    assert_int_equal(ampr__tok_add_bos_default(t), 0);
    int n, f = run_jsonl(t, gold, "ids", AMPR__ENC_NO_SPECIAL, &n, NULL);
    print_message("phi3 tokenizer.json vs SentencePiece golden: %d/%d match\n", n - f, n);
    assert_int_equal(n, 64);
    assert_int_equal(f, 0);
    f = run_ggml_vectors(t, inp, outp, AMPR__ENC_NO_SPECIAL, &n);
    print_message("phi3 tokenizer.json vs llama.cpp test vectors: %d/%d match\n", n - f, n);
    assert_int_equal(f, 0);
    f = run_roundtrip(t, gold, &n, has_2581);
    print_message("phi3 round trips: %d/%d\n", n - f, n);
    assert_int_equal(f, 0);

    /* added tokens are matched literally (rstrip swallows the newline) */
    static const char chat[] = "<|user|>\nHi<|end|>\n<|assistant|>";
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(ampr__tok_encode(t, chat, sizeof chat - 1, 1, &ids, &n_ids, NULL), AMPR_OK);
    assert_true(n_ids >= 5);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 32010);
    assert_int_equal(ids[n_ids - 1], 32001);
    int found_end = 0;
    for (size_t i = 0; i < n_ids; i++) found_end |= ids[i] == 32007;
    assert_true(found_end);
    ampr__free(ids);
    ampr__tok_free(t);
}

static void test_hf_gpt2(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(js, "tokenizers/gpt2/tokenizer.json");
    TU_SHARED_OR_SKIP(inp, "tokenizers/gpt2/ggml-vocab-gpt-2.gguf.inp");
    TU_SHARED_OR_SKIP(outp, "tokenizers/gpt2/ggml-vocab-gpt-2.gguf.out");
    ampr__tokenizer *t = load_json(js);
    assert_int_equal(ampr__tok_n_vocab(t), 50257);
    assert_int_equal(ampr__tok_bos(t), 50256);
    assert_int_equal(ampr__tok_eos(t), 50256);
    int n, f = run_ggml_vectors(t, inp, outp, 0, &n);
    print_message("gpt2 tokenizer.json vs llama.cpp test vectors: %d/%d match\n", n - f, n);
    assert_int_equal(n, 46);
    assert_int_equal(f, 0);
    /* round trip: byte-level BPE is lossless on any valid UTF-8 */
    TU_SHARED_OR_SKIP(gold, "tokenizers/llama2/golden.jsonl");
    f = run_roundtrip(t, gold, &n, NULL);
    print_message("gpt2 round trips: %d/%d\n", n - f, n);
    assert_int_equal(f, 0);
    static const char txt[] = "Hello<|endoftext|> world";
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(ampr__tok_encode(t, txt, sizeof txt - 1, 0, &ids, &n_ids, NULL), AMPR_OK);
    assert_int_equal(n_ids, 3);
    assert_int_equal(ids[0], 15496);
    assert_int_equal(ids[1], 50256);
    assert_int_equal(ids[2], 995);
    ampr__free(ids);
    ampr__tok_free(t);
}

/* Cutting the text where no piece can span gives the same ids as merging it
 * whole; the three Llama-2 vocabularies agree on real text. */
static void test_spm_cut_exact(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(txtp, "text/tinyshakespeare.txt");
    TU_SHARED_OR_SKIP(bin, "tokenizers/llama2/tokenizer.bin");
    TU_SHARED_OR_SKIP(js, "tokenizers/phi3-mini-llama2-vocab/tokenizer.json");
    size_t len;
    char *txt = tu_read_file(txtp, &len);
    if (len > 200000) len = 200000;
    while (len && ((unsigned char)txt[len] & 0xc0) == 0x80) len--;
    ampr__tokenizer *a = load_bin(bin, 32000), *c = load_json(js);
    bin_spec b;
    bin_spec_load(&b, bin, 32000, 0);
    ampr__tokenizer *s = spec_tok(&b);
    ampr__tokenizer *toks[3] = {a, s, c};
    int32_t *ref = NULL;
    size_t n_ref = 0;
    for (int k = 0; k < 3; k++) {
        int32_t *x, *y;
        size_t nx, ny;
        assert_int_equal(ampr__tok_encode_ex(toks[k], txt, len, AMPR__ENC_NO_SPECIAL, &x, &nx, NULL), AMPR_OK);
        assert_int_equal(ampr__tok_encode_ex(toks[k], txt, len, AMPR__ENC_NO_SPECIAL | AMPR__ENC_NO_CUT,
                                             &y, &ny, NULL), AMPR_OK);
        assert_int_equal(nx, ny);
        assert_memory_equal(x, y, nx * sizeof *x);
        if (k == 0) { ref = x; n_ref = nx; }
        else {
            assert_int_equal(nx, n_ref);
            assert_memory_equal(x, ref, nx * sizeof *x);
            ampr__free(x);
        }
        ampr__free(y);
    }
    ampr__free(ref);
    ampr__tok_free(a);
    ampr__tok_free(s);
    ampr__tok_free(c);
    bin_spec_free(&b);
    free(txt);
}

/* A byte-level BPE spec as the GGUF loader builds it (tokens, types, merges). */
static void test_bpe_spec_gpt2(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(js, "tokenizers/gpt2/tokenizer.json");
    TU_SHARED_OR_SKIP(inp, "tokenizers/gpt2/ggml-vocab-gpt-2.gguf.inp");
    TU_SHARED_OR_SKIP(outp, "tokenizers/gpt2/ggml-vocab-gpt-2.gguf.out");
    json_error_t je;
    json_t *root = json_load_file(js, 0, &je);
    assert_non_null(root);
    json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    int32_t nv = (int32_t)json_object_size(vocab);
    const char **toks = calloc((size_t)nv, sizeof *toks);
    int32_t *types = calloc((size_t)nv, sizeof *types);
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        toks[id] = key;
        types[id] = id == 50256 ? AMPR__TT_CONTROL : AMPR__TT_NORMAL;
    }
    int32_t nm = (int32_t)json_array_size(merges);
    const char **ms = calloc((size_t)nm, sizeof *ms);
    for (int32_t i = 0; i < nm; i++) ms[i] = json_string_value(json_array_get(merges, (size_t)i));
    ampr__tok_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.kind = AMPR__TOK_BPE;
    spec.pre = AMPR__PRE_GPT2;
    spec.n_vocab = nv;
    spec.tokens = toks;
    spec.types = types;
    spec.n_merges = nm;
    spec.merges = ms;
    spec.bos_id = spec.eos_id = 50256;
    spec.unk_id = spec.pad_id = -1;
    ampr__tokenizer *t = NULL;
    ampr__err err = {0};
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_OK);
    int n, f = run_ggml_vectors(t, inp, outp, 0, &n);
    print_message("gpt2 BPE spec vs llama.cpp test vectors: %d/%d match\n", n - f, n);
    assert_int_equal(f, 0);
    ampr__tok_free(t);

    /* the Llama 3 pre-tokenizer: digits go in threes, "'S" splits case-insensitively */
    spec.pre = AMPR__PRE_LLAMA3;
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_OK);
    int32_t *ids;
    size_t n_ids;
    assert_int_equal(ampr__tok_encode(t, "1234567", 7, 0, &ids, &n_ids, &err), AMPR_OK);
    assert_int_equal(n_ids, 3); /* "123" "456" "7" are GPT-2 tokens */
    size_t dl;
    char *dec = decode_all(t, ids, n_ids, &dl);
    assert_string_equal(dec, "1234567");
    free(dec);
    ampr__free(ids);
    ampr__tok_free(t);
    spec.pre = (ampr__tok_pre)99;
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_ERR_UNSUPPORTED);
    free(toks);
    free(types);
    free(ms);
    json_decref(root);
}

/* Random corruption of real inputs never crashes (ASan/valgrind watch). */
static void test_fuzz_smoke(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "models/stories260K/tok512.bin");
    size_t len;
    char *orig = tu_read_file(bin, &len);
    char *d = malloc(len);
    uint64_t r = 88172645463325252ull;
    for (int iter = 0; iter < 300; iter++) {
        memcpy(d, orig, len);
        for (int k = 0; k < 1 + iter % 8; k++) {
            r ^= r << 13; r ^= r >> 7; r ^= r << 17;
            d[r % len] = (char)(r >> 40);
        }
        ampr__tokenizer *t = NULL;
        if (ampr__tok_from_llama2c(d, len, 512, &t, NULL) == AMPR_OK) {
            int32_t *ids;
            size_t n;
            static const char txt[] = "Once upon a time, \xe2\x96\x81 there  was 3 \xf0\x9f\xa6\x99!";
            if (ampr__tok_encode(t, txt, sizeof txt - 1, 1, &ids, &n, NULL) == AMPR_OK) {
                size_t dl;
                free(decode_all(t, ids, n, &dl));
                ampr__free(ids);
            }
            ampr__tok_free(t);
        }
    }
    free(d);
    free(orig);
    static const char js[] =
        "{\"added_tokens\":[{\"id\":3,\"content\":\"<x>\",\"special\":true,\"rstrip\":true}],"
        "\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"post_processor\":{\"type\":\"TemplateProcessing\","
        "\"single\":[{\"SpecialToken\":{\"id\":\"<x>\"}},{\"Sequence\":{\"id\":\"A\"}}]},"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}";
    char buf[sizeof js];
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, js, sizeof js);
        for (int k = 0; k < 1 + iter % 3; k++) {
            r ^= r << 13; r ^= r >> 7; r ^= r << 17;
            buf[r % (sizeof js - 1)] = "{}[]\":,0129ab \\<>x-"[(r >> 33) % 19];
        }
        ampr__tokenizer *t = NULL;
        if (ampr__tok_from_hf_json(buf, sizeof js - 1, &t, NULL) == AMPR_OK) {
            int32_t *ids;
            size_t n;
            if (ampr__tok_encode(t, "ab<x> ba\xc3\xa9", 10, 1, &ids, &n, NULL) == AMPR_OK) {
                size_t dl;
                free(decode_all(t, ids, n, &dl));
                ampr__free(ids);
            }
            ampr__tok_free(t);
        }
    }
    ampr__tokenizer *t = NULL;
    assert_int_equal(ampr__tok_from_hf_json(js, sizeof js - 1, &t, NULL), AMPR_OK);
    assert_int_equal(ampr__tok_bos(t), 3);
    assert_int_equal(ampr__tok_add_bos_default(t), 1);
    int32_t *ids;
    size_t n;
    assert_int_equal(ampr__tok_encode(t, "ab<x>  ab", 9, 1, &ids, &n, NULL), AMPR_OK);
    assert_int_equal(n, 4); /* BOS, "ab", <x> (eats the spaces), "ab" */
    assert_int_equal(ids[0], 3);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 3);
    assert_int_equal(ids[3], 2);
    ampr__free(ids);
    ampr__tok_free(t);
}

/* ---- encode edge cases ---------------------------------------------------- */

static void test_encode_edges(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "tokenizers/llama2/tokenizer.bin");
    ampr__tokenizer *t = load_bin(bin, 32000);
    int32_t *ids = NULL;
    size_t n = 99;
    ampr__err err = {0};
    assert_int_equal(ampr__tok_encode(t, "", 0, 1, &ids, &n, &err), AMPR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    ampr__free(ids);
    assert_int_equal(ampr__tok_encode(t, NULL, 0, 0, &ids, &n, &err), AMPR_OK);
    assert_int_equal(n, 0);
    ampr__free(ids);
    assert_int_equal(ampr__tok_encode(t, "a\xff", 2, 1, &ids, &n, &err), AMPR_ERR_BAD_UTF8);
    assert_null(ids);
    assert_int_equal(ampr__tok_encode(t, "\xe2\x82", 2, 1, &ids, &n, &err), AMPR_ERR_BAD_UTF8);
    assert_int_equal(ampr__tok_encode(t, NULL, 3, 1, &ids, &n, &err), AMPR_ERR_INVALID_ARG);
    /* NUL inside the text is a normal byte: <0x00> is id 3 */
    assert_int_equal(ampr__tok_encode(t, "a\0b", 3, 0, &ids, &n, &err), AMPR_OK);
    int has_nul = 0;
    for (size_t i = 0; i < n; i++) has_nul |= ids[i] == 3;
    assert_true(has_nul);
    size_t dl;
    char *dec = decode_all(t, ids, n, &dl);
    assert_int_equal(dl, 3);
    assert_memory_equal(dec, "a\0b", 3);
    free(dec);
    ampr__free(ids);
    /* a long prompt is fast and exact to the bytes */
    size_t big = 200000;
    char *txt = malloc(big);
    for (size_t i = 0; i < big; i++) txt[i] = "the quick brown fox \n"[i % 21];
    assert_int_equal(ampr__tok_encode(t, txt, big, 0, &ids, &n, &err), AMPR_OK);
    dec = decode_all(t, ids, n, &dl);
    assert_int_equal(dl, big);
    assert_memory_equal(dec, txt, big);
    free(dec);
    ampr__free(ids);
    free(txt);
    ampr__tok_free(t);
}

/* ---- streaming decoder ---------------------------------------------------- */

static void test_detok_stream(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(bin, "tokenizers/llama2/tokenizer.bin");
    ampr__tokenizer *t = load_bin(bin, 32000);
    char out[AMPR__DETOK_MAX_PIECE + 8];
    ampr__detok d;
    ampr__detok_init(&d);
    /* BOS, then U+1F999 as four byte tokens (0xF0 0x9F 0xA6 0x99 -> ids b+3) */
    assert_int_equal(ampr__detok_push(t, &d, 1, out, sizeof out), 0);
    const unsigned char emoji[4] = {0xf0, 0x9f, 0xa6, 0x99};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ampr__detok_push(t, &d, emoji[i] + 3, out, sizeof out), 0);
        assert_int_equal(d.n_pending, i + 1);
    }
    assert_int_equal(ampr__detok_push(t, &d, emoji[3] + 3, out, sizeof out), 4);
    assert_memory_equal(out, emoji, 4);
    /* an incomplete sequence interrupted by ASCII: U+FFFD then the ASCII */
    assert_int_equal(ampr__detok_push(t, &d, 0xe2 + 3, out, sizeof out), 0);
    size_t k = ampr__detok_push(t, &d, 'A' + 3, out, sizeof out);
    assert_int_equal(k, 4);
    assert_memory_equal(out, "\xef\xbf\xbd" "A", 4);
    /* a stray continuation byte */
    assert_int_equal(ampr__detok_push(t, &d, 0x80 + 3, out, sizeof out), 3);
    /* dangling at the end */
    assert_int_equal(ampr__detok_push(t, &d, 0xf0 + 3, out, sizeof out), 0);
    assert_int_equal(ampr__detok_flush(&d, out, sizeof out), 3);
    assert_memory_equal(out, "\xef\xbf\xbd", 3);
    assert_int_equal(ampr__detok_flush(&d, out, sizeof out), 0);
    /* leading space stripped at stream start and after BOS only */
    ampr__detok_init(&d);
    int32_t hello = 15043; /* "▁Hello" */
    k = ampr__detok_push(t, &d, hello, out, sizeof out);
    assert_int_equal(k, 5);
    k = ampr__detok_push(t, &d, hello, out, sizeof out);
    assert_int_equal(k, 6);
    assert_memory_equal(out, " Hello", 6);
    /* special and out-of-range ids write nothing */
    assert_int_equal(ampr__detok_push(t, &d, 2, out, sizeof out), 0);
    assert_int_equal(ampr__detok_push(t, &d, -5, out, sizeof out), 0);
    assert_int_equal(ampr__detok_push(t, &d, 99999, out, sizeof out), 0);
    ampr__tok_free(t);
}

/* ---- malformed inputs ----------------------------------------------------- */

static ampr_status try_json(const char *s) {
    ampr__tokenizer *t = NULL;
    ampr__err err = {0};
    ampr_status st = ampr__tok_from_hf_json(s, strlen(s), &t, &err);
    if (st == AMPR_OK) ampr__tok_free(t);
    else assert_true(err.msg[0] != 0);
    return st;
}

static void test_malformed(void **state) {
    (void)state;
    ampr__tokenizer *t = NULL;
    ampr__err err = {0};
    /* llama2.c .bin */
    unsigned char bin[64];
    memset(bin, 0, sizeof bin);
    int32_t v = 7;
    memcpy(bin, &v, 4);
    assert_int_equal(ampr__tok_from_llama2c(bin, 2, 3, &t, &err), AMPR_ERR_MODEL_TRUNCATED);
    assert_int_equal(ampr__tok_from_llama2c(bin, 4, 3, &t, &err), AMPR_ERR_MODEL_TRUNCATED);
    v = 1000; /* token 0 claims 1000 bytes */
    memcpy(bin + 8, &v, 4);
    assert_int_equal(ampr__tok_from_llama2c(bin, sizeof bin, 3, &t, &err), AMPR_ERR_MODEL_TRUNCATED);
    v = -1;
    memcpy(bin + 8, &v, 4);
    assert_int_equal(ampr__tok_from_llama2c(bin, sizeof bin, 3, &t, &err), AMPR_ERR_MODEL_VOCAB);
    v = 1; /* token 0 = "\xff": bad UTF-8 */
    memcpy(bin + 8, &v, 4);
    bin[12] = 0xff;
    v = 0;
    memcpy(bin + 17, &v, 4);
    memcpy(bin + 25, &v, 4);
    assert_int_equal(ampr__tok_from_llama2c(bin, sizeof bin, 3, &t, &err), AMPR_ERR_MODEL_VOCAB);
    assert_null(t);
    assert_int_equal(ampr__tok_from_llama2c(bin, sizeof bin, 0, &t, &err), AMPR_ERR_MODEL_VOCAB);
    TU_SHARED_OR_SKIP(real, "models/stories260K/tok512.bin");
    size_t rl;
    char *rd = tu_read_file(real, &rl);
    for (size_t cut = 0; cut < rl; cut += 97) {
        ampr_status st = ampr__tok_from_llama2c(rd, cut, 512, &t, &err);
        assert_int_equal(st, AMPR_ERR_MODEL_TRUNCATED);
    }
    free(rd);

    /* spec */
    const char *toks[3] = {"a", "\xc3\x28", "b"};
    ampr__tok_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.kind = AMPR__TOK_SPM;
    spec.n_vocab = 3;
    spec.tokens = toks;
    spec.bos_id = spec.eos_id = spec.unk_id = spec.pad_id = -1;
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_ERR_MODEL_VOCAB);
    toks[1] = "ab";
    spec.bos_id = 3;
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_ERR_MODEL_VOCAB);
    spec.bos_id = -1;
    int32_t types[3] = {1, 9, 1};
    spec.types = types;
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_ERR_MODEL_VOCAB);
    spec.types = NULL;
    const char *merges[1] = {"a c"};
    spec.merges = merges;
    spec.n_merges = 1;
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_ERR_MODEL_VOCAB);
    merges[0] = "a b";
    spec.kind = (ampr__tok_kind)7;
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_ERR_UNSUPPORTED);
    spec.kind = AMPR__TOK_SPM;
    assert_int_equal(ampr__tok_new(&spec, &t, &err), AMPR_OK);
    int32_t *ids;
    size_t n;
    assert_int_equal(ampr__tok_encode(t, "ab", 2, 0, &ids, &n, &err), AMPR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    ampr__free(ids);
    ampr__tok_free(t);

    /* tokenizer.json */
    assert_int_equal(try_json("{\"model\": "), AMPR_ERR_MODEL_VOCAB);
    assert_int_equal(try_json(""), AMPR_ERR_MODEL_VOCAB);
    assert_int_equal(try_json("[]"), AMPR_ERR_MODEL_VOCAB);
    assert_int_equal(try_json("{}"), AMPR_ERR_MODEL_VOCAB);
    assert_int_equal(try_json("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}"), AMPR_ERR_UNSUPPORTED);
    assert_int_equal(try_json("{\"model\":{\"type\":\"Bogus\"}}"), AMPR_ERR_UNSUPPORTED);
    assert_int_equal(try_json("{\"model\":{\"type\":5}}"), AMPR_ERR_MODEL_VOCAB);
    static const char ok_bl[] =
        "{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
        "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}";
    assert_int_equal(try_json(ok_bl), AMPR_OK);
    assert_int_equal(try_json("{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                              "\"vocab\":{\"a\":0,\"b\":0,\"ab\":2},\"merges\":[\"a b\"]}}"),
                     AMPR_ERR_MODEL_VOCAB); /* duplicate id */
    assert_int_equal(try_json("{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                              "\"vocab\":{\"a\":0,\"b\":1,\"ab\":-2},\"merges\":[\"a b\"]}}"),
                     AMPR_ERR_MODEL_VOCAB);
    assert_int_equal(try_json("{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                              "\"vocab\":{\"a\":0,\"b\":1,\"ab\":99999999},\"merges\":[\"a b\"]}}"),
                     AMPR_ERR_MODEL_VOCAB);
    assert_int_equal(try_json("{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                              "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a x\"]}}"),
                     AMPR_ERR_MODEL_VOCAB); /* merge of an unknown piece */
    assert_int_equal(try_json("{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                              "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[7]}}"),
                     AMPR_ERR_MODEL_VOCAB);
    assert_int_equal(try_json("{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"}},"
                              "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,"
                              "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}"),
                     AMPR_ERR_UNSUPPORTED);
    assert_int_equal(try_json("{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
                              "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"}},{\"type\":\"ByteLevel\"}]},"
                              "\"model\":{\"type\":\"BPE\","
                              "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}"),
                     AMPR_ERR_MODEL_VOCAB); /* the regex does not compile */
    assert_int_equal(try_json("{\"added_tokens\":[{\"id\":1,\"content\":\"zz\"}],"
                              "\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                              "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}"),
                     AMPR_ERR_MODEL_VOCAB); /* id given twice */
    assert_int_equal(try_json("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
                              "\"merges\":[\"a b\"]}}"),
                     AMPR_ERR_UNSUPPORTED); /* neither byte-level nor SentencePiece-style */
}

/* Every truncation of a real tokenizer.json fails cleanly. */
static void test_json_truncations(void **state) {
    (void)state;
    TU_SHARED_OR_SKIP(js, "tokenizers/gpt2/tokenizer.json");
    size_t len;
    char *data = tu_read_file(js, &len);
    for (size_t cut = 0; cut < len; cut += len / 23 + 1) {
        ampr__tokenizer *t = NULL;
        ampr__err err = {0};
        assert_int_not_equal(ampr__tok_from_hf_json(data, cut, &t, &err), AMPR_OK);
        assert_null(t);
    }
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runc_tok512),
        cmocka_unit_test(test_runc_llama2),
        cmocka_unit_test(test_spm_spec_tok512_sentencepiece),
        cmocka_unit_test(test_spm_spec_llama2),
        cmocka_unit_test(test_hf_phi3),
        cmocka_unit_test(test_hf_gpt2),
        cmocka_unit_test(test_spm_cut_exact),
        cmocka_unit_test(test_bpe_spec_gpt2),
        cmocka_unit_test(test_fuzz_smoke),
        cmocka_unit_test(test_encode_edges),
        cmocka_unit_test(test_detok_stream),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_json_truncations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
