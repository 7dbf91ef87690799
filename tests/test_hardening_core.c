/* Regression tests for issue #15 (core items): graph release without recursion,
 * in-place changes detected by version counters, var store dtype changes under a live
 * graph, modules of another var store, gradcheck's leaks and NaNs, NaN propagation,
 * creation overflow and the function names in messages. */
#include "common.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------- 2. releasing long graphs -- */

enum { CHAIN = 1000000 };

/* CHAIN reshapes of x (aliases: the graph costs a tensor header and a node per op),
 * each intermediate freed as soon as the next exists, so only the graph holds it and
 * releasing the result releases the whole chain, one op after another. */
static tg_tensor *chain(tg_tensor *x) {
  tg_tensor *cur = tg_tensor_retain(x);
  for (int i = 0; i < CHAIN && cur; i++) {
    tg_tensor *next = tg_reshape(cur, TG_SHAPE(1));
    tg_tensor_free(cur);
    cur = next;
  }
  assert_ok(cur != NULL);
  return cur;
}

static void test_long_chain_freed_without_backward(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(1), TG_F64);
  tg_tensor_free(chain(x));
  tg_tensor_free(x);
}

static void test_long_chain_backward(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(1), TG_F64);
  tg_tensor *y = chain(x);
  assert_ok(tg_backward(y) == 0);
  assert_true(tg_item(tg_grad(x)) == 1.0);
  tg_tensor_free(y);
  tg_tensor_free(x);
}

static void test_long_chain_retained_graph_then_freed(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(1), TG_F64);
  tg_tensor *y = chain(x);
  assert_ok(tg_backward_ex(y, NULL, true) == 0);
  tg_tensor_free(y);
  tg_tensor_free(x);
}

static void test_long_chain_released_by_scope_end(void **state) {
  (void)state;
  tg_tensor *x = rand_leaf(TG_SHAPE(1), TG_F64);
  tg_scope_begin();
  tg_tensor *y = chain(x);
  tg_scope_end(); /* y's only reference was the scope's */
  (void)y;
  tg_tensor_free(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_long_chain_freed_without_backward),
      cmocka_unit_test(test_long_chain_backward),
      cmocka_unit_test(test_long_chain_retained_graph_then_freed),
      cmocka_unit_test(test_long_chain_released_by_scope_end),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
