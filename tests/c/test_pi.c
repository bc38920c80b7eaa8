/* test_pi.c - standalone C checks of the kernel entry points of pi.h (built by `make asan`).
 *
 * 1. Argument validation: the status code of every kind of bad argument, and that an index out
 *    of range is reported before the output is written.
 * 2. Every SIMD kernel against its scalar twin (switched with pi_isa_set), for every weight
 *    type, on odd shapes; and thread-count independence.
 * 3. The rows8 layout: repacked matmat equals its scalar twin bit for bit on the whole groups,
 *    equals the AVX2 pi_matmat bit for bit, and is independent of the thread count.
 * 4. The internal kernel-table entries of the forward pass (attention, softmax, SwiGLU, f16
 *    conversion, activation quantizers): every SIMD table gives its scalar twin's bits.
 * 5. The masked pair (gate and up in one job) gives two masked calls' bits; the union kernels
 *    and the sparse FFN of several tokens give each token the bits of its one-token call.
 * 6. The type table (types.h) against every ISA table: each weight type has its kernels, its
 *    activation type a quantizer and a block size dividing its own, and so on.
 * 7. A context's hidden states (pi_decode_hidden) and saved state (pi_context_get_state /
 *    set_state) on a tiny random model: validation, the round trip bit for bit.
 * Prints "N passed, N failed" and exits non-zero on any failure.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h" /* internal: the per-ISA tables (tests 4, 6) */
#include "types.h"   /* internal: the type table (tests 6), pi_rows8_unpack_row (test 3) */
#include "pi.h"

static int n_passed, n_failed;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (cond) {                                                   \
            n_passed++;                                               \
        } else {                                                      \
            n_failed++;                                               \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);               \
            printf(__VA_ARGS__);                                      \
            printf("  [%s]\n", pi_last_error());                      \
        }                                                             \
    } while (0)

/* Runs one group of checks and reports how many it made (tests/test_c.py wants every group). */
#define RUN(call)                                                                        \
    do {                                                                                 \
        const int before_ = n_passed + n_failed;                                         \
        call;                                                                            \
        printf("group %s: %d checks\n", #call, n_passed + n_failed - before_);         \
    } while (0)

#define EXPECT_STATUS(call, want) \
    do { const int st_ = (call); CHECK(st_ == (want), "%s -> %d, want %d", #call, st_, (want)); } while (0)

/* The weight types, and those of them with the rows8 layout, as the type table lists them. */
static int TYPES[PI_N_TYPE_IDS], N_TYPES, ROWS8_TYPES[PI_N_TYPE_IDS], N_ROWS8_TYPES;

static void list_types(void) {
    for (int id = 0; id < PI_N_TYPE_IDS; id++) {
        const pi_type_traits *t = pi_type_traits_of(id);
        if (t && t->weight && t->quantize) TYPES[N_TYPES++] = id; /* the K-quants and IQ types: tests/test_llama_types.py */
        if (t && t->rows8_head) ROWS8_TYPES[N_ROWS8_TYPES++] = id;
    }
}

/* Every kernel table this build has (whether this CPU runs it or not). */
static const pi_kernels *const ALL_TABLES[] = {
    &pi_kernels_scalar,
#if defined(__x86_64__)
    &pi_kernels_avx2,
    &pi_kernels_avx512,
#endif
};
#define N_TABLES (int)(sizeof ALL_TABLES / sizeof ALL_TABLES[0])

/* A deterministic uniform [-1, 1) generator. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xFFFFFF) / (float)(1 << 23) - 1.0f;
}

/* A [n_rows][n_cols] matrix of `type` from random floats; also its dequantized copy. */
typedef struct {
    int type;
    int64_t n_rows, n_cols, row_bytes;
    uint8_t *q;  /* [n_rows][row_bytes] */
    float *deq;  /* [n_rows][n_cols] */
} matrix;

static matrix make_matrix(int type, int64_t n_rows, int64_t n_cols) {
    matrix m = {.type = type, .n_rows = n_rows, .n_cols = n_cols};
    pi_row_bytes(type, n_cols, &m.row_bytes);
    float *f = malloc(sizeof(float) * (size_t)(n_rows * n_cols));
    m.q = malloc((size_t)(n_rows * m.row_bytes));
    m.deq = malloc(sizeof(float) * (size_t)(n_rows * n_cols));
    for (int64_t i = 0; i < n_rows * n_cols; i++) f[i] = frand() * (1.0f + (float)(i / n_cols % 3));
    if (pi_type_traits_of(type)->quantize) {
        pi_quantize_row(type, f, m.q, n_rows * n_cols);
    } else { /* no quantizer (the K-quants): random bytes below 0x3C, so every fp16 field is finite */
        for (int64_t i = 0; i < n_rows * m.row_bytes; i++) m.q[i] = (uint8_t)((frand() + 1.0f) * 29.9f);
    }
    pi_dequantize_row(type, m.q, m.deq, n_rows * n_cols);
    free(f);
    return m;
}

static void free_matrix(matrix *m) {
    free(m->q);
    free(m->deq);
}

static float *random_vec(int64_t n) {
    float *v = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = frand();
    return v;
}

/* ---- 1. validation -------------------------------------------------------------------------- */

static void test_validation(void) {
    matrix m = make_matrix(PI_TYPE_Q4_0, 8, 64);
    float x[64], a[64], y[64];
    for (int i = 0; i < 64; i++) x[i] = a[i] = 1.0f, y[i] = 0.0f;
    const int32_t idx[2] = {1, 2};

    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, y), PI_OK);
    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_Q4_0, NULL, 8, 64, x, y), PI_ERR_NULL);
    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_Q4_0, m.q, 8, 64, NULL, y), PI_ERR_NULL);
    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, NULL), PI_ERR_NULL);
    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_Q8_1, m.q, 8, 64, x, y), PI_ERR_TYPE);
    EXPECT_STATUS(pi_matvec(NULL, 5, m.q, 8, 64, x, y), PI_ERR_TYPE);
    EXPECT_STATUS(pi_matvec(NULL, -1, m.q, 8, 64, x, y), PI_ERR_TYPE);
    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_Q4_0, m.q, 0, 64, x, y), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_Q4_0, m.q, 8, -64, x, y), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_Q4_0, m.q, 8, 48, x, y), PI_ERR_SHAPE);

    typedef int (*indexed_fn)(pi_pool *, int, const void *, int64_t, int64_t, const float *,
                              const int32_t *, int64_t, float *);
    const struct { const char *name; indexed_fn fn; int64_t limit; } fns[] = {
        {"pi_matvec_masked", pi_matvec_masked, 8},
        {"pi_axpy_sparse", pi_axpy_sparse, 8},
        {"pi_matvec_cols_sparse", pi_matvec_cols_sparse, 64},
    };
    for (int f = 0; f < 3; f++) {
        const indexed_fn fn = fns[f].fn;
        const int64_t lim = fns[f].limit;
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, idx, 2, y), PI_OK);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, idx, 0, y), PI_OK);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, NULL, 8, 64, x, idx, 2, y), PI_ERR_NULL);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 64, NULL, idx, 2, y), PI_ERR_NULL);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, NULL, 2, y), PI_ERR_NULL);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, idx, 2, NULL), PI_ERR_NULL);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q8_1, m.q, 8, 64, x, idx, 2, y), PI_ERR_TYPE);
        EXPECT_STATUS(fn(NULL, 42, m.q, 8, 64, x, idx, 2, y), PI_ERR_TYPE);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 0, 64, x, idx, 2, y), PI_ERR_SHAPE);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 0, x, idx, 2, y), PI_ERR_SHAPE);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 40, x, idx, 2, y), PI_ERR_SHAPE);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, idx, -1, y), PI_ERR_RANGE);
        EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, idx, lim + 1, y), PI_ERR_RANGE);
        const int32_t bad[][4] = {{0, 1, 2, -1}, {0, 1, 2, 0}, {0, 1, 2, 5000}};
        for (int b = 0; b < 3; b++) {
            int32_t id4[4];
            memcpy(id4, bad[b], sizeof id4);
            if (b == 1) id4[3] = (int32_t)lim;
            float sentinel[64];
            for (int i = 0; i < 64; i++) sentinel[i] = 7.0f;
            EXPECT_STATUS(fn(NULL, PI_TYPE_Q4_0, m.q, 8, 64, x, id4, 4, sentinel), PI_ERR_RANGE);
            char want[64];
            snprintf(want, sizeof want, "idx[3] = %d out of range [0, %lld)", id4[3], (long long)lim);
            CHECK(strstr(pi_last_error(), want) && strstr(pi_last_error(), fns[f].name),
                  "%s: message lacks '%s'", fns[f].name, want);
            int untouched = 1;
            for (int i = 0; i < 64; i++) untouched &= sentinel[i] == 7.0f;
            CHECK(untouched, "%s wrote its output before rejecting idx", fns[f].name);
        }
    }
    for (int act = 0; act < PI_N_ACTS; act++) { /* in place and out of place: the same values */
        float in[64];
        for (int i = 0; i < 64; i++) in[i] = (float)(i - 32) / 8.0f;
        memcpy(a, in, sizeof in);
        EXPECT_STATUS(pi_activation(act, in, y, 64), PI_OK);
        EXPECT_STATUS(pi_activation(act, a, a, 64), PI_OK);
        int same = 1;
        float (*const f)(float) = pi_act_fn(pi_kernels_active()->lanes, act);
        for (int i = 0; i < 64; i++) same &= y[i] == a[i] && y[i] == f(in[i]);
        CHECK(same, "pi_activation %s: differs from the scalar activation", pi_acts[act].name);
    }
    EXPECT_STATUS(pi_activation(PI_N_ACTS, x, y, 64), PI_ERR_RANGE);
    EXPECT_STATUS(pi_activation(-1, x, y, 64), PI_ERR_RANGE);
    EXPECT_STATUS(pi_activation(PI_ACT_SILU, NULL, y, 64), PI_ERR_NULL);
    EXPECT_STATUS(pi_activation(PI_ACT_SILU, x, NULL, 64), PI_ERR_NULL);
    EXPECT_STATUS(pi_activation(PI_ACT_SILU, x, y, -1), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_activation(PI_ACT_SILU, x, y, 0), PI_OK);
    free_matrix(&m);
}

