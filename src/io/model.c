/* Opening checkpoints: single safetensors files and Hugging Face directories (one file, or
 * shards plus model.safetensors.index.json). Every length is bounded and every offset checked
 * before any tensor data is touched. */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/util.h"
#include "json.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

static int map_file(const char *path, nf_shard *sh, nf_error *err)
{
    struct stat st;
    int fd, rc = nf_open_regular(path, &st, &fd, err);
    if (rc)
        return rc;
    if (st.st_size < 8) {
        close(fd);
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: truncated file: %lld bytes, too short for a safetensors header",
                            path, (long long)st.st_size);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return nf_error_set(err, NF_E_IO, "%s: cannot map: %s", path, strerror(errno));
    sh->map = p;
    sh->size = (size_t)st.st_size;
    return NF_OK;
}

/* the whole pages that t's data touches */
static int tensor_pages(const nf_tensor *t, void **start, size_t *len)
{
    if (!t || !t->data || t->nbytes == 0)
        return 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(page - 1), e = (uintptr_t)t->data + t->nbytes;
    *start = (void *)a;
    *len = e - a;
    return 1;
}

void nf_tensor_prefault(const nf_tensor *t)
{
#ifdef __linux__
    void *p;
    size_t n;
    if (t && t->in_memory)
        return; /* the caller's memory, already resident */
    /* 22 = MADV_POPULATE_READ (Linux 5.14); older kernels answer EINVAL, and the pages then
     * come in by faults as before */
    if (tensor_pages(t, &p, &n))
        (void)madvise(p, n, 22);
#else
    (void)t;
#endif
}

void nf_tensor_release(const nf_tensor *t)
{
    void *p;
    size_t n;
    if (t && t->in_memory)
        return; /* the caller's memory is not ours to drop */
    /* a read-only private file mapping: the page-table entries go, the page cache stays, and a
     * later read (a neighbour sharing the edge page) faults the same bytes back in */
    if (tensor_pages(t, &p, &n))
        (void)madvise(p, n, MADV_DONTNEED);
}

void nf_model_close(nf_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nshards; i++) {
        if (m->shards[i].map)
            munmap(m->shards[i].map, m->shards[i].size);
        free(m->shards[i].path);
    }
    free(m->shards);
    for (size_t i = 0; i < m->ntensors; i++)
        free(m->tensors[i].name);
    free(m->tensors);
    free(m->by_name);
    for (size_t i = 0; i < m->nmeta; i++) {
        free(m->meta[i].key);
        free(m->meta[i].value);
    }
    free(m->meta);
    for (size_t i = 0; i < m->nowned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->path);
    free(m);
}

static int cmp_begin(const void *a, const void *b)
{
    const nf_tensor *x = a, *y = b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

typedef struct name_idx {
    const char *name;
    size_t idx;
} name_idx;

static int cmp_name_idx(const void *a, const void *b)
{
    return strcmp(((const name_idx *)a)->name, ((const name_idx *)b)->name);
}

/* A control character (C0, DEL or C1) in a UTF-8 string: names with one could rewrite the
 * terminal a message or `nufilt inspect` prints them to, so they are refused. */
static int has_control(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++) {
        if (u[i] < 0x20 || u[i] == 0x7F)
            return 1;
        if (u[i] == 0xC2 && i + 1 < n && u[i + 1] >= 0x80 && u[i + 1] <= 0x9F)
            return 1;
    }
    return 0;
}

/* s (n bytes) for a message: at most 60 bytes, control characters as \xNN. */
static const char *printable(const char *s, size_t n, char *buf, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 8 < size && i < 60; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F || c >= 0x80)
            o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    buf[o] = '\0';
    return buf;
}

