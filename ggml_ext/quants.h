/* quants.h - scalar (de)quantization of the ggml types (internal).
 *
 * Bit-identical to ggml's reference code (ggml-quants.c: quantize_row_*_ref and
 * dequantize_row_*). The type table (types.h) points at these; nothing else calls them by name.
 * No validation: n is a positive multiple of the type's block size. The K-quant weights (Q2_K ..
 * Q6_K), IQ4_NL and IQ4_XS have no quantizer here (ggml's quantizers search their scales;
 * their rows come from llama.cpp's files).
 */
#ifndef PI_QUANTS_H
#define PI_QUANTS_H

#include <stddef.h>
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
void pi_dequantize_q2_K(const void *x, float *y, int64_t n);
void pi_dequantize_q3_K(const void *x, float *y, int64_t n);
void pi_dequantize_q4_K(const void *x, float *y, int64_t n);
void pi_dequantize_q5_K(const void *x, float *y, int64_t n);
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
float pi_elem_q2_K(const void *row, int64_t c);
float pi_elem_q3_K(const void *row, int64_t c);
float pi_elem_q4_K(const void *row, int64_t c);
float pi_elem_q5_K(const void *row, int64_t c);
float pi_elem_q6_K(const void *row, int64_t c);

/* A K-quant weight type for the generic scalar code (the dequantizers, the scalar twins of
 * kernels.c): its block size and its blocks.h unpackers. */
typedef struct {
    size_t block_bytes;
    int group; /* elements per scale (pi_k_scales): 16 or 32 */
    void (*unpack)(const void *block, pi_k_scales *s);
    void (*quants)(const void *block, int8_t q[QK_K]); /* element order, offset removed */
} pi_k_format;
extern const pi_k_format pi_k_q2_K, pi_k_q3_K, pi_k_q4_K, pi_k_q5_K, pi_k_q6_K;

/* IQ4_NL and IQ4_XS (no quantizer: their rows come from llama.cpp's files), and BF16. */
void pi_dequantize_iq4_nl(const void *x, float *y, int64_t n);
void pi_dequantize_iq4_xs(const void *x, float *y, int64_t n);
float pi_elem_iq4_nl(const void *row, int64_t c);
float pi_elem_iq4_xs(const void *row, int64_t c);
void pi_quantize_bf16(const float *x, void *y, int64_t n);
void pi_dequantize_bf16(const void *x, float *y, int64_t n);
float pi_elem_bf16(const void *row, int64_t c);

#endif /* PI_QUANTS_H */
