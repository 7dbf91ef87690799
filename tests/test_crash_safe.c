/* Crash-safe checkpoints: a child process is SIGKILLed while it saves over an existing
 * checkpoint, at many different moments. The file must always load, whole: either
 * the old contents or the new, never a mix and never a torn file. */
#include "common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { ROUNDS = 40 };

static tg_varstore *make_store(double value) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  /* ~8 MB, so a save takes long enough to be interrupted in the middle. */
  assert_non_null(tg_path_var(root, "big", TG_SHAPE(2048, 1024), tg_init_const(value)));
  assert_non_null(tg_path_var(root, "small", TG_SHAPE(7), tg_init_const(value)));
  return vs;
}

/* 1 or 2 when every element holds that value, 0 for a mix. */
static int uniform_value(tg_varstore *vs) {
  int v = -1;
  for (int i = 0; i < tg_varstore_len(vs); i++) {
    tg_tensor *t = tg_varstore_var(vs, i, NULL);
    const float *d = tg_data(t);
    for (int64_t k = 0; k < tg_numel(t); k++) {
      int x = d[k] == 1.0f ? 1 : d[k] == 2.0f ? 2 : 0;
      if (v < 0)
        v = x;
      if (x != v)
        return 0;
    }
  }
  return v;
}

static void test_sigkill_during_save_keeps_a_whole_checkpoint(void **state) {
  (void)state;
  char dir[] = "/tmp/tg_crash_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  tg_varstore *old_vs = make_store(1.0), *new_vs = make_store(2.0);
  assert_ok(tg_varstore_save(old_vs, path) == 0);
  int saw_old = 0, saw_new = 0;
  for (int round = 0; round < ROUNDS; round++) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* child: save over and over until killed */
      for (;;)
        if (tg_varstore_save(new_vs, path) != 0)
          _exit(3);
    }
    struct timespec ts = {0, (long)(round * 997 % 40) * 250000L}; /* 0..10 ms */
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status)); /* it was killed, not failing on its own */
    tg_varstore *check = make_store(0.0);
    if (tg_varstore_load(check, path) != 0)
      fail_msg("round %d: checkpoint unreadable after SIGKILL: %s", round,
               tg_last_error());
    int v = uniform_value(check);
    if (v == 0)
      fail_msg("round %d: checkpoint mixes old and new contents", round);
    saw_old += v == 1;
    saw_new += v == 2;
    tg_varstore_free(check);
    /* put the old contents back so the next round overwrites them again */
    if (v == 2)
      assert_ok(tg_varstore_save(old_vs, path) == 0);
  }
  assert_true(saw_old + saw_new == ROUNDS);
  tg_varstore_free(old_vs);
  tg_varstore_free(new_vs);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sigkill_during_save_keeps_a_whole_checkpoint),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
