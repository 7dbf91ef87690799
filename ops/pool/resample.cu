/* Resampling on CUDA (pool_ex.c's table calls these; the taps are resample.h's, the
 * CPU's): forward one thread per output over its taps; backward one thread per input
 * element, gathering from the outputs whose taps reach it, in output order and tap
 * order within an output (the order the CPU's scatter adds in), so no atomics and
 * the same bits on every run. The outputs that can reach input i along an axis are
 * an interval, found by binary search on the first tap's source index, which is
 * nondecreasing in the output index (every formula of resample.h is monotone): once
 * per input index and axis, by a small kernel into a table in scratch memory (the
 * caching allocator's), which the backward's threads read. */
#include "runtime/cuda_common.cuh"

#include "ops/pool/resample.h"

namespace {

/* f(a, b, c) for the taps of one output, in the CPU's order. The bounds are constants
 * and the loops unrolled, so the taps' arrays stay in registers (a runtime index would
 * put them in local memory); an axis of one tap skips its second. */
template <typename F> __device__ inline void for_taps(const tg__resample_desc &d, F &&f) {
#pragma unroll
  for (int a = 0; a < 2; a++)
#pragma unroll
    for (int b = 0; b < 2; b++)
#pragma unroll
      for (int c = 0; c < 2; c++)
        if (a < d.taps[0] && b < d.taps[1] && c < d.taps[2])
          f(a, b, c);
}

/* The first output along axis a whose first source index is at least i (out when
 * none). */
template <typename T>
__device__ inline int64_t first_reaching(const tg__resample_desc &d, int a, int64_t i) {
  int64_t lo = 0, hi = d.out[a];
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (tg__resample_tap(&d, a, mid, sizeof(T) == 4).i[0] < i)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Axis A's part of the table of the outputs [first, last) whose taps may reach input
 * i: first source i (nearest), or i - 1 or i (linear: the second tap is the first's
 * next). Entry 2 * (off + i) is first, the next last; off counts the inputs of the
 * axes before A. One thread per input index; A is a constant so that the
 * description's arrays are indexed by constants. */
template <typename T, int A>
__global__ void reaching_table(tg__resample_desc d, int64_t off, int64_t *table) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < d.in[A];
       i += (int64_t)gridDim.x * blockDim.x) {
    table[2 * (off + i)] = first_reaching<T>(d, A, d.taps[A] == 2 ? i - 1 : i);
    table[2 * (off + i) + 1] = first_reaching<T>(d, A, i + 1);
  }
}

/* Element e of planes of s[0] x s[1] x s[2] elements: its plane and (z, y, x). */
struct place {
  int64_t p, z, y, x;
};

__device__ inline place place_of(int64_t e, const int64_t s[3]) {
  return {e / (s[0] * s[1] * s[2]), e / (s[1] * s[2]) % s[0], e / s[2] % s[1], e % s[2]};
}

/* One thread per output. in_dtype: pool.c's tg_upsample_{nearest,bilinear}2d, a copy
 * or the blend in T; else pool_ex.c's sum over the taps in double. */
template <typename T>
__global__ void resample_fwd(tg__resample_desc d, const T *x, T *y) {
  const int64_t H = d.in[1], W = d.in[2];
  const int64_t n = d.planes * d.out[0] * d.out[1] * d.out[2];
  const bool f32 = sizeof(T) == 4;
  for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n;
       o += (int64_t)gridDim.x * blockDim.x) {
    const place at = place_of(o, d.out);
    const T *src = x + at.p * d.in[0] * H * W;
    const tg__tap td = tg__resample_tap(&d, 0, at.z, f32),
                  ty = tg__resample_tap(&d, 1, at.y, f32),
                  tx = tg__resample_tap(&d, 2, at.x, f32);
    if (d.in_dtype && d.taps[2] == 1) {
      y[o] = src[ty.i[0] * W + tx.i[0]];
      continue;
    }
    if (d.in_dtype) {
      const T *r0 = src + ty.i[0] * W, *r1 = src + ty.i[1] * W;
      const T ly0 = (T)ty.w[0], ly1 = (T)ty.w[1], lx0 = (T)tx.w[0], lx1 = (T)tx.w[1];
      y[o] = ly0 * (lx0 * r0[tx.i[0]] + lx1 * r0[tx.i[1]]) +
             ly1 * (lx0 * r1[tx.i[0]] + lx1 * r1[tx.i[1]]);
      continue;
    }
    double acc = 0;
    for_taps(d, [&](int a, int b, int c) {
      acc += td.w[a] * ty.w[b] * tx.w[c] *
             (double)src[(td.i[a] * H + ty.i[b]) * W + tx.i[c]];
    });
    y[o] = (T)acc;
  }
}

