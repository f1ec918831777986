/*
 * Running one merge over several processes (MPI ranks): the few collectives the library needs,
 * behind a table of functions the program installs. The library never links MPI: it sees one
 * process (rank 0 of 1, every collective a no-op) unless the program installs a table, which
 * the nufilt program does when it was started by mpirun or srun (src/dist/dist_mpi.c). The
 * library API, the Python package and libnufilt's other users are unchanged. Internal.
 *
 * What the ranks share: each tensor has one owner (nf_dist_split, the same on every rank); a
 * rank computes and writes only the tensors it owns. Whole-model quantities are joined by
 * collectives whose result does not depend on the number of ranks: per-tensor values are
 * joined bit for bit (nf_dist_join: every rank zeroes the entries it does not own, then a
 * bitwise OR), integer counts are summed (nf_dist_sum_u64, exact), so every rank then combines
 * them in tensor order as one process would.
 *
 * Failures: the collectives return NF_OK or an error; a rank that fails does not return into
 * a collective but ends every rank (the program's abort_all), so a collective never waits for
 * a rank that gave up.
 */
#ifndef NF_DIST_H
#define NF_DIST_H

#include <stddef.h>
#include <stdint.h>

typedef struct nf_dist {
    int rank, size;             /* this process, of size processes */
    int local_rank, local_size; /* on this node */
    /* in place, on every rank: the bitwise OR of every rank's len bytes */
    int (*join)(void *buf, size_t len);
    /* in place, on every rank: the sums (mod 2^64) of every rank's n values */
    int (*sum_u64)(uint64_t *v, size_t n);
    /* rank 0's len bytes to every rank */
    int (*bcast)(void *buf, size_t len);
    /* every rank's len bytes, in rank order, into all (size x len bytes; rank 0 only, NULL
     * elsewhere) */
    int (*gather)(const void *mine, size_t len, void *all);
    int (*barrier)(void);
} nf_dist;

/* Installs the table (the program, before any step; NULL: one process again). The table must
 * outlive every step. */
void nf_dist_install(const nf_dist *d);
/* The table in use: never NULL (one process when none is installed). */
const nf_dist *nf_dist_get(void);
/* 1 when more than one rank shares the merge. */
int nf_dist_active(void);

/* The owner of each of n items of estimated cost cost[i], for size ranks: the items in
 * decreasing cost (ties by index) each go to the rank with the least cost so far (ties: the
 * lowest rank). Deterministic: every rank computes the same owners from the same costs. */
void nf_dist_split(const double *cost, size_t n, int size, int *owner);

/* nf_dist_join over n items of width bytes each: items not owned by this rank are zeroed
 * first, so that every rank ends with the owner's bytes of each item. owner NULL: nothing to
 * do (one process). */
int nf_dist_join_owned(void *items, size_t n, size_t width, const int *owner);

#endif
