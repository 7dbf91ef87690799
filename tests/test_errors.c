/* The bad-input matrix: every public function of tapegrad.h given NULL arguments,
 * wrong dtypes and devices, mismatched or absurd shapes and bad configurations.
 * Each case must fail with NULL / a negative status and a tg_last_error() naming the
 * rule and the shapes, leak nothing, and leave the library working; zero-size inputs
 * must give PyTorch's empty results, not errors.
 *
 * Every test runs inside a scope (tg_scope_begin/end), so the test itself cannot
 * leak; under AddressSanitizer each test also runs LeakSanitizer at its end, so a
 * leak on an error path is reported by the test that caused it. */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define TG_TEST_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_TEST_LSAN 1
#endif
#endif
#ifdef TG_TEST_LSAN
#include <sanitizer/lsan_interface.h>
#endif

#define BIG (INT64_C(1) << 62)

/* ------------------------------------------------------------- helpers -- */

static tg_tensor *randn(const int64_t *shape, int ndim, tg_dtype dtype) {
  tg_tensor *t = tg_randn(shape, ndim, dtype, TG_CPU);
  assert_non_null(t);
  return t;
}
#define RF(...) randn(TG_SHAPE(__VA_ARGS__), TG_F32)
#define RD(...) randn(TG_SHAPE(__VA_ARGS__), TG_F64)
#define ZI(...) tg_zeros(TG_SHAPE(__VA_ARGS__), TG_I64, TG_CPU)

/* Fails unless t is a tensor of exactly this shape. */
static void expect_shape_impl(const tg_tensor *t, const int64_t *shape, int ndim,
                              const char *file, int line) {
  char a[160], b[160];
  if (!t) {
    print_error("%s:%d: expected a tensor, got NULL: %s\n", file, line, tg_last_error());
    _fail(file, line);
  }
  bool same = tg_ndim(t) == ndim;
  for (int i = 0; same && i < ndim; i++)
    same = tg_shape(t)[i] == shape[i];
  if (!same) {
    snprintf(b, sizeof b, "[");
    for (int i = 0; i < ndim; i++)
      snprintf(b + strlen(b), sizeof b - strlen(b), i ? ", %lld" : "%lld",
               (long long)shape[i]);
    snprintf(b + strlen(b), sizeof b - strlen(b), "]");
    print_error("%s:%d: expected shape %s, got %s\n", file, line, b,
                tg_shape_str(t, a, sizeof a));
    _fail(file, line);
  }
}
#define expect_shape(t, ...)                                                             \
  expect_shape_impl((t), TG_SHAPE(__VA_ARGS__), __FILE__, __LINE__)
#define expect_scalar(t) expect_shape_impl((t), NULL, 0, __FILE__, __LINE__)

/* The library still works: no error left unchecked, grad mode on, anomaly mode off,
 * and a small forward and backward give the right numbers. */
static void still_works(void) {
  if (tg_last_error()[0])
    fail_msg("an error was left unchecked: %s", tg_last_error());
  assert_true(tg_is_grad_enabled());
  assert_false(tg_is_anomaly_enabled());
  tg_tensor *a = tg_reshape(tg_arange(0, 6, 1, TG_F64, TG_CPU), TG_SHAPE(2, 3));
  tg_tensor *leaf = tg_clone(a);
  assert_ok(leaf && tg_set_requires_grad(leaf, true) == 0);
  tg_tensor *y = tg_sum(tg_mul(leaf, leaf));
  assert_ok(y);
  assert_true(tg_item(y) == 55.0);
  assert_ok(tg_backward(y) == 0);
  assert_ok(tg_grad(leaf));
  assert_true(((double *)tg_data(tg_grad(leaf)))[5] == 10.0);
  assert_int_equal(tg_last_error()[0], '\0');
}

/* Per test: a scope that releases everything the test made. */
static void begin(void) {
  tg_clear_error();
  tg_scope_begin();
}

static void end(const char *group) {
  still_works();
  assert_int_equal(tg_scope_end(), 0);
#ifdef TG_TEST_LSAN
  static bool reported; /* LeakSanitizer reports a leak again at every later check */
  if (!reported && __lsan_do_recoverable_leak_check()) {
    reported = true;
    fail_msg("%s: memory leaked (LeakSanitizer's report is above)", group);
  }
#else
  (void)group;
#endif
}

/* After a failed test: close the scopes it left open and reset per-thread modes. */
static int cleanup(void **state) {
  (void)state;
  tg_clear_error();
  while (tg_scope_end() == 0) {
  }
  tg_clear_error();
  while (!tg_is_grad_enabled())
    tg_no_grad_end();
  tg_set_detect_anomaly(false);
  return 0;
}

/* ------------------------------------------------------------- runtime -- */

static void test_runtime(void **state) {
  (void)state;
  tg_clear_error();
  assert_error(tg_scope_end() < 0, "tg_scope_end", "no scope is open");
  begin();
  int n = tg_get_num_threads();
  assert_error(tg_set_num_threads(0) < 0, "tg_set_num_threads", ">= 1", "got 0");
  assert_error(tg_set_num_threads(-7) < 0, "got -7");
  assert_int_equal(tg_get_num_threads(), n);
  assert_string_equal(tg_dtype_name((tg_dtype)42), "unknown");
  assert_int_equal(tg_dtype_size((tg_dtype)42), 0);
  tg_empty_cache();
  /* An unbalanced tg_no_grad_end does not turn grad mode off (or below zero). */
  tg_no_grad_end();
  assert_true(tg_is_grad_enabled());
  tg_no_grad_begin();
  tg_no_grad_begin();
  tg_no_grad_end();
  assert_false(tg_is_grad_enabled());
  tg_no_grad_end();
  assert_true(tg_is_grad_enabled());
  end("runtime");
}

/* ------------------------------------------------------------ creation -- */

static void test_creation(void **state) {
  (void)state;
  begin();
  const int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  assert_error(tg_zeros(s9, 9, TG_F32, TG_CPU) == NULL, "at most 8 dimensions", "got 9");
  assert_error(tg_empty(s9, -1, TG_F32, TG_CPU) == NULL, "at most 8", "got -1");
  assert_error(tg_ones(NULL, 2, TG_F32, TG_CPU) == NULL, "shape is NULL",
               "2-dimensional");
  assert_error(tg_full(TG_SHAPE(2, -3), 1.0, TG_F64, TG_CPU) == NULL,
               "negative dimension -3", "[2, -3]");
  assert_error(tg_randn(TG_SHAPE(-1), TG_F32, TG_CPU) == NULL, "tg_randn",
               "negative dimension -1");
  /* int64 overflow of numel and of bytes, caught before any allocation. */
  assert_error(tg_empty(TG_SHAPE(INT64_C(1) << 32, INT64_C(1) << 32), TG_F32, TG_CPU) ==
                   NULL,
               "more elements than int64 can count", "[4294967296, 4294967296]");
  assert_error(tg_zeros(TG_SHAPE(3, INT64_MAX), TG_F32, TG_CPU) == NULL,
               "more elements than int64", "[3, 9223372036854775807]");
  assert_error(tg_empty(TG_SHAPE(INT64_C(1) << 61), TG_F64, TG_CPU) == NULL,
               "too large to allocate", "[2305843009213693952]", "float64");
  assert_error(tg_rand(TG_SHAPE(INT64_C(1) << 60, 4), TG_F32, TG_CPU) == NULL,
               "too large to allocate", "[1152921504606846976, 4]");
  /* A zero dimension makes an empty tensor, but its other sizes must still multiply
   * within int64, in any order (PyTorch takes [2^62, 0, 4] and refuses [2^62, 4, 0];
   * the kernels' partial products of sizes overflowed on such shapes: UBSan, under
   * tests/fuzz/fuzz_ops.c). */
  tg_tensor *e = tg_zeros(TG_SHAPE(INT64_MAX, 0, 1), TG_F32, TG_CPU);
  expect_shape(e, INT64_MAX, 0, 1);
  assert_int_equal(tg_numel(e), 0);
  assert_error(tg_zeros(TG_SHAPE(INT64_MAX, 0, INT64_MAX), TG_F32, TG_CPU) == NULL,
               "tg_zeros: shape [9223372036854775807, 0, 9223372036854775807] has more "
               "elements than int64 can count (its sizes other than 0 multiply past "
               "int64)");
  assert_error(tg_reshape(e, TG_SHAPE(0, INT64_C(1) << 40, INT64_C(1) << 40)) == NULL,
               "tg_reshape", "is invalid for input of size 0");
  assert_ok(tg_reshape(e, TG_SHAPE(0, INT64_C(1) << 40, 4)));
  /* Sizes that pass the checks but cannot be allocated fail cleanly too. */
  tg_tensor *huge = tg_empty(TG_SHAPE(INT64_C(1) << 44), TG_F64, TG_CPU);
  if (!huge)
    assert_error(true, "out of memory", "cpu");
  tg_tensor_free(huge);

  assert_error(tg_zeros(TG_SHAPE(2), (tg_dtype)9, TG_CPU) == NULL, "unknown dtype 9");
  assert_error(tg_scalar(1.0, (tg_dtype)-1, TG_CPU) == NULL, "unknown dtype -1");
  assert_error(tg_rand(TG_SHAPE(2), TG_I64, TG_CPU) == NULL, "tg_rand",
               "floating point dtype", "int64");
  assert_error(tg_randn(TG_SHAPE(2), TG_I64, TG_CPU) == NULL, "tg_randn", "int64");
  assert_error(tg_uniform(TG_SHAPE(2), 0, 1, TG_I64, TG_CPU) == NULL, "tg_uniform",
               "int64");
  assert_error(tg_uniform(TG_SHAPE(2), 1, 0, TG_F32, TG_CPU) == NULL, "lo <= hi", "lo=1",
               "hi=0");
  assert_error(tg_uniform(TG_SHAPE(2), NAN, 1, TG_F32, TG_CPU) == NULL, "lo <= hi");
  assert_error(tg_uniform(TG_SHAPE(2), 0, INFINITY, TG_F32, TG_CPU) == NULL, "finite");
  assert_error(tg_arange(0, 5, 0, TG_F32, TG_CPU) == NULL, "tg_arange",
               "step must be nonzero");
  assert_error(tg_arange(0, NAN, 1, TG_F32, TG_CPU) == NULL, "bounds finite");
  assert_error(tg_arange(0, 5, -1, TG_F64, TG_CPU) == NULL, "inconsistent with step",
               "step=-1");
  assert_error(tg_arange(0, 1e300, 1, TG_F64, TG_CPU) == NULL, "too many");
  assert_error(tg_arange(0, 3, 1, (tg_dtype)5, TG_CPU) == NULL, "unknown dtype 5");
  expect_shape(tg_arange(2, 2, 1, TG_I64, TG_CPU), 0);

  assert_error(tg_tensor_from_data(NULL, TG_SHAPE(2, 3), TG_F32, TG_CPU) == NULL,
               "tg_tensor_from_data", "data is NULL", "6 elements");
  assert_error(tg_tensor_from_data(NULL, TG_SHAPE(2, -3), TG_F32, TG_CPU) == NULL,
               "tg_tensor_from_data", "negative dimension");
  expect_shape(tg_tensor_from_data(NULL, TG_SHAPE(2, 0), TG_F32, TG_CPU), 2, 0);
  assert_error(tg_zeros_like(NULL) == NULL, "tg_zeros_like", "argument 't' is NULL");
  assert_error(tg_ones_like(NULL) == NULL, "tg_ones_like", "is NULL");
  expect_shape(tg_ones_like(tg_zeros(TG_SHAPE(0, 3), TG_I64, TG_CPU)), 0, 3);
  end("creation");
}

/* Values an int64 tensor cannot hold are rejected, as torch.full does ("value cannot
 * be converted to type int64_t without overflow"), instead of converting NaN or 1e300
 * to an integer (undefined behaviour in C). */
static void test_full_int64_out_of_range(void **state) {
  (void)state;
  begin();
  assert_error(tg_full(TG_SHAPE(2), NAN, TG_I64, TG_CPU) == NULL, "int64",
               "cannot be converted");
  assert_error(tg_full(TG_SHAPE(2), 1e300, TG_I64, TG_CPU) == NULL, "int64");
  tg_tensor *i = ZI(2);
  assert_error(tg_fill_(i, -INFINITY) < 0, "tg_fill_", "int64");
  end("full int64 out of range");
}

/* -------------------------------------------------------------- devices -- */

