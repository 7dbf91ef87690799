/* Layers as modules: each allocates its variables on a path (named as PyTorch's
 * modules name them: "weight", "bias", "running_mean"...) and forwards through the
 * matching op. Constructors check their configuration; forwards check what only the
 * layer knows (its channel count) and leave the rest to the op. */
#include "nn/internal.h"
#include "ops/norm/norm.h" /* norm_check_eps: the ops' own rule for eps */
#include "runtime/cuda.h"  /* tg__cuda_add_i64 */

#include <stdlib.h>
#include <string.h>

tg_tensor *tg_module_forward(tg_module *m, const tg_tensor *x, bool train) {
  if (!m) {
    if (!tg_last_error()[0])
      tg__error("tg_module_forward: argument 'm' is NULL (an earlier call probably "
                "failed)");
    return NULL;
  }
  if (!tg__nonnull(x, "tg_module_forward", "x"))
    return NULL;
  return m->forward(m, x, train);
}

static bool path_ok(tg_path *path, const char *op) {
  if (path)
    return true;
  if (!tg_last_error()[0])
    tg__error("%s: argument 'path' is NULL (an earlier call probably failed)", op);
  return false;
}

/* A constructor's tail: registers m, or when m (out of memory) or one of its variables
 * (ok false) failed, drops the variables it created and frees m. */
static tg_module *finish(tg_path *path, int mark, tg_module *m, bool ok, const char *op) {
  if (!m)
    tg__error("%s: out of memory", op);
  if (!m || !ok) {
    tg__varstore_truncate(path->vs, mark);
    free(m);
    return NULL;
  }
  m->name = path->prefix;
  tg_module *r = tg__module_register(path->vs, m, op);
  if (!r)
    tg__varstore_truncate(path->vs, mark);
  return r;
}

/* "tg_nn_group_norm 'enc.gn'" or "tg_nn_group_norm" for the root: a layer in
 * messages (WHO_LEN bytes). */
enum { WHO_LEN = TG_QUOTE_LEN + 64 };
static const char *layer_name(const char *kind, const char *name, char *buf, size_t len) {
  char q[TG_QUOTE_LEN];
  if (name && name[0])
    snprintf(buf, len, "%s %s", kind, tg__quote(name, q, sizeof q));
  else
    snprintf(buf, len, "%s", kind);
  return buf;
}

static const char *who(const tg_module *m, char *buf, size_t len) {
  return layer_name(m->kind, m->name, buf, len);
}

/* The layer's variable p (may be NULL: not affine) has x's dtype and device, so the op
 * can run; the error names the layer and the tensors. */
static int check_param(const tg_module *m, const tg_tensor *x, const tg_tensor *p,
                       const char *what) {
  char w[WHO_LEN];
  if (!p)
    return 0;
  if (x->dtype != p->dtype)
    return tg__error("%s: input is %s but %s is %s (convert the input with tg_to_dtype "
                     "or the var store with tg_varstore_set_dtype)",
                     who(m, w, sizeof w), tg_dtype_name(x->dtype), what,
                     tg_dtype_name(p->dtype));
  char xd[16], pd[16];
  if (x->device.type != p->device.type || x->device.index != p->device.index)
    return tg__error("%s: input is on %s but %s is on %s (move the input with "
                     "tg_tensor_to)",
                     who(m, w, sizeof w), tg__device_str(x->device, xd, sizeof xd), what,
                     tg__device_str(p->device, pd, sizeof pd));
  return 0;
}

/* A norm layer's eps, by the rule its op applies, naming the layer. */
static int check_eps(const char *op, const tg_path *path, double eps) {
  char w[WHO_LEN];
  return norm_check_eps(layer_name(op, path->prefix, w, sizeof w), eps);
}

/* An input [N, C, *] with the layer's channel count. */
static int check_channels(const tg_module *m, const tg_tensor *x, int64_t channels,
                          int min_dim, int max_dim) {
  char w[WHO_LEN], s[TG_SHAPE_STR_LEN];
  if (x->ndim < min_dim || x->ndim > max_dim) {
    if (min_dim == max_dim)
      return tg__error("%s: expected %dD input (got %dD input of shape %s)",
                       who(m, w, sizeof w), min_dim, x->ndim,
                       tg_shape_str(x, s, sizeof s));
    return tg__error("%s: expected an input of at least %d dimensions [N, C, *], got "
                     "shape %s",
                     who(m, w, sizeof w), min_dim, tg_shape_str(x, s, sizeof s));
  }
  if (x->shape[1] != channels)
    return tg__error("%s: expected input with %lld channels, but got %lld channels "
                     "(input shape %s)",
                     who(m, w, sizeof w), (long long)channels, (long long)x->shape[1],
                     tg_shape_str(x, s, sizeof s));
  return 0;
}

