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
#include "options.h"
#include "select.h"

/* An option's field in nf_options or nf_params, by its table row's offset. */
#define AT(T, base, off) (*(T *)((char *)(base) + (off)))
#define CAT(T, base, off) (*(const T *)((const char *)(base) + (off)))

static void options_defaults(nf_options *o)
{
    memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->method = -1;
    size_t n;
    const nf_opt *t = nf_opt_table(&n);
    for (size_t i = 0; i < n && t[i].bit; i++) {
        switch (t[i].kind) {
        case NF_OPT_INT:
        case NF_OPT_BOOL: AT(int, o, t[i].o_off) = -1; break;
        case NF_OPT_NUM: AT(double, o, t[i].o_off) = NAN; break;
        case NF_OPT_SEED: AT(int64_t, o, t[i].o_off) = -1; break;
        default: break; /* ENUM: 0 (NF_COMPAT_UNSET); PRESET, LAYERS: NULL */
        }
    }
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

static int enum_index(const nf_opt *t, const char *name, size_t len)
{
    for (int k = 1; t->names[k]; k++)
        if (strlen(t->names[k]) == len && strncmp(t->names[k], name, len) == 0)
            return k;
    return 0;
}

/* The name of an enumerated value (the first, the default, for a value it does not name). */
static const char *enum_name(const nf_opt *t, int v)
{
    for (int k = 1; t->names[k]; k++)
        if (k == v)
            return t->names[k];
    return t->names[1];
}

/* Each option's default for the method, as the table writes it. */
static void defaults(int method, nf_params *p)
{
    memset(p, 0, sizeof *p);
    p->method = method;
    size_t n;
    const nf_opt *t = nf_opt_table(&n);
    for (size_t i = 0; i < n && t[i].bit; i++) {
        size_t len;
        const char *d = nf_opt_default_text(&t[i], method, &len);
        char v[32];
        snprintf(v, sizeof v, "%.*s", (int)len, d);
        switch (t[i].kind) {
        case NF_OPT_INT: AT(int, p, t[i].p_off) = (int)strtol(v, NULL, 10); break;
        case NF_OPT_NUM: AT(double, p, t[i].p_off) = strtod(v, NULL); break;
        case NF_OPT_SEED: AT(uint64_t, p, t[i].p_off) = strtoull(v, NULL, 10); break;
        case NF_OPT_ENUM: AT(int, p, t[i].p_off) = enum_index(&t[i], d, len); break;
        case NF_OPT_BOOL: AT(int, p, t[i].p_off) = strcmp(v, "on") == 0; break;
        default: break; /* the selection: preset "" and no layers until resolved */
        }
    }
}

/* The row of a recipe bit (the first of preset/layers for NF_P_SELECT). */
static const nf_opt *row_of(unsigned bit)
{
    size_t n;
    const nf_opt *t = nf_opt_table(&n);
    for (size_t i = 0; i < n && t[i].bit; i++)
        if (t[i].bit == bit)
            return &t[i];
    return NULL;
}

/* ---- the recipe as JSON (only the fields the method reads) ---- */

char *nf_params_json(const nf_params *p)
{
    const nf_method_ops *m = nf_method_ops_get(p->method);
    unsigned f = m->params;
    nf_sb sb = {0};
    nf_sb_puts(&sb, "{");
    const char *sep = "";
    size_t n;
    const nf_opt *t = nf_opt_table(&n);
    for (size_t i = 0; i < n && t[i].bit; i++) {
        if (!(f & t[i].bit) || t[i].kind == NF_OPT_PRESET || t[i].kind == NF_OPT_LAYERS)
            continue;
        nf_sb_printf(&sb, "%s\"%s\":", sep, t[i].field);
        sep = ",";
        size_t off = t[i].p_off;
        switch (t[i].kind) {
        case NF_OPT_INT: nf_sb_printf(&sb, "%d", CAT(int, p, off)); break;
        case NF_OPT_NUM: nf_sb_printf(&sb, "%.17g", CAT(double, p, off)); break;
        case NF_OPT_SEED:
            nf_sb_printf(&sb, "%llu", (unsigned long long)CAT(uint64_t, p, off));
            break;
        case NF_OPT_ENUM: nf_sb_printf(&sb, "\"%s\"", enum_name(&t[i], CAT(int, p, off))); break;
        case NF_OPT_BOOL: nf_sb_puts(&sb, CAT(int, p, off) ? "true" : "false"); break;
        }
    }
    /* the selection last */
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

/* A recorded number of the recipe, against its range. */
static int read_number(const char *path, const nf_opt *t, const nf_json *v, recorded *r,
                       nf_error *err)
{
    const nf_option_range *rg = nf_opt_range(t);
    char want[64];
    nf_option_range_describe(rg, want, sizeof want);
    if (v->type != NF_JSON_NUMBER || (rg->integer && !v->is_int) ||
        !nf_option_range_ok(rg, v->num) || (rg->integer && v->ival < 0)) {
        if (v->type == NF_JSON_NUMBER)
            return nf_error_set(err, NF_E_STATE,
                                "%s: metadata nufilt.params records %s = %g, which is out of "
                                "range (%s, as `%s`)",
                                path, t->field, v->num, want, rg->key);
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.params records %s as something other than a "
                            "number (%s, as `%s`)",
                            path, t->field, want, rg->key);
    }
    size_t off = t->p_off;
    switch (t->kind) {
    case NF_OPT_INT: AT(int, &r->p, off) = (int)v->ival; break;
    case NF_OPT_SEED: AT(uint64_t, &r->p, off) = (uint64_t)v->ival; break;
    default: AT(double, &r->p, off) = v->num; break;
    }
    r->have |= t->bit;
    return NF_OK;
}

/* A recorded enumeration, by one of its names. */
static int read_enum(const char *path, const nf_opt *t, const nf_json *v, recorded *r,
                     nf_error *err)
{
    int k = 0;
    for (int i = 1; v->type == NF_JSON_STRING && !k && t->names[i]; i++)
        if (strcmp(t->names[i], v->str) == 0)
            k = i;
    if (!k) {
        char names[128];
        size_t w = 0;
        for (int i = 1; t->names[i] && w < sizeof names; i++)
            w += (size_t)snprintf(names + w, sizeof names - w, "%s\"%s\"",
                                  i == 1 ? "" : t->names[i + 1] ? ", " : " or ", t->names[i]);
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.params records %s as %s%.40s%s (%s)", path,
                            t->field, v->type == NF_JSON_STRING ? "\"" : "",
                            v->type == NF_JSON_STRING ? v->str : "something not a string",
                            v->type == NF_JSON_STRING ? "\"" : "", names);
    }
    AT(int, &r->p, t->p_off) = k;
    r->have |= t->bit;
    return NF_OK;
}

