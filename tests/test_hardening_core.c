/* Regression tests for issue #15 (core items): graph release without recursion,
 * in-place changes detected by version counters, var store dtype changes under a live
 * graph, modules of another var store, gradcheck's leaks and NaNs, NaN propagation,
 * creation overflow and the function names in messages. */
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------- 1. set_dtype while a graph holds a variable -- */

static void test_set_dtype_under_a_live_graph_is_refused(void **state) {
  (void)state;
  tg_dtype to[2] = {TG_F32, TG_F64};
  for (int k = 0; k < 2; k++) {
    tg_varstore *vs = tg_varstore_new(TG_CPU);
    assert_ok(tg_varstore_set_dtype(vs, to[1 - k]) == 0);
    tg_module *fc = tg_nn_linear(tg_path_sub(tg_varstore_root(vs), "fc"), 64, 32,
                                 tg_linear_config_default());
    tg_tensor *x = tg_randn(TG_SHAPE(16, 64), to[1 - k], TG_CPU);
    assert_ok(tg_set_requires_grad(x, true) == 0);
    tg_tensor *y = tg_module_forward(fc, x, true);
    tg_tensor *loss = tg_sum(y);
    tg_tensor_free(y);
    assert_error(tg_varstore_set_dtype(vs, to[k]) < 0, "tg_varstore_set_dtype: variable",
                 "'fc.weight' is held by a graph that is still alive");
    assert_true(tg_varstore_dtype(vs) == to[1 - k]);
    assert_true(tg_dtype_of(tg_varstore_get(vs, "fc.bias")) == to[1 - k]);
    assert_ok(tg_backward(loss) == 0); /* the graph is intact */
    assert_true(tg_dtype_of(tg_grad(x)) == to[1 - k]);
    /* after the backward released the graph, the conversion goes through */
    assert_ok(tg_varstore_set_dtype(vs, to[k]) == 0);
    assert_true(tg_dtype_of(tg_varstore_get(vs, "fc.weight")) == to[k]);
    tg_tensor_free(loss);
    /* a graph kept by retain_graph holds its variables until it is freed */
    tg_tensor *x2 = tg_randn(TG_SHAPE(16, 64), to[k], TG_CPU);
    y = tg_module_forward(fc, x2, true);
    loss = tg_sum(y);
    tg_tensor_free(y);
    assert_ok(tg_backward_ex(loss, NULL, true) == 0);
    assert_error(tg_varstore_set_dtype(vs, to[1 - k]) < 0, "still alive");
    tg_tensor_free(loss);
    assert_ok(tg_varstore_set_dtype(vs, to[1 - k]) == 0);
    tg_tensor_free(x);
    tg_tensor_free(x2);
    tg_varstore_free(vs);
  }
}

/* ------------------------------------------ 3. modules of another var store -- */

static void test_sequential_refuses_modules_of_another_store(void **state) {
  (void)state;
  tg_varstore *a = tg_varstore_new(TG_CPU), *b = tg_varstore_new(TG_CPU);
  tg_module *seq = tg_nn_sequential(a);
  tg_module *fc = tg_nn_linear(tg_path_sub(tg_varstore_root(b), "fc"), 3, 2,
                               tg_linear_config_default());
  assert_error(tg_sequential_add(seq, fc) < 0, "tg_sequential_add: the tg_nn_linear 'fc'",
               "belongs to another var store");
  assert_error(tg_sequential_add(seq, tg_nn_relu(b)) < 0, "another var store");
  assert_error(tg_sequential_add(seq, tg_nn_sequential(b)) < 0, "another var store");
  tg_varstore_free(b);
  /* the sequential holds nothing of b: its forward is still the identity */
  assert_ok(tg_sequential_add(seq, tg_nn_relu(a)) == 0);
  tg_tensor *x = tg_full(TG_SHAPE(2, 3), -1.0, TG_F32, TG_CPU);
  tg_scope_begin();
  tg_tensor *y = tg_module_forward(seq, x, true);
  assert_ok(y != NULL);
  assert_true(tg_item(tg_sum(y)) == 0.0);
  tg_scope_end();
  tg_tensor_free(x);
  tg_varstore_free(a);
}

/* --------------------------------------------------------- 4, 13. gradcheck -- */

static tg_tensor *identity_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  return tg_tensor_retain(in[0]); /* a new reference that no scope records */
}

static tg_tensor *square_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  return tg_mul(in[0], in[0]);
}

static tg_tensor *null_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)in;
  (void)n;
  (void)ctx;
  return NULL;
}

