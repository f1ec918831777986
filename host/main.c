/* nufilt: the command-line program. Subcommands, messages and exit codes; no numerics. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "nufilt.h"

static void usage(FILE *f)
{
    fprintf(f,
            "nufilt %s: data-free continual model merging\n"
            "\n"
            "Fine-tuned models arrive one at a time; nufilt folds each into one merged model of\n"
            "the same size, without data and without keeping the older checkpoints. The main\n"
            "method is NUFILT (null-space filtering plus a projection-aware LoRA adapter, Qiu et\n"
            "al., ICLR 2026); the usual baselines are there to compare with.\n"
            "\n"
            "Usage:\n"
            "  nufilt step  --base BASE --task TASK [--prev MERGED] --out OUT [options]\n"
            "  nufilt merge --base BASE --out OUT [--save-steps DIR] [options] TASK1 TASK2 ...\n"
            "  nufilt inspect [--preset NAME | --layers REGEX] PATH\n"
            "  nufilt methods\n"
            "  nufilt devices\n"
            "  nufilt help [COMMAND]   |   nufilt --version\n"
            "\n"
            "Models are .safetensors files or Hugging Face directories (model.safetensors, or\n"
            "shards plus model.safetensors.index.json), in F32, F16 or BF16 (F64 read).\n"
            "`step` merges one task into the previous merged model; the first step has no\n"
            "--prev. `merge` runs the whole stream in order and is identical, bit for bit, to\n"
            "the chain of steps. Each output records the method, its hyper-parameters and the\n"
            "merged tasks in its metadata, so the next step continues from the file alone.\n"
            "\n"
            "Run `nufilt help step` for every option and its default.\n",
            nf_version());
}

static void help_command(const char *cmd)
{
    if (!cmd) {
        usage(stdout);
        return;
    }
    if (!strcmp(cmd, "step")) {
        printf("Usage: nufilt step --base BASE --task TASK [--prev MERGED] --out OUT [options]\n\n"
               "Merges TASK into MERGED (or, without --prev, starts a stream with TASK).\n"
               "Hyper-parameters left out are taken from MERGED's metadata; one that disagrees\n"
               "with it is refused.\n\nOptions:\n");
        cli_print_options(CMD_STEP);
    } else if (!strcmp(cmd, "merge")) {
        printf("Usage: nufilt merge --base BASE --out OUT [--save-steps DIR] [options] TASK1 "
               "TASK2 ...\n\nMerges the tasks in the order given, one continual step each.\n\n"
               "Options:\n");
        cli_print_options(CMD_MERGE);
    } else if (!strcmp(cmd, "inspect")) {
        printf("Usage: nufilt inspect [--preset NAME | --layers REGEX] PATH\n\n"
               "Lists the tensors of a model (name, dtype, shape), marks those NUFILT treats\n"
               "under the chosen preset, and prints the merge history kept in its metadata.\n\n"
               "Options:\n");
        cli_print_options(CMD_INSPECT);
    } else if (!strcmp(cmd, "methods")) {
        printf("Usage: nufilt methods\n\nLists the merging methods, their options and defaults, "
               "and where they come from.\n");
    } else if (!strcmp(cmd, "devices")) {
        printf("Usage: nufilt devices\n\nLists the compute devices (API, name, type, memory, "
               "driver) and the backends whose driver is missing.\n");
    } else {
        fprintf(stderr, "nufilt: no command \"%s\"\n", cmd);
    }
}

/* SIGINT, SIGTERM, SIGHUP: remove the temporary outputs, then die of the signal as if
 * unhandled (the shell sees 130, 143, ...). SIGBUS: an input was memory-mapped and another
 * process truncated it during the run; say so instead of a bare "Bus error". Only
 * async-signal-safe calls here. */
static void on_signal(int sig)
{
    nf_cleanup_temporaries();
    if (sig == SIGBUS) {
        static const char msg[] =
            "nufilt: error: bus error reading a memory-mapped input: a model file was truncated "
            "by another process during the run (or the disk failed); no output was written\n";
        ssize_t r = write(2, msg, sizeof msg - 1);
        (void)r;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    raise(sig); /* delivered when the handler returns (a SIGBUS fault recurs), now fatal */
}

static void install_handlers(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGBUS};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaddset(&sa.sa_mask, sigs[i]); /* one handler at a time */
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        help_command(argc > 2 ? argv[2] : NULL);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("nufilt %s\n", nf_version());
        return 0;
    }
    install_handlers();
    if (!strcmp(cmd, "step") || !strcmp(cmd, "merge")) {
        int which = !strcmp(cmd, "step") ? CMD_STEP : CMD_MERGE;
        cli c;
        int rc = cli_parse(which, argc, argv, 2, &c);
        if (rc == 0 && c.help) {
            help_command(cmd);
            cli_free(&c);
            return 0;
        }
        if (rc == 0)
            rc = which == CMD_STEP ? cmd_step(&c) : cmd_merge(&c);
        cli_free(&c);
        return rc;
    }
    if (!strcmp(cmd, "inspect")) {
        cli c;
        int rc = cli_parse(CMD_INSPECT, argc, argv, 2, &c);
        if (rc == 0 && c.help) {
            help_command(cmd);
            cli_free(&c);
            return 0;
        }
        if (rc == 0)
            rc = cmd_inspect(&c);
        cli_free(&c);
        return rc;
    }
    if (!strcmp(cmd, "methods"))
        return cmd_methods();
    if (!strcmp(cmd, "devices"))
        return cmd_devices();
    fprintf(stderr, "nufilt: unknown command \"%s\" (see nufilt --help)\n", cmd);
    return 2;
}
