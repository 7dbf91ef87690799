/* softmax and log_softmax on CUDA (behind the tables of softmax.c), with the CPU's
 * formulas: one thread per position of [outer, inner], looping over r (consecutive
 * threads take consecutive inner positions, so the loads coalesce when inner > 1). */
#include "runtime/cuda_common.cuh"

#include "ops/loss/loss_cuda.h"
#include "tapegrad.h"

#include <math.h>

namespace {

template <typename T>
__global__ void softmax_kernel(bool log_out, const T *x, int64_t outer, int64_t r,
                               int64_t inner, T *y) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < outer * inner;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = i / inner, k = i % inner;
    const T *xp = x + o * r * inner + k;
    T *yp = y + o * r * inner + k;
    T m = -INFINITY;
    for (int64_t j = 0; j < r; j++)
      m = xp[j * inner] > m ? xp[j * inner] : m;
    double sum = 0;
    for (int64_t j = 0; j < r; j++) {
      const T e = exp(xp[j * inner] - m);
      if (!log_out)
        yp[j * inner] = e;
      sum += e;
    }
    const T f = (T)(log_out ? log(sum) : 1.0 / sum);
    for (int64_t j = 0; j < r; j++)
      yp[j * inner] = log_out ? (xp[j * inner] - m) - f : yp[j * inner] * f;
  }
}

template <typename T>
__global__ void softmax_backward_kernel(bool log_out, const T *y, const T *g,
                                        int64_t outer, int64_t r, int64_t inner, T *dx) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < outer * inner;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t base = i / inner * r * inner + i % inner;
    double acc = 0;
    for (int64_t j = 0; j < r; j++) {
      const int64_t e = base + j * inner;
      acc += log_out ? (double)g[e] : (double)g[e] * (double)y[e];
    }
    const T dot = (T)acc;
    for (int64_t j = 0; j < r; j++) {
      const int64_t e = base + j * inner;
      dx[e] = log_out ? g[e] - exp(y[e]) * dot : y[e] * (g[e] - dot);
    }
  }
}

} // namespace

extern "C" int tg__softmax_cuda_forward(int dtype, bool log_out, const void *x,
                                        int64_t outer, int64_t r, int64_t inner, void *y,
                                        int device) {
  return tg_launch_float(dtype, r ? outer * inner : 0, device,
                         [&](auto z, unsigned g, cudaStream_t st) {
                           using T = decltype(z);
                           TG_LAUNCH(softmax_kernel<T>, g, TG_THREADS, 0, st, log_out,
                                     (const T *)x, outer, r, inner, (T *)y);
                           return TG_CUDA_LAUNCHED(softmax_kernel);
                         });
}

extern "C" int tg__softmax_cuda_backward(int dtype, bool log_out, const void *y,
                                         const void *gr, int64_t outer, int64_t r,
                                         int64_t inner, void *dx, int device) {
  return tg_launch_float(
      dtype, r ? outer * inner : 0, device, [&](auto z, unsigned g, cudaStream_t st) {
        using T = decltype(z);
        TG_LAUNCH(softmax_backward_kernel<T>, g, TG_THREADS, 0, st, log_out, (const T *)y,
                  (const T *)gr, outer, r, inner, (T *)dx);
        return TG_CUDA_LAUNCHED(softmax_backward_kernel);
      });
}

/* ------------------------------------------------------------------ losses -- */
/* One thread per position (class losses) or element (pointwise), losses summed in
 * double through per-block partials in a fixed order, as the CPU sums in double. No
 * launcher waits for the device: the targets are checked by a kernel into a deferred
 * check (tg__cuda_check_targets), the reduction is finished by a kernel into the
 * result, and the scale the backward needs stays on the device in acc (loss_cuda.h). A
 * target out of range gives NaN where it is used and is never read past. */

namespace {

/* Target k's class weight (1 without weights), 0 where k is ignore_index, NaN for a
 * target outside [0, C) (reported by the deferred check). */
template <typename T>
__device__ inline double picked_weight(const T *w, int64_t k, int64_t C, int64_t ignore) {
  return k == ignore ? 0 : k < 0 || k >= C ? (double)NAN : w ? (double)w[k] : 1;
}

/* slot[0] = the smallest position whose target is outside [0, C) and not ignore. */
__global__ void check_targets_kernel(const int64_t *t, int64_t n, int64_t C,
                                     int64_t ignore, unsigned long long *slot) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    if (t[i] != ignore && (t[i] < 0 || t[i] >= C))
      atomicMin(slot, (unsigned long long)i);
}

