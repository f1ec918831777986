#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

void nf_sb_free(nf_sb *b)
{
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
}

static int sb_reserve(nf_sb *b, size_t extra)
{
    if (b->oom)
        return 0;
    if (b->len + extra + 1 <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return 0;
        }
        cap *= 2;
    }
    char *s = realloc(b->s, cap);
    if (!s) {
        b->oom = 1;
        return 0;
    }
    b->s = s;
    b->cap = cap;
    return 1;
}

void nf_sb_putn(nf_sb *b, const char *s, size_t n)
{
    if (!sb_reserve(b, n))
        return;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void nf_sb_puts(nf_sb *b, const char *s) { nf_sb_putn(b, s, strlen(s)); }

void nf_sb_printf(nf_sb *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !sb_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void nf_sb_json_str(nf_sb *b, const char *s, size_t n)
{
    nf_sb_putn(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': nf_sb_putn(b, "\\\"", 2); break;
        case '\\': nf_sb_putn(b, "\\\\", 2); break;
        case '\n': nf_sb_putn(b, "\\n", 2); break;
        case '\r': nf_sb_putn(b, "\\r", 2); break;
        case '\t': nf_sb_putn(b, "\\t", 2); break;
        default:
            if (c < 0x20)
                nf_sb_printf(b, "\\u%04x", c);
            else
                nf_sb_putn(b, (const char *)&s[i], 1);
        }
    }
    nf_sb_putn(b, "\"", 1);
}

void nf_sb_json_num(nf_sb *b, double v)
{
    if (v != v || v > 1.7976931348623157e308 || v < -1.7976931348623157e308)
        nf_sb_puts(b, "null");
    else
        nf_sb_printf(b, "%.17g", v);
}

double nf_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

char *nf_strndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

char *nf_strdup(const char *s) { return nf_strndup(s, strlen(s)); }

char *nf_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    if (slash)
        p[a++] = '/';
    memcpy(p + a, name, b + 1);
    return p;
}

size_t nf_path_last(const char *path, size_t *len)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t start = n;
    while (start > 0 && path[start - 1] != '/')
        start--;
    *len = n - start;
    return start;
}

char *nf_path_stem(const char *path)
{
    size_t len, start = nf_path_last(path, &len), n = start + len;
    const char *ext = ".safetensors";
    size_t el = strlen(ext);
    if (len > el && memcmp(path + n - el, ext, el) == 0)
        len -= el;
    return nf_strndup(path + start, len);
}

int nf_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int nf_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Empties the directory open as dfd (and closes it), depth levels below at most. Entries are
 * reached through the directory's descriptor and symbolic links are removed, never followed:
 * a link planted where an output goes cannot make this empty another directory. */
static void empty_dir_at(int dfd, int depth)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0 || depth <= 0)
            continue;
        int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0) {
            empty_dir_at(sub, depth - 1);
            unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR);
        }
    }
    closedir(d);
}

void nf_remove_tree_depth(const char *path, int depth)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (!S_ISDIR(st.st_mode)) {
        unlink(path);
        return;
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0)
        empty_dir_at(fd, depth);
    rmdir(path);
}

void nf_remove_tree(const char *path) { nf_remove_tree_depth(path, NF_REMOVE_TREE_DEPTH); }

int nf_mkdirs(const char *path)
{
    if (nf_is_dir(path))
        return 0;
    char *p = nf_strdup(path);
    if (!p)
        return -1;
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    for (char *q = p + 1; *q; q++) {
        if (*q != '/')
            continue;
        *q = '\0';
        if (!nf_is_dir(p) && mkdir(p, 0755) != 0 && errno != EEXIST) {
            free(p);
            return -1;
        }
        *q = '/';
    }
    int rc = (!nf_is_dir(p) && mkdir(p, 0755) != 0 && errno != EEXIST) ? -1 : 0;
    free(p);
    return rc;
}

/* Unicode format characters (general category Cf: bidirectional overrides and isolates,
 * zero-width characters, the byte-order mark, invisible operators, tags) and the line and
 * paragraph separators: invisible, or reordering what a terminal shows around them. */
static int invisible_code_point(uint32_t c)
{
    static const uint32_t ranges[][2] = {
        {0x00AD, 0x00AD},   {0x0600, 0x0605},   {0x061C, 0x061C},   {0x06DD, 0x06DD},
        {0x070F, 0x070F},   {0x0890, 0x0891},   {0x08E2, 0x08E2},   {0x180E, 0x180E},
        {0x200B, 0x200F},   {0x2028, 0x202E},   {0x2060, 0x2064},   {0x2066, 0x206F},
        {0xFEFF, 0xFEFF},   {0xFFF9, 0xFFFB},   {0x110BD, 0x110BD}, {0x110CD, 0x110CD},
        {0x13430, 0x1343F}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0xE0001, 0xE0001},
        {0xE0020, 0xE007F},
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
        if (c >= ranges[i][0] && c <= ranges[i][1])
            return 1;
    return 0;
}

size_t nf_utf8_invisible(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0 || u[0] < 0xC2 || u[0] > 0xF4)
        return 0;
    size_t len = u[0] < 0xE0 ? 2 : u[0] < 0xF0 ? 3 : 4;
    if (len > n)
        return 0;
    uint32_t c = u[0] & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t i = 1; i < len; i++) {
        if ((u[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (u[i] & 0x3F);
    }
    if ((len == 3 && c < 0x800) || (len == 4 && c < 0x10000))
        return 0; /* overlong */
    if (!invisible_code_point(c))
        return 0;
    *cp = c;
    return len;
}

char *nf_path_dir(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    while (n > 0 && path[n - 1] != '/')
        n--;
    if (n == 0)
        return nf_strdup(".");
    while (n > 1 && path[n - 1] == '/')
        n--;
    return nf_strndup(path, n);
}

/* Opens a file for reading without ever blocking: O_NONBLOCK so that a FIFO (or a device)
 * given as a model cannot hang the open, then anything but a regular file is refused. */
int nf_open_regular(const char *path, struct stat *st, int *fdp, nf_error *err)
{
    *fdp = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return nf_error_set(err, NF_E_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, st) != 0) {
        int e = errno;
        close(fd);
        return nf_error_set(err, NF_E_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return nf_error_set(err, NF_E_IO, "%s: not a regular file (%s)", path,
                            S_ISDIR(st->st_mode)    ? "a directory"
                            : S_ISFIFO(st->st_mode) ? "a FIFO"
                            : S_ISSOCK(st->st_mode) ? "a socket"
                            : S_ISCHR(st->st_mode)  ? "a character device"
                            : S_ISBLK(st->st_mode)  ? "a block device"
                                                    : "not a plain file");
    }
    /* a regular file: blocking reads from here on */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fdp = fd;
    return NF_OK;
}

int nf_read_small_file(const char *path, uint64_t max, const char *too_big, char **out,
                       size_t *len, nf_error *err)
{
    struct stat st;
    int fd, rc = nf_open_regular(path, &st, &fd, err);
    if (rc)
        return rc;
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return nf_error_set(err, NF_E_FORMAT, "%s: %s", path, too_big);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return nf_error_set(err, NF_E_NOMEM, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = errno;
            free(buf);
            close(fd);
            return r == 0 ? nf_error_set(err, NF_E_IO, "%s: file shrank while being read", path)
                          : nf_error_set(err, NF_E_IO, "%s: read failed: %s", path, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return NF_OK;
}

int nf_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len) {
        ssize_t r = pwrite(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}
