/* The subcommands: step, merge, inspect, methods, devices. */
#include "commands.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "dist.h"
#include "progress.h"
#include "size.h"

volatile sig_atomic_t cli_stopping;

static int fail(const nf_error *e)
{
    if (cli_stopping) {
        /* a signal's handler, on another thread, removed the temporaries and says so; it
         * ends the process by the signal within moments: wait for that rather than exit 1 */
        for (int i = 0; i < 100; i++)
            usleep(100000);
        return 1;
    }
    if (cli_rank_prefix[0]) {
        /* over several ranks an error can be another rank's stop seen from here: a rank
         * stopped by a signal removes the shared scratch directory, so the shard this rank
         * writes vanishes under it. The launcher ends every rank within moments of that
         * rank's death and names it; wait briefly so the cause, not this echo, is reported */
        for (int i = 0; i < 30 && !cli_stopping; i++)
            usleep(100000);
    }
    char msg[2 * sizeof e->msg];
    cli_flags(e->msg[0] ? e->msg : nf_status_message(e->code), msg, sizeof msg);
    fprintf(stderr, "nufilt: error: %s%s\n", cli_rank_prefix, msg);
    return e->code == NF_E_ARG ? 2 : 1;
}

static void setup_progress(cli *c, progress *pr)
{
    memset(pr, 0, sizeof *pr);
    int on = c->progress >= 0 ? c->progress : isatty(2);
    if (c->quiet && c->progress != 1)
        on = 0;
    if (on) {
        c->o.progress = progress_cb;
        c->o.progress_user = pr;
    }
}

/* NAME=PATH: a task given with the name to record for it. Only when the whole argument is not
 * an existing path and NAME is non-empty without '/' (a path may contain '='). */
static int split_named(const char *arg, const char **path, char **name)
{
    *path = arg;
    *name = NULL;
    const char *eq = strchr(arg, '=');
    struct stat st;
    if (!eq || eq == arg || memchr(arg, '/', (size_t)(eq - arg)) || !eq[1] || lstat(arg, &st) == 0)
        return 0;
    *name = strndup(arg, (size_t)(eq - arg));
    if (!*name)
        return -1;
    *path = eq + 1;
    return 0;
}

int cmd_step(cli *c)
{
    if (!c->base || !c->task || !c->out) {
        fprintf(stderr, "nufilt step: --base, --task and --out are required (see nufilt help "
                        "step)\n");
        return 2;
    }
    if (c->npositional) {
        fprintf(stderr, "nufilt step: unexpected argument \"%s\" (merge takes task lists)\n",
                c->positional[0]);
        return 2;
    }
    const char *task = c->task;
    char *name = NULL;
    if (split_named(c->task, &task, &name))
        return 1;
    if (name && !c->o.task_name)
        c->o.task_name = name;
    progress pr;
    setup_progress(c, &pr);
    nf_error err = {0};
    double t0 = nf_now();
    int rc = nf_step(c->base, task, c->prev, c->out, &c->o, &err);
    progress_done(&pr);
    free(name);
    if (rc)
        return fail(&err);
    if (!c->quiet)
        fprintf(stderr, "nufilt: wrote %s (%.1f s)\n", c->out, nf_now() - t0);
    return 0;
}

int cmd_merge(cli *c)
{
    if (!c->base || !c->out || c->npositional == 0) {
        fprintf(stderr, "nufilt merge: --base, --out and at least one task model are required "
                        "(see nufilt help merge)\n");
        return 2;
    }
    if (c->task || c->prev) {
        fprintf(stderr, "nufilt merge: --task and --prev belong to `nufilt step`; list the task "
                        "models after the options\n");
        return 2;
    }
    c->task_paths = calloc((size_t)c->npositional, sizeof *c->task_paths);
    c->task_names = calloc((size_t)c->npositional, sizeof *c->task_names);
    if (!c->task_paths || !c->task_names)
        return 1;
    int named = 0, rc = 0;
    for (int i = 0; i < c->npositional && rc == 0; i++) {
        char *nm = NULL;
        rc = split_named(c->positional[i], &c->task_paths[i], &nm);
        c->task_names[i] = nm;
        named |= nm != NULL;
    }
    if (rc == 0 && named)
        c->o.task_names = c->task_names;
    progress pr;
    setup_progress(c, &pr);
    nf_error err = {0};
    double t0 = nf_now();
    if (rc == 0)
        rc = nf_merge(c->base, c->task_paths, c->npositional, c->out, c->save_steps, &c->o, &err);
    progress_done(&pr);
    for (int i = 0; i < c->npositional; i++)
        free((char *)c->task_names[i]);
    if (rc)
        return fail(&err);
    if (!c->quiet)
        fprintf(stderr, "nufilt: merged %d task%s into %s (%.1f s)\n", c->npositional,
                c->npositional == 1 ? "" : "s", c->out, nf_now() - t0);
    return 0;
}

