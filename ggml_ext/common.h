/* common.h - internal helpers shared by the library's files: error reporting, validation. */
#ifndef PI_COMMON_H
#define PI_COMMON_H

#include "pi.h"

/* Records a one-line message for pi_last_error() and returns `status`. printf-style. */
int pi_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clears the calling thread's last error; returns PI_OK. */
int pi_ok(void);

#include <stddef.h>

/* pi_buffer_alloc, asking for transparent huge pages only when `huge` (a buffer written
 * sparsely, such as a context's, would take a whole 2 MiB page for every line it touches). */
int pi_buffer_alloc_advised(size_t bytes, int huge, void **out);

/* Drops the pages of [ptr, ptr + bytes) (widened to whole pages) from the process
 * (MADV_DONTNEED). Only for read-only shared file mappings, whose pages fault back in from the
 * file: on private or anonymous memory it would discard data. */
void pi_release_pages(const void *ptr, size_t bytes);

#define PI_CHECK_NULL(p) \
    do { if (!(p)) return pi_fail(PI_ERR_NULL, "%s: argument '%s' is NULL", __func__, #p); } while (0)

#endif /* PI_COMMON_H */
