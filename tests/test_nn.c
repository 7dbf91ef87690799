/* nn: var store naming and ownership, init statistics (PyTorch's Kaiming bounds),
 * layers against torch.nn modules with the same weights (tests/ref/gen_nn.py),
 * sequential, func, freeze, dtype conversion and error paths. */
#include "common.h"

#include <math.h>
#include <string.h>

/* ----------------------------------------------------------- var store -- */

static void test_naming(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_non_null(vs);
  tg_path *root = tg_varstore_root(vs);
  tg_path *enc = tg_path_sub(root, "enc");
  tg_path *conv1 = tg_path_sub(enc, "conv1");
  assert_ptr_equal(tg_path_sub(enc, "conv1"), conv1); /* same name, same path */
  tg_tensor *a = tg_path_var(conv1, "weight", TG_SHAPE(2, 3), tg_init_const(1));
  tg_tensor *b = tg_path_var(root, "scale", TG_SHAPE(1), tg_init_const(2));
  tg_tensor *c = tg_path_var_frozen(enc, "running_mean", TG_SHAPE(3), tg_init_const(0));
  assert_ok(a && b && c);
  assert_int_equal(tg_varstore_len(vs), 3);
  const char *names[] = {"enc.conv1.weight", "scale", "enc.running_mean"};
  tg_tensor *vars[] = {a, b, c};
  for (int i = 0; i < 3; i++) {
    const char *name;
    assert_ptr_equal(tg_varstore_var(vs, i, &name), vars[i]);
    assert_string_equal(name, names[i]);
    assert_ptr_equal(tg_varstore_get(vs, names[i]), vars[i]);
    assert_int_equal(tg_varstore_is_trainable(vs, i), i < 2);
    assert_int_equal(tg_requires_grad(vars[i]), i < 2);
    assert_int_equal(tg_dtype_of(vars[i]), TG_F32);
  }
  assert_null(tg_varstore_get(vs, "enc.conv1"));
  assert_null(tg_varstore_get(vs, "nope"));
  assert_float_equal(((float *)tg_data(b))[0], 2.0, 0);

  /* Variables are out of every scope: ending one does not free them. */
  tg_scope_begin();
  tg_tensor *d = tg_path_var(enc, "d", TG_SHAPE(2), tg_init_const(3));
  assert_ok(tg_scope_end() == 0);
  assert_float_equal(((float *)tg_data(d))[1], 3.0, 0);

  assert_error(tg_path_var(conv1, "weight", TG_SHAPE(2), tg_init_const(0)) == NULL,
               "a variable named 'enc.conv1.weight' already exists");
  assert_error(tg_path_var_frozen(root, "scale", TG_SHAPE(1), tg_init_const(0)) == NULL,
               "'scale' already exists");
  assert_error(tg_path_var(root, "a.b", TG_SHAPE(1), tg_init_const(0)) == NULL,
               "name 'a.b' must not contain '.'");
  assert_error(tg_path_sub(root, "x.y") == NULL, "must not contain '.'");
  assert_error(tg_path_sub(root, "") == NULL, "must not be empty");
  assert_error(tg_path_var(root, "neg", TG_SHAPE(2, -1), tg_init_const(0)) == NULL,
               "negative dimension");
  /* A failed path propagates: the first error is what users see. */
  assert_error(tg_path_var(tg_path_sub(root, "bad.name"), "w", TG_SHAPE(1),
                           tg_init_const(0)) == NULL,
               "tg_path_sub", "bad.name");
  assert_error(tg_varstore_var(vs, 7, NULL) == NULL, "index 7 is out of range");
  assert_int_equal(tg_varstore_len(vs), 4);
  tg_varstore_free(vs);
  tg_varstore_free(NULL);
}

static void test_set_dtype(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_tensor *w = tg_path_var(root, "w", TG_SHAPE(3), tg_init_uniform(-1, 1));
  assert_non_null(
      tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 2, tg_batch_norm_config_default()));
  float before[3];
  memcpy(before, tg_data(w), sizeof before);
  assert_int_equal(tg_varstore_set_dtype(vs, TG_F64), 0);
  assert_int_equal(tg_varstore_dtype(vs), TG_F64);
  assert_int_equal(tg_dtype_of(w), TG_F64); /* same tensor object, converted */
  for (int i = 0; i < 3; i++)
    assert_float_equal(((double *)tg_data(w))[i], before[i], 0);
  assert_int_equal(tg_dtype_of(tg_varstore_get(vs, "bn.running_var")), TG_F64);
  assert_int_equal(tg_dtype_of(tg_varstore_get(vs, "bn.num_batches_tracked")), TG_I64);
  assert_int_equal(tg_dtype_of(tg_path_var(root, "v", TG_SHAPE(1), tg_init_const(0))),
                   TG_F64);
  assert_error(tg_varstore_set_dtype(vs, TG_I64) < 0, "float32 or float64", "int64");
  assert_int_equal(tg_varstore_set_dtype(vs, TG_F32), 0);
  assert_int_equal(tg_dtype_of(w), TG_F32);
  tg_varstore_free(vs);
}

