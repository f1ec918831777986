/*
 * Micro-benchmark behind docs/performance.md's recommendations: single-threaded (as each
 * nufilt CPU worker runs), on one real matrix of the generated checkpoints.
 *
 *   svd_bench svd   FILE.f32 M N R [REPS]   top-R right singular vectors of X (M x N,
 *                                           row-major float32), several ways
 *   svd_bench train FILE.f32 M N [REPS]     one Adam iteration's gradient GEMMs of NUFILT,
 *                                           as nufilt computes them and with a Gram matrix
 *
 * svd: "current" is nufilt's own nf_cpu_svd_right (LAPACK sgesdd, after an LQ for tall
 * matrices), linked from libnufilt.a; "gesvdx" asks LAPACK for the top R only
 * (sbdsvdx); "gram64" forms K = X^T X in double (dsyrk) and takes its top R eigenvectors
 * (dsyevr, RANGE='I'); "gram32" the same in float; "rand-q2" is the randomized range finder
 * of src/linalg/la_svd.c (oversampling 10, 2 power iterations).  Accuracy: the largest principal
 * angle against the float64 SVD (dgesdd) of the same float32 matrix, and
 * |V V^T - V0 V0^T|_F / sqrt(2 R).  Times: median CPU seconds of the thread over REPS runs.
 *
 * train: with tau (M x N), r_l = 64, k = 136 (= 8 + 128), random data of the right shapes,
 * "current" = the 7 GEMMs of nf_nufilt_grad, "gram" = the same gradients from K = tau^T tau
 * and D = tau^T C computed once: per iteration K B (N x N x 64) plus five products of
 * N x 64 x 136, independent of M.  Reports seconds per iteration, the one-off cost of K and
 * D, and the relative difference of the gradients.
 *
 * Build: cc -O2 -I src/include -I src bench/perf/svd_bench.c build-perf/src/libnufilt.a
 *        -llapacke -lopenblas -lm -lpthread   (bench/perf/run.sh does it)
 */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static float *load(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    float *x = malloc(n * sizeof *x);
    if (!f || !x || fread(x, sizeof *x, n, f) != n) {
        fprintf(stderr, "svd_bench: cannot read %zu floats from %s\n", n, path);
        exit(2);
    }
    fclose(f);
    return x;
}

/* reference: top r right singular vectors in double, rows of vt0 (r x n) */
static void reference(const float *x, int m, int n, int r, double *vt0)
{
    int k = m < n ? m : n;
    double *a = malloc((size_t)m * n * sizeof *a), *s = malloc(k * sizeof *s);
    double *u = malloc((size_t)n * k * sizeof *u), *w = malloc((size_t)k * m * sizeof *w);
    for (size_t i = 0; i < (size_t)m * n; i++)
        a[i] = x[i];
    /* column-major X^T (n x m): its left vectors are our right ones */
    if (LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', n, m, a, n, s, u, n, w, k) != 0) {
        fprintf(stderr, "dgesdd failed\n");
        exit(3);
    }
    for (int j = 0; j < r; j++)
        memcpy(vt0 + (size_t)j * n, u + (size_t)j * n, n * sizeof *u);
    printf("  sigma_r/sigma_r+1 = %.5f\n", s[r - 1] / s[r]);
    free(a), free(s), free(u), free(w);
}

static void accuracy(const double *vt0, const float *vt, int r, int n, double *angle, double *proj)
{
    double *g = calloc((size_t)r * r, sizeof *g), *s = malloc(r * sizeof *s);
    double *vd = malloc((size_t)r * n * sizeof *vd);
    for (size_t i = 0; i < (size_t)r * n; i++)
        vd[i] = vt[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, r, n, 1.0, vt0, n, vd, n, 0.0, g, r);
    LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'N', r, r, g, r, s, NULL, 1, NULL, 1);
    double smin = s[r - 1] > 1.0 ? 1.0 : s[r - 1], d = 0;
    /* |P - P0|_F^2 = 2 sum sin^2(theta_i) = 2 sum (1 - s_i)(1 + s_i) */
    for (int i = 0; i < r; i++) {
        double c = s[i] > 1.0 ? 1.0 : s[i];
        d += 2.0 * (1.0 - c) * (1.0 + c);
    }
    *angle = acos(smin) * 180.0 / M_PI;
    *proj = sqrt(d) / sqrt(2.0 * r);
    free(g), free(s), free(vd);
}

