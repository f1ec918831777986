/* The CPU backend's own float32 GEMM, for x86-64 processors with AVX2 and FMA.
 *
 * NUFILT's adapter spends most of a merge in small, skinny products (768 x 64 x 768 and the
 * like, 50 times per matrix), where OpenBLAS 0.3.21 reaches about 80% of this machine's FMA
 * peak and this code about 95% (docs/performance.md). The structure is the usual one for a
 * cache-blocked GEMM: op(B) is packed in KC x NC blocks of W-wide column panels, and a 6 x W
 * register-tile micro-kernel (12 vector accumulators, two vector loads and six broadcasts per
 * step of k) runs over each row panel of op(A), read in place. W is 16 with AVX2 (ymm) and 32
 * with AVX-512F (zmm): on the Intel Xeon of 2026-12-07 (two 512-bit FMA units) a loop of
 * independent FMAs ran at 128 GFLOP/s on ymm and 230 on zmm, one core. Both kernels add the
 * k terms of every element in the same order with the same fused operations, so their results
 * are bit-identical (tests/check_backend_ops.c checks it). Transposes are absorbed by the
 * packing; edges are zero-padded in the packed panels and written back through a small tile.
 *
 * Single-threaded by design: the host scheduler runs one tensor per worker thread. The packing
 * buffer, one KC x NC block of B (64 KiB), lives on the stack: a buffer from malloc on every
 * call fragmented the heap by a few MB over a merge (tests/e2e/memory_bound.py). */
#include <stdlib.h>
#include <string.h>

#include "sgemm.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

enum { MR = 6, NR = 16, NR512 = 32, KC = 256, MC = 120, NC = 64 };

/* ---- packing ---- */

/* op(B)[p0 .. p0+kc) x [j0 .. j0+nc) into w-column panels, each kc x w, k-major. */
static void pack_b(int tb, const float *b, int ldb, int p0, int kc, int j0, int nc, int w,
                   float *bp)
{
    for (int jr = 0; jr < nc; jr += w) {
        int nr = nc - jr < w ? nc - jr : w;
        if (!tb) { /* op(B)[p][j] = b[p][j]: a panel row is contiguous */
            for (int p = 0; p < kc; p++, bp += w) {
                const float *s = b + (size_t)(p0 + p) * ldb + j0 + jr;
                if (nr == w) {
                    memcpy(bp, s, (size_t)w * sizeof(float));
                } else {
                    int j = 0;
                    for (; j < nr; j++)
                        bp[j] = s[j];
                    for (; j < w; j++)
                        bp[j] = 0.0f;
                }
            }
        } else { /* op(B)[p][j] = b[j][p]: read each row of b once, write down the panel */
            for (int j = 0; j < w; j++) {
                if (j < nr) {
                    const float *s = b + (size_t)(j0 + jr + j) * ldb + p0;
                    for (int p = 0; p < kc; p++)
                        bp[(size_t)p * w + j] = s[p];
                } else {
                    for (int p = 0; p < kc; p++)
                        bp[(size_t)p * w + j] = 0.0f;
                }
            }
            bp += (size_t)kc * w;
        }
    }
}

/* ---- the micro-kernel ----
 *
 * C[0..6)[0..16) = alpha * sum over p < kc of A(i, p) Bp[p][j] + beta * C, where row i of A
 * is read in place at a + o[i] + p * cs (o and cs absorb the transpose, so A needs no
 * packing: each element of it is used n / 16 times, too few to pay for a copy, while B's
 * packed panel stays in L1 across the whole column of tiles). */

#define NF_AVX2 __attribute__((target("avx2,fma")))

NF_AVX2 static void kernel_6x16(int kc, const float *a, const int *o, long cs, const float *bp,
                                float alpha, float beta, float *c, int ldc)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const long o0 = o[0], o1 = o[1], o2 = o[2], o3 = o[3], o4 = o[4], o5 = o[5];
    for (int p = 0; p < kc; p++, a += cs, bp += NR) {
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8), x;
        x = _mm256_broadcast_ss(a + o0);
        c00 = _mm256_fmadd_ps(x, b0, c00);
        c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a + o1);
        c10 = _mm256_fmadd_ps(x, b0, c10);
        c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a + o2);
        c20 = _mm256_fmadd_ps(x, b0, c20);
        c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a + o3);
        c30 = _mm256_fmadd_ps(x, b0, c30);
        c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a + o4);
        c40 = _mm256_fmadd_ps(x, b0, c40);
        c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a + o5);
        c50 = _mm256_fmadd_ps(x, b0, c50);
        c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                         {c30, c31}, {c40, c41}, {c50, c51}};
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int i = 0; i < MR; i++) {
        float *ci = c + (size_t)i * ldc;
        for (int h = 0; h < 2; h++) {
            __m256 v = _mm256_mul_ps(va, acc[i][h]);
            if (beta != 0.0f)
                v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8 * h), v);
            _mm256_storeu_ps(ci + 8 * h, v);
        }
    }
}

