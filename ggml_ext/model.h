/* model.h - the model and context structures shared by model.c and forward.c (internal). */
#ifndef PI_MODEL_H
#define PI_MODEL_H

#include <stddef.h>

#include "pi.h"
#include "types.h"

/* A weight in place: data is [n_rows][n_cols] of `type`; NULL data means absent. */
typedef struct {
    int type;
    int64_t n_rows, n_cols;
    const void *data;
    const void *packed;                  /* the same matrix in the rows8 layout (model-owned), or NULL */
} pi_weight;

typedef struct {
    pi_weight attn_norm;                 /* [d] f32 */
    pi_weight wq, wk, wv;                /* [n_head*hd][d], [n_head_kv*hd][d], [n_head_kv*hd][d] */
    pi_weight bq, bk, bv;                /* optional biases, f32, one row of the sizes above */
    pi_weight q_norm, k_norm;            /* [hd] f32: RMSNorm of each head of q and k, before RoPE */
    pi_weight wo;                        /* [d][n_head*hd] */
    pi_weight post_attn_norm;            /* [d] f32: RMSNorm of the attention output (gemma3) */
    pi_weight ffn_norm;                  /* [d] f32 */
    pi_weight gate, up;                  /* [n_ff][d]: one row per neuron */
    pi_weight down;                      /* [d][n_ff]: plain llama.cpp layout (dense only) */
    pi_weight down_t;                    /* [n_ff][d]: down transposed, one row per neuron */
    pi_weight fc1;                       /* predictor [rank][d] */
    pi_weight fc2;                       /* predictor [n_ff][rank] */
    pi_weight post_ffn_norm;             /* [d] f32: RMSNorm of the FFN output (gemma3) */
} pi_layer;

struct pi_model {
    pi_hparams hp;
    pi_weight tok_embd;                  /* [n_vocab][d] */
    pi_weight output_norm;               /* [d] f32 */
    pi_weight output;                    /* [n_vocab][d]; absent when tied to tok_embd */
    pi_weight rope_freqs;                /* [n_rot/2] f32 RoPE frequency divisors (llama 3), or absent */
    pi_weight preview_a;                 /* output preview [head_rank][d] (head.c), optional */
    pi_weight preview_b;                 /* output preview [n_vocab][head_rank] */
    int32_t head_candidates;             /* the preview's candidate count (pi_model_set_head) */
    float head_margin;                   /* its fallback margin (per unit of probe length) */
    float head_window;                   /* and window (logits) */
    pi_layer *layers;                    /* [n_layer] */
    float *thresholds;                   /* [n_layer] */
    int32_t max_rank;                    /* largest predictor rank (0: no predictors) */
    int repack;                          /* pi_repack, from pi_model_set_repack */
    void *packed_mem;                    /* every packed matrix, one buffer */
    size_t packed_bytes;
    void *small_mem;                     /* copies of the 1-D tensors (norms, biases), one buffer */
    size_t small_bytes;
    int finalized;
};

/* Whether layer il attends through the sliding window (pi_hparams.n_swa, swa_period). */
static inline int pi_layer_slides(const pi_hparams *hp, int il) {
    return hp->n_swa > 0 && (hp->swa_period == 0 || il % hp->swa_period < hp->swa_period - 1);
}

/* Bytes of one row of a weight, and of its whole (present) data. */
static inline size_t pi_weight_row_bytes(const pi_weight *w) {
    return (size_t)pi_type_row_bytes(pi_type_traits_of(w->type), w->n_cols);
}

static inline size_t pi_weight_bytes(const pi_weight *w) { return (size_t)w->n_rows * pi_weight_row_bytes(w); }

/* The output projection: `output`, or `tok_embd` when tied. */
static inline const pi_weight *pi_model_output(const pi_model *m) {
    return m->output.data ? &m->output : &m->tok_embd;
}

#endif /* PI_MODEL_H */