/* ---------------------------------------------------------------- init -- */

typedef struct {
  double min, max, mean, var;
} stats;

static stats stats_of(tg_tensor *t) {
  stats s = {INFINITY, -INFINITY, 0, 0};
  int64_t n = tg_numel(t);
  const float *p = tg_data(t);
  for (int64_t i = 0; i < n; i++) {
    s.min = fmin(s.min, p[i]);
    s.max = fmax(s.max, p[i]);
    s.mean += p[i];
  }
  s.mean /= (double)n;
  for (int64_t i = 0; i < n; i++)
    s.var += (p[i] - s.mean) * (p[i] - s.mean);
  s.var /= (double)(n - 1);
  return s;
}

/* U(-b, b): inside the bounds, reaching near them, mean 0 and variance b^2/3. */
static void assert_uniform(tg_tensor *t, double bound) {
  stats s = stats_of(t);
  double n = (double)tg_numel(t);
  assert_true(s.min >= -bound && s.max <= bound);
  assert_true(s.min < -0.9 * bound && s.max > 0.9 * bound);
  assert_true(fabs(s.mean) < 5 * bound / sqrt(3 * n));
  assert_true(fabs(s.var / (bound * bound / 3) - 1) < 0.15);
}

static void test_init_kaiming(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  /* nn.Linear(100, 64): weight and bias both U(-1/sqrt(100), 1/sqrt(100)). */
  assert_non_null(
      tg_nn_linear(tg_path_sub(root, "fc"), 100, 64, tg_linear_config_default()));
  assert_uniform(tg_varstore_get(vs, "fc.weight"), 0.1);
  tg_tensor *bias = tg_varstore_get(vs, "fc.bias");
  stats sb = stats_of(bias);
  assert_true(sb.min >= -0.1 && sb.max <= 0.1 && sb.max - sb.min > 0.15);
  /* nn.Conv2d(12, 40, 5): fan_in = 12*5*5 = 300 for weight and bias. */
  assert_non_null(
      tg_nn_conv2d(tg_path_sub(root, "conv"), 12, 40, 5, tg_conv2d_config_default()));
  assert_uniform(tg_varstore_get(vs, "conv.weight"), 1 / sqrt(300.0));
  sb = stats_of(tg_varstore_get(vs, "conv.bias"));
  assert_true(sb.min >= -1 / sqrt(300.0) && sb.max <= 1 / sqrt(300.0));
  /* nn.ConvTranspose2d(8, 6, 3, groups=2): weight [8, 3, 3, 3], fan_in 3*3*3 = 27. */
  tg_conv_transpose2d_config ct = tg_conv_transpose2d_config_default();
  ct.groups = 2;
  assert_non_null(tg_nn_conv_transpose2d(tg_path_sub(root, "up"), 8, 6, 3, ct));
  tg_tensor *upw = tg_varstore_get(vs, "up.weight");
  assert_int_equal(tg_ndim(upw), 4);
  assert_int_equal(tg_shape(upw)[0], 8);
  assert_int_equal(tg_shape(upw)[1], 3);
  assert_uniform(upw, 1 / sqrt(27.0));
  assert_int_equal(tg_shape(tg_varstore_get(vs, "up.bias"))[0], 6);
  /* Kaiming needs a weight-shaped tensor. */
  assert_error(tg_path_var(root, "b", TG_SHAPE(4), tg_init_kaiming_uniform()) == NULL,
               "fewer than 2 dimensions", "[4]");
  tg_varstore_free(vs);
}

