/*
 * check_backend_ops: every primitive of every compiled-in backend, on every device it has,
 * against a float64 reference computed here on the host (ggml's test-backend-ops idea).
 *
 *     check_backend_ops [API]      API: cpu, opencl, vulkan; none = every compiled-in backend
 *
 * A backend whose driver is missing (count() == 0) prints "SKIP <api>/<test>: <why>" for each
 * of its tests; run for that backend alone, the program then exits 77 (meson's "skipped"), so
 * a missing driver is never a silent pass. A backend not compiled in also exits 77.
 *
 * Fork mode. A PoCL context (or a lavapipe device) created before fork() is dead in the child,
 * and CLBlast compiles its GEMM kernels per process (8-12 s on PoCL). So this program runs its
 * suites with CK_NOFORK unless CK_FORK is set in the environment: devices are opened once, on
 * first use, and shared by all tests of the process. With CK_FORK=yes it still works (slowly):
 * devices are opened lazily in whichever process runs the test (the cache below is keyed by
 * pid), and the parent never touches a driver: even clGetPlatformIDs in the parent makes PoCL
 * hang in the children (measured), so the parent asks for device counts in a short-lived
 * child (probe_count). Check enforces the tcase timeouts set below only in fork mode; in the
 * default no-fork mode meson's test timeout bounds the run.
 *
 * Tolerances (eps32 = 2^-23, eps64 = 2^-52), each checked element by element:
 *   gemm    |C - C64| <= (4 sqrt(k) + 4) eps32 (|alpha| (|opA| |opB|) + |beta| |C0|)
 *           (NaN anywhere fails; padding around views must be untouched bit for bit; NaN
 *           in A's and B's padding must not leak in; with beta == 0, C starts as NaN)
 *   axpby   |y - y64| <= 2 eps32 (|alpha x| + |beta y|) (+ |alpha| without x)
 *   dot     cpu: n eps64 sum|x y| (double accumulation);
 *           other backends: 64 eps32 sum|x y| (covers float accumulation on devices without
 *           fp64; the observed error is printed)
 *   adam    against the same formula in float64 from the same inputs, per step:
 *           m: 2 eps32 (|b1 m| + |(1-b1) g|),  v: 2 eps32 (|b2 v| + |(1-b2) g^2|) + 1e-37,
 *           x: 2 eps32 |x64| + 16 eps32 |update64|
 *   convert bit-exact against independent references (F16: exact decoding of the fields in
 *           double; BF16: the top half of a float32; F64: the C cast, round to nearest even),
 *           NaN only required to stay NaN
 *   la.c    the entry points on each device, and again through a copy of the backend table
 *           with compute slots removed or answering NF_E_UNSUPPORTED (the CPU fallback path)
 */
#include <check.h>
#include <signal.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cpu/sgemm.h"
#include "backend/devices.h"
#include "core/dtype.h"
#include "linalg/la.h"

#define EPS32 (1.0 / 8388608.0)
#define EPS64 DBL_EPSILON

/* ---- the backend under test and its devices (opened lazily, per process) ---------------- */

static const nf_backend *g_be;

#define MAX_DEV 8
static struct {
    pid_t pid;
    const nf_backend *be;
    int n;
    nf_device *dev[MAX_DEV];
} g_cache;

static void cache_close(void)
{
    if (g_cache.pid == getpid())
        for (int i = 0; i < g_cache.n; i++)
            if (g_cache.dev[i])
                g_cache.be->close(g_cache.dev[i]);
    memset(&g_cache, 0, sizeof g_cache);
}

static int ndev(void)
{
    if (g_cache.pid != getpid() || g_cache.be != g_be) {
        if (g_cache.pid == getpid())
            cache_close();
        /* handles inherited across fork() are dead: forget them, do not close them */
        memset(&g_cache, 0, sizeof g_cache);
        g_cache.pid = getpid();
        g_cache.be = g_be;
        int n = 0;
        g_be->count(&n, NULL);
        g_cache.n = n < MAX_DEV ? n : MAX_DEV;
    }
    return g_cache.n;
}

static nf_device *dev_at(int i)
{
    ndev();
    if (!g_cache.dev[i]) {
        nf_error e = {0};
        int rc = g_be->open(i, &g_cache.dev[i], &e);
        ck_assert_msg(rc == NF_OK, "%s:%d: open failed: %s", g_be->api, i, e.msg);
    }
    return g_cache.dev[i];
}

