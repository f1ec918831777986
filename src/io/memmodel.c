/* Models whose tensors live in the caller's memory (nf_model_from_memory): the same nf_model
 * as an opened checkpoint, without shards, its tensors borrowing the caller's pointers. */
#include <stdlib.h>
#include <string.h>

#include "../core/util.h"
#include "model.h"

static int cmp_name(const void *a, const void *b, void *ctx)
{
    const nf_tensor *t = ctx;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

/* 1 if the strides describe the packed C-order layout of the tensor */
static int packed(const nf_mem_tensor *s, size_t es)
{
    int64_t want = (int64_t)es;
    for (int d = s->ndim - 1; d >= 0; d--) {
        if (s->shape[d] != 1 && s->strides[d] != want)
            return 0;
        want *= s->shape[d];
    }
    return 1;
}

/* Copies a strided tensor into dst, packed in C order. */
static void pack(const nf_mem_tensor *s, size_t es, uint64_t numel, unsigned char *dst)
{
    int64_t idx[NF_MAX_DIMS] = {0};
    const unsigned char *src = s->data;
    for (uint64_t k = 0; k < numel; k++) {
        int64_t off = 0;
        for (int d = 0; d < s->ndim; d++)
            off += idx[d] * s->strides[d];
        memcpy(dst + k * es, src + off, es);
        for (int d = s->ndim - 1; d >= 0; d--) {
            if (++idx[d] < s->shape[d])
                break;
            idx[d] = 0;
        }
    }
}

static int has_control(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; u[i]; i++)
        if (u[i] < 0x20 || u[i] == 0x7F || (u[i] == 0xC2 && u[i + 1] >= 0x80 && u[i + 1] <= 0x9F))
            return 1;
    return 0;
}

static int add_tensor(nf_model *m, const char *mname, const nf_mem_tensor *s, nf_error *err)
{
    nf_tensor *t = &m->tensors[m->ntensors];
    if (!s->name || !s->name[0] || has_control(s->name) || strlen(s->name) > 4096)
        return nf_error_set(err, NF_E_ARG,
                            "%s: tensor %zu has no name, or a name with control characters or "
                            "longer than 4096 bytes",
                            mname, m->ntensors);
    size_t es = nf_dtype_size(s->dtype);
    if (s->dtype <= NF_DTYPE_INVALID || s->dtype >= NF_DTYPE_COUNT || !es)
        return nf_error_set(err, NF_E_ARG, "%s: tensor \"%s\": invalid dtype %d", mname,
                            s->name, (int)s->dtype);
    if (s->ndim < 0 || s->ndim > NF_MAX_DIMS)
        return nf_error_set(err, NF_E_ARG, "%s: tensor \"%s\": %d dimensions (0 to %d allowed)",
                            mname, s->name, s->ndim, NF_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < s->ndim; d++)
        if (s->shape[d] < 0 || !nf_mul_u64(numel, (uint64_t)s->shape[d], &numel))
            return nf_error_set(err, NF_E_ARG, "%s: tensor \"%s\": bad shape (dimension %d is "
                                "%lld)", mname, s->name, d, (long long)s->shape[d]);
    uint64_t nbytes;
    if (!nf_mul_u64(numel, es, &nbytes) || nbytes > (uint64_t)SIZE_MAX / 2)
        return nf_error_set(err, NF_E_ARG, "%s: tensor \"%s\": too large", mname, s->name);
    if (!s->data && nbytes)
        return nf_error_set(err, NF_E_ARG, "%s: tensor \"%s\": no data pointer", mname, s->name);
    t->name = nf_strdup(s->name);
    if (!t->name)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    m->ntensors++;
    t->dtype = s->dtype;
    t->ndim = s->ndim;
    memcpy(t->shape, s->shape, sizeof t->shape);
    for (int d = s->ndim; d < NF_MAX_DIMS; d++)
        t->shape[d] = 0;
    t->numel = numel;
    t->nbytes = nbytes;
    t->in_memory = 1;
    t->data = s->data;
    if (s->strides && numel > 1 && !packed(s, es)) {
        unsigned char *copy = malloc((size_t)nbytes);
        if (!copy)
            return nf_error_set(err, NF_E_NOMEM,
                                "%s: tensor \"%s\": out of memory packing its strided data "
                                "(%.1f MB)",
                                mname, s->name, (double)nbytes / 1e6);
        pack(s, es, numel, copy);
        m->owned[m->nowned++] = copy;
        t->data = copy;
    }
    return NF_OK;
}

int nf_model_from_memory(const char *name, const nf_mem_tensor *tensors, size_t ntensors,
                         const nf_meta_entry *meta, size_t nmeta, nf_model **out, nf_error *err)
{
    if (!out)
        return nf_error_set(err, NF_E_ARG, "nf_model_from_memory: no place for the model");
    *out = NULL;
    if (!name || !name[0])
        name = "(memory)";
    if (ntensors == 0 || !tensors)
        return nf_error_set(err, NF_E_FORMAT, "%s: the model holds no tensors", name);
    if (nmeta && !meta)
        return nf_error_set(err, NF_E_ARG, "%s: %zu metadata entries but no array", name, nmeta);
    if (nmeta > NF_MAX_METADATA_ENTRIES)
        return nf_error_set(err, NF_E_LIMIT, "%s: %zu metadata entries (at most %d)", name,
                            nmeta, NF_MAX_METADATA_ENTRIES);
    nf_model *m = calloc(1, sizeof *m);
    if (!m)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    int rc = NF_OK;
    m->path = nf_strdup(name);
    m->tensors = calloc(ntensors, sizeof *m->tensors);
    m->by_name = malloc(ntensors * sizeof *m->by_name);
    m->owned = calloc(ntensors, sizeof *m->owned);
    m->meta = calloc(nmeta ? nmeta : 1, sizeof *m->meta);
    if (!m->path || !m->tensors || !m->by_name || !m->owned || !m->meta) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < ntensors && rc == NF_OK; i++)
        rc = add_tensor(m, name, &tensors[i], err);
    for (size_t i = 0; i < nmeta && rc == NF_OK; i++) {
        if (!meta[i].key || !meta[i].value) {
            rc = nf_error_set(err, NF_E_ARG, "%s: metadata entry %zu has no key or value", name,
                              i);
            break;
        }
        m->meta[i].key = nf_strdup(meta[i].key);
        m->meta[i].value = nf_strdup(meta[i].value);
        m->nmeta++;
        if (!m->meta[i].key || !m->meta[i].value)
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    if (rc)
        goto fail;
    for (size_t i = 0; i < ntensors; i++)
        m->by_name[i] = i;
    qsort_r(m->by_name, ntensors, sizeof *m->by_name, cmp_name, m->tensors);
    for (size_t i = 1; i < ntensors; i++)
        if (!strcmp(m->tensors[m->by_name[i - 1]].name, m->tensors[m->by_name[i]].name)) {
            rc = nf_error_set(err, NF_E_FORMAT, "%s: tensor \"%s\" appears twice", name,
                              m->tensors[m->by_name[i]].name);
            goto fail;
        }
    *out = m;
    return NF_OK;
fail:
    nf_model_close(m);
    return rc;
}
