/*
 * PEFT LoRA adapters as tasks; see adapter.h. The file layout (from PEFT's save format):
 *
 *   base_model.model.<module>.lora_A.weight      r x in           (adapter name already removed)
 *   base_model.model.<module>.lora_B.weight      out x r
 *   base_model.model.<module>.lora_embedding_A   r x num_embeddings   (embedding LoRA: the
 *   base_model.model.<module>.lora_embedding_B   dim x r              update is (B A)^T)
 *   base_model.model.<module>.lora_B.bias        out                  (lora_bias)
 *   base_model.model.<module>.<param>            full tensors: modules_to_save (older PEFT:
 *                                                <module>.modules_to_save.<param>) and biases
 *                                                saved with bias="all"/"lora_only" (of a
 *                                                LoRA layer: <module>.base_layer.bias)
 *
 * and the update of <module>.weight is scale B A with scale = alpha / r (alpha / sqrt(r) with
 * use_rslora), r and alpha from rank_pattern / alpha_pattern when a pattern key matches the
 * module name as PEFT matches it (the first key K for which "(.*\.)?(K)$" matches the whole
 * name), transposed for fan_in_fan_out (GPT-2 style Conv1D weights stored in x out).
 */
#include "adapter.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/util.h"
#include "../core/dtype.h"
#include "../io/json.h"

#define CONFIG_NAME "adapter_config.json"
#define WEIGHTS_NAME "adapter_model.safetensors"
#define KEY_PREFIX "base_model.model."
#define MAX_CONFIG_BYTES (4u << 20)

int nf_adapter_is_dir(const char *path)
{
    if (!path || !nf_is_dir(path))
        return 0;
    char *p = nf_path_join(path, CONFIG_NAME);
    int r = p && nf_exists(p);
    free(p);
    return r;
}

void nf_adapter_close(nf_adapter *a)
{
    if (!a)
        return;
    nf_model_close(a->file);
    free(a->src);
    free(a->dir);
    free(a);
}

/* ---- the configuration ---- */

typedef struct pattern {
    const char *key;
    regex_t re;
    double value;
} pattern;

typedef struct config {
    int r;
    double alpha;
    int rslora, fan_in_fan_out;
    pattern *rank_pat, *alpha_pat;
    size_t nrank, nalpha;
} config;

static void config_free(config *c)
{
    for (size_t i = 0; i < c->nrank; i++)
        regfree(&c->rank_pat[i].re);
    for (size_t i = 0; i < c->nalpha; i++)
        regfree(&c->alpha_pat[i].re);
    free(c->rank_pat);
    free(c->alpha_pat);
}

/* A boolean option: absent or null is false. */
static int get_bool(const nf_json *root, const char *key, int *out, const char *path,
                    nf_error *err)
{
    const nf_json *v = nf_json_get(root, key);
    *out = 0;
    if (!v || v->type == NF_JSON_NULL)
        return NF_OK;
    if (v->type != NF_JSON_BOOL)
        return nf_error_set(err, NF_E_FORMAT, "%s: \"%s\" must be true or false", path, key);
    *out = v->boolean;
    return NF_OK;
}

/* Absent, null, false, or an empty list/object/string: the option is not in use. */
static int in_use(const nf_json *v)
{
    if (!v || v->type == NF_JSON_NULL)
        return 0;
    if (v->type == NF_JSON_BOOL)
        return v->boolean;
    if (v->type == NF_JSON_ARRAY || v->type == NF_JSON_OBJECT)
        return v->n > 0;
    if (v->type == NF_JSON_STRING)
        return v->len > 0;
    return 1;
}

