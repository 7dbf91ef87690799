/* The fused cross-entropy kernel of ops/loss/loss.c with class weights, label
 * smoothing and ignore_index: against PyTorch's formulas composed here of log_softmax,
 * weighted nll and masked sums (the kernel is replayed against PyTorch itself by
 * test_opinfo), on shapes that cover the kernel's tiles
 * (class dim last, [N, C, d] with several and partial tiles, many classes); float64
 * gradchecks; the same bits at every thread count; targets out of range; NaN and
 * huge logits. */
#include "common.h"

#include <math.h>
#include <string.h>

typedef struct {
  tg_reduction red;
  int64_t ignore;
  double smoothing;
  const tg_tensor *weight; /* NULL: none */
  const tg_tensor *target;
} ce_args;

static tg_tensor *ce(tg_tensor *const *in, int n, void *ctx) {
  const ce_args *a = ctx;
  (void)n;
  tg_cross_entropy_options o = tg_cross_entropy_options_default();
  o.reduction = a->red;
  o.ignore_index = a->ignore;
  o.weight = a->weight;
  o.label_smoothing = a->smoothing;
  return tg_cross_entropy_ex(in[0], a->target, &o);
}

/* Class targets for input shape x (class dim 1, or 0 when 1-D): every n-th one
 * `ignore` (every 0: none), the others spread over the classes. */
static tg_tensor *targets(const int64_t *x, int nd, int64_t ignore, int every) {
  int64_t shape[4];
  int tnd = 0;
  for (int d = 0; d < nd; d++)
    if (d != (nd == 1 ? 0 : 1))
      shape[tnd++] = x[d];
  const int64_t classes = x[nd == 1 ? 0 : 1];
  tg_tensor *t = tg_empty(shape, tnd, TG_I64, TG_CPU);
  int64_t *v = tg_data(t);
  for (int64_t i = 0; i < tg_numel(t); i++)
    v[i] = every && i % every == 1 ? ignore : (i * 7 + i / 5 + 3) % classes;
  return t;
}

/* Weights in [0.5, 2.5) of dtype for C classes, requiring grad or not. */
static tg_tensor *weights(int64_t C, tg_dtype dtype, bool grad) {
  tg_tensor *w = tg_uniform(TG_SHAPE(C), 0.5, 2.5, dtype, TG_CPU);
  assert_ok(tg_set_requires_grad(w, grad) == 0);
  return w;
}

static const struct {
  int64_t x[4];
  int nd;
} SHAPES[] = {
    {{5, 4}, 2},         {{7}, 1}, {{3, 6, 5}, 3},
    {{2, 3, 40, 31}, 4}, /* 1240 positions per image: two full tiles and a partial one */
    {{2, 70, 9, 7}, 4},  /* many classes: narrow tiles */
    {{300, 45}, 2},
};
#define N_SHAPES (sizeof SHAPES / sizeof *SHAPES)

/* PyTorch's label-smoothed cross-entropy over class indices, composed:
 * (1 - s) nll + s / C * smooth, smooth_i = -sum_c w_c log_softmax(x)_ic where target i
 * is kept (0 where ignored), a mean of both divided by the kept targets' weights. */
