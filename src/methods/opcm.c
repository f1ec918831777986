/*
 * OPCM (orthogonal projection-based continual merging) with its norm-preserving rescale.
 * M(1) = theta_1. At step t >= 2, with the scale lambda the previous step recorded (1 after
 * the first step), for each linear weight (2-D "*.weight" without "embed"), Dm = W_M - W_0,
 * Dt = W_t - W_0, and the thin SVD Dm = U diag(s) V^T:
 *
 *   r  = number of leading singular values whose cumulative share sum(s[:k])/sum(s) <= alpha
 *        (0 when Dm = 0)
 *   D~ = Dt - U_r (U_r^T Dt V_r) V_r^T
 *        [--opcm-zero-diag: also - sum_{i >= r} (u_i^T Dt v_i) u_i v_i^T]
 *   W  = W_0 + lambda Dm + D~
 *
 * and every other float tensor p = p_0 + lambda (p_M - p_0) + (p_t - p_0). Then, over the
 * whole model, n = |M - theta_0|, avg = (norm_sum + |tau_t|) / (norm_count + 1), and every
 * tensor becomes p_0 + (p - p_0) avg / n; the new state is lambda = n / avg (n = 0: no
 * rescale, lambda = 1).
 *
 * Two passes, bounded memory: pass 0 computes each tensor's unscaled task vector (p - p_0),
 * stores it as float32 in the step's scratch file (created beside the output and already
 * unlinked, see step.c) and records its squared norm and that of tau_t per tensor in
 * run->partial; after the pass the norms are summed in tensor order (so the result does not
 * depend on which thread finished first); pass 1 reads the task vectors back, rescales them
 * and writes p_0 + scale (p - p_0). Norms are accumulated in double.
 */
#include "baseline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* squared norms of a chunk's tau (double, exact differences) */
static double tau_sq(const bl_chunk *c)
{
    double s = 0.0;
    for (size_t i = 0; i < c->n; i++) {
        double d = (double)c->task[i] - (double)c->base[i];
        s += d * d;
    }
    return s;
}

typedef struct opcm_ctx {
    float lam, scale;
    double dsq, tsq;
} opcm_ctx;

static int first_chunk(nf_job *job, void *vc, const bl_chunk *c)
{
    (void)job;
    opcm_ctx *x = vc;
    x->tsq += tau_sq(c);
    memcpy(c->out, c->task, c->n * sizeof(float));
    return NF_OK;
}

static int tau_chunk(nf_job *job, void *vc, const bl_chunk *c)
{
    (void)job;
    ((opcm_ctx *)vc)->tsq += tau_sq(c);
    return NF_OK;
}

/* other tensors, pass 0: p - p_0 = lambda (p_M - p_0) + (p_t - p_0), spilled */
static int other_chunk(nf_job *job, void *vc, const bl_chunk *c)
{
    opcm_ctx *x = vc;
    x->tsq += tau_sq(c);
    double s = 0.0;
    for (size_t i = 0; i < c->n; i++) {
        float d = x->lam * (c->prev[i] - c->base[i]) + (c->task[i] - c->base[i]);
        c->out[i] = d;
        s += (double)d * (double)d;
    }
    x->dsq += s;
    return nf_job_spill_write_at(job, c->first, c->out, c->n);
}

/* pass 1: p_0 + scale (p - p_0) */
static int rescale_chunk(nf_job *job, void *vc, const bl_chunk *c)
{
    (void)job;
    float sc = ((opcm_ctx *)vc)->scale;
    for (size_t i = 0; i < c->n; i++)
        c->out[i] = c->base[i] + c->spill[i] * sc;
    return NF_OK;
}

/* lambda m + D~, on the host: m is read again from the inputs rather than kept */
typedef struct add_ctx {
    float lam;
    float *d;
    double sq;
} add_ctx;

static int add_m(nf_job *job, void *vc, const bl_chunk *c)
{
    (void)job;
    add_ctx *a = vc;
    float *d = a->d + c->first;
    double sq = 0.0;
    for (size_t i = 0; i < c->n; i++) {
        d[i] = a->lam * (c->prev[i] - c->base[i]) + d[i];
        sq += (double)d[i] * (double)d[i];
    }
    a->sq += sq;
    return NF_OK;
}

/* The projected, unscaled task vector lambda Dm + D~ of a linear weight; spilled, its
 * squared norm added to x->dsq. Memory: Dm is the SVD's workspace (destroyed), and Dt is
 * loaded only once the SVD is done. */
