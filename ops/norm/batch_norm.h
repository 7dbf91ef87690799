/* BatchNorm's CUDA launchers (batch_norm.cu), called by batch_norm.c's CUDA kernel
 * table. Plain C. */
#ifndef TG_OPS_NORM_BATCH_NORM_H
#define TG_OPS_NORM_BATCH_NORM_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* On device `device`'s stream; dtype a tg_dtype (float32 or float64). x is [N, C, HW];
 * w, b (C, each may be NULL); rm, rv the running stats (C, both NULL or both given;
 * required when !training, updated in place when training); stats [C, 3] float64
 * (pivot, dmean, rstd, the CPU's layout). In backward dx, dw and db may each be NULL.
 * Return 0 or -1 with the error. */
int tg__bn_cuda_forward(int dtype, const void *x, const void *w, const void *b, void *rm,
                        void *rv, int64_t N, int64_t C, int64_t HW, bool training,
                        double momentum, double eps, void *y, double *stats, int device);
int tg__bn_cuda_backward(int dtype, const void *dy, const void *x, const void *w,
                         const double *stats, int64_t N, int64_t C, int64_t HW,
                         bool training, void *dx, void *dw, void *db, int device);

#ifdef __cplusplus
}
#endif

#endif
