/* The base directory's non-weight tree, copied into a merged directory, and model ids found
 * in the local Hugging Face cache. */
#include "tree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/util.h"
#include "writer.h"

/* removal of temporaries reaches a scratch directory, a step output in it, and its tree */
_Static_assert(NF_TREE_MAX_DEPTH + 2 <= NF_REMOVE_TREE_DEPTH, "cleanup must reach the tree");

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

int nf_tree_is_weight(const char *name, int is_dir)
{
    if (is_dir) {
        /* exports of the whole model to other runtimes */
        static const char *const dirs[] = {"onnx", "openvino", "coreml", "tflite", "gguf",
                                           "tf", "flax", "tensorrt", NULL};
        for (int i = 0; dirs[i]; i++)
            if (strcmp(name, dirs[i]) == 0)
                return 1;
        return ends_with(name, ".mlpackage") || ends_with(name, ".mlmodelc");
    }
    static const char *const ext[] = {
        ".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth",
        ".ckpt", ".h5", ".h5.index.json", ".msgpack", ".msgpack.index.json", ".gguf", ".onnx",
        ".onnx_data", ".onnx.data", ".ot", ".npz", ".npy", ".pb", ".tflite", ".mlmodel",
        ".pkl", ".pickle", ".keras", ".engine", NULL};
    for (int i = 0; ext[i]; i++)
        if (ends_with(name, ext[i]))
            return 1;
    /* OpenVINO's IR is a pair: the .bin (above) and its topology .xml */
    return strncmp(name, "openvino_model", 14) == 0;
}

typedef struct walk {
    const char *out;
    const char *const *skip;
    nf_note_fn note;
    void *user;
    nf_error *err;
    char base_real[PATH_MAX];
    char repo_real[PATH_MAX]; /* models--org--name of a cache snapshot, or "" */
    size_t entries;
} walk;

