/* nufilt: the command-line program. Subcommands, messages and exit codes; no numerics. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "dist.h"
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
            "shards plus model.safetensors.index.json), in F32, F16 or BF16 (F64 read), or\n"
            "model ids (org/name) already in the local Hugging Face cache. A directory output\n"
            "carries the base's other files and folders (config, tokenizer, modules) and a\n"
            "model card.\n"
            "`step` merges one task into the previous merged model; the first step has no\n"
            "--prev. `merge` runs the whole stream in order and is identical, bit for bit, to\n"
            "the chain of steps. Each output records the method, its hyper-parameters and the\n"
            "merged tasks in its metadata, so the next step continues from the file alone.\n"
            "\n"
            "Run `nufilt help step` for every option and its default (`nufilt help --markdown`:\n"
            "the library's options as a Markdown table).\n",
            nf_version());
}

static void help_command(const char *cmd)
{
    if (!cmd) {
        usage(stdout);
        return;
    }
    if (!strcmp(cmd, "--markdown")) {
        cli_print_markdown();
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
               "TASK2 ...\n\nMerges the tasks in the order given, one continual step each. A task\n"
               "is a checkpoint like BASE, or a PEFT LoRA adapter directory (adapter_config.json\n"
               "+ adapter_model.safetensors) trained on BASE. A task given as NAME=PATH is\n"
               "recorded under NAME (else its id or folder name).\n\nOptions:\n");
        cli_print_options(CMD_MERGE);
    } else if (!strcmp(cmd, "inspect")) {
        printf("Usage: nufilt inspect [--preset NAME | --layers REGEX] PATH\n\n"
               "Lists the tensors of a model (name, dtype, shape), marks those NUFILT treats\n"
               "under the chosen preset (a merged model: the selection its merge recorded),\n"
               "and prints the merge history kept in its metadata.\n\n"
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

/* Every signal whose default action ends the process, and that a program may catch, except
 * the faults a bug raises (SIGSEGV, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS: left to their
 * default, a core dump, and to sanitizers). SIGBUS is in: a memory-mapped input truncated
 * by another process raises it, and that is explained. */
static const struct {
    int sig;
    const char *name;
} cleanup_signals[] = {
    {SIGINT, "SIGINT"},   {SIGTERM, "SIGTERM"},     {SIGHUP, "SIGHUP"},   {SIGQUIT, "SIGQUIT"},
    {SIGALRM, "SIGALRM"}, {SIGVTALRM, "SIGVTALRM"}, {SIGPROF, "SIGPROF"}, {SIGUSR1, "SIGUSR1"},
    {SIGUSR2, "SIGUSR2"}, {SIGXCPU, "SIGXCPU"},     {SIGPOLL, "SIGPOLL"}, {SIGPWR, "SIGPWR"},
#ifdef SIGSTKFLT
    {SIGSTKFLT, "SIGSTKFLT"},
#endif
    {SIGBUS, "SIGBUS"},
};
enum { NCLEANUP = sizeof cleanup_signals / sizeof cleanup_signals[0] };

static void say(const char *s)
{
    ssize_t r = write(2, s, strlen(s)); /* stderr may be closed: nothing to do then */
    (void)r;
}

/* Removes the temporary outputs, says which signal stopped the run, then dies of the signal
 * as if unhandled (the shell sees 128 + its number). A signal that arrives after the commit
 * finds no temporary and leaves the complete output. Only async-signal-safe calls here. */
static void on_signal(int sig)
{
    cli_stopping = 1; /* the other threads' errors from here on are the signal's doing */
    nf_cleanup_temporaries();
    if (sig == SIGBUS) {
        say("nufilt: error: bus error reading a memory-mapped input: a model file was "
            "truncated by another process during the run (or the disk failed); no output was "
            "written\n");
    } else {
        const char *name = NULL;
        for (int i = 0; i < NCLEANUP; i++)
            if (cleanup_signals[i].sig == sig)
                name = cleanup_signals[i].name;
        char rt[16] = "SIGRTMIN+";
        if (!name) { /* a real-time signal */
            int n = sig - SIGRTMIN, o = 9;
            if (n >= 10)
                rt[o++] = (char)('0' + n / 10);
            rt[o++] = (char)('0' + n % 10);
            rt[o] = '\0';
            name = rt;
        }
        /* one write, so that a message another thread prints meanwhile (a write that
         * failed because its temporary is gone) cannot land inside it */
        char msg[160] = "nufilt: ";
        size_t n = strlen(msg);
        for (const char *q = cli_rank_prefix; *q && n < 60; q++) /* "rank R of N: " */
            msg[n++] = *q;
        for (const char *q = "stopped by "; *q; q++)
            msg[n++] = *q;
        for (const char *q = name; *q && n < 120; q++)
            msg[n++] = *q;
        const char *tail = "; temporary files removed\n";
        for (const char *q = tail; *q; q++)
            msg[n++] = *q;
        msg[n] = '\0';
        say(msg);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    raise(sig); /* delivered when the handler returns (a SIGBUS fault recurs), now fatal */
}

/* The handlers above for every terminating signal, real-time ones included; SIGPIPE and
 * SIGXFSZ ignored, so that a write to a closed pipe (stderr gone while the progress bar
 * prints) or past `ulimit -f` fails with EPIPE or EFBIG, which the writer reports naming the
 * file (and a run that has committed still ends with status 0). A signal ignored when nufilt
 * starts (nohup, a shell's background job) stays ignored. */
static void install_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigfillset(&sa.sa_mask); /* one handler at a time, and nothing else meanwhile */
    sigdelset(&sa.sa_mask, SIGSEGV);
    sigdelset(&sa.sa_mask, SIGBUS);
    for (int i = 0; i < NCLEANUP + (SIGRTMAX - SIGRTMIN + 1); i++) {
        int sig = i < NCLEANUP ? cleanup_signals[i].sig : SIGRTMIN + (i - NCLEANUP);
        struct sigaction old;
        if (sigaction(sig, NULL, &old) == 0 && old.sa_handler == SIG_IGN && sig != SIGBUS)
            continue;
        sigaction(sig, &sa, NULL);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
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
    int which = !strcmp(cmd, "step")      ? CMD_STEP
                : !strcmp(cmd, "merge")   ? CMD_MERGE
                : !strcmp(cmd, "inspect") ? CMD_INSPECT
                                          : -1;
    /* under mpirun or srun, step and merge are one rank of a distributed merge (host/dist.c) */
    int dist = which == CMD_STEP || which == CMD_MERGE;
    if (dist && cli_dist_begin(&argc, &argv))
        return 1;
    install_handlers();
    if (which >= 0) {
        cli c;
        int rc = cli_parse(which, argc, argv, 2, &c);
        if (rc == 0 && c.help) {
            help_command(cmd);
            cli_free(&c);
            return dist ? cli_dist_end(0) : 0;
        }
        if (rc == 0 && dist)
            rc = cli_dist_adapt(&c);
        if (rc == 0)
            rc = which == CMD_STEP ? cmd_step(&c) : which == CMD_MERGE ? cmd_merge(&c)
                                                                       : cmd_inspect(&c);
        cli_free(&c);
        return dist ? cli_dist_end(rc) : rc;
    }
    if (!strcmp(cmd, "methods"))
        return cmd_methods();
    if (!strcmp(cmd, "devices"))
        return cmd_devices();
    fprintf(stderr, "nufilt: unknown command \"%s\" (see nufilt --help)\n", cmd);
    return 2;
}
