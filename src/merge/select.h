/* Tensor selection by preset or regex. Internal. */
#ifndef NF_SELECT_H
#define NF_SELECT_H

#include "nufilt.h"

/* 2-D "*.weight" that is not an embedding table or the LM head. */
int nf_is_linear_weight(const char *name, int ndim);
int nf_preset_matches(const char *preset, const char *name, int ndim);

#endif
