/*
 * NUFILT (Qiu et al., ICLR 2026): null-space filtering plus a projection-aware LoRA adapter,
 * exactly as docs/method.md and the project's spec describe it. Per treated matrix
 * (tau = W_task - W_base, prev = W_merged - W_base, both d_out x d_in):
 *
 *   V_p = top r_p right singular vectors of prev, V_t = top r_v of tau
 *   tau P = tau - (tau V_p) V_p^T                         (P is never formed)
 *   train A (r_l x d_in, N(0, 0.02) from the counter-based generator) and B (d_in x r_l, 0)
 *   with Adam on  L = |(tau - M) V_t|^2 + |(prev - M) V_p|^2,  M = prev + tau P + tau B A
 *   W_new = W_merged + tau P + (tau B) A
 *
 * With V = [V_t V_p] and the constant C = [(tau - prev - tau P) V_t, -tau P V_p] (whose second
 * block is 0 for orthonormal V_p, see nufilt.h), the residual is E = C - (tau B)(A V) and the
 * closed-form gradients are
 *   dL/dB = -2 tau^T (E (A V)^T),   dL/dA = -2 ((tau B)^T E) V^T,
 * so an iteration costs two d_out x d_in x r_l products and a few small ones.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/util.h"
#include "../linalg/rng.h"
#include "method.h"
#include "nufilt.h"

#define LORA_STD 0.02
#define ADAM_B1 0.9
#define ADAM_B2 0.999
#define ADAM_EPS 1e-8

typedef struct mats {
    nf_mat tau, prev, taup, tv, vt_t, vt_p, v, c, a, b, ma, va, mb, vb, ga, gb, t, av, e, h, te;
    nf_mat k, dk, w, sq; /* Gram form (see train) */
    nf_mat fb, fa;       /* a LoRA task's factors: tau = scale fb fa */
    nf_mat kg, kt;       /* and K = fa^T kg fa with kg = scale^2 fb^T fb; kt: scratch */
    int rv;              /* r_v: columns of C and rows of V that belong to V_t */
} mats;

static void free_all(nf_la *la, mats *x)
{
    nf_mat *all[] = {&x->tau, &x->prev, &x->taup, &x->tv, &x->vt_t, &x->vt_p,
                     &x->v,  &x->c,   &x->a,    &x->b,    &x->ma, &x->va,   &x->mb,
                     &x->vb, &x->ga,  &x->gb,   &x->t,    &x->av, &x->e,    &x->h,
                     &x->te, &x->k,   &x->dk,   &x->w,    &x->sq, &x->fb, &x->fa,
                     &x->kg, &x->kt};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        nf_la_free(la, all[i]);
}

int nf_nufilt_residual(nf_la *la, const nf_nufilt_ws *x, double *loss)
{
    int rc = nf_la_gemm(la, 0, 0, 1.0f, x->tau, x->b, 0.0f, x->t);
    if (!rc) rc = nf_la_gemm(la, 0, 1, 1.0f, x->a, x->v, 0.0f, x->av);
    if (!rc) rc = nf_la_copy(la, x->c, x->e);
    if (!rc) rc = nf_la_gemm(la, 0, 0, -1.0f, x->t, x->av, 1.0f, x->e);
    if (!rc && loss) rc = nf_la_dot(la, x->e, NULL, loss);
    return rc;
}

int nf_nufilt_grad(nf_la *la, const nf_nufilt_ws *x, double *loss)
{
    int rc = nf_nufilt_residual(la, x, loss);
    /* dL/dB = -2 tau^T (E (AV)^T) */
    if (!rc) rc = nf_la_gemm(la, 0, 1, 1.0f, x->e, x->av, 0.0f, x->h);
    if (!rc) rc = nf_la_gemm(la, 1, 0, -2.0f, x->tau, x->h, 0.0f, x->gb);
    /* dL/dA = -2 (T^T E) V^T */
    if (!rc) rc = nf_la_gemm(la, 1, 0, 1.0f, x->t, x->e, 0.0f, x->te);
    if (!rc) rc = nf_la_gemm(la, 0, 0, -2.0f, x->te, x->v, 0.0f, x->ga);
    return rc;
}

