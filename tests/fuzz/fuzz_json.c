/* libFuzzer target: the JSON reader alone (headers and index files both go through it). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    char err[256];
    err[0] = '\0';
    nf_json *v = nf_json_parse(copy, size, err, sizeof err);
    if (!v && err[0] == '\0')
        abort();
    nf_json_free(v);
    free(copy);
    return 0;
}