static void test_devices(void **state) {
  (void)state;
  begin();
  int n = tg_cuda_device_count();
  assert_true(n >= 0);
  assert_true(tg_cuda_is_available() == (n > 0));
  char idx[32];
  snprintf(idx, sizeof idx, "cuda:%d", n);
  /* An index past the devices present fails everywhere, GPU or not. */
  assert_error(tg_zeros(TG_SHAPE(2, 3), TG_F32, tg_cuda(n)) == NULL, idx,
               "is not available");
  assert_error(tg_ones(TG_SHAPE(2), TG_F32, tg_cuda(-1)) == NULL, "cuda:-1",
               "not available");
  assert_error(tg_empty(TG_SHAPE(2), TG_F32, (tg_device){(tg_device_type)7, 0}) == NULL,
               "unknown device type 7");
  tg_tensor *h = RF(2, 3);
  assert_error(tg_tensor_to(h, tg_cuda(n)) == NULL, "tg_tensor_to", idx);
  assert_error(tg_tensor_to(h, (tg_device){(tg_device_type)3, 0}) == NULL,
               "unknown device type 3");
  assert_error(tg_varstore_new(tg_cuda(n)) == NULL, "tg_varstore_new", idx,
               "not available");
  assert_error(tg_varstore_new((tg_device){(tg_device_type)9, 0}) == NULL,
               "tg_varstore_new", "not available");
  if (n == 0) {
    /* Without a GPU, cuda:0 fails clearly for every creation function... */
    assert_error(tg_zeros(TG_SHAPE(2), TG_F32, tg_cuda(0)) == NULL, "cuda:0",
                 "not available", "0 CUDA devices");
    assert_error(tg_randn(TG_SHAPE(2), TG_F32, tg_cuda(0)) == NULL, "cuda:0");
    assert_error(tg_uniform(TG_SHAPE(2), 0, 1, TG_F64, tg_cuda(0)) == NULL, "cuda:0");
    assert_error(tg_arange(0, 4, 1, TG_F32, tg_cuda(0)) == NULL, "cuda:0");
    assert_error(tg_scalar(1, TG_F32, tg_cuda(0)) == NULL, "cuda:0");
    float v[2] = {1, 2};
    assert_error(tg_tensor_from_data(v, TG_SHAPE(2), TG_F32, tg_cuda(0)) == NULL,
                 "cuda:0");
    assert_error(tg_tensor_to(h, tg_cuda(0)) == NULL, "cuda:0", "not available");
    assert_error(tg_varstore_new(tg_cuda(0)) == NULL, "cuda:0");
    /* ...and the NULL it returns propagates through a chain with its message. */
    tg_tensor *c = tg_zeros(TG_SHAPE(2, 3), TG_F32, tg_cuda(0));
    tg_tensor *y = tg_sum(tg_relu(tg_add(h, c)));
    assert_error(y == NULL, "cuda:0", "not available");
    tg_tensor *m = tg_matmul(tg_tensor_to(h, tg_cuda(0)), h);
    assert_error(tg_backward(tg_mean(m)) < 0, "tg_tensor_to", "cuda:0");
  } else {
    /* With a GPU: mixing devices is refused by name. */
    tg_tensor *c = tg_tensor_to(h, tg_cuda(0));
    assert_ok(c);
    assert_error(tg_add(h, c) == NULL, "tg_add", "same device", "cpu", "cuda:0");
    assert_error(tg_matmul(c, tg_transpose(h, 0, 1)) == NULL, "tg_matmul", "same device");
    assert_error(tg_cross_entropy(c, ZI(2), TG_REDUCTION_MEAN, -100) == NULL,
                 "tg_cross_entropy", "same device");
    assert_error(tg_data(c) == NULL, "tg_data", "cuda:0");
  }
  end("devices");
}

/* ------------------------------------------------------ tensor accessors -- */

static void test_accessors(void **state) {
  (void)state;
  begin();
  tg_tensor *t = RF(2, 3), *s = tg_scalar(2.5, TG_F64, TG_CPU);
  assert_null(tg_tensor_retain(NULL));
  tg_tensor_free(NULL);
  assert_int_equal(tg_ndim(NULL), -1);
  assert_null(tg_shape(NULL));
  assert_int_equal(tg_numel(NULL), -1);
  assert_int_equal(tg_device_of(NULL).type, TG_DEVICE_CPU);
  assert_true(tg_dtype_size(tg_dtype_of(NULL)) > 0);
  assert_error(tg_size(NULL, 0) == -1, "tg_size", "argument 't' is NULL");
  assert_error(tg_size(t, 2) == -1, "tg_size",
               "Dimension out of range (expected to be in range of [-2, 1], but got 2)");
  assert_error(tg_size(t, -3) == -1, "but got -3");
  assert_int_equal(tg_size(t, -1), 3);
  assert_error(tg_data(NULL) == NULL, "tg_data", "is NULL");

  float buf[6];
  assert_error(tg_tensor_copy_to_host(NULL, buf, sizeof buf) < 0,
               "tg_tensor_copy_to_host", "is NULL");
  assert_error(tg_tensor_copy_to_host(t, NULL, sizeof buf) < 0, "dst is NULL");
  assert_error(tg_tensor_copy_to_host(t, buf, 23) < 0, "holds 23 bytes", "needs 24");
  assert_int_equal(tg_tensor_copy_to_host(RF(0, 3), NULL, 0), 0);

  assert_error(isnan(tg_item(NULL)), "tg_item", "is NULL");
  assert_error(isnan(tg_item(t)), "tg_item", "6 elements", "[2, 3]");
  assert_error(isnan(tg_item(RF(0))), "tg_item", "0 elements", "[0]");
  assert_true(tg_item(s) == 2.5);

  assert_error(tg_to_dtype(NULL, TG_F64) == NULL, "tg_to_dtype", "is NULL");
  assert_error(tg_to_dtype(t, (tg_dtype)17) == NULL, "tg_to_dtype", "unknown dtype 17");
  expect_shape(tg_to_dtype(RF(0, 2), TG_I64), 0, 2);
  assert_error(tg_tensor_to(NULL, TG_CPU) == NULL, "tg_tensor_to", "is NULL");
  assert_error(tg_clone(NULL) == NULL, "tg_clone", "is NULL");
  assert_error(tg_contiguous(NULL) == NULL, "is NULL");
  assert_error(tg_detach(NULL) == NULL, "tg_detach", "is NULL");

  assert_error(tg_fill_(NULL, 1) < 0, "tg_fill_", "is NULL");
  assert_int_equal(tg_fill_(RF(0), 1), 0);
  assert_error(tg_copy_(NULL, t) < 0, "tg_copy_", "argument 'dst' is NULL");
  assert_error(tg_copy_(t, NULL) < 0, "tg_copy_", "argument 'src' is NULL");
  assert_error(tg_copy_(t, RF(4)) < 0, "tg_copy_", "float32 [4]", "float32 [2, 3]");
  assert_error(tg_copy_(t, RD(2, 3)) < 0, "float64 [2, 3]", "float32 [2, 3]");
  assert_int_equal(tg_copy_(RF(0, 2), RF(2, 0)), 0);

  /* Printing and shape strings of NULL, empty and int64 tensors. */
  FILE *f = tmpfile();
  assert_non_null(f);
  tg_tensor_print(NULL, f);
  tg_tensor_print(RF(3, 0, 2), f);
  tg_tensor_print(ZI(0), f);
  tg_tensor_print(tg_arange(0, 100, 1, TG_I64, TG_CPU), f);
  tg_tensor_print(s, f);
  rewind(f);
  char text[512] = {0};
  size_t len = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  assert_true(len > 0);
  assert_non_null(strstr(text, "tensor(NULL)"));
  assert_non_null(strstr(text, "float32 [3, 0, 2]"));
  assert_non_null(strstr(text, "int64 [0]"));
  assert_non_null(strstr(text, "[0, 1, 2, ..., 97, 98, 99]"));
  char sb[8];
  assert_string_equal(tg_shape_str(NULL, sb, sizeof sb), "(null)");
  assert_null(tg_shape_str(t, NULL, 8));
  assert_string_equal(tg_shape_str(t, sb, sizeof sb), "[2, 3]");
  assert_string_equal(tg_shape_str(RF(123, 456, 789), sb, sizeof sb), "[123, 4");
  assert_string_equal(tg_shape_str(s, sb, sizeof sb), "[]");
  end("accessors");
}

/* torch.tensor(1.).size(0): "Dimension specified as 0 but tensor has no dimensions". */
static void test_size_of_0dim(void **state) {
  (void)state;
  begin();
  tg_tensor *s = tg_scalar(1, TG_F32, TG_CPU);
  assert_error(tg_size(s, 0) == -1, "tg_size", "no dimensions");
  assert_error(tg_size(s, -1) == -1, "tg_size", "no dimensions");
  end("size of a 0-dim tensor");
}

/* ------------------------------------------------------------ shape ops -- */

static void test_shape_ops(void **state) {
  (void)state;
  begin();
  tg_tensor *t = RF(2, 3), *e = RF(0, 3);
  const int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 6};
  assert_error(tg_reshape(NULL, TG_SHAPE(6)) == NULL, "tg_reshape", "is NULL");
  assert_error(tg_view(NULL, TG_SHAPE(6)) == NULL, "tg_view", "is NULL");
  assert_error(tg_reshape(t, s9, 9) == NULL, "tg_reshape", "got ndim 9");
  assert_error(tg_reshape(t, NULL, 2) == NULL, "tg_reshape", "non-NULL shape");
  assert_error(tg_reshape(t, TG_SHAPE(-1, -1)) == NULL,
               "only one dimension can be inferred");
  assert_error(tg_view(t, TG_SHAPE(3, -2)) == NULL, "tg_view",
               "invalid shape dimension -2");
  assert_error(tg_reshape(t, TG_SHAPE(4, 4)) == NULL,
               "shape '[4, 4]' is invalid for input of size 6", "[2, 3]");
  assert_error(tg_reshape(t, TG_SHAPE(4, -1)) == NULL, "shape '[4, -1]' is invalid");
  assert_error(tg_reshape(t, NULL, 0) == NULL, "shape '[]' is invalid", "size 6");
  /* Empty tensors reshape like PyTorch: -1 is ambiguous next to a 0. */
  expect_shape(tg_reshape(e, TG_SHAPE(3, 0, 5)), 3, 0, 5);
  expect_shape(tg_reshape(e, TG_SHAPE(-1)), 0);
  assert_error(tg_reshape(e, TG_SHAPE(-1, 0)) == NULL, "shape '[-1, 0]' is invalid",
               "size 0", "[0, 3]");

  assert_error(tg_flatten(NULL, 0, -1) == NULL, "tg_flatten", "is NULL");
  assert_error(tg_flatten(t, 1, 0) == NULL,
               "start_dim (1) cannot come after end_dim (0)");
  assert_error(tg_flatten(t, 0, 2) == NULL, "tg_flatten", "Dimension out of range",
               "got 2");
  expect_shape(tg_flatten(RF(2, 0, 4), 1, 2), 2, 0);
  assert_error(tg_squeeze(NULL, 0) == NULL, "tg_squeeze", "is NULL");
  assert_error(tg_squeeze(t, 2) == NULL, "tg_squeeze", "[-2, 1]", "got 2");
  assert_error(tg_squeeze_all(NULL) == NULL, "tg_squeeze_all", "is NULL");
  expect_shape(tg_squeeze_all(RF(1, 0, 1)), 0);
  assert_error(tg_unsqueeze(NULL, 0) == NULL, "tg_unsqueeze", "is NULL");
  assert_error(tg_unsqueeze(t, 3) == NULL, "tg_unsqueeze", "[-3, 2]", "got 3");
  tg_tensor *t8 = tg_zeros(TG_SHAPE(1, 1, 1, 1, 1, 1, 1, 2), TG_F32, TG_CPU);
  assert_error(tg_unsqueeze(t8, 0) == NULL, "tg_unsqueeze", "maximum of 8 dims");

  assert_error(tg_permute(NULL, (int[]){1, 0}, 2) == NULL, "tg_permute", "is NULL");
  assert_error(tg_permute(t, (int[]){0, 1, 2}, 3) == NULL, "has 2 dims (shape [2, 3])",
               "3 were given");
  assert_error(tg_permute(t, NULL, 2) == NULL, "tg_permute", "dims don't match");
  assert_error(tg_permute(t, (int[]){0, 0}, 2) == NULL, "repeated dim 0");
  assert_error(tg_permute(t, (int[]){0, 5}, 2) == NULL, "tg_permute",
               "Dimension out of range", "got 5");
  expect_shape(tg_permute(RF(2, 0, 3), (int[]){2, 0, 1}, 3), 3, 2, 0);
  assert_error(tg_transpose(NULL, 0, 1) == NULL, "tg_transpose", "is NULL");
  assert_error(tg_transpose(t, 0, -3) == NULL, "tg_transpose", "got -3");
  expect_shape(tg_transpose(e, 0, 1), 3, 0);

  assert_error(tg_narrow(NULL, 0, 0, 1) == NULL, "tg_narrow", "is NULL");
  assert_error(tg_narrow(tg_scalar(1, TG_F32, TG_CPU), 0, 0, 1) == NULL,
               "cannot be applied to a 0-dim tensor");
  assert_error(tg_narrow(t, 1, 2, 2) == NULL,
               "start (2) + length (2) exceeds dimension size (3)", "[2, 3]");
  assert_error(tg_narrow(t, 1, 0, -1) == NULL, "tg_narrow",
               "length must be non-negative");
  /* PyTorch's wording, naming the start the caller passed */
  assert_error(tg_narrow(t, 1, 4, 0) == NULL, "tg_narrow",
               "start out of range (expected to be in range of [-3, 3], but got 4)");
  assert_error(tg_narrow(t, 0, -5, 1) == NULL, "tg_narrow", "start out of range",
               "but got -5");
  assert_error(tg_narrow(t, 1, 1, INT64_MAX) == NULL, "tg_narrow", "exceeds");
  assert_error(tg_narrow(t, 1, INT64_MIN, 1) == NULL, "tg_narrow", "start out of range");
  assert_error(tg_narrow(t, 2, 0, 1) == NULL, "tg_narrow", "Dimension out of range");
  expect_shape(tg_narrow(t, 1, 3, 0), 2, 0);

  tg_tensor *d = RD(2, 3), *i = ZI(2, 3), *w = RF(2, 4);
  assert_error(tg_cat(NULL, 2, 0) == NULL, "tg_cat", "non-empty list");
  assert_error(tg_cat((tg_tensor *[]){t}, 0, 0) == NULL, "tg_cat", "non-empty list");
  assert_error(tg_cat((tg_tensor *[]){t, NULL}, 2, 0) == NULL, "tg_cat",
               "argument 'tensors[i]' is NULL");
  assert_error(tg_cat((tg_tensor *[]){t, d}, 2, 0) == NULL, "tg_cat", "same dtype",
               "float32 and float64");
  assert_error(tg_cat((tg_tensor *[]){t, i}, 2, 0) == NULL, "float32 and int64");
  assert_error(tg_cat((tg_tensor *[]){t, w}, 2, 0) == NULL,
               "must match except in dimension 0", "[2, 3]", "[2, 4]", "tensor number 1");
  assert_error(tg_cat((tg_tensor *[]){t, RF(6)}, 2, 0) == NULL, "[2, 3]", "[6]");
  assert_error(tg_cat((tg_tensor *[]){t, w}, 2, 2) == NULL, "tg_cat",
               "Dimension out of range");
  tg_tensor *s = tg_scalar(1, TG_F32, TG_CPU);
  assert_error(tg_cat((tg_tensor *[]){s, s}, 2, 0) == NULL, "zero-dimensional");
  expect_shape(tg_cat((tg_tensor *[]){t, w}, 2, 1), 2, 7);
  expect_shape(tg_cat((tg_tensor *[]){RF(2, 0), t, RF(2, 0)}, 3, -1), 2, 3);
  expect_shape(tg_cat((tg_tensor *[]){RF(0, 3), RF(0, 3)}, 2, 0), 0, 3);
  end("shape ops");
}