/* Prints a string from a model file (a tensor name, a metadata key or value): at most max
 * bytes, control characters (C0, DEL, C1) written as \xNN and invisible or reordering ones
 * (U+202E RIGHT-TO-LEFT OVERRIDE, zero-width characters, ...) as \uXXXX, so that a file can
 * neither drive the terminal nor disguise a name. Returns the columns printed, roughly. */
static int put_clean(const char *s, size_t max)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), i = 0;
    int cols = 0;
    for (; u[i] && i < max; i++) {
        uint32_t cp;
        size_t il = nf_utf8_invisible(s + i, n - i, &cp);
        if (il) {
            cols += printf(cp > 0xFFFF ? "\\U%08x" : "\\u%04x", (unsigned)cp);
            i += il - 1;
            continue;
        }
        int c1 = u[i] == 0xC2 && u[i + 1] >= 0x80 && u[i + 1] <= 0x9F;
        if (u[i] < 0x20 || u[i] == 0x7F || c1) {
            cols += printf("\\x%02x", u[i]);
            if (c1)
                cols += printf("\\x%02x", u[++i]);
        } else {
            putchar(u[i]);
            cols += (u[i] & 0xC0) != 0x80;
        }
    }
    if (u[i])
        cols += printf("...");
    return cols;
}

