/* Parameter groups against torch.optim (tests/ref/gen_optim_groups.py) and exact
 * resume: 20 training steps in one go give bit for bit the parameters of 10 steps,
 * a checkpoint (model, optimizer state, data order position, generator state), and
 * 10 more steps in a new process (this test binary run again with --resume-child). */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { STEPS = 5 };

/* ------------------------------------------------------------ param groups -- */

static bool starts_with_b(const char *name, const tg_tensor *var, void *ctx) {
  (void)var;
  return name[0] == *(const char *)ctx;
}

static void run_groups(const char *case_name, bool adam, bool by_filter) {
  ref_file *f = ref_open("optim_groups");
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_ok(tg_varstore_set_dtype(vs, TG_F64) == 0);
  tg_path *root = tg_varstore_root(vs);
  const char *names[3] = {"w", "b", "u"};
  tg_tensor *p[3];
  p[0] = tg_path_var(root, "w", TG_SHAPE(1, 4), tg_init_const(0));
  p[1] = tg_path_var(root, "b", TG_SHAPE(1), tg_init_const(0));
  p[2] = tg_path_var(root, "u", TG_SHAPE(3), tg_init_const(0));
  for (int i = 0; i < 3; i++) {
    char label[8];
    snprintf(label, sizeof label, "%s0", names[i]);
    tg_tensor *v = ref_get(f, case_name, label, TG_F64);
    assert_ok(tg_copy_(p[i], v) == 0);
    tg_tensor_free(v);
  }
  tg_param_group g[2] = {tg_param_group_default(), tg_param_group_default()};
  g[0].prefix = "w";
  char b = 'b';
  if (by_filter) {
    g[1].filter = starts_with_b;
    g[1].ctx = &b;
  } else {
    g[1].prefix = "b";
  }
  tg_optimizer *opt;
  if (adam) {
    tg_adam_config c = tg_adam_config_default(0.05);
    c.weight_decay = 0.1;
    c.decoupled = true;
    g[0].lr = 0.02;
    g[1].weight_decay = 0;
    g[1].momentum = 0.8; /* Adam's beta1 */
    opt = tg_adam_new_groups(vs, c, g, 2);
  } else {
    tg_sgd_config c = tg_sgd_config_default(0.1);
    c.momentum = 0.9;
    g[0].weight_decay = 0.1;
    g[1].lr = 0.02;
    g[1].momentum = 0.5;
    opt = tg_sgd_new_groups(vs, c, g, 2);
  }
  assert_ok(opt);
  assert_int_equal(tg_optimizer_num_groups(opt), 3);
  for (int k = 0; k < 3; k++)
    assert_int_equal(tg_optimizer_group_len(opt, k), 1);
  tg_tensor *x = ref_get(f, case_name, "x", TG_F64),
            *y = ref_get(f, case_name, "y", TG_F64);
  for (int k = 1; k <= STEPS; k++) {
    if (k == 3)
      assert_ok(tg_optimizer_set_group_lr(opt, 1, 0.03) == 0);
    tg_scope_begin();
    tg_optimizer_zero_grad(opt);
    int dim1[1] = {1};
    tg_tensor *pred = tg_add(tg_sum_dims(tg_mul(x, p[0]), dim1, 1, false), p[1]);
    tg_tensor *loss = tg_mean(tg_pow(tg_sub(pred, y), 2.0));
    assert_ok(loss && tg_backward(loss) == 0 && tg_optimizer_step(opt) == 0);
    for (int i = 0; i < 2; i++) {
      char label[8];
      snprintf(label, sizeof label, "%s%d", names[i], k);
      tg_tensor *want = ref_get(f, case_name, label, TG_F64);
      assert_close(p[i], want, 1e-13, 1e-12);
      tg_tensor_free(want);
    }
    tg_scope_end();
  }
  assert_true(tg_optimizer_group_lr(opt, 1) == 0.03);
  assert_true(tg_optimizer_group_lr(opt, 0) == (adam ? 0.02 : 0.1));
  assert_true(tg_optimizer_group_momentum(opt, 1) == (adam ? 0.8 : 0.5));
  tg_tensor_free(x);
  tg_tensor_free(y);
  tg_optimizer_free(opt);
  tg_varstore_free(vs);
  ref_close(f);
}