static void test_isa_selection(void) {
    const int best = pi_isa_best();
    CHECK(pi_isa_get() == best, "default ISA %d, best %d", pi_isa_get(), best);
    EXPECT_STATUS(pi_isa_set(99), PI_ERR_ISA);
    EXPECT_STATUS(pi_isa_set(-1), PI_ERR_ISA);
    if (best < PI_ISA_AVX512) EXPECT_STATUS(pi_isa_set(best + 1), PI_ERR_ISA);
    for (int isa = 0; isa <= best; isa++) {
        EXPECT_STATUS(pi_isa_set(isa), PI_OK);
        CHECK(pi_isa_get() == isa, "pi_isa_get %d after setting %d", pi_isa_get(), isa);
    }
    pi_isa_set(best);
}

/* ---- 2. SIMD twins against scalar ------------------------------------------------------------ */

/* |got - want| <= rtol * scale, elementwise. */
static int close_enough(const float *got, const float *want, const float *scale, int64_t n,
                        float rtol, int64_t *where) {
    for (int64_t i = 0; i < n; i++)
        if (!(fabsf(got[i] - want[i]) <= rtol * scale[i] + 1e-30f)) {
            *where = i;
            return 0;
        }
    return 1;
}

static float row_absmax(const matrix *m, int64_t r) {
    float wmax = 0.0f;
    for (int64_t c = 0; c < m->n_cols; c++) {
        const float w = fabsf(m->deq[r * m->n_cols + c]);
        wmax = w > wmax ? w : wmax;
    }
    return wmax;
}

/* Error scale of row r of m against v (over idx, or all of v): 2 max|w| sum|v|, which bounds
 * every partial sum a kernel may form (including block-offset tricks). */
static float row_scale(const matrix *m, int64_t r, const float *v, const int32_t *idx, int64_t n_idx) {
    float vsum = 0.0f;
    if (idx)
        for (int64_t k = 0; k < n_idx; k++) vsum += fabsf(v[idx[k]]);
    else
        for (int64_t c = 0; c < m->n_cols; c++) vsum += fabsf(v[c]);
    return 2.0f * row_absmax(m, r) * vsum + 1e-6f;
}

static void test_simd_twins(pi_pool *pool3) {
    static const int64_t shapes[][2] = {{1, 32}, {7, 64}, {37, 576}, {13, 1536}};
    const int best = pi_isa_best();
    for (int ti = 0; ti < N_TYPES; ti++) {
        for (int s = 0; s < 4; s++) {
            const int type = TYPES[ti];
            const int64_t R = shapes[s][0], C = shapes[s][1];
            matrix m = make_matrix(type, R, C);
            float *x = random_vec(C), *a = random_vec(R > C ? R : C);
            int32_t *idx = malloc(sizeof(int32_t) * (size_t)(R > C ? R : C));
            int64_t n_idx = 0;
            for (int64_t r = R - 1; r >= 0; r -= 2) idx[n_idx++] = (int32_t)r; /* unsorted */
            int64_t n_cidx = 0;
            int32_t *cidx = malloc(sizeof(int32_t) * (size_t)C);
            for (int64_t c = 0; c < C; c += 3) cidx[n_cidx++] = (int32_t)c;

            float *ref[4], *got[4], *scale[4];
            const int64_t len[4] = {R, R, C, R};
            for (int k = 0; k < 4; k++) {
                ref[k] = calloc((size_t)len[k], sizeof(float));
                got[k] = calloc((size_t)len[k], sizeof(float));
                scale[k] = calloc((size_t)len[k], sizeof(float));
            }
            for (int64_t r = 0; r < R; r++) {
                scale[0][r] = scale[1][r] = row_scale(&m, r, x, NULL, 0);
                scale[3][r] = row_scale(&m, r, a, cidx, n_cidx);
            }
            float axpy_scale = 1e-6f; /* the same bound for every column */
            for (int64_t k = 0; k < n_idx; k++) axpy_scale += 2.0f * fabsf(a[idx[k]]) * row_absmax(&m, idx[k]);
            for (int64_t c = 0; c < C; c++) scale[2][c] = axpy_scale;
            for (int isa = 0; isa <= best; isa++) {
                pi_isa_set(isa);
                for (int threads = 0; threads < 2; threads++) {
                    pi_pool *pool = threads ? pool3 : NULL;
                    float **out = isa == 0 && !threads ? ref : got;
                    int st = pi_matvec(pool, type, m.q, R, C, x, out[0]);
                    st |= pi_matvec_masked(pool, type, m.q, R, C, x, idx, n_idx, out[1]);
                    st |= pi_axpy_sparse(pool, type, m.q, R, C, a, idx, n_idx, out[2]);
                    st |= pi_matvec_cols_sparse(pool, type, m.q, R, C, a, cidx, n_cidx, out[3]);
                    CHECK(st == PI_OK, "type %d %lldx%lld isa %d: status %d", type, (long long)R,
                          (long long)C, isa, st);
                    if (out == ref) continue;
                    static const char *names[4] = {"matvec", "masked", "axpy", "cols_sparse"};
                    for (int k = 0; k < 4; k++) {
                        int64_t where = -1;
                        CHECK(close_enough(got[k], ref[k], scale[k], len[k], 1e-5f, &where),
                              "%s type %d %lldx%lld isa %d threads %d: [%lld] %g vs scalar %g",
                              names[k], type, (long long)R, (long long)C, isa, threads ? 3 : 1,
                              (long long)where, where >= 0 ? got[k][where] : 0.0,
                              where >= 0 ? ref[k][where] : 0.0);
                    }
                }
            }
            pi_isa_set(best);
            for (int k = 0; k < 4; k++) free(ref[k]), free(got[k]), free(scale[k]);
            free(x), free(a), free(idx), free(cidx);
            free_matrix(&m);
        }
    }
}