int nf_nufilt_constant(nf_la *la, const nf_mat *tau, const nf_mat *prev, const nf_mat *tv,
                       const nf_mat *vt_t, const nf_mat *vt_p, nf_mat *v, nf_mat *c)
{
    int m = tau->rows, n = tau->cols, rv = vt_t->rows, rp = vt_p->rows, k = rv + rp;
    int rc = nf_la_alloc(la, k, n, v);
    if (!rc) rc = nf_la_alloc(la, m, k, c);
    if (!rc && rv > 0) {
        nf_mat dst = nf_la_sub(v, 0, 0, rv, n);
        rc = nf_la_copy(la, vt_t, &dst);
    }
    if (!rc && rp > 0) {
        nf_mat dst = nf_la_sub(v, rv, 0, rp, n);
        rc = nf_la_copy(la, vt_p, &dst);
    }
    /* C_p = -tau P V_p = 0, and C_t = 0 without a filter (tau - tau P = 0) */
    if (!rc) rc = nf_la_fill(la, c, 0.0f);
    if (rc || rv == 0)
        return rc;
    nf_mat ct = nf_la_sub(c, 0, 0, m, rv);
    if (rp > 0) {
        /* (tau - tau P) V_t = tv (V_p^T V_t) */
        nf_mat g = {0};
        rc = nf_la_alloc(la, rp, rv, &g);
        if (!rc) rc = nf_la_gemm(la, 0, 1, 1.0f, vt_p, vt_t, 0.0f, &g);
        if (!rc) rc = nf_la_gemm(la, 0, 0, 1.0f, tv, &g, 0.0f, &ct);
        nf_la_free(la, &g);
    }
    if (!rc && prev)
        rc = nf_la_gemm(la, 0, 1, -1.0f, prev, vt_t, 1.0f, &ct);
    return rc;
}

int nf_nufilt_gram_setup(nf_la *la, const nf_nufilt_ws *x, const nf_nufilt_gram *g, int have_k)
{
    int n = x->tau->cols, m = x->tau->rows, rv = x->rv, r = x->a->rows;
    int rc = have_k || g->ka ? NF_OK : nf_la_gemm(la, 1, 0, 1.0f, x->tau, x->tau, 0.0f, g->k);
    if (!rc && rv > 0) {
        nf_mat d = nf_la_sub(g->dk, 0, r, n, rv);
        nf_mat ct = nf_la_sub(x->c, 0, 0, m, rv);
        rc = nf_la_gemm(la, 1, 0, 1.0f, x->tau, &ct, 0.0f, &d);
    }
    return rc;
}

