/* Which tensors a method treats: presets by tensor-name patterns, or a user regex. */
#include <regex.h>
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
