/* model.c - the tensor table: weights attached by GGUF name, checked against the hyperparameters.
 * No file I/O: the caller (pi_backend/model.py) maps the GGUF and hands over pointers. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "head.h"
#include "model.h"

/* What a tensor name may hold. Shapes are symbolic: resolved from the hyperparameters. */
enum dim { D_ONE, D_EMBD, D_FF, D_VOCAB, D_Q, D_KV, D_RANK, D_ROT2, D_HEAD, D_HEAD_RANK };
enum kind { K_NORM, K_MATRIX, K_BIAS, K_VECTOR }; /* all but K_MATRIX: f32 vectors */
/* Which architectures require a tensor (a bit set): every one (R_ALL), those with q/k norms,
 * those with norms after attention and FFN; 0: optional everywhere. */
enum need { R_ALL = 1, R_QK_NORM = 2, R_POST_NORM = 4 };

/* The architectures (pi_arch): name, and the requirement bits their models meet. */
static const struct {
    const char *name;
    unsigned needs;
} arch_table[PI_N_ARCHS] = {
    [PI_ARCH_LLAMA] = {"llama", R_ALL},
    [PI_ARCH_QWEN2] = {"qwen2", R_ALL},
    [PI_ARCH_QWEN3] = {"qwen3", R_ALL | R_QK_NORM},
    [PI_ARCH_GEMMA3] = {"gemma3", R_ALL | R_QK_NORM | R_POST_NORM},
};

typedef struct {
    const char *suffix;   /* after "blk.N." (per-layer) or the whole name (global) */
    size_t offset;        /* into pi_layer (per-layer) or pi_model (global) */
    enum kind kind;
    enum dim rows, cols;
    unsigned need;        /* enum need: required where the architecture's needs meet it */
} tensor_spec;

#define L(field) offsetof(pi_layer, field)
#define G(field) offsetof(pi_model, field)

static const tensor_spec layer_specs[] = {
    {"attn_norm.weight", L(attn_norm), K_NORM, D_ONE, D_EMBD, R_ALL},
    {"attn_q.weight", L(wq), K_MATRIX, D_Q, D_EMBD, R_ALL},
    {"attn_k.weight", L(wk), K_MATRIX, D_KV, D_EMBD, R_ALL},
    {"attn_v.weight", L(wv), K_MATRIX, D_KV, D_EMBD, R_ALL},
    {"attn_q.bias", L(bq), K_BIAS, D_ONE, D_Q, 0},
    {"attn_k.bias", L(bk), K_BIAS, D_ONE, D_KV, 0},
    {"attn_v.bias", L(bv), K_BIAS, D_ONE, D_KV, 0},
    {"attn_q_norm.weight", L(q_norm), K_NORM, D_ONE, D_HEAD, R_QK_NORM},
    {"attn_k_norm.weight", L(k_norm), K_NORM, D_ONE, D_HEAD, R_QK_NORM},
    {"attn_output.weight", L(wo), K_MATRIX, D_EMBD, D_Q, R_ALL},
    {"post_attention_norm.weight", L(post_attn_norm), K_NORM, D_ONE, D_EMBD, R_POST_NORM},
    {"ffn_norm.weight", L(ffn_norm), K_NORM, D_ONE, D_EMBD, R_ALL},
    {"ffn_gate.weight", L(gate), K_MATRIX, D_FF, D_EMBD, R_ALL},
    {"ffn_up.weight", L(up), K_MATRIX, D_FF, D_EMBD, R_ALL},
    {"ffn_down.weight", L(down), K_MATRIX, D_EMBD, D_FF, 0}, /* one of ffn_down, ffn_down_t */
    {"ffn_down_t.weight", L(down_t), K_MATRIX, D_FF, D_EMBD, 0},
    {"fc1.weight", L(fc1), K_MATRIX, D_RANK, D_EMBD, 0},
    {"fc2.weight", L(fc2), K_MATRIX, D_FF, D_RANK, 0},
    {"post_ffw_norm.weight", L(post_ffn_norm), K_NORM, D_ONE, D_EMBD, R_POST_NORM},
};

