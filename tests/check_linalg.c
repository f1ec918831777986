/* The linear-algebra layer on the CPU backend against float64 references written here:
 * a one-sided Jacobi SVD, plain triple loops, and the Adam formula in double. */
#include <float.h>
#include <lapacke.h>

#include "backend/cpu/bisect.h"
#include "backend/devices.h"
#include "linalg/la.h"
#include "testutil.h"

static nf_device *dev;
static nf_la la;
static nf_error err;

static void setup(void)
{
    nf_error_clear(&err);
    ck_assert_int_eq(nf_backend_cpu.open(0, &dev, &err), NF_OK);
    nf_la_init(&la, dev, &err);
}

static void teardown(void) { nf_backend_cpu.close(dev); }

/* One-sided Jacobi SVD of a (m x n, row-major, double): singular values s (descending) and
 * right singular vectors as rows of vt (n x n). */
static void jacobi_svd(int m, int n, const double *a, double *s, double *vt)
{
    double *u = malloc(sizeof(double) * m * n), *v = calloc((size_t)n * n, sizeof(double));
    memcpy(u, a, sizeof(double) * m * n);
    for (int i = 0; i < n; i++)
        v[i * n + i] = 1;
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double al = 0, be = 0, ga = 0;
                for (int i = 0; i < m; i++) {
                    al += u[i * n + p] * u[i * n + p];
                    be += u[i * n + q] * u[i * n + q];
                    ga += u[i * n + p] * u[i * n + q];
                }
                if (fabs(ga) <= 1e-300 || fabs(ga) < 1e-17 * sqrt(al * be))
                    continue;
                off = fmax(off, fabs(ga) / sqrt(al * be));
                double z = (be - al) / (2 * ga);
                double t = (z >= 0 ? 1 : -1) / (fabs(z) + sqrt(1 + z * z));
                double c = 1 / sqrt(1 + t * t), sn = c * t;
                for (int i = 0; i < m; i++) {
                    double x = u[i * n + p], y = u[i * n + q];
                    u[i * n + p] = c * x - sn * y;
                    u[i * n + q] = sn * x + c * y;
                }
                for (int i = 0; i < n; i++) {
                    double x = v[i * n + p], y = v[i * n + q];
                    v[i * n + p] = c * x - sn * y;
                    v[i * n + q] = sn * x + c * y;
                }
            }
        if (off < 1e-15)
            break;
    }
    int *ord = malloc(sizeof(int) * n);
    double *sv = malloc(sizeof(double) * n);
    for (int j = 0; j < n; j++) {
        double t = 0;
        for (int i = 0; i < m; i++)
            t += u[i * n + j] * u[i * n + j];
        sv[j] = sqrt(t);
        ord[j] = j;
    }
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && sv[ord[j]] > sv[ord[j - 1]]; j--) {
            int t = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = t;
        }
    for (int j = 0; j < n; j++) {
        s[j] = sv[ord[j]];
        for (int i = 0; i < n; i++)
            vt[j * n + i] = v[i * n + ord[j]];
    }
    free(u);
    free(v);
    free(ord);
    free(sv);
}

/* A matrix with chosen singular values: U diag(s) V^T with random orthonormal factors. */
static void make_spectrum(int m, int n, const double *s, uint64_t seed, float *out)
{
    int k = m < n ? m : n;
    double *u = malloc(sizeof(double) * m * k), *v = malloc(sizeof(double) * n * k);
    uint64_t st = seed;
    for (int pass = 0; pass < 2; pass++) {
        double *q = pass ? v : u;
        int rows = pass ? n : m;
        for (int i = 0; i < rows * k; i++)
            q[i] = tu_normal(&st);
        for (int j = 0; j < k; j++) { /* Gram-Schmidt, twice */
            for (int rep = 0; rep < 2; rep++)
                for (int p = 0; p < j; p++) {
                    double d = 0;
                    for (int i = 0; i < rows; i++)
                        d += q[i * k + j] * q[i * k + p];
                    for (int i = 0; i < rows; i++)
                        q[i * k + j] -= d * q[i * k + p];
                }
            double nn = 0;
            for (int i = 0; i < rows; i++)
                nn += q[i * k + j] * q[i * k + j];
            for (int i = 0; i < rows; i++)
                q[i * k + j] /= sqrt(nn);
        }
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double t = 0;
            for (int p = 0; p < k; p++)
                t += u[i * k + p] * s[p] * v[j * k + p];
            out[(size_t)i * n + j] = (float)t;
        }
    free(u);
    free(v);
}

