/* kernels.c - the kernel entry points of pi.h: argument validation, ISA dispatch, threading, and
 * the portable scalar twins (the reference for every SIMD kernel in kernels_x86.c).
 *
 * Work split: pi_matvec / pi_matvec_masked split the (active) rows over the pool, in groups of
 * PI_KERNEL_ROWS rows that share the activation loads; pi_axpy_sparse splits the output columns
 * in whole blocks (no reduction: the result does not depend on the thread count);
 * pi_matvec_cols_sparse splits the output rows.
 *
 * Index lists may hold duplicates: pi_matvec_masked then computes that row more than once (same
 * value), pi_axpy_sparse and pi_matvec_cols_sparse add its term once per occurrence.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels.h"
#include "quants.h"
#include "threads.h"
#include "types.h"

/* ==== scalar twins ============================================================================ */

static inline float half(pi_half h) { return pi_half_to_float(h); }

/* One row . activation, per weight type; the integer sums per block are ggml's. */
static float dot_row_f32(int64_t n, const void *row, const void *act) {
    const float *w = row, *x = act;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += w[i] * x[i];
    return sum;
}

static float dot_row_f16(int64_t n, const void *row, const void *act) {
    const pi_half *w = row;
    const float *x = act;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += half(w[i]) * x[i];
    return sum;
}

static float dot_row_q8_0(int64_t n, const void *row, const void *act) {
    const block_q8_0 *w = row, *x = act;
    float sum = 0.0f;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += w[b].qs[j] * x[b].qs[j];
        sum += (float)sumi * (half(w[b].d) * half(x[b].d));
    }
    return sum;
}

/* y[c0..c1) += a * dequant(row)[c0..c1), per weight type (c0, c1 multiples of the block size). */
static void axpy_row_f32(int64_t c0, int64_t c1, const void *row, float a, float *y) {
    const float *w = row;
    for (int64_t c = c0; c < c1; c++) y[c] += a * w[c];
}

static void axpy_row_f16(int64_t c0, int64_t c1, const void *row, float a, float *y) {
    const pi_half *w = row;
    for (int64_t c = c0; c < c1; c++) y[c] += a * half(w[c]);
}

static void axpy_row_q8_0(int64_t c0, int64_t c1, const void *row, float a, float *y) {
    const block_q8_0 *w = row;
    for (int64_t b = c0 / QK8_0; b < c1 / QK8_0; b++) {
        const float s = a * half(w[b].d);
        float *yb = y + b * QK8_0;
        for (int j = 0; j < QK8_0; j++) yb[j] += s * (float)w[b].qs[j];
    }
}

/* The 4- and 5-bit types: QUANT(w, j) is quant j of block w, OFF the _0 types' offset (ggml's
 * x ~ d (q - OFF)); the _1 types have a min instead (x ~ d q + m), whose dot term is m times the
 * Q8_1 activation's s. */
#define Q4_QUANT(w, j) ((j) < 16 ? (w).qs[j] & 0x0F : (w).qs[(j) - 16] >> 4)
#define Q5_QUANT(w, j) pi_q5_quant((w).qh, (w).qs, j)
#define OFFSET_TWINS(T, QUANT, OFF)                                                             \
    static float dot_row_##T(int64_t n, const void *row, const void *act) {                     \
        const block_##T *w = row;                                                               \
        const block_q8_0 *x = act;                                                              \
        float sum = 0.0f;                                                                       \
        for (int64_t b = 0; b < n / 32; b++) {                                                  \
            int sumi = 0;                                                                       \
            for (int j = 0; j < 32; j++) sumi += (QUANT(w[b], j) - (OFF)) * x[b].qs[j];        \
            sum += (float)sumi * (half(w[b].d) * half(x[b].d));                                 \
        }                                                                                       \
        return sum;                                                                             \
    }                                                                                           \
    static void axpy_row_##T(int64_t c0, int64_t c1, const void *row, float a, float *y) {      \
        const block_##T *w = row;                                                               \
        for (int64_t b = c0 / 32; b < c1 / 32; b++) {                                           \
            const float s = a * half(w[b].d);                                                   \
            for (int j = 0; j < 32; j++) y[b * 32 + j] += s * (float)(QUANT(w[b], j) - (OFF));  \
        }                                                                                       \
    }
#define MIN_TWINS(T, QUANT)                                                                     \
    static float dot_row_##T(int64_t n, const void *row, const void *act) {                     \
        const block_##T *w = row;                                                               \
        const block_q8_1 *x = act;                                                              \
        float sum = 0.0f;                                                                       \
        for (int64_t b = 0; b < n / 32; b++) {                                                  \
            int sumi = 0;                                                                       \
            for (int j = 0; j < 32; j++) sumi += QUANT(w[b], j) * x[b].qs[j];                  \
            sum += (half(w[b].d) * half(x[b].d)) * (float)sumi + half(w[b].m) * half(x[b].s);   \
        }                                                                                       \
        return sum;                                                                             \
    }                                                                                           \
    static void axpy_row_##T(int64_t c0, int64_t c1, const void *row, float a, float *y) {      \
        const block_##T *w = row;                                                               \
        for (int64_t b = c0 / 32; b < c1 / 32; b++) {                                           \
            const float s = a * half(w[b].d), m = a * half(w[b].m);                             \
            for (int j = 0; j < 32; j++) y[b * 32 + j] += s * (float)QUANT(w[b], j) + m;        \
        }                                                                                       \
    }
OFFSET_TWINS(q4_0, Q4_QUANT, 8)
OFFSET_TWINS(q5_0, Q5_QUANT, 16)
MIN_TWINS(q4_1, Q4_QUANT)
MIN_TWINS(q5_1, Q5_QUANT)
#undef OFFSET_TWINS
#undef MIN_TWINS
#undef Q4_QUANT
#undef Q5_QUANT

/* ---- the 8-row kernels over the rows8 layout (see pi_dot8_fn) ---- */

/* ggml's hsum of 8 f32 lanes (see pi_kernels). */
static inline float hsum_lanes(const float l[8]) {
    const float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    return (a0 + a2) + (a1 + a3);
}

/* Integer sum of elements 4k .. 4k + 3 of row r in an interleaved Q4/Q5 block (quants minus
 * `offset`) times the activation block x. Lanes 0-3 are low nibbles, 4-7 high nibbles; qh is the
 * row's fifth bits (element e's in bit e), 0 for Q4. */
static int lane_sum_nib8(const uint8_t qs[128], uint32_t qh, int r, int k, int offset, const int8_t x[32]) {
    int s = 0;
    for (int j = 0; j < 4; j++) {
        const int q = qs[32 * (k % 4) + 4 * r + j], e = 4 * k + j;
        s += ((k < 4 ? q & 0x0F : q >> 4) + (int)((qh >> e) & 1) * 16 - offset) * x[e];
    }
    return s;
}

static int lane_sum_q8x8(const int8_t qs[256], int r, int k, const int8_t x[32]) {
    int s = 0;
    for (int j = 0; j < 4; j++) s += qs[32 * k + 4 * r + j] * x[4 * k + j];
    return s;
}

/* The 4- and 5-bit 8-row kernels: QH(w, r) is row r's fifth bits in block w, OFF as in
 * OFFSET_TWINS; the _1 types add m times the activation's s per block, as dot_row_q4_1. */
#define Q4_QH(w, r) 0u
#define Q5_QH(w, r) ((uint32_t)(w).qh[0][r] | (uint32_t)(w).qh[1][r] << 16)
#define OFFSET_DOT8(T, QH, OFF)                                                                 \
    static void dot8_##T(int64_t n, const void *group, const void *act, float out[8]) {         \
        const block_##T##x8 *w = group;                                                         \
        const block_q8_0 *x = act;                                                              \
        for (int r = 0; r < PI_ROWS8; r++) {                                                    \
            float l[8] = {0};                                                                   \
            for (int64_t b = 0; b < n / 32; b++) {                                              \
                const float d = half(w[b].d[r]) * half(x[b].d);                                 \
                for (int k = 0; k < 8; k++)                                                     \
                    l[k] = fmaf(d, (float)lane_sum_nib8(w[b].qs, QH(w[b], r), r, k, OFF, x[b].qs), l[k]); \
            }                                                                                   \
            out[r] = hsum_lanes(l);                                                             \
        }                                                                                       \
    }
#define MIN_DOT8(T, QH)                                                                         \
    static void dot8_##T(int64_t n, const void *group, const void *act, float out[8]) {         \
        const block_##T##x8 *w = group;                                                         \
        const block_q8_1 *x = act;                                                              \
        for (int r = 0; r < PI_ROWS8; r++) {                                                    \
            float l[8] = {0}, summ = 0.0f;                                                      \
            for (int64_t b = 0; b < n / 32; b++) {                                              \
                const float d = half(w[b].d[r]) * half(x[b].d);                                 \
                for (int k = 0; k < 8; k++)                                                     \
                    l[k] = fmaf(d, (float)lane_sum_nib8(w[b].qs, QH(w[b], r), r, k, 0, x[b].qs), l[k]); \
                summ += half(w[b].m[r]) * half(x[b].s);                                         \
            }                                                                                   \
            out[r] = hsum_lanes(l) + summ;                                                      \
        }                                                                                       \
    }
OFFSET_DOT8(q4_0, Q4_QH, 8)
OFFSET_DOT8(q5_0, Q5_QH, 16)
MIN_DOT8(q4_1, Q4_QH)
MIN_DOT8(q5_1, Q5_QH)
#undef OFFSET_DOT8
#undef MIN_DOT8
#undef Q4_QH
#undef Q5_QH

static void dot8_q8_0(int64_t n, const void *group, const void *act, float out[8]) {
    const block_q8_0x8 *w = group;
    const block_q8_0 *x = act;
    for (int r = 0; r < PI_ROWS8; r++) {
        float l[8] = {0};
        for (int64_t b = 0; b < n / QK8_0; b++) {
            const float d = half(w[b].d[r]) * half(x[b].d);
            for (int k = 0; k < 8; k++) l[k] = fmaf(d, (float)lane_sum_q8x8(w[b].qs, r, k, x[b].qs), l[k]);
        }
        out[r] = hsum_lanes(l);
    }
}

/* ---- the K-quants against Q8_K ---- */

