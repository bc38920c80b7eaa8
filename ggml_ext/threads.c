/* threads.c - the persistent worker pool.
 *
 * Workers are created once in pi_pool_create. A job is split into n_threads shares; each share
 * is claimed by whichever thread gets to it first (an atomic counter), so when the machine is
 * oversubscribed and a worker is not scheduled, the caller simply runs that share itself
 * instead of waiting for it. A share's work depends only on its index, so results do not depend
 * on which thread ran it.
 *
 * A job is published by bumping `generation`; idle workers spin briefly on it (jobs within one
 * forward pass arrive microseconds apart), then sleep on a condition variable.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "common.h"
#include "threads.h"

#define SPIN_ITERS 20000 /* pause loops (~0.1-0.5 ms) before a worker sleeps */

struct pi_pool {
    int n_threads;             /* including the caller; also the number of shares per job */
    pthread_t *workers;        /* [n_threads - 1] */
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    atomic_uint generation;    /* bumped once per job */
    atomic_int next;           /* next share to claim */
    atomic_int done;           /* shares finished */
    atomic_bool stop;
    pi_task_fn fn;             /* the current job; written before `next` is reset */
    void *arg;
};

typedef struct { pi_pool *pool; } worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Runs shares of the current job until none is left. */
static void run_shares(pi_pool *pool) {
    const int n = pool->n_threads;
    for (;;) {
        const int i = atomic_fetch_add_explicit(&pool->next, 1, memory_order_acq_rel);
        if (i >= n) return;
        pool->fn(pool->arg, i, n);
        atomic_fetch_add_explicit(&pool->done, 1, memory_order_release);
    }
}

static void *worker_main(void *p) {
    worker_arg wa = *(worker_arg *)p;
    free(p);
    pi_pool *pool = wa.pool;
    unsigned seen = 0; /* the generation at creation: a job published before this thread ran is not missed */
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen) {
            if (++spins < SPIN_ITERS) { cpu_relax(); continue; }
            pthread_mutex_lock(&pool->mutex);
            while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool->wake, &pool->mutex);
            pthread_mutex_unlock(&pool->mutex);
            break;
        }
        seen = gen;
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
        run_shares(pool);
    }
}

static void publish(pi_pool *pool) {
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_acq_rel);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
}

int pi_pool_create(int n_threads, pi_pool **out) {
    PI_CHECK_NULL(out);
    *out = NULL;
    if (n_threads < 1 || n_threads > PI_MAX_THREADS)
        return pi_fail(PI_ERR_RANGE, "pi_pool_create: n_threads = %d, expected 1..%d", n_threads,
                       PI_MAX_THREADS);
    pi_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return pi_fail(PI_ERR_NOMEM, "pi_pool_create: out of memory");
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->next, n_threads); /* no job: nothing to claim */
    atomic_init(&pool->done, 0);
    atomic_init(&pool->stop, false);
    if (n_threads > 1) {
        pool->workers = calloc((size_t)n_threads - 1, sizeof *pool->workers);
        if (!pool->workers) {
            pi_pool_free(pool);
            return pi_fail(PI_ERR_NOMEM, "pi_pool_create: out of memory");
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        int rc = wa ? 0 : -1;
        if (wa) {
            wa->pool = pool;
            rc = pthread_create(&pool->workers[i - 1], NULL, worker_main, wa);
            if (rc) free(wa);
        }
        if (rc) {
            pool->n_threads = i; /* only workers 1..i-1 exist; free joins exactly those */
            pi_pool_free(pool);
            return pi_fail(PI_ERR_THREADS, "pi_pool_create: could not start worker %d of %d", i,
                           n_threads);
        }
    }
    *out = pool;
    return pi_ok();
}

void pi_pool_free(pi_pool *pool) {
    if (!pool) return;
    atomic_store_explicit(&pool->stop, true, memory_order_release);
    publish(pool);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->workers[i - 1], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->workers);
    free(pool);
}

int pi_pool_n_threads(const pi_pool *pool) { return pool ? pool->n_threads : 1; }

void pi_pool_run(pi_pool *pool, pi_task_fn fn, void *arg) {
    if (!pool || pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    const int n = pool->n_threads;
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->next, 0, memory_order_release); /* shares claimable from here */
    publish(pool);
    run_shares(pool);
    int spins = 0;
    while (atomic_load_explicit(&pool->done, memory_order_acquire) < n) {
        if (++spins < SPIN_ITERS) cpu_relax();
        else sched_yield();
    }
}
