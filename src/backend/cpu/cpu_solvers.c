/* The CPU backend's dense solvers: QR and SVD through LAPACKE (every input checked for
 * NaN and Inf first), the top eigenpairs of a symmetric matrix (LAPACK's tridiagonal path
 * with the project's bisection, bisect.c) and the block-Krylov solver that replaces it
 * for a few vectors of a decaying spectrum. Declared in ../backend.h. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "bisect.h"

int nf_cpu_qr(int m, int n, float *a, int lda, nf_error *err)
{
    if (m == 0 || n == 0)
        return NF_OK;
    int k = m < n ? m : n;
    float *tau = malloc((size_t)k * sizeof *tau);
    if (!tau)
        return nf_error_set(err, NF_E_NOMEM, "out of memory in QR");
    lapack_int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, n, a, lda, tau);
    if (info == 0)
        info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, k, k, a, lda, tau);
    free(tau);
    if (info < 0)
        return nf_error_set(err, NF_E_NOMEM, "QR of a %d x %d matrix failed (LAPACK info %d)", m,
                            n, (int)info);
    if (info > 0)
        return nf_error_set(err, NF_E_NUMERIC, "QR of a %d x %d matrix failed (LAPACK info %d)",
                            m, n, (int)info);
    return NF_OK;
}

/* LAPACK's bidiagonal QR iteration (sbdsqr, under sgesdd) never returns on a matrix holding
 * Inf, and LAPACKE screens only NaN: every SVD input is checked first. a is column-major
 * rows x cols with leading dimension ld. */
static int finite_cm(int rows, int cols, const float *a, int ld)
{
    for (int j = 0; j < cols; j++)
        for (int i = 0; i < rows; i++)
            if (!isfinite(a[i + (size_t)j * ld]))
                return 0;
    return 1;
}

#define NOT_FINITE -100000 /* an info value LAPACK never gives */

/* The status of an SVD of an m x n matrix from LAPACK's info (or NOT_FINITE). */
static int svd_status(lapack_int info, int m, int n, nf_error *err)
{
    if (info == NOT_FINITE)
        return nf_error_set(err, NF_E_NONFINITE,
                            "SVD of a %d x %d matrix: its factorisation overflowed to Inf", m, n);
    if (info < 0)
        return nf_error_set(err, NF_E_NOMEM, "SVD of a %d x %d matrix failed (LAPACK info %d)",
                            m, n, (int)info);
    if (info > 0)
        return nf_error_set(err, NF_E_NUMERIC,
                            "SVD of a %d x %d matrix did not converge (LAPACK info %d)", m, n,
                            (int)info);
    return NF_OK;
}

/* Common start of the top-r right-vector SVDs: caps *r at min(m, n) (0 when there is
 * nothing to compute) and refuses a matrix holding NaN or Inf. */
static int svd_right_start(int m, int n, const float *a, int lda, int *r, nf_error *err)
{
    int k = m < n ? m : n;
    if (*r > k)
        *r = k;
    if (*r > 0 && !finite_cm(n, m, a, lda))
        return nf_error_set(err, NF_E_NONFINITE,
                            "SVD of a %d x %d matrix: it holds NaN or Inf", m, n);
    return NF_OK;
}

/* Thin SVD of the row-major m x n matrix a. A row-major matrix is the column-major transpose,
 * so LAPACK sees X^T = V S U^T: its left vectors are our right ones, written straight into vt
 * (row j = v_j) without transposing copies. */
