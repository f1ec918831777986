/*
 * The Vulkan backend: instance and device setup, memory, transfers and command submission.
 *
 * Memory: buffers are ranges of large blocks (one VkDeviceMemory and one VkBuffer over all of
 * it, first-fit with merging of free neighbours); large requests get a block of their own.
 * Device-local memory is preferred; where it is also host-visible and coherent (integrated
 * GPUs, CPU implementations such as lavapipe) blocks are mapped and uploads and downloads are
 * plain copies, otherwise they go through a host-visible staging block in chunks.
 *
 * Submission: operations are recorded into one of NF_VK_BATCHES command buffers, each with a
 * fence and a descriptor pool; a batch is submitted when full and the next one recorded while
 * it runs. Every dispatch is preceded by a global memory barrier, so operations run in the
 * order they were queued. Uploads, downloads, dot products and finish() drain the queue.
 *
 * Every VkResult is translated here, once, into a status and a message naming the call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk_internal.h"

enum {
    BLOCK_BYTES = 64 << 20,     /* default block size */
    SUBALLOC_ALIGN = 256,       /* >= every device's minStorageBufferOffsetAlignment */
    STAGE_BYTES = 8 << 20,      /* staging block */
};
#define BATCH_FLOPS 4e9         /* submit a batch once this much GEMM work is recorded */

/* ---- errors ---- */

static const char *result_name(VkResult r)
{
    switch (r) {
#define R_(x) case x: return #x;
    R_(VK_SUCCESS) R_(VK_NOT_READY) R_(VK_TIMEOUT) R_(VK_INCOMPLETE)
    R_(VK_ERROR_OUT_OF_HOST_MEMORY) R_(VK_ERROR_OUT_OF_DEVICE_MEMORY)
    R_(VK_ERROR_INITIALIZATION_FAILED) R_(VK_ERROR_DEVICE_LOST) R_(VK_ERROR_MEMORY_MAP_FAILED)
    R_(VK_ERROR_LAYER_NOT_PRESENT) R_(VK_ERROR_EXTENSION_NOT_PRESENT)
    R_(VK_ERROR_FEATURE_NOT_PRESENT) R_(VK_ERROR_INCOMPATIBLE_DRIVER)
    R_(VK_ERROR_TOO_MANY_OBJECTS) R_(VK_ERROR_FORMAT_NOT_SUPPORTED)
    R_(VK_ERROR_FRAGMENTED_POOL) R_(VK_ERROR_OUT_OF_POOL_MEMORY)
    R_(VK_ERROR_INVALID_SHADER_NV) R_(VK_ERROR_FRAGMENTATION) R_(VK_ERROR_UNKNOWN)
#undef R_
    default: return "VkResult";
    }
}

int nf_vk_fail(nf_device *d, nf_error *err, VkResult r, const char *call)
{
    int code;
    switch (r) {
    case VK_ERROR_OUT_OF_HOST_MEMORY:
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
    case VK_ERROR_OUT_OF_POOL_MEMORY:
    case VK_ERROR_FRAGMENTED_POOL:
    case VK_ERROR_FRAGMENTATION:
        code = NF_E_NOMEM;
        break;
    case VK_ERROR_INCOMPATIBLE_DRIVER:
    case VK_ERROR_INITIALIZATION_FAILED:
    case VK_ERROR_EXTENSION_NOT_PRESENT:
    case VK_ERROR_FEATURE_NOT_PRESENT:
    case VK_ERROR_LAYER_NOT_PRESENT:
        code = NF_E_NODEV;
        break;
    case VK_ERROR_TOO_MANY_OBJECTS:
        code = NF_E_LIMIT;
        break;
    default:
        code = NF_E_DEVICE;
        break;
    }
    const char *dev = d ? d->common.info.name : "";
    int index = d ? d->common.info.index : 0;
    if (d && (r == VK_ERROR_DEVICE_LOST || r == VK_TIMEOUT)) {
        d->lost = 1;
        snprintf(d->lost_msg, sizeof d->lost_msg, "vulkan:%d (%.120s) is unusable after %s failed: %s",
                 index, dev, call, result_name(r));
    }
    if (!d)
        return nf_error_set(err, code, "vulkan: %s failed: %s (%d)", call, result_name(r), (int)r);
    if (r == VK_TIMEOUT)
        return nf_error_set(err, code,
                            "vulkan:%d (%s): %s timed out after %.0f s (the device hangs; a Vulkan "
                            "device opened before fork() does not work in the child)",
                            index, dev, call, (double)d->timeout_ns * 1e-9);
    return nf_error_set(err, code, "vulkan:%d (%s): %s failed: %s (%d)", index, dev, call,
                        result_name(r), (int)r);
}

int nf_vk_check_alive(nf_device *d, nf_error *err)
{
    if (d->lost)
        return nf_error_set(err, NF_E_DEVICE, "%s", d->lost_msg);
    return NF_OK;
}

/* ---- instance ---- */

static VkResult create_instance(VkInstance *out, uint32_t *api_out)
{
    *out = VK_NULL_HANDLE;
    PFN_vkEnumerateInstanceVersion env =
        (PFN_vkEnumerateInstanceVersion)vkGetInstanceProcAddr(NULL, "vkEnumerateInstanceVersion");
    uint32_t version = VK_API_VERSION_1_0;
    if (env && env(&version) != VK_SUCCESS)
        version = VK_API_VERSION_1_0;
    if (version < VK_API_VERSION_1_1)
        return VK_ERROR_INCOMPATIBLE_DRIVER; /* 1.1 is needed (properties2, SPIR-V 1.3) */
    uint32_t api = version >= VK_API_VERSION_1_2 ? VK_API_VERSION_1_2 : VK_API_VERSION_1_1;

    /* MoltenVK and other portability implementations are listed only when asked for */
    const char *ext[1];
    uint32_t next = 0;
    VkInstanceCreateFlags flags = 0;
    uint32_t n = 0;
    if (vkEnumerateInstanceExtensionProperties(NULL, &n, NULL) == VK_SUCCESS && n > 0) {
        VkExtensionProperties *props = calloc(n, sizeof *props);
        if (props && vkEnumerateInstanceExtensionProperties(NULL, &n, props) >= 0) {
            for (uint32_t i = 0; i < n; i++)
                if (strcmp(props[i].extensionName, "VK_KHR_portability_enumeration") == 0) {
                    ext[next++] = "VK_KHR_portability_enumeration";
                    flags |= 0x00000001; /* VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR */
                }
        }
        free(props);
    }
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = "nufilt",
        .pEngineName = "nufilt",
        .apiVersion = api,
    };
    VkInstanceCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .flags = flags,
        .pApplicationInfo = &app,
        .enabledExtensionCount = next,
        .ppEnabledExtensionNames = next ? ext : NULL,
    };
    if (api_out)
        *api_out = api;
    return vkCreateInstance(&ci, NULL, out);
}

