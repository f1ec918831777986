/* The nufilt program's options: the program's own (the inputs and outputs, the method, what
 * it prints) in the table below, every nf_options field from the library's tables
 * (src/merge/options.h), which give its flag, kind, range, defaults and help text. */
#include "args.h"
#include "size.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "merge/options.h"

/* The program's own options. */
typedef struct opt {
    const char *name;   /* without the leading dashes */
    const char *arg;    /* metavariable, NULL for switches */
    int cmds;
    int first;          /* listed before the library's options (else after) */
    const char *help;
} opt;

static const opt opts[] = {
    {"base", "PATH", CMD_RUN, 1,
     "pre-trained model: a .safetensors file, a Hugging Face directory, or a model id (org/name) "
     "in the local Hugging Face cache"},
    {"task", "PATH", CMD_STEP, 1,
     "the fine-tuned model to merge in this step: a checkpoint like --base, or a PEFT LoRA "
     "adapter directory (adapter_config.json + adapter_model.safetensors); NAME=PATH records "
     "NAME for it [its id or folder name]"},
    {"prev", "PATH", CMD_STEP, 1,
     "the merged model of the previous step (omit for the first step); the method, its "
     "hyper-parameters and the step count are read from its metadata"},
    {"out", "PATH", CMD_RUN, 1,
     "output: PATH.safetensors is written as one file, any other PATH as a Hugging Face "
     "directory: the base's files and folders but its weights (config, tokenizer, "
     "sentence-transformers modules), and a model card README.md"},
    {"save-steps", "DIR", CMD_MERGE, 1,
     "also keep the model after every step as DIR/stepNN[.safetensors] (DIR may hold OUT, "
     "not be inside it or an input)"},
    {"method", "NAME", CMD_RUN, 1, NULL /* the registry's methods, see own_help */},
    {"quiet", NULL, CMD_RUN, 0, "print nothing but errors"},
    {"progress", NULL, CMD_RUN, 0,
     "progress bar on standard error (--no-progress) [on when standard error is a terminal]"},
    {"help", NULL, CMD_RUN | CMD_INSPECT, 0, "this help"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

/* The commands that take a library option: the recipe's and the run's settings are step's and
 * merge's; the selection is also inspect's (which tensors it marks treated). */
static int lib_cmds(const nf_opt *o)
{
    if (o->kind == NF_OPT_PRESET || o->kind == NF_OPT_LAYERS)
        return CMD_RUN | CMD_INSPECT;
    return (o->commands & NF_OPT_STEP ? CMD_STEP : 0) |
           (o->commands & NF_OPT_MERGE ? CMD_MERGE : 0);
}

/* A library option's help line: what it is, its methods, range and default. */
static void lib_help(const nf_opt *o, char *buf, size_t n)
{
    char methods[128] = "", range[96] = "", def[160];
    const nf_option_range *r = nf_opt_range(o);
    if (o->bit)
        nf_opt_describe_methods(o, methods, sizeof methods);
    if (r && o->bit)
        nf_option_range_describe(r, range, sizeof range);
    nf_opt_describe_default(o, def, sizeof def);
    snprintf(buf, n, "%s%s%s%s%s%s%s%s%s%s", methods, *methods ? ": " : "", o->help,
             *range ? " (" : "", range, *range ? ")" : "",
             o->kind == NF_OPT_BOOL ? " (--no-" : "", o->kind == NF_OPT_BOOL ? o->flag : "",
             o->kind == NF_OPT_BOOL ? ")" : "", "");
    if (*def) {
        size_t w = strlen(buf);
        snprintf(buf + w, n - w, " [%s]", def);
    }
}

static void print_one(const char *name, const char *arg, const char *h)
{
    char head[64];
    snprintf(head, sizeof head, "--%s%s%s", name, arg ? " " : "", arg ? arg : "");
    printf("  %-24s", head);
    /* wrap the help text at 100 columns */
    int col = 26, first = 1;
    if (strlen(head) > 22)
        printf("\n%26s", "");
    while (*h) {
        const char *sp = h;
        while (*sp && *sp != ' ')
            sp++;
        int w = (int)(sp - h);
        if (!first && col + 1 + w > 100) {
            printf("\n%26s", "");
            col = 26;
            first = 1;
        }
        printf("%s%.*s", first ? "" : " ", w, h);
        col += w + (first ? 0 : 1);
        first = 0;
        h = *sp ? sp + 1 : sp;
    }
    printf("\n");
}

/* A program option's help; --method's lists the methods of the registry. */
static const char *own_help(const opt *p, char *buf, size_t n)
{
    if (p->help)
        return p->help;
    size_t w = 0;
    for (int m = 0; m < NF_METHOD_COUNT && w < n; m++)
        w += (size_t)snprintf(buf + w, n - w, "%s%s",
                              m == 0 ? "" : m + 1 < NF_METHOD_COUNT ? ", " : " or ",
                              nf_method_get(m)->name);
    if (w < n)
        snprintf(buf + w, n - w, " (`nufilt methods`) [%s]", nf_method_get(NF_METHOD_NUFILT)->name);
    return buf;
}

void cli_print_options(int cmd)
{
    size_t n;
    const nf_opt *t = nf_opt_table(&n);
    char h[2048];
    for (size_t i = 0; i < NOPTS; i++)
        if (opts[i].first && (opts[i].cmds & cmd))
            print_one(opts[i].name, opts[i].arg, own_help(&opts[i], h, sizeof h));
    for (size_t i = 0; i < n; i++) {
        if (!(lib_cmds(&t[i]) & cmd))
            continue;
        lib_help(&t[i], h, sizeof h);
        print_one(t[i].flag, t[i].metavar, h);
    }
    for (size_t i = 0; i < NOPTS; i++)
        if (!opts[i].first && (opts[i].cmds & cmd))
            print_one(opts[i].name, opts[i].arg, own_help(&opts[i], h, sizeof h));
}

/* Markdown table cells hold no '|'. */
static void md_cell(const char *s)
{
    for (; *s; s++)
        fputs(*s == '|' ? "\\|" : (char[2]){*s, 0}, stdout);
}

void cli_print_markdown(void)
{
    size_t n;
    const nf_opt *t = nf_opt_table(&n);
    printf("| option | `nf_options` field | read by | valid values | default | what |\n"
           "| --- | --- | --- | --- | --- | --- |\n");
    for (size_t i = 0; i < n; i++) {
        char methods[128] = "", range[96] = "", def[160];
        const nf_option_range *r = nf_opt_range(&t[i]);
        if (t[i].bit)
            nf_opt_describe_methods(&t[i], methods, sizeof methods);
        else
            snprintf(methods, sizeof methods, "%s",
                     t[i].commands == NF_OPT_MERGE ? "(merge)" : "(every step)");
        if (r)
            nf_option_range_describe(r, range, sizeof range);
        for (int k = 1; t[i].names && t[i].names[k]; k++)
            snprintf(range + strlen(range), sizeof range - strlen(range), "%s`%s`",
                     k == 1 ? "" : t[i].names[k + 1] ? ", " : " or ", t[i].names[k]);
        nf_opt_describe_default(&t[i], def, sizeof def);
        printf("| `--%s%s%s` | `%s` | %s | ", t[i].flag, t[i].metavar ? " " : "",
               t[i].metavar ? t[i].metavar : "", t[i].field, methods);
        md_cell(range);
        printf(" | ");
        md_cell(def);
        printf(" | ");
        md_cell(t[i].help);
        printf(" |\n");
    }
}

static int bad(const char *name, const char *val, const char *why)
{
    fprintf(stderr, "nufilt: --%s %s: %s\n", name, val ? val : "", why);
    return 2;
}

/* A number checked against its range (the library's table, the one the values recorded in a
 * previous merge are checked against): *out the value, *iout the integer where it is one. */
static int parse_ranged(const nf_opt *o, const char *v, double *out, long long *iout)
{
    const nf_option_range *r = nf_opt_range(o);
    char want[96];
    nf_option_range_describe(r, want, sizeof want);
    char why[128];
    snprintf(why, sizeof why, "expected %s", want);
    char *end;
    errno = 0;
    double x;
    if (r && r->integer) {
        long long i = strtoll(v, &end, 10);
        x = (double)i;
        *iout = i;
    } else {
        x = strtod(v, &end);
    }
    if (!r || end == v || *end || errno || !nf_option_range_ok(r, x))
        return bad(o->flag, v, why);
    *out = x;
    return 0;
}

/* The run's enumerations, by name. */
static int parse_choice(const nf_opt *o, const char *val, nf_options *opt)
{
    static const struct {
        const char *field, *name;
        int value;
    } choices[] = {
        {"out_dtype", "keep", NF_DTYPE_INVALID}, {"out_dtype", "f32", NF_F32},
        {"out_dtype", "F32", NF_F32},            {"out_dtype", "f16", NF_F16},
        {"out_dtype", "F16", NF_F16},            {"out_dtype", "bf16", NF_BF16},
        {"out_dtype", "BF16", NF_BF16},          {"svd", "gesdd", NF_SVD_GESDD},
        {"svd", "exact", NF_SVD_GESDD},          {"svd", "randomized", NF_SVD_RANDOMIZED},
        {"svd", "gram", NF_SVD_GRAM},            {"svd", "fast", NF_SVD_FAST},
    };
    for (size_t i = 0; i < sizeof choices / sizeof choices[0]; i++)
        if (!strcmp(choices[i].field, o->field) && !strcmp(choices[i].name, val)) {
            *(int *)((char *)opt + o->o_off) = choices[i].value;
            return 0;
        }
    return bad(o->flag, val,
               !strcmp(o->field, "svd") ? "expected fast, gram, gesdd (or exact) or randomized"
                                        : "expected keep, f32, f16 or bf16");
}

/* A library option's value (val NULL for a switch) into its nf_options field. */
static int apply_lib(const nf_opt *o, const char *val, int negated, nf_options *opt)
{
    char *at = (char *)opt + o->o_off;
    double x;
    long long i = 0;
    int rc = 0;
    switch (o->kind) {
    case NF_OPT_INT:
        if (!(rc = parse_ranged(o, val, &x, &i)))
            *(int *)at = (int)i;
        return rc;
    case NF_OPT_SEED:
        rc = parse_ranged(o, val, &x, &i);
        *(int64_t *)at = i;
        return rc;
    case NF_OPT_NUM:
        if (!(rc = parse_ranged(o, val, &x, &i)))
            *(double *)at = x;
        return rc;
    case NF_OPT_ENUM:
        for (int k = 1; o->names[k]; k++)
            if (!strcmp(o->names[k], val)) {
                *(int *)at = k;
                return 0;
            }
        return bad(o->flag, val, "expected paper or reference");
    case NF_OPT_BOOL:
    case NF_OPT_FLAG: *(int *)at = !negated; return 0;
    case NF_OPT_PRESET:
    case NF_OPT_LAYERS:
    case NF_OPT_STR: *(const char **)at = val; return 0;
    case NF_OPT_SIZE:
        if (cli_parse_size(val, (uint64_t *)at) || *(uint64_t *)at == 0)
            return bad(o->flag, val, "expected a size such as 2GB, 500MB or 1GiB");
        return 0;
    case NF_OPT_CHOICE: return parse_choice(o, val, opt);
    }
    return 0;
}

/* A program option's value into c. */
static int apply_own(const opt *p, const char *val, int negated, cli *c)
{
    const char *name = p->name;
    if (!strcmp(name, "base")) c->base = val;
    else if (!strcmp(name, "task")) c->task = val;
    else if (!strcmp(name, "prev")) c->prev = val;
    else if (!strcmp(name, "out")) c->out = val;
    else if (!strcmp(name, "save-steps")) c->save_steps = val;
    else if (!strcmp(name, "method")) {
        c->o.method = nf_method_from_name(val);
        if (c->o.method < 0)
            return bad(name, val, "unknown method (see `nufilt methods`)");
    } else if (!strcmp(name, "quiet")) c->quiet = !negated;
    else if (!strcmp(name, "progress")) c->progress = !negated;
    else if (!strcmp(name, "help")) c->help = 1;
    return 0;
}

/* The option named (without dashes) for this command: the program's or the library's, and
 * whether a --no- form negates a switch. */
static int find_option(int cmd, char *name, const opt **own, const nf_opt **lib, int *negated)
{
    *own = NULL;
    *lib = NULL;
    *negated = 0;
    for (int pass = 0; pass < 2 && !*own && !*lib; pass++) {
        const char *nm = pass ? name + 3 : name;
        if (pass && strncmp(name, "no-", 3) != 0)
            break;
        for (size_t k = 0; k < NOPTS && !*own; k++)
            if (!strcmp(opts[k].name, nm) && (!pass || !opts[k].arg))
                *own = &opts[k];
        const nf_opt *l = *own ? NULL : nf_opt_find(nm);
        if (l && !strcmp(l->flag, nm) && (!pass || !l->metavar))
            *lib = l;
        *negated = pass && (*own || *lib);
    }
    if (*negated) /* messages name the option itself */
        memmove(name, name + 3, strlen(name + 3) + 1);
    int cmds = *own ? (*own)->cmds : *lib ? lib_cmds(*lib) : 0;
    if (!(cmds & cmd)) {
        fprintf(stderr, "nufilt: unknown option --%s for this command (see --help)\n", name);
        return 2;
    }
    return 0;
}

/* One long option at argv[*i] (its value inline after '=' or the next argument). */
static int parse_long(int cmd, int argc, char **argv, int *i, cli *c)
{
    const char *a = argv[*i];
    char name[64];
    const char *val = NULL;
    const char *eq = strchr(a + 2, '=');
    size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    if (nl >= sizeof name) {
        fprintf(stderr, "nufilt: unknown option %s\n", a);
        return 2;
    }
    memcpy(name, a + 2, nl);
    name[nl] = '\0';
    if (eq)
        val = eq + 1;
    const opt *own;
    const nf_opt *lib;
    int negated;
    if (find_option(cmd, name, &own, &lib, &negated))
        return 2;
    const char *arg = own ? own->arg : lib->metavar;
    if (arg && !val) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "nufilt: --%s needs a value (%s)\n", name, arg);
            return 2;
        }
        val = argv[++*i];
    } else if (!arg && val) {
        fprintf(stderr, "nufilt: --%s takes no value\n", name);
        return 2;
    }
    return own ? apply_own(own, val, negated, c) : apply_lib(lib, val, negated, &c->o);
}

