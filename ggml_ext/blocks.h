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

/* ---- the K-quants: super-blocks of 256 ------------------------------------------------------ */
#define QK_K 256

/* Q4_K: 8 groups of 32, x = d * sc_g * q - dmin * m_g with 6-bit sc_g, m_g and 4-bit q. */
typedef struct {
    pi_half d;            /* scale of the group scales */
    pi_half dmin;         /* scale of the group mins */
    uint8_t scales[12];   /* sc_g, m_g packed in 6 bits (pi_q4_K_scales) */
    uint8_t qs[QK_K / 2]; /* 4 chunks of 64: byte l low nibble = element l, high = element l + 32 */
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 4 + 12 + QK_K / 2, "block_q4_K size");

/* Q6_K: 16 groups of 16, x = d * sc_g * (q - 32) with int8 sc_g and 6-bit q. */
typedef struct {
    uint8_t ql[QK_K / 2];  /* low 4 bits (pi_q6_K_quants) */
    uint8_t qh[QK_K / 4];  /* high 2 bits */
    int8_t scales[QK_K / 16];
    pi_half d;
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K size");

/* Q8_K: the activation of the K-quant dots, x = d * qs; bsums[g] = sum of qs[16 g .. 16 g + 15]. */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
_Static_assert(sizeof(block_q8_K) == 4 + QK_K + QK_K / 8, "block_q8_K size");

/* Q4_K's 6-bit group scales and mins: groups 0-3 in the low 6 bits of bytes 0-3 (scales) and
 * 4-7 (mins); groups 4-7 in the nibbles of bytes 8-11 with their top 2 bits in the top bits of
 * bytes 0-3 (scales) and 4-7 (mins). */
static inline void pi_q4_K_scales(const uint8_t s[12], uint8_t sc[8], uint8_t m[8]) {
    for (int g = 0; g < 4; g++) {
        sc[g] = s[g] & 63;
        m[g] = s[g + 4] & 63;
        sc[g + 4] = (uint8_t)((s[g + 8] & 0x0F) | ((s[g] >> 6) << 4));
        m[g + 4] = (uint8_t)((s[g + 8] >> 4) | ((s[g + 4] >> 6) << 4));
    }
}

/* Q4_K's 256 quants q[e] in [0, 15], element order. */
static inline void pi_q4_K_quants(const block_q4_K *b, uint8_t q[QK_K]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            q[64 * c + l] = b->qs[32 * c + l] & 0x0F;
            q[64 * c + 32 + l] = b->qs[32 * c + l] >> 4;
        }
}

/* Q6_K's 256 quants minus 32, in [-32, 31], element order: in each half of 128, element l (l <
 * 32) takes ql[l]'s low nibble and qh[l]'s bits 0-1, l + 32 ql[l + 32]'s low nibble and bits 2-3,
 * l + 64 ql[l]'s high nibble and bits 4-5, l + 96 ql[l + 32]'s high nibble and bits 6-7. */
