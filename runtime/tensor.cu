/* Kernels of the runtime's device-independent helpers (runtime/cuda.h): fill, dtype
 * conversion, axpby, sum of squares and the anomaly check. */
#include "runtime/cuda_common.cuh"

#include "tapegrad.h"

#include <math.h>

/* Grid-stride index of this thread, and the stride. */
#define TG_GRID_START ((int64_t)blockIdx.x * blockDim.x + threadIdx.x)
#define TG_GRID_STRIDE ((int64_t)gridDim.x * blockDim.x)

template <typename T> __global__ void fill_kernel(T *p, int64_t n, T v) {
  for (int64_t i = TG_GRID_START; i < n; i += TG_GRID_STRIDE)
    p[i] = v;
}

/* double -> int64 as the CPU's conversion: NaN and out-of-range saturate. */
__device__ inline int64_t to_i64(double v) {
  if (isnan(v) || v <= -0x1p63)
    return INT64_MIN;
  if (v >= 0x1p63)
    return INT64_MAX;
  return (int64_t)v;
}

template <typename D> __device__ inline D convert(double v) { return (D)v; }
template <> __device__ inline int64_t convert<int64_t>(double v) { return to_i64(v); }

template <typename D, typename S>
__global__ void cast_kernel(D *dst, const S *src, int64_t n) {
  for (int64_t i = TG_GRID_START; i < n; i += TG_GRID_STRIDE)
    dst[i] = convert<D>((double)src[i]);
}
/* float32 -> float64 and back need no detour through saturation. */
template <>
__global__ void cast_kernel<float, double>(float *dst, const double *src, int64_t n) {
  for (int64_t i = TG_GRID_START; i < n; i += TG_GRID_STRIDE)
    dst[i] = (float)src[i];
}

template <typename T>
__global__ void axpby_kernel(T *dst, T alpha, const T *src, T beta, int64_t n) {
  for (int64_t i = TG_GRID_START; i < n; i += TG_GRID_STRIDE)
    dst[i] = src ? alpha * dst[i] + beta * src[i] : alpha * dst[i];
}

__global__ void add_i64_kernel(int64_t *p, int64_t n, int64_t v) {
  for (int64_t i = TG_GRID_START; i < n; i += TG_GRID_STRIDE)
    p[i] += v;
}

/* One partial sum per block, in a fixed order: the result does not depend on timing. */
template <typename T>
__global__ void sumsq_kernel(const T *p, int64_t n, double *partial) {
  __shared__ double scratch[32];
  double acc = 0;
  for (int64_t i = TG_GRID_START; i < n; i += TG_GRID_STRIDE)
    acc += (double)p[i] * (double)p[i];
  acc = tg_block_sum(acc, scratch);
  if (threadIdx.x == 0)
    partial[blockIdx.x] = acc;
}

/* Smallest index of a non-finite element, through per-block minima. */
template <typename T>
__global__ void nonfinite_kernel(const T *p, int64_t n, long long *first) {
  for (int64_t i = TG_GRID_START; i < n; i += TG_GRID_STRIDE)
    if (!isfinite((double)p[i])) {
      atomicMin((unsigned long long *)first, (unsigned long long)i);
      return;
    }
}

struct strides {
  int nd;
  int64_t shape[TG_MAX_DIMS], d[TG_MAX_DIMS], s[TG_MAX_DIMS];
};

template <typename E>
__global__ void strided_copy_kernel(E *dst, int64_t doff, const E *src, int64_t soff,
                                    strides st, int64_t n) {
  for (int64_t i = TG_GRID_START; i < n; i += TG_GRID_STRIDE) {
    int64_t rem = i, od = doff, os = soff;
    for (int k = st.nd - 1; k >= 0; k--) {
      const int64_t idx = rem % st.shape[k];
      rem /= st.shape[k];
      od += idx * st.d[k];
      os += idx * st.s[k];
    }
    dst[od] = src[os];
  }
}

static unsigned blocks_for(int64_t n) { return tg__cuda_blocks(n, TG_THREADS); }

