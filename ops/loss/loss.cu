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
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (outer * r * inner == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(outer * inner, TG_THREADS);
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(softmax_kernel<T>, g, TG_THREADS, 0, st, log_out, (const T *)x, outer, r,
              inner, (T *)y);
  });
  return TG_CUDA_LAUNCHED(softmax_kernel);
}

extern "C" int tg__softmax_cuda_backward(int dtype, bool log_out, const void *y,
                                         const void *gr, int64_t outer, int64_t r,
                                         int64_t inner, void *dx, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (outer * r * inner == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(outer * inner, TG_THREADS);
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(softmax_backward_kernel<T>, g, TG_THREADS, 0, st, log_out, (const T *)y,
              (const T *)gr, outer, r, inner, (T *)dx);
  });
  return TG_CUDA_LAUNCHED(softmax_backward_kernel);
}

/* ------------------------------------------------------------------ losses -- */
/* One thread per position (class losses) or element (pointwise), losses summed in
 * double through per-block partials in a fixed order, as the CPU sums in double. */

namespace {

/* Target k's class weight (1 without weights), 0 where k is ignore_index. */
template <typename T>
__device__ inline double picked_weight(const T *w, int64_t k, int64_t ignore) {
  return k == ignore ? 0 : w ? (double)w[k] : 1;
}

__global__ void count_kernel(const int64_t *t, int64_t n, int64_t C, int64_t ignore,
                             unsigned long long *count, unsigned long long *bad) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    if (t[i] == ignore)
      continue;
    if (t[i] < 0 || t[i] >= C)
      atomicMin(bad, (unsigned long long)i);
    else
      atomicAdd(count, 1ull);
  }
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

/* *total = sum of v[0, n) on the host (waits). */
int sum_to_host(const double *v, int64_t n, cudaStream_t st, int device, double *total) {
  const unsigned b = tg__cuda_blocks(n, TG_THREADS), g = b < 1024 ? b : 1024;
  double *part = (double *)tg__cuda_malloc((g + 1) * sizeof(double), device);
  if (!part)
    return -1;
  TG_LAUNCH(partial_sums, g, TG_THREADS, 0, st, v, n, part);
  int rc = TG_CUDA_LAUNCHED(partial_sums);
  if (rc == 0) {
    TG_LAUNCH(tg_sum_partials<>, 1, TG_THREADS, 0, st, (const double *)part, (int)g,
              part + g);
    rc = TG_CUDA_LAUNCHED(tg_sum_partials);
  }
  if (rc == 0)
    rc = TG_CUDA(
        cudaMemcpyAsync(total, part + g, sizeof *total, cudaMemcpyDeviceToHost, st));
  if (rc == 0)
    rc = TG_CUDA(cudaStreamSynchronize(st));
  tg__cuda_free(part, (g + 1) * sizeof(double), device);
  return rc;
}

/* Cross-entropy with class weights w (NULL: all 1, W their sum) and label smoothing s,
 * loss.c's formula: loss = (1 - s) w_t (lse - x_t) + s/C sum_c w_c (lse - x_c), 0
 * where ignored; wp (may be NULL) gets w_t, 0 where ignored. */
template <typename T>
__global__ void ce_forward_kernel(const T *x, const int64_t *t, const T *w, double s,
                                  double W, int64_t outer, int64_t C, int64_t inner,
                                  int64_t ignore, T *M, T *LS, T *L, double *lp,
                                  double *wp) {
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
    const double wt = picked_weight(w, k, ignore);
    double l = 0;
    if (k != ignore) {
      l = (1 - s) * wt * (((double)m - (double)xp[k * inner]) + log_sum);
      if (s > 0)
        l += s / (double)C * (W * log_sum - wd);
    }
    if (L)
      L[pos] = (T)l;
    lp[pos] = l;
    if (wp)
      wp[pos] = wt;
  }
}

/* dx = g scale [p ((1 - s) w_t + s/C W) - (1 - s) w_t [c == t] - s/C w_c], p the
 * softmax from the forward's max and log-sum-exp. */
template <typename T>
__global__ void ce_backward_kernel(const T *x, const int64_t *t, const T *w, double s,
                                   double W, const T *M, const T *LS, const T *g,
                                   bool per_elem, double scale, int64_t outer, int64_t C,
                                   int64_t inner, int64_t ignore, T *dx) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < outer * C * inner;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = i / (C * inner), c = i / inner % C, pos = o * inner + i % inner;
    const int64_t k = t[pos];
    const double gs = k == ignore ? 0 : (double)g[per_elem ? pos : 0] * scale;
    const double wt = picked_weight(w, k, ignore), sc = s / (double)C;
    const T a = (T)(gs * ((1 - s) * wt + sc * W)), b = (T)(gs * (1 - s) * wt);
    const T u = (T)(gs * sc * (w ? (double)w[c] : 1.0));
    const T p = exp((x[i] - M[pos]) - LS[pos]);
    dx[i] = p * a - u - (c == k ? b : (T)0);
  }
}