/* Returns NULL on the perturbed evaluations only (ctx counts calls). */
static tg_tensor *null_later_fn(tg_tensor *const *in, int n, void *ctx) {
  int *calls = ctx;
  return (*calls)++ ? null_fn(in, n, ctx) : square_fn(in, n, ctx);
}

static tg_tensor *nan_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  return tg_mul_scalar(in[0], NAN); /* NaN in both Jacobians */
}

static void test_gradcheck_identity_does_not_leak(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(3), TG_F64);
  gradcheck_ok(identity_fn, NULL, &x, 1); /* LeakSanitizer checks the rest */
  assert_null(tg_grad(x)); /* gradcheck leaves the caller's gradients alone */
  tg_scope_begin();        /* an input in the caller's scope */
  tg_tensor *h = tg_mul_scalar(x, 2.0);
  gradcheck_ok(identity_fn, NULL, &h, 1);
  tg_scope_end();
  tg_tensor_free(x);
}

static tg_tensor *retain_module_fn(const tg_tensor *x, bool train, void *ctx) {
  (void)train;
  (void)ctx;
  return tg_tensor_retain((tg_tensor *)x);
}

/* The same class of leak in modules: an identity function in a sequential, in a
 * scope (the scope must release everything; LeakSanitizer checks). */
static void test_identity_module_does_not_leak(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_module *seq = tg_nn_sequential(vs);
  tg_module *id = tg_nn_func(vs, retain_module_fn, NULL);
  assert_ok(tg_sequential_add(seq, id) == 0);
  assert_ok(tg_sequential_add(seq, tg_nn_linear(tg_path_sub(tg_varstore_root(vs), "fc"),
                                                3, 2, tg_linear_config_default())) == 0);
  assert_ok(tg_sequential_add(seq, id) == 0);
  tg_tensor *x = tg_randn(TG_SHAPE(4, 3), TG_F32, TG_CPU);
  tg_scope_begin();
  tg_tensor *y = tg_module_forward(seq, x, true);
  assert_ok(y != NULL);
  assert_ok(tg_backward(tg_sum(y)) == 0);
  tg_tensor *z = tg_module_forward(id, x, true); /* the identity alone */
  assert_true(z != x && tg_numel(z) == 12);
  tg_scope_end();
  tg_tensor_free(x);
  tg_varstore_free(vs);
}

static void test_gradcheck_non_leaf_input(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(4), TG_F64);
  tg_tensor *h = tg_mul_scalar(x, 3.0); /* float64, requires grad, not a leaf */
  gradcheck_ok(square_fn, NULL, &h, 1);
  assert_null(tg_grad(x));
  tg_scope_end();
}

static void test_gradcheck_fails_on_nan(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(3), TG_F64);
  assert_error(tg_gradcheck(nan_fn, NULL, &x, 1, NULL) < 0, "Jacobian mismatch",
               "analytic nan vs numerical nan");
  tg_tensor_free(x);
}

static void test_gradcheck_names_a_null_fn(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(3), TG_F64);
  assert_error(tg_gradcheck(null_fn, NULL, &x, 1, NULL) < 0,
               "tg_gradcheck: fn returned NULL without setting an error for the given "
               "inputs");
  int calls = 0;
  assert_error(
      tg_gradcheck(null_later_fn, &calls, &x, 1, NULL) < 0,
      "fn returned NULL without setting an error for a perturbed input (input 0, "
      "element 0)");
  tg_tensor_free(x);
}

static tg_tensor *null_module_fn(const tg_tensor *x, bool train, void *ctx) {
  (void)x;
  (void)train;
  (void)ctx;
  return NULL;
}

static void test_nn_func_names_a_null_fn(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_module *seq = tg_nn_sequential(vs);
  assert_ok(tg_sequential_add(seq, tg_nn_func(vs, null_module_fn, NULL)) == 0);
  tg_tensor *x = tg_zeros(TG_SHAPE(2), TG_F32, TG_CPU);
  assert_error(tg_module_forward(seq, x, true) == NULL,
               "tg_module_forward: the function of a tg_nn_func module returned NULL "
               "without setting an error");
  tg_tensor_free(x);
  tg_varstore_free(vs);
}

/* ------------------------------------------------- 12. NaN propagation -- */

