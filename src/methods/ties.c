/*
 * TIES-merging, continual (the reference re-adds m): M(1) = theta_0 + lambda tau_1;
 * M(t) = M(t-1) + lambda TIES(m, tau_t) with m = M(t-1) - theta_0, where over the whole model
 * (every float tensor; non-float ones are not part of the vectors):
 *
 *   trim   keep the entries of m, and separately of tau_t, whose magnitude is at least the
 *          k-th smallest one, k = D - floor(keep D) (D = float elements; ties at the
 *          threshold kept; keep = 1 keeps everything), zero the rest;
 *   elect  s_j = sign(m_j + tau_j) after trimming, and where that is 0 the sign of sum_j s_j
 *          (which may itself be 0: such s_j then count as "<= 0");
 *   sum    Delta_j = the trimmed entries that agree with s_j (s_j > 0 and x > 0, or
 *          s_j <= 0 and x < 0).
 *
 * The thresholds are global, so the step makes four streaming passes and never holds the
 * model (memory: the tensors in flight, a chunk at a time, plus 1 MiB of histograms):
 *
 *   pass 0  histogram of the high 15 bits (bits 30..16) of |x| for m and for tau; for
 *           non-negative floats the order of the bit patterns is the order of the values, so
 *           after the pass the bucket holding the k-th smallest magnitude is known, with the
 *           count of elements below it;
 *   pass 1  histogram of the low 16 bits of the elements inside that bucket: the k-th
 *           smallest bit pattern, i.e. the exact threshold (no sorting, no second copy);
 *   pass 2  sum of s_j (an integer);
 *   pass 3  writes M(t).
 *
 * Every cross-tensor quantity is an integer count, added into shared totals under a lock:
 * integer sums do not depend on the order the worker threads finish in, so the result is the
 * same for any --threads. Arithmetic per element is float32 (m and tau are float32
 * differences, as the reference's float32 model is).
 */
#include "baseline.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../dist/dist.h"

#define HBINS 32768u /* |x| bits 30..16 (bit 31, the sign, is cleared) */
#define LBINS 65536u /* bits 15..0 */

typedef struct ties_state {
    pthread_mutex_t lock;
    uint64_t *hist;         /* 2 x LBINS: m, then tau */
    uint64_t k;             /* 1-based rank of the threshold; 0: everything is kept */
    uint32_t bucket[2];     /* high bits of the thresholds (after pass 0) */
    uint64_t below[2];      /* elements in lower buckets */
    uint32_t thr[2];        /* bit patterns of the threshold magnitudes (after pass 1) */
    int64_t sign_sum;
    float majority;
} ties_state;

static inline uint32_t mag_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u & 0x7fffffffu;
}

typedef struct ties_ctx {
    ties_state *st;
    uint64_t *h;     /* local histograms, 2 x LBINS */
    int64_t sum;
    float lam;
} ties_ctx;

static int hist_high(nf_job *job, void *vc, const bl_chunk *c)
{
    (void)job;
    ties_ctx *x = vc;
    uint64_t *hm = x->h, *ht = x->h + LBINS;
    for (size_t i = 0; i < c->n; i++) {
        hm[mag_bits(c->prev[i] - c->base[i]) >> 16]++;
        ht[mag_bits(c->task[i] - c->base[i]) >> 16]++;
    }
    return NF_OK;
}

static int hist_low(nf_job *job, void *vc, const bl_chunk *c)
{
    (void)job;
    ties_ctx *x = vc;
    uint64_t *hm = x->h, *ht = x->h + LBINS;
    uint32_t bm = x->st->bucket[0], bt = x->st->bucket[1];
    for (size_t i = 0; i < c->n; i++) {
        uint32_t a = mag_bits(c->prev[i] - c->base[i]), b = mag_bits(c->task[i] - c->base[i]);
        if (a >> 16 == bm)
            hm[a & 0xffffu]++;
        if (b >> 16 == bt)
            ht[b & 0xffffu]++;
    }
    return NF_OK;
}

/* the trimmed pair and the elected sign of one element (0: the majority decides) */
static inline void trim(const ties_state *st, float m, float t, float *km, float *kt)
{
    *km = mag_bits(m) >= st->thr[0] ? m : 0.0f;
    *kt = mag_bits(t) >= st->thr[1] ? t : 0.0f;
}

static int sign_sum(nf_job *job, void *vc, const bl_chunk *c)
{
    (void)job;
    ties_ctx *x = vc;
    int64_t s = 0;
    for (size_t i = 0; i < c->n; i++) {
        float km, kt;
        trim(x->st, c->prev[i] - c->base[i], c->task[i] - c->base[i], &km, &kt);
        float v = km + kt; /* the sign of a float sum is the sign of the exact sum */
        s += (v > 0.0f) - (v < 0.0f);
    }
    x->sum += s;
    return NF_OK;
}

static int ties_write(nf_job *job, void *vc, const bl_chunk *c)
{
    (void)job;
    ties_ctx *x = vc;
    float maj = x->st->majority;
    for (size_t i = 0; i < c->n; i++) {
        float km, kt;
        trim(x->st, c->prev[i] - c->base[i], c->task[i] - c->base[i], &km, &kt);
        float v = km + kt;
        float s = v > 0.0f ? 1.0f : v < 0.0f ? -1.0f : maj;
        float d = s > 0.0f ? (km > 0.0f ? km : 0.0f) + (kt > 0.0f ? kt : 0.0f)
                           : (km < 0.0f ? km : 0.0f) + (kt < 0.0f ? kt : 0.0f);
        c->out[i] = c->prev[i] + x->lam * d;
    }
    return NF_OK;
}

