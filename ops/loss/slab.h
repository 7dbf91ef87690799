/* Shared by the softmax and loss kernels: a tensor viewed as [outer, r, inner] and
 * reduced over r (the softmax or class dim) at each of the outer*inner positions.
 * One parallel task handles up to SLAB_TILE positions side by side ("lanes"), so the
 * loops over r keep SLAB_TILE independent accumulators and touch few cache lines:
 * lanes are consecutive rows when inner = 1 (softmax over the last dim), consecutive
 * inner positions otherwise ([N, C, H, W] over C). */
#ifndef TG_OPS_LOSS_SLAB_H
#define TG_OPS_LOSS_SLAB_H

#include <stdint.h>
#include <string.h>
#include <tgmath.h>

#define SLAB_TILE 64

typedef struct {
  int64_t outer, r, inner;
  int64_t lanes; /* positions per task, at most SLAB_TILE */
} slab;

/* shape[0..ndim) viewed around dim d ([1, 1, 1] for a 0-dim tensor). */
static inline slab slab_around(const int64_t *shape, int ndim, int d) {
  slab s = {1, 1, 1, SLAB_TILE};
  for (int i = 0; i < ndim; i++) {
    if (i < d)
      s.outer *= shape[i];
    else if (i == d)
      s.r = shape[i];
    else
      s.inner *= shape[i];
  }
  /* Few long rows (a vocabulary-sized softmax): fewer lanes, more tasks. */
  if (s.inner == 1 && s.outer < 16 * SLAB_TILE)
    s.lanes = s.outer >= 16 ? s.outer / 16 : 1;
  return s;
}

static inline int64_t slab_tiles(const slab *s) {
  return s->inner == 1 ? 1 : (s->inner + s->lanes - 1) / s->lanes;
}

static inline int64_t slab_tasks(const slab *s) {
  if (s->inner == 1)
    return (s->outer + s->lanes - 1) / s->lanes;
  return s->outer * slab_tiles(s);
}

/* Where task t works: lane j (j < w) is position pos0 + j (index o*inner + i over
 * [outer, inner]); its element k lies at base + k*ks + j*ls. */
typedef struct {
  int64_t base, pos0, w, ks, ls;
} slab_lanes;

static inline slab_lanes slab_task(const slab *s, int64_t t) {
  slab_lanes l;
  int64_t left;
  if (s->inner == 1) {
    l.pos0 = t * s->lanes;
    left = s->outer - l.pos0;
    l.base = l.pos0 * s->r;
    l.ks = 1;
    l.ls = s->r;
  } else {
    int64_t tiles = slab_tiles(s), o = t / tiles, i0 = (t % tiles) * s->lanes;
    left = s->inner - i0;
    l.base = o * s->r * s->inner + i0;
    l.pos0 = o * s->inner + i0;
    l.ks = s->inner;
    l.ls = 1;
  }
  l.w = left < s->lanes ? left : s->lanes;
  return l;
}

/* a * b + c, fused where the CPU has FMA (the C11 build does not contract it): the
 * polynomials below take half the instructions. */
