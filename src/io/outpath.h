/* What nufilt may write over: the rules for output paths (--out, --report, --save-steps and
 * its stepNN models), in one place. Used before any work by nf_step and nf_merge, by the
 * writer when it opens and commits, and by the report writer. Internal.
 *
 * 1. A target is never an input, nor resolves to one (symbolic links followed, hard links
 *    compared by device and inode), nor lies inside an input directory, nor holds an input:
 *    refused with or without --force.
 * 2. Targets do not overlap each other (equal, or one inside the other), except that the
 *    --save-steps directory may hold other targets.
 * 3. An existing target is refused without --force. With it, only nufilt's kind of output is
 *    replaced: a symbolic link (replaced, never followed); for a file output a regular
 *    safetensors file; for a directory output a directory of which every entry, at any
 *    depth, is a safetensors weight or index file or README.md at its top, or a path that
 *    also exists in the base model directory at the same place (what the output copies
 *    from it); for a report a regular JSON file. Anything else is refused naming it. */
#ifndef NF_OUTPATH_H
#define NF_OUTPATH_H

#include <stddef.h>

#include "nufilt.h"

typedef enum nf_out_kind {
    NF_OUT_FILE,      /* a .safetensors output */
    NF_OUT_DIR,       /* a Hugging Face directory output */
    NF_OUT_REPORT,    /* the --report JSON */
    NF_OUT_STEPS_DIR, /* the --save-steps directory: written into, never replaced */
} nf_out_kind;

typedef struct nf_out_target {
    const char *path;
    const char *what; /* for messages: "--out", "--report", "--save-steps step02" */
    nf_out_kind kind;
} nf_out_target;

typedef struct nf_out_input {
    const char *path;
    const char *what; /* for messages: "the base model", "task 2" */
} nf_out_input;

typedef struct nf_outpath_args {
    const nf_out_input *inputs;
    size_t ninputs;
    const nf_out_target *targets;
    size_t ntargets;
    const char *base_dir; /* the base model when it is a directory, else NULL */
    int force;
} nf_outpath_args;

/* Rules 1 to 3 for every target; the first conflict is the error (NF_E_EXISTS, or NF_E_ARG
 * for an overlap that no option allows). */
int nf_outpath_check(const nf_outpath_args *a, nf_error *err);

/* Rule 3 alone for one target: NF_OK when path is absent, or may be replaced (force). */
int nf_outpath_replaceable(const char *path, const char *what, nf_out_kind kind,
                           const char *base_dir, int force, nf_error *err);

/* Whether the file open as fd starts as a safetensors file does: an 8-byte length, then a
 * JSON object that fits in the file. */
int nf_looks_like_safetensors(int fd);

#endif
