#include "writer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/util.h"
#include "../core/dtype.h"
#include "outpath.h"
#include "sink.h"

#define HEADER_RESERVE 4096 /* room for metadata that changes before commit */
#define CHUNK_ELEMS (1u << 18)
/* Shards of a directory output kept open at once: the others are reopened when written, so
 * that 20 shards need no more descriptors than 4 (a low `ulimit -n` stays enough). */
#define MAX_OPEN_FILES 4

typedef struct out_file {
    char *final_name;    /* name inside the destination directory (dir mode) */
    char *tmp_path;      /* where it is being written */
    int fd;              /* -1 while closed (see MAX_OPEN_FILES) */
    int refs;            /* writes in flight through fd */
    uint64_t hdr_len;    /* reserved header length (multiple of 8) */
    uint64_t data_size;
    size_t *members;     /* tensor indices in data order */
    size_t nmembers;
} out_file;

typedef struct gen_file {
    char *name;
    char *data;
    size_t len;
} gen_file;

struct nf_writer {
    nf_writer_args a;
    char *out;
    char *tmp_dir;       /* dir mode: temporary directory, renamed to out at commit */
    out_file *files;
    size_t nfiles;
    int *file_of;        /* tensor -> file */
    uint64_t *offset_of; /* tensor -> byte offset of its data within its file */
    nf_kv *meta;
    size_t nmeta;
    int registered;
    pthread_mutex_t fd_lock; /* guards the files' fd, refs, and nopen */
    size_t nopen;
    struct nf_mem_sink *sink; /* in memory: every call goes there (sink.c) */
    gen_file *gen;       /* files written at commit beside the weights (nf_writer_add_file) */
    size_t ngen;
    int extras_done;     /* the base's tree and gen are in tmp_dir (nf_writer_copy_tree) */
};

static int cmp_member(const void *pa, const void *pb, void *ctx)
{
    const nf_writer *w = ctx;
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
    size_t sa = nf_dtype_size(w->a.tensors[a].dtype), sb = nf_dtype_size(w->a.tensors[b].dtype);
    if (sa != sb)
        return sa > sb ? -1 : 1; /* larger elements first keeps every tensor aligned */
    return a < b ? -1 : a > b;
}

/* The header text for file f with the current metadata, padded with spaces to pad_to bytes
 * (0 = to a multiple of 8). */
static int header_text(const nf_writer *w, const out_file *f, uint64_t pad_to, nf_sb *sb)
{
    nf_sb_puts(sb, "{");
    int first = 1;
    if (w->nmeta) {
        nf_sb_puts(sb, "\"__metadata__\":{");
        for (size_t i = 0; i < w->nmeta; i++) {
            if (i)
                nf_sb_puts(sb, ",");
            nf_sb_json_str(sb, w->meta[i].key, strlen(w->meta[i].key));
            nf_sb_puts(sb, ":");
            nf_sb_json_str(sb, w->meta[i].value, strlen(w->meta[i].value));
        }
        nf_sb_puts(sb, "}");
        first = 0;
    }
    uint64_t pos = 0;
    for (size_t k = 0; k < f->nmembers; k++) {
        const nf_out_spec *t = &w->a.tensors[f->members[k]];
        if (!first)
            nf_sb_puts(sb, ",");
        first = 0;
        nf_sb_json_str(sb, t->name, strlen(t->name));
        nf_sb_printf(sb, ":{\"dtype\":\"%s\",\"shape\":[", nf_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            nf_sb_printf(sb, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        nf_sb_printf(sb, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)pos,
                     (unsigned long long)(pos + t->nbytes));
        pos += t->nbytes;
    }
    nf_sb_puts(sb, "}");
    if (sb->oom)
        return NF_E_NOMEM;
    uint64_t target = pad_to ? pad_to : (sb->len + 7) / 8 * 8;
    if (sb->len > target)
        return NF_E_LIMIT;
    while (sb->len < target && !sb->oom)
        nf_sb_putn(sb, " ", 1);
    return sb->oom ? NF_E_NOMEM : NF_OK;
}

/* The descriptor of f, reopened if it was closed to stay within MAX_OPEN_FILES (closing
 * another file with no write in flight); release it with file_release. -1 with errno set. */
static int file_acquire(nf_writer *w, out_file *f)
{
    pthread_mutex_lock(&w->fd_lock);
    if (f->fd < 0) {
        for (size_t k = 0; k < w->nfiles && w->nopen >= MAX_OPEN_FILES; k++) {
            out_file *g = &w->files[k];
            if (g->fd >= 0 && g->refs == 0) {
                close(g->fd); /* a write error is kept for the fsync at the commit */
                g->fd = -1;
                w->nopen--;
            }
        }
        f->fd = open(f->tmp_path, O_RDWR | O_CLOEXEC);
        if (f->fd < 0) {
            int e = errno;
            pthread_mutex_unlock(&w->fd_lock);
            errno = e;
            return -1;
        }
        w->nopen++;
    }
    f->refs++;
    int fd = f->fd;
    pthread_mutex_unlock(&w->fd_lock);
    return fd;
}

static void file_release(nf_writer *w, out_file *f)
{
    pthread_mutex_lock(&w->fd_lock);
    f->refs--;
    pthread_mutex_unlock(&w->fd_lock);
}

static int write_header(nf_writer *w, out_file *f, uint64_t pad_to, nf_error *err)
{
    nf_sb sb = {0};
    int rc = header_text(w, f, pad_to, &sb);
    if (rc == NF_E_LIMIT) {
        nf_sb_free(&sb);
        return nf_error_set(err, NF_E_INTERNAL, "%s: metadata grew past the reserved header",
                            w->out);
    }
    if (rc) {
        nf_sb_free(&sb);
        return nf_error_set(err, rc, "%s: out of memory building the header", w->out);
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)sb.len >> (8 * i));
    int fd = file_acquire(w, f);
    int bad = fd < 0 || nf_pwrite_all(fd, len8, 8, 0) || nf_pwrite_all(fd, sb.s, sb.len, 8);
    int e = errno;
    if (fd >= 0)
        file_release(w, f);
    if (bad) {
        nf_sb_free(&sb);
        return nf_error_set(err, NF_E_IO, "%s: write failed: %s", w->out, strerror(e));
    }
    f->hdr_len = sb.len;
    nf_sb_free(&sb);
    return NF_OK;
}

