/* Conversion of checkpoint dtypes to float32, by integer bit manipulation only (no half or
 * double arithmetic needed on the device), matching src/io/dtype.c bit for bit:
 *   F16  -> F32: exact, subnormals normalised, Inf kept, NaN payload kept (shifted).
 *   BF16 -> F32: exact (the top half of a float32).
 *   F64  -> F32: round to nearest even, float32 subnormals produced exactly, overflow to Inf,
 *                NaN quieted with the top of its payload kept (what x86 cvtsd2ss does).
 * Sources are read as little-endian words at an element offset (the host checks alignment
 * and the device's endianness). */

__kernel void convert_f16(ulong n, __global const ushort *src, ulong src_off,
                          __global float *dst, ulong dst_off)
{
    src += src_off;
    dst += dst_off;
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0)) {
        uint h = src[i];
        uint sign = (h & 0x8000u) << 16;
        uint e = (h >> 10) & 0x1Fu;
        uint man = h & 0x3FFu;
        uint bits;
        if (e == 0u) {
            if (man == 0u) {
                bits = sign;
            } else {
                /* man * 2^-24 with the leading bit at position p: exponent p - 24 */
                uint p = 31u - clz(man);
                bits = sign | ((p + 103u) << 23) | ((man << (23u - p)) & 0x7FFFFFu);
            }
        } else if (e == 31u) {
            bits = sign | 0x7F800000u | (man << 13);
        } else {
            bits = sign | ((e + 112u) << 23) | (man << 13);
        }
        dst[i] = as_float(bits);
    }
}

__kernel void convert_bf16(ulong n, __global const ushort *src, ulong src_off,
                           __global float *dst, ulong dst_off)
{
    src += src_off;
    dst += dst_off;
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0))
        dst[i] = as_float((uint)src[i] << 16);
}

/* src counts 32-bit words: element i is words 2i (low) and 2i + 1 (high) */
__kernel void convert_f64(ulong n, __global const uint *src, ulong src_off, __global float *dst,
                          ulong dst_off)
{
    src += src_off;
    dst += dst_off;
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0)) {
        uint lo = src[2 * i], hi = src[2 * i + 1];
        uint sign = hi & 0x80000000u;
        int e = (int)((hi >> 20) & 0x7FFu);
        ulong mant = ((ulong)(hi & 0xFFFFFu) << 32) | (ulong)lo; /* 52 bits */
        uint bits;
        if (e == 0x7FF) {
            bits = mant == 0 ? sign | 0x7F800000u
                             : sign | 0x7FC00000u | (uint)(mant >> 29);
        } else if (e == 0 && mant == 0) {
            bits = sign;
        } else {
            int ef = e - 896; /* float32 biased exponent */
            if (ef >= 255) {
                bits = sign | 0x7F800000u;
            } else if (ef >= 1) {
                uint m23 = (uint)(mant >> 29);
                uint rem = (uint)(mant & 0x1FFFFFFFul);
                uint up = rem > 0x10000000u || (rem == 0x10000000u && (m23 & 1u));
                /* a carry out of the mantissa moves to the exponent, up to Inf: correct */
                bits = sign | (((uint)ef << 23) + m23 + up);
            } else {
                /* float32 subnormal or zero: value = sig * 2^(E-52), unit 2^-149 */
                ulong sig = (e == 0 ? 0ul : (1ul << 52)) | mant;
                int shift = (e == 0 ? 1 : e) - 1023 + 97; /* E + 97 <= -30 */
                shift = -shift;
                if (shift >= 55) {
                    bits = sign;
                } else {
                    ulong r = sig >> shift;
                    ulong rem = sig & ((1ul << shift) - 1ul);
                    ulong halfway = 1ul << (shift - 1);
                    r += rem > halfway || (rem == halfway && (r & 1ul));
                    bits = sign | (uint)r;
                }
            }
        }
        dst[i] = as_float(bits);
    }
}
