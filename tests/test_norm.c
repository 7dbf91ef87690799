/* BatchNorm and LayerNorm: gradcheck in float64, PyTorch reference values in float64
 * and float32 (outputs, gradients, running stats), errors. */
#include "common.h"
#include "ops/norm/norm.h" /* norm_sum_dev2_f: the statistics sums */

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------ gradcheck -- */

typedef struct {
  bool training, weight, bias;
  tg_tensor *rm, *rv; /* running stats (eval) or NULL */
  const int64_t *ns;  /* layer norm: normalized_shape */
  int n_norm;
} norm_fn_ctx;

static tg_tensor *bn_fn(tg_tensor *const *in, int n, void *vctx) {
  const norm_fn_ctx *c = vctx;
  (void)n;
  const tg_tensor *w = c->weight ? in[1] : NULL;
  const tg_tensor *b = c->bias ? in[c->weight ? 2 : 1] : NULL;
  return tg_batch_norm(in[0], w, b, c->rm, c->rv, c->training, 0.1, 1e-5);
}

static tg_tensor *ln_fn(tg_tensor *const *in, int n, void *vctx) {
  const norm_fn_ctx *c = vctx;
  (void)n;
  const tg_tensor *w = c->weight ? in[1] : NULL;
  const tg_tensor *b = c->bias ? in[c->weight ? 2 : 1] : NULL;
  return tg_layer_norm(in[0], c->ns, c->n_norm, w, b, 1e-5);
}

/* Gradcheck of fn on x of shape, with parameters of pshape where flagged. */
static void check(tg_gradcheck_fn fn, norm_fn_ctx *c, const int64_t *shape, int ndim,
                  const int64_t *pshape, int pndim) {
  tg_scope_begin();
  tg_tensor *in[3];
  int n = 0;
  in[n++] = rand_leaf(shape, ndim, TG_F64);
  if (c->weight)
    in[n++] = rand_leaf(pshape, pndim, TG_F64);
  if (c->bias)
    in[n++] = rand_leaf(pshape, pndim, TG_F64);
  gradcheck_ok(fn, c, in, n);
  assert_int_equal(tg_scope_end(), 0);
}

static void bn_check_shape(const int64_t *shape, int ndim, bool training, bool weight,
                           bool bias) {
  tg_scope_begin();
  norm_fn_ctx c = {training, weight, bias, NULL, NULL, NULL, 0};
  if (!training) {
    c.rm = tg_randn(TG_SHAPE(shape[1]), TG_F64, TG_CPU);
    c.rv = tg_uniform(TG_SHAPE(shape[1]), 0.5, 2.0, TG_F64, TG_CPU);
  }
  check(bn_fn, &c, shape, ndim, TG_SHAPE(shape[1]));
  assert_int_equal(tg_scope_end(), 0);
}

static void test_batch_norm_gradcheck(void **state) {
  (void)state;
  bn_check_shape(TG_SHAPE(4, 3), true, true, true);
  bn_check_shape(TG_SHAPE(3, 2, 5), true, true, true);
  bn_check_shape(TG_SHAPE(2, 3, 2, 3), true, false, false);
  bn_check_shape(TG_SHAPE(1, 2, 3), true, true, false);       /* N = 1 */
  bn_check_shape(TG_SHAPE(2, 1, 2, 1, 2), true, false, true); /* 5-D, C = 1 */
  bn_check_shape(TG_SHAPE(3, 4, 2), false, true, true);       /* evaluation */
  bn_check_shape(TG_SHAPE(1, 3), false, false, false);
}

static void test_layer_norm_gradcheck(void **state) {
  (void)state;
  struct {
    int64_t shape[4];
    int ndim, n_norm;
    bool w, b;
  } cases[] = {
      {{2, 3, 4}, 3, 1, true, true}, {{2, 3, 4}, 3, 2, false, false},
      {{5}, 1, 1, true, false},      {{2, 1, 3, 2}, 4, 2, false, true},
      {{3, 1}, 2, 1, true, true},    {{2, 3, 2}, 3, 3, true, true},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const int64_t *ns = cases[i].shape + cases[i].ndim - cases[i].n_norm;
    norm_fn_ctx c = {false, cases[i].w, cases[i].b, NULL, NULL, ns, cases[i].n_norm};
    check(ln_fn, &c, cases[i].shape, cases[i].ndim, ns, cases[i].n_norm);
  }
}

