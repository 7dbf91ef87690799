/* Resampling of 1 to 3 spatial dims
 * (tg_upsample_{nearest,linear,bilinear,trilinear}*_ex): PyTorch references of
 * F.interpolate (tests/ref/gen_resample.py; float64 and float32, output and input
 * gradient, by size and by scale_factor, align_corners), float64 gradchecks on every
 * geometry, agreement of the 2-D functions with the plain ones, and the errors. */
#include "common.h"

#include <math.h>
#include <string.h>

typedef tg_tensor *(*resample_fn)(const tg_tensor *, const tg_upsample_options *);
/* [mode][spatial dims - 1] */
static const resample_fn fns[2][3] = {
    {tg_upsample_nearest1d_ex, tg_upsample_nearest2d_ex, tg_upsample_nearest3d_ex},
    {tg_upsample_linear1d_ex, tg_upsample_bilinear2d_ex, tg_upsample_trilinear3d_ex}};

typedef struct {
  resample_fn fn;
  tg_upsample_options o;
} resample_args;

static resample_args read_args(ref_file *f, const char *name) {
  tg_tensor *p = ref_get(f, name, "params", TG_I64);
  tg_tensor *sc = ref_get(f, name, "scale", TG_F64);
  const int64_t *v = tg_data(p);
  resample_args a = {fns[v[0]][v[1] - 1], tg_upsample_options_default()};
  a.o.align_corners = v[2];
  a.o.recompute_scale_factor = v[3];
  memcpy(a.o.size, v + 4, sizeof a.o.size);
  memcpy(a.o.scale_factor, tg_data(sc), sizeof a.o.scale_factor);
  tg_tensor_free(p);
  tg_tensor_free(sc);
  return a;
}

static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  const resample_args *a = ctx;
  (void)n;
  return a->fn(in[0], &a->o);
}

static void run(tg_dtype dtype, double tol) {
  ref_file *f = ref_open("resample");
  assert_true(ref_num_cases(f) >= 20);
  for (int i = 0; i < ref_num_cases(f); i++) {
    resample_args a = read_args(f, ref_case_name(f, i));
    ref_check_one_input(f, ref_case_name(f, i), dtype, tol, apply, &a);
  }
  ref_close(f);
}

static void test_reference_f64(void **state) {
  (void)state;
  run(TG_F64, 1e-10);
}

static void test_reference_f32(void **state) {
  (void)state;
  run(TG_F32, 2e-5);
}
/* The 2-D _ex functions by size give the plain functions' results, forward and
 * backward: nearest the same bits, bilinear to float32 rounding (the plain one
 * computes its weights in float32, the _ex one in float64). */
static void test_2d_matches_plain(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = rand_leaf(TG_SHAPE(2, 3, 5, 4), TG_F32);
  tg_upsample_options o = tg_upsample_options_default();
  o.size[0] = 7;
  o.size[1] = 9;
  for (int linear = 0; linear < 2; linear++) {
    tg_tensor *a = fns[linear][1](x, &o);
    tg_tensor *b =
        linear ? tg_upsample_bilinear2d(x, o.size) : tg_upsample_nearest2d(x, o.size);
    const double tol = linear ? 1e-6 : 0;
    assert_close(a, b, tol, tol);
    tg_tensor *dy = tg_randn(TG_SHAPE(2, 3, 7, 9), TG_F32, TG_CPU);
    assert_ok(tg_backward_ex(a, dy, false) == 0);
    tg_tensor *ga = tg_clone(tg_grad(x));
    tg_zero_grad(x);
    assert_ok(tg_backward_ex(b, dy, false) == 0);
    assert_close(ga, tg_grad(x), tol, tol);
    tg_zero_grad(x);
  }
  assert_int_equal(tg_scope_end(), 0);
}

/* An Inf in the input stays where the sources put it: a 1-D linear resampling adds no
 * 0 * Inf terms for the axes it lacks (PyTorch's 1-D kernel has none). */
static void test_inf_stays_local(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_zeros(TG_SHAPE(1, 1, 4), TG_F64, TG_CPU);
  ((double *)tg_data(x))[3] = INFINITY;
  tg_upsample_options o = tg_upsample_options_default();
  o.size[0] = 8;
  tg_tensor *y = tg_upsample_linear1d_ex(x, &o);
  assert_ok(y);
  const double *v = tg_data(y);
  assert_true(v[0] == 0 && v[1] == 0 && isinf(v[7]));
  assert_int_equal(tg_scope_end(), 0);
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_upsample_options o = tg_upsample_options_default();
  o.size[0] = o.size[1] = o.size[2] = 4;
  tg_tensor *x3 = tg_randn(TG_SHAPE(1, 2, 5), TG_F32, TG_CPU);
  tg_tensor *x5 = tg_randn(TG_SHAPE(1, 2, 3, 3, 3), TG_F32, TG_CPU);
  assert_error(tg_upsample_nearest1d_ex(x5, &o) == NULL, "tg_upsample_nearest1d_ex",
               "expected a 3D tensor [N, C, L] for input, but got input of size "
               "[1, 2, 3, 3, 3]");
  assert_error(tg_upsample_trilinear3d_ex(x3, &o) == NULL, "tg_upsample_trilinear3d_ex",
               "expected a 5D tensor [N, C, D, H, W]", "[1, 2, 5]");
  assert_error(tg_upsample_nearest3d_ex(x5, NULL) == NULL, "'options' is NULL");
  assert_error(tg_upsample_linear1d_ex(NULL, &o) == NULL, "'input' is NULL");
  o.size[1] = 0;
  assert_error(tg_upsample_nearest3d_ex(x5, &o) == NULL,
               "Input and output sizes should be greater than 0, but got input (D: 3, H: "
               "3, W: 3) output (D: 4, H: 0, W: 4)");
  o.size[0] = 0;
  assert_error(tg_upsample_linear1d_ex(x3, &o) == NULL,
               "but got input (W: 5) output (W: 0)");
  o = tg_upsample_options_default();
  o.scale_factor[0] = 2;
  o.scale_factor[1] = NAN;
  assert_error(tg_upsample_nearest3d_ex(x5, &o) == NULL,
               "scale_factor must be positive and finite, got nan");
  o.scale_factor[1] = 1e300;
  assert_error(tg_upsample_nearest3d_ex(x5, &o) == NULL, "scale_factor 1e+300",
               "too large");
  o.scale_factor[1] = 0.1; /* floor(3 * 0.1) = 0 */
  o.scale_factor[2] = 1;
  assert_error(tg_upsample_trilinear3d_ex(x5, &o) == NULL, "output (D: 6, H: 0, W: 3)");
  /* 1-D uses only the first entries: the others may hold anything. */
  o = tg_upsample_options_default();
  o.size[0] = 3;
  o.size[1] = o.size[2] = -7;
  tg_tensor *y = tg_upsample_nearest1d_ex(x3, &o);
  assert_ok(y);
  assert_int_equal(tg_shape(y)[2], 3);
  tg_tensor *i64 = tg_zeros(TG_SHAPE(1, 1, 4), TG_I64, TG_CPU);
  assert_error(tg_upsample_nearest1d_ex(i64, &o) == NULL, "tg_upsample_nearest1d_ex");
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_f64),    cmocka_unit_test(test_reference_f32),
      cmocka_unit_test(test_2d_matches_plain), cmocka_unit_test(test_inf_stays_local),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests_name("resample", tests, test_setup, NULL);
}
