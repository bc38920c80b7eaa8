/* kernels.h - the per-ISA kernel table behind pi_matvec & co. (internal).
 *
 * kernels.c validates arguments, quantizes the activation once per call, splits the work over the
 * pool and calls the active table's inner kernels; each ISA (scalar in kernels.c, AVX2 and
 * AVX-512 in kernels_x86.c) provides one table. The scalar table is the reference twin: every
 * SIMD kernel computes the same per-block integer sums; only the order of float accumulation
 * differs.
 */
#ifndef PI_KERNELS_H
#define PI_KERNELS_H

#include <math.h>
#include <stdint.h>

#include "blocks.h"
#include "pi.h"

/* Rows handled by one inner-kernel call (they share the activation loads). */
#define PI_KERNEL_ROWS 4

/* out[r] = rows[r] . act for r < nr (1 <= nr <= PI_KERNEL_ROWS).
 *   rows[r]: one weight row of n elements (n a multiple of the block size);
 *   act: the activation in the weight type's act_type (types.h): [n] f32 for F32/F16, a row of
 *   n elements of Q8_0 for Q4_0/Q8_0, of Q8_1 for Q4_1 (and so on: the table's act_type). */
typedef void (*pi_dot_fn)(int64_t n, const void *const rows[], int nr, const void *act,
                          float *out);

/* y[c] += sum_r a[r] * dequant(rows[r])[c] for c in [c0, c1), r < nr (1 <= nr <= 4).
 * c0, c1 are multiples of the block size; y is the whole output row (indexed by c). */
typedef void (*pi_axpy_fn)(int64_t c0, int64_t c1, const void *const rows[], const float *a,
                           int nr, float *y);

/* out[r] = row r . act for the 8 rows of one rows8 group (blocks.h), r < 8.
 *   group: [n / block_elems] interleaved blocks of the weight type; act: as pi_dot_fn takes it.
 * Each row gets the bits of the AVX2 pi_dot_fn (llama.cpp's AVX2 vec_dot order): 8 lane
 * accumulators per row, lane k taking (d_w * d_x) * (integer sum of block elements 4k .. 4k + 3)
 * by fused multiply-add, block after block; then ggml's hsum of the lanes, plus (Q4_1) the min
 * terms m_w * s_x summed in block order (IQ4_NL: ggml's two sets of lanes, even and odd blocks,
 * then its odd last block: iq4_nl_sum in kernels.c). The scalar twin computes the same bits. */
typedef void (*pi_dot8_fn)(int64_t n, const void *group, const void *act, float out[8]);

/* pi_dot8_fn over n_tok tokens at once: out + t * ldo gets dot8(n, group, act + t * act_bytes)
 * for t < n_tok, with its bits (its twin: the table's dot8, token by token). One unpacking of each
 * weight block serves several tokens: the batched step's arithmetic per token is a fraction of
 * a single token's (the AVX-512 table). */
typedef void (*pi_dot8n_fn)(int64_t n, const void *group, const void *act, size_t act_bytes,
                            int64_t n_tok, float *out, int64_t ldo);

/* x: [n] f32 -> y: a row of n elements of an activation type (n a multiple of its block size). */
typedef void (*pi_quantize_act_fn)(const float *x, void *y, int64_t n);

/* How a K-quant dot adds its mins' term -d_x dmin sum_e m_e x_e (pi_k_scales), in ggml's x86
 * order for the type; from the activation's bsums, mlane[k] = the sum of m_e x_e over elements
 * 32k .. 32k + 31 = m_(32k) bsums[2k] + m_(32k + 16) bsums[2k + 1] (exact):
 *   K_MINS_8 (Q2_K): lane k += -d_x dmin * mlane[k] by fma, before the block's lane sums;
 *   K_MINS_4 (Q4_K): 4 more lanes, lane p += -d_x dmin * (mlane[2p] + mlane[2p + 1]) by fma,
 *     added after the hsum as (l0 + l2) + (l1 + l3);
 *   K_MINS_1 (Q5_K): one float, += -d_x dmin * (the sum of mlane) by fma (ggml's summs += dmin
 *     * sum, contracted), added after the hsum;
 *   K_MINS_NONE (Q3_K, Q6_K): no mins. */
