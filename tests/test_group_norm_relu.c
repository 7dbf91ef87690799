/* tg_group_norm_relu: PyTorch references (F.relu(F.group_norm(...)), float64 and
 * float32, output and all gradients; tests/ref/gen_group_norm_relu.py), float64
 * gradchecks, bitwise agreement with tg_relu(tg_group_norm(...)) on random shapes
 * (streamed or not, 1 and 2 threads), NaN propagation and the argument errors. */
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  int64_t groups;
  bool has_w, has_b; /* inputs: x, then weight and bias when present */
} gnr_args;

static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  const gnr_args *a = ctx;
  (void)n;
  return tg_group_norm_relu(in[0], a->groups, a->has_w ? in[1] : NULL,
                            a->has_b ? in[a->has_w ? 2 : 1] : NULL, 1e-5);
}

static void check_case(ref_file *f, const char *name, tg_dtype dtype, double atol,
                       double rtol) {
  tg_scope_begin();
  tg_tensor *g = ref_get(f, name, "groups", TG_I64);
  gnr_args a = {.groups = ((const int64_t *)tg_data(g))[0],
                .has_w = ref_has(f, name, "w"),
                .has_b = ref_has(f, name, "b")};
  tg_tensor *in[3] = {ref_get(f, name, "x", dtype), NULL, NULL};
  int n = 1;
  if (a.has_w)
    in[n++] = ref_get(f, name, "w", dtype);
  if (a.has_b)
    in[n++] = ref_get(f, name, "b", dtype);
  for (int i = 0; i < n; i++)
    assert_ok(tg_set_requires_grad(in[i], true) == 0);
  tg_tensor *y = apply(in, n, &a);
  assert_ok(y);
  assert_close(y, ref_get(f, name, "y", dtype), atol, rtol);
  assert_ok(tg_backward_ex(y, ref_get(f, name, "dy", dtype), false) == 0);
  assert_close(tg_grad(in[0]), ref_get(f, name, "dx", dtype), atol, rtol);
  if (a.has_w)
    assert_close(tg_grad(in[1]), ref_get(f, name, "dw", dtype), atol, rtol);
  if (a.has_b)
    assert_close(tg_grad(in[n - 1]), ref_get(f, name, "db", dtype), atol, rtol);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_reference(void **state) {
  (void)state;
  ref_file *f = ref_open("group_norm_relu");
  for (int i = 0; i < ref_num_cases(f); i++) {
    check_case(f, ref_case_name(f, i), TG_F64, 1e-10, 1e-10);
    check_case(f, ref_case_name(f, i), TG_F32, 2e-5, 1e-5);
  }
  ref_close(f);
}

/* Fresh random float64 inputs through tg_gradcheck (ReLU kinks are measure zero). */
static void test_gradcheck(void **state) {
  (void)state;
  const int64_t shapes[3][4] = {{2, 6, 3, 4}, {3, 4, 5, 1}, {1, 8, 2, 3}};
  const int64_t groups[3] = {3, 1, 8};
  for (int c = 0; c < 3; c++) {
    tg_scope_begin();
    gnr_args a = {.groups = groups[c], .has_w = true, .has_b = c != 1};
    tg_tensor *in[3] = {rand_leaf(shapes[c], 4, TG_F64),
                        rand_leaf(TG_SHAPE(shapes[c][1]), TG_F64),
                        rand_leaf(TG_SHAPE(shapes[c][1]), TG_F64)};
    gradcheck_ok(apply, &a, in, a.has_b ? 3 : 2);
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* The fused op gives the bits of the two ops, forward and backward, on random shapes
 * (trailing dims 0-2, several groups, affine or not), float32 and float64, with and
 * without non-temporal stores, on 1 and 2 threads. */
static void test_matches_unfused(void **state) {
  (void)state;
  int saved = tg_get_num_threads();
  const char *stream_env = getenv("TG_NORM_STREAM_BYTES");
  char *saved_stream = stream_env ? strdup(stream_env) : NULL;
  for (int it = 0; it < 24; it++) {
    const int64_t G = 1 + it % 4, D = 1 + it / 4 % 3, N = 1 + it % 3;
    int64_t shape[4] = {N, G * D, 2 + it % 5, 3 + it % 2};
    const int ndim = 2 + it % 3;
    const tg_dtype dt = it % 2 ? TG_F32 : TG_F64;
    const bool affine = it % 5 != 0;
    tg_set_num_threads(1 + it % 2);
    if (it % 3 == 0)
      setenv("TG_NORM_STREAM_BYTES", "0", 1);
    else if (saved_stream)
      setenv("TG_NORM_STREAM_BYTES", saved_stream, 1);
    else
      unsetenv("TG_NORM_STREAM_BYTES");
    tg_scope_begin();
    tg_tensor *x = tg_randn(shape, ndim, dt, TG_CPU);
    tg_tensor *w = affine ? tg_randn(TG_SHAPE(G * D), dt, TG_CPU) : NULL;
    tg_tensor *b = affine ? tg_randn(TG_SHAPE(G * D), dt, TG_CPU) : NULL;
    tg_tensor *xs[2], *ws[2], *bs[2], *ys[2];
    for (int k = 0; k < 2; k++) {
      xs[k] = tg_clone(x);
      ws[k] = affine ? tg_clone(w) : NULL;
      bs[k] = affine ? tg_clone(b) : NULL;
      assert_ok(tg_set_requires_grad(xs[k], true) == 0);
      if (affine) {
        assert_ok(tg_set_requires_grad(ws[k], true) == 0);
        assert_ok(tg_set_requires_grad(bs[k], true) == 0);
      }
    }
    ys[0] = tg_group_norm_relu(xs[0], G, ws[0], bs[0], 1e-5);
    ys[1] = tg_relu(tg_group_norm(xs[1], G, ws[1], bs[1], 1e-5));
    assert_ok(ys[0] && ys[1]);
    assert_close(ys[0], ys[1], 0, 0);
    tg_tensor *dy = tg_randn(shape, ndim, dt, TG_CPU);
    for (int k = 0; k < 2; k++)
      assert_ok(tg_backward_ex(ys[k], dy, false) == 0);
    assert_close(tg_grad(xs[0]), tg_grad(xs[1]), 0, 0);
    if (affine) {
      assert_close(tg_grad(ws[0]), tg_grad(ws[1]), 0, 0);
      assert_close(tg_grad(bs[0]), tg_grad(bs[1]), 0, 0);
    }
    assert_int_equal(tg_scope_end(), 0);
  }
  if (saved_stream)
    setenv("TG_NORM_STREAM_BYTES", saved_stream, 1);
  else
    unsetenv("TG_NORM_STREAM_BYTES");
  free(saved_stream);
  tg_set_num_threads(saved);
}

/* NaN in a group makes its outputs NaN (as torch.relu keeps NaN), not 0. */
static void test_nan_propagates(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(1, 4, 3, 3), TG_F32, TG_CPU);
  ((float *)tg_data(x))[0] = NAN;
  tg_tensor *y = tg_group_norm_relu(x, 2, NULL, NULL, 1e-5);
  assert_ok(y);
  const float *v = tg_data(y);
  for (int i = 0; i < 36; i++)
    assert_true(i < 18 ? isnan(v[i]) : !isnan(v[i]) && v[i] >= 0);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 6, 4), TG_F32, TG_CPU);
  assert_error(!tg_group_norm_relu(x, 4, NULL, NULL, 1e-5), "num_groups=4", "[2, 6, 4]");
  tg_tensor *w = tg_ones(TG_SHAPE(5), TG_F32, TG_CPU);
  assert_error(!tg_group_norm_relu(x, 3, w, NULL, 1e-5), "weight", "[5]");
  assert_error(!tg_group_norm_relu(NULL, 3, NULL, NULL, 1e-5), "tg_group_norm_relu");
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference),       cmocka_unit_test(test_gradcheck),
      cmocka_unit_test(test_matches_unfused), cmocka_unit_test(test_nan_propagates),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
