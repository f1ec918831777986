/* nufilt built with MPI: when mpirun or srun started several ranks, the collectives of dist.h
 * over MPI_COMM_WORLD. Only the main thread calls MPI (MPI_THREAD_FUNNELED). */
#include "launch.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../include/nufilt_status.h"
#include "dist.h"

static nf_dist world;
static int joined;

/* MPI counts are int: large buffers go in pieces */
#define PIECE ((size_t)1 << 28)

static int status_of(int mpi_rc) { return mpi_rc == MPI_SUCCESS ? NF_OK : NF_E_IO; }

static int mpi_join(void *buf, size_t len)
{
    unsigned char *b = buf;
    for (size_t o = 0; o < len; o += PIECE) {
        size_t c = len - o < PIECE ? len - o : PIECE;
        int rc = MPI_Allreduce(MPI_IN_PLACE, b + o, (int)c, MPI_BYTE, MPI_BOR, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return status_of(rc);
    }
    return NF_OK;
}

static int mpi_sum_u64(uint64_t *v, size_t n)
{
    for (size_t o = 0; o < n; o += PIECE) {
        size_t c = n - o < PIECE ? n - o : PIECE;
        int rc = MPI_Allreduce(MPI_IN_PLACE, v + o, (int)c, MPI_UINT64_T, MPI_SUM,
                               MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return status_of(rc);
    }
    return NF_OK;
}

static int mpi_bcast(void *buf, size_t len)
{
    unsigned char *b = buf;
    for (size_t o = 0; o < len; o += PIECE) {
        size_t c = len - o < PIECE ? len - o : PIECE;
        int rc = MPI_Bcast(b + o, (int)c, MPI_BYTE, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return status_of(rc);
    }
    return NF_OK;
}

static int mpi_gather(const void *mine, size_t len, void *all)
{
    if (len > PIECE)
        return NF_E_LIMIT;
    return status_of(MPI_Gather(mine, (int)len, MPI_BYTE, all, (int)len, MPI_BYTE, 0,
                                MPI_COMM_WORLD));
}

static int mpi_barrier(void) { return status_of(MPI_Barrier(MPI_COMM_WORLD)); }

/* Started by a launcher for more than one rank: Open MPI's mpirun, or a PMI/PMIx launcher
 * (srun --mpi=pmix). Without one the program does not touch MPI at all (a singleton
 * MPI_Init would start a runtime for nothing); a Slurm allocation's environment alone
 * (SLURM_NTASKS in a batch script) does not count. */
static int expected_size(void)
{
    const char *v = getenv("OMPI_COMM_WORLD_SIZE");
    if (!v)
        v = getenv("PMI_SIZE");
    return v ? atoi(v) : 0;
}

static int launched(void)
{
    int n = expected_size();
    return n ? n > 1 : getenv("PMIX_RANK") != NULL;
}

int nf_dist_start(int *argc, char ***argv, char *why, size_t whylen)
{
    if (joined || !launched())
        return 0;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        snprintf(why, whylen, "MPI_Init_thread failed");
        return -1;
    }
    joined = 1;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world.size);
    MPI_Comm node;
    world.local_rank = 0;
    world.local_size = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world.rank, MPI_INFO_NULL,
                            &node) == MPI_SUCCESS) {
        MPI_Comm_rank(node, &world.local_rank);
        MPI_Comm_size(node, &world.local_size);
        MPI_Comm_free(&node);
    }
    if (world.size < expected_size()) {
        /* srun without a working PMI plugin: every task would believe it is alone and
         * write the whole output at once with the others */
        snprintf(why, whylen,
                 "the launcher started %d ranks but MPI sees %d",
                 expected_size(), world.size);
        MPI_Finalize();
        joined = 0;
        return -1;
    }
    world.join = mpi_join;
    world.sum_u64 = mpi_sum_u64;
    world.bcast = mpi_bcast;
    world.gather = mpi_gather;
    world.barrier = mpi_barrier;
    nf_dist_install(&world);
    return 0;
}

void nf_dist_abort_all(int code)
{
    if (joined) {
        fflush(stdout);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
    }
}

void nf_dist_stop(void)
{
    if (joined) {
        nf_dist_install(NULL);
        MPI_Finalize();
        joined = 0;
    }
}

const char *nf_dist_library(void)
{
    static char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    if (!v[0] && MPI_Get_library_version(v, &n) == MPI_SUCCESS) {
        char *nl = strchr(v, ',');
        if (nl)
            *nl = '\0';
    }
    return v;
}
