/* softmax and log_softmax over any dim, max-subtracted so large logits stay finite:
 *   softmax(x)_c     = exp(x_c - m) / s,        s = sum_c exp(x_c - m), m = max_c x_c
 *   log_softmax(x)_c = (x_c - m) - log(s)
 * Backward reads the result y from node->output:
 *   softmax:      dx = y * (g - sum_c g*y)
 *   log_softmax:  dx = g - exp(y) * sum_c g */
#include "graph/internal.h"
#include "ops/loss/slab.h"

#include <tgmath.h>

typedef struct {
  slab s;
  bool log;
} softmax_ctx;

static void softmax_kernel(const softmax_ctx *c, const tg_tensor *x, tg_tensor *y) {
  const slab s = c->s;
  const int64_t tasks = slab_tasks(&s), r = s.r;
  const bool log_out = c->log;
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x);
    T *Y = tg__data(y);
_Pragma("omp parallel for num_threads(tg__threads(x->numel * 8))")
    for (int64_t t = 0; t < tasks; t++) {
      const slab_lanes l = slab_task(&s, t);
      const int64_t w = l.w, ls = l.ls;
      T m[SLAB_TILE];
      double sum[SLAB_TILE];
      slab_max_sumexp(X, log_out ? NULL : Y, &l, r, &m, &sum);
      T f[SLAB_TILE]; /* log(sum) for log_softmax, 1/sum for softmax */
      for (int64_t j = 0; j < w; j++)
        f[j] = (T)(log_out ? log(sum[j]) : 1.0 / sum[j]);
      for (int64_t k = 0; k < r; k++) {
        const T *xk = X + l.base + k * l.ks;
        T *yk = Y + l.base + k * l.ks;
        for (int64_t j = 0; j < w; j++)
          yk[j * ls] = log_out ? (xk[j * ls] - m[j]) - f[j] : yk[j * ls] * f[j];
      }
    }
  });
}

static int softmax_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const softmax_ctx *c = node->ctx;
  const slab s = c->s;
  const int64_t tasks = slab_tasks(&s), r = s.r;
  const bool log_out = c->log;
  tg_tensor *dx = tg__new_like(g);
  if (!dx)
    return -1;
  TG_DISPATCH_FLOAT(g->dtype, T, {
    const T *Y = tg__data(node->output), *G = tg__data(g);
    T *D = tg__data(dx);
_Pragma("omp parallel for num_threads(tg__threads(g->numel * 8))")
    for (int64_t t = 0; t < tasks; t++) {
      const slab_lanes l = slab_task(&s, t);
      const int64_t w = l.w, ls = l.ls;
      double acc[SLAB_TILE] = {0};
      for (int64_t k = 0; k < r; k++) {
        const T *yk = Y + l.base + k * l.ks, *gk = G + l.base + k * l.ks;
        for (int64_t j = 0; j < w; j++)
          acc[j] +=
              log_out ? (double)gk[j * ls] : (double)gk[j * ls] * (double)yk[j * ls];
      }
      T dot[SLAB_TILE];
      for (int64_t j = 0; j < w; j++)
        dot[j] = (T)acc[j];
      for (int64_t k = 0; k < r; k++) {
        const T *yk = Y + l.base + k * l.ks, *gk = G + l.base + k * l.ks;
        T *dk = D + l.base + k * l.ks;
        for (int64_t j = 0; j < w; j++) {
          T y = yk[j * ls], gv = gk[j * ls];
          dk[j * ls] = log_out ? gv - exp(y) * dot[j] : y * (gv - dot[j]);
        }
      }
    }
  });
  gi[0] = dx;
  return 0;
}

static tg_tensor *softmax_impl(const tg_tensor *x, int dim, bool log_out,
                               const char *op) {
  if (!tg__nonnull(x, op, "input"))
    return NULL;
  if (tg__check_same(op, 1, &x, true) < 0)
    return NULL;
  int d = tg__wrap_dim(dim, x->ndim, op);
  if (d < 0)
    return NULL;
  if (x->device.type != TG_DEVICE_CPU)
    return tg__unsupported_device(op, x), NULL;
  softmax_ctx c = {slab_around(x->shape, x->ndim, d), log_out};
  tg_tensor *out = tg__new_like(x);
  if (!out)
    return NULL;
  softmax_kernel(&c, x, out);
  tg_node *node;
  out = tg__finish(op, out, 1, &x, softmax_backward, &node);
  if (node)
    *(softmax_ctx *)tg__ctx(node, sizeof c) = c;
  return out;
}

tg_tensor *tg_softmax(const tg_tensor *t, int dim) {
  return softmax_impl(t, dim, false, "tg_softmax");
}

tg_tensor *tg_log_softmax(const tg_tensor *t, int dim) {
  return softmax_impl(t, dim, true, "tg_log_softmax");
}
