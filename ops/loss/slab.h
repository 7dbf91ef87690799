/* Shared by the softmax and loss kernels: a tensor viewed as [outer, r, inner] and
 * reduced over r (the softmax or class dim) at each of the outer*inner positions.
 * One parallel task handles up to SLAB_TILE positions side by side ("lanes"), so the
 * loops over r keep SLAB_TILE independent accumulators and touch few cache lines:
 * lanes are consecutive rows when inner = 1 (softmax over the last dim), consecutive
 * inner positions otherwise ([N, C, H, W] over C). */
#ifndef TG_OPS_LOSS_SLAB_H
#define TG_OPS_LOSS_SLAB_H

#include <stdint.h>
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

/* Per lane j of task l: m[j] = max_k x_k and sum[j] = sum_k exp(x_k - m[j]) over its r
 * elements x_k at X + base + k*ks + j*ls, the max-subtracted sum behind softmax and
 * cross-entropy. Each exp(x_k - m[j]) is also stored at the same place in E unless E
 * is NULL (softmax keeps them). The sums are double whatever T. m and sum point to
 * whole tiles rather than to their first elements so that the compiler still knows
 * j < SLAB_TILE: it unrolls the strided loops on that bound. */
#define SLAB_MAX_SUMEXP(T)                                                               \
  static inline void slab_max_sumexp_##T(const T *X, T *E, const slab_lanes *l,          \
                                         int64_t r, T(*m)[SLAB_TILE],                    \
                                         double(*sum)[SLAB_TILE]) {                      \
    const int64_t w = l->w, ls = l->ls;                                                  \
    for (int64_t j = 0; j < w; j++) {                                                    \
      (*m)[j] = -INFINITY;                                                               \
      (*sum)[j] = 0;                                                                     \
    }                                                                                    \
    for (int64_t k = 0; k < r; k++) {                                                    \
      const T *xk = X + l->base + k * l->ks;                                             \
      for (int64_t j = 0; j < w; j++)                                                    \
        (*m)[j] = xk[j * ls] > (*m)[j] ? xk[j * ls] : (*m)[j];                           \
    }                                                                                    \
    for (int64_t k = 0; k < r; k++) {                                                    \
      const T *xk = X + l->base + k * l->ks;                                             \
      T *ek = E ? E + l->base + k * l->ks : NULL;                                        \
      for (int64_t j = 0; j < w; j++) {                                                  \
        T e = exp(xk[j * ls] - (*m)[j]);                                                 \
        if (ek)                                                                          \
          ek[j * ls] = e;                                                                \
        (*sum)[j] += e;                                                                  \
      }                                                                                  \
    }                                                                                    \
  }
SLAB_MAX_SUMEXP(float)
SLAB_MAX_SUMEXP(double)
#undef SLAB_MAX_SUMEXP

/* The float or double instance, from the type of X. */
#define slab_max_sumexp(X, ...)                                                          \
  _Generic((X), const float *: slab_max_sumexp_float,                                   \
           const double *: slab_max_sumexp_double)(X, __VA_ARGS__)

#endif
