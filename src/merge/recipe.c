/*
 * The merge recipe: defaults, the options a user set, and what the previous merged model's
 * metadata recorded, resolved into one nf_params; and the metadata that carries the recipe and
 * the method's state to the next step.
 */
#include "recipe.h"

#include <math.h>
#include <stddef.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/util.h"
#include "../io/json.h"
#include "select.h"

static void options_defaults(nf_options *o)
{
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->method = -1;
    o->null_rank = o->task_rank = o->lora_rank = -1;
    o->lr = NAN;
    o->iters = -1;
    o->seed = -1;
    o->compat = NF_COMPAT_UNSET;
    o->rank_tol = NAN;
    o->scale = o->keep = o->alpha = NAN;
    o->opcm_zero_diag = -1;
    o->out_dtype = NF_DTYPE_INVALID;
    o->svd = NF_SVD_FAST;
}

/* The caller's struct may be smaller (an older header) or larger (a newer one) than ours:
 * only its first struct_size bytes are written. The whole of it is zeroed first, padding
 * included, so that bytes an older caller's struct ends with read as 0, which is the default
 * of every field added after it. */
void nf_options_init_sized(nf_options *o, size_t struct_size)
{
    if (!o || struct_size < sizeof o->struct_size)
        return;
    nf_options d;
    options_defaults(&d);
    memset(o, 0, struct_size);
    memcpy(o, &d, struct_size < sizeof d ? struct_size : sizeof d);
    o->struct_size = struct_size;
}

int nf_options_import(const nf_options *in, nf_options *out, nf_error *err)
{
    options_defaults(out);
    if (!in)
        return NF_OK;
    size_t n = in->struct_size;
    if (n < offsetof(nf_options, method) + sizeof in->method)
        return nf_error_set(err, NF_E_ARG,
                            "nf_options.struct_size is %zu, smaller than any nf_options (was it "
                            "set with nf_options_init?)",
                            n);
    if (n > sizeof *out) {
        const unsigned char *extra = (const unsigned char *)in + sizeof *out;
        for (size_t i = 0; i < n - sizeof *out; i++)
            if (extra[i])
                return nf_error_set(err, NF_E_UNSUPPORTED,
                                    "nf_options: the caller sets fields this library (%s, %zu "
                                    "bytes of options) does not know (struct_size %zu)",
                                    NF_VERSION_STRING, sizeof *out, n);
        n = sizeof *out;
    }
    memcpy(out, in, n);
    out->struct_size = sizeof *out;
    return NF_OK;
}

/* ---- defaults ---- */

static void defaults(int method, nf_params *p)
{
    memset(p, 0, sizeof *p);
    p->method = method;
    p->null_rank = 128;
    p->task_rank = 8;
    p->lora_rank = 64;
    p->lr = method == NF_METHOD_WUDI ? 1e-5 : 1e-3;
    p->iters = 50;
    p->seed = 0;
    p->compat = NF_COMPAT_PAPER;
    p->rank_tol = 1e-6;
    p->keep = 0.2;
    p->alpha = 0.5;
    p->opcm_zero_diag = 0;
    switch (method) {
    case NF_METHOD_TA:
    case NF_METHOD_TIES: p->scale = 0.3; break;
    case NF_METHOD_MAGMAX: p->scale = 0.5; break;
    default: p->scale = 1.0; break;
    }
}

/* ---- the ranges of the numeric options ---- */

#define M(id) (1u << NF_METHOD_##id)
/* The largest |--scale| taken: every published lambda of these methods is at most a few; the
 * bound keeps a recorded value from scaling the task vectors to infinity. Adam's step is lr
 * per element and iteration, so --lr above 1 moves weights by whole units per step. */
