/* types.h - the type table (internal): one row per ggml type id the library knows.
 *
 * Everything that depends on a tensor type asks this table (validation, row sizes, the
 * activation type of a weight, repacking, (de)quantization) or the per-ISA kernel tables of
 * kernels.h, which are indexed by the same ids. Adding a type touches its block (blocks.h), its
 * scalar code (quants.c), its row in types.c, and its kernels with their entries in each ISA
 * table; nothing else.
 */
#ifndef PI_TYPES_H
#define PI_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "blocks.h"
#include "pi.h"

typedef struct {
    const char *name; /* ggml's name; NULL: an id the library does not know */
    int64_t block_elems;
    int64_t block_bytes;
    /* The format's scalar code (quants.c), n a positive multiple of block_elems; quantize is
     * NULL for the K-quant weights. */
    void (*quantize)(const float *x, void *y, int64_t n);
    void (*dequantize)(const void *x, float *y, int64_t n);
    /* As a weight of the matrix kernels (0: an activation type only). */
    int weight;
    /* Weights: the type the dots take the activation in, PI_TYPE_F32 for x as it is, else a
     * quantized type whose block size divides block_elems, quantized once per call by the ISA
     * table's quantize_act[act_type]. */
    int act_type;
    /* Weights: element c of a row, dequantized (the strided ablation, pi_matvec_cols_sparse). */
    float (*elem)(const void *row, int64_t c);
    /* The rows8 layout (blocks.h): bytes of scale fields at the head of each row's block (2-byte
     * fields, stored field-major for the 8 rows; Q5's 4-byte qh counts as two), the rest of the block being quants stored in
     * 4-byte chunks, chunk c of row r at 32 c + 4 r. 0: no rows8 layout. */
    int rows8_head;
} pi_type_traits;

/* The row of `type`, or NULL for an unknown id (no error is set). */
const pi_type_traits *pi_type_traits_of(int type);

/* Name of `type` for messages: "Q4_0", or "unknown" (never NULL). */
const char *pi_type_name(int type);

/* The names of the types with `pred` true, ", "-separated, into buf (for messages). */
void pi_type_list(int (*pred)(const pi_type_traits *t), char *buf, size_t cap);
int pi_type_is_weight(const pi_type_traits *t);
int pi_type_is_rows8(const pi_type_traits *t);
/* pi_fail(PI_ERR_TYPE) for a type without the rows8 layout, naming those that have it. */
int pi_fail_rows8(const char *fn, int type);

/* Bytes of n elements of a known `type` (n a multiple of its block size; not checked). */
static inline int64_t pi_type_row_bytes(const pi_type_traits *t, int64_t n) {
    return n / t->block_elems * t->block_bytes;
}

/* One row of a matrix repacked by pi_repack_rows8 (repack.c; Wp: [n_rows][n_cols] of a type with
 * a rows8 layout) back in the plain layout: out receives the row's bytes. No validation. */
void pi_rows8_unpack_row(int type, const void *Wp, int64_t n_rows, int64_t n_cols, int64_t row,
                         void *out);

#endif /* PI_TYPES_H */
