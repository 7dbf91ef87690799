/* softmax and log_softmax on CUDA (behind the tables of softmax.c), with the CPU's
 * formulas: one thread per position of [outer, inner], looping over r (consecutive
 * threads take consecutive inner positions, so the loads coalesce when inner > 1). */
#include "runtime/cuda_common.cuh"

#include "ops/loss/loss_cuda.h"
#include "tapegrad.h"

#include <math.h>

namespace {

template <typename T>
__global__ void softmax_kernel(bool log_out, const T *x, int64_t outer, int64_t r,
                               int64_t inner, T *y) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < outer * inner;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = i / inner, k = i % inner;
    const T *xp = x + o * r * inner + k;
    T *yp = y + o * r * inner + k;
    T m = -INFINITY;
    for (int64_t j = 0; j < r; j++)
      m = xp[j * inner] > m ? xp[j * inner] : m;
    double sum = 0;
    for (int64_t j = 0; j < r; j++) {
      const T e = exp(xp[j * inner] - m);
      if (!log_out)
        yp[j * inner] = e;
      sum += e;
    }
    const T f = (T)(log_out ? log(sum) : 1.0 / sum);
    for (int64_t j = 0; j < r; j++)
      yp[j * inner] = log_out ? (xp[j * inner] - m) - f : yp[j * inner] * f;
  }
}

template <typename T>
__global__ void softmax_backward_kernel(bool log_out, const T *y, const T *g,
                                        int64_t outer, int64_t r, int64_t inner, T *dx) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < outer * inner;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t base = i / inner * r * inner + i % inner;
    double acc = 0;
    for (int64_t j = 0; j < r; j++) {
      const int64_t e = base + j * inner;
      acc += log_out ? (double)g[e] : (double)g[e] * (double)y[e];
    }
    const T dot = (T)acc;
    for (int64_t j = 0; j < r; j++) {
      const int64_t e = base + j * inner;
      dx[e] = log_out ? g[e] - exp(y[e]) * dot : y[e] * (g[e] - dot);
    }
  }
}

} // namespace

extern "C" int tg__softmax_cuda_forward(int dtype, bool log_out, const void *x,
                                        int64_t outer, int64_t r, int64_t inner, void *y,
                                        int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (outer * r * inner == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(outer * inner, TG_THREADS);
  if (dtype == TG_F32)
    TG_LAUNCH(softmax_kernel<float>, g, TG_THREADS, 0, st, log_out, (const float *)x,
              outer, r, inner, (float *)y);
  else
    TG_LAUNCH(softmax_kernel<double>, g, TG_THREADS, 0, st, log_out, (const double *)x,
              outer, r, inner, (double *)y);
  return TG_CUDA_LAUNCHED(softmax_kernel);
}

extern "C" int tg__softmax_cuda_backward(int dtype, bool log_out, const void *y,
                                         const void *gr, int64_t outer, int64_t r,
                                         int64_t inner, void *dx, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (outer * r * inner == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(outer * inner, TG_THREADS);
  if (dtype == TG_F32)
    TG_LAUNCH(softmax_backward_kernel<float>, g, TG_THREADS, 0, st, log_out,
              (const float *)y, (const float *)gr, outer, r, inner, (float *)dx);
  else
    TG_LAUNCH(softmax_backward_kernel<double>, g, TG_THREADS, 0, st, log_out,
              (const double *)y, (const double *)gr, outer, r, inner, (double *)dx);
  return TG_CUDA_LAUNCHED(softmax_backward_kernel);
}