/* Validates one file's header and appends its tensors. */
/* The header length of shard sh (*hlen), checked against the file's size. */
static int header_length(const nf_shard *sh, uint64_t *hlen_out, nf_error *err)
{
    const char *path = sh->path;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | sh->map[i];
    uint64_t avail = sh->size - 8;
    /* Another kind of file (a config.json, a text file, a shard linked to /etc/passwd) reads
     * as an absurd length and no JSON object after it: say what it is not, without the
     * number, which would print the file's first 8 bytes */
    if ((hlen > NF_MAX_HEADER_BYTES || hlen > avail) && (sh->size < 9 || sh->map[8] != '{'))
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: not a safetensors file (it does not start with a header "
                            "length and a JSON header)",
                            path);
    if (hlen == 0)
        return nf_error_set(err, NF_E_FORMAT, "%s: bad header: header length is 0", path);
    if (hlen > NF_MAX_HEADER_BYTES)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: bad header: header length exceeds the 100 MB limit", path);
    if (hlen > avail)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: truncated file: header length %llu runs past the end of the "
                            "file (%llu bytes after the length field)",
                            path, (unsigned long long)hlen, (unsigned long long)avail);
    *hlen_out = hlen;
    return NF_OK;
}

/* The header's __metadata__ entry e: string values only, kept from the first shard (s 0). */
static int parse_metadata(nf_model *m, int s, const nf_json *e, const char *path, nf_error *err)
{
    if (e->type != NF_JSON_OBJECT)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: bad header: __metadata__ is not an object", path);
    if (e->n > NF_MAX_METADATA_ENTRIES)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: bad header: __metadata__ has %zu entries (at most %d "
                            "supported)",
                            path, e->n, NF_MAX_METADATA_ENTRIES);
    for (size_t k = 0; k < e->n; k++) {
        if (has_control(e->items[k].key, e->items[k].keylen)) {
            char pb[512];
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: bad header: __metadata__ key \"%s\" contains a "
                                "control character",
                                path, printable(e->items[k].key, e->items[k].keylen, pb,
                                                sizeof pb));
        }
        if (e->items[k].type != NF_JSON_STRING || e->items[k].has_nul)
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: bad header: __metadata__ value of \"%.100s\" is %s",
                                path, e->items[k].key,
                                e->items[k].has_nul ? "a string holding U+0000"
                                                    : "not a string");
    }
    if (s == 0) {
        m->meta = calloc(e->n ? e->n : 1, sizeof *m->meta);
        if (!m->meta)
            return nf_error_set(err, NF_E_NOMEM, "%s: out of memory", path);
        for (size_t k = 0; k < e->n; k++) {
            m->meta[k].key = nf_strdup(e->items[k].key);
            m->meta[k].value = nf_strdup(e->items[k].str);
            m->nmeta++;
            if (!m->meta[k].key || !m->meta[k].value)
                return nf_error_set(err, NF_E_NOMEM, "%s: out of memory", path);
        }
    }
    return NF_OK;
}

/* The header's entry e for a tensor of shard s (data after 8 + hlen bytes, data_size bytes of
 * it): name, dtype, shape and data_offsets checked, added as m->tensors[m->ntensors]. */
