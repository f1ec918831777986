#version 450
/*
 * gemm_f32_sg: C = alpha * op(A) * op(B) + beta * C for CPU implementations of Vulkan
 * (lavapipe, SwiftShader), which run a subgroup as the SIMD lanes of one CPU thread.
 *
 * There every load from a buffer inside a loop costs one scalar load per lane, while
 * arithmetic and subgroup broadcasts of a constant lane are single vector instructions. So a
 * workgroup is one subgroup of SG lanes computing a TM x TN block of C: per step along k each
 * lane loads TM / SG elements of op(A) (its own rows) and TN / SG of op(B), and the subgroup
 * shares the op(B) elements by broadcast, so every lane updates TM / SG x TN accumulators per
 * TM / SG + TN / SG loads. No shared memory and no barriers.
 *
 * Transposes and leading dimensions are strides in the push constants (loads are per lane
 * anyway), beta == 0 is a uniform branch outside the loop, and ragged edges clamp the rows
 * and columns that are loaded, so one pipeline serves every GEMM and the device compiles it
 * once. Specialisation (#defines injected by the backend): TM, TN (multiples of SG) and SG,
 * the device's subgroup size (4, 8 or 16).
 */
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require
#ifndef SG
#error "TM, TN and SG are injected by the backend"
#endif
#if SG != 4 && SG != 8 && SG != 16
#error "SG must be 4, 8 or 16"
#endif
#define RM (TM / SG)
#define RN (TN / SG)

layout(local_size_x = SG, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer BufA { float a[]; };
layout(set = 0, binding = 1) readonly buffer BufB { float b[]; };
layout(set = 0, binding = 2) buffer BufC { float c[]; };

/* op(A)[i][q] = a[offa + i * a_rs + q * a_qs], op(B)[q][j] = b[offb + q * b_qs + j * b_cs] */
layout(push_constant) uniform Params {
    uint m, n, k;
    uint a_rs, a_qs, b_qs, b_cs, ldc;
    uint offa, offb, offc;
    float alpha, beta;
} p;

void main()
{
    const uint l = gl_SubgroupInvocationID;
    const uint m0 = gl_WorkGroupID.y * TM, n0 = gl_WorkGroupID.x * TN;

    float acc[RM][TN];
    [[unroll]] for (int i = 0; i < RM; i++)
        [[unroll]] for (int j = 0; j < TN; j++)
            acc[i][j] = 0.0;

    /* rows and columns past the edge load the last one again and are never stored */
    uint ia[RM], ib[RN];
    [[unroll]] for (int i = 0; i < RM; i++)
        ia[i] = p.offa + min(m0 + l + uint(i * SG), p.m - 1) * p.a_rs;
    [[unroll]] for (int j = 0; j < RN; j++)
        ib[j] = p.offb + min(n0 + l + uint(j * SG), p.n - 1) * p.b_cs;

    for (uint q = 0; q < p.k; q++) {
        float av[RM], bv[RN];
        [[unroll]] for (int i = 0; i < RM; i++)
            av[i] = a[ia[i] + q * p.a_qs];
        [[unroll]] for (int j = 0; j < RN; j++)
            bv[j] = b[ib[j] + q * p.b_qs];
        [[unroll]] for (int j = 0; j < RN; j++) {
#define STEP(s)                                                                     \
            {                                                                       \
                const float bs = subgroupBroadcast(bv[j], s);                       \
                [[unroll]] for (int i = 0; i < RM; i++)                             \
                    acc[i][j * SG + s] = fma(av[i], bs, acc[i][j * SG + s]);        \
            }
            STEP(0) STEP(1) STEP(2) STEP(3)
#if SG > 4
            STEP(4) STEP(5) STEP(6) STEP(7)
#endif
#if SG > 8
            STEP(8) STEP(9) STEP(10) STEP(11) STEP(12) STEP(13) STEP(14) STEP(15)
#endif
#undef STEP
        }
    }

    const bool beta_zero = p.beta == 0.0; /* then C is not read: NaN there does not propagate */
    [[unroll]] for (int i = 0; i < RM; i++) {
        const uint r = m0 + l + uint(i * SG);
        [[unroll]] for (int j = 0; j < TN; j++) {
            const uint cc = n0 + uint(j);
            if (r < p.m && cc < p.n) {
                const uint ic = p.offc + r * p.ldc + cc;
                if (beta_zero)
                    c[ic] = p.alpha * acc[i][j];
                else
                    c[ic] = p.alpha * acc[i][j] + p.beta * c[ic];
            }
        }
    }
}
