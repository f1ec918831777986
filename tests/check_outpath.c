/* The output path rules (src/io/outpath.c) called directly, and through the library's nf_step
 * and nf_merge: what is refused, with which status, and that a refusal leaves the files as
 * they were. Expected outcomes are the rules of docs/security.md, written here by hand. */
#include <dirent.h>
#include <fcntl.h>

#include "io/outpath.h"
#include "nufilt.h"
#include "testutil.h"

static char *dir;
static void setup(void) { dir = tu_tmpdir(); }
static void teardown(void) { tu_rmdir(dir); }

static const char ST_HEADER[] =
    "{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";

static char *model_file(const char *name, float v)
{
    char *p = tu_path(dir, name);
    float x[4] = {v, v + 1, v + 2, v + 3};
    ck_assert_int_eq(tu_write_st(p, ST_HEADER, x, sizeof x), 0);
    return p;
}

static int check1(const char *input, const char *target, nf_out_kind kind, int force,
                  const char *base_dir, nf_error *err)
{
    nf_out_input in[1] = {{input, "the base model"}};
    nf_out_target tg[1] = {{target, "--out", kind}};
    nf_outpath_args a = {in, 1, tg, 1, base_dir, force};
    memset(err, 0, sizeof *err);
    return nf_outpath_check(&a, err);
}

START_TEST(test_input_identity)
{
    nf_error err;
    char *base = model_file("base.safetensors", 1);
    /* the same file by another spelling, a symbolic link, a hard link */
    char *spelled = tu_path(dir, "x/../base.safetensors");
    char *x = tu_path(dir, "x");
    ck_assert_int_eq(mkdir(x, 0755), 0);
    free(x);
    ck_assert_int_eq(check1(base, spelled, NF_OUT_FILE, 1, NULL, &err), NF_E_ARG);
    ck_assert_ptr_nonnull(strstr(err.msg, "the base model"));
    char *sym = tu_path(dir, "sym.safetensors");
    ck_assert_int_eq(symlink("base.safetensors", sym), 0);
    ck_assert_int_eq(check1(base, sym, NF_OUT_FILE, 1, NULL, &err), NF_E_ARG);
    char *hard = tu_path(dir, "hard.safetensors");
    ck_assert_int_eq(link(base, hard), 0);
    ck_assert_int_eq(check1(base, hard, NF_OUT_FILE, 1, NULL, &err), NF_E_ARG);
    /* another file: fine (absent), or an older output with --force */
    char *other = tu_path(dir, "other.safetensors");
    ck_assert_int_eq(check1(base, other, NF_OUT_FILE, 0, NULL, &err), NF_OK);
    free(model_file("other.safetensors", 5));
    ck_assert_int_eq(check1(base, other, NF_OUT_FILE, 0, NULL, &err), NF_E_EXISTS);
    ck_assert_int_eq(check1(base, other, NF_OUT_FILE, 1, NULL, &err), NF_OK);
    free(base);
    free(spelled);
    free(sym);
    free(hard);
    free(other);
}
END_TEST

START_TEST(test_inside_and_holding)
{
    nf_error err;
    char *bdir = tu_path(dir, "base");
    ck_assert_int_eq(mkdir(bdir, 0755), 0);
    free(model_file("base/model.safetensors", 1));
    char *in = tu_path(dir, "base/merged");
    ck_assert_int_eq(check1(bdir, in, NF_OUT_DIR, 1, bdir, &err), NF_E_ARG);
    ck_assert_ptr_nonnull(strstr(err.msg, "inside"));
    char *deep = tu_path(dir, "base/a/b/c.safetensors"); /* under directories still absent */
    ck_assert_int_eq(check1(bdir, deep, NF_OUT_FILE, 1, bdir, &err), NF_E_ARG);
    ck_assert_int_eq(check1(bdir, dir, NF_OUT_DIR, 1, bdir, &err), NF_E_ARG);
    ck_assert_ptr_nonnull(strstr(err.msg, "holds"));
    /* the --save-steps directory may hold an input; not lie inside one */
    nf_out_input ins[1] = {{bdir, "the base model"}};
    nf_out_target tg[1] = {{dir, "--save-steps", NF_OUT_STEPS_DIR}};
    nf_outpath_args a = {ins, 1, tg, 1, bdir, 0};
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(nf_outpath_check(&a, &err), NF_OK);
    tg[0].path = in;
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(nf_outpath_check(&a, &err), NF_E_ARG);
    free(bdir);
    free(in);
    free(deep);
}
END_TEST