/* Sine of the largest principal angle between the row spaces of a (r x n, float, near
 * orthonormal rows) and b (r x n, double, orthonormal rows), bounded above by the Frobenius
 * norm of the part of a outside span(b): |a - (a b^T) b|_F. (Computing it from the cosines,
 * sqrt(1 - cos^2), would turn float32 rounding of 1e-7 into 3e-4.) */
static double subspace_sine(int r, int n, const float *a, const double *b)
{
    double res = 0;
    for (int i = 0; i < r; i++) {
        double c[64];
        for (int j = 0; j < r; j++) {
            double t = 0;
            for (int p = 0; p < n; p++)
                t += (double)a[i * n + p] * b[j * n + p];
            c[j] = t;
        }
        for (int p = 0; p < n; p++) {
            double t = a[i * n + p];
            for (int j = 0; j < r; j++)
                t -= c[j] * b[j * n + p];
            res += t * t;
        }
    }
    return sqrt(res);
}

static const int shapes[][2] = {{20, 12}, {12, 20}, {37, 53}, {64, 64}, {1, 9}, {9, 1}};

/* Loop index: shape _i % NSHAPES, and the method _i / NSHAPES: the exact SVD (gesdd), the
 * Gram-matrix method in double (--svd gram), the same in float32 (--svd fast). */
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

static const int modes[] = {NF_LA_SVD_EXACT, NF_LA_SVD_GRAM, NF_LA_SVD_FAST};
static const char *const mode_names[] = {"exact", "gram", "fast"};

START_TEST(test_svd_vs_jacobi)
{
    int m = shapes[_i % NSHAPES][0], n = shapes[_i % NSHAPES][1], k = m < n ? m : n;
    int mode = modes[_i / NSHAPES], gram = mode != NF_LA_SVD_EXACT;
    const char *name = mode_names[_i / NSHAPES];
    float *x = malloc(sizeof(float) * m * n);
    tu_fill(x, (size_t)m * n, 11 + _i % NSHAPES, 1.0);
    double *xd = malloc(sizeof(double) * m * n), s[64], vt[64 * 64];
    for (int i = 0; i < m * n; i++)
        xd[i] = x[i];
    jacobi_svd(m, n, xd, s, vt);
    nf_mat X, V;
    ck_assert_int_eq(nf_la_alloc(&la, m, n, &X), NF_OK);
    ck_assert_int_eq(nf_la_upload(&la, &X, x), NF_OK);
    float sv[64];
    int r = 0, want = k > 4 ? 4 : k;
    nf_svd_args a = {want, 1e-6, mode, 0, 0, 0};
    ck_assert_int_eq(nf_la_svd_right(&la, &X, &a, &V, &r, sv), NF_OK);
    ck_assert_int_eq(r, want);
    /* gesdd gives every singular value, the Gram methods the top r */
    for (int j = 0; j < (gram ? r : k); j++)
        ck_assert_msg(fabs(sv[j] - s[j]) <= 1e-5 * s[0] + 1e-6, "%s sigma %d: %g vs %g", name,
                      j, (double)sv[j], s[j]);
    float *hv = nf_la_host(&la, &V);
    /* orthonormal rows, and the same top subspace (when the gap allows) */
    for (int i = 0; i < r; i++)
        for (int j = 0; j < r; j++) {
            double d = 0;
            for (int p = 0; p < n; p++)
                d += (double)hv[i * n + p] * hv[j * n + p];
            ck_assert(fabs(d - (i == j)) < 1e-5);
        }
    if (k > r && s[r - 1] - s[r] > 0.05 * s[0])
        ck_assert_double_lt(subspace_sine(r, n, hv, vt), 1e-5);
    /* each vector, not only the subspace, where its singular value stands apart */
    for (int j = 0; j < r; j++) {
        double gap = s[0];
        if (j > 0 && s[j - 1] - s[j] < gap)
            gap = s[j - 1] - s[j];
        if (j + 1 < k && s[j] - s[j + 1] < gap)
            gap = s[j] - s[j + 1];
        if (gap < 0.05 * s[0])
            continue;
        double c = 0;
        for (int p = 0; p < n; p++)
            c += (double)hv[j * n + p] * vt[j * n + p];
        ck_assert_msg(fabs(fabs(c) - 1.0) < 1e-5, "%s vector %d: |cos| %g", name, j,
                      fabs(c));
    }
    nf_la_free(&la, &X);
    nf_la_free(&la, &V);
    free(x);
    free(xd);
}
END_TEST

