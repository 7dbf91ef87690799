/* CUDA resampling and dropout against the CPU: upsample nearest/bilinear 2d (size),
 * the _ex family (nearest 1d/2d/3d, linear 1d, bilinear 2d, trilinear 3d; size and
 * scale_factor, align_corners, recompute_scale_factor) and the fused
 * tg_upsample_nearest2d_cat, one table row per case: random inputs on the CPU and on
 * cuda:0, the same dy, outputs and input gradients within a bound on the error
 * relative to the CPU result's norm (float32 1e-5, float64 1e-12), the device's
 * gradients the same bits on a second run; float64 gradchecks through the device.
 * Dropout: the device's mask is the CPU's for the same seed (the same bits), p = 0 and
 * p = 1, eval mode, reproducibility, the keep rate, backward through the forward's
 * mask, NaN. Bad arguments fail with the CPU's messages. Every test skips without a
 * CUDA device; the host SIMT build runs them on the CPU. New device buffers are NaN
 * (TG_CUDA_FILL_NAN), so an element a kernel does not write fails its comparison. */
#include "common.h"
#include "runtime/cuda.h" /* tg__cuda_waits */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA0 tg_cuda(0)

static void require_gpu(void) {
  if (!tg_cuda_is_available())
    skip();
}

/* ------------------------------------------------------------ the table -- */

/* kind: 'n' tg_upsample_nearest2d and 'b' tg_upsample_bilinear2d to o.size; 'N'
 * tg_upsample_nearest{1,2,3}d_ex and 'L' tg_upsample_{linear1d,bilinear2d,
 * trilinear3d}_ex with o, by the input's rank; 'c' tg_upsample_nearest2d_cat(x, skip).
 */
typedef struct {
  char kind;
  int nd;
  int64_t x[5], skip[4];
  tg_upsample_options o;
} resample_ctx;

typedef struct {
  const char *op;
  resample_ctx c;
  tg_dtype dtype;
} resample_case;

static tg_tensor *resample_fn(tg_tensor *const *in, int n, void *vctx) {
  const resample_ctx *c = vctx;
  (void)n;
  switch (c->kind) {
  case 'n':
    return tg_upsample_nearest2d(in[0], c->o.size);
  case 'b':
    return tg_upsample_bilinear2d(in[0], c->o.size);
  case 'c':
    return tg_upsample_nearest2d_cat(in[0], in[1]);
  case 'N': {
    tg_tensor *(*const f[])(const tg_tensor *, const tg_upsample_options *) = {
        tg_upsample_nearest1d_ex, tg_upsample_nearest2d_ex, tg_upsample_nearest3d_ex};
    return f[c->nd - 3](in[0], &c->o);
  }
  default: {
    tg_tensor *(*const f[])(const tg_tensor *, const tg_upsample_options *) = {
        tg_upsample_linear1d_ex, tg_upsample_bilinear2d_ex, tg_upsample_trilinear3d_ex};
    return f[c->nd - 3](in[0], &c->o);
  }
  }
}

#define X(...)                                                                           \
  .nd = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), .x = {__VA_ARGS__}
#define SIZE(...) .o = {.size = {__VA_ARGS__}}
#define SCALE(...) .o = {.scale_factor = {__VA_ARGS__}}
#define ROW(name, kd, ...)                                                               \
  {name, {.kind = kd, __VA_ARGS__}, TG_F32}, { name, {.kind = kd, __VA_ARGS__}, TG_F64 }

