/* softmax, log_softmax and the losses against PyTorch (float64 and float32), float64
 * gradchecks, numerics with huge logits, ignore_index edge cases and error paths.
 * Cases come from tests/ref/gen_loss.py. */
#include "common.h"

#include <math.h>
#include <string.h>

typedef enum { K_SOFTMAX, K_LOG_SOFTMAX, K_CE, K_NLL, K_MSE, K_BCE } kind;

typedef struct {
  kind k;
  int dim;
  tg_reduction red;
  int64_t ignore;
  const tg_tensor *target; /* class losses: int64 targets, not an input of gradcheck */
} loss_ctx;

static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  const loss_ctx *c = ctx;
  (void)n;
  switch (c->k) {
  case K_SOFTMAX:
    return tg_softmax(in[0], c->dim);
  case K_LOG_SOFTMAX:
    return tg_log_softmax(in[0], c->dim);
  case K_CE:
    return tg_cross_entropy(in[0], c->target, c->red, c->ignore);
  case K_NLL:
    return tg_nll_loss(in[0], c->target, c->red, c->ignore);
  case K_MSE:
    return tg_mse_loss(in[0], in[1], c->red);
  case K_BCE:
    return tg_binary_cross_entropy_with_logits(in[0], in[1], c->red);
  }
  return NULL;
}

static int case_inputs(kind k) { return k == K_MSE || k == K_BCE ? 2 : 1; }

static kind case_kind(const char *cname) {
  static const struct {
    const char *prefix;
    kind k;
  } prefixes[] = {{"softmax_", K_SOFTMAX}, {"logsoftmax_", K_LOG_SOFTMAX},
                  {"ce_", K_CE},           {"nll_", K_NLL},
                  {"mse_", K_MSE},         {"bce_", K_BCE}};
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
    if (!strncmp(cname, prefixes[i].prefix, strlen(prefixes[i].prefix)))
      return prefixes[i].k;
  fail_msg("no op for case %s", cname);
  return K_SOFTMAX;
}

static int64_t ref_int(ref_file *f, const char *cname, const char *label) {
  tg_tensor *t = ref_get(f, cname, label, TG_I64);
  int64_t v = *(int64_t *)tg_data(t);
  tg_tensor_free(t);
  return v;
}

static void check_case(ref_file *f, const char *cname, tg_dtype dtype, double tol) {
  static const char *const labels[] = {"x", "t"}, *const glabels[] = {"gx", "gt"};
  loss_ctx c = {.k = case_kind(cname)};
  tg_scope_begin();
  if (ref_has(f, cname, "dim"))
    c.dim = (int)ref_int(f, cname, "dim");
  if (ref_has(f, cname, "reduction"))
    c.red = (tg_reduction)ref_int(f, cname, "reduction");
  if (ref_has(f, cname, "ignore"))
    c.ignore = ref_int(f, cname, "ignore");
  if (ref_has(f, cname, "target"))
    c.target = ref_get(f, cname, "target", TG_I64);
  int n = case_inputs(c.k);
  tg_tensor *in[2];
  for (int i = 0; i < n; i++) {
    in[i] = ref_get(f, cname, labels[i], dtype);
    assert_ok(tg_set_requires_grad(in[i], true) == 0);
  }
  tg_tensor *out = apply(in, n, &c);
  assert_ok(out);
  /* Losses near 1e4 (huge logits) keep float32's relative precision only. */
  assert_close(out, ref_get(f, cname, "out", dtype), tol, tol);
  assert_ok(tg_backward_ex(out, ref_get(f, cname, "gout", dtype), false) == 0);
  for (int i = 0; i < n; i++)
    assert_close(tg_grad(in[i]), ref_get(f, cname, glabels[i], dtype), tol, tol);
  assert_int_equal(tg_scope_end(), 0);
}