static int ties_tensor(nf_job *job)
{
    nf_run *run = job->run;
    ties_state *st = run->mstate;
    float lam = (float)run->p.scale;
    if (!job->prev)
        return bl_first_scaled(job, lam);
    ties_ctx x = {st, NULL, 0, lam};
    unsigned in = BL_BASE | BL_PREV | BL_TASK;
    int rc;
    switch (job->pass) {
    case 0:
    case 1:
        if (st->k == 0)
            return NF_OK;
        if (!(x.h = calloc(2 * LBINS, sizeof *x.h)))
            return nf_error_set(job->err, NF_E_NOMEM, "out of memory");
        rc = bl_stream(job, in, job->pass == 0 ? hist_high : hist_low, &x);
        if (rc == NF_OK) {
            pthread_mutex_lock(&st->lock);
            for (size_t i = 0; i < 2 * LBINS; i++)
                st->hist[i] += x.h[i];
            pthread_mutex_unlock(&st->lock);
        }
        free(x.h);
        return rc;
    case 2:
        rc = bl_stream(job, in, sign_sum, &x);
        if (rc == NF_OK) {
            pthread_mutex_lock(&st->lock);
            st->sign_sum += x.sum;
            pthread_mutex_unlock(&st->lock);
        }
        return rc;
    default:
        return bl_stream(job, in | BL_WRITE, ties_write, &x);
    }
}

/* The bin holding the k-th smallest element (k >= 1), given `below` elements in lower
 * bins; updates below to the count under the bin found. */
static uint32_t select_bin(const uint64_t *h, uint32_t nbins, uint64_t k, uint64_t *below)
{
    uint64_t cum = *below;
    for (uint32_t b = 0; b < nbins; b++) {
        if (cum + h[b] >= k) {
            *below = cum;
            return b;
        }
        cum += h[b];
    }
    return nbins; /* not reached: the histograms count every element */
}

static int ties_after(nf_run *run, int pass)
{
    ties_state *st = run->mstate;
    if (!st) /* the first step */
        return NF_OK;
    if (pass == 0 || pass == 1) {
        if (st->k == 0)
            return NF_OK;
        /* over several ranks: every rank's counts (integers: the sum is exact) */
        if (nf_dist_get()->sum_u64(st->hist, 2 * LBINS))
            return nf_error_set(run->err, NF_E_IO, "ties: cannot add up the ranks' histograms");
        for (int j = 0; j < 2; j++) {
            uint64_t *h = st->hist + (size_t)j * LBINS;
            if (pass == 0) {
                st->below[j] = 0;
                st->bucket[j] = select_bin(h, HBINS, st->k, &st->below[j]);
                if (st->bucket[j] >= HBINS)
                    return nf_error_set(run->err, NF_E_INTERNAL, "ties: histogram lost elements");
            } else {
                uint64_t below = st->below[j];
                uint32_t l = select_bin(h, LBINS, st->k, &below);
                if (l >= LBINS)
                    return nf_error_set(run->err, NF_E_INTERNAL, "ties: histogram lost elements");
                st->thr[j] = st->bucket[j] << 16 | l;
            }
        }
        memset(st->hist, 0, 2 * LBINS * sizeof *st->hist);
    } else if (pass == 2) {
        uint64_t sum = (uint64_t)st->sign_sum; /* two's complement: added mod 2^64 */
        if (nf_dist_get()->sum_u64(&sum, 1))
            return nf_error_set(run->err, NF_E_IO, "ties: cannot add up the ranks' signs");
        st->sign_sum = (int64_t)sum;
        st->majority = st->sign_sum > 0 ? 1.0f : st->sign_sum < 0 ? -1.0f : 0.0f;
    }
    return NF_OK;
}

static int ties_begin(nf_run *run)
{
    if (!run->prev) {
        run->npasses = 1; /* M(1) = theta_0 + lambda tau_1 */
        return NF_OK;
    }
    ties_state *st = calloc(1, sizeof *st);
    if (!st)
        return NF_E_NOMEM;
    st->hist = calloc(2 * LBINS, sizeof *st->hist);
    if (!st->hist) {
        free(st);
        return NF_E_NOMEM;
    }
    pthread_mutex_init(&st->lock, NULL);
    uint64_t d = 0;
    for (size_t i = 0; i < run->ntensors; i++)
        if (nf_dtype_is_float(run->base->tensors[i].dtype))
            d += run->base->tensors[i].numel;
    /* k = D - floor(keep D), floor of the double product (keep <= 1, so k >= 0) */
    uint64_t kept = (uint64_t)floor((double)d * run->p.keep);
    st->k = kept >= d ? 0 : d - kept;
    /* with k = 0 the thresholds stay 0: every magnitude is >= 0 */
    run->mstate = st;
    return NF_OK;
}

static void ties_cleanup(nf_run *run)
{
    ties_state *st = run->mstate;
    if (!st)
        return;
    pthread_mutex_destroy(&st->lock);
    free(st->hist);
    free(st);
    run->mstate = NULL;
}

const nf_method_ops nf_method_ties = {
    .info = {"ties", "TIES-merging: trim, elect sign, disjoint sum, over the whole model",
             "`scale` 0.3 (lambda), `keep` 0.2 (fraction kept by the trim)",
             "Yadav et al., TIES-Merging: Resolving Interference When Merging Models, "
             "NeurIPS 2023 (arXiv 2306.01708)",
             1},
    .params = NF_P_SCALE | NF_P_KEEP,
    .npasses = 4,
    .begin = ties_begin,
    .tensor = ties_tensor,
    .after_pass = ties_after,
    .cleanup = ties_cleanup,
};
