#include "la.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/util.h"
#include "../core/dtype.h"
#include "rng.h"

void nf_la_init(nf_la *la, nf_device *dev, nf_error *err)
{
    memset(la, 0, sizeof *la);
    la->dev = dev;
    la->be = nf_device_backend(dev);
    la->err = err;
    la->host = la->be->host_memory;
}

int nf_la_alloc(nf_la *la, int rows, int cols, nf_mat *out)
{
    memset(out, 0, sizeof *out);
    if (rows < 0 || cols < 0)
        return nf_error_set(la->err, NF_E_INTERNAL, "negative matrix size");
    size_t n = (size_t)rows * (size_t)cols;
    int rc = la->be->alloc(la->dev, n ? n : 1, &out->buf, la->err);
    if (rc)
        return rc;
    out->rows = rows;
    out->cols = cols;
    out->ld = cols > 0 ? cols : 1;
    return NF_OK;
}

void nf_la_free(nf_la *la, nf_mat *m)
{
    if (m && m->buf) {
        la->be->free(la->dev, m->buf);
        memset(m, 0, sizeof *m);
    }
}

nf_mat nf_la_sub(const nf_mat *m, int r0, int c0, int rows, int cols)
{
    nf_mat s = *m;
    s.off = m->off + (size_t)r0 * (size_t)m->ld + (size_t)c0;
    s.rows = rows;
    s.cols = cols;
    return s;
}

float *nf_la_host(nf_la *la, const nf_mat *m)
{
    if (!la->host || !m->buf)
        return NULL;
    return la->be->host_ptr(la->dev, m->buf) + m->off;
}

static size_t span(const nf_mat *m)
{
    if (m->rows == 0 || m->cols == 0)
        return 0;
    return (size_t)(m->rows - 1) * (size_t)m->ld + (size_t)m->cols;
}

int nf_la_upload(nf_la *la, nf_mat *m, const float *src)
{
    if (m->ld == m->cols || m->rows <= 1)
        return la->be->upload(la->dev, m->buf, m->off * 4, src,
                              (size_t)m->rows * (size_t)m->cols * 4, la->err);
    for (int r = 0; r < m->rows; r++) {
        int rc = la->be->upload(la->dev, m->buf, (m->off + (size_t)r * m->ld) * 4,
                                src + (size_t)r * m->cols, (size_t)m->cols * 4, la->err);
        if (rc)
            return rc;
    }
    return NF_OK;
}

int nf_la_download(nf_la *la, const nf_mat *m, float *dst)
{
    if (m->ld == m->cols || m->rows <= 1)
        return la->be->download(la->dev, m->buf, m->off * 4, dst,
                                (size_t)m->rows * (size_t)m->cols * 4, la->err);
    for (int r = 0; r < m->rows; r++) {
        int rc = la->be->download(la->dev, m->buf, (m->off + (size_t)r * m->ld) * 4,
                                  dst + (size_t)r * m->cols, (size_t)m->cols * 4, la->err);
        if (rc)
            return rc;
    }
    return NF_OK;
}

int nf_la_upload_convert(nf_la *la, nf_mat *m, const void *src, nf_dtype dt)
{
    size_t n = (size_t)m->rows * (size_t)m->cols;
    if (dt == NF_F32)
        return nf_la_upload(la, m, src);
    if (la->be->convert && m->ld == m->cols) {
        /* raw bytes go to a scratch buffer on the device, converted there */
        size_t bytes = n * nf_dtype_size(dt);
        nf_buffer *raw = NULL;
        int rc = la->be->alloc(la->dev, (bytes + 3) / 4 + 1, &raw, la->err);
        if (rc)
            return rc;
        rc = la->be->upload(la->dev, raw, 0, src, bytes, la->err);
        if (rc == NF_OK) {
            nf_convert_op op = {n, dt, raw, 0, m->buf, m->off};
            rc = la->be->convert(la->dev, &op, la->err);
        }
        if (rc == NF_E_UNSUPPORTED) {
            nf_error_clear(la->err);
            rc = NF_E_UNSUPPORTED;
        }
        la->be->finish(la->dev, NULL);
        la->be->free(la->dev, raw);
        if (rc != NF_E_UNSUPPORTED)
            return rc;
    }
    float *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!tmp)
        return nf_error_set(la->err, NF_E_NOMEM, "out of memory");
    nf_to_f32(src, dt, tmp, n);
    int rc = nf_la_upload(la, m, tmp);
    free(tmp);
    return rc;
}

/* ---- fallback plumbing: host copies of device views ---- */

