/* Pooling and upsampling: PyTorch references (float64 and float32, output and input
 * gradient), float64 gradchecks on every reference geometry, PyTorch's tie and NaN
 * rules for max pooling, threaded vs single-threaded runs, and error paths. Cases
 * come from tests/ref/gen_pool.py. */
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { OP_MAX, OP_AVG, OP_ADAPTIVE, OP_NEAREST, OP_BILINEAR };

typedef struct {
  int op;
  int64_t kernel[2], stride[2], padding[2]; /* pooling */
  int64_t size[2];                          /* adaptive, upsampling */
} pool_args;

static pool_args read_args(ref_file *f, const char *name) {
  tg_tensor *p = ref_get(f, name, "params", TG_I64);
  const int64_t *v = tg_data(p);
  pool_args a = {.op = (int)v[0]};
  if (a.op <= OP_AVG) {
    memcpy(a.kernel, v + 1, sizeof a.kernel);
    memcpy(a.stride, v + 3, sizeof a.stride);
    memcpy(a.padding, v + 5, sizeof a.padding);
  } else {
    memcpy(a.size, v + 1, sizeof a.size);
  }
  tg_tensor_free(p);
  return a;
}

static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  const pool_args *a = ctx;
  (void)n;
  switch (a->op) {
  case OP_MAX:
    return tg_max_pool2d(in[0], a->kernel, a->stride, a->padding);
  case OP_AVG:
    return tg_avg_pool2d(in[0], a->kernel, a->stride, a->padding);
  case OP_ADAPTIVE:
    return tg_adaptive_avg_pool2d(in[0], a->size);
  case OP_NEAREST:
    return tg_upsample_nearest2d(in[0], a->size);
  default:
    return tg_upsample_bilinear2d(in[0], a->size);
  }
}

static void check_case(ref_file *f, const char *name, tg_dtype dtype, double tol) {
  pool_args a = read_args(f, name);
  ref_check_one_input(f, name, dtype, tol, apply, &a);
}

static void test_reference_f64(void **state) {
  (void)state;
  ref_file *f = ref_open("pool");
  for (int i = 0; i < ref_num_cases(f); i++)
    check_case(f, ref_case_name(f, i), TG_F64, 1e-10);
  ref_close(f);
}

static void test_reference_f32(void **state) {
  (void)state;
  ref_file *f = ref_open("pool");
  for (int i = 0; i < ref_num_cases(f); i++)
    check_case(f, ref_case_name(f, i), TG_F32, 2e-5);
  ref_close(f);
}

/* Ties go to the first maximum of the window, a NaN wins its window, padding never
 * wins, and stride NULL means stride = kernel. */
static void test_max_rules(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_ones(TG_SHAPE(1, 1, 4, 4), TG_F64, TG_CPU);
  tg_set_requires_grad(x, true);
  const int64_t k[2] = {2, 2};
  tg_tensor *y = tg_max_pool2d(x, k, NULL, NULL);
  assert_ok(y);
  assert_int_equal(tg_shape(y)[2], 2);
  assert_ok(tg_backward(tg_sum(y)) == 0);
  const double *g = tg_data(tg_grad(x));
  for (int i = 0; i < 16; i++)
    assert_true(g[i] == ((i / 4) % 2 == 0 && i % 2 == 0 ? 1.0 : 0.0));

  tg_tensor *z = tg_full(TG_SHAPE(1, 1, 3, 3), -5.0, TG_F32, TG_CPU);
  ((float *)tg_data(z))[4] = NAN;
  const int64_t k3[2] = {3, 3}, s1[2] = {1, 1}, p1[2] = {1, 1};
  tg_tensor *m = tg_max_pool2d(z, k3, s1, p1);
  const float *mv = tg_data(m);
  for (int i = 0; i < 9; i++)
    assert_true(isnan(mv[i]));
  tg_tensor *neg = tg_full(TG_SHAPE(1, 1, 2, 2), -3.0, TG_F64, TG_CPU);
  tg_tensor *mn = tg_max_pool2d(neg, k3, s1, p1);
  assert_true(tg_item(tg_max_dim(tg_flatten(mn, 0, -1), 0, false, NULL)) == -3.0);
  assert_int_equal(tg_scope_end(), 0);
}