static const char *dev_name(int i)
{
    static char s[320];
    const nf_device_info *in = nf_device_get_info(dev_at(i));
    snprintf(s, sizeof s, "%s:%d (%s)", in->api, in->index, in->name);
    return s;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint64_t rnd64(void)
{
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rndf(void) /* uniform in [-1, 1) */
{
    return (float)((double)(rnd64() >> 40) * (1.0 / 8388608.0) - 1.0);
}

static float *fvec(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

static nf_buffer *dalloc(nf_device *d, size_t n)
{
    nf_buffer *b = NULL;
    nf_error e = {0};
    int rc = g_be->alloc(d, n ? n : 1, &b, &e);
    ck_assert_msg(rc == NF_OK, "alloc of %zu floats: %s", n, e.msg);
    return b;
}

static nf_buffer *dup_(nf_device *d, const float *h, size_t n)
{
    nf_buffer *b = dalloc(d, n);
    nf_error e = {0};
    if (n) {
        int rc = g_be->upload(d, b, 0, h, n * 4, &e);
        ck_assert_msg(rc == NF_OK, "upload: %s", e.msg);
    }
    return b;
}

static void ddown(nf_device *d, const nf_buffer *b, float *h, size_t n)
{
    nf_error e = {0};
    if (n) {
        int rc = g_be->download(d, b, 0, h, n * 4, &e);
        ck_assert_msg(rc == NF_OK, "download: %s", e.msg);
    }
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bitsf(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- gemm ------------------------------------------------------------------------------- */

typedef struct mat_store {
    int rows, cols, ld;
    size_t off, total;
    float *h;
} mat_store;

/* a rows x cols matrix inside a buffer: padded views get an offset and ld > cols, the
 * padding filled with pad */
static void store_init(mat_store *s, int rows, int cols, int padded, float pad)
{
    s->rows = rows;
    s->cols = cols;
    s->ld = padded ? cols + 3 : (cols > 0 ? cols : 1);
    s->off = padded ? 5 : 0;
    s->total = s->off + (size_t)(rows > 0 ? rows : 1) * (size_t)s->ld + (padded ? 4 : 0);
    s->h = fvec(s->total);
    for (size_t i = 0; i < s->total; i++)
        s->h[i] = pad;
}

static float *at(mat_store *s, int r, int c) { return &s->h[s->off + (size_t)r * s->ld + c]; }

static int in_view(const mat_store *s, size_t i)
{
    if (i < s->off || s->rows == 0 || s->cols == 0)
        return 0;
    size_t r = (i - s->off) / (size_t)s->ld, c = (i - s->off) % (size_t)s->ld;
    return r < (size_t)s->rows && c < (size_t)s->cols;
}

static double opv(mat_store *s, int t, int i, int j) { return t ? *at(s, j, i) : *at(s, i, j); }

typedef struct gemm_stats {
    double worst; /* largest err / tol seen */
} gemm_stats;

static void gemm_case(nf_device *d, const char *dn, int m, int n, int k, int ta, int tb,
                      int padded, float alpha, float beta, gemm_stats *st)
{
    const float NaN = nanf("");
    const float SENT = 12345.0f;
    mat_store A, B, C;
    store_init(&A, ta ? k : m, ta ? m : k, padded, NaN);
    store_init(&B, tb ? n : k, tb ? k : n, padded, NaN);
    store_init(&C, m, n, padded, SENT);
    for (int r = 0; r < A.rows; r++)
        for (int c = 0; c < A.cols; c++)
            *at(&A, r, c) = rndf();
    for (int r = 0; r < B.rows; r++)
        for (int c = 0; c < B.cols; c++)
            *at(&B, r, c) = rndf();
    for (int r = 0; r < m; r++)
        for (int c = 0; c < n; c++)
            *at(&C, r, c) = beta == 0.0f ? NaN : rndf();
    float *c0 = fvec(C.total);
    memcpy(c0, C.h, C.total * sizeof *c0);

    nf_buffer *ba = dup_(d, A.h, A.total), *bb = dup_(d, B.h, B.total),
              *bc = dup_(d, C.h, C.total);
    nf_gemm_op op = {ta, tb, m, n, k, alpha, beta,
                     {ba, A.off, A.rows, A.cols, A.ld},
                     {bb, B.off, B.rows, B.cols, B.ld},
                     {bc, C.off, C.rows, C.cols, C.ld}};
    nf_error e = {0};
    int rc = g_be->gemm ? g_be->gemm(d, &op, &e) : NF_E_UNSUPPORTED;
    if (rc == NF_E_UNSUPPORTED) {
        /* the slot is optional: the la tests cover the fallback */
        g_be->free(d, ba);
        g_be->free(d, bb);
        g_be->free(d, bc);
        free(A.h);
        free(B.h);
        free(C.h);
        free(c0);
        return;
    }
    ck_assert_msg(rc == NF_OK, "%s: gemm %dx%dx%d: %s", dn, m, n, k, e.msg);
    ddown(d, bc, C.h, C.total);

    /* padding untouched */
    for (size_t i = 0; i < C.total; i++)
        if (!in_view(&C, i))
            ck_assert_msg(fbits(C.h[i]) == fbits(SENT),
                          "%s: gemm %c%c %dx%dx%d padded=%d wrote outside C's view at %zu",
                          dn, ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, padded, i);
    /* every entry for small problems, a random sample of 4096 for large ones */
    long total = (long)m * n;
    int full = (double)m * n * k <= 4e6;
    long nchk = full ? total : 4096;
    const double sk = 4.0 * sqrt((double)k) + 4.0;
    for (long t = 0; t < nchk && total > 0; t++) {
        long idx = full ? t : (long)(rnd64() % (uint64_t)total);
        int i = (int)(idx / n), j = (int)(idx % n);
        double ref = 0, mag = 0;
        for (int p = 0; p < k; p++) {
            double x = opv(&A, ta, i, p) * opv(&B, tb, p, j);
            ref += x;
            mag += fabs(x);
        }
        double cij0 = c0[C.off + (size_t)i * C.ld + j];
        ref = alpha * ref + (beta == 0.0f ? 0.0 : beta * cij0);
        mag = fabs(alpha) * mag + (beta == 0.0f ? 0.0 : fabs(beta) * fabs(cij0));
        double got = *at(&C, i, j);
        double err = fabs(got - ref), tol = sk * EPS32 * mag + 1e-30;
        ck_assert_msg(err <= tol,
                      "%s: gemm %c%c %dx%dx%d alpha %g beta %g padded=%d: C[%d][%d] = %.9g, "
                      "reference %.9g (err %.3g > tol %.3g)",
                      dn, ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, beta, padded, i, j,
                      got, ref, err, tol);
        if (err / tol > st->worst)
            st->worst = err / tol;
    }
    g_be->free(d, ba);
    g_be->free(d, bb);
    g_be->free(d, bc);
    free(A.h);
    free(B.h);
    free(C.h);
    free(c0);
}

static const int small_shapes[][3] = {
    {1, 1, 1},   {1, 53, 101}, {37, 1, 101}, {37, 53, 1},  {37, 53, 101},
    {101, 37, 53}, {64, 64, 64}, {2, 3, 300}, {5, 7, 0},   {0, 5, 3},
    {4, 0, 3},
    /* NUFILT's adapter products (136 x 64 x 768, 64 x 200 x 768, 768 x 64 x 200) at prime
     * sizes near them: edges of the 6 x 16 register tiles and of the 256-deep k-blocks */
    {131, 61, 521}, {61, 197, 263}, {257, 67, 199},
    /* short C with a short inner dimension (S V, 64 x 768 x 136), the own kernel's too */
    {61, 211, 137}, {7, 769, 5},
};
static const float ab[][2] = {{1.0f, 0.0f}, {0.7f, -1.3f}, {-2.0f, 1.0f}, {0.0f, 0.5f}};

START_TEST(test_gemm_small)
{
    for (int di = 0; di < ndev(); di++) {
        nf_device *d = dev_at(di);
        const char *dn = dev_name(di);
        gemm_stats st = {0};
        int ns = (int)(sizeof small_shapes / sizeof small_shapes[0]);
        for (int s = 0; s < ns; s++)
            for (int t = 0; t < 4; t++)
                for (int pad = 0; pad < 2; pad++)
                    for (int a = 0; a < 4; a++)
                        gemm_case(d, dn, small_shapes[s][0], small_shapes[s][1],
                                  small_shapes[s][2], t & 1, t >> 1, pad, ab[a][0], ab[a][1],
                                  &st);
        printf("  %s: gemm small shapes: worst err/tol %.3f%s\n", dn, st.worst,
               strcmp(g_be->api, "cpu") != 0 ? ""
               : nf_cpu_sgemm_width() == 32 ? " (own AVX-512 kernel)"
               : nf_cpu_sgemm_width() == 16 ? " (own AVX2/FMA kernel)"
                                            : " (OpenBLAS)");
    }
}
END_TEST

/* The CPU backend's own GEMM has two register tiles, 16 columns wide (AVX2) and 32 (AVX-512F,
 * the default where the processor has it). test_gemm_small checks the default one against
 * float64; here the two must give the same bits, for every shape, transpose, stride, alpha
 * and beta above and a few that cross the 64-column and 256-deep blocks. */
START_TEST(test_gemm_own_widths)
{
    if (strcmp(g_be->api, "cpu") != 0)
        return;
    if (!nf_cpu_sgemm_w(32, 0, 0, 1, 1, 1, 1.0f, (float[]){1}, 1, (float[]){1}, 1, 0.0f,
                        (float[]){0}, 1)) {
        printf("  cpu: own GEMM widths: SKIPPED, this processor has no AVX-512F (or AVX2)\n");
        return;
    }
    static const int more[][3] = {{150, 130, 600}, {6, 32, 256}, {12, 96, 257}, {1, 65, 3}};
    const int ns = (int)(sizeof small_shapes / sizeof small_shapes[0]), nm = 4;
    int cases = 0;
    srand(7);
    for (int s = 0; s < ns + nm; s++) {
        const int *sh = s < ns ? small_shapes[s] : more[s - ns];
        int m = sh[0], n = sh[1], k = sh[2];
        if (m <= 0 || n <= 0 || k <= 0)
            continue;
        for (int t = 0; t < 4; t++)
            for (int a = 0; a < 4; a++) {
                int ta = t & 1, tb = t >> 1, pad = a & 1 ? 3 : 0;
                int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
                int lda = ac + pad, ldb = bc + pad, ldc = n + pad;
                float *A = malloc(sizeof(float) * (size_t)ar * lda);
                float *B = malloc(sizeof(float) * (size_t)br * ldb);
                float *C16 = malloc(sizeof(float) * (size_t)m * ldc);
                float *C32 = malloc(sizeof(float) * (size_t)m * ldc);
                ck_assert(A && B && C16 && C32);
                for (size_t i = 0; i < (size_t)ar * lda; i++)
                    A[i] = (float)rand() / RAND_MAX - 0.5f;
                for (size_t i = 0; i < (size_t)br * ldb; i++)
                    B[i] = (float)rand() / RAND_MAX - 0.5f;
                for (size_t i = 0; i < (size_t)m * ldc; i++)
                    C16[i] = C32[i] = (float)rand() / RAND_MAX - 0.5f;
                ck_assert(nf_cpu_sgemm_w(16, ta, tb, m, n, k, ab[a][0], A, lda, B, ldb,
                                         ab[a][1], C16, ldc));
                ck_assert(nf_cpu_sgemm_w(32, ta, tb, m, n, k, ab[a][0], A, lda, B, ldb,
                                         ab[a][1], C32, ldc));
                ck_assert_msg(memcmp(C16, C32, sizeof(float) * (size_t)m * ldc) == 0,
                              "own GEMM %c%c %dx%dx%d alpha %g beta %g lda+%d: the 16- and "
                              "32-wide tiles differ",
                              ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, ab[a][0], ab[a][1], pad);
                free(A);
                free(B);
                free(C16);
                free(C32);
                cases++;
            }
    }
    printf("  cpu: own GEMM widths: 16 and 32 bit-identical in %d cases\n", cases);
}
END_TEST

/* Gram products, X^T X and X X^T with A and B the same view (the CPU backend computes one
 * triangle with ssyrk and mirrors it in 32 x 32 tiles): every entry against float64, and
 * the result exactly symmetric. Sizes cross the tile edges. */
START_TEST(test_gemm_gram)
{
    static const int sizes[][2] = {{1, 7}, {31, 53}, {33, 300}, {70, 41}, {97, 129}};
    for (int di = 0; di < ndev(); di++) {
        nf_device *d = dev_at(di);
        const char *dn = dev_name(di);
        for (int si = 0; si < 5; si++)
            for (int t = 0; t < 2; t++) {
                int m = sizes[si][0], k = sizes[si][1];
                mat_store X, C;
                store_init(&X, t ? m : k, t ? k : m, si & 1, nanf(""));
                store_init(&C, m, m, 0, 0.0f);
                for (int r = 0; r < X.rows; r++)
                    for (int c = 0; c < X.cols; c++)
                        *at(&X, r, c) = rndf();
                for (int r = 0; r < m; r++)
                    for (int c = 0; c < m; c++)
                        *at(&C, r, c) = nanf("");
                nf_buffer *bx = dup_(d, X.h, X.total), *bc = dup_(d, C.h, C.total);
                nf_view vx = {bx, X.off, X.rows, X.cols, X.ld};
                /* t = 0: C = X^T X (X k x m); t = 1: C = X X^T (X m x k) */
                nf_gemm_op op = {!t, t, m, m, k, 1.0f, 0.0f, vx, vx,
                                 {bc, C.off, C.rows, C.cols, C.ld}};
                nf_error e = {0};
                int rc = g_be->gemm ? g_be->gemm(d, &op, &e) : NF_E_UNSUPPORTED;
                if (rc != NF_E_UNSUPPORTED) {
                    ck_assert_msg(rc == NF_OK, "%s: Gram %dx%d: %s", dn, m, k, e.msg);
                    ddown(d, bc, C.h, C.total);
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < m; j++) {
                            double ref = 0, mag = 0;
                            for (int p = 0; p < k; p++) {
                                double x = opv(&X, !t, i, p) * opv(&X, !t, j, p);
                                ref += x;
                                mag += fabs(x);
                            }
                            double got = *at(&C, i, j);
                            double tol = (4.0 * sqrt((double)k) + 4.0) * EPS32 * mag + 1e-30;
                            ck_assert_msg(fabs(got - ref) <= tol,
                                          "%s: Gram %s %dx%d: C[%d][%d] = %.9g, reference %.9g",
                                          dn, t ? "X X^T" : "X^T X", m, k, i, j, got, ref);
                            if (!strcmp(g_be->api, "cpu"))
                                ck_assert_msg(fbits(*at(&C, i, j)) == fbits(*at(&C, j, i)),
                                              "%s: Gram %dx%d not symmetric at (%d, %d)", dn,
                                              m, k, i, j);
                        }
                }
                g_be->free(d, bx);
                g_be->free(d, bc);
                free(X.h);
                free(C.h);
            }
    }
}
END_TEST

/* NF_BACKEND_OPS_QUICK=1 leaves out the large GEMMs and the timing (for valgrind runs) */
static int quick(const char *what)
{
    const char *v = getenv("NF_BACKEND_OPS_QUICK");
    if (v && *v && strcmp(v, "0") != 0) {
        printf("  %s/%s: left out (NF_BACKEND_OPS_QUICK)\n", g_be->api, what);
        return 1;
    }
    return 0;
}

START_TEST(test_gemm_large)
{
    if (quick("test_gemm_large"))
        return;
    for (int di = 0; di < ndev(); di++) {
        nf_device *d = dev_at(di);
        const char *dn = dev_name(di);
        gemm_stats st = {0};
        for (int t = 0; t < 4; t++)
            gemm_case(d, dn, 3072, 768, 768, t & 1, t >> 1, 0, 1.0f, 0.0f, &st);
        gemm_case(d, dn, 3072, 768, 768, 0, 1, 1, 0.7f, -1.3f, &st);
        gemm_case(d, dn, 768, 3072, 768, 1, 0, 1, -2.0f, 1.0f, &st);
        printf("  %s: gemm 3072x768x768 (sampled): worst err/tol %.3f\n", dn, st.worst);
    }
}
END_TEST

/* throughput, for orientation only (nothing asserted) */
static double gflops(nf_device *d, int m, int n, int k)
{
    size_t na = (size_t)m * k, nb = (size_t)k * n, nc = (size_t)m * n;
    float *h = fvec(na > nb ? (na > nc ? na : nc) : (nb > nc ? nb : nc));
    for (size_t i = 0; i < na || i < nb || i < nc; i++)
        h[i] = rndf();
    nf_buffer *ba = dup_(d, h, na), *bb = dup_(d, h, nb), *bc = dup_(d, h, nc);
    nf_gemm_op op = {0, 0, m, n, k, 1.0f, 0.0f, {ba, 0, m, k, k}, {bb, 0, k, n, n},
                     {bc, 0, m, n, n}};
    nf_error e = {0};
    double best[5];
    for (int r = -1; r < 5; r++) { /* one warm-up */
        double t0 = now_s();
        int rc = g_be->gemm(d, &op, &e);
        if (rc == NF_OK)
            rc = g_be->finish(d, &e);
        ck_assert_msg(rc == NF_OK, "gemm: %s", e.msg);
        if (r >= 0)
            best[r] = now_s() - t0;
    }
    for (int i = 0; i < 5; i++) /* median of 5 */
        for (int j = i + 1; j < 5; j++)
            if (best[j] < best[i]) {
                double t = best[i];
                best[i] = best[j];
                best[j] = t;
            }
    g_be->free(d, ba);
    g_be->free(d, bb);
    g_be->free(d, bc);
    free(h);
    return 2.0 * m * n * k / best[2] * 1e-9;
}

START_TEST(test_gemm_throughput)
{
    if (quick("test_gemm_throughput"))
        return;
    for (int di = 0; di < ndev(); di++) {
        nf_device *d = dev_at(di);
        if (!g_be->gemm)
            continue;
        printf("  %s: GEMM 768x768x768 %.1f GFLOP/s, 3072x768x768 %.1f GFLOP/s (median of 5)\n",
               dev_name(di), gflops(d, 768, 768, 768), gflops(d, 3072, 768, 768));
    }
}
END_TEST

/* ---- axpby ------------------------------------------------------------------------------ */

START_TEST(test_axpby)
{
    static const size_t sizes[] = {1, 7, 1000, 100003};
    static const float cases[][2] = {{1.0f, 0.0f}, {0.7f, -1.3f}, {-2.0f, 1.0f}, {0.0f, 0.0f},
                                     {3.0f, 0.0f}, {0.25f, 2.0f}};
    const float SENT = -777.0f;
    for (int di = 0; di < ndev(); di++) {
        nf_device *d = dev_at(di);
        const char *dn = dev_name(di);
        if (!g_be->axpby)
            continue;
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
            for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
                for (int withx = 0; withx < 2; withx++) {
                    size_t n = sizes[si], xo = 3, yo = 5, tot = n + 9;
                    float alpha = cases[ci][0], beta = cases[ci][1];
                    float *x = fvec(tot), *y = fvec(tot), *y0 = fvec(tot);
                    for (size_t i = 0; i < tot; i++) {
                        x[i] = rndf();
                        y[i] = SENT;
                    }
                    for (size_t i = 0; i < n; i++)
                        y[yo + i] = beta == 0.0f ? nanf("") : rndf();
                    memcpy(y0, y, tot * sizeof *y);
                    nf_buffer *bx = dup_(d, x, tot), *by = dup_(d, y, tot);
                    nf_axpby_op op = {n, alpha, beta, withx ? bx : NULL, withx ? xo : 0, by, yo};
                    nf_error e = {0};
                    int rc = g_be->axpby(d, &op, &e);
                    ck_assert_msg(rc == NF_OK || rc == NF_E_UNSUPPORTED, "%s: axpby: %s", dn,
                                  e.msg);
                    ddown(d, by, y, tot);
                    for (size_t i = 0; rc == NF_OK && i < tot; i++) {
                        if (i < yo || i >= yo + n) {
                            ck_assert_msg(fbits(y[i]) == fbits(SENT),
                                          "%s: axpby wrote outside its range at %zu", dn, i);
                            continue;
                        }
                        double by0 = beta == 0.0f ? 0.0 : (double)beta * y0[i];
                        double ax = withx ? (double)alpha * x[xo + i - yo] : (double)alpha;
                        double ref = ax + by0;
                        double tol = 2 * EPS32 * (fabs(ax) + fabs(by0)) + 1e-38;
                        ck_assert_msg(fabs(y[i] - ref) <= tol,
                                      "%s: axpby n=%zu alpha %g beta %g x=%d: y[%zu] = %.9g, "
                                      "reference %.9g",
                                      dn, n, alpha, beta, withx, i - yo, y[i], ref);
                    }
                    g_be->free(d, bx);
                    g_be->free(d, by);
                    free(x);
                    free(y);
                    free(y0);
                }
    }
}
END_TEST

/* ---- dot -------------------------------------------------------------------------------- */

static void dot_cases(nf_device *d, const char *dn, double rel_tol_eps64_per_n, double tol32)
{
    static const size_t sizes[] = {1, 3, 1000, 65537, 3072 * 768};
    double worst = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int withy = 0; withy < 2; withy++) {
            size_t n = sizes[si], xo = 2, yo = 7, tot = n + 8;
            float *x = fvec(tot), *y = fvec(tot);
            for (size_t i = 0; i < tot; i++) {
                x[i] = rndf() + (withy ? 0.0f : 0.5f);
                y[i] = rndf();
            }
            nf_buffer *bx = dup_(d, x, tot), *by = dup_(d, y, tot);
            nf_dot_op op = {n, bx, xo, withy ? by : NULL, withy ? yo : 0};
            nf_error e = {0};
            double got = -1;
            int rc = g_be->dot(d, &op, &got, &e);
            ck_assert_msg(rc == NF_OK || rc == NF_E_UNSUPPORTED, "%s: dot: %s", dn, e.msg);
            if (rc == NF_OK) {
                long double ref = 0, mag = 0;
                for (size_t i = 0; i < n; i++) {
                    long double p = (long double)x[xo + i] * (withy ? y[yo + i] : x[xo + i]);
                    ref += p;
                    mag += fabsl(p);
                }
                double tol = rel_tol_eps64_per_n > 0 ? (double)n * EPS64 * (double)mag
                                                     : tol32 * (double)mag;
                double err = fabs(got - (double)ref);
                ck_assert_msg(err <= tol + 1e-300,
                              "%s: dot n=%zu y=%d: %.17g, reference %.17Lg (err %.3g > %.3g)",
                              dn, n, withy, got, ref, err, tol);
                if ((double)mag > 0 && err / (double)mag > worst)
                    worst = err / (double)mag;
            }
            g_be->free(d, bx);
            g_be->free(d, by);
            free(x);
            free(y);
        }
    printf("  %s: dot: worst |err| / sum|xy| = %.3g\n", dn, worst);
}

START_TEST(test_dot)
{
    int cpu = strcmp(g_be->api, "cpu") == 0;
    for (int di = 0; di < ndev(); di++) {
        if (!g_be->dot)
            continue;
        /* cpu accumulates in double by contract; others may lack fp64 */
        dot_cases(dev_at(di), dev_name(di), cpu ? 1.0 : 0.0, 64 * EPS32);
    }
}
END_TEST

/* The OpenCL float-accumulation path, forced on a device that has fp64 (read at open). */
START_TEST(test_dot_opencl_float_path)
{
    if (strcmp(g_be->api, "opencl") != 0)
        return;
    int n = 0;
    g_be->count(&n, NULL);
    for (int di = 0; di < n && di < MAX_DEV; di++) {
        setenv("NF_OPENCL_NO_FP64", "1", 1);
        nf_device *d = NULL;
        nf_error e = {0};
        int rc = g_be->open(di, &d, &e);
        unsetenv("NF_OPENCL_NO_FP64");
        ck_assert_msg(rc == NF_OK, "opencl:%d: %s", di, e.msg);
        char name[360];
        snprintf(name, sizeof name, "%s [NF_OPENCL_NO_FP64]", dev_name(di));
        dot_cases(d, name, 0.0, 64 * EPS32);
        g_be->close(d);
    }
}
END_TEST

/* ---- adam ------------------------------------------------------------------------------- */

START_TEST(test_adam)
{
    static const size_t sizes[] = {1, 1000, 100003};
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const double lr = 1e-3;
    for (int di = 0; di < ndev(); di++) {
        nf_device *d = dev_at(di);
        const char *dn = dev_name(di);
        if (!g_be->adam)
            continue;
        double worst = 0;
        unsigned long bitdiff = 0, total = 0;
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            size_t n = sizes[si], o[4] = {1, 2, 3, 4}, tot = n + 5;
            float *x = fvec(tot), *g = fvec(tot), *m = fvec(tot), *v = fvec(tot);
            float *x1 = fvec(tot), *m1 = fvec(tot), *v1 = fvec(tot);
            for (size_t i = 0; i < tot; i++) {
                x[i] = rndf();
                m[i] = v[i] = 0.0f;
            }
            nf_buffer *bx = dup_(d, x, tot), *bm = dup_(d, m, tot), *bv = dup_(d, v, tot),
                      *bg = dalloc(d, tot);
            for (int s = 1; s <= 5; s++) {
                for (size_t i = 0; i < tot; i++) {
                    uint64_t r = rnd64() % 16;
                    /* ordinary, zero, large and tiny gradients (tiny: g^2 subnormal) */
                    g[i] = r == 0 ? 0.0f : r == 1 ? 1e3f * rndf() : r == 2 ? 1e-20f * rndf()
                                                                           : rndf();
                }
                nf_error e = {0};
                int rc = g_be->upload(d, bg, 0, g, tot * 4, &e);
                ck_assert_msg(rc == NF_OK, "%s: %s", dn, e.msg);
                double step_size = lr / (1.0 - pow(b1, s)), bc2 = sqrt(1.0 - pow(b2, s));
                nf_adam_op op = {n, bx, bm, bv, bg, o[0], o[1], o[2], o[3], b1, b2, eps,
                                 step_size, bc2};
                rc = g_be->adam(d, &op, &e);
                ck_assert_msg(rc == NF_OK, "%s: adam: %s", dn, e.msg);
                ddown(d, bx, x1, tot);
                ddown(d, bm, m1, tot);
                ddown(d, bv, v1, tot);
                /* bit-level agreement with the CPU kernel, for the record */
                float *xc = fvec(tot), *mc = fvec(tot), *vc = fvec(tot);
                memcpy(xc, x, tot * 4);
                memcpy(mc, m, tot * 4);
                memcpy(vc, v, tot * 4);
                nf_cpu_adam(n, xc + o[0], g + o[3], mc + o[1], vc + o[2], b1, b2, eps,
                            step_size, bc2);
                for (size_t i = 0; i < n; i++) {
                    double gi = g[o[3] + i], mi = m[o[1] + i], vi = v[o[2] + i],
                           xi = x[o[0] + i];
                    double mr = (double)b1 * mi + (1.0 - (double)b1) * gi;
                    double vr = (double)b2 * vi + (1.0 - (double)b2) * gi * gi;
                    double upd = step_size * mr / (sqrt(vr) / bc2 + (double)eps);
                    double xr = xi - upd;
                    double tm = 2 * EPS32 * (fabs(b1 * mi) + fabs((1 - b1) * gi)) + 1e-38;
                    double tv = 2 * EPS32 * (fabs(b2 * vi) + fabs((1 - b2) * gi * gi)) + 1e-37;
                    double tx = 2 * EPS32 * fabs(xr) + 16 * EPS32 * fabs(upd) + 1e-38;
                    float gm = m1[o[1] + i], gv = v1[o[2] + i], gx = x1[o[0] + i];
                    ck_assert_msg(fabs(gm - mr) <= tm && fabs(gv - vr) <= tv &&
                                      fabs(gx - xr) <= tx,
                                  "%s: adam n=%zu step %d i=%zu g=%.9g: m %.9g/%.9g v %.9g/%.9g "
                                  "x %.9g/%.9g (got/ref)",
                                  dn, n, s, i, gi, gm, mr, gv, vr, gx, xr);
                    if (fabs(gx - xr) / tx > worst)
                        worst = fabs(gx - xr) / tx;
                    bitdiff += fbits(gx) != fbits(xc[o[0] + i]) ||
                               fbits(gm) != fbits(mc[o[1] + i]) ||
                               fbits(gv) != fbits(vc[o[2] + i]);
                    total++;
                }
                /* outside the ranges: untouched */
                ck_assert(fbits(x1[0]) == fbits(x[0]) && fbits(m1[0]) == fbits(m[0]) &&
                          fbits(v1[0]) == fbits(v[0]));
                ck_assert(fbits(x1[o[0] + n]) == fbits(x[o[0] + n]));
                free(xc);
                free(mc);
                free(vc);
                memcpy(x, x1, tot * 4);
                memcpy(m, m1, tot * 4);
                memcpy(v, v1, tot * 4);
            }
            g_be->free(d, bx);
            g_be->free(d, bm);
            g_be->free(d, bv);
            g_be->free(d, bg);
            free(x);
            free(g);
            free(m);
            free(v);
            free(x1);
            free(m1);
            free(v1);
        }
        printf("  %s: adam: worst x err/tol %.3f; %lu of %lu elements differ in some bit from "
               "the CPU kernel\n",
               dn, worst, bitdiff, total);
    }
}
END_TEST

/* ---- convert ---------------------------------------------------------------------------- */

/* independent references */
static float ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -24);
    else
        v = ldexp(1.0 + m / 1024.0, e - 15);
    return (float)(s ? -v : v);
}

