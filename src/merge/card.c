/* The model card and config.json of a merged directory, and the selection a merged model
 * records (for `nufilt inspect`). */
#include "card.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/util.h"
#include "../io/json.h"
#include "../io/model.h"

const char *nf_torch_dtype_name(nf_dtype dt)
{
    switch (dt) {
    case NF_F32: return "float32";
    case NF_F16: return "float16";
    case NF_BF16: return "bfloat16";
    case NF_F64: return "float64";
    default: return NULL;
    }
}

/* ---- the card ---- */

/* Text from a file or the user, in Markdown prose or a table cell: punctuation that Markdown
 * or HTML would interpret is escaped, control characters (C0, DEL, C1) become U+FFFD. */
static void md_text(nf_sb *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = u[i];
        if (c < 0x20 || c == 0x7F || (c == 0xC2 && i + 1 < n && u[i + 1] >= 0x80 &&
                                      u[i + 1] <= 0x9F)) {
            nf_sb_puts(b, "\xEF\xBF\xBD");
            if (c == 0xC2)
                i++;
        } else if (c == '<') {
            nf_sb_puts(b, "&lt;");
        } else if (c == '>') {
            nf_sb_puts(b, "&gt;");
        } else if (c == '&') {
            nf_sb_puts(b, "&amp;");
        } else if (strchr("\\`*_[]|#!{}()+", c)) {
            char e[3] = {'\\', (char)c, 0};
            nf_sb_puts(b, e);
        } else {
            nf_sb_putn(b, (const char *)&u[i], 1);
        }
    }
}

/* A YAML double-quoted scalar: JSON's string syntax (a subset of YAML's), with the bytes YAML
 * does not allow raw (DEL, C1) replaced. */
static void yaml_str(nf_sb *b, const char *s)
{
    nf_sb clean = {0};
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        if (u[i] == 0x7F || (u[i] == 0xC2 && i + 1 < n && u[i + 1] >= 0x80 && u[i + 1] <= 0x9F)) {
            nf_sb_puts(&clean, "?");
            if (u[i] == 0xC2)
                i++;
        } else {
            nf_sb_putn(&clean, (const char *)&u[i], 1);
        }
    }
    if (clean.oom) {
        b->oom = 1;
    } else {
        nf_sb_json_str(b, clean.s ? clean.s : "", clean.len);
    }
    nf_sb_free(&clean);
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

int nf_card_library_name(const char *card, size_t len, char *out, size_t n)
{
    if (!card || len < 4 || strncmp(card, "---", 3) != 0 || (card[3] != '\n' && card[3] != '\r'))
        return 0;
    const char *p = card + 3, *end = card + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *line = p;
        p = nl ? nl + 1 : end;
        if (le - line >= 3 && strncmp(line, "---", 3) == 0)
            return 0; /* end of the front matter */
        if (le - line > 13 && strncmp(line, "library_name:", 13) == 0) {
            const char *v = line + 13;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = le;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\r' || ve[-1] == '\t'))
                ve--;
            if (ve - v >= 2 && (*v == '"' || *v == '\'') && ve[-1] == *v) {
                v++;
                ve--;
            }
            size_t k = (size_t)(ve - v);
            if (k == 0 || k >= n || k > 64)
                return 0;
            for (size_t i = 0; i < k; i++)
                if (!name_char(v[i]))
                    return 0;
            memcpy(out, v, k);
            out[k] = '\0';
            return 1;
        }
    }
    return 0;
}

static void json_value_text(nf_sb *b, const nf_json *v)
{
    switch (v->type) {
    case NF_JSON_STRING: md_text(b, v->str, v->len); break;
    case NF_JSON_BOOL: nf_sb_puts(b, v->boolean ? "true" : "false"); break;
    case NF_JSON_NUMBER:
        if (v->is_int)
            nf_sb_printf(b, "%lld", (long long)v->ival);
        else {
            /* the shortest form that reads back to the same double (0.4, not 0.4000...02) */
            char t[40];
            for (int prec = 6; prec <= 17; prec++) {
                snprintf(t, sizeof t, "%.*g", prec, v->num);
                if (strtod(t, NULL) == v->num)
                    break;
            }
            nf_sb_puts(b, t);
        }
        break;
    default: nf_sb_puts(b, "-"); break;
    }
}

