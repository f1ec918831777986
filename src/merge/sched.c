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
#include "../core/dtype.h"
#include "../dist/dist.h"
#include "adapter.h"

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
    size_t norder;        /* tensors in order (this rank's in a distributed run) */
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

/* A LoRA task's tensor i: the base's (tau = 0), a full tensor of the adapter, the low-rank
 * update handed to a method that reads it factored, or base + tau densified as float32 into
 * *dense (on the CPU backend synth's data lives in it) or *hbuf (the caller frees both). */
static int adapter_task(worker *w, nf_job *job, nf_tensor *synth, nf_mat *dense, float **hbuf)
{
    nf_run *run = w->run;
    const nf_task_src *ts = &run->adapter->src[job->idx];
    const nf_tensor *bt = job->base;
    memset(dense, 0, sizeof *dense);
    job->task = bt;
    if (ts->kind == NF_TSRC_FULL)
        job->task = ts->full;
    if (ts->kind == NF_TSRC_BASE || ts->kind == NF_TSRC_FULL || !nf_dtype_is_float(bt->dtype))
        return NF_OK;
    if (ts->kind == NF_TSRC_LOWRANK && run->method->factored && job->treated) {
        job->lowrank = &ts->lr;
        return NF_OK;
    }
    /* densified: base + tau, one tensor's worth of float32 */
    int rc = nf_job_load(job, bt, dense);
    if (rc)
        return rc;
    if (ts->kind == NF_TSRC_LOWRANK) {
        nf_mat bf, af;
        rc = nf_job_lowrank_mats(job, &ts->lr, &bf, &af);
        if (!rc) {
            rc = nf_la_gemm(job->la, 0, 0, (float)ts->lr.scale, &bf, &af, 1.0f, dense);
            nf_la_free(job->la, &bf);
            nf_la_free(job->la, &af);
        }
    } else { /* NF_TSRC_VEC */
        float *v = malloc(ts->vec->numel * sizeof *v);
        nf_mat vm = {0};
        if (!v)
            rc = nf_error_set(job->err, NF_E_NOMEM, "out of memory");
        if (!rc) {
            nf_to_f32(ts->vec->data, ts->vec->dtype, v, ts->vec->numel);
            rc = nf_la_alloc(job->la, dense->rows, dense->cols, &vm);
        }
        if (!rc) rc = nf_la_upload(job->la, &vm, v);
        if (!rc) rc = nf_la_axpby(job->la, (float)ts->vscale, &vm, 1.0f, dense);
        nf_la_free(job->la, &vm);
        free(v);
    }
    float *h = rc ? NULL : nf_la_host(job->la, dense);
    if (!rc && !h) {
        /* a device buffer: bring it to host memory for the method's readers */
        h = *hbuf = malloc(bt->numel * sizeof *h);
        if (!h)
            rc = nf_error_set(job->err, NF_E_NOMEM, "out of memory densifying \"%s\"",
                              bt->name);
        if (!rc) rc = nf_la_download(job->la, dense, h);
        nf_la_free(job->la, dense);
    }
    if (rc)
        return rc;
    *synth = *bt;
    synth->dtype = NF_F32;
    synth->nbytes = bt->numel * sizeof(float);
    synth->data = (const unsigned char *)h;
    job->task = synth;
    return NF_OK;
}

static int check_adapter_finite(nf_run *run, size_t i, nf_error *err)
{
    const nf_task_src *ts = &run->adapter->src[i];
    const nf_tensor *t[3] = {ts->lr.a, ts->lr.b, NULL};
    if (ts->kind == NF_TSRC_FULL)
        t[0] = ts->full, t[1] = NULL;
    else if (ts->kind == NF_TSRC_VEC)
        t[0] = ts->vec, t[1] = NULL;
    else if (ts->kind != NF_TSRC_LOWRANK)
        return NF_OK;
    for (int k = 0; k < 2 && t[k]; k++)
        if (nf_dtype_is_float(t[k]->dtype)) {
            int rc = check_finite(run->adapter->file, t[k], err);
            if (rc)
                return rc;
        }
    return NF_OK;
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
        .task = run->task ? nf_model_tensor(run->task, bt->name) : NULL,
        .prev = run->prev ? nf_model_tensor(run->prev, bt->name) : NULL,
        .treated = run->treated[i],
        .pass = w->pass,
        .la = &w->la,
        .err = &w->err,
        .rep = &run->reports[i],
    };
    double t0 = nf_now();
    int rc = NF_OK;
    nf_tensor synth;
    nf_mat dense = {0};
    float *hbuf = NULL;
    if (w->pass == 0) {
        nf_tensor_prefault(bt);
        if (run->task)
            nf_tensor_prefault(job.task);
        nf_tensor_prefault(job.prev);
        /* the base fingerprint's part of this tensor, while its pages come in anyway */
        run->base_hash[i] = nf_tensor_hash(bt);
    }
    /* NaN or Inf in any input: refused (LAPACK's SVD would not even return on Inf) */
    if (w->pass == 0 && !run->opts->allow_nonfinite) {
        if (run->adapter)
            rc = check_adapter_finite(run, i, &w->err);
        else if (job.task && nf_dtype_is_float(job.task->dtype)) /* NULL: a buffer only the base has */
            rc = check_finite(run->task, job.task, &w->err);
        if (rc == NF_OK && job.prev && nf_dtype_is_float(job.prev->dtype))
            rc = check_finite(run->prev, job.prev, &w->err);
        if (rc == NF_OK && nf_dtype_is_float(bt->dtype))
            rc = check_finite(run->base, bt, &w->err);
    }
    if (rc == NF_OK && run->adapter)
        rc = adapter_task(w, &job, &synth, &dense, &hbuf);
    if (rc == NF_OK) {
        if (!nf_dtype_is_float(bt->dtype))
            rc = last ? nf_job_put_base(&job) : NF_OK; /* integer tensors stay at base */
        else
            rc = run->method->tensor(&job);
    }
    nf_la_free(&w->la, &dense);
    free(hbuf);
    if (rc == NF_OK && w->err.code)
        rc = w->err.code;
    if (rc != NF_OK && w->err.code == NF_OK) {
        nf_error_set(&w->err, rc, "tensor \"%s\": %s", bt->name, nf_status_message(rc));
    } else if (rc != NF_OK && !strstr(w->err.msg, bt->name)) {
        /* a message from the linear algebra ("SVD of a 2048 x 2048 matrix ...") learns which
         * tensor it was about */
        char msg[sizeof w->err.msg];
        memcpy(msg, w->err.msg, sizeof msg);
        int code = w->err.code;
        nf_error_clear(&w->err);
        nf_error_set(&w->err, code, "tensor \"%s\": %s", bt->name, msg);
    }
    if (last) {
        nf_tensor_release(bt);
        if (run->task)
            nf_tensor_release(job.task);
        nf_tensor_release(job.prev);
    }
    run->reports[i].seconds += nf_now() - t0;
    return rc;
}

