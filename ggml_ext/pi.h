/*
 * pi.h - the one public header of ggml_ext, the pi_backend kernel library.
 *
 * C11, no Python C-API: pi_backend/_lib.py mirrors every declaration below, in this order.
 * Every entry point validates its arguments and returns a pi_status (0 = PI_OK). On error,
 * pi_last_error() gives a one-line, specific message for the calling thread. The library never
 * aborts, exits or prints.
 *
 * Tensor conventions: a matrix is row-major, `n_rows` rows of `n_cols` elements of one ggml type.
 * Quantized rows are sequences of ggml blocks (bit-identical to ggml/GGUF), so n_cols must be a
 * multiple of the type's block size. Weights are read in place (e.g. from a GGUF memmap).
 */
#ifndef PI_H
#define PI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PI_API_VERSION 9

#if defined(__GNUC__)
#define PI_API __attribute__((visibility("default")))
#else
#define PI_API
#endif

/* ---- status codes ---------------------------------------------------------------------- */
typedef enum {
    PI_OK = 0,
    PI_ERR_NULL = 1,    /* a required pointer was NULL */
    PI_ERR_TYPE = 2,    /* unsupported tensor type for this operation */
    PI_ERR_SHAPE = 3,   /* a size is not positive, not a multiple of the block size, or inconsistent */
    PI_ERR_RANGE = 4,   /* an index or argument is out of range */
    PI_ERR_NOMEM = 5,   /* an allocation failed */
    PI_ERR_THREADS = 6, /* a worker thread could not be created */
    PI_ERR_ISA = 7,     /* the requested instruction set is not available on this CPU */
    PI_ERR_NUMERIC = 8, /* a result is not finite (NaN or inf): corrupt weights or overflow */
} pi_status;

/* ---- tensor types: the ggml type ids, as stored in GGUF -------------------------------- */
typedef enum {
    PI_TYPE_F32 = 0,
    PI_TYPE_F16 = 1,
    PI_TYPE_Q4_0 = 2,
    PI_TYPE_Q4_1 = 3,
    PI_TYPE_Q5_0 = 6,
    PI_TYPE_Q5_1 = 7,
    PI_TYPE_Q8_0 = 8,
    PI_TYPE_Q8_1 = 9,
    PI_TYPE_Q2_K = 10,
    PI_TYPE_Q3_K = 11,
    PI_TYPE_Q4_K = 12,
    PI_TYPE_Q5_K = 13,
    PI_TYPE_Q6_K = 14,
    PI_TYPE_Q8_K = 15,
    PI_TYPE_IQ4_NL = 20,
    PI_TYPE_IQ4_XS = 23,
    PI_TYPE_BF16 = 30,
} pi_type;
/* Every ggml type id is below this (ggml's GGML_TYPE_COUNT). */
#define PI_N_TYPE_IDS 40

/* ---- instruction sets for the kernels --------------------------------------------------- */
typedef enum {
    PI_ISA_SCALAR = 0, /* portable C: the reference twin of every SIMD kernel */
    PI_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    PI_ISA_AVX512 = 2, /* AVX-512 F/BW/VL/VNNI (Zen4 on; Ice Lake on) */
} pi_isa;

/* ---- library ---------------------------------------------------------------------------- */
PI_API int pi_api_version(void);
PI_API const char *pi_status_str(int status);
PI_API const char *pi_last_error(void);

/* Best ISA this CPU and build support; the active ISA; force one (PI_ERR_ISA if unsupported). */
PI_API int pi_isa_best(void);
PI_API int pi_isa_get(void);
PI_API int pi_isa_set(int isa);

