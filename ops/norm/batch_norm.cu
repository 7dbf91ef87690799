/* BatchNorm on CUDA: the kernels behind batch_norm.c's CUDA table, with the CPU's
 * semantics (batch statistics with the biased variance, running stats updated with
 * the unbiased one; running stats in evaluation), statistics layout (pivot, dmean,
 * rstd per channel) and per-element formulas.
 *
 * Channel c's elements are the N segments x[n, c, 0..HW). Its count = N * HW elements
 * are split into S chunks (S blocks per channel, about two blocks per multiprocessor
 * in all, chunks of at least 2048 elements):
 *  - forward statistics: each block reduces its chunk to (count, mean, M2), the mean
 *    and then the squared deviations from it as block sums in double (the chunk is
 *    read twice, the second time from cache); one thread per channel merges the S
 *    moments in order with Chan's formula, writes the statistics and updates the
 *    running stats;
 *  - backward: each block sums dy and dy * (x - p) over its chunk in double; one
 *    thread per channel adds the S partials in order and writes dweight and dbias;
 *  - y and dx: elementwise grids.
 * No atomics: bitwise reproducible. */
#include "runtime/cuda_common.cuh"

#include "ops/norm/batch_norm.h"

#include <math.h>

namespace {

struct moments {
  double n, mean, m2; /* count, mean, sum of squared deviations */
};

/* Chunk j0..j1 of channel c: element j is x[(j / HW) * C + c][j % HW]. */
template <typename T>
__device__ inline T at(const T *x, int64_t j, int64_t c, int64_t C, int64_t HW) {
  return x[((j / HW) * C + c) * HW + j % HW];
}

struct split {
  int64_t S, chunk; /* blocks per channel, elements per block */
};

split split_for(int64_t C, int64_t count, int device) {
  const int64_t max_s = (count + 2047) / 2048;
  int64_t S = (2 * tg__cuda_sm_count(device) + C - 1) / C;
  S = S > max_s ? max_s : S;
  S = S < 1 ? 1 : S;
  const int64_t chunk = (count + S - 1) / S;
  if (chunk > 0)
    S = (count + chunk - 1) / chunk;
  return {S, chunk};
}

template <typename T>
__global__ void bn_fwd_partial(const T *x, int64_t C, int64_t HW, int64_t count, split sp,
                               moments *part) {
  __shared__ double scratch[32];
  const int64_t c = blockIdx.x / sp.S, s = blockIdx.x % sp.S;
  const int64_t j0 = s * sp.chunk, j1 = j0 + sp.chunk < count ? j0 + sp.chunk : count;
  const int64_t k = j1 > j0 ? j1 - j0 : 0;
  double s1 = 0;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x)
    s1 += (double)at(x, j, c, C, HW);
  const double mean = k > 0 ? tg_block_sum(s1, scratch) / (double)k : 0;
  double s2 = 0;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    const double d = (double)at(x, j, c, C, HW) - mean;
    s2 += d * d;
  }
  const double m2 = tg_block_sum(s2, scratch);
  if (threadIdx.x == 0)
    part[blockIdx.x] = {(double)k, mean, m2};
}

/* One thread per channel: the S moments merged in order, the statistics, the running
 * stats' update (count > 0), as bn_forward_cpu. Without part (evaluation): the
 * statistics from the running stats. */
