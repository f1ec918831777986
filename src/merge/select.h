/* Tensor selection by preset or regex. Internal. */
#ifndef NF_SELECT_H
#define NF_SELECT_H

#include "nufilt.h"

/* 2-D "*.weight" that is not an embedding table or the LM head. */
int nf_is_linear_weight(const char *name, int ndim);
int nf_preset_matches(const char *preset, const char *name, int ndim);

/* Limits on a --layers expression, checked before it is compiled (see select.c). */
#define NF_REGEX_MAX_LEN 1024
#define NF_REGEX_MAX_COUNT 255
#define NF_REGEX_MAX_NODES 10000
#define NF_STR_(x) #x
#define NF_STR(x) NF_STR_(x)
/* 0 if re may be given to regcomp; -1 with why filled in (a phrase: "a back-reference (at
 * byte 3)") otherwise. */
int nf_regex_check(const char *re, char *why, size_t n);

#endif
