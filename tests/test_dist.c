/* dist in a world of one (a process not launched by mpirun, or a build without MPI):
 * every call is checked and changes nothing; calls before tg_dist_init and after
 * tg_dist_finalize fail. The tests run in order: before init, in a world of one,
 * after finalize. tests/test_dist_mpi.c covers two ranks. */
#include "common.h"

#include <string.h>

/* A var store with two trainable variables (one with a gradient), a frozen one and an
 * int64 buffer. */
static tg_varstore *small_store(tg_tensor **w, tg_tensor **b) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_ok(vs && tg_varstore_set_dtype(vs, TG_F64) == 0);
  tg_path *root = tg_varstore_root(vs);
  *w = tg_path_var(root, "w", TG_SHAPE(3, 5), tg_init_randn(0, 1));
  *b = tg_path_var(root, "b", TG_SHAPE(5), tg_init_randn(0, 1));
  assert_ok(*w && *b &&
            tg_path_var_frozen(root, "stat", TG_SHAPE(5), tg_init_const(2)) != NULL);
  tg_scope_begin();
  assert_ok(tg_backward(tg_sum(tg_mul_scalar(*w, 3.0))) == 0);
  tg_scope_end();
  return vs;
}

static void test_before_init(void **state) {
  (void)state;
  tg_tensor *t = tg_zeros(TG_SHAPE(3), TG_F32, TG_CPU);
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  const char *no = "tg_dist_init() has not been called";
  assert_error(tg_dist_rank() < 0, "tg_dist_rank", no);
  assert_error(tg_dist_world_size() < 0, "tg_dist_world_size", no);
  assert_error(tg_dist_barrier() < 0, "tg_dist_barrier", no);
  assert_error(tg_dist_all_reduce(t, TG_DIST_SUM) < 0, "tg_dist_all_reduce", no);
  assert_error(tg_dist_broadcast(t, 0) < 0, "tg_dist_broadcast", no);
  assert_error(tg_dist_broadcast_varstore(vs, 0) < 0, "tg_dist_broadcast_varstore", no);
  assert_error(tg_dist_average_gradients(vs) < 0, "tg_dist_average_gradients", no);
  assert_error(tg_dist_set_bucket_bytes(1024) < 0, "tg_dist_set_bucket_bytes", no);
  assert_error(tg_dist_finalize() < 0, "tg_dist_finalize", no);
  tg_varstore_free(vs);
  tg_tensor_free(t);
}

static void test_world_of_one(void **state) {
  (void)state;
  assert_ok(tg_dist_init() == 0);
  assert_int_equal(tg_dist_rank(), 0);
  assert_int_equal(tg_dist_world_size(), 1);
  assert_error(tg_dist_init() < 0, "tg_dist_init: already initialised (rank 0 of 1)");
  assert_ok(tg_dist_barrier() == 0);
}

/* all_reduce and broadcast leave every dtype and size as it was. */
static void test_collectives_are_identity(void **state) {
  (void)state;
  const int64_t sizes[] = {0, 1, 7, 4099};
  const tg_dtype dtypes[] = {TG_F32, TG_F64, TG_I64};
  for (size_t d = 0; d < 3; d++)
    for (size_t s = 0; s < 4; s++) {
      tg_tensor *t = tg_arange(0, (double)sizes[s], 1, dtypes[d], TG_CPU);
      tg_tensor *want = tg_clone(t);
      assert_ok(t && want);
      size_t bytes = (size_t)sizes[s] * tg_dtype_size(dtypes[d]);
      assert_ok(tg_dist_all_reduce(t, TG_DIST_SUM) == 0);
      if (dtypes[d] != TG_I64)
        assert_ok(tg_dist_all_reduce(t, TG_DIST_AVERAGE) == 0);
      assert_ok(tg_dist_broadcast(t, 0) == 0);
      if (bytes) /* an empty tensor's data pointer points at nothing to compare */
        assert_memory_equal(tg_data(t), tg_data(want), bytes);
      tg_tensor_free(t);
      tg_tensor_free(want);
    }
  tg_tensor *s = tg_scalar(2.5, TG_F32, TG_CPU); /* 0-dim */
  assert_ok(tg_dist_all_reduce(s, TG_DIST_AVERAGE) == 0);
  assert_float_equal(tg_item(s), 2.5, 0);
  tg_tensor_free(s);
}

static void test_var_store_calls_are_identity(void **state) {
  (void)state;
  tg_tensor *w, *b;
  tg_varstore *vs = small_store(&w, &b);
  tg_tensor *w0 = tg_clone(w), *g0 = tg_clone(tg_grad(w));
  assert_ok(tg_dist_broadcast_varstore(vs, 0) == 0);
  assert_ok(tg_dist_set_bucket_bytes(8) == 0); /* every gradient alone, in place */
  assert_ok(tg_dist_average_gradients(vs) == 0);
  assert_ok(tg_dist_set_bucket_bytes(25 << 20) == 0);
  assert_ok(tg_dist_average_gradients(vs) == 0);
  assert_close(w, w0, 0, 0);
  assert_close(tg_grad(w), g0, 0, 0);
  assert_null(tg_grad(b)); /* no rank has a gradient for b: it gets none */
  tg_tensor_free(w0);
  tg_tensor_free(g0);
  tg_varstore_free(vs);
  tg_varstore *empty = tg_varstore_new(TG_CPU);
  assert_ok(tg_dist_average_gradients(empty) == 0);
  assert_ok(tg_dist_broadcast_varstore(empty, 0) == 0);
  tg_varstore_free(empty);
}