int nf_nufilt_grad_gram(nf_la *la, const nf_nufilt_ws *x, const nf_nufilt_gram *g, int b_zero)
{
    int n = x->tau->cols, k = x->c->cols, rv = x->rv, rp = k - rv, r = x->a->rows;
    nf_mat kb = nf_la_sub(g->dk, 0, 0, n, r);       /* K B */
    nf_mat d = nf_la_sub(g->dk, 0, r, n, rv);       /* D_t, beside K B */
    nf_mat g1 = nf_la_sub(g->w, 0, 0, r, r);        /* AV (AV)^T */
    nf_mat y = nf_la_sub(g->w, r, 0, k, r);         /* -(AV)^T = [-Y_t^T; -Y_p^T] */
    nf_mat yt = nf_la_sub(g->w, r, 0, rv, r);       /* -Y_t^T */
    nf_mat yp = nf_la_sub(g->w, r + rv, 0, rp, r);  /* -Y_p^T */
    nf_mat w = nf_la_sub(g->w, 0, 0, r + rv, r);    /* [AV (AV)^T; -Y_t^T] */
    nf_mat q = nf_la_sub(g->sq, 0, 0, r, r);        /* B^T K B */
    nf_mat bk = nf_la_sub(g->sq, 0, 0, r, r + rv);  /* [B^T K B | B^T D_t] */
    nf_mat s = nf_la_sub(g->sq, 0, r, r, k);        /* S = [S_t | S_p] */
    nf_mat st = nf_la_sub(g->sq, 0, r, r, rv);
    nf_mat sp = nf_la_sub(g->sq, 0, r + rv, r, rp);
    int rc = nf_la_gemm(la, 0, 1, -1.0f, x->v, x->a, 0.0f, &y);
    if (b_zero) {
        /* dL/dB = -2 D (AV)^T = 2 D_t (-Y_t^T), dL/dA = 0 */
        if (!rc) rc = rv > 0 ? nf_la_gemm(la, 0, 0, 2.0f, &d, &yt, 0.0f, x->gb)
                             : nf_la_fill(la, x->gb, 0.0f);
        if (!rc) rc = nf_la_fill(la, x->ga, 0.0f);
        return rc;
    }
    if (g->ka) {
        /* K B = ka^T (kg (ka B)) */
        int q = g->ka->rows;
        nf_mat t1 = nf_la_sub(g->kt, 0, 0, q, r), t2 = nf_la_sub(g->kt, 0, r, q, r);
        if (!rc) rc = nf_la_gemm(la, 0, 0, 1.0f, g->ka, x->b, 0.0f, &t1);
        if (!rc) rc = nf_la_gemm(la, 0, 0, 1.0f, g->kg, &t1, 0.0f, &t2);
        if (!rc) rc = nf_la_gemm(la, 1, 0, 1.0f, g->ka, &t2, 0.0f, &kb);
    } else if (!rc) {
        rc = nf_la_gemm(la, 0, 0, 1.0f, g->k, x->b, 0.0f, &kb);
    }
    if (!rc) rc = nf_la_gemm(la, 1, 0, 1.0f, &y, &y, 0.0f, &g1);
    /* dL/dB = 2 [K B | D_t] [AV (AV)^T; -Y_t^T] */
    if (!rc) rc = nf_la_gemm(la, 0, 0, 2.0f, g->dk, &w, 0.0f, x->gb);
    /* [B^T K B | B^T D_t], then S = [B^T D_t, 0] - (B^T K B) AV and dL/dA = -2 S V^T */
    if (!rc) rc = nf_la_gemm(la, 1, 0, 1.0f, x->b, g->dk, 0.0f, &bk);
    if (!rc && rv > 0) rc = nf_la_gemm(la, 0, 1, 1.0f, &q, &yt, 1.0f, &st);
    if (!rc && rp > 0) rc = nf_la_gemm(la, 0, 1, 1.0f, &q, &yp, 0.0f, &sp);
    if (!rc) rc = nf_la_gemm(la, 0, 0, -2.0f, &s, x->v, 0.0f, x->ga);
    return rc;
}

/* The Gram form's large product is n x n x r, the direct form's two are m x n x r: the Gram
 * form wins unless the matrix is much wider than tall. */
static int gram_form(int m, int n) { return n < 2 * m; }

static nf_nufilt_ws workspace(mats *x)
{
    nf_nufilt_ws w = {&x->tau, &x->c, &x->v, &x->a, &x->b, &x->t, &x->av,
                      &x->e,   &x->h, &x->te, &x->ga, &x->gb, x->rv};
    return w;
}

/* The adapter's training; on return x->t holds tau B for the final product. x->k may already
 * hold K = tau^T tau (--svd fast computed it for V_t). lr: tau = s fb fa (x->fb, x->fa), so
 * the Gram form runs with K factored whatever the shape. */