/* With a fixed ISA, the thread count changes nothing, bit for bit. */
static void test_thread_independence(pi_pool *pool3) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = TYPES[ti];
        const int64_t R = 45, C = 576;
        matrix m = make_matrix(type, R, C);
        float *x = random_vec(C), *a = random_vec(R);
        int32_t idx[20];
        for (int k = 0; k < 20; k++) idx[k] = (int32_t)((k * 7) % R);
        float y1[576], y3[576];
        pi_matvec(NULL, type, m.q, R, C, x, y1);
        pi_matvec(pool3, type, m.q, R, C, x, y3);
        CHECK(!memcmp(y1, y3, sizeof(float) * (size_t)R), "matvec type %d: 1 vs 3 threads", type);
        pi_axpy_sparse(NULL, type, m.q, R, C, a, idx, 20, y1);
        pi_axpy_sparse(pool3, type, m.q, R, C, a, idx, 20, y3);
        CHECK(!memcmp(y1, y3, sizeof(float) * (size_t)C), "axpy type %d: 1 vs 3 threads", type);
        free(x), free(a);
        free_matrix(&m);
    }
}

/* ---- 3. rows8 ------------------------------------------------------------------------------- */

static void test_rows8(pi_pool *pool3) {
    static const int64_t shapes[][2] = {{8, 32}, {37, 576}, {13, 1536}, {3, 64}, {64, 256}};
    const int64_t T = 9; /* tokens: the batched kernels take 4 + 4 + 1 */
    const int best = pi_isa_best();
    for (int ti = 0; ti < N_ROWS8_TYPES; ti++) {
        for (int s = 0; s < 5; s++) {
            const int type = ROWS8_TYPES[ti];
            const int64_t R = shapes[s][0], C = shapes[s][1], whole = R / 8 * 8;
            matrix m = make_matrix(type, R, C);
            uint8_t *packed = malloc((size_t)(R * m.row_bytes));
            EXPECT_STATUS(pi_repack_rows8(type, m.q, R, C, packed), PI_OK);
            uint8_t *row = malloc((size_t)m.row_bytes);
            int unpacked = 1;
            for (int64_t r = 0; r < R; r++) {
                pi_rows8_unpack_row(type, packed, R, C, r, row);
                unpacked &= !memcmp(row, m.q + r * m.row_bytes, (size_t)m.row_bytes);
            }
            CHECK(unpacked, "rows8 type %d %lldx%lld: an unpacked row differs from the plain row", type,
                  (long long)R, (long long)C);
            free(row);
            float *X = random_vec(T * C), *ref = calloc((size_t)(T * R), 4), *got = calloc((size_t)(T * R), 4);
            float *plain = calloc((size_t)(T * R), 4);
            for (int isa = 0; isa <= best; isa++) {
                pi_isa_set(isa);
                for (int threads = 0; threads < 2; threads++) {
                    float *out = isa == 0 && !threads ? ref : got;
                    EXPECT_STATUS(pi_matmat_rows8(threads ? pool3 : NULL, type, packed, R, C, X, T, out, R), PI_OK);
                    if (out == ref) continue;
                    int same = 1;
                    for (int64_t t = 0; t < T; t++)
                        same &= !memcmp(got + t * R, ref + t * R, sizeof(float) * (size_t)whole);
                    CHECK(same, "rows8 type %d %lldx%lld isa %d threads %d: differs from the scalar twin",
                          type, (long long)R, (long long)C, isa, threads ? 3 : 1);
                }
                if (isa != PI_ISA_AVX2) continue;
                EXPECT_STATUS(pi_matmat(NULL, type, m.q, R, C, X, T, plain, R), PI_OK);
                CHECK(!memcmp(plain, got, sizeof(float) * (size_t)(T * R)),
                      "rows8 type %d %lldx%lld: differs from the AVX2 pi_matmat", type, (long long)R, (long long)C);
            }
            pi_isa_set(best);
            free(packed), free(X), free(ref), free(got), free(plain);
            free_matrix(&m);
        }
    }
    /* validation */
    matrix m = make_matrix(PI_TYPE_Q4_1, 8, 64);
    uint8_t out[8 * 80];
    float x[64], y[8];
    memset(x, 0, sizeof x);
    EXPECT_STATUS(pi_repack_rows8(PI_TYPE_F16, m.q, 8, 64, out), PI_ERR_TYPE);
    EXPECT_STATUS(pi_repack_rows8(PI_TYPE_Q4_1, NULL, 8, 64, out), PI_ERR_NULL);
    EXPECT_STATUS(pi_repack_rows8(PI_TYPE_Q4_1, m.q, 8, 48, out), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_repack_rows8(PI_TYPE_Q4_1, m.q, 0, 64, out), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_repack_rows8(PI_TYPE_Q4_1, m.q, 8, 64, m.q), PI_ERR_RANGE);
    EXPECT_STATUS(pi_matmat_rows8(NULL, PI_TYPE_F32, out, 8, 64, x, 1, y, 8), PI_ERR_TYPE);
    EXPECT_STATUS(pi_matmat_rows8(NULL, PI_TYPE_Q4_1, out, 8, 64, x, 0, y, 8), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_matmat_rows8(NULL, PI_TYPE_Q4_1, out, 8, 64, x, 1, y, 7), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_matmat_rows8(NULL, PI_TYPE_Q4_1, out, 8, 64, NULL, 1, y, 8), PI_ERR_NULL);
    free_matrix(&m);
}

/* ---- 4. internal kernel tables --------------------------------------------------------------- */

#define SAME(a, b, n, what, name) \
    CHECK(!memcmp((a), (b), (n)), "%s %s: differs from the scalar twin", name, what)

