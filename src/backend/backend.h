/*
 * The backend interface: a table of function pointers per API (cpu, opencl, vulkan) and an
 * opaque per-device context. The CPU backend implements every slot; a GPU backend implements
 * what it accelerates and leaves the rest NULL (or returns NF_E_UNSUPPORTED), and the linear
 * algebra layer (src/linalg/la.c) then runs the CPU version on host copies of the data.
 *
 * Conventions: buffers hold float32 elements; offsets, sizes and leading dimensions count
 * elements; matrices are row-major. Operations are queued in order on the device and may run
 * asynchronously; download() and finish() wait for everything queued before them.
 */
#ifndef NF_BACKEND_H
#define NF_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "nufilt.h"
#include "../core/error.h"

typedef struct nf_buffer nf_buffer;   /* backend-defined */
typedef struct nf_device nf_device;   /* backend-defined; starts with nf_device_common */
typedef struct nf_backend nf_backend;

typedef struct nf_device_common {
    const nf_backend *backend;
    nf_device_info info;
} nf_device_common;

/* A row-major view into a buffer: element (r, c) is at off + r * ld + c. */
typedef struct nf_view {
    nf_buffer *buf;
    size_t off;
    int rows, cols, ld;
} nf_view;

/* C = alpha * op(A) * op(B) + beta * C, op(A) is m x k, op(B) is k x n, C is m x n.
 * With beta == 0, C is not read (NaN in C does not propagate). */
typedef struct nf_gemm_op {
    int trans_a, trans_b;
    int m, n, k;
    float alpha, beta;
    nf_view a, b, c;
} nf_gemm_op;

/* Element-wise y = alpha * x + beta * y over n contiguous elements (x may be NULL: then
 * y = beta * y + alpha, which also serves as fill with beta = 0). */
typedef struct nf_axpby_op {
    size_t n;
    float alpha, beta;
    const nf_buffer *x;
    size_t x_off;
    nf_buffer *y;
    size_t y_off;
} nf_axpby_op;

/* Sum of x*y (or of x*x when y is NULL) over n contiguous elements, accumulated in double. */
typedef struct nf_dot_op {
    size_t n;
    const nf_buffer *x;
    size_t x_off;
    const nf_buffer *y;
    size_t y_off;
} nf_dot_op;

/* One Adam step with PyTorch semantics, in place on x, m, v (n contiguous elements):
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   x = x - step_size * m / (sqrt(v) / bc2_sqrt + eps)
 * with step_size = lr / (1 - b1^s) and bc2_sqrt = sqrt(1 - b2^s) computed by the caller in
 * double precision. */
typedef struct nf_adam_op {
    size_t n;
    nf_buffer *x, *m, *v;
    const nf_buffer *g;
    size_t x_off, m_off, v_off, g_off;
    float b1, b2, eps;
    double step_size, bc2_sqrt;
} nf_adam_op;

/* Converts n elements of dtype src_dtype (raw bytes at byte offset src_byte_off of src) to
 * float32 in dst. */
typedef struct nf_convert_op {
    size_t n;
    nf_dtype src_dtype;
    const nf_buffer *src;
    size_t src_byte_off;
    nf_buffer *dst;
    size_t dst_off;
} nf_convert_op;

/* Thin QR: a (m x n, m >= n) is replaced by Q with orthonormal columns. */
typedef struct nf_qr_op {
    nf_view a;
} nf_qr_op;

/* Thin SVD of a (m x n): s receives min(m, n) singular values (descending), vt the right
 * singular vectors as rows (min(m, n) x n); u (m x min) may be NULL when not wanted. a may
 * be overwritten. */
typedef struct nf_svd_op {
    nf_view a;
    nf_buffer *s;
    size_t s_off;
    nf_view vt;
    nf_view *u;
} nf_svd_op;

struct nf_backend {
    const char *api; /* "cpu", "opencl", "vulkan" */

    /* discovery: count devices (0 when the driver is missing; *why says so) */
    int (*count)(int *n, const char **why);
    int (*open)(int index, nf_device **out, nf_error *err);
    void (*close)(nf_device *dev);