static float ref_bf16(uint16_t h) { return bitsf((uint32_t)h << 16); }

static int same_value(float got, float ref)
{
    if (isnan(ref))
        return isnan(got);
    return fbits(got) == fbits(ref);
}

/* Runs one conversion of n elements; src holds n elements of size es after byte_off bytes.
 * Returns 0 if the backend declined (NF_E_UNSUPPORTED). */
static int run_convert(nf_device *d, const char *dn, nf_dtype dt, const void *src, size_t n,
                       size_t byte_off, size_t dst_off, float *out)
{
    size_t es = nf_dtype_size(dt), bytes = byte_off + n * es;
    nf_buffer *bs = dalloc(d, (bytes + 3) / 4 + 1), *bd = dalloc(d, dst_off + n + 2);
    nf_error e = {0};
    unsigned char *raw = calloc(bytes + 4, 1);
    ck_assert_ptr_nonnull(raw);
    memcpy(raw + byte_off, src, n * es);
    int rc = g_be->upload(d, bs, 0, raw, bytes, &e);
    ck_assert_msg(rc == NF_OK, "%s: %s", dn, e.msg);
    float *fill = fvec(dst_off + n + 2);
    for (size_t i = 0; i < dst_off + n + 2; i++)
        fill[i] = -555.0f;
    rc = g_be->upload(d, bd, 0, fill, (dst_off + n + 2) * 4, &e);
    ck_assert_msg(rc == NF_OK, "%s: %s", dn, e.msg);
    nf_convert_op op = {n, dt, bs, byte_off, bd, dst_off};
    rc = g_be->convert(d, &op, &e);
    ck_assert_msg(rc == NF_OK || rc == NF_E_UNSUPPORTED, "%s: convert %s: %s", dn,
                  nf_dtype_name(dt), e.msg);
    if (rc == NF_OK) {
        ddown(d, bd, fill, dst_off + n + 2);
        for (size_t i = 0; i < dst_off; i++)
            ck_assert(fill[i] == -555.0f);
        ck_assert(fill[dst_off + n] == -555.0f && fill[dst_off + n + 1] == -555.0f);
        memcpy(out, fill + dst_off, n * 4);
    }
    g_be->free(d, bs);
    g_be->free(d, bd);
    free(raw);
    free(fill);
    return rc == NF_OK;
}