static void test_bad_input(void **state) {
  (void)state;
  tg_tensor *i = tg_zeros(TG_SHAPE(2), TG_I64, TG_CPU);
  assert_error(tg_dist_all_reduce(NULL, TG_DIST_SUM) < 0,
               "tg_dist_all_reduce: argument 'tensor' is NULL");
  assert_error(tg_dist_all_reduce(i, TG_DIST_AVERAGE) < 0,
               "tg_dist_all_reduce: the average needs a float tensor, got int64");
  assert_error(tg_dist_all_reduce(i, (tg_dist_op)7) < 0, "unknown reduction 7");
  assert_error(tg_dist_broadcast(i, 1) < 0,
               "tg_dist_broadcast: root 1 is out of range for a world of 1 processes");
  assert_error(tg_dist_broadcast(i, -1) < 0, "root -1 is out of range");
  assert_error(tg_dist_broadcast(NULL, 0) < 0, "argument 'tensor' is NULL");
  assert_error(tg_dist_broadcast_varstore(NULL, 0) < 0,
               "tg_dist_broadcast_varstore: argument 'vs' is NULL");
  assert_error(tg_dist_average_gradients(NULL) < 0,
               "tg_dist_average_gradients: argument 'vs' is NULL");
  assert_error(tg_dist_set_bucket_bytes(0) < 0, "at least 1 byte, got 0");
  /* A failed step passes NULL and keeps its own error. */
  assert_null(tg_reshape(i, TG_SHAPE(3)));
  assert_error(tg_dist_average_gradients(NULL) < 0, "tg_reshape", "invalid for input");
  tg_tensor_free(i);
}

/* CUDA tensors go through NCCL even in a world of one, so a one-GPU machine runs the
 * NCCL path (streams, events, bucket copies) end to end; built without NCCL (the host
 * SIMT build), a world of one leaves them as they are, as on the CPU. */
static void test_cuda_tensors(void **state) {
  (void)state;
  if (!tg_cuda_is_available())
    skip();
  tg_tensor *h = tg_arange(0, 1001, 1, TG_F32, TG_CPU);
  tg_tensor *d = tg_tensor_to(h, tg_cuda(0));
  assert_ok(d && tg_dist_all_reduce(d, TG_DIST_AVERAGE) == 0 &&
            tg_dist_broadcast(d, 0) == 0);
  tg_tensor *back = tg_tensor_to(d, TG_CPU);
  assert_close(back, h, 0, 0);
  tg_varstore *vs = tg_varstore_new(tg_cuda(0));
  tg_tensor *w = tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(3), tg_init_const(1));
  tg_tensor *v = tg_path_var(tg_varstore_root(vs), "v", TG_SHAPE(2), tg_init_const(1));
  assert_ok(w && v);
  tg_scope_begin();
  assert_ok(tg_backward(tg_add(tg_sum(tg_mul_scalar(w, 2.0)), tg_sum(v))) == 0);
  tg_scope_end();
  assert_ok(tg_dist_average_gradients(vs) == 0); /* one bucket of two: copies */
  tg_scope_begin();
  assert_float_equal(tg_item(tg_sum(tg_tensor_to(tg_grad(w), TG_CPU))), 6.0, 0);
  assert_float_equal(tg_item(tg_sum(tg_tensor_to(tg_grad(v), TG_CPU))), 2.0, 0);
  tg_scope_end();
  tg_varstore_free(vs);
  tg_tensor_free(back);
  tg_tensor_free(d);
  tg_tensor_free(h);
}

static void test_after_finalize(void **state) {
  (void)state;
  assert_ok(tg_dist_finalize() == 0);
  const char *after = "called after tg_dist_finalize()";
  tg_tensor *t = tg_zeros(TG_SHAPE(3), TG_F32, TG_CPU);
  assert_error(tg_dist_rank() < 0, "tg_dist_rank", after);
  assert_error(tg_dist_all_reduce(t, TG_DIST_SUM) < 0, "tg_dist_all_reduce", after);
  assert_error(tg_dist_barrier() < 0, after);
  assert_error(tg_dist_finalize() < 0, after);
  assert_error(tg_dist_init() < 0, "tg_dist_init: called after tg_dist_finalize()");
  tg_tensor_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_before_init),
      cmocka_unit_test(test_world_of_one),
      cmocka_unit_test(test_collectives_are_identity),
      cmocka_unit_test(test_var_store_calls_are_identity),
      cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_cuda_tensors),
      cmocka_unit_test(test_after_finalize),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