static void test_init_other(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_tensor *u = tg_path_var(root, "u", TG_SHAPE(100, 100), tg_init_uniform(2, 4));
  stats s = stats_of(u);
  assert_true(s.min >= 2 && s.max <= 4 && s.min < 2.01 && s.max > 3.99);
  assert_float_equal(s.mean, 3, 0.02);
  tg_tensor *r = tg_path_var(root, "r", TG_SHAPE(100, 100), tg_init_randn(-1, 0.5));
  s = stats_of(r);
  assert_float_equal(s.mean, -1, 0.02);
  assert_float_equal(sqrt(s.var), 0.5, 0.02);
  tg_tensor *c = tg_path_var(root, "c", TG_SHAPE(2, 2), tg_init_const(-3.5));
  s = stats_of(c);
  assert_true(s.min == -3.5 && s.max == -3.5);
  assert_error(tg_path_var(root, "bad", TG_SHAPE(2), tg_init_uniform(1, 0)) == NULL,
               "uniform init of 'bad' expects lo <= hi");
  assert_error(tg_path_var(root, "bad", TG_SHAPE(2), tg_init_randn(0, -1)) == NULL,
               "std >= 0.0");
  assert_error(tg_path_var(root, "bad", TG_SHAPE(2), (tg_init){(tg_init_kind)42, 0, 0}) ==
                   NULL,
               "unknown init kind 42");
  assert_int_equal(tg_varstore_len(vs), 3);
  tg_varstore_free(vs);
}

/* ------------------------------------------------------- layers vs torch -- */

/* Copies the case's tensors into the store's trainable variables of the same name;
 * returns how many were copied. */
static int copy_params(tg_varstore *vs, ref_file *f, const char *case_name) {
  int copied = 0;
  for (int i = 0; i < tg_varstore_len(vs); i++) {
    const char *name;
    tg_tensor *v = tg_varstore_var(vs, i, &name);
    if (!tg_varstore_is_trainable(vs, i))
      continue;
    tg_tensor *r = ref_get(f, case_name, name, tg_dtype_of(v));
    assert_ok(tg_copy_(v, r) == 0);
    tg_tensor_free(r);
    copied++;
  }
  return copied;
}

static void check_forward(tg_module *m, ref_file *f, const char *case_name, bool train,
                          const char *xl, const char *outl, double tol) {
  assert_ok(m);
  tg_tensor *x = ref_get(f, case_name, xl, TG_F64);
  tg_tensor *want = ref_get(f, case_name, outl, TG_F64);
  tg_tensor *y = tg_module_forward(m, x, train);
  char what[64];
  snprintf(what, sizeof what, "%s/%s", case_name, outl);
  assert_close_impl(y, want, tol, tol, what, __FILE__, __LINE__);
  tg_tensor_free(y);
  tg_tensor_free(x);
  tg_tensor_free(want);
}

static tg_varstore *f64_store(void) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_ok(vs && tg_varstore_set_dtype(vs, TG_F64) == 0);
  return vs;
}

static void test_linear(void **state) {
  (void)state;
  ref_file *f = ref_open("nn");
  const char *cases[] = {"linear", "linear_batched", "linear_nobias"};
  for (int i = 0; i < 3; i++) {
    tg_varstore *vs = f64_store();
    tg_linear_config c = tg_linear_config_default();
    c.bias = i < 2;
    tg_module *m = tg_nn_linear(tg_varstore_root(vs), 5, 3, c);
    assert_int_equal(copy_params(vs, f, cases[i]), i < 2 ? 2 : 1);
    check_forward(m, f, cases[i], true, "x", "out", 1e-12);
    tg_varstore_free(vs);
  }
  ref_close(f);
}

static void test_conv(void **state) {
  (void)state;
  ref_file *f = ref_open("nn");
  tg_varstore *vs = f64_store();
  tg_conv2d_config c = tg_conv2d_config_default();
  c.stride = 2;
  c.padding = 1;
  tg_module *m = tg_nn_conv2d(tg_varstore_root(vs), 3, 4, 3, c);
  assert_int_equal(copy_params(vs, f, "conv2d"), 2);
  check_forward(m, f, "conv2d", true, "x", "out", 1e-12);
  tg_varstore_free(vs);

  vs = f64_store();
  c = tg_conv2d_config_default();
  c.padding = 2;
  c.dilation = 2;
  c.groups = 2;
  c.bias = false;
  m = tg_nn_conv2d(tg_varstore_root(vs), 4, 6, 3, c);
  assert_int_equal(copy_params(vs, f, "conv2d_groups"), 1);
  check_forward(m, f, "conv2d_groups", false, "x", "out", 1e-12);
  tg_varstore_free(vs);

  vs = f64_store();
  tg_conv_transpose2d_config t = tg_conv_transpose2d_config_default();
  t.stride = 2;
  t.padding = 1;
  t.output_padding = 1;
  t.groups = 2;
  m = tg_nn_conv_transpose2d(tg_varstore_root(vs), 4, 6, 3, t);
  assert_int_equal(copy_params(vs, f, "conv_transpose2d"), 2);
  check_forward(m, f, "conv_transpose2d", true, "x", "out", 1e-12);
  tg_varstore_free(vs);
  ref_close(f);
}

