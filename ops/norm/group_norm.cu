/* GroupNorm on CUDA: the kernels behind tg__gn_cuda (group_norm.c), same semantics,
 * statistics layout and formulas (group_norm.h) as the CPU kernels.
 *
 * x is [N, C, HW]; group (n, g) is the len = D * HW contiguous elements of channels
 * g*D .. g*D+D-1 of sample n.
 *
 * Statistics: each thread sums d = x - p_t and d^2 in T about its own pivot p_t (its
 * first element, so d is exact for x near p_t: a group of mean 1e4 and std 1e-3 keeps
 * its digits), turns them into (count, mean, M2) in double, and threads, warps and
 * blocks merge those with Chan's formula in a fixed order: no cancellation across
 * threads, and the same result on every run.
 *
 * Forward:
 *  - fused (a group fits in shared memory and there are at least as many groups as
 *    multiprocessors): one block per group reads x once into shared memory, computes
 *    the statistics, writes y once;
 *  - split (fewer groups than multiprocessors, e.g. batch-1 inference, or groups too
 *    large for shared memory): S blocks per group each reduce a chunk to moments
 *    (phase 1), then S blocks per group merge the S moments in order and normalise
 *    their chunk (phase 2), which phase 1 has just brought into L2.
 * Backward:
 *  - fused (x and dy of a group fit in shared memory): one block per group reads x and
 *    dy once, reduces sum(dy) and sum(dy * (x - p)) per channel, writes dx once;
 *  - planes: one block per (n, c) reduces the channel's sums, then one block per
 *    (n, c) computes dx from its group's sums.
 *  dweight and dbias are reduced over N from the per-(n, c) sums by one thread per
 *  channel in order: no atomics, bitwise reproducible.
 * Loads and stores are 16-byte vectors when HW is a multiple of the vector width (so
 * a vector never straddles two channels), scalars otherwise.
 *
 * Fused ReLU (tg_group_norm_relu; template parameter R of the same kernels): forward
 * writes act(y); backward masks dy by the ReLU (act_grad) wherever it reads dy, the
 * output recomputed from x, the statistics, w and b as the CPU's (norm_tmpl.h), so
 * nothing but the statistics is saved. */
#include "runtime/cuda_common.cuh"

#include "ops/norm/group_norm.h"
#include "tapegrad.h"

#include <math.h>

