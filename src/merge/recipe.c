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

/* ---- the methods ---- */

extern const nf_method_ops nf_method_nufilt;
#define NF_BASELINE(name) extern const nf_method_ops nf_method_##name;
NF_BASELINE(wa)
NF_BASELINE(ta)
NF_BASELINE(ties)
NF_BASELINE(magmax)
NF_BASELINE(opcm)
NF_BASELINE(wudi)
NF_BASELINE(isoc)
NF_BASELINE(tsvm)

static const nf_method_ops *const methods[NF_METHOD_COUNT] = {
    [NF_METHOD_NUFILT] = &nf_method_nufilt, [NF_METHOD_WA] = &nf_method_wa,
    [NF_METHOD_TA] = &nf_method_ta,         [NF_METHOD_TIES] = &nf_method_ties,
    [NF_METHOD_MAGMAX] = &nf_method_magmax, [NF_METHOD_OPCM] = &nf_method_opcm,
    [NF_METHOD_WUDI] = &nf_method_wudi,     [NF_METHOD_ISOC] = &nf_method_isoc,
    [NF_METHOD_TSVM] = &nf_method_tsvm,
};

const nf_method_ops *nf_method_ops_get(int id)
{
    return id >= 0 && id < NF_METHOD_COUNT ? methods[id] : NULL;
}

const nf_method_info *nf_method_get(int id)
{
    const nf_method_ops *m = nf_method_ops_get(id);
    return m ? &m->info : NULL;
}