static void test_table_twins(void) {
    const pi_kernels *S = &pi_kernels_scalar;
#if defined(__x86_64__)
    const struct { const pi_kernels *k; int isa; } tables[] = {{&pi_kernels_avx2, PI_ISA_AVX2},
                                                               {&pi_kernels_avx512, PI_ISA_AVX512}};
    enum { N = 259, HD = 64, NPOS = 37 }; /* odd sizes: vector tails; N > 256 (Q8_K) */
    float x[N], a[N], b[N], g[N];
    pi_half h1[N], h2[N], kc[NPOS * HD], vt[HD * NPOS];
    for (int i = 0; i < N; i++) x[i] = frand() * 40.0f, g[i] = frand() * 12.0f;
    x[3] = 1e-6f, x[4] = 70000.0f, x[5] = -0.0f; /* subnormal f16, overflow, signed zero */
    for (int i = 0; i < NPOS * HD; i++) kc[i] = pi_float_to_half(frand()), vt[i] = pi_float_to_half(frand());
    for (size_t ti = 0; ti < sizeof tables / sizeof tables[0]; ti++) {
        if (!pi_cpu_has_isa(tables[ti].isa)) continue;
        const pi_kernels *K = tables[ti].k;
        S->to_f16(N, x, h1), K->to_f16(N, x, h2);
        SAME(h1, h2, sizeof h1, "to_f16", K->name);
        memcpy(a, x, sizeof x), memcpy(b, x, sizeof x);
        S->round_f16(N, a), K->round_f16(N, b);
        SAME(a, b, sizeof a, "round_f16", K->name);
        /* attention and the activations: the twins of the llama.cpp build the table follows */
        const int L = K->lanes;
        CHECK(L == (tables[ti].isa == PI_ISA_AVX512 ? 16 : 8), "%s: lanes %d", K->name, L);
        for (int act = 0; act < PI_N_ACTS; act++) /* gates in [-12, 12), the extremes; tails */
            for (int n = N; n >= N - 12; n -= 4) {
                float gx[N];
                memcpy(gx, g, sizeof g);
                gx[0] = -100.0f, gx[1] = 100.0f, gx[2] = -0.0f, gx[3] = 1e-30f, gx[4] = -9.5f;
                memcpy(a, x, sizeof x), memcpy(b, x, sizeof x);
                pi_glu_ref(L, act, n, gx, a), K->glu[act](n, gx, b);
                SAME(a, b, sizeof a, pi_acts[act].name, K->name);
                memcpy(a, gx, sizeof gx), memcpy(b, gx, sizeof gx);
                pi_act_ref(L, act, n, a), K->act[act](n, b);
                SAME(a, b, sizeof a, pi_acts[act].name, K->name);
            }
        for (int hd = HD; hd >= HD - 24; hd -= 12) { /* a head size of whole chunks, and tails */
            pi_attn_scores_ref(L, NPOS, hd, kc, HD, x, 0.125f, a);
            K->attn_scores(NPOS, hd, kc, HD, x, 0.125f, b);
            SAME(a, b, NPOS * sizeof(float), "attn_scores", K->name);
        }
        for (int n = 40; n >= 32; n -= 8) { /* whole chunks of 16, and a last half chunk */
            float pa[40], pb[40];
            for (int i = 0; i < 40; i++) pa[i] = pb[i] = frand() * 5.0f;
            const double sa = pi_softmax_exp_ref(L, n, pa, 5.0f), sb = K->softmax_exp(n, pb, 5.0f);
            CHECK(sa == sb && !memcmp(pa, pb, sizeof pa),
                  "%s softmax_exp (n %d): differs from the scalar twin", K->name, n);
        }
        /* exp over its whole range through softmax_exp (max 0): subnormal results, overflow, the
         * flush past |n| > 192, infinities and NaN */
        {
            enum { NE = 48 };
            float ea[NE], eb[NE];
            for (int i = 0; i < NE - 8; i++) ea[i] = -200.0f + 300.0f * (float)i / (NE - 9) + frand();
            const float special[8] = {-INFINITY, INFINITY, NAN, -87.5f, -103.9f, 88.7f, 133.5f, -133.5f};
            memcpy(ea + NE - 8, special, sizeof special);
            memcpy(eb, ea, sizeof ea);
            const double sa = pi_softmax_exp_ref(L, NE, ea, 0.0f), sb = K->softmax_exp(NE, eb, 0.0f);
            int same = isnan(sa) && isnan(sb); /* a NaN's sign is not kept (the twin negates n) */
            for (int i = 0; i < NE; i++)
                same &= !memcmp(ea + i, eb + i, sizeof *ea) || (isnan(ea[i]) && isnan(eb[i]));
            CHECK(same, "%s softmax_exp (exp's range): differs from the scalar twin", K->name);
        }
        pi_attn_values_ref(L, NPOS, HD, vt, NPOS, x, a), K->attn_values(NPOS, HD, vt, NPOS, x, b);
        SAME(a, b, HD * sizeof(float), "attn_values", K->name);
        /* a cache row longer than n_pos, NaN past it: the extra never enters the sums */
        static pi_half vlong[HD * 48];
        for (int i = 0; i < HD * 48; i++) vlong[i] = i % 48 < NPOS ? vt[i / 48 * NPOS + i % 48] : 0x7E00;
        pi_attn_values_ref(L, NPOS, HD, vlong, 48, x, a), K->attn_values(NPOS, HD, vlong, 48, x, b);
        SAME(a, b, HD * sizeof(float), "attn_values (long rows)", K->name);
        for (int i = 0; i < HD; i++) CHECK(a[i] == a[i], "attn_values: NaN past n_pos leaked");
        /* select: plain and |v|, thresholds keeping none, some and all, NaN never kept */
        const float thrs[] = {-1e30f, -0.5f, 0.0f, 3.0f, 1e30f};
        float sv[N];
        memcpy(sv, x, sizeof x);
        sv[7] = NAN, sv[8] = -NAN;
        for (int ab = 0; ab < 2; ab++)
            for (size_t k = 0; k < sizeof thrs / sizeof thrs[0]; k++)
                for (int n = N - 8; n <= N; n += 4) { /* vector body alone and with tails */
                    int32_t ia[N], ib[N];
                    const int64_t ca = S->select(n, sv, thrs[k], ab, ia), cb = K->select(n, sv, thrs[k], ab, ib);
                    CHECK(ca == cb && !memcmp(ia, ib, (size_t)ca * sizeof *ia),
                          "%s select (abs %d, thr %g, n %d): differs from the scalar twin", K->name, ab,
                          (double)thrs[k], n);
                    int64_t want = 0;
                    for (int i = 0; i < n; i++) want += (ab ? fabsf(sv[i]) : sv[i]) > thrs[k];
                    CHECK(ca == want, "select: %lld kept, expected %lld", (long long)ca, (long long)want);
                }
        /* rope: both pair layouts; n_rot below the head size and with a scalar tail */
        const int rots[] = {64, 48, 36, 10};
        float cs[64];
        for (int i = 0; i < 64; i++) cs[i] = frand();
        for (int neox = 0; neox < 2; neox++)
            for (size_t k = 0; k < sizeof rots / sizeof rots[0]; k++) {
                memcpy(a, x, sizeof x), memcpy(b, x, sizeof x);
                S->rope(rots[k], neox, cs, a), K->rope(rots[k], neox, cs, b);
                SAME(a, b, sizeof a, neox ? "rope (neox)" : "rope", K->name);
                CHECK(memcmp(a, x, sizeof x) && !memcmp(a + rots[k], x + rots[k], sizeof x - rots[k] * sizeof *x),
                      "rope n_rot %d: rotates exactly the first n_rot dims", rots[k]);
            }
        for (int id = 0; id < PI_N_TYPE_IDS; id++) { /* the activation quantizers */
            if (!S->quantize_act[id]) continue;
            const int64_t n = 192 % pi_type_traits_of(id)->block_elems ? 256 : 192; /* 256: Q8_K */
            uint8_t qa[256 * sizeof(float)], qb[256 * sizeof(float)];
            int64_t bytes = 0;
            EXPECT_STATUS(pi_row_bytes(id, n, &bytes), PI_OK);
            S->quantize_act[id](x, qa, n), K->quantize_act[id](x, qb, n);
            CHECK(!memcmp(qa, qb, (size_t)bytes), "%s quantize_act[%s]: differs from the scalar twin",
                  K->name, pi_type_name(id));
        }
    }
#endif
    CHECK(S->to_f16 && S->round_f16 && S->select && S->rope && S->lanes == 8, "scalar table complete");
    /* both builds' expf: within 2.5 ulp of exp where normal (1.9 and 2.2 at worst), 0 / inf /
     * NaN where exp is */
    for (int lanes = 8; lanes <= 16; lanes += 8) {
        int bad = 0;
        for (int i = 0; i <= 200000; i++) {
            const float v = -87.0f + 175.0f * (float)i / 200000.0f, e = pi_expf_ggml(lanes, v);
            int ex;
            frexp(exp((double)v), &ex); /* exp(v) in [2^(ex - 1), 2^ex): its ulp is 2^(ex - 24) */
            bad += !(fabs((double)e - exp((double)v)) <= 2.5 * ldexp(1.0, ex - 24));
        }
        CHECK(!bad, "pi_expf_ggml(%d): %d values off by more than 2.5 ulp", lanes, bad);
        CHECK(pi_expf_ggml(lanes, -INFINITY) == 0.0f && pi_expf_ggml(lanes, -200.0f) == 0.0f &&
                  pi_expf_ggml(lanes, 200.0f) == INFINITY && pi_expf_ggml(lanes, INFINITY) == INFINITY &&
                  isnan(pi_expf_ggml(lanes, NAN)) && pi_expf_ggml(lanes, 0.0f) == 1.0f,
              "pi_expf_ggml(%d): limits", lanes);
        const float sub = pi_expf_ggml(lanes, -100.0f); /* 3.7e-44: a subnormal, within an ulp */
        CHECK(fabs((double)sub - exp(-100.0)) <= 0x1p-149, "pi_expf_ggml(%d, -100) = %g", lanes, (double)sub);
    }
    for (int act = 0; act < PI_N_ACTS; act++)
        CHECK(pi_acts[act].name && pi_acts[act].fn && S->glu[act] && S->act[act],
              "activation %d: described, and in the scalar table", act);
    /* GELU (tanh form) against its definition in double, 0.5 x (1 + tanh(u)) written as
     * x / (1 + exp(-2u)) (1 + tanh(u) cancels for negative x even in double). The f32 exponent
     * z = -2u carries about 3 roundings, which exp turns into a relative error of 3 eps |z|; exp,
     * the sum and the quotient add a few ulps: within (3 |z| + 4) eps (FLT_EPSILON); exactly 0
     * and x far out. */
    double worst = 0;
    for (int i = -4000; i <= 4000; i++) {
        const float v = (float)i / 400.0f;
        const double u = 0.7978845608028654 * ((double)v + 0.044715 * (double)v * v * v);
        const double want = v / (1.0 + exp(-2.0 * u)), got = pi_gelu_tanh_ref(v);
        const double err = fabs(got - want) / fmax(fabs(want), 1e-30) / ((6 * fabs(u) + 4) * FLT_EPSILON);
        if (fabs(want) > 1e-30 && err > worst) worst = err;
    }
    CHECK(worst <= 1, "gelu_tanh: error %g times the bound (3 |z| + 4) eps against the double definition", worst);
    CHECK(pi_gelu_tanh_ref(-100.0f) == 0.0f && pi_gelu_tanh_ref(100.0f) == 100.0f && pi_gelu_tanh_ref(0.0f) == 0.0f,
          "gelu_tanh: 0 far left, x far right, 0 at 0");
}