/* The dots in ggml's x86 order (ggml_vec_dot_q*_K_q8_K on AVX2): per block, 8 exact integer lane
 * sums, lane k taking elements 4k .. 4k + 3 of every group of 32 times their scale;
 * lane k += (d_x * d_w) * lane sum by fused multiply-add, block after block; then ggml's hsum,
 * with the mins' term in the type's order (pi_k_mins). The SIMD twins compute the same bits. */
static inline int k_lane(int e) { return (e & 31) >> 2; }

static float dot_row_k(const pi_k_format *f, pi_k_mins mins, int64_t n, const void *row,
                       const void *act) {
    const block_q8_K *x = act;
    float l[8] = {0}, lm[4] = {0}, summ = 0.0f;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const void *wb = (const uint8_t *)row + (size_t)b * f->block_bytes;
        pi_k_scales s;
        int8_t q[QK_K];
        f->unpack(wb, &s);
        f->quants(wb, q);
        int32_t lane[8] = {0}, mlane[8] = {0}, msum = 0;
        for (int e = 0; e < QK_K; e++) lane[k_lane(e)] += s.sc[e / f->group] * q[e] * x[b].qs[e];
        for (int j = 0; j < 16; j++) mlane[j / 2] += s.m[16 * j / f->group] * x[b].bsums[j];
        for (int k = 0; k < 8; k++) msum += mlane[k];
        const float d = x[b].d * half(s.d), dmin = -x[b].d * half(s.dmin);
        if (mins == K_MINS_8)
            for (int k = 0; k < 8; k++) l[k] = fmaf(dmin, (float)mlane[k], l[k]);
        if (mins == K_MINS_4)
            for (int p = 0; p < 4; p++) lm[p] = fmaf(dmin, (float)(mlane[2 * p] + mlane[2 * p + 1]), lm[p]);
        if (mins == K_MINS_1) summ = fmaf(dmin, (float)msum, summ);
        for (int k = 0; k < 8; k++) l[k] = fmaf(d, (float)lane[k], l[k]);
    }
    const float sum = hsum_lanes(l);
    if (mins == K_MINS_4) return sum + ((lm[0] + lm[2]) + (lm[1] + lm[3]));
    if (mins == K_MINS_1) return sum + summ;
    return sum;
}

/* y[c] = fmaf(a, w[c], y[c]) over the row's dequantized blocks of block_elems (<= QK_K) (the
 * SIMD twins: the same bits). */
static void axpy_row_blocks(void (*dequantize)(const void *, float *, int64_t), int64_t block_elems,
                            size_t block_bytes, int64_t c0, int64_t c1, const void *row, float a,
                            float *y) {
    for (int64_t b = c0 / block_elems; b < c1 / block_elems; b++) {
        float w[QK_K];
        dequantize((const uint8_t *)row + (size_t)b * block_bytes, w, block_elems);
        for (int j = 0; j < block_elems; j++) y[b * block_elems + j] = fmaf(a, w[j], y[b * block_elems + j]);
    }
}

static void axpy_row_k(void (*dequantize)(const void *, float *, int64_t), size_t block_bytes,
                       int64_t c0, int64_t c1, const void *row, float a, float *y) {
    axpy_row_blocks(dequantize, QK_K, block_bytes, c0, c1, row, a, y);
}

#define K_ROW_TWINS(T, MINS)                                                                    \
    static float dot_row_##T(int64_t n, const void *row, const void *act) {                     \
        return dot_row_k(&pi_k_##T, MINS, n, row, act);                                         \
    }                                                                                           \
    static void axpy_row_##T(int64_t c0, int64_t c1, const void *row, float a, float *y) {      \
        axpy_row_k(pi_dequantize_##T, sizeof(block_##T), c0, c1, row, a, y);                    \
    }
K_ROW_TWINS(q2_K, K_MINS_8)
K_ROW_TWINS(q3_K, K_MINS_NONE)
K_ROW_TWINS(q4_K, K_MINS_4)
K_ROW_TWINS(q5_K, K_MINS_1)
K_ROW_TWINS(q6_K, K_MINS_NONE)
#undef K_ROW_TWINS

/* ---- IQ4_NL against Q8_0, IQ4_XS against Q8_K, BF16 against x as it is ---- */

/* The exact integer lane sums of 32 IQ4 nibbles (an IQ4_NL block, an IQ4_XS sub-block) times
 * 32 activation quants, scaled by ls: lane k += ls * (elements 4k .. 4k + 3). */
static void iq4_lanes(const uint8_t qs[16], const int8_t x[32], int ls, int32_t lane[8]) {
    for (int j = 0; j < 32; j++) lane[j / 4] += ls * pi_iq4_value(qs, j) * x[j];
}

/* IQ4_NL's float steps in ggml's AVX2 order (ggml_vec_dot_iq4_nl_q8_0): the blocks of whole
 * pairs go into two sets of 8 lanes (accum1: even blocks, accum2: odd), lane k += d * (integer
 * sum of the block's elements 4k .. 4k + 3) by fused multiply-add, d = d_w * d_x; the sets are
 * added lane by lane and summed as ggml's hsum; an odd last block then adds d * its integer sum
 * (ggml's scalar tail). The SIMD twins and the rows8 kernels compute the same bits. */
typedef struct {
    float l[2][8];
    float tail;   /* the odd last block's d * sum */
    int has_tail;
} iq4_nl_sum;

static void iq4_nl_add(iq4_nl_sum *s, int64_t b, int64_t nb, float d, const int32_t lane[8]) {
    if (b < (nb & ~(int64_t)1)) {
        for (int k = 0; k < 8; k++) s->l[b % 2][k] = fmaf(d, (float)lane[k], s->l[b % 2][k]);
        return;
    }
    int32_t t = 0;
    for (int k = 0; k < 8; k++) t += lane[k];
    s->tail = d * (float)t;
    s->has_tail = 1;
}

static float iq4_nl_total(const iq4_nl_sum *s) {
    float l[8];
    for (int k = 0; k < 8; k++) l[k] = s->l[0][k] + s->l[1][k];
    const float sum = hsum_lanes(l);
    return s->has_tail ? sum + s->tail : sum;
}

static float dot_row_iq4_nl(int64_t n, const void *row, const void *act) {
    const block_iq4_nl *w = row;
    const block_q8_0 *x = act;
    const int64_t nb = n / QK4_NL;
    iq4_nl_sum s = {0};
    for (int64_t b = 0; b < nb; b++) {
        int32_t lane[8] = {0};
        iq4_lanes(w[b].qs, x[b].qs, 1, lane);
        iq4_nl_add(&s, b, nb, half(w[b].d) * half(x[b].d), lane);
    }
    return iq4_nl_total(&s);
}

/* The rows8 twin: row r's lanes from the interleaved block (chunk c's low nibbles are lane c,
 * its high nibbles lane 4 + c, as in lane_sum_nib8). */
static void dot8_iq4_nl(int64_t n, const void *group, const void *act, float out[8]) {
    const block_iq4_nlx8 *w = group;
    const block_q8_0 *x = act;
    const int64_t nb = n / QK4_NL;
    for (int r = 0; r < PI_ROWS8; r++) {
        iq4_nl_sum s = {0};
        for (int64_t b = 0; b < nb; b++) {
            uint8_t qs[16]; /* row r's plain nibbles */
            for (int c = 0; c < 4; c++) memcpy(qs + 4 * c, w[b].qs + 32 * c + 4 * r, 4);
            int32_t lane[8] = {0};
            iq4_lanes(qs, x[b].qs, 1, lane);
            iq4_nl_add(&s, b, nb, half(w[b].d[r]) * half(x[b].d), lane);
        }
        out[r] = iq4_nl_total(&s);
    }
}

/* IQ4_XS in ggml's AVX2 order (ggml_vec_dot_iq4_xs_q8_K), as the K-quants: per block 8 exact
 * integer lane sums over its sub-blocks (times their scales), lane k += (d_w * d_x) * lane sum
 * by fused multiply-add, block after block, then ggml's hsum. */
static float dot_row_iq4_xs(int64_t n, const void *row, const void *act) {
    const block_iq4_xs *w = row;
    const block_q8_K *x = act;
    float l[8] = {0};
    for (int64_t b = 0; b < n / QK_K; b++) {
        int32_t lane[8] = {0};
        for (int s = 0; s < QK_K / 32; s++) iq4_lanes(w[b].qs + 16 * s, x[b].qs + 32 * s, pi_iq4_xs_scale(&w[b], s), lane);
        const float d = half(w[b].d) * x[b].d;
        for (int k = 0; k < 8; k++) l[k] = fmaf(d, (float)lane[k], l[k]);
    }
    return hsum_lanes(l);
}

static void axpy_row_iq4_nl(int64_t c0, int64_t c1, const void *row, float a, float *y) {
    axpy_row_blocks(pi_dequantize_iq4_nl, QK4_NL, sizeof(block_iq4_nl), c0, c1, row, a, y);
}

static void axpy_row_iq4_xs(int64_t c0, int64_t c1, const void *row, float a, float *y) {
    axpy_row_k(pi_dequantize_iq4_xs, sizeof(block_iq4_xs), c0, c1, row, a, y);
}

/* BF16 with x in f32 (not rounded to BF16 first, as ggml's vec_dot_bf16 takes it): element i
 * into lane i % 8 by fused multiply-add, ggml's hsum of the lanes, then the n % 8 last elements
 * by fused multiply-add in order. The AXPY: y[c] = fmaf(a, w[c], y[c]). The SIMD twins compute
 * the same bits. */
static float dot_row_bf16(int64_t n, const void *row, const void *act) {
    const pi_bf16 *w = row;
    const float *x = act;
    const int64_t n8 = n / 8 * 8;
    float l[8] = {0};
    for (int64_t i = 0; i < n8; i++) l[i % 8] = fmaf(pi_bf16_to_float(w[i]), x[i], l[i % 8]);
    float sum = hsum_lanes(l);
    for (int64_t i = n8; i < n; i++) sum = fmaf(pi_bf16_to_float(w[i]), x[i], sum);
    return sum;
}

static void axpy_row_bf16(int64_t c0, int64_t c1, const void *row, float a, float *y) {
    const pi_bf16 *w = row;
    for (int64_t c = c0; c < c1; c++) y[c] = fmaf(a, pi_bf16_to_float(w[c]), y[c]);
}