char *nf_card_text(const nf_card_in *in)
{
    nf_sb b = {0};
    char lib[80];
    nf_sb_puts(&b, "---\nbase_model: ");
    yaml_str(&b, in->base_model);
    nf_sb_puts(&b, "\n");
    if (nf_card_library_name(in->base_card, in->base_card_len, lib, sizeof lib))
        nf_sb_printf(&b, "library_name: %s\n", lib);
    nf_sb_puts(&b, "tags:\n- merge\n- nufilt\n");
    if (strcmp(in->method, "nufilt") != 0)
        nf_sb_printf(&b, "- %s\n", in->method);
    nf_sb_puts(&b, "---\n\n");

    const nf_method_info *mi = nf_method_get(nf_method_from_name(in->method));
    nf_sb_printf(&b, "# Merged model\n\nThis model merges %d fine-tuned model%s of the base "
                     "model ",
                 in->step, in->step == 1 ? "" : "s");
    md_text(&b, in->base_model, strlen(in->base_model)); /* escaped: no code span */
    nf_sb_printf(&b, " (fingerprint %s), one task at a time and without data, using "
                     "nufilt %s. Its weights record the "
                     "same in their metadata (`nufilt inspect`), from which the next step of "
                     "the stream continues.\n\n",
                 in->base_fp, NF_VERSION_STRING);
    nf_sb_printf(&b, "## Method\n\n`%s`", in->method);
    if (mi)
        nf_sb_printf(&b, ": %s. From: %s.", mi->summary, mi->paper);
    nf_sb_puts(&b, "\n\n| hyper-parameter | value |\n| --- | --- |\n");
    nf_json *pj = in->params_json ? nf_json_parse(in->params_json, strlen(in->params_json), NULL, 0)
                                  : NULL;
    for (size_t i = 0; pj && pj->type == NF_JSON_OBJECT && i < pj->n; i++) {
        nf_sb_puts(&b, "| ");
        md_text(&b, pj->items[i].key, pj->items[i].keylen);
        nf_sb_puts(&b, " | ");
        json_value_text(&b, &pj->items[i]);
        nf_sb_puts(&b, " |\n");
    }
    nf_json_free(pj);

    nf_sb_puts(&b, "\n## Tasks, in merge order\n\n| step | task | fingerprint |\n"
                   "| --- | --- | --- |\n");
    nf_json *tj = in->tasks_json ? nf_json_parse(in->tasks_json, strlen(in->tasks_json), NULL, 0)
                                 : NULL;
    for (size_t i = 0; tj && tj->type == NF_JSON_ARRAY && i < tj->n; i++) {
        const nf_json *nm = nf_json_get(&tj->items[i], "name");
        const nf_json *fp = nf_json_get(&tj->items[i], "fingerprint");
        nf_sb_printf(&b, "| %zu | ", i + 1);
        if (nm && nm->type == NF_JSON_STRING)
            md_text(&b, nm->str, nm->len);
        nf_sb_puts(&b, " | ");
        if (fp && fp->type == NF_JSON_STRING)
            md_text(&b, fp->str, fp->len);
        else
            nf_sb_puts(&b, "(not recorded)");
        nf_sb_puts(&b, " |\n");
    }
    nf_json_free(tj);
    nf_sb_puts(&b, "\nA fingerprint is nufilt's hash of a checkpoint's tensor names, dtypes, "
                   "shapes and the first and last bytes of every tensor.\n\n## Reproduce\n\n");
    if (in->command_line) {
        nf_sb_puts(&b, "This output was written by:\n\n```sh\n");
        for (const unsigned char *c = (const unsigned char *)in->command_line; *c; c++)
            nf_sb_putn(&b, *c < 0x20 || *c == 0x7F ? "?" : (const char *)c, 1);
        nf_sb_puts(&b, "\n```\n");
    } else {
        nf_sb_puts(&b, "This output was written through the nufilt library (nf_step / "
                       "nf_merge) with the recipe above.\n");
    }
    if (b.oom) {
        nf_sb_free(&b);
        return NULL;
    }
    return b.s;
}

/* ---- config.json ---- */