/* loss = -w[t] x[t] (w NULL: weight 1); wp (may be NULL) gets w[t], 0 where ignored. */
template <typename T>
__global__ void nll_forward_kernel(const T *x, const int64_t *t, const T *w,
                                   int64_t outer, int64_t C, int64_t inner,
                                   int64_t ignore, T *L, double *lp, double *wp) {
  for (int64_t pos = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; pos < outer * inner;
       pos += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = t[pos];
    const double wk = picked_weight(w, k, ignore);
    const double l =
        k == ignore ? 0 : -wk * (double)x[(pos / inner * C + k) * inner + pos % inner];
    if (L)
      L[pos] = (T)l;
    lp[pos] = l;
    if (wp)
      wp[pos] = wk;
  }
}

template <typename T>
__global__ void nll_backward_kernel(const T *g, const int64_t *t, const T *w,
                                    bool per_elem, double scale, int64_t outer, int64_t C,
                                    int64_t inner, int64_t ignore, T *dx) {
  for (int64_t pos = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; pos < outer * inner;
       pos += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = t[pos];
    if (k != ignore)
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
                                          bool per_elem, T scale, int64_t n, T *dx,
                                          T *dt) {
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

} // namespace

extern "C" int tg__loss_cuda_count_targets(const int64_t *t, int64_t n, int64_t C,
                                           int64_t ignore, int64_t *count, int64_t *bad,
                                           int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  *count = 0;
  *bad = -1;
  if (n == 0)
    return 0;
  unsigned long long *d = (unsigned long long *)tg__cuda_malloc(2 * sizeof *d, device);
  if (!d)
    return -1;
  unsigned long long h[2] = {0, 0};
  int rc = TG_CUDA(cudaMemsetAsync(d, 0, sizeof *d, st));
  if (rc == 0) /* all bits set: no bad index */
    rc = TG_CUDA(cudaMemsetAsync(d + 1, 0xff, sizeof *d, st));
  if (rc == 0) {
    TG_LAUNCH(count_kernel, tg__cuda_blocks(n, TG_THREADS), TG_THREADS, 0, st, t, n, C,
              ignore, d, d + 1);
    rc = TG_CUDA_LAUNCHED(count_kernel);
  }
  if (rc == 0)
    rc = TG_CUDA(cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, st));
  if (rc == 0)
    rc = TG_CUDA(cudaStreamSynchronize(st));
  tg__cuda_free(d, 2 * sizeof *d, device);
  *count = (int64_t)h[0];
  *bad = (int64_t)h[1];
  return rc;
}

/* The frame of every forward that sums doubles per position on the host: totals[0,
 * parts) = 0, then for n > 0 launch(stream, lp, blocks) fills lp [parts, n] (returning
 * its launch's status) and totals[p] = the sum of lp[p] (waits). */
template <typename F>
static int sum_positions(int64_t n, int parts, int device, double *totals, F &&launch) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  for (int p = 0; p < parts; p++)
    totals[p] = 0;
  if (n == 0)
    return 0;
  const size_t bytes = (size_t)(n * parts) * sizeof(double);
  double *lp = (double *)tg__cuda_malloc(bytes, device);
  if (!lp)
    return -1;
  int rc = launch(st, lp, tg__cuda_blocks(n, TG_THREADS));
  for (int p = 0; p < parts && rc == 0; p++)
    rc = sum_to_host(lp + p * n, n, st, device, totals + p);
  tg__cuda_free(lp, bytes, device);
  return rc;
}

extern "C" int tg__loss_cuda_ce_forward(int dtype, const void *x, const int64_t *t,
                                        const void *w, double smoothing, double W,
                                        int64_t outer, int64_t C, int64_t inner,
                                        int64_t ignore, void *stats, void *L,
                                        double *total, double *wsum, int device) {
  const int64_t npos = outer * inner;
  auto launch = [&](cudaStream_t st, double *lp, unsigned g) {
    tg_float_dispatch(dtype, [&](auto z) {
      using T = decltype(z);
      TG_LAUNCH(ce_forward_kernel<T>, g, TG_THREADS, 0, st, (const T *)x, t, (const T *)w,
                smoothing, W, outer, C, inner, ignore, (T *)stats, (T *)stats + npos,
                (T *)L, lp, wsum ? lp + npos : (double *)NULL);
    });
    return TG_CUDA_LAUNCHED(ce_forward_kernel);
  };
  double totals[2];
  const int rc = sum_positions(npos, wsum ? 2 : 1, device, totals, launch);
  *total = totals[0];
  if (wsum)
    *wsum = totals[1];
  return rc;
}

