/* tg_binary_cross_entropy_with_logits_ex with weight and pos_weight: PyTorch references
 * (tests/ref/gen_bce_weights.py; broadcast weight [N, 1] and [1, C, 1, 1], pos_weight
 * [C] and [C, 1, 1], every reduction, float64 and float32) for the loss and its
 * gradients in input and target, and float64 gradchecks in all four tensors (PyTorch
 * refuses gradients for weight and pos_weight; tapegrad's are checked here only). */
#include "common.h"

#include <string.h>

typedef struct {
  tg_reduction red;
  bool has_w, has_pw;
} bce_case;

/* in: x, t, then w and pw when the case has them. */
static tg_tensor *bce(tg_tensor *const *in, int n, void *ctx) {
  const bce_case *c = ctx;
  (void)n;
  tg_bce_with_logits_options o = tg_bce_with_logits_options_default();
  o.reduction = c->red;
  o.weight = c->has_w ? in[2] : NULL;
  o.pos_weight = c->has_pw ? in[2 + c->has_w] : NULL;
  return tg_binary_cross_entropy_with_logits_ex(in[0], in[1], &o);
}

static void check_case(ref_file *f, const char *name, tg_dtype dtype, double tol) {
  tg_scope_begin();
  tg_tensor *p = ref_get(f, name, "params", TG_I64);
  bce_case c = {(tg_reduction) * (int64_t *)tg_data(p), ref_has(f, name, "w"),
                ref_has(f, name, "pw")};
  static const char *const labels[] = {"x", "t", "w", "pw"};
  tg_tensor *in[4];
  int n = 0;
  for (int i = 0; i < 4; i++)
    if (i < 2 || ref_has(f, name, labels[i]))
      in[n++] = ref_get(f, name, labels[i], dtype);
  assert_ok(tg_set_requires_grad(in[0], true) == 0);
  assert_ok(tg_set_requires_grad(in[1], true) == 0);
  tg_tensor *y = bce(in, n, &c);
  assert_ok(y);
  assert_close(y, ref_get(f, name, "y", dtype), tol, tol);
  assert_ok(tg_backward_ex(y, ref_get(f, name, "gy", dtype), false) == 0);
  assert_close(tg_grad(in[0]), ref_get(f, name, "dx", dtype), tol, tol);
  assert_close(tg_grad(in[1]), ref_get(f, name, "dt", dtype), tol, tol);
  if (dtype == TG_F64) { /* every tensor, weights included */
    for (int i = 2; i < n; i++)
      assert_ok(tg_set_requires_grad(in[i], true) == 0);
    gradcheck_ok(bce, &c, in, n);
  }
  assert_int_equal(tg_scope_end(), 0);
}

static void run(tg_dtype dtype, double tol) {
  ref_file *f = ref_open("bce_weights");
  assert_true(ref_num_cases(f) >= 9);
  for (int i = 0; i < ref_num_cases(f); i++)
    check_case(f, ref_case_name(f, i), dtype, tol);
  ref_close(f);
}

static void test_reference_f64(void **state) {
  (void)state;
  run(TG_F64, 1e-10);
}

static void test_reference_f32(void **state) {
  (void)state;
  run(TG_F32, 1e-5);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference_f64),
      cmocka_unit_test(test_reference_f32),
  };
  return cmocka_run_group_tests_name("bce_weights", tests, test_setup, NULL);
}