/* ------------------------------------------------------------- autograd -- */

static void test_autograd(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RD(2, 3);
  assert_error(tg_set_requires_grad(NULL, true) < 0, "tg_set_requires_grad", "is NULL");
  assert_error(tg_set_requires_grad(ZI(2), true) < 0, "floating point dtype", "int64");
  assert_int_equal(tg_set_requires_grad(ZI(2), false), 0);
  assert_int_equal(tg_set_requires_grad(x, true), 0);
  tg_tensor *y = tg_exp(x);
  assert_error(tg_set_requires_grad(y, false) < 0, "leaf variables", "tg_exp",
               "tg_detach");
  assert_false(tg_requires_grad(NULL));
  assert_null(tg_grad(NULL));
  tg_zero_grad(NULL);

  assert_error(tg_backward(NULL) < 0, "tg_backward", "argument 'tensor' is NULL");
  assert_error(tg_backward(RD(1)) < 0, "does not require grad");
  assert_error(tg_backward(y) < 0, "implicitly created only for scalar outputs",
               "[2, 3]");
  assert_error(tg_backward_ex(y, RD(3, 3), false) < 0, "Mismatch in shape", "[3, 3]",
               "[2, 3]");
  assert_error(tg_backward_ex(y, RF(2, 3), false) < 0, "Mismatch in shape", "float32",
               "float64");
  assert_error(tg_backward_ex(NULL, RD(2, 3), false) < 0, "is NULL");
  /* A failed backward leaves the graph usable. */
  tg_tensor *loss = tg_sum(y);
  assert_int_equal(tg_backward_ex(loss, NULL, true), 0);
  assert_int_equal(tg_backward(loss), 0);
  assert_error(tg_backward(loss) < 0, "backward through the graph a second time",
               "retain_graph");
  /* Backward from an empty sum: zero gradients of the empty shape. */
  tg_tensor *ex = RD(0, 4);
  assert_int_equal(tg_set_requires_grad(ex, true), 0);
  assert_int_equal(tg_backward(tg_sum(tg_exp(ex))), 0);
  expect_shape(tg_grad(ex), 0, 4);

  /* Anomaly mode names the op and its tape position, forward and backward. */
  tg_set_detect_anomaly(true);
  tg_tensor *neg = tg_full(TG_SHAPE(3), -1, TG_F64, TG_CPU);
  assert_int_equal(tg_set_requires_grad(neg, true), 0);
  assert_error(tg_log(neg) == NULL, "anomaly", "tg_log", "NaN", "tape position");
  tg_tensor *zero = tg_zeros(TG_SHAPE(2), TG_F64, TG_CPU);
  assert_int_equal(tg_set_requires_grad(zero, true), 0);
  tg_tensor *r = tg_sum(tg_sqrt(zero));
  assert_ok(r);
  assert_error(tg_backward(r) < 0, "anomaly", "tg_sqrt", "Inf", "backward");
  tg_set_detect_anomaly(false);
  end("autograd");
}

/* torch.autograd.backward checks grad_output's shape, not only its numel:
 * "Mismatch in shape: grad_output[0] has a shape of torch.Size([6]) and output[0]
 * has a shape of torch.Size([2, 3])". */
static void test_backward_grad_shape(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RD(2, 3);
  assert_int_equal(tg_set_requires_grad(x, true), 0);
  tg_tensor *y = tg_exp(x);
  assert_error(tg_backward_ex(y, RD(6), false) < 0, "Mismatch in shape", "[6]", "[2, 3]");
  assert_error(tg_backward_ex(y, RD(3, 2), false) < 0, "[3, 2]", "[2, 3]");
  end("backward grad_output shape");
}

static tg_tensor *gc_square(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  return tg_mul(in[0], in[0]);
}

static tg_tensor *gc_fail(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  return tg_reshape(in[0], TG_SHAPE(7));
}

static tg_tensor *gc_detached(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  (void)ctx;
  return tg_detach(in[0]);
}

static void test_gradcheck(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RD(2, 3), *f = RF(2);
  assert_int_equal(tg_set_requires_grad(x, true), 0);
  assert_int_equal(tg_set_requires_grad(f, true), 0);
  tg_tensor *in[2] = {x, NULL};
  assert_error(tg_gradcheck(NULL, NULL, in, 1, NULL) < 0, "tg_gradcheck",
               "expected fn and at least one input");
  assert_error(tg_gradcheck(gc_square, NULL, NULL, 1, NULL) < 0, "at least one input");
  assert_error(tg_gradcheck(gc_square, NULL, in, 0, NULL) < 0, "at least one input");
  assert_error(tg_gradcheck(gc_square, NULL, in, 2, NULL) < 0, "tg_gradcheck", "is NULL");
  assert_error(tg_gradcheck(gc_square, NULL, &f, 1, NULL) < 0, "input 0", "float32",
               "float64");
  assert_error(tg_gradcheck(gc_fail, NULL, in, 1, NULL) < 0, "tg_reshape",
               "shape '[7]' is invalid for input of size 6");
  assert_error(tg_gradcheck(gc_detached, NULL, in, 1, NULL) < 0, "does not require grad");
  assert_int_equal(tg_gradcheck(gc_square, NULL, in, 1, NULL), 0);
  end("gradcheck");
}

/* A zero or NaN eps cannot give finite differences: say so, instead of reporting a
 * Jacobian mismatch against a NaN "numerical" value. */
static void test_gradcheck_bad_eps(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RD(3);
  assert_int_equal(tg_set_requires_grad(x, true), 0);
  tg_gradcheck_options o = tg_gradcheck_options_default();
  o.eps = 0;
  assert_error(tg_gradcheck(gc_square, NULL, &x, 1, &o) < 0, "tg_gradcheck", "eps");
  o.eps = NAN;
  assert_error(tg_gradcheck(gc_square, NULL, &x, 1, &o) < 0, "tg_gradcheck", "eps");
  end("gradcheck eps");
}

/* ---------------------------------------------------------- elementwise -- */

typedef tg_tensor *(*binary_fn)(const tg_tensor *, const tg_tensor *);
typedef tg_tensor *(*unary_fn)(const tg_tensor *);

static tg_tensor *leaky(const tg_tensor *a) { return tg_leaky_relu(a, 0.1); }
static tg_tensor *powf3(const tg_tensor *a) { return tg_pow(a, 3); }
static tg_tensor *adds(const tg_tensor *a) { return tg_add_scalar(a, 1); }
static tg_tensor *subs(const tg_tensor *a) { return tg_sub_scalar(a, 1); }
static tg_tensor *muls(const tg_tensor *a) { return tg_mul_scalar(a, 2); }
static tg_tensor *divs(const tg_tensor *a) { return tg_div_scalar(a, 0); }

static void test_elementwise(void **state) {
  (void)state;
  begin();
  const struct {
    binary_fn fn;
    const char *name;
  } bins[] = {
      {tg_add, "tg_add"}, {tg_sub, "tg_sub"}, {tg_mul, "tg_mul"}, {tg_div, "tg_div"}};
  tg_tensor *a = RF(2, 3), *d = RD(2, 3), *i = ZI(2, 3), *v4 = RF(4);
  for (size_t k = 0; k < sizeof bins / sizeof *bins; k++) {
    binary_fn f = bins[k].fn;
    const char *op = bins[k].name;
    assert_error(f(NULL, a) == NULL, op, "argument 'a' is NULL");
    assert_error(f(a, NULL) == NULL, op, "argument 'b' is NULL");
    assert_error(f(a, d) == NULL, op, "same dtype", "float32 and float64");
    assert_error(f(i, i) == NULL, op, "floating point", "int64");
    assert_error(f(a, i) == NULL, op, "int64");
    assert_error(f(a, v4) == NULL, op,
                 "The size of tensor a (3) must match the size of tensor b (4) at "
                 "non-singleton dimension 1",
                 "[2, 3]", "[4]");
    assert_error(f(RF(2, 1, 3), RF(4, 2)) == NULL, op, "[2, 1, 3]", "[4, 2]");
    /* Zero-size dims broadcast like any other size. */
    expect_shape(f(RF(0, 3), RF(3)), 0, 3);
    expect_shape(f(RF(2, 1), RF(0)), 2, 0);
    expect_shape(f(RF(1, 0), RF(5, 1)), 5, 0);
    assert_error(f(RF(2, 3), RF(0)) == NULL, op, "(3)", "(0)", "[2, 3]", "[0]");
  }
  const struct {
    unary_fn fn;
    const char *name;
  } uns[] = {
      {tg_neg, "tg_neg"},       {tg_exp, "tg_exp"},         {tg_log, "tg_log"},
      {tg_sqrt, "tg_sqrt"},     {tg_abs, "tg_abs"},         {tg_relu, "tg_relu"},
      {leaky, "tg_leaky_relu"}, {tg_sigmoid, "tg_sigmoid"}, {tg_tanh, "tg_tanh"},
      {tg_gelu, "tg_gelu"},     {powf3, "tg_pow"},          {adds, "tg_add_scalar"},
      {subs, "tg_add_scalar"},  {muls, "tg_mul_scalar"},    {divs, "tg_mul_scalar"}};
  for (size_t k = 0; k < sizeof uns / sizeof *uns; k++) {
    unary_fn f = uns[k].fn;
    assert_error(f(NULL) == NULL, uns[k].name, "argument 'input' is NULL");
    assert_error(f(i) == NULL, uns[k].name, "floating point", "int64");
    expect_shape(f(RD(0, 2)), 0, 2);
    expect_scalar(f(tg_scalar(0.5, TG_F32, TG_CPU)));
  }
  /* The first failure of a chain is the one reported. */
  tg_tensor *y = tg_sum(tg_exp(tg_mul(tg_add(a, v4), a)));
  assert_error(y == NULL, "tg_add", "[2, 3]", "[4]");
  end("elementwise");
}

/* ----------------------------------------------------------- reductions -- */

static void test_reductions(void **state) {
  (void)state;
  begin();
  tg_tensor *t = RF(2, 3, 4), *i = ZI(2, 3);
  assert_error(tg_sum(NULL) == NULL, "tg_sum", "is NULL");
  assert_error(tg_mean(NULL) == NULL, "tg_mean", "is NULL");
  assert_error(tg_sum(i) == NULL, "tg_sum", "floating point", "int64");
  assert_error(tg_mean_dims(i, (int[]){0}, 1, false) == NULL, "tg_mean_dims", "int64");
  assert_error(tg_sum_dims(NULL, (int[]){0}, 1, false) == NULL, "tg_sum_dims", "is NULL");
  assert_error(tg_sum_dims(t, NULL, 2, false) == NULL, "tg_sum_dims", "dims is NULL");
  assert_error(tg_sum_dims(t, (int[]){0}, -1, false) == NULL, "n_dims negative (-1)");
  assert_error(tg_sum_dims(t, (int[]){3}, 1, false) == NULL, "tg_sum_dims",
               "Dimension out of range (expected to be in range of [-3, 2], but got 3)");
  assert_error(tg_mean_dims(t, (int[]){1, -2}, 2, true) == NULL, "tg_mean_dims",
               "dim 1 appears multiple times");
  assert_error(tg_sum_dims(tg_scalar(1, TG_F32, TG_CPU), (int[]){1}, 1, false) == NULL,
               "[-1, 0]", "got 1");
  expect_scalar(tg_sum_dims(tg_scalar(1, TG_F32, TG_CPU), (int[]){-1}, 1, true));

  /* Empty reductions: sums are 0 and means NaN, shapes as PyTorch. */
  tg_tensor *e = RF(2, 0, 3);
  tg_tensor *s = tg_sum(e), *m = tg_mean(e);
  expect_scalar(s);
  assert_true(tg_item(s) == 0.0);
  assert_true(isnan(tg_item(m)));
  tg_tensor *s1 = tg_sum_dims(e, (int[]){1}, 1, false);
  expect_shape(s1, 2, 3);
  assert_true(tg_item(tg_sum(tg_abs(s1))) == 0.0);
  tg_tensor *m1 = tg_mean_dims(e, (int[]){1}, 1, true);
  expect_shape(m1, 2, 1, 3);
  assert_true(isnan(((float *)tg_data(m1))[4]));
  expect_shape(tg_sum_dims(e, (int[]){0, 2}, 2, false), 0);
  expect_shape(tg_mean_dims(e, (int[]){0}, 1, true), 1, 0, 3);

  tg_tensor *idx = (tg_tensor *)&idx; /* must come back NULL on error */
  assert_error(tg_max_dim(NULL, 0, false, &idx) == NULL, "tg_max_dim", "is NULL");
  assert_null(idx);
  idx = (tg_tensor *)&idx;
  assert_error(tg_max_dim(t, 3, false, &idx) == NULL, "tg_max_dim", "got 3");
  assert_null(idx);
  assert_error(tg_max_dim(i, 0, false, NULL) == NULL, "tg_max_dim", "int64");
  assert_error(tg_argmax(NULL, 0, false) == NULL, "tg_argmax", "is NULL");
  assert_error(tg_argmax(t, -4, false) == NULL, "tg_argmax", "got -4");
  assert_error(tg_max_dim(RF(0, 3), 0, false, &idx) == NULL, "tg_max_dim",
               "Expected reduction dim 0 to have non-zero size", "[0, 3]");
  assert_null(idx);
  assert_error(tg_argmax(RF(2, 0), 1, true) == NULL, "tg_argmax", "dim 1", "[2, 0]");
  tg_tensor *v = tg_max_dim(RF(0, 3), 1, false, &idx);
  expect_shape(v, 0);
  expect_shape(idx, 0);
  assert_int_equal(tg_dtype_of(idx), TG_I64);
  expect_shape(tg_argmax(RF(0, 3, 2), 1, true), 0, 1, 2);
  end("reductions");
}

