/* Thread safety as documented in tapegrad.h: separate tensors, tapes and scopes on
 * separate threads at once; errors, grad mode and scopes are per thread; the random
 * generator is shared behind a lock. */
#include "common.h"
#include "runtime/internal.h" /* tg__parallel_for */

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { THREADS = 4, STEPS = 300 };

static tg_tensor *shared_ones; /* read by every thread at once */

typedef struct {
  int id;
  double final_loss;
  int failures;
  char error[256];
} worker;

/* Each thread fits its own y = (id+1) x + id with its own tape. Even threads also
 * provoke errors and no-grad sections, which must not leak into other threads. */
static void *train(void *arg) {
  worker *w = arg;
  tg_tensor *a = tg_zeros(TG_SHAPE(1), TG_F64, TG_CPU);
  tg_tensor *b = tg_zeros(TG_SHAPE(1), TG_F64, TG_CPU);
  tg_set_requires_grad(a, true);
  tg_set_requires_grad(b, true);
  for (int step = 0; step < STEPS; step++) {
    tg_scope_begin();
    tg_tensor *x = tg_randn(TG_SHAPE(64), TG_F64, TG_CPU);
    tg_tensor *y = tg_add_scalar(tg_mul_scalar(x, w->id + 1), w->id);
    tg_tensor *pred = tg_add(tg_mul(tg_mul(x, shared_ones), a), b);
    tg_tensor *loss = tg_mean(tg_pow(tg_sub(pred, y), 2.0));
    if (w->id % 2 == 0) {
      tg_clear_error();
      if (tg_add(x, tg_ones(TG_SHAPE(3), TG_F64, TG_CPU)) != NULL ||
          !strstr(tg_last_error(), "[64]"))
        w->failures++;
      tg_no_grad_begin();
      if (tg_requires_grad(tg_mul(a, a)))
        w->failures++;
      tg_no_grad_end();
    } else if (tg_last_error()[0]) {
      snprintf(w->error, sizeof w->error, "%s", tg_last_error());
      w->failures++; /* another thread's error showed up here */
    }
    tg_zero_grad(a);
    tg_zero_grad(b);
    if (!loss || tg_backward(loss) != 0) {
      w->failures++;
      tg_scope_end();
      break;
    }
    w->final_loss = tg_item(loss);
    ((double *)tg_data(a))[0] -= 0.1 * ((double *)tg_data(tg_grad(a)))[0];
    ((double *)tg_data(b))[0] -= 0.1 * ((double *)tg_data(tg_grad(b)))[0];
    tg_scope_end();
  }
  tg_tensor_free(a);
  tg_tensor_free(b);
  return NULL;
}

static void test_independent_tapes_on_threads(void **state) {
  (void)state;
  pthread_t th[THREADS];
  worker w[THREADS];
  shared_ones = tg_ones(TG_SHAPE(64), TG_F64, TG_CPU);
  for (int i = 0; i < THREADS; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].id = i;
    assert_int_equal(pthread_create(&th[i], NULL, train, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++)
    pthread_join(th[i], NULL);
  tg_tensor_free(shared_ones);
  for (int i = 0; i < THREADS; i++) {
    if (w[i].failures)
      fail_msg("thread %d: %d failures (%s)", i, w[i].failures, w[i].error);
    assert_true(w[i].final_loss < 1e-6);
  }
  assert_string_equal(tg_last_error(), ""); /* nothing leaked into this thread */
}

/* Tensors freed on other threads than the ones that made them (the batch iterator's
 * prefetch thread hands its batches over): their headers come from per-thread lists
 * of freed blocks (runtime/alloc.c), and a thread's exit frees its idle blocks only,
 * never a live tensor's. More tensors than a list keeps, views among them. */
enum { HANDED = 3000 };

static void *make_tensors(void *arg) {
  tg_tensor **out = arg;
  for (int i = 0; i < HANDED; i++) {
    out[2 * i] = tg_full(TG_SHAPE(4), i, TG_F32, TG_CPU);
    out[2 * i + 1] = tg_reshape(out[2 * i], TG_SHAPE(2, 2));
    tg_tensor_free(tg_zeros(TG_SHAPE(3), TG_F64, TG_CPU)); /* an idle block */
  }
  return NULL;
}

static void *free_tensors(void *arg) {
  tg_tensor **ts = arg;
  for (int i = 0; i < 2 * HANDED; i++)
    tg_tensor_free(ts[i]);
  return NULL;
}

static void test_tensors_freed_on_other_threads(void **state) {
  (void)state;
  tg_tensor **ts = calloc(2 * HANDED, sizeof *ts);
  assert_non_null(ts);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, make_tensors, ts), 0);
  pthread_join(th, NULL); /* its idle blocks are gone; its tensors live on */
  for (int i = 0; i < HANDED; i++) {
    assert_non_null(ts[2 * i + 1]);
    tg_tensor_free(ts[2 * i]); /* the view keeps the storage */
    tg_scope_begin();
    assert_true(tg_item(tg_sum(ts[2 * i + 1])) == 4.0 * i);
    tg_scope_end();
    tg_tensor_free(ts[2 * i + 1]);
  }
  for (int i = 0; i < HANDED; i++) { /* and the other way round */
    ts[2 * i] = tg_full(TG_SHAPE(4), i, TG_F64, TG_CPU);
    ts[2 * i + 1] = tg_reshape(ts[2 * i], TG_SHAPE(4, 1));
  }
  assert_int_equal(pthread_create(&th, NULL, free_tensors, ts), 0);
  pthread_join(th, NULL);
  free(ts);
}

/* tg__parallel_for covers [0, n) exactly once at 1 to 3 threads (work large enough
 * for all of them), with one call per thread at most, and calls nothing for n = 0. */
typedef struct {
  int *hits;
  _Atomic int64_t n_calls;
} cover;

static void mark(void *ctx, int64_t lo, int64_t hi) {
  cover *c = ctx;
  for (int64_t i = lo; i < hi; i++)
    c->hits[i]++;
  c->n_calls++;
}

static void test_parallel_for_covers_each_index_once(void **state) {
  (void)state;
  const int64_t sizes[] = {0, 1, 2, 3, 5, 7, 100003};
  int *hits = calloc(100003, sizeof *hits);
  assert_non_null(hits);
  for (int threads = 1; threads <= 3; threads++) {
    tg_set_num_threads(threads);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
      const int64_t n = sizes[k];
      memset(hits, 0, 100003 * sizeof *hits);
      cover c = {.hits = hits};
      tg__parallel_for(n, 1 << 20, mark, &c);
      for (int64_t i = 0; i < n; i++)
        assert_int_equal(hits[i], 1);
      assert_true(c.n_calls <= (n < threads ? n : threads));
      assert_true(n == 0 ? c.n_calls == 0 : c.n_calls >= 1);
      if (threads > 1 && n == 100003) /* the parallel path ran */
        assert_true(c.n_calls >= 2);
    }
  }
  tg_set_num_threads(2);
  free(hits);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_independent_tapes_on_threads),
      cmocka_unit_test(test_tensors_freed_on_other_threads),
      cmocka_unit_test(test_parallel_for_covers_each_index_once),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
