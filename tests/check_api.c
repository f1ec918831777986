/* The public C API as a binding sees it: options structs of other sizes (an older header's,
 * a newer one's), cancellation from the progress callback, the pass number, OpenBLAS's thread
 * count left as it was, the numeric version, and models in memory with in-memory outputs
 * against the same merges through files (bit for bit, metadata included). */
#include <cblas.h>
#include <dirent.h>
#include <math.h>
#include <stddef.h>
#include <sys/stat.h>

#include "io/model.h"
#include "nufilt.h"
#include "testutil.h"

static const char *const names[] = {
    "enc.layers.0.self_attn.q_proj.weight", "enc.layers.0.self_attn.q_proj.bias",
    "enc.layers.0.mlp.fc1.weight", "enc.layers.0.mlp.fc2.weight", "enc.position_ids",
};
static const int rows[] = {16, 16, 24, 16, 1}, cols[] = {16, 1, 16, 24, 6};
#define NT 5

typedef struct model_data {
    float *t[NT - 1];
    int64_t ids[6];
} model_data;

static char *dir;
static char *paths[4]; /* base, task1, task2, task3 */
static model_data md[4];

static void fill(model_data *m, uint64_t seed, double scale)
{
    for (int i = 0; i < NT - 1; i++) {
        size_t n = (size_t)rows[i] * (size_t)cols[i];
        m->t[i] = malloc(n * sizeof(float));
        tu_fill(m->t[i], n, seed * 10 + (uint64_t)i, 1.0);
        if (scale != 0.0) { /* a task: base plus a difference */
            for (size_t k = 0; k < n; k++)
                m->t[i][k] = md[0].t[i][k] + (float)scale * m->t[i][k] * 0.1f;
        }
    }
    for (int k = 0; k < 6; k++)
        m->ids[k] = k;
}

static void write_file(const char *path, const model_data *m)
{
    char hdr[4096];
    size_t o = (size_t)snprintf(hdr, sizeof hdr, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0, total = 0;
    for (int i = 0; i < NT - 1; i++)
        total += (size_t)rows[i] * (size_t)cols[i] * 4;
    total += sizeof m->ids;
    unsigned char *data = malloc(total);
    for (int i = 0; i < NT; i++) {
        size_t nb = i < NT - 1 ? (size_t)rows[i] * (size_t)cols[i] * 4 : sizeof m->ids;
        memcpy(data + off, i < NT - 1 ? (const void *)m->t[i] : (const void *)m->ids, nb);
        if (cols[i] == 1 || i == NT - 1)
            o += (size_t)snprintf(hdr + o, sizeof hdr - o,
                                  ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%d],"
                                  "\"data_offsets\":[%zu,%zu]}",
                                  names[i], i == NT - 1 ? "I64" : "F32",
                                  i == NT - 1 ? cols[i] : rows[i], off, off + nb);
        else
            o += (size_t)snprintf(hdr + o, sizeof hdr - o,
                                  ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],"
                                  "\"data_offsets\":[%zu,%zu]}",
                                  names[i], rows[i], cols[i], off, off + nb);
        off += nb;
    }
    snprintf(hdr + o, sizeof hdr - o, "}");
    ck_assert_int_eq(tu_write_st(path, hdr, data, total), 0);
    free(data);
}

static void setup(void)
{
    dir = tu_tmpdir();
    ck_assert_ptr_nonnull(dir);
    const char *n[4] = {"base.safetensors", "t1.safetensors", "t2.safetensors", "t3.safetensors"};
    for (int k = 0; k < 4; k++) {
        paths[k] = tu_path(dir, n[k]);
        fill(&md[k], 1 + (uint64_t)k, k ? 1.0 + k : 0.0);
        write_file(paths[k], &md[k]);
    }
}

static void teardown(void)
{
    for (int k = 0; k < 4; k++) {
        free(paths[k]);
        for (int i = 0; i < NT - 1; i++)
            free(md[k].t[i]);
    }
    tu_rmdir(dir);
}

static void small(nf_options *o, int method)
{
    nf_options_init(o);
    o->method = method;
    if (method == NF_METHOD_NUFILT) {
        o->null_rank = 4;
        o->task_rank = 2;
        o->lora_rank = 4;
        o->iters = 5;
    }
    o->threads = 2;
    o->device = "cpu";
}

