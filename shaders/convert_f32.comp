#version 450
/*
 * convert_f32: n elements of F16, BF16 or F64 (raw little-endian bytes at any byte offset of
 * the source, read as 32-bit words) to float32, written as bit patterns. Integer arithmetic
 * only, so the result is exact and equals the CPU backend's bit for bit, NaN payloads, signed
 * zeros and subnormals included (no dependence on the device's denormal mode):
 *   F16  -> F32: exact widening;  BF16 -> F32: the upper half of the float;
 *   F64  -> F32: round to nearest even, overflow to infinity, results below float's range
 *               to subnormals or zero; NaN keeps sign and top payload bits, made quiet.
 * SRC_DTYPE: 1 = F16, 2 = BF16, 3 = F64 (injected by the backend).
 */
#ifndef SRC_DTYPE
#error "SRC_DTYPE and WG are injected by the backend"
#endif

layout(local_size_x = WG, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer BufS { uint src[]; };
layout(set = 0, binding = 1) writeonly buffer BufD { uint dst[]; };

layout(push_constant) uniform Params {
    uint n;
    uint src_byte_off; /* relative to the bound range, any alignment */
    uint offd;         /* elements */
} p;

/* 32 bits starting at byte o */
uint load32(uint o)
{
    const uint w = o >> 2, sh = (o & 3u) * 8u;
    if (sh == 0u)
        return src[w];
    return (src[w] >> sh) | (src[w + 1u] << (32u - sh));
}

/* 16 bits starting at byte o */
uint load16(uint o)
{
    const uint w = o >> 2, sh = (o & 3u) * 8u;
    if (sh <= 16u)
        return (src[w] >> sh) & 0xFFFFu;
    return ((src[w] >> 24) | (src[w + 1u] << 8)) & 0xFFFFu;
}

uint f16_bits(uint h)
{
    const uint sign = (h & 0x8000u) << 16;
    const uint e = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (e == 0u) {
        if (man == 0u)
            return sign;
        /* subnormal man * 2^-24: normalise so the leading one becomes the implicit bit */
        const int msb = findMSB(man); /* 0..9 */
        return sign | (uint(msb + 103) << 23) | ((man << (23 - msb)) & 0x7FFFFFu);
    }
    if (e == 31u)
        return sign | 0x7F800000u | (man << 13);
    return sign | ((e + 112u) << 23) | (man << 13);
}

/* (hi:lo) >> s for 0 < s < 64, as (low word, high word) */
uvec2 shr64(uint hi, uint lo, uint s)
{
    if (s >= 32u)
        return uvec2(hi >> (s - 32u), 0u);
    return uvec2((lo >> s) | (hi << (32u - s)), hi >> s);
}

uint f64_bits(uint lo, uint hi)
{
    const uint sign = hi & 0x80000000u;
    const uint e = (hi >> 20) & 0x7FFu;
    const uint mhi = hi & 0xFFFFFu;
    if (e == 0x7FFu) {
        if (mhi == 0u && lo == 0u)
            return sign | 0x7F800000u;
        return sign | 0x7FC00000u | (mhi << 3) | (lo >> 29);
    }
    if (e == 0u) /* zero or double subnormal: far below half of float's smallest subnormal */
        return sign;
    const int E = int(e) - 1023;
    if (E > 127)
        return sign | 0x7F800000u;
    /* significand S = 2^52 + mantissa as (shi:lo), 53 bits; keep S >> s */
    const uint shi = mhi | 0x100000u;
    uint s, base;
    if (E >= -126) {
        s = 29u;
        base = uint(E + 126) << 23; /* + S >> 29 (which carries the implicit 2^23) */
    } else {
        s = uint(-E - 97); /* subnormal: value / 2^-149 = S * 2^(E + 97) */
        base = 0u;
        if (s > 53u)
            return sign;
    }
    const uvec2 q = shr64(shi, lo, s); /* x = low word, y = high word */
    /* remainder r = S mod 2^s, compared with half = 2^(s-1) */
    uint rlo, rhi;
    if (s >= 32u) {
        rlo = lo;
        rhi = s == 32u ? 0u : (shi & ((1u << (s - 32u)) - 1u));
    } else {
        rlo = lo & ((1u << s) - 1u);
        rhi = 0u;
    }
    uint hlo, hhi;
    if (s - 1u >= 32u) {
        hlo = 0u;
        hhi = 1u << (s - 33u);
    } else {
        hlo = 1u << (s - 1u);
        hhi = 0u;
    }
    const bool above = rhi > hhi || (rhi == hhi && rlo > hlo);
    const bool tie = rhi == hhi && rlo == hlo;
    const uint up = (above || (tie && (q.x & 1u) != 0u)) ? 1u : 0u;
    return sign | (base + q.x + up);
}

void main()
{
    const uint stride = gl_NumWorkGroups.x * WG;
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += stride) {
        uint r;
#if SRC_DTYPE == 1
        r = f16_bits(load16(p.src_byte_off + 2u * i));
#elif SRC_DTYPE == 2
        r = load16(p.src_byte_off + 2u * i) << 16;
#elif SRC_DTYPE == 3
        const uint o = p.src_byte_off + 8u * i;
        r = f64_bits(load32(o), load32(o + 4u));
#else
#error "SRC_DTYPE must be 1 (F16), 2 (BF16) or 3 (F64)"
#endif
        dst[p.offd + i] = r;
    }
}