/* Every row runs in float32 and float64. */
static const resample_case cases[] = {
    /* pool.c's functions: odd sizes up and down, exact doubling (the CPU's 2x loops),
     * one axis unchanged, empty batch */
    ROW("nearest2d", 'n', X(2, 3, 5, 7), SIZE(11, 13)),
    ROW("nearest2d", 'n', X(1, 2, 9, 8), SIZE(4, 5)),
    ROW("nearest2d", 'n', X(2, 2, 4, 5), SIZE(8, 10)),
    ROW("nearest2d", 'n', X(1, 3, 3, 4), SIZE(3, 9)),
    ROW("nearest2d", 'n', X(0, 3, 4, 5), SIZE(7, 6)),
    ROW("bilinear2d", 'b', X(2, 3, 5, 7), SIZE(11, 9)),
    ROW("bilinear2d", 'b', X(1, 2, 9, 10), SIZE(4, 3)),
    ROW("bilinear2d", 'b', X(1, 2, 5, 6), SIZE(5, 13)),
    ROW("bilinear2d", 'b', X(2, 1, 1, 1), SIZE(3, 2)),
    ROW("bilinear2d", 'b', X(0, 2, 3, 3), SIZE(5, 5)),
    /* the _ex family: sizes, non-integer scale factors (up and down), recomputed
     * scales, align_corners both ways, outputs of one element, empty batches */
    ROW("nearest1d_ex", 'N', X(2, 3, 7), SCALE(1.7)),
    ROW("nearest1d_ex", 'N', X(2, 2, 9), SIZE(4)),
    ROW("nearest1d_ex", 'N', X(0, 2, 5), SCALE(2)),
    ROW("nearest2d_ex", 'N', X(2, 2, 5, 7), SCALE(2.3, 0.6)),
    ROW("nearest2d_ex", 'N', X(1, 3, 6, 5), SIZE(13, 7)),
    ROW("nearest2d_ex", 'N', X(1, 2, 4, 6),
        .o = {.scale_factor = {1.5, 2.5}, .recompute_scale_factor = true}),
    ROW("nearest3d_ex", 'N', X(1, 2, 3, 4, 5), SCALE(1.5, 2, 0.75)),
    ROW("nearest3d_ex", 'N', X(2, 1, 2, 3, 3), SIZE(5, 4, 7)),
    ROW("nearest3d_ex", 'N', X(0, 2, 2, 2, 2), SIZE(3, 3, 3)),
    ROW("linear1d_ex", 'L', X(2, 3, 7), SCALE(2.5)),
    ROW("linear1d_ex", 'L', X(2, 3, 7),
        .o = {.scale_factor = {2.5}, .align_corners = true}),
    ROW("linear1d_ex", 'L', X(1, 2, 9), SIZE(4)),
    ROW("linear1d_ex", 'L', X(1, 2, 6), .o = {.size = {1}, .align_corners = true}),
    ROW("bilinear2d_ex", 'L', X(2, 2, 5, 4),
        .o = {.size = {9, 7}, .align_corners = true}),
    ROW("bilinear2d_ex", 'L', X(1, 3, 5, 6), SCALE(1.7, 2.2)),
    ROW("bilinear2d_ex", 'L', X(1, 2, 8, 9),
        .o = {.scale_factor = {0.6, 0.45}, .align_corners = true}),
    ROW("bilinear2d_ex", 'L', X(1, 2, 4, 5),
        .o = {.scale_factor = {1.3, 2.7}, .recompute_scale_factor = true}),
    ROW("bilinear2d_ex", 'L', X(1, 2, 5, 5), SIZE(5, 5)),
    ROW("bilinear2d_ex", 'L', X(0, 3, 4, 4), SCALE(2, 2)),
    ROW("trilinear3d_ex", 'L', X(1, 2, 3, 4, 5), SCALE(1.5, 1.25, 0.8)),
    ROW("trilinear3d_ex", 'L', X(2, 1, 3, 3, 4),
        .o = {.size = {5, 4, 7}, .align_corners = true}),
    ROW("trilinear3d_ex", 'L', X(1, 1, 2, 5, 3),
        .o = {.scale_factor = {2.2, 0.7, 1.6}, .align_corners = true}),
    ROW("trilinear3d_ex", 'L', X(0, 2, 2, 3, 2), SIZE(3, 4, 5)),
    /* the U-Net decoder's fused op: factors 2 x 3, 1 x 2, 2 x 2, an empty batch */
    ROW("nearest2d_cat", 'c', X(2, 3, 3, 4), .skip = {2, 2, 6, 12}),
    ROW("nearest2d_cat", 'c', X(1, 2, 5, 5), .skip = {1, 3, 5, 10}),
    ROW("nearest2d_cat", 'c', X(2, 4, 4, 4), .skip = {2, 4, 8, 8}),
    ROW("nearest2d_cat", 'c', X(0, 2, 2, 3), .skip = {0, 1, 4, 6}),
    /* sizes of the example U-Net's decoder: many blocks per launch */
    ROW("nearest2d_cat", 'c', X(4, 16, 8, 8), .skip = {4, 8, 16, 16}),
    ROW("bilinear2d", 'b', X(4, 16, 8, 8), SIZE(16, 16)),
    ROW("bilinear2d_ex", 'L', X(4, 8, 15, 17), SCALE(2, 2)),
};
#undef ROW
#undef SCALE
#undef SIZE
#undef X

