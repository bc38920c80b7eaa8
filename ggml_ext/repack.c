/* repack.c - dense matrices into the 8-row interleaved layout of blocks.h ("rows8").
 *
 * A repacked matrix has the plain matrix's size: rows 8g .. 8g + 7 become group g, a run of
 * n_cols / block_elems interleaved blocks (8 plain blocks' bytes each); the n_rows % 8 rows after
 * the last whole group stay plain, at the offset they had (row r at r * row_bytes). Every rows8
 * block is its 8 rows' scale fields (the type's rows8_head bytes per row, 2-byte fields stored
 * field-major), then their quants in 4-byte chunks, chunk c of row r at 32 c + 4 r (types.h).
 * The 8-row kernels (kernels.c, kernels_x86.c) read it; nothing else does.
 */
#include <string.h>

#include "common.h"
#include "types.h"

/* Copies the block of row r between its plain form and a rows8 block: its 2-byte scale fields
 * (field f at 2 f in the plain block, at 16 f + 2 r in the rows8 block) and its 4-byte quant
 * chunks (chunk c at head + 4 c, at 8 head + 32 c + 4 r). src is plain and dst rows8 when `pack`,
 * else the other way round. */
static inline void move_block(int head, int n_chunks, int r, const uint8_t *src, uint8_t *dst,
                              int pack) {
    for (int f = 0; f < head / 2; f++) {
        const size_t plain = (size_t)(2 * f), rows8 = (size_t)(2 * PI_ROWS8 * f + 2 * r);
        memcpy(dst + (pack ? rows8 : plain), src + (pack ? plain : rows8), 2);
    }
    for (int c = 0; c < n_chunks; c++) {
        const size_t plain = (size_t)(head + 4 * c), rows8 = (size_t)(PI_ROWS8 * head + 32 * c + 4 * r);
        memcpy(dst + (pack ? rows8 : plain), src + (pack ? plain : rows8), 4);
    }
}

/* Moves row r (of 8) of a group between its plain form (n_cols elements of type t) and the
 * group's rows8 blocks, block by block: src is the plain row and dst the group when `pack`,
 * else the other way round (move_block). */
static void move_row(const pi_type_traits *t, int64_t n_cols, int r, const uint8_t *src, uint8_t *dst,
                     int pack) {
    const int64_t nb = n_cols / t->block_elems, bb = t->block_bytes;
    const int head = t->rows8_head, n_chunks = (int)(bb - head) / 4;
    for (int64_t b = 0; b < nb; b++) {
        const size_t plain = (size_t)(b * bb), rows8 = (size_t)(b * PI_ROWS8 * bb);
        move_block(head, n_chunks, r, src + (pack ? plain : rows8), dst + (pack ? rows8 : plain), pack);
    }
}

int pi_repack_rows8(int type, const void *W, int64_t n_rows, int64_t n_cols, void *out) {
    PI_CHECK_NULL(W);
    PI_CHECK_NULL(out);
    const pi_type_traits *t = pi_type_traits_of(type);
    if (!t || !pi_type_is_rows8(t)) return pi_fail_rows8(__func__, type);
    if (n_rows <= 0 || n_cols <= 0 || n_cols % t->block_elems)
        return pi_fail(PI_ERR_SHAPE, "pi_repack_rows8: n_rows = %lld, n_cols = %lld: need positive sizes, n_cols a multiple of %lld",
                       (long long)n_rows, (long long)n_cols, (long long)t->block_elems);
    if (W == out) return pi_fail(PI_ERR_RANGE, "pi_repack_rows8: cannot repack in place");
    const size_t row_bytes = (size_t)pi_type_row_bytes(t, n_cols);
    const uint8_t *src = W;
    uint8_t *dst = out;
    const int64_t n_groups = n_rows / PI_ROWS8;
    for (int64_t g = 0; g < n_groups; g++)
        for (int r = 0; r < PI_ROWS8; r++)
            move_row(t, n_cols, r, src + (size_t)(g * PI_ROWS8 + r) * row_bytes,
                     dst + (size_t)g * PI_ROWS8 * row_bytes, 1);
    const size_t done = (size_t)n_groups * PI_ROWS8 * row_bytes;
    memcpy(dst + done, src + done, (size_t)n_rows * row_bytes - done); /* the plain tail rows */
    return pi_ok();
}

/* The inverse for one row: row `row` of a repacked matrix Wp -> out, one plain row. */
void pi_rows8_unpack_row(int type, const void *Wp, int64_t n_rows, int64_t n_cols, int64_t row, void *out) {
    const pi_type_traits *t = pi_type_traits_of(type);
    const size_t row_bytes = (size_t)pi_type_row_bytes(t, n_cols);
    const uint8_t *src = Wp;
    if (row >= n_rows / PI_ROWS8 * PI_ROWS8) { /* a plain tail row */
        memcpy(out, src + (size_t)row * row_bytes, row_bytes);
        return;
    }
    move_row(t, n_cols, (int)(row % PI_ROWS8), src + (size_t)(row / PI_ROWS8) * PI_ROWS8 * row_bytes, out, 0);
}