static int train(nf_job *job, mats *x, int m, int n, int k, int r, const nf_lowrank *lr,
                 nf_tensor_report *rep)
{
    nf_la *la = job->la;
    const nf_params *p = &job->run->p;
    double t0 = nf_now();
    int rc = NF_OK;
    if ((rc = nf_la_alloc(la, r, n, &x->a)) || (rc = nf_la_alloc(la, n, r, &x->b)) ||
        (rc = nf_la_alloc(la, r, n, &x->ma)) || (rc = nf_la_alloc(la, r, n, &x->va)) ||
        (rc = nf_la_alloc(la, n, r, &x->mb)) || (rc = nf_la_alloc(la, n, r, &x->vb)) ||
        (rc = nf_la_alloc(la, r, n, &x->ga)) || (rc = nf_la_alloc(la, n, r, &x->gb)) ||
        (rc = nf_la_alloc(la, m, r, &x->t)) || (rc = nf_la_alloc(la, r, k, &x->av)) ||
        (rc = nf_la_alloc(la, m, k, &x->e)) || (rc = nf_la_alloc(la, m, r, &x->h)) ||
        (rc = nf_la_alloc(la, r, k, &x->te)))
        return rc;
    {
        float *ha = malloc((size_t)r * n * sizeof *ha);
        if (!ha)
            return nf_error_set(job->err, NF_E_NOMEM, "out of memory");
        uint64_t key = nf_rng_key(p->seed, (uint64_t)job->run->step, job->base->name);
        nf_rng_normal(key, LORA_STD, ha, (size_t)r * n);
        rc = nf_la_upload(la, &x->a, ha);
        free(ha);
        if (rc)
            return rc;
    }
    nf_mat *zero[] = {&x->b, &x->ma, &x->va, &x->mb, &x->vb};
    for (size_t i = 0; i < 5 && !rc; i++)
        rc = nf_la_fill(la, zero[i], 0.0f);
    nf_nufilt_ws w = workspace(x);
    int gram = lr || gram_form(m, n);
    nf_nufilt_gram g = {&x->k, &x->dk, &x->w, &x->sq, NULL, NULL, NULL};
    if (lr) {
        int q = lr->rank;
        if ((rc = nf_la_alloc(la, q, q, &x->kg)) || (rc = nf_la_alloc(la, q, 2 * r, &x->kt)) ||
            (rc = nf_la_gemm(la, 1, 0, (float)(lr->scale * lr->scale), &x->fb, &x->fb, 0.0f,
                             &x->kg)))
            return rc;
        g.ka = &x->fa;
        g.kg = &x->kg;
        g.kt = &x->kt;
    }
    if (gram) {
        int have_k = x->k.buf != NULL;
        if ((!lr && !have_k && (rc = nf_la_alloc(la, n, n, &x->k))) ||
            (rc = nf_la_alloc(la, n, r + x->rv, &x->dk)) ||
            (rc = nf_la_alloc(la, r + k, r, &x->w)) ||
            (rc = nf_la_alloc(la, r, k + r, &x->sq)) ||
            (rc = nf_nufilt_gram_setup(la, &w, &g, have_k)))
            return rc;
    } else {
        nf_la_free(la, &x->k);
    }
    rep->gram = gram;
    for (int s = 1; s <= p->iters && !rc; s++) {
        double loss;
        if (gram) {
            if (s == 1) /* B = 0: the residual is C */
                rc = nf_la_dot(la, &x->c, NULL, &loss);
            if (!rc)
                rc = nf_nufilt_grad_gram(la, &w, &g, s == 1);
        } else {
            rc = nf_nufilt_grad(la, &w, s == 1 ? &loss : NULL);
        }
        if (!rc && s == 1)
            rep->obj_before = loss;
        if (!rc) rc = nf_la_adam(la, &x->a, &x->ga, &x->ma, &x->va, p->lr, ADAM_B1, ADAM_B2,
                                 ADAM_EPS, s);
        if (!rc) rc = nf_la_adam(la, &x->b, &x->gb, &x->mb, &x->vb, p->lr, ADAM_B1, ADAM_B2,
                                 ADAM_EPS, s);
    }
    double loss = 0;
    if (!rc)
        rc = nf_nufilt_residual(la, &w, &loss);
    if (!rc && p->iters == 0)
        rep->obj_before = loss;
    rep->obj_after = loss;
    rep->trained = 1;
    la->stats.train_s += nf_now() - t0;
    return rc;
}