static int read_bool(const char *path, const nf_opt *t, const nf_json *v, recorded *r,
                     nf_error *err)
{
    if (v->type != NF_JSON_BOOL)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.params records %s as something other than "
                            "true or false",
                            path, t->field);
    AT(int, &r->p, t->p_off) = v->boolean;
    r->have |= t->bit;
    return NF_OK;
}

static int read_preset(const char *path, const nf_json *v, recorded *r, nf_error *err)
{
    static const char *const known[] = {"clip", "t5", "llama", "all-linear", NULL};
    int k = 0;
    while (v->type == NF_JSON_STRING && known[k] && strcmp(known[k], v->str) != 0)
        k++;
    if (v->type != NF_JSON_STRING || !known[k] || (r->have & NF_P_SELECT))
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.params records %s preset%s%.40s%s "
                            "(clip, t5, llama or all-linear, and no layers beside it)",
                            path, r->have & NF_P_SELECT ? "both layers and a" : "an unknown",
                            v->type == NF_JSON_STRING ? " \"" : "",
                            v->type == NF_JSON_STRING ? v->str : "",
                            v->type == NF_JSON_STRING ? "\"" : "");
    r->have |= NF_P_SELECT;
    r->preset = nf_strdup(v->str);
    return r->preset ? NF_OK : nf_error_set(err, NF_E_NOMEM, "out of memory");
}