/* The activation quantizers of the integer dots: ggml-cpu's x86 quantize_row_q8_0/q8_1 (the
 * path llama.cpp runs on AVX/AVX2/AVX-512), which differ from the reference format quantizer
 * pi_quantize_q8_* (quants.c) in two roundings: id = 127 / amax (not 1 / d) and round half to even
 * (not half away from zero). Same format; the SIMD twins compute the same bits. */
static float quantize_act_block(const float *x, int8_t qs[32], int *sum) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float ax = fabsf(x[j]);
        amax = amax > ax ? amax : ax;
    }
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int s = 0;
    for (int j = 0; j < 32; j++) {
        qs[j] = (int8_t)nearbyintf(x[j] * id); /* default rounding mode: half to even */
        s += qs[j];
    }
    *sum = s;
    return amax / 127.0f;
}

static void quantize_act_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        int sum;
        y[b].d = pi_float_to_half(quantize_act_block(x + b * QK8_0, y[b].qs, &sum));
    }
}

static void quantize_act_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / QK8_1; b++) {
        int sum;
        const float d = quantize_act_block(x + b * QK8_1, y[b].qs, &sum);
        y[b].d = pi_float_to_half(d);
        y[b].s = pi_float_to_half((float)sum * d);
    }
}

/* ---- attention and SwiGLU in llama.cpp's order (see pi_kernels) ---- */

/* ggml's AVX2 ggml_v_expf: 2^n + 2^n p(r), one fused multiply-add. */
static float expf_ggml8(float x) {
    union { float f; uint32_t u; } z, k, s1, s2;
    const float shift = 0x1.8p23f;                     /* z = n + shift: n = round(x / ln 2) */
    z.f = fmaf(x, 0x1.715476p+0f, shift);
    const float n = z.f - shift;
    const float r = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x)); /* x - n ln 2 */
    const uint32_t e = z.u << 23;
    k.u = e + 0x3f800000u;                              /* 2^n */
    const float r2 = r * r;
    const float poly = fmaf(fmaf(fmaf(0x1.0e4020p-7f, r, 0x1.573e2ep-5f), r2,
                                 fmaf(0x1.555e66p-3f, r, 0x1.fffdb6p-2f)),
                            r2, 0x1.ffffecp-1f * r);    /* e^r - 1 */
    if (!(fabsf(n) > 126)) return fmaf(k.f, poly, k.f);
    /* 2^n out of range: scale in two steps, or flush to 0 / inf */
    const uint32_t g = n <= 0 ? 0x82000000u : 0;
    s1.u = g + 0x7f000000u;
    s2.u = e - g;
    if (fabsf(n) > 192) return s1.f * s1.f;
    return fmaf(s2.f, poly, s2.f) * s1.f;
}

/* 2^e as a float, for -126 <= e <= 127. */
static float pow2f(int e) {
    union { float f; uint32_t u; } v;
    v.u = (uint32_t)(e + 127) << 23;
    return v.f;
}

/* ggml's AVX-512 ggml_v_expf: 1 + p(r) rounded, then vscalefps by 2^n (one rounding, to a
 * subnormal or inf where the result lies there: 2^n in two exact factors out of range). */
static float expf_ggml16(float x) {
    const float shift = 0x1.8p23f;
    const float n = fmaf(x, 0x1.715476p+0f, shift) - shift;
    const float r = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    if (fabsf(n) > 192) return n <= 0 ? 0.0f : INFINITY;
    const float r2 = r * r;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, r, 0x1.573e2ep-5f), r2,
                              fmaf(0x1.555e66p-3f, r, 0x1.fffdb6p-2f)),
                         r2, fmaf(0x1.ffffecp-1f, r, 1.0f)); /* e^r */
    if (n != n) return j;                                    /* NaN */
    const int e = (int)n;
    if (e < -126) return j * pow2f(e + 100) * pow2f(-100);   /* the first product is exact */
    if (e > 127) return j * pow2f(e - 100) * pow2f(100);
    return j * pow2f(e);
}

float pi_expf_ggml(int lanes, float x) { return lanes == 16 ? expf_ggml16(x) : expf_ggml8(x); }

/* ggml's hsum of `lanes` f32 lanes (see pi_kernels): 16 folded to 8, then 8 as hsum_lanes. */
static float hsum_n(const float *l, int lanes) {
    if (lanes != 16) return hsum_lanes(l);
    float h[8];
    for (int j = 0; j < 8; j++) h[j] = l[j] + l[j + 8];
    return hsum_lanes(h);
}

/* sum a[i] * b[i] for i < n, a f16, in lanes i % lanes (lanes <= 16). */
static float dot_f16_lanes(int lanes, const pi_half *a, const float *b, int n) {
    float l[16] = {0};
    for (int i = 0; i < n; i++) l[i % lanes] = fmaf(half(a[i]), b[i], l[i % lanes]);
    return hsum_n(l, lanes);
}

void pi_attn_scores_ref(int lanes, int n_pos, int hd, const pi_half *k, int64_t ldk, const float *q,
                        float scale, float *s) {
    for (int p = 0; p < n_pos; p++) s[p] = dot_f16_lanes(lanes, k + (size_t)p * ldk, q, hd) * scale;
}

double pi_softmax_exp_ref(int lanes, int n, float *x, float max) {
    double sum = 0;
    for (int i0 = 0; i0 < n; i0 += lanes) {
        float l[16] = {0};
        for (int i = i0; i < i0 + lanes && i < n; i++) l[i - i0] = x[i] = pi_expf_ggml(lanes, x[i] - max);
        sum += hsum_n(l, lanes);
    }
    return sum;
}

void pi_attn_values_ref(int lanes, int n_pos, int hd, const pi_half *vt, int64_t ldv, const float *p,
                        float *out) {
    for (int i = 0; i < hd; i++) out[i] = dot_f16_lanes(lanes, vt + (size_t)i * ldv, p, n_pos);
}

void pi_glu_ref(int lanes, int act, int64_t n, const float *g, float *u) {
    float (*const f)(float) = pi_act_fn(lanes, act);
    for (int64_t i = 0; i < n; i++) u[i] *= f(g[i]);
}

void pi_act_ref(int lanes, int act, int64_t n, float *x) {
    float (*const f)(float) = pi_act_fn(lanes, act);
    for (int64_t i = 0; i < n; i++) x[i] = f(x[i]);
}

/* The scalar table: llama.cpp's AVX2 build (8 lanes). */
static void attn_scores_scalar(int n_pos, int hd, const pi_half *k, int64_t ldk, const float *q,
                               float scale, float *s) {
    pi_attn_scores_ref(8, n_pos, hd, k, ldk, q, scale, s);
}

static double softmax_exp_scalar(int n, float *x, float max) { return pi_softmax_exp_ref(8, n, x, max); }

static void attn_values_scalar(int n_pos, int hd, const pi_half *vt, int64_t ldv, const float *p,
                               float *out) {
    pi_attn_values_ref(8, n_pos, hd, vt, ldv, p, out);
}

const pi_act_desc pi_acts[PI_N_ACTS] = {
    [PI_ACT_SILU] = {"silu", pi_silu_ref, pi_silu16_ref, 0},
    [PI_ACT_RELU] = {"relu", pi_relu_ref, pi_relu_ref, 1},
    /* GELU is not llama.cpp's (an f16 table there): one form for every table */
    [PI_ACT_GELU_TANH] = {"gelu_tanh", pi_gelu_tanh_ref, pi_gelu_tanh_ref, 0},
};

/* The scalar glu and act kernels of one activation. */
#define ACT_TWINS(name, kind)                                                                   \
    static void glu_##name(int64_t n, const float *g, float *u) { pi_glu_ref(8, kind, n, g, u); } \
    static void act_##name(int64_t n, float *x) { pi_act_ref(8, kind, n, x); }
ACT_TWINS(silu, PI_ACT_SILU)
ACT_TWINS(relu, PI_ACT_RELU)
ACT_TWINS(gelu_tanh, PI_ACT_GELU_TANH)
#undef ACT_TWINS

static void to_f16_scalar(int64_t n, const float *x, pi_half *y) {
    for (int64_t i = 0; i < n; i++) y[i] = pi_float_to_half(x[i]);
}

static void round_f16_scalar(int64_t n, float *x) {
    for (int64_t i = 0; i < n; i++) x[i] = half(pi_float_to_half(x[i]));
}

static int64_t select_scalar(int64_t n, const float *v, float thr, int absval, int32_t *idx) {
    return pi_select_ref(0, n, v, thr, absval, idx, 0);
}

static void rope_scalar(int n_rot, int neox, const float *cs, float *v) { pi_rope_ref(0, n_rot, neox, cs, v); }

/* The table entries: the single-row kernels applied to each of the nr rows. */
#define SCALAR_TWINS(T)                                                                         \
    static void dot_##T(int64_t n, const void *const rows[], int nr, const void *act,           \
                        float *out) {                                                           \
        for (int r = 0; r < nr; r++) out[r] = dot_row_##T(n, rows[r], act);                     \
    }                                                                                           \
    static void axpy_##T(int64_t c0, int64_t c1, const void *const rows[], const float *a,      \
                         int nr, float *y) {                                                    \
        for (int r = 0; r < nr; r++) axpy_row_##T(c0, c1, rows[r], a[r], y);                    \
    }
SCALAR_TWINS(f32)
SCALAR_TWINS(f16)
SCALAR_TWINS(q4_0)
SCALAR_TWINS(q4_1)
SCALAR_TWINS(q5_0)
SCALAR_TWINS(q5_1)
SCALAR_TWINS(q8_0)
SCALAR_TWINS(q2_K)
SCALAR_TWINS(q3_K)
SCALAR_TWINS(q4_K)
SCALAR_TWINS(q5_K)
SCALAR_TWINS(q6_K)
SCALAR_TWINS(iq4_nl)
SCALAR_TWINS(iq4_xs)
SCALAR_TWINS(bf16)
#undef SCALAR_TWINS