static int nufilt_tensor(nf_job *job)
{
    if (!job->treated)
        return nf_job_put_base(job);
    nf_run *run = job->run;
    const nf_params *p = &run->p;
    nf_la *la = job->la;
    nf_tensor_report *rep = job->rep;
    int m, n;
    int rc = nf_job_dims(job, &m, &n);
    if (rc)
        return rc;
    int kmax = m < n ? m : n;
    int paper = p->compat != NF_COMPAT_REFERENCE;
    int first = job->prev == NULL;
    mats x;
    memset(&x, 0, sizeof x);
    rep->treated = 1;

    /* tau = W_task - W_base (a LoRA task: scale B A, formed once from its factors for
     * tau P, the adapter's constant and its training); prev = W_merged - W_base */
    const nf_lowrank *lr = job->lowrank;
    if (lr) {
        if ((rc = nf_job_lowrank_mats(job, lr, &x.fb, &x.fa)) ||
            (rc = nf_la_alloc(la, m, n, &x.tau)) ||
            (rc = nf_la_gemm(la, 0, 0, (float)lr->scale, &x.fb, &x.fa, 0.0f, &x.tau)))
            goto out;
    } else if ((rc = nf_job_load_diff(job, job->task, job->base, &x.tau))) {
        goto out;
    }
    if (first && paper) {
        /* the paper's first step: M(1) = theta_0 + tau_1 */
        rc = nf_job_add(job, job->base, &x.tau);
        if (!rc)
            rc = nf_job_put_mat(job, &x.tau);
        goto out;
    }
    if (!first && (rc = nf_job_load_diff(job, job->prev, job->base, &x.prev)))
        goto out;

    /* V_p and V_t */
    double tol = paper ? p->rank_tol : -1.0;
    int factored = lr && tol >= 0 && lr->rank <= kmax;
    int rp = p->null_rank < kmax ? p->null_rank : kmax;
    int rv = p->task_rank < kmax ? p->task_rank : kmax;
    uint64_t svd_seed = nf_rng_key(p->seed, (uint64_t)run->step, job->base->name) ^ 0x5356445ull;
    /* --compat reference keeps vectors of zero singular value, which only LAPACK's gesdd
     * chooses the way the reference does: --svd gram and fast fall back to it there */
    int svd_mode = run->svd_mode;
    if (!paper && (svd_mode == NF_LA_SVD_GRAM || svd_mode == NF_LA_SVD_FAST))
        svd_mode = NF_LA_SVD_EXACT;
    if (first) {
        /* --compat reference: the SVD of an all-zero prev gives the first r_p axes */
        if ((rc = nf_la_alloc(la, rp, n, &x.vt_p)))
            goto out;
        float *hv = calloc((size_t)rp * n + 1, sizeof *hv);
        if (!hv) {
            rc = nf_error_set(job->err, NF_E_NOMEM, "out of memory");
            goto out;
        }
        for (int i = 0; i < rp; i++)
            hv[(size_t)i * n + i] = 1.0f;
        rc = nf_la_upload(la, &x.vt_p, hv);
        free(hv);
        if (rc)
            goto out;
    } else {
        nf_svd_args sa = {rp, tol, svd_mode, 10, 2, svd_seed};
        if ((rc = nf_la_svd_right(la, &x.prev, &sa, &x.vt_p, &rp, NULL)))
            goto out;
    }
    {
        nf_svd_args sa = {rv, tol, svd_mode, 10, 2, svd_seed + 1};
        int want_k = svd_mode == NF_LA_SVD_FAST && !first && p->lora_rank > 0 && gram_form(m, n);
        if (factored) {
            /* V_t of a rank-r tau from its factors (QRs and an r x r SVD); the training keeps
             * K = tau^T tau factored too (train). (--compat reference keeps zero singular
             * vectors the way gesdd picks them on the dense matrix, so it takes the dense
             * path below.) */
            double ts = nf_now();
            rc = nf_la_svd_right_lowrank(la, &x.fb, &x.fa, &sa, &x.vt_t, &rv, NULL);
            la->stats.svd_s += nf_now() - ts;
            if (rc)
                goto out;
        } else if (want_k) {
            /* K = tau^T tau serves V_t here and the training's Gram form later */
            if ((rc = nf_la_alloc(la, n, n, &x.k)) ||
                (rc = nf_la_gemm(la, 1, 0, 1.0f, &x.tau, &x.tau, 0.0f, &x.k)) ||
                (rc = nf_la_svd_right_fast(la, &x.tau, &x.k, &sa, &x.vt_t, &rv, NULL)))
                goto out;
        } else if ((rc = nf_la_svd_right(la, &x.tau, &sa, &x.vt_t, &rv, NULL))) {
            goto out;
        }
    }
    rep->rank_null = rp;
    rep->rank_task = rv;
    x.rv = rv;

    /* tau P = tau - (tau V_p) V_p^T */
    if ((rc = nf_la_alloc(la, m, n, &x.taup)) || (rc = nf_la_copy(la, &x.tau, &x.taup)))
        goto out;
    if (rp > 0) { /* tv = tau V_p is kept for the adapter's constant */
        if ((rc = nf_la_alloc(la, m, rp, &x.tv)) ||
            (rc = nf_la_gemm(la, 0, 1, 1.0f, &x.tau, &x.vt_p, 0.0f, &x.tv)) ||
            (rc = nf_la_gemm(la, 0, 0, -1.0f, &x.tv, &x.vt_p, 1.0f, &x.taup)))
            goto out;
    }
    {
        double e_tau, e_taup;
        if ((rc = nf_la_dot(la, &x.tau, NULL, &e_tau)) ||
            (rc = nf_la_dot(la, &x.taup, NULL, &e_taup)))
            goto out;
        rep->filter_removed = e_tau > 0 ? 1.0 - e_taup / e_tau : 0.0;
    }

    int r = p->lora_rank, k = rv + rp;
    rep->rank_lora = first ? 0 : r;
    if (!first && r > 0 && k > 0) {
        /* V^T = [V_t^T; V_p^T] (k x n), and C = [(tau - prev - tau P) V_t, -tau P V_p] */
        if ((rc = nf_nufilt_constant(la, &x.tau, &x.prev, rp > 0 ? &x.tv : NULL, &x.vt_t,
                                     &x.vt_p, &x.v, &x.c)))
            goto out;
        nf_la_free(la, &x.prev);
        nf_la_free(la, &x.tv);
        nf_la_free(la, &x.vt_t);
        nf_la_free(la, &x.vt_p);
        if ((rc = train(job, &x, m, n, k, r, factored ? lr : NULL, rep)))
            goto out;
        /* the adapter's contribution: (tau B) A, added to tau P */
        if ((rc = nf_la_gemm(la, 0, 0, 1.0f, &x.t, &x.a, 1.0f, &x.taup)))
            goto out;
    }
    {
        /* keep only tau P (now tau P + tau B A) for the last step */
        nf_mat keep = x.taup;
        memset(&x.taup, 0, sizeof x.taup);
        free_all(la, &x);
        x.taup = keep;
    }

    /* W_new = W_merged + tau P + tau B A; W_merged is the base at the first step */
    if (!(rc = nf_job_add(job, first ? job->base : job->prev, &x.taup)))
        rc = nf_job_put_mat(job, &x.taup);
out:
    free_all(la, &x);
    return rc;
}

