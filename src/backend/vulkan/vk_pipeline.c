/*
 * Shaders: GLSL from shaders/ (embedded at build time), specialised by #defines injected as a
 * preamble, compiled to SPIR-V at run time through glslang's C interface, and turned into
 * compute pipelines.
 *
 * Two caches, both keyed by "<shader> <defines>": SPIR-V per process (compiling is the slow
 * part and does not depend on the device; shared by every device and every open of one,
 * guarded by a mutex), and VkPipelines per device (plus a VkPipelineCache for the driver).
 *
 * NF_VULKAN_SHADER_DIR=<dir> reads <dir>/<shader>.comp instead of the embedded text (for
 * working on the shaders without rebuilding); such SPIR-V is not kept in the process cache.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glslang/Include/glslang_c_interface.h>
#include <glslang/Public/resource_limits_c.h>

#include "nf_vk_shaders.h"
#include "../../core/util.h"
#include "vk_internal.h"

#define MAX_SHADER_BYTES (16 << 20)

typedef struct spv_entry spv_entry;
struct spv_entry {
    char *key;
    uint32_t *words;
    size_t nwords;
    spv_entry *next;
};

static pthread_mutex_t spv_lock = PTHREAD_MUTEX_INITIALIZER;
static spv_entry *spv_cache;
static int glslang_ready; /* 1 initialised, -1 failed */

__attribute__((destructor)) static void spv_cache_free(void)
{
    pthread_mutex_lock(&spv_lock);
    while (spv_cache) {
        spv_entry *e = spv_cache;
        spv_cache = e->next;
        free(e->key);
        free(e->words);
        free(e);
    }
    if (glslang_ready == 1)
        glslang_finalize_process();
    glslang_ready = 0;
    pthread_mutex_unlock(&spv_lock);
}

static const char *embedded_source(const char *name)
{
    for (const nf_embedded *e = nf_vk_src_table; e->name; e++)
        if (strcmp(e->name, name) == 0)
            return e->text;
    return NULL;
}

/* A shader file (NF_VULKAN_SHADER_DIR): its text, or NULL. */
static char *read_shader(const char *path)
{
    nf_error err = {0};
    char *text = NULL;
    size_t len;
    if (nf_read_small_file(path, MAX_SHADER_BYTES, "too large", &text, &len, &err) != NF_OK)
        return NULL;
    return text;
}

/* "A=1 B=2" -> "#define A 1\n#define B 2\n" */
static char *make_preamble(const char *defines)
{
    size_t n = strlen(defines);
    char *out = malloc(n * 2 + 64);
    if (!out)
        return NULL;
    char *o = out;
    const char *s = defines;
    while (*s) {
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        o += sprintf(o, "#define ");
        while (*s && *s != ' ') {
            *o++ = *s == '=' ? ' ' : *s;
            s++;
        }
        *o++ = '\n';
    }
    *o = '\0';
    return out;
}

/* Compiles with the spv_lock held. */
static int compile(const char *name, const char *text, const char *defines, uint32_t **words,
                   size_t *nwords, nf_error *err)
{
    if (glslang_ready == 0)
        glslang_ready = glslang_initialize_process() ? 1 : -1;
    if (glslang_ready != 1)
        return nf_error_set(err, NF_E_INTERNAL, "vulkan: glslang failed to initialise");
    char *preamble = make_preamble(defines);
    if (!preamble)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    const glslang_input_t input = {
        .language = GLSLANG_SOURCE_GLSL,
        .stage = GLSLANG_STAGE_COMPUTE,
        .client = GLSLANG_CLIENT_VULKAN,
        .client_version = GLSLANG_TARGET_VULKAN_1_1,
        .target_language = GLSLANG_TARGET_SPV,
        .target_language_version = GLSLANG_TARGET_SPV_1_3,
        .code = text,
        .default_version = 450,
        .default_profile = GLSLANG_NO_PROFILE,
        .force_default_version_and_profile = 0,
        .forward_compatible = 0,
        .messages = GLSLANG_MSG_DEFAULT_BIT | GLSLANG_MSG_SPV_RULES_BIT |
                    GLSLANG_MSG_VULKAN_RULES_BIT,
        .resource = glslang_default_resource(),
    };
    int rc = NF_OK;
    glslang_program_t *prog = NULL;
    glslang_shader_t *sh = glslang_shader_create(&input);
    if (!sh) {
        rc = nf_error_set(err, NF_E_NOMEM, "vulkan: glslang_shader_create failed");
        goto out;
    }
    glslang_shader_set_preamble(sh, preamble);
    if (!glslang_shader_preprocess(sh, &input) || !glslang_shader_parse(sh, &input)) {
        rc = nf_error_set(err, NF_E_INTERNAL, "vulkan: shader %s [%s] does not compile: %s",
                          name, defines, glslang_shader_get_info_log(sh));
        goto out;
    }
    prog = glslang_program_create();
    if (!prog) {
        rc = nf_error_set(err, NF_E_NOMEM, "vulkan: glslang_program_create failed");
        goto out;
    }
    glslang_program_add_shader(prog, sh);
    if (!glslang_program_link(prog, GLSLANG_MSG_SPV_RULES_BIT | GLSLANG_MSG_VULKAN_RULES_BIT)) {
        rc = nf_error_set(err, NF_E_INTERNAL, "vulkan: shader %s [%s] does not link: %s", name,
                          defines, glslang_program_get_info_log(prog));
        goto out;
    }
    glslang_program_SPIRV_generate(prog, GLSLANG_STAGE_COMPUTE);
    size_t n = glslang_program_SPIRV_get_size(prog);
    const char *msg = glslang_program_SPIRV_get_messages(prog);
    if (n == 0) {
        rc = nf_error_set(err, NF_E_INTERNAL, "vulkan: no SPIR-V for shader %s [%s]: %s", name,
                          defines, msg ? msg : "");
        goto out;
    }
    *words = malloc(n * sizeof **words);
    if (!*words) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto out;
    }
    glslang_program_SPIRV_get(prog, *words);
    *nwords = n;
