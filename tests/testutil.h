/* Helpers shared by the Check suites: deterministic random numbers, scratch directories,
 * and a minimal safetensors writer (independent of the library's writer). */
#ifndef NF_TESTUTIL_H
#define NF_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static inline uint64_t tu_next(uint64_t *s)
{
    /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static inline double tu_uniform(uint64_t *s) { return (double)(tu_next(s) >> 11) * 0x1p-53; }

static inline double tu_normal(uint64_t *s)
{
    double u1 = tu_uniform(s) + 0x1p-60, u2 = tu_uniform(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static inline void tu_fill(float *x, size_t n, uint64_t seed, double scale)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * tu_normal(&s));
}

/* A fresh scratch directory under $TMPDIR (removed by the caller with tu_rmdir). */
static inline char *tu_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *p = malloc(512);
    snprintf(p, 512, "%s/nufilt-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(p)) {
        free(p);
        return NULL;
    }
    return p;
}

static inline void tu_rmdir(char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    free(dir);
}

static inline int tu_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    fclose(f);
    return w == len ? 0 : -1;
}

/* Writes a safetensors file from a header JSON text and a data blob (no validation: tests use
 * it to build malformed files too). */
static inline int tu_write_st(const char *path, const char *header, const void *data,
                              size_t dlen)
{
    size_t hl = strlen(header);
    size_t total = 8 + hl + dlen;
    unsigned char *buf = malloc(total ? total : 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (dlen)
        memcpy(buf + 8 + hl, data, dlen);
    int rc = tu_write_file(path, buf, total);
    free(buf);
    return rc;
}

static inline char *tu_path(const char *dir, const char *name)
{
    ck_assert_ptr_nonnull(dir);
    if (!dir)
        return NULL;
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Runs a suite and returns the process status meson expects (0 = all passed). */
static inline int tu_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

#endif
