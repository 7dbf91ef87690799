/* Normalisation kernels written once for an element type T; norm.h includes this file
 * for float and double, with NK(name) naming each instance (name_f, name_d).
 *
 * Numerics, shared by GroupNorm, BatchNorm and LayerNorm:
 *  - statistics come from sums of d = x - m and d^2 about a pivot m close to the
 *    mean (in T): mean = m + sum(d)/n and var = sum(d^2)/n - (sum(d)/n)^2, with no
 *    cancellation because m is within a fraction of a standard deviation of the
 *    mean (checked; a second pass re-centres when it is not) — never the
 *    E[x^2] - E[x]^2 of raw values;
 *  - sums run in T over blocks of NORM_BLOCK elements in LANES independent lanes
 *    (plain loops GCC and Clang vectorise) and blocks are merged in double, so the
 *    float32 hot loops stay float32;
 *  - the mean is kept as pivot + dmean, the pivot p rounded to T and dmean = mean - p
 *    small; every elementwise pass subtracts p first: for x close to p that is exact,
 *    so a group with mean 1e4 and std 1e-3 keeps all its digits (in float32 and in
 *    float64); dmean is folded into per-segment constants computed in double. */

/* s1 += sum(a1), s2 += sum(a2): lanes folded pairwise in T (vector adds, no long
 * dependency chain), the last one merged into double. */
static inline void NK(merge)(T *restrict a1, T *restrict a2, double *s1, double *s2) {
  for (int w = LANES / 2; w > 0; w /= 2)
    for (int l = 0; l < w; l++) {
      a1[l] += a1[l + w];
      a2[l] += a2[l + w];
    }
  *s1 += a1[0];
  *s2 += a2[0];
}

/* s1 += sum(d), s2 += sum(d^2) with d = x - p. With AVX-512 (the float instance,
 * NORM_SUMS_AVX512) the vector part of each block is written in intrinsics: lanes 0-15
 * of a1/a2 in one register, 16-31 in another, so the same additions in the same order
 * (the same bits), but a += d is issued as fma(d, 1, a), which rounds the same sum once:
 * the additions alone filled Zen 4's FP add pipes (bench/NOTES.md, "GroupNorm store
 * paths"). */
static inline void NK(sum_dev2)(const T *x, int64_t n, T p, double *s1, double *s2) {
  for (int64_t i0 = 0; i0 < n; i0 += NORM_BLOCK) {
    const T *b = x + i0;
    int64_t m = n - i0 < NORM_BLOCK ? n - i0 : NORM_BLOCK, i = 0;
    _Alignas(64) T a1[LANES] = {0}, a2[LANES] = {0};
#if defined(NORM_SUMS_AVX512)
    const __m512 P = _mm512_set1_ps(p), one = _mm512_set1_ps(1.0f);
    __m512 u0 = _mm512_setzero_ps(), u1 = u0, v0 = u0, v1 = u0;
    for (; i + LANES <= m; i += LANES) {
      const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(b + i), P);
      const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(b + i + 16), P);
      u0 = _mm512_fmadd_ps(d0, one, u0);
      u1 = _mm512_fmadd_ps(d1, one, u1);
      v0 = _mm512_add_ps(v0, _mm512_mul_ps(d0, d0));
      v1 = _mm512_add_ps(v1, _mm512_mul_ps(d1, d1));
    }
    _mm512_store_ps(a1, u0);
    _mm512_store_ps(a1 + 16, u1);
    _mm512_store_ps(a2, v0);
    _mm512_store_ps(a2 + 16, v1);
#else
    for (; i + LANES <= m; i += LANES)
      for (int l = 0; l < LANES; l++) {
        T d = b[i + l] - p;
        a1[l] += d;
        a2[l] += d * d;
      }
#endif
    for (; i < m; i++) {
      T d = b[i] - p;
      a1[0] += d;
      a2[0] += d * d;
    }
    NK(merge)(a1, a2, s1, s2);
  }
}

/* Statistics of nseg segments of len elements, segment k starting at x + k * stride:
 * fills st (mean = pivot + dmean, rstd = 1/sqrt(var + eps)) and returns the biased
 * variance. An empty set gives mean 0 and variance 0.
 * One pass of sums about a pivot m, the mean of a small sample, usually suffices:
 * var = sum(d^2)/n - dm^2 loses nothing while dm^2 <= var/16. Otherwise (a sample
 * unlike the rest) a second pass centres on the mean just found. */