/* ---- 5. masked pair: gate and up together --------------------------------------------------- */

static void test_masked_pair(pi_pool *pool3) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = TYPES[ti];
        const int64_t R = 45, C = 576;
        matrix a = make_matrix(type, R, C), b = make_matrix(type, R, C);
        float *x = random_vec(C), y1[45], y2[45], p1[45], p2[45];
        int32_t idx[23];
        for (int k = 0; k < 23; k++) idx[k] = (int32_t)((k * 13) % R);
        for (int isa = 0; isa <= pi_isa_best(); isa++) {
            pi_isa_set(isa);
            for (int n_idx = 0; n_idx <= 23; n_idx += 23) {
                pi_matvec_masked(NULL, type, a.q, R, C, x, idx, n_idx, y1);
                pi_matvec_masked(NULL, type, b.q, R, C, x, idx, n_idx, y2);
                EXPECT_STATUS(pi_matvec_masked_pair(pool3, type, a.q, b.q, R, C, x, idx, n_idx, p1, p2), PI_OK);
                CHECK(!memcmp(y1, p1, sizeof y1) && !memcmp(y2, p2, sizeof y2),
                      "masked pair type %d isa %d n_idx %d: differs from two masked calls", type, isa,
                      (int)n_idx);
            }
        }
        pi_isa_set(pi_isa_best());
        EXPECT_STATUS(pi_matvec_masked_pair(NULL, type, a.q, NULL, R, C, x, idx, 23, p1, p2), PI_ERR_NULL);
        idx[5] = (int32_t)R;
        EXPECT_STATUS(pi_matvec_masked_pair(NULL, type, a.q, b.q, R, C, x, idx, 23, p1, p2), PI_ERR_RANGE);
        free(x);
        free_matrix(&a), free_matrix(&b);
    }
}

/* ---- 6. the fused sparse FFN against its steps done one by one -------------------------------- */

static void test_ffn_sparse(pi_pool *pool3) {
    enum { NFF = 45, D = 64, RANK = 32 }; /* 5 groups of 8 and 5 tail rows */
    matrix fc2 = make_matrix(PI_TYPE_Q8_0, NFF, RANK);
    uint8_t *fc2p = malloc((size_t)(NFF * fc2.row_bytes));
    EXPECT_STATUS(pi_repack_rows8(PI_TYPE_Q8_0, fc2.q, NFF, RANK, fc2p), PI_OK);
    float *h = random_vec(RANK), *x = random_vec(D);
    for (int i = 0; i < RANK; i++) h[i] = h[i] > 0 ? h[i] : 0;
    float logit[NFF], g[NFF], u[NFF], gr[NFF], ur[NFF], y[D], yr[D], partial[2 * D];
    int32_t idx[NFF], ir[NFF];
    EXPECT_STATUS(pi_matmat_rows8(NULL, PI_TYPE_Q8_0, fc2p, NFF, RANK, h, 1, logit, NFF), PI_OK);
    float sorted[NFF];
    memcpy(sorted, logit, sizeof sorted);
    for (int i = 1; i < NFF; i++) /* insertion sort: the threshold at the median logit */
        for (int k = i; k > 0 && sorted[k - 1] > sorted[k]; k--) {
            const float t = sorted[k];
            sorted[k] = sorted[k - 1], sorted[k - 1] = t;
        }
    const float thr = sorted[NFF / 2];
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = TYPES[ti];
        matrix gate = make_matrix(type, NFF, D), up = make_matrix(type, NFF, D), dt = make_matrix(type, NFF, D);
        for (int kind = 0; kind < PI_N_ACTS; kind++) {
            /* the steps: picks, masked gate and up, the down input, its nonzero rows' AXPY */
            int n = 0, n2 = 0;
            for (int i = 0; i < NFF; i++)
                if (logit[i] > thr) ir[n++] = i;
            EXPECT_STATUS(pi_matvec_masked_pair(NULL, type, gate.q, up.q, NFF, D, x, ir, n, gr, ur), PI_OK);
            for (int k = 0; k < n; k++) {
                const int i = ir[k];
                ur[i] *= pi_act_fn(pi_kernels_active()->lanes, kind)(gr[i]);
                if (ur[i] != 0.0f) ir[n2++] = i;
            }
            EXPECT_STATUS(pi_axpy_sparse(NULL, type, dt.q, NFF, D, ur, ir, n2, yr), PI_OK);
            CHECK(n == NFF - 1 - NFF / 2 && (kind != PI_ACT_RELU || n2 < n), "ffn_sparse setup: %d picks, %d down", n, n2);
            pi_pool *pools[2] = {NULL, pool3};
            for (int pi = 0; pi < 2; pi++) {
                memset(g, 0x7f, sizeof g), memset(u, 0x7f, sizeof u);
                float lg[NFF];
                pi_ffn_sparse_args a = {.n_tok = 1,
                    .fc2_type = PI_TYPE_Q8_0, .fc2 = fc2p, .fc2_rows8 = 1, .rank = RANK, .h = h, .thr = thr,
                    .type = type, .gate = gate.q, .up = up.q, .down_type = type, .down_t = dt.q,
                    .act = kind, .n_ff = NFF, .d = D, .x = x, .logit = lg, .g = g, .u = u,
                    .idx = idx, .partial = partial, .y = y};
                EXPECT_STATUS(pi_ffn_sparse(pools[pi], &a), PI_OK);
                CHECK(a.n_picked == n && a.n_down == n2, "ffn_sparse type %d act %d pool %d: %lld picks, %lld down, expected %d, %d",
                      type, kind, pi, (long long)a.n_picked, (long long)a.n_down, n, n2);
                CHECK(!memcmp(lg, logit, sizeof lg), "ffn_sparse: logits differ from pi_matmat_rows8");
                int same_gu = 1;
                for (int i = 0; i < NFF; i++) same_gu &= g[i] == gr[i] && u[i] == ur[i];
                CHECK(same_gu, "ffn_sparse type %d act %d pool %d: gate / down input differ (0 expected off the picks)",
                      type, kind, pi);
                double err = 0, mag = 0;
                for (int c = 0; c < D; c++) err = fmax(err, fabs((double)y[c] - yr[c])), mag = fmax(mag, fabs((double)yr[c]));
                if (!pools[pi]) CHECK(!memcmp(y, yr, sizeof y), "ffn_sparse 1 thread: y differs from pi_axpy_sparse");
                else CHECK(err <= 1e-5 * mag, "ffn_sparse 3 threads: y off by %g (of %g)", err, mag);
            }
        }
        free_matrix(&gate), free_matrix(&up), free_matrix(&dt);
    }
    /* plain-row predictors (f16, as PowerInfer's): the logits of pi_matvec, the same picks */
    {
        matrix f16 = make_matrix(PI_TYPE_F16, NFF, RANK), gate = make_matrix(PI_TYPE_Q8_0, NFF, D);
        float ref[NFF], lg[NFF];
        EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_F16, f16.q, NFF, RANK, h, ref), PI_OK);
        for (int pi = 0; pi < 2; pi++) {
            pi_ffn_sparse_args a = {.n_tok = 1,
                .fc2_type = PI_TYPE_F16, .fc2 = f16.q, .fc2_rows8 = 0, .rank = RANK, .h = h, .thr = 0.0f,
                .type = PI_TYPE_Q8_0, .gate = gate.q, .up = gate.q, .down_type = PI_TYPE_Q8_0,
                .down_t = gate.q, .act = PI_ACT_RELU, .n_ff = NFF, .d = D, .x = x, .logit = lg, .g = g,
                .u = u, .idx = idx, .partial = partial, .y = y};
            EXPECT_STATUS(pi_ffn_sparse(pi ? pool3 : NULL, &a), PI_OK);
            int want = 0;
            for (int i = 0; i < NFF; i++) want += ref[i] > 0.0f;
            CHECK(!memcmp(lg, ref, sizeof lg) && a.n_picked == want,
                  "ffn_sparse f16 plain fc2 pool %d: logits or picks (%lld, expected %d) differ", pi,
                  (long long)a.n_picked, want);
        }
        free_matrix(&f16), free_matrix(&gate);
    }
    /* validation */
    matrix m = make_matrix(PI_TYPE_Q8_0, NFF, D);
    pi_ffn_sparse_args a = {.n_tok = 1, .fc2_type = PI_TYPE_Q8_0, .fc2 = fc2p, .fc2_rows8 = 1, .rank = RANK, .h = h,
                            .type = PI_TYPE_Q8_0, .gate = m.q, .up = m.q, .down_type = PI_TYPE_Q8_0,
                            .down_t = m.q, .n_ff = NFF, .d = D, .x = x, .logit = logit, .g = g,
                            .u = u, .idx = idx, .partial = NULL, .y = y};
    EXPECT_STATUS(pi_ffn_sparse(NULL, NULL), PI_ERR_NULL);
    EXPECT_STATUS(pi_ffn_sparse(pool3, &a), PI_ERR_NULL); /* 3 threads need the partial sums */
    a.partial = partial;
    a.fc2_type = PI_TYPE_F32;
    EXPECT_STATUS(pi_ffn_sparse(NULL, &a), PI_ERR_TYPE);
    a.fc2_type = PI_TYPE_Q8_0, a.d = 48;
    EXPECT_STATUS(pi_ffn_sparse(NULL, &a), PI_ERR_SHAPE);
    free_matrix(&m), free_matrix(&fc2);
    free(fc2p), free(h), free(x);
}