/* Non-zero when the caller's progress callback asks to cancel. */
static int report_progress(nf_run *run, int pass, size_t i)
{
    const nf_tensor *t = &run->base->tensors[i];
    int cancel = 0;
    pthread_mutex_lock(&run->lock);
    run->done++;
    run->bytes_done += t->nbytes;
    run->work_done += run->work ? run->work[i] : 0.0;
    if (run->opts->progress) {
        double now = nf_now();
        double wd = (run->rp ? run->rp->work_done : 0.0) + run->work_done;
        double el = run->rp ? now - run->rp->t_start : now - run->t_start;
        double eta = -1.0;
        /* the rate so far, once there is something to measure it on */
        if (wd > 0 && run->work_run >= wd && el > 0.2)
            eta = el * (run->work_run - wd) / wd;
        nf_progress p = {
            .step = run->step_in_run,
            .nsteps = run->nsteps,
            .pass = pass,
            .npasses = run->npasses,
            .tensors_done = run->done,
            .tensors_total = (run->owner ? run->nmine : run->ntensors) * (size_t)run->npasses,
            .bytes_done = run->bytes_done,
            .bytes_total = run->bytes_total,
            .elapsed_s = now - run->t_start,
            .tensor = t->name,
            .work_done = wd,
            .work_total = run->work_run,
            .run_elapsed_s = el,
            .eta_s = eta,
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
        if (k >= w->norder)
            break;
        size_t i = w->order[k];
        nf_run *run = w->run;
        budget *b = w->mem;
        uint64_t need = NF_STREAM_MEMORY;
        if (run->method->memory && nf_dtype_is_float(run->base->tensors[i].dtype))
            need = run->method->memory(run, i);
        if (run->adapter && nf_dtype_is_float(run->base->tensors[i].dtype)) {
            /* a LoRA task's tensor densified for the method: one more float32 copy */
            const nf_task_src *ts = &run->adapter->src[i];
            if (ts->kind == NF_TSRC_VEC ||
                (ts->kind == NF_TSRC_LOWRANK && !(run->method->factored && run->treated[i])))
                need += run->base->tensors[i].numel * sizeof(float);
        }
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
        if (report_progress(w->run, w->pass, i)) {
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

/* A distributed run: only this rank's tensors (run->owner). *count receives how many. */
#define MINE(run, i) (!(run)->owner || (run)->owner[i] == nf_dist_get()->rank)

static size_t *cost_order(const nf_run *run, size_t *count)
{
    size_t n = run->ntensors;
    size_t *o = malloc((n ? n : 1) * sizeof *o);
    if (!o)
        return NULL;
    size_t a = 0;
    for (size_t i = 0; i < n; i++)
        if (MINE(run, i) && !run->treated[i] && run->base->tensors[i].numel >= EARLY_COPY_NUMEL)
            o[a++] = i;
    size_t t0 = a;
    for (size_t i = 0; i < n; i++)
        if (MINE(run, i) && run->treated[i])
            o[a++] = i;
    size_t t1 = a;
    for (size_t i = 0; i < n; i++)
        if (MINE(run, i) && !run->treated[i] && run->base->tensors[i].numel < EARLY_COPY_NUMEL)
            o[a++] = i;
    *count = a;
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
    size_t norder = 0;
    size_t *order = cost_order(run, &norder);
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
            ws[k].norder = norder;
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
        stats->svd_retries += ws[i].la.stats.svd_retries;
    }
    free(ws);
    free(order);
    pthread_mutex_destroy(&mem.lock);
    pthread_cond_destroy(&mem.cond);
    return rc;
}