/* ------------------------------------------------------------------ linear -- */

typedef struct {
  tg_module base;
  tg_tensor *weight, *bias;
} linear_module;

static tg_tensor *linear_forward(tg_module *m, const tg_tensor *x, bool train) {
  (void)train;
  linear_module *l = (linear_module *)m;
  if (check_param(m, x, l->weight, "weight") < 0)
    return NULL;
  return tg_linear(x, l->weight, l->bias);
}

tg_linear_config tg_linear_config_default(void) {
  return (tg_linear_config){true, tg_init_kaiming_uniform(), tg_init_kaiming_uniform()};
}

tg_module *tg_nn_linear(tg_path *path, int64_t in_dim, int64_t out_dim,
                        tg_linear_config config) {
  const char *op = "tg_nn_linear";
  if (!path_ok(path, op))
    return NULL;
  if (in_dim < 0 || out_dim < 0) {
    tg__error("%s: in_dim and out_dim must be non-negative, got %lld and %lld", op,
              (long long)in_dim, (long long)out_dim);
    return NULL;
  }
  int mark = path->vs->n_vars;
  linear_module *l = calloc(1, sizeof *l);
  int64_t wshape[2] = {out_dim, in_dim};
  bool ok = l && (l->weight = tg_path_var(path, "weight", wshape, 2, config.ws_init));
  if (ok && config.bias)
    ok = (l->bias = tg_path_var(path, "bias", &out_dim, 1,
                                tg__bias_init(config.bs_init, in_dim))) != NULL;
  if (l)
    l->base = (tg_module){"tg_nn_linear", NULL, linear_forward, NULL};
  return finish(path, mark, l ? &l->base : NULL, ok, op);
}

/* ------------------------------------------------------------------ conv2d -- */

typedef struct {
  tg_module base;
  tg_tensor *weight, *bias;
  int64_t in_channels, stride[2], padding[2], output_padding[2], dilation[2], groups;
  bool transposed;
} conv_module;

static tg_tensor *conv_forward(tg_module *m, const tg_tensor *x, bool train) {
  (void)train;
  conv_module *c = (conv_module *)m;
  if ((x->ndim == 4 && check_channels(m, x, c->in_channels, 4, 4) < 0) ||
      check_param(m, x, c->weight, "weight") < 0)
    return NULL;
  if (c->transposed)
    return tg_conv_transpose2d(x, c->weight, c->bias, c->stride, c->padding,
                               c->output_padding, c->dilation, c->groups);
  return tg_conv2d(x, c->weight, c->bias, c->stride, c->padding, c->dilation, c->groups);
}

static int check_conv(const char *op, int64_t in, int64_t out, int64_t k, int64_t stride,
                      int64_t padding, int64_t output_padding, int64_t dilation,
                      int64_t groups) {
  if (groups <= 0)
    return tg__error("%s: groups must be a positive integer, got %lld", op,
                     (long long)groups);
  if (in <= 0 || out <= 0 || k <= 0)
    return tg__error("%s: in_channels, out_channels and kernel_size must be positive, "
                     "got %lld, %lld and %lld",
                     op, (long long)in, (long long)out, (long long)k);
  if (in % groups)
    return tg__error("%s: in_channels must be divisible by groups (in_channels %lld, "
                     "groups %lld)",
                     op, (long long)in, (long long)groups);
  if (out % groups)
    return tg__error("%s: out_channels must be divisible by groups (out_channels %lld, "
                     "groups %lld)",
                     op, (long long)out, (long long)groups);
  if (stride <= 0 || dilation <= 0 || padding < 0 || output_padding < 0)
    return tg__error("%s: stride and dilation must be positive and padding, "
                     "output_padding non-negative (got stride %lld, padding %lld, "
                     "output_padding %lld, dilation %lld)",
                     op, (long long)stride, (long long)padding, (long long)output_padding,
                     (long long)dilation);
  return 0;
}

