#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const unsigned char *p, *end, *start;
    size_t nodes;
    char *err;
    size_t errlen;
    int failed;
} parser;

static void fail(parser *ps, const char *what)
{
    if (ps->failed)
        return;
    ps->failed = 1;
    snprintf(ps->err, ps->errlen, "%s at byte %zu", what, (size_t)(ps->p - ps->start));
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static void free_node(nf_json *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++)
        free_node(&v->items[i]);
    free(v->items);
    free(v->str);
    free(v->key);
}

void nf_json_free(nf_json *v)
{
    if (!v)
        return;
    free_node(v);
    free(v);
}

/* Length of a valid UTF-8 sequence starting at p (1..4), or 0. */
static int utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    int n;
    unsigned min;
    if ((c & 0xE0) == 0xC0) { n = 2; min = 0x80; c &= 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 3; min = 0x800; c &= 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 4; min = 0x10000; c &= 0x07; }
    else return 0;
    if (end - p < n)
        return 0;
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    return n;
}

static int hex4(parser *ps, unsigned *out)
{
    if (ps->end - ps->p < 4) {
        fail(ps, "truncated \\u escape");
        return 0;
    }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = ps->p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else {
            fail(ps, "bad \\u escape");
            return 0;
        }
        v = v * 16 + d;
    }
    ps->p += 4;
    *out = v;
    return 1;
}

static void put_utf8(char *d, size_t *o, unsigned c)
{
    if (c < 0x80) d[(*o)++] = (char)c;
    else if (c < 0x800) {
        d[(*o)++] = (char)(0xC0 | (c >> 6));
        d[(*o)++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        d[(*o)++] = (char)(0xE0 | (c >> 12));
        d[(*o)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        d[(*o)++] = (char)(0x80 | (c & 0x3F));
    } else {
        d[(*o)++] = (char)(0xF0 | (c >> 18));
        d[(*o)++] = (char)(0x80 | ((c >> 12) & 0x3F));
        d[(*o)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        d[(*o)++] = (char)(0x80 | (c & 0x3F));
    }
}

/* Parses a string at ps->p (opening quote). The decoded form is never longer than the raw. */
static int parse_string(parser *ps, char **out, size_t *outlen, int *has_nul)
{
    ps->p++; /* opening quote */
    const unsigned char *s = ps->p;
    /* find the closing quote to size the buffer */
    const unsigned char *q = s;
    while (q < ps->end && *q != '"') {
        if (*q == '\\')
            q++;
        q++;
    }
    if (q >= ps->end) {
        fail(ps, "unterminated string");
        return 0;
    }
    char *d = malloc((size_t)(q - s) + 1);
    if (!d) {
        fail(ps, "out of memory");
        return 0;
    }
    size_t o = 0;
    *has_nul = 0;
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned c = *ps->p;
        if (c < 0x20) {
            fail(ps, "control character in string");
            goto bad;
        }
        if (c == '\\') {
            ps->p++;
            if (ps->p >= ps->end) {
                fail(ps, "truncated escape");
                goto bad;
            }
            unsigned e = *ps->p++;
            switch (e) {
            case '"': d[o++] = '"'; break;
            case '\\': d[o++] = '\\'; break;
            case '/': d[o++] = '/'; break;
            case 'b': d[o++] = '\b'; break;
            case 'f': d[o++] = '\f'; break;
            case 'n': d[o++] = '\n'; break;
            case 'r': d[o++] = '\r'; break;
            case 't': d[o++] = '\t'; break;
            case 'u': {
                unsigned u;
                if (!hex4(ps, &u))
                    goto bad;
                if (u >= 0xDC00 && u <= 0xDFFF) {
                    fail(ps, "lone low surrogate in string");
                    goto bad;
                }
                if (u >= 0xD800 && u <= 0xDBFF) {
                    unsigned lo;
                    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                        fail(ps, "lone high surrogate in string");
                        goto bad;
                    }
                    ps->p += 2;
                    if (!hex4(ps, &lo))
                        goto bad;
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        fail(ps, "bad surrogate pair in string");
                        goto bad;
                    }
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                }
                if (u == 0)
                    *has_nul = 1;
                put_utf8(d, &o, u);
                break;
            }
            default:
                fail(ps, "bad escape in string");
                goto bad;
            }
        } else {
            int n = utf8_len(ps->p, ps->end);
            if (!n) {
                fail(ps, "invalid UTF-8 in string");
                goto bad;
            }
            memcpy(d + o, ps->p, (size_t)n);
            o += (size_t)n;
            ps->p += n;
        }
    }
    ps->p++; /* closing quote */
    d[o] = '\0';
    *out = d;
    *outlen = o;
    return 1;
bad:
    free(d);
    return 0;
}

