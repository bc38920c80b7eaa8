/* kernels_x86.c - AVX2 (+FMA, F16C) and AVX-512 (F/BW/VL/VNNI) twins of the scalar kernels in
 * kernels.c.
 *
 * Compiled without -mavx2: every function carries its own target attribute, and kernels.c only
 * installs a table after cpu.c has confirmed CPU and OS support. Per-block integer sums are
 * exact and equal to the scalar twin's (no saturating step can overflow: nibbles are < 16 and
 * the quantized activation stays in [-127, 127]); only the float accumulation order differs.
 *
 * Dots take PI_KERNEL_ROWS = 4 rows per call so that each activation block is loaded (and its
 * correction terms computed) once for four rows. The AVX-512 kernels have the AVX2 structure on
 * 512-bit vectors (two 32-element blocks per vector for the 4-bit types), with the AVX2 step
 * finishing an odd last block. The attention and SwiGLU entries follow llama.cpp's build of the
 * same width: 8 lanes and ggml's AVX2 expf in the AVX2 table, 16 lanes and its AVX-512 expf in
 * the AVX-512 table (pi_kernels.lanes).
 */
#if defined(__x86_64__)

#include <immintrin.h>

#include "kernels.h"
#include "quants.h"

#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define AVX512_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

/* ==== AVX2 helpers ============================================================================ */

INLINE AVX2_FN float h2f(pi_half h) { return _cvtsh_ss(h); }

/* fp16 -> fp32 by table for the per-row weight scales: one load (or a broadcast from memory)
 * instead of insert + convert + broadcast, in the innermost loops. Only the few entries of the
 * scales a model actually uses get hot. Filled when the library is loaded. */
static float fp16_table[1 << 16];

__attribute__((constructor)) static void init_fp16_table(void) {
    for (uint32_t h = 0; h < (1u << 16); h++) fp16_table[h] = pi_half_to_float((pi_half)h);
}

/* d_w * d_y in all lanes, d_w (a weight block's scale) from the table. */
INLINE AVX2_FN __m256 scale8(pi_half dw, __m256 dy) {
    return _mm256_mul_ps(_mm256_broadcast_ss(&fp16_table[dw]), dy);
}

INLINE AVX2_FN float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 32 nibbles of a Q4 block as bytes, element j in byte j (low nibbles, then high). */
INLINE AVX2_FN __m256i nibbles32(const uint8_t qs[16]) {
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    const __m256i shifted = _mm256_srlv_epi32(raw, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

/* The 32 quants (0..31) of a Q5 block as bytes, element j in byte j: its nibble, plus 16 where
 * bit j of qh is set (byte j of `spread` is byte j / 8 of qh; bit j % 8 is tested). */
INLINE AVX2_FN __m256i quants5_32(const uint8_t qh[4], const uint8_t qs[16]) {
    int32_t h;
    memcpy(&h, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(h), _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                               2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return _mm256_or_si256(nibbles32(qs), _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
}

/* u8 x s8 -> 8 x i32, each the sum of 4 adjacent products. Exact while |u| * |s| * 2 < 2^15,
 * which holds for nibbles (u < 16). */
INLINE AVX2_FN __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* s8 (weights, any value) x s8 (activation, in [-127, 127] as quantized here) -> 8 x i32, via
 * |w| x sign(w) y. Exact: |w| <= 128 and |y| <= 127 keep each pair sum below 2^15. */
INLINE AVX2_FN __m256i dot_s8s8(__m256i w, __m256i y) {
    return dot_u8s8(_mm256_abs_epi8(w), _mm256_sign_epi8(y, w));
}

/* ==== AVX2 dots: one block of nr rows per step ================================================= */

/* The legacy 4- and 5-bit types, one block of nr rows per step (ggml's AVX2 order): the
 * block's 32 quants as unsigned bytes, then the offset types (Q4_0, Q5_0: (q - off) . y =
 * q . y - off sum(y)) or the min types (Q4_1, Q5_1: d q + m, the m sum(y) term in summ). */
INLINE AVX2_FN __m256i bytes_q4_0(const block_q4_0 *w) { return nibbles32(w->qs); }
INLINE AVX2_FN __m256i bytes_q4_1(const block_q4_1 *w) { return nibbles32(w->qs); }
INLINE AVX2_FN __m256i bytes_q5_0(const block_q5_0 *w) { return quants5_32(w->qh, w->qs); }
INLINE AVX2_FN __m256i bytes_q5_1(const block_q5_1 *w) { return quants5_32(w->qh, w->qs); }

#define OFFSET_STEP(T, OFF)                                                                     \
    INLINE AVX2_FN void step_##T(int nr, const block_##T *const w[], int64_t b,                 \
                                 const block_q8_0 *x, __m256 acc[]) {                           \
        const __m256i qy = _mm256_loadu_si256((const __m256i *)x->qs);                          \
        const __m256i corr = dot_u8s8(_mm256_set1_epi8(OFF), qy);                               \
        const __m256 dy = _mm256_set1_ps(h2f(x->d));                                            \
        for (int r = 0; r < nr; r++) {                                                          \
            const __m256i s = _mm256_sub_epi32(dot_u8s8(bytes_##T(&w[r][b]), qy), corr);       \
            acc[r] = _mm256_fmadd_ps(scale8(w[r][b].d, dy), _mm256_cvtepi32_ps(s), acc[r]);    \
        }                                                                                       \
    }
#define MIN_STEP(T)                                                                             \
    INLINE AVX2_FN void step_##T(int nr, const block_##T *const w[], int64_t b,                 \
                                 const block_q8_1 *x, __m256 acc[], float summ[]) {             \
        const __m256i qy = _mm256_loadu_si256((const __m256i *)x->qs);                          \
        const __m256 dy = _mm256_set1_ps(h2f(x->d));                                            \
        const float sy = h2f(x->s);                                                             \
        for (int r = 0; r < nr; r++) {                                                          \
            const __m256i s = dot_u8s8(bytes_##T(&w[r][b]), qy);                                \
            acc[r] = _mm256_fmadd_ps(scale8(w[r][b].d, dy), _mm256_cvtepi32_ps(s), acc[r]);    \
            summ[r] += fp16_table[w[r][b].m] * sy;                                              \
        }                                                                                       \
    }
OFFSET_STEP(q4_0, 8)
OFFSET_STEP(q5_0, 16)
MIN_STEP(q4_1)
MIN_STEP(q5_1)
#undef OFFSET_STEP
#undef MIN_STEP

INLINE AVX2_FN void step_q8_0(int nr, const block_q8_0 *const w[], int64_t b, const block_q8_0 *x,
                              __m256 acc[]) {
    const __m256i qy = _mm256_loadu_si256((const __m256i *)x->qs);
    const __m256 dy = _mm256_set1_ps(h2f(x->d));
    for (int r = 0; r < nr; r++) {
        const __m256i s = dot_s8s8(_mm256_loadu_si256((const __m256i *)w[r][b].qs), qy);
        acc[r] = _mm256_fmadd_ps(scale8(w[r][b].d, dy), _mm256_cvtepi32_ps(s), acc[r]);
    }
}

/* Scalar tails of the F32/F16 dots (n not a multiple of the vector width). */
INLINE AVX2_FN void tail_dot_f32(int nr, const float *const w[], int64_t i, int64_t n,
                                 const float *x, float out[]) {
    for (; i < n; i++)
        for (int r = 0; r < nr; r++) out[r] += w[r][i] * x[i];
}
INLINE AVX2_FN void tail_dot_f16(int nr, const pi_half *const w[], int64_t i, int64_t n,
                                 const float *x, float out[]) {
    for (; i < n; i++)
        for (int r = 0; r < nr; r++) out[r] += h2f(w[r][i]) * x[i];
}

/* The row loops, written for a constant nr (4 or 1) so that the accumulators stay in registers. */
INLINE AVX2_FN void dot_f32_rows(int nr, int64_t n, const void *const rows[], const void *act,
                                 float *out) {
    const float *const *w = (const float *const *)rows;
    const float *x = act;
    __m256 acc[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc[r] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        for (int r = 0; r < nr; r++) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(w[r] + i), xv, acc[r]);
    }
    for (int r = 0; r < nr; r++) out[r] = hsum8(acc[r]);
    tail_dot_f32(nr, w, i, n, x, out);
}

INLINE AVX2_FN void dot_f16_rows(int nr, int64_t n, const void *const rows[], const void *act,
                                 float *out) {
    const pi_half *const *w = (const pi_half *const *)rows;
    const float *x = act;
    __m256 acc[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc[r] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        for (int r = 0; r < nr; r++) {
            const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w[r] + i)));
            acc[r] = _mm256_fmadd_ps(wv, xv, acc[r]);
        }
    }
    for (int r = 0; r < nr; r++) out[r] = hsum8(acc[r]);
    tail_dot_f16(nr, w, i, n, x, out);
}

/* The legacy types' row loops over step_##T (32-element blocks). */
#define OFFSET_DOT_ROWS(T)                                                                      \
    INLINE AVX2_FN void dot_##T##_rows(int nr, int64_t n, const void *const rows[],             \
                                       const void *act, float *out) {                           \
        const block_##T *const *w = (const block_##T *const *)rows;                             \
        const block_q8_0 *x = act;                                                              \
        __m256 acc[PI_KERNEL_ROWS];                                                             \
        for (int r = 0; r < nr; r++) acc[r] = _mm256_setzero_ps();                              \
        for (int64_t b = 0; b < n / 32; b++) step_##T(nr, w, b, x + b, acc);                    \
        for (int r = 0; r < nr; r++) out[r] = hsum8(acc[r]);                                    \
    }
#define MIN_DOT_ROWS(T)                                                                         \
    INLINE AVX2_FN void dot_##T##_rows(int nr, int64_t n, const void *const rows[],             \
                                       const void *act, float *out) {                           \
        const block_##T *const *w = (const block_##T *const *)rows;                             \
        const block_q8_1 *x = act;                                                              \
        __m256 acc[PI_KERNEL_ROWS];                                                             \
        float summ[PI_KERNEL_ROWS];                                                             \
        for (int r = 0; r < nr; r++) acc[r] = _mm256_setzero_ps(), summ[r] = 0.0f;              \
        for (int64_t b = 0; b < n / 32; b++) step_##T(nr, w, b, x + b, acc, summ);              \
        for (int r = 0; r < nr; r++) out[r] = hsum8(acc[r]) + summ[r];                          \
    }
OFFSET_DOT_ROWS(q4_0)
OFFSET_DOT_ROWS(q5_0)
MIN_DOT_ROWS(q4_1)
MIN_DOT_ROWS(q5_1)
#undef OFFSET_DOT_ROWS
#undef MIN_DOT_ROWS

INLINE AVX2_FN void dot_q8_0_rows(int nr, int64_t n, const void *const rows[], const void *act,
                                  float *out) {
    const block_q8_0 *const *w = (const block_q8_0 *const *)rows;
    const block_q8_0 *x = act;
    __m256 acc[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK8_0; b++) step_q8_0(nr, w, b, x + b, acc);
    for (int r = 0; r < nr; r++) out[r] = hsum8(acc[r]);
}

/* The pi_dot_fn entries: four rows at once, or one at a time for a short group. */
#define DOT_ENTRY(ATTR, name, rows_fn)                                                          \
    ATTR static void name(int64_t n, const void *const rows[], int nr, const void *act,         \
                          float *out) {                                                         \
        if (nr == PI_KERNEL_ROWS)                                                               \
            rows_fn(PI_KERNEL_ROWS, n, rows, act, out);                                         \
        else                                                                                    \
            for (int r = 0; r < nr; r++) rows_fn(1, n, rows + r, act, out + r);                 \
    }

DOT_ENTRY(AVX2_FN, dot_f32_avx2, dot_f32_rows)
DOT_ENTRY(AVX2_FN, dot_f16_avx2, dot_f16_rows)
DOT_ENTRY(AVX2_FN, dot_q4_0_avx2, dot_q4_0_rows)
DOT_ENTRY(AVX2_FN, dot_q4_1_avx2, dot_q4_1_rows)
DOT_ENTRY(AVX2_FN, dot_q5_0_avx2, dot_q5_0_rows)
DOT_ENTRY(AVX2_FN, dot_q5_1_avx2, dot_q5_1_rows)
DOT_ENTRY(AVX2_FN, dot_q8_0_avx2, dot_q8_0_rows)

/* ==== AVX2 8-row kernels over the rows8 layout (scalar twins dot8_* in kernels.c) ============= */
/* One register per lane k of the plain dot (elements 4k .. 4k + 3 of each block), one row per
 * 32-bit element: the same products and the same order as step_q4_0 & co., hence their bits. */

/* 4 activation bytes x[0 .. 3] in every 32-bit element. */
INLINE AVX2_FN __m256i bcast4(const int8_t *x) {
    int32_t v;
    memcpy(&v, x, 4);
    return _mm256_set1_epi32(v);
}

/* d_w * d_x per row: the weight scales of the 8 rows times the activation block's. */
INLINE AVX2_FN __m256 scales8(const pi_half dw[8], pi_half dx) {
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dw)),
                         _mm256_broadcast_ss(&fp16_table[dx]));
}

/* out[r] = ggml's hsum of row r's 8 lanes (hsum8's order), plus extra[r]. */
INLINE AVX2_FN void store_lanes8(const __m256 l[8], __m256 extra, float out[8]) {
    const __m256 a0 = _mm256_add_ps(l[0], l[4]), a1 = _mm256_add_ps(l[1], l[5]);
    const __m256 a2 = _mm256_add_ps(l[2], l[6]), a3 = _mm256_add_ps(l[3], l[7]);
    const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
    _mm256_storeu_ps(out, _mm256_add_ps(s, extra));
}

