#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/util.h"
#include "recipe.h"

struct nf_report {
    nf_sb steps;
    int n;
};

int nf_report_new(nf_report **out, nf_error *err)
{
    *out = calloc(1, sizeof **out);
    return *out ? NF_OK : nf_error_set(err, NF_E_NOMEM, "out of memory");
}

void nf_report_free(nf_report *r)
{
    if (r) {
        nf_sb_free(&r->steps);
        free(r);
    }
}

static void str(nf_sb *b, const char *s) { nf_sb_json_str(b, s, strlen(s)); }

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
    if (dev) {
        nf_sb_puts(b, ",\n      \"device\": ");
        char d[400];
        snprintf(d, sizeof d, "%s:%d %s", dev->api, dev->index, dev->name);
        str(b, d);
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
                 "\"treated_tensor_seconds\": %.3f, \"gflop\": %.3f, \"svd_precise\": %u}\n    }",
                 seconds, stats->svd_s, stats->train_s, tt, stats->flops * 1e-9,
                 stats->svd_precise);
    if (b->oom)
        return nf_error_set(err, NF_E_NOMEM, "out of memory building the report");
    return NF_OK;
}

int nf_report_write(nf_report *r, const char *path, nf_error *err)
{
    nf_sb out = {0};
    nf_sb_printf(&out, "{\n  \"nufilt_version\": \"%s\",\n  \"steps\": [\n%s\n  ]\n}\n",
                 NF_VERSION_STRING, r->steps.s ? r->steps.s : "");
    if (out.oom) {
        nf_sb_free(&out);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    nf_sb tmp = {0};
    nf_sb_printf(&tmp, "%s.tmp-%ld", path, (long)getpid());
    int rc = NF_OK;
    int fd = tmp.oom ? -1 : open(tmp.s, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report: %s", path, strerror(errno));
    } else {
        size_t off = 0;
        while (off < out.len) {
            ssize_t w = write(fd, out.s + off, out.len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report: %s", path,
                                  strerror(errno));
                break;
            }
            off += (size_t)w;
        }
        if (close(fd) != 0 && rc == NF_OK)
            rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report", path);
        if (rc == NF_OK && rename(tmp.s, path) != 0)
            rc = nf_error_set(err, NF_E_IO, "%s: cannot write the report: %s", path,
                              strerror(errno));
        if (rc != NF_OK)
            unlink(tmp.s);
    }
    nf_sb_free(&tmp);
    nf_sb_free(&out);
    return rc;
}
