/* The registry of compiled-in backends, device listing and opening devices by name. */
#include "backend.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devices.h"

static const nf_backend *const all_backends[] = {
    &nf_backend_cpu,
#ifdef NF_HAVE_OPENCL
    &nf_backend_opencl,
#endif
#ifdef NF_HAVE_VULKAN
    &nf_backend_vulkan,
#endif
};

/* Driver libraries install signal handlers of their own when first called: LLVM, inside PoCL
 * and Mesa's lavapipe, takes over SIGBUS, SIGSEGV, SIGINT and others with SA_RESETHAND. That
 * displaced the host's handlers (which remove temporary outputs and explain a SIGBUS from a
 * truncated input), and two threads faulting at once then died of the default action. Every
 * call into drivers from here runs between driver_guard_begin and _end, which put the
 * process's dispositions back as they were. */
static const int guarded_signals[] = {SIGHUP,  SIGINT,  SIGQUIT,   SIGILL,  SIGTRAP, SIGABRT,
                                      SIGBUS,  SIGFPE,  SIGSEGV,   SIGPIPE, SIGTERM, SIGUSR1,
                                      SIGUSR2, SIGXCPU, SIGXFSZ,   SIGSYS,  SIGALRM, SIGPROF,
                                      SIGPOLL, SIGPWR,  SIGVTALRM};
enum { NGUARDED = sizeof guarded_signals / sizeof guarded_signals[0] };

typedef struct driver_guard {
    struct sigaction sa[NGUARDED];
    int ok[NGUARDED];
} driver_guard;

static void driver_guard_begin(driver_guard *g)
{
    for (int i = 0; i < NGUARDED; i++)
        g->ok[i] = sigaction(guarded_signals[i], NULL, &g->sa[i]) == 0;
}

static void driver_guard_end(const driver_guard *g)
{
    for (int i = 0; i < NGUARDED; i++)
        if (g->ok[i])
            sigaction(guarded_signals[i], &g->sa[i], NULL);
}

const nf_backend *const *nf_backends(int *count)
{
    *count = (int)(sizeof all_backends / sizeof all_backends[0]);
    return all_backends;
}

const nf_backend *nf_backend_find(const char *api)
{
    int n;
    const nf_backend *const *b = nf_backends(&n);
    for (int i = 0; i < n; i++)
        if (strcmp(b[i]->api, api) == 0)
            return b[i];
    return NULL;
}

const char *nf_device_type_name(nf_device_type t)
{
    switch (t) {
    case NF_DEVICE_CPU: return "CPU";
    case NF_DEVICE_DISCRETE_GPU: return "discrete GPU";
    case NF_DEVICE_INTEGRATED_GPU: return "integrated GPU";
    case NF_DEVICE_SOFTWARE: return "software";
    default: return "other";
    }
}

int nf_backend_status(int i, const char **api, int *available, const char **why)
{
    int n;
    const nf_backend *const *b = nf_backends(&n);
    if (i < 0 || i >= n)
        return NF_E_ARG;
    int cnt = 0;
    const char *w = NULL;
    driver_guard g;
    driver_guard_begin(&g);
    b[i]->count(&cnt, &w);
    driver_guard_end(&g);
    *api = b[i]->api;
    *available = cnt > 0;
    *why = cnt > 0 ? NULL : (w ? w : "no devices");
    return NF_OK;
}

static int devices_list(nf_device_info *out, int max, int *count, nf_error *err)
{
    int nb;
    const nf_backend *const *b = nf_backends(&nb);
    int total = 0;
    for (int i = 0; i < nb; i++) {
        int cnt = 0;
        const char *why = NULL;
        if (b[i]->count(&cnt, &why) != NF_OK)
            continue;
        for (int d = 0; d < cnt; d++) {
            nf_device *dev = NULL;
            nf_error e2 = {0};
            if (b[i]->open(d, &dev, &e2) != NF_OK)
                continue;
            if (total < max)
                out[total] = *nf_device_get_info(dev);
            total++;
            b[i]->close(dev);
        }
    }
    (void)err;
    *count = total;
    return NF_OK;
}

