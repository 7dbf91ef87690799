/* Elementwise ops on CUDA (behind tg__ew_cuda in elementwise.c): broadcasting binary
 * arithmetic, unary math and activations and their derivatives, with the CPU's
 * formulas. One thread per output element, grid-stride. */
#include "runtime/cuda_common.cuh"

#include "ops/elementwise/elementwise.h"
#include "tapegrad.h"

#include <math.h>

namespace {

/* Output shape and the inputs' strides over it, passed by value. */
struct bcast {
  int nd;
  int64_t shape[TG_MAX_DIMS], sa[TG_MAX_DIMS], sb[TG_MAX_DIMS];
};

template <typename T> __device__ inline T binary_op(int kind, T x, T y) {
  switch (kind) {
  case B_ADD:
    return x + y;
  case B_SUB:
    return x - y;
  case B_MUL:
    return x * y;
  case B_DIV:
    return x / y;
  case B_DIV_TRUNC:
    return (T)trunc((double)x / (double)y);
  case B_DIV_FLOOR:
    return (T)tg__div_floor(x, y);
  case B_POW:
    return (T)pow((double)x, (double)y);
  case B_POW_DA:
    return (T)tg__pow_da(x, y);
  default:
    return (T)tg__pow_db(x, y);
  }
}

/* same: a and b have out's shape (no index arithmetic). */
template <typename T>
__global__ void binary_kernel(int kind, const T *a, const T *b, T *out, int64_t n,
                              bcast s, bool same) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t oa = i, ob = i;
    if (!same) {
      oa = ob = 0;
      int64_t rem = i;
      for (int d = s.nd - 1; d >= 0; d--) {
        const int64_t idx = rem % s.shape[d];
        rem /= s.shape[d];
        oa += idx * s.sa[d];
        ob += idx * s.sb[d];
      }
    }
    out[i] = binary_op(kind, a[oa], b[ob]);
  }
}

template <typename T> __device__ inline T gelu(T x) {
  return (T)0.5 * x * ((T)1 + erf(x * (T)0.70710678118654752440));
}

template <typename T> __device__ inline T unary_op(int kind, T x, T p) {
  switch (kind) {
  case U_NEG:
    return -x;
  case U_EXP:
    return exp(x);
  case U_LOG:
    return log(x);
  case U_SQRT:
    return sqrt(x);
  case U_ABS:
    return fabs(x);
  case U_RELU: /* NaN propagates, as PyTorch's */
    return x <= 0 ? (T)0 : x;
  case U_LEAKY_RELU:
    return x > 0 ? x : x * p;
  case U_SIGMOID:
    return (T)1 / ((T)1 + exp(-x));
  case U_TANH:
    return tanh(x);
  case U_GELU:
    return gelu(x);
  case U_ADD_S:
    return x + p;
  case U_MUL_S:
    return x * p;
  case U_GELU_TANH:
    return (T)tg__gelu_tanh(x);
  default:
    return pow(x, p);
  }
}

template <typename T> __device__ inline T unary_grad(int kind, T x, T y, T g, T p) {
  switch (kind) {
  case U_NEG:
    return -g;
  case U_EXP:
    return g * y;
  case U_LOG:
    return g / x;
  case U_SQRT:
    return g / ((T)2 * y);
  case U_ABS:
    return x > 0 ? g : x < 0 ? -g : (T)0;
  case U_RELU: /* NaN passes the gradient, as PyTorch's threshold_backward */
    return x <= 0 ? (T)0 : g;
  case U_LEAKY_RELU:
    return x > 0 ? g : g * p;
  case U_SIGMOID:
    return g * y * ((T)1 - y);
  case U_TANH:
    return g * ((T)1 - y * y);
  case U_GELU: /* Phi(x) + x phi(x) */
    return g * ((T)0.5 * ((T)1 + erf(x * (T)0.70710678118654752440)) +
                x * exp((T)-0.5 * x * x) * (T)0.39894228040143267794);
  case U_ADD_S:
    return g;
  case U_MUL_S:
    return g * p;
  case U_GELU_TANH:
    return (T)tg__gelu_tanh_grad(x, g);
  default:
    return p == 0 ? (T)0 : g * p * pow(x, p - (T)1);
  }
}

template <typename T>
__global__ void unary_kernel(int kind, T p, const T *x, T *y, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] = unary_op(kind, x[i], p);
}

template <typename T>
__global__ void unary_grad_kernel(int kind, T p, const T *x, const T *y, const T *g,
                                  T *dx, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = unary_grad(kind, x[i], y[i], g[i], p);
}

} // namespace

extern "C" int tg__ew_cuda_binary(int kind, int dtype, const void *a, const int64_t *sa,
                                  const void *b, const int64_t *sb, const int64_t *shape,
                                  int nd, int64_t n, void *out, int device) {
  bcast s = {nd, {0}, {0}, {0}};
  bool same = true;
  int64_t stride = 1;
  for (int d = nd - 1; d >= 0; d--) {
    s.shape[d] = shape[d];
    s.sa[d] = sa[d];
    s.sb[d] = sb[d];
    same = same && (shape[d] == 1 || (sa[d] == stride && sb[d] == stride));
    stride *= shape[d];
  }
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned g, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(binary_kernel<T>, g, TG_THREADS, 0, st, kind, (const T *)a, (const T *)b,
              (T *)out, n, s, same);
    return TG_CUDA_LAUNCHED(binary_kernel);
  });
}

extern "C" int tg__ew_cuda_unary(int kind, double param, int dtype, const void *x,
                                 int64_t n, void *y, int device) {
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned g, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(unary_kernel<T>, g, TG_THREADS, 0, st, kind, (T)param, (const T *)x, (T *)y,
              n);
    return TG_CUDA_LAUNCHED(unary_kernel);
  });
}

extern "C" int tg__ew_cuda_unary_grad(int kind, double param, int dtype, const void *x,
                                      const void *y, const void *g, int64_t n, void *dx,
                                      int device) {
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned b, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(unary_grad_kernel<T>, b, TG_THREADS, 0, st, kind, (T)param, (const T *)x,
              (const T *)y, (const T *)g, (T *)dx, n);
    return TG_CUDA_LAUNCHED(unary_grad_kernel);
  });
}
