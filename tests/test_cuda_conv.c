/* CUDA convolutions (ops/conv/conv.cu): tg_conv2d and tg_conv_transpose2d on cuda:0
 * against the CPU, one table row per geometry (each in float32 and float64): output
 * and the gradients of input, weight and bias for the same random dy, the relative
 * error of the norm under 1e-5 (float32) and 1e-12 (float64); float64 gradchecks
 * through the device; the weight and bias gradients' bits reproducible; mixed-device
 * errors; device memory back to its starting figure. Every test skips without a CUDA
 * device; the host SIMT build (-Dcuda=host) runs them on the CPU. The suite runs with
 * TG_CUDA_FILL_NAN=1 (unwritten elements fail) and once more with
 * TG_CONV_CUDA_CHUNK_BYTES=4096, so batches run in several chunks of images. */
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

/* Unset strides, dilations and groups (0) are 1 (see with_defaults). */
typedef struct {
  const char *what;            /* what the row exercises */
  bool transposed, bias, same; /* same: tg_conv2d_ex with padding="same" */
  bool unbatched;              /* x [C, H, W] of x[1..3] (x[0] is 1) */
  int64_t x[4], w[4];
  int64_t stride[2], padding[2], dilation[2], output_padding[2], groups;
} conv_row;

static const conv_row rows[] = {
    /* conv2d */
    {.what = "3x3 pad 1",
     .bias = true,
     .x = {2, 3, 7, 9},
     .w = {4, 3, 3, 3},
     .padding = {1, 1}},
    {.what = "odd sizes, stride 2",
     .bias = true,
     .x = {3, 5, 11, 13},
     .w = {6, 5, 3, 3},
     .stride = {2, 2},
     .padding = {1, 1}},
    {.what = "uneven stride, padding, kernel",
     .bias = true,
     .x = {2, 4, 9, 8},
     .w = {5, 4, 3, 2},
     .stride = {2, 1},
     .padding = {0, 1}},
    {.what = "dilation 2",
     .bias = true,
     .x = {2, 3, 10, 9},
     .w = {4, 3, 3, 3},
     .padding = {2, 2},
     .dilation = {2, 2}},
    {.what = "dilation (3, 1), stride 2",
     .x = {2, 2, 11, 7},
     .w = {3, 2, 3, 3},
     .stride = {2, 2},
     .padding = {1, 0},
     .dilation = {3, 1}},
    {.what = "groups 2",
     .bias = true,
     .x = {2, 4, 8, 7},
     .w = {6, 2, 3, 3},
     .padding = {1, 1},
     .groups = 2},
    {.what = "groups 3, batch 5",
     .bias = true,
     .x = {5, 6, 5, 6},
     .w = {9, 2, 2, 3},
     .stride = {1, 2},
     .padding = {1, 1},
     .groups = 3},
    {.what = "depthwise, stride 2",
     .bias = true,
     .x = {2, 6, 7, 7},
     .w = {6, 1, 3, 3},
     .stride = {2, 2},
     .padding = {1, 1},
     .groups = 6},
    {.what = "depthwise x2 channels",
     .x = {3, 4, 6, 5},
     .w = {8, 1, 3, 3},
     .padding = {1, 1},
     .groups = 4},
    {.what = "no bias", .x = {1, 3, 6, 6}, .w = {2, 3, 3, 3}},
    {.what = "1x1", .bias = true, .x = {3, 8, 5, 6}, .w = {4, 8, 1, 1}},
    {.what = "1x1 groups 2", .x = {2, 4, 5, 5}, .w = {6, 2, 1, 1}, .groups = 2},
    {.what = "1x1 stride 2",
     .bias = true,
     .x = {2, 3, 7, 7},
     .w = {4, 3, 1, 1},
     .stride = {2, 2}},
    {.what = "1x1 padding 1", .x = {2, 3, 4, 4}, .w = {2, 3, 1, 1}, .padding = {1, 1}},
    {.what = "kernel = image", .bias = true, .x = {2, 3, 4, 5}, .w = {2, 3, 4, 5}},
    {.what = "batch 7 (chunks)",
     .bias = true,
     .x = {7, 2, 5, 5},
     .w = {3, 2, 3, 3},
     .padding = {1, 1}},
    {.what = "8 channels (CPU Winograd)",
     .bias = true,
     .x = {2, 8, 9, 10},
     .w = {8, 8, 3, 3},
     .padding = {1, 1}},
    {.what = "empty batch", .bias = true, .x = {0, 3, 5, 5}, .w = {4, 3, 3, 3}},
    {.what = "no input channels", .bias = true, .x = {2, 0, 5, 5}, .w = {4, 0, 3, 3}},
    {.what = "padding=same, even kernel",
     .same = true,
     .bias = true,
     .x = {2, 3, 6, 7},
     .w = {4, 3, 4, 3}},
    {.what = "padding=same, dilation 2",
     .same = true,
     .x = {1, 2, 5, 6},
     .w = {3, 2, 2, 3},
     .dilation = {2, 2}},
    /* conv_transpose2d (weight [Cin, Cout/groups, kH, kW]) */
    {.what = "T stride 2, output_padding 1",
     .transposed = true,
     .bias = true,
     .x = {2, 4, 5, 6},
     .w = {4, 3, 3, 3},
     .stride = {2, 2},
     .padding = {1, 1},
     .output_padding = {1, 1}},
    {.what = "T odd, uneven everything",
     .transposed = true,
     .bias = true,
     .x = {3, 5, 7, 5},
     .w = {5, 2, 3, 2},
     .stride = {2, 3},
     .padding = {1, 0},
     .output_padding = {1, 2}},
    {.what = "T dilation 2",
     .transposed = true,
     .bias = true,
     .x = {2, 3, 4, 5},
     .w = {3, 4, 3, 3},
     .padding = {1, 1},
     .dilation = {2, 2}},
    {.what = "T output_padding < dilation",
     .transposed = true,
     .x = {1, 2, 4, 4},
     .w = {2, 3, 2, 2},
     .stride = {2, 2},
     .dilation = {3, 3},
     .output_padding = {2, 2}},
    {.what = "T groups 2",
     .transposed = true,
     .bias = true,
     .x = {2, 4, 5, 5},
     .w = {4, 3, 3, 3},
     .stride = {2, 2},
     .output_padding = {1, 0},
     .groups = 2},
    {.what = "T depthwise",
     .transposed = true,
     .x = {3, 4, 5, 4},
     .w = {4, 1, 3, 3},
     .padding = {1, 1},
     .groups = 4},
    {.what = "T 1x1",
     .transposed = true,
     .bias = true,
     .x = {2, 6, 4, 5},
     .w = {6, 3, 1, 1}},
    {.what = "T 1x1 stride 2",
     .transposed = true,
     .x = {2, 3, 3, 4},
     .w = {3, 2, 1, 1},
     .stride = {2, 2},
     .output_padding = {1, 1}},
    {.what = "T batch 6 (chunks)",
     .transposed = true,
     .bias = true,
     .x = {6, 3, 4, 4},
     .w = {3, 2, 4, 4},
     .stride = {2, 2},
     .padding = {1, 1}},
    {.what = "unbatched",
     .unbatched = true,
     .bias = true,
     .x = {1, 3, 6, 5},
     .w = {4, 3, 3, 2},
     .stride = {2, 1},
     .padding = {1, 1}},
    {.what = "T unbatched",
     .transposed = true,
     .unbatched = true,
     .x = {1, 4, 3, 4},
     .w = {4, 2, 3, 3},
     .stride = {2, 2},
     .output_padding = {1, 0}},
    {.what = "T empty batch",
     .transposed = true,
     .bias = true,
     .x = {0, 4, 5, 5},
     .w = {4, 3, 3, 3},
     .stride = {2, 2}},
};

