/* The progress bar on standard error. */
#ifndef NFH_PROGRESS_H
#define NFH_PROGRESS_H

#include "nufilt.h"

typedef struct progress {
    double start;       /* first callback of the run (a merge spans several steps) */
    double last_draw;
    int drawn;
    int width;
} progress;

int progress_cb(void *user, const nf_progress *p);
/* Ends the bar's line, if one was drawn. */
void progress_done(progress *pr);

#endif
