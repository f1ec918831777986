/*
 * MagMax, continual: M(1) = theta_0 + lambda tau_1; then per element, with k = m / lambda
 * (the merged task vector before scaling), D = tau_t where |tau_t| >= |k| (the new task wins
 * ties), else k; M(t) = theta_0 + lambda D. Every float tensor, float32. --scale 0 is refused
 * by the recipe (k would divide by zero).
 */
#include "baseline.h"

#include <math.h>

static int magmax_chunk(nf_job *job, void *ctx, const bl_chunk *c)
{
    (void)job;
    float lam = *(const float *)ctx;
    for (size_t i = 0; i < c->n; i++) {
        float k = (c->prev[i] - c->base[i]) / lam;
        float t = c->task[i] - c->base[i];
        float d = fabsf(t) >= fabsf(k) ? t : k;
        c->out[i] = c->base[i] + lam * d;
    }
    return NF_OK;
}

static int magmax_tensor(nf_job *job)
{
    float lam = (float)job->run->p.scale;
    if (!job->prev)
        return bl_first_scaled(job, lam);
    return bl_stream(job, BL_BASE | BL_PREV | BL_TASK | BL_WRITE, magmax_chunk, &lam);
}

const nf_method_ops nf_method_magmax = {
    .info = {"magmax", "MagMax: keeps the larger-magnitude update per parameter",
             "`scale` 0.5 (lambda, non-zero)",
             "Marczak et al., MagMax: Leveraging Model Merging for Seamless Continual "
             "Learning, ECCV 2024 (arXiv 2407.06322)",
             1},
    .params = NF_P_SCALE,
    .npasses = 1,
    .tensor = magmax_tensor,
};
