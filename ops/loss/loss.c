/* Losses. Classification (cross_entropy, nll_loss) over input [N, C, d1...] or [C]
 * with int64 class targets [N, d1...] or []; pointwise (mse, binary cross-entropy with
 * logits) over equal shapes. Reductions none/mean/sum; the mean of a class loss
 * divides by the number of targets not equal to ignore_index. Losses are summed in
 * double whatever the input dtype. */
#include "ops/loss/loss.h"
#include "graph/internal.h"
#include "ops/loss/loss_cuda.h"
#include "ops/loss/slab.h"

#include <stdlib.h>
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
#define tg__loss_cuda_ce_forward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_ce_backward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_nll_forward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_nll_backward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_pointwise_forward(...) no_cuda(0, __VA_ARGS__)
#define tg__loss_cuda_pointwise_backward(...) no_cuda(0, __VA_ARGS__)
#endif

/* Number of targets not ignored; -1 naming the first target outside [0, C). On CUDA,
 * 0: the kernels check the targets there without waiting (loss_cuda.h). */
static int64_t count_targets(const char *op, const tg_tensor *target, int64_t C,
                             int64_t ignore) {
  const int64_t *t = tg__data(target);
  const int64_t n = target->numel;
  int64_t count = 0, bad = 0;
  if (tg__on_cuda(target))
    return 0;
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
 * kernels (the targets' values are checked by count_targets or the kernel). */
static int class_plan(const char *op, const char *in_name, const tg_tensor *in,
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
  return 0;
}

int64_t tg__class_targets(const char *op, const char *in_name, const tg_tensor *input,
                          const tg_tensor *target, tg_reduction reduction,
                          int64_t ignore_index) {
  class_ctx c;
  if (class_plan(op, in_name, input, target, reduction, ignore_index, &c) < 0)
    return -1;
  return count_targets(op, target, c.s.r, ignore_index);
}

/* ------------------------------------------------------ cross-entropy -- */

/* Cross-entropy over class indices, PyTorch's cross_entropy(x, t, weight=w,
 * ignore_index, label_smoothing=s), in one pass over the logits each way. Position i
 * with target t (w_c = 1 without weights, W = sum_c w_c, C classes) loses
 *   loss_i = (1 - s) w_t (lse_i - x_it) + s/C sum_c w_c (lse_i - x_ic),  0 if ignored,
 *   lse_i - x_ic = (m_i - x_ic) + log sum_c exp(x_ic - m_i),  m_i = max_c x_ic,
 * finite however large the logits. The mean divides the sum by that of w_t over the
 * targets not ignored (their number without weights), as PyTorch's nll_loss does.
 *   dx_ic = g_i [p_ic ((1 - s) w_t + s/C W) - (1 - s) w_t [c == t] - s/C w_c],
 * p the softmax, which backward recomputes from x instead of keeping statistics.
 * The weights are constants (PyTorch has no gradient for them either). */
typedef struct {
  slab s; /* input as [N, C, d1*d2*...]: r = C */
  tg_reduction reduction;
  int64_t ignore_index;
  double scale;           /* dloss/dloss_i */
  double smoothing, wsum; /* s and W */
  bool weighted;
  double w[]; /* the C weights when weighted */
} ce_ctx;

/* Positions per task where they are contiguous ([N, C, H, W]): a tile of C rows of
 * them stays in L1 while it is read twice (max, then exp). */
static int64_t ce_lanes(int64_t C) {
  int64_t l = 4096 / (C ? C : 1);
  return l < 16 ? 16 : l > SLAB_LANES_MAX ? SLAB_LANES_MAX : l & ~(int64_t)15;
}

/* log of the kernels, of a sum of exp(x - m) (>= 1): the float one vectorises
 * (slab.h), the double one is libm's, as accurate as gradcheck needs. */
static inline float ce_log_float(double sum) { return slab_logf((float)sum); }
static inline double ce_log_double(double sum) { return log(sum); }

/* kt[j] = the class of target tk[j], -1 where it is ignore_index or outside [0, C)
 * (C <= INT32_MAX); returns the number outside and not ignored. */
static inline int64_t ce_targets(const int64_t *tk, int64_t n, int64_t ignore, int64_t C,
                                 int32_t *kt) {
  int64_t bad = 0;
  for (int64_t j = 0; j < n; j++) { /* no && nor float selects: this vectorises */
    const int64_t t = tk[j], ign = t == ignore, in = (uint64_t)t < (uint64_t)C;
    kt[j] = (int32_t)(ign | !in ? -1 : t);
    bad += !ign & !in;
  }
  return bad;
}

/* v where keep, else +0 (NaN too, as PyTorch's ignored positions), selected as integer
 * bits: GCC does not if-convert the float select in the loops below. */
static inline double ce_keep(bool keep, double v) {
  int64_t b;
  memcpy(&b, &v, sizeof b);
  b &= -(int64_t)keep;
  memcpy(&v, &b, sizeof v);
  return v;
}

/* Sum of v[0..n) in a fixed order, eight partial sums (so that it vectorises). */
static inline double ce_sum(const double *v, int64_t n) {
  double acc[8] = {0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int q = 0; q < 8; q++)
      acc[q] += v[j + q];
  for (int q = 0; j < n; j++, q++)
    acc[q] += v[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
         ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* The kernels' tile functions, per dtype T and lane stride LS (1 for contiguous
 * positions, a constant the compiler vectorises on). */
#define CE_TILES(T)                                                                      \
  /* Forward of one tile: per-position losses into L (unless NULL); part[0] = their sum, \
   * part[1] = that of the targets' weights, part[2] = the targets out of range. */      \
  static inline __attribute__((always_inline)) void ce_forward_tile_##T(                 \
      const ce_ctx *c, const T *X, const int64_t *tgt, const slab_lanes *l, int64_t LS,  \
      T *L, double part[3]) {                                                            \
    const int64_t C = c->s.r, ignore = c->ignore_index, n = l->w;                        \
    const int64_t *tk = tgt + l->pos0;                                                   \
    const double s = c->smoothing, sc = s / (double)C, W = c->wsum;                      \
    const double *w = c->weighted ? c->w : NULL;                                         \
    T m[SLAB_LANES_MAX], xt[SLAB_LANES_MAX];                                             \
    double sum[SLAB_LANES_MAX], wd[SLAB_LANES_MAX], li[SLAB_LANES_MAX],                  \
        wt[SLAB_LANES_MAX];                                                              \
    int32_t kt[SLAB_LANES_MAX];                                                          \
    const int64_t bad = ce_targets(tk, n, ignore, C, kt);                                \
    slab_rows_##T(X, NULL, l, C, LS, w, kt, &xt, &m, &sum, s > 0 ? &wd : NULL);          \
    if (!(s > 0))                                                                        \
      for (int64_t j = 0; j < n; j++)                                                    \
        wd[j] = 0;                                                                       \
    for (int64_t j = 0; j < n; j++)                                                      \
      wt[j] = kt[j] < 0 ? 0.0 : w ? w[kt[j]] : 1.0;                                      \
    for (int64_t j = 0; j < n; j++) {                                                    \
      const double lse = (double)ce_log_##T(sum[j]); /* lse_i - m_i */                   \
      double v = (1 - s) * wt[j] * (((double)m[j] - (double)xt[j]) + lse) +              \
                 sc * (W * lse - wd[j]);                                                 \
      li[j] = ce_keep(kt[j] >= 0, v);                                                    \
    }                                                                                    \
    if (L)                                                                               \
      for (int64_t j = 0; j < n; j++)                                                    \
        L[l->pos0 + j] = (T)li[j];                                                       \
    part[0] = ce_sum(li, n);                                                             \
    part[1] = ce_sum(wt, n);                                                             \
    part[2] = (double)bad;                                                               \
  }                                                                                      \
                                                                                         \
  /* Backward of one tile into D; the upstream gradient is G[pos] when per_elem, else    \
   * G[0], times the reduction's scale. */                                               \
  static inline __attribute__((always_inline)) void ce_backward_tile_##T(                \
      const ce_ctx *c, const T *X, const int64_t *tgt, const T *G, bool per_elem,        \
      const slab_lanes *l, int64_t LS, T *D) {                                           \
    const int64_t C = c->s.r, ignore = c->ignore_index, n = l->w;                        \
    const int64_t *tk = tgt + l->pos0;                                                   \
    const double s = c->smoothing, sc = s / (double)C, W = c->wsum, g0 = (double)G[0];   \
    const double *w = c->weighted ? c->w : NULL;                                         \
    T m[SLAB_LANES_MAX], a[SLAB_LANES_MAX], b[SLAB_LANES_MAX], u[SLAB_LANES_MAX];        \
    double sum[SLAB_LANES_MAX];                                                          \
    int32_t kt[SLAB_LANES_MAX];                                                          \
    slab_rows_##T(X, D, l, C, LS, NULL, NULL, NULL, &m, &sum, NULL);                     \
    ce_targets(tk, n, ignore, C, kt);                                                    \
    for (int64_t j = 0; j < n; j++) {                                                    \
      const double wt = kt[j] < 0 ? 0.0 : w ? w[kt[j]] : 1.0;                            \
      const double gj =                                                                  \
          kt[j] < 0 ? 0.0 : (per_elem ? (double)G[l->pos0 + j] : g0) * c->scale;         \
      a[j] = (T)(gj * ((1 - s) * wt + sc * W) / sum[j]);                                 \
      b[j] = (T)(gj * (1 - s) * wt);                                                     \
      u[j] = (T)(gj * sc);                                                               \
    }                                                                                    \
    for (int64_t k = 0; k < C; k++) {                                                    \
      T *dk = D + l->base + k * l->ks;                                                   \
      const T wk = w ? (T)w[k] : (T)1;                                                   \
      for (int64_t j = 0; j < n; j++) {                                                  \
        const T v = dk[j * LS] * a[j] - u[j] * wk;                                       \
        dk[j * LS] = kt[j] == (int32_t)k ? v - b[j] : v;                                 \
      }                                                                                  \
    }                                                                                    \
  }
CE_TILES(float)
CE_TILES(double)
#undef CE_TILES
#define ce_forward_tile(c, X, ...)                                                       \
  _Generic((X), const float *: ce_forward_tile_float,                                   \
           const double *: ce_forward_tile_double)(c, X, __VA_ARGS__)
#define ce_backward_tile(c, X, ...)                                                      \
  _Generic((X), const float *: ce_backward_tile_float,                                  \
           const double *: ce_backward_tile_double)(c, X, __VA_ARGS__)

/* Sums the losses into *total and the targets' weights into *wsum, tile by tile in
 * a fixed order (the same bits at every thread count); -1 naming the first target
 * outside [0, C) that is not ignore_index. */
static int ce_forward_cpu(const char *op, const ce_ctx *c, const tg_tensor *x,
                          const tg_tensor *target, tg_tensor *none_out, double *total,
                          double *wsum) {
  const slab s = c->s;
  const int64_t tasks = slab_tasks(&s);
  const int64_t *tgt = tg__data(target);
  double *part = calloc((size_t)(tasks ? tasks : 1), 3 * sizeof *part);
  if (!part)
    return tg__error("%s: out of memory", op);
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x);
    T *L = none_out ? tg__data(none_out) : NULL;
_Pragma("omp parallel for num_threads(tg__threads(x->numel * 8))")
    for (int64_t t = 0; t < tasks; t++) {
      const slab_lanes l = slab_task(&s, t);
      if (l.ls == 1)
        ce_forward_tile(c, X, tgt, &l, 1, L, part + 3 * t);
      else
        ce_forward_tile(c, X, tgt, &l, l.ls, L, part + 3 * t);
    }
  });
  double sum = 0, weights = 0, bad = 0;
  for (int64_t t = 0; t < tasks; t++) {
    sum += part[3 * t];
    weights += part[3 * t + 1];
    bad += part[3 * t + 2];
  }
  free(part);
  *total = sum;
  *wsum = weights;
  return bad ? count_targets(op, target, s.r, c->ignore_index) : 0; /* names it */
}