extern "C" int tg__cuda_fill(void *p, int dtype, int64_t n, double value, int device) {
  cudaStream_t s = tg_stream(device);
  if (!s)
    return -1;
  if (n == 0)
    return 0;
  if (value == 0 && !signbit(value)) /* all-zero bytes in every dtype */
    return TG_CUDA(cudaMemsetAsync(p, 0, (size_t)n * tg_dtype_size((tg_dtype)dtype), s));
  const unsigned g = blocks_for(n);
  if (dtype == TG_F32)
    TG_LAUNCH(fill_kernel<float>, g, TG_THREADS, 0, s, (float *)p, n, (float)value);
  else if (dtype == TG_F64)
    TG_LAUNCH(fill_kernel<double>, g, TG_THREADS, 0, s, (double *)p, n, value);
  else
    TG_LAUNCH(fill_kernel<long long>, g, TG_THREADS, 0, s, (long long *)p, n,
              (long long)value);
  return TG_CUDA_LAUNCHED(fill_kernel);
}

template <typename S>
static void launch_cast_from(void *dst, int dst_dtype, const S *src, int64_t n,
                             cudaStream_t s) {
  const unsigned g = blocks_for(n);
  if (dst_dtype == TG_F32)
    TG_LAUNCH((cast_kernel<float, S>), g, TG_THREADS, 0, s, (float *)dst, src, n);
  else if (dst_dtype == TG_F64)
    TG_LAUNCH((cast_kernel<double, S>), g, TG_THREADS, 0, s, (double *)dst, src, n);
  else
    TG_LAUNCH((cast_kernel<int64_t, S>), g, TG_THREADS, 0, s, (int64_t *)dst, src, n);
}

extern "C" int tg__cuda_cast(void *dst, int dst_dtype, const void *src, int src_dtype,
                             int64_t n, int device) {
  cudaStream_t s = tg_stream(device);
  if (!s)
    return -1;
  if (n == 0)
    return 0;
  if (dst_dtype == src_dtype)
    return TG_CUDA(cudaMemcpyAsync(dst, src,
                                   (size_t)n * tg_dtype_size((tg_dtype)dst_dtype),
                                   cudaMemcpyDeviceToDevice, s));
  if (src_dtype == TG_F32)
    launch_cast_from(dst, dst_dtype, (const float *)src, n, s);
  else if (src_dtype == TG_F64)
    launch_cast_from(dst, dst_dtype, (const double *)src, n, s);
  else
    launch_cast_from(dst, dst_dtype, (const int64_t *)src, n, s);
  return TG_CUDA_LAUNCHED(cast_kernel);
}

extern "C" int tg__cuda_axpby(void *dst, double alpha, const void *src, double beta,
                              int dtype, int64_t n, int device) {
  cudaStream_t s = tg_stream(device);
  if (!s)
    return -1;
  if (n == 0)
    return 0;
  const unsigned g = blocks_for(n);
  if (dtype == TG_F32)
    TG_LAUNCH(axpby_kernel<float>, g, TG_THREADS, 0, s, (float *)dst, (float)alpha,
              (const float *)src, (float)beta, n);
  else
    TG_LAUNCH(axpby_kernel<double>, g, TG_THREADS, 0, s, (double *)dst, alpha,
              (const double *)src, beta, n);
  return TG_CUDA_LAUNCHED(axpby_kernel);
}

extern "C" int tg__cuda_add_i64(void *p, int64_t n, int64_t v, int device) {
  cudaStream_t s = tg_stream(device);
  if (!s)
    return -1;
  if (n == 0)
    return 0;
  TG_LAUNCH(add_i64_kernel, blocks_for(n), TG_THREADS, 0, s, (int64_t *)p, n, v);
  return TG_CUDA_LAUNCHED(add_i64_kernel);
}

/* A small device buffer for results read back by the host. */
static void *scratch(size_t bytes, int device) { return tg__cuda_malloc(bytes, device); }