namespace {

/* ------------------------------------------------------------- moments -- */

struct moments {
  double n, mean, m2; /* count, mean, sum of squared deviations */
};

__device__ inline moments merge(moments a, moments b) {
  const double n = a.n + b.n;
  if (n == 0)
    return a;
  const double d = b.mean - a.mean, f = b.n / n;
  return {n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}

/* A thread's running sums about its pivot. */
template <typename T> struct shifted {
  T p, s1, s2;
  int64_t n;
  __device__ void add(T x) {
    if (n == 0)
      p = x;
    const T d = x - p;
    s1 += d;
    s2 += d * d;
    n++;
  }
  __device__ moments get() const {
    if (n == 0)
      return {0, 0, 0};
    const double k = (double)n, m = (double)s1 / k;
    const double m2 = (double)s2 - (double)s1 * m;
    return {k, (double)p + m, m2 > 0 ? m2 : 0};
  }
};

__device__ inline moments shfl_moments(moments v, int o) {
  return {__shfl_xor_sync(0xffffffffu, v.n, o), __shfl_xor_sync(0xffffffffu, v.mean, o),
          __shfl_xor_sync(0xffffffffu, v.m2, o)};
}

/* Merge over the block; every thread gets the result. scratch: 32 moments. */
__device__ moments block_moments(moments v, moments *scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  for (int o = 1; o < 32; o *= 2)
    v = merge(v, shfl_moments(v, o));
  __syncthreads();
  if (lane == 0)
    scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : moments{0, 0, 0};
  for (int o = 1; o < 32; o *= 2)
    v = merge(v, shfl_moments(v, o));
  return v;
}

/* Statistics of a group in the saved layout: mean = pivot + dmean, pivot = the mean
 * rounded to T, as the CPU's. */
struct group_stats {
  double pivot, dmean, rstd;
};

template <typename T> __device__ group_stats finish(moments m, double eps) {
  const double var = m.n > 0 ? m.m2 / m.n : 0;
  const double mean = m.n > 0 ? m.mean : 0;
  const double pivot = (double)(T)mean;
  return {pivot, mean - pivot, 1.0 / sqrt(var + eps)};
}

/* ------------------------------------------------------- element access -- */

/* Elements [begin, end) of a group (begin, end and the base multiples of V when
 * vector), each handed to f(i, value) with i relative to the group. */
template <typename T, int V, typename F>
__device__ inline void each_in(const T *base, int64_t begin, int64_t end, F f) {
  typedef typename tg_vec<T>::type vec;
  if (V > 1) {
    const vec *p = (const vec *)base;
    for (int64_t i = begin / V + threadIdx.x; i < end / V; i += blockDim.x) {
      const vec v = p[i];
      const T *e = (const T *)&v;
#pragma unroll
      for (int k = 0; k < V; k++)
        f(i * V + k, e[k]);
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
      f(i, base[i]);
  }
}

/* Per-channel coefficients of y = (x - p) * a + s, computed in double as the CPU. */
template <typename T>
__device__ inline void coefs(const group_stats &st, const T *w, const T *b, int64_t c,
                             T *a, T *s) {
  double ad, sd;
  tg__gn_affine(st.rstd, st.dmean, w ? (double)w[c] : 1.0, b ? (double)b[c] : 0.0, &ad,
                &sd);
  *a = (T)ad;
  *s = (T)sd;
}

/* v, or with R max(v, 0) with NaN kept (as torch.relu and norm_tmpl.h's act). */
template <bool R, typename T> __device__ inline T act(T v) {
  return R && v < 0 ? (T)0 : v;
}

/* dy, or with R the gradient through the ReLU that followed y = (x - p) * a + s: 0
 * where y <= 0, else dy (NaN y passes dy, as torch's threshold_backward). apply's
 * expression, so the mask is the forward's exactly. */
template <bool R, typename T> __device__ inline T act_grad(T dy, T x, T p, T a, T s) {
  return R && (x - p) * a + s <= 0 ? (T)0 : dy;
}

/* act(y)[begin, end) of the group from xs (global memory or the shared copy). */
template <typename T, int V, bool R>
__device__ inline void apply(const T *xs, T *yg, int64_t begin, int64_t end, int64_t HW,
                             int64_t c0, const group_stats &st, const T *w, const T *b) {
  typedef typename tg_vec<T>::type vec;
  const T p = (T)st.pivot;
  if (V > 1) {
    for (int64_t i = begin / V + threadIdx.x; i < end / V; i += blockDim.x) {
      T a, s;
      coefs(st, w, b, c0 + i * V / HW, &a, &s);
      vec v = ((const vec *)xs)[i];
      T *e = (T *)&v;
#pragma unroll
      for (int k = 0; k < V; k++)
        e[k] = act<R>((e[k] - p) * a + s);
      ((vec *)yg)[i] = v;
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      T a, s;
      coefs(st, w, b, c0 + i / HW, &a, &s);
      yg[i] = act<R>((xs[i] - p) * a + s);
    }
  }
}

__device__ inline void store_stats(double *stats, int64_t g, const group_stats &st) {
  if (stats) {
    stats[3 * g] = st.pivot;
    stats[3 * g + 1] = st.dmean;
    stats[3 * g + 2] = st.rstd;
  }
}

/* --------------------------------------------------------------- forward -- */

template <typename T, int V, bool R>
__global__ void gn_fwd_fused(const T *x, const T *w, const T *b, int64_t G, int64_t D,
                             int64_t HW, double eps, T *y, double *stats) {
  TG_DYNAMIC_SHARED(double, smem);
  __shared__ moments scratch[32];
  T *xs = (T *)smem;
  const int64_t g = blockIdx.x, len = D * HW;
  const T *xg = x + g * len;
  shifted<T> acc = {0, 0, 0, 0};
  each_in<T, V>(xg, 0, len, [&](int64_t i, T v) {
    xs[i] = v;
    acc.add(v);
  });
  const group_stats st = finish<T>(block_moments(acc.get(), scratch), eps);
  if (threadIdx.x == 0)
    store_stats(stats, g, st);
  /* block_moments synchronised the block: xs is complete. */
  apply<T, V, R>(xs, y + g * len, 0, len, HW, (g % G) * D, st, w, b);
}

template <typename T, int V>
__global__ void gn_fwd_partial(const T *x, int64_t len, int64_t chunk, int S,
                               moments *part) {
  __shared__ moments scratch[32];
  const int64_t g = blockIdx.x / S, s = blockIdx.x % S;
  const int64_t begin = s * chunk, end = begin + chunk < len ? begin + chunk : len;
  shifted<T> acc = {0, 0, 0, 0};
  each_in<T, V>(x + g * len, begin, end, [&](int64_t, T v) { acc.add(v); });
  const moments m = block_moments(acc.get(), scratch);
  if (threadIdx.x == 0)
    part[blockIdx.x] = m;
}

template <typename T, int V, bool R>
__global__ void gn_fwd_apply(const T *x, const T *w, const T *b, int64_t G, int64_t D,
                             int64_t HW, int64_t chunk, int S, const moments *part,
                             double eps, T *y, double *stats) {
  __shared__ group_stats st_s;
  const int64_t g = blockIdx.x / S, s = blockIdx.x % S, len = D * HW;
  if (threadIdx.x == 0) { /* S is small: one thread merges in order */
    moments m = part[g * S];
    for (int k = 1; k < S; k++)
      m = merge(m, part[g * S + k]);
    st_s = finish<T>(m, eps);
    if (s == 0)
      store_stats(stats, g, st_s);
  }
  __syncthreads();
  const group_stats st = st_s;
  const int64_t begin = s * chunk, end = begin + chunk < len ? begin + chunk : len;
  apply<T, V, R>(x + g * len, y + g * len, begin, end, HW, (g % G) * D, st, w, b);
}

/* -------------------------------------------------------------- backward -- */

/* sum(dy) and sum(dy * (x - p)) over [begin, end) of channel c, then the deviation
 * sum re-centred on the mean: ds = sum(dy * (x - p)) - db * dmean; dy masked by the
 * ReLU with R. */
template <typename T, int V, bool R>
__device__ inline void channel_sums(const T *dy, const T *x, int64_t begin, int64_t end,
                                    const group_stats &st, const T *w, const T *b,
                                    int64_t c, double *scratch, double *db, double *ds) {
  typedef typename tg_vec<T>::type vec;
  const T p = (T)st.pivot;
  T a = 0, s = 0;
  if (R)
    coefs(st, w, b, c, &a, &s);
  T a1 = 0, a2 = 0;
  if (V > 1) {
    for (int64_t i = begin / V + threadIdx.x; i < end / V; i += blockDim.x) {
      const vec gv = ((const vec *)dy)[i], xv = ((const vec *)x)[i];
      const T *ge = (const T *)&gv, *xe = (const T *)&xv;
#pragma unroll
      for (int k = 0; k < V; k++) {
        const T gk = act_grad<R>(ge[k], xe[k], p, a, s);
        a1 += gk;
        a2 += gk * (xe[k] - p);
      }
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const T gi = act_grad<R>(dy[i], x[i], p, a, s);
      a1 += gi;
      a2 += gi * (x[i] - p);
    }
  }
  *db = tg_block_sum((double)a1, scratch);
  *ds = tg_block_sum((double)a2, scratch) - *db * st.dmean;
}

template <typename T>
__device__ inline group_stats load_stats(const double *stats, int64_t g) {
  return {stats[3 * g], stats[3 * g + 1], stats[3 * g + 2]};
}

/* dx over [begin, end) of a group, from its coefficients; dy masked by the ReLU with
 * R (channel_sums' mask). */
template <typename T, int V, bool R>
__device__ inline void dx_range(const T *dy, const T *x, T *dx, int64_t begin,
                                int64_t end, int64_t HW, int64_t c0, const T *w,
                                const T *b, const group_stats &st, T m, T c2, T c3) {
  typedef typename tg_vec<T>::type vec;
  const T p = (T)st.pivot, r = (T)st.rstd;
  T a = 0, s = 0;
  if (V > 1) {
    for (int64_t i = begin / V + threadIdx.x; i < end / V; i += blockDim.x) {
      const int64_t c = c0 + i * V / HW;
      const T gamma = w ? w[c] : (T)1;
      if (R)
        coefs(st, w, b, c, &a, &s);
      const vec gv = ((const vec *)dy)[i], xv = ((const vec *)x)[i];
      const T *ge = (const T *)&gv, *xe = (const T *)&xv;
      vec out;
      T *o = (T *)&out;
#pragma unroll
      for (int k = 0; k < V; k++)
        o[k] =
            (gamma * act_grad<R>(ge[k], xe[k], p, a, s) - m) * r + c2 * (xe[k] - p) + c3;
      ((vec *)dx)[i] = out;
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const int64_t c = c0 + i / HW;
      const T gamma = w ? w[c] : (T)1;
      if (R)
        coefs(st, w, b, c, &a, &s);
      dx[i] = (gamma * act_grad<R>(dy[i], x[i], p, a, s) - m) * r + c2 * (x[i] - p) + c3;
    }
  }
}

/* The group's dx coefficients from its channels' sums (in order). */
template <typename T>
__device__ inline void group_coefs(const double *sums, const T *w, int64_t c0, int64_t D,
                                   const group_stats &st, int64_t len, T *m, T *c2,
                                   T *c3) {
  double dbg = 0, dsg = 0;
  for (int64_t k = 0; k < D; k++) {
    const double gamma = w ? (double)w[c0 + k] : 1.0;
    dbg += gamma * sums[2 * k];
    dsg += gamma * sums[2 * k + 1];
  }
  double md, c2d, c3d;
  tg__gn_dx_coefs(dbg, dsg, st.rstd, st.dmean, len, &md, &c2d, &c3d);
  *m = (T)md;
  *c2 = (T)c2d;
  *c3 = (T)c3d;
}

/* One block per group: x and dy in shared memory, read once. sums gets (db, ds) per
 * (n, c) for the parameter gradients. */
template <typename T, int V, bool R>
__global__ void gn_bwd_fused(const T *dy, const T *x, const T *w, const T *b,
                             const double *stats, int64_t G, int64_t D, int64_t HW, T *dx,
                             double *sums) {
  TG_DYNAMIC_SHARED(double, smem);
  __shared__ double scratch[32];
  __shared__ T coef[3];
  const int64_t g = blockIdx.x, len = D * HW, c0 = (g % G) * D;
  T *xs = (T *)smem, *gs = xs + len;
  const T *xg = x + g * len, *gg = dy + g * len;
  each_in<T, V>(xg, 0, len, [&](int64_t i, T v) { xs[i] = v; });
  each_in<T, V>(gg, 0, len, [&](int64_t i, T v) { gs[i] = v; });
  __syncthreads();
  const group_stats st = load_stats<T>(stats, g);
  double *sg = sums + 2 * g * D;
  for (int64_t k = 0; k < D; k++) {
    double db, ds;
    channel_sums<T, V, R>(gs + k * HW, xs + k * HW, 0, HW, st, w, b, c0 + k, scratch, &db,
                          &ds);
    if (threadIdx.x == 0) {
      sg[2 * k] = db;
      sg[2 * k + 1] = ds;
    }
  }
  if (!dx)
    return;
  __syncthreads(); /* sums of this group visible to thread 0 */
  if (threadIdx.x == 0)
    group_coefs<T>(sg, w, c0, D, st, len, &coef[0], &coef[1], &coef[2]);
  __syncthreads();
  dx_range<T, V, R>(gs, xs, dx + g * len, 0, len, HW, c0, w, b, st, coef[0], coef[1],
                    coef[2]);
}

/* One block per (n, c): that channel's sums. */
template <typename T, int V, bool R>
__global__ void gn_bwd_sums(const T *dy, const T *x, const T *w, const T *b,
                            const double *stats, int64_t C, int64_t D, int64_t HW,
                            double *sums) {
  __shared__ double scratch[32];
  const int64_t nc = blockIdx.x, g = nc / D;
  const group_stats st = load_stats<T>(stats, g);
  double db, ds;
  channel_sums<T, V, R>(dy + nc * HW, x + nc * HW, 0, HW, st, w, b, nc % C, scratch, &db,
                        &ds);
  if (threadIdx.x == 0) {
    sums[2 * nc] = db;
    sums[2 * nc + 1] = ds;
  }
}

/* One block per (n, c): dx of that channel from its group's sums. */
template <typename T, int V, bool R>
__global__ void gn_bwd_dx(const T *dy, const T *x, const T *w, const T *b,
                          const double *stats, const double *sums, int64_t G, int64_t D,
                          int64_t HW, T *dx) {
  __shared__ T coef[3];
  const int64_t nc = blockIdx.x, g = nc / D, c0 = (g % G) * D, k = nc % D;
  const group_stats st = load_stats<T>(stats, g);
  if (threadIdx.x == 0)
    group_coefs<T>(sums + 2 * g * D, w, c0, D, st, D * HW, &coef[0], &coef[1], &coef[2]);
  __syncthreads();
  const int64_t off = g * D * HW + k * HW;
  dx_range<T, V, R>(dy + off, x + off, dx + off, 0, HW, HW, c0 + k, w, b, st, coef[0],
                    coef[1], coef[2]);
}

/* dweight_c = sum_n ds[n,c] * rstd[n,g(c)], dbias_c = sum_n db[n,c], n in order. */
template <typename T>
__global__ void gn_bwd_params(const double *sums, const double *stats, int64_t N,
                              int64_t C, int64_t D, T *dw, T *db) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C)
    return;
  double gw = 0, gb = 0;
  for (int64_t n = 0; n < N; n++) {
    const double *s = sums + 2 * (n * C + c);
    gb += s[0];
    gw += s[1] * stats[3 * (n * (C / D) + c / D) + 2];
  }
  if (dw)
    dw[c] = (T)gw;
  if (db)
    db[c] = (T)gb;
}

/* ------------------------------------------------------------- launchers -- */

/* Bound on the fused kernels' static shared memory (scratch), which counts against
 * the same per-block limit as the dynamic part. */
const size_t STATIC_SMEM = 1024;

/* Raises a kernel's dynamic shared memory limit to what it asks, when over 48 KiB. */
template <typename K> int allow_smem(K kernel, size_t bytes) {
  if (bytes <= (48 << 10))
    return 0;
  return TG_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)bytes));
}