/* l[0 .. 8) = 0, written out: a zeroing loop over the array becomes a `rep stos` of the stack
 * copy (~35 cycles a call, more than a short row's whole dot). */
INLINE AVX2_FN void zero_lanes8(__m256 l[8]) {
    l[0] = l[1] = l[2] = l[3] = l[4] = l[5] = l[6] = l[7] = _mm256_setzero_ps();
}

/* The fifth bits of the 8 rows of an interleaved Q5 block, row r's qh (as the plain block's
 * little-endian u32) in 32-bit element r. */
INLINE AVX2_FN __m256i qh8(const uint16_t qh[2][PI_ROWS8]) {
    const __m128i lo = _mm_loadu_si128((const __m128i *)qh[0]), hi = _mm_loadu_si128((const __m128i *)qh[1]);
    return _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi));
}

/* The shuffle that puts byte k / 2 of each row's qh (qh8's 32-bit elements) in all 4 bytes of
 * its element: the byte that holds the fifth bits of lane k. */
INLINE AVX2_FN __m256i qh_spread_ctl(int k) {
    const char b = (char)(k / 2); /* the byte of qh that holds bits 4k .. 4k + 3 */
    return _mm256_setr_epi8(b, b, b, b, b + 4, b + 4, b + 4, b + 4, b + 8, b + 8, b + 8, b + 8,
                            b + 12, b + 12, b + 12, b + 12, b, b, b, b, b + 4, b + 4, b + 4, b + 4,
                            b + 8, b + 8, b + 8, b + 8, b + 12, b + 12, b + 12, b + 12);
}

/* The bit of lane k's element j in byte j of each 32-bit element of the spread qh. */
#define QH_LANE_BITS(k) ((k) % 2 ? (int)0x80402010 : 0x08040201)

/* 0x10 in byte j of each 32-bit element where bit 4k + j of its qh (h) is set: the fifth bits
 * of lane k (elements 4k .. 4k + 3) for the 8 rows. */
INLINE AVX2_FN __m256i fifth_bits8(__m256i h, int k) {
    const __m256i spread = _mm256_shuffle_epi8(h, qh_spread_ctl(k));
    const __m256i bit = _mm256_set1_epi32(QH_LANE_BITS(k));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

/* The Q4/Q5 lanes of one interleaved block: chunk c's low nibbles are lane c, its high nibbles
 * lane 4 + c, plus their fifth bits from h (qh8) when `five`. `offset` 8 (Q4_0) or 16 (Q5_0)
 * subtracts offset * the activation's 4-element sums. */
INLINE AVX2_FN void lanes_nib8(const uint8_t qs[128], int five, __m256i h, const int8_t x[32],
                               __m256 d, int offset, __m256 l[8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), off = _mm256_set1_epi8((char)offset);
    for (int c = 0; c < 4; c++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        const __m256i ylo = bcast4(x + 4 * c), yhi = bcast4(x + 16 + 4 * c);
        __m256i qlo = _mm256_and_si256(v, m4), qhi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if (five) {
            qlo = _mm256_or_si256(qlo, fifth_bits8(h, c));
            qhi = _mm256_or_si256(qhi, fifth_bits8(h, 4 + c));
        }
        __m256i slo = dot_u8s8(qlo, ylo), shi = dot_u8s8(qhi, yhi);
        if (offset) {
            slo = _mm256_sub_epi32(slo, dot_u8s8(off, ylo));
            shi = _mm256_sub_epi32(shi, dot_u8s8(off, yhi));
        }
        l[c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(slo), l[c]);
        l[4 + c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(shi), l[4 + c]);
    }
}

/* The 4- and 5-bit entries (twins of kernels.c's OFFSET_DOT8 and MIN_DOT8): QH(w) is the block's
 * fifth bits, FIVE whether there are any. */
#define Q4_QH(w) _mm256_setzero_si256()
#define Q5_QH(w) qh8((w).qh)
#define OFFSET_DOT8_AVX2(T, FIVE, QH, OFF)                                                      \
    AVX2_FN static void dot8_##T##_avx2(int64_t n, const void *group, const void *act, float out[8]) { \
        const block_##T##x8 *w = group;                                                         \
        const block_q8_0 *x = act;                                                              \
        __m256 l[8];                                                                            \
        zero_lanes8(l);                                                                         \
        for (int64_t b = 0; b < n / 32; b++)                                                    \
            lanes_nib8(w[b].qs, FIVE, QH(w[b]), x[b].qs, scales8(w[b].d, x[b].d), OFF, l);      \
        store_lanes8(l, _mm256_setzero_ps(), out);                                              \
    }
#define MIN_DOT8_AVX2(T, FIVE, QH)                                                              \
    AVX2_FN static void dot8_##T##_avx2(int64_t n, const void *group, const void *act, float out[8]) { \
        const block_##T##x8 *w = group;                                                         \
        const block_q8_1 *x = act;                                                              \
        __m256 l[8], summ = _mm256_setzero_ps();                                                \
        zero_lanes8(l);                                                                         \
        for (int64_t b = 0; b < n / 32; b++) {                                                  \
            lanes_nib8(w[b].qs, FIVE, QH(w[b]), x[b].qs, scales8(w[b].d, x[b].d), 0, l);        \
            summ = _mm256_add_ps(summ, scales8(w[b].m, x[b].s));                                \
        }                                                                                       \
        store_lanes8(l, summ, out);                                                             \
    }
OFFSET_DOT8_AVX2(q4_0, 0, Q4_QH, 8)
OFFSET_DOT8_AVX2(q5_0, 1, Q5_QH, 16)
MIN_DOT8_AVX2(q4_1, 0, Q4_QH)
MIN_DOT8_AVX2(q5_1, 1, Q5_QH)
#undef OFFSET_DOT8_AVX2
#undef MIN_DOT8_AVX2
#undef Q4_QH
#undef Q5_QH

AVX2_FN static void dot8_q8_0_avx2(int64_t n, const void *group, const void *act, float out[8]) {
    const block_q8_0x8 *w = group;
    const block_q8_0 *x = act;
    __m256 l[8];
    zero_lanes8(l);
    for (int64_t b = 0; b < n / QK8_0; b++) {
        const __m256 d = scales8(w[b].d, x[b].d);
        for (int k = 0; k < 8; k++) {
            const __m256i s = dot_s8s8(_mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * k)),
                                       bcast4(x[b].qs + 4 * k));
            l[k] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), l[k]);
        }
    }
    store_lanes8(l, _mm256_setzero_ps(), out);
}

/* ==== AVX2 axpy =============================================================================== */

/* yb[0..32) += sum_r s[r] * q_r + off, q_r the 32 unsigned bytes of q[r]. (Q4_0/Q5_0 fold their
 * offset into off = -8 sum(s) or -16 sum(s), Q4_1/Q5_1 their min into off = sum(a m).) */
INLINE AVX2_FN void axpy_u8x32(int nr, const __m256i q[], const float s[], float off, float *yb) {
    __m256 y[4];
    for (int k = 0; k < 4; k++) y[k] = _mm256_loadu_ps(yb + 8 * k);
    for (int r = 0; r < nr; r++) {
        const __m128i lo = _mm256_castsi256_si128(q[r]), hi = _mm256_extracti128_si256(q[r], 1);
        const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        const __m256 sv = _mm256_set1_ps(s[r]);
        for (int k = 0; k < 4; k++)
            y[k] = _mm256_fmadd_ps(sv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part[k])), y[k]);
    }
    const __m256 o = _mm256_set1_ps(off);
    for (int k = 0; k < 4; k++) _mm256_storeu_ps(yb + 8 * k, _mm256_add_ps(y[k], o));
}

/* axpy_u8x32 over the nibbles of qs[r] (Q4). */
INLINE AVX2_FN void axpy_nibbles(int nr, const uint8_t *const qs[], const float s[], float off,
                                 float *yb) {
    __m256i q[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) q[r] = nibbles32(qs[r]);
    axpy_u8x32(nr, q, s, off, yb);
}

INLINE AVX2_FN void axpy_q8(int nr, const int8_t *const qs[], const float s[], float *yb) {
    __m256 y[4];
    for (int k = 0; k < 4; k++) y[k] = _mm256_loadu_ps(yb + 8 * k);
    for (int r = 0; r < nr; r++) {
        const __m256 sv = _mm256_set1_ps(s[r]);
        for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs[r] + 8 * k)));
            y[k] = _mm256_fmadd_ps(sv, _mm256_cvtepi32_ps(v), y[k]);
        }
    }
    for (int k = 0; k < 4; k++) _mm256_storeu_ps(yb + 8 * k, y[k]);
}

/* Per-block row scales of the quantized axpys, shared by both ISAs. */
INLINE AVX2_FN float scales_q4_0(int nr, const block_q4_0 *const w[], int64_t b, const float a[],
                                 float s[], const uint8_t *qs[]) {
    float sum = 0.0f;
    for (int r = 0; r < nr; r++) {
        s[r] = a[r] * fp16_table[w[r][b].d];
        qs[r] = w[r][b].qs;
        sum += s[r];
    }
    return -8.0f * sum; /* the offset */
}

INLINE AVX2_FN float scales_q4_1(int nr, const block_q4_1 *const w[], int64_t b, const float a[],
                                 float s[], const uint8_t *qs[]) {
    float off = 0.0f;
    for (int r = 0; r < nr; r++) {
        s[r] = a[r] * fp16_table[w[r][b].d];
        qs[r] = w[r][b].qs;
        off += a[r] * fp16_table[w[r][b].m];
    }
    return off;
}

/* The Q5 axpys' per-block row scales and quants (AVX2 only; the AVX-512 table reuses them). */
INLINE AVX2_FN float scales_q5_0(int nr, const block_q5_0 *const w[], int64_t b, const float a[],
                                 float s[], __m256i q[]) {
    float sum = 0.0f;
    for (int r = 0; r < nr; r++) {
        s[r] = a[r] * fp16_table[w[r][b].d];
        q[r] = quants5_32(w[r][b].qh, w[r][b].qs);
        sum += s[r];
    }
    return -16.0f * sum; /* the offset */
}

INLINE AVX2_FN float scales_q5_1(int nr, const block_q5_1 *const w[], int64_t b, const float a[],
                                 float s[], __m256i q[]) {
    float off = 0.0f;
    for (int r = 0; r < nr; r++) {
        s[r] = a[r] * fp16_table[w[r][b].d];
        q[r] = quants5_32(w[r][b].qh, w[r][b].qs);
        off += a[r] * fp16_table[w[r][b].m];
    }
    return off;
}

INLINE AVX2_FN void scales_q8_0(int nr, const block_q8_0 *const w[], int64_t b, const float a[],
                                float s[], const int8_t *qs[]) {
    for (int r = 0; r < nr; r++) {
        s[r] = a[r] * fp16_table[w[r][b].d];
        qs[r] = w[r][b].qs;
    }
}

INLINE AVX2_FN void axpy_q4_0_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                   const float *a, float *y) {
    const block_q4_0 *const *w = (const block_q4_0 *const *)rows;
    for (int64_t b = c0 / QK4_0; b < c1 / QK4_0; b++) {
        float s[PI_KERNEL_ROWS];
        const uint8_t *qs[PI_KERNEL_ROWS];
        const float off = scales_q4_0(nr, w, b, a, s, qs);
        axpy_nibbles(nr, qs, s, off, y + b * QK4_0);
    }
}

INLINE AVX2_FN void axpy_q4_1_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                   const float *a, float *y) {
    const block_q4_1 *const *w = (const block_q4_1 *const *)rows;
    for (int64_t b = c0 / QK4_1; b < c1 / QK4_1; b++) {
        float s[PI_KERNEL_ROWS];
        const uint8_t *qs[PI_KERNEL_ROWS];
        const float off = scales_q4_1(nr, w, b, a, s, qs);
        axpy_nibbles(nr, qs, s, off, y + b * QK4_1);
    }
}

/* The Q5 axpys: QK is 32 for both, the quants' offset or min folded into off. */
#define AXPY_Q5_ROWS(T)                                                                          \
    INLINE AVX2_FN void axpy_##T##_rows(int nr, int64_t c0, int64_t c1, const void *const rows[], \
                                        const float *a, float *y) {                             \
        const block_##T *const *w = (const block_##T *const *)rows;                             \
        for (int64_t b = c0 / 32; b < c1 / 32; b++) {                                           \
            float s[PI_KERNEL_ROWS];                                                            \
            __m256i q[PI_KERNEL_ROWS];                                                          \
            const float off = scales_##T(nr, w, b, a, s, q);                                    \
            axpy_u8x32(nr, q, s, off, y + b * 32);                                              \
        }                                                                                       \
    }
AXPY_Q5_ROWS(q5_0)
AXPY_Q5_ROWS(q5_1)
#undef AXPY_Q5_ROWS

INLINE AVX2_FN void axpy_q8_0_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                   const float *a, float *y) {
    const block_q8_0 *const *w = (const block_q8_0 *const *)rows;
    for (int64_t b = c0 / QK8_0; b < c1 / QK8_0; b++) {
        float s[PI_KERNEL_ROWS];
        const int8_t *qs[PI_KERNEL_ROWS];
        scales_q8_0(nr, w, b, a, s, qs);
        axpy_q8(nr, qs, s, y + b * QK8_0);
    }
}

