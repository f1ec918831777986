#version 450
/*
 * dot_f32: partial sums of x .* y (or x .* x, HAS_Y = 0) over n contiguous elements, one per
 * workgroup; the host adds the partials in double.
 *
 * USE_F64 = 1 (devices with shaderFloat64): products and sums in double, so the result agrees
 * with the CPU backend to rounding of the summation order (relative 1e-15 of sum |x y|).
 * USE_F64 = 0: each invocation keeps a compensated (Kahan) float sum over its grid-stride
 * share and the workgroup tree adds in float: error about 1e-6 of sum |x y|.
 */
#ifndef HAS_Y
#error "HAS_Y, USE_F64 and WG are injected by the backend"
#endif
#if USE_F64
#define REAL double
#else
#define REAL float
#endif

layout(local_size_x = WG, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer BufX { float x[]; };
layout(set = 0, binding = 1) readonly buffer BufY { float y[]; };
layout(set = 0, binding = 2) writeonly buffer BufP { REAL partial[]; };

layout(push_constant) uniform Params {
    uint n, offx, offy;
} p;

shared REAL sums[WG];

void main()
{
    const uint stride = gl_NumWorkGroups.x * WG;
    precise REAL s = REAL(0), comp = REAL(0);
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride) {
#if HAS_Y
        const REAL t = REAL(x[p.offx + i]) * REAL(y[p.offy + i]);
#else
        const REAL xi = REAL(x[p.offx + i]);
        const REAL t = xi * xi;
#endif
#if USE_F64
        s += t;
#else
        precise float yk = t - comp;
        precise float sk = s + yk;
        comp = (sk - s) - yk;
        s = sk;
#endif
    }
    const uint lid = gl_LocalInvocationID.x;
    sums[lid] = s;
    barrier();
    for (uint h = WG / 2; h > 0; h >>= 1) {
        if (lid < h)
            sums[lid] += sums[lid + h];
        barrier();
    }
    if (lid == 0)
        partial[gl_WorkGroupID.x] = sums[0];
}