static int vk_count(int *n, const char **why)
{
    static _Thread_local char msg[160];
    *n = 0;
    if (why)
        *why = NULL;
    VkInstance inst;
    VkResult r = create_instance(&inst, NULL);
    if (r != VK_SUCCESS) {
        if (r == VK_ERROR_INCOMPATIBLE_DRIVER)
            snprintf(msg, sizeof msg, "no Vulkan driver (vkCreateInstance %d)", (int)r);
        else
            snprintf(msg, sizeof msg, "Vulkan unavailable (vkCreateInstance %s, %d)",
                     result_name(r), (int)r);
        if (why)
            *why = msg;
        return NF_OK;
    }
    uint32_t cnt = 0;
    r = vkEnumeratePhysicalDevices(inst, &cnt, NULL);
    vkDestroyInstance(inst, NULL);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        snprintf(msg, sizeof msg, "Vulkan unavailable (vkEnumeratePhysicalDevices %s, %d)",
                 result_name(r), (int)r);
        if (why)
            *why = msg;
        return NF_OK;
    }
    if (cnt == 0 && why) {
        snprintf(msg, sizeof msg, "no Vulkan devices");
        *why = msg;
    }
    *n = (int)cnt;
    return NF_OK;
}

/* ---- memory ---- */

static int32_t find_type(const VkPhysicalDeviceMemoryProperties *mp, uint32_t bits,
                         VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid)
{
    for (uint32_t i = 0; i < mp->memoryTypeCount; i++)
        if ((bits & (1u << i)) && (mp->memoryTypes[i].propertyFlags & want) == want &&
            (mp->memoryTypes[i].propertyFlags & avoid) == 0)
            return (int32_t)i;
    return -1;
}

static int32_t choose_buffer_type(const nf_device *d, uint32_t bits)
{
    const VkMemoryPropertyFlags DL = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT,
                                HV = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT,
                                HC = VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int32_t t = -1;
    if (d->props.deviceType != VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU)
        t = find_type(&d->memprops, bits, DL | HV | HC, 0); /* unified memory: map it */
    else
        t = find_type(&d->memprops, bits, DL, HV); /* VRAM proper, not the BAR window */
    if (t < 0)
        t = find_type(&d->memprops, bits, DL, 0);
    if (t < 0)
        t = find_type(&d->memprops, bits, 0, 0);
    return t;
}

static void block_destroy(nf_device *d, nf_vk_block *b)
{
    if (!b)
        return;
    if (b->map)
        vkUnmapMemory(d->dev, b->mem);
    if (b->buf)
        vkDestroyBuffer(d->dev, b->buf, NULL);
    if (b->mem)
        vkFreeMemory(d->dev, b->mem, NULL);
    free(b->free_off);
    free(b->free_len);
    free(b);
}

static void block_reset(nf_vk_block *b)
{
    b->nfree = 1;
    b->free_off[0] = 0;
    b->free_len[0] = b->size;
    b->live = 0;
}

/* A block of size bytes: staging (host-visible) or for buffers. */
static int block_create(nf_device *d, VkDeviceSize size, int staging, nf_vk_block **out,
                        nf_error *err)
{
    *out = NULL;
    nf_vk_block *b = calloc(1, sizeof *b);
    if (!b)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    b->size = size;
    b->capfree = 8;
    b->free_off = malloc(8 * sizeof *b->free_off);
    b->free_len = malloc(8 * sizeof *b->free_len);
    if (!b->free_off || !b->free_len) {
        block_destroy(d, b);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    block_reset(b);
    VkBufferCreateInfo bi = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                 VK_BUFFER_USAGE_TRANSFER_DST_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VkResult r = vkCreateBuffer(d->dev, &bi, NULL, &b->buf);
    if (r != VK_SUCCESS) {
        char call[64];
        snprintf(call, sizeof call, "vkCreateBuffer of %.1f MiB", (double)size / 1048576.0);
        b->buf = VK_NULL_HANDLE;
        block_destroy(d, b);
        return nf_vk_fail(d, err, r, call);
    }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, b->buf, &req);
    int32_t type;
    int mapped;
    if (staging) {
        const VkMemoryPropertyFlags HV = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT,
                                    HC = VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                                    CA = VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
        type = find_type(&d->memprops, req.memoryTypeBits, HV | HC | CA, 0);
        if (type < 0)
            type = find_type(&d->memprops, req.memoryTypeBits, HV | HC, 0);
        mapped = 1;
    } else {
        if (d->buf_type < 0) {
            d->buf_type = choose_buffer_type(d, req.memoryTypeBits);
            if (d->buf_type >= 0) {
                VkMemoryPropertyFlags f = d->memprops.memoryTypes[d->buf_type].propertyFlags;
                d->buf_mapped = (f & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) &&
                                (f & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
            }
        }
        type = d->buf_type;
        mapped = d->buf_mapped;
    }
    if (type < 0 || !(req.memoryTypeBits & (1u << type))) {
        block_destroy(d, b);
        return nf_error_set(err, NF_E_DEVICE, "vulkan:%d (%s): no memory type for %s buffers",
                            d->common.info.index, d->common.info.name,
                            staging ? "staging" : "storage");
    }
    VkMemoryAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = req.size,
        .memoryTypeIndex = (uint32_t)type,
    };
    r = vkAllocateMemory(d->dev, &ai, NULL, &b->mem);
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY) {
        block_destroy(d, b);
        return nf_error_set(err, NF_E_NOMEM,
                            "vulkan:%d (%s): vkAllocateMemory of %.1f MiB failed: %s",
                            d->common.info.index, d->common.info.name,
                            (double)size / 1048576.0, result_name(r));
    }
    if (r != VK_SUCCESS) {
        b->mem = VK_NULL_HANDLE;
        block_destroy(d, b);
        return nf_vk_fail(d, err, r, "vkAllocateMemory");
    }
    r = vkBindBufferMemory(d->dev, b->buf, b->mem, 0);
    if (r == VK_SUCCESS && mapped) {
        void *p = NULL;
        r = vkMapMemory(d->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &p);
        b->map = p;
        if (r != VK_SUCCESS) {
            block_destroy(d, b);
            return nf_vk_fail(d, err, r, "vkMapMemory");
        }
    } else if (r != VK_SUCCESS) {
        block_destroy(d, b);
        return nf_vk_fail(d, err, r, "vkBindBufferMemory");
    }
    *out = b;
    return NF_OK;
}