const pi_kernels pi_kernels_scalar = {
    .name = "scalar",
    .lanes = 8,
    .dot = {[PI_TYPE_IQ4_NL] = dot_iq4_nl, [PI_TYPE_IQ4_XS] = dot_iq4_xs, [PI_TYPE_BF16] = dot_bf16,
            [PI_TYPE_F32] = dot_f32, [PI_TYPE_F16] = dot_f16, [PI_TYPE_Q4_0] = dot_q4_0,
            [PI_TYPE_Q4_1] = dot_q4_1, [PI_TYPE_Q5_0] = dot_q5_0, [PI_TYPE_Q5_1] = dot_q5_1,
            [PI_TYPE_Q8_0] = dot_q8_0, [PI_TYPE_Q2_K] = dot_q2_K, [PI_TYPE_Q3_K] = dot_q3_K,
            [PI_TYPE_Q4_K] = dot_q4_K, [PI_TYPE_Q5_K] = dot_q5_K, [PI_TYPE_Q6_K] = dot_q6_K},
    .dot8 = {[PI_TYPE_IQ4_NL] = dot8_iq4_nl,
             [PI_TYPE_Q4_0] = dot8_q4_0, [PI_TYPE_Q4_1] = dot8_q4_1, [PI_TYPE_Q5_0] = dot8_q5_0,
             [PI_TYPE_Q5_1] = dot8_q5_1, [PI_TYPE_Q8_0] = dot8_q8_0},
    .axpy = {[PI_TYPE_IQ4_NL] = axpy_iq4_nl, [PI_TYPE_IQ4_XS] = axpy_iq4_xs, [PI_TYPE_BF16] = axpy_bf16,
             [PI_TYPE_F32] = axpy_f32, [PI_TYPE_F16] = axpy_f16, [PI_TYPE_Q4_0] = axpy_q4_0,
             [PI_TYPE_Q4_1] = axpy_q4_1, [PI_TYPE_Q5_0] = axpy_q5_0, [PI_TYPE_Q5_1] = axpy_q5_1,
             [PI_TYPE_Q8_0] = axpy_q8_0, [PI_TYPE_Q2_K] = axpy_q2_K, [PI_TYPE_Q3_K] = axpy_q3_K,
             [PI_TYPE_Q4_K] = axpy_q4_K, [PI_TYPE_Q5_K] = axpy_q5_K, [PI_TYPE_Q6_K] = axpy_q6_K},
    .quantize_act = {[PI_TYPE_Q8_0] = quantize_act_q8_0, [PI_TYPE_Q8_1] = quantize_act_q8_1,
                     [PI_TYPE_Q8_K] = pi_quantize_q8_K /* ggml-cpu's x86 one is the reference */},
    .attn_scores = attn_scores_scalar,
    .softmax_exp = softmax_exp_scalar,
    .attn_values = attn_values_scalar,
    .glu = {[PI_ACT_SILU] = glu_silu, [PI_ACT_RELU] = glu_relu, [PI_ACT_GELU_TANH] = glu_gelu_tanh},
    .act = {[PI_ACT_SILU] = act_silu, [PI_ACT_RELU] = act_relu, [PI_ACT_GELU_TANH] = act_gelu_tanh},
    .to_f16 = to_f16_scalar,
    .round_f16 = round_f16_scalar,
    .select = select_scalar,
    .rope = rope_scalar,
};

/* ==== ISA selection =========================================================================== */

static const pi_kernels *table_of(int isa) {
    switch (isa) {
#if defined(__x86_64__)
    case PI_ISA_AVX512: return &pi_kernels_avx512;
    case PI_ISA_AVX2: return &pi_kernels_avx2;
#endif
    case PI_ISA_SCALAR: return &pi_kernels_scalar;
    default: return NULL;
    }
}

static int active_isa = -1; /* -1: not chosen yet, i.e. pi_isa_best() */

int pi_isa_best(void) {
    if (table_of(PI_ISA_AVX512) && pi_cpu_has_isa(PI_ISA_AVX512)) return PI_ISA_AVX512;
    if (table_of(PI_ISA_AVX2) && pi_cpu_has_isa(PI_ISA_AVX2)) return PI_ISA_AVX2;
    return PI_ISA_SCALAR;
}

int pi_isa_get(void) {
    const int isa = __atomic_load_n(&active_isa, __ATOMIC_ACQUIRE);
    return isa < 0 ? pi_isa_best() : isa;
}

int pi_isa_set(int isa) {
    if (!table_of(isa))
        return pi_fail(PI_ERR_ISA, "pi_isa_set: unknown instruction set %d", isa);
    if (!pi_cpu_has_isa(isa))
        return pi_fail(PI_ERR_ISA, "pi_isa_set: %s is not available on this CPU/OS",
                       table_of(isa)->name);
    __atomic_store_n(&active_isa, isa, __ATOMIC_RELEASE);
    return pi_ok();
}

static const pi_kernels *active_kernels(void) { return table_of(pi_isa_get()); }

const pi_kernels *pi_kernels_active(void) { return active_kernels(); }

/* ==== validation ============================================================================== */

/* A validated weight matrix: its type's row and its row bytes. */
typedef struct {
    const pi_type_traits *t;
    size_t row_bytes;
} matrix_info;

/* Checks type and shape and fills *m. */
static int check_matrix(const char *fn, int type, int64_t n_rows, int64_t n_cols, matrix_info *m) {
    *m = (matrix_info){.t = pi_type_traits_of(type)};
    if (!m->t || !m->t->weight) {
        char list[128];
        pi_type_list(pi_type_is_weight, list, sizeof list);
        return pi_fail(PI_ERR_TYPE, "%s: type %d (%s) is not supported (%s)", fn, type,
                       pi_type_name(type), list);
    }
    if (n_rows <= 0 || n_cols <= 0)
        return pi_fail(PI_ERR_SHAPE, "%s: n_rows = %lld, n_cols = %lld must be positive", fn,
                       (long long)n_rows, (long long)n_cols);
    if (n_cols % m->t->block_elems)
        return pi_fail(PI_ERR_SHAPE, "%s: n_cols = %lld is not a multiple of the %s block size %lld",
                       fn, (long long)n_cols, m->t->name, (long long)m->t->block_elems);
    m->row_bytes = (size_t)pi_type_row_bytes(m->t, n_cols);
    return PI_OK;
}

/* idx: [n_idx] all in [0, limit), n_idx in [0, limit]. */
static int check_idx(const char *fn, const int32_t *idx, int64_t n_idx, int64_t limit) {
    if (n_idx < 0 || n_idx > limit)
        return pi_fail(PI_ERR_RANGE, "%s: n_idx = %lld out of range [0, %lld]", fn,
                       (long long)n_idx, (long long)limit);
    for (int64_t k = 0; k < n_idx; k++)
        if (idx[k] < 0 || idx[k] >= limit)
            return pi_fail(PI_ERR_RANGE, "%s: idx[%lld] = %d out of range [0, %lld)", fn,
                           (long long)k, (int)idx[k], (long long)limit);
    return PI_OK;
}

/* A batch of n_tok activations written to rows of stride ldy >= n_rows. */
static int check_batch(const char *fn, int64_t n_tok, int64_t ldy, int64_t n_rows) {
    if (n_tok <= 0 || ldy < n_rows)
        return pi_fail(PI_ERR_SHAPE, "%s: n_tok = %lld must be positive and ldy = %lld >= n_rows = %lld",
                       fn, (long long)n_tok, (long long)ldy, (long long)n_rows);
    return PI_OK;
}

/* ==== scratch for the quantized activation ===================================================== */

/* A per-thread buffer that only grows (kept for the thread's lifetime): no malloc per call. */
static _Thread_local void *scratch_buf;
static _Thread_local size_t scratch_cap;

static void *scratch(size_t bytes) {
    if (bytes > scratch_cap) {
        const size_t cap = (bytes + 4095) & ~(size_t)4095;
        void *p = aligned_alloc(64, cap);
        if (!p) return NULL;
        free(scratch_buf);
        scratch_buf = p;
        scratch_cap = cap;
    }
    return scratch_buf;
}

/* The activations x [n_tok][n] as the weight type's dot wants them (see pi_dot_fn): x itself
 * when its act_type is F32, else quantized to the act_type once into the scratch buffer from byte
 * `at` on (the bytes before it are kept: they hold an activation prepared earlier); *act_bytes is
 * the stride of one row. */
static int prepare_activations(const char *fn, const pi_kernels *K, int type, const float *x,
                               int64_t n, int64_t n_tok, size_t at, const void **act,
                               size_t *act_bytes) {
    const int act_type = pi_type_traits_of(type)->act_type;
    if (act_type == PI_TYPE_F32) {
        *act = x;
        *act_bytes = (size_t)n * sizeof(float);
        return PI_OK;
    }
    const size_t row = (size_t)pi_type_row_bytes(pi_type_traits_of(act_type), n);
    if (at && scratch_cap < at + row * (size_t)n_tok)
        return pi_fail(PI_ERR_NOMEM, "%s: activation scratch not reserved", fn);
    uint8_t *buf = scratch(at + row * (size_t)n_tok);
    if (!buf)
        return pi_fail(PI_ERR_NOMEM, "%s: cannot allocate %zu bytes for the quantized activation",
                       fn, row * (size_t)n_tok);
    buf += at;
    for (int64_t t = 0; t < n_tok; t++) K->quantize_act[act_type](x + t * n, buf + (size_t)t * row, n);
    *act = buf;
    *act_bytes = row;
    return PI_OK;
}

/* ==== prefetch ================================================================================ */

/* Rows fetched ahead of use: in a gather (active rows are not contiguous, so the hardware
 * prefetchers cannot follow) and in a dense pass over plain rows too (each thread walks
 * PI_KERNEL_ROWS rows at once; without it plain q8_0 ran at 4 GB/s with 2 threads, with it 22). */
#ifndef PI_PREFETCH_ROWS
#define PI_PREFETCH_ROWS (2 * PI_KERNEL_ROWS)
#endif

static inline void prefetch_bytes(const void *p, size_t bytes) {
    const uintptr_t end = (uintptr_t)p + bytes;
    for (uintptr_t line = (uintptr_t)p & ~(uintptr_t)63; line < end; line += 64)
        __builtin_prefetch((const void *)line, 0, 3);
}

/* ==== the jobs ================================================================================ */