/* --------------------------------------------------- PyTorch references -- */

/* Sets requires_grad on the given parameters. */
static void leaves(tg_tensor *x, tg_tensor *w, tg_tensor *b) {
  tg_set_requires_grad(x, true);
  if (w)
    tg_set_requires_grad(w, true);
  if (b)
    tg_set_requires_grad(b, true);
}

static void check_grads(ref_file *f, const char *name, tg_dtype dt, tg_tensor *y,
                        tg_tensor *x, tg_tensor *w, tg_tensor *b, double atol,
                        double rtol) {
  assert_ok(y);
  assert_close(y, ref_get(f, name, "y", dt), atol, rtol);
  assert_ok(tg_backward_ex(y, ref_get(f, name, "dy", dt), false) == 0);
  assert_close(tg_grad(x), ref_get(f, name, "dx", dt), atol, rtol);
  if (w)
    assert_close(tg_grad(w), ref_get(f, name, "dw", dt), atol, rtol);
  if (b)
    assert_close(tg_grad(b), ref_get(f, name, "db", dt), atol, rtol);
}

static void bn_ref_case(ref_file *f, const char *name, tg_dtype dt, double atol,
                        double rtol) {
  tg_scope_begin();
  tg_tensor *x = ref_get(f, name, "x", dt);
  tg_tensor *w = ref_has(f, name, "w") ? ref_get(f, name, "w", dt) : NULL;
  tg_tensor *b = ref_has(f, name, "b") ? ref_get(f, name, "b", dt) : NULL;
  tg_tensor *rm = ref_has(f, name, "rm") ? ref_get(f, name, "rm", dt) : NULL;
  tg_tensor *rv = ref_has(f, name, "rv") ? ref_get(f, name, "rv", dt) : NULL;
  bool training = tg_item(ref_get(f, name, "training", TG_F64)) != 0;
  double momentum = tg_item(ref_get(f, name, "momentum", TG_F64));
  double eps = tg_item(ref_get(f, name, "eps", TG_F64));
  leaves(x, w, b);
  tg_tensor *y = tg_batch_norm(x, w, b, rm, rv, training, momentum, eps);
  check_grads(f, name, dt, y, x, w, b, atol, rtol);
  if (rm) {
    assert_close(rm, ref_get(f, name, "rm_after", dt), atol, rtol);
    assert_close(rv, ref_get(f, name, "rv_after", dt), atol, rtol);
  }
  assert_int_equal(tg_scope_end(), 0);
}