/* working memory for --max-memory: a treated matrix, its task and merged deltas, the filtered
 * update and the SVD workspace (peak measured on a 3072 x 768 tensor: 3.1 copies) */
static uint64_t nufilt_memory(const nf_run *run, size_t i)
{
    return run->treated[i] ? nf_mem_copies(run, i, 4) : NF_STREAM_MEMORY;
}

const nf_method_ops nf_method_nufilt = {
    .info = {"nufilt",
             "null-space filter of each new task vector plus a projection-aware LoRA adapter",
             "`null_rank` 128, `task_rank` 8, `lora_rank` 64, `lr` 1e-3, `iters` 50, `seed` 0, "
             "`compat` paper, `rank_tol` 1e-6, `preset` auto / `layers`",
             "Qiu et al., Null-Space Filtering for Data-Free Continual Model Merging, ICLR 2026 "
             "(arXiv 2509.21413)",
             1},
    .params = NF_P_NULL_RANK | NF_P_TASK_RANK | NF_P_LORA_RANK | NF_P_LR | NF_P_ITERS |
              NF_P_SEED | NF_P_COMPAT | NF_P_RANK_TOL | NF_P_SELECT,
    .npasses = 1,
    .tensor = nufilt_tensor,
    .memory = nufilt_memory,
    .factored = 1,
};