static int set_meta(nf_writer *w, const nf_kv *meta, size_t nmeta)
{
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->meta);
    w->meta = NULL;
    w->nmeta = 0;
    if (!nmeta)
        return NF_OK;
    w->meta = calloc(nmeta, sizeof *w->meta);
    if (!w->meta)
        return NF_E_NOMEM;
    for (size_t i = 0; i < nmeta; i++) {
        w->meta[i].key = nf_strdup(meta[i].key);
        w->meta[i].value = nf_strdup(meta[i].value);
        w->nmeta++;
        if (!w->meta[i].key || !w->meta[i].value)
            return NF_E_NOMEM;
    }
    return NF_OK;
}


/* Copies the regular file src to the new file dst, part of the output out (named in
 * messages: dst is a temporary path). */
static int copy_file(const char *src, const char *dst, const char *out, nf_error *err)
{
    int in = open(src, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (in < 0)
        return nf_error_set(err, NF_E_IO, "%s: cannot open: %s", src, strerror(errno));
    struct stat st;
    if (fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(in);
        return nf_error_set(err, NF_E_IO, "%s: not a regular file", src);
    }
    int fl = fcntl(in, F_GETFL);
    if (fl >= 0)
        fcntl(in, F_SETFL, fl & ~O_NONBLOCK);
    /* the copy is no more readable than the original (a private file stays private) */
    int o = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)(st.st_mode & 0666));
    if (o < 0) {
        int e = errno;
        close(in);
        return nf_error_set(err, NF_E_IO, "%s: cannot copy %s into it: %s", out, src,
                            strerror(e));
    }
    char buf[1 << 16];
    uint64_t off = 0;
    int rc = NF_OK;
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = nf_error_set(err, NF_E_IO, "%s: read failed: %s", src, strerror(errno));
            break;
        }
        if (r == 0)
            break;
        if (nf_pwrite_all(o, buf, (size_t)r, off)) {
            rc = nf_error_set(err, NF_E_IO, "%s: cannot copy %s into it: %s", out, src,
                              strerror(errno));
            break;
        }
        off += (uint64_t)r;
    }
    close(in);
    if (rc == NF_OK && fsync(o) != 0)
        rc = nf_error_set(err, NF_E_IO, "%s: cannot copy %s into it: %s", out, src,
                          strerror(errno));
    if (close(o) != 0 && rc == NF_OK)
        rc = nf_error_set(err, NF_E_IO, "%s: cannot copy %s into it: %s", out, src,
                          strerror(errno));
    return rc;
}