static int parse_tensor(nf_model *m, int s, const nf_json *e, uint64_t hlen, uint64_t data_size,
                        nf_error *err)
{
    const nf_shard *sh = &m->shards[s];
    const char *path = sh->path;
    const char *name = e->key;
    if (e->keylen == 0)
        return nf_error_set(err, NF_E_FORMAT, "%s: bad header: empty tensor name", path);
    if (has_control(e->key, e->keylen)) {
        char pb[512];
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: bad header: tensor name \"%s\" contains a control character",
                            path, printable(e->key, e->keylen, pb, sizeof pb));
    }
    if (e->type != NF_JSON_OBJECT)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: bad header: entry for tensor \"%.200s\" is not an object",
                            path, name);
    const nf_json *jd = NULL, *js = NULL, *jo = NULL;
    for (size_t k = 0; k < e->n; k++) {
        const char *key = e->items[k].key;
        if (strcmp(key, "dtype") == 0) jd = &e->items[k];
        else if (strcmp(key, "shape") == 0) js = &e->items[k];
        else if (strcmp(key, "data_offsets") == 0) jo = &e->items[k];
        else
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: tensor \"%.200s\": unknown header field \"%.60s\"", path,
                                name, key);
    }
    if (!jd || !js || !jo)
        return nf_error_set(err, NF_E_FORMAT, "%s: tensor \"%.200s\": missing %s", path, name,
                            !jd ? "dtype" : !js ? "shape" : "data_offsets");
    nf_tensor *t = &m->tensors[m->ntensors];
    memset(t, 0, sizeof *t);
    t->shard = s;
    if (jd->type != NF_JSON_STRING ||
        (t->dtype = nf_dtype_from_name(jd->str, jd->len)) == NF_DTYPE_INVALID)
        return nf_error_set(err, NF_E_FORMAT, "%s: tensor \"%.200s\": unknown dtype \"%.40s\"",
                            path, name, jd->type == NF_JSON_STRING ? jd->str : "(not a string)");
    if (js->type != NF_JSON_ARRAY)
        return nf_error_set(err, NF_E_FORMAT, "%s: tensor \"%.200s\": shape is not an array",
                            path, name);
    if (js->n > NF_MAX_DIMS)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: tensor \"%.200s\": %zu dimensions (at most %d supported)",
                            path, name, js->n, NF_MAX_DIMS);
    t->ndim = (int)js->n;
    uint64_t numel = 1;
    for (size_t d = 0; d < js->n; d++) {
        const nf_json *x = &js->items[d];
        if (x->type != NF_JSON_NUMBER || !x->is_int || x->ival < 0)
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: tensor \"%.200s\": shape entry %zu is not a "
                                "non-negative integer",
                                path, name, d);
        t->shape[d] = x->ival;
        if (!nf_mul_u64(numel, (uint64_t)x->ival, &numel))
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: tensor \"%.200s\": shape overflows (element count does "
                                "not fit 64 bits)",
                                path, name);
    }
    t->numel = numel;
    if (!nf_mul_u64(numel, nf_dtype_size(t->dtype), &t->nbytes))
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: tensor \"%.200s\": byte size overflows 64 bits", path, name);
    if (jo->type != NF_JSON_ARRAY || jo->n != 2 || jo->items[0].type != NF_JSON_NUMBER ||
        jo->items[1].type != NF_JSON_NUMBER || !jo->items[0].is_int ||
        !jo->items[1].is_int || jo->items[0].ival < 0 || jo->items[1].ival < 0)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: tensor \"%.200s\": data_offsets is not a pair of "
                            "non-negative integers",
                            path, name);
    uint64_t b = (uint64_t)jo->items[0].ival, en = (uint64_t)jo->items[1].ival;
    if (b > en)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: tensor \"%.200s\": data_offsets [%llu, %llu] are reversed",
                            path, name, (unsigned long long)b, (unsigned long long)en);
    if (en > data_size)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: tensor \"%.200s\": data_offsets end %llu is past the end of "
                            "the data (%llu bytes): truncated file?",
                            path, name, (unsigned long long)en,
                            (unsigned long long)data_size);
    if (en - b != t->nbytes)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: tensor \"%.200s\": %llu bytes in data_offsets but shape x "
                            "dtype size needs %llu",
                            path, name, (unsigned long long)(en - b),
                            (unsigned long long)t->nbytes);
    t->begin = 8 + hlen + b;
    t->data = sh->map + t->begin;
    t->name = nf_strndup(e->key, e->keylen);
    if (!t->name)
        return nf_error_set(err, NF_E_NOMEM, "%s: out of memory", path);
    m->ntensors++;
    return NF_OK;
}

/* The tensors first.. of shard sh tile its data: sorted by offset, no gaps, no overlaps,
 * nothing after the last tensor. */
