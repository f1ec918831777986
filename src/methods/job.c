/* What a method does with one tensor's job: load inputs as float32, write the output, spill
 * results it needs again in a later pass. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/dtype.h"
#include "../core/util.h"
#include "method.h"

int nf_job_dims(const nf_job *job, int *rows, int *cols)
{
    const nf_tensor *t = job->base;
    if (t->ndim == 2) {
        if (t->shape[0] > 0x7fffffff || t->shape[1] > 0x7fffffff)
            return nf_error_set(job->err, NF_E_UNSUPPORTED,
                                "tensor \"%s\": dimensions beyond 2^31 are not supported",
                                t->name);
        *rows = (int)t->shape[0];
        *cols = (int)t->shape[1];
    } else {
        if (t->numel > 0x7fffffff)
            return nf_error_set(job->err, NF_E_UNSUPPORTED,
                                "tensor \"%s\": more than 2^31 elements is not supported",
                                t->name);
        *rows = 1;
        *cols = (int)t->numel;
    }
    return NF_OK;
}

int nf_job_load(nf_job *job, const nf_tensor *t, nf_mat *out)
{
    int rows = 0, cols = 0;
    int rc = nf_job_dims(job, &rows, &cols);
    if (rc)
        return rc;
    if ((rc = nf_la_alloc(job->la, rows, cols, out)))
        return rc;
    rc = nf_la_upload_convert(job->la, out, t->data, t->dtype);
    if (rc)
        nf_la_free(job->la, out);
    return rc;
}

/* Host float32 storage of m when the tensors can be read in place: the matrix lives in host
 * memory (the CPU backend) and t is float32 at a 4-byte aligned address. */
static float *host_f32(nf_job *job, const nf_mat *m, const nf_tensor *t)
{
    float *h = nf_la_host(job->la, m);
    if (!h || (m->rows > 1 && m->ld != m->cols) || t->dtype != NF_F32 ||
        ((uintptr_t)t->data & 3u) != 0)
        return NULL;
    return h;
}

int nf_job_load_diff(nf_job *job, const nf_tensor *t, const nf_tensor *s, nf_mat *out)
{
    int rows = 0, cols = 0;
    int rc = nf_job_dims(job, &rows, &cols);
    if (!rc)
        rc = nf_la_alloc(job->la, rows, cols, out);
    if (rc)
        return rc;
    float *h = host_f32(job, out, t);
    if (h && host_f32(job, out, s)) {
        /* one rounding per element, as the axpby below */
        const float *a = (const float *)(const void *)t->data;
        const float *b = (const float *)(const void *)s->data;
        for (uint64_t i = 0; i < t->numel; i++)
            h[i] = a[i] - b[i];
        return NF_OK;
    }
    nf_mat tmp;
    rc = nf_la_upload_convert(job->la, out, t->data, t->dtype);
    if (!rc && !(rc = nf_job_load(job, s, &tmp))) {
        rc = nf_la_axpby(job->la, -1.0f, &tmp, 1.0f, out);
        nf_la_free(job->la, &tmp);
    }
    if (rc)
        nf_la_free(job->la, out);
    return rc;
}

int nf_job_lowrank_mats(nf_job *job, const nf_lowrank *lr, nf_mat *bf, nf_mat *af)
{
    int m = 0, n = 0;
    int rc = nf_job_dims(job, &m, &n);
    float *hb = NULL, *ha = NULL;
    memset(bf, 0, sizeof *bf);
    memset(af, 0, sizeof *af);
    if (!rc) rc = nf_lowrank_factors(lr, m, n, &hb, &ha, job->err);
    if (!rc) rc = nf_la_alloc(job->la, m, lr->rank, bf);
    if (!rc) rc = nf_la_alloc(job->la, lr->rank, n, af);
    if (!rc) rc = nf_la_upload(job->la, bf, hb);
    if (!rc) rc = nf_la_upload(job->la, af, ha);
    free(hb);
    free(ha);
    if (rc) {
        nf_la_free(job->la, bf);
        nf_la_free(job->la, af);
    }
    return rc;
}

int nf_job_add(nf_job *job, const nf_tensor *t, nf_mat *m)
{
    float *h = host_f32(job, m, t);
    if (h) {
        const float *a = (const float *)(const void *)t->data;
        for (uint64_t i = 0; i < t->numel; i++)
            h[i] += a[i];
        return NF_OK;
    }
    nf_mat tmp;
    int rc = nf_job_load(job, t, &tmp);
    if (rc)
        return rc;
    rc = nf_la_axpby(job->la, 1.0f, &tmp, 1.0f, m);
    nf_la_free(job->la, &tmp);
    return rc;
}

