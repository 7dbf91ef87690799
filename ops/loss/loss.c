/* Losses. Classification (cross_entropy, nll_loss) over input [N, C, d1...] or [C]
 * with int64 class targets [N, d1...] or []; pointwise (mse, binary cross-entropy with
 * logits) over equal shapes. Reductions none/mean/sum; the mean of a class loss
 * divides by the number of targets not equal to ignore_index. Losses are summed in
 * double whatever the input dtype. */
#include "graph/internal.h"
#include "ops/loss/loss_cuda.h"
#include "ops/loss/slab.h"

#include <string.h>
#include <tgmath.h>

static int check_reduction(const char *op, tg_reduction r) {
  if (r != TG_REDUCTION_NONE && r != TG_REDUCTION_MEAN && r != TG_REDUCTION_SUM)
    return tg__error("%s: invalid reduction %d (expected TG_REDUCTION_NONE, "
                     "TG_REDUCTION_MEAN or TG_REDUCTION_SUM)",
                     op, (int)r);
  return 0;
}

/* The result: per-element losses of `shape` for reduction none, else 0-dim. */
static tg_tensor *new_loss(tg_reduction r, const tg_tensor *like, tg_dtype dtype) {
  static const int64_t scalar[1] = {1};
  if (r == TG_REDUCTION_NONE)
    return tg__new(like->shape, like->ndim, dtype, like->device);
  return tg__new(scalar, 0, dtype, like->device);
}

/* Sets a reduced result from the summed losses; returns dloss/dloss_i (the scale of
 * the incoming gradient in backward). count 0 gives NaN for a mean, as PyTorch. */
static double finish_reduction(tg_reduction r, tg_tensor *out, double total,
                               double count) {
  if (r == TG_REDUCTION_NONE)
    return 1.0;
  tg_fill_(out, r == TG_REDUCTION_MEAN ? total / count : total); /* on out's device */
  return r == TG_REDUCTION_MEAN ? 1.0 / count : 1.0;
}

/* ------------------------------------------------------ class losses -- */

typedef struct {
  slab s; /* input as [N, C, d1*d2*...]: r = C */
  tg_reduction reduction;
  int64_t ignore_index;
  double scale;
} class_ctx;

/* The CUDA kernels of the losses (loss.cu), called where the CPU loops run: the losses'
 * checks and tape stay shared; tg__pick refuses devices without kernels. */
#ifdef TG_HAVE_CUDA
static const int loss_cuda_table = 1;
#define LOSS_CUDA TG_IF_CUDA(&loss_cuda_table)
#else
#define LOSS_CUDA NULL
#endif
static const int loss_cpu_table = 1;
#ifndef TG_HAVE_CUDA
/* Built without CUDA, tg__pick refuses CUDA tensors before a launcher is reached:
 * these stand in for loss.cu's so that the calls link. */
static int no_cuda(int unused, ...) {
  (void)unused;
  return tg__error("tapegrad was built without CUDA");
}
#define tg__loss_cuda_count_targets(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_ce_forward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_ce_backward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_nll_forward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_nll_backward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_pointwise_forward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_pointwise_backward(...) no_cuda(0, __VA_ARGS__)
#endif

/* Number of targets not ignored; -1 naming the first target outside [0, C). */
static int64_t count_targets(const char *op, const tg_tensor *target, int64_t C,
                             int64_t ignore) {
  const int64_t *t = tg__data(target);
  const int64_t n = target->numel;
  int64_t count = 0, bad = 0;
  if (tg__on_cuda(target)) {
    int64_t first = -1;
    if (tg__loss_cuda_count_targets(t, n, C, ignore, &count, &first,
                                    target->device.index) < 0)
      return -1;
    if (first < 0)
      return count;
    int64_t v;
    if (tg__cuda_memcpy(&v, TG_CPU, t + first, target->device, sizeof v) < 0)
      return -1;
    return tg__error("%s: Target %lld is out of bounds: expected a class index in "
                     "[0, %lld) or ignore_index (%lld), found at target element %lld",
                     op, (long long)v, (long long)C, (long long)ignore,
                     (long long)first);
  }
#pragma omp parallel for reduction(+ : count, bad) num_threads(tg__threads(n))
  for (int64_t i = 0; i < n; i++) {
    if (t[i] == ignore)
      continue;
    if (t[i] < 0 || t[i] >= C)
      bad++;
    else
      count++;
  }
  for (int64_t i = 0; bad && i < n; i++)
    if (t[i] != ignore && (t[i] < 0 || t[i] >= C))
      return tg__error("%s: Target %lld is out of bounds: expected a class index in "
                       "[0, %lld) or ignore_index (%lld), found at target element %lld",
                       op, (long long)t[i], (long long)C, (long long)ignore,
                       (long long)i);
  return count;
}

