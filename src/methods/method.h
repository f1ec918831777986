/*
 * The method interface: what a merge method (a file of src/methods) is given and may call. One
 * continual step in progress (the models, the resolved recipe, the output being written), the
 * per-tensor jobs the scheduler hands to a method, the helpers a job calls (job.c), and the
 * operations a method implements (nf_method_ops). The step driver (src/merge) includes it;
 * nothing here includes src/merge (a PEFT adapter is opaque to the methods). Internal.
 */
#ifndef NF_METHOD_H
#define NF_METHOD_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "../io/model.h"
#include "../io/writer.h"
#include "../linalg/la.h"
#include "../io/lowrank.h"

/* The merge recipe: what must stay the same from step to step of a stream. */
typedef struct nf_params {
    int method;
    int null_rank, task_rank, lora_rank;
    double lr;
    int iters;
    uint64_t seed;
    int compat;
    double rank_tol;
    char preset[32];      /* resolved preset name, or "" when layers is used */
    char *layers;         /* regex, or NULL */
    double scale, keep, alpha;
    int opcm_zero_diag;
} nf_params;

/* State a method carries from step to step in the merged file's metadata. */
typedef struct nf_state {
    double lambda;        /* OPCM's current scale */
    double norm_sum;      /* OPCM: sum of whole-model task-vector norms */
    double norm_count;
} nf_state;

/* Per-tensor figures for the report. */
typedef struct nf_tensor_report {
    int treated;
    int rank_null, rank_task, rank_lora;
    double filter_removed;     /* 1 - |tau P|^2 / |tau|^2 */
    double obj_before, obj_after;
    int trained;
    int gram;                  /* trained with the Gram form of the gradients */
    double seconds;
} nf_tensor_report;

typedef struct nf_run nf_run;

/* Progress over a whole run (a merge spans several steps): when it started, and the
 * estimated work of the steps finished. */
typedef struct nf_run_progress {
    double t_start;
    double work_done;
} nf_run_progress;

typedef struct nf_job {
    nf_run *run;
    size_t idx;                /* tensor index (base order = output order) */
    const nf_tensor *base, *task, *prev; /* prev is NULL at the first step */
    /* A LoRA adapter's update of this tensor, for a method that reads it factored
     * (nf_method_ops.factored); task then points at the base (tau = 0 if ignored) */
    const nf_lowrank *lowrank;
    int treated;
    int pass;
    nf_la *la;
    nf_error *err;
    nf_tensor_report *rep;
} nf_job;

typedef struct nf_method_ops {
    nf_method_info info;
    unsigned params;           /* NF_P_* bits of the recipe fields the method reads */
    int npasses;               /* passes over all tensors; the last one writes the output */
    int (*begin)(nf_run *run);                 /* optional */
    int (*tensor)(nf_job *job);                /* every float tensor, every pass */
    int (*after_pass)(nf_run *run, int pass);  /* optional: combine per-tensor partials */
    int (*end)(nf_run *run);                   /* optional: new state for the metadata */
    void (*cleanup)(nf_run *run);              /* optional */
    /* optional: estimated working memory (bytes) of tensor i's job, for --max-memory; without
     * it a job counts NF_STREAM_MEMORY (chunked element-wise work) */
    uint64_t (*memory)(const nf_run *run, size_t i);
    /* 1: the method reads a LoRA task's low-rank update of a treated tensor through
     * job->lowrank (nf_job_lowrank_mats); every other method, and every other tensor, sees the
     * task densified (base + tau as float32) in job->task */
    int factored;
} nf_method_ops;

#define NF_STREAM_MEMORY (2u << 20)
/* Working memory of a job that holds k float32 copies of tensor i (at least the stream's). */
uint64_t nf_mem_copies(const nf_run *run, size_t i, double k);
/* The same for a method that holds k copies of each matrix and streams everything else. */
uint64_t nf_mem_matrix_copies(const nf_run *run, size_t i, double k);

enum {
    NF_P_NULL_RANK = 1u << 0, NF_P_TASK_RANK = 1u << 1, NF_P_LORA_RANK = 1u << 2,
    NF_P_LR = 1u << 3, NF_P_ITERS = 1u << 4, NF_P_SEED = 1u << 5, NF_P_COMPAT = 1u << 6,
    NF_P_RANK_TOL = 1u << 7, NF_P_SELECT = 1u << 8, NF_P_SCALE = 1u << 9, NF_P_KEEP = 1u << 10,
    NF_P_ALPHA = 1u << 11, NF_P_ZERO_DIAG = 1u << 12,
};

typedef struct nf_adapter nf_adapter; /* src/merge/adapter.h; opaque here */

