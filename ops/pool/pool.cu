/* The pools on CUDA (max, avg, adaptive avg; tg__pool_run in pool_ex.c calls these),
 * the CPU kernels' formulas: forward one thread per output over its window; backward
 * one thread per input element, gathering from the windows that can contain it, in
 * output order (the order the CPU's scatter adds in): no atomics, so overlapping
 * windows give the same bits on every run. Max pool's backward takes the gradient of
 * a window whose saved argmax is this element. */
#include "runtime/cuda_common.cuh"

#include "ops/pool/pool_cuda.h"

#include <math.h>

namespace {

/* Windows along one axis: output o covers input [lo, hi) (clipped to the image);
 * `size` is avg's divisor factor with count_include_pad (clipped to the padded image
 * as PyTorch), or the adaptive window's size. */
struct span {
  int64_t lo, hi, size;
};

__device__ inline span window_of(const tg__pool_desc &d, int a, int64_t o) {
  if (d.kind == TG__POOL_ADAPTIVE) {
    const int64_t in = d.in[a], out = d.out[a];
    const int64_t lo = (o / out) * in + ((o % out) * in) / out;
    const int64_t hi = 1 + ((o + 1) * in - 1) / out;
    return {lo, hi, hi - lo};
  }
  const int64_t start = o * d.s[a] - d.p[a];
  int64_t end = start + d.k[a];
  end = end < d.in[a] + d.p[a] ? end : d.in[a] + d.p[a];
  return {start > 0 ? start : 0, end < d.in[a] ? end : d.in[a], end - start};
}

/* The outputs [first, last] along axis a whose windows may contain input i. */
__device__ inline void outputs_of(const tg__pool_desc &d, int a, int64_t i,
                                  int64_t *first, int64_t *last) {
  const int64_t in = d.in[a], out = d.out[a];
  int64_t f, l;
  if (d.kind == TG__POOL_ADAPTIVE) {
    f = i * out / in;
    l = ((i + 1) * out + in - 1) / in - 1;
  } else {
    const int64_t s = d.s[a], lo = i + d.p[a] - (d.k[a] - 1) * d.d[a];
    f = lo > 0 ? (lo + s - 1) / s : 0;
    l = (i + d.p[a]) / s;
  }
  *first = f > 0 ? f : 0;
  *last = l < out - 1 ? l : out - 1;
}

template <typename T>
__device__ inline T divisor_of(const tg__pool_desc &d, span y, span x) {
  if (d.divisor)
    return (T)d.divisor;
  if (d.kind == TG__POOL_ADAPTIVE || d.include_pad)
    return (T)(y.size * x.size);
  return (T)((y.hi - y.lo) * (x.hi - x.lo));
}

/* The maximum over a (dilated) window's taps inside the image and its flat index in
 * the plane: the first maximum; a NaN wins, the first or the last as d.first_nan. */
template <typename T>
__device__ inline T window_max(const tg__pool_desc &d, const T *src, int64_t oy,
                               int64_t ox, int64_t *best) {
  const int64_t H = d.in[0], W = d.in[1];
  const int64_t y0 = oy * d.s[0] - d.p[0], x0 = ox * d.s[1] - d.p[1];
  T m = -INFINITY;
  *best = -1;
  for (int64_t i = 0; i < d.k[0]; i++) {
    const int64_t yy = y0 + i * d.d[0];
    if (yy < 0 || yy >= H)
      continue;
    for (int64_t j = 0; j < d.k[1]; j++) {
      const int64_t xx = x0 + j * d.d[1];
      if (xx < 0 || xx >= W)
        continue;
      const T v = src[yy * W + xx];
      if (*best < 0 || v > m || v != v) {
        m = v;
        *best = yy * W + xx;
        if (v != v && d.first_nan)
          return m;
      }
    }
  }
  return m;
}

/* One thread per output: the window's maximum (and its index), or its mean (summed in
 * double, as the CPU). */
template <typename T>
__global__ void pool_fwd(tg__pool_desc d, const T *x, T *y, int64_t *idx) {
  const int64_t OH = d.out[0], OW = d.out[1], H = d.in[0], W = d.in[1];
  const int64_t n = d.planes * OH * OW;
  for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n;
       o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t ox = o % OW, oy = o / OW % OH, p = o / (OW * OH);
    const T *src = x + p * H * W;
    if (d.kind == TG__POOL_MAX) {
      y[o] = window_max(d, src, oy, ox, &idx[o]);
      continue;
    }
    const span ey = window_of(d, 0, oy), ex = window_of(d, 1, ox);
    double acc = 0;
    for (int64_t yy = ey.lo; yy < ey.hi; yy++)
      for (int64_t xx = ex.lo; xx < ex.hi; xx++)
        acc += src[yy * W + xx];
    y[o] = (T)(acc / divisor_of<double>(d, ey, ex));
  }
}

