#include "outpath.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/util.h"
#include "model.h"

#define WALK_MAX_DEPTH 32

/* ---- where a path is ---- */

/* A path, resolved: loc is where its name lives (the parent resolved, links included, then the
 * last component), target what it resolves to (links followed; NULL when absent or a dangling
 * link), and the device and inode of what it resolves to. */
typedef struct rpath {
    char *loc;
    char *target;
    int has_id;
    dev_t dev;
    ino_t ino;
} rpath;

static char *parent_of(const char *path)
{
    size_t len, s = nf_path_last(path, &len);
    if (s == 0)
        return nf_strdup(".");
    size_t n = s;
    while (n > 1 && path[n - 1] == '/')
        n--;
    return nf_strndup(path, n);
}

/* The canonical absolute form of path: realpath(3) where it exists, else its parent's
 * canonical form and the remaining component (recursively, so that a path under a directory
 * still to be created is placed). NULL on failure. */
static char *canon(const char *path, int depth)
{
    char buf[PATH_MAX];
    if (realpath(path, buf))
        return nf_strdup(buf);
    if (depth > 64)
        return NULL;
    size_t len, s = nf_path_last(path, &len);
    char *par = parent_of(path);
    char *cp = par && !(s == 0 && len == 0) ? canon(par, depth + 1) : NULL;
    free(par);
    if (!cp)
        return NULL;
    char *res = NULL;
    if (len == 1 && path[s] == '.') {
        res = cp;
        cp = NULL;
    } else if (len == 2 && path[s] == '.' && path[s + 1] == '.') {
        size_t pl, ps = nf_path_last(cp, &pl);
        res = nf_strndup(cp, ps > 1 ? ps - 1 : 1);
    } else {
        nf_sb sb = {0};
        nf_sb_printf(&sb, "%s%s%.*s", cp, strcmp(cp, "/") ? "/" : "", (int)len, path + s);
        res = sb.oom ? NULL : sb.s;
        if (!res)
            nf_sb_free(&sb);
    }
    free(cp);
    return res;
}

static int rpath_make(const char *path, rpath *r)
{
    memset(r, 0, sizeof *r);
    size_t len, s = nf_path_last(path, &len);
    if (len == 0 || (len == 1 && path[s] == '.') ||
        (len == 2 && path[s] == '.' && path[s + 1] == '.')) {
        r->loc = canon(path, 0);
    } else {
        char *par = parent_of(path);
        char *cp = par ? canon(par, 0) : NULL;
        free(par);
        if (cp) {
            nf_sb sb = {0};
            nf_sb_printf(&sb, "%s%s%.*s", cp, strcmp(cp, "/") ? "/" : "", (int)len, path + s);
            r->loc = sb.oom ? NULL : sb.s;
            if (!r->loc)
                nf_sb_free(&sb);
            free(cp);
        }
    }
    char buf[PATH_MAX];
    if (realpath(path, buf))
        r->target = nf_strdup(buf);
    struct stat st;
    if (stat(path, &st) == 0) {
        r->has_id = 1;
        r->dev = st.st_dev;
        r->ino = st.st_ino;
    }
    return r->loc ? NF_OK : NF_E_NOMEM;
}

static void rpath_free(rpath *r)
{
    free(r->loc);
    free(r->target);
}

static int str_same(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

/* a strictly below the directory b */
static int str_under(const char *a, const char *b)
{
    if (!a || !b)
        return 0;
    size_t n = strlen(b);
    if (n == 1 && b[0] == '/')
        return a[0] == '/' && a[1] != '\0';
    return strncmp(a, b, n) == 0 && a[n] == '/';
}

static int same(const rpath *a, const rpath *b)
{
    if (a->has_id && b->has_id && a->dev == b->dev && a->ino == b->ino)
        return 1;
    return str_same(a->loc, b->loc) || str_same(a->loc, b->target) ||
           str_same(a->target, b->loc) || str_same(a->target, b->target);
}

static int under(const rpath *a, const rpath *b)
{
    return str_under(a->loc, b->loc) || str_under(a->loc, b->target) ||
           str_under(a->target, b->loc) || str_under(a->target, b->target);
}

/* ---- what may be replaced ---- */

int nf_looks_like_safetensors(int fd)
{
    struct stat st;
    unsigned char h[9];
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 10)
        return 0;
    if (pread(fd, h, sizeof h, 0) != (ssize_t)sizeof h)
        return 0;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | h[i];
    return h[8] == '{' && hlen >= 2 && hlen <= NF_MAX_HEADER_BYTES &&
           hlen <= (uint64_t)st.st_size - 8;
}