/* Scalar tails of the F32/F16 axpys. */
INLINE AVX2_FN void tail_axpy_f32(int nr, const float *const w[], const float *a, int64_t c,
                                  int64_t c1, float *y) {
    for (; c < c1; c++)
        for (int r = 0; r < nr; r++) y[c] += a[r] * w[r][c];
}
INLINE AVX2_FN void tail_axpy_f16(int nr, const pi_half *const w[], const float *a, int64_t c,
                                  int64_t c1, float *y) {
    for (; c < c1; c++)
        for (int r = 0; r < nr; r++) y[c] += a[r] * h2f(w[r][c]);
}

INLINE AVX2_FN void axpy_f32_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                  const float *a, float *y) {
    const float *const *w = (const float *const *)rows;
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
        __m256 yv = _mm256_loadu_ps(y + c);
        for (int r = 0; r < nr; r++) yv = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), _mm256_loadu_ps(w[r] + c), yv);
        _mm256_storeu_ps(y + c, yv);
    }
    tail_axpy_f32(nr, w, a, c, c1, y);
}

INLINE AVX2_FN void axpy_f16_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                  const float *a, float *y) {
    const pi_half *const *w = (const pi_half *const *)rows;
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
        __m256 yv = _mm256_loadu_ps(y + c);
        for (int r = 0; r < nr; r++) {
            const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w[r] + c)));
            yv = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), wv, yv);
        }
        _mm256_storeu_ps(y + c, yv);
    }
    tail_axpy_f16(nr, w, a, c, c1, y);
}

/* The pi_axpy_fn entries: four rows at once, or one at a time for a short group. */
#define AXPY_ENTRY(ATTR, name, rows_fn)                                                         \
    ATTR static void name(int64_t c0, int64_t c1, const void *const rows[], const float *a,     \
                          int nr, float *y) {                                                   \
        if (nr == PI_KERNEL_ROWS)                                                               \
            rows_fn(PI_KERNEL_ROWS, c0, c1, rows, a, y);                                        \
        else                                                                                    \
            for (int r = 0; r < nr; r++) rows_fn(1, c0, c1, rows + r, a + r, y);                \
    }

AXPY_ENTRY(AVX2_FN, axpy_f32_avx2, axpy_f32_rows)
AXPY_ENTRY(AVX2_FN, axpy_f16_avx2, axpy_f16_rows)
AXPY_ENTRY(AVX2_FN, axpy_q4_0_avx2, axpy_q4_0_rows)
AXPY_ENTRY(AVX2_FN, axpy_q4_1_avx2, axpy_q4_1_rows)
AXPY_ENTRY(AVX2_FN, axpy_q5_0_avx2, axpy_q5_0_rows)
AXPY_ENTRY(AVX2_FN, axpy_q5_1_avx2, axpy_q5_1_rows)
AXPY_ENTRY(AVX2_FN, axpy_q8_0_avx2, axpy_q8_0_rows)

/* ==== AVX2 K-quants against Q8_K (scalar twins dot_row_k, axpy_row_k in kernels.c) =========== */
/* One dot and one AXPY for the five types (k_kernel): each type gives its scale fields in
 * registers (vscales_*, one call per block and row) and the quants of a group of 32 as unsigned
 * bytes q + offset (quants_*: Q3_K's offset is 4, Q6_K's 32, the others' 0). The dots' pair sums
 * stay exact: q + offset <= 63 and |y| <= 127. */

INLINE AVX2_FN __m256i load32(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* Bits shift .. of each byte of v, masked by `mask`. */
INLINE AVX2_FN __m256i bits8(__m256i v, int shift, int mask) {
    return _mm256_and_si256(_mm256_srli_epi16(v, shift), _mm256_set1_epi8((char)mask));
}

/* Group g (of 8) of a block, elements 32 g .. 32 g + 31, as bytes q + offset (blocks.h's layouts). */

INLINE AVX2_FN __m256i quants_q2_K(const void *block, int g) {
    return bits8(load32(((const block_q2_K *)block)->qs + 32 * (g / 4)), 2 * (g % 4), 3);
}

INLINE AVX2_FN __m256i quants_q3_K(const void *block, int g) {
    const block_q3_K *b = block;
    return _mm256_or_si256(bits8(load32(b->qs + 32 * (g / 4)), 2 * (g % 4), 3),
                           _mm256_slli_epi16(bits8(load32(b->hmask), g, 1), 2));
}

INLINE AVX2_FN __m256i quants_q4_K(const void *block, int g) {
    return bits8(load32(((const block_q4_K *)block)->qs + 32 * (g / 2)), 4 * (g % 2), 0x0F);
}

INLINE AVX2_FN __m256i quants_q5_K(const void *block, int g) {
    const block_q5_K *b = block;
    return _mm256_or_si256(bits8(load32(b->qs + 32 * (g / 2)), 4 * (g % 2), 0x0F),
                           _mm256_slli_epi16(bits8(load32(b->qh), g, 1), 4));
}

INLINE AVX2_FN __m256i quants_q6_K(const void *block, int g) {
    const block_q6_K *b = block;
    const int h = g / 4, k = g % 4;
    return _mm256_or_si256(bits8(load32(b->ql + 64 * h + 32 * (k & 1)), 4 * (k >> 1), 0x0F),
                           _mm256_slli_epi16(bits8(load32(b->qh + 32 * h), 2 * k, 3), 4));
}

/* A block's scale fields in registers, sc and m 16 int8 each as pi_k_scales holds them (the
 * groups of 32 of Q4_K, Q5_K in bytes 0-7). Built without a round trip through memory: a vector
 * load of bytes just stored one by one would stall on store forwarding. */
typedef struct {
    __m128i sc, m;
    pi_half d, dmin;
} k_vscales;

INLINE AVX2_FN __m128i words128(const uint32_t w[4]) {
    return _mm_setr_epi32((int)w[0], (int)w[1], (int)w[2], (int)w[3]);
}

INLINE AVX2_FN k_vscales vscales_q2_K(const void *block) {
    const block_q2_K *b = block;
    const __m128i v = _mm_loadu_si128((const __m128i *)b->scales), low = _mm_set1_epi8(0x0F);
    return (k_vscales){_mm_and_si128(v, low), _mm_and_si128(_mm_srli_epi16(v, 4), low), b->d, b->dmin};
}

INLINE AVX2_FN k_vscales vscales_q3_K(const void *block) {
    const block_q3_K *b = block;
    uint32_t w[4];
    pi_q3_K_scale_words(b->scales, w);
    return (k_vscales){_mm_sub_epi8(words128(w), _mm_set1_epi8(32)), _mm_setzero_si128(), b->d, 0};
}

/* Q4_K and Q5_K: sc[0..7] and m[0..7] (groups of 32). */
INLINE AVX2_FN k_vscales vscales_q4_K(const void *block) {
    const block_q4_K *b = block;
    uint32_t w[4];
    pi_q4_K_scale_words(b->scales, w);
    const __m128i v = words128(w);
    return (k_vscales){v, _mm_unpackhi_epi64(v, v), b->d, b->dmin};
}

INLINE AVX2_FN k_vscales vscales_q5_K(const void *block) { return vscales_q4_K(block); }

INLINE AVX2_FN k_vscales vscales_q6_K(const void *block) {
    const block_q6_K *b = block;
    return (k_vscales){_mm_loadu_si128((const __m128i *)b->scales), _mm_setzero_si128(), b->d, 0};
}

typedef struct {
    size_t bytes;   /* of a block */
    int group;      /* elements per scale: 16 or 32 (pi_k_scales) */
    int offset;     /* the quants' bytes are q + offset */
    pi_k_mins mins; /* the order of the mins' term (kernels.h) */
    k_vscales (*scales)(const void *block);
    __m256i (*quants)(const void *block, int g);
} k_kernel;

/* A block's scales as int16 words, the source of group_scales: groups of 16, sw[0] = scales 0-7
 * and sw[1] = 8-15, each in both 128-bit halves; groups of 32, sw[0] = sw[1] = scales 0-7 in both
 * halves. */
INLINE AVX2_FN void scale_words(__m128i sc, int group, __m256i sw[2]) {
    if (group == 16) {
        const __m256i w = _mm256_cvtepi8_epi16(sc);
        sw[0] = _mm256_permute2x128_si256(w, w, 0x00);
        sw[1] = _mm256_permute2x128_si256(w, w, 0x11);
    } else {
        sw[0] = sw[1] = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc));
    }
}

/* The madd factors of group g (of 8, 32 elements) against its 16 pair sums: the scale of its
 * elements 0-15 in the low 8 words, of 16-31 in the high 8. */
INLINE AVX2_FN __m256i group_scales(const __m256i sw[2], int g, int group) {
    const int w0 = group == 16 ? 2 * (g % 4) : g, w1 = group == 16 ? w0 + 1 : w0;
    const __m128i pick0 = _mm_set1_epi16((short)(2 * w0 | (2 * w0 + 1) << 8)); /* bytes of word w0 */
    const __m128i pick1 = _mm_set1_epi16((short)(2 * w1 | (2 * w1 + 1) << 8));
    const __m256i pick = _mm256_inserti128_si256(_mm256_castsi128_si256(pick0), pick1, 1);
    return _mm256_shuffle_epi8(sw[group == 16 ? g / 4 : 0], pick);
}

/* The mins of the 16 runs of 16 elements as int16 words. */
INLINE AVX2_FN __m256i min_words(__m128i m, int group) {
    return _mm256_cvtepi8_epi16(group == 16 ? m : _mm_unpacklo_epi8(m, m));
}

/* Blocks ahead of the one being read that the dots prefetch, every cache line of it, within the
 * row. Measured on an AMD EPYC (AVX2, one thread, 4096 x 4096 rotated through 384 MiB of copies,
 * a shared machine): without it Q3_K and Q6_K ran 2-4x slower from memory than from cache (Q3_K
 * 1.5-1.7 ms, Q6_K 1.8-4.5 ms; the hardware prefetchers miss their layouts), with it Q3_K 0.9-1.1
 * ms and Q6_K 1.1-1.6 ms; Q2_K, Q4_K and Q5_K read as fast from memory either way (within 5%). */
#define K_PREFETCH_BLOCKS 4

/* ggml's AVX2 vec_dot_q*_K_q8_K, four rows sharing each activation load: per block an exact
 * int32 sum per lane (lane k: elements 4k .. 4k + 3 of each group of 32, times their scale), one
 * fused multiply-add by d_x * d_w, and the mins' term in the type's order. */
INLINE AVX2_FN void dot_k_rows(int nr, int64_t n, const void *const rows[], const void *act,
                               float *out, k_kernel t) {
    const block_q8_K *x = act;
    __m256 acc[PI_KERNEL_ROWS];
    __m128 acc_m[PI_KERNEL_ROWS]; /* K_MINS_4 */
    float summ[PI_KERNEL_ROWS];   /* K_MINS_1 */
    for (int r = 0; r < nr; r++) {
        acc[r] = _mm256_setzero_ps();
        acc_m[r] = _mm_setzero_ps();
        summ[r] = 0.0f;
    }
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_q8_K *xb = x + b;
        const void *wb[PI_KERNEL_ROWS];
        k_vscales s[PI_KERNEL_ROWS];
        __m256i sw[PI_KERNEL_ROWS][2], sumi[PI_KERNEL_ROWS];
        for (int r = 0; r < nr; r++) {
            wb[r] = (const uint8_t *)rows[r] + (size_t)b * t.bytes;
            if (b + K_PREFETCH_BLOCKS < n / QK_K)
                for (size_t o = 0; o < t.bytes; o += 64)
                    _mm_prefetch((const char *)wb[r] + K_PREFETCH_BLOCKS * t.bytes + o, _MM_HINT_T0);
            s[r] = t.scales(wb[r]);
            scale_words(s[r].sc, t.group, sw[r]);
            sumi[r] = _mm256_setzero_si256();
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) { /* groups 2c and 2c + 1 */
            const __m256i y0 = load32((const uint8_t *)(xb->qs + 64 * c));
            const __m256i y1 = load32((const uint8_t *)(xb->qs + 64 * c + 32));
            /* offset * the pair sums of y: (q + offset) . y - offset sum(y) = q . y */
            const __m256i off = _mm256_set1_epi8((char)t.offset);
            const __m256i c0 = _mm256_maddubs_epi16(off, y0), c1 = _mm256_maddubs_epi16(off, y1);
            for (int r = 0; r < nr; r++) {
                __m256i p0 = _mm256_maddubs_epi16(t.quants(wb[r], 2 * c), y0);
                __m256i p1 = _mm256_maddubs_epi16(t.quants(wb[r], 2 * c + 1), y1);
                if (t.offset) p0 = _mm256_sub_epi16(p0, c0), p1 = _mm256_sub_epi16(p1, c1);
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(
                    _mm256_madd_epi16(group_scales(sw[r], 2 * c, t.group), p0),
                    _mm256_madd_epi16(group_scales(sw[r], 2 * c + 1, t.group), p1)));
            }
        }
        const __m256i bsums = load32((const uint8_t *)xb->bsums);
        for (int r = 0; r < nr; r++) {
            const float d = xb->d * fp16_table[s[r].d], dmin = -xb->d * fp16_table[s[r].dmin];
            if (t.mins != K_MINS_NONE) {
                const __m256i mlane = _mm256_madd_epi16(min_words(s[r].m, t.group), bsums);
                if (t.mins == K_MINS_8)
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mlane), acc[r]);
                const __m128i m4 = _mm_hadd_epi32(_mm256_castsi256_si128(mlane),
                                                  _mm256_extracti128_si256(mlane, 1));
                if (t.mins == K_MINS_4)
                    acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(m4), acc_m[r]);
                if (t.mins == K_MINS_1) {
                    const __m128i m2 = _mm_add_epi32(m4, _mm_unpackhi_epi64(m4, m4));
                    const int sum = _mm_cvtsi128_si32(_mm_add_epi32(m2, _mm_shuffle_epi32(m2, 1)));
                    summ[r] = fmaf(dmin, (float)sum, summ[r]);
                }
            }
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    for (int r = 0; r < nr; r++) {
        out[r] = hsum8(acc[r]);
        if (t.mins == K_MINS_4) {
            __m128 m = _mm_add_ps(acc_m[r], _mm_movehl_ps(acc_m[r], acc_m[r]));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            out[r] += _mm_cvtss_f32(m);
        }
        if (t.mins == K_MINS_1) out[r] += summ[r];
    }
}

