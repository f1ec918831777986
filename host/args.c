#include "args.h"
#include "size.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum kind { K_INT, K_DOUBLE, K_SEED, K_STR, K_FLAG, K_SIZE, K_SPECIAL } kind;

typedef struct opt {
    const char *name;   /* without the leading dashes */
    const char *arg;    /* metavariable, NULL for flags */
    int cmds;
    kind k;
    const char *help;
} opt;

static const opt opts[] = {
    {"base", "PATH", CMD_RUN, K_SPECIAL,
     "pre-trained model: a .safetensors file, a Hugging Face directory, or a model id (org/name) "
     "in the local Hugging Face cache"},
    {"task", "PATH", CMD_STEP, K_SPECIAL,
     "the fine-tuned model to merge in this step: a checkpoint like --base, or a PEFT LoRA "
     "adapter directory (adapter_config.json + adapter_model.safetensors); NAME=PATH records "
     "NAME for it [its id or folder name]"},
    {"prev", "PATH", CMD_STEP, K_SPECIAL,
     "the merged model of the previous step (omit for the first step); the method, its "
     "hyper-parameters and the step count are read from its metadata"},
    {"out", "PATH", CMD_RUN, K_SPECIAL,
     "output: PATH.safetensors is written as one file, any other PATH as a Hugging Face "
     "directory: the base's files and folders but its weights (config, tokenizer, "
     "sentence-transformers modules), and a model card README.md"},
    {"save-steps", "DIR", CMD_MERGE, K_SPECIAL,
     "also keep the model after every step as DIR/stepNN[.safetensors] (DIR may hold OUT, "
     "not be inside it or an input)"},
    {"resume", NULL, CMD_MERGE, K_FLAG,
     "with --save-steps: continue after the last step kept in DIR (its tasks must be the first "
     "ones given, its base and recipe the same) instead of starting over"},
    {"method", "NAME", CMD_RUN, K_SPECIAL,
     "nufilt, wa, ta, ties, magmax, opcm, wudi, isoc or tsvm (`nufilt methods`) [nufilt]"},
    {"null-rank", "N", CMD_RUN, K_INT, "nufilt: r_p, rank of the null-space filter [128]"},
    {"task-rank", "N", CMD_RUN, K_INT, "nufilt: r_v, rank of the task projection in the objective [8]"},
    {"lora-rank", "N", CMD_RUN, K_INT, "nufilt: r_l, rank of the adapter; 0 = filter only [64]"},
    {"lr", "X", CMD_RUN, K_DOUBLE, "Adam learning rate, 0 to 1 [nufilt 1e-3, wudi 1e-5]"},
    {"iters", "N", CMD_RUN, K_INT, "Adam iterations per matrix (nufilt, wudi) [50]"},
    {"seed", "N", CMD_RUN, K_SEED, "seed of the adapter's random initialisation (nufilt) [0]"},
    {"compat", "MODE", CMD_RUN, K_SPECIAL,
     "nufilt: paper (M(1) = task 1, rank-deficient prev handled) or reference (reproduce the "
     "published code, first-step artefact included) [paper]"},
    {"rank-tol", "X", CMD_RUN, K_DOUBLE,
     "nufilt, paper mode: drop singular vectors below X times the largest [1e-6]"},
    {"preset", "NAME", CMD_RUN | CMD_INSPECT, K_STR,
     "tensors nufilt treats: auto, clip (attn, fc1), t5 (SelfAttention, EncDecAttention, "
     "DenseReluDense), llama (self_attn, mlp), all-linear (2-D *.weight but embeddings and "
     "lm_head) [auto: from the tensor names]"},
    {"layers", "REGEX", CMD_RUN | CMD_INSPECT, K_STR,
     "treat the 2-D tensors whose name matches this POSIX extended regex (overrides --preset); "
     "a preset or regex that selects no tensor is refused"},
    {"scale", "X", CMD_RUN, K_DOUBLE,
     "lambda of ta [0.3], ties [0.3], magmax [0.5], isoc [1], tsvm [1]; -100 to 100"},
    {"keep", "X", CMD_RUN, K_DOUBLE, "ties: fraction of entries kept by the trim [0.2]"},
    {"alpha", "X", CMD_RUN, K_DOUBLE, "opcm: share of the spectrum projected out [0.5]"},
    {"opcm-zero-diag", NULL, CMD_RUN, K_SPECIAL,
     "opcm: also remove the diagonal of the projected task vector (--no-opcm-zero-diag) [off]"},
    {"dtype", "TYPE", CMD_RUN, K_SPECIAL,
     "output dtype of float tensors: keep, f32, f16 or bf16 (round to nearest even); a "
     "directory output's config.json says so (torch_dtype, dtype); in a merge every step "
     "reads the previous one in this dtype [keep: each tensor's dtype in the base]"},
    {"out-shard-size", "SIZE", CMD_RUN, K_SIZE,
     "directory output: start a new shard past SIZE (e.g. 2GB, 500MB) [one file; for a "
     "sharded base, shards of at most its largest shard file's size]"},
    {"force", NULL, CMD_RUN, K_FLAG,
     "replace an existing output, report or saved step, if it is nufilt's kind: a safetensors "
     "file, a directory holding only safetensors weights, their index, README.md and files the "
     "base directory also has, a JSON report (never an input; see docs/security.md)"},
    {"allow-nonfinite", NULL, CMD_RUN, K_FLAG,
     "merge models that hold NaN or Inf, and write an output that does (by default both are "
     "refused, naming the tensor and the element)"},
    {"device", "LIST", CMD_RUN, K_STR,
     "compute devices: auto, cpu, opencl:N, vulkan:N or a comma list (`nufilt devices`) "
     "[auto: real GPUs, else the CPU]"},
    {"svd", "MODE", CMD_RUN, K_SPECIAL,
     "how NUFILT finds its top singular vectors. fast: the top vectors as eigenvectors of "
     "the Gram matrix in float32, sharing the task vector's Gram matrix with the adapter's "
     "training; gram is used for a matrix whose 128th singular value is below 1% of the "
     "largest; the fastest accurate mode. gram: the same in double precision. gesdd (alias "
     "exact): LAPACK's float32 gesdd, the method's definition, slower and on wide matrices "
     "further from a float64 SVD than gram and fast. (--compat reference uses gesdd for gram "
     "and fast.) randomized: range finder, 10 extra columns, 2 power iterations; approximate "
     "where the spectrum has no gap at the cut: its merged task vectors were up to 0.15 "
     "(median 0.13, relative) from gesdd's on a generated ViT-B/32 step, 0.18 (0.15) on a "
     "generated LLaMA-style one, and 0.46 (0.31) after 3 steps of real all-MiniLM-L6-v2 "
     "fine-tunes. The mode is recorded in the output; a step may use another mode than the "
     "previous one (--report says so). See docs/performance.md [fast]"},
    {"threads", "N", CMD_RUN, K_INT, "worker threads [all cores]"},
    {"max-memory", "SIZE", CMD_RUN, K_SIZE,
     "cap on the estimated working memory of the tensors in flight (e.g. 500MB); fewer run at "
     "once, and a tensor that alone needs more is an error [no cap]"},
    {"report", "FILE", CMD_RUN, K_STR,
     "write a JSON report: per treated tensor the ranks used, the energy the filter removed, "
     "the adapter's objective before and after, the time. Written before OUT is committed, "
     "moved into place after; an existing FILE is replaced only with --force"},
    {"quiet", NULL, CMD_RUN, K_FLAG, "print nothing but errors"},
    {"progress", NULL, CMD_RUN, K_SPECIAL,
     "progress bar on standard error (--no-progress) [on when standard error is a terminal]"},
    {"help", NULL, CMD_RUN | CMD_INSPECT, K_FLAG, "this help"},
};