static tg_tensor *leaky_relu01(const tg_tensor *x) { return tg_leaky_relu(x, 0.1); }
static tg_tensor *max_dim1(const tg_tensor *x) { return tg_max_dim(x, 1, false, NULL); }
static tg_tensor *max_pool_2x2(const tg_tensor *x) {
  return tg_max_pool2d(x, (int64_t[]){2, 2}, NULL, NULL);
}
static tg_tensor *max_pool_3x3_p1(const tg_tensor *x) {
  return tg_max_pool2d(x, (int64_t[]){3, 3}, (int64_t[]){1, 1}, (int64_t[]){1, 1});
}
static tg_tensor *softmax1(const tg_tensor *x) { return tg_softmax(x, 1); }
static tg_tensor *log_softmax1(const tg_tensor *x) { return tg_log_softmax(x, 1); }

/* Forward and backward against PyTorch on inputs with NaNs, float32 and float64. */
static void test_nan_propagates_like_pytorch(void **state) {
  (void)state;
  static const struct {
    const char *name;
    tg_tensor *(*fn)(const tg_tensor *);
  } ops[] = {{"relu", tg_relu},
             {"leaky_relu", leaky_relu01},
             {"sigmoid", tg_sigmoid},
             {"tanh", tg_tanh},
             {"gelu", tg_gelu},
             {"abs", tg_abs},
             {"max_dim", max_dim1},
             {"max_pool_2x2", max_pool_2x2},
             {"max_pool_3x3_p1", max_pool_3x3_p1},
             {"softmax", softmax1},
             {"log_softmax", log_softmax1}};
  ref_file *f = ref_open("hardening_core");
  for (size_t k = 0; k < sizeof ops / sizeof *ops; k++)
    for (int d = 0; d < 2; d++) {
      tg_dtype dt = d ? TG_F64 : TG_F32;
      double tol = d ? 1e-12 : 1e-6;
      tg_scope_begin();
      tg_tensor *x = ref_get(f, ops[k].name, "x", dt);
      assert_ok(tg_set_requires_grad(x, true) == 0);
      tg_tensor *y = ops[k].fn(x);
      assert_ok(y != NULL);
      tg_tensor *want_y = ref_get(f, ops[k].name, "y", dt);
      assert_close(y, want_y, tol, tol);
      assert_ok(tg_backward_ex(y, ref_get(f, ops[k].name, "gy", dt), false) == 0);
      tg_tensor *want_dx = ref_get(f, ops[k].name, "dx", dt);
      assert_close(tg_grad(x), want_dx, tol, tol);
      tg_tensor_free(want_y);
      tg_tensor_free(want_dx);
      tg_tensor_free(x);
      tg_scope_end();
    }
  /* max and argmax pick the (first) NaN, as PyTorch */
  tg_scope_begin();
  tg_tensor *x = ref_get(f, "max_dim", "x", TG_F64), *idx = NULL;
  assert_ok(tg_max_dim(x, 1, false, &idx) != NULL);
  assert_close(idx, ref_get(f, "max_dim", "indices", TG_I64), 0, 0);
  assert_close(tg_argmax(x, 1, false), ref_get(f, "max_dim", "argmax", TG_I64), 0, 0);
  tg_tensor_free(idx);
  tg_tensor_free(x);
  tg_scope_end();
  ref_close(f);
}

/* The fused GroupNorm+ReLU agrees with tg_relu(tg_group_norm(...)) on NaN inputs:
 * outputs and every gradient (dbeta sums dy where y is NaN, as PyTorch's ReLU
 * backward passes it there). */
static void test_fused_group_norm_relu_nan_matches_composed(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 4, 3), TG_F64, TG_CPU);
  ((double *)tg_data(x))[5] = NAN; /* sample 0, group 0 */
  tg_tensor *w = rand_leaf(TG_SHAPE(4), TG_F64), *b = rand_leaf(TG_SHAPE(4), TG_F64);
  tg_tensor *dy = tg_randn(TG_SHAPE(2, 4, 3), TG_F64, TG_CPU);
  tg_tensor *got[4], *want[4];
  for (int fused = 0; fused < 2; fused++) {
    tg_tensor *xi = tg_clone(x);
    assert_ok(tg_set_requires_grad(xi, true) == 0);
    tg_zero_grad(w);
    tg_zero_grad(b);
    tg_tensor *y = fused ? tg_group_norm_relu(xi, 2, w, b, 1e-5)
                         : tg_relu(tg_group_norm(xi, 2, w, b, 1e-5));
    assert_ok(tg_backward_ex(y, dy, false) == 0);
    tg_tensor **out = fused ? got : want;
    out[0] = y;
    out[1] = tg_grad(xi);
    out[2] = tg_clone(tg_grad(w));
    out[3] = tg_clone(tg_grad(b));
  }
  for (int i = 0; i < 4; i++)
    assert_close(got[i], want[i], 1e-12, 1e-12);
  tg_scope_end();
}