static inline double NK(moments)(const T *x, int64_t nseg, int64_t len, int64_t stride,
                                 double eps, norm_stats *st) {
  const int64_t n = nseg * len;
  double dm = 0, var = 0;
  T m = 0;
  if (n > 0) {
    const int64_t ns = len < NORM_SAMPLE ? len : NORM_SAMPLE;
    double s0 = 0;
    for (int64_t i = 0; i < ns; i++)
      s0 += x[i];
    m = (T)(s0 / (double)ns);
    for (int pass = 0; pass < 2; pass++) {
      double s1 = 0, s2 = 0;
      for (int64_t k = 0; k < nseg; k++)
        NK(sum_dev2)(x + k * stride, len, m, &s1, &s2);
      dm = s1 / (double)n;
      var = s2 / (double)n - dm * dm;
      if (pass == 1 || !(dm * dm > var * 0.0625))
        break;
      m = (T)(m + dm);
    }
    var = var > 0 ? var : 0;
  }
  st->pivot = m;
  st->dmean = dm;
  st->rstd = 1.0 / sqrt(var + eps);
  return var;
}

/* Prefetches the cache lines of pf[0, n) (pf NULL: none). */
static inline void NK(prefetch)(const T *pf, int64_t n) {
  if (pf)
    for (int64_t i = 0; i < n; i += 64 / sizeof(T))
      __builtin_prefetch(pf + i);
}

/* v, or with relu max(v, 0) with NaN kept (as torch.relu). */
static inline T NK(act)(T v, bool relu) { return relu && v < 0 ? (T)0 : v; }

/* y = act((x - p) * a + b). While it runs, pf (NULL: none) is prefetched: the next
 * segment's input, so reading it from memory overlaps writing this output. With stream,
 * y is written with non-temporal stores (norm.h), through an L1 buffer; the caller
 * fences. */
static inline void NK(affine_act)(const T *restrict x, T *restrict y, int64_t n, T p, T a,
                                  T b, const T *pf, bool stream, bool relu) {
  enum { BLOCK = NORM_STREAM_BLOCK };
  int64_t i = 0;
  if (stream)
    for (; i < n && (uintptr_t)(y + i) % NORM_STREAM_ALIGN; i++)
      y[i] = NK(act)((x[i] - p) * a + b, relu);
  for (; i + BLOCK <= n; i += BLOCK) {
    NK(prefetch)(pf ? pf + i : NULL, BLOCK);
    _Alignas(64) T buf[BLOCK];
    T *out = stream ? buf : y + i;
    for (int64_t j = 0; j < BLOCK; j++)
      out[j] = NK(act)((x[i + j] - p) * a + b, relu);
    if (stream)
      NK(stream)(y + i, buf, BLOCK);
  }
  for (; i < n; i++)
    y[i] = NK(act)((x[i] - p) * a + b, relu);
}

/* y = (x - p) * a + b (affine_act without the activation). */
static inline void NK(affine)(const T *restrict x, T *restrict y, int64_t n, T p, T a,
                              T b, const T *pf, bool stream) {
  NK(affine_act)(x, y, n, p, a, b, pf, stream, false);
}

/* y = ((x - p) * r + s) * gamma + beta, gamma and beta per element. */
static inline void NK(affine_vec)(const T *restrict x, T *restrict y, int64_t n, T p, T r,
                                  T s, const T *restrict gamma, const T *restrict beta) {
  for (int64_t i = 0; i < n; i++)
    y[i] = ((x[i] - p) * r + s) * gamma[i] + beta[i];
}

/* dy, or with relu the gradient through the ReLU that followed y = (x - p) * a + b
 * (affine_act): 0 where y <= 0, else dy (NaN y passes dy, as torch's
 * threshold_backward). The same expression as affine_act's, so the mask is the
 * forward's exactly. */
static inline T NK(act_grad)(T dy, T x, T p, T a, T b, bool relu) {
  return relu && (x - p) * a + b <= 0 ? (T)0 : dy;
}

/* sdy += sum(g), sdyx += sum(g * (x - p)), g = act_grad(dy, ...). */
static inline void NK(grad_sums_act)(const T *dy, const T *x, int64_t n, T p, T a, T bb,
                                     bool relu, double *sdy, double *sdyx) {
  for (int64_t i0 = 0; i0 < n; i0 += NORM_BLOCK) {
    int64_t m = n - i0 < NORM_BLOCK ? n - i0 : NORM_BLOCK, i = 0;
    const T *g = dy + i0, *b = x + i0;
    T a1[LANES] = {0}, a2[LANES] = {0};
    for (; i + LANES <= m; i += LANES)
      for (int l = 0; l < LANES; l++) {
        T gi = NK(act_grad)(g[i + l], b[i + l], p, a, bb, relu);
        a1[l] += gi;
        a2[l] += gi * (b[i + l] - p);
      }
    for (; i < m; i++) {
      T gi = NK(act_grad)(g[i], b[i], p, a, bb, relu);
      a1[0] += gi;
      a2[0] += gi * (b[i] - p);
    }
    NK(merge)(a1, a2, sdy, sdyx);
  }
}

