/* memory.c - library-owned buffers (huge pages where large) and the read-bandwidth probe. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"
#include "threads.h"

#define HUGE_PAGE ((size_t)2 << 20)

int pi_buffer_alloc(size_t bytes, void **out) {
    PI_CHECK_NULL(out);
    *out = NULL;
    if (bytes == 0) return pi_fail(PI_ERR_SHAPE, "pi_buffer_alloc: zero bytes requested");
    const int large = bytes >= HUGE_PAGE;
    const size_t align = large ? HUGE_PAGE : 64;
    const size_t rounded = (bytes + align - 1) / align * align;
    void *p = NULL;
    if (posix_memalign(&p, align, rounded) != 0)
        return pi_fail(PI_ERR_NOMEM, "pi_buffer_alloc: cannot allocate %zu bytes", bytes);
#ifdef MADV_HUGEPAGE
    if (large) madvise(p, rounded, MADV_HUGEPAGE); /* advisory: failure is harmless */
#endif
    *out = p;
    return pi_ok();
}

void pi_buffer_free(void *ptr, size_t bytes) {
    (void)bytes;
    free(ptr);
}

typedef struct {
    const uint64_t *words; /* [n_words] */
    int64_t n_words;
    uint64_t partial[PI_MAX_THREADS][8]; /* one cache line per thread */
} read_job;

static void read_task(void *arg, int ith, int nth) {
    read_job *job = arg;
    int64_t b, e;
    pi_split(job->n_words, 8, ith, nth, &b, &e);
    uint64_t acc[8] = {0};
    for (int64_t i = b; i < e; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += job->words[i + j];
    memcpy(job->partial[ith], acc, sizeof acc);
}

int pi_read_bytes(pi_pool *pool, const void *buf, size_t bytes, float *checksum) {
    PI_CHECK_NULL(buf);
    PI_CHECK_NULL(checksum);
    if (bytes == 0 || bytes % 64 != 0)
        return pi_fail(PI_ERR_SHAPE, "pi_read_bytes: %zu bytes is not a positive multiple of 64",
                       bytes);
    if ((uintptr_t)buf % 8 != 0)
        return pi_fail(PI_ERR_RANGE, "pi_read_bytes: buffer is not 8-byte aligned");
    if (pi_pool_n_threads(pool) > PI_MAX_THREADS)
        return pi_fail(PI_ERR_RANGE, "pi_read_bytes: more than %d threads",
                       PI_MAX_THREADS);
    read_job job = {.words = buf, .n_words = (int64_t)(bytes / 8)};
    pi_pool_run(pool, read_task, &job);
    uint64_t sum = 0;
    for (int t = 0; t < pi_pool_n_threads(pool); t++)
        for (int j = 0; j < 8; j++) sum += job.partial[t][j];
    *checksum = (float)(sum & 0xFFFFFF);
    return pi_ok();
}