/* Dropout multiplies by the mask (NaN * 0 is NaN), as PyTorch: every output of an
 * all-NaN input is NaN, dropped or not, and p = 1 too. */
static void test_dropout_propagates_nan(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_full(TG_SHAPE(64), NAN, TG_F32, TG_CPU);
  double p[2] = {0.5, 1.0};
  for (int k = 0; k < 2; k++) {
    tg_tensor *y = tg_dropout(x, p[k], true);
    assert_ok(y != NULL);
    for (int64_t i = 0; i < 64; i++)
      assert_true(isnan(((float *)tg_data(y))[i]));
  }
  tg_scope_end();
}

/* torch.nn.utils.clip_grad_norm_ with a NaN gradient returns NaN and makes every
 * gradient NaN (its clamp of the coefficient propagates NaN). */
static void test_clip_grad_norm_propagates_nan(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_tensor *w = tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(3), tg_init_const(1));
  tg_tensor *v = tg_path_var(tg_varstore_root(vs), "v", TG_SHAPE(2), tg_init_const(1));
  tg_scope_begin();
  assert_ok(tg_backward(tg_add(tg_sum(tg_mul_scalar(w, NAN)), tg_sum(v))) == 0);
  tg_scope_end();
  assert_true(isnan(tg_clip_grad_norm(vs, 1.0)));
  for (int i = 0; i < 2; i++)
    assert_true(isnan(((float *)tg_data(tg_grad(v)))[i]));
  tg_varstore_free(vs);
}

/* ----------------------------------------------- 14. creation overflow -- */

static void test_int64_arange_fails_instead_of_saturating(void **state) {
  (void)state;
  assert_error(tg_arange(9.2e18, 9.3e18, 1e16, TG_I64, TG_CPU) == NULL,
               "tg_arange: value 9.3e+18 cannot be converted to type int64_t without "
               "overflow");
  assert_error(tg_arange(-0x1p64, 0, 0x1p62, TG_I64, TG_CPU) == NULL, "int64_t");
  /* exact where doubles are not: 2^53 + i for i < 8 (2^53 + 1 is no double) */
  tg_tensor *t = tg_arange(0x1p53, 0x1p53 + 8, 1, TG_I64, TG_CPU);
  assert_ok(t != NULL);
  assert_int_equal(tg_numel(t), 8);
  for (int64_t i = 0; i < 8; i++)
    assert_true(((int64_t *)tg_data(t))[i] == (INT64_C(1) << 53) + i);
  tg_tensor_free(t);
  /* the largest values that fit still work */
  t = tg_arange(0x1p63 - 2048, 0x1p63 - 1024, 512, TG_I64, TG_CPU);
  assert_ok(t != NULL);
  assert_true(((int64_t *)tg_data(t))[1] == INT64_MAX - 2047 + 512);
  tg_tensor_free(t);
  /* steps beyond int64 and offsets i * step beyond it (found by tests/fuzz/fuzz_ops.c:
   * a step of 1e30 was converted to int64, and i * step overflowed before start was
   * added; UBSan in the sanitizer builds) */
  t = tg_arange(0, 1, 1e30, TG_I64, TG_CPU);
  assert_ok(t != NULL);
  assert_int_equal(tg_numel(t), 1);
  assert_true(((int64_t *)tg_data(t))[0] == 0);
  tg_tensor_free(t);
  t = tg_arange(-9e18, 9e18, 6e18, TG_I64, TG_CPU);
  assert_ok(t != NULL);
  assert_int_equal(tg_numel(t), 3);
  const int64_t want[3] = {-INT64_C(9000000000000000000), -INT64_C(3000000000000000000),
                           INT64_C(3000000000000000000)};
  assert_memory_equal(tg_data(t), want, sizeof want);
  tg_tensor_free(t);
}

