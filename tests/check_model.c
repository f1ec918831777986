/* Checkpoint reading: validation of every header field, shards and index; the model
 * fingerprint; the program's size parser (host/size.c). The writer has its own suite,
 * tests/check_writer.c. */
#include "io/model.h"
#include "core/util.h"
#include "testutil.h"
#include "../host/size.h"

static char *dir;

static void setup(void) { dir = tu_tmpdir(); }
static void teardown(void) { tu_rmdir(dir); }

/* 2x3 F32 "a", 4 BF16 "b", 1 I64 "c": 24 + 8 + 8 = 40 bytes */
static const char *good_header =
    "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"c\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[32,40]}}";

static unsigned char data40[40];

START_TEST(test_read_good)
{
    for (int i = 0; i < 40; i++)
        data40[i] = (unsigned char)i;
    char *p = tu_path(dir, "m.safetensors");
    ck_assert_int_eq(tu_write_st(p, good_header, data40, 40), 0);
    nf_model *m = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_model_open(p, &m, &err), NF_OK);
    ck_assert_uint_eq(nf_model_tensor_count(m), 3);
    const nf_tensor *a = nf_model_tensor(m, "a");
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(a->dtype, NF_F32);
    ck_assert_int_eq(a->ndim, 2);
    ck_assert(a->shape[0] == 2 && a->shape[1] == 3 && a->numel == 6 && a->nbytes == 24);
    ck_assert_int_eq(nf_model_tensor(m, "c")->data[0], 32);
    ck_assert_str_eq(nf_model_metadata_get(m, "note"), "x");
    ck_assert_ptr_null(nf_model_tensor(m, "zz"));
    nf_model_close(m);
    free(p);
}
END_TEST

typedef struct bad_case {
    const char *what;
    const char *header;   /* NULL: raw bytes below */
    size_t dlen;          /* data bytes after the header */
    int code;
    const char *needle;   /* must appear in the message */
} bad_case;

static const bad_case bad[] = {
    {"not json", "{\"a\":", 0, NF_E_FORMAT, "invalid JSON"},
    {"not an object", "[1,2]", 0, NF_E_FORMAT, "not a JSON object"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     NF_E_FORMAT, "unknown dtype"},
    {"negative shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
     NF_E_FORMAT, "non-negative"},
    {"shape overflow",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
     NF_E_FORMAT, "overflows"},
    {"byte size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     NF_E_FORMAT, "shape x dtype"},
    {"offsets past end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
     NF_E_FORMAT, "past the end"},
    {"overlap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, NF_E_FORMAT, "overlaps"},
    {"gap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     12, NF_E_FORMAT, "gap"},
    {"trailing bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 9,
     NF_E_FORMAT, "trailing"},
    {"reversed offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
     NF_E_FORMAT, "reversed"},
    {"missing field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, NF_E_FORMAT,
     "data_offsets"},
    {"duplicate name",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, NF_E_FORMAT, "duplicate"},
    {"metadata not strings", "{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
     4, NF_E_FORMAT, "__metadata__"},
    {"float offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 4,
     NF_E_FORMAT, "data_offsets"},
    {"no tensors", "{\"__metadata__\":{}}", 0, NF_E_FORMAT, "no tensors"},
    {"too many dims",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
     NF_E_FORMAT, "dimensions"},
};

START_TEST(test_bad_headers)
{
    const bad_case *c = &bad[_i];
    char *p = tu_path(dir, "bad.safetensors");
    unsigned char zeros[64] = {0};
    ck_assert_int_eq(tu_write_st(p, c->header, zeros, c->dlen), 0);
    nf_model *m = NULL;
    nf_error err = {0};
    int rc = nf_model_open(p, &m, &err);
    ck_assert_msg(rc == c->code, "%s: status %d (%s)", c->what, rc, err.msg);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err.msg, c->needle) != NULL, "%s: message \"%s\" lacks \"%s\"",
                  c->what, err.msg, c->needle);
    ck_assert_msg(strstr(err.msg, p) != NULL, "%s: message does not name the file", c->what);
    free(p);
}
END_TEST

START_TEST(test_bad_lengths)
{
    char *p = tu_path(dir, "len.safetensors");
    nf_model *m = NULL;
    nf_error err = {0};
    /* shorter than the length field */
    ck_assert_int_eq(tu_write_file(p, "\x05\x00\x00", 3), 0);
    ck_assert_int_eq(nf_model_open(p, &m, &err), NF_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "truncated"));
    /* header length 0 */
    nf_error_clear(&err);
    unsigned char z[16] = {0};
    ck_assert_int_eq(tu_write_file(p, z, 16), 0);
    ck_assert_int_eq(nf_model_open(p, &m, &err), NF_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "length is 0"));
    /* header length past the end of the file */
    nf_error_clear(&err);
    unsigned char l[12] = {0xff, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
    ck_assert_int_eq(tu_write_file(p, l, 12), 0);
    ck_assert_int_eq(nf_model_open(p, &m, &err), NF_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "past the end"));
    /* header length over 100 MB */
    nf_error_clear(&err);
    unsigned char h[12] = {0, 0, 0, 0x10, 0, 0, 0, 0, '{', '}', ' ', ' '};
    ck_assert_int_eq(tu_write_file(p, h, 12), 0);
    ck_assert_int_eq(nf_model_open(p, &m, &err), NF_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "100 MB"));
    /* missing file and directory without a model */
    nf_error_clear(&err);
    ck_assert_int_eq(nf_model_open("/nonexistent/x.safetensors", &m, &err), NF_E_IO);
    nf_error_clear(&err);
    ck_assert_int_eq(nf_model_open(dir, &m, &err), NF_E_IO);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.safetensors"));
    free(p);
}
END_TEST

