/* The rows of the option tables (options.h) as data, and the public table of ranges derived
 * from them. */
#include "options.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../methods/method.h"

static const char *const compat_names[] = {"", "paper", "reference", NULL};

/* the public table of ranges: the recipe's ranged rows, in the table's order */
#define RANGE_INT(field, flag, i, lo, hi, lo_open, hi_open, methods)                            \
    {flag, #field, i, lo, hi, lo_open, hi_open, methods},
#define RANGE_NUM RANGE_INT
#define RANGE_SEED RANGE_INT
#define RANGE_ENUM(...)
#define RANGE_BOOL(...)
#define RANGE_PRESET(...)
#define RANGE_LAYERS(...)
#define RANGE_ROW(bit, field, flag, kind, mv, i, lo, hi, lo_open, hi_open, methods, def, help)  \
    RANGE_##kind(field, flag, i, lo, hi, lo_open, hi_open, methods)
static const nf_option_range ranges[] = {NF_RECIPE_OPTIONS(RANGE_ROW)};
#define NRANGES (sizeof ranges / sizeof ranges[0])

/* the ranged run settings */
#define RUN_RANGE_INT(field, flag, lo, hi) {flag, #field, 1, lo, hi, 0, 0, 0}
static const nf_option_range threads_range = RUN_RANGE_INT(threads, "threads", 1, 4096);

/* the index of each row's range in ranges[], or -1 */
#define IS_RANGED_INT 1
#define IS_RANGED_NUM 1
#define IS_RANGED_SEED 1
#define IS_RANGED_ENUM 0
#define IS_RANGED_BOOL 0
#define IS_RANGED_PRESET 0
#define IS_RANGED_LAYERS 0
#define RANGED_ROW(bit, field, flag, kind, ...) IS_RANGED_##kind,
static const int ranged[] = {NF_RECIPE_OPTIONS(RANGED_ROW)};
#define NRECIPE (sizeof ranged / sizeof ranged[0])

#define NAMES_ENUM compat_names
#define NAMES_INT NULL
#define NAMES_NUM NULL
#define NAMES_SEED NULL
#define NAMES_BOOL NULL
#define NAMES_PRESET NULL
#define NAMES_LAYERS NULL
#define RECIPE_ROW(bit, field, flag, kind, mv, i, lo, hi, lo_open, hi_open, methods, def, help) \
    {flag,                                                                                     \
     #field,                                                                                   \
     mv,                                                                                       \
     NF_OPT_##kind,                                                                            \
     NF_P_##bit,                                                                               \
     methods,                                                                                  \
     NF_OPT_BOTH,                                                                              \
     def,                                                                                      \
     help,                                                                                     \
     offsetof(nf_options, field),                                                              \
     offsetof(nf_params, field),                                                               \
     NAMES_##kind},
#define RUN_ROW(field, flag, kind, mv, lo, hi, cmds, def, help)                                 \
    {flag, #field, mv, NF_OPT_##kind, 0, 0, cmds, def, help, offsetof(nf_options, field), \
     0, NULL},
static const nf_opt table[] = {NF_RECIPE_OPTIONS(RECIPE_ROW) NF_RUN_OPTIONS(RUN_ROW)};
#define NTABLE (sizeof table / sizeof table[0])

const nf_opt *nf_opt_table(size_t *count)
{
    if (count)
        *count = NTABLE;
    return table;
}

const nf_option_range *nf_option_ranges(size_t *count)
{
    if (count)
        *count = NRANGES;
    return ranges;
}

const nf_option_range *nf_opt_range(const nf_opt *o)
{
    size_t i = o ? (size_t)(o - table) : NTABLE;
    if (i >= NTABLE)
        return NULL;
    if (i >= NRECIPE)
        return o->kind == NF_OPT_INT ? &threads_range : NULL;
    if (!ranged[i])
        return NULL;
    size_t r = 0;
    for (size_t k = 0; k < i; k++)
        r += (size_t)ranged[k];
    return &ranges[r];
}

const nf_opt *nf_opt_find(const char *name)
{
    for (size_t i = 0; name && i < NTABLE; i++)
        if (strcmp(table[i].flag, name) == 0 || strcmp(table[i].field, name) == 0)
            return &table[i];
    return NULL;
}

const nf_opt *nf_opt_recipe_key(const char *key)
{
    for (size_t i = 0; key && i < NRECIPE; i++)
        if (strcmp(table[i].field, key) == 0)
            return &table[i];
    return NULL;
}

/* the public lookup: the recipe's ranged options by flag or key */
const nf_option_range *nf_option_range_find(const char *name)
{
    for (size_t i = 0; name && i < NRANGES; i++)
        if (strcmp(ranges[i].option, name) == 0 || strcmp(ranges[i].key, name) == 0)
            return &ranges[i];
    return NULL;
}

const char *nf_opt_default_text(const nf_opt *o, int method, size_t *len)
{
    const nf_method_info *m = nf_method_get(method);
    size_t nl = m ? strlen(m->name) : 0;
    const char *s = o->defaults, *bare = "";
    size_t bare_len = 0;
    while (*s) {
        const char *end = strchr(s, ',');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        const char *sp = memchr(s, ' ', n);
        if (!sp) {
            bare = s;
            bare_len = n;
        } else if (m && (size_t)(sp - s) == nl && strncmp(s, m->name, nl) == 0) {
            *len = n - nl - 1;
            return sp + 1;
        }
        s = end ? end + 1 + (end[1] == ' ') : s + n;
    }
    *len = bare_len;
    return bare;
}

void nf_opt_describe_methods(const nf_opt *o, char *buf, size_t n)
{
    size_t w = 0;
    buf[0] = '\0';
    for (int m = 0; m < NF_METHOD_COUNT && w < n; m++)
        if (o->methods & (1u << m))
            w += (size_t)snprintf(buf + w, n - w, "%s%s", w ? ", " : "", nf_method_get(m)->name);
}

void nf_opt_describe_default(const nf_opt *o, char *buf, size_t n)
{
    if (!o->bit) {
        snprintf(buf, n, "%s", o->defaults);
        return;
    }
    /* one value for all its methods, or "METHOD VALUE" for each */
    size_t len0 = 0, w = 0;
    const char *first = NULL;
    int same = 1;
    for (int m = 0; m < NF_METHOD_COUNT; m++) {
        size_t len;
        const char *d = nf_opt_default_text(o, m, &len);
        if (!(o->methods & (1u << m)))
            continue;
        if (!first) {
            first = d;
            len0 = len;
        } else if (len != len0 || strncmp(d, first, len) != 0) {
            same = 0;
        }
    }
    buf[0] = '\0';
    if (same) {
        snprintf(buf, n, "%.*s", (int)len0, first ? first : "");
        return;
    }
    for (int m = 0; m < NF_METHOD_COUNT && w < n; m++) {
        size_t len;
        const char *d = nf_opt_default_text(o, m, &len);
        if (o->methods & (1u << m))
            w += (size_t)snprintf(buf + w, n - w, "%s%s %.*s", w ? ", " : "",
                                  nf_method_get(m)->name, (int)len, d);
    }
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
