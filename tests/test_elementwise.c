/* Elementwise ops against PyTorch (float64 and float32), float64 gradchecks and
 * error paths. Cases come from tests/ref/gen_core.py. */
#include "common.h"

#include <math.h>
#include <string.h>

typedef struct {
  const char *name;
  int arity;
  tg_tensor *(*binary)(const tg_tensor *, const tg_tensor *);
  tg_tensor *(*unary)(const tg_tensor *);
} op_entry;

static tg_tensor *leaky(const tg_tensor *x) { return tg_leaky_relu(x, 0.1); }
static tg_tensor *add_s(const tg_tensor *x) { return tg_add_scalar(x, 1.5); }
static tg_tensor *sub_s(const tg_tensor *x) { return tg_sub_scalar(x, 1.5); }
static tg_tensor *mul_s(const tg_tensor *x) { return tg_mul_scalar(x, -2.5); }
static tg_tensor *div_s(const tg_tensor *x) { return tg_div_scalar(x, 4.0); }
static tg_tensor *cube(const tg_tensor *x) { return tg_pow(x, 3.0); }
static tg_tensor *root(const tg_tensor *x) { return tg_pow(x, 0.5); }

static const op_entry ops[] = {
    {"add", 2, tg_add, NULL},       {"sub", 2, tg_sub, NULL},
    {"mul", 2, tg_mul, NULL},       {"div", 2, tg_div, NULL},
    {"neg", 1, NULL, tg_neg},       {"exp", 1, NULL, tg_exp},
    {"log", 1, NULL, tg_log},       {"sqrt", 1, NULL, tg_sqrt},
    {"abs", 1, NULL, tg_abs},       {"relu", 1, NULL, tg_relu},
    {"leaky_relu", 1, NULL, leaky}, {"sigmoid", 1, NULL, tg_sigmoid},
    {"tanh", 1, NULL, tg_tanh},     {"gelu", 1, NULL, tg_gelu},
    {"add_scalar", 1, NULL, add_s}, {"sub_scalar", 1, NULL, sub_s},
    {"mul_scalar", 1, NULL, mul_s}, {"div_scalar", 1, NULL, div_s},
    {"pow", 1, NULL, cube},         {"pow_frac", 1, NULL, root},
};

static const op_entry *lookup(const char *case_name) {
  char name[64];
  snprintf(name, sizeof name, "%s", case_name);
  *strchr(name, '#') = '\0';
  for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
    if (!strcmp(ops[i].name, name))
      return &ops[i];
  fail_msg("no op for case %s", case_name);
  return NULL;
}

static tg_tensor *apply(tg_tensor *const *in, int n, void *ctx) {
  const op_entry *op = ctx;
  (void)n;
  return op->arity == 2 ? op->binary(in[0], in[1]) : op->unary(in[0]);
}

static void check_case(ref_file *f, const char *cname, tg_dtype dtype, double tol) {
  const op_entry *op = lookup(cname);
  tg_scope_begin();
  tg_tensor *in[2] = {NULL, NULL};
  for (int i = 0; i < op->arity; i++) {
    char label[16];
    snprintf(label, sizeof label, "in%d", i);
    in[i] = ref_get(f, cname, label, dtype);
    assert_ok(tg_set_requires_grad(in[i], true) == 0);
  }
  tg_tensor *out = apply(in, op->arity, (void *)op);
  assert_ok(out);
  tg_tensor *expect = ref_get(f, cname, "out", dtype);
  assert_close(out, expect, tol, tol);
  tg_tensor *gout = ref_get(f, cname, "gout", dtype);
  assert_ok(tg_backward_ex(out, gout, false) == 0);
  for (int i = 0; i < op->arity; i++) {
    char label[16];
    snprintf(label, sizeof label, "g%d", i);
    assert_close(tg_grad(in[i]), ref_get(f, cname, label, dtype), tol, tol);
  }
  if (dtype == TG_F64)
    gradcheck_ok(apply, (void *)op, in, op->arity);
  for (int i = 0; i < op->arity; i++)
    tg_tensor_free(in[i]); /* early free inside a scope is allowed */
  assert_int_equal(tg_scope_end(), 0);
}

