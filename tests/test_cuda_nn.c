/* nn on CUDA against the CPU: var stores created on cuda:0 (every init gives the CPU
 * store's values for the same seed), every layer forward and backward, SGD and
 * Adam/AdamW steps on the device (fed the same gradients as a CPU run: float64 to
 * 1e-12, float32 to 1e-6), optimizer state and checkpoints moving between devices
 * (the same file bytes from either device), device memory flat over many training
 * steps, 20-step trajectories of both example nets (examples/nets.c), and the errors
 * of mixed devices. Every test skips without a CUDA device; the
 * host SIMT build (-Dcuda=host) runs them on the CPU. */
#include "common.h"

#include "nets.h"
#include "runtime/cuda.h"     /* tg__cuda_waits */
#include "runtime/internal.h" /* test_errors plants a CPU gradient on a CUDA parameter */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CUDA0 tg_cuda(0)

static void require_gpu(void) {
  if (!tg_cuda_is_available())
    skip();
}

static bool same_device(tg_device a, tg_device b) {
  return a.type == b.type && (a.type == TG_DEVICE_CPU || a.index == b.index);
}

/* A host copy of t (recorded in the current scope). */
static tg_tensor *host(const tg_tensor *t) {
  tg_no_grad_begin();
  tg_tensor *h = t ? tg_tensor_to(t, TG_CPU) : NULL;
  tg_no_grad_end();
  return h;
}

/* A new random normal tensor drawn on the host (the CPU's values), on cuda:0. */
static tg_tensor *randn_cuda(const int64_t *shape, int ndim, tg_dtype dtype) {
  tg_tensor *h = tg_randn(shape, ndim, dtype, TG_CPU);
  tg_tensor *d = tg_tensor_to(h, CUDA0);
  tg_tensor_free(h);
  return d;
}

/* dev (any device) against cpu, elementwise within tol + tol*|cpu|. */
static void check_close(const tg_tensor *dev, const tg_tensor *cpu, double tol,
                        const char *what) {
  if (!dev || !cpu)
    fail_msg("%s: NULL tensor: %s", what, tg_last_error());
  assert_close_impl(host(dev), cpu, tol, tol, what, __FILE__, __LINE__);
}

/* The same bytes in a (any device) and b (any device). */
static void check_same_bytes(const tg_tensor *a, const tg_tensor *b, const char *what) {
  assert_int_equal(tg_dtype_of(a), tg_dtype_of(b));
  assert_int_equal(tg_numel(a), tg_numel(b));
  size_t n = (size_t)tg_numel(a) * tg_dtype_size(tg_dtype_of(a));
  char *x = malloc(n + 1), *y = malloc(n + 1);
  assert_ok(x && y && tg_tensor_copy_to_host(a, x, n) == 0 &&
            tg_tensor_copy_to_host(b, y, n) == 0);
  if (memcmp(x, y, n))
    fail_msg("%s: the bytes differ", what);
  free(x);
  free(y);
}

/* The two stores hold the same variables, of the same names and bytes. */
static void check_stores_equal(const tg_varstore *a, const tg_varstore *b) {
  assert_int_equal(tg_varstore_len(a), tg_varstore_len(b));
  for (int i = 0; i < tg_varstore_len(a); i++) {
    const char *na, *nb;
    tg_tensor *ta = tg_varstore_var(a, i, &na), *tb = tg_varstore_var(b, i, &nb);
    assert_string_equal(na, nb);
    check_same_bytes(ta, tb, na);
  }
}

/* ---------------------------------------------------------------- inits -- */

/* Every init on a CUDA store draws the CPU store's values for the same seed (random
 * inits draw on the host and copy), in both dtypes, layers' bias inits included. */
static void test_inits_match_cpu(void **state) {
  (void)state;
  require_gpu();
  const tg_init inits[] = {tg_init_const(0.5), tg_init_uniform(-2, 3),
                           tg_init_randn(1, 0.5), tg_init_kaiming_uniform()};
  const tg_dtype dtypes[] = {TG_F32, TG_F64};
  for (int d = 0; d < 2; d++) {
    tg_varstore *vs[2];
    for (int k = 0; k < 2; k++) {
      tg_manual_seed(77);
      vs[k] = tg_varstore_new(k ? CUDA0 : TG_CPU);
      assert_ok(vs[k] && tg_varstore_set_dtype(vs[k], dtypes[d]) == 0);
      tg_path *root = tg_varstore_root(vs[k]);
      for (int i = 0; i < 4; i++) {
        char name[16];
        snprintf(name, sizeof name, "v%d", i);
        assert_ok(tg_path_var(root, name, TG_SHAPE(6, 4, 3, 3), inits[i]));
      }
      assert_ok(tg_nn_linear(tg_path_sub(root, "fc"), 9, 5, tg_linear_config_default()));
      assert_ok(
          tg_nn_conv2d(tg_path_sub(root, "conv"), 3, 4, 3, tg_conv2d_config_default()));
      assert_ok(
          tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 4, tg_batch_norm_config_default()));
      assert_true(same_device(tg_varstore_device(vs[k]), k ? CUDA0 : TG_CPU));
    }
    for (int i = 0; i < tg_varstore_len(vs[1]); i++)
      assert_true(same_device(tg_device_of(tg_varstore_var(vs[1], i, NULL)), CUDA0));
    check_stores_equal(vs[0], vs[1]);
    tg_varstore_free(vs[0]);
    tg_varstore_free(vs[1]);
  }
}

/* --------------------------------------------------------------- layers -- */

typedef struct {
  const char *name;
  tg_module *(*build)(tg_varstore *vs, tg_path *p);
  int nd;
  int64_t in[5];
} layer_case;