/* The right singular vectors of a rank-r product bf af from its factors (QRs and an r x r
 * SVD) against the Jacobi SVD of the product formed in double. Loop index: the shape. */
static const int lr_shapes[][3] = {{40, 30, 5}, {30, 40, 5}, {64, 64, 16}, {20, 20, 20},
                                   {50, 8, 8}};

START_TEST(test_svd_lowrank_vs_jacobi)
{
    int m = lr_shapes[_i][0], n = lr_shapes[_i][1], r = lr_shapes[_i][2];
    float *b = malloc(sizeof(float) * m * r), *a = malloc(sizeof(float) * r * n);
    tu_fill(b, (size_t)m * r, 31 + _i, 1.0);
    tu_fill(a, (size_t)r * n, 47 + _i, 1.0);
    for (int i = 0; i < m; i++) /* column weights: distinct singular values */
        for (int j = 0; j < r; j++)
            b[i * r + j] *= (float)(1.0 - 0.6 * j / r);
    double *xd = calloc((size_t)m * n, sizeof(double)), s[64], vt[64 * 64];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            for (int p = 0; p < r; p++)
                xd[i * n + j] += (double)b[i * r + p] * a[p * n + j];
    jacobi_svd(m, n, xd, s, vt);
    nf_mat B, A, V;
    ck_assert_int_eq(nf_la_alloc(&la, m, r, &B), NF_OK);
    ck_assert_int_eq(nf_la_alloc(&la, r, n, &A), NF_OK);
    nf_la_upload(&la, &B, b);
    nf_la_upload(&la, &A, a);
    int want = r > 1 ? r - 1 : 1, got = -1;
    float sv[64];
    nf_svd_args args = {want, 1e-6, NF_LA_SVD_FAST, 0, 0, 0};
    ck_assert_int_eq(nf_la_svd_right_lowrank(&la, &B, &A, &args, &V, &got, sv), NF_OK);
    ck_assert_int_eq(got, want);
    for (int j = 0; j < got; j++)
        ck_assert_msg(fabs(sv[j] - s[j]) <= 1e-5 * s[0], "sigma %d: %g vs %g", j,
                      (double)sv[j], s[j]);
    float *hv = nf_la_host(&la, &V);
    for (int i = 0; i < got; i++)
        for (int j = 0; j < got; j++) {
            double d = 0;
            for (int p = 0; p < n; p++)
                d += (double)hv[i * n + p] * hv[j * n + p];
            ck_assert(fabs(d - (i == j)) < 1e-5);
        }
    ck_assert_double_lt(subspace_sine(got, n, hv, vt), 1e-4);
    nf_la_free(&la, &V);
    /* asking for more than r: r vectors (the rest are zero singular values), and with a zero
     * factor none */
    args.rank = r + 3 < n && r + 3 < m ? r + 3 : r;
    ck_assert_int_eq(nf_la_svd_right_lowrank(&la, &B, &A, &args, &V, &got, NULL), NF_OK);
    ck_assert_int_eq(got, r);
    nf_la_free(&la, &V);
    nf_la_fill(&la, &B, 0.0f);
    ck_assert_int_eq(nf_la_svd_right_lowrank(&la, &B, &A, &args, &V, &got, NULL), NF_OK);
    ck_assert_int_eq(got, 0);
    nf_la_free(&la, &V);
    nf_la_free(&la, &B);
    nf_la_free(&la, &A);
    free(a);
    free(b);
    free(xd);
}
END_TEST

