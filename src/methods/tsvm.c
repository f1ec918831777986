/*
 * TSV-M (task singular vectors, merge), continual with two inputs per step: M(1) =
 * theta_0 + tau_1 (= theta_1, written as such). For each 2-D tensor with inputs m and tau_t,
 * k = min(d_out, d_in), h = floor(k / 2): the top-h singular triplets of each input are
 * stacked, U_cat = [U_m,h | U_t,h] (d_out x 2h), s_cat, V_cat^T = [V_m,h^T ; V_t,h^T]
 * (2h x d_in); both are orthogonalised by their polar factor (U_o = P Q^T from the thin SVD
 * U_cat = P Sigma Q^T, likewise V_o^T), and R = U_o diag(s_cat) V_o^T. Other tensors take
 * the mean R = (m + tau_t) / 2. M(t) = theta_0 + lambda R.
 *
 * A 2-D tensor with h = 0 (a single row or column) would get R = 0 from the literal rule;
 * it takes the mean instead, like the other tensors (decision documented in the report).
 */
#include "baseline.h"

#include <stdlib.h>
#include <string.h>

/* Top-h triplets of x into columns [c0, c0 + h) of ucat, rows [c0, c0 + h) of vtcat and
 * s[c0 ..]. */
static int top_h(nf_la *la, const nf_mat *x, int h, int c0, nf_mat *ucat, nf_mat *vtcat,
                 float *scat, float *s)
{
    nf_mat u = {0}, vt = {0};
    int rc = nf_la_svd(la, x, &u, s, &vt);
    if (!rc) {
        nf_mat us = nf_la_sub(&u, 0, 0, u.rows, h), ud = nf_la_sub(ucat, 0, c0, ucat->rows, h);
        rc = nf_la_copy_view(la, &us, &ud);
    }
    if (!rc) {
        nf_mat vs = nf_la_sub(&vt, 0, 0, h, vt.cols), vd = nf_la_sub(vtcat, c0, 0, h, vt.cols);
        rc = nf_la_copy_view(la, &vs, &vd);
    }
    if (!rc)
        memcpy(scat + c0, s, (size_t)h * sizeof *s);
    nf_la_free(la, &u);
    nf_la_free(la, &vt);
    return rc;
}

static int tsvm_2d(nf_job *job, int rows, int cols, float lam)
{
    nf_la *la = job->la;
    int k = rows < cols ? rows : cols, h = k / 2;
    nf_mat m = {0}, tau = {0}, ucat = {0}, vtcat = {0}, uo = {0}, vto = {0}, w = {0};
    float *s = malloc((size_t)k * sizeof *s), *scat = malloc((size_t)2 * h * sizeof *scat);
    int rc = (!s || !scat) ? nf_error_set(job->err, NF_E_NOMEM, "out of memory") : NF_OK;
    if (!rc) rc = bl_load_deltas(job, NULL, &m, &tau);
    if (!rc) rc = nf_la_alloc(la, rows, 2 * h, &ucat);
    if (!rc) rc = nf_la_alloc(la, 2 * h, cols, &vtcat);
    if (!rc) rc = top_h(la, &m, h, 0, &ucat, &vtcat, scat, s);
    if (!rc) rc = top_h(la, &tau, h, h, &ucat, &vtcat, scat, s);
    nf_la_free(la, &m);
    nf_la_free(la, &tau);
    if (!rc) rc = nf_la_polar(la, &ucat, &uo, NULL);
    nf_la_free(la, &ucat);
    if (!rc) rc = nf_la_polar(la, &vtcat, &vto, NULL);
    nf_la_free(la, &vtcat);
    /* R = U_o diag(s_cat) V_o^T: the rows of V_o^T scaled, then one product */
    if (!rc) rc = nf_la_scale_rows(la, &vto, scat);
    if (!rc) rc = nf_job_load(job, job->base, &w);
    if (!rc) rc = nf_la_gemm(la, 0, 0, lam, &uo, &vto, 1.0f, &w);
    if (!rc) rc = nf_job_put_mat(job, &w);
    nf_la_free(la, &uo);
    nf_la_free(la, &vto);
    nf_la_free(la, &w);
    free(s);
    free(scat);
    return rc;
}

static int tsvm_tensor(nf_job *job)
{
    float lam = (float)job->run->p.scale;
    if (!job->prev)
        return bl_first_task(job);
    if (job->base->ndim == 2) {
        int rows, cols;
        int rc = nf_job_dims(job, &rows, &cols);
        if (rc)
            return rc;
        if ((rows < cols ? rows : cols) >= 2)
            return tsvm_2d(job, rows, cols, lam);
    }
    return bl_mean(job, lam);
}

/* working memory for --max-memory: whole matrices and their SVD (peak measured on a
 * 3072 x 768 tensor, rounded up) */
static uint64_t tsvm_memory(const nf_run *run, size_t i)
{
    return nf_mem_matrix_copies(run, i, 8);
}

const nf_method_ops nf_method_tsvm = {
    .info = {"tsvm", "TSV-M: decorrelated task singular vectors", "`scale` 1 (lambda)",
             "Gargiulo et al., Task Singular Vectors: Reducing Task Interference in Model "
             "Merging, CVPR 2025 (arXiv 2412.00081)",
             1},
    .params = NF_P_SCALE,
    .npasses = 1,
    .tensor = tsvm_tensor,
    .memory = tsvm_memory,
};