int nf_cpu_svd(int m, int n, float *a, int lda, float *s, float *vt, int ldvt, float *u,
               int ldu, nf_error *err)
{
    int k = m < n ? m : n;
    if (k == 0)
        return NF_OK;
    if (!finite_cm(n, m, a, lda))
        return nf_error_set(err, NF_E_NONFINITE,
                            "SVD of a %d x %d matrix: it holds NaN or Inf", m, n);
    /* column-major X^T is n x m with leading dimension lda; its "U" is n x k (ld = ldvt) and
     * its "VT" is k x m (our U^T, column-major, ld = k). */
    /* LAPACK's VT (our U^T) is computed with jobz = 'S' whether wanted or not */
    float *ut = malloc((size_t)k * (size_t)m * sizeof *ut);
    if (!ut)
        return nf_error_set(err, NF_E_NOMEM, "out of memory in SVD");
    lapack_int info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', n, m, a, lda, s, vt, ldvt, ut, k);
    if (info == 0 && u) {
        /* ut is column-major k x m: element (j, i) at j + i * k is U[i][j] */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < k; j++)
                u[(size_t)i * ldu + j] = ut[(size_t)j + (size_t)i * k];
    }
    free(ut);
    return svd_status(info, m, n, err);
}

/* Top r right singular vectors of the row-major m x n matrix a (destroyed) and all min(m, n)
 * singular values, exactly as LAPACK gesdd computes them, without forming the left vectors
 * when the matrix is far from square. Seen by LAPACK (column-major) the matrix is X^T:
 *  - m >= n: X^T = L Q (LQ), and the right vectors of X are the left vectors of L (n x n);
 *  - m <  n: X^T = Q R (QR), R = U_R S W^T, and the right vectors of X are Q U_R, of which
 *    only the first r columns are formed.
 * Squarish matrices go to gesdd directly. vt receives r rows of length n (ld ldvt). */
int nf_cpu_svd_right(int m, int n, float *a, int lda, int r, float *s, float *vt, int ldvt,
                     nf_error *err)
{
    int k = m < n ? m : n;
    int rc = svd_right_start(m, n, a, lda, &r, err);
    if (rc || r == 0)
        return rc;
    int tall = m >= n;
    int big = tall ? m : n;
    if (5 * big < 6 * k) {
        /* nearly square: a plain thin SVD */
        float *v = malloc((size_t)k * (size_t)n * sizeof *v);
        if (!v)
            return nf_error_set(err, NF_E_NOMEM, "out of memory in SVD");
        rc = nf_cpu_svd(m, n, a, lda, s, v, n, NULL, 0, err);
        if (rc == NF_OK)
            for (int i = 0; i < r; i++)
                memcpy(vt + (size_t)i * ldvt, v + (size_t)i * n, (size_t)n * sizeof *v);
        free(v);
        return rc;
    }
    float *tau = malloc((size_t)k * sizeof *tau);
    float *t = calloc((size_t)k * (size_t)k, sizeof *t);     /* L or R, column-major k x k */
    float *lv = malloc((size_t)k * (size_t)k * sizeof *lv);  /* its left vectors */
    float *rv = malloc((size_t)k * (size_t)k * sizeof *rv);  /* its right vectors */
    lapack_int info = 0;
    if (!tau || !t || !lv || !rv) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory in SVD");
        goto out;
    }
    if (tall) {
        /* column-major n x m (wide): LQ, L is the lower triangle of the first n columns */
        info = LAPACKE_sgelqf(LAPACK_COL_MAJOR, n, m, a, lda, tau);
        for (int j = 0; j < n && info == 0; j++)
            for (int i = j; i < n; i++)
                t[i + (size_t)j * k] = a[i + (size_t)j * lda];
        if (info == 0 && !finite_cm(k, k, t, k)) /* overflow in the factorisation */
            info = NOT_FINITE;
        if (info == 0)
            info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', k, k, t, k, s, lv, k, rv, k);
        /* left vectors of L, column j = v_j: row j of our V^T */
        for (int j = 0; j < r && info == 0; j++)
            memcpy(vt + (size_t)j * ldvt, lv + (size_t)j * k, (size_t)n * sizeof *lv);
    } else {
        /* column-major n x m (tall): QR, R is the upper triangle of the first m rows */
        info = LAPACKE_sgeqrf(LAPACK_COL_MAJOR, n, m, a, lda, tau);
        for (int j = 0; j < m && info == 0; j++)
            for (int i = 0; i <= j; i++)
                t[i + (size_t)j * k] = a[i + (size_t)j * lda];
        if (info == 0 && !finite_cm(k, k, t, k)) /* overflow in the factorisation */
            info = NOT_FINITE;
        if (info == 0)
            info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', k, k, t, k, s, lv, k, rv, k);
        if (info == 0) {
            /* Q [U_R(:, :r); 0]: column-major n x r with leading dimension ldvt is exactly
             * our row-major r x n V^T */
            for (int j = 0; j < r; j++) {
                float *col = vt + (size_t)j * ldvt;
                memcpy(col, lv + (size_t)j * k, (size_t)k * sizeof *col);
                memset(col + k, 0, (size_t)(n - k) * sizeof *col);
            }
            info = LAPACKE_sormqr(LAPACK_COL_MAJOR, 'L', 'N', n, r, k, a, lda, tau, vt, ldvt);
        }
    }
    rc = svd_status(info, m, n, err);
