/* PyTorch's own OpInfo samples (tests/data/opinfo_*.txt, written by
 * tests/ref/gen_opinfo.py from op_db) replayed through tapegrad: every sample
 * tapegrad can express runs in float32 and float64 on every device, and its output
 * and input gradients (for the recorded upstream gradient dy) must match PyTorch's
 * float64 result: float64 to 1e-10, float32 within a few times PyTorch's own float32
 * error (recorded beside each reference) plus a few float32 ulps of the result's
 * largest element. Refusing a sample PyTorch accepts fails, and so does accepting an
 * error input PyTorch rejects or rejecting it without a message. Samples tapegrad's
 * API cannot express are counted per reason, not run. Prints a row per OpInfo. */
#include "common.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IN 16
#define GRADCHECK_ELEMS 256

/* One sample being replayed: runners read their arguments from it. */
typedef struct {
  ref_file *f;
  const char *name;
  tg_dtype dtype;
  tg_tensor *out1;   /* a runner's second output (indices), new reference */
  bool gradchecked;  /* the float64 replay ran tg_gradcheck */
  bool gradchecking; /* calls from tg_gradcheck, whose scopes would free out1 */
} sample;

/* Where a runner puts its second output; NULL (not asked for) under gradcheck. */
static tg_tensor **out1_slot(sample *s) { return s->gradchecking ? NULL : &s->out1; }

/* A runner makes the tapegrad call of one op key; the signature is
 * tg_gradcheck_fn's, ctx being the sample. */
typedef struct {
  const char *key;
  tg_gradcheck_fn fn;
} op_row;

/* ---------------------------------------------------------- arguments -- */

static bool has_p(sample *s, const char *name) {
  char label[80];
  snprintf(label, sizeof label, "p_%s", name);
  return ref_has(s->f, s->name, label);
}

/* Integer list argument p_NAME into v (up to max); returns its length. */
static int pv(sample *s, const char *name, int64_t *v, int max) {
  char label[80];
  snprintf(label, sizeof label, "p_%s", name);
  tg_tensor *t = ref_get(s->f, s->name, label, TG_I64);
  int n = (int)tg_numel(t);
  assert_true(n <= max);
  memcpy(v, tg_data(t), (size_t)n * sizeof *v);
  tg_tensor_free(t);
  return n;
}

static double pf(sample *s, const char *name) {
  char label[80];
  snprintf(label, sizeof label, "p_%s", name);
  tg_tensor *t = ref_get(s->f, s->name, label, TG_F64);
  double v = tg_item(t);
  tg_tensor_free(t);
  return v;
}

static int64_t pi(sample *s, const char *name) { return (int64_t)pf(s, name); }

static int pints(sample *s, const char *name, int *v) {
  int64_t w[TG_MAX_DIMS + 8];
  int n = pv(s, name, w, TG_MAX_DIMS + 8);
  for (int i = 0; i < n; i++)
    v[i] = (int)w[i];
  return n;
}

/* ----------------------------------------------------------- runners -- */
/* x: the call's tensors (NULL where PyTorch got None). */
#define RUNNER(name) static tg_tensor *run_##name(tg_tensor *const *x, int n, void *ctx)
#define UNUSED_ARGS (void)x, (void)n, (void)ctx
#define S ((sample *)ctx)

#define UNARY(name)                                                                      \
  RUNNER(name) {                                                                         \
    UNUSED_ARGS;                                                                         \
    return tg_##name(x[0]);                                                              \
  }
UNARY(abs)
UNARY(neg)
UNARY(exp)
UNARY(log)
UNARY(sqrt)
UNARY(sigmoid)
UNARY(tanh)
UNARY(relu)
UNARY(clone)
UNARY(gelu)
UNARY(sum)
UNARY(mean)
UNARY(max_all)
UNARY(min_all)
UNARY(squeeze_all)

#define BINARY(name)                                                                     \
  RUNNER(name) {                                                                         \
    UNUSED_ARGS;                                                                         \
    return tg_##name(x[0], x[1]);                                                        \
  }                                                                                      \
  RUNNER(name##_scalar) {                                                                \
    UNUSED_ARGS;                                                                         \
    return tg_##name##_scalar(x[0], pf(S, "s"));                                         \
  }
BINARY(add)
BINARY(sub)
BINARY(mul)
BINARY(div)

static double alpha(sample *s) { return has_p(s, "alpha") ? pf(s, "alpha") : 1; }

static tg_rounding_mode rounding(sample *s) {
  const char *r = ref_note(s->f, s->name, "s_rounding");
  return !r                    ? TG_ROUNDING_NONE
         : !strcmp(r, "trunc") ? TG_ROUNDING_TRUNC
                               : TG_ROUNDING_FLOOR;
}

#define ALPHA(name)                                                                      \
  RUNNER(name##_ex) {                                                                    \
    UNUSED_ARGS;                                                                         \
    return tg_##name##_alpha(x[0], x[1], alpha(S));                                      \
  }