static void test_norms(void **state) {
  (void)state;
  ref_file *f = ref_open("nn");
  tg_varstore *vs = f64_store();
  tg_group_norm_config g = tg_group_norm_config_default();
  assert_true(g.cudnn_enabled && g.affine && g.eps == 1e-5);
  tg_module *m = tg_nn_group_norm(tg_varstore_root(vs), 2, 6, g);
  assert_int_equal(copy_params(vs, f, "group_norm"), 2);
  check_forward(m, f, "group_norm", true, "x", "out", 1e-10);
  tg_varstore_free(vs);

  vs = f64_store();
  g.affine = false;
  m = tg_nn_group_norm(tg_varstore_root(vs), 3, 6, g);
  assert_int_equal(tg_varstore_len(vs), 0); /* no affine: no variables */
  check_forward(m, f, "group_norm_noaffine", true, "x", "out", 1e-10);
  tg_varstore_free(vs);

  vs = f64_store();
  m = tg_nn_layer_norm(tg_varstore_root(vs), (int64_t[]){4, 5}, 2,
                       tg_layer_norm_config_default());
  assert_int_equal(copy_params(vs, f, "layer_norm"), 2);
  check_forward(m, f, "layer_norm", true, "x", "out", 1e-10);
  tg_varstore_free(vs);
  ref_close(f);
}

static void test_batch_norm(void **state) {
  (void)state;
  ref_file *f = ref_open("nn");
  tg_varstore *vs = f64_store();
  tg_batch_norm_config c = tg_batch_norm_config_default();
  c.momentum = 0.2;
  tg_module *m = tg_nn_batch_norm2d(tg_varstore_root(vs), 3, c);
  assert_int_equal(copy_params(vs, f, "batch_norm2d"), 2);
  const char *names[] = {"weight", "bias", "running_mean", "running_var",
                         "num_batches_tracked"};
  assert_int_equal(tg_varstore_len(vs), 5);
  for (int i = 0; i < 5; i++) {
    const char *name;
    tg_varstore_var(vs, i, &name);
    assert_string_equal(name, names[i]);
    assert_int_equal(tg_varstore_is_trainable(vs, i), i < 2);
  }
  check_forward(m, f, "batch_norm2d", true, "x", "out", 1e-10);
  for (int i = 2; i < 4; i++) {
    tg_tensor *want = ref_get(f, "batch_norm2d", names[i], TG_F64);
    assert_close(tg_varstore_get(vs, names[i]), want, 1e-12, 1e-10);
    tg_tensor_free(want);
  }
  assert_int_equal(tg_item(tg_varstore_get(vs, "num_batches_tracked")), 1);
  check_forward(m, f, "batch_norm2d", false, "x2", "out_eval", 1e-10);
  assert_int_equal(tg_item(tg_varstore_get(vs, "num_batches_tracked")), 1);
  tg_varstore_free(vs);
  ref_close(f);
}

/* ------------------------------------------------ sequential, func, freeze -- */

static tg_module *mlp(tg_varstore *vs) {
  tg_path *root = tg_varstore_root(vs);
  tg_module *seq = tg_nn_sequential(vs);
  assert_ok(seq);
  assert_ok(tg_sequential_add(seq, tg_nn_linear(tg_path_sub(root, "l1"), 6, 8,
                                                tg_linear_config_default())) == 0);
  assert_ok(tg_sequential_add(seq, tg_nn_relu(vs)) == 0);
  assert_ok(tg_sequential_add(seq, tg_nn_linear(tg_path_sub(root, "l2"), 8, 2,
                                                tg_linear_config_default())) == 0);
  return seq;
}

