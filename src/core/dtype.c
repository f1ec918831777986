#include "dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[NF_DTYPE_COUNT] = {
    [NF_DTYPE_INVALID] = {"INVALID", 0},
    [NF_F64] = {"F64", 8}, [NF_F32] = {"F32", 4}, [NF_F16] = {"F16", 2},
    [NF_BF16] = {"BF16", 2}, [NF_I64] = {"I64", 8}, [NF_I32] = {"I32", 4},
    [NF_I16] = {"I16", 2}, [NF_I8] = {"I8", 1}, [NF_U64] = {"U64", 8},
    [NF_U32] = {"U32", 4}, [NF_U16] = {"U16", 2}, [NF_U8] = {"U8", 1},
    [NF_BOOL] = {"BOOL", 1}, [NF_F8_E4M3] = {"F8_E4M3", 1}, [NF_F8_E5M2] = {"F8_E5M2", 1},
};

const char *nf_dtype_name(nf_dtype dt)
{
    return (unsigned)dt < NF_DTYPE_COUNT ? dtypes[dt].name : "INVALID";
}

size_t nf_dtype_size(nf_dtype dt) { return (unsigned)dt < NF_DTYPE_COUNT ? dtypes[dt].size : 0; }

nf_dtype nf_dtype_from_name(const char *name, size_t len)
{
    for (int i = 1; i < NF_DTYPE_COUNT; i++)
        if (strlen(dtypes[i].name) == len && memcmp(dtypes[i].name, name, len) == 0)
            return (nf_dtype)i;
    return NF_DTYPE_INVALID;
}

int nf_dtype_is_float(nf_dtype dt)
{
    return dt == NF_F64 || dt == NF_F32 || dt == NF_F16 || dt == NF_BF16 || dt == NF_F8_E4M3 ||
           dt == NF_F8_E5M2;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float nf_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FF;
    if (exp == 0) {
        if (man == 0)
            return bits_f32(sign);
        /* subnormal: value = man * 2^-24, exact in float32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return bits_f32(sign | 0x7F800000u | (man << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t nf_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7C00 | (ax > 0x7F800000u ? 0x200 | ((ax >> 13) & 0x3FF) : 0));
    if (ax >= 0x477FF000u) /* rounds to >= 65520: overflow */
        return (uint16_t)(sign | 0x7C00);
    if (ax < 0x38800000u) {
        /* result is subnormal or zero: value / 2^-24 rounded to nearest even */
        float a = bits_f32(ax);
        float scaled = a * 0x1p24f; /* exact: a < 2^-14 so scaled < 2^10 */
        float r = nearbyintf(scaled); /* default rounding mode: nearest even */
        return (uint16_t)(sign | (uint16_t)r);
    }
    /* normal: rebias exponent, round mantissa 23 -> 10 bits to nearest even */
    uint32_t m = ax - 0x38000000u; /* exponent rebias 127 -> 15 */
    uint32_t round = 0xFFFu + ((m >> 13) & 1u);
    m += round;
    return (uint16_t)(sign | (m >> 13));
}

float nf_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t nf_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((x >> 16) | 0x40); /* quiet NaN, sign and payload top kept */
    uint32_t round = 0x7FFFu + ((x >> 16) & 1u);
    return (uint16_t)((x + round) >> 16);
}

/* ---- 8-bit floats (the OCP FP8 formats, as PyTorch's float8_e4m3fn and float8_e5m2) ----
 *
 * E4M3 ("fn": finite): bias 7, no infinity, S.1111.111 is NaN, largest 448 (S.1111.110),
 * subnormals m 2^-9. E5M2: bias 15, IEEE-like: exponent 31 is infinity (m = 0) or NaN,
 * largest 57344, subnormals m 2^-16. Decoding is exact. Encoding rounds to nearest, ties to
 * even, in a format with an unbounded exponent; a result beyond the largest finite value does
 * not saturate: it becomes NaN in E4M3 (which has no infinity) and infinity in E5M2, as
 * PyTorch's conversions do, so that an overflow is seen (and refused by the output check)
 * instead of silently clamped. NaN stays NaN (S.1111.111 in both formats). */

float nf_f8_e4m3_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80) << 24;
    uint32_t e = (b >> 3) & 0xF, m = b & 7;
    if (e == 15 && m == 7)
        return bits_f32(sign | 0x7FC00000u);
    if (e == 0) {
        float v = (float)m * 0x1p-9f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 120) << 23) | (m << 20));
}

float nf_f8_e5m2_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80) << 24;
    uint32_t e = (b >> 2) & 0x1F, m = b & 3;
    if (e == 31)
        return bits_f32(sign | (m ? 0x7FC00000u : 0x7F800000u));
    if (e == 0) {
        float v = (float)m * 0x1p-16f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112) << 23) | (m << 21));
}