/* torch.max(torch.tensor(1.5), 0) gives values 1.5 and indices 0 (int64);
 * torch.tensor(1.5).argmax(0) is an int64 0. */
static void test_max_of_0dim(void **state) {
  (void)state;
  begin();
  tg_tensor *s = tg_scalar(1.5, TG_F32, TG_CPU), *idx = NULL;
  tg_tensor *v = tg_max_dim(s, 0, false, &idx);
  expect_scalar(v);
  assert_true(tg_item(v) == 1.5);
  expect_scalar(idx);
  assert_int_equal(tg_dtype_of(idx), TG_I64);
  assert_true(tg_item(idx) == 0.0);
  tg_tensor *a = tg_argmax(s, -1, false);
  expect_scalar(a);
  assert_int_equal(tg_dtype_of(a), TG_I64);
  assert_true(tg_item(a) == 0.0);
  end("max of a 0-dim tensor");
}

/* --------------------------------------------------------------- matmul -- */

static void test_matmul_linear(void **state) {
  (void)state;
  begin();
  tg_tensor *a = RF(2, 3), *b = RF(4, 5), *d = RD(3, 4), *i = ZI(3, 4);
  assert_error(tg_matmul(NULL, a) == NULL, "tg_matmul", "argument 'a' is NULL");
  assert_error(tg_matmul(a, NULL) == NULL, "tg_matmul", "argument 'b' is NULL");
  assert_error(tg_matmul(a, d) == NULL, "tg_matmul", "float32 and float64");
  assert_error(tg_matmul(ZI(2, 3), i) == NULL, "tg_matmul", "int64");
  assert_error(tg_matmul(a, b) == NULL,
               "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)");
  assert_error(tg_matmul(RF(3), RF(4)) == NULL, "(3 and 4)");
  assert_error(tg_matmul(tg_scalar(1, TG_F32, TG_CPU), RF(3)) == NULL,
               "at least 1D, but they are 0D and 1D");
  assert_error(tg_matmul(RF(2, 2, 3), RF(3, 3, 4)) == NULL,
               "batch dimensions cannot be broadcast", "[2, 2, 3]", "[3, 3, 4]");
  tg_tensor *z = tg_matmul(RF(2, 0), RF(0, 3));
  expect_shape(z, 2, 3);
  assert_true(tg_item(tg_sum(tg_abs(z))) == 0.0);
  expect_shape(tg_matmul(RF(0, 4), RF(4, 3)), 0, 3);
  expect_shape(tg_matmul(RF(0, 2, 3), RF(3, 4)), 0, 2, 4);
  expect_shape(tg_matmul(RF(2, 2, 3), RF(0, 1, 3, 4)), 0, 2, 2, 4);
  expect_scalar(tg_matmul(RF(0), RF(0)));

  tg_tensor *x = RF(2, 3), *w = RF(5, 3), *bias = RF(5);
  assert_error(tg_linear(NULL, w, bias) == NULL, "tg_linear", "argument 'input' is NULL");
  assert_error(tg_linear(x, NULL, bias) == NULL, "tg_linear",
               "argument 'weight' is NULL");
  assert_error(tg_linear(x, RF(5), NULL) == NULL, "mat1 and mat2 shapes", "(2x3 and 5)");
  assert_error(tg_linear(x, RF(3), bias) == NULL, "mat2 must be a matrix", "[3]");
  assert_error(tg_linear(tg_scalar(1, TG_F32, TG_CPU), w, NULL) == NULL,
               "at least 1 dimension");
  assert_error(tg_linear(x, RF(5, 4), NULL) == NULL,
               "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)", "[2, 3]",
               "[5, 4]");
  assert_error(tg_linear(x, w, RF(4)) == NULL, "bias must have shape [5]", "[5, 3]",
               "got [4]");
  assert_error(tg_linear(x, w, RF(1, 5)) == NULL, "bias", "[1, 5]");
  assert_error(tg_linear(x, w, RD(5)) == NULL, "tg_linear", "float32 and float64");
  assert_error(tg_linear(ZI(2, 3), ZI(5, 3), NULL) == NULL, "tg_linear", "int64");
  expect_shape(tg_linear(RF(0, 3), w, bias), 0, 5);
  expect_shape(tg_linear(RF(4, 0, 3), w, NULL), 4, 0, 5);
  /* in_features 0: the result is the bias (or zeros), as PyTorch. */
  tg_tensor *b0 = tg_linear(RF(2, 0), RF(5, 0), bias);
  expect_shape(b0, 2, 5);
  assert_true(((float *)tg_data(b0))[9] == ((float *)tg_data(bias))[4]);
  end("matmul and linear");
}

/* ------------------------------------------------------ softmax & losses -- */

static void test_softmax_losses(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(3, 5), *tgt = ZI(3), *i = ZI(3, 5);
  assert_error(tg_softmax(NULL, 0) == NULL, "tg_softmax", "is NULL");
  assert_error(tg_log_softmax(NULL, 0) == NULL, "tg_log_softmax", "is NULL");
  assert_error(tg_softmax(i, 1) == NULL, "tg_softmax", "int64");
  assert_error(tg_log_softmax(x, 2) == NULL, "tg_log_softmax", "[-2, 1]", "got 2");
  expect_shape(tg_softmax(RF(0, 3), 1), 0, 3);
  expect_shape(tg_log_softmax(RF(3, 0), 1), 3, 0);
  expect_shape(tg_softmax(RF(3, 0), 0), 3, 0);

  const struct {
    tg_tensor *(*fn)(const tg_tensor *, const tg_tensor *, tg_reduction, int64_t);
    const char *name, *arg;
  } cls[] = {{tg_cross_entropy, "tg_cross_entropy", "input"},
             {tg_nll_loss, "tg_nll_loss", "log_probs"}};
  for (int k = 0; k < 2; k++) {
    const char *op = cls[k].name;
    char arg[64];
    snprintf(arg, sizeof arg, "argument '%s' is NULL", cls[k].arg);
    tg_tensor *(*f)(const tg_tensor *, const tg_tensor *, tg_reduction, int64_t) =
        cls[k].fn;
    const tg_reduction mean = TG_REDUCTION_MEAN;
    assert_error(f(NULL, tgt, mean, -100) == NULL, op, arg);
    assert_error(f(x, NULL, mean, -100) == NULL, op, "argument 'target' is NULL");
    assert_error(f(x, RF(3), mean, -100) == NULL, op, "target of dtype int64", "float32");
    assert_error(f(i, tgt, mean, -100) == NULL, op, "floating point", "int64");
    assert_error(f(x, tgt, (tg_reduction)7, -100) == NULL, op, "invalid reduction 7");
    assert_error(f(tg_scalar(1, TG_F32, TG_CPU), tgt, mean, -100) == NULL, op, "0-dim");
    assert_error(f(x, ZI(4), mean, -100) == NULL, op,
                 "Expected input batch_size (3) to match target batch_size (4)", "[3, 5]",
                 "[4]");
    assert_error(f(x, ZI(3, 2), mean, -100) == NULL, op, "expected target of shape [3]",
                 "[3, 5]", "[3, 2]");
    assert_error(f(RF(2, 5, 4), ZI(2, 3), mean, -100) == NULL, op, "[2, 4]", "[2, 5, 4]",
                 "[2, 3]");
    assert_error(f(RF(5), ZI(1), mean, -100) == NULL, op, "[5]", "[1]");
    /* Class indices outside [0, C) that are not ignore_index. */
    tg_tensor *bad =
        tg_tensor_from_data((int64_t[]){0, 5, 1}, TG_SHAPE(3), TG_I64, TG_CPU);
    assert_error(f(x, bad, mean, -100) == NULL, op, "Target 5 is out of bounds", "[0, 5)",
                 "target element 1");
    tg_tensor *neg =
        tg_tensor_from_data((int64_t[]){0, -1, 1}, TG_SHAPE(3), TG_I64, TG_CPU);
    assert_error(f(x, neg, TG_REDUCTION_SUM, -100) == NULL, op,
                 "Target -1 is out of bounds");
    expect_scalar(f(x, neg, mean, -1));
    tg_tensor *big = tg_tensor_from_data((int64_t[]){0, INT64_MAX, INT64_MIN},
                                         TG_SHAPE(3), TG_I64, TG_CPU);
    assert_error(f(x, big, TG_REDUCTION_NONE, -100) == NULL, op,
                 "Target 9223372036854775807 is out of bounds");
    /* N = 0: mean of no targets is NaN, sum 0, none an empty tensor. */
    tg_tensor *m0 = f(RF(0, 5), ZI(0), mean, -100);
    expect_scalar(m0);
    assert_true(isnan(tg_item(m0)));
    tg_tensor *s0 = f(RD(0, 5), ZI(0), TG_REDUCTION_SUM, -100);
    expect_scalar(s0);
    assert_true(tg_item(s0) == 0.0);
    expect_shape(f(RF(0, 5), ZI(0), TG_REDUCTION_NONE, -100), 0);
    expect_shape(f(RF(2, 5, 0), ZI(2, 0), TG_REDUCTION_NONE, -100), 2, 0);
    assert_true(isnan(tg_item(f(RF(2, 5, 0), ZI(2, 0), mean, -100))));
    /* All targets ignored: NaN, as PyTorch. */
    tg_tensor *ign = tg_full(TG_SHAPE(3), -100, TG_I64, TG_CPU);
    assert_true(isnan(tg_item(f(x, ign, mean, -100))));
    /* [C] input with a 0-dim target. */
    expect_scalar(f(RF(5), tg_scalar(2, TG_I64, TG_CPU), mean, -100));
  }

  const struct {
    tg_tensor *(*fn)(const tg_tensor *, const tg_tensor *, tg_reduction);
    const char *name;
  } pw[] = {{tg_mse_loss, "tg_mse_loss"},
            {tg_binary_cross_entropy_with_logits, "tg_binary_cross_entropy_with_logits"}};
  for (int k = 0; k < 2; k++) {
    const char *op = pw[k].name;
    tg_tensor *(*f)(const tg_tensor *, const tg_tensor *, tg_reduction) = pw[k].fn;
    assert_error(f(NULL, x, TG_REDUCTION_MEAN) == NULL, op, "argument 'input' is NULL");
    assert_error(f(x, NULL, TG_REDUCTION_MEAN) == NULL, op, "argument 'target' is NULL");
    assert_error(f(x, RD(3, 5), TG_REDUCTION_MEAN) == NULL, op, "float32 and float64");
    assert_error(f(i, i, TG_REDUCTION_MEAN) == NULL, op, "int64");
    assert_error(f(x, x, (tg_reduction)-1) == NULL, op, "invalid reduction -1");
    assert_error(f(x, RF(5), TG_REDUCTION_SUM) == NULL, op,
                 "Target size ([5]) must be the same as input size ([3, 5])");
    assert_error(f(x, RF(5, 3), TG_REDUCTION_NONE) == NULL, op, "[5, 3]", "[3, 5]");
    tg_tensor *m0 = f(RF(0, 3), RF(0, 3), TG_REDUCTION_MEAN);
    expect_scalar(m0);
    assert_true(isnan(tg_item(m0)));
    assert_true(tg_item(f(RD(0), RD(0), TG_REDUCTION_SUM)) == 0.0);
    expect_shape(f(RF(0, 3), RF(0, 3), TG_REDUCTION_NONE), 0, 3);
  }
  end("softmax and losses");
}

/* ---------------------------------------------------------------- norms -- */

static void test_group_norm(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(2, 6, 4), *w = RF(6), *b = RF(6);
  const char *op = "tg_group_norm";
  assert_error(tg_group_norm(NULL, 2, w, b, 1e-5) == NULL, op,
               "argument 'input' is NULL");
  assert_error(tg_group_norm(RF(6), 2, NULL, NULL, 1e-5) == NULL, op,
               "Expected at least 2 dimensions", "received 1", "[6]");
  assert_error(tg_group_norm(x, 0, w, b, 1e-5) == NULL, op,
               "Expected num groups to be greater than 0, got 0");
  assert_error(tg_group_norm(x, -2, w, b, 1e-5) == NULL, op, "got -2");
  assert_error(tg_group_norm(x, 4, w, b, 1e-5) == NULL, op, "divisible by num_groups",
               "[2, 6, 4]", "num_groups=4");
  assert_error(tg_group_norm(x, 7, NULL, NULL, 1e-5) == NULL, op, "num_groups=7");
  assert_error(tg_group_norm(x, INT64_MAX, NULL, NULL, 1e-5) == NULL, op,
               "num_groups=9223372036854775807");
  assert_error(tg_group_norm(x, 2, RF(5), b, 1e-5) == NULL, op,
               "Expected weight to be a vector", "[5]", "[2, 6, 4]");
  assert_error(tg_group_norm(x, 2, w, RF(6, 1), 1e-5) == NULL, op,
               "Expected bias to be a vector", "[6, 1]", "[2, 6, 4]");
  assert_error(tg_group_norm(x, 2, RD(6), b, 1e-5) == NULL, op, "float32 and float64");
  assert_error(tg_group_norm(ZI(2, 6, 4), 2, NULL, NULL, 1e-5) == NULL, op, "int64");
  const double bad_eps[] = {NAN, INFINITY, -INFINITY};
  for (size_t k = 0; k < sizeof bad_eps / sizeof *bad_eps; k++)
    assert_error(tg_group_norm(x, 2, w, b, bad_eps[k]) == NULL, op,
                 "expected eps to be a finite number");
  /* eps 0 and negative eps, as PyTorch takes them. */
  tg_tensor_free(tg_group_norm(x, 2, w, b, 0.0));
  tg_tensor_free(tg_group_norm(x, 2, w, b, -1e-5));
  assert_string_equal(tg_last_error(), "");
  /* An empty batch normalises to an empty result; no channels or no elements per
   * channel are errors, as in PyTorch. */
  expect_shape(tg_group_norm(RF(0, 6, 4), 3, w, b, 1e-5), 0, 6, 4);
  assert_error(tg_group_norm(RF(2, 6, 0), 3, w, b, 1e-5) == NULL, op,
               "Expected HxW to be greater than 0, got 0");
  assert_error(tg_group_norm(RF(2, 0, 3), 1, NULL, NULL, 1e-5) == NULL, op,
               "Expected number of channels to be greater than 0, got 0");
  expect_shape(tg_group_norm(RD(3, 4), 2, NULL, NULL, 1e-5), 3, 4);
  /* And backward through an empty one gives empty/zero gradients. */
  tg_tensor *e = RD(0, 4, 2), *we = RD(4);
  assert_int_equal(tg_set_requires_grad(e, true), 0);
  assert_int_equal(tg_set_requires_grad(we, true), 0);
  assert_int_equal(tg_backward(tg_sum(tg_group_norm(e, 2, we, NULL, 1e-5))), 0);
  expect_shape(tg_grad(e), 0, 4, 2);
  assert_true(tg_item(tg_sum(tg_abs(tg_grad(we)))) == 0.0);
  end("group_norm");
}

