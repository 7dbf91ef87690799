/* Winograd F(4x4, 3x3) convolutions (ops/conv/winograd.c), forced on for every 3x3
 * stride-1 layer (TG_CONV_WINOGRAD=1, set before the first convolution): output, input
 * gradient, weight and bias gradients in float32 against tapegrad's float64
 * convolution (im2col + GEMM, checked against PyTorch in test_conv) on every 3x3
 * stride-1 shape of the conv reference data and on shapes that reach each edge case of
 * the tiling, on 1 and 3 threads. Skipped on CPUs without AVX-512. */
#include "common.h"

#include "ops/conv/winograd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Winograd runs on x86-64 CPUs with AVX-512F only (elsewhere the tests skip). */
static bool have_avx512(void) {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

/* The bound on ||a - b|| / ||b|| for float32 against float64. */
#define MAX_NORM_ERR 1e-5

static double norm_err(const tg_tensor *a32, tg_tensor *b64) {
  tg_tensor *a = tg_to_dtype(a32, TG_F64);
  const double *p = tg_data(a), *q = tg_data(b64);
  double num = 0, den = 0;
  for (int64_t i = 0; i < tg_numel(b64); i++) {
    num += (p[i] - q[i]) * (p[i] - q[i]);
    den += q[i] * q[i];
  }
  tg_tensor_free(a);
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* One case on the current thread count: fails above MAX_NORM_ERR, returns the worst. */
static double check(const int64_t xs[4], const int64_t ws[4], const int64_t pad[2]) {
  const int64_t one[2] = {1, 1};
  tg_scope_begin();
  tg_tensor *x = tg_randn(xs, 4, TG_F64, TG_CPU), *w = tg_randn(ws, 4, TG_F64, TG_CPU);
  tg_tensor *b = tg_randn(TG_SHAPE(ws[0]), TG_F64, TG_CPU);
  /* float64 gets the float32-rounded inputs, so only the arithmetic differs */
  tg_tensor *in32[3] = {tg_to_dtype(x, TG_F32), tg_to_dtype(w, TG_F32),
                        tg_to_dtype(b, TG_F32)};
  tg_tensor *in64[3];
  for (int i = 0; i < 3; i++) {
    in64[i] = tg_to_dtype(in32[i], TG_F64);
    assert_ok(tg_set_requires_grad(in32[i], true) == 0);
    assert_ok(tg_set_requires_grad(in64[i], true) == 0);
  }
  tg_tensor *y32 = tg_conv2d(in32[0], in32[1], in32[2], one, pad, one, 1);
  tg_tensor *y64 = tg_conv2d(in64[0], in64[1], in64[2], one, pad, one, 1);
  assert_ok(y32 && y64);
  tg_tensor *gy = tg_to_dtype(tg_randn(tg_shape(y64), 4, TG_F32, TG_CPU), TG_F64);
  assert_ok(tg_backward_ex(y32, tg_to_dtype(gy, TG_F32), false) == 0);
  assert_ok(tg_backward_ex(y64, gy, false) == 0);
  double e[4] = {norm_err(y32, y64), norm_err(tg_grad(in32[0]), tg_grad(in64[0])),
                 norm_err(tg_grad(in32[1]), tg_grad(in64[1])),
                 norm_err(tg_grad(in32[2]), tg_grad(in64[2]))};
  double worst = 0;
  for (int i = 0; i < 4; i++) {
    if (!(e[i] <= MAX_NORM_ERR))
      fail_msg("x [%lld,%lld,%lld,%lld] w [%lld,%lld,3,3] pad [%lld,%lld]: normalised "
               "error of %s %.3g > %.0e",
               (long long)xs[0], (long long)xs[1], (long long)xs[2], (long long)xs[3],
               (long long)ws[0], (long long)ws[1], (long long)pad[0], (long long)pad[1],
               (const char *[]){"y", "dx", "dw", "db"}[i], e[i], MAX_NORM_ERR);
    worst = e[i] > worst ? e[i] : worst;
  }
  assert_int_equal(tg_scope_end(), 0);
  return worst;
}

/* The layer really takes Winograd in this run (not the direct kernels). */
static void assert_winograd(const int64_t xs[4], const int64_t ws[4]) {
  direct_conv d = {
      .n = xs[0], .cin = xs[1], .cout = ws[0], .kh = 3, .kw = 3, .dh = 1, .dw = 1};
  assert_true(conv_winograd_use(&d));
}

/* Every 3x3, stride-1, dilation-1, one-group conv2d of tests/data/conv.txt. */
static void test_reference_shapes(void **state) {
  (void)state;
  if (!have_avx512())
    skip();
  ref_file *f = ref_open("conv");
  int cases = 0, saved = tg_get_num_threads();
  for (int i = 0; i < ref_num_cases(f); i++) {
    const char *name = ref_case_name(f, i);
    tg_tensor *p = ref_get(f, name, "params", TG_I64);
    const int64_t *v = tg_data(p);
    tg_tensor *x = ref_get(f, name, "x", TG_F32), *w = ref_get(f, name, "w", TG_F32);
    const int64_t *xs = tg_shape(x), *ws = tg_shape(w);
    bool fits = !v[9] && v[0] == 1 && v[1] == 1 && v[4] == 1 && v[5] == 1 && v[6] == 1 &&
                ws[2] == 3 && ws[3] == 3 && tg_ndim(x) == 4;
    if (fits) {
      const int64_t pad[2] = {v[2], v[3]};
      assert_winograd(xs, ws);
      for (int t = 1; t <= 3; t += 2) {
        tg_set_num_threads(t);
        check(xs, ws, pad);
      }
      cases++;
    }
    tg_tensor_free(p);
    tg_tensor_free(x);
    tg_tensor_free(w);
  }
  tg_set_num_threads(saved);
  ref_close(f);
  assert_true(cases > 0);
}

/* Shapes for each edge of the tiling: widths and heights not a multiple of 4, rows of
 * one tile and of several 16-tile segments (w > 64), one pixel, no padding, padding 2
 * and asymmetric, padding 3 (forward by Winograd, input gradient direct), one and many
 * channels, images that share a block, blocks that end inside an image, and the
 * layers of the example nets. */
static void test_edge_shapes(void **state) {
  (void)state;
  if (!have_avx512())
    skip();
  const struct {
    int64_t x[4], w[4], pad[2];
  } cases[] = {
      {{3, 5, 9, 7}, {6, 5, 3, 3}, {1, 1}},
      {{3, 2, 4, 3}, {2, 2, 3, 3}, {1, 1}},
      {{2, 3, 1, 1}, {4, 3, 3, 3}, {1, 1}},
      {{1, 3, 5, 130}, {5, 3, 3, 3}, {1, 1}},
      {{2, 8, 9, 11}, {7, 8, 3, 3}, {0, 0}},
      {{2, 8, 6, 7}, {9, 8, 3, 3}, {2, 2}},
      {{2, 6, 13, 10}, {5, 6, 3, 3}, {1, 2}},
      {{2, 4, 10, 10}, {8, 4, 3, 3}, {3, 0}},
      {{11, 16, 30, 30}, {8, 16, 3, 3}, {1, 1}},
      {{1, 40, 70, 70}, {4, 40, 3, 3}, {1, 1}},
      {{1, 64, 64, 64}, {2, 64, 3, 3}, {1, 1}},
      {{5, 1, 17, 18}, {3, 1, 3, 3}, {1, 1}},
      {{8, 16, 64, 64}, {16, 16, 3, 3}, {1, 1}},
      {{8, 96, 32, 32}, {32, 96, 3, 3}, {1, 1}},
      {{8, 64, 16, 16}, {64, 64, 3, 3}, {1, 1}},
      {{64, 32, 14, 14}, {64, 32, 3, 3}, {1, 1}},
  };
  int saved = tg_get_num_threads();
  double worst = 0;
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    assert_winograd(cases[c].x, cases[c].w);
    for (int t = 1; t <= 3; t += 2) {
      tg_set_num_threads(t);
      double e = check(cases[c].x, cases[c].w, cases[c].pad);
      worst = e > worst ? e : worst;
    }
  }
  tg_set_num_threads(saved);
  print_message("worst normalised error %.3g\n", worst);
}

/* TG_CONV_WINOGRAD=1 still leaves other geometries to the direct kernels. */
static void test_only_3x3(void **state) {
  (void)state;
  direct_conv d = {.n = 1, .cin = 16, .cout = 16, .kh = 3, .kw = 3, .dh = 2, .dw = 1};
  assert_false(conv_winograd_use(&d));
  d.dh = 1, d.kw = 5;
  assert_false(conv_winograd_use(&d));
}

int main(void) {
  /* before the first convolution: the mode is read once */
  setenv("TG_CONV_WINOGRAD", "1", 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_shapes),
      cmocka_unit_test(test_edge_shapes),
      cmocka_unit_test(test_only_3x3),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
