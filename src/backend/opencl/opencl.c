/*
 * The OpenCL backend: GEMMs through CLBlast, element-wise ops, the dot reduction, the fused
 * Adam step and dtype conversion through the kernels in opencl/ (embedded at build time by
 * src/embed.py). QR and SVD are left to the CPU fallback of src/linalg/la.c.
 *
 * Devices: every device of every platform, numbered in platform order (opencl:0, opencl:1,
 * ...). Each opened device owns a context and one in-order queue, so operations run in the
 * order they were issued and download()/finish() wait for everything before them. A mutex per
 * device serialises the ops (kernel arguments live in the shared cl_kernel objects).
 *
 * Program cache: the embedded sources are built as one program at the device's first kernel
 * launch (listing devices stays cheap), with -DNF_HAVE_FP64 when the device has fp64 and
 * -cl-fp32-correctly-rounded-divide-sqrt when it supports that; the program and its kernels
 * live until close. The built binary is also stored in $NF_CACHE_DIR (else
 * $XDG_CACHE_HOME/nufilt, else ~/.cache/nufilt) under a hash of platform, device, driver,
 * options and sources, and loaded by later processes (a binary the driver refuses is rebuilt
 * from source and overwritten); NF_OPENCL_DISK_CACHE=0 turns that off. NF_OPENCL_NO_FP64=1
 * forces the float accumulation path of dot (read at open; for tests).
 *
 * Buffers: one cl_mem of n * 4 bytes each (CL_MEM_READ_WRITE); upload and download are
 * blocking and bounds-checked; buffers are not host memory. Views map directly onto CLBlast's
 * row-major interface: a view's element offset and leading dimension are passed as CLBlast's
 * offset and ld (both count elements), transposes as CLBlastTransposeYes, so no sub-buffers
 * or copies are made. Kernels take (buffer, element offset) pairs.
 *
 * GEMM semantics beyond CLBlast: with beta == 0 the C view is first zeroed by a kernel (so NaN
 * in C never propagates, whatever CLBlast reads), with k == 0 or alpha == 0 C = beta C is done
 * by that kernel alone, and m == 0 or n == 0 does nothing.
 *
 * Errors: every cl_int (and CLBlast status) is translated here, once, into an nf status and a
 * message naming the device, the call and the error name. Nothing aborts.
 */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <clblast_c.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backend.h"
#include "nf_opencl_kernels.h"
#include "ocl_cache.h"

/* ---- error names ------------------------------------------------------------------------ */

