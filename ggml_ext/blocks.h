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

/* ---- the K-quants: super-blocks of 256 ------------------------------------------------------
 * Each unpacks (pi_k_scales, pi_q*_K_quants below) to x[e] = d * sc[e / 16] * q[e] - dmin *
 * m[e / 16], the types without mins having m = 0 and dmin = 0. Group g of 32 elements of a
 * 2- or 3-bit type is bits 2 (g % 4) .. 2 (g % 4) + 1 of qs[32 (g / 4) .. 32 (g / 4) + 31]; of a
 * 4- or 5-bit type, the low (g even) or high (g odd) nibbles of qs[32 (g / 2) ..]; a third or
 * fifth bit of element e is bit e / 32 of hmask[e % 32] (qh). */
#define QK_K 256

/* Q2_K: 16 groups of 16, x = d * sc_g * q - dmin * m_g with 4-bit sc_g, m_g and 2-bit q. */
typedef struct {
    uint8_t scales[QK_K / 16]; /* group g: sc_g in the low nibble, m_g in the high */
    uint8_t qs[QK_K / 4];      /* 2-bit quants (pi_q2_K_quants) */
    pi_half d;                 /* scale of the group scales */
    pi_half dmin;              /* scale of the group mins */
} block_q2_K;
_Static_assert(sizeof(block_q2_K) == QK_K / 16 + QK_K / 4 + 4, "block_q2_K size");

/* Q3_K: 16 groups of 16, x = d * (sc_g - 32) * (q - 4) with 6-bit sc_g and 3-bit q. */
typedef struct {
    uint8_t hmask[QK_K / 8]; /* third bits of the quants */
    uint8_t qs[QK_K / 4];    /* their low 2 bits, as Q2_K's */
    uint8_t scales[12];      /* sc_g packed in 6 bits (pi_q3_K_scale_words) */
    pi_half d;
} block_q3_K;
_Static_assert(sizeof(block_q3_K) == QK_K / 8 + QK_K / 4 + 12 + 2, "block_q3_K size");

/* Q4_K: 8 groups of 32, x = d * sc_g * q - dmin * m_g with 6-bit sc_g, m_g and 4-bit q. */
typedef struct {
    pi_half d;            /* scale of the group scales */
    pi_half dmin;         /* scale of the group mins */
    uint8_t scales[12];   /* sc_g, m_g packed in 6 bits (pi_q4_K_scale_words) */
    uint8_t qs[QK_K / 2]; /* 4 chunks of 64: byte l low nibble = element l, high = element l + 32 */
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 4 + 12 + QK_K / 2, "block_q4_K size");

/* Q5_K: Q4_K with 5-bit q: x = d * sc_g * q - dmin * m_g. */
typedef struct {
    pi_half d;
    pi_half dmin;
    uint8_t scales[12];   /* as Q4_K's */
    uint8_t qh[QK_K / 8]; /* fifth bits of the quants */
    uint8_t qs[QK_K / 2]; /* their low 4 bits, as Q4_K's */
} block_q5_K;
_Static_assert(sizeof(block_q5_K) == 4 + 12 + QK_K / 8 + QK_K / 2, "block_q5_K size");

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

/* A K-quant block's scale fields, unpacked: group g (of 16 elements for Q2_K, Q3_K and Q6_K, of
 * 32 for Q4_K and Q5_K, which use sc[0 .. 7] and m[0 .. 7]) has scale sc[g] and min m[g]; m and
 * dmin are 0 for the types without mins (Q3_K, Q6_K). */
typedef struct {
    pi_half d, dmin;
    int8_t sc[16], m[16];
} pi_k_scales;

/* Elements per scale, by type. */
enum { pi_q2_K_group = 16, pi_q3_K_group = 16, pi_q4_K_group = 32, pi_q5_K_group = 32, pi_q6_K_group = 16 };

/* The little-endian 32-bit word at p. */
static inline uint32_t pi_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Byte i of the little-endian words w (i < 4 * words). */
static inline uint8_t pi_word_byte(const uint32_t *w, int i) { return (uint8_t)(w[i / 4] >> (8 * (i % 4))); }

/* Q4_K's (and Q5_K's) 6-bit group scales and mins as 4 words of bytes (ggml's utmp): w[0], w[1]
 * hold sc[0..3], sc[4..7], w[2], w[3] m[0..3], m[4..7]. Groups 0-3 are the low 6 bits of bytes
 * 0-3 (scales) and 4-7 (mins) of s; groups 4-7 the nibbles of bytes 8-11 (low: scales, high:
 * mins) with their top 2 bits in the top bits of bytes 0-3 (scales) and 4-7 (mins). */
static inline void pi_q4_K_scale_words(const uint8_t s[12], uint32_t w[4]) {
    const uint32_t a = pi_le32(s), b = pi_le32(s + 4), c = pi_le32(s + 8);
    w[0] = a & 0x3F3F3F3Fu;
    w[1] = (c & 0x0F0F0F0Fu) | ((a >> 6) & 0x03030303u) << 4;
    w[2] = b & 0x3F3F3F3Fu;
    w[3] = ((c >> 4) & 0x0F0F0F0Fu) | ((b >> 6) & 0x03030303u) << 4;
}

/* Q3_K's 6-bit scales (sc + 32) as 4 words of bytes (ggml's aux), scale j in byte j: its low 4
 * bits the nibbles of bytes 0-7 of s (j < 8 low, j >= 8 high nibble of byte j - 8), its top 2
 * bits bits 2 (j / 4) .. 2 (j / 4) + 1 of byte 8 + j % 4. */
