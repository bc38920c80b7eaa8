/* types.c - the type table (types.h) and the public entry points over it: pi_type_info,
 * pi_type_describe, pi_row_bytes, pi_quantize_row, pi_dequantize_row. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "quants.h"
#include "types.h"

/* A rows8 block's scale fields per row: what precedes its quants, over 8 rows. */
#define ROWS8_HEAD(x8) (int)(offsetof(x8, qs) / PI_ROWS8)

static const pi_type_traits TRAITS[PI_N_TYPE_IDS] = {
    [PI_TYPE_F32] = {.name = "F32", .block_elems = 1, .block_bytes = sizeof(float),
                     .quantize = pi_quantize_f32, .dequantize = pi_dequantize_f32,
                     .weight = 1, .act_type = PI_TYPE_F32, .elem = pi_elem_f32},
    [PI_TYPE_F16] = {.name = "F16", .block_elems = 1, .block_bytes = sizeof(pi_half),
                     .quantize = pi_quantize_f16, .dequantize = pi_dequantize_f16,
                     .weight = 1, .act_type = PI_TYPE_F32, .elem = pi_elem_f16},
    [PI_TYPE_Q4_0] = {.name = "Q4_0", .block_elems = QK4_0, .block_bytes = sizeof(block_q4_0),
                      .quantize = pi_quantize_q4_0, .dequantize = pi_dequantize_q4_0,
                      .weight = 1, .act_type = PI_TYPE_Q8_0, .elem = pi_elem_q4_0,
                      .rows8_head = ROWS8_HEAD(block_q4_0x8)},
    [PI_TYPE_Q4_1] = {.name = "Q4_1", .block_elems = QK4_1, .block_bytes = sizeof(block_q4_1),
                      .quantize = pi_quantize_q4_1, .dequantize = pi_dequantize_q4_1,
                      .weight = 1, .act_type = PI_TYPE_Q8_1, .elem = pi_elem_q4_1,
                      .rows8_head = ROWS8_HEAD(block_q4_1x8)},
    [PI_TYPE_Q5_0] = {.name = "Q5_0", .block_elems = QK5_0, .block_bytes = sizeof(block_q5_0),
                      .quantize = pi_quantize_q5_0, .dequantize = pi_dequantize_q5_0,
                      .weight = 1, .act_type = PI_TYPE_Q8_0, .elem = pi_elem_q5_0,
                      .rows8_head = ROWS8_HEAD(block_q5_0x8)},
    [PI_TYPE_Q5_1] = {.name = "Q5_1", .block_elems = QK5_1, .block_bytes = sizeof(block_q5_1),
                      .quantize = pi_quantize_q5_1, .dequantize = pi_dequantize_q5_1,
                      .weight = 1, .act_type = PI_TYPE_Q8_1, .elem = pi_elem_q5_1,
                      .rows8_head = ROWS8_HEAD(block_q5_1x8)},
    [PI_TYPE_Q8_0] = {.name = "Q8_0", .block_elems = QK8_0, .block_bytes = sizeof(block_q8_0),
                      .quantize = pi_quantize_q8_0, .dequantize = pi_dequantize_q8_0,
                      .weight = 1, .act_type = PI_TYPE_Q8_0, .elem = pi_elem_q8_0,
                      .rows8_head = ROWS8_HEAD(block_q8_0x8)},
    [PI_TYPE_Q8_1] = {.name = "Q8_1", .block_elems = QK8_1, .block_bytes = sizeof(block_q8_1),
                      .quantize = pi_quantize_q8_1, .dequantize = pi_dequantize_q8_1},
    /* the K-quants: no quantizer for the weights (their rows come from llama.cpp's files) */
#define K_WEIGHT(ID, T)                                                                        \
    [PI_TYPE_##ID] = {.name = #ID, .block_elems = QK_K, .block_bytes = sizeof(block_##T),       \
                      .dequantize = pi_dequantize_##T, .weight = 1, .act_type = PI_TYPE_Q8_K,   \
                      .elem = pi_elem_##T}
    K_WEIGHT(Q2_K, q2_K),
    K_WEIGHT(Q3_K, q3_K),
    K_WEIGHT(Q4_K, q4_K),
    K_WEIGHT(Q5_K, q5_K),
    K_WEIGHT(Q6_K, q6_K),
#undef K_WEIGHT
    [PI_TYPE_Q8_K] = {.name = "Q8_K", .block_elems = QK_K, .block_bytes = sizeof(block_q8_K),
                      .quantize = pi_quantize_q8_K, .dequantize = pi_dequantize_q8_K},
    /* IQ4_NL, IQ4_XS: no quantizer either; BF16 takes x as it is (ggml rounds it to BF16) */
    [PI_TYPE_IQ4_NL] = {.name = "IQ4_NL", .block_elems = QK4_NL, .block_bytes = sizeof(block_iq4_nl),
                        .dequantize = pi_dequantize_iq4_nl, .weight = 1, .act_type = PI_TYPE_Q8_0,
                        .elem = pi_elem_iq4_nl, .rows8_head = ROWS8_HEAD(block_iq4_nlx8)},
    [PI_TYPE_IQ4_XS] = {.name = "IQ4_XS", .block_elems = QK_K, .block_bytes = sizeof(block_iq4_xs),
                        .dequantize = pi_dequantize_iq4_xs, .weight = 1, .act_type = PI_TYPE_Q8_K,
                        .elem = pi_elem_iq4_xs},
    [PI_TYPE_BF16] = {.name = "BF16", .block_elems = 1, .block_bytes = sizeof(pi_bf16),
                      .quantize = pi_quantize_bf16, .dequantize = pi_dequantize_bf16,
                      .weight = 1, .act_type = PI_TYPE_F32, .elem = pi_elem_bf16},
};

const pi_type_traits *pi_type_traits_of(int type) {
    return type >= 0 && type < PI_N_TYPE_IDS && TRAITS[type].name ? &TRAITS[type] : NULL;
}

const char *pi_type_name(int type) {
    const pi_type_traits *t = pi_type_traits_of(type);
    return t ? t->name : "unknown";
}

int pi_type_is_weight(const pi_type_traits *t) { return t->weight; }

int pi_type_is_rows8(const pi_type_traits *t) { return t->rows8_head > 0; }

int pi_fail_rows8(const char *fn, int type) {
    char list[128];
    pi_type_list(pi_type_is_rows8, list, sizeof list);
    return pi_fail(PI_ERR_TYPE, "%s: type %s has no 8-row layout (%s)", fn, pi_type_name(type), list);
}

static int is_known(const pi_type_traits *t) { return t != NULL; }

void pi_type_list(int (*pred)(const pi_type_traits *t), char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = '\0';
    for (int id = 0; id < PI_N_TYPE_IDS; id++) {
        const pi_type_traits *t = pi_type_traits_of(id);
        if (!t || !pred(t) || len >= cap) continue;
        len += (size_t)snprintf(buf + len, cap - len, "%s%s=%d", len ? ", " : "", t->name, id);
    }
}

/* ---- public entry points ------------------------------------------------------------------- */

static int fail_type(const char *func, int type) {
    char list[256];
    pi_type_list(is_known, list, sizeof list);
    return pi_fail(PI_ERR_TYPE, "%s: unsupported type %d (supported: %s)", func, type, list);
}

/* Validates `type` and a row length n for `func`: the type's traits, or NULL with the error
 * recorded and its status in *status. */
static const pi_type_traits *check_row(const char *func, int type, int64_t n, int *status) {
    const pi_type_traits *t = pi_type_traits_of(type);
    if (!t) {
        *status = fail_type(func, type);
    } else if (n <= 0) {
        *status = pi_fail(PI_ERR_SHAPE, "%s: n = %lld elements, must be positive", func,
                          (long long)n);
    } else if (n % t->block_elems != 0) {
        *status = pi_fail(PI_ERR_SHAPE, "%s: n = %lld is not a multiple of the %s block size %lld",
                          func, (long long)n, t->name, (long long)t->block_elems);
    } else if (n / t->block_elems > INT64_MAX / t->block_bytes) {
        *status = pi_fail(PI_ERR_SHAPE, "%s: n = %lld %s elements overflow a byte count", func,
                          (long long)n, t->name);
    } else {
        return t;
    }
    return NULL;
}

int pi_type_info(int type, int64_t *block_elems, int64_t *block_bytes) {
    PI_CHECK_NULL(block_elems);
    PI_CHECK_NULL(block_bytes);
    const pi_type_traits *t = pi_type_traits_of(type);
    if (!t) return fail_type(__func__, type);
    *block_elems = t->block_elems;
    *block_bytes = t->block_bytes;
    return pi_ok();
}

int pi_type_describe(int type, pi_type_desc *out) {
    PI_CHECK_NULL(out);
    const pi_type_traits *t = pi_type_traits_of(type);
    if (!t) return fail_type(__func__, type);
    *out = (pi_type_desc){.name = t->name, .block_elems = t->block_elems,
                          .block_bytes = t->block_bytes, .weight = t->weight,
                          .act_type = t->weight ? t->act_type : -1,
                          .rows8 = pi_type_is_rows8(t)};
    return pi_ok();
}

int pi_row_bytes(int type, int64_t n, int64_t *bytes) {
    PI_CHECK_NULL(bytes);
    int status;
    const pi_type_traits *t = check_row(__func__, type, n, &status);
    if (!t) return status;
    *bytes = pi_type_row_bytes(t, n);
    return pi_ok();
}

int pi_quantize_row(int type, const float *x, void *y, int64_t n) {
    PI_CHECK_NULL(x);
    PI_CHECK_NULL(y);
    int status;
    const pi_type_traits *t = check_row(__func__, type, n, &status);
    if (!t) return status;
    if (!t->quantize)
        return pi_fail(PI_ERR_TYPE, "%s: type %s has no quantizer (its rows come from llama.cpp's files)",
                       __func__, t->name);
    t->quantize(x, y, n);
    return pi_ok();
}

int pi_dequantize_row(int type, const void *x, float *y, int64_t n) {
    PI_CHECK_NULL(x);
    PI_CHECK_NULL(y);
    int status;
    const pi_type_traits *t = check_row(__func__, type, n, &status);
    if (!t) return status;
    t->dequantize(x, y, n);
    return pi_ok();
}
