/* nufilt built without MPI: always one process (the library's default table). */
#include "launch.h"

#include <stdlib.h>

int nf_dist_start(int *argc, char ***argv, char *why, size_t whylen)
{
    (void)argc;
    (void)argv;
    (void)why;
    (void)whylen;
    return 0;
}

void nf_dist_abort_all(int code) { (void)code; }

void nf_dist_stop(void) {}

const char *nf_dist_library(void) { return ""; }
