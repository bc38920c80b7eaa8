/* repack.c - dense matrices into the 8-row interleaved layout of blocks.h ("rows8").
 *
 * A repacked matrix has the plain matrix's size: rows 8g .. 8g + 7 become group g, a run of
 * n_cols / 32 interleaved blocks (8 plain blocks' bytes each); the n_rows % 8 rows after the last
 * whole group stay plain, at the offset they had (row r at r * row_bytes). The 8-row kernels
 * (kernels.c, kernels_x86.c) read it; nothing else does.
 */
#include <string.h>

#include "common.h"
#include "quants.h"

/* Block b of rows[0..7] (plain rows of one type) -> one interleaved block `out`. */
static void pack_q4_0(const block_q4_0 *const rows[], int64_t b, block_q4_0x8 *out) {
    for (int r = 0; r < PI_ROWS8; r++) {
        out->d[r] = rows[r][b].d;
        for (int c = 0; c < 4; c++) memcpy(out->qs + 32 * c + 4 * r, rows[r][b].qs + 4 * c, 4);
    }
}

static void pack_q4_1(const block_q4_1 *const rows[], int64_t b, block_q4_1x8 *out) {
    for (int r = 0; r < PI_ROWS8; r++) {
        out->d[r] = rows[r][b].d;
        out->m[r] = rows[r][b].m;
        for (int c = 0; c < 4; c++) memcpy(out->qs + 32 * c + 4 * r, rows[r][b].qs + 4 * c, 4);
    }
}

static void pack_q8_0(const block_q8_0 *const rows[], int64_t b, block_q8_0x8 *out) {
    for (int r = 0; r < PI_ROWS8; r++) {
        out->d[r] = rows[r][b].d;
        for (int c = 0; c < 8; c++) memcpy(out->qs + 32 * c + 4 * r, rows[r][b].qs + 4 * c, 4);
    }
}

int pi_repack_rows8(int type, const void *W, int64_t n_rows, int64_t n_cols, void *out) {
    PI_CHECK_NULL(W);
    PI_CHECK_NULL(out);
    if (type != PI_TYPE_Q4_0 && type != PI_TYPE_Q4_1 && type != PI_TYPE_Q8_0) {
        const char *name = pi_type_name(type);
        return pi_fail(PI_ERR_TYPE, "pi_repack_rows8: type %s has no 8-row layout (Q4_0, Q4_1, Q8_0)",
                       name ? name : "unknown");
    }
    if (n_rows <= 0 || n_cols <= 0 || n_cols % 32)
        return pi_fail(PI_ERR_SHAPE, "pi_repack_rows8: n_rows = %lld, n_cols = %lld: need positive sizes, n_cols a multiple of 32",
                       (long long)n_rows, (long long)n_cols);
    if (W == out) return pi_fail(PI_ERR_RANGE, "pi_repack_rows8: cannot repack in place");
    const int64_t nb = n_cols / 32, bb = pi_type_block_bytes(type);
    const size_t row_bytes = (size_t)(nb * bb);
    const uint8_t *src = W;
    uint8_t *dst = out;
    const int64_t n_groups = n_rows / PI_ROWS8;
    for (int64_t g = 0; g < n_groups; g++) {
        const void *rows[PI_ROWS8];
        for (int r = 0; r < PI_ROWS8; r++) rows[r] = src + (size_t)(g * PI_ROWS8 + r) * row_bytes;
        uint8_t *grp = dst + (size_t)g * PI_ROWS8 * row_bytes;
        for (int64_t b = 0; b < nb; b++) {
            void *blk = grp + (size_t)b * PI_ROWS8 * (size_t)bb;
            if (type == PI_TYPE_Q4_0) pack_q4_0((const block_q4_0 *const *)rows, b, blk);
            else if (type == PI_TYPE_Q4_1) pack_q4_1((const block_q4_1 *const *)rows, b, blk);
            else pack_q8_0((const block_q8_0 *const *)rows, b, blk);
        }
    }
    const size_t done = (size_t)n_groups * PI_ROWS8 * row_bytes;
    memcpy(dst + done, src + done, (size_t)n_rows * row_bytes - done); /* the plain tail rows */
    return pi_ok();
}

/* The inverse for one row: row `row` of a repacked matrix Wp -> out, one plain row (row_bytes).
 * Every rows8 block is its 8 rows' scale fields (n_hdr halves each, field-major), then their
 * quants in 4-byte chunks, chunk c of row r at 32 c + 4 r. */
void pi_rows8_unpack_row(int type, const void *Wp, int64_t n_rows, int64_t n_cols, int64_t row, void *out) {
    const int64_t nb = n_cols / 32, bb = pi_type_block_bytes(type);
    const size_t row_bytes = (size_t)(nb * bb);
    const uint8_t *src = Wp;
    uint8_t *dst = out;
    if (row >= n_rows / PI_ROWS8 * PI_ROWS8) { /* a plain tail row */
        memcpy(dst, src + (size_t)row * row_bytes, row_bytes);
        return;
    }
    const int hdr = type == PI_TYPE_Q4_1 ? 4 : 2; /* bytes of scale fields per row */
    const int r = (int)(row % PI_ROWS8);
    const uint8_t *grp = src + (size_t)(row / PI_ROWS8) * PI_ROWS8 * row_bytes;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = grp + (size_t)b * PI_ROWS8 * (size_t)bb;
        uint8_t *o = dst + (size_t)b * (size_t)bb;
        for (int f = 0; f < hdr / 2; f++) memcpy(o + 2 * f, blk + 2 * PI_ROWS8 * f + 2 * r, 2);
        for (int c = 0; c < (bb - hdr) / 4; c++) memcpy(o + hdr + 4 * c, blk + PI_ROWS8 * hdr + 32 * c + 4 * r, 4);
    }
}