static int check_contiguous(nf_model *m, size_t first, const nf_shard *sh, uint64_t hlen,
                            nf_error *err)
{
    const char *path = sh->path;
    qsort(m->tensors + first, m->ntensors - first, sizeof *m->tensors, cmp_begin);
    uint64_t pos = 8 + hlen;
    for (size_t i = first; i < m->ntensors; i++) {
        const nf_tensor *t = &m->tensors[i];
        if (t->begin < pos)
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: tensor \"%.200s\": data overlaps the previous tensor", path,
                                t->name);
        if (t->begin > pos)
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: tensor \"%.200s\": gap of %llu bytes before its data", path,
                                t->name, (unsigned long long)(t->begin - pos));
        pos = t->begin + t->nbytes;
    }
    if (pos != sh->size)
        return nf_error_set(err, NF_E_FORMAT,
                            "%s: %llu trailing bytes after the last tensor's data", path,
                            (unsigned long long)(sh->size - pos));
    return NF_OK;
}

int nf_st_parse(nf_model *m, int s, nf_error *err)
{
    nf_shard *sh = &m->shards[s];
    const char *path = sh->path;
    uint64_t hlen = 0;
    int rc = header_length(sh, &hlen, err);
    if (rc)
        return rc;
    uint64_t avail = sh->size - 8;
    const char *text = (const char *)sh->map + 8;
    if (text[0] != '{')
        return nf_error_set(err, NF_E_FORMAT, "%s: bad header: not a JSON object", path);
    char jerr[256];
    nf_json *root = nf_json_parse(text, (size_t)hlen, jerr, sizeof jerr);
    if (!root)
        return nf_error_set(err, NF_E_FORMAT, "%s: bad header: invalid JSON: %s", path, jerr);
    rc = NF_OK;
    if (root->type != NF_JSON_OBJECT) {
        rc = nf_error_set(err, NF_E_FORMAT, "%s: bad header: not a JSON object", path);
        goto done;
    }
    uint64_t data_size = avail - hlen;
    size_t first = m->ntensors;
    size_t count = 0;
    for (size_t i = 0; i < root->n; i++)
        count += strcmp(root->items[i].key, "__metadata__") != 0;
    nf_tensor *nt = realloc(m->tensors, (m->ntensors + count + 1) * sizeof *nt);
    if (!nt) {
        rc = nf_error_set(err, NF_E_NOMEM, "%s: out of memory reading the header", path);
        goto done;
    }
    m->tensors = nt;
    for (size_t i = 0; i < root->n && rc == NF_OK; i++) {
        const nf_json *e = &root->items[i];
        rc = strcmp(e->key, "__metadata__") == 0
                 ? parse_metadata(m, s, e, path, err)
                 : parse_tensor(m, s, e, hlen, data_size, err);
    }
    if (rc == NF_OK)
        rc = check_contiguous(m, first, sh, hlen, err);
done:
    nf_json_free(root);
    return rc;
}

static int add_shard(nf_model *m, const char *path, nf_error *err)
{
    nf_shard *ns = realloc(m->shards, (m->nshards + 1) * sizeof *ns);
    if (!ns)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    m->shards = ns;
    nf_shard *sh = &m->shards[m->nshards];
    memset(sh, 0, sizeof *sh);
    sh->path = nf_strdup(path);
    m->nshards++;
    if (!sh->path)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    int rc = map_file(path, sh, err);
    if (rc)
        return rc;
    return nf_st_parse(m, (int)(m->nshards - 1), err);
}

