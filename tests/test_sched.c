/* Learning-rate schedulers against torch.optim.lr_scheduler (tests/ref/gen_sched.py):
 * every group's lr (and OneCycleLR's momentum) over 100 steps of StepLR, MultiStepLR,
 * LinearLR, CosineAnnealingLR, linear warm-up + cosine (SequentialLR), OneCycleLR and
 * ReduceLROnPlateau; a schedule saved and restored mid-way goes on the same; errors. */
#include "common.h"

#include <math.h>
#include <string.h>

enum { STEPS = 100 };

/* Two groups of lr 0.1 ("a") and 0.05 ("b"), SGD with momentum 0.9 or Adam. */
typedef struct {
  tg_varstore *vs;
  tg_optimizer *opt;
} setup;

static setup setup_new(bool adam) {
  setup s = {tg_varstore_new(TG_CPU), NULL};
  tg_path *root = tg_varstore_root(s.vs);
  tg_path_var(root, "a", TG_SHAPE(2), tg_init_const(0));
  tg_path_var(root, "b", TG_SHAPE(3), tg_init_const(0));
  tg_param_group g[2] = {tg_param_group_default(), tg_param_group_default()};
  g[0].prefix = "a";
  g[0].lr = 0.1;
  g[1].prefix = "b";
  g[1].lr = 0.05;
  if (adam) {
    s.opt = tg_adam_new_groups(s.vs, tg_adam_config_default(1e-3), g, 2);
  } else {
    tg_sgd_config c = tg_sgd_config_default(1e-3);
    c.momentum = 0.9;
    s.opt = tg_sgd_new_groups(s.vs, c, g, 2);
  }
  assert_ok(s.opt);
  return s;
}

static void setup_free(setup *s) {
  tg_optimizer_free(s->opt);
  tg_varstore_free(s->vs);
}

static tg_scheduler *make(const char *name, tg_optimizer *opt) {
  if (!strcmp(name, "step"))
    return tg_step_lr_new(opt, 7, 0.5);
  if (!strcmp(name, "multistep"))
    return tg_multistep_lr_new(opt, (int64_t[]){30, 10, 60, 30}, 4, 0.3);
  if (!strcmp(name, "linear"))
    return tg_linear_lr_new(opt, 0.25, 0.9, 20);
  if (!strcmp(name, "cosine"))
    return tg_cosine_lr_new(opt, 40, 0.001);
  if (!strcmp(name, "warmup_cosine"))
    return tg_sequential_lr_new(opt,
                                (tg_scheduler *[]){tg_linear_lr_new(opt, 0.1, 1.0, 10),
                                                   tg_cosine_lr_new(opt, 90, 0)},
                                2, (int64_t[]){10});
  if (!strcmp(name, "warmup_step_cosine"))
    return tg_sequential_lr_new(opt,
                                (tg_scheduler *[]){tg_linear_lr_new(opt, 0.5, 1.0, 5),
                                                   tg_step_lr_new(opt, 10, 0.5),
                                                   tg_cosine_lr_new(opt, 50, 0.002)},
                                3, (int64_t[]){5, 40});
  if (!strcmp(name, "onecycle"))
    return tg_one_cycle_lr_new(opt, tg_one_cycle_config_default(0.5, STEPS));
  if (!strcmp(name, "onecycle_linear_3phase")) {
    tg_one_cycle_config c = tg_one_cycle_config_default(0.02, STEPS + 10);
    c.pct_start = 0.25;
    c.anneal_linear = true;
    c.three_phase = true;
    c.base_momentum = 0.8;
    c.max_momentum = 0.9;
    c.div_factor = 10;
    c.final_div_factor = 100;
    return tg_one_cycle_lr_new(opt, c);
  }
  tg_plateau_config c = tg_plateau_config_default();
  if (!strcmp(name, "plateau_min_rel")) {
    c.factor = 0.5;
    c.patience = 3;
    c.cooldown = 2;
    c.min_lr = 0.004;
  } else {
    c.mode_max = true;
    c.factor = 0.7;
    c.patience = 2;
    c.threshold = 0.01;
    c.threshold_abs = true;
    c.min_lr = 0.01;
  }
  return tg_reduce_lr_on_plateau_new(opt, c);
}

/* Compares the lrs (and momentum) after `k` steps with the reference. */
static void check_at(const setup *s, const tg_tensor *lr0, const tg_tensor *lr1,
                     const tg_tensor *mom0, const char *name, int k) {
  const double *a = tg_data((tg_tensor *)lr0), *b = tg_data((tg_tensor *)lr1);
  const double *m = tg_data((tg_tensor *)mom0);
  double got[3] = {tg_optimizer_group_lr(s->opt, 0), tg_optimizer_group_lr(s->opt, 1),
                   tg_optimizer_group_momentum(s->opt, 0)};
  double want[3] = {a[k], b[k], m[k]};
  for (int i = 0; i < 3; i++)
    if (!(fabs(got[i] - want[i]) <= 1e-15 + 1e-13 * fabs(want[i])))
      fail_msg("%s: %s after %d steps is %.17g, PyTorch's %.17g", name,
               i == 2 ? "momentum"
               : i    ? "lr of group 1"
                      : "lr of group 0",
               k, got[i], want[i]);
}