int nf_writer_copy_file(const char *src, const char *dst, const char *out, nf_error *err)
{
    return copy_file(src, dst, out, err);
}

static int copy_extras(nf_writer *w, nf_error *err);

int nf_writer_copy_tree(nf_writer *w, nf_error *err)
{
    if (w->extras_done || !w->a.as_dir || (!w->a.copy_from_dir && !w->ngen))
        return NF_OK;
    w->extras_done = 1;
    return copy_extras(w, err);
}

int nf_writer_add_file(nf_writer *w, const char *name, const char *data, size_t len,
                       nf_error *err)
{
    if (w->extras_done)
        return nf_error_set(err, NF_E_INTERNAL, "%s: %s added after the copy", w->out, name);
    gen_file *g = realloc(w->gen, (w->ngen + 1) * sizeof *g);
    if (!g)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    w->gen = g;
    g = &w->gen[w->ngen];
    g->name = nf_strdup(name);
    g->data = malloc(len ? len : 1);
    g->len = len;
    if (!g->name || !g->data) {
        free(g->name);
        free(g->data);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    memcpy(g->data, data, len);
    w->ngen++;
    return NF_OK;
}

/* The base's tree less its weights (and less the files nufilt writes itself), then the files
 * nufilt writes (model card, config.json with the output's dtype). */
static int copy_extras(nf_writer *w, nf_error *err)
{
    int rc = NF_OK;
    if (w->a.copy_from_dir) {
        const char **skip = calloc(w->ngen + 1, sizeof *skip);
        if (!skip)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
        for (size_t i = 0; i < w->ngen; i++)
            skip[i] = w->gen[i].name;
        rc = nf_tree_copy(w->a.copy_from_dir, w->tmp_dir, w->out, skip, w->a.note,
                          w->a.note_user, err);
        free(skip);
    }
    for (size_t i = 0; i < w->ngen && rc == NF_OK; i++) {
        char *p = nf_path_join(w->tmp_dir, w->gen[i].name);
        int fd = p ? open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666) : -1;
        if (fd < 0 || nf_pwrite_all(fd, w->gen[i].data, w->gen[i].len, 0) || fsync(fd))
            rc = nf_error_set(err, NF_E_IO, "%s: cannot write %s: %s", w->out, w->gen[i].name,
                              p ? strerror(errno) : "out of memory");
        if (fd >= 0 && close(fd) != 0 && rc == NF_OK)
            rc = nf_error_set(err, NF_E_IO, "%s: cannot write %s: %s", w->out, w->gen[i].name,
                              strerror(errno));
        free(p);
    }
    return rc;
}


void nf_writer_abort(nf_writer *w)
{
    if (w && w->sink) {
        nf_mem_sink_free(w->sink);
        free(w);
        return;
    }
    if (!w)
        return;
    for (size_t i = 0; i < w->nfiles; i++) {
        out_file *f = &w->files[i];
        if (f->fd >= 0)
            close(f->fd);
        if (f->tmp_path && !w->tmp_dir) {
            unlink(f->tmp_path);
            nf_tmp_unregister(f->tmp_path);
        }
        free(f->tmp_path);
        free(f->final_name);
        free(f->members);
    }
    if (w->tmp_dir) {
        nf_remove_tree_depth(w->tmp_dir, 64);
        nf_tmp_unregister(w->tmp_dir);
        free(w->tmp_dir);
    }
    free(w->files);
    free(w->file_of);
    free(w->offset_of);
    for (size_t i = 0; i < w->ngen; i++) {
        free(w->gen[i].name);
        free(w->gen[i].data);
    }
    free(w->gen);
    set_meta(w, NULL, 0);
    free(w->out);
    pthread_mutex_destroy(&w->fd_lock);
    free(w);
}

int nf_writer_open_memory(const nf_sink *s, const nf_out_spec *spec, size_t n,
                          const nf_kv *meta, size_t nmeta, nf_writer **out, nf_error *err)
{
    *out = NULL;
    nf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    int rc = nf_mem_sink_new(s, spec, n, &w->sink, err);
    if (rc == NF_OK)
        rc = nf_mem_sink_set_meta(w->sink, meta, nmeta, err);
    if (rc) {
        nf_mem_sink_free(w->sink);
        free(w);
        return rc;
    }
    *out = w;
    return NF_OK;
}

