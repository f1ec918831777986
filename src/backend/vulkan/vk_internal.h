/*
 * The Vulkan backend's internals, shared by vk_device.c (instance, device, transfers, command
 * submission), vk_memory.c (the buffer sub-allocator), vk_pipeline.c (GLSL -> SPIR-V through
 * glslang, pipeline layout and caches) and vk_ops.c (the compute slots). Nothing here is
 * visible outside src/backend/vulkan.
 */
#ifndef NF_VK_INTERNAL_H
#define NF_VK_INTERNAL_H

#include <vulkan/vulkan.h>

#include "../backend.h"

enum {
    NF_VK_BINDINGS = 4,          /* storage buffers per dispatch (Adam uses all four) */
    NF_VK_PUSH_BYTES = 128,      /* the minimum every device guarantees */
    NF_VK_BATCHES = 3,           /* command buffers in flight */
    NF_VK_SETS_PER_BATCH = 64,   /* dispatches recorded before a batch is submitted */
    NF_VK_PARTIALS = 512,        /* workgroups (and partial sums) of a dot product */
};

/* Which GEMM shader runs on this device (NF_VULKAN_GEMM=tiled|sg|reg overrides). */
typedef enum nf_vk_gemm_kind {
    NF_VK_GEMM_TILED = 0, /* shared-memory block tiles, register micro-tiles: GPUs */
    NF_VK_GEMM_SG = 1,    /* register tiles shared across a subgroup: CPU implementations */
    NF_VK_GEMM_REG = 2,   /* per-invocation register tiles, nothing else: the fallback */
} nf_vk_gemm_kind;

/* A VkDeviceMemory allocation with one VkBuffer over all of it; nf_buffers are ranges of it. */
typedef struct nf_vk_block nf_vk_block;
struct nf_vk_block {
    VkBuffer buf;
    VkDeviceMemory mem;
    VkDeviceSize size;
    char *map;               /* persistently mapped when the memory is host-visible */
    int dedicated;           /* holds exactly one large buffer */
    size_t live;             /* nf_buffers allocated from it */
    /* free ranges, sorted by offset, adjacent ones merged */
    VkDeviceSize *free_off, *free_len;
    int nfree, capfree;
    nf_vk_block *next;
};

struct nf_buffer {
    nf_vk_block *block;
    VkDeviceSize offset;     /* bytes, within block->buf */
    VkDeviceSize size;       /* bytes */
    VkDeviceSize reserved;   /* bytes taken from the block (size rounded up) */
    nf_buffer *prev, *next;  /* the device's live buffers */
};

typedef struct nf_vk_batch {
    VkCommandBuffer cmd;
    VkFence fence;
    VkDescriptorPool pool;
    int state;               /* 0 idle, 1 recording, 2 submitted */
    int nsets;
    double flops;
} nf_vk_batch;

typedef struct nf_vk_pipeline nf_vk_pipeline;
struct nf_vk_pipeline {
    char *key;               /* shader name + injected #defines */
    VkPipeline pipe;
    nf_vk_pipeline *next;
};

struct nf_device {
    nf_device_common common;

    VkInstance instance;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t qfamily;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties memprops;

    /* capabilities and choices */
    int has_f64;             /* shaderFloat64 enabled */
    uint32_t subgroup;       /* subgroup size when compute shaders have basic + ballot ops */
    nf_vk_gemm_kind gemm_kind;
    VkDeviceSize max_range;  /* maxStorageBufferRange */
    VkDeviceSize bind_align; /* max(minStorageBufferOffsetAlignment, 4) */
    uint64_t timeout_ns;     /* per fence wait */

    /* objects */
    VkCommandPool cmdpool;
    VkDescriptorSetLayout dsl;
    VkPipelineLayout playout;
    VkPipelineCache pcache;
    nf_vk_pipeline *pipes;
    nf_vk_batch batch[NF_VK_BATCHES];
    int cur;                 /* the batch being recorded, or the next to record */

    /* memory */
    int32_t buf_type;        /* memory type of buffers (-1 until the first block) */
    int buf_mapped;          /* that type is host-visible and coherent: mapped directly */
    VkDeviceSize block_size;
    nf_buffer *live;         /* every buffer allocated and not freed (closed with the device) */
    nf_vk_block *blocks;     /* holding live buffers */
    nf_vk_block *spare;      /* one empty block kept for reuse */
    nf_vk_block *zombies;    /* released while commands may still use them */
    nf_vk_block *stage;      /* host-visible staging block (lazily created) */
    nf_buffer *partials;     /* dot products' per-workgroup sums; also the dummy binding */

