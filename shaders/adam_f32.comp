#version 450
/*
 * adam_f32: one Adam step with PyTorch semantics, in place on x, m, v:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   x = x - step_size * m / (sqrt(v) / bc2_sqrt + eps)
 * step_size = lr / (1 - b1^s) and bc2_sqrt = sqrt(1 - b2^s) come from the host (computed in
 * double, passed as float like the CPU backend does). `precise` forbids fma contraction so the
 * rounding follows the CPU code; sqrt and division are as exact as the device makes them.
 */
#ifndef WG
#error "WG is injected by the backend"
#endif

layout(local_size_x = WG, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) buffer BufX { float x[]; };
layout(set = 0, binding = 1) buffer BufM { float mm[]; };
layout(set = 0, binding = 2) buffer BufV { float vv[]; };
layout(set = 0, binding = 3) readonly buffer BufG { float g[]; };

layout(push_constant) uniform Params {
    uint n, offx, offm, offv, offg;
    float b1, b2, eps, step_size, bc2_sqrt;
} p;

void main()
{
    const uint stride = gl_NumWorkGroups.x * WG;
    precise float c1 = 1.0 - p.b1;
    precise float c2 = 1.0 - p.b2;
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride) {
        const float gi = g[p.offg + i];
        precise float mi = p.b1 * mm[p.offm + i] + c1 * gi;
        precise float vi = p.b2 * vv[p.offv + i] + (c2 * gi) * gi;
        precise float denom = sqrt(vi) / p.bc2_sqrt + p.eps;
        precise float xi = x[p.offx + i] - p.step_size * (mi / denom);
        mm[p.offm + i] = mi;
        vv[p.offv + i] = vi;
        x[p.offx + i] = xi;
    }
}