static conv_row with_defaults(const conv_row *r) {
  conv_row a = *r;
  for (int i = 0; i < 2; i++) {
    a.stride[i] = a.stride[i] ? a.stride[i] : 1;
    a.dilation[i] = a.dilation[i] ? a.dilation[i] : 1;
  }
  a.groups = a.groups ? a.groups : 1;
  return a;
}

/* "conv2d x 2x3x7x9 w 4x3x3x3 stride 1,1 padding 1,1 dilation 1,1 groups 1 (3x3 pad
 * 1)": what a failure names. */
static const char *row_name(const conv_row *r, char *buf, size_t len) {
  int n = snprintf(buf, len,
                   "%s x %lldx%lldx%lldx%lld w %lldx%lldx%lldx%lld stride %lld,%lld "
                   "padding %lld,%lld dilation %lld,%lld groups %lld",
                   r->transposed ? "conv_transpose2d"
                   : r->same     ? "conv2d_ex"
                                 : "conv2d",
                   (long long)r->x[0], (long long)r->x[1], (long long)r->x[2],
                   (long long)r->x[3], (long long)r->w[0], (long long)r->w[1],
                   (long long)r->w[2], (long long)r->w[3], (long long)r->stride[0],
                   (long long)r->stride[1], (long long)r->padding[0],
                   (long long)r->padding[1], (long long)r->dilation[0],
                   (long long)r->dilation[1], (long long)r->groups);
  if (r->transposed && n > 0 && (size_t)n < len)
    n += snprintf(buf + n, len - (size_t)n, " output_padding %lld,%lld",
                  (long long)r->output_padding[0], (long long)r->output_padding[1]);
  if (n > 0 && (size_t)n < len)
    snprintf(buf + n, len - (size_t)n, "%s%s%s (%s)", r->bias ? "" : " no bias",
             r->same ? " padding=same" : "", r->unbatched ? " unbatched" : "", r->what);
  return buf;
}