struct nf_run {
    const nf_method_ops *method;
    nf_params p;
    const nf_options *opts;
    nf_error *err;             /* for begin/after_pass/end: details of a failure */
    int step;                  /* 1-based index of the task being merged */
    int svd_mode;              /* NF_LA_SVD_* this step uses */
    const char *svd_used;      /* its --svd name, recorded as nufilt.svd; NULL: no SVD */
    const char *svd_prev;      /* the name prev recorded, or NULL */
    nf_model *base, *task, *prev;
    nf_adapter *adapter;       /* the task is a PEFT LoRA adapter (task is then NULL) */
    nf_state prev_state;       /* from prev's metadata (zeros at the first step) */
    nf_state state;            /* written into the output */
    size_t ntensors;
    unsigned char *treated;    /* per tensor: selected by the preset or regex */
    nf_out_spec *out;          /* output plan, base order */
    nf_writer *writer;
    nf_tensor_report *reports;
    uint64_t *base_hash;       /* per base tensor: nf_tensor_hash, computed in pass 0 */
    uint64_t fingerprint;      /* the base's, once every tensor is hashed (0 before) */
    const char *out_path;      /* the destination, for messages */
    void *mstate;              /* method-private */
    double *partial;           /* per-tensor partial results, npartial per tensor */
    int npartial;
    char *spill_path;          /* scratch file for methods that revisit results */
    int spill_fd;
    uint64_t *spill_off;       /* per tensor: byte offset of its float32 values (float ones) */
    int want_spill;            /* set by a method's begin(): the step creates the scratch file
                                * (beside the output, already unlinked) before the first pass */
    /* progress */
    nf_run_progress *rp;       /* the run this step belongs to */
    double *work;              /* per tensor: estimated work of one pass over it */
    double work_done;          /* of this step so far */
    double work_step;          /* estimated: this step */
    double work_run;           /* estimated: the whole run (steps done, this one, those to come) */
    pthread_mutex_t lock;
    size_t done;
    uint64_t bytes_done, bytes_total;
    double t_start;
    int npasses;
    int nsteps, step_in_run;
    /* Hugging Face layout */
    uint64_t task_fp;          /* fingerprint of the task model, recorded in nufilt.tasks */
    char **notes;              /* remarks for the report: what was tolerated or left out */
    size_t nnotes;
    /* a merge over several ranks (src/dist): the rank owning each tensor, which alone
     * computes and writes it; NULL in one process */
    int *owner;
    /* rank 0 of several: every rank's figures of this step, for the report */
    struct nf_rank_report *ranks;
    int nranks;
    size_t nmine;              /* with owner: the tensors this rank computes */
};

/* One rank's part of a step (a distributed run's report). */
typedef struct nf_rank_report {
    double seconds;            /* from the step's start to the end of its last pass */
    double svd_s, train_s, flops;
    uint64_t tensors, bytes;   /* tensors computed and written, their bytes */
    double work;               /* their estimated work, of the step's */
    char host[64];
    char device[128];
} nf_rank_report;

/* Adds a remark to the step's report (best effort: dropped when out of memory). */
void nf_run_note(void *run, const char *msg);

/* ---- helpers methods call ---- */

/* Uploads tensor t of the job as float32 (rows x cols = its 2-D shape, or 1 x numel). */
int nf_job_load(nf_job *job, const nf_tensor *t, nf_mat *out);
/* out = t - s (two tensors of the job's shape), rounded once per element as an axpby would.
 * On the CPU backend with float32 inputs s is subtracted straight from its mapping, without
 * a converted copy. */
int nf_job_load_diff(nf_job *job, const nf_tensor *t, const nf_tensor *s, nf_mat *out);
/* The effective factors of a low-rank update as device matrices: bf (m x r), af (r x n),
 * tau = lr->scale bf af in the base tensor's orientation. */
int nf_job_lowrank_mats(nf_job *job, const nf_lowrank *lr, nf_mat *bf, nf_mat *af);
/* m += t (as float32; read in place on the CPU backend when t is float32). */
int nf_job_add(nf_job *job, const nf_tensor *t, nf_mat *m);
/* Reads tensor t as float32 into host memory (malloc'd, numel elements). */
int nf_job_load_host(nf_job *job, const nf_tensor *t, float **out);
/* Final pass: the tensor's output values (float32, numel elements, host memory). */
int nf_job_put_f32(nf_job *job, const float *vals);
/* Final pass: the output from a device matrix. */
int nf_job_put_mat(nf_job *job, const nf_mat *m);
/* Final pass: the base's values, unchanged. */
int nf_job_put_base(nf_job *job);
/* Scratch storage for methods that need a result again in a later pass (float32). */
int nf_job_spill_write(nf_job *job, const float *vals);
int nf_job_spill_read(nf_job *job, float *vals);
int nf_job_dims(const nf_job *job, int *rows, int *cols);

/* Streaming forms for element-wise work on tensors of any size, a range of elements at a
 * time (first = index of the first element, n elements). */
/* Reads elements [first, first + n) of tensor t (a float tensor of the job) as float32. */
int nf_job_read_f32(nf_job *job, const nf_tensor *t, uint64_t first, size_t n, float *dst);
/* Final pass: output elements [first, first + n), converted to the output dtype. */
int nf_job_put_f32_at(nf_job *job, uint64_t first, const float *vals, size_t n);
/* The same ranges of the tensor's float32 slot in the scratch file. */
int nf_job_spill_write_at(nf_job *job, uint64_t first, const float *vals, size_t n);
int nf_job_spill_read_at(nf_job *job, uint64_t first, float *vals, size_t n);

#endif