/* One thread per input element: dx = the sum of weight * dy over every tap that
 * reaches it, added as the CPU adds (in T, the weight product in T for in_dtype;
 * else each step in double, rounded to T). */
template <typename T>
__global__ void resample_bwd(tg__resample_desc d, const int64_t *table, const T *dy,
                             T *dx) {
  const int64_t OH = d.out[1], OW = d.out[2];
  const int64_t n = d.planes * d.in[0] * d.in[1] * d.in[2];
  const bool f32 = sizeof(T) == 4;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    const place at = place_of(e, d.in);
    const int64_t id = at.z, iy = at.y, ix = at.x;
    const T *g = dy + at.p * d.out[0] * OH * OW;
    const int64_t *rd = table + 2 * id, *ry = table + 2 * (d.in[0] + iy),
                  *rx = table + 2 * (d.in[0] + d.in[1] + ix);
    const int64_t d0 = rd[0], d1 = rd[1], y0 = ry[0], y1 = ry[1], x0 = rx[0], x1 = rx[1];
    T acc = 0;
    for (int64_t od = d0; od < d1; od++) {
      const tg__tap td = tg__resample_tap(&d, 0, od, f32);
      for (int64_t oy = y0; oy < y1; oy++) {
        const tg__tap ty = tg__resample_tap(&d, 1, oy, f32);
        for (int64_t ox = x0; ox < x1; ox++) {
          const tg__tap tx = tg__resample_tap(&d, 2, ox, f32);
          const T gv = g[(od * OH + oy) * OW + ox];
          for_taps(d, [&](int a, int b, int c) {
            if (td.i[a] != id || ty.i[b] != iy || tx.i[c] != ix)
              return;
            if (d.in_dtype)
              acc += (T)ty.w[b] * (T)tx.w[c] * gv;
            else
              acc = (T)((double)acc + td.w[a] * ty.w[b] * tx.w[c] * (double)gv);
          });
        }
      }
    }
    dx[e] = acc;
  }
}

/* The backward: the reaching table of each axis, then the gather. */
template <typename T>
int resample_backward(const tg__resample_desc *d, const T *dy, T *dx, unsigned blocks,
                      cudaStream_t st, int device) {
  const size_t bytes = 2 * sizeof(int64_t) * (size_t)(d->in[0] + d->in[1] + d->in[2]);
  int64_t *table = (int64_t *)tg__cuda_malloc(bytes, device);
  if (!table)
    return -1;
  void (*const axis[3])(tg__resample_desc, int64_t, int64_t *) = {
      &reaching_table<T, 0>, &reaching_table<T, 1>, &reaching_table<T, 2>};
  int rc = 0;
  int64_t off = 0;
  for (int a = 0; a < 3 && rc == 0; off += d->in[a], a++) {
    TG_LAUNCH(axis[a], tg__cuda_blocks(d->in[a], TG_THREADS), TG_THREADS, 0, st, *d, off,
              table);
    rc = TG_CUDA_LAUNCHED(reaching_table);
  }
  if (rc == 0) {
    TG_LAUNCH(resample_bwd<T>, blocks, TG_THREADS, 0, st, *d, table, dy, dx);
    rc = TG_CUDA_LAUNCHED(resample_bwd);
  }
  tg__cuda_free(table, bytes, device); /* stream-ordered: reused after these kernels */
  return rc;
}

} // namespace

extern "C" int tg__resample_cuda(int dtype, const tg__resample_desc *d, const void *src,
                                 void *dst, bool backward, int device) {
  const int64_t *sp = backward ? d->in : d->out;
  const int64_t n = d->planes * sp[0] * sp[1] * sp[2];
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned b, cudaStream_t st) {
    using T = decltype(z);
    if (backward)
      return resample_backward(d, (const T *)src, (T *)dst, b, st, device);
    TG_LAUNCH(resample_fwd<T>, b, TG_THREADS, 0, st, *d, (const T *)src, (T *)dst);
    return TG_CUDA_LAUNCHED(resample_fwd);
  });
}
