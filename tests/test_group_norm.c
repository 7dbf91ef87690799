/* GroupNorm: gradcheck in float64, PyTorch reference values in float64 and float32,
 * numerically hard groups, frozen/absent parameters, errors. */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ gradcheck -- */

typedef struct {
  int64_t groups;
  bool weight, bias;   /* which of inputs[1], inputs[2] exist */
  tg_tensor *frozen_w; /* a weight that does not require grad (or NULL) */
} gn_fn_ctx;

static tg_tensor *gn_fn(tg_tensor *const *in, int n, void *vctx) {
  const gn_fn_ctx *c = vctx;
  (void)n;
  const tg_tensor *w = c->weight ? in[1] : c->frozen_w;
  const tg_tensor *b = c->bias ? in[c->weight ? 2 : 1] : NULL;
  return tg_group_norm(in[0], c->groups, w, b, 1e-5);
}

static void check_shape(const int64_t *shape, int ndim, int64_t groups, bool weight,
                        bool bias) {
  tg_scope_begin();
  tg_tensor *in[3];
  int n = 0;
  in[n++] = rand_leaf(shape, ndim, TG_F64);
  if (weight)
    in[n++] = rand_leaf(TG_SHAPE(shape[1]), TG_F64);
  if (bias)
    in[n++] = rand_leaf(TG_SHAPE(shape[1]), TG_F64);
  gn_fn_ctx c = {groups, weight, bias, NULL};
  gradcheck_ok(gn_fn, &c, in, n);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_gradcheck_shapes(void **state) {
  (void)state;
  check_shape(TG_SHAPE(2, 6, 3, 4), 3, true, true);
  check_shape(TG_SHAPE(1, 4, 1, 1), 2, true, true);    /* N = 1, 1x1 spatial */
  check_shape(TG_SHAPE(3, 4, 5), 2, true, true);       /* 3-D */
  check_shape(TG_SHAPE(2, 4, 2, 3, 2), 2, true, true); /* 5-D */
  check_shape(TG_SHAPE(2, 3, 5), 1, true, true);       /* G = 1 */
  check_shape(TG_SHAPE(2, 5, 3), 5, true, true);       /* G = C */
  check_shape(TG_SHAPE(3, 6), 3, true, true);          /* no spatial dims */
  check_shape(TG_SHAPE(2, 4, 3), 2, false, false);     /* affine off */
  check_shape(TG_SHAPE(2, 4, 3), 2, true, false);      /* weight only */
  check_shape(TG_SHAPE(2, 4, 3), 2, false, true);      /* bias only */
  check_shape(TG_SHAPE(2, 4, 2), 4, true, true);       /* tiny groups of 2 */
}

/* Weight that does not require grad; and x that does not require grad. */
static void test_gradcheck_frozen(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(2, 6, 5), TG_F64);
  tg_tensor *w = tg_randn(TG_SHAPE(6), TG_F64, TG_CPU);
  tg_tensor *b = rand_leaf(TG_SHAPE(6), TG_F64);
  gn_fn_ctx c = {3, false, true, w};
  gradcheck_ok(gn_fn, &c, (tg_tensor *[]){x, b}, 2);
  /* x frozen: only the parameters get gradients */
  tg_tensor *xf = tg_randn(TG_SHAPE(2, 6, 5), TG_F64, TG_CPU);
  tg_tensor *wl = rand_leaf(TG_SHAPE(6), TG_F64);
  tg_tensor *y = tg_group_norm(xf, 3, wl, b, 1e-5);
  assert_ok(y && tg_backward(tg_sum(tg_mul(y, y))) == 0);
  assert_null(tg_grad(xf));
  assert_non_null(tg_grad(wl));
  assert_non_null(tg_grad(b));
  assert_int_equal(tg_scope_end(), 0);
}

/* --------------------------------------------------- PyTorch references -- */