static int compile_patterns(const nf_json *obj, const char *what, int integer, pattern **out,
                            size_t *n, const char *path, nf_error *err)
{
    *out = NULL;
    *n = 0;
    if (!obj || obj->type == NF_JSON_NULL)
        return NF_OK;
    if (obj->type != NF_JSON_OBJECT)
        return nf_error_set(err, NF_E_FORMAT, "%s: \"%s\" must be an object", path, what);
    if (obj->n == 0)
        return NF_OK;
    pattern *p = calloc(obj->n, sizeof *p);
    if (!p)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    *out = p;
    for (size_t i = 0; i < obj->n; i++) {
        const nf_json *v = &obj->items[i];
        if (v->type != NF_JSON_NUMBER || (integer && (!v->is_int || v->ival < 1 ||
                                                      v->ival > 1000000)) ||
            (!integer && !isfinite(v->num)))
            return nf_error_set(err, NF_E_FORMAT, "%s: %s[\"%s\"] must be %s", path, what,
                                v->key, integer ? "a positive integer" : "a finite number");
        nf_sb sb = {0};
        nf_sb_printf(&sb, "^(.*\\.)?(%s)$", v->key);
        if (sb.oom)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
        int bad = regcomp(&p[i].re, sb.s, REG_EXTENDED | REG_NOSUB);
        nf_sb_free(&sb);
        if (bad)
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: %s key \"%s\" is not a regular expression this build reads "
                                "(POSIX extended)",
                                path, what, v->key);
        p[i].key = v->key;
        p[i].value = integer ? (double)v->ival : v->num;
        (*n)++;
    }
    return NF_OK;
}

static const pattern *match(const pattern *p, size_t n, const char *module)
{
    for (size_t i = 0; i < n; i++)
        if (regexec(&p[i].re, module, 0, NULL, 0) == 0)
            return &p[i];
    return NULL;
}

