/* Small shared helpers: a growable string, checked arithmetic, time. Internal. */
#ifndef NF_UTIL_H
#define NF_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Growable NUL-terminated string. On allocation failure it sets oom and stops growing. */
typedef struct nf_sb {
    char *s;
    size_t len, cap;
    int oom;
} nf_sb;

void nf_sb_free(nf_sb *b);
void nf_sb_putn(nf_sb *b, const char *s, size_t n);
void nf_sb_puts(nf_sb *b, const char *s);
void nf_sb_printf(nf_sb *b, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Appends s (n bytes) as a JSON string literal, quotes included. */
void nf_sb_json_str(nf_sb *b, const char *s, size_t n);
/* Appends a double so that it reads back bit for bit ("%.17g"; non-finite as null). */
void nf_sb_json_num(nf_sb *b, double v);

/* Checked arithmetic: return 0 on overflow. */
static inline int nf_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline int nf_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

double nf_now(void); /* monotonic seconds */

/* If the n bytes at s start with the UTF-8 form of an invisible or reordering character (a
 * Unicode format character such as U+202E RIGHT-TO-LEFT OVERRIDE, or U+2028/U+2029): its
 * length in bytes, and the code point in *cp; else 0. Messages and `nufilt inspect` write
 * such characters as \uXXXX so that a name cannot disguise itself or what follows it. */
size_t nf_utf8_invisible(const char *s, size_t n, uint32_t *cp);

char *nf_strdup(const char *s);
char *nf_strndup(const char *s, size_t n);
char *nf_path_join(const char *dir, const char *name);
/* The last component of a path, trailing slashes ignored: its offset, and its length in *len */
size_t nf_path_last(const char *path, size_t *len);
/* The directory part of a path (malloc'd): "." when it has none, "/" for the root. */
char *nf_path_dir(const char *path);
/* Last path component without a trailing ".safetensors" (for task names). */
char *nf_path_stem(const char *path);
int nf_is_dir(const char *path);
/* Opens path for reading if it is a regular file (a FIFO or device is refused without
 * blocking: "PATH: not a regular file (a FIFO)"), its status in *st. */
struct stat;
int nf_open_regular(const char *path, struct stat *st, int *fd, nf_error *err);
/* Writes len bytes at offset off, resuming after interruptions and short writes; 0, or -1
 * with errno set (EIO when the file takes no more bytes). */
int nf_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
/* Reads a whole regular file of at most max bytes (NUL-terminated; a FIFO or device is
 * refused without blocking); a larger one is refused as "PATH: too_big". */
int nf_read_small_file(const char *path, uint64_t max, const char *too_big, char **out,
                       size_t *len, nf_error *err);
int nf_exists(const char *path);
/* mkdir -p: creates a directory and its missing parents; 0 on success (errno otherwise). */
int nf_mkdirs(const char *path);
/* Removes a file, or a directory and what it holds, NF_REMOVE_TREE_DEPTH levels deep (our own
 * outputs and scratch directories only); symbolic links are removed, not followed. The depth
 * covers a merge's scratch directory, the step outputs in it and the base's subfolders copied
 * into them (io/tree.h: NF_TREE_MAX_DEPTH). */
#define NF_REMOVE_TREE_DEPTH 9
void nf_remove_tree(const char *path);
/* The same, depth levels below path at most. */
void nf_remove_tree_depth(const char *path, int depth);

#endif