static void ln_ref_case(ref_file *f, const char *name, tg_dtype dt, double atol,
                        double rtol) {
  tg_scope_begin();
  tg_tensor *x = ref_get(f, name, "x", dt);
  tg_tensor *w = ref_has(f, name, "w") ? ref_get(f, name, "w", dt) : NULL;
  tg_tensor *b = ref_has(f, name, "b") ? ref_get(f, name, "b", dt) : NULL;
  tg_tensor *nst = ref_get(f, name, "normalized_shape", TG_I64);
  int64_t ns[TG_MAX_DIMS];
  int n_norm = (int)tg_numel(nst);
  memcpy(ns, tg_data(nst), (size_t)n_norm * sizeof *ns);
  double eps = tg_item(ref_get(f, name, "eps", TG_F64));
  leaves(x, w, b);
  tg_tensor *y = tg_layer_norm(x, ns, n_norm, w, b, eps);
  check_grads(f, name, dt, y, x, w, b, atol, rtol);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_reference(void **state) {
  (void)state;
  ref_file *f = ref_open("norm");
  for (int i = 0; i < ref_num_cases(f); i++) {
    const char *name = ref_case_name(f, i);
    void (*run)(ref_file *, const char *, tg_dtype, double, double) =
        !strncmp(name, "bn_", 3) ? bn_ref_case : ln_ref_case;
    run(f, name, TG_F64, 1e-10, 1e-10);
    run(f, name, TG_F32, 2e-5, 2e-5);
  }
  ref_close(f);
}

/* ------------------------------------------------------ behaviour -- */

/* Running stats: several steps accumulate; evaluation leaves them alone; the batch
 * statistics do not depend on them; empty batches change nothing. */
static void test_running_stats(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *rm = tg_zeros(TG_SHAPE(3), TG_F32, TG_CPU);
  tg_tensor *rv = tg_ones(TG_SHAPE(3), TG_F32, TG_CPU);
  tg_tensor *x = tg_randn(TG_SHAPE(6, 3, 4), TG_F32, TG_CPU);
  tg_tensor *y0 = tg_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, 1e-5);
  for (int i = 0; i < 3; i++) {
    tg_tensor *y = tg_batch_norm(x, NULL, NULL, rm, rv, true, 0.1, 1e-5);
    assert_close(y, y0, 0, 0);
  }
  /* after k steps: r = (1 - 0.9^k) * stat (+ 0.9^k for the variance) */
  int dims[2] = {0, 2};
  tg_tensor *mean = tg_mean_dims(x, dims, 2, false);
  double f = 1 - pow(0.9, 3);
  assert_close(rm, tg_mul_scalar(mean, f), 1e-6, 1e-5);
  tg_tensor *before_m = tg_clone(rm), *before_v = tg_clone(rv);
  tg_tensor *ye = tg_batch_norm(x, NULL, NULL, rm, rv, false, 0.1, 1e-5);
  assert_ok(ye);
  assert_close(rm, before_m, 0, 0);
  assert_close(rv, before_v, 0, 0);
  tg_tensor *empty = tg_randn(TG_SHAPE(0, 3, 4), TG_F32, TG_CPU);
  tg_tensor *y_empty = tg_batch_norm(empty, NULL, NULL, rm, rv, true, 0.1, 1e-5);
  assert_ok(y_empty);
  assert_int_equal(tg_numel(y_empty), 0);
  assert_close(rm, before_m, 0, 0);
  assert_close(rv, before_v, 0, 0);
  assert_int_equal(tg_scope_end(), 0);
}

/* Our float32 results against our float64 results on larger inputs (several
 * summation blocks, parallel loops), including a large common offset. */