ALPHA(add)
ALPHA(sub)

RUNNER(div_ex) {
  UNUSED_ARGS;
  return tg_div_ex(x[0], x[1], rounding(S));
}

/* The scalar p_s as a 0-dim tensor of the input's dtype, as PyTorch wraps it. */
static tg_tensor *scalar_of(sample *s, const tg_tensor *x) {
  return tg_scalar(pf(s, "s"), tg_dtype_of(x), tg_device_of(x));
}

RUNNER(div_ex_scalar) {
  UNUSED_ARGS;
  return tg_div_ex(x[0], scalar_of(S, x[0]), rounding(S));
}

RUNNER(rdiv_ex_scalar) {
  UNUSED_ARGS;
  return tg_div_ex(scalar_of(S, x[0]), x[0], rounding(S));
}

RUNNER(rsub_scalar) { /* s - alpha * input */
  UNUSED_ARGS;
  const double a = alpha(S);
  return tg_rsub_scalar(a == 1 ? x[0] : tg_mul_scalar(x[0], a), pf(S, "s"));
}

RUNNER(rdiv_scalar) {
  UNUSED_ARGS;
  return tg_rdiv_scalar(x[0], pf(S, "s"));
}

RUNNER(pow) {
  UNUSED_ARGS;
  return tg_pow_tensor(x[0], x[1]);
}

RUNNER(rpow_scalar) {
  UNUSED_ARGS;
  return tg_rpow_scalar(x[0], pf(S, "s"));
}

RUNNER(gelu_ex) {
  UNUSED_ARGS;
  const char *a = ref_note(S->f, S->name, "s_approximate");
  /* Any other string (PyTorch's error input) as a value outside the enum. */
  return tg_gelu_ex(x[0], !strcmp(a, "tanh")   ? TG_GELU_TANH
                          : !strcmp(a, "none") ? TG_GELU_NONE
                                               : (tg_gelu_approximate)-1);
}

RUNNER(rsub) { /* other - alpha * input */
  UNUSED_ARGS;
  return tg_sub_alpha(x[1], x[0], alpha(S));
}

RUNNER(pow_scalar) {
  UNUSED_ARGS;
  return tg_pow(x[0], pf(S, "s"));
}

RUNNER(leaky_relu) {
  UNUSED_ARGS;
  return tg_leaky_relu(x[0], pf(S, "slope"));
}

/* Over the dims p_dims, keepdim p_keepdim. */
#define OVER_DIMS(name, fn)                                                              \
  RUNNER(name) {                                                                         \
    UNUSED_ARGS;                                                                         \
    int d[TG_MAX_DIMS + 8], nd = pints(S, "dims", d);                                    \
    return fn(x[0], d, nd, pi(S, "keepdim"));                                            \
  }
OVER_DIMS(sum_dims, tg_sum_dims)
OVER_DIMS(mean_dims, tg_mean_dims)
OVER_DIMS(amax_dims, tg_amax)
OVER_DIMS(amin_dims, tg_amin)

/* max/min over p_dim: values, and the indices unless amax/amin asked for values only. */
#define MINMAX_DIM(op)                                                                   \
  RUNNER(op##_dim) {                                                                     \
    UNUSED_ARGS;                                                                         \
    bool values_only = ref_note(S->f, S->name, "s_values_only") != NULL;                 \
    return tg_##op##_dim(x[0], (int)pi(S, "dim"), pi(S, "keepdim"),                      \
                         values_only ? NULL : out1_slot(S));                             \
  }
MINMAX_DIM(max)
MINMAX_DIM(min)

/* Over all elements, keepdim gives ones of the input's rank. */
static tg_tensor *arg_all(tg_tensor *r, const tg_tensor *t, bool keepdim) {
  int64_t ones[TG_MAX_DIMS] = {1, 1, 1, 1, 1, 1, 1, 1};
  return keepdim && r ? tg_reshape(r, ones, tg_ndim(t)) : r;
}