static tg_module *conv_new(tg_path *path, const char *op, int64_t in, int64_t out,
                           int64_t k, int64_t stride, int64_t padding,
                           int64_t output_padding, int64_t dilation, int64_t groups,
                           bool bias, tg_init ws_init, tg_init bs_init, bool transposed) {
  if (!path_ok(path, op) ||
      check_conv(op, in, out, k, stride, padding, output_padding, dilation, groups) < 0)
    return NULL;
  int mark = path->vs->n_vars;
  conv_module *c = calloc(1, sizeof *c);
  /* PyTorch: conv [out, in/groups, k, k], transposed [in, out/groups, k, k]. */
  int64_t wshape[4] = {transposed ? in : out, (transposed ? out : in) / groups, k, k};
  bool ok = c && (c->weight = tg_path_var(path, "weight", wshape, 4, ws_init));
  if (ok && bias)
    ok = (c->bias = tg_path_var(path, "bias", &out, 1,
                                tg__bias_init(bs_init, tg__fan_in(wshape, 4)))) != NULL;
  if (c) {
    c->base = (tg_module){op, NULL, conv_forward, NULL};
    c->in_channels = in;
    c->groups = groups;
    c->transposed = transposed;
    for (int i = 0; i < 2; i++) {
      c->stride[i] = stride;
      c->padding[i] = padding;
      c->output_padding[i] = output_padding;
      c->dilation[i] = dilation;
    }
  }
  return finish(path, mark, c ? &c->base : NULL, ok, op);
}

tg_conv2d_config tg_conv2d_config_default(void) {
  return (tg_conv2d_config){
      1, 0, 1, 1, true, tg_init_kaiming_uniform(), tg_init_kaiming_uniform()};
}

tg_module *tg_nn_conv2d(tg_path *path, int64_t in_channels, int64_t out_channels,
                        int64_t kernel_size, tg_conv2d_config config) {
  return conv_new(path, "tg_nn_conv2d", in_channels, out_channels, kernel_size,
                  config.stride, config.padding, 0, config.dilation, config.groups,
                  config.bias, config.ws_init, config.bs_init, false);
}

tg_conv_transpose2d_config tg_conv_transpose2d_config_default(void) {
  return (tg_conv_transpose2d_config){
      1, 0, 0, 1, 1, true, tg_init_kaiming_uniform(), tg_init_kaiming_uniform()};
}

tg_module *tg_nn_conv_transpose2d(tg_path *path, int64_t in_channels,
                                  int64_t out_channels, int64_t kernel_size,
                                  tg_conv_transpose2d_config config) {
  return conv_new(path, "tg_nn_conv_transpose2d", in_channels, out_channels, kernel_size,
                  config.stride, config.padding, config.output_padding, config.dilation,
                  config.groups, config.bias, config.ws_init, config.bs_init, true);
}

/* -------------------------------------------------------------- group norm -- */

typedef struct {
  tg_module base;
  tg_tensor *weight, *bias;
  int64_t num_groups, num_channels;
  double eps;
  bool relu;
} group_norm_module;

static tg_tensor *group_norm_forward(tg_module *m, const tg_tensor *x, bool train) {
  (void)train;
  group_norm_module *g = (group_norm_module *)m;
  if (check_channels(m, x, g->num_channels, 2, TG_MAX_DIMS) < 0 ||
      check_param(m, x, g->weight, "weight") < 0)
    return NULL;
  return (g->relu ? tg_group_norm_relu : tg_group_norm)(x, g->num_groups, g->weight,
                                                        g->bias, g->eps);
}

tg_group_norm_config tg_group_norm_config_default(void) {
  return (tg_group_norm_config){true, 1e-5, true, tg_init_const(1), tg_init_const(0),
                                false};
}