static void test_sequential(void **state) {
  (void)state;
  ref_file *f = ref_open("nn");
  tg_varstore *vs = f64_store();
  tg_module *seq = mlp(vs);
  assert_int_equal(copy_params(vs, f, "mlp"), 4);
  check_forward(seq, f, "mlp", true, "x", "out", 1e-12);

  /* Backward reaches every parameter; the scope frees the whole graph. */
  tg_scope_begin();
  tg_tensor *x = ref_get(f, "mlp", "x", TG_F64);
  tg_tensor *loss = tg_sum(tg_module_forward(seq, x, true));
  assert_ok(loss && tg_backward(loss) == 0);
  assert_ok(tg_scope_end() == 0);
  for (int i = 0; i < tg_varstore_len(vs); i++)
    assert_non_null(tg_grad(tg_varstore_var(vs, i, NULL)));

  /* float32 store, same weights. */
  tg_varstore *vs32 = tg_varstore_new(TG_CPU);
  tg_module *seq32 = mlp(vs32);
  assert_int_equal(copy_params(vs32, f, "mlp"), 4);
  tg_tensor *x32 = ref_get(f, "mlp", "x", TG_F32);
  tg_tensor *want = ref_get(f, "mlp", "out", TG_F32);
  tg_tensor *y32 = tg_module_forward(seq32, x32, false);
  assert_close(y32, want, 1e-5, 1e-5);
  tg_tensor_free(y32);
  tg_tensor_free(x32);
  tg_tensor_free(want);
  tg_varstore_free(vs32);

  /* Empty sequential: the identity (a new reference). */
  tg_module *empty = tg_nn_sequential(vs);
  tg_tensor *e = tg_ones(TG_SHAPE(2, 2), TG_F64, TG_CPU);
  tg_tensor *ey = tg_module_forward(empty, e, true);
  assert_close(ey, e, 0, 0);
  tg_tensor_free(ey);
  tg_tensor_free(e);
  /* Nested sequentials; cycles are refused. */
  tg_module *outer = tg_nn_sequential(vs);
  assert_int_equal(tg_sequential_add(outer, seq), 0);
  assert_error(tg_sequential_add(seq, outer) < 0, "contain itself");
  assert_error(tg_sequential_add(seq, seq) < 0, "contain itself");
  check_forward(outer, f, "mlp", true, "x", "out", 1e-12);
  tg_varstore_free(vs);
  ref_close(f);
}

static tg_tensor *affine_fn(const tg_tensor *x, bool train, void *ctx) {
  double *p = ctx;
  tg_tensor *scaled = tg_mul_scalar(x, p[0]);
  tg_tensor *y = tg_add_scalar(scaled, train ? p[1] : 0);
  tg_tensor_free(scaled);
  return y;
}

static void test_func_and_freeze(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  double params[2] = {3, 1};
  tg_module *fm = tg_nn_func(vs, affine_fn, params);
  tg_tensor *x = tg_full(TG_SHAPE(2), 2.0, TG_F32, TG_CPU);
  tg_tensor *y = tg_module_forward(fm, x, true);
  assert_float_equal(((float *)tg_data(y))[1], 7.0, 0);
  tg_tensor_free(y);
  y = tg_module_forward(fm, x, false);
  assert_float_equal(((float *)tg_data(y))[0], 6.0, 0);
  tg_tensor_free(y);

  tg_path *root = tg_varstore_root(vs);
  tg_module *lin =
      tg_nn_linear(tg_path_sub(root, "fc"), 2, 1, tg_linear_config_default());
  tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 1, tg_batch_norm_config_default());
  tg_varstore_freeze(vs);
  for (int i = 0; i < tg_varstore_len(vs); i++)
    assert_false(tg_requires_grad(tg_varstore_var(vs, i, NULL)));
  tg_tensor *x2 = tg_reshape(x, TG_SHAPE(1, 2));
  y = tg_module_forward(lin, x2, true);
  assert_false(tg_requires_grad(y)); /* nothing recorded */
  tg_tensor_free(y);
  tg_varstore_unfreeze(vs);
  for (int i = 0; i < tg_varstore_len(vs); i++)
    assert_int_equal(tg_requires_grad(tg_varstore_var(vs, i, NULL)),
                     tg_varstore_is_trainable(vs, i));
  y = tg_module_forward(lin, x2, true);
  assert_true(tg_requires_grad(y));
  tg_tensor_free(y);
  tg_tensor_free(x2);
  tg_tensor_free(x);
  tg_varstore_free(vs);
}

/* ---------------------------------------------------------------- errors -- */