/* first fit; returns 0 and the offset, or -1 */
static int block_take(nf_vk_block *b, VkDeviceSize len, VkDeviceSize *off)
{
    for (int i = 0; i < b->nfree; i++) {
        if (b->free_len[i] < len)
            continue;
        *off = b->free_off[i];
        b->free_off[i] += len;
        b->free_len[i] -= len;
        if (b->free_len[i] == 0) {
            memmove(b->free_off + i, b->free_off + i + 1, (size_t)(b->nfree - i - 1) * sizeof *b->free_off);
            memmove(b->free_len + i, b->free_len + i + 1, (size_t)(b->nfree - i - 1) * sizeof *b->free_len);
            b->nfree--;
        }
        b->live++;
        return 0;
    }
    return -1;
}

/* gives a range back, merging with free neighbours; -1 when the list cannot grow */
static int block_give(nf_vk_block *b, VkDeviceSize off, VkDeviceSize len)
{
    int i = 0;
    while (i < b->nfree && b->free_off[i] < off)
        i++;
    int merge_prev = i > 0 && b->free_off[i - 1] + b->free_len[i - 1] == off;
    int merge_next = i < b->nfree && off + len == b->free_off[i];
    if (merge_prev && merge_next) {
        b->free_len[i - 1] += len + b->free_len[i];
        memmove(b->free_off + i, b->free_off + i + 1, (size_t)(b->nfree - i - 1) * sizeof *b->free_off);
        memmove(b->free_len + i, b->free_len + i + 1, (size_t)(b->nfree - i - 1) * sizeof *b->free_len);
        b->nfree--;
    } else if (merge_prev) {
        b->free_len[i - 1] += len;
    } else if (merge_next) {
        b->free_off[i] = off;
        b->free_len[i] += len;
    } else {
        if (b->nfree == b->capfree) {
            int cap = b->capfree * 2;
            VkDeviceSize *no = realloc(b->free_off, (size_t)cap * sizeof *no);
            if (no)
                b->free_off = no;
            VkDeviceSize *nl = realloc(b->free_len, (size_t)cap * sizeof *nl);
            if (nl)
                b->free_len = nl;
            if (!no || !nl)
                return -1; /* the range is lost until the block empties */
            b->capfree = cap;
        }
        memmove(b->free_off + i + 1, b->free_off + i, (size_t)(b->nfree - i) * sizeof *b->free_off);
        memmove(b->free_len + i + 1, b->free_len + i, (size_t)(b->nfree - i) * sizeof *b->free_len);
        b->free_off[i] = off;
        b->free_len[i] = len;
        b->nfree++;
    }
    return 0;
}

static int queue_busy(const nf_device *d)
{
    for (int i = 0; i < NF_VK_BATCHES; i++)
        if (d->batch[i].state != 0)
            return 1;
    return 0;
}

/* a block no buffer uses any more: destroyed now, or once the queue has drained */
static void block_retire(nf_device *d, nf_vk_block *b)
{
    if (queue_busy(d)) {
        b->next = d->zombies;
        d->zombies = b;
    } else {
        block_destroy(d, b);
    }
}

static void destroy_zombies(nf_device *d)
{
    while (d->zombies) {
        nf_vk_block *b = d->zombies;
        d->zombies = b->next;
        block_destroy(d, b);
    }
}

/* a block, retried once after draining the queue when memory is short and released blocks
 * are holding some */
static int block_create_retry(nf_device *d, VkDeviceSize size, nf_vk_block **out, nf_error *err)
{
    int had = err && err->code != NF_OK;
    int rc = block_create(d, size, 0, out, err);
    if (rc != NF_E_NOMEM || (!d->zombies && !d->spare))
        return rc;
    if (!had)
        nf_error_clear(err);
    rc = nf_vk_sync(d, err);
    if (rc)
        return rc;
    block_destroy(d, d->spare);
    d->spare = NULL;
    return block_create(d, size, 0, out, err);
}

