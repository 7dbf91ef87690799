/* tg_conv2d and tg_conv_transpose2d: PyTorch references (float64 and float32, output
 * and all gradients), float64 gradchecks on every reference geometry, a direct-loop
 * oracle on batches large enough to take several column chunks, the adjoint identity
 * between the two ops, and error paths. Cases come from tests/ref/gen_conv.py. */
#include "common.h"

#include <math.h>
#include <string.h>

typedef struct {
  int64_t stride[2], padding[2], dilation[2], groups, output_padding[2];
  bool transposed;
} conv_args;

static conv_args read_args(ref_file *f, const char *name) {
  tg_tensor *p = ref_get(f, name, "params", TG_I64);
  const int64_t *v = tg_data(p);
  conv_args a = {{v[0], v[1]}, {v[2], v[3]}, {v[4], v[5]}, v[6], {v[7], v[8]}, v[9]};
  tg_tensor_free(p);
  return a;
}

/* inputs: x, w and optionally b. */
static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  const conv_args *a = ctx;
  const tg_tensor *b = n > 2 ? in[2] : NULL;
  if (a->transposed)
    return tg_conv_transpose2d(in[0], in[1], b, a->stride, a->padding, a->output_padding,
                               a->dilation, a->groups);
  return tg_conv2d(in[0], in[1], b, a->stride, a->padding, a->dilation, a->groups);
}

