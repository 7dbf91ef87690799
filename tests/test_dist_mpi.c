/* dist on two ranks (tests/meson.build launches this under `mpirun -np 2`): 20 steps
 * of data-parallel training end with the parameters and losses of one process on the
 * whole batch (SGD with momentum and weight decay, Adam; the examples' conv net and a
 * GroupNorm MLP; float64 to 1e-12, float32 to 1e-5; even and uneven shards); the
 * collectives on odd sizes, empty tensors and every dtype; gradients present on one
 * rank only; and the errors of one rank reported on both. Started any other way it
 * exits 77, which meson reports as a skip.
 *
 * Every rank runs the one-process reference itself, on the whole batch, so each test
 * compares within a process; a test makes all its collective calls before its
 * assertions, so a failure on one rank does not leave the other waiting. */
#include "common.h"

#include "nets.h"

#include <math.h>
#include <string.h>

static int rank, world;

/* Element i of a float tensor of the CPU as double. */
static double element(tg_tensor *t, int64_t i) {
  return tg_dtype_of(t) == TG_F64 ? ((double *)tg_data(t))[i] : ((float *)tg_data(t))[i];
}

/* --------------------------------------------------------- collectives -- */

/* Values that sum exactly in float32: small integers times (r + 1). */
static tg_tensor *rank_values(int64_t n, tg_dtype dtype, int r) {
  tg_tensor *t = tg_arange(0, (double)n, 1, dtype, TG_CPU);
  assert_ok(t != NULL);
  for (int64_t i = 0; i < n; i++) {
    double v = (double)(i % 1000) * (r + 1);
    if (dtype == TG_I64)
      ((int64_t *)tg_data(t))[i] = (int64_t)v + ((int64_t)1 << 40);
    else if (dtype == TG_F32)
      ((float *)tg_data(t))[i] = (float)v;
    else
      ((double *)tg_data(t))[i] = v;
  }
  return t;
}

static void test_all_reduce(void **state) {
  (void)state;
  const int64_t sizes[] = {0, 1, 7, 1000003};
  const tg_dtype dtypes[] = {TG_F32, TG_F64, TG_I64};
  int failed[3][4][2] = {{{0}}};
  tg_tensor *got[3][4][2] = {{{NULL}}};
  for (int d = 0; d < 3; d++)
    for (int s = 0; s < 4; s++)
      for (int op = 0; op < 2 - (dtypes[d] == TG_I64); op++) {
        got[d][s][op] = rank_values(sizes[s], dtypes[d], rank);
        failed[d][s][op] = tg_dist_all_reduce(got[d][s][op], (tg_dist_op)op) < 0;
      }
  for (int d = 0; d < 3; d++)
    for (int s = 0; s < 4; s++)
      for (int op = 0; op < 2 - (dtypes[d] == TG_I64); op++) {
        assert_false(failed[d][s][op]);
        /* sum over ranks r of (r + 1) * v = 3v at two ranks; the mean 1.5v */
        tg_tensor *want = rank_values(sizes[s], dtypes[d], 0);
        for (int64_t i = 0; i < sizes[s]; i++) {
          if (dtypes[d] == TG_I64) {
            int64_t *w = tg_data(want);
            w[i] = (w[i] - ((int64_t)1 << 40)) * 3 + ((int64_t)2 << 40);
          } else {
            double v = (double)(i % 1000) * (op == TG_DIST_SUM ? 3.0 : 1.5);
            if (dtypes[d] == TG_F32)
              ((float *)tg_data(want))[i] = (float)v;
            else
              ((double *)tg_data(want))[i] = v;
          }
        }
        size_t bytes = (size_t)sizes[s] * tg_dtype_size(dtypes[d]);
        if (bytes)
          assert_memory_equal(tg_data(got[d][s][op]), tg_data(want), bytes);
        tg_tensor_free(want);
        tg_tensor_free(got[d][s][op]);
      }
}

static void test_broadcast(void **state) {
  (void)state;
  const int64_t sizes[] = {0, 1, 7, 1000003};
  const tg_dtype dtypes[] = {TG_F32, TG_F64, TG_I64};
  tg_tensor *got[3][4];
  int failed[3][4];
  for (int d = 0; d < 3; d++)
    for (int s = 0; s < 4; s++) {
      got[d][s] = rank_values(sizes[s], dtypes[d], rank);
      failed[d][s] = tg_dist_broadcast(got[d][s], 1) < 0; /* from the last rank */
    }
  for (int d = 0; d < 3; d++)
    for (int s = 0; s < 4; s++) {
      assert_false(failed[d][s]);
      tg_tensor *want = rank_values(sizes[s], dtypes[d], world - 1);
      size_t bytes = (size_t)sizes[s] * tg_dtype_size(dtypes[d]);
      if (bytes)
        assert_memory_equal(tg_data(got[d][s]), tg_data(want), bytes);
      tg_tensor_free(want);
      tg_tensor_free(got[d][s]);
    }
}

