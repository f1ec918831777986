/* Filling an nf_error: internal to the library (callers only read nf_error). */
#ifndef NF_ERROR_H
#define NF_ERROR_H

#include "nufilt.h"

/* Records the first error only (later ones are usually its consequences); returns code.
 * Messages name the file, the tensor and the problem, and options by their nf_options field
 * names in backquotes (`force`), which the nufilt program turns into its flags. */
int nf_error_set(nf_error *err, int code, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#endif