typedef struct {
    pi_dot_fn dot;
    pi_dot8_fn dot8;       /* rows8 matmat: the 8-row kernel (the tail rows use dot) */
    pi_axpy_fn axpy;
    const uint8_t *W;      /* [n_rows][row_bytes] */
    size_t row_bytes;
    int64_t n_cols, block_elems, block_bytes;
    const void *act;       /* matvec: the prepared activations [n_tok][act_bytes] */
    size_t act_bytes;
    int64_t n_tok;         /* matvec: activations per row group (1 but for pi_matmat) */
    int64_t ldy;           /* matvec: stride of y between activations */
    const float *a;        /* axpy: [n_rows] activations */
    const int32_t *idx;    /* [n_items] rows, or NULL for all rows in order (dense) */
    int64_t n_items;
    float *y;
    const uint8_t *W2;     /* masked pair: a second matrix shaped as W (up beside gate), or NULL */
    float *y2;             /* masked pair: its output */
    int keep_y;            /* masked: leave the rows not in idx as they are (pi_matvec_rows) */
} job;

static inline int64_t item_row(const job *j, int64_t i) { return j->idx ? j->idx[i] : i; }
static inline const void *row_ptr(const job *j, int64_t row) { return j->W + (size_t)row * j->row_bytes; }

/* Prefetches bytes [off, off + len) of the rows of items [i0, i1). */
static inline void prefetch_items(const job *j, int64_t i0, int64_t i1, size_t off, size_t len) {
    for (int64_t i = i0; i < i1; i++) prefetch_bytes((const uint8_t *)row_ptr(j, item_row(j, i)) + off, len);
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Masked pair: items [begin, end) of j->idx, each the same row of W and W2, two items (four
 * rows) per kernel call. */
static void masked_pair_items(const job *j, int64_t begin, int64_t end) {
    enum { ITEMS = PI_KERNEL_ROWS / 2 };
    for (int64_t i = begin; i < end; i += ITEMS) {
        const int ni = (int)min64(ITEMS, end - i);
        for (int64_t k = i + PI_PREFETCH_ROWS / 2; k < min64(i + PI_PREFETCH_ROWS / 2 + ni, end); k++) {
            prefetch_bytes(row_ptr(j, j->idx[k]), j->row_bytes);
            prefetch_bytes(j->W2 + (size_t)j->idx[k] * j->row_bytes, j->row_bytes);
        }
        const void *rows[PI_KERNEL_ROWS];
        float out[PI_KERNEL_ROWS];
        for (int k = 0; k < ni; k++) {
            rows[2 * k] = row_ptr(j, j->idx[i + k]);
            rows[2 * k + 1] = j->W2 + (size_t)j->idx[i + k] * j->row_bytes;
        }
        j->dot(j->n_cols, rows, 2 * ni, j->act, out);
        for (int k = 0; k < ni; k++) {
            j->y[j->idx[i + k]] = out[2 * k];
            j->y2[j->idx[i + k]] = out[2 * k + 1];
        }
    }
}

static void masked_pair_task(void *arg, int ith, int nth) {
    const job *j = arg;
    int64_t begin, end;
    pi_split(j->n_items, PI_KERNEL_ROWS / 2, ith, nth, &begin, &end);
    masked_pair_items(j, begin, end);
}

/* Dense or masked matvec of items [begin, end), PI_KERNEL_ROWS rows per kernel call, the rows
 * PI_PREFETCH_ROWS ahead prefetched. */
static void matvec_items(const job *j, int64_t begin, int64_t end) {
    prefetch_items(j, begin, min64(begin + PI_PREFETCH_ROWS, end), 0, j->row_bytes);
    for (int64_t i = begin; i < end; i += PI_KERNEL_ROWS) {
        const int nr = (int)min64(PI_KERNEL_ROWS, end - i);
        prefetch_items(j, i + PI_PREFETCH_ROWS, min64(i + PI_PREFETCH_ROWS + nr, end), 0, j->row_bytes);
        const void *rows[PI_KERNEL_ROWS];
        float out[PI_KERNEL_ROWS];
        for (int r = 0; r < nr; r++) rows[r] = row_ptr(j, item_row(j, i + r));
        for (int64_t t = 0; t < j->n_tok; t++) {
            j->dot(j->n_cols, rows, nr, (const uint8_t *)j->act + (size_t)t * j->act_bytes, out);
            for (int r = 0; r < nr; r++) j->y[t * j->ldy + item_row(j, i + r)] = out[r];
        }
    }
}

/* Dense and masked matvec: this thread's items. */
static void matvec_task(void *arg, int ith, int nth) {
    const job *j = arg;
    if (j->W2) {
        masked_pair_task(arg, ith, nth);
        return;
    }
    int64_t begin, end;
    pi_split(j->n_items, PI_KERNEL_ROWS, ith, nth, &begin, &end);
    matvec_items(j, begin, end);
}

/* One rows8 group for n_tok tokens: out + t * ldo [8] = the group's rows . act + t * act_bytes,
 * by dot8n (each weight block unpacked once for several tokens) where the table has it, else
 * dot8 token by token; the same bits either way. */
static void group_tokens(pi_dot8_fn dot8, pi_dot8n_fn dot8n, int64_t n, const void *group,
                         const void *act, size_t act_bytes, int64_t n_tok, float *out, int64_t ldo) {
    if (dot8n && n_tok > 1) {
        dot8n(n, group, act, act_bytes, n_tok, out, ldo);
        return;
    }
    for (int64_t t = 0; t < n_tok; t++)
        dot8(n, group, (const uint8_t *)act + (size_t)t * act_bytes, out + t * ldo);
}

/* Dense matmat over the rows8 layout, for one or several matrices that share the activations:
 * all their whole groups form one range split over the pool (all tokens of a group while its
 * weights are in L1); the last thread also takes the plain tail rows. */
typedef struct {
    pi_dot_fn dot;
    pi_dot8_fn dot8;
    pi_dot8n_fn dot8n;  /* several tokens per unpacked block, or NULL: dot8 token by token */
    const pi_rows8_out *outs;
    int n_outs;
    int64_t n_groups;   /* whole groups of all outputs */
    int64_t n_cols;
    size_t row_bytes;
    const void *act;    /* [n_tok][act_bytes] */
    size_t act_bytes;
    int64_t n_tok;
} rows8_job;

static void rows8_task(void *arg, int ith, int nth) {
    const rows8_job *j = arg;
    int64_t g0, g1;
    pi_split(j->n_groups, 1, ith, nth, &g0, &g1);
    int o = 0;
    int64_t base = 0; /* first global group of output o */
    for (int64_t g = g0; g < g1; g++) {
        while (g - base >= j->outs[o].n_rows / PI_ROWS8) base += j->outs[o++].n_rows / PI_ROWS8;
        const pi_rows8_out *p = &j->outs[o];
        const int64_t lg = g - base;
        const uint8_t *group = (const uint8_t *)p->Wp + (size_t)lg * PI_ROWS8 * j->row_bytes;
        group_tokens(j->dot8, j->dot8n, j->n_cols, group, j->act, j->act_bytes, j->n_tok,
                     p->Y + lg * PI_ROWS8, p->ldy);
    }
    if (ith != nth - 1) return;
    for (int k = 0; k < j->n_outs; k++) {
        const pi_rows8_out *p = &j->outs[k];
        for (int64_t r = p->n_rows / PI_ROWS8 * PI_ROWS8; r < p->n_rows; r++) {
            const void *row = (const uint8_t *)p->Wp + (size_t)r * j->row_bytes;
            for (int64_t t = 0; t < j->n_tok; t++)
                j->dot(j->n_cols, &row, 1, (const uint8_t *)j->act + (size_t)t * j->act_bytes,
                       p->Y + t * p->ldy + r);
        }
    }
}

/* y[c0 .. c1) = sum over all items of a[idx] * row idx (c0, c1 multiples of the block size). */
static void axpy_columns(const job *j, int64_t c0, int64_t c1) {
    memset(j->y + c0, 0, (size_t)(c1 - c0) * sizeof(float));
    const size_t off = (size_t)(c0 / j->block_elems * j->block_bytes);
    const size_t len = (size_t)((c1 - c0) / j->block_elems * j->block_bytes);
    const int64_t n = j->n_items;
    prefetch_items(j, 0, min64(PI_PREFETCH_ROWS, n), off, len);
    for (int64_t i = 0; i < n; i += PI_KERNEL_ROWS) {
        const int nr = (int)min64(PI_KERNEL_ROWS, n - i);
        prefetch_items(j, i + PI_PREFETCH_ROWS, min64(i + PI_PREFETCH_ROWS + nr, n), off, len);
        const void *rows[PI_KERNEL_ROWS];
        float a[PI_KERNEL_ROWS];
        for (int r = 0; r < nr; r++) {
            rows[r] = row_ptr(j, j->idx[i + r]);
            a[r] = j->a[j->idx[i + r]];
        }
        j->axpy(c0, c1, rows, a, nr, j->y);
    }
}

/* Sparse AXPY: this thread's columns, over all items. */
static void axpy_task(void *arg, int ith, int nth) {
    const job *j = arg;
    const int64_t align = j->block_elems > 1 ? j->block_elems : 16; /* whole blocks / cache lines */
    int64_t c0, c1;
    pi_split(j->n_cols, align, ith, nth, &c0, &c1);
    if (c0 < c1) axpy_columns(j, c0, c1);
}

typedef struct {
    float (*elem)(const void *row, int64_t c); /* the type's element reader (types.h) */
    const uint8_t *W;   /* [n_rows][row_bytes] */
    size_t row_bytes;
    int64_t n_rows;
    const float *a;     /* [n_cols] */
    const int32_t *idx; /* [n_idx] columns */
    int64_t n_idx;
    float *y;           /* [n_rows] */
} cols_job;

/* The strided-gather ablation: per output row, one dequantized element per active column. */
static void cols_sparse_task(void *arg, int ith, int nth) {
    const cols_job *j = arg;
    int64_t r0, r1;
    pi_split(j->n_rows, 16, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = j->W + (size_t)r * j->row_bytes;
        float sum = 0.0f;
        for (int64_t k = 0; k < j->n_idx; k++) sum += j->elem(row, j->idx[k]) * j->a[j->idx[k]];
        j->y[r] = sum;
    }
}

/* ==== entry points ============================================================================ */

/* Runs the dense, masked or masked-pair job the caller filled (W, W2, idx, n_items, y, y2,
 * n_cols, n_tok, ldy) over validated arguments; masked outputs are zeroed first. */
static int matvec_run(const char *fn, pi_pool *pool, int type, const matrix_info *m,
                      int64_t n_rows, const float *x, job *j) {
    const pi_kernels *K = active_kernels();
    j->dot = K->dot[type];
    j->row_bytes = m->row_bytes;
    if (j->idx && !j->keep_y) memset(j->y, 0, (size_t)n_rows * sizeof(float));
    if (j->y2) memset(j->y2, 0, (size_t)n_rows * sizeof(float));
    if (j->n_items == 0) return pi_ok();
    const int st = prepare_activations(fn, K, type, x, j->n_cols, j->n_tok, 0, &j->act, &j->act_bytes);
    if (st) return st;
    pi_pool_run(pool, matvec_task, j);
    return pi_ok();
}

int pi_matvec(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
              const float *x, float *y) {
    PI_CHECK_NULL(W);
    PI_CHECK_NULL(x);
    PI_CHECK_NULL(y);
    matrix_info m;
    const int st = check_matrix(__func__, type, n_rows, n_cols, &m);
    if (st) return st;
    job j = {.W = W, .n_cols = n_cols, .n_items = n_rows, .y = y, .n_tok = 1, .ldy = n_rows};
    return matvec_run(__func__, pool, type, &m, n_rows, x, &j);
}

int pi_matmat(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
              const float *X, int64_t n_tok, float *Y, int64_t ldy) {
    PI_CHECK_NULL(W);
    PI_CHECK_NULL(X);
    PI_CHECK_NULL(Y);
    matrix_info m;
    int st = check_matrix(__func__, type, n_rows, n_cols, &m);
    if (st) return st;
    if ((st = check_batch(__func__, n_tok, ldy, n_rows))) return st;
    job j = {.W = W, .n_cols = n_cols, .n_items = n_rows, .y = Y, .n_tok = n_tok, .ldy = ldy};
    return matvec_run(__func__, pool, type, &m, n_rows, X, &j);
}

int pi_matmat_rows8_multi(pi_pool *pool, int type, int64_t n_cols, const float *X, int64_t n_tok,
                          const pi_rows8_out *outs, int n_outs) {
    static const char fn[] = "pi_matmat_rows8";
    PI_CHECK_NULL(X);
    PI_CHECK_NULL(outs);
    if (n_outs <= 0) return pi_fail(PI_ERR_RANGE, "%s: %d outputs", fn, n_outs);
    rows8_job j = {.outs = outs, .n_outs = n_outs, .n_cols = n_cols, .n_tok = n_tok};
    matrix_info m = {0};
    int st;
    for (int k = 0; k < n_outs; k++) {
        if (!outs[k].Wp || !outs[k].Y) return pi_fail(PI_ERR_NULL, "%s: Wp or Y is NULL", fn);
        if ((st = check_matrix(fn, type, outs[k].n_rows, n_cols, &m))) return st;
        if ((st = check_batch(fn, n_tok, outs[k].ldy, outs[k].n_rows))) return st;
        j.n_groups += outs[k].n_rows / PI_ROWS8;
    }
    const pi_kernels *K = active_kernels();
    if (!K->dot8[type]) return pi_fail_rows8(fn, type);
    j.dot = K->dot[type];
    j.dot8 = K->dot8[type];
    j.dot8n = K->dot8n[type];
    j.row_bytes = m.row_bytes;
    if ((st = prepare_activations(fn, K, type, X, n_cols, n_tok, 0, &j.act, &j.act_bytes))) return st;
    pi_pool_run(pool, rows8_task, &j);
    return pi_ok();
}

int pi_matmat_rows8(pi_pool *pool, int type, const void *Wp, int64_t n_rows, int64_t n_cols,
                    const float *X, int64_t n_tok, float *Y, int64_t ldy) {
    PI_CHECK_NULL(Wp);
    PI_CHECK_NULL(Y);
    const pi_rows8_out out = {.Wp = Wp, .n_rows = n_rows, .Y = Y, .ldy = ldy};
    return pi_matmat_rows8_multi(pool, type, n_cols, X, n_tok, &out, 1);
}

/* pi_matvec_masked, and with W2 / y2 the pair (pi_matvec_masked_pair): validated here. */
static int masked_run(const char *fn, pi_pool *pool, int type, const void *W, const void *W2,
                      int64_t n_rows, int64_t n_cols, const float *x, const int32_t *idx,
                      int64_t n_idx, float *y, float *y2, int zero) {
    if (!W || !x || !idx || !y)
        return pi_fail(PI_ERR_NULL, "%s: argument '%s' is NULL", fn, !W ? "W" : !x ? "x" : !idx ? "idx" : "y");
    matrix_info m;
    int st = check_matrix(fn, type, n_rows, n_cols, &m);
    if (st) return st;
    if ((st = check_idx(fn, idx, n_idx, n_rows))) return st;
    job j = {.W = W, .W2 = W2, .n_cols = n_cols, .idx = idx, .n_items = n_idx, .y = y, .y2 = y2,
             .n_tok = 1, .ldy = n_rows, .keep_y = !zero};
    return matvec_run(fn, pool, type, &m, n_rows, x, &j);
}

int pi_matvec_masked(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
                     const float *x, const int32_t *idx, int64_t n_idx, float *y) {
    return masked_run(__func__, pool, type, W, NULL, n_rows, n_cols, x, idx, n_idx, y, NULL, 1);
}

int pi_matvec_masked_pair(pi_pool *pool, int type, const void *W, const void *W2, int64_t n_rows,
                          int64_t n_cols, const float *x, const int32_t *idx, int64_t n_idx,
                          float *y, float *y2) {
    if (!W2 || !y2) return pi_fail(PI_ERR_NULL, "%s: argument '%s' is NULL", __func__, !W2 ? "W2" : "y2");
    return masked_run(__func__, pool, type, W, W2, n_rows, n_cols, x, idx, n_idx, y, y2, 1);
}

int pi_axpy_sparse(pi_pool *pool, int type, const void *Wt, int64_t n_rows, int64_t n_cols,
                   const float *a, const int32_t *idx, int64_t n_idx, float *y) {
    PI_CHECK_NULL(Wt);
    PI_CHECK_NULL(a);
    PI_CHECK_NULL(idx);
    PI_CHECK_NULL(y);
    matrix_info m;
    int st = check_matrix(__func__, type, n_rows, n_cols, &m);
    if (st) return st;
    if ((st = check_idx(__func__, idx, n_idx, n_rows))) return st;
    const job j = {.axpy = active_kernels()->axpy[type], .W = Wt, .row_bytes = m.row_bytes,
                   .n_cols = n_cols, .block_elems = m.t->block_elems, .block_bytes = m.t->block_bytes,
                   .a = a, .idx = idx, .n_items = n_idx, .y = y};
    pi_pool_run(pool, axpy_task, (void *)&j);
    return pi_ok();
}

/* ==== several tokens over the union of their rows ============================================= *
 * A step of several tokens reads each sparse row once for all the tokens that use it: the
 * tokens' ascending row lists are walked together, chunk after chunk of their union, and each
 * token makes, in order, the kernel calls of its own list alone (the same groups of rows, so the
 * same bits: an AXPY call's rows share their float order and, for some types, an offset folded
 * per call). A chunk's rows, read from memory by the first token that uses them, stay in cache
 * while the others use them. */

/* One token's list in a union walk: its rows idx[0 .. n), ascending, and the next item to take. */
typedef struct {
    int32_t *idx;
    int64_t n, next;
} walk_list;

/* The kernel calls of a walk and what they read. Token t's activation is act + t * act_bytes;
 * its outputs Y[t] (and Y2[t]), its AXPY coefficients A[t]. */
typedef struct walk {
    const uint8_t *W, *W2;      /* the rows walked: [n_rows][row_bytes] (W2: up beside gate, or NULL) */
    size_t row_bytes, off, len; /* bytes [off, off + len) of each row are read */
    int group;                  /* items per kernel call, as the one-token job takes them */
    void (*call)(const struct walk *w, int t, const int32_t *items, int nr);
    pi_dot_fn dot;
    pi_axpy_fn axpy;
    int64_t n_cols, c0, c1;     /* dot: the row length; AXPY: the columns [c0, c1) */
    const uint8_t *act;
    size_t act_bytes;
    float *const *Y, *const *Y2;
    const float *const *A;
} walk;

/* matvec_items' call: Y[t][row] = row . act of token t. */
static void walk_dot(const walk *w, int t, const int32_t *items, int nr) {
    const void *rows[PI_KERNEL_ROWS] = {0};
    float out[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) rows[r] = w->W + (size_t)items[r] * w->row_bytes;
    w->dot(w->n_cols, rows, nr, w->act + (size_t)t * w->act_bytes, out);
    for (int r = 0; r < nr; r++) w->Y[t][items[r]] = out[r];
}

/* masked_pair_items' call: each item's row of W and of W2, two items per call. */
static void walk_pair(const walk *w, int t, const int32_t *items, int nr) {
    const void *rows[PI_KERNEL_ROWS] = {0};
    float out[PI_KERNEL_ROWS];
    for (int k = 0; k < nr; k++) {
        rows[2 * k] = w->W + (size_t)items[k] * w->row_bytes;
        rows[2 * k + 1] = w->W2 + (size_t)items[k] * w->row_bytes;
    }
    w->dot(w->n_cols, rows, 2 * nr, w->act + (size_t)t * w->act_bytes, out);
    for (int k = 0; k < nr; k++) {
        w->Y[t][items[k]] = out[2 * k];
        w->Y2[t][items[k]] = out[2 * k + 1];
    }
}

/* axpy_columns' call: Y[t][c0 .. c1) += sum_r A[t][row r] * row r. */
static void walk_axpy(const walk *w, int t, const int32_t *items, int nr) {
    const void *rows[PI_KERNEL_ROWS];
    float a[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) {
        rows[r] = w->W + (size_t)items[r] * w->row_bytes;
        a[r] = w->A[t][items[r]];
    }
    w->axpy(w->c0, w->c1, rows, a, nr, w->Y[t]);
}

/* The bytes of union rows a chunk reads (it and the chunk before it stay in L2). */
#define PI_UNION_CHUNK_BYTES 16384

static void prefetch_union(const walk *w, const int32_t *un, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; u++) {
        prefetch_bytes(w->W + (size_t)un[u] * w->row_bytes + w->off, w->len);
        if (w->W2) prefetch_bytes(w->W2 + (size_t)un[u] * w->row_bytes + w->off, w->len);
    }
}