static tg_tensor *composed(const tg_tensor *x, const ce_args *a, const tg_tensor *w) {
  const int cd = tg_ndim(x) == 1 ? 0 : 1;
  const int64_t C = tg_shape(x)[cd];
  tg_tensor *logp = tg_log_softmax(x, cd);
  tg_nll_loss_options no = {a->red, a->ignore, w};
  tg_tensor *nll = tg_nll_loss_ex(logp, a->target, &no);
  /* keep[i] = target i is kept; wsum = their weights' sum */
  tg_tensor *keep64 = tg_zeros(tg_shape(a->target), tg_ndim(a->target), TG_F64, TG_CPU);
  const int64_t *t = tg_data((tg_tensor *)a->target);
  double *k = tg_data(keep64), wsum = 0;
  for (int64_t i = 0; i < tg_numel(a->target); i++)
    if (t[i] != a->ignore) {
      k[i] = 1;
      wsum += tg_item(tg_narrow(w, 0, t[i], 1));
    }
  tg_tensor *keep = tg_to_dtype(keep64, tg_dtype_of(x));
  int64_t wshape[8];
  for (int d = 0; d < tg_ndim(x); d++)
    wshape[d] = d == cd ? C : 1;
  tg_tensor *per =
      tg_neg(tg_sum_dims(tg_mul(logp, tg_view(w, wshape, tg_ndim(x))), &cd, 1, false));
  tg_tensor *l = tg_mul(per, keep);
  if (a->red != TG_REDUCTION_NONE)
    l = tg_sum(l);
  if (a->red == TG_REDUCTION_MEAN)
    l = tg_div_scalar(l, wsum);
  return tg_add(tg_mul_scalar(nll, 1 - a->smoothing), tg_mul_scalar(l, a->smoothing / C));
}

/* Output and input gradient (for a random upstream gradient) of the fused loss and of
 * the composition (all-1 weights stand in for none: the same loss and the same
 * mean). */
static void compare_one(const int64_t *shape, int nd, tg_dtype dtype, tg_reduction red,
                        bool weighted, double smoothing, int64_t ignore, int every) {
  tg_scope_begin();
  const int64_t C = shape[nd == 1 ? 0 : 1];
  const double tol = dtype == TG_F64 ? 1e-12 : 2e-5;
  tg_tensor *x = rand_leaf(shape, nd, dtype);
  tg_tensor *w = weighted ? weights(C, dtype, false) : NULL;
  ce_args a = {red, ignore, smoothing, w, targets(shape, nd, ignore, every)};
  tg_tensor *out = ce(&x, 1, &a);
  assert_ok(out);
  tg_tensor *gout = tg_randn(tg_shape(out), tg_ndim(out), dtype, TG_CPU);
  assert_ok(tg_backward_ex(out, gout, false) == 0);
  tg_tensor *gx = tg_clone(tg_grad(x));
  tg_zero_grad(x);
  tg_tensor *ref = composed(x, &a, w ? w : tg_ones(TG_SHAPE(C), dtype, TG_CPU));
  assert_ok(ref);
  assert_ok(tg_backward_ex(ref, gout, false) == 0);
  assert_close(out, ref, tol, tol);
  assert_close(gx, tg_grad(x), tol, tol);
  assert_int_equal(tg_scope_end(), 0);
}

/* A weight that requires grad is refused for index targets while grad mode records,
 * as PyTorch's nll_loss_forward; without grad mode, and for probability targets (a
 * composition that differentiates it), it is taken. */