/* Planes run in parallel: with many threads and one, every op gives the same bits. */
static void test_threads_agree(void **state) {
  (void)state;
  tg_scope_begin();
  const pool_args cases[] = {
      {OP_MAX, {3, 3}, {2, 2}, {1, 1}, {0, 0}},
      {OP_AVG, {3, 2}, {1, 2}, {1, 1}, {0, 0}},
      {OP_ADAPTIVE, {0, 0}, {0, 0}, {0, 0}, {7, 5}},
      {OP_NEAREST, {0, 0}, {0, 0}, {0, 0}, {45, 70}},
      {OP_BILINEAR, {0, 0}, {0, 0}, {0, 0}, {61, 33}},
  };
  tg_tensor *x = rand_leaf(TG_SHAPE(4, 16, 32, 32), TG_F32);
  int saved = tg_get_num_threads();
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    tg_tensor *out[2], *grad[2];
    for (int t = 0; t < 2; t++) {
      tg_set_num_threads(t == 0 ? 1 : 4);
      tg_zero_grad(x);
      out[t] = apply(&x, 1, (void *)&cases[c]);
      assert_ok(out[t]);
      tg_tensor *gy = tg_ones_like(out[t]);
      assert_ok(tg_backward_ex(out[t], gy, false) == 0);
      grad[t] = tg_clone(tg_grad(x));
    }
    assert_close(out[0], out[1], 0, 0);
    assert_close(grad[0], grad[1], 0, 0);
  }
  tg_set_num_threads(saved);
  assert_int_equal(tg_scope_end(), 0);
}

/* 2x2 max pooling with stride 2 has loops of its own (vectorised for float32) that
 * keep no indices; PyTorch's rules (first maximum, last NaN, -inf windows) on every
 * row length from 1 to 19 and odd heights, against the rules written out here, in
 * float32 and float64, for the output and the input gradient. */
