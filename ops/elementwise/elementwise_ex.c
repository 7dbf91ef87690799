/* PyTorch's further elementwise arguments: add/sub with alpha, reverse scalar ops
 * (s - t, s / t, s ** t), div with a rounding mode, pow with a tensor exponent, gelu's
 * tanh approximation. Where PyTorch's result is a composition of tapegrad's ops with
 * the same rounding, it is composed; the rest are loops over the broadcast shape. */
#include "graph/internal.h"

#include <math.h>

/* a + alpha * b (or minus): alpha * b rounded first, as PyTorch. */
static tg_tensor *add_alpha(const tg_tensor *a, const tg_tensor *b, double alpha,
                            bool subtract) {
  tg_tensor *(*op)(const tg_tensor *, const tg_tensor *) = subtract ? tg_sub : tg_add;
  if (alpha == 1 || !b)
    return op(a, b);
  tg_tensor *sb = tg_mul_scalar(b, alpha);
  tg_tensor *r = op(a, sb);
  tg_tensor_free(sb);
  return r;
}

tg_tensor *tg_add_alpha(const tg_tensor *a, const tg_tensor *b, double alpha) {
  return add_alpha(a, b, alpha, false);
}

tg_tensor *tg_sub_alpha(const tg_tensor *a, const tg_tensor *b, double alpha) {
  return add_alpha(a, b, alpha, true);
}

/* A 0-dim tensor of t's dtype and device holding s (NULL passes t's NULL on). */
static tg_tensor *scalar_like(const tg_tensor *t, double s) {
  return t ? tg_scalar(s, tg_dtype_of(t), tg_device_of(t)) : NULL;
}

/* s (op) t through the broadcasting binary op. */
static tg_tensor *reverse(tg_tensor *(*op)(const tg_tensor *, const tg_tensor *),
                          double s, const tg_tensor *t) {
  if (!tg__nonnull(t, "tapegrad", "input"))
    return NULL;
  tg_tensor *st = scalar_like(t, s);
  tg_tensor *r = op(st, t);
  tg_tensor_free(st);
  return r;
}

tg_tensor *tg_rsub_scalar(const tg_tensor *t, double s) { return reverse(tg_sub, s, t); }
tg_tensor *tg_rdiv_scalar(const tg_tensor *t, double s) { return reverse(tg_div, s, t); }
tg_tensor *tg_rpow_scalar(const tg_tensor *t, double s) {
  return reverse(tg_pow_tensor, s, t);
}

/* ------------------------------------------------ broadcast binary loops -- */

/* out[i] = f(a[ia], b[ib]) over out's (the broadcast) shape, in double. */
static void broadcast_map(const tg_tensor *a, const tg_tensor *b, tg_tensor *out,
                          double (*f)(double, double)) {
  const int nd = out->ndim;
  int64_t sa[TG_MAX_DIMS], sb[TG_MAX_DIMS];
  tg__broadcast_strides(a, out->shape, nd, sa);
  tg__broadcast_strides(b, out->shape, nd, sb);
#pragma omp parallel for num_threads(tg__threads(out->numel * 4))
  for (int64_t i = 0; i < out->numel; i++) {
    int64_t ia = 0, ib = 0, rest = i;
    for (int d = nd - 1; d >= 0; d--) {
      const int64_t k = rest % out->shape[d];
      rest /= out->shape[d];
      ia += k * sa[d];
      ib += k * sb[d];
    }
    tg__set(out, i, f(tg__get(a, ia), tg__get(b, ib)));
  }
}

/* The checks of tapegrad's binary ops, then out of the broadcast shape. */
static tg_tensor *broadcast_out(const char *op, const tg_tensor *a, const tg_tensor *b) {
  if (!tg__nonnull(a, op, "a") || !tg__nonnull(b, op, "b"))
    return NULL;
  const tg_tensor *in[2] = {a, b};
  if (tg__check_same(op, 2, in, true) < 0)
    return NULL;
  int64_t shape[TG_MAX_DIMS];
  int nd;
  if (tg__broadcast_shape(a, b, shape, &nd, op) < 0)
    return NULL;
  if (a->device.type != TG_DEVICE_CPU)
    return tg__unsupported_device(op, a), NULL;
  return tg__new(shape, nd, a->dtype, a->device);
}

/* ------------------------------------------------------- rounding div -- */

static double div_trunc(double a, double b) { return trunc(a / b); }

/* Python's floor division, as PyTorch's div_floor_floating: from the exact remainder
 * fmod(a, b), so that a = b * q + r holds for the quotient q it rounds. */
