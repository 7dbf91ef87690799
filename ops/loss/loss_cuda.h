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

/* Class losses over x [outer, C, inner] and int64 targets [outer, inner]. */
/* *count = targets not equal to ignore; *bad = index of the first target outside
 * [0, C) and not ignore, -1 when none. Waits for the result. */
int tg__loss_cuda_count_targets(const int64_t *t, int64_t n, int64_t C, int64_t ignore,
                                int64_t *count, int64_t *bad, int device);
/* Cross-entropy with class weights w [C] (NULL: all 1; W = their sum, C without) and
 * label smoothing in [0, 1], loss.c's formula: stats [2, outer*inner] (max, log of the
 * sum of exp) for backward; per-position losses into L (may be NULL); *total = their
 * sum, *wsum (may be NULL) = that of the weights of the targets not ignored (waits).
 * Targets must be valid. */
int tg__loss_cuda_ce_forward(int dtype, const void *x, const int64_t *t, const void *w,
                             double smoothing, double W, int64_t outer, int64_t C,
                             int64_t inner, int64_t ignore, void *stats, void *L,
                             double *total, double *wsum, int device);
/* dx = g scale [softmax ((1 - s) w_t + s/C W) - (1 - s) w_t onehot - s/C w], g per
 * position when per_elem, else g[0]. */
int tg__loss_cuda_ce_backward(int dtype, const void *x, const int64_t *t, const void *w,
                              double smoothing, double W, const void *stats,
                              const void *g, bool per_elem, double scale, int64_t outer,
                              int64_t C, int64_t inner, int64_t ignore, void *dx,
                              int device);
/* NLL: loss = -x[target]; backward writes -g * scale there (dx zeroed before). */
int tg__loss_cuda_nll_forward(int dtype, const void *x, const int64_t *t, int64_t outer,
                              int64_t C, int64_t inner, int64_t ignore, void *L,
                              double *total, int device);
int tg__loss_cuda_nll_backward(int dtype, const void *g, const int64_t *t, bool per_elem,
                               double scale, int64_t outer, int64_t C, int64_t inner,
                               int64_t ignore, void *dx, int device);
/* nll_loss with class weights w [C] (NULL: all 1): loss = -w[t] x[t]; *wsum (may be
 * NULL) = the sum of the weights of the targets not ignored (waits); backward writes
 * -g * scale * w[t] there. */
int tg__loss_cuda_nll_weighted_forward(int dtype, const void *x, const int64_t *t,
                                       const void *w, int64_t outer, int64_t C,
                                       int64_t inner, int64_t ignore, void *L,
                                       double *total, double *wsum, int device);
int tg__loss_cuda_nll_weighted_backward(int dtype, const void *g, const int64_t *t,
                                        const void *w, bool per_elem, double scale,
                                        int64_t outer, int64_t C, int64_t inner,
                                        int64_t ignore, void *dx, int device);
/* Pointwise losses (kind 0: mse, 1: BCE with logits) over n elements, as loss.c. */
int tg__loss_cuda_pointwise_forward(int kind, int dtype, const void *x, const void *t,
                                    int64_t n, void *L, double *total, int device);
int tg__loss_cuda_pointwise_backward(int kind, int dtype, const void *x, const void *t,
                                     const void *g, bool per_elem, double scale,
                                     int64_t n, void *dx, void *dt, int device);

#ifdef __cplusplus
}
#endif

#endif
