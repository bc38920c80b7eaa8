/* head.c - the sparse output head: a low-rank preview picks the output rows a token needs.
 *
 * One step (pi_head_logits), for the normed final hidden state x [d]:
 *   z = A x                     A = output_preview_a [rank + probe][d]
 *   p = B z[0 .. rank)          B = output_preview_b [n_vocab][rank]  (the logits buffer)
 *   scale = |z[rank ..)|        the next `probe` whitened directions: how much of x the preview
 *                               misses (1 without probe rows)
 *   cut = the N-th largest p    sampled threshold, the SIMD select kernel, quickselect: no sort
 *   exact logits W x of the candidates (pi_matvec_rows over W's plain rows: a model with the
 *     sparse head keeps its output matrix plain, since one row of the rows8 layout is spread
 *     over its whole group's bytes)
 *   fallback: when the best exact logit is not at least window + margin * scale above cut, the
 *     full head runs (the preview's error grows with the part of x outside its subspace; the
 *     window keeps the logits sampling still draws from, those near the best, exact).
 * Every row not computed keeps its preview value p, so sampling sees a sane tail.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "head.h"
#include "kernels.h"

/* One value of p in SAMPLE_STEP goes into the sample that places the select threshold. */
#define SAMPLE_STEP 16

struct pi_head {
    const pi_model *m;
    float *z;           /* [rank + probe] the preview's hidden vector */
    float *sample;      /* [n_vocab / SAMPLE_STEP + 1] */
    float *work;        /* [n_vocab] the values above the sampled threshold, reordered */
    int32_t *idx;       /* [n_vocab] candidate rows */
    int64_t steps, fallbacks, exact_rows;
};

/* ---- model side ---------------------------------------------------------------------------- */

int pi_model_set_head(pi_model *m, int32_t n_candidates, float margin, float window) {
    PI_CHECK_NULL(m);
    if (m->finalized) return pi_fail(PI_ERR_RANGE, "pi_model_set_head: model is finalized");
    if (n_candidates <= 0 || n_candidates > m->hp.n_vocab)
        return pi_fail(PI_ERR_RANGE, "pi_model_set_head: n_candidates = %d must be in 1..n_vocab = %d",
                       n_candidates, m->hp.n_vocab);
    if (!isfinite(margin) || margin < 0)
        return pi_fail(PI_ERR_RANGE, "pi_model_set_head: margin = %g must be finite and >= 0", (double)margin);
    if (!isfinite(window) || window < 0)
        return pi_fail(PI_ERR_RANGE, "pi_model_set_head: window = %g must be finite and >= 0", (double)window);
    m->head_candidates = n_candidates;
    m->head_margin = margin;
    m->head_window = window;
    return pi_ok();
}

int pi_head_check(const pi_model *m) {
    const pi_weight *a = &m->preview_a, *b = &m->preview_b;
    if (!a->data && !b->data && !m->head_candidates) return PI_OK;
    if (!a->data || !b->data)
        return pi_fail(PI_ERR_SHAPE, "model has %s of the preview tensors output_preview_a/b%s",
                       a->data || b->data ? "only one" : "neither",
                       m->head_candidates ? " but the sparse head is enabled (pi_model_set_head)" : "");
    if (a->n_rows < b->n_cols)
        return pi_fail(PI_ERR_SHAPE, "output_preview_b takes %lld inputs but output_preview_a has only %lld rows",
                       (long long)b->n_cols, (long long)a->n_rows);
    return PI_OK;
}

int pi_model_head_modes(const pi_model *m, int32_t *modes) {
    PI_CHECK_NULL(m);
    PI_CHECK_NULL(modes);
    if (!m->finalized) return pi_fail(PI_ERR_RANGE, "pi_model_head_modes: model is not finalized");
    *modes = 1 << PI_HEAD_DENSE;
    if (m->head_candidates) *modes |= 1 << PI_HEAD_SPARSE;
    return pi_ok();
}

/* ---- context side -------------------------------------------------------------------------- */

int pi_head_create(const pi_model *m, pi_head **out) {
    *out = NULL;
    const int64_t V = m->hp.n_vocab;
    pi_head *h = calloc(1, sizeof *h);
    if (!h) return pi_fail(PI_ERR_NOMEM, "pi_context_set_head_mode: out of memory");
    h->m = m;
    h->z = malloc((size_t)m->preview_a.n_rows * sizeof *h->z);
    h->sample = malloc((size_t)(V / SAMPLE_STEP + 1) * sizeof *h->sample);
    h->work = malloc((size_t)V * sizeof *h->work);
    h->idx = malloc((size_t)V * sizeof *h->idx);
    if (!h->z || !h->sample || !h->work || !h->idx) {
        pi_head_free(h);
        return pi_fail(PI_ERR_NOMEM, "pi_context_set_head_mode: out of memory");
    }
    *out = h;
    return PI_OK;
}

