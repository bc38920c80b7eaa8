/* forward.c - the transformer step: contexts (KV cache, buffers, pool) and pi_decode.
 *
 * Read top to bottom: decode_chunk() runs up to n_batch tokens through every layer:
 *   embed -> [rmsnorm -> q,k,v -> rope -> attention over the KV cache -> o -> residual
 *             -> rmsnorm -> FFN (dense | sparse | threshold) -> residual] -> norm -> logits
 * Every buffer is allocated in pi_context_create; nothing is allocated per token.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "head.h"
#include "kernels.h"
#include "model.h"
#include "threads.h"
#include "types.h"

struct pi_context {
    const pi_model *m;
    pi_pool *pool;
    int32_t n_ctx, n_batch, ffn_mode;
    int32_t n_seq;            /* sequences, each with its own n_ctx positions of KV cache */
    int64_t ldv;              /* v cache row stride: n_ctx padded (v_row_stride) */
    pi_half *k_cache;         /* [n_layer][n_seq][n_head_kv][n_ctx][head_dim] f16 (llama.cpp's
                                 default cache type), head-major: a head's keys are contiguous */
    pi_half *v_cache;         /* [n_layer][n_seq][kv_dim][ldv] f16, transposed (as llama.cpp's) */
    int32_t *seq_len;         /* [n_seq] positions of each sequence's cache written so far */
    int32_t *tok_seq;         /* [n_batch] the current chunk's tokens' sequences */
    int32_t *tok_pos;         /* [n_batch] and positions */
    int32_t *out_rows;        /* [n_batch] the chunk's tokens whose logits are wanted */
    int32_t *seq_next;        /* [n_seq] pi_decode_seqs' validation scratch */
    float *x;                 /* [n_batch][d] residual stream */
    float *xn;                /* [n_batch][d] normalized input of the current block */
    float *q;                 /* [n_batch][q_dim] */
    float *k, *v;             /* [n_batch][kv_dim] the new positions' k and v, before the cache */
    float *att_out;           /* [n_batch][q_dim] */
    float *proj;              /* [n_batch][d] output of attn_output / the FFN */
    float *g, *u;             /* [n_batch][n_ff] gate and up (then the down input) */
    float *pz;                /* [n_pass][max_rank] predictor hidden layers of an FFN pass's tokens */
    float *scores;            /* [n_threads][attn_scratch()] attention scratch per thread */
    float *rope_cs;           /* [n_batch][n_rot] cos, sin of the chunk's positions' RoPE angles */
    float *rope_cs_swa;       /* [n_batch][n_rot] the same for the sliding layers (n_swa > 0) */
    int32_t *idx;             /* [n_pass][n_ff] active neuron ids of an FFN pass's tokens */
    float *act;               /* [n_pass][n_ff] act(gate) of one token (threshold mode), or the
                                 pass's tokens' predictor logits (sparse mode) */
    uint8_t *mark;            /* [n_ff] the union kernels' scratch, all 0 between calls */
    int32_t *un;              /* [n_ff] the union of a pass's rows */
    int32_t *all_idx;         /* [n_ff] 0, 1, ..., n_ff - 1: every neuron (dense AXPY) */
    float *partial;           /* [n_threads - 1][n_pass][d] the sparse FFN's per-share sums
                                 (n_pass: min(n_batch, PI_UNION_MAX_TOK), the tokens of a pass) */
    uint8_t *emb_row;         /* [row bytes of token_embd] one embedding row unpacked from rows8 */
    pi_head *head;            /* the sparse output head's scratch (head.c), NULL: dense head */
    pi_stats stats;
    float *rec_in, *rec_gate, *rec_h; /* calibration recorder (pi_context_set_recorder) */
    int32_t rec_tokens;
    int32_t rec_base;                  /* recorder row of the current chunk's first token */
    void *mem;
    size_t mem_bytes;
};

/* ---- small vector ops ---------------------------------------------------------------------- */

/* ggml's rms_norm then mul: the squares in f32, summed in double; x * scale, then * w. out may
 * be x. */
static void rmsnorm(float *out, const float *x, const float *w /* [d] */, int d, float eps) {
    double ss = 0;
    for (int i = 0; i < d; i++) ss += (double)(x[i] * x[i]);
    const float s = 1.0f / sqrtf((float)(ss / d) + eps);
    for (int i = 0; i < d; i++) out[i] = x[i] * s * w[i];
}

/* RMSNorm in place of n consecutive vectors of d floats (the heads of q or k, the rows of a
 * block's output) by the norm w [d]; nothing when the model has no such norm (w NULL). */
static void rmsnorm_rows(float *x, int64_t n, const pi_weight *w, int d, float eps) {
    if (!w->data) return;
    for (int64_t r = 0; r < n; r++) rmsnorm(x + r * d, x + r * d, w->data, d, eps);
}

/* ---- llama.cpp's CPU numerics ----------------------------------------------------------------
 * Attention, RoPE and SiLU follow llama.cpp's CPU backend (ggml-cpu) step by step, so that the
 * two engines agree closely: an f16 KV cache (llama.cpp's default), f16 queries and f16 attention
 * probabilities (its mul_mat converts them for the f16 cache), dot products in tinyBLAS's order
 * and ggml's vectorized expf (the pi_kernels attention / SwiGLU entries), RoPE angles by repeated
 * multiplication, RMSNorm's squares in f32. GELU is the exception: computed in f32 as
 * transformers does, where llama.cpp's CPU backend reads an f16 table. */


/* cs[2i], cs[2i + 1] = cos, sin of RoPE angle i at position pos: theta_i = pos * theta_scale^i by
 * repeated f32 multiplication, divided by the frequency factor ff[i] (rope_freqs; NULL: 1), then
 * scaled by freq_scale (ggml_rope_cache_init). */
static void rope_angles(float *cs, int n_rot, float theta_scale, float freq_scale,
                        const float *ff /* [n_rot/2] or NULL */, int pos) {
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float th = freq_scale * (ff ? theta / ff[i] : theta);
        cs[2 * i] = cosf(th);
        cs[2 * i + 1] = sinf(th);
        theta *= theta_scale;
    }
}

/* Jobs that read fewer weight bytes than this run on the calling thread alone: waking the pool
 * and gathering its results (~0.5-1 us) costs more than it saves on a few KB (a small predictor's
 * fc1, the AXPY over a ReLU layer's few truly active rows). Results do not depend on it. */
#define PI_SERIAL_BYTES 16384

static pi_pool *pool_for(pi_context *c, double bytes) { return bytes < PI_SERIAL_BYTES ? NULL : c->pool; }

/* Y[t] = W X[t] for t < B.  W: [n_rows][n_cols]; X: [B][n_cols]; Y: rows of stride ldy.
 * Over the repacked copy when the model made one. */
static int matmul(pi_context *c, const pi_weight *w, const float *X, int B, float *Y, int64_t ldy) {
    pi_pool *pool = pool_for(c, (double)pi_weight_bytes(w) * B);
    if (w->packed) return pi_matmat_rows8(pool, w->type, w->packed, w->n_rows, w->n_cols, X, B, Y, ldy);
    return pi_matmat(pool, w->type, w->data, w->n_rows, w->n_cols, X, B, Y, ldy);
}