/* Checks the arguments of a class loss (messages call `in` in_name) and plans its
 * kernels. Returns the number of targets not ignored, or -1. */
static int64_t class_plan(const char *op, const char *in_name, const tg_tensor *in,
                          const tg_tensor *target, tg_reduction reduction,
                          int64_t ignore_index, class_ctx *c) {
  char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN], e[TG_SHAPE_STR_LEN];
  if (!tg__nonnull(in, op, in_name) || !tg__nonnull(target, op, "target"))
    return -1;
  if (check_reduction(op, reduction) < 0 || tg__check_same(op, 1, &in, true) < 0)
    return -1;
  if (target->dtype != TG_I64)
    return tg__error("%s: expected target of dtype int64 holding class indices, but "
                     "got %s (class-probability targets are not supported)",
                     op, tg_dtype_name(target->dtype));
  if (target->device.type != in->device.type || target->device.index != in->device.index)
    return tg__error("%s: expected input and target on the same device", op);
  if (in->ndim == 0)
    return tg__error("%s: expected input of shape [C], [N, C] or [N, C, d1, ...], but "
                     "got a 0-dim tensor",
                     op);
  int cdim = in->ndim == 1 ? 0 : 1;
  int64_t want[TG_MAX_DIMS];
  int wnd = 0;
  for (int i = 0; i < in->ndim; i++)
    if (i != cdim)
      want[wnd++] = in->shape[i];
  bool same = target->ndim == wnd;
  for (int i = 0; same && i < wnd; i++)
    same = target->shape[i] == want[i];
  if (!same && cdim == 1 && target->ndim >= 1 && target->shape[0] != in->shape[0])
    return tg__error("%s: Expected input batch_size (%lld) to match target batch_size "
                     "(%lld) (input shape %s, target shape %s)",
                     op, (long long)in->shape[0], (long long)target->shape[0],
                     tg_shape_str(in, a, sizeof a), tg_shape_str(target, b, sizeof b));
  if (!same)
    return tg__error("%s: expected target of shape %s for input of shape %s, but got "
                     "target shape %s",
                     op, tg__shape_fmt(want, wnd, e, sizeof e),
                     tg_shape_str(in, a, sizeof a), tg_shape_str(target, b, sizeof b));
  if (!tg__pick(op, in, &loss_cpu_table, LOSS_CUDA))
    return -1;
  c->s = slab_around(in->shape, in->ndim, cdim);
  c->reduction = reduction;
  c->ignore_index = ignore_index;
  return count_targets(op, target, c->s.r, ignore_index);
}

/* loss_i = log(sum_c exp(x_ic)) - x_i,t = (m_i - x_i,t) + log(s_i),
 *   m_i = max_c x_ic,  s_i = sum_c exp(x_ic - m_i).
 * stats [2, positions] keeps m_i and log(s_i) for backward, which then forms the
 * softmax as exp((x - m) - log(s)) in the input dtype without cancellation, however
 * large the logits. Returns the sum of the losses. */
static double cross_entropy_kernel(const class_ctx *c, const tg_tensor *x,
                                   const tg_tensor *target, tg_tensor *stats,
                                   tg_tensor *none_out) {
  const slab s = c->s;
  const int64_t tasks = slab_tasks(&s), npos = s.outer * s.inner, C = s.r;
  const int64_t ignore = c->ignore_index, *tgt = tg__data(target);
  double total = 0;
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x);
    T *L = none_out ? tg__data(none_out) : NULL;
    T *M = tg__data(stats), *LS = M + npos;
_Pragma("omp parallel for reduction(+ : total) num_threads(tg__reduce_threads(x->numel * 8))")
    for (int64_t t = 0; t < tasks; t++) {
      const slab_lanes l = slab_task(&s, t);
      const int64_t w = l.w, ls = l.ls;
      T m[SLAB_TILE];
      double sum[SLAB_TILE];
      slab_max_sumexp(X, NULL, &l, C, &m, &sum);
      for (int64_t j = 0; j < w; j++) {
        int64_t pos = l.pos0 + j, k = tgt[pos];
        double log_sum = log(sum[j]);
        M[pos] = m[j];
        LS[pos] = (T)log_sum;
        double xt = k == ignore ? 0 : (double)X[l.base + k * l.ks + j * ls];
        double l_pos = k == ignore ? 0 : ((double)m[j] - xt) + log_sum;
        if (L)
          L[pos] = (T)l_pos;
        total += l_pos;
      }
    }
  });
  return total;
}