/* the tensors of a model as memory tensors (shapes from the file layout above) */
static void mem_tensors(const model_data *m, nf_mem_tensor *t)
{
    memset(t, 0, NT * sizeof *t);
    for (int i = 0; i < NT; i++) {
        t[i].name = names[i];
        t[i].dtype = i == NT - 1 ? NF_I64 : NF_F32;
        if (cols[i] == 1 || i == NT - 1) {
            t[i].ndim = 1;
            t[i].shape[0] = i == NT - 1 ? cols[i] : rows[i];
        } else {
            t[i].ndim = 2;
            t[i].shape[0] = rows[i];
            t[i].shape[1] = cols[i];
        }
        t[i].data = i == NT - 1 ? (const void *)m->ids : (const void *)m->t[i];
    }
}

static int files_equal(const char *a, const char *b)
{
    nf_model *x = NULL, *y = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_model_open(a, &x, &err), NF_OK);
    ck_assert_int_eq(nf_model_open(b, &y, &err), NF_OK);
    int eq = x->ntensors == y->ntensors;
    for (size_t i = 0; eq && i < x->ntensors; i++) {
        const nf_tensor *t = nf_model_tensor(y, x->tensors[i].name);
        eq = t && t->nbytes == x->tensors[i].nbytes &&
             !memcmp(t->data, x->tensors[i].data, t->nbytes);
    }
    nf_model_close(x);
    nf_model_close(y);
    return eq;
}

/* ---- options structs of other sizes ---- */

/* what a binding compiled against a header whose nf_options ended after opcm_zero_diag (the
 * recipe fields only) or after task_name (no progress callback) passes */
typedef struct opts_recipe {
    size_t struct_size;
    int method, null_rank, task_rank, lora_rank;
    double lr;
    int iters;
    int64_t seed;
    int compat;
    double rank_tol;
    const char *preset, *layers;
    double scale, keep, alpha;
    int opcm_zero_diag;
} opts_recipe;

typedef struct opts_noprogress {
    size_t struct_size;
    int method, null_rank, task_rank, lora_rank;
    double lr;
    int iters;
    int64_t seed;
    int compat;
    double rank_tol;
    const char *preset, *layers;
    double scale, keep, alpha;
    int opcm_zero_diag;
    nf_dtype out_dtype;
    uint64_t out_shard_size;
    int force, allow_nonfinite, threads;
    const char *device;
    int svd;
    uint64_t max_memory;
    const char *report_path, *task_name;
} opts_noprogress;

