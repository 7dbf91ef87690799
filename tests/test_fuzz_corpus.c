/* Replays the fuzzers' seed corpora and every input they ever crashed on: through the
 * safetensors loader (tests/fuzz/corpus, tests/fuzz/regressions), each must load or
 * fail with a message, leaving the store untouched on failure; through the ops harness
 * (tests/fuzz/ops_corpus, tests/fuzz/ops_regressions; fuzz_ops.c is compiled in, its
 * checks abort on a failure without a message), each must run to the end. */
#include "common.h"
#include "fuzz/fuzz_ops.c" /* LLVMFuzzerTestOneInput: the ops harness, replayed here */

#include <dirent.h>
#include <stdio.h>
#include <string.h>

static tg_varstore *make_store(void) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_path *enc = tg_path_sub(root, "enc");
  assert_non_null(tg_path_var(enc, "weight", TG_SHAPE(2, 3), tg_init_const(0.5)));
  assert_non_null(tg_path_var(enc, "bias", TG_SHAPE(2), tg_init_const(0.25)));
  assert_non_null(tg_path_var_frozen(root, "stat", TG_SHAPE(4), tg_init_const(1.0)));
  return vs;
}

/* Calls fn on the path of every file of dir (dot files aside); returns how many. */
static int for_each_file(const char *dir, void (*fn)(const char *path)) {
  DIR *d = opendir(dir);
  if (!d)
    fail_msg("cannot open %s", dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    fn(path);
    n++;
  }
  closedir(d);
  return n;
}

/* The safetensors loader: loads, or fails with a message and the store untouched. */
static void load_one(const char *path) {
  tg_varstore *vs = make_store();
  float before[6];
  memcpy(before, tg_data(tg_varstore_get(vs, "enc.weight")), sizeof before);
  tg_clear_error();
  if (tg_varstore_load(vs, path) != 0) {
    if (!tg_last_error()[0])
      fail_msg("%s: load failed without a message", path);
    assert_memory_equal(before, tg_data(tg_varstore_get(vs, "enc.weight")),
                        sizeof before);
  }
  tg_clear_error();
  tg_varstore_free(vs);
}

static int replay_dir(const char *dir) { return for_each_file(dir, load_one); }

static void test_seed_corpus(void **state) {
  (void)state;
  assert_true(replay_dir(TG_SOURCE_ROOT "/tests/fuzz/corpus") >= 5);
  /* the valid seed really loads */
  tg_varstore *vs = make_store();
  assert_ok(tg_varstore_load(vs, TG_SOURCE_ROOT "/tests/fuzz/corpus/valid.safetensors") ==
            0);
  tg_varstore_free(vs);
}

static void test_regressions(void **state) {
  (void)state;
  replay_dir(TG_SOURCE_ROOT "/tests/fuzz/regressions");
}

/* The ops harness on one program (its checks abort on a failure without a message). */
static void run_ops(const char *path) {
  size_t len;
  uint8_t *buf = read_file(path, &len);
  LLVMFuzzerTestOneInput(buf, len);
  free(buf);
}

static void test_ops_corpus(void **state) {
  (void)state;
  assert_true(for_each_file(TG_SOURCE_ROOT "/tests/fuzz/ops_corpus", run_ops) >= 16);
  assert_true(for_each_file(TG_SOURCE_ROOT "/tests/fuzz/ops_regressions", run_ops) >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_seed_corpus),
      cmocka_unit_test(test_regressions),
      cmocka_unit_test(test_ops_corpus),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
