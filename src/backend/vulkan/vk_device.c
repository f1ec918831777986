/*
 * The Vulkan backend: instance and device setup, transfers and command submission (memory is
 * vk_memory.c's, shaders and pipelines vk_pipeline.c's).
 *
 * Transfers: where buffer memory is mapped (vk_memory.c) uploads and downloads are plain
 * copies, otherwise they go through a host-visible staging block in chunks.
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

#define BATCH_FLOPS 4e9         /* submit a batch once this much GEMM work is recorded */

/* ---- errors ---- */

const char *nf_vk_result_name(VkResult r)
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
                 index, dev, call, nf_vk_result_name(r));
    }
    if (!d)
        return nf_error_set(err, code, "vulkan: %s failed: %s (%d)", call, nf_vk_result_name(r),
                            (int)r);
    if (r == VK_TIMEOUT)
        return nf_error_set(err, code,
                            "vulkan:%d (%s): %s timed out after %.0f s (the device hangs; a Vulkan "
                            "device opened before fork() does not work in the child)",
                            index, dev, call, (double)d->timeout_ns * 1e-9);
    return nf_error_set(err, code, "vulkan:%d (%s): %s failed: %s (%d)", index, dev, call,
                        nf_vk_result_name(r), (int)r);
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
                     nf_vk_result_name(r), (int)r);
        if (why)
            *why = msg;
        return NF_OK;
    }
    uint32_t cnt = 0;
    r = vkEnumeratePhysicalDevices(inst, &cnt, NULL);
    vkDestroyInstance(inst, NULL);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        snprintf(msg, sizeof msg, "Vulkan unavailable (vkEnumeratePhysicalDevices %s, %d)",
                 nf_vk_result_name(r), (int)r);
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
    nf_vk_destroy_zombies(d);
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
    int rc = nf_vk_ensure_stage(d, err);
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
    rc = nf_vk_ensure_stage(d, err);
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
    rc = nf_vk_ensure_stage(d, err);
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
            nf_vk_free(d, d->live);
        d->partials = NULL;
        nf_vk_pipelines_destroy(d);
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
        nf_vk_memory_release(d);
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
    int rc = nf_vk_memory_init(d, err);
    if (rc)
        return rc;

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
 * (NF_VK_BINDINGS storage buffers) every shader uses. */
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
    return NF_OK;
}

/* The instance and the index-th physical device, its properties and description (the
 * instance's API version in *inst_api); Vulkan 1.1 at least. */
static int pick_device(nf_device *d, int index, uint32_t *inst_api, nf_error *err)
{
    VkResult r = create_instance(&d->instance, inst_api);
    if (r != VK_SUCCESS) {
        d->instance = VK_NULL_HANDLE;
        return r == VK_ERROR_INCOMPATIBLE_DRIVER
                   ? nf_error_set(err, NF_E_NODEV,
                                  "vulkan:%d: no Vulkan driver (vkCreateInstance %d)", index,
                                  (int)r)
                   : nf_vk_fail(NULL, err, r, "vkCreateInstance");
    }
    uint32_t cnt = 0;
    r = vkEnumeratePhysicalDevices(d->instance, &cnt, NULL);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE)
        return nf_vk_fail(NULL, err, r, "vkEnumeratePhysicalDevices");
    if (index < 0 || (uint32_t)index >= cnt)
        return nf_error_set(err, NF_E_NODEV, "vulkan:%d: no such device (%u Vulkan devices)",
                            index, cnt);
    {
        VkPhysicalDevice *all = calloc(cnt, sizeof *all);
        if (!all)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
        r = vkEnumeratePhysicalDevices(d->instance, &cnt, all);
        if ((r == VK_SUCCESS || r == VK_INCOMPLETE) && (uint32_t)index < cnt)
            d->phys = all[index];
        free(all);
        if (!d->phys)
            return nf_vk_fail(NULL, err, r == VK_SUCCESS ? VK_ERROR_INITIALIZATION_FAILED : r,
                              "vkEnumeratePhysicalDevices");
    }
    vkGetPhysicalDeviceProperties(d->phys, &d->props);
    vkGetPhysicalDeviceMemoryProperties(d->phys, &d->memprops);
    describe(d, *inst_api);
    if (d->props.apiVersion < VK_API_VERSION_1_1)
        return nf_error_set(err, NF_E_NODEV,
                            "vulkan:%d (%s) supports only Vulkan 1.0; 1.1 is needed", index,
                            d->props.deviceName);
    return NF_OK;
}

/* A queue family that computes. */
static int pick_queue(nf_device *d, nf_error *err)
{
    int index = d->common.info.index;
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(d->phys, &nq, NULL);
    VkQueueFamilyProperties *qf = calloc(nq ? nq : 1, sizeof *qf);
    if (!qf)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    vkGetPhysicalDeviceQueueFamilyProperties(d->phys, &nq, qf);
    uint32_t pick = UINT32_MAX;
    for (uint32_t i = 0; i < nq && pick == UINT32_MAX; i++)
        if ((qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) && qf[i].queueCount > 0)
            pick = i;
    free(qf);
    if (pick == UINT32_MAX)
        return nf_error_set(err, NF_E_NODEV, "vulkan:%d (%s) has no compute queue", index,
                            d->props.deviceName);
    d->qfamily = pick;
    return NF_OK;
}

/* The device: float64 in shaders when available (dot products), the portability subset
 * when the implementation has one. */
static int create_device(nf_device *d, nf_error *err)
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
    VkResult r = vkCreateDevice(d->phys, &di, NULL, &d->dev);
    if (r != VK_SUCCESS) {
        d->dev = VK_NULL_HANDLE;
        return nf_vk_fail(d, err, r, "vkCreateDevice");
    }
    vkGetDeviceQueue(d->dev, d->qfamily, 0, &d->queue);
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
    int rc = pick_device(d, index, &inst_api, err);
    if (rc || (rc = pick_queue(d, err)) || (rc = create_device(d, err)))
        goto fail;
    if ((rc = choose_shaders(d, err)) || (rc = create_objects(d, err)) ||
        (rc = nf_vk_pipelines_init(d, err)))
        goto fail;
    rc = nf_vk_alloc(d, NF_VK_PARTIALS * 2, &d->partials, err); /* 512 doubles */
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
    .alloc = nf_vk_alloc,
    .free = nf_vk_free,
    .upload = vk_upload,
    .download = vk_download,
    .host_memory = 0, /* work runs asynchronously: the host goes through download() */
    .host_ptr = NULL,
    .finish = vk_finish,
    .gemm = nf_vk_gemm,
    .axpby = nf_vk_axpby,
    .dot = nf_vk_dot,
    .adam = nf_vk_adam,
    .convert = nf_vk_convert,
    .qr = NULL,
    .svd = NULL,
};