out:
    if (prog)
        glslang_program_delete(prog);
    if (sh)
        glslang_shader_delete(sh);
    free(preamble);
    return rc;
}

/* SPIR-V for key; *owned says whether the caller must free *words (not cached). */
static int get_spirv(const char *name, const char *defines, const char *key, uint32_t **words,
                     size_t *nwords, int *owned, nf_error *err)
{
    const char *dir = getenv("NF_VULKAN_SHADER_DIR");
    char *override = NULL;
    if (dir && *dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.comp", dir, name);
        override = read_shader(path);
        if (!override)
            return nf_error_set(err, NF_E_IO, "vulkan: cannot read %s (NF_VULKAN_SHADER_DIR)",
                                path);
    }
    pthread_mutex_lock(&spv_lock);
    int rc = NF_OK;
    if (!override) {
        for (spv_entry *e = spv_cache; e; e = e->next)
            if (strcmp(e->key, key) == 0) {
                *words = e->words;
                *nwords = e->nwords;
                *owned = 0;
                pthread_mutex_unlock(&spv_lock);
                return NF_OK;
            }
    }
    const char *text = override ? override : embedded_source(name);
    if (!text) {
        rc = nf_error_set(err, NF_E_INTERNAL, "vulkan: no shader named %s", name);
        goto out;
    }
    rc = compile(name, text, defines, words, nwords, err);
    if (rc)
        goto out;
    if (override) {
        *owned = 1;
        goto out;
    }
    spv_entry *e = calloc(1, sizeof *e);
    char *k = strdup(key);
    if (!e || !k) {
        free(e);
        free(k);
        *owned = 1; /* usable, just not cached */
        goto out;
    }
    e->key = k;
    e->words = *words;
    e->nwords = *nwords;
    e->next = spv_cache;
    spv_cache = e;
    *owned = 0;
out:
    pthread_mutex_unlock(&spv_lock);
    free(override);
    return rc;
}

int nf_vk_pipeline_get(nf_device *d, const char *shader, const char *defines,
                       const nf_vk_pipeline **out, nf_error *err)
{
    size_t klen = strlen(shader) + strlen(defines) + 2;
    char *key = malloc(klen);
    if (!key)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    snprintf(key, klen, "%s %s", shader, defines);
    for (nf_vk_pipeline *p = d->pipes; p; p = p->next)
        if (strcmp(p->key, key) == 0) {
            free(key);
            *out = p;
            return NF_OK;
        }

    uint32_t *words = NULL;
    size_t nwords = 0;
    int owned = 0;
    int rc = get_spirv(shader, defines, key, &words, &nwords, &owned, err);
    if (rc) {
        free(key);
        return rc;
    }
    nf_vk_pipeline *p = calloc(1, sizeof *p);
    if (!p) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto out;
    }
    VkShaderModuleCreateInfo mi = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
        .codeSize = nwords * 4,
        .pCode = words,
    };
    VkShaderModule mod;
    VkResult r = vkCreateShaderModule(d->dev, &mi, NULL, &mod);
    if (r != VK_SUCCESS) {
        rc = nf_vk_fail(d, err, r, "vkCreateShaderModule");
        goto out;
    }
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {
            .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            .stage = VK_SHADER_STAGE_COMPUTE_BIT,
            .module = mod,
            .pName = "main",
        },
        .layout = d->playout,
    };
    r = vkCreateComputePipelines(d->dev, d->pcache, 1, &ci, NULL, &p->pipe);
    vkDestroyShaderModule(d->dev, mod, NULL);
    if (r != VK_SUCCESS) {
        rc = nf_vk_fail(d, err, r, "vkCreateComputePipelines");
        goto out;
    }
    p->key = key;
    key = NULL;
    p->next = d->pipes;
    d->pipes = p;
    *out = p;
    p = NULL;
out:
    free(p);
    free(key);
    if (owned)
        free(words);
    return rc;
}

int nf_vk_pipelines_init(nf_device *d, nf_error *err)
{
    VkResult r;
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

void nf_vk_pipelines_destroy(nf_device *d)
{
    while (d->pipes) {
        nf_vk_pipeline *p = d->pipes;
        d->pipes = p->next;
        vkDestroyPipeline(d->dev, p->pipe, NULL);
        free(p->key);
        free(p);
    }
    if (d->pcache)
        vkDestroyPipelineCache(d->dev, d->pcache, NULL);
    d->pcache = VK_NULL_HANDLE;
    if (d->playout)
        vkDestroyPipelineLayout(d->dev, d->playout, NULL);
    d->playout = VK_NULL_HANDLE;
}
