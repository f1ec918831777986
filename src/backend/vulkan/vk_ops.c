/*
 * The Vulkan backend's compute slots: each picks a shader variant for the problem (transposes,
 * tile shape, beta == 0, whether the shape is a multiple of the tile), binds the ranges of the
 * buffers it touches and records a dispatch. Shapes, leading dimensions and offsets travel as
 * push constants; only what changes the generated code is a #define (see vk_pipeline.c).
 *
 * Storage-buffer bindings are limited to maxStorageBufferRange (128 MiB on lavapipe and some
 * GPUs): element-wise operations run in chunks, and a GEMM whose operands span more is split
 * along m, n or k until every piece fits.
 */
#include <stdio.h>
#include <string.h>

#include "vk_internal.h"

enum { WG_1D = 256, MAX_GROUPS_1D = 4096 };

/* ---- GEMM ---- */

typedef struct gemm_push {
    uint32_t m, n, k;
    uint32_t lda, ldb, ldc;
    uint32_t offa, offb, offc;
    float alpha, beta;
} gemm_push;

/* one GEMM in element offsets (the pieces of a split one too) */
typedef struct gemm_job {
    int ta, tb, m, n, k;
    float alpha, beta;
    const nf_buffer *a, *b;
    nf_buffer *c;
    size_t offa, offb, offc;
    int lda, ldb, ldc;
} gemm_job;

typedef struct tile_cfg {
    int bm, bn, bk, tm, tn;
} tile_cfg;

/* GPUs: big outputs get 128 x 128 blocks (8 x 8 per invocation), middling ones 64 x 64 (4 x 4:
 * 768 x 768 makes 144 workgroups, about one per SM of a large GPU), small ones 32 x 32 (2 x 2),
 * so that there are enough workgroups to fill the device; always 256 invocations. */
static tile_cfg tiled_cfg(int m, int n)
{
    double mn = (double)m * n;
    if (mn >= 4096.0 * 2048.0)
        return (tile_cfg){128, 128, 16, 8, 8};
    if (mn >= 512.0 * 512.0)
        return (tile_cfg){64, 64, 16, 4, 4};
    return (tile_cfg){32, 32, 16, 2, 2};
}

/* CPU implementations with subgroups: a TM x TN block per subgroup (gemm_f32_sg.comp). 32 x 32
 * measured best on lavapipe (LLVM 15, AVX2): 64 x 32 runs 1.3x faster but takes 10 s instead
 * of 0.3 s to compile, 64 x 64 1.5x and 43 s. */
enum { SG_TM = 32, SG_TN = 32 };
/* the fallback without shared memory or subgroups: TM rows per workgroup, WG lanes each
 * holding TN columns (gemm_f32_reg.comp) */
enum { REG_TM = 8, REG_TN = 8, REG_WG = 8 };

static size_t span_elems(int rows, int cols, int ld)
{
    if (rows <= 0 || cols <= 0)
        return 0;
    return (size_t)(rows - 1) * (size_t)ld + (size_t)cols;
}

typedef struct gemm_sg_push {
    uint32_t m, n, k;
    uint32_t a_rs, a_qs, b_qs, b_cs, ldc;
    uint32_t offa, offb, offc;
    float alpha, beta;
} gemm_sg_push;