START_TEST(test_convert)
{
    for (int di = 0; di < ndev(); di++) {
        nf_device *d = dev_at(di);
        const char *dn = dev_name(di);
        if (!g_be->convert)
            continue;
        /* F16 and BF16: every bit pattern, aligned (byte offset 6) and misaligned (1) */
        uint16_t *h = malloc(65536 * sizeof *h);
        float *out = fvec(65536);
        ck_assert_ptr_nonnull(h);
        for (uint32_t i = 0; i < 65536; i++)
            h[i] = (uint16_t)i;
        for (int which = 0; which < 2; which++) {
            nf_dtype dt = which ? NF_BF16 : NF_F16;
            for (int mis = 0; mis < 2; mis++) {
                if (!run_convert(d, dn, dt, h, 65536, mis ? 1 : 6, 3, out)) {
                    printf("  %s: convert %s at byte offset %d: declined (CPU fallback)\n", dn,
                           nf_dtype_name(dt), mis ? 1 : 6);
                    continue;
                }
                for (uint32_t i = 0; i < 65536; i++) {
                    float r = which ? ref_bf16((uint16_t)i) : ref_f16((uint16_t)i);
                    ck_assert_msg(same_value(out[i], r),
                                  "%s: convert %s 0x%04x: got 0x%08x, reference 0x%08x", dn,
                                  nf_dtype_name(dt), i, fbits(out[i]), fbits(r));
                }
            }
        }
        free(h);
        free(out);

        /* F64: edge cases around rounding, overflow and float32 subnormals, then random
         * bit patterns and random values in float range */
        enum { NR = 200000 };
        double *dv = malloc(NR * sizeof *dv);
        ck_assert_ptr_nonnull(dv);
        const double edges[] = {
            0.0, -0.0, 1.0, -1.0, 0.1, 1.0 / 3.0, FLT_MAX, -FLT_MAX,
            (double)FLT_MAX * (1 + 0x1p-25), (double)FLT_MAX * (1 + 0x1p-24), 1e39, -1e300,
            0x1p-126, 0x1p-126 * (1 - 0x1p-25), 0x1p-126 * (1 - 0x1p-24), 0x1p-149, 0x1p-150,
            0x1p-150 * (1 + 0x1p-30), 3 * 0x1p-150, 5 * 0x1p-150, 0x1p-151, 7 * 0x1p-151,
            0x1p-1074, -0x1p-1074, DBL_MIN, DBL_MAX, INFINITY, -INFINITY, NAN, -NAN,
            1 + 0x1p-24, 1 + 0x1p-24 + 0x1p-52, 1 + 3 * 0x1p-24, 0x1.fffffffp-127,
        };
        size_t ne = sizeof edges / sizeof edges[0];
        memcpy(dv, edges, sizeof edges);
        for (size_t i = ne; i < NR; i++) {
            uint64_t r = rnd64();
            if (i % 2) {
                memcpy(&dv[i], &r, 8); /* any pattern, signalling NaNs included */
            } else {
                int ex = (int)(rnd64() % 300) - 160; /* float normal, subnormal, overflow */
                dv[i] = ldexp((double)(r >> 11) / 9007199254740992.0 + 0.5, ex) *
                        ((r & 1) ? -1 : 1);
            }
        }
        float *fo = fvec(NR);
        for (int mis = 0; mis < 2; mis++) {
            if (!run_convert(d, dn, NF_F64, dv, NR, mis ? 4 : 16, 1, fo)) {
                printf("  %s: convert F64 at byte offset %d: declined (CPU fallback)\n", dn,
                       mis ? 4 : 16);
                continue;
            }
            for (size_t i = 0; i < NR; i++) {
                float r = (float)dv[i];
                ck_assert_msg(same_value(fo[i], r),
                              "%s: convert F64 %a (0x%016llx): got %a (0x%08x), reference %a",
                              dn, dv[i], (unsigned long long)(*(uint64_t *)(void *)&dv[i]),
                              fo[i], fbits(fo[i]), r);
            }
        }
        free(dv);
        free(fo);
    }
}
END_TEST

