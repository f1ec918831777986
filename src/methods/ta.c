/*
 * Task arithmetic, continual: M(1) = theta_0 + lambda tau_1; M(t) = M(t-1) + lambda tau_t for
 * every float tensor (float32, lambda = --scale).
 */
#include "baseline.h"

static int ta_chunk(nf_job *job, void *ctx, const bl_chunk *c)
{
    (void)job;
    float lam = *(const float *)ctx;
    for (size_t i = 0; i < c->n; i++)
        c->out[i] = c->prev[i] + lam * (c->task[i] - c->base[i]);
    return NF_OK;
}

static int ta_tensor(nf_job *job)
{
    float lam = (float)job->run->p.scale;
    if (!job->prev)
        return bl_first_scaled(job, lam);
    return bl_stream(job, BL_BASE | BL_PREV | BL_TASK | BL_WRITE, ta_chunk, &lam);
}

const nf_method_ops nf_method_ta = {
    .info = {"ta", "task arithmetic: adds lambda times each task vector",
             "`scale` 0.3 (lambda; the paper runs use 0.1 for 14 and 20 tasks)",
             "Ilharco et al., Editing models with task arithmetic, ICLR 2023 (arXiv 2212.04089)",
             1},
    .params = NF_P_SCALE,
    .npasses = 1,
    .tensor = ta_tensor,
};