/* A shard name from an index must be a plain file name inside the model directory. */
static int safe_shard_name(const char *s, size_t len)
{
    if (len == 0 || len > 255 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '/' || s[i] == '\0')
            return 0;
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int nf_index_parse(const char *text, size_t len, const char *index_path, nf_json **root_out,
                   const char ***files_out, size_t *nfiles_out, nf_error *err)
{
    char jerr[256];
    *root_out = NULL;
    *files_out = NULL;
    *nfiles_out = 0;
    nf_json *root = nf_json_parse(text, len, jerr, sizeof jerr);
    if (!root)
        return nf_error_set(err, NF_E_FORMAT, "%s: invalid JSON: %s", index_path, jerr);
    int rc = NF_OK;
    const char **files = NULL;
    size_t nfiles = 0;
    const nf_json *wm = nf_json_get(root, "weight_map");
    if (root->type != NF_JSON_OBJECT || !wm || wm->type != NF_JSON_OBJECT) {
        rc = nf_error_set(err, NF_E_FORMAT, "%s: no \"weight_map\" object", index_path);
        goto done;
    }
    if (wm->n == 0) {
        rc = nf_error_set(err, NF_E_FORMAT, "%s: \"weight_map\" is empty", index_path);
        goto done;
    }
    files = calloc(wm->n, sizeof *files);
    if (!files) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < wm->n; i++) {
        const nf_json *v = &wm->items[i];
        if (v->type != NF_JSON_STRING || !safe_shard_name(v->str, v->len) || v->has_nul) {
            rc = nf_error_set(err, NF_E_FORMAT,
                              "%s: tensor \"%.200s\" maps to an invalid shard name (must be a "
                              "file name inside the model directory)",
                              index_path, v->key);
            goto done;
        }
        files[nfiles++] = v->str;
    }
    qsort(files, nfiles, sizeof *files, cmp_str);
    size_t uniq = 0;
    for (size_t i = 0; i < nfiles; i++)
        if (uniq == 0 || strcmp(files[uniq - 1], files[i]) != 0)
            files[uniq++] = files[i];
    nfiles = uniq;
done:
    if (rc != NF_OK) {
        free(files);
        nf_json_free(root);
        return rc;
    }
    *root_out = root;
    *files_out = files;
    *nfiles_out = nfiles;
    return NF_OK;
}

static int open_indexed(nf_model *m, const char *dir, const char *index_path, nf_json **index,
                        nf_error *err)
{
    char *text = NULL;
    size_t len = 0;
    int rc = nf_read_small_file(index_path, NF_MAX_HEADER_BYTES, "index file larger than 100 MB",
                                &text, &len, err);
    if (rc)
        return rc;
    nf_json *root = NULL;
    const char **files = NULL;
    size_t uniq = 0;
    rc = nf_index_parse(text, len, index_path, &root, &files, &uniq, err);
    free(text);
    if (rc)
        return rc;
    for (size_t i = 0; i < uniq; i++) {
        char *p = nf_path_join(dir, files[i]);
        if (!p) {
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            goto done;
        }
        if (!nf_exists(p)) {
            rc = nf_error_set(err, NF_E_IO, "%s: names shard %s, which is missing", index_path,
                              p);
            free(p);
            goto done;
        }
        rc = add_shard(m, p, err);
        free(p);
        if (rc)
            goto done;
    }
done:
    free(files);
    if (rc == NF_OK)
        *index = root;
    else
        nf_json_free(root);
    return rc;
}

/* Every tensor the index names is in the shard it names, and every tensor of every shard is
 * named by the index. Needs m->by_name. */
static int check_index(nf_model *m, const char *index_path, const nf_json *root, nf_error *err)
{
    const nf_json *wm = nf_json_get(root, "weight_map");
    for (size_t i = 0; i < wm->n; i++) {
        const nf_json *v = &wm->items[i];
        const nf_tensor *t = nf_model_tensor(m, v->key);
        const char *sname = t ? strrchr(m->shards[t->shard].path, '/') + 1 : NULL;
        if (!t || strcmp(sname, v->str) != 0)
            return nf_error_set(err, NF_E_FORMAT,
                                "%s: tensor \"%.200s\" is listed for shard %s, which does not "
                                "contain it",
                                index_path, v->key, v->str);
    }
    if (m->ntensors != wm->n) {
        name_idx *keys = malloc(wm->n * sizeof *keys);
        if (!keys)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
        for (size_t i = 0; i < wm->n; i++)
            keys[i] = (name_idx){wm->items[i].key, i};
        qsort(keys, wm->n, sizeof *keys, cmp_name_idx);
        for (size_t t = 0; t < m->ntensors; t++) {
            name_idx k = {m->tensors[t].name, 0};
            if (!bsearch(&k, keys, wm->n, sizeof *keys, cmp_name_idx)) {
                int rc = nf_error_set(err, NF_E_FORMAT, "%s: tensor \"%.200s\" is not listed in %s",
                                      m->shards[m->tensors[t].shard].path, m->tensors[t].name,
                                      index_path);
                free(keys);
                return rc;
            }
        }
        free(keys);
    }
    return NF_OK;
}

