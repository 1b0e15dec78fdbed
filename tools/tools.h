/* tools.h -- the `ampr` subcommands that live outside ampr.c. */
#ifndef AMPR_TOOLS_H
#define AMPR_TOOLS_H

#include "model/model.h"

int ampr_tool_eval(int argc, char **argv);
int ampr_tool_bench(int argc, char **argv);
int ampr_tool_gen_model(int argc, char **argv);
int ampr_tool_calibrate(int argc, char **argv);
/* Fill hp for a named shape ("tiny", "small", "1b"); 0 on success. */
int ampr_tool_shape(const char *name, ampr__hparams *hp);

#endif