/* A host SVD result holding NaN is computed again once, and a second one is an error
 * (la_svd.c; the fault seen with OpenBLAS 0.3.21 in docs/performance.md, injected here through
 * nf_la_test_poison_svd). Loop index: 0 exact, 1 gram, 2 fast, 3 randomized. The repeat must give exactly the result of an undisturbed run (the CPU
 * solvers are deterministic); --svd fast's repeat is its precise path, the gram mode's result. */
START_TEST(test_svd_nonfinite_retry)
{
    static const int mode_of[] = {NF_LA_SVD_EXACT, NF_LA_SVD_GRAM, NF_LA_SVD_FAST,
                                  NF_LA_SVD_RANDOMIZED};
    int mode = mode_of[_i], m = 60, n = 40, r = 4;
    double s[40];
    for (int j = 0; j < 40; j++)
        s[j] = 4.0 * pow(j + 1.0, -1.0);
    float *x = malloc(sizeof(float) * m * n);
    make_spectrum(m, n, s, 21, x);
    nf_mat X, V, Vref;
    nf_la_alloc(&la, m, n, &X);
    nf_la_upload(&la, &X, x);
    nf_svd_args a = {r, -1.0, mode == NF_LA_SVD_FAST ? NF_LA_SVD_GRAM : mode, 4, 2, 77};
    int rank;
    /* the undisturbed result (for --svd fast, that of its precise path) */
    ck_assert_int_eq(nf_la_test_poison_svd, 0);
    ck_assert_int_eq(nf_la_svd_right(&la, &X, &a, &Vref, &rank, NULL), NF_OK);
    ck_assert_int_eq(rank, r);
    float *ref = malloc(sizeof(float) * r * n);
    memcpy(ref, nf_la_host(&la, &Vref), sizeof(float) * r * n);
    nf_la_free(&la, &Vref);
    a.mode = mode;
    /* one spoilt result: repeated, counted, and the same as undisturbed */
    unsigned retries = la.stats.svd_retries;
    nf_la_test_poison_svd = 1;
    ck_assert_int_eq(nf_la_svd_right(&la, &X, &a, &V, &rank, NULL), NF_OK);
    ck_assert_int_eq(nf_la_test_poison_svd, 0);
    ck_assert_uint_eq(la.stats.svd_retries - retries, 1);
    ck_assert_int_eq(V.rows, r);
    ck_assert_msg(memcmp(nf_la_host(&la, &V), ref, sizeof(float) * r * n) == 0,
                  "case %d: the repeated SVD differs from an undisturbed one", _i);
    nf_la_free(&la, &V);
    /* spoilt every time (--svd fast: its own result, then the precise path's twice): an
     * error that says so, nothing returned */
    nf_la_test_poison_svd = mode == NF_LA_SVD_FAST ? 3 : 2;
    nf_error_clear(&err);
    int rc = nf_la_svd_right(&la, &X, &a, &V, &rank, NULL);
    ck_assert_int_eq(rc, NF_E_NUMERIC);
    ck_assert_int_eq(nf_la_test_poison_svd, 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "returned NaN or Inf twice"));
    ck_assert_ptr_null(V.buf);
    nf_la_free(&la, &X);
    free(ref);
    free(x);
}
END_TEST

/* Loop index: bit 0 = wide (m < n), the rest the method (modes[]). */
START_TEST(test_svd_rank_tolerance)
{
    /* rank 3: paper mode keeps 3 of the 6 asked for, reference mode keeps all 6 (--svd fast
     * sees eigenvalues at rounding level and hands the matrix to the double-precision Gram
     * method) */
    int wide = _i & 1, mode = modes[_i >> 1];
    int m = wide ? 20 : 30, n = wide ? 30 : 20;
    double s[20] = {5, 3, 1};
    float *x = malloc(sizeof(float) * m * n);
    make_spectrum(m, n, s, 5, x);
    nf_mat X, V;
    nf_la_alloc(&la, m, n, &X);
    nf_la_upload(&la, &X, x);
    int r;
    nf_svd_args a = {6, 1e-6, mode, 0, 0, 0};
    unsigned precise = la.stats.svd_precise;
    ck_assert_int_eq(nf_la_svd_right(&la, &X, &a, &V, &r, NULL), NF_OK);
    ck_assert_int_eq(r, 3);
    ck_assert_uint_eq(la.stats.svd_precise - precise, mode == NF_LA_SVD_FAST);
    nf_la_free(&la, &V);
    a.rank_tol = -1;
    ck_assert_int_eq(nf_la_svd_right(&la, &X, &a, &V, &r, NULL), NF_OK);
    ck_assert_int_eq(r, 6);
    nf_la_free(&la, &V);
    /* an all-zero matrix has rank 0 in paper mode */
    memset(x, 0, sizeof(float) * m * n);
    nf_la_upload(&la, &X, x);
    a.rank_tol = 1e-6;
    ck_assert_int_eq(nf_la_svd_right(&la, &X, &a, &V, &r, NULL), NF_OK);
    ck_assert_int_eq(r, 0);
    nf_la_free(&la, &V);
    nf_la_free(&la, &X);
    free(x);
}
END_TEST

