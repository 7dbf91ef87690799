/* Reductions on CUDA (behind the tables of reduce.c): sums over any set of dims, one
 * block per output, accumulated in double in a fixed order (reproducible, and float32
 * sums do not drift, as on the CPU); max/argmax one thread per output. */
#include "runtime/cuda_common.cuh"

#include "ops/reduce/reduce.h"
#include "tapegrad.h"

#include <math.h>

namespace {

struct dims {
  int n;
  int64_t shape[TG_MAX_DIMS], stride[TG_MAX_DIMS];
};

__device__ inline int64_t offset_of(int64_t i, const dims &d) {
  int64_t off = 0;
  for (int k = d.n - 1; k >= 0; k--) {
    off += (i % d.shape[k]) * d.stride[k];
    i /= d.shape[k];
  }
  return off;
}

template <typename T>
__global__ void sum_kernel(const T *x, dims kept, dims red, int64_t n_out, int64_t count,
                           T *out) {
  __shared__ double scratch[32];
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    const T *base = x + offset_of(o, kept);
    double acc = 0;
    for (int64_t j = threadIdx.x; j < count; j += blockDim.x)
      acc += (double)base[offset_of(j, red)];
    acc = tg_block_sum(acc, scratch);
    if (threadIdx.x == 0)
      out[o] = (T)acc;
  }
}

template <typename T>
__global__ void max_kernel(const T *x, int64_t outer, int64_t r, int64_t inner,
                           int64_t *idx, T *val) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < outer * inner;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = i / inner, k = i % inner;
    const T *p = x + o * r * inner + k;
    int64_t best = 0;
    T bv = p[0];
    for (int64_t j = 1; j < r && !isnan(bv); j++)
      if (p[j * inner] > bv || isnan(p[j * inner])) {
        bv = p[j * inner];
        best = j;
      }
    idx[i] = best;
    if (val)
      val[i] = bv;
  }
}

template <typename T>
__global__ void max_scatter_kernel(const T *g, const int64_t *idx, int64_t outer,
                                   int64_t r, int64_t inner, T *dx) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < outer * inner;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = i / inner, k = i % inner;
    dx[(o * r + idx[i]) * inner + k] = g[i];
  }
}

dims make_dims(int n, const int64_t *shape, const int64_t *stride) {
  dims d;
  d.n = n;
  for (int k = 0; k < n; k++) {
    d.shape[k] = shape[k];
    d.stride[k] = stride[k];
  }
  return d;
}

} // namespace

extern "C" int tg__reduce_cuda_sum(int dtype, const void *x, int kn,
                                   const int64_t *kshape, const int64_t *kstride, int rn,
                                   const int64_t *rshape, const int64_t *rstride,
                                   int64_t n_out, int64_t count, void *out, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (n_out == 0)
    return 0;
  const dims kept = make_dims(kn, kshape, kstride), red = make_dims(rn, rshape, rstride);
  const int threads = count >= 256 ? 256
                      : count > 32 ? (int)((count + 31) / 32 * 32)
                                   : 32;
  const unsigned g = n_out < 65535 * 16 ? (unsigned)n_out : 65535 * 16;
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(sum_kernel<T>, g, threads, 0, st, (const T *)x, kept, red, n_out, count,
              (T *)out);
  });
  return TG_CUDA_LAUNCHED(sum_kernel);
}

extern "C" int tg__reduce_cuda_max(int dtype, const void *x, int64_t outer, int64_t r,
                                   int64_t inner, int64_t *idx, void *val, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (outer * inner == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(outer * inner, TG_THREADS);
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(max_kernel<T>, g, TG_THREADS, 0, st, (const T *)x, outer, r, inner, idx,
              (T *)val);
  });
  return TG_CUDA_LAUNCHED(max_kernel);
}

extern "C" int tg__reduce_cuda_max_scatter(int dtype, const void *gr, const int64_t *idx,
                                           int64_t outer, int64_t r, int64_t inner,
                                           void *dx, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (outer * inner == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(outer * inner, TG_THREADS);
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(max_scatter_kernel<T>, g, TG_THREADS, 0, st, (const T *)gr, idx, outer, r,
              inner, (T *)dx);
  });
  return TG_CUDA_LAUNCHED(max_scatter_kernel);
}