static void check_case(ref_file *f, const char *name, tg_dtype dtype, double atol,
                       double rtol) {
  conv_args a = read_args(f, name);
  bool has_bias = ref_has(f, name, "b");
  tg_scope_begin();
  tg_tensor *in[3] = {ref_get(f, name, "x", dtype), ref_get(f, name, "w", dtype),
                      has_bias ? ref_get(f, name, "b", dtype) : NULL};
  int n = has_bias ? 3 : 2;
  for (int i = 0; i < n; i++)
    assert_ok(tg_set_requires_grad(in[i], true) == 0);
  tg_tensor *y = apply(in, n, &a);
  assert_ok(y);
  assert_close(y, ref_get(f, name, "y", dtype), atol, rtol);
  assert_ok(tg_backward_ex(y, ref_get(f, name, "gy", dtype), false) == 0);
  assert_close(tg_grad(in[0]), ref_get(f, name, "dx", dtype), atol, rtol);
  assert_close(tg_grad(in[1]), ref_get(f, name, "dw", dtype), atol, rtol);
  if (has_bias)
    assert_close(tg_grad(in[2]), ref_get(f, name, "db", dtype), atol, rtol);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_reference_f64(void **state) {
  (void)state;
  ref_file *f = ref_open("conv");
  for (int i = 0; i < ref_num_cases(f); i++)
    check_case(f, ref_case_name(f, i), TG_F64, 1e-10, 1e-10);
  ref_close(f);
}

static void test_reference_f32(void **state) {
  (void)state;
  ref_file *f = ref_open("conv");
  for (int i = 0; i < ref_num_cases(f); i++)
    check_case(f, ref_case_name(f, i), TG_F32, 3e-5, 1e-5);
  ref_close(f);
}

/* Fresh random float64 inputs of every reference geometry through tg_gradcheck. */
static void test_gradcheck(void **state) {
  (void)state;
  ref_file *f = ref_open("conv");
  for (int i = 0; i < ref_num_cases(f); i++) {
    const char *name = ref_case_name(f, i);
    conv_args a = read_args(f, name);
    tg_scope_begin();
    tg_tensor *x = ref_get(f, name, "x", TG_F64), *w = ref_get(f, name, "w", TG_F64);
    int n = ref_has(f, name, "b") ? 3 : 2;
    int64_t cout = a.transposed ? tg_shape(w)[1] * a.groups : tg_shape(w)[0];
    tg_tensor *in[3] = {rand_leaf(tg_shape(x), 4, TG_F64),
                        rand_leaf(tg_shape(w), 4, TG_F64),
                        n == 3 ? rand_leaf(TG_SHAPE(cout), TG_F64) : NULL};
    gradcheck_ok(apply, &a, in, n);
    assert_int_equal(tg_scope_end(), 0);
  }
  ref_close(f);
}

/* Gradients only where asked: x alone, w alone. */
static void test_partial_grads(void **state) {
  (void)state;
  conv_args a = {{2, 1}, {1, 0}, {1, 2}, 2, {1, 0}, false};
  for (int t = 0; t < 2; t++) {
    a.transposed = t;
    tg_scope_begin();
    tg_tensor *x = tg_randn(TG_SHAPE(2, 4, 6, 7), TG_F64, TG_CPU);
    const int64_t wt[4] = {4, 3, 3, 2}, wc[4] = {6, 2, 3, 2};
    tg_tensor *w = tg_randn(t ? wt : wc, 4, TG_F64, TG_CPU);
    tg_tensor *b = tg_randn(TG_SHAPE(6), TG_F64, TG_CPU);
    for (int which = 0; which < 3; which++) {
      tg_tensor *in[3] = {x, w, b};
      tg_set_requires_grad(in[which], true);
      gradcheck_ok(apply, &a, in, 3);
      tg_tensor *y = apply(in, 3, &a);
      assert_ok(tg_backward(tg_sum(y)) == 0);
      for (int k = 0; k < 3; k++)
        assert_true((tg_grad(in[k]) != NULL) == (k == which));
      tg_zero_grad(in[which]);
      tg_set_requires_grad(in[which], false);
    }
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* Direct loops over every (n, co, oy, ox, ci, i, j): y, and the gradients of
 * sum(y * gy), for conv2d in float64. */
static void naive_conv2d(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                         const conv_args *a, const tg_tensor *gy, tg_tensor *y,
                         tg_tensor *dx, tg_tensor *dw, tg_tensor *db) {
  const int64_t *xs = tg_shape(x), *ws = tg_shape(w), *ys = tg_shape(y);
  const int64_t N = xs[0], Ci = xs[1], H = xs[2], W = xs[3], Co = ws[0];
  const int64_t cig = ws[1], cog = Co / a->groups, kh = ws[2], kw = ws[3];
  const double *X = tg_data((tg_tensor *)x), *Wt = tg_data((tg_tensor *)w);
  const double *B = b ? tg_data((tg_tensor *)b) : NULL, *G = tg_data((tg_tensor *)gy);
  double *Y = tg_data(y), *DX = tg_data(dx), *DW = tg_data(dw), *DB = tg_data(db);
  memset(DX, 0, sizeof(double) * (size_t)tg_numel(dx));
  memset(DW, 0, sizeof(double) * (size_t)tg_numel(dw));
  memset(DB, 0, sizeof(double) * (size_t)Co);
  for (int64_t n = 0; n < N; n++)
    for (int64_t co = 0; co < Co; co++)
      for (int64_t oy = 0; oy < ys[2]; oy++)
        for (int64_t ox = 0; ox < ys[3]; ox++) {
          int64_t o = ((n * Co + co) * ys[2] + oy) * ys[3] + ox;
          double acc = B ? B[co] : 0, g = G[o];
          DB[co] += g;
          for (int64_t c = 0; c < cig; c++)
            for (int64_t i = 0; i < kh; i++)
              for (int64_t j = 0; j < kw; j++) {
                int64_t iy = oy * a->stride[0] - a->padding[0] + i * a->dilation[0];
                int64_t ix = ox * a->stride[1] - a->padding[1] + j * a->dilation[1];
                if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                  continue;
                int64_t ci = co / cog * cig + c;
                int64_t xi = ((n * Ci + ci) * H + iy) * W + ix;
                int64_t wi = ((co * cig + c) * kh + i) * kw + j;
                acc += X[xi] * Wt[wi];
                DX[xi] += Wt[wi] * g;
                DW[wi] += X[xi] * g;
              }
          Y[o] = acc;
        }
}

/* Batches that need several column chunks, and one image whose columns exceed the
 * kept workspace, against the direct loops; float32 with a looser tolerance. */
static void test_large_vs_naive(void **state) {
  (void)state;
  const struct {
    int64_t x[4], w[4];
    conv_args a;
  } cases[] = {
      {{11, 16, 30, 30}, {8, 16, 3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1, {0, 0}, false}},
      {{9, 8, 20, 17}, {6, 4, 3, 5}, {{2, 1}, {0, 2}, {2, 1}, 2, {0, 0}, false}},
      {{1, 64, 64, 64}, {2, 64, 3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1, {0, 0}, false}},
      {{5, 12, 9, 9}, {10, 12, 1, 1}, {{1, 1}, {0, 0}, {1, 1}, 1, {0, 0}, false}},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    tg_scope_begin();
    const conv_args *a = &cases[c].a;
    tg_tensor *x = rand_leaf(cases[c].x, 4, TG_F64),
              *w = rand_leaf(cases[c].w, 4, TG_F64);
    tg_tensor *b = rand_leaf(TG_SHAPE(cases[c].w[0]), TG_F64);
    tg_tensor *y = tg_conv2d(x, w, b, a->stride, a->padding, a->dilation, a->groups);
    assert_ok(y);
    tg_tensor *gy = tg_randn(tg_shape(y), 4, TG_F64, TG_CPU);
    tg_tensor *ey = tg_empty(tg_shape(y), 4, TG_F64, TG_CPU), *edx = tg_zeros_like(x);
    tg_tensor *edw = tg_zeros_like(w), *edb = tg_zeros_like(b);
    naive_conv2d(x, w, b, a, gy, ey, edx, edw, edb);
    assert_close(y, ey, 1e-10, 1e-10);
    assert_ok(tg_backward_ex(y, gy, false) == 0);
    assert_close(tg_grad(x), edx, 1e-10, 1e-10);
    assert_close(tg_grad(w), edw, 1e-9, 1e-10);
    assert_close(tg_grad(b), edb, 1e-9, 1e-10);
    /* float32: same inputs rounded. */
    tg_tensor *x32 = tg_to_dtype(tg_detach(x), TG_F32);
    tg_tensor *w32 = tg_to_dtype(tg_detach(w), TG_F32);
    tg_tensor *b32 = tg_to_dtype(tg_detach(b), TG_F32);
    tg_set_requires_grad(x32, true);
    tg_set_requires_grad(w32, true);
    tg_set_requires_grad(b32, true);
    tg_tensor *y32 =
        tg_conv2d(x32, w32, b32, a->stride, a->padding, a->dilation, a->groups);
    assert_close(y32, ey, 1e-4, 1e-4);
    assert_ok(tg_backward_ex(y32, tg_to_dtype(gy, TG_F32), false) == 0);
    assert_close(tg_grad(x32), edx, 1e-4, 1e-4);
    assert_close(tg_grad(w32), edw, 2e-3, 1e-4);
    assert_close(tg_grad(b32), edb, 2e-3, 1e-4);
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* float32 stride-1 convolutions take the direct kernels (ops/conv/direct.c) where the
 * CPU has AVX2 and FMA: output channels not a multiple of their 4-channel tiles, taps
 * not a multiple of 3, rows shorter than a vector or ending in a partial one,
 * dilation, no padding (the image read in place), padding too large for the direct
 * input gradient, several row blocks per image and several images per weight-gradient
 * group, on 1 and 3 threads: all against the direct loops in float64. */
static void test_direct_vs_naive(void **state) {
  (void)state;
  const struct {
    int64_t x[4], w[4], pad[2], dil[2];
  } cases[] = {
      {{3, 5, 9, 7}, {6, 5, 3, 3}, {1, 1}, {1, 1}},
      {{2, 3, 12, 21}, {5, 3, 3, 5}, {1, 2}, {2, 1}},
      {{4, 7, 17, 33}, {9, 7, 2, 2}, {0, 0}, {1, 1}},
      {{2, 4, 10, 10}, {8, 4, 3, 3}, {3, 0}, {1, 1}},
      {{1, 2, 5, 40}, {3, 2, 1, 1}, {1, 1}, {1, 1}},
      {{1, 40, 70, 70}, {4, 40, 3, 3}, {1, 1}, {1, 1}},
      {{20, 3, 6, 6}, {4, 3, 3, 3}, {1, 1}, {1, 1}},
      {{3, 2, 4, 3}, {2, 2, 3, 3}, {1, 1}, {1, 1}},
  };
  int saved = tg_get_num_threads();
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
    for (int t = 0; t < 2; t++) {
      tg_set_num_threads(t ? 3 : 1);
      tg_scope_begin();
      const conv_args a = {{1, 1},
                           {cases[c].pad[0], cases[c].pad[1]},
                           {cases[c].dil[0], cases[c].dil[1]},
                           1,
                           {0, 0},
                           false};
      tg_tensor *x = tg_randn(cases[c].x, 4, TG_F64, TG_CPU);
      tg_tensor *w = tg_randn(cases[c].w, 4, TG_F64, TG_CPU);
      tg_tensor *b = tg_randn(TG_SHAPE(cases[c].w[0]), TG_F64, TG_CPU);
      tg_tensor *x32 = tg_to_dtype(x, TG_F32), *w32 = tg_to_dtype(w, TG_F32);
      tg_tensor *b32 = tg_to_dtype(b, TG_F32);
      tg_tensor *in[3] = {x32, w32, b32};
      for (int i = 0; i < 3; i++)
        assert_ok(tg_set_requires_grad(in[i], true) == 0);
      tg_tensor *y = tg_conv2d(x32, w32, b32, a.stride, a.padding, a.dilation, 1);
      assert_ok(y);
      tg_tensor *gy = tg_randn(tg_shape(y), 4, TG_F64, TG_CPU);
      tg_tensor *ey = tg_empty(tg_shape(y), 4, TG_F64, TG_CPU), *edx = tg_zeros_like(x);
      tg_tensor *edw = tg_zeros_like(w), *edb = tg_zeros_like(b);
      /* the rounded float32 inputs, so that only the arithmetic differs */
      naive_conv2d(tg_to_dtype(x32, TG_F64), tg_to_dtype(w32, TG_F64),
                   tg_to_dtype(b32, TG_F64), &a,
                   tg_to_dtype(tg_to_dtype(gy, TG_F32), TG_F64), ey, edx, edw, edb);
      assert_close(y, ey, 1e-4, 1e-4);
      assert_ok(tg_backward_ex(y, tg_to_dtype(gy, TG_F32), false) == 0);
      assert_close(tg_grad(x32), edx, 1e-4, 1e-4);
      assert_close(tg_grad(w32), edw, 1e-3, 1e-4);
      assert_close(tg_grad(b32), edb, 1e-3, 1e-4);
      assert_int_equal(tg_scope_end(), 0);
    }
  tg_set_num_threads(saved);
}

/* An Inf in x reaches exactly the weight-gradient entries whose taps read it: the
 * direct kernels' partial vectors (rows of 13 and of 5 pixels) never pair a lane they
 * do not count with it (0 * Inf would be NaN). */
static void test_direct_inf_stays_put(void **state) {
  (void)state;
  const int64_t widths[2] = {13, 5};
  for (int c = 0; c < 2; c++) {
    tg_scope_begin();
    const conv_args a = {{1, 1}, {1, 1}, {1, 1}, 1, {0, 0}, false};
    tg_tensor *x = tg_randn(TG_SHAPE(2, 2, 6, widths[c]), TG_F64, TG_CPU);
    /* image 0, channel 1, row 3, last column */
    ((double *)tg_data(x))[1 * 6 * widths[c] + 3 * widths[c] + widths[c] - 1] = INFINITY;
    tg_tensor *w = tg_randn(TG_SHAPE(4, 2, 3, 3), TG_F64, TG_CPU);
    tg_tensor *x32 = tg_to_dtype(x, TG_F32), *w32 = tg_to_dtype(w, TG_F32);
    assert_ok(tg_set_requires_grad(w32, true) == 0);
    tg_tensor *y = tg_conv2d(x32, w32, NULL, a.stride, a.padding, a.dilation, 1);
    assert_ok(y);
    tg_tensor *gy = tg_ones(tg_shape(y), 4, TG_F64, TG_CPU);
    tg_tensor *ey = tg_empty(tg_shape(y), 4, TG_F64, TG_CPU), *edx = tg_zeros_like(x);
    tg_tensor *edw = tg_zeros_like(w), *edb = tg_zeros(TG_SHAPE(4), TG_F64, TG_CPU);
    naive_conv2d(x, w, NULL, &a, gy, ey, edx, edw, edb);
    assert_ok(tg_backward_ex(y, tg_to_dtype(gy, TG_F32), false) == 0);
    const float *dw = tg_data(tg_grad(w32));
    const double *e = tg_data(edw);
    int finite = 0;
    for (int64_t i = 0; i < tg_numel(edw); i++) {
      assert_true(isfinite(dw[i]) == isfinite(e[i]));
      finite += isfinite(e[i]) != 0;
    }
    assert_true(finite > 0 && finite < tg_numel(edw));
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* Work is split by images, pixels or channels depending on the thread count and the
 * batch: one thread and several agree (up to summation order) for small batches too. */
static void test_threads_agree(void **state) {
  (void)state;
  const int64_t xs[3][4] = {{1, 6, 33, 31}, {3, 6, 33, 31}, {2, 6, 21, 19}};
  const int64_t s[2] = {2, 1}, p[2] = {1, 1}, d[2] = {1, 2}, op[2] = {1, 0};
  int saved = tg_get_num_threads();
  for (int c = 0; c < 3; c++)
    for (int tr = 0; tr < 2; tr++) {
      tg_scope_begin();
      tg_tensor *x = rand_leaf(xs[c], 4, TG_F64);
      const int64_t wt[4] = {6, 4, 3, 3}, wc[4] = {8, 3, 3, 3};
      tg_tensor *w = rand_leaf(tr ? wt : wc, 4, TG_F64);
      tg_tensor *b = rand_leaf(TG_SHAPE(8), TG_F64);
      tg_tensor *y[2], *gx[2], *gw[2];
      for (int t = 0; t < 2; t++) {
        tg_set_num_threads(t ? 3 : 1);
        y[t] = tr ? tg_conv_transpose2d(x, w, b, s, p, op, d, 2)
                  : tg_conv2d(x, w, b, s, p, d, 2);
        assert_ok(y[t]);
        tg_zero_grad(x);
        tg_zero_grad(w);
        assert_ok(tg_backward(tg_sum(tg_mul(y[t], y[t]))) == 0);
        gx[t] = tg_clone(tg_grad(x));
        gw[t] = tg_clone(tg_grad(w));
      }
      assert_close(y[0], y[1], 1e-12, 1e-12);
      assert_close(gx[0], gx[1], 1e-12, 1e-12);
      assert_close(gw[0], gw[1], 1e-10, 1e-12);
      assert_int_equal(tg_scope_end(), 0);
    }
  tg_set_num_threads(saved);
}

/* <conv2d(x, W), y> == <x, conv_transpose2d(y, W)>: the two ops are adjoint. */
static void test_adjoint(void **state) {
  (void)state;
  tg_scope_begin();
  const int64_t s[2] = {2, 3}, p[2] = {1, 2}, d[2] = {2, 1};
  tg_tensor *x = tg_randn(TG_SHAPE(3, 4, 11, 13), TG_F64, TG_CPU);
  tg_tensor *w = tg_randn(TG_SHAPE(6, 2, 3, 4), TG_F64, TG_CPU);
  tg_tensor *cx = tg_conv2d(x, w, NULL, s, p, d, 2);
  assert_ok(cx);
  tg_tensor *y = tg_randn(tg_shape(cx), 4, TG_F64, TG_CPU);
  /* output_padding recovers the rows the strided conv dropped. */
  const int64_t op[2] = {(11 + 2 * p[0] - d[0] * 2 - 1) % s[0],
                         (13 + 2 * p[1] - d[1] * 3 - 1) % s[1]};
  tg_tensor *ty = tg_conv_transpose2d(y, w, NULL, s, p, op, d, 2);
  assert_ok(ty);
  assert_int_equal(tg_shape(ty)[2], 11);
  assert_int_equal(tg_shape(ty)[3], 13);
  double lhs = tg_item(tg_sum(tg_mul(cx, y))), rhs = tg_item(tg_sum(tg_mul(x, ty)));
  assert_true(fabs(lhs - rhs) < 1e-9 * (1 + fabs(lhs)));
  assert_int_equal(tg_scope_end(), 0);
}

/* A batch of zero images and NULL parameter arrays (PyTorch's defaults). */
static void test_edge_cases(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(0, 2, 5, 5), TG_F64);
  tg_tensor *w = rand_leaf(TG_SHAPE(3, 2, 3, 3), TG_F64);
  tg_tensor *y = tg_conv2d(x, w, NULL, NULL, NULL, NULL, 1);
  assert_ok(y);
  assert_int_equal(tg_shape(y)[0], 0);
  assert_int_equal(tg_shape(y)[2], 3);
  assert_ok(tg_backward(tg_sum(y)) == 0);
  assert_true(tg_item(tg_sum(tg_abs(tg_grad(w)))) == 0.0);
  tg_tensor *x1 = tg_randn(TG_SHAPE(1, 2, 4, 4), TG_F32, TG_CPU);
  tg_tensor *w1 = tg_randn(TG_SHAPE(2, 3, 2, 2), TG_F32, TG_CPU);
  tg_tensor *t = tg_conv_transpose2d(x1, w1, NULL, NULL, NULL, NULL, NULL, 1);
  assert_ok(t);
  assert_int_equal(tg_shape(t)[2], 5);
  assert_int_equal(tg_shape(t)[1], 3);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  const int64_t one[2] = {1, 1}, zero[2] = {0, 0}, neg[2] = {-1, 0}, two[2] = {2, 2};
  tg_tensor *x = tg_randn(TG_SHAPE(64, 1, 28, 28), TG_F32, TG_CPU);
  tg_tensor *w = tg_randn(TG_SHAPE(32, 3, 3, 3), TG_F32, TG_CPU);
  assert_error(tg_conv2d(x, w, NULL, one, zero, one, 1) == NULL, "tg_conv2d",
               "Given groups=1, weight of size [32, 3, 3, 3], expected input[64, 1, 28, "
               "28] to have 3 channels, but got 1 channels instead");
  tg_tensor *w1 = tg_randn(TG_SHAPE(4, 1, 3, 3), TG_F32, TG_CPU);
  tg_tensor *small = tg_randn(TG_SHAPE(1, 1, 2, 2), TG_F32, TG_CPU);
  assert_error(tg_conv2d(small, w1, NULL, one, zero, one, 1) == NULL,
               "Calculated padded input size per channel: (2 x 2). Kernel size: (3 x 3)",
               "Kernel size can't be greater than actual input size");
  assert_error(tg_conv2d(small, w1, NULL, one, zero, two, 1) == NULL, "(5 x 5)");
  assert_error(tg_conv2d(x, w1, NULL, zero, zero, one, 1) == NULL,
               "non-positive stride is not supported");
  assert_error(tg_conv2d(x, w1, NULL, one, zero, zero, 1) == NULL,
               "dilation should be greater than zero");
  assert_error(tg_conv2d(x, w1, NULL, one, neg, one, 1) == NULL,
               "negative padding is not supported");
  assert_error(tg_conv2d(x, w1, NULL, one, zero, one, 0) == NULL,
               "non-positive groups is not supported");
  tg_tensor *x4 = tg_randn(TG_SHAPE(1, 4, 5, 5), TG_F32, TG_CPU);
  tg_tensor *w3 = tg_randn(TG_SHAPE(3, 2, 3, 3), TG_F32, TG_CPU);
  assert_error(tg_conv2d(x4, w3, NULL, one, zero, one, 2) == NULL,
               "Given groups=2, expected weight to be divisible by 2 at dimension 0",
               "[3, 2, 3, 3]");
  tg_tensor *w4 = tg_randn(TG_SHAPE(4, 1, 3, 3), TG_F32, TG_CPU);
  tg_tensor *x3 = tg_randn(TG_SHAPE(1, 3, 5, 5), TG_F32, TG_CPU);
  assert_error(tg_conv2d(x3, w4, NULL, one, zero, one, 2) == NULL,
               "expected input[1, 3, 5, 5] to have 2 channels, but got 3 channels");
  assert_error(tg_conv2d(x4, w4, NULL, one, zero, one, 8) == NULL,
               "expected weight to be at least 8 at dimension 0");
  tg_tensor *b5 = tg_randn(TG_SHAPE(5), TG_F32, TG_CPU);
  assert_error(tg_conv2d(x4, w4, b5, one, zero, one, 4) == NULL,
               "expected bias to be 1-dimensional with 4 elements", "[5]");
  tg_tensor *x2d = tg_randn(TG_SHAPE(5, 5), TG_F32, TG_CPU); /* [C, H, W] is unbatched */
  assert_error(tg_conv2d(x2d, w4, NULL, one, zero, one, 4) == NULL,
               "Expected 4-dimensional input for 4-dimensional weight [4, 1, 3, 3], but "
               "got 2-dimensional input of size [5, 5] instead");
  tg_tensor *x3d = tg_randn(TG_SHAPE(4, 5, 5), TG_F32, TG_CPU);
  assert_error(tg_conv2d(x4, x3d, NULL, one, zero, one, 1) == NULL,
               "expected a 4-dimensional weight", "[4, 5, 5]");
  tg_tensor *w64 = tg_randn(TG_SHAPE(4, 4, 3, 3), TG_F64, TG_CPU);
  assert_error(tg_conv2d(x4, w64, NULL, one, zero, one, 1) == NULL, "same dtype");
  assert_error(tg_conv2d(NULL, w4, NULL, one, zero, one, 1) == NULL, "tg_conv2d",
               "'input' is NULL");
  assert_error(tg_conv2d(x4, NULL, NULL, one, zero, one, 1) == NULL, "'weight' is NULL");
  /* Transposed. */
  tg_tensor *wt = tg_randn(TG_SHAPE(4, 2, 3, 3), TG_F32, TG_CPU);
  assert_error(tg_conv_transpose2d(x4, wt, NULL, two, zero, two, one, 1) == NULL,
               "tg_conv_transpose2d",
               "output padding must be smaller than either stride "
               "or dilation, but got output_padding_height: 2");
  tg_tensor *tiny = tg_randn(TG_SHAPE(1, 4, 1, 1), TG_F32, TG_CPU);
  assert_error(tg_conv_transpose2d(tiny, wt, NULL, one, two, zero, one, 1) == NULL,
               "Given input size per channel: (1 x 1). Calculated output size per "
               "channel: (-1 x -1). Output size is too small");
  assert_error(tg_conv_transpose2d(x3, wt, NULL, one, zero, zero, one, 1) == NULL,
               "Given transposed=1, weight of size [4, 2, 3, 3], expected input[1, 3, 5, "
               "5] to have 4 channels, but got 3 channels instead");
  tg_tensor *b4 = tg_randn(TG_SHAPE(4), TG_F32, TG_CPU);
  assert_error(tg_conv_transpose2d(x4, wt, b5, one, zero, zero, one, 2) == NULL,
               "expected bias to be 1-dimensional with 4 elements", "[5]");
  /* Still works. */
  tg_tensor *ok = tg_conv2d(x4, w4, b4, one, one, one, 4);
  assert_ok(ok);
  assert_int_equal(tg_shape(ok)[1], 4);
  assert_ok(tg_conv_transpose2d(x4, wt, NULL, two, one, one, one, 2));
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_f64),
      cmocka_unit_test(test_reference_f32),
      cmocka_unit_test(test_gradcheck),
      cmocka_unit_test(test_partial_grads),
      cmocka_unit_test(test_large_vs_naive),
      cmocka_unit_test(test_threads_agree),
      cmocka_unit_test(test_adjoint),
      cmocka_unit_test(test_edge_cases),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_direct_vs_naive),
      cmocka_unit_test(test_direct_inf_stays_put),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