/* The inputs of row c as random CPU leaves: x and, for 'c', skip. */
static int make_inputs(const resample_case *c, tg_tensor *h[2]) {
  h[0] = rand_leaf(c->c.x, c->c.nd, c->dtype);
  if (c->c.kind != 'c')
    return 1;
  h[1] = rand_leaf(c->c.skip, 4, c->dtype);
  return 2;
}

/* "[2, 3, 5, 7]" of x (and skip). */
static const char *shape_of(const resample_case *c, char *buf, size_t len) {
  size_t k = (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < c->c.nd && k < len; i++)
    k +=
        (size_t)snprintf(buf + k, len - k, "%s%lld", i ? ", " : "", (long long)c->c.x[i]);
  if (c->c.kind == 'c' && k < len)
    k += (size_t)snprintf(buf + k, len - k, "], skip [%lld, %lld, %lld, %lld",
                          (long long)c->c.skip[0], (long long)c->c.skip[1],
                          (long long)c->c.skip[2], (long long)c->c.skip[3]);
  if (k < len)
    snprintf(buf + k, len - k, "]");
  return buf;
}

/* Whether the device result dev is within tol of the CPU's cpu in norm:
 * ||dev - cpu|| <= tol * ||cpu|| (any non-finite element or another shape fails);
 * else prints op, shape, what and the worst element. */
static bool close_in_norm(const resample_case *c, const char *what, const tg_tensor *dev,
                          const tg_tensor *cpu) {
  char sh[128];
  if (!dev || !cpu || tg_device_of(dev).type != TG_DEVICE_CUDA) {
    printf("  %-15s %s %s %s: missing or not on the device (%s)\n", c->op,
           shape_of(c, sh, sizeof sh), tg_dtype_name(c->dtype), what, tg_last_error());
    return false;
  }
  int64_t worst;
  double got = 0, want = 0;
  const double tol = c->dtype == TG_F32 ? 1e-5 : 1e-12;
  const double rel = sqrt(cuda_nmse(dev, cpu, &worst, &got, &want));
  if (rel <= tol)
    return true;
  printf("  %-15s %s %s %s: relative error %.3g > %.3g (NaN: a non-finite element or "
         "another shape), worst element %lld: cuda %.17g, cpu %.17g\n",
         c->op, shape_of(c, sh, sizeof sh), tg_dtype_name(c->dtype), what, rel, tol,
         (long long)worst, got, want);
  return false;
}

/* The same bits, element by element, of two float tensors on any devices (NaN
 * matching any NaN: a GPU's arithmetic makes its own NaN bits). */
static bool same_bits(const tg_tensor *a, const tg_tensor *b) {
  tg_tensor *ha = tg_to_dtype(tg_tensor_to(a, TG_CPU), TG_F64);
  tg_tensor *hb = tg_to_dtype(tg_tensor_to(b, TG_CPU), TG_F64);
  assert_ok(ha && hb);
  if (tg_numel(ha) != tg_numel(hb) || tg_dtype_of(a) != tg_dtype_of(b))
    return false;
  const double *pa = tg_data(ha), *pb = tg_data(hb);
  for (int64_t i = 0; i < tg_numel(ha); i++)
    if (!(isnan(pa[i]) && isnan(pb[i])) && memcmp(&pa[i], &pb[i], sizeof *pa))
      return false;
  return true;
}

/* A leaf copy of a CPU leaf on the device. */
static tg_tensor *device_leaf(const tg_tensor *h) {
  tg_tensor *d = cuda_leaf(h);
  assert_ok(d && tg_requires_grad(d));
  return d;
}