static void test_uniform_range_wider_than_the_dtype(void **state) {
  (void)state;
  assert_error(tg_uniform(TG_SHAPE(3), -1.7e308, 1.7e308, TG_F64, TG_CPU) == NULL,
               "tg_uniform: expects hi - lo <= the largest float64",
               "lo=-1.7e+308 and hi=1.7e+308");
  assert_error(tg_uniform(TG_SHAPE(3), -3e38, 3e38, TG_F32, TG_CPU) == NULL,
               "the largest float32");
  assert_error(tg_uniform(TG_SHAPE(3), 0, 1e39, TG_F32, TG_CPU) == NULL,
               "hi is out of bounds for float32");
  tg_varstore *vs = tg_varstore_new(TG_CPU); /* initialisers take the same path */
  assert_error(
      tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2), tg_init_uniform(-3e38, 3e38)) ==
          NULL,
      "tg_path_var: uniform init of 'w': expects hi - lo <= the largest float32");
  assert_error(tg_path_var(tg_varstore_root(vs), "c", TG_SHAPE(2), tg_init_const(1e39)) ==
                   NULL,
               "tg_path_var: constant init of 'c': value 1e+39 cannot be converted to "
               "type float without overflow");
  assert_int_equal(tg_varstore_len(vs), 0);
  tg_varstore_free(vs);
  /* wide but representable: every value finite and in range */
  tg_tensor *t = tg_uniform(TG_SHAPE(1000), -1e308, 7e307, TG_F64, TG_CPU);
  assert_ok(t != NULL);
  for (int64_t i = 0; i < 1000; i++) {
    double v = ((double *)tg_data(t))[i];
    assert_true(isfinite(v) && v >= -1e308 && v <= 7e307);
  }
  tg_tensor_free(t);
}

static void test_float32_fill_overflow(void **state) {
  (void)state;
  assert_error(tg_full(TG_SHAPE(2), 1e39, TG_F32, TG_CPU) == NULL,
               "tg_full: value 1e+39 cannot be converted to type float without overflow");
  tg_tensor *t = tg_full(TG_SHAPE(2), INFINITY, TG_F32, TG_CPU); /* inf is a float */
  assert_ok(t != NULL);
  assert_error(tg_fill_(t, -1e39) < 0, "tg_fill_: value -1e+39", "float");
  assert_true(isinf(((float *)tg_data(t))[0])); /* unchanged */
  assert_ok(tg_fill_(t, 3.4028235e38) == 0);    /* rounds to FLT_MAX */
  tg_tensor_free(t);
}

/* ------------------------------------------- 16. messages name the call -- */

static void test_creation_errors_name_the_function(void **state) {
  (void)state;
  assert_error(tg_zeros(TG_SHAPE(-1), TG_F32, TG_CPU) == NULL, "tg_zeros: negative");
  assert_error(tg_ones(TG_SHAPE(2, -3), TG_F32, TG_CPU) == NULL, "tg_ones: negative");
  assert_error(tg_full(TG_SHAPE(-1), 1, TG_F32, TG_CPU) == NULL, "tg_full: negative");
  assert_error(tg_scalar(1e300, TG_F32, TG_CPU) == NULL, "tg_scalar: value 1e+300");
  assert_error(tg_full(TG_SHAPE(1), 1e19, TG_I64, TG_CPU) == NULL,
               "tg_full: value 1e+19 cannot be converted to type int64_t");
  assert_error(tg_rand(TG_SHAPE(-2), TG_F32, TG_CPU) == NULL, "tg_rand: negative");
  assert_error(tg_randn(TG_SHAPE(-2), TG_F32, TG_CPU) == NULL, "tg_randn: negative");
  assert_error(tg_uniform(TG_SHAPE(-2), 0, 1, TG_F32, TG_CPU) == NULL,
               "tg_uniform: negative");
  assert_error(tg_arange(0, 1, 1, (tg_dtype)7, TG_CPU) == NULL, "tg_arange: unknown");
  assert_error(tg_empty(TG_SHAPE(-1), TG_F32, TG_CPU) == NULL, "tg_empty: negative");
  assert_error(tg_tensor_from_data(NULL, TG_SHAPE(-1), TG_F32, TG_CPU) == NULL,
               "tg_tensor_from_data: negative");
  if (!tg_cuda_is_available()) {
    assert_error(tg_randn(TG_SHAPE(2), TG_F32, tg_cuda(0)) == NULL,
                 "tg_randn: cuda:0 is not available");
    assert_error(tg_arange(0, 4, 1, TG_F32, tg_cuda(0)) == NULL,
                 "tg_arange: cuda:0 is not available");
    assert_error(tg_zeros(TG_SHAPE(2), TG_F32, tg_cuda(0)) == NULL,
                 "tg_zeros: cuda:0 is not available");
  }
}

