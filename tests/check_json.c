/* The JSON reader: accepts RFC 8259 documents, refuses everything else with a message. */
#include "io/json.h"
#include "testutil.h"

static nf_json *parse(const char *s, char *err)
{
    return nf_json_parse(s, strlen(s), err, 200);
}

START_TEST(test_valid_document)
{
    char err[200];
    nf_json *j = parse(" {\"a\": [1, -2, 3.5e2, true, false, null], \"b\": {\"c\": \"x\\u00e9\\n\"}} ",
                       err);
    ck_assert_msg(j != NULL, "%s", err);
    ck_assert_int_eq(j->type, NF_JSON_OBJECT);
    const nf_json *a = nf_json_get(j, "a");
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(a->n, 6);
    ck_assert(a->items[0].is_int && a->items[0].ival == 1);
    ck_assert(a->items[1].is_int && a->items[1].ival == -2);
    ck_assert(!a->items[2].is_int && a->items[2].num == 350.0);
    ck_assert_int_eq(a->items[3].type, NF_JSON_BOOL);
    ck_assert_int_eq(a->items[3].boolean, 1);
    ck_assert_int_eq(a->items[5].type, NF_JSON_NULL);
    const nf_json *c = nf_json_get(nf_json_get(j, "b"), "c");
    ck_assert_str_eq(c->str, "x\xc3\xa9\n");
    nf_json_free(j);
}
END_TEST

START_TEST(test_integers)
{
    char err[200];
    nf_json *j = parse("[9223372036854775807, -9223372036854775808, 9223372036854775808, 0]", err);
    ck_assert_ptr_nonnull(j);
    ck_assert(j->items[0].is_int && j->items[0].ival == INT64_MAX);
    ck_assert(j->items[1].is_int && j->items[1].ival == INT64_MIN);
    ck_assert(!j->items[2].is_int); /* does not fit: a number, but not an integer */
    ck_assert(j->items[3].is_int && j->items[3].ival == 0);
    nf_json_free(j);
}
END_TEST

START_TEST(test_surrogates)
{
    char err[200];
    nf_json *j = parse("\"\\ud83d\\ude00\"", err);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(j->str, "\xf0\x9f\x98\x80");
    nf_json_free(j);
    ck_assert_ptr_null(parse("\"\\ud83d\"", err));
    ck_assert_ptr_null(parse("\"\\ude00\"", err));
}
END_TEST

static const char *const invalid[] = {
    "",            "{",           "[1,]",          "{\"a\":1,}",     "{\"a\" 1}",
    "[01]",        "[1.]",        "[.5]",          "[1e]",           "[-]",
    "tru",         "nul",         "\"abc",         "\"a\\x\"",       "\"\\u12g4\"",
    "[1] [2]",     "{1:2}",       "'a'",           "[\"\x01\"]",     "\"\xff\"",
    "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "{\"a\":1,\"a\":2}", "[1 2]", "NaN",
};

START_TEST(test_invalid)
{
    char err[200];
    const char *s = invalid[_i];
    err[0] = 0;
    nf_json *j = parse(s, err);
    ck_assert_msg(j == NULL, "accepted invalid JSON #%d", _i);
    ck_assert_msg(err[0] != 0, "no message for invalid JSON #%d", _i);
}
END_TEST

START_TEST(test_duplicate_named)
{
    char err[200];
    ck_assert_ptr_null(parse("{\"x\":{\"dup\":1,\"b\":2,\"dup\":3}}", err));
    ck_assert_ptr_nonnull(strstr(err, "duplicate member name \"dup\""));
}
END_TEST

START_TEST(test_depth_limit)
{
    char err[200];
    size_t n = 100000;
    char *s = malloc(2 * n + 1);
    memset(s, '[', n);
    memset(s + n, ']', n);
    s[2 * n] = 0;
    ck_assert_ptr_null(parse(s, err)); /* refused, not a stack overflow */
    ck_assert_ptr_nonnull(strstr(err, "nesting too deep"));
    free(s);
    /* 64 levels are fine */
    char ok[200];
    memset(ok, '[', 60);
    memset(ok + 60, ']', 60);
    ok[120] = 0;
    nf_json *j = parse(ok, err);
    ck_assert_ptr_nonnull(j);
    nf_json_free(j);
}
END_TEST

START_TEST(test_embedded_nul_flagged)
{
    char err[200];
    nf_json *j = parse("\"a\\u0000b\"", err);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(j->has_nul, 1);
    ck_assert_int_eq(j->len, 3);
    nf_json_free(j);
    ck_assert_ptr_null(parse("{\"a\\u0000\":1}", err)); /* member names cannot hold NUL */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_valid_document);
    tcase_add_test(tc, test_integers);
    tcase_add_test(tc, test_surrogates);
    tcase_add_loop_test(tc, test_invalid, 0, (int)(sizeof invalid / sizeof invalid[0]));
    tcase_add_test(tc, test_duplicate_named);
    tcase_add_test(tc, test_depth_limit);
    tcase_add_test(tc, test_embedded_nul_flagged);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
