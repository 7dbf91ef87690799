/* LayerNorm on CUDA: the kernels behind layer_norm.c's CUDA table, with the CPU's
 * semantics, statistics layout (pivot, dmean, rstd per row) and per-element formulas
 * (norm_tmpl.h's affine_vec and dx_vec).
 *
 * Forward: one block per row; the mean, then the sum of squared deviations from it,
 * are block sums in double (two passes over the row, which stays in L1/L2), so a row
 * of mean 1e4 and std 1e-3 keeps its digits and every run gives the same bits.
 * Backward: one block per row for dx (its two sums in double, then the formula);
 * dweight and dbias per column: blocks of 256 columns by a chunk of rows each write
 * their partial sums (rows in order), and one thread per column adds the chunks in
 * order. No atomics: bitwise reproducible. */
#include "runtime/cuda_common.cuh"

#include "ops/norm/layer_norm.h"

#include <math.h>

namespace {

template <typename T>
__global__ void ln_fwd(const T *x, const T *w, const T *b, int64_t D, double eps, T *y,
                       double *stats) {
  __shared__ double scratch[32];
  const int64_t r = blockIdx.x;
  const T *xr = x + r * D;
  double s1 = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
    s1 += (double)xr[i];
  const double mean = D > 0 ? tg_block_sum(s1, scratch) / (double)D : 0;
  double s2 = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const double d = (double)xr[i] - mean;
    s2 += d * d;
  }
  const double var = D > 0 ? tg_block_sum(s2, scratch) / (double)D : 0;
  const double pivot = (double)(T)mean, dmean = mean - pivot;
  const double rstd = 1.0 / sqrt(var + eps); /* NaN where var + eps < 0, as the CPU */
  if (stats && threadIdx.x == 0) {
    stats[3 * r] = pivot;
    stats[3 * r + 1] = dmean;
    stats[3 * r + 2] = rstd;
  }
  const T p = (T)pivot, rs = (T)rstd, s = (T)(-dmean * rstd);
  T *yr = y + r * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const T v = (xr[i] - p) * rs + s;
    yr[i] = w ? v * w[i] + b[i] : v;
  }
}

/* dx = (gd - A/D) * rstd + c2 * (x - p) + c3 per row, gd = gamma * dy,
 * A = sum(gd), B = sum(gd * (x - mean)), c2 = -rstd^3 * B / D, c3 = -c2 * dmean. */
template <typename T>
__global__ void ln_bwd_dx(const T *dy, const T *x, const T *w, const double *stats,
                          int64_t D, T *dx) {
  __shared__ double scratch[32];
  const int64_t r = blockIdx.x, off = r * D;
  const double dmean = stats[3 * r + 1], rstd = stats[3 * r + 2];
  const T p = (T)stats[3 * r];
  double a = 0, bs = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const T g = w ? w[i] * dy[off + i] : dy[off + i];
    a += (double)g;
    bs += (double)(g * (x[off + i] - p));
  }
  const double A = tg_block_sum(a, scratch);
  const double B = tg_block_sum(bs, scratch) - A * dmean;
  const double c2 = -rstd * rstd * rstd * B / (double)D;
  const T m = (T)(A / (double)D), rs = (T)rstd, c2t = (T)c2, c3 = (T)(-c2 * dmean);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const T g = w ? w[i] * dy[off + i] : dy[off + i];
    dx[off + i] = (g - m) * rs + c2t * (x[off + i] - p) + c3;
  }
}

enum { COLS = 256 }; /* columns per parameter-gradient block */

/* Block (tile, chunk): columns tile*COLS.., rows chunk*rows.. in order; part gets
 * (dweight, dbias) partials, [chunks, D, 2]. xhat = (x - p) * rstd + s as forward. */
template <typename T>
__global__ void ln_bwd_param_part(const T *dy, const T *x, const double *stats, int64_t M,
                                  int64_t D, int64_t rows, int64_t tiles, double *part) {
  const int64_t tile = blockIdx.x % tiles, chunk = blockIdx.x / tiles;
  const int64_t c = tile * COLS + threadIdx.x;
  if (c >= D)
    return;
  const int64_t r0 = chunk * rows, r1 = r0 + rows < M ? r0 + rows : M;
  double gw = 0, gb = 0;
  for (int64_t r = r0; r < r1; r++) {
    const T p = (T)stats[3 * r], rs = (T)stats[3 * r + 2];
    const T s = (T)(-stats[3 * r + 1] * stats[3 * r + 2]);
    const T g = dy[r * D + c];
    gw += (double)(g * ((x[r * D + c] - p) * rs + s));
    gb += (double)g;
  }
  part[2 * (chunk * D + c)] = gw;
  part[2 * (chunk * D + c) + 1] = gb;
}