static void test_batch_layer_norm(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(4, 3, 2, 2), *w = RF(3), *b = RF(3);
  tg_tensor *rm = tg_zeros(TG_SHAPE(3), TG_F32, TG_CPU);
  tg_tensor *rv = tg_ones(TG_SHAPE(3), TG_F32, TG_CPU);
  const char *op = "tg_batch_norm";
  assert_error(tg_batch_norm(NULL, w, b, rm, rv, true, 0.1, 1e-5) == NULL, op, "is NULL");
  assert_error(tg_batch_norm(RF(3), w, b, rm, rv, true, 0.1, 1e-5) == NULL, op,
               "Expected 2D or more input", "[3]");
  assert_error(tg_batch_norm(x, w, b, rm, NULL, true, 0.1, 1e-5) == NULL, op,
               "both be given", "running_mean only");
  assert_error(tg_batch_norm(x, w, b, NULL, rv, true, 0.1, 1e-5) == NULL, op,
               "running_var only");
  assert_error(tg_batch_norm(x, w, b, NULL, NULL, false, 0.1, 1e-5) == NULL, op,
               "running_mean must be defined in evaluation mode");
  assert_error(tg_batch_norm(x, RF(4), b, rm, rv, true, 0.1, 1e-5) == NULL, op,
               "weight should contain 3 elements not 4", "[4, 3, 2, 2]");
  assert_error(tg_batch_norm(x, w, b, RF(2), RF(2), true, 0.1, 1e-5) == NULL, op,
               "running_mean should contain 3 elements not 2");
  assert_error(tg_batch_norm(x, w, RD(3), rm, rv, true, 0.1, 1e-5) == NULL, op,
               "float32 and float64");
  assert_error(tg_batch_norm(x, w, b, ZI(3), rv, true, 0.1, 1e-5) == NULL, op, "int64");
  assert_error(tg_batch_norm(RF(1, 3), NULL, NULL, NULL, NULL, true, 0.1, 1e-5) == NULL,
               op, "Expected more than 1 value per channel when training", "[1, 3]");
  assert_error(tg_batch_norm(RF(1, 3, 1, 1), w, b, rm, rv, true, 0.1, 1e-5) == NULL, op,
               "more than 1 value per channel", "[1, 3, 1, 1]");
  assert_error(tg_batch_norm(x, w, b, rm, rv, true, NAN, 1e-5) == NULL, op,
               "finite momentum");
  assert_error(tg_batch_norm(x, w, b, rm, rv, true, 0.1, -INFINITY) == NULL, op,
               "eps to be a finite number", "-inf");
  assert_error(tg_batch_norm(x, w, b, rm, rv, false, 0.1, NAN) == NULL, op, "eps");
  /* A failed call leaves the running stats alone. */
  assert_true(tg_item(tg_sum(rm)) == 0.0 && tg_item(tg_sum(rv)) == 3.0);
  /* N = 0: an empty result, running stats unchanged, in training and evaluation. */
  expect_shape(tg_batch_norm(RF(0, 3, 2, 2), w, b, rm, rv, true, 0.1, 1e-5), 0, 3, 2, 2);
  expect_shape(tg_batch_norm(RF(0, 3), NULL, NULL, NULL, NULL, true, 0.1, 1e-5), 0, 3);
  expect_shape(tg_batch_norm(RF(0, 3), w, b, rm, rv, false, 0.1, 1e-5), 0, 3);
  assert_true(tg_item(tg_sum(rm)) == 0.0 && tg_item(tg_sum(rv)) == 3.0);

  op = "tg_layer_norm";
  tg_tensor *y = RF(2, 3);
  assert_error(tg_layer_norm(NULL, TG_SHAPE(3), NULL, NULL, 1e-5) == NULL, op, "is NULL");
  assert_error(tg_layer_norm(y, NULL, 1, NULL, NULL, 1e-5) == NULL, op,
               "at least 1-dimensional");
  const int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  assert_error(tg_layer_norm(y, s9, 0, NULL, NULL, 1e-5) == NULL, op,
               "at least 1-dimensional");
  assert_error(tg_layer_norm(y, s9, 9, NULL, NULL, 1e-5) == NULL, op, "9 dims");
  assert_error(tg_layer_norm(y, TG_SHAPE(4), NULL, NULL, 1e-5) == NULL, op,
               "Given normalized_shape=[4], expected input with shape [*, 4], but got "
               "input of size[2, 3]");
  assert_error(tg_layer_norm(y, TG_SHAPE(1, 2, 3), NULL, NULL, 1e-5) == NULL, op,
               "[1, 2, 3]", "[2, 3]");
  assert_error(tg_layer_norm(y, TG_SHAPE(3), RF(4), NULL, 1e-5) == NULL, op,
               "Expected weight to be of same shape as normalized_shape", "[4]", "[3]");
  assert_error(tg_layer_norm(y, TG_SHAPE(3), NULL, RF(1, 3), 1e-5) == NULL, op,
               "Expected bias", "[1, 3]");
  assert_error(tg_layer_norm(y, TG_SHAPE(3), RD(3), NULL, 1e-5) == NULL, op,
               "float32 and float64");
  assert_error(tg_layer_norm(y, TG_SHAPE(3), NULL, NULL, NAN) == NULL, op, "eps");
  assert_error(tg_layer_norm(y, TG_SHAPE(3), NULL, NULL, INFINITY) == NULL, op, "eps");
  expect_shape(tg_layer_norm(RF(0, 3), TG_SHAPE(3), RF(3), RF(3), 1e-5), 0, 3);
  expect_shape(tg_layer_norm(RF(3, 0), TG_SHAPE(0), NULL, NULL, 1e-5), 3, 0);
  expect_shape(tg_layer_norm(RF(2, 0, 3), TG_SHAPE(0, 3), NULL, RF(0, 3), 1e-5), 2, 0, 3);
  end("batch_norm and layer_norm");
}

/* ------------------------------------------------------------------ conv -- */

static void test_conv(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(2, 3, 5, 5), *w = RF(4, 3, 3, 3), *b = RF(4);
  const char *op = "tg_conv2d";
  assert_error(tg_conv2d(NULL, w, b, NULL, NULL, NULL, 1) == NULL, op,
               "argument 'input' is NULL");
  assert_error(tg_conv2d(x, NULL, b, NULL, NULL, NULL, 1) == NULL, op,
               "argument 'weight' is NULL");
  assert_error(tg_conv2d(x, RD(4, 3, 3, 3), b, NULL, NULL, NULL, 1) == NULL, op,
               "float32 and float64");
  assert_error(tg_conv2d(x, w, RD(4), NULL, NULL, NULL, 1) == NULL, op, "float64");
  assert_error(tg_conv2d(ZI(2, 3, 5, 5), ZI(4, 3, 3, 3), NULL, NULL, NULL, NULL, 1) ==
                   NULL,
               op, "int64");
  assert_error(tg_conv2d(x, w, b, NULL, (int64_t[]){-1, 0}, NULL, 1) == NULL, op,
               "negative padding", "[-1, 0]");
  assert_error(tg_conv2d(x, w, b, (int64_t[]){1, 0}, NULL, NULL, 1) == NULL, op,
               "non-positive stride", "[1, 0]");
  assert_error(tg_conv2d(x, w, b, (int64_t[]){-2, 1}, NULL, NULL, 1) == NULL, op,
               "stride");
  assert_error(tg_conv2d(x, w, b, NULL, NULL, (int64_t[]){0, 1}, 1) == NULL, op,
               "dilation should be greater than zero");
  assert_error(tg_conv2d(x, w, b, NULL, NULL, NULL, 0) == NULL, op, "non-positive groups",
               "0");
  assert_error(tg_conv2d(x, w, b, NULL, NULL, NULL, -3) == NULL, op, "groups -3");
  assert_error(tg_conv2d(x, RF(4, 3, 3), b, NULL, NULL, NULL, 1) == NULL, op,
               "4-dimensional weight", "[4, 3, 3]");
  assert_error(tg_conv2d(RF(5, 5), w, b, NULL, NULL, NULL, 1) == NULL, op,
               "Expected 4-dimensional input for 4-dimensional weight [4, 3, 3, 3]",
               "2-dimensional input of size [5, 5]");
  assert_error(tg_conv2d(x, w, b, NULL, NULL, NULL, 5) == NULL, op,
               "Given groups=5, expected weight to be at least 5 at dimension 0",
               "[4, 3, 3, 3]");
  assert_error(tg_conv2d(RF(2, 9, 5, 5), w, b, NULL, NULL, NULL, 3) == NULL, op,
               "divisible by 3 at dimension 0", "[4, 3, 3, 3]");
  assert_error(tg_conv2d(RF(2, 4, 5, 5), w, b, NULL, NULL, NULL, 1) == NULL, op,
               "weight of size [4, 3, 3, 3], expected input[2, 4, 5, 5] to have 3 "
               "channels, but got 4 channels instead");
  assert_error(tg_conv2d(x, RF(4, 3, 3, 3), b, NULL, NULL, NULL, 2) == NULL, op,
               "Given groups=2", "expected input[2, 3, 5, 5] to have 6 channels");
  assert_error(tg_conv2d(x, w, RF(3), NULL, NULL, NULL, 1) == NULL, op,
               "expected bias to be 1-dimensional with 4 elements", "[3]");
  assert_error(tg_conv2d(x, w, RF(1, 4), NULL, NULL, NULL, 1) == NULL, op, "[1, 4]");
  /* Kernel, stride, padding and dilation that leave no output position. */
  assert_error(tg_conv2d(RF(1, 3, 2, 5), w, b, NULL, NULL, NULL, 1) == NULL, op,
               "Calculated padded input size per channel: (2 x 5)",
               "Kernel size: (3 x 3)", "[1, 3, 2, 5]", "[4, 3, 3, 3]");
  assert_error(tg_conv2d(x, w, b, NULL, NULL, (int64_t[]){3, 1}, 1) == NULL, op,
               "Kernel size: (7 x 3)");
  assert_error(tg_conv2d(RF(1, 3, 0, 5), RF(4, 3, 1, 1), NULL, NULL, NULL, NULL, 1) ==
                   NULL,
               op, "(0 x 5)", "Kernel size: (1 x 1)");
  expect_shape(tg_conv2d(RF(1, 3, 1, 1), w, b, NULL, (int64_t[]){1, 1}, NULL, 1), 1, 4, 1,
               1);
  /* N = 0: an empty batch, as PyTorch; and backward through it. */
  expect_shape(tg_conv2d(RF(0, 3, 5, 5), w, b, NULL, NULL, NULL, 1), 0, 4, 3, 3);
  tg_tensor *x0 = RD(0, 3, 5, 5), *w0 = RD(4, 3, 3, 3), *b0 = RD(4);
  assert_int_equal(tg_set_requires_grad(x0, true), 0);
  assert_int_equal(tg_set_requires_grad(w0, true), 0);
  assert_int_equal(tg_set_requires_grad(b0, true), 0);
  assert_int_equal(tg_backward(tg_sum(tg_conv2d(x0, w0, b0, NULL, NULL, NULL, 1))), 0);
  expect_shape(tg_grad(x0), 0, 3, 5, 5);
  assert_true(tg_item(tg_sum(tg_abs(tg_grad(w0)))) == 0.0);
  assert_true(tg_item(tg_sum(tg_abs(tg_grad(b0)))) == 0.0);

  op = "tg_conv_transpose2d";
  tg_tensor *wt = RF(3, 4, 3, 3);
  assert_error(tg_conv_transpose2d(NULL, wt, NULL, NULL, NULL, NULL, NULL, 1) == NULL, op,
               "is NULL");
  assert_error(tg_conv_transpose2d(x, NULL, NULL, NULL, NULL, NULL, NULL, 1) == NULL, op,
               "argument 'weight' is NULL");
  assert_error(
      tg_conv_transpose2d(x, wt, NULL, NULL, NULL, (int64_t[]){0, -1}, NULL, 1) == NULL,
      op, "negative output_padding", "[0, -1]");
  assert_error(tg_conv_transpose2d(x, wt, NULL, (int64_t[]){2, 2}, NULL,
                                   (int64_t[]){2, 0}, NULL, 1) == NULL,
               op, "output padding must be smaller than either stride or dilation");
  assert_error(tg_conv_transpose2d(RF(2, 4, 5, 5), wt, NULL, NULL, NULL, NULL, NULL, 1) ==
                   NULL,
               op, "Given transposed=1, weight of size [3, 4, 3, 3]",
               "expected input[2, 4, 5, 5] to have 3 channels");
  assert_error(tg_conv_transpose2d(x, wt, RF(3), NULL, NULL, NULL, NULL, 1) == NULL, op,
               "expected bias to be 1-dimensional with 4 elements");
  assert_error(tg_conv_transpose2d(x, wt, NULL, NULL, NULL, NULL, NULL, 2) == NULL, op,
               "Given groups=2", "divisible by 2");
  assert_error(tg_conv_transpose2d(RF(1, 3, 1, 1), RF(3, 4, 1, 1), NULL, NULL,
                                   (int64_t[]){1, 1}, NULL, NULL, 1) == NULL,
               op, "Output size is too small", "(1 x 1)", "(-1 x -1)");
  assert_error(tg_conv_transpose2d(x, wt, NULL, NULL, NULL, NULL, NULL, 0) == NULL, op,
               "groups");
  expect_shape(tg_conv_transpose2d(RF(0, 3, 5, 5), wt, RF(4), NULL, NULL, NULL, NULL, 1),
               0, 4, 7, 7);
  end("conv");
}

