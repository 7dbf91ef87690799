/* The README's resumable training loop, compiled and run: the code between the
 * markers below must appear in README.md as it is here (the test checks), and 12 steps
 * in one go end where 5 + checkpoint + 7 do, bit for bit. */
#include "common.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TG_SOURCE_ROOT
#error "TG_SOURCE_ROOT must name the source directory"
#endif

int train(tg_varstore *vs, tg_module *net, tg_tensor *images, tg_tensor *labels,
          int64_t steps, int64_t until, const char *ckpt);

/* README begin */
/* No weight decay on biases; a linear warm-up, then a cosine decay. */
static bool is_bias(const char *name, const tg_tensor *var, void *ctx) {
  (void)var, (void)ctx;
  return strstr(name, "bias") != NULL;
}

/* Everything a step depends on, in one safetensors file: the weights under their
 * names, the rest under "train.". */
static int save_run(const char *path, tg_varstore *vs, tg_optimizer *opt,
                    tg_scheduler *sched, tg_batch_iter *batches) {
  tg_tensor_dict *d = tg_tensor_dict_new();
  int failed = !d || tg_varstore_state_dict(vs, d, NULL) < 0 ||
               tg_optimizer_state_dict(opt, d, "train.optim.") < 0 ||
               tg_scheduler_state_dict(sched, d, "train.sched.") < 0 ||
               tg_batch_iter_state_dict(batches, d, "train.data.") < 0 ||
               tg_save_tensors(d, path) < 0;
  tg_tensor_dict_free(d);
  return failed ? -1 : 0;
}

static int load_run(const char *path, tg_varstore *vs, tg_optimizer *opt,
                    tg_scheduler *sched, tg_batch_iter *batches) {
  tg_tensor_dict *d = tg_load_tensors(path, NULL);
  tg_load_options weights = tg_load_options_default();
  weights.exclude_prefix = "train.";
  int failed = !d || tg_varstore_load_dict(vs, d, &weights, NULL) < 0 ||
               tg_optimizer_load_state_dict(opt, d, "train.optim.") < 0 ||
               tg_scheduler_load_state_dict(sched, d, "train.sched.") < 0 ||
               tg_batch_iter_load_state_dict(batches, d, "train.data.") < 0;
  tg_tensor_dict_free(d);
  return failed ? -1 : 0;
}

/* Trains net up to step `until` of `steps`, from ckpt when it exists, then saves ckpt:
 * stopped and resumed, a run ends bit for bit where an uninterrupted one does. */
int train(tg_varstore *vs, tg_module *net, tg_tensor *images, tg_tensor *labels,
          int64_t steps, int64_t until, const char *ckpt) {
  tg_sgd_config sgd = tg_sgd_config_default(0.1);
  sgd.momentum = 0.9;
  sgd.weight_decay = 5e-4;
  tg_param_group biases = tg_param_group_default();
  biases.filter = is_bias;
  biases.weight_decay = 0;
  tg_optimizer *opt = tg_sgd_new_groups(vs, sgd, &biases, 1); /* 2 groups */
  tg_scheduler *sched =
      tg_sequential_lr_new(opt,
                           (tg_scheduler *[]){tg_linear_lr_new(opt, 0.1, 1, 3),
                                              tg_cosine_lr_new(opt, steps - 3, 0)},
                           2, (int64_t[]){3});
  tg_batch_config bc = tg_batch_config_default();
  bc.shuffle = true;
  bc.prefetch = true;
  tg_batch_iter *batches = tg_batch_iter_new(images, labels, 16, bc);
  int failed = !sched || !batches ||
               (access(ckpt, F_OK) == 0 && load_run(ckpt, vs, opt, sched, batches) < 0);
  for (int64_t step = tg_scheduler_last_epoch(sched); !failed && step < until; step++) {
    tg_scope_begin();
    tg_tensor *x, *y;
    if (tg_batch_iter_next(batches, &x, &y) == 0) /* an epoch ended: the next begins */
      tg_batch_iter_next(batches, &x, &y);
    tg_tensor *loss =
        tg_cross_entropy(tg_module_forward(net, x, true), y, TG_REDUCTION_MEAN, -100);
    tg_optimizer_zero_grad(opt);
    failed = !loss || tg_backward(loss) < 0 || tg_optimizer_step(opt) < 0 ||
             tg_scheduler_step(sched) < 0;
    tg_scope_end();
  }
  failed = failed || save_run(ckpt, vs, opt, sched, batches) < 0;
  if (failed)
    fprintf(stderr, "training failed: %s\n", tg_last_error());
  tg_batch_iter_free(batches);
  tg_scheduler_free(sched);
  tg_optimizer_free(opt);
  return failed ? -1 : 0;
}
/* README end */