static bool run_case(const resample_case *c) {
  char sh[128];
  tg_scope_begin();
  tg_tensor *h[2] = {0}, *d[2] = {0}, *first[2] = {0};
  const int n = make_inputs(c, h);
  for (int i = 0; i < n; i++)
    d[i] = device_leaf(h[i]);
  tg_tensor *yh = resample_fn(h, n, (void *)&c->c);
  assert_ok(yh);
  tg_tensor *dy = tg_randn(tg_shape(yh), tg_ndim(yh), c->dtype, TG_CPU);
  tg_tensor *dyd = tg_tensor_to(dy, CUDA0);
  assert_ok(dy && dyd && tg_backward_ex(yh, dy, false) == 0);
  bool ok = true;
  for (int run = 0; ok && run < 2; run++) {
    tg_clear_error();
    tg_tensor *yd = resample_fn(d, n, (void *)&c->c);
    ok = close_in_norm(c, "output", yd, yh);
    if (ok && tg_backward_ex(yd, dyd, false) < 0) {
      printf("  %-15s %s %s: backward failed: %s\n", c->op, shape_of(c, sh, sizeof sh),
             tg_dtype_name(c->dtype), tg_last_error());
      ok = false;
    }
    for (int i = 0; ok && i < n; i++) {
      char what[32];
      snprintf(what, sizeof what, "grad of input %d", i);
      ok = close_in_norm(c, what, tg_grad(d[i]), tg_grad(h[i]));
      if (ok && run == 0)
        first[i] = tg_clone(tg_grad(d[i]));
      if (ok && run == 1 && !same_bits(tg_grad(d[i]), first[i])) {
        printf("  %-15s %s %s %s: other bits on a second run\n", c->op,
               shape_of(c, sh, sizeof sh), tg_dtype_name(c->dtype), what);
        ok = false;
      }
      tg_zero_grad(d[i]);
    }
  }
  tg_scope_end();
  if (ok)
    printf("  %-15s %-36s %-7s ok\n", c->op, shape_of(c, sh, sizeof sh),
           tg_dtype_name(c->dtype));
  return ok;
}

static void test_resample_vs_cpu(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  const int rows = (int)(sizeof cases / sizeof cases[0]);
  int fails = 0;
  for (int i = 0; i < rows; i++) {
    tg_manual_seed(3000 + (uint64_t)i);
    fails += !run_case(&cases[i]);
    if (tg_cuda_memory_allocated(0) != base) {
      printf("  %-15s leaked %lld device bytes\n", cases[i].op,
             (long long)(tg_cuda_memory_allocated(0) - base));
      fails++;
    }
  }
  printf("resample vs cpu: %d rows, %d failed\n", rows, fails);
  assert_int_equal(fails, 0);
}

/* ---- float64 gradcheck through the device: the fn moves the CPU inputs to cuda:0
 * (tg_tensor_to is differentiable), runs the op there and brings the result back, so
 * finite differences and the analytic Jacobian both go through the device kernels.
 * ---- */

typedef struct {
  tg_gradcheck_fn fn;
  void *ctx;
} on_device;

static tg_tensor *on_device_fn(tg_tensor *const *in, int n, void *vctx) {
  const on_device *od = vctx;
  tg_tensor *d[2];
  for (int i = 0; i < n; i++)
    d[i] = tg_tensor_to(in[i], CUDA0);
  return tg_tensor_to(od->fn(d, n, od->ctx), TG_CPU);
}