/* slot[1] = the target at slot[0], once check_targets_kernel has run. */
__global__ void check_targets_value(const int64_t *t, unsigned long long *slot) {
  if (slot[0] != ~0ull)
    slot[1] = (unsigned long long)t[slot[0]];
}

/* part[b] = sum of v over block b's grid-stride elements. */
__global__ void partial_sums(const double *v, int64_t n, double *part) {
  __shared__ double scratch[32];
  double acc = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    acc += v[i];
  acc = tg_block_sum(acc, scratch);
  if (threadIdx.x == 0)
    part[blockIdx.x] = acc;
}

/* *W = sum of w[0, C) (C without weights), by one block in a fixed order. */
template <typename T>
__global__ void weight_sum_kernel(const T *w, int64_t C, double *W) {
  __shared__ double scratch[32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
    acc += w ? (double)w[i] : 1.0;
  acc = tg_block_sum(acc, scratch);
  if (threadIdx.x == 0)
    *W = acc;
}

/* The reduction, from acc[0] (the losses' sum) and the divisor (acc[1], or count when
 * count >= 0): out[0] (NULL for none) and acc[2] = dloss/dloss_i. A mean over nothing
 * is 0/0 = NaN, as PyTorch (and loss.c's finish_reduction). */
template <typename T>
__global__ void finish_kernel(int reduction, double count, T *out, double *acc) {
  const double w = count >= 0 ? count : acc[1];
  if (reduction == TG_REDUCTION_MEAN) {
    out[0] = (T)(acc[0] / w);
    acc[2] = 1.0 / w;
  } else {
    if (out)
      out[0] = (T)acc[0];
    acc[2] = 1.0;
  }
}

/* Cross-entropy with class weights w (NULL: all 1, W = *Wp their sum) and label
 * smoothing s, loss.c's formula: loss = (1 - s) w_t (lse - x_t) + s/C sum_c w_c (lse -
 * x_c), 0 where ignored; wp gets w_t, 0 where ignored. */
template <typename T>
__global__ void ce_forward_kernel(const T *x, const int64_t *t, const T *w, double s,
                                  const double *Wp, int64_t outer, int64_t C,
                                  int64_t inner, int64_t ignore, T *M, T *LS, T *L,
                                  double *lp, double *wp) {
  const double W = *Wp;
  for (int64_t pos = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; pos < outer * inner;
       pos += (int64_t)gridDim.x * blockDim.x) {
    const T *xp = x + pos / inner * C * inner + pos % inner;
    T m = -INFINITY;
    for (int64_t c = 0; c < C; c++)
      m = xp[c * inner] > m ? xp[c * inner] : m;
    double sum = 0, wd = 0; /* wd = sum_c w_c (x_c - m), smoothing's */
    for (int64_t c = 0; c < C; c++) {
      const T d = xp[c * inner] - m;
      sum += (T)exp(d);
      if (s > 0)
        wd += (w ? (double)w[c] : 1.0) * (double)d;
    }
    const int64_t k = t[pos];
    const double log_sum = log(sum);
    M[pos] = m;
    LS[pos] = (T)log_sum;
    const double wt = picked_weight(w, k, C, ignore);
    double l = 0;
    if (k != ignore) {
      const bool valid = k >= 0 && k < C;
      l = (1 - s) * wt * (((double)m - (valid ? (double)xp[k * inner] : 0)) + log_sum);
      if (s > 0)
        l += s / (double)C * (W * log_sum - wd);
    }
    if (L)
      L[pos] = (T)l;
    lp[pos] = l;
    wp[pos] = wt;
  }
}

/* dx = g scale [p ((1 - s) w_t + s/C W) - (1 - s) w_t [c == t] - s/C w_c], p the
 * softmax from the forward's max and log-sum-exp; scale = acc[2], W = acc[3]. */
template <typename T>
__global__ void ce_backward_kernel(const T *x, const int64_t *t, const T *w, double s,
                                   const double *acc, const T *M, const T *LS, const T *g,
                                   bool per_elem, int64_t outer, int64_t C, int64_t inner,
                                   int64_t ignore, T *dx) {
  const double scale = acc[2], W = acc[3];
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < outer * C * inner;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = i / (C * inner), c = i / inner % C, pos = o * inner + i % inner;
    const int64_t k = t[pos];
    const double gs = k == ignore ? 0 : (double)g[per_elem ? pos : 0] * scale;
    const double wt = picked_weight(w, k, C, ignore), sc = s / (double)C;
    const T a = (T)(gs * ((1 - s) * wt + sc * W)), b = (T)(gs * (1 - s) * wt);
    const T u = (T)(gs * sc * (w ? (double)w[c] : 1.0));
    const T p = exp((x[i] - M[pos]) - LS[pos]);
    dx[i] = p * a - u - (c == k ? b : (T)0);
  }
}

