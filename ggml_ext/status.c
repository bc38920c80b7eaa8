/* status.c - status codes, the per-thread last-error message, the API version. */
#include <stdarg.h>
#include <stdio.h>

#include "common.h"

static _Thread_local char last_error[256];

int pi_api_version(void) { return PI_API_VERSION; }

const char *pi_status_str(int status) {
    switch (status) {
    case PI_OK: return "ok";
    case PI_ERR_NULL: return "null pointer";
    case PI_ERR_TYPE: return "unsupported type";
    case PI_ERR_SHAPE: return "bad shape";
    case PI_ERR_RANGE: return "out of range";
    case PI_ERR_NOMEM: return "out of memory";
    case PI_ERR_THREADS: return "thread creation failed";
    case PI_ERR_ISA: return "instruction set not available";
    case PI_ERR_NUMERIC: return "not finite";
    default: return "unknown status";
    }
}

const char *pi_last_error(void) { return last_error; }

int pi_fail(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

int pi_ok(void) {
    last_error[0] = '\0';
    return PI_OK;
}
