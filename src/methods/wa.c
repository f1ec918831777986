/*
 * Weight averaging (model soups) in the continual form: the running mean of the fine-tuned
 * models. M(1) = theta_1; M(t) = ((t - 1) M(t-1) + theta_t) / t for every float tensor, in
 * float32. t comes from the step count the previous merged file recorded.
 */
#include "baseline.h"

static int wa_chunk(nf_job *job, void *ctx, const bl_chunk *c)
{
    (void)job;
    const float *tf = ctx; /* {t - 1, t} */
    for (size_t i = 0; i < c->n; i++)
        c->out[i] = (tf[0] * c->prev[i] + c->task[i]) / tf[1];
    return NF_OK;
}

static int wa_tensor(nf_job *job)
{
    if (!job->prev)
        return bl_first_task(job);
    float tf[2] = {(float)(job->run->step - 1), (float)job->run->step};
    return bl_stream(job, BL_PREV | BL_TASK | BL_WRITE, wa_chunk, tf);
}

const nf_method_ops nf_method_wa = {
    .info = {"wa", "weight averaging: running mean of the fine-tuned models", "(none)",
             "Wortsman et al., Model soups, ICML 2022 (arXiv 2203.05482)", 1},
    .params = 0,
    .npasses = 1,
    .tensor = wa_tensor,
};
