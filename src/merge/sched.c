/*
 * The host scheduler: runs one pass of a method over every tensor, several tensors in flight
 * at once, one worker thread per slot, each bound to a device. Tensors stream from the
 * memory-mapped inputs and go straight to the output file, so memory holds only the tensors
 * in flight.
 */
#include "sched.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../core/util.h"
#include "../io/dtype.h"

/* --max-memory: the estimated working memory of the jobs in flight stays under the cap; a job
 * waits until enough finishes, and one that alone exceeds the cap is an error. */
typedef struct budget {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint64_t cap, used;
    int running;
} budget;

typedef struct worker {
    pthread_t thread;
    nf_run *run;
    nf_device *dev;
    nf_la la;
    nf_error err;
    int pass;
    const size_t *order;
    atomic_size_t *next;
    atomic_int *stop;
    budget *mem;
    nf_la_stats stats;
} worker;

static int check_finite(const nf_model *m, const nf_tensor *t, nf_error *err)
{
    size_t es = nf_dtype_size(t->dtype);
    if (!nf_count_nonfinite(t->data, t->dtype, t->numel))
        return NF_OK;
    uint64_t at = 0; /* the first offending element, for the message */
    while (at < t->numel && !nf_count_nonfinite(t->data + at * es, t->dtype, 1))
        at++;
    return nf_error_set(err, NF_E_NONFINITE,
                        "%s: tensor \"%s\" holds NaN or Inf (element %llu); refusing to merge "
                        "it (`allow_nonfinite` to proceed anyway)",
                        m->path, t->name, (unsigned long long)at);
}

static int do_job(worker *w, size_t i)
{
    nf_run *run = w->run;
    const nf_tensor *bt = &run->base->tensors[i];
    int last = w->pass == run->npasses - 1;
    nf_job job = {
        .run = run,
        .idx = i,
        .base = bt,
        .task = nf_model_tensor(run->task, bt->name),
        .prev = run->prev ? nf_model_tensor(run->prev, bt->name) : NULL,
        .treated = run->treated[i],
        .pass = w->pass,
        .la = &w->la,
        .err = &w->err,
        .rep = &run->reports[i],
    };
    double t0 = nf_now();
    int rc = NF_OK;
    if (w->pass == 0) {
        nf_tensor_prefault(bt);
        nf_tensor_prefault(job.task);
        nf_tensor_prefault(job.prev);
        /* the base fingerprint's part of this tensor, while its pages come in anyway */
        run->base_hash[i] = nf_tensor_hash(bt);
    }
    /* NaN or Inf in any input: refused (LAPACK's SVD would not even return on Inf) */
    if (w->pass == 0 && !run->opts->allow_nonfinite) {
        if (job.task && nf_dtype_is_float(job.task->dtype)) /* NULL: a buffer only the base has */
            rc = check_finite(run->task, job.task, &w->err);
        if (rc == NF_OK && job.prev && nf_dtype_is_float(job.prev->dtype))
            rc = check_finite(run->prev, job.prev, &w->err);
        if (rc == NF_OK && nf_dtype_is_float(bt->dtype))
            rc = check_finite(run->base, bt, &w->err);
    }
    if (rc == NF_OK) {
        if (!nf_dtype_is_float(bt->dtype))
            rc = last ? nf_job_put_base(&job) : NF_OK; /* integer tensors stay at base */
        else
            rc = run->method->tensor(&job);
    }
    if (rc == NF_OK && w->err.code)
        rc = w->err.code;
    if (rc != NF_OK && w->err.code == NF_OK)
        nf_error_set(&w->err, rc, "tensor \"%s\": %s", bt->name, nf_status_message(rc));
    if (last) {
        nf_tensor_release(bt);
        nf_tensor_release(job.task);
        nf_tensor_release(job.prev);
    }
    run->reports[i].seconds += nf_now() - t0;
    return rc;
}

/* Non-zero when the caller's progress callback asks to cancel. */
static int report_progress(nf_run *run, int pass, const nf_tensor *t)
{
    int cancel = 0;
    pthread_mutex_lock(&run->lock);
    run->done++;
    run->bytes_done += t->nbytes;
    if (run->opts->progress) {
        nf_progress p = {
            .step = run->step_in_run,
            .nsteps = run->nsteps,
            .pass = pass,
            .npasses = run->npasses,
            .tensors_done = run->done,
            .tensors_total = run->ntensors * (size_t)run->npasses,
            .bytes_done = run->bytes_done,
            .bytes_total = run->bytes_total,
            .elapsed_s = nf_now() - run->t_start,
            .tensor = t->name,
        };
        cancel = run->opts->progress(run->opts->progress_user, &p) != 0;
    }
    pthread_mutex_unlock(&run->lock);
    return cancel;
}

