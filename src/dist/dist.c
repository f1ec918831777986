/* The library's side of a distributed merge: the table in use (one process unless the program
 * installs another), the split of tensors among ranks, and the join of per-tensor values. */
#include "dist.h"

#include <stdlib.h>
#include <string.h>

#include "../include/nufilt_status.h"

static int one_join(void *buf, size_t len)
{
    (void)buf;
    (void)len;
    return NF_OK;
}

static int one_sum(uint64_t *v, size_t n)
{
    (void)v;
    (void)n;
    return NF_OK;
}

static int one_gather(const void *mine, size_t len, void *all)
{
    if (all && len)
        memcpy(all, mine, len);
    return NF_OK;
}

static int one_barrier(void) { return NF_OK; }

static const nf_dist one_process = {0, 1, 0, 1, one_join, one_sum, one_join, one_gather,
                                    one_barrier};
static const nf_dist *installed = &one_process;

void nf_dist_install(const nf_dist *d) { installed = d ? d : &one_process; }

const nf_dist *nf_dist_get(void) { return installed; }

int nf_dist_active(void) { return installed->size > 1; }

typedef struct cost_item {
    double cost;
    size_t i;
} cost_item;

static int by_cost(const void *pa, const void *pb)
{
    const cost_item *a = pa, *b = pb;
    if (a->cost != b->cost)
        return a->cost > b->cost ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

void nf_dist_split(const double *cost, size_t n, int size, int *owner)
{
    if (size <= 1 || n == 0) {
        for (size_t i = 0; i < n; i++)
            owner[i] = 0;
        return;
    }
    cost_item *it = malloc(n * sizeof *it);
    double *load = calloc((size_t)size, sizeof *load);
    if (!it || !load) {
        /* without memory for the sort: round robin, as deterministic */
        for (size_t i = 0; i < n; i++)
            owner[i] = (int)(i % (size_t)size);
        free(it);
        free(load);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        it[i].cost = cost[i] > 0 ? cost[i] : 0.0;
        it[i].i = i;
    }
    qsort(it, n, sizeof *it, by_cost);
    for (size_t k = 0; k < n; k++) {
        int best = 0;
        for (int r = 1; r < size; r++)
            if (load[r] < load[best])
                best = r;
        owner[it[k].i] = best;
        load[best] += it[k].cost;
    }
    free(it);
    free(load);
}

int nf_dist_join_owned(void *items, size_t n, size_t width, const int *owner)
{
    if (!owner || !nf_dist_active() || n == 0 || width == 0)
        return NF_OK;
    const nf_dist *d = nf_dist_get();
    unsigned char *b = items;
    for (size_t i = 0; i < n; i++)
        if (owner[i] != d->rank)
            memset(b + i * width, 0, width);
    return d->join(items, n * width);
}
