/*
 * Backend-neutral linear algebra: what the merge methods call. Each entry point runs the
 * device's slot when it has one and the CPU kernel on host copies otherwise, so every method
 * is written once and runs on every backend.
 */
#ifndef NF_LA_H
#define NF_LA_H

#include <stddef.h>
#include <stdint.h>

#include "../backend/backend.h"

typedef struct nf_la_stats {
    double svd_s;      /* wall time in SVDs (exact and randomized) */
    double train_s;    /* wall time in iterative optimisation loops */
    double flops;      /* GEMM flops issued */
    unsigned fallbacks;/* operations that ran on the CPU for lack of a device slot */
    unsigned svd_precise; /* --svd fast: matrices handed to the double-precision Gram method */
    unsigned svd_retries; /* host SVD results holding NaN or Inf, computed again (la_svd.c) */
} nf_la_stats;

typedef struct nf_la {
    nf_device *dev;
    const nf_backend *be;
    int host;          /* buffers are host memory (the backend's host_memory) */
    nf_error *err;
    nf_la_stats stats;
} nf_la;

typedef nf_view nf_mat;

void nf_la_init(nf_la *la, nf_device *dev, nf_error *err);

int nf_la_alloc(nf_la *la, int rows, int cols, nf_mat *out);
void nf_la_free(nf_la *la, nf_mat *m);
/* A rows x cols view inside m starting at (r0, c0). */
nf_mat nf_la_sub(const nf_mat *m, int r0, int c0, int rows, int cols);
/* Host pointer to a matrix's first element when buffers are host memory, else NULL. */
float *nf_la_host(nf_la *la, const nf_mat *m);
/* Copies between a host array (rows x cols, contiguous) and a matrix view. */
int nf_la_upload(nf_la *la, nf_mat *m, const float *src);
int nf_la_download(nf_la *la, const nf_mat *m, float *dst);
/* Uploads raw bytes of a float dtype and converts them to float32 on the device. */
int nf_la_upload_convert(nf_la *la, nf_mat *m, const void *src, nf_dtype dt);

/* C = alpha op(A) op(B) + beta C */
int nf_la_gemm(nf_la *la, int ta, int tb, float alpha, const nf_mat *a, const nf_mat *b,
               float beta, nf_mat *c);
/* y = alpha x + beta y (contiguous matrices of equal size); x NULL: y = beta y + alpha */
int nf_la_axpby(nf_la *la, float alpha, const nf_mat *x, float beta, nf_mat *y);
int nf_la_copy(nf_la *la, const nf_mat *x, nf_mat *y);
/* y = x for views of equal shape that may be strided (sub-matrices): one element-wise op per
 * row when either view is strided */
int nf_la_copy_view(nf_la *la, const nf_mat *x, nf_mat *y);
/* Row i of y (rows x cols, contiguous rows) times d[i] (host array of y->rows values). */
int nf_la_scale_rows(nf_la *la, nf_mat *y, const float *d);
int nf_la_fill(nf_la *la, nf_mat *y, float v);
/* sum of x .* y in double (y NULL: sum of squares) */
int nf_la_dot(nf_la *la, const nf_mat *x, const nf_mat *y, double *out);
/* One Adam step (PyTorch semantics) at step s >= 1 */
int nf_la_adam(nf_la *la, nf_mat *x, const nf_mat *g, nf_mat *m, nf_mat *v, double lr,
               double b1, double b2, double eps, int s);
/* Thin QR in place: a (m x n, m >= n) becomes Q */
int nf_la_qr(nf_la *la, nf_mat *a);

enum { NF_LA_SVD_EXACT = 0, NF_LA_SVD_RANDOMIZED = 1, NF_LA_SVD_GRAM = 2, NF_LA_SVD_FAST = 3 };

typedef struct nf_svd_args {
    int rank;            /* wanted number of right singular vectors (capped at min(m, n)) */
    double rank_tol;     /* drop those with s < rank_tol * s_max (< 0: keep all, zeros too) */
    int mode;            /* NF_LA_SVD_* */
    int oversample;      /* randomized: extra columns (default 10) */
    int power_iters;     /* randomized: power iterations (default 2) */
    uint64_t seed;       /* randomized: key of the test matrix */
} nf_svd_args;

/* Top right singular vectors of x (m x n, not modified): allocates *vt (rank x n rows =
 * vectors), sets *rank to how many were kept (possibly 0: then vt is empty), and, when s is
 * not NULL, writes the first min(m, n) singular values (exact) or rank values (randomized,
 * gram, fast; the rest 0). */
int nf_la_svd_right(nf_la *la, const nf_mat *x, const nf_svd_args *a, nf_mat *vt, int *rank,
                    float *s);

/* Test hook (tests/check_linalg.c): while positive, the next host SVD result that la_svd.c
 * checks is overwritten with NaN before the check and the count goes down by one. Always 0
 * outside that test. */
extern int nf_la_test_poison_svd;

/* The `--svd fast` method on its own, for a caller that already holds the Gram matrix:
 * the top right singular vectors of x (m x n) as the top eigenvectors of k = x^T x (n x n,
 * float32; NULL: formed here). Float32 squares the condition number, so when the smallest
 * wanted eigenvalue is below 1e-4 of the largest (singular values below 1e-2 of the largest),
 * or when n > m, the double-precision Gram method (NF_LA_SVD_GRAM) on x is used instead and
 * stats.svd_precise counts it. Arguments and results as nf_la_svd_right (mode ignored). */
int nf_la_svd_right_fast(nf_la *la, const nf_mat *x, const nf_mat *k, const nf_svd_args *a,
                         nf_mat *vt, int *rank, float *s);

/* Top right singular vectors of the rank-r product x = bf af (bf m x r, af r x n, r <= m, n)
 * without forming it: thin QRs bf = Q_b R_b and af^T = Q_a R_a, the SVD of the r x r core
 * R_b R_a^T = U_c S V_c^T, and V = Q_a V_c. Exact (gesdd on the core) whatever a->mode says;
 * results as nf_la_svd_right (the s values are those of bf af). */
int nf_la_svd_right_lowrank(nf_la *la, const nf_mat *bf, const nf_mat *af, const nf_svd_args *a,
                            nf_mat *vt, int *rank, float *s);

/* Full thin SVD of x (m x n, not modified; may be a strided view), k = min(m, n):
 * allocates *u (m x k; pass u NULL when the left vectors are not wanted) and *vt (k x n), and
 * writes the k singular values, descending, to the host array s. Runs the device's svd slot
 * when it has one, LAPACK (sgesdd) on a host copy otherwise. Singular vectors are determined
 * up to a common sign per pair (u_i, v_i). */
int nf_la_svd(nf_la *la, const nf_mat *x, nf_mat *u, float *s, nf_mat *vt);
/* The same, with x (contiguous) used as the workspace: its contents are destroyed, which
 * saves a copy of x on the device. */
int nf_la_svd_overwrite(nf_la *la, nf_mat *x, nf_mat *u, float *s, nf_mat *vt);
/* Orthogonal polar factor of x (m x n): out (allocated, m x n) = P Q^T from the thin SVD
 * x = P diag(s) Q^T; s (host, min(m, n) values) receives the singular values when not
 * NULL. */
int nf_la_polar(nf_la *la, const nf_mat *x, nf_mat *out, float *s);

#endif