static void *work(void *arg)
{
    worker *w = arg;
    for (;;) {
        if (atomic_load(w->stop))
            break;
        size_t k = atomic_fetch_add(w->next, 1);
        if (k >= w->run->ntensors)
            break;
        size_t i = w->order[k];
        nf_run *run = w->run;
        budget *b = w->mem;
        uint64_t need = NF_STREAM_MEMORY;
        if (run->method->memory && nf_dtype_is_float(run->base->tensors[i].dtype))
            need = run->method->memory(run, i);
        if (b->cap && need > b->cap) {
            nf_error_set(&w->err, NF_E_LIMIT,
                         "tensor \"%s\" needs about %.0f MB of working memory, more than "
                         "`max_memory` %.0f MB allows",
                         run->base->tensors[i].name, (double)need / 1e6, (double)b->cap / 1e6);
            atomic_store(w->stop, 1);
            break;
        }
        pthread_mutex_lock(&b->lock);
        while (b->cap && b->used + need > b->cap && b->running > 0)
            pthread_cond_wait(&b->cond, &b->lock);
        b->used += need;
        b->running++;
        pthread_mutex_unlock(&b->lock);
        int rc = do_job(w, i);
        pthread_mutex_lock(&b->lock);
        b->used -= need;
        b->running--;
        pthread_cond_broadcast(&b->cond);
        pthread_mutex_unlock(&b->lock);
        if (rc != NF_OK) {
            atomic_store(w->stop, 1);
            break;
        }
        if (report_progress(w->run, w->pass, &w->run->base->tensors[i])) {
            /* the caller cancelled: every worker stops after the tensor it holds, and the step
             * unwinds as on any error (temporary outputs removed, nothing committed) */
            nf_error_set(&w->err, NF_E_CANCELLED, "cancelled by the progress callback");
            atomic_store(w->stop, 1);
            break;
        }
    }
    return NULL;
}

/* Large untreated tensors are plain copies: they go first, so that their pages are written
 * back to disk while the treated tensors compute instead of at the final fsync. Then the
 * treated tensors, heaviest first, so that the last ones to finish are small (better
 * balance); the small untreated tensors fill the tail. */
#define EARLY_COPY_NUMEL (1u << 20)

static size_t *cost_order(const nf_run *run)
{
    size_t n = run->ntensors;
    size_t *o = malloc((n ? n : 1) * sizeof *o);
    if (!o)
        return NULL;
    size_t a = 0;
    for (size_t i = 0; i < n; i++)
        if (!run->treated[i] && run->base->tensors[i].numel >= EARLY_COPY_NUMEL)
            o[a++] = i;
    size_t t0 = a;
    for (size_t i = 0; i < n; i++)
        if (run->treated[i])
            o[a++] = i;
    size_t t1 = a;
    for (size_t i = 0; i < n; i++)
        if (!run->treated[i] && run->base->tensors[i].numel < EARLY_COPY_NUMEL)
            o[a++] = i;
    /* stable insertion by size within the treated block */
    for (size_t i = t0 + 1; i < t1; i++) {
        size_t v = o[i], j = i;
        while (j > t0 && run->base->tensors[o[j - 1]].numel < run->base->tensors[v].numel) {
            o[j] = o[j - 1];
            j--;
        }
        o[j] = v;
    }
    return o;
}

int nf_sched_pass(nf_run *run, int pass, nf_device **devs, int ndev, int cpu_workers,
                  nf_la_stats *stats, nf_error *err)
{
    int nw = 0;
    for (int d = 0; d < ndev; d++)
        nw += nf_device_get_info(devs[d])->type == NF_DEVICE_CPU ? cpu_workers : 1;
    if (nw < 1)
        nw = 1;
    worker *ws = calloc((size_t)nw, sizeof *ws);
    size_t *order = cost_order(run);
    if (!ws || !order) {
        free(ws);
        free(order);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    atomic_size_t next = 0;
    atomic_int stop = 0;
    budget mem = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, run->opts->max_memory, 0,
                  0};
    int k = 0;
    for (int d = 0; d < ndev; d++) {
        int c = nf_device_get_info(devs[d])->type == NF_DEVICE_CPU ? cpu_workers : 1;
        for (int j = 0; j < c && k < nw; j++, k++) {
            ws[k].run = run;
            ws[k].dev = devs[d];
            ws[k].pass = pass;
            ws[k].order = order;
            ws[k].next = &next;
            ws[k].stop = &stop;
            ws[k].mem = &mem;
            nf_la_init(&ws[k].la, devs[d], &ws[k].err);
        }
    }
    if (nw == 1) {
        work(&ws[0]);
    } else {
        int started = 0;
        for (; started < nw; started++)
            if (pthread_create(&ws[started].thread, NULL, work, &ws[started]) != 0)
                break;
        if (started == 0)
            work(&ws[0]);
        for (int i = 0; i < started; i++)
            pthread_join(ws[i].thread, NULL);
    }
    int rc = NF_OK;
    for (int i = 0; i < nw; i++) {
        if (ws[i].err.code && rc == NF_OK) {
            rc = ws[i].err.code;
            nf_error_set(err, rc, "%s", ws[i].err.msg);
        }
        stats->svd_s += ws[i].la.stats.svd_s;
        stats->train_s += ws[i].la.stats.train_s;
        stats->flops += ws[i].la.stats.flops;
        stats->fallbacks += ws[i].la.stats.fallbacks;
        stats->svd_precise += ws[i].la.stats.svd_precise;
    }
    free(ws);
    free(order);
    pthread_mutex_destroy(&mem.lock);
    pthread_cond_destroy(&mem.cond);
    return rc;
}
