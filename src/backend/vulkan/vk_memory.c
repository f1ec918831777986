/*
 * The Vulkan backend's memory: buffers are ranges of large blocks (one VkDeviceMemory and one
 * VkBuffer over all of it, first-fit with merging of free neighbours); large requests get a
 * block of their own. Device-local memory is preferred; where it is also host-visible and
 * coherent (integrated GPUs, CPU implementations such as lavapipe) blocks are mapped. One
 * empty block is kept for reuse; blocks released while the queue may still use them wait
 * until it drains. The host-visible staging block of transfers is made here too.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk_internal.h"

enum {
    BLOCK_BYTES = 64 << 20,     /* default block size */
    SUBALLOC_ALIGN = 256,       /* >= every device's minStorageBufferOffsetAlignment */
    STAGE_BYTES = 8 << 20,      /* staging block */
};

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
                            (double)size / 1048576.0, nf_vk_result_name(r));
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

void nf_vk_destroy_zombies(nf_device *d)
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

int nf_vk_alloc(nf_device *d, size_t n, nf_buffer **out, nf_error *err)
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

void nf_vk_free(nf_device *d, nf_buffer *buf)
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

int nf_vk_memory_init(nf_device *d, nf_error *err)
{
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
    return NF_OK;
}

int nf_vk_ensure_stage(nf_device *d, nf_error *err)
{
    if (d->stage)
        return NF_OK;
    return block_create(d, STAGE_BYTES, 1, &d->stage, err);
}

void nf_vk_memory_release(nf_device *d)
{
    while (d->blocks) { /* none left once every buffer is freed; for safety */
        nf_vk_block *b = d->blocks;
        d->blocks = b->next;
        block_destroy(d, b);
    }
    nf_vk_destroy_zombies(d);
    block_destroy(d, d->spare);
    block_destroy(d, d->stage);
}