/* Y_k = W_k X for k < n, each Y_k of stride its row count: one fused job when every W_k is
 * repacked and of one type (X quantized once, one pool run), else one matmul each. */
static int matmul_n(pi_context *c, const pi_weight *const w[], float *const Y[], int n, const float *X,
                    int B) {
    pi_rows8_out outs[3];
    int fused = n <= 3;
    for (int k = 0; k < n && fused; k++) {
        fused = w[k]->packed && w[k]->type == w[0]->type;
        outs[k] = (pi_rows8_out){.Wp = w[k]->packed, .n_rows = w[k]->n_rows, .Y = Y[k], .ldy = w[k]->n_rows};
    }
    if (fused) return pi_matmat_rows8_multi(c->pool, w[0]->type, w[0]->n_cols, X, B, outs, n);
    for (int k = 0; k < n; k++) {
        const int rc = matmul(c, w[k], X, B, Y[k], w[k]->n_rows);
        if (rc) return rc;
    }
    return PI_OK;
}

/* x += proj over B tokens (restrict: the two buffers never overlap, so the loop vectorizes). */
static void add_residual(pi_context *c, int B) {
    float *restrict x = c->x;
    const float *restrict p = c->proj;
    const size_t n = (size_t)B * (size_t)c->m->hp.n_embd;
    for (size_t i = 0; i < n; i++) x[i] += p[i];
}

static void add_bias(float *Y, const pi_weight *b, int B, int64_t n) {
    if (!b->data) return;
    const float *bias = b->data;
    for (int t = 0; t < B; t++)
        for (int64_t i = 0; i < n; i++) Y[(size_t)t * n + i] += bias[i];
}

/* ---- attention ------------------------------------------------------------------------------ */

typedef struct {
    pi_context *c;
    const pi_half *kc, *vc; /* this layer's cache, sequence 0: k [n_head_kv][n_ctx][hd], v [kv_dim][ldv] */
    int B;
    int window;             /* a sliding layer's n_swa: the positions attended; 0: all */
} attn_job;

/* Sequence s's part of a layer's k cache [n_head_kv][n_ctx][hd], or v cache [kv_dim][ldv]. */
static size_t k_seq_offset(const pi_context *c, int s) {
    return (size_t)s * (size_t)c->n_ctx * (size_t)c->m->hp.n_head_kv * (size_t)c->m->hp.head_dim;
}
static size_t v_seq_offset(const pi_context *c, int s) {
    return (size_t)s * (size_t)c->m->hp.n_head_kv * (size_t)c->m->hp.head_dim * (size_t)c->ldv;
}

/* The v cache's row stride: n_ctx rounded up to whole chunks of 8 positions (attn_values reads
 * whole chunks), plus one cache line, so that the rows a token's v is scattered into (and the
 * rows attention reads together) do not sit 4 KiB apart (power-of-two n_ctx): such addresses
 * alias in the store-to-load check and stall the scatter. */
static int64_t v_row_stride(int32_t n_ctx) { return ((int64_t)n_ctx + 7) / 8 * 8 + 32; }

/* The most sequences a context holds. */
#define PI_MAX_SEQ 4096

/* The largest n_ctx a context takes (its buffer sizes then fit size_t with room to spare). */
#define PI_MAX_CTX (INT32_MAX - 64)

/* Floats of attention scratch per thread: scores [n_ctx + 8] and the f16-rounded query. */
static size_t attn_scratch(int n_ctx, int head_dim) { return (size_t)n_ctx + 8 + (size_t)head_dim; }

/* One (token, head) pair per work item: softmax(attn_scale q k^T) v over positions 0..pos of the
 * token's sequence (the last `window` of them in a sliding layer), as llama.cpp's CPU graph
 * computes it: kq = k16 . q16
 * (mul_mat), soft_max_ext over whole chunks of 8 positions (the ones outside masked),
 * kqv = v16 . p16 (mul_mat). A window starts its chunks at a multiple of 8 positions. */
static void attn_task(void *arg, int ith, int nth) {
    const attn_job *j = arg;
    const pi_context *c = j->c;
    const pi_kernels *K = pi_kernels_active();
    const pi_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    const int q_dim = hp->n_head * hd;
    float *sc = c->scores + (size_t)ith * attn_scratch(c->n_ctx, hd);
    float *q16 = sc + c->n_ctx + 8;
    int64_t b, e;
    pi_split((int64_t)j->B * hp->n_head, 1, ith, nth, &b, &e);
    for (int64_t item = b; item < e; item++) {
        const int t = (int)(item / hp->n_head), h = (int)(item % hp->n_head);
        const int pos = c->tok_pos[t], kvh = h / group;
        const pi_half *kc = j->kc + k_seq_offset(c, c->tok_seq[t]);
        const pi_half *vc = j->vc + v_seq_offset(c, c->tok_seq[t]);
        const int first = j->window && pos >= j->window ? pos - j->window + 1 : 0;
        const int p0 = first / 8 * 8, n_pos = pos + 1 - p0; /* positions p0 .. pos, sc[p - p0] */
        const float *q = c->q + (size_t)t * q_dim + (size_t)h * hd;
        memcpy(q16, q, (size_t)hd * sizeof *q16);
        K->round_f16(hd, q16);
        K->attn_scores(n_pos, hd, kc + ((size_t)kvh * c->n_ctx + (size_t)p0) * hd, hd, q16,
                       hp->attn_scale, sc);
        for (int p = 0; p < first - p0; p++) sc[p] = -INFINITY;
        float mx = -INFINITY;
        for (int p = 0; p < n_pos; p++) mx = sc[p] > mx ? sc[p] : mx;
        const int n_pad = (n_pos + 7) / 8 * 8;
        for (int p = n_pos; p < n_pad; p++) sc[p] = -INFINITY;
        const float inv = (float)(1.0 / K->softmax_exp(n_pad, sc, mx));
        for (int p = 0; p < n_pos; p++) sc[p] *= inv;
        K->round_f16(n_pos, sc);
        K->attn_values(n_pos, hd, vc + (size_t)kvh * hd * c->ldv + p0, c->ldv, sc,
                       c->att_out + (size_t)t * q_dim + (size_t)h * hd);
    }
}