/* ---- 5b. several tokens over the union of their rows ---------------------------------------- */

/* pi_matvec_masked_union, pi_axpy_sparse_union and pi_ffn_sparse of several tokens give each
 * token, bit for bit, the results of its one-token call, on every ISA and thread count; their
 * lists overlap in part (each token its own rows, some shared). */
static void test_union(pi_pool *pool3) {
    enum { NFF = 45, D = 64, RANK = 32, NT = 3 };
    const int best = pi_isa_best();
    float *X = random_vec((int64_t)NT * D), *A = random_vec((int64_t)NT * NFF);
    int32_t lists[NT][NFF];
    int64_t n_idx[NT];
    uint8_t mark[NFF] = {0};
    int32_t un[NFF];
    for (int t = 0; t < NT; t++) { /* token t: every row r with (r * (t + 2)) % 5 < 2, ascending */
        n_idx[t] = 0;
        for (int r = 0; r < NFF; r++)
            if ((r * (t + 2)) % 5 < 2) lists[t][n_idx[t]++] = r;
    }
    const int32_t *idx[NT] = {lists[0], lists[1], lists[2]};
    const float *As[NT] = {A, A + NFF, A + 2 * NFF};
    const int64_t n_un = pi_union_count(NT, idx, n_idx, mark);
    int all_zero = 1;
    for (int r = 0; r < NFF; r++) all_zero &= mark[r] == 0;
    CHECK(n_un > n_idx[0] && n_un < n_idx[0] + n_idx[1] + n_idx[2] && all_zero,
          "union count %lld of lists of %lld, %lld, %lld (mark left 0: %d)", (long long)n_un,
          (long long)n_idx[0], (long long)n_idx[1], (long long)n_idx[2], all_zero);
    for (int isa = 0; isa <= best; isa++) {
        pi_isa_set(isa);
        for (int ti = 0; ti < N_TYPES; ti++) {
            const int type = TYPES[ti];
            matrix m = make_matrix(type, NFF, D), mt = make_matrix(type, NFF, D);
            for (int threads = 0; threads < 2; threads++) {
                pi_pool *pool = threads ? pool3 : NULL;
                float ym[NT][NFF], ya[NT][D], rm[NFF], ra[D];
                float *Ym[NT] = {ym[0], ym[1], ym[2]}, *Ya[NT] = {ya[0], ya[1], ya[2]};
                EXPECT_STATUS(pi_matvec_masked_union(pool, type, m.q, NFF, D, NT, X, idx, n_idx, Ym, mark, un), PI_OK);
                EXPECT_STATUS(pi_axpy_sparse_union(pool, type, mt.q, NFF, D, NT, As, idx, n_idx, Ya, mark, un), PI_OK);
                for (int t = 0; t < NT; t++) {
                    pi_matvec_masked(NULL, type, m.q, NFF, D, X + t * D, idx[t], n_idx[t], rm);
                    pi_axpy_sparse(NULL, type, mt.q, NFF, D, As[t], idx[t], n_idx[t], ra);
                    CHECK(!memcmp(rm, ym[t], sizeof rm) && !memcmp(ra, ya[t], sizeof ra),
                          "union type %d isa %d threads %d token %d: masked %d, axpy %d", type, isa,
                          threads ? 3 : 1, t, !memcmp(rm, ym[t], sizeof rm), !memcmp(ra, ya[t], sizeof ra));
                }
            }
            free_matrix(&m), free_matrix(&mt);
        }
    }
    pi_isa_set(best);
    /* validation: n_tok, a list not ascending, NULL scratch */
    float y0[NFF], *Y0[NT] = {y0, y0, y0};
    EXPECT_STATUS(pi_axpy_sparse_union(NULL, PI_TYPE_F32, X, NFF, D, 0, As, idx, n_idx, Y0, mark, un), PI_ERR_RANGE);
    EXPECT_STATUS(pi_axpy_sparse_union(NULL, PI_TYPE_F32, X, NFF, D, PI_UNION_MAX_TOK + 1, As, idx, n_idx, Y0, mark, un),
                  PI_ERR_RANGE);
    EXPECT_STATUS(pi_matvec_masked_union(NULL, PI_TYPE_F32, X, NFF, D, NT, X, idx, n_idx, Y0, NULL, un), PI_ERR_NULL);
    int32_t back[2] = {3, 1};
    const int32_t *bad[1] = {back};
    const int64_t n_bad[1] = {2};
    EXPECT_STATUS(pi_matvec_masked_union(NULL, PI_TYPE_F32, X, NFF, D, 1, X, bad, n_bad, Y0, mark, un), PI_ERR_RANGE);

    /* pi_ffn_sparse over NT tokens: each token's logits, gate, down input and y as alone */
    matrix fc2 = make_matrix(PI_TYPE_Q8_0, NFF, RANK);
    uint8_t *fc2p = malloc((size_t)(NFF * fc2.row_bytes));
    EXPECT_STATUS(pi_repack_rows8(PI_TYPE_Q8_0, fc2.q, NFF, RANK, fc2p), PI_OK);
    float *H = random_vec((int64_t)NT * RANK);
    for (int i = 0; i < NT * RANK; i++) H[i] = H[i] > 0 ? H[i] : 0;
    static float lg[NT][NFF], g[NT][NFF], u[NT][NFF], y[NT][D], partial[2 * NT * D];
    static int32_t fidx[NT][NFF];
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = TYPES[ti];
        matrix gate = make_matrix(type, NFF, D), up = make_matrix(type, NFF, D), dt = make_matrix(type, NFF, D);
        for (int kind = 0; kind < PI_N_ACTS; kind++)
            for (int pi = 0; pi < 2; pi++) {
                pi_pool *pool = pi ? pool3 : NULL;
                pi_ffn_sparse_args a = {.n_tok = NT,
                    .fc2_type = PI_TYPE_Q8_0, .fc2 = fc2p, .fc2_rows8 = 1, .rank = RANK, .h = H, .thr = 0.0f,
                    .type = type, .gate = gate.q, .up = up.q, .down_type = type, .down_t = dt.q,
                    .act = kind, .n_ff = NFF, .d = D, .x = X, .logit = lg[0], .g = g[0], .u = u[0],
                    .idx = fidx[0], .mark = mark, .un = un, .partial = partial, .y = y[0]};
                EXPECT_STATUS(pi_ffn_sparse(pool, &a), PI_OK);
                int64_t picked = 0, down = 0, max_picked = 0;
                for (int t = 0; t < NT; t++) {
                    float lg1[NFF], g1[NFF], u1[NFF], y1[D], p1[2 * D];
                    int32_t i1[NFF];
                    pi_ffn_sparse_args b = a;
                    b.n_tok = 1, b.h = H + t * RANK, b.x = X + t * D, b.logit = lg1, b.g = g1, b.u = u1;
                    b.idx = i1, b.partial = p1, b.y = y1, b.mark = NULL, b.un = NULL;
                    EXPECT_STATUS(pi_ffn_sparse(pool, &b), PI_OK);
                    picked += b.n_picked, down += b.n_down;
                    max_picked = b.n_picked > max_picked ? b.n_picked : max_picked;
                    CHECK(b.n_union == b.n_picked && b.n_union_down == b.n_down, "one token: its rows are the union");
                    CHECK(!memcmp(lg1, lg[t], sizeof lg1) && !memcmp(g1, g[t], sizeof g1) &&
                          !memcmp(u1, u[t], sizeof u1) && !memcmp(y1, y[t], sizeof y1),
                          "ffn_sparse %d tokens type %d act %d pool %d: token %d differs from alone", NT,
                          type, kind, pi, t);
                }
                CHECK(a.n_picked == picked && a.n_down == down && a.n_union >= max_picked &&
                      a.n_union < picked && a.n_union_up <= a.n_union && a.n_union_down <= a.n_union_up,
                      "ffn_sparse counts: %lld picks (%lld alone), %lld down (%lld), unions %lld %lld %lld",
                      (long long)a.n_picked, (long long)picked, (long long)a.n_down, (long long)down,
                      (long long)a.n_union, (long long)a.n_union_up, (long long)a.n_union_down);
            }
        free_matrix(&gate), free_matrix(&up), free_matrix(&dt);
    }
    pi_ffn_sparse_args a = {.n_tok = NT, .fc2_type = PI_TYPE_Q8_0, .fc2 = fc2p, .fc2_rows8 = 1, .rank = RANK,
                            .h = H, .type = PI_TYPE_Q8_0, .gate = fc2p, .up = fc2p, .down_type = PI_TYPE_Q8_0,
                            .down_t = fc2p, .n_ff = NFF, .d = RANK, .x = X, .logit = lg[0], .g = g[0],
                            .u = u[0], .idx = fidx[0], .partial = partial, .y = y[0]};
    EXPECT_STATUS(pi_ffn_sparse(NULL, &a), PI_ERR_NULL); /* several tokens need mark and un */
    a.mark = mark, a.un = un, a.n_tok = PI_UNION_MAX_TOK + 1;
    EXPECT_STATUS(pi_ffn_sparse(NULL, &a), PI_ERR_RANGE);
    free_matrix(&fc2);
    free(fc2p), free(H), free(X), free(A);
}