/* What nf_writer_open refuses before it creates anything. */
static int check_args(const nf_writer_args *a, nf_error *err)
{
    int rc = nf_outpath_replaceable(a->out, a->what ? a->what : "`out`",
                                    a->as_dir ? NF_OUT_DIR : NF_OUT_FILE, a->copy_from_dir,
                                    a->force, err);
    if (rc)
        return rc;
    if (nf_exists(a->out) && !a->force)
        return nf_error_set(err, NF_E_EXISTS, "%s: output exists (use `force` to replace it)",
                            a->out);
    if (nf_exists(a->out) && a->as_dir != nf_is_dir(a->out))
        return nf_error_set(err, NF_E_EXISTS, "%s: exists and is %s; refusing to replace it",
                            a->out, nf_is_dir(a->out) ? "a directory" : "not a directory");
    if (a->nmeta > NF_MAX_METADATA_ENTRIES)
        return nf_error_set(err, NF_E_LIMIT,
                            "%s: the output's metadata would have %zu entries (the base's and "
                            "nufilt's); at most %d can be read back",
                            a->out, a->nmeta, NF_MAX_METADATA_ENTRIES);
    if (!a->as_dir && a->shard_size)
        return nf_error_set(err, NF_E_ARG,
                            "%s: `out_shard_size` needs a directory output (a path not ending "
                            "in .safetensors)",
                            a->out);
    return NF_OK;
}

/* Assigns the tensors to shards in the given order (a new shard past shard_size) and lays out
 * each shard's data, larger elements first: w->files, file_of and offset_of. */
static int lay_out(nf_writer *w, nf_error *err)
{
    const nf_writer_args *a = &w->a;
    size_t nfiles = 1;
    uint64_t cur = 0;
    size_t in_cur = 0;
    for (size_t i = 0; i < a->ntensors; i++) {
        if (a->shard_size && in_cur > 0 && cur + a->tensors[i].nbytes > a->shard_size) {
            nfiles++;
            cur = 0;
            in_cur = 0;
        }
        w->file_of[i] = (int)(nfiles - 1);
        cur += a->tensors[i].nbytes;
        in_cur++;
    }
    w->files = calloc(nfiles, sizeof *w->files);
    if (!w->files)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    w->nfiles = nfiles;
    for (size_t f = 0; f < nfiles; f++)
        w->files[f].fd = -1;
    for (size_t i = 0; i < a->ntensors; i++)
        w->files[w->file_of[i]].nmembers++;
    for (size_t f = 0; f < nfiles; f++) {
        w->files[f].members = calloc(w->files[f].nmembers + 1, sizeof(size_t));
        if (!w->files[f].members)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
        w->files[f].nmembers = 0;
    }
    for (size_t i = 0; i < a->ntensors; i++) {
        out_file *f = &w->files[w->file_of[i]];
        f->members[f->nmembers++] = i;
    }
    for (size_t f = 0; f < nfiles; f++) {
        out_file *of = &w->files[f];
        qsort_r(of->members, of->nmembers, sizeof(size_t), cmp_member, w);
        uint64_t pos = 0;
        for (size_t k = 0; k < of->nmembers; k++) {
            w->offset_of[of->members[k]] = pos;
            pos += a->tensors[of->members[k]].nbytes;
        }
        of->data_size = pos;
    }
    return NF_OK;
}

/* The temporary file, or directory with its (closed) shard files, beside the destination,
 * whose directory is created if missing. */
static int create_temporaries(nf_writer *w, nf_error *err)
{
    const nf_writer_args *a = &w->a;
    char *parent = nf_path_dir(a->out);
    int ok = parent && nf_mkdirs(parent) == 0;
    int e = errno;
    free(parent);
    if (!ok)
        return nf_error_set(err, NF_E_IO, "%s: cannot create its directory: %s", a->out,
                            strerror(e));
    char *tmpl = nf_tmp_template(a->out);
    if (!tmpl)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    int fd = -1, rc = nf_tmp_create(tmpl, a->as_dir, a->as_dir ? NULL : &fd);
    if (rc != NF_OK) {
        e = errno;
        free(tmpl);
        if (rc == NF_E_LIMIT)
            return nf_error_set(err, NF_E_LIMIT, "%s: too many outputs open at once", a->out);
        return nf_error_set(err, NF_E_IO, "%s: cannot create a temporary %s beside it: %s",
                            a->out, a->as_dir ? "directory" : "file", strerror(e));
    }
    if (!a->as_dir) {
        w->files[0].fd = fd;
        w->nopen = 1;
        w->files[0].tmp_path = tmpl;
        return NF_OK;
    }
    w->tmp_dir = tmpl;
    for (size_t f = 0; f < w->nfiles; f++) {
        nf_sb sb = {0};
        if (w->nfiles == 1)
            nf_sb_puts(&sb, "model.safetensors");
        else
            nf_sb_printf(&sb, "model-%05zu-of-%05zu.safetensors", f + 1, w->nfiles);
        w->files[f].final_name = sb.s;
        w->files[f].tmp_path = nf_path_join(tmpl, sb.s ? sb.s : "");
        if (sb.oom || !w->files[f].tmp_path)
            return nf_error_set(err, NF_E_NOMEM, "out of memory");
        /* created closed: opened again when written, MAX_OPEN_FILES at a time */
        fd = open(w->files[f].tmp_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
                  0666); /* less the umask */
        if (fd < 0)
            return nf_error_set(err, NF_E_IO, "%s: cannot create: %s", w->files[f].tmp_path,
                                strerror(errno));
        close(fd);
    }
    return NF_OK;
}

