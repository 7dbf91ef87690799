/* The convolutions' one description of a product (conv.c's plan, see its header
 * comment), shared by conv.c and the CUDA kernels of conv.cu. Plain C. */
#ifndef TG_OPS_CONV_CONV_CUDA_H
#define TG_OPS_CONV_CONV_CUDA_H

#include "tapegrad.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An image [c, h, w] (all groups) and a grid of oh x ow kernel positions: position
 * (oy, ox) and tap (i, j) meet at pixel (oy*sh - ph + i*dh, ox*sw - pw + j*dw). */
typedef struct {
  int64_t c, h, w;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t oh, ow;
} tg__conv_geom;

/* One conv-like product over a batch: image side [n, g.c, h, w], flat side
 * [n, cf, oh*ow], weight [cf, g.c/groups * kh*kw] row-major per group. */
typedef struct {
  tg_dtype dtype;
  int64_t n, groups, cf;
  tg__conv_geom g;
} tg__conv_plan;

/* CUDA launchers (conv.cu) on device `device`'s stream, the CPU drivers' products:
 * with cols = im2col(image),
 *   flat_out = W · cols (+ bias[cf])   when flat_out is given,
 *   dw = Σ_n flat_in_n · cols_nᵀ       when dw is given (every element written);
 * and image_out = col2im(Wᵀ · flat_in) (+ bias[c]), col2im gathering each pixel's
 * taps in order. Sums over images are reduced in a fixed order, without atomics: the
 * same bits on every run. Images run in chunks whose columns take at most
 * chunk_bytes of scratch (at least one image a chunk), from the caching allocator; no
 * host synchronisation. Return 0 or -1 with the error. */
int tg__conv_cuda_im2col(const tg__conv_plan *p, const void *image, const void *w,
                         const void *bias, void *flat_out, const void *flat_in, void *dw,
                         size_t chunk_bytes, int device);
int tg__conv_cuda_col2im(const tg__conv_plan *p, const void *flat_in, const void *w,
                         const void *bias, void *image_out, size_t chunk_bytes,
                         int device);

#ifdef __cplusplus
}
#endif

#endif