typedef struct strbuf {
    char *s;
    size_t len, cap;
    int oom;
} strbuf;

static void put(strbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = (b->cap + n + 1) * 2;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->len, s, n + 1);
    b->len += n;
}

/* One argument as a POSIX shell reads it back: bare when it is made of safe characters,
 * else in single quotes, or as $'...' when it holds control characters. */
static void quote_arg(strbuf *b, const char *a)
{
    const unsigned char *u = (const unsigned char *)a;
    int safe = *a != '\0', ctl = 0;
    for (const unsigned char *p = u; *p; p++) {
        if (!(isalnum(*p) || strchr("@%+=:,./_-", *p) || *p >= 0x80))
            safe = 0;
        if (*p < 0x20 || *p == 0x7F)
            ctl = 1;
    }
    if (safe) {
        put(b, a);
        return;
    }
    put(b, ctl ? "$'" : "'");
    for (const unsigned char *p = u; *p; p++) {
        char tmp[8];
        if (ctl && (*p < 0x20 || *p == 0x7F || *p == '\'' || *p == '\\'))
            snprintf(tmp, sizeof tmp, "\\x%02x", *p);
        else if (!ctl && *p == '\'')
            snprintf(tmp, sizeof tmp, "'\\''");
        else
            snprintf(tmp, sizeof tmp, "%c", *p);
        put(b, tmp);
    }
    put(b, "'");
}