template <typename T, int V, bool R>
int forward(const T *x, const T *w, const T *b, int64_t N, int64_t C, int64_t G,
            int64_t HW, double eps, T *y, double *stats, int device, cudaStream_t st) {
  const int64_t groups = N * G, D = C / G, len = D * HW;
  const int sms = tg__cuda_sm_count(device);
  const size_t smem = (size_t)len * sizeof(T);
  if (groups >= sms && smem + STATIC_SMEM <= tg__cuda_smem_optin(device)) {
    if (allow_smem(gn_fwd_fused<T, V, R>, smem) < 0)
      return -1;
    TG_LAUNCH((gn_fwd_fused<T, V, R>), (unsigned)groups, tg_threads_for(len / V, 512),
              smem, st, x, w, b, G, D, HW, eps, y, stats);
    return TG_CUDA_LAUNCHED(gn_fwd_fused);
  }
  /* Enough blocks for two per multiprocessor, chunks of at least 2048 elements (and
   * one block for an empty group, which still has statistics to write). */
  const int64_t max_s = (len + 2047) / 2048;
  int64_t S = (2 * sms + groups - 1) / groups;
  S = S > max_s ? max_s : S;
  S = S < 1 ? 1 : S;
  int64_t chunk = (len + S - 1) / S;
  chunk = (chunk + V - 1) / V * V;
  if (chunk > 0)
    S = (len + chunk - 1) / chunk;
  const size_t part_bytes = (size_t)(groups * S) * sizeof(moments);
  moments *part = (moments *)tg__cuda_malloc(part_bytes, device);
  if (!part)
    return -1;
  const int threads = tg_threads_for(chunk / V, 512);
  TG_LAUNCH((gn_fwd_partial<T, V>), (unsigned)(groups * S), threads, 0, st, x, len, chunk,
            (int)S, part);
  int rc = TG_CUDA_LAUNCHED(gn_fwd_partial);
  if (rc == 0) {
    TG_LAUNCH((gn_fwd_apply<T, V, R>), (unsigned)(groups * S), threads, 0, st, x, w, b, G,
              D, HW, chunk, (int)S, part, eps, y, stats);
    rc = TG_CUDA_LAUNCHED(gn_fwd_apply);
  }
  tg__cuda_free(part, part_bytes, device); /* stream-ordered: reused after these */
  return rc;
}