/* y += a[r] * row r for r < nr, group by group: y[c] = fma(a[r], w_r[c], y[c]), rows in order,
 * w as pi_dequantize_* computes it, (d sc) q - dmin m (the scalar twin's bits). A block's scale
 * factors are formed once per block and row. */
INLINE AVX2_FN void axpy_k_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                const float *a, float *y, k_kernel t) {
    for (int64_t b = c0 / QK_K; b < c1 / QK_K; b++) {
        const void *wb[PI_KERNEL_ROWS];
        float f[PI_KERNEL_ROWS][16], fm[PI_KERNEL_ROWS][16]; /* d sc[j], dmin m[j], j < QK_K / group */
        for (int r = 0; r < nr; r++) {
            wb[r] = (const uint8_t *)rows[r] + (size_t)b * t.bytes;
            const k_vscales s = t.scales(wb[r]);
            const __m256 d = _mm256_set1_ps(fp16_table[s.d]), dmin = _mm256_set1_ps(fp16_table[s.dmin]);
            for (int h = 0; h < QK_K / t.group / 8; h++) { /* 8 scale factors at a time */
                const __m128i sc = h ? _mm_unpackhi_epi64(s.sc, s.sc) : s.sc;
                const __m128i m = h ? _mm_unpackhi_epi64(s.m, s.m) : s.m;
                _mm256_storeu_ps(f[r] + 8 * h, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
                _mm256_storeu_ps(fm[r] + 8 * h, _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(m))));
            }
        }
        for (int g = 0; g < QK_K / 32; g++) {
            float *yg = y + b * QK_K + 32 * g;
            __m256 yv[4];
            for (int i = 0; i < 4; i++) yv[i] = _mm256_loadu_ps(yg + 8 * i);
            for (int r = 0; r < nr; r++) {
                const __m256i q = t.quants(wb[r], g);
                const __m128i half[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
                for (int i = 0; i < 4; i++) { /* elements 8i .. 8i + 7 of the group */
                    const int j = (32 * g + 8 * i) / t.group;
                    const __m128i h = half[i / 2], bytes = i % 2 ? _mm_unpackhi_epi64(h, h) : h;
                    const __m256i qi = _mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_set1_epi32(t.offset));
                    __m256 w = _mm256_mul_ps(_mm256_set1_ps(f[r][j]), _mm256_cvtepi32_ps(qi));
                    if (t.mins != K_MINS_NONE) w = _mm256_sub_ps(w, _mm256_set1_ps(fm[r][j]));
                    yv[i] = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), w, yv[i]);
                }
            }
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(yg + 8 * i, yv[i]);
        }
    }
}

#define K_KERNELS(T, OFFSET, MINS)                                                              \
    static const k_kernel K_##T = {sizeof(block_##T), pi_##T##_group, OFFSET, MINS, vscales_##T, \
                                   quants_##T};                                                 \
    INLINE AVX2_FN void dot_##T##_rows(int nr, int64_t n, const void *const rows[],             \
                                       const void *act, float *out) {                           \
        dot_k_rows(nr, n, rows, act, out, K_##T);                                               \
    }                                                                                           \
    INLINE AVX2_FN void axpy_##T##_rows(int nr, int64_t c0, int64_t c1, const void *const rows[], \
                                        const float *a, float *y) {                             \
        axpy_k_rows(nr, c0, c1, rows, a, y, K_##T);                                             \
    }                                                                                           \
    DOT_ENTRY(AVX2_FN, dot_##T##_avx2, dot_##T##_rows)                                          \
    AXPY_ENTRY(AVX2_FN, axpy_##T##_avx2, axpy_##T##_rows)
K_KERNELS(q2_K, 0, K_MINS_8)
K_KERNELS(q3_K, 4, K_MINS_NONE)
K_KERNELS(q4_K, 0, K_MINS_4)
K_KERNELS(q5_K, 0, K_MINS_1)
K_KERNELS(q6_K, 32, K_MINS_NONE)
#undef K_KERNELS

/* y += a[r] * row r for r < nr, group (of 32) by group, for blocks of block_elems (a multiple of
 * 32, <= QK_K): y[c] = fma(a[r], w_r[c], y[c]), rows in order (the scalar twin's bits). */
INLINE AVX2_FN void axpy_blocks_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                     const float *a, float *y, int64_t block_elems, size_t block_bytes,
                                     void (*scales)(const void *, float[16]),
                                     void (*group)(const void *, int, const float[16], __m256[4])) {
    for (int64_t b = c0 / block_elems; b < c1 / block_elems; b++) {
        float f[PI_KERNEL_ROWS][16];
        for (int r = 0; r < nr; r++) scales((const uint8_t *)rows[r] + (size_t)b * block_bytes, f[r]);
        for (int g = 0; g < block_elems / 32; g++) {
            float *yg = y + b * block_elems + 32 * g;
            __m256 yv[4];
            for (int i = 0; i < 4; i++) yv[i] = _mm256_loadu_ps(yg + 8 * i);
            for (int r = 0; r < nr; r++) {
                __m256 wv[4];
                group((const uint8_t *)rows[r] + (size_t)b * block_bytes, g, f[r], wv);
                for (int i = 0; i < 4; i++) yv[i] = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), wv[i], yv[i]);
            }
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(yg + 8 * i, yv[i]);
        }
    }
}


/* ==== AVX2 IQ4_NL, IQ4_XS and BF16 (scalar twins dot_row_iq4_nl & co. in kernels.c) ========= */

/* ggml's kvalues_iq4nl in both 128-bit halves: a nibble byte shuffled through it (pshufb) becomes
 * its value. */
INLINE AVX2_FN __m256i iq4_table(void) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)pi_kvalues_iq4nl));
}

/* The 32 values of a block of IQ4 nibbles as int8, element j in byte j. */
INLINE AVX2_FN __m256i iq4_values32(__m256i table, const uint8_t qs[16]) {
    return _mm256_shuffle_epi8(table, nibbles32(qs));
}

/* IQ4_NL: one block of nr rows into acc (step_q8_0 with the looked-up values; exact: |value|,
 * |x| <= 127). */
INLINE AVX2_FN void step_iq4_nl(int nr, __m256i table, const block_iq4_nl *const w[], int64_t b,
                                const block_q8_0 *x, __m256 acc[]) {
    const __m256i qy = _mm256_loadu_si256((const __m256i *)x->qs);
    const __m256 dy = _mm256_set1_ps(h2f(x->d));
    for (int r = 0; r < nr; r++) {
        const __m256i s = dot_s8s8(iq4_values32(table, w[r][b].qs), qy);
        acc[r] = _mm256_fmadd_ps(scale8(w[r][b].d, dy), _mm256_cvtepi32_ps(s), acc[r]);
    }
}

/* The sum of the 8 int32 lanes of v. */
INLINE AVX2_FN int32_t hsum_i32x8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* ggml's order (iq4_nl_sum in kernels.c): even blocks of whole pairs in acc1, odd in acc2, added
 * lane by lane and hsum'd; an odd last block adds (d_w * d_x) * its integer sum. */
INLINE AVX2_FN void dot_iq4_nl_rows(int nr, int64_t n, const void *const rows[], const void *act,
                                    float *out) {
    const block_iq4_nl *const *w = (const block_iq4_nl *const *)rows;
    const block_q8_0 *x = act;
    const __m256i table = iq4_table();
    const int64_t nb = n / QK4_NL;
    __m256 acc1[PI_KERNEL_ROWS], acc2[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc1[r] = acc2[r] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        step_iq4_nl(nr, table, w, b, x + b, acc1);
        step_iq4_nl(nr, table, w, b + 1, x + b + 1, acc2);
    }
    for (int r = 0; r < nr; r++) out[r] = hsum8(_mm256_add_ps(acc1[r], acc2[r]));
    if (b == nb) return;
    const __m256i qy = _mm256_loadu_si256((const __m256i *)x[b].qs);
    for (int r = 0; r < nr; r++) {
        const int32_t t = hsum_i32x8(dot_s8s8(iq4_values32(table, w[r][b].qs), qy));
        out[r] += (fp16_table[w[r][b].d] * h2f(x[b].d)) * (float)t;
    }
}

/* IQ4_XS: per block, each sub-block's values times the activation (pairs of int16, exact), times
 * its scale into 8 int32 lanes (madd); then one fused multiply-add by d_w * d_x. */
INLINE AVX2_FN void dot_iq4_xs_rows(int nr, int64_t n, const void *const rows[], const void *act,
                                    float *out) {
    const block_iq4_xs *const *w = (const block_iq4_xs *const *)rows;
    const block_q8_K *x = act;
    const __m256i table = iq4_table();
    __m256 acc[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_q8_K *xb = x + b;
        __m256i sumi[PI_KERNEL_ROWS];
        for (int r = 0; r < nr; r++) sumi[r] = _mm256_setzero_si256();
        for (int s = 0; s < QK_K / 32; s++) {
            const __m256i y = _mm256_loadu_si256((const __m256i *)(xb->qs + 32 * s));
            for (int r = 0; r < nr; r++) {
                const __m256i v = iq4_values32(table, w[r][b].qs + 16 * s);
                const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(v), _mm256_sign_epi8(y, v));
                const __m256i ls = _mm256_set1_epi16((short)pi_iq4_xs_scale(&w[r][b], s));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p16, ls));
            }
        }
        for (int r = 0; r < nr; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(fp16_table[w[r][b].d] * xb->d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
    }
    for (int r = 0; r < nr; r++) out[r] = hsum8(acc[r]);
}

/* 8 bf16 -> 8 f32 (exact: the bits shifted up). */
INLINE AVX2_FN __m256 bf16x8(const pi_bf16 *p) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* BF16: element i into lane i % 8 by fma, hsum, then the tail by fma in order (dot_row_bf16). */
INLINE AVX2_FN void dot_bf16_rows(int nr, int64_t n, const void *const rows[], const void *act,
                                  float *out) {
    const pi_bf16 *const *w = (const pi_bf16 *const *)rows;
    const float *x = act;
    __m256 acc[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc[r] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        for (int r = 0; r < nr; r++) acc[r] = _mm256_fmadd_ps(bf16x8(w[r] + i), xv, acc[r]);
    }
    for (int r = 0; r < nr; r++) {
        out[r] = hsum8(acc[r]);
        for (int64_t j = i; j < n; j++) out[r] = fmaf(pi_bf16_to_float(w[r][j]), x[j], out[r]);
    }
}

/* Two rows at a time: four rows' two sets of accumulators would not fit in the 16 registers
 * (the spills cost 2.5x). */
AVX2_FN static void dot_iq4_nl_avx2(int64_t n, const void *const rows[], int nr, const void *act,
                                    float *out) {
    int r = 0;
    for (; r + 2 <= nr; r += 2) dot_iq4_nl_rows(2, n, rows + r, act, out + r);
    if (r < nr) dot_iq4_nl_rows(1, n, rows + r, act, out + r);
}
DOT_ENTRY(AVX2_FN, dot_iq4_xs_avx2, dot_iq4_xs_rows)
DOT_ENTRY(AVX2_FN, dot_bf16_avx2, dot_bf16_rows)

/* IQ4_NL over the rows8 layout (scalar twin dot8_iq4_nl): chunk c of the 8 rows' nibbles looked
 * up into lanes c (low) and 4 + c (high), as lanes_nib8 without the offset. The integer lane
 * sums of block b go to ints[0 .. 8). */
INLINE AVX2_FN void lanes_iq4_8(__m256i table, const uint8_t qs[128], const int8_t x[32], __m256i ints[8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int c = 0; c < 4; c++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
        const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
        ints[c] = dot_s8s8(lo, bcast4(x + 4 * c));
        ints[4 + c] = dot_s8s8(hi, bcast4(x + 16 + 4 * c));
    }
}

/* l[k] += d * ints[k] by fma over the blocks b0, b0 + 2, .. below end (one of ggml's two sets). */
INLINE AVX2_FN void pass_iq4_nl8(__m256i table, const block_iq4_nlx8 *w, const block_q8_0 *x,
                                 int64_t b0, int64_t end, __m256 l[8]) {
    zero_lanes8(l);
    for (int64_t b = b0; b < end; b += 2) {
        __m256i ints[8];
        lanes_iq4_8(table, w[b].qs, x[b].qs, ints);
        const __m256 d = scales8(w[b].d, x[b].d);
        for (int k = 0; k < 8; k++) l[k] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(ints[k]), l[k]);
    }
}

/* The even blocks' lanes, then the odd blocks' (two passes over the group: 8 accumulators each,
 * not 16 at once), added; the odd last block's d * (integer sum) after the hsum. */
