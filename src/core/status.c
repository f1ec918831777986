/* Status names and messages, and the error record every fallible call fills. */
#include "nufilt.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

void nf_error_clear(nf_error *err)
{
    if (err) {
        err->code = NF_OK;
        err->msg[0] = '\0';
    }
}