static int vk_alloc(nf_device *d, size_t n, nf_buffer **out, nf_error *err)
{
    *out = NULL;
    int rc = nf_vk_check_alive(d, err);
    if (rc)
        return rc;
    if (n == 0)
        n = 1;
    if (n > (SIZE_MAX - SUBALLOC_ALIGN) / 4)
        return nf_error_set(err, NF_E_NOMEM, "vulkan: buffer of %zu floats is too large", n);
    nf_buffer *buf = calloc(1, sizeof *buf);
    if (!buf)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    buf->size = (VkDeviceSize)n * 4;
    buf->reserved = (buf->size + SUBALLOC_ALIGN - 1) / SUBALLOC_ALIGN * SUBALLOC_ALIGN;

    nf_vk_block *b = NULL;
    VkDeviceSize off = 0;
    if (buf->reserved > d->block_size / 2) {
        rc = block_create_retry(d, buf->reserved, &b, err);
        if (rc) {
            free(buf);
            return rc;
        }
        b->dedicated = 1;
        block_take(b, buf->reserved, &off);
    } else {
        for (nf_vk_block *it = d->blocks; it; it = it->next)
            if (!it->dedicated && block_take(it, buf->reserved, &off) == 0) {
                b = it;
                break;
            }
        if (!b) {
            if (d->spare) {
                b = d->spare;
                d->spare = NULL;
            } else {
                rc = block_create_retry(d, d->block_size, &b, err);
                if (rc) {
                    free(buf);
                    return rc;
                }
            }
            block_take(b, buf->reserved, &off);
        }
    }
    if (b->live == 1) { /* newly in use: onto the list */
        b->next = d->blocks;
        d->blocks = b;
    }
    buf->block = b;
    buf->offset = off;
    buf->next = d->live;
    if (d->live)
        d->live->prev = buf;
    d->live = buf;
    *out = buf;
    return NF_OK;
}

static void vk_free(nf_device *d, nf_buffer *buf)
{
    if (!buf)
        return;
    if (buf->prev)
        buf->prev->next = buf->next;
    else
        d->live = buf->next;
    if (buf->next)
        buf->next->prev = buf->prev;
    nf_vk_block *b = buf->block;
    block_give(b, buf->offset, buf->reserved); /* on failure the range stays taken */
    b->live--;
    free(buf);
    if (b->live > 0)
        return;
    nf_vk_block **pp = &d->blocks;
    while (*pp && *pp != b)
        pp = &(*pp)->next;
    if (*pp)
        *pp = b->next;
    b->next = NULL;
    if (!b->dedicated && !d->spare) {
        block_reset(b);
        d->spare = b;
    } else {
        block_retire(d, b);
    }
}

/* ---- command submission ---- */

static int wait_batch(nf_device *d, nf_vk_batch *b, nf_error *err)
{
    if (b->state != 2)
        return NF_OK;
    VkResult r = vkWaitForFences(d->dev, 1, &b->fence, VK_TRUE, d->timeout_ns);
    if (r != VK_SUCCESS)
        return nf_vk_fail(d, err, r, "vkWaitForFences");
    b->state = 0;
    return NF_OK;
}

static void barrier(VkCommandBuffer cmd, VkPipelineStageFlags dst_stage, VkAccessFlags dst_access)
{
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = dst_access,
    };
    vkCmdPipelineBarrier(cmd,
                         VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                         dst_stage, 0, 1, &mb, 0, NULL, 0, NULL);
}

static void barrier_all(VkCommandBuffer cmd)
{
    barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
            VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT);
}

/* the batch being recorded, begun if need be */
static int begin(nf_device *d, nf_vk_batch **out, nf_error *err)
{
    nf_vk_batch *b = &d->batch[d->cur];
    if (b->state == 1) {
        *out = b;
        return NF_OK;
    }
    int rc = wait_batch(d, b, err);
    if (rc)
        return rc;
    VkResult r = vkResetFences(d->dev, 1, &b->fence);
    if (r != VK_SUCCESS)
        return nf_vk_fail(d, err, r, "vkResetFences");
    r = vkResetDescriptorPool(d->dev, b->pool, 0);
    if (r != VK_SUCCESS)
        return nf_vk_fail(d, err, r, "vkResetDescriptorPool");
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
    };
    r = vkBeginCommandBuffer(b->cmd, &bi);
    if (r != VK_SUCCESS)
        return nf_vk_fail(d, err, r, "vkBeginCommandBuffer");
    b->state = 1;
    b->nsets = 0;
    b->flops = 0;
    *out = b;
    return NF_OK;
}

static int submit(nf_device *d, nf_error *err)
{
    nf_vk_batch *b = &d->batch[d->cur];
    if (b->state != 1)
        return NF_OK;
    /* device writes become visible to the host once the fence has signalled */
    barrier(b->cmd, VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
    VkResult r = vkEndCommandBuffer(b->cmd);
    if (r != VK_SUCCESS) {
        b->state = 0;
        return nf_vk_fail(d, err, r, "vkEndCommandBuffer");
    }
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
        .commandBufferCount = 1,
        .pCommandBuffers = &b->cmd,
    };
    r = vkQueueSubmit(d->queue, 1, &si, b->fence);
    if (r != VK_SUCCESS) {
        b->state = 0;
        return nf_vk_fail(d, err, r, "vkQueueSubmit");
    }
    b->state = 2;
    d->cur = (d->cur + 1) % NF_VK_BATCHES;
    return NF_OK;
}

int nf_vk_sync(nf_device *d, nf_error *err)
{
    int rc = nf_vk_check_alive(d, err);
    if (rc)
        return rc;
    rc = submit(d, err);
    /* wait in submission order, oldest first */
    for (int i = 1; i <= NF_VK_BATCHES; i++) {
        int rc2 = wait_batch(d, &d->batch[(d->cur + i) % NF_VK_BATCHES], err);
        if (!rc)
            rc = rc2;
        if (rc)
            return rc;
    }
    destroy_zombies(d);
    return rc;
}

int nf_vk_range_of(const nf_device *d, const nf_buffer *buf, VkDeviceSize byte_off,
                   VkDeviceSize bytes, nf_vk_range *out)
{
    VkDeviceSize start = buf->offset + byte_off;
    out->vkbuf = buf->block->buf;
    out->base = start / d->bind_align * d->bind_align;
    out->rel = start - out->base;
    out->range = (out->rel + (bytes ? bytes : 4) + 3) / 4 * 4;
    /* never past the buffer's reservation (sizes and offsets are multiples of 4 there) */
    VkDeviceSize end = buf->offset + buf->reserved;
    if (out->base + out->range > end)
        out->range = end - out->base;
    return out->range <= d->max_range ? 0 : -1;
}

