/*
 * A tensor stored as two low-rank factors (a PEFT LoRA update), read in place from a model
 * file: the shape of the update the methods consume without forming it. Internal.
 */
#ifndef NF_LOWRANK_H
#define NF_LOWRANK_H

#include "../core/error.h"
#include "model.h"

/* tau = scale * B A (B: m x r, A: r x n), or scale * (B A)^T when transpose is set
 * (fan_in_fan_out Conv1D weights, embedding LoRA); m x n is the base tensor's shape. */
typedef struct nf_lowrank {
    const nf_tensor *a, *b;
    int rank;
    int transpose;
    double scale;
} nf_lowrank;

/* Effective factors as float32 host arrays in the orientation of the base tensor:
 * bf (m x r) and af (r x n) with tau = scale * bf af. Malloc'd; free both. */
int nf_lowrank_factors(const nf_lowrank *lr, int m, int n, float **bf, float **af,
                       nf_error *err);

#endif