static void ce_backward_cpu(const ce_ctx *c, const tg_tensor *x, const tg_tensor *target,
                            const tg_tensor *g, tg_tensor *dx) {
  const slab s = c->s;
  const int64_t tasks = slab_tasks(&s), *tgt = tg__data(target);
  const bool per_elem = c->reduction == TG_REDUCTION_NONE;
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *G = tg__data(g);
    T *D = tg__data(dx);
_Pragma("omp parallel for num_threads(tg__threads(x->numel * 8))")
    for (int64_t t = 0; t < tasks; t++) {
      const slab_lanes l = slab_task(&s, t);
      if (l.ls == 1)
        ce_backward_tile(c, X, tgt, G, per_elem, &l, 1, D);
      else
        ce_backward_tile(c, X, tgt, G, per_elem, &l, l.ls, D);
    }
  });
}

static int cross_entropy_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  if (!tg__input_needs_grad(node, 0))
    return 0;
  const ce_ctx *c = node->ctx;
  const tg_tensor *x = node->inputs[0], *target = node->inputs[1];
  tg_tensor *dx = tg__new_like(x);
  if (!dx)
    return -1;
  gi[0] = dx;
  if (tg__on_cuda(x)) /* saved: the statistics, acc, then the weights when weighted */
    return tg__loss_cuda_ce_backward(
        x->dtype, tg__data(x), tg__data(target),
        c->weighted ? tg__data(node->saved[2]) : NULL, c->smoothing,
        tg__data(node->saved[1]), tg__data(node->saved[0]), tg__data(g),
        c->reduction == TG_REDUCTION_NONE, c->s.outer, c->s.r, c->s.inner,
        c->ignore_index, tg__data(dx), x->device.index);
  ce_backward_cpu(c, x, target, g, dx);
  return 0;
}