/* ---- la.c entry points, natively and through the CPU fallback -------------------------- */

static int unsupported_gemm(nf_device *d, const nf_gemm_op *op, nf_error *err)
{
    (void)d, (void)op, (void)err;
    return NF_E_UNSUPPORTED;
}
static int unsupported_axpby(nf_device *d, const nf_axpby_op *op, nf_error *err)
{
    (void)d, (void)op, (void)err;
    return NF_E_UNSUPPORTED;
}
static int unsupported_convert(nf_device *d, const nf_convert_op *op, nf_error *err)
{
    (void)d, (void)op, (void)err;
    return NF_E_UNSUPPORTED;
}

static void mat_rand(nf_la *la, nf_mat *m, float *h)
{
    for (int i = 0; i < m->rows * m->cols; i++)
        h[i] = rndf();
    ck_assert_msg(nf_la_upload(la, m, h) == NF_OK, "%s", la->err->msg);
}

/* X (m x n) with singular values s_j = 2^-j (j < r), tiny after: X = U diag(s) V^T built from
 * QR of random matrices on the host (LAPACKE in double) */
static void designed(int m, int n, int r, float *x)
{
    int k = m < n ? m : n;
    double *u = malloc(sizeof(double) * m * k), *v = malloc(sizeof(double) * n * k);
    double *tau = malloc(sizeof(double) * k);
    ck_assert(u && v && tau);
    for (int i = 0; i < m * k; i++)
        u[i] = rndf();
    for (int i = 0; i < n * k; i++)
        v[i] = rndf();
    LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, m, k, u, k, tau);
    LAPACKE_dorgqr(LAPACK_ROW_MAJOR, m, k, k, u, k, tau);
    LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, k, v, k, tau);
    LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, k, k, v, k, tau);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += u[i * k + p] * (p < r ? ldexp(1.0, -p) : 1e-4 * ldexp(1.0, -r)) *
                     v[j * k + p];
            x[i * n + j] = (float)s;
        }
    free(u);
    free(v);
    free(tau);
}