static int linear(nf_job *job, opcm_ctx *x)
{
    nf_la *la = job->la;
    const nf_params *p = &job->run->p;
    nf_mat dm = {0}, dt = {0}, b = {0}, u = {0}, vt = {0}, t = {0}, kk = {0}, pm = {0};
    float *s = NULL, *hk = NULL, *host = NULL;
    int rows = 0, cols = 0, r = 0;
    int rc = nf_job_dims(job, &rows, &cols);
    if (rc)
        return rc;
    int k = rows < cols ? rows : cols;
    if (k > 0) {
        if (!(s = malloc((size_t)k * sizeof *s))) {
            rc = nf_error_set(job->err, NF_E_NOMEM, "out of memory");
            goto out;
        }
        /* Dm = W_M - W_0 = U diag(s) V^T */
        if ((rc = nf_job_load(job, job->base, &b)) || (rc = nf_job_load(job, job->prev, &dm)) ||
            (rc = nf_la_axpby(la, -1.0f, &b, 1.0f, &dm)))
            goto out;
        nf_la_free(la, &b);
        if ((rc = nf_la_svd_overwrite(la, &dm, &u, s, &vt)))
            goto out;
        nf_la_free(la, &dm);
        double tot = 0.0;
        for (int i = 0; i < k; i++)
            tot += s[i];
        if (tot > 0.0) {
            double cum = 0.0;
            for (int i = 0; i < k; i++) {
                cum += s[i];
                if (cum / tot <= p->alpha)
                    r = i + 1;
                else
                    break;
            }
        }
    }
    /* Dt = W_t - W_0 */
    if ((rc = nf_job_load(job, job->base, &b)) || (rc = nf_job_load(job, job->task, &dt)) ||
        (rc = nf_la_axpby(la, -1.0f, &b, 1.0f, &dt)))
        goto out;
    nf_la_free(la, &b);
    if (k > 0 && p->opcm_zero_diag && r < k) {
        /* K = U^T Dt V (k x k); C keeps its top-left r x r block and the diagonal beyond it;
         * D~ = Dt - U C V^T */
        if ((rc = nf_la_alloc(la, rows, k, &t)) || (rc = nf_la_alloc(la, k, k, &kk)) ||
            (rc = nf_la_gemm(la, 0, 1, 1.0f, &dt, &vt, 0.0f, &t)) ||
            (rc = nf_la_gemm(la, 1, 0, 1.0f, &u, &t, 0.0f, &kk)))
            goto out;
        nf_la_free(la, &t);
        if (!(hk = malloc((size_t)k * k * sizeof *hk))) {
            rc = nf_error_set(job->err, NF_E_NOMEM, "out of memory");
            goto out;
        }
        if ((rc = nf_la_download(la, &kk, hk)))
            goto out;
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
                if ((i >= r || j >= r) && i != j)
                    hk[(size_t)i * k + j] = 0.0f;
        if ((rc = nf_la_upload(la, &kk, hk)) || (rc = nf_la_alloc(la, rows, k, &pm)) ||
            (rc = nf_la_gemm(la, 0, 0, 1.0f, &u, &kk, 0.0f, &pm)) ||
            (rc = nf_la_gemm(la, 0, 0, -1.0f, &pm, &vt, 1.0f, &dt)))
            goto out;
    } else if (r > 0) {
        /* D~ = Dt - U_r ((U_r^T (Dt V_r)) V_r^T) */
        nf_mat ur = nf_la_sub(&u, 0, 0, rows, r), vr = nf_la_sub(&vt, 0, 0, r, cols);
        if ((rc = nf_la_alloc(la, rows, r, &t)) || (rc = nf_la_alloc(la, r, r, &kk)) ||
            (rc = nf_la_alloc(la, rows, r, &pm)) ||
            (rc = nf_la_gemm(la, 0, 1, 1.0f, &dt, &vr, 0.0f, &t)) ||
            (rc = nf_la_gemm(la, 1, 0, 1.0f, &ur, &t, 0.0f, &kk)) ||
            (rc = nf_la_gemm(la, 0, 0, 1.0f, &ur, &kk, 0.0f, &pm)) ||
            (rc = nf_la_gemm(la, 0, 0, -1.0f, &pm, &vr, 1.0f, &dt)))
            goto out;
    }
    nf_mat *tmp[] = {&u, &vt, &t, &kk, &pm};
    for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++)
        nf_la_free(la, tmp[i]);
    /* D~ on the host (borrowed when buffers are host memory), then + lambda m */
    size_t n = (size_t)job->base->numel;
    float *d = nf_la_host(la, &dt);
    if (!d) {
        if (!(host = malloc((n ? n : 1) * sizeof *host))) {
            rc = nf_error_set(job->err, NF_E_NOMEM, "out of memory");
            goto out;
        }
        if ((rc = nf_la_download(la, &dt, host)))
            goto out;
        nf_la_free(la, &dt);
        d = host;
    }
    add_ctx a = {x->lam, d, 0.0};
    if ((rc = bl_stream(job, BL_BASE | BL_PREV, add_m, &a)))
        goto out;
    x->dsq += a.sq;
    rc = nf_job_spill_write(job, d);