int nf_vk_dispatch(nf_device *d, const nf_vk_pipeline *pipe, const nf_vk_range *ranges,
                   int nranges, const void *push, uint32_t push_bytes, uint32_t gx, uint32_t gy,
                   uint32_t gz, double flops, nf_error *err)
{
    int rc = nf_vk_check_alive(d, err);
    if (rc)
        return rc;
    nf_vk_batch *b = NULL;
    rc = begin(d, &b, err);
    if (rc)
        return rc;
    if (b->nsets >= NF_VK_SETS_PER_BATCH) {
        rc = submit(d, err);
        if (!rc)
            rc = begin(d, &b, err);
        if (rc)
            return rc;
    }
    VkDescriptorSetAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = b->pool,
        .descriptorSetCount = 1,
        .pSetLayouts = &d->dsl,
    };
    VkDescriptorSet set;
    VkResult r = vkAllocateDescriptorSets(d->dev, &ai, &set);
    if (r != VK_SUCCESS)
        return nf_vk_fail(d, err, r, "vkAllocateDescriptorSets");
    b->nsets++;
    VkDescriptorBufferInfo info[NF_VK_BINDINGS];
    VkWriteDescriptorSet wr[NF_VK_BINDINGS];
    for (int i = 0; i < NF_VK_BINDINGS; i++) {
        if (i < nranges) {
            info[i] = (VkDescriptorBufferInfo){ranges[i].vkbuf, ranges[i].base, ranges[i].range};
        } else { /* unused by the shader; bound to something valid anyway */
            info[i] = (VkDescriptorBufferInfo){d->partials->block->buf, d->partials->offset,
                                               d->partials->size};
        }
        wr[i] = (VkWriteDescriptorSet){
            .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
            .dstSet = set,
            .dstBinding = (uint32_t)i,
            .descriptorCount = 1,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .pBufferInfo = &info[i],
        };
    }
    vkUpdateDescriptorSets(d->dev, NF_VK_BINDINGS, wr, 0, NULL);
    barrier_all(b->cmd);
    vkCmdBindPipeline(b->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe->pipe);
    vkCmdBindDescriptorSets(b->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, d->playout, 0, 1, &set, 0,
                            NULL);
    if (push_bytes)
        vkCmdPushConstants(b->cmd, d->playout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
    vkCmdDispatch(b->cmd, gx, gy, gz);
    b->flops += flops;
    if (b->flops >= BATCH_FLOPS)
        return submit(d, err); /* big work starts now rather than at the next sync */
    return NF_OK;
}

/* ---- transfers ---- */

static int ensure_stage(nf_device *d, nf_error *err)
{
    if (d->stage)
        return NF_OK;
    return block_create(d, STAGE_BYTES, 1, &d->stage, err);
}

const void *nf_vk_stage_ptr(const nf_device *d) { return d->stage ? d->stage->map : NULL; }

/* one copy between a buffer and the staging block, submitted and waited for */
static int stage_copy(nf_device *d, const nf_buffer *buf, VkDeviceSize byte_off,
                      VkDeviceSize bytes, int to_device, nf_error *err)
{
    nf_vk_batch *b = NULL;
    int rc = begin(d, &b, err);
    if (rc)
        return rc;
    barrier_all(b->cmd);
    VkBufferCopy region = {
        .srcOffset = to_device ? 0 : buf->offset + byte_off,
        .dstOffset = to_device ? buf->offset + byte_off : 0,
        .size = bytes,
    };
    if (to_device)
        vkCmdCopyBuffer(b->cmd, d->stage->buf, buf->block->buf, 1, &region);
    else
        vkCmdCopyBuffer(b->cmd, buf->block->buf, d->stage->buf, 1, &region);
    return nf_vk_sync(d, err);
}

int nf_vk_read_back(nf_device *d, const nf_buffer *buf, VkDeviceSize byte_off,
                    VkDeviceSize bytes, nf_error *err)
{
    int rc = ensure_stage(d, err);
    if (rc)
        return rc;
    if (bytes > d->stage->size)
        return nf_error_set(err, NF_E_INTERNAL, "vulkan: read-back of %llu bytes",
                            (unsigned long long)bytes);
    return stage_copy(d, buf, byte_off, bytes, 0, err);
}

static int check_span(nf_device *d, const nf_buffer *buf, size_t off, size_t bytes,
                      const char *what, nf_error *err)
{
    if (!buf || off > buf->size || bytes > buf->size - off)
        return nf_error_set(err, NF_E_INTERNAL,
                            "vulkan:%d: %s of %zu bytes at %zu outside a buffer of %llu bytes",
                            d->common.info.index, what, bytes, off,
                            buf ? (unsigned long long)buf->size : 0ull);
    return NF_OK;
}

static int vk_upload(nf_device *d, nf_buffer *buf, size_t off, const void *src, size_t bytes,
                     nf_error *err)
{
    int rc = check_span(d, buf, off, bytes, "upload", err);
    if (!rc)
        rc = nf_vk_sync(d, err); /* queued work may still read or write the buffer */
    if (rc || bytes == 0)
        return rc;
    if (buf->block->map) {
        memcpy(buf->block->map + buf->offset + off, src, bytes);
        return NF_OK;
    }
    rc = ensure_stage(d, err);
    for (size_t done = 0; !rc && done < bytes;) {
        size_t chunk = bytes - done < d->stage->size ? bytes - done : (size_t)d->stage->size;
        memcpy(d->stage->map, (const char *)src + done, chunk);
        rc = stage_copy(d, buf, off + done, chunk, 1, err);
        done += chunk;
    }
    return rc;
}

static int vk_download(nf_device *d, const nf_buffer *buf, size_t off, void *dst, size_t bytes,
                       nf_error *err)
{
    int rc = check_span(d, buf, off, bytes, "download", err);
    if (!rc)
        rc = nf_vk_sync(d, err);
    if (rc || bytes == 0)
        return rc;
    if (buf->block->map) {
        memcpy(dst, buf->block->map + buf->offset + off, bytes);
        return NF_OK;
    }
    rc = ensure_stage(d, err);
    for (size_t done = 0; !rc && done < bytes;) {
        size_t chunk = bytes - done < d->stage->size ? bytes - done : (size_t)d->stage->size;
        rc = stage_copy(d, buf, off + done, chunk, 0, err);
        if (!rc)
            memcpy((char *)dst + done, d->stage->map, chunk);
        done += chunk;
    }
    return rc;
}

