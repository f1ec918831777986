/*
 * WUDI (data-free interference minimisation), continual form with two inputs per step:
 * tau_a = m = M(t-1) - theta_0 and tau_b = tau_t. M(1) = theta_1. For each 2-D tensor
 * (embeddings included) start from x = tau_a + tau_b and run Adam (PyTorch semantics, betas
 * 0.9/0.999, eps 1e-8, --lr, --iters full-batch steps) on
 *
 *   L(x) = sum_i |(x - tau_i) tau_i^T|_F^2 / |tau_i|_F^2,
 *   dL/dx = 2 sum_i (x - tau_i) G_i,   G_i = tau_i^T tau_i / |tau_i|_F^2
 *
 * (a term whose tau_i is zero contributes nothing and is dropped); M(t) = theta_0 + x. Other
 * tensors take the mean, theta_0 + (tau_a + tau_b) / 2.
 *
 * G_i (d_in x d_in) is formed once when d_in <= 2 d_out; for wider matrices the product is
 * taken as ((x - tau_i) tau_i^T) tau_i / |tau_i|^2, which is the same gradient at a lower cost
 * (4 d_out^2 d_in instead of 2 d_out d_in^2 flops) and without the d_in x d_in matrix.
 */
#include "baseline.h"

#include "../core/util.h"

#include <string.h>

#define ADAM_B1 0.9
#define ADAM_B2 0.999
#define ADAM_EPS 1e-8

static int wudi_2d(nf_job *job, int rows, int cols)
{
    nf_la *la = job->la;
    const nf_params *p = &job->run->p;
    nf_mat tau[2] = {{0}}, g[2] = {{0}}, x = {0}, d = {0}, gr = {0}, mo = {0}, v = {0},
           h = {0}, w = {0};
    float coef[2];
    int nterm = 0, gram = cols <= 2 * rows;
    int rc = bl_load_deltas(job, NULL, &tau[0], &tau[1]);
    if (rc)
        return rc;
    double t0 = nf_now();
    if ((rc = nf_la_alloc(la, rows, cols, &x)) || (rc = nf_la_copy(la, &tau[0], &x)) ||
        (rc = nf_la_axpby(la, 1.0f, &tau[1], 1.0f, &x)))
        goto out;
    /* the terms with a non-zero tau_i, compacted to tau[0..nterm) */
    for (int i = 0; i < 2; i++) {
        double n2;
        if ((rc = nf_la_dot(la, &tau[i], NULL, &n2)))
            goto out;
        if (!(n2 > 0.0)) {
            nf_la_free(la, &tau[i]);
            continue;
        }
        if (nterm != i) {
            tau[nterm] = tau[i];
            memset(&tau[i], 0, sizeof tau[i]);
        }
        if (gram) {
            /* G_i = tau_i^T tau_i / |tau_i|^2 */
            if ((rc = nf_la_alloc(la, cols, cols, &g[nterm])) ||
                (rc = nf_la_gemm(la, 1, 0, (float)(1.0 / n2), &tau[nterm], &tau[nterm], 0.0f,
                                 &g[nterm])))
                goto out;
            coef[nterm] = 2.0f;
        } else {
            coef[nterm] = (float)(2.0 / n2);
        }
        nterm++;
    }
    if (nterm > 0 && p->iters > 0) {
        if ((rc = nf_la_alloc(la, rows, cols, &d)) || (rc = nf_la_alloc(la, rows, cols, &gr)) ||
            (rc = nf_la_alloc(la, rows, cols, &mo)) || (rc = nf_la_alloc(la, rows, cols, &v)) ||
            (!gram && (rc = nf_la_alloc(la, rows, rows, &h))) ||
            (rc = nf_la_fill(la, &mo, 0.0f)) || (rc = nf_la_fill(la, &v, 0.0f)))
            goto out;
        for (int s = 1; s <= p->iters && rc == NF_OK; s++) {
            for (int i = 0; i < nterm && rc == NF_OK; i++) {
                float beta = i ? 1.0f : 0.0f;
                /* d = x - tau_i; grad (+)= 2 d G_i */
                rc = nf_la_copy(la, &x, &d);
                if (!rc) rc = nf_la_axpby(la, -1.0f, &tau[i], 1.0f, &d);
                if (rc)
                    break;
                if (gram) {
                    rc = nf_la_gemm(la, 0, 0, coef[i], &d, &g[i], beta, &gr);
                } else {
                    rc = nf_la_gemm(la, 0, 1, 1.0f, &d, &tau[i], 0.0f, &h);
                    if (!rc) rc = nf_la_gemm(la, 0, 0, coef[i], &h, &tau[i], beta, &gr);
                }
            }
            if (!rc)
                rc = nf_la_adam(la, &x, &gr, &mo, &v, p->lr, ADAM_B1, ADAM_B2, ADAM_EPS, s);
        }
        if (rc)
            goto out;
    }
    la->stats.train_s += nf_now() - t0;
    /* M(t) = theta_0 + x */
    if ((rc = nf_job_load(job, job->base, &w)) || (rc = nf_la_axpby(la, 1.0f, &x, 1.0f, &w)))
        goto out;
    rc = nf_job_put_mat(job, &w);
out:
    {
        nf_mat *all[] = {&tau[0], &tau[1], &g[0], &g[1], &x, &d, &gr, &mo, &v, &h, &w};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            nf_la_free(la, all[i]);
    }
    return rc;
}

static int wudi_tensor(nf_job *job)
{
    if (!job->prev)
        return bl_first_task(job);
    if (job->base->ndim != 2)
        return bl_mean(job, 1.0f);
    int rows, cols;
    int rc = nf_job_dims(job, &rows, &cols);
    if (rc)
        return rc;
    return wudi_2d(job, rows, cols);
}

/* working memory for --max-memory: whole matrices and their SVD (peak measured on a
 * 3072 x 768 tensor, rounded up) */
static uint64_t wudi_memory(const nf_run *run, size_t i)
{
    return nf_mem_matrix_copies(run, i, 8);
}

const nf_method_ops nf_method_wudi = {
    .info = {"wudi", "data-free interference minimisation with Adam on task-vector subspaces",
             "`iters` 50 (Adam steps), `lr` 1e-5",
             "Cheng et al., Whoever Started the Interference Should End It: Guiding Data-Free "
             "Model Merging via Task Vectors (WUDI), ICML 2025 (arXiv 2503.08099)",
             1},
    .params = NF_P_ITERS | NF_P_LR,
    .npasses = 1,
    .tensor = wudi_tensor,
    .memory = wudi_memory,
};