char *quote_command(int argc, char **argv)
{
    strbuf b = {0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (i == 0) {
            const char *sl = strrchr(a, '/');
            a = sl ? sl + 1 : a; /* the program as found on the PATH */
        } else {
            put(&b, " ");
        }
        quote_arg(&b, a);
    }
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}


int cli_parse(int cmd, int argc, char **argv, int first, cli *c)
{
    memset(c, 0, sizeof *c);
    nf_options_init(&c->o);
    c->progress = -1;
    c->positional = calloc((size_t)argc + 1, sizeof *c->positional);
    if (!c->positional)
        return 2;
    c->command_line = quote_command(argc, argv);
    c->o.command_line = c->command_line;
    int only_positional = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            c->positional[c->npositional++] = a;
        } else if (strcmp(a, "--") == 0) {
            only_positional = 1;
        } else if (strcmp(a, "-h") == 0) {
            c->help = 1;
        } else if (a[1] != '-') {
            fprintf(stderr, "nufilt: unknown option %s (options are long: --name)\n", a);
            return 2;
        } else {
            int rc = parse_long(cmd, argc, argv, &i, c);
            if (rc)
                return rc;
        }
    }
    return 0;
}

void cli_free(cli *c)
{
    free(c->positional);
    c->positional = NULL;
    free(c->command_line);
    c->command_line = NULL;
    free(c->task_paths);
    free(c->task_names);
    c->task_paths = c->task_names = NULL;
}