static int gemm_dispatch(nf_device *d, const gemm_job *g, const nf_vk_range r[3], nf_error *err)
{
    char defs[160];
    uint32_t gx, gy;
    const char *shader;
    const uint32_t offa = (uint32_t)(r[0].rel / 4), offb = (uint32_t)(r[1].rel / 4),
                   offc = (uint32_t)(r[2].rel / 4);
    gemm_push pc = {
        (uint32_t)g->m, (uint32_t)g->n, (uint32_t)g->k,
        (uint32_t)g->lda, (uint32_t)g->ldb, (uint32_t)g->ldc,
        offa, offb, offc, g->alpha, g->beta,
    };
    gemm_sg_push sp = {
        (uint32_t)g->m, (uint32_t)g->n, (uint32_t)g->k,
        g->ta ? 1u : (uint32_t)g->lda, g->ta ? (uint32_t)g->lda : 1u,
        g->tb ? 1u : (uint32_t)g->ldb, g->tb ? (uint32_t)g->ldb : 1u, (uint32_t)g->ldc,
        offa, offb, offc, g->alpha, g->beta,
    };
    const void *push = &pc;
    uint32_t push_bytes = sizeof pc;
    switch (d->gemm_kind) {
    case NF_VK_GEMM_TILED: {
        tile_cfg t = tiled_cfg(g->m, g->n);
        int aligned = g->m % t.bm == 0 && g->n % t.bn == 0 && g->k % t.bk == 0;
        snprintf(defs, sizeof defs,
                 "TA=%d TB=%d BM=%d BN=%d BK=%d TM=%d TN=%d BETA_ZERO=%d ALIGNED=%d", g->ta,
                 g->tb, t.bm, t.bn, t.bk, t.tm, t.tn, g->beta == 0.0f, aligned);
        shader = "gemm_f32_tiled";
        gx = (uint32_t)((g->n + t.bn - 1) / t.bn);
        gy = (uint32_t)((g->m + t.bm - 1) / t.bm);
        break;
    }
    case NF_VK_GEMM_SG:
        /* one pipeline for every GEMM: lavapipe spends seconds compiling each */
        snprintf(defs, sizeof defs, "TM=%d TN=%d SG=%u", SG_TM, SG_TN, d->subgroup);
        shader = "gemm_f32_sg";
        gx = (uint32_t)((g->n + SG_TN - 1) / SG_TN);
        gy = (uint32_t)((g->m + SG_TM - 1) / SG_TM);
        push = &sp;
        push_bytes = sizeof sp;
        break;
    default: {
        int cols = REG_WG * REG_TN;
        int aligned = g->m % REG_TM == 0 && g->n % cols == 0;
        snprintf(defs, sizeof defs, "TA=%d TB=%d TM=%d TN=%d WG=%d BETA_ZERO=%d ALIGNED=%d",
                 g->ta, g->tb, REG_TM, REG_TN, REG_WG, g->beta == 0.0f, aligned);
        shader = "gemm_f32_reg";
        gx = (uint32_t)((g->n + cols - 1) / cols);
        gy = (uint32_t)((g->m + REG_TM - 1) / REG_TM);
        break;
    }
    }
    const uint32_t *maxg = d->props.limits.maxComputeWorkGroupCount;
    if (gx > maxg[0] || gy > maxg[1])
        return NF_E_UNSUPPORTED;
    const nf_vk_pipeline *pipe;
    int rc = nf_vk_pipeline_get(d, shader, defs, &pipe, err);
    if (rc)
        return rc;
    return nf_vk_dispatch(d, pipe, r, 3, push, push_bytes, gx, gy, 1,
                          2.0 * g->m * g->n * g->k, err);
}

/* where to cut dimension x: half, on a multiple of 128 when that is possible */
static int cut(int x)
{
    int h = x / 2;
    if (h > 128)
        h = h / 128 * 128;
    return h > 0 ? h : 1;
}