out:
    free(tau);
    free(t);
    free(lv);
    free(rv);
    return rc;
}

/* Top r right singular vectors of the row-major m x n matrix a (not modified) and their
 * singular values, from the Gram matrix in double precision (the `--svd gram` mode):
 *  - n <= m: K = X^T X (n x n), accumulated over blocks of rows converted to double, so
 *    memory stays n^2 + GRAM_ROWS n doubles; its top r eigenvectors are the right singular
 *    vectors and s_j = sqrt(lambda_j);
 *  - n >  m: K = X X^T (m x m) gives the left vectors U; V = X^T U diag(1/s), then one QR
 *    re-orthonormalises V.
 * Only the top r eigenpairs are computed (dsyevr with an index range). Squaring the matrix
 * costs nothing at double precision for the leading vectors; singular values below about
 * 1e-7 of the largest lose their relative accuracy (they only matter to --rank-tol).
 * s receives r values. */
#define GRAM_ROWS 256
int nf_cpu_svd_right_gram(int m, int n, const float *a, int lda, int r, float *s, float *vt,
                          int ldvt, nf_error *err)
{
    int rc = svd_right_start(m, n, a, lda, &r, err);
    if (rc || r == 0)
        return rc;
    int wide = n > m;
    int g = wide ? m : n; /* order of the Gram matrix */
    size_t nb = wide ? (size_t)m * (size_t)n : (size_t)GRAM_ROWS * (size_t)n;
    double *K = malloc((size_t)g * (size_t)g * sizeof *K);
    double *xb = malloc(nb * sizeof *xb);
    double *w = malloc((size_t)g * sizeof *w);
    double *z = malloc((size_t)g * (size_t)r * sizeof *z);
    lapack_int *isuppz = malloc(2 * (size_t)r * sizeof *isuppz);
    double *v = wide ? malloc((size_t)n * (size_t)r * sizeof *v) : NULL;
    double *tq = wide ? malloc((size_t)r * sizeof *tq) : NULL;
    lapack_int info = 0, found = 0;
    if (!K || !xb || !w || !z || !isuppz || (wide && (!v || !tq))) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory in SVD");
        goto out;
    }
    if (!wide) {
        /* a block of b rows, row-major b x n, is the column-major n x b matrix Xb^T:
         * K += Xb^T Xb */
        for (int r0 = 0; r0 < m; r0 += GRAM_ROWS) {
            int b = m - r0 < GRAM_ROWS ? m - r0 : GRAM_ROWS;
            for (int i = 0; i < b; i++)
                for (int j = 0; j < n; j++)
                    xb[(size_t)i * n + j] = a[(size_t)(r0 + i) * lda + j];
            cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, n, b, 1.0, xb, n,
                        r0 == 0 ? 0.0 : 1.0, K, n);
        }
    } else {
        /* row-major X (m x n) is the column-major n x m matrix X^T: K = X X^T */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                xb[(size_t)i * n + j] = a[(size_t)i * lda + j];
        cblas_dsyrk(CblasColMajor, CblasLower, CblasTrans, m, n, 1.0, xb, n, 0.0, K, m);
    }
    info = LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', 'I', 'L', g, K, g, 0.0, 0.0, g - r + 1, g, 0.0,
                          &found, w, z, g, isuppz);
    if (info == 0 && found != r)
        info = 1;
    if (info == 0) {
        /* eigenvalues ascend: the j-th largest is column r - 1 - j */
        for (int j = 0; j < r; j++) {
            double l = w[r - 1 - j];
            s[j] = (float)sqrt(l > 0.0 ? l : 0.0);
        }
        if (!wide) {
            for (int j = 0; j < r; j++)
                for (int p = 0; p < n; p++)
                    vt[(size_t)j * ldvt + p] = (float)z[(size_t)(r - 1 - j) * g + p];
        } else {
            /* V (column-major n x r, largest first) = X^T U diag(1/s), then V = Q of its QR */
            for (int j = 0; j < r; j++) {
                const double *u = z + (size_t)(r - 1 - j) * g;
                double sj = s[j] > 0.0f ? (double)s[j] : 1.0;
                cblas_dgemv(CblasColMajor, CblasNoTrans, n, m, 1.0 / sj, xb, n, u, 1, 0.0,
                            v + (size_t)j * n, 1);
            }
            /* (a vector's sign is arbitrary in any SVD, and nothing depends on it) */
            info = LAPACKE_dgeqrf(LAPACK_COL_MAJOR, n, r, v, n, tq);
            if (info == 0)
                info = LAPACKE_dorgqr(LAPACK_COL_MAJOR, n, r, r, v, n, tq);
            for (int j = 0; j < r && info == 0; j++)
                for (int p = 0; p < n; p++)
                    vt[(size_t)j * ldvt + p] = (float)v[(size_t)j * n + p];
        }
    }
    rc = svd_status(info, m, n, err);
