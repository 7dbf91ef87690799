/* Optimizers against torch.optim: 5-step trajectories of SGD (plain, momentum,
 * dampening, nesterov, weight decay, a learning-rate change, gradient clipping),
 * Adam with L2 and AdamW, on a linear regression whose gradients come from
 * tapegrad's own backward (references: tests/ref/gen_optim.py). */
#include "common.h"

#include <math.h>
#include <string.h>

enum { STEPS = 5 };

typedef struct {
  const char *name;
  bool adam;
  tg_sgd_config sgd;
  tg_adam_config adam_config;
  int lr_step; /* set the lr to lr_new before this step (0: never) */
  double lr_new;
  double clip; /* clip_grad_norm before each step (0: never) */
} optim_case;

static optim_case sgd_case(const char *name, double lr, double momentum, double dampening,
                           double weight_decay, bool nesterov) {
  tg_sgd_config c = tg_sgd_config_default(lr);
  c.momentum = momentum;
  c.dampening = dampening;
  c.weight_decay = weight_decay;
  c.nesterov = nesterov;
  return (optim_case){.name = name, .sgd = c};
}

static optim_case adam_case(const char *name, double lr, double b1, double b2, double eps,
                            double wd, bool decoupled) {
  tg_adam_config c = tg_adam_config_default(lr);
  c.beta1 = b1;
  c.beta2 = b2;
  c.eps = eps;
  c.weight_decay = wd;
  c.decoupled = decoupled;
  return (optim_case){.name = name, .adam = true, .adam_config = c};
}

static void set_from_ref(tg_tensor *var, ref_file *f, const char *case_name,
                         const char *label) {
  tg_tensor *v = ref_get(f, case_name, label, tg_dtype_of(var));
  assert_ok(tg_copy_(var, v) == 0);
  tg_tensor_free(v);
}

static void check_ref(const tg_tensor *t, ref_file *f, const char *case_name,
                      const char *label, double atol, double rtol) {
  tg_tensor *want = ref_get(f, case_name, label, tg_dtype_of(t));
  char what[128];
  snprintf(what, sizeof what, "%s/%s (%s)", case_name, label,
           tg_dtype_name(tg_dtype_of(t)));
  assert_close_impl(t, want, atol, rtol, what, __FILE__, __LINE__);
  tg_tensor_free(want);
}

/* loss = mean((sum(x * w, 1) + b - y)^2) */
static tg_tensor *regression_loss(const tg_tensor *x, const tg_tensor *y,
                                  const tg_tensor *w, const tg_tensor *b) {
  int dim1[1] = {1};
  tg_tensor *pred = tg_add(tg_sum_dims(tg_mul(x, w), dim1, 1, false), b);
  return tg_mean(tg_pow(tg_sub(pred, y), 2.0));
}

static void run_case(ref_file *f, const optim_case *c, tg_dtype dtype, double atol,
                     double rtol) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_ok(vs && tg_varstore_set_dtype(vs, dtype) == 0);
  tg_path *root = tg_varstore_root(vs);
  tg_tensor *w = tg_path_var(root, "w", TG_SHAPE(1, 4), tg_init_const(0));
  tg_tensor *b = tg_path_var(root, "b", TG_SHAPE(1), tg_init_const(0));
  tg_tensor *u = tg_path_var(root, "u", TG_SHAPE(3), tg_init_const(0));
  assert_ok(w && b && u);
  set_from_ref(w, f, c->name, "w0");
  set_from_ref(b, f, c->name, "b0");
  set_from_ref(u, f, c->name, "u0");
  tg_tensor *x = ref_get(f, c->name, "x", dtype), *y = ref_get(f, c->name, "y", dtype);
  tg_optimizer *opt = c->adam ? tg_adam_new(vs, c->adam_config) : tg_sgd_new(vs, c->sgd);
  assert_ok(opt);
  for (int k = 1; k <= STEPS; k++) {
    char label[16];
    if (k == c->lr_step) {
      tg_optimizer_set_lr(opt, c->lr_new);
      assert_true(tg_optimizer_lr(opt) == c->lr_new);
    }
    tg_scope_begin();
    tg_optimizer_zero_grad(opt);
    tg_tensor *loss = regression_loss(x, y, w, b);
    assert_ok(loss && tg_backward(loss) == 0);
    snprintf(label, sizeof label, "loss%d", k);
    check_ref(loss, f, c->name, label, atol, rtol);
    if (c->clip > 0) {
      double norm = tg_clip_grad_norm(vs, c->clip);
      snprintf(label, sizeof label, "norm%d", k);
      tg_tensor *want = ref_get(f, c->name, label, TG_F64);
      assert_true(fabs(norm - tg_item(want)) <= atol + rtol * tg_item(want));
      tg_tensor_free(want);
    }
    assert_null(tg_grad(u));
    assert_ok(tg_optimizer_step(opt) == 0);
    snprintf(label, sizeof label, "w%d", k);
    check_ref(w, f, c->name, label, atol, rtol);
    snprintf(label, sizeof label, "b%d", k);
    check_ref(b, f, c->name, label, atol, rtol);
    assert_ok(tg_scope_end() == 0);
  }
  check_ref(u, f, c->name, "u0", 0, 0); /* no gradient, never touched */
  tg_tensor_free(x);
  tg_tensor_free(y);
  tg_optimizer_free(opt);
  tg_varstore_free(vs);
}