static void test_gradcheck_on_device(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  int fails = 0, checked = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const resample_case *c = &cases[i];
    int64_t nx = 1, ns = c->c.kind == 'c'; /* finite differences: two evaluations */
    for (int k = 0; k < c->c.nd; k++)      /* per input element */
      nx *= c->c.x[k];
    for (int k = 0; k < 4 && ns; k++)
      ns *= c->c.skip[k];
    if (c->dtype != TG_F64 || nx == 0 || nx + ns > 200)
      continue;
    tg_manual_seed(4000 + (uint64_t)i);
    tg_scope_begin();
    tg_tensor *h[2];
    const int n = make_inputs(c, h);
    on_device od = {resample_fn, (void *)&c->c};
    tg_clear_error();
    char sh[128];
    if (tg_gradcheck(on_device_fn, &od, h, n, NULL) < 0) {
      printf("  gradcheck %-15s %s FAILED: %s\n", c->op, shape_of(c, sh, sizeof sh),
             tg_last_error());
      fails++;
    }
    checked++;
    tg_clear_error();
    tg_scope_end();
  }
  printf("gradcheck on cuda:0: %d rows, %d failed\n", checked, fails);
  assert_true(checked >= 20);
  assert_int_equal(fails, 0);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* ------------------------------------------------------------- dropout -- */

/* For the same seed the device drops the elements the CPU drops and computes the same
 * bits, forward and backward (odd sizes, both dtypes, NaN inputs staying NaN); a
 * second run with the seed repeats them and another seed differs. */