static tg_module *linear_b(tg_varstore *vs, tg_path *p) {
  (void)vs;
  return tg_nn_linear(p, 5, 3, tg_linear_config_default());
}
static tg_module *conv_b(tg_varstore *vs, tg_path *p) {
  (void)vs;
  tg_conv2d_config c = tg_conv2d_config_default();
  c.padding = 1;
  c.stride = 2;
  return tg_nn_conv2d(p, 3, 4, 3, c);
}
static tg_module *convt_b(tg_varstore *vs, tg_path *p) {
  (void)vs;
  tg_conv_transpose2d_config c = tg_conv_transpose2d_config_default();
  c.stride = 2;
  c.padding = 1;
  c.output_padding = 1;
  return tg_nn_conv_transpose2d(p, 4, 3, 3, c);
}
static tg_module *gn_b(tg_varstore *vs, tg_path *p) {
  (void)vs;
  tg_group_norm_config c = tg_group_norm_config_default();
  c.ws_init = tg_init_uniform(0.5, 1.5); /* not 1 and 0: the affine part is tested */
  c.bs_init = tg_init_uniform(-0.5, 0.5);
  return tg_nn_group_norm(p, 2, 4, c);
}
static tg_module *gn_relu_b(tg_varstore *vs, tg_path *p) {
  (void)vs;
  tg_group_norm_config c = tg_group_norm_config_default();
  c.relu = true;
  c.bs_init = tg_init_uniform(-0.5, 0.5);
  return tg_nn_group_norm(p, 2, 4, c);
}
static tg_module *bn_b(tg_varstore *vs, tg_path *p) {
  (void)vs;
  tg_batch_norm_config c = tg_batch_norm_config_default();
  c.ws_init = tg_init_uniform(0.5, 1.5);
  return tg_nn_batch_norm2d(p, 4, c);
}
static tg_module *ln_b(tg_varstore *vs, tg_path *p) {
  (void)vs;
  tg_layer_norm_config c = tg_layer_norm_config_default();
  c.bs_init = tg_init_uniform(-0.5, 0.5);
  return tg_nn_layer_norm(p, TG_SHAPE(3, 3), c);
}
static tg_module *relu_b(tg_varstore *vs, tg_path *p) {
  (void)p;
  return tg_nn_relu(vs);
}
static tg_module *seq_b(tg_varstore *vs, tg_path *p) {
  tg_module *s = tg_nn_sequential_path(p);
  tg_linear_config c = tg_linear_config_default();
  return s && tg_sequential_add(s, tg_nn_linear(tg_sequential_path(s), 5, 6, c)) == 0 &&
                 tg_sequential_add(s, tg_nn_relu(vs)) == 0 &&
                 tg_sequential_add(s, tg_nn_linear(tg_sequential_path(s), 6, 2, c)) == 0
             ? s
             : NULL;
}

static const layer_case layer_cases[] = {
    {"linear", linear_b, 2, {4, 5}},
    {"conv2d", conv_b, 4, {2, 3, 5, 5}},
    {"conv_transpose2d", convt_b, 4, {2, 4, 3, 3}},
    {"group_norm", gn_b, 4, {2, 4, 3, 3}},
    {"group_norm_relu", gn_relu_b, 4, {2, 4, 3, 3}},
    {"batch_norm2d", bn_b, 4, {3, 4, 2, 2}},
    {"layer_norm", ln_b, 4, {2, 4, 3, 3}},
    {"relu", relu_b, 2, {3, 5}},
    {"sequential", seq_b, 2, {4, 5}},
};

/* One layer on both devices from the same weights and input: training forward (and
 * evaluation for BatchNorm), backward of sum(y * dy) for the same dy; outputs, input
 * and variable gradients, and every variable after (running stats) compared. */
static void run_layer(const layer_case *c, tg_dtype dtype, double tol) {
  tg_varstore *vs[2];
  tg_module *m[2];
  for (int k = 0; k < 2; k++) {
    tg_manual_seed(5);
    vs[k] = tg_varstore_new(k ? CUDA0 : TG_CPU);
    assert_ok(vs[k] && tg_varstore_set_dtype(vs[k], dtype) == 0);
    assert_ok(m[k] = c->build(vs[k], tg_path_sub(tg_varstore_root(vs[k]), "layer")));
  }
  tg_scope_begin();
  tg_tensor *x = tg_randn(c->in, c->nd, dtype, TG_CPU);
  tg_tensor *xd = tg_tensor_to(x, CUDA0);
  assert_ok(tg_set_requires_grad(x, true) == 0 && tg_set_requires_grad(xd, true) == 0);
  for (int pass = 0; pass < 2; pass++) { /* train, then evaluation */
    bool train = pass == 0;
    tg_tensor *y = tg_module_forward(m[0], x, train);
    assert_ok(y);
    tg_tensor *yd = tg_module_forward(m[1], xd, train);
    char what[96];
    snprintf(what, sizeof what, "%s %s %s: y", c->name, tg_dtype_name(dtype),
             train ? "train" : "eval");
    check_close(yd, y, tol, what);
    tg_tensor *dy = tg_randn(tg_shape(y), tg_ndim(y), dtype, TG_CPU);
    tg_tensor *dyd = tg_tensor_to(dy, CUDA0);
    assert_ok(tg_backward(tg_sum(tg_mul(y, dy))) == 0);
    assert_ok(tg_backward(tg_sum(tg_mul(yd, dyd))) == 0);
    snprintf(what, sizeof what, "%s %s: dx", c->name, tg_dtype_name(dtype));
    check_close(tg_grad(xd), tg_grad(x), tol, what);
    for (int i = 0; i < tg_varstore_len(vs[0]); i++) {
      const char *name;
      tg_tensor *v = tg_varstore_var(vs[0], i, &name);
      tg_tensor *vd = tg_varstore_var(vs[1], i, NULL);
      snprintf(what, sizeof what, "%s %s: %s", c->name, tg_dtype_name(dtype), name);
      if (tg_dtype_of(v) == TG_I64) {
        check_same_bytes(vd, v, what);
        continue;
      }
      check_close(vd, v, tol, what);
      assert_true(!tg_grad(v) == !tg_grad(vd));
      if (tg_grad(v)) {
        assert_true(same_device(tg_device_of(tg_grad(vd)), CUDA0));
        check_close(tg_grad(vd), tg_grad(v), tol, what);
      }
      tg_zero_grad(v);
      tg_zero_grad(vd);
    }
    tg_zero_grad(x);
    tg_zero_grad(xd);
  }
  assert_int_equal(tg_scope_end(), 0);
  tg_varstore_free(vs[0]);
  tg_varstore_free(vs[1]);
}

