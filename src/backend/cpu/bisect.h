/* Eigenvalues of a symmetric tridiagonal matrix by vectorised bisection (bisect.c). */
#ifndef NF_CPU_BISECT_H
#define NF_CPU_BISECT_H

/* The r largest eigenvalues of the n x n symmetric tridiagonal matrix with diagonal d and
 * off-diagonal e (n - 1 values), ascending in w: what LAPACK's sstebz('I', 'B',
 * il = n - r + 1, iu = n) computes, but to double accuracy before the rounding to float.
 * Returns 0, or 1 when it declines (no AVX2, or the matrix splits into blocks at sstebz's
 * test): the caller then uses sstebz. */
int nf_cpu_tridiag_top(int n, const float *d, const float *e, int r, float *w);

#endif