/* ---- types and blocks ------------------------------------------------------------------- */
/* Elements per block and bytes per block of `type`. */
PI_API int pi_type_info(int type, int64_t *block_elems, int64_t *block_bytes);
/* What the library does with a type (one row of its type table). */
typedef struct {
    const char *name;    /* "Q4_0", ...: ggml's name */
    int64_t block_elems;
    int64_t block_bytes;
    int32_t weight;      /* 1: a matrix type of the kernels (pi_matvec & co., pi_model_set_tensor) */
    int32_t act_type;    /* weights: the type the kernels quantize x to (PI_TYPE_F32: x as is); else -1 */
    int32_t rows8;       /* 1: pi_repack_rows8 and pi_matmat_rows8 take it */
} pi_type_desc;
/* The row of `type`; PI_ERR_TYPE for an id the library does not know (any id in
 * [0, PI_N_TYPE_IDS) may be asked: the known ones are those that return PI_OK). */
PI_API int pi_type_describe(int type, pi_type_desc *out);
/* Bytes of one row of n elements of `type`. */
PI_API int pi_row_bytes(int type, int64_t n, int64_t *bytes);

/* x: [n] f32 -> y: row of n elements of `type` (any type pi_type_describe knows). */
PI_API int pi_quantize_row(int type, const float *x, void *y, int64_t n);
/* x: row of n elements of `type` -> y: [n] f32. */
PI_API int pi_dequantize_row(int type, const void *x, float *y, int64_t n);

/* ---- memory ----------------------------------------------------------------------------- */
/* A zeroed buffer of its own anonymous mapping (page aligned; huge-page aligned and advised
 * when it is large); pages cost memory only once written. Free with the same `bytes`. */
PI_API int pi_buffer_alloc(size_t bytes, void **out);
PI_API void pi_buffer_free(void *ptr, size_t bytes);
/* Reads `bytes` of `buf` (a multiple of 64) with all threads of `pool`; *checksum defeats
 * dead-code elimination. The machine's read bandwidth reference for the benchmarks. */
typedef struct pi_pool pi_pool;
PI_API int pi_read_bytes(pi_pool *pool, const void *buf, size_t bytes, float *checksum);

/* ---- thread pool ------------------------------------------------------------------------ */
/* A persistent pool of n_threads workers (the caller counts as one). Threads are created here
 * once, never per call. A NULL pool means: run on the calling thread alone. */
PI_API int pi_pool_create(int n_threads, pi_pool **out);
PI_API void pi_pool_free(pi_pool *pool);
PI_API int pi_pool_n_threads(const pi_pool *pool);

/* ---- kernels ---------------------------------------------------------------------------- */
/* Dense matrix-vector product y = W x.
 *   W: [n_rows][n_cols] of `type` (a weight type: pi_type_desc.weight)
 *   x: [n_cols] f32, y: [n_rows] f32
 * Quantized W: x is quantized per block as ggml does, to the type's act_type (Q8_0 for
 * Q4_0/Q8_0, Q8_1 for Q4_1), followed by an integer dot (pi_type_describe lists each type's).
 * BF16 W takes x as it is (f32; ggml rounds x to BF16 first). */
PI_API int pi_matvec(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
                     const float *x, float *y);

/* Batched dense product (prompt processing): Y[t] = W X[t] for t < n_tok, reading W once.
 *   W: [n_rows][n_cols] of `type`; X: [n_tok][n_cols] f32; Y: [n_tok][ldy] f32, ldy >= n_rows.
 * Each Y[t] equals what pi_matvec gives for X[t]. */
PI_API int pi_matmat(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
                     const float *X, int64_t n_tok, float *Y, int64_t ldy);

/* The 8-row interleaved layout ("rows8") of the dense kernels: rows 8g .. 8g + 7 stored block by
 * block together, so that one 256-bit step serves 8 rows (docs/FORMAT.md). Same size as W; the
 * n_rows % 8 last rows stay plain. The types with pi_type_desc.rows8 only (the 4-, 5- and
 * 8-bit types of 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL).
 *   W: [n_rows][n_cols] of `type`; out: the same number of bytes, not overlapping W. */
PI_API int pi_repack_rows8(int type, const void *W, int64_t n_rows, int64_t n_cols, void *out);
/* pi_matmat over a repacked matrix Wp. Results agree with pi_matmat's up to f32 rounding (each
 * row sums its blocks in one accumulator). */
PI_API int pi_matmat_rows8(pi_pool *pool, int type, const void *Wp, int64_t n_rows,
                           int64_t n_cols, const float *X, int64_t n_tok, float *Y, int64_t ldy);