/* ---- candidate methods: x is a scratch copy (may be destroyed), vt gets r x n ---- */

static int m_current(float *x, int m, int n, int r, float *vt)
{
    int k = m < n ? m : n;
    float *s = malloc(k * sizeof *s);
    nf_error err;
    memset(&err, 0, sizeof err);
    int rc = nf_cpu_svd_right(m, n, x, n, r, s, vt, n, &err);
    free(s);
    return rc;
}

static int m_gesvdx(float *x, int m, int n, int r, float *vt)
{
    int k = m < n ? m : n;
    lapack_int ns = 0;
    float *s = malloc(k * sizeof *s), *u = malloc((size_t)n * r * sizeof *u);
    lapack_int *sup = malloc(12 * (size_t)k * sizeof *sup);
    /* column-major X^T (n x m): left vectors = our right vectors, only the top r */
    lapack_int info = LAPACKE_sgesvdx(LAPACK_COL_MAJOR, 'V', 'N', 'I', n, m, x, n, 0, 0, 1, r,
                                      &ns, s, u, n, NULL, 1, sup);
    if (info == 0)
        memcpy(vt, u, (size_t)n * r * sizeof *u);
    free(s), free(u), free(sup);
    return info != 0 || ns != r;
}

static int m_gram64(float *x, int m, int n, int r, float *vt)
{
    double *d = malloc((size_t)m * n * sizeof *d), *kk = calloc((size_t)n * n, sizeof *kk);
    double *w = malloc(n * sizeof *w), *z = malloc((size_t)n * r * sizeof *z);
    lapack_int *sup = malloc(2 * (size_t)n * sizeof *sup), found = 0;
    for (size_t i = 0; i < (size_t)m * n; i++)
        d[i] = x[i];
    /* K = X^T X; row-major upper == column-major lower of the same memory */
    cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, n, m, 1.0, d, n, 0.0, kk, n);
    lapack_int info = LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', 'I', 'L', n, kk, n, 0, 0, n - r + 1,
                                     n, 0.0, &found, w, z, n, sup);
    /* eigenvalues ascending: column r-1-j of z (column-major n x r) is v_j */
    for (int j = 0; j < r && info == 0; j++)
        for (int i = 0; i < n; i++)
            vt[(size_t)j * n + i] = (float)z[(size_t)(r - 1 - j) * n + i];
    free(d), free(kk), free(w), free(z), free(sup);
    return info != 0 || found != r;
}

static int m_gram32(float *x, int m, int n, int r, float *vt)
{
    float *kk = calloc((size_t)n * n, sizeof *kk), *w = malloc(n * sizeof *w);
    float *z = malloc((size_t)n * r * sizeof *z);
    lapack_int *sup = malloc(2 * (size_t)n * sizeof *sup), found = 0;
    cblas_ssyrk(CblasColMajor, CblasLower, CblasNoTrans, n, m, 1.0f, x, n, 0.0f, kk, n);
    lapack_int info = LAPACKE_ssyevr(LAPACK_COL_MAJOR, 'V', 'I', 'L', n, kk, n, 0, 0, n - r + 1,
                                     n, 0.0f, &found, w, z, n, sup);
    for (int j = 0; j < r && info == 0; j++)
        memcpy(vt + (size_t)j * n, z + (size_t)(r - 1 - j) * n, n * sizeof *z);
    free(kk), free(w), free(z), free(sup);
    return info != 0 || found != r;
}

static void qr(int m, int n, float *a)
{
    float *tau = malloc(n * sizeof *tau);
    LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, n, a, n, tau);
    LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, n, n, a, n, tau);
    free(tau);
}

