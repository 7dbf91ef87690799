/* The one header every .cu file includes (through runtime/cuda_common.cuh): the same
 * kernel source builds with nvcc for a GPU and, with -Dcuda=host (TG_SIMT defined),
 * with g++ against the SIMT layer of runtime/simt/, which runs it on the CPU.
 *
 *   TG_LAUNCH(kernel, grid, block, smem, stream, args...)  launches, as <<<>>> does;
 *     a template kernel whose arguments hold a comma goes through a pointer first:
 *     auto *k = &kern<float, 4>; TG_LAUNCH(k, ...).
 *   TG_DYNAMIC_SHARED(T, name);  declares T *name, the launch's dynamic shared memory.
 */
#ifndef TG_CUDA_COMPAT_CUH
#define TG_CUDA_COMPAT_CUH

#ifdef TG_SIMT
#include "runtime/simt/simt.h"
#else
#include <cuda_runtime.h>

#define TG_LAUNCH(kernel, grid, block, smem, stream, ...)                                \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define TG_DYNAMIC_SHARED(T, name)                                                       \
  extern __shared__ __align__(16) unsigned char tg_dynamic_shared_##name[];              \
  T *name = reinterpret_cast<T *>(tg_dynamic_shared_##name)
#endif

#endif