template <typename T, int V, bool R>
int backward(const T *dy, const T *x, const T *w, const T *b, const double *stats,
             int64_t N, int64_t C, int64_t G, int64_t HW, T *dx, T *dw, T *db, int device,
             cudaStream_t st) {
  const int64_t groups = N * G, D = C / G, len = D * HW;
  const size_t sums_bytes = (size_t)(N * C * 2) * sizeof(double);
  double *sums = (double *)tg__cuda_malloc(sums_bytes, device);
  if (!sums)
    return -1;
  const size_t smem = 2 * (size_t)len * sizeof(T);
  int rc = 0;
  if (groups >= tg__cuda_sm_count(device) &&
      smem + STATIC_SMEM <= tg__cuda_smem_optin(device)) {
    rc = allow_smem(gn_bwd_fused<T, V, R>, smem);
    if (rc == 0) {
      TG_LAUNCH((gn_bwd_fused<T, V, R>), (unsigned)groups, tg_threads_for(len / V, 512),
                smem, st, dy, x, w, b, stats, G, D, HW, dx, sums);
      rc = TG_CUDA_LAUNCHED(gn_bwd_fused);
    }
  } else {
    const int threads = tg_threads_for(HW / V, 256);
    TG_LAUNCH((gn_bwd_sums<T, V, R>), (unsigned)(N * C), threads, 0, st, dy, x, w, b,
              stats, C, D, HW, sums);
    rc = TG_CUDA_LAUNCHED(gn_bwd_sums);
    if (rc == 0 && dx) {
      TG_LAUNCH((gn_bwd_dx<T, V, R>), (unsigned)(N * C), threads, 0, st, dy, x, w, b,
                stats, sums, G, D, HW, dx);
      rc = TG_CUDA_LAUNCHED(gn_bwd_dx);
    }
  }
  if (rc == 0 && (dw || db)) {
    TG_LAUNCH(gn_bwd_params<T>, tg__cuda_blocks(C, 128), 128, 0, st, sums, stats, N, C, D,
              dw, db);
    rc = TG_CUDA_LAUNCHED(gn_bwd_params);
  }
  tg__cuda_free(sums, sums_bytes, device);
  return rc;
}