static int parse_config(const nf_json *root, const char *path, config *c, nf_error *err)
{
    if (root->type != NF_JSON_OBJECT)
        return nf_error_set(err, NF_E_FORMAT, "%s: not a JSON object", path);
    const nf_json *pt = nf_json_get(root, "peft_type");
    if (!pt || pt->type != NF_JSON_STRING)
        return nf_error_set(err, NF_E_FORMAT, "%s: no \"peft_type\": not a PEFT adapter config",
                            path);
    if (strcmp(pt->str, "LORA") != 0)
        return nf_error_set(err, NF_E_UNSUPPORTED,
                            "%s: peft_type \"%s\" is not supported: only LoRA adapters (LORA) "
                            "can be merged as tasks",
                            path, pt->str);
    int lora_bias = 0, rc;
    /* variants whose update is not scale * B A on the base weight */
    static const char *const refused[][2] = {
        {"use_dora", "DoRA (use_dora) rescales the weight by a learnt magnitude"},
        {"use_qalora", "QALoRA (use_qalora) pools the input groups"},
        {"alora_invocation_tokens", "aLoRA (alora_invocation_tokens) acts only after its "
                                    "invocation tokens"},
        {"layer_replication", "layer_replication changes the architecture"},
        {"target_parameters", "LoRA on parameters (target_parameters)"},
        {"trainable_token_indices", "trainable tokens (trainable_token_indices)"},
        {"megatron_config", "Megatron-parallel layers (megatron_config)"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (in_use(nf_json_get(root, refused[i][0])))
            return nf_error_set(err, NF_E_UNSUPPORTED,
                                "%s: %s: not supported for merging as a task", path,
                                refused[i][1]);
    /* the variants PEFT adds over time come as use_<variant> flags and <variant>_config
     * objects: any in use but the plain options (use_rslora) and pure initialisations
     * (EVA; LoftQ's object is inert unless init_lora_weights says "loftq") is refused */
    for (size_t i = 0; i < root->n; i++) {
        const nf_json *v = &root->items[i];
        size_t kl = v->keylen;
        int use = kl > 4 && strncmp(v->key, "use_", 4) == 0 && strcmp(v->key, "use_rslora");
        int obj = kl > 7 && strcmp(v->key + kl - 7, "_config") == 0 &&
                  strcmp(v->key, "eva_config") && strcmp(v->key, "loftq_config");
        if ((use || obj) && in_use(v))
            return nf_error_set(err, NF_E_UNSUPPORTED,
                                "%s: \"%s\" is set: that LoRA variant is not supported for "
                                "merging as a task (only plain LoRA, rsLoRA)",
                                path, v->key);
    }
    const nf_json *init = nf_json_get(root, "init_lora_weights");
    if (init && init->type == NF_JSON_STRING) {
        static const char *const modifies_base[] = {"pissa", "corda", "olora", "loftq"};
        for (size_t i = 0; i < 4; i++)
            if (strncmp(init->str, modifies_base[i], strlen(modifies_base[i])) == 0)
                return nf_error_set(err, NF_E_UNSUPPORTED,
                                    "%s: init_lora_weights \"%s\" trains against a modified "
                                    "base; convert the adapter to plain LoRA first "
                                    "(PEFT's path_initial_model_for_weight_conversion)",
                                    path, init->str);
    }
    const nf_json *bias = nf_json_get(root, "bias");
    if (bias && bias->type != NF_JSON_NULL &&
        (bias->type != NF_JSON_STRING ||
         (strcmp(bias->str, "none") && strcmp(bias->str, "all") && strcmp(bias->str, "lora_only"))))
        return nf_error_set(err, NF_E_UNSUPPORTED,
                            "%s: \"bias\" must be \"none\", \"all\" or \"lora_only\"", path);
    if ((rc = get_bool(root, "use_rslora", &c->rslora, path, err)) ||
        (rc = get_bool(root, "fan_in_fan_out", &c->fan_in_fan_out, path, err)) ||
        (rc = get_bool(root, "lora_bias", &lora_bias, path, err))) /* type-checked only */
        return rc;
    const nf_json *r = nf_json_get(root, "r"), *al = nf_json_get(root, "lora_alpha");
    c->r = 8; /* PEFT's defaults */
    c->alpha = 8;
    if (r && r->type != NF_JSON_NULL) {
        if (r->type != NF_JSON_NUMBER || !r->is_int || r->ival < 1 || r->ival > 1000000)
            return nf_error_set(err, NF_E_FORMAT, "%s: \"r\" must be a positive integer", path);
        c->r = (int)r->ival;
    }
    if (al && al->type != NF_JSON_NULL) {
        if (al->type != NF_JSON_NUMBER || !isfinite(al->num))
            return nf_error_set(err, NF_E_FORMAT, "%s: \"lora_alpha\" must be a number", path);
        c->alpha = al->num;
    }
    if ((rc = compile_patterns(nf_json_get(root, "rank_pattern"), "rank_pattern", 1,
                               &c->rank_pat, &c->nrank, path, err)) ||
        (rc = compile_patterns(nf_json_get(root, "alpha_pattern"), "alpha_pattern", 0,
                               &c->alpha_pat, &c->nalpha, path, err)))
        return rc;
    return NF_OK;
}

/* ---- the tensors ---- */

enum { ROLE_A, ROLE_B, ROLE_EA, ROLE_EB, ROLE_BIAS };

static const struct {
    const char *suffix;
    int role;
} lora_suffix[] = {
    {".lora_A.weight", ROLE_A},      {".lora_B.weight", ROLE_B},
    {".lora_embedding_A", ROLE_EA},  {".lora_embedding_B", ROLE_EB},
    {".lora_B.bias", ROLE_BIAS},
};

typedef struct slot {
    const nf_tensor *a, *b, *vec, *full;
    int emb;
    const char *key_a; /* for messages */
} slot;

static int ends_with(const char *s, size_t n, const char *suf)
{
    size_t k = strlen(suf);
    return n >= k && memcmp(s + n - k, suf, k) == 0;
}

/* Removes every ".<seg>." in t down to "." (and, with next_too, the segment after it). */
static void drop_segment(char *t, const char *seg, int next_too)
{
    char *p;
    size_t k = strlen(seg);
    while ((p = strstr(t, seg)) != NULL) {
        char *q = p + k;
        if (next_too) {
            char *dot = strchr(q, '.');
            if (!dot)
                return;
            q = dot + 1;
        }
        memmove(p + 1, q, strlen(q) + 1);
    }
}

/* The base tensor a tensor saved whole stands for: <module>.base_layer.<p> (the bias of a LoRA
 * layer), <module>.modules_to_save.<p> (PEFT before the adapter name moved) and
 * <module>.modules_to_save.<adapter>.<p> (PEFT's copy under the adapter's name, saved beside
 * <module>.<p> when bias="all") all name <module>.<p>. -1 if the base has none. */
static long full_target(const nf_model *base, const char *name, char **target)
{
    char *t = nf_strdup(name);
    *target = t;
    if (!t)
        return -2;
    drop_segment(t, ".base_layer.", 0);
    char *u = strstr(t, ".modules_to_save.") ? nf_strdup(t) : NULL;
    drop_segment(t, ".modules_to_save.", 0);
    long i = nf_model_find(base, t);
    if (i < 0 && u) {
        drop_segment(u, ".modules_to_save.", 1);
        long j = nf_model_find(base, u);
        if (j >= 0) {
            free(t);
            *target = u;
            return j;
        }
    }
    free(u);
    return i;
}

static int same_tensor(const nf_tensor *a, const nf_tensor *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return memcmp(a->data, b->data, (size_t)a->nbytes) == 0;
}

static void shape_str(const int64_t *s, int nd, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < nd && o < n; d++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", d ? ", " : "", (long long)s[d]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

static int place(nf_adapter *ad, const nf_model *base, slot *slots, const nf_tensor *t,
                 nf_error *err)
{
    const char *key = t->name;
    const char *wpath = ad->file->path;
    size_t plen = strlen(KEY_PREFIX);
    if (strncmp(key, KEY_PREFIX, plen) != 0 || !key[plen])
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: tensor \"%s\" is not a PEFT LoRA key (base_model.model.<module>"
                            ".lora_A.weight, ...)",
                            wpath, key);
    const char *name = key + plen;
    size_t n = strlen(name);
    if (strstr(name, "lora_magnitude_vector"))
        return nf_error_set(err, NF_E_UNSUPPORTED,
                            "%s: tensor \"%s\" is a DoRA magnitude: DoRA adapters are not "
                            "supported",
                            wpath, key);
    int role = -1;
    size_t mlen = 0;
    for (size_t i = 0; i < sizeof lora_suffix / sizeof lora_suffix[0]; i++)
        if (ends_with(name, n, lora_suffix[i].suffix)) {
            role = lora_suffix[i].role;
            mlen = n - strlen(lora_suffix[i].suffix);
            break;
        }
    char *target;
    long bi;
    if (role >= 0) {
        nf_sb sb = {0};
        nf_sb_printf(&sb, "%.*s.%s", (int)mlen, name, role == ROLE_BIAS ? "bias" : "weight");
        if (sb.oom)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
        target = sb.s;
        bi = nf_model_find(base, target);
    } else {
        if (strstr(name, "lora_") || strstr(name, "trainable_tokens"))
            return nf_error_set(err, NF_E_UNSUPPORTED,
                                "%s: tensor \"%s\" is not a LoRA weight this program knows "
                                "(lora_A/lora_B, lora_embedding_A/B, lora_B.bias, or a full "
                                "tensor of the base)",
                                wpath, key);
        /* PEFT's frozen copy of a modules_to_save module (saved with bias="all"): the base's
         * own values, not part of the task */
        if (strstr(name, ".original_module.") || strncmp(name, "original_module.", 16) == 0)
            return NF_OK;
        bi = full_target(base, name, &target);
        if (bi == -2)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    if (bi < 0) {
        int rc = nf_error_set(err, NF_E_MISMATCH,
                              "%s: tensor \"%s\" belongs to \"%s\", which the base model %s "
                              "does not have (an adapter of another model?)",
                              wpath, key, target, base->path);
        free(target);
        return rc;
    }
    free(target);
    const nf_tensor *bt = &base->tensors[bi];
    slot *s = &slots[bi];
    if (!nf_dtype_is_float(t->dtype) && role >= 0)
        return nf_error_set(err, NF_E_FORMAT, "%s: tensor \"%s\" has dtype %s, not a float",
                            wpath, key, nf_dtype_name(t->dtype));
    const nf_tensor **dst = role == ROLE_A || role == ROLE_EA   ? &s->a
                            : role == ROLE_B || role == ROLE_EB ? &s->b
                            : role == ROLE_BIAS                 ? &s->vec
                                                                : &s->full;
    if (role < 0 && *dst && same_tensor(*dst, t))
        return NF_OK; /* the same values under PEFT's two names for a modules_to_save copy */
    if (*dst || (role < 0 && (s->a || s->b || s->vec)) ||
        (role >= 0 && s->full))
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: tensor \"%s\" updates base tensor \"%s\" a second time", wpath,
                            key, bt->name);
    *dst = t;
    if (role == ROLE_EA || role == ROLE_EB)
        s->emb |= 1 << (role == ROLE_EB);
    if (role == ROLE_A || role == ROLE_EA)
        s->key_a = key;
    if (role < 0) {
        int same = bt->ndim == t->ndim;
        for (int d = 0; same && d < bt->ndim; d++)
            same = bt->shape[d] == t->shape[d];
        int fb = nf_dtype_is_float(bt->dtype), ft = nf_dtype_is_float(t->dtype);
        if (!same || fb != ft || (!fb && bt->dtype != t->dtype)) {
            char sa[96], sb[96];
            shape_str(t->shape, t->ndim, sa, sizeof sa);
            shape_str(bt->shape, bt->ndim, sb, sizeof sb);
            return nf_error_set(err, NF_E_MISMATCH,
                                "%s: tensor \"%s\" (%s %s) does not fit \"%s\" of the base "
                                "(%s %s)",
                                wpath, key, nf_dtype_name(t->dtype), sa, bt->name,
                                nf_dtype_name(bt->dtype), sb);
        }
    }
    return NF_OK;
}

/* The low-rank pair of one base tensor: both halves present, shapes that fit, the rank the
 * configuration gives the module. */
static int finish_lowrank(nf_adapter *ad, const nf_model *base, size_t i, const slot *s,
                          const config *c, nf_error *err)
{
    const nf_tensor *bt = &base->tensors[i];
    const char *wpath = ad->file->path;
    if (!s->a || !s->b)
        return nf_error_set(err, NF_E_FORMAT, "%s: \"%s\" has a LoRA %s but no %s", wpath,
                            bt->name, s->a ? "A" : "B", s->a ? "B" : "A");
    if (s->emb && s->emb != 3)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: \"%s\" mixes lora_A/lora_B with lora_embedding_A/B", wpath,
                            bt->name);
    const nf_tensor *a = s->a, *b = s->b;
    if (a->ndim != 2 || b->ndim != 2 || bt->ndim != 2)
        return nf_error_set(err, NF_E_UNSUPPORTED,
                            "%s: \"%s\": LoRA of a %d-D weight (convolution?) is not supported; "
                            "only linear and embedding layers",
                            wpath, bt->name, bt->ndim == 2 ? a->ndim : bt->ndim);
    int64_t r = a->shape[0];
    int transpose = s->emb ? 1 : c->fan_in_fan_out;
    int64_t m = transpose ? a->shape[1] : b->shape[0];
    int64_t n = transpose ? b->shape[0] : a->shape[1];
    if (b->shape[1] != r || m != bt->shape[0] || n != bt->shape[1] || r < 1) {
        char sa[64], sb[64], sw[64];
        shape_str(a->shape, 2, sa, sizeof sa);
        shape_str(b->shape, 2, sb, sizeof sb);
        shape_str(bt->shape, 2, sw, sizeof sw);
        return nf_error_set(err, NF_E_MISMATCH,
                            "%s: \"%s\": A %s and B %s do not give the base's shape %s%s", wpath,
                            bt->name, sa, sb, sw,
                            transpose && !s->emb ? " (fan_in_fan_out: (B A)^T)" : "");
    }
    /* the module's name as PEFT matches rank_pattern / alpha_pattern against it */
    size_t blen = strlen(bt->name);
    char *module = nf_strndup(bt->name, blen - strlen(".weight"));
    if (!module)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    const pattern *rp = match(c->rank_pat, c->nrank, module);
    const pattern *ap = match(c->alpha_pat, c->nalpha, module);
    free(module);
    int rcfg = rp ? (int)rp->value : c->r;
    double alpha = ap ? ap->value : c->alpha;
    if (rcfg != r)
        return nf_error_set(err, NF_E_MISMATCH,
                            "%s: \"%s\" holds rank %lld but the configuration gives this module "
                            "rank %d (%s%s%s)",
                            wpath, s->key_a, (long long)r, rcfg, rp ? "rank_pattern \"" : "r",
                            rp ? rp->key : "", rp ? "\"" : "");
    nf_task_src *ts = &ad->src[i];
    ts->kind = NF_TSRC_LOWRANK;
    ts->lr.a = a;
    ts->lr.b = b;
    ts->lr.rank = (int)r;
    ts->lr.transpose = transpose;
    ts->lr.scale = alpha / (c->rslora ? sqrt((double)r) : (double)r);
    ad->nlowrank++;
    return NF_OK;
}

int nf_adapter_open(const char *dir, const nf_model *base, nf_adapter **out, nf_error *err)
{
    *out = NULL;
    nf_adapter *ad = calloc(1, sizeof *ad);
    char *cpath = nf_path_join(dir, CONFIG_NAME), *wpath = nf_path_join(dir, WEIGHTS_NAME);
    char *text = NULL;
    size_t len = 0;
    nf_json *root = NULL;
    slot *slots = NULL;
    config c;
    memset(&c, 0, sizeof c);
    int rc = NF_OK;
    if (!ad || !cpath || !wpath || !(ad->dir = nf_strdup(dir))) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = nf_read_small_file(cpath, MAX_CONFIG_BYTES,
                                 "larger than 4 MB, not an adapter config", &text, &len, err)))
        goto out;
    char jerr[256];
    root = nf_json_parse(text, len, jerr, sizeof jerr);
    if (!root) {
        rc = nf_error_set(err, NF_E_FORMAT, "%s: invalid JSON: %s", cpath, jerr);
        goto out;
    }
    if ((rc = parse_config(root, cpath, &c, err)))
        goto out;
    if (!nf_exists(wpath)) {
        char *bin = nf_path_join(dir, "adapter_model.bin");
        int has_bin = bin && nf_exists(bin);
        free(bin);
        rc = nf_error_set(err, NF_E_IO, "%s: no %s in the adapter directory%s", dir,
                          WEIGHTS_NAME,
                          has_bin ? " (adapter_model.bin, a pickle, is not read: save the "
                                    "adapter with safe_serialization=True)"
                                  : "");
        goto out;
    }
    if ((rc = nf_model_open(wpath, &ad->file, err)))
        goto out;
    ad->nbase = base->ntensors;
    ad->src = calloc(base->ntensors ? base->ntensors : 1, sizeof *ad->src);
    slots = calloc(base->ntensors ? base->ntensors : 1, sizeof *slots);
    if (!ad->src || !slots) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < ad->file->ntensors && !rc; k++)
        rc = place(ad, base, slots, &ad->file->tensors[k], err);
    for (size_t i = 0; i < base->ntensors && !rc; i++) {
        const slot *s = &slots[i];
        if (s->full) {
            ad->src[i].kind = NF_TSRC_FULL;
            ad->src[i].full = s->full;
            ad->nfull++;
        } else if (s->a || s->b) {
            rc = finish_lowrank(ad, base, i, s, &c, err);
        }
    }
    /* lora_B.bias: scale of the module's pair times the vector */
    for (size_t i = 0; i < base->ntensors && !rc; i++) {
        const slot *s = &slots[i];
        if (!s->vec)
            continue;
        const nf_tensor *bt = &base->tensors[i];
        size_t bl = strlen(bt->name);
        nf_sb sb = {0};
        nf_sb_printf(&sb, "%.*s.weight", (int)(bl - strlen(".bias")), bt->name);
        long wi = sb.oom ? -1 : nf_model_find(base, sb.s);
        nf_sb_free(&sb);
        if (wi < 0 || ad->src[wi].kind != NF_TSRC_LOWRANK) {
            rc = nf_error_set(err, NF_E_FORMAT, "%s: \"%s\" has a lora_B.bias without its LoRA "
                              "pair", ad->file->path, bt->name);
            break;
        }
        if (bt->ndim != 1 || s->vec->ndim != 1 || s->vec->shape[0] != bt->shape[0] ||
            !nf_dtype_is_float(bt->dtype)) {
            rc = nf_error_set(err, NF_E_MISMATCH, "%s: lora_B.bias of \"%s\" does not fit the "
                              "base's bias", ad->file->path, bt->name);
            break;
        }
        ad->src[i].kind = NF_TSRC_VEC;
        ad->src[i].vec = s->vec;
        ad->src[i].vscale = ad->src[wi].lr.scale;
    }
    if (!rc) {
        uint64_t h = nf_model_fingerprint(ad->file);
        for (size_t i = 0; i < len; i++) {
            h ^= (unsigned char)text[i];
            h *= 0x100000001B3ull;
        }
        ad->fingerprint = h;
    }
out:
    config_free(&c);
    nf_json_free(root);
    free(text);
    free(slots);
    free(cpath);
    free(wpath);
    if (rc) {
        nf_adapter_close(ad);
        return rc;
    }
    *out = ad;
    return NF_OK;
}
