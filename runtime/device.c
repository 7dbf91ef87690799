/* Devices. CUDA calls go through cudart's C API when built with CUDA; otherwise every
 * CUDA request fails with a message saying so. */
#include "runtime/internal.h"

#include <string.h>

#ifdef TG_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

tg_device tg_cuda(int index) { return (tg_device){TG_DEVICE_CUDA, index}; }

int tg_cuda_device_count(void) {
#ifdef TG_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky "no device" status */
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

bool tg_cuda_is_available(void) { return tg_cuda_device_count() > 0; }

void *tg__cuda_malloc(size_t bytes, int device) {
#ifdef TG_HAVE_CUDA
  void *p = NULL;
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess)
    e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    tg__error("CUDA out of memory or error: failed to allocate %zu bytes on cuda:%d "
              "(%s)",
              bytes, device, cudaGetErrorString(e));
    return NULL;
  }
  return p;
#else
  (void)device;
  tg__error("cannot allocate %zu bytes on cuda: tapegrad was built without CUDA", bytes);
  return NULL;
#endif
}

void tg__cuda_free(void *p, size_t bytes, int device) {
  (void)bytes;
  (void)device;
#ifdef TG_HAVE_CUDA
  cudaFree(p);
#else
  (void)p;
#endif
}

int tg__cuda_memcpy(void *dst, tg_device dd, const void *src, tg_device sd, size_t n) {
  if (dd.type == TG_DEVICE_CPU && sd.type == TG_DEVICE_CPU) {
    memcpy(dst, src, n);
    return 0;
  }
#ifdef TG_HAVE_CUDA
  cudaError_t e = cudaMemcpy(dst, src, n, cudaMemcpyDefault);
  if (e != cudaSuccess)
    return tg__error("CUDA memcpy of %zu bytes failed: %s", n, cudaGetErrorString(e));
  return 0;
#else
  return tg__error("cannot copy to or from cuda: tapegrad was built without CUDA");
#endif
}
