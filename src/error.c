/* Error codes to names and sentences: generated from the one table in ktla.h. */
#include <errno.h>
#include <string.h>

#include "ktla.h"

const char *ktla_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define KTLA_ERROR_MSG(name, value, msg)                                                           \
    case value:                                                                                    \
        return msg;
        KTLA_ERRORS(KTLA_ERROR_MSG)
#undef KTLA_ERROR_MSG
    default:
        break;
    }
    /* strerrordesc_np is static, thread-safe and never localised, unlike strerror. */
    if (code < 0 && code > -4000) {
        const char *s = strerrordesc_np(-code);
        if (s)
            return s;
    }
    return "unknown ktla error code";
}

const char *ktla_err_name(int code)
{
    switch (code) {
    case 0:
        return "OK";
#define KTLA_ERROR_NAME(name, value, msg)                                                          \
    case value:                                                                                    \
        return #name;
        KTLA_ERRORS(KTLA_ERROR_NAME)
#undef KTLA_ERROR_NAME
    default:
        break;
    }
    if (code < 0 && code > -4000) {
        const char *s = strerrorname_np(-code);
        if (s)
            return s;
    }
    return "UNKNOWN";
}

const char *ktla_version(void)
{
    return KTLA_VERSION_STRING;
}