/* inputs x, w and, with a bias, b (tg_gradcheck_fn's signature; ctx the row) */
static tg_tensor *conv_fn(tg_tensor *const *in, int n, void *ctx) {
  const conv_row *r = ctx;
  const tg_tensor *b = n > 2 ? in[2] : NULL;
  if (r->transposed)
    return tg_conv_transpose2d(in[0], in[1], b, r->stride, r->padding, r->output_padding,
                               r->dilation, r->groups);
  if (r->same) {
    tg_conv2d_options o = tg_conv2d_options_default();
    o.padding_mode = TG_PADDING_SAME;
    memcpy(o.dilation, r->dilation, sizeof o.dilation);
    o.groups = r->groups;
    return tg_conv2d_ex(in[0], in[1], b, &o);
  }
  return tg_conv2d(in[0], in[1], b, r->stride, r->padding, r->dilation, r->groups);
}

/* Random leaves of the row's shapes on the CPU (x, w, and b of the output's channels). */
static int make_inputs(const conv_row *r, tg_dtype dt, tg_tensor *h[3]) {
  const int64_t cout = r->transposed ? r->w[1] * r->groups : r->w[0];
  h[0] = tg_randn(r->x + r->unbatched, 4 - r->unbatched, dt, TG_CPU);
  h[1] = tg_randn(r->w, 4, dt, TG_CPU);
  h[2] = r->bias ? tg_randn(TG_SHAPE(cout), dt, TG_CPU) : NULL;
  const int n = r->bias ? 3 : 2;
  for (int i = 0; i < n; i++)
    assert_ok(h[i] && tg_set_requires_grad(h[i], true) == 0);
  return n;
}

/* Compares one output or gradient; prints and returns false on a mismatch. */
static bool compare(const char *name, tg_dtype dt, const char *what, const tg_tensor *dev,
                    const tg_tensor *cpu) {
  const double tol = dt == TG_F32 ? 1e-5 : 1e-12;
  if (!dev || !cpu) {
    printf("  %s %s %s: missing (%s)\n", name, tg_dtype_name(dt), what, tg_last_error());
    return false;
  }
  if (tg_device_of(dev).type != TG_DEVICE_CUDA) {
    printf("  %s %s %s: not on the device\n", name, tg_dtype_name(dt), what);
    return false;
  }
  int64_t worst;
  double got = 0, want = 0;
  const double e = sqrt(cuda_nmse(dev, cpu, &worst, &got, &want)); /* ||a-b|| / ||b|| */
  if (e < tol)
    return true;
  printf("  %s %s %s: relative error %.3g >= %.0e, worst element %lld: cuda %.17g, cpu "
         "%.17g\n",
         name, tg_dtype_name(dt), what, e, tol, (long long)worst, got, want);
  return false;
}

