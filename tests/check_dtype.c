/* Dtype conversion against independent references: every F16, BF16 and F8 bit pattern
 * decoded with ldexp, and rounding checked against the nearest representable values found by search. */
#include "core/dtype.h"
#include "testutil.h"

/* Independent F16 decoding: value = (-1)^s 2^(e-15) (1 + m/1024), subnormals 2^-14 m/1024. */
static double f16_ref(unsigned h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0)
        v = ldexp(m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

START_TEST(test_f16_decode_all)
{
    for (unsigned h = 0; h < 65536; h++) {
        float f = nf_f16_to_f32((uint16_t)h);
        double r = f16_ref(h);
        if (isnan(r))
            ck_assert_msg(isnan(f), "f16 %04x should be NaN", h);
        else
            ck_assert_msg((double)f == r && !!signbit(f) == !!signbit(r), "f16 %04x: %g vs %g", h,
                          (double)f, r);
    }
}
END_TEST

START_TEST(test_f16_roundtrip_all)
{
    for (unsigned h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31 && (h & 1023))
            continue; /* NaN payloads: only NaN-ness is promised */
        uint16_t back = nf_f32_to_f16(nf_f16_to_f32((uint16_t)h));
        ck_assert_msg(back == h, "f16 %04x -> %04x", h, back);
    }
}
END_TEST