/* Loop index: bit 0 = wide (m < n), the rest the method: the randomized range finder, the
 * Gram-matrix method in double, in float32. */
START_TEST(test_svd_other_modes_vs_exact)
{
    /* a decaying spectrum with a gap after 16: the randomized range finder (to 1e-4) and the
     * Gram-matrix methods (to 1e-5) find the same top-16 subspace as gesdd; --svd fast takes
     * its float32 path here on tall matrices (and counts no hand-over to gram) */
    static const int other[] = {NF_LA_SVD_RANDOMIZED, NF_LA_SVD_GRAM, NF_LA_SVD_FAST};
    static const char *const other_names[] = {"randomized", "gram", "fast"};
    int wide = _i & 1, mode = other[_i >> 1], gram = mode != NF_LA_SVD_RANDOMIZED;
    int m = wide ? 200 : 300, n = wide ? 300 : 200, r = 16;
    double s[200];
    for (int j = 0; j < 200; j++)
        s[j] = (j < r ? 1.0 : 0.1) * pow(j + 1.0, -0.7);
    float *x = malloc(sizeof(float) * m * n);
    make_spectrum(m, n, s, 9, x);
    nf_mat X, Ve, Vr;
    nf_la_alloc(&la, m, n, &X);
    nf_la_upload(&la, &X, x);
    int re, rr;
    nf_svd_args a = {r, 1e-6, NF_LA_SVD_EXACT, 10, 2, 1234};
    ck_assert_int_eq(nf_la_svd_right(&la, &X, &a, &Ve, &re, NULL), NF_OK);
    a.mode = mode;
    unsigned precise = la.stats.svd_precise;
    ck_assert_int_eq(nf_la_svd_right(&la, &X, &a, &Vr, &rr, NULL), NF_OK);
    ck_assert_int_eq(rr, r);
    if (mode == NF_LA_SVD_FAST)
        ck_assert_uint_eq(la.stats.svd_precise - precise, wide);
    float *he = nf_la_host(&la, &Ve), *hr = nf_la_host(&la, &Vr);
    double *hed = malloc(sizeof(double) * r * n);
    for (int i = 0; i < r * n; i++)
        hed[i] = he[i];
    double sine = subspace_sine(r, n, hr, hed);
    ck_assert_msg(sine < (gram ? 1e-5 : 1e-4), "%s, %s: largest principal angle sine %g",
                  other_names[_i >> 1], wide ? "wide" : "tall", sine);
    nf_la_free(&la, &X);
    nf_la_free(&la, &Ve);
    nf_la_free(&la, &Vr);
    free(x);
    free(hed);
}
END_TEST

/* Block Krylov for a few eigenvectors (--svd fast's V_t). Loop index: 0 = a decaying
 * spectrum: it converges and agrees with a float64 Jacobi SVD; 1 = a nearly flat spectrum,
 * whose top vectors no float32 solver determines: it must decline (NF_E_UNSUPPORTED) rather
 * than return them. */