static int parse_number(parser *ps, nf_json *v)
{
    const unsigned char *s = ps->p;
    int neg = 0, frac = 0;
    if (ps->p < ps->end && *ps->p == '-') {
        neg = 1;
        ps->p++;
    }
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') {
        fail(ps, "bad number");
        return 0;
    }
    if (*ps->p == '0') {
        ps->p++;
        if (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
            fail(ps, "leading zero in number");
            return 0;
        }
    } else {
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && *ps->p == '.') {
        frac = 1;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') {
            fail(ps, "bad fraction in number");
            return 0;
        }
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        frac = 1;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') {
            fail(ps, "bad exponent in number");
            return 0;
        }
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    size_t n = (size_t)(ps->p - s);
    char buf[64];
    if (n >= sizeof buf) {
        /* absurdly long literal: parse the prefix for the double value only */
        memcpy(buf, s, sizeof buf - 1);
        buf[sizeof buf - 1] = '\0';
    } else {
        memcpy(buf, s, n);
        buf[n] = '\0';
    }
    v->type = NF_JSON_NUMBER;
    v->num = strtod(buf, NULL);
    v->is_int = 0;
    if (!frac) {
        /* exact integer parse with overflow detection */
        const unsigned char *d = s + neg;
        uint64_t acc = 0;
        int ok = 1;
        while (d < ps->p) {
            unsigned dig = (unsigned)(*d++ - '0');
            if (acc > (UINT64_MAX - dig) / 10) {
                ok = 0;
                break;
            }
            acc = acc * 10 + dig;
        }
        if (ok && !neg && acc <= (uint64_t)INT64_MAX) {
            v->is_int = 1;
            v->ival = (int64_t)acc;
        } else if (ok && neg && acc <= (uint64_t)INT64_MAX + 1) {
            v->is_int = 1;
            v->ival = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
        }
    }
    return 1;
}

static int parse_value(parser *ps, nf_json *v, int depth);

static int key_cmp(const void *a, const void *b)
{
    const nf_json *x = *(const nf_json *const *)a, *y = *(const nf_json *const *)b;
    size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return x->keylen < y->keylen ? -1 : x->keylen > y->keylen;
}

