#version 450
/*
 * gemm_f32_reg: C = alpha * op(A) * op(B) + beta * C for CPU-like Vulkan devices (lavapipe,
 * SwiftShader), which run the invocations of a workgroup as SIMD lanes of a CPU thread.
 *
 * No shared memory and no barriers (both are slow there). A workgroup owns TM rows of C,
 * chosen by the workgroup id alone, so every load of op(A) is the same for all lanes and the
 * compiler turns it into one scalar load; each invocation accumulates a TM x TN register tile
 * whose TN columns are strided by the workgroup width, so neighbouring lanes read neighbouring
 * elements of op(B).
 *
 * Specialisation (#defines injected by the backend): TA, TB, TM, TN, WG (invocations per
 * workgroup), BETA_ZERO, ALIGNED (m % TM == 0 and n % (WG * TN) == 0: no bounds checks).
 */
#ifndef TA
#error "TA, TB, TM, TN, WG, BETA_ZERO and ALIGNED are injected by the backend"
#endif

layout(local_size_x = WG, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer BufA { float a[]; };
layout(set = 0, binding = 1) readonly buffer BufB { float b[]; };
layout(set = 0, binding = 2) buffer BufC { float c[]; };

layout(push_constant) uniform Params {
    uint m, n, k;
    uint lda, ldb, ldc;
    uint offa, offb, offc;
    float alpha, beta;
} p;

void main()
{
    const uint m0 = gl_WorkGroupID.y * TM;
    const uint n0 = gl_WorkGroupID.x * (WG * TN) + gl_LocalInvocationID.x;

    float acc[TM][TN];
    for (int i = 0; i < TM; i++)
        for (int j = 0; j < TN; j++)
            acc[i][j] = 0.0;

    /* rows past m (ragged last block) read row m - 1 instead and are never stored */
    uint arow[TM];
    for (int i = 0; i < TM; i++) {
        uint r = m0 + uint(i);
        if (ALIGNED == 0)
            r = min(r, p.m - 1);
        arow[i] = r;
    }
    uint bcol[TN];
    for (int j = 0; j < TN; j++) {
        uint cc = n0 + uint(j) * WG;
        if (ALIGNED == 0)
            cc = min(cc, p.n - 1);
        bcol[j] = cc;
    }

    for (uint q = 0; q < p.k; q++) {
        float av[TM], bv[TN];
        for (int i = 0; i < TM; i++)
            av[i] = TA != 0 ? a[p.offa + q * p.lda + arow[i]] : a[p.offa + arow[i] * p.lda + q];
        for (int j = 0; j < TN; j++)
            bv[j] = TB != 0 ? b[p.offb + bcol[j] * p.ldb + q] : b[p.offb + q * p.ldb + bcol[j]];
        for (int i = 0; i < TM; i++)
            for (int j = 0; j < TN; j++)
                acc[i][j] = fma(av[i], bv[j], acc[i][j]);
    }

    for (int i = 0; i < TM; i++) {
        const uint r = m0 + uint(i);
        if (ALIGNED == 0 && r >= p.m)
            break;
        for (int j = 0; j < TN; j++) {
            const uint cc = n0 + uint(j) * WG;
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