START_TEST(test_eig_krylov)
{
    int n = 300, r = 8, b = 16, depth = 8, flat = _i;
    double s[300];
    for (int j = 0; j < n; j++)
        s[j] = flat ? 1.0 - 1e-4 * j / n : pow(j + 1.0, -0.7);
    float *x = malloc(sizeof(float) * n * n), *k = malloc(sizeof(float) * n * n);
    float *x0 = malloc(sizeof(float) * n * b), w[8], *vt = malloc(sizeof(float) * r * n);
    make_spectrum(n, n, s, 21, x);
    /* K = X^T X in double, rounded once */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double t = 0;
            for (int p = 0; p < n; p++)
                t += (double)x[p * n + i] * x[p * n + j];
            k[i * n + j] = (float)t;
        }
    uint64_t st = 5;
    for (int i = 0; i < n * b; i++)
        x0[i] = (float)tu_normal(&st);
    nf_error err = {0};
    int rc = nf_cpu_eig_top_krylov(n, k, r, x0, b, depth, w, vt, n, &err);
    if (flat) {
        ck_assert_int_eq(rc, NF_E_UNSUPPORTED);
    } else {
        ck_assert_int_eq(rc, NF_OK);
        double *xd = malloc(sizeof(double) * n * n), *sd = malloc(sizeof(double) * n);
        double *vd = malloc(sizeof(double) * n * n);
        for (int i = 0; i < n * n; i++)
            xd[i] = x[i];
        jacobi_svd(n, n, xd, sd, vd);
        for (int j = 0; j < r; j++)
            ck_assert_msg(fabs(w[j] - sd[j] * sd[j]) <= 1e-5 * sd[0] * sd[0],
                          "eigenvalue %d: %g vs %g", j, (double)w[j], sd[j] * sd[j]);
        double sine = subspace_sine(r, n, vt, vd);
        ck_assert_msg(sine < 1e-4, "largest principal angle sine %g", sine);
        free(xd);
        free(sd);
        free(vd);
    }
    free(x);
    free(k);
    free(x0);
    free(vt);
}
END_TEST

/* The vectorised bisection behind --svd fast's eigen-solve (backend/cpu/bisect.c), against
 * LAPACK's dstebz in double on the same tridiagonal matrices: every returned eigenvalue
 * within half a float32 ulp (it is computed in double, then rounded) plus 1e-12 |T|.
 * Loop index: 0 random, 1 graded (eigenvalues over 15 orders of magnitude), 2 Wilkinson's
 * W21+ (its top eigenvalues come in pairs 1e-13 apart), 3 two entries. Then a matrix that
 * splits must be declined (it goes to sstebz). */
START_TEST(test_tridiag_bisection)
{
    static const int ns[] = {300, 200, 21, 2}, rs[] = {40, 200, 6, 1};
    int n = ns[_i], r = rs[_i];
    float d[300], e[300], w[300];
    double dd[300], ed[300], ref[300];
    uint64_t st = 7 + (uint64_t)_i;
    for (int j = 0; j < n; j++) {
        if (_i == 0) {
            d[j] = (float)tu_normal(&st);
            e[j] = (float)tu_normal(&st);
        } else if (_i == 1) {
            d[j] = (float)pow(10.0, -15.0 * j / n);
            e[j] = 0.01f * d[j];
        } else if (_i == 2) {
            d[j] = (float)abs(10 - j);
            e[j] = 1.0f;
        } else {
            d[j] = j ? -1.0f : 3.0f;
            e[j] = 0.5f;
        }
        dd[j] = d[j];
        ed[j] = e[j];
    }
    ck_assert_int_eq(nf_cpu_tridiag_top(n, d, e, r, w), 0);
    lapack_int m = 0, nsplit = 0, iblock[300], isplit[300];
    ck_assert_int_eq(LAPACKE_dstebz('I', 'E', n, 0.0, 0.0, n - r + 1, n, 0.0, dd, ed, &m, &nsplit,
                                    ref, iblock, isplit),
                     0);
    ck_assert_int_eq(m, r);
    double tn = 0;
    for (int j = 0; j < n; j++)
        tn = fmax(tn, fabs(dd[j]) + 2 * fabs(ed[j]));
    for (int j = 0; j < r; j++)
        ck_assert_msg(fabs(w[j] - ref[j]) <= 0.5 * FLT_EPSILON * fabs(ref[j]) + 1e-12 * tn,
                      "case %d: eigenvalue %d of the top %d: %.9g, dstebz %.17g", _i, j, r,
                      (double)w[j], ref[j]);
    /* a negligible off-diagonal entry splits the matrix: declined */
    e[n / 2 > 0 ? n / 2 - 1 : 0] = 0.0f;
    ck_assert_int_eq(nf_cpu_tridiag_top(n, d, e, r, w), 1);
}
END_TEST

