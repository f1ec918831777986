/* Tensor selection presets and the continual recipe: defaults, the previous model's metadata,
 * and refused conflicts. */
#include "io/model.h"
#include "core/util.h"
#include "merge/select.h"
#include "merge/options.h"
#include "merge/recipe.h"
#include "methods/method.h"
#include "methods/registry.h"

#include <math.h>
#include <regex.h>
#include "testutil.h"

START_TEST(test_presets)
{
    ck_assert(nf_preset_matches("clip", "vision_model.encoder.layers.0.self_attn.q_proj.weight", 2));
    ck_assert(nf_preset_matches("clip", "encoder.layers.3.mlp.fc1.weight", 2));
    ck_assert(!nf_preset_matches("clip", "encoder.layers.3.mlp.fc2.weight", 2));
    ck_assert(!nf_preset_matches("clip", "encoder.layers.3.self_attn.q_proj.bias", 1));
    ck_assert(nf_preset_matches("t5", "encoder.block.0.layer.0.SelfAttention.q.weight", 2));
    ck_assert(nf_preset_matches("t5", "decoder.block.0.layer.1.EncDecAttention.k.weight", 2));
    ck_assert(nf_preset_matches("t5", "encoder.block.0.layer.1.DenseReluDense.wi.weight", 2));
    ck_assert(nf_preset_matches("llama", "model.layers.0.mlp.down_proj.weight", 2));
    ck_assert(!nf_preset_matches("llama", "model.embed_tokens.weight", 2));
    ck_assert(nf_preset_matches("all-linear", "encoder.layer.0.attention.self.query.weight", 2));
    ck_assert(!nf_preset_matches("all-linear", "embeddings.word_embeddings.weight", 2));
    ck_assert(!nf_preset_matches("all-linear", "lm_head.weight", 2));
    ck_assert(!nf_preset_matches("all-linear", "encoder.layer.0.output.LayerNorm.weight", 1));
}
END_TEST

static void write_named(const char *path, const char *const *names, int n)
{
    char hdr[4096];
    size_t o = 0;
    o += (size_t)snprintf(hdr + o, sizeof hdr - o, "{");
    for (int i = 0; i < n; i++)
        o += (size_t)snprintf(hdr + o, sizeof hdr - o,
                              "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[%d,%d]}",
                              i ? "," : "", names[i], 16 * i, 16 * i + 16);
    snprintf(hdr + o, sizeof hdr - o, "}");
    float z[64] = {0};
    tu_write_st(path, hdr, z, 16 * (size_t)n);
}