static const nf_option_range ranges[] = {
    {"null-rank", "null_rank", 1, 0, 65536, 0, 0, M(NUFILT)},
    {"task-rank", "task_rank", 1, 0, 65536, 0, 0, M(NUFILT)},
    {"lora-rank", "lora_rank", 1, 0, 65536, 0, 0, M(NUFILT)},
    {"lr", "lr", 0, 0, 1, 0, 0, M(NUFILT) | M(WUDI)},
    {"iters", "iters", 1, 0, 1000000, 0, 0, M(NUFILT) | M(WUDI)},
    {"seed", "seed", 1, 0, 9223372036854775807.0, 0, 0, M(NUFILT)},
    {"rank-tol", "rank_tol", 0, 0, 1, 0, 1, M(NUFILT)},
    {"scale", "scale", 0, -100, 100, 0, 0, M(TA) | M(TIES) | M(MAGMAX) | M(ISOC) | M(TSVM)},
    {"keep", "keep", 0, 0, 1, 1, 0, M(TIES)},
    {"alpha", "alpha", 0, 0, 1, 0, 0, M(OPCM)},
};
#undef M

/* The recipe bit of each row, in the table's order. */
static const unsigned range_bits[] = {
    NF_P_NULL_RANK, NF_P_TASK_RANK, NF_P_LORA_RANK, NF_P_LR,    NF_P_ITERS,
    NF_P_SEED,      NF_P_RANK_TOL,  NF_P_SCALE,     NF_P_KEEP, NF_P_ALPHA,
};
#define NRANGES (sizeof ranges / sizeof ranges[0])
_Static_assert(sizeof range_bits / sizeof range_bits[0] == NRANGES, "one bit per range");

const nf_option_range *nf_option_ranges(size_t *count)
{
    if (count)
        *count = NRANGES;
    return ranges;
}

const nf_option_range *nf_option_range_find(const char *name)
{
    for (size_t i = 0; name && i < NRANGES; i++)
        if (strcmp(ranges[i].option, name) == 0 || strcmp(ranges[i].key, name) == 0)
            return &ranges[i];
    return NULL;
}

int nf_option_range_ok(const nf_option_range *r, double v)
{
    if (!r || !isfinite(v) || (r->integer && v != floor(v)))
        return 0;
    if (r->min_open ? !(v > r->min) : !(v >= r->min))
        return 0;
    return r->max_open ? v < r->max : v <= r->max;
}

void nf_option_range_describe(const nf_option_range *r, char *buf, size_t n)
{
    if (!r || !n)
        return;
    if (r->integer && r->max >= 9.2e18)
        snprintf(buf, n, "an integer from %.0f to 2^63-1", r->min);
    else if (r->integer)
        snprintf(buf, n, "an integer from %.0f to %.0f", r->min, r->max);
    else
        snprintf(buf, n, "a number in %c%g, %g%c", r->min_open ? '(' : '[', r->min, r->max,
                 r->max_open ? ')' : ']');
}

/* ---- the recipe as JSON (only the fields the method reads) ---- */

static const char *compat_name(int c) { return c == NF_COMPAT_REFERENCE ? "reference" : "paper"; }

char *nf_params_json(const nf_params *p)
{
    const nf_method_ops *m = nf_method_ops_get(p->method);
    unsigned f = m->params;
    nf_sb sb = {0};
    nf_sb_puts(&sb, "{");
    const char *sep = "";
#define FIELD(bit, fmt, ...)                                   \
    if (f & (bit)) {                                           \
        nf_sb_printf(&sb, "%s" fmt, sep, __VA_ARGS__);         \
        sep = ",";                                             \
    }
    FIELD(NF_P_NULL_RANK, "\"null_rank\":%d", p->null_rank)
    FIELD(NF_P_TASK_RANK, "\"task_rank\":%d", p->task_rank)
    FIELD(NF_P_LORA_RANK, "\"lora_rank\":%d", p->lora_rank)
    FIELD(NF_P_LR, "\"lr\":%.17g", p->lr)
    FIELD(NF_P_ITERS, "\"iters\":%d", p->iters)
    FIELD(NF_P_SEED, "\"seed\":%llu", (unsigned long long)p->seed)
    FIELD(NF_P_COMPAT, "\"compat\":\"%s\"", compat_name(p->compat))
    FIELD(NF_P_RANK_TOL, "\"rank_tol\":%.17g", p->rank_tol)
    FIELD(NF_P_SCALE, "\"scale\":%.17g", p->scale)
    FIELD(NF_P_KEEP, "\"keep\":%.17g", p->keep)
    FIELD(NF_P_ALPHA, "\"alpha\":%.17g", p->alpha)
    FIELD(NF_P_ZERO_DIAG, "\"opcm_zero_diag\":%s", p->opcm_zero_diag ? "true" : "false")
#undef FIELD
    if (f & NF_P_SELECT) {
        nf_sb_printf(&sb, "%s", sep);
        if (p->layers) {
            nf_sb_puts(&sb, "\"layers\":");
            nf_sb_json_str(&sb, p->layers, strlen(p->layers));
        } else {
            nf_sb_printf(&sb, "\"preset\":\"%s\"", p->preset);
        }
    }
    nf_sb_puts(&sb, "}");
    if (sb.oom) {
        nf_sb_free(&sb);
        return NULL;
    }
    return sb.s;
}