void cli_print_options(int cmd)
{
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        const opt *p = &opts[i];
        if (!(p->cmds & cmd))
            continue;
        char head[64];
        snprintf(head, sizeof head, "--%s%s%s", p->name, p->arg ? " " : "", p->arg ? p->arg : "");
        printf("  %-24s", head);
        /* wrap the help text at 100 columns */
        const char *h = p->help;
        int col = 26, first = 1;
        if (strlen(head) > 22) {
            printf("\n%26s", "");
        }
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
}

static int bad(const char *name, const char *val, const char *why)
{
    fprintf(stderr, "nufilt: --%s %s: %s\n", name, val ? val : "", why);
    return 2;
}

static int parse_int(const char *name, const char *v, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) {
        char why[80];
        snprintf(why, sizeof why, "expected an integer from %d to %d", lo, hi);
        return bad(name, v, why);
    }
    *out = (int)x;
    return 0;
}

/* A recipe option: parsed, then checked against the library's table of ranges (the one the
 * values recorded in a previous merge are checked against). */
static int parse_ranged(const char *name, const char *v, double *out, long long *iout)
{
    const nf_option_range *r = nf_option_range_find(name);
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
        if (iout)
            *iout = i;
    } else {
        x = strtod(v, &end);
    }
    if (!r || end == v || *end || errno || !nf_option_range_ok(r, x))
        return bad(name, v, why);
    *out = x;
    return 0;
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

