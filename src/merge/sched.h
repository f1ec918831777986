/* The host scheduler: one pass of a method over every tensor, spread over worker threads and
 * devices. Internal. */
#ifndef NF_SCHED_H
#define NF_SCHED_H

#include "../methods/method.h"

/* cpu_workers: worker threads for each CPU device (GPU devices get one each). Statistics of
 * the linear-algebra layer are added to *stats. */
int nf_sched_pass(nf_run *run, int pass, nf_device **devs, int ndev, int cpu_workers,
                  nf_la_stats *stats, nf_error *err);

#endif