static int vk_finish(nf_device *d, nf_error *err) { return nf_vk_sync(d, err); }

/* ---- open / close ---- */

static void vk_close(nf_device *d)
{
    if (!d)
        return;
    if (d->dev) {
        vkDeviceWaitIdle(d->dev);
        for (int i = 0; i < NF_VK_BATCHES; i++)
            d->batch[i].state = 0;
        /* the device owns its buffers: those the caller has not freed go now */
        while (d->live)
            vk_free(d, d->live);
        d->partials = NULL;
        nf_vk_pipelines_destroy(d);
        if (d->pcache)
            vkDestroyPipelineCache(d->dev, d->pcache, NULL);
        if (d->playout)
            vkDestroyPipelineLayout(d->dev, d->playout, NULL);
        if (d->dsl)
            vkDestroyDescriptorSetLayout(d->dev, d->dsl, NULL);
        for (int i = 0; i < NF_VK_BATCHES; i++) {
            if (d->batch[i].fence)
                vkDestroyFence(d->dev, d->batch[i].fence, NULL);
            if (d->batch[i].pool)
                vkDestroyDescriptorPool(d->dev, d->batch[i].pool, NULL);
        }
        if (d->cmdpool)
            vkDestroyCommandPool(d->dev, d->cmdpool, NULL); /* frees the command buffers */
        while (d->blocks) { /* none left after the loop above; for safety */
            nf_vk_block *b = d->blocks;
            d->blocks = b->next;
            block_destroy(d, b);
        }
        destroy_zombies(d);
        block_destroy(d, d->spare);
        block_destroy(d, d->stage);
        vkDestroyDevice(d->dev, NULL);
    }
    if (d->instance)
        vkDestroyInstance(d->instance, NULL);
    free(d);
}

static uint64_t env_seconds(const char *name, double dflt)
{
    const char *s = getenv(name);
    double v = dflt;
    if (s && *s) {
        char *end;
        double x = strtod(s, &end);
        if (end != s && x > 0)
            v = x;
    }
    return (uint64_t)(v * 1e9);
}

static void describe(nf_device *d, uint32_t inst_api)
{
    nf_device_info *in = &d->common.info;
    const VkPhysicalDeviceProperties *p = &d->props;
    snprintf(in->api, sizeof in->api, "vulkan");
    snprintf(in->name, sizeof in->name, "%s", p->deviceName);
    switch (p->deviceType) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: in->type = NF_DEVICE_DISCRETE_GPU; break;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: in->type = NF_DEVICE_INTEGRATED_GPU; break;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: in->type = NF_DEVICE_SOFTWARE; break;
    default: in->type = NF_DEVICE_OTHER; break;
    }
    in->memory = 0;
    for (uint32_t i = 0; i < d->memprops.memoryHeapCount; i++)
        if ((d->memprops.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
            d->memprops.memoryHeaps[i].size > in->memory)
            in->memory = d->memprops.memoryHeaps[i].size;

    char api[32];
    snprintf(api, sizeof api, "Vulkan %u.%u.%u", VK_API_VERSION_MAJOR(p->apiVersion),
             VK_API_VERSION_MINOR(p->apiVersion), VK_API_VERSION_PATCH(p->apiVersion));
    /* driverName/driverInfo where the device has them (Vulkan 1.2) */
    if (inst_api >= VK_API_VERSION_1_2 && p->apiVersion >= VK_API_VERSION_1_2) {
        VkPhysicalDeviceDriverProperties dp = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
        VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                          .pNext = &dp};
        vkGetPhysicalDeviceProperties2(d->phys, &p2);
        if (dp.driverName[0]) {
            snprintf(in->driver, sizeof in->driver, "%.40s %.60s, %.24s", dp.driverName,
                     dp.driverInfo, api);
            return;
        }
    }
    uint32_t v = p->driverVersion;
    if (p->vendorID == 0x10DE) /* NVIDIA: 10.8.8.6 bits */
        snprintf(in->driver, sizeof in->driver, "driver %u.%u.%u, %s", (v >> 22) & 0x3FF,
                 (v >> 14) & 0xFF, (v >> 6) & 0xFF, api);
    else
        snprintf(in->driver, sizeof in->driver, "driver %u.%u.%u, %s", VK_API_VERSION_MAJOR(v),
                 VK_API_VERSION_MINOR(v), VK_API_VERSION_PATCH(v), api);
}

/* Limits, memory granularity and which GEMM shader this device runs: GPUs get the
 * shared-memory tiled one when the limits allow its 256-invocation workgroups and 17 KB of
 * shared memory; CPU implementations the subgroup register-blocked one (4, 8 or 16 lanes);
 * anything else the plain register-blocked one. NF_VULKAN_GEMM=tiled|sg|reg overrides. */
