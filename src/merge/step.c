/*
 * One continual step, and a whole stream as a chain of steps: open and cross-check the models,
 * resolve the recipe, plan the output, run the method's passes through the scheduler, record
 * the recipe and state in the output's metadata, commit.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../backend/devices.h"
#include "../core/util.h"
#include "../dist/dist.h"
#include "../io/json.h"
#include "../io/outpath.h"
#include "../io/tree.h"
#include "adapter.h"
#include "card.h"
#include "recipe.h"
#include "report.h"
#include "sched.h"
#include "select.h"

const char *nf_version(void) { return NF_VERSION_STRING; }
int nf_version_number(void) { return NF_VERSION_NUMBER; }

static void shape_str(const nf_tensor *t, char *buf, size_t n)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int d = 0; d < t->ndim && o < n; d++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

static int same_shape(const nf_tensor *a, const nf_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return 1;
}

/* Another model must hold the base's tensors, with the same shapes, and float tensors where
 * the base has float ones (any float dtype), identical dtypes otherwise. Integer and bool
 * buffers present on one side only are tolerated (transformers 5 no longer saves BERT's
 * position_ids, which checkpoints on the hub carry): adopt_one_sided() takes them from the
 * side that has them. */
static int check_against_base(const nf_model *base, const nf_model *m, const char *role,
                              nf_error *err)
{
    for (size_t i = 0; i < base->ntensors; i++) {
        const nf_tensor *b = &base->tensors[i];
        const nf_tensor *t = nf_model_tensor(m, b->name);
        if (!t && !nf_dtype_is_float(b->dtype))
            continue;
        if (!t)
            return nf_error_set(err, NF_E_MISMATCH,
                                "%s (%s): tensor \"%s\" of the base model is missing", m->path,
                                role, b->name);
        if (!same_shape(b, t)) {
            char sb[128], st[128];
            shape_str(b, sb, sizeof sb);
            shape_str(t, st, sizeof st);
            return nf_error_set(err, NF_E_MISMATCH,
                                "%s (%s): tensor \"%s\" has shape %s but the base (%s) has %s",
                                m->path, role, b->name, st, base->path, sb);
        }
        int fb = nf_dtype_is_float(b->dtype), ft = nf_dtype_is_float(t->dtype);
        if (fb != ft || (!fb && b->dtype != t->dtype))
            return nf_error_set(err, NF_E_MISMATCH,
                                "%s (%s): tensor \"%s\" has dtype %s but the base has %s",
                                m->path, role, b->name, nf_dtype_name(t->dtype),
                                nf_dtype_name(b->dtype));
    }
    for (size_t i = 0; i < m->ntensors; i++)
        if (nf_dtype_is_float(m->tensors[i].dtype) && !nf_model_tensor(base, m->tensors[i].name))
            return nf_error_set(err, NF_E_MISMATCH,
                                "%s (%s): tensor \"%s\" is not in the base model %s", m->path,
                                role, m->tensors[i].name, base->path);
    return NF_OK;
}

void nf_run_note(void *user, const char *msg)
{
    nf_run *run = user;
    char **n = realloc(run->notes, (run->nnotes + 1) * sizeof *n);
    if (!n)
        return;
    run->notes = n;
    if ((n[run->nnotes] = nf_strdup(msg)) != NULL)
        run->nnotes++;
}

/* The integer and bool buffers on one side only: the output takes the base's; one the base
 * lacks comes from the task model, or else from the previous merge. Each is noted. */
static int adopt_one_sided(nf_run *run, int adopt, nf_error *err)
{
    char msg[1024], sh[128];
    size_t nbase = run->base->ntensors;
    for (size_t i = 0; i < nbase; i++) {
        const nf_tensor *b = &run->base->tensors[i];
        const nf_model *side[2] = {run->task, run->prev};
        const char *role[2] = {"task model", "previous merge"};
        for (int k = 0; k < 2; k++) {
            if (!side[k] || nf_model_tensor(side[k], b->name))
                continue;
            shape_str(b, sh, sizeof sh);
            snprintf(msg, sizeof msg,
                     "tensor \"%.200s\" (%s %s) is not in the %s %.300s: taken from the base",
                     b->name, nf_dtype_name(b->dtype), sh, role[k], side[k]->path);
            nf_run_note(run, msg);
        }
    }
    const nf_model *src[2] = {run->task, run->prev};
    const char *role[2] = {"task model", "previous merge"};
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; src[k] && i < src[k]->ntensors; i++) {
            const nf_tensor *t = &src[k]->tensors[i];
            if (nf_dtype_is_float(t->dtype) || nf_model_tensor(run->base, t->name))
                continue;
            shape_str(t, sh, sizeof sh);
            if (!adopt) {
                /* a caller's model (nf_step_models) is not changed: the buffer is left out */
                snprintf(msg, sizeof msg,
                         "tensor \"%.200s\" (%s %s) of the %s is not in the base model: left "
                         "out",
                         t->name, nf_dtype_name(t->dtype), sh, role[k]);
                nf_run_note(run, msg);
                continue;
            }
            snprintf(msg, sizeof msg,
                     "tensor \"%.200s\" (%s %s) is not in the base model: taken from the %s "
                     "%.300s",
                     t->name, nf_dtype_name(t->dtype), sh, role[k], src[k]->path);
            int rc = nf_model_adopt(run->base, t, err);
            if (rc)
                return rc;
            nf_run_note(run, msg);
        }
    }
    return NF_OK;
}

/* A selection that treats nothing would give NUFILT's output as the plain base: refused, with
 * what the tensor names look like so the user can write a preset or --layers that matches. */
static int refuse_empty_selection(const nf_run *run, nf_error *err)
{
    nf_sb ex = {0};
    int shown = 0;
    size_t n2 = 0;
    for (size_t i = 0; i < run->ntensors; i++) {
        const nf_tensor *t = &run->base->tensors[i];
        if (t->ndim != 2 || !nf_dtype_is_float(t->dtype))
            continue;
        n2++;
        if (shown < 4) {
            nf_sb_puts(&ex, shown++ ? ", " : "");
            nf_sb_printf(&ex, "%.120s", t->name);
        }
    }
    char what[300];
    if (run->p.layers)
        snprintf(what, sizeof what, "--layers '%.200s' matches", run->p.layers);
    else
        snprintf(what, sizeof what, "--preset %s%s selects", run->p.preset,
                 run->opts->preset && strcmp(run->opts->preset, "auto") ? "" : " (auto)");
    int rc;
    if (n2)
        rc = nf_error_set(err, NF_E_ARG,
                          "%s none of the %zu 2-D float tensors of %s, so NUFILT would treat "
                          "nothing; their names look like: %s%s (choose --preset all-linear, "
                          "or --layers with a regular expression that matches them)",
                          what, n2, run->base->path, ex.s ? ex.s : "", n2 > 4 ? ", ..." : "");
    else
        rc = nf_error_set(err, NF_E_ARG,
                          "%s no tensor of %s: it has no 2-D float tensor, so NUFILT would treat "
                          "nothing",
                          what, run->base->path);
    nf_sb_free(&ex);
    return rc;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Plain F8 tensors are merged (decoded exactly to float32, encoded back to nearest even).
 * Quantised checkpoints that carry per-tensor or per-block scales beside their F8 weights
 * (weight_scale, weight_scale_inv, input_scale, scale_inv, ...) mean weight = F8 x scale, which
 * nufilt does not apply: merging their raw F8 values would be silently wrong, so they are
 * refused. */
static int is_scale_name(const char *name)
{
    const char *last = strrchr(name, '.');
    last = last ? last + 1 : name;
    return strcmp(last, "scale_inv") == 0 || ends_with(last, "_scale") ||
           ends_with(last, "_scale_inv");
}

static int check_f8_scales(const nf_model *m, const char *role, nf_error *err)
{
    const nf_tensor *f8 = NULL, *scale = NULL;
    for (size_t i = 0; i < m->ntensors && !(f8 && scale); i++) {
        const nf_tensor *t = &m->tensors[i];
        if (!f8 && (t->dtype == NF_F8_E4M3 || t->dtype == NF_F8_E5M2))
            f8 = t;
        if (!scale && is_scale_name(t->name))
            scale = t;
    }
    if (!f8 || !scale)
        return NF_OK;
    return nf_error_set(err, NF_E_UNSUPPORTED,
                        "%s (%s): tensor \"%s\" looks like a scale of its %s weights (such as "
                        "\"%s\"): nufilt merges plain F8 tensors but does not apply per-tensor "
                        "or per-block scales; dequantise the checkpoint first",
                        m->path, role, scale->name, nf_dtype_name(f8->dtype), f8->name);
}

/* ---- metadata of the output ---- */

typedef struct meta_list {
    nf_kv *kv;
    size_t n, cap;
    int oom;
} meta_list;

static void meta_put(meta_list *l, const char *k, const char *v)
{
    if (l->oom)
        return;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->kv[i].key, k) == 0) {
            char *nv = nf_strdup(v);
            if (!nv) {
                l->oom = 1;
                return;
            }
            free(l->kv[i].value);
            l->kv[i].value = nv;
            return;
        }
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        nf_kv *nk = realloc(l->kv, nc * sizeof *nk);
        if (!nk) {
            l->oom = 1;
            return;
        }
        l->kv = nk;
        l->cap = nc;
    }
    l->kv[l->n].key = nf_strdup(k);
    l->kv[l->n].value = nf_strdup(v);
    if (!l->kv[l->n].key || !l->kv[l->n].value)
        l->oom = 1;
    l->n++;
}

