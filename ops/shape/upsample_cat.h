/* tg_upsample_nearest2d_cat's sizes, shared by upsample_cat.c and the CUDA kernels of
 * upsample_cat.cu. Plain C, valid C++. */
#ifndef TG_OPS_SHAPE_UPSAMPLE_CAT_H
#define TG_OPS_SHAPE_UPSAMPLE_CAT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t n, ca, cs, h, w, sh, sw; /* a [n, ca, h, w], skip [n, cs, h*sh, w*sw] */
} tg__ucat_dims;

/* CUDA launchers on device's stream; dtype float32 or float64; 0 or -1 with the
 * error. Forward: out [n, ca + cs, H, W] from a and skip. Backward: da (may be NULL)
 * gets each pixel the sum of its sh x sw block of g in row order, as the CPU sums it,
 * and dskip (may be NULL) a copy of its channels of g; every element written. */
int tg__ucat_cuda_forward(int dtype, const tg__ucat_dims *d, const void *a,
                          const void *skip, void *out, int device);
int tg__ucat_cuda_backward(int dtype, const tg__ucat_dims *d, const void *g, void *da,
                           void *dskip, int device);

#ifdef __cplusplus
}
#endif

#endif