typedef struct host_copy {
    float *p;    /* host memory holding the view's span */
    size_t n;
} host_copy;

static int fetch(nf_la *la, const nf_mat *m, host_copy *h)
{
    h->n = span(m);
    h->p = malloc((h->n ? h->n : 1) * sizeof *h->p);
    if (!h->p)
        return nf_error_set(la->err, NF_E_NOMEM, "out of memory");
    if (h->n == 0)
        return NF_OK;
    return la->be->download(la->dev, m->buf, m->off * 4, h->p, h->n * 4, la->err);
}

static int store(nf_la *la, nf_mat *m, const host_copy *h)
{
    if (h->n == 0)
        return NF_OK;
    return la->be->upload(la->dev, m->buf, m->off * 4, h->p, h->n * 4, la->err);
}

/* Runs the device's slot when it has one: unless the slot answers NF_E_UNSUPPORTED, the
 * enclosing function returns the slot's status. Otherwise (no slot, or NF_E_UNSUPPORTED,
 * whose error is cleared) the fallback is counted and the caller goes on to the CPU kernels
 * on host copies. */
#define TRY_SLOT(slot, ...)                                                    \
    do {                                                                       \
        if (la->be->slot) {                                                    \
            int rc_ = la->be->slot(la->dev, __VA_ARGS__, la->err);             \
            if (rc_ != NF_E_UNSUPPORTED)                                       \
                return rc_;                                                    \
            nf_error_clear(la->err);                                           \
        }                                                                      \
        la->stats.fallbacks++;                                                 \
    } while (0)

int nf_la_gemm(nf_la *la, int ta, int tb, float alpha, const nf_mat *a, const nf_mat *b,
               float beta, nf_mat *c)
{
    int m = c->rows, n = c->cols;
    int k = ta ? a->rows : a->cols;
    int am = ta ? a->cols : a->rows, bk = tb ? b->cols : b->rows, bn = tb ? b->rows : b->cols;
    if (am != m || bk != k || bn != n)
        return nf_error_set(la->err, NF_E_INTERNAL,
                            "gemm shape mismatch: op(A) %dx%d, op(B) %dx%d, C %dx%d", am, k, bk,
                            bn, m, n);
    la->stats.flops += 2.0 * m * n * k;
    nf_gemm_op op = {ta, tb, m, n, k, alpha, beta, *a, *b, *c};
    TRY_SLOT(gemm, &op);
    host_copy ha = {0}, hb = {0}, hc = {0};
    int rc = fetch(la, a, &ha);
    if (!rc)
        rc = fetch(la, b, &hb);
    if (!rc)
        rc = fetch(la, c, &hc);
    if (!rc) {
        nf_cpu_gemm(ta, tb, m, n, k, alpha, ha.p, a->ld, hb.p, b->ld, beta, hc.p, c->ld);
        rc = store(la, c, &hc);
    }
    free(ha.p);
    free(hb.p);
    free(hc.p);
    return rc;
}

static int check_contig(nf_la *la, const nf_mat *m)
{
    if (m->rows > 1 && m->cols > 0 && m->ld != m->cols) /* no columns: nothing to stride */
        return nf_error_set(la->err, NF_E_INTERNAL, "element-wise op on a strided view");
    return NF_OK;
}

int nf_la_axpby(nf_la *la, float alpha, const nf_mat *x, float beta, nf_mat *y)
{
    size_t n = (size_t)y->rows * (size_t)y->cols;
    if (check_contig(la, y) || (x && check_contig(la, x)))
        return la->err->code;
    if (x && (size_t)x->rows * (size_t)x->cols != n)
        return nf_error_set(la->err, NF_E_INTERNAL, "axpby size mismatch");
    nf_axpby_op op = {n, alpha, beta, x ? x->buf : NULL, x ? x->off : 0, y->buf, y->off};
    TRY_SLOT(axpby, &op);
    host_copy hx = {0}, hy = {0};
    int rc = x ? fetch(la, x, &hx) : NF_OK;
    if (!rc)
        rc = fetch(la, y, &hy);
    if (!rc) {
        nf_cpu_axpby(n, alpha, x ? hx.p : NULL, beta, hy.p);
        rc = store(la, y, &hy);
    }
    free(hx.p);
    free(hy.p);
    return rc;
}

int nf_la_copy(nf_la *la, const nf_mat *x, nf_mat *y) { return nf_la_axpby(la, 1.0f, x, 0.0f, y); }