/* 2^44 elements pass the shape checks; malloc refuses 64-128 TB. */
static void test_out_of_memory_names_the_op(void **state) {
  (void)state;
  const int64_t big = INT64_C(1) << 22;
  tg_tensor *t = tg_zeros(TG_SHAPE(big, big), TG_F64, TG_CPU);
  if (t)
    skip(); /* this machine lent 128 TB */
  assert_error(true, "tg_zeros: out of memory: failed to allocate 140737488355328 bytes "
                     "on cpu");
  tg_tensor *x = tg_ones(TG_SHAPE(1, 1, 1, 1), TG_F32, TG_CPU);
  assert_error(tg_upsample_nearest2d(x, (int64_t[]){big, big}) == NULL,
               "tg_upsample_nearest2d: out of memory: failed to allocate 70368744177664 "
               "bytes on cpu");
  /* an op built on a static helper (binary ops): named by its entry check */
  tg_tensor *a = tg_ones(TG_SHAPE(big, 1), TG_F32, TG_CPU);
  tg_tensor *b = tg_ones(TG_SHAPE(1, big), TG_F32, TG_CPU);
  assert_error(tg_add(a, b) == NULL, "tg_add: out of memory: failed to allocate");
  tg_tensor_free(a);
  tg_tensor_free(b);
  tg_tensor_free(x);
  /* a convolution's workspace (here: padding="same" with dilation 2^40 pads by 2^40):
   * named by the op, as every allocation (it said "conv: out of memory for ...") */
  tg_tensor *cx = tg_randn(TG_SHAPE(1, 2, 5, 5), TG_F32, TG_CPU);
  tg_tensor *cw = tg_randn(TG_SHAPE(3, 2, 3, 3), TG_F32, TG_CPU);
  tg_conv2d_options o = tg_conv2d_options_default();
  o.padding_mode = TG_PADDING_SAME;
  o.dilation[0] = INT64_C(1) << 40;
  assert_error(tg_conv2d_ex(cx, cw, NULL, &o) == NULL,
               "tg_conv2d: out of memory: failed to allocate");
  o.dilation[0] = INT64_MAX; /* the padding itself overflows */
  assert_error(tg_conv2d_ex(cx, cw, NULL, &o) == NULL,
               "tg_conv2d_ex: padding='same' needs dilation * (kernel size - 1) padding, "
               "which overflows int64 (dilation 9223372036854775807, kernel size 3)");
  tg_tensor_free(cx);
  tg_tensor_free(cw);
}

/* ------------------------------------------- 2. releasing long graphs -- */

enum { CHAIN = 1000000 };

/* CHAIN reshapes of x (aliases: the graph costs a tensor header and a node per op),
 * each intermediate freed as soon as the next exists, so only the graph holds it and
 * releasing the result releases the whole chain, one op after another. */
static tg_tensor *chain(tg_tensor *x) {
  tg_tensor *cur = tg_tensor_retain(x);
  for (int i = 0; i < CHAIN && cur; i++) {
    tg_tensor *next = tg_reshape(cur, TG_SHAPE(1));
    tg_tensor_free(cur);
    cur = next;
  }
  assert_ok(cur != NULL);
  return cur;
}

static void test_long_chain_freed_without_backward(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(1), TG_F64);
  tg_tensor_free(chain(x));
  tg_tensor_free(x);
}

static void test_long_chain_backward(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(1), TG_F64);
  tg_tensor *y = chain(x);
  assert_ok(tg_backward(y) == 0);
  assert_true(tg_item(tg_grad(x)) == 1.0);
  tg_tensor_free(y);
  tg_tensor_free(x);
}

static void test_long_chain_retained_graph_then_freed(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(1), TG_F64);
  tg_tensor *y = chain(x);
  assert_ok(tg_backward_ex(y, NULL, true) == 0);
  tg_tensor_free(y);
  tg_tensor_free(x);
}

static void test_long_chain_released_by_scope_end(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(1), TG_F64);
  tg_scope_begin();
  tg_tensor *y = chain(x);
  tg_scope_end(); /* y's only reference was the scope's */
  (void)y;
  tg_tensor_free(x);
}

/* ------------------------------------- 11. in-place changes before backward -- */

static void test_fill_of_a_saved_input_is_detected(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = rand_leaf(TG_SHAPE(3, 4), TG_F32);
  tg_tensor *w = tg_full(TG_SHAPE(3, 4), 1.0, TG_F32, TG_CPU); /* version 0 */
  assert_ok(tg_fill_(w, 2.0) == 0);                            /* version 1 */
  assert_ok(tg_set_requires_grad(w, true) == 0);
  tg_tensor *loss = tg_sum(tg_mul(a, w));
  assert_ok(tg_fill_(w, 3.0) == 0);
  assert_true(tg_tensor_version(w) == 2);
  assert_error(tg_backward(loss) < 0,
               "tg_backward: one of the variables needed for "
               "gradient computation has been modified by an inplace operation: "
               "[float32 [3, 4]], input 1 of tg_mul",
               "is at version 2; expected version 1 instead");
  assert_null(tg_grad(a));
  tg_scope_end();
}