/* ------------------------------------------------------------ gradients -- */

/* Variables a [3, 5], b [5], c [2] (float64) whose gradients are rank-dependent. */
static tg_varstore *grad_store(int r, bool grad_c) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_ok(vs && tg_varstore_set_dtype(vs, TG_F64) == 0);
  tg_path *root = tg_varstore_root(vs);
  tg_tensor *a = tg_path_var(root, "a", TG_SHAPE(3, 5), tg_init_const(1));
  tg_tensor *b = tg_path_var(root, "b", TG_SHAPE(5), tg_init_const(2));
  tg_tensor *c = tg_path_var(root, "c", TG_SHAPE(2), tg_init_const(3));
  assert_ok(a && b && c);
  tg_scope_begin();
  tg_manual_seed(100 + (uint64_t)r);
  tg_tensor *loss = tg_add(tg_sum(tg_mul(a, tg_randn(TG_SHAPE(3, 5), TG_F64, TG_CPU))),
                           tg_sum(tg_mul(b, tg_randn(TG_SHAPE(5), TG_F64, TG_CPU))));
  if (grad_c)
    loss = tg_add(loss, tg_sum(tg_mul_scalar(c, r + 1.0)));
  assert_ok(tg_backward(loss) == 0);
  tg_scope_end();
  return vs;
}

/* Every bucket size gives (g_0 + g_1) / 2 exactly: one bucket, several, each
 * gradient alone. */
static void test_average_gradients_buckets(void **state) {
  (void)state;
  const int64_t caps[] = {25 << 20, 15 * 8 + 8 /* a, then b and c */, 1};
  tg_varstore *vs[3];
  int failed[3];
  for (int i = 0; i < 3; i++) {
    vs[i] = grad_store(rank, true);
    failed[i] =
        tg_dist_set_bucket_bytes(caps[i]) < 0 || tg_dist_average_gradients(vs[i]) < 0;
  }
  assert_ok(tg_dist_set_bucket_bytes(25 << 20) == 0);
  tg_varstore *mine[2] = {grad_store(0, true), grad_store(1, true)};
  for (int i = 0; i < 3; i++) {
    assert_false(failed[i]);
    for (int v = 0; v < 3; v++) {
      tg_scope_begin();
      tg_tensor *want = tg_mul_scalar(tg_add(tg_grad(tg_varstore_var(mine[0], v, NULL)),
                                             tg_grad(tg_varstore_var(mine[1], v, NULL))),
                                      0.5);
      assert_close(tg_grad(tg_varstore_var(vs[i], v, NULL)), want, 0, 0);
      tg_scope_end();
    }
    tg_varstore_free(vs[i]);
  }
  tg_varstore_free(mine[0]);
  tg_varstore_free(mine[1]);
}

/* c has a gradient on rank 0 only: rank 1 joins with zeros (so both take the same
 * step) instead of hanging; a frozen variable is skipped everywhere. */
static void test_gradient_on_one_rank(void **state) {
  (void)state;
  tg_varstore *vs = grad_store(rank, rank == 0);
  tg_tensor *c = tg_varstore_get(vs, "c");
  tg_tensor *frozen =
      tg_path_var(tg_varstore_root(vs), "f", TG_SHAPE(2), tg_init_const(1));
  assert_ok(frozen && tg_set_requires_grad(frozen, false) == 0);
  int rc = tg_dist_average_gradients(vs);
  assert_int_equal(rc, 0);
  assert_non_null(tg_grad(c));
  tg_tensor *want = tg_full(TG_SHAPE(2), 0.5, TG_F64, TG_CPU); /* (1 + 0) / 2 */
  assert_close(tg_grad(c), want, 0, 0);
  assert_null(tg_grad(frozen));
  tg_tensor_free(want);
  tg_varstore_free(vs);
}

/* ------------------------------------------------------------- training -- */

enum { STEPS = 20, MLP_IN = 12, MLP_HIDDEN = 16, MLP_CLASSES = 3 };

typedef enum { CONVNET, GN_MLP } net_kind;

