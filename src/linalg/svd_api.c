/*
 * nf_svd_f32: the library's SVD (the --svd modes) on one float32 matrix held by the caller,
 * for bindings that build on it (the Python package's MINGLE experts). Runs on the CPU
 * backend; everything is checked before any work.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../backend/backend.h"
#include "../core/error.h"
#include "la.h"

int nf_svd_f32(const float *x, int m, int n, int rank, int mode, uint64_t seed, float *s,
               float *u, float *vt, int *kept, nf_error *err)
{
    if (kept)
        *kept = 0;
    if (!x || !s || !vt || !kept)
        return nf_error_set(err, NF_E_ARG, "nf_svd_f32: x, s, vt and kept must not be NULL");
    if (m <= 0 || n <= 0)
        return nf_error_set(err, NF_E_ARG, "nf_svd_f32: the matrix is %d x %d; both sides must "
                            "be positive", m, n);
    if (mode < NF_SVD_EXACT || mode > NF_SVD_FAST)
        return nf_error_set(err, NF_E_ARG, "nf_svd_f32: unknown `svd` mode %d", mode);
    int k = m < n ? m : n;
    int want = (rank <= 0 || rank > k) ? k : rank;
    for (size_t i = 0, len = (size_t)m * (size_t)n; i < len; i++)
        if (!isfinite(x[i]))
            return nf_error_set(err, NF_E_NONFINITE, "nf_svd_f32: element %zu of the %d x %d "
                                "matrix is not finite", i, m, n);

    nf_device *dev = NULL;
    int rc = nf_backend_cpu.open(0, &dev, err);
    if (rc)
        return rc;
    nf_la la;
    nf_la_init(&la, dev, err);
    nf_mat mx = {0}, mu = {0}, mvt = {0};
    float *hs = calloc((size_t)k, sizeof *hs);
    float *hvt = NULL, *hu = NULL;
    if (!hs) {
        rc = nf_error_set(err, NF_E_NOMEM, "nf_svd_f32: out of memory");
        goto done;
    }
    if ((rc = nf_la_alloc(&la, m, n, &mx)) || (rc = nf_la_upload(&la, &mx, x)))
        goto done;
    int got = 0;
    if (mode == NF_SVD_EXACT) {
        /* the full thin SVD (LAPACK), of which the first `want` triplets are returned */
        if ((rc = nf_la_svd(&la, &mx, u ? &mu : NULL, hs, &mvt)))
            goto done;
        got = want;
        hvt = malloc((size_t)k * (size_t)n * sizeof *hvt);
        hu = u ? malloc((size_t)m * (size_t)k * sizeof *hu) : NULL;
        if (!hvt || (u && !hu)) {
            rc = nf_error_set(err, NF_E_NOMEM, "nf_svd_f32: out of memory");
            goto done;
        }
        if ((rc = nf_la_download(&la, &mvt, hvt)) || (u && (rc = nf_la_download(&la, &mu, hu))))
            goto done;
        memcpy(vt, hvt, (size_t)got * (size_t)n * sizeof *vt);
        if (u)
            for (int i = 0; i < m; i++)
                memcpy(u + (size_t)i * (size_t)got, hu + (size_t)i * (size_t)k,
                       (size_t)got * sizeof *u);
    } else {
        nf_svd_args a = {.rank = want, .rank_tol = -1.0, .mode = mode, .oversample = 10,
                         .power_iters = 2, .seed = seed};
        if ((rc = nf_la_svd_right(&la, &mx, &a, &mvt, &got, hs)))
            goto done;
        if ((rc = nf_la_download(&la, &mvt, vt)))
            goto done;
        if (u && got > 0) {
            /* left vectors u_i = x v_i / s_i (a zero column where s_i is 0) */
            if ((rc = nf_la_alloc(&la, m, got, &mu)) ||
                (rc = nf_la_gemm(&la, 0, 1, 1.0f, &mx, &mvt, 0.0f, &mu)))
                goto done;
            hu = malloc((size_t)m * (size_t)got * sizeof *hu);
            if (!hu) {
                rc = nf_error_set(err, NF_E_NOMEM, "nf_svd_f32: out of memory");
                goto done;
            }
            if ((rc = nf_la_download(&la, &mu, hu)))
                goto done;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < got; j++)
                    u[(size_t)i * (size_t)got + j] =
                        hs[j] > 0.0f ? hu[(size_t)i * (size_t)got + j] / hs[j] : 0.0f;
        }
        for (int j = got; j < k; j++)
            hs[j] = 0.0f;
    }
    memcpy(s, hs, (size_t)k * sizeof *s);
    *kept = got;
done:
    free(hs);
    free(hvt);
    free(hu);
    nf_la_free(&la, &mx);
    nf_la_free(&la, &mu);
    nf_la_free(&la, &mvt);
    nf_backend_cpu.close(dev);
    return rc;
}