static int gemm_run(nf_device *d, const gemm_job *g, int depth, nf_error *err)
{
    int ar = g->ta ? g->k : g->m, ac = g->ta ? g->m : g->k;
    int br = g->tb ? g->n : g->k, bc = g->tb ? g->k : g->n;
    size_t sa = span_elems(ar, ac, g->lda), sb = span_elems(br, bc, g->ldb),
           sc = span_elems(g->m, g->n, g->ldc);
    nf_vk_range r[3];
    int fit_c = nf_vk_range_of(d, g->c, g->offc * 4, sc * 4, &r[2]) == 0;
    int fit_a = 1, fit_b = 1;
    if (g->k > 0) {
        fit_a = nf_vk_range_of(d, g->a, g->offa * 4, sa * 4, &r[0]) == 0;
        fit_b = nf_vk_range_of(d, g->b, g->offb * 4, sb * 4, &r[1]) == 0;
    } else { /* A and B are not read: bind C in their place */
        r[0] = r[1] = r[2];
    }
    if (fit_a && fit_b && fit_c)
        return gemm_dispatch(d, g, r, err);
    if (depth > 60)
        return NF_E_UNSUPPORTED;

    /* split the dimension that shrinks the oversized operand's span */
    char dim; /* 'm', 'n' or 'k' */
    if (!fit_a)
        dim = g->ta ? (g->k > 1 ? 'k' : 'm') : (g->m > 1 ? 'm' : 'k');
    else if (!fit_b)
        dim = g->tb ? (g->n > 1 ? 'n' : 'k') : (g->k > 1 ? 'k' : 'n');
    else
        dim = g->m > 1 ? 'm' : 'n';
    gemm_job p1 = *g, p2 = *g;
    int h;
    switch (dim) {
    case 'm':
        h = cut(g->m);
        if (h >= g->m)
            return NF_E_UNSUPPORTED;
        p1.m = h;
        p2.m = g->m - h;
        p2.offa += g->ta ? (size_t)h : (size_t)h * g->lda;
        p2.offc += (size_t)h * g->ldc;
        break;
    case 'n':
        h = cut(g->n);
        if (h >= g->n)
            return NF_E_UNSUPPORTED;
        p1.n = h;
        p2.n = g->n - h;
        p2.offb += g->tb ? (size_t)h * g->ldb : (size_t)h;
        p2.offc += (size_t)h;
        break;
    default:
        h = cut(g->k);
        if (h >= g->k)
            return NF_E_UNSUPPORTED;
        p1.k = h;
        p2.k = g->k - h;
        p2.offa += g->ta ? (size_t)h * g->lda : (size_t)h;
        p2.offb += g->tb ? (size_t)h : (size_t)h * g->ldb;
        p2.beta = 1.0f; /* the second half adds to what the first wrote */
        break;
    }
    int rc = gemm_run(d, &p1, depth + 1, err);
    if (!rc)
        rc = gemm_run(d, &p2, depth + 1, err);
    return rc;
}

static int view_ok(nf_device *d, const nf_view *v, int rows, int cols, const char *name,
                   nf_error *err)
{
    size_t s = span_elems(rows, cols, v->ld);
    if (!v->buf || (rows > 1 && v->ld < cols) || v->ld < 0 ||
        (s && (v->off > v->buf->size / 4 || s > v->buf->size / 4 - v->off)))
        return nf_error_set(err, NF_E_INTERNAL,
                            "vulkan:%d: gemm view %s (%d x %d, ld %d, offset %zu) outside its buffer",
                            d->common.info.index, name, rows, cols, v->ld, v->off);
    return NF_OK;
}

int nf_vk_gemm(nf_device *d, const nf_gemm_op *op, nf_error *err)
{
    int rc = nf_vk_check_alive(d, err);
    if (rc)
        return rc;
    if (op->m < 0 || op->n < 0 || op->k < 0)
        return nf_error_set(err, NF_E_INTERNAL, "vulkan: gemm with negative sizes");
    if (op->m == 0 || op->n == 0)
        return NF_OK;
    gemm_job g = {
        op->trans_a, op->trans_b, op->m, op->n, op->k, op->alpha, op->beta,
        op->a.buf, op->b.buf, op->c.buf, op->a.off, op->b.off, op->c.off,
        op->a.ld, op->b.ld, op->c.ld,
    };
    /* alpha == 0 or k == 0: C = beta C, A and B are not read (like the CPU backend) */
    if (g.alpha == 0.0f)
        g.k = 0;
    if ((rc = view_ok(d, &op->c, g.m, g.n, "C", err)))
        return rc;
    if (g.k > 0) {
        if ((rc = view_ok(d, &op->a, g.ta ? g.k : g.m, g.ta ? g.m : g.k, "A", err)) ||
            (rc = view_ok(d, &op->b, g.tb ? g.n : g.k, g.tb ? g.k : g.n, "B", err)))
            return rc;
    }
    return gemm_run(d, &g, 0, err);
}

/* ---- element-wise ---- */

/* elements per dispatch so that ranges of elem_bytes-sized elements fit a binding */
static size_t chunk_elems(const nf_device *d, size_t elem_bytes)
{
    size_t c = (size_t)((d->max_range - d->bind_align - 8) / elem_bytes);
    if (c > ((size_t)1 << 28))
        c = (size_t)1 << 28;
    return c;
}

static uint32_t groups_1d(size_t n)
{
    size_t g = (n + WG_1D - 1) / WG_1D;
    if (g > MAX_GROUPS_1D)
        g = MAX_GROUPS_1D;
    return (uint32_t)(g ? g : 1);
}