    /* memory: buffers of n float32 elements (bytes for raw uploads: n * 4 is the size) */
    int (*alloc)(nf_device *dev, size_t n, nf_buffer **out, nf_error *err);
    void (*free)(nf_device *dev, nf_buffer *buf);
    int (*upload)(nf_device *dev, nf_buffer *buf, size_t byte_off, const void *src,
                  size_t bytes, nf_error *err);
    int (*download)(nf_device *dev, const nf_buffer *buf, size_t byte_off, void *dst,
                    size_t bytes, nf_error *err);
    /* capability: buffers are host memory; host_ptr (required then) gives a pointer to a
     * buffer's elements, and the linear algebra works on them in place (no copies) */
    int host_memory;
    float *(*host_ptr)(nf_device *dev, nf_buffer *buf);
    int (*finish)(nf_device *dev, nf_error *err);
    /* optional: the threads the backend's host library (OpenBLAS) may use in the calling
     * thread's calls (n >= 1); returns the previous count */
    int (*set_threads)(int n);

    /* compute; NULL or NF_E_UNSUPPORTED means "run the CPU version" */
    int (*gemm)(nf_device *dev, const nf_gemm_op *op, nf_error *err);
    int (*axpby)(nf_device *dev, const nf_axpby_op *op, nf_error *err);
    int (*dot)(nf_device *dev, const nf_dot_op *op, double *out, nf_error *err);
    int (*adam)(nf_device *dev, const nf_adam_op *op, nf_error *err);
    int (*convert)(nf_device *dev, const nf_convert_op *op, nf_error *err);
    int (*qr)(nf_device *dev, const nf_qr_op *op, nf_error *err);
    int (*svd)(nf_device *dev, const nf_svd_op *op, nf_error *err);
};

/* The backends compiled into this library, CPU first. */
extern const nf_backend nf_backend_cpu;
#ifdef NF_HAVE_OPENCL
extern const nf_backend nf_backend_opencl;
#endif
#ifdef NF_HAVE_VULKAN
extern const nf_backend nf_backend_vulkan;
#endif

const nf_backend *const *nf_backends(int *count);
const nf_backend *nf_backend_find(const char *api);

static inline const nf_device_info *nf_device_get_info(const nf_device *d)
{
    return &((const nf_device_common *)(const void *)d)->info;
}
static inline const nf_backend *nf_device_backend(const nf_device *d)
{
    return ((const nf_device_common *)(const void *)d)->backend;
}

/* CPU reference kernels, shared by the CPU backend and the fallback path. Pointers are host
 * memory. */
void nf_cpu_gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);
void nf_cpu_axpby(size_t n, float alpha, const float *x, float beta, float *y);
double nf_cpu_dot(size_t n, const float *x, const float *y);
void nf_cpu_adam(size_t n, float *x, const float *g, float *m, float *v, float b1, float b2,
                 float eps, double step_size, double bc2_sqrt);
int nf_cpu_qr(int m, int n, float *a, int lda, nf_error *err);
int nf_cpu_svd(int m, int n, float *a, int lda, float *s, float *vt, int ldvt, float *u,
               int ldu, nf_error *err);
/* Top r right singular vectors (rows of vt) and all singular values of a (destroyed). */
int nf_cpu_svd_right(int m, int n, float *a, int lda, int r, float *s, float *vt, int ldvt,
                     nf_error *err);
/* Top r right singular vectors and their r singular values of a (not modified), from the
 * Gram matrix in double precision. */
int nf_cpu_svd_right_gram(int m, int n, const float *a, int lda, int r, float *s, float *vt,
                          int ldvt, nf_error *err);
/* Top r eigenpairs (values w, vectors as rows of vt) of the symmetric n x n matrix k
 * (destroyed), largest first, in float32 (LAPACK ssyevr). */
int nf_cpu_eig_top(int n, float *k, int r, float *w, float *vt, int ldvt, nf_error *err);
/* The same for a symmetric positive semi-definite k (not modified) by block Krylov from the
 * n x b start block x0 (r < b), depth blocks deep; NF_E_UNSUPPORTED when the result would
 * not be as accurate as a dense solver's (the caller then uses nf_cpu_eig_top). */
int nf_cpu_eig_top_krylov(int n, const float *k, int r, const float *x0, int b, int depth,
                          float *w, float *vt, int ldvt, nf_error *err);
/* Number of threads OpenBLAS may use in the calling thread's BLAS/LAPACK calls. */
void nf_cpu_set_threads(int n);

#endif