out:
    free(K);
    free(xb);
    free(w);
    free(z);
    free(isuppz);
    free(v);
    free(tq);
    return rc;
}

/* Top r eigenpairs of the symmetric n x n matrix k (float32, destroyed; row-major and
 * column-major are the same matrix), largest first: w receives r eigenvalues, vt r
 * eigenvectors as rows (ld ldvt). This is the eigen-solve of `--svd fast`: K = X^T X in
 * float32 and its top vectors, the right singular vectors of X. It does what ssyevr does
 * for an index range: scaling into the safe range, tridiagonal reduction (ssytrd),
 * bisection for the wanted eigenvalues, inverse iteration for their vectors (sstein) and
 * the back-transformation (sormtr); only the bisection is the project's own, 16 shifts at
 * a time (bisect.c, 6x faster than sstebz; sstebz where it declines). All eigenpairs
 * (r = n) go to ssyevr. */
int nf_cpu_eig_top(int n, float *k, int r, float *w, float *vt, int ldvt, nf_error *err)
{
    if (r > n)
        r = n;
    if (r <= 0)
        return NF_OK;
    if (!finite_cm(n, n, k, n))
        return nf_error_set(err, NF_E_NONFINITE,
                            "eigen-decomposition of a %d x %d matrix: it holds NaN or Inf", n,
                            n);
    lapack_int info = 0, found = 0, nsplit = 1;
    float *ev = malloc((size_t)n * sizeof *ev);
    float *z = malloc((size_t)n * (size_t)r * sizeof *z);
    float *d = malloc((size_t)n * sizeof *d), *e = malloc((size_t)n * sizeof *e);
    float *tau = malloc((size_t)n * sizeof *tau);
    lapack_int *iw = malloc(4 * (size_t)n * sizeof *iw); /* iblock, isplit, ifail, iwork */
    float *work = NULL;
    if (!ev || !z || !d || !e || !tau || !iw) {
        info = -1;
        goto done;
    }
    if (r == n) {
        info = LAPACKE_ssyevr(LAPACK_COL_MAJOR, 'V', 'I', 'L', n, k, n, 0.0f, 0.0f, 1, n, 0.0f,
                              &found, ev, z, n, iw);
        goto done;
    }
    /* ssyevr's scaling: a largest entry outside [sqrt(smlnum), rmax] is brought inside */
    float safmin = LAPACKE_slamch('S'), eps = LAPACKE_slamch('P');
    float rmin = sqrtf(safmin / eps);
    float rmax = fminf(sqrtf(eps / safmin), 1.0f / sqrtf(sqrtf(safmin)));
    float anrm = 0.0f, sigma = 1.0f;
    for (int j = 0; j < n; j++)
        for (int i = j; i < n; i++)
            anrm = fmaxf(anrm, fabsf(k[i + (size_t)j * n]));
    if (anrm > 0.0f && anrm < rmin)
        sigma = rmin / anrm;
    else if (anrm > rmax)
        sigma = rmax / anrm;
    if (sigma != 1.0f)
        for (int j = 0; j < n; j++)
            for (int i = j; i < n; i++)
                k[i + (size_t)j * n] *= sigma;
    /* one workspace for ssytrd, sstein (5 n) and sormtr, of the size LAPACK asks for */
    float q1 = 0.0f, q2 = 0.0f;
    LAPACKE_ssytrd_work(LAPACK_COL_MAJOR, 'L', n, k, n, d, e, tau, &q1, -1);
    LAPACKE_sormtr_work(LAPACK_COL_MAJOR, 'L', 'L', 'N', n, r, k, n, tau, z, n, &q2, -1);
    lapack_int lwork = (lapack_int)fmaxf(fmaxf(q1, q2), 5.0f * (float)n);
    work = malloc((size_t)lwork * sizeof *work);
    if (!work) {
        info = -1;
        goto done;
    }
    info = LAPACKE_ssytrd_work(LAPACK_COL_MAJOR, 'L', n, k, n, d, e, tau, work, lwork);
    lapack_int *iblock = iw, *isplit = iw + n, *ifail = iw + 2 * n, *iwork = iw + 3 * n;
    if (info == 0) {
        if (nf_cpu_tridiag_top(n, d, e, r, ev) == 0) {
            found = r;
            for (int j = 0; j < r; j++)
                iblock[j] = 1;
            isplit[0] = n;
        } else { /* d and e are read-only to sstebz and sstein */
            info = LAPACKE_sstebz('I', 'B', n, 0.0f, 0.0f, n - r + 1, n, 0.0f, d, e, &found,
                                  &nsplit, ev, iblock, isplit);
        }
    }
    if (info == 0 && found == r)
        info = LAPACKE_sstein_work(LAPACK_COL_MAJOR, n, d, e, found, ev, iblock, isplit, z, n,
                                   work, iwork, ifail);
    if (info == 0 && found == r)
        info = LAPACKE_sormtr_work(LAPACK_COL_MAJOR, 'L', 'L', 'N', n, r, k, n, tau, z, n, work,
                                   lwork);
    if (info == 0 && found == r) {
        if (sigma != 1.0f)
            for (int j = 0; j < r; j++)
                ev[j] /= sigma;
        /* grouped by split-off block when sstebz found several: ascending, with the vectors */
        for (int j = 1; j < r && nsplit > 1; j++)
            for (int i = j; i > 0 && ev[i - 1] > ev[i]; i--) {
                float t = ev[i];
                ev[i] = ev[i - 1];
                ev[i - 1] = t;
                for (int q = 0; q < n; q++) {
                    float u = z[q + (size_t)i * n];
                    z[q + (size_t)i * n] = z[q + (size_t)(i - 1) * n];
                    z[q + (size_t)(i - 1) * n] = u;
                }
            }
    }
done:
    if (info == 0 && found != r)
        info = 1;
    if (info == 0)
        /* eigenvalues ascend: the j-th largest is column r - 1 - j */
        for (int j = 0; j < r; j++) {
            w[j] = ev[r - 1 - j];
            memcpy(vt + (size_t)j * ldvt, z + (size_t)(r - 1 - j) * n, (size_t)n * sizeof *z);
        }
    free(ev);
    free(z);
    free(d);
    free(e);
    free(tau);
    free(iw);
    free(work);
    if (info == -1)
        return nf_error_set(err, NF_E_NOMEM, "out of memory in eigen-decomposition");
    return svd_status(info, n, n, err);
}