/* The library names options by their nf_options fields in backquotes (`null_rank`,
 * `out_dtype`); the program's messages name its flags (--null-rank, --dtype). Other
 * backquoted text stays as it is. */
void cli_flags(const char *in, char *out, size_t n)
{
    size_t o = 0;
    if (!n)
        return;
    while (*in && o + 1 < n) {
        const char *end = *in == '`' ? strchr(in + 1, '`') : NULL;
        size_t len = end ? (size_t)(end - in - 1) : 0;
        const char *flag = NULL;
        char name[40];
        if (end && len > 0 && len < sizeof name) {
            memcpy(name, in + 1, len);
            name[len] = '\0';
            const nf_opt *l = nf_opt_find(name);
            flag = l ? l->flag : NULL;
            for (size_t i = 0; i < len; i++)
                if (name[i] == '_')
                    name[i] = '-';
            for (size_t i = 0; !flag && i < NOPTS; i++)
                if (!strcmp(name, opts[i].name))
                    flag = opts[i].name;
            if (!flag && (l = nf_opt_find(name)) != NULL)
                flag = l->flag;
        }
        if (flag) {
            int w = snprintf(out + o, n - o, "--%s", flag);
            o += w > 0 ? (size_t)w : 0;
            if (o >= n)
                o = n - 1;
            in = end + 1;
        } else {
            out[o++] = *in++;
        }
    }
    out[o] = '\0';
}