static int attention_block(pi_context *c, int il, int B) {
    const pi_model *m = c->m;
    const pi_hparams *hp = &m->hp;
    const pi_layer *l = &m->layers[il];
    const int d = hp->n_embd, hd = hp->head_dim;
    const int q_dim = hp->n_head * hd, kv_dim = hp->n_head_kv * hd;
    pi_half *kc = c->k_cache + k_seq_offset(c, il * c->n_seq); /* layer il, sequence 0 */
    pi_half *vc = c->v_cache + v_seq_offset(c, il * c->n_seq);
    const pi_kernels *K = pi_kernels_active();
    int rc;

    /* v goes into the cache one element per row, kv_dim scattered lines: fetch them now, while
     * q, k and v are computed */
    for (int i = 0; i < kv_dim; i++)
        __builtin_prefetch(vc + v_seq_offset(c, c->tok_seq[0]) + (size_t)i * c->ldv + c->tok_pos[0], 1, 3);
    for (int t = 0; t < B; t++)
        rmsnorm(c->xn + (size_t)t * d, c->x + (size_t)t * d, l->attn_norm.data, d, hp->norm_eps);
    const pi_weight *qkv[3] = {&l->wq, &l->wk, &l->wv};
    float *const qkv_out[3] = {c->q, c->k, c->v};
    if ((rc = matmul_n(c, qkv, qkv_out, 3, c->xn, B))) return rc;
    add_bias(c->q, &l->bq, B, q_dim);
    add_bias(c->k, &l->bk, B, kv_dim);
    add_bias(c->v, &l->bv, B, kv_dim);
    rmsnorm_rows(c->q, (int64_t)B * hp->n_head, &l->q_norm, hd, hp->norm_eps); /* qwen3, gemma3 */
    rmsnorm_rows(c->k, (int64_t)B * hp->n_head_kv, &l->k_norm, hd, hp->norm_eps);
    const int slides = pi_layer_slides(hp, il);
    for (int t = 0; t < B; t++) {
        const float *cs = (slides ? c->rope_cs_swa : c->rope_cs) + (size_t)t * hp->n_rot;
        for (int h = 0; h < hp->n_head; h++)
            K->rope(hp->n_rot, hp->rope_neox, cs, c->q + (size_t)t * q_dim + (size_t)h * hd);
        for (int h = 0; h < hp->n_head_kv; h++)
            K->rope(hp->n_rot, hp->rope_neox, cs, c->k + (size_t)t * kv_dim + (size_t)h * hd);
    }
    /* the new positions into the f16 cache of their sequences: k at row pos of each head, v at
     * column pos (through c->k's memory, free once k is stored) */
    for (int t = 0; t < B; t++)
        for (int h = 0; h < hp->n_head_kv; h++)
            K->to_f16(hd, c->k + (size_t)t * kv_dim + (size_t)h * hd,
                      kc + k_seq_offset(c, c->tok_seq[t]) + ((size_t)h * c->n_ctx + (size_t)c->tok_pos[t]) * hd);
    pi_half *v16 = (pi_half *)c->k;
    K->to_f16((int64_t)B * kv_dim, c->v, v16);
    for (int t = 0; t < B; t++) {
        pi_half *vt = vc + v_seq_offset(c, c->tok_seq[t]) + c->tok_pos[t];
        for (int i = 0; i < kv_dim; i++) vt[(size_t)i * c->ldv] = v16[(size_t)t * kv_dim + i];
    }
    attn_job job = {.c = c, .kc = kc, .vc = vc, .B = B, .window = slides ? hp->n_swa : 0};
    pi_pool_run(c->pool, attn_task, &job);
    if ((rc = matmul(c, &l->wo, c->att_out, B, c->proj, d))) return rc;
    rmsnorm_rows(c->proj, B, &l->post_attn_norm, d, hp->norm_eps); /* gemma3 */
    add_residual(c, B);
    return PI_OK;
}

/* ---- FFN ------------------------------------------------------------------------------------ */

/* The predictor's hidden layer of B tokens: c->pz [B][rank] = relu(fc1 xn). */
static int predictor_hidden(pi_context *c, const pi_layer *l, const float *xn, int B) {
    const pi_weight *f1 = &l->fc1;
    const int rc = matmul(c, f1, xn, B, c->pz, f1->n_rows);
    for (int64_t i = 0; i < (int64_t)B * f1->n_rows; i++) c->pz[i] = c->pz[i] > 0 ? c->pz[i] : 0;
    return rc;
}

/* Sparse AXPY reads a row about this much slower per byte than the dense rows8 kernel reads its
 * weights (bench/results/kernels.json: 1.4-2.1x across types and thread counts). */
#define PI_AXPY_COST 1.5

/* Whether the down projection of n active neurons is cheaper dense, over the file's plain
 * ffn_down (a --keep-down file), than as an AXPY over their ffn_down_t rows: at low sparsity,
 * and whenever ffn_down_t is the wider type. (Decided per token, as alone: the two give
 * different bits.) */
static int dense_down_pays(const pi_layer *l, int32_t n) {
    return (double)n * (double)pi_weight_row_bytes(&l->down_t) * PI_AXPY_COST >
           (double)pi_weight_bytes(&l->down);
}

/* Threshold mode's selection of one token: idx [n_ff] = the neurons with |act(gate)| above thr
 * (thr 0 keeps every neuron of an activation without exact zeros: SiLU, GELU). A ReLU model's
 * threshold is at least 0: its zeros are always dropped, and a negative threshold (a file
 * calibrated for sparse mode holds predictor logits) means exactly those.
 * With up already computed dense (dense_up), also forms the down input: u = act(g) * u for kept
 * neurons, 0 for dropped ones; act is evaluated once per neuron, vectorized. */
static int32_t select_threshold(pi_context *c, const float *g, float *u, float thr, int dense_up, int32_t *idx) {
    const int n_ff = c->m->hp.n_ff, kind = c->m->hp.ffn_act;
    const int zeros = pi_acts[kind].exact_zeros;
    const int keep_all = thr == 0 && !zeros;
    if (zeros && thr < 0) thr = 0;
    float *a = c->act;
    memcpy(a, g, (size_t)n_ff * sizeof *a);
    pi_kernels_active()->act[kind](n_ff, a);
    int32_t n = n_ff;
    if (keep_all) memcpy(idx, c->all_idx, (size_t)n_ff * sizeof *idx);
    else n = (int32_t)pi_kernels_active()->select(n_ff, a, thr, 1, idx);
    if (dense_up)
        for (int i = 0; i < n_ff; i++) u[i] = keep_all || fabsf(a[i]) > thr ? u[i] * a[i] : 0.0f;
    return n;
}

/* The FFN weight bytes of n rows of w. */
static int64_t rows_bytes(const pi_weight *w, int64_t n) { return n * (int64_t)pi_weight_row_bytes(w); }

/* One FFN pass of sparse mode over tokens t0 .. t0 + B (B <= PI_UNION_MAX_TOK): the predictors'
 * hidden layers here (one fc1 product for the pass), the rest in one pool run (pi_ffn_sparse:
 * the union of the tokens' picks read once; each token's bits those of it alone). */