extern "C" int tg__cuda_sumsq_add(const void *p, int dtype, int64_t n, int device,
                                  double *acc) {
  cudaStream_t s = tg_stream(device);
  if (!s)
    return -1;
  if (n == 0)
    return 0;
  const unsigned max_partials = 1024, b = tg__cuda_blocks(n, TG_THREADS);
  const unsigned g = b < max_partials ? b : max_partials;
  double *partial = (double *)scratch(g * sizeof(double), device);
  if (!partial)
    return -1;
  if (dtype == TG_F32)
    TG_LAUNCH(sumsq_kernel<float>, g, TG_THREADS, 0, s, (const float *)p, n, partial);
  else
    TG_LAUNCH(sumsq_kernel<double>, g, TG_THREADS, 0, s, (const double *)p, n, partial);
  int rc = TG_CUDA_LAUNCHED(sumsq_kernel);
  if (rc == 0) {
    auto *k = &tg_sum_partials<double, true>;
    TG_LAUNCH(k, 1, TG_THREADS, 0, s, (const double *)partial, (int)g, acc);
    rc = TG_CUDA_LAUNCHED(tg_sum_partials);
  }
  /* stream-ordered: the next launch that takes this block runs after the sum */
  tg__cuda_free(partial, g * sizeof(double), device);
  return rc;
}

extern "C" int tg__cuda_sumsq(const void *p, int dtype, int64_t n, int device,
                              double *out) {
  *out = 0;
  double *acc = (double *)scratch(sizeof(double), device);
  if (!acc)
    return -1;
  int rc = tg__cuda_fill(acc, TG_F64, 1, 0, device);
  if (rc == 0)
    rc = tg__cuda_sumsq_add(p, dtype, n, device, acc);
  if (rc == 0)
    rc = TG_CUDA(cudaMemcpyAsync(out, acc, sizeof *out, cudaMemcpyDeviceToHost,
                                 tg_stream(device)));
  if (rc == 0)
    rc = tg__cuda_wait(device);
  tg__cuda_free(acc, sizeof(double), device);
  return rc;
}

extern "C" int tg__cuda_first_nonfinite(const void *p, int dtype, int64_t n, int device,
                                        int64_t *index) {
  cudaStream_t s = tg_stream(device);
  if (!s)
    return -1;
  *index = -1;
  if (n == 0)
    return 0;
  long long *first = (long long *)scratch(sizeof *first, device);
  if (!first)
    return -1;
  /* All bits set: -1, larger than any index as unsigned. */
  int rc = TG_CUDA(cudaMemsetAsync(first, 0xff, sizeof *first, s));
  if (rc == 0) {
    const unsigned g = blocks_for(n);
    if (dtype == TG_F32)
      TG_LAUNCH(nonfinite_kernel<float>, g, TG_THREADS, 0, s, (const float *)p, n, first);
    else
      TG_LAUNCH(nonfinite_kernel<double>, g, TG_THREADS, 0, s, (const double *)p, n,
                first);
    rc = TG_CUDA_LAUNCHED(nonfinite_kernel);
  }
  long long found = -1;
  if (rc == 0)
    rc = TG_CUDA(cudaMemcpyAsync(&found, first, sizeof found, cudaMemcpyDeviceToHost, s));
  if (rc == 0)
    rc = tg__cuda_wait(device);
  tg__cuda_free(first, sizeof *first, device);
  *index = found;
  return rc;
}

extern "C" int tg__cuda_strided_copy(void *dst, const int64_t *dst_strides,
                                     int64_t dst_off, const void *src,
                                     const int64_t *src_strides, int64_t src_off,
                                     const int64_t *shape, int nd, int64_t n, size_t elem,
                                     int device) {
  cudaStream_t s = tg_stream(device);
  if (!s)
    return -1;
  if (n == 0)
    return 0;
  strides st;
  st.nd = nd;
  for (int k = 0; k < nd; k++) {
    st.shape[k] = shape[k];
    st.d[k] = dst_strides[k];
    st.s[k] = src_strides[k];
  }
  const unsigned g = blocks_for(n);
  if (elem == 4)
    TG_LAUNCH(strided_copy_kernel<unsigned>, g, TG_THREADS, 0, s, (unsigned *)dst,
              dst_off, (const unsigned *)src, src_off, st, n);
  else
    TG_LAUNCH(strided_copy_kernel<unsigned long long>, g, TG_THREADS, 0, s,
              (unsigned long long *)dst, dst_off, (const unsigned long long *)src,
              src_off, st, n);
  return TG_CUDA_LAUNCHED(strided_copy_kernel);
}