static void notef(walk *w, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void notef(walk *w, const char *fmt, ...)
{
    if (!w->note)
        return;
    char msg[2 * PATH_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    w->note(w->user, msg);
}

static int inside(const char *real, const char *root)
{
    size_t n = strlen(root);
    return n && strncmp(real, root, n) == 0 && (real[n] == '/' || real[n] == '\0');
}

/* The cache repository folder holding a snapshot directory (given as a real path): the
 * snapshot's grandparent when the parent is "snapshots" and the grandparent is models--*. */
static int repo_of_snapshot(const char *real, char *repo, size_t n)
{
    const char *p = strstr(real, "/models--");
    while (p) {
        const char *q = strchr(p + 1, '/');
        if (q && strncmp(q, "/snapshots/", 11) == 0 && q[11] && q[11] != '/') {
            size_t len = (size_t)(q - real);
            if (len >= n)
                return 0;
            memcpy(repo, real, len);
            repo[len] = '\0';
            return 1;
        }
        p = strstr(p + 1, "/models--");
    }
    return 0;
}

static int skipped_top(const walk *w, const char *name)
{
    for (size_t i = 0; w->skip && w->skip[i]; i++)
        if (strcmp(w->skip[i], name) == 0)
            return 1;
    return 0;
}

static int copy_dir(walk *w, const char *src, const char *dst, const char *rel, int depth);

static int copy_entry(walk *w, const char *src_dir, const char *dst_dir, const char *rel_dir,
                      const char *name, int depth)
{
    if (++w->entries > NF_TREE_MAX_ENTRIES)
        return nf_error_set(w->err, NF_E_LIMIT,
                            "%s: the base directory %s holds more than %d files and folders to "
                            "copy beside the weights",
                            w->out, w->base_real, NF_TREE_MAX_ENTRIES);
    char *src = nf_path_join(src_dir, name), *dst = nf_path_join(dst_dir, name);
    char *rel = rel_dir ? nf_path_join(rel_dir, name) : nf_strdup(name);
    int rc = NF_OK;
    if (!src || !dst || !rel) {
        rc = nf_error_set(w->err, NF_E_NOMEM, "out of memory");
        goto done;
    }
    struct stat st;
    if (lstat(src, &st) != 0) {
        rc = nf_error_set(w->err, NF_E_IO, "%s: cannot stat: %s", src, strerror(errno));
        goto done;
    }
    const char *from = src;
    char real[PATH_MAX];
    if (S_ISLNK(st.st_mode)) {
        if (!realpath(src, real)) {
            notef(w, "%s: symbolic link to nothing (%s); not copied", rel, strerror(errno));
            goto done;
        }
        if (!inside(real, w->base_real) && !(w->repo_real[0] && inside(real, w->repo_real))) {
            notef(w, "%s: symbolic link leading outside the base directory (to %s); not copied",
                  rel, real);
            goto done;
        }
        if (stat(real, &st) != 0) {
            rc = nf_error_set(w->err, NF_E_IO, "%s: cannot stat: %s", real, strerror(errno));
            goto done;
        }
        from = real;
        char here[PATH_MAX];
        if (S_ISDIR(st.st_mode) && realpath(src_dir, here) && inside(here, real)) {
            notef(w, "%s: symbolic link to a folder that holds it (a loop); not copied", rel);
            goto done;
        }
    }
    if (S_ISDIR(st.st_mode)) {
        if (nf_tree_is_weight(name, 1))
            goto done; /* another format's export of the base: its weights */
        if (depth >= NF_TREE_MAX_DEPTH) {
            notef(w, "%s: folder nested deeper than the %d levels copied; not copied", rel,
                  NF_TREE_MAX_DEPTH);
            goto done;
        }
        if (mkdir(dst, 0777) != 0) { /* less the umask, as an ordinary folder */
            rc = nf_error_set(w->err, NF_E_IO, "%s: cannot create %s in it: %s", w->out, rel,
                              strerror(errno));
            goto done;
        }
        rc = copy_dir(w, from, dst, rel, depth + 1);
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        notef(w, "%s: not a regular file or folder; not copied", rel);
        goto done;
    }
    if (nf_tree_is_weight(name, 0)) {
        /* a module's own weights (sentence-transformers' 2_Dense/) are not merged: say so */
        if (depth > 0)
            notef(w, "%s: weights of a module outside the merged checkpoint; not merged and "
                     "not copied", rel);
        goto done;
    }
    rc = nf_writer_copy_file(from, dst, w->out, w->err);
done:
    free(src);
    free(dst);
    free(rel);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int copy_dir(walk *w, const char *src, const char *dst, const char *rel, int depth)
{
    DIR *d = opendir(src);
    if (!d)
        return nf_error_set(w->err, NF_E_IO, "%s: cannot list: %s", src, strerror(errno));
    /* names first, sorted: the copy (and the notes) do not depend on the listing order */
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = NF_OK;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue; /* ., .., and hidden entries (.git, .cache, .gitattributes) */
        if (depth == 0 && (skipped_top(w, e->d_name) || strcmp(e->d_name, "README.md") == 0))
            continue;
        if (n + w->entries >= NF_TREE_MAX_ENTRIES + 1) {
            rc = nf_error_set(w->err, NF_E_LIMIT,
                              "%s: the base directory %s holds more than %d files and folders "
                              "to copy beside the weights",
                              w->out, w->base_real, NF_TREE_MAX_ENTRIES);
            break;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 32;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn) {
                rc = nf_error_set(w->err, NF_E_NOMEM, "out of memory");
                break;
            }
            names = nn;
            cap = nc;
        }
        if (!(names[n] = nf_strdup(e->d_name))) {
            rc = nf_error_set(w->err, NF_E_NOMEM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (rc == NF_OK && n)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && rc == NF_OK; i++)
        rc = copy_entry(w, src, dst, rel, names[i], depth);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

int nf_tree_copy(const char *base_dir, const char *dst, const char *out,
                 const char *const *skip, nf_note_fn note, void *user, nf_error *err)
{
    walk *w = calloc(1, sizeof *w);
    if (!w)
        return nf_error_set(err, NF_E_NOMEM, "out of memory");
    w->out = out;
    w->skip = skip;
    w->note = note;
    w->user = user;
    w->err = err;
    int rc;
    if (!realpath(base_dir, w->base_real)) {
        rc = nf_error_set(err, NF_E_IO, "%s: cannot resolve: %s", base_dir, strerror(errno));
    } else {
        if (!repo_of_snapshot(w->base_real, w->repo_real, sizeof w->repo_real))
            w->repo_real[0] = '\0';
        rc = copy_dir(w, w->base_real, dst, NULL, 0);
    }
    free(w);
    return rc;
}

int nf_tree_read(const char *base_dir, const char *name, size_t max, char **text, size_t *len,
                 nf_error *err)
{
    *text = NULL;
    *len = 0;
    char base_real[PATH_MAX], repo[PATH_MAX], real[PATH_MAX];
    char *p = nf_path_join(base_dir, name);
    if (!p) {
        nf_error_set(err, NF_E_NOMEM, "out of memory");
        return -1;
    }
    int ok = realpath(base_dir, base_real) && realpath(p, real);
    if (ok && !inside(real, base_real))
        ok = repo_of_snapshot(base_real, repo, sizeof repo) && inside(real, repo);
    int res = 0;
    int fd = ok ? open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY) : -1;
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size <= max) {
        size_t n = (size_t)st.st_size, got = 0;
        char *buf = malloc(n + 1);
        res = buf ? 1 : -1;
        if (!buf)
            nf_error_set(err, NF_E_NOMEM, "out of memory");
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        while (buf && got < n) {
            ssize_t r = read(fd, buf + got, n - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                nf_error_set(err, NF_E_IO, "%s: read failed: %s", p,
                             r < 0 ? strerror(errno) : "file shrank while read");
                res = -1;
                break;
            }
            got += (size_t)r;
        }
        if (res == 1) {
            buf[n] = '\0';
            *text = buf;
            *len = n;
        } else {
            free(buf);
        }
    }
    if (fd >= 0)
        close(fd);
    free(p);
    return res;
}

/* ---- the local Hugging Face cache ---- */

char *nf_hf_model_id(const char *path)
{
    char real[PATH_MAX], repo[PATH_MAX];
    if (!realpath(path, real) || !repo_of_snapshot(real, repo, sizeof repo))
        return NULL;
    const char *folder = strrchr(repo, '/');
    folder = folder ? folder + 1 : repo;
    if (strncmp(folder, "models--", 8) != 0)
        return NULL;
    const char *sep = strstr(folder + 8, "--");
    if (!sep || sep == folder + 8 || !sep[2])
        return NULL;
    nf_sb sb = {0};
    nf_sb_printf(&sb, "%.*s/%s", (int)(sep - folder - 8), folder + 8, sep + 2);
    if (sb.oom) {
        nf_sb_free(&sb);
        return NULL;
    }
    return sb.s;
}

/* org/name with both parts made of letters, digits, '-', '_', '.' (not starting with '.') */
static int looks_like_id(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash || strchr(slash + 1, '/') || slash == s || !slash[1] || s[0] == '.' ||
        slash[1] == '.' || strlen(s) > 200)
        return 0;
    for (const char *p = s; *p; p++)
        if (p != slash && !((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                            (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
            return 0;
    return 1;
}

static char *cache_root(const char **how)
{
    const char *v = getenv("HF_HUB_CACHE");
    if (v && *v) {
        *how = "HF_HUB_CACHE";
        return nf_strdup(v);
    }
    v = getenv("HF_HOME");
    if (v && *v) {
        *how = "HF_HOME/hub";
        return nf_path_join(v, "hub");
    }
    v = getenv("XDG_CACHE_HOME");
    if (v && *v) {
        *how = "XDG_CACHE_HOME/huggingface/hub";
        return nf_path_join(v, "huggingface/hub");
    }
    v = getenv("HOME");
    *how = "~/.cache/huggingface/hub";
    return v && *v ? nf_path_join(v, ".cache/huggingface/hub") : NULL;
}

/* refs/main: one line, a commit hash (or a branch-like name); trailing whitespace trimmed */
static int read_ref(const char *path, char *ref, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return 0;
    struct stat st;
    ssize_t r = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        r = read(fd, ref, n - 1);
    close(fd);
    if (r <= 0)
        return 0;
    ref[r] = '\0';
    while (r > 0 && (ref[r - 1] == '\n' || ref[r - 1] == '\r' || ref[r - 1] == ' '))
        ref[--r] = '\0';
    if (r == 0 || ref[0] == '.')
        return 0;
    for (ssize_t i = 0; i < r; i++)
        if (!((ref[i] >= 'a' && ref[i] <= 'z') || (ref[i] >= 'A' && ref[i] <= 'Z') ||
              (ref[i] >= '0' && ref[i] <= '9') || ref[i] == '-' || ref[i] == '_' ||
              ref[i] == '.'))
            return 0;
    return 1;
}

int nf_hf_resolve(const char *given, const char *role, char **path, nf_error *err)
{
    *path = NULL;
    if (!given)
        return NF_OK;
    if (nf_exists(given) || !looks_like_id(given)) {
        *path = nf_strdup(given);
        return *path ? NF_OK : nf_error_set(err, NF_E_NOMEM, "out of memory");
    }
    const char *how = NULL;
    char *root = cache_root(&how);
    nf_sb folder = {0}, snap = {0};
    const char *slash = strchr(given, '/');
    int rc = NF_OK;
    if (!root) {
        rc = nf_error_set(err, NF_E_IO,
                          "%s %s: no such file or directory, and no Hugging Face cache to look "
                          "it up in (HF_HUB_CACHE, HF_HOME and HOME are unset)",
                          role, given);
        goto done;
    }
    nf_sb_printf(&folder, "%s/models--%.*s--%s", root, (int)(slash - given), given, slash + 1);
    char ref[128];
    char *refp = folder.oom ? NULL : nf_path_join(folder.s, "refs/main");
    if (folder.oom || !refp) {
        free(refp);
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto done;
    }
    int have_ref = read_ref(refp, ref, sizeof ref);
    free(refp);
    if (!nf_is_dir(folder.s)) {
        rc = nf_error_set(err, NF_E_IO,
                          "%s %s: no such file or directory, and not in the local Hugging Face "
                          "cache (looked for %s, from %s); nufilt reads only local files: "
                          "download it first (hf download %s)",
                          role, given, folder.s, how, given);
        goto done;
    }
    if (!have_ref) {
        rc = nf_error_set(err, NF_E_IO,
                          "%s %s: the Hugging Face cache folder %s has no readable refs/main "
                          "naming a snapshot; give the snapshot directory (%s/snapshots/...) "
                          "instead",
                          role, given, folder.s, folder.s);
        goto done;
    }
    nf_sb_printf(&snap, "%s/snapshots/%s", folder.s, ref);
    if (snap.oom) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto done;
    }
    if (!nf_is_dir(snap.s)) {
        rc = nf_error_set(err, NF_E_IO,
                          "%s %s: refs/main of the Hugging Face cache folder %s names snapshot "
                          "%s, which is missing (%s)",
                          role, given, folder.s, ref, snap.s);
        goto done;
    }
    *path = snap.s;
    snap.s = NULL;
done:
    free(root);
    nf_sb_free(&folder);
    nf_sb_free(&snap);
    return rc;
}
