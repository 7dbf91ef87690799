/* Device helpers shared by the .cu files: the stream of a device, launch checks,
 * warp and block reductions, vector types. Included after runtime/cuda_compat.cuh. */
#ifndef TG_RUNTIME_CUDA_COMMON_CUH
#define TG_RUNTIME_CUDA_COMMON_CUH

#include "runtime/cuda.h"
#include "runtime/cuda_compat.cuh"
#include "tapegrad.h"

#include <stdint.h>

static inline cudaStream_t tg_stream(int device) {
  return (cudaStream_t)tg__cuda_stream(device);
}

/* Elementwise grids: 256 threads, grid-stride loops over int64 indices. */
enum { TG_THREADS = 256 };

/* Threads for a block sweeping n elements: a multiple of 32 up to max. */
static inline int tg_threads_for(int64_t n, int max) {
  int64_t t = (n + 31) / 32 * 32;
  return t < 32 ? 32 : t > max ? max : (int)t;
}

/* Sum over the warp of a value every lane holds (all 32 lanes active). */
template <typename T> __device__ inline T tg_warp_sum(T v) {
  for (int o = 16; o > 0; o /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets
 * it. scratch holds 32 values; the call synchronises the block twice. */
template <typename T> __device__ inline T tg_block_sum(T v, T *scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = (blockDim.x + 31) / 32;
  v = tg_warp_sum(v);
  __syncthreads(); /* scratch may still be read by a previous call */
  if (lane == 0)
    scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  return tg_warp_sum(v);
}

/* *out = sum of part[0, n), by one block: the second phase of the two-kernel sums
 * (per-block partials, then this); with add, *out += that sum (a running total over
 * launches, in stream order). A template so every .cu may include it unused. */
template <typename T = double, bool add = false>
__global__ void tg_sum_partials(const T *part, int n, T *out) {
  __shared__ T scratch[32];
  T acc = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    acc += part[i];
  acc = tg_block_sum(acc, scratch);
  if (threadIdx.x == 0)
    *out = add ? *out + acc : acc;
}

/* Calls f(T()) with T float for a TG_F32 dtype, double otherwise: one launch site in
 * a generic lambda serves both dtypes,
 *   tg_float_dispatch(dtype, [&](auto z) { using T = decltype(z); TG_LAUNCH(k<T>, ...);
 * });
 */
template <typename F> inline void tg_float_dispatch(int dtype, F &&f) {
  if (dtype == TG_F32)
    f(float());
  else
    f(double());
}

/* The frame of a grid-stride launch over n elements: device's stream, nothing when n
 * is 0, else launch(T(), blocks, stream) through tg_float_dispatch; returns -1 without
 * a stream, else launch's status (e.g. TG_CUDA_LAUNCHED). */
template <typename F>
inline int tg_launch_float(int dtype, int64_t n, int device, F &&launch) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (n == 0)
    return 0;
  const unsigned blocks = tg__cuda_blocks(n, TG_THREADS);
  int rc = 0;
  tg_float_dispatch(dtype, [&](auto z) { rc = launch(z, blocks, st); });
  return rc;
}

/* 16-byte vectors of T: four floats or two doubles. */
template <typename T> struct tg_vec;
template <> struct tg_vec<float> {
  typedef float4 type;
  enum { n = 4 };
};
template <> struct tg_vec<double> {
  typedef double2 type;
  enum { n = 2 };
};

#endif