/* loss = -w[t] x[t] (w NULL: weight 1); wp gets w[t], 0 where ignored. */
template <typename T>
__global__ void nll_forward_kernel(const T *x, const int64_t *t, const T *w,
                                   int64_t outer, int64_t C, int64_t inner,
                                   int64_t ignore, T *L, double *lp, double *wp) {
  for (int64_t pos = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; pos < outer * inner;
       pos += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = t[pos];
    const double wk = picked_weight(w, k, C, ignore);
    const double l = k == ignore ? 0
                     : k < 0 || k >= C
                         ? (double)NAN
                         : -wk * (double)x[(pos / inner * C + k) * inner + pos % inner];
    if (L)
      L[pos] = (T)l;
    lp[pos] = l;
    wp[pos] = wk;
  }
}

/* dx[t] = -g scale w[t], scale = acc[2]; a target out of range writes nothing. */
template <typename T>
__global__ void nll_backward_kernel(const T *g, const int64_t *t, const T *w,
                                    bool per_elem, const double *acc, int64_t outer,
                                    int64_t C, int64_t inner, int64_t ignore, T *dx) {
  const double scale = acc[2];
  for (int64_t pos = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; pos < outer * inner;
       pos += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = t[pos];
    if (k != ignore && k >= 0 && k < C)
      dx[(pos / inner * C + k) * inner + pos % inner] =
          (T)(-(double)g[per_elem ? pos : 0] * scale * (w ? (double)w[k] : 1));
  }
}

template <typename T>
__global__ void pointwise_forward_kernel(int kind, const T *x, const T *t, int64_t n,
                                         T *L, double *lp) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const T xv = x[i], tv = t[i];
    const T l = kind == 0 ? (xv - tv) * (xv - tv)
                          : (xv > 0 ? xv : (T)0) - xv * tv + log1p(exp(-fabs(xv)));
    if (L)
      L[i] = l;
    lp[i] = l;
  }
}

template <typename T>
__global__ void pointwise_backward_kernel(int kind, const T *x, const T *t, const T *g,
                                          bool per_elem, const double *acc, int64_t n,
                                          T *dx, T *dt) {
  const T scale = (T)acc[2];
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const T gs = g[per_elem ? i : 0] * scale, xv = x[i], tv = t[i];
    T ddx, ddt;
    if (kind == 0) {
      ddx = (T)2 * (xv - tv) * gs;
      ddt = -ddx;
    } else {
      const T e = exp(-fabs(xv)); /* sigmoid without overflow on either side */
      const T sig = xv >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);
      ddx = (sig - tv) * gs;
      ddt = -xv * gs;
    }
    if (dx)
      dx[i] = ddx;
    if (dt)
      dt[i] = ddt;
  }
}

/* *dst = sum of v[0, n) on the device, in a fixed order (per-block partials, then
 * one block over them). */
int sum_on_device(const double *v, int64_t n, cudaStream_t st, int device, double *dst) {
  const unsigned b = tg__cuda_blocks(n, TG_THREADS), g = b < 1024 ? b : 1024;
  double *part = (double *)tg__cuda_malloc(g * sizeof(double), device);
  if (!part)
    return -1;
  TG_LAUNCH(partial_sums, g, TG_THREADS, 0, st, v, n, part);
  int rc = TG_CUDA_LAUNCHED(partial_sums);
  if (rc == 0) {
    TG_LAUNCH(tg_sum_partials<>, 1, TG_THREADS, 0, st, (const double *)part, (int)g, dst);
    rc = TG_CUDA_LAUNCHED(tg_sum_partials);
  }
  tg__cuda_free(part, g * sizeof(double), device); /* stream-ordered reuse */
  return rc;
}