static int file_is(const char *path, int (*pred)(int fd))
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int r = pred(fd);
    close(fd);
    return r;
}

/* A report nufilt would write: a regular file, empty or a JSON text, not a model. */
static int looks_like_report(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    if (st.st_size == 0)
        return 1;
    if (nf_looks_like_safetensors(fd))
        return 0;
    char buf[64];
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == ' ' || buf[i] == '\n' || buf[i] == '\r' || buf[i] == '\t')
            continue;
        return buf[i] == '{';
    }
    return 0;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Names of weight files in formats nufilt does not write (it never copies them either). */
static int other_weight_format(const char *name)
{
    static const char *const ext[] = {".bin", ".bin.index.json", ".pt", ".pth", ".ckpt",
                                      ".h5", ".msgpack", ".gguf", ".onnx", ".ot", ".npz", NULL};
    for (int i = 0; ext[i]; i++)
        if (ends_with(name, ext[i]))
            return 1;
    return 0;
}

/* Walks the existing directory output dir (rel: the path below it, NULL at the top) and
 * refuses at the first entry nufilt would not have written. */
static int walk_dir(const char *out, const char *what, const char *dir, const char *rel,
                    const char *base_dir, int depth, nf_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return nf_error_set(err, NF_E_IO, "%s: cannot list %s to check it: %s", out,
                            rel ? rel : "it", strerror(errno));
    int rc = NF_OK;
    struct dirent *e;
    while (rc == NF_OK && (e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        if (!strcmp(nm, ".") || !strcmp(nm, ".."))
            continue;
        char *p = nf_path_join(dir, nm);
        char *r = rel ? nf_path_join(rel, nm) : nf_strdup(nm);
        char *bp = base_dir && r ? nf_path_join(base_dir, r) : NULL;
        if (!p || !r || (base_dir && !bp)) {
            rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
            goto next;
        }
        struct stat st, bs;
        if (lstat(p, &st) != 0)
            goto next; /* gone meanwhile */
        int ok = 0;
        if (!strcmp(nm, ".git") || other_weight_format(nm)) {
            ok = 0;
        } else if (!rel && S_ISREG(st.st_mode) &&
                   (ends_with(nm, ".safetensors") ? file_is(p, nf_looks_like_safetensors)
                                                  : ends_with(nm, ".safetensors.index.json") ||
                                                        !strcmp(nm, "README.md"))) {
            ok = 1;
        } else if (bp && stat(bp, &bs) == 0) {
            if (S_ISDIR(st.st_mode)) {
                if (S_ISDIR(bs.st_mode)) {
                    if (depth >= WALK_MAX_DEPTH) {
                        rc = nf_error_set(err, NF_E_EXISTS,
                                          "%s: %s is nested too deeply to check; refusing to "
                                          "replace it",
                                          out, r);
                        goto next;
                    }
                    rc = walk_dir(out, what, p, r, base_dir, depth + 1, err);
                    ok = 1;
                }
            } else {
                ok = !S_ISDIR(bs.st_mode);
            }
        }
        if (rc == NF_OK && !ok)
            rc = nf_error_set(err, NF_E_EXISTS,
                              "%s: exists and holds \"%s\", which nufilt does not write (%s "
                              "`force` replaces only a directory of safetensors weights, their "
                              "index, README.md and files of the base model directory); "
                              "remove it yourself or choose another path",
                              out, r, what);
    next:
        free(p);
        free(r);
        free(bp);
    }
    closedir(d);
    return rc;
}

int nf_outpath_replaceable(const char *path, const char *what, nf_out_kind kind,
                           const char *base_dir, int force, nf_error *err)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return NF_OK;
        return nf_error_set(err, NF_E_IO, "%s (%s): cannot check it: %s", path, what,
                            strerror(errno));
    }
    struct stat ts;
    int tgt = stat(path, &ts) == 0; /* what a link points to */
    if (kind == NF_OUT_STEPS_DIR) {
        if (tgt && S_ISDIR(ts.st_mode))
            return NF_OK;
        return nf_error_set(err, NF_E_EXISTS, "%s (%s): exists and is not a directory", path,
                            what);
    }
    if (!force) {
        if (kind == NF_OUT_REPORT)
            return nf_error_set(err, NF_E_EXISTS,
                                "%s: the report exists (use `force` to replace it)", path);
        return nf_error_set(err, NF_E_EXISTS, "%s: output exists (use `force` to replace it)",
                            path);
    }
    int is_dir = tgt && S_ISDIR(ts.st_mode);
    if (kind == NF_OUT_DIR ? !is_dir : is_dir)
        return nf_error_set(err, NF_E_EXISTS, "%s: exists and is %s; refusing to replace it",
                            path, is_dir ? "a directory" : "not a directory");
    if (S_ISLNK(st.st_mode))
        return NF_OK; /* the link is replaced, never followed: what it points to stays */
    switch (kind) {
    case NF_OUT_FILE:
        if (S_ISREG(st.st_mode) && file_is(path, nf_looks_like_safetensors))
            return NF_OK;
        return nf_error_set(err, NF_E_EXISTS,
                            "%s: exists and is not a safetensors file; %s `force` replaces only "
                            "nufilt's kind of output",
                            path, what);
    case NF_OUT_REPORT:
        if (S_ISREG(st.st_mode) && file_is(path, looks_like_report))
            return NF_OK;
        return nf_error_set(err, NF_E_EXISTS,
                            "%s: exists and is not a JSON report; `report_path` `force` replaces only "
                            "a report",
                            path);
    case NF_OUT_DIR:
        return walk_dir(path, what, path, NULL, base_dir, 0, err);
    default:
        return NF_OK;
    }
}