static void test_copy_into_a_view_of_an_input_is_detected(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = rand_leaf(TG_SHAPE(6), TG_F64);
  tg_tensor *loss = tg_sum(tg_exp(a));
  /* a view shares its storage, hence its version, as PyTorch's detach() */
  tg_tensor *view = tg_reshape(tg_detach(a), TG_SHAPE(2, 3));
  assert_ok(tg_copy_(view, tg_zeros(TG_SHAPE(2, 3), TG_F64, TG_CPU)) == 0);
  assert_error(tg_backward(loss) < 0, "modified by an inplace operation: [float64 [6]]",
               "of tg_exp");
  tg_scope_end();
}

static void test_fill_of_an_output_is_detected(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = rand_leaf(TG_SHAPE(3), TG_F64);
  tg_tensor *y = tg_exp(a); /* exp's backward reads its output */
  tg_tensor *loss = tg_sum(y);
  assert_ok(tg_fill_(y, 0.0) == 0);
  assert_error(tg_backward(loss) < 0, "[float64 [3]], input 0 of tg_sum",
               "is at version 1; expected version 0 instead");
  y = tg_exp(a);
  assert_ok(tg_fill_(y, 0.0) == 0);
  assert_error(tg_backward_ex(y, tg_ones(TG_SHAPE(3), TG_F64, TG_CPU), false) < 0,
               "[float64 [3]], the output of tg_exp");
  tg_scope_end();
}

static void test_writes_through_tg_data_need_a_bump(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = rand_leaf(TG_SHAPE(2), TG_F64);
  tg_tensor *b = rand_leaf(TG_SHAPE(2), TG_F64);
  tg_tensor *loss = tg_sum(tg_mul(a, b));
  ((double *)tg_data(b))[0] = 5.0; /* not seen: documented, as PyTorch's .data */
  assert_int_equal(tg_tensor_version(b), 0);
  tg_tensor_bump_version(b);
  assert_error(tg_backward(loss) < 0, "input 1 of tg_mul");
  tg_scope_end();
}

/* Scaling a tensor the tape holds (tg_clip_grad_norm scales gradients in place). */
static void test_clip_grad_norm_of_a_recorded_gradient_is_detected(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_tensor *w = tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(4), tg_init_const(3));
  tg_scope_begin();
  assert_ok(tg_backward(tg_sum(tg_mul(w, w))) == 0);
  tg_tensor *x = rand_leaf(TG_SHAPE(4), TG_F32);
  tg_tensor *loss = tg_sum(tg_mul(x, tg_grad(w)));
  assert_ok(tg_clip_grad_norm(vs, 0.5) > 0);
  assert_error(tg_backward(loss) < 0, "input 1 of tg_mul");
  tg_scope_end();
  tg_varstore_free(vs);
}

static void test_running_stats_update_is_detected(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(4, 3, 2), TG_F32, TG_CPU);
  tg_tensor *rm = tg_zeros(TG_SHAPE(3), TG_F32, TG_CPU);
  tg_tensor *rv = tg_ones(TG_SHAPE(3), TG_F32, TG_CPU);
  tg_tensor *a = rand_leaf(TG_SHAPE(3), TG_F32);
  tg_tensor *loss = tg_sum(tg_mul(a, rm));
  assert_ok(tg_batch_norm(x, NULL, NULL, rm, rv, true, 0.1, 1e-5) != NULL);
  assert_error(tg_backward(loss) < 0, "input 1 of tg_mul");
  /* in evaluation the running stats are read, not written */
  loss = tg_sum(tg_mul(a, rm));
  assert_ok(tg_batch_norm(x, NULL, NULL, rm, rv, false, 0.1, 1e-5) != NULL);
  assert_ok(tg_backward(loss) == 0);
  tg_scope_end();
}

/* No false alarm where nothing the backward reads changed: a BatchNorm module run
 * twice before one backward (its running stats move, but no node reads them). */
static void test_two_batch_norm_forwards_before_one_backward(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_module *bn = tg_nn_batch_norm2d(tg_path_sub(tg_varstore_root(vs), "bn"), 3,
                                     tg_batch_norm_config_default());
  tg_tensor *a = tg_randn(TG_SHAPE(2, 3, 4, 4), TG_F32, TG_CPU);
  tg_tensor *b = tg_randn(TG_SHAPE(2, 3, 4, 4), TG_F32, TG_CPU);
  tg_scope_begin();
  tg_tensor *loss = tg_add(tg_sum(tg_module_forward(bn, a, true)),
                           tg_sum(tg_module_forward(bn, b, true)));
  assert_ok(tg_backward(loss) == 0);
  assert_ok(tg_grad(tg_varstore_get(vs, "bn.weight")) != NULL);
  tg_scope_end();
  tg_tensor_free(a);
  tg_tensor_free(b);
  tg_varstore_free(vs);
}