static void test_float32_vs_float64(void **state) {
  (void)state;
  for (int k = 0; k < 2; k++) {
    tg_scope_begin();
    double offset = k ? 1e4 : 0, scale = k ? 1e-3 : 1;
    tg_tensor *x32 = tg_randn(TG_SHAPE(8, 16, 40, 40), TG_F32, TG_CPU);
    float *xd = tg_data(x32);
    for (int64_t i = 0; i < tg_numel(x32); i++)
      xd[i] = (float)(xd[i] * scale + offset);
    tg_tensor *g32 = tg_randn(TG_SHAPE(8, 16, 40, 40), TG_F32, TG_CPU);
    tg_tensor *w32 = tg_uniform(TG_SHAPE(16), 0.5, 1.5, TG_F32, TG_CPU);
    tg_tensor *lw32 = tg_uniform(TG_SHAPE(40, 40), 0.5, 1.5, TG_F32, TG_CPU);
    tg_tensor *x[2], *w[2], *lw[2], *y[2], *z[2];
    for (int d = 0; d < 2; d++) {
      tg_dtype dt = d ? TG_F64 : TG_F32;
      x[d] = tg_to_dtype(x32, dt);
      w[d] = tg_to_dtype(w32, dt);
      lw[d] = tg_to_dtype(lw32, dt);
      leaves(x[d], w[d], lw[d]);
      y[d] = tg_batch_norm(x[d], w[d], NULL, NULL, NULL, true, 0.1, 1e-5);
      z[d] = tg_layer_norm(x[d], TG_SHAPE(40, 40), lw[d], NULL, 1e-5);
      tg_tensor *g = tg_to_dtype(g32, dt);
      assert_ok(tg_backward_ex(tg_add(y[d], z[d]), g, false) == 0);
    }
    assert_close(y[0], y[1], 1e-5, 1e-5);
    assert_close(z[0], z[1], 1e-5, 1e-5);
    assert_close(tg_grad(x[0]), tg_grad(x[1]), 1e-4 / scale, 1e-4);
    assert_close(tg_grad(w[0]), tg_grad(w[1]), 1e-2, 1e-5);
    assert_close(tg_grad(lw[0]), tg_grad(lw[1]), 1e-3, 1e-5);
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* ---------------------------------------------------------------- errors -- */

static void test_batch_norm_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 6, 4), TG_F32, TG_CPU);
  tg_tensor *c6 = tg_ones(TG_SHAPE(6), TG_F32, TG_CPU);
  tg_tensor *c5 = tg_ones(TG_SHAPE(5), TG_F32, TG_CPU);
  tg_tensor *z6 = tg_zeros(TG_SHAPE(6), TG_F32, TG_CPU);
  assert_error(tg_batch_norm(x, NULL, NULL, NULL, NULL, false, 0.1, 1e-5) == NULL,
               "running_mean must be defined in evaluation mode");
  assert_error(tg_batch_norm(x, NULL, NULL, c5, c6, true, 0.1, 1e-5) == NULL,
               "running_mean should contain 6 elements not 5");
  assert_error(tg_batch_norm(x, NULL, NULL, z6, c5, true, 0.1, 1e-5) == NULL,
               "running_var should contain 6 elements not 5");
  assert_error(tg_batch_norm(x, c5, NULL, NULL, NULL, true, 0.1, 1e-5) == NULL,
               "weight should contain 6 elements not 5", "[2, 6, 4]");
  assert_error(tg_batch_norm(x, NULL, c5, NULL, NULL, true, 0.1, 1e-5) == NULL,
               "bias should contain 6 elements not 5");
  assert_error(tg_batch_norm(x, NULL, NULL, z6, NULL, true, 0.1, 1e-5) == NULL,
               "running_mean and running_var must both be given");
  assert_error(tg_batch_norm(tg_randn(TG_SHAPE(1, 6), TG_F32, TG_CPU), NULL, NULL, NULL,
                             NULL, true, 0.1, 1e-5) == NULL,
               "Expected more than 1 value per channel when training, got input size "
               "[1, 6]");
  assert_error(tg_batch_norm(tg_randn(TG_SHAPE(6), TG_F32, TG_CPU), NULL, NULL, NULL,
                             NULL, true, 0.1, 1e-5) == NULL,
               "Expected 2D or more input", "[6]");
  assert_error(tg_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, INFINITY) == NULL,
               "eps");
  assert_error(tg_batch_norm(x, NULL, NULL, NULL, NULL, true, NAN, 1e-5) == NULL,
               "momentum");
  assert_error(tg_batch_norm(x, tg_ones(TG_SHAPE(6), TG_F64, TG_CPU), NULL, NULL, NULL,
                             true, 0.1, 1e-5) == NULL,
               "tg_batch_norm", "float64");
  assert_error(tg_batch_norm(NULL, NULL, NULL, NULL, NULL, true, 0.1, 1e-5) == NULL,
               "tg_batch_norm", "input");
  /* a size-1 batch is fine in evaluation */
  assert_ok(tg_batch_norm(tg_randn(TG_SHAPE(1, 6), TG_F32, TG_CPU), c6, z6, z6, c6, false,
                          0.1, 1e-5));
  assert_string_equal(tg_last_error(), "");
  assert_int_equal(tg_scope_end(), 0);
}