/* dx_ic = (softmax(x_i)_c - [c == t_i]) * g_i * scale, zero where t_i is ignored. */
static int cross_entropy_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  if (!tg__input_needs_grad(node, 0))
    return 0;
  const class_ctx *c = node->ctx;
  const tg_tensor *x = node->inputs[0];
  const int64_t *tgt = tg__data(node->inputs[1]);
  const slab s = c->s;
  const int64_t tasks = slab_tasks(&s), npos = s.outer * s.inner, C = s.r;
  const int64_t ignore = c->ignore_index;
  const bool per_elem = c->reduction == TG_REDUCTION_NONE;
  const double scale = c->scale;
  tg_tensor *dx = tg__new_like(x);
  if (!dx)
    return -1;
  if (tg__on_cuda(x)) {
    gi[0] = dx;
    return tg__loss_cuda_ce_backward(x->dtype, tg__data(x), tgt, tg__data(node->saved[0]),
                                     tg__data(g), per_elem, scale, s.outer, C, s.inner,
                                     ignore, tg__data(dx), x->device.index);
  }
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *G = tg__data(g);
    const T *M = tg__data(node->saved[0]), *LS = M + npos;
    T *D = tg__data(dx);
_Pragma("omp parallel for num_threads(tg__threads(x->numel * 8))")
    for (int64_t t = 0; t < tasks; t++) {
      const slab_lanes l = slab_task(&s, t);
      const int64_t w = l.w, ls = l.ls;
      T gs[SLAB_TILE], m[SLAB_TILE], log_sum[SLAB_TILE];
      int64_t cls[SLAB_TILE];
      for (int64_t j = 0; j < w; j++) {
        int64_t pos = l.pos0 + j;
        m[j] = M[pos];
        log_sum[j] = LS[pos];
        cls[j] = tgt[pos];
        gs[j] = cls[j] == ignore ? 0 : (T)((double)G[per_elem ? pos : 0] * scale);
      }
      for (int64_t k = 0; k < C; k++) {
        const T *xk = X + l.base + k * l.ks;
        T *dk = D + l.base + k * l.ks;
        for (int64_t j = 0; j < w; j++) {
          T p = exp((xk[j * ls] - m[j]) - log_sum[j]);
          dk[j * ls] = (p - (T)(k == cls[j])) * gs[j];
        }
      }
    }
  });
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_cross_entropy(const tg_tensor *input, const tg_tensor *target,
                            tg_reduction reduction, int64_t ignore_index) {
  const char *op = "tg_cross_entropy";
  class_ctx c;
  int64_t count = class_plan(op, "input", input, target, reduction, ignore_index, &c);
  if (count < 0)
    return NULL;
  int64_t stats_shape[2] = {2, c.s.outer * c.s.inner};
  tg_tensor *stats = tg__new(stats_shape, 2, input->dtype, input->device);
  tg_tensor *out = new_loss(reduction, target, input->dtype);
  if (!stats || !out) {
    tg_tensor_free(stats);
    tg_tensor_free(out);
    return NULL;
  }
  tg_tensor *none_out = reduction == TG_REDUCTION_NONE ? out : NULL;
  double total = 0;
  if (!tg__on_cuda(input))
    total = cross_entropy_kernel(&c, input, target, stats, none_out);
  else if (tg__loss_cuda_ce_forward(input->dtype, tg__data(input), tg__data(target),
                                    c.s.outer, c.s.r, c.s.inner, ignore_index,
                                    tg__data(stats),
                                    none_out ? tg__data(none_out) : NULL, &total,
                                    input->device.index) < 0) {
    tg_tensor_free(stats);
    tg_tensor_free(out);
    return NULL;
  }
  c.scale = finish_reduction(reduction, out, total, (double)count);
  const tg_tensor *in[2] = {input, target};
  tg_node *node;
  out = tg__finish(op, out, 2, in, cross_entropy_backward, &node);
  if (node) {
    *(class_ctx *)tg__ctx(node, sizeof c) = c;
    tg__save(node, stats);
  }
  tg_tensor_free(stats);
  return out;
}