/* Vector width usable for a tensor: HW a multiple of the width (then every group,
 * chunk and channel starts on a vector, device buffers being 256-byte aligned). */
template <typename T> bool vectorisable(int64_t HW) { return HW % tg_vec<T>::n == 0; }

template <typename T, bool R>
int forward_t(const void *x, const void *w, const void *b, int64_t N, int64_t C,
              int64_t G, int64_t HW, double eps, void *y, double *stats, int device,
              cudaStream_t st) {
  const T *X = (const T *)x, *W = (const T *)w, *B = (const T *)b;
  if (vectorisable<T>(HW))
    return forward<T, tg_vec<T>::n, R>(X, W, B, N, C, G, HW, eps, (T *)y, stats, device,
                                       st);
  return forward<T, 1, R>(X, W, B, N, C, G, HW, eps, (T *)y, stats, device, st);
}

template <typename T, bool R>
int backward_t(const void *dy, const void *x, const void *w, const void *b,
               const double *stats, int64_t N, int64_t C, int64_t G, int64_t HW, void *dx,
               void *dw, void *db, int device, cudaStream_t st) {
  const T *DY = (const T *)dy, *X = (const T *)x, *W = (const T *)w, *B = (const T *)b;
  if (vectorisable<T>(HW))
    return backward<T, tg_vec<T>::n, R>(DY, X, W, B, stats, N, C, G, HW, (T *)dx, (T *)dw,
                                        (T *)db, device, st);
  return backward<T, 1, R>(DY, X, W, B, stats, N, C, G, HW, (T *)dx, (T *)dw, (T *)db,
                           device, st);
}

} // namespace