static void la_checks(nf_la *la, const char *dn)
{
    nf_error *err = la->err;
    /* gemm through sub-views of larger matrices: C(2:2+m, 1:1+n) = A^T(sub) B(sub) */
    int m = 37, n = 29, k = 53;
    nf_mat A, B, C;
    ck_assert(nf_la_alloc(la, k + 3, m + 4, &A) == NF_OK);
    ck_assert(nf_la_alloc(la, k + 2, n + 5, &B) == NF_OK);
    ck_assert(nf_la_alloc(la, m + 4, n + 3, &C) == NF_OK);
    float *ha = fvec((size_t)(k + 3) * (m + 4)), *hb = fvec((size_t)(k + 2) * (n + 5)),
          *hc = fvec((size_t)(m + 4) * (n + 3)), *hc1 = fvec((size_t)(m + 4) * (n + 3));
    mat_rand(la, &A, ha);
    mat_rand(la, &B, hb);
    mat_rand(la, &C, hc);
    nf_mat a = nf_la_sub(&A, 1, 2, k, m), b = nf_la_sub(&B, 2, 3, k, n),
           c = nf_la_sub(&C, 2, 1, m, n);
    ck_assert_msg(nf_la_gemm(la, 1, 0, 0.5f, &a, &b, -1.0f, &c) == NF_OK, "%s: %s", dn,
                  err->msg);
    ck_assert(nf_la_download(la, &C, hc1) == NF_OK);
    for (int i = 0; i < m + 4; i++)
        for (int j = 0; j < n + 3; j++) {
            size_t idx = (size_t)i * (n + 3) + j;
            if (i < 2 || i >= 2 + m || j < 1 || j >= 1 + n) {
                ck_assert_msg(fbits(hc1[idx]) == fbits(hc[idx]), "%s: la gemm wrote outside",
                              dn);
                continue;
            }
            double ref = 0, mag = 0;
            for (int p = 0; p < k; p++) {
                double x = (double)ha[(size_t)(1 + p) * (m + 4) + 2 + (i - 2)] *
                           hb[(size_t)(2 + p) * (n + 5) + 3 + (j - 1)];
                ref += x;
                mag += fabs(x);
            }
            ref = 0.5 * ref - hc[idx];
            mag = 0.5 * mag + fabs(hc[idx]);
            ck_assert_msg(fabs(hc1[idx] - ref) <= (4 * sqrt(k) + 4) * EPS32 * mag,
                          "%s: la gemm C[%d][%d] = %.9g, reference %.9g", dn, i, j, hc1[idx],
                          ref);
        }
    /* sub-view upload/download round trip */
    {
        nf_mat s = nf_la_sub(&C, 1, 1, 3, 4);
        float in[12], got[12];
        for (int i = 0; i < 12; i++)
            in[i] = (float)i;
        ck_assert(nf_la_upload(la, &s, in) == NF_OK && nf_la_download(la, &s, got) == NF_OK);
        ck_assert(memcmp(in, got, sizeof in) == 0);
    }

    /* axpby, copy, fill, dot, on contiguous matrices */
    nf_mat X, Y;
    ck_assert(nf_la_alloc(la, 31, 17, &X) == NF_OK && nf_la_alloc(la, 31, 17, &Y) == NF_OK);
    size_t ne = 31 * 17;
    float *hx = fvec(ne), *hy = fvec(ne), *hy1 = fvec(ne);
    mat_rand(la, &X, hx);
    mat_rand(la, &Y, hy);
    ck_assert(nf_la_axpby(la, 2.0f, &X, -0.5f, &Y) == NF_OK);
    ck_assert(nf_la_download(la, &Y, hy1) == NF_OK);
    for (size_t i = 0; i < ne; i++)
        ck_assert(fabs(hy1[i] - (2.0 * hx[i] - 0.5 * hy[i])) <=
                  2 * EPS32 * (fabs(2.0 * hx[i]) + fabs(0.5 * hy[i])));
    double dxy = 0, dxx = 0, rxy = 0, rxx = 0, mxy = 0, mxx = 0;
    ck_assert(nf_la_dot(la, &X, &Y, &dxy) == NF_OK && nf_la_dot(la, &X, NULL, &dxx) == NF_OK);
    for (size_t i = 0; i < ne; i++) {
        rxy += (double)hx[i] * hy1[i];
        mxy += fabs((double)hx[i] * hy1[i]);
        rxx += (double)hx[i] * hx[i];
        mxx += (double)hx[i] * hx[i];
    }
    ck_assert_msg(fabs(dxy - rxy) <= 64 * EPS32 * mxy && fabs(dxx - rxx) <= 64 * EPS32 * mxx,
                  "%s: la dot %.17g/%.17g, %.17g/%.17g", dn, dxy, rxy, dxx, rxx);
    ck_assert(nf_la_copy(la, &X, &Y) == NF_OK && nf_la_download(la, &Y, hy1) == NF_OK);
    ck_assert(memcmp(hx, hy1, ne * 4) == 0);
    ck_assert(nf_la_fill(la, &Y, 0.25f) == NF_OK && nf_la_download(la, &Y, hy1) == NF_OK);
    for (size_t i = 0; i < ne; i++)
        ck_assert(hy1[i] == 0.25f);

    /* adam: one step from zero moments, against the CPU kernel on the same data */
    {
        nf_mat G, M, V;
        ck_assert(nf_la_alloc(la, 31, 17, &G) == NF_OK && nf_la_alloc(la, 31, 17, &M) == NF_OK &&
                  nf_la_alloc(la, 31, 17, &V) == NF_OK);
        float *hg = fvec(ne), *hm = fvec(ne), *hv = fvec(ne), *hx1 = fvec(ne);
        mat_rand(la, &G, hg);
        memset(hm, 0, ne * 4);
        memset(hv, 0, ne * 4);
        ck_assert(nf_la_fill(la, &M, 0.0f) == NF_OK && nf_la_fill(la, &V, 0.0f) == NF_OK);
        ck_assert(nf_la_adam(la, &X, &G, &M, &V, 1e-2, 0.9, 0.999, 1e-8, 1) == NF_OK);
        ck_assert(nf_la_download(la, &X, hx1) == NF_OK);
        double ss = 1e-2 / (1 - 0.9), bc = sqrt(1 - 0.999);
        nf_cpu_adam(ne, hx, hg, hm, hv, 0.9f, 0.999f, 1e-8f, ss, bc);
        for (size_t i = 0; i < ne; i++)
            ck_assert_msg(fabs(hx1[i] - hx[i]) <= 2 * EPS32 * fabs(hx[i]) + 16 * EPS32 * ss,
                          "%s: la adam x[%zu] %.9g vs %.9g", dn, i, hx1[i], hx[i]);
        nf_la_free(la, &G);
        nf_la_free(la, &M);
        nf_la_free(la, &V);
        free(hg);
        free(hm);
        free(hv);
        free(hx1);
    }

    /* upload_convert from every float dtype */
    {
        static const nf_dtype dts[] = {NF_F32, NF_F64, NF_F16, NF_BF16};
        float *want = fvec(ne), *got = fvec(ne);
        unsigned char *raw = malloc(ne * 8);
        ck_assert_ptr_nonnull(raw);
        for (size_t t = 0; t < 4; t++) {
            for (size_t i = 0; i < ne; i++)
                want[i] = rndf() * 100.0f;
            nf_from_f32(want, dts[t], raw, ne);
            nf_to_f32(raw, dts[t], want, ne);
            ck_assert_msg(nf_la_upload_convert(la, &Y, raw, dts[t]) == NF_OK, "%s: %s", dn,
                          err->msg);
            ck_assert(nf_la_download(la, &Y, got) == NF_OK);
            ck_assert_msg(memcmp(want, got, ne * 4) == 0, "%s: upload_convert %s", dn,
                          nf_dtype_name(dts[t]));
        }
        free(want);
        free(got);
        free(raw);
    }

    /* QR of a 60 x 9 view (ld > cols): orthonormal columns spanning the input */
    {
        nf_mat Q;
        ck_assert(nf_la_alloc(la, 60, 12, &Q) == NF_OK);
        float *hq = fvec(60 * 12), *q = fvec(60 * 9);
        mat_rand(la, &Q, hq);
        nf_mat qs = nf_la_sub(&Q, 0, 2, 60, 9);
        ck_assert_msg(nf_la_qr(la, &qs) == NF_OK, "%s: qr: %s", dn, err->msg);
        ck_assert(nf_la_download(la, &qs, q) == NF_OK);
        for (int i = 0; i < 9; i++)
            for (int j = 0; j < 9; j++) {
                double s = 0;
                for (int r = 0; r < 60; r++)
                    s += (double)q[r * 9 + i] * q[r * 9 + j];
                ck_assert_msg(fabs(s - (i == j)) < 1e-5, "%s: qr Q^T Q [%d][%d] = %g", dn, i, j,
                              s);
            }
        /* a_j - Q Q^T a_j = 0 for the input columns */
        for (int j = 0; j < 9; j++) {
            double res = 0, nrm = 0;
            for (int r = 0; r < 60; r++) {
                double proj = 0;
                for (int c2 = 0; c2 < 9; c2++) {
                    double qa = 0;
                    for (int r2 = 0; r2 < 60; r2++)
                        qa += (double)q[r2 * 9 + c2] * hq[r2 * 12 + 2 + j];
                    proj += q[r * 9 + c2] * qa;
                }
                double a0 = hq[r * 12 + 2 + j];
                res += (a0 - proj) * (a0 - proj);
                nrm += a0 * a0;
            }
            ck_assert_msg(sqrt(res / nrm) < 1e-5, "%s: qr span residual %g", dn,
                          sqrt(res / nrm));
        }
        nf_la_free(la, &Q);
        free(hq);
        free(q);
    }

    /* SVD, exact and randomized, on a matrix with a designed spectrum */
    {
        int sm = 120, sn = 80, r = 12;
        float *hx2 = fvec((size_t)sm * sn);
        designed(sm, sn, r, hx2);
        nf_mat S;
        ck_assert(nf_la_alloc(la, sm, sn, &S) == NF_OK && nf_la_upload(la, &S, hx2) == NF_OK);
        for (int mode = 0; mode < 2; mode++) {
            nf_svd_args sa = {r, -1.0, mode ? NF_LA_SVD_RANDOMIZED : NF_LA_SVD_EXACT, 10, 2, 7};
            nf_mat vt;
            int rank = 0;
            float s[80];
            ck_assert_msg(nf_la_svd_right(la, &S, &sa, &vt, &rank, s) == NF_OK, "%s: svd: %s",
                          dn, err->msg);
            ck_assert_int_eq(rank, r);
            float *hv = fvec((size_t)r * sn);
            ck_assert(nf_la_download(la, &vt, hv) == NF_OK);
            /* ||X v_j|| = s_j = 2^-j, and the rows of vt are orthonormal */
            for (int j = 0; j < r; j++) {
                double nx = 0;
                for (int i = 0; i < sm; i++) {
                    double t = 0;
                    for (int p = 0; p < sn; p++)
                        t += (double)hx2[i * sn + p] * hv[j * sn + p];
                    nx += t * t;
                }
                ck_assert_msg(fabs(sqrt(nx) - ldexp(1.0, -j)) < 1e-4,
                              "%s: svd mode %d: ||X v_%d|| = %g, want %g", dn, mode, j,
                              sqrt(nx), ldexp(1.0, -j));
                ck_assert_msg(fabs(s[j] - ldexp(1.0, -j)) < 1e-4, "%s: svd s_%d = %g", dn, j,
                              s[j]);
                for (int l = 0; l < r; l++) {
                    double dd = 0;
                    for (int p = 0; p < sn; p++)
                        dd += (double)hv[j * sn + p] * hv[l * sn + p];
                    ck_assert(fabs(dd - (j == l)) < 1e-4);
                }
            }
            nf_la_free(la, &vt);
            free(hv);
        }
        nf_la_free(la, &S);
        free(hx2);
    }

    /* copy_view and scale_rows on views; full thin SVD and polar factor */
    {
        nf_mat P, Q, R;
        ck_assert(nf_la_alloc(la, 20, 15, &P) == NF_OK && nf_la_alloc(la, 10, 9, &Q) == NF_OK &&
                  nf_la_alloc(la, 6, 5, &R) == NF_OK);
        float *hp = fvec(20 * 15), *hq = fvec(10 * 9), *hq1 = fvec(10 * 9), *hr = fvec(30),
              *hr1 = fvec(30);
        mat_rand(la, &P, hp);
        mat_rand(la, &Q, hq);
        nf_mat src = nf_la_sub(&P, 2, 3, 6, 5), dst = nf_la_sub(&Q, 1, 2, 6, 5);
        ck_assert_msg(nf_la_copy_view(la, &src, &dst) == NF_OK, "%s: %s", dn, err->msg);
        ck_assert(nf_la_download(la, &Q, hq1) == NF_OK);
        for (int i = 0; i < 10; i++)
            for (int j = 0; j < 9; j++) {
                int in = i >= 1 && i < 7 && j >= 2 && j < 7;
                float want = in ? hp[(i - 1 + 2) * 15 + (j - 2 + 3)] : hq[i * 9 + j];
                ck_assert_msg(fbits(hq1[i * 9 + j]) == fbits(want), "%s: copy_view [%d][%d]",
                              dn, i, j);
            }
        mat_rand(la, &R, hr);
        const float dsc[6] = {-2.0f, 0.0f, 0.5f, 3.0f, 1.0f, -0.25f};
        ck_assert(nf_la_scale_rows(la, &R, dsc) == NF_OK && nf_la_download(la, &R, hr1) == NF_OK);
        for (int i = 0; i < 30; i++)
            ck_assert_msg(hr1[i] == hr[i] * dsc[i / 5], "%s: scale_rows [%d]", dn, i);

        int sm = 30, sn = 20, k = 20;
        float *hx3 = fvec((size_t)sm * sn), *hu = fvec((size_t)sm * k), *hvt = fvec((size_t)k * sn),
              *ho = fvec((size_t)sm * sn), sv[20];
        designed(sm, sn, 8, hx3);
        nf_mat X3, U3, V3, O3;
        ck_assert(nf_la_alloc(la, sm, sn, &X3) == NF_OK && nf_la_upload(la, &X3, hx3) == NF_OK);
        ck_assert_msg(nf_la_svd(la, &X3, &U3, sv, &V3) == NF_OK, "%s: svd: %s", dn, err->msg);
        ck_assert(nf_la_download(la, &U3, hu) == NF_OK && nf_la_download(la, &V3, hvt) == NF_OK);
        double res = 0, nrm = 0;
        for (int i = 0; i < sm; i++)
            for (int j = 0; j < sn; j++) {
                double t = 0;
                for (int p = 0; p < k; p++)
                    t += (double)hu[i * k + p] * sv[p] * hvt[p * sn + j];
                res += (t - hx3[i * sn + j]) * (t - hx3[i * sn + j]);
                nrm += (double)hx3[i * sn + j] * hx3[i * sn + j];
            }
        ck_assert_msg(sqrt(res / nrm) < 1e-5, "%s: svd: ||X - U S Vt|| / ||X|| = %g", dn,
                      sqrt(res / nrm));
        ck_assert_msg(nf_la_polar(la, &X3, &O3, NULL) == NF_OK, "%s: polar: %s", dn, err->msg);
        ck_assert(nf_la_download(la, &O3, ho) == NF_OK);
        for (int i = 0; i < sn; i++)
            for (int j = 0; j < sn; j++) {
                double t = 0;
                for (int p = 0; p < sm; p++)
                    t += (double)ho[p * sn + i] * ho[p * sn + j];
                ck_assert_msg(fabs(t - (i == j)) < 1e-4, "%s: polar O^T O [%d][%d] = %g", dn, i,
                              j, t);
            }
        nf_la_free(la, &P);
        nf_la_free(la, &Q);
        nf_la_free(la, &R);
        nf_la_free(la, &X3);
        nf_la_free(la, &U3);
        nf_la_free(la, &V3);
        nf_la_free(la, &O3);
        free(hp);
        free(hq);
        free(hq1);
        free(hr);
        free(hr1);
        free(hx3);
        free(hu);
        free(hvt);
        free(ho);
    }

    nf_la_free(la, &A);
    nf_la_free(la, &B);
    nf_la_free(la, &C);
    nf_la_free(la, &X);
    nf_la_free(la, &Y);
    free(ha);
    free(hb);
    free(hc);
    free(hc1);
    free(hx);
    free(hy);
    free(hy1);
}