static int m_rand(float *x, int m, int n, int r, float *vt)
{
    int k = m < n ? m : n, l = r + 10 > k ? k : r + 10;
    float *g = malloc((size_t)m * l * sizeof *g), *z = malloc((size_t)n * l * sizeof *z);
    float *y = malloc((size_t)m * l * sizeof *y), *s = malloc(l * sizeof *s);
    float *w = malloc((size_t)l * l * sizeof *w);
    srand(1);
    for (size_t i = 0; i < (size_t)m * l; i++) {
        double u1 = (rand() + 1.0) / (RAND_MAX + 1.0), u2 = rand() / (RAND_MAX + 1.0);
        g[i] = (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, l, m, 1, x, n, g, l, 0, z, l);
    qr(n, l, z);
    for (int it = 0; it < 2; it++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, l, n, 1, x, n, z, l, 0, y, l);
        qr(m, l, y);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, l, m, 1, x, n, y, l, 0, z, l);
        qr(n, l, z);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, l, n, 1, x, n, z, l, 0, y, l);
    float *sup = malloc(l * sizeof *sup);
    LAPACKE_sgesvd(LAPACK_ROW_MAJOR, 'N', 'S', m, l, y, l, s, NULL, 1, w, l, sup);
    /* Vt = W_r^T Z^T = (r x l) (l x n) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, n, l, 1, w, l, z, l, 0, vt, n);
    free(g), free(z), free(y), free(s), free(w), free(sup);
    return 0;
}

typedef int (*method_fn)(float *, int, int, int, float *);

static int svd_mode(const char *path, int m, int n, int r, int reps)
{
    const char *names[] = {"current", "gesvdx", "gram64", "gram32", "rand-q2"};
    method_fn fns[] = {m_current, m_gesvdx, m_gram64, m_gram32, m_rand};
    float *x = load(path, (size_t)m * n), *a = malloc((size_t)m * n * sizeof *a);
    float *vt = malloc((size_t)r * n * sizeof *vt);
    double *vt0 = malloc((size_t)r * n * sizeof *vt0), *t = malloc(reps * sizeof *t);
    printf("svd %s: %d x %d, top %d, %d reps, 1 thread\n", path, m, n, r, reps);
    reference(x, m, n, r, vt0);
    double base = 0;
    for (int i = 0; i < 5; i++) {
        for (int k = 0; k < reps; k++) {
            memcpy(a, x, (size_t)m * n * sizeof *a);
            double t0 = cpu_now();
            if (fns[i](a, m, n, r, vt)) {
                printf("  %-8s failed\n", names[i]);
                break;
            }
            t[k] = cpu_now() - t0;
        }
        double ang, pd, med = median(t, reps);
        accuracy(vt0, vt, r, n, &ang, &pd);
        if (i == 0)
            base = med;
        printf("  %-8s %8.3f s  (x%.2f)  max angle %9.4f deg  |dP|/sqrt(2r) %.2e\n", names[i], med,
               base / med, ang, pd);
    }
    return 0;
}

static void gemm(int ta, int tb, int m, int n, int k, float al, const float *a, int lda,
                 const float *b, int ldb, float be, float *c, int ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m,
                n, k, al, a, lda, b, ldb, be, c, ldc);
}

static void randn(float *x, size_t n, float sd)
{
    for (size_t i = 0; i < n; i++) {
        double u1 = (rand() + 1.0) / (RAND_MAX + 1.0), u2 = rand() / (RAND_MAX + 1.0);
        x[i] = (float)(sd * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
    }
}

static double reldiff(const float *a, const float *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)b[i] * b[i];
    }
    return sqrt(d / s);
}

static int train_mode(const char *path, int m, int n, int reps)
{
    const int r = 64, k = 136;
    float *tau = load(path, (size_t)m * n);
    float *C = malloc((size_t)m * k * 4), *V = malloc((size_t)k * n * 4), *A = malloc((size_t)r * n * 4);
    float *B = malloc((size_t)n * r * 4), *T = malloc((size_t)m * r * 4), *AV = malloc((size_t)r * k * 4);
    float *E = malloc((size_t)m * k * 4), *H = malloc((size_t)m * r * 4), *gB = malloc((size_t)n * r * 4);
    float *TE = malloc((size_t)r * k * 4), *gA = malloc((size_t)r * n * 4);
    float *K = malloc((size_t)n * n * 4), *D = malloc((size_t)n * k * 4), *KB = malloc((size_t)n * r * 4);
    float *F = malloc((size_t)n * k * 4), *gB2 = malloc((size_t)n * r * 4), *gA2 = malloc((size_t)r * n * 4);
    srand(7);
    randn(C, (size_t)m * k, 1e-2f);
    randn(V, (size_t)k * n, 1.0f / sqrtf((float)n));
    randn(A, (size_t)r * n, 0.02f);
    randn(B, (size_t)n * r, 1e-3f);
    double *t1 = malloc(reps * sizeof *t1), *t2 = malloc(reps * sizeof *t2);
    printf("train %s: tau %d x %d, r_l %d, k %d, %d reps, 1 thread\n", path, m, n, r, k, reps);
    for (int it = 0; it < reps; it++) {
        double t0 = cpu_now();
        /* nf_nufilt_grad: T = tau B; AV = A V^T; E = C - T AV; H = E AV^T; gB = -2 tau^T H;
         * TE = T^T E; gA = -2 TE V */
        gemm(0, 0, m, r, n, 1, tau, n, B, r, 0, T, r);
        gemm(0, 1, r, k, n, 1, A, n, V, n, 0, AV, k);
        memcpy(E, C, (size_t)m * k * 4);
        gemm(0, 0, m, k, r, -1, T, r, AV, k, 1, E, k);
        gemm(0, 1, m, r, k, 1, E, k, AV, k, 0, H, r);
        gemm(1, 0, n, r, m, -2, tau, n, H, r, 0, gB, r);
        gemm(1, 0, r, k, m, 1, T, r, E, k, 0, TE, k);
        gemm(0, 0, r, n, k, -2, TE, k, V, n, 0, gA, n);
        t1[it] = cpu_now() - t0;
    }
    double t0 = cpu_now();
    /* once per matrix: K = tau^T tau (full, via syrk + mirror), D = tau^T C */
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, m, 1.0f, tau, n, 0.0f, K, n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            K[(size_t)i * n + j] = K[(size_t)j * n + i];
    gemm(1, 0, n, k, m, 1, tau, n, C, k, 0, D, k);
    double once = cpu_now() - t0;
    for (int it = 0; it < reps; it++) {
        double t0 = cpu_now();
        /* AV = A V^T; KB = K B; F = D - KB AV (= tau^T E); gB = -2 F AV^T; TE = B^T F;
         * gA = -2 TE V */
        gemm(0, 1, r, k, n, 1, A, n, V, n, 0, AV, k);
        gemm(0, 0, n, r, n, 1, K, n, B, r, 0, KB, r);
        memcpy(F, D, (size_t)n * k * 4);
        gemm(0, 0, n, k, r, -1, KB, r, AV, k, 1, F, k);
        gemm(0, 1, n, r, k, -2, F, k, AV, k, 0, gB2, r);
        gemm(1, 0, r, k, n, 1, B, r, F, k, 0, TE, k);
        gemm(0, 0, r, n, k, -2, TE, k, V, n, 0, gA2, n);
        t2[it] = cpu_now() - t0;
    }
    double a = median(t1, reps), b = median(t2, reps);
    printf("  current %.4f s/iter   gram %.4f s/iter (x%.2f)   once-per-matrix K, D %.4f s   "
           "50 iters: %.2f s -> %.2f s (x%.2f)\n", a, b, a / b, once, 50 * a, 50 * b + once,
           50 * a / (50 * b + once));
    printf("  gradient difference (float32 rounding): dB %.2e  dA %.2e\n",
           reldiff(gB2, gB, (size_t)n * r), reldiff(gA2, gA, (size_t)r * n));
    return 0;
}

int main(int argc, char **argv)
{
    openblas_set_num_threads(1);
    if (argc >= 6 && !strcmp(argv[1], "svd"))
        return svd_mode(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]),
                        argc > 6 ? atoi(argv[6]) : 3);
    if (argc >= 5 && !strcmp(argv[1], "train"))
        return train_mode(argv[2], atoi(argv[3]), atoi(argv[4]), argc > 5 ? atoi(argv[5]) : 5);
    fprintf(stderr, "usage: svd_bench svd FILE.f32 M N R [REPS] | train FILE.f32 M N [REPS]\n");
    return 2;
}
