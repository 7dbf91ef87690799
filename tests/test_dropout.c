/* tg_dropout: kept fraction and scaling, reproducibility under tg_manual_seed and
 * across thread counts, gradient = mask * scale (checked against the forward's own
 * mask and by gradcheck), the identity and all-zero cases, and p outside [0, 1]. */
#include "common.h"

#include <math.h>
#include <string.h>

/* Fraction kept of x = ones after dropout, and every kept value equals 1/(1-p). */
static void check_stats(tg_dtype dtype, double p) {
  tg_scope_begin();
  const int64_t n = 200000;
  tg_tensor *x = tg_ones(TG_SHAPE(n), dtype, TG_CPU);
  tg_tensor *y = tg_dropout(x, p, true);
  assert_ok(y);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; i++) {
    double v = dtype == TG_F32 ? ((float *)tg_data(y))[i] : ((double *)tg_data(y))[i];
    if (v != 0) {
      kept++;
      assert_true(fabs(v - 1.0 / (1.0 - p)) < 1e-6 * v);
    }
  }
  double frac = (double)kept / (double)n, sd = sqrt(p * (1 - p) / (double)n);
  if (fabs(frac - (1 - p)) > 5 * sd)
    fail_msg("p = %g: kept %g, expected %g +- %g", p, frac, 1 - p, 5 * sd);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_statistics(void **state) {
  (void)state;
  const double ps[] = {0.1, 0.5, 0.9, 0.01};
  for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) {
    check_stats(TG_F32, ps[i]);
    check_stats(TG_F64, ps[i]);
  }
}

/* Same seed, same mask, whatever the thread count; a new draw differs. */
static void test_reproducible(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(64, 32, 26), TG_F32, TG_CPU);
  int saved = tg_get_num_threads();
  tg_set_num_threads(1);
  tg_manual_seed(42);
  tg_tensor *a = tg_dropout(x, 0.3, true);
  tg_set_num_threads(4);
  tg_manual_seed(42);
  tg_tensor *b = tg_dropout(x, 0.3, true);
  tg_tensor *c = tg_dropout(x, 0.3, true);
  tg_set_num_threads(saved);
  assert_close(a, b, 0, 0);
  assert_true(memcmp(tg_data(a), tg_data(c), sizeof(float) * (size_t)tg_numel(a)) != 0);
  assert_int_equal(tg_scope_end(), 0);
}

/* dx = g * mask / (1-p), with the mask the forward used (y = x * mask / (1-p)). */
static void test_gradient(void **state) {
  (void)state;
  const tg_dtype dtypes[2] = {TG_F64, TG_F32};
  for (int d = 0; d < 2; d++) {
    tg_scope_begin();
    tg_tensor *x = rand_leaf(TG_SHAPE(3, 5, 7, 11), dtypes[d]);
    tg_tensor *y = tg_dropout(x, 0.4, true);
    tg_tensor *g = tg_randn(tg_shape(y), 4, dtypes[d], TG_CPU);
    assert_ok(tg_backward_ex(y, g, false) == 0);
    tg_tensor *dx = tg_grad(x);
    for (int64_t i = 0; i < tg_numel(x); i++) {
      double xv = tg_item(tg_narrow(tg_flatten(x, 0, -1), 0, i, 1));
      double yv = tg_item(tg_narrow(tg_flatten(y, 0, -1), 0, i, 1));
      double gv = tg_item(tg_narrow(tg_flatten(g, 0, -1), 0, i, 1));
      double dv = tg_item(tg_narrow(tg_flatten(dx, 0, -1), 0, i, 1));
      double expect = yv == 0 ? 0 : gv / 0.6;
      assert_true(fabs(dv - expect) < 1e-5 * (1 + fabs(expect)));
      if (yv != 0)
        assert_true(fabs(yv - xv / 0.6) < 1e-5 * (1 + fabs(yv)));
    }
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* gradcheck reseeds before every evaluation so the mask stays fixed. */
static tg_tensor *seeded_dropout(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  tg_manual_seed(7);
  return tg_dropout(in[0], *(double *)ctx, true);
}

static void test_gradcheck(void **state) {
  (void)state;
  tg_scope_begin();
  double ps[] = {0.0, 0.3, 1.0};
  for (int i = 0; i < 3; i++) {
    tg_tensor *x = rand_leaf(TG_SHAPE(2, 3, 4, 5), TG_F64);
    gradcheck_ok(seeded_dropout, &ps[i], &x, 1);
  }
  assert_int_equal(tg_scope_end(), 0);
}

/* Evaluation or p = 0: an alias of x that still passes gradients; p = 1: zeros. */
static void test_identity_and_zeros(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(4, 6), TG_F32);
  tg_tensor *e = tg_dropout(x, 0.5, false), *z0 = tg_dropout(x, 0.0, true);
  assert_ok(e && z0);
  assert_ptr_equal(tg_data(e), tg_data(x));
  assert_ptr_equal(tg_data(z0), tg_data(x));
  assert_ok(tg_backward(tg_sum(tg_add(e, z0))) == 0);
  assert_close(tg_grad(x), tg_full(TG_SHAPE(4, 6), 2.0, TG_F32, TG_CPU), 0, 0);
  tg_zero_grad(x);
  tg_tensor *z1 = tg_dropout(x, 1.0, true);
  assert_close(z1, tg_zeros_like(x), 0, 0);
  assert_ok(tg_backward(tg_sum(z1)) == 0);
  assert_close(tg_grad(x), tg_zeros_like(x), 0, 0);
  tg_no_grad_begin();
  assert_ok(tg_dropout(x, 0.5, true));
  tg_no_grad_end();
  assert_int_equal(tg_scope_end(), 0);
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(3, 4), TG_F32, TG_CPU);
  assert_error(tg_dropout(x, 1.5, true) == NULL, "tg_dropout",
               "dropout probability has to be between 0 and 1, but got 1.5");
  assert_error(tg_dropout(x, -0.1, false) == NULL, "but got -0.1");
  assert_error(tg_dropout(x, NAN, true) == NULL, "between 0 and 1");
  assert_error(tg_dropout(NULL, 0.5, true) == NULL, "'input' is NULL");
  tg_tensor *i = tg_zeros(TG_SHAPE(3), TG_I64, TG_CPU);
  assert_error(tg_dropout(i, 0.5, true) == NULL, "floating point");
  assert_ok(tg_dropout(x, 0.5, true));
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_statistics),         cmocka_unit_test(test_reproducible),
      cmocka_unit_test(test_gradient),           cmocka_unit_test(test_gradcheck),
      cmocka_unit_test(test_identity_and_zeros), cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