static void test_readme_has_the_code(void **state) {
  (void)state;
  char *self = read_file(TG_SOURCE_ROOT "/tests/test_readme.c", NULL);
  char *readme = read_file(TG_SOURCE_ROOT "/README.md", NULL);
  char *begin = strstr(self, "/* README begin */\n"),
       *end = strstr(self, "/* README end */");
  assert_non_null(begin);
  assert_non_null(end);
  begin += strlen("/* README begin */\n");
  *end = '\0';
  if (!strstr(readme, begin))
    fail_msg("README.md lacks the code of tests/test_readme.c between its markers");
  free(self);
  free(readme);
}

typedef struct {
  tg_varstore *vs;
  tg_module *net;
} model;

static model model_new(void) {
  tg_manual_seed(3);
  model m = {tg_varstore_new(TG_CPU), NULL};
  tg_path *root = tg_varstore_root(m.vs);
  m.net = tg_nn_sequential_path(tg_path_sub(root, "net"));
  tg_sequential_add(
      m.net, tg_nn_linear(tg_sequential_path(m.net), 5, 8, tg_linear_config_default()));
  tg_sequential_add(m.net, tg_nn_relu(m.vs));
  tg_sequential_add(
      m.net, tg_nn_linear(tg_sequential_path(m.net), 8, 3, tg_linear_config_default()));
  assert_int_equal(tg_varstore_len(m.vs), 4);
  return m;
}

static void test_resumable_loop(void **state) {
  (void)state;
  char dir[] = "/tmp/tg_readme_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char a[64], b[64], cmd[96];
  snprintf(a, sizeof a, "%s/a.safetensors", dir);
  snprintf(b, sizeof b, "%s/b.safetensors", dir);
  tg_manual_seed(11);
  tg_tensor *images = tg_randn(TG_SHAPE(40, 5), TG_F32, TG_CPU);
  tg_tensor *labels = tg_empty(TG_SHAPE(40), TG_I64, TG_CPU);
  for (int i = 0; i < 40; i++)
    ((int64_t *)tg_data(labels))[i] = (i * 7) % 3;

  model straight = model_new(), first = model_new(), second = model_new();
  assert_ok(train(straight.vs, straight.net, images, labels, 12, 12, a) == 0);
  assert_ok(train(first.vs, first.net, images, labels, 12, 5, b) == 0);
  assert_ok(train(second.vs, second.net, images, labels, 12, 12, b) == 0);
  for (int i = 0; i < 4; i++) {
    const char *name;
    tg_tensor *x = tg_varstore_var(straight.vs, i, &name);
    tg_tensor *y = tg_varstore_get(second.vs, name);
    assert_memory_equal(tg_data(x), tg_data(y), (size_t)tg_numel(x) * sizeof(float));
    assert_true(memcmp(tg_data(x), tg_data(tg_varstore_get(first.vs, name)),
                       (size_t)tg_numel(x) * sizeof(float)) != 0);
  }
  tg_varstore_free(straight.vs);
  tg_varstore_free(first.vs);
  tg_varstore_free(second.vs);
  tg_tensor_free(images);
  tg_tensor_free(labels);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_readme_has_the_code),
      cmocka_unit_test(test_resumable_loop),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