char *nf_state_json(const nf_state *s)
{
    nf_sb sb = {0};
    nf_sb_puts(&sb, "{\"lambda\":");
    nf_sb_json_num(&sb, s->lambda);
    nf_sb_puts(&sb, ",\"norm_sum\":");
    nf_sb_json_num(&sb, s->norm_sum);
    nf_sb_puts(&sb, ",\"norm_count\":");
    nf_sb_json_num(&sb, s->norm_count);
    nf_sb_puts(&sb, "}");
    if (sb.oom) {
        nf_sb_free(&sb);
        return NULL;
    }
    return sb.s;
}

/* ---- reading what the previous merged model recorded ---- */

typedef struct recorded {
    int method, step;
    nf_params p;
    unsigned have;      /* NF_P_* bits present */
    char *preset, *layers;
    nf_state state;
} recorded;

/* A recorded count: a canonical decimal integer, no sign, spaces or leading zeros. */
static int canonical_count(const char *s, long lo, long hi, long *out)
{
    if (!s || s[0] < '0' || s[0] > '9' || (s[0] == '0' && s[1]))
        return 0;
    long v = 0;
    for (const char *c = s; *c; c++) {
        if (*c < '0' || *c > '9' || v > hi)
            return 0;
        v = v * 10 + (*c - '0');
    }
    if (v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

/* The recorded task list (nufilt.tasks): a JSON array of {"name": string[, "path": string]},
 * one entry per step so far. */
/* A task's recorded fingerprint: a string of 16 lower-case hex digits. */
static int is_hex16(const nf_json *v)
{
    if (v->type != NF_JSON_STRING || v->len != 16)
        return 0;
    for (size_t i = 0; i < 16; i++)
        if (!((v->str[i] >= '0' && v->str[i] <= '9') || (v->str[i] >= 'a' && v->str[i] <= 'f')))
            return 0;
    return 1;
}

static int check_tasks(const char *path, const char *tasks, int step, nf_error *err)
{
    if (!tasks)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata lacks nufilt.tasks (the list of the tasks merged so far)",
                            path);
    nf_json *j = nf_json_parse(tasks, strlen(tasks), NULL, 0);
    int rc = NF_OK;
    if (!j || j->type != NF_JSON_ARRAY) {
        rc = nf_error_set(err, NF_E_STATE, "%s: metadata nufilt.tasks is not a JSON array", path);
        goto out;
    }
    for (size_t i = 0; i < j->n; i++) {
        const nf_json *e = &j->items[i];
        const nf_json *nm = nf_json_get(e, "name"), *pt = nf_json_get(e, "path");
        const nf_json *fp = nf_json_get(e, "fingerprint");
        size_t keys = e->type == NF_JSON_OBJECT ? e->n : 0;
        if (e->type != NF_JSON_OBJECT || !nm || nm->type != NF_JSON_STRING ||
            (pt && pt->type != NF_JSON_STRING) || (fp && !is_hex16(fp)) ||
            keys != 1u + (pt != NULL) + (fp != NULL)) {
            rc = nf_error_set(err, NF_E_STATE,
                              "%s: metadata nufilt.tasks entry %zu is not an object of a "
                              "\"name\" string, an optional \"path\" string and an optional "
                              "\"fingerprint\" (16 lower-case hex digits)",
                              path, i + 1);
            goto out;
        }
    }
    if (j->n != (size_t)step)
        rc = nf_error_set(err, NF_E_STATE,
                          "%s: metadata nufilt.step is %d but nufilt.tasks lists %zu task%s",
                          path, step, j->n, j->n == 1 ? "" : "s");
out:
    nf_json_free(j);
    return rc;
}

static int read_recorded(const nf_model *prev, recorded *r, nf_error *err)
{
    const char *path = prev->path;
    memset(r, 0, sizeof *r);
    const char *meth = nf_model_metadata_get(prev, "nufilt.method");
    const char *step = nf_model_metadata_get(prev, "nufilt.step");
    const char *params = nf_model_metadata_get(prev, "nufilt.params");
    const char *state = nf_model_metadata_get(prev, "nufilt.state");
    const char *tasks = nf_model_metadata_get(prev, "nufilt.tasks");
    if (!meth || !step || !params)
        return nf_error_set(err, NF_E_STATE,
                            "%s: no nufilt merge state in its metadata (is it a model merged by "
                            "nufilt? the first step takes no `prev`)",
                            path);
    r->method = nf_method_from_name(meth);
    if (r->method < 0)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.method names an unknown method \"%.40s\"", path,
                            meth);
    long st;
    if (!canonical_count(step, 1, 1000000, &st))
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.step has a bad step count \"%.40s\" (a decimal "
                            "integer from 1 to 1000000, no sign, spaces or leading zeros)",
                            path, step);
    r->step = (int)st;
    int rc = check_tasks(path, tasks, r->step, err);
    if (rc)
        return rc;
    nf_json *j = nf_json_parse(params, strlen(params), NULL, 0);
    if (!j || j->type != NF_JSON_OBJECT) {
        nf_json_free(j);
        return nf_error_set(err, NF_E_STATE, "%s: metadata nufilt.params is not a JSON object",
                            path);
    }
    for (size_t i = 0; i < j->n && rc == NF_OK; i++) {
        const char *key = j->items[i].key;
        const nf_json *v = &j->items[i];
        const nf_option_range *rg = nf_option_range_find(key);
        if (rg && strcmp(rg->key, key) == 0) {
            unsigned bit = range_bits[rg - ranges];
            char want[64];
            nf_option_range_describe(rg, want, sizeof want);
            if (v->type != NF_JSON_NUMBER || (rg->integer && !v->is_int) ||
                !nf_option_range_ok(rg, v->num) || (rg->integer && v->ival < 0)) {
                if (v->type == NF_JSON_NUMBER)
                    rc = nf_error_set(err, NF_E_STATE,
                                      "%s: metadata nufilt.params records %s = %g, which is "
                                      "out of range (%s, as `%s`)",
                                      path, key, v->num, want, rg->key);
                else
                    rc = nf_error_set(err, NF_E_STATE,
                                      "%s: metadata nufilt.params records %s as something other "
                                      "than a number (%s, as `%s`)",
                                      path, key, want, rg->key);
                break;
            }
            r->have |= bit;
            switch (bit) {
            case NF_P_NULL_RANK: r->p.null_rank = (int)v->ival; break;
            case NF_P_TASK_RANK: r->p.task_rank = (int)v->ival; break;
            case NF_P_LORA_RANK: r->p.lora_rank = (int)v->ival; break;
            case NF_P_LR: r->p.lr = v->num; break;
            case NF_P_ITERS: r->p.iters = (int)v->ival; break;
            case NF_P_SEED: r->p.seed = (uint64_t)v->ival; break;
            case NF_P_RANK_TOL: r->p.rank_tol = v->num; break;
            case NF_P_SCALE: r->p.scale = v->num; break;
            case NF_P_KEEP: r->p.keep = v->num; break;
            case NF_P_ALPHA: r->p.alpha = v->num; break;
            }
        } else if (strcmp(key, "compat") == 0) {
            if (v->type != NF_JSON_STRING ||
                (strcmp(v->str, "paper") != 0 && strcmp(v->str, "reference") != 0)) {
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.params records compat as %s%.40s%s "
                                  "(\"paper\" or \"reference\")",
                                  path, v->type == NF_JSON_STRING ? "\"" : "",
                                  v->type == NF_JSON_STRING ? v->str : "something not a string",
                                  v->type == NF_JSON_STRING ? "\"" : "");
                break;
            }
            r->have |= NF_P_COMPAT;
            r->p.compat = strcmp(v->str, "reference") == 0 ? NF_COMPAT_REFERENCE
                                                           : NF_COMPAT_PAPER;
        } else if (strcmp(key, "opcm_zero_diag") == 0) {
            if (v->type != NF_JSON_BOOL) {
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.params records opcm_zero_diag as "
                                  "something other than true or false",
                                  path);
                break;
            }
            r->have |= NF_P_ZERO_DIAG;
            r->p.opcm_zero_diag = v->boolean;
        } else if (strcmp(key, "preset") == 0) {
            static const char *const known[] = {"clip", "t5", "llama", "all-linear", NULL};
            int k = 0;
            while (v->type == NF_JSON_STRING && known[k] && strcmp(known[k], v->str) != 0)
                k++;
            if (v->type != NF_JSON_STRING || !known[k] || (r->have & NF_P_SELECT)) {
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.params records %s preset%s%.40s%s "
                                  "(clip, t5, llama or all-linear, and no layers beside it)",
                                  path, r->have & NF_P_SELECT ? "both layers and a" : "an unknown",
                                  v->type == NF_JSON_STRING ? " \"" : "",
                                  v->type == NF_JSON_STRING ? v->str : "",
                                  v->type == NF_JSON_STRING ? "\"" : "");
                break;
            }
            r->have |= NF_P_SELECT;
            r->preset = nf_strdup(v->str);
        } else if (strcmp(key, "layers") == 0) {
            char why[160];
            if (r->have & NF_P_SELECT) {
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.params records both a preset and layers",
                                  path);
                break;
            }
            if (v->type != NF_JSON_STRING || strlen(v->str) != v->len) {
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.params records layers as something other "
                                  "than one regular expression without U+0000",
                                  path);
                break;
            }
            if (nf_regex_check(v->str, why, sizeof why)) {
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.params records a `layers` expression "
                                  "\"%.80s\" that is not accepted: %s",
                                  path, v->str, why);
                break;
            }
            regex_t re;
            if (regcomp(&re, v->str, REG_EXTENDED | REG_NOSUB) != 0) {
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.params records a bad `layers` expression "
                                  "\"%.80s\"",
                                  path, v->str);
                break;
            }
            regfree(&re);
            r->have |= NF_P_SELECT;
            r->layers = nf_strdup(v->str);
        } else {
            rc = nf_error_set(err, NF_E_STATE,
                              "%s: metadata nufilt.params records an unknown key \"%.40s\"", path,
                              key);
        }
    }
    if (rc == NF_OK && ((r->preset == NULL && (r->have & NF_P_SELECT) && !r->layers)))
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
    if (rc == NF_OK && state) {
        nf_json *s = nf_json_parse(state, strlen(state), NULL, 0);
        if (!s || s->type != NF_JSON_OBJECT) {
            nf_json_free(s);
            rc = nf_error_set(err, NF_E_STATE, "%s: metadata nufilt.state is not a JSON object",
                              path);
            goto out;
        }
        for (size_t i = 0; i < s->n && rc == NF_OK; i++) {
            const char *key = s->items[i].key;
            const nf_json *v = &s->items[i];
            double *dst = strcmp(key, "lambda") == 0      ? &r->state.lambda
                          : strcmp(key, "norm_sum") == 0   ? &r->state.norm_sum
                          : strcmp(key, "norm_count") == 0 ? &r->state.norm_count
                                                           : NULL;
            if (!dst)
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.state records an unknown key \"%.40s\"",
                                  path, key);
            else if (v->type != NF_JSON_NUMBER || !isfinite(v->num) || v->num < 0 ||
                     v->num > 1e300)
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s: metadata nufilt.state records %s as something other than "
                                  "a finite non-negative number",
                                  path, key);
            else
                *dst = v->num;
        }
        nf_json_free(s);
    }
