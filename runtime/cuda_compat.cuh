/* Launch and shared-memory spellings every .cu file uses, so the same source builds
 * with nvcc and in the host SIMT build. (Minimal nvcc-only version; the SIMT build
 * provides the host side.) */
#ifndef TG_RUNTIME_CUDA_COMPAT_CUH
#define TG_RUNTIME_CUDA_COMPAT_CUH

#include <cuda_runtime.h>

#define TG_LAUNCH(kernel, grid, block, smem, stream, ...)                                \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define TG_DYNAMIC_SHARED(T, name) extern __shared__ T name[]

#endif
