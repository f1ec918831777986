/* Element-wise kernels of the OpenCL backend: axpby (and fill), and the 2-D scale used to
 * prepare C before a GEMM. Offsets and sizes count float32 elements. Grid-stride loops let the
 * host cap the launch size for any n.
 *
 * FP_CONTRACT is off so that a * x + b * y is evaluated with the same roundings as the CPU
 * backend (no fused multiply-add): results match nf_cpu_axpby bit for bit. */
#pragma OPENCL FP_CONTRACT OFF

/* y = alpha * x + beta * y; with beta == 0, y is not read (NaN in y does not propagate) */
__kernel void axpby_f32(ulong n, float alpha, float beta, __global const float *x, ulong x_off,
                        __global float *y, ulong y_off)
{
    x += x_off;
    y += y_off;
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0))
        y[i] = alpha * x[i] + (beta == 0.0f ? 0.0f : beta * y[i]);
}

/* y = beta * y + alpha (fill when beta == 0) */
__kernel void axpby_f32_nox(ulong n, float alpha, float beta, __global float *y, ulong y_off)
{
    y += y_off;
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0))
        y[i] = (beta == 0.0f ? 0.0f : beta * y[i]) + alpha;
}

/* c = beta * c over a rows x cols row-major view (leading dimension ld); beta == 0 writes
 * zeros without reading c. Launched as a 2-D range (cols, rows), grid-stride in both. */
__kernel void scale2d_f32(int rows, int cols, int ld, float beta, __global float *c, ulong c_off)
{
    c += c_off;
    for (int r = (int)get_global_id(1); r < rows; r += (int)get_global_size(1))
        for (int j = (int)get_global_id(0); j < cols; j += (int)get_global_size(0)) {
            __global float *p = c + (ulong)r * (ulong)ld + (ulong)j;
            *p = beta == 0.0f ? 0.0f : beta * *p;
        }
}
