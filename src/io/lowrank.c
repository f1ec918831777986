/* The factors of a low-rank tensor as float32 host arrays (lowrank.h). */
#include "lowrank.h"

#include <stdlib.h>

#include "../core/dtype.h"

int nf_lowrank_factors(const nf_lowrank *lr, int m, int n, float **bf, float **af,
                       nf_error *err)
{
    size_t r = (size_t)lr->rank;
    float *a = malloc(lr->a->numel * sizeof *a), *b = malloc(lr->b->numel * sizeof *b);
    float *tb = lr->transpose ? malloc((size_t)m * r * sizeof *tb) : NULL;
    float *ta = lr->transpose ? malloc(r * (size_t)n * sizeof *ta) : NULL;
    if (!a || !b || (lr->transpose && (!ta || !tb))) {
        free(a);
        free(b);
        free(ta);
        free(tb);
        return nf_error_set(err, NF_E_NOMEM, "out of memory reading the LoRA factors of a %d x "
                            "%d tensor", m, n);
    }
    nf_to_f32(lr->a->data, lr->a->dtype, a, lr->a->numel);
    nf_to_f32(lr->b->data, lr->b->dtype, b, lr->b->numel);
    if (!lr->transpose) {
        *bf = b; /* m x r */
        *af = a; /* r x n */
        return NF_OK;
    }
    /* tau = scale A^T B^T: A is r x m, B is n x r */
    for (size_t i = 0; i < (size_t)m; i++)
        for (size_t k = 0; k < r; k++)
            tb[i * r + k] = a[k * (size_t)m + i];
    for (size_t k = 0; k < r; k++)
        for (size_t j = 0; j < (size_t)n; j++)
            ta[k * (size_t)n + j] = b[j * r + k];
    free(a);
    free(b);
    *bf = tb;
    *af = ta;
    return NF_OK;
}