/* ---- 6. the type table ------------------------------------------------------------------------ */

/* Whether any table has a kernel or quantizer for id. */
static int in_any_table(int id) {
    int any = 0;
    for (int k = 0; k < N_TABLES; k++)
        any |= ALL_TABLES[k]->dot[id] || ALL_TABLES[k]->dot8[id] || ALL_TABLES[k]->axpy[id] ||
                ALL_TABLES[k]->quantize_act[id];
    return any;
}

static void test_type_table(void) {
    CHECK(N_TYPES > 0 && N_ROWS8_TYPES > 0, "the table lists weight and rows8 types");
    for (int id = -1; id <= PI_N_TYPE_IDS; id++) {
        const pi_type_traits *t = pi_type_traits_of(id);
        pi_type_desc d;
        if (!t) {
            EXPECT_STATUS(pi_type_describe(id, &d), PI_ERR_TYPE);
            CHECK(id < 0 || id >= PI_N_TYPE_IDS || !in_any_table(id), "id %d: kernels without a row", id);
            continue;
        }
        /* the public view is the row */
        EXPECT_STATUS(pi_type_describe(id, &d), PI_OK);
        CHECK(!strcmp(d.name, t->name) && d.block_elems == t->block_elems &&
              d.block_bytes == t->block_bytes && d.weight == t->weight &&
              d.rows8 == (t->rows8_head > 0) && d.act_type == (t->weight ? t->act_type : -1),
              "%s: pi_type_describe differs from the row", t->name);
        CHECK(t->block_elems > 0 && t->block_bytes > 0 && (t->quantize || t->weight) && t->dequantize,
              "%s: block geometry and scalar code", t->name);
        const pi_type_traits *a = t->weight ? pi_type_traits_of(t->act_type) : NULL;
        CHECK(!t->weight || (a && t->elem && t->block_elems % a->block_elems == 0),
              "%s: a weight needs a known activation type whose block divides its own, and elem",
              t->name);
        CHECK(!t->rows8_head || (t->weight && t->rows8_head % 2 == 0 &&
                                 (t->block_bytes - t->rows8_head) % 4 == 0),
              "%s: rows8 needs a weight of 2-byte scale fields and 4-byte quant chunks", t->name);
        for (int k = 0; k < N_TABLES; k++) {
            const pi_kernels *K = ALL_TABLES[k];
            CHECK(!K->dot[id] == !t->weight && !K->axpy[id] == !t->weight,
                  "%s table: %s: a dot and an axpy exactly for a weight type", K->name, t->name);
            CHECK(!K->dot8[id] == !t->rows8_head, "%s table: %s: dot8 exactly with the rows8 layout",
                  K->name, t->name);
            CHECK(!a || a == pi_type_traits_of(PI_TYPE_F32) || K->quantize_act[t->act_type],
                  "%s table: %s: no quantizer for its activation type %s", K->name, t->name, a->name);
        }
        if (!t->weight) continue;
        /* elem reads what the row's dequantization gives */
        const int64_t n = 4 * t->block_elems;
        matrix m = make_matrix(id, 1, n);
        int same = 1;
        for (int64_t c = 0; c < n; c++) same &= t->elem(m.q, c) == m.deq[c];
        CHECK(same, "%s: elem differs from the row's dequantization", t->name);
        free_matrix(&m);
    }
}

/* ---- 7. a context's hidden states and saved state (a tiny random F32 llama) ------------------- */

enum { TV = 64, TD = 32, TFF = 64, TL = 2, TH = 4, THKV = 2, THD = 8, TCTX = 16 };

/* A finalized tiny llama of random F32 weights (the arrays stay alive in *mem until freed). */
static pi_model *tiny_model(float **mem) {
    const pi_hparams hp = {.arch = PI_ARCH_LLAMA, .ffn_act = PI_ACT_SILU, .n_vocab = TV, .n_embd = TD,
                           .n_ff = TFF, .n_layer = TL, .n_head = TH, .n_head_kv = THKV, .head_dim = THD,
                           .n_rot = THD, .rope_freq_base = 10000.0f, .rope_freq_scale = 1.0f,
                           .norm_eps = 1e-5f, .embd_scale = 1.0f};
    static const struct { const char *name; int layer; int64_t rows, cols; } T[] = {
        {"attn_norm.weight", 1, 1, TD}, {"attn_q.weight", 1, TH * THD, TD},
        {"attn_k.weight", 1, THKV * THD, TD}, {"attn_v.weight", 1, THKV * THD, TD},
        {"attn_output.weight", 1, TD, TH * THD}, {"ffn_norm.weight", 1, 1, TD},
        {"ffn_gate.weight", 1, TFF, TD}, {"ffn_up.weight", 1, TFF, TD}, {"ffn_down.weight", 1, TD, TFF},
        {"token_embd.weight", 0, TV, TD}, {"output_norm.weight", 0, 1, TD}, {"output.weight", 0, TV, TD}};
    size_t total = 0;
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) total += (size_t)(T[i].rows * T[i].cols) * (T[i].layer ? TL : 1);
    float *w = *mem = malloc(sizeof(float) * total);
    for (size_t i = 0; i < total; i++) w[i] = frand();
    pi_model *m = NULL;
    if (pi_model_create(&hp, &m) != PI_OK) return NULL;
    pi_model_set_repack(m, PI_REPACK_NONE);
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        for (int il = 0; il < (T[i].layer ? TL : 1); il++) {
            char name[64];
            if (T[i].layer) snprintf(name, sizeof name, "blk.%d.%s", il, T[i].name);
            else snprintf(name, sizeof name, "%s", T[i].name);
            if (T[i].rows == 1) /* norms: around 1 */
                for (int64_t k = 0; k < T[i].cols; k++) w[k] = 1.0f + 0.25f * w[k];
            if (pi_model_set_tensor(m, name, PI_TYPE_F32, T[i].rows, T[i].cols, w) != PI_OK) {
                pi_model_free(m);
                return NULL;
            }
            w += T[i].rows * T[i].cols;
        }
    if (pi_model_finalize(m) != PI_OK) {
        pi_model_free(m);
        return NULL;
    }
    return m;
}