/* File f's header, with room for the metadata to change, and its full size, reserved on
 * disk now: a full disk is reported before any work, not after it. */
static int reserve_file(nf_writer *w, out_file *f, nf_error *err)
{
    const char *out = w->a.out;
    nf_sb sb = {0};
    int rc = header_text(w, f, 0, &sb);
    uint64_t reserve = (sb.len + HEADER_RESERVE + 7) / 8 * 8;
    nf_sb_free(&sb);
    if (rc)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    if (reserve > NF_MAX_HEADER_BYTES)
        /* nufilt (and the reference reader) would refuse to read such a file back */
        return nf_error_set(err, NF_E_LIMIT,
                            "%s: the output's header (tensor list and metadata) would take "
                            "%llu bytes, more than the 100 MB safetensors readers accept",
                            out, (unsigned long long)reserve);
    if ((rc = write_header(w, f, reserve, err)) != NF_OK)
        return rc;
    uint64_t total = 8 + f->hdr_len + f->data_size;
    int fd = file_acquire(w, f);
    if (fd < 0 || ftruncate(fd, (off_t)total) != 0) {
        rc = nf_error_set(err, NF_E_IO, "%s: cannot size the output (%.1f MB): %s", out,
                          (double)total / 1e6, strerror(errno));
        if (fd >= 0)
            file_release(w, f);
        return rc;
    }
    if (fallocate(fd, 0, 0, (off_t)total) != 0 &&
        (errno == ENOSPC || errno == EDQUOT || errno == EFBIG)) {
        int e = errno;
        file_release(w, f);
        return nf_error_set(err, NF_E_IO,
                            e == EFBIG ? "%s: cannot reserve the output's %.1f MB: %s"
                                       : "%s: no room for the output (%.1f MB) beside it: %s",
                            out, (double)total / 1e6, strerror(e));
    }
    file_release(w, f);
    return NF_OK;
}

int nf_writer_open(const nf_writer_args *a, nf_writer **out, nf_error *err)
{
    *out = NULL;
    int rc = check_args(a, err);
    if (rc)
        return rc;
    nf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    pthread_mutex_init(&w->fd_lock, NULL);
    w->a = *a;
    w->out = nf_strdup(a->out);
    w->file_of = calloc(a->ntensors ? a->ntensors : 1, sizeof *w->file_of);
    w->offset_of = calloc(a->ntensors ? a->ntensors : 1, sizeof *w->offset_of);
    if (!w->out || !w->file_of || !w->offset_of || set_meta(w, a->meta, a->nmeta)) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = lay_out(w, err)) != NF_OK || (rc = create_temporaries(w, err)) != NF_OK)
        goto fail;
    for (size_t f = 0; f < w->nfiles; f++)
        if ((rc = reserve_file(w, &w->files[f], err)) != NF_OK)
            goto fail;
    *out = w;
    return NF_OK;
fail:
    nf_writer_abort(w);
    return rc;
}