    int lost;                /* a fatal error happened: every later call fails */
    char lost_msg[256];
};

/* A range of a buffer as bound to a descriptor: [base, base + range) of vkbuf, with the
 * requested start at rel bytes from base (base is aligned to bind_align). */
typedef struct nf_vk_range {
    VkBuffer vkbuf;
    VkDeviceSize base, range, rel;
} nf_vk_range;

/* ---- vk_device.c ---- */
int nf_vk_fail(nf_device *d, nf_error *err, VkResult r, const char *call);
/* The VkResult's name ("VK_ERROR_DEVICE_LOST"), "VkResult" for one not listed. */
const char *nf_vk_result_name(VkResult r);
int nf_vk_check_alive(nf_device *d, nf_error *err);
/* The range covering bytes [byte_off, byte_off + bytes) of buf; 0 when it fits the device's
 * maxStorageBufferRange, -1 otherwise. */
int nf_vk_range_of(const nf_device *d, const nf_buffer *buf, VkDeviceSize byte_off,
                   VkDeviceSize bytes, nf_vk_range *out);
/* Records a dispatch of pipe over gx x gy x gz workgroups, after a barrier that orders it
 * behind everything queued before. flops only paces batch submission. */
int nf_vk_dispatch(nf_device *d, const nf_vk_pipeline *pipe, const nf_vk_range *ranges,
                   int nranges, const void *push, uint32_t push_bytes, uint32_t gx, uint32_t gy,
                   uint32_t gz, double flops, nf_error *err);
/* Records a copy from a device buffer's range to the staging block, submits and waits; the
 * bytes are then at nf_vk_stage_ptr(d). bytes <= the staging size. */
int nf_vk_read_back(nf_device *d, const nf_buffer *buf, VkDeviceSize byte_off,
                    VkDeviceSize bytes, nf_error *err);
const void *nf_vk_stage_ptr(const nf_device *d);
/* Submits what is recorded and waits for the queue to drain. */
int nf_vk_sync(nf_device *d, nf_error *err);

/* ---- vk_memory.c ---- */
int nf_vk_alloc(nf_device *d, size_t n, nf_buffer **out, nf_error *err);
void nf_vk_free(nf_device *d, nf_buffer *buf);
/* Checks the device's binding alignment against the sub-allocator's and sizes its blocks
 * (after bind_align and the memory size are known). */
int nf_vk_memory_init(nf_device *d, nf_error *err);
/* The host-visible staging block, created on first use. */
int nf_vk_ensure_stage(nf_device *d, nf_error *err);
/* Destroys the blocks released while the queue was busy (call once it has drained). */
void nf_vk_destroy_zombies(nf_device *d);
/* Destroys every block: the device's buffers are freed and the queue is idle. */
void nf_vk_memory_release(nf_device *d);

/* ---- vk_pipeline.c ---- */
/* The pipeline layout (the descriptor-set layout d->dsl, NF_VK_PUSH_BYTES of push constants)
 * every shader uses, and the driver's VkPipelineCache; nf_vk_pipelines_destroy destroys them
 * with the pipelines. */
int nf_vk_pipelines_init(nf_device *d, nf_error *err);
/* The pipeline for a shader (by name, from shaders/) with #defines injected before compiling,
 * from the device's cache or compiled now. defines: "NAME=VALUE NAME=VALUE ...". */
int nf_vk_pipeline_get(nf_device *d, const char *shader, const char *defines,
                       const nf_vk_pipeline **out, nf_error *err);
void nf_vk_pipelines_destroy(nf_device *d);

/* ---- vk_ops.c ---- */
int nf_vk_gemm(nf_device *d, const nf_gemm_op *op, nf_error *err);
int nf_vk_axpby(nf_device *d, const nf_axpby_op *op, nf_error *err);
int nf_vk_dot(nf_device *d, const nf_dot_op *op, double *out, nf_error *err);
int nf_vk_adam(nf_device *d, const nf_adam_op *op, nf_error *err);
int nf_vk_convert(nf_device *d, const nf_convert_op *op, nf_error *err);

#endif