out:
    nf_json_free(j);
    return rc;
}

/* ---- resolution ---- */

static const char *opt_name(unsigned bit)
{
    switch (bit) {
    case NF_P_NULL_RANK: return "`null_rank`";
    case NF_P_TASK_RANK: return "`task_rank`";
    case NF_P_LORA_RANK: return "`lora_rank`";
    case NF_P_LR: return "`lr`";
    case NF_P_ITERS: return "`iters`";
    case NF_P_SEED: return "`seed`";
    case NF_P_COMPAT: return "`compat`";
    case NF_P_RANK_TOL: return "`rank_tol`";
    case NF_P_SELECT: return "`preset`/`layers`";
    case NF_P_SCALE: return "`scale`";
    case NF_P_KEEP: return "`keep`";
    case NF_P_ALPHA: return "`alpha`";
    case NF_P_ZERO_DIAG: return "`opcm_zero_diag`";
    }
    return "?";
}

static unsigned options_set(const nf_options *o)
{
    unsigned s = 0;
    if (o->null_rank >= 0) s |= NF_P_NULL_RANK;
    if (o->task_rank >= 0) s |= NF_P_TASK_RANK;
    if (o->lora_rank >= 0) s |= NF_P_LORA_RANK;
    if (!isnan(o->lr)) s |= NF_P_LR;
    if (o->iters >= 0) s |= NF_P_ITERS;
    if (o->seed >= 0) s |= NF_P_SEED;
    if (o->compat != NF_COMPAT_UNSET) s |= NF_P_COMPAT;
    if (!isnan(o->rank_tol)) s |= NF_P_RANK_TOL;
    if (o->preset || o->layers) s |= NF_P_SELECT;
    if (!isnan(o->scale)) s |= NF_P_SCALE;
    if (!isnan(o->keep)) s |= NF_P_KEEP;
    if (!isnan(o->alpha)) s |= NF_P_ALPHA;
    if (o->opcm_zero_diag >= 0) s |= NF_P_ZERO_DIAG;
    return s;
}