int nf_writer_put(nf_writer *w, size_t i, uint64_t off, const void *bytes, size_t len,
                  nf_error *err)
{
    if (w->sink)
        return nf_mem_sink_put(w->sink, i, off, bytes, len, err);
    if (i >= w->a.ntensors || off + len > w->a.tensors[i].nbytes)
        return nf_error_set(err, NF_E_INTERNAL, "writer: tensor %zu write out of range", i);
    out_file *f = &w->files[w->file_of[i]];
    uint64_t at = 8 + f->hdr_len + w->offset_of[i] + off;
    int fd = file_acquire(w, f);
    if (fd < 0 || nf_pwrite_all(fd, bytes, len, at)) {
        int e = errno;
        if (fd >= 0)
            file_release(w, f);
        return nf_error_set(err, NF_E_IO, "%s: write failed for tensor \"%s\": %s", w->out,
                            w->a.tensors[i].name, strerror(e));
    }
#ifdef SYNC_FILE_RANGE_WRITE
    /* start writing this range back now, while other tensors compute, so that the fsync at
     * the commit has little left to wait for (0.48 s of a ViT-B/32 step otherwise); only a
     * hint: a write error still surfaces at that fsync */
    sync_file_range(fd, (off_t)at, (off_t)len, SYNC_FILE_RANGE_WRITE);
#endif
    file_release(w, f);
    return NF_OK;
}

int nf_writer_put_f32(nf_writer *w, size_t i, const float *vals, nf_error *err)
{
    if (w->sink)
        return nf_mem_sink_put_f32(w->sink, i, vals, err);
    const nf_out_spec *t = &w->a.tensors[i];
    size_t es = nf_dtype_size(t->dtype);
    if (!nf_dtype_is_float(t->dtype))
        return nf_error_set(err, NF_E_INTERNAL, "writer: tensor \"%s\" is not a float tensor",
                            t->name);
    uint64_t n = t->nbytes / es;
    if (t->dtype == NF_F32)
        return nf_writer_put(w, i, 0, vals, (size_t)t->nbytes, err);
    unsigned char *buf = malloc((size_t)CHUNK_ELEMS * es);
    if (!buf)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    int rc = NF_OK;
    for (uint64_t s = 0; s < n && rc == NF_OK; s += CHUNK_ELEMS) {
        size_t c = (size_t)(n - s < CHUNK_ELEMS ? n - s : CHUNK_ELEMS);
        nf_from_f32(vals + s, t->dtype, buf, c);
        rc = nf_writer_put(w, i, s * es, buf, c * es, err);
    }
    free(buf);
    return rc;
}

int nf_writer_set_meta(nf_writer *w, const nf_kv *meta, size_t nmeta, nf_error *err)
{
    if (w->sink)
        return nf_mem_sink_set_meta(w->sink, meta, nmeta, err);
    if (nmeta > NF_MAX_METADATA_ENTRIES)
        return nf_error_set(err, NF_E_LIMIT, "%s: the output's metadata would have %zu entries",
                            w->out, nmeta);
    if (set_meta(w, meta, nmeta))
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    return NF_OK;
}