static int read_layers(const char *path, const nf_json *v, recorded *r, nf_error *err)
{
    char why[160];
    if (r->have & NF_P_SELECT)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.params records both a preset and layers", path);
    if (v->type != NF_JSON_STRING || strlen(v->str) != v->len)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.params records layers as something other "
                            "than one regular expression without U+0000",
                            path);
    if (nf_regex_check(v->str, why, sizeof why))
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.params records a `layers` expression "
                            "\"%.80s\" that is not accepted: %s",
                            path, v->str, why);
    regex_t re;
    if (regcomp(&re, v->str, REG_EXTENDED | REG_NOSUB) != 0)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.params records a bad `layers` expression "
                            "\"%.80s\"",
                            path, v->str);
    regfree(&re);
    r->have |= NF_P_SELECT;
    r->layers = nf_strdup(v->str);
    return r->layers ? NF_OK : nf_error_set(err, NF_E_NOMEM, "out of memory");
}

/* A recorded metadata value that must be a JSON object. */
static int parse_object(const char *path, const char *key, const char *text, nf_json **out,
                        nf_error *err)
{
    *out = nf_json_parse(text, strlen(text), NULL, 0);
    if (*out && (*out)->type == NF_JSON_OBJECT)
        return NF_OK;
    nf_json_free(*out);
    *out = NULL;
    return nf_error_set(err, NF_E_STATE, "%s: metadata %s is not a JSON object", path, key);
}

/* nufilt.params: each key one of the recipe's, its value checked as the table says. */
static int read_params(const char *path, const char *params, recorded *r, nf_error *err)
{
    nf_json *j;
    int rc = parse_object(path, "nufilt.params", params, &j, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < j->n && rc == NF_OK; i++) {
        const nf_json *v = &j->items[i];
        const nf_opt *t = nf_opt_recipe_key(v->key);
        if (!t) {
            rc = nf_error_set(err, NF_E_STATE,
                              "%s: metadata nufilt.params records an unknown key \"%.40s\"",
                              path, v->key);
            break;
        }
        switch (t->kind) {
        case NF_OPT_ENUM: rc = read_enum(path, t, v, r, err); break;
        case NF_OPT_BOOL: rc = read_bool(path, t, v, r, err); break;
        case NF_OPT_PRESET: rc = read_preset(path, v, r, err); break;
        case NF_OPT_LAYERS: rc = read_layers(path, v, r, err); break;
        default: rc = read_number(path, t, v, r, err); break;
        }
    }
    nf_json_free(j);
    return rc;
}

/* nufilt.state: the method's numbers carried from step to step. */
static int read_state(const char *path, const char *state, recorded *r, nf_error *err)
{
    nf_json *s;
    int rc = parse_object(path, "nufilt.state", state, &s, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < s->n && rc == NF_OK; i++) {
        const char *key = s->items[i].key;
        const nf_json *v = &s->items[i];
        double *dst = strcmp(key, "lambda") == 0       ? &r->state.lambda
                      : strcmp(key, "norm_sum") == 0   ? &r->state.norm_sum
                      : strcmp(key, "norm_count") == 0 ? &r->state.norm_count
                                                       : NULL;
        if (!dst)
            rc = nf_error_set(err, NF_E_STATE,
                              "%s: metadata nufilt.state records an unknown key \"%.40s\"", path,
                              key);
        else if (v->type != NF_JSON_NUMBER || !isfinite(v->num) || v->num < 0 || v->num > 1e300)
            rc = nf_error_set(err, NF_E_STATE,
                              "%s: metadata nufilt.state records %s as something other than a "
                              "finite non-negative number",
                              path, key);
        else
            *dst = v->num;
    }
    nf_json_free(s);
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
    if (rc == NF_OK)
        rc = read_params(path, params, r, err);
    if (rc == NF_OK && state)
        rc = read_state(path, state, r, err);
    return rc;
}

/* ---- resolution ---- */

