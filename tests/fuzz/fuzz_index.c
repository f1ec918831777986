/* libFuzzer target: model.safetensors.index.json texts through the index reader. Shard names
 * that would leave the model directory must never be accepted. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"
#include "io/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    nf_json *root = NULL;
    const char **files = NULL;
    size_t n = 0;
    nf_error err = {0};
    int rc = nf_index_parse(copy, size, "fuzz/model.safetensors.index.json", &root, &files, &n,
                            &err);
    if (rc == NF_OK) {
        for (size_t i = 0; i < n; i++)
            if (strchr(files[i], '/') || strcmp(files[i], "..") == 0 || files[i][0] == '\0')
                abort(); /* a path outside the directory got through */
    } else if (err.msg[0] == '\0') {
        abort();
    }
    free(files);
    nf_json_free(root);
    free(copy);
    return 0;
}
