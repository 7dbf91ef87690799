/* The tape: accumulation, no-grad, detach, graph release, scopes, anomaly mode,
 * gradcheck's own failure report, flat memory over a long loop. */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <unistd.h>

static double at(tg_tensor *t, int64_t i) { return ((double *)tg_data(t))[i]; }

static void test_accumulates_until_zeroed(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(3), TG_F64);
  for (int k = 0; k < 2; k++)
    assert_ok(tg_backward(tg_sum(tg_mul(x, x))) == 0);
  for (int i = 0; i < 3; i++)
    assert_true(fabs(at(tg_grad(x), i) - 4 * at(x, i)) < 1e-12);
  tg_zero_grad(x);
  assert_null(tg_grad(x));
  assert_ok(tg_backward(tg_sum(x)) == 0);
  assert_true(at(tg_grad(x), 0) == 1.0);
  tg_scope_end();
}

static void test_leaf_grads_never_alias(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = rand_leaf(TG_SHAPE(2), TG_F64);
  tg_tensor *b = rand_leaf(TG_SHAPE(2), TG_F64);
  assert_ok(tg_backward(tg_sum(tg_add(a, b))) == 0);
  assert_true(tg_data(tg_grad(a)) != tg_data(tg_grad(b)));
  assert_ok(tg_backward(tg_sum(tg_mul_scalar(a, 3.0))) == 0);
  assert_true(at(tg_grad(a), 0) == 4.0 && at(tg_grad(b), 0) == 1.0);
  tg_scope_end();
}

static void test_no_grad_and_detach(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(2), TG_F64);
  tg_no_grad_begin();
  assert_false(tg_is_grad_enabled());
  tg_tensor *y = tg_exp(x);
  tg_no_grad_end();
  assert_true(tg_is_grad_enabled());
  assert_false(tg_requires_grad(y));
  assert_error(tg_backward(tg_sum(y)) < 0, "does not require grad");
  tg_tensor *d = tg_detach(tg_exp(x));
  assert_false(tg_requires_grad(d));
  /* d(x * detach(x)) / dx = detach(x) */
  assert_ok(tg_backward(tg_sum(tg_mul(x, tg_detach(x)))) == 0);
  assert_true(fabs(at(tg_grad(x), 1) - at(x, 1)) < 1e-15);
  tg_scope_end();
}

static void test_second_backward_is_an_error(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(2), TG_F64);
  tg_tensor *loss = tg_sum(tg_exp(x));
  assert_ok(tg_backward_ex(loss, NULL, true) == 0);
  assert_ok(tg_backward(loss) == 0); /* graph was retained */
  assert_error(tg_backward(loss) < 0, "backward through the graph a second time",
               "retain_graph");
  assert_true(fabs(at(tg_grad(x), 0) - 2 * exp(at(x, 0))) < 1e-12);
  tg_tensor *v = tg_exp(x);
  assert_error(tg_backward(v) < 0, "only for scalar outputs", "[2]");
  assert_error(tg_backward_ex(v, tg_ones(TG_SHAPE(3), TG_F64, TG_CPU), false) < 0,
               "Mismatch in shape", "[3]", "[2]");
  assert_error(tg_set_requires_grad(v, false) < 0, "leaf");
  assert_error(tg_set_requires_grad(tg_zeros(TG_SHAPE(1), TG_I64, TG_CPU), true) < 0,
               "floating point");
  tg_scope_end();
}

static void test_scopes(void **state) {
  (void)state;
  assert_error(tg_scope_end() < 0, "no scope is open");
  tg_scope_begin();
  tg_tensor *kept = tg_tensor_retain(tg_ones(TG_SHAPE(4), TG_F32, TG_CPU));
  tg_scope_begin(); /* nested */
  tg_tensor *inner = tg_mul_scalar(kept, 2.0);
  tg_tensor_free(inner); /* early free inside a scope */
  tg_scope_end();
  tg_scope_end();
  tg_tensor *s = tg_sum(kept); /* outside any scope: the caller owns s */
  assert_true(tg_item(s) == 4.0);
  tg_tensor_free(s);
  tg_tensor_free(kept);
}

static void test_anomaly_mode(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(3), TG_F64);
  ((double *)tg_data(x))[1] = -1.0;
  tg_set_detect_anomaly(true);
  assert_error(tg_log(x) == NULL, "anomaly", "tg_log", "NaN", "tape position", "[3]");
  ((double *)tg_data(x))[1] = 0.0;
  tg_tensor *y = tg_sqrt(tg_mul(x, x)); /* forward finite, backward divides by 0 */
  assert_non_null(y);
  assert_error(tg_backward(tg_sum(y)) < 0, "anomaly", "tg_sqrt", "backward");
  tg_set_detect_anomaly(false);
  assert_non_null(tg_log(x)); /* off again: NaN is allowed */
  tg_scope_end();
}

static tg_tensor *relu_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  return tg_relu(in[0]);
}

static void test_gradcheck_reports_mismatch(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(3), TG_F64);
  ((double *)tg_data(x))[2] = 0.0; /* relu is not differentiable at 0 */
  assert_error(tg_gradcheck(relu_fn, NULL, &x, 1, NULL) < 0, "Jacobian mismatch",
               "element 2", "analytic 0", "numerical 0.5");
  tg_tensor *f = rand_leaf(TG_SHAPE(3), TG_F32);
  assert_error(tg_gradcheck(relu_fn, NULL, &f, 1, NULL) < 0, "float64");
  tg_scope_end();
}

