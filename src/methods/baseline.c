/* Shared pieces of the continual baselines; see baseline.h. */
#include "baseline.h"

#include <stdlib.h>
#include <string.h>

int bl_is_linear_weight(const nf_tensor *t)
{
    size_t n = strlen(t->name);
    int w = strcmp(t->name, "weight") == 0 ||
            (n >= 7 && strcmp(t->name + n - 7, ".weight") == 0);
    return t->ndim == 2 && w && !strstr(t->name, "embed");
}

int bl_stream(nf_job *job, unsigned inputs, bl_fn fn, void *ctx)
{
    int write = (inputs & BL_WRITE) != 0;
    uint64_t numel = job->base->numel;
    size_t cap = numel < BL_CHUNK ? (size_t)(numel ? numel : 1) : BL_CHUNK;
    if (!job->prev)
        inputs &= ~BL_PREV;
    float *buf[5] = {0};
    const nf_tensor *src[3] = {job->base, job->prev, job->task};
    int rc = NF_OK;
    for (int i = 0; i < 5 && rc == NF_OK; i++) {
        int want = i < 4 ? (inputs >> i) & 1u : (inputs & (BL_OUT | BL_WRITE)) != 0;
        if (want && !(buf[i] = malloc(cap * sizeof(float))))
            rc = nf_error_set(job->err, NF_E_NOMEM, "out of memory streaming \"%s\"",
                              job->base->name);
    }
    for (uint64_t s = 0; s < numel && rc == NF_OK; s += cap) {
        size_t c = numel - s < cap ? (size_t)(numel - s) : cap;
        for (int i = 0; i < 3 && rc == NF_OK; i++)
            if (buf[i])
                rc = nf_job_read_f32(job, src[i], s, c, buf[i]);
        if (rc == NF_OK && buf[3])
            rc = nf_job_spill_read_at(job, s, buf[3], c);
        if (rc)
            break;
        bl_chunk ch = {s, c, buf[0], buf[1], buf[2], buf[3], buf[4]};
        rc = fn(job, ctx, &ch);
        if (rc == NF_OK && write)
            rc = nf_job_put_f32_at(job, s, buf[4], c);
    }
    for (int i = 0; i < 5; i++)
        free(buf[i]);
    return rc;
}

static int copy_task(nf_job *job, void *ctx, const bl_chunk *c)
{
    (void)job;
    (void)ctx;
    memcpy(c->out, c->task, c->n * sizeof(float));
    return NF_OK;
}

int bl_first_task(nf_job *job) { return bl_stream(job, BL_TASK | BL_WRITE, copy_task, NULL); }

static int first_scaled(nf_job *job, void *ctx, const bl_chunk *c)
{
    (void)job;
    float lam = *(const float *)ctx;
    for (size_t i = 0; i < c->n; i++)
        c->out[i] = c->base[i] + lam * (c->task[i] - c->base[i]);
    return NF_OK;
}

int bl_first_scaled(nf_job *job, float scale)
{
    return bl_stream(job, BL_BASE | BL_TASK | BL_WRITE, first_scaled, &scale);
}

static int mean_chunk(nf_job *job, void *ctx, const bl_chunk *c)
{
    (void)job;
    float lam = *(const float *)ctx;
    for (size_t i = 0; i < c->n; i++) {
        float m = c->prev[i] - c->base[i], t = c->task[i] - c->base[i];
        c->out[i] = c->base[i] + lam * (0.5f * (m + t));
    }
    return NF_OK;
}

int bl_mean(nf_job *job, float scale)
{
    if (!job->prev)
        return nf_error_set(job->err, NF_E_INTERNAL, "mean rule without a previous merge");
    return bl_stream(job, BL_BASE | BL_PREV | BL_TASK | BL_WRITE, mean_chunk, &scale);
}

int bl_load_deltas(nf_job *job, nf_mat *w0, nf_mat *m, nf_mat *tau)
{
    nf_la *la = job->la;
    nf_mat b = {0};
    memset(m, 0, sizeof *m);
    memset(tau, 0, sizeof *tau);
    int rc = nf_job_load(job, job->base, &b);
    if (!rc) rc = nf_job_load(job, job->prev, m);
    if (!rc) rc = nf_la_axpby(la, -1.0f, &b, 1.0f, m);
    if (!rc) rc = nf_job_load(job, job->task, tau);
    if (!rc) rc = nf_la_axpby(la, -1.0f, &b, 1.0f, tau);
    if (rc || !w0) {
        nf_la_free(la, &b);
        if (rc) {
            nf_la_free(la, m);
            nf_la_free(la, tau);
        }
    }
    if (!rc && w0)
        *w0 = b;
    return rc;
}