static optim_case all_cases(int i, bool *more) {
  optim_case cases[] = {
      sgd_case("sgd", 0.1, 0, 0, 0, false),
      sgd_case("sgd_momentum", 0.1, 0.9, 0, 0, false),
      sgd_case("sgd_dampening", 0.1, 0.9, 0.3, 0, false),
      sgd_case("sgd_nesterov", 0.1, 0.9, 0, 0, true),
      sgd_case("sgd_weight_decay", 0.1, 0.5, 0, 0.1, false),
      sgd_case("sgd_set_lr", 0.1, 0.9, 0, 0, false),
      sgd_case("sgd_clip", 0.1, 0.9, 0, 0, false),
      adam_case("adam", 0.05, 0.9, 0.999, 1e-8, 0, false),
      adam_case("adam_l2", 0.05, 0.8, 0.99, 1e-6, 0.1, false),
      adam_case("adamw", 0.05, 0.9, 0.999, 1e-8, 0.1, true),
  };
  cases[5].lr_step = 3;
  cases[5].lr_new = 0.02;
  cases[6].clip = 0.5;
  int n = (int)(sizeof cases / sizeof cases[0]);
  *more = i + 1 < n;
  return cases[i];
}

static void test_trajectories_f64(void **state) {
  (void)state;
  ref_file *f = ref_open("optim");
  bool more = true;
  for (int i = 0; more; i++) {
    optim_case c = all_cases(i, &more);
    run_case(f, &c, TG_F64, 1e-12, 1e-10);
  }
  ref_close(f);
}

static void test_trajectories_f32(void **state) {
  (void)state;
  ref_file *f = ref_open("optim");
  bool more = true;
  for (int i = 0; more; i++) {
    optim_case c = all_cases(i, &more);
    run_case(f, &c, TG_F32, 2e-5, 2e-5);
  }
  ref_close(f);
}

static void test_config_errors(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_non_null(tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2), tg_init_const(1)));
  tg_sgd_config s = tg_sgd_config_default(-0.1);
  assert_error(tg_sgd_new(vs, s) == NULL, "Invalid learning rate: -0.1");
  s = tg_sgd_config_default(0.1);
  s.momentum = -1;
  assert_error(tg_sgd_new(vs, s) == NULL, "Invalid momentum value");
  s = tg_sgd_config_default(0.1);
  s.weight_decay = -1;
  assert_error(tg_sgd_new(vs, s) == NULL, "Invalid weight_decay value");
  s = tg_sgd_config_default(0.1);
  s.nesterov = true;
  assert_error(tg_sgd_new(vs, s) == NULL,
               "Nesterov momentum requires a momentum and zero dampening");
  s.momentum = 0.9;
  s.dampening = 0.1;
  assert_error(tg_sgd_new(vs, s) == NULL, "zero dampening");
  tg_adam_config a = tg_adam_config_default(0.1);
  a.beta1 = 1.0;
  assert_error(tg_adam_new(vs, a) == NULL, "Invalid beta parameter at index 0: 1");
  a = tg_adam_config_default(0.1);
  a.beta2 = -0.5;
  assert_error(tg_adam_new(vs, a) == NULL, "Invalid beta parameter at index 1");
  a = tg_adam_config_default(0.1);
  a.eps = -1;
  assert_error(tg_adam_new(vs, a) == NULL, "Invalid epsilon value");
  a = tg_adam_config_default(NAN);
  assert_error(tg_adam_new(vs, a) == NULL, "Invalid learning rate");
  assert_error(tg_sgd_new(NULL, tg_sgd_config_default(0.1)) == NULL, "'vs' is NULL");
  assert_error(tg_optimizer_step(NULL) < 0, "NULL");
  assert_error(tg_clip_grad_norm(vs, -1) < 0, "max_norm must be non-negative");
  assert_error(tg_clip_grad_norm(NULL, 1) < 0, "NULL");
  /* Still works afterwards. */
  tg_optimizer *opt = tg_sgd_new(vs, tg_sgd_config_default(0.5));
  assert_non_null(opt);
  assert_int_equal(tg_optimizer_step(opt), 0); /* no gradients: nothing to do */
  tg_optimizer_free(opt);
  tg_varstore_free(vs);
}