/* sdy += sum(dy), sdyx += sum(dy * (x - p)). */
static inline void NK(grad_sums)(const T *dy, const T *x, int64_t n, T p, double *sdy,
                                 double *sdyx) {
  NK(grad_sums_act)(dy, x, n, p, 0, 0, false, sdy, sdyx);
}

/* As grad_sums with dy scaled by gamma per element. */
static inline void NK(grad_sums_vec)(const T *dy, const T *x, int64_t n, T p,
                                     const T *gamma, double *sdy, double *sdyx) {
  for (int64_t i0 = 0; i0 < n; i0 += NORM_BLOCK) {
    int64_t m = n - i0 < NORM_BLOCK ? n - i0 : NORM_BLOCK, i = 0;
    const T *g = dy + i0, *b = x + i0, *w = gamma + i0;
    T a1[LANES] = {0}, a2[LANES] = {0};
    for (; i + LANES <= m; i += LANES)
      for (int l = 0; l < LANES; l++) {
        T gd = g[i + l] * w[i + l];
        a1[l] += gd;
        a2[l] += gd * (b[i + l] - p);
      }
    for (; i < m; i++) {
      T gd = g[i] * w[i];
      a1[0] += gd;
      a2[0] += gd * (b[i] - p);
    }
    NK(merge)(a1, a2, sdy, sdyx);
  }
}

/* dx = (g * dy' - m) * r + c2 * (x - p) + c3, dy' = act_grad(dy, x, p, a, bb, relu).
 * Subtracting the mean m of g*dy' before scaling by r keeps the cancellation in the
 * small terms (a one-element group gives exactly 0). pf_dy and pf_x (NULL: none) are
 * prefetched and stream used as in affine. */
static inline void NK(dx_act)(const T *restrict dy, const T *restrict x, T *restrict dx,
                              int64_t n, T p, T g, T m, T r, T c2, T c3, const T *pf_dy,
                              const T *pf_x, bool stream, T a, T bb, bool relu) {
  enum { BLOCK = NORM_STREAM_BLOCK };
  int64_t i = 0;
  if (stream)
    for (; i < n && (uintptr_t)(dx + i) % NORM_STREAM_ALIGN; i++)
      dx[i] =
          (g * NK(act_grad)(dy[i], x[i], p, a, bb, relu) - m) * r + c2 * (x[i] - p) + c3;
  for (; i + BLOCK <= n; i += BLOCK) {
    NK(prefetch)(pf_dy ? pf_dy + i : NULL, BLOCK);
    NK(prefetch)(pf_x ? pf_x + i : NULL, BLOCK);
    _Alignas(64) T buf[BLOCK];
    T *out = stream ? buf : dx + i;
    for (int64_t j = 0; j < BLOCK; j++)
      out[j] = (g * NK(act_grad)(dy[i + j], x[i + j], p, a, bb, relu) - m) * r +
               c2 * (x[i + j] - p) + c3;
    if (stream)
      NK(stream)(dx + i, buf, BLOCK);
  }
  for (; i < n; i++)
    dx[i] =
        (g * NK(act_grad)(dy[i], x[i], p, a, bb, relu) - m) * r + c2 * (x[i] - p) + c3;
}

/* dx = (g * dy - m) * r + c2 * (x - p) + c3 (dx_act without the activation). */
static inline void NK(dx)(const T *restrict dy, const T *restrict x, T *restrict dx,
                          int64_t n, T p, T g, T m, T r, T c2, T c3, const T *pf_dy,
                          const T *pf_x, bool stream) {
  NK(dx_act)(dy, x, dx, n, p, g, m, r, c2, c3, pf_dy, pf_x, stream, 0, 0, false);
}

/* As dx with g per element. */
static inline void NK(dx_vec)(const T *restrict dy, const T *restrict x, T *restrict dx,
                              int64_t n, T p, const T *restrict gamma, T m, T r, T c2,
                              T c3) {
  for (int64_t i = 0; i < n; i++)
    dx[i] = (gamma[i] * dy[i] - m) * r + c2 * (x[i] - p) + c3;
}
