/*
 * stream_cancel.c -- streaming with cancellation: print each piece of text as
 * the model produces it, and stop the request from the callback once the
 * first sentence is complete (or after a token budget), by returning nonzero.
 *
 *   build/examples/stream_cancel [MODEL] [PROMPT]
 *
 * ampr_generate() then returns AMPR_ERR_CANCELLED, which is not a failure: the
 * result holds everything produced so far, with finish AMPR_FINISH_CANCELLED.
 * The program checks that the streamed pieces add up to the result's text.
 * Exits 0 when everything went as described, 1 otherwise.
 */
#include <stdio.h>
#include <string.h>

#include "ampr.h"
#include "common.h"

struct stream_state {
    char seen[4096]; /* the pieces, concatenated */
    size_t len;
    int tokens;
    int budget;
};

/* piece is borrowed: valid only during this call, not NUL-terminated. */
static int on_token(void *user, const char *piece, size_t len, int32_t token_id) {
    struct stream_state *s = user;
    (void)token_id;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    if (s->len + len < sizeof s->seen) {
        memcpy(s->seen + s->len, piece, len);
        s->len += len;
    }
    s->tokens++;
    /* nonzero cancels: stop at the end of the first sentence */
    return memchr(piece, '.', len) != NULL || s->tokens >= s->budget;
}

int main(int argc, char **argv) {
    const char *model = example_model(argc, argv);
    const char *prompt = argc > 2 ? argv[2] : "Once upon a time";

    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(model, example_config(), &ctx);
    if (st != AMPR_OK) {
        fprintf(stderr, "stream_cancel: cannot open %s: %s\n", model, ampr_errmsg(ctx));
        ampr_close(ctx);
        return 1;
    }
    struct stream_state s = {.budget = 100};
    ampr_gen_params p;
    ampr_gen_params_init(&p);
    p.max_tokens = 500;
    p.temperature = 0.0f;
    p.ignore_eos = 1; /* so only the callback can end it early */
    p.on_token = on_token;
    p.user = &s;

    fputs(prompt, stdout);
    ampr_result *res = NULL;
    st = ampr_generate(ctx, prompt, AMPR_NUL_TERMINATED, &p, &res);
    fputc('\n', stdout);

    int ok = st == AMPR_ERR_CANCELLED && res && res->finish == AMPR_FINISH_CANCELLED &&
             res->n_tokens == (size_t)s.tokens && res->n_tokens < (size_t)p.max_tokens &&
             res->text_len == s.len && memcmp(res->text, s.seen, s.len) == 0;
    if (ok)
        fprintf(stderr, "cancelled after %zu tokens, as asked\n", res->n_tokens);
    else
        fprintf(stderr, "stream_cancel: unexpected outcome: %s (%s)\n", ampr_status_name(st),
                st == AMPR_ERR_CANCELLED ? "result does not match the stream" : ampr_errmsg(ctx));
    ampr_result_free(res); /* NULL is fine */
    ampr_close(ctx);
    return ok ? 0 : 1;
}