/* A model directory without safetensors weights: say which format it holds instead, and for
 * PyTorch's pickle (never loaded: unpickling can run code) how to convert it. */
static int no_safetensors(const char *path, nf_error *err)
{
    char *bin = nf_path_join(path, "pytorch_model.bin");
    char *bin_idx = nf_path_join(path, "pytorch_model.bin.index.json");
    int rc;
    if (!bin || !bin_idx)
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
    else if (nf_exists(bin))
        rc = nf_error_set(err, NF_E_UNSUPPORTED,
                          "%s: holds pytorch_model.bin (a pickle, which nufilt never loads: "
                          "unpickling can run code) and no %s; convert it once with: python3 "
                          "-c \"import torch, safetensors.torch as st; sd = "
                          "torch.load('%s', map_location='cpu', weights_only=True); "
                          "st.save_file({k: v.contiguous().clone() for k, v in sd.items()}, "
                          "'%s/%s', metadata={'format': 'pt'})\"",
                          path, SINGLE_NAME, bin, path, SINGLE_NAME);
    else if (nf_exists(bin_idx))
        rc = nf_error_set(err, NF_E_UNSUPPORTED,
                          "%s: holds sharded pytorch_model-*.bin files (pickles, which nufilt "
                          "never loads: unpickling can run code) and no %s; convert it once "
                          "with transformers: load it with the model class it was saved from "
                          "and save_pretrained() it to a new directory (safetensors is the "
                          "default)",
                          path, INDEX_NAME);
    else
        rc = nf_error_set(err, NF_E_IO, "%s: unreadable model directory: no %s or %s in it",
                          path, SINGLE_NAME, INDEX_NAME);
    free(bin);
    free(bin_idx);
    return rc;
}