static int range_ok(nf_device *d, const nf_buffer *buf, size_t byte_off, size_t bytes,
                    const char *what, nf_vk_range *r, nf_error *err)
{
    if (!buf || byte_off > buf->size || bytes > buf->size - byte_off)
        return nf_error_set(err, NF_E_INTERNAL,
                            "vulkan:%d: %s of %zu bytes at byte %zu outside its buffer",
                            d->common.info.index, what, bytes, byte_off);
    if (nf_vk_range_of(d, buf, byte_off, bytes, r))
        return nf_error_set(err, NF_E_INTERNAL, "vulkan:%d: %s range too large",
                            d->common.info.index, what);
    return NF_OK;
}

typedef struct axpby_push {
    uint32_t n, offx, offy;
    float alpha, beta;
} axpby_push;

int nf_vk_axpby(nf_device *d, const nf_axpby_op *op, nf_error *err)
{
    int rc = nf_vk_check_alive(d, err);
    if (rc || op->n == 0)
        return rc;
    char defs[64];
    snprintf(defs, sizeof defs, "HAS_X=%d BETA_ZERO=%d WG=%d", op->x != NULL,
             op->beta == 0.0f, WG_1D);
    const nf_vk_pipeline *pipe;
    if ((rc = nf_vk_pipeline_get(d, "axpby_f32", defs, &pipe, err)))
        return rc;
    size_t chunk = chunk_elems(d, 4);
    for (size_t done = 0; done < op->n && !rc; done += chunk) {
        size_t n = op->n - done < chunk ? op->n - done : chunk;
        nf_vk_range r[2];
        rc = range_ok(d, op->y, (op->y_off + done) * 4, n * 4, "axpby y", &r[1], err);
        if (rc)
            break;
        r[0] = r[1]; /* without x the shader does not read binding 0 */
        if (op->x &&
            (rc = range_ok(d, op->x, (op->x_off + done) * 4, n * 4, "axpby x", &r[0], err)))
            break;
        axpby_push pc = {(uint32_t)n, (uint32_t)(r[0].rel / 4), (uint32_t)(r[1].rel / 4),
                         op->alpha, op->beta};
        rc = nf_vk_dispatch(d, pipe, r, 2, &pc, sizeof pc, groups_1d(n), 1, 1, 0, err);
    }
    return rc;
}

typedef struct dot_push {
    uint32_t n, offx, offy;
} dot_push;

int nf_vk_dot(nf_device *d, const nf_dot_op *op, double *out, nf_error *err)
{
    *out = 0.0;
    int rc = nf_vk_check_alive(d, err);
    if (rc || op->n == 0)
        return rc;
    char defs[64];
    snprintf(defs, sizeof defs, "HAS_Y=%d USE_F64=%d WG=%d", op->y != NULL, d->has_f64, WG_1D);
    const nf_vk_pipeline *pipe;
    if ((rc = nf_vk_pipeline_get(d, "dot_f32", defs, &pipe, err)))
        return rc;
    size_t chunk = chunk_elems(d, 4);
    double total = 0.0;
    for (size_t done = 0; done < op->n && !rc; done += chunk) {
        size_t n = op->n - done < chunk ? op->n - done : chunk;
        nf_vk_range r[3];
        rc = range_ok(d, op->x, (op->x_off + done) * 4, n * 4, "dot x", &r[0], err);
        r[1] = r[0];
        if (!rc && op->y)
            rc = range_ok(d, op->y, (op->y_off + done) * 4, n * 4, "dot y", &r[1], err);
        if (!rc)
            rc = range_ok(d, d->partials, 0, d->partials->size, "dot partials", &r[2], err);
        if (rc)
            break;
        /* at least 4 elements per invocation before the tree, at most NF_VK_PARTIALS groups */
        size_t g = (n + 4 * WG_1D - 1) / (4 * WG_1D);
        if (g > NF_VK_PARTIALS)
            g = NF_VK_PARTIALS;
        dot_push pc = {(uint32_t)n, (uint32_t)(r[0].rel / 4), (uint32_t)(r[1].rel / 4)};
        rc = nf_vk_dispatch(d, pipe, r, 3, &pc, sizeof pc, (uint32_t)g, 1, 1, 0, err);
        size_t esize = d->has_f64 ? 8 : 4;
        if (!rc)
            rc = nf_vk_read_back(d, d->partials, 0, g * esize, err);
        if (rc)
            break;
        const void *p = nf_vk_stage_ptr(d);
        for (size_t i = 0; i < g; i++) {
            if (d->has_f64) {
                double v;
                memcpy(&v, (const char *)p + 8 * i, 8);
                total += v;
            } else {
                float v;
                memcpy(&v, (const char *)p + 4 * i, 4);
                total += v;
            }
        }
    }
    if (!rc)
        *out = total;
    return rc;
}