/* PyTorch: "kernel size should be greater than zero, but got kernel_height: 0
 * kernel_width: 3" (a weight [4, 3, 0, 3] is no convolution). */
static void test_conv_zero_kernel(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(1, 3, 5, 5);
  assert_error(tg_conv2d(x, RF(4, 3, 0, 3), NULL, NULL, NULL, NULL, 1) == NULL,
               "tg_conv2d", "kernel size should be greater than zero", "[4, 3, 0, 3]");
  assert_error(
      tg_conv_transpose2d(x, RF(3, 4, 3, 0), NULL, NULL, NULL, NULL, NULL, 1) == NULL,
      "tg_conv_transpose2d", "kernel size should be greater than zero", "[3, 4, 3, 0]");
  end("conv with a zero-size kernel");
}

/* PyTorch: conv_transpose2d of [1, 3, 0, 5] fails ("Only zero batch or zero channel
 * inputs are supported, but got input shape: [1, 3, 0, 5]"): an empty image has no
 * (H - 1) * stride + kernel output. */
static void test_conv_transpose_empty_image(void **state) {
  (void)state;
  begin();
  tg_tensor *y = tg_conv_transpose2d(RF(1, 3, 0, 5), RF(3, 4, 3, 3), RF(4), NULL, NULL,
                                     NULL, NULL, 1);
  assert_error(y == NULL, "tg_conv_transpose2d", "[1, 3, 0, 5]");
  end("conv_transpose2d of an empty image");
}

/* ------------------------------------------------------ pool & upsample -- */

static void test_pool(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(2, 3, 4, 4);
  const struct {
    tg_tensor *(*fn)(const tg_tensor *, const int64_t[2], const int64_t[2],
                     const int64_t[2]);
    const char *name;
  } pools[] = {{tg_max_pool2d, "tg_max_pool2d"}, {tg_avg_pool2d, "tg_avg_pool2d"}};
  for (int k = 0; k < 2; k++) {
    const char *op = pools[k].name;
    tg_tensor *(*f)(const tg_tensor *, const int64_t[2], const int64_t[2],
                    const int64_t[2]) = pools[k].fn;
    const int64_t k2[2] = {2, 2};
    assert_error(f(NULL, k2, NULL, NULL) == NULL, op, "argument 'input' is NULL");
    assert_error(f(ZI(2, 3, 4, 4), k2, NULL, NULL) == NULL, op, "int64");
    assert_error(f(RF(4, 4), k2, NULL, NULL) == NULL, op, "4D", "[4, 4]");
    assert_error(f(x, NULL, NULL, NULL) == NULL, op, "argument 'kernel' is NULL");
    assert_error(f(x, (int64_t[]){0, 2}, NULL, NULL) == NULL, op,
                 "kernel size should be greater than zero", "kH: 0");
    assert_error(f(x, k2, (int64_t[]){2, 0}, NULL) == NULL, op,
                 "stride should be greater than zero", "dW: 0");
    assert_error(f(x, k2, NULL, (int64_t[]){-1, 0}) == NULL, op,
                 "pad must be non-negative", "padH: -1");
    assert_error(f(x, k2, NULL, (int64_t[]){0, 2}) == NULL, op,
                 "pad should be smaller than or equal to half of kernel size",
                 "padW = 2");
    assert_error(f(RF(1, 1, 2, 2), (int64_t[]){3, 3}, NULL, NULL) == NULL, op,
                 "Given input size: (1x2x2). Calculated output size: (1x0x0). Output "
                 "size is too small");
    assert_error(f(RF(1, 2, 0, 4), k2, NULL, NULL) == NULL, op, "too small");
    expect_shape(f(RF(0, 3, 4, 4), k2, NULL, NULL), 0, 3, 2, 2);
    expect_shape(f(x, (int64_t[]){3, 3}, (int64_t[]){INT64_MAX, INT64_MAX}, NULL), 2, 3,
                 1, 1);
  }

  const char *op = "tg_adaptive_avg_pool2d";
  assert_error(tg_adaptive_avg_pool2d(NULL, (int64_t[]){2, 2}) == NULL, op, "is NULL");
  assert_error(tg_adaptive_avg_pool2d(x, NULL) == NULL, op,
               "argument 'output_size' is NULL");
  assert_error(tg_adaptive_avg_pool2d(x, (int64_t[]){-1, 2}) == NULL, op,
               "greater than or equal to 0", "{-1, 2}");
  assert_error(tg_adaptive_avg_pool2d(RF(1, 3, 0, 4), (int64_t[]){2, 2}) == NULL, op,
               "non-zero size for non-batch dimensions", "[1, 3, 0, 4]");
  assert_error(tg_adaptive_avg_pool2d(RF(4, 4), (int64_t[]){2, 2}) == NULL, op, "4D");
  assert_error(tg_adaptive_avg_pool2d(x, (int64_t[]){BIG, BIG}) == NULL,
               "more elements than int64 can count",
               "[2, 3, 4611686018427387904, 4611686018427387904]");
  expect_shape(tg_adaptive_avg_pool2d(RF(0, 3, 4, 4), (int64_t[]){2, 2}), 0, 3, 2, 2);
  expect_shape(tg_adaptive_avg_pool2d(x, (int64_t[]){0, 0}), 2, 3, 0, 0);

  const struct {
    tg_tensor *(*fn)(const tg_tensor *, const int64_t[2]);
    const char *name;
  } ups[] = {{tg_upsample_nearest2d, "tg_upsample_nearest2d"},
             {tg_upsample_bilinear2d, "tg_upsample_bilinear2d"}};
  for (int k = 0; k < 2; k++) {
    op = ups[k].name;
    tg_tensor *(*f)(const tg_tensor *, const int64_t[2]) = ups[k].fn;
    assert_error(f(NULL, (int64_t[]){8, 8}) == NULL, op, "is NULL");
    assert_error(f(x, NULL) == NULL, op, "argument 'output_size' is NULL");
    assert_error(f(x, (int64_t[]){0, 8}) == NULL, op,
                 "Input and output sizes should be greater than 0",
                 "output (H: 0, W: 8)");
    assert_error(f(RF(1, 3, 0, 4), (int64_t[]){8, 8}) == NULL, op, "input (H: 0, W: 4)");
    assert_error(f(ZI(1, 1, 2, 2), (int64_t[]){4, 4}) == NULL, op, "int64");
    assert_error(f(x, (int64_t[]){BIG, BIG}) == NULL, "more elements than int64");
    expect_shape(f(RF(0, 3, 4, 4), (int64_t[]){8, 8}), 0, 3, 8, 8);
  }

  op = "tg_dropout";
  assert_error(tg_dropout(NULL, 0.5, true) == NULL, op, "is NULL");
  assert_error(tg_dropout(x, -0.1, true) == NULL, op,
               "dropout probability has to be between 0 and 1, but got -0.1");
  assert_error(tg_dropout(x, 1.5, false) == NULL, op, "got 1.5");
  assert_error(tg_dropout(x, NAN, true) == NULL, op, "got nan");
  assert_error(tg_dropout(ZI(3), 0.5, true) == NULL, op, "int64");
  expect_shape(tg_dropout(RF(0, 3), 0.5, true), 0, 3);
  assert_true(tg_item(tg_sum(tg_abs(tg_dropout(x, 1.0, true)))) == 0.0);
  end("pool, upsample and dropout");
}

/* ------------------------------------------------------------ var store -- */

static void test_varstore(void **state) {
  (void)state;
  begin();
  tg_init c0 = tg_init_const(0);
  tg_varstore_free(NULL);
  assert_int_equal(tg_varstore_device(NULL).type, TG_DEVICE_CPU);
  assert_true(tg_dtype_size(tg_varstore_dtype(NULL)) > 0);
  assert_int_equal(tg_varstore_len(NULL), 0);
  assert_false(tg_varstore_is_trainable(NULL, 0));
  tg_varstore_freeze(NULL);
  tg_varstore_unfreeze(NULL);
  assert_null(tg_varstore_get(NULL, "w"));
  assert_error(tg_varstore_root(NULL) == NULL, "tg_varstore_root",
               "argument 'vs' is NULL");
  assert_error(tg_varstore_set_dtype(NULL, TG_F64) < 0, "tg_varstore_set_dtype",
               "is NULL");
  assert_error(tg_varstore_var(NULL, 0, NULL) == NULL, "tg_varstore_var", "is NULL");

  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_non_null(vs);
  tg_path *root = tg_varstore_root(vs);
  assert_error(tg_varstore_set_dtype(vs, TG_I64) < 0, "float32 or float64", "int64");
  assert_error(tg_varstore_set_dtype(vs, (tg_dtype)8) < 0, "tg_varstore_set_dtype");
  assert_int_equal(tg_varstore_dtype(vs), TG_F32);

  assert_error(tg_path_sub(NULL, "a") == NULL, "tg_path_sub", "argument 'path' is NULL");
  assert_error(tg_path_sub(root, NULL) == NULL, "tg_path_sub", "argument 'name' is NULL");
  assert_error(tg_path_sub(root, "") == NULL, "tg_path_sub", "must not be empty");
  assert_error(tg_path_sub(root, "a.b") == NULL, "name 'a.b' must not contain '.'");
  tg_path *enc = tg_path_sub(root, "enc");
  assert_non_null(enc);
  assert_ptr_equal(tg_path_sub(root, "enc"), enc);

  assert_error(tg_path_var(NULL, "w", TG_SHAPE(2), c0) == NULL, "tg_path_var",
               "argument 'path' is NULL");
  assert_error(tg_path_var_frozen(NULL, "w", TG_SHAPE(2), c0) == NULL,
               "tg_path_var_frozen", "is NULL");
  assert_error(tg_path_var(enc, NULL, TG_SHAPE(2), c0) == NULL,
               "argument 'name' is NULL");
  assert_error(tg_path_var(enc, "", TG_SHAPE(2), c0) == NULL, "must not be empty");
  assert_error(tg_path_var(enc, "w.x", TG_SHAPE(2), c0) == NULL, "must not contain '.'");
  assert_non_null(tg_path_var(enc, "w", TG_SHAPE(2, 3), tg_init_kaiming_uniform()));
  assert_error(tg_path_var(enc, "w", TG_SHAPE(2, 3), c0) == NULL, "tg_path_var",
               "a variable named 'enc.w' already exists");
  assert_error(tg_path_var_frozen(enc, "w", TG_SHAPE(1), c0) == NULL,
               "tg_path_var_frozen", "'enc.w' already exists");
  assert_error(tg_path_var(enc, "neg", TG_SHAPE(2, -1), c0) == NULL, "tg_path_var",
               "negative dimension -1", "[2, -1]");
  assert_error(tg_path_var(enc, "big", TG_SHAPE(BIG, BIG), c0) == NULL, "tg_path_var",
               "more elements than int64");
  const int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  assert_error(tg_path_var(enc, "deep", s9, 9, c0) == NULL, "at most 8 dimensions");
  assert_error(tg_path_var(enc, "nos", NULL, 2, c0) == NULL, "shape is NULL");
  assert_error(tg_path_var(enc, "k", TG_SHAPE(5), tg_init_kaiming_uniform()) == NULL,
               "Fan in and fan out can not be computed", "'enc.k'", "[5]");
  assert_error(tg_path_var(enc, "u", TG_SHAPE(5), tg_init_uniform(1, -1)) == NULL,
               "uniform init of 'enc.u'", "lo=1", "hi=-1");
  assert_error(tg_path_var(enc, "u", TG_SHAPE(5), tg_init_uniform(0, NAN)) == NULL,
               "uniform init");
  assert_error(tg_path_var(enc, "r", TG_SHAPE(5), tg_init_randn(0, -1)) == NULL,
               "normal init of 'enc.r'", "std >= 0.0", "std=-1");
  assert_error(tg_path_var(enc, "r", TG_SHAPE(5), tg_init_randn(INFINITY, 1)) == NULL,
               "finite mean");
  assert_error(tg_path_var(enc, "q", TG_SHAPE(5), (tg_init){(tg_init_kind)42, 0, 0}) ==
                   NULL,
               "unknown init kind 42", "'enc.q'");
  /* Failed creations add nothing; a zero-size variable is fine. */
  assert_int_equal(tg_varstore_len(vs), 1);
  expect_shape(tg_path_var(enc, "empty", TG_SHAPE(0, 4), tg_init_kaiming_uniform()), 0,
               4);
  assert_int_equal(tg_varstore_len(vs), 2);

  const char *name = "sentinel";
  assert_error(tg_varstore_var(vs, 2, &name) == NULL,
               "index 2 is out of range for a var store of 2 variables");
  assert_null(name);
  assert_error(tg_varstore_var(vs, -1, NULL) == NULL, "index -1");
  assert_false(tg_varstore_is_trainable(vs, 2));
  assert_false(tg_varstore_is_trainable(vs, -1));
  assert_null(tg_varstore_get(vs, NULL));
  assert_null(tg_varstore_get(vs, "enc.nothing"));
  assert_non_null(tg_varstore_get(vs, "enc.w"));
  assert_int_equal(tg_last_error()[0], '\0');
  tg_varstore_free(vs);
  end("var store");
}