static inline void pi_q3_K_scale_words(const uint8_t s[12], uint32_t w[4]) {
    const uint32_t a = pi_le32(s), b = pi_le32(s + 4), c = pi_le32(s + 8);
    w[0] = (a & 0x0F0F0F0Fu) | (c & 0x03030303u) << 4;
    w[1] = (b & 0x0F0F0F0Fu) | ((c >> 2) & 0x03030303u) << 4;
    w[2] = ((a >> 4) & 0x0F0F0F0Fu) | ((c >> 4) & 0x03030303u) << 4;
    w[3] = ((b >> 4) & 0x0F0F0F0Fu) | ((c >> 6) & 0x03030303u) << 4;
}

/* Bit e / 32 of h[e % 32]: the third (Q3_K) or fifth (Q5_K) bit of element e. */
static inline int pi_k_high_bit(const uint8_t h[32], int e) { return (h[e % 32] >> (e / 32)) & 1; }

/* The 2-bit quants of Q2_K and Q3_K, element order: element 128 h + 32 j + l is bits 2j, 2j + 1
 * of qs[32 h + l]. */
static inline void pi_k_crumbs(const uint8_t qs[QK_K / 4], int8_t q[QK_K]) {
    for (int e = 0; e < QK_K; e++) q[e] = (int8_t)((qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3);
}

/* The 4-bit quants of Q4_K and Q5_K, element order (4 chunks of 64: byte l of a chunk's 32 holds
 * element l in its low nibble, element l + 32 in its high). */
static inline void pi_k_nibbles(const uint8_t qs[QK_K / 2], int8_t q[QK_K]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            q[64 * c + l] = (int8_t)(qs[32 * c + l] & 0x0F);
            q[64 * c + 32 + l] = (int8_t)(qs[32 * c + l] >> 4);
        }
}

/* Per type: the block's scale fields (pi_k_scales) and its 256 quants in element order with the
 * offset removed (Q2_K [0, 3], Q3_K [-4, 3], Q4_K [0, 15], Q5_K [0, 31], Q6_K [-32, 31]). */
static inline void pi_q2_K_unpack(const void *block, pi_k_scales *s) {
    const block_q2_K *b = block;
    s->d = b->d, s->dmin = b->dmin;
    for (int g = 0; g < 16; g++) s->sc[g] = (int8_t)(b->scales[g] & 0x0F), s->m[g] = (int8_t)(b->scales[g] >> 4);
}

static inline void pi_q2_K_quants(const void *block, int8_t q[QK_K]) {
    pi_k_crumbs(((const block_q2_K *)block)->qs, q);
}

static inline void pi_q3_K_unpack(const void *block, pi_k_scales *s) {
    const block_q3_K *b = block;
    uint32_t w[4];
    pi_q3_K_scale_words(b->scales, w);
    s->d = b->d, s->dmin = 0;
    for (int j = 0; j < 16; j++) s->sc[j] = (int8_t)(pi_word_byte(w, j) - 32), s->m[j] = 0;
}

static inline void pi_q3_K_quants(const void *block, int8_t q[QK_K]) {
    const block_q3_K *b = block;
    pi_k_crumbs(b->qs, q);
    for (int e = 0; e < QK_K; e++) q[e] = (int8_t)(q[e] - 4 * !pi_k_high_bit(b->hmask, e));
}

/* Q4_K and Q5_K: the same scale fields at the same place. */
static inline void pi_q4_K_unpack(const void *block, pi_k_scales *s) {
    const block_q4_K *b = block;
    uint32_t w[4];
    pi_q4_K_scale_words(b->scales, w);
    s->d = b->d, s->dmin = b->dmin;
    for (int g = 0; g < 16; g++) /* groups of 32: entries 8-15 unused */
        s->sc[g] = g < 8 ? (int8_t)pi_word_byte(w, g) : 0, s->m[g] = g < 8 ? (int8_t)pi_word_byte(w, 8 + g) : 0;
}

static inline void pi_q4_K_quants(const void *block, int8_t q[QK_K]) {
    pi_k_nibbles(((const block_q4_K *)block)->qs, q);
}

static inline void pi_q5_K_unpack(const void *block, pi_k_scales *s) { pi_q4_K_unpack(block, s); }

static inline void pi_q5_K_quants(const void *block, int8_t q[QK_K]) {
    const block_q5_K *b = block;
    pi_k_nibbles(b->qs, q);
    for (int e = 0; e < QK_K; e++) q[e] = (int8_t)(q[e] + 16 * pi_k_high_bit(b->qh, e));
}

static inline void pi_q6_K_unpack(const void *block, pi_k_scales *s) {
    const block_q6_K *b = block;
    s->d = b->d, s->dmin = 0;
    memcpy(s->sc, b->scales, sizeof s->sc);
    memset(s->m, 0, sizeof s->m);
}

/* Q6_K: in each half of 128, element l (l < 32) takes ql[l]'s low nibble and qh[l]'s bits 0-1,
 * l + 32 ql[l + 32]'s low nibble and bits 2-3, l + 64 ql[l]'s high nibble and bits 4-5, l + 96
 * ql[l + 32]'s high nibble and bits 6-7; minus 32. */
static inline void pi_q6_K_quants(const void *block, int8_t q[QK_K]) {
    const block_q6_K *b = block;
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
