/* A step or merge over MPI ranks (src/dist): what the program does differently on each rank. */
#ifndef NFH_DIST_H
#define NFH_DIST_H

#include "args.h"

/* "rank R of N: " on a rank of a distributed run, "" otherwise: the prefix of messages. */
extern char cli_rank_prefix[48];

/* Joins the ranks when a launcher started several, and adapts the options to this rank: only
 * rank 0 shows progress, prints and writes the report; each rank's default threads are its
 * share of the node's cores; --device auto picks the node's GPU by the local rank. Returns 0,
 * or prints why the ranks could not be joined and returns 1. */
int cli_dist_begin(int *argc, char ***argv);
int cli_dist_adapt(cli *c);
/* After the command: a failure on one rank ends every rank (after this one's temporaries
 * were removed); success leaves the ranks. Returns rc. */
int cli_dist_end(int rc);

#endif