static void run_case(ref_file *f, const char *name, int save_at) {
  bool adam = strstr(name, "3phase") != NULL, plateau = !strncmp(name, "plateau", 7);
  setup s = setup_new(adam);
  tg_scheduler *sch = make(name, s.opt);
  assert_ok(sch);
  tg_tensor *lr0 = ref_get(f, name, "lr0", TG_F64),
            *lr1 = ref_get(f, name, "lr1", TG_F64);
  tg_tensor *mom0 = ref_get(f, name, "mom0", TG_F64);
  tg_tensor *metric = plateau ? ref_get(f, name, "metric", TG_F64) : NULL;
  check_at(&s, lr0, lr1, mom0, name, 0);
  for (int k = 0; k < STEPS; k++) {
    if (k == save_at) { /* resume from a state dict into new objects */
      tg_tensor_dict *d = tg_tensor_dict_new();
      assert_ok(tg_optimizer_state_dict(s.opt, d, "opt.") == 0);
      assert_ok(tg_scheduler_state_dict(sch, d, "sched.") == 0);
      setup t = setup_new(adam);
      tg_scheduler *fresh = make(name, t.opt);
      assert_ok(tg_optimizer_load_state_dict(t.opt, d, "opt.") == 0);
      assert_ok(tg_scheduler_load_state_dict(fresh, d, "sched.") == 0);
      assert_int_equal(tg_scheduler_last_epoch(fresh), tg_scheduler_last_epoch(sch));
      tg_tensor_dict_free(d);
      tg_scheduler_free(sch);
      setup_free(&s);
      s = t;
      sch = fresh;
    }
    assert_ok(tg_optimizer_step(s.opt) == 0);
    if (plateau)
      assert_ok(tg_scheduler_step_metric(sch, ((double *)tg_data(metric))[k]) == 0);
    else
      assert_ok(tg_scheduler_step(sch) == 0);
    check_at(&s, lr0, lr1, mom0, name, k + 1);
  }
  tg_tensor_free(lr0);
  tg_tensor_free(lr1);
  tg_tensor_free(mom0);
  tg_tensor_free(metric);
  tg_scheduler_free(sch);
  setup_free(&s);
}

static void test_against_pytorch(void **state) {
  (void)state;
  ref_file *f = ref_open("sched");
  for (int i = 0; i < ref_num_cases(f); i++) {
    run_case(f, ref_case_name(f, i), -1);
    run_case(f, ref_case_name(f, i), 37);
  }
  assert_int_equal(ref_num_cases(f), 10);
  ref_close(f);
}

static void test_errors(void **state) {
  (void)state;
  setup s = setup_new(false);
  tg_scheduler *p = tg_reduce_lr_on_plateau_new(s.opt, tg_plateau_config_default());
  assert_error(tg_scheduler_step(p) < 0, "steps on a metric");
  tg_scheduler *c = tg_cosine_lr_new(s.opt, 10, 0);
  assert_error(tg_scheduler_step_metric(c, 1) < 0, "only ReduceLROnPlateau");
  tg_tensor_dict *d = tg_tensor_dict_new();
  assert_ok(tg_scheduler_state_dict(c, d, NULL) == 0);
  assert_error(tg_scheduler_load_state_dict(p, d, NULL) < 0, "another kind of scheduler");
  tg_tensor_dict_free(d);
  assert_error(!tg_sequential_lr_new(s.opt, (tg_scheduler *[]){p, c}, 2, (int64_t[]){3}),
               "does not support ReduceLROnPlateau");
  assert_error(!tg_sequential_lr_new(s.opt,
                                     (tg_scheduler *[]){tg_linear_lr_new(s.opt, 0, 1, 5),
                                                        tg_cosine_lr_new(s.opt, 10, 0)},
                                     2, (int64_t[]){5}),
               "Starting multiplicative factor expected to be greater than 0");
  tg_scheduler *oc = tg_one_cycle_lr_new(s.opt, tg_one_cycle_config_default(0.1, 2));
  assert_ok(tg_scheduler_step(oc) == 0 && tg_scheduler_step(oc) == 0);
  assert_error(tg_scheduler_step(oc) < 0, "Tried to step 3 times", "total steps is 2");
  tg_scheduler_free(oc);
  assert_error(!tg_step_lr_new(s.opt, 0, 0.1), "step_size must be positive");
  assert_error(!tg_cosine_lr_new(NULL, 5, 0), "'opt' is NULL");
  tg_plateau_config pc = tg_plateau_config_default();
  pc.factor = 1;
  assert_error(!tg_reduce_lr_on_plateau_new(s.opt, pc), "Factor should be < 1.0");
  setup_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_against_pytorch),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
