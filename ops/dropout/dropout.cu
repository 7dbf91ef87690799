/* Dropout on CUDA (dropout.c's table calls this): one thread per element, the mask of
 * dropout.h, the CPU's, so a seed drops the same elements on both devices and the
 * backward regenerates the forward's mask from the key. */
#include "runtime/cuda_common.cuh"

#include "ops/dropout/dropout.h"

namespace {

template <typename T>
__global__ void dropout_apply(tg__dropout_mask m, int64_t n, const T *src, T *dst) {
  const T scale = (T)m.scale;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = src[i] * (tg__dropout_keep(&m, i) ? scale : (T)0); /* NaN * 0 stays NaN */
}

} // namespace

extern "C" int tg__dropout_cuda(int dtype, const tg__dropout_mask *m, const void *src,
                                void *dst, int64_t n, int device) {
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned b, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(dropout_apply<T>, b, TG_THREADS, 0, st, *m, n, (const T *)src, (T *)dst);
    return TG_CUDA_LAUNCHED(dropout_apply);
  });
}