static void fmt_value(unsigned bit, const nf_params *p, char *buf, size_t n)
{
    switch (bit) {
    case NF_P_NULL_RANK: snprintf(buf, n, "%d", p->null_rank); break;
    case NF_P_TASK_RANK: snprintf(buf, n, "%d", p->task_rank); break;
    case NF_P_LORA_RANK: snprintf(buf, n, "%d", p->lora_rank); break;
    case NF_P_LR: snprintf(buf, n, "%g", p->lr); break;
    case NF_P_ITERS: snprintf(buf, n, "%d", p->iters); break;
    case NF_P_SEED: snprintf(buf, n, "%llu", (unsigned long long)p->seed); break;
    case NF_P_COMPAT: snprintf(buf, n, "%s", compat_name(p->compat)); break;
    case NF_P_RANK_TOL: snprintf(buf, n, "%g", p->rank_tol); break;
    case NF_P_SCALE: snprintf(buf, n, "%g", p->scale); break;
    case NF_P_KEEP: snprintf(buf, n, "%g", p->keep); break;
    case NF_P_ALPHA: snprintf(buf, n, "%g", p->alpha); break;
    case NF_P_ZERO_DIAG: snprintf(buf, n, "%s", p->opcm_zero_diag ? "on" : "off"); break;
    case NF_P_SELECT:
        snprintf(buf, n, "%s%s", p->layers ? "`layers` " : "`preset` ",
                 p->layers ? p->layers : p->preset);
        break;
    default: buf[0] = '\0';
    }
}