int nf_job_load_host(nf_job *job, const nf_tensor *t, float **out)
{
    float *p = malloc((t->numel ? t->numel : 1) * sizeof *p);
    if (!p)
        return nf_error_set(job->err, NF_E_NOMEM, "out of memory loading \"%s\"", t->name);
    nf_to_f32(t->data, t->dtype, p, t->numel);
    *out = p;
    return NF_OK;
}

int nf_job_put_f32(nf_job *job, const float *vals)
{
    return nf_job_put_f32_at(job, 0, vals, (size_t)job->base->numel);
}

/* Every float output passes here after rounding to its dtype: NaN or Inf in it (a merged
 * value too large for F16, a method that overflowed) is an error naming the tensor and the
 * first such element, and the step writes nothing, unless --allow-nonfinite. bytes holds n
 * values of dtype dt from element first; vals the float32 values they were rounded from. */
static int check_output(nf_job *job, uint64_t first, const void *bytes, nf_dtype dt,
                        const float *vals, size_t n)
{
    if (job->run->opts->allow_nonfinite || !nf_count_nonfinite(bytes, dt, n))
        return NF_OK;
    size_t es = nf_dtype_size(dt), k = 0;
    while (k + 1 < n && !nf_count_nonfinite((const unsigned char *)bytes + k * es, dt, 1))
        k++;
    const nf_out_spec *o = &job->run->out[job->idx];
    float v = vals[k];
    char why[96];
    if (isfinite(v))
        snprintf(why, sizeof why, "the merged value %g does not fit %s", (double)v,
                 nf_dtype_name(dt));
    else
        snprintf(why, sizeof why, "the merged value is %s", isnan(v) ? "NaN" : "infinite");
    return nf_error_set(job->err, NF_E_NONFINITE,
                        "%s: tensor \"%s\" of the output would hold NaN or Inf at element %llu "
                        "(%s); nothing written (`allow_nonfinite` writes it anyway)",
                        job->run->out_path ? job->run->out_path : "output", o->name,
                        (unsigned long long)(first + k), why);
}

int nf_job_put_mat(nf_job *job, const nf_mat *m)
{
    float *h = nf_la_host(job->la, m);
    if (h && (m->rows <= 1 || m->ld == m->cols))
        return nf_job_put_f32(job, h);
    size_t n = (size_t)m->rows * (size_t)m->cols;
    float *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!tmp)
        return nf_error_set(job->err, NF_E_NOMEM, "out of memory");
    int rc = nf_la_download(job->la, m, tmp);
    if (!rc)
        rc = nf_job_put_f32(job, tmp);
    free(tmp);
    return rc;
}

#define COPY_CHUNK (1u << 18)

int nf_job_put_base(nf_job *job)
{
    const nf_tensor *t = job->base;
    const nf_out_spec *o = &job->run->out[job->idx];
    if (o->dtype == t->dtype)
        return nf_writer_put(job->run->writer, job->idx, 0, t->data, (size_t)t->nbytes,
                             job->err);
    /* another float dtype was asked for: convert in chunks */
    size_t es_in = nf_dtype_size(t->dtype), es_out = nf_dtype_size(o->dtype);
    float *f = malloc(COPY_CHUNK * sizeof *f);
    unsigned char *b = malloc(COPY_CHUNK * es_out);
    int rc = (!f || !b) ? nf_error_set(job->err, NF_E_NOMEM, "out of memory") : NF_OK;
    for (uint64_t s = 0; s < t->numel && rc == NF_OK; s += COPY_CHUNK) {
        size_t c = (size_t)(t->numel - s < COPY_CHUNK ? t->numel - s : COPY_CHUNK);
        nf_to_f32(t->data + s * es_in, t->dtype, f, c);
        nf_from_f32(f, o->dtype, b, c);
        rc = check_output(job, s, b, o->dtype, f, c);
        if (rc == NF_OK)
            rc = nf_writer_put(job->run->writer, job->idx, s * es_out, b, c * es_out, job->err);
    }
    free(f);
    free(b);
    return rc;
}

