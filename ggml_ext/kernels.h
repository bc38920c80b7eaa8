/* kernels.h - the per-ISA kernel table behind pi_matvec & co. (internal).
 *
 * kernels.c validates arguments, quantizes the activation once per call, splits the work over the
 * pool and calls the active table's inner kernels; each ISA (scalar in kernels.c, AVX2 and
 * AVX-512 in kernels_x86.c) provides one table. The scalar table is the reference twin: every
 * SIMD kernel computes the same per-block integer sums; only the order of float accumulation
 * differs.
 */
#ifndef PI_KERNELS_H
#define PI_KERNELS_H

#include <stdint.h>

#include "blocks.h"
#include "pi.h"

/* Rows handled by one inner-kernel call (they share the activation loads). */
#define PI_KERNEL_ROWS 4

/* Weight types the kernels take, as compact slots of the tables below. */
enum { PI_SLOT_F32, PI_SLOT_F16, PI_SLOT_Q4_0, PI_SLOT_Q4_1, PI_SLOT_Q8_0, PI_N_SLOTS };

/* out[r] = rows[r] . act for r < nr (1 <= nr <= PI_KERNEL_ROWS).
 *   rows[r]: one weight row of n elements (n a multiple of the block size);
 *   act: the activation as the weight type wants it: [n] f32 for F32/F16, [n/32] block_q8_0 for
 *   Q4_0/Q8_0, [n/32] block_q8_1 for Q4_1. */
typedef void (*pi_dot_fn)(int64_t n, const void *const rows[], int nr, const void *act,
                          float *out);

/* y[c] += sum_r a[r] * dequant(rows[r])[c] for c in [c0, c1), r < nr (1 <= nr <= 4).
 * c0, c1 are multiples of the block size; y is the whole output row (indexed by c). */
typedef void (*pi_axpy_fn)(int64_t c0, int64_t c1, const void *const rows[], const float *a,
                           int nr, float *y);

typedef struct {
    const char *name;
    pi_dot_fn dot[PI_N_SLOTS];
    pi_axpy_fn axpy[PI_N_SLOTS];
    /* Activation quantizers, bit-identical to pi_quantize_row_q8_{0,1}_ref. n: multiple of 32. */
    void (*quantize_q8_0)(const float *x, block_q8_0 *y, int64_t n);
    void (*quantize_q8_1)(const float *x, block_q8_1 *y, int64_t n);
} pi_kernels;

extern const pi_kernels pi_kernels_scalar;
#if defined(__x86_64__)
extern const pi_kernels pi_kernels_avx2;
extern const pi_kernels pi_kernels_avx512;
#endif

/* cpu.c: whether this CPU and OS can run `isa` (a pi_isa value). */
int pi_cpu_has_isa(int isa);

#endif /* PI_KERNELS_H */
