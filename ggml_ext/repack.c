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

int pi_repack_rows8(int type, const void *W, int64_t n_rows, int64_t n_cols, void *out) {
    PI_CHECK_NULL(W);
    PI_CHECK_NULL(out);
    const pi_type_traits *t = pi_type_traits_of(type);
    if (!t || !pi_type_is_rows8(t)) {
        char list[128];
        pi_type_list(pi_type_is_rows8, list, sizeof list);
        return pi_fail(PI_ERR_TYPE, "pi_repack_rows8: type %s has no 8-row layout (%s)",
                       pi_type_name(type), list);
    }
    if (n_rows <= 0 || n_cols <= 0 || n_cols % t->block_elems)
        return pi_fail(PI_ERR_SHAPE, "pi_repack_rows8: n_rows = %lld, n_cols = %lld: need positive sizes, n_cols a multiple of %lld",
                       (long long)n_rows, (long long)n_cols, (long long)t->block_elems);
    if (W == out) return pi_fail(PI_ERR_RANGE, "pi_repack_rows8: cannot repack in place");
    const int64_t nb = n_cols / t->block_elems, bb = t->block_bytes;
    const int head = t->rows8_head, n_chunks = (int)(bb - head) / 4;
    const size_t row_bytes = (size_t)(nb * bb);
    const uint8_t *src = W;
    uint8_t *dst = out;
    const int64_t n_groups = n_rows / PI_ROWS8;
    for (int64_t g = 0; g < n_groups; g++) {
        const uint8_t *rows = src + (size_t)g * PI_ROWS8 * row_bytes;
        uint8_t *grp = dst + (size_t)g * PI_ROWS8 * row_bytes;
        for (int64_t b = 0; b < nb; b++)
            for (int r = 0; r < PI_ROWS8; r++)
                move_block(head, n_chunks, r, rows + (size_t)r * row_bytes + (size_t)(b * bb),
                           grp + (size_t)(b * PI_ROWS8 * bb), 1);
    }
    const size_t done = (size_t)n_groups * PI_ROWS8 * row_bytes;
    memcpy(dst + done, src + done, (size_t)n_rows * row_bytes - done); /* the plain tail rows */
    return pi_ok();
}

/* The inverse for one row: row `row` of a repacked matrix Wp -> out, one plain row. */
void pi_rows8_unpack_row(int type, const void *Wp, int64_t n_rows, int64_t n_cols, int64_t row, void *out) {
    const pi_type_traits *t = pi_type_traits_of(type);
    const int64_t nb = n_cols / t->block_elems, bb = t->block_bytes;
    const int head = t->rows8_head, n_chunks = (int)(bb - head) / 4;
    const size_t row_bytes = (size_t)(nb * bb);
    const uint8_t *src = Wp;
    uint8_t *dst = out;
    if (row >= n_rows / PI_ROWS8 * PI_ROWS8) { /* a plain tail row */
        memcpy(dst, src + (size_t)row * row_bytes, row_bytes);
        return;
    }
    const uint8_t *grp = src + (size_t)(row / PI_ROWS8) * PI_ROWS8 * row_bytes;
    for (int64_t b = 0; b < nb; b++)
        move_block(head, n_chunks, (int)(row % PI_ROWS8), grp + (size_t)(b * PI_ROWS8 * bb), dst + (size_t)(b * bb), 0);
}
