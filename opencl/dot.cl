/* Dot product (sum of x * y, or of x * x) as a two-level reduction: every work-item
 * accumulates a grid-stride share, each work-group reduces its items in local memory and
 * writes one partial sum; the host adds the partials in double.
 *
 * With cl_khr_fp64 (NF_HAVE_FP64 defined by the host) products and sums are in double: the
 * products of floats are exact and the error is that of a double sum. Without it the partials
 * are float, each work-item using compensated (Kahan) summation, so the error does not grow
 * with n: about (log2(work-group size) + 4) * 2^-24 * sum |x y| (the tests allow
 * 64 * 2^-23 * sum |x y|). FP_CONTRACT off keeps the compensation intact. */
#pragma OPENCL FP_CONTRACT OFF

#ifdef NF_HAVE_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double nf_acc;
#else
typedef float nf_acc;
#endif

/* local size must be a power of two; scratch holds one nf_acc per work-item */
__kernel void dot_f32(ulong n, __global const float *x, ulong x_off, __global const float *y,
                      ulong y_off, int has_y, __global nf_acc *partial, __local nf_acc *scratch)
{
    x += x_off;
    y = has_y ? y + y_off : x;
    const size_t lid = get_local_id(0), lsize = get_local_size(0);
    nf_acc s = 0;
#ifdef NF_HAVE_FP64
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0))
        s += (double)x[i] * (double)y[i];
#else
    float c = 0.0f; /* Kahan compensation */
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0)) {
        float t = x[i] * y[i] - c;
        float u = s + t;
        c = (u - s) - t;
        s = u;
    }
#endif
    scratch[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (size_t stride = lsize / 2; stride > 0; stride /= 2) {
        if (lid < stride)
            scratch[lid] += scratch[lid + stride];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        partial[get_group_id(0)] = scratch[0];
}
