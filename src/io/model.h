/* Opened checkpoints: memory-mapped safetensors files, validated, addressed by tensor. */
#ifndef NF_MODEL_H
#define NF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "nufilt.h"
#include "../core/error.h"

#define NF_MAX_HEADER_BYTES (100u * 1024u * 1024u)
/* __metadata__ entries per file. Real files have a handful ("format", a few model-card keys);
 * the bound keeps every per-entry pass over them cheap. */
#define NF_MAX_METADATA_ENTRIES 4096

typedef struct nf_tensor {
    char *name;
    nf_dtype dtype;
    int ndim;
    int64_t shape[NF_MAX_DIMS];
    uint64_t numel, nbytes;
    int shard;
    uint64_t begin;                 /* offset of the data within its file */
    const unsigned char *data;      /* borrowed from the mapping (or the caller's memory) */
    int in_memory;                  /* data is the caller's (nf_model_from_memory): never
                                     * prefaulted or released */
} nf_tensor;

typedef struct nf_shard {
    char *path;
    unsigned char *map;
    size_t size;
} nf_shard;

typedef struct nf_kv {
    char *key, *value;
} nf_kv;

struct nf_model {
    char *path;            /* as given */
    int is_dir;
    int indexed;           /* directory with model.safetensors.index.json */
    nf_shard *shards;
    size_t nshards;
    nf_tensor *tensors;    /* in file order: shard, then offset */
    size_t ntensors;
    size_t *by_name;       /* indices sorted by name */
    nf_kv *meta;           /* __metadata__ of the first file */
    size_t nmeta;
    void **owned;          /* nf_model_from_memory: packed copies of strided tensors */
    size_t nowned;
    size_t nadopted;       /* the last tensors, taken from another model (nf_model_adopt) */
};

/* Parses and validates one safetensors image; tensors are appended to m (shard index s). */
int nf_st_parse(nf_model *m, int s, nf_error *err);
/* Parses and validates a model.safetensors.index.json text: a "weight_map" object of tensor
 * name -> plain shard file name. Gives the parsed document and the sorted unique shard names
 * (pointers into it; free the array, then the document). */
struct nf_json;
int nf_index_parse(const char *text, size_t len, const char *index_path, struct nf_json **root,
                   const char ***files, size_t *nfiles, nf_error *err);
const nf_tensor *nf_model_tensor(const nf_model *m, const char *name);
/* Maps in all pages of t's data with one system call where the kernel offers it, instead of
 * a page fault every few pages as the data is first read. Best effort, no error. */
void nf_tensor_prefault(const nf_tensor *t);
/* Unmaps t's pages from this process once nothing will read them again (the file stays
 * mapped): the resident set stays at a few tensors, and the final unmapping has little left
 * to tear down. Best effort, no error. */
void nf_tensor_release(const nf_tensor *t);
/* Appends to m a tensor of another model (t, which must outlive m's use of it: its data is
 * borrowed), under the same name; for the integer buffers one side of a merge lacks. */
int nf_model_adopt(nf_model *m, const nf_tensor *t, nf_error *err);
/* Sum of tensor bytes. */
uint64_t nf_model_total_bytes(const nf_model *m);

/* The identity of a model's content (the base fingerprint recorded as nufilt.base): names,
 * dtypes, shapes and every byte of every tensor, hashed in name order (so the same tensors in
 * other shards give the same value). 64 bits, not cryptographic. */
uint64_t nf_hash64(const void *data, size_t n, uint64_t seed);
/* nf_hash64 of all of t's bytes: the per-tensor part, computed where the tensor is read. */
uint64_t nf_tensor_hash(const nf_tensor *t);
/* The fingerprint from the per-tensor hashes (tensor_hash[i] of m->tensors[i]). */
uint64_t nf_model_fingerprint_of(const nf_model *m, const uint64_t *tensor_hash);
/* The same, reading every tensor here (0 when out of memory). */
uint64_t nf_model_fingerprint(const nf_model *m);
/* nufilt.base as written: the fingerprint's format, then its 16 hex digits. */
#define NF_FINGERPRINT_PREFIX "data64:"

#endif
