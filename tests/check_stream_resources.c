/* Resources across many steps in one process: a long stream must not leak memory or file
 * descriptors step after step. 20 steps of a small model, by nf_step calls (measured between
 * the calls, where every step's memory should be back) and by one nf_merge (measured at the
 * same point of every step, through the progress callback, on one thread). The bytes in use
 * are counted exactly by wrapping malloc and friends (glibc's own allocator underneath;
 * mallinfo would count what sits in the per-thread caches as in use); under AddressSanitizer,
 * which owns malloc, the count is skipped and LeakSanitizer checks instead. Descriptors come
 * from /proc/self/fd, the resident set from /proc/self/statm. */
#include <dirent.h>
#include <malloc.h>
#include <stdatomic.h>

#include "nufilt.h"
#include "testutil.h"

#define D 32 /* a leaked tensor would be 4 kB or more */
#define NTASKS 20

static const char *const names[] = {
    "enc.layers.0.self_attn.q_proj.weight", "enc.layers.0.self_attn.q_proj.bias",
    "enc.layers.0.mlp.fc1.weight", "enc.layers.0.mlp.fc2.weight", "enc.layers.0.norm.weight",
};
static const int rows[] = {D, D, 2 * D, D, D}, cols[] = {D, 1, D, 2 * D, 1};
#define NT (sizeof names / sizeof names[0])

#if defined(__SANITIZE_ADDRESS__)
#define COUNTING 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define COUNTING 0
#endif
#endif
#if !defined(COUNTING) && defined(__GLIBC__)
#define COUNTING 1
#endif
#ifndef COUNTING
#define COUNTING 0
#endif

#if COUNTING
/* Every allocation of the process (OpenBLAS's included) goes through these. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
static atomic_llong live_bytes;

static void *counted(void *p)
{
    if (p)
        atomic_fetch_add(&live_bytes, (long long)malloc_usable_size(p));
    return p;
}
void *malloc(size_t n) { return counted(__libc_malloc(n)); }
void *calloc(size_t a, size_t b) { return counted(__libc_calloc(a, b)); }
void free(void *p)
{
    if (p)
        atomic_fetch_sub(&live_bytes, (long long)malloc_usable_size(p));
    __libc_free(p);
}
void *realloc(void *p, size_t n)
{
    size_t old = p ? malloc_usable_size(p) : 0;
    void *q = __libc_realloc(p, n);
    if (q || n == 0)
        atomic_fetch_sub(&live_bytes, (long long)old);
    return counted(q);
}
void *memalign(size_t a, size_t n) { return counted(__libc_memalign(a, n)); }
void *aligned_alloc(size_t a, size_t n) { return counted(__libc_memalign(a, n)); }
int posix_memalign(void **out, size_t a, size_t n)
{
    void *p = counted(__libc_memalign(a, n));
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}
#endif

static void write_model(const char *path, uint64_t seed, double scale)
{
    char hdr[2048];
    size_t o = 0, total = 0;
    for (size_t i = 0; i < NT; i++)
        total += (size_t)rows[i] * (size_t)cols[i];
    float *data = malloc(total * sizeof *data);
    ck_assert_ptr_nonnull(data);
    o += (size_t)snprintf(hdr + o, sizeof hdr - o, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0;
    for (size_t i = 0; i < NT; i++) {
        size_t n = (size_t)rows[i] * (size_t)cols[i];
        tu_fill(data + off, n, seed * 31 + i, 0.02);
        for (size_t k = 0; k < n; k++) /* a task is the base plus a small update */
            data[off + k] += (float)(scale * ((k * 7 + seed) % 11) * 0.001);
        if (cols[i] == 1)
            o += (size_t)snprintf(hdr + o, sizeof hdr - o,
                                  ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],"
                                  "\"data_offsets\":[%zu,%zu]}",
                                  names[i], rows[i], off * 4, (off + n) * 4);
        else
            o += (size_t)snprintf(hdr + o, sizeof hdr - o,
                                  ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],"
                                  "\"data_offsets\":[%zu,%zu]}",
                                  names[i], rows[i], cols[i], off * 4, (off + n) * 4);
        off += n;
    }
    snprintf(hdr + o, sizeof hdr - o, "}");
    ck_assert_int_eq(tu_write_st(path, hdr, data, total * sizeof *data), 0);
    free(data);
}

typedef struct sample {
    size_t heap;  /* bytes in use (small and mmapped blocks) */
    int fds;
    long rss_kb;
} sample;

static sample measure(void)
{
    sample s = {0, 0, 0};
#if COUNTING
    s.heap = (size_t)atomic_load(&live_bytes);
#endif
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        while (readdir(d))
            s.fds++;
        closedir(d);
    }
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        long size = 0, res = 0;
        if (fscanf(f, "%ld %ld", &size, &res) == 2)
            s.rss_kb = res * (sysconf(_SC_PAGESIZE) / 1024);
        fclose(f);
    }
    return s;
}

static char *dir;
static char *base, *tasks[NTASKS];