typedef struct {
  net_kind kind;
  tg_varstore *vs;
  ex_convnet conv;
  tg_module *fc1, *gn, *fc2;
} net;

static void net_build(net *n, net_kind kind, tg_dtype dtype, uint64_t seed) {
  memset(n, 0, sizeof *n);
  n->kind = kind;
  tg_manual_seed(seed);
  if (kind == CONVNET) {
    assert_ok(ex_convnet_build(&n->conv, TG_CPU) == 0);
    n->vs = n->conv.vs;
  } else {
    n->vs = tg_varstore_new(TG_CPU);
    tg_path *root = tg_varstore_root(n->vs);
    n->fc1 = tg_nn_linear(tg_path_sub(root, "fc1"), MLP_IN, MLP_HIDDEN,
                          tg_linear_config_default());
    n->gn = tg_nn_group_norm(tg_path_sub(root, "gn"), 4, MLP_HIDDEN,
                             tg_group_norm_config_default());
    n->fc2 = tg_nn_linear(tg_path_sub(root, "fc2"), MLP_HIDDEN, MLP_CLASSES,
                          tg_linear_config_default());
    assert_ok(n->fc1 && n->gn && n->fc2);
  }
  assert_ok(tg_varstore_set_dtype(n->vs, dtype) == 0);
}

static tg_tensor *net_forward(const net *n, const tg_tensor *x) {
  if (n->kind == CONVNET)
    return ex_convnet_forward(&n->conv, x, true);
  tg_tensor *h = tg_module_forward(n->gn, tg_module_forward(n->fc1, x, true), true);
  return tg_module_forward(n->fc2, tg_relu(h), true);
}

typedef struct {
  const char *name;
  net_kind kind;
  bool adam;
  tg_dtype dtype;
  int64_t batch; /* global; odd: uneven shards */
} train_case;

static tg_optimizer *make_optimizer(const train_case *c, tg_varstore *vs) {
  if (c->adam) {
    tg_adam_config a = tg_adam_config_default(2e-3);
    a.weight_decay = 1e-2;
    return tg_adam_new(vs, a);
  }
  tg_sgd_config s = tg_sgd_config_default(0.05);
  s.momentum = 0.9;
  s.weight_decay = 1e-3;
  return tg_sgd_new(vs, s);
}

/* One step on rows [lo, lo + len) of the global batch. The mean loss is weighted by
 * world * len / batch, so that averaging the ranks' gradients gives the gradient of
 * the whole batch's mean even when shards differ in size. Returns the shard's loss
 * times len (its share of the global sum), or NAN. */
static double step(const train_case *c, net *n, tg_optimizer *opt, tg_tensor *x,
                   tg_tensor *y, int64_t lo, int64_t len, bool dist) {
  tg_scope_begin();
  tg_tensor *logits = net_forward(n, tg_narrow(x, 0, lo, len));
  tg_tensor *loss =
      tg_cross_entropy(logits, tg_narrow(y, 0, lo, len), TG_REDUCTION_MEAN, -100);
  double weight = dist ? (double)world * (double)len / (double)c->batch : 1.0;
  tg_optimizer_zero_grad(opt);
  int rc = tg_backward(tg_mul_scalar(loss, weight));
  if (dist && rc == 0)
    rc = tg_dist_average_gradients(n->vs);
  if (rc == 0)
    rc = tg_optimizer_step(opt);
  double v = rc == 0 ? tg_item(loss) * (double)len : NAN;
  if (rc < 0)
    print_error("step: %s\n", tg_last_error());
  tg_scope_end();
  return v;
}