static int is_real_gpu(const nf_device_info *in)
{
    return in->type == NF_DEVICE_DISCRETE_GPU || in->type == NF_DEVICE_INTEGRATED_GPU;
}

static int open_named(const char *item, nf_device **out, nf_error *err)
{
    char api[16];
    int index = 0;
    const char *colon = strchr(item, ':');
    size_t alen = colon ? (size_t)(colon - item) : strlen(item);
    if (alen == 0 || alen >= sizeof api)
        return nf_error_set(err, NF_E_ARG, "`device`: bad device name \"%s\"", item);
    memcpy(api, item, alen);
    api[alen] = '\0';
    if (colon) {
        char *end;
        long v = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || v < 0 || v > 1000)
            return nf_error_set(err, NF_E_ARG, "`device`: bad device index in \"%s\"", item);
        index = (int)v;
    }
    const nf_backend *b = nf_backend_find(api);
    if (!b)
        return nf_error_set(err, NF_E_NODEV,
                            "`device` %s: no %s backend in this build (see `nufilt devices`)",
                            item, api);
    int cnt = 0;
    const char *why = NULL;
    b->count(&cnt, &why);
    if (index >= cnt)
        return nf_error_set(err, NF_E_NODEV, "`device` %s: no such device (%s has %d%s%s)",
                            item, api, cnt, why ? "; " : "", why ? why : "");
    return b->open(index, out, err);
}

static int devices_open(const char *spec, nf_device ***devs_out, int *ndev, nf_error *err)
{
    *devs_out = NULL;
    *ndev = 0;
    if (!spec || !*spec)
        spec = "auto";
    nf_device **devs = NULL;
    int n = 0, rc = NF_OK;
    char *copy = strdup(spec);
    if (!copy)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        nf_device **nd = realloc(devs, (size_t)(n + 8) * sizeof *nd);
        if (!nd) {
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            break;
        }
        devs = nd;
        if (strcmp(item, "auto") == 0) {
            /* the real GPUs of one API (Vulkan preferred, as the later entry of the registry;
             * one API so that a GPU listed by both is not opened twice), else the CPU.
             * Software devices (PoCL, lavapipe) are never chosen automatically. */
            int nb, added = 0;
            const nf_backend *const *b = nf_backends(&nb);
            for (int i = nb - 1; i >= 1 && added == 0; i--) {
                int cnt = 0;
                b[i]->count(&cnt, NULL);
                for (int d = 0; d < cnt && added < 8; d++) {
                    nf_device *dev = NULL;
                    nf_error e2 = {0};
                    if (b[i]->open(d, &dev, &e2) != NF_OK)
                        continue;
                    if (is_real_gpu(nf_device_get_info(dev))) {
                        devs[n++] = dev;
                        added++;
                    } else {
                        b[i]->close(dev);
                    }
                }
            }
            if (added == 0) {
                rc = nf_backend_cpu.open(0, &devs[n], err);
                if (rc == NF_OK)
                    n++;
            }
        } else {
            rc = open_named(item, &devs[n], err);
            if (rc == NF_OK)
                n++;
        }
        if (rc)
            break;
    }
    free(copy);
    if (rc == NF_OK && n == 0)
        rc = nf_error_set(err, NF_E_ARG, "`device`: no device named in \"%s\"", spec);
    if (rc) {
        nf_devices_close(devs, n);
        return rc;
    }
    *devs_out = devs;
    *ndev = n;
    return NF_OK;
}

void nf_devices_close(nf_device **devs, int n)
{
    for (int i = 0; i < n; i++)
        if (devs[i])
            nf_device_backend(devs[i])->close(devs[i]);
    free(devs);
}

int nf_devices_list(nf_device_info *out, int max, int *count, nf_error *err)
{
    driver_guard g;
    driver_guard_begin(&g);
    int rc = devices_list(out, max, count, err);
    driver_guard_end(&g);
    return rc;
}

int nf_devices_open(const char *spec, nf_device ***devs_out, int *ndev, nf_error *err)
{
    driver_guard g;
    driver_guard_begin(&g);
    int rc = devices_open(spec, devs_out, ndev, err);
    driver_guard_end(&g);
    return rc;
}