static void meta_free(meta_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->kv[i].key);
        free(l->kv[i].value);
    }
    free(l->kv);
    memset(l, 0, sizeof *l);
}

/* The task list recorded so far, with this task appended. */
static char *tasks_json(const nf_model *prev, const char *name, const char *path,
                        const char *fingerprint)
{
    nf_sb sb = {0};
    nf_sb_puts(&sb, "[");
    const char *old = prev ? nf_model_metadata_get(prev, "nufilt.tasks") : NULL;
    nf_json *j = old ? nf_json_parse(old, strlen(old), NULL, 0) : NULL;
    size_t k = 0;
    if (j && j->type == NF_JSON_ARRAY) {
        for (size_t i = 0; i < j->n; i++) {
            const nf_json *e = &j->items[i];
            const nf_json *n = nf_json_get(e, "name"), *p = nf_json_get(e, "path");
            const nf_json *f = nf_json_get(e, "fingerprint");
            if (!n || n->type != NF_JSON_STRING)
                continue;
            nf_sb_puts(&sb, k++ ? "," : "");
            nf_sb_puts(&sb, "{\"name\":");
            nf_sb_json_str(&sb, n->str, n->len);
            if (p && p->type == NF_JSON_STRING) {
                nf_sb_puts(&sb, ",\"path\":");
                nf_sb_json_str(&sb, p->str, p->len);
            }
            if (f && f->type == NF_JSON_STRING) {
                nf_sb_puts(&sb, ",\"fingerprint\":");
                nf_sb_json_str(&sb, f->str, f->len);
            }
            nf_sb_puts(&sb, "}");
        }
    }
    nf_json_free(j);
    nf_sb_puts(&sb, k ? "," : "");
    nf_sb_puts(&sb, "{\"name\":");
    nf_sb_json_str(&sb, name, strlen(name));
    nf_sb_puts(&sb, ",\"path\":");
    nf_sb_json_str(&sb, path, strlen(path));
    nf_sb_puts(&sb, ",\"fingerprint\":");
    nf_sb_json_str(&sb, fingerprint, strlen(fingerprint));
    nf_sb_puts(&sb, "}]");
    if (sb.oom) {
        nf_sb_free(&sb);
        return NULL;
    }
    return sb.s;
}

/* The name recorded for the task: the one given, else a Hugging Face model id (given as one,
 * or read from a cache snapshot path), else the path's last component. */
static char *task_name_of(const nf_run *run, const char *task_given, const char *task_path)
{
    if (run->opts->task_name)
        return nf_strdup(run->opts->task_name);
    if (task_given && strcmp(task_given, task_path) != 0)
        return nf_strdup(task_given);
    char *id = nf_hf_model_id(task_path);
    return id ? id : nf_path_stem(task_path);
}

static int build_meta(nf_run *run, const char *task_given, const char *task_path, meta_list *l)
{
    for (size_t i = 0; i < run->base->nmeta; i++)
        if (strncmp(run->base->meta[i].key, "nufilt.", 7) != 0)
            meta_put(l, run->base->meta[i].key, run->base->meta[i].value);
    int has_format = 0;
    for (size_t i = 0; i < l->n; i++)
        has_format |= strcmp(l->kv[i].key, "format") == 0;
    if (!has_format)
        meta_put(l, "format", "pt"); /* transformers refuses files whose format is unknown */
    char buf[64];
    meta_put(l, "nufilt.version", NF_VERSION_STRING);
    meta_put(l, "nufilt.method", run->method->info.name);
    snprintf(buf, sizeof buf, "%d", run->step);
    meta_put(l, "nufilt.step", buf);
    char *pj = nf_params_json(&run->p);
    char *sj = nf_state_json(&run->state);
    /* the fingerprint is known once pass 0 has read every tensor; until then a placeholder of
     * the same length */
    snprintf(buf, sizeof buf, NF_FINGERPRINT_PREFIX "%016llx",
             (unsigned long long)run->fingerprint);
    meta_put(l, "nufilt.base", buf);
    char *name = task_name_of(run, task_given, task_path);
    char tfp[32];
    snprintf(tfp, sizeof tfp, "%016llx", (unsigned long long)run->task_fp);
    char *tj = name ? tasks_json(run->prev, name, task_path, tfp) : NULL;
    if (pj) meta_put(l, "nufilt.params", pj);
    if (sj) meta_put(l, "nufilt.state", sj);
    if (tj) meta_put(l, "nufilt.tasks", tj);
    if (run->svd_used)
        meta_put(l, "nufilt.svd", run->svd_used);
    int ok = pj && sj && tj && !l->oom;
    free(pj);
    free(sj);
    free(tj);
    free(name);
    return ok ? NF_OK : NF_E_NOMEM;
}

/* ---- the SVD mode: per step, recorded as nufilt.svd (not part of the recipe) ---- */

static const char *const svd_names[] = {
    [NF_LA_SVD_EXACT] = "gesdd", [NF_LA_SVD_RANDOMIZED] = "randomized",
    [NF_LA_SVD_GRAM] = "gram", [NF_LA_SVD_FAST] = "fast"};

/* The mode this step uses (--compat reference keeps gesdd for gram and fast, as the method
 * does) and the one the previous merged model recorded, which must be a known name. */
static int svd_resolve(nf_run *run, int opt, nf_error *err)
{
    int mode = opt == NF_SVD_RANDOMIZED ? NF_LA_SVD_RANDOMIZED
               : opt == NF_SVD_GRAM     ? NF_LA_SVD_GRAM
               : opt == NF_SVD_FAST     ? NF_LA_SVD_FAST
                                        : NF_LA_SVD_EXACT;
    if (run->p.compat == NF_COMPAT_REFERENCE &&
        (mode == NF_LA_SVD_GRAM || mode == NF_LA_SVD_FAST))
        mode = NF_LA_SVD_EXACT;
    run->svd_mode = mode;
    run->svd_used = run->p.method == NF_METHOD_NUFILT ? svd_names[mode] : NULL;
    const char *rec = run->prev ? nf_model_metadata_get(run->prev, "nufilt.svd") : NULL;
    if (!rec)
        return NF_OK;
    for (size_t i = 0; i < sizeof svd_names / sizeof svd_names[0]; i++)
        if (strcmp(rec, svd_names[i]) == 0) {
            run->svd_prev = svd_names[i];
            return NF_OK;
        }
    return nf_error_set(err, NF_E_STATE,
                        "%s: metadata nufilt.svd records an unknown SVD mode \"%.40s\" "
                        "(expected gesdd, fast, gram or randomized)",
                        run->prev->path, rec);
}

