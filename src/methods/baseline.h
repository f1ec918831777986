/*
 * Shared pieces of the continual baselines (docs/baselines.md, "Exact update rules"): the tensor
 * classes of the spec, a chunked element-wise stream over one tensor (bounded memory whatever
 * the tensor's size), the first-step rules, and loading the two task vectors of a step.
 * Internal to src/methods.
 */
#ifndef NF_BASELINE_H
#define NF_BASELINE_H

#include "method.h"

/* elements per chunk of the element-wise stream (per input: 256 KiB of float32) */
#define BL_CHUNK 65536

/* "linear weight": a 2-D "*.weight" (or "weight") whose name has no "embed". Unlike
 * nf_is_linear_weight (NUFILT's presets), an LM head counts: the spec names only embedding
 * tables as the exception. */
int bl_is_linear_weight(const nf_tensor *t);

/* inputs to read, and what to do with c->out */
enum {
    BL_BASE = 1u, BL_PREV = 2u, BL_TASK = 4u, BL_SPILL = 8u,
    BL_OUT = 16u,   /* an out buffer for the callback (e.g. to spill), not written */
    BL_WRITE = 32u, /* c->out is written as the output's elements (implies BL_OUT) */
};

typedef struct bl_chunk {
    uint64_t first;          /* index of the chunk's first element in the tensor */
    size_t n;
    const float *base, *prev, *task, *spill; /* the inputs asked for (others NULL) */
    float *out;              /* n values (BL_OUT, BL_WRITE) */
} bl_chunk;

typedef int (*bl_fn)(nf_job *job, void *ctx, const bl_chunk *c);

/* Streams the job's tensor in chunks of BL_CHUNK elements, in element order: reads the
 * inputs named by the BL_* bits as float32 (BL_PREV is skipped at the first step), calls fn,
 * and with BL_WRITE writes c->out as the output's elements. */
int bl_stream(nf_job *job, unsigned flags, bl_fn fn, void *ctx);

/* First-step rules: M(1) = theta_1, and M(1) = theta_0 + scale tau_1 (float32). */
int bl_first_task(nf_job *job);
int bl_first_scaled(nf_job *job, float scale);

/* Other tensors of wudi, isoc and tsvm: M(t) = theta_0 + scale (m + tau) / 2. */
int bl_mean(nf_job *job, float scale);

/* Device matrices of the step's task vectors: m = M(t-1) - theta_0, tau = theta_t - theta_0;
 * w0 (the base) is kept when not NULL. On failure nothing stays allocated. */
int bl_load_deltas(nf_job *job, nf_mat *w0, nf_mat *m, nf_mat *tau);

#endif