static void test_groups_sgd(void **state) {
  (void)state;
  run_groups("sgd", false, false);
  run_groups("sgd", false, true);
}

static void test_groups_adamw(void **state) {
  (void)state;
  run_groups("adamw", true, false);
  run_groups("adamw", true, true);
}

static void test_group_errors(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2), tg_init_const(1));
  tg_param_group g = tg_param_group_default();
  g.lr = -1;
  assert_error(!tg_sgd_new_groups(vs, tg_sgd_config_default(0.1), &g, 1),
               "Invalid learning rate: -1");
  g = tg_param_group_default();
  g.momentum = 1.5;
  assert_error(!tg_adam_new_groups(vs, tg_adam_config_default(0.1), &g, 1),
               "Invalid beta parameter at index 0: 1.5");
  assert_error(!tg_sgd_new_groups(vs, tg_sgd_config_default(0.1), NULL, 2),
               "2 parameter groups");
  tg_optimizer *opt = tg_sgd_new(vs, tg_sgd_config_default(0.1));
  assert_int_equal(tg_optimizer_num_groups(opt), 1);
  assert_error(tg_optimizer_set_group_lr(opt, 1, 0.1) < 0,
               "group 1 is out of range for an optimizer of 1 groups");
  assert_error(tg_optimizer_set_group_lr(opt, 0, NAN) < 0, "Invalid learning rate: nan");
  assert_true(tg_optimizer_lr(opt) == 0.1);
  assert_error(tg_optimizer_set_group_momentum(opt, 0, -1) < 0, "Invalid momentum value");
  tg_optimizer_free(opt);
  tg_varstore_free(vs);
}

/* ------------------------------------------------------------ exact resume -- */

enum { N = 40, IN = 6, HIDDEN = 8, CLASSES = 3, BATCH = 8 };

typedef struct {
  tg_varstore *vs;
  tg_module *fc1, *fc2;
  tg_optimizer *opt; /* SGD (nesterov, weight decay) or AdamW, fc1 and fc2 in groups */
  tg_batch_iter *it;
  tg_tensor *x, *y;
} run;

static bool in_fc1(const char *name, const tg_tensor *v, void *ctx) {
  (void)v;
  (void)ctx;
  return !strncmp(name, "fc1.", 4);
}

static run run_new(uint64_t init_seed, bool adam) {
  run r = {0};
  /* The data depend on a fixed seed, the initial weights on init_seed. */
  tg_manual_seed(99);
  r.x = tg_randn(TG_SHAPE(N, IN), TG_F32, TG_CPU);
  tg_tensor *u = tg_rand(TG_SHAPE(N), TG_F64, TG_CPU);
  r.y = tg_empty(TG_SHAPE(N), TG_I64, TG_CPU);
  for (int i = 0; i < N; i++)
    ((int64_t *)tg_data(r.y))[i] = (int64_t)(((double *)tg_data(u))[i] * CLASSES);
  tg_tensor_free(u);
  tg_manual_seed(init_seed);
  r.vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(r.vs);
  r.fc1 = tg_nn_linear(tg_path_sub(root, "fc1"), IN, HIDDEN, tg_linear_config_default());
  r.fc2 =
      tg_nn_linear(tg_path_sub(root, "fc2"), HIDDEN, CLASSES, tg_linear_config_default());
  tg_param_group fc1 = tg_param_group_default();
  fc1.filter = in_fc1;
  fc1.weight_decay = 0;
  fc1.lr = adam ? 0.02 : 0.2;
  if (adam) {
    tg_adam_config ac = tg_adam_config_default(0.01);
    ac.decoupled = true;
    ac.weight_decay = 0.01;
    r.opt = tg_adam_new_groups(r.vs, ac, &fc1, 1);
  } else {
    tg_sgd_config sc = tg_sgd_config_default(0.1);
    sc.momentum = 0.9;
    sc.nesterov = true;
    sc.weight_decay = 1e-3;
    r.opt = tg_sgd_new_groups(r.vs, sc, &fc1, 1);
  }
  tg_batch_config bc = tg_batch_config_default();
  bc.shuffle = true;
  bc.seed = 5;
  bc.prefetch = true;
  r.it = tg_batch_iter_new(r.x, r.y, BATCH, bc);
  assert_ok(r.fc1 && r.fc2 && r.opt && r.it);
  return r;
}