typedef enum { K_MINS_NONE, K_MINS_8, K_MINS_4, K_MINS_1 } pi_k_mins;

/* The kernels of one instruction set. The per-type kernels are indexed by ggml type id (types.h)
 * and written with designated initializers ([PI_TYPE_Q4_0] = ...); NULL where a type has none.
 * tests/c/test_pi.c walks the type table against every table. */
typedef struct {
    const char *name;
    pi_dot_fn dot[PI_N_TYPE_IDS];           /* every weight type */
    pi_dot8_fn dot8[PI_N_TYPE_IDS];         /* every type with a rows8 layout */
    pi_dot8n_fn dot8n[PI_N_TYPE_IDS];       /* NULL: dot8 token by token (scalar, AVX2, IQ4_NL) */
    pi_axpy_fn axpy[PI_N_TYPE_IDS];         /* every weight type */
    /* By activation type (every quantized act_type of a weight): ggml-cpu's x86
     * quantize_row_q8_{0,1} (id = 127 / amax, round half to even), the same bits on every ISA. */
    pi_quantize_act_fn quantize_act[PI_N_TYPE_IDS];
    /* The f32 vector width of the llama.cpp CPU build (ggml-cpu) whose order the attention
     * entries and the SiLU of glu/act below follow: 8 (its AVX2 build: the scalar and AVX2 tables) or 16 (its
     * AVX-512 build: the AVX-512 table). pi_*_ref(lanes, ...) are their scalar twins. */
    int lanes;
    /* The attention steps of forward.c in the order of llama.cpp's batched CPU path (ggml-cpu's
     * tinyBLAS f16 GEMM, ggml_vec_soft_max_f32). A "lane" is one
     * f32 accumulator: element i of a sum goes into lane i % lanes by fused multiply-add, and the
     * lanes are added as ggml's hsum: 16 lanes first as l[j] + l[j + 8] for j < 8, then 8 lanes
     * as (l[j] + l[j + 4]) for j < 4, then (0 + 2) + (1 + 3). exp is pi_expf_ggml(lanes, .).
     * s[p] = scale * (k_p . q) for p < n_pos: k_p = k + p * ldk ([hd] f16), q [hd] f32. */
    void (*attn_scores)(int n_pos, int hd, const pi_half *k, int64_t ldk, const float *q,
                        float scale, float *s);
    /* x[i] = exp(x[i] - max) for i < n (a multiple of 8); returns their sum: each chunk of
     * `lanes` elements (the last one zero-extended)'s lane sum, added into a double. */
    double (*softmax_exp)(int n, float *x, float max);
    /* out[i] = vt_i . p for i < hd: vt_i = vt + i * ldv ([n_pos] f16), p [n_pos] f32. */
    void (*attn_values)(int n_pos, int hd, const pi_half *vt, int64_t ldv, const float *p,
                        float *out);
    /* By FFN activation (pi_act; designated initializers, every one filled): the gated FFN's
     * down input u[i] = act(g[i]) * u[i], and x[i] = act(x[i]) (threshold mode's selection), for
     * i < n; act is pi_act_fn(lanes, act)'s, the same bits (ggml_vec_swiglu_f32's for SiLU). */
    void (*glu[PI_N_ACTS])(int64_t n, const float *g, float *u);
    void (*act[PI_N_ACTS])(int64_t n, float *x);
    /* y[i] = x[i] as binary16, round to nearest even (pi_float_to_half's bits), for i < n. */
    void (*to_f16)(int64_t n, const float *x, pi_half *y);
    /* x[i] = x[i] rounded to binary16 and back (the f16 queries and probabilities of
     * llama.cpp's attention), for i < n. */
    void (*round_f16)(int64_t n, float *x);
    /* The FFN's active set: idx[0 .. count) = the i < n with v[i] > thr (|v[i]| > thr when
     * `absval`), ascending; returns count. NaN is never above. idx has room for n entries. */
    int64_t (*select)(int64_t n, const float *v, float thr, int absval, int32_t *idx);
    /* Rotates one head's first n_rot dims of v by the angles cs (cs[2i], cs[2i + 1] = cos, sin of
     * angle i): llama pairs (2i, 2i + 1), or NeoX pairs (i, i + n_rot / 2). Each pair as
     * v_a' = fma(v_a, cos, -(v_b * sin)), v_b' = fma(v_a, sin, v_b * cos), the same bits on
     * every ISA. n_rot even. */
    void (*rope)(int n_rot, int neox, const float *cs, float *v);
} pi_kernels;

