/* quants.h - scalar (de)quantization of the ggml types (internal).
 *
 * Bit-identical to ggml's reference code (ggml-quants.c: quantize_row_*_ref and
 * dequantize_row_*). The type table (types.h) points at these; nothing else calls them by name.
 * No validation: n is a positive multiple of the type's block size. Q4_K, Q6_K, IQ4_NL and
 * IQ4_XS have no quantizer here (ggml's searches scales; their rows come from llama.cpp's files).
 */
#ifndef PI_QUANTS_H
#define PI_QUANTS_H

#include <stdint.h>

#include "blocks.h"

/* x: [n] f32 -> y: a row of n elements of the type. */
void pi_quantize_f32(const float *x, void *y, int64_t n);
void pi_quantize_f16(const float *x, void *y, int64_t n);
void pi_quantize_q4_0(const float *x, void *y, int64_t n);
void pi_quantize_q4_1(const float *x, void *y, int64_t n);
void pi_quantize_q5_0(const float *x, void *y, int64_t n);
void pi_quantize_q5_1(const float *x, void *y, int64_t n);
void pi_quantize_q8_0(const float *x, void *y, int64_t n);
void pi_quantize_q8_1(const float *x, void *y, int64_t n);
void pi_quantize_q8_K(const float *x, void *y, int64_t n);

/* x: a row of n elements of the type -> y: [n] f32. */
void pi_dequantize_f32(const void *x, float *y, int64_t n);
void pi_dequantize_f16(const void *x, float *y, int64_t n);
void pi_dequantize_q4_0(const void *x, float *y, int64_t n);
void pi_dequantize_q4_1(const void *x, float *y, int64_t n);
void pi_dequantize_q5_0(const void *x, float *y, int64_t n);
void pi_dequantize_q5_1(const void *x, float *y, int64_t n);
void pi_dequantize_q8_0(const void *x, float *y, int64_t n);
void pi_dequantize_q8_1(const void *x, float *y, int64_t n);
void pi_dequantize_q4_K(const void *x, float *y, int64_t n);
void pi_dequantize_q6_K(const void *x, float *y, int64_t n);
void pi_dequantize_q8_K(const void *x, float *y, int64_t n);

/* Element c of a row, dequantized (the same value as the row's dequantization gives). */
float pi_elem_f32(const void *row, int64_t c);
float pi_elem_f16(const void *row, int64_t c);
float pi_elem_q4_0(const void *row, int64_t c);
float pi_elem_q4_1(const void *row, int64_t c);
float pi_elem_q5_0(const void *row, int64_t c);
float pi_elem_q5_1(const void *row, int64_t c);
float pi_elem_q8_0(const void *row, int64_t c);
float pi_elem_q4_K(const void *row, int64_t c);
float pi_elem_q6_K(const void *row, int64_t c);

/* IQ4_NL and IQ4_XS (no quantizer: their rows come from llama.cpp's files), and BF16. */
void pi_dequantize_iq4_nl(const void *x, float *y, int64_t n);
void pi_dequantize_iq4_xs(const void *x, float *y, int64_t n);
float pi_elem_iq4_nl(const void *row, int64_t c);
float pi_elem_iq4_xs(const void *row, int64_t c);
void pi_quantize_bf16(const float *x, void *y, int64_t n);
void pi_dequantize_bf16(const void *x, float *y, int64_t n);
float pi_elem_bf16(const void *row, int64_t c);

#endif /* PI_QUANTS_H */
