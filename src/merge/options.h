/*
 * Every option of nf_options, described once: the recipe's hyper-parameters (NF_RECIPE_OPTIONS:
 * what a merged model records in nufilt.params and a stream keeps) and the run's settings
 * (NF_RUN_OPTIONS: may change from step to step). Everything else is derived from these two
 * tables: nf_options_init's "unset" values, each method's defaults, the public table of ranges
 * (nf_option_ranges), validation of given and recorded values, nufilt.params written and read,
 * the nufilt program's parser, --help and `nufilt help --markdown` (the option tables of the
 * docs, checked by tests/e2e/docs_options.py), and the Python package's keyword arguments
 * (checked by tests/python/test_options.py, which reads this file).
 *
 * Adding an option: one row here and its nf_options field at the end of the struct (the public
 * ABI); a recipe option also takes an NF_P_* bit (src/methods/method.h), an nf_params field,
 * and the bit in the .params of the methods that read it. Internal.
 */
#ifndef NF_OPTIONS_H
#define NF_OPTIONS_H

#include <stddef.h>

#include "nufilt.h"

/* How an option's value is held, parsed and recorded. */
enum {
    NF_OPT_INT,    /* int; -1 unset; ranged; recorded as a JSON integer */
    NF_OPT_NUM,    /* double; NAN unset; ranged; recorded with 17 significant digits */
    NF_OPT_SEED,   /* int64_t in nf_options (-1 unset), uint64_t in nf_params; ranged */
    NF_OPT_ENUM,   /* int, 0 unset, the value's name at its index in names; recorded by name */
    NF_OPT_BOOL,   /* int; -1 unset; a switch with a --no- form; recorded true/false */
    NF_OPT_PRESET, /* const char * (NULL = auto); nf_params.preset is the resolved name */
    NF_OPT_LAYERS, /* const char *, a POSIX extended regex; overrides the preset */
    /* the run's settings (not recorded) */
    NF_OPT_FLAG,   /* int, 0 or 1, a switch with a --no- form */
    NF_OPT_STR,    /* const char *, NULL unset */
    NF_OPT_SIZE,   /* uint64_t bytes, 0 unset; "2GB", "500MB", "1GiB" */
    NF_OPT_CHOICE, /* an enumeration the program parses by name (dtype, svd) */
};

/* Which commands of the program take a run option. */
enum { NF_OPT_STEP = 1, NF_OPT_MERGE = 2, NF_OPT_BOTH = 3 };

#define NF_M(id) (1u << NF_METHOD_##id)

/* The recipe. Columns: NF_P_* bit, the nf_options/nf_params field (and nufilt.params key),
 * the program's flag, kind, metavariable, integer, min, max, min excluded, max excluded, the
 * methods that read it, its default, and what it is.
 * The default: one value for every method, or "METHOD VALUE, ..., VALUE" (the last, bare value
 * for the methods not named). The order is the order of nufilt.params (preset/layers last) and
 * of the public table of ranges (the ranged rows). */