START_TEST(test_la)
{
    for (int di = 0; di < ndev(); di++) {
        nf_device *d = dev_at(di);
        const char *dn = dev_name(di);
        nf_error err = {0};
        nf_la la;
        nf_la_init(&la, d, &err);
        la_checks(&la, dn);
        unsigned native = la.stats.fallbacks;

        /* the same through a backend lacking slots: NULL or NF_E_UNSUPPORTED */
        nf_backend lame = *g_be;
        lame.gemm = unsupported_gemm;
        lame.axpby = unsupported_axpby;
        lame.dot = NULL;
        lame.adam = NULL;
        lame.convert = unsupported_convert;
        lame.qr = NULL;
        lame.svd = NULL;
        nf_la la2;
        nf_la_init(&la2, d, &err);
        la2.be = &lame;
        la_checks(&la2, dn);
        ck_assert_msg(err.code == NF_OK, "%s: fallback path left an error: %s", dn, err.msg);
        ck_assert_msg(la2.stats.fallbacks > native, "%s: fallback path not taken", dn);
        printf("  %s: la.c entry points: native (%u CPU fallbacks) and through a backend "
               "without compute slots (%u fallbacks): OK\n",
               dn, native, la2.stats.fallbacks);
    }
}
END_TEST

/* ---- the error boundary: bad arguments come back as statuses, never aborts ------------ */