static void write_shards(const char *d, const char *index)
{
    char *s1 = tu_path(d, "s1.safetensors"), *s2 = tu_path(d, "s2.safetensors");
    char *ix = tu_path(d, "model.safetensors.index.json");
    float v[2] = {1, 2};
    tu_write_st(s1, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", v, 4);
    tu_write_st(s2, "{\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", v + 1, 4);
    tu_write_file(ix, index, strlen(index));
    /* a shard holding two tensors, for indexes that list only one of them */
    char *s3 = tu_path(d, "s3.safetensors");
    float pq[2] = {3, 4};
    tu_write_st(s3, "{\"p\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"q\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                pq, 8);
    free(s3);
    free(s1);
    free(s2);
    free(ix);
}

START_TEST(test_sharded_dir)
{
    write_shards(dir, "{\"metadata\":{},\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s2.safetensors\"}}");
    nf_model *m = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_model_open(dir, &m, &err), NF_OK);
    ck_assert_uint_eq(nf_model_shard_count(m), 2);
    float y;
    memcpy(&y, nf_model_tensor(m, "y")->data, 4);
    ck_assert(y == 2.0f);
    nf_model_close(m);

    const char *bad_idx[][2] = {
        {"{\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s9.safetensors\"}}", "missing"},
        {"{\"weight_map\":{\"x\":\"s1.safetensors\",\"y\":\"s1.safetensors\"}}", "does not contain"},
        {"{\"weight_map\":{\"x\":\"s1.safetensors\",\"p\":\"s3.safetensors\"}}", "not listed"},
        {"{\"weight_map\":{\"x\":\"../s1.safetensors\",\"y\":\"s2.safetensors\"}}", "invalid shard"},
        {"{\"weight_map\":{}}", "empty"},
        {"{\"metadata\":{}}", "weight_map"},
        {"{\"weight_map\":", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof bad_idx / sizeof bad_idx[0]; i++) {
        write_shards(dir, bad_idx[i][0]);
        nf_error_clear(&err);
        m = NULL;
        int rc = nf_model_open(dir, &m, &err);
        ck_assert_msg(rc != NF_OK && m == NULL, "index %zu accepted", i);
        ck_assert_msg(strstr(err.msg, bad_idx[i][1]) != NULL, "index %zu: \"%s\"", i, err.msg);
    }
}
END_TEST

START_TEST(test_parse_size)
{
    uint64_t v;
    ck_assert_int_eq(cli_parse_size("2GB", &v), 0);
    ck_assert_uint_eq(v, 2000000000ull);
    ck_assert_int_eq(cli_parse_size("1GiB", &v), 0);
    ck_assert_uint_eq(v, 1073741824ull);
    ck_assert_int_eq(cli_parse_size("500mb", &v), 0);
    ck_assert_uint_eq(v, 500000000ull);
    ck_assert_int_eq(cli_parse_size("123", &v), 0);
    ck_assert_uint_eq(v, 123);
    ck_assert_int_ne(cli_parse_size("2XB", &v), 0);
    ck_assert_int_ne(cli_parse_size("-1GB", &v), 0);
    ck_assert_int_ne(cli_parse_size("", &v), 0);
}
END_TEST

START_TEST(test_fingerprint)
{
    char *p = tu_path(dir, "a.safetensors"), *q = tu_path(dir, "b.safetensors");
    unsigned char d1[40] = {0}, d2[40] = {0};
    d2[3] = 1;
    tu_write_st(p, good_header, d1, 40);
    tu_write_st(q, good_header, d2, 40);
    nf_model *a = NULL, *b = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_model_open(p, &a, &err), NF_OK);
    ck_assert_int_eq(nf_model_open(q, &b, &err), NF_OK);
    ck_assert_uint_ne(nf_model_fingerprint(a), nf_model_fingerprint(b));
    ck_assert_uint_eq(nf_model_fingerprint(a), nf_model_fingerprint(a));
    nf_model_close(a);
    nf_model_close(b);
    free(p);
    free(q);
}
END_TEST

