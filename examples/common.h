/*
 * common.h -- the two things every example needs besides libampr itself:
 * where the model is, and which config to open it with. Header-only so each
 * example stays one file plus this.
 *
 *   model:  argv[1], else ../shared/models/stories260K/stories260K.gguf
 *           relative to the repository root (found from the current
 *           directory or from the example's own location in build/examples).
 *   config: the environment variable AMPR_CONFIG, else
 *           {"tiers": ["fp16", "int8"]}: the library's default list also has
 *           NF4, which needs matrix widths that are multiples of 64, and the
 *           tiny test model's FFN width (172) is not.
 */
#ifndef AMPR_EXAMPLES_COMMON_H
#define AMPR_EXAMPLES_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXAMPLE_DEFAULT_CONFIG "{\"tiers\": [\"fp16\", \"int8\"]}"
#define EXAMPLE_MODEL_REL "shared/models/stories260K/stories260K.gguf"

static const char *example_model(int argc, char **argv) {
    static char buf[4096];
    if (argc > 1) return argv[1];
    /* from the repo root, from build/examples, or from examples/ */
    static const char *const ups[] = {"../", "../../../", "../../"};
    const char *self = argv[0];
    const char *slash = strrchr(self, '/');
    for (size_t i = 0; i < sizeof ups / sizeof ups[0]; i++) {
        snprintf(buf, sizeof buf, "%s%s", ups[i], EXAMPLE_MODEL_REL);
        if (access(buf, R_OK) == 0) return buf;
        if (slash) {
            snprintf(buf, sizeof buf, "%.*s/%s%s", (int)(slash - self), self, ups[i],
                     EXAMPLE_MODEL_REL);
            if (access(buf, R_OK) == 0) return buf;
        }
    }
    fprintf(stderr, "usage: %s MODEL.gguf (no default model found)\n", self);
    exit(2);
}

static const char *example_config(void) {
    const char *c = getenv("AMPR_CONFIG");
    return c && *c ? c : EXAMPLE_DEFAULT_CONFIG;
}

#endif
