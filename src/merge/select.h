/* Tensor selection by preset or regex. Internal. */
#ifndef NF_SELECT_H
#define NF_SELECT_H

#include "nufilt.h"

/* 2-D "*.weight" that is not an embedding table or the LM head. */
int nf_is_linear_weight(const char *name, int ndim);
int nf_preset_matches(const char *preset, const char *name, int ndim);
/* treated[i] for every tensor of m (layers, when not NULL, overrides preset). */
int nf_select(const nf_model *m, const char *preset, const char *layers, unsigned char *treated,
              nf_error *err);

#endif
