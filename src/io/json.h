/* A strict JSON reader for checkpoint headers and index files (RFC 8259; UTF-8 validated,
 * duplicate object keys refused, nesting and node count bounded). Internal. */
#ifndef NF_JSON_H
#define NF_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum nf_json_type {
    NF_JSON_NULL, NF_JSON_BOOL, NF_JSON_NUMBER, NF_JSON_STRING, NF_JSON_ARRAY, NF_JSON_OBJECT
} nf_json_type;

typedef struct nf_json nf_json;
struct nf_json {
    nf_json_type type;
    unsigned char boolean;
    unsigned char is_int;  /* number written as an integer that fits int64 */
    unsigned char has_nul; /* the string contains an escaped U+0000 */
    int64_t ival;
    double num;
    char *str;             /* strings: decoded UTF-8, NUL-terminated */
    size_t len;
    char *key;             /* member name when this node is an object member */
    size_t keylen;
    nf_json *items;        /* array elements or object members (allocated to fit) */
    size_t n;
};

#define NF_JSON_MAX_DEPTH 64
/* Every value counts, members and array elements included. A node is 72 bytes, so a text at
 * the cap holds about 300 MB of nodes (plus its strings): the bound on what a hostile header
 * can make the reader allocate. Real headers are far below it (a 100k-tensor file: 700k). */
#define NF_JSON_MAX_NODES 4000000u

/* Parses exactly one value (surrounding whitespace allowed). On failure returns NULL and
 * writes a message with the byte offset into err. */
nf_json *nf_json_parse(const char *text, size_t len, char *err, size_t errlen);
void nf_json_free(nf_json *v);
const nf_json *nf_json_get(const nf_json *obj, const char *key);

#endif