tg_tensor *tg__cross_entropy(const char *op, const tg_tensor *input,
                             const tg_tensor *target, tg_reduction reduction,
                             int64_t ignore_index, const tg_tensor *weight,
                             double smoothing) {
  class_ctx plan;
  if (class_plan(op, "input", input, target, reduction, ignore_index, &plan) < 0)
    return NULL;
  const int64_t C = plan.s.r;
  if (C > INT32_MAX) /* the kernels keep class indices in int32 */
    return tg__error("%s: at most %d classes are supported, got %lld", op, INT32_MAX,
                     (long long)C),
           NULL;
  const bool on_cuda = tg__on_cuda(input);
  const size_t ctx_bytes = sizeof(ce_ctx) + (weight ? (size_t)C * sizeof(double) : 0);
  ce_ctx *c = calloc(1, ctx_bytes);
  tg_tensor *out = c ? new_loss(reduction, target, input->dtype) : NULL;
  tg_tensor *stats = NULL, *acc = NULL; /* CUDA's: max and log-sum-exp; the acc */
  if (!out)
    goto fail;
  *c = (ce_ctx){plan.s, reduction, ignore_index, 0, smoothing, (double)C, weight != NULL};
  if (c->s.inner > 1)
    c->s.lanes = ce_lanes(C);
  if (weight && !on_cuda) { /* the CPU kernels' copy in double (CUDA's read the tensor) */
    c->wsum = 0;
    for (int64_t k = 0; k < C; k++)
      c->wsum += c->w[k] = tg__get(weight, k);
  }
  tg_tensor *none_out = reduction == TG_REDUCTION_NONE ? out : NULL;
  if (!on_cuda) {
    double total = 0, wsum = 0;
    if (ce_forward_cpu(op, c, input, target, none_out, &total, &wsum) < 0)
      goto fail;
    c->scale = finish_reduction(reduction, out, total, wsum);
  } else {
    int64_t stats_shape[2] = {2, c->s.outer * c->s.inner};
    if (!(stats = tg__new(stats_shape, 2, input->dtype, input->device)) ||
        !(acc = tg__loss_new_acc(input)) ||
        tg__loss_cuda_ce_forward(input->dtype, op, tg__data(input), tg__data(target),
                                 weight ? tg__data(weight) : NULL, smoothing, c->s.outer,
                                 C, c->s.inner, ignore_index, reduction, tg__data(stats),
                                 none_out ? tg__data(none_out) : NULL,
                                 none_out ? NULL : tg__data(out), tg__data(acc),
                                 input->device.index) < 0)
      goto fail;
  }
  const tg_tensor *in[2] = {input, target};
  tg_node *node;
  out = tg__finish(op, out, 2, in, cross_entropy_backward, &node);
  if (node) {
    void *ctx = tg__ctx(node, ctx_bytes);
    if (!ctx) {
      tg__error("%s: out of memory", op);
      goto fail;
    }
    memcpy(ctx, c, ctx_bytes);
    if (stats) { /* CUDA's backward reads these */
      tg__save(node, stats);
      tg__save(node, acc);
      if (weight)
        tg__save(node, weight);
    }
  }
  tg_tensor_free(stats);
  tg_tensor_free(acc);
  free(c);
  return out;
fail:
  tg_tensor_free(stats);
  tg_tensor_free(acc);
  tg_tensor_free(out);
  free(c);
  return NULL;
}