static const char *cl_err_name(int e)
{
    switch (e) {
#define C(x) case x: return #x;
    C(CL_SUCCESS) C(CL_DEVICE_NOT_FOUND) C(CL_DEVICE_NOT_AVAILABLE)
    C(CL_COMPILER_NOT_AVAILABLE) C(CL_MEM_OBJECT_ALLOCATION_FAILURE) C(CL_OUT_OF_RESOURCES)
    C(CL_OUT_OF_HOST_MEMORY) C(CL_PROFILING_INFO_NOT_AVAILABLE) C(CL_MEM_COPY_OVERLAP)
    C(CL_IMAGE_FORMAT_MISMATCH) C(CL_IMAGE_FORMAT_NOT_SUPPORTED) C(CL_BUILD_PROGRAM_FAILURE)
    C(CL_MAP_FAILURE) C(CL_MISALIGNED_SUB_BUFFER_OFFSET)
    C(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST) C(CL_COMPILE_PROGRAM_FAILURE)
    C(CL_LINKER_NOT_AVAILABLE) C(CL_LINK_PROGRAM_FAILURE) C(CL_DEVICE_PARTITION_FAILED)
    C(CL_KERNEL_ARG_INFO_NOT_AVAILABLE) C(CL_INVALID_VALUE) C(CL_INVALID_DEVICE_TYPE)
    C(CL_INVALID_PLATFORM) C(CL_INVALID_DEVICE) C(CL_INVALID_CONTEXT)
    C(CL_INVALID_QUEUE_PROPERTIES) C(CL_INVALID_COMMAND_QUEUE) C(CL_INVALID_HOST_PTR)
    C(CL_INVALID_MEM_OBJECT) C(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR) C(CL_INVALID_IMAGE_SIZE)
    C(CL_INVALID_SAMPLER) C(CL_INVALID_BINARY) C(CL_INVALID_BUILD_OPTIONS)
    C(CL_INVALID_PROGRAM) C(CL_INVALID_PROGRAM_EXECUTABLE) C(CL_INVALID_KERNEL_NAME)
    C(CL_INVALID_KERNEL_DEFINITION) C(CL_INVALID_KERNEL) C(CL_INVALID_ARG_INDEX)
    C(CL_INVALID_ARG_VALUE) C(CL_INVALID_ARG_SIZE) C(CL_INVALID_KERNEL_ARGS)
    C(CL_INVALID_WORK_DIMENSION) C(CL_INVALID_WORK_GROUP_SIZE) C(CL_INVALID_WORK_ITEM_SIZE)
    C(CL_INVALID_GLOBAL_OFFSET) C(CL_INVALID_EVENT_WAIT_LIST) C(CL_INVALID_EVENT)
    C(CL_INVALID_OPERATION) C(CL_INVALID_GL_OBJECT) C(CL_INVALID_BUFFER_SIZE)
    C(CL_INVALID_MIP_LEVEL) C(CL_INVALID_GLOBAL_WORK_SIZE) C(CL_INVALID_PROPERTY)
    C(CL_INVALID_IMAGE_DESCRIPTOR) C(CL_INVALID_COMPILER_OPTIONS) C(CL_INVALID_LINKER_OPTIONS)
    C(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef C
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    /* CLBlast's own codes (those shared with OpenCL are named above) */
    case CLBlastNotImplemented: return "CLBlastNotImplemented";
    case CLBlastInvalidMatrixA: return "CLBlastInvalidMatrixA";
    case CLBlastInvalidMatrixB: return "CLBlastInvalidMatrixB";
    case CLBlastInvalidMatrixC: return "CLBlastInvalidMatrixC";
    case CLBlastInvalidDimension: return "CLBlastInvalidDimension";
    case CLBlastInvalidLeadDimA: return "CLBlastInvalidLeadDimA";
    case CLBlastInvalidLeadDimB: return "CLBlastInvalidLeadDimB";
    case CLBlastInvalidLeadDimC: return "CLBlastInvalidLeadDimC";
    case CLBlastInsufficientMemoryA: return "CLBlastInsufficientMemoryA";
    case CLBlastInsufficientMemoryB: return "CLBlastInsufficientMemoryB";
    case CLBlastInsufficientMemoryC: return "CLBlastInsufficientMemoryC";
    case CLBlastInsufficientMemoryTemp: return "CLBlastInsufficientMemoryTemp";
    case CLBlastInvalidLocalMemUsage: return "CLBlastInvalidLocalMemUsage";
    case CLBlastDatabaseError: return "CLBlastDatabaseError";
    case CLBlastUnknownError: return "CLBlastUnknownError";
    case CLBlastUnexpectedError: return "CLBlastUnexpectedError";
    default: return "unknown OpenCL error";
    }
}

static int cl_status(int e)
{
    switch (e) {
    case CL_OUT_OF_HOST_MEMORY:
    case CL_MEM_OBJECT_ALLOCATION_FAILURE: /* also CLBlastTempBufferAllocFailure */
    case CL_INVALID_BUFFER_SIZE:           /* larger than CL_DEVICE_MAX_MEM_ALLOC_SIZE */
        return NF_E_NOMEM;
    default:
        return NF_E_DEVICE;
    }
}

/* ---- platform and device enumeration ---------------------------------------------------- */

#define MAX_PLATFORMS 16
#define MAX_DEVICES 64

typedef struct cl_list {
    int n;
    cl_platform_id plat[MAX_DEVICES];
    cl_device_id dev[MAX_DEVICES];
} cl_list;

/* Lists every device of every platform. Returns 0 on success, or the failing cl_int with
 * *call naming the call. */
static cl_int list_devices(cl_list *l, const char **call)
{
    cl_platform_id plats[MAX_PLATFORMS];
    cl_uint np = 0;
    l->n = 0;
    cl_int rc = clGetPlatformIDs(MAX_PLATFORMS, plats, &np);
    if (rc != CL_SUCCESS) {
        *call = "clGetPlatformIDs";
        return rc;
    }
    if (np > MAX_PLATFORMS)
        np = MAX_PLATFORMS;
    for (cl_uint p = 0; p < np; p++) {
        cl_device_id devs[MAX_DEVICES];
        cl_uint nd = 0;
        rc = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &nd);
        if (rc == CL_DEVICE_NOT_FOUND)
            continue; /* a platform without devices */
        if (rc != CL_SUCCESS)
            continue; /* a broken platform must not hide the others */
        if (nd > MAX_DEVICES)
            nd = MAX_DEVICES;
        for (cl_uint d = 0; d < nd && l->n < MAX_DEVICES; d++) {
            l->plat[l->n] = plats[p];
            l->dev[l->n] = devs[d];
            l->n++;
        }
    }
    return CL_SUCCESS;
}

static int ocl_count(int *n, const char **why)
{
    static _Thread_local char msg[160];
    cl_list l;
    const char *call = NULL;
    cl_int rc = list_devices(&l, &call);
    *n = 0;
    if (why)
        *why = NULL;
    if (rc != CL_SUCCESS) {
        if (rc == -1001)
            snprintf(msg, sizeof msg, "no OpenCL platform (%s %d)", call, (int)rc);
        else
            snprintf(msg, sizeof msg, "OpenCL unavailable (%s %d %s)", call, (int)rc,
                     cl_err_name(rc));
        if (why)
            *why = msg;
        return NF_OK;
    }
    if (l.n == 0 && why) {
        snprintf(msg, sizeof msg, "OpenCL platforms found but no devices");
        *why = msg;
    }
    *n = l.n;
    return NF_OK;
}