/* The library's name of a recipe bit: "`null_rank`", "`preset`/`layers`". */
static void opt_name(unsigned bit, char *buf, size_t n)
{
    size_t count, w = 0;
    const nf_opt *t = nf_opt_table(&count);
    buf[0] = '\0';
    for (size_t i = 0; i < count && t[i].bit && w < n; i++)
        if (t[i].bit == bit)
            w += (size_t)snprintf(buf + w, n - w, "%s`%s`", w ? "/" : "", t[i].field);
}

static unsigned options_set(const nf_options *o)
{
    unsigned s = 0;
    size_t n;
    const nf_opt *t = nf_opt_table(&n);
    for (size_t i = 0; i < n && t[i].bit; i++) {
        size_t off = t[i].o_off;
        int set = 0;
        switch (t[i].kind) {
        case NF_OPT_INT:
        case NF_OPT_BOOL: set = CAT(int, o, off) >= 0; break;
        case NF_OPT_NUM: set = !isnan(CAT(double, o, off)); break;
        case NF_OPT_SEED: set = CAT(int64_t, o, off) >= 0; break;
        case NF_OPT_ENUM: set = CAT(int, o, off) != 0; break;
        default: set = CAT(const char *, o, off) != NULL; break;
        }
        if (set)
            s |= t[i].bit;
    }
    return s;
}

static void fmt_value(unsigned bit, const nf_params *p, char *buf, size_t n)
{
    const nf_opt *t = row_of(bit);
    size_t off = t ? t->p_off : 0;
    switch (t ? t->kind : -1) {
    case NF_OPT_INT: snprintf(buf, n, "%d", CAT(int, p, off)); break;
    case NF_OPT_NUM: snprintf(buf, n, "%g", CAT(double, p, off)); break;
    case NF_OPT_SEED: snprintf(buf, n, "%llu", (unsigned long long)CAT(uint64_t, p, off)); break;
    case NF_OPT_ENUM: snprintf(buf, n, "%s", enum_name(t, CAT(int, p, off))); break;
    case NF_OPT_BOOL: snprintf(buf, n, "%s", CAT(int, p, off) ? "on" : "off"); break;
    case NF_OPT_PRESET:
        snprintf(buf, n, "%s%s", p->layers ? "`layers` " : "`preset` ",
                 p->layers ? p->layers : p->preset);
        break;
    default: buf[0] = '\0';
    }
}

static int same(unsigned bit, const nf_params *a, const nf_params *b)
{
    const nf_opt *t = row_of(bit);
    size_t off = t ? t->p_off : 0;
    switch (t ? t->kind : -1) {
    case NF_OPT_INT:
    case NF_OPT_ENUM:
    case NF_OPT_BOOL: return CAT(int, a, off) == CAT(int, b, off);
    case NF_OPT_NUM: return CAT(double, a, off) == CAT(double, b, off);
    case NF_OPT_SEED: return CAT(uint64_t, a, off) == CAT(uint64_t, b, off);
    case NF_OPT_PRESET:
        if (!!a->layers != !!b->layers)
            return 0;
        return a->layers ? strcmp(a->layers, b->layers) == 0 : strcmp(a->preset, b->preset) == 0;
    }
    return 1;
}

/* dst's field of a recipe bit from o (the options) or from src (a recipe); the selection is
 * left to the caller. */
static void take(unsigned bit, nf_params *dst, const nf_options *o, const nf_params *src)
{
    const nf_opt *t = row_of(bit);
    if (!t)
        return;
    size_t po = t->p_off;
    switch (t->kind) {
    case NF_OPT_INT:
    case NF_OPT_ENUM:
    case NF_OPT_BOOL: AT(int, dst, po) = o ? CAT(int, o, t->o_off) : CAT(int, src, po); break;
    case NF_OPT_NUM:
        AT(double, dst, po) = o ? CAT(double, o, t->o_off) : CAT(double, src, po);
        break;
    case NF_OPT_SEED:
        AT(uint64_t, dst, po) = o ? (uint64_t)CAT(int64_t, o, t->o_off) : CAT(uint64_t, src, po);
        break;
    }
}