static inline void pi_q6_K_quants(const block_q6_K *b, int8_t q[QK_K]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int8_t *qo = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            qo[l] = (int8_t)(((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32);
            qo[l + 32] = (int8_t)(((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32);
            qo[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            qo[l + 96] = (int8_t)(((ql[l + 32] >> 4) | ((qh[l] >> 6) << 4)) - 32);
        }
    }
}

/* ---- the non-linear 4-bit types: IQ4_NL (blocks of 32) and IQ4_XS (super-blocks of 256) ----
 * A nibble q stands for pi_kvalues_iq4nl[q] (ggml's kvalues_iq4nl, defined in quants.c), times
 * the block's scale. */
extern const int8_t pi_kvalues_iq4nl[16];

#define QK4_NL 32
typedef struct {
    pi_half d;              /* scale */
    uint8_t qs[QK4_NL / 2]; /* nibbles, as q4_0: x = d * kvalues[q] */
} block_iq4_nl;
_Static_assert(sizeof(block_iq4_nl) == 2 + QK4_NL / 2, "block_iq4_nl size");

/* IQ4_XS: 8 sub-blocks of 32, x = d * (ls_s - 32) * kvalues[q] with a 6-bit ls_s (pi_iq4_xs_scale);
 * sub-block s's 16 bytes of nibbles at qs[16 s], as an IQ4_NL block's. */
typedef struct {
    pi_half d;                 /* scale of the sub-block scales */
    uint16_t scales_h;         /* top 2 bits of ls_s at bits 2s, 2s + 1 */
    uint8_t scales_l[QK_K / 64]; /* low 4 bits of ls_s: byte s / 2, low nibble for even s */
    uint8_t qs[QK_K / 2];
} block_iq4_xs;
_Static_assert(sizeof(block_iq4_xs) == 2 + 2 + QK_K / 64 + QK_K / 2, "block_iq4_xs size");

/* Sub-block s's scale of an IQ4_XS block minus 32, in [-32, 31]. */
static inline int pi_iq4_xs_scale(const block_iq4_xs *b, int s) {
    const int lo = (b->scales_l[s / 2] >> (4 * (s % 2))) & 0x0F, hi = (b->scales_h >> (2 * s)) & 3;
    return (lo | hi << 4) - 32;
}

/* Element j (< 32) of an IQ4 block of nibbles qs: its nibble (low: j < 16, high: j - 16). */
static inline int pi_iq4_value(const uint8_t qs[16], int j) {
    return pi_kvalues_iq4nl[j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4];
}

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

/* The Q5 types: the fifth bits of row r as two 16-bit fields, qh[0][r] (elements 0..15, the
 * low-nibble lanes) and qh[1][r] (elements 16..31, the high-nibble lanes). */
typedef struct {
    pi_half d[PI_ROWS8];              /* scales */
    uint16_t qh[2][PI_ROWS8];         /* fifth bits: low, then high half of each row's qh */
    uint8_t qs[PI_ROWS8 * QK5_0 / 2]; /* as block_q4_0x8 */
} block_q5_0x8;
_Static_assert(sizeof(block_q5_0x8) == PI_ROWS8 * sizeof(block_q5_0), "block_q5_0x8 size");

typedef struct {
    pi_half d[PI_ROWS8];              /* scales */
    pi_half m[PI_ROWS8];              /* mins */
    uint16_t qh[2][PI_ROWS8];         /* as block_q5_0x8 */
    uint8_t qs[PI_ROWS8 * QK5_1 / 2]; /* as block_q4_0x8 */
} block_q5_1x8;
_Static_assert(sizeof(block_q5_1x8) == PI_ROWS8 * sizeof(block_q5_1), "block_q5_1x8 size");

typedef struct {
    pi_half d[PI_ROWS8];           /* scales */
    int8_t qs[PI_ROWS8 * QK8_0];   /* 8 chunks of 8 rows x qs[4c .. 4c + 3] */
} block_q8_0x8;
_Static_assert(sizeof(block_q8_0x8) == PI_ROWS8 * sizeof(block_q8_0), "block_q8_0x8 size");

/* IQ4_NL: block_q4_0x8's geometry (the scales, then the nibbles in 4-byte chunks). */
typedef block_q4_0x8 block_iq4_nlx8;
_Static_assert(sizeof(block_iq4_nlx8) == PI_ROWS8 * sizeof(block_iq4_nl), "block_iq4_nlx8 size");

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

/* BF16: the top half of an f32. To f32 exactly; from f32 as ggml_compute_fp32_to_bf16 (and
 * gguf-py): round to nearest even, a NaN kept a quiet NaN (its top half with bit 6 set). */
typedef uint16_t pi_bf16;

static inline float pi_bf16_to_float(pi_bf16 h) { return pi_fp32_from_bits((uint32_t)h << 16); }

static inline pi_bf16 pi_float_to_bf16(float f) {
    const uint32_t w = pi_fp32_to_bits(f);
    if ((w & 0x7FFFFFFFu) > 0x7F800000u) return (pi_bf16)((w >> 16) | 64);
    return (pi_bf16)((w + 0x7FFFu + ((w >> 16) & 1)) >> 16);
}

#endif /* PI_BLOCKS_H */