static int write_index(nf_writer *w, nf_error *err)
{
    nf_sb sb = {0};
    uint64_t total = 0;
    for (size_t i = 0; i < w->a.ntensors; i++)
        total += w->a.tensors[i].nbytes;
    nf_sb_printf(&sb, "{\n  \"metadata\": {\n    \"total_size\": %llu", (unsigned long long)total);
    for (size_t i = 0; i < w->nmeta; i++) {
        nf_sb_puts(&sb, ",\n    ");
        nf_sb_json_str(&sb, w->meta[i].key, strlen(w->meta[i].key));
        nf_sb_puts(&sb, ": ");
        nf_sb_json_str(&sb, w->meta[i].value, strlen(w->meta[i].value));
    }
    nf_sb_puts(&sb, "\n  },\n  \"weight_map\": {");
    for (size_t i = 0; i < w->a.ntensors; i++) {
        nf_sb_puts(&sb, i ? ",\n    " : "\n    ");
        nf_sb_json_str(&sb, w->a.tensors[i].name, strlen(w->a.tensors[i].name));
        nf_sb_puts(&sb, ": ");
        const char *fn = w->files[w->file_of[i]].final_name;
        nf_sb_json_str(&sb, fn, strlen(fn));
    }
    nf_sb_puts(&sb, "\n  }\n}\n");
    if (sb.oom) {
        nf_sb_free(&sb);
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    char *p = nf_path_join(w->tmp_dir, "model.safetensors.index.json");
    int rc = NF_OK;
    int fd = p ? open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666) : -1;
    if (fd < 0 || nf_pwrite_all(fd, sb.s, sb.len, 0) || fsync(fd))
        rc = nf_error_set(err, NF_E_IO, "%s: cannot write the index: %s", w->out,
                          strerror(errno));
    if (fd >= 0)
        close(fd);
    free(p);
    nf_sb_free(&sb);
    return rc;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Renames the finished src to the destination: never leaves it partial. Without --force an
 * existing destination (even one that appeared since the merge started) is refused; with it,
 * a file is replaced by rename(2) and a directory swapped with RENAME_EXCHANGE, the old one
 * then removed under the temporary name. Another process committing the same destination
 * at the same time makes the attempt retry: the last one to commit wins, whole. */
#define CANNOT_MOVE "%s: cannot move the output into place: %s"
static int move_into_place(nf_writer *w, const char *src, nf_error *err)
{
    for (int attempt = 0; attempt < 16; attempt++) {
        if (renameat2(AT_FDCWD, src, AT_FDCWD, w->out, RENAME_NOREPLACE) == 0)
            return NF_OK;
        int e = errno;
        if (e == EINVAL || e == ENOSYS) {
            /* no RENAME_NOREPLACE on this file system: check, then rename */
            if (!nf_exists(w->out)) {
                if (rename(src, w->out) == 0)
                    return NF_OK;
                return nf_error_set(err, NF_E_IO, CANNOT_MOVE, w->out, strerror(errno));
            }
            e = EEXIST;
        }
        if (e != EEXIST)
            return nf_error_set(err, NF_E_IO, CANNOT_MOVE, w->out, strerror(e));
        if (!w->a.force)
            return nf_error_set(err, NF_E_EXISTS,
                                "%s: output appeared while merging (use `force` to replace it)",
                                w->out);
        /* what is there now (it may have changed since the writer opened) must still be
         * nufilt's kind of output */
        int rc = nf_outpath_replaceable(w->out, w->a.what ? w->a.what : "`out`",
                                        w->a.as_dir ? NF_OUT_DIR : NF_OUT_FILE,
                                        w->a.copy_from_dir, 1, err);
        if (rc)
            return rc;
        if (!w->a.as_dir) {
            if (rename(src, w->out) == 0)
                return NF_OK;
            return nf_error_set(err, NF_E_IO, CANNOT_MOVE, w->out, strerror(errno));
        }
        if (renameat2(AT_FDCWD, src, AT_FDCWD, w->out, RENAME_EXCHANGE) == 0) {
            /* src now names the old destination: a directory of our files, or whatever was
             * there (a symbolic link is removed, never followed into) */
            nf_remove_tree_depth(src, 64); /* an old output nf_outpath_replaceable accepted */
            return NF_OK;
        }
        if (errno != ENOENT) /* ENOENT: the destination went away meanwhile; again */
            return nf_error_set(err, NF_E_IO, CANNOT_MOVE, w->out, strerror(errno));
    }
    return nf_error_set(err, NF_E_IO, CANNOT_MOVE, w->out,
                        "it keeps changing (another process writing it?)");
}

int nf_writer_commit(nf_writer *w, nf_error *err)
{
    if (w->sink) {
        int rc = nf_mem_sink_commit(w->sink, err);
        free(w);
        return rc;
    }
    int rc = NF_OK;
    for (size_t f = 0; f < w->nfiles && rc == NF_OK; f++) {
        out_file *of = &w->files[f];
        if ((rc = write_header(w, of, of->hdr_len, err)) != NF_OK)
            break;
        int fd = file_acquire(w, of);
        if (fd < 0 || fsync(fd) != 0)
            rc = nf_error_set(err, NF_E_IO, "%s: cannot flush the output: %s", w->out,
                              strerror(errno));
        if (fd >= 0) {
            file_release(w, of);
            of->fd = -1;
            w->nopen--;
            if (close(fd) != 0 && rc == NF_OK)
                rc = nf_error_set(err, NF_E_IO, "%s: cannot close the output: %s", w->out,
                                  strerror(errno));
        }
    }
    if (rc == NF_OK && w->a.as_dir && w->nfiles > 1)
        rc = write_index(w, err);
    if (rc == NF_OK)
        rc = nf_writer_copy_tree(w, err);
    if (rc != NF_OK) {
        nf_writer_abort(w);
        return rc;
    }
    const char *src = w->a.as_dir ? w->tmp_dir : w->files[0].tmp_path;
    char *parent = nf_path_dir(w->out);
    if (w->a.as_dir) {
        chmod(w->tmp_dir, 0777 & ~nf_current_umask()); /* mkdtemp made it 0700 */
        fsync_dir(w->tmp_dir);
    }
    rc = move_into_place(w, src, err);
    if (rc != NF_OK) {
        free(parent);
        nf_writer_abort(w);
        return rc;
    }
    fsync_dir(parent);
    free(parent);
    /* committed: nothing left to clean up */
    if (w->a.as_dir) {
        nf_tmp_unregister(w->tmp_dir);
        free(w->tmp_dir);
        w->tmp_dir = NULL;
    }
    for (size_t f = 0; f < w->nfiles; f++) {
        if (!w->a.as_dir)
            nf_tmp_unregister(w->files[f].tmp_path);
        free(w->files[f].tmp_path);
        w->files[f].tmp_path = NULL;
    }
    nf_writer_abort(w); /* frees; no paths remain to remove */
    return NF_OK;
}

static int link_or_copy_file(const char *src, const char *dst, const char *out, nf_error *err)
{
    if (link(src, dst) == 0)
        return NF_OK;
    return copy_file(src, dst, out, err);
}

/* The files of the output directory src, and its folders depth levels deep, into the new
 * directory dst (named out in messages). Links inside are not followed (we wrote none). */
static int link_or_copy_tree(const char *src, const char *dst, const char *out, int depth,
                             nf_error *err)
{
    DIR *d = opendir(src);
    if (!d)
        return nf_error_set(err, NF_E_IO, "%s: cannot list: %s", src, strerror(errno));
    int rc = NF_OK;
    struct dirent *ent;
    while (rc == NF_OK && (ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.')
            continue;
        char *a = nf_path_join(src, ent->d_name), *b = nf_path_join(dst, ent->d_name);
        struct stat st;
        if (!a || !b)
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        else if (lstat(a, &st) != 0)
            rc = nf_error_set(err, NF_E_IO, "%s: cannot stat: %s", a, strerror(errno));
        else if (S_ISDIR(st.st_mode) && depth > 0) {
            if (mkdir(b, 0777) != 0)
                rc = nf_error_set(err, NF_E_IO, "%s: cannot create: %s", b, strerror(errno));
            else
                rc = link_or_copy_tree(a, b, out, depth - 1, err);
        } else if (S_ISREG(st.st_mode))
            rc = link_or_copy_file(a, b, out, err);
        free(a);
        free(b);
    }
    closedir(d);
    return rc;
}

int nf_link_or_copy(const char *src, const char *dst, nf_error *err)
{
    char *tmpl = nf_tmp_template(dst);
    if (!tmpl)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    int rc = NF_OK, is_dir = nf_is_dir(src);
    sigset_t oldmask;
    nf_tmp_block_signals(&oldmask);
    int made = is_dir ? mkdtemp(tmpl) != NULL : 0;
    if (!is_dir) {
        int fd = mkostemp(tmpl, O_CLOEXEC);
        if (fd >= 0) {
            close(fd);
            unlink(tmpl); /* the name is reserved for link(2), which will not replace */
            made = 1;
        }
    }
    int e = errno;
    if (made)
        nf_tmp_register(tmpl, is_dir);
    nf_tmp_restore_signals(&oldmask);
    if (!made) {
        rc = nf_error_set(err, NF_E_IO, "%s: cannot create: %s", dst, strerror(e));
        free(tmpl);
        return rc;
    }
    if (!is_dir)
        rc = link_or_copy_file(src, tmpl, dst, err);
    else
        rc = link_or_copy_tree(src, tmpl, dst, NF_TREE_MAX_DEPTH, err);
    if (rc == NF_OK && is_dir)
        chmod(tmpl, 0777 & ~nf_current_umask());
    if (rc == NF_OK) {
        /* atomically: a file by rename(2), a directory by swapping it with the old one */
        if (renameat2(AT_FDCWD, tmpl, AT_FDCWD, dst, RENAME_NOREPLACE) != 0) {
            int ok = 0;
            if (errno == EEXIST || errno == EINVAL)
                ok = is_dir ? renameat2(AT_FDCWD, tmpl, AT_FDCWD, dst, RENAME_EXCHANGE) == 0
                            : rename(tmpl, dst) == 0;
            if (!ok)
                rc = nf_error_set(err, NF_E_IO, "%s: cannot move into place: %s", dst,
                                  strerror(errno));
            else if (is_dir)
                nf_remove_tree(tmpl); /* tmpl now names the old copy */
        }
    }
    if (rc != NF_OK)
        nf_remove_tree(tmpl);
    nf_tmp_unregister(tmpl);
    free(tmpl);
    return rc;
}
