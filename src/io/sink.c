/* In-memory outputs (nf_step_models): the writer's calls land in the caller's buffers, or in
 * per-tensor buffers handed to the caller's callback as each tensor completes; the metadata a
 * file would carry goes to the caller at commit. */
#include "sink.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../core/util.h"
#include "../core/dtype.h"

typedef struct sink_tensor {
    unsigned char *dst;   /* the caller's buffer, or ours (owned) */
    int owned;
    uint64_t written;     /* bytes put so far (by the one job that writes this tensor) */
    int done;
} sink_tensor;

struct nf_mem_sink {
    nf_sink s;            /* the caller's, as this library knows it */
    const nf_out_spec *spec;
    size_t n;
    sink_tensor *t;
    nf_kv *meta;
    size_t nmeta;
    pthread_mutex_t lock; /* one tensor_done call at a time */
};

int nf_mem_sink_new(const nf_sink *s, const nf_out_spec *spec, size_t n, nf_mem_sink **out,
                    nf_error *err)
{
    *out = NULL;
    if (!s)
        return nf_error_set(err, NF_E_ARG, "nf_step_models: no output (nf_sink) given");
    if (s->struct_size < offsetof(nf_sink, nbuffers) + sizeof s->nbuffers)
        return nf_error_set(err, NF_E_ARG,
                            "nf_sink.struct_size is %zu: set it to sizeof(nf_sink)",
                            s->struct_size);
    nf_mem_sink *k = calloc(1, sizeof *k);
    if (!k)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    size_t c = s->struct_size < sizeof k->s ? s->struct_size : sizeof k->s;
    memcpy(&k->s, s, c);
    if (k->s.buffers && k->s.nbuffers != n) {
        free(k);
        return nf_error_set(err, NF_E_ARG,
                            "nf_sink: %zu buffers given for the base's %zu tensors",
                            s->nbuffers, n);
    }
    k->t = calloc(n ? n : 1, sizeof *k->t);
    if (!k->t) {
        free(k);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    k->spec = spec;
    k->n = n;
    pthread_mutex_init(&k->lock, NULL);
    for (size_t i = 0; i < n; i++)
        k->t[i].dst = k->s.buffers ? (unsigned char *)k->s.buffers[i] : NULL;
    *out = k;
    return NF_OK;
}

static int finish(nf_mem_sink *k, size_t i, nf_error *err)
{
    sink_tensor *t = &k->t[i];
    int rc = NF_OK;
    t->done = 1;
    if (k->s.tensor_done) {
        const nf_out_spec *o = &k->spec[i];
        nf_tensor_info info;
        memset(&info, 0, sizeof info);
        info.name = o->name;
        info.dtype = o->dtype;
        info.ndim = o->ndim;
        memcpy(info.shape, o->shape, sizeof info.shape);
        info.numel = nf_dtype_size(o->dtype) ? o->nbytes / nf_dtype_size(o->dtype) : 0;
        info.nbytes = o->nbytes;
        pthread_mutex_lock(&k->lock);
        int r = k->s.tensor_done(k->s.user, i, &info, t->dst);
        pthread_mutex_unlock(&k->lock);
        if (r)
            rc = nf_error_set(err, NF_E_CANCELLED, "cancelled by the output's tensor_done "
                              "callback (tensor \"%s\")", o->name);
    }
    if (t->owned) {
        free(t->dst);
        t->dst = NULL;
        t->owned = 0;
    }
    return rc;
}

/* the destination of tensor i, allocated on first use when the caller gave no buffer */
static int dest(nf_mem_sink *k, size_t i, nf_error *err)
{
    sink_tensor *t = &k->t[i];
    if (t->dst)
        return NF_OK;
    size_t nb = (size_t)k->spec[i].nbytes;
    t->dst = malloc(nb ? nb : 1);
    if (!t->dst)
        return nf_error_set(err, NF_E_NOMEM, "out of memory for output tensor \"%s\" (%.1f MB)",
                            k->spec[i].name, (double)nb / 1e6);
    t->owned = 1;
    return NF_OK;
}

int nf_mem_sink_put(nf_mem_sink *k, size_t i, uint64_t off, const void *bytes, size_t len,
                    nf_error *err)
{
    if (i >= k->n || off > k->spec[i].nbytes || len > k->spec[i].nbytes - off || k->t[i].done)
        return nf_error_set(err, NF_E_INTERNAL, "bad write to in-memory output tensor %zu", i);
    int rc = dest(k, i, err);
    if (rc)
        return rc;
    if (len)
        memcpy(k->t[i].dst + off, bytes, len);
    k->t[i].written += len;
    return k->t[i].written == k->spec[i].nbytes ? finish(k, i, err) : NF_OK;
}

int nf_mem_sink_put_f32(nf_mem_sink *k, size_t i, const float *vals, nf_error *err)
{
    if (i >= k->n || k->t[i].done || k->t[i].written)
        return nf_error_set(err, NF_E_INTERNAL, "bad write to in-memory output tensor %zu", i);
    int rc = dest(k, i, err);
    if (rc)
        return rc;
    size_t es = nf_dtype_size(k->spec[i].dtype);
    nf_from_f32(vals, k->spec[i].dtype, k->t[i].dst, es ? (size_t)(k->spec[i].nbytes / es) : 0);
    k->t[i].written = k->spec[i].nbytes;
    return finish(k, i, err);
}

int nf_mem_sink_set_meta(nf_mem_sink *k, const nf_kv *meta, size_t nmeta, nf_error *err)
{
    nf_kv *m = calloc(nmeta ? nmeta : 1, sizeof *m);
    if (!m)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    for (size_t i = 0; i < nmeta; i++) {
        m[i].key = nf_strdup(meta[i].key);
        m[i].value = nf_strdup(meta[i].value);
    }
    for (size_t i = 0; i < k->nmeta; i++) {
        free(k->meta[i].key);
        free(k->meta[i].value);
    }
    free(k->meta);
    k->meta = m;
    k->nmeta = nmeta;
    for (size_t i = 0; i < nmeta; i++)
        if (!m[i].key || !m[i].value)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
    return NF_OK;
}

void nf_mem_sink_free(nf_mem_sink *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->n; i++)
        if (k->t[i].owned)
            free(k->t[i].dst);
    for (size_t i = 0; i < k->nmeta; i++) {
        free(k->meta[i].key);
        free(k->meta[i].value);
    }
    free(k->meta);
    free(k->t);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

int nf_mem_sink_commit(nf_mem_sink *k, nf_error *err)
{
    int rc = NF_OK;
    for (size_t i = 0; i < k->n && rc == NF_OK; i++) {
        if (k->t[i].done)
            continue;
        if (k->spec[i].nbytes == 0) {
            rc = dest(k, i, err);
            if (rc == NF_OK)
                rc = finish(k, i, err);
        } else {
            rc = nf_error_set(err, NF_E_INTERNAL, "in-memory output tensor \"%s\" incomplete",
                              k->spec[i].name);
        }
    }
    for (size_t i = 0; i < k->nmeta && rc == NF_OK; i++)
        if (k->s.metadata && k->s.metadata(k->s.user, k->meta[i].key, k->meta[i].value))
            rc = nf_error_set(err, NF_E_CANCELLED, "cancelled by the output's metadata callback");
    nf_mem_sink_free(k);
    return rc;
}
