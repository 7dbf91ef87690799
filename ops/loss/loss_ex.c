/* PyTorch's further loss arguments: class weights for nll_loss and cross_entropy,
 * class-probability targets and label smoothing for cross_entropy, weight and
 * pos_weight for binary_cross_entropy_with_logits, softmax with an output dtype. Each is
 * PyTorch's own formula (aten/src/ATen/native/LossNLL.cpp, Loss.cpp): weighted nll is a
 * node of its own with a kernel per device (loss.cu on cuda), the rest compose
 * tapegrad's differentiable ops; the plain cases, and cross-entropy over class indices
 * (weights, smoothing) on every device, go to loss.c's kernels. */
#include "graph/internal.h"
#include "ops/loss/loss.h"
#include "ops/loss/loss_cuda.h"

#include <math.h>
#include <string.h>

/* PyTorch casts the input to the requested dtype before the op. */
static tg_tensor *softmax_as(const char *op, tg_tensor *(*fn)(const tg_tensor *, int),
                             const tg_tensor *t, int dim, tg_dtype dtype) {
  if (!tg__nonnull(t, op, "input"))
    return NULL;
  if (!tg__is_float(dtype))
    return tg__error("%s: expected a float32 or float64 dtype, got %s", op,
                     tg_dtype_name(dtype)),
           NULL;
  tg_tensor *c = tg_to_dtype(t, dtype);
  tg_tensor *r = c ? fn(c, dim) : NULL;
  tg_tensor_free(c);
  return r;
}

tg_tensor *tg_softmax_ex(const tg_tensor *t, int dim, tg_dtype dtype) {
  return softmax_as("tg_softmax_ex", tg_softmax, t, dim, dtype);
}

tg_tensor *tg_log_softmax_ex(const tg_tensor *t, int dim, tg_dtype dtype) {
  return softmax_as("tg_log_softmax_ex", tg_log_softmax, t, dim, dtype);
}

tg_nll_loss_options tg_nll_loss_options_default(void) {
  return (tg_nll_loss_options){TG_REDUCTION_MEAN, -100, NULL};
}

tg_cross_entropy_options tg_cross_entropy_options_default(void) {
  return (tg_cross_entropy_options){TG_REDUCTION_MEAN, -100, NULL, 0.0};
}

tg_bce_with_logits_options tg_bce_with_logits_options_default(void) {
  return (tg_bce_with_logits_options){TG_REDUCTION_MEAN, NULL, NULL};
}

static int class_dim(const tg_tensor *x) { return x->ndim == 1 ? 0 : 1; }

/* weight [C] viewed to broadcast along x's class dim: [C] or [1, C, 1, ...]. */
static tg_tensor *weight_view(const tg_tensor *w, const tg_tensor *x) {
  int64_t shape[TG_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++)
    shape[i] = i == class_dim(x) ? w->shape[0] : 1;
  return tg_view(w, shape, x->ndim);
}

static int check_weight(const char *op, const tg_tensor *w, const tg_tensor *x) {
  char sw[TG_SHAPE_STR_LEN];
  if (!w)
    return 0;
  if (x->ndim == 0)
    return 0; /* the loss's own check names the 0-dim input */
  const int64_t C = x->shape[class_dim(x)];
  const tg_tensor *both[2] = {x, w};
  if (tg__check_same(op, 2, both, true) < 0)
    return -1;
  if (w->ndim != 1 || w->shape[0] != C)
    return tg__error("%s: weight tensor should be defined either for all %lld classes or "
                     "no classes but got weight tensor of shape: %s",
                     op, (long long)C, tg_shape_str(w, sw, sizeof sw));
  return 0;
}

/* PyTorch's nll_loss_forward (behind nll_loss and cross_entropy with index targets)
 * has no derivative in its weight: a weight that requires grad is refused while grad
 * mode records, with PyTorch's message. Probability targets do differentiate it. */
static int check_weight_grad(const char *op, const tg_tensor *w) {
  if (w && w->requires_grad && tg_is_grad_enabled())
    return tg__error("%s: the function 'nll_loss_forward' is not differentiable with "
                     "respect to argument 'weight'. This input cannot have requires_grad "
                     "True.",
                     op);
  return 0;
}

/* x [N, C, d...] or [C] as [outer, C, inner] around its class dim. */
typedef struct {
  int64_t outer, C, inner;
} class_dims;

static class_dims dims_of(const tg_tensor *x) {
  const int cd = class_dim(x);
  class_dims d = {cd ? x->shape[0] : 1, x->ndim ? x->shape[cd] : 1, 1};
  for (int i = cd + 1; i < x->ndim; i++)
    d.inner *= x->shape[i];
  return d;
}

