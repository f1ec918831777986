/*
 * The program's side of a distributed run: started by a launcher (mpirun, srun), the program
 * joins the other ranks before running a command and installs the collectives for the library
 * (dist.h). Two implementations, chosen by meson's `mpi` feature: dist_mpi.c (Open MPI) and
 * dist_none.c (always one process). Part of the nufilt program, never of the library.
 */
#ifndef NF_DIST_LAUNCH_H
#define NF_DIST_LAUNCH_H

#include <stddef.h>

/* Joins the ranks when a launcher started more than one (its environment says so), and
 * installs their collectives (nf_dist_install). 0: one process, or joined; -1: the ranks
 * could not be joined (why says so). */
int nf_dist_start(int *argc, char ***argv, char *why, size_t whylen);
/* Ends every rank of the run (not only this one) with status code; returns only in a single
 * process. Call after this rank's temporaries are removed. */
void nf_dist_abort_all(int code);
/* Leaves the ranks after a successful command (every rank calls it). */
void nf_dist_stop(void);
/* The MPI library this program was built with, for messages ("" without). */
const char *nf_dist_library(void);

#endif
