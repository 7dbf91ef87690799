/* Tensor runtime: creation, copies, dtypes, random generator, printing, errors. */
#include "common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_from_data_round_trip(void **state) {
  (void)state;
  tg_scope_begin();
  float src[6] = {1, 2, 3, 4, 5, 6}, dst[6] = {0};
  tg_tensor *t = tg_tensor_from_data(src, TG_SHAPE(2, 3), TG_F32, TG_CPU);
  assert_ok(t);
  assert_int_equal(tg_ndim(t), 2);
  assert_int_equal(tg_size(t, -1), 3);
  assert_int_equal(tg_numel(t), 6);
  assert_int_equal(tg_dtype_of(t), TG_F32);
  assert_int_equal(tg_device_of(t).type, TG_DEVICE_CPU);
  assert_ok(tg_tensor_copy_to_host(t, dst, sizeof dst) == 0);
  assert_memory_equal(src, dst, sizeof src);
  assert_error(tg_tensor_copy_to_host(t, dst, 8) < 0, "holds 8 bytes", "needs 24");
  tg_tensor *d = tg_to_dtype(t, TG_F64);
  assert_true(((double *)tg_data(d))[5] == 6.0);
  tg_tensor *i = tg_to_dtype(d, TG_I64);
  assert_true(((int64_t *)tg_data(i))[4] == 5);
  assert_true(tg_item(tg_sum(d)) == 21.0);
  assert_error(isnan(tg_item(d)), "cannot be converted to Scalar", "[2, 3]");
  tg_scope_end();
}

static void test_creation(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *z = tg_zeros(TG_SHAPE(2, 2), TG_F64, TG_CPU);
  tg_tensor *o = tg_ones_like(z);
  tg_tensor *f = tg_full(TG_SHAPE(3), 2.5, TG_F32, TG_CPU);
  assert_true(tg_item(tg_sum(o)) == 4.0 && tg_item(tg_sum(z)) == 0.0);
  assert_true(tg_item(tg_sum(f)) == 7.5);
  tg_tensor *a = tg_arange(0, 1, 0.25, TG_F64, TG_CPU);
  assert_int_equal(tg_numel(a), 4);
  assert_true(((double *)tg_data(a))[3] == 0.75);
  assert_true(tg_item(tg_scalar(3, TG_F32, TG_CPU)) == 3.0);
  assert_int_equal(tg_ndim(tg_scalar(3, TG_F32, TG_CPU)), 0);
  assert_error(tg_arange(0, 1, 0, TG_F32, TG_CPU) == NULL, "step must be nonzero");
  assert_error(tg_arange(1, 0, 1, TG_F32, TG_CPU) == NULL, "inconsistent with step");
  tg_scope_end();
}

static void test_random_is_seeded_and_distributed(void **state) {
  (void)state;
  tg_scope_begin();
  tg_manual_seed(7);
  tg_tensor *a = tg_randn(TG_SHAPE(100000), TG_F64, TG_CPU);
  tg_manual_seed(7);
  tg_tensor *b = tg_randn(TG_SHAPE(100000), TG_F64, TG_CPU);
  assert_memory_equal(tg_data(a), tg_data(b), 100000 * sizeof(double));
  double mean = tg_item(tg_mean(a));
  double var = tg_item(tg_mean(tg_mul(a, a))) - mean * mean;
  assert_true(fabs(mean) < 0.02 && fabs(var - 1.0) < 0.02);
  tg_tensor *u = tg_uniform(TG_SHAPE(10000), -2, 3, TG_F32, TG_CPU);
  float lo = 10, hi = -10;
  for (int i = 0; i < 10000; i++) {
    float v = ((float *)tg_data(u))[i];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  assert_true(lo >= -2 && hi < 3 && lo < -1.99 && hi > 2.99);
  tg_tensor *r = tg_rand(TG_SHAPE(1000), TG_F32, TG_CPU);
  assert_true(fabs(tg_item(tg_mean(r)) - 0.5) < 0.05);
  assert_error(tg_uniform(TG_SHAPE(2), 1, 0, TG_F32, TG_CPU) == NULL, "lo <= hi");
  assert_error(tg_randn(TG_SHAPE(2), TG_I64, TG_CPU) == NULL, "floating point");
  tg_scope_end();
}

static void test_bad_shapes_and_devices(void **state) {
  (void)state;
  assert_error(tg_zeros(TG_SHAPE(2, -3), TG_F32, TG_CPU) == NULL, "negative dimension",
               "[2, -3]");
  assert_error(tg_zeros(TG_SHAPE(1, 2, 3, 4, 5, 6, 7, 8, 9), TG_F32, TG_CPU) == NULL,
               "at most 8 dimensions");
  assert_error(tg_zeros(TG_SHAPE(INT64_MAX / 2, 4), TG_F32, TG_CPU) == NULL,
               "more elements than int64");
  assert_error(tg_zeros(TG_SHAPE(INT64_MAX / 4), TG_F64, TG_CPU) == NULL, "too large");
  assert_error(tg_zeros(TG_SHAPE(INT64_MAX / 16), TG_F64, TG_CPU) == NULL,
               "out of memory");
  assert_error(tg_zeros(TG_SHAPE(2), (tg_dtype)42, TG_CPU) == NULL, "unknown dtype");
  if (!tg_cuda_is_available())
    assert_error(tg_zeros(TG_SHAPE(2), TG_F32, tg_cuda(0)) == NULL, "cuda:0");
  assert_error(tg_zeros(TG_SHAPE(2), TG_F32, tg_cuda(99)) == NULL, "cuda:99");
  assert_error(tg_tensor_from_data(NULL, TG_SHAPE(2), TG_F32, TG_CPU) == NULL,
               "data is NULL");
  tg_tensor *e = tg_zeros(TG_SHAPE(0, 5), TG_F32, TG_CPU); /* empty is fine */
  assert_non_null(e);
  assert_int_equal(tg_numel(e), 0);
  tg_tensor_free(e);
  assert_error(tg_size(NULL, 0) < 0, "NULL");
  assert_error(tg_set_num_threads(0) < 0, ">= 1");
  assert_ok(tg_set_num_threads(2) == 0);
  assert_int_equal(tg_get_num_threads(), 2);
}

static void test_print(void **state) {
  (void)state;
  tg_scope_begin();
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  tg_tensor *t = tg_arange(0, 20, 1, TG_F32, TG_CPU);
  tg_tensor_print(tg_reshape(t, TG_SHAPE(2, 10)), f);
  fclose(f);
  assert_non_null(strstr(buf, "float32 [2, 10]"));
  assert_non_null(strstr(buf, "[[0, 1, 2, ..., 7, 8, 9],"));
  free(buf);
  char s[32];
  assert_string_equal(tg_shape_str(t, s, sizeof s), "[20]");
  tg_scope_end();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_from_data_round_trip),
      cmocka_unit_test(test_creation),
      cmocka_unit_test(test_random_is_seeded_and_distributed),
      cmocka_unit_test(test_bad_shapes_and_devices),
      cmocka_unit_test(test_print),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