/* The deferred check of n class targets t (op names it in the report). */
int check_targets(const char *op, const int64_t *t, int64_t n, int64_t C, int64_t ignore,
                  cudaStream_t st, int device) {
  if (n == 0)
    return 0;
  unsigned long long *slot = tg__cuda_check_targets(device, op, C, ignore);
  if (!slot)
    return -1;
  TG_LAUNCH(check_targets_kernel, tg__cuda_blocks(n, TG_THREADS), TG_THREADS, 0, st, t, n,
            C, ignore, slot);
  /* the launch's status only: a TG_CUDA_LAUNCH_BLOCKING wait here would report the
   * slot before check_targets_value has filled in the target */
  int rc = TG_CUDA(cudaGetLastError());
  if (rc == 0) {
    TG_LAUNCH(check_targets_value, 1, 1, 0, st, t, slot);
    rc = TG_CUDA_LAUNCHED(check_targets_value);
  }
  return rc;
}

/* The frame of every forward: acc[0, 2) = 0 and, for n > 0, launch(stream, lp, wp,
 * blocks) fills lp [n] (the losses) and, when count < 0, wp [n] (the divisor's terms:
 * the picked weights; NULL when count >= 0 divides instead); then acc[0] = sum lp,
 * acc[1] = sum wp and the reduction's result into out (T of dtype; NULL for none) and
 * acc[2]. */
template <typename F>
static int reduce_positions(int dtype, int64_t n, int reduction, double count, void *out,
                            double *acc, int device, F &&launch) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  const bool weights = count < 0;
  int rc = TG_CUDA(cudaMemsetAsync(acc, 0, 2 * sizeof *acc, st));
  const size_t bytes = (size_t)(n * (weights ? 2 : 1)) * sizeof(double);
  double *lp = n > 0 && rc == 0 ? (double *)tg__cuda_malloc(bytes, device) : NULL;
  if (n > 0 && !lp)
    return -1;
  if (n > 0) {
    rc =
        launch(st, lp, weights ? lp + n : (double *)NULL, tg__cuda_blocks(n, TG_THREADS));
    if (rc == 0 && reduction != TG_REDUCTION_NONE)
      rc = sum_on_device(lp, n, st, device, acc);
    if (rc == 0 && reduction != TG_REDUCTION_NONE && weights)
      rc = sum_on_device(lp + n, n, st, device, acc + 1);
    tg__cuda_free(lp, bytes, device);
  }
  if (rc == 0) {
    tg_float_dispatch(dtype, [&](auto z) {
      using T = decltype(z);
      TG_LAUNCH(finish_kernel<T>, 1, 1, 0, st, reduction, count, (T *)out, acc);
    });
    rc = TG_CUDA_LAUNCHED(finish_kernel);
  }
  return rc;
}

} // namespace

extern "C" int tg__loss_cuda_ce_forward(int dtype, const char *op, const void *x,
                                        const int64_t *t, const void *w, double smoothing,
                                        int64_t outer, int64_t C, int64_t inner,
                                        int64_t ignore, int reduction, void *stats,
                                        void *L, void *out, double *acc, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  const int64_t npos = outer * inner;
  if (check_targets(op, t, npos, C, ignore, st, device) < 0)
    return -1;
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(weight_sum_kernel<T>, 1, TG_THREADS, 0, st, (const T *)w, C, acc + 3);
  });
  if (TG_CUDA_LAUNCHED(weight_sum_kernel) < 0)
    return -1;
  auto launch = [&](cudaStream_t s, double *lp, double *wp, unsigned g) {
    tg_float_dispatch(dtype, [&](auto z) {
      using T = decltype(z);
      TG_LAUNCH(ce_forward_kernel<T>, g, TG_THREADS, 0, s, (const T *)x, t, (const T *)w,
                smoothing, (const double *)(acc + 3), outer, C, inner, ignore, (T *)stats,
                (T *)stats + npos, (T *)L, lp, wp);
    });
    return TG_CUDA_LAUNCHED(ce_forward_kernel);
  };
  return reduce_positions(dtype, npos, reduction, -1, out, acc, device, launch);
}