/* Walks the lists L[0 .. n_tok) (from their `next` items) over their union un [n_un], ascending:
 * chunk after chunk, token after token, every group of w->group consecutive items (counted from
 * the list's first item) whose last row lies before the next chunk goes to w->call; the last
 * chunk takes what is left. The next chunk's rows are prefetched as a chunk starts. */
static void union_walk(const walk *w, const int32_t *un, int64_t n_un, walk_list *L, int n_tok) {
    const size_t row = w->len * (w->W2 ? 2 : 1);
    const int64_t chunk = row * PI_ROWS8 >= PI_UNION_CHUNK_BYTES ? PI_ROWS8 : (int64_t)(PI_UNION_CHUNK_BYTES / row);
    prefetch_union(w, un, 0, min64(chunk, n_un));
    for (int64_t u0 = 0;; u0 += chunk) {
        const int64_t u1 = min64(u0 + chunk, n_un);
        prefetch_union(w, un, u1, min64(u1 + chunk, n_un));
        const int64_t end = u1 < n_un ? un[u1] : INT64_MAX; /* rows below end: this chunk or before */
        for (int t = 0; t < n_tok; t++) {
            walk_list *l = &L[t];
            while (l->next < l->n) {
                const int nr = (int)min64(w->group, l->n - l->next);
                if (l->idx[l->next + nr - 1] >= end) break;
                w->call(w, t, l->idx + l->next, nr);
                l->next += nr;
            }
        }
        if (u1 >= n_un) break;
    }
}

