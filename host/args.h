/* Command-line options of the nufilt program: one table drives parsing and --help. */
#ifndef NFH_ARGS_H
#define NFH_ARGS_H

#include "nufilt.h"

enum {
    CMD_STEP = 1 << 0,
    CMD_MERGE = 1 << 1,
    CMD_INSPECT = 1 << 2,
    CMD_RUN = CMD_STEP | CMD_MERGE,
};

typedef struct cli {
    nf_options o;
    const char *base, *task, *prev, *out, *save_steps;
    const char **positional;
    int npositional;
    int quiet;
    int progress;   /* -1 auto (a terminal), 0 off, 1 on */
    int help;
    char *command_line;   /* argv shell-quoted, for the model card (c->o.command_line) */
    const char **task_paths, **task_names; /* merge: NAME=PATH split (allocated) */
} cli;

/* Parses argv[first..] for a command (CMD_*). Returns 0, or prints a message and returns 2. */
int cli_parse(int cmd, int argc, char **argv, int first, cli *c);
void cli_free(cli *c);
/* argv as one shell command line (the program's own name without its directory). */
char *quote_command(int argc, char **argv);
/* Prints the options of a command, with their defaults. */
void cli_print_options(int cmd);
/* The library's options as a Markdown table (`nufilt help --markdown`, in docs/cli-contract.md). */
void cli_print_markdown(void);

/* A library message with its option names (`null_rank`) written as the program's flags. */
void cli_flags(const char *in, char *out, size_t n);

#endif
