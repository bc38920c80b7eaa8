/* common.h - internal helpers shared by the library's files: error reporting, validation. */
#ifndef PI_COMMON_H
#define PI_COMMON_H

#include "pi.h"

/* Records a one-line message for pi_last_error() and returns `status`. printf-style. */
int pi_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clears the calling thread's last error; returns PI_OK. */
int pi_ok(void);

#define PI_CHECK_NULL(p) \
    do { if (!(p)) return pi_fail(PI_ERR_NULL, "%s: argument '%s' is NULL", __func__, #p); } while (0)

#endif /* PI_COMMON_H */