static int ffn_sparse_pass(pi_context *c, const pi_layer *l, int il, int t0, int B) {
    const pi_hparams *hp = &c->m->hp;
    const size_t n_ff = (size_t)hp->n_ff, d = (size_t)hp->n_embd;
    const pi_weight *f2 = &l->fc2;
    int rc;
    if ((rc = predictor_hidden(c, l, c->xn + t0 * d, B))) return rc;
    pi_ffn_sparse_args a = {
        .n_tok = B, .fc2_type = f2->type, .fc2 = f2->packed ? f2->packed : f2->data,
        .fc2_rows8 = f2->packed != NULL, .rank = f2->n_cols, .h = c->pz, .thr = c->m->thresholds[il],
        .type = l->gate.type, .gate = l->gate.data, .up = l->up.data, .down_type = l->down_t.type,
        .down_t = l->down_t.data, .act = hp->ffn_act, .n_ff = hp->n_ff, .d = hp->n_embd,
        .x = c->xn + t0 * d, .logit = c->act, .g = c->g + t0 * n_ff, .u = c->u + t0 * n_ff,
        .idx = c->idx, .mark = c->mark, .un = c->un, .partial = c->partial, .y = c->proj + t0 * d};
    rc = pi_ffn_sparse(c->pool, &a);
    c->stats.ffn_active += a.n_picked;
    c->stats.ffn_down_active += a.n_down;
    c->stats.ffn_pass_active += a.n_union;
    c->stats.ffn_pass_down += a.n_union_down;
    c->stats.ffn_bytes += pi_weight_bytes(&l->fc1) + pi_weight_bytes(f2) + rows_bytes(&l->gate, a.n_union) +
                          rows_bytes(&l->up, a.n_union_up) + rows_bytes(&l->down_t, a.n_union_down);
    return rc;
}

/* The down projection of threshold mode over the pass's tokens, each as alone: dense over the
 * plain ffn_down for the tokens where that pays (runs of consecutive tokens in one product), an
 * AXPY over ffn_down_t for the others, the union of their rows read once. */
static int threshold_down(pi_context *c, const pi_layer *l, int t0, int B, const int32_t *const idx[],
                          const int64_t n[]) {
    const size_t n_ff = (size_t)c->m->hp.n_ff, d = (size_t)c->m->hp.n_embd;
    const int32_t *ax_idx[PI_UNION_MAX_TOK];
    int64_t ax_n[PI_UNION_MAX_TOK], rows = 0;
    const float *ax_a[PI_UNION_MAX_TOK];
    float *ax_y[PI_UNION_MAX_TOK];
    int n_ax = 0, dense = 0, rc;
    for (int t = 0; t < B;) {
        float *u = c->u + (t0 + t) * n_ff, *y = c->proj + (t0 + t) * d;
        if (!(l->down.data && dense_down_pays(l, (int32_t)n[t]))) {
            ax_idx[n_ax] = idx[t], ax_n[n_ax] = n[t], ax_a[n_ax] = u, ax_y[n_ax++] = y;
            rows += n[t];
            c->stats.ffn_down_active += n[t];
            t++;
            continue;
        }
        int e = t + 1; /* u is 0 for every dropped neuron */
        while (e < B && dense_down_pays(l, (int32_t)n[e])) e++;
        if ((rc = matmul(c, &l->down, u, e - t, y, (int64_t)d))) return rc;
        c->stats.ffn_down_active += (int64_t)(e - t) * (int64_t)n_ff;
        dense = 1;
        t = e;
    }
    const int64_t n_un = pi_union_count(n_ax, ax_idx, ax_n, c->mark);
    c->stats.ffn_pass_down += dense ? (int64_t)n_ff : n_un;
    c->stats.ffn_bytes += (dense ? pi_weight_bytes(&l->down) : 0) + rows_bytes(&l->down_t, n_un);
    if (!n_ax) return PI_OK;
    pi_pool *pool = pool_for(c, (double)pi_weight_row_bytes(&l->down_t) * (double)rows);
    if (n_ax == 1)
        return pi_axpy_sparse(pool, l->down_t.type, l->down_t.data, (int64_t)n_ff, (int64_t)d, ax_a[0],
                              ax_idx[0], ax_n[0], ax_y[0]);
    return pi_axpy_sparse_union(pool, l->down_t.type, l->down_t.data, (int64_t)n_ff, (int64_t)d, n_ax, ax_a,
                                ax_idx, ax_n, ax_y, c->mark, c->un);
}

/* One FFN pass of threshold mode over tokens t0 .. t0 + B (B <= PI_UNION_MAX_TOK): gate (and
 * up, when repacked) of all the tokens in one product; each token's selection on act(gate); up
 * masked (not repacked: over the union of the tokens' kept rows) and the down projection
 * (threshold_down). Each token's bits are those of it alone. */
static int ffn_threshold_pass(pi_context *c, const pi_layer *l, int il, int t0, int B) {
    const pi_hparams *hp = &c->m->hp;
    const size_t n_ff = (size_t)hp->n_ff, d = (size_t)hp->n_embd;
    const int dense_up = l->up.packed != NULL;
    float *g = c->g + t0 * n_ff, *u = c->u + t0 * n_ff;
    const pi_weight *gu[2] = {&l->gate, &l->up};
    float *const gu_out[2] = {g, u};
    int rc;
    if ((rc = matmul_n(c, gu, gu_out, dense_up ? 2 : 1, c->xn + t0 * d, B))) return rc;
    int32_t *idx[PI_UNION_MAX_TOK];
    int64_t n[PI_UNION_MAX_TOK];
    float *us[PI_UNION_MAX_TOK];
    for (int t = 0; t < B; t++) { /* with a dense up, u = act(g) * up */
        idx[t] = c->idx + (size_t)t * n_ff;
        us[t] = u + t * n_ff;
        n[t] = select_threshold(c, g + t * n_ff, us[t], c->m->thresholds[il], dense_up, idx[t]);
        c->stats.ffn_active += n[t]; /* the gate and up rows computed */
    }
    const int64_t n_un = pi_union_count(B, (const int32_t *const *)idx, n, c->mark);
    c->stats.ffn_pass_active += n_un;
    c->stats.ffn_bytes += (int64_t)pi_weight_bytes(&l->gate) +
                          (dense_up ? (int64_t)pi_weight_bytes(&l->up) : rows_bytes(&l->up, n_un));
    if (!dense_up) {
        rc = B == 1 ? pi_matvec_masked(c->pool, l->up.type, l->up.data, (int64_t)n_ff, (int64_t)d,
                                       c->xn + t0 * d, idx[0], n[0], u)
                    : pi_matvec_masked_union(c->pool, l->up.type, l->up.data, (int64_t)n_ff, (int64_t)d, B,
                                             c->xn + t0 * d, (const int32_t *const *)idx, n, us, c->mark, c->un);
        if (rc) return rc;
        for (int t = 0; t < B; t++) /* most ReLU picks drop out */
            n[t] = pi_down_input(pi_kernels_active()->lanes, hp->ffn_act, g + t * n_ff, us[t], idx[t], n[t]);
    }
    return threshold_down(c, l, t0, B, (const int32_t *const *)idx, n);
}

