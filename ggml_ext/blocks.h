/* blocks.h - ggml-compatible quant block layouts (internal). Mirrors ggml-common.h byte for byte. */
#ifndef PI_BLOCKS_H
#define PI_BLOCKS_H

#include <stdint.h>
#include <string.h>

typedef uint16_t pi_half; /* IEEE 754 binary16, stored as bits */

#define QK4_0 32
typedef struct {
    pi_half d;             /* scale */
    uint8_t qs[QK4_0 / 2]; /* nibbles: low = element j, high = element j + 16 */
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 size");

#define QK4_1 32
typedef struct {
    pi_half d;             /* scale */
    pi_half m;             /* min */
    uint8_t qs[QK4_1 / 2]; /* nibbles, as q4_0 */
} block_q4_1;
_Static_assert(sizeof(block_q4_1) == 4 + QK4_1 / 2, "block_q4_1 size");

#define QK5_0 32
typedef struct {
    pi_half d;             /* scale */
    uint8_t qh[4];         /* fifth bits: element j's in bit j of the little-endian u32 */
    uint8_t qs[QK5_0 / 2]; /* low 4 bits: nibbles, as q4_0 */
} block_q5_0;
_Static_assert(sizeof(block_q5_0) == 2 + 4 + QK5_0 / 2, "block_q5_0 size");

#define QK5_1 32
typedef struct {
    pi_half d;             /* scale */
    pi_half m;             /* min */
    uint8_t qh[4];         /* fifth bits, as q5_0 */
    uint8_t qs[QK5_1 / 2]; /* low 4 bits, as q5_0 */
} block_q5_1;
_Static_assert(sizeof(block_q5_1) == 4 + 4 + QK5_1 / 2, "block_q5_1 size");

/* The 5-bit quant (0..31) of element j of a Q5_0/Q5_1 block. */
static inline int pi_q5_quant(const uint8_t qh[4], const uint8_t qs[16], int j) {
    const int lo = j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4;
    return lo | ((qh[j / 8] >> (j % 8)) & 1) << 4;
}

#define QK8_0 32
typedef struct {
    pi_half d;         /* scale */
    int8_t qs[QK8_0];  /* quants */
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 size");

#define QK8_1 32
typedef struct {
    pi_half d;         /* scale */
    pi_half s;         /* d * sum(qs) */
    int8_t qs[QK8_1];  /* quants */
} block_q8_1;
_Static_assert(sizeof(block_q8_1) == 4 + QK8_1, "block_q8_1 size");

/* ---- the 8-row interleaved layout ("rows8") of the dense matrix kernels ----------------------
 * Block b of 8 consecutive rows, stored together: their scales, then their quants interleaved
 * in 4-byte chunks, chunk c of row r at qs[32 c + 4 r]. A 256-bit register then holds chunk c
 * of all 8 rows, one row per 32-bit lane, and one broadcast of 4 activation bytes serves every
 * row. Same bytes as 8 plain blocks (repack.c); only the order differs. */
#define PI_ROWS8 8

typedef struct {
    pi_half d[PI_ROWS8];            /* scales of rows 0..7 */
    uint8_t qs[PI_ROWS8 * QK4_0 / 2]; /* 4 chunks of 8 rows x qs[4c .. 4c + 3] */
} block_q4_0x8;
_Static_assert(sizeof(block_q4_0x8) == PI_ROWS8 * sizeof(block_q4_0), "block_q4_0x8 size");

typedef struct {
    pi_half d[PI_ROWS8];            /* scales */
    pi_half m[PI_ROWS8];            /* mins */
    uint8_t qs[PI_ROWS8 * QK4_1 / 2]; /* as block_q4_0x8 */
} block_q4_1x8;
_Static_assert(sizeof(block_q4_1x8) == PI_ROWS8 * sizeof(block_q4_1), "block_q4_1x8 size");

typedef struct {
    pi_half d[PI_ROWS8];           /* scales */
    int8_t qs[PI_ROWS8 * QK8_0];   /* 8 chunks of 8 rows x qs[4c .. 4c + 3] */
} block_q8_0x8;
_Static_assert(sizeof(block_q8_0x8) == PI_ROWS8 * sizeof(block_q8_0), "block_q8_0x8 size");

/* Portable binary16 <-> binary32, round-to-nearest-even (matches F16C and numpy). */
static inline float pi_fp32_from_bits(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t pi_fp32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

static inline float pi_half_to_float(pi_half h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    const float exp_scale = pi_fp32_from_bits(0x7800000u);
    const float normalized = pi_fp32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = 126u << 23;
    const float magic_bias = 0.5f;
    const float denormalized = pi_fp32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = 1u << 27;
    const uint32_t result = sign | (two_w < denormalized_cutoff ? pi_fp32_to_bits(denormalized)
                                                                : pi_fp32_to_bits(normalized));
    return pi_fp32_from_bits(result);
}

static inline pi_half pi_float_to_half(float f) {
    const float scale_to_inf = pi_fp32_from_bits(0x77800000u);
    const float scale_to_zero = pi_fp32_from_bits(0x08800000u);
    float base = (f < 0 ? -f : f) * scale_to_inf * scale_to_zero;
    const uint32_t w = pi_fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = pi_fp32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = pi_fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (pi_half)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

#endif /* PI_BLOCKS_H */