/* ---- the base a previous merge was merged from ---- */

/* Before any work: the previous merge records the base's fingerprint in this version's
 * format. */
static int check_recorded_base(const nf_model *prev, nf_error *err)
{
    const char *fp = nf_model_metadata_get(prev, "nufilt.base");
    size_t pl = strlen(NF_FINGERPRINT_PREFIX);
    if (!fp)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata lacks nufilt.base, the fingerprint of the base it was "
                            "merged from, so it cannot be checked against `base`",
                            prev->path);
    int hex = strlen(fp) == 16;
    for (size_t i = 0; hex && i < 16; i++)
        hex &= (fp[i] >= '0' && fp[i] <= '9') || (fp[i] >= 'a' && fp[i] <= 'f');
    if (hex)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.base is a fingerprint in the format of an "
                            "earlier nufilt (the first and last bytes of each tensor), which "
                            "this version no longer accepts: the fingerprint format changed to "
                            "all of the base's bytes; re-run the stream from its first step",
                            prev->path);
    hex = strncmp(fp, NF_FINGERPRINT_PREFIX, pl) == 0 && strlen(fp) == pl + 16;
    for (size_t i = 0; hex && i < 16; i++)
        hex &= (fp[pl + i] >= '0' && fp[pl + i] <= '9') || (fp[pl + i] >= 'a' && fp[pl + i] <= 'f');
    if (!hex)
        return nf_error_set(err, NF_E_STATE,
                            "%s: metadata nufilt.base \"%.40s\" is not a base fingerprint "
                            "(\"" NF_FINGERPRINT_PREFIX "\" and 16 lower-case hex digits)",
                            prev->path, fp);
    return NF_OK;
}

/* After pass 0 (every base tensor hashed), before the commit: the same base. */
static int check_same_base(const nf_run *run, nf_error *err)
{
    const char *fp = nf_model_metadata_get(run->prev, "nufilt.base");
    char mine[64];
    snprintf(mine, sizeof mine, NF_FINGERPRINT_PREFIX "%016llx",
             (unsigned long long)run->fingerprint);
    if (fp && strcmp(fp, mine) == 0)
        return NF_OK;
    return nf_error_set(err, NF_E_STATE,
                        "%s was merged from another base model than %s (base fingerprint %s, "
                        "this base %s); nothing written",
                        run->prev->path, run->base->path, fp ? fp : "none", mine);
}

/* ---- the step ---- */

/* The scratch file a multi-pass method asked for (run->want_spill): one float32 slot per float
 * tensor, in the output's directory (the same file system the output is written to, not /tmp),
 * unlinked as soon as it is open so that nothing is left behind on success, failure or a
 * crash; the space is reserved up front so a full disk is reported before the first pass. */
static int spill_open(nf_run *run, const char *out, nf_error *err)
{
    uint64_t total = 0;
    run->spill_off = calloc(run->ntensors ? run->ntensors : 1, sizeof *run->spill_off);
    if (!run->spill_off)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    for (size_t i = 0; i < run->ntensors; i++) {
        const nf_tensor *t = &run->base->tensors[i];
        run->spill_off[i] = total;
        if (nf_dtype_is_float(t->dtype))
            total += t->numel * sizeof(float);
    }
    size_t len, s = nf_path_last(out, &len);
    nf_sb sb = {0};
    if (s == 0)
        nf_sb_printf(&sb, "./.%.*s.spill-XXXXXX", (int)len, out + s);
    else
        nf_sb_printf(&sb, "%.*s.%.*s.spill-XXXXXX", (int)s, out, (int)len, out + s);
    if (sb.oom)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    run->spill_path = sb.s;
    /* a file without a name (O_TMPFILE) cannot be left behind even by SIGKILL; file systems
     * without it get a named one, unlinked at once */
    char *dir = nf_strndup(out, s);
    run->spill_fd = dir ? open(s ? dir : ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600) : -1;
    free(dir);
    if (run->spill_fd >= 0)
        goto reserve;
    run->spill_fd = mkostemp(run->spill_path, O_CLOEXEC);
    if (run->spill_fd < 0)
        return nf_error_set(err, NF_E_IO, "%s: cannot create a scratch file beside it: %s", out,
                            strerror(errno));
    if (unlink(run->spill_path) != 0)
        return nf_error_set(err, NF_E_IO, "%s: cannot unlink the scratch file: %s",
                            run->spill_path, strerror(errno));
reserve:
    if (total) {
        int e = posix_fallocate(run->spill_fd, 0, (off_t)total);
        if (e == ENOSPC || e == EFBIG)
            return nf_error_set(err, NF_E_IO,
                                "%s: no room for %.1f MB of scratch data beside the output: %s",
                                out, (double)total / 1e6, strerror(e));
        /* other errors (no fallocate on this file system): the writes will tell */
    }
    return NF_OK;
}

static void run_free(nf_run *run, const nf_step_mem *mem)
{
    if (run->method && run->method->cleanup)
        run->method->cleanup(run);
    nf_writer_abort(run->writer);
    if (!mem) {
        nf_model_close(run->base);
        nf_model_close(run->task);
        nf_model_close(run->prev);
    }
    nf_adapter_close(run->adapter);
    free(run->treated);
    free(run->out);
    free(run->reports);
    free(run->base_hash);
    free(run->owner);
    free(run->ranks);
    free(run->partial);
    free(run->spill_off);
    free(run->work);
    if (run->spill_fd >= 0)
        close(run->spill_fd);
    free(run->spill_path);
    nf_params_free(&run->p);
    for (size_t i = 0; i < run->nnotes; i++)
        free(run->notes[i]);
    free(run->notes);
    pthread_mutex_destroy(&run->lock);
}

static int cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ---- estimated work, for progress ---- */

/* A byte streamed (read from a mapping, converted, written out) costs about as long as this
 * many float32 flops of the CPU backend's dense kernels (order of magnitude: 50-100 GFLOP/s
 * against a few GB/s through page cache and write-back). */
#define WORK_PER_BYTE 20.0

/* One pass over tensor i, at the first step of a stream or a later one: the bytes it streams,
 * plus for a treated matrix the dense linear algebra of the method (SVDs and Gram products
 * O(m n k), NUFILT's adapter training iters x the Gram or direct form's products; a LoRA
 * task's V_t from its factors). */
static double tensor_work(const nf_run *run, size_t i, int first)
{
    const nf_tensor *t = &run->base->tensors[i];
    double w = WORK_PER_BYTE * (double)t->nbytes * (first ? 3.0 : 4.0);
    if (!nf_dtype_is_float(t->dtype) || t->ndim != 2 || !run->treated[i])
        return w;
    double m = (double)t->shape[0], n = (double)t->shape[1], k = m < n ? m : n;
    double svd = 6.0 * m * n * k;
    const nf_params *p = &run->p;
    switch (p->method) {
    case NF_METHOD_NUFILT: {
        if (first && p->compat != NF_COMPAT_REFERENCE)
            return w;
        const nf_task_src *ts = run->adapter ? &run->adapter->src[i] : NULL;
        double tau_svd = svd;
        if (ts && ts->kind == NF_TSRC_LOWRANK) {
            double r = ts->lr.rank;
            tau_svd = 2.0 * (m + n) * r * r + 2.0 * m * n * r;
        }
        double rl = p->lora_rank > 0 ? p->lora_rank : 0;
        double it = p->iters > 0 ? p->iters : 0;
        double train = first ? 0.0 : it * rl * (n < 2 * m ? 4.0 * n * n : 8.0 * m * n);
        double filter = 4.0 * m * n * (p->null_rank > 0 ? p->null_rank : 0);
        return w + (first ? 0.0 : svd) + tau_svd + train + filter;
    }
    case NF_METHOD_OPCM:
    case NF_METHOD_ISOC:
    case NF_METHOD_TSVM:
        return first ? w : w + svd;
    case NF_METHOD_WUDI:
        return first ? w : w + (p->iters > 0 ? p->iters : 0) * 8.0 * m * n * k / 16.0;
    default:
        return w;
    }
}