static int same(unsigned bit, const nf_params *a, const nf_params *b)
{
    switch (bit) {
    case NF_P_NULL_RANK: return a->null_rank == b->null_rank;
    case NF_P_TASK_RANK: return a->task_rank == b->task_rank;
    case NF_P_LORA_RANK: return a->lora_rank == b->lora_rank;
    case NF_P_LR: return a->lr == b->lr;
    case NF_P_ITERS: return a->iters == b->iters;
    case NF_P_SEED: return a->seed == b->seed;
    case NF_P_COMPAT: return a->compat == b->compat;
    case NF_P_RANK_TOL: return a->rank_tol == b->rank_tol;
    case NF_P_SCALE: return a->scale == b->scale;
    case NF_P_KEEP: return a->keep == b->keep;
    case NF_P_ALPHA: return a->alpha == b->alpha;
    case NF_P_ZERO_DIAG: return a->opcm_zero_diag == b->opcm_zero_diag;
    case NF_P_SELECT:
        if (!!a->layers != !!b->layers)
            return 0;
        return a->layers ? strcmp(a->layers, b->layers) == 0 : strcmp(a->preset, b->preset) == 0;
    }
    return 1;
}

static void take(unsigned bit, nf_params *dst, const nf_options *o)
{
    switch (bit) {
    case NF_P_NULL_RANK: dst->null_rank = o->null_rank; break;
    case NF_P_TASK_RANK: dst->task_rank = o->task_rank; break;
    case NF_P_LORA_RANK: dst->lora_rank = o->lora_rank; break;
    case NF_P_LR: dst->lr = o->lr; break;
    case NF_P_ITERS: dst->iters = o->iters; break;
    case NF_P_SEED: dst->seed = (uint64_t)o->seed; break;
    case NF_P_COMPAT: dst->compat = o->compat; break;
    case NF_P_RANK_TOL: dst->rank_tol = o->rank_tol; break;
    case NF_P_SCALE: dst->scale = o->scale; break;
    case NF_P_KEEP: dst->keep = o->keep; break;
    case NF_P_ALPHA: dst->alpha = o->alpha; break;
    case NF_P_ZERO_DIAG: dst->opcm_zero_diag = o->opcm_zero_diag; break;
    }
}