out:
    free(s);
    free(hk);
    free(host);
    nf_mat *all[] = {&dm, &dt, &b, &u, &vt, &t, &kk, &pm};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        nf_la_free(la, all[i]);
    return rc;
}

static int opcm_tensor(nf_job *job)
{
    nf_run *run = job->run;
    opcm_ctx x = {(float)run->prev_state.lambda, (float)run->state.lambda, 0.0, 0.0};
    double *part = run->partial + 2 * job->idx;
    int rc;
    if (!job->prev) {
        rc = bl_stream(job, BL_BASE | BL_TASK | BL_WRITE, first_chunk, &x);
        part[1] = x.tsq;
        return rc;
    }
    if (job->pass == 1) {
        x.scale = (float)((const double *)run->mstate)[0];
        return bl_stream(job, BL_BASE | BL_SPILL | BL_WRITE, rescale_chunk, &x);
    }
    if (bl_is_linear_weight(job->base)) {
        rc = bl_stream(job, BL_BASE | BL_TASK, tau_chunk, &x);
        if (rc == NF_OK)
            rc = linear(job, &x);
    } else {
        rc = bl_stream(job, BL_BASE | BL_PREV | BL_TASK | BL_OUT, other_chunk, &x);
    }
    part[0] = x.dsq;
    part[1] = x.tsq;
    return rc;
}

static int opcm_after(nf_run *run, int pass)
{
    if (pass != 0)
        return NF_OK;
    /* sums in tensor order: independent of the threads' schedule */
    double dsq = 0.0, tsq = 0.0;
    for (size_t i = 0; i < run->ntensors; i++) {
        dsq += run->partial[2 * i];
        tsq += run->partial[2 * i + 1];
    }
    double tn = sqrt(tsq);
    if (!run->prev) {
        run->state.lambda = 1.0;
        run->state.norm_sum = tn;
        run->state.norm_count = 1.0;
        return NF_OK;
    }
    double n = sqrt(dsq);
    double sum = run->prev_state.norm_sum + tn, cnt = run->prev_state.norm_count + 1.0;
    double avg = sum / cnt;
    double scale = 1.0;
    run->state.lambda = 1.0;
    if (n > 0.0 && avg > 0.0) {
        scale = avg / n;
        run->state.lambda = n / avg;
    }
    run->state.norm_sum = sum;
    run->state.norm_count = cnt;
    *(double *)run->mstate = scale;
    return NF_OK;
}

static int opcm_begin(nf_run *run)
{
    run->npartial = 2; /* |p - p_0|^2 unscaled, |tau_t|^2 */
    run->partial = calloc(run->ntensors ? 2 * run->ntensors : 1, sizeof *run->partial);
    if (!run->partial)
        return NF_E_NOMEM;
    if (!run->prev) {
        run->npasses = 1; /* M(1) = theta_1; the state needs only |tau_1| */
        return NF_OK;
    }
    if (!(run->prev_state.norm_count >= 1.0) || !(run->prev_state.lambda >= 0.0) ||
        !isfinite(run->prev_state.lambda) || !(run->prev_state.norm_sum >= 0.0) ||
        !isfinite(run->prev_state.norm_sum))
        return nf_error_set(run->err, NF_E_STATE,
                            "%s: its metadata lacks a valid OPCM state (nufilt.state: lambda, "
                            "norm_sum, norm_count); was it merged with `method` opcm?",
                            run->prev->path);
    if (!(run->mstate = calloc(1, sizeof(double))))
        return NF_E_NOMEM;
    run->want_spill = 1;
    return NF_OK;
}

static void opcm_cleanup(nf_run *run)
{
    free(run->mstate);
    run->mstate = NULL;
}

/* working memory for --max-memory: whole matrices and their SVD (peak measured on a
 * 3072 x 768 tensor, rounded up) */
static uint64_t opcm_memory(const nf_run *run, size_t i)
{
    const nf_tensor *t = &run->base->tensors[i];
    return bl_is_linear_weight(t) ? nf_mem_copies(run, i, 4) : NF_STREAM_MEMORY;
}

const nf_method_ops nf_method_opcm = {
    .info = {"opcm", "orthogonal projection of each task vector, norm-preserving rescale",
             "`alpha` 0.5 (share of the spectrum projected out), `opcm_zero_diag` off",
             "Tang et al., Merging Models on the Fly Without Retraining: A Sequential "
             "Approach to Scalable Continual Model Merging (OPCM), 2025 (arXiv 2501.09522)",
             1},
    .params = NF_P_ALPHA | NF_P_ZERO_DIAG,
    .npasses = 2,
    .begin = opcm_begin,
    .tensor = opcm_tensor,
    .after_pass = opcm_after,
    .cleanup = opcm_cleanup,
    .memory = opcm_memory,
};