static int choose_shaders(nf_device *d, nf_error *err)
{
    const VkPhysicalDeviceLimits *lim = &d->props.limits;
    d->max_range = lim->maxStorageBufferRange;
    d->bind_align = lim->minStorageBufferOffsetAlignment > 4
                        ? lim->minStorageBufferOffsetAlignment : 4;
    if (d->bind_align > SUBALLOC_ALIGN)
        return nf_error_set(err, NF_E_NODEV,
                            "vulkan:%d (%s): minStorageBufferOffsetAlignment %llu is unsupported",
                            d->common.info.index, d->props.deviceName,
                            (unsigned long long)d->bind_align);
    /* blocks: 64 MiB, less on small heaps */
    d->block_size = BLOCK_BYTES;
    if (d->common.info.memory && d->common.info.memory / 16 < d->block_size)
        d->block_size = d->common.info.memory / 16 / SUBALLOC_ALIGN * SUBALLOC_ALIGN;
    if (d->block_size < (1 << 20))
        d->block_size = 1 << 20;

    /* subgroups: size, and whether compute shaders have broadcasts */
    VkPhysicalDeviceSubgroupProperties sp = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = &sp};
    vkGetPhysicalDeviceProperties2(d->phys, &p2);
    const VkSubgroupFeatureFlags need = VK_SUBGROUP_FEATURE_BASIC_BIT |
                                        VK_SUBGROUP_FEATURE_BALLOT_BIT;
    if ((sp.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
        (sp.supportedOperations & need) == need)
        d->subgroup = sp.subgroupSize;

    int tiled_ok = lim->maxComputeWorkGroupInvocations >= 256 &&
                   lim->maxComputeWorkGroupSize[0] >= 16 &&
                   lim->maxComputeWorkGroupSize[1] >= 16 &&
                   lim->maxComputeSharedMemorySize >= 2 * 16 * 129 * 4;
    int sg_ok = d->subgroup == 4 || d->subgroup == 8 || d->subgroup == 16;
    if (d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU)
        d->gemm_kind = sg_ok ? NF_VK_GEMM_SG : NF_VK_GEMM_REG;
    else
        d->gemm_kind = tiled_ok ? NF_VK_GEMM_TILED : NF_VK_GEMM_REG;
    const char *force = getenv("NF_VULKAN_GEMM");
    if (force && strcmp(force, "tiled") == 0 && tiled_ok)
        d->gemm_kind = NF_VK_GEMM_TILED;
    else if (force && strcmp(force, "sg") == 0 && sg_ok)
        d->gemm_kind = NF_VK_GEMM_SG;
    else if (force && strcmp(force, "reg") == 0)
        d->gemm_kind = NF_VK_GEMM_REG;
    return NF_OK;
}

/* Command buffers, fences and descriptor pools of the batches; the one descriptor-set layout
 * (NF_VK_BINDINGS storage buffers) and pipeline layout (NF_VK_PUSH_BYTES of push constants)
 * every shader uses; the driver's pipeline cache. */
static int create_objects(nf_device *d, nf_error *err)
{
    VkResult r;
    VkCommandPoolCreateInfo pi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
        .queueFamilyIndex = d->qfamily,
    };
    r = vkCreateCommandPool(d->dev, &pi, NULL, &d->cmdpool);
    if (r != VK_SUCCESS) {
        d->cmdpool = VK_NULL_HANDLE;
        return nf_vk_fail(d, err, r, "vkCreateCommandPool");
    }
    VkDescriptorPoolSize ps = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                               NF_VK_SETS_PER_BATCH * NF_VK_BINDINGS};
    for (int i = 0; i < NF_VK_BATCHES; i++) {
        nf_vk_batch *b = &d->batch[i];
        VkCommandBufferAllocateInfo ai = {
            .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
            .commandPool = d->cmdpool,
            .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
            .commandBufferCount = 1,
        };
        r = vkAllocateCommandBuffers(d->dev, &ai, &b->cmd);
        if (r != VK_SUCCESS) {
            return nf_vk_fail(d, err, r, "vkAllocateCommandBuffers");
        }
        VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
        r = vkCreateFence(d->dev, &fi, NULL, &b->fence);
        if (r != VK_SUCCESS) {
            b->fence = VK_NULL_HANDLE;
            return nf_vk_fail(d, err, r, "vkCreateFence");
        }
        VkDescriptorPoolCreateInfo dpi = {
            .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
            .maxSets = NF_VK_SETS_PER_BATCH,
            .poolSizeCount = 1,
            .pPoolSizes = &ps,
        };
        r = vkCreateDescriptorPool(d->dev, &dpi, NULL, &b->pool);
        if (r != VK_SUCCESS) {
            b->pool = VK_NULL_HANDLE;
            return nf_vk_fail(d, err, r, "vkCreateDescriptorPool");
        }
    }
    VkDescriptorSetLayoutBinding lb[NF_VK_BINDINGS];
    for (int i = 0; i < NF_VK_BINDINGS; i++)
        lb[i] = (VkDescriptorSetLayoutBinding){
            .binding = (uint32_t)i,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .descriptorCount = 1,
            .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
        };
    VkDescriptorSetLayoutCreateInfo li = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = NF_VK_BINDINGS,
        .pBindings = lb,
    };
    r = vkCreateDescriptorSetLayout(d->dev, &li, NULL, &d->dsl);
    if (r != VK_SUCCESS) {
        d->dsl = VK_NULL_HANDLE;
        return nf_vk_fail(d, err, r, "vkCreateDescriptorSetLayout");
    }
    VkPushConstantRange pcr = {VK_SHADER_STAGE_COMPUTE_BIT, 0, NF_VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo pli = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 1,
        .pSetLayouts = &d->dsl,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &pcr,
    };
    r = vkCreatePipelineLayout(d->dev, &pli, NULL, &d->playout);
    if (r != VK_SUCCESS) {
        d->playout = VK_NULL_HANDLE;
        return nf_vk_fail(d, err, r, "vkCreatePipelineLayout");
    }
    VkPipelineCacheCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
    r = vkCreatePipelineCache(d->dev, &ci, NULL, &d->pcache);
    if (r != VK_SUCCESS) {
        d->pcache = VK_NULL_HANDLE;
        return nf_vk_fail(d, err, r, "vkCreatePipelineCache");
    }
    return NF_OK;
}

