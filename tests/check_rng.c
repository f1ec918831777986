/* The counter-based generator against values computed from the spec's formulas by an
 * independent implementation (Python integers and math, see the comments). */
#include "linalg/rng.h"
#include "testutil.h"

static float bits_f(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

START_TEST(test_mix64)
{
    ck_assert_uint_eq(nf_mix64(0), 0xe220a8397b1dcdafull);
    ck_assert_uint_eq(nf_mix64(1), 0x910a2dec89025cc1ull);
    ck_assert_uint_eq(nf_mix64(0xFFFFFFFFFFFFFFFFull), 0xe4d971771b652c20ull);
    ck_assert_uint_eq(nf_mix64(123456789), 0x223c74d93deb7679ull);
}
END_TEST

START_TEST(test_fnv)
{
    ck_assert_uint_eq(nf_fnv1a64("", 0), 0xcbf29ce484222325ull);
    ck_assert_uint_eq(nf_fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
    const char *n = "vision_model.encoder.layers.0.self_attn.q_proj.weight";
    ck_assert_uint_eq(nf_fnv1a64(n, strlen(n)), 0x6d10c732bc00dcdaull);
}
END_TEST

START_TEST(test_lora_init_values)
{
    /* seed 0, step 2, tensor "layers.0.mlp.fc1.weight" */
    uint64_t key = nf_rng_key(0, 2, "layers.0.mlp.fc1.weight");
    ck_assert_uint_eq(key, 0xbcf863c007154d1bull);
    float a[1001];
    nf_rng_normal(key, 0.02, a, 1001);
    ck_assert(a[0] == bits_f(0x3b4e33fc));
    ck_assert(a[1] == bits_f(0x3cdff7f1));
    ck_assert(a[2] == bits_f(0x3b151f5f));
    ck_assert(a[1000] == bits_f(0xbb2f3d23));
}
END_TEST

START_TEST(test_distribution)
{
    /* mean 0, std 0.02 within sampling error; draws independent of how they are split */
    size_t n = 200000;
    float *a = malloc(n * sizeof *a);
    nf_rng_normal(nf_rng_key(7, 1, "x"), 0.02, a, n);
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        s += a[i];
        s2 += (double)a[i] * a[i];
    }
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
    ck_assert_msg(fabs(mean) < 4 * 0.02 / sqrt((double)n), "mean %g", mean);
    ck_assert_msg(fabs(sd - 0.02) < 0.0005, "std %g", sd);
    for (size_t i = 0; i < n; i += 9973)
        ck_assert(a[i] == (float)(0.02 * nf_rng_normal_at(nf_rng_key(7, 1, "x"), i)) ||
                  fabs(a[i] - 0.02 * nf_rng_normal_at(nf_rng_key(7, 1, "x"), i)) < 1e-9);
    free(a);
    /* other seeds, steps and names give other matrices */
    ck_assert_uint_ne(nf_rng_key(0, 1, "a"), nf_rng_key(1, 1, "a"));
    ck_assert_uint_ne(nf_rng_key(0, 1, "a"), nf_rng_key(0, 2, "a"));
    ck_assert_uint_ne(nf_rng_key(0, 1, "a"), nf_rng_key(0, 1, "b"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("spec");
    tcase_add_test(tc, test_mix64);
    tcase_add_test(tc, test_fnv);
    tcase_add_test(tc, test_lora_init_values);
    tcase_add_test(tc, test_distribution);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
