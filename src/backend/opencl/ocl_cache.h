/* The OpenCL backend's on-disk cache of program binaries. Internal to src/backend/opencl. */
#ifndef NF_OCL_CACHE_H
#define NF_OCL_CACHE_H

#include <stddef.h>

/* The cache file of the program built with options opts on this platform, device and driver:
 * $NF_CACHE_DIR, else $XDG_CACHE_HOME/nufilt, else $HOME/.cache/nufilt, named by a hash of
 * everything the binary depends on (platform, device, driver, build options and the embedded
 * sources). 0 when there is none: NF_OPENCL_DISK_CACHE=0, no directory, or too long. */
int nf_ocl_cache_path(const char *platform, const char *device, const char *driver,
                      const char *opts, char *path, size_t cap);
/* The cached binary (malloc'd, *len bytes), or NULL when there is none or it cannot be read. */
unsigned char *nf_ocl_cache_load(const char *path, size_t *len);
/* Best effort: writes bin under a temporary name and renames it, so that concurrent
 * processes never read half a file; the directory is created if missing. */
void nf_ocl_cache_store(const char *path, const unsigned char *bin, size_t len);

#endif