/* Reduces per-element losses l as `r`; a mean divides by `divisor`. */
static tg_tensor *reduce(tg_tensor *l, tg_reduction r, double divisor) {
  if (r == TG_REDUCTION_NONE || !l)
    return l;
  tg_tensor *s = tg_sum(l);
  tg_tensor_free(l);
  if (r == TG_REDUCTION_SUM || !s)
    return s;
  tg_tensor *d = tg_scalar(divisor, tg_dtype_of(s), tg_device_of(s));
  tg_tensor *m = tg_div(s, d);
  tg_tensor_free(s);
  tg_tensor_free(d);
  return m;
}

/* -sum over the class dim of a * b (b may broadcast). */
static tg_tensor *neg_class_sum(const tg_tensor *a, const tg_tensor *b, int cd) {
  tg_tensor *p = tg_mul(a, b);
  tg_tensor *s = tg_sum_dims(p, &cd, 1, false);
  tg_tensor_free(p);
  tg_tensor *n = tg_neg(s);
  tg_tensor_free(s);
  return n;
}

/* Weighted nll, its own node: loss_i = -w[t_i] x[i, t_i] (0 where ignored), a mean
 * divided by the sum of the weights picked; one pass per device, no [N, C, ...] mask. */
typedef struct {
  class_dims d;
  int64_t ignore;
  tg_reduction reduction;
  double scale; /* dloss / dloss_i: 1, or 1 / the weights' sum for a mean */
} wnll_ctx;

/* The per-position losses into L (NULL: not kept); *total = their sum, *wsum = the
 * picked weights' sum, in double (the CPU's; loss.cu's forward reduces on the device). */
static int nll_weighted_forward(const wnll_ctx *c, const tg_tensor *x,
                                const tg_tensor *target, const tg_tensor *w, tg_tensor *L,
                                double *total, double *wsum) {
  const int64_t outer = c->d.outer, C = c->d.C, inner = c->d.inner, ignore = c->ignore;
  const int64_t npos = outer * inner, *t = tg__data(target);
  double tot = 0, ws = 0;
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *W = tg__data(w);
    T *LP = L ? tg__data(L) : NULL;
    // clang-format off
    _Pragma("omp parallel for reduction(+ : tot, ws) num_threads(tg__reduce_threads(npos))")
    for (int64_t pos = 0; pos < npos; pos++) { // clang-format on
      const int64_t k = t[pos];
      const double wk = k == ignore ? 0 : (double)W[k];
      const double l =
          k == ignore ? 0 : -wk * (double)X[(pos / inner * C + k) * inner + pos % inner];
      if (LP)
        LP[pos] = (T)l;
      tot += l;
      ws += wk;
    }
  });
  *total = tot;
  *wsum = ws;
  return 0;
}

/* dx[i, t_i] = -g_i * scale * w[t_i], zero elsewhere. The weights get no gradient
 * (PyTorch does not differentiate nll_loss in weight either). */
static int nll_weighted_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  if (!tg__input_needs_grad(node, 0))
    return 0;
  const wnll_ctx *c = node->ctx;
  const tg_tensor *x = node->inputs[0], *target = node->inputs[1], *w = node->inputs[2];
  const int64_t outer = c->d.outer, C = c->d.C, inner = c->d.inner, ignore = c->ignore;
  const bool per_elem = c->reduction == TG_REDUCTION_NONE;
  const double scale = c->scale;
  tg_tensor *dx = tg_zeros(x->shape, x->ndim, x->dtype, x->device);
  if (!(gi[0] = dx))
    return -1;
#ifdef TG_HAVE_CUDA
  if (tg__on_cuda(x)) /* saved: the forward's acc */
    return tg__loss_cuda_nll_backward(
        x->dtype, tg__data(g), tg__data(target), tg__data(w), per_elem,
        tg__data(node->saved[0]), outer, C, inner, ignore, tg__data(dx), x->device.index);
#endif
  const int64_t npos = outer * inner, *t = tg__data(target);
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *G = tg__data(g), *W = tg__data(w);
    T *D = tg__data(dx);
    // clang-format off
    _Pragma("omp parallel for num_threads(tg__threads(npos))")
    for (int64_t pos = 0; pos < npos; pos++) { // clang-format on
      const int64_t k = t[pos];
      if (k != ignore)
        D[(pos / inner * C + k) * inner + pos % inner] =
            (T)(-(double)G[per_elem ? pos : 0] * scale * (double)W[k]);
    }
  });
  return 0;
}