/* run->work (one pass over each tensor) and the estimated work of this step and of a later
 * step of the same stream. */
static int plan_work(nf_run *run, double *this_step, double *later_step)
{
    run->work = calloc(run->ntensors ? run->ntensors : 1, sizeof *run->work);
    if (!run->work)
        return NF_E_NOMEM;
    int first = run->prev == NULL;
    double a = 0, b = 0;
    for (size_t i = 0; i < run->ntensors; i++) {
        run->work[i] = tensor_work(run, i, first) / (double)run->method->npasses;
        a += run->work[i] * run->method->npasses;
        b += tensor_work(run, i, 0);
    }
    *this_step = a;
    *later_step = b;
    return NF_OK;
}

/* config.json with the output's dtype, and the model card, for a directory output */
static int add_hf_files(nf_run *run, const char *base_given, const char *base,
                        const meta_list *meta, nf_error *err)
{
    const nf_options *o = run->opts;
    int rc = NF_OK;
    const char *dn = nf_torch_dtype_name(o->out_dtype);
    if (dn && run->base->is_dir) {
        char *text = NULL;
        size_t len = 0;
        int got = nf_tree_read(base, "config.json", 16u << 20, &text, &len, err);
        if (got < 0)
            return err->code;
        if (got) {
            char *edited = NULL;
            size_t elen = 0;
            int e = nf_config_set_dtype(text, len, dn, &edited, &elen);
            if (e == NF_OK)
                rc = nf_writer_add_file(run->writer, "config.json", edited, elen, err);
            else if (e == NF_E_NOMEM)
                rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            else
                nf_run_note(run, "config.json of the base is not a valid JSON object: copied "
                                 "unchanged, so its torch_dtype/dtype do not follow --dtype");
            free(edited);
        }
        free(text);
        if (rc)
            return rc;
    }
    char *card = NULL;
    size_t card_len = 0;
    if (run->base->is_dir && nf_tree_read(base, "README.md", 1u << 20, &card, &card_len, err) < 0)
        return err->code;
    char *id = strcmp(base_given, base) != 0 ? nf_strdup(base_given) : nf_hf_model_id(base);
    char fp[48];
    snprintf(fp, sizeof fp, NF_FINGERPRINT_PREFIX "%016llx", (unsigned long long)run->fingerprint);
    const char *params = NULL, *tasks = NULL;
    for (size_t i = 0; i < meta->n; i++) {
        if (!strcmp(meta->kv[i].key, "nufilt.params"))
            params = meta->kv[i].value;
        if (!strcmp(meta->kv[i].key, "nufilt.tasks"))
            tasks = meta->kv[i].value;
    }
    nf_card_in ci = {
        .method = run->method->info.name,
        .params_json = params,
        .tasks_json = tasks,
        .base_model = id ? id : base_given,
        .base_card = card,
        .base_card_len = card_len,
        .base_fp = fp,
        .command_line = o->command_line,
        .step = run->step,
    };
    char *text = nf_card_text(&ci);
    rc = text ? nf_writer_add_file(run->writer, "README.md", text, strlen(text), err)
              : nf_error_set(err, NF_E_NOMEM, "out of memory");
    free(text);
    free(id);
    free(card);
    return rc;
}

static int step_resolved(const char *base_given, const char *task_given, const char *base,
                         const char *task, const char *prev, const char *out,
                         const nf_options *o, int step_in_run, int nsteps,
                         nf_run_progress *rp, nf_report *report, nf_error *err,
                         const nf_step_mem *mem);

int nf_step_in_run(const char *base, const char *task, const char *prev, const char *out,
                   const nf_options *o, int step_in_run, int nsteps, nf_run_progress *rp,
                   nf_report *report, nf_error *err, const nf_step_mem *mem)
{
    if (mem) /* models in memory: no paths */
        return step_resolved(NULL, NULL, base, task, prev, out, o, step_in_run, nsteps, rp,
                             report, err, mem);
    if (!base || !task || !out)
        return step_resolved(base, task, base, task, prev, out, o, step_in_run, nsteps, rp,
                             report, err, NULL); /* which says what is missing */
    /* Hugging Face model ids (org/name) from the local cache */
    char *b = NULL, *t = NULL, *p = NULL;
    int rc = nf_hf_resolve(base, "--base", &b, err);
    if (rc == NF_OK)
        rc = nf_hf_resolve(task, "task", &t, err);
    if (rc == NF_OK)
        rc = nf_hf_resolve(prev, "--prev", &p, err);
    if (rc == NF_OK)
        rc = step_resolved(base, task, b, t, p, out, o, step_in_run, nsteps, rp, report, err,
                           NULL);
    free(b);
    free(t);
    free(p);
    return rc;
}


/* ---- over several ranks (src/dist) ---- */

/* Ranks write shards of their own: a single file output would need them all to write one
 * file, which shared file systems do not all make safe. */
static int dist_refuse_file(const char *out, nf_error *err)
{
    return nf_error_set(err, NF_E_ARG,
                        "%s: a merge over %d ranks writes a Hugging Face directory; give `out` "
                        "without .safetensors",
                        out, nf_dist_get()->size);
}

/* Which rank computes and writes each tensor: split by the estimated work of the step. */
static int dist_plan(nf_run *run, nf_error *err)
{
    if (ends_with(run->out_path, ".safetensors"))
        return dist_refuse_file(run->out_path, err);
    double *cost = malloc((run->ntensors ? run->ntensors : 1) * sizeof *cost);
    run->owner = malloc((run->ntensors ? run->ntensors : 1) * sizeof *run->owner);
    if (!cost || !run->owner) {
        free(cost);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < run->ntensors; i++)
        cost[i] = tensor_work(run, i, run->prev == NULL);
    nf_dist_split(cost, run->ntensors, nf_dist_get()->size, run->owner);
    free(cost);
    return NF_OK;
}

/* After a pass: every rank gets the per-tensor values the owners computed (the base's tensor
 * hashes, a method's partial results), so that what is combined from them is the same on every
 * rank, bit for bit, and the same as in one process. */
static int dist_join_pass(nf_run *run, int pass, nf_error *err)
{
    if (!run->owner)
        return NF_OK;
    int rc = NF_OK;
    if (pass == 0)
        rc = nf_dist_join_owned(run->base_hash, run->ntensors, sizeof *run->base_hash, run->owner);
    if (rc == NF_OK && run->partial && run->npartial > 0)
        rc = nf_dist_join_owned(run->partial, run->ntensors,
                                (size_t)run->npartial * sizeof *run->partial, run->owner);
    if (rc)
        return nf_error_set(err, rc, "cannot join the ranks' results of pass %d", pass + 1);
    return NF_OK;
}

/* This rank's part of the step's estimated work (run->work known); counts its tensors and
 * their bytes, for progress. */
static double dist_share(nf_run *run)
{
    double mine = 0, all = 0;
    run->nmine = 0;
    run->bytes_total = 0;
    for (size_t i = 0; i < run->ntensors; i++) {
        all += run->work[i];
        if (run->owner[i] == nf_dist_get()->rank) {
            mine += run->work[i];
            run->nmine++;
            run->bytes_total += run->base->tensors[i].nbytes;
        }
    }
    return all > 0 ? mine / all : 1.0;
}

/* Every rank's time, work and device, gathered on rank 0 for the report; there, stats becomes
 * the sum over the ranks. */