/* Copies this layer's FFN input, gate and down input of B tokens into the recorder. */
static void record(pi_context *c, int il, int B) {
    const pi_hparams *hp = &c->m->hp;
    const size_t d = (size_t)hp->n_embd, n_ff = (size_t)hp->n_ff, L = (size_t)hp->n_layer;
    for (int t = 0; t < B; t++) {
        const size_t row = ((size_t)c->rec_base + (size_t)t) * L + (size_t)il;
        if (c->rec_in) memcpy(c->rec_in + row * d, c->xn + t * d, d * sizeof(float));
        if (c->rec_gate) memcpy(c->rec_gate + row * n_ff, c->g + t * n_ff, n_ff * sizeof(float));
        if (c->rec_h) memcpy(c->rec_h + row * n_ff, c->u + t * n_ff, n_ff * sizeof(float));
    }
}

static int ffn_block(pi_context *c, int il, int B) {
    const pi_model *m = c->m;
    const pi_hparams *hp = &m->hp;
    const pi_layer *l = &m->layers[il];
    const int d = hp->n_embd, n_ff = hp->n_ff;
    int rc;
    for (int t = 0; t < B; t++)
        rmsnorm(c->xn + (size_t)t * d, c->x + (size_t)t * d, l->ffn_norm.data, d, hp->norm_eps);
    if (c->ffn_mode == PI_FFN_DENSE) {
        const pi_weight *gu[2] = {&l->gate, &l->up};
        float *const gu_out[2] = {c->g, c->u};
        if ((rc = matmul_n(c, gu, gu_out, 2, c->xn, B))) return rc;
        pi_kernels_active()->glu[hp->ffn_act]((int64_t)B * n_ff, c->g, c->u);
        if (l->down.data) {
            if ((rc = matmul(c, &l->down, c->u, B, c->proj, d))) return rc;
        } else {
            for (int t = 0; t < B; t++)
                if ((rc = pi_axpy_sparse(c->pool, l->down_t.type, l->down_t.data, n_ff, d,
                                         c->u + (size_t)t * n_ff, c->all_idx, n_ff, c->proj + (size_t)t * d)))
                    return rc;
        }
        c->stats.ffn_active += (int64_t)B * n_ff;
        c->stats.ffn_down_active += (int64_t)B * n_ff;
        c->stats.ffn_pass_active += n_ff;
        c->stats.ffn_pass_down += n_ff;
        c->stats.ffn_bytes += pi_weight_bytes(&l->gate) + pi_weight_bytes(&l->up) +
                              pi_weight_bytes(l->down.data ? &l->down : &l->down_t);
        c->stats.ffn_pass_neurons += n_ff;
    } else { /* passes of up to PI_UNION_MAX_TOK tokens, each reading the union of their rows */
        for (int t0 = 0; t0 < B; t0 += PI_UNION_MAX_TOK) {
            const int nb = B - t0 < PI_UNION_MAX_TOK ? B - t0 : PI_UNION_MAX_TOK;
            if ((rc = c->ffn_mode == PI_FFN_SPARSE ? ffn_sparse_pass(c, l, il, t0, nb)
                                                   : ffn_threshold_pass(c, l, il, t0, nb)))
                return rc;
            c->stats.ffn_pass_neurons += n_ff;
        }
    }
    c->stats.ffn_neurons += (int64_t)B * n_ff;
    if (c->rec_tokens) record(c, il, B);
    rmsnorm_rows(c->proj, B, &l->post_ffn_norm, d, hp->norm_eps); /* gemma3 */
    add_residual(c, B);
    return PI_OK;
}

/* ---- one chunk of tokens --------------------------------------------------------------------- */

/* Runs the chunk's B tokens (sequences and positions in c->tok_seq, c->tok_pos) through every
 * layer; then either hidden [B][d], every token's final-normed state (what the head reads), or
 * logits [n_out][n_vocab] of the tokens out[0 .. n_out) (chunk rows, ascending). One row takes
 * the context's head (the sparse head when set), several the full head. */
static int decode_chunk(pi_context *c, const int32_t *tokens, int B, const int32_t *out, int n_out,
                        float *logits, float *hidden) {
    const pi_model *m = c->m;
    const pi_hparams *hp = &m->hp;
    const int d = hp->n_embd;
    const pi_weight *emb = &m->tok_embd;
    const size_t emb_row = pi_weight_row_bytes(emb);
    int rc;
    for (int t = 0; t < B; t++) {
        const uint8_t *row = (const uint8_t *)emb->data + (size_t)tokens[t] * emb_row;
        if (emb->packed) { /* tied to the output and repacked: the file's copy stays unread */
            pi_rows8_unpack_row(emb->type, emb->packed, emb->n_rows, emb->n_cols, tokens[t], c->emb_row);
            row = c->emb_row;
        }
        pi_type_traits_of(emb->type)->dequantize(row, c->x + (size_t)t * d, d);
    }
    if (hp->embd_scale != 1.0f) /* gemma3: sqrt(n_embd), as llama.cpp's ggml_scale */
        for (size_t i = 0; i < (size_t)B * d; i++) c->x[i] *= hp->embd_scale;
    /* once per chunk: every layer of a kind (global; sliding, with its own base and scale)
     * rotates by the same angles */
    const struct { float *cs; float base, scale; } kinds[2] = {
        {c->rope_cs, hp->rope_freq_base, hp->rope_freq_scale},
        {c->rope_cs_swa, hp->rope_freq_base_swa, hp->rope_freq_scale_swa}};
    for (int k = 0; k < (hp->n_swa > 0 ? 2 : 1); k++) {
        const float theta_scale = powf(kinds[k].base, -2.0f / (float)hp->n_rot);
        for (int t = 0; t < B; t++)
            rope_angles(kinds[k].cs + (size_t)t * hp->n_rot, hp->n_rot, theta_scale, kinds[k].scale,
                        m->rope_freqs.data, c->tok_pos[t]);
    }
    for (int il = 0; il < hp->n_layer; il++) {
        if ((rc = attention_block(c, il, B))) return rc;
        if ((rc = ffn_block(c, il, B))) return rc;
    }
    c->stats.tokens += B;
    if (hidden) { /* the final norm of every token, what the head would read */
        for (int t = 0; t < B; t++)
            rmsnorm(hidden + (size_t)t * d, c->x + (size_t)t * d, m->output_norm.data, d, hp->norm_eps);
        return PI_OK;
    }
    if (!n_out) return PI_OK;
    for (int r = 0; r < n_out; r++) /* row r of xn: token out[r] (out ascending: r <= out[r]) */
        rmsnorm(c->xn + (size_t)r * d, c->x + (size_t)out[r] * d, m->output_norm.data, d, hp->norm_eps);
    if (c->head && n_out == 1)
        rc = pi_head_logits(c->head, c->pool, c->xn, logits);
    else
        rc = matmul(c, pi_model_output(m), c->xn, n_out, logits, hp->n_vocab);
    if (rc) return rc;
    if (hp->final_softcap > 0) { /* llama.cpp's: scale by 1 / cap, tanh, scale by cap */
        const float inv = 1.0f / hp->final_softcap;
        for (size_t i = 0; i < (size_t)n_out * hp->n_vocab; i++)
            logits[i] = tanhf(logits[i] * inv) * hp->final_softcap;
    }
    return PI_OK;
}