static const tensor_spec global_specs[] = {
    {"token_embd.weight", G(tok_embd), K_MATRIX, D_VOCAB, D_EMBD, R_ALL},
    {"output_norm.weight", G(output_norm), K_NORM, D_ONE, D_EMBD, R_ALL},
    {"output.weight", G(output), K_MATRIX, D_VOCAB, D_EMBD, 0},
    {"rope_freqs.weight", G(rope_freqs), K_VECTOR, D_ONE, D_ROT2, 0},
    {"output_preview_a.weight", G(preview_a), K_MATRIX, D_HEAD_RANK, D_EMBD, 0},
    {"output_preview_b.weight", G(preview_b), K_MATRIX, D_VOCAB, D_HEAD_RANK, 0},
};

#define N_LAYER_SPECS (sizeof layer_specs / sizeof layer_specs[0])
#define N_GLOBAL_SPECS (sizeof global_specs / sizeof global_specs[0])

static int64_t dim_value(const pi_hparams *hp, enum dim d) {
    switch (d) {
    case D_ONE: return 1;
    case D_EMBD: return hp->n_embd;
    case D_FF: return hp->n_ff;
    case D_VOCAB: return hp->n_vocab;
    case D_Q: return (int64_t)hp->n_head * hp->head_dim;
    case D_KV: return (int64_t)hp->n_head_kv * hp->head_dim;
    case D_RANK: return -1; /* free: checked for consistency between fc1 and fc2 */
    case D_ROT2: return hp->n_rot / 2;
    case D_HEAD: return hp->head_dim;
    case D_HEAD_RANK: return -1; /* free: checked between the two preview factors (head.c) */
    }
    return 0;
}

static int check_hparams(const pi_hparams *hp) {
    if (hp->arch < 0 || hp->arch >= PI_N_ARCHS)
        return pi_fail(PI_ERR_RANGE, "pi_model_create: unknown architecture id %d", hp->arch);
    if (hp->ffn_act < 0 || hp->ffn_act >= PI_N_ACTS)
        return pi_fail(PI_ERR_RANGE, "pi_model_create: unknown FFN activation id %d", hp->ffn_act);
    /* Upper bounds far above any model of this kind, low enough that no size product overflows
     * and no table is allocated before a shape check can fail (pi_backend/gguf_check.py has the
     * same bounds for the metadata). */
    const struct { const char *name; int32_t v, max; } pos[] = {
        {"n_vocab", hp->n_vocab, 1 << 24}, {"n_embd", hp->n_embd, 1 << 17},
        {"n_ff", hp->n_ff, 1 << 20}, {"n_layer", hp->n_layer, 4096},
        {"n_head", hp->n_head, 4096}, {"n_head_kv", hp->n_head_kv, 4096},
        {"head_dim", hp->head_dim, 4096}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v <= 0 || pos[i].v > pos[i].max)
            return pi_fail(PI_ERR_SHAPE, "pi_model_create: %s = %d must be in 1..%d", pos[i].name,
                           pos[i].v, pos[i].max);
    if (hp->n_head % hp->n_head_kv != 0)
        return pi_fail(PI_ERR_SHAPE, "pi_model_create: n_head = %d is not a multiple of n_head_kv = %d",
                       hp->n_head, hp->n_head_kv);
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2)
        return pi_fail(PI_ERR_SHAPE, "pi_model_create: n_rot = %d must be even and in 1..head_dim = %d",
                       hp->n_rot, hp->head_dim);
    /* the floats that must be finite and positive, and those for which 0 means a default */
    const struct { const char *name; float v; int zero_ok; } fl[] = {
        {"rope_freq_base", hp->rope_freq_base, 0}, {"rope_freq_scale", hp->rope_freq_scale, 0},
        {"norm_eps", hp->norm_eps, 0}, {"attn_scale", hp->attn_scale, 1},
        {"embd_scale", hp->embd_scale, 1}, {"final_softcap", hp->final_softcap, 1},
        {"rope_freq_base_swa", hp->rope_freq_base_swa, hp->n_swa == 0},
        {"rope_freq_scale_swa", hp->rope_freq_scale_swa, hp->n_swa == 0}};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        if (!isfinite(fl[i].v) || fl[i].v < 0 || (fl[i].v == 0 && !fl[i].zero_ok))
            return pi_fail(PI_ERR_RANGE, "pi_model_create: %s = %g must be finite and %s", fl[i].name,
                           (double)fl[i].v, fl[i].zero_ok ? "positive, or 0" : "positive");
    if (hp->n_swa < 0 || hp->swa_period < 0)
        return pi_fail(PI_ERR_RANGE, "pi_model_create: n_swa = %d and swa_period = %d must be at least 0",
                       hp->n_swa, hp->swa_period);
    return PI_OK;
}