template <typename T>
__global__ void bn_fwd_stats(const moments *part, int64_t C, int64_t S, int64_t count,
                             double momentum, double eps, T *rm, T *rv, double *stats) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C)
    return;
  double *st = stats + 3 * c;
  if (!part) {
    st[0] = (double)rm[c];
    st[1] = 0;
    st[2] = 1.0 / sqrt((double)rv[c] + eps);
    return;
  }
  moments m = part[c * S];
  for (int64_t k = 1; k < S; k++) {
    const moments b = part[c * S + k];
    const double n = m.n + b.n;
    if (n == 0)
      continue;
    const double d = b.mean - m.mean, f = b.n / n;
    m = {n, m.mean + d * f, m.m2 + b.m2 + d * d * m.n * f};
  }
  const double mean = count > 0 ? m.mean : 0;
  double var = count > 0 ? m.m2 / (double)count : 0;
  var = var > 0 ? var : 0;
  const double pivot = (double)(T)mean;
  st[0] = pivot;
  st[1] = mean - pivot;
  st[2] = 1.0 / sqrt(var + eps); /* NaN where var + eps < 0, as the CPU */
  if (rm && count > 0) {
    const double unbiased = var * (double)count / (double)(count - 1);
    rm[c] = (T)((1 - momentum) * (double)rm[c] + momentum * mean);
    rv[c] = (T)((1 - momentum) * (double)rv[c] + momentum * unbiased);
  }
}

/* y = (x - p) * a + s, a = rstd * gamma, s = beta - dmean * a (in double, as the
 * CPU). */
template <typename T>
__global__ void bn_fwd_apply(const T *x, const T *w, const T *b, const double *stats,
                             int64_t C, int64_t HW, int64_t numel, T *y) {
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < numel;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = (e / HW) % C;
    const double *st = stats + 3 * c;
    const double a = st[2] * (w ? (double)w[c] : 1.0);
    const double sh = (b ? (double)b[c] : 0.0) - st[1] * a;
    y[e] = (x[e] - (T)st[0]) * (T)a + (T)sh;
  }
}

/* (sum(dy), sum(dy * (x - p))) over the block's chunk. */
template <typename T>
__global__ void bn_bwd_partial(const T *dy, const T *x, const double *stats, int64_t C,
                               int64_t HW, int64_t count, split sp, double *part) {
  __shared__ double scratch[32];
  const int64_t c = blockIdx.x / sp.S, s = blockIdx.x % sp.S;
  const int64_t j0 = s * sp.chunk, j1 = j0 + sp.chunk < count ? j0 + sp.chunk : count;
  const T p = (T)stats[3 * c];
  double a1 = 0, a2 = 0;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    const T g = at(dy, j, c, C, HW);
    a1 += (double)g;
    a2 += (double)(g * (at(x, j, c, C, HW) - p));
  }
  a1 = tg_block_sum(a1, scratch);
  a2 = tg_block_sum(a2, scratch);
  if (threadIdx.x == 0) {
    part[2 * blockIdx.x] = a1;
    part[2 * blockIdx.x + 1] = a2;
  }
}

/* One thread per channel: sums[c] = (db, ds) with ds about the mean; dweight = ds *
 * rstd, dbias = db. */
template <typename T>
__global__ void bn_bwd_sums(const double *part, const double *stats, int64_t C, int64_t S,
                            double *sums, T *dw, T *db) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C)
    return;
  double sdb = 0, sds = 0;
  for (int64_t k = 0; k < S; k++) {
    sdb += part[2 * (c * S + k)];
    sds += part[2 * (c * S + k) + 1];
  }
  sds -= sdb * stats[3 * c + 1];
  sums[2 * c] = sdb;
  sums[2 * c + 1] = sds;
  if (dw)
    dw[c] = (T)(sds * stats[3 * c + 2]);
  if (db)
    db[c] = (T)sdb;
}

/* dx = (gamma*dy - md)*rstd + c2*(x - p) + c3; md = c2 = c3 = 0 in evaluation (sums
 * NULL), as bn_backward_cpu. */
template <typename T>
__global__ void bn_bwd_dx(const T *dy, const T *x, const T *w, const double *stats,
                          const double *sums, int64_t C, int64_t HW, int64_t numel,
                          int64_t count, T *dx) {
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < numel;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = (e / HW) % C;
    const double *st = stats + 3 * c;
    const double rstd = st[2], gamma = w ? (double)w[c] : 1.0;
    double md = 0, c2 = 0;
    if (sums) {
      md = gamma * sums[2 * c] / (double)count;
      c2 = -gamma * rstd * rstd * rstd * sums[2 * c + 1] / (double)count;
    }
    dx[e] = ((T)gamma * dy[e] - (T)md) * (T)rstd + (T)c2 * (x[e] - (T)st[0]) +
            (T)(-c2 * st[1]);
  }
}

