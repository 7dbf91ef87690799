/* Host stand-in for CUDA's cuda_runtime.h (-Dcuda=host): the C API plus, in C++, the
 * overloads that take a kernel itself rather than a const void *, as CUDA's header
 * has them. */
#ifndef TG_SIMT_CUDA_RUNTIME_H
#define TG_SIMT_CUDA_RUNTIME_H

#include "cuda_runtime_api.h"
#include "vector_functions.h"

#ifdef __cplusplus
template <class T>
static inline cudaError_t cudaFuncSetAttribute(T *entry, enum cudaFuncAttribute attr,
                                               int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void *>(entry), attr, value);
}
template <class T>
static inline cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *attr,
                                                T *entry) {
  return cudaFuncGetAttributes(attr, reinterpret_cast<const void *>(entry));
}
template <class T>
static inline cudaError_t
cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, T *func, int blockSize,
                                              size_t dynamicSMemSize) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      numBlocks, reinterpret_cast<const void *>(func), blockSize, dynamicSMemSize);
}
#endif

#endif