/* Probing drivers must leave the process's signal handlers alone (LLVM inside PoCL and
 * lavapipe installs its own): the host's SIGBUS handler explains a truncated input. */
static void marker_handler(int sig) { (void)sig; }

START_TEST(test_driver_signals_kept)
{
    struct sigaction mine, before, after;
    memset(&mine, 0, sizeof mine);
    mine.sa_handler = marker_handler;
    sigemptyset(&mine.sa_mask);
    sigaction(SIGBUS, &mine, &before);
    sigaction(SIGSEGV, &mine, NULL);
    nf_device_info info[32];
    int count = 0, nd = 0;
    nf_error e = {0};
    nf_device **devs = NULL;
    ck_assert_int_eq(nf_devices_list(info, 32, &count, &e), NF_OK);
    if (nf_devices_open("auto", &devs, &nd, &e) == NF_OK)
        nf_devices_close(devs, nd);
    sigaction(SIGBUS, NULL, &after);
    ck_assert_msg(after.sa_handler == marker_handler,
                  "listing and opening %d devices replaced the SIGBUS handler", count);
    sigaction(SIGSEGV, NULL, &after);
    ck_assert_msg(after.sa_handler == marker_handler,
                  "listing and opening %d devices replaced the SIGSEGV handler", count);
    printf("  signal handlers kept across probing %d devices\n", count);
    sigaction(SIGBUS, &before, NULL);
    signal(SIGSEGV, SIG_DFL);
}
END_TEST

START_TEST(test_errors)
{
    nf_device *d = NULL;
    nf_error e = {0};
    int n = 0;
    g_be->count(&n, NULL);
    ck_assert_int_eq(g_be->open(n + 3, &d, &e), NF_E_NODEV);
    ck_assert_msg(e.msg[0] != '\0', "open of a missing device gave no message");
    for (int di = 0; di < ndev(); di++) {
        nf_device *dv = dev_at(di);
        if (strcmp(g_be->api, "cpu") == 0)
            break; /* the CPU backend trusts its callers: no bounds to check */
        nf_buffer *b = dalloc(dv, 4);
        nf_error e2 = {0};
        float x[8] = {0};
        int rc = g_be->upload(dv, b, 8, x, 32, &e2); /* past the end */
        ck_assert_msg(rc != NF_OK && e2.msg[0], "%s: upload past the end accepted",
                      dev_name(di));
        g_be->free(dv, b);
    }
}
END_TEST

/* ---- driver ----------------------------------------------------------------------------- */

typedef struct test_def {
    const char *tcase, *name;
    const TTest *const *fn;
    double timeout;
} test_def;

static const test_def tests[] = {
    /* the first GEMM on PoCL spends 8-12 s compiling CLBlast kernels */
    {"gemm", "test_gemm_small", &test_gemm_small, 600},
    {"gemm", "test_gemm_own_widths", &test_gemm_own_widths, 600},
    {"gemm", "test_gemm_gram", &test_gemm_gram, 600},
    {"gemm", "test_gemm_large", &test_gemm_large, 600},
    {"gemm", "test_gemm_throughput", &test_gemm_throughput, 600},
    {"elementwise", "test_axpby", &test_axpby, 120},
    {"dot", "test_dot", &test_dot, 120},
    {"dot", "test_dot_opencl_float_path", &test_dot_opencl_float_path, 120},
    {"adam", "test_adam", &test_adam, 120},
    {"convert", "test_convert", &test_convert, 120},
    {"la", "test_la", &test_la, 300},
    {"errors", "test_errors", &test_errors, 60},
    {"errors", "test_driver_signals_kept", &test_driver_signals_kept, 120},
};
#define NTESTS (int)(sizeof tests / sizeof tests[0])

static Suite *backend_suite(const char *api)
{
    Suite *s = suite_create(api);
    TCase *tc = NULL;
    const char *cur = NULL;
    for (int i = 0; i < NTESTS; i++) {
        if (!cur || strcmp(cur, tests[i].tcase) != 0) {
            cur = tests[i].tcase;
            tc = tcase_create(cur);
            tcase_set_timeout(tc, tests[i].timeout);
            suite_add_tcase(s, tc);
        }
        tcase_add_test(tc, *tests[i].fn);
    }
    return s;
}

static int fork_mode(void)
{
    const char *v = getenv("CK_FORK");
    return v && strcmp(v, "no") != 0;
}

/* be->count(), run in a child process when tests fork (see the top of the file) */
static void probe_count(const nf_backend *be, int *n, char *why, size_t cap)
{
    const char *w = NULL;
    why[0] = '\0';
    if (!fork_mode()) {
        be->count(n, &w);
        snprintf(why, cap, "%s", w ? w : "");
        return;
    }
    int fd[2];
    *n = 0;
    if (pipe(fd) != 0) {
        snprintf(why, cap, "pipe() failed");
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        int c = 0;
        be->count(&c, &w);
        char msg[512];
        snprintf(msg, sizeof msg, "%d %s", c, w ? w : "");
        ssize_t wr = write(fd[1], msg, strlen(msg));
        _exit(wr < 0);
    }
    close(fd[1]);
    char msg[512];
    size_t got = 0;
    ssize_t r;
    while (pid > 0 && got < sizeof msg - 1 && (r = read(fd[0], msg + got, sizeof msg - 1 - got)) > 0)
        got += (size_t)r;
    msg[got] = '\0';
    close(fd[0]);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    char *rest = NULL;
    *n = (int)strtol(msg, &rest, 10);
    snprintf(why, cap, "%s", rest && *rest == ' ' ? rest + 1 : (pid > 0 ? "" : "fork() failed"));
}

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int nb;
    const nf_backend *const *bes = nf_backends(&nb);
    if (only && !nf_backend_find(only)) {
        printf("SKIP %s: backend not compiled into this build\n", only);
        return 77;
    }
    int failed = 0, ran = 0, skipped = 0;
    for (int i = 0; i < nb; i++) {
        if (only && strcmp(only, bes[i]->api) != 0)
            continue;
        int n = 0;
        char why[512];
        probe_count(bes[i], &n, why, sizeof why);
        if (n == 0) {
            for (int t = 0; t < NTESTS; t++)
                printf("SKIP %s/%s: %s\n", bes[i]->api, tests[t].name,
                       why[0] ? why : "no devices");
            skipped += NTESTS;
            continue;
        }
        printf("== backend %s: %d device%s\n", bes[i]->api, n, n == 1 ? "" : "s");
        g_be = bes[i];
        SRunner *sr = srunner_create(backend_suite(bes[i]->api));
        if (!fork_mode())
            srunner_set_fork_status(sr, CK_NOFORK); /* see the comment at the top */
        srunner_run_all(sr, CK_NORMAL);
        failed += srunner_ntests_failed(sr);
        ran += srunner_ntests_run(sr);
        srunner_free(sr);
        cache_close();
    }
    printf("check_backend_ops: %d tests run, %d failed, %d skipped\n", ran, failed, skipped);
    if (failed)
        return 1;
    return ran == 0 && skipped > 0 ? 77 : 0;
}