static int dist_gather_ranks(nf_run *run, nf_la_stats *stats, double seconds,
                             const nf_device_info *dev, nf_error *err)
{
    const nf_dist *d = nf_dist_get();
    nf_rank_report me;
    memset(&me, 0, sizeof me);
    me.seconds = seconds;
    me.svd_s = stats->svd_s;
    me.train_s = stats->train_s;
    me.flops = stats->flops;
    for (size_t i = 0; i < run->ntensors; i++) {
        if (run->owner[i] != d->rank)
            continue;
        me.tensors++;
        me.bytes += run->out[i].nbytes;
        me.work += run->work ? run->work[i] * run->npasses : 0.0;
    }
    gethostname(me.host, sizeof me.host - 1);
    if (dev)
        snprintf(me.device, sizeof me.device, "%.15s:%d %.96s", dev->api, dev->index, dev->name);
    if (d->rank == 0 && !(run->ranks = calloc((size_t)d->size, sizeof *run->ranks)))
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    int rc = d->gather(&me, sizeof me, run->ranks);
    if (rc)
        return nf_error_set(err, rc, "cannot gather the ranks' figures");
    if (d->rank == 0) {
        run->nranks = d->size;
        memset(stats, 0, sizeof *stats);
        for (int r = 0; r < d->size; r++) {
            stats->svd_s += run->ranks[r].svd_s;
            stats->train_s += run->ranks[r].train_s;
            stats->flops += run->ranks[r].flops;
        }
    }
    return NF_OK;
}

/* The step's inputs: the models the caller opened (mem), or base, task (a checkpoint or a
 * PEFT adapter directory) and prev opened here once what the step writes (out, and the
 * report at report_path) is known not to touch them; checked against the base. With mem,
 * *base, *task and *prev become the models' paths. */
static int open_inputs(nf_run *run, const nf_step_mem *mem, const char **base,
                       const char **task, const char **prev, const char *out,
                       const char *report_path, nf_error *err)
{
    const nf_options *o = run->opts;
    int rc;
    if (mem) {
        if (!mem->base || !mem->task)
            return nf_error_set(err, NF_E_ARG, "a step needs a base and a task model");
        run->base = mem->base;
        run->task = mem->task;
        run->prev = mem->prev;
        *base = run->base->path;
        *task = run->task->path;
        *prev = run->prev ? run->prev->path : NULL;
    } else {
        if (!*base || !*task || !out)
            return nf_error_set(err, NF_E_ARG, "a step needs `base`, `task` and `out`");
        /* what this step writes may not touch its inputs, and replaces only nufilt's kind
         * of output (`force`); checked before anything is opened or computed */
        nf_out_input ins[3] = {{*base, "the base model"},
                               {*task, "the task model"},
                               {*prev, "the previous merge"}};
        nf_out_target tg[2] = {
            {out, run->step_in_run == run->nsteps ? "`out`" : "`save_steps`",
             ends_with(out, ".safetensors") ? NF_OUT_FILE : NF_OUT_DIR},
            {report_path, "`report_path`", NF_OUT_REPORT}};
        nf_outpath_args pa = {ins, 3, tg, report_path ? 2 : 1,
                              nf_is_dir(*base) ? *base : NULL, o->force};
        if ((rc = nf_outpath_check(&pa, err)))
            return rc;
        if ((rc = nf_model_open(*base, &run->base, err)))
            return rc;
        /* a PEFT LoRA adapter directory, or a checkpoint */
        if (nf_adapter_is_dir(*task))
            rc = nf_adapter_open(*task, run->base, &run->adapter, err);
        else
            rc = nf_model_open(*task, &run->task, err);
        if (rc)
            return rc;
        if (*prev && (rc = nf_model_open(*prev, &run->prev, err)))
            return rc;
    }
    if ((rc = check_f8_scales(run->base, "base", err)) ||
        (run->task && (rc = check_f8_scales(run->task, "task", err))) ||
        (run->prev && (rc = check_f8_scales(run->prev, "previous merge", err))))
        return rc;
    run->task_fp = run->adapter ? run->adapter->fingerprint : nf_model_fingerprint(run->task);
    if (run->task && (rc = check_against_base(run->base, run->task, "task", err)))
        return rc;
    if (run->prev && (rc = check_against_base(run->base, run->prev, "previous merge", err)))
        return rc;
    return NF_OK;
}

/* The recipe (options, or the previous merge's), the method, the tensors it treats and the
 * output plan: base order, base dtypes unless --dtype. */
static int plan_step(nf_run *run, const nf_step_mem *mem, const char *out, nf_error *err)
{
    const nf_options *o = run->opts;
    int rc;
    if ((rc = nf_recipe_resolve(o, run->base, run->prev, &run->p, &run->step, &run->prev_state,
                                err)))
        return rc;
    if (run->prev && (rc = check_recorded_base(run->prev, err)))
        return rc;
    if ((rc = svd_resolve(run, o->svd, err)))
        return rc;
    run->method = nf_method_ops_get(run->p.method);
    if ((rc = adopt_one_sided(run, !mem, err)))
        return rc;
    run->state = run->prev_state;
    run->ntensors = run->base->ntensors;
    run->treated = calloc(run->ntensors, 1);
    run->out = calloc(run->ntensors, sizeof *run->out);
    run->reports = calloc(run->ntensors, sizeof *run->reports);
    run->base_hash = calloc(run->ntensors ? run->ntensors : 1, sizeof *run->base_hash);
    run->out_path = out;
    if (!run->treated || !run->out || !run->reports || !run->base_hash)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    if (run->method->params & NF_P_SELECT) {
        if ((rc = nf_select(run->base, run->p.layers ? NULL : run->p.preset, run->p.layers,
                            run->treated, err)))
            return rc;
        size_t ntreated = 0;
        for (size_t i = 0; i < run->ntensors; i++)
            ntreated += run->treated[i];
        if (!ntreated && (rc = refuse_empty_selection(run, err)))
            return rc;
    } else {
        for (size_t i = 0; i < run->ntensors; i++)
            run->treated[i] = nf_dtype_is_float(run->base->tensors[i].dtype) &&
                              nf_is_linear_weight(run->base->tensors[i].name,
                                                  run->base->tensors[i].ndim);
    }
    for (size_t i = 0; i < run->ntensors; i++) {
        const nf_tensor *t = &run->base->tensors[i];
        nf_out_spec *sp = &run->out[i];
        sp->name = t->name;
        sp->dtype = nf_dtype_is_float(t->dtype) && o->out_dtype != NF_DTYPE_INVALID
                        ? o->out_dtype
                        : t->dtype;
        sp->ndim = t->ndim;
        memcpy(sp->shape, t->shape, sizeof sp->shape);
        sp->nbytes = t->numel * nf_dtype_size(sp->dtype);
        run->bytes_total += t->nbytes;
    }
    if (!mem && nf_dist_active())
        return dist_plan(run, err);
    return NF_OK;
}

/* The output: in memory (mem), or a file or Hugging Face directory at out (sharded like the
 * base's unless `out_shard_size`), with the metadata meta. */
static int open_output(nf_run *run, const nf_step_mem *mem, const char *out, int as_dir,
                       const meta_list *meta, nf_error *err)
{
    const nf_options *o = run->opts;
    uint64_t shard = o->out_shard_size;
    if (as_dir && !shard && run->base->indexed) {
        for (size_t s = 0; s < run->base->nshards; s++)
            if (run->base->shards[s].size > shard)
                shard = run->base->shards[s].size;
    }
    nf_writer_args wa = {
        .out = out,
        .as_dir = as_dir,
        .tensors = run->out,
        .ntensors = run->ntensors,
        .meta = meta->kv,
        .nmeta = meta->n,
        .shard_size = as_dir ? shard : 0,
        .copy_from_dir = as_dir && run->base->is_dir ? run->base->path : NULL,
        .force = o->force,
        .what = run->step_in_run == run->nsteps ? "`out`" : "`save_steps`",
        .note = nf_run_note,
        .note_user = run,
        .owner = run->owner,
    };
    if (!as_dir && o->out_shard_size && !mem)
        return nf_error_set(err, NF_E_ARG,
                            "%s: `out_shard_size` needs a directory output (a path not ending "
                            "in .safetensors)",
                            out);
    return mem ? nf_writer_open_memory(mem->sink, run->out, run->ntensors, meta->kv, meta->n,
                                       &run->writer, err)
               : nf_writer_open(&wa, &run->writer, err);
}

