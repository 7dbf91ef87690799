/* PyTorch's further elementwise arguments: add/sub with alpha, reverse scalar ops
 * (s - t, s / t, s ** t), div with a rounding mode, pow with a tensor exponent, gelu's
 * tanh approximation. Where PyTorch's result is a composition of tapegrad's ops with
 * the same rounding, it is composed; the rest are kinds of elementwise.c's ops, so
 * every device with elementwise kernels has them. */
#include "elementwise.h"
#include "graph/internal.h"

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

/* ------------------------------------------------------- rounding div -- */

/* Rounded quotients, powers and gelu's tanh form are kinds of elementwise.c's ops:
 * the same checks, broadcasting, tape and per-device kernels as tg_div and tg_gelu,
 * with the formulas elementwise.h shares between the devices. */

tg_tensor *tg_div_ex(const tg_tensor *a, const tg_tensor *b, tg_rounding_mode mode) {
  if (mode == TG_ROUNDING_NONE)
    return tg_div(a, b);
  if (mode != TG_ROUNDING_TRUNC && mode != TG_ROUNDING_FLOOR)
    return tg__error("tg_div_ex: div expected rounding_mode to be one of None, 'trunc', "
                     "or 'floor' but found %d",
                     (int)mode),
           NULL;
  return tg__ew_binary(mode == TG_ROUNDING_TRUNC ? B_DIV_TRUNC : B_DIV_FLOOR, a, b);
}

tg_tensor *tg_pow_tensor(const tg_tensor *a, const tg_tensor *exponent) {
  return tg__ew_binary(B_POW, a, exponent);
}

tg_tensor *tg_gelu_ex(const tg_tensor *a, tg_gelu_approximate approximate) {
  if (approximate == TG_GELU_NONE)
    return tg_gelu(a);
  if (approximate != TG_GELU_TANH)
    return tg__error("tg_gelu_ex: approximate argument must be either none or tanh (got "
                     "%d)",
                     (int)approximate),
           NULL;
  return tg__ew_unary(U_GELU_TANH, a, 0);
}