int nf_la_copy_view(nf_la *la, const nf_mat *x, nf_mat *y)
{
    if (x->rows != y->rows || x->cols != y->cols)
        return nf_error_set(la->err, NF_E_INTERNAL, "copy of a %dx%d view into a %dx%d one",
                            x->rows, x->cols, y->rows, y->cols);
    if ((x->rows <= 1 || x->ld == x->cols) && (y->rows <= 1 || y->ld == y->cols))
        return nf_la_copy(la, x, y);
    float *hx = nf_la_host(la, x), *hy = nf_la_host(la, y);
    if (hx && hy) {
        for (int r = 0; r < x->rows; r++)
            memmove(hy + (size_t)r * y->ld, hx + (size_t)r * x->ld, (size_t)x->cols * 4);
        return NF_OK;
    }
    for (int r = 0; r < x->rows; r++) {
        nf_mat xr = nf_la_sub(x, r, 0, 1, x->cols), yr = nf_la_sub(y, r, 0, 1, y->cols);
        int rc = nf_la_copy(la, &xr, &yr);
        if (rc)
            return rc;
    }
    return NF_OK;
}

int nf_la_scale_rows(nf_la *la, nf_mat *y, const float *d)
{
    float *hy = nf_la_host(la, y);
    if (hy) {
        for (int r = 0; r < y->rows; r++) {
            float *p = hy + (size_t)r * y->ld;
            for (int c = 0; c < y->cols; c++)
                p[c] *= d[r];
        }
        return NF_OK;
    }
    for (int r = 0; r < y->rows; r++) {
        nf_mat yr = nf_la_sub(y, r, 0, 1, y->cols);
        int rc = nf_la_axpby(la, 0.0f, NULL, d[r], &yr);
        if (rc)
            return rc;
    }
    return NF_OK;
}

int nf_la_fill(nf_la *la, nf_mat *y, float v) { return nf_la_axpby(la, v, NULL, 0.0f, y); }

int nf_la_dot(nf_la *la, const nf_mat *x, const nf_mat *y, double *out)
{
    size_t n = (size_t)x->rows * (size_t)x->cols;
    if (check_contig(la, x) || (y && check_contig(la, y)))
        return la->err->code;
    nf_dot_op op = {n, x->buf, x->off, y ? y->buf : NULL, y ? y->off : 0};
    TRY_SLOT(dot, &op, out);
    host_copy hx = {0}, hy = {0};
    int rc = fetch(la, x, &hx);
    if (!rc && y)
        rc = fetch(la, y, &hy);
    if (!rc)
        *out = nf_cpu_dot(n, hx.p, y ? hy.p : NULL);
    free(hx.p);
    free(hy.p);
    return rc;
}

int nf_la_adam(nf_la *la, nf_mat *x, const nf_mat *g, nf_mat *m, nf_mat *v, double lr,
               double b1, double b2, double eps, int s)
{
    size_t n = (size_t)x->rows * (size_t)x->cols;
    double bc1 = 1.0 - pow(b1, s);
    double step_size = lr / bc1;
    double bc2_sqrt = sqrt(1.0 - pow(b2, s));
    nf_adam_op op = {n, x->buf, m->buf, v->buf, g->buf, x->off, m->off, v->off, g->off,
                     (float)b1, (float)b2, (float)eps, step_size, bc2_sqrt};
    TRY_SLOT(adam, &op);
    host_copy hx = {0}, hg = {0}, hm = {0}, hv = {0};
    int rc = fetch(la, x, &hx);
    if (!rc)
        rc = fetch(la, g, &hg);
    if (!rc)
        rc = fetch(la, m, &hm);
    if (!rc)
        rc = fetch(la, v, &hv);
    if (!rc) {
        nf_cpu_adam(n, hx.p, hg.p, hm.p, hv.p, (float)b1, (float)b2, (float)eps, step_size,
                    bc2_sqrt);
        rc = store(la, x, &hx);
        if (!rc)
            rc = store(la, m, &hm);
        if (!rc)
            rc = store(la, v, &hv);
    }
    free(hx.p);
    free(hg.p);
    free(hm.p);
    free(hv.p);
    return rc;
}

int nf_la_qr(nf_la *la, nf_mat *a)
{
    nf_qr_op op = {*a};
    TRY_SLOT(qr, &op);
    host_copy h = {0};
    int rc = fetch(la, a, &h);
    if (!rc)
        rc = nf_cpu_qr(a->rows, a->cols, h.p, a->ld, la->err);
    if (!rc)
        rc = store(la, a, &h);
    free(h.p);
    return rc;
}