/* Round-to-nearest-even encoding of |f| with mbits of mantissa and the given bias; maxcode is
 * the largest finite code, overflow the code of a value beyond it. */
static uint8_t f8_encode(float f, int mbits, int bias, uint8_t maxcode, uint8_t overflow)
{
    uint32_t x = f32_bits(f);
    uint8_t sign = (uint8_t)((x >> 24) & 0x80);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u)
        return sign | 0x7F;
    if (ax == 0x7F800000u)
        return sign | overflow;
    int emin = 1 - bias; /* exponent of the smallest normal */
    if (ax < (uint32_t)(emin + 127) << 23) {
        /* subnormal or zero: |f| / 2^(emin - mbits), rounded to nearest even; the scaling by a
         * power of two is exact, and 2^mbits (a carry into the exponent) is the smallest
         * normal's code */
        float q = bits_f32(ax) * ldexpf(1.0f, mbits - emin);
        return sign | (uint8_t)nearbyintf(q);
    }
    int shift = 23 - mbits;
    uint32_t keep = ax >> shift, rem = ax & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (keep & 1)))
        keep++; /* a carry out of the mantissa steps the exponent, as it should */
    long e = (long)(keep >> mbits) - 127 + bias;
    uint32_t code = ((uint32_t)e << mbits) | (keep & ((1u << mbits) - 1));
    if (e > 31 || code > maxcode)
        return sign | overflow;
    return sign | (uint8_t)code;
}

uint8_t nf_f32_to_f8_e4m3(float f) { return f8_encode(f, 3, 7, 0x7E, 0x7F); }
uint8_t nf_f32_to_f8_e5m2(float f) { return f8_encode(f, 2, 15, 0x7B, 0x7C); }

size_t nf_to_f32(const void *src, nf_dtype dt, float *dst, size_t n)
{
    const unsigned char *s = src;
    size_t bad = 0;
    switch (dt) {
    case NF_F32:
        memcpy(dst, s, n * 4);
        for (size_t i = 0; i < n; i++)
            bad += !isfinite(dst[i]);
        break;
    case NF_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, s + 8 * i, 8);
            dst[i] = (float)d;
            bad += !isfinite(dst[i]); /* NaN, Inf, or too large for float32 */
        }
        break;
    case NF_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = nf_f16_to_f32(h);
            bad += (h & 0x7C00) == 0x7C00;
        }
        break;
    case NF_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = bits_f32((uint32_t)h << 16);
            bad += (h & 0x7F80) == 0x7F80;
        }
        break;
    case NF_F8_E4M3:
        for (size_t i = 0; i < n; i++) {
            dst[i] = nf_f8_e4m3_to_f32(s[i]);
            bad += (s[i] & 0x7F) == 0x7F;
        }
        break;
    case NF_F8_E5M2:
        for (size_t i = 0; i < n; i++) {
            dst[i] = nf_f8_e5m2_to_f32(s[i]);
            bad += (s[i] & 0x7C) == 0x7C;
        }
        break;
    default:
        break;
    }
    return bad;
}

size_t nf_count_nonfinite(const void *src, nf_dtype dt, size_t n)
{
    const unsigned char *s = src;
    size_t bad = 0;
    switch (dt) {
    case NF_F32: /* exponent all ones: Inf or NaN; a bit test the compiler vectorises */
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, s + 4 * i, 4);
            bad += (u & 0x7F800000u) == 0x7F800000u;
        }
        break;
    case NF_F16:
    case NF_BF16: {
        uint16_t e = dt == NF_F16 ? 0x7C00 : 0x7F80;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            bad += (h & e) == e;
        }
        break;
    }
    case NF_F8_E4M3:
    case NF_F8_E5M2: {
        uint8_t e = dt == NF_F8_E4M3 ? 0x7F : 0x7C;
        for (size_t i = 0; i < n; i++)
            bad += (s[i] & e) == e;
        break;
    }
    case NF_F64: { /* also what would overflow float32 */
        float buf[256];
        for (size_t i = 0; i < n; i += 256) {
            size_t c = n - i < 256 ? n - i : 256;
            bad += nf_to_f32(s + 8 * i, dt, buf, c);
        }
        break;
    }
    default:
        break;
    }
    return bad;
}

void nf_from_f32(const float *src, nf_dtype dt, void *dst, size_t n)
{
    unsigned char *d = dst;
    switch (dt) {
    case NF_F32:
        memcpy(d, src, n * 4);
        break;
    case NF_F64:
        for (size_t i = 0; i < n; i++) {
            double v = src[i];
            memcpy(d + 8 * i, &v, 8);
        }
        break;
    case NF_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = nf_f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case NF_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = nf_f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case NF_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            d[i] = nf_f32_to_f8_e4m3(src[i]);
        break;
    case NF_F8_E5M2:
        for (size_t i = 0; i < n; i++)
            d[i] = nf_f32_to_f8_e5m2(src[i]);
        break;
    default:
        break;
    }
}
