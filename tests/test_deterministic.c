/* Deterministic mode (tg_set_deterministic): 20 SGD steps of the example conv net and
 * U-Net (examples/nets.c, small batches) end in bitwise identical parameters on 1, 2
 * and 3 threads. The float32 path of these nets runs every reduction that splits over
 * threads: conv weight and bias gradients (direct and Winograd kernels), GroupNorm
 * statistics and gradients, cross-entropy sums, the linear layer, pooling, cat. */
#include "common.h"

#include "nets.h"

#include <stdlib.h>
#include <string.h>

enum { STEPS = 20 };

typedef enum { CONVNET, UNET } net_kind;

/* Parameters after STEPS steps on `threads` threads, concatenated (malloc'ed). */
static float *train(net_kind kind, int threads, size_t *n_floats) {
  assert_ok(tg_set_num_threads(threads) == 0);
  tg_manual_seed(7);
  ex_convnet cn;
  ex_unet un;
  tg_varstore *vs;
  if (kind == CONVNET) {
    assert_ok(ex_convnet_build(&cn, TG_CPU) == 0);
    vs = cn.vs;
  } else {
    assert_ok(ex_unet_build(&un, TG_CPU) == 0);
    vs = un.vs;
  }
  /* batch 8 of 28x28 digits / batch 2 of 32x32 scenes */
  const int64_t xs_c[4] = {8, 1, EX_CONVNET_SIDE, EX_CONVNET_SIDE}, ys_c[1] = {8};
  const int64_t xs_u[4] = {2, 3, 32, 32}, ys_u[3] = {2, 32, 32};
  tg_tensor *x = kind == CONVNET ? tg_randn(xs_c, 4, TG_F32, TG_CPU)
                                 : tg_randn(xs_u, 4, TG_F32, TG_CPU);
  const int64_t classes = kind == CONVNET ? EX_CONVNET_CLASSES : EX_UNET_CLASSES;
  tg_tensor *y =
      kind == CONVNET ? rand_labels(ys_c, 1, classes) : rand_labels(ys_u, 3, classes);
  assert_ok(x);
  tg_sgd_config cfg = tg_sgd_config_default(0.05);
  cfg.momentum = 0.9;
  tg_optimizer *opt = tg_sgd_new(vs, cfg);
  assert_ok(y && opt);
  for (int s = 0; s < STEPS; s++) {
    tg_scope_begin();
    tg_tensor *out = kind == CONVNET ? ex_convnet_forward(&cn, x, true)
                                     : ex_unet_forward(&un, x, true);
    tg_tensor *loss = tg_cross_entropy(out, y, TG_REDUCTION_MEAN, -100);
    tg_optimizer_zero_grad(opt);
    assert_ok(loss && tg_backward(loss) == 0 && tg_optimizer_step(opt) == 0);
    assert_int_equal(tg_scope_end(), 0);
  }
  size_t total = 0;
  for (int i = 0; i < tg_varstore_len(vs); i++)
    total += (size_t)tg_numel(tg_varstore_var(vs, i, NULL));
  float *all = malloc(total * sizeof *all), *p = all;
  for (int i = 0; i < tg_varstore_len(vs); i++) {
    tg_tensor *v = tg_varstore_var(vs, i, NULL);
    memcpy(p, tg_data(v), (size_t)tg_numel(v) * sizeof *p);
    p += tg_numel(v);
  }
  *n_floats = total;
  tg_optimizer_free(opt);
  tg_tensor_free(x);
  tg_tensor_free(y);
  tg_varstore_free(vs);
  return all;
}

static void check_net(net_kind kind) {
  int saved = tg_get_num_threads();
  size_t n0, n;
  float *ref = train(kind, 1, &n0);
  for (int t = 2; t <= 3; t++) {
    float *got = train(kind, t, &n);
    assert_int_equal(n, n0);
    size_t first = n;
    for (size_t i = 0; i < n && first == n; i++)
      first = memcmp(&got[i], &ref[i], sizeof *got) ? i : n;
    if (first < n)
      fail_msg("%s, %d threads: parameter %zu of %zu differs from 1 thread (%.9g vs "
               "%.9g)",
               kind == CONVNET ? "convnet" : "unet", t, first, n, (double)got[first],
               (double)ref[first]);
    free(got);
  }
  free(ref);
  tg_set_num_threads(saved);
}

static void test_convnet(void **state) {
  (void)state;
  tg_set_deterministic(true);
  check_net(CONVNET);
}

static void test_unet(void **state) {
  (void)state;
  tg_set_deterministic(true);
  check_net(UNET);
}

/* Convolutions off the direct and Winograd kernels (float64, stride 2, groups, a
 * transposed one) take im2col + GEMM, whose weight gradient also sums per part. */
static void test_im2col_convs(void **state) {
  (void)state;
  tg_set_deterministic(true);
  int saved = tg_get_num_threads();
  const int64_t s2[2] = {2, 2}, p1[2] = {1, 1}, op[2] = {1, 1};
  double *ref[2] = {NULL, NULL};
  for (int t = 1; t <= 3; t++) {
    tg_set_num_threads(t);
    tg_manual_seed(3);
    tg_scope_begin();
    tg_tensor *x = rand_leaf(TG_SHAPE(3, 6, 21, 19), TG_F64);
    tg_tensor *w = rand_leaf(TG_SHAPE(8, 3, 3, 3), TG_F64);
    tg_tensor *wt = rand_leaf(TG_SHAPE(6, 4, 3, 3), TG_F64);
    tg_tensor *y = tg_conv2d(x, w, NULL, s2, p1, NULL, 2);
    tg_tensor *z = tg_conv_transpose2d(x, wt, NULL, s2, p1, op, NULL, 2);
    assert_ok(y && z);
    assert_ok(tg_backward(tg_add(tg_sum(tg_mul(y, y)), tg_sum(tg_mul(z, z)))) == 0);
    tg_tensor *g[2] = {tg_grad(w), tg_grad(wt)};
    for (int k = 0; k < 2; k++) {
      const size_t bytes = (size_t)tg_numel(g[k]) * sizeof(double);
      if (t == 1) {
        ref[k] = malloc(bytes);
        memcpy(ref[k], tg_data(g[k]), bytes);
      } else if (memcmp(ref[k], tg_data(g[k]), bytes)) {
        fail_msg("%s weight gradient on %d threads differs from 1 thread",
                 k ? "conv_transpose2d" : "conv2d", t);
      }
    }
    assert_int_equal(tg_scope_end(), 0);
  }
  free(ref[0]);
  free(ref[1]);
  tg_set_num_threads(saved);
}

/* The switch itself; TG_DETERMINISTIC=1 is read when it was never set. */
static void test_switch(void **state) {
  (void)state;
  tg_set_deterministic(false);
  assert_false(tg_get_deterministic());
  tg_set_deterministic(true);
  assert_true(tg_get_deterministic());
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_switch),
      cmocka_unit_test(test_convnet),
      cmocka_unit_test(test_unet),
      cmocka_unit_test(test_im2col_convs),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
