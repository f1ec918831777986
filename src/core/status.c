/* Status names and messages, and the error record every fallible call fills. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

const char *nf_status_name(int code)
{
#define NF_NAME_(name, value, msg) \
    case value: return #name;
    switch (code) { NF_STATUS_LIST(NF_NAME_) }
#undef NF_NAME_
    return "NF_E_UNKNOWN";
}

const char *nf_status_message(int code)
{
#define NF_MSG_(name, value, msg) \
    case value: return msg;
    switch (code) { NF_STATUS_LIST(NF_MSG_) }
#undef NF_MSG_
    return "unknown status";
}

int nf_error_set(nf_error *err, int code, const char *fmt, ...)
{
    if (!err || err->code != NF_OK)
        return code; /* keep the first error: it is the cause, later ones are fallout */
    err->code = code;
    char raw[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    /* One line, no terminal control: names and strings from a file (tensor names, dtypes,
     * metadata keys) end up in messages, so C0 controls, DEL and C1 controls (U+0080..U+009F
     * in UTF-8) are written as \xNN, and invisible or reordering characters (U+202E
     * RIGHT-TO-LEFT OVERRIDE, zero-width characters, ...) as \uXXXX. */
    size_t o = 0;
    const unsigned char *u = (const unsigned char *)raw;
    size_t rawlen = strlen(raw);
    for (size_t i = 0; u[i] && o + 1 < sizeof err->msg; i++) {
        uint32_t cp;
        size_t il = nf_utf8_invisible(raw + i, rawlen - i, &cp);
        if (il) {
            if (o + 12 >= sizeof err->msg)
                break;
            o += (size_t)snprintf(err->msg + o, sizeof err->msg - o,
                                  cp > 0xFFFF ? "\\U%08x" : "\\u%04x", (unsigned)cp);
            i += il - 1;
            continue;
        }
        int c1 = u[i] == 0xC2 && u[i + 1] >= 0x80 && u[i + 1] <= 0x9F;
        if (u[i] < 0x20 || u[i] == 0x7F || c1) {
            if (o + 9 >= sizeof err->msg)
                break;
            o += (size_t)snprintf(err->msg + o, sizeof err->msg - o, "\\x%02x", u[i]);
            if (c1)
                o += (size_t)snprintf(err->msg + o, sizeof err->msg - o, "\\x%02x", u[++i]);
        } else {
            err->msg[o++] = (char)u[i];
        }
    }
    err->msg[o] = '\0';
    return code;
}

void nf_error_clear(nf_error *err)
{
    if (err) {
        err->code = NF_OK;
        err->msg[0] = '\0';
    }
}