static void test_layers_vs_cpu(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  for (size_t i = 0; i < sizeof layer_cases / sizeof *layer_cases; i++) {
    run_layer(&layer_cases[i], TG_F64, 1e-12);
    run_layer(&layer_cases[i], TG_F32, 1e-5);
  }
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* ----------------------------------------------------------- optimizers -- */

enum { OPT_STEPS = 6 };

typedef struct {
  const char *name;
  bool adam;
  tg_sgd_config sgd;
  tg_adam_config adam_config;
  bool groups;   /* biases in a group of their own (lr 0.03, no weight decay) */
  double clip;   /* tg_clip_grad_norm before each step (0: never) */
  bool schedule; /* a cosine schedule stepped after each step */
  int lr_step;   /* tg_optimizer_set_lr(0.02) before this step (0: never) */
} opt_case;

static opt_case sgd_c(const char *name, double momentum, double dampening, double wd,
                      bool nesterov) {
  tg_sgd_config c = tg_sgd_config_default(0.1);
  c.momentum = momentum;
  c.dampening = dampening;
  c.weight_decay = wd;
  c.nesterov = nesterov;
  return (opt_case){.name = name, .sgd = c};
}

static opt_case adam_c(const char *name, double wd, bool decoupled) {
  tg_adam_config c = tg_adam_config_default(0.05);
  c.beta1 = 0.8;
  c.beta2 = 0.99;
  c.eps = 1e-6;
  c.weight_decay = wd;
  c.decoupled = decoupled;
  return (opt_case){.name = name, .adam = true, .adam_config = c};
}

static bool is_bias(const char *name, const tg_tensor *var, void *ctx) {
  (void)var, (void)ctx;
  return strstr(name, "bias") != NULL;
}

/* A store of w [7, 5], bias [5] and unused [3] (never given a gradient: no state,
 * never changed) on device, the same values on every device. */
static tg_varstore *opt_store(tg_device device, tg_dtype dtype) {
  tg_manual_seed(31);
  tg_varstore *vs = tg_varstore_new(device);
  assert_ok(vs && tg_varstore_set_dtype(vs, dtype) == 0);
  tg_path *root = tg_varstore_root(vs);
  assert_ok(tg_path_var(root, "w", TG_SHAPE(7, 5), tg_init_randn(0, 1)) &&
            tg_path_var(root, "bias", TG_SHAPE(5), tg_init_uniform(-1, 1)) &&
            tg_path_var(root, "unused", TG_SHAPE(3), tg_init_randn(0, 1)));
  return vs;
}

static tg_optimizer *opt_new(tg_varstore *vs, const opt_case *c) {
  tg_param_group bias = tg_param_group_default();
  bias.filter = is_bias;
  bias.lr = 0.03;
  bias.weight_decay = 0;
  int ng = c->groups ? 1 : 0;
  tg_optimizer *opt = c->adam ? tg_adam_new_groups(vs, c->adam_config, &bias, ng)
                              : tg_sgd_new_groups(vs, c->sgd, &bias, ng);
  assert_ok(opt);
  return opt;
}

/* Gradients of w and bias are exactly g[0], g[1] (the backward of sum(v * g)), on
 * v's device: both devices step from the same gradients, so only the optimizers'
 * arithmetic is compared. */
static void set_grads(tg_varstore *vs, tg_tensor *const g[2]) {
  tg_device dev = tg_varstore_device(vs);
  tg_tensor *w = tg_varstore_get(vs, "w"), *b = tg_varstore_get(vs, "bias");
  tg_tensor *loss = tg_add(tg_sum(tg_mul(w, tg_tensor_to(g[0], dev))),
                           tg_sum(tg_mul(b, tg_tensor_to(g[1], dev))));
  assert_ok(loss && tg_backward(loss) == 0);
}

/* Every tensor of a's state dict equals b's (same names) within tol. */
static void check_state_close(const tg_optimizer *a, const tg_optimizer *b, double tol,
                              const char *what) {
  tg_tensor_dict *da = tg_tensor_dict_new(), *db = tg_tensor_dict_new();
  assert_ok(tg_optimizer_state_dict(a, da, NULL) == 0 &&
            tg_optimizer_state_dict(b, db, NULL) == 0);
  assert_int_equal(tg_tensor_dict_len(da), tg_tensor_dict_len(db));
  for (int i = 0; i < tg_tensor_dict_len(da); i++) {
    const char *name;
    tg_tensor *ta = tg_tensor_dict_at(da, i, &name);
    tg_tensor *tb = tg_tensor_dict_get(db, name);
    char w[160];
    snprintf(w, sizeof w, "%s: %s", what, name);
    assert_non_null(tb);
    assert_true(strstr(name, "unused") == NULL); /* no gradient, no state */
    tg_scope_begin();
    if (tg_dtype_of(tb) == TG_I64)
      check_same_bytes(ta, tb, w);
    else
      check_close(ta, host(tb), tol, w);
    assert_int_equal(tg_scope_end(), 0);
  }
  tg_tensor_dict_free(da);
  tg_tensor_dict_free(db);
}

/* OPT_STEPS steps of case c on the CPU and on cuda:0 from the same weights and
 * gradients; weights compared after each step, the state at the end. */
static void run_opt_case(const opt_case *c, tg_dtype dtype, double tol) {
  tg_varstore *vs[2];
  tg_optimizer *opt[2];
  tg_scheduler *sched[2] = {NULL, NULL};
  for (int k = 0; k < 2; k++) {
    vs[k] = opt_store(k ? CUDA0 : TG_CPU, dtype);
    opt[k] = opt_new(vs[k], c);
    if (c->schedule)
      assert_ok(sched[k] = tg_cosine_lr_new(opt[k], OPT_STEPS, 0.001));
  }
  tg_manual_seed(99);
  char what[128];
  for (int s = 1; s <= OPT_STEPS; s++) {
    tg_scope_begin();
    tg_tensor *g[2] = {tg_randn(TG_SHAPE(7, 5), dtype, TG_CPU),
                       tg_randn(TG_SHAPE(5), dtype, TG_CPU)};
    double norm[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
      if (s == c->lr_step)
        tg_optimizer_set_lr(opt[k], 0.02);
      tg_optimizer_zero_grad(opt[k]);
      assert_null(tg_grad(tg_varstore_get(vs[k], "w")));
      set_grads(vs[k], g);
      if (c->clip > 0)
        assert_true((norm[k] = tg_clip_grad_norm(vs[k], c->clip)) >= 0);
      assert_ok(tg_optimizer_step(opt[k]) == 0);
      if (sched[k])
        assert_ok(tg_scheduler_step(sched[k]) == 0);
    }
    assert_true(fabs(norm[1] - norm[0]) <= tol * (1 + norm[0]));
    for (int i = 0; i < tg_varstore_len(vs[0]); i++) {
      const char *name;
      tg_tensor *v = tg_varstore_var(vs[0], i, &name);
      snprintf(what, sizeof what, "%s %s step %d: %s", c->name, tg_dtype_name(dtype), s,
               name);
      check_close(tg_varstore_var(vs[1], i, NULL), v, tol, what);
    }
    assert_int_equal(tg_scope_end(), 0);
  }
  /* unused was never touched on either device */
  check_same_bytes(tg_varstore_get(vs[0], "unused"), tg_varstore_get(vs[1], "unused"),
                   "unused");
  snprintf(what, sizeof what, "%s %s state", c->name, tg_dtype_name(dtype));
  check_state_close(opt[1], opt[0], tol, what);
  for (int k = 0; k < 2; k++) {
    tg_scheduler_free(sched[k]);
    tg_optimizer_free(opt[k]);
    tg_varstore_free(vs[k]);
  }
}

static const opt_case *opt_cases(int *n) {
  static opt_case cases[12];
  int i = 0;
  cases[i++] = sgd_c("sgd", 0, 0, 0, false);
  cases[i++] = sgd_c("sgd_momentum", 0.9, 0, 0, false);
  cases[i++] = sgd_c("sgd_dampening", 0.9, 0.3, 0, false);
  cases[i++] = sgd_c("sgd_nesterov_wd", 0.9, 0, 0.1, true);
  cases[i] = sgd_c("sgd_wd_groups_clip", 0.5, 0, 0.1, false);
  cases[i].groups = true;
  cases[i++].clip = 0.5;
  cases[i] = sgd_c("sgd_set_lr_cosine", 0.9, 0, 0, false);
  cases[i].lr_step = 3;
  cases[i++].schedule = true;
  cases[i++] = adam_c("adam", 0, false);
  cases[i++] = adam_c("adam_l2", 0.1, false);
  cases[i++] = adam_c("adamw", 0.1, true);
  cases[i] = adam_c("adamw_groups_clip_cosine", 0.1, true);
  cases[i].groups = true;
  cases[i].clip = 1.0;
  cases[i++].schedule = true;
  *n = i;
  return cases;
}

static void test_optimizers_vs_cpu(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  int n;
  const opt_case *cases = opt_cases(&n);
  for (int i = 0; i < n; i++) {
    run_opt_case(&cases[i], TG_F64, 1e-12);
    run_opt_case(&cases[i], TG_F32, 1e-6);
  }
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* -------------------------------------------------------- state, files -- */

static char tmpdir[64];

static const char *tmp_path(const char *name) {
  static char buf[4][128];
  static int next;
  char *p = buf[next++ % 4];
  snprintf(p, sizeof buf[0], "%s/%s", tmpdir, name);
  return p;
}

static void check_same_file(const char *a, const char *b) {
  size_t na, nb;
  char *x = read_file(a, &na), *y = read_file(b, &nb);
  assert_int_equal(na, nb);
  if (memcmp(x, y, na))
    fail_msg("%s and %s differ", a, b);
  free(x);
  free(y);
}

/* Steps [from, to) of case c on vs/opt, gradients drawn from a generator seeded per
 * step (so a run split across devices sees the gradients of an uninterrupted one). */
static void steps(tg_varstore *vs, tg_optimizer *opt, tg_scheduler *sched, int from,
                  int to, tg_dtype dtype) {
  for (int s = from; s < to; s++) {
    tg_scope_begin();
    tg_manual_seed(1000 + (uint64_t)s);
    tg_tensor *g[2] = {tg_randn(TG_SHAPE(7, 5), dtype, TG_CPU),
                       tg_randn(TG_SHAPE(5), dtype, TG_CPU)};
    tg_optimizer_zero_grad(opt);
    set_grads(vs, g);
    assert_ok(tg_optimizer_step(opt) == 0 && tg_scheduler_step(sched) == 0);
    assert_int_equal(tg_scope_end(), 0);
  }
}

static void save_run(tg_varstore *vs, tg_optimizer *opt, tg_scheduler *sched,
                     const char *weights, const char *train) {
  assert_ok(tg_varstore_save(vs, weights) == 0);
  tg_tensor_dict *d = tg_tensor_dict_new();
  assert_ok(tg_optimizer_state_dict(opt, d, "optim.") == 0 &&
            tg_scheduler_state_dict(sched, d, "sched.") == 0 &&
            tg_save_tensors(d, train) == 0);
  tg_tensor_dict_free(d);
}

static void load_run(tg_varstore *vs, tg_optimizer *opt, tg_scheduler *sched,
                     const char *weights, const char *train) {
  assert_ok(tg_varstore_load(vs, weights) == 0);
  tg_tensor_dict *d = tg_load_tensors(train, NULL);
  assert_ok(d && tg_optimizer_load_state_dict(opt, d, "optim.") == 0 &&
            tg_scheduler_load_state_dict(sched, d, "sched.") == 0);
  tg_tensor_dict_free(d);
}

/* A run of 8 steps on the CPU; the same run stopped after 4 steps on one device,
 * saved (weights, optimizer and scheduler state) and continued on the other, both
 * ways, ends where the CPU run does; weights saved from cuda:0 load on the CPU with
 * the device's bits. */
static void run_resume_case(const opt_case *c, tg_dtype dtype, double tol) {
  const int N = 8, H = 4;
  tg_varstore *ref = opt_store(TG_CPU, dtype);
  tg_optimizer *ref_opt = opt_new(ref, c);
  tg_scheduler *ref_sched = tg_cosine_lr_new(ref_opt, N, 0.001);
  steps(ref, ref_opt, ref_sched, 0, N, dtype);
  for (int way = 0; way < 2; way++) { /* first half on cuda:0, then on the CPU */
    tg_device first = way ? TG_CPU : CUDA0, second = way ? CUDA0 : TG_CPU;
    tg_varstore *a = opt_store(first, dtype);
    tg_optimizer *ao = opt_new(a, c);
    tg_scheduler *as = tg_cosine_lr_new(ao, N, 0.001);
    steps(a, ao, as, 0, H, dtype);
    save_run(a, ao, as, tmp_path("w.safetensors"), tmp_path("t.safetensors"));
    if (way == 0) { /* from cuda:0 */
      tg_varstore *b = opt_store(TG_CPU, dtype);
      assert_ok(tg_varstore_load(b, tmp_path("w.safetensors")) == 0);
      tg_scope_begin();
      for (int i = 0; i < tg_varstore_len(b); i++)
        check_close(tg_varstore_var(b, i, NULL), host(tg_varstore_var(a, i, NULL)), 0,
                    "saved from cuda:0, loaded on the CPU");
      assert_int_equal(tg_scope_end(), 0);
      tg_varstore_free(b);
    }
    tg_varstore *b = opt_store(second, dtype);
    /* other weights first: the load must replace them */
    assert_ok(tg_fill_(tg_varstore_get(b, "w"), 3) == 0);
    tg_optimizer *bo = opt_new(b, c);
    tg_scheduler *bs = tg_cosine_lr_new(bo, N, 0.001);
    load_run(b, bo, bs, tmp_path("w.safetensors"), tmp_path("t.safetensors"));
    steps(b, bo, bs, H, N, dtype);
    tg_scope_begin();
    char what[128];
    for (int i = 0; i < tg_varstore_len(ref); i++) {
      const char *name;
      tg_tensor *v = tg_varstore_var(ref, i, &name);
      snprintf(what, sizeof what, "%s %s resumed on %s: %s", c->name,
               tg_dtype_name(dtype), way ? "cuda:0" : "cpu", name);
      check_close(tg_varstore_var(b, i, NULL), v, tol, what);
    }
    assert_int_equal(tg_scope_end(), 0);
    check_state_close(bo, ref_opt, tol, c->name);
    assert_true(fabs(tg_optimizer_lr(bo) - tg_optimizer_lr(ref_opt)) <= 1e-15);
    tg_scheduler_free(bs);
    tg_optimizer_free(bo);
    tg_varstore_free(b);
    tg_scheduler_free(as);
    tg_optimizer_free(ao);
    tg_varstore_free(a);
  }
  tg_scheduler_free(ref_sched);
  tg_optimizer_free(ref_opt);
  tg_varstore_free(ref);
}

static void test_optimizer_state_across_devices(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  opt_case sgd = sgd_c("sgd_nesterov_wd", 0.9, 0, 0.1, true);
  opt_case adamw = adam_c("adamw_groups", 0.1, true);
  adamw.groups = true;
  run_resume_case(&sgd, TG_F64, 1e-12);
  run_resume_case(&adamw, TG_F64, 1e-12);
  run_resume_case(&adamw, TG_F32, 1e-6);

  /* In memory: a cuda:0 optimizer's state dict into another cuda:0 optimizer gets
   * copies (the first one's steps leave the second's state alone), and into a CPU
   * optimizer gets host copies. */
  tg_varstore *a = opt_store(CUDA0, TG_F64), *b = opt_store(CUDA0, TG_F64);
  tg_varstore *h = opt_store(TG_CPU, TG_F64);
  tg_optimizer *ao = opt_new(a, &adamw), *bo = opt_new(b, &adamw),
               *ho = opt_new(h, &adamw);
  tg_scheduler *as = tg_cosine_lr_new(ao, 8, 0);
  steps(a, ao, as, 0, 2, TG_F64);
  tg_tensor_dict *d = tg_tensor_dict_new();
  assert_ok(tg_optimizer_state_dict(ao, d, NULL) == 0);
  assert_ok(tg_optimizer_load_state_dict(bo, d, NULL) == 0);
  assert_ok(tg_optimizer_load_state_dict(ho, d, NULL) == 0);
  tg_tensor_dict_free(d);
  check_state_close(bo, ho, 0, "loaded from cuda:0 on cuda:0 and on the CPU");
  steps(a, ao, as, 2, 3, TG_F64);
  check_state_close(bo, ho, 0, "after the source optimizer stepped");
  tg_tensor_dict *db = tg_tensor_dict_new();
  assert_ok(tg_optimizer_state_dict(bo, db, NULL) == 0);
  for (int i = 0; i < tg_tensor_dict_len(db); i++) {
    const char *name;
    tg_tensor *t = tg_tensor_dict_at(db, i, &name);
    bool scalar = tg_dtype_of(t) == TG_I64 || strstr(name, "param_groups");
    assert_true(same_device(tg_device_of(t), scalar ? TG_CPU : CUDA0));
  }
  tg_tensor_dict_free(db);
  tg_scheduler_free(as);
  tg_optimizer_free(ao);
  tg_optimizer_free(bo);
  tg_optimizer_free(ho);
  tg_varstore_free(a);
  tg_varstore_free(b);
  tg_varstore_free(h);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* A store with every kind of variable (float weights, BatchNorm's running stats and
 * int64 count) built on each device from the same seed; *bn its BatchNorm layer. */
static tg_varstore *ckpt_store(tg_device device, tg_dtype dtype, uint64_t seed,
                               tg_module **bn) {
  tg_manual_seed(seed);
  tg_varstore *vs = tg_varstore_new(device);
  assert_ok(vs && tg_varstore_set_dtype(vs, dtype) == 0);
  tg_path *root = tg_varstore_root(vs);
  tg_batch_norm_config bc = tg_batch_norm_config_default();
  bc.ws_init = tg_init_randn(1, 0.1);
  assert_ok(tg_nn_conv2d(tg_path_sub(root, "conv"), 2, 3, 3, tg_conv2d_config_default()));
  tg_module *b = tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 3, bc);
  assert_ok(b);
  if (bn)
    *bn = b;
  assert_ok(
      tg_nn_group_norm(tg_path_sub(root, "gn"), 1, 3, tg_group_norm_config_default()));
  assert_ok(tg_nn_linear(tg_path_sub(root, "fc"), 6, 2, tg_linear_config_default()));
  return vs;
}

/* Files saved from a cuda:0 store are the CPU store's bytes; each loads on the other
 * device, from files and from state dicts in memory (of either device, casting
 * float64 into float32). */
static void test_checkpoints(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  /* A dict holds a reference of its own: a tensor set from a scope is freed once both
   * the dict and the scope are gone, in either order (it used to take the scope's). */
  for (int order = 0; order < 2; order++) {
    tg_tensor_dict *d = tg_tensor_dict_new();
    tg_scope_begin();
    assert_ok(tg_tensor_dict_set(d, "t", tg_zeros(TG_SHAPE(4), TG_F32, CUDA0)) == 0);
    assert_ok(tg_tensor_dict_set(d, "t", tg_ones(TG_SHAPE(4), TG_F32, CUDA0)) == 0);
    if (order == 0)
      tg_tensor_dict_free(d);
    assert_int_equal(tg_scope_end(), 0);
    if (order == 1) {
      tg_scope_begin();
      assert_true(tg_item(tg_sum(tg_tensor_dict_get(d, "t"))) == 4);
      assert_int_equal(tg_scope_end(), 0);
      tg_tensor_dict_free(d);
    }
    assert_int_equal(tg_cuda_memory_allocated(0), base);
  }
  const tg_dtype dtypes[2] = {TG_F32, TG_F64};
  for (int k = 0; k < 2; k++) {
    tg_module *bn[2];
    tg_varstore *cpu = ckpt_store(TG_CPU, dtypes[k], 3, &bn[0]);
    tg_varstore *gpu = ckpt_store(CUDA0, dtypes[k], 3, &bn[1]);
    /* running stats and num_batches_tracked moved, on the device by BatchNorm's own
     * count */
    tg_scope_begin();
    tg_manual_seed(8);
    tg_tensor *x = tg_randn(TG_SHAPE(2, 3, 2, 2), dtypes[k], TG_CPU);
    for (int r = 0; r < 2; r++)
      assert_ok(tg_module_forward(bn[r], r ? tg_tensor_to(x, CUDA0) : x, true));
    assert_int_equal(tg_scope_end(), 0);
    check_same_bytes(tg_varstore_get(gpu, "bn.num_batches_tracked"),
                     tg_varstore_get(cpu, "bn.num_batches_tracked"), "count");
    /* the running stats agree to rounding (the devices sum in other orders): the CPU's
     * bits on both, for files to compare byte for byte */
    const char *stats[2] = {"bn.running_mean", "bn.running_var"};
    for (int i = 0; i < 2; i++) {
      tg_scope_begin();
      check_close(tg_varstore_get(gpu, stats[i]), tg_varstore_get(cpu, stats[i]), 1e-6,
                  stats[i]);
      assert_int_equal(tg_scope_end(), 0);
      assert_ok(
          tg_copy_(tg_varstore_get(gpu, stats[i]), tg_varstore_get(cpu, stats[i])) == 0);
    }
    check_stores_equal(cpu, gpu);
    assert_ok(tg_varstore_save(cpu, tmp_path("cpu.safetensors")) == 0);
    assert_ok(tg_varstore_save(gpu, tmp_path("gpu.safetensors")) == 0);
    check_same_file(tmp_path("cpu.safetensors"), tmp_path("gpu.safetensors"));

    /* GPU file -> CPU store and CPU file -> GPU store, over other values */
    tg_varstore *cpu2 = ckpt_store(TG_CPU, dtypes[k], 4, NULL);
    tg_varstore *gpu2 = ckpt_store(CUDA0, dtypes[k], 4, NULL);
    assert_ok(tg_varstore_load(cpu2, tmp_path("gpu.safetensors")) == 0);
    assert_ok(tg_varstore_load(gpu2, tmp_path("cpu.safetensors")) == 0);
    check_stores_equal(cpu2, cpu);
    check_stores_equal(gpu2, cpu);
    /* and back: the re-saved files are the same bytes again */
    assert_ok(tg_varstore_save(gpu2, tmp_path("gpu2.safetensors")) == 0);
    check_same_file(tmp_path("cpu.safetensors"), tmp_path("gpu2.safetensors"));

    /* state dicts in memory: a cuda:0 store's into a CPU store and a CPU store's into
     * a cuda:0 store, and cuda:0 float64 into a cuda:0 float32 store */
    tg_varstore *cpu3 = ckpt_store(TG_CPU, dtypes[k], 5, NULL);
    tg_varstore *gpu3 = ckpt_store(CUDA0, dtypes[k], 5, NULL);
    tg_tensor_dict *dg = tg_tensor_dict_new(), *dc = tg_tensor_dict_new();
    assert_ok(tg_varstore_state_dict(gpu, dg, NULL) == 0 &&
              tg_varstore_state_dict(cpu, dc, NULL) == 0);
    assert_ok(tg_varstore_load_dict(cpu3, dg, NULL, NULL) == 0);
    assert_ok(tg_varstore_load_dict(gpu3, dc, NULL, NULL) == 0);
    check_stores_equal(cpu3, cpu);
    check_stores_equal(gpu3, cpu);
    if (dtypes[k] == TG_F64) {
      tg_varstore *gpu32 = ckpt_store(CUDA0, TG_F32, 6, NULL),
                  *cpu32 = ckpt_store(TG_CPU, TG_F32, 6, NULL);
      assert_ok(tg_varstore_load_dict(gpu32, dg, NULL, NULL) == 0);
      assert_ok(tg_varstore_load_dict(cpu32, dc, NULL, NULL) == 0);
      check_stores_equal(gpu32, cpu32);
      tg_varstore_free(gpu32);
      tg_varstore_free(cpu32);
    }
    tg_tensor_dict_free(dg);
    tg_tensor_dict_free(dc);
    tg_varstore *all[] = {cpu, gpu, cpu2, gpu2, cpu3, gpu3};
    for (int i = 0; i < 6; i++)
      tg_varstore_free(all[i]);
  }
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* ---------------------------------------------------------------- memory -- */

/* A small MLP trained on cuda:0 (AdamW, gradient clipping, a cosine schedule): after
 * the first steps (which create the optimizer's state) every step gives back all it
 * allocated, and draws nothing more from the driver. */
static void test_memory_flat(void **state) {
  (void)state;
  require_gpu();
  enum { STEPS = 1000, WARM = 3 };
  const int64_t start = tg_cuda_memory_allocated(0);
  tg_manual_seed(2);
  tg_varstore *vs = tg_varstore_new(CUDA0);
  tg_path *root = tg_varstore_root(vs);
  tg_module *net = tg_nn_sequential(vs);
  tg_linear_config lc = tg_linear_config_default();
  assert_ok(
      tg_sequential_add(net, tg_nn_linear(tg_path_sub(root, "fc1"), 8, 16, lc)) == 0 &&
      tg_sequential_add(net, tg_nn_relu(vs)) == 0 &&
      tg_sequential_add(net, tg_nn_linear(tg_path_sub(root, "fc2"), 16, 4, lc)) == 0);
  tg_adam_config ac = tg_adam_config_default(0.01);
  ac.decoupled = true;
  ac.weight_decay = 0.01;
  tg_optimizer *opt = tg_adam_new(vs, ac);
  tg_scheduler *sched = tg_cosine_lr_new(opt, STEPS, 0);
  assert_ok(opt && sched);
  const int64_t labels[16] = {0, 1, 2, 3, 3, 2, 1, 0, 0, 0, 1, 1, 2, 2, 3, 3};
  tg_tensor *x = randn_cuda(TG_SHAPE(16, 8), TG_F32);
  tg_tensor *y = tg_tensor_from_data(labels, TG_SHAPE(16), TG_I64, CUDA0);
  int64_t base = 0, reserved = 0;
  double first = 0, last = 0;
  for (int s = 0; s < STEPS; s++) {
    if (s == WARM) {
      base = tg_cuda_memory_allocated(0);
      reserved = tg_cuda_memory_reserved(0);
    }
    tg_scope_begin();
    tg_optimizer_zero_grad(opt);
    tg_tensor *loss =
        tg_cross_entropy(tg_module_forward(net, x, true), y, TG_REDUCTION_MEAN, -100);
    assert_ok(loss && tg_backward(loss) == 0);
    assert_true(tg_clip_grad_norm(vs, 5.0) >= 0);
    assert_ok(tg_optimizer_step(opt) == 0 && tg_scheduler_step(sched) == 0);
    if (s == 0 || s == STEPS - 1)
      *(s ? &last : &first) = tg_item(loss);
    assert_int_equal(tg_scope_end(), 0);
    if (s >= WARM && tg_cuda_memory_allocated(0) != base)
      fail_msg("step %d: %lld bytes allocated on cuda:0, %lld after step %d", s,
               (long long)tg_cuda_memory_allocated(0), (long long)base, WARM);
  }
  assert_int_equal(tg_cuda_memory_reserved(0), reserved);
  assert_true(last < 0.5 * first); /* it trained */
  tg_tensor_free(x);
  tg_tensor_free(y);
  tg_scheduler_free(sched);
  tg_optimizer_free(opt);
  tg_varstore_free(vs);
  assert_int_equal(tg_cuda_memory_allocated(0), start);
}

/* A whole training step on cuda:0 (BatchNorm, linear, ReLU, LayerNorm, cross-entropy
 * forward and backward, zero_grad, SGD with momentum and AdamW steps, a scheduler
 * step) queues work without waiting for the device; only reading a value back waits:
 * tg_clip_grad_norm's norm once for all gradients, tg_item. */
static void test_step_does_not_wait(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  tg_varstore *vs = tg_varstore_new(CUDA0);
  tg_path *root = tg_varstore_root(vs);
  tg_module *bn =
      tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 2, tg_batch_norm_config_default());
  tg_module *net = tg_nn_sequential(vs);
  tg_linear_config lc = tg_linear_config_default();
  assert_ok(
      bn && net &&
      tg_sequential_add(net, tg_nn_linear(tg_path_sub(root, "fc1"), 18, 8, lc)) == 0 &&
      tg_sequential_add(net, tg_nn_relu(vs)) == 0 &&
      tg_sequential_add(net, tg_nn_layer_norm(tg_path_sub(root, "ln"), TG_SHAPE(8),
                                              tg_layer_norm_config_default())) == 0 &&
      tg_sequential_add(net, tg_nn_linear(tg_path_sub(root, "fc2"), 8, 3, lc)) == 0);
  tg_sgd_config sc = tg_sgd_config_default(0.05);
  sc.momentum = 0.9;
  tg_adam_config ac = tg_adam_config_default(0.01);
  ac.decoupled = true;
  ac.weight_decay = 0.01;
  tg_optimizer *sgd = tg_sgd_new(vs, sc), *adam = tg_adam_new(vs, ac);
  tg_scheduler *sched = tg_cosine_lr_new(sgd, 10, 0);
  const int64_t labels[4] = {0, 2, 1, 2};
  tg_tensor *x = randn_cuda(TG_SHAPE(4, 2, 3, 3), TG_F32);
  tg_tensor *y = tg_tensor_from_data(labels, TG_SHAPE(4), TG_I64, CUDA0);
  assert_ok(sgd && adam && sched && x && y);
  const char *lb = getenv("TG_CUDA_LAUNCH_BLOCKING"); /* which waits after launches */
  const bool blocking = lb && !strcmp(lb, "1");
  assert_ok(tg_cuda_synchronize() == 0);
  tg_tensor *loss = NULL;
  for (int s = 0; s < 3; s++) {
    const int64_t waits = tg__cuda_waits();
    tg_tensor_free(loss);
    tg_scope_begin();
    tg_optimizer_zero_grad(sgd);
    tg_tensor *h = tg_flatten(tg_module_forward(bn, x, true), 1, -1);
    loss = tg_cross_entropy(tg_module_forward(net, h, true), y, TG_REDUCTION_MEAN, -100);
    assert_ok(loss && tg_backward(loss) == 0);
    /* the norm is read back: one wait for all the gradients (counted twice: that wait
     * also reads back the loss's deferred target check) */
    const int64_t before_clip = tg__cuda_waits();
    assert_true(tg_clip_grad_norm(vs, 1.0) >= 0);
    const int64_t clip_waits = tg__cuda_waits() - before_clip;
    if (!blocking)
      assert_int_equal(clip_waits, 2);
    assert_ok(tg_optimizer_step(sgd) == 0 && tg_optimizer_step(adam) == 0 &&
              tg_scheduler_step(sched) == 0);
    tg_tensor_retain(loss);
    assert_int_equal(tg_scope_end(), 0);
    if (!blocking && tg__cuda_waits() - waits != clip_waits)
      fail_msg("step %d waited for cuda:0 %lld times besides the gradient norm", s,
               (long long)(tg__cuda_waits() - waits - clip_waits));
  }
  const int64_t waits = tg__cuda_waits();
  assert_true(isfinite(tg_item(loss)));
  assert_true(tg__cuda_waits() > waits); /* reading the loss back waits */
  tg_tensor_free(loss);
  tg_tensor_free(x);
  tg_tensor_free(y);
  tg_scheduler_free(sched);
  tg_optimizer_free(sgd);
  tg_optimizer_free(adam);
  tg_varstore_free(vs);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* ------------------------------------------------------ example nets -- */

typedef enum { CONVNET, UNET } net_kind;

typedef struct {
  ex_convnet cn;
  ex_unet un;
  tg_varstore *vs;
} net;

static void net_build(net *n, net_kind kind, tg_device device, tg_dtype dtype) {
  tg_manual_seed(7);
  assert_ok((kind == CONVNET ? ex_convnet_build(&n->cn, device)
                             : ex_unet_build(&n->un, device)) == 0);
  n->vs = kind == CONVNET ? n->cn.vs : n->un.vs;
  assert_ok(tg_varstore_set_dtype(n->vs, dtype) == 0);
}

static tg_tensor *net_forward(const net *n, net_kind kind, const tg_tensor *x) {
  return kind == CONVNET ? ex_convnet_forward(&n->cn, x, true)
                         : ex_unet_forward(&n->un, x, true);
}

/* examples/nets.c's conv net (batch 2 of 28x28) and U-Net (batch 1 of 16x16: any
 * side divisible by 4 works, and the host SIMT build runs kernels slowly) trained
 * with SGD (the examples' lr, momentum 0.9), a new batch each step, on the CPU and on
 * cuda:0 from the same weights: the losses agree to 1e-10 over `steps` steps in float64,
 * to 1e-4 over the first 5 in float32, and the weights at the end to tol_w. */
static void run_trajectory(net_kind kind, tg_dtype dtype, int steps, double tol,
                           double tol_w) {
  net n[2];
  for (int k = 0; k < 2; k++)
    net_build(&n[k], kind, k ? CUDA0 : TG_CPU, dtype);
  check_stores_equal(n[0].vs, n[1].vs);
  const int64_t xs_c[4] = {2, 1, EX_CONVNET_SIDE, EX_CONVNET_SIDE}, ys_c[1] = {2};
  const int64_t xs_u[4] = {1, 3, 16, 16}, ys_u[3] = {1, 16, 16};
  const int64_t classes = kind == CONVNET ? EX_CONVNET_CLASSES : EX_UNET_CLASSES;
  /* the examples' learning rates and momentum */
  tg_sgd_config cfg = tg_sgd_config_default(kind == CONVNET ? 0.01 : 0.05);
  cfg.momentum = 0.9;
  tg_optimizer *opt[2] = {tg_sgd_new(n[0].vs, cfg), tg_sgd_new(n[1].vs, cfg)};
  assert_ok(opt[0] && opt[1]);
  const char *name = kind == CONVNET ? "conv net" : "U-Net";
  double worst = 0, first = 0, last = 0;
  for (int s = 0; s < steps; s++) {
    tg_scope_begin();
    /* a batch of its own each step (the same on both devices), so the losses do not
     * collapse onto one memorised batch */
    tg_manual_seed(100 + (uint64_t)s);
    tg_tensor *x = tg_randn(kind == CONVNET ? xs_c : xs_u, 4, dtype, TG_CPU);
    tg_tensor *y =
        kind == CONVNET ? rand_labels(ys_c, 1, classes) : rand_labels(ys_u, 3, classes);
    tg_tensor *xd = tg_tensor_to(x, CUDA0), *yd = tg_tensor_to(y, CUDA0);
    assert_ok(x && xd && yd);
    double loss[2];
    for (int k = 0; k < 2; k++) {
      tg_tensor *l = tg_cross_entropy(net_forward(&n[k], kind, k ? xd : x), k ? yd : y,
                                      TG_REDUCTION_MEAN, -100);
      tg_optimizer_zero_grad(opt[k]);
      assert_ok(l && tg_backward(l) == 0 && tg_optimizer_step(opt[k]) == 0);
      loss[k] = tg_item(l);
    }
    first = s == 0 ? loss[0] : first;
    last = loss[0];
    if (!(fabs(loss[1] - loss[0]) <= tol * fmax(1, fabs(loss[0]))))
      fail_msg("%s %s step %d: loss %.17g on cuda:0, %.17g on the CPU (tolerance %g)",
               name, tg_dtype_name(dtype), s + 1, loss[1], loss[0], tol);
    worst = fmax(worst, fabs(loss[1] - loss[0]) / fmax(1, fabs(loss[0])));
    assert_int_equal(tg_scope_end(), 0);
  }
  print_message("  %-8s %s: %d steps, loss %.4f -> %.4f, worst difference %.2g\n", name,
                tg_dtype_name(dtype), steps, first, last, worst);
  tg_scope_begin();
  for (int i = 0; i < tg_varstore_len(n[0].vs); i++) {
    const char *vn;
    tg_tensor *v = tg_varstore_var(n[0].vs, i, &vn);
    char what[128];
    snprintf(what, sizeof what, "%s %s after %d steps: %s", name, tg_dtype_name(dtype),
             steps, vn);
    check_close(tg_varstore_var(n[1].vs, i, NULL), v, tol_w, what);
  }
  assert_int_equal(tg_scope_end(), 0);
  for (int k = 0; k < 2; k++) {
    tg_optimizer_free(opt[k]);
    tg_varstore_free(n[k].vs);
  }
}

static void test_example_nets_trajectory(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  for (int kind = CONVNET; kind <= UNET; kind++) {
    run_trajectory((net_kind)kind, TG_F64, 20, 1e-10, 1e-8);
    run_trajectory((net_kind)kind, TG_F32, 5, 1e-4, 1e-3);
  }
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* ---------------------------------------------------------------- errors -- */

static void test_errors(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  assert_error(tg_varstore_new(tg_cuda(tg_cuda_device_count())) == NULL,
               "tg_varstore_new", "is not available");
  tg_varstore *vs = opt_store(CUDA0, TG_F32);
  tg_module *fc = tg_nn_linear(tg_path_sub(tg_varstore_root(vs), "fc"), 5, 2,
                               tg_linear_config_default());
  assert_ok(fc);
  tg_optimizer *opt = tg_sgd_new(vs, tg_sgd_config_default(0.1));
  tg_tensor *w = tg_varstore_get(vs, "w");
  tg_scope_begin();
  /* a CPU input into a cuda:0 layer */
  tg_tensor *xh = tg_randn(TG_SHAPE(3, 5), TG_F32, TG_CPU);
  assert_error(tg_module_forward(fc, xh, true) == NULL, "tg_nn_linear 'fc'",
               "input is on cpu but weight is on cuda:0");
  /* a CPU gradient on a cuda:0 parameter (only the library's internals can make one:
   * the tape puts every gradient on its leaf's device) */
  w->grad = tg__unscope(tg_zeros(TG_SHAPE(7, 5), TG_F32, TG_CPU));
  assert_error(tg_optimizer_step(opt) < 0, "tg_optimizer_step", "gradient of 'w'",
               "located on cpu", "parameter is located on cuda:0");
  /* a float64 gradient on a float32 parameter */
  tg_zero_grad(w);
  w->grad = tg__unscope(tg_zeros(TG_SHAPE(7, 5), TG_F64, CUDA0));
  assert_error(tg_optimizer_step(opt) < 0, "tg_optimizer_step", "float64",
               "does not match its parameter", "float32");
  tg_zero_grad(w);
  /* a state dict whose momentum buffer has another shape, from the device */
  tg_sgd_config sc = tg_sgd_config_default(0.1);
  sc.momentum = 0.9;
  tg_optimizer *mo = tg_sgd_new(vs, sc);
  assert_ok(mo && tg_backward(tg_sum(w)) == 0 && tg_optimizer_step(mo) == 0);
  tg_tensor_dict *d = tg_tensor_dict_new();
  assert_ok(tg_optimizer_state_dict(mo, d, NULL) == 0);
  assert_ok(tg_tensor_dict_set(d, "state.w.momentum_buffer",
                               tg_zeros(TG_SHAPE(5, 7), TG_F32, CUDA0)) == 0);
  assert_error(tg_optimizer_load_state_dict(mo, d, NULL) < 0,
               "state.w.momentum_buffer is float32 [5, 7] but its parameter is float32 "
               "[7, 5]");
  tg_tensor_dict_free(d);
  /* the batch iterator takes CPU data only, and says how to move batches */
  tg_tensor *xd = tg_tensor_to(xh, CUDA0);
  assert_error(tg_batch_iter_new(xd, NULL, 2, tg_batch_config_default()) == NULL,
               "tg_batch_iter_new", "cuda:0", "tg_tensor_to");
  /* all still usable */
  tg_tensor *y = tg_module_forward(fc, xd, true);
  assert_ok(y && tg_backward(tg_sum(y)) == 0 && tg_optimizer_step(opt) == 0);
  assert_int_equal(tg_scope_end(), 0);
  tg_optimizer_free(mo);
  tg_optimizer_free(opt);
  tg_varstore_free(vs);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

static int setup_dir(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/tg_cuda_nn_XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_dir(void **state) {
  (void)state;
  const char *names[] = {"w.safetensors", "t.safetensors", "cpu.safetensors",
                         "gpu.safetensors", "gpu2.safetensors"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    unlink(tmp_path(names[i]));
  return rmdir(tmpdir);
}

int main(void) {
  /* Every new device buffer NaN, as the cuda suite runs (unless set otherwise): an
   * element a kernel fails to write fails the comparisons. Read at the first
   * allocation. */
  setenv("TG_CUDA_FILL_NAN", "1", 0);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_inits_match_cpu, test_setup),
      cmocka_unit_test_setup(test_layers_vs_cpu, test_setup),
      cmocka_unit_test_setup(test_optimizers_vs_cpu, test_setup),
      cmocka_unit_test_setup(test_optimizer_state_across_devices, test_setup),
      cmocka_unit_test_setup(test_checkpoints, test_setup),
      cmocka_unit_test_setup(test_memory_flat, test_setup),
      cmocka_unit_test_setup(test_step_does_not_wait, test_setup),
      cmocka_unit_test_setup(test_example_nets_trajectory, test_setup),
      cmocka_unit_test_setup(test_errors, test_setup),
  };
  cuda_suite_filter();
  return cuda_suite_exit(cmocka_run_group_tests(tests, setup_dir, remove_dir));
}
