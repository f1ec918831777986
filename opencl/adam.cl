/* One fused Adam step with PyTorch semantics (see nf_adam_op in src/backend/backend.h):
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   x = x - step_size * m / (sqrt(v) / bc2_sqrt + eps)
 * step_size and bc2_sqrt arrive as floats rounded from the host's doubles, exactly as the CPU
 * backend uses them. The expression order mirrors nf_cpu_adam and FP_CONTRACT is off; with
 * correctly rounded sqrt and division (-cl-fp32-correctly-rounded-divide-sqrt, passed when
 * the device supports it) the result equals the CPU backend's bit for bit. */
#pragma OPENCL FP_CONTRACT OFF

__kernel void adam_f32(ulong n, __global float *x, ulong x_off, __global const float *g,
                       ulong g_off, __global float *m, ulong m_off, __global float *v,
                       ulong v_off, float b1, float b2, float eps, float step_size,
                       float bc2_sqrt)
{
    x += x_off;
    g += g_off;
    m += m_off;
    v += v_off;
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0)) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrt(vi) / bc2_sqrt + eps;
        x[i] = x[i] - step_size * (mi / denom);
    }
}