START_TEST(test_auto_detection)
{
    char *dir = tu_tmpdir();
    struct {
        const char *names[3];
        const char *want;
    } cases[] = {
        {{"v.layers.0.self_attn.q_proj.weight", "v.layers.0.mlp.fc1.weight", "v.layers.0.mlp.fc2.weight"}, "clip"},
        {{"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight"}, "llama"},
        {{"encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight", "x.weight"}, "t5"},
        {{"encoder.layer.0.attention.self.query.weight", "encoder.layer.0.intermediate.dense.weight", "pooler.dense.weight"}, "all-linear"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *p = tu_path(dir, "m.safetensors");
        write_named(p, cases[i].names, 3);
        nf_model *m;
        nf_error err = {0};
        ck_assert_int_eq(nf_model_open(p, &m, &err), NF_OK);
        const char *res;
        ck_assert_int_eq(nf_preset_resolve(m, "auto", &res, &err), NF_OK);
        ck_assert_str_eq(res, cases[i].want);
        ck_assert_int_eq(nf_preset_resolve(m, "nonsense", &res, &err), NF_E_ARG);
        nf_model_close(m);
        free(p);
    }
    tu_rmdir(dir);
}
END_TEST

/* The one description of the options (merge/options.h): each recipe row's methods are exactly
 * the methods whose nf_method_ops.params has its bit, every bit a method reads has a row, every
 * row is found by its flag and its field, and a ranged row's range is the public table's row
 * of that key. */
START_TEST(test_option_table)
{
    size_t n = 0, nranges = 0, ranged = 0;
    const nf_opt *t = nf_opt_table(&n);
    const nf_option_range *r = nf_option_ranges(&nranges);
    unsigned described = 0, read = 0;
    for (int m = 0; m < NF_METHOD_COUNT; m++)
        read |= nf_method_ops_get(m)->params;
    for (size_t i = 0; i < n; i++) {
        ck_assert_ptr_eq(nf_opt_find(t[i].flag), &t[i]);
        ck_assert_ptr_eq(nf_opt_find(t[i].field), &t[i]);
        const nf_option_range *rg = nf_opt_range(&t[i]);
        if (!t[i].bit) {
            ck_assert_ptr_null(nf_opt_recipe_key(t[i].field));
            continue;
        }
        ck_assert_ptr_eq(nf_opt_recipe_key(t[i].field), &t[i]);
        described |= t[i].bit;
        for (int m = 0; m < NF_METHOD_COUNT; m++) {
            int reads = (nf_method_ops_get(m)->params & t[i].bit) != 0;
            ck_assert_msg(reads == !!(t[i].methods & (1u << m)), "%s / %s", t[i].field,
                          nf_method_get(m)->name);
        }
        if (rg) {
            ck_assert_ptr_eq(rg, &r[ranged++]);
            ck_assert_str_eq(rg->key, t[i].field);
            ck_assert_str_eq(rg->option, t[i].flag);
            ck_assert_uint_eq(rg->methods, t[i].methods);
        }
    }
    ck_assert_uint_eq(ranged, nranges);
    ck_assert_uint_eq(described, read);
    /* the defaults as the table writes them, per method */
    size_t len;
    const char *d = nf_opt_default_text(nf_opt_find("lr"), NF_METHOD_WUDI, &len);
    ck_assert_int_eq(strncmp(d, "1e-5", len), 0);
    d = nf_opt_default_text(nf_opt_find("lr"), NF_METHOD_NUFILT, &len);
    ck_assert_int_eq(strncmp(d, "1e-3", len), 0);
    d = nf_opt_default_text(nf_opt_find("scale"), NF_METHOD_TSVM, &len);
    ck_assert_int_eq(strncmp(d, "1", len), 0);
    char buf[128];
    nf_opt_describe_default(nf_opt_find("scale"), buf, sizeof buf);
    ck_assert_str_eq(buf, "ta 0.3, ties 0.3, magmax 0.5, isoc 1, tsvm 1");
    nf_opt_describe_default(nf_opt_find("null_rank"), buf, sizeof buf);
    ck_assert_str_eq(buf, "128");
}
END_TEST

/* The one table of ranges: every row's methods are exactly the methods that read it (from the
 * methods' own descriptions), and the bounds hold as written. */
START_TEST(test_option_ranges)
{
    size_t n = 0;
    const nf_option_range *r = nf_option_ranges(&n);
    ck_assert_uint_eq(n, 10);
    static const struct {
        const char *key;
        unsigned bit;
    } bits[] = {{"null_rank", NF_P_NULL_RANK}, {"task_rank", NF_P_TASK_RANK},
                {"lora_rank", NF_P_LORA_RANK}, {"lr", NF_P_LR},
                {"iters", NF_P_ITERS},         {"seed", NF_P_SEED},
                {"rank_tol", NF_P_RANK_TOL},   {"scale", NF_P_SCALE},
                {"keep", NF_P_KEEP},           {"alpha", NF_P_ALPHA}};
    for (size_t i = 0; i < n; i++) {
        unsigned bit = 0;
        for (size_t k = 0; k < sizeof bits / sizeof bits[0]; k++)
            if (strcmp(bits[k].key, r[i].key) == 0)
                bit = bits[k].bit;
        ck_assert_msg(bit, "%s", r[i].key);
        for (int m = 0; m < NF_METHOD_COUNT; m++) {
            int reads = (nf_method_ops_get(m)->params & bit) != 0;
            ck_assert_msg(reads == !!(r[i].methods & (1u << m)), "%s / %s", r[i].key,
                          nf_method_get(m)->name);
        }
        ck_assert_ptr_eq(nf_option_range_find(r[i].option), &r[i]);
        ck_assert_ptr_eq(nf_option_range_find(r[i].key), &r[i]);
    }
    ck_assert_ptr_null(nf_option_range_find("threads"));
    const nf_option_range *rank = nf_option_range_find("null-rank");
    ck_assert(nf_option_range_ok(rank, 0) && nf_option_range_ok(rank, 65536));
    ck_assert(!nf_option_range_ok(rank, 65537) && !nf_option_range_ok(rank, -1));
    ck_assert(!nf_option_range_ok(rank, 2.5) && !nf_option_range_ok(rank, NAN));
    const nf_option_range *tol = nf_option_range_find("rank_tol");
    ck_assert(nf_option_range_ok(tol, 0) && !nf_option_range_ok(tol, 1));
    const nf_option_range *keep = nf_option_range_find("keep");
    ck_assert(!nf_option_range_ok(keep, 0) && nf_option_range_ok(keep, 1));
    const nf_option_range *lr = nf_option_range_find("lr");
    ck_assert(nf_option_range_ok(lr, 1e-3) && !nf_option_range_ok(lr, 1e30));
    ck_assert(!nf_option_range_ok(lr, INFINITY));
    const nf_option_range *scale = nf_option_range_find("scale");
    ck_assert(nf_option_range_ok(scale, -2) && !nf_option_range_ok(scale, 1e300));
    char buf[64];
    nf_option_range_describe(tol, buf, sizeof buf);
    ck_assert_str_eq(buf, "a number in [0, 1)");
    nf_option_range_describe(rank, buf, sizeof buf);
    ck_assert_str_eq(buf, "an integer from 0 to 65536");
}
END_TEST

/* The regex check: hostile expressions refused before regcomp, ordinary ones accepted; a
 * refused one costs nothing like what regcomp would spend on it. */
START_TEST(test_regex_check)
{
    static const char *const ok[] = {
        "attn|fc1", "^enc\\.layers\\.[0-9]+\\.(self_attn|mlp)\\..*weight$", "a{1,200}",
        "(ab){3}c{2,}", "[]a{]x", "[[:alpha:]]{2}", "x{", "a{,3}", "(a*)*b", "\\.", "",
    };
    static const struct {
        const char *re, *why;
    } bad[] = {
        {"(((a{1,200}){1,200}){1,200})", "counted repetition of a counted"},
        {"(a{2}){2}", "counted repetition of a counted"},
        {"a{2}{2}", "counted repetition of a counted"},
        {"((a{2})b*){3}", "counted repetition of a counted"},
        {"(a)\\1", "back-reference"},
        {"a{256}", "over 255"},
        {"a{1,1000}", "over 255"},
        {"(abcdefghijklmnopqrstuvwxyz0123456789abcdefghij){255}", "too large"},
        {"[abc", "unterminated"},
    };
    char why[160];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        ck_assert_msg(nf_regex_check(ok[i], why, sizeof why) == 0, "%s: %s", ok[i], why);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = '\0';
        ck_assert_msg(nf_regex_check(bad[i].re, why, sizeof why) == -1, "%s", bad[i].re);
        ck_assert_msg(strstr(why, bad[i].why), "%s: %s", bad[i].re, why);
    }
    char *lng = malloc(NF_REGEX_MAX_LEN + 2);
    memset(lng, 'a', NF_REGEX_MAX_LEN + 1);
    lng[NF_REGEX_MAX_LEN + 1] = '\0';
    ck_assert_int_eq(nf_regex_check(lng, why, sizeof why), -1);
    lng[NF_REGEX_MAX_LEN] = '\0';
    ck_assert_int_eq(nf_regex_check(lng, why, sizeof why), 0);
    free(lng);
    /* nesting within the cap: accepted, and regcomp of the largest accepted form is quick */
    regex_t re;
    ck_assert_int_eq(nf_regex_check("(a|b){255}(c|d){255}(e|f){255}", why, sizeof why), 0);
    ck_assert_int_eq(regcomp(&re, "(a|b){255}(c|d){255}(e|f){255}", REG_EXTENDED | REG_NOSUB),
                     0);
    regfree(&re);
}
END_TEST