/* ---- the whole set ---- */

/* Rules 1 and 2 of nf_outpath_check: no target is an input, lies inside one or holds one;
 * no two targets are the same path or lie one inside the other (a steps directory may hold
 * the others). tg: the targets resolved; in, in_what, in_path: the nin inputs. */
static int check_overlaps(const nf_outpath_args *a, const rpath *tg, const rpath *in,
                          const char **in_what, const char **in_path, size_t nin, nf_error *err)
{
    int rc = NF_OK;
    /* 1: never an input, inside one, or holding one */
    for (size_t t = 0; t < a->ntargets && rc == NF_OK; t++) {
        const nf_out_target *T = &a->targets[t];
        for (size_t i = 0; i < nin && rc == NF_OK; i++) {
            if (same(&tg[t], &in[i]))
                rc = nf_error_set(err, NF_E_ARG,
                                  "%s %s: is %s (%s); nufilt never writes over its inputs",
                                  T->what, T->path, in_what[i], in_path[i]);
            else if (under(&tg[t], &in[i]))
                rc = nf_error_set(err, NF_E_ARG,
                                  "%s %s: lies inside %s (%s); nufilt never writes into its "
                                  "inputs",
                                  T->what, T->path, in_what[i], in_path[i]);
            else if (under(&in[i], &tg[t]) && T->kind != NF_OUT_STEPS_DIR)
                rc = nf_error_set(err, NF_E_ARG,
                                  "%s %s: holds %s (%s); replacing it would delete an input",
                                  T->what, T->path, in_what[i], in_path[i]);
        }
    }
    /* 2: targets apart from each other */
    for (size_t t = 0; t < a->ntargets && rc == NF_OK; t++) {
        for (size_t u = t + 1; u < a->ntargets && rc == NF_OK; u++) {
            const nf_out_target *T = &a->targets[t], *U = &a->targets[u];
            if (same(&tg[t], &tg[u]))
                rc = nf_error_set(err, NF_E_ARG, "%s %s and %s %s are the same path", T->what,
                                  T->path, U->what, U->path);
            else if ((under(&tg[t], &tg[u]) && U->kind != NF_OUT_STEPS_DIR) ||
                     (under(&tg[u], &tg[t]) && T->kind != NF_OUT_STEPS_DIR))
                rc = nf_error_set(err, NF_E_ARG, "%s %s and %s %s overlap (one inside the other)",
                                  T->what, T->path, U->what, U->path);
        }
    }
    return rc;
}

