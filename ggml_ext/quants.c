/* quants.c - scalar (de)quantization of F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, and the
 * K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (dequantization) and Q8_K (the type table of types.c
 * points at these); IQ4_NL and IQ4_XS (dequantization) and BF16 at the end.
 *
 * Bit-identical to ggml's reference code (ggml-quants.c, quantize_row_*_ref / dequantize_row_*)
 * and to gguf-py's gguf.quants. What that takes:
 *   - the same float operations in the same order: multiply by id = 1/d (never divide by d),
 *     fp16 conversion with round-to-nearest-even (blocks.h);
 *   - no fused multiply-add in x*id + 8.5f (the product must be rounded before the add). GCC
 *     contracts only in GNU mode (the build uses -std=c11, i.e. -ffp-contract=off); clang is
 *     told by the pragma below. (The dequantizers' q*d products are exact, since a 4/5/8-bit q
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

/* ---- 4- and 5-bit packing (Q4_0, Q4_1, Q5_0, Q5_1) ------------------------------------------ */

/* Byte j of a 32-element block holds element j in its low nibble and element j + 16 in its
 * high nibble. q[] values are in [0, 15]. */
static void pack_nibbles(const uint8_t q[32], uint8_t qs[16]) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
}

/* Q5: the low 4 bits of q[j] (in [0, 31]) as Q4's nibbles, after 4 bytes qh holding bit 4 of
 * q[j] in bit j (little-endian): packed = qh then qs. */
static void pack_q5(const uint8_t q[32], uint8_t *packed) {
    uint8_t lo[32];
    memset(packed, 0, 4);
    for (int j = 0; j < 32; j++) {
        lo[j] = q[j] & 0x0F;
        packed[j / 8] |= (uint8_t)((q[j] >> 4) << (j % 8));
    }
    pack_nibbles(lo, packed + 4);
}

static int quant_q4(const uint8_t *qs, int j) { return j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4; }
static int quant_q5(const uint8_t *packed, int j) { return pi_q5_quant(packed, packed + 4, j); }

/* ggml's float -> 4/5-bit quant: truncation toward zero of v + bias (v + bias >= 0 here), capped
 * at `top` (in Q4_0/Q5_0, an element equal to -max maps to top + 1 before the cap). */
static uint8_t quant_trunc(float v, float bias, int top) {
    const int8_t q = (int8_t)(v + bias);
    return (uint8_t)(q < top ? q : top);
}

/* Q4_0/Q5_0's block: x ~ d * (q - half), d = max / -half where max is the element of largest
 * magnitude, sign kept (the first one on ties; +0.0f for an all-zero block, so d = -0.0f there);
 * q in [0, 2 half - 1]. Returns d. */
static float quantize_block_sym(const float *x, int half, uint8_t q[32]) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    const float d = max / (float)-half;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++) q[j] = quant_trunc(x[j] * id, (float)half + 0.5f, 2 * half - 1);
    return d;
}

/* Q4_1/Q5_1's block: x ~ d * q + m, m = min, d = (max - min) / top, q in [0, top]. Returns d. */
static float quantize_block_affine(const float *x, int top, uint8_t q[32], float *m) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / (float)top;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++) q[j] = quant_trunc((x[j] - min) * id, 0.5f, top);
    *m = min;
    return d;
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

/* ---- Q4_0, Q4_1, Q5_0, Q5_1: one block shape ------------------------------------------------
 * The fp16 scale d, for the affine _1 types the fp16 min m, then the packed quants. */
typedef struct {
    int64_t bytes; /* of a block */
    int half;      /* x ~ d * (q - half) (quantize_block_sym); 0: x ~ d * q + m (affine) */
    int top;       /* the largest quant */
    void (*pack)(const uint8_t q[32], uint8_t *packed);
    int (*quant)(const uint8_t *packed, int j); /* quant j of the packed quants */
} legacy_format;

static const legacy_format Q4_0 = {sizeof(block_q4_0), 8, 15, pack_nibbles, quant_q4};
static const legacy_format Q4_1 = {sizeof(block_q4_1), 0, 15, pack_nibbles, quant_q4};
static const legacy_format Q5_0 = {sizeof(block_q5_0), 16, 31, pack_q5, quant_q5};
static const legacy_format Q5_1 = {sizeof(block_q5_1), 0, 31, pack_q5, quant_q5};

static int head_bytes(const legacy_format *f) { return f->half ? 2 : 4; }

static float load_half(const uint8_t *p) {
    pi_half h;
    memcpy(&h, p, sizeof h);
    return pi_half_to_float(h);
}

static void store_half(uint8_t *p, float v) {
    const pi_half h = pi_float_to_half(v);
    memcpy(p, &h, sizeof h);
}

static void quantize_legacy(const legacy_format *f, const float *x, void *vy, int64_t n) {
    uint8_t *y = vy;
    for (int64_t i = 0; i < n / 32; i++, x += 32, y += f->bytes) {
        uint8_t q[32];
        float m = 0.0f;
        store_half(y, f->half ? quantize_block_sym(x, f->half, q) : quantize_block_affine(x, f->top, q, &m));
        if (!f->half) store_half(y + 2, m);
        f->pack(q, y + head_bytes(f));
    }
}

/* Element j of a block, dequantized as ggml does. */
static float legacy_value(const legacy_format *f, const uint8_t *block, int j) {
    const int q = f->quant(block + head_bytes(f), j);
    const float d = load_half(block);
    return f->half ? (float)(q - f->half) * d : (float)q * d + load_half(block + 2);
}

static void dequantize_legacy(const legacy_format *f, const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx;
    for (int64_t i = 0; i < n / 32; i++, x += f->bytes, y += 32)
        for (int j = 0; j < 32; j++) y[j] = legacy_value(f, x, j);
}