START_TEST(test_older_struct)
{
    /* the emulated older layouts are prefixes of today's */
    ck_assert_uint_eq(offsetof(opts_recipe, opcm_zero_diag), offsetof(nf_options, opcm_zero_diag));
    ck_assert_uint_eq(offsetof(opts_noprogress, task_name), offsetof(nf_options, task_name));
    ck_assert_uint_lt(sizeof(opts_recipe), sizeof(nf_options));
    char *ref = tu_path(dir, "ref.safetensors"), *a = tu_path(dir, "a.safetensors"),
         *b = tu_path(dir, "b.safetensors");
    nf_options full;
    nf_options_init(&full);
    full.null_rank = 4;
    full.task_rank = 2;
    full.lora_rank = 4;
    full.iters = 5;
    nf_error err = {0};
    ck_assert_msg(nf_step(paths[0], paths[1], NULL, ref, &full, &err) == NF_OK, "%s", err.msg);

    opts_recipe r;
    memset(&r, 0xAB, sizeof r); /* garbage the init must overwrite */
    nf_options_init_sized((nf_options *)(void *)&r, sizeof r);
    ck_assert_uint_eq(r.struct_size, sizeof r);
    ck_assert_int_eq(r.method, -1);
    ck_assert(isnan(r.lr));
    r.null_rank = 4;
    r.task_rank = 2;
    r.lora_rank = 4;
    r.iters = 5;
    ck_assert_msg(nf_step(paths[0], paths[1], NULL, a, (const nf_options *)(void *)&r, &err) ==
                      NF_OK,
                  "%s", err.msg);
    ck_assert(files_equal(ref, a));

    opts_noprogress q;
    nf_options_init_sized((nf_options *)(void *)&q, sizeof q);
    q.null_rank = 4;
    q.task_rank = 2;
    q.lora_rank = 4;
    q.iters = 5;
    q.threads = 1;
    ck_assert_msg(nf_step(paths[0], paths[1], NULL, b, (const nf_options *)(void *)&q, &err) ==
                      NF_OK,
                  "%s", err.msg);
    ck_assert(files_equal(ref, b));
    /* the older struct's size is what the library honours: its bytes past struct_size are
     * never read (here a non-zero "force" beyond a recipe-only struct would replace b) */
    r.struct_size = offsetof(nf_options, opcm_zero_diag) + sizeof(int);
    ck_assert_int_eq(nf_step(paths[0], paths[1], NULL, b, (const nf_options *)(void *)&r, &err),
                     NF_E_EXISTS);
    free(ref);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_newer_struct)
{
    struct {
        nf_options o;
        int64_t future[2];
    } n;
    nf_options_init_sized(&n.o, sizeof n);
    ck_assert_uint_eq(n.o.struct_size, sizeof n);
    ck_assert(n.future[0] == 0 && n.future[1] == 0); /* zeroed: the new fields' defaults */
    n.o.method = NF_METHOD_TA;
    char *out = tu_path(dir, "n.safetensors");
    nf_error err = {0};
    ck_assert_msg(nf_step(paths[0], paths[1], NULL, out, &n.o, &err) == NF_OK, "%s", err.msg);
    n.future[1] = 7; /* a field this library does not know, set */
    nf_error_clear(&err);
    n.o.force = 1;
    ck_assert_int_eq(nf_step(paths[0], paths[1], NULL, out, &n.o, &err), NF_E_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "struct_size"));
    /* and one too small to be any nf_options */
    n.o.struct_size = 2;
    nf_error_clear(&err);
    ck_assert_int_eq(nf_step(paths[0], paths[1], NULL, out, &n.o, &err), NF_E_ARG);
    free(out);
}
END_TEST

/* ---- progress: pass numbers and cancellation ---- */

typedef struct watch {
    int calls, cancel_at, max_pass, npasses;
} watch;

static int on_progress(void *user, const nf_progress *p)
{
    watch *w = user;
    w->calls++;
    if (p->pass > w->max_pass)
        w->max_pass = p->pass;
    w->npasses = p->npasses;
    return w->cancel_at && w->calls >= w->cancel_at;
}