/* The union of the lists' items from `next` on, all in [lo, hi): ascending, in un (room for
 * hi - lo); mark[lo .. hi) is all 0 before and after. One list is its own union. */
static const int32_t *union_of(const walk_list *L, int n_tok, int64_t lo, int64_t hi, uint8_t *mark,
                               int32_t *un, int64_t *n_un) {
    if (n_tok == 1) {
        *n_un = L[0].n - L[0].next;
        return L[0].idx + L[0].next;
    }
    for (int t = 0; t < n_tok; t++)
        for (int64_t k = L[t].next; k < L[t].n; k++) mark[L[t].idx[k]] = 1;
    int64_t n = 0;
    for (int64_t i = lo; i < hi; i++) { /* branch-free */
        un[n] = (int32_t)i;
        n += mark[i];
        mark[i] = 0;
    }
    *n_un = n;
    return un;
}

int64_t pi_union_count(int n_tok, const int32_t *const idx[], const int64_t n_idx[], uint8_t *mark) {
    int64_t n = 0;
    for (int t = 0; t < n_tok; t++)
        for (int64_t k = 0; k < n_idx[t]; k++) {
            n += !mark[idx[t][k]];
            mark[idx[t][k]] = 1;
        }
    for (int t = 0; t < n_tok; t++)
        for (int64_t k = 0; k < n_idx[t]; k++) mark[idx[t][k]] = 0;
    return n;
}

/* The union kernels' common checks: the pointers, n_tok, the matrix, each list in range and
 * strictly ascending; fills L (from item 0) and the union. */
static int union_args(const char *fn, int type, const void *W, int64_t n_rows, int64_t n_cols, int n_tok,
                      const void *x, const int32_t *const idx[], const int64_t n_idx[], float *const Y[],
                      uint8_t *mark, int32_t *un, matrix_info *m, walk_list *L, const int32_t **u,
                      int64_t *n_un) {
    if (!W || !x || !idx || !n_idx || !Y || !mark || !un)
        return pi_fail(PI_ERR_NULL, "%s: a weight, input, list or buffer is NULL", fn);
    if (n_tok < 1 || n_tok > PI_UNION_MAX_TOK)
        return pi_fail(PI_ERR_RANGE, "%s: n_tok = %d out of range [1, %d]", fn, n_tok, PI_UNION_MAX_TOK);
    int st = check_matrix(fn, type, n_rows, n_cols, m);
    if (st) return st;
    for (int t = 0; t < n_tok; t++) {
        if (!idx[t] || !Y[t]) return pi_fail(PI_ERR_NULL, "%s: token %d: idx or Y is NULL", fn, t);
        if ((st = check_idx(fn, idx[t], n_idx[t], n_rows))) return st;
        for (int64_t k = 1; k < n_idx[t]; k++)
            if (idx[t][k] <= idx[t][k - 1])
                return pi_fail(PI_ERR_RANGE, "%s: token %d: idx is not ascending at %lld", fn, t, (long long)k);
        L[t] = (walk_list){.idx = (int32_t *)idx[t], .n = n_idx[t]};
    }
    *u = union_of(L, n_tok, 0, n_rows, mark, un, n_un);
    return PI_OK;
}