tg_module *tg_nn_group_norm(tg_path *path, int64_t num_groups, int64_t num_channels,
                            tg_group_norm_config config) {
  const char *op = "tg_nn_group_norm";
  if (!path_ok(path, op))
    return NULL;
  if (num_channels <= 0) {
    tg__error("%s: num_channels must be positive (num_channels %lld, num_groups %lld)",
              op, (long long)num_channels, (long long)num_groups);
    return NULL;
  }
  if (num_groups <= 0 || num_channels % num_groups) {
    tg__error("%s: num_channels must be divisible by num_groups (num_channels %lld, "
              "num_groups %lld)%s",
              op, (long long)num_channels, (long long)num_groups,
              num_groups <= 0 ? ", and num_groups must be positive" : "");
    return NULL;
  }
  if (check_eps(op, path, config.eps) < 0)
    return NULL;
  int mark = path->vs->n_vars;
  group_norm_module *g = calloc(1, sizeof *g);
  bool ok = g != NULL;
  if (ok && config.affine)
    ok = (g->weight = tg_path_var(path, "weight", &num_channels, 1, config.ws_init)) &&
         (g->bias = tg_path_var(path, "bias", &num_channels, 1, config.bs_init));
  if (g) {
    g->base = (tg_module){op, NULL, group_norm_forward, NULL};
    g->num_groups = num_groups;
    g->num_channels = num_channels;
    g->eps = config.eps;
    g->relu = config.relu;
  }
  return finish(path, mark, g ? &g->base : NULL, ok, op);
}

/* -------------------------------------------------------------- batch norm -- */

typedef struct {
  tg_module base;
  tg_tensor *weight, *bias, *running_mean, *running_var, *num_batches_tracked;
  int64_t num_features;
  double eps, momentum;
} batch_norm_module;

/* num_batches_tracked += 1 where the int64 scalar lives: on a device by a kernel, so a
 * training forward never waits to read the count back. */
static int count_batch(tg_tensor *count) {
  tg__bump_version(count);
  if (tg__on_cuda(count))
    return tg__cuda_add_i64(tg__data(count), 1, 1, count->device.index);
  ++*(int64_t *)tg__data(count);
  return 0;
}

static tg_tensor *batch_norm_forward(tg_module *m, const tg_tensor *x, bool train) {
  batch_norm_module *b = (batch_norm_module *)m;
  if (check_channels(m, x, b->num_features, 4, 4) < 0 ||
      check_param(m, x, b->running_mean, "running_mean") < 0)
    return NULL;
  tg_tensor *y = tg_batch_norm(x, b->weight, b->bias, b->running_mean, b->running_var,
                               train, b->momentum, b->eps);
  if (y && train && count_batch(b->num_batches_tracked) < 0) {
    tg_tensor_free(y);
    return NULL;
  }
  return y;
}

tg_batch_norm_config tg_batch_norm_config_default(void) {
  return (tg_batch_norm_config){1e-5, 0.1, true, tg_init_const(1), tg_init_const(0)};
}

/* Variables as in PyTorch's state_dict: weight, bias (when affine), running_mean,
 * running_var and the int64 scalar num_batches_tracked, so checkpoints of PyTorch
 * models with BatchNorm2d load by name. num_batches_tracked only counts training
 * forwards: the momentum is always the configured one (no cumulative average). */
tg_module *tg_nn_batch_norm2d(tg_path *path, int64_t num_features,
                              tg_batch_norm_config config) {
  const char *op = "tg_nn_batch_norm2d";
  if (!path_ok(path, op))
    return NULL;
  if (num_features <= 0) {
    tg__error("%s: num_features must be positive, got %lld", op, (long long)num_features);
    return NULL;
  }
  if (check_eps(op, path, config.eps) < 0)
    return NULL;
  if (!isfinite(config.momentum)) { /* as tg_batch_norm would say at the first forward */
    char w[WHO_LEN];
    tg__error("%s: expected a finite momentum, but got %g",
              layer_name(op, path->prefix, w, sizeof w), config.momentum);
    return NULL;
  }
  int mark = path->vs->n_vars;
  batch_norm_module *b = calloc(1, sizeof *b);
  bool ok = b != NULL;
  if (ok && config.affine)
    ok = (b->weight = tg_path_var(path, "weight", &num_features, 1, config.ws_init)) &&
         (b->bias = tg_path_var(path, "bias", &num_features, 1, config.bs_init));
  ok = ok &&
       (b->running_mean = tg_path_var_frozen(path, "running_mean", &num_features, 1,
                                             tg_init_const(0))) &&
       (b->running_var = tg_path_var_frozen(path, "running_var", &num_features, 1,
                                            tg_init_const(1))) &&
       (b->num_batches_tracked = tg__path_var_ex(path, "num_batches_tracked", NULL, 0,
                                                 tg_init_const(0), TG_I64, false));
  if (b) {
    b->base = (tg_module){op, NULL, batch_norm_forward, NULL};
    b->num_features = num_features;
    b->eps = config.eps;
    b->momentum = config.momentum;
  }
  return finish(path, mark, b ? &b->base : NULL, ok, op);
}