static int vk_open(int index, nf_device **out, nf_error *err)
{
    *out = NULL;
    nf_device *d = calloc(1, sizeof *d);
    if (!d)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    d->common.backend = &nf_backend_vulkan;
    d->common.info.index = index;
    d->buf_type = -1;
    d->timeout_ns = env_seconds("NF_VULKAN_TIMEOUT", 300.0);
    snprintf(d->common.info.api, sizeof d->common.info.api, "vulkan");

    uint32_t inst_api = 0;
    VkResult r = create_instance(&d->instance, &inst_api);
    int rc = NF_OK;
    if (r != VK_SUCCESS) {
        d->instance = VK_NULL_HANDLE;
        rc = r == VK_ERROR_INCOMPATIBLE_DRIVER
                 ? nf_error_set(err, NF_E_NODEV, "vulkan:%d: no Vulkan driver (vkCreateInstance %d)",
                                index, (int)r)
                 : nf_vk_fail(NULL, err, r, "vkCreateInstance");
        goto fail;
    }
    uint32_t cnt = 0;
    r = vkEnumeratePhysicalDevices(d->instance, &cnt, NULL);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        rc = nf_vk_fail(NULL, err, r, "vkEnumeratePhysicalDevices");
        goto fail;
    }
    if (index < 0 || (uint32_t)index >= cnt) {
        rc = nf_error_set(err, NF_E_NODEV, "vulkan:%d: no such device (%u Vulkan devices)", index,
                          cnt);
        goto fail;
    }
    {
        VkPhysicalDevice *all = calloc(cnt, sizeof *all);
        if (!all) {
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            goto fail;
        }
        r = vkEnumeratePhysicalDevices(d->instance, &cnt, all);
        if ((r == VK_SUCCESS || r == VK_INCOMPLETE) && (uint32_t)index < cnt)
            d->phys = all[index];
        free(all);
        if (!d->phys) {
            rc = nf_vk_fail(NULL, err, r == VK_SUCCESS ? VK_ERROR_INITIALIZATION_FAILED : r,
                            "vkEnumeratePhysicalDevices");
            goto fail;
        }
    }
    vkGetPhysicalDeviceProperties(d->phys, &d->props);
    vkGetPhysicalDeviceMemoryProperties(d->phys, &d->memprops);
    describe(d, inst_api);
    if (d->props.apiVersion < VK_API_VERSION_1_1) {
        rc = nf_error_set(err, NF_E_NODEV, "vulkan:%d (%s) supports only Vulkan 1.0; 1.1 is needed",
                          index, d->props.deviceName);
        goto fail;
    }

    /* a queue family that computes */
    {
        uint32_t nq = 0;
        vkGetPhysicalDeviceQueueFamilyProperties(d->phys, &nq, NULL);
        VkQueueFamilyProperties *qf = calloc(nq ? nq : 1, sizeof *qf);
        if (!qf) {
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            goto fail;
        }
        vkGetPhysicalDeviceQueueFamilyProperties(d->phys, &nq, qf);
        uint32_t pick = UINT32_MAX;
        for (uint32_t i = 0; i < nq && pick == UINT32_MAX; i++)
            if ((qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) && qf[i].queueCount > 0)
                pick = i;
        free(qf);
        if (pick == UINT32_MAX) {
            rc = nf_error_set(err, NF_E_NODEV, "vulkan:%d (%s) has no compute queue", index,
                              d->props.deviceName);
            goto fail;
        }
        d->qfamily = pick;
    }

    /* the device: float64 in shaders when available (dot products), portability subset
     * when the implementation has one */
    {
        VkPhysicalDeviceFeatures have;
        vkGetPhysicalDeviceFeatures(d->phys, &have);
        VkPhysicalDeviceFeatures want = {0};
        /* NF_VULKAN_FP64=0 takes the float-only paths (for testing them on any device) */
        const char *f64 = getenv("NF_VULKAN_FP64");
        d->has_f64 = have.shaderFloat64 == VK_TRUE && !(f64 && strcmp(f64, "0") == 0);
        want.shaderFloat64 = d->has_f64 ? VK_TRUE : VK_FALSE;
        const char *ext[1];
        uint32_t next = 0, n = 0;
        if (vkEnumerateDeviceExtensionProperties(d->phys, NULL, &n, NULL) == VK_SUCCESS && n) {
            VkExtensionProperties *props = calloc(n, sizeof *props);
            if (props && vkEnumerateDeviceExtensionProperties(d->phys, NULL, &n, props) >= 0)
                for (uint32_t i = 0; i < n; i++)
                    if (strcmp(props[i].extensionName, "VK_KHR_portability_subset") == 0)
                        ext[next++] = "VK_KHR_portability_subset";
            free(props);
        }
        float prio = 1.0f;
        VkDeviceQueueCreateInfo qi = {
            .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
            .queueFamilyIndex = d->qfamily,
            .queueCount = 1,
            .pQueuePriorities = &prio,
        };
        VkDeviceCreateInfo di = {
            .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
            .queueCreateInfoCount = 1,
            .pQueueCreateInfos = &qi,
            .enabledExtensionCount = next,
            .ppEnabledExtensionNames = next ? ext : NULL,
            .pEnabledFeatures = &want,
        };
        r = vkCreateDevice(d->phys, &di, NULL, &d->dev);
        if (r != VK_SUCCESS) {
            d->dev = VK_NULL_HANDLE;
            rc = nf_vk_fail(d, err, r, "vkCreateDevice");
            goto fail;
        }
        vkGetDeviceQueue(d->dev, d->qfamily, 0, &d->queue);
    }

    if ((rc = choose_shaders(d, err)) || (rc = create_objects(d, err)))
        goto fail;
    rc = vk_alloc(d, NF_VK_PARTIALS * 2, &d->partials, err); /* 512 doubles */
    if (rc)
        goto fail;
    *out = d;
    return NF_OK;
fail:
    vk_close(d);
    return rc;
}

const nf_backend nf_backend_vulkan = {
    .api = "vulkan",
    .count = vk_count,
    .open = vk_open,
    .close = vk_close,
    .alloc = vk_alloc,
    .free = vk_free,
    .upload = vk_upload,
    .download = vk_download,
    .host_ptr = NULL, /* work runs asynchronously: the host goes through download() */
    .finish = vk_finish,
    .gemm = nf_vk_gemm,
    .axpby = nf_vk_axpby,
    .dot = nf_vk_dot,
    .adam = nf_vk_adam,
    .convert = nf_vk_convert,
    .qr = NULL,
    .svd = NULL,
};