/* Orthonormalises the n x b column-major block y in place against the first c columns of q
 * (orthonormal) and within itself: classical Gram-Schmidt twice, then a QR. */
static int orth_block(int n, int b, const float *q, int c, float *y, float *proj, float *tau)
{
    for (int pass = 0; pass < 2 && c > 0; pass++) {
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, c, b, n, 1.0f, q, n, y, n, 0.0f,
                    proj, c);
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, b, c, -1.0f, q, n, proj, c,
                    1.0f, y, n);
    }
    lapack_int info = LAPACKE_sgeqrf(LAPACK_COL_MAJOR, n, b, y, n, tau);
    if (info == 0)
        info = LAPACKE_sorgqr(LAPACK_COL_MAJOR, n, b, b, y, n, tau);
    return (int)info;
}

#define KRYLOV_ROWS 256

/* Top r eigenpairs of the symmetric positive semi-definite n x n matrix k (not modified) by
 * block Krylov: the Rayleigh-Ritz pairs in the space spanned by X0, K X0, ...,
 * K^(depth-1) X0 (X0 = x0, n x b), built with full re-orthogonalisation. The result is
 * accepted only when it is as good as a dense solver's: the basis is orthonormal to 1e-4,
 * and the residual R = K V - V diag(theta), computed in double, bounds the sine of the
 * largest angle between span(V) and K's true top-r eigenspace (|R|_F / gap, the
 * Davis-Kahan sin-theta bound, the gap theta_r - theta_(r+1) taken from the Ritz values) by
 * 1e-3; a dense float32 solver (ssyevr) is off by 7e-4 on NUFILT's V_t of the generated
 * ViT task vectors (docs/performance.md). Otherwise NF_E_UNSUPPORTED (nothing written): the
 * caller solves densely. About 2 (depth + 1) n^2 b flops of GEMM instead of the O(n^3)
 * tridiagonal reduction: worth it for a few vectors of a matrix whose spectrum decays
 * (NUFILT's V_t). */