/* -------------------------------------------------------------- layer norm -- */

typedef struct {
  tg_module base;
  tg_tensor *weight, *bias;
  int64_t shape[TG_MAX_DIMS];
  int n_dims;
  double eps;
} layer_norm_module;

static tg_tensor *layer_norm_forward(tg_module *m, const tg_tensor *x, bool train) {
  (void)train;
  layer_norm_module *l = (layer_norm_module *)m;
  if (check_param(m, x, l->weight, "weight") < 0)
    return NULL;
  return tg_layer_norm(x, l->shape, l->n_dims, l->weight, l->bias, l->eps);
}

tg_layer_norm_config tg_layer_norm_config_default(void) {
  return (tg_layer_norm_config){1e-5, true, tg_init_const(1), tg_init_const(0)};
}

tg_module *tg_nn_layer_norm(tg_path *path, const int64_t *normalized_shape, int n_dims,
                            tg_layer_norm_config config) {
  const char *op = "tg_nn_layer_norm";
  if (!path_ok(path, op))
    return NULL;
  if (n_dims < 1 || n_dims > TG_MAX_DIMS || !normalized_shape) {
    tg__error("%s: normalized_shape needs 1 to %d dimensions, got %d", op, TG_MAX_DIMS,
              n_dims);
    return NULL;
  }
  if (tg__check_shape(normalized_shape, n_dims, path->vs->dtype, op) < 0 ||
      check_eps(op, path, config.eps) < 0)
    return NULL;
  int mark = path->vs->n_vars;
  layer_norm_module *l = calloc(1, sizeof *l);
  bool ok = l != NULL;
  if (ok && config.elementwise_affine)
    ok = (l->weight =
              tg_path_var(path, "weight", normalized_shape, n_dims, config.ws_init)) &&
         (l->bias = tg_path_var(path, "bias", normalized_shape, n_dims, config.bs_init));
  if (l) {
    l->base = (tg_module){op, NULL, layer_norm_forward, NULL};
    memcpy(l->shape, normalized_shape, (size_t)n_dims * sizeof *l->shape);
    l->n_dims = n_dims;
    l->eps = config.eps;
  }
  return finish(path, mark, l ? &l->base : NULL, ok, op);
}

/* ------------------------------------------------------- func, relu, seq -- */

typedef struct {
  tg_module base;
  tg_module_fn fn;
  void *ctx;
} func_module;

static tg_tensor *func_forward(tg_module *m, const tg_tensor *x, bool train) {
  func_module *f = (func_module *)m;
  tg_clear_error(); /* x is valid: any message now comes from fn */
  tg_tensor *y = tg__callback_result(f->fn(x, train, f->ctx), 1, &x);
  if (!y && !tg_last_error()[0])
    tg__error("tg_module_forward: the function of a %s module returned NULL without "
              "setting an error",
              m->kind);
  return y;
}

static tg_module *func_new(tg_varstore *vs, tg_module_fn fn, void *ctx,
                           const char *kind) {
  if (!vs || !fn) {
    if (!tg_last_error()[0])
      tg__error("%s: argument '%s' is NULL", kind, vs ? "fn" : "vs");
    return NULL;
  }
  func_module *f = calloc(1, sizeof *f);
  if (f)
    *f = (func_module){{kind, "", func_forward, NULL}, fn, ctx};
  return tg__module_register(vs, f ? &f->base : NULL, kind);
}

tg_module *tg_nn_func(tg_varstore *vs, tg_module_fn fn, void *ctx) {
  return func_new(vs, fn, ctx, "tg_nn_func");
}

static tg_tensor *relu_fn(const tg_tensor *x, bool train, void *ctx) {
  (void)train;
  (void)ctx;
  return tg_relu(x);
}

tg_module *tg_nn_relu(tg_varstore *vs) {
  return func_new(vs, relu_fn, NULL, "tg_nn_relu");
}

typedef struct {
  tg_module base;
  tg_module **items;
  int n, cap;
  tg_varstore *vs; /* its owner: it holds modules of that store only */
  tg_path *path;   /* tg_nn_sequential_path's: children are named "<path>.<index>" */
} sequential_module;