/* Masked vec_dot (gate/up): y[idx[k]] = W[idx[k]] . x for k < n_idx; every other y[i] = 0.
 *   W: [n_rows][n_cols] of `type`; x: [n_cols] f32; idx: [n_idx] int32 in [0, n_rows);
 *   y: [n_rows] f32. Rows not in idx are never read. */
PI_API int pi_matvec_masked(pi_pool *pool, int type, const void *W, int64_t n_rows,
                            int64_t n_cols, const float *x, const int32_t *idx, int64_t n_idx,
                            float *y);

/* Sparse AXPY (down): y = sum_k a[idx[k]] * Wt[idx[k]]  (y is overwritten).
 *   Wt: [n_rows][n_cols] of `type`, one row of length n_cols (= d) per neuron (ffn_down_t);
 *   a: [n_rows] f32 (neuron activations); idx: [n_idx] int32 in [0, n_rows); y: [n_cols] f32.
 * Only rows in idx are read. Threads split the columns, so there is no reduction and the
 * result does not depend on the thread count. */
PI_API int pi_axpy_sparse(pi_pool *pool, int type, const void *Wt, int64_t n_rows,
                          int64_t n_cols, const float *a, const int32_t *idx, int64_t n_idx,
                          float *y);

/* The design ablation: the same down projection on the original row-major W_down, skipping
 * inactive columns (strided access). y[j] = sum_k W[j][idx[k]] * a[idx[k]].
 *   W: [n_rows = d][n_cols = n_ff] of `type`; a: [n_cols] f32; idx in [0, n_cols); y: [n_rows]. */
PI_API int pi_matvec_cols_sparse(pi_pool *pool, int type, const void *W, int64_t n_rows,
                                 int64_t n_cols, const float *a, const int32_t *idx,
                                 int64_t n_idx, float *y);

/* y[i] = act(x[i]) for i < n: the FFN activation `act` (a pi_act, below) as the engine computes
 * it, by the active instruction set's kernel (every ISA gives the same bits). y may be x. */
PI_API int pi_activation(int act, const float *x, float *y, int64_t n);

/* ---- model ------------------------------------------------------------------------------ */
/* Architectures: what each requires beyond the tensors all of them do (docs/FORMAT.md): qwen3
 * and gemma3 the q/k norms, gemma3 also the norms after attention and FFN. The engine applies
 * every optional tensor a model has (biases, q/k norms, post norms, rope_freqs). */
typedef enum { PI_ARCH_LLAMA = 0, PI_ARCH_QWEN2 = 1, PI_ARCH_QWEN3 = 2, PI_ARCH_GEMMA3 = 3 } pi_arch;
#define PI_N_ARCHS 4
/* FFN activations (of the gate: act(gate) * up). GELU_TANH: the tanh approximation of GELU,
 * x / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3))) = 0.5 x (1 + tanh(...)). */
typedef enum { PI_ACT_SILU = 0, PI_ACT_RELU = 1, PI_ACT_GELU_TANH = 2 } pi_act;
#define PI_N_ACTS 3
typedef enum {
    PI_FFN_DENSE = 0,     /* every neuron */
    PI_FFN_SPARSE = 1,    /* predictor -> active ids -> masked gate/up -> AXPY down, one pool
                             job (needs ffn_gate and ffn_up of one type) */
    PI_FFN_THRESHOLD = 2, /* gate dense; |act(gate)| <= threshold dropped -> up (masked, or
                             dense where the model repacked it) -> AXPY, or dense over a plain
                             ffn_down where few neurons are dropped */
} pi_ffn_mode;

