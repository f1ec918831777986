/* libFuzzer target: a previous merge's metadata (nufilt.method, nufilt.step, nufilt.params,
 * nufilt.state, nufilt.tasks: five fields separated by newlines in the input) through the
 * recipe resolution a step runs before any work, then back to JSON. A previous merged model
 * is a file from anywhere: every metadata text must be accepted or refused with a message,
 * never a crash, an out-of-bounds read or undefined behaviour (a float-to-int conversion out
 * of range included: clang's UBSan checks it). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/model.h"
#include "merge/recipe.h"

static char *field(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *s = *p, *e = memchr(s, '\n', (size_t)(end - s));
    if (!e)
        e = end;
    *p = e < end ? e + 1 : end;
    char *f = malloc((size_t)(e - s) + 1);
    if (f) {
        memcpy(f, s, (size_t)(e - s));
        f[e - s] = '\0';
    }
    return f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const keys[] = {"nufilt.method", "nufilt.step", "nufilt.params",
                                       "nufilt.state", "nufilt.tasks"};
    enum { NK = 5 };
    /* a base of two CLIP-like tensors (the preset is resolved from the names) */
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

    nf_kv meta[NK];
    const uint8_t *p = data, *end = data + size;
    size_t n = 0;
    int ok = 1;
    for (; n < NK; n++) {
        meta[n].key = (char *)keys[n];
        meta[n].value = field(&p, end);
        if (!meta[n].value) {
            ok = 0;
            break;
        }
    }
    if (ok) {
        nf_model prev = base;
        prev.path = (char *)"fuzz-prev.safetensors";
        prev.meta = meta;
        prev.nmeta = NK;
        /* the options: unset (continue the recipe), or a method asked for by the first byte */
        nf_options o;
        nf_options_init(&o);
        if (size > 0 && (data[0] & 0x80))
            o.method = data[0] % NF_METHOD_COUNT;
        nf_params par;
        memset(&par, 0, sizeof par);
        nf_state st;
        int step = 0;
        nf_error err = {0};
        int rc = nf_recipe_resolve(&o, &base, &prev, &par, &step, &st, &err);
        if (rc == NF_OK) {
            free(nf_params_json(&par));
            free(nf_state_json(&st));
        } else if (err.msg[0] == '\0') {
            abort(); /* a refusal must say why */
        }
        nf_params_free(&par);
    }
    for (size_t i = 0; i < n; i++)
        free(meta[i].value);
    return 0;
}
