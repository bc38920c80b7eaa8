/* threads.h - the persistent worker pool (internal interface). */
#ifndef PI_THREADS_H
#define PI_THREADS_H

#include "pi.h"

/* The most threads a pool may have. */
#define PI_MAX_THREADS 256

/* A task is called once per thread: ith in [0, nth). The caller's thread runs ith = 0. */
typedef void (*pi_task_fn)(void *arg, int ith, int nth);

/* Runs `fn` on every thread of `pool` and returns when all have finished. A NULL pool runs
 * fn(arg, 0, 1) on the calling thread. Not reentrant: one pi_pool_run at a time per pool. */
void pi_pool_run(pi_pool *pool, pi_task_fn fn, void *arg);

/* The half-open range [*begin, *end) of `n` items that thread ith of nth takes, in chunks that
 * are multiples of `align` items (the last chunk takes the remainder). */
static inline void pi_split(int64_t n, int64_t align, int ith, int nth, int64_t *begin, int64_t *end) {
    const int64_t units = (n + align - 1) / align;
    const int64_t b = units * ith / nth, e = units * (ith + 1) / nth;
    *begin = b * align < n ? b * align : n;
    *end = e * align < n ? e * align : n;
}

#endif /* PI_THREADS_H */
