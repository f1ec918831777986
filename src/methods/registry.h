/* The registry of merge methods: each method's operations by its nf_method_id. The public
 * side (nf_method_get, nf_method_from_name) is declared in nufilt.h. Internal. */
#ifndef NF_REGISTRY_H
#define NF_REGISTRY_H

#include "method.h"

/* The operations of method id (nf_method_id), or NULL if there is none. */
const nf_method_ops *nf_method_ops_get(int id);

#endif
