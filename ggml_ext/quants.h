/* quants.h - block geometry and scalar (de)quantization of the ggml types (internal).
 *
 * The public entry points (pi_type_info, pi_row_bytes, pi_quantize_row, pi_dequantize_row) are in
 * pi.h; this header gives the other library files unchecked access to the same code. Every
 * format is bit-identical to ggml's reference code (ggml-quants.c: quantize_row_*_ref and
 * dequantize_row_*).
 */
#ifndef PI_QUANTS_H
#define PI_QUANTS_H

#include <stdint.h>

#include "blocks.h"

/* Elements per block / bytes per block of `type`; 0 for an unsupported type (no error is set). */
int64_t pi_type_block_elems(int type);
int64_t pi_type_block_bytes(int type);
/* Short name of `type` ("Q4_0", ...), or NULL for an unsupported type. For error messages. */
const char *pi_type_name(int type);

/* ggml's reference quantizers for the activation side of the integer dots.
 * x: [n] f32, n a positive multiple of 32 (not checked). */
void pi_quantize_row_q8_0_ref(const float *x, block_q8_0 *y, int64_t n);
void pi_quantize_row_q8_1_ref(const float *x, block_q8_1 *y, int64_t n);

/* x: a row of n elements of `type` -> y: [n] f32. No validation: `type` must be supported and
 * n a positive multiple of its block size. */
void pi_dequantize_row_ref(int type, const void *x, float *y, int64_t n);

/* One row of a matrix repacked by pi_repack_rows8 (Wp: [n_rows][n_cols] of Q4_0, Q4_1 or Q8_0)
 * back in the plain layout: out receives the row's bytes. No validation. */
void pi_rows8_unpack_row(int type, const void *Wp, int64_t n_rows, int64_t n_cols, int64_t row, void *out);

#endif /* PI_QUANTS_H */