static int parse_ranged_int(const char *name, const char *v, int *out)
{
    double x;
    long long i = 0;
    int rc = parse_ranged(name, v, &x, &i);
    if (!rc)
        *out = (int)i;
    return rc;
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
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_positional = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0) {
            c->help = 1;
            continue;
        }
        if (a[1] != '-') {
            fprintf(stderr, "nufilt: unknown option %s (options are long: --name)\n", a);
            return 2;
        }
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
        int negated = 0;
        const opt *p = NULL;
        for (size_t k = 0; k < sizeof opts / sizeof opts[0] && !p; k++)
            if (strcmp(opts[k].name, name) == 0)
                p = &opts[k];
        if (!p && strncmp(name, "no-", 3) == 0) {
            for (size_t k = 0; k < sizeof opts / sizeof opts[0] && !p; k++)
                if (strcmp(opts[k].name, name + 3) == 0 && !opts[k].arg)
                    p = &opts[k];
            negated = p != NULL;
            if (negated) /* dispatch below on the option's own name */
                memmove(name, name + 3, strlen(name + 3) + 1);
        }
        if (!p || !(p->cmds & cmd)) {
            fprintf(stderr, "nufilt: unknown option --%s for this command (see --help)\n", name);
            return 2;
        }
        if (p->arg && !val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "nufilt: --%s needs a value (%s)\n", name, p->arg);
                return 2;
            }
            val = argv[++i];
        } else if (!p->arg && val) {
            fprintf(stderr, "nufilt: --%s takes no value\n", name);
            return 2;
        }
        nf_options *o = &c->o;
        int rc = 0;
        if (!strcmp(name, "base")) c->base = val;
        else if (!strcmp(name, "task")) c->task = val;
        else if (!strcmp(name, "prev")) c->prev = val;
        else if (!strcmp(name, "out")) c->out = val;
        else if (!strcmp(name, "save-steps")) c->save_steps = val;
        else if (!strcmp(name, "method")) {
            o->method = nf_method_from_name(val);
            if (o->method < 0)
                rc = bad(name, val, "unknown method (see `nufilt methods`)");
        } else if (!strcmp(name, "null-rank")) rc = parse_ranged_int(name, val, &o->null_rank);
        else if (!strcmp(name, "task-rank")) rc = parse_ranged_int(name, val, &o->task_rank);
        else if (!strcmp(name, "lora-rank")) rc = parse_ranged_int(name, val, &o->lora_rank);
        else if (!strcmp(name, "lr")) rc = parse_ranged(name, val, &o->lr, NULL);
        else if (!strcmp(name, "iters")) rc = parse_ranged_int(name, val, &o->iters);
        else if (!strcmp(name, "seed")) {
            double x;
            long long sd = 0;
            rc = parse_ranged(name, val, &x, &sd);
            o->seed = sd;
        } else if (!strcmp(name, "compat")) {
            if (!strcmp(val, "paper")) o->compat = NF_COMPAT_PAPER;
            else if (!strcmp(val, "reference")) o->compat = NF_COMPAT_REFERENCE;
            else rc = bad(name, val, "expected paper or reference");
        } else if (!strcmp(name, "rank-tol")) rc = parse_ranged(name, val, &o->rank_tol, NULL);
        else if (!strcmp(name, "preset")) o->preset = val;
        else if (!strcmp(name, "layers")) o->layers = val;
        else if (!strcmp(name, "scale")) rc = parse_ranged(name, val, &o->scale, NULL);
        else if (!strcmp(name, "keep")) rc = parse_ranged(name, val, &o->keep, NULL);
        else if (!strcmp(name, "alpha")) rc = parse_ranged(name, val, &o->alpha, NULL);
        else if (!strcmp(name, "opcm-zero-diag")) o->opcm_zero_diag = !negated;
        else if (!strcmp(name, "dtype")) {
            if (!strcmp(val, "keep")) o->out_dtype = NF_DTYPE_INVALID;
            else if (!strcmp(val, "f32") || !strcmp(val, "F32")) o->out_dtype = NF_F32;
            else if (!strcmp(val, "f16") || !strcmp(val, "F16")) o->out_dtype = NF_F16;
            else if (!strcmp(val, "bf16") || !strcmp(val, "BF16")) o->out_dtype = NF_BF16;
            else rc = bad(name, val, "expected keep, f32, f16 or bf16");
        } else if (!strcmp(name, "out-shard-size")) {
            if (cli_parse_size(val, &o->out_shard_size) || o->out_shard_size == 0)
                rc = bad(name, val, "expected a size such as 2GB, 500MB or 1GiB");
        } else if (!strcmp(name, "max-memory")) {
            if (cli_parse_size(val, &o->max_memory) || o->max_memory == 0)
                rc = bad(name, val, "expected a size such as 500MB or 2GiB");
        } else if (!strcmp(name, "force")) o->force = !negated;
        else if (!strcmp(name, "resume")) o->resume = !negated;
        else if (!strcmp(name, "allow-nonfinite")) o->allow_nonfinite = !negated;
        else if (!strcmp(name, "device")) o->device = val;
        else if (!strcmp(name, "svd")) {
            if (!strcmp(val, "gesdd") || !strcmp(val, "exact")) o->svd = NF_SVD_GESDD;
            else if (!strcmp(val, "randomized")) o->svd = NF_SVD_RANDOMIZED;
            else if (!strcmp(val, "gram")) o->svd = NF_SVD_GRAM;
            else if (!strcmp(val, "fast")) o->svd = NF_SVD_FAST;
            else rc = bad(name, val, "expected fast, gram, gesdd (or exact) or randomized");
        } else if (!strcmp(name, "threads")) rc = parse_int(name, val, 1, 4096, &o->threads);
        else if (!strcmp(name, "report")) o->report_path = val;
        else if (!strcmp(name, "quiet")) c->quiet = !negated;
        else if (!strcmp(name, "progress")) c->progress = !negated;
        else if (!strcmp(name, "help")) c->help = 1;
        if (rc)
            return rc;
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

/* The library names options by their nf_options fields in backquotes (`null_rank`); the
 * program's messages name its flags (--null-rank). Other backquoted text stays as it is. */
void cli_flags(const char *in, char *out, size_t n)
{
    static const struct {
        const char *field, *flag;
    } special[] = {{"out_dtype", "dtype"}, {"report_path", "report"}};
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
            for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
                if (!strcmp(name, special[i].field))
                    flag = special[i].flag;
            for (size_t i = 0; i < len; i++)
                if (name[i] == '_')
                    name[i] = '-';
            for (size_t i = 0; !flag && i < sizeof opts / sizeof opts[0]; i++)
                if (!strcmp(name, opts[i].name))
                    flag = opts[i].name;
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
