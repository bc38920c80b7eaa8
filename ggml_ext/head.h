/* head.h - the sparse output head (internal; API in pi.h's "sparse output head" block). */
#ifndef PI_HEAD_H
#define PI_HEAD_H

#include "model.h"
#include "threads.h"

/* A context's sparse-head scratch: made by pi_context_set_head_mode, never per token. */
typedef struct pi_head pi_head;

/* pi_model_finalize's check of the preview: both factors or neither, their ranks equal, the
 * candidate count and margin set (pi_model_set_head). */
int pi_head_check(const pi_model *m);
int pi_head_create(const pi_model *m, pi_head **out);
void pi_head_free(pi_head *h);
/* logits [n_vocab] of one normed final hidden state xn [d]: preview, candidates, exact rows,
 * or the full head when the margin test fails. */
int pi_head_logits(pi_head *h, pi_pool *pool, const float *xn, float *logits);
void pi_head_stats(const pi_head *h, int64_t *steps, int64_t *fallbacks, int64_t *exact_rows);
void pi_head_reset_stats(pi_head *h);

#endif /* PI_HEAD_H */