START_TEST(test_directory_kinds)
{
    nf_error err;
    char *bdir = tu_path(dir, "base");
    ck_assert_int_eq(mkdir(bdir, 0755), 0);
    free(model_file("base/model.safetensors", 1));
    char *cfg = tu_path(dir, "base/config.json");
    tu_write_file(cfg, "{}", 2);
    char *out = tu_path(dir, "out");
    ck_assert_int_eq(mkdir(out, 0755), 0);
    free(model_file("out/model-00001-of-00002.safetensors", 2));
    char *ocfg = tu_path(dir, "out/config.json");
    tu_write_file(ocfg, "{}", 2);
    char *readme = tu_path(dir, "out/README.md");
    tu_write_file(readme, "# m\n", 4);
    ck_assert_int_eq(nf_outpath_replaceable(out, "--out", NF_OUT_DIR, bdir, 1, &err), NF_OK);
    ck_assert_int_eq(nf_outpath_replaceable(out, "--out", NF_OUT_DIR, bdir, 0, &err),
                     NF_E_EXISTS);
    /* config.json is the base's: without a base directory it is not nufilt's */
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(nf_outpath_replaceable(out, "--out", NF_OUT_DIR, NULL, 1, &err),
                     NF_E_EXISTS);
    ck_assert_ptr_nonnull(strstr(err.msg, "config.json"));
    /* a subfolder the base has too is fine, one it lacks is not */
    char *sub = tu_path(dir, "out/1_Pooling"), *bsub = tu_path(dir, "base/1_Pooling");
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(nf_outpath_replaceable(out, "--out", NF_OUT_DIR, bdir, 1, &err),
                     NF_E_EXISTS);
    ck_assert_int_eq(mkdir(bsub, 0755), 0);
    ck_assert_int_eq(nf_outpath_replaceable(out, "--out", NF_OUT_DIR, bdir, 1, &err), NF_OK);
    /* a .git, even if the base has one */
    char *git = tu_path(dir, "out/.git"), *bgit = tu_path(dir, "base/.git");
    ck_assert_int_eq(mkdir(git, 0755), 0);
    ck_assert_int_eq(mkdir(bgit, 0755), 0);
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(nf_outpath_replaceable(out, "--out", NF_OUT_DIR, bdir, 1, &err),
                     NF_E_EXISTS);
    ck_assert_ptr_nonnull(strstr(err.msg, ".git"));
    /* the kinds of the other targets */
    char *txt = tu_path(dir, "notes.txt");
    tu_write_file(txt, "hello", 5);
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(nf_outpath_replaceable(txt, "--report", NF_OUT_REPORT, NULL, 1, &err),
                     NF_E_EXISTS);
    memset(&err, 0, sizeof err);
    ck_assert_int_eq(nf_outpath_replaceable(txt, "--out", NF_OUT_FILE, NULL, 1, &err),
                     NF_E_EXISTS);
    char *rep = tu_path(dir, "r.json");
    tu_write_file(rep, "\n {\"steps\": []}", 15);
    ck_assert_int_eq(nf_outpath_replaceable(rep, "--report", NF_OUT_REPORT, NULL, 1, &err),
                     NF_OK);
    free(bdir);
    free(cfg);
    free(out);
    free(ocfg);
    free(readme);
    free(sub);
    free(bsub);
    free(git);
    free(bgit);
    free(txt);
    free(rep);
}
END_TEST

/* The library refuses before any work: no output, no steps directory, no temporaries. */
START_TEST(test_library_refuses_first)
{
    char *base = model_file("base.safetensors", 1);
    char *t1 = model_file("t1.safetensors", 2), *t2 = model_file("t2.safetensors", 3);
    char *mo = tu_path(dir, "mo");
    const char *tasks[2] = {t1, t2};
    nf_options o;
    nf_options_init(&o);
    o.method = NF_METHOD_TA;
    o.force = 1;
    nf_error err = {0};
    ck_assert_int_eq(nf_merge(base, tasks, 2, mo, mo, &o, &err), NF_E_ARG);
    ck_assert_ptr_nonnull(strstr(err.msg, "`save_steps`"));
    memset(&err, 0, sizeof err);
    o.report_path = base;
    ck_assert_int_eq(nf_step(base, t1, NULL, mo, &o, &err), NF_E_ARG);
    ck_assert_ptr_nonnull(strstr(err.msg, "`report_path`"));
    memset(&err, 0, sizeof err);
    o.report_path = NULL;
    ck_assert_int_eq(nf_step(base, t1, NULL, t1, &o, &err), NF_E_ARG);
    /* the directory holds the three models, nothing else (no mo, no temporary) */
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    ck_assert_int_eq(n, 3);
    free(base);
    free(t1);
    free(t2);
    free(mo);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("outpath");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_input_identity);
    tcase_add_test(tc, test_inside_and_holding);
    tcase_add_test(tc, test_directory_kinds);
    tcase_add_test(tc, test_library_refuses_first);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