/* The mr x nr corner of a scratch tile t (row stride w, already alpha-scaled) into C, the
 * beta term fused like the full kernels' (so edges round as the 16- and 32-wide tiles do). */
__attribute__((target("fma"))) static inline void store_edge(const float *t, int w, float beta,
                                                             float *c, int ldc, int mr, int nr)
{
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float *x = c + (size_t)i * ldc + j;
            *x = beta == 0.0f ? t[i * w + j] : __builtin_fmaf(beta, *x, t[i * w + j]);
        }
}

/* A tile at the right or bottom edge (mr rows, nr columns): through a 6 x 16 scratch tile.
 * The caller points A's missing rows at a real one, so nothing outside A is read. */
NF_AVX2 static void kernel_edge(int kc, const float *a, const int *o, long cs, const float *bp,
                                float alpha, float beta, float *c, int ldc, int mr, int nr)
{
    float t[MR * NR] __attribute__((aligned(32)));
    kernel_6x16(kc, a, o, cs, bp, alpha, 0.0f, t, NR);
    store_edge(t, NR, beta, c, ldc, mr, nr);
}

/* The same 6-row tile, 32 columns wide in zmm registers (AVX-512F). */
#define NF_AVX512 __attribute__((target("avx512f,fma")))

NF_AVX512 static void kernel_6x32(int kc, const float *a, const int *o, long cs,
                                  const float *bp, float alpha, float beta, float *c, int ldc)
{
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const long o0 = o[0], o1 = o[1], o2 = o[2], o3 = o[3], o4 = o[4], o5 = o[5];
    for (int p = 0; p < kc; p++, a += cs, bp += NR512) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16), x;
        x = _mm512_set1_ps(a[o0]);
        c00 = _mm512_fmadd_ps(x, b0, c00);
        c01 = _mm512_fmadd_ps(x, b1, c01);
        x = _mm512_set1_ps(a[o1]);
        c10 = _mm512_fmadd_ps(x, b0, c10);
        c11 = _mm512_fmadd_ps(x, b1, c11);
        x = _mm512_set1_ps(a[o2]);
        c20 = _mm512_fmadd_ps(x, b0, c20);
        c21 = _mm512_fmadd_ps(x, b1, c21);
        x = _mm512_set1_ps(a[o3]);
        c30 = _mm512_fmadd_ps(x, b0, c30);
        c31 = _mm512_fmadd_ps(x, b1, c31);
        x = _mm512_set1_ps(a[o4]);
        c40 = _mm512_fmadd_ps(x, b0, c40);
        c41 = _mm512_fmadd_ps(x, b1, c41);
        x = _mm512_set1_ps(a[o5]);
        c50 = _mm512_fmadd_ps(x, b0, c50);
        c51 = _mm512_fmadd_ps(x, b1, c51);
    }
    __m512 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                         {c30, c31}, {c40, c41}, {c50, c51}};
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int i = 0; i < MR; i++) {
        float *ci = c + (size_t)i * ldc;
        for (int h = 0; h < 2; h++) {
            __m512 v = _mm512_mul_ps(va, acc[i][h]);
            if (beta != 0.0f)
                v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci + 16 * h), v);
            _mm512_storeu_ps(ci + 16 * h, v);
        }
    }
}

NF_AVX512 static void kernel_edge512(int kc, const float *a, const int *o, long cs,
                                     const float *bp, float alpha, float beta, float *c,
                                     int ldc, int mr, int nr)
{
    float t[MR * NR512] __attribute__((aligned(64)));
    kernel_6x32(kc, a, o, cs, bp, alpha, 0.0f, t, NR512);
    store_edge(t, NR512, beta, c, ldc, mr, nr);
}