int pi_model_create(const pi_hparams *hp, pi_model **out) {
    PI_CHECK_NULL(hp);
    PI_CHECK_NULL(out);
    *out = NULL;
    int rc = check_hparams(hp);
    if (rc) return rc;
    pi_model *m = calloc(1, sizeof *m);
    if (m) m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (m) m->thresholds = calloc((size_t)hp->n_layer, sizeof *m->thresholds);
    if (!m || !m->layers || !m->thresholds) {
        pi_model_free(m);
        return pi_fail(PI_ERR_NOMEM, "pi_model_create: out of memory");
    }
    m->hp = *hp;
    if (m->hp.attn_scale == 0) m->hp.attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    if (m->hp.embd_scale == 0) m->hp.embd_scale = 1.0f;
    m->repack = PI_REPACK;
    *out = m;
    return pi_ok();
}

void pi_model_free(pi_model *m) {
    if (!m) return;
    if (m->packed_mem) pi_buffer_free(m->packed_mem, m->packed_bytes);
    if (m->small_mem) pi_buffer_free(m->small_mem, m->small_bytes);
    free(m->layers);
    free(m->thresholds);
    free(m);
}

/* Finds the spec for `name`; *layer is -1 for a global tensor. */
static const tensor_spec *find_spec(const pi_model *m, const char *name, int *layer) {
    *layer = -1;
    for (size_t i = 0; i < N_GLOBAL_SPECS; i++)
        if (strcmp(name, global_specs[i].suffix) == 0) return &global_specs[i];
    int n = -1, consumed = 0;
    if (sscanf(name, "blk.%d.%n", &n, &consumed) != 1 || consumed == 0) return NULL;
    if (n < 0 || n >= m->hp.n_layer) return NULL;
    *layer = n;
    for (size_t i = 0; i < N_LAYER_SPECS; i++)
        if (strcmp(name + consumed, layer_specs[i].suffix) == 0) return &layer_specs[i];
    return NULL;
}

static int check_type(const char *name, enum kind kind, int type, int64_t n_cols) {
    const pi_type_traits *t = pi_type_traits_of(type);
    if (kind != K_MATRIX) {
        if (type != PI_TYPE_F32)
            return pi_fail(PI_ERR_TYPE, "tensor %s: type %s, expected F32", name, pi_type_name(type));
        return PI_OK;
    }
    if (!t) return pi_fail(PI_ERR_TYPE, "tensor %s: unsupported ggml type id %d", name, type);
    if (!t->weight)
        return pi_fail(PI_ERR_TYPE, "tensor %s: type %s is not supported for weights", name, t->name);
    if (n_cols % t->block_elems != 0)
        return pi_fail(PI_ERR_SHAPE, "tensor %s: row length %lld is not a multiple of the %s block size",
                       name, (long long)n_cols, t->name);
    return PI_OK;
}

int pi_model_set_tensor(pi_model *m, const char *name, int type, int64_t n_rows, int64_t n_cols,
                        const void *data) {
    PI_CHECK_NULL(m);
    PI_CHECK_NULL(name);
    PI_CHECK_NULL(data);
    if (m->finalized)
        return pi_fail(PI_ERR_RANGE, "pi_model_set_tensor: model is finalized; cannot set %s", name);
    int layer;
    const tensor_spec *spec = find_spec(m, name, &layer);
    if (!spec) return pi_fail(PI_ERR_RANGE, "unknown tensor name '%s'", name);
    int rc = check_type(name, spec->kind, type, n_cols);
    if (rc) return rc;
    int64_t want_rows = dim_value(&m->hp, spec->rows), want_cols = dim_value(&m->hp, spec->cols);
    if ((want_rows >= 0 && n_rows != want_rows) || (want_cols >= 0 && n_cols != want_cols) ||
        n_rows <= 0 || n_cols <= 0)
        return pi_fail(PI_ERR_SHAPE, "tensor %s: shape [%lld][%lld], expected [%lld][%lld]", name,
                       (long long)n_rows, (long long)n_cols, (long long)want_rows,
                       (long long)want_cols);
    char *base = layer < 0 ? (char *)m : (char *)&m->layers[layer];
    pi_weight *w = (pi_weight *)(base + spec->offset);
    *w = (pi_weight){.type = type, .n_rows = n_rows, .n_cols = n_cols, .data = data};
    return pi_ok();
}

