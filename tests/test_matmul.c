/* tg_matmul and tg_linear against PyTorch (float64 and float32), float64 gradchecks
 * over 1-D, 2-D, batched and broadcast shapes, and error paths. Cases come from
 * tests/ref/gen_matmul.py. */
#include "common.h"

#include <math.h>
#include <string.h>

static tg_tensor *matmul_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  return tg_matmul(in[0], in[1]);
}

static tg_tensor *linear_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)ctx;
  return tg_linear(in[0], in[1], n > 2 ? in[2] : NULL);
}

static bool is_linear(const char *cname) { return !strncmp(cname, "linear", 6); }

/* Forward and the input gradients of one reference case for an upstream gout. */
static void check_case(ref_file *f, const char *cname, tg_dtype dtype, double tol) {
  static const char *const mm_in[] = {"a", "b"}, *const mm_g[] = {"ga", "gb"};
  static const char *const lin_in[] = {"x", "weight", "bias"};
  static const char *const lin_g[] = {"gx", "gweight", "gbias"};
  bool lin = is_linear(cname);
  const char *const *labels = lin ? lin_in : mm_in, *const *glabels = lin ? lin_g : mm_g;
  int n = lin ? (ref_has(f, cname, "bias") ? 3 : 2) : 2;
  tg_scope_begin();
  tg_tensor *in[3];
  for (int i = 0; i < n; i++) {
    in[i] = ref_get(f, cname, labels[i], dtype);
    assert_ok(tg_set_requires_grad(in[i], true) == 0);
  }
  tg_tensor *out = lin ? linear_fn(in, n, NULL) : matmul_fn(in, n, NULL);
  assert_ok(out);
  assert_close(out, ref_get(f, cname, "out", dtype), tol, tol);
  assert_ok(tg_backward_ex(out, ref_get(f, cname, "gout", dtype), false) == 0);
  for (int i = 0; i < n; i++)
    assert_close(tg_grad(in[i]), ref_get(f, cname, glabels[i], dtype), tol, tol);
  assert_int_equal(tg_scope_end(), 0);
}