static void test_dropout_same_mask_as_cpu(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  const int64_t shapes[][3] = {{3, 5, 7}, {1, 1, 1}, {2, 1000, 3}};
  const double ps[] = {0.3, 0.5, 0.9};
  for (int dt = 0; dt < 2; dt++)
    for (int k = 0; k < 3; k++) {
      const tg_dtype dtype = dt ? TG_F64 : TG_F32;
      tg_scope_begin();
      tg_tensor *xh = rand_leaf(shapes[k], 3, dtype);
      if (dtype == TG_F32) /* a NaN input stays NaN, dropped or not */
        *(float *)tg_data(xh) = NAN;
      else
        *(double *)tg_data(xh) = NAN;
      tg_tensor *xd = device_leaf(xh), *yd[2];
      tg_manual_seed(77);
      tg_tensor *yh = tg_dropout(xh, ps[k], true);
      tg_tensor *dy = tg_randn(shapes[k], 3, dtype, TG_CPU);
      assert_ok(yh && dy && tg_backward_ex(yh, dy, false) == 0);
      for (int run = 0; run < 2; run++) {
        tg_manual_seed(77);
        yd[run] = tg_dropout(xd, ps[k], true);
        assert_ok(yd[run] &&
                  tg_backward_ex(yd[run], tg_tensor_to(dy, CUDA0), false) == 0);
        if (!same_bits(yd[run], yh) || !same_bits(tg_grad(xd), tg_grad(xh)))
          fail_msg("dropout %s p=%g run %d: the device's mask or values differ from the "
                   "CPU's",
                   tg_dtype_name(dtype), ps[k], run);
        tg_zero_grad(xd);
      }
      tg_manual_seed(78);
      tg_tensor *other = tg_dropout(xd, ps[k], true);
      assert_ok(other);
      if (tg_numel(xh) > 100 && same_bits(other, yh))
        fail_msg("dropout: seeds 77 and 78 gave the same mask");
      tg_zero_grad(xh);
      assert_int_equal(tg_scope_end(), 0);
    }
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* p = 0 and eval mode: the identity (its gradient dy); p = 1: zeros (gradient zeros);
 * on the device, as on the CPU. */
static void test_dropout_edges(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  for (int dt = 0; dt < 2; dt++) {
    const tg_dtype dtype = dt ? TG_F64 : TG_F32;
    const double ps[] = {0, 1, 0.5, 1};
    const bool train[] = {true, true, false, false};
    for (int k = 0; k < 4; k++) {
      tg_scope_begin();
      tg_tensor *xh = rand_leaf(TG_SHAPE(4, 9), dtype), *xd = device_leaf(xh);
      tg_tensor *dy = tg_randn(TG_SHAPE(4, 9), dtype, TG_CPU);
      tg_tensor *y = tg_dropout(xd, ps[k], train[k]);
      assert_ok(y && tg_backward_ex(y, tg_tensor_to(dy, CUDA0), false) == 0);
      assert_int_equal(tg_device_of(y).type, TG_DEVICE_CUDA);
      assert_int_equal(tg_device_of(tg_grad(xd)).type, TG_DEVICE_CUDA);
      if (train[k] && ps[k] == 1) { /* x * 0: zeros of either sign */
        tg_tensor *zeros = tg_zeros(TG_SHAPE(4, 9), dtype, TG_CPU);
        assert_close(tg_tensor_to(y, TG_CPU), zeros, 0, 0);
        assert_close(tg_tensor_to(tg_grad(xd), TG_CPU), zeros, 0, 0);
      } else if (!same_bits(y, xh) || !same_bits(tg_grad(xd), dy)) {
        fail_msg("dropout %s p=%g train=%d: not the identity", tg_dtype_name(dtype),
                 ps[k], train[k]);
      }
      assert_int_equal(tg_scope_end(), 0);
    }
  }
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* On the device: the kept fraction within 5 standard deviations of 1 - p, every kept
 * value 1 / (1 - p), and the backward keeps exactly the forward's elements. */
static void test_dropout_keep_rate(void **state) {
  (void)state;
  require_gpu();
  const int64_t n = 100000;
  const double ps[] = {0.1, 0.5, 0.9};
  for (int dt = 0; dt < 2; dt++)
    for (int k = 0; k < 3; k++) {
      const tg_dtype dtype = dt ? TG_F64 : TG_F32;
      const double p = ps[k];
      tg_scope_begin();
      tg_tensor *x = tg_ones(TG_SHAPE(n), dtype, CUDA0);
      assert_ok(x && tg_set_requires_grad(x, true) == 0);
      tg_tensor *y = tg_dropout(x, p, true);
      tg_tensor *dy = tg_full(TG_SHAPE(n), 3, dtype, CUDA0);
      assert_ok(y && dy && tg_backward_ex(y, dy, false) == 0);
      tg_tensor *yh = tg_to_dtype(tg_tensor_to(y, TG_CPU), TG_F64);
      tg_tensor *gh = tg_to_dtype(tg_tensor_to(tg_grad(x), TG_CPU), TG_F64);
      assert_ok(yh && gh);
      const double *py = tg_data(yh), *pg = tg_data(gh), scale = 1 / (1 - p);
      const double eps = dtype == TG_F32 ? 1e-6 : 1e-15;
      int64_t kept = 0;
      for (int64_t i = 0; i < n; i++) {
        if (py[i] != 0 && fabs(py[i] - scale) > eps * scale)
          fail_msg("dropout %s p=%g: kept element %lld is %.17g, not %.17g",
                   tg_dtype_name(dtype), p, (long long)i, py[i], scale);
        if (fabs(pg[i] - 3 * py[i]) > eps * 3 * scale)
          fail_msg("dropout %s p=%g: gradient %lld is %.17g for output %.17g (dy 3)",
                   tg_dtype_name(dtype), p, (long long)i, pg[i], py[i]);
        kept += py[i] != 0;
      }
      const double frac = (double)kept / (double)n, sd = sqrt(p * (1 - p) / (double)n);
      if (fabs(frac - (1 - p)) > 5 * sd)
        fail_msg("dropout %s p=%g: kept %g, expected %g +- %g", tg_dtype_name(dtype), p,
                 frac, 1 - p, 5 * sd);
      assert_int_equal(tg_scope_end(), 0);
    }
}

/* A float64 gradcheck of dropout through the device: the fn reseeds, so every
 * evaluation draws the same mask. */
static tg_tensor *dropout_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  tg_manual_seed(5);
  return tg_tensor_to(tg_dropout(tg_tensor_to(in[0], CUDA0), 0.4, true), TG_CPU);
}

static void test_dropout_gradcheck(void **state) {
  (void)state;
  require_gpu();
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(5, 7), TG_F64);
  gradcheck_ok(dropout_fn, NULL, &x, 1);
  assert_int_equal(tg_scope_end(), 0);
}

