/*
 * Iso-C (isotropic merging), continual with two inputs per step: M(1) = theta_0 + tau_1
 * (= theta_1, written as such). For each 2-D tensor S = m + tau_t with the thin SVD
 * S = U diag(sigma) V^T gives R = mean(sigma) U V^T (every singular value replaced by their
 * mean over all min(d_out, d_in) of them); other tensors R = (m + tau_t) / 2; M(t) = theta_0
 * + lambda R.
 */
#include "baseline.h"

#include <stdlib.h>

static int isoc_2d(nf_job *job, float lam)
{
    nf_la *la = job->la;
    nf_mat m = {0}, tau = {0}, r = {0}, w = {0};
    float *s = NULL;
    int rows, cols;
    int rc = nf_job_dims(job, &rows, &cols);
    if (rc || (rc = bl_load_deltas(job, NULL, &m, &tau)))
        return rc;
    int k = rows < cols ? rows : cols;
    if (!(s = malloc((size_t)(k > 0 ? k : 1) * sizeof *s))) {
        rc = nf_error_set(job->err, NF_E_NOMEM, "out of memory");
        goto out;
    }
    /* S = m + tau; R / mean = U V^T, the polar factor of S */
    if ((rc = nf_la_axpby(la, 1.0f, &tau, 1.0f, &m)))
        goto out;
    nf_la_free(la, &tau);
    if ((rc = nf_la_polar(la, &m, &r, s)))
        goto out;
    nf_la_free(la, &m);
    double mean = 0.0;
    for (int i = 0; i < k; i++)
        mean += s[i];
    mean = k > 0 ? mean / k : 0.0;
    if ((rc = nf_job_load(job, job->base, &w)) ||
        (rc = nf_la_axpby(la, (float)(lam * mean), &r, 1.0f, &w)))
        goto out;
    rc = nf_job_put_mat(job, &w);
out:
    free(s);
    nf_la_free(la, &m);
    nf_la_free(la, &tau);
    nf_la_free(la, &r);
    nf_la_free(la, &w);
    return rc;
}

static int isoc_tensor(nf_job *job)
{
    float lam = (float)job->run->p.scale;
    if (!job->prev)
        return bl_first_task(job);
    if (job->base->ndim == 2)
        return isoc_2d(job, lam);
    return bl_mean(job, lam);
}

/* working memory for --max-memory: whole matrices and their SVD (peak measured on a
 * 3072 x 768 tensor, rounded up) */
static uint64_t isoc_memory(const nf_run *run, size_t i)
{
    return nf_mem_matrix_copies(run, i, 5);
}

const nf_method_ops nf_method_isoc = {
    .info = {"isoc", "Iso-C: flattens the spectrum of the summed task vectors",
             "`scale` 1 (lambda)",
             "Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and "
             "Task-Specific Subspaces, ICML 2025 (arXiv 2502.04959)",
             1},
    .params = NF_P_SCALE,
    .npasses = 1,
    .tensor = isoc_tensor,
    .memory = isoc_memory,
};