static tg_tensor *nll_weighted(const tg_tensor *x, const tg_tensor *target,
                               const tg_nll_loss_options *o) {
  static const int64_t scalar[1] = {1};
  wnll_ctx c = {dims_of(x), o->ignore_index, o->reduction, 1.0};
  const bool none = o->reduction == TG_REDUCTION_NONE;
  tg_tensor *out = none ? tg__new(target->shape, target->ndim, x->dtype, x->device)
                        : tg__new(scalar, 0, x->dtype, x->device);
  tg_tensor *acc = NULL; /* CUDA's sums and scale, on the device (loss_cuda.h) */
  if (!out)
    return NULL;
  if (tg__on_cuda(x)) {
#ifdef TG_HAVE_CUDA
    if (!(acc = tg__loss_new_acc(x)) ||
        tg__loss_cuda_nll_forward(x->dtype, "tg_nll_loss", tg__data(x), tg__data(target),
                                  tg__data(o->weight), c.d.outer, c.d.C, c.d.inner,
                                  c.ignore, o->reduction, none ? tg__data(out) : NULL,
                                  none ? NULL : tg__data(out), tg__data(acc),
                                  x->device.index) < 0) {
      tg_tensor_free(acc);
      tg_tensor_free(out);
      return NULL;
    }
#endif
  } else {
    double total, wsum;
    if (nll_weighted_forward(&c, x, target, o->weight, none ? out : NULL, &total, &wsum) <
        0) {
      tg_tensor_free(out);
      return NULL;
    }
    if (!none)
      tg_fill_(out, o->reduction == TG_REDUCTION_MEAN ? total / wsum : total);
    if (o->reduction == TG_REDUCTION_MEAN)
      c.scale = 1.0 / wsum;
  }
  const tg_tensor *in[3] = {x, target, o->weight};
  tg_node *node;
  out = tg__finish("tg_nll_loss_ex", out, 3, in, nll_weighted_backward, &node);
  if (node) {
    *(wnll_ctx *)tg__ctx(node, sizeof c) = c;
    if (acc)
      tg__save(node, acc);
  }
  tg_tensor_free(acc);
  return out;
}

tg_tensor *tg_nll_loss_ex(const tg_tensor *log_probs, const tg_tensor *target,
                          const tg_nll_loss_options *o) {
  const char *op = "tg_nll_loss_ex";
  if (!o)
    return tg__error("%s: argument 'options' is NULL", op), NULL;
  if (!o->weight)
    return tg_nll_loss(log_probs, target, o->reduction, o->ignore_index);
  /* loss.c's checks of shapes, dtypes and targets (their error messages, naming
   * tg_nll_loss as the unweighted loss does), then the weight's */
  if (tg__class_targets("tg_nll_loss", "log_probs", log_probs, target, o->reduction,
                        o->ignore_index) < 0 ||
      check_weight(op, o->weight, log_probs) < 0 || check_weight_grad(op, o->weight) < 0)
    return NULL;
  return nll_weighted(log_probs, target, o);
}

/* Probability targets: -sum_c w_c t_c log_softmax(x)_c; a mean divides by the number
 * of positions (N * d1 * ...), not by the weights. */
static tg_tensor *ce_probs(const char *op, const tg_tensor *x, const tg_tensor *target,
                           const tg_cross_entropy_options *o, const tg_tensor *logp) {
  char sx[TG_SHAPE_STR_LEN], st[TG_SHAPE_STR_LEN];
  bool same = x->ndim == target->ndim;
  for (int i = 0; same && i < x->ndim; i++)
    same = x->shape[i] == target->shape[i];
  const tg_tensor *both[2] = {x, target};
  if (tg__check_same(op, 2, both, true) < 0)
    return NULL;
  if (!same)
    return tg__error("%s: Expected target of the input's shape %s for class-probability "
                     "targets, but got %s",
                     op, tg_shape_str(x, sx, sizeof sx),
                     tg_shape_str(target, st, sizeof st)),
           NULL;
  const int cd = class_dim(x);
  const int64_t C = x->ndim ? x->shape[cd] : 1;
  tg_tensor *t = (tg_tensor *)target, *smoothed = NULL, *scaled = NULL;
  if (o->label_smoothing > 0) {
    scaled = tg_mul_scalar(target, 1 - o->label_smoothing);
    t = smoothed = tg_add_scalar(scaled, o->label_smoothing / (double)C);
  }
  tg_tensor *wt = t, *wv = NULL;
  if (o->weight && t) {
    wv = weight_view(o->weight, x);
    wt = tg_mul(t, wv);
  }
  tg_tensor *l = neg_class_sum(logp, wt, cd);
  if (wt != t)
    tg_tensor_free(wt);
  tg_tensor_free(wv);
  tg_tensor_free(smoothed);
  tg_tensor_free(scaled);
  const double positions = (double)(x->numel / (C ? C : 1));
  return reduce(l, o->reduction, x->numel ? positions : NAN);
}