/* One row in one dtype: forward and backward (same dy) on both devices. */
static bool run_row(const conv_row *r, tg_dtype dt) {
  char name[320];
  row_name(r, name, sizeof name);
  tg_scope_begin();
  tg_tensor *h[3], *d[3] = {0};
  const int n = make_inputs(r, dt, h);
  for (int i = 0; i < n; i++)
    d[i] = cuda_leaf(h[i]);
  tg_tensor *yh = conv_fn(h, n, (void *)r);
  assert_ok(yh);
  tg_clear_error();
  tg_tensor *yd = conv_fn(d, n, (void *)r);
  bool ok = compare(name, dt, "output", yd, yh);
  if (ok) {
    tg_tensor *dy = tg_randn(tg_shape(yh), tg_ndim(yh), dt, TG_CPU);
    assert_ok(tg_backward_ex(yh, dy, false) == 0);
    if (tg_backward_ex(yd, tg_tensor_to(dy, CUDA0), false) < 0) {
      printf("  %s %s: backward failed: %s\n", name, tg_dtype_name(dt), tg_last_error());
      ok = false;
    }
  }
  static const char *what[3] = {"grad of input", "grad of weight", "grad of bias"};
  for (int i = 0; ok && i < n; i++)
    ok = compare(name, dt, what[i], tg_grad(d[i]), tg_grad(h[i]));
  assert_int_equal(tg_scope_end(), 0);
  if (ok)
    printf("  ok %s %s\n", tg_dtype_name(dt), name);
  return ok;
}

static void test_conv_vs_cpu(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  const int n_rows = (int)(sizeof rows / sizeof rows[0]);
  int fails = 0;
  for (int i = 0; i < n_rows; i++)
    for (int k = 0; k < 2; k++) {
      tg_manual_seed(3000 + 2 * (uint64_t)i + (uint64_t)k);
      const conv_row r = with_defaults(&rows[i]);
      fails += !run_row(&r, k ? TG_F64 : TG_F32);
      if (tg_cuda_memory_allocated(0) != base) {
        printf("  row %d (%s) leaked %lld device bytes\n", i, rows[i].what,
               (long long)(tg_cuda_memory_allocated(0) - base));
        fails++;
      }
    }
  printf("conv vs cpu: %d rows x 2 dtypes, %d failed\n", n_rows, fails);
  assert_int_equal(fails, 0);
}

/* ---- float64 gradcheck through the device: the inputs stay on the CPU and the fn
 * moves them to cuda:0 (tg_tensor_to is differentiable), so finite differences and
 * the analytic Jacobian both go through the device kernels. ---- */

static tg_tensor *on_device_fn(tg_tensor *const *in, int n, void *ctx) {
  tg_tensor *d[3];
  for (int i = 0; i < n; i++)
    d[i] = tg_tensor_to(in[i], CUDA0);
  return tg_tensor_to(conv_fn(d, n, ctx), TG_CPU);
}