int pi_model_set_thresholds(pi_model *m, const float *thr, int32_t n_layer) {
    PI_CHECK_NULL(m);
    PI_CHECK_NULL(thr);
    if (n_layer != m->hp.n_layer)
        return pi_fail(PI_ERR_SHAPE, "pi_model_set_thresholds: %d thresholds for %d layers", n_layer,
                       m->hp.n_layer);
    for (int i = 0; i < n_layer; i++)
        if (thr[i] != thr[i])
            return pi_fail(PI_ERR_RANGE, "pi_model_set_thresholds: threshold of layer %d is NaN", i);
    memcpy(m->thresholds, thr, (size_t)n_layer * sizeof *thr);
    return pi_ok();
}

/* Checks that the tensors of a spec table over `base` (layer `layer`, or -1: the globals) that
 * the model's architecture requires are present. */
static int require_all(const pi_model *m, const tensor_spec *specs, size_t n_specs, char *base,
                       int layer) {
    const unsigned needs = arch_table[m->hp.arch].needs;
    for (size_t i = 0; i < n_specs; i++) {
        if (!(specs[i].need & needs) || ((pi_weight *)(base + specs[i].offset))->data) continue;
        char prefix[24] = "";
        if (layer >= 0) snprintf(prefix, sizeof prefix, "blk.%d.", layer);
        return pi_fail(PI_ERR_SHAPE, "model is missing tensor %s%s (%s requires it)", prefix,
                       specs[i].suffix, arch_table[m->hp.arch].name);
    }
    return PI_OK;
}

/* The matrices only the dense kernels read, i.e. those no sparse mode reads row by row: attention,
 * output, predictors, the plain ffn_down, and gate and up unless predictors choose their rows.
 * (Threshold mode computes up dense when it is repacked: a masked product over plain rows only
 * pays above about 50% sparsity, far beyond what a SwiGLU model keeps its quality at.)
 * Fills list, returns the count. */
#define DENSE_ONLY_PER_LAYER 9 /* at most: the 7 always listed, gate and up */

static int dense_only(pi_model *m, pi_weight **list) {
    int n = 0;
    for (int i = 0; i < m->hp.n_layer; i++) {
        pi_layer *l = &m->layers[i];
        pi_weight *always[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->down, &l->fc1, &l->fc2};
        _Static_assert(sizeof always / sizeof always[0] + 2 == DENSE_ONLY_PER_LAYER, "list size");
        for (size_t k = 0; k < sizeof always / sizeof always[0]; k++) list[n++] = always[k];
        if (!l->fc1.data) {
            list[n++] = &l->gate;
            list[n++] = &l->up;
        }
    }
    if (m->head_candidates) { /* the sparse head: the output's rows are read one by one */
        list[n++] = &m->preview_a;
        list[n++] = &m->preview_b;
    } else {
        list[n++] = m->output.data ? &m->output : &m->tok_embd;
    }
    return n;
}

static int packable(const pi_weight *w) {
    return w->data && w->n_rows >= PI_ROWS8 && pi_type_is_rows8(pi_type_traits_of(w->type));
}

/* A tensor's share of a model buffer (packed matrices, the norms): its bytes, 64-byte aligned. */
static size_t share(size_t bytes) { return (bytes + 63) / 64 * 64; }
static size_t weight_share(const pi_weight *w) { return share(pi_weight_bytes(w)); }