static double param_value(const nf_opt *t, const nf_params *p)
{
    switch (t->kind) {
    case NF_OPT_INT: return CAT(int, p, t->p_off);
    case NF_OPT_SEED: return (double)CAT(uint64_t, p, t->p_off);
    case NF_OPT_NUM: return CAT(double, p, t->p_off);
    }
    return 0;
}

/* The options the method reads, against the one table of ranges. */
static int check_ranges(const nf_params *p, unsigned used, nf_error *err)
{
    size_t n;
    const nf_opt *t = nf_opt_table(&n);
    for (size_t i = 0; i < n && t[i].bit; i++) {
        const nf_option_range *rg = nf_opt_range(&t[i]);
        if (!rg || !(used & t[i].bit))
            continue;
        double v = param_value(&t[i], p);
        if (!nf_option_range_ok(rg, v)) {
            char want[64];
            nf_option_range_describe(rg, want, sizeof want);
            return nf_error_set(err, NF_E_ARG, "`%s` %g: expected %s", rg->key, v, want);
        }
    }
    if (p->method == NF_METHOD_MAGMAX && p->scale == 0)
        return nf_error_set(err, NF_E_ARG,
                            "`scale` 0 is not allowed with `method` magmax (the merged task "
                            "vector is divided by it)");
    return NF_OK;
}

/* The recipe prev recorded (from defaults p), each option the method reads present, and each
 * one the user set (want) the same. */
static int resolve_recorded(const nf_options *o, const nf_method_ops *m, const nf_model *prev,
                            const recorded *rec, const nf_params *want, nf_params *got,
                            nf_error *err)
{
    unsigned set = options_set(o);
    got->layers = rec->layers;
    if (rec->preset)
        snprintf(got->preset, sizeof got->preset, "%s", rec->preset);
    for (unsigned bit = 1; bit && bit <= m->params; bit <<= 1) {
        if (!(m->params & bit))
            continue;
        char name[64];
        opt_name(bit, name, sizeof name);
        if (!(rec->have & bit))
            return nf_error_set(err, NF_E_STATE, "%s: metadata lacks %s of the recipe",
                                prev->path, name);
        take(bit, got, NULL, &rec->p);
        if ((set & bit) && !same(bit, want, got)) {
            char a[160], b[160];
            fmt_value(bit, want, a, sizeof a);
            fmt_value(bit, got, b, sizeof b);
            return nf_error_set(err, NF_E_STATE,
                                "%s %s conflicts with %s recorded in %s (a stream keeps one "
                                "recipe; leave the option out to continue it)",
                                name, a, b, prev->path);
        }
    }
    return NF_OK;
}

/* The recipe the user asks for: the method's defaults, the options set, the selection
 * resolved on the base. */
static int resolve_wanted(const nf_options *o, const nf_method_ops *m, const nf_model *base,
                          nf_params *want, nf_error *err)
{
    unsigned set = options_set(o);
    unsigned extra = set & ~m->params;
    if (extra) {
        char name[64];
        opt_name(extra & -extra, name, sizeof name);
        return nf_error_set(err, NF_E_ARG, "%s does not apply to `method` %s", name,
                            m->info.name);
    }
    for (unsigned bit = 1; bit && bit <= set; bit <<= 1)
        if (set & bit)
            take(bit, want, o, NULL);
    if (!(m->params & NF_P_SELECT))
        return NF_OK;
    if (o->layers) {
        want->layers = (char *)o->layers;
        return NF_OK;
    }
    const char *res;
    int rc = nf_preset_resolve(base, o->preset, &res, err);
    if (rc == NF_OK)
        snprintf(want->preset, sizeof want->preset, "%s", res);
    return rc;
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
    nf_params p;
    defaults(method, &p);
    nf_params want = p;
    if ((rc = resolve_wanted(o, m, base, &want, err)))
        goto out;
    if (prev) {
        nf_params got = p;
        if ((rc = resolve_recorded(o, m, prev, &rec, &want, &got, err)))
            goto out;
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