/* ----------------------------------------------------------- checkpoints -- */

static void test_checkpoint_files(void **state) {
  (void)state;
  begin();
  char dir[] = "/tmp/tg_errors_XXXXXX", path[128], other[128], junk[128];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/a.safetensors", dir);
  snprintf(other, sizeof other, "%s/b.safetensors", dir);
  snprintf(junk, sizeof junk, "%s/junk.safetensors", dir);

  tg_varstore *vs = tg_varstore_new(TG_CPU), *vs2 = tg_varstore_new(TG_CPU);
  tg_tensor *w = tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2, 3), tg_init_const(7));
  assert_non_null(w);
  assert_non_null(
      tg_path_var(tg_varstore_root(vs2), "w", TG_SHAPE(3, 2), tg_init_const(1)));
  assert_non_null(
      tg_path_var(tg_varstore_root(vs2), "extra", TG_SHAPE(1), tg_init_const(1)));

  assert_error(tg_varstore_save(NULL, path) < 0, "tg_varstore_save",
               "argument 'vs' is NULL");
  assert_error(tg_varstore_save(vs, NULL) < 0, "argument 'filename' is NULL");
  assert_error(tg_varstore_save(vs, "/nonexistent-tg-dir/x.safetensors") < 0,
               "tg_varstore_save", "cannot create", "/nonexistent-tg-dir/x.safetensors");
  assert_error(tg_varstore_save(vs, dir) < 0, "tg_varstore_save", dir);
  assert_int_equal(tg_varstore_save(vs, path), 0);
  assert_int_equal(tg_varstore_save(vs2, other), 0);

  assert_error(tg_varstore_load(NULL, path) < 0, "tg_varstore_load",
               "argument 'vs' is NULL");
  assert_error(tg_varstore_load(vs, NULL) < 0, "argument 'filename' is NULL");
  assert_error(tg_varstore_load(vs, "/nonexistent-tg-dir/missing.safetensors") < 0,
               "tg_varstore_load", "cannot open", "missing.safetensors", "No such file");
  assert_error(tg_varstore_load(vs, dir) < 0, "tg_varstore_load", dir);
  FILE *f = fopen(junk, "wb");
  assert_non_null(f);
  fputs("abc", f);
  fclose(f);
  assert_error(tg_varstore_load(vs, junk) < 0, "not a valid safetensors file",
               "fewer than the 8");
  /* A file of another model: every difference named, the store left unchanged. */
  assert_error(tg_varstore_load(vs, other) < 0, "does not match the var store",
               "not in the var store: \"extra\"",
               "\"w\" (file F32 [3, 2], store F32 [2, 3])");
  assert_error(tg_varstore_load(vs2, path) < 0, "missing from the file: \"extra\"");
  tg_no_grad_begin(); /* a graph on w would keep set_dtype from converting it */
  assert_true(tg_item(tg_sum(w)) == 42.0);
  tg_no_grad_end();
  /* float64 stores do not load float32 files. */
  assert_int_equal(tg_varstore_set_dtype(vs, TG_F64), 0);
  assert_error(tg_varstore_load(vs, path) < 0, "dtype or shape mismatch", "F32", "F64");
  tg_varstore_free(vs);
  tg_varstore_free(vs2);
  unlink(path);
  unlink(other);
  unlink(junk);
  assert_int_equal(rmdir(dir), 0);
  end("checkpoint files");
}

/* --------------------------------------------------------------- layers -- */

static tg_tensor *reshape7(const tg_tensor *x, bool train, void *ctx) {
  (void)train;
  (void)ctx;
  return tg_reshape(x, TG_SHAPE(7));
}

static void test_layers(void **state) {
  (void)state;
  begin();
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_linear_config lc = tg_linear_config_default();
  tg_conv2d_config cc = tg_conv2d_config_default();
  tg_conv_transpose2d_config tc = tg_conv_transpose2d_config_default();
  tg_group_norm_config gc = tg_group_norm_config_default();
  tg_batch_norm_config bc = tg_batch_norm_config_default();
  tg_layer_norm_config nc = tg_layer_norm_config_default();

  assert_error(tg_module_forward(NULL, RF(2), false) == NULL, "tg_module_forward",
               "argument 'm' is NULL");
  assert_error(tg_nn_linear(NULL, 2, 3, lc) == NULL, "tg_nn_linear",
               "argument 'path' is NULL");
  assert_error(tg_nn_linear(tg_path_sub(root, "l"), -1, 3, lc) == NULL, "tg_nn_linear",
               "non-negative", "-1");
  assert_error(tg_nn_linear(tg_path_sub(root, "l"), 2, -3, lc) == NULL, "-3");
  tg_module *lin = tg_nn_linear(tg_path_sub(root, "l"), 3, 4, lc);
  assert_non_null(lin);
  assert_error(tg_module_forward(lin, NULL, false) == NULL, "tg_module_forward",
               "argument 'x' is NULL");
  assert_error(tg_module_forward(lin, RF(2, 5), false) == NULL, "tg_linear",
               "(2x5 and 3x4)", "[2, 5]", "[4, 3]");
  assert_error(tg_module_forward(lin, RD(2, 3), false) == NULL, "float64");
  /* The same names twice: an error, and the store keeps only the first layer. */
  int n = tg_varstore_len(vs);
  assert_error(tg_nn_linear(tg_path_sub(root, "l"), 3, 4, lc) == NULL,
               "'l.weight' already exists");
  assert_int_equal(tg_varstore_len(vs), n);
  /* in_features 0 is allowed, as nn.Linear(0, 4): the output is the bias. */
  tg_module *lin0 = tg_nn_linear(tg_path_sub(root, "l0"), 0, 4, lc);
  assert_non_null(lin0);
  expect_shape(tg_module_forward(lin0, RF(2, 0), true), 2, 4);

  assert_error(tg_nn_conv2d(NULL, 3, 4, 3, cc) == NULL, "tg_nn_conv2d", "is NULL");
  tg_path *cp = tg_path_sub(root, "c");
  assert_error(tg_nn_conv2d(cp, 0, 4, 3, cc) == NULL, "tg_nn_conv2d", "must be positive",
               "got 0, 4 and 3");
  assert_error(tg_nn_conv2d(cp, 3, -4, 3, cc) == NULL, "must be positive");
  assert_error(tg_nn_conv2d(cp, 3, 4, 0, cc) == NULL, "kernel_size must be positive");
  assert_error(tg_nn_conv2d(cp, 3, 4, -1, cc) == NULL, "got 3, 4 and -1");
  tg_conv2d_config bad = cc;
  bad.groups = 0;
  assert_error(tg_nn_conv2d(cp, 3, 4, 3, bad) == NULL,
               "groups must be a positive integer, got 0");
  bad.groups = 2;
  assert_error(tg_nn_conv2d(cp, 3, 4, 3, bad) == NULL,
               "in_channels must be divisible by groups", "in_channels 3", "groups 2");
  assert_error(tg_nn_conv2d(cp, 4, 3, 3, bad) == NULL,
               "out_channels must be divisible by groups");
  bad = cc;
  bad.stride = 0;
  assert_error(tg_nn_conv2d(cp, 3, 4, 3, bad) == NULL, "stride 0");
  bad = cc;
  bad.padding = -1;
  assert_error(tg_nn_conv2d(cp, 3, 4, 3, bad) == NULL, "padding -1");
  bad = cc;
  bad.dilation = -1;
  assert_error(tg_nn_conv2d(cp, 3, 4, 3, bad) == NULL, "dilation -1");
  bad = cc;
  bad.ws_init = tg_init_uniform(2, 1);
  assert_error(tg_nn_conv2d(cp, 3, 4, 3, bad) == NULL, "uniform init of 'c.weight'");
  assert_int_equal(tg_varstore_len(vs), n + 2);
  tg_module *conv = tg_nn_conv2d(cp, 3, 4, 3, cc);
  assert_non_null(conv);
  assert_error(tg_module_forward(conv, RF(2, 5, 8, 8), false) == NULL, "tg_nn_conv2d 'c'",
               "expected input with 3 channels, but got 5 channels", "[2, 5, 8, 8]");
  assert_error(tg_module_forward(conv, RF(8, 8), false) == NULL, "tg_conv2d", "[8, 8]");
  assert_error(tg_module_forward(conv, RF(1, 3, 2, 2), false) == NULL,
               "Kernel size can't be greater than actual input size", "[1, 3, 2, 2]");
  expect_shape(tg_module_forward(conv, RF(0, 3, 5, 5), true), 0, 4, 3, 3);

  tg_path *tp = tg_path_sub(root, "t");
  tg_conv_transpose2d_config tbad = tc;
  tbad.output_padding = -1;
  assert_error(tg_nn_conv_transpose2d(tp, 3, 4, 3, tbad) == NULL,
               "tg_nn_conv_transpose2d", "output_padding -1");
  tbad = tc;
  tbad.groups = 3;
  assert_error(tg_nn_conv_transpose2d(tp, 3, 4, 3, tbad) == NULL,
               "out_channels must be divisible by groups");
  tbad = tc;
  tbad.output_padding = 1; /* not smaller than stride 1 or dilation 1 */
  tg_module *ct = tg_nn_conv_transpose2d(tp, 3, 4, 3, tbad);
  tg_tensor *ctx = ct ? tg_module_forward(ct, RF(1, 3, 4, 4), true) : NULL;
  assert_error(ctx == NULL,
               "output padding must be smaller than either stride or dilation");

  tg_path *gp = tg_path_sub(root, "g");
  assert_error(tg_nn_group_norm(NULL, 2, 4, gc) == NULL, "tg_nn_group_norm", "is NULL");
  assert_error(tg_nn_group_norm(gp, 0, 4, gc) == NULL,
               "num_channels must be divisible by num_groups", "num_groups 0");
  assert_error(tg_nn_group_norm(gp, 3, 4, gc) == NULL, "num_channels 4", "num_groups 3");
  assert_error(tg_nn_group_norm(gp, -2, 4, gc) == NULL, "num_groups -2");
  assert_error(tg_nn_group_norm(gp, 1, 0, gc) == NULL, "num_channels 0");
  tg_module *gn = tg_nn_group_norm(gp, 2, 4, gc);
  assert_non_null(gn);
  assert_error(tg_module_forward(gn, RF(2, 6, 3), false) == NULL, "tg_nn_group_norm 'g'",
               "expected input with 4 channels, but got 6", "[2, 6, 3]");
  assert_error(tg_module_forward(gn, RF(4), false) == NULL, "at least 2 dimensions",
               "[4]");
  expect_shape(tg_module_forward(gn, RF(0, 4, 3), false), 0, 4, 3);
  /* A bad eps is refused, at construction or at the latest at the first forward. */
  tg_group_norm_config gbad = gc;
  gbad.eps = NAN; /* 0 and negative eps are valid, as in PyTorch */
  tg_module *gn0 = tg_nn_group_norm(tg_path_sub(root, "g0"), 2, 4, gbad);
  tg_tensor *gy = gn0 ? tg_module_forward(gn0, RF(2, 4, 3), false) : NULL;
  assert_error(gy == NULL, "eps");

  tg_path *bp = tg_path_sub(root, "b");
  assert_error(tg_nn_batch_norm2d(NULL, 3, bc) == NULL, "tg_nn_batch_norm2d", "is NULL");
  assert_error(tg_nn_batch_norm2d(bp, 0, bc) == NULL,
               "num_features must be positive, got 0");
  assert_error(tg_nn_batch_norm2d(bp, -3, bc) == NULL, "got -3");
  tg_module *bn = tg_nn_batch_norm2d(bp, 3, bc);
  assert_non_null(bn);
  assert_error(tg_module_forward(bn, RF(2, 3), true) == NULL, "tg_nn_batch_norm2d 'b'",
               "expected 4D input (got 2D input of shape [2, 3])");
  assert_error(tg_module_forward(bn, RF(2, 4, 2, 2), true) == NULL,
               "expected input with 3 channels, but got 4");
  assert_error(tg_module_forward(bn, RF(1, 3, 1, 1), true) == NULL,
               "more than 1 value per channel", "[1, 3, 1, 1]");
  /* A failed training forward does not count a batch. */
  assert_true(tg_item(tg_varstore_get(vs, "b.num_batches_tracked")) == 0.0);
  tg_batch_norm_config bbad = bc;
  bbad.momentum = NAN;
  tg_module *bn0 = tg_nn_batch_norm2d(tg_path_sub(root, "b0"), 3, bbad);
  tg_tensor *by = bn0 ? tg_module_forward(bn0, RF(2, 3, 2, 2), true) : NULL;
  assert_error(by == NULL, "momentum");

  tg_path *np = tg_path_sub(root, "n");
  assert_error(tg_nn_layer_norm(NULL, TG_SHAPE(3), nc) == NULL, "tg_nn_layer_norm",
               "is NULL");
  assert_error(tg_nn_layer_norm(np, NULL, 1, nc) == NULL, "tg_nn_layer_norm",
               "normalized_shape");
  const int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  assert_error(tg_nn_layer_norm(np, s9, 0, nc) == NULL, "got 0");
  assert_error(tg_nn_layer_norm(np, s9, 9, nc) == NULL, "got 9");
  assert_error(tg_nn_layer_norm(np, TG_SHAPE(2, -3), nc) == NULL,
               "negative dimension -3");
  tg_module *ln = tg_nn_layer_norm(tg_path_sub(root, "n2"), TG_SHAPE(3), nc);
  assert_non_null(ln);
  assert_error(tg_module_forward(ln, RF(3, 4), false) == NULL, "tg_layer_norm",
               "normalized_shape=[3]", "[3, 4]");
  expect_shape(tg_module_forward(ln, RF(0, 3), false), 0, 3);

  assert_error(tg_nn_func(NULL, reshape7, NULL) == NULL, "tg_nn_func",
               "argument 'vs' is NULL");
  assert_error(tg_nn_func(vs, NULL, NULL) == NULL, "tg_nn_func", "argument 'fn' is NULL");
  assert_error(tg_nn_relu(NULL) == NULL, "tg_nn_relu", "is NULL");
  assert_error(tg_nn_sequential(NULL) == NULL, "tg_nn_sequential", "is NULL");
  tg_module *seq = tg_nn_sequential(vs), *inner = tg_nn_sequential(vs);
  tg_module *bad_fn = tg_nn_func(vs, reshape7, NULL), *relu = tg_nn_relu(vs);
  assert_true(seq && inner && bad_fn && relu);
  assert_error(tg_sequential_add(NULL, relu) < 0, "tg_sequential_add",
               "argument 'seq' is NULL");
  assert_error(tg_sequential_add(seq, NULL) < 0, "argument 'm' is NULL");
  assert_error(tg_sequential_add(relu, seq) < 0,
               "must be a module made by tg_nn_sequential", "tg_nn_relu");
  assert_error(tg_sequential_add(seq, seq) < 0, "contain itself");
  assert_int_equal(tg_sequential_add(seq, inner), 0);
  assert_error(tg_sequential_add(inner, seq) < 0, "contain itself");
  expect_shape(tg_module_forward(seq, RF(2, 3), false), 2, 3);
  /* A failure inside a sequential: its message, and the intermediates released. */
  assert_int_equal(tg_sequential_add(inner, lin), 0);
  assert_int_equal(tg_sequential_add(inner, relu), 0);
  assert_int_equal(tg_sequential_add(seq, bad_fn), 0);
  assert_int_equal(tg_sequential_add(seq, relu), 0);
  assert_error(tg_module_forward(seq, RF(2, 3), true) == NULL, "tg_reshape",
               "shape '[7]' is invalid for input of size 8");
  assert_error(tg_module_forward(seq, RF(2, 5), true) == NULL, "tg_linear",
               "(2x5 and 3x4)");
  tg_varstore_free(vs);
  end("layers");
}