static void run_free(run *r) {
  tg_batch_iter_free(r->it);
  tg_optimizer_free(r->opt);
  tg_varstore_free(r->vs);
  tg_tensor_free(r->x);
  tg_tensor_free(r->y);
}

/* Steps of training: dropout draws on the global generator, batches come from the
 * iterator across epoch ends, and the SGD lr decays per step. */
static void train(run *r, int steps) {
  for (int s = 0; s < steps; s++) {
    tg_scope_begin();
    tg_tensor *x, *y;
    int got = tg_batch_iter_next(r->it, &x, &y);
    if (got == 0)
      got = tg_batch_iter_next(r->it, &x, &y);
    assert_int_equal(got, 1);
    double lr = tg_optimizer_group_lr(r->opt, 0);
    assert_ok(tg_optimizer_set_group_lr(r->opt, 0, 0.97 * lr) == 0);
    tg_tensor *h = tg_dropout(tg_relu(tg_module_forward(r->fc1, x, true)), 0.25, true);
    tg_tensor *loss =
        tg_cross_entropy(tg_module_forward(r->fc2, h, true), y, TG_REDUCTION_MEAN, -100);
    tg_optimizer_zero_grad(r->opt);
    assert_ok(loss && tg_backward(loss) == 0 && tg_optimizer_step(r->opt) == 0);
    assert_ok(tg_scope_end() == 0);
  }
}

static void save_checkpoint(const run *r, const char *path) {
  tg_tensor_dict *d = tg_tensor_dict_new();
  assert_ok(tg_varstore_state_dict(r->vs, d, NULL) == 0);
  assert_ok(tg_optimizer_state_dict(r->opt, d, "optim.") == 0);
  uint64_t rng[4];
  tg_random_get_state(rng);
  tg_tensor *t = tg_tensor_from_data(rng, TG_SHAPE(4), TG_I64, TG_CPU);
  assert_ok(tg_tensor_dict_set(d, "rng", t) == 0);
  tg_tensor_free(t);
  int64_t epoch, batch;
  tg_batch_iter_position(r->it, &epoch, &batch);
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", (long long)epoch);
  assert_ok(tg_tensor_dict_set_metadata(d, "epoch", buf) == 0);
  snprintf(buf, sizeof buf, "%lld", (long long)batch);
  assert_ok(tg_tensor_dict_set_metadata(d, "batch", buf) == 0);
  assert_ok(tg_save_tensors(d, path) == 0);
  tg_tensor_dict_free(d);
}

static void load_checkpoint(run *r, const char *path) {
  tg_tensor_dict *d = tg_load_tensors(path, NULL);
  assert_ok(d);
  tg_load_options o = tg_load_options_default();
  o.strict_dtype = true;
  o.exclude_prefix = "optim.";
  tg_load_report rep;
  /* "rng" is no variable: a non-strict load that reports exactly it. */
  o.strict = false;
  assert_ok(tg_varstore_load_dict(r->vs, d, &o, &rep) == 0);
  assert_int_equal(rep.n_missing, 0);
  assert_int_equal(rep.n_unexpected, 1);
  assert_string_equal(rep.unexpected[0], "rng");
  tg_load_report_free(&rep);
  assert_ok(tg_optimizer_load_state_dict(r->opt, d, "optim.") == 0);
  uint64_t rng[4];
  memcpy(rng, tg_data(tg_tensor_dict_get(d, "rng")), sizeof rng);
  tg_random_set_state(rng);
  assert_ok(tg_batch_iter_seek(r->it, atoll(tg_tensor_dict_metadata(d, "epoch")),
                               atoll(tg_tensor_dict_metadata(d, "batch"))) == 0);
  tg_tensor_dict_free(d);
}

/* The child process: resume from argv[2], train 10 steps, save the weights to
 * argv[3]. Exit status 0 on success. */
static int resume_child(const char *ckpt, const char *out, bool adam) {
  run r = run_new(12345, adam); /* other initial weights: the checkpoint replaces them */
  load_checkpoint(&r, ckpt);
  train(&r, 10);
  int rc = tg_varstore_save(r.vs, out);
  run_free(&r);
  return rc == 0 ? 0 : 1;
}