extern "C" int tg__loss_cuda_ce_backward(int dtype, const void *x, const int64_t *t,
                                         const void *w, double smoothing,
                                         const double *acc, const void *stats,
                                         const void *gr, bool per_elem, int64_t outer,
                                         int64_t C, int64_t inner, int64_t ignore,
                                         void *dx, int device) {
  const int64_t npos = outer * inner;
  return tg_launch_float(
      dtype, npos * C, device, [&](auto z, unsigned g, cudaStream_t st) {
        using T = decltype(z);
        TG_LAUNCH(ce_backward_kernel<T>, g, TG_THREADS, 0, st, (const T *)x, t,
                  (const T *)w, smoothing, acc, (const T *)stats, (const T *)stats + npos,
                  (const T *)gr, per_elem, outer, C, inner, ignore, (T *)dx);
        return TG_CUDA_LAUNCHED(ce_backward_kernel);
      });
}

extern "C" int tg__loss_cuda_nll_forward(int dtype, const char *op, const void *x,
                                         const int64_t *t, const void *w, int64_t outer,
                                         int64_t C, int64_t inner, int64_t ignore,
                                         int reduction, void *L, void *out, double *acc,
                                         int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  const int64_t npos = outer * inner;
  if (check_targets(op, t, npos, C, ignore, st, device) < 0)
    return -1;
  auto launch = [&](cudaStream_t s, double *lp, double *wp, unsigned g) {
    tg_float_dispatch(dtype, [&](auto z) {
      using T = decltype(z);
      TG_LAUNCH(nll_forward_kernel<T>, g, TG_THREADS, 0, s, (const T *)x, t, (const T *)w,
                outer, C, inner, ignore, (T *)L, lp, wp);
    });
    return TG_CUDA_LAUNCHED(nll_forward_kernel);
  };
  return reduce_positions(dtype, npos, reduction, -1, out, acc, device, launch);
}

extern "C" int tg__loss_cuda_nll_backward(int dtype, const void *gr, const int64_t *t,
                                          const void *w, bool per_elem, const double *acc,
                                          int64_t outer, int64_t C, int64_t inner,
                                          int64_t ignore, void *dx, int device) {
  return tg_launch_float(
      dtype, outer * inner, device, [&](auto z, unsigned g, cudaStream_t st) {
        using T = decltype(z);
        TG_LAUNCH(nll_backward_kernel<T>, g, TG_THREADS, 0, st, (const T *)gr, t,
                  (const T *)w, per_elem, acc, outer, C, inner, ignore, (T *)dx);
        return TG_CUDA_LAUNCHED(nll_backward_kernel);
      });
}

extern "C" int tg__loss_cuda_pointwise_forward(int kind, int dtype, const void *x,
                                               const void *t, int64_t n, int reduction,
                                               void *L, void *out, double *acc,
                                               int device) {
  auto launch = [&](cudaStream_t st, double *lp, double *, unsigned g) {
    tg_float_dispatch(dtype, [&](auto z) {
      using T = decltype(z);
      TG_LAUNCH(pointwise_forward_kernel<T>, g, TG_THREADS, 0, st, kind, (const T *)x,
                (const T *)t, n, (T *)L, lp);
    });
    return TG_CUDA_LAUNCHED(pointwise_forward_kernel);
  };
  return reduce_positions(dtype, n, reduction, (double)n, out, acc, device, launch);
}

extern "C" int tg__loss_cuda_pointwise_backward(int kind, int dtype, const void *x,
                                                const void *t, const void *gr,
                                                bool per_elem, const double *acc,
                                                int64_t n, void *dx, void *dt,
                                                int device) {
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned g, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(pointwise_backward_kernel<T>, g, TG_THREADS, 0, st, kind, (const T *)x,
              (const T *)t, (const T *)gr, per_elem, acc, n, (T *)dx, (T *)dt);
    return TG_CUDA_LAUNCHED(pointwise_backward_kernel);
  });
}