/* The scalar select from element i0 on, appending to idx[k ..]; returns the new count (the
 * scalar twin, and the SIMD tails). */
static inline int64_t pi_select_ref(int64_t i0, int64_t n, const float *v, float thr, int absval,
                                    int32_t *idx, int64_t k) {
    for (int64_t i = i0; i < n; i++) { /* branch-free: the active set is unpredictable */
        idx[k] = (int32_t)i;
        k += (absval ? fabsf(v[i]) : v[i]) > thr;
    }
    return k;
}

/* The scalar rope from pair i0 on (the scalar twin, and the SIMD tails). */
static inline void pi_rope_ref(int i0, int n_rot, int neox, const float *cs, float *v) {
    const int half = n_rot / 2;
    for (int i = i0; i < half; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = fmaf(x0, c, -(x1 * s));
        v[b] = fmaf(x0, s, x1 * c);
    }
}

/* expf as ggml-cpu's vectorized ggml_v_expf (after ARM's optimized routines; within 2.5 ulp of
 * the true value) in the build of `lanes` (pi_kernels.lanes): the scalar form of the lane-wise
 * vector code, the same bits. The two builds share the reduction x = n ln 2 + r and the
 * polynomial p(r) ~ e^r - 1, and round differently: AVX2 (8) as 2^n + 2^n p(r) by one fused
 * multiply-add (2^n in two factors when |n| > 126), AVX-512 (16) as (1 + p(r)) rounded, then
 * scaled by 2^n exactly (vscalefps). Both give 0 / inf when |n| > 192. */
float pi_expf_ggml(int lanes, float x);

/* The scalar twins of the attention and SwiGLU entries of pi_kernels in the order of the
 * llama.cpp build of `lanes` (8 or 16): a table's entries give these functions' bits with its
 * own lanes (tests/c/test_pi.c). */
void pi_attn_scores_ref(int lanes, int n_pos, int hd, const pi_half *k, int64_t ldk, const float *q,
                        float scale, float *s);
double pi_softmax_exp_ref(int lanes, int n, float *x, float max);
void pi_attn_values_ref(int lanes, int n_pos, int hd, const pi_half *vt, int64_t ldv, const float *p,
                        float *out);
/* The glu and act entries' twins for a table of `lanes`: u[i] *= f(g[i]), x[i] = f(x[i]) with
 * f = pi_act_fn(lanes, act). */
void pi_glu_ref(int lanes, int act, int64_t n, const float *g, float *u);
void pi_act_ref(int lanes, int act, int64_t n, float *x);

/* ---- the FFN activations (pi_act), scalar: the reference of every ISA's glu/act kernels ---- */
/* silu(x) = x / (1 + exp(-x)), llama.cpp's: with its AVX2 build's exp (pi_silu_ref) or its
 * AVX-512 build's (pi_silu16_ref). */
static inline float pi_silu_ref(float x) { return x / (1.0f + pi_expf_ggml(8, -x)); }
static inline float pi_silu16_ref(float x) { return x / (1.0f + pi_expf_ggml(16, -x)); }

static inline float pi_relu_ref(float x) { return x > 0 ? x : 0; }

/* GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as
 * x sigmoid(2u) = x / (1 + exp(z)), z = (-2 sqrt(2/pi) x) (1 + 0.044715 x x): no cancellation for
 * negative x, and SiLU's structure. (llama.cpp's CPU GELU reads an f16 table instead: within
 * about 1e-3 relative of this; transformers' gelu_pytorch_tanh is within a few f32 ulps.) */