/* Bad arguments on the device fail with the CPU's messages, before any kernel runs. */
static void test_errors_on_device(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(1, 2, 3, 4), TG_F32, CUDA0);
  tg_tensor *skip = tg_randn(TG_SHAPE(1, 2, 6, 8), TG_F32, TG_CPU);
  tg_tensor *odd = tg_randn(TG_SHAPE(1, 2, 7, 8), TG_F32, CUDA0);
  assert_ok(x && skip && odd);
  assert_error(tg_upsample_nearest2d_cat(x, skip) == NULL, "tg_upsample_nearest2d_cat",
               "Expected all tensors to be on the same device", "cuda:0", "cpu");
  assert_error(tg_upsample_nearest2d_cat(x, odd) == NULL, "integer multiple");
  assert_error(tg_upsample_nearest2d(x, (int64_t[]){0, 4}) == NULL,
               "Input and output sizes should be greater than 0");
  tg_upsample_options o = tg_upsample_options_default();
  o.scale_factor[0] = -2;
  o.scale_factor[1] = 2;
  assert_error(tg_upsample_bilinear2d_ex(x, &o) == NULL,
               "scale_factor must be positive and finite");
  assert_error(tg_upsample_trilinear3d_ex(x, &o) == NULL, "expected a 5D tensor");
  assert_error(tg_dropout(x, 1.5, true) == NULL, "dropout probability has to be between");
  assert_int_equal(tg_scope_end(), 0);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* Forward and backward of every op of this suite on cuda:0 never wait for the device
 * (counted by tg__cuda_waits), so a training step's resampling and dropout keep the
 * host ahead of the GPU; the values read back afterwards are the CPU's. */
static void test_ops_do_not_wait(void **state) {
  (void)state;
  require_gpu();
  tg_scope_begin();
  tg_tensor *h[2] = {rand_leaf(TG_SHAPE(2, 3, 4, 5), TG_F32),
                     rand_leaf(TG_SHAPE(2, 2, 8, 10), TG_F32)};
  tg_tensor *d[2] = {device_leaf(h[0]), device_leaf(h[1])};
  tg_tensor *sum[2];
  int64_t waits = 0;
  for (int k = 0; k < 2; k++) { /* k = 1: on cuda:0 */
    tg_tensor *const *x = k ? d : h;
    if (k)
      waits = tg__cuda_waits();
    tg_upsample_options o = tg_upsample_options_default();
    o.scale_factor[0] = 1.5;
    o.scale_factor[1] = 2.5;
    o.align_corners = true;
    tg_manual_seed(9);
    tg_tensor *terms[5] = {tg_upsample_nearest2d(x[0], (int64_t[]){7, 9}),
                           tg_upsample_bilinear2d(x[0], (int64_t[]){5, 11}),
                           tg_upsample_bilinear2d_ex(x[0], &o),
                           tg_upsample_nearest2d_cat(x[0], x[1]),
                           tg_dropout(x[0], 0.3, true)};
    sum[k] = tg_sum(terms[0]);
    for (int t = 1; t < 5; t++)
      sum[k] = tg_add(sum[k], tg_sum(terms[t]));
    assert_ok(sum[k] && tg_backward(sum[k]) == 0);
    const char *lb = getenv("TG_CUDA_LAUNCH_BLOCKING");
    if (k && !(lb && !strcmp(lb, "1"))) /* (which waits after every launch) */
      assert_int_equal(tg__cuda_waits() - waits, 0);
  }
  for (int i = 0; i < 2; i++)
    assert_close(tg_tensor_to(tg_grad(d[i]), TG_CPU), tg_grad(h[i]), 1e-5, 1e-5);
  assert_close(tg_tensor_to(sum[1], TG_CPU), sum[0], 1e-4, 1e-5);
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  /* elements a kernel leaves unwritten are NaN and fail (unless the caller says) */
  setenv("TG_CUDA_FILL_NAN", "1", 0);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resample_vs_cpu),
      cmocka_unit_test(test_gradcheck_on_device),
      cmocka_unit_test(test_dropout_same_mask_as_cpu),
      cmocka_unit_test(test_dropout_edges),
      cmocka_unit_test(test_dropout_keep_rate),
      cmocka_unit_test(test_dropout_gradcheck),
      cmocka_unit_test(test_errors_on_device),
      cmocka_unit_test(test_ops_do_not_wait),
  };
  cuda_suite_filter();
  return cuda_suite_exit(cmocka_run_group_tests(tests, test_setup, NULL));
}