static void test_gradcheck_on_device(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  const int n_rows = (int)(sizeof rows / sizeof rows[0]);
  int fails = 0, checked = 0;
  for (int i = 0; i < n_rows; i++) {
    const conv_row row = with_defaults(&rows[i]), *r = &row;
    /* finite differences cost two evaluations per input element */
    const int64_t numel =
        r->x[0] * r->x[1] * r->x[2] * r->x[3] + r->w[0] * r->w[1] * r->w[2] * r->w[3];
    if (numel > 400)
      continue;
    char name[320];
    tg_manual_seed(4000 + (uint64_t)i);
    tg_scope_begin();
    tg_tensor *h[3];
    const int n = make_inputs(r, TG_F64, h);
    tg_clear_error();
    if (tg_gradcheck(on_device_fn, (void *)r, h, n, NULL) < 0) {
      printf("  gradcheck %s FAILED: %s\n", row_name(r, name, sizeof name),
             tg_last_error());
      fails++;
    }
    checked++;
    tg_clear_error();
    assert_int_equal(tg_scope_end(), 0);
  }
  printf("gradcheck on cuda:0: %d rows, %d failed\n", checked, fails);
  assert_true(checked >= 15); /* the size bound keeps most rows */
  assert_int_equal(fails, 0);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

static const conv_row *find_row(const char *what) {
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
    if (!strcmp(rows[i].what, what))
      return &rows[i];
  fail_msg("no row \"%s\"", what);
  return NULL;
}

/* Every gradient is reduced in a fixed order (no atomics): two backward passes over a
 * grouped, batched conv2d and conv_transpose2d give the same bits. */
static void test_conv_reproducible(void **state) {
  (void)state;
  require_gpu();
  static const char *picks[2] = {"groups 3, batch 5", "T batch 6 (chunks)"};
  for (int p = 0; p < 2; p++) {
    const conv_row row = with_defaults(find_row(picks[p])), *r = &row;
    tg_scope_begin();
    tg_tensor *h[3], *d[3];
    const int n = make_inputs(r, TG_F32, h);
    for (int i = 0; i < n; i++)
      d[i] = cuda_leaf(h[i]);
    tg_tensor *first[3] = {0};
    for (int run = 0; run < 2; run++) {
      tg_tensor *y = conv_fn(d, n, (void *)r);
      assert_ok(y);
      tg_manual_seed(7);
      tg_tensor *dy = tg_randn(tg_shape(y), 4, TG_F32, CUDA0);
      assert_ok(dy && tg_backward_ex(y, dy, false) == 0);
      for (int i = 0; i < n; i++) {
        tg_tensor *g = tg_tensor_to(tg_grad(d[i]), TG_CPU);
        assert_ok(g);
        if (run == 0)
          first[i] = g;
        else
          assert_memory_equal(tg_data(first[i]), tg_data(g),
                              (size_t)tg_numel(g) * sizeof(float));
        tg_zero_grad(d[i]);
      }
    }
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* Inputs on two devices: refused with PyTorch's words, naming both devices; the
 * convolutions still work afterwards. */
static void test_conv_mixed_devices(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  tg_scope_begin();
  tg_tensor *xh = tg_randn(TG_SHAPE(1, 2, 5, 5), TG_F32, TG_CPU);
  tg_tensor *wh = tg_randn(TG_SHAPE(2, 2, 3, 3), TG_F32, TG_CPU);
  tg_tensor *bh = tg_randn(TG_SHAPE(2), TG_F32, TG_CPU);
  tg_tensor *xd = tg_tensor_to(xh, CUDA0), *wd = tg_tensor_to(wh, CUDA0);
  tg_tensor *bd = tg_tensor_to(bh, CUDA0);
  assert_error(tg_conv2d(xd, wh, NULL, NULL, NULL, NULL, 1) == NULL, "tg_conv2d",
               "Expected all tensors to be on the same device, but found at least two "
               "devices, cuda:0 and cpu!");
  assert_error(tg_conv2d(xd, wd, bh, NULL, NULL, NULL, 1) == NULL, "tg_conv2d",
               "same device", "cuda:0 and cpu");
  assert_error(tg_conv2d(xh, wd, bh, NULL, NULL, NULL, 1) == NULL, "tg_conv2d",
               "same device", "cpu and cuda:0");
  assert_error(tg_conv_transpose2d(xd, wh, NULL, NULL, NULL, NULL, NULL, 1) == NULL,
               "tg_conv_transpose2d",
               "Expected all tensors to be on the same device, but found at least two "
               "devices, cuda:0 and cpu!");
  tg_conv2d_options o = tg_conv2d_options_default();
  o.padding_mode = TG_PADDING_SAME;
  assert_error(tg_conv2d_ex(xd, wh, NULL, &o) == NULL, "same device", "cuda:0 and cpu");
  tg_tensor *y = tg_conv2d(xd, wd, bd, NULL, NULL, NULL, 1);
  assert_ok(y);
  assert_close(tg_tensor_to(y, TG_CPU), tg_conv2d(xh, wh, bh, NULL, NULL, NULL, 1), 1e-5,
               1e-5);
  assert_int_equal(tg_scope_end(), 0);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* A training step's convolutions never wait for the device: conv2d (grouped, strided,
 * in chunks) and conv_transpose2d forward and backward, every gradient, with no host
 * wait between the inputs' upload and the gradients' download. */
static void test_conv_does_not_wait(void **state) {
  (void)state;
  require_gpu();
  tg_scope_begin();
  const conv_row a = with_defaults(find_row("groups 3, batch 5"));
  const conv_row b = with_defaults(find_row("T stride 2, output_padding 1"));
  tg_tensor *ha[3], *hb[3], *da[3], *db[3];
  const int na = make_inputs(&a, TG_F32, ha), nb = make_inputs(&b, TG_F32, hb);
  for (int i = 0; i < 3; i++) {
    da[i] = i < na ? cuda_leaf(ha[i]) : NULL;
    db[i] = i < nb ? cuda_leaf(hb[i]) : NULL;
  }
  const int64_t waits = tg__cuda_waits();
  tg_tensor *loss =
      tg_add(tg_sum(conv_fn(da, na, (void *)&a)), tg_sum(conv_fn(db, nb, (void *)&b)));
  assert_ok(loss && tg_backward(loss) == 0);
  const char *lb = getenv("TG_CUDA_LAUNCH_BLOCKING");
  if (!(lb && !strcmp(lb, "1"))) /* (which waits after every launch) */
    assert_int_equal(tg__cuda_waits() - waits, 0);
  for (int i = 0; i < 3; i++) {
    assert_true(i >= na || tg_grad(da[i]));
    assert_true(i >= nb || tg_grad(db[i]));
  }
  assert_int_equal(tg_scope_end(), 0);
}

/* The nn layers on the device: a conv2d and a conv_transpose2d module of a store on
 * cuda:0 run forward and backward there (the weights' gradients on the device). */
static void test_layers_on_device(void **state) {
  (void)state;
  require_gpu();
  tg_varstore *vs = tg_varstore_new(CUDA0);
  assert_ok(vs);
  tg_path *root = tg_varstore_root(vs);
  tg_conv2d_config cc = tg_conv2d_config_default();
  cc.padding = 1;
  tg_module *conv = tg_nn_conv2d(tg_path_sub(root, "conv"), 3, 4, 3, cc);
  tg_conv_transpose2d_config tc = tg_conv_transpose2d_config_default();
  tc.stride = 2;
  tg_module *up = tg_nn_conv_transpose2d(tg_path_sub(root, "up"), 4, 2, 2, tc);
  assert_ok(conv && up);
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 3, 6, 6), TG_F32, CUDA0);
  tg_tensor *y = tg_module_forward(up, tg_module_forward(conv, x, true), true);
  assert_ok(y);
  assert_int_equal(tg_shape(y)[2], 12);
  assert_ok(tg_backward(tg_sum(y)) == 0);
  tg_tensor *w = tg_varstore_get(vs, "conv.weight");
  assert_ok(w && tg_grad(w));
  assert_int_equal(tg_device_of(tg_grad(w)).type, TG_DEVICE_CUDA);
  assert_int_equal(tg_scope_end(), 0);
  tg_varstore_free(vs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_conv_vs_cpu),
      cmocka_unit_test(test_gradcheck_on_device),
      cmocka_unit_test(test_conv_reproducible),
      cmocka_unit_test(test_conv_mixed_devices),
      cmocka_unit_test(test_conv_does_not_wait),
      cmocka_unit_test(test_layers_on_device),
  };
  cuda_suite_filter();
  return cuda_suite_exit(cmocka_run_group_tests(tests, test_setup, NULL));
}
