#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/util.h"
#include "../io/writer.h"
#include "recipe.h"

struct nf_report {
    nf_sb steps;
    int n;
    char *path; /* where it goes */
    int force;  /* may replace an existing report */
    char *tmp;  /* prepared, not yet moved into place */
};

int nf_report_new(nf_report **out, nf_error *err)
{
    *out = calloc(1, sizeof **out);
    return *out ? NF_OK : nf_error_set(err, NF_E_NOMEM, "out of memory");
}

void nf_report_free(nf_report *r)
{
    if (r) {
        nf_report_discard(r);
        nf_sb_free(&r->steps);
        free(r->path);
        free(r);
    }
}

static void str(nf_sb *b, const char *s) { nf_sb_json_str(b, s, strlen(s)); }

/* Rank r's part of the step's estimated work. */
static double rank_share(const nf_run *run, int r)
{
    double all = 0;
    for (int k = 0; k < run->nranks; k++)
        all += run->ranks[k].work;
    return all > 0 ? run->ranks[r].work / all : 0.0;
}

int nf_report_add_step(nf_report *r, const nf_run *run, const char *task, const char *out,
                       const nf_la_stats *stats, double seconds, const nf_device_info *dev,
                       nf_error *err)
{
    nf_sb *b = &r->steps;
    if (r->n++)
        nf_sb_puts(b, ",\n");
    nf_sb_printf(b, "    {\n      \"step\": %d,\n      \"method\": ", run->step);
    str(b, run->method->info.name);
    nf_sb_puts(b, ",\n      \"task\": ");
    str(b, task);
    nf_sb_puts(b, ",\n      \"output\": ");
    str(b, out);
    char *pj = nf_params_json(&run->p);
    nf_sb_printf(b, ",\n      \"params\": %s", pj ? pj : "{}");
    free(pj);
    if (run->svd_used) { /* the SVD mode, and whether it differs from the previous step's */
        nf_sb_puts(b, ",\n      \"svd\": ");
        str(b, run->svd_used);
        if (run->prev) {
            nf_sb_puts(b, ", \"svd_previous\": ");
            if (run->svd_prev)
                str(b, run->svd_prev);
            else
                nf_sb_puts(b, "null");
            nf_sb_printf(b, ", \"svd_changed\": %s",
                         run->svd_prev && strcmp(run->svd_prev, run->svd_used) != 0 ? "true"
                                                                                    : "false");
        }
    }
    if (dev) {
        nf_sb_puts(b, ",\n      \"device\": ");
        char d[400];
        snprintf(d, sizeof d, "%s:%d %s", dev->api, dev->index, dev->name);
        str(b, d);
    }
    if (run->nnotes) {
        /* what was tolerated or left out (one-sided integer buffers, files not copied) */
        nf_sb_puts(b, ",\n      \"notes\": [");
        for (size_t i = 0; i < run->nnotes; i++) {
            nf_sb_puts(b, i ? ",\n        " : "\n        ");
            str(b, run->notes[i]);
        }
        nf_sb_puts(b, "\n      ]");
    }
    if (run->nranks > 1) {
        /* a merge over several ranks: each one's share and time */
        nf_sb_puts(b, ",\n      \"ranks\": [");
        for (int r = 0; r < run->nranks; r++) {
            const nf_rank_report *k = &run->ranks[r];
            nf_sb_printf(b,
                         "%s{\"rank\": %d, \"tensors\": %llu, \"bytes\": %llu, "
                         "\"work_share\": %.4f, \"seconds\": %.3f, \"svd_seconds\": %.3f, "
                         "\"train_seconds\": %.3f, \"gflop\": %.3f, \"host\": ",
                         r ? ",\n        " : "\n        ", r, (unsigned long long)k->tensors,
                         (unsigned long long)k->bytes, rank_share(run, r), k->seconds, k->svd_s,
                         k->train_s, k->flops * 1e-9);
            str(b, k->host);
            nf_sb_puts(b, ", \"device\": ");
            str(b, k->device);
            nf_sb_puts(b, "}");
        }
        nf_sb_puts(b, "\n      ]");
    }
    nf_sb_puts(b, ",\n      \"tensors\": [");
    size_t treated = 0;
    double rem_sum = 0, ob = 0, oa = 0, tt = 0;
    for (size_t i = 0; i < run->ntensors; i++) {
        const nf_tensor_report *t = &run->reports[i];
        if (!t->treated)
            continue;
        const nf_tensor *bt = &run->base->tensors[i];
        nf_sb_puts(b, treated++ ? ",\n        {" : "\n        {");
        nf_sb_puts(b, "\"name\": ");
        str(b, bt->name);
        nf_sb_printf(b, ", \"shape\": [%lld, %lld]", (long long)bt->shape[0],
                     (long long)(bt->ndim > 1 ? bt->shape[1] : 1));
        nf_sb_printf(b, ", \"rank_null\": %d, \"rank_task\": %d, \"rank_lora\": %d",
                     t->rank_null, t->rank_task, t->rank_lora);
        nf_sb_puts(b, ", \"filter_removed\": ");
        nf_sb_json_num(b, t->filter_removed);
        if (t->trained) {
            nf_sb_puts(b, ", \"objective_before\": ");
            nf_sb_json_num(b, t->obj_before);
            nf_sb_puts(b, ", \"objective_after\": ");
            nf_sb_json_num(b, t->obj_after);
            ob += t->obj_before;
            oa += t->obj_after;
        }
        nf_sb_printf(b, ", \"seconds\": %.4f}", t->seconds);
        rem_sum += t->filter_removed;
        tt += t->seconds;
    }
    nf_sb_puts(b, treated ? "\n      ],\n" : "],\n");
    nf_sb_printf(b,
                 "      \"totals\": {\"tensors\": %zu, \"treated\": %zu, "
                 "\"mean_filter_removed\": ",
                 run->ntensors, treated);
    nf_sb_json_num(b, treated ? rem_sum / (double)treated : 0.0);
    nf_sb_puts(b, ", \"objective_before\": ");
    nf_sb_json_num(b, ob);
    nf_sb_puts(b, ", \"objective_after\": ");
    nf_sb_json_num(b, oa);
    nf_sb_printf(b,
                 ", \"seconds\": %.3f, \"svd_seconds\": %.3f, \"train_seconds\": %.3f, "
                 "\"treated_tensor_seconds\": %.3f, \"gflop\": %.3f, \"svd_precise\": %u, "
                 "\"svd_retries\": %u}\n    }",
                 seconds, stats->svd_s, stats->train_s, tt, stats->flops * 1e-9,
                 stats->svd_precise, stats->svd_retries);
    if (b->oom)
        return nf_error_set(err, NF_E_NOMEM, "out of memory building the report");
    return NF_OK;
}