static void test_context_state(void) {
    float *mem = NULL;
    pi_model *m = tiny_model(&mem);
    CHECK(m != NULL, "tiny model");
    if (!m) return;
    pi_context *a = NULL, *b = NULL;
    EXPECT_STATUS(pi_context_create(m, TCTX, 4, 1, &a), PI_OK);
    EXPECT_STATUS(pi_context_create(m, TCTX, 4, 2, &b), PI_OK);
    if (!a || !b) return;
    const int32_t toks[7] = {3, 17, 42, 5, 63, 0, 9}, other[7] = {8, 8, 1, 2, 40, 33, 7};
    float la[TV], lb[TV], hidden[7 * TD], y[TV];
    int64_t bytes = 0;

    /* the hidden states: output . hidden[t] is the logits of token t */
    EXPECT_STATUS(pi_decode_hidden(a, toks, 7, 0, hidden), PI_OK);
    EXPECT_STATUS(pi_decode(b, toks, 7, 0, lb, 0), PI_OK);
    const float *out_w = NULL;
    { /* the output matrix: the last tensor tiny_model attached */
        size_t off = 0;
        off += (size_t)TL * (2 * TD + (size_t)(TH * THD + 2 * THKV * THD) * TD + (size_t)TD * TH * THD + 3 * (size_t)TFF * TD);
        off += (size_t)TV * TD + TD;
        out_w = mem + off;
    }
    EXPECT_STATUS(pi_matvec(NULL, PI_TYPE_F32, out_w, TV, TD, hidden + 6 * TD, y), PI_OK);
    float worst = 0, mag = 0;
    for (int i = 0; i < TV; i++) {
        worst = fmaxf(worst, fabsf(y[i] - lb[i]));
        mag = fmaxf(mag, fabsf(lb[i]));
    }
    CHECK(worst <= 1e-5f * mag, "pi_decode_hidden: output . hidden is off the logits by %g (of %g)", (double)worst, (double)mag);

    /* validation */
    EXPECT_STATUS(pi_decode_hidden(a, toks, 7, 0, NULL), PI_ERR_NULL);
    EXPECT_STATUS(pi_decode_hidden(NULL, toks, 7, 0, hidden), PI_ERR_NULL);
    EXPECT_STATUS(pi_decode_hidden(a, other, 7, TCTX - 6, hidden), PI_ERR_RANGE);
    EXPECT_STATUS(pi_decode_hidden(a, toks, 0, 0, hidden), PI_ERR_SHAPE);
    const int32_t bad = TV;
    EXPECT_STATUS(pi_decode_hidden(a, &bad, 1, 0, hidden), PI_ERR_RANGE);
    EXPECT_STATUS(pi_context_state_size(NULL, 5, &bytes), PI_ERR_NULL);
    EXPECT_STATUS(pi_context_state_size(a, 5, NULL), PI_ERR_NULL);
    EXPECT_STATUS(pi_context_state_size(a, -1, &bytes), PI_ERR_RANGE);
    EXPECT_STATUS(pi_context_state_size(a, TCTX + 1, &bytes), PI_ERR_RANGE);
    EXPECT_STATUS(pi_context_state_size(a, 0, &bytes), PI_OK);
    CHECK(bytes == 16, "state of 0 tokens: %lld bytes", (long long)bytes);
    EXPECT_STATUS(pi_context_state_size(a, 5, &bytes), PI_OK);
    CHECK(bytes == 16 + (int64_t)TL * 2 * THKV * THD * 5 * 2, "state of 5 tokens: %lld bytes", (long long)bytes);
    uint8_t *st = malloc((size_t)bytes + 8);
    EXPECT_STATUS(pi_context_get_state(a, 5, NULL, bytes), PI_ERR_NULL);
    EXPECT_STATUS(pi_context_get_state(a, 5, st, bytes - 1), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_context_get_state(a, 5, st, bytes + 1), PI_ERR_SHAPE);
    EXPECT_STATUS(pi_context_get_state(a, TCTX + 1, st, bytes), PI_ERR_RANGE);

    /* save after 5 tokens (of pi_decode_hidden: it writes the cache as pi_decode does) */
    EXPECT_STATUS(pi_context_get_state(a, 5, st, bytes), PI_OK);
    /* b holds the same 7 tokens; overwrite its first positions with other tokens, then load */
    EXPECT_STATUS(pi_decode(b, other, 7, 0, lb, 0), PI_OK);
    EXPECT_STATUS(pi_context_set_state(b, 4, st, bytes), PI_ERR_SHAPE);   /* size of 5, said 4 */
    EXPECT_STATUS(pi_context_set_state(b, 5, st, bytes - 2), PI_ERR_SHAPE);
    st[0] ^= 1; /* the magic */
    EXPECT_STATUS(pi_context_set_state(b, 5, st, bytes), PI_ERR_SHAPE);
    st[0] ^= 1;
    EXPECT_STATUS(pi_context_set_state(NULL, 5, st, bytes), PI_ERR_NULL);
    EXPECT_STATUS(pi_context_set_state(b, 5, st, bytes), PI_OK);
    /* both continue from the same 5 positions: the same logits, bit for bit */
    EXPECT_STATUS(pi_decode(a, toks + 5, 2, 5, la, 0), PI_OK);
    EXPECT_STATUS(pi_decode(b, toks + 5, 2, 5, lb, 0), PI_OK);
    CHECK(!memcmp(la, lb, sizeof la), "after pi_context_set_state: the logits differ");
    /* without the load they would not have been */
    EXPECT_STATUS(pi_decode(b, other, 5, 0, lb, 0), PI_OK);
    EXPECT_STATUS(pi_decode(b, toks + 5, 2, 5, lb, 0), PI_OK);
    CHECK(memcmp(la, lb, sizeof la) != 0, "another cache gave the same logits (the check is void)");
    /* a state of another model's shape is refused */
    int32_t head[4];
    memcpy(head, st, sizeof head);
    head[2] += 1;
    memcpy(st, head, sizeof head);
    EXPECT_STATUS(pi_context_set_state(b, 5, st, bytes), PI_ERR_SHAPE);
    free(st);
    pi_context_free(a);
    pi_context_free(b);
    pi_model_free(m);
    free(mem);
}

int main(void) {
    list_types();
    pi_pool *pool3 = NULL;
    if (pi_pool_create(3, &pool3) != PI_OK) {
        printf("cannot create a pool: %s\n", pi_last_error());
        return 1;
    }
    RUN(test_isa_selection());
    RUN(test_validation());
    RUN(test_simd_twins(pool3));
    RUN(test_thread_independence(pool3));
    RUN(test_rows8(pool3));
    RUN(test_table_twins());
    RUN(test_masked_pair(pool3));
    RUN(test_ffn_sparse(pool3));
    RUN(test_union(pool3));
    RUN(test_type_table());
    RUN(test_context_state());
    pi_pool_free(pool3);
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