static void exact_resume(bool adam) {
  char dir[] = "/tmp/tg_resume_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char ckpt[64], out[64], cmd[128];
  snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", dir);
  snprintf(out, sizeof out, "%s/out.safetensors", dir);

  run straight = run_new(7, adam);
  train(&straight, 20); /* 2.5 epochs of 5 batches: crosses two epoch ends */

  run first = run_new(7, adam);
  train(&first, 10);
  save_checkpoint(&first, ckpt);
  /* A wrong state dict is refused and changes nothing. */
  tg_tensor_dict *d = tg_load_tensors(ckpt, NULL);
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_nn_linear(tg_path_sub(tg_varstore_root(vs), "fc1"), IN, HIDDEN,
               tg_linear_config_default());
  tg_nn_linear(tg_path_sub(tg_varstore_root(vs), "fc2"), HIDDEN, CLASSES,
               tg_linear_config_default());
  tg_optimizer *other = adam ? tg_sgd_new(vs, tg_sgd_config_default(0.1))
                             : tg_adam_new(vs, tg_adam_config_default(0.1));
  assert_error(tg_optimizer_load_state_dict(other, d, "optim.") < 0,
               adam ? "lacks param_groups.0.momentum" : "lacks param_groups.0.beta1");
  tg_optimizer_free(other);
  other = adam ? tg_adam_new(vs, tg_adam_config_default(0.1))
               : tg_sgd_new(vs, tg_sgd_config_default(0.1));
  assert_error(tg_optimizer_load_state_dict(other, d, "optim.") < 0,
               "parameter group 0 holds 4 parameters but the state dict's holds 2");
  tg_optimizer_free(other);
  tg_varstore_free(vs);
  double lr = tg_optimizer_group_lr(first.opt, 0);
  assert_error(tg_optimizer_load_state_dict(first.opt, d, NULL) < 0,
               "lacks param_groups.0.lr");
  tg_tensor *extra = tg_zeros(TG_SHAPE(2), TG_F32, TG_CPU);
  assert_ok(tg_tensor_dict_set(d, "optim.state.nope.exp_avg", extra) == 0);
  tg_tensor_free(extra);
  assert_error(tg_optimizer_load_state_dict(first.opt, d, "optim.") < 0,
               "unexpected 'optim.state.nope.exp_avg'");
  assert_true(tg_optimizer_group_lr(first.opt, 0) == lr);
  tg_tensor_dict_free(d);
  run_free(&first);

  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    char *argv[] = {"test_optim_state", adam ? "--resume-adam" : "--resume-sgd", ckpt,
                    out, NULL};
    execv("/proc/self/exe", argv);
    _exit(127);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

  run resumed = run_new(1, adam);
  assert_ok(tg_varstore_load(resumed.vs, out) == 0);
  for (int i = 0; i < tg_varstore_len(straight.vs); i++) {
    const char *name;
    tg_tensor *a = tg_varstore_var(straight.vs, i, &name);
    tg_tensor *b = tg_varstore_get(resumed.vs, name);
    assert_memory_equal(tg_data(a), tg_data(b), (size_t)tg_numel(a) * sizeof(float));
  }
  /* And resuming without the optimizer state does not give the same weights. */
  run_free(&resumed);
  run plain = run_new(7, adam);
  assert_ok(tg_varstore_load_ex(plain.vs, ckpt,
                                &(tg_load_options){false, true, NULL, "optim."},
                                NULL) == 0);
  train(&plain, 10);
  tg_tensor *a = tg_varstore_get(straight.vs, "fc2.weight");
  tg_tensor *b = tg_varstore_get(plain.vs, "fc2.weight");
  assert_true(memcmp(tg_data(a), tg_data(b), (size_t)tg_numel(a) * sizeof(float)) != 0);
  run_free(&plain);
  run_free(&straight);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

static void test_exact_resume_sgd(void **state) {
  (void)state;
  exact_resume(false);
}

static void test_exact_resume_adamw(void **state) {
  (void)state;
  exact_resume(true);
}

int main(int argc, char **argv) {
  if (argc == 4 && !strncmp(argv[1], "--resume-", 9))
    return resume_child(argv[2], argv[3], !strcmp(argv[1], "--resume-adam"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_groups_sgd),         cmocka_unit_test(test_groups_adamw),
      cmocka_unit_test(test_group_errors),       cmocka_unit_test(test_exact_resume_sgd),
      cmocka_unit_test(test_exact_resume_adamw),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