void pi_head_free(pi_head *h) {
    if (!h) return;
    free(h->z);
    free(h->sample);
    free(h->work);
    free(h->idx);
    free(h);
}

void pi_head_stats(const pi_head *h, int64_t *steps, int64_t *fallbacks, int64_t *exact_rows) {
    if (steps) *steps = h ? h->steps : 0;
    if (fallbacks) *fallbacks = h ? h->fallbacks : 0;
    if (exact_rows) *exact_rows = h ? h->exact_rows : 0;
}

void pi_head_reset_stats(pi_head *h) {
    if (h) h->steps = h->fallbacks = h->exact_rows = 0;
}

/* ---- one step ------------------------------------------------------------------------------ */

/* y = W x, over the repacked copy when the model made one. */
static int weight_matvec(pi_pool *pool, const pi_weight *w, const float *x, float *y) {
    if (w->packed) return pi_matmat_rows8(pool, w->type, w->packed, w->n_rows, w->n_cols, x, 1, y, w->n_rows);
    return pi_matvec(pool, w->type, w->data, w->n_rows, w->n_cols, x, y);
}

static void swap_f(float *v, int64_t i, int64_t j) {
    const float t = v[i];
    v[i] = v[j];
    v[j] = t;
}

/* The k-th largest (k from 0) of v[0 .. n): quickselect with a three-way partition (ties and
 * NaNs end in the middle part, so every round shrinks the range); v is reordered. */
static float kth_largest(float *v, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const float a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi];
        const float pivot = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
        int64_t lt = lo, i = lo, gt = hi; /* [lo, lt) > pivot, [lt, i) == pivot, (gt, hi] < pivot */
        while (i <= gt) {
            if (v[i] > pivot) swap_f(v, lt++, i++);
            else if (v[i] < pivot) swap_f(v, i, gt--);
            else i++;
        }
        if (k < lt) hi = lt - 1;
        else if (k > gt) lo = gt + 1;
        else return v[k];
    }
    return v[lo];
}

/* The candidates: idx[0 .. return) = the rows with p >= *cut, *cut = the N-th largest p. A
 * sample of p places a threshold with about 2N values above it; the SIMD select kernel takes
 * those, and a quickselect over them finds the cut (all of p when the sample guessed too high). */
static int64_t top_candidates(pi_head *h, const float *p, int64_t N, float *cut) {
    const int64_t V = h->m->hp.n_vocab;
    int64_t ns = 0;
    for (int64_t i = 0; i < V; i += SAMPLE_STEP) h->sample[ns++] = p[i];
    int64_t ks = 2 * N / SAMPLE_STEP + 8;
    int64_t n0 = 0;
    if (ks < ns) n0 = pi_kernels_active()->select(V, p, kth_largest(h->sample, ns, ks), 0, h->idx);
    if (n0 < N) { /* too few above the sampled threshold: every row */
        for (int64_t i = 0; i < V; i++) h->idx[i] = (int32_t)i;
        n0 = V;
    }
    for (int64_t k = 0; k < n0; k++) h->work[k] = p[h->idx[k]];
    const float c = kth_largest(h->work, n0, N - 1);
    int64_t n = 0;
    for (int64_t k = 0; k < n0; k++)
        if (p[h->idx[k]] >= c) h->idx[n++] = h->idx[k];
    *cut = c;
    return n;
}

int pi_head_logits(pi_head *h, pi_pool *pool, const float *xn, float *logits) {
    const pi_model *m = h->m;
    const pi_weight *w = pi_model_output(m); /* plain rows (pi_model_set_head) */
    const int64_t V = m->hp.n_vocab;
    int rc;
    h->steps++;
    if ((rc = weight_matvec(NULL, &m->preview_a, xn, h->z))) return rc; /* a few KB */
    if ((rc = weight_matvec(pool, &m->preview_b, h->z, logits))) return rc;
    float cut;
    const int64_t n = top_candidates(h, logits, m->head_candidates, &cut);
    if ((rc = pi_matvec_rows(pool, w->type, w->data, V, w->n_cols, xn, h->idx, n, logits))) return rc;
    float best = -INFINITY;
    for (int64_t k = 0; k < n; k++) best = logits[h->idx[k]] > best ? logits[h->idx[k]] : best;
    double probe = 0; /* the probe rows' energy (none: scale 1) */
    for (int64_t i = m->preview_b.n_cols; i < m->preview_a.n_rows; i++) probe += (double)h->z[i] * h->z[i];
    const float scale = m->preview_a.n_rows > m->preview_b.n_cols ? (float)sqrt(probe) : 1.0f;
    if (n > 0 && best - cut >= m->head_window + m->head_margin * scale) {
        h->exact_rows += n;
        return PI_OK;
    }
    h->fallbacks++; /* not clear of the cut (or no candidates: non-finite values): the full head */
    return weight_matvec(pool, w, xn, logits);
}