AVX2_FN static void dot8_iq4_nl_avx2(int64_t n, const void *group, const void *act, float out[8]) {
    const block_iq4_nlx8 *w = group;
    const block_q8_0 *x = act;
    const __m256i table = iq4_table();
    const int64_t nb = n / QK4_NL, paired = nb & ~(int64_t)1;
    __m256 even[8], l[8];
    pass_iq4_nl8(table, w, x, 0, paired, even);
    pass_iq4_nl8(table, w, x, 1, paired, l);
    for (int k = 0; k < 8; k++) l[k] = _mm256_add_ps(even[k], l[k]);
    store_lanes8(l, _mm256_setzero_ps(), out);
    if (paired == nb) return;
    __m256i ints[8];
    lanes_iq4_8(table, w[paired].qs, x[paired].qs, ints);
    __m256i t = ints[0];
    for (int k = 1; k < 8; k++) t = _mm256_add_epi32(t, ints[k]);
    const __m256 tail = _mm256_mul_ps(scales8(w[paired].d, x[paired].d), _mm256_cvtepi32_ps(t));
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), tail));
}

/* A block of 32 IQ4 values times d (dequantize_iq4_32's exact products): w[i] holds elements
 * 8i .. 8i + 7. */
INLINE AVX2_FN void iq4_group(const uint8_t qs[16], float d, __m256 w[4]) {
    const __m256i v = iq4_values32(iq4_table(), qs);
    const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int i = 0; i < 4; i++) w[i] = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part[i])));
}

/* The scale factors of axpy_blocks_rows: IQ4_NL's d; IQ4_XS's d * (ls_s - 32) per sub-block. */
INLINE AVX2_FN void scales_blk_iq4_nl(const void *block, float f[16]) {
    f[0] = fp16_table[((const block_iq4_nl *)block)->d];
}

INLINE AVX2_FN void scales_blk_iq4_xs(const void *block, float f[16]) {
    const block_iq4_xs *b = block;
    for (int s = 0; s < QK_K / 32; s++) f[s] = fp16_table[b->d] * (float)pi_iq4_xs_scale(b, s);
}

INLINE AVX2_FN void group_iq4_nl(const void *block, int g, const float f[16], __m256 w[4]) {
    iq4_group(((const block_iq4_nl *)block)->qs, f[0], w);
}

INLINE AVX2_FN void group_iq4_xs(const void *block, int g, const float f[16], __m256 w[4]) {
    iq4_group(((const block_iq4_xs *)block)->qs + 16 * g, f[g], w);
}

INLINE AVX2_FN void axpy_iq4_nl_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                     const float *a, float *y) {
    axpy_blocks_rows(nr, c0, c1, rows, a, y, QK4_NL, sizeof(block_iq4_nl), scales_blk_iq4_nl, group_iq4_nl);
}

INLINE AVX2_FN void axpy_iq4_xs_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                     const float *a, float *y) {
    axpy_blocks_rows(nr, c0, c1, rows, a, y, QK_K, sizeof(block_iq4_xs), scales_blk_iq4_xs,
                     group_iq4_xs);
}

/* BF16: y[c] = fma(a[r], w_r[c], y[c]), rows in order (axpy_row_bf16's bits). */
INLINE AVX2_FN void axpy_bf16_rows(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                   const float *a, float *y) {
    const pi_bf16 *const *w = (const pi_bf16 *const *)rows;
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
        __m256 yv = _mm256_loadu_ps(y + c);
        for (int r = 0; r < nr; r++) yv = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), bf16x8(w[r] + c), yv);
        _mm256_storeu_ps(y + c, yv);
    }
    for (; c < c1; c++)
        for (int r = 0; r < nr; r++) y[c] = fmaf(a[r], pi_bf16_to_float(w[r][c]), y[c]);
}

AXPY_ENTRY(AVX2_FN, axpy_iq4_nl_avx2, axpy_iq4_nl_rows)
AXPY_ENTRY(AVX2_FN, axpy_iq4_xs_avx2, axpy_iq4_xs_rows)
AXPY_ENTRY(AVX2_FN, axpy_bf16_avx2, axpy_bf16_rows)

/* ==== activation quantizers (bit-identical to the reference) =================================== */

/* One block of 32 floats -> qs, as the scalar twin quantize_act_block (ggml-cpu's x86
 * quantizer): qs = round-half-even(x * (127 / amax)); returns d = amax / 127 and the 8 lane sums
 * of qs in *lane_sums. */
INLINE AVX2_FN float quantize_block_q8(const float *x, int8_t qs[32], __m256i *lane_sums) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float mx = _mm_cvtss_f32(m);
    const __m256 idv = _mm256_set1_ps(mx != 0.0f ? 127.0f / mx : 0.0f);
    __m256i q[4];
    for (int k = 0; k < 4; k++)
        q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], idv),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    *lane_sums = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    const __m256i bytes = _mm256_permutevar8x32_epi32(p16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, bytes);
    return mx / 127.0f;
}

AVX2_FN static void quantize_q8_0_avx2(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        __m256i sums;
        y[b].d = pi_float_to_half(quantize_block_q8(x + b * QK8_0, y[b].qs, &sums));
    }
}

AVX2_FN static void quantize_q8_1_avx2(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / QK8_1; b++) {
        __m256i sums;
        const float d = quantize_block_q8(x + b * QK8_1, y[b].qs, &sums);
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
        y[b].d = pi_float_to_half(d);
        y[b].s = pi_float_to_half((float)_mm_cvtsi128_si32(s) * d);
    }
}

/* ==== attention and SwiGLU in llama.cpp's order (scalar twins in kernels.c) ================== */

/* pi_expf_ggml(8, x) in 8 lanes: ggml's AVX2 ggml_v_expf. */
INLINE AVX2_FN __m256 expf8(__m256 x) {
    const __m256 shift = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift);
    const __m256 n = _mm256_sub_ps(z, shift);
    const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_set1_epi32(0x3f800000)));
    const __m256 r2 = _mm256_mul_ps(r, r);
    const __m256 poly = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), r, _mm256_set1_ps(0x1.573e2ep-5f)),
                        r2, _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), r, _mm256_set1_ps(0x1.fffdb6p-2f))),
        r2, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), r));
    const __m256 absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 big = _mm256_cmp_ps(absn, _mm256_set1_ps(126), _CMP_GT_OQ);
    const __m256 normal = _mm256_fmadd_ps(k, poly, k);
    if (!_mm256_movemask_ps(big)) return normal;
    /* some lane's 2^n is out of range: as the scalar twin, lane by lane */
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 huge = _mm256_cmp_ps(absn, _mm256_set1_ps(192), _CMP_GT_OQ);
    const __m256 scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, poly, s2), s1);
    const __m256 out = _mm256_blendv_ps(normal, scaled, big);
    return _mm256_blendv_ps(out, _mm256_mul_ps(s1, s1), huge);
}

/* 8 f16 from p, the n < 8 of them past a row's end as zeros. */
INLINE AVX2_FN __m256 load_f16_tail(const pi_half *p, int n) {
    pi_half t[8] = {0};
    for (int i = 0; i < n; i++) t[i] = p[i];
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
}

INLINE AVX2_FN __m256 load_f32_tail(const float *p, int n) {
    float t[8] = {0};
    for (int i = 0; i < n; i++) t[i] = p[i];
    return _mm256_loadu_ps(t);
}

/* sum_i a[i] * b[i] for i < n, a f16, b f32, in lanes i % 8. */
INLINE AVX2_FN float dot_f16_f32_lanes(const pi_half *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))),
                              _mm256_loadu_ps(b + i), acc);
    if (i < n) acc = _mm256_fmadd_ps(load_f16_tail(a + i, n - i), load_f32_tail(b + i, n - i), acc);
    return hsum8(acc);
}

/* out[r] = hsum8(l[r]) for r < 8, in hsum8's order ((l0 + l4) + (l2 + l6)) + ((l1 + l5) +
 * (l3 + l7)), through a transpose: the same bits as 8 hsum8 calls. */
INLINE AVX2_FN void hsum8x8(const __m256 l[8], float out[8]) {
    __m256 s[4]; /* s[k] = [b(l[k]) | b(l[k + 4])], b_j = l_j + l_(j+4) */
    for (int k = 0; k < 4; k++)
        s[k] = _mm256_add_ps(_mm256_permute2f128_ps(l[k], l[k + 4], 0x20),
                             _mm256_permute2f128_ps(l[k], l[k + 4], 0x31));
    /* u = [b0 + b2, b1 + b3] of rows (0, 1 | 4, 5) interleaved; v the same for (2, 3 | 6, 7) */
    const __m256 u = _mm256_add_ps(_mm256_unpacklo_ps(s[0], s[1]), _mm256_unpackhi_ps(s[0], s[1]));
    const __m256 v = _mm256_add_ps(_mm256_unpacklo_ps(s[2], s[3]), _mm256_unpackhi_ps(s[2], s[3]));
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_shuffle_ps(u, v, _MM_SHUFFLE(1, 0, 1, 0)),
                                        _mm256_shuffle_ps(u, v, _MM_SHUFFLE(3, 2, 3, 2))));
}

/* out[r] = dot_f16_f32_lanes(a[r], b, n) for r < 8, the same bits, with one load of b per chunk
 * for all 8 rows. over: each row may be read up to 8 elements past a multiple of 8 below n
 * (the lanes past n are masked to zero), else the tail is copied as in the one-row dot. */
INLINE AVX2_FN void dot8_f16_f32_lanes(const pi_half *const a[8], const float *b, int n, int over,
                                       float out[8]) {
    __m256 acc[8];
    zero_lanes8(acc);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 bv = _mm256_loadu_ps(b + i);
        for (int r = 0; r < 8; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a[r] + i))), bv, acc[r]);
    }
    if (i < n) {
        const int rem = n - i;
        const __m256 bv = load_f32_tail(b + i, rem);
        const __m256 keep = _mm256_castsi256_ps(
            _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        for (int r = 0; r < 8; r++) {
            const __m256 v = over ? _mm256_and_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a[r] + i))), keep)
                                  : load_f16_tail(a[r] + i, rem);
            acc[r] = _mm256_fmadd_ps(v, bv, acc[r]);
        }
    }
    hsum8x8(acc, out);
}

AVX2_FN static void attn_scores_avx2(int n_pos, int hd, const pi_half *k, int64_t ldk,
                                     const float *q, float scale, float *s) {
    int p = 0;
    for (; p + 8 <= n_pos; p += 8) {
        const pi_half *rows[8];
        float d[8];
        for (int r = 0; r < 8; r++) rows[r] = k + (size_t)(p + r) * ldk;
        dot8_f16_f32_lanes(rows, q, hd, 0, d);
        for (int r = 0; r < 8; r++) s[p + r] = d[r] * scale;
    }
    for (; p < n_pos; p++) s[p] = dot_f16_f32_lanes(k + (size_t)p * ldk, q, hd) * scale;
}

AVX2_FN static double softmax_exp_avx2(int n, float *x, float max) {
    const __m256 mv = _mm256_set1_ps(max);
    double sum = 0;
    for (int i = 0; i < n; i += 8) {
        const __m256 v = expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        _mm256_storeu_ps(x + i, v);
        sum += hsum8(v);
    }
    return sum;
}

AVX2_FN static void attn_values_avx2(int n_pos, int hd, const pi_half *vt, int64_t ldv,
                                     const float *p, float *out) {
    const int over = n_pos / 8 * 8 + 8 <= ldv; /* the cache row holds a whole last chunk */
    int i = 0;
    for (; i + 8 <= hd; i += 8) {
        const pi_half *rows[8];
        for (int r = 0; r < 8; r++) rows[r] = vt + (size_t)(i + r) * ldv;
        dot8_f16_f32_lanes(rows, p, n_pos, over, out + i);
    }
    for (; i < hd; i++) out[i] = dot_f16_f32_lanes(vt + (size_t)i * ldv, p, n_pos);
}

/* The activations in 8 lanes, each pi_*_ref's bits. silu(x) = x / (1 + pi_expf_ggml(8, -x)). */
INLINE AVX2_FN __m256 silu8(__m256 x) {
    const __m256 e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* max returns its second operand for a NaN or a zero of either sign: +0, as the scalar ternary */
INLINE AVX2_FN __m256 relu8(__m256 x) { return _mm256_max_ps(x, _mm256_setzero_ps()); }

INLINE AVX2_FN __m256 gelu_tanh8(__m256 x) {
    const __m256 p = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(PI_GELU_COEF_A), x), x, _mm256_set1_ps(1.0f));
    const __m256 z = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(PI_GELU_COEF_Z), x), p);
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), expf8(z)));
}

/* The glu and act kernels of one activation: 8 lanes, the scalar reference for the tail. */
#define ACT_AVX2(name, vec, ref)                                                                \
    AVX2_FN static void glu_##name##_avx2(int64_t n, const float *g, float *u) {                \
        int64_t i = 0;                                                                          \
        for (; i + 8 <= n; i += 8)                                                              \
            _mm256_storeu_ps(u + i, _mm256_mul_ps(vec(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i))); \
        for (; i < n; i++) u[i] *= ref(g[i]);                                                   \
    }                                                                                           \
    AVX2_FN static void act_##name##_avx2(int64_t n, float *x) {                                \
        int64_t i = 0;                                                                          \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, vec(_mm256_loadu_ps(x + i)));        \
        for (; i < n; i++) x[i] = ref(x[i]);                                                    \
    }