/* Frees the packed copies: every matrix reads its attached data again. */
static void drop_packed(pi_model *m) {
    for (size_t i = 0; i < N_GLOBAL_SPECS; i++)
        ((pi_weight *)((char *)m + global_specs[i].offset))->packed = NULL;
    for (int l = 0; l < m->hp.n_layer; l++)
        for (size_t i = 0; i < N_LAYER_SPECS; i++)
            ((pi_weight *)((char *)&m->layers[l] + layer_specs[i].offset))->packed = NULL;
    if (m->packed_mem) pi_buffer_free(m->packed_mem, m->packed_bytes);
    m->packed_mem = NULL;
    m->packed_bytes = 0;
}

/* Repacks w into out in slices of whole groups of about REPACK_SLICE bytes (the rows8 layout
 * of a slice of whole groups is that slice of the layout), dropping each slice's source pages
 * once copied when `release`: a large matrix (the output) is never in memory twice. */
#define REPACK_SLICE ((size_t)1 << 20)

static int repack_one(const pi_weight *w, uint8_t *out, int release) {
    const size_t row_bytes = pi_weight_row_bytes(w);
    int64_t step = (int64_t)(REPACK_SLICE / row_bytes) / PI_ROWS8 * PI_ROWS8;
    if (step < PI_ROWS8) step = PI_ROWS8;
    const uint8_t *src = w->data;
    for (int64_t r0 = 0; r0 < w->n_rows; r0 += step) {
        const int64_t n = w->n_rows - r0 < step ? w->n_rows - r0 : step;
        const size_t off = (size_t)r0 * row_bytes;
        const int rc = pi_repack_rows8(w->type, src + off, n, w->n_cols, out + off);
        if (rc) return rc;
        if (release) pi_release_pages(src + off, (size_t)n * row_bytes);
    }
    return PI_OK;
}

/* Copies the dense-only matrices into one buffer in the rows8 layout. */
static int repack_dense(pi_model *m) {
    pi_weight **list = malloc(((size_t)m->hp.n_layer * DENSE_ONLY_PER_LAYER + 3) * sizeof *list);
    if (!list) return pi_fail(PI_ERR_NOMEM, "pi_model_finalize: out of memory");
    const int n = dense_only(m, list);
    size_t total = 0;
    for (int k = 0; k < n; k++)
        if (packable(list[k])) total += weight_share(list[k]);
    int rc = PI_OK;
    if (total == 0) goto done;
    if ((rc = pi_buffer_alloc(total, &m->packed_mem))) {
        rc = pi_fail(PI_ERR_NOMEM, "pi_model_finalize: cannot allocate %zu bytes to repack the weights", total);
        goto done;
    }
    m->packed_bytes = total;
    uint8_t *p = m->packed_mem;
    for (int k = 0; k < n; k++) {
        pi_weight *w = list[k];
        if (!packable(w)) continue;
        if ((rc = repack_one(w, p, m->repack == PI_REPACK_RELEASE))) goto done;
        w->packed = p;
        p += weight_share(w);
    }
done:
    if (rc) drop_packed(m); /* leave the model as it was */
    free(list);
    return rc;
}

/* Appends the present 1-D tensors (norms, biases) of one spec table over `base` to list (when
 * not NULL) from index n; returns the new count. */
static int add_small(const tensor_spec *specs, size_t n_specs, char *base, pi_weight **list, int n) {
    for (size_t i = 0; i < n_specs; i++) {
        pi_weight *w = (pi_weight *)(base + specs[i].offset);
        if (specs[i].kind == K_MATRIX || !w->data) continue;
        if (list) list[n] = w;
        n++;
    }
    return n;
}

static int small_tensors(pi_model *m, pi_weight **list) {
    int n = add_small(global_specs, N_GLOBAL_SPECS, (char *)m, list, 0);
    for (int l = 0; l < m->hp.n_layer; l++)
        n = add_small(layer_specs, N_LAYER_SPECS, (char *)&m->layers[l], list, n);
    return n;
}

/* Copies the norms and biases into one model-owned buffer: a few KB each, scattered through the
 * file, where every read would map a whole fault-around window of the file. */