int nf_method_from_name(const char *name)
{
    for (int i = 0; i < NF_METHOD_COUNT; i++)
        if (strcmp(methods[i]->info.name, name) == 0)
            return i;
    return -1;
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

static int num_field(const nf_json *o, const char *key, double *out)
{
    const nf_json *v = nf_json_get(o, key);
    if (!v)
        return 0;
    if (v->type != NF_JSON_NUMBER)
        return -1;
    *out = v->num;
    return 1;
}

/* A recorded number the recipe may hold: a previous merged model is a file from anywhere, and
 * an int conversion of a number out of range is undefined behaviour. */
static int recorded_ok(unsigned bit, double v)
{
    switch (bit) {
    case NF_P_NULL_RANK:
    case NF_P_TASK_RANK:
    case NF_P_LORA_RANK: return v >= 0 && v <= 65536 && v == floor(v);
    case NF_P_ITERS: return v >= 0 && v <= 1000000 && v == floor(v);
    case NF_P_SEED: return v >= 0 && v < 18446744073709551616.0 && v == floor(v);
    case NF_P_LR: return v >= 0 && isfinite(v);
    case NF_P_RANK_TOL: return v >= 0 && v < 1;
    case NF_P_SCALE: return isfinite(v);
    case NF_P_KEEP: return v > 0 && v <= 1;
    case NF_P_ALPHA: return v >= 0 && v <= 1;
    }
    return 1;
}

static int read_recorded(const nf_model *prev, recorded *r, nf_error *err)
{
    const char *path = prev->path;
    memset(r, 0, sizeof *r);
    const char *meth = nf_model_metadata_get(prev, "nufilt.method");
    const char *step = nf_model_metadata_get(prev, "nufilt.step");
    const char *params = nf_model_metadata_get(prev, "nufilt.params");
    const char *state = nf_model_metadata_get(prev, "nufilt.state");
    if (!meth || !step || !params)
        return nf_error_set(err, NF_E_STATE,
                            "%s: no nufilt merge state in its metadata (is it a model merged by "
                            "nufilt? the first step takes no `prev`)",
                            path);
    r->method = nf_method_from_name(meth);
    if (r->method < 0)
        return nf_error_set(err, NF_E_STATE, "%s: metadata names an unknown method \"%.40s\"",
                            path, meth);
    char *end;
    long st = strtol(step, &end, 10);
    if (*end || st < 1 || st > 1000000)
        return nf_error_set(err, NF_E_STATE, "%s: metadata has a bad step count \"%.40s\"", path,
                            step);
    r->step = (int)st;
    char jerr[200];
    nf_json *j = nf_json_parse(params, strlen(params), jerr, sizeof jerr);
    if (!j || j->type != NF_JSON_OBJECT) {
        nf_json_free(j);
        return nf_error_set(err, NF_E_STATE, "%s: metadata nufilt.params is not a JSON object",
                            path);
    }
    int rc = NF_OK;
    double v;
    struct {
        const char *key;
        unsigned bit;
    } nums[] = {{"null_rank", NF_P_NULL_RANK}, {"task_rank", NF_P_TASK_RANK},
                {"lora_rank", NF_P_LORA_RANK}, {"lr", NF_P_LR},
                {"iters", NF_P_ITERS},         {"seed", NF_P_SEED},
                {"rank_tol", NF_P_RANK_TOL},   {"scale", NF_P_SCALE},
                {"keep", NF_P_KEEP},           {"alpha", NF_P_ALPHA}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        int got = num_field(j, nums[i].key, &v);
        if (got < 0) {
            rc = nf_error_set(err, NF_E_STATE, "%s: metadata field %s is not a number", path,
                              nums[i].key);
            goto out;
        }
        if (!got)
            continue;
        if (!recorded_ok(nums[i].bit, v)) {
            rc = nf_error_set(err, NF_E_STATE,
                              "%s: metadata nufilt.params records %s = %g, which is out of range",
                              path, nums[i].key, v);
            goto out;
        }
        r->have |= nums[i].bit;
        switch (nums[i].bit) {
        case NF_P_NULL_RANK: r->p.null_rank = (int)v; break;
        case NF_P_TASK_RANK: r->p.task_rank = (int)v; break;
        case NF_P_LORA_RANK: r->p.lora_rank = (int)v; break;
        case NF_P_LR: r->p.lr = v; break;
        case NF_P_ITERS: r->p.iters = (int)v; break;
        case NF_P_SEED: {
            const nf_json *sv = nf_json_get(j, "seed");
            r->p.seed = sv->is_int ? (uint64_t)sv->ival : (uint64_t)v;
            break;
        }
        case NF_P_RANK_TOL: r->p.rank_tol = v; break;
        case NF_P_SCALE: r->p.scale = v; break;
        case NF_P_KEEP: r->p.keep = v; break;
        case NF_P_ALPHA: r->p.alpha = v; break;
        }
    }
    const nf_json *c = nf_json_get(j, "compat");
    if (c) {
        r->have |= NF_P_COMPAT;
        r->p.compat = c->type == NF_JSON_STRING && strcmp(c->str, "reference") == 0
                          ? NF_COMPAT_REFERENCE
                          : NF_COMPAT_PAPER;
    }
    const nf_json *z = nf_json_get(j, "opcm_zero_diag");
    if (z) {
        r->have |= NF_P_ZERO_DIAG;
        r->p.opcm_zero_diag = z->type == NF_JSON_BOOL && z->boolean;
    }
    const nf_json *ps = nf_json_get(j, "preset"), *ly = nf_json_get(j, "layers");
    if (ps && ps->type == NF_JSON_STRING) {
        static const char *const known[] = {"clip", "t5", "llama", "all-linear", NULL};
        int k = 0;
        while (known[k] && strcmp(known[k], ps->str) != 0)
            k++;
        if (!known[k]) {
            rc = nf_error_set(err, NF_E_STATE,
                              "%s: metadata nufilt.params records an unknown preset \"%.40s\"",
                              path, ps->str);
            goto out;
        }
        r->have |= NF_P_SELECT;
        r->preset = nf_strdup(ps->str);
    } else if (ly && ly->type == NF_JSON_STRING) {
        regex_t re;
        if (regcomp(&re, ly->str, REG_EXTENDED | REG_NOSUB) != 0) {
            rc = nf_error_set(err, NF_E_STATE,
                              "%s: metadata nufilt.params records a bad `layers` expression "
                              "\"%.80s\"",
                              path, ly->str);
            goto out;
        }
        regfree(&re);
        r->have |= NF_P_SELECT;
        r->layers = nf_strdup(ly->str);
    }
    if (state) {
        nf_json *s = nf_json_parse(state, strlen(state), jerr, sizeof jerr);
        if (!s || s->type != NF_JSON_OBJECT) {
            nf_json_free(s);
            rc = nf_error_set(err, NF_E_STATE, "%s: metadata nufilt.state is not a JSON object",
                              path);
            goto out;
        }
        num_field(s, "lambda", &r->state.lambda);
        num_field(s, "norm_sum", &r->state.norm_sum);
        num_field(s, "norm_count", &r->state.norm_count);
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

static int check_ranges(const nf_params *p, nf_error *err)
{
    if (p->null_rank < 0 || p->task_rank < 0 || p->lora_rank < 0 || p->lora_rank > 65536)
        return nf_error_set(err, NF_E_ARG, "ranks must be between 0 and 65536");
    if (!(p->lr >= 0) || !isfinite(p->lr))
        return nf_error_set(err, NF_E_ARG, "`lr` must be a non-negative number");
    if (p->iters < 0 || p->iters > 1000000)
        return nf_error_set(err, NF_E_ARG, "`iters` must be between 0 and 1000000");
    if (!(p->rank_tol >= 0) || p->rank_tol >= 1)
        return nf_error_set(err, NF_E_ARG, "`rank_tol` must be in [0, 1)");
    if (!isfinite(p->scale))
        return nf_error_set(err, NF_E_ARG, "`scale` must be a finite number");
    if (p->method == NF_METHOD_MAGMAX && p->scale == 0)
        return nf_error_set(err, NF_E_ARG,
                            "`scale` 0 is not allowed with `method` magmax (the merged task "
                            "vector is divided by it)");
    if (!(p->keep > 0) || p->keep > 1)
        return nf_error_set(err, NF_E_ARG, "`keep` must be in (0, 1]");
    if (!(p->alpha >= 0) || p->alpha > 1)
        return nf_error_set(err, NF_E_ARG, "`alpha` must be in [0, 1]");
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
                              prev->path, methods[rec.method]->info.name,
                              methods[o->method]->info.name);
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
    if ((rc = check_ranges(&p, err)))
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
