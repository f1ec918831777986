/* config.json's dtype edit, the base card's library_name, the weight-file rule: each against
 * texts and answers written out by hand here. */
#include "io/tree.h"
#include "merge/card.h"
#include "testutil.h"

static char *edit(const char *in, const char *dt, int *rc)
{
    char *out = NULL;
    size_t len = 0;
    *rc = nf_config_set_dtype(in, strlen(in), dt, &out, &len);
    if (*rc == NF_OK)
        ck_assert_uint_eq(strlen(out), len);
    return out;
}

static const struct {
    const char *in, *out; /* out NULL: refused (copied unchanged by the caller) */
} cases[] = {
    /* replaced in place, every other byte kept (spacing, number spellings, order) */
    {"{\"a\": 1e-12, \"torch_dtype\": \"float32\", \"b\": [1,2]}",
     "{\"a\": 1e-12, \"torch_dtype\": \"float16\", \"b\": [1,2]}"},
    {"{\"dtype\":\"bfloat16\",\"torch_dtype\" :  null}",
     "{\"dtype\":\"float16\",\"torch_dtype\" :  \"float16\"}"},
    /* neither key: torch_dtype added first */
    {"{\n  \"x\": 2\n}\n", "{\n  \"torch_dtype\": \"float16\",\n  \"x\": 2\n}\n"},
    {"{}", "{\n  \"torch_dtype\": \"float16\"\n}"},
    {"  { }  ", "  {\n  \"torch_dtype\": \"float16\"\n }  "},
    /* nested keys and look-alike values are not the model's dtype */
    {"{\"sub\": {\"dtype\": \"int8\"}, \"name\": \"dtype\", \"l\": [\"torch_dtype\", {\"dtype\": 1}]}",
     "{\n  \"torch_dtype\": \"float16\",\"sub\": {\"dtype\": \"int8\"}, \"name\": \"dtype\", "
     "\"l\": [\"torch_dtype\", {\"dtype\": 1}]}"},
    {"{\"s\": \"a \\\"}\\\" b\", \"dtype\": \"float32\"}",
     "{\"s\": \"a \\\"}\\\" b\", \"dtype\": \"float16\"}"},
    {"{\"dtype\": {\"nested\": [1, {\"x\": 2}]}, \"z\": 0}", "{\"dtype\": \"float16\", \"z\": 0}"},
    /* not one strict JSON object */
    {"[1, 2]", NULL},
    {"{\"a\": 1,}", NULL},
    {"{\"dtype\": \"a\", \"dtype\": \"b\"}", NULL},
    {"", NULL},
    /* a key spelled with an escape is the same key to JSON readers: not caught by the textual
     * scan, so the result has it twice and is refused by the check that reads it back */
    {"{\"d\\u0074ype\": \"float32\"}", NULL},
};

START_TEST(test_config_edit)
{
    int rc;
    char *out = edit(cases[_i].in, "float16", &rc);
    if (cases[_i].out) {
        ck_assert_int_eq(rc, NF_OK);
        ck_assert_str_eq(out, cases[_i].out);
    } else {
        ck_assert_int_eq(rc, NF_E_FORMAT);
        ck_assert_ptr_null(out);
    }
    free(out);
}
END_TEST

START_TEST(test_library_name)
{
    char v[80];
    ck_assert(nf_card_library_name("---\nlicense: mit\nlibrary_name: sentence-transformers\n---\n",
                                   60, v, sizeof v));
    ck_assert_str_eq(v, "sentence-transformers");
    const char *q = "---\r\nlibrary_name: 'peft'\r\n---\r\n";
    ck_assert(nf_card_library_name(q, strlen(q), v, sizeof v));
    ck_assert_str_eq(v, "peft");
    /* outside the front matter, indented, unsafe characters, too long: none */
    const char *no[] = {"# title\nlibrary_name: x\n", "---\na: 1\n---\nlibrary_name: x\n",
                        "---\n  library_name: x\n---\n", "---\nlibrary_name: x y\n---\n",
                        "---\nlibrary_name: \"<script>\"\n---\n", "---\nlibrary_name:\n---\n"};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        ck_assert_msg(!nf_card_library_name(no[i], strlen(no[i]), v, sizeof v), "%s", no[i]);
    ck_assert(!nf_card_library_name(NULL, 0, v, sizeof v));
}
END_TEST

START_TEST(test_weight_names)
{
    const char *weights[] = {"model.safetensors", "model-00001-of-00002.safetensors",
                             "model.safetensors.index.json", "pytorch_model.bin",
                             "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack",
                             "model.onnx", "model.onnx_data", "rust_model.ot", "model.gguf",
                             "openvino_model.xml", "openvino_model.bin", "training_args.bin",
                             "optimizer.pt", "scheduler.pt", "x.ckpt", "x.pth", "x.npz"};
    const char *kept[] = {"config.json", "tokenizer.json", "vocab.txt", "merges.txt",
                          "README.md", "modules.json", "generation_config.json",
                          "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model",
                          "preprocessor_config.json", "chat_template.jinja"};
    for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++)
        ck_assert_msg(nf_tree_is_weight(weights[i], 0), "%s", weights[i]);
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
        ck_assert_msg(!nf_tree_is_weight(kept[i], 0), "%s", kept[i]);
    ck_assert(nf_tree_is_weight("onnx", 1) && nf_tree_is_weight("openvino", 1) &&
              nf_tree_is_weight("model.mlpackage", 1));
    ck_assert(!nf_tree_is_weight("1_Pooling", 1) && !nf_tree_is_weight("2_Dense", 1));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("card");
    TCase *tc = tcase_create("card");
    tcase_add_loop_test(tc, test_config_edit, 0, (int)(sizeof cases / sizeof cases[0]));
    tcase_add_test(tc, test_library_name);
    tcase_add_test(tc, test_weight_names);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