extern "C" int tg__gn_cuda_forward(int dtype, const void *x, const void *w, const void *b,
                                   int64_t N, int64_t C, int64_t G, int64_t HW,
                                   double eps, bool relu, void *y, double *stats,
                                   int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (N * G == 0)
    return 0;
  if (dtype == TG_F32)
    return (relu ? forward_t<float, true> : forward_t<float, false>)(x, w, b, N, C, G, HW,
                                                                     eps, y, stats,
                                                                     device, st);
  return (relu ? forward_t<double, true> : forward_t<double, false>)(x, w, b, N, C, G, HW,
                                                                     eps, y, stats,
                                                                     device, st);
}

extern "C" int tg__gn_cuda_backward(int dtype, const void *dy, const void *x,
                                    const void *w, const void *b, const double *stats,
                                    int64_t N, int64_t C, int64_t G, int64_t HW,
                                    bool relu, void *dx, void *dw, void *db, int device) {
  cudaStream_t st = tg_stream(device);
  if (!st)
    return -1;
  if (N == 0 || C == 0) { /* no sums: parameter gradients are zero */
    const size_t es = dtype == TG_F32 ? 4 : 8;
    if (dw && TG_CUDA(cudaMemsetAsync(dw, 0, (size_t)C * es, st)) < 0)
      return -1;
    if (db && TG_CUDA(cudaMemsetAsync(db, 0, (size_t)C * es, st)) < 0)
      return -1;
    return 0;
  }
  if (dtype == TG_F32)
    return (relu ? backward_t<float, true>
                 : backward_t<float, false>)(dy, x, w, b, stats, N, C, G, HW, dx, dw, db,
                                             device, st);
  return (relu ? backward_t<double, true>
               : backward_t<double, false>)(dy, x, w, b, stats, N, C, G, HW, dx, dw, db,
                                            device, st);
}
