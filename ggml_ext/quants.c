/* quants.c - scalar (de)quantization of F32, F16, Q4_0, Q4_1, Q8_0, Q8_1, and the K-quants Q4_K,
 * Q6_K (dequantization) and Q8_K (the type table of types.c points at these).
 *
 * Bit-identical to ggml's reference code (ggml-quants.c, quantize_row_*_ref / dequantize_row_*)
 * and to gguf-py's gguf.quants. What that takes:
 *   - the same float operations in the same order: multiply by id = 1/d (never divide by d),
 *     fp16 conversion with round-to-nearest-even (blocks.h);
 *   - no fused multiply-add in x*id + 8.5f (the product must be rounded before the add). GCC
 *     contracts only in GNU mode (the build uses -std=c11, i.e. -ffp-contract=off); clang is
 *     told by the pragma below. (The dequantizers' q*d products are exact, since a 4/8-bit q
 *     times an 11-bit fp16 mantissa fits in f32, so q*d + m is the same with or without FMA.)
 *   - ggml's tie and zero rules, noted at each quantizer.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "quants.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ---- 4-bit packing (Q4_0, Q4_1) ----------------------------------------------------------- */

/* Byte j of a 32-element block holds element j in its low nibble and element j + 16 in its
 * high nibble. q[] values are in [0, 15]. */
static void pack_nibbles(const uint8_t q[32], uint8_t qs[16]) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
}

static void unpack_nibbles(const uint8_t qs[16], int q[32]) {
    for (int j = 0; j < 16; j++) {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
}

/* ggml's float -> 4-bit quant: truncation toward zero of v + bias (v + bias >= 0 here), capped
 * at 15 (in Q4_0, an element equal to -max maps to 16 before the cap). */
static uint8_t quant4(float v, float bias) {
    const int8_t q = (int8_t)(v + bias);
    return (uint8_t)(q < 15 ? q : 15);
}

/* ---- per-type row functions ---------------------------------------------------------------- */

void pi_quantize_f32(const float *x, void *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

void pi_dequantize_f32(const void *x, float *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

float pi_elem_f32(const void *row, int64_t c) { return ((const float *)row)[c]; }

void pi_quantize_f16(const float *x, void *vy, int64_t n) {
    pi_half *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = pi_float_to_half(x[i]);
}

void pi_dequantize_f16(const void *vx, float *y, int64_t n) {
    const pi_half *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = pi_half_to_float(x[i]);
}

float pi_elem_f16(const void *row, int64_t c) { return pi_half_to_float(((const pi_half *)row)[c]); }

/* Q4_0: x ~ d * (q - 8), d = max / -8 where max is the element of largest magnitude, sign kept
 * (the first one on ties; +0.0f for an all-zero block, so d = -0.0f there). */
void pi_quantize_q4_0(const float *x, void *vy, int64_t n) {
    block_q4_0 *y = vy;
    for (int64_t i = 0; i < n / QK4_0; i++, x += QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;

        uint8_t q[QK4_0];
        for (int j = 0; j < QK4_0; j++) q[j] = quant4(x[j] * id, 8.5f);
        y[i].d = pi_float_to_half(d);
        pack_nibbles(q, y[i].qs);
    }
}

void pi_dequantize_q4_0(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / QK4_0; i++, y += QK4_0) {
        const float d = pi_half_to_float(x[i].d);
        int q[QK4_0];
        unpack_nibbles(x[i].qs, q);
        for (int j = 0; j < QK4_0; j++) y[j] = (float)(q[j] - 8) * d;
    }
}

float pi_elem_q4_0(const void *row, int64_t c) {
    const block_q4_0 *b = (const block_q4_0 *)row + c / QK4_0;
    const int j = (int)(c % QK4_0);
    const int q = j < QK4_0 / 2 ? b->qs[j] & 0x0F : b->qs[j - QK4_0 / 2] >> 4;
    return pi_half_to_float(b->d) * (float)(q - 8);
}

/* Q4_1: x ~ d * q + m, m = min, d = (max - min) / 15. */
void pi_quantize_q4_1(const float *x, void *vy, int64_t n) {
    block_q4_1 *y = vy;
    for (int64_t i = 0; i < n / QK4_1; i++, x += QK4_1) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK4_1; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;

        uint8_t q[QK4_1];
        for (int j = 0; j < QK4_1; j++) q[j] = quant4((x[j] - min) * id, 0.5f);
        y[i].d = pi_float_to_half(d);
        y[i].m = pi_float_to_half(min);
        pack_nibbles(q, y[i].qs);
    }
}

void pi_dequantize_q4_1(const void *vx, float *y, int64_t n) {
    const block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / QK4_1; i++, y += QK4_1) {
        const float d = pi_half_to_float(x[i].d);
        const float m = pi_half_to_float(x[i].m);
        int q[QK4_1];
        unpack_nibbles(x[i].qs, q);
        for (int j = 0; j < QK4_1; j++) y[j] = (float)q[j] * d + m;
    }
}

float pi_elem_q4_1(const void *row, int64_t c) {
    const block_q4_1 *b = (const block_q4_1 *)row + c / QK4_1;
    const int j = (int)(c % QK4_1);
    const int q = j < QK4_1 / 2 ? b->qs[j] & 0x0F : b->qs[j - QK4_1 / 2] >> 4;
    return pi_half_to_float(b->d) * (float)q + pi_half_to_float(b->m);
}