/* The method's passes over every tensor on devs with threads workers: begin, each pass
 * (the base checked against the previous merge's after the first), end. */
static int run_passes(nf_run *run, nf_device **devs, int ndev, int threads, const char *out,
                      nf_la_stats *stats, nf_error *err)
{
    int rc = NF_OK;
    if (run->method->begin && (rc = run->method->begin(run))) {
        if (err->code == NF_OK)
            nf_error_set(err, rc, "%s", nf_status_message(rc));
        return rc;
    }
    /* an in-memory output keeps its scratch file in $TMPDIR (or /tmp) */
    char mem_out[4096];
    if (!out) {
        const char *td = getenv("TMPDIR");
        snprintf(mem_out, sizeof mem_out, "%s/nufilt-memory", td && td[0] ? td : "/tmp");
    }
    if (run->want_spill && (rc = spill_open(run, out ? out : mem_out, err)))
        return rc;
    for (int pass = 0; pass < run->npasses && rc == NF_OK; pass++) {
        rc = nf_sched_pass(run, pass, devs, ndev, threads, stats, err);
        if (rc == NF_OK)
            rc = dist_join_pass(run, pass, err);
        if (rc == NF_OK && pass == 0) {
            /* pass 0 hashed every base tensor: the previous merge must come from this base
             * (checked before any later pass, and before anything is committed) */
            run->fingerprint = nf_model_fingerprint_of(run->base, run->base_hash);
            if (run->prev)
                rc = check_same_base(run, err);
        }
        if (rc == NF_OK && run->method->after_pass)
            rc = run->method->after_pass(run, pass);
    }
    if (rc == NF_OK && run->method->end)
        rc = run->method->end(run);
    /* the report's figures of every tensor, from the rank that computed it */
    if (rc == NF_OK && run->owner &&
        (rc = nf_dist_join_owned(run->reports, run->ntensors, sizeof *run->reports, run->owner)))
        nf_error_set(err, rc, "cannot gather the ranks' per-tensor figures");
    if (rc != NF_OK && err->code == NF_OK)
        nf_error_set(err, rc, "%s", nf_status_message(rc));
    return rc;
}

static int step_resolved(const char *base_given, const char *task_given, const char *base,
                         const char *task, const char *prev, const char *out,
                         const nf_options *o, int step_in_run, int nsteps,
                         nf_run_progress *rp, nf_report *report, nf_error *err,
                         const nf_step_mem *mem)
{
    nf_run run;
    memset(&run, 0, sizeof run);
    run.spill_fd = -1;
    pthread_mutex_init(&run.lock, NULL);
    run.opts = o;
    run.err = err;
    run.step_in_run = step_in_run;
    run.nsteps = nsteps;
    nf_run_progress own = {nf_now(), 0.0};
    if (!rp)
        rp = &own;
    run.rp = rp;
    nf_device **devs = NULL;
    int ndev = 0;
    int rc = NF_OK;
    int blas_threads = 0;
    double t0 = nf_now();
    meta_list meta = {0};

    const char *report_path = report && step_in_run == nsteps ? nf_report_path(report) : NULL;
    if ((rc = open_inputs(&run, mem, &base, &task, &prev, out, report_path, err)) ||
        (rc = plan_step(&run, mem, out, err)))
        goto done;
    if ((rc = build_meta(&run, task_given, task, &meta))) {
        rc = nf_error_set(err, rc, "out of memory");
        goto done;
    }
    int as_dir = !mem && !ends_with(out, ".safetensors");
    if ((rc = open_output(&run, mem, out, as_dir, &meta, err)))
        goto done;

    /* devices and threads */
    if ((rc = nf_devices_open(o->device, &devs, &ndev, err)))
        goto done;
    int threads = o->threads > 0 ? o->threads : cpu_count();
    /* one OpenBLAS thread per worker for the step (the CPU kernels run in every worker,
     * whatever the device); the caller's setting comes back after */
    blas_threads = nf_backend_cpu.set_threads(1);

    run.npasses = run.method->npasses;
    run.t_start = nf_now();
    {
        double here = 0, later = 0;
        if (plan_work(&run, &here, &later)) {
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            goto done;
        }
        if (run.owner) {
            /* over several ranks, rank 0's bar follows its own part (the split balances the
             * estimated work, so the ranks finish together) */
            double share = dist_share(&run);
            here *= share;
            later *= share;
        }
        run.work_step = here;
        run.work_run = rp->work_done + here + (double)(nsteps - step_in_run) * later;
    }
    nf_la_stats stats = {0};
    if ((rc = run_passes(&run, devs, ndev, threads, out, &stats, err)) ||
        (run.owner && (rc = dist_gather_ranks(&run, &stats, nf_now() - t0,
                                              devs && ndev ? nf_device_get_info(devs[0]) : NULL,
                                              err))))
        goto done;
    /* the state the method arrived at, and the base's fingerprint, go into the metadata */
    meta_free(&meta);
    if ((rc = build_meta(&run, task_given, task, &meta)) ||
        (rc = nf_writer_set_meta(run.writer, meta.kv, meta.n, err))) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto done;
    }
    if (as_dir && ((rc = add_hf_files(&run, base_given, base, &meta, err)) ||
                   (rc = nf_writer_copy_tree(run.writer, err))))
        goto done;
    /* the report is written (beside its path) before the output is committed, and moved
     * into place after: one that cannot be written leaves nothing committed */
    if (report &&
        ((rc = nf_report_add_step(report, &run, task, out ? out : "(memory)", &stats, nf_now() - t0,
                                  devs && ndev ? nf_device_get_info(devs[0]) : NULL, err)) ||
         (report_path && (rc = nf_report_prepare(report, err)))))
        goto done;
    rc = nf_writer_commit(run.writer, err);
    run.writer = NULL;
    if (rc) {
        nf_report_discard(report);
        goto done;
    }
    rp->work_done += run.work_step;
    if (report_path)
        rc = nf_report_commit(report, err);
done:
    meta_free(&meta);
    if (blas_threads > 0)
        nf_backend_cpu.set_threads(blas_threads);
    nf_devices_close(devs, ndev);
    run_free(&run, mem);
    return rc;
}

int nf_step(const char *base, const char *task, const char *prev, const char *out,
            const nf_options *options, nf_error *err)
{
    nf_options full;
    const nf_options *opts = &full;
    int rc = nf_options_import(options, &full, err);
    if (rc)
        return rc;
    nf_report *rep = NULL;
    if (opts->report_path &&
        ((rc = nf_report_new(&rep, err)) ||
         (rc = nf_report_set_path(rep, opts->report_path, opts->force, err)))) {
        nf_report_free(rep);
        return rc;
    }
    nf_run_progress rp = {nf_now(), 0.0};
    rc = nf_step_in_run(base, task, prev, out, opts, 1, 1, &rp, rep, err, NULL);
    nf_report_free(rep);
    return rc;
}

/* ---- a whole stream ---- */

static char *step_path(const char *dir, int t, int as_dir)
{
    char name[64];
    snprintf(name, sizeof name, as_dir ? "step%02d" : "step%02d.safetensors", t);
    return nf_path_join(dir, name);
}

/* Every path a merge will write (--out, --report, --save-steps and each stepNN in it)
 * against every input and each other, before the first step computes. */