/* The fingerprint covers every byte: a bit flipped anywhere in a tensor of 4,000 bytes (the
 * old fingerprint read only the first and last 64), and a byte moved from one tensor to the
 * next, change it; the per-tensor form the step computes during its pass gives the same
 * value; a word of zeros more or less changes nf_hash64. */
START_TEST(test_fingerprint_all_bytes)
{
    enum { N = 1000 };
    char hdr[256];
    snprintf(hdr, sizeof hdr,
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
             "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[%d,%d]}}",
             N, 4 * N, 4 * N, 4 * N + 8);
    float *d = calloc(N + 2, sizeof *d);
    tu_fill(d, N + 2, 7, 1.0);
    char *p = tu_path(dir, "fp.safetensors");
    tu_write_st(p, hdr, d, (N + 2) * 4);
    nf_model *m = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_model_open(p, &m, &err), NF_OK);
    uint64_t ref = nf_model_fingerprint(m);
    uint64_t th[2];
    for (size_t i = 0; i < 2; i++)
        th[i] = nf_tensor_hash(&m->tensors[i]);
    ck_assert_uint_eq(nf_model_fingerprint_of(m, th), ref);
    nf_model_close(m);
    unsigned char *bytes = (unsigned char *)d;
    int changed = 0, tried = 0;
    for (size_t at = 0; at < (N + 2) * 4; at += 13) {
        int bit = (int)(at % 8);
        bytes[at] ^= (unsigned char)(1u << bit);
        tu_write_st(p, hdr, d, (N + 2) * 4);
        ck_assert_int_eq(nf_model_open(p, &m, &err), NF_OK);
        changed += nf_model_fingerprint(m) != ref;
        tried++;
        nf_model_close(m);
        bytes[at] ^= (unsigned char)(1u << bit);
    }
    ck_assert_int_eq(changed, tried);
    /* the same bytes, split differently between the two tensors */
    snprintf(hdr, sizeof hdr,
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
             "\"v\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[%d,%d]}}",
             N - 1, 4 * N - 4, 4 * N - 4, 4 * N + 8);
    tu_write_st(p, hdr, d, (N + 2) * 4);
    ck_assert_int_eq(nf_model_open(p, &m, &err), NF_OK);
    ck_assert_uint_ne(nf_model_fingerprint(m), ref);
    nf_model_close(m);
    unsigned char z[64] = {0};
    for (size_t n = 0; n < 56; n++) {
        ck_assert_uint_ne(nf_hash64(z, n, 0), nf_hash64(z, n + 8, 0));
        ck_assert_uint_ne(nf_hash64(z, n, 0), nf_hash64(z, n + 1, 0));
        ck_assert_uint_ne(nf_hash64(z, n, 0), nf_hash64(z, n, 1));
    }
    free(d);
    free(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("io");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_read_good);
    tcase_add_loop_test(tc, test_bad_headers, 0, (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(tc, test_bad_lengths);
    tcase_add_test(tc, test_sharded_dir);
    tcase_add_test(tc, test_parse_size);
    tcase_add_test(tc, test_fingerprint);
    tcase_add_test(tc, test_fingerprint_all_bytes);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