static void run_training(const train_case *c) {
  tg_dtype dt = c->dtype;
  /* The data first, from its own seed: the same global batches on every rank. */
  tg_manual_seed(7);
  tg_tensor *x[STEPS], *y[STEPS];
  int64_t classes = c->kind == CONVNET ? EX_CONVNET_CLASSES : MLP_CLASSES;
  for (int s = 0; s < STEPS; s++) {
    x[s] = c->kind == CONVNET ? tg_randn(TG_SHAPE(c->batch, 1, 28, 28), dt, TG_CPU)
                              : tg_randn(TG_SHAPE(c->batch, MLP_IN), dt, TG_CPU);
    tg_tensor *u = tg_rand(TG_SHAPE(c->batch), TG_F64, TG_CPU);
    y[s] = tg_zeros(TG_SHAPE(c->batch), TG_I64, TG_CPU);
    assert_ok(x[s] && u && y[s]);
    for (int64_t i = 0; i < c->batch; i++)
      ((int64_t *)tg_data(y[s]))[i] = (int64_t)(((double *)tg_data(u))[i] * classes);
    tg_tensor_free(u);
  }
  /* This rank's contiguous slice of each global batch: the first batch % world ranks
   * take one more row. */
  int64_t base = c->batch / world, extra = c->batch % world;
  int64_t len = base + (rank < extra), lo = rank * base + (rank < extra ? rank : extra);

  net ref, dist;
  net_build(&ref, c->kind, dt, 42);
  net_build(&dist, c->kind, dt, 42 + (uint64_t)rank); /* unlike until broadcast */
  int rc = tg_dist_broadcast_varstore(dist.vs, 0);
  tg_optimizer *ref_opt = make_optimizer(c, ref.vs), *opt = make_optimizer(c, dist.vs);
  double ref_loss[STEPS], loss[STEPS];
  for (int s = 0; s < STEPS && rc == 0; s++) {
    ref_loss[s] = step(c, &ref, ref_opt, x[s], y[s], 0, c->batch, false) / c->batch;
    tg_tensor *l =
        tg_scalar(step(c, &dist, opt, x[s], y[s], lo, len, true), TG_F64, TG_CPU);
    rc = tg_dist_all_reduce(l, TG_DIST_SUM);
    loss[s] = tg_item(l) / c->batch;
    tg_tensor_free(l);
  }
  /* float32 runs carry their own rounding error, which Adam's division by sqrt(v)
   * can make large where gradients are small: the one-process run in float64 from
   * the same start and data measures it, and 2 ranks may differ from one process by
   * twice that when it exceeds the tolerance. */
  net exact = {0};
  if (dt == TG_F32) {
    net_build(&exact, c->kind, TG_F64, 42);
    tg_optimizer *exact_opt = make_optimizer(c, exact.vs);
    for (int s = 0; s < STEPS; s++) {
      tg_tensor *x64 = tg_to_dtype(x[s], TG_F64);
      step(c, &exact, exact_opt, x64, y[s], 0, c->batch, false);
      tg_tensor_free(x64);
    }
    tg_optimizer_free(exact_opt);
  }
  /* Both ranks must hold the same parameters, not only ones close to the reference:
   * compare each with rank 0's, bit for bit. */
  int n_vars = tg_varstore_len(dist.vs), differ = 0;
  for (int i = 0; i < n_vars && rc == 0; i++) {
    tg_tensor *v = tg_varstore_var(dist.vs, i, NULL);
    tg_tensor *r0 = tg_clone(v);
    rc = tg_dist_broadcast(r0, 0);
    differ += rc == 0 && memcmp(tg_data(r0), tg_data(v),
                                (size_t)tg_numel(v) * tg_dtype_size(tg_dtype_of(v)));
    tg_tensor_free(r0);
  }

  assert_int_equal(rc, 0);
  assert_int_equal(differ, 0);
  double tol = dt == TG_F64 ? 1e-12 : 1e-5, worst = 0, worst_own = 0;
  for (int s = 0; s < STEPS; s++)
    if (!(fabs(loss[s] - ref_loss[s]) <= tol * fabs(ref_loss[s])))
      fail_msg("%s: loss of step %d is %.17g on 2 ranks, %.17g on one", c->name, s,
               loss[s], ref_loss[s]);
  for (int i = 0; i < n_vars; i++) {
    const char *name;
    tg_tensor *v = tg_varstore_var(dist.vs, i, &name);
    char what[160];
    snprintf(what, sizeof what, "%s: %s", c->name, name);
    /* relative to the variable's largest element, so entries near zero are held to
     * the same absolute error */
    tg_tensor *want = tg_varstore_var(ref.vs, i, NULL);
    tg_tensor *e = exact.vs ? tg_varstore_var(exact.vs, i, NULL) : NULL;
    double scale = 0, diff = 0, own = 0;
    for (int64_t j = 0; j < tg_numel(want); j++) {
      double a = element(v, j), b = element(want, j);
      scale = fmax(scale, fabs(b));
      diff = fmax(diff, fabs(a - b));
      own = e ? fmax(own, fabs(b - element(e, j))) : 0;
    }
    worst = fmax(worst, diff / scale);
    worst_own = fmax(worst_own, own / scale);
    double bound = fmax(tol, 2 * own / scale);
    assert_close_impl(v, want, bound * scale, tol, what, __FILE__, __LINE__);
  }
  char own_text[96] = "";
  if (dt == TG_F32)
    snprintf(own_text, sizeof own_text, "; one float32 process is within %.1e of float64",
             worst_own);
  if (rank == 0)
    print_message("%s: loss %.6f -> %.6f over %d steps, shards of %lld and %lld rows; "
                  "parameters within %.1e of one process's (relative to each variable's "
                  "largest)%s\n",
                  c->name, ref_loss[0], ref_loss[STEPS - 1], STEPS, (long long)len,
                  (long long)(c->batch - len), worst, own_text);
  tg_optimizer_free(ref_opt);
  tg_optimizer_free(opt);
  tg_varstore_free(ref.vs);
  tg_varstore_free(dist.vs);
  tg_varstore_free(exact.vs);
  for (int s = 0; s < STEPS; s++) {
    tg_tensor_free(x[s]);
    tg_tensor_free(y[s]);
  }
}