int nf_model_open(const char *path, nf_model **out, nf_error *err)
{
    *out = NULL;
    nf_model *m = calloc(1, sizeof *m);
    if (!m)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    m->path = nf_strdup(path);
    int rc = NF_OK;
    nf_json *index = NULL;
    char *index_path = NULL;
    struct stat st;
    if (stat(path, &st) != 0) {
        rc = nf_error_set(err, NF_E_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        m->is_dir = 1;
        char *idx = nf_path_join(path, INDEX_NAME);
        char *single = nf_path_join(path, SINGLE_NAME);
        if (!idx || !single) {
            free(idx);
            free(single);
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            goto fail;
        }
        if (nf_exists(idx)) {
            m->indexed = 1;
            index_path = nf_strdup(idx);
            rc = open_indexed(m, path, idx, &index, err);
        } else if (nf_exists(single)) {
            rc = add_shard(m, single, err);
        } else {
            rc = no_safetensors(path, err);
        }
        free(idx);
        free(single);
        if (rc)
            goto fail;
    } else {
        rc = add_shard(m, path, err);
        if (rc)
            goto fail;
    }
    if (m->ntensors == 0) {
        rc = nf_error_set(err, NF_E_FORMAT, "%s: the checkpoint holds no tensors", path);
        goto fail;
    }
    m->by_name = malloc(m->ntensors * sizeof *m->by_name);
    name_idx *ni = malloc(m->ntensors * sizeof *ni);
    if (!m->by_name || !ni) {
        free(ni);
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < m->ntensors; i++)
        ni[i] = (name_idx){m->tensors[i].name, i};
    qsort(ni, m->ntensors, sizeof *ni, cmp_name_idx);
    for (size_t i = 0; i < m->ntensors; i++)
        m->by_name[i] = ni[i].idx;
    free(ni);
    for (size_t i = 1; i < m->ntensors; i++) {
        const nf_tensor *a = &m->tensors[m->by_name[i - 1]], *b = &m->tensors[m->by_name[i]];
        if (strcmp(a->name, b->name) == 0) {
            rc = nf_error_set(err, NF_E_FORMAT, "%s: tensor \"%.200s\" appears in %s and %s",
                              path, a->name, m->shards[a->shard].path, m->shards[b->shard].path);
            goto fail;
        }
    }
    if (index && (rc = check_index(m, index_path, index, err)) != NF_OK)
        goto fail;
    nf_json_free(index);
    free(index_path);
    *out = m;
    return NF_OK;
fail:
    nf_json_free(index);
    free(index_path);
    nf_model_close(m);
    return rc;
}

int nf_model_adopt(nf_model *m, const nf_tensor *t, nf_error *err)
{
    nf_tensor *nt = realloc(m->tensors, (m->ntensors + 1) * sizeof *nt);
    if (!nt)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    m->tensors = nt;
    size_t *nb = realloc(m->by_name, (m->ntensors + 1) * sizeof *nb);
    if (!nb)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    m->by_name = nb;
    nf_tensor *d = &m->tensors[m->ntensors];
    *d = *t;
    d->shard = 0;
    d->name = nf_strdup(t->name);
    if (!d->name)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    /* insert into the name order */
    size_t lo = 0, hi = m->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(m->tensors[m->by_name[mid]].name, d->name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    memmove(&m->by_name[lo + 1], &m->by_name[lo], (m->ntensors - lo) * sizeof *m->by_name);
    m->by_name[lo] = m->ntensors;
    m->ntensors++;
    m->nadopted++;
    return NF_OK;
}

const nf_tensor *nf_model_tensor(const nf_model *m, const char *name)
{
    size_t lo = 0, hi = m->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->tensors[m->by_name[mid]].name, name);
        if (c == 0)
            return &m->tensors[m->by_name[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

long nf_model_find(const nf_model *m, const char *name)
{
    const nf_tensor *t = nf_model_tensor(m, name);
    return t ? (long)(t - m->tensors) : -1;
}

uint64_t nf_model_total_bytes(const nf_model *m)
{
    uint64_t s = 0;
    for (size_t i = 0; i < m->ntensors; i++)
        s += m->tensors[i].nbytes;
    return s;
}

size_t nf_model_tensor_count(const nf_model *m) { return m ? m->ntensors : 0; }

int nf_model_tensor_info(const nf_model *m, size_t i, nf_tensor_info *out)
{
    if (!m || i >= m->ntensors)
        return NF_E_ARG;
    const nf_tensor *t = &m->tensors[i];
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof out->shape);
    out->numel = t->numel;
    out->nbytes = t->nbytes;
    out->shard = t->shard;
    return NF_OK;
}

size_t nf_model_shard_count(const nf_model *m) { return m ? m->nshards : 0; }

const char *nf_model_shard_path(const nf_model *m, size_t i)
{
    return m && i < m->nshards ? m->shards[i].path : NULL;
}

size_t nf_model_metadata_count(const nf_model *m) { return m ? m->nmeta : 0; }

int nf_model_metadata_at(const nf_model *m, size_t i, const char **key, const char **value)
{
    if (!m || i >= m->nmeta)
        return NF_E_ARG;
    *key = m->meta[i].key;
    *value = m->meta[i].value;
    return NF_OK;
}

const char *nf_model_metadata_get(const nf_model *m, const char *key)
{
    for (size_t i = 0; m && i < m->nmeta; i++)
        if (strcmp(m->meta[i].key, key) == 0)
            return m->meta[i].value;
    return NULL;
}

/* ---- the base fingerprint ----
 *
 * A 64-bit hash of every byte of every tensor, written for this project: four independent
 * lanes take 8-byte little-endian words in turn (acc = (rotl(acc ^ w K1, 31) + K3) K2), so
 * the multiplications of one 32-byte block overlap; the lanes, the length and a tail word are
 * folded with an xor-shift-multiply finaliser. Not cryptographic: it tells a base changed by
 * accident (another checkpoint, another revision) from the right one, not one forged to
 * collide. */

#define FP_K1 0x9E3779B97F4A7C15ull
#define FP_K2 0xC2B2AE3D27D4EB4Full
#define FP_K3 0x165667B19E3779F9ull

static inline uint64_t fp_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t fp_word(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint64_t fp_lane(uint64_t acc, uint64_t w)
{
    return (fp_rotl(acc ^ (w * FP_K1), 31) + FP_K3) * FP_K2;
}

static inline uint64_t fp_final(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7FB5D329728EA185ull;
    x ^= x >> 27;
    x *= 0x81DADEF4BC2DD44Dull;
    x ^= x >> 33;
    return x;
}

uint64_t nf_hash64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t a = seed + FP_K1, b = seed + FP_K2, c = seed ^ FP_K3, d = seed - FP_K1;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = fp_lane(a, fp_word(p + i));
        b = fp_lane(b, fp_word(p + i + 8));
        c = fp_lane(c, fp_word(p + i + 16));
        d = fp_lane(d, fp_word(p + i + 24));
    }
    for (; i + 8 <= n; i += 8)
        a = fp_lane(a, fp_word(p + i));
    uint64_t tail = 0;
    for (size_t k = 0; i + k < n; k++)
        tail |= (uint64_t)p[i + k] << (8 * k);
    uint64_t h = fp_final(a ^ (uint64_t)n);
    h = fp_final(h ^ fp_rotl(b, 17));
    h = fp_final(h ^ fp_rotl(c, 29));
    h = fp_final(h ^ fp_rotl(d, 43));
    return fp_final(h ^ fp_lane(tail, n & 7));
}

uint64_t nf_tensor_hash(const nf_tensor *t) { return nf_hash64(t->data, (size_t)t->nbytes, 0); }

uint64_t nf_model_fingerprint_of(const nf_model *m, const uint64_t *tensor_hash)
{
    /* the model as opened: buffers adopted from a task or previous merge (one-sided
     * integer tensors such as position_ids) are not the base's */
    size_t own = m->ntensors - m->nadopted;
    uint64_t h = fp_final(0x6E7566696C742D32ull ^ own); /* "nufilt-2" */
    for (size_t k = 0; k < m->ntensors; k++) {
        size_t i = m->by_name[k];
        if (i >= own)
            continue;
        const nf_tensor *t = &m->tensors[i];
        h = nf_hash64(t->name, strlen(t->name) + 1, h);
        uint64_t desc[2 + NF_MAX_DIMS] = {(uint64_t)t->dtype, (uint64_t)t->ndim};
        for (int d = 0; d < t->ndim; d++)
            desc[2 + d] = (uint64_t)t->shape[d];
        h = nf_hash64(desc, sizeof desc, h);
        h = fp_final(h ^ tensor_hash[i]) + FP_K1;
    }
    return fp_final(h);
}

uint64_t nf_model_fingerprint(const nf_model *m)
{
    uint64_t *th = malloc((m->ntensors ? m->ntensors : 1) * sizeof *th);
    if (!th)
        return 0;
    for (size_t i = 0; i < m->ntensors; i++)
        th[i] = nf_tensor_hash(&m->tensors[i]);
    uint64_t h = nf_model_fingerprint_of(m, th);
    free(th);
    return h;
}