/* Skips JSON whitespace from i; returns the new index. */
static size_t ws(const char *t, size_t i, size_t n)
{
    while (i < n && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r'))
        i++;
    return i;
}

/* The end of the value starting at i of a text the strict reader accepted. */
static size_t value_end(const char *t, size_t i, size_t n)
{
    int depth = 0, in_str = 0;
    for (; i < n; i++) {
        char c = t[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"') {
                in_str = 0;
                if (depth == 0)
                    return i + 1;
            }
            continue;
        }
        if (c == '"')
            in_str = 1;
        else if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (depth == 0)
                return i;
            if (--depth == 0)
                return i + 1;
        } else if (depth == 0 && (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t'))
            return i;
    }
    return n;
}

int nf_config_set_dtype(const char *text, size_t len, const char *dtype_name, char **out,
                        size_t *outlen)
{
    nf_json *root = nf_json_parse(text, len, NULL, 0);
    int is_obj = root && root->type == NF_JSON_OBJECT;
    nf_json_free(root);
    if (!is_obj)
        return NF_E_FORMAT;
    /* top-level members: key span and value span, in order */
    size_t i = ws(text, 0, len) + 1; /* past '{' */
    size_t vspan[2][2] = {{0, 0}, {0, 0}};
    int found[2] = {0, 0};
    static const char *const keys[2] = {"torch_dtype", "dtype"};
    for (;;) {
        i = ws(text, i, len);
        if (i >= len || text[i] == '}')
            break;
        if (text[i] == ',') {
            i++;
            continue;
        }
        size_t ks = i, ke = value_end(text, i, len); /* the key string, quotes included */
        i = ws(text, ke, len) + 1;                   /* past ':' */
        size_t vs = ws(text, i, len), ve = value_end(text, vs, len);
        for (int k = 0; k < 2; k++)
            if (ke - ks == strlen(keys[k]) + 2 && memcmp(text + ks + 1, keys[k], ke - ks - 2) == 0) {
                found[k] = 1;
                vspan[k][0] = vs;
                vspan[k][1] = ve;
            }
        i = ve;
    }
    nf_sb b = {0};
    if (!found[0] && !found[1]) {
        size_t open = ws(text, 0, len) + 1;
        size_t first = ws(text, open, len);
        nf_sb_putn(&b, text, open);
        nf_sb_printf(&b, "\n  \"torch_dtype\": \"%s\"%s", dtype_name,
                     text[first] == '}' ? "\n" : ",");
        nf_sb_putn(&b, text + open, len - open);
    } else {
        /* the spans found, in text order */
        size_t sp[2][2], ns = 0;
        for (int k = 0; k < 2; k++)
            if (found[k]) {
                sp[ns][0] = vspan[k][0];
                sp[ns][1] = vspan[k][1];
                ns++;
            }
        if (ns == 2 && sp[1][0] < sp[0][0]) {
            size_t t0 = sp[0][0], t1 = sp[0][1];
            sp[0][0] = sp[1][0];
            sp[0][1] = sp[1][1];
            sp[1][0] = t0;
            sp[1][1] = t1;
        }
        size_t pos = 0;
        for (size_t k = 0; k < ns; k++) {
            nf_sb_putn(&b, text + pos, sp[k][0] - pos);
            nf_sb_printf(&b, "\"%s\"", dtype_name);
            pos = sp[k][1];
        }
        nf_sb_putn(&b, text + pos, len - pos);
    }
    if (b.oom) {
        nf_sb_free(&b);
        return NF_E_NOMEM;
    }
    /* what was written must read back as one object whose keys (as a JSON reader decodes
     * them: a key spelled with \u escapes escapes the textual scan) all say the new dtype */
    nf_json *check = nf_json_parse(b.s, b.len, NULL, 0);
    int ok = 0;
    if (check && check->type == NF_JSON_OBJECT) {
        ok = 1;
        for (int k = 0; k < 2; k++) {
            const nf_json *v = nf_json_get(check, keys[k]);
            int want = found[k] || (k == 0 && !found[1]);
            if ((want && !v) ||
                (v && (v->type != NF_JSON_STRING || strcmp(v->str, dtype_name) != 0)))
                ok = 0;
        }
    }
    nf_json_free(check);
    if (!ok) {
        nf_sb_free(&b);
        return NF_E_FORMAT;
    }
    *out = b.s;
    *outlen = b.len;
    return NF_OK;
}

/* ---- the selection a merged model records ---- */

int nf_model_recorded_selection(const nf_model *m, char *kind, size_t kind_len, char *value,
                                size_t value_len)
{
    const char *pj = nf_model_metadata_get(m, "nufilt.params");
    if (!pj || !kind || !value || kind_len < 8 || value_len < 2)
        return 0;
    nf_json *j = nf_json_parse(pj, strlen(pj), NULL, 0);
    int found = 0;
    if (j && j->type == NF_JSON_OBJECT) {
        const nf_json *ly = nf_json_get(j, "layers"), *ps = nf_json_get(j, "preset");
        const nf_json *v = ly ? ly : ps;
        if (v && v->type == NF_JSON_STRING && !v->has_nul && v->len < value_len) {
            snprintf(kind, kind_len, "%s", ly ? "layers" : "preset");
            memcpy(value, v->str, v->len + 1);
            found = 1;
        }
    }
    nf_json_free(j);
    return found;
}