/* 1 when no value is NaN or inf (exponent bits all ones); an integer loop, so it vectorizes. */
static int all_finite(const float *x, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        bad |= (u & 0x7F800000u) == 0x7F800000u;
    }
    return !bad;
}

/* Runs tokens [n_tokens] in chunks of n_batch: token i of sequence seq[i] at position pos[i]
 * (seq NULL: sequence 0 at n_past + i). The output: hidden [n_tokens][n_embd] when not NULL,
 * else logits [n_rows][n_vocab] of the tokens with want[i] set, in order (want NULL: every token
 * when logits_all, else the last), none when logits is NULL. The callers validated the rest. */
static int run_tokens(const char *fn, pi_context *c, const int32_t *tokens, int32_t n_tokens,
                      const int32_t *seq, const int32_t *pos, int32_t n_past, const int8_t *want,
                      int logits_all, float *logits, float *hidden) {
    const int64_t V = c->m->hp.n_vocab, d = c->m->hp.n_embd;
    int64_t rows = 0;
    for (int32_t done = 0; done < n_tokens; done += c->n_batch) {
        const int B = n_tokens - done < c->n_batch ? n_tokens - done : c->n_batch;
        int n_out = 0;
        for (int t = 0; t < B; t++) {
            const int32_t i = done + t;
            c->tok_seq[t] = seq ? seq[i] : 0;
            c->tok_pos[t] = seq ? pos[i] : n_past + i;
            const int w = logits && (want ? want[i] != 0 : logits_all || i == n_tokens - 1);
            if (w) c->out_rows[n_out++] = t;
        }
        c->rec_base = done;
        const int rc = decode_chunk(c, tokens + done, B, c->out_rows, n_out, logits ? logits + rows * V : NULL,
                                    hidden ? hidden + (int64_t)done * d : NULL);
        for (int t = 0; t < B; t++) c->seq_len[c->tok_seq[t]] = c->tok_pos[t] + 1;
        if (rc) return rc;
        rows += n_out;
    }
    if (hidden && !all_finite(hidden, (size_t)n_tokens * (size_t)d))
        return pi_fail(PI_ERR_NUMERIC, "%s: the hidden states are not finite (NaN or inf in the "
                                       "model's weights, or an overflow)", fn);
    if (logits && !all_finite(logits, (size_t)rows * (size_t)V))
        return pi_fail(PI_ERR_NUMERIC, "%s: the logits are not finite (NaN or inf in the "
                                       "model's weights, or an overflow)", fn);
    return pi_ok();
}

static int check_tokens(const char *fn, const pi_context *c, const int32_t *tokens, int32_t n_tokens) {
    if (n_tokens <= 0) return pi_fail(PI_ERR_SHAPE, "%s: n_tokens = %d must be positive", fn, n_tokens);
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->hp.n_vocab)
            return pi_fail(PI_ERR_RANGE, "%s: token %d = %d out of range [0, %d)", fn, i, tokens[i],
                           c->m->hp.n_vocab);
    return PI_OK;
}

/* pi_decode and pi_decode_hidden (sequence 0): the checks, then the chunks; exactly one of
 * logits and hidden is the output (logits may be NULL too: the KV cache alone). */
static int decode(const char *fn, pi_context *c, const int32_t *tokens, int32_t n_tokens, int32_t n_past,
                  float *logits, int32_t logits_all, float *hidden) {
    PI_CHECK_NULL(c);
    PI_CHECK_NULL(tokens);
    int rc;
    if ((rc = check_tokens(fn, c, tokens, n_tokens))) return rc;
    if (n_past < 0 || (int64_t)n_past + n_tokens > c->n_ctx)
        return pi_fail(PI_ERR_RANGE, "%s: context overflow: %d past + %d new tokens > n_ctx = %d", fn,
                       n_past, n_tokens, c->n_ctx);
    if (c->rec_tokens && n_tokens > c->rec_tokens)
        return pi_fail(PI_ERR_RANGE, "%s: %d tokens but the recorder holds %d", fn, n_tokens,
                       c->rec_tokens);
    return run_tokens(fn, c, tokens, n_tokens, NULL, NULL, n_past, NULL, logits_all, logits, hidden);
}

int pi_decode(pi_context *c, const int32_t *tokens, int32_t n_tokens, int32_t n_past, float *logits,
              int32_t logits_all) {
    return decode("pi_decode", c, tokens, n_tokens, n_past, logits, logits_all, NULL);
}

int pi_decode_hidden(pi_context *c, const int32_t *tokens, int32_t n_tokens, int32_t n_past, float *hidden) {
    PI_CHECK_NULL(hidden);
    return decode("pi_decode_hidden", c, tokens, n_tokens, n_past, NULL, 0, hidden);
}

int pi_decode_seqs(pi_context *c, const int32_t *tokens, const int32_t *seq, const int32_t *pos,
                   int32_t n_tokens, const int8_t *want, float *logits) {
    static const char fn[] = "pi_decode_seqs";
    PI_CHECK_NULL(c);
    PI_CHECK_NULL(tokens);
    PI_CHECK_NULL(seq);
    PI_CHECK_NULL(pos);
    int rc;
    if ((rc = check_tokens(fn, c, tokens, n_tokens))) return rc;
    if (c->rec_tokens) return pi_fail(PI_ERR_RANGE, "%s: the recorder is set (pi_decode only)", fn);
    if (want && !logits) return pi_fail(PI_ERR_NULL, "%s: want is set but logits is NULL", fn);
    /* each sequence's tokens continue its cache (or rewrite its tail): the first at a position
     * <= its length so far, the others one after another */
    for (int32_t s = 0; s < c->n_seq; s++) c->seq_next[s] = -1;
    for (int32_t i = 0; i < n_tokens; i++) {
        const int32_t s = seq[i], p = pos[i];
        if (s < 0 || s >= c->n_seq)
            return pi_fail(PI_ERR_RANGE, "%s: token %d: sequence %d out of range [0, %d)", fn, i, s, c->n_seq);
        if (p < 0 || p >= c->n_ctx)
            return pi_fail(PI_ERR_RANGE, "%s: token %d: position %d out of range [0, n_ctx = %d) "
                                         "(context overflow)", fn, i, p, c->n_ctx);
        const int32_t next = c->seq_next[s];
        if (next < 0 ? p > c->seq_len[s] : p != next)
            return pi_fail(PI_ERR_RANGE, "%s: token %d: position %d of sequence %d does not follow its "
                                         "cache (%d positions) or its previous token", fn, i, p, s,
                           next < 0 ? c->seq_len[s] : next);
        c->seq_next[s] = p + 1;
    }
    return run_tokens(fn, c, tokens, n_tokens, seq, pos, 0, want, 0, logits, NULL);
}

int pi_context_seq_len(const pi_context *c, int32_t seq, int32_t *len) {
    PI_CHECK_NULL(c);
    PI_CHECK_NULL(len);
    if (seq < 0 || seq >= c->n_seq)
        return pi_fail(PI_ERR_RANGE, "pi_context_seq_len: sequence %d out of range [0, %d)", seq, c->n_seq);
    *len = c->seq_len[seq];
    return pi_ok();
}