/* The widest tile this processor runs: 32 with AVX-512F, 16 with AVX2 and FMA, else 0. */
static int hw_width(void)
{
    static int known = -1; /* every thread computes the same value: a benign race */
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 0
            : __builtin_cpu_supports("avx512f")                                ? NR512
                                                                               : NR;
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* The tile nf_cpu_sgemm uses: hw_width(), capped at 16 by NF_CPU_GEMM=avx2 and made 0 by
 * NF_CPU_GEMM=openblas (every product on OpenBLAS), for comparisons. */
static int width(void)
{
    static int known = -1;
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *force = getenv("NF_CPU_GEMM");
        v = hw_width();
        if (force && strcmp(force, "openblas") == 0)
            v = 0;
        else if (force && strcmp(force, "avx2") == 0 && v)
            v = NR;
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    return v;
}

int nf_cpu_sgemm_width(void) { return width(); }

int nf_cpu_sgemm_available(void) { return width() > 0; }

int nf_cpu_sgemm_suits(int m, int n, int k)
{
    /* a narrow C, or a short one with a short inner dimension (S V in the adapter: A stays in
     * L1 while B streams through); OpenBLAS keeps short products with a long k */
    return (n <= 64 || (m <= 64 && k <= 256)) && nf_cpu_sgemm_available();
}

int nf_cpu_sgemm_w(int w, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if ((w != NR && w != NR512) || w > hw_width() || m <= 0 || n <= 0 || k <= 0)
        return 0;
    float bb[KC * NC] __attribute__((aligned(64)));
    /* op(A)(i, p) = a[i * rs + p * cs] */
    const long rs = ta ? 1 : lda, cs = ta ? lda : 1;
    for (int j0 = 0; j0 < n; j0 += NC) {
        int nc = n - j0 < NC ? n - j0 : NC;
        for (int p0 = 0; p0 < k; p0 += KC) {
            int kc = k - p0 < KC ? k - p0 : KC;
            float bet = p0 == 0 ? beta : 1.0f; /* later k-blocks accumulate */
            pack_b(tb, b, ldb, p0, kc, j0, nc, w, bb);
            for (int i0 = 0; i0 < m; i0 += MC) {
                int mc = m - i0 < MC ? m - i0 : MC;
                for (int jr = 0; jr < nc; jr += w) {
                    int nr = nc - jr < w ? nc - jr : w;
                    const float *bp = bb + (size_t)jr * kc;
                    for (int ir = 0; ir < mc; ir += MR) {
                        int mr = mc - ir < MR ? mc - ir : MR, o[MR];
                        for (int i = 0; i < MR; i++)
                            o[i] = (int)((i < mr ? i : mr - 1) * rs);
                        const float *ai = a + (size_t)(i0 + ir) * rs + (size_t)p0 * cs;
                        float *ct = c + (size_t)(i0 + ir) * ldc + j0 + jr;
                        if (w == NR512 && mr == MR && nr == w)
                            kernel_6x32(kc, ai, o, cs, bp, alpha, bet, ct, ldc);
                        else if (w == NR512)
                            kernel_edge512(kc, ai, o, cs, bp, alpha, bet, ct, ldc, mr, nr);
                        else if (mr == MR && nr == w)
                            kernel_6x16(kc, ai, o, cs, bp, alpha, bet, ct, ldc);
                        else
                            kernel_edge(kc, ai, o, cs, bp, alpha, bet, ct, ldc, mr, nr);
                    }
                }
            }
        }
    }
    return 1;
}

int nf_cpu_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc)
{
    return nf_cpu_sgemm_w(width(), ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

#else /* not x86-64 with GCC/Clang: OpenBLAS does every product */

int nf_cpu_sgemm_available(void) { return 0; }

int nf_cpu_sgemm_width(void) { return 0; }

int nf_cpu_sgemm_w(int w, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    (void)w, (void)ta, (void)tb, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda;
    (void)b, (void)ldb, (void)beta, (void)c, (void)ldc;
    return 0;
}

int nf_cpu_sgemm_suits(int m, int n, int k)
{
    (void)m, (void)n, (void)k;
    return 0;
}

int nf_cpu_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc)
{
    (void)ta, (void)tb, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda, (void)b;
    (void)ldb, (void)beta, (void)c, (void)ldc;
    return 0;
}

#endif