static int merge_check_paths(const char *base, const char *const *tasks, int ntasks,
                             const char *out, const char *save_steps_dir, const nf_options *o,
                             int as_dir, int done, nf_error *err)
{
    if (!as_dir && nf_dist_active())
        return dist_refuse_file(out, err);
    size_t nin = (size_t)ntasks + 1, ntg = 0;
    nf_out_input *ins = calloc(nin, sizeof *ins);
    nf_out_target *tg = calloc((size_t)ntasks + 3, sizeof *tg);
    char **steps = calloc((size_t)ntasks + 1, sizeof *steps);
    char (*whats)[48] = calloc((size_t)ntasks + 1, sizeof *whats);
    int rc = NF_OK;
    if (!ins || !tg || !steps || !whats) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto done;
    }
    ins[0] = (nf_out_input){base, "the base model"};
    for (int t = 0; t < ntasks; t++) {
        snprintf(whats[t], sizeof whats[t], "task model %d", t + 1);
        ins[t + 1] = (nf_out_input){tasks[t], whats[t]};
    }
    tg[ntg++] = (nf_out_target){out, "`out`", as_dir ? NF_OUT_DIR : NF_OUT_FILE};
    if (o->report_path)
        tg[ntg++] = (nf_out_target){o->report_path, "`report_path`", NF_OUT_REPORT};
    if (save_steps_dir) {
        tg[ntg++] = (nf_out_target){save_steps_dir, "`save_steps`", NF_OUT_STEPS_DIR};
        for (int t = done + 1; t <= ntasks; t++) { /* `resume` keeps steps 1 .. done */
            steps[t - 1] = step_path(save_steps_dir, t, as_dir);
            if (!steps[t - 1]) {
                rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
                goto done;
            }
            tg[ntg++] = (nf_out_target){steps[t - 1], "`save_steps`",
                                        as_dir ? NF_OUT_DIR : NF_OUT_FILE};
        }
    }
    nf_outpath_args pa = {ins, nin, tg, ntg, nf_is_dir(base) ? base : NULL, o->force};
    rc = nf_outpath_check(&pa, err);
done:
    for (int t = 0; steps && t < ntasks; t++)
        free(steps[t]);
    free(steps);
    free(whats);
    free(tg);
    free(ins);
    return rc;
}

/* The name a stream records for task i given by its (resolved) path, as task_name_of does:
 * NAME of NAME=PATH, else the model id of a cache snapshot, else the file or folder name. */
static char *task_record_name(const nf_options *o, int i, const char *path)
{
    if (o->task_names && o->task_names[i])
        return nf_strdup(o->task_names[i]);
    char *id = nf_hf_model_id(path);
    return id ? id : nf_path_stem(path);
}

/* The fingerprint a step records for the task at path (a checkpoint or an adapter of base). */
static int task_fingerprint(const char *path, const nf_model *base, uint64_t *fp,
                            nf_error *err)
{
    if (nf_adapter_is_dir(path)) {
        nf_adapter *ad = NULL;
        int rc = nf_adapter_open(path, base, &ad, err);
        if (!rc)
            *fp = ad->fingerprint;
        nf_adapter_close(ad);
        return rc;
    }
    nf_model *m = NULL;
    int rc = nf_model_open(path, &m, err);
    if (!rc)
        *fp = nf_model_fingerprint(m);
    nf_model_close(m);
    return rc;
}

/* --resume: the last of the contiguous steps DIR/step01 .. DIR/stepK already written, checked
 * to continue this stream: a valid checkpoint recording step K, merged from this base, whose
 * recorded task list is the first K given tasks (names, and fingerprints where recorded),
 * with a recipe the options agree with. *k = 0 when there is none. */
static int resume_point(const char *base, const char *const *tasks, int ntasks,
                        const char *dir, int as_dir, const nf_options *o, int *k_out,
                        nf_error *err)
{
    int k = 0;
    *k_out = 0;
    for (int t = 1; t <= ntasks; t++) {
        char *p = step_path(dir, t, as_dir);
        if (!p)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
        int ex = nf_exists(p);
        free(p);
        if (!ex)
            break;
        k = t;
    }
    if (k == 0)
        return NF_OK;
    char *last = step_path(dir, k, as_dir);
    nf_model *bm = NULL, *sm = NULL;
    nf_json *j = NULL;
    nf_params par;
    memset(&par, 0, sizeof par);
    int rc = last ? NF_OK : nf_error_set(err, NF_E_NOMEM, "out of memory");
    if (!rc) rc = nf_model_open(base, &bm, err);
    if (!rc) rc = nf_model_open(last, &sm, err);
    if (rc)
        goto out;
    {
        char mine[48];
        snprintf(mine, sizeof mine, NF_FINGERPRINT_PREFIX "%016llx",
                 (unsigned long long)nf_model_fingerprint(bm));
        const char *fp = nf_model_metadata_get(sm, "nufilt.base");
        const char *tj = nf_model_metadata_get(sm, "nufilt.tasks");
        if (!fp || !tj) {
            rc = nf_error_set(err, NF_E_STATE,
                              "`resume`: %s has no merge history in its metadata: not a step "
                              "nufilt wrote",
                              last);
            goto out;
        }
        if (strcmp(fp, mine) != 0) {
            rc = nf_error_set(err, NF_E_STATE,
                              "`resume`: %s was merged from another base model than %s (base "
                              "fingerprint %.32s, this base %s)",
                              last, base, fp, mine);
            goto out;
        }
        j = nf_json_parse(tj, strlen(tj), NULL, 0);
        if (!j || j->type != NF_JSON_ARRAY || j->n != (size_t)k) {
            rc = nf_error_set(err, NF_E_STATE,
                              "`resume`: %s records %s tasks, not the %d of step %d", last,
                              j && j->type == NF_JSON_ARRAY ? "a different number of" : "no valid",
                              k, k);
            goto out;
        }
        for (int i = 0; i < k; i++) {
            const nf_json *e = &j->items[i];
            const nf_json *n = nf_json_get(e, "name"), *f = nf_json_get(e, "fingerprint");
            char *want = task_record_name(o, i, tasks[i]);
            if (!want) {
                rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
                goto out;
            }
            int same = n && n->type == NF_JSON_STRING && strcmp(n->str, want) == 0;
            if (!same) {
                rc = nf_error_set(err, NF_E_STATE,
                                  "`resume`: task %d of the saved steps in %s is \"%.200s\", but "
                                  "task %d given now is \"%s\" (%s): not the same stream",
                                  i + 1, dir,
                                  n && n->type == NF_JSON_STRING ? n->str : "(unnamed)", i + 1,
                                  want, tasks[i]);
                free(want);
                goto out;
            }
            free(want);
            if (f && f->type == NF_JSON_STRING) {
                uint64_t have = 0;
                char buf[32];
                if ((rc = task_fingerprint(tasks[i], bm, &have, err)))
                    goto out;
                snprintf(buf, sizeof buf, "%016llx", (unsigned long long)have);
                if (strcmp(buf, f->str) != 0) {
                    rc = nf_error_set(err, NF_E_STATE,
                                      "`resume`: %s is not the task %d that %s merged "
                                      "(fingerprint %s, recorded %.32s): it changed since",
                                      tasks[i], i + 1, last, buf, f->str);
                    goto out;
                }
            }
        }
        /* the recipe: options that disagree with the saved step are refused here */
        int step = 0;
        nf_state st;
        if ((rc = nf_recipe_resolve(o, bm, sm, &par, &step, &st, err)))
            goto out;
        if (step != k + 1) {
            rc = nf_error_set(err, NF_E_STATE,
                              "`resume`: %s records step %d, but it is the %d-th saved step",
                              last, step - 1, k);
            goto out;
        }
    }
    *k_out = k;
out:
    nf_params_free(&par);
    nf_json_free(j);
    nf_model_close(bm);
    nf_model_close(sm);
    free(last);
    return rc;
}

/* A scratch directory rank 0 created (the path in sb), named to every rank and registered
 * for removal by each. */
static int dist_share_dir(nf_sb *sb)
{
    char name[PATH_MAX];
    memset(name, 0, sizeof name);
    const nf_dist *d = nf_dist_get();
    if (d->rank == 0)
        snprintf(name, sizeof name, "%s", sb->s);
    if (d->bcast(name, sizeof name) || !name[0])
        return -1;
    if (d->rank == 0)
        return 0;
    nf_sb_free(sb);
    nf_sb_puts(sb, name);
    return sb->oom || nf_tmp_register(name, 1) < 0 ? -1 : 0;
}