#define PI_GELU_COEF_A 0.044715f
#define PI_GELU_COEF_Z (-2.0f * 0.79788456080286535588f)
static inline float pi_gelu_tanh_ref(float x) {
    const float z = (PI_GELU_COEF_Z * x) * fmaf(PI_GELU_COEF_A * x, x, 1.0f);
    return x / (1.0f + pi_expf_ggml(8, z));
}

typedef struct {
    const char *name;         /* pi.ffn_activation's spelling */
    float (*fn)(float);       /* the scalar activation (llama.cpp's AVX2 build: 8 lanes) */
    float (*fn16)(float);     /* ... as the tables of 16 lanes compute it (AVX-512) */
    int exact_zeros;          /* 1: act is exactly 0 for every x <= 0 (ReLU): those neurons add
                                 nothing, so threshold mode drops them even at threshold 0 */
} pi_act_desc;

/* Indexed by pi_act (kernels.c). */
extern const pi_act_desc pi_acts[PI_N_ACTS];

/* The scalar activation `kind` of a table of `lanes` (pi_kernels.lanes). */
static inline float (*pi_act_fn(int lanes, int kind))(float) {
    return lanes == 16 ? pi_acts[kind].fn16 : pi_acts[kind].fn;
}

/* One matrix of a fused rows8 product (pi_matmat_rows8_multi).
 *   Wp: [n_rows][n_cols] in the rows8 layout; Y: [n_tok][ldy], ldy >= n_rows. */
typedef struct {
    const void *Wp;
    int64_t n_rows;
    float *Y;
    int64_t ldy;
} pi_rows8_out;

/* pi_matmat_rows8 for several matrices of one type and row length applied to the same X (q, k
 * and v; gate and up): X is quantized once and all their row groups are split over the pool in
 * one job. Each Y is what pi_matmat_rows8 gives for its matrix alone. Validates like it. */
int pi_matmat_rows8_multi(pi_pool *pool, int type, int64_t n_cols, const float *X, int64_t n_tok,
                          const pi_rows8_out *outs, int n_outs);

/* pi_matvec_masked over two matrices of one shape and type with the same active rows (gate and
 * up): x quantized once, one pool run, each kernel call taking two rows of each. y and y2 are
 * what two pi_matvec_masked calls give. Validates like it. */
int pi_matvec_masked_pair(pi_pool *pool, int type, const void *W, const void *W2, int64_t n_rows,
                          int64_t n_cols, const float *x, const int32_t *idx, int64_t n_idx,
                          float *y, float *y2);

/* The down input of the picks idx[0 .. n): u[i] *= act(g[i]) (act: pi_act_fn(lanes, kind)); the
 * picks whose down input is exactly 0 (a ReLU's negative gate) add nothing to the down projection
 * and are dropped from idx (kept in order); returns how many are left. */
static inline int64_t pi_down_input(int lanes, int kind, const float *g, float *u, int32_t *idx,
                                    int64_t n) {
    float (*const act)(float) = pi_act_fn(lanes, kind);
    int64_t kept = 0;
    for (int64_t k = 0; k < n; k++) { /* branch-free: the active set is unpredictable */
        const int32_t i = idx[k];
        u[i] *= act(g[i]);
        idx[kept] = i;
        kept += u[i] != 0.0f;
    }
    return kept;
}

/* The most tokens one pass of the union kernels below serves (a step's FFN takes its tokens in
 * passes of at most this many). */
#define PI_UNION_MAX_TOK 64

/* The sparse FFN (sparse mode) of n_tok tokens in one pool run, without a barrier: each share
 * takes a range of neurons (whole groups of 8) and over it computes, per token, the predictor
 * logits fc2 . h, picks the neurons above thr, computes their gate and up rows (masked; for an
 * activation with exact zeros, ReLU, the up rows of the picks whose gate fires only), forms the
 * down input a_i = act(g_i) * u_i and adds its nonzero a_i times their down_t rows into the
 * token's partial sum of the share; each token's y is share 0's sum plus the others' in share
 * order. With several tokens, the gate, up and down_t rows of a share are walked once over the
 * union of the tokens' rows (union_walk in kernels.c): every token makes the kernel calls of its
 * own rows alone, in order, so each token's results are, bit for bit, those of a call with that
 * token alone. Validates like pi_matvec_masked. */
