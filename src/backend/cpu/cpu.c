/* The CPU backend: OpenBLAS for GEMMs, plain loops for the rest, and the backend table; QR,
 * SVD and the eigen-solvers are cpu_solvers.c's. It implements every slot of the backend
 * interface and is always available. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/dtype.h"
#include "../backend.h"
#include "sgemm.h"

struct nf_buffer {
    float *p;
    size_t n;
};

struct nf_device {
    nf_device_common common;
};

/* ---- kernels (also used as the fallback for GPU backends) ---- */

void nf_cpu_set_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }

void nf_cpu_gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc)
{
    if (m == 0 || n == 0)
        return;
    if (k == 0 || alpha == 0.0f) {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(size_t)i * ldc + j];
        return;
    }
    int gram = a == b && lda == ldb && ta != tb && m == n && beta == 0.0f;
    if (!gram && nf_cpu_sgemm_suits(m, n, k) &&
        nf_cpu_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))
        return;
    if (beta == 0.0f) /* BLAS may read C when beta is 0; make NaN in C harmless */
        for (int i = 0; i < m; i++)
            memset(c + (size_t)i * ldc, 0, (size_t)n * sizeof *c);
    if (gram) {
        /* a Gram matrix, A^T A or A A^T: symmetric, so half the work (ssyrk fills the lower
         * triangle of the row-major result, which is then mirrored) */
        cblas_ssyrk(CblasRowMajor, CblasLower, ta ? CblasTrans : CblasNoTrans, m, k, alpha, a,
                    lda, beta, c, ldc);
        /* in 32 x 32 tiles: the column-wise reads stay in cache (0.43 -> 0.16 ms at 768) */
        for (int i0 = 0; i0 < m; i0 += 32)
            for (int j0 = i0; j0 < m; j0 += 32)
                for (int i = i0; i < i0 + 32 && i < m; i++)
                    for (int j = j0 > i + 1 ? j0 : i + 1; j < j0 + 32 && j < m; j++)
                        c[(size_t)i * ldc + j] = c[(size_t)j * ldc + i];
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m,
                n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void nf_cpu_axpby(size_t n, float alpha, const float *x, float beta, float *y)
{
    if (!x) {
        for (size_t i = 0; i < n; i++)
            y[i] = (beta == 0.0f ? 0.0f : beta * y[i]) + alpha;
        return;
    }
    for (size_t i = 0; i < n; i++)
        y[i] = alpha * x[i] + (beta == 0.0f ? 0.0f : beta * y[i]);
}

double nf_cpu_dot(size_t n, const float *x, const float *y)
{
    /* four partial sums in double: fast and far more accurate than float accumulation */
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    if (!y)
        y = x;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * y[i];
        s1 += (double)x[i + 1] * y[i + 1];
        s2 += (double)x[i + 2] * y[i + 2];
        s3 += (double)x[i + 3] * y[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)x[i] * y[i];
    return (s0 + s1) + (s2 + s3);
}

/* Compiled twice on x86-64 and chosen at the first call: with AVX2 the divisions and square
 * roots run 8 wide instead of 4. The target leaves out FMA, so no multiply-add is contracted
 * and both versions round every operation alike: the results are bit-identical. (Dispatched
 * by hand rather than with target_clones, whose ifunc and resolver GCC exports from the shared
 * library whatever the visibility.) */
#define NF_ADAM_BODY                                                                       \
    {                                                                                      \
        const float ss = (float)step_size, bc = (float)bc2_sqrt;                           \
        for (size_t i = 0; i < n; i++) {                                                   \
            float gi = g[i];                                                               \
            m[i] = b1 * m[i] + (1.0f - b1) * gi;                                           \
            v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;                                      \
            float denom = sqrtf(v[i]) / bc + eps;                                          \
            x[i] -= ss * (m[i] / denom);                                                   \
        }                                                                                  \
    }

static void adam_default(size_t n, float *x, const float *g, float *m, float *v, float b1,
                         float b2, float eps, double step_size, double bc2_sqrt)
NF_ADAM_BODY

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static void
adam_avx2(size_t n, float *x, const float *g, float *m, float *v, float b1, float b2, float eps,
          double step_size, double bc2_sqrt)
NF_ADAM_BODY
#endif

void nf_cpu_adam(size_t n, float *x, const float *g, float *m, float *v, float b1, float b2,
                 float eps, double step_size, double bc2_sqrt)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2")) {
        adam_avx2(n, x, g, m, v, b1, b2, eps, step_size, bc2_sqrt);
        return;
    }
#endif
    adam_default(n, x, g, m, v, b1, b2, eps, step_size, bc2_sqrt);
}

/* ---- the backend table ---- */

static int cpu_count(int *n, const char **why)
{
    *n = 1;
    if (why)
        *why = NULL;
    return NF_OK;
}