static int copy_small(pi_model *m) {
    const int n = small_tensors(m, NULL);
    if (n == 0) return PI_OK;
    pi_weight **list = malloc((size_t)n * sizeof *list);
    if (!list) return pi_fail(PI_ERR_NOMEM, "pi_model_finalize: out of memory");
    small_tensors(m, list);
    size_t total = 0;
    for (int k = 0; k < n; k++) total += weight_share(list[k]);
    int rc = pi_buffer_alloc(total, &m->small_mem);
    if (rc) {
        free(list);
        return pi_fail(PI_ERR_NOMEM, "pi_model_finalize: cannot allocate %zu bytes for the norms", total);
    }
    m->small_bytes = total;
    uint8_t *p = m->small_mem;
    for (int k = 0; k < n; k++) {
        const size_t bytes = pi_weight_bytes(list[k]);
        memcpy(p, list[k]->data, bytes);
        if (m->repack == PI_REPACK_RELEASE) pi_release_pages(list[k]->data, bytes);
        list[k]->data = p;
        p += share(bytes);
    }
    free(list);
    return PI_OK;
}

int pi_model_finalize(pi_model *m) {
    PI_CHECK_NULL(m);
    if (m->finalized) return pi_ok();
    int rc;
    if ((rc = require_all(m, global_specs, N_GLOBAL_SPECS, (char *)m, -1))) return rc;
    int n_pred = 0;
    m->max_rank = 0;
    for (int i = 0; i < m->hp.n_layer; i++) {
        const pi_layer *l = &m->layers[i];
        if ((rc = require_all(m, layer_specs, N_LAYER_SPECS, (char *)&m->layers[i], i))) return rc;
        if (!l->down.data && !l->down_t.data)
            return pi_fail(PI_ERR_SHAPE, "model is missing tensor blk.%d.ffn_down.weight (or ffn_down_t)", i);
        if (!!l->fc1.data != !!l->fc2.data)
            return pi_fail(PI_ERR_SHAPE, "layer %d has only one of the predictor tensors fc1/fc2", i);
        if (l->fc1.data) {
            if (l->fc2.n_cols != l->fc1.n_rows)
                return pi_fail(PI_ERR_SHAPE, "layer %d: predictor fc2 takes %lld inputs but fc1 has rank %lld",
                               i, (long long)l->fc2.n_cols, (long long)l->fc1.n_rows);
            if (l->fc1.n_rows > m->max_rank) m->max_rank = (int32_t)l->fc1.n_rows;
            n_pred++;
        }
    }
    if (n_pred != 0 && n_pred != m->hp.n_layer)
        return pi_fail(PI_ERR_SHAPE, "predictors present in %d of %d layers; need all or none", n_pred,
                       m->hp.n_layer);
    if ((rc = pi_head_check(m))) return rc;
    if (m->repack != PI_REPACK_NONE && ((rc = repack_dense(m)) || (rc = copy_small(m)))) {
        drop_packed(m); /* a failed copy of the norms leaves the model as it was, too */
        return rc;
    }
    m->finalized = 1;
    return pi_ok();
}

int pi_model_set_repack(pi_model *m, int32_t mode) {
    PI_CHECK_NULL(m);
    if (m->finalized) return pi_fail(PI_ERR_RANGE, "pi_model_set_repack: model is finalized");
    if (mode < PI_REPACK_NONE || mode > PI_REPACK_RELEASE)
        return pi_fail(PI_ERR_RANGE, "pi_model_set_repack: unknown mode %d", mode);
    m->repack = mode;
    return pi_ok();
}

int pi_model_repacked_bytes(const pi_model *m, int64_t *bytes) {
    PI_CHECK_NULL(m);
    PI_CHECK_NULL(bytes);
    *bytes = (int64_t)m->packed_bytes;
    return pi_ok();
}

int pi_model_ffn_modes(const pi_model *m, int32_t *modes) {
    PI_CHECK_NULL(m);
    PI_CHECK_NULL(modes);
    if (!m->finalized) return pi_fail(PI_ERR_RANGE, "pi_model_ffn_modes: model is not finalized");
    int split = 1, same_type = 1; /* the sparse job reads gate and up rows of one type */
    for (int i = 0; i < m->hp.n_layer; i++) {
        split &= m->layers[i].down_t.data != NULL;
        same_type &= m->layers[i].gate.type == m->layers[i].up.type;
    }
    *modes = 1 << PI_FFN_DENSE;
    if (split) *modes |= 1 << PI_FFN_THRESHOLD;
    if (split && same_type && m->max_rank > 0) *modes |= 1 << PI_FFN_SPARSE;
    return pi_ok();
}