typedef struct {
    int32_t arch;            /* pi_arch */
    int32_t ffn_act;         /* pi_act */
    int32_t n_vocab;
    int32_t n_embd;          /* d */
    int32_t n_ff;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;        /* usually n_embd / n_head */
    int32_t n_rot;           /* rotated dims per head (<= head_dim, even) */
    int32_t rope_neox;       /* 0: rotate adjacent pairs (llama), 1: rotate halves (NeoX, qwen2) */
    float rope_freq_base;
    float rope_freq_scale;   /* linear scaling: position * scale */
    float norm_eps;          /* RMSNorm epsilon */
    float attn_scale;        /* softmax(attn_scale * q.k); 0: 1 / sqrt(head_dim) */
    float embd_scale;        /* the token embeddings are multiplied by it (gemma3: sqrt(n_embd)); 0: 1 */
    int32_t n_swa;           /* sliding-window attention: a sliding layer attends to the last n_swa
                                positions (its own included); 0: every layer attends to all */
    int32_t swa_period;      /* with n_swa: layer il slides iff il % swa_period < swa_period - 1
                                (llama.cpp's pattern: the last of each period is global); 0: all */
    float rope_freq_base_swa;  /* with n_swa: the sliding layers' RoPE base and linear scale */
    float rope_freq_scale_swa;
    float final_softcap;     /* logits = final_softcap * tanh(logits / final_softcap); 0: none */
} pi_hparams;

typedef struct pi_model pi_model;

/* A model without weights; tensors are then attached by name, and pi_model_finalize checks the
 * set is complete. The model never frees tensor data (it must outlive the model); it copies the
 * matrices it repacks (pi_model_set_repack). */
PI_API int pi_model_create(const pi_hparams *hp, pi_model **out);
/* Attaches one tensor by its GGUF name ("token_embd.weight", "blk.3.ffn_down_t.weight", ...).
 * data: [n_rows][n_cols] of `type` (1-D tensors: n_rows = 1). Checks the name, the type and the
 * shape against the hyperparameters (docs/FORMAT.md lists them). */
PI_API int pi_model_set_tensor(pi_model *m, const char *name, int type, int64_t n_rows,
                               int64_t n_cols, const void *data);
/* Per-layer FFN thresholds: thr [n_layer] (a predictor logit threshold in sparse mode, an
 * |act(gate)| threshold in threshold mode). Copied. Default: 0 for every layer. */
PI_API int pi_model_set_thresholds(pi_model *m, const float *thr, int32_t n_layer);
/* What pi_model_finalize does with the attached data (pi_repack):
 * PI_REPACK_NONE: every tensor is read in place.
 * PI_REPACK (default): the matrices that only run dense (attention, output, and the FFN matrices
 *   no sparse mode reads) are copied into the rows8 layout, and the 1-D tensors (norms, biases)
 *   copied, into memory the model owns; the attached data of those is then read only during
 *   finalize. Embedding rows come from the repacked output matrix when it is tied.
 * PI_REPACK_RELEASE: as PI_REPACK, and the pages of each copied tensor are dropped from the
 *   process as soon as it is copied (MADV_DONTNEED), so loading never holds the file and its
 *   copy at once. Only for tensors in a read-only shared file mapping. */
typedef enum { PI_REPACK_NONE = 0, PI_REPACK = 1, PI_REPACK_RELEASE = 2 } pi_repack;
PI_API int pi_model_set_repack(pi_model *m, int32_t mode);
/* Checks that every required tensor is present and repacks (see above); after this the model
 * is read-only. */
PI_API int pi_model_finalize(pi_model *m);
/* Bytes of weights the model holds repacked (0 without repacking). */
PI_API int pi_model_repacked_bytes(const pi_model *m, int64_t *bytes);
/* Bit set of the pi_ffn_mode values this model supports (1 << mode): dense always; threshold
 * with ffn_down_t in every layer; sparse with that, predictors, and ffn_gate and ffn_up of one
 * type in every layer. */
PI_API int pi_model_ffn_modes(const pi_model *m, int32_t *modes);
PI_API void pi_model_free(pi_model *m);

/* ---- context: KV cache, buffers and a worker pool for one or more sequences -------------- */
typedef struct pi_context pi_context;

/* All buffers are allocated here, once: no allocation happens while decoding. Several
 * contexts may share one finalized model. n_batch: the most tokens one internal step takes.
 * n_ctx: 1 .. INT32_MAX - 64 (PI_ERR_RANGE outside; PI_ERR_NOMEM when the memory is not there). */
