/* The --report JSON: per treated tensor the ranks used, the energy the filter removed, the
 * adapter's objective before and after training and the time; totals per step. Internal. */
#ifndef NF_REPORT_H
#define NF_REPORT_H

#include "../methods/method.h"

typedef struct nf_report nf_report;

int nf_report_new(nf_report **out, nf_error *err);
int nf_report_add_step(nf_report *r, const nf_run *run, const char *task, const char *out,
                       const nf_la_stats *stats, double seconds, const nf_device_info *dev,
                       nf_error *err);
/* Where the report goes; force: it may replace an existing report (the path rules are
 * nf_outpath_check's, applied before any work). */
int nf_report_set_path(nf_report *r, const char *path, int force, nf_error *err);
const char *nf_report_path(const nf_report *r);
/* Writes the report to a temporary beside its path (the directory created if missing), before
 * the output is committed: a report that cannot be written stops the run with nothing
 * committed. nf_report_commit then renames it into place; nf_report_discard removes it. */
int nf_report_prepare(nf_report *r, nf_error *err);
int nf_report_commit(nf_report *r, nf_error *err);
void nf_report_discard(nf_report *r);
void nf_report_free(nf_report *r);

/* Opened models and an in-memory output, in place of the paths of nf_step_in_run. */
typedef struct nf_step_mem {
    nf_model *base, *task, *prev; /* borrowed: not closed by the step */
    const nf_sink *sink;
} nf_step_mem;

/* One step as part of a longer run (step_in_run of nsteps, for progress; rp, when not NULL,
 * carries the run's work from step to step), adding to report. With mem, the paths are NULL
 * and the step reads and writes memory. */
int nf_step_in_run(const char *base, const char *task, const char *prev, const char *out,
                   const nf_options *o, int step_in_run, int nsteps, nf_run_progress *rp,
                   nf_report *report, nf_error *err, const nf_step_mem *mem);

#endif