static double div_floor(double a, double b) {
  if (b == 0)
    return a / b;
  double mod = fmod(a, b), div = (a - mod) / b;
  if (mod != 0 && (b < 0) != (mod < 0))
    div -= 1;
  if (div == 0)
    return copysign(0.0, a / b);
  double q = floor(div);
  return div - q > 0.5 ? q + 1 : q;
}

/* The quotient is piecewise constant: zero gradients, as PyTorch. */
static int zero_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  (void)g;
  for (int i = 0; i < node->n_inputs; i++)
    if (tg__input_needs_grad(node, i) && !(gi[i] = tg_zeros_like(node->inputs[i])))
      return -1;
  return 0;
}

tg_tensor *tg_div_ex(const tg_tensor *a, const tg_tensor *b, tg_rounding_mode mode) {
  const char *op = "tg_div_ex";
  if (mode == TG_ROUNDING_NONE)
    return tg_div(a, b);
  if (mode != TG_ROUNDING_TRUNC && mode != TG_ROUNDING_FLOOR)
    return tg__error("%s: div expected rounding_mode to be one of None, 'trunc', or "
                     "'floor' but found %d",
                     op, (int)mode),
           NULL;
  tg_tensor *out = broadcast_out(op, a, b);
  if (!out)
    return NULL;
  broadcast_map(a, b, out, mode == TG_ROUNDING_TRUNC ? div_trunc : div_floor);
  const tg_tensor *in[2] = {a, b};
  return tg__finish(op, out, 2, in, zero_backward, NULL);
}

/* ------------------------------------------------------ tensor pow -- */

static double pow_d(double a, double b) { return pow(a, b); }
/* d/da = b * a^(b-1), 0 where b == 0; d/db = a^b * log(a), 0 where a == 0 and b >= 0
 * (PyTorch's pow_backward_self / pow_backward_exponent). */
static double pow_da(double a, double b) { return b == 0 ? 0 : b * pow(a, b - 1); }
static double pow_db(double a, double b) {
  return a == 0 && b >= 0 ? 0 : pow(a, b) * log(a);
}

static int pow_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *a = node->inputs[0], *b = node->inputs[1];
  for (int i = 0; i < 2; i++) {
    if (!tg__input_needs_grad(node, i))
      continue;
    tg_tensor *d = tg__new_like(g);
    if (!d)
      return -1;
    broadcast_map(a, b, d, i ? pow_db : pow_da);
    tg_tensor *full = tg_mul(d, g);
    gi[i] = full ? tg__sum_to_shape(full, node->inputs[i]->shape, node->inputs[i]->ndim)
                 : NULL;
    if (!gi[i])
      return -1;
  }
  return 0;
}

tg_tensor *tg_pow_tensor(const tg_tensor *a, const tg_tensor *exponent) {
  const char *op = "tg_pow_tensor";
  tg_tensor *out = broadcast_out(op, a, exponent);
  if (!out)
    return NULL;
  broadcast_map(a, exponent, out, pow_d);
  const tg_tensor *in[2] = {a, exponent};
  return tg__finish(op, out, 2, in, pow_backward, NULL);
}

/* ------------------------------------------------------- gelu tanh -- */

#define GELU_K 0.7978845608028654 /* sqrt(2 / pi) */
#define GELU_C 0.044715

/* 0.5 x (1 + tanh(k (x + c x^3))) and its derivative (PyTorch's GeluBackward). */
static double gelu_tanh(double x, double unused) {
  (void)unused;
  return 0.5 * x * (1 + tanh(GELU_K * (x + GELU_C * x * x * x)));
}
static double gelu_tanh_grad(double x, double g) {
  const double inner = GELU_K * (x + GELU_C * x * x * x), t = tanh(inner);
  const double dinner = GELU_K * (1 + 3 * GELU_C * x * x);
  return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dinner);
}

static int gelu_tanh_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  tg_tensor *dx = tg__new_like(x);
  if (!dx)
    return -1;
  broadcast_map(x, g, dx, gelu_tanh_grad);
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_gelu_ex(const tg_tensor *a, tg_gelu_approximate approximate) {
  const char *op = "tg_gelu_ex";
  if (approximate == TG_GELU_NONE)
    return tg_gelu(a);
  if (approximate != TG_GELU_TANH)
    return tg__error("%s: approximate argument must be either none or tanh (got %d)", op,
                     (int)approximate),
           NULL;
  if (!tg__nonnull(a, op, "input") || tg__check_same(op, 1, &a, true) < 0)
    return NULL;
  if (a->device.type != TG_DEVICE_CPU)
    return tg__unsupported_device(op, a), NULL;
  tg_tensor *out = tg__new_like(a);
  if (!out)
    return NULL;
  broadcast_map(a, a, out, gelu_tanh);
  return tg__finish(op, out, 1, &a, gelu_tanh_backward, NULL);
}
