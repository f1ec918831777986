/* A step or merge over MPI ranks: joining them, per-rank options, ending them. */
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dist/dist.h"
#include "dist/launch.h"

char cli_rank_prefix[48];
static char device_buf[64];

int cli_dist_begin(int *argc, char ***argv)
{
    char why[256] = "";
    if (nf_dist_start(argc, argv, why, sizeof why)) {
        fprintf(stderr, "nufilt: error: cannot join the other ranks: %s\n", why);
        return 1;
    }
    const nf_dist *d = nf_dist_get();
    if (d->size > 1)
        snprintf(cli_rank_prefix, sizeof cli_rank_prefix, "rank %d of %d: ", d->rank, d->size);
    return 0;
}

static int is_gpu(const nf_device_info *i)
{
    return i->type == NF_DEVICE_DISCRETE_GPU || i->type == NF_DEVICE_INTEGRATED_GPU;
}

int cli_dist_adapt(cli *c)
{
    const nf_dist *d = nf_dist_get();
    if (d->size <= 1)
        return 0;
    if (d->rank != 0) {
        c->quiet = 1;
        c->progress = 0;
        c->o.report_path = NULL; /* rank 0 writes the report, with every rank's figures */
    }
    if (c->o.threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        int share = (int)((n > 0 ? n : 1) / (d->local_size > 0 ? d->local_size : 1));
        c->o.threads = share > 0 ? share : 1;
    }
    if (!c->o.device || !strcmp(c->o.device, "auto")) {
        /* the node's real GPUs, one per local rank in turn; none: the CPU, as auto does */
        nf_device_info info[64];
        int n = 0, ngpu = 0, pick = -1;
        nf_error err = {0};
        /* a GPU shows once per API (OpenCL and Vulkan): count those of the first API that
         * lists one */
        if (nf_devices_list(info, 64, &n, &err) == 0) {
            const char *api = NULL;
            for (int i = 0; i < n && i < 64; i++) {
                if (!is_gpu(&info[i]) || (api && strcmp(api, info[i].api)))
                    continue;
                api = info[i].api;
                ngpu++;
            }
            int want = ngpu ? d->local_rank % ngpu : -1;
            for (int i = 0, g = 0; api && i < n && i < 64; i++) {
                if (!is_gpu(&info[i]) || strcmp(api, info[i].api))
                    continue;
                if (g++ == want) {
                    pick = i;
                    break;
                }
            }
        }
        if (pick >= 0) {
            snprintf(device_buf, sizeof device_buf, "%.16s:%d", info[pick].api, info[pick].index);
            c->o.device = device_buf;
        }
    }
    return 0;
}

int cli_dist_end(int rc)
{
    if (rc != 0 && nf_dist_active()) {
        /* this rank's temporaries are gone (the library removed them on its way out); the
         * others are stopped by the launcher, their handlers removing theirs */
        nf_dist_abort_all(rc);
        return rc;
    }
    nf_dist_stop();
    return rc;
}