static void test_reference_f64(void **state) {
  (void)state;
  ref_file *f = ref_open("elementwise");
  for (int i = 0; i < ref_num_cases(f); i++)
    check_case(f, ref_case_name(f, i), TG_F64, 1e-10);
  ref_close(f);
}

static void test_reference_f32(void **state) {
  (void)state;
  ref_file *f = ref_open("elementwise");
  for (int i = 0; i < ref_num_cases(f); i++)
    check_case(f, ref_case_name(f, i), TG_F32, 2e-5);
  ref_close(f);
}

static void test_broadcast_error(void **state) {
  (void)state;
  tg_tensor *a = tg_ones(TG_SHAPE(2, 3), TG_F32, TG_CPU);
  tg_tensor *b = tg_ones(TG_SHAPE(4), TG_F32, TG_CPU);
  assert_error(tg_add(a, b) == NULL, "tg_add", "must match", "[2, 3]", "[4]");
  tg_tensor *c = tg_ones(TG_SHAPE(2, 3), TG_F64, TG_CPU);
  assert_error(tg_mul(a, c) == NULL, "same dtype", "float32", "float64");
  tg_tensor *i = tg_zeros(TG_SHAPE(2, 3), TG_I64, TG_CPU);
  assert_error(tg_exp(i) == NULL, "floating point", "int64");
  /* The library keeps working afterwards. */
  tg_tensor *ok = tg_add(a, a);
  assert_non_null(ok);
  tg_tensor *total = tg_sum(ok);
  assert_true(fabs(tg_item(total) - 12.0) < 1e-6);
  tg_tensor_free(total);
  tg_tensor_free(a);
  tg_tensor_free(b);
  tg_tensor_free(c);
  tg_tensor_free(i);
  tg_tensor_free(ok);
}

static void test_null_chain(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = tg_ones(TG_SHAPE(2), TG_F32, TG_CPU);
  tg_tensor *bad = tg_add(a, tg_ones(TG_SHAPE(3), TG_F32, TG_CPU));
  /* NULL flows through a chain; the first failure's message survives. */
  tg_tensor *r = tg_relu(tg_mul_scalar(bad, 2.0));
  assert_error(r == NULL, "tg_add", "[3]");
  assert_error(tg_exp(NULL) == NULL, "tg_exp", "NULL");
  tg_scope_end();
}

static void test_empty_tensors(void **state) {
  (void)state;
  tg_scope_begin();
  tg_tensor *a = tg_ones(TG_SHAPE(0, 3), TG_F32, TG_CPU);
  tg_tensor *b = tg_ones(TG_SHAPE(1, 3), TG_F32, TG_CPU);
  tg_tensor *c = tg_add(a, b);
  assert_non_null(c);
  assert_int_equal(tg_numel(c), 0);
  assert_int_equal(tg_shape(c)[0], 0);
  assert_true(tg_item(tg_sum(c)) == 0.0);
  tg_scope_end();
}

/* Same-shape operands large enough for several threads are cut into flat rows (the
 * last one partial): every element must still see its own operands, on 1-3 threads. */
static void test_same_shape_threads(void **state) {
  (void)state;
  const int64_t n = 3 * 4096 * 9 + 123;
  const int saved = tg_get_num_threads();
  for (int threads = 1; threads <= 3; threads++) {
    assert_int_equal(tg_set_num_threads(threads), 0);
    tg_scope_begin();
    tg_tensor *a = tg_arange(0, (double)n, 1, TG_F64, TG_CPU);
    tg_tensor *b = tg_mul_scalar(a, 0.5);
    tg_tensor *c = tg_reshape(tg_sub(tg_mul(a, b), b), TG_SHAPE(3, -1));
    assert_non_null(c);
    const double *p = tg_data(c);
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i++)
      if (p[i] != (double)i * (double)i * 0.5 - (double)i * 0.5)
        bad = i;
    if (bad >= 0)
      fail_msg("a * b - b on [%lld], %d threads: element %lld is %g", (long long)n,
               threads, (long long)bad, p[bad]);
    tg_scope_end();
  }
  assert_int_equal(tg_set_num_threads(saved), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_shape_threads), cmocka_unit_test(test_reference_f64),
      cmocka_unit_test(test_reference_f32),      cmocka_unit_test(test_broadcast_error),
      cmocka_unit_test(test_null_chain),         cmocka_unit_test(test_empty_tensors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