static void test_max_2x2_rules(void **state) {
  (void)state;
  const int64_t k[2] = {2, 2};
  for (int64_t w = 2; w <= 19; w++)
    for (int dt = 0; dt < 2; dt++) {
      tg_scope_begin();
      const int64_t h = w % 3 + 4, n = 2 * 3 * h * w, oh = h / 2, ow = w / 2;
      /* small integers make ties; some NaNs and -infs */
      double *v = malloc((size_t)n * sizeof *v);
      for (int64_t i = 0; i < n; i++) {
        uint64_t r = (uint64_t)(i * 2654435761u + w * 40503u) % 97;
        v[i] = r < 3 ? NAN : r < 6 ? -INFINITY : (double)(r % 5) - 2.0;
      }
      tg_tensor *x64 = tg_tensor_from_data(v, TG_SHAPE(2, 3, h, w), TG_F64, TG_CPU);
      tg_tensor *x = dt ? x64 : tg_to_dtype(x64, TG_F32);
      assert_ok(tg_set_requires_grad(x, true) == 0);
      tg_tensor *y = tg_max_pool2d(x, k, NULL, NULL);
      assert_ok(y);
      tg_tensor *gy = tg_randn(tg_shape(y), 4, tg_dtype_of(x), TG_CPU);
      assert_ok(tg_backward_ex(y, gy, false) == 0);
      tg_tensor *y64 = tg_to_dtype(y, TG_F64), *g64 = tg_to_dtype(gy, TG_F64);
      tg_tensor *dx64 = tg_to_dtype(tg_grad(x), TG_F64);
      const double *Y = tg_data(y64), *G = tg_data(g64), *DX = tg_data(dx64);
      double *expect_dx = calloc((size_t)n, sizeof *expect_dx);
      for (int64_t p = 0; p < 6; p++)
        for (int64_t oy = 0; oy < oh; oy++)
          for (int64_t ox = 0; ox < ow; ox++) {
            double m = -INFINITY;
            int64_t best = p * h * w + 2 * oy * w + 2 * ox;
            for (int64_t dy = 0; dy < 2; dy++)
              for (int64_t dx = 0; dx < 2; dx++) {
                int64_t i = p * h * w + (2 * oy + dy) * w + 2 * ox + dx;
                if (v[i] > m || isnan(v[i])) {
                  m = v[i];
                  best = i;
                }
              }
            const int64_t o = (p * oh + oy) * ow + ox;
            assert_true(isnan(m) ? isnan(Y[o]) : Y[o] == m);
            expect_dx[best] += G[o];
          }
      for (int64_t i = 0; i < n; i++)
        assert_true(DX[i] == expect_dx[i]);
      free(v);
      free(expect_dx);
      assert_int_equal(tg_scope_end(), 0);
    }
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 3, 5, 5), TG_F32, TG_CPU);
  const int64_t k2[2] = {2, 2}, k3[2] = {3, 3}, k0[2] = {0, 2}, s0[2] = {1, 0};
  const int64_t p2[2] = {2, 2}, pn[2] = {-1, 0}, k7[2] = {7, 7};
  assert_error(tg_max_pool2d(x, k3, NULL, p2) == NULL, "tg_max_pool2d",
               "pad should be smaller than or equal to half of kernel size, but got "
               "padW = 2, padH = 2, kW = 3, kH = 3");
  assert_error(tg_avg_pool2d(x, k0, NULL, NULL) == NULL, "tg_avg_pool2d",
               "kernel size should be greater than zero, but got kH: 0 kW: 2");
  assert_error(tg_max_pool2d(x, k2, s0, NULL) == NULL,
               "stride should be greater than zero, but got dH: 1 dW: 0");
  assert_error(tg_max_pool2d(x, k2, NULL, pn) == NULL, "pad must be non-negative");
  assert_error(tg_avg_pool2d(x, k7, NULL, NULL) == NULL,
               "Given input size: (3x5x5). Calculated output size: (3x0x0). Output size "
               "is too small");
  assert_error(tg_max_pool2d(x, NULL, NULL, NULL) == NULL, "'kernel' is NULL");
  tg_tensor *x3 = tg_randn(TG_SHAPE(3, 5, 5), TG_F32, TG_CPU); /* unbatched: pools only */
  assert_error(tg_max_pool2d(tg_randn(TG_SHAPE(5, 5), TG_F32, TG_CPU), k2, NULL, NULL) ==
                   NULL,
               "4D", "[5, 5]");
  assert_error(tg_upsample_bilinear2d(x3, k2) == NULL, "tg_upsample_bilinear2d", "4D");
  const int64_t z[2] = {0, 4}, neg[2] = {-1, 2};
  assert_error(tg_upsample_nearest2d(x, z) == NULL, "tg_upsample_nearest2d",
               "Input and output sizes should be greater than 0, but got input (H: 5, W: "
               "5) output (H: 0, W: 4)");
  assert_error(tg_adaptive_avg_pool2d(x, neg) == NULL,
               "elements of output_size must be greater than or equal to 0");
  tg_tensor *empty = tg_randn(TG_SHAPE(1, 2, 0, 3), TG_F32, TG_CPU);
  assert_error(tg_adaptive_avg_pool2d(empty, k2) == NULL,
               "Expected input to have non-zero size for non-batch dimensions");
  assert_error(tg_upsample_nearest2d(x, NULL) == NULL, "'output_size' is NULL");
  tg_tensor *i64 = tg_zeros(TG_SHAPE(1, 1, 4, 4), TG_I64, TG_CPU);
  assert_error(tg_avg_pool2d(i64, k2, NULL, NULL) == NULL, "floating point");
  assert_error(tg_max_pool2d(NULL, k2, NULL, NULL) == NULL, "'input' is NULL");
  /* Still works. */
  tg_tensor *ok = tg_max_pool2d(x, k2, NULL, NULL);
  assert_ok(ok);
  assert_int_equal(tg_shape(ok)[3], 2);
  assert_ok(tg_adaptive_avg_pool2d(x, k2));
  assert_int_equal(tg_scope_end(), 0);
}

/* An adaptive pool to an empty plane with 2^31 rows ([N, C, 2^31 - 1, 0], as PyTorch
 * allows) has nothing to compute: the kernels returned at once instead of walking the
 * rows (minutes per call in the fuzzer's unoptimised build), and the backward gives
 * zeros. */
static void test_adaptive_to_an_empty_plane(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 3, 4, 5), TG_F64, TG_CPU);
  assert_int_equal(tg_set_requires_grad(x, true), 0);
  const int64_t sizes[2][2] = {{INT32_MAX, 0}, {0, INT32_MAX}};
  for (int i = 0; i < 2; i++) {
    tg_tensor *y = tg_adaptive_avg_pool2d(x, sizes[i]);
    assert_ok(y);
    assert_int_equal(tg_shape(y)[2], sizes[i][0]);
    assert_int_equal(tg_shape(y)[3], sizes[i][1]);
    assert_int_equal(tg_numel(y), 0);
    tg_zero_grad(x);
    assert_int_equal(tg_backward(tg_sum(y)), 0);
    assert_close(tg_grad(x), tg_zeros_like(x), 0, 0);
  }
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_f64),
      cmocka_unit_test(test_reference_f32),
      cmocka_unit_test(test_max_rules),
      cmocka_unit_test(test_threads_agree),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_max_2x2_rules),
      cmocka_unit_test(test_adaptive_to_an_empty_plane),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