#define NF_RECIPE_OPTIONS(X)                                                                       \
    X(NULL_RANK, null_rank, "null-rank", INT, "N", 1, 0, 65536, 0, 0, NF_M(NUFILT), "128",         \
      "r_p, rank of the null-space filter; 0 = no filter")                                         \
    X(TASK_RANK, task_rank, "task-rank", INT, "N", 1, 0, 65536, 0, 0, NF_M(NUFILT), "8",           \
      "r_v, rank of the task projection in the adapter's objective")                               \
    X(LORA_RANK, lora_rank, "lora-rank", INT, "N", 1, 0, 65536, 0, 0, NF_M(NUFILT), "64",          \
      "r_l, rank of the adapter; 0 = filter only")                                                 \
    X(LR, lr, "lr", NUM, "X", 0, 0, 1, 0, 0, NF_M(NUFILT) | NF_M(WUDI), "wudi 1e-5, 1e-3",         \
      "Adam learning rate")                                                                        \
    X(ITERS, iters, "iters", INT, "N", 1, 0, 1000000, 0, 0, NF_M(NUFILT) | NF_M(WUDI), "50",       \
      "Adam iterations per matrix")                                                                \
    X(SEED, seed, "seed", SEED, "N", 1, 0, 9223372036854775807.0, 0, 0, NF_M(NUFILT), "0",         \
      "seed of the adapter's random initialisation")                                               \
    X(COMPAT, compat, "compat", ENUM, "MODE", 0, 0, 0, 0, 0, NF_M(NUFILT), "paper",                \
      "paper (M(1) = task 1, rank-deficient prev handled) or reference (reproduce the "            \
      "published code, first-step artefact included)")                                             \
    X(RANK_TOL, rank_tol, "rank-tol", NUM, "X", 0, 0, 1, 0, 1, NF_M(NUFILT), "1e-6",               \
      "with --compat paper: drop singular vectors below X times the largest")                      \
    X(SELECT, preset, "preset", PRESET, "NAME", 0, 0, 0, 0, 0, NF_M(NUFILT), "auto",               \
      "the tensors treated: auto (from the tensor names), clip (attn, fc1), t5 "                   \
      "(SelfAttention, EncDecAttention, DenseReluDense), llama (self_attn, mlp), all-linear "      \
      "(2-D *.weight but embeddings and lm_head)")                                                 \
    X(SELECT, layers, "layers", LAYERS, "REGEX", 0, 0, 0, 0, 0, NF_M(NUFILT), "",                  \
      "treat the 2-D tensors whose name matches this POSIX extended regex (overrides "             \
      "--preset); a preset or regex that selects no tensor is refused")                            \
    X(SCALE, scale, "scale", NUM, "X", 0, -100, 100, 0, 0,                                         \
      NF_M(TA) | NF_M(TIES) | NF_M(MAGMAX) | NF_M(ISOC) | NF_M(TSVM),                              \
      "ta 0.3, ties 0.3, magmax 0.5, 1", "lambda, the task vectors' weight; not 0 for magmax")     \
    X(KEEP, keep, "keep", NUM, "X", 0, 0, 1, 1, 0, NF_M(TIES), "0.2",                              \
      "fraction of entries kept by the trim")                                                      \
    X(ALPHA, alpha, "alpha", NUM, "X", 0, 0, 1, 0, 0, NF_M(OPCM), "0.5",                           \
      "share of the spectrum projected out")                                                       \
    X(ZERO_DIAG, opcm_zero_diag, "opcm-zero-diag", BOOL, NULL, 0, 0, 0, 0, 0, NF_M(OPCM), "off",   \
      "also remove the diagonal of the projected task vector")

/* The run's settings. Columns: the nf_options field, the program's flag, kind, metavariable,
 * min and max (NF_OPT_INT), the commands that take it, its default (as words), what it is. */
