/* memory.c - library-owned buffers (huge pages where large) and the read-bandwidth probe. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"
#include "threads.h"

#define HUGE_PAGE ((size_t)2 << 20)
#define PAGE ((size_t)4096)

/* A buffer's mapped size: whole pages, or whole huge pages when it is large. */
static size_t mapped_bytes(size_t bytes) {
    const size_t unit = bytes >= HUGE_PAGE ? HUGE_PAGE : PAGE;
    return (bytes + unit - 1) / unit * unit;
}

/* Anonymous mappings come zeroed and take no memory until written. */
int pi_buffer_alloc(size_t bytes, void **out) { return pi_buffer_alloc_advised(bytes, 1, out); }

int pi_buffer_alloc_advised(size_t bytes, int huge, void **out) {
    PI_CHECK_NULL(out);
    *out = NULL;
    if (bytes == 0) return pi_fail(PI_ERR_SHAPE, "pi_buffer_alloc: zero bytes requested");
    if (bytes > SIZE_MAX / 2) return pi_fail(PI_ERR_NOMEM, "pi_buffer_alloc: %zu bytes requested", bytes);
    const size_t size = mapped_bytes(bytes);
    const int large = size >= HUGE_PAGE && huge;
    const size_t slack = large ? HUGE_PAGE : 0; /* to align the start to a huge page */
    uint8_t *raw = mmap(NULL, size + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return pi_fail(PI_ERR_NOMEM, "pi_buffer_alloc: cannot allocate %zu bytes", bytes);
    uint8_t *p = raw;
    if (large) {
        p = (uint8_t *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
        if (p > raw) munmap(raw, (size_t)(p - raw));
        if (p + size < raw + size + slack) munmap(p + size, (size_t)(raw + size + slack - (p + size)));
#ifdef MADV_HUGEPAGE
        madvise(p, size, MADV_HUGEPAGE); /* advisory: failure is harmless */
#endif
    }
    *out = p;
    return pi_ok();
}

void pi_buffer_free(void *ptr, size_t bytes) {
    if (ptr && bytes) munmap(ptr, mapped_bytes(bytes));
}

void pi_release_pages(const void *ptr, size_t bytes) {
    if (!ptr || !bytes) return;
    const uintptr_t b = (uintptr_t)ptr & ~(uintptr_t)(PAGE - 1);
    const uintptr_t e = ((uintptr_t)ptr + bytes + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
    madvise((void *)b, e - b, MADV_DONTNEED); /* advisory: failure is harmless */
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