/* ---- device and buffers ----------------------------------------------------------------- */

enum {
    K_AXPBY, K_AXPBY_NOX, K_SCALE2D, K_DOT, K_ADAM, K_CONVERT_F16, K_CONVERT_BF16,
    K_CONVERT_F64, K_COUNT
};
static const char *const kernel_names[K_COUNT] = {
    "axpby_f32", "axpby_f32_nox", "scale2d_f32", "dot_f32", "adam_f32",
    "convert_f16", "convert_bf16", "convert_f64",
};

#define DOT_MAX_GROUPS 256

struct nf_buffer {
    cl_mem mem;
    size_t bytes;
};

struct nf_device {
    nf_device_common common;
    cl_platform_id platform;
    cl_device_id id;
    cl_context ctx;
    cl_command_queue queue;
    pthread_mutex_t lock; /* one op at a time: kernels' arguments are per device */
    int fp64;             /* dot accumulates in double */
    int little_endian;
    int rounded_div_sqrt; /* -cl-fp32-correctly-rounded-divide-sqrt is available */
    cl_uint units;
    /* the program, built at first use */
    int built;            /* 0 not yet, 1 built, <0 the status it failed with */
    char build_msg[512];  /* the failure, repeated to later callers */
    cl_program prog;
    cl_kernel k[K_COUNT];
    size_t dot_wg;
    cl_mem dot_partial;   /* DOT_MAX_GROUPS accumulators */
};

static int dev_fail(nf_device *d, nf_error *err, const char *call, cl_int rc)
{
    return nf_error_set(err, cl_status(rc), "opencl:%d (%s): %s failed: %s (%d)",
                        d->common.info.index, d->common.info.name, call, cl_err_name(rc),
                        (int)rc);
}

static void info_str(cl_device_id d, cl_device_info what, char *out, size_t cap)
{
    size_t got = 0;
    out[0] = '\0';
    if (clGetDeviceInfo(d, what, cap, out, &got) != CL_SUCCESS)
        out[0] = '\0';
    out[cap - 1] = '\0';
    /* trim trailing blanks (some drivers pad names) */
    size_t n = strlen(out);
    while (n && (out[n - 1] == ' ' || out[n - 1] == '\n'))
        out[--n] = '\0';
}

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static int ocl_open(int index, nf_device **out, nf_error *err)
{
    cl_list l;
    const char *call = NULL;
    cl_int rc = list_devices(&l, &call);
    if (rc != CL_SUCCESS)
        return nf_error_set(err, NF_E_NODEV, "opencl:%d: no OpenCL platform (%s: %s %d)", index,
                            call, cl_err_name(rc), (int)rc);
    if (index < 0 || index >= l.n)
        return nf_error_set(err, NF_E_NODEV, "opencl:%d: no such device (%d OpenCL device%s)",
                            index, l.n, l.n == 1 ? "" : "s");
    nf_device *d = calloc(1, sizeof *d);
    if (!d)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    if (pthread_mutex_init(&d->lock, NULL) != 0) {
        free(d);
        return nf_error_set(err, NF_E_NOMEM, "opencl:%d: cannot create a mutex", index);
    }
    d->common.backend = &nf_backend_opencl;
    d->platform = l.plat[index];
    d->id = l.dev[index];

    nf_device_info *in = &d->common.info;
    strcpy(in->api, "opencl");
    in->index = index;
    info_str(d->id, CL_DEVICE_NAME, in->name, sizeof in->name);
    char ver[64], drv[64];
    info_str(d->id, CL_DEVICE_VERSION, ver, sizeof ver);
    info_str(d->id, CL_DRIVER_VERSION, drv, sizeof drv);
    snprintf(in->driver, sizeof in->driver, "%s, driver %s", ver, drv);
    cl_device_type type = 0;
    cl_bool unified = CL_FALSE;
    cl_ulong mem = 0;
    clGetDeviceInfo(d->id, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    if (clGetDeviceInfo(d->id, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL))
        unified = CL_FALSE;
    clGetDeviceInfo(d->id, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    in->memory = mem;
    if (type & CL_DEVICE_TYPE_GPU)
        in->type = unified ? NF_DEVICE_INTEGRATED_GPU : NF_DEVICE_DISCRETE_GPU;
    else if (type & CL_DEVICE_TYPE_CPU)
        in->type = NF_DEVICE_SOFTWARE; /* PoCL and other CPU implementations */
    else
        in->type = NF_DEVICE_OTHER;

    cl_device_fp_config dfp = 0, sfp = 0;
    clGetDeviceInfo(d->id, CL_DEVICE_DOUBLE_FP_CONFIG, sizeof dfp, &dfp, NULL);
    clGetDeviceInfo(d->id, CL_DEVICE_SINGLE_FP_CONFIG, sizeof sfp, &sfp, NULL);
    d->fp64 = dfp != 0 && !env_flag("NF_OPENCL_NO_FP64");
    d->rounded_div_sqrt = (sfp & CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) != 0;
    cl_bool little = CL_TRUE;
    clGetDeviceInfo(d->id, CL_DEVICE_ENDIAN_LITTLE, sizeof little, &little, NULL);
    d->little_endian = little == CL_TRUE;
    clGetDeviceInfo(d->id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof d->units, &d->units, NULL);
    if (d->units == 0)
        d->units = 1;

    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)d->platform,
                                     0};
    d->ctx = clCreateContext(props, 1, &d->id, NULL, NULL, &rc);
    if (rc != CL_SUCCESS) {
        int s = dev_fail(d, err, "clCreateContext", rc);
        pthread_mutex_destroy(&d->lock);
        free(d);
        return s;
    }
    d->queue = clCreateCommandQueue(d->ctx, d->id, 0, &rc);
    if (rc != CL_SUCCESS) {
        int s = dev_fail(d, err, "clCreateCommandQueue", rc);
        clReleaseContext(d->ctx);
        pthread_mutex_destroy(&d->lock);
        free(d);
        return s;
    }
    *out = d;
    return NF_OK;
}