tg_tensor *tg_cross_entropy_ex(const tg_tensor *input, const tg_tensor *target,
                               const tg_cross_entropy_options *o) {
  const char *op = "tg_cross_entropy_ex";
  if (!o)
    return tg__error("%s: argument 'options' is NULL", op), NULL;
  if (!tg__nonnull(input, op, "input") || !tg__nonnull(target, op, "target"))
    return NULL;
  const bool probs = tg__is_float(target->dtype);
  if (!(o->label_smoothing >= 0 && o->label_smoothing <= 1))
    return tg__error("%s: label_smoothing must be between 0.0 and 1.0. Got: %g", op,
                     o->label_smoothing),
           NULL;
  if (!probs && !o->weight && o->label_smoothing == 0)
    return tg_cross_entropy(input, target, o->reduction, o->ignore_index);
  if (input->ndim == 0)
    return tg__error("%s: expected input of shape [C], [N, C] or [N, C, d1, ...], but "
                     "got a 0-dim tensor",
                     op),
           NULL;
  if (check_weight(op, o->weight, input) < 0)
    return NULL;
  if (o->reduction != TG_REDUCTION_NONE && o->reduction != TG_REDUCTION_MEAN &&
      o->reduction != TG_REDUCTION_SUM)
    return tg__error("%s: invalid reduction %d", op, (int)o->reduction), NULL;
  /* Index targets: loss.c's fused kernels (CPU and CUDA). */
  if (!probs)
    return check_weight_grad(op, o->weight) < 0
               ? NULL
               : tg__cross_entropy(op, input, target, o->reduction, o->ignore_index,
                                   o->weight, o->label_smoothing);
  tg_tensor *logp = tg_log_softmax(input, class_dim(input));
  tg_tensor *r = logp ? ce_probs(op, input, target, o, logp) : NULL;
  tg_tensor_free(logp);
  return r;
}

/* ------------------------------------------------------ bce with logits -- */

/* PyTorch: l = w [(1 - y) x + (1 + (p - 1) y) softplus(-x)]. With l0 = loss.c's
 * stable (1 - y) x + softplus(-x) and softplus(-x) = l0 at y = 1:
 * l = w (l0 + (p - 1) y softplus(-x)). */
tg_tensor *tg_binary_cross_entropy_with_logits_ex(const tg_tensor *input,
                                                  const tg_tensor *target,
                                                  const tg_bce_with_logits_options *o) {
  const char *op = "tg_binary_cross_entropy_with_logits_ex";
  if (!o)
    return tg__error("%s: argument 'options' is NULL", op), NULL;
  if (!o->weight && !o->pos_weight)
    return tg_binary_cross_entropy_with_logits(input, target, o->reduction);
  if (o->reduction != TG_REDUCTION_NONE && o->reduction != TG_REDUCTION_MEAN &&
      o->reduction != TG_REDUCTION_SUM)
    return tg__error("%s: invalid reduction %d", op, (int)o->reduction), NULL;
  tg_tensor *l = tg_binary_cross_entropy_with_logits(input, target, TG_REDUCTION_NONE);
  if (!l)
    return NULL;
  tg_tensor *ones = NULL, *sp = NULL, *pm1 = NULL, *py = NULL, *extra = NULL;
  if (o->pos_weight) {
    ones = tg_ones_like(input);
    sp = tg_binary_cross_entropy_with_logits(input, ones, TG_REDUCTION_NONE);
    pm1 = tg_sub_scalar(o->pos_weight, 1);
    py = tg_mul(pm1, target);
    extra = tg_mul(py, sp);
    tg_tensor *sum = extra ? tg_add(l, extra) : NULL;
    tg_tensor_free(l);
    l = sum;
  }
  if (o->weight && l) {
    tg_tensor *wl = tg_mul(o->weight, l);
    tg_tensor_free(l);
    l = wl;
  }
  tg_tensor *all[] = {ones, sp, pm1, py, extra};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    tg_tensor_free(all[i]);
  return reduce(l, o->reduction, l ? (double)tg_numel(l) : 0);
}