static const train_case cases[] = {
    {"convnet sgd float64", CONVNET, false, TG_F64, 4},
    {"convnet sgd float32", CONVNET, false, TG_F32, 4},
    {"convnet adam float64", CONVNET, true, TG_F64, 4},
    {"convnet adam float32", CONVNET, true, TG_F32, 4},
    {"gn-mlp sgd float64 (uneven shards)", GN_MLP, false, TG_F64, 9},
    {"gn-mlp sgd float32", GN_MLP, false, TG_F32, 8},
    {"gn-mlp adam float64", GN_MLP, true, TG_F64, 8},
    {"gn-mlp adam float32 (uneven shards)", GN_MLP, true, TG_F32, 9},
};

static void test_training(void **state) { run_training(*state); }

/* --------------------------------------------------------------- errors -- */

/* Rank 1's bad input fails the call on both ranks, rank 0's message naming rank 1
 * and its error; then the next call works. */
static void test_one_rank_fails(void **state) {
  (void)state;
  tg_tensor *t = tg_ones(TG_SHAPE(5), TG_F32, TG_CPU);
  int rc = tg_dist_all_reduce(rank == 1 ? NULL : t, TG_DIST_SUM);
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", tg_last_error());
  tg_clear_error();
  int next = tg_dist_all_reduce(t, TG_DIST_SUM);
  assert_int_equal(rc, -1);
  if (rank == 0)
    assert_non_null(strstr(msg, "tg_dist_all_reduce: rank 1 failed: tg_dist_all_reduce: "
                                "argument 'tensor' is NULL"));
  else
    assert_string_equal(msg, "tg_dist_all_reduce: argument 'tensor' is NULL (an earlier "
                             "call probably failed)");
  /* A training step that failed on rank 1 passes NULL with its error pending. */
  tg_varstore *vs = grad_store(rank, true);
  if (rank == 1)
    assert_null(tg_reshape(t, TG_SHAPE(3)));
  int step_rc = tg_dist_average_gradients(rank == 1 ? NULL : vs);
  char step_msg[1024];
  snprintf(step_msg, sizeof step_msg, "%s", tg_last_error());
  tg_clear_error();
  assert_int_equal(next, 0);
  assert_float_equal(((float *)tg_data(t))[4], 2.0, 0);
  assert_int_equal(step_rc, -1);
  assert_non_null(strstr(step_msg, rank == 0
                                       ? "tg_dist_average_gradients: rank 1 failed: "
                                         "tg_reshape: shape '[3]' is invalid"
                                       : "tg_reshape: shape '[3]' is invalid"));
  tg_varstore_free(vs);
  tg_tensor_free(t);
}