extern "C" int tg__loss_cuda_ce_backward(int dtype, const void *x, const int64_t *t,
                                         const void *w, double smoothing, double W,
                                         const void *stats, const void *gr, bool per_elem,
                                         double scale, int64_t outer, int64_t C,
                                         int64_t inner, int64_t ignore, void *dx,
                                         int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  const int64_t n = outer * C * inner, npos = outer * inner;
  if (n == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(n, TG_THREADS);
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(ce_backward_kernel<T>, g, TG_THREADS, 0, st, (const T *)x, t, (const T *)w,
              smoothing, W, (const T *)stats, (const T *)stats + npos, (const T *)gr,
              per_elem, scale, outer, C, inner, ignore, (T *)dx);
  });
  return TG_CUDA_LAUNCHED(ce_backward_kernel);
}

extern "C" int tg__loss_cuda_nll_weighted_forward(int dtype, const void *x,
                                                  const int64_t *t, const void *w,
                                                  int64_t outer, int64_t C, int64_t inner,
                                                  int64_t ignore, void *L, double *total,
                                                  double *wsum, int device) {
  const int64_t npos = outer * inner;
  auto launch = [&](cudaStream_t st, double *lp, unsigned g) {
    tg_float_dispatch(dtype, [&](auto z) {
      using T = decltype(z);
      TG_LAUNCH(nll_forward_kernel<T>, g, TG_THREADS, 0, st, (const T *)x, t,
                (const T *)w, outer, C, inner, ignore, (T *)L, lp,
                wsum ? lp + npos : (double *)NULL);
    });
    return TG_CUDA_LAUNCHED(nll_forward_kernel);
  };
  double totals[2];
  const int rc = sum_positions(npos, wsum ? 2 : 1, device, totals, launch);
  *total = totals[0];
  if (wsum)
    *wsum = totals[1];
  return rc;
}

extern "C" int tg__loss_cuda_nll_weighted_backward(int dtype, const void *gr,
                                                   const int64_t *t, const void *w,
                                                   bool per_elem, double scale,
                                                   int64_t outer, int64_t C,
                                                   int64_t inner, int64_t ignore,
                                                   void *dx, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  const int64_t npos = outer * inner;
  if (npos == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(npos, TG_THREADS);
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(nll_backward_kernel<T>, g, TG_THREADS, 0, st, (const T *)gr, t,
              (const T *)w, per_elem, scale, outer, C, inner, ignore, (T *)dx);
  });
  return TG_CUDA_LAUNCHED(nll_backward_kernel);
}

extern "C" int tg__loss_cuda_nll_forward(int dtype, const void *x, const int64_t *t,
                                         int64_t outer, int64_t C, int64_t inner,
                                         int64_t ignore, void *L, double *total,
                                         int device) {
  return tg__loss_cuda_nll_weighted_forward(dtype, x, t, NULL, outer, C, inner, ignore, L,
                                            total, NULL, device);
}

extern "C" int tg__loss_cuda_nll_backward(int dtype, const void *gr, const int64_t *t,
                                          bool per_elem, double scale, int64_t outer,
                                          int64_t C, int64_t inner, int64_t ignore,
                                          void *dx, int device) {
  return tg__loss_cuda_nll_weighted_backward(dtype, gr, t, NULL, per_elem, scale, outer,
                                             C, inner, ignore, dx, device);
}

extern "C" int tg__loss_cuda_pointwise_forward(int kind, int dtype, const void *x,
                                               const void *t, int64_t n, void *L,
                                               double *total, int device) {
  return sum_positions(n, 1, device, total, [&](cudaStream_t st, double *lp, unsigned g) {
    tg_float_dispatch(dtype, [&](auto z) {
      using T = decltype(z);
      TG_LAUNCH(pointwise_forward_kernel<T>, g, TG_THREADS, 0, st, kind, (const T *)x,
                (const T *)t, n, (T *)L, lp);
    });
    return TG_CUDA_LAUNCHED(pointwise_forward_kernel);
  });
}

extern "C" int tg__loss_cuda_pointwise_backward(int kind, int dtype, const void *x,
                                                const void *t, const void *gr,
                                                bool per_elem, double scale, int64_t n,
                                                void *dx, void *dt, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (n == 0)
    return 0;
  const unsigned g = tg__cuda_blocks(n, TG_THREADS);
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(pointwise_backward_kernel<T>, g, TG_THREADS, 0, st, kind, (const T *)x,
              (const T *)t, (const T *)gr, per_elem, (T)scale, n, (T *)dx, (T *)dt);
  });
  return TG_CUDA_LAUNCHED(pointwise_backward_kernel);
}