ACT_AVX2(silu, silu8, pi_silu_ref)
ACT_AVX2(relu, relu8, pi_relu_ref)
ACT_AVX2(gelu_tanh, gelu_tanh8, pi_gelu_tanh_ref)
#undef ACT_AVX2


/* F16C converts with round to nearest even, as pi_float_to_half. */
AVX2_FN static void to_f16_avx2(int64_t n, const float *x, pi_half *y) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = pi_float_to_half(x[i]);
}

AVX2_FN static void round_f16_avx2(int64_t n, float *x) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++) x[i] = pi_half_to_float(pi_float_to_half(x[i]));
}

/* select: 8 compares -> a mask; each 4-bit half's set positions packed left from a table and
 * stored 4 at a time (entries past the count are scratch: the next store overwrites them). */
static const int32_t select_lut4[16][4] = { /* mask -> its set bit positions, ascending */
    {0, 0, 0, 0}, {0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 0, 0},
    {2, 0, 0, 0}, {0, 2, 0, 0}, {1, 2, 0, 0}, {0, 1, 2, 0},
    {3, 0, 0, 0}, {0, 3, 0, 0}, {1, 3, 0, 0}, {0, 1, 3, 0},
    {2, 3, 0, 0}, {0, 2, 3, 0}, {1, 2, 3, 0}, {0, 1, 2, 3}};

AVX2_FN static int64_t select_avx2(int64_t n, const float *v, float thr, int absval, int32_t *idx) {
    const __m256 t = _mm256_set1_ps(thr), sign = _mm256_set1_ps(-0.0f);
    int64_t k = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(v + i);
        if (absval) x = _mm256_andnot_ps(sign, x);
        const unsigned m = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(x, t, _CMP_GT_OQ));
        const __m128i lo = _mm_loadu_si128((const __m128i *)select_lut4[m & 15]);
        const __m128i hi = _mm_loadu_si128((const __m128i *)select_lut4[m >> 4]);
        _mm_storeu_si128((__m128i *)(idx + k), _mm_add_epi32(lo, _mm_set1_epi32((int)i)));
        k += __builtin_popcount(m & 15);
        _mm_storeu_si128((__m128i *)(idx + k), _mm_add_epi32(hi, _mm_set1_epi32((int)i + 4)));
        k += __builtin_popcount(m >> 4);
    }
    return pi_select_ref(i, n, v, thr, absval, idx, k);
}

/* rope: llama pairs are adjacent lanes (cos and sin spread by moveldup / movehdup), NeoX pairs 8
 * lanes of each half (cos and sin gathered from the interleaved cs). */
AVX2_FN static void rope_avx2(int n_rot, int neox, const float *cs, float *v) {
    const int half = n_rot / 2;
    int i = 0; /* pairs done */
    if (!neox) {
        const __m256 odd = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
        for (; i + 4 <= half; i += 4) {
            const __m256 x = _mm256_loadu_ps(v + 2 * i), w = _mm256_loadu_ps(cs + 2 * i);
            const __m256 c = _mm256_moveldup_ps(w), s = _mm256_movehdup_ps(w);
            const __m256 xs = _mm256_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)); /* pairs swapped */
            /* even lanes: fma(x0, c, -(x1 * s)); odd lanes: fma(x0, s, x1 * c) */
            const __m256 a = _mm256_blendv_ps(x, xs, odd), b = _mm256_blendv_ps(c, s, odd);
            const __m256 neg = _mm256_xor_ps(_mm256_mul_ps(xs, s), _mm256_set1_ps(-0.0f));
            const __m256 add = _mm256_blendv_ps(neg, _mm256_mul_ps(x, c), odd);
            _mm256_storeu_ps(v + 2 * i, _mm256_fmadd_ps(a, b, add));
        }
    } else {
        for (; i + 8 <= half; i += 8) {
            const __m256 w0 = _mm256_loadu_ps(cs + 2 * i), w1 = _mm256_loadu_ps(cs + 2 * i + 8);
            const __m256 c = _mm256_castpd_ps(_mm256_permute4x64_pd(
                _mm256_castps_pd(_mm256_shuffle_ps(w0, w1, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
            const __m256 s = _mm256_castpd_ps(_mm256_permute4x64_pd(
                _mm256_castps_pd(_mm256_shuffle_ps(w0, w1, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
            const __m256 x0 = _mm256_loadu_ps(v + i), x1 = _mm256_loadu_ps(v + i + half);
            const __m256 neg = _mm256_xor_ps(_mm256_mul_ps(x1, s), _mm256_set1_ps(-0.0f));
            _mm256_storeu_ps(v + i, _mm256_fmadd_ps(x0, c, neg));
            _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
        }
    }
    pi_rope_ref(i, n_rot, neox, cs, v);
}

const pi_kernels pi_kernels_avx2 = {
    .name = "avx2",
    .lanes = 8,
    .dot = {[PI_TYPE_IQ4_NL] = dot_iq4_nl_avx2, [PI_TYPE_IQ4_XS] = dot_iq4_xs_avx2, [PI_TYPE_BF16] = dot_bf16_avx2,
            [PI_TYPE_F32] = dot_f32_avx2, [PI_TYPE_F16] = dot_f16_avx2,
            [PI_TYPE_Q4_0] = dot_q4_0_avx2, [PI_TYPE_Q4_1] = dot_q4_1_avx2,
            [PI_TYPE_Q5_0] = dot_q5_0_avx2, [PI_TYPE_Q5_1] = dot_q5_1_avx2,
            [PI_TYPE_Q8_0] = dot_q8_0_avx2, [PI_TYPE_Q2_K] = dot_q2_K_avx2,
            [PI_TYPE_Q3_K] = dot_q3_K_avx2, [PI_TYPE_Q4_K] = dot_q4_K_avx2,
            [PI_TYPE_Q5_K] = dot_q5_K_avx2, [PI_TYPE_Q6_K] = dot_q6_K_avx2},
    .dot8 = {[PI_TYPE_IQ4_NL] = dot8_iq4_nl_avx2,
             [PI_TYPE_Q4_0] = dot8_q4_0_avx2, [PI_TYPE_Q4_1] = dot8_q4_1_avx2,
             [PI_TYPE_Q5_0] = dot8_q5_0_avx2, [PI_TYPE_Q5_1] = dot8_q5_1_avx2,
             [PI_TYPE_Q8_0] = dot8_q8_0_avx2},
    .axpy = {[PI_TYPE_IQ4_NL] = axpy_iq4_nl_avx2, [PI_TYPE_IQ4_XS] = axpy_iq4_xs_avx2, [PI_TYPE_BF16] = axpy_bf16_avx2,
             [PI_TYPE_F32] = axpy_f32_avx2, [PI_TYPE_F16] = axpy_f16_avx2,
             [PI_TYPE_Q4_0] = axpy_q4_0_avx2, [PI_TYPE_Q4_1] = axpy_q4_1_avx2,
             [PI_TYPE_Q5_0] = axpy_q5_0_avx2, [PI_TYPE_Q5_1] = axpy_q5_1_avx2,
             [PI_TYPE_Q8_0] = axpy_q8_0_avx2, [PI_TYPE_Q2_K] = axpy_q2_K_avx2,
             [PI_TYPE_Q3_K] = axpy_q3_K_avx2, [PI_TYPE_Q4_K] = axpy_q4_K_avx2,
             [PI_TYPE_Q5_K] = axpy_q5_K_avx2, [PI_TYPE_Q6_K] = axpy_q6_K_avx2},
    .quantize_act = {[PI_TYPE_Q8_0] = quantize_q8_0_avx2, [PI_TYPE_Q8_1] = quantize_q8_1_avx2,
                     [PI_TYPE_Q8_K] = pi_quantize_q8_K /* ggml-cpu's x86 one is the reference */},
    .attn_scores = attn_scores_avx2,
    .softmax_exp = softmax_exp_avx2,
    .attn_values = attn_values_avx2,
    .glu = {[PI_ACT_SILU] = glu_silu_avx2, [PI_ACT_RELU] = glu_relu_avx2,
            [PI_ACT_GELU_TANH] = glu_gelu_tanh_avx2},
    .act = {[PI_ACT_SILU] = act_silu_avx2, [PI_ACT_RELU] = act_relu_avx2,
            [PI_ACT_GELU_TANH] = act_gelu_tanh_avx2},
    .to_f16 = to_f16_avx2,
    .round_f16 = round_f16_avx2,
    .select = select_avx2,
    .rope = rope_avx2,
};

/* ==== AVX-512 helpers ========================================================================= */

INLINE AVX512_FN float hsum16(__m512 v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum8(_mm256_add_ps(lo, hi));
}

/* Two 256-bit halves -> one 512-bit vector (AVX512F only, no DQ). */
INLINE AVX512_FN __m512i join_si(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
INLINE AVX512_FN __m512 join_ps(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)),
                                               _mm256_castps_pd(hi), 1));
}

INLINE AVX512_FN __m512i dot_u8s8_512(__m512i u, __m512i s) {
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
}

/* ==== AVX-512 dots: two 4-bit blocks (or one 8-bit block) of nr rows per step ==================== */

INLINE AVX512_FN void step2_q4_0(int nr, const block_q4_0 *const w[], int64_t b,
                                 const block_q8_0 *x, __m512 acc[]) {
    const __m512i qy = join_si(_mm256_loadu_si256((const __m256i *)x[0].qs),
                               _mm256_loadu_si256((const __m256i *)x[1].qs));
    const __m512i corr = dot_u8s8_512(_mm512_set1_epi8(8), qy);
    const __m256 dy0 = _mm256_set1_ps(h2f(x[0].d)), dy1 = _mm256_set1_ps(h2f(x[1].d));
    for (int r = 0; r < nr; r++) {
        const __m512i q = join_si(nibbles32(w[r][b].qs), nibbles32(w[r][b + 1].qs));
        const __m512i s = _mm512_sub_epi32(dot_u8s8_512(q, qy), corr);
        const __m512 d = join_ps(scale8(w[r][b].d, dy0), scale8(w[r][b + 1].d, dy1));
        acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[r]);
    }
}

INLINE AVX512_FN void step2_q4_1(int nr, const block_q4_1 *const w[], int64_t b,
                                 const block_q8_1 *x, __m512 acc[], float summ[]) {
    const __m512i qy = join_si(_mm256_loadu_si256((const __m256i *)x[0].qs),
                               _mm256_loadu_si256((const __m256i *)x[1].qs));
    const __m256 dy0 = _mm256_set1_ps(h2f(x[0].d)), dy1 = _mm256_set1_ps(h2f(x[1].d));
    const float sy0 = h2f(x[0].s), sy1 = h2f(x[1].s);
    for (int r = 0; r < nr; r++) {
        const __m512i q = join_si(nibbles32(w[r][b].qs), nibbles32(w[r][b + 1].qs));
        const __m512 d = join_ps(scale8(w[r][b].d, dy0), scale8(w[r][b + 1].d, dy1));
        acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_u8s8_512(q, qy)), acc[r]);
        summ[r] += fp16_table[w[r][b].m] * sy0 + fp16_table[w[r][b + 1].m] * sy1;
    }
}

INLINE AVX512_FN void step_q8_0_512(int nr, const block_q8_0 *const w[], int64_t b,
                                    const block_q8_0 *x, __m512 acc[]) {
    const __m512i qy = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)x->qs));
    const float dy = h2f(x->d);
    for (int r = 0; r < nr; r++) {
        const __m512i qw = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)w[r][b].qs));
        const __m512i s = _mm512_madd_epi16(qw, qy); /* exact for all int8 */
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(fp16_table[w[r][b].d] * dy), _mm512_cvtepi32_ps(s), acc[r]);
    }
}

INLINE AVX512_FN void dot_f32_rows512(int nr, int64_t n, const void *const rows[],
                                      const void *act, float *out) {
    const float *const *w = (const float *const *)rows;
    const float *x = act;
    __m512 acc[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc[r] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 xv = _mm512_loadu_ps(x + i);
        for (int r = 0; r < nr; r++) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(w[r] + i), xv, acc[r]);
    }
    for (int r = 0; r < nr; r++) out[r] = hsum16(acc[r]);
    tail_dot_f32(nr, w, i, n, x, out);
}

INLINE AVX512_FN void dot_f16_rows512(int nr, int64_t n, const void *const rows[],
                                      const void *act, float *out) {
    const pi_half *const *w = (const pi_half *const *)rows;
    const float *x = act;
    __m512 acc[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc[r] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 xv = _mm512_loadu_ps(x + i);
        for (int r = 0; r < nr; r++) {
            const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w[r] + i)));
            acc[r] = _mm512_fmadd_ps(wv, xv, acc[r]);
        }
    }
    for (int r = 0; r < nr; r++) out[r] = hsum16(acc[r]);
    tail_dot_f16(nr, w, i, n, x, out);
}

INLINE AVX512_FN void dot_q4_0_rows512(int nr, int64_t n, const void *const rows[],
                                       const void *act, float *out) {
    const block_q4_0 *const *w = (const block_q4_0 *const *)rows;
    const block_q8_0 *x = act;
    const int64_t nb = n / QK4_0;
    __m512 acc[PI_KERNEL_ROWS];
    __m256 acc1[PI_KERNEL_ROWS]; /* an odd last block */
    for (int r = 0; r < nr; r++) acc[r] = _mm512_setzero_ps(), acc1[r] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) step2_q4_0(nr, w, b, x + b, acc);
    if (b < nb) step_q4_0(nr, w, b, x + b, acc1);
    for (int r = 0; r < nr; r++) out[r] = hsum16(acc[r]) + hsum8(acc1[r]);
}