PI_API int pi_context_create(pi_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
                             pi_context **out);
/* A context of n_seq sequences (1 .. 4096), each with its own KV cache of n_ctx positions
 * (pi_context_create: n_seq 1). n_batch: the most tokens, of any sequences, one internal step
 * takes. The memory of a sequence's cache is taken as it is written. */
PI_API int pi_context_create_seqs(pi_model *m, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
                                  int32_t n_seq, pi_context **out);
PI_API void pi_context_free(pi_context *c);
PI_API int pi_context_set_ffn_mode(pi_context *c, int mode);

/* Runs tokens [n_tokens] at positions n_past .. n_past + n_tokens - 1 (the KV cache beyond
 * n_past is overwritten). logits: [n_vocab] for the last token, or [n_tokens][n_vocab] when
 * logits_all. PI_ERR_RANGE when n_past + n_tokens > n_ctx or a token id is out of range. */
PI_API int pi_decode(pi_context *c, const int32_t *tokens, int32_t n_tokens, int32_t n_past,
                     float *logits, int32_t logits_all);
/* Runs the tokens of several sequences in one pass over the weights: token i of sequence seq[i]
 * at position pos[i] (each attends to its own sequence's cache). A sequence's first token here
 * is at a position <= its length so far (pi_context_seq_len; its cache beyond is overwritten),
 * its next ones follow one by one. logits: [n_want][n_vocab], one row per token with want[i]
 * != 0, in order (want NULL: none). A token's logits are those of running its sequence alone.
 * PI_ERR_RANGE for a sequence, position or token out of range or out of order (checked before
 * anything runs), or while the recorder is set. */
PI_API int pi_decode_seqs(pi_context *c, const int32_t *tokens, const int32_t *seq,
                          const int32_t *pos, int32_t n_tokens, const int8_t *want, float *logits);
/* The positions of sequence seq's cache written so far (pi_decode: n_past + n_tokens). */
PI_API int pi_context_seq_len(const pi_context *c, int32_t seq, int32_t *len);

/* Calibration recorder: while set, each pi_decode call writes, for its tokens t < n_tokens and
 * every layer l, the FFN input (after ffn_norm) to ffn_in[t][l][0..d), the gate pre-activation to
 * ffn_gate[t][l][0..n_ff) and the down projection's input act(gate) * up to ffn_h[t][l][0..n_ff).
 * Any buffer may be NULL; all NULL (or n_tokens = 0) turns recording off. A pi_decode call with
 * more tokens than n_tokens fails with PI_ERR_RANGE while recording. In sparse and threshold
 * modes, inactive neurons record gate and h as computed there (0 where not computed). */
PI_API int pi_context_set_recorder(pi_context *c, float *ffn_in, float *ffn_gate, float *ffn_h,
                                   int32_t n_tokens);

typedef struct {
    int64_t tokens;              /* tokens run through the FFNs since the last reset */
    int64_t ffn_neurons;         /* neuron evaluations possible: tokens * n_layer * n_ff */
    int64_t ffn_active;          /* of which were active (computed) */
    int64_t ffn_down_active;     /* of which entered the down projection: every neuron when it
                                    ran dense, else the AXPY's rows (nonzero down input) */
    /* One FFN pass serves a step's tokens (up to 64 of them) and reads each row once for all: */
    int64_t ffn_pass_neurons;    /* n_ff per layer per pass */
    int64_t ffn_pass_active;     /* of which computed for at least one of the pass's tokens */
    int64_t ffn_pass_down;       /* of which entered the down projection of at least one token
                                    (every neuron when some token's ran dense) */
    int64_t ffn_bytes;           /* FFN weight bytes the passes read (predictors, gate, up, down;
                                    each row once per pass) */
} pi_stats;

PI_API int pi_context_stats(const pi_context *c, pi_stats *out);
PI_API int pi_context_reset_stats(pi_context *c);

