/* Gradient checking: the analytic Jacobian, one backward per output element, against
 * central differences, one pair of forwards per input element (PyTorch's slow mode). */
#include "graph/internal.h"

#include <math.h>
#include <stdlib.h>

tg_gradcheck_options tg_gradcheck_options_default(void) {
  return (tg_gradcheck_options){.eps = 1e-6, .atol = 1e-5, .rtol = 1e-3};
}

/* The error for fn returning NULL: its own message when it set one. */
static int fn_failed(const char *when, int input, int64_t element) {
  if (tg_last_error()[0])
    return -1;
  if (input < 0)
    return tg__error("tg_gradcheck: fn returned NULL without setting an error %s", when);
  return tg__error("tg_gradcheck: fn returned NULL without setting an error %s (input "
                   "%d, element %lld)",
                   when, input, (long long)element);
}

/* fn(inputs) flattened to doubles, outside the tape; input/element name the
 * perturbation in messages. */
static int eval(tg_gradcheck_fn fn, void *ctx, tg_tensor *const *inputs, int n,
                double *out, int64_t n_out, int input, int64_t element) {
  tg_no_grad_begin();
  tg_tensor *y =
      tg__callback_result(fn(inputs, n, ctx), n, (const tg_tensor *const *)inputs);
  tg_no_grad_end();
  if (!y)
    return fn_failed("for a perturbed input", input, element);
  int rc = 0;
  if (y->numel != n_out)
    rc = tg__error("tg_gradcheck: fn returned %lld elements, then %lld for a perturbed "
                   "input",
                   (long long)n_out, (long long)y->numel);
  for (int64_t i = 0; rc == 0 && i < n_out; i++)
    out[i] = tg__get(y, i);
  tg_tensor_free(y);
  return rc;
}