unsigned grid_for(int64_t n) {
  const int64_t b = (n + TG_THREADS - 1) / TG_THREADS;
  return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

} // namespace

extern "C" int tg__bn_cuda_forward(int dtype, const void *x, const void *w, const void *b,
                                   void *rm, void *rv, int64_t N, int64_t C, int64_t HW,
                                   bool training, double momentum, double eps, void *y,
                                   double *stats, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (C == 0)
    return 0;
  const int64_t count = N * HW;
  const split sp = split_for(C, count, device);
  const size_t part_bytes = training ? (size_t)(C * sp.S) * sizeof(moments) : 0;
  moments *part = NULL;
  if (training && !(part = (moments *)tg__cuda_malloc(part_bytes, device)))
    return -1;
  int rc = 0;
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    if (training) {
      TG_LAUNCH(bn_fwd_partial<T>, (unsigned)(C * sp.S), tg_threads_for(sp.chunk, 512), 0,
                st, (const T *)x, C, HW, count, sp, part);
      rc = TG_CUDA_LAUNCHED(bn_fwd_partial);
    }
    if (rc == 0) {
      TG_LAUNCH(bn_fwd_stats<T>, tg__cuda_blocks(C, 128), 128, 0, st, part, C, sp.S,
                count, momentum, eps, (T *)rm, (T *)rv, stats);
      rc = TG_CUDA_LAUNCHED(bn_fwd_stats);
    }
    if (rc == 0 && count > 0) {
      TG_LAUNCH(bn_fwd_apply<T>, grid_for(N * C * HW), TG_THREADS, 0, st, (const T *)x,
                (const T *)w, (const T *)b, stats, C, HW, N * C * HW, (T *)y);
      rc = TG_CUDA_LAUNCHED(bn_fwd_apply);
    }
  });
  if (part)
    tg__cuda_free(part, part_bytes, device); /* stream-ordered: reused after these */
  return rc;
}

extern "C" int tg__bn_cuda_backward(int dtype, const void *dy, const void *x,
                                    const void *w, const double *stats, int64_t N,
                                    int64_t C, int64_t HW, bool training, void *dx,
                                    void *dw, void *db, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (C == 0)
    return 0;
  const int64_t count = N * HW, numel = N * C * HW;
  const bool need_sums = training || dw || db;
  const split sp = split_for(C, count, device);
  const size_t part_bytes =
      need_sums ? (size_t)(C * sp.S * 2 + C * 2) * sizeof(double) : 0;
  double *part = NULL;
  if (need_sums && !(part = (double *)tg__cuda_malloc(part_bytes, device)))
    return -1;
  double *sums = part ? part + C * sp.S * 2 : NULL;
  int rc = 0;
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    const T *DY = (const T *)dy, *X = (const T *)x;
    if (need_sums) {
      TG_LAUNCH(bn_bwd_partial<T>, (unsigned)(C * sp.S), tg_threads_for(sp.chunk, 512), 0,
                st, DY, X, stats, C, HW, count, sp, part);
      rc = TG_CUDA_LAUNCHED(bn_bwd_partial);
      if (rc == 0) {
        TG_LAUNCH(bn_bwd_sums<T>, tg__cuda_blocks(C, 128), 128, 0, st, part, stats, C,
                  sp.S, sums, (T *)dw, (T *)db);
        rc = TG_CUDA_LAUNCHED(bn_bwd_sums);
      }
    }
    if (rc == 0 && dx && numel > 0) {
      TG_LAUNCH(bn_bwd_dx<T>, grid_for(numel), TG_THREADS, 0, st, DY, X, (const T *)w,
                stats, training ? sums : (const double *)NULL, C, HW, numel, count,
                (T *)dx);
      rc = TG_CUDA_LAUNCHED(bn_bwd_dx);
    }
  });
  if (part)
    tg__cuda_free(part, part_bytes, device);
  return rc;
}