/* Each row: what rank 1 does differently, and the message both ranks must give. */
static void test_ranks_disagree(void **state) {
  (void)state;
  int64_t n1 = rank == 0 ? 3 : 4;
  tg_tensor *a = tg_ones(TG_SHAPE(n1), TG_F32, TG_CPU);
  tg_tensor *b = tg_ones(TG_SHAPE(3), rank == 0 ? TG_F32 : TG_F64, TG_CPU);
  tg_tensor *c = tg_ones(TG_SHAPE(rank == 0 ? 2 : 1, 3), TG_F32, TG_CPU);
  tg_varstore *vs = grad_store(rank, true);
  tg_varstore *extra = grad_store(rank, true);
  if (rank == 1)
    tg_path_var(tg_varstore_root(extra), "d", TG_SHAPE(2), tg_init_const(0));
  tg_varstore *frozen = grad_store(rank, true);
  if (rank == 1)
    tg_set_requires_grad(tg_varstore_get(frozen, "c"), false);
  /* Rows: what the ranks do differently, the return code and the message both give. */
  enum { ROWS = 7 };
  int rc[ROWS];
  char msg[ROWS][1024];
  const char *want[ROWS] = {
      "tg_dist_all_reduce: ranks disagree on the tensor to reduce: elements from 3 to 4",
      "ranks disagree on the tensor to reduce: other shapes, dtypes or arguments",
      "tg_dist_broadcast: ranks disagree on the tensor to broadcast: elements from 3 to "
      "6",
      "tg_dist_average_gradients: ranks disagree on the gradients to average: trainable "
      "variables from 3 to 4, elements from 22 to 24",
      "trainable variables from 2 to 3, elements from 20 to 22",
      "ranks disagree on the gradients to average: other shapes, dtypes or arguments",
      "ranks disagree on"};
  for (int i = 0; i < ROWS; i++) {
    switch (i) {
    case 0: /* [3] and [4] */
      rc[i] = tg_dist_all_reduce(a, TG_DIST_SUM);
      break;
    case 1: /* float32 and float64 */
      rc[i] = tg_dist_all_reduce(b, TG_DIST_SUM);
      break;
    case 2: /* [2, 3] and [1, 3] */
      rc[i] = tg_dist_broadcast(c, 0);
      break;
    case 3: /* one more variable on rank 1 */
      rc[i] = tg_dist_average_gradients(extra);
      break;
    case 4: /* one fewer trainable variable on rank 1 */
      rc[i] = tg_dist_average_gradients(frozen);
      break;
    case 5: /* other bucket sizes */
      rc[i] = tg_dist_set_bucket_bytes(rank == 0 ? 64 : 128) < 0
                  ? -2
                  : tg_dist_average_gradients(vs);
      tg_dist_set_bucket_bytes(25 << 20);
      break;
    default: /* another call */
      rc[i] = rank == 0 ? tg_dist_barrier() : tg_dist_all_reduce(a, TG_DIST_SUM);
    }
    snprintf(msg[i], sizeof msg[i], "%s", tg_last_error());
    tg_clear_error();
  }
  int after = tg_dist_barrier();
  for (int i = 0; i < ROWS; i++)
    if (rc[i] != -1 || !strstr(msg[i], want[i]))
      fail_msg("row %d on rank %d: rc %d, message \"%s\", wanted \"%s\"", i, rank, rc[i],
               msg[i], want[i]);
  assert_int_equal(after, 0);
  tg_tensor_free(a);
  tg_tensor_free(b);
  tg_tensor_free(c);
  tg_varstore_free(vs);
  tg_varstore_free(extra);
  tg_varstore_free(frozen);
}

static void test_root_out_of_range(void **state) {
  (void)state;
  tg_varstore *vs = grad_store(rank, true);
  int rc = tg_dist_broadcast_varstore(vs, world);
  assert_int_equal(rc, -1);
  assert_non_null(strstr(tg_last_error(), "root 2 is out of range for a world of 2"));
  tg_clear_error();
  tg_varstore_free(vs);
}

int main(void) {
  if (tg_dist_init() < 0) {
    fprintf(stderr, "tg_dist_init: %s\n", tg_last_error());
    return 1;
  }
  world = tg_dist_world_size();
  rank = tg_dist_rank();
  if (world != 2) {
    fprintf(stderr, "test_dist_mpi needs two ranks (mpirun -np 2), got %d: skipped\n",
            world);
    tg_dist_finalize();
    return 77;
  }
  enum { N_FIXED = 7, N_CASES = sizeof cases / sizeof *cases };
  struct CMUnitTest tests[N_FIXED + N_CASES] = {
      cmocka_unit_test(test_all_reduce),
      cmocka_unit_test(test_broadcast),
      cmocka_unit_test(test_average_gradients_buckets),
      cmocka_unit_test(test_gradient_on_one_rank),
      cmocka_unit_test(test_one_rank_fails),
      cmocka_unit_test(test_ranks_disagree),
      cmocka_unit_test(test_root_out_of_range),
  };
  for (int i = 0; i < N_CASES; i++)
    tests[N_FIXED + i] =
        (struct CMUnitTest){cases[i].name, test_training, NULL, NULL, (void *)&cases[i]};
  char group[32];
  snprintf(group, sizeof group, "dist_mpi rank %d", rank);
  int failures =
      _cmocka_run_group_tests(group, tests, N_FIXED + N_CASES, test_setup, NULL);
  if (tg_dist_finalize() < 0)
    failures++;
  return failures ? 1 : 0;
}
