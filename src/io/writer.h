/* Writing checkpoints: a safetensors file or a Hugging Face directory (optionally sharded),
 * assembled in a temporary file or directory beside the destination and renamed into place
 * only when complete. Tensors may be written in any order and from several threads. */
#ifndef NF_WRITER_H
#define NF_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "tmpreg.h"
#include "tree.h"

typedef struct nf_out_spec {
    const char *name;
    nf_dtype dtype;
    int ndim;
    int64_t shape[NF_MAX_DIMS];
    uint64_t nbytes;
} nf_out_spec;

typedef struct nf_writer_args {
    const char *out;             /* destination path */
    int as_dir;                  /* Hugging Face directory layout (else one file) */
    const nf_out_spec *tensors;  /* in the order they should be laid out */
    size_t ntensors;
    const nf_kv *meta;           /* __metadata__; final values may be set before commit */
    size_t nmeta;
    uint64_t shard_size;         /* directory layout: start a new shard past this (0 = one) */
    const char *copy_from_dir;   /* copy this directory's non-weight tree (nf_tree_copy) */
    int force;                   /* replace an existing destination (nufilt's kind only) */
    const char *what;            /* the destination in messages: "--out" when NULL */
    nf_note_fn note;             /* optional: what the copy left out, for the report */
    void *note_user;
} nf_writer_args;

typedef struct nf_writer nf_writer;

int nf_writer_open(const nf_writer_args *a, nf_writer **out, nf_error *err);
/* Writes len bytes at byte offset off of tensor i (thread-safe). */
int nf_writer_put(nf_writer *w, size_t i, uint64_t off, const void *bytes, size_t len,
                  nf_error *err);
/* Writes a whole tensor from float32 values, converting to its dtype (thread-safe). */
int nf_writer_put_f32(nf_writer *w, size_t i, const float *vals, nf_error *err);
/* Replaces the metadata written at commit (must be set before nf_writer_commit). */
int nf_writer_set_meta(nf_writer *w, const nf_kv *meta, size_t nmeta, nf_error *err);
/* Directory layout: a file of the output's top level written at commit (a model card, an
 * edited config.json), in place of the base's file of that name. */
int nf_writer_add_file(nf_writer *w, const char *name, const char *data, size_t len,
                       nf_error *err);
/* Directory layout: copies the base's tree (copy_from_dir) and writes the added files into
 * the output now, so that the notes of the copy are known before the commit (which does it
 * otherwise). */
int nf_writer_copy_tree(nf_writer *w, nf_error *err);
int nf_writer_commit(nf_writer *w, nf_error *err);
/* Removes everything written so far; w is freed. Accepts NULL. */
void nf_writer_abort(nf_writer *w);

/* A writer whose tensors and metadata go to the caller's memory (nf_sink) instead of a file:
 * the same calls, nothing on disk. */
int nf_writer_open_memory(const nf_sink *s, const nf_out_spec *spec, size_t n,
                          const nf_kv *meta, size_t nmeta, nf_writer **out, nf_error *err);

/* Makes dst a copy of the finished output src (a file, or a directory tree of our outputs):
 * hard links where the file system allows, copies otherwise; dst appears complete or not at
 * all. */
int nf_link_or_copy(const char *src, const char *dst, nf_error *err);


/* Copies the regular file src to the new file dst, part of the output out (named in messages;
 * dst is a temporary path): no more readable than src, flushed. */
int nf_writer_copy_file(const char *src, const char *dst, const char *out, nf_error *err);

#endif
