/*
 * The registry of merge methods. A method is one file of this directory defining
 * `const nf_method_ops nf_method_NAME` (method.h) and one line below; its id is NF_METHOD_ID in
 * nufilt.h's nf_method_id, where new ids go before NF_METHOD_COUNT.
 */
#include "registry.h"

#include <string.h>

/* id (NF_METHOD_*), name (nf_method_<name>) */
#define NF_METHODS(X)                                                                            \
    X(NUFILT, nufilt)                                                                            \
    X(WA, wa)                                                                                    \
    X(TA, ta)                                                                                    \
    X(TIES, ties)                                                                                \
    X(MAGMAX, magmax)                                                                            \
    X(OPCM, opcm)                                                                                \
    X(WUDI, wudi)                                                                                \
    X(ISOC, isoc)                                                                                \
    X(TSVM, tsvm)

#define DECLARE(id, name) extern const nf_method_ops nf_method_##name;
NF_METHODS(DECLARE)
#undef DECLARE

#define ENTRY(id, name) [NF_METHOD_##id] = &nf_method_##name,
static const nf_method_ops *const methods[NF_METHOD_COUNT] = {NF_METHODS(ENTRY)};
#undef ENTRY

#define ONE(id, name) +1
_Static_assert(0 NF_METHODS(ONE) == NF_METHOD_COUNT, "one registry line per nf_method_id");
#undef ONE

const nf_method_ops *nf_method_ops_get(int id)
{
    return id >= 0 && id < NF_METHOD_COUNT ? methods[id] : NULL;
}

const nf_method_info *nf_method_get(int id)
{
    const nf_method_ops *m = nf_method_ops_get(id);
    return m ? &m->info : NULL;
}

int nf_method_from_name(const char *name)
{
    for (int i = 0; name && i < NF_METHOD_COUNT; i++)
        if (strcmp(methods[i]->info.name, name) == 0)
            return i;
    return -1;
}