static int spill_check(nf_job *job, uint64_t first, size_t n)
{
    nf_run *run = job->run;
    if (run->spill_fd < 0 || !run->spill_off)
        return nf_error_set(job->err, NF_E_INTERNAL, "no scratch file for this method");
    if (first > job->base->numel || n > job->base->numel - first)
        return nf_error_set(job->err, NF_E_INTERNAL, "scratch range out of tensor \"%s\"",
                            job->base->name);
    return NF_OK;
}

int nf_job_spill_write_at(nf_job *job, uint64_t first, const float *vals, size_t n)
{
    nf_run *run = job->run;
    int rc = spill_check(job, first, n);
    if (rc)
        return rc;
    if (nf_pwrite_all(run->spill_fd, vals, n * sizeof(float),
                   run->spill_off[job->idx] + first * sizeof(float)))
        return nf_error_set(job->err, NF_E_IO, "%s: cannot write scratch data: %s",
                            run->spill_path, strerror(errno));
    return NF_OK;
}

int nf_job_spill_read_at(nf_job *job, uint64_t first, float *vals, size_t n)
{
    nf_run *run = job->run;
    int rc = spill_check(job, first, n);
    if (rc)
        return rc;
    size_t len = n * sizeof(float);
    char *p = (char *)vals;
    uint64_t off = run->spill_off[job->idx] + first * sizeof(float);
    while (len) {
        ssize_t r = pread(run->spill_fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return nf_error_set(job->err, NF_E_IO, "%s: cannot read scratch data%s%s",
                                run->spill_path, r < 0 ? ": " : " (short file)",
                                r < 0 ? strerror(errno) : "");
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return NF_OK;
}

int nf_job_spill_write(nf_job *job, const float *vals)
{
    return nf_job_spill_write_at(job, 0, vals, (size_t)job->base->numel);
}

int nf_job_spill_read(nf_job *job, float *vals)
{
    return nf_job_spill_read_at(job, 0, vals, (size_t)job->base->numel);
}

int nf_job_read_f32(nf_job *job, const nf_tensor *t, uint64_t first, size_t n, float *dst)
{
    if (!nf_dtype_is_float(t->dtype) || first > t->numel || n > t->numel - first)
        return nf_error_set(job->err, NF_E_INTERNAL, "bad read of tensor \"%s\"", t->name);
    nf_to_f32(t->data + first * nf_dtype_size(t->dtype), t->dtype, dst, n);
    return NF_OK;
}

#define PUT_CHUNK 16384

int nf_job_put_f32_at(nf_job *job, uint64_t first, const float *vals, size_t n)
{
    const nf_out_spec *o = &job->run->out[job->idx];
    size_t es = nf_dtype_size(o->dtype);
    if (!nf_dtype_is_float(o->dtype) || first > job->base->numel ||
        n > job->base->numel - first)
        return nf_error_set(job->err, NF_E_INTERNAL, "bad write of tensor \"%s\"", o->name);
    if (o->dtype == NF_F32) {
        int rc = check_output(job, first, vals, NF_F32, vals, n);
        return rc ? rc : nf_writer_put(job->run->writer, job->idx, first * 4, vals, n * 4, job->err);
    }
    unsigned char *b = malloc((n < PUT_CHUNK ? (n ? n : 1) : PUT_CHUNK) * es);
    if (!b)
        return nf_error_set(job->err, NF_E_NOMEM, "out of memory");
    int rc = NF_OK;
    for (size_t s = 0; s < n && rc == NF_OK; s += PUT_CHUNK) {
        size_t c = n - s < PUT_CHUNK ? n - s : PUT_CHUNK;
        nf_from_f32(vals + s, o->dtype, b, c);
        rc = check_output(job, first + s, b, o->dtype, vals + s, c);
        if (rc == NF_OK)
            rc = nf_writer_put(job->run->writer, job->idx, (first + s) * es, b, c * es, job->err);
    }
    free(b);
    return rc;
}

uint64_t nf_mem_copies(const nf_run *run, size_t i, double k)
{
    double b = k * (double)run->base->tensors[i].numel * sizeof(float);
    return b > NF_STREAM_MEMORY ? (uint64_t)b : NF_STREAM_MEMORY;
}

uint64_t nf_mem_matrix_copies(const nf_run *run, size_t i, double k)
{
    return run->base->tensors[i].ndim == 2 ? nf_mem_copies(run, i, k) : NF_STREAM_MEMORY;
}