INLINE AVX512_FN void dot_q4_1_rows512(int nr, int64_t n, const void *const rows[],
                                       const void *act, float *out) {
    const block_q4_1 *const *w = (const block_q4_1 *const *)rows;
    const block_q8_1 *x = act;
    const int64_t nb = n / QK4_1;
    __m512 acc[PI_KERNEL_ROWS];
    __m256 acc1[PI_KERNEL_ROWS];
    float summ[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++)
        acc[r] = _mm512_setzero_ps(), acc1[r] = _mm256_setzero_ps(), summ[r] = 0.0f;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) step2_q4_1(nr, w, b, x + b, acc, summ);
    if (b < nb) step_q4_1(nr, w, b, x + b, acc1, summ);
    for (int r = 0; r < nr; r++) out[r] = hsum16(acc[r]) + hsum8(acc1[r]) + summ[r];
}

INLINE AVX512_FN void dot_q8_0_rows512(int nr, int64_t n, const void *const rows[],
                                       const void *act, float *out) {
    const block_q8_0 *const *w = (const block_q8_0 *const *)rows;
    const block_q8_0 *x = act;
    __m512 acc[PI_KERNEL_ROWS];
    for (int r = 0; r < nr; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < n / QK8_0; b++) step_q8_0_512(nr, w, b, x + b, acc);
    for (int r = 0; r < nr; r++) out[r] = hsum16(acc[r]);
}

DOT_ENTRY(AVX512_FN, dot_f32_avx512, dot_f32_rows512)
DOT_ENTRY(AVX512_FN, dot_f16_avx512, dot_f16_rows512)
DOT_ENTRY(AVX512_FN, dot_q4_0_avx512, dot_q4_0_rows512)
DOT_ENTRY(AVX512_FN, dot_q4_1_avx512, dot_q4_1_rows512)
DOT_ENTRY(AVX512_FN, dot_q8_0_avx512, dot_q8_0_rows512)

/* ==== AVX-512 axpy ============================================================================ */

INLINE AVX512_FN void axpy_nibbles512(int nr, const uint8_t *const qs[], const float s[],
                                      float off, float *yb) {
    __m512 y0 = _mm512_loadu_ps(yb), y1 = _mm512_loadu_ps(yb + 16);
    const __m512i m4 = _mm512_set1_epi32(0x0F);
    for (int r = 0; r < nr; r++) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs[r]));
        const __m512 sv = _mm512_set1_ps(s[r]);
        y0 = _mm512_fmadd_ps(sv, _mm512_cvtepi32_ps(_mm512_and_si512(v, m4)), y0);
        y1 = _mm512_fmadd_ps(sv, _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), y1);
    }
    const __m512 o = _mm512_set1_ps(off);
    _mm512_storeu_ps(yb, _mm512_add_ps(y0, o));
    _mm512_storeu_ps(yb + 16, _mm512_add_ps(y1, o));
}

INLINE AVX512_FN void axpy_q8_512(int nr, const int8_t *const qs[], const float s[], float *yb) {
    __m512 y0 = _mm512_loadu_ps(yb), y1 = _mm512_loadu_ps(yb + 16);
    for (int r = 0; r < nr; r++) {
        const __m512 sv = _mm512_set1_ps(s[r]);
        const __m512i v0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs[r]));
        const __m512i v1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs[r] + 16)));
        y0 = _mm512_fmadd_ps(sv, _mm512_cvtepi32_ps(v0), y0);
        y1 = _mm512_fmadd_ps(sv, _mm512_cvtepi32_ps(v1), y1);
    }
    _mm512_storeu_ps(yb, y0);
    _mm512_storeu_ps(yb + 16, y1);
}

INLINE AVX512_FN void axpy_q4_0_rows512(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                        const float *a, float *y) {
    const block_q4_0 *const *w = (const block_q4_0 *const *)rows;
    for (int64_t b = c0 / QK4_0; b < c1 / QK4_0; b++) {
        float s[PI_KERNEL_ROWS];
        const uint8_t *qs[PI_KERNEL_ROWS];
        const float off = scales_q4_0(nr, w, b, a, s, qs);
        axpy_nibbles512(nr, qs, s, off, y + b * QK4_0);
    }
}

INLINE AVX512_FN void axpy_q4_1_rows512(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                        const float *a, float *y) {
    const block_q4_1 *const *w = (const block_q4_1 *const *)rows;
    for (int64_t b = c0 / QK4_1; b < c1 / QK4_1; b++) {
        float s[PI_KERNEL_ROWS];
        const uint8_t *qs[PI_KERNEL_ROWS];
        const float off = scales_q4_1(nr, w, b, a, s, qs);
        axpy_nibbles512(nr, qs, s, off, y + b * QK4_1);
    }
}

INLINE AVX512_FN void axpy_q8_0_rows512(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                        const float *a, float *y) {
    const block_q8_0 *const *w = (const block_q8_0 *const *)rows;
    for (int64_t b = c0 / QK8_0; b < c1 / QK8_0; b++) {
        float s[PI_KERNEL_ROWS];
        const int8_t *qs[PI_KERNEL_ROWS];
        scales_q8_0(nr, w, b, a, s, qs);
        axpy_q8_512(nr, qs, s, y + b * QK8_0);
    }
}

INLINE AVX512_FN void axpy_f32_rows512(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                       const float *a, float *y) {
    const float *const *w = (const float *const *)rows;
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
        __m512 yv = _mm512_loadu_ps(y + c);
        for (int r = 0; r < nr; r++) yv = _mm512_fmadd_ps(_mm512_set1_ps(a[r]), _mm512_loadu_ps(w[r] + c), yv);
        _mm512_storeu_ps(y + c, yv);
    }
    tail_axpy_f32(nr, w, a, c, c1, y);
}

INLINE AVX512_FN void axpy_f16_rows512(int nr, int64_t c0, int64_t c1, const void *const rows[],
                                       const float *a, float *y) {
    const pi_half *const *w = (const pi_half *const *)rows;
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
        __m512 yv = _mm512_loadu_ps(y + c);
        for (int r = 0; r < nr; r++) {
            const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w[r] + c)));
            yv = _mm512_fmadd_ps(_mm512_set1_ps(a[r]), wv, yv);
        }
        _mm512_storeu_ps(y + c, yv);
    }
    tail_axpy_f16(nr, w, a, c, c1, y);
}

AXPY_ENTRY(AVX512_FN, axpy_f32_avx512, axpy_f32_rows512)
AXPY_ENTRY(AVX512_FN, axpy_f16_avx512, axpy_f16_rows512)
AXPY_ENTRY(AVX512_FN, axpy_q4_0_avx512, axpy_q4_0_rows512)
AXPY_ENTRY(AVX512_FN, axpy_q4_1_avx512, axpy_q4_1_rows512)
AXPY_ENTRY(AVX512_FN, axpy_q8_0_avx512, axpy_q8_0_rows512)

/* ==== AVX-512 attention and SwiGLU: llama.cpp's AVX-512 build, 16 lanes =======================
 * (pi_kernels.lanes = 16; the scalar twins are pi_*_ref(16, ...) in kernels.c). */

/* pi_expf_ggml(16, x) in 16 lanes: ggml's AVX-512 ggml_v_expf. */
INLINE AVX512_FN __m512 expf16(__m512 x) {
    const __m512 shift = _mm512_set1_ps(0x1.8p23f);
    const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), shift), shift);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __m512 r2 = _mm512_mul_ps(r, r);
    const __m512 p3 = _mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), r, _mm512_set1_ps(0x1.573e2ep-5f));
    const __m512 p1 = _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), r, _mm512_set1_ps(0x1.fffdb6p-2f));
    const __m512 p0 = _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), r, _mm512_set1_ps(1.0f));
    const __m512 j = _mm512_fmadd_ps(_mm512_fmadd_ps(p3, r2, p1), r2, p0); /* e^r */
    const __m512 e = _mm512_scalef_ps(j, n);
    const __mmask16 out = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
    if (!out) return e;
    const __mmask16 neg = _mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ);
    const __m512 flush = _mm512_mask_blend_ps(neg, _mm512_set1_ps(INFINITY), _mm512_setzero_ps());
    return _mm512_mask_blend_ps(out, e, flush);
}

/* silu(x) = x / (1 + pi_expf_ggml(16, -x)) in 16 lanes. */
INLINE AVX512_FN __m512 silu16(__m512 x) {
    const __m512 e = expf16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* The first n (< 16) lanes. */
INLINE AVX512_FN __mmask16 first_lanes(int64_t n) { return (__mmask16)((1u << n) - 1); }

AVX512_FN static void glu_silu_avx512(int64_t n, const float *g, float *u) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(u + i, _mm512_mul_ps(silu16(_mm512_loadu_ps(g + i)), _mm512_loadu_ps(u + i)));
    if (i < n) {
        const __mmask16 m = first_lanes(n - i);
        _mm512_mask_storeu_ps(u + i, m, _mm512_mul_ps(silu16(_mm512_maskz_loadu_ps(m, g + i)),
                                                      _mm512_maskz_loadu_ps(m, u + i)));
    }
}

AVX512_FN static void act_silu_avx512(int64_t n, float *x) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, silu16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 m = first_lanes(n - i);
        _mm512_mask_storeu_ps(x + i, m, silu16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

AVX512_FN static double softmax_exp_avx512(int n, float *x, float max) {
    const __m512 mv = _mm512_set1_ps(max);
    double sum = 0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = expf16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
        _mm512_storeu_ps(x + i, v);
        sum += hsum16(v);
    }
    if (i < n) { /* lanes past n: 0, as the twin's zero-extended last chunk */
        const __mmask16 m = first_lanes(n - i);
        const __m512 v = _mm512_maskz_mov_ps(m, expf16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv)));
        _mm512_mask_storeu_ps(x + i, m, v);
        sum += hsum16(v);
    }
    return sum;
}

/* 16 f16 from p as f32. */
INLINE AVX512_FN __m512 load_f16x16(const pi_half *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* The lanes of m of load_f16x16 (the others 0: not read). */
INLINE AVX512_FN __m512 load_f16x16_masked(const pi_half *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

/* out[r] = sum_i a[r][i] * b[i] for i < n, r < 8, in lanes i % 16, added as hsum16 (folded to 8
 * lanes, then hsum8x8's transpose: the same bits as 8 hsum16 calls). Only the n elements are
 * read (the last chunk's by masked loads). */
INLINE AVX512_FN void dot8_f16_f32_lanes16(const pi_half *const a[8], const float *b, int n, float out[8]) {
    __m512 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 bv = _mm512_loadu_ps(b + i);
        for (int r = 0; r < 8; r++) acc[r] = _mm512_fmadd_ps(load_f16x16(a[r] + i), bv, acc[r]);
    }
    if (i < n) {
        const __mmask16 m = first_lanes(n - i);
        const __m512 bv = _mm512_maskz_loadu_ps(m, b + i);
        for (int r = 0; r < 8; r++) acc[r] = _mm512_fmadd_ps(load_f16x16_masked(a[r] + i, m), bv, acc[r]);
    }
    __m256 folded[8];
    for (int r = 0; r < 8; r++)
        folded[r] = _mm256_add_ps(_mm512_castps512_ps256(acc[r]),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r]), 1)));
    hsum8x8(folded, out);
}

/* One row of dot8_f16_f32_lanes16. */
INLINE AVX512_FN float dot_f16_f32_lanes16(const pi_half *a, const float *b, int n) {
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(load_f16x16(a + i), _mm512_loadu_ps(b + i), acc);
    if (i < n) {
        const __mmask16 m = first_lanes(n - i);
        acc = _mm512_fmadd_ps(load_f16x16_masked(a + i, m), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return hsum16(acc);
}

AVX512_FN static void attn_scores_avx512(int n_pos, int hd, const pi_half *k, int64_t ldk,
                                         const float *q, float scale, float *s) {
    int p = 0;
    for (; p + 8 <= n_pos; p += 8) {
        const pi_half *rows[8];
        float d[8];
        for (int r = 0; r < 8; r++) rows[r] = k + (size_t)(p + r) * ldk;
        dot8_f16_f32_lanes16(rows, q, hd, d);
        for (int r = 0; r < 8; r++) s[p + r] = d[r] * scale;
    }
    for (; p < n_pos; p++) s[p] = dot_f16_f32_lanes16(k + (size_t)p * ldk, q, hd) * scale;
}

AVX512_FN static void attn_values_avx512(int n_pos, int hd, const pi_half *vt, int64_t ldv,
                                         const float *p, float *out) {
    int i = 0;
    for (; i + 8 <= hd; i += 8) {
        const pi_half *rows[8];
        for (int r = 0; r < 8; r++) rows[r] = vt + (size_t)(i + r) * ldv;
        dot8_f16_f32_lanes16(rows, p, n_pos, out + i);
    }
    for (; i < hd; i++) out[i] = dot_f16_f32_lanes16(vt + (size_t)i * ldv, p, n_pos);
}

/* ==== AVX-512 rows8 kernels over several tokens (pi_dot8n_fn; twins: the dot8 of each token) ===
 * A 512-bit register holds two of dot8_*_avx2's lane registers, the 8 rows of one lane in each
 * half: chunk c of a Q4/Q5 block as [lane c | lane 4 + c] (its low and its high nibbles), chunks
 * 2j and 2j + 1 of a Q8_0 block as [lane 2j | lane 2j + 1]. A block is unpacked once for up to
 * DOT8N_TOK tokens (4 x 4 accumulators and the unpacked block fit the 32 registers); each token's
 * lanes take the AVX2 kernel's products in its order and store_lanes8 adds them as it does, so
 * every token gets dot8_*_avx2's bits. The AVX2 table has no dot8n: 16 registers cannot hold 8
 * lanes of several tokens, and a pass over the blocks per lane pair (2 lanes of 3 tokens, the
 * chunk unpacked once) measured 0.8x (Q4_1) to 1.15x (Q5_0) the token-by-token dot8. */
#define DOT8N_TOK 4

/* Words k0 and k1 (4 bytes each) of x's low 256 bits, broadcast over the low and the high half. */
INLINE AVX512_FN __m512i words_pair(__m512i x, int k0, int k1) {
    return _mm512_permutexvar_epi32(join_si(_mm256_set1_epi32(k0), _mm256_set1_epi32(k1)), x);
}

/* The 8 rows' halves h (scales or mins) as floats, in both halves. */
INLINE AVX512_FN __m512 halves_pair(const pi_half h[PI_ROWS8]) {
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
    return join_ps(f, f);
}

/* out = store_lanes8 of the lanes held in pairs: acc[i]'s low half is lane lo[i], its high lane
 * lo[i] + step (step 4: the nibble types' pairs; 1: Q8_0's). */
INLINE AVX512_FN void store_pairs(const __m512 acc[4], const int lo[4], int step, __m256 extra, float out[8]) {
    __m256 l[8];
    for (int i = 0; i < 4; i++) {
        l[lo[i]] = _mm512_castps512_ps256(acc[i]);
        l[lo[i] + step] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i]), 1));
    }
    store_lanes8(l, extra, out);
}

