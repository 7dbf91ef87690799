/* The optimizers' steps on CUDA: one fused grid-stride kernel per parameter reads the
 * weight, its gradient and its state once and writes the weight and the state, with
 * the per-element formulas of nn/optim_tmpl.h that the CPU loops of optim.c use. The
 * launchers return as soon as the kernel is queued: a step never waits for the
 * device. */
#include "runtime/cuda_common.cuh"

#include "nn/optim.h"

namespace {

template <typename T>
__global__ void sgd_kernel(tg__sgd_coefs c, T *w, const T *g, T *b, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    tg__sgd_elem(&c, &w[i], g[i], b ? &b[i] : nullptr);
}

template <typename T>
__global__ void adam_kernel(tg__adam_coefs c, T *w, const T *g, T *m, T *v, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    tg__adam_elem(&c, &w[i], g[i], &m[i], &v[i]);
}

} // namespace

extern "C" int tg__sgd_cuda(const tg__sgd_coefs *c, int dtype, void *w, const void *g,
                            void *b, int64_t n, int device) {
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned blocks, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(sgd_kernel<T>, blocks, TG_THREADS, 0, st, *c, (T *)w, (const T *)g, (T *)b,
              n);
    return TG_CUDA_LAUNCHED(sgd_kernel);
  });
}

extern "C" int tg__adam_cuda(const tg__adam_coefs *c, int dtype, void *w, const void *g,
                             void *m, void *v, int64_t n, int device) {
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned blocks, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(adam_kernel<T>, blocks, TG_THREADS, 0, st, *c, (T *)w, (const T *)g, (T *)m,
              (T *)v, n);
    return TG_CUDA_LAUNCHED(adam_kernel);
  });
}
