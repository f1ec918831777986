/* The merge recipe (resolved hyper-parameters) and its metadata form. Internal. */
#ifndef NF_RECIPE_H
#define NF_RECIPE_H

#include "../methods/method.h"
#include "../methods/registry.h"

/* Resolves the recipe of a step from the options, the base (for the preset) and the previous
 * merged model's metadata (NULL at the first step); gives the 1-based step index and the
 * state the previous step recorded. Conflicts are NF_E_STATE with a clear message. */
int nf_recipe_resolve(const nf_options *o, const nf_model *base, const nf_model *prev,
                      nf_params *out, int *step, nf_state *prev_state, nf_error *err);
void nf_params_free(nf_params *p);
/* malloc'd JSON text */
char *nf_params_json(const nf_params *p);
char *nf_state_json(const nf_state *s);

/* The caller's options (any struct_size from an older or newer header) as a full struct of
 * this library's layout, defaults where the caller's struct ends; NULL gives the defaults. */
int nf_options_import(const nf_options *in, nf_options *out, nf_error *err);

#endif