static void test_layer_norm_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 6, 4), TG_F32, TG_CPU);
  assert_error(tg_layer_norm(x, TG_SHAPE(3), NULL, NULL, 1e-5) == NULL,
               "Given normalized_shape=[3], expected input with shape [*, 3], but got "
               "input of size[2, 6, 4]");
  assert_error(tg_layer_norm(x, TG_SHAPE(2, 6, 4, 1), NULL, NULL, 1e-5) == NULL,
               "expected input with shape [*, 2, 6, 4, 1]");
  assert_error(tg_layer_norm(x, TG_SHAPE(6, 4), tg_ones(TG_SHAPE(4), TG_F32, TG_CPU),
                             NULL, 1e-5) == NULL,
               "Expected weight to be of same shape as normalized_shape, but got weight "
               "of shape [4] and normalized_shape = [6, 4]");
  assert_error(tg_layer_norm(x, TG_SHAPE(6, 4), NULL,
                             tg_ones(TG_SHAPE(24), TG_F32, TG_CPU), 1e-5) == NULL,
               "Expected bias to be of same shape", "bias of shape [24]");
  assert_error(tg_layer_norm(x, NULL, 0, NULL, NULL, 1e-5) == NULL,
               "Expected normalized_shape to be at least 1-dimensional");
  assert_error(tg_layer_norm(x, TG_SHAPE(4), NULL, NULL, NAN) == NULL, "eps");
  assert_error(tg_layer_norm(x, TG_SHAPE(4), tg_ones(TG_SHAPE(4), TG_F64, TG_CPU), NULL,
                             1e-5) == NULL,
               "tg_layer_norm", "float64");
  assert_error(tg_layer_norm(NULL, TG_SHAPE(4), NULL, NULL, 1e-5) == NULL,
               "tg_layer_norm", "input");
  assert_ok(tg_layer_norm(x, TG_SHAPE(6, 4), NULL, NULL, 1e-5));
  assert_string_equal(tg_last_error(), "");
  assert_int_equal(tg_scope_end(), 0);
}

/* The statistics sums, as norm_tmpl.h's portable loop defines them: blocks of
 * NORM_BLOCK elements, 32 float lanes, a block's tail into lane 0, lanes folded
 * pairwise, each block's fold added in double. The AVX-512 intrinsics must give these
 * bits (their comment says so), on lengths with and without tails and blocks. */
static void reference_sums(const float *x, int64_t n, float p, double *s1, double *s2) {
  for (int64_t i0 = 0; i0 < n; i0 += NORM_BLOCK) {
    const int64_t m = n - i0 < NORM_BLOCK ? n - i0 : NORM_BLOCK;
    float a1[32] = {0}, a2[32] = {0};
    int64_t i = 0;
    for (; i + 32 <= m; i += 32)
      for (int l = 0; l < 32; l++) {
        float d = x[i0 + i + l] - p;
        a1[l] += d;
        a2[l] += d * d;
      }
    for (; i < m; i++) {
      float d = x[i0 + i] - p;
      a1[0] += d;
      a2[0] += d * d;
    }
    for (int w = 16; w > 0; w /= 2)
      for (int l = 0; l < w; l++) {
        a1[l] += a1[l + w];
        a2[l] += a2[l + w];
      }
    *s1 += a1[0];
    *s2 += a2[0];
  }
}

static void test_sums_bits(void **state) {
  (void)state;
  const int64_t lens[] = {0, 1, 31, 32, 33, 2047, 2048, 2049, 4096 + 37, 12544};
  enum { MAXN = 12544 + 1 };
  float *x = malloc(MAXN * sizeof *x);
  assert_non_null(x);
  uint64_t r = 12345;
  for (int i = 0; i < MAXN; i++) { /* values of many magnitudes about 3 */
    r = r * 6364136223846793005ULL + 1442695040888963407ULL;
    x[i] = 3.0f +
           (float)((double)(r >> 11) / 9007199254740992.0 - 0.5) * (float)(1 << (i % 7));
  }
  for (size_t k = 0; k < sizeof lens / sizeof *lens; k++)
    for (int off = 0; off < 2; off++) { /* aligned and not */
      double s1 = 0.25, s2 = 0.5, r1 = 0.25, r2 = 0.5;
      norm_sum_dev2_f(x + off, lens[k], 2.9f, &s1, &s2);
      reference_sums(x + off, lens[k], 2.9f, &r1, &r2);
      if (memcmp(&s1, &r1, sizeof s1) || memcmp(&s2, &r2, sizeof s2))
        fail_msg("sums of %lld elements (offset %d): got (%.17g, %.17g), the portable "
                 "loop gives (%.17g, %.17g)",
                 (long long)lens[k], off, s1, s2, r1, r2);
    }
  free(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_batch_norm_gradcheck),
      cmocka_unit_test(test_layer_norm_gradcheck),
      cmocka_unit_test(test_sums_bits),
      cmocka_unit_test(test_reference),
      cmocka_unit_test(test_running_stats),
      cmocka_unit_test(test_float32_vs_float64),
      cmocka_unit_test(test_batch_norm_errors),
      cmocka_unit_test(test_layer_norm_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
