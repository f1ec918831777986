#version 450
/*
 * axpby_f32: y = alpha * x + beta * y over n contiguous elements; without x (HAS_X = 0),
 * y = beta * y + alpha, which with beta = 0 is a fill. BETA_ZERO = 1 never reads y (NaN in y
 * does not propagate). `precise` keeps the compiler from fusing into an fma, so results match
 * the CPU backend's rounding. Grid-stride loop: any n with a capped number of workgroups.
 */
#ifndef HAS_X
#error "HAS_X, BETA_ZERO and WG are injected by the backend"
#endif

layout(local_size_x = WG, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer BufX { float x[]; };
layout(set = 0, binding = 1) buffer BufY { float y[]; };

layout(push_constant) uniform Params {
    uint n, offx, offy;
    float alpha, beta;
} p;

void main()
{
    const uint stride = gl_NumWorkGroups.x * WG;
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride) {
        precise float r;
#if BETA_ZERO
        r = 0.0;
#else
        r = p.beta * y[p.offy + i];
#endif
#if HAS_X
        r = p.alpha * x[p.offx + i] + r;
#else
        r = r + p.alpha;
#endif
        y[p.offy + i] = r;
    }
}