/* ---- context lifetime ------------------------------------------------------------------------ */

int pi_context_create(pi_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads, pi_context **out) {
    return pi_context_create_seqs(m, n_ctx, n_batch, n_threads, 1, out);
}

int pi_context_create_seqs(pi_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads, int32_t n_seq,
                           pi_context **out) {
    PI_CHECK_NULL(m);
    PI_CHECK_NULL(out);
    *out = NULL;
    if (!m->finalized) return pi_fail(PI_ERR_RANGE, "pi_context_create: model is not finalized");
    if (n_ctx <= 0 || n_batch <= 0 || n_threads <= 0 || n_seq <= 0)
        return pi_fail(PI_ERR_RANGE, "pi_context_create: n_ctx = %d, n_batch = %d, n_threads = %d, n_seq = %d "
                                     "must be positive", n_ctx, n_batch, n_threads, n_seq);
    if (n_seq > PI_MAX_SEQ)
        return pi_fail(PI_ERR_RANGE, "pi_context_create: n_seq = %d is above the limit %d", n_seq, PI_MAX_SEQ);
    if (n_ctx > PI_MAX_CTX)
        return pi_fail(PI_ERR_RANGE, "pi_context_create: n_ctx = %d is above the limit %d", n_ctx,
                       PI_MAX_CTX);
    if (n_batch > (int64_t)n_ctx * n_seq) n_batch = (int32_t)((int64_t)n_ctx * n_seq); /* all positions fit */
    const pi_hparams *hp = &m->hp;
    const size_t d = (size_t)hp->n_embd, n_ff = (size_t)hp->n_ff, B = (size_t)n_batch;
    const size_t P = B < PI_UNION_MAX_TOK ? B : PI_UNION_MAX_TOK; /* tokens of one FFN pass */
    const size_t q_dim = (size_t)hp->n_head * hp->head_dim, kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t cache = (size_t)hp->n_layer * (size_t)n_seq * (size_t)n_ctx * kv_dim;
    const size_t v_cache = (size_t)hp->n_layer * (size_t)n_seq * (size_t)v_row_stride(n_ctx) * kv_dim;
    if ((double)hp->n_layer * n_seq * (double)v_row_stride(n_ctx) * (double)kv_dim * 2 > 0x1p60)
        return pi_fail(PI_ERR_NOMEM, "pi_context_create: the KV cache of n_seq = %d x n_ctx = %d positions "
                                     "does not fit in memory", n_seq, n_ctx);
    pi_context *c = calloc(1, sizeof *c);
    if (!c) return pi_fail(PI_ERR_NOMEM, "pi_context_create: out of memory");
    /* one allocation, carved into 64-byte aligned buffers */
    const struct { void **ptr; size_t bytes; } parts[] = {
        {(void **)&c->k_cache, cache * 2}, {(void **)&c->v_cache, v_cache * 2},
        {(void **)&c->x, B * d * 4}, {(void **)&c->xn, B * d * 4},
        {(void **)&c->q, B * q_dim * 4}, {(void **)&c->k, B * kv_dim * 4},
        {(void **)&c->v, B * kv_dim * 4}, {(void **)&c->att_out, B * q_dim * 4},
        {(void **)&c->proj, B * d * 4}, {(void **)&c->g, B * n_ff * 4},
        {(void **)&c->u, B * n_ff * 4}, {(void **)&c->pz, P * ((size_t)m->max_rank + 1) * 4},
        {(void **)&c->scores, (size_t)n_threads * attn_scratch(n_ctx, hp->head_dim) * 4},
        {(void **)&c->rope_cs, B * (size_t)hp->n_rot * 4},
        {(void **)&c->rope_cs_swa, hp->n_swa > 0 ? B * (size_t)hp->n_rot * 4 : 0},
        {(void **)&c->idx, P * n_ff * 4}, {(void **)&c->mark, n_ff}, {(void **)&c->un, n_ff * 4},
        {(void **)&c->all_idx, n_ff * 4}, {(void **)&c->act, P * n_ff * 4},
        {(void **)&c->partial, (size_t)n_threads * P * d * 4},
        {(void **)&c->emb_row, pi_weight_row_bytes(&m->tok_embd)},
        {(void **)&c->seq_len, (size_t)n_seq * 4}, {(void **)&c->seq_next, (size_t)n_seq * 4},
        {(void **)&c->tok_seq, B * 4}, {(void **)&c->tok_pos, B * 4}, {(void **)&c->out_rows, B * 4}};
    const size_t n_parts = sizeof parts / sizeof parts[0];
    size_t total = 0;
    for (size_t i = 0; i < n_parts; i++) total += (parts[i].bytes + 63) / 64 * 64;
    int rc = pi_buffer_alloc_advised(total, 0, &c->mem); /* used sparsely: no huge pages */
    if (rc) {
        free(c);
        return pi_fail(PI_ERR_NOMEM, "pi_context_create: cannot allocate %zu bytes for n_ctx = %d", total, n_ctx);
    }
    c->mem_bytes = total; /* zeroed, and its pages cost memory only once used */
    char *p = c->mem;
    for (size_t i = 0; i < n_parts; i++) {
        *parts[i].ptr = p;
        p += (parts[i].bytes + 63) / 64 * 64;
    }
    if ((rc = pi_pool_create(n_threads, &c->pool))) {
        pi_buffer_free(c->mem, c->mem_bytes);
        free(c);
        return rc;
    }
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_seq = n_seq;
    c->ldv = v_row_stride(n_ctx);
    c->n_batch = n_batch;
    c->ffn_mode = PI_FFN_DENSE;
    for (size_t i = 0; i < n_ff; i++) c->all_idx[i] = (int32_t)i;
    *out = c;
    return pi_ok();
}

void pi_context_free(pi_context *c) {
    if (!c) return;
    pi_head_free(c->head);
    pi_pool_free(c->pool);
    pi_buffer_free(c->mem, c->mem_bytes);
    free(c);
}

int pi_context_set_ffn_mode(pi_context *c, int mode) {
    PI_CHECK_NULL(c);
    int32_t modes = 0;
    int rc = pi_model_ffn_modes(c->m, &modes);
    if (rc) return rc;
    if (mode < 0 || mode > PI_FFN_THRESHOLD)
        return pi_fail(PI_ERR_RANGE, "pi_context_set_ffn_mode: unknown mode %d", mode);
    if (!(modes & (1 << mode)))
        return pi_fail(PI_ERR_RANGE, "pi_context_set_ffn_mode: this model cannot run FFN mode %s (%s)",
                       mode == PI_FFN_SPARSE ? "sparse" : "threshold",
                       mode == PI_FFN_SPARSE ? "it needs ffn_down_t, predictors fc1/fc2, and "
                                               "ffn_gate and ffn_up of one type"
                                             : "it needs the split-FFN tensor ffn_down_t");
    c->ffn_mode = mode;
    return pi_ok();
}

