/*
 * generate.c -- one-shot generation: open a model, run one greedy request,
 * print the prompt and the generated text to stdout (exactly what
 * `ampr run --temp 0 --quiet` prints), and the tier, finish reason and
 * timings to stderr.
 *
 *   build/examples/generate [MODEL] [PROMPT] [MAX_TOKENS]
 *
 * Config from $AMPR_CONFIG (see common.h). Exits 0 on success, 1 on failure.
 */
#include <stdio.h>
#include <stdlib.h>

#include "ampr.h"
#include "common.h"

int main(int argc, char **argv) {
    const char *model = example_model(argc, argv);
    const char *prompt = argc > 2 ? argv[2] : "Once upon a time";
    int max_tokens = argc > 3 ? atoi(argv[3]) : 40;

    /* On failure ampr_open still hands back a context holding the message. */
    ampr_ctx *ctx = NULL;
    ampr_status st = ampr_open(model, example_config(), &ctx);
    if (st != AMPR_OK) {
        fprintf(stderr, "generate: cannot open %s: %s (%s)\n", model, ampr_errmsg(ctx),
                ampr_status_name(st));
        ampr_close(ctx);
        return 1;
    }

    ampr_gen_params p;
    ampr_gen_params_init(&p); /* sets struct_size and the defaults */
    p.max_tokens = max_tokens;
    p.temperature = 0.0f; /* greedy: the same output every run */

    ampr_result *res = NULL;
    st = ampr_generate(ctx, prompt, AMPR_NUL_TERMINATED, &p, &res);
    if (st != AMPR_OK) {
        fprintf(stderr, "generate: %s (%s)\n", ampr_errmsg(ctx), ampr_status_name(st));
        ampr_close(ctx);
        return 1;
    }
    /* res->text may hold NUL bytes, so write it with its length */
    fputs(prompt, stdout);
    fwrite(res->text, 1, res->text_len, stdout);
    fputc('\n', stdout);

    static const char *const finish[] = {"length", "eos", "stop", "cancelled", "context", "error"};
    fprintf(stderr, "tier %s, %zu tokens, finish %s, %.2f ms\n", ampr_tier_name(res->tier_final),
            res->n_tokens, finish[res->finish], res->total_ms);
    ampr_result_free(res); /* the library's memory goes back through the library */
    ampr_close(ctx);
    return 0;
}