static float elem_legacy(const legacy_format *f, const void *row, int64_t c) {
    return legacy_value(f, (const uint8_t *)row + c / 32 * f->bytes, (int)(c % 32));
}

#define LEGACY_ENTRIES(t, F)                                                                       \
    void pi_quantize_##t(const float *x, void *y, int64_t n) { quantize_legacy(&F, x, y, n); }    \
    void pi_dequantize_##t(const void *x, float *y, int64_t n) { dequantize_legacy(&F, x, y, n); } \
    float pi_elem_##t(const void *row, int64_t c) { return elem_legacy(&F, row, c); }
LEGACY_ENTRIES(q4_0, Q4_0)
LEGACY_ENTRIES(q4_1, Q4_1)
LEGACY_ENTRIES(q5_0, Q5_0)
LEGACY_ENTRIES(q5_1, Q5_1)
#undef LEGACY_ENTRIES

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

/* The K-quant weights: x = (d * sc_g) * q - dmin * m_g for element e of group g = e / group
 * (ggml's dl * q - ml; the types without mins have m = 0, and x - 0 is x), over the block's
 * unpacked fields (blocks.h). */
#define K_FORMAT(T) \
    const pi_k_format pi_k_##T = {sizeof(block_##T), pi_##T##_group, pi_##T##_unpack, pi_##T##_quants};
K_FORMAT(q2_K)
K_FORMAT(q3_K)
K_FORMAT(q4_K)
K_FORMAT(q5_K)
K_FORMAT(q6_K)
#undef K_FORMAT

static void dequantize_k(const pi_k_format *f, const void *vx, float *y, int64_t n) {
    const uint8_t *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++, x += f->block_bytes, y += QK_K) {
        pi_k_scales s;
        int8_t q[QK_K];
        f->unpack(x, &s);
        f->quants(x, q);
        const float d = pi_half_to_float(s.d), dmin = pi_half_to_float(s.dmin);
        for (int e = 0; e < QK_K; e++)
            y[e] = d * (float)s.sc[e / f->group] * (float)q[e] - dmin * (float)s.m[e / f->group];
    }
}

/* Element c of a K-quant row: its block dequantized (the strided ablation only). */
static float elem_k(const pi_k_format *f, const void *row, int64_t c) {
    float block[QK_K];
    dequantize_k(f, (const uint8_t *)row + (size_t)(c / QK_K) * f->block_bytes, block, QK_K);
    return block[c % QK_K];
}

#define K_ENTRIES(T)                                                                               \
    void pi_dequantize_##T(const void *x, float *y, int64_t n) { dequantize_k(&pi_k_##T, x, y, n); } \
    float pi_elem_##T(const void *row, int64_t c) { return elem_k(&pi_k_##T, row, c); }
K_ENTRIES(q2_K)
K_ENTRIES(q3_K)
K_ENTRIES(q4_K)
K_ENTRIES(q5_K)
K_ENTRIES(q6_K)
#undef K_ENTRIES

/* ---- IQ4_NL and IQ4_XS (dequantization only, as the K-quants) ------------------------------ */

const int8_t pi_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                     1,    13,   25,  38,  53,  69,  89,  113};

/* One block of 32 nibbles with the scale d: y[j] = d * kvalues[q_j] (dequantize_row_iq4_nl's
 * product; exact in f32: an 11-bit fp16 mantissa times a 7-bit value). */
static void dequantize_iq4_32(float d, const uint8_t qs[16], float *y) {
    for (int j = 0; j < 32; j++) y[j] = d * (float)pi_iq4_value(qs, j);
}

void pi_dequantize_iq4_nl(const void *vx, float *y, int64_t n) {
    const block_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / QK4_NL; i++, y += QK4_NL) dequantize_iq4_32(pi_half_to_float(x[i].d), x[i].qs, y);
}

float pi_elem_iq4_nl(const void *row, int64_t c) {
    const block_iq4_nl *b = (const block_iq4_nl *)row + c / QK4_NL;
    return pi_half_to_float(b->d) * (float)pi_iq4_value(b->qs, (int)(c % QK4_NL));
}

/* IQ4_XS: sub-block s scaled by dl = d * (ls_s - 32) (dequantize_row_iq4_xs's dl, exact), then
 * dl * kvalues[q] as IQ4_NL's (exact: 11 + 5 + 7 bits). */
static float iq4_xs_dl(const block_iq4_xs *b, int s) {
    return pi_half_to_float(b->d) * (float)pi_iq4_xs_scale(b, s);
}

void pi_dequantize_iq4_xs(const void *vx, float *y, int64_t n) {
    const block_iq4_xs *x = vx;
    for (int64_t i = 0; i < n / QK_K; i++)
        for (int s = 0; s < QK_K / 32; s++, y += 32) dequantize_iq4_32(iq4_xs_dl(&x[i], s), x[i].qs + 16 * s, y);
}

float pi_elem_iq4_xs(const void *row, int64_t c) {
    const block_iq4_xs *b = (const block_iq4_xs *)row + c / QK_K;
    const int e = (int)(c % QK_K);
    return iq4_xs_dl(b, e / 32) * (float)pi_iq4_value(b->qs + 16 * (e / 32), e % 32);
}

/* ---- BF16 ---------------------------------------------------------------------------------- */

void pi_quantize_bf16(const float *x, void *vy, int64_t n) {
    pi_bf16 *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = pi_float_to_bf16(x[i]);
}

void pi_dequantize_bf16(const void *vx, float *y, int64_t n) {
    const pi_bf16 *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = pi_bf16_to_float(x[i]);
}

float pi_elem_bf16(const void *row, int64_t c) { return pi_bf16_to_float(((const pi_bf16 *)row)[c]); }