int nf_outpath_check(const nf_outpath_args *a, nf_error *err)
{
    /* inputs: each path, and for a directory the links directly in it (a Hugging Face cache
     * snapshot is a directory of links to its blobs) */
    size_t cap = a->ninputs + 1, nin = 0;
    rpath *in = calloc(cap, sizeof *in);
    const char **in_what = calloc(cap, sizeof *in_what);
    const char **in_path = calloc(cap, sizeof *in_path);
    rpath *tg = calloc(a->ntargets + 1, sizeof *tg);
    char **owned = calloc(cap, sizeof *owned);
    size_t nowned = 0;
    int rc = NF_OK;
    if (!in || !in_what || !in_path || !tg || !owned) {
        rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < a->ninputs && rc == NF_OK; i++) {
        if (!a->inputs[i].path)
            continue;
        if (rpath_make(a->inputs[i].path, &in[nin])) {
            rc = nf_error_set(err, NF_E_ARG, "%s (%s): cannot resolve this path",
                              a->inputs[i].path, a->inputs[i].what);
            break;
        }
        in_what[nin] = a->inputs[i].what;
        in_path[nin++] = a->inputs[i].path;
        if (!nf_is_dir(a->inputs[i].path))
            continue;
        DIR *d = opendir(a->inputs[i].path);
        struct dirent *e;
        while (d && rc == NF_OK && (e = readdir(d)) != NULL) {
            char *p = nf_path_join(a->inputs[i].path, e->d_name);
            struct stat st;
            if (!p || lstat(p, &st) != 0 || !S_ISLNK(st.st_mode)) {
                free(p);
                continue;
            }
            if (nin + 1 >= cap) {
                size_t nc = cap * 2 + 8;
                rpath *ni = realloc(in, nc * sizeof *in);
                if (ni)
                    in = ni;
                const char **nw = ni ? realloc(in_what, nc * sizeof *nw) : NULL;
                if (nw)
                    in_what = nw;
                const char **np = nw ? realloc(in_path, nc * sizeof *np) : NULL;
                if (np)
                    in_path = np;
                char **no = np ? realloc(owned, nc * sizeof *no) : NULL;
                if (no)
                    owned = no;
                if (!no) {
                    free(p);
                    rc = nf_error_set(err, NF_E_NOMEM, "out of memory");
                    break;
                }
                cap = nc;
            }
            if (rpath_make(p, &in[nin])) {
                rc = nf_error_set(err, NF_E_ARG, "%s (%s): cannot resolve this path", p,
                                  a->inputs[i].what);
                free(p);
                break;
            }
            owned[nowned++] = p;
            in_what[nin] = a->inputs[i].what;
            in_path[nin++] = p;
        }
        if (d)
            closedir(d);
    }
    for (size_t t = 0; t < a->ntargets && rc == NF_OK; t++)
        if (rpath_make(a->targets[t].path, &tg[t]))
            rc = nf_error_set(err, NF_E_ARG, "%s %s: cannot resolve this path",
                              a->targets[t].what, a->targets[t].path);
    if (rc == NF_OK)
        rc = check_overlaps(a, tg, in, in_what, in_path, nin, err);
    /* 3: what exists is nufilt's kind of output, and --force was given */
    for (size_t t = 0; t < a->ntargets && rc == NF_OK; t++)
        rc = nf_outpath_replaceable(a->targets[t].path, a->targets[t].what, a->targets[t].kind,
                                    a->base_dir, a->force, err);
done:
    for (size_t i = 0; in && i < nin; i++)
        rpath_free(&in[i]);
    for (size_t t = 0; tg && t < a->ntargets; t++)
        rpath_free(&tg[t]);
    for (size_t i = 0; i < nowned; i++)
        free(owned[i]);
    free(owned);
    free(in);
    free(in_what);
    free(in_path);
    free(tg);
    return rc;
}