/* loss_i = -x_i,t_i; dx_i,t_i = -g_i * scale. */
static int nll_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  if (!tg__input_needs_grad(node, 0))
    return 0;
  const class_ctx *c = node->ctx;
  const tg_tensor *x = node->inputs[0];
  const int64_t *tgt = tg__data(node->inputs[1]);
  const int64_t inner = c->s.inner, C = c->s.r, npos = c->s.outer * inner;
  const int64_t ignore = c->ignore_index;
  const bool per_elem = c->reduction == TG_REDUCTION_NONE;
  const double scale = c->scale;
  tg_tensor *dx = tg_zeros(x->shape, x->ndim, x->dtype, x->device);
  if (!dx)
    return -1;
  if (tg__on_cuda(x)) {
    gi[0] = dx;
    return tg__loss_cuda_nll_backward(x->dtype, tg__data(g), tgt, per_elem, scale,
                                      c->s.outer, C, inner, ignore, tg__data(dx),
                                      x->device.index);
  }
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *G = tg__data(g);
    T *D = tg__data(dx);
_Pragma("omp parallel for num_threads(tg__threads(npos))")
    for (int64_t pos = 0; pos < npos; pos++) {
      int64_t k = tgt[pos];
      if (k != ignore)
        D[(pos / inner * C + k) * inner + pos % inner] =
            (T)(-(double)G[per_elem ? pos : 0] * scale);
    }
  });
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_nll_loss(const tg_tensor *log_probs, const tg_tensor *target,
                       tg_reduction reduction, int64_t ignore_index) {
  const char *op = "tg_nll_loss";
  class_ctx c;
  int64_t count =
      class_plan(op, "log_probs", log_probs, target, reduction, ignore_index, &c);
  if (count < 0)
    return NULL;
  tg_tensor *out = new_loss(reduction, target, log_probs->dtype);
  if (!out)
    return NULL;
  const int64_t inner = c.s.inner, C = c.s.r, npos = c.s.outer * inner;
  const int64_t *tgt = tg__data(target);
  double total = 0;
  if (tg__on_cuda(log_probs) &&
      tg__loss_cuda_nll_forward(log_probs->dtype, tg__data(log_probs), tgt, c.s.outer, C,
                                inner, ignore_index,
                                reduction == TG_REDUCTION_NONE ? tg__data(out) : NULL,
                                &total, log_probs->device.index) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  const int64_t host_npos = tg__on_cuda(log_probs) ? 0 : npos;
  TG_DISPATCH_FLOAT(log_probs->dtype, T, {
    const T *X = tg__data(log_probs);
    T *L = reduction == TG_REDUCTION_NONE ? tg__data(out) : NULL;
_Pragma("omp parallel for reduction(+ : total) num_threads(tg__reduce_threads(host_npos))")
    for (int64_t pos = 0; pos < host_npos; pos++) {
      int64_t k = tgt[pos];
      double l =
          k == ignore_index ? 0 : -(double)X[(pos / inner * C + k) * inner + pos % inner];
      if (L)
        L[pos] = (T)l;
      total += l;
    }
  });
  c.scale = finish_reduction(reduction, out, total, (double)count);
  const tg_tensor *in[2] = {log_probs, target};
  tg_node *node;
  out = tg__finish(op, out, 2, in, nll_backward, &node);
  if (node)
    *(class_ctx *)tg__ctx(node, sizeof c) = c;
  return out;
}

/* -------------------------------------------------- pointwise losses -- */

/*   mse:  l = (x - t)^2                              dx = 2(x - t) g,  dt = -dx
 *   bce:  l = max(x, 0) - x t + log1p(exp(-|x|))     dx = (sigmoid(x) - t) g,
 *                                                    dt = -x g                     */
typedef enum { P_MSE, P_BCE } pointwise_kind;
static const char *const pointwise_names[] = {"tg_mse_loss",
                                              "tg_binary_cross_entropy_with_logits"};

typedef struct {
  pointwise_kind kind;
  tg_reduction reduction;
  double scale;
} pointwise_ctx;

static int pointwise_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const pointwise_ctx *c = node->ctx;
  const tg_tensor *x = node->inputs[0], *t = node->inputs[1];
  tg_tensor *dx = tg__input_needs_grad(node, 0) ? tg__new_like(x) : NULL;
  tg_tensor *dt = tg__input_needs_grad(node, 1) ? tg__new_like(t) : NULL;
  if ((!dx && tg__input_needs_grad(node, 0)) || (!dt && tg__input_needs_grad(node, 1)))
    return -1;
  const int64_t n = x->numel;
  const bool per_elem = c->reduction == TG_REDUCTION_NONE, mse = c->kind == P_MSE;
  gi[0] = dx;
  gi[1] = dt;
  if (tg__on_cuda(x))
    return tg__loss_cuda_pointwise_backward(c->kind, x->dtype, tg__data(x), tg__data(t),
                                            tg__data(g), per_elem, c->scale, n,
                                            dx ? tg__data(dx) : NULL,
                                            dt ? tg__data(dt) : NULL, x->device.index);
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *Y = tg__data(t), *G = tg__data(g);
    T *DX = dx ? tg__data(dx) : NULL, *DT = dt ? tg__data(dt) : NULL;
    const T scale = (T)c->scale;
_Pragma("omp parallel for num_threads(tg__threads(n * 4))")
    for (int64_t i = 0; i < n; i++) {
      T gs = G[per_elem ? i : 0] * scale, xv = X[i], tv = Y[i], ddx, ddt;
      if (mse) {
        ddx = (T)2 * (xv - tv) * gs;
        ddt = -ddx;
      } else {
        T e = exp(-fabs(xv)); /* sigmoid without overflow on either side */
        T sig = xv >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);
        ddx = (sig - tv) * gs;
        ddt = -xv * gs;
      }
      if (DX)
        DX[i] = ddx;
      if (DT)
        DT[i] = ddt;
    }
  });
  return 0;
}