static void run_reference(tg_dtype dtype, double tol) {
  ref_file *f = ref_open("loss");
  assert_true(ref_num_cases(f) >= 20);
  for (int i = 0; i < ref_num_cases(f); i++)
    check_case(f, ref_case_name(f, i), dtype, tol);
  ref_close(f);
}

static void test_reference_f64(void **state) {
  (void)state;
  run_reference(TG_F64, 1e-10);
}

static void test_reference_f32(void **state) {
  (void)state;
  run_reference(TG_F32, 1e-5);
}

static void test_gradcheck_softmax(void **state) {
  (void)state;
  static const struct {
    int64_t shape[4];
    int nd, dim;
  } cases[] = {
      {{3, 4}, 2, 1},     {{3, 4}, 2, 0}, {{2, 3, 4}, 3, 1}, {{2, 3, 2, 2}, 4, -3},
      {{1, 5}, 2, -1},    {{4, 1}, 2, 1}, {{0}, 0, 0},       {{5}, 1, 0},
      {{2, 3, 67}, 3, 1}, /* inner dim wider than one kernel tile */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    for (int log = 0; log < 2; log++) {
      tg_scope_begin();
      loss_ctx c = {.k = log ? K_LOG_SOFTMAX : K_SOFTMAX, .dim = cases[i].dim};
      tg_tensor *x = rand_leaf(cases[i].shape, cases[i].nd, TG_F64);
      gradcheck_ok(apply, &c, &x, 1);
      assert_int_equal(tg_scope_end(), 0);
    }
}

static tg_tensor *targets(const int64_t *shape, int nd, int64_t classes, int64_t ignore,
                          int every) {
  tg_tensor *t = tg_empty(shape, nd, TG_I64, TG_CPU);
  int64_t *d = tg_data(t);
  for (int64_t i = 0; i < tg_numel(t); i++)
    d[i] = every && i % every == 1 ? ignore : (i * 7 + 3) % classes;
  return t;
}

static void test_gradcheck_class_losses(void **state) {
  (void)state;
  static const struct {
    int64_t shape[4];
    int nd;
    int64_t ignore;
    int every; /* ignore every n-th target (0: none) */
  } cases[] = {
      {{4, 5}, 2, -100, 0},    {{6, 3}, 2, -100, 3},  {{1, 1}, 2, -100, 0},
      {{2, 3, 4, 5}, 4, 2, 4}, {{2, 4, 3}, 3, -1, 5}, {{5}, 1, -100, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    for (int k = K_CE; k <= K_NLL; k++)
      for (int red = 0; red < 3; red++) {
        tg_scope_begin();
        int nd = cases[i].nd;
        int64_t tshape[4], classes = nd == 1 ? cases[i].shape[0] : cases[i].shape[1];
        int tnd = 0;
        for (int d = 0; d < nd; d++)
          if (d != (nd == 1 ? 0 : 1))
            tshape[tnd++] = cases[i].shape[d];
        loss_ctx c = {(kind)k, 0, (tg_reduction)red, cases[i].ignore,
                      targets(tshape, tnd, classes, cases[i].ignore, cases[i].every)};
        tg_tensor *x = rand_leaf(cases[i].shape, nd, TG_F64);
        gradcheck_ok(apply, &c, &x, 1);
        assert_int_equal(tg_scope_end(), 0);
      }
}

static void test_gradcheck_pointwise_losses(void **state) {
  (void)state;
  static const struct {
    int64_t shape[3];
    int nd;
  } cases[] = {{{3, 4}, 2}, {{1}, 1}, {{2, 1, 3}, 3}, {{1}, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    for (int k = K_MSE; k <= K_BCE; k++)
      for (int red = 0; red < 3; red++) {
        tg_scope_begin();
        loss_ctx c = {.k = (kind)k, .red = (tg_reduction)red};
        tg_tensor *in[2] = {rand_leaf(cases[i].shape, cases[i].nd, TG_F64),
                            rand_leaf(cases[i].shape, cases[i].nd, TG_F64)};
        if (k == K_BCE) { /* probabilities in (0, 1) and logits of both signs */
          tg_tensor *p = tg_sigmoid(in[1]);
          assert_ok(tg_copy_(in[1], p) == 0);
          assert_ok(tg_copy_(in[0], tg_mul_scalar(in[0], 4.0)) == 0);
        }
        gradcheck_ok(apply, &c, in, 2);
        assert_int_equal(tg_scope_end(), 0);
      }
}

/* Logits of 1e4 in float32: the max subtraction keeps the loss and gradients finite,
 * and they match the float64 computation. */
static void test_huge_logits_f32(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x64 = tg_mul_scalar(tg_randn(TG_SHAPE(8, 10), TG_F64, TG_CPU), 1e4);
  x64 = tg_add(x64, tg_full(TG_SHAPE(8, 10), 1e4, TG_F64, TG_CPU));
  tg_tensor *x32 = tg_to_dtype(x64, TG_F32);
  assert_ok(tg_set_requires_grad(x32, true) == 0);
  assert_ok(tg_set_requires_grad(x64, true) == 0);
  tg_tensor *t = targets(TG_SHAPE(8), 10, -100, 0);
  tg_tensor *l32 = tg_cross_entropy(x32, t, TG_REDUCTION_MEAN, -100);
  tg_tensor *l64 = tg_cross_entropy(x64, t, TG_REDUCTION_MEAN, -100);
  assert_ok(l32 && l64);
  assert_true(isfinite(tg_item(l32)));
  assert_close(tg_to_dtype(l32, TG_F64), l64, 1e-3, 1e-5);
  assert_ok(tg_backward(l32) == 0 && tg_backward(l64) == 0);
  assert_close(tg_to_dtype(tg_grad(x32), TG_F64), tg_grad(x64), 1e-6, 1e-4);
  for (int64_t i = 0; i < 80; i++)
    assert_true(isfinite(((float *)tg_data(tg_grad(x32)))[i]));
  /* softmax rows sum to one and log_softmax stays finite. */
  tg_tensor *sm = tg_softmax(x32, 1);
  tg_tensor *rows = tg_sum_dims(sm, (int[]){1}, 1, false);
  assert_close(rows, tg_ones(TG_SHAPE(8), TG_F32, TG_CPU), 1e-6, 0);
  tg_tensor *ls = tg_log_softmax(
      tg_tensor_from_data((float[]){1e4f, 0.0f}, TG_SHAPE(2), TG_F32, TG_CPU), 0);
  assert_close(
      ls, tg_tensor_from_data((float[]){0.0f, -1e4f}, TG_SHAPE(2), TG_F32, TG_CPU), 0, 0);
  assert_int_equal(tg_scope_end(), 0);
}

/* Every target ignored: the mean is NaN (0/0, as PyTorch), the sum 0, the gradient
 * zero. ignore_index inside [0, C) is honoured. */
static void test_all_ignored(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(3, 4), TG_F64);
  tg_tensor *t = tg_full(TG_SHAPE(3), 2, TG_I64, TG_CPU);
  tg_tensor *mean = tg_cross_entropy(x, t, TG_REDUCTION_MEAN, 2);
  assert_ok(mean);
  assert_int_equal(tg_ndim(mean), 0);
  assert_true(isnan(tg_item(mean)));
  tg_tensor *sum = tg_nll_loss(x, t, TG_REDUCTION_SUM, 2);
  assert_true(tg_item(sum) == 0.0);
  assert_ok(tg_backward(mean) == 0);
  assert_close(tg_grad(x), tg_zeros(TG_SHAPE(3, 4), TG_F64, TG_CPU), 0, 0);
  tg_tensor *none = tg_cross_entropy(x, t, TG_REDUCTION_NONE, 2);
  assert_close(none, tg_zeros(TG_SHAPE(3), TG_F64, TG_CPU), 0, 0);
  assert_int_equal(tg_scope_end(), 0);
}

/* Sizes large enough for the parallel kernels: the fused cross-entropy agrees with
 * log_softmax followed by nll_loss, and softmax with exp(log_softmax), both for the
 * class dim last (lanes are rows) and for segmentation maps (lanes are pixels). */
static void test_fused_matches_composed(void **state) {
  (void)state;
  static const struct {
    int64_t x[4], t[3];
    int nx, nt;
  } cases[] = {{{2, 5, 33, 35}, {2, 33, 35}, 4, 3}, {{300, 45}, {300}, 2, 1}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    tg_scope_begin();
    int64_t classes = cases[i].x[1];
    tg_tensor *x = rand_leaf(cases[i].x, cases[i].nx, TG_F32);
    tg_tensor *t = targets(cases[i].t, cases[i].nt, classes, 255, 11);
    tg_tensor *a = tg_cross_entropy(x, t, TG_REDUCTION_MEAN, 255);
    tg_tensor *ls = tg_log_softmax(x, 1);
    tg_tensor *b = tg_nll_loss(ls, t, TG_REDUCTION_MEAN, 255);
    assert_close(a, b, 1e-6, 1e-5);
    assert_close(tg_softmax(x, 1), tg_exp(ls), 1e-7, 1e-5);
    assert_ok(tg_backward(a) == 0);
    tg_tensor *ga = tg_clone(tg_grad(x));
    tg_zero_grad(x);
    assert_ok(tg_backward(b) == 0);
    assert_close(ga, tg_grad(x), 1e-7, 1e-4);
    assert_int_equal(tg_scope_end(), 0);
  }
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(3, 5), TG_F32, TG_CPU);
  tg_tensor *t3 = targets(TG_SHAPE(3), 5, -100, 0);
  assert_error(tg_cross_entropy(x, targets(TG_SHAPE(4), 5, -100, 0), TG_REDUCTION_MEAN,
                                -100) == NULL,
               "tg_cross_entropy",
               "Expected input batch_size (3) to match target "
               "batch_size (4)",
               "[3, 5]", "[4]");
  tg_tensor *x4 = tg_randn(TG_SHAPE(2, 3, 4, 4), TG_F32, TG_CPU);
  assert_error(tg_cross_entropy(x4, targets(TG_SHAPE(2, 5, 5), 3, -100, 0),
                                TG_REDUCTION_MEAN, -100) == NULL,
               "expected target of shape [2, 4, 4]", "[2, 3, 4, 4]", "[2, 5, 5]");
  assert_error(tg_nll_loss(x, targets(TG_SHAPE(3, 1), 5, -100, 0), TG_REDUCTION_MEAN,
                           -100) == NULL,
               "tg_nll_loss", "expected target of shape [3]", "[3, 1]");
  assert_error(tg_cross_entropy(x, tg_zeros(TG_SHAPE(3), TG_F32, TG_CPU),
                                TG_REDUCTION_MEAN, -100) == NULL,
               "expected target of dtype int64", "float32");
  int64_t bad[3] = {0, 5, 1};
  assert_error(tg_cross_entropy(x, tg_tensor_from_data(bad, TG_SHAPE(3), TG_I64, TG_CPU),
                                TG_REDUCTION_MEAN, -100) == NULL,
               "Target 5 is out of bounds", "[0, 5)");
  bad[1] = -1;
  assert_error(tg_nll_loss(x, tg_tensor_from_data(bad, TG_SHAPE(3), TG_I64, TG_CPU),
                           TG_REDUCTION_SUM, -100) == NULL,
               "tg_nll_loss", "Target -1 is out of bounds");
  assert_error(tg_cross_entropy(x, t3, (tg_reduction)7, -100) == NULL,
               "invalid reduction 7");
  assert_error(tg_mse_loss(x, x, (tg_reduction)-1) == NULL, "tg_mse_loss",
               "invalid reduction -1");
  assert_error(
      tg_cross_entropy(tg_scalar(1, TG_F32, TG_CPU), t3, TG_REDUCTION_MEAN, -100) == NULL,
      "0-dim");
  assert_error(tg_cross_entropy(tg_zeros(TG_SHAPE(3, 5), TG_I64, TG_CPU), t3,
                                TG_REDUCTION_MEAN, -100) == NULL,
               "floating point");
  assert_error(tg_cross_entropy(NULL, t3, TG_REDUCTION_MEAN, -100) == NULL,
               "tg_cross_entropy", "'input' is NULL");
  assert_error(tg_cross_entropy(x, NULL, TG_REDUCTION_MEAN, -100) == NULL,
               "tg_cross_entropy", "'target' is NULL");
  assert_error(tg_nll_loss(NULL, t3, TG_REDUCTION_MEAN, -100) == NULL,
               "'log_probs' is NULL");

  assert_error(tg_softmax(x, 2) == NULL, "tg_softmax",
               "Dimension out of range (expected to be in range of [-2, 1], but got 2)");
  assert_error(tg_log_softmax(x, -3) == NULL, "tg_log_softmax", "but got -3");
  assert_error(tg_softmax(NULL, 0) == NULL, "tg_softmax", "is NULL");
  assert_error(tg_softmax(t3, 0) == NULL, "floating point");
  /* the _ex forms name themselves and say why for a NULL input too (found by
   * tests/fuzz/fuzz_ops.c: they returned NULL without a message) */
  assert_error(tg_softmax_ex(NULL, 0, TG_F32) == NULL, "tg_softmax_ex",
               "'input' is NULL");
  assert_error(tg_log_softmax_ex(NULL, 0, TG_F64) == NULL, "tg_log_softmax_ex",
               "'input' is NULL");
  assert_error(tg_softmax_ex(x, 1, TG_I64) == NULL,
               "tg_softmax_ex: expected a float32 or float64 dtype, got int64");
  assert_error(tg_log_softmax_ex(x, 1, (tg_dtype)9) == NULL, "tg_log_softmax_ex",
               "expected a float32 or float64 dtype");
  assert_ok(tg_log_softmax_ex(t3, 0, TG_F64)); /* int64 input cast first, as PyTorch */

  tg_tensor *col = tg_randn(TG_SHAPE(3, 1), TG_F32, TG_CPU);
  assert_error(
      tg_mse_loss(col, tg_randn(TG_SHAPE(3), TG_F32, TG_CPU), TG_REDUCTION_MEAN) == NULL,
      "tg_mse_loss: Target size ([3]) must be the same as input size ([3, 1])");
  assert_error(
      tg_binary_cross_entropy_with_logits(col, tg_randn(TG_SHAPE(3, 1), TG_F64, TG_CPU),
                                          TG_REDUCTION_MEAN) == NULL,
      "tg_binary_cross_entropy_with_logits", "same dtype");
  assert_error(tg_binary_cross_entropy_with_logits(col, NULL, TG_REDUCTION_SUM) == NULL,
               "'target' is NULL");

  /* The library still works after the errors. */
  tg_tensor *l = tg_cross_entropy(x, t3, TG_REDUCTION_SUM, -100);
  assert_ok(l);
  assert_true(isfinite(tg_item(l)) && tg_item(l) > 0);
  assert_string_equal(tg_last_error(), "");
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_f64),
      cmocka_unit_test(test_reference_f32),
      cmocka_unit_test(test_gradcheck_softmax),
      cmocka_unit_test(test_gradcheck_class_losses),
      cmocka_unit_test(test_gradcheck_pointwise_losses),
      cmocka_unit_test(test_huge_logits_f32),
      cmocka_unit_test(test_all_ignored),
      cmocka_unit_test(test_fused_matches_composed),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