static void ocl_close(nf_device *d)
{
    if (!d)
        return;
    if (d->queue)
        clFinish(d->queue);
    if (d->dot_partial)
        clReleaseMemObject(d->dot_partial);
    for (int i = 0; i < K_COUNT; i++)
        if (d->k[i])
            clReleaseKernel(d->k[i]);
    if (d->prog)
        clReleaseProgram(d->prog);
    if (d->queue)
        clReleaseCommandQueue(d->queue);
    if (d->ctx)
        clReleaseContext(d->ctx);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

static int ocl_alloc(nf_device *d, size_t n, nf_buffer **out, nf_error *err)
{
    if (n > SIZE_MAX / 4)
        return nf_error_set(err, NF_E_NOMEM, "opencl:%d: buffer of %zu floats is too large",
                            d->common.info.index, n);
    nf_buffer *b = malloc(sizeof *b);
    if (!b)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    b->bytes = (n ? n : 1) * 4;
    cl_int rc;
    b->mem = clCreateBuffer(d->ctx, CL_MEM_READ_WRITE, b->bytes, NULL, &rc);
    if (rc != CL_SUCCESS) {
        free(b);
        return nf_error_set(err, cl_status(rc),
                            "opencl:%d (%s): clCreateBuffer of %zu bytes failed: %s (%d)",
                            d->common.info.index, d->common.info.name, (size_t)(n ? n : 1) * 4,
                            cl_err_name(rc), (int)rc);
    }
    *out = b;
    return NF_OK;
}

static void ocl_free(nf_device *d, nf_buffer *b)
{
    (void)d;
    if (b) {
        clReleaseMemObject(b->mem);
        free(b);
    }
}

static int range_ok(nf_device *d, const nf_buffer *b, size_t off, size_t bytes, nf_error *err,
                    const char *what)
{
    if (off > b->bytes || bytes > b->bytes - off)
        return nf_error_set(err, NF_E_INTERNAL,
                            "opencl:%d: %s of %zu bytes at %zu outside a buffer of %zu bytes",
                            d->common.info.index, what, bytes, off, b->bytes);
    return NF_OK;
}

static int ocl_upload(nf_device *d, nf_buffer *b, size_t off, const void *src, size_t bytes,
                      nf_error *err)
{
    if (bytes == 0)
        return NF_OK;
    int s = range_ok(d, b, off, bytes, err, "upload");
    if (s)
        return s;
    pthread_mutex_lock(&d->lock);
    /* blocking: the caller may free src as soon as this returns */
    cl_int rc = clEnqueueWriteBuffer(d->queue, b->mem, CL_TRUE, off, bytes, src, 0, NULL, NULL);
    pthread_mutex_unlock(&d->lock);
    return rc == CL_SUCCESS ? NF_OK : dev_fail(d, err, "clEnqueueWriteBuffer", rc);
}

static int ocl_download(nf_device *d, const nf_buffer *b, size_t off, void *dst, size_t bytes,
                        nf_error *err)
{
    if (bytes == 0)
        return NF_OK;
    int s = range_ok(d, b, off, bytes, err, "download");
    if (s)
        return s;
    pthread_mutex_lock(&d->lock);
    cl_int rc = clEnqueueReadBuffer(d->queue, b->mem, CL_TRUE, off, bytes, dst, 0, NULL, NULL);
    pthread_mutex_unlock(&d->lock);
    return rc == CL_SUCCESS ? NF_OK : dev_fail(d, err, "clEnqueueReadBuffer", rc);
}

static int ocl_finish(nf_device *d, nf_error *err)
{
    pthread_mutex_lock(&d->lock);
    cl_int rc = clFinish(d->queue);
    pthread_mutex_unlock(&d->lock);
    return rc == CL_SUCCESS ? NF_OK : dev_fail(d, err, "clFinish", rc);
}

/* ---- the program: embedded sources, built at first use, cached on disk (ocl_cache.c) ---- */

/* Best effort: a failure to write the cache is not an error (nf_ocl_cache_store). */
static void store_binary(nf_device *d, const char *path)
{
    size_t len = 0;
    if (clGetProgramInfo(d->prog, CL_PROGRAM_BINARY_SIZES, sizeof len, &len, NULL) ||
        len == 0)
        return;
    unsigned char *bin = malloc(len);
    if (!bin)
        return;
    if (clGetProgramInfo(d->prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS)
        nf_ocl_cache_store(path, bin, len);
    free(bin);
}

static int build_log_fail(nf_device *d, cl_int rc, const char *call)
{
    char log[384];
    size_t got = 0;
    log[0] = '\0';
    if (d->prog && clGetProgramBuildInfo(d->prog, d->id, CL_PROGRAM_BUILD_LOG, sizeof log, log,
                                         &got) == CL_SUCCESS)
        log[sizeof log - 1] = '\0';
    else
        log[0] = '\0';
    snprintf(d->build_msg, sizeof d->build_msg, "opencl:%d (%s): %s failed: %s (%d)%s%s",
             d->common.info.index, d->common.info.name, call, cl_err_name(rc), (int)rc,
             log[0] ? ": " : "", log);
    return cl_status(rc);
}

static int build_program(nf_device *d)
{
    char opts[160];
    snprintf(opts, sizeof opts, "%s%s", d->fp64 ? "-DNF_HAVE_FP64=1" : "",
             d->rounded_div_sqrt ? " -cl-fp32-correctly-rounded-divide-sqrt" : "");
    cl_int rc = CL_SUCCESS;

    char path[1024], plat[256];
    plat[0] = '\0';
    clGetPlatformInfo(d->platform, CL_PLATFORM_NAME, sizeof plat, plat, NULL);
    plat[sizeof plat - 1] = '\0';
    int cached = nf_ocl_cache_path(plat, d->common.info.name, d->common.info.driver, opts, path,
                                   sizeof path);
    if (cached) {
        size_t len = 0;
        unsigned char *bin = nf_ocl_cache_load(path, &len);
        if (bin) {
            cl_int bst = CL_SUCCESS;
            const unsigned char *bp = bin;
            d->prog = clCreateProgramWithBinary(d->ctx, 1, &d->id, &len, &bp, &bst, &rc);
            free(bin);
            if (rc == CL_SUCCESS && bst == CL_SUCCESS &&
                clBuildProgram(d->prog, 1, &d->id, opts, NULL, NULL) == CL_SUCCESS)
                return NF_OK;
            /* stale or foreign binary: build from source and overwrite it */
            if (d->prog)
                clReleaseProgram(d->prog);
            d->prog = NULL;
        }
    }

    const char *srcs[16];
    size_t lens[16];
    cl_uint ns = 0;
    for (const nf_embedded *s = nf_opencl_src_table; s->name && ns < 16; s++, ns++) {
        srcs[ns] = s->text;
        lens[ns] = s->len;
    }
    d->prog = clCreateProgramWithSource(d->ctx, ns, srcs, lens, &rc);
    if (rc != CL_SUCCESS) {
        d->prog = NULL;
        return build_log_fail(d, rc, "clCreateProgramWithSource");
    }
    rc = clBuildProgram(d->prog, 1, &d->id, opts, NULL, NULL);
    if (rc != CL_SUCCESS)
        return build_log_fail(d, rc, "clBuildProgram");
    if (cached)
        store_binary(d, path);
    return NF_OK;
}

/* Builds the program and its kernels once per device; the caller holds d->lock. */
static int ensure_program(nf_device *d, nf_error *err)
{
    if (d->built == 1)
        return NF_OK;
    if (d->built < 0)
        return nf_error_set(err, d->built, "%s", d->build_msg);
    int s = build_program(d);
    cl_int rc = CL_SUCCESS;
    for (int i = 0; s == NF_OK && i < K_COUNT; i++) {
        d->k[i] = clCreateKernel(d->prog, kernel_names[i], &rc);
        if (rc != CL_SUCCESS) {
            d->k[i] = NULL;
            s = build_log_fail(d, rc, "clCreateKernel");
        }
    }
    if (s == NF_OK) {
        /* dot: the largest power-of-two work-group size the kernel allows, at most 256 */
        size_t wg = 1;
        clGetKernelWorkGroupInfo(d->k[K_DOT], d->id, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg,
                                 NULL);
        size_t p = 1;
        while (p * 2 <= wg && p * 2 <= 256)
            p *= 2;
        d->dot_wg = p;
        d->dot_partial = clCreateBuffer(d->ctx, CL_MEM_READ_WRITE, DOT_MAX_GROUPS * sizeof(double),
                                        NULL, &rc);
        if (rc != CL_SUCCESS) {
            d->dot_partial = NULL;
            s = build_log_fail(d, rc, "clCreateBuffer");
        }
    }
    if (s != NF_OK) {
        for (int i = 0; i < K_COUNT; i++)
            if (d->k[i]) {
                clReleaseKernel(d->k[i]);
                d->k[i] = NULL;
            }
        if (d->prog)
            clReleaseProgram(d->prog);
        d->prog = NULL;
        d->built = s;
        return nf_error_set(err, s, "%s", d->build_msg);
    }
    d->built = 1;
    return NF_OK;
}

/* ---- launching -------------------------------------------------------------------------- */

typedef struct karg {
    size_t size;
    const void *p;
} karg;

#define ARG(x) ((karg){sizeof(x), &(x)})
#define LOCAL(bytes) ((karg){(bytes), NULL})

static int launch(nf_device *d, int k, int dims, const size_t *global, const size_t *local,
                  const karg *args, int nargs, nf_error *err)
{
    for (int i = 0; i < nargs; i++) {
        cl_int rc = clSetKernelArg(d->k[k], (cl_uint)i, args[i].size, args[i].p);
        if (rc != CL_SUCCESS) {
            char call[64];
            snprintf(call, sizeof call, "clSetKernelArg(%s, %d)", kernel_names[k], i);
            return dev_fail(d, err, call, rc);
        }
    }
    cl_int rc = clEnqueueNDRangeKernel(d->queue, d->k[k], (cl_uint)dims, NULL, global, local, 0,
                                       NULL, NULL);
    if (rc != CL_SUCCESS) {
        char call[80];
        snprintf(call, sizeof call, "clEnqueueNDRangeKernel(%s)", kernel_names[k]);
        return dev_fail(d, err, call, rc);
    }
    return NF_OK;
}

/* Work-items for a 1-D grid-stride kernel over n elements: enough to fill the device, not
 * many more than n, and a multiple of 64 so that the driver can pick a good work-group size
 * (the kernels' loops check bounds; a prime n must not force work-groups of one item). */
static size_t grid_1d(const nf_device *d, size_t n)
{
    size_t cap = (size_t)d->units * 4096;
    if (cap < 65536)
        cap = 65536;
    size_t g = n < cap ? n : cap;
    return (g + 63) / 64 * 64;
}

static int elems_ok(nf_device *d, const nf_buffer *b, size_t off, size_t n, nf_error *err,
                    const char *what)
{
    if (off > b->bytes / 4 || n > b->bytes / 4 - off)
        return nf_error_set(err, NF_E_INTERNAL,
                            "opencl:%d: %s: %zu elements at %zu outside a buffer of %zu",
                            d->common.info.index, what, n, off, b->bytes / 4);
    return NF_OK;
}

static int view_ok(nf_device *d, const nf_view *v, int rows, int cols, nf_error *err,
                   const char *what)
{
    if (v->rows != rows || v->cols != cols || rows < 0 || cols < 0 || (rows > 1 && v->ld < cols))
        return nf_error_set(err, NF_E_INTERNAL,
                            "opencl:%d: %s: bad view (%d x %d, ld %d; expected %d x %d)",
                            d->common.info.index, what, v->rows, v->cols, v->ld, rows, cols);
    if (rows == 0 || cols == 0)
        return NF_OK;
    size_t span = (size_t)(rows - 1) * (size_t)v->ld + (size_t)cols;
    return elems_ok(d, v->buf, v->off, span, err, what);
}

/* c = beta * c over a view (beta == 0: zeros, c not read); the caller holds the lock */
static int scale_view(nf_device *d, const nf_view *c, float beta, nf_error *err)
{
    if (c->rows == 0 || c->cols == 0)
        return NF_OK;
    cl_ulong off = c->off;
    int rows = c->rows, cols = c->cols, ld = c->ld;
    /* multiples of 16, capped: the kernel's loops check bounds and stride over the rest */
    size_t global[2] = {((size_t)(cols < 4096 ? cols : 4096) + 15) / 16 * 16,
                        ((size_t)(rows < 1024 ? rows : 1024) + 15) / 16 * 16};
    karg a[] = {ARG(rows), ARG(cols), ARG(ld), ARG(beta), ARG(c->buf->mem), ARG(off)};
    return launch(d, K_SCALE2D, 2, global, NULL, a, 6, err);
}

/* ---- compute slots ---------------------------------------------------------------------- */

/* The leading dimension CLBlast gets: a view of one row may carry any ld (it is never used),
 * CLBlast insists on ld >= cols for a row-major matrix. */
static size_t blas_ld(const nf_view *v)
{
    return v->rows <= 1 && v->ld < v->cols ? (size_t)v->cols : (size_t)v->ld;
}

static int ocl_gemm(nf_device *d, const nf_gemm_op *op, nf_error *err)
{
    const int m = op->m, n = op->n, k = op->k;
    int s;
    if (m < 0 || n < 0 || k < 0)
        return nf_error_set(err, NF_E_INTERNAL, "opencl: gemm with negative sizes");
    /* op(A) is m x k: A is stored k x m when transposed; likewise B */
    if ((s = view_ok(d, &op->a, op->trans_a ? k : m, op->trans_a ? m : k, err, "gemm A")) ||
        (s = view_ok(d, &op->b, op->trans_b ? n : k, op->trans_b ? k : n, err, "gemm B")) ||
        (s = view_ok(d, &op->c, m, n, err, "gemm C")))
        return s;
    if (m == 0 || n == 0)
        return NF_OK;
    pthread_mutex_lock(&d->lock);
    s = ensure_program(d, err);
    if (s == NF_OK && (k == 0 || op->alpha == 0.0f || op->beta == 0.0f))
        /* C = beta C (k == 0 or alpha == 0: that is the whole result), and beta == 0 must
         * not read C: zero it first, then CLBlast's beta * C reads only zeros */
        s = scale_view(d, &op->c, op->beta, err);
    if (s == NF_OK && k > 0 && op->alpha != 0.0f) {
        /* Row-major views map straight onto CLBlast: element offsets and leading
         * dimensions are the views' own (CLBlast counts offsets in elements too). */
        CLBlastStatusCode st = CLBlastSgemm(
            CLBlastLayoutRowMajor, op->trans_a ? CLBlastTransposeYes : CLBlastTransposeNo,
            op->trans_b ? CLBlastTransposeYes : CLBlastTransposeNo, (size_t)m, (size_t)n,
            (size_t)k, op->alpha, op->a.buf->mem, op->a.off, blas_ld(&op->a), op->b.buf->mem,
            op->b.off, blas_ld(&op->b), op->beta, op->c.buf->mem, op->c.off, blas_ld(&op->c),
            &d->queue, NULL);
        if (st != CLBlastSuccess) {
            char call[96];
            snprintf(call, sizeof call, "CLBlastSgemm(%c%c, %d x %d x %d)",
                     op->trans_a ? 'T' : 'N', op->trans_b ? 'T' : 'N', m, n, k);
            s = dev_fail(d, err, call, st);
        }
    }
    pthread_mutex_unlock(&d->lock);
    return s;
}

static int ocl_axpby(nf_device *d, const nf_axpby_op *op, nf_error *err)
{
    int s = elems_ok(d, op->y, op->y_off, op->n, err, "axpby y");
    if (!s && op->x)
        s = elems_ok(d, op->x, op->x_off, op->n, err, "axpby x");
    if (s || op->n == 0)
        return s;
    cl_ulong n = op->n, xo = op->x_off, yo = op->y_off;
    float alpha = op->alpha, beta = op->beta;
    size_t global = grid_1d(d, op->n);
    pthread_mutex_lock(&d->lock);
    s = ensure_program(d, err);
    if (s == NF_OK && op->x) {
        karg a[] = {ARG(n), ARG(alpha), ARG(beta), ARG(op->x->mem), ARG(xo), ARG(op->y->mem),
                    ARG(yo)};
        s = launch(d, K_AXPBY, 1, &global, NULL, a, 7, err);
    } else if (s == NF_OK) {
        karg a[] = {ARG(n), ARG(alpha), ARG(beta), ARG(op->y->mem), ARG(yo)};
        s = launch(d, K_AXPBY_NOX, 1, &global, NULL, a, 5, err);
    }
    pthread_mutex_unlock(&d->lock);
    return s;
}

static int ocl_dot(nf_device *d, const nf_dot_op *op, double *out, nf_error *err)
{
    *out = 0.0;
    int s = elems_ok(d, op->x, op->x_off, op->n, err, "dot x");
    if (!s && op->y)
        s = elems_ok(d, op->y, op->y_off, op->n, err, "dot y");
    if (s || op->n == 0)
        return s;
    pthread_mutex_lock(&d->lock);
    s = ensure_program(d, err);
    if (s) {
        pthread_mutex_unlock(&d->lock);
        return s;
    }
    const size_t wg = d->dot_wg;
    size_t groups = (op->n + wg - 1) / wg;
    if (groups > DOT_MAX_GROUPS)
        groups = DOT_MAX_GROUPS;
    size_t global = groups * wg, acc = d->fp64 ? sizeof(double) : sizeof(float);
    cl_ulong n = op->n, xo = op->x_off, yo = op->y_off;
    cl_int has_y = op->y != NULL;
    cl_mem y = op->y ? op->y->mem : op->x->mem;
    karg a[] = {ARG(n), ARG(op->x->mem), ARG(xo), ARG(y), ARG(yo), ARG(has_y),
                ARG(d->dot_partial), LOCAL(wg * acc)};
    s = launch(d, K_DOT, 1, &global, &wg, a, 8, err);
    double part_d[DOT_MAX_GROUPS];
    float part_f[DOT_MAX_GROUPS];
    if (s == NF_OK) {
        cl_int rc = clEnqueueReadBuffer(d->queue, d->dot_partial, CL_TRUE, 0, groups * acc,
                                        d->fp64 ? (void *)part_d : (void *)part_f, 0, NULL,
                                        NULL);
        if (rc != CL_SUCCESS)
            s = dev_fail(d, err, "clEnqueueReadBuffer(dot partials)", rc);
    }
    pthread_mutex_unlock(&d->lock);
    if (s)
        return s;
    double sum = 0.0;
    for (size_t i = 0; i < groups; i++)
        sum += d->fp64 ? part_d[i] : (double)part_f[i];
    *out = sum;
    return NF_OK;
}

static int ocl_adam(nf_device *d, const nf_adam_op *op, nf_error *err)
{
    int s;
    if ((s = elems_ok(d, op->x, op->x_off, op->n, err, "adam x")) ||
        (s = elems_ok(d, op->m, op->m_off, op->n, err, "adam m")) ||
        (s = elems_ok(d, op->v, op->v_off, op->n, err, "adam v")) ||
        (s = elems_ok(d, op->g, op->g_off, op->n, err, "adam g")))
        return s;
    if (op->n == 0)
        return NF_OK;
    cl_ulong n = op->n, xo = op->x_off, go = op->g_off, mo = op->m_off, vo = op->v_off;
    float b1 = op->b1, b2 = op->b2, eps = op->eps;
    float ss = (float)op->step_size, bc = (float)op->bc2_sqrt; /* as nf_cpu_adam */
    size_t global = grid_1d(d, op->n);
    pthread_mutex_lock(&d->lock);
    s = ensure_program(d, err);
    if (s == NF_OK) {
        karg a[] = {ARG(n),  ARG(op->x->mem), ARG(xo), ARG(op->g->mem), ARG(go),
                    ARG(op->m->mem), ARG(mo), ARG(op->v->mem), ARG(vo), ARG(b1),
                    ARG(b2), ARG(eps), ARG(ss), ARG(bc)};
        s = launch(d, K_ADAM, 1, &global, NULL, a, 14, err);
    }
    pthread_mutex_unlock(&d->lock);
    return s;
}

static int ocl_convert(nf_device *d, const nf_convert_op *op, nf_error *err)
{
    int kern;
    size_t es, unit; /* element size, and the word size the kernel indexes by */
    switch (op->src_dtype) {
    case NF_F16: kern = K_CONVERT_F16; es = 2; unit = 2; break;
    case NF_BF16: kern = K_CONVERT_BF16; es = 2; unit = 2; break;
    case NF_F64: kern = K_CONVERT_F64; es = 8; unit = 4; break;
    default:
        return NF_E_UNSUPPORTED; /* F32 is a copy; the rest are not float dtypes */
    }
    /* misaligned sources and big-endian devices: the CPU fallback converts them */
    if (op->src_byte_off % unit || !d->little_endian)
        return NF_E_UNSUPPORTED;
    if (op->n > SIZE_MAX / es)
        return nf_error_set(err, NF_E_INTERNAL, "opencl: convert of %zu elements", op->n);
    int s = range_ok(d, op->src, op->src_byte_off, op->n * es, err, "convert source");
    if (!s)
        s = elems_ok(d, op->dst, op->dst_off, op->n, err, "convert destination");
    if (s || op->n == 0)
        return s;
    cl_ulong n = op->n, so = op->src_byte_off / unit, dso = op->dst_off;
    size_t global = grid_1d(d, op->n);
    pthread_mutex_lock(&d->lock);
    s = ensure_program(d, err);
    if (s == NF_OK) {
        karg a[] = {ARG(n), ARG(op->src->mem), ARG(so), ARG(op->dst->mem), ARG(dso)};
        s = launch(d, kern, 1, &global, NULL, a, 5, err);
    }
    pthread_mutex_unlock(&d->lock);
    return s;
}

const nf_backend nf_backend_opencl = {
    .api = "opencl",
    .count = ocl_count,
    .open = ocl_open,
    .close = ocl_close,
    .alloc = ocl_alloc,
    .free = ocl_free,
    .upload = ocl_upload,
    .download = ocl_download,
    .host_memory = 0, /* device memory: the host goes through download() */
    .host_ptr = NULL,
    .finish = ocl_finish,
    .gemm = ocl_gemm,
    .axpby = ocl_axpby,
    .dot = ocl_dot,
    .adam = ocl_adam,
    .convert = ocl_convert,
    .qr = NULL,
    .svd = NULL,
};