static void make_models(void)
{
    dir = tu_tmpdir();
    ck_assert_ptr_nonnull(dir);
    base = tu_path(dir, "base.safetensors");
    write_model(base, 1, 0.0);
    for (int t = 0; t < NTASKS; t++) {
        char n[64];
        snprintf(n, sizeof n, "task%02d.safetensors", t + 1);
        tasks[t] = tu_path(dir, n);
        write_model(tasks[t], 100 + (uint64_t)t, 1.0 + t);
    }
}

static void free_models(void)
{
    free(base);
    for (int t = 0; t < NTASKS; t++)
        free(tasks[t]);
    tu_rmdir(dir);
}

static void small_options(nf_options *o)
{
    nf_options_init(o);
    o->null_rank = 4;
    o->task_rank = 2;
    o->lora_rank = 4;
    o->iters = 5;
    o->threads = 1;
    o->device = "cpu";
    o->force = 1;
}

static void print_samples(const char *what, const sample *s, int n)
{
    fprintf(stderr, "%s: heap in use / descriptors / resident set per step:\n", what);
    for (int t = 0; t < n; t++)
        fprintf(stderr, "  step %2d: %8zu B  %2d fds  %6ld kB\n", t + 1, s[t].heap, s[t].fds,
                s[t].rss_kb);
}

/* Steps 1..4 warm up (lazy initialisation in OpenBLAS, the first output's directory); from
 * there on nothing may accumulate, but for per_step bytes a step (inside one merge, the task
 * list the output records grows by one entry a step: a few hundred bytes). */
static void check_flat(const sample *s, int n, size_t per_step)
{
    for (int t = 5; t < n; t++) {
        ck_assert_msg(s[t].heap <= s[4].heap + per_step * (size_t)(t - 4),
                      "heap in use grows: %zu B after step 5, %zu B after step %d", s[4].heap,
                      s[t].heap, t + 1);
        ck_assert_msg(s[t].fds == s[4].fds, "descriptors leak: %d after step 5, %d after step %d",
                      s[4].fds, s[t].fds, t + 1);
    }
    /* AddressSanitizer's quarantine holds freed memory: the resident set says nothing there */
    ck_assert_msg(!COUNTING || s[n - 1].rss_kb <= s[4].rss_kb + 2048,
                  "resident set grows: %ld kB after step 5, %ld kB after step %d", s[4].rss_kb,
                  s[n - 1].rss_kb, n);
}

START_TEST(steps_do_not_accumulate)
{
    make_models();
    nf_options o;
    small_options(&o);
    sample s[NTASKS];
    char *prev = NULL;
    for (int t = 0; t < NTASKS; t++) {
        char n[64];
        snprintf(n, sizeof n, "step%02d.safetensors", t + 1);
        char *out = tu_path(dir, n);
        nf_error err = {0};
        int rc = nf_step(base, tasks[t], prev, out, &o, &err);
        ck_assert_msg(rc == NF_OK, "step %d: %s", t + 1, err.msg);
        if (prev)
            unlink(prev);
        free(prev);
        prev = out;
        s[t] = measure();
    }
    free(prev);
    print_samples("nf_step x 20 (between the calls)", s, NTASKS);
    check_flat(s, NTASKS, 0);
    free_models();
}
END_TEST

typedef struct watch {
    int last_step;
    sample s[NTASKS];
} watch;

static int on_progress(void *user, const nf_progress *p)
{
    watch *w = user;
    if (p->step != w->last_step && p->step >= 1 && p->step <= NTASKS) {
        w->last_step = p->step;
        w->s[p->step - 1] = measure();
    }
    return 0;
}

START_TEST(merge_does_not_accumulate)
{
    make_models();
    nf_options o;
    small_options(&o);
    watch w;
    memset(&w, 0, sizeof w);
    char *out = tu_path(dir, "merged.safetensors");
    nf_error err = {0};
    /* a first step warms up the libraries, then everything the merge allocates is given back */
    ck_assert_msg(nf_step(base, tasks[0], NULL, out, &o, &err) == NF_OK, "%s", err.msg);
    sample before = measure();
    o.progress = on_progress;
    o.progress_user = &w;
    int rc = nf_merge(base, (const char *const *)tasks, NTASKS, out, NULL, &o, &err);
    ck_assert_msg(rc == NF_OK, "merge: %s", err.msg);
    sample after = measure();
    ck_assert_int_eq(w.last_step, NTASKS);
    print_samples("nf_merge of 20 tasks (at the first tensor of each step)", w.s, NTASKS);
    fprintf(stderr, "  before the merge %zu B, %d fds; after it %zu B, %d fds\n", before.heap,
            before.fds, after.heap, after.fds);
    check_flat(w.s, NTASKS, 1024);
    ck_assert_msg(after.heap == before.heap, "the merge kept %lld B allocated",
                  (long long)after.heap - (long long)before.heap);
    ck_assert_int_eq(after.fds, before.fds);
    free(out);
    free_models();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stream_resources");
    TCase *tc = tcase_create("stream_resources");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, steps_do_not_accumulate);
    tcase_add_test(tc, merge_does_not_accumulate);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
