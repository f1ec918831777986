/* Which tensors a method treats: presets by tensor-name patterns, or a user regex. */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../io/model.h"
#include "select.h"

static const char *const clip_pat[] = {"attn", "fc1", NULL};
static const char *const t5_pat[] = {"SelfAttention", "EncDecAttention", "DenseReluDense", NULL};
static const char *const llama_pat[] = {"self_attn", "mlp", NULL};

static int has_any(const char *name, const char *const *pat)
{
    for (int i = 0; pat[i]; i++)
        if (strstr(name, pat[i]))
            return 1;
    return 0;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

int nf_is_linear_weight(const char *name, int ndim)
{
    return ndim == 2 && (ends_with(name, ".weight") || strcmp(name, "weight") == 0) &&
           !strstr(name, "embed") && !strstr(name, "lm_head");
}

int nf_preset_matches(const char *preset, const char *name, int ndim)
{
    if (ndim != 2)
        return 0;
    if (strcmp(preset, "clip") == 0)
        return has_any(name, clip_pat);
    if (strcmp(preset, "t5") == 0)
        return has_any(name, t5_pat);
    if (strcmp(preset, "llama") == 0)
        return has_any(name, llama_pat);
    if (strcmp(preset, "all-linear") == 0)
        return nf_is_linear_weight(name, ndim);
    return 0;
}

int nf_preset_resolve(const nf_model *m, const char *preset, const char **resolved, nf_error *err)
{
    static const char *const known[] = {"clip", "t5", "llama", "all-linear", NULL};
    if (preset && strcmp(preset, "auto") != 0) {
        for (int i = 0; known[i]; i++)
            if (strcmp(preset, known[i]) == 0) {
                *resolved = known[i];
                return NF_OK;
            }
        return nf_error_set(err, NF_E_ARG,
                            "`preset` %s: unknown preset (auto, clip, t5, llama, all-linear)",
                            preset);
    }
    int t5 = 0, fc1 = 0, attn = 0, selfattn = 0, mlp = 0;
    for (size_t i = 0; i < m->ntensors; i++) {
        const nf_tensor *t = &m->tensors[i];
        if (t->ndim != 2)
            continue;
        t5 |= has_any(t->name, t5_pat);
        fc1 |= strstr(t->name, "fc1") != NULL;
        attn |= strstr(t->name, "attn") != NULL;
        selfattn |= strstr(t->name, "self_attn") != NULL;
        mlp |= strstr(t->name, "mlp") != NULL;
    }
    if (t5)
        *resolved = "t5";
    else if (fc1 && attn)
        *resolved = "clip";
    else if (selfattn && mlp)
        *resolved = "llama";
    else
        *resolved = "all-linear";
    return NF_OK;
}

/* ---- a regular expression that is safe to compile ----
 *
 * glibc's regcomp expands a counted repetition x{m,n} into n copies of x, so nesting them
 * multiplies: (((a{1,200}){1,200}){1,200}) asks for 8 million copies, gigabytes and half a
 * minute before failing. A --layers expression recorded in a previous merge comes from a file
 * and is untrusted; before it is compiled, it must be short, hold no back-reference (which
 * makes matching exponential), no counted repetition of something that holds one, no count
 * over NF_REGEX_MAX_COUNT, and expand to at most NF_REGEX_MAX_NODES atoms. */

typedef struct re_group {
    unsigned long size;   /* atoms of the finished branches and the current one */
    unsigned long last;   /* atoms of the last atom of the current branch (quantifiable) */
    int last_counted;     /* the last atom is or holds a counted repetition */
    int counted;          /* the group holds a counted repetition */
} re_group;

static int re_fail(char *why, size_t n, const char *msg, size_t at)
{
    if (why && n)
        snprintf(why, n, "%s (at byte %zu)", msg, at);
    return -1;
}

/* Reads an interval "{m}", "{m,}" or "{m,n}" at s[i] == '{'; returns its length, 0 if it is
 * not one (then '{' is an ordinary character), or -1 for a count over the cap. */
static long re_interval(const char *s, size_t i, unsigned long *copies)
{
    size_t j = i + 1;
    unsigned long m = 0, n = 0;
    int digits = 0, open = 0, comma = 0;
    while (s[j] >= '0' && s[j] <= '9' && digits < 8)
        m = m * 10 + (unsigned long)(s[j++] - '0'), digits++;
    if (!digits)
        return 0;
    if (s[j] == ',') {
        comma = 1;
        j++;
        digits = 0;
        while (s[j] >= '0' && s[j] <= '9' && digits < 8)
            n = n * 10 + (unsigned long)(s[j++] - '0'), digits++;
        open = !digits;
    }
    if (s[j] != '}')
        return 0;
    if (m > NF_REGEX_MAX_COUNT || (comma && !open && n > NF_REGEX_MAX_COUNT))
        return -1;
    unsigned long c = !comma ? m : open ? m + 1 : (n > m ? n : m);
    *copies = c ? c : 1;
    return (long)(j - i + 1);
}

int nf_regex_check(const char *re, char *why, size_t n)
{
    size_t len = strlen(re);
    if (len > NF_REGEX_MAX_LEN) {
        if (why && n)
            snprintf(why, n, "longer than %d bytes", NF_REGEX_MAX_LEN);
        return -1;
    }
    re_group st[NF_REGEX_MAX_LEN / 2 + 2];
    int depth = 0;
    memset(&st[0], 0, sizeof st[0]);
    for (size_t i = 0; i < len; i++) {
        re_group *g = &st[depth];
        char c = re[i];
        unsigned long atom = 1;
        int atom_counted = 0;
        switch (c) {
        case '\\':
            if (re[i + 1] >= '1' && re[i + 1] <= '9')
                return re_fail(why, n, "a back-reference", i);
            if (re[i + 1])
                i++;
            break;
        case '[': {
            size_t j = i + 1;
            if (re[j] == '^')
                j++;
            if (re[j] == ']')
                j++;
            while (re[j] && re[j] != ']') {
                if (re[j] == '[' && (re[j + 1] == ':' || re[j + 1] == '=' || re[j + 1] == '.')) {
                    char k = re[j + 1];
                    j += 2;
                    while (re[j] && !(re[j] == k && re[j + 1] == ']'))
                        j++;
                    if (!re[j])
                        break;
                    j += 2;
                } else {
                    j++;
                }
            }
            if (!re[j])
                return re_fail(why, n, "an unterminated bracket expression", i);
            i = j;
            break;
        }
        case '(':
            if (depth + 1 >= (int)(sizeof st / sizeof st[0]))
                return re_fail(why, n, "groups nested too deeply", i);
            memset(&st[++depth], 0, sizeof st[0]);
            continue;
        case ')':
            if (depth == 0)
                break; /* an ordinary character in POSIX ERE; regcomp decides */
            atom = g->size;
            atom_counted = g->counted;
            depth--;
            g = &st[depth];
            break;
        case '|':
            g->last = 0;
            g->last_counted = 0;
            continue;
        case '*':
        case '+':
        case '?':
            g->size += 1;
            g->last += 1;
            continue;
        case '{': {
            unsigned long copies = 1;
            long l = re_interval(re, i, &copies);
            if (l < 0)
                return re_fail(why, n, "a repetition count over " NF_STR(NF_REGEX_MAX_COUNT), i);
            if (l == 0)
                break; /* an ordinary '{' */
            if (g->last_counted)
                return re_fail(why, n, "a counted repetition of a counted repetition", i);
            /* the last atom now stands copies times */
            g->size += g->last * (copies - 1);
            g->last *= copies;
            g->last_counted = 1;
            g->counted = 1;
            i += (size_t)l - 1;
            if (g->size > NF_REGEX_MAX_NODES)
                return re_fail(why, n, "too large once its repetitions are expanded", i);
            continue;
        }
        default:
            break;
        }
        g->size += atom;
        g->last = atom;
        g->last_counted = atom_counted;
        g->counted |= atom_counted;
        if (g->size > NF_REGEX_MAX_NODES)
            return re_fail(why, n, "too large once its repetitions are expanded", i);
    }
    return 0;
}

/* The rule in force: --layers (a regular expression over 2-D float tensors) or a preset
 * (resolved, so that "auto" looks at the model once). */
typedef struct rule {
    regex_t re;
    int has_re;
    const char *preset;
} rule;

static int rule_open(rule *r, const nf_model *m, const char *preset, const char *layers,
                     nf_error *err)
{
    r->has_re = 0;
    r->preset = NULL;
    if (!layers)
        return nf_preset_resolve(m, preset, &r->preset, err);
    char why[160];
    if (nf_regex_check(layers, why, sizeof why))
        return nf_error_set(err, NF_E_ARG, "`layers` \"%.200s\": not accepted: %s", layers, why);
    int rc = regcomp(&r->re, layers, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char msg[200];
        regerror(rc, &r->re, msg, sizeof msg);
        return nf_error_set(err, NF_E_ARG, "`layers` \"%s\": bad regular expression: %s", layers,
                            msg);
    }
    r->has_re = 1;
    return NF_OK;
}

static int rule_matches(const rule *r, const nf_tensor *t)
{
    if (!nf_dtype_is_float(t->dtype))
        return 0;
    if (r->has_re)
        return t->ndim == 2 && regexec(&r->re, t->name, 0, NULL, 0) == 0;
    return nf_preset_matches(r->preset, t->name, t->ndim);
}

static void rule_close(rule *r)
{
    if (r->has_re)
        regfree(&r->re);
}

int nf_select(const nf_model *m, const char *preset, const char *layers, unsigned char *treated,
              nf_error *err)
{
    rule r;
    int rc = rule_open(&r, m, preset, layers, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < m->ntensors; i++)
        treated[i] = (unsigned char)rule_matches(&r, &m->tensors[i]);
    rule_close(&r);
    return NF_OK;
}

/* One tensor, without selecting them all: `nufilt inspect` asks for every tensor in turn. */
int nf_tensor_treated(const nf_model *m, size_t i, const char *preset, const char *layers,
                      nf_error *err)
{
    if (!m || i >= m->ntensors)
        return nf_error_set(err, NF_E_ARG, "no tensor %zu", i);
    rule r;
    int rc = rule_open(&r, m, preset, layers, err);
    if (rc)
        return rc;
    int hit = rule_matches(&r, &m->tensors[i]);
    rule_close(&r);
    return hit;
}