int tg_gradcheck(tg_gradcheck_fn fn, void *ctx, tg_tensor *const *inputs, int n_inputs,
                 const tg_gradcheck_options *options) {
  tg_gradcheck_options o = options ? *options : tg_gradcheck_options_default();
  if (!(o.eps > 0) || !isfinite(o.eps) || !(o.atol >= 0) || !(o.rtol >= 0))
    return tg__error("tg_gradcheck: expected eps > 0 and finite, atol >= 0, rtol >= 0, "
                     "got eps=%g, atol=%g, rtol=%g",
                     o.eps, o.atol, o.rtol);
  if (!fn || !inputs || n_inputs <= 0)
    return tg__error("tg_gradcheck: expected fn and at least one input");
  for (int i = 0; i < n_inputs; i++) {
    if (!tg__nonnull(inputs[i], "tg_gradcheck", "inputs[i]"))
      return -1;
    if (inputs[i]->requires_grad && inputs[i]->dtype != TG_F64)
      return tg__error("tg_gradcheck: input %d requires grad but is %s; gradcheck needs "
                       "float64 inputs for its finite differences to be meaningful",
                       i, tg_dtype_name(inputs[i]->dtype));
    if (inputs[i]->requires_grad && inputs[i]->device.type != TG_DEVICE_CPU)
      return tg__error("tg_gradcheck: input %d is on cuda; finite differences perturb "
                       "host memory, so pass CPU inputs (compare devices separately)",
                       i);
  }
  tg_clear_error(); /* so that a NULL from fn without a message is told apart */
  tg_scope_begin();
  /* fn gets, for each input that requires grad, a leaf sharing its storage: the
   * Jacobian is taken with respect to the input itself, leaf or not (a non-leaf's own
   * .grad is never filled), and the caller's gradients stay untouched. */
  tg_tensor **xs = calloc((size_t)n_inputs, sizeof *xs);
  int rc = xs ? 0 : tg__error("tg_gradcheck: out of memory");
  for (int i = 0; rc == 0 && i < n_inputs; i++) {
    xs[i] = inputs[i];
    if (inputs[i]->requires_grad &&
        (!(xs[i] = tg_detach(inputs[i])) || tg_set_requires_grad(xs[i], true) < 0))
      rc = -1;
  }
  tg_tensor *y = rc == 0 ? tg__callback_result(fn(xs, n_inputs, ctx), n_inputs,
                                               (const tg_tensor *const *)xs)
                         : NULL;
  if (!y) {
    if (rc == 0)
      rc = fn_failed("for the given inputs", -1, 0);
    free(xs);
    tg_scope_end();
    return rc;
  }
  int64_t n_out = y->numel;
  int64_t n_in_total = 0;
  for (int i = 0; i < n_inputs; i++)
    if (xs[i]->requires_grad)
      n_in_total += xs[i]->numel;
  /* analytic[j][k]: d out_j / d in_k, k running over all inputs that require grad. */
  double *analytic = calloc((size_t)(n_out * n_in_total + 1), sizeof(double));
  double *plus = calloc((size_t)n_out + 1, sizeof(double));
  double *minus = calloc((size_t)n_out + 1, sizeof(double));
  if (!analytic || !plus || !minus) {
    rc = tg__error("tg_gradcheck: out of memory for a %lld x %lld Jacobian",
                   (long long)n_out, (long long)n_in_total);
    goto done;
  }
  if (!y->requires_grad) {
    if (n_in_total)
      rc = tg__error("tg_gradcheck: the output does not require grad although inputs "
                     "do (the op recorded nothing on the tape)");
    goto done;
  }
  tg_tensor *seed = tg_zeros(y->shape, y->ndim, y->dtype, TG_CPU);
  if (!seed) {
    rc = -1;
    goto done;
  }
  for (int64_t j = 0; j < n_out && rc == 0; j++) {
    for (int i = 0; i < n_inputs; i++)
      tg_zero_grad(xs[i]);
    tg__set(seed, j, 1.0);
    rc = tg_backward_ex(y, seed, true);
    tg__set(seed, j, 0.0);
    int64_t k0 = 0;
    for (int i = 0; i < n_inputs && rc == 0; i++) {
      if (!xs[i]->requires_grad)
        continue;
      const tg_tensor *g = xs[i]->grad;
      for (int64_t k = 0; k < xs[i]->numel; k++)
        analytic[j * n_in_total + k0 + k] = g ? tg__get(g, k) : 0.0;
      k0 += xs[i]->numel;
    }
  }
  if (rc)
    goto done;

  double worst_excess = 0;
  int worst_input = -1;
  int64_t worst_in = 0, worst_out = 0;
  double worst_a = 0, worst_n = 0;
  int64_t k0 = 0;
  for (int i = 0; i < n_inputs && rc == 0; i++) {
    tg_tensor *x = xs[i];
    if (!x->requires_grad)
      continue;
    double *xd = tg__data(x);
    for (int64_t k = 0; k < x->numel && rc == 0; k++) {
      double orig = xd[k];
      xd[k] = orig + o.eps;
      rc = eval(fn, ctx, xs, n_inputs, plus, n_out, i, k);
      xd[k] = orig - o.eps;
      if (rc == 0)
        rc = eval(fn, ctx, xs, n_inputs, minus, n_out, i, k);
      xd[k] = orig;
      for (int64_t j = 0; j < n_out && rc == 0; j++) {
        double num = (plus[j] - minus[j]) / (2 * o.eps);
        double ana = analytic[j * n_in_total + k0 + k];
        double excess = fabs(ana - num) - (o.atol + o.rtol * fabs(num));
        if (isnan(excess)) /* a NaN in either Jacobian (or both infinite) fails */
          excess = INFINITY;
        if (excess > worst_excess) {
          worst_excess = excess;
          worst_input = i;
          worst_in = k;
          worst_out = j;
          worst_a = ana;
          worst_n = num;
        }
      }
    }
    k0 += x->numel;
  }
  if (rc == 0 && worst_input >= 0) {
    char buf[TG_SHAPE_STR_LEN];
    rc = tg__error("tg_gradcheck: Jacobian mismatch for output %lld with respect to "
                   "input %d (shape %s), element %lld: analytic %.10g vs numerical %.10g "
                   "(atol %g, rtol %g)",
                   (long long)worst_out, worst_input,
                   tg_shape_str(inputs[worst_input], buf, sizeof buf),
                   (long long)worst_in, worst_a, worst_n, o.atol, o.rtol);
  }
done:
  free(analytic);
  free(plus);
  free(minus);
  free(xs);
  tg_scope_end(); /* y and its graph (kept by retain_graph) with the rest */
  return rc;
}