/* ---- sparse output head (head.c; docs/FORMAT.md "Output preview") ------------------------
 * A file may carry a low-rank preview of the output matrix W [n_vocab][d]: output_preview_a
 * [rank + probe][d] and output_preview_b [n_vocab][rank] (attached by pi_model_set_tensor):
 * z = A x, p = B z[0 .. rank) ~ W x. The sparse head computes p, takes the n_candidates rows of
 * largest p (the rows with p >= the n_candidates-th largest value) and computes their exact
 * logits over W's plain rows; the other rows keep their preview value. When the best exact
 * logit is not at least window + margin * |z[rank ..)| (margin alone without probe rows) above
 * that cut, the full head runs instead (window: how far below the best a logit still matters
 * to sampling, e.g. min-p's -ln(min_p); 0 for greedy alone). */
typedef enum { PI_HEAD_DENSE = 0, PI_HEAD_SPARSE = 1 } pi_head_mode;

/* Enables the sparse head (before pi_model_finalize, which then requires both preview
 * tensors): its candidate count (1 .. n_vocab), fallback margin and window (finite, >= 0).
 * The output matrix then stays in plain rows (not rows8: one row of rows8 is spread over its
 * group's bytes), so the dense head of such a model runs the plain kernel. Without this call
 * the preview tensors are ignored (never read). */
PI_API int pi_model_set_head(pi_model *m, int32_t n_candidates, float margin, float window);
/* Bit set of the pi_head_mode values the model supports (1 << mode): dense always, sparse
 * after pi_model_set_head. */
PI_API int pi_model_head_modes(const pi_model *m, int32_t *modes);
/* Head mode of a context (default dense). The sparse head serves the last token's logits of a
 * pi_decode call without logits_all; logits_all always runs the full head. */
PI_API int pi_context_set_head_mode(pi_context *c, int mode);
/* Since the last pi_context_reset_stats: sparse head steps, of which fell back to the full
 * head, and the exact rows computed in the steps that did not. Any pointer may be NULL. */
PI_API int pi_context_head_stats(const pi_context *c, int64_t *steps, int64_t *fallbacks,
                                 int64_t *exact_rows);

/* pi_matvec_masked that leaves the other rows alone: y[idx[k]] = W[idx[k]] . x for k < n_idx;
 * every other y[i] keeps its value. Same arguments and checks. */
PI_API int pi_matvec_rows(pi_pool *pool, int type, const void *W, int64_t n_rows, int64_t n_cols,
                          const float *x, const int32_t *idx, int64_t n_idx, float *y);

/* ---- hidden states and saved state (API 8) ------------------------------------------------ */
/* pi_decode that gives, instead of logits, the final normed hidden states (after output_norm:
 * what the output head reads, llama.cpp's embeddings) of every token: hidden [n_tokens][n_embd].
 * The same checks as pi_decode; the KV cache is written as pi_decode writes it. */
PI_API int pi_decode_hidden(pi_context *c, const int32_t *tokens, int32_t n_tokens, int32_t n_past,
                            float *hidden);

/* The KV cache of positions 0 .. n_tokens - 1 as one buffer: a 16-byte header (magic, n_layer,
 * n_head_kv * head_dim, n_tokens; int32 each), then per layer the keys [n_head_kv][n_tokens]
 * [head_dim] and the values [n_head_kv * head_dim][n_tokens], f16. n_tokens: 0 .. n_ctx. */
PI_API int pi_context_state_size(const pi_context *c, int32_t n_tokens, int64_t *bytes);
/* Copies that state into buf; bytes must be pi_context_state_size's (PI_ERR_SHAPE otherwise). */
PI_API int pi_context_get_state(const pi_context *c, int32_t n_tokens, void *buf, int64_t bytes);
/* Writes a state pi_context_get_state made (of a context of the same model's shape) back into
 * positions 0 .. n_tokens - 1; PI_ERR_SHAPE when bytes or the header disagree with this context
 * (nothing is written then). Positions from n_tokens on keep their contents. */
PI_API int pi_context_set_state(pi_context *c, int32_t n_tokens, const void *buf, int64_t bytes);

#ifdef __cplusplus
}
#endif
#endif /* PI_H */
