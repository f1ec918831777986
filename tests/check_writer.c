/* Checkpoint writing: single-file and sharded layouts, out-of-order puts converted from
 * float32, metadata set before commit, nothing visible before the commit, nothing left after an
 * abort, and what an existing output may be replaced by (`force`). */
#include "io/model.h"
#include "core/util.h"
#include "io/writer.h"
#include "testutil.h"

static char *dir;

static void setup(void) { dir = tu_tmpdir(); }
static void teardown(void) { tu_rmdir(dir); }

static nf_out_spec spec(const char *name, nf_dtype dt, int64_t r, int64_t c)
{
    nf_out_spec s = {name, dt, c ? 2 : 1, {r, c}, (uint64_t)(r * (c ? c : 1)) * nf_dtype_size(dt)};
    return s;
}

START_TEST(test_writer_single_and_sharded)
{
    nf_out_spec t[3] = {spec("w1", NF_F32, 4, 4), spec("w2", NF_BF16, 4, 4),
                        spec("w3", NF_F16, 3, 0)};
    nf_kv meta[1] = {{"format", "pt"}};
    char *cfgdir = tu_path(dir, "src");
    mkdir(cfgdir, 0755);
    char *cfg = tu_path(cfgdir, "config.json");
    tu_write_file(cfg, "{}", 2);
    char *weights = tu_path(cfgdir, "pytorch_model.bin");
    tu_write_file(weights, "x", 1);
    for (int sharded = 0; sharded < 2; sharded++) {
        char *out = tu_path(dir, sharded ? "outdir" : "out.safetensors");
        nf_writer_args a = {out, sharded, t, 3, meta, 1, sharded ? 40 : 0,
                            sharded ? cfgdir : NULL, 0, NULL, NULL, NULL, NULL};
        nf_writer *w = NULL;
        nf_error err = {0};
        ck_assert_int_eq(nf_writer_open(&a, &w, &err), NF_OK);
        float v[16];
        for (int i = 0; i < 16; i++)
            v[i] = (float)i + 0.5f;
        /* out of order, from float32 */
        ck_assert_int_eq(nf_writer_put_f32(w, 2, v, &err), NF_OK);
        ck_assert_int_eq(nf_writer_put_f32(w, 0, v, &err), NF_OK);
        ck_assert_int_eq(nf_writer_put_f32(w, 1, v, &err), NF_OK);
        ck_assert(!nf_exists(out)); /* nothing visible before commit */
        nf_kv meta2[2] = {{"format", "pt"}, {"nufilt.step", "7"}};
        ck_assert_int_eq(nf_writer_set_meta(w, meta2, 2, &err), NF_OK);
        ck_assert_int_eq(nf_writer_commit(w, &err), NF_OK);
        nf_model *m = NULL;
        ck_assert_msg(nf_model_open(out, &m, &err) == NF_OK, "%s", err.msg);
        ck_assert_str_eq(nf_model_metadata_get(m, "nufilt.step"), "7");
        ck_assert_uint_eq(nf_model_shard_count(m), sharded ? 2 : 1);
        /* every element, in each dtype: the values are exact in BF16 and F16, so the
         * expected bits are the float's upper half and IEEE half's encoding */
        const nf_tensor *w1 = nf_model_tensor(m, "w1");
        ck_assert_int_eq(w1->dtype, NF_F32);
        ck_assert_int_eq(memcmp(w1->data, v, sizeof v), 0);
        const nf_tensor *w2 = nf_model_tensor(m, "w2");
        ck_assert_int_eq(w2->dtype, NF_BF16);
        for (int k = 0; k < 16; k++) {
            uint16_t b;
            uint32_t f;
            memcpy(&b, w2->data + 2 * k, 2);
            memcpy(&f, &v[k], 4);
            ck_assert_uint_eq(b, f >> 16);
        }
        uint16_t b5;
        memcpy(&b5, w2->data + 2 * 5, 2);
        ck_assert(b5 == 0x40B0); /* 5.5 */
        const nf_tensor *w3 = nf_model_tensor(m, "w3");
        ck_assert_int_eq(w3->ndim, 1);
        ck_assert_int_eq(w3->dtype, NF_F16);
        const uint16_t half[3] = {0x3800, 0x3E00, 0x4100}; /* 0.5, 1.5, 2.5 */
        ck_assert_int_eq(memcmp(w3->data, half, sizeof half), 0);
        if (sharded) {
            char *c2 = tu_path(out, "config.json"), *bin = tu_path(out, "pytorch_model.bin");
            ck_assert(nf_exists(c2));    /* non-weight files are copied */
            ck_assert(!nf_exists(bin));  /* the base's weights in other formats are not */
            free(c2);
            free(bin);
        }
        nf_model_close(m);
        /* an existing output is refused without force */
        nf_error_clear(&err);
        w = NULL;
        ck_assert_int_eq(nf_writer_open(&a, &w, &err), NF_E_EXISTS);
        ck_assert_ptr_nonnull(strstr(err.msg, "`force`"));
        free(out);
    }
    free(cfg);
    free(weights);
    free(cfgdir);
}
END_TEST

static int count_entries(const char *d)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", d);
    FILE *f = popen(cmd, "r");
    int n = -1;
    if (f) {
        if (fscanf(f, "%d", &n) != 1)
            n = -1;
        pclose(f);
    }
    return n;
}

START_TEST(test_writer_abort_leaves_nothing)
{
    nf_out_spec t[1] = {spec("w", NF_F32, 8, 8)};
    for (int as_dir = 0; as_dir < 2; as_dir++) {
        char *out = tu_path(dir, as_dir ? "o" : "o.safetensors");
        nf_writer_args a = {out, as_dir, t, 1, NULL, 0, 0, NULL, 0, NULL, NULL, NULL, NULL};
        nf_writer *w = NULL;
        nf_error err = {0};
        ck_assert_int_eq(nf_writer_open(&a, &w, &err), NF_OK);
        ck_assert_int_eq(count_entries(dir), 1); /* the hidden temporary */
        nf_writer_abort(w);
        ck_assert_int_eq(count_entries(dir), 0);
        free(out);
    }
}
END_TEST

START_TEST(test_writer_force_replaces)
{
    nf_out_spec t[1] = {spec("w", NF_F32, 1, 1)};
    char *out = tu_path(dir, "f.safetensors");
    /* not a safetensors file: --force does not replace it, and it is left as it was */
    tu_write_file(out, "old file", 8);
    nf_writer_args a = {out, 0, t, 1, NULL, 0, 0, NULL, 1, NULL, NULL, NULL, NULL};
    nf_writer *w = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_writer_open(&a, &w, &err), NF_E_EXISTS);
    ck_assert_ptr_nonnull(strstr(err.msg, "not a safetensors file"));
    ck_assert_int_eq(count_entries(dir), 1);
    /* an older output is */
    float two = 2;
    tu_write_st(out, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]}}", &two, 4);
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(nf_writer_open(&a, &w, &err), NF_OK);
    float one = 1;
    ck_assert_int_eq(nf_writer_put_f32(w, 0, &one, &err), NF_OK);
    ck_assert_int_eq(nf_writer_commit(w, &err), NF_OK);
    nf_model *m = NULL;
    ck_assert_int_eq(nf_model_open(out, &m, &err), NF_OK);
    nf_model_close(m);
    free(out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("writer");
    TCase *tc = tcase_create("writer");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_writer_single_and_sharded);
    tcase_add_test(tc, test_writer_abort_leaves_nothing);
    tcase_add_test(tc, test_writer_force_replaces);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