static int count_entries(const char *d)
{
    int n = 0;
    DIR *x = opendir(d);
    struct dirent *e;
    while (x && (e = readdir(x)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (x)
        closedir(x);
    return n;
}

START_TEST(test_pass_numbers)
{
    nf_options o;
    small(&o, NF_METHOD_TIES); /* four passes over the tensors from the second step on */
    char *out1 = tu_path(dir, "ties1.safetensors"), *out2 = tu_path(dir, "ties2.safetensors");
    nf_error err = {0};
    ck_assert_msg(nf_step(paths[0], paths[1], NULL, out1, &o, &err) == NF_OK, "%s", err.msg);
    watch w = {0, 0, -1, 0};
    o.progress = on_progress;
    o.progress_user = &w;
    ck_assert_msg(nf_step(paths[0], paths[2], out1, out2, &o, &err) == NF_OK, "%s", err.msg);
    ck_assert_int_eq(w.npasses, 4);
    ck_assert_int_eq(w.max_pass, 3);
    ck_assert_int_eq(w.calls, 4 * NT);
    free(out1);
    free(out2);
}
END_TEST

START_TEST(test_cancel)
{
    int before = count_entries(dir);
    for (int method = 0; method < 2; method++) {
        nf_options o;
        small(&o, method ? NF_METHOD_TIES : NF_METHOD_NUFILT);
        o.threads = 4;
        watch w = {0, 1, -1, 0};
        o.progress = on_progress;
        o.progress_user = &w;
        char *out = tu_path(dir, "cancelled.safetensors"), *outd = tu_path(dir, "cancelled");
        nf_error err = {0};
        ck_assert_int_eq(nf_step(paths[0], paths[1], NULL, out, &o, &err), NF_E_CANCELLED);
        /* the other workers finish the tensor they hold, then stop */
        ck_assert_int_le(w.calls, 4);
        w.calls = 0;
        w.cancel_at = 3;
        const char *tasks[3] = {paths[1], paths[2], paths[3]};
        nf_error_clear(&err);
        ck_assert_int_eq(nf_merge(paths[0], tasks, 3, outd, NULL, &o, &err), NF_E_CANCELLED);
        ck_assert_str_eq(err.msg, "cancelled by the progress callback");
        /* nothing written, no temporary left */
        ck_assert_int_eq(count_entries(dir), before);
        free(out);
        free(outd);
    }
}
END_TEST

/* ---- process-wide state ---- */

START_TEST(test_blas_threads_restored)
{
    openblas_set_num_threads(2);
    int before = openblas_get_num_threads();
    nf_options o;
    small(&o, NF_METHOD_NUFILT);
    char *out = tu_path(dir, "t.safetensors");
    nf_error err = {0};
    ck_assert_msg(nf_step(paths[0], paths[1], NULL, out, &o, &err) == NF_OK, "%s", err.msg);
    ck_assert_int_eq(openblas_get_num_threads(), before);
    free(out);
}
END_TEST

START_TEST(test_version)
{
    int a = -1, b = -1, c = -1;
    ck_assert_int_eq(sscanf(nf_version(), "%d.%d.%d", &a, &b, &c), 3);
    ck_assert_int_eq(nf_version_number(), a * 1000000 + b * 1000 + c);
    ck_assert_int_eq(nf_version_number(), NF_VERSION_NUMBER);
    ck_assert_str_eq(nf_version(), NF_VERSION_STRING);
}
END_TEST

/* ---- models in memory ---- */

typedef struct collected {
    void *buf[NT];
    size_t nbytes[NT];
    int ntensor_calls;
    nf_meta_entry meta[64];
    size_t nmeta;
} collected;

static int on_meta(void *user, const char *k, const char *v)
{
    collected *c = user;
    ck_assert_uint_lt(c->nmeta, 64);
    c->meta[c->nmeta].key = strdup(k);
    c->meta[c->nmeta].value = strdup(v);
    c->nmeta++;
    return 0;
}

static int on_tensor(void *user, size_t i, const nf_tensor_info *info, const void *data)
{
    collected *c = user;
    c->ntensor_calls++;
    if (!c->buf[i]) { /* the library's buffer: keep a copy */
        c->buf[i] = malloc(info->nbytes ? info->nbytes : 1);
        memcpy(c->buf[i], data, info->nbytes);
    } else {
        ck_assert_ptr_eq(data, c->buf[i]); /* our own buffer, filled in place */
    }
    c->nbytes[i] = info->nbytes;
    return 0;
}

static void collected_free(collected *c)
{
    for (int i = 0; i < NT; i++)
        free(c->buf[i]);
    for (size_t i = 0; i < c->nmeta; i++) {
        free((void *)c->meta[i].key);
        free((void *)c->meta[i].value);
    }
    memset(c, 0, sizeof *c);
}

/* one in-memory step; own_buffers: into buffers allocated here, else the library's */
static int mem_step(nf_model *base, nf_model *task, nf_model *prev, const nf_options *o,
                    int own_buffers, collected *c, nf_error *err)
{
    memset(c, 0, sizeof *c);
    if (own_buffers)
        for (int i = 0; i < NT; i++) {
            nf_tensor_info info;
            ck_assert_int_eq(nf_model_tensor_info(base, (size_t)i, &info), NF_OK);
            c->buf[i] = malloc(info.nbytes);
        }
    nf_sink s = {
        .struct_size = sizeof s,
        .buffers = own_buffers ? c->buf : NULL,
        .nbuffers = own_buffers ? NT : 0,
        .tensor_done = on_tensor,
        .metadata = on_meta,
        .user = c,
    };
    return nf_step_models(base, task, prev, &s, o, err);
}

static void check_same(const collected *c, const char *file)
{
    nf_model *m = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_model_open(file, &m, &err), NF_OK);
    ck_assert_int_eq(c->ntensor_calls, NT);
    for (int i = 0; i < NT; i++) {
        const nf_tensor *t = nf_model_tensor(m, names[i]);
        ck_assert_ptr_nonnull(t);
        ck_assert_uint_eq(t->nbytes, c->nbytes[i]);
        ck_assert_msg(!memcmp(t->data, c->buf[i], t->nbytes), "tensor %s differs", names[i]);
    }
    ck_assert_uint_eq(m->nmeta, c->nmeta);
    for (size_t i = 0; i < c->nmeta; i++) {
        const char *v = nf_model_metadata_get(m, c->meta[i].key);
        ck_assert_msg(v && !strcmp(v, c->meta[i].value), "metadata %s: file %s, memory %s",
                      c->meta[i].key, v ? v : "(absent)", c->meta[i].value);
    }
    nf_model_close(m);
}

START_TEST(test_memory_vs_files)
{
    static const int methods[] = {NF_METHOD_NUFILT, NF_METHOD_TIES, NF_METHOD_OPCM};
    int method = methods[_i];
    nf_options o;
    small(&o, method);
    nf_error err = {0};
    char *f1 = tu_path(dir, "s1.safetensors"), *f2 = tu_path(dir, "s2.safetensors");
    ck_assert_msg(nf_step(paths[0], paths[1], NULL, f1, &o, &err) == NF_OK, "%s", err.msg);
    ck_assert_msg(nf_step(paths[0], paths[2], f1, f2, &o, &err) == NF_OK, "%s", err.msg);

    nf_mem_tensor tb[NT], t1[NT], t2[NT];
    mem_tensors(&md[0], tb);
    mem_tensors(&md[1], t1);
    mem_tensors(&md[2], t2);
    nf_model *mb = NULL, *m1 = NULL, *m2 = NULL, *mp = NULL;
    /* the task models named as the files are, so the recorded history matches */
    ck_assert_int_eq(nf_model_from_memory(paths[0], tb, NT, NULL, 0, &mb, &err), NF_OK);
    ck_assert_int_eq(nf_model_from_memory(paths[1], t1, NT, NULL, 0, &m1, &err), NF_OK);
    ck_assert_int_eq(nf_model_from_memory(paths[2], t2, NT, NULL, 0, &m2, &err), NF_OK);
    collected c1, c2;
    ck_assert_msg(mem_step(mb, m1, NULL, &o, 1, &c1, &err) == NF_OK, "%s", err.msg);
    check_same(&c1, f1);
    /* the first step's tensors and metadata are the previous model of the second */
    nf_mem_tensor tp[NT];
    mem_tensors(&md[0], tp);
    for (int i = 0; i < NT; i++)
        tp[i].data = c1.buf[i];
    ck_assert_int_eq(nf_model_from_memory(f1, tp, NT, c1.meta, c1.nmeta, &mp, &err), NF_OK);
    ck_assert_msg(mem_step(mb, m2, mp, &o, 0, &c2, &err) == NF_OK, "%s", err.msg);
    check_same(&c2, f2);
    /* the file inputs through nf_step_models give the same too */
    collected c3;
    nf_model *fb = NULL, *ft = NULL;
    ck_assert_int_eq(nf_model_open(paths[0], &fb, &err), NF_OK);
    ck_assert_int_eq(nf_model_open(paths[1], &ft, &err), NF_OK);
    ck_assert_msg(mem_step(fb, ft, NULL, &o, 0, &c3, &err) == NF_OK, "%s", err.msg);
    check_same(&c3, f1);
    nf_model_close(fb);
    nf_model_close(ft);
    collected_free(&c1);
    collected_free(&c2);
    collected_free(&c3);
    nf_model_close(mb);
    nf_model_close(m1);
    nf_model_close(m2);
    nf_model_close(mp);
    free(f1);
    free(f2);
}
END_TEST

START_TEST(test_memory_strided)
{
    /* fc1 (24 x 16) of the task given as its transpose's storage with swapped strides */
    nf_options o;
    small(&o, NF_METHOD_NUFILT);
    nf_mem_tensor tb[NT], t1[NT];
    mem_tensors(&md[0], tb);
    mem_tensors(&md[1], t1);
    float *tr = malloc(24 * 16 * sizeof *tr);
    for (int r = 0; r < 24; r++)
        for (int k = 0; k < 16; k++)
            tr[k * 24 + r] = md[1].t[2][r * 16 + k];
    int64_t strides[2] = {4, 24 * 4};
    nf_mem_tensor ts[NT];
    memcpy(ts, t1, sizeof ts);
    ts[2].data = tr;
    ts[2].strides = strides;
    int64_t packed[2] = {24 * 4, 4}; /* explicit C-order strides: borrowed as is */
    ts[3].strides = packed;
    ts[3].ndim = 2;
    nf_model *mb = NULL, *m1 = NULL, *ms = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_model_from_memory("base", tb, NT, NULL, 0, &mb, &err), NF_OK);
    ck_assert_int_eq(nf_model_from_memory("task", t1, NT, NULL, 0, &m1, &err), NF_OK);
    ck_assert_int_eq(nf_model_from_memory("task", ts, NT, NULL, 0, &ms, &err), NF_OK);
    ck_assert_uint_eq(ms->nowned, 1); /* only the strided tensor was copied */
    ck_assert_ptr_eq(ms->tensors[3].data, (const void *)md[1].t[3]);
    collected a, b;
    ck_assert_msg(mem_step(mb, m1, NULL, &o, 1, &a, &err) == NF_OK, "%s", err.msg);
    ck_assert_msg(mem_step(mb, ms, NULL, &o, 1, &b, &err) == NF_OK, "%s", err.msg);
    for (int i = 0; i < NT; i++)
        ck_assert(!memcmp(a.buf[i], b.buf[i], a.nbytes[i]));
    collected_free(&a);
    collected_free(&b);
    /* the sink cancels from its callback like the progress callback */
    nf_model_close(mb);
    nf_model_close(m1);
    nf_model_close(ms);
    free(tr);
}
END_TEST

