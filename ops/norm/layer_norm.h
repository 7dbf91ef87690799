/* LayerNorm's CUDA launchers (layer_norm.cu), called by layer_norm.c's CUDA kernel
 * table. Plain C. */
#ifndef TG_OPS_NORM_LAYER_NORM_H
#define TG_OPS_NORM_LAYER_NORM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* On device `device`'s stream; dtype a tg_dtype (float32 or float64). x is [M, D]
 * (rows normalised); w and b [D], both given or both NULL; stats [M, 3] float64
 * (pivot, dmean, rstd, the CPU's layout), may be NULL in forward. In backward dx, dw
 * and db may each be NULL; w is NULL without affine. Return 0 or -1 with the error. */
int tg__ln_cuda_forward(int dtype, const void *x, const void *w, const void *b, int64_t M,
                        int64_t D, double eps, void *y, double *stats, int device);
int tg__ln_cuda_backward(int dtype, const void *dy, const void *x, const void *w,
                         const double *stats, int64_t M, int64_t D, void *dx, void *dw,
                         void *db, int device);

#ifdef __cplusplus
}
#endif

#endif