static double param_value(unsigned bit, const nf_params *p)
{
    switch (bit) {
    case NF_P_NULL_RANK: return p->null_rank;
    case NF_P_TASK_RANK: return p->task_rank;
    case NF_P_LORA_RANK: return p->lora_rank;
    case NF_P_LR: return p->lr;
    case NF_P_ITERS: return p->iters;
    case NF_P_SEED: return (double)p->seed;
    case NF_P_RANK_TOL: return p->rank_tol;
    case NF_P_SCALE: return p->scale;
    case NF_P_KEEP: return p->keep;
    case NF_P_ALPHA: return p->alpha;
    }
    return 0;
}

/* The options the method reads, against the one table of ranges. */
static int check_ranges(const nf_params *p, unsigned used, nf_error *err)
{
    for (size_t i = 0; i < NRANGES; i++) {
        if (!(used & range_bits[i]))
            continue;
        double v = param_value(range_bits[i], p);
        if (!nf_option_range_ok(&ranges[i], v)) {
            char want[64];
            nf_option_range_describe(&ranges[i], want, sizeof want);
            return nf_error_set(err, NF_E_ARG, "`%s` %g: expected %s", ranges[i].key, v, want);
        }
    }
    if (p->method == NF_METHOD_MAGMAX && p->scale == 0)
        return nf_error_set(err, NF_E_ARG,
                            "`scale` 0 is not allowed with `method` magmax (the merged task "
                            "vector is divided by it)");
    return NF_OK;
}