#define NF_RUN_OPTIONS(Y)                                                                          \
    Y(out_dtype, "dtype", CHOICE, "TYPE", 0, 0, NF_OPT_BOTH,                                       \
      "keep: each tensor's dtype in the base",                                                     \
      "output dtype of float tensors: keep, f32, f16 or bf16 (round to nearest even); a "          \
      "directory output's config.json says so (torch_dtype, dtype); in a merge every step "        \
      "reads the previous one in this dtype")                                                      \
    Y(out_shard_size, "out-shard-size", SIZE, "SIZE", 0, 0, NF_OPT_BOTH,                           \
      "one file; for a sharded base, shards of at most its largest shard file's size",             \
      "directory output: start a new shard past SIZE (e.g. 2GB, 500MB)")                           \
    Y(force, "force", FLAG, NULL, 0, 0, NF_OPT_BOTH, "",                                           \
      "replace an existing output, report or saved step, if it is nufilt's kind: a "               \
      "safetensors file, a directory holding only safetensors weights, their index, README.md "    \
      "and files the base directory also has, a JSON report (never an input; see "                 \
      "docs/security.md)")                                                                         \
    Y(allow_nonfinite, "allow-nonfinite", FLAG, NULL, 0, 0, NF_OPT_BOTH, "",                       \
      "merge models that hold NaN or Inf, and write an output that does (by default both are "     \
      "refused, naming the tensor and the element)")                                               \
    Y(device, "device", STR, "LIST", 0, 0, NF_OPT_BOTH, "auto: real GPUs, else the CPU",           \
      "compute devices: auto, cpu, opencl:N, vulkan:N or a comma list (`nufilt devices`)")         \
    Y(svd, "svd", CHOICE, "MODE", 0, 0, NF_OPT_BOTH, "fast",                                       \
      "how NUFILT finds its top singular vectors. fast: the top vectors as eigenvectors of "       \
      "the Gram matrix in float32, sharing the task vector's Gram matrix with the adapter's "      \
      "training; gram is used for a matrix whose 128th singular value is below 1% of the "         \
      "largest; the fastest accurate mode. gram: the same in double precision. gesdd (alias "      \
      "exact): LAPACK's float32 gesdd, the method's definition, slower and on wide matrices "      \
      "further from a float64 SVD than gram and fast. (--compat reference uses gesdd for gram "    \
      "and fast.) randomized: range finder, 10 extra columns, 2 power iterations; approximate "    \
      "where the spectrum has no gap at the cut: its merged task vectors were up to 0.15 "         \
      "(median 0.13, relative) from gesdd's on a generated ViT-B/32 step, 0.18 (0.15) on a "       \
      "generated LLaMA-style one, and 0.46 (0.31) after 3 steps of real all-MiniLM-L6-v2 "         \
      "fine-tunes. The mode is recorded in the output; a step may use another mode than the "      \
      "previous one (--report says so). See docs/performance.md")                                  \
    Y(threads, "threads", INT, "N", 1, 4096, NF_OPT_BOTH, "all cores", "worker threads")           \
    Y(max_memory, "max-memory", SIZE, "SIZE", 0, 0, NF_OPT_BOTH, "no cap",                         \
      "cap on the estimated working memory of the tensors in flight (e.g. 500MB); fewer run "      \
      "at once, and a tensor that alone needs more is an error")                                   \
    Y(report_path, "report", STR, "FILE", 0, 0, NF_OPT_BOTH, "",                                   \
      "write a JSON report: per treated tensor the ranks used, the energy the filter removed, "    \
      "the adapter's objective before and after, the time. Written before OUT is committed, "      \
      "moved into place after; an existing FILE is replaced only with --force")                    \
    Y(resume, "resume", FLAG, NULL, 0, 0, NF_OPT_MERGE, "",                                        \
      "with --save-steps: continue after the last step kept in DIR (its tasks must be the "        \
      "first ones given, its base and recipe the same) instead of starting over")

/* One row of either table, as data. */
typedef struct nf_opt {
    const char *flag;     /* "null-rank" */
    const char *field;    /* "null_rank": the nf_options field, and the nufilt.params key */
    const char *metavar;  /* "N"; NULL for a switch */
    int kind;             /* NF_OPT_* */
    unsigned bit;         /* NF_P_* of the recipe; 0 for the run's settings */
    unsigned methods;     /* the methods that read it (recipe) */
    int commands;         /* NF_OPT_STEP | NF_OPT_MERGE */
    const char *defaults; /* see NF_RECIPE_OPTIONS; words for a run setting; "" none */
    const char *help;
    size_t o_off;         /* offset in nf_options */
    size_t p_off;         /* offset in nf_params (recipe); 0 otherwise */
    const char *const *names; /* NF_OPT_ENUM: the value's name at its index */
} nf_opt;

/* All rows, the recipe's first; *count rows. */
const nf_opt *nf_opt_table(size_t *count);
/* The range of a ranged option (the recipe's numbers, --threads); NULL for the others. */
const nf_option_range *nf_opt_range(const nf_opt *o);
/* The row of an option by flag ("null-rank") or field ("null_rank"); NULL if none. */
const nf_opt *nf_opt_find(const char *flag_or_field);
/* The recipe's row with this nufilt.params key; NULL if none. */
const nf_opt *nf_opt_recipe_key(const char *key);
/* The default of a recipe option for a method, as written in the table ("1e-3"; "" none):
 * the text (not NUL-terminated) and its length. */
const char *nf_opt_default_text(const nf_opt *o, int method, size_t *len);
/* The defaults of a recipe option over the methods that read it, as words: "128",
 * "nufilt 1e-3, wudi 1e-5"; the run setting's words. */
void nf_opt_describe_default(const nf_opt *o, char *buf, size_t n);
/* The methods that read a recipe option: "nufilt, wudi". */
void nf_opt_describe_methods(const nf_opt *o, char *buf, size_t n);

#endif
