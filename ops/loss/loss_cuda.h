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

#ifdef __cplusplus
}
#endif

#endif
