/* softmax and log_softmax over any dim, max-subtracted so large logits stay finite:
 *   softmax(x)_c     = exp(x_c - m) / s,        s = sum_c exp(x_c - m), m = max_c x_c
 *   log_softmax(x)_c = (x_c - m) - log(s)
 * Backward reads the result y from node->output:
 *   softmax:      dx = y * (g - sum_c g*y)
 *   log_softmax:  dx = g - exp(y) * sum_c g */
#include "graph/internal.h"
#include "ops/loss/loss_cuda.h"
#include "ops/loss/slab.h"

#include <tgmath.h>

typedef struct {
  slab s;
  bool log;
} softmax_ctx;

static int softmax_cpu(const softmax_ctx *c, const tg_tensor *x, tg_tensor *y) {
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
      T m[SLAB_LANES_MAX];
      double sum[SLAB_LANES_MAX];
      if (ls == 1)
        slab_rows(X, log_out ? NULL : Y, &l, r, 1, NULL, NULL, NULL, &m, &sum, NULL);
      else
        slab_rows(X, log_out ? NULL : Y, &l, r, ls, NULL, NULL, NULL, &m, &sum, NULL);
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
  return 0;
}

static int softmax_grad_cpu(const softmax_ctx *c, const tg_tensor *y, const tg_tensor *g,
                            tg_tensor *dx) {
  const slab s = c->s;
  const int64_t tasks = slab_tasks(&s), r = s.r;
  const bool log_out = c->log;
  TG_DISPATCH_FLOAT(g->dtype, T, {
    const T *Y = tg__data(y), *G = tg__data(g);
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
          dk[j * ls] = log_out ? gv - slab_exp(y) * dot[j] : y * (gv - dot[j]);
        }
      }
    }
  });
  return 0;
}

/* Kernels, one table per device: softmax_impl and softmax_backward check and record
 * once, then call the table of their input's device. */
typedef struct {
  int (*forward)(const softmax_ctx *c, const tg_tensor *x, tg_tensor *y);
  int (*backward)(const softmax_ctx *c, const tg_tensor *y, const tg_tensor *g,
                  tg_tensor *dx);
} softmax_kernels;

static const softmax_kernels tg__softmax_cpu = {softmax_cpu, softmax_grad_cpu};

#ifdef TG_HAVE_CUDA
static int softmax_cuda(const softmax_ctx *c, const tg_tensor *x, tg_tensor *y) {
  return tg__softmax_cuda_forward(x->dtype, c->log, tg__data(x), c->s.outer, c->s.r,
                                  c->s.inner, tg__data(y), x->device.index);
}

static int softmax_grad_cuda(const softmax_ctx *c, const tg_tensor *y, const tg_tensor *g,
                             tg_tensor *dx) {
  return tg__softmax_cuda_backward(g->dtype, c->log, tg__data(y), tg__data(g), c->s.outer,
                                   c->s.r, c->s.inner, tg__data(dx), g->device.index);
}

static const softmax_kernels tg__softmax_cuda = {softmax_cuda, softmax_grad_cuda};
#endif

static int softmax_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const softmax_ctx *c = node->ctx;
  const softmax_kernels *k =
      tg__pick(node->op, g, &tg__softmax_cpu, TG_IF_CUDA(&tg__softmax_cuda));
  tg_tensor *dx = k ? tg__new_like(g) : NULL;
  if (!dx || k->backward(c, node->output, g, dx) < 0)
    return -1;
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
  const softmax_kernels *k;
  if (d < 0 || !(k = tg__pick(op, x, &tg__softmax_cpu, TG_IF_CUDA(&tg__softmax_cuda))))
    return NULL;
  softmax_ctx c = {slab_around(x->shape, x->ndim, d), log_out};
  tg_tensor *out = tg__new_like(x);
  if (!out)
    return NULL;
  if (k->forward(&c, x, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
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
