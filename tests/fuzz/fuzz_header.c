/* libFuzzer target: a whole safetensors file image through the header parser and validator,
 * in memory. Every input must be accepted or refused with a message; never a crash, an
 * out-of-bounds read (ASan) or undefined behaviour (UBSan). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8)
        return 0; /* refused before parsing by the file opener */
    nf_model *m = calloc(1, sizeof *m);
    nf_shard *sh = calloc(1, sizeof *sh);
    unsigned char *copy = malloc(size); /* exact-size buffer: ASan sees any over-read */
    if (!m || !sh || !copy) {
        free(m);
        free(sh);
        free(copy);
        return 0;
    }
    memcpy(copy, data, size);
    sh->path = strdup("fuzz.safetensors");
    sh->map = copy;
    sh->size = size;
    m->shards = sh;
    m->nshards = 1;
    nf_error err = {0};
    int rc = nf_st_parse(m, 0, &err);
    if (rc == NF_OK) {
        /* touch every tensor's first and last byte: they must lie inside the image */
        volatile unsigned char sink = 0;
        for (size_t i = 0; i < m->ntensors; i++)
            if (m->tensors[i].nbytes)
                sink ^= m->tensors[i].data[0] ^ m->tensors[i].data[m->tensors[i].nbytes - 1];
        (void)sink;
    } else if (err.msg[0] == '\0') {
        abort(); /* a refusal must say why */
    }
    sh->map = NULL; /* not a mapping: freed here, not munmapped */
    free(copy);
    nf_model_close(m);
    return 0;
}