/* dx of every input element: the sum, in output order, of the gradients of the
 * windows that contain it (max: whose argmax it is; avg: each share dy / divisor,
 * rounded to T first as the CPU's scatter). */
template <typename T>
__global__ void pool_bwd(tg__pool_desc d, const T *dy, const int64_t *idx, T *dx) {
  const int64_t OH = d.out[0], OW = d.out[1], H = d.in[0], W = d.in[1];
  const int64_t n = d.planes * H * W;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t ix = e % W, iy = e / W % H, p = e / (W * H), at = iy * W + ix;
    int64_t y0, y1, x0, x1;
    outputs_of(d, 0, iy, &y0, &y1);
    outputs_of(d, 1, ix, &x0, &x1);
    const T *g = dy + p * OH * OW;
    T acc = 0;
    for (int64_t oy = y0; oy <= y1; oy++) {
      const span ey = window_of(d, 0, oy);
      if (d.kind != TG__POOL_MAX && (iy < ey.lo || iy >= ey.hi))
        continue;
      for (int64_t ox = x0; ox <= x1; ox++) {
        const int64_t o = oy * OW + ox;
        if (d.kind == TG__POOL_MAX) {
          if (idx[p * OH * OW + o] == at)
            acc += g[o];
          continue;
        }
        const span ex = window_of(d, 1, ox);
        if (ix >= ex.lo && ix < ex.hi)
          acc += (T)(g[o] / divisor_of<double>(d, ey, ex));
      }
    }
    dx[e] = acc;
  }
}

/* max_unpool2d's store: one thread per plane, indices in order (the last of
 * duplicates wins, as the CPU's loop). */
template <typename T>
__global__ void unpool_store(int64_t planes, int64_t n_idx, int64_t n_big, const T *src,
                             const int64_t *idx, T *dst) {
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < planes;
       p += (int64_t)gridDim.x * blockDim.x)
    for (int64_t k = p * n_idx; k < (p + 1) * n_idx; k++)
      dst[p * n_big + idx[k]] = src[k];
}

/* Its backward: dst[k] = src[idx[k]] of its plane, one thread per element. */
template <typename T>
__global__ void unpool_gather(int64_t n, int64_t n_idx, int64_t n_big, const T *src,
                              const int64_t *idx, T *dst) {
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n;
       k += (int64_t)gridDim.x * blockDim.x)
    dst[k] = src[k / n_idx * n_big + idx[k]];
}

} // namespace

extern "C" int tg__pool_cuda_forward(int dtype, const tg__pool_desc *d, const void *x,
                                     void *y, int64_t *idx, int device) {
  const int64_t n = d->planes * d->out[0] * d->out[1];
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned b, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(pool_fwd<T>, b, TG_THREADS, 0, st, *d, (const T *)x, (T *)y, idx);
    return TG_CUDA_LAUNCHED(pool_fwd);
  });
}

extern "C" int tg__pool_cuda_backward(int dtype, const tg__pool_desc *d, const void *dy,
                                      const int64_t *idx, void *dx, int device) {
  const int64_t n = d->planes * d->in[0] * d->in[1];
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned b, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(pool_bwd<T>, b, TG_THREADS, 0, st, *d, (const T *)dy, idx, (T *)dx);
    return TG_CUDA_LAUNCHED(pool_bwd);
  });
}

extern "C" int tg__unpool_cuda(int dtype, int64_t planes, int64_t n_idx, int64_t n_big,
                               const void *src, const int64_t *idx, void *dst,
                               bool backward, int device) {
  const int64_t n = n_idx ? (backward ? planes * n_idx : planes) : 0;
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned b, cudaStream_t st) {
    using T = decltype(z);
    if (backward) {
      TG_LAUNCH(unpool_gather<T>, b, TG_THREADS, 0, st, n, n_idx, n_big, (const T *)src,
                idx, (T *)dst);
      return TG_CUDA_LAUNCHED(unpool_gather);
    }
    TG_LAUNCH(unpool_store<T>, b, TG_THREADS, 0, st, planes, n_idx, n_big, (const T *)src,
              idx, (T *)dst);
    return TG_CUDA_LAUNCHED(unpool_store);
  });
}
