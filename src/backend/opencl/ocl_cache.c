/* The OpenCL backend's on-disk cache of program binaries (ocl_cache.h). */
#include "ocl_cache.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/util.h"
#include "nf_opencl_kernels.h"

#define MAX_BINARY (1l << 28)

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int nf_ocl_cache_path(const char *platform, const char *device, const char *driver,
                      const char *opts, char *path, size_t cap)
{
    const char *v = getenv("NF_OPENCL_DISK_CACHE");
    if (v && strcmp(v, "0") == 0)
        return 0;
    char dir[768];
    const char *e;
    if ((e = getenv("NF_CACHE_DIR")) && *e)
        snprintf(dir, sizeof dir, "%s", e);
    else if ((e = getenv("XDG_CACHE_HOME")) && *e)
        snprintf(dir, sizeof dir, "%s/nufilt", e);
    else if ((e = getenv("HOME")) && *e)
        snprintf(dir, sizeof dir, "%s/.cache/nufilt", e);
    else
        return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a(h, platform, strlen(platform) + 1);
    h = fnv1a(h, device, strlen(device) + 1);
    h = fnv1a(h, driver, strlen(driver) + 1);
    h = fnv1a(h, opts, strlen(opts) + 1);
    for (const nf_embedded *s = nf_opencl_src_table; s->name; s++)
        h = fnv1a(h, s->text, s->len);
    int n = snprintf(path, cap, "%s/opencl-%016" PRIx64 ".bin", dir, h);
    return n > 0 && (size_t)n < cap;
}

unsigned char *nf_ocl_cache_load(const char *path, size_t *len)
{
    nf_error err = {0};
    char *bin = NULL;
    /* an empty file is no binary; a larger one than MAX_BINARY is not ours */
    if (nf_read_small_file(path, MAX_BINARY - 1, "too large", &bin, len, &err) != NF_OK ||
        *len == 0) {
        free(bin);
        return NULL;
    }
    return (unsigned char *)bin;
}

void nf_ocl_cache_store(const char *path, const unsigned char *bin, size_t len)
{
    char dir[1024], tmp[1100];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        nf_mkdirs(dir);
    }
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (f) {
        int ok = fwrite(bin, 1, len, f) == len;
        ok = fclose(f) == 0 && ok;
        if (!ok || rename(tmp, path) != 0)
            remove(tmp);
    }
}
