#version 450
/*
 * gemm_f32_tiled: C = alpha * op(A) * op(B) + beta * C for GPUs (row-major views).
 *
 * Each workgroup computes a BM x BN block of C. Per step of BK along k, the block's slices of
 * op(A) (BM x BK) and op(B) (BK x BN) go through shared memory; each invocation then computes
 * a TM x TN register tile whose rows and columns are strided by the workgroup's shape, so
 * shared-memory reads of B are consecutive per warp and stores to C are coalesced. The next
 * slice is fetched into registers while the current one is multiplied.
 *
 * Specialisation (injected as #defines by the backend, see src/backend/vulkan):
 *   TA, TB      0/1: op(X) = X or X^T (global loads are arranged so that neighbouring
 *               invocations read neighbouring addresses in either case)
 *   BM, BN, BK  block tile; TM, TN register tile; (BN/TN) x (BM/TM) invocations
 *   BETA_ZERO   1: C is only written (NaN in C does not propagate)
 *   ALIGNED     1: m % BM == n % BN == k % BK == 0, no bounds checks
 * Shapes, leading dimensions and offsets (elements, relative to the bound ranges) are push
 * constants.
 */
#ifndef TA
#error "TA, TB, BM, BN, BK, TM, TN, BETA_ZERO and ALIGNED are injected by the backend"
#endif

#define WG_X (BN / TN)
#define WG_Y (BM / TM)
#define NT (WG_X * WG_Y)
#define LA ((BM * BK) / NT) /* elements of op(A) each invocation loads per slice */
#define LB ((BK * BN) / NT)
#if (BM * BK) % NT != 0 || (BK * BN) % NT != 0 || BM % TM != 0 || BN % TN != 0
#error "tile sizes must divide evenly among the invocations"
#endif
/* padding that keeps the transposing stores into shared memory free of bank conflicts */
#if TA
#define PAD_A 0
#else
#define PAD_A 1
#endif
#if TB
#define PAD_B 1
#else
#define PAD_B 0
#endif

layout(local_size_x = WG_X, local_size_y = WG_Y, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer BufA { float a[]; };
layout(set = 0, binding = 1) readonly buffer BufB { float b[]; };
layout(set = 0, binding = 2) buffer BufC { float c[]; };

layout(push_constant) uniform Params {
    uint m, n, k;
    uint lda, ldb, ldc;
    uint offa, offb, offc;
    float alpha, beta;
} p;

shared float As[BK][BM + PAD_A];
shared float Bs[BK][BN + PAD_B];

void main()
{
    const uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    const uint tid = ty * WG_X + tx;
    const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;

    float acc[TM][TN];
    for (int i = 0; i < TM; i++)
        for (int j = 0; j < TN; j++)
            acc[i][j] = 0.0;

    float ra[LA], rb[LB];
    const uint ntiles = (p.k + BK - 1) / BK;

    /* slice t of op(A) and op(B) into registers */
#define FETCH(t)                                                                       \
    {                                                                                  \
        const uint k0 = (t) * BK;                                                      \
        for (int l = 0; l < LA; l++) {                                                 \
            const uint e = tid + uint(l) * NT;                                         \
            /* TA = 0: A is m x k, walk along k; TA = 1: A is k x m, walk along m */    \
            const uint r = TA != 0 ? e % BM : e / BK, q = TA != 0 ? e / BM : e % BK;   \
            const uint gr = m0 + r, gq = k0 + q;                                       \
            const uint ia = TA != 0 ? p.offa + gq * p.lda + gr : p.offa + gr * p.lda + gq; \
            ra[l] = (ALIGNED != 0 || (gr < p.m && gq < p.k)) ? a[ia] : 0.0;            \
        }                                                                              \
        for (int l = 0; l < LB; l++) {                                                 \
            const uint e = tid + uint(l) * NT;                                         \
            /* TB = 0: B is k x n, walk along n; TB = 1: B is n x k, walk along k */    \
            const uint q = TB != 0 ? e % BK : e / BN, cc = TB != 0 ? e / BK : e % BN;  \
            const uint gq = k0 + q, gc = n0 + cc;                                      \
            const uint ib = TB != 0 ? p.offb + gc * p.ldb + gq : p.offb + gq * p.ldb + gc; \
            rb[l] = (ALIGNED != 0 || (gq < p.k && gc < p.n)) ? b[ib] : 0.0;            \
        }                                                                              \
    }

    if (ntiles > 0)
        FETCH(0u)
    for (uint t = 0; t < ntiles; t++) {
        barrier(); /* everyone is done reading the previous slice */
        for (int l = 0; l < LA; l++) {
            const uint e = tid + uint(l) * NT;
            const uint r = TA != 0 ? e % BM : e / BK, q = TA != 0 ? e / BM : e % BK;
            As[q][r] = ra[l];
        }
        for (int l = 0; l < LB; l++) {
            const uint e = tid + uint(l) * NT;
            const uint q = TB != 0 ? e % BK : e / BN, cc = TB != 0 ? e / BK : e % BN;
            Bs[q][cc] = rb[l];
        }
        barrier();
        if (t + 1 < ntiles)
            FETCH(t + 1)
        for (int kk = 0; kk < BK; kk++) {
            float av[TM], bv[TN];
            for (int i = 0; i < TM; i++)
                av[i] = As[kk][ty + uint(i) * WG_Y];
            for (int j = 0; j < TN; j++)
                bv[j] = Bs[kk][tx + uint(j) * WG_X];
            for (int i = 0; i < TM; i++)
                for (int j = 0; j < TN; j++)
                    acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }
    }

    for (int i = 0; i < TM; i++) {
        const uint r = m0 + ty + uint(i) * WG_Y;
        if (ALIGNED == 0 && r >= p.m)
            break;
        for (int j = 0; j < TN; j++) {
            const uint cc = n0 + tx + uint(j) * WG_X;
            if (ALIGNED == 0 && cc >= p.n)
                break;
            const uint ic = p.offc + r * p.ldc + cc;
#if BETA_ZERO
            c[ic] = p.alpha * acc[i][j];
#else
            c[ic] = p.alpha * acc[i][j] + p.beta * c[ic];
#endif
        }
    }
}