/* Only trainable variables, and only those with a gradient, move; zero_grad drops
 * gradients; an optimizer may outlive its var store. */
static void test_skips_and_lifetime(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_tensor *w = tg_path_var(root, "w", TG_SHAPE(3), tg_init_const(1));
  tg_tensor *stat = tg_path_var_frozen(root, "stat", TG_SHAPE(3), tg_init_const(5));
  assert_non_null(w);
  assert_non_null(stat);
  tg_optimizer *opt = tg_sgd_new(vs, tg_sgd_config_default(0.5));
  tg_scope_begin();
  tg_tensor *loss = tg_sum(tg_mul(w, tg_add(w, stat))); /* d/dw = 2w + stat = 7 */
  assert_ok(tg_backward(loss) == 0);
  assert_null(tg_grad(stat));
  assert_ok(tg_optimizer_step(opt) == 0);
  assert_ok(tg_scope_end() == 0);
  for (int i = 0; i < 3; i++) {
    assert_float_equal(((float *)tg_data(w))[i], 1 - 0.5 * 7, 1e-6);
    assert_float_equal(((float *)tg_data(stat))[i], 5, 0);
  }
  assert_non_null(tg_grad(w));
  tg_optimizer_zero_grad(opt);
  assert_null(tg_grad(w));
  assert_ok(tg_optimizer_step(opt) == 0); /* grads dropped: a no-op */
  assert_float_equal(((float *)tg_data(w))[0], -2.5, 1e-6);
  assert_float_equal(tg_clip_grad_norm(vs, 1.0), 0.0, 0);
  tg_varstore_free(vs); /* the optimizer still holds its parameters */
  tg_optimizer_zero_grad(opt);
  assert_ok(tg_optimizer_step(opt) == 0);
  tg_optimizer_free(opt);
}

/* clip_grad_norm leaves small gradients alone and scales large ones to max_norm. */
static void test_clip_grad_norm(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_ok(tg_varstore_set_dtype(vs, TG_F64) == 0);
  tg_path *root = tg_varstore_root(vs);
  tg_tensor *a = tg_path_var(root, "a", TG_SHAPE(2), tg_init_const(0));
  tg_tensor *b = tg_path_var(root, "b", TG_SHAPE(1), tg_init_const(0));
  tg_scope_begin();
  tg_tensor *ga = tg_tensor_from_data((double[]){3, 0}, TG_SHAPE(2), TG_F64, TG_CPU);
  tg_tensor *gb = tg_tensor_from_data((double[]){4}, TG_SHAPE(1), TG_F64, TG_CPU);
  assert_ok(tg_backward_ex(a, ga, false) == 0 && tg_backward_ex(b, gb, false) == 0);
  assert_ok(tg_scope_end() == 0);
  assert_float_equal(tg_clip_grad_norm(vs, 10.0), 5.0, 1e-12);
  assert_float_equal(((double *)tg_data(tg_grad(a)))[0], 3.0, 0);
  assert_float_equal(tg_clip_grad_norm(vs, 1.0), 5.0, 1e-12);
  assert_float_equal(((double *)tg_data(tg_grad(a)))[0], 3.0 / (5 + 1e-6), 1e-15);
  assert_float_equal(((double *)tg_data(tg_grad(b)))[0], 4.0 / (5 + 1e-6), 1e-15);
  tg_varstore_free(vs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_trajectories_f64), cmocka_unit_test(test_trajectories_f32),
      cmocka_unit_test(test_config_errors),    cmocka_unit_test(test_skips_and_lifetime),
      cmocka_unit_test(test_clip_grad_norm),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