static void test_weight_requiring_grad(void **state) {
  (void)state;
  tg_scope_begin();
  const int64_t shape[2] = {5, 4};
  tg_tensor *x = rand_leaf(shape, 2, TG_F64);
  tg_tensor *w = weights(4, TG_F64, true);
  tg_cross_entropy_options o = tg_cross_entropy_options_default();
  o.weight = w;
  tg_tensor *t = targets(shape, 2, -100, 0);
  const char *why = "not differentiable with respect to argument 'weight'";
  assert_error(!tg_cross_entropy_ex(x, t, &o), "tg_cross_entropy_ex", why);
  o.label_smoothing = 0.2;
  assert_error(!tg_cross_entropy_ex(x, t, &o), "tg_cross_entropy_ex", why);
  tg_nll_loss_options no = {TG_REDUCTION_MEAN, -100, w};
  assert_error(!tg_nll_loss_ex(tg_log_softmax(x, 1), t, &no), "tg_nll_loss_ex", why);
  tg_no_grad_begin();
  assert_ok(tg_cross_entropy_ex(x, t, &o) != NULL);
  tg_no_grad_end();
  tg_tensor *probs = tg_softmax(tg_randn(shape, 2, TG_F64, TG_CPU), 1);
  tg_tensor *l = tg_cross_entropy_ex(x, probs, &o);
  assert_ok(l && tg_backward(l) == 0 && tg_grad(w) != NULL);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_matches_composed(void **state) {
  (void)state;
  static const tg_dtype dtypes[] = {TG_F64, TG_F32};
  static const struct {
    int64_t ignore;
    int every;
  } ign[] = {{-100, 4}, {1, 5}, {-100, 0}};
  for (size_t i = 0; i < N_SHAPES; i++)
    for (int d = 0; d < 2; d++)
      for (int red = 0; red < 3; red++)
        for (int weighted = 0; weighted < 2; weighted++)
          for (int sm = 0; sm < 2; sm++)
            for (int g = 0; g < 3; g++)
              compare_one(SHAPES[i].x, SHAPES[i].nd, dtypes[d], (tg_reduction)red,
                          weighted, sm ? 0.3 : 0.0, ign[g].ignore, ign[g].every);
}

static void test_gradcheck(void **state) {
  (void)state;
  static const struct {
    int64_t x[4];
    int nd;
  } shapes[] = {{{4, 3}, 2}, {{2, 3, 4, 5}, 4}, {{5}, 1}};
  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
    for (int red = 0; red < 3; red++)
      for (int v = 0; v < 3; v++) { /* weights; smoothing; both */
        tg_scope_begin();
        const int nd = shapes[i].nd;
        const int64_t C = shapes[i].x[nd == 1 ? 0 : 1];
        ce_args a = {(tg_reduction)red, 2, v ? 0.25 : 0.0,
                     v != 1 ? weights(C, TG_F64, false) : NULL,
                     targets(shapes[i].x, nd, 2, nd == 1 ? 0 : 3)};
        tg_tensor *x = rand_leaf(shapes[i].x, nd, TG_F64);
        gradcheck_ok(ce, &a, &x, 1);
        assert_int_equal(tg_scope_end(), 0);
      }
}

/* Losses and gradients bit for bit the same on 1, 2 and 3 threads. */
static void test_thread_count_invariant(void **state) {
  (void)state;
  const int saved = tg_get_num_threads();
  for (int red = 0; red < 3; red++) {
    tg_scope_begin();
    const int64_t shape[4] = {4, 5, 48, 64};
    tg_tensor *x = rand_leaf(shape, 4, TG_F32);
    ce_args a = {(tg_reduction)red, -100, 0.1, weights(5, TG_F32, false),
                 targets(shape, 4, -100, 7)};
    tg_tensor *out[3], *gx[3];
    for (int t = 0; t < 3; t++) {
      assert_ok(tg_set_num_threads(t + 1) == 0);
      out[t] = ce(&x, 1, &a);
      assert_ok(out[t]);
      tg_tensor *g = tg_ones_like(out[t]);
      assert_ok(tg_backward_ex(out[t], g, false) == 0);
      gx[t] = tg_clone(tg_grad(x));
      tg_zero_grad(x);
    }
    for (int t = 1; t < 3; t++) {
      assert_memory_equal(tg_data(out[t]), tg_data(out[0]),
                          (size_t)tg_numel(out[0]) * sizeof(float));
      assert_memory_equal(tg_data(gx[t]), tg_data(gx[0]),
                          (size_t)tg_numel(gx[0]) * sizeof(float));
    }
    assert_int_equal(tg_scope_end(), 0);
  }
  assert_ok(tg_set_num_threads(saved) == 0);
}

/* The first target out of range is named, also past the first tile, with and without
 * weights; ignore_index outside [0, C) is not out of range. */
static void test_bad_targets(void **state) {
  (void)state;
  tg_scope_begin();
  const int64_t shape[4] = {2, 3, 30, 30};
  tg_tensor *x = rand_leaf(shape, 4, TG_F32);
  tg_tensor *t = targets(shape, 4, -7, 3);
  int64_t *v = tg_data(t);
  v[1500] = 3;
  v[1700] = -1;
  ce_args a = {TG_REDUCTION_MEAN, -7, 0, NULL, t};
  assert_error(tg_cross_entropy(x, t, TG_REDUCTION_MEAN, -7) == NULL, "tg_cross_entropy",
               "Target 3 is out of bounds", "element 1500");
  a.weight = weights(3, TG_F32, false);
  assert_error(ce(&x, 1, &a) == NULL, "tg_cross_entropy_ex", "Target 3", "element 1500");
  v[1500] = -7;
  assert_error(ce(&x, 1, &a) == NULL, "Target -1", "element 1700");
  v[1700] = 0;
  assert_ok(ce(&x, 1, &a));
  assert_int_equal(tg_scope_end(), 0);
}

static void set_at(tg_tensor *t, int64_t i, double v) {
  if (tg_dtype_of(t) == TG_F32)
    ((float *)tg_data(t))[i] = (float)v;
  else
    ((double *)tg_data(t))[i] = v;
}

static double get_at(tg_tensor *t, int64_t i) {
  return tg_dtype_of(t) == TG_F32 ? ((float *)tg_data(t))[i] : ((double *)tg_data(t))[i];
}

/* A NaN logit makes its position's loss NaN, but not an ignored position's (PyTorch
 * reads no logit there); a -inf logit of another class leaves the loss finite, but
 * not with label smoothing, which takes every class's log-probability (PyTorch: inf). */
static void test_nan_and_inf_logits(void **state) {
  (void)state;
  tg_scope_begin();
  for (int d = 0; d < 2; d++)
    for (int sm = 0; sm < 2; sm++) {
      tg_dtype dt = d ? TG_F32 : TG_F64;
      tg_tensor *x = tg_zeros(TG_SHAPE(3, 4), dt, TG_CPU);
      tg_tensor *t =
          tg_tensor_from_data((int64_t[]){1, -100, 2}, TG_SHAPE(3), TG_I64, TG_CPU);
      assert_ok(x && t);
      set_at(x, 0 * 4 + 3, NAN);
      set_at(x, 1 * 4 + 0, NAN);
      set_at(x, 2 * 4 + 0, -INFINITY);
      ce_args a = {TG_REDUCTION_NONE, -100, sm ? 0.1 : 0.0, weights(4, dt, false), t};
      tg_tensor *l = ce(&x, 1, &a);
      assert_ok(l);
      assert_true(isnan(get_at(l, 0)));
      assert_true(get_at(l, 1) == 0.0);
      assert_true(sm ? get_at(l, 2) == INFINITY : isfinite(get_at(l, 2)));
    }
  assert_int_equal(tg_scope_end(), 0);
}

/* Logits near 1e4 keep float32's relative precision (the max is taken out first). */
static void test_huge_logits(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x64 = tg_mul_scalar(rand_leaf(TG_SHAPE(6, 5, 7), TG_F64), 1e4);
  tg_tensor *x32 = tg_to_dtype(x64, TG_F32);
  tg_tensor *t = targets(TG_SHAPE(6, 5, 7), -100, 4);
  ce_args a = {TG_REDUCTION_NONE, -100, 0.2, weights(5, TG_F64, false), t};
  tg_tensor *l64 = ce(&x64, 1, &a);
  a.weight = tg_to_dtype(a.weight, TG_F32);
  tg_tensor *l32 = ce(&x32, 1, &a);
  assert_ok(l64 && l32);
  assert_close(tg_to_dtype(l32, TG_F64), l64, 1e-2, 1e-6);
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matches_composed),
      cmocka_unit_test(test_weight_requiring_grad),
      cmocka_unit_test(test_gradcheck),
      cmocka_unit_test(test_thread_count_invariant),
      cmocka_unit_test(test_bad_targets),
      cmocka_unit_test(test_nan_and_inf_logits),
      cmocka_unit_test(test_huge_logits),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