START_TEST(test_memory_bad_inputs)
{
    nf_mem_tensor t[NT];
    mem_tensors(&md[0], t);
    nf_model *m = NULL;
    nf_error err = {0};
    t[1].name = names[0];
    ck_assert_int_eq(nf_model_from_memory("x", t, NT, NULL, 0, &m, &err), NF_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "appears twice"));
    mem_tensors(&md[0], t);
    t[0].dtype = (nf_dtype)99;
    nf_error_clear(&err);
    ck_assert_int_eq(nf_model_from_memory("x", t, NT, NULL, 0, &m, &err), NF_E_ARG);
    mem_tensors(&md[0], t);
    t[0].shape[1] = -3;
    nf_error_clear(&err);
    ck_assert_int_eq(nf_model_from_memory("x", t, NT, NULL, 0, &m, &err), NF_E_ARG);
    mem_tensors(&md[0], t);
    t[2].data = NULL;
    nf_error_clear(&err);
    ck_assert_int_eq(nf_model_from_memory("x", t, NT, NULL, 0, &m, &err), NF_E_ARG);
    ck_assert_ptr_null(m);
}
END_TEST

static int cancel_tensor(void *user, size_t i, const nf_tensor_info *info, const void *data)
{
    (void)i;
    (void)info;
    (void)data;
    return ++*(int *)user >= 2;
}