int nf_recipe_resolve(const nf_options *o, const nf_model *base, const nf_model *prev,
                      nf_params *out, int *step, nf_state *prev_state, nf_error *err)
{
    recorded rec;
    memset(&rec, 0, sizeof rec);
    int rc = NF_OK;
    int method = o->method >= 0 ? o->method : NF_METHOD_NUFILT;
    if (prev) {
        if ((rc = read_recorded(prev, &rec, err)))
            goto out;
        if (o->method >= 0 && o->method != rec.method) {
            rc = nf_error_set(err, NF_E_STATE,
                              "%s was merged with `method` %s; this step asks for `method` %s "
                              "(a stream keeps one method)",
                              prev->path, nf_method_get(rec.method)->name,
                              nf_method_get(o->method)->name);
            goto out;
        }
        method = rec.method;
        rec.p.method = method;
    }
    const nf_method_ops *m = nf_method_ops_get(method);
    if (!m || !m->tensor) {
        rc = nf_error_set(err, NF_E_UNSUPPORTED, "`method` %s is not available in this build",
                          m ? m->info.name : "?");
        goto out;
    }
    unsigned set = options_set(o);
    unsigned extra = set & ~m->params;
    if (extra) {
        unsigned bit = extra & -extra;
        rc = nf_error_set(err, NF_E_ARG, "%s does not apply to `method` %s", opt_name(bit),
                          m->info.name);
        goto out;
    }
    nf_params p;
    defaults(method, &p);
    nf_params want = p;
    for (unsigned bit = 1; bit <= NF_P_ZERO_DIAG; bit <<= 1)
        if (set & bit)
            take(bit, &want, o);
    /* the selection as the user asked for it, resolved on the base */
    if (m->params & NF_P_SELECT) {
        if (o->layers) {
            want.layers = (char *)o->layers;
        } else {
            const char *res;
            if ((rc = nf_preset_resolve(base, o->preset, &res, err)))
                goto out;
            snprintf(want.preset, sizeof want.preset, "%s", res);
        }
    }
    if (prev) {
        nf_params got = p;
        got.layers = rec.layers;
        if (rec.preset)
            snprintf(got.preset, sizeof got.preset, "%s", rec.preset);
        for (unsigned bit = 1; bit <= NF_P_ZERO_DIAG; bit <<= 1) {
            if (!(m->params & bit))
                continue;
            if (!(rec.have & bit)) {
                rc = nf_error_set(err, NF_E_STATE, "%s: metadata lacks %s of the recipe",
                                  prev->path, opt_name(bit));
                goto out;
            }
            switch (bit) {
            case NF_P_NULL_RANK: got.null_rank = rec.p.null_rank; break;
            case NF_P_TASK_RANK: got.task_rank = rec.p.task_rank; break;
            case NF_P_LORA_RANK: got.lora_rank = rec.p.lora_rank; break;
            case NF_P_LR: got.lr = rec.p.lr; break;
            case NF_P_ITERS: got.iters = rec.p.iters; break;
            case NF_P_SEED: got.seed = rec.p.seed; break;
            case NF_P_COMPAT: got.compat = rec.p.compat; break;
            case NF_P_RANK_TOL: got.rank_tol = rec.p.rank_tol; break;
            case NF_P_SCALE: got.scale = rec.p.scale; break;
            case NF_P_KEEP: got.keep = rec.p.keep; break;
            case NF_P_ALPHA: got.alpha = rec.p.alpha; break;
            case NF_P_ZERO_DIAG: got.opcm_zero_diag = rec.p.opcm_zero_diag; break;
            }
            if ((set & bit) && !same(bit, &want, &got)) {
                char a[160], b[160];
                fmt_value(bit, &want, a, sizeof a);
                fmt_value(bit, &got, b, sizeof b);
                rc = nf_error_set(err, NF_E_STATE,
                                  "%s %s conflicts with %s recorded in %s (a stream keeps one "
                                  "recipe; leave the option out to continue it)",
                                  opt_name(bit), a, b, prev->path);
                goto out;
            }
        }
        p = got;
        *step = rec.step + 1;
        *prev_state = rec.state;
    } else {
        p = want;
        *step = 1;
        memset(prev_state, 0, sizeof *prev_state);
    }
    p.method = method;
    if ((rc = check_ranges(&p, m->params, err)))
        goto out;
    if (p.layers) {
        p.layers = nf_strdup(p.layers);
        if (!p.layers) {
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            goto out;
        }
    }
    *out = p;
out:
    free(rec.preset);
    free(rec.layers);
    return rc;
}

void nf_params_free(nf_params *p)
{
    free(p->layers);
    p->layers = NULL;
}