/* Directory part of path ("." when none). */
static char *dir_part(const char *path)
{
    size_t len, s = nf_path_last(path, &len);
    if (s == 0)
        return nf_strdup(".");
    while (s > 1 && path[s - 1] == '/')
        s--;
    return nf_strndup(path, s);
}

int nf_report_set_path(nf_report *r, const char *path, int force, nf_error *err)
{
    free(r->path);
    r->path = nf_strdup(path);
    r->force = force;
    return r->path ? NF_OK : nf_error_set(err, NF_E_NOMEM, "out of memory");
}

const char *nf_report_path(const nf_report *r) { return r ? r->path : NULL; }

int nf_report_prepare(nf_report *r, nf_error *err)
{
    const char *path = r->path;
    nf_sb out = {0};
    nf_sb_printf(&out, "{\n  \"nufilt_version\": \"%s\",\n  \"steps\": [\n%s\n  ]\n}\n",
                 NF_VERSION_STRING, r->steps.s ? r->steps.s : "");
    if (out.oom) {
        nf_sb_free(&out);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    nf_report_discard(r);
    /* beside the report, in its directory (created if missing, as --out's is) */
    int rc = NF_OK;
    char *dir = dir_part(path);
    if (!dir || nf_mkdirs(dir) != 0) {
        rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report: cannot create %s: %s",
                          path, dir ? dir : "its directory", strerror(errno));
        free(dir);
        nf_sb_free(&out);
        return rc;
    }
    free(dir);
    r->tmp = nf_tmp_template(path);
    int fd = r->tmp ? nf_tmp_mkstemp(r->tmp) : -1;
    if (fd < 0) {
        rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report: %s", path,
                          r->tmp ? strerror(errno) : "out of memory");
        free(r->tmp);
        r->tmp = NULL;
        nf_sb_free(&out);
        return rc;
    }
    size_t off = 0;
    while (off < out.len) {
        ssize_t w = write(fd, out.s + off, out.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report: %s", path,
                              w < 0 ? strerror(errno) : "no progress");
            break;
        }
        off += (size_t)w;
    }
    if (rc == NF_OK && fsync(fd) != 0)
        rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report: %s", path,
                          strerror(errno));
    if (close(fd) != 0 && rc == NF_OK)
        rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report: %s", path,
                          strerror(errno));
    nf_sb_free(&out);
    if (rc != NF_OK)
        nf_report_discard(r);
    return rc;
}

int nf_report_commit(nf_report *r, nf_error *err)
{
    if (!r->tmp)
        return nf_error_set(err, NF_E_INTERNAL, "%s: the report was not prepared", r->path);
    int rc = NF_OK;
    if (renameat2(AT_FDCWD, r->tmp, AT_FDCWD, r->path, RENAME_NOREPLACE) != 0) {
        int e = errno;
        if (e == EEXIST && !r->force)
            rc = nf_error_set(err, NF_E_EXISTS,
                              "%s: the report appeared meanwhile (use `force` to replace it)",
                              r->path);
        else if ((e == EEXIST || e == EINVAL || e == ENOSYS) && rename(r->tmp, r->path) == 0)
            rc = NF_OK;
        else
            rc = nf_error_set(err, NF_E_IO, "%s: cannot move the report into place: %s",
                              r->path, strerror(e == EEXIST || e == EINVAL ? errno : e));
    }
    if (rc != NF_OK) {
        nf_report_discard(r);
        return rc;
    }
    nf_tmp_unregister(r->tmp);
    free(r->tmp);
    r->tmp = NULL;
    char *dir = dir_part(r->path);
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    return NF_OK;
}

void nf_report_discard(nf_report *r)
{
    if (!r || !r->tmp)
        return;
    unlink(r->tmp);
    nf_tmp_unregister(r->tmp);
    free(r->tmp);
    r->tmp = NULL;
}