/* Nearest F16 by bisection over the ordered non-negative patterns, ties to even mantissa. */
static unsigned f16_nearest(double x)
{
    int neg = x < 0;
    double a = fabs(x);
    if (a >= 65520.0)
        return (neg << 15) | 0x7C00;
    unsigned lo = 0, hi = 0x7BFF;
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) / 2;
        if (f16_ref(mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dl = a - f16_ref(lo), dh = f16_ref(hi) - a;
    unsigned r = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
    if (a >= f16_ref(0x7BFF))
        r = a - f16_ref(0x7BFF) < 16.0 ? 0x7BFF : 0x7C00; /* 65504 .. 65520 */
    return (neg << 15) | r;
}

START_TEST(test_f16_rounding)
{
    uint64_t s = 42;
    for (int i = 0; i < 200000; i++) {
        /* magnitudes across the whole range, subnormals included */
        double e = -26.0 + 43.0 * tu_uniform(&s);
        float x = (float)(ldexp(1.0 + tu_uniform(&s), (int)e) * (tu_uniform(&s) < 0.5 ? -1 : 1));
        uint16_t got = nf_f32_to_f16(x);
        unsigned want = f16_nearest((double)x);
        if ((want & 0x7FFF) == 0)
            want = (x < 0) << 15; /* signed zero */
        ck_assert_msg(got == want, "f32 %a -> f16 %04x, want %04x", (double)x, got, want);
    }
    /* exact ties: halfway between 1 and 1 + 2^-10 rounds to even (1), next one up */
    ck_assert_uint_eq(nf_f32_to_f16(1.0f + 0x1p-11f), 0x3C00);
    ck_assert_uint_eq(nf_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
    ck_assert_uint_eq(nf_f32_to_f16(65520.0f), 0x7C00);
    ck_assert_uint_eq(nf_f32_to_f16(65519.0f), 0x7BFF);
    ck_assert_uint_eq(nf_f32_to_f16(-INFINITY), 0xFC00);
    ck_assert(isnan(nf_f16_to_f32(nf_f32_to_f16(NAN))));
}
END_TEST

START_TEST(test_bf16_all)
{
    for (unsigned h = 0; h < 65536; h++) {
        float f = nf_bf16_to_f32((uint16_t)h);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        ck_assert_uint_eq(bits, (uint32_t)h << 16);
        if (((h >> 7) & 0xFF) == 0xFF && (h & 0x7F))
            ck_assert(isnan(f) && isnan(nf_bf16_to_f32(nf_f32_to_bf16(f))));
        else
            ck_assert_uint_eq(nf_f32_to_bf16(f), h);
    }
}
END_TEST

START_TEST(test_bf16_rounding)
{
    uint64_t s = 7;
    for (int i = 0; i < 200000; i++) {
        uint32_t bits = (uint32_t)tu_next(&s);
        float x;
        memcpy(&x, &bits, 4);
        if (!isfinite(x))
            continue;
        uint16_t got = nf_f32_to_bf16(x);
        /* the two neighbours by truncation, and the nearer (ties to even) */
        uint16_t lo = (uint16_t)(bits >> 16), hi = (uint16_t)(lo + 1);
        double vx = x, vl = nf_bf16_to_f32(lo), vh = nf_bf16_to_f32(hi);
        if ((lo & 0x7FFF) == 0x7F7F) /* above the largest finite value: next is 2^128 */
            vh = (lo & 0x8000) ? -ldexp(1.0, 128) : ldexp(1.0, 128);
        double dl = fabs(vx - vl), dh = fabs(vh - vx);
        uint16_t want = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
        ck_assert_msg(got == want, "f32 %08x -> bf16 %04x, want %04x", bits, got, want);
    }
}
END_TEST

START_TEST(test_bulk_and_nonfinite)
{
    /* unaligned source, F64 and F16 bulk conversions, and the non-finite count */
    unsigned char buf[8 * 5 + 1];
    double d[5] = {1.5, -2.25, 1e300, NAN, 3.0};
    memcpy(buf + 1, d, sizeof d);
    float out[5];
    size_t bad = nf_to_f32(buf + 1, NF_F64, out, 5);
    ck_assert_uint_eq(bad, 2); /* 1e300 overflows float and NaN */
    ck_assert(out[0] == 1.5f && out[1] == -2.25f && out[4] == 3.0f);
    float src[3] = {0.5f, -1.0f, 2.0f};
    unsigned char h[7];
    nf_from_f32(src, NF_F16, h + 1, 3);
    float back[3];
    ck_assert_uint_eq(nf_to_f32(h + 1, NF_F16, back, 3), 0);
    ck_assert(back[0] == 0.5f && back[1] == -1.0f && back[2] == 2.0f);
    ck_assert_str_eq(nf_dtype_name(NF_BF16), "BF16");
    ck_assert_int_eq(nf_dtype_from_name("F8_E4M3", 7), NF_F8_E4M3);
    ck_assert_int_eq(nf_dtype_from_name("F33", 3), NF_DTYPE_INVALID);
    ck_assert_uint_eq(nf_dtype_size(NF_I64), 8);
}
END_TEST

START_TEST(test_count_nonfinite)
{
    /* the bit test agrees with conversion + isfinite on every 16-bit pattern, on float32's
     * edges, and on F64 values that overflow float32; unaligned sources throughout */
    static unsigned char buf[2 * 65536 + 1];
    float tmp[1];
    nf_dtype d16[2] = {NF_F16, NF_BF16};
    for (int t = 0; t < 2; t++) {
        size_t want = 0;
        for (uint32_t v = 0; v < 65536; v++) {
            uint16_t h = (uint16_t)v;
            memcpy(buf + 1 + 2 * v, &h, 2);
            size_t one = nf_count_nonfinite(buf + 1 + 2 * v, d16[t], 1);
            ck_assert_uint_eq(one, nf_to_f32(buf + 1 + 2 * v, d16[t], tmp, 1));
            want += one;
        }
        ck_assert_uint_eq(nf_count_nonfinite(buf + 1, d16[t], 65536), want);
        ck_assert_uint_eq(want, (t == 0 ? 2048u : 256u)); /* exponent all ones, any sign/mantissa */
    }
    uint32_t f32[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x7F7FFFFFu, 0xFF7FFFFFu,
                      0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u, 0xFFFFFFFFu,
                      0x3F800000u, 0x807FFFFFu};
    size_t nf = sizeof f32 / sizeof f32[0], want = 0;
    memcpy(buf + 1, f32, sizeof f32);
    for (size_t i = 0; i < nf; i++)
        want += nf_to_f32(buf + 1 + 4 * i, NF_F32, tmp, 1);
    ck_assert_uint_eq(want, 5);
    ck_assert_uint_eq(nf_count_nonfinite(buf + 1, NF_F32, nf), want);
    double d[4] = {1e300, -3.5e38, 3.0e38, -1.0};
    memcpy(buf + 1, d, sizeof d);
    ck_assert_uint_eq(nf_count_nonfinite(buf + 1, NF_F64, 4), 2);
}
END_TEST

/* Independent 8-bit float decoding from the formats' definitions (the OCP FP8 formats):
 * value = (-1)^s (2^mbits + m) 2^(e - bias - mbits) for e > 0, m 2^(1 - bias - mbits) for
 * e = 0; E4M3 has no infinity and only S.1111.111 as NaN; E5M2 has IEEE-style infinities and
 * NaNs at e = 31. The integer significand and the power of two are formed apart. */
static double f8_ref(unsigned b, int e5m2)
{
    int mbits = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7;
    int s = b >> 7, e = (b & 0x7F) >> mbits, m = b & ((1 << mbits) - 1);
    double v;
    if (!e5m2 && e == 15 && m == 7)
        return NAN;
    if (e5m2 && e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, 1 - bias - mbits);
    else
        v = ldexp((1 << mbits) + m, e - bias - mbits);
    return s ? -v : v;
}

static float f8_dec(unsigned b, int e5m2)
{
    return e5m2 ? nf_f8_e5m2_to_f32((uint8_t)b) : nf_f8_e4m3_to_f32((uint8_t)b);
}

static unsigned f8_enc(float f, int e5m2)
{
    return e5m2 ? nf_f32_to_f8_e5m2(f) : nf_f32_to_f8_e4m3(f);
}

START_TEST(test_f8_decode_all)
{
    for (int e5m2 = 0; e5m2 < 2; e5m2++) {
        int nans = 0, infs = 0;
        for (unsigned b = 0; b < 256; b++) {
            float f = f8_dec(b, e5m2);
            double r = f8_ref(b, e5m2);
            if (isnan(r)) {
                ck_assert_msg(isnan(f), "f8 %s %02x should be NaN", e5m2 ? "e5m2" : "e4m3", b);
                nans++;
            } else {
                ck_assert_msg((double)f == r && !!signbit(f) == !!signbit(r),
                              "f8 %s %02x: %g vs %g", e5m2 ? "e5m2" : "e4m3", b, (double)f, r);
                infs += isinf(r) != 0;
            }
        }
        ck_assert_int_eq(nans, e5m2 ? 6 : 2);
        ck_assert_int_eq(infs, e5m2 ? 2 : 0);
    }
    ck_assert(f8_ref(0x7E, 0) == 448 && f8_ref(0x7B, 1) == 57344);
    ck_assert(f8_ref(0x01, 0) == 0x1p-9 && f8_ref(0x01, 1) == 0x1p-16);
}
END_TEST

/* Encoding: every finite code back to itself; between two neighbours (taken from the
 * reference table) the midpoint goes to the even code and anything off it to the nearer one;
 * beyond the largest finite value, NaN (E4M3) or infinity (E5M2), with the tie at the top
 * rounding to even as everywhere else; NaN and infinity in; both signs. */
START_TEST(test_f8_encode)
{
    for (int e5m2 = 0; e5m2 < 2; e5m2++) {
        unsigned maxcode = e5m2 ? 0x7B : 0x7E, over = e5m2 ? 0x7C : 0x7F;
        for (unsigned c = 0; c <= maxcode; c++) {
            for (unsigned sg = 0; sg < 2; sg++) {
                float v = (float)f8_ref(c, e5m2) * (sg ? -1.0f : 1.0f);
                ck_assert_uint_eq(f8_enc(v, e5m2), c | (sg << 7));
            }
            if (c == maxcode)
                break;
            double lo = f8_ref(c, e5m2), hi = f8_ref(c + 1, e5m2);
            float mid = (float)((lo + hi) / 2);
            ck_assert((double)mid == (lo + hi) / 2); /* exact in float32 */
            unsigned even = (c & 1) ? c + 1 : c;
            ck_assert_msg(f8_enc(mid, e5m2) == even, "%s tie %g -> %02x, want %02x",
                          e5m2 ? "e5m2" : "e4m3", (double)mid, f8_enc(mid, e5m2), even);
            ck_assert_uint_eq(f8_enc(-mid, e5m2), even | 0x80);
            ck_assert_uint_eq(f8_enc(nextafterf(mid, INFINITY), e5m2), c + 1);
            ck_assert_uint_eq(f8_enc(nextafterf(mid, 0), e5m2), c);
        }
        double top = f8_ref(maxcode, e5m2), ulp = top - f8_ref(maxcode - 1, e5m2);
        float tie = (float)(top + ulp / 2); /* 464, 61440 */
        ck_assert_uint_eq(f8_enc(tie, e5m2), (maxcode & 1) ? over : maxcode);
        ck_assert_uint_eq(f8_enc(nextafterf(tie, 0), e5m2), maxcode);
        ck_assert_uint_eq(f8_enc(nextafterf(tie, INFINITY), e5m2), over);
        ck_assert_uint_eq(f8_enc(-nextafterf(tie, INFINITY), e5m2), over | 0x80);
        ck_assert_uint_eq(f8_enc(1e30f, e5m2), over);
        ck_assert_uint_eq(f8_enc(INFINITY, e5m2), over);
        ck_assert_uint_eq(f8_enc(-INFINITY, e5m2), over | 0x80);
        ck_assert_uint_eq(f8_enc(NAN, e5m2) & 0x7F, 0x7F);
        /* below the smallest subnormal: half of it is a tie to 0, anything above goes up */
        float tiny = (float)f8_ref(1, e5m2);
        ck_assert_uint_eq(f8_enc(tiny / 2, e5m2), 0);
        ck_assert_uint_eq(f8_enc(nextafterf(tiny / 2, 1), e5m2), 1);
        ck_assert_uint_eq(f8_enc(-tiny / 4, e5m2), 0x80);
    }
    ck_assert_uint_eq(nf_f32_to_f8_e4m3(464.0f), 0x7E);
    ck_assert_uint_eq(nf_f32_to_f8_e4m3(465.0f), 0x7F);
    ck_assert_uint_eq(nf_f32_to_f8_e5m2(61440.0f), 0x7C);
}
END_TEST

/* The bulk paths: nf_to_f32 counts NaN (and E5M2 infinities), nf_count_nonfinite agrees, and
 * nf_from_f32 writes what the single-value encoders give. */
START_TEST(test_f8_bulk)
{
    unsigned char all[257];
    float f[256];
    for (unsigned b = 0; b < 256; b++)
        all[b + 1] = (unsigned char)b; /* misaligned on purpose */
    ck_assert_uint_eq(nf_to_f32(all + 1, NF_F8_E4M3, f, 256), 2);
    ck_assert_uint_eq(nf_count_nonfinite(all + 1, NF_F8_E4M3, 256), 2);
    unsigned char back[256];
    nf_from_f32(f, NF_F8_E4M3, back, 256);
    for (unsigned b = 0; b < 256; b++)
        if ((b & 0x7F) != 0x7F)
            ck_assert_uint_eq(back[b], b);
    ck_assert_uint_eq(nf_to_f32(all + 1, NF_F8_E5M2, f, 256), 8);
    ck_assert_uint_eq(nf_count_nonfinite(all + 1, NF_F8_E5M2, 256), 8);
    nf_from_f32(f, NF_F8_E5M2, back, 256);
    for (unsigned b = 0; b < 256; b++)
        if ((b & 0x7F) < 0x7D)
            ck_assert_uint_eq(back[b], b);
    ck_assert(nf_dtype_is_float(NF_F8_E4M3) && nf_dtype_is_float(NF_F8_E5M2));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dtype");
    TCase *tc = tcase_create("convert");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_f16_decode_all);
    tcase_add_test(tc, test_f16_roundtrip_all);
    tcase_add_test(tc, test_f16_rounding);
    tcase_add_test(tc, test_bf16_all);
    tcase_add_test(tc, test_bf16_rounding);
    tcase_add_test(tc, test_bulk_and_nonfinite);
    tcase_add_test(tc, test_count_nonfinite);
    tcase_add_test(tc, test_f8_decode_all);
    tcase_add_test(tc, test_f8_encode);
    tcase_add_test(tc, test_f8_bulk);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