#ifdef __FMA__
#define SLAB_FMA(a, b, c) fmaf(a, b, c)
#else
#define SLAB_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* exp(x) for float x <= 0 or NaN (a logit minus its row's max), branch-free so that
 * loops of it vectorise (glibc's expf does not): Cephes' expf, 2^n exp(r) with
 * |r| <= ln2/2 and a degree-6 polynomial, within 1 ulp (measured over every float in
 * [-87, 0]); 0 below -87 (where exp(x) is under 2^-125, nothing beside the row's
 * exp(0) = 1), NaN for NaN. */
static inline float slab_expf(float x) {
  float xc = x >= -87.0f ? x : -87.0f;               /* NaN too: n below stays in range */
  float n = xc * 1.44269504088896341f + 12582912.0f; /* round to nearest: 1.5 * 2^23 */
  n -= 12582912.0f;
  float r =
      SLAB_FMA(n, -0.693359375f, xc); /* ln2 in two parts, the first exact in 9 bits */
  r = SLAB_FMA(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = SLAB_FMA(p, r, 1.3981999507e-3f);
  p = SLAB_FMA(p, r, 8.3334519073e-3f);
  p = SLAB_FMA(p, r, 4.1665795894e-2f);
  p = SLAB_FMA(p, r, 1.6666665459e-1f);
  p = SLAB_FMA(p, r, 5.0000001201e-1f);
  p = SLAB_FMA(p, r * r, r) + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  float y = x >= -87.0f ? p * scale : 0.0f;
  return x == x ? y : x;
}

/* log(x) for float x >= 1 (a sum of exp(x - max) over a row) or NaN: Cephes' logf,
 * e ln2 + log(m) with m in [sqrt(1/2), sqrt(2)), within 1 ulp; branch-free as
 * slab_expf (integer selects: GCC does not if-convert float ones here). */
static inline float slab_logf(float x) {
  int32_t bits;
  memcpy(&bits, &x, sizeof bits);
  int32_t mb = (bits & 0x7fffff) | 0x3f800000, big = mb > 0x3fb504f3; /* m > sqrt(2) */
  mb -= big << 23;
  float m;
  memcpy(&m, &mb, sizeof m);
  const float fe = (float)(((bits >> 23) & 0xff) - 127 + big);
  float f = m - 1.0f, z = f * f;
  float p = 7.0376836292e-2f;
  p = SLAB_FMA(p, f, -1.1514610310e-1f);
  p = SLAB_FMA(p, f, 1.1676998740e-1f);
  p = SLAB_FMA(p, f, -1.2420140846e-1f);
  p = SLAB_FMA(p, f, 1.4249322787e-1f);
  p = SLAB_FMA(p, f, -1.6668057665e-1f);
  p = SLAB_FMA(p, f, 2.0000714765e-1f);
  p = SLAB_FMA(p, f, -2.4999993993e-1f);
  p = SLAB_FMA(p, f, 3.3333331174e-1f);
  float y = p * f * z;
  y += fe * -2.12194440e-4f;
  y -= 0.5f * z;
  y = f + y + fe * 0.693359375f;
  return y + (x - x);
}

/* exp in the kernels: the float one vectorises, the double one is libm's. */
static inline float slab_exp_float(float x) { return slab_expf(x); }
static inline double slab_exp_double(double x) { return exp(x); }
#define slab_exp(x) _Generic((x), float : slab_exp_float, double : slab_exp_double)(x)

/* The tile functions take up to SLAB_LANES_MAX lanes (slab.lanes may be raised to
 * that where positions are contiguous). */
#define SLAB_LANES_MAX 512

/* Per lane j of tile l, over the r = C elements x_c of its row (at X + base + c*ks +
 * j*LS; LS = 1 for contiguous lanes, passed as a constant so that the loops
 * vectorise): m[j] = max_c x_c and sum[j] = sum_c exp(x_c - m[j]), the max-subtracted
 * sum behind softmax and cross-entropy. Each exp is also stored at the same place in E
 * unless E is NULL (softmax keeps them); unless wd is NULL, wd[j] = sum_c w_c (x_c -
 * m[j]) (w NULL: all 1; label smoothing); unless xt is NULL, xt[j] = x_kt[j] (0 where
 * kt[j] is -1; the target's logit). Sums in double whatever T. The arrays are whole
 * tiles rather than pointers to their first elements so that the compiler knows
 * j < SLAB_LANES_MAX. */
#define SLAB_ROWS(T)                                                                     \
  static inline __attribute__((always_inline)) void slab_rows_##T(                       \
      const T *X, T *E, const slab_lanes *l, int64_t C, int64_t LS, const double *w,     \
      const int32_t *kt, T(*xt)[SLAB_LANES_MAX], T(*m)[SLAB_LANES_MAX],                  \
      double(*sum)[SLAB_LANES_MAX], double(*wd)[SLAB_LANES_MAX]) {                       \
    const int64_t n = l->w;                                                              \
    for (int64_t j = 0; j < n; j++) {                                                    \
      (*m)[j] = -INFINITY;                                                               \
      (*sum)[j] = 0;                                                                     \
      if (wd)                                                                            \
        (*wd)[j] = 0;                                                                    \
      if (xt)                                                                            \
        (*xt)[j] = 0;                                                                    \
    }                                                                                    \
    for (int64_t k = 0; k < C; k++) {                                                    \
      const T *xk = X + l->base + k * l->ks;                                             \
      if (xt)                                                                            \
        for (int64_t j = 0; j < n; j++) {                                                \
          (*m)[j] = xk[j * LS] > (*m)[j] ? xk[j * LS] : (*m)[j];                         \
          (*xt)[j] = kt[j] == (int32_t)k ? xk[j * LS] : (*xt)[j];                        \
        }                                                                                \
      else                                                                               \
        for (int64_t j = 0; j < n; j++)                                                  \
          (*m)[j] = xk[j * LS] > (*m)[j] ? xk[j * LS] : (*m)[j];                         \
    }                                                                                    \
    for (int64_t k = 0; k < C; k++) {                                                    \
      const T *xk = X + l->base + k * l->ks;                                             \
      T *ek = E ? E + l->base + k * l->ks : NULL;                                        \
      const double wk = w ? w[k] : 1.0;                                                  \
      if (ek)                                                                            \
        for (int64_t j = 0; j < n; j++) {                                                \
          T e = slab_exp_##T(xk[j * LS] - (*m)[j]);                                      \
          ek[j * LS] = e;                                                                \
          (*sum)[j] += e;                                                                \
        }                                                                                \
      else if (wd)                                                                       \
        for (int64_t j = 0; j < n; j++) {                                                \
          T d = xk[j * LS] - (*m)[j];                                                    \
          (*sum)[j] += slab_exp_##T(d);                                                  \
          (*wd)[j] += wk * (double)d;                                                    \
        }                                                                                \
      else                                                                               \
        for (int64_t j = 0; j < n; j++)                                                  \
          (*sum)[j] += slab_exp_##T(xk[j * LS] - (*m)[j]);                               \
    }                                                                                    \
  }
SLAB_ROWS(float)
SLAB_ROWS(double)
#undef SLAB_ROWS

/* The float or double instance, from the type of X. */
#define slab_rows(X, ...)                                                                \
  _Generic((X), const float *: slab_rows_float, const double *: slab_rows_double)(      \
      X, __VA_ARGS__)

#endif