/* An optimizer step between a forward and its backward is refused; a step after the
 * backward (the training loop) is fine, and so is the next step's graph. */
static void test_optimizer_step_between_forward_and_backward(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_module *fc = tg_nn_linear(tg_path_sub(tg_varstore_root(vs), "fc"), 3, 2,
                               tg_linear_config_default());
  tg_tensor *x = tg_randn(TG_SHAPE(5, 3), TG_F32, TG_CPU);
  tg_optimizer *opt = tg_sgd_new(vs, tg_sgd_config_default(0.1));
  for (int step = 0; step < 3; step++) {
    tg_scope_begin();
    tg_optimizer_zero_grad(opt);
    assert_ok(tg_backward(tg_sum(tg_module_forward(fc, x, true))) == 0);
    assert_ok(tg_optimizer_step(opt) == 0);
    tg_scope_end();
  }
  tg_scope_begin();
  tg_tensor *loss = tg_sum(tg_module_forward(fc, x, true));
  assert_ok(tg_optimizer_step(opt) == 0); /* the gradients of the last backward */
  assert_error(tg_backward(loss) < 0,
               "modified by an inplace operation: [float32 [2, 3]]",
               "input 1 of tg_linear");
  tg_scope_end();
  tg_optimizer_free(opt);
  tg_tensor_free(x);
  tg_varstore_free(vs);
}

static void test_checkpoint_load_between_forward_and_backward(void **state) {
  (void)state;
  char path[] = "/tmp/tg_hardening_core_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_tensor *w = tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(3), tg_init_randn(0, 1));
  assert_ok(tg_varstore_save(vs, path) == 0);
  tg_scope_begin();
  tg_tensor *loss = tg_sum(tg_mul(w, w));
  assert_ok(tg_varstore_load(vs, path) == 0);
  assert_error(tg_backward(loss) < 0, "input 0 of tg_mul");
  tg_scope_end();
  unlink(path);
  tg_varstore_free(vs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_set_dtype_under_a_live_graph_is_refused),
      cmocka_unit_test(test_sequential_refuses_modules_of_another_store),
      cmocka_unit_test(test_gradcheck_identity_does_not_leak),
      cmocka_unit_test(test_identity_module_does_not_leak),
      cmocka_unit_test(test_gradcheck_non_leaf_input),
      cmocka_unit_test(test_gradcheck_fails_on_nan),
      cmocka_unit_test(test_gradcheck_names_a_null_fn),
      cmocka_unit_test(test_nn_func_names_a_null_fn),
      cmocka_unit_test(test_nan_propagates_like_pytorch),
      cmocka_unit_test(test_fused_group_norm_relu_nan_matches_composed),
      cmocka_unit_test(test_dropout_propagates_nan),
      cmocka_unit_test(test_clip_grad_norm_propagates_nan),
      cmocka_unit_test(test_int64_arange_fails_instead_of_saturating),
      cmocka_unit_test(test_uniform_range_wider_than_the_dtype),
      cmocka_unit_test(test_float32_fill_overflow),
      cmocka_unit_test(test_creation_errors_name_the_function),
      cmocka_unit_test(test_out_of_memory_names_the_op),
      cmocka_unit_test(test_long_chain_freed_without_backward),
      cmocka_unit_test(test_long_chain_backward),
      cmocka_unit_test(test_long_chain_retained_graph_then_freed),
      cmocka_unit_test(test_long_chain_released_by_scope_end),
      cmocka_unit_test(test_fill_of_a_saved_input_is_detected),
      cmocka_unit_test(test_copy_into_a_view_of_an_input_is_detected),
      cmocka_unit_test(test_fill_of_an_output_is_detected),
      cmocka_unit_test(test_writes_through_tg_data_need_a_bump),
      cmocka_unit_test(test_clip_grad_norm_of_a_recorded_gradient_is_detected),
      cmocka_unit_test(test_running_stats_update_is_detected),
      cmocka_unit_test(test_two_batch_norm_forwards_before_one_backward),
      cmocka_unit_test(test_optimizer_step_between_forward_and_backward),
      cmocka_unit_test(test_checkpoint_load_between_forward_and_backward),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
