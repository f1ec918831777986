/* Sizes on the command line. */
#ifndef NFH_SIZE_H
#define NFH_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Parses sizes like "2GB", "500MB", "1.5GiB" or "1000000" (bytes; SI and binary units):
 * 0, or -1 for a malformed or negative size. */
int cli_parse_size(const char *s, uint64_t *out);
/* b bytes for people: "512 B", "1.5 MB" (SI units, one decimal past bytes). */
void cli_format_size(double b, char *buf, size_t n);

#endif