template <typename T>
__global__ void ln_bwd_param_sum(const double *part, int64_t chunks, int64_t D, T *dw,
                                 T *db) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= D)
    return;
  double gw = 0, gb = 0;
  for (int64_t k = 0; k < chunks; k++) {
    gw += part[2 * (k * D + c)];
    gb += part[2 * (k * D + c) + 1];
  }
  if (dw)
    dw[c] = (T)gw;
  if (db)
    db[c] = (T)gb;
}

template <typename T>
int param_grads(const T *dy, const T *x, const double *stats, int64_t M, int64_t D, T *dw,
                T *db, int device, cudaStream_t st) {
  /* Chunks of at least 32 rows, about four blocks per multiprocessor in all. */
  const int64_t tiles = (D + COLS - 1) / COLS;
  int64_t chunks = (4 * tg__cuda_sm_count(device) + tiles - 1) / tiles;
  const int64_t max_chunks = (M + 31) / 32;
  chunks = chunks > max_chunks ? max_chunks : chunks < 1 ? 1 : chunks;
  const int64_t rows = (M + chunks - 1) / chunks;
  chunks = (M + rows - 1) / rows;
  const size_t bytes = (size_t)(chunks * D * 2) * sizeof(double);
  double *part = (double *)tg__cuda_malloc(bytes, device);
  if (!part)
    return -1;
  TG_LAUNCH(ln_bwd_param_part<T>, (unsigned)(tiles * chunks), COLS, 0, st, dy, x, stats,
            M, D, rows, tiles, part);
  int rc = TG_CUDA_LAUNCHED(ln_bwd_param_part);
  if (rc == 0) {
    TG_LAUNCH(ln_bwd_param_sum<T>, tg__cuda_blocks(D, 128), 128, 0, st, part, chunks, D,
              dw, db);
    rc = TG_CUDA_LAUNCHED(ln_bwd_param_sum);
  }
  tg__cuda_free(part, bytes, device); /* stream-ordered: reused after these */
  return rc;
}

} // namespace

extern "C" int tg__ln_cuda_forward(int dtype, const void *x, const void *w, const void *b,
                                   int64_t M, int64_t D, double eps, void *y,
                                   double *stats, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (M == 0)
    return 0;
  int rc = 0;
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    TG_LAUNCH(ln_fwd<T>, (unsigned)M, tg_threads_for(D, 512), 0, st, (const T *)x,
              (const T *)w, (const T *)b, D, eps, (T *)y, stats);
    rc = TG_CUDA_LAUNCHED(ln_fwd);
  });
  return rc;
}

extern "C" int tg__ln_cuda_backward(int dtype, const void *dy, const void *x,
                                    const void *w, const double *stats, int64_t M,
                                    int64_t D, void *dx, void *dw, void *db, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (M == 0 || D == 0) { /* no rows: parameter gradients are zero; nothing else */
    const size_t es = dtype == TG_F32 ? 4 : 8;
    if (dw && TG_CUDA(cudaMemsetAsync(dw, 0, (size_t)D * es, st)) < 0)
      return -1;
    if (db && TG_CUDA(cudaMemsetAsync(db, 0, (size_t)D * es, st)) < 0)
      return -1;
    return 0;
  }
  int rc = 0;
  tg_float_dispatch(dtype, [&](auto z) {
    using T = decltype(z);
    const T *DY = (const T *)dy, *X = (const T *)x;
    if (dx) {
      TG_LAUNCH(ln_bwd_dx<T>, (unsigned)M, tg_threads_for(D, 512), 0, st, DY, X,
                (const T *)w, stats, D, (T *)dx);
      rc = TG_CUDA_LAUNCHED(ln_bwd_dx);
    }
    if (rc == 0 && (dw || db))
      rc = param_grads<T>(DY, X, stats, M, D, (T *)dw, (T *)db, device, st);
  });
  return rc;
}