/* The 8-bit block shared by Q8_0 and Q8_1: d = amax / 127, qs[j] = roundf(x[j] / d) (half away
 * from zero). Stores qs, returns d (unrounded f32) and the sum of the quants in *sum. */
static float quantize_block_q8(const float *x, int8_t qs[32], int *sum) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float ax = fabsf(x[j]);
        amax = amax > ax ? amax : ax; /* ggml's MAX(), not fmaxf: identical NaN handling */
    }
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;

    int s = 0;
    for (int j = 0; j < 32; j++) {
        qs[j] = (int8_t)roundf(x[j] * id);
        s += qs[j];
    }
    *sum = s;
    return d;
}

static void dequantize_block_q8(float d, const int8_t qs[32], float *y) {
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
}

void pi_quantize_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        int sum;
        y[i].d = pi_float_to_half(quantize_block_q8(x, y[i].qs, &sum));
    }
}

/* Q8_1 adds s = d * sum(qs), computed in f32 from the unrounded d, then stored as fp16. */
void pi_quantize_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
        int sum;
        const float d = quantize_block_q8(x, y[i].qs, &sum);
        y[i].d = pi_float_to_half(d);
        y[i].s = pi_float_to_half((float)sum * d);
    }
}

void pi_dequantize_q8_0(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0)
        dequantize_block_q8(pi_half_to_float(x[i].d), x[i].qs, y);
}

float pi_elem_q8_0(const void *row, int64_t c) {
    const block_q8_0 *b = (const block_q8_0 *)row + c / QK8_0;
    return pi_half_to_float(b->d) * (float)b->qs[c % QK8_0];
}

/* ggml has no dequantize_row_q8_1 (Q8_1 is only a vec_dot operand); s is redundant here. */
void pi_dequantize_q8_1(const void *vx, float *y, int64_t n) {
    const block_q8_1 *x = vx;
    for (int64_t i = 0; i < n / QK8_1; i++, y += QK8_1)
        dequantize_block_q8(pi_half_to_float(x[i].d), x[i].qs, y);
}

/* ---- the K-quants (blocks of QK_K = 256) --------------------------------------------------- */

/* ggml's nearest_int: round half to even by the 1.5 * 2^23 magic (|v| < 2^22). */
static int nearest_int(float v) {
    const float biased = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &biased, sizeof bits);
    return (bits & 0x007FFFFF) - 0x00400000;
}

/* Q8_K (quantize_row_q8_K_ref, which ggml-cpu also runs as the activation quantizer on x86):
 * iscale = -127 / max where max is the element of largest magnitude, sign kept (the first one
 * on ties); qs = min(127, nearest_int(iscale * x)); d = 1 / iscale (so d < 0 when max > 0).
 * An all-zero block gets d = 0, qs = 0 and (ggml leaves them unset) bsums = 0. */
void pi_quantize_q8_K(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        memset(&y[i], 0, sizeof y[i]);
        if (amax == 0.0f) continue;
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
            y[i].bsums[j / 16] = (int16_t)(y[i].bsums[j / 16] + y[i].qs[j]);
        }
        y[i].d = 1 / iscale;
    }
}

void pi_dequantize_q8_K(const void *vx, float *y, int64_t n) {
    const block_q8_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
        for (int j = 0; j < QK_K; j++) y[j] = x[i].d * (float)x[i].qs[j];
}

/* Q4_K: x = (d * sc_g) * q - dmin * m_g for group g = e / 32 (ggml's d1 * q - m1). */
void pi_dequantize_q4_K(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = pi_half_to_float(x[i].d), dmin = pi_half_to_float(x[i].dmin);
        uint8_t sc[8], m[8], q[QK_K];
        pi_q4_K_scales(x[i].scales, sc, m);
        pi_q4_K_quants(&x[i], q);
        for (int e = 0; e < QK_K; e++)
            y[e] = d * (float)sc[e / 32] * (float)q[e] - dmin * (float)m[e / 32];
    }
}

/* Q6_K: x = (d * sc_g) * (q - 32) for group g = e / 16. */
void pi_dequantize_q6_K(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        const float d = pi_half_to_float(x[i].d);
        int8_t q[QK_K];
        pi_q6_K_quants(&x[i], q);
        for (int e = 0; e < QK_K; e++) y[e] = d * (float)x[i].scales[e / 16] * (float)q[e];
    }
}

/* Element c of a K-quant row: its block dequantized (the strided ablation only). */
static float elem_k(void (*dequantize)(const void *, float *, int64_t), size_t block_bytes,
                    const void *row, int64_t c) {
    float block[QK_K];
    dequantize((const uint8_t *)row + (size_t)(c / QK_K) * block_bytes, block, QK_K);
    return block[c % QK_K];
}

float pi_elem_q4_K(const void *row, int64_t c) {
    return elem_k(pi_dequantize_q4_K, sizeof(block_q4_K), row, c);
}

float pi_elem_q6_K(const void *row, int64_t c) {
    return elem_k(pi_dequantize_q6_K, sizeof(block_q6_K), row, c);
}