/* The first item of the ascending v [n] not below x. */
static int64_t lower_bound(const int32_t *v, int64_t n, int64_t x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

typedef struct {
    walk w;
    walk_list L[PI_UNION_MAX_TOK];
    int n_tok;
    const int32_t *un;
    int64_t n_un, block_elems, block_bytes;
} union_job;

/* Masked: this share's part of the union (whole groups), each token's items in it. */
static void masked_union_task(void *arg, int ith, int nth) {
    const union_job *j = arg;
    int64_t u0, u1;
    pi_split(j->n_un, PI_KERNEL_ROWS, ith, nth, &u0, &u1);
    if (u0 >= u1) return;
    const int64_t lo = j->un[u0], hi = u1 < j->n_un ? j->un[u1] : INT64_MAX;
    walk_list L[PI_UNION_MAX_TOK];
    for (int t = 0; t < j->n_tok; t++) {
        const int64_t b = lower_bound(j->L[t].idx, j->L[t].n, lo), e = lower_bound(j->L[t].idx, j->L[t].n, hi);
        L[t] = (walk_list){.idx = j->L[t].idx + b, .n = e - b};
    }
    union_walk(&j->w, j->un + u0, u1 - u0, L, j->n_tok);
}

/* AXPY: this share's columns (axpy_task's split), every token's whole list. */
static void axpy_union_task(void *arg, int ith, int nth) {
    const union_job *j = arg;
    const int64_t align = j->block_elems > 1 ? j->block_elems : 16;
    int64_t c0, c1;
    pi_split(j->w.n_cols, align, ith, nth, &c0, &c1);
    if (c0 >= c1) return;
    walk w = j->w;
    w.c0 = c0;
    w.c1 = c1;
    w.off = (size_t)(c0 / j->block_elems * j->block_bytes);
    w.len = (size_t)((c1 - c0) / j->block_elems * j->block_bytes);
    walk_list L[PI_UNION_MAX_TOK];
    for (int t = 0; t < j->n_tok; t++) {
        memset(w.Y[t] + c0, 0, (size_t)(c1 - c0) * sizeof(float));
        L[t] = j->L[t];
    }
    union_walk(&w, j->un, j->n_un, L, j->n_tok);
}

int pi_matvec_masked_union(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
                           int n_tok, const float *X, const int32_t *const idx[], const int64_t n_idx[],
                           float *const Y[], uint8_t *mark, int32_t *un) {
    static const char fn[] = "pi_matvec_masked_union";
    union_job j = {.n_tok = n_tok};
    matrix_info m;
    int st = union_args(fn, type, W, n_rows, n_cols, n_tok, X, idx, n_idx, Y, mark, un, &m, j.L, &j.un, &j.n_un);
    if (st) return st;
    for (int t = 0; t < n_tok; t++) memset(Y[t], 0, (size_t)n_rows * sizeof(float));
    if (!j.n_un) return pi_ok();
    const pi_kernels *K = active_kernels();
    j.w = (walk){.W = W, .row_bytes = m.row_bytes, .len = m.row_bytes, .group = PI_KERNEL_ROWS,
                 .call = walk_dot, .dot = K->dot[type], .n_cols = n_cols, .Y = Y};
    const void *act;
    if ((st = prepare_activations(fn, K, type, X, n_cols, n_tok, 0, &act, &j.w.act_bytes))) return st;
    j.w.act = act;
    pi_pool_run(pool, masked_union_task, &j);
    return pi_ok();
}

int pi_axpy_sparse_union(pi_pool *pool, int type, const void *Wt, int64_t n_rows, int64_t n_cols,
                         int n_tok, const float *const A[], const int32_t *const idx[],
                         const int64_t n_idx[], float *const Y[], uint8_t *mark, int32_t *un) {
    static const char fn[] = "pi_axpy_sparse_union";
    union_job j = {.n_tok = n_tok};
    matrix_info m;
    int st = union_args(fn, type, Wt, n_rows, n_cols, n_tok, A, idx, n_idx, Y, mark, un, &m, j.L, &j.un, &j.n_un);
    if (st) return st;
    for (int t = 0; t < n_tok; t++)
        if (!A[t]) return pi_fail(PI_ERR_NULL, "%s: token %d: A is NULL", fn, t);
    j.w = (walk){.W = Wt, .row_bytes = m.row_bytes, .group = PI_KERNEL_ROWS, .call = walk_axpy,
                 .axpy = active_kernels()->axpy[type], .n_cols = n_cols, .Y = Y, .A = A};
    j.block_elems = m.t->block_elems;
    j.block_bytes = m.t->block_bytes;
    pi_pool_run(pool, axpy_union_task, &j);
    return pi_ok();
}

/* ---- the sparse FFN of one or several tokens (pi_ffn_sparse) ---- */

typedef struct {
    pi_ffn_sparse_args *a;
    pi_dot8_fn fc2_dot8;
    pi_dot8n_fn fc2_dot8n;
    pi_dot_fn fc2_dot;
    size_t fc2_row_bytes;
    const uint8_t *hq;       /* h as fc2's dot wants it: [n_tok][hq_bytes] */
    size_t hq_bytes;
    walk gu;                 /* the masked pair over gate and up (x as the dot wants it, Y = g, Y2 = u) */
    walk down;               /* the AXPY over down_t, all d columns (A = u; Y set per share) */
    float *g[PI_UNION_MAX_TOK], *u[PI_UNION_MAX_TOK];
    int64_t (*counts)[5];    /* [n shares]: picks, down rows, gate, up and down_t rows read */
} ffn_job;

static void ffn_sparse_task(void *arg, int ith, int nth) {
    ffn_job *j = arg;
    pi_ffn_sparse_args *a = j->a;
    const int nt = (int)a->n_tok;
    const pi_kernels *K = active_kernels();
    int64_t n0, n1;
    pi_split(a->n_ff, PI_ROWS8, ith, nth, &n0, &n1);
    /* the predictor's logits of this range: rows8 groups then the plain tail rows, or plain rows
     * PI_KERNEL_ROWS at a time (f16/f32 predictors, as PowerInfer's); each group for every token */
    const uint8_t *fc2 = a->fc2;
    int64_t r = n0;
    if (a->fc2_rows8)
        for (; r + PI_ROWS8 <= n1; r += PI_ROWS8)
            group_tokens(j->fc2_dot8, j->fc2_dot8n, a->rank, fc2 + (size_t)r * j->fc2_row_bytes, j->hq,
                         j->hq_bytes, nt, a->logit + r, a->n_ff);
    for (; r < n1; r += PI_KERNEL_ROWS) {
        const void *rows[PI_KERNEL_ROWS];
        const int nr = (int)min64(PI_KERNEL_ROWS, n1 - r);
        for (int k = 0; k < nr; k++) rows[k] = fc2 + (size_t)(r + k) * j->fc2_row_bytes;
        for (int t = 0; t < nt; t++)
            j->fc2_dot(a->rank, rows, nr, j->hq + (size_t)t * j->hq_bytes, a->logit + (size_t)t * a->n_ff + r);
    }
    walk_list L[PI_UNION_MAX_TOK];
    int64_t picked = 0, kept = 0, n_gate, n_up, n_down;
    for (int t = 0; t < nt; t++) { /* this range's picks, in token t's own part of idx */
        memset(j->g[t] + n0, 0, (size_t)(n1 - n0) * sizeof(float));
        memset(j->u[t] + n0, 0, (size_t)(n1 - n0) * sizeof(float));
        int32_t *idx = a->idx + (size_t)t * a->n_ff + n0;
        const int64_t n = K->select(n1 - n0, a->logit + (size_t)t * a->n_ff + n0, a->thr, 0, idx);
        for (int64_t k = 0; k < n; k++) idx[k] += (int32_t)n0;
        L[t] = (walk_list){.idx = idx, .n = n};
        picked += n;
    }
    const int32_t *un = union_of(L, nt, n0, n1, a->mark, a->un + n0, &n_gate);
    n_up = n_gate;
    if (pi_acts[a->act].exact_zeros) {
        /* ReLU: the gate rows first, then the up rows of the neurons that fire only (a pick whose
         * gate is <= 0 adds nothing; predictors pick two to three times the neurons that fire) */
        walk gate = j->gu;
        gate.W2 = NULL;
        gate.group = PI_KERNEL_ROWS;
        gate.call = walk_dot;
        union_walk(&gate, un, n_gate, L, nt);
        float (*const act)(float) = pi_act_fn(K->lanes, a->act);
        for (int t = 0; t < nt; t++) {
            int64_t n = 0;
            for (int64_t k = 0; k < L[t].n; k++) { /* branch-free, in order */
                const int32_t i = L[t].idx[k];
                L[t].idx[n] = i;
                n += act(j->g[t][i]) != 0.0f;
            }
            L[t] = (walk_list){.idx = L[t].idx, .n = n};
        }
        un = union_of(L, nt, n0, n1, a->mark, a->un + n0, &n_up);
        walk up = gate;
        up.W = a->up;
        up.Y = j->u;
        union_walk(&up, un, n_up, L, nt);
    } else {
        union_walk(&j->gu, un, n_gate, L, nt);
    }
    float *y[PI_UNION_MAX_TOK]; /* this share's sums: share 0's into y, the others' into partial */
    for (int t = 0; t < nt; t++) {
        L[t].n = pi_down_input(K->lanes, a->act, j->g[t], j->u[t], L[t].idx, L[t].n);
        L[t].next = 0;
        kept += L[t].n;
        y[t] = ith ? a->partial + ((size_t)(ith - 1) * (size_t)nt + (size_t)t) * a->d : a->y + (size_t)t * a->d;
        memset(y[t], 0, (size_t)a->d * sizeof(float));
    }
    un = union_of(L, nt, n0, n1, a->mark, a->un + n0, &n_down);
    walk down = j->down;
    down.Y = y;
    union_walk(&down, un, n_down, L, nt);
    j->counts[ith][0] = picked;
    j->counts[ith][1] = kept;
    j->counts[ith][2] = n_gate;
    j->counts[ith][3] = n_up;
    j->counts[ith][4] = n_down;
}

int pi_ffn_sparse(pi_pool *pool, pi_ffn_sparse_args *a) {
    static const char fn[] = "pi_ffn_sparse";
    PI_CHECK_NULL(a);
    if (!a->fc2 || !a->h || !a->gate || !a->up || !a->down_t || !a->x || !a->logit || !a->g ||
        !a->u || !a->idx || !a->y || (!a->partial && pi_pool_n_threads(pool) > 1) ||
        (a->n_tok > 1 && (!a->mark || !a->un)))
        return pi_fail(PI_ERR_NULL, "%s: a weight, input or buffer is NULL", fn);
    if (a->n_tok < 1 || a->n_tok > PI_UNION_MAX_TOK)
        return pi_fail(PI_ERR_RANGE, "%s: n_tok = %lld out of range [1, %d]", fn, (long long)a->n_tok,
                       PI_UNION_MAX_TOK);
    matrix_info mf, mg, md;
    int st;
    if ((st = check_matrix(fn, a->fc2_type, a->n_ff, a->rank, &mf))) return st;
    if ((st = check_matrix(fn, a->type, a->n_ff, a->d, &mg))) return st;
    if ((st = check_matrix(fn, a->down_type, a->n_ff, a->d, &md))) return st;
    const pi_kernels *K = active_kernels();
    if (a->fc2_rows8 && !K->dot8[a->fc2_type]) return pi_fail_rows8(fn, a->fc2_type);
    const int nt = (int)a->n_tok;
    int64_t counts[PI_MAX_THREADS][5]; /* not zeroed: every share writes its own */
    ffn_job j = {.a = a, .fc2_dot8 = K->dot8[a->fc2_type], .fc2_dot8n = K->dot8n[a->fc2_type],
                 .fc2_dot = K->dot[a->fc2_type], .fc2_row_bytes = mf.row_bytes, .counts = counts};
    for (int t = 0; t < nt; t++) {
        j.g[t] = a->g + (size_t)t * a->n_ff;
        j.u[t] = a->u + (size_t)t * a->n_ff;
    }
    j.gu = (walk){.W = a->gate, .W2 = a->up, .row_bytes = mg.row_bytes, .len = mg.row_bytes,
                  .group = PI_KERNEL_ROWS / 2, .call = walk_pair, .dot = K->dot[a->type], .n_cols = a->d,
                  .Y = j.g, .Y2 = j.u};
    j.down = (walk){.W = a->down_t, .row_bytes = md.row_bytes, .len = md.row_bytes, .group = PI_KERNEL_ROWS,
                    .call = walk_axpy, .axpy = K->axpy[a->down_type], .n_cols = a->d, .c1 = a->d,
                    .A = (const float *const *)j.u};
    /* x for gate/up and h for fc2, quantized side by side in this thread's scratch */
    const size_t x_bytes = (size_t)nt * ((size_t)a->d * sizeof(float) + 64);
    const size_t h_bytes = (size_t)nt * ((size_t)a->rank * sizeof(float) + 64);
    if (!scratch(x_bytes + h_bytes))
        return pi_fail(PI_ERR_NOMEM, "%s: cannot allocate the quantized activations", fn);
    const void *xq, *hq;
    if ((st = prepare_activations(fn, K, a->type, a->x, a->d, nt, 0, &xq, &j.gu.act_bytes))) return st;
    if ((st = prepare_activations(fn, K, a->fc2_type, a->h, a->rank, nt, x_bytes, &hq, &j.hq_bytes)))
        return st;
    j.gu.act = xq;
    j.hq = hq;
    pi_pool_run(pool, ffn_sparse_task, &j);
    const int nth = pi_pool_n_threads(pool);
    a->n_picked = a->n_down = a->n_union = a->n_union_up = a->n_union_down = 0;
    for (int s = 0; s < nth; s++) {
        a->n_picked += counts[s][0];
        a->n_down += counts[s][1];
        a->n_union += counts[s][2];
        a->n_union_up += counts[s][3];
        a->n_union_down += counts[s][4];
        if (s == 0) continue;
        for (int t = 0; t < nt; t++) {
            const float *p = a->partial + ((size_t)(s - 1) * (size_t)nt + (size_t)t) * a->d;
            float *y = a->y + (size_t)t * a->d;
            for (int64_t c = 0; c < a->d; c++) y[c] += p[c];
        }
    }
    return pi_ok();
}

int pi_activation(int act, const float *x, float *y, int64_t n) {
    PI_CHECK_NULL(x);
    PI_CHECK_NULL(y);
    if (act < 0 || act >= PI_N_ACTS) return pi_fail(PI_ERR_RANGE, "%s: unknown activation id %d", __func__, act);
    if (n < 0) return pi_fail(PI_ERR_SHAPE, "%s: n = %lld must not be negative", __func__, (long long)n);
    if (y != x) memmove(y, x, (size_t)n * sizeof *y);
    active_kernels()->act[act](n, y);
    return pi_ok();
}

int pi_matvec_cols_sparse(pi_pool *pool, int type, const void *W, int64_t n_rows,
                          int64_t n_cols, const float *a, const int32_t *idx, int64_t n_idx,
                          float *y) {
    PI_CHECK_NULL(W);
    PI_CHECK_NULL(a);
    PI_CHECK_NULL(idx);
    PI_CHECK_NULL(y);
    matrix_info m;
    int st = check_matrix(__func__, type, n_rows, n_cols, &m);
    if (st) return st;
    if ((st = check_idx(__func__, idx, n_idx, n_cols))) return st;
    const cols_job j = {.elem = m.t->elem, .W = W, .row_bytes = m.row_bytes, .n_rows = n_rows, .a = a,
                        .idx = idx, .n_idx = n_idx, .y = y};
    pi_pool_run(pool, cols_sparse_task, (void *)&j);
    return pi_ok();
}

int pi_matvec_rows(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
                   const float *x, const int32_t *idx, int64_t n_idx, float *y) {
    return masked_run(__func__, pool, type, W, NULL, n_rows, n_cols, x, idx, n_idx, y, NULL, 0);
}