typedef struct adam_push {
    uint32_t n, offx, offm, offv, offg;
    float b1, b2, eps, step_size, bc2_sqrt;
} adam_push;

int nf_vk_adam(nf_device *d, const nf_adam_op *op, nf_error *err)
{
    int rc = nf_vk_check_alive(d, err);
    if (rc || op->n == 0)
        return rc;
    char defs[32];
    snprintf(defs, sizeof defs, "WG=%d", WG_1D);
    const nf_vk_pipeline *pipe;
    if ((rc = nf_vk_pipeline_get(d, "adam_f32", defs, &pipe, err)))
        return rc;
    size_t chunk = chunk_elems(d, 4);
    for (size_t done = 0; done < op->n && !rc; done += chunk) {
        size_t n = op->n - done < chunk ? op->n - done : chunk;
        nf_vk_range r[4];
        rc = range_ok(d, op->x, (op->x_off + done) * 4, n * 4, "adam x", &r[0], err);
        if (!rc)
            rc = range_ok(d, op->m, (op->m_off + done) * 4, n * 4, "adam m", &r[1], err);
        if (!rc)
            rc = range_ok(d, op->v, (op->v_off + done) * 4, n * 4, "adam v", &r[2], err);
        if (!rc)
            rc = range_ok(d, op->g, (op->g_off + done) * 4, n * 4, "adam g", &r[3], err);
        if (rc)
            break;
        adam_push pc = {(uint32_t)n, (uint32_t)(r[0].rel / 4), (uint32_t)(r[1].rel / 4),
                        (uint32_t)(r[2].rel / 4), (uint32_t)(r[3].rel / 4),
                        op->b1, op->b2, op->eps, (float)op->step_size, (float)op->bc2_sqrt};
        rc = nf_vk_dispatch(d, pipe, r, 4, &pc, sizeof pc, groups_1d(n), 1, 1, 0, err);
    }
    return rc;
}

typedef struct convert_push {
    uint32_t n, src_byte_off, offd;
} convert_push;

int nf_vk_convert(nf_device *d, const nf_convert_op *op, nf_error *err)
{
    int rc = nf_vk_check_alive(d, err);
    if (rc)
        return rc;
    int code;
    size_t es;
    switch (op->src_dtype) {
    case NF_F16: code = 1; es = 2; break;
    case NF_BF16: code = 2; es = 2; break;
    case NF_F64: code = 3; es = 8; break;
    default: return NF_E_UNSUPPORTED;
    }
    if (op->n == 0)
        return NF_OK;
    char defs[48];
    snprintf(defs, sizeof defs, "SRC_DTYPE=%d WG=%d", code, WG_1D);
    const nf_vk_pipeline *pipe;
    if ((rc = nf_vk_pipeline_get(d, "convert_f32", defs, &pipe, err)))
        return rc;
    size_t chunk = chunk_elems(d, 8);
    for (size_t done = 0; done < op->n && !rc; done += chunk) {
        size_t n = op->n - done < chunk ? op->n - done : chunk;
        nf_vk_range r[2];
        rc = range_ok(d, op->src, op->src_byte_off + done * es, n * es, "convert source", &r[0],
                      err);
        if (!rc)
            rc = range_ok(d, op->dst, (op->dst_off + done) * 4, n * 4, "convert destination",
                          &r[1], err);
        if (rc)
            break;
        convert_push pc = {(uint32_t)n, (uint32_t)r[0].rel, (uint32_t)(r[1].rel / 4)};
        rc = nf_vk_dispatch(d, pipe, r, 2, &pc, sizeof pc, groups_1d(n), 1, 1, 0, err);
    }
    return rc;
}