int cmd_inspect(cli *c)
{
    if (c->npositional != 1) {
        fprintf(stderr, "nufilt inspect: give one model path\n");
        return 2;
    }
    const char *path = c->positional[0];
    nf_model *m = NULL;
    nf_error err = {0};
    if (nf_model_open(path, &m, &err))
        return fail(&err);
    size_t n = nf_model_tensor_count(m);
    uint64_t bytes = 0;
    nf_tensor_info ti;
    for (size_t i = 0; i < n; i++) {
        nf_model_tensor_info(m, i, &ti);
        bytes += ti.nbytes;
    }
    /* a merged model shows the selection its merge recorded, unless one is asked for */
    char rec_kind[16], rec_value[4096];
    int recorded = !c->o.layers && !c->o.preset &&
                   nf_model_recorded_selection(m, rec_kind, sizeof rec_kind, rec_value,
                                               sizeof rec_value);
    if (recorded && !strcmp(rec_kind, "layers"))
        c->o.layers = rec_value;
    else if (recorded)
        c->o.preset = rec_value;
    const char *preset = NULL;
    if (!c->o.layers && nf_preset_resolve(m, c->o.preset, &preset, &err)) {
        nf_model_close(m);
        return fail(&err);
    }
    char hb[32];
    cli_format_size((double)bytes, hb, sizeof hb);
    printf("%s\n  %zu tensors, %s in %zu file%s\n", path, n, hb, nf_model_shard_count(m),
           nf_model_shard_count(m) == 1 ? "" : "s");
    /* treated tensors */
    size_t treated = 0;
    int width = 10;
    for (size_t i = 0; i < n; i++) {
        nf_model_tensor_info(m, i, &ti);
        int w = (int)strlen(ti.name);
        if (w > width)
            width = w;
    }
    if (width > 80)
        width = 80;
    unsigned char *tr = calloc(n ? n : 1, 1);
    if (tr && nf_select(m, c->o.layers ? NULL : preset, c->o.layers, tr, &err)) {
        free(tr);
        nf_model_close(m);
        return fail(&err);
    }
    for (size_t i = 0; tr && i < n; i++)
        treated += tr[i];
    const char *how = recorded ? " (recorded by its merge)" : "";
    if (c->o.layers) {
        printf("  selection --layers '");
        put_clean(c->o.layers, 4096);
        printf("'%s: %zu tensors treated by nufilt\n", how, treated);
    } else {
        printf("  preset %s%s: %zu tensors treated by nufilt\n", preset,
               recorded ? how : c->o.preset && strcmp(c->o.preset, "auto") ? "" : " (auto)",
               treated);
    }
    /* merge history */
    const char *meth = nf_model_metadata_get(m, "nufilt.method");
    if (meth) {
        const char *ver = nf_model_metadata_get(m, "nufilt.version");
        printf("\nmerge state (written by nufilt ");
        put_clean(ver ? ver : "?", 40);
        printf("):\n");
        const char *keys[] = {"nufilt.method", "nufilt.step",  "nufilt.params",
                              "nufilt.state",  "nufilt.base",  "nufilt.tasks"};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            const char *v = nf_model_metadata_get(m, keys[k]);
            if (v) {
                printf("  %-8s ", keys[k] + 7);
                put_clean(v, 100000);
                printf("\n");
            }
        }
    } else {
        printf("\nno merge history (not written by nufilt)\n");
    }
    size_t nmeta = nf_model_metadata_count(m);
    int other = 0;
    for (size_t i = 0; i < nmeta; i++) {
        const char *k, *v;
        nf_model_metadata_at(m, i, &k, &v);
        if (strncmp(k, "nufilt.", 7) == 0)
            continue;
        if (!other++)
            printf("\nmetadata:\n");
        printf("  ");
        put_clean(k, 200);
        printf(" = ");
        put_clean(v, 200);
        printf("\n");
    }
    printf("\n  %-*s  %-5s  %-18s %s\n", width, "tensor", "dtype", "shape", "nufilt");
    for (size_t i = 0; i < n; i++) {
        nf_model_tensor_info(m, i, &ti);
        char shape[96];
        size_t o = 0;
        o += (size_t)snprintf(shape + o, sizeof shape - o, "[");
        for (int d = 0; d < ti.ndim && o < sizeof shape; d++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, "%s%" PRId64, d ? ", " : "",
                                  ti.shape[d]);
        if (o < sizeof shape)
            snprintf(shape + o, sizeof shape - o, "]");
        printf("  ");
        int cols = put_clean(ti.name, 4096);
        printf("%*s  %-5s  %-18s %s\n", cols < width ? width - cols : 0, "",
               nf_dtype_name(ti.dtype), shape, tr && tr[i] ? "treated" : "-");
    }
    free(tr);
    nf_model_close(m);
    return 0;
}

int cmd_methods(void)
{
    printf("Methods (--method NAME). Each step sees only the base, the previous merged model and\n"
           "the new task model; the state a method needs travels in the merged file.\n\n");
    for (int i = 0; i < NF_METHOD_COUNT; i++) {
        const nf_method_info *m = nf_method_get(i);
        printf("%-8s %s%s\n", m->name, m->summary,
               m->implemented ? "" : "  [not yet available in this build]");
        char opt[1024];
        cli_flags(m->options, opt, sizeof opt);
        printf("%-8s options: %s\n", "", opt);
        printf("%-8s from: %s\n\n", "", m->paper);
    }
    return 0;
}

int cmd_devices(void)
{
    nf_device_info info[64];
    int n = 0;
    nf_error err = {0};
    if (nf_devices_list(info, 64, &n, &err))
        return fail(&err);
    printf("%-10s %-15s %-10s %s\n", "device", "type", "memory", "name / driver");
    for (int i = 0; i < n && i < 64; i++) {
        char dev[48], mem[32];
        snprintf(dev, sizeof dev, "%.16s:%d", info[i].api, info[i].index);
        cli_format_size((double)info[i].memory, mem, sizeof mem);
        printf("%-10s %-15s %-10s %s\n", dev, nf_device_type_name(info[i].type), mem,
               info[i].name);
        printf("%-10s %-15s %-10s driver %s\n", "", "", "", info[i].driver);
    }
    for (int b = 0;; b++) {
        const char *api, *why;
        int avail;
        if (nf_backend_status(b, &api, &avail, &why))
            break;
        if (!avail)
            printf("%-10s unavailable: %s\n", api, why);
    }
    printf("\n--device auto picks the real GPUs above, or the CPU when there is none; software\n"
           "devices (PoCL, lavapipe) run only when named, e.g. --device opencl:0.\n");
    return 0;
}
