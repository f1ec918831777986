/*
 * PEFT LoRA adapters as tasks: a directory with adapter_config.json and
 * adapter_model.safetensors, read against the base model it was trained on. For each base
 * tensor it says where the task's values come from: unchanged (tau = 0), a low-rank update
 * tau = scale B A (or its transpose), a full tensor the adapter saved (modules_to_save, biases
 * trained with bias="all"/"lora_only"), or a scaled vector (lora_bias). Internal.
 */
#ifndef NF_ADAPTER_H
#define NF_ADAPTER_H

#include <stdint.h>

#include "../io/lowrank.h"
#include "../io/model.h"

enum {
    NF_TSRC_BASE = 0, /* not in the adapter: the task's value is the base's (tau = 0) */
    NF_TSRC_LOWRANK,  /* tau = the low-rank product */
    NF_TSRC_FULL,     /* the task's value is a tensor of the adapter file */
    NF_TSRC_VEC,      /* tau = scale * vec (lora_B.bias of a lora_bias adapter) */
};

typedef struct nf_task_src {
    int kind;
    nf_lowrank lr;             /* NF_TSRC_LOWRANK */
    const nf_tensor *full;     /* NF_TSRC_FULL */
    const nf_tensor *vec;      /* NF_TSRC_VEC */
    double vscale;
} nf_task_src;

typedef struct nf_adapter {
    char *dir;
    nf_model *file;            /* adapter_model.safetensors */
    nf_task_src *src;          /* per base tensor (base order) */
    size_t nbase;
    size_t nlowrank, nfull;
    uint64_t fingerprint;      /* of the adapter's tensors and its configuration */
} nf_adapter;

/* 1 if path is a directory holding adapter_config.json. */
int nf_adapter_is_dir(const char *path);
/* Reads and validates an adapter directory against base: refuses what cannot be expressed
 * as tau (DoRA, other PEFT types, ...), names every key it cannot place, checks every shape. */
int nf_adapter_open(const char *dir, const nf_model *base, nf_adapter **out, nf_error *err);
void nf_adapter_close(nf_adapter *a);

#endif
