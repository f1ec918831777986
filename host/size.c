/* Sizes on the command line: "2GB", "500MB", "1.5GiB" or "1000000" (bytes), read and written. */
#include "size.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0)
        return -1;
    while (*end == ' ')
        end++;
    double mul = 1;
    if (*end) {
        char u[8] = {0};
        size_t n = strlen(end);
        if (n >= sizeof u)
            return -1;
        for (size_t i = 0; i < n; i++)
            u[i] = (char)(end[i] >= 'a' && end[i] <= 'z' ? end[i] - 32 : end[i]);
        if (!strcmp(u, "B")) mul = 1;
        else if (!strcmp(u, "K") || !strcmp(u, "KB")) mul = 1e3;
        else if (!strcmp(u, "M") || !strcmp(u, "MB")) mul = 1e6;
        else if (!strcmp(u, "G") || !strcmp(u, "GB")) mul = 1e9;
        else if (!strcmp(u, "T") || !strcmp(u, "TB")) mul = 1e12;
        else if (!strcmp(u, "KIB")) mul = 1024.0;
        else if (!strcmp(u, "MIB")) mul = 1024.0 * 1024;
        else if (!strcmp(u, "GIB")) mul = 1024.0 * 1024 * 1024;
        else if (!strcmp(u, "TIB")) mul = 1024.0 * 1024 * 1024 * 1024;
        else return -1;
    }
    double b = v * mul;
    if (b >= 1.8e19)
        return -1;
    *out = (uint64_t)b;
    return 0;
}

void cli_format_size(double b, char *buf, size_t n)
{
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000 && i < 4) {
        b /= 1000;
        i++;
    }
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}
