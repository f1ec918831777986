/* Tensor selection presets and the continual recipe: defaults, the previous model's metadata,
 * and refused conflicts. */
#include "io/model.h"
#include "core/util.h"
#include "merge/select.h"
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
    suite_add_tcase(s, tc);
    return tu_run(s);
}
