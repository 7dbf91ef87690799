/* Resampling (nearest, linear, bilinear, trilinear upsampling) shared by the CPU loops
 * of pool.c / pool_ex.c and the CUDA kernels of resample.cu: one description of a
 * resampling and the per-output source taps, TG_HOST_DEVICE, so both devices compute
 * the same source indices and weights from the same code. Plain C, valid C++. */
#ifndef TG_OPS_POOL_RESAMPLE_H
#define TG_OPS_POOL_RESAMPLE_H

#include "runtime/cuda.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Planes of in[0] x in[1] x in[2] (D, H, W; the axes a 1-D or 2-D input lacks have
 * size 1) resampled to out[]. taps[a]: 2 for a linear axis, 1 for a nearest or absent
 * one. scale[a]: the source scale (in/out, or 1/scale_factor) in double; scale_f[a]:
 * the float the float32 and nearest formulas use (computed by the op as PyTorch's
 * kernels do). in_dtype: weights and sums in the tensor's dtype, as pool.c's
 * tg_upsample_bilinear2d (an axis with in == out maps o to o alone); else weights
 * in double and sums in double, as pool_ex.c's _ex functions. */
typedef struct {
  int64_t planes, in[3], out[3];
  int taps[3];
  bool align, in_dtype;
  double scale[3];
  float scale_f[3];
} tg__resample_desc;

/* Sources i[0], i[1] of one output along one axis, with weights w[0], w[1] (a nearest
 * axis: i[0] alone, weight 1). */
typedef struct {
  int64_t i[2];
  double w[2];
} tg__tap;

/* A product that nvcc must not fuse with the add that follows into an FMA: the source
 * index it feeds must round as on the CPU, which never contracts (ISO C). */
#ifdef __CUDA_ARCH__
#define TG__FMUL(a, b) __fmul_rn((a), (b))
#define TG__DMUL(a, b) __dmul_rn((a), (b))
#else
#define TG__FMUL(a, b) ((a) * (b))
#define TG__DMUL(a, b) ((a) * (b))
#endif

/* PyTorch's nearest source of output o: floor(o * scale) in float, clamped. */
static inline TG_HOST_DEVICE int64_t tg__nearest_src(int64_t o, int64_t in, int64_t out,
                                                     float scale) {
  if (out == in)
    return o;
  if (out == 2 * in)
    return o >> 1;
  const int64_t s = (int64_t)floorf((float)o * scale);
  return s < in - 1 ? s : in - 1;
}

/* PyTorch's area_pixel_compute_source_index and its two neighbours, in the dtype's
 * precision (f32: float arithmetic); in_dtype as in tg__resample_desc. */
static inline TG_HOST_DEVICE tg__tap tg__linear_tap(int64_t o, int64_t in, int64_t out,
                                                    double scale, float scale_f,
                                                    bool align, bool f32, bool in_dtype) {
  tg__tap t;
  if (in_dtype && in == out) {
    t.i[0] = t.i[1] = o;
    t.w[0] = 1;
    t.w[1] = 0;
    return t;
  }
  double src;
  if (align) {
    const double sc = out > 1 ? (double)(in - 1) / (double)(out - 1) : 0;
    src = f32 ? (double)((float)sc * (float)o) : sc * (double)o;
  } else if (f32) {
    const float v = TG__FMUL(scale_f, (float)o + 0.5f) - 0.5f;
    src = v < 0 ? 0 : v;
  } else {
    const double v = TG__DMUL(scale, (double)o + 0.5) - 0.5;
    src = v < 0 ? 0 : v;
  }
  const int64_t i0 = (int64_t)src;
  const double l = f32 ? (double)((float)src - (float)i0) : src - (double)i0;
  t.i[0] = i0;
  t.i[1] = i0 + (i0 < in - 1);
  t.w[0] = in_dtype && f32 ? (double)(float)(1 - l) : 1 - l;
  t.w[1] = l;
  return t;
}

/* The taps of output o along axis a of d. */
static inline TG_HOST_DEVICE tg__tap tg__resample_tap(const tg__resample_desc *d, int a,
                                                      int64_t o, bool f32) {
  if (d->taps[a] == 2)
    return tg__linear_tap(o, d->in[a], d->out[a], d->scale[a], d->scale_f[a], d->align,
                          f32, d->in_dtype);
  tg__tap t; /* nearest, or an absent axis (in = out = 1: source 0) */
  t.i[0] = tg__nearest_src(o, d->in[a], d->out[a], d->scale_f[a]);
  t.i[1] = 0;
  t.w[0] = 1;
  t.w[1] = 0;
  return t;
}

/* CUDA launchers (resample.cu) on device's stream; dtype float32 or float64.
 * backward false: dst = y [planes, out] from src = x [planes, in]; true: dst = dx
 * [planes, in] from src = dy, every element written, each gathered from the outputs
 * whose taps reach it in the order the CPU's scatter adds them: no atomics, the same
 * bits on every run. Return 0 or -1 with the error. */
int tg__resample_cuda(int dtype, const tg__resample_desc *d, const void *src, void *dst,
                      bool backward, int device);

#ifdef __cplusplus
}
#else
#include "tapegrad.h"

/* The resampling d of x [N, C, spatial...] (planes N * C; the output's spatial dims
 * d->out's trailing ones), after the caller's checks, on x's device through the table
 * of pool_ex.c; in_dtype descriptions are for devices other than the CPU (pool.c keeps
 * its own CPU loops for them). */
tg_tensor *tg__resample_run(const char *op, const tg_tensor *x,
                            const tg__resample_desc *d);
#endif

#endif
