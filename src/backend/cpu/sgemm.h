/* The CPU backend's own float32 GEMM (sgemm.c): row-major C = alpha op(A) op(B) + beta C,
 * single-threaded, for x86-64 processors with AVX2 and FMA (and AVX-512F, where present). */
#ifndef NF_CPU_SGEMM_H
#define NF_CPU_SGEMM_H

/* 1 when this processor can run nf_cpu_sgemm and the environment does not say
 * NF_CPU_GEMM=openblas (the switch that hands every product to OpenBLAS, for comparisons).
 * Read once. */
int nf_cpu_sgemm_available(void);

/* The register tile's width nf_cpu_sgemm uses: 32 with AVX-512F, 16 with AVX2 and FMA or
 * when the environment says NF_CPU_GEMM=avx2, 0 when nf_cpu_sgemm_available() is 0. */
int nf_cpu_sgemm_width(void);

/* 1 when nf_cpu_sgemm is available and faster than OpenBLAS for an m x n x k product: a
 * narrow C (n <= 64), as NUFILT's adapter computes 50 times per matrix (K B, [K B | D_t] W),
 * or a short C with a short inner dimension (m <= 64, k <= 256: S V). OpenBLAS stays ahead
 * once C is wide and deep, and on short products with a long k such as B^T [K B | D_t]
 * (bench/perf/gemm_bench.c measures both). */
int nf_cpu_sgemm_suits(int m, int n, int k);

/* Computes the product and returns 1, or returns 0 without touching C when the processor
 * lacks AVX2/FMA (the caller then uses BLAS). beta == 0 never reads C. Uses 64 KiB of stack
 * for its packing buffer. */
int nf_cpu_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);

/* nf_cpu_sgemm with a chosen tile width, 16 or 32, whatever the environment says; returns 0
 * when the processor cannot run that width. The two widths give bit-identical results (the
 * tests compare them). */
int nf_cpu_sgemm_w(int w, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);

#endif