/* Chunk c of an interleaved Q4/Q5 block as [lane c | lane 4 + c] quants: low nibbles, high
 * nibbles, plus 16 where the fifth bit is set (h: qh8 in both halves) when `five`. */
INLINE AVX512_FN __m512i nib_pair(const uint8_t qs[128], int c, int five, __m512i h) {
    const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
    const __m512i shift = join_si(_mm256_setzero_si256(), _mm256_set1_epi16(4));
    __m512i q = _mm512_and_si512(_mm512_srlv_epi16(v, shift), _mm512_set1_epi8(0x0F));
    if (five) {
        const __m512i spread = _mm512_shuffle_epi8(h, join_si(qh_spread_ctl(c), qh_spread_ctl(4 + c)));
        const __m512i bit = _mm512_set1_epi32(QH_LANE_BITS(c)); /* lanes c and 4 + c share it */
        q = _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(spread, bit), q, _mm512_set1_epi8(0x10));
    }
    return q;
}

static const int NIB_PAIRS[4] = {0, 1, 2, 3}, Q8_PAIRS[4] = {0, 2, 4, 6};

/* nt (<= DOT8N_TOK) tokens over the whole group: the 4- and 5-bit types; XT the activation's
 * block (q8_0, or q8_1 with MIN: the m * s term summed per block as dot8_*_avx2 does). */
#define NIB_DOT8N_AVX512(T, XT, FIVE, QH, OFF, MIN)                                                \
    INLINE AVX512_FN void pass_##T##_avx512(int64_t nb, const block_##T##x8 *w, const uint8_t *act, \
                                            size_t act_bytes, int nt, float *out, int64_t ldo) {  \
        __m512 acc[DOT8N_TOK][4];                                                                \
        __m256 summ[DOT8N_TOK];                                                                  \
        for (int t = 0; t < nt; t++) {                                                           \
            summ[t] = _mm256_setzero_ps();                                                       \
            for (int c = 0; c < 4; c++) acc[t][c] = _mm512_setzero_ps();                         \
        }                                                                                        \
        for (int64_t b = 0; b < nb; b++) {                                                       \
            const __m512i h = _mm512_broadcast_i64x4(QH(w[b]));                                  \
            __m512i q[4];                                                                        \
            for (int c = 0; c < 4; c++) q[c] = nib_pair(w[b].qs, c, FIVE, h);                    \
            const __m512 dw = halves_pair(w[b].d);                                               \
            for (int t = 0; t < nt; t++) {                                                       \
                const block_##XT *x = (const block_##XT *)(act + (size_t)t * act_bytes) + b;     \
                const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(fp16_table[x->d]));            \
                const __m512i xv = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x->qs)); \
                for (int c = 0; c < 4; c++) {                                                    \
                    const __m512i y = words_pair(xv, c, 4 + c);                                  \
                    __m512i s = dot_u8s8_512(q[c], y);                                           \
                    if (OFF) s = _mm512_sub_epi32(s, dot_u8s8_512(_mm512_set1_epi8(OFF), y));    \
                    acc[t][c] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[t][c]);            \
                }                                                                                \
                MIN(summ[t], w[b], x);                                                           \
            }                                                                                    \
        }                                                                                        \
        for (int t = 0; t < nt; t++) store_pairs(acc[t], NIB_PAIRS, 4, summ[t], out + t * ldo);  \
    }
#define NO_MIN(summ, wb, x) (void)0
#define ADD_MIN(summ, wb, x) summ = _mm256_add_ps(summ, scales8((wb).m, (x)->s))
#define Q4_QH(w) _mm256_setzero_si256()
#define Q5_QH(w) qh8((w).qh)
NIB_DOT8N_AVX512(q4_0, q8_0, 0, Q4_QH, 8, NO_MIN)
NIB_DOT8N_AVX512(q5_0, q8_0, 1, Q5_QH, 16, NO_MIN)
NIB_DOT8N_AVX512(q4_1, q8_1, 0, Q4_QH, 0, ADD_MIN)
NIB_DOT8N_AVX512(q5_1, q8_1, 1, Q5_QH, 0, ADD_MIN)
#undef NIB_DOT8N_AVX512
#undef Q4_QH
#undef Q5_QH
#undef NO_MIN
#undef ADD_MIN

/* Q8_0: chunks 2j and 2j + 1 in one register; |w| times the activation with w's sign. */
INLINE AVX512_FN void pass_q8_0_avx512(int64_t nb, const block_q8_0x8 *w, const uint8_t *act,
                                       size_t act_bytes, int nt, float *out, int64_t ldo) {
    __m512 acc[DOT8N_TOK][4];
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < 4; j++) acc[t][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i mag[4];
        __mmask64 neg[4];
        for (int j = 0; j < 4; j++) {
            const __m512i v = _mm512_loadu_si512((const void *)(w[b].qs + 64 * j));
            mag[j] = _mm512_abs_epi8(v);
            neg[j] = _mm512_movepi8_mask(v);
        }
        const __m512 dw = halves_pair(w[b].d);
        for (int t = 0; t < nt; t++) {
            const block_q8_0 *x = (const block_q8_0 *)(act + (size_t)t * act_bytes) + b;
            const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(fp16_table[x->d]));
            const __m512i xv = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x->qs));
            for (int j = 0; j < 4; j++) {
                const __m512i y = words_pair(xv, 2 * j, 2 * j + 1);
                const __m512i s = dot_u8s8_512(mag[j], _mm512_mask_sub_epi8(y, neg[j], _mm512_setzero_si512(), y));
                acc[t][j] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[t][j]);
            }
        }
    }
    for (int t = 0; t < nt; t++) store_pairs(acc[t], Q8_PAIRS, 1, _mm256_setzero_ps(), out + t * ldo);
}

/* The entries: the tokens DOT8N_TOK at a time, each count its own unrolled pass. */
#define DOT8N_AVX512(T)                                                                          \
    AVX512_FN static void dot8n_##T##_avx512(int64_t n, const void *group, const void *act,       \
                                             size_t act_bytes, int64_t n_tok, float *out, int64_t ldo) { \
        const block_##T##x8 *w = group;                                                          \
        for (int64_t t = 0; t < n_tok; t += DOT8N_TOK) {                                         \
            const uint8_t *a = (const uint8_t *)act + (size_t)t * act_bytes;                     \
            float *o = out + t * ldo;                                                            \
            switch (n_tok - t < DOT8N_TOK ? (int)(n_tok - t) : DOT8N_TOK) {                      \
            case 1: pass_##T##_avx512(n / 32, w, a, act_bytes, 1, o, ldo); break;                \
            case 2: pass_##T##_avx512(n / 32, w, a, act_bytes, 2, o, ldo); break;                \
            case 3: pass_##T##_avx512(n / 32, w, a, act_bytes, 3, o, ldo); break;                \
            default: pass_##T##_avx512(n / 32, w, a, act_bytes, DOT8N_TOK, o, ldo); break;       \
            }                                                                                    \
        }                                                                                        \
    }
DOT8N_AVX512(q4_0)
DOT8N_AVX512(q4_1)
DOT8N_AVX512(q5_0)
DOT8N_AVX512(q5_1)
DOT8N_AVX512(q8_0)
#undef DOT8N_AVX512

const pi_kernels pi_kernels_avx512 = {
    .name = "avx512",
    .lanes = 16, /* llama.cpp's AVX-512 build: its attention and SwiGLU order */
    .dot = {[PI_TYPE_IQ4_NL] = dot_iq4_nl_avx2, [PI_TYPE_IQ4_XS] = dot_iq4_xs_avx2, /* ggml's AVX2 order */
            [PI_TYPE_BF16] = dot_bf16_avx2, /* the scalar twin's 8 lanes */
            [PI_TYPE_F32] = dot_f32_avx512, [PI_TYPE_F16] = dot_f16_avx512,
            [PI_TYPE_Q4_0] = dot_q4_0_avx512, [PI_TYPE_Q4_1] = dot_q4_1_avx512,
            [PI_TYPE_Q5_0] = dot_q5_0_avx2, [PI_TYPE_Q5_1] = dot_q5_1_avx2, /* AVX2's */
            [PI_TYPE_Q8_0] = dot_q8_0_avx512,
            /* the K-quants: ggml's AVX2 order */
            [PI_TYPE_Q2_K] = dot_q2_K_avx2, [PI_TYPE_Q3_K] = dot_q3_K_avx2,
            [PI_TYPE_Q4_K] = dot_q4_K_avx2, [PI_TYPE_Q5_K] = dot_q5_K_avx2,
            [PI_TYPE_Q6_K] = dot_q6_K_avx2},
    .dot8 = {[PI_TYPE_IQ4_NL] = dot8_iq4_nl_avx2,
             [PI_TYPE_Q4_0] = dot8_q4_0_avx2, [PI_TYPE_Q4_1] = dot8_q4_1_avx2, /* 8 rows = 8 lanes */
             [PI_TYPE_Q5_0] = dot8_q5_0_avx2, [PI_TYPE_Q5_1] = dot8_q5_1_avx2,
             [PI_TYPE_Q8_0] = dot8_q8_0_avx2},
    .dot8n = {[PI_TYPE_Q4_0] = dot8n_q4_0_avx512, [PI_TYPE_Q4_1] = dot8n_q4_1_avx512,
              [PI_TYPE_Q5_0] = dot8n_q5_0_avx512, [PI_TYPE_Q5_1] = dot8n_q5_1_avx512,
              [PI_TYPE_Q8_0] = dot8n_q8_0_avx512}, /* IQ4_NL: its dot8, token by token */
    .axpy = {[PI_TYPE_IQ4_NL] = axpy_iq4_nl_avx2, [PI_TYPE_IQ4_XS] = axpy_iq4_xs_avx2, /* AVX2's */
             [PI_TYPE_BF16] = axpy_bf16_avx2,
             [PI_TYPE_F32] = axpy_f32_avx512, [PI_TYPE_F16] = axpy_f16_avx512,
             [PI_TYPE_Q4_0] = axpy_q4_0_avx512, [PI_TYPE_Q4_1] = axpy_q4_1_avx512,
             [PI_TYPE_Q5_0] = axpy_q5_0_avx2, [PI_TYPE_Q5_1] = axpy_q5_1_avx2, /* AVX2's */
             [PI_TYPE_Q8_0] = axpy_q8_0_avx512, [PI_TYPE_Q2_K] = axpy_q2_K_avx2,
             [PI_TYPE_Q3_K] = axpy_q3_K_avx2, [PI_TYPE_Q4_K] = axpy_q4_K_avx2,
             [PI_TYPE_Q5_K] = axpy_q5_K_avx2, [PI_TYPE_Q6_K] = axpy_q6_K_avx2},
    /* a few KB per call: AVX2 is plenty */
    .quantize_act = {[PI_TYPE_Q8_0] = quantize_q8_0_avx2, [PI_TYPE_Q8_1] = quantize_q8_1_avx2,
                     [PI_TYPE_Q8_K] = pi_quantize_q8_K},
    .attn_scores = attn_scores_avx512,
    .softmax_exp = softmax_exp_avx512,
    .attn_values = attn_values_avx512,
    /* SiLU in 16 lanes with the AVX-512 build's exp; GELU and ReLU as the AVX2 table's */
    .glu = {[PI_ACT_SILU] = glu_silu_avx512, [PI_ACT_RELU] = glu_relu_avx2,
            [PI_ACT_GELU_TANH] = glu_gelu_tanh_avx2},
    .act = {[PI_ACT_SILU] = act_silu_avx512, [PI_ACT_RELU] = act_relu_avx2,
            [PI_ACT_GELU_TANH] = act_gelu_tanh_avx2},
    .to_f16 = to_f16_avx2,
    .round_f16 = round_f16_avx2,
    .select = select_avx2,
    .rope = rope_avx2,
};

#endif /* __x86_64__ */
