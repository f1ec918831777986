/*
 * The r largest eigenvalues of a symmetric tridiagonal matrix by bisection on Sturm counts,
 * 16 shifts at a time in AVX2 registers. LAPACK's sstebz does the same for an index range
 * (the same count and pivot guard, a Gershgorin start, an interval-width stopping rule) but
 * counts one shift at a time in float32 and waits on each division. Here the counts run in
 * double precision on the float32 matrix, so the eigenvalues handed to inverse iteration
 * (sstein) are those of the matrix as stored, to double accuracy, not to float32's
 * |T| eps: that matters at NUFILT's rank cut, where lambda_128 and lambda_129 can be closer
 * than that (a float32 bisection gave 3e-3 on one matrix of the ViT benchmark, this and
 * sstebz 5e-5 against the float64 reference). For the 128 top eigenvalues of a 768-wide
 * matrix: 2.6 ms here, sstebz 5.7 ms.
 *
 * The count for a shift s: q_1 = d_1 - s, q_j = (d_j - e_(j-1)^2 / q_(j-1)) - s, with any
 * |q_j| < pivmin replaced by -pivmin; the number of q_j <= 0 is the number of eigenvalues
 * <= s. The recurrence is a chain of dependent divisions; 16 independent chains (four
 * vectors of 4) keep the divider busy.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "bisect.h"

#define FUDGE 2.1  /* sstebz's widening of the Gershgorin interval */
#define RELFAC 2.0 /* sstebz's relative tolerance, in ulps (of double here) */
#define LANES 16

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NF_AVX2 __attribute__((target("avx2")))

/* cnt[l] = number of eigenvalues <= s[l] for 16 shifts, in double precision */
NF_AVX2 static void sturm16(int n, const double *d, const double *e2, double pivmin,
                            const double *s, int *cnt)
{
    const __m256d piv = _mm256_set1_pd(pivmin), npiv = _mm256_set1_pd(-pivmin);
    const __m256d absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
    const __m256d zero = _mm256_setzero_pd();
    __m256d sv[4], q[4];
    __m256i c[4];
    for (int v = 0; v < 4; v++) {
        sv[v] = _mm256_loadu_pd(s + 4 * v);
        q[v] = _mm256_sub_pd(_mm256_set1_pd(d[0]), sv[v]);
        c[v] = _mm256_setzero_si256();
    }
    for (int j = 0;; j++) {
        for (int v = 0; v < 4; v++) {
            /* |q| < pivmin -> -pivmin; then count q <= 0 (a mask of -1s subtracted) */
            __m256d tiny = _mm256_cmp_pd(_mm256_and_pd(q[v], absmask), piv, _CMP_LT_OQ);
            q[v] = _mm256_blendv_pd(q[v], npiv, tiny);
            __m256d neg = _mm256_cmp_pd(q[v], zero, _CMP_LE_OQ);
            c[v] = _mm256_sub_epi64(c[v], _mm256_castpd_si256(neg));
        }
        if (j + 1 >= n)
            break;
        __m256d dj = _mm256_set1_pd(d[j + 1]), ej = _mm256_set1_pd(e2[j]);
        for (int v = 0; v < 4; v++)
            q[v] = _mm256_sub_pd(_mm256_sub_pd(dj, _mm256_div_pd(ej, q[v])), sv[v]);
    }
    for (int v = 0; v < 4; v++) {
        long long t[4];
        _mm256_storeu_si256((__m256i *)(void *)t, c[v]);
        for (int l = 0; l < 4; l++)
            cnt[4 * v + l] = (int)t[l];
    }
}

int nf_cpu_tridiag_top(int n, const float *d, const float *e, int r, float *w)
{
    if (n < 2 || r <= 0 || r > n || !__builtin_cpu_supports("avx2"))
        return 1;
    const float ulp = FLT_EPSILON, safemn = FLT_MIN;
    double *dd = malloc(2 * (size_t)n * sizeof *dd), *e2 = dd + n;
    if (!dd)
        return 1;
    /* sstebz's split test: a negligible e_j splits the matrix; that case is left to it */
    double pivmin = 1.0;
    for (int j = 0; j < n; j++)
        dd[j] = d[j];
    for (int j = 1; j < n; j++) {
        float t = e[j - 1] * e[j - 1];
        if (fabsf(d[j] * d[j - 1]) * ulp * ulp + safemn > t) {
            free(dd);
            return 1;
        }
        e2[j - 1] = (double)e[j - 1] * (double)e[j - 1];
        pivmin = fmax(pivmin, e2[j - 1]);
    }
    pivmin *= DBL_MIN;
    /* Gershgorin interval, widened */
    double gl = dd[0], gu = dd[0], prev = 0.0;
    for (int j = 0; j < n; j++) {
        double next = j + 1 < n ? fabs((double)e[j]) : 0.0;
        gl = fmin(gl, dd[j] - prev - next);
        gu = fmax(gu, dd[j] + prev + next);
        prev = next;
    }
    double tnorm = fmax(fabs(gl), fabs(gu));
    gl = gl - FUDGE * tnorm * DBL_EPSILON * n - FUDGE * 2.0 * pivmin;
    gu = gu + FUDGE * tnorm * DBL_EPSILON * n + FUDGE * 2.0 * pivmin;
    const double atoli = DBL_EPSILON * tnorm, rtoli = RELFAC * DBL_EPSILON;
    for (int t0 = 0; t0 < r; t0 += LANES) {
        double lo[LANES], hi[LANES], mid[LANES];
        int want[LANES], cnt[LANES], open[LANES], live = 0;
        for (int l = 0; l < LANES; l++) {
            int t = t0 + l < r ? t0 + l : r - 1;
            want[l] = n - r + 1 + t;
            lo[l] = gl;
            hi[l] = gu;
        }
        for (int it = 0; it < 400; it++) {
            /* an interval narrower than sstebz's tolerance is done (frozen) */
            live = 0;
            for (int l = 0; l < LANES; l++) {
                double tol = fmax(fmax(atoli, pivmin), rtoli * fmax(fabs(lo[l]), fabs(hi[l])));
                open[l] = hi[l] - lo[l] > tol;
                live |= open[l];
                mid[l] = 0.5 * (lo[l] + hi[l]);
            }
            if (!live)
                break;
            sturm16(n, dd, e2, pivmin, mid, cnt);
            for (int l = 0; l < LANES; l++) {
                if (!open[l])
                    continue;
                if (cnt[l] >= want[l])
                    hi[l] = mid[l];
                else
                    lo[l] = mid[l];
            }
        }
        if (live) {
            free(dd);
            return 1;
        }
        for (int l = 0; l < LANES && t0 + l < r; l++)
            w[t0 + l] = (float)(0.5 * (lo[l] + hi[l]));
    }
    free(dd);
    return 0;
}

#else

int nf_cpu_tridiag_top(int n, const float *d, const float *e, int r, float *w)
{
    (void)n, (void)d, (void)e, (void)r, (void)w;
    return 1;
}

#endif
