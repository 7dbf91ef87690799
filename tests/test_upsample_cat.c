/* tg_upsample_nearest2d_cat: PyTorch references (cat of F.interpolate(nearest) and
 * skip; tests/ref/gen_upsample_cat.py), float64 gradchecks, bitwise agreement with
 * tg_cat(tg_upsample_nearest2d(a), skip) forward and backward, and its errors. */
#include "common.h"

static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  (void)n, (void)ctx;
  return tg_upsample_nearest2d_cat(in[0], in[1]);
}

static void test_reference(void **state) {
  (void)state;
  ref_file *f = ref_open("upsample_cat");
  for (int i = 0; i < ref_num_cases(f); i++)
    for (int k = 0; k < 2; k++) {
      const char *name = ref_case_name(f, i);
      const tg_dtype dt = k ? TG_F32 : TG_F64;
      tg_scope_begin();
      tg_tensor *in[2] = {ref_get(f, name, "a", dt), ref_get(f, name, "skip", dt)};
      for (int j = 0; j < 2; j++)
        assert_ok(tg_set_requires_grad(in[j], true) == 0);
      tg_tensor *y = apply(in, 2, NULL);
      assert_ok(y);
      /* a copy forward; backward sums of up to 9 float32 values */
      assert_close(y, ref_get(f, name, "y", dt), 0, 0);
      assert_ok(tg_backward_ex(y, ref_get(f, name, "dy", dt), false) == 0);
      assert_close(tg_grad(in[0]), ref_get(f, name, "da", dt), k ? 1e-6 : 1e-12, 1e-6);
      assert_close(tg_grad(in[1]), ref_get(f, name, "dskip", dt), 0, 0);
      assert_int_equal(tg_scope_end(), 0);
    }
  ref_close(f);
}

static void test_gradcheck(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *in[2] = {rand_leaf(TG_SHAPE(2, 2, 2, 3), TG_F64),
                      rand_leaf(TG_SHAPE(2, 3, 4, 6), TG_F64)};
  gradcheck_ok(apply, NULL, in, 2);
  assert_int_equal(tg_scope_end(), 0);
}

/* The bits of the two ops it replaces, on the example U-Net's decoder shapes and on
 * other integer scales, float32 and float64, 1 and 2 threads. */
static void test_matches_unfused(void **state) {
  (void)state;
  const int64_t cases[][8] = {
      {8, 64, 16, 16, 8, 32, 32, 32},
      {8, 32, 32, 32, 8, 16, 64, 64},
      {2, 3, 5, 7, 2, 4, 15, 7},
      {1, 1, 1, 1, 1, 1, 4, 1},
  };
  int saved = tg_get_num_threads();
  for (int c = 0; c < 4; c++)
    for (int k = 0; k < 2; k++) {
      tg_set_num_threads(1 + k);
      tg_scope_begin();
      const tg_dtype dt = k ? TG_F32 : TG_F64;
      tg_tensor *a = tg_randn(cases[c], 4, dt, TG_CPU);
      tg_tensor *s = tg_randn(cases[c] + 4, 4, dt, TG_CPU);
      tg_tensor *as[2] = {tg_clone(a), tg_clone(a)}, *ss[2] = {tg_clone(s), tg_clone(s)};
      for (int j = 0; j < 2; j++) {
        assert_ok(tg_set_requires_grad(as[j], true) == 0);
        assert_ok(tg_set_requires_grad(ss[j], true) == 0);
      }
      tg_tensor *y0 = tg_upsample_nearest2d_cat(as[0], ss[0]);
      tg_tensor *parts[2] = {tg_upsample_nearest2d(as[1], cases[c] + 6), ss[1]};
      tg_tensor *y1 = tg_cat(parts, 2, 1);
      assert_ok(y0 && y1);
      assert_close(y0, y1, 0, 0);
      tg_tensor *g = tg_randn(tg_shape(y0), 4, dt, TG_CPU);
      assert_ok(tg_backward_ex(y0, g, false) == 0 && tg_backward_ex(y1, g, false) == 0);
      assert_close(tg_grad(as[0]), tg_grad(as[1]), 0, 0);
      assert_close(tg_grad(ss[0]), tg_grad(ss[1]), 0, 0);
      assert_int_equal(tg_scope_end(), 0);
    }
  tg_set_num_threads(saved);
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = tg_randn(TG_SHAPE(2, 3, 4, 5), TG_F32, TG_CPU);
  tg_tensor *s = tg_randn(TG_SHAPE(2, 2, 9, 10), TG_F32, TG_CPU);
  assert_error(!tg_upsample_nearest2d_cat(a, s), "integer multiple", "[2, 3, 4, 5]",
               "[2, 2, 9, 10]");
  tg_tensor *s3 = tg_randn(TG_SHAPE(3, 2, 8, 10), TG_F32, TG_CPU);
  assert_error(!tg_upsample_nearest2d_cat(a, s3), "Expected size 2 but got size 3");
  tg_tensor *s64 = tg_randn(TG_SHAPE(2, 2, 8, 10), TG_F64, TG_CPU);
  assert_error(!tg_upsample_nearest2d_cat(a, s64), "tg_upsample_nearest2d_cat");
  tg_tensor *v = tg_randn(TG_SHAPE(2, 3, 4), TG_F32, TG_CPU);
  assert_error(!tg_upsample_nearest2d_cat(v, s), "4-dimensional", "[2, 3, 4]");
  assert_error(!tg_upsample_nearest2d_cat(NULL, s), "input");
  assert_int_equal(tg_scope_end(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference),
      cmocka_unit_test(test_gradcheck),
      cmocka_unit_test(test_matches_unfused),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
