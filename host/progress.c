#include "progress.h"

#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "size.h"

static void hms(double s, char *buf, size_t n)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else
        snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

int progress_cb(void *user, const nf_progress *p)
{
    progress *pr = user;
    double t = nf_now();
    int last = p->tensors_done == p->tensors_total;
    if (!last && t - pr->last_draw < 0.1)
        return 0;
    pr->last_draw = t;
    if (!pr->width) {
        struct winsize ws;
        pr->width = ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 40 ? ws.ws_col : 80;
    }
    /* one bar for the whole run, weighted by the library's work estimate (the treated
     * matrices dominate); the time left extrapolates the rate so far over the work left */
    double all, elapsed, left_s = -1.0;
    if (p->work_total > 0) {
        all = p->work_done < p->work_total ? p->work_done / p->work_total : 1.0;
        elapsed = p->run_elapsed_s;
        left_s = p->eta_s;
    } else { /* a library without the estimate: steps and tensors */
        double frac = p->tensors_total ? (double)p->tensors_done / (double)p->tensors_total : 1.0;
        if (!pr->start)
            pr->start = t - p->elapsed_s;
        all = p->nsteps > 0 ? ((double)(p->step - 1) + frac) / (double)p->nsteps : frac;
        elapsed = t - pr->start;
        if (all > 0.02)
            left_s = elapsed * (1.0 - all) / all;
    }
    char el[32], rem[32], bd[32], bt[32];
    hms(elapsed, el, sizeof el);
    if (left_s >= 0)
        hms(left_s, rem, sizeof rem);
    else
        snprintf(rem, sizeof rem, "--:--");
    cli_format_size((double)p->bytes_done, bd, sizeof bd);
    cli_format_size((double)p->bytes_total * (p->npasses > 0 ? p->npasses : 1), bt, sizeof bt);
    char left[64], right[256];
    snprintf(left, sizeof left, "step %d/%d ", p->step, p->nsteps);
    snprintf(right, sizeof right, " %3.0f%%  %zu/%zu tensors  %s/%s  %s elapsed  %s left",
             100.0 * all, p->tensors_done, p->tensors_total, bd, bt, el, rem);
    int barw = pr->width - (int)strlen(left) - (int)strlen(right) - 3;
    if (barw < 10)
        barw = 10;
    if (barw > 40)
        barw = 40;
    int fill = (int)(all * barw + 0.5);
    char bar[64];
    for (int i = 0; i < barw; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[barw] = '\0';
    fprintf(stderr, "\r%s[%s]%s\033[K", left, bar, right);
    fflush(stderr);
    pr->drawn = 1;
    return 0;
}

void progress_done(progress *pr)
{
    if (pr->drawn) {
        fputc('\n', stderr);
        pr->drawn = 0;
    }
}
