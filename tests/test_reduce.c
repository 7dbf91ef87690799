/* Reductions against PyTorch, gradchecks, errors. Cases: tests/ref/gen_core.py. */
#include "common.h"

#include <math.h>
#include <string.h>

typedef struct {
  int kind; /* 0 sum, 1 mean, 2 sum_dims, 3 mean_dims, 4 max_dim */
  int dims[8], n_dims;
  bool keep;
} red;

static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  const red *r = ctx;
  (void)n;
  switch (r->kind) {
  case 0:
    return tg_sum(in[0]);
  case 1:
    return tg_mean(in[0]);
  case 2:
    return tg_sum_dims(in[0], r->dims, r->n_dims, r->keep);
  case 3:
    return tg_mean_dims(in[0], r->dims, r->n_dims, r->keep);
  default:
    return tg_max_dim(in[0], r->dims[0], r->keep, NULL);
  }
}

static void run_case(ref_file *f, const char *cname, red *r, tg_dtype dt, double tol) {
  tg_scope_begin();
  tg_tensor *x = ref_get(f, cname, "in0", dt);
  assert_ok(tg_set_requires_grad(x, true) == 0);
  tg_tensor *out = apply(&x, 1, r);
  assert_close(out, ref_get(f, cname, "out", dt), tol, tol);
  assert_ok(tg_backward_ex(out, ref_get(f, cname, "gout", dt), false) == 0);
  assert_close(tg_grad(x), ref_get(f, cname, "g0", dt), tol, tol);
  if (dt == TG_F64)
    gradcheck_ok(apply, r, &x, 1);
  tg_scope_end();
}

static void args_of(ref_file *f, const char *cname, red *r) {
  /* sum_dims and mean_dims cases share their arguments. */
  char an[64];
  const char *hash = strchr(cname, '#');
  snprintf(an, sizeof an, "%.*s_args%s", (int)(hash - cname),
           r->kind == 3 ? "sum_dims" : cname, hash);
  tg_tensor *keep = ref_get(f, an, "keep", TG_I64);
  r->keep = ((int64_t *)tg_data(keep))[0] != 0;
  tg_tensor *d = ref_has(f, an, "dims") ? ref_get(f, an, "dims", TG_I64)
                                        : ref_get(f, an, "dim", TG_I64);
  r->n_dims = (int)tg_numel(d);
  for (int i = 0; i < r->n_dims; i++)
    r->dims[i] = (int)((int64_t *)tg_data(d))[i];
  if (r->kind == 4) {
    /* indices agree with PyTorch's */
    tg_tensor *x = ref_get(f, cname, "in0", TG_F64);
    tg_tensor *idx = NULL;
    tg_tensor *v = tg_max_dim(x, r->dims[0], r->keep, &idx);
    assert_non_null(v);
    assert_close(idx, ref_get(f, an, "idx", TG_I64), 0, 0);
    tg_tensor *am = tg_argmax(x, r->dims[0], r->keep);
    assert_close(am, idx, 0, 0);
  }
}

static void test_reference(void **state) {
  (void)state;
  ref_file *f = ref_open("reduce");
  for (int i = 0; i < ref_num_cases(f); i++) {
    const char *c = ref_case_name(f, i);
    if (strstr(c, "_args"))
      continue;
    red r = {0};
    tg_scope_begin();
    if (!strcmp(c, "sum"))
      r.kind = 0;
    else if (!strcmp(c, "mean"))
      r.kind = 1;
    else {
      r.kind = !strncmp(c, "sum_dims", 8) ? 2 : !strncmp(c, "mean_dims", 9) ? 3 : 4;
      args_of(f, c, &r);
    }
    tg_scope_end();
    run_case(f, c, &r, TG_F64, 1e-10);
    run_case(f, c, &r, TG_F32, 1e-5);
  }
  ref_close(f);
}

static void test_float32_long_sum_is_accurate(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_full(TG_SHAPE(1 << 22), 0.1, TG_F32, TG_CPU);
  double s = tg_item(tg_sum(x));
  assert_true(fabs(s - 0.1f * (double)(1 << 22)) < 1e-3);
  tg_scope_end();
}

static void test_errors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *x = tg_ones(TG_SHAPE(2, 3), TG_F32, TG_CPU);
  assert_error(tg_sum_dims(x, (int[]){2}, 1, false) == NULL, "Dimension out of range",
               "[-2, 1]", "got 2");
  assert_error(tg_sum_dims(x, (int[]){1, -1}, 2, false) == NULL, "multiple times");
  assert_error(tg_max_dim(tg_ones(TG_SHAPE(2, 0), TG_F32, TG_CPU), 1, false, NULL) ==
                   NULL,
               "non-zero size");
  assert_non_null(tg_mean_dims(x, (int[]){0}, 1, true));
  tg_scope_end();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reference),
      cmocka_unit_test(test_float32_long_sum_is_accurate),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