typedef struct {
    int64_t n_tok;            /* tokens, 1 .. PI_UNION_MAX_TOK; the per-token buffers hold n_tok rows */
    int fc2_type;
    const void *fc2;          /* [n_ff][rank]: in the rows8 layout when fc2_rows8, else plain rows */
    int fc2_rows8;
    int64_t rank;
    const float *h;           /* [n_tok][rank] relu(fc1 x): the predictor's hidden layer */
    float thr;                /* logit threshold */
    int type;                 /* gate and up */
    const void *gate, *up;    /* [n_ff][d] */
    int down_type;
    const void *down_t;       /* [n_ff][d]: down transposed, one row per neuron */
    int act;                  /* pi_act */
    int64_t n_ff, d;
    const float *x;           /* [n_tok][d] the FFN input */
    float *logit;             /* [n_tok][n_ff] scratch */
    float *g, *u;             /* [n_tok][n_ff] out: gate and down input of the picked neurons, 0 elsewhere */
    int32_t *idx;             /* [n_tok][n_ff] scratch */
    uint8_t *mark;            /* [n_ff] scratch, all 0 (left so); n_tok > 1 only */
    int32_t *un;              /* [n_ff] scratch: the union; n_tok > 1 only */
    float *partial;           /* [n_threads - 1][n_tok][d] scratch: the other shares' sums */
    float *y;                 /* [n_tok][d] out */
    int64_t n_picked, n_down; /* out, summed over the tokens: neurons whose gate and up were
                                 computed; down_t rows multiplied */
    int64_t n_union, n_union_up, n_union_down; /* out: gate, up and down_t rows read (the unions
                                                  of the tokens' rows) */
} pi_ffn_sparse_args;

int pi_ffn_sparse(pi_pool *pool, pi_ffn_sparse_args *a);

/* Several tokens' masked products and sparse AXPYs over the union of their rows: token t's
 * result is, bit for bit, what pi_matvec_masked / pi_axpy_sparse give for its list alone; the
 * union's rows are read once for all of them. The lists idx[t][0 .. n_idx[t]) are ascending (the
 * select kernel's order; checked). mark [n_rows] (all 0, left so) and un [n_rows] are scratch.
 * 1 <= n_tok <= PI_UNION_MAX_TOK. Validate like their one-token forms.
 *   pi_matvec_masked_union: Y[t] [n_rows] = W X[t] on the rows of idx[t], 0 elsewhere; X: [n_tok][n_cols].
 *   pi_axpy_sparse_union: Y[t] [n_cols] = sum over i in idx[t] of A[t][i] * row i of Wt. */
int pi_matvec_masked_union(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
                           int n_tok, const float *X, const int32_t *const idx[], const int64_t n_idx[],
                           float *const Y[], uint8_t *mark, int32_t *un);
int pi_axpy_sparse_union(pi_pool *pool, int type, const void *Wt, int64_t n_rows, int64_t n_cols,
                         int n_tok, const float *const A[], const int32_t *const idx[],
                         const int64_t n_idx[], float *const Y[], uint8_t *mark, int32_t *un);

/* The size of the union of the lists idx[t][0 .. n_idx[t]); mark (one byte per row) is scratch,
 * all 0 before and after. */
int64_t pi_union_count(int n_tok, const int32_t *const idx[], const int64_t n_idx[], uint8_t *mark);

/* The table of the active instruction set (pi_isa_get). */
const pi_kernels *pi_kernels_active(void);

extern const pi_kernels pi_kernels_scalar;
#if defined(__x86_64__)
extern const pi_kernels pi_kernels_avx2;
extern const pi_kernels pi_kernels_avx512;
#endif

/* cpu.c: whether this CPU and OS can run `isa` (a pi_isa value). */
int pi_cpu_has_isa(int isa);

#endif /* PI_KERNELS_H */
