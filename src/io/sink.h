/* In-memory outputs of nf_step_models: where a writer in memory mode puts the tensors and the
 * metadata. Internal; the writer (writer.h) dispatches to it. */
#ifndef NF_SINK_H
#define NF_SINK_H

#include "writer.h"

typedef struct nf_mem_sink nf_mem_sink;

/* spec: the output plan (base order), borrowed for the sink's life. */
int nf_mem_sink_new(const nf_sink *s, const nf_out_spec *spec, size_t n, nf_mem_sink **out,
                    nf_error *err);
int nf_mem_sink_put(nf_mem_sink *k, size_t i, uint64_t off, const void *bytes, size_t len,
                    nf_error *err);
int nf_mem_sink_put_f32(nf_mem_sink *k, size_t i, const float *vals, nf_error *err);
int nf_mem_sink_set_meta(nf_mem_sink *k, const nf_kv *meta, size_t nmeta, nf_error *err);
/* Hands the metadata to the caller and frees k (also on failure). */
int nf_mem_sink_commit(nf_mem_sink *k, nf_error *err);
void nf_mem_sink_free(nf_mem_sink *k);

#endif