static void run_reference(tg_dtype dtype, double tol) {
  ref_file *f = ref_open("matmul");
  assert_true(ref_num_cases(f) >= 15);
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

typedef struct {
  int64_t a[4], b[4];
  int na, nb;
} mm_shapes;

static void test_gradcheck_matmul(void **state) {
  (void)state;
  static const mm_shapes cases[] = {
      {{1, 1}, {1, 1}, 2, 2},          /* 1x1 */
      {{2, 3}, {3, 4}, 2, 2},          /* non-square */
      {{5, 1}, {1, 3}, 2, 2},          /* outer product */
      {{3}, {3, 2}, 1, 2},             /* vector-matrix */
      {{2, 3}, {3}, 2, 1},             /* matrix-vector */
      {{4}, {4}, 1, 1},                /* dot: 0-dim result */
      {{2, 2, 3}, {2, 3, 2}, 3, 3},    /* batched */
      {{3, 2, 3}, {3, 1}, 3, 2},       /* shared b (one folded GEMM) */
      {{2, 3}, {2, 3, 2}, 2, 3},       /* shared a */
      {{2, 1, 2, 3}, {3, 3, 1}, 4, 3}, /* broadcast both ways */
      {{1, 2, 3}, {2, 1, 3, 2}, 3, 4}, /* size-1 batch dims */
      {{3}, {2, 3, 2}, 1, 3},          /* vector times batch */
      {{2, 2, 3}, {3}, 3, 1},          /* batch times vector */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    tg_scope_begin();
    tg_tensor *in[2] = {rand_leaf(cases[i].a, cases[i].na, TG_F64),
                        rand_leaf(cases[i].b, cases[i].nb, TG_F64)};
    gradcheck_ok(matmul_fn, NULL, in, 2);
    assert_int_equal(tg_scope_end(), 0);
  }
}

static void test_gradcheck_linear(void **state) {
  (void)state;
  static const struct {
    int64_t x[3];
    int nx;
    int64_t out;
    bool bias;
  } cases[] = {
      {{1, 1}, 2, 1, true},  {{3, 4}, 2, 2, true}, {{2, 3, 4}, 3, 3, true},
      {{4, 5}, 2, 3, false}, {{5}, 1, 2, true},    {{1, 2, 3}, 3, 1, false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    tg_scope_begin();
    int64_t in_f = cases[i].x[cases[i].nx - 1];
    tg_tensor *in[3] = {rand_leaf(cases[i].x, cases[i].nx, TG_F64),
                        rand_leaf(TG_SHAPE(cases[i].out, in_f), TG_F64),
                        rand_leaf(TG_SHAPE(cases[i].out), TG_F64)};
    gradcheck_ok(linear_fn, NULL, in, cases[i].bias ? 3 : 2);
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* Only the inputs that require grad get one; the others stay NULL. */
static void test_partial_grads(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = rand_leaf(TG_SHAPE(2, 3, 4), TG_F64);
  tg_tensor *b = tg_randn(TG_SHAPE(4, 2), TG_F64, TG_CPU);
  tg_tensor *in[2] = {a, b};
  gradcheck_ok(matmul_fn, NULL, in, 2);
  tg_tensor *y = tg_sum(tg_matmul(a, b));
  assert_ok(tg_backward(y) == 0);
  assert_non_null(tg_grad(a));
  assert_null(tg_grad(b));

  tg_tensor *x = tg_randn(TG_SHAPE(3, 4), TG_F64, TG_CPU);
  tg_tensor *w = rand_leaf(TG_SHAPE(2, 4), TG_F64);
  tg_tensor *bias = tg_randn(TG_SHAPE(2), TG_F64, TG_CPU);
  tg_tensor *lin[3] = {x, w, bias};
  gradcheck_ok(linear_fn, NULL, lin, 3);
  assert_int_equal(tg_scope_end(), 0);
}

/* Linear equals matmul with the transposed weight plus bias; float32, sizes where
 * OpenBLAS takes its blocked paths. */
static void test_linear_matches_matmul(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(4, 33, 70), TG_F32, TG_CPU);
  tg_tensor *w = tg_randn(TG_SHAPE(65, 70), TG_F32, TG_CPU);
  tg_tensor *b = tg_randn(TG_SHAPE(65), TG_F32, TG_CPU);
  tg_tensor *y = tg_linear(x, w, b);
  tg_tensor *ref = tg_add(tg_matmul(x, tg_transpose(w, 0, 1)), b);
  assert_close(y, ref, 1e-4, 1e-4);
  assert_int_equal(tg_ndim(y), 3);
  assert_int_equal(tg_shape(y)[2], 65);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_empty_dims(void **state) {
  (void)state;
  tg_scope_begin();
  /* k = 0: the sum of no products is zero, and the gradients are empty. */
  tg_tensor *a = rand_leaf(TG_SHAPE(2, 0), TG_F64),
            *b = rand_leaf(TG_SHAPE(0, 3), TG_F64);
  tg_tensor *c = tg_matmul(a, b);
  assert_ok(c);
  assert_close(c, tg_zeros(TG_SHAPE(2, 3), TG_F64, TG_CPU), 0, 0);
  assert_ok(tg_backward_ex(c, tg_ones(TG_SHAPE(2, 3), TG_F64, TG_CPU), false) == 0);
  assert_int_equal(tg_numel(tg_grad(a)), 0);
  /* m = 0 and an empty batch. */
  tg_tensor *d = tg_matmul(tg_randn(TG_SHAPE(0, 3), TG_F32, TG_CPU),
                           tg_randn(TG_SHAPE(3, 4), TG_F32, TG_CPU));
  assert_ok(d);
  assert_int_equal(tg_shape(d)[0], 0);
  tg_tensor *e = tg_matmul(tg_randn(TG_SHAPE(0, 2, 3), TG_F32, TG_CPU),
                           tg_randn(TG_SHAPE(3, 4), TG_F32, TG_CPU));
  assert_ok(e);
  assert_int_equal(tg_numel(e), 0);
  /* linear with in_features = 0 is the bias. */
  tg_tensor *bias = tg_randn(TG_SHAPE(3), TG_F64, TG_CPU);
  tg_tensor *l = tg_linear(tg_randn(TG_SHAPE(2, 0), TG_F64, TG_CPU),
                           tg_randn(TG_SHAPE(3, 0), TG_F64, TG_CPU), bias);
  assert_ok(l);
  assert_close(tg_narrow(l, 0, 1, 1), tg_reshape(bias, TG_SHAPE(1, 3)), 0, 0);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_no_grad_records_nothing(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = rand_leaf(TG_SHAPE(2, 3), TG_F32),
            *b = rand_leaf(TG_SHAPE(3, 2), TG_F32);
  tg_no_grad_begin();
  tg_tensor *c = tg_matmul(a, b);
  tg_tensor *l = tg_linear(a, b, NULL);
  tg_no_grad_end();
  assert_ok(c && !tg_requires_grad(c));
  assert_null(l); /* weight [3, 2] does not fit input [2, 3] */
  tg_clear_error();
  assert_int_equal(tg_scope_end(), 0);
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a23 = tg_randn(TG_SHAPE(2, 3), TG_F32, TG_CPU);
  tg_tensor *b45 = tg_randn(TG_SHAPE(4, 5), TG_F32, TG_CPU);
  assert_error(tg_matmul(a23, b45) == NULL,
               "tg_matmul: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)");
  assert_error(tg_matmul(tg_randn(TG_SHAPE(2, 2, 3), TG_F32, TG_CPU), b45) == NULL,
               "(2x2x3 and 4x5)");
  assert_error(tg_matmul(tg_randn(TG_SHAPE(3), TG_F32, TG_CPU),
                         tg_randn(TG_SHAPE(4), TG_F32, TG_CPU)) == NULL,
               "cannot be multiplied (3 and 4)");
  assert_error(tg_matmul(tg_randn(TG_SHAPE(3, 2, 2), TG_F32, TG_CPU),
                         tg_randn(TG_SHAPE(5, 2, 2), TG_F32, TG_CPU)) == NULL,
               "batch dimensions cannot be broadcast", "[3, 2, 2]", "[5, 2, 2]");
  assert_error(tg_matmul(tg_scalar(1, TG_F32, TG_CPU), b45) == NULL,
               "need to be at least 1D", "0D and 2D");
  assert_error(tg_matmul(a23, tg_randn(TG_SHAPE(3, 2), TG_F64, TG_CPU)) == NULL,
               "tg_matmul", "same dtype", "float32", "float64");
  tg_tensor *i64 = tg_zeros(TG_SHAPE(3, 2), TG_I64, TG_CPU);
  assert_error(tg_matmul(a23, i64) == NULL, "tg_matmul", "floating point");
  assert_error(tg_matmul(NULL, a23) == NULL, "tg_matmul", "'a' is NULL");
  assert_error(tg_matmul(a23, NULL) == NULL, "tg_matmul", "'b' is NULL");

  tg_tensor *x = tg_randn(TG_SHAPE(4, 3), TG_F32, TG_CPU);
  assert_error(tg_linear(x, tg_randn(TG_SHAPE(2, 5), TG_F32, TG_CPU), NULL) == NULL,
               "tg_linear: mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)",
               "[4, 3]", "[2, 5]");
  assert_error(tg_linear(x, tg_randn(TG_SHAPE(3, 3, 1), TG_F32, TG_CPU), NULL) == NULL,
               "weight must be 2-D", "[3, 3, 1]");
  assert_error(tg_linear(x, tg_randn(TG_SHAPE(2, 3), TG_F32, TG_CPU),
                         tg_randn(TG_SHAPE(3), TG_F32, TG_CPU)) == NULL,
               "bias must have shape [2]", "got [3]");
  assert_error(tg_linear(tg_scalar(1, TG_F32, TG_CPU), b45, NULL) == NULL, "0-dim");
  assert_error(tg_linear(x, NULL, NULL) == NULL, "tg_linear", "'weight' is NULL");
  assert_error(tg_linear(NULL, x, NULL) == NULL, "tg_linear", "'input' is NULL");
  assert_error(tg_linear(x, tg_randn(TG_SHAPE(2, 3), TG_F64, TG_CPU), NULL) == NULL,
               "same dtype");

  /* The library still works after the errors. */
  tg_tensor *y = tg_matmul(a23, tg_ones(TG_SHAPE(3, 1), TG_F32, TG_CPU));
  assert_ok(y);
  assert_true(fabs(tg_item(tg_sum(y)) - tg_item(tg_sum(a23))) < 1e-5);
  assert_string_equal(tg_last_error(), "");
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_f64),
      cmocka_unit_test(test_reference_f32),
      cmocka_unit_test(test_gradcheck_matmul),
      cmocka_unit_test(test_gradcheck_linear),
      cmocka_unit_test(test_partial_grads),
      cmocka_unit_test(test_linear_matches_matmul),
      cmocka_unit_test(test_empty_dims),
      cmocka_unit_test(test_no_grad_records_nothing),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