static void test_errors(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_module *gn =
      tg_nn_group_norm(tg_path_sub(root, "gn"), 2, 8, tg_group_norm_config_default());
  assert_non_null(gn);
  tg_tensor *x = tg_randn(TG_SHAPE(2, 6, 4, 4), TG_F32, TG_CPU);
  assert_error(tg_module_forward(gn, x, true) == NULL, "tg_nn_group_norm 'gn'",
               "expected input with 8 channels", "got 6 channels", "[2, 6, 4, 4]");
  tg_tensor *x1 = tg_randn(TG_SHAPE(8), TG_F32, TG_CPU);
  assert_error(tg_module_forward(gn, x1, true) == NULL, "at least 2 dimensions");
  assert_error(tg_nn_group_norm(tg_path_sub(root, "gn2"), 3, 8,
                                tg_group_norm_config_default()) == NULL,
               "num_channels must be divisible by num_groups");

  tg_module *bn =
      tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 4, tg_batch_norm_config_default());
  assert_error(tg_module_forward(bn, x1, true) == NULL, "expected 4D input (got 1D");
  assert_error(tg_module_forward(bn, x, true) == NULL, "expected input with 4 channels");

  tg_conv2d_config cc = tg_conv2d_config_default();
  cc.groups = 4;
  assert_error(tg_nn_conv2d(tg_path_sub(root, "c"), 6, 8, 3, cc) == NULL,
               "in_channels must be divisible by groups");
  cc.groups = 3;
  assert_error(tg_nn_conv2d(tg_path_sub(root, "c"), 6, 8, 3, cc) == NULL,
               "out_channels must be divisible by groups");
  cc = tg_conv2d_config_default();
  cc.stride = 0;
  assert_error(tg_nn_conv2d(tg_path_sub(root, "c"), 6, 8, 3, cc) == NULL,
               "stride and dilation must be positive");
  tg_module *conv =
      tg_nn_conv2d(tg_path_sub(root, "c"), 3, 2, 3, tg_conv2d_config_default());
  assert_error(tg_module_forward(conv, x, true) == NULL, "tg_nn_conv2d 'c'",
               "expected input with 3 channels");

  /* A constructor failing half-way leaves the store as it was. */
  int before = tg_varstore_len(vs);
  tg_linear_config lc = tg_linear_config_default();
  lc.bs_init = tg_init_uniform(1, -1);
  assert_error(tg_nn_linear(tg_path_sub(root, "fc"), 4, 2, lc) == NULL,
               "uniform init of 'fc.bias'");
  assert_int_equal(tg_varstore_len(vs), before);
  assert_null(tg_varstore_get(vs, "fc.weight"));
  tg_module *fc = tg_nn_linear(tg_path_sub(root, "fc"), 4, 2, tg_linear_config_default());
  assert_non_null(fc);
  assert_error(tg_nn_linear(tg_path_sub(root, "fc"), 4, 2, tg_linear_config_default()) ==
                   NULL,
               "'fc.weight' already exists");
  tg_tensor *x5 = tg_randn(TG_SHAPE(3, 5), TG_F32, TG_CPU);
  assert_error(tg_module_forward(fc, x5, true) == NULL, "tg_linear");
  tg_tensor_free(x5);

  assert_error(tg_sequential_add(gn, fc) < 0, "made by tg_nn_sequential",
               "tg_nn_group_norm");
  assert_error(tg_module_forward(NULL, x, true) == NULL, "'m' is NULL");
  assert_error(tg_module_forward(fc, NULL, true) == NULL, "'x' is NULL");
  assert_error(tg_nn_linear(NULL, 1, 1, tg_linear_config_default()) == NULL,
               "'path' is NULL");
  assert_error(tg_nn_func(vs, NULL, NULL) == NULL, "'fn' is NULL");
  assert_error(tg_nn_layer_norm(root, NULL, 0, tg_layer_norm_config_default()) == NULL,
               "normalized_shape needs 1 to 8 dimensions");
  tg_tensor_free(x);
  tg_tensor_free(x1);

  /* Still works. */
  tg_tensor *ok = tg_randn(TG_SHAPE(3, 4), TG_F32, TG_CPU);
  tg_tensor *y = tg_module_forward(fc, ok, true);
  assert_non_null(y);
  assert_int_equal(tg_shape(y)[1], 2);
  tg_tensor_free(y);
  tg_tensor_free(ok);
  tg_varstore_free(vs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_naming),       cmocka_unit_test(test_set_dtype),
      cmocka_unit_test(test_init_kaiming), cmocka_unit_test(test_init_other),
      cmocka_unit_test(test_linear),       cmocka_unit_test(test_conv),
      cmocka_unit_test(test_norms),        cmocka_unit_test(test_batch_norm),
      cmocka_unit_test(test_sequential),   cmocka_unit_test(test_func_and_freeze),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