int nf_cpu_eig_top_krylov(int n, const float *k, int r, const float *x0, int b, int depth,
                          float *w, float *vt, int ldvt, nf_error *err)
{
    int d = b * depth;
    if (r <= 0 || r >= b || depth < 2 || d > n)
        return NF_E_UNSUPPORTED;
    size_t nd = (size_t)n * (size_t)d, nr = (size_t)n * (size_t)(r + 1);
    float *q = malloc(nd * sizeof *q), *kq = malloc(nd * sizeof *kq);
    float *h = malloc((size_t)d * (size_t)d * sizeof *h);
    float *tau = malloc((size_t)b * sizeof *tau);
    float *ev = malloc((size_t)d * sizeof *ev), *z = malloc((size_t)d * (r + 1) * sizeof *z);
    float *v = malloc(nr * sizeof *v);
    double *kd = malloc((size_t)n * KRYLOV_ROWS * sizeof *kd);
    double *vd = malloc(nr * sizeof *vd), *rd = malloc(nr * sizeof *rd);
    lapack_int *isuppz = malloc(2 * (size_t)(r + 1) * sizeof *isuppz);
    float *rowq = malloc((size_t)n * b * sizeof *rowq);
    float *rowkq = malloc((size_t)n * b * sizeof *rowkq);
    int rc = NF_E_UNSUPPORTED;
    lapack_int found = 0;
    if (!q || !kq || !h || !tau || !ev || !z || !v || !kd || !vd || !rd || !isuppz || !rowq ||
        !rowkq) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory in eigen-decomposition");
        goto out;
    }
    memcpy(q, x0, (size_t)n * (size_t)b * sizeof *q);
    if (orth_block(n, b, q, 0, q, h, tau))
        goto out;
    for (int j = 0; j < depth; j++) {
        float *qj = q + (size_t)j * b * n, *kqj = kq + (size_t)j * b * n;
        /* K Q_j through nf_cpu_gemm with the block transposed to n x b row-major: a narrow
         * product the CPU backend's own kernel takes with K read in place (K symmetric) */
        for (int c = 0; c < b; c++)
            for (int i = 0; i < n; i++)
                rowq[(size_t)i * b + c] = qj[i + (size_t)c * n];
        nf_cpu_gemm(0, 0, n, b, n, 1.0f, k, n, rowq, b, 0.0f, rowkq, b);
        for (int c = 0; c < b; c++)
            for (int i = 0; i < n; i++)
                kqj[i + (size_t)c * n] = rowkq[(size_t)i * b + c];
        if (j + 1 < depth) {
            float *y = qj + (size_t)b * n;
            memcpy(y, kqj, (size_t)n * (size_t)b * sizeof *y);
            if (orth_block(n, b, q, (j + 1) * b, y, h, tau))
                goto out;
        }
    }
    /* a block that fell into the span of the earlier ones (K of low rank, say) leaves QR's
     * arbitrary completion in the basis: it must still be orthonormal */
    cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, d, d, n, 1.0f, q, n, q, n, 0.0f, h, d);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++)
            if (!(fabsf(h[i + (size_t)j * d] - (i == j)) <= 1e-4f))
                goto out;
    /* Rayleigh-Ritz: H = Q^T K Q (symmetrised), its top r + 1 eigenpairs, V = Q Z */
    cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, d, d, n, 1.0f, q, n, kq, n, 0.0f, h, d);
    for (int i = 0; i < d; i++)
        for (int j = i + 1; j < d; j++)
            h[j + (size_t)i * d] = h[i + (size_t)j * d] =
                0.5f * (h[i + (size_t)j * d] + h[j + (size_t)i * d]);
    if (LAPACKE_ssyevr(LAPACK_COL_MAJOR, 'V', 'I', 'U', d, h, d, 0.0f, 0.0f, d - r, d, 0.0f,
                       &found, ev, z, d, isuppz) != 0 || found != r + 1)
        goto out;
    /* ascending: theta_(r+1) is ev[0], the wanted pairs are columns 1..r */
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, r, d, 1.0f, q, n, z + d, d, 0.0f, v,
                n);
    double gap = (double)ev[1] - (double)ev[0];
    if (!(gap > 0.0) || !(ev[r] > 0.0f))
        goto out;
    for (size_t i = 0; i < (size_t)n * r; i++)
        vd[i] = v[i];
    /* K V in double, KRYLOV_ROWS rows at a time (rows of K are its columns) */
    for (int i0 = 0; i0 < n; i0 += KRYLOV_ROWS) {
        int rows = n - i0 < KRYLOV_ROWS ? n - i0 : KRYLOV_ROWS;
        for (size_t i = 0; i < (size_t)n * rows; i++)
            kd[i] = k[(size_t)i0 * n + i];
        cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, rows, r, n, 1.0, kd, n, vd, n, 0.0,
                    rd + i0, n);
    }
    double res = 0;
    for (int j = 0; j < r; j++)
        for (int i = 0; i < n; i++) {
            double e = rd[i + (size_t)j * n] - (double)ev[j + 1] * vd[i + (size_t)j * n];
            res += e * e;
        }
    if (!(sqrt(res) <= 1e-3 * gap))
        goto out;
    /* the j-th largest is column r - j */
    for (int j = 0; j < r; j++) {
        w[j] = ev[r - j];
        memcpy(vt + (size_t)j * ldvt, v + (size_t)(r - 1 - j) * n, (size_t)n * sizeof *v);
    }
    rc = NF_OK;
out:
    free(q);
    free(kq);
    free(h);
    free(tau);
    free(ev);
    free(z);
    free(v);
    free(kd);
    free(vd);
    free(rd);
    free(isuppz);
    free(rowq);
    free(rowkq);
    return rc;
}