static tg_tensor *pointwise_loss(pointwise_kind kind, const tg_tensor *input,
                                 const tg_tensor *target, tg_reduction reduction) {
  const char *op = pointwise_names[kind];
  if (!tg__nonnull(input, op, "input") || !tg__nonnull(target, op, "target"))
    return NULL;
  const tg_tensor *in[2] = {input, target};
  if (check_reduction(op, reduction) < 0 || tg__check_same(op, 2, in, true) < 0)
    return NULL;
  bool same = input->ndim == target->ndim;
  for (int i = 0; same && i < input->ndim; i++)
    same = input->shape[i] == target->shape[i];
  if (!same) {
    char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
    return tg__error("%s: Target size (%s) must be the same as input size (%s)", op,
                     tg_shape_str(target, b, sizeof b), tg_shape_str(input, a, sizeof a)),
           NULL;
  }
  if (!tg__pick(op, input, &loss_cpu_table, LOSS_CUDA))
    return NULL;
  tg_tensor *out = new_loss(reduction, input, input->dtype);
  if (!out)
    return NULL;
  const int64_t n = tg__on_cuda(input) ? 0 : input->numel; /* the CPU loop's */
  const bool mse = kind == P_MSE;
  double total = 0;
  void *none_out = reduction == TG_REDUCTION_NONE ? tg__data(out) : NULL;
  if (tg__on_cuda(input) &&
      tg__loss_cuda_pointwise_forward(kind, input->dtype, tg__data(input),
                                      tg__data(target), input->numel, none_out, &total,
                                      input->device.index) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  TG_DISPATCH_FLOAT(input->dtype, T, {
    const T *X = tg__data(input), *Y = tg__data(target);
    T *L = reduction == TG_REDUCTION_NONE ? tg__data(out) : NULL;
_Pragma("omp parallel for reduction(+ : total) num_threads(tg__reduce_threads(n * 4))")
    for (int64_t i = 0; i < n; i++) {
      T xv = X[i], tv = Y[i];
      T l = mse ? (xv - tv) * (xv - tv)
                : (xv > 0 ? xv : (T)0) - xv * tv + log1p(exp(-fabs(xv)));
      if (L)
        L[i] = l;
      total += l;
    }
  });
  pointwise_ctx c = {kind, reduction,
                     finish_reduction(reduction, out, total, (double)input->numel)};
  tg_node *node;
  out = tg__finish(op, out, 2, in, pointwise_backward, &node);
  if (node)
    *(pointwise_ctx *)tg__ctx(node, sizeof c) = c;
  return out;
}

tg_tensor *tg_mse_loss(const tg_tensor *input, const tg_tensor *target,
                       tg_reduction reduction) {
  return pointwise_loss(P_MSE, input, target, reduction);
}

tg_tensor *tg_binary_cross_entropy_with_logits(const tg_tensor *input,
                                               const tg_tensor *target,
                                               tg_reduction reduction) {
  return pointwise_loss(P_BCE, input, target, reduction);
}