int pi_context_set_recorder(pi_context *c, float *ffn_in, float *ffn_gate, float *ffn_h,
                            int32_t n_tokens) {
    PI_CHECK_NULL(c);
    if (n_tokens < 0) return pi_fail(PI_ERR_RANGE, "pi_context_set_recorder: n_tokens = %d", n_tokens);
    const int off = n_tokens == 0 || (!ffn_in && !ffn_gate && !ffn_h);
    c->rec_in = off ? NULL : ffn_in;
    c->rec_gate = off ? NULL : ffn_gate;
    c->rec_h = off ? NULL : ffn_h;
    c->rec_tokens = off ? 0 : n_tokens;
    return pi_ok();
}

int pi_context_stats(const pi_context *c, pi_stats *out) {
    PI_CHECK_NULL(c);
    PI_CHECK_NULL(out);
    *out = c->stats;
    return pi_ok();
}

int pi_context_reset_stats(pi_context *c) {
    PI_CHECK_NULL(c);
    memset(&c->stats, 0, sizeof c->stats);
    pi_head_reset_stats(c->head);
    return pi_ok();
}

/* ---- the output head's mode (head.c) ----------------------------------------------------------- */

int pi_context_set_head_mode(pi_context *c, int mode) {
    PI_CHECK_NULL(c);
    int32_t modes = 0;
    int rc = pi_model_head_modes(c->m, &modes);
    if (rc) return rc;
    if (mode != PI_HEAD_DENSE && mode != PI_HEAD_SPARSE)
        return pi_fail(PI_ERR_RANGE, "pi_context_set_head_mode: unknown mode %d", mode);
    if (!(modes & (1 << mode)))
        return pi_fail(PI_ERR_RANGE, "pi_context_set_head_mode: this model has no output preview "
                                     "(output_preview_a/b) for the sparse head");
    if (mode == PI_HEAD_DENSE) {
        pi_head_free(c->head);
        c->head = NULL;
        return pi_ok();
    }
    if (!c->head && (rc = pi_head_create(c->m, &c->head))) return rc;
    return pi_ok();
}

int pi_context_head_stats(const pi_context *c, int64_t *steps, int64_t *fallbacks, int64_t *exact_rows) {
    PI_CHECK_NULL(c);
    pi_head_stats(c->head, steps, fallbacks, exact_rows);
    return pi_ok();
}

/* ---- saved state: the KV cache of the first positions ------------------------------------------ */

#define PI_STATE_MAGIC 0x564B4950 /* "PIKV" */

static int state_check(const char *fn, const pi_context *c, int32_t n_tokens, int64_t *bytes) {
    if (n_tokens < 0 || n_tokens > c->n_ctx)
        return pi_fail(PI_ERR_RANGE, "%s: n_tokens = %d outside [0, n_ctx = %d]", fn, n_tokens, c->n_ctx);
    const pi_hparams *hp = &c->m->hp;
    const int64_t kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    *bytes = 16 + (int64_t)hp->n_layer * 2 * kv_dim * n_tokens * (int64_t)sizeof(pi_half);
    return PI_OK;
}

int pi_context_state_size(const pi_context *c, int32_t n_tokens, int64_t *bytes) {
    PI_CHECK_NULL(c);
    PI_CHECK_NULL(bytes);
    int64_t n = 0;
    int rc = state_check("pi_context_state_size", c, n_tokens, &n);
    if (rc) return rc;
    *bytes = n;
    return pi_ok();
}

/* Copies positions 0 .. n - 1 of every layer's keys and values between the cache and buf
 * (to_buf: cache -> buf). */
static void state_copy(pi_context *c, int32_t n, uint8_t *buf, int to_buf) {
    const pi_hparams *hp = &c->m->hp;
    const size_t hd = (size_t)hp->head_dim, kv_dim = (size_t)hp->n_head_kv * hd, h2 = sizeof(pi_half);
    for (int il = 0; il < hp->n_layer; il++) {
        pi_half *kc = c->k_cache + k_seq_offset(c, il * c->n_seq); /* layer il, sequence 0 */
        pi_half *vc = c->v_cache + v_seq_offset(c, il * c->n_seq);
        for (int h = 0; h < hp->n_head_kv; h++, buf += (size_t)n * hd * h2) {
            pi_half *k = kc + (size_t)h * c->n_ctx * hd;
            if (to_buf) memcpy(buf, k, (size_t)n * hd * h2);
            else memcpy(k, buf, (size_t)n * hd * h2);
        }
        for (size_t i = 0; i < kv_dim; i++, buf += (size_t)n * h2) {
            pi_half *v = vc + i * (size_t)c->ldv;
            if (to_buf) memcpy(buf, v, (size_t)n * h2);
            else memcpy(v, buf, (size_t)n * h2);
        }
    }
}

/* get/set_state's arguments: n_tokens in range, a buffer of exactly the state's size. */
static int state_args(const char *fn, const pi_context *c, int32_t n_tokens, const void *buf, int64_t bytes) {
    PI_CHECK_NULL(c);
    PI_CHECK_NULL(buf);
    int64_t need = 0;
    int rc = state_check(fn, c, n_tokens, &need);
    if (rc) return rc;
    if (bytes != need)
        return pi_fail(PI_ERR_SHAPE, "%s: buffer of %lld bytes, the state of %d tokens takes %lld", fn,
                       (long long)bytes, n_tokens, (long long)need);
    return PI_OK;
}

int pi_context_get_state(const pi_context *c, int32_t n_tokens, void *buf, int64_t bytes) {
    int rc = state_args("pi_context_get_state", c, n_tokens, buf, bytes);
    if (rc) return rc;
    const pi_hparams *hp = &c->m->hp;
    const int32_t head[4] = {PI_STATE_MAGIC, hp->n_layer, hp->n_head_kv * hp->head_dim, n_tokens};
    memcpy(buf, head, sizeof head);
    state_copy((pi_context *)c, n_tokens, (uint8_t *)buf + sizeof head, 1);
    return pi_ok();
}

int pi_context_set_state(pi_context *c, int32_t n_tokens, const void *buf, int64_t bytes) {
    int rc = state_args("pi_context_set_state", c, n_tokens, buf, bytes);
    if (rc) return rc;
    const pi_hparams *hp = &c->m->hp;
    int32_t head[4];
    memcpy(head, buf, sizeof head);
    if (head[0] != PI_STATE_MAGIC || head[1] != hp->n_layer || head[2] != hp->n_head_kv * hp->head_dim ||
        head[3] != n_tokens)
        return pi_fail(PI_ERR_SHAPE, "pi_context_set_state: the state is not one of %d tokens of this "
                                     "model's shape (header: magic %#x, %d layers, kv width %d, %d tokens)",
                       n_tokens, (unsigned)head[0], head[1], head[2], head[3]);
    state_copy(c, n_tokens, (uint8_t *)buf + sizeof head, 0);
    c->seq_len[0] = n_tokens;
    return pi_ok();
}
