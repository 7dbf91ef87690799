/* CUDA launchers of the softmax and loss kernels (loss.cu), plain C; dtype a
 * tg_dtype. Tensors are viewed as [outer, r, inner], reduced over r. */
#ifndef TG_OPS_LOSS_CUDA_H
#define TG_OPS_LOSS_CUDA_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y = softmax or log_softmax of x over r (max-subtracted, sums in double). */
int tg__softmax_cuda_forward(int dtype, bool log_out, const void *x, int64_t outer,
                             int64_t r, int64_t inner, void *y, int device);
/* softmax: dx = y * (g - sum g*y); log_softmax: dx = g - exp(y) * sum g. */
int tg__softmax_cuda_backward(int dtype, bool log_out, const void *y, const void *g,
                              int64_t outer, int64_t r, int64_t inner, void *dx,
                              int device);

/* Losses. None waits for the device. The forwards fill acc, 4 doubles on the device:
 * [0] the sum of the losses, [1] that of the picked class weights (the number of
 * targets not ignored without weights; unused by the pointwise losses), [2]
 * dloss/dloss_i (1, or 1/divisor for a mean), [3] the sum of the class weights (C
 * without; cross-entropy only); the backwards read [2] and [3] from there. reduction
 * is a tg_reduction: out (a 0-dim tensor's data, the input's dtype) gets the mean or
 * sum, NULL for none, when L gets the per-position losses.
 * Class losses take x [outer, C, inner] and int64 targets [outer, inner], checked on
 * the device without waiting (tg__cuda_check_targets, reported as op's error by the
 * next call that waits): an out-of-range target gives NaN losses and is never read
 * past. */
/* Cross-entropy with class weights w [C] (NULL: all 1) and label smoothing in [0, 1],
 * loss.c's formula; stats [2, outer*inner] (max, log of the sum of exp) for backward. */
int tg__loss_cuda_ce_forward(int dtype, const char *op, const void *x, const int64_t *t,
                             const void *w, double smoothing, int64_t outer, int64_t C,
                             int64_t inner, int64_t ignore, int reduction, void *stats,
                             void *L, void *out, double *acc, int device);
/* dx = g scale [softmax ((1 - s) w_t + s/C W) - (1 - s) w_t onehot - s/C w], g per
 * position when per_elem, else g[0]. */
int tg__loss_cuda_ce_backward(int dtype, const void *x, const int64_t *t, const void *w,
                              double smoothing, const double *acc, const void *stats,
                              const void *g, bool per_elem, int64_t outer, int64_t C,
                              int64_t inner, int64_t ignore, void *dx, int device);
/* NLL with class weights w [C] (NULL: all 1): loss = -w[t] x[t]; backward writes
 * -g * scale * w[t] there (dx zeroed before). */
int tg__loss_cuda_nll_forward(int dtype, const char *op, const void *x, const int64_t *t,
                              const void *w, int64_t outer, int64_t C, int64_t inner,
                              int64_t ignore, int reduction, void *L, void *out,
                              double *acc, int device);
int tg__loss_cuda_nll_backward(int dtype, const void *g, const int64_t *t, const void *w,
                               bool per_elem, const double *acc, int64_t outer, int64_t C,
                               int64_t inner, int64_t ignore, void *dx, int device);
/* Pointwise losses (kind 0: mse, 1: BCE with logits) over n elements, as loss.c; a
 * mean divides by n. */
int tg__loss_cuda_pointwise_forward(int kind, int dtype, const void *x, const void *t,
                                    int64_t n, int reduction, void *L, void *out,
                                    double *acc, int device);
int tg__loss_cuda_pointwise_backward(int kind, int dtype, const void *x, const void *t,
                                     const void *g, bool per_elem, const double *acc,
                                     int64_t n, void *dx, void *dt, int device);

#ifdef __cplusplus
}
#endif

#endif