START_TEST(test_memory_cancel)
{
    nf_mem_tensor tb[NT], t1[NT];
    mem_tensors(&md[0], tb);
    mem_tensors(&md[1], t1);
    nf_model *mb = NULL, *m1 = NULL;
    nf_error err = {0};
    ck_assert_int_eq(nf_model_from_memory("base", tb, NT, NULL, 0, &mb, &err), NF_OK);
    ck_assert_int_eq(nf_model_from_memory("task", t1, NT, NULL, 0, &m1, &err), NF_OK);
    nf_options o;
    small(&o, NF_METHOD_TA);
    int n = 0;
    nf_sink s = {.struct_size = sizeof s, .tensor_done = cancel_tensor, .user = &n};
    ck_assert_int_eq(nf_step_models(mb, m1, NULL, &s, &o, &err), NF_E_CANCELLED);
    /* options that only make sense for files are refused, not ignored */
    o.out_shard_size = 1000;
    nf_error_clear(&err);
    ck_assert_int_eq(nf_step_models(mb, m1, NULL, &s, &o, &err), NF_E_ARG);
    ck_assert_ptr_nonnull(strstr(err.msg, "out_shard_size"));
    nf_model_close(mb);
    nf_model_close(m1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("api");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_older_struct);
    tcase_add_test(tc, test_newer_struct);
    tcase_add_test(tc, test_pass_numbers);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_blas_threads_restored);
    tcase_add_test(tc, test_version);
    tcase_add_loop_test(tc, test_memory_vs_files, 0, 3);
    tcase_add_test(tc, test_memory_strided);
    tcase_add_test(tc, test_memory_bad_inputs);
    tcase_add_test(tc, test_memory_cancel);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