/* Each intermediate result is released as soon as the next module has used it (the
 * tape keeps what backward needs). An empty sequential is the identity. */
static tg_tensor *sequential_forward(tg_module *m, const tg_tensor *x, bool train) {
  sequential_module *s = (sequential_module *)m;
  if (s->n == 0)
    return tg_reshape(x, x->shape, x->ndim);
  tg_tensor *cur = NULL;
  for (int i = 0; i < s->n; i++) {
    tg_tensor *next = s->items[i]->forward(s->items[i], cur ? cur : x, train);
    tg_tensor_free(cur);
    if (!next)
      return NULL;
    cur = next;
  }
  return cur;
}

static void sequential_release(tg_module *m) { free(((sequential_module *)m)->items); }

tg_module *tg_nn_sequential(tg_varstore *vs) {
  if (!vs) {
    if (!tg_last_error()[0])
      tg__error("tg_nn_sequential: argument 'vs' is NULL");
    return NULL;
  }
  sequential_module *s = calloc(1, sizeof *s);
  if (s) {
    s->base = (tg_module){"tg_nn_sequential", "", sequential_forward, sequential_release};
    s->vs = vs;
  }
  return tg__module_register(vs, s ? &s->base : NULL, "tg_nn_sequential");
}

/* Whether vs registered m. From the newest module: the one just built is last. */
static bool owns(const tg_varstore *vs, const tg_module *m) {
  for (int i = vs->n_modules - 1; i >= 0; i--)
    if (vs->modules[i] == m)
      return true;
  return false;
}

tg_module *tg_nn_sequential_path(tg_path *path) {
  if (!path) {
    if (!tg_last_error()[0])
      tg__error("tg_nn_sequential_path: argument 'path' is NULL");
    return NULL;
  }
  sequential_module *s = calloc(1, sizeof *s);
  if (s) {
    s->base = (tg_module){"tg_nn_sequential", path->prefix, sequential_forward,
                          sequential_release};
    s->vs = path->vs;
    s->path = path;
  }
  return tg__module_register(path->vs, s ? &s->base : NULL, "tg_nn_sequential_path");
}

tg_path *tg_sequential_path(tg_module *seq) {
  if (!seq || seq->forward != sequential_forward || !((sequential_module *)seq)->path) {
    if (seq || !tg_last_error()[0])
      tg__error("tg_sequential_path: %s", seq ? "the module is not a sequential made by "
                                                "tg_nn_sequential_path"
                                              : "argument 'seq' is NULL");
    return NULL;
  }
  sequential_module *s = (sequential_module *)seq;
  char index[16];
  snprintf(index, sizeof index, "%d", s->n);
  return tg_path_sub(s->path, index);
}

/* Whether m is target or holds it at any depth (sequentials are acyclic). */
static bool contains(const tg_module *m, const tg_module *target) {
  if (m == target)
    return true;
  if (m->forward != sequential_forward)
    return false;
  const sequential_module *s = (const sequential_module *)m;
  for (int i = 0; i < s->n; i++)
    if (contains(s->items[i], target))
      return true;
  return false;
}

int tg_sequential_add(tg_module *seq, tg_module *m) {
  if (!seq || !m) {
    if (!tg_last_error()[0])
      tg__error("tg_sequential_add: argument '%s' is NULL (an earlier call probably "
                "failed)",
                seq ? "m" : "seq");
    return -1;
  }
  if (seq->forward != sequential_forward)
    return tg__error("tg_sequential_add: the first argument must be a module made by "
                     "tg_nn_sequential, got a %s",
                     seq->kind);
  if (contains(m, seq))
    return tg__error("tg_sequential_add: adding this module would make the sequential "
                     "contain itself");
  sequential_module *s = (sequential_module *)seq;
  if (!owns(s->vs, m)) {
    char buf[160];
    return tg__error("tg_sequential_add: the %s belongs to another var store than the "
                     "sequential; a var store frees its modules and variables, so a "
                     "sequential may only hold modules of its own store",
                     who(m, buf, sizeof buf));
  }
  if (s->n == s->cap) {
    int cap = s->cap ? 2 * s->cap : 8;
    tg_module **items = realloc(s->items, (size_t)cap * sizeof *items);
    if (!items)
      return tg__error("tg_sequential_add: out of memory");
    s->items = items;
    s->cap = cap;
  }
  s->items[s->n++] = m;
  return 0;
}