#define ARG(name)                                                                        \
  RUNNER(name) {                                                                         \
    UNUSED_ARGS;                                                                         \
    if (!has_p(S, "dim"))                                                                \
      return arg_all(tg_##name##_all(x[0]), x[0], pi(S, "keepdim"));                     \
    return tg_##name(x[0], (int)pi(S, "dim"), pi(S, "keepdim"));                         \
  }
ARG(argmax)
ARG(argmin)

RUNNER(matmul) {
  UNUSED_ARGS;
  return tg_matmul(x[0], x[1]);
}

RUNNER(linear) {
  UNUSED_ARGS;
  return tg_linear(x[0], x[1], n > 2 ? x[2] : NULL);
}

/* The output dtype asked for, or -1 for none. */
static int out_dtype(sample *s) {
  const char *d = ref_note(s->f, s->name, "s_dtype");
  return !d ? -1 : !strcmp(d, "f64") ? TG_F64 : TG_F32;
}

#define SOFTMAX(name)                                                                    \
  RUNNER(name) {                                                                         \
    UNUSED_ARGS;                                                                         \
    int dt = out_dtype(S);                                                               \
    return dt < 0 ? tg_##name(x[0], (int)pi(S, "dim"))                                   \
                  : tg_##name##_ex(x[0], (int)pi(S, "dim"), (tg_dtype)dt);               \
  }
SOFTMAX(softmax)
SOFTMAX(log_softmax)

static tg_tensor *opt(tg_tensor *const *x, int n, int i) { return i < n ? x[i] : NULL; }

RUNNER(cross_entropy) {
  UNUSED_ARGS;
  tg_cross_entropy_options o = tg_cross_entropy_options_default();
  o.reduction = (tg_reduction)pi(S, "reduction");
  o.ignore_index = pi(S, "ignore");
  o.weight = opt(x, n, 2);
  o.label_smoothing = pf(S, "smoothing");
  if (!o.weight && !o.label_smoothing && tg_dtype_of(x[1]) == TG_I64)
    return tg_cross_entropy(x[0], x[1], o.reduction, o.ignore_index);
  return tg_cross_entropy_ex(x[0], x[1], &o);
}

RUNNER(nll_loss) {
  UNUSED_ARGS;
  tg_nll_loss_options o = {(tg_reduction)pi(S, "reduction"), pi(S, "ignore"),
                           opt(x, n, 2)};
  if (!o.weight)
    return tg_nll_loss(x[0], x[1], o.reduction, o.ignore_index);
  return tg_nll_loss_ex(x[0], x[1], &o);
}

RUNNER(mse_loss) {
  UNUSED_ARGS;
  return tg_mse_loss(x[0], x[1], (tg_reduction)pi(S, "reduction"));
}

RUNNER(bce_with_logits) {
  UNUSED_ARGS;
  tg_bce_with_logits_options o = {(tg_reduction)pi(S, "reduction"), opt(x, n, 2),
                                  opt(x, n, 3)};
  if (!o.weight && !o.pos_weight)
    return tg_binary_cross_entropy_with_logits(x[0], x[1], o.reduction);
  return tg_binary_cross_entropy_with_logits_ex(x[0], x[1], &o);
}

RUNNER(group_norm) {
  UNUSED_ARGS;
  return tg_group_norm(x[0], pi(S, "groups"), opt(x, n, 1), opt(x, n, 2), pf(S, "eps"));
}

RUNNER(batch_norm) {
  UNUSED_ARGS;
  return tg_batch_norm(x[0], opt(x, n, 1), opt(x, n, 2), opt(x, n, 3), opt(x, n, 4),
                       pi(S, "training"), pf(S, "momentum"), pf(S, "eps"));
}

RUNNER(layer_norm) {
  UNUSED_ARGS;
  int64_t shape[TG_MAX_DIMS];
  int nd = pv(S, "shape", shape, TG_MAX_DIMS);
  return tg_layer_norm(x[0], shape, nd, opt(x, n, 1), opt(x, n, 2), pf(S, "eps"));
}

RUNNER(conv2d) {
  UNUSED_ARGS;
  tg_conv2d_options o = tg_conv2d_options_default();
  pv(S, "stride", o.stride, 2);
  pv(S, "dilation", o.dilation, 2);
  o.groups = pi(S, "groups");
  const char *mode = ref_note(S->f, S->name, "s_padding");
  if (!mode) {
    pv(S, "padding", o.padding, 2);
    return tg_conv2d(x[0], x[1], opt(x, n, 2), o.stride, o.padding, o.dilation, o.groups);
  }
  o.padding_mode = !strcmp(mode, "same") ? TG_PADDING_SAME : TG_PADDING_VALID;
  return tg_conv2d_ex(x[0], x[1], opt(x, n, 2), &o);
}

RUNNER(conv_transpose2d) {
  UNUSED_ARGS;
  int64_t st[2], pad[2], opad[2], dil[2];
  pv(S, "stride", st, 2);
  pv(S, "padding", pad, 2);
  pv(S, "output_padding", opad, 2);
  pv(S, "dilation", dil, 2);
  return tg_conv_transpose2d(x[0], x[1], opt(x, n, 2), st, pad, opad, dil,
                             pi(S, "groups"));
}

/* A pool's window: p_kernel, p_stride, p_padding. */
static void pool_window(sample *s, int64_t kernel[2], int64_t stride[2],
                        int64_t padding[2]) {
  pv(s, "kernel", kernel, 2);
  pv(s, "stride", stride, 2);
  pv(s, "padding", padding, 2);
}

RUNNER(max_pool2d) {
  UNUSED_ARGS;
  tg_max_pool2d_options o = tg_max_pool2d_options_default(0, 0);
  pool_window(S, o.kernel, o.stride, o.padding);
  pv(S, "dilation", o.dilation, 2);
  o.ceil_mode = pi(S, "ceil");
  bool plain =
      !o.ceil_mode && o.dilation[0] == 1 && o.dilation[1] == 1 && !pi(S, "indices");
  if (plain)
    return tg_max_pool2d(x[0], o.kernel, o.stride, o.padding);
  return tg_max_pool2d_ex(x[0], &o, pi(S, "indices") ? out1_slot(S) : NULL);
}

RUNNER(max_unpool2d) {
  UNUSED_ARGS;
  int64_t k[2], st[2], pad[2], size[2];
  pool_window(S, k, st, pad);
  bool sized = has_p(S, "output_size");
  if (sized)
    pv(S, "output_size", size, 2);
  return tg_max_unpool2d(x[0], x[1], k, st, pad, sized ? size : NULL);
}

RUNNER(avg_pool2d) {
  UNUSED_ARGS;
  tg_avg_pool2d_options o = tg_avg_pool2d_options_default(0, 0);
  pool_window(S, o.kernel, o.stride, o.padding);
  o.ceil_mode = pi(S, "ceil");
  o.count_include_pad = pi(S, "include_pad");
  o.divisor_override = pi(S, "divisor");
  if (!o.ceil_mode && o.count_include_pad && !o.divisor_override)
    return tg_avg_pool2d(x[0], o.kernel, o.stride, o.padding);
  return tg_avg_pool2d_ex(x[0], &o);
}

RUNNER(adaptive_avg_pool2d) {
  UNUSED_ARGS;
  int64_t size[4];
  int ns = pv(S, "size", size, 4);
  /* PyTorch's error inputs pass other lengths; tapegrad takes exactly two. */
  return ns == 2 ? tg_adaptive_avg_pool2d(x[0], size)
                 : (tg_adaptive_avg_pool2d(x[0], NULL));
}

/* The resampling function of each mode, by spatial dims (1 to 3). */
typedef tg_tensor *(*resample_fn)(const tg_tensor *, const tg_upsample_options *);
static const resample_fn nearest_fns[3] = {
    tg_upsample_nearest1d_ex, tg_upsample_nearest2d_ex, tg_upsample_nearest3d_ex};
static const resample_fn linear_fns[3] = {
    tg_upsample_linear1d_ex, tg_upsample_bilinear2d_ex, tg_upsample_trilinear3d_ex};

/* By size (the plain 2-D functions when they apply) or by scale_factor. nearest picks
 * its function by the input's dims, as F.interpolate; the linear modes have theirs
 * (nsp), whatever the input (PyTorch's error inputs). */
static tg_tensor *upsample(sample *s, const tg_tensor *x, const resample_fn *fns,
                           int nsp) {
  tg_upsample_options o = tg_upsample_options_default();
  o.align_corners = pi(s, "align_corners");
  if (!nsp)
    nsp = tg_ndim(x) >= 3 && tg_ndim(x) <= 5 ? tg_ndim(x) - 2 : 2;
  if (has_p(s, "size"))
    pv(s, "size", o.size, 3);
  if (has_p(s, "size") && !o.align_corners && nsp == 2)
    return fns == linear_fns ? tg_upsample_bilinear2d(x, o.size)
                             : tg_upsample_nearest2d(x, o.size);
  if (has_p(s, "scale")) {
    tg_tensor *t = ref_get(s->f, s->name, "p_scale", TG_F64);
    assert_true(tg_numel(t) <= 3);
    memcpy(o.scale_factor, tg_data(t), (size_t)tg_numel(t) * sizeof(double));
    tg_tensor_free(t);
    o.recompute_scale_factor = pi(s, "recompute");
  }
  return fns[nsp - 1](x, &o);
}

RUNNER(upsample_nearest) {
  UNUSED_ARGS;
  return upsample(S, x[0], nearest_fns, 0);
}

RUNNER(upsample_linear) {
  UNUSED_ARGS;
  return upsample(S, x[0], linear_fns, 1);
}

RUNNER(upsample_bilinear) {
  UNUSED_ARGS;
  return upsample(S, x[0], linear_fns, 2);
}

RUNNER(upsample_trilinear) {
  UNUSED_ARGS;
  return upsample(S, x[0], linear_fns, 3);
}

#define TO_SHAPE(name)                                                                   \
  RUNNER(name) {                                                                         \
    UNUSED_ARGS;                                                                         \
    int64_t shape[TG_MAX_DIMS + 8];                                                      \
    int nd = pv(S, "shape", shape, TG_MAX_DIMS + 8);                                     \
    return tg_##name(x[0], shape, nd);                                                   \
  }
TO_SHAPE(reshape)
TO_SHAPE(view)

RUNNER(flatten) {
  UNUSED_ARGS;
  return tg_flatten(x[0], (int)pi(S, "start"), (int)pi(S, "end"));
}

RUNNER(squeeze) {
  UNUSED_ARGS;
  return tg_squeeze(x[0], (int)pi(S, "dim"));
}

RUNNER(squeeze_dims) {
  UNUSED_ARGS;
  int d[TG_MAX_DIMS + 8], nd = pints(S, "dims", d);
  return tg_squeeze_dims(x[0], d, nd);
}

RUNNER(unsqueeze) {
  UNUSED_ARGS;
  return tg_unsqueeze(x[0], (int)pi(S, "dim"));
}

RUNNER(permute) {
  UNUSED_ARGS;
  int d[TG_MAX_DIMS + 8], nd = pints(S, "dims", d);
  return tg_permute(x[0], d, nd);
}

RUNNER(transpose) {
  UNUSED_ARGS;
  return tg_transpose(x[0], (int)pi(S, "d0"), (int)pi(S, "d1"));
}

RUNNER(narrow) {
  UNUSED_ARGS;
  return tg_narrow(x[0], (int)pi(S, "dim"), pi(S, "start"), pi(S, "length"));
}

RUNNER(cat) {
  UNUSED_ARGS;
  return tg_cat(x, n, (int)pi(S, "dim"));
}

#define ROW(name)                                                                        \
  { #name, run_##name }
static const op_row ops[] = {
    ROW(abs),
    ROW(neg),
    ROW(exp),
    ROW(log),
    ROW(sqrt),
    ROW(sigmoid),
    ROW(tanh),
    ROW(relu),
    ROW(clone),
    ROW(gelu),
    ROW(leaky_relu),
    ROW(add),
    ROW(add_scalar),
    ROW(sub),
    ROW(sub_scalar),
    ROW(mul),
    ROW(mul_scalar),
    ROW(div),
    ROW(div_scalar),
    ROW(rsub),
    ROW(pow_scalar),
    ROW(sum),
    ROW(mean),
    ROW(sum_dims),
    ROW(mean_dims),
    ROW(max_dim),
    ROW(argmax),
    ROW(matmul),
    ROW(linear),
    ROW(softmax),
    ROW(log_softmax),
    ROW(cross_entropy),
    ROW(nll_loss),
    ROW(mse_loss),
    ROW(bce_with_logits),
    ROW(group_norm),
    ROW(batch_norm),
    ROW(layer_norm),
    ROW(conv2d),
    ROW(conv_transpose2d),
    ROW(max_pool2d),
    ROW(avg_pool2d),
    ROW(adaptive_avg_pool2d),
    ROW(upsample_nearest),
    ROW(upsample_bilinear),
    ROW(upsample_linear),
    ROW(upsample_trilinear),
    ROW(max_unpool2d),
    ROW(reshape),
    ROW(view),
    ROW(flatten),
    ROW(squeeze),
    ROW(squeeze_all),
    ROW(unsqueeze),
    ROW(permute),
    ROW(transpose),
    ROW(narrow),
    ROW(cat),
    ROW(add_ex),
    ROW(sub_ex),
    ROW(div_ex),
    ROW(div_ex_scalar),
    ROW(rdiv_ex_scalar),
    ROW(rsub_scalar),
    ROW(rdiv_scalar),
    ROW(pow),
    ROW(gelu_ex),
    ROW(rpow_scalar),
    ROW(min_dim),
    ROW(max_all),
    ROW(min_all),
    ROW(amax_dims),
    ROW(amin_dims),
    ROW(argmin),
    ROW(squeeze_dims),
};

static const op_row *find_op(const char *key) {
  for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
    if (!strcmp(ops[i].key, key))
      return &ops[i];
  return NULL;
}

/* ------------------------------------------------------- comparisons -- */

static double max_abs(const tg_tensor *t) {
  double m = 0;
  tg_tensor *d = tg_to_dtype(t, TG_F64);
  const double *v = tg_data(d);
  for (int64_t i = 0; i < tg_numel(d); i++)
    if (isfinite(v[i]) && fabs(v[i]) > m)
      m = fabs(v[i]);
  tg_tensor_free(d);
  return m;
}

/* Whether a (tapegrad, any dtype) matches ref (float64 or int64) elementwise; NULL a
 * stands for zeros (a gradient never written). On a mismatch, why says where. */
static bool matches(const tg_tensor *a, const tg_tensor *ref, double atol, double rtol,
                    const char *what, char *why, size_t len) {
  char sa[128], sb[128];
  bool same = !a || tg_ndim(a) == tg_ndim(ref);
  for (int i = 0; same && a && i < tg_ndim(a); i++)
    same = tg_shape(a)[i] == tg_shape(ref)[i];
  if (!same) {
    snprintf(why, len, "%s: shape %s, PyTorch %s", what, tg_shape_str(a, sa, sizeof sa),
             tg_shape_str(ref, sb, sizeof sb));
    return false;
  }
  tg_tensor *ah = a ? tg_tensor_to(a, TG_CPU) : NULL; /* device results: on the host */
  tg_tensor *ad = a ? tg_to_dtype(ah, TG_F64) : tg_zeros_like(ref);
  tg_tensor *rd = tg_to_dtype(ref, TG_F64);
  const double *x = tg_data(ad), *y = tg_data(rd);
  bool ok = true;
  for (int64_t i = 0; ok && i < tg_numel(rd); i++) {
    bool nan_ok = isnan(x[i]) && isnan(y[i]);
    bool inf_ok = isinf(y[i]) && x[i] == y[i];
    if (!nan_ok && !inf_ok && !(fabs(x[i] - y[i]) <= atol + rtol * fabs(y[i]))) {
      snprintf(why, len,
               "%s: element %lld of %s is %.10g, PyTorch %.10g (atol %.3g rtol %.3g)",
               what, (long long)i, tg_shape_str(ref, sb, sizeof sb), x[i], y[i], atol,
               rtol);
      ok = false;
    }
  }
  tg_tensor_free(ah);
  tg_tensor_free(ad);
  tg_tensor_free(rd);
  return ok;
}

/* Compares a result with reference `label`, in the tolerance of s->dtype. */
static bool check(sample *s, const tg_tensor *a, const char *label, char *why,
                  size_t len) {
  tg_dtype rt = ref_dtype(s->f, s->name, label);
  tg_tensor *ref = ref_get(s->f, s->name, label, rt);
  double atol = 0, rtol = 0;
  if (rt != TG_I64 && s->dtype == TG_F64) {
    atol = rtol = 1e-10;
  } else if (rt != TG_I64) {
    char elabel[80];
    snprintf(elabel, sizeof elabel, "e_%s", label);
    tg_tensor *e =
        ref_has(s->f, s->name, elabel) ? ref_get(s->f, s->name, elabel, TG_F64) : NULL;
    /* PyTorch's float32 error, four times, plus 8 ulps of the largest element; below
     * float32's normal range nothing is representable. */
    atol = 4 * (e ? tg_item(e) : 0) + 8 * FLT_EPSILON * max_abs(ref) + FLT_MIN;
    rtol = 8 * FLT_EPSILON;
    tg_tensor_free(e);
  }
  char what[96];
  snprintf(what, sizeof what, "%s %s", tg_dtype_name(s->dtype), label);
  bool ok = matches(a, ref, atol, rtol, what, why, len);
  tg_tensor_free(ref);
  return ok;
}

/* --------------------------------------------------------------- replay -- */

/* tg_gradcheck takes no NULL inputs: it sees the tensors given, the runner all. */
typedef struct {
  sample *s;
  const op_row *row;
  int n, pos[MAX_IN]; /* positions of the gradchecked tensors among the runner's */
} packed_call;

static tg_tensor *packed_fn(tg_tensor *const *in, int n, void *ctx) {
  const packed_call *p = ctx;
  tg_tensor *x[MAX_IN] = {0};
  for (int i = 0; i < n; i++)
    x[p->pos[i]] = in[i];
  return p->row->fn(x, p->n, p->s);
}

static int gradcheck_sample(sample *s, const op_row *row, tg_tensor *const *leaves,
                            int n) {
  packed_call p = {s, row, n, {0}};
  tg_tensor *in[MAX_IN];
  int m = 0;
  for (int i = 0; i < n; i++)
    if (leaves[i]) {
      p.pos[m] = i;
      in[m++] = leaves[i];
    }
  return tg_gradcheck(packed_fn, &p, in, m, NULL);
}

/* Whether an index tensor [..., h, w] repeats an index within a plane. */
static bool has_duplicates(const tg_tensor *idx) {
  const int64_t *v = tg_data((tg_tensor *)idx);
  const int nd = tg_ndim(idx);
  const int64_t plane = tg_shape(idx)[nd - 1] * tg_shape(idx)[nd - 2];
  for (int64_t i = 0; i < tg_numel(idx); i++)
    for (int64_t j = i - i % plane; j < i; j++)
      if (v[i] == v[j])
        return true;
  return false;
}

/* Whether finite differences can check the sample's gradients: small (they cost two
 * forwards an element), finite, and with inputs of moderate size away from zero, where
 * the kinks of abs/relu/max and the poles of log/sqrt/div lie (the extremal values of
 * PyTorch's reference inputs are compared with its gradients only). */
static bool gradcheckable(sample *s, tg_tensor *const *leaves, int n) {
  int64_t elems = 0;
  for (int i = 0; i < n; i++) {
    if (!leaves[i] || tg_dtype_of(leaves[i]) != TG_F64)
      continue;
    const double *v = tg_data(leaves[i]);
    elems += tg_numel(leaves[i]);
    for (int64_t k = 0; k < tg_numel(leaves[i]); k++)
      if (!(fabs(v[k]) >= 1e-3 && fabs(v[k]) <= 1e3))
        return false;
  }
  if (!strcmp(ref_note(s->f, s->name, "op"), "max_unpool2d") && has_duplicates(leaves[1]))
    return false; /* PyTorch's gradient gathers to every duplicate; one wins forward */
  tg_tensor *out = ref_get(s->f, s->name, "out", TG_F64);
  bool finite = true;
  for (int64_t k = 0; k < tg_numel(out); k++)
    finite &= isfinite(((const double *)tg_data(out))[k]);
  tg_tensor_free(out);
  return finite && elems <= GRADCHECK_ELEMS;
}

typedef enum { PASS, FAIL, NO_KERNEL } outcome;

/* Replays sample s on dev in s->dtype. */
static outcome replay(sample *s, const op_row *row, tg_device dev, char *why,
                      size_t len) {
  tg_tensor *x[MAX_IN] = {0};
  tg_tensor *leaves[MAX_IN] = {0};
  int n = 0;
  const char *expected_error = ref_note(s->f, s->name, "error");
  outcome res = PASS;
  tg_scope_begin();
  for (int i = 0; i < MAX_IN; i++) {
    char label[16], glabel[16];
    snprintf(label, sizeof label, "x%d", i);
    snprintf(glabel, sizeof glabel, "g%d", i);
    if (!ref_has(s->f, s->name, label))
      continue;
    tg_dtype dt = ref_dtype(s->f, s->name, label) == TG_I64 ? TG_I64 : s->dtype;
    tg_tensor *h = ref_get(s->f, s->name, label, dt);
    if (ref_has(s->f, s->name, glabel))
      assert_int_equal(tg_set_requires_grad(h, true), 0);
    leaves[i] = h;
    x[i] = dev.type == TG_DEVICE_CPU ? h : tg_tensor_to(h, dev);
    n = i + 1;
  }
  s->out1 = NULL;
  tg_clear_error();
  tg_tensor *out = row->fn(x, n, s);
  const char *msg = tg_last_error();
  if (expected_error) {
    if (out)
      snprintf(why, len, "accepted an error input PyTorch rejects (\"%s\")",
               expected_error);
    else if (!*msg)
      snprintf(why, len, "rejected an error input without a message");
    res = out || !*msg ? FAIL : PASS;
    goto done;
  }
  if (!out) {
    res = strstr(msg, "no kernel for tensors on") ? NO_KERNEL : FAIL;
    snprintf(why, len, "refused a valid input: %s", msg);
    goto done;
  }
  if (!check(s, out, "out", why, len) ||
      (ref_has(s->f, s->name, "out1") && !check(s, s->out1, "out1", why, len)) ||
      /* the running stats the op updated in place: x's, on dev */
      (ref_has(s->f, s->name, "rm") && !check(s, x[3], "rm", why, len)) ||
      (ref_has(s->f, s->name, "rv") && !check(s, x[4], "rv", why, len))) {
    res = FAIL;
    goto done;
  }
  if (ref_has(s->f, s->name, "dy")) {
    tg_tensor *dy = ref_get(s->f, s->name, "dy", tg_dtype_of(out)); /* softmax dtype= */
    tg_tensor *dyd = tg_tensor_to(dy, dev);
    if (tg_backward_ex(out, dyd, false) < 0) {
      snprintf(why, len, "backward failed: %s", tg_last_error());
      res = FAIL;
      goto done;
    }
    for (int i = 0; i < n; i++) {
      char glabel[16];
      snprintf(glabel, sizeof glabel, "g%d", i);
      if (ref_has(s->f, s->name, glabel) &&
          !check(s, tg_grad(leaves[i]), glabel, why, len)) {
        res = FAIL;
        goto done;
      }
    }
    if (s->dtype == TG_F64 && dev.type == TG_DEVICE_CPU && gradcheckable(s, leaves, n)) {
      s->gradchecked = s->gradchecking = true;
      int rc = gradcheck_sample(s, row, leaves, n);
      s->gradchecking = false;
      if (rc < 0) {
        snprintf(why, len, "float64 gradcheck: %s", tg_last_error());
        res = FAIL;
      }
    }
  }
done:
  tg_tensor_free(s->out1);
  s->out1 = NULL;
  tg_clear_error();
  tg_scope_end();
  return res;
}

/* ----------------------------------------------------------- the table -- */

/* Samples that fail for a reason another issue fixes: reported, not failed. One that
 * passes fails the suite, so the list cannot go stale. */
static const char *const known_failures[] = {
    NULL, /* none left: relu's NaN samples (#13, #28) pass since NaN propagates */
};

static bool is_known_failure(const char *name) {
  for (size_t i = 0; i < sizeof known_failures / sizeof *known_failures; i++)
    if (known_failures[i] && !strcmp(known_failures[i], name))
      return true;
  return false;
}

#define MAX_REASONS 12

typedef struct {
  char name[96];
  int samples, passed, gradchecked, failed, known, skipped, trimmed, no_kernel;
  int errors, rejected, errors_skipped;
  char reasons[MAX_REASONS][96];
  int reason_count[MAX_REASONS];
} op_stats;

static void add_reason(op_stats *o, const char *why) {
  int i;
  for (i = 0; i < MAX_REASONS && o->reason_count[i]; i++)
    if (!strncmp(o->reasons[i], why, sizeof o->reasons[i] - 1))
      break;
  if (i == MAX_REASONS)
    i = MAX_REASONS - 1; /* the rest under the last reason */
  if (!o->reason_count[i])
    snprintf(o->reasons[i], sizeof o->reasons[i], "%s", why);
  o->reason_count[i]++;
}

static void print_row(const op_stats *o) {
  printf("  %-44s %5d %6d %6d %5d %5d %6d %4d %5d %4d/%-4d", o->name, o->samples,
         o->passed, o->gradchecked, o->failed, o->known, o->skipped, o->trimmed,
         o->no_kernel, o->rejected, o->errors);
  for (int i = 0; i < MAX_REASONS && o->reason_count[i]; i++)
    printf("%s%s (%d)", i ? "; " : "  not expressible: ", o->reasons[i],
           o->reason_count[i]);
  printf("\n");
}

static void replay_family(void **state) {
  const char *family = *state;
  char file[64];
  snprintf(file, sizeof file, "opinfo_%s", family);
  ref_file *f = ref_open(file);
  tg_device devices[2] = {TG_CPU};
  int n_dev = 1;
  if (tg_cuda_is_available())
    devices[n_dev++] = tg_cuda(0);
  op_stats *table = calloc((size_t)ref_num_cases(f) + 1, sizeof *table);
  int n_ops = 0, failures = 0;
  printf("  %-44s %5s %6s %6s %5s %5s %6s %4s %5s %9s\n", "opinfo", "samp", "passed",
         "gradck", "fail", "known", "not-ex", "trim", "nokrn", "err-rej");
  for (int c = 0; c < ref_num_cases(f); c++) {
    sample s = {f, ref_case_name(f, c), TG_F32, NULL, false, false};
    const char *opinfo = ref_note(f, s.name, "opinfo");
    assert_non_null(opinfo);
    if (!n_ops || strcmp(table[n_ops - 1].name, opinfo))
      snprintf(table[n_ops++].name, sizeof table->name, "%s", opinfo);
    op_stats *o = &table[n_ops - 1];
    bool is_error = strchr(s.name, '#')[1] == 'e';
    const char *skip = ref_note(f, s.name, "skip");
    o->samples += !is_error;
    o->errors += is_error;
    if (skip) {
      add_reason(o, skip);
      if (is_error)
        o->errors_skipped++;
      else
        o->skipped++;
      continue;
    }
    if (ref_note(f, s.name, "trimmed")) {
      o->trimmed++;
      continue;
    }
    const op_row *row = find_op(ref_note(f, s.name, "op"));
    char why[512] = "";
    outcome res = PASS;
    if (!row) {
      snprintf(why, sizeof why, "no runner for op %s", ref_note(f, s.name, "op"));
      res = FAIL;
    }
    for (int d = 0; row && res == PASS && d < n_dev; d++)
      for (int k = 0; k < 2 && res == PASS; k++) {
        s.dtype = k ? TG_F64 : TG_F32;
        outcome r = replay(&s, row, devices[d], why, sizeof why);
        if (r == NO_KERNEL && d > 0)
          o->no_kernel++;
        else
          res = r == NO_KERNEL ? FAIL : r;
        if (r == NO_KERNEL && d > 0)
          break;
      }
    if (is_known_failure(s.name)) {
      printf("    known failure %s: %s\n", s.name, res == FAIL ? why : "now passes");
      if (res == FAIL) {
        o->known++;
        continue;
      }
      snprintf(why, sizeof why, "passes: remove it from known_failures");
      res = FAIL;
    }
    if (res == FAIL) {
      o->failed += !is_error;
      if (failures++ < 40)
        printf("    FAIL %s (%s): %s\n", s.name, tg_dtype_name(s.dtype), why);
    } else {
      o->passed += !is_error;
      o->gradchecked += s.gradchecked;
      o->rejected += is_error;
    }
  }
  for (int i = 0; i < n_ops; i++)
    print_row(&table[i]);
  free(table);
  ref_close(f);
  if (failures)
    fail_msg("%d OpInfo samples of %s failed", failures, family);
}

int main(void) {
  static const char *families[] = {"elementwise", "reduce", "matmul", "loss", "norm",
                                   "conv",        "pool",   "shape",  "extra"};
  struct CMUnitTest tests[sizeof families / sizeof *families];
  for (size_t i = 0; i < sizeof families / sizeof *families; i++)
    tests[i] =
        (struct CMUnitTest){families[i], replay_family, NULL, NULL, (void *)families[i]};
  return cmocka_run_group_tests_name("opinfo", tests, test_setup, NULL);
}
