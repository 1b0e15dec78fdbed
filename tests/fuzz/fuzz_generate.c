/* fuzz_generate.c -- ampr_generate on a tiny generated model with arbitrary prompt,
 * stop strings and parameters. Layout: byte 0 flags (tier, temperature, BOS, EOS),
 * byte 1 max_tokens (mod 24), then NUL-separated segments: the prompt, then up to 8
 * stop strings. Checks: the status is one a prompt can cause; on success the streamed
 * text equals the result text and no stop string occurs in it (generation stops at the
 * first one and cuts it off). */
#include "fuzz_util.h"

static size_t g_stream_len;
static char g_stream[1 << 16];

static int on_tok(void *user, const char *piece, size_t len, int32_t id) {
    (void)user, (void)id;
    if (g_stream_len + len <= sizeof g_stream) memcpy(g_stream + g_stream_len, piece, len);
    g_stream_len += len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ampr_ctx *ctx;
    if (!ctx) {
        fz_install_allocator();
        const char *path = fz_tmp_path("gen.gguf");
        fz_write_tiny(path, "gguf");
        if (ampr_open(path, "{\"threads\": 1, \"kv\": {\"arena_tokens\": 128}}", &ctx) != AMPR_OK)
            abort();
        unlink(path);
    }
    if (size < 2 || size > 4096) return 0;
    uint8_t fl = data[0];
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    static const ampr_tier tiers[4] = {AMPR_TIER_AUTO, AMPR_TIER_FP16, AMPR_TIER_INT8, AMPR_TIER_NF4};
    p.tier = tiers[fl & 3];
    p.temperature = (fl & 4) ? 0.0f : 1.0f;
    p.add_bos = !(fl & 8);
    p.ignore_eos = (fl & 16) != 0;
    p.fallback = (fl & 32) != 0;
    p.max_tokens = data[1] % 24;
    p.seed = fl;
    p.on_token = on_tok;
    /* segments */
    char *buf = malloc(size - 2 + 1);
    memcpy(buf, data + 2, size - 2);
    buf[size - 2] = '\0';
    const char *prompt = buf;
    size_t plen = strnlen(buf, size - 2);
    const char *stops[8];
    size_t n_stop = 0;
    size_t at = plen + 1;
    while (at < size - 2 && n_stop < 8) {
        stops[n_stop++] = buf + at;
        at += strlen(buf + at) + 1;
    }
    p.stop = stops;
    p.n_stop = n_stop;
    g_stream_len = 0;
    ampr_result *r = NULL;
    ampr_status st = ampr_generate(ctx, prompt, plen, &p, &r);
    switch (st) {
    case AMPR_OK: case AMPR_ERR_BAD_UTF8: case AMPR_ERR_PROMPT_EMPTY:
    case AMPR_ERR_PROMPT_TOO_LONG: case AMPR_ERR_KV_FULL: break;
    default:
        fprintf(stderr, "fuzz_generate: %s: %s\n", ampr_status_name(st), ampr_errmsg(ctx));
        abort();
    }
    if (st != AMPR_OK && (r || ampr_errmsg(ctx)[0] == '\0')) abort();
    if (st == AMPR_OK) {
        if (!r || r->text[r->text_len] != '\0') abort();
        if (g_stream_len != r->text_len || memcmp(g_stream, r->text, r->text_len)) {
            fprintf(stderr, "fuzz_generate: streamed %zu bytes, result %zu\n", g_stream_len,
                    r->text_len);
            abort();
        }
        for (size_t k = 0; k < n_stop; k++)
            if (stops[k][0] && memmem(r->text, r->text_len, stops[k], strlen(stops[k]))) {
                fprintf(stderr, "fuzz_generate: stop string %zu left in the text\n", k);
                abort();
            }
    }
    ampr_result_free(r);
    free(buf);
    return 0;
}