/* The dense top-r eigen-solve of --svd fast on a matrix whose tridiagonal form splits (two
 * diagonal blocks): bisection declines, sstebz's eigenvalues come grouped by block and are
 * sorted; values and vectors against the construction. */
START_TEST(test_eig_top_split)
{
    int n = 40, r = 12;
    float *k = calloc((size_t)n * n, sizeof *k), w[12], *vt = malloc(sizeof(float) * r * n);
    /* block 1 (rows 0..19): diag(1..20) / 20; block 2: diag(1.5, 2.5, ...) / 20 */
    for (int i = 0; i < n; i++)
        k[i * n + i] = (float)((i < 20 ? i + 1.0 : i - 20 + 1.5) / 20.0);
    nf_error err = {0};
    ck_assert_int_eq(nf_cpu_eig_top(n, k, r, w, vt, n, &err), NF_OK);
    for (int j = 0; j < r; j++) {
        double want = (20.5 - 0.5 * j) / 20.0;
        ck_assert_msg(fabs(w[j] - want) < 1e-6, "eigenvalue %d: %g, want %g", j, (double)w[j],
                      want);
        /* its vector is the coordinate axis of that diagonal entry */
        int axis = j % 2 == 0 ? 20 + (19 - j / 2) : 19 - j / 2;
        ck_assert_msg(fabs(fabs(vt[j * n + axis]) - 1.0) < 1e-5, "vector %d not axis %d", j,
                      axis);
    }
    free(k);
    free(vt);
}
END_TEST

START_TEST(test_gemm_views)
{
    /* C (sub-view with ld) = alpha op(A) op(B) + beta C, every transpose, against loops */
    int m = 7, n = 5, k = 11;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            nf_mat A, B, C;
            nf_la_alloc(&la, ta ? k : m, ta ? m : k, &A);
            nf_la_alloc(&la, tb ? n : k, tb ? k : n, &B);
            nf_la_alloc(&la, m + 2, n + 3, &C);
            float *ha = nf_la_host(&la, &A), *hb = nf_la_host(&la, &B), *hc = nf_la_host(&la, &C);
            tu_fill(ha, (size_t)m * k, 1, 1);
            tu_fill(hb, (size_t)n * k, 2, 1);
            tu_fill(hc, (size_t)(m + 2) * (n + 3), 3, 1);
            float *c0 = malloc(sizeof(float) * (m + 2) * (n + 3));
            memcpy(c0, hc, sizeof(float) * (m + 2) * (n + 3));
            nf_mat Cs = nf_la_sub(&C, 1, 2, m, n);
            ck_assert_int_eq(nf_la_gemm(&la, ta, tb, 0.5f, &A, &B, -2.0f, &Cs), NF_OK);
            for (int i = 0; i < m + 2; i++)
                for (int j = 0; j < n + 3; j++) {
                    double want = c0[i * (n + 3) + j];
                    if (i >= 1 && i < m + 1 && j >= 2 && j < n + 2) {
                        double t = 0;
                        for (int p = 0; p < k; p++) {
                            double av = ta ? ha[p * m + (i - 1)] : ha[(i - 1) * k + p];
                            double bv = tb ? hb[(j - 2) * k + p] : hb[p * n + (j - 2)];
                            t += av * bv;
                        }
                        want = 0.5 * t - 2.0 * want;
                    }
                    ck_assert_msg(fabs(hc[i * (n + 3) + j] - want) < 1e-4, "ta %d tb %d (%d,%d)",
                                  ta, tb, i, j);
                }
            free(c0);
            nf_la_free(&la, &A);
            nf_la_free(&la, &B);
            nf_la_free(&la, &C);
        }
}
END_TEST