static int cpu_open(int index, nf_device **out, nf_error *err)
{
    if (index != 0)
        return nf_error_set(err, NF_E_NODEV, "cpu:%d: there is one CPU device, cpu:0", index);
    nf_device *d = calloc(1, sizeof *d);
    if (!d)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    d->common.backend = &nf_backend_cpu;
    nf_device_info *in = &d->common.info;
    strcpy(in->api, "cpu");
    in->index = 0;
    in->type = NF_DEVICE_CPU;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    in->memory = pages > 0 && psize > 0 ? (uint64_t)pages * (uint64_t)psize : 0;
    const char *core = openblas_get_corename();
    snprintf(in->name, sizeof in->name, "%ld cores, OpenBLAS %s kernels", cores,
             core ? core : "?");
    char *cfg = openblas_get_config();
    snprintf(in->driver, sizeof in->driver, "%s", cfg ? cfg : "OpenBLAS");
    *out = d;
    return NF_OK;
}

static void cpu_close(nf_device *d) { free(d); }

static int cpu_alloc(nf_device *d, size_t n, nf_buffer **out, nf_error *err)
{
    (void)d;
    nf_buffer *b = malloc(sizeof *b);
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!b || !p) {
        free(b);
        free(p);
        return nf_error_set(err, NF_E_NOMEM, "out of memory allocating %zu floats", n);
    }
    b->p = p;
    b->n = n;
    *out = b;
    return NF_OK;
}

static void cpu_free(nf_device *d, nf_buffer *b)
{
    (void)d;
    if (b) {
        free(b->p);
        free(b);
    }
}

static int cpu_upload(nf_device *d, nf_buffer *b, size_t off, const void *src, size_t bytes,
                      nf_error *err)
{
    (void)d;
    (void)err;
    memcpy((char *)b->p + off, src, bytes);
    return NF_OK;
}

static int cpu_download(nf_device *d, const nf_buffer *b, size_t off, void *dst, size_t bytes,
                        nf_error *err)
{
    (void)d;
    (void)err;
    memcpy(dst, (const char *)b->p + off, bytes);
    return NF_OK;
}

static float *cpu_host_ptr(nf_device *d, nf_buffer *b)
{
    (void)d;
    return b->p;
}

static int cpu_set_threads(int n)
{
    int was = openblas_get_num_threads();
    nf_cpu_set_threads(n);
    return was;
}

static int cpu_finish(nf_device *d, nf_error *err)
{
    (void)d;
    (void)err;
    return NF_OK;
}

static int cpu_gemm(nf_device *d, const nf_gemm_op *op, nf_error *err)
{
    (void)d;
    (void)err;
    nf_cpu_gemm(op->trans_a, op->trans_b, op->m, op->n, op->k, op->alpha,
                op->a.buf->p + op->a.off, op->a.ld, op->b.buf->p + op->b.off, op->b.ld,
                op->beta, op->c.buf->p + op->c.off, op->c.ld);
    return NF_OK;
}

static int cpu_axpby(nf_device *d, const nf_axpby_op *op, nf_error *err)
{
    (void)d;
    (void)err;
    nf_cpu_axpby(op->n, op->alpha, op->x ? op->x->p + op->x_off : NULL, op->beta,
                 op->y->p + op->y_off);
    return NF_OK;
}

static int cpu_dot(nf_device *d, const nf_dot_op *op, double *out, nf_error *err)
{
    (void)d;
    (void)err;
    *out = nf_cpu_dot(op->n, op->x->p + op->x_off, op->y ? op->y->p + op->y_off : NULL);
    return NF_OK;
}

static int cpu_adam(nf_device *d, const nf_adam_op *op, nf_error *err)
{
    (void)d;
    (void)err;
    nf_cpu_adam(op->n, op->x->p + op->x_off, op->g->p + op->g_off, op->m->p + op->m_off,
                op->v->p + op->v_off, op->b1, op->b2, op->eps, op->step_size, op->bc2_sqrt);
    return NF_OK;
}

static int cpu_convert(nf_device *d, const nf_convert_op *op, nf_error *err)
{
    (void)d;
    (void)err;
    nf_to_f32((const char *)op->src->p + op->src_byte_off, op->src_dtype,
              op->dst->p + op->dst_off, op->n);
    return NF_OK;
}

static int cpu_qr(nf_device *d, const nf_qr_op *op, nf_error *err)
{
    (void)d;
    return nf_cpu_qr(op->a.rows, op->a.cols, op->a.buf->p + op->a.off, op->a.ld, err);
}

static int cpu_svd(nf_device *d, const nf_svd_op *op, nf_error *err)
{
    (void)d;
    return nf_cpu_svd(op->a.rows, op->a.cols, op->a.buf->p + op->a.off, op->a.ld,
                      op->s->p + op->s_off, op->vt.buf->p + op->vt.off, op->vt.ld,
                      op->u ? op->u->buf->p + op->u->off : NULL, op->u ? op->u->ld : 0, err);
}

const nf_backend nf_backend_cpu = {
    .api = "cpu",
    .count = cpu_count,
    .open = cpu_open,
    .close = cpu_close,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .host_memory = 1,
    .host_ptr = cpu_host_ptr,
    .finish = cpu_finish,
    .set_threads = cpu_set_threads,
    .gemm = cpu_gemm,
    .axpby = cpu_axpby,
    .dot = cpu_dot,
    .adam = cpu_adam,
    .convert = cpu_convert,
    .qr = cpu_qr,
    .svd = cpu_svd,
};