/* A merge's scratch directory for the intermediate models when no steps are saved:
 * ".STEM.steps-XXXXXX" beside out (whose directory is created if missing, as the output's
 * writer would), registered for removal on a terminating signal. */
static int make_scratch(const char *out, char **scratch, nf_error *err)
{
    int rc;
    char *odir = nf_strdup(out);
    char *sl = odir ? strrchr(odir, '/') : NULL;
    if (sl && sl != odir) {
        *sl = '\0';
        if (nf_mkdirs(odir) != 0) {
            rc = nf_error_set(err, NF_E_IO, "%s: cannot create its directory: %s", out,
                              strerror(errno));
            free(odir);
            return rc;
        }
    }
    free(odir);
    nf_sb sb = {0};
    char *stem = nf_path_stem(out);
    char *parent = nf_strdup(out);
    if (!stem || !parent) {
        free(stem);
        free(parent);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    char *slash = strrchr(parent, '/');
    if (slash)
        slash[slash == parent ? 1 : 0] = '\0';
    nf_sb_printf(&sb, "%s/.%s.steps-XXXXXX", slash ? parent : ".", stem);
    free(stem);
    free(parent);
    /* created and registered for removal with SIGINT/SIGTERM blocked in between (over
     * several ranks: by rank 0, named to the others, registered by every rank) */
    if (sb.oom || (nf_dist_get()->rank == 0 && !nf_tmp_mkdtemp(sb.s)) ||
        (nf_dist_active() && dist_share_dir(&sb))) {
        rc = nf_error_set(err, NF_E_IO, "%s: cannot create a scratch directory beside it",
                          out);
        nf_sb_free(&sb);
        return rc;
    }
    *scratch = sb.s;
    return NF_OK;
}

/* Removes a merge's scratch directory (NULL: none) and its registration. Over several ranks,
 * rank 0 removes it once every rank is done with it (a failed run: each rank). */
static void drop_scratch(char *scratch, int rc)
{
    if (scratch) {
        if (rc || nf_dist_get()->rank == 0)
            nf_remove_tree(scratch);
        nf_tmp_unregister(scratch);
        free(scratch);
    }
}

/* The end of a merge: the ranks finish together (rank 0 may still be copying the last step),
 * then the scratch directory goes. Returns rc. */
static int end_merge(char *scratch, int rc, nf_error *err)
{
    if (rc == NF_OK && nf_dist_active() && nf_dist_get()->barrier())
        rc = nf_error_set(err, NF_E_IO, "the ranks did not finish together");
    drop_scratch(scratch, rc);
    return rc;
}

/* Over several ranks, rank 0 alone removes and copies what all of them wrote. */
static int lead(void) { return nf_dist_get()->rank == 0; }

static int merge_resolved(const char *base, const char *const *tasks, int ntasks,
                          const char *out, const char *save_steps_dir, const nf_options *opts,
                          nf_error *err)
{
    nf_options o;
    int rc = nf_options_import(opts, &o, err);
    if (rc)
        return rc;
    if (ntasks < 1)
        return nf_error_set(err, NF_E_ARG, "merge needs at least one task model");
    int as_dir = !ends_with(out, ".safetensors");
    char *scratch = NULL;
    int done = 0; /* steps already in save_steps_dir (--resume) */
    if (o.resume && !save_steps_dir)
        return nf_error_set(err, NF_E_ARG,
                            "`resume` needs `save_steps`: the directory holding the steps of "
                            "the interrupted run");
    if (o.resume && (rc = resume_point(base, tasks, ntasks, save_steps_dir, as_dir, &o, &done,
                                       err)))
        return rc;
    if ((rc = merge_check_paths(base, tasks, ntasks, out, save_steps_dir, &o, as_dir, done,
                                err)))
        return rc;
    if (save_steps_dir) {
        if (nf_mkdirs(save_steps_dir) != 0)
            return nf_error_set(err, NF_E_IO, "%s: cannot create: %s", save_steps_dir,
                                strerror(errno));
    } else if (ntasks > 1 && (rc = make_scratch(out, &scratch, err))) {
        return rc;
    }
    nf_report *rep = NULL;
    if (o.report_path &&
        ((rc = nf_report_new(&rep, err)) ||
         (rc = nf_report_set_path(rep, o.report_path, o.force, err)))) {
        nf_report_free(rep);
        drop_scratch(scratch, rc);
        return rc;
    }
    nf_run_progress rp = {nf_now(), 0.0};
    char *prev = done ? step_path(save_steps_dir, done, as_dir) : NULL;
    if (done && !prev)
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
    if (rc == NF_OK && done == ntasks && lead()) {
        /* every step was kept: only the output may be missing */
        rc = nf_link_or_copy(prev, out, err);
    }
    for (int t = done + 1; t <= ntasks && rc == NF_OK; t++) {
        char *dst;
        if (t == ntasks)
            dst = nf_strdup(out);
        else
            dst = step_path(save_steps_dir ? save_steps_dir : scratch, t, as_dir);
        if (!dst) {
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            break;
        }
        nf_options so = o;
        so.report_path = NULL;
        so.task_name = o.task_names ? o.task_names[t - 1] : NULL;
        so.force = t == ntasks ? o.force : 1;
        rc = nf_step_in_run(base, tasks[t - 1], prev, dst, &so, t, ntasks, &rp, rep, err,
                            NULL);
        if (rc == NF_OK && t == ntasks && save_steps_dir && lead()) {
            char *sp = step_path(save_steps_dir, t, as_dir);
            rc = sp ? nf_link_or_copy(dst, sp, err) : nf_error_set(err, NF_E_NOMEM, "out of memory");
            free(sp);
        }
        if (prev && !save_steps_dir && lead())
            nf_remove_tree(prev);
        free(prev);
        prev = dst;
    }
    free(prev);
    rc = end_merge(scratch, rc, err);
    nf_report_free(rep);
    return rc;
}

int nf_step_models(nf_model *base, nf_model *task, nf_model *prev, const nf_sink *out,
                   const nf_options *options, nf_error *err)
{
    nf_options o;
    int rc = nf_options_import(options, &o, err);
    if (rc)
        return rc;
    if (!out)
        return nf_error_set(err, NF_E_ARG, "nf_step_models: no output (nf_sink) given");
    if (o.out_shard_size)
        return nf_error_set(err, NF_E_ARG,
                            "`out_shard_size` applies to file outputs, not to nf_step_models");
    nf_step_mem mem = {base, task, prev, out};
    nf_report *rep = NULL;
    if (o.report_path &&
        ((rc = nf_report_new(&rep, err)) ||
         (rc = nf_report_set_path(rep, o.report_path, o.force, err)))) {
        nf_report_free(rep);
        return rc;
    }
    rc = nf_step_in_run(NULL, NULL, NULL, NULL, &o, 1, 1, NULL, rep, err, &mem);
    nf_report_free(rep);
    return rc;
}

int nf_merge(const char *base, const char *const *tasks, int ntasks, const char *out,
             const char *save_steps_dir, const nf_options *opts, nf_error *err)
{
    if (ntasks < 1 || !tasks)
        return nf_error_set(err, NF_E_ARG, "merge needs at least one task model");
    /* Hugging Face model ids (org/name) from the local cache, before the path checks; the
     * ids come back from the snapshot paths for the card and the task names */
    char **t = calloc((size_t)ntasks, sizeof *t);
    char *b = NULL;
    int rc = t ? nf_hf_resolve(base, "--base", &b, err)
               : nf_error_set(err, NF_E_NOMEM, "out of memory");
    for (int i = 0; i < ntasks && rc == NF_OK; i++) {
        char what[32];
        snprintf(what, sizeof what, "task %d", i + 1);
        rc = nf_hf_resolve(tasks[i], what, &t[i], err);
    }
    if (rc == NF_OK)
        rc = merge_resolved(b, (const char *const *)t, ntasks, out, save_steps_dir, opts, err);
    for (int i = 0; t && i < ntasks; i++)
        free(t[i]);
    free(t);
    free(b);
    return rc;
}
