/* Shape ops against PyTorch, gradchecks, view semantics and errors. */
#include "common.h"

#include <string.h>

static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  const char *op = ctx;
  (void)n;
  if (!strcmp(op, "permute"))
    return tg_permute(in[0], (int[]){2, 0, 1}, 3);
  if (!strcmp(op, "transpose"))
    return tg_transpose(in[0], 0, 2);
  if (!strcmp(op, "narrow"))
    return tg_narrow(in[0], 1, 1, 2);
  if (!strcmp(op, "reshape"))
    return tg_reshape(in[0], TG_SHAPE(4, -1));
  if (!strcmp(op, "flatten"))
    return tg_flatten(in[0], 1, -1);
  return tg_cat(in, 2, 1);
}

static void test_reference(void **state) {
  (void)state;
  ref_file *f = ref_open("shape");
  for (int i = 0; i < ref_num_cases(f); i++) {
    const char *c = ref_case_name(f, i);
    int n = !strcmp(c, "cat") ? 2 : 1;
    for (int pass = 0; pass < 2; pass++) {
      tg_dtype dt = pass ? TG_F32 : TG_F64;
      tg_scope_begin();
      tg_tensor *in[2];
      for (int k = 0; k < n; k++) {
        in[k] = ref_get(f, c, k ? "in1" : "in0", dt);
        tg_set_requires_grad(in[k], true);
      }
      tg_tensor *out = apply(in, n, (void *)c);
      assert_close(out, ref_get(f, c, "out", dt), 0, 0);
      assert_ok(tg_backward_ex(out, ref_get(f, c, "gout", dt), false) == 0);
      for (int k = 0; k < n; k++)
        assert_close(tg_grad(in[k]), ref_get(f, c, k ? "g1" : "g0", dt), 0, 0);
      if (dt == TG_F64)
        gradcheck_ok(apply, (void *)c, in, n);
      tg_scope_end();
    }
  }
  ref_close(f);
}

static void test_views_share_storage(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_arange(0, 6, 1, TG_F32, TG_CPU);
  tg_tensor *v = tg_reshape(x, TG_SHAPE(2, 3));
  tg_tensor *u = tg_unsqueeze(v, 0);
  assert_int_equal(tg_ndim(u), 3);
  assert_int_equal(tg_shape(u)[0], 1);
  tg_tensor *s = tg_squeeze(u, 0);
  assert_int_equal(tg_ndim(s), 2);
  assert_int_equal(tg_ndim(tg_squeeze_all(tg_ones(TG_SHAPE(1, 3, 1), TG_F32, TG_CPU))),
                   1);
  ((float *)tg_data(x))[4] = 42.0f;
  assert_true(((float *)tg_data(s))[4] == 42.0f);
  tg_tensor *d = tg_detach(v);
  assert_true(tg_data(d) == tg_data(v));
  assert_false(tg_requires_grad(d));
  tg_tensor *c = tg_contiguous(v);
  assert_true(tg_data(c) != tg_data(v));
  tg_scope_end();
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_ones(TG_SHAPE(2, 3), TG_F32, TG_CPU);
  assert_error(tg_reshape(x, TG_SHAPE(4, 2)) == NULL, "shape '[4, 2]' is invalid",
               "size 6");
  assert_error(tg_reshape(x, TG_SHAPE(-1, -1)) == NULL, "only one dimension");
  assert_error(tg_permute(x, (int[]){0, 0}, 2) == NULL, "repeated dim");
  assert_error(tg_permute(x, (int[]){0}, 1) == NULL, "number of dims don't match");
  assert_error(tg_narrow(x, 1, 2, 2) == NULL, "exceeds dimension size");
  tg_tensor *y = tg_ones(TG_SHAPE(3, 3), TG_F32, TG_CPU);
  tg_tensor *pair[2] = {x, y};
  assert_error(tg_cat(pair, 2, 1) == NULL, "Sizes of tensors must match", "[2, 3]",
               "[3, 3]");
  assert_non_null(tg_cat(pair, 2, 0));
  assert_error(tg_flatten(x, 1, 0) == NULL, "cannot come after");
  tg_scope_end();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference),
      cmocka_unit_test(test_views_share_storage),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