/* The recorded metadata, read strictly: a good record of each kind resolves; each rule's
 * violation is refused with NF_E_STATE and a message naming the key. */
START_TEST(test_recorded_strict)
{
    static char n0[] = "enc.layers.0.self_attn.q_proj.weight", n1[] = "enc.layers.0.mlp.fc1.weight";
    nf_tensor bt[2];
    memset(bt, 0, sizeof bt);
    bt[0].name = n0;
    bt[1].name = n1;
    for (int i = 0; i < 2; i++) {
        bt[i].dtype = NF_F32;
        bt[i].ndim = 2;
        bt[i].shape[0] = bt[i].shape[1] = 4;
        bt[i].numel = 16;
        bt[i].nbytes = 64;
    }
    size_t by_name[2] = {1, 0};
    nf_model base;
    memset(&base, 0, sizeof base);
    base.path = n0;
    base.tensors = bt;
    base.ntensors = 2;
    base.by_name = by_name;
    static const char *const T1 = "[{\"name\":\"a\",\"path\":\"/a\"}]";
    static const char *const T2 = "[{\"name\":\"a\"},{\"name\":\"b\",\"path\":\"/b\"}]";
    static const char *const NU = "{\"null_rank\":2,\"task_rank\":1,\"lora_rank\":2,\"lr\":0.001,"
                                  "\"iters\":5,\"seed\":0,\"compat\":\"paper\",\"rank_tol\":1e-6,"
                                  "\"preset\":\"clip\"}";
    static const char *const ST = "{\"lambda\":0,\"norm_sum\":0,\"norm_count\":0}";
    static const struct {
        const char *method, *step, *params, *state, *tasks, *want; /* want NULL: accepted */
    } cases[] = {
        {"nufilt", "1", NU, ST, T1, NULL},
        {"wa", "2", "{}", ST, T2, NULL},
        {"ta", "1", "{\"scale\":-2.5}", ST, T1, NULL},
        {"nufilt", "1", "{\"null_rank\":2,\"task_rank\":1,\"lora_rank\":2,\"lr\":0.001,\"iters\":5,"
                        "\"seed\":0,\"compat\":\"reference\",\"rank_tol\":0,\"layers\":\"attn|fc1\"}",
         ST, T1, NULL},
        {"nufilt", "+1", NU, ST, T1, "nufilt.step"},
        {"nufilt", " 1", NU, ST, T1, "nufilt.step"},
        {"nufilt", "01", NU, ST, T1, "nufilt.step"},
        {"nufilt", "1 ", NU, ST, T1, "nufilt.step"},
        {"nufilt", "0", NU, ST, "[]", "nufilt.step"},
        {"nufilt", "1000001", NU, ST, T1, "nufilt.step"},
        {"wa", "1000000", "{}", ST, T1, "nufilt.tasks lists 1 task"},
        {"wa", "1", "{}", ST, T2, "nufilt.tasks lists 2 tasks"},
        {"wa", "1", "{}", ST, NULL, "lacks nufilt.tasks"},
        {"wa", "1", "{}", ST, "{}", "nufilt.tasks"},
        {"wa", "1", "{}", ST, "[{\"name\":1}]", "nufilt.tasks"},
        {"wa", "1", "{}", ST, "[{\"name\":\"a\",\"x\":\"y\"}]", "nufilt.tasks"},
        {"wa", "1", "{}", ST, "[\"a\"]", "nufilt.tasks"},
        {"Wa", "1", "{}", ST, T1, "nufilt.method"},
        {"ta", "1", "{\"scale\":1e300}", ST, T1, "scale = 1e+300"},
        {"ta", "1", "{\"scale\":\"1\"}", ST, T1, "scale as something other"},
        {"wudi", "1", "{\"lr\":1e30,\"iters\":5}", ST, T1, "lr = 1e+30"},
        {"ties", "1", "{\"scale\":0.3,\"keep\":0}", ST, T1, "keep"},
        {"nufilt", "1", "{\"null_rank\":2.0}", ST, T1, "null_rank"},
        {"nufilt", "1", "{\"seed\":-1}", ST, T1, "seed"},
        {"nufilt", "1", "{\"seed\":18446744073709551615}", ST, T1, "seed"},
        {"nufilt", "1", "{\"compat\":\"evil\"}", ST, T1, "compat as \"evil\""},
        {"nufilt", "1", "{\"compat\":1}", ST, T1, "compat"},
        {"opcm", "1", "{\"alpha\":0.5,\"opcm_zero_diag\":\"yes\"}", ST, T1, "opcm_zero_diag"},
        {"nufilt", "1", "{\"preset\":\"evil\"}", ST, T1, "unknown preset"},
        {"nufilt", "1", "{\"preset\":\"clip\",\"layers\":\"a\"}", ST, T1, "both"},
        {"nufilt", "1", "{\"layers\":\"(a{9}){9}\"}", ST, T1, "counted repetition"},
        {"nufilt", "1", "{\"layers\":\"(a)\\\\1\"}", ST, T1, "back-reference"},
        {"nufilt", "1", "{\"layers\":\"a\\u0000b\"}", ST, T1, "U+0000"},
        {"nufilt", "1", "{\"layers\":\"(\"}", ST, T1, "bad `layers`"},
        {"wa", "1", "{\"lr_decay\":1}", ST, T1, "unknown key \"lr_decay\""},
        {"wa", "1", "{}", "{\"lambda\":\"1\"}", T1, "nufilt.state records lambda"},
        {"wa", "1", "{}", "{\"lambda\":1,\"x\":1}", T1, "nufilt.state records an unknown key"},
        {"wa", "1", "{}", "{\"norm_sum\":-1}", T1, "norm_sum"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nf_kv meta[5] = {{(char *)"nufilt.method", (char *)cases[i].method},
                         {(char *)"nufilt.step", (char *)cases[i].step},
                         {(char *)"nufilt.params", (char *)cases[i].params},
                         {(char *)"nufilt.state", (char *)cases[i].state},
                         {(char *)"nufilt.tasks", (char *)cases[i].tasks}};
        nf_model prev = base;
        prev.path = (char *)"prev.safetensors";
        prev.meta = meta;
        prev.nmeta = cases[i].tasks ? 5 : 4;
        nf_options o;
        nf_options_init(&o);
        nf_params par;
        memset(&par, 0, sizeof par);
        nf_state st;
        int step = 0;
        nf_error err = {0};
        int rc = nf_recipe_resolve(&o, &base, &prev, &par, &step, &st, &err);
        if (!cases[i].want) {
            ck_assert_msg(rc == NF_OK, "case %zu: %s", i, err.msg);
            ck_assert_int_eq(step, atoi(cases[i].step) + 1);
        } else {
            ck_assert_msg(rc == NF_E_STATE, "case %zu (%s) accepted", i, cases[i].want);
            ck_assert_msg(strstr(err.msg, cases[i].want) && strstr(err.msg, "prev.safetensors"),
                          "case %zu: %s", i, err.msg);
        }
        nf_params_free(&par);
    }
}
END_TEST

START_TEST(test_recipe_conflicts)
{
    char *dir = tu_tmpdir();
    const char *names[2] = {"x.attn.weight", "x.fc1.weight"};
    char *base = tu_path(dir, "base.safetensors"), *task = tu_path(dir, "task.safetensors");
    char *s1 = tu_path(dir, "s1.safetensors"), *s2 = tu_path(dir, "s2.safetensors");
    write_named(base, names, 2);
    write_named(task, names, 2);
    nf_options o;
    nf_options_init(&o);
    o.null_rank = 1;
    o.task_rank = 1;
    o.lora_rank = 1;
    nf_error err = {0};
    ck_assert_msg(nf_step(base, task, NULL, s1, &o, &err) == NF_OK, "%s", err.msg);
    /* the same options, or none, continue the stream */
    nf_options cont;
    nf_options_init(&cont);
    ck_assert_msg(nf_step(base, task, s1, s2, &cont, &err) == NF_OK, "%s", err.msg);
    nf_model *m;
    ck_assert_int_eq(nf_model_open(s2, &m, &err), NF_OK);
    ck_assert_str_eq(nf_model_metadata_get(m, "nufilt.step"), "2");
    ck_assert_ptr_nonnull(strstr(nf_model_metadata_get(m, "nufilt.params"), "\"null_rank\":1"));
    nf_model_close(m);
    /* a conflicting hyper-parameter is refused and nothing is written */
    char *s3 = tu_path(dir, "s3.safetensors");
    nf_options bad;
    nf_options_init(&bad);
    bad.null_rank = 2;
    nf_error_clear(&err);
    ck_assert_int_eq(nf_step(base, task, s2, s3, &bad, &err), NF_E_STATE);
    ck_assert_ptr_nonnull(strstr(err.msg, "`null_rank` 2 conflicts with 1"));
    ck_assert(!nf_exists(s3));
    /* an option of another method is refused */
    nf_options_init(&bad);
    bad.keep = 0.5;
    nf_error_clear(&err);
    ck_assert_int_eq(nf_step(base, task, NULL, s3, &bad, &err), NF_E_ARG);
    ck_assert_ptr_nonnull(strstr(err.msg, "`keep` does not apply"));
    /* a previous model that is not a nufilt merge is refused */
    nf_options_init(&bad);
    nf_error_clear(&err);
    ck_assert_int_eq(nf_step(base, task, task, s3, &bad, &err), NF_E_STATE);
    ck_assert_ptr_nonnull(strstr(err.msg, "no nufilt merge state"));
    ck_assert(!nf_exists(s3));
    free(base);
    free(task);
    free(s1);
    free(s2);
    free(s3);
    tu_rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("recipe");
    TCase *tc = tcase_create("recipe");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_presets);
    tcase_add_test(tc, test_auto_detection);
    tcase_add_test(tc, test_recipe_conflicts);
    tcase_add_test(tc, test_option_ranges);
    tcase_add_test(tc, test_option_table);
    tcase_add_test(tc, test_regex_check);
    tcase_add_test(tc, test_recorded_strict);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