tg_tensor *tg_cross_entropy(const tg_tensor *input, const tg_tensor *target,
                            tg_reduction reduction, int64_t ignore_index) {
  return tg__cross_entropy("tg_cross_entropy", input, target, reduction, ignore_index,
                           NULL, 0.0);
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
  if (tg__on_cuda(x)) { /* saved: acc */
    gi[0] = dx;
    return tg__loss_cuda_nll_backward(x->dtype, tg__data(g), tgt, NULL, per_elem,
                                      tg__data(node->saved[0]), c->s.outer, C, inner,
                                      ignore, tg__data(dx), x->device.index);
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
      class_plan(op, "log_probs", log_probs, target, reduction, ignore_index, &c) < 0
          ? -1
          : count_targets(op, target, c.s.r, ignore_index);
  if (count < 0)
    return NULL;
  tg_tensor *out = new_loss(reduction, target, log_probs->dtype);
  if (!out)
    return NULL;
  const int64_t inner = c.s.inner, C = c.s.r, npos = c.s.outer * inner;
  const int64_t *tgt = tg__data(target);
  const bool none = reduction == TG_REDUCTION_NONE;
  tg_tensor *acc = NULL;
  if (tg__on_cuda(log_probs)) {
    if (!(acc = tg__loss_new_acc(log_probs)) ||
        tg__loss_cuda_nll_forward(
            log_probs->dtype, op, tg__data(log_probs), tgt, NULL, c.s.outer, C, inner,
            ignore_index, reduction, none ? tg__data(out) : NULL,
            none ? NULL : tg__data(out), tg__data(acc), log_probs->device.index) < 0) {
      tg_tensor_free(acc);
      tg_tensor_free(out);
      return NULL;
    }
  } else {
    double total = 0;
    TG_DISPATCH_FLOAT(log_probs->dtype, T, {
      const T *X = tg__data(log_probs);
      T *L = none ? tg__data(out) : NULL;
_Pragma("omp parallel for reduction(+ : total) num_threads(tg__reduce_threads(npos))")
      for (int64_t pos = 0; pos < npos; pos++) {
        int64_t k = tgt[pos];
        double l = k == ignore_index
                       ? 0
                       : -(double)X[(pos / inner * C + k) * inner + pos % inner];
        if (L)
          L[pos] = (T)l;
        total += l;
      }
    });
    c.scale = finish_reduction(reduction, out, total, (double)count);
  }
  const tg_tensor *in[2] = {log_probs, target};
  tg_node *node;
  out = tg__finish(op, out, 2, in, nll_backward, &node);
  if (node) {
    *(class_ctx *)tg__ctx(node, sizeof c) = c;
    if (acc) /* CUDA's backward reads it */
      tg__save(node, acc);
  }
  tg_tensor_free(acc);
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
  if (tg__on_cuda(x)) /* saved: acc */
    return tg__loss_cuda_pointwise_backward(
        c->kind, x->dtype, tg__data(x), tg__data(t), tg__data(g), per_elem,
        tg__data(node->saved[0]), n, dx ? tg__data(dx) : NULL, dt ? tg__data(dt) : NULL,
        x->device.index);
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
  const int64_t n = input->numel;
  const bool mse = kind == P_MSE, none = reduction == TG_REDUCTION_NONE;
  pointwise_ctx c = {kind, reduction, 1.0};
  tg_tensor *acc = NULL;
  if (tg__on_cuda(input)) {
    if (!(acc = tg__loss_new_acc(input)) ||
        tg__loss_cuda_pointwise_forward(
            kind, input->dtype, tg__data(input), tg__data(target), n, reduction,
            none ? tg__data(out) : NULL, none ? NULL : tg__data(out), tg__data(acc),
            input->device.index) < 0) {
      tg_tensor_free(acc);
      tg_tensor_free(out);
      return NULL;
    }
  } else {
    double total = 0;
    TG_DISPATCH_FLOAT(input->dtype, T, {
      const T *X = tg__data(input), *Y = tg__data(target);
      T *L = none ? tg__data(out) : NULL;
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
    c.scale = finish_reduction(reduction, out, total, (double)n);
  }
  tg_node *node;
  out = tg__finish(op, out, 2, in, pointwise_backward, &node);
  if (node) {
    *(pointwise_ctx *)tg__ctx(node, sizeof c) = c;
    if (acc) /* CUDA's backward reads it */
      tg__save(node, acc);
  }
  tg_tensor_free(acc);
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