/* ----------------------------------------------------------- optimizers -- */

static void test_optimizers(void **state) {
  (void)state;
  begin();
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_module *lin = tg_nn_linear(tg_varstore_root(vs), 2, 2, tg_linear_config_default());
  assert_non_null(lin);
  tg_sgd_config s = tg_sgd_config_default(0.1);

  assert_error(tg_sgd_new(NULL, s) == NULL, "tg_sgd_new", "argument 'vs' is NULL");
  s.lr = -0.1;
  assert_error(tg_sgd_new(vs, s) == NULL, "tg_sgd_new", "Invalid learning rate: -0.1");
  s.lr = NAN;
  assert_error(tg_sgd_new(vs, s) == NULL, "Invalid learning rate: nan");
  s = tg_sgd_config_default(0.1);
  s.momentum = -1;
  assert_error(tg_sgd_new(vs, s) == NULL, "Invalid momentum value: -1");
  s = tg_sgd_config_default(0.1);
  s.weight_decay = -0.5;
  assert_error(tg_sgd_new(vs, s) == NULL, "Invalid weight_decay value: -0.5");
  s = tg_sgd_config_default(0.1);
  s.dampening = NAN;
  assert_error(tg_sgd_new(vs, s) == NULL, "Invalid dampening value");
  s = tg_sgd_config_default(0.1);
  s.nesterov = true;
  assert_error(tg_sgd_new(vs, s) == NULL,
               "Nesterov momentum requires a momentum and zero dampening");
  s.momentum = 0.9;
  s.dampening = 0.1;
  assert_error(tg_sgd_new(vs, s) == NULL, "Nesterov", "dampening 0.1");

  tg_adam_config a = tg_adam_config_default(1e-3);
  assert_error(tg_adam_new(NULL, a) == NULL, "tg_adam_new", "argument 'vs' is NULL");
  a.lr = -1;
  assert_error(tg_adam_new(vs, a) == NULL, "tg_adam_new", "Invalid learning rate: -1");
  a = tg_adam_config_default(1e-3);
  a.eps = -1e-8;
  assert_error(tg_adam_new(vs, a) == NULL, "Invalid epsilon value");
  a = tg_adam_config_default(1e-3);
  a.beta1 = 1.0;
  assert_error(tg_adam_new(vs, a) == NULL, "Invalid beta parameter at index 0: 1");
  a = tg_adam_config_default(1e-3);
  a.beta2 = -0.1;
  assert_error(tg_adam_new(vs, a) == NULL, "Invalid beta parameter at index 1: -0.1");
  a = tg_adam_config_default(1e-3);
  a.weight_decay = -1;
  a.decoupled = true;
  assert_error(tg_adam_new(vs, a) == NULL, "AdamW", "Invalid weight_decay value: -1");

  tg_optimizer_zero_grad(NULL);
  tg_optimizer_set_lr(NULL, 1);
  tg_optimizer_free(NULL);
  assert_true(isnan(tg_optimizer_lr(NULL)));
  assert_error(tg_optimizer_step(NULL) < 0, "tg_optimizer_step",
               "argument 'opt' is NULL");
  assert_error(tg_clip_grad_norm(NULL, 1) < 0, "tg_clip_grad_norm",
               "argument 'vs' is NULL");
  assert_error(tg_clip_grad_norm(vs, -1) < 0, "max_norm must be non-negative, got -1");
  assert_error(tg_clip_grad_norm(vs, NAN) < 0, "max_norm");
  assert_true(tg_clip_grad_norm(vs, 1) == 0.0); /* no gradients yet */

  /* Optimizer state made for float32 parameters, which became float64. */
  s = tg_sgd_config_default(0.1);
  s.momentum = 0.9;
  tg_optimizer *opt = tg_sgd_new(vs, s);
  assert_non_null(opt);
  assert_int_equal(tg_optimizer_step(opt), 0); /* no gradients: nothing to do */
  assert_int_equal(tg_backward(tg_sum(tg_module_forward(lin, RF(3, 2), true))), 0);
  assert_int_equal(tg_optimizer_step(opt), 0);
  assert_int_equal(tg_varstore_set_dtype(vs, TG_F64), 0);
  assert_int_equal(tg_backward(tg_sum(tg_module_forward(lin, RD(3, 2), true))), 0);
  assert_error(tg_optimizer_step(opt) < 0, "tg_optimizer_step",
               "optimizer state is float32 but its parameter is now float64");
  tg_optimizer_free(opt);
  tg_varstore_free(vs);
  end("optimizers");
}

/* Output shapes computed by an op from the user's sizes are checked by that op: an
 * impossible one names it (not the internal "tg_empty") with the input shape. */
static void test_output_shape_errors_name_the_op(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(1, 2, 4, 4);
  assert_error(tg_adaptive_avg_pool2d(x, (int64_t[]){BIG, BIG}) == NULL,
               "tg_adaptive_avg_pool2d", "[1, 2, 4, 4]");
  assert_error(tg_upsample_nearest2d(x, (int64_t[]){BIG, BIG}) == NULL,
               "tg_upsample_nearest2d", "[1, 2, 4, 4]");
  assert_error(tg_upsample_bilinear2d(x, (int64_t[]){BIG, BIG}) == NULL,
               "tg_upsample_bilinear2d", "[1, 2, 4, 4]");
  end("output shape errors");
}

/* ------------------------------------------------------------- overflow -- */

/* Sizes whose arithmetic overflows int64 must fail with an error, not wrap around:
 * signed overflow is undefined behaviour (UBSan aborts the process on the first one,
 * so these run last) and, wrapped, gives wrong shapes or wrong values. */

/* PyTorch: "shape '[4611686018427387904, 8]' is invalid for input of size 6" and, for
 * an empty input, "numel: integer multiplication overflow". */
static void test_reshape_overflow(void **state) {
  (void)state;
  begin();
  tg_tensor *t = RF(6);
  /* Wrapped to 0 elements, [2^62, 4] would alias an empty storage: a later narrow
   * reads past its end (heap-buffer-overflow). */
  assert_error(tg_reshape(RF(0), TG_SHAPE(BIG, 4)) == NULL, "tg_reshape",
               "[4611686018427387904, 4]");
  assert_error(tg_reshape(t, TG_SHAPE(BIG, 8)) == NULL, "tg_reshape",
               "shape '[4611686018427387904, 8]' is invalid for input of size 6");
  assert_error(tg_view(t, TG_SHAPE(BIG, 8, -1)) == NULL, "tg_view", "is invalid");
  assert_error(tg_reshape(RF(0), TG_SHAPE(BIG, BIG, 0)) == NULL, "tg_reshape",
               "[4611686018427387904, 4611686018427387904, 0]");
  end("reshape overflow");
}

/* Padding or dilation of 2^62 overflow "H + 2 * padding" and "dilation * (k - 1)". */
static void test_conv_huge_padding_dilation(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(1, 3, 5, 5), *w = RF(4, 3, 3, 3), *wt = RF(3, 4, 3, 3);
  assert_error(tg_conv2d(x, w, NULL, NULL, (int64_t[]){BIG, 0}, NULL, 1) == NULL,
               "tg_conv2d", "[1, 3, 5, 5]", "[4, 3, 3, 3]");
  assert_error(tg_conv2d(x, w, NULL, NULL, NULL, (int64_t[]){BIG, 1}, 1) == NULL,
               "tg_conv2d", "[1, 3, 5, 5]", "[4, 3, 3, 3]");
  assert_error(
      tg_conv_transpose2d(x, wt, NULL, NULL, NULL, NULL, (int64_t[]){BIG, 1}, 1) == NULL,
      "tg_conv_transpose2d", "[1, 3, 5, 5]", "[3, 4, 3, 3]");
  end("conv with a huge padding or dilation");
}

/* (H - 1) * stride overflows: the output would have 2^64 rows, not 3. */
static void test_conv_transpose_huge_stride(void **state) {
  (void)state;
  begin();
  tg_tensor *y = tg_conv_transpose2d(RF(1, 3, 5, 5), RF(3, 4, 3, 3), NULL,
                                     (int64_t[]){BIG, 1}, NULL, NULL, NULL, 1);
  assert_error(y == NULL, "tg_conv_transpose2d", "[1, 3, 5, 5]");
  end("conv_transpose2d with a huge stride");
}

/* A kernel of INT64_MAX rows is larger than any input: "Output size is too small"
 * (PyTorch: "integer out of range"), not a [1, 1, 1, 4] result over the whole image. */
static void test_pool_huge_kernel(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(1, 1, 4, 4);
  assert_error(tg_max_pool2d(x, (int64_t[]){INT64_MAX, 1}, NULL, NULL) == NULL,
               "tg_max_pool2d", "Output size is too small");
  assert_error(tg_avg_pool2d(x, (int64_t[]){1, INT64_MAX}, NULL, NULL) == NULL,
               "tg_avg_pool2d", "Output size is too small");
  end("pool with a huge kernel");
}

/* Padding INT64_MAX / 2 (allowed: at most half the kernel) overflows H + 2 * padding,
 * and avg_pool2d's count_include_pad divisor kH * kW. */
static void test_pool_huge_padding(void **state) {
  (void)state;
  begin();
  tg_tensor *x = RF(1, 1, 4, 4);
  const int64_t k[2] = {INT64_MAX, INT64_MAX}, p[2] = {INT64_MAX / 2, INT64_MAX / 2};
  assert_error(tg_avg_pool2d(x, k, NULL, p) == NULL, "tg_avg_pool2d");
  assert_error(tg_max_pool2d(x, k, NULL, p) == NULL, "tg_max_pool2d");
  end("pool with a huge padding");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_runtime, cleanup),
      cmocka_unit_test_teardown(test_creation, cleanup),
      cmocka_unit_test_teardown(test_devices, cleanup),
      cmocka_unit_test_teardown(test_accessors, cleanup),
      cmocka_unit_test_teardown(test_shape_ops, cleanup),
      cmocka_unit_test_teardown(test_autograd, cleanup),
      cmocka_unit_test_teardown(test_gradcheck, cleanup),
      cmocka_unit_test_teardown(test_elementwise, cleanup),
      cmocka_unit_test_teardown(test_reductions, cleanup),
      cmocka_unit_test_teardown(test_matmul_linear, cleanup),
      cmocka_unit_test_teardown(test_softmax_losses, cleanup),
      cmocka_unit_test_teardown(test_group_norm, cleanup),
      cmocka_unit_test_teardown(test_batch_layer_norm, cleanup),
      cmocka_unit_test_teardown(test_conv, cleanup),
      cmocka_unit_test_teardown(test_pool, cleanup),
      cmocka_unit_test_teardown(test_varstore, cleanup),
      cmocka_unit_test_teardown(test_checkpoint_files, cleanup),
      cmocka_unit_test_teardown(test_layers, cleanup),
      cmocka_unit_test_teardown(test_optimizers, cleanup),
      /* Known bugs, one test each (see the comment above each). */
      cmocka_unit_test_teardown(test_full_int64_out_of_range, cleanup),
      cmocka_unit_test_teardown(test_size_of_0dim, cleanup),
      cmocka_unit_test_teardown(test_backward_grad_shape, cleanup),
      cmocka_unit_test_teardown(test_gradcheck_bad_eps, cleanup),
      cmocka_unit_test_teardown(test_max_of_0dim, cleanup),
      cmocka_unit_test_teardown(test_conv_zero_kernel, cleanup),
      cmocka_unit_test_teardown(test_conv_transpose_empty_image, cleanup),
      cmocka_unit_test_teardown(test_output_shape_errors_name_the_op, cleanup),
      /* Known bugs with undefined behaviour (UBSan aborts at the first). */
      cmocka_unit_test_teardown(test_reshape_overflow, cleanup),
      cmocka_unit_test_teardown(test_conv_huge_padding_dilation, cleanup),
      cmocka_unit_test_teardown(test_conv_transpose_huge_stride, cleanup),
      cmocka_unit_test_teardown(test_pool_huge_kernel, cleanup),
      cmocka_unit_test_teardown(test_pool_huge_padding, cleanup),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