static int parse_container(parser *ps, nf_json *v, int depth, int object)
{
    v->type = object ? NF_JSON_OBJECT : NF_JSON_ARRAY;
    ps->p++; /* [ or { */
    size_t cap = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) {
        ps->p++;
        return 1;
    }
    for (;;) {
        if (v->n == cap) {
            size_t nc = cap ? cap * 2 : 4;
            nf_json *ni = realloc(v->items, nc * sizeof *ni);
            if (!ni) {
                fail(ps, "out of memory");
                return 0;
            }
            v->items = ni;
            cap = nc;
        }
        nf_json *item = &v->items[v->n];
        memset(item, 0, sizeof *item);
        v->n++;
        skip_ws(ps);
        if (object) {
            if (ps->p >= ps->end || *ps->p != '"') {
                fail(ps, "expected a member name");
                return 0;
            }
            int nul;
            if (!parse_string(ps, &item->key, &item->keylen, &nul))
                return 0;
            if (nul) {
                fail(ps, "member name contains U+0000");
                return 0;
            }
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                fail(ps, "expected ':'");
                return 0;
            }
            ps->p++;
        }
        if (!parse_value(ps, item, depth + 1))
            return 0;
        skip_ws(ps);
        if (ps->p >= ps->end) {
            fail(ps, object ? "unterminated object" : "unterminated array");
            return 0;
        }
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == (object ? '}' : ']')) {
            ps->p++;
            break;
        }
        fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
        return 0;
    }
    if (v->n < cap) {
        /* to fit: small containers (a tensor entry, its offsets) are most of a header */
        nf_json *ni = realloc(v->items, v->n * sizeof *ni);
        if (ni)
            v->items = ni;
    }
    if (object && v->n > 1) {
        nf_json **sorted = malloc(v->n * sizeof *sorted);
        if (!sorted) {
            fail(ps, "out of memory");
            return 0;
        }
        for (size_t i = 0; i < v->n; i++)
            sorted[i] = &v->items[i];
        qsort(sorted, v->n, sizeof *sorted, key_cmp);
        for (size_t i = 1; i < v->n; i++) {
            if (key_cmp(&sorted[i - 1], &sorted[i]) == 0) {
                char msg[200];
                snprintf(msg, sizeof msg, "duplicate member name \"%.120s\"", sorted[i]->key);
                free(sorted);
                fail(ps, msg);
                return 0;
            }
        }
        free(sorted);
    }
    return 1;
}

static int parse_value(parser *ps, nf_json *v, int depth)
{
    if (depth > NF_JSON_MAX_DEPTH) {
        fail(ps, "nesting too deep");
        return 0;
    }
    if (++ps->nodes > NF_JSON_MAX_NODES) {
        fail(ps, "too many values");
        return 0;
    }
    skip_ws(ps);
    if (ps->p >= ps->end) {
        fail(ps, "unexpected end of text");
        return 0;
    }
    switch (*ps->p) {
    case '{': return parse_container(ps, v, depth, 1);
    case '[': return parse_container(ps, v, depth, 0);
    case '"':
    {
        int nul = 0;
        v->type = NF_JSON_STRING;
        int ok = parse_string(ps, &v->str, &v->len, &nul);
        v->has_nul = (unsigned char)nul;
        return ok;
    }
    case 't':
        if (ps->end - ps->p >= 4 && memcmp(ps->p, "true", 4) == 0) {
            ps->p += 4;
            v->type = NF_JSON_BOOL;
            v->boolean = 1;
            return 1;
        }
        break;
    case 'f':
        if (ps->end - ps->p >= 5 && memcmp(ps->p, "false", 5) == 0) {
            ps->p += 5;
            v->type = NF_JSON_BOOL;
            return 1;
        }
        break;
    case 'n':
        if (ps->end - ps->p >= 4 && memcmp(ps->p, "null", 4) == 0) {
            ps->p += 4;
            v->type = NF_JSON_NULL;
            return 1;
        }
        break;
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps, v);
    }
    fail(ps, "unexpected character");
    return 0;
}

nf_json *nf_json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    char dummy[8];
    parser ps = {(const unsigned char *)text, (const unsigned char *)text + len,
                 (const unsigned char *)text, 0, err ? err : dummy,
                 err ? errlen : sizeof dummy, 0};
    nf_json *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(ps.err, ps.errlen, "out of memory");
        return NULL;
    }
    if (parse_value(&ps, v, 0)) {
        skip_ws(&ps);
        if (ps.p != ps.end)
            fail(&ps, "trailing characters after the JSON value");
    }
    if (ps.failed) {
        nf_json_free(v);
        return NULL;
    }
    return v;
}

const nf_json *nf_json_get(const nf_json *obj, const char *key)
{
    if (!obj || obj->type != NF_JSON_OBJECT)
        return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->n; i++)
        if (obj->items[i].keylen == kl && memcmp(obj->items[i].key, key, kl) == 0)
            return &obj->items[i];
    return NULL;
}