START_TEST(test_adam_pytorch_semantics)
{
    size_t n = 1000;
    nf_mat x, g, mm, vv;
    nf_la_alloc(&la, 1, (int)n, &x);
    nf_la_alloc(&la, 1, (int)n, &g);
    nf_la_alloc(&la, 1, (int)n, &mm);
    nf_la_alloc(&la, 1, (int)n, &vv);
    float *hx = nf_la_host(&la, &x), *hg = nf_la_host(&la, &g);
    double *rx = malloc(n * sizeof *rx), *rm = calloc(n, sizeof *rm), *rv = calloc(n, sizeof *rv);
    tu_fill(hx, n, 4, 1);
    for (size_t i = 0; i < n; i++)
        rx[i] = hx[i];
    nf_la_fill(&la, &mm, 0);
    nf_la_fill(&la, &vv, 0);
    const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (int s = 1; s <= 20; s++) {
        tu_fill(hg, n, 100 + s, s == 1 ? 0 : 1e-3); /* step 1: zero gradient, no move */
        ck_assert_int_eq(nf_la_adam(&la, &x, &g, &mm, &vv, lr, b1, b2, eps, s), NF_OK);
        for (size_t i = 0; i < n; i++) {
            rm[i] = b1 * rm[i] + (1 - b1) * hg[i];
            rv[i] = b2 * rv[i] + (1 - b2) * (double)hg[i] * hg[i];
            rx[i] -= lr * (rm[i] / (1 - pow(b1, s))) / (sqrt(rv[i] / (1 - pow(b2, s))) + eps);
        }
        if (s == 1)
            for (size_t i = 0; i < n; i++)
                ck_assert(hx[i] == (float)rx[i]);
    }
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(hx[i] - rx[i]) < 1e-6, "element %zu: %g vs %g", i, (double)hx[i],
                      rx[i]);
    nf_la_free(&la, &x);
    nf_la_free(&la, &g);
    nf_la_free(&la, &mm);
    nf_la_free(&la, &vv);
    free(rx);
    free(rm);
    free(rv);
}
END_TEST

START_TEST(test_qr_dot_axpby)
{
    int m = 50, n = 7;
    nf_mat a, b;
    nf_la_alloc(&la, m, n, &a);
    float *h = nf_la_host(&la, &a);
    tu_fill(h, (size_t)m * n, 8, 1);
    ck_assert_int_eq(nf_la_qr(&la, &a), NF_OK);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double d = 0;
            for (int p = 0; p < m; p++)
                d += (double)h[p * n + i] * h[p * n + j];
            ck_assert(fabs(d - (i == j)) < 1e-5);
        }
    nf_la_alloc(&la, m, n, &b);
    ck_assert_int_eq(nf_la_fill(&la, &b, 2.0f), NF_OK);
    ck_assert_int_eq(nf_la_axpby(&la, 3.0f, &a, 0.5f, &b), NF_OK);
    double dot, ref = 0;
    ck_assert_int_eq(nf_la_dot(&la, &a, &b, &dot), NF_OK);
    float *hb = nf_la_host(&la, &b);
    for (int i = 0; i < m * n; i++) {
        ck_assert(fabs(hb[i] - (3.0 * h[i] + 1.0)) < 1e-6);
        ref += (double)h[i] * hb[i];
    }
    ck_assert(fabs(dot - ref) < 1e-9 * fabs(ref) + 1e-12);
    nf_la_free(&la, &a);
    nf_la_free(&la, &b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("linalg");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_loop_test(tc, test_svd_vs_jacobi, 0, 3 * NSHAPES);
    tcase_add_loop_test(tc, test_svd_rank_tolerance, 0, 6);
    tcase_add_loop_test(tc, test_svd_other_modes_vs_exact, 0, 6);
    tcase_add_loop_test(tc, test_eig_krylov, 0, 2);
    tcase_add_loop_test(tc, test_tridiag_bisection, 0, 4);
    tcase_add_test(tc, test_eig_top_split);
    tcase_add_test(tc, test_gemm_views);
    tcase_add_loop_test(tc, test_svd_lowrank_vs_jacobi, 0,
                        (int)(sizeof lr_shapes / sizeof lr_shapes[0]));
    tcase_add_test(tc, test_adam_pytorch_semantics);
    tcase_add_test(tc, test_qr_dot_axpby);
    tcase_add_loop_test(tc, test_svd_nonfinite_retry, 0, 4);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
