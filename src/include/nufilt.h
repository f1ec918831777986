/*
 * nufilt: data-free continual model merging.
 *
 * The public interface of libnufilt. Everything exported starts with nf_ / NF_.
 * Every fallible call returns a status (0 = NF_OK, negative = error, see nufilt_status.h)
 * and fills an nf_error with a message naming the file, the tensor and the problem.
 */
#ifndef NUFILT_H
#define NUFILT_H

#include <stddef.h>
#include <stdint.h>

#include "nufilt_status.h"
#include "nufilt_version.h" /* NF_VERSION_STRING, NF_VERSION_NUMBER (from meson's version) */

#ifdef __cplusplus
extern "C" {
#endif

#if defined(NF_BUILDING_LIBRARY) && defined(__GNUC__)
#define NF_API __attribute__((visibility("default")))
#else
#define NF_API
#endif

#define NF_MAX_DIMS 8

/* ---- errors ---------------------------------------------------------------------------- */

typedef struct nf_error {
    int code;        /* NF_OK or the first error's status */
    char msg[1024];  /* what went wrong, naming the file and tensor where it applies */
} nf_error;

NF_API const char *nf_status_name(int code);
NF_API const char *nf_status_message(int code);
NF_API void nf_error_clear(nf_error *err);

/* The library's version: "MAJOR.MINOR.PATCH", and MAJOR * 1000000 + MINOR * 1000 + PATCH.
 * Compare with NF_VERSION_NUMBER (the header compiled against) to detect a different library
 * at run time. */
NF_API const char *nf_version(void);
NF_API int nf_version_number(void);

/* ---- dtypes ---------------------------------------------------------------------------- */

typedef enum nf_dtype {
    NF_DTYPE_INVALID = 0,
    NF_F64, NF_F32, NF_F16, NF_BF16,
    NF_I64, NF_I32, NF_I16, NF_I8,
    NF_U64, NF_U32, NF_U16, NF_U8,
    NF_BOOL, NF_F8_E4M3, NF_F8_E5M2,
    NF_DTYPE_COUNT
} nf_dtype;

NF_API const char *nf_dtype_name(nf_dtype dt);       /* safetensors spelling: "F32", "BF16" */
NF_API size_t nf_dtype_size(nf_dtype dt);            /* bytes per element, 0 if invalid */
NF_API nf_dtype nf_dtype_from_name(const char *name, size_t len); /* NF_DTYPE_INVALID if unknown */
NF_API int nf_dtype_is_float(nf_dtype dt);           /* F64 F32 F16 BF16 F8_*: merged in float32 */

/* ---- checkpoints ----------------------------------------------------------------------- */

typedef struct nf_model nf_model;

typedef struct nf_tensor_info {
    const char *name;     /* borrowed from the model */
    nf_dtype dtype;
    int ndim;
    int64_t shape[NF_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;
    int shard;            /* index of the file holding it (0 for single files) */
} nf_tensor_info;

/* Opens a .safetensors file or a Hugging Face model directory (model.safetensors, or shards
 * plus model.safetensors.index.json). Every header is validated before any data is touched. */
NF_API int nf_model_open(const char *path, nf_model **out, nf_error *err);
NF_API void nf_model_close(nf_model *m);
NF_API size_t nf_model_tensor_count(const nf_model *m);
NF_API int nf_model_tensor_info(const nf_model *m, size_t i, nf_tensor_info *out);
NF_API long nf_model_find(const nf_model *m, const char *name); /* index, or -1 */
NF_API size_t nf_model_shard_count(const nf_model *m);
NF_API const char *nf_model_shard_path(const nf_model *m, size_t i);
NF_API size_t nf_model_metadata_count(const nf_model *m);
NF_API int nf_model_metadata_at(const nf_model *m, size_t i, const char **key, const char **value);
NF_API const char *nf_model_metadata_get(const nf_model *m, const char *key); /* NULL if absent */

/* ---- models in the caller's memory ------------------------------------------------------ */

/* One tensor that lives in the caller's memory. */
typedef struct nf_mem_tensor {
    const char *name;
    nf_dtype dtype;
    int ndim;                     /* 0 .. NF_MAX_DIMS */
    int64_t shape[NF_MAX_DIMS];
    const void *data;             /* borrowed: valid and unchanged while the model is open */
    const int64_t *strides;       /* byte strides, ndim of them, or NULL for C order (packed).
                                   * A tensor with other strides is copied, packed, once when
                                   * the model is made (its size more memory, that tensor only) */
} nf_mem_tensor;

typedef struct nf_meta_entry {
    const char *key, *value;
} nf_meta_entry;

/* Makes a model of tensors in the caller's memory, usable wherever an opened checkpoint is
 * (nf_step_models, nf_model_tensor_info, nf_select...). The tensors are borrowed, not copied
 * (except strided ones), in the order given; names, shapes and the metadata are copied.
 * name stands for the model in messages and, for a task, in the merge history. meta is what a
 * file would carry in its __metadata__: for a previous merged model, the entries nf_step_models
 * returned with it (nufilt.method, nufilt.params, nufilt.state, nufilt.tasks, ...). Every
 * tensor is checked as a file's would be (name, dtype, shape, size). Close with
 * nf_model_close. */
NF_API int nf_model_from_memory(const char *name, const nf_mem_tensor *tensors, size_t ntensors,
                                const nf_meta_entry *meta, size_t nmeta, nf_model **out,
                                nf_error *err);

/* ---- tensor selection ------------------------------------------------------------------ */

/* Resolves a preset ("auto", "clip", "t5", "llama", "all-linear") for a model: "auto" picks
 * from the tensor names. *resolved is a static string. */
NF_API int nf_preset_resolve(const nf_model *m, const char *preset, const char **resolved,
                             nf_error *err);
/* 1 if the tensor would get the NUFILT update under this preset or regex (regex wins). */
NF_API int nf_tensor_treated(const nf_model *m, size_t i, const char *preset, const char *layers,
                             nf_error *err);
/* The same for every tensor at once: treated[i] for i < the model's tensor count. */
NF_API int nf_select(const nf_model *m, const char *preset, const char *layers,
                     unsigned char *treated, nf_error *err);

/* The selection a merged model records in its metadata (nufilt.params): 1 and kind "preset" or
 * "layers" with its value, or 0 when it records none (or it does not fit value_len). */
NF_API int nf_model_recorded_selection(const nf_model *m, char *kind, size_t kind_len,
                                       char *value, size_t value_len);

/* ---- methods --------------------------------------------------------------------------- */

typedef enum nf_method_id {
    NF_METHOD_NUFILT = 0, NF_METHOD_WA, NF_METHOD_TA, NF_METHOD_TIES, NF_METHOD_MAGMAX,
    NF_METHOD_OPCM, NF_METHOD_WUDI, NF_METHOD_ISOC, NF_METHOD_TSVM,
    NF_METHOD_COUNT
} nf_method_id;

typedef struct nf_method_info {
    const char *name;     /* "nufilt", "wa", ... */
    const char *summary;  /* one line */
    const char *options;  /* the options it reads, with defaults */
    const char *paper;    /* where it comes from */
    int implemented;      /* 0 while a method is listed but not yet available */
} nf_method_info;

NF_API const nf_method_info *nf_method_get(int id);
NF_API int nf_method_from_name(const char *name); /* id, or -1 */

/* ---- options --------------------------------------------------------------------------- */

enum { NF_COMPAT_UNSET = 0, NF_COMPAT_PAPER = 1, NF_COMPAT_REFERENCE = 2 };
/* NF_SVD_GESDD: LAPACK's gesdd (NF_SVD_EXACT is its older name). nf_options_init sets
 * NF_SVD_FAST. */
enum {
    NF_SVD_GESDD = 0, NF_SVD_EXACT = NF_SVD_GESDD, NF_SVD_RANDOMIZED = 1, NF_SVD_GRAM = 2,
    NF_SVD_FAST = 3
};

typedef struct nf_progress {
    int step, nsteps;             /* 1-based continual step, and how many in this run */
    int pass, npasses;            /* 0-based pass over the tensors within the step, and how many
                                   * the method makes in it (most 1; TIES 4, OPCM 2) */
    size_t tensors_done, tensors_total; /* jobs finished in this step, over all passes */
    uint64_t bytes_done, bytes_total;   /* input bytes of the finished jobs, of this pass */
    double elapsed_s;             /* since the step started */
    const char *tensor;           /* the tensor just finished, or NULL */
    /* The whole run (nf_step, or every step of nf_merge), weighted by estimated work: units
     * of about one float32 flop of the treated matrices' compute, the bytes a copy streams
     * counted at a flop-equivalent rate. work_total covers the steps still to come (estimated
     * from the base's shapes and the recipe). */
    double work_done, work_total;
    double run_elapsed_s;         /* since the run started */
    double eta_s;                 /* estimated seconds left in the run; < 0 while unknown */
} nf_progress;

/* Called after every tensor finishes (from the worker thread that finished it, one call at a
 * time). Returning non-zero cancels the run: the workers stop after the tensors they hold,
 * temporary outputs are removed, nothing is committed, and the call returns
 * NF_E_CANCELLED. */
typedef int (*nf_progress_fn)(void *user, const nf_progress *p);

/* Options of nf_step, nf_merge and nf_step_models. Initialise with nf_options_init, which
 * sets struct_size to the size this program was compiled with: a library with more fields
 * gives the missing ones their defaults, so a binding compiled against an older header keeps
 * working against a newer library. New fields are only ever added at the end. A larger
 * struct than the library knows is accepted when its extra bytes are all zero, refused
 * (NF_E_UNSUPPORTED) otherwise.
 *
 * Hyper-parameters left unset (-1, NAN or NULL) take their value from the previous merged
 * model's metadata, or the method's default at the first step. A value that is set and
 * disagrees with the previous merged model is refused (NF_E_STATE). Error messages name these
 * fields in backquotes (`force`, `null_rank`); the nufilt program prints its flags instead. */
typedef struct nf_options {
    size_t struct_size;      /* sizeof(nf_options) as the caller compiled it */
    int method;              /* nf_method_id, -1 = from previous model or nufilt */
    int null_rank;           /* r_p */
    int task_rank;           /* r_v */
    int lora_rank;           /* r_l */
    double lr;
    int iters;
    int64_t seed;            /* -1 = unset; seeds are 0 .. 2^63-1 */
    int compat;              /* NF_COMPAT_* */
    double rank_tol;
    const char *preset;      /* NULL = auto */
    const char *layers;      /* POSIX extended regex; overrides preset */
    double scale;            /* lambda for ta, ties, magmax, isoc, tsvm */
    double keep;             /* TIES kept fraction */
    double alpha;            /* OPCM */
    int opcm_zero_diag;      /* -1 unset, 0 or 1 */

    /* not part of the merge recipe: may change from step to step */
    nf_dtype out_dtype;      /* NF_DTYPE_INVALID = keep each tensor's base dtype */
    uint64_t out_shard_size; /* 0 = like the base */
    int force;               /* replace an existing output */
    int allow_nonfinite;     /* accept NaN/Inf in the inputs, and write it in outputs */
    int threads;             /* 0 = all cores */
    const char *device;      /* "auto", "cpu", "opencl:0", "vulkan:0,cpu", ... NULL = auto */
    int svd;                 /* NF_SVD_* [NF_SVD_FAST] */
    uint64_t max_memory;     /* cap on tensors in flight, bytes; 0 = none */
    const char *report_path; /* JSON report, NULL = none */
    const char *task_name;   /* name recorded for the task; NULL = from its path */
    nf_progress_fn progress; /* NULL = none */
    void *progress_user;
    /* optional, NULL = none */
    const char *command_line;          /* the command that made the output, for its model card */
    const char *const *task_names;     /* nf_merge: a name per task (NULL entries: from the
                                        * path); nf_step uses task_name */
    /* nf_merge with save_steps_dir: continue after the last complete step kept there (its
     * recorded tasks a prefix of the given ones, same base, same recipe) */
    int resume;
} nf_options;

/* Defaults for every field, and struct_size = struct_size. Use the macro. */
NF_API void nf_options_init_sized(nf_options *o, size_t struct_size);
#define nf_options_init(o) nf_options_init_sized((o), sizeof(nf_options))

/* The ranges of the recipe's numeric options: one table that both the command line and the
 * values a previous merged model recorded (its nufilt.params metadata) are checked against. */
typedef struct nf_option_range {
    const char *option;   /* command-line spelling without the dashes: "null-rank" */
    const char *key;      /* its key in nufilt.params: "null_rank" */
    int integer;          /* 1: an integer (a JSON integer literal when recorded) */
    double min, max;      /* valid values: min <= v <= max, bounds excluded where below */
    int min_open, max_open;
    unsigned methods;     /* bit (1u << nf_method_id) for each method that reads it */
} nf_option_range;

/* The table (*count rows). */
NF_API const nf_option_range *nf_option_ranges(size_t *count);
/* The row of an option, by command-line spelling or recorded key; NULL if none. */
NF_API const nf_option_range *nf_option_range_find(const char *option_or_key);
/* 1 if v is finite, in range, and integral where the option is an integer; else 0. */
NF_API int nf_option_range_ok(const nf_option_range *r, double v);
/* "an integer from 0 to 65536", "a number in [0, 1)": for messages. */
NF_API void nf_option_range_describe(const nf_option_range *r, char *buf, size_t n);

/* One continual step: out = merge(base, prev, task). prev NULL means the first step. */
NF_API int nf_step(const char *base, const char *task, const char *prev, const char *out,
                   const nf_options *opts, nf_error *err);

/* The whole stream in order; identical, bit for bit, to the chain of nf_step calls.
 * save_steps_dir (may be NULL) receives every intermediate model as stepNN[.safetensors].
 * With opts->resume, the steps already in save_steps_dir are not merged again: the run goes
 * on from the last one (checked to belong to this stream first; NF_E_STATE otherwise) and its
 * output is bit-identical to an uninterrupted run's. */
NF_API int nf_merge(const char *base, const char *const *tasks, int ntasks, const char *out,
                    const char *save_steps_dir, const nf_options *opts, nf_error *err);

/* Where nf_step_models puts the merged model instead of a file. */
typedef struct nf_sink {
    size_t struct_size;           /* sizeof(nf_sink) as the caller compiled it */
    /* Destinations, one per tensor of the base in its order (nf_model_tensor_info gives the
     * shapes; the dtype is the base's, or nf_options.out_dtype for float tensors): each
     * buffer holds the tensor packed in C order. NULL, or a NULL entry: the library holds
     * that tensor in its own memory until tensor_done has seen it. */
    void *const *buffers;
    size_t nbuffers;
    /* Optional: called once per tensor as soon as it is complete, from the worker thread that
     * finished it, one call at a time; data is the caller's buffer or the library's (valid
     * during the call only). Non-zero cancels the run (NF_E_CANCELLED). */
    int (*tensor_done)(void *user, size_t i, const nf_tensor_info *info, const void *data);
    /* Called for each metadata entry of the merged model, once every tensor is complete: the
     * entries a file would carry, the merge state (nufilt.*) among them. Pass them with the
     * merged tensors to nf_model_from_memory to continue the stream. Non-zero cancels. */
    int (*metadata)(void *user, const char *key, const char *value);
    void *user;
} nf_sink;

/* One continual step between opened models (files or memory): out = merge(base, prev, task),
 * the tensors delivered to the sink. prev NULL is the first step. The models are borrowed
 * and stay open. Bit for bit the same tensors and metadata as nf_step on the same inputs.
 * out_shard_size is refused (NF_E_ARG); a method's scratch file goes to $TMPDIR (or /tmp). */
NF_API int nf_step_models(nf_model *base, nf_model *task, nf_model *prev, const nf_sink *out,
                          const nf_options *opts, nf_error *err);

/* Removes the temporary outputs of every merge in progress in this process. Safe to call from
 * a SIGINT/SIGTERM handler, so that an interrupted run leaves nothing behind. */
NF_API void nf_cleanup_temporaries(void);

/* ---- devices --------------------------------------------------------------------------- */

typedef enum nf_device_type {
    NF_DEVICE_CPU = 0,          /* the native CPU backend (OpenBLAS + LAPACKE) */
    NF_DEVICE_DISCRETE_GPU,
    NF_DEVICE_INTEGRATED_GPU,
    NF_DEVICE_SOFTWARE,         /* PoCL, lavapipe, other CPU implementations of GPU APIs */
    NF_DEVICE_OTHER
} nf_device_type;

typedef struct nf_device_info {
    char api[16];               /* "cpu", "opencl", "vulkan" */
    int index;                  /* within its API: opencl:0, vulkan:1, ... */
    char name[256];
    nf_device_type type;
    uint64_t memory;            /* bytes of device memory (0 if unknown) */
    char driver[128];
} nf_device_info;

NF_API const char *nf_device_type_name(nf_device_type t);
/* Fills up to max entries; *count receives how many devices exist. Backends whose driver is
 * missing are silently absent; why is available from nf_backend_status. */
NF_API int nf_devices_list(nf_device_info *out, int max, int *count, nf_error *err);
/* For each compiled-in API, a line saying whether its driver loaded and why not. */
NF_API int nf_backend_status(int i, const char **api, int *available, const char **why);

/* ---- linear algebra -------------------------------------------------------------------- */

/* The library's SVD of one float32 matrix x (m x n, row-major, read only), on the CPU
 * backend, with an `svd` mode (NF_SVD_*; the same code as a merge's --svd): the top
 * min(rank, min(m, n)) singular triplets (rank <= 0: all of them), *kept set to how many.
 * s (min(m, n) floats) receives the singular values, descending: all of them with
 * NF_SVD_EXACT, the kept ones followed by zeros with the other modes. vt (rank x n,
 * row-major) receives the right singular vectors as rows; u (m x rank, row-major; NULL when
 * not wanted) the left ones, from LAPACK with NF_SVD_EXACT and as x v_i / s_i with the other
 * modes (a zero column where s_i is 0). seed keys NF_SVD_RANDOMIZED's test matrix. Refuses
 * non-finite elements (NF_E_NONFINITE) and bad arguments (NF_E_ARG). Signs are determined
 * up to a common sign per pair (u_i, v_i). */
NF_API int nf_svd_f32(const float *x, int m, int n, int rank, int mode, uint64_t seed, float *s,
                      float *u, float *vt, int *kept, nf_error *err);

#ifdef __cplusplus
}
#endif

#endif