static void ref_case(ref_file *f, const char *name, tg_dtype dt, double atol,
                     double rtol) {
  tg_scope_begin();
  tg_tensor *x = ref_get(f, name, "x", dt);
  int64_t groups = (int64_t)tg_item(ref_get(f, name, "groups", TG_F64));
  double eps = tg_item(ref_get(f, name, "eps", TG_F64));
  tg_tensor *w = ref_has(f, name, "w") ? ref_get(f, name, "w", dt) : NULL;
  tg_tensor *b = ref_has(f, name, "b") ? ref_get(f, name, "b", dt) : NULL;
  tg_set_requires_grad(x, true);
  if (w)
    tg_set_requires_grad(w, true);
  if (b)
    tg_set_requires_grad(b, true);
  tg_tensor *y = tg_group_norm(x, groups, w, b, eps);
  assert_ok(y);
  assert_close(y, ref_get(f, name, "y", dt), atol, rtol);
  assert_ok(tg_backward_ex(y, ref_get(f, name, "dy", dt), false) == 0);
  assert_close(tg_grad(x), ref_get(f, name, "dx", dt), atol, rtol);
  if (w)
    assert_close(tg_grad(w), ref_get(f, name, "dw", dt), atol, rtol);
  if (b)
    assert_close(tg_grad(b), ref_get(f, name, "db", dt), atol, rtol);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_reference(void **state) {
  (void)state;
  ref_file *f = ref_open("group_norm");
  for (int i = 0; i < ref_num_cases(f); i++) {
    const char *name = ref_case_name(f, i);
    ref_case(f, name, TG_F64, 1e-10, 1e-10);
    /* float32: the gradients sum many products, so allow a little absolute error */
    ref_case(f, name, TG_F32, 2e-5, 2e-5);
  }
  ref_close(f);
}

/* ------------------------------------------------------ numerical cases -- */

/* Our float32 result against our float64 result on the same (float32) input: randn *
 * scale + offset, plus skew on the first 64 elements of every group (where the kernel
 * samples its first pivot). */
static void f32_matches_f64(const int64_t *shape, int ndim, int64_t groups, double scale,
                            double offset, double skew) {
  tg_scope_begin();
  tg_tensor *x32 = tg_randn(shape, ndim, TG_F32, TG_CPU);
  float *xd = tg_data(x32);
  const int64_t len = tg_numel(x32) / shape[0] / groups;
  for (int64_t i = 0; i < tg_numel(x32); i++)
    xd[i] = (float)(xd[i] * scale + offset + (i % len < 64 ? skew : 0));
  tg_tensor *g32 = tg_randn(shape, ndim, TG_F32, TG_CPU);
  tg_tensor *w32 = tg_uniform(TG_SHAPE(shape[1]), 0.5, 1.5, TG_F32, TG_CPU);
  tg_tensor *b32 = tg_randn(TG_SHAPE(shape[1]), TG_F32, TG_CPU);
  tg_tensor *x64 = tg_to_dtype(x32, TG_F64), *g64 = tg_to_dtype(g32, TG_F64);
  tg_tensor *w64 = tg_to_dtype(w32, TG_F64), *b64 = tg_to_dtype(b32, TG_F64);
  tg_tensor *xs[2] = {x32, x64}, *ws[2] = {w32, w64}, *bs[2] = {b32, b64};
  tg_tensor *gs[2] = {g32, g64}, *ys[2];
  for (int k = 0; k < 2; k++) {
    tg_set_requires_grad(xs[k], true);
    tg_set_requires_grad(ws[k], true);
    tg_set_requires_grad(bs[k], true);
    ys[k] = tg_group_norm(xs[k], groups, ws[k], bs[k], 1e-5);
    assert_ok(ys[k] && tg_backward_ex(ys[k], gs[k], false) == 0);
  }
  assert_close(ys[0], ys[1], 1e-5, 1e-5);
  assert_close(tg_grad(x32), tg_grad(x64), 1e-4 / scale, 1e-4);
  assert_close(tg_grad(w32), tg_grad(w64), 1e-3, 1e-5);
  assert_close(tg_grad(b32), tg_grad(b64), 1e-3, 1e-5);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_float32_vs_float64(void **state) {
  (void)state;
  /* groups longer than a summation block; parallel over N*G */
  f32_matches_f64(TG_SHAPE(4, 64, 24, 24), 32, 1, 0, 0);
  f32_matches_f64(TG_SHAPE(2, 8, 100, 100), 2, 1, 0, 0);
  /* mean 1e4, std 1e-3 and mean -3e3, std 0.1 */
  f32_matches_f64(TG_SHAPE(2, 16, 32, 32), 4, 1e-3, 1e4, 0);
  f32_matches_f64(TG_SHAPE(3, 8, 50), 4, 0.1, -3e3, 0);
  /* a first sample 1000 std away from the rest of a group of 262144: a single pass
   * about it would lose 12 bits to cancellation */
  f32_matches_f64(TG_SHAPE(2, 4, 256, 256), 1, 1, 0, 1000);
}

/* Constant groups normalise to beta; single-element groups too. No NaN. */
static void test_degenerate_groups(void **state) {
  (void)state;
  for (int k = 0; k < 2; k++) {
    tg_dtype dt = k ? TG_F32 : TG_F64;
    tg_scope_begin();
    tg_tensor *x = tg_full(TG_SHAPE(2, 4, 5, 5), 1e4, dt, TG_CPU);
    tg_tensor *b = tg_randn(TG_SHAPE(4), dt, TG_CPU);
    tg_tensor *y = tg_group_norm(x, 2, NULL, b, 1e-5);
    tg_tensor *expect = tg_add(tg_zeros_like(x), tg_reshape(b, TG_SHAPE(1, 4, 1, 1)));
    assert_close(y, expect, 0, 0);
    tg_tensor *x1 = rand_leaf(TG_SHAPE(3, 4), dt);
    tg_tensor *y1 = tg_group_norm(x1, 4, NULL, b, 1e-5); /* groups of one element */
    assert_close(y1, tg_add(tg_zeros_like(x1), b), 0, 0);
    assert_ok(tg_backward(tg_sum(tg_mul(y1, y1))) == 0);
    assert_close(tg_grad(x1), tg_zeros_like(x1), 0, 0);
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* Empty batch: empty output, zero parameter gradients. Empty spatial dims are an
 * error, as in PyTorch. */
static void test_empty(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *w = rand_leaf(TG_SHAPE(6), TG_F32);
  tg_tensor *x = rand_leaf(TG_SHAPE(0, 6, 3), TG_F32);
  tg_tensor *y = tg_group_norm(x, 3, w, NULL, 1e-5);
  assert_ok(y);
  assert_int_equal(tg_numel(y), 0);
  tg_tensor *x2 = rand_leaf(TG_SHAPE(2, 6, 0), TG_F32);
  assert_error(tg_group_norm(x2, 3, w, NULL, 1e-5) == NULL, "Expected HxW");
  assert_ok(tg_backward(tg_sum(y)) == 0);
  assert_close(tg_grad(w), tg_zeros_like(w), 0, 0);
  assert_int_equal(tg_scope_end(), 0);
}

/* Sets TG_NORM_STREAM_BYTES for the calls that follow; restore_stream() puts back
 * what the suite was started with (meson runs it once more with "0": every GroupNorm
 * of every test streamed). */
static char stream_env_saved[32];
static bool stream_env_was_set;

static void set_stream(const char *value) {
  const char *old = getenv("TG_NORM_STREAM_BYTES");
  stream_env_was_set = old != NULL;
  snprintf(stream_env_saved, sizeof stream_env_saved, "%s", old ? old : "");
  setenv("TG_NORM_STREAM_BYTES", value, 1);
}

static void restore_stream(void) {
  if (stream_env_was_set)
    setenv("TG_NORM_STREAM_BYTES", stream_env_saved, 1);
  else
    unsetenv("TG_NORM_STREAM_BYTES");
}

/* Inputs of 16 MiB and more take the kernels' prefetching path, and with the
 * streaming threshold set between the two sizes, non-temporal stores too: each sample
 * of a batch must give bit for bit what it gives alone (a small input, neither). */
static void test_large_input_path(void **state) {
  (void)state;
  tg_scope_begin();
  set_stream("8000000");
  const int64_t shape[4] = {3, 4, 600, 600}; /* 17.3 MB of float32, 5.8 MB a sample */
  tg_tensor *x = rand_leaf(shape, 4, TG_F32);
  tg_tensor *dy = tg_randn(shape, 4, TG_F32, TG_CPU);
  tg_tensor *w = tg_uniform(TG_SHAPE(4), 0.5, 1.5, TG_F32, TG_CPU);
  tg_tensor *y = tg_group_norm(x, 2, w, NULL, 1e-5);
  assert_ok(y && tg_backward_ex(y, dy, false) == 0);
  for (int64_t n = 0; n < 3; n += 2) {
    tg_tensor *xn = tg_detach(tg_narrow(x, 0, n, 1));
    tg_set_requires_grad(xn, true);
    tg_tensor *yn = tg_group_norm(xn, 2, w, NULL, 1e-5);
    assert_ok(yn && tg_backward_ex(yn, tg_narrow(dy, 0, n, 1), false) == 0);
    assert_close(yn, tg_narrow(y, 0, n, 1), 0, 0);
    assert_close(tg_grad(xn), tg_narrow(tg_grad(x), 0, n, 1), 0, 0);
  }
  restore_stream();
  assert_int_equal(tg_scope_end(), 0);
}

/* y, dx, dweight, dbias of one GroupNorm with the outputs streamed or not. */
static void gn_run(tg_tensor *x, int64_t groups, tg_tensor *w, tg_tensor *b,
                   const tg_tensor *dy, bool stream, tg_tensor **out) {
  set_stream(stream ? "0" : "9223372036854775807");
  tg_zero_grad(x);
  tg_zero_grad(w);
  tg_zero_grad(b);
  out[0] = tg_group_norm(x, groups, w, b, 1e-5);
  assert_ok(out[0] && tg_backward_ex(out[0], dy, false) == 0);
  out[1] = tg_clone(tg_grad(x));
  out[2] = tg_clone(tg_grad(w));
  out[3] = tg_clone(tg_grad(b));
  restore_stream();
}

/* The non-temporal-store path (forced on small inputs) computes exactly what the
 * ordinary one does, in float32 and float64, with channels that start on any
 * alignment (odd H*W) and on 32-byte boundaries, one thread and two. */
static void test_streaming_path(void **state) {
  (void)state;
  const int64_t shapes[3][4] = {{2, 6, 7, 13}, {3, 8, 16, 16}, {1, 4, 1, 3}};
  const int64_t groups[3] = {3, 2, 4};
  const tg_dtype dts[2] = {TG_F32, TG_F64};
  int nt = tg_get_num_threads();
  for (int t = 1; t <= 2; t++)
    for (int d = 0; d < 2; d++)
      for (int i = 0; i < 3; i++) {
        tg_set_num_threads(t);
        tg_scope_begin();
        tg_tensor *x = rand_leaf(shapes[i], 4, dts[d]);
        tg_tensor *dy = tg_randn(shapes[i], 4, dts[d], TG_CPU);
        tg_tensor *w = tg_uniform(TG_SHAPE(shapes[i][1]), 0.5, 1.5, dts[d], TG_CPU);
        tg_tensor *b = tg_randn(TG_SHAPE(shapes[i][1]), dts[d], TG_CPU);
        tg_set_requires_grad(w, true);
        tg_set_requires_grad(b, true);
        tg_tensor *plain[4], *streamed[4];
        gn_run(x, groups[i], w, b, dy, false, plain);
        gn_run(x, groups[i], w, b, dy, true, streamed);
        for (int k = 0; k < 4; k++)
          assert_close(streamed[k], plain[k], 0, 0);
        assert_int_equal(tg_scope_end(), 0);
      }
  tg_set_num_threads(nt);
}

/* ---------------------------------------------- random shapes vs a naive model -- */

/* GroupNorm forward and backward written the obvious way in float64 (two-pass
 * statistics), on contiguous buffers: the model the kernels are checked against on
 * shapes nobody picked by hand. */
static void naive_group_norm(const double *x, const double *w, const double *b,
                             const double *dy, int64_t N, int64_t C, int64_t HW,
                             int64_t G, double eps, double *y, double *dx, double *dw,
                             double *db) {
  const int64_t D = C / G, len = D * HW;
  for (int64_t c = 0; c < C; c++)
    dw[c] = db[c] = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t g = 0; g < G; g++) {
      const int64_t o = (n * G + g) * len;
      double mean = 0, var = 0;
      for (int64_t i = 0; i < len; i++)
        mean += x[o + i];
      mean /= (double)len;
      for (int64_t i = 0; i < len; i++)
        var += (x[o + i] - mean) * (x[o + i] - mean);
      const double rstd = 1 / sqrt(var / (double)len + eps);
      double m1 = 0, m2 = 0; /* means of gamma*dy and gamma*dy*xhat */
      for (int64_t i = 0; i < len; i++) {
        const int64_t c = g * D + i / HW;
        const double xhat = (x[o + i] - mean) * rstd, gamma = w ? w[c] : 1;
        y[o + i] = xhat * gamma + (b ? b[c] : 0);
        m1 += gamma * dy[o + i];
        m2 += gamma * dy[o + i] * xhat;
        dw[c] += dy[o + i] * xhat;
        db[c] += dy[o + i];
      }
      m1 /= (double)len;
      m2 /= (double)len;
      for (int64_t i = 0; i < len; i++) {
        const int64_t c = g * D + i / HW;
        const double xhat = (x[o + i] - mean) * rstd, gamma = w ? w[c] : 1;
        dx[o + i] = rstd * (gamma * dy[o + i] - m1 - xhat * m2);
      }
    }
}

/* A float64 copy of t's values (caller frees). */
static double *values_f64(const tg_tensor *t) {
  tg_tensor *d = tg_to_dtype(t, TG_F64);
  assert_ok(d);
  int64_t n = tg_numel(d);
  double *v = malloc((size_t)(n ? n : 1) * sizeof *v);
  memcpy(v, tg_data(d), (size_t)n * sizeof *v);
  tg_tensor_free(d);
  return v;
}

/* 60 random configurations (N, C = G*D, 0-3 trailing dims of 1-9, weight and bias
 * present or not, inputs off-centre by up to 5 standard deviations of scale 1e-2 to
 * 10), float64 and float32, streamed or not, on 1 and 2 threads: y, dx, dweight and
 * dbias against the naive model. */
static void test_random_shapes_vs_naive(void **state) {
  (void)state;
  uint64_t r = 0x9e3779b97f4a7c15u; /* splitmix-style stream of shape choices */
  int nt = tg_get_num_threads();
  for (int it = 0; it < 60; it++) {
    int64_t pick[8];
    for (int k = 0; k < 8; k++) {
      r += 0x9e3779b97f4a7c15u;
      uint64_t z = (r ^ (r >> 30)) * 0xbf58476d1ce4e5b9u;
      pick[k] = (int64_t)((z ^ (z >> 27)) % 1000);
    }
    const int64_t N = 1 + pick[0] % 4, G = 1 + pick[1] % 6, D = 1 + pick[2] % 5;
    const int nsp = (int)(pick[3] % 4);
    int64_t shape[5] = {N, G * D, 1 + pick[4] % 9, 1 + pick[5] % 9, 1 + pick[6] % 9};
    int64_t HW = 1;
    for (int k = 0; k < nsp; k++)
      HW *= shape[2 + k];
    const tg_dtype dt = it % 2 ? TG_F32 : TG_F64;
    const bool affine = pick[7] % 3 != 0, stream = it % 4 >= 2;
    const double scale = pow(10, (double)(pick[7] % 4) - 2);
    tg_set_num_threads(1 + it % 3 % 2);
    set_stream(stream ? "0" : "9223372036854775807");
    tg_scope_begin();
    tg_tensor *x =
        tg_add_scalar(tg_mul_scalar(tg_randn(shape, 2 + nsp, dt, TG_CPU), scale),
                      scale * (double)(pick[6] % 11 - 5));
    tg_tensor *dy = tg_randn(shape, 2 + nsp, dt, TG_CPU);
    tg_tensor *w = affine ? tg_uniform(TG_SHAPE(G * D), 0.5, 1.5, dt, TG_CPU) : NULL;
    tg_tensor *b = affine ? tg_randn(TG_SHAPE(G * D), dt, TG_CPU) : NULL;
    x = tg_detach(x);
    assert_ok(x && dy);
    tg_set_requires_grad(x, true);
    if (affine) {
      tg_set_requires_grad(w, true);
      tg_set_requires_grad(b, true);
    }
    tg_tensor *y = tg_group_norm(x, G, w, b, 1e-5);
    assert_ok(y && tg_backward_ex(y, dy, false) == 0);

    const int64_t n = tg_numel(x), C = G * D;
    double *X = values_f64(x), *DY = values_f64(dy), *W = affine ? values_f64(w) : NULL;
    double *B = affine ? values_f64(b) : NULL;
    double *Y = malloc((size_t)n * sizeof *Y), *DX = malloc((size_t)n * sizeof *DX);
    double *DW = malloc((size_t)C * sizeof *DW), *DB = malloc((size_t)C * sizeof *DB);
    naive_group_norm(X, W, B, DY, N, C, HW, G, 1e-5, Y, DX, DW, DB);
    const double tol = dt == TG_F64 ? 1e-9 : 2e-4;
    const int64_t cshape[1] = {C};
    tg_tensor *want[4] = {tg_tensor_from_data(Y, shape, 2 + nsp, TG_F64, TG_CPU),
                          tg_tensor_from_data(DX, shape, 2 + nsp, TG_F64, TG_CPU),
                          tg_tensor_from_data(DW, cshape, 1, TG_F64, TG_CPU),
                          tg_tensor_from_data(DB, cshape, 1, TG_F64, TG_CPU)};
    const tg_tensor *got[4] = {y, tg_grad(x), affine ? tg_grad(w) : NULL,
                               affine ? tg_grad(b) : NULL};
    for (int k = 0; k < 4; k++)
      if (got[k])
        assert_close(tg_to_dtype(got[k], TG_F64), want[k], tol, tol);
    free(X), free(DY), free(W), free(B), free(Y), free(DX), free(DW), free(DB);
    assert_int_equal(tg_scope_end(), 0);
    restore_stream();
  }
  tg_set_num_threads(nt);
}

/* The forward sums each group alongside writing the one before it (a thread's first
 * group alone): every group's output and gradients must have the bits of that group
 * normalised on its own (a [1, D, H, W] tensor with one group), on 1, 2 and 3 threads,
 * in float32 and float64, with and without the fused ReLU, for groups shorter than a
 * cursor step, with partial sum blocks and odd channel lengths, and with samples whose
 * first elements sit far from the mean (the statistics then take a second pass). */
static void test_groups_summed_alongside(void **state) {
  (void)state;
  const int64_t shapes[5][5] = {{5, 6, 37, 29, 3},
                                {4, 8, 16, 16, 2},
                                {2, 4, 70, 70, 1},
                                {7, 2, 1, 5, 2},
                                {3, 6, 28, 28, 3}};
  const tg_dtype dts[2] = {TG_F32, TG_F64};
  const int nt = tg_get_num_threads();
  for (int i = 0; i < 5; i++)
    for (int d = 0; d < 2; d++)
      for (int v = 0; v < 3; v++) { /* 0 plain, 1 relu, 2 far first elements */
        tg_scope_begin();
        const int64_t *sh = shapes[i], G = sh[4], D = sh[1] / G;
        tg_tensor *x = tg_randn(sh, 4, dts[d], TG_CPU);
        if (v == 2) /* the first 64 elements of every group 1000 off the rest */
          for (int64_t n = 0; n < sh[0]; n++)
            for (int64_t g = 0; g < G; g++) {
              tg_tensor *head = tg_narrow(tg_narrow(tg_narrow(x, 0, n, 1), 1, g * D, 1),
                                          2, 0, sh[2] < 2 ? sh[2] : 2);
              assert_ok(head && tg_fill_(head, 1000.0) == 0);
            }
        assert_int_equal(tg_set_requires_grad(x, true), 0);
        tg_tensor *dy = tg_randn(sh, 4, dts[d], TG_CPU);
        tg_tensor *w = tg_uniform(TG_SHAPE(sh[1]), 0.5, 1.5, dts[d], TG_CPU);
        tg_tensor *b = tg_randn(TG_SHAPE(sh[1]), dts[d], TG_CPU);
        tg_tensor *(*fn)(const tg_tensor *, int64_t, const tg_tensor *, const tg_tensor *,
                         double) = v == 1 ? tg_group_norm_relu : tg_group_norm;
        tg_tensor *y[3], *dx[3];
        for (int t = 1; t <= 3; t++) {
          tg_set_num_threads(t);
          tg_zero_grad(x);
          y[t - 1] = fn(x, G, w, b, 1e-5);
          assert_ok(y[t - 1] && tg_backward_ex(y[t - 1], dy, false) == 0);
          dx[t - 1] = tg_clone(tg_grad(x));
        }
        tg_set_num_threads(nt);
        assert_close(y[1], y[0], 0, 0);
        assert_close(y[2], y[0], 0, 0);
        assert_close(dx[1], dx[0], 0, 0);
        assert_close(dx[2], dx[0], 0, 0);
        for (int64_t n = 0; n < sh[0]; n++)
          for (int64_t g = 0; g < G; g++) {
            tg_tensor *xs = tg_clone(tg_narrow(tg_narrow(x, 0, n, 1), 1, g * D, D));
            tg_tensor *ws = tg_clone(tg_narrow(w, 0, g * D, D));
            tg_tensor *bs = tg_clone(tg_narrow(b, 0, g * D, D));
            tg_tensor *ys = fn(xs, 1, ws, bs, 1e-5);
            assert_ok(ys);
            assert_close(ys, tg_narrow(tg_narrow(y[0], 0, n, 1), 1, g * D, D), 0, 0);
          }
        assert_int_equal(tg_scope_end(), 0);
      }
}

/* Same values with 1 and 2 threads, and in no-grad mode (nothing recorded). */
static void test_threads_and_no_grad(void **state) {
  (void)state;
  tg_scope_begin();
  int nt = tg_get_num_threads();
  tg_tensor *x = tg_randn(TG_SHAPE(4, 32, 20, 20), TG_F32, TG_CPU);
  tg_set_num_threads(1);
  tg_tensor *y1 = tg_group_norm(x, 8, NULL, NULL, 1e-5);
  tg_set_num_threads(2);
  tg_tensor *y2 = tg_group_norm(x, 8, NULL, NULL, 1e-5);
  tg_set_num_threads(nt);
  assert_close(y1, y2, 0, 0);
  tg_tensor *xl = rand_leaf(TG_SHAPE(2, 4, 3), TG_F64);
  tg_no_grad_begin();
  tg_tensor *y3 = tg_group_norm(xl, 2, NULL, NULL, 1e-5);
  tg_no_grad_end();
  assert_ok(y3);
  assert_false(tg_requires_grad(y3));
  assert_close(y3, tg_group_norm(xl, 2, NULL, NULL, 1e-5), 0, 0);
  assert_int_equal(tg_scope_end(), 0);
}

/* ---------------------------------------------------------------- errors -- */

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 6, 4), TG_F32, TG_CPU);
  tg_tensor *w6 = tg_ones(TG_SHAPE(6), TG_F32, TG_CPU);
  tg_tensor *w5 = tg_ones(TG_SHAPE(5), TG_F32, TG_CPU);
  assert_error(tg_group_norm(x, 4, NULL, NULL, 1e-5) == NULL,
               "Expected number of channels in input to be divisible by num_groups, but "
               "got input of shape [2, 6, 4] and num_groups=4");
  assert_error(tg_group_norm(x, 3, w5, NULL, 1e-5) == NULL,
               "Expected weight to be a vector of size equal to the number of channels "
               "in input, but got weight of shape [5] and input of shape [2, 6, 4]");
  assert_error(tg_group_norm(x, 3, w6, w5, 1e-5) == NULL, "Expected bias to be a vector",
               "bias of shape [5]", "[2, 6, 4]");
  assert_error(tg_group_norm(x, 3, tg_ones(TG_SHAPE(6, 1), TG_F32, TG_CPU), NULL, 1e-5) ==
                   NULL,
               "weight of shape [6, 1]");
  assert_error(tg_group_norm(x, 0, NULL, NULL, 1e-5) == NULL,
               "Expected num groups to be greater than 0, got 0");
  assert_error(tg_group_norm(x, -2, NULL, NULL, 1e-5) == NULL, "got -2");
  assert_error(tg_group_norm(x, 3, NULL, NULL, INFINITY) == NULL, "eps", "finite",
               "got inf");
  assert_error(tg_group_norm(x, 3, NULL, NULL, NAN) == NULL, "eps", "nan");
  assert_error(
      tg_group_norm(tg_randn(TG_SHAPE(6), TG_F32, TG_CPU), 3, NULL, NULL, 1e-5) == NULL,
      "Expected at least 2 dimensions", "received 1");
  assert_error(tg_group_norm(x, 3, tg_ones(TG_SHAPE(6), TG_F64, TG_CPU), NULL, 1e-5) ==
                   NULL,
               "tg_group_norm", "float64");
  assert_error(tg_group_norm(NULL, 3, NULL, NULL, 1e-5) == NULL, "tg_group_norm",
               "input");
  /* still works */
  tg_tensor *y = tg_group_norm(x, 3, w6, NULL, 1e-5);
  assert_ok(y);
  assert_string_equal(tg_last_error(), "");
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gradcheck_shapes),
      cmocka_unit_test(test_gradcheck_frozen),
      cmocka_unit_test(test_reference),
      cmocka_unit_test(test_float32_vs_float64),
      cmocka_unit_test(test_degenerate_groups),
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_large_input_path),
      cmocka_unit_test(test_streaming_path),
      cmocka_unit_test(test_random_shapes_vs_naive),
      cmocka_unit_test(test_groups_summed_alongside),
      cmocka_unit_test(test_threads_and_no_grad),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