static long rss_kb(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f)
    return 0;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
    resident = 0;
  fclose(f);
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* 10,000 steps of fitting y = 3x - 1 with elementwise ops: memory stays flat. */
static void test_long_training_loop_memory_is_flat(void **state) {
  (void)state;
  tg_tensor *w = tg_zeros(TG_SHAPE(1), TG_F32, TG_CPU);
  tg_tensor *b = tg_zeros(TG_SHAPE(1), TG_F32, TG_CPU);
  tg_set_requires_grad(w, true);
  tg_set_requires_grad(b, true);
  tg_tensor *x = tg_randn(TG_SHAPE(256), TG_F32, TG_CPU);
  tg_tensor *x3 = tg_mul_scalar(x, 3.0);
  tg_tensor *y = tg_sub_scalar(x3, 1.0);
  tg_tensor_free(x3);
  long after_warmup = 0;
  double loss_value = 0;
  for (int step = 0; step < 10000; step++) {
    tg_scope_begin();
    tg_tensor *pred = tg_add(tg_mul(x, w), b);
    tg_tensor *loss = tg_mean(tg_pow(tg_sub(pred, y), 2.0));
    tg_zero_grad(w);
    tg_zero_grad(b);
    assert_ok(tg_backward(loss) == 0);
    loss_value = tg_item(loss);
    float *wd = tg_data(w), *bd = tg_data(b);
    wd[0] -= 0.05f * ((float *)tg_data(tg_grad(w)))[0];
    bd[0] -= 0.05f * ((float *)tg_data(tg_grad(b)))[0];
    tg_scope_end();
    if (step == 500)
      after_warmup = rss_kb();
  }
  long end = rss_kb();
  assert_true(loss_value < 1e-6);
#ifndef __SANITIZE_ADDRESS__ /* ASan's quarantine holds freed memory; LSan checks it */
  if (end - after_warmup > 1024)
    fail_msg("resident memory grew from %ld kB to %ld kB", after_warmup, end);
#else
  (void)end;
  (void)after_warmup;
#endif
  tg_tensor_free(w);
  tg_tensor_free(b);
  tg_tensor_free(x);
  tg_tensor_free(y);
}

/* 10,000 SGD steps of a small MLP built with nn layers and cross-entropy: resident
 * memory stays flat after warm-up (no leak in the tape, scopes, optimizer state or the
 * buffer cache). */
static void test_long_nn_training_memory_is_flat(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_module *net = tg_nn_sequential(vs);
  tg_sequential_add(net, tg_nn_linear(tg_path_sub(root, "fc1"), 8, 16,
                                      tg_linear_config_default()));
  tg_sequential_add(net, tg_nn_relu(vs));
  tg_sequential_add(net, tg_nn_linear(tg_path_sub(root, "fc2"), 16, 3,
                                      tg_linear_config_default()));
  tg_sgd_config cfg = tg_sgd_config_default(0.05);
  cfg.momentum = 0.9;
  tg_optimizer *opt = tg_sgd_new(vs, cfg);
  tg_tensor *x = tg_randn(TG_SHAPE(32, 8), TG_F32, TG_CPU);
  int64_t labels[32];
  for (int i = 0; i < 32; i++)
    labels[i] = ((float *)tg_data(x))[i * 8] > 0 ? 1 : (i % 2) * 2;
  tg_tensor *y = tg_tensor_from_data(labels, TG_SHAPE(32), TG_I64, TG_CPU);
  long after_warmup = 0;
  double loss_value = 0;
  for (int step = 0; step < 10000; step++) {
    tg_scope_begin();
    tg_tensor *loss = tg_cross_entropy(tg_module_forward(net, x, true), y,
                                       TG_REDUCTION_MEAN, -100);
    tg_optimizer_zero_grad(opt);
    assert_ok(loss && tg_backward(loss) == 0);
    assert_ok(tg_optimizer_step(opt) == 0);
    loss_value = tg_item(loss);
    tg_scope_end();
    if (step == 500)
      after_warmup = rss_kb();
  }
  long end = rss_kb();
  assert_true(loss_value < 0.05);
#ifndef __SANITIZE_ADDRESS__
  if (end - after_warmup > 1024)
    fail_msg("resident memory grew from %ld kB to %ld kB", after_warmup, end);
#else
  (void)end;
  (void)after_warmup;
#endif
  tg_optimizer_free(opt);
  tg_varstore_free(vs);
  tg_tensor_free(x);
  tg_tensor_free(y);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_accumulates_until_zeroed),
      cmocka_unit_test(test_leaf_grads_never_alias),
      cmocka_unit_test(test_no_grad_and_detach),
      cmocka_unit_test(test_second_backward_is_an_error),
      cmocka_unit_test(test_scopes),
      cmocka_unit_test(test_anomaly_mode),
      cmocka_unit_test(test_gradcheck_reports_mismatch),
      cmocka_unit_test(test_long_training_loop_memory_is_flat),
      cmocka_unit_test(test_long_nn_training_memory_is_flat),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
