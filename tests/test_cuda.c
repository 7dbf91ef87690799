/* CUDA: every op against the CPU on fresh random inputs (one table row per case),
 * float64 gradchecks through the device, GroupNorm's hard cases on the device, the
 * runtime (creation, copies, conversion, printing, memory figures) and its errors.
 * Every test skips without a CUDA device; the host SIMT build (-Dcuda=host) runs them
 * all on the CPU. The suite runs with TG_CUDA_FILL_NAN=1: an element a kernel does not
 * write is NaN and fails its comparison. */
#include "common.h"
#include "runtime/cuda.h" /* tg__cuda_waits */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA0 tg_cuda(0)

static void require_gpu(void) {
  if (!tg_cuda_is_available())
    skip();
}

/* ------------------------------------------------------------ the table -- */

typedef struct {
  int nd1; /* ndim + 1; 0: no such input */
  int64_t d[TG_MAX_DIMS];
} shape_spec;
#define SH(...)                                                                          \
  {                                                                                      \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)) + 1, { __VA_ARGS__ }       \
  }
#define SCALAR                                                                           \
  {                                                                                      \
    1, { 0 }                                                                             \
  }

enum { MAX_IN = 4 };

/* Input kinds, one letter per input: 'f' normal, 'p' positive (0.5..2), 'u' in
 * (0.05, 0.95) — these require grad — 'k' normal and 'w' positive (0.5..2) without
 * grad, 'i' int64 class indices in [0, CLASSES) (every row with one has at least that
 * many classes). */
enum { CLASSES = 3 };
typedef struct {
  const char *op;
  tg_gradcheck_fn fn;
  const void *ctx;
  shape_spec in[MAX_IN];
  tg_dtype dtype;
  double tol; /* bound on the normalised squared error */
  const char *kinds;
} cuda_case;

/* ---- fns (tg_gradcheck_fn's signature) ---- */

#define BINARY_FN(name, call)                                                            \
  static tg_tensor *name(tg_tensor *const *in, int n, void *ctx) {                       \
    (void)n;                                                                             \
    (void)ctx;                                                                           \
    return call(in[0], in[1]);                                                           \
  }
BINARY_FN(add_fn, tg_add)
BINARY_FN(sub_fn, tg_sub)
BINARY_FN(mul_fn, tg_mul)
BINARY_FN(div_fn, tg_div)
BINARY_FN(matmul_fn, tg_matmul)

#define UNARY_FN(name, expr)                                                             \
  static tg_tensor *name(tg_tensor *const *in, int n, void *ctx) {                       \
    (void)n;                                                                             \
    (void)ctx;                                                                           \
    const tg_tensor *x = in[0];                                                          \
    return expr;                                                                         \
  }
UNARY_FN(neg_fn, tg_neg(x))
UNARY_FN(exp_fn, tg_exp(x))
UNARY_FN(log_fn, tg_log(x))
UNARY_FN(sqrt_fn, tg_sqrt(x))
UNARY_FN(abs_fn, tg_abs(x))
UNARY_FN(relu_fn, tg_relu(x))
UNARY_FN(leaky_fn, tg_leaky_relu(x, 0.1))
UNARY_FN(sigmoid_fn, tg_sigmoid(x))
UNARY_FN(tanh_fn, tg_tanh(x))
UNARY_FN(gelu_fn, tg_gelu(x))
UNARY_FN(adds_fn, tg_add_scalar(x, 1.5))
UNARY_FN(subs_fn, tg_sub_scalar(x, 0.25))
UNARY_FN(muls_fn, tg_mul_scalar(x, -3))
UNARY_FN(divs_fn, tg_div_scalar(x, 4))
UNARY_FN(pow_fn, tg_pow(x, 2.5))
UNARY_FN(sum_fn, tg_sum(x))
UNARY_FN(mean_fn, tg_mean(x))
UNARY_FN(sum_d1_fn, tg_sum_dims(x, (int[]){1}, 1, false))
UNARY_FN(sum_d02_fn, tg_sum_dims(x, (int[]){0, 2}, 2, true))
UNARY_FN(mean_dl_fn, tg_mean_dims(x, (int[]){-1}, 1, true))
UNARY_FN(max_fn, tg_max_dim(x, 1, false, NULL))
UNARY_FN(permute_fn, tg_permute(x, (int[]){2, 0, 1}, 3))
UNARY_FN(transpose_fn, tg_transpose(x, 0, 1))
UNARY_FN(narrow_fn, tg_narrow(x, 1, 1, 2))
UNARY_FN(softmax_fn, tg_softmax(x, 1))
UNARY_FN(logsoftmax_fn, tg_log_softmax(x, -1))
UNARY_FN(to_f64_fn, tg_to_dtype(x, TG_F64))
UNARY_FN(clone_fn, tg_clone(x))

static tg_tensor *cat_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)ctx;
  return tg_cat(in, n, 1);
}

static tg_tensor *linear_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)ctx;
  return tg_linear(in[0], in[1], n > 2 ? in[2] : NULL);
}

static tg_tensor *ce_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  return tg_cross_entropy(in[0], in[1], *(const tg_reduction *)ctx, 1);
}

static tg_tensor *nll_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  return tg_nll_loss(tg_log_softmax(in[0], 1), in[1], *(const tg_reduction *)ctx, -100);
}

static tg_tensor *mse_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  return tg_mse_loss(in[0], in[1], *(const tg_reduction *)ctx);
}

static tg_tensor *bce_fn(tg_tensor *const *in, int n, void *ctx) {
  (void)n;
  return tg_binary_cross_entropy_with_logits(in[0], in[1], *(const tg_reduction *)ctx);
}

/* ---- #18's further arguments ---- */

static tg_tensor *div_trunc(const tg_tensor *a, const tg_tensor *b) {
  return tg_div_ex(a, b, TG_ROUNDING_TRUNC);
}
static tg_tensor *div_floor(const tg_tensor *a, const tg_tensor *b) {
  return tg_div_ex(a, b, TG_ROUNDING_FLOOR);
}
static tg_tensor *add_alpha(const tg_tensor *a, const tg_tensor *b) {
  return tg_add_alpha(a, b, -0.5);
}
static tg_tensor *sub_alpha(const tg_tensor *a, const tg_tensor *b) {
  return tg_sub_alpha(a, b, 2.5);
}
BINARY_FN(div_trunc_fn, div_trunc)
BINARY_FN(div_floor_fn, div_floor)
BINARY_FN(pow_tensor_fn, tg_pow_tensor)
BINARY_FN(add_alpha_fn, add_alpha)
BINARY_FN(sub_alpha_fn, sub_alpha)
UNARY_FN(rsub_fn, tg_rsub_scalar(x, 1.5))
UNARY_FN(rdiv_fn, tg_rdiv_scalar(x, -2))
UNARY_FN(rpow_fn, tg_rpow_scalar(x, 1.7))
UNARY_FN(gelu_tanh_fn, tg_gelu_ex(x, TG_GELU_TANH))
UNARY_FN(min_dim_fn, tg_min_dim(x, 1, true, NULL))
UNARY_FN(argmin_fn, tg_argmin(x, -1, false))
UNARY_FN(max_all_fn, tg_max_all(x))
UNARY_FN(min_all_fn, tg_min_all(x))
UNARY_FN(argmax_all_fn, tg_argmax_all(x))
UNARY_FN(argmin_all_fn, tg_argmin_all(x))
UNARY_FN(amax_fn, tg_amax(x, (int[]){0, 2}, 2, true))
UNARY_FN(amin_fn, tg_amin(x, (int[]){-1, 1}, 2, false))
UNARY_FN(softmax_f64_fn, tg_softmax_ex(x, 1, TG_F64))
UNARY_FN(logsoftmax_f32_fn, tg_log_softmax_ex(x, 0, TG_F32))

/* Class losses with options: weight in[2] where the row has it. */
typedef struct {
  tg_reduction reduction;
  int64_t ignore_index;
  double label_smoothing;
} class_ex_ctx;

static tg_tensor *nll_x_fn(tg_tensor *const *in, int n, void *vctx) {
  const class_ex_ctx *c = vctx;
  const tg_nll_loss_options o = {c->reduction, c->ignore_index, n > 2 ? in[2] : NULL};
  return tg_nll_loss_ex(tg_log_softmax(in[0], 1), in[1], &o);
}

static tg_tensor *ce_x_fn(tg_tensor *const *in, int n, void *vctx) {
  const class_ex_ctx *c = vctx;
  const tg_cross_entropy_options o = {c->reduction, c->ignore_index, n > 2 ? in[2] : NULL,
                                      c->label_smoothing};
  return tg_cross_entropy_ex(in[0], in[1], &o);
}

/* BCE with logits: in[2] the weight, in[3] pos_weight; pos_only: in[2] is pos_weight. */
typedef struct {
  tg_reduction reduction;
  bool pos_only;
} bce_ex_ctx;

static tg_tensor *bce_x_fn(tg_tensor *const *in, int n, void *vctx) {
  const bce_ex_ctx *c = vctx;
  const tg_tensor *w = n > 2 && !c->pos_only ? in[2] : NULL;
  const tg_tensor *pw = c->pos_only ? in[2] : n > 3 ? in[3] : NULL;
  const tg_bce_with_logits_options o = {c->reduction, w, pw};
  return tg_binary_cross_entropy_with_logits_ex(in[0], in[1], &o);
}

static const class_ex_ctx cx_mean = {TG_REDUCTION_MEAN, 1, 0},
                          cx_sum = {TG_REDUCTION_SUM, -100, 0},
                          cx_none = {TG_REDUCTION_NONE, 2, 0},
                          cx_smooth = {TG_REDUCTION_MEAN, 1, 0.2},
                          cx_smooth_none = {TG_REDUCTION_NONE, 0, 0.1};
/* label smoothing with a mean or a sum; weights alone, reduction none */
static const class_ex_ctx cx_lsm = {TG_REDUCTION_MEAN, 0, 0.25},
                          cx_lss = {TG_REDUCTION_SUM, 2, 0.3},
                          cx_wn = {TG_REDUCTION_NONE, 0, 0};
static const bce_ex_ctx bce_m = {TG_REDUCTION_MEAN, false},
                        bce_n = {TG_REDUCTION_NONE, false},
                        bce_ps = {TG_REDUCTION_SUM, true};

typedef struct {
  int64_t groups;
  bool weight, bias, relu; /* relu: tg_group_norm_relu */
} gn_ctx;

static tg_tensor *gn_fn(tg_tensor *const *in, int n, void *vctx) {
  const gn_ctx *c = vctx;
  (void)n;
  const tg_tensor *w = c->weight ? in[1] : NULL;
  const tg_tensor *b = c->bias ? in[c->weight ? 2 : 1] : NULL;
  return (c->relu ? tg_group_norm_relu : tg_group_norm)(in[0], c->groups, w, b, 1e-5);
}

static const gn_ctx g3 = {3, true, true, false}, g2 = {2, true, true, false},
                    g1 = {1, true, true, false}, g4_noaffine = {4, false, false, false},
                    g2_bias = {2, false, true, false}, g32 = {32, true, true, false},
                    g8 = {8, true, true, false};
static const gn_ctx r3 = {3, true, true, true}, r1 = {1, true, true, true},
                    r4 = {4, true, true, true}, r8_noaffine = {8, false, false, true},
                    r2_noaffine = {2, false, false, true},
                    r2_bias = {2, false, true, true}, r32 = {32, true, true, true},
                    r8 = {8, true, true, true};
typedef struct {
  int n_norm;
  int64_t ns[3];
  bool weight, bias;
  double eps;
} ln_ctx;

static tg_tensor *ln_fn(tg_tensor *const *in, int n, void *vctx) {
  const ln_ctx *c = vctx;
  (void)n;
  const tg_tensor *w = c->weight ? in[1] : NULL;
  const tg_tensor *b = c->bias ? in[c->weight ? 2 : 1] : NULL;
  return tg_layer_norm(in[0], c->ns, c->n_norm, w, b, c->eps);
}

/* affine, none, weight or bias alone; two trailing dims; eps 0 and negative (var +
 * eps stays positive for these inputs) */
static const ln_ctx ln7 = {1, {7}, true, true, 1e-5},
                    ln5_none = {1, {5}, false, false, 1e-5},
                    ln6_w = {1, {6}, true, false, 1e-5},
                    ln6_b = {1, {6}, false, true, 1e-5},
                    ln3x5 = {2, {3, 5}, true, true, 0},
                    ln9_neg = {1, {9}, true, true, -1e-3},
                    ln1000 = {1, {1000}, true, true, 1e-5},
                    ln4 = {1, {4}, true, true, 1e-5}, ln0 = {1, {0}, true, true, 1e-5};

typedef struct {
  bool weight, bias, training, running; /* running: with running stats */
  double eps;
} bn_ctx;

/* Running stats made on x's device: mean c / 2 - 1, var 0.5 + c / 4 per channel c. */
static tg_tensor *bn_fn(tg_tensor *const *in, int n, void *vctx) {
  const bn_ctx *c = vctx;
  (void)n;
  const tg_tensor *w = c->weight ? in[1] : NULL;
  const tg_tensor *b = c->bias ? in[c->weight ? 2 : 1] : NULL;
  tg_tensor *rm = NULL, *rv = NULL;
  const int64_t C = tg_size(in[0], 1);
  if (c->running && C > 0) {
    const tg_device dev = tg_device_of(in[0]);
    rm = tg_arange(-1, C / 2.0 - 1 - 0.25, 0.5, tg_dtype_of(in[0]), dev);
    rv = tg_arange(0.5, 0.5 + C / 4.0 - 0.125, 0.25, tg_dtype_of(in[0]), dev);
  }
  return tg_batch_norm(in[0], w, b, rm, rv, c->training, 0.1, c->eps);
}

/* The running stats a training step updates on the device (several blocks per channel
 * for the large shape), against the CPU's, twice in a row; then evaluation with them. */
static void test_batch_norm_running_stats(void **state) {
  (void)state;
  require_gpu();
  const int64_t shapes[2][4] = {{4, 3, 5, 1}, {2, 3, 101, 53}};
  for (int dt = 0; dt < 2; dt++)
    for (int k = 0; k < 2; k++) {
      const tg_dtype dtype = dt ? TG_F64 : TG_F32;
      tg_scope_begin();
      tg_tensor *xh = tg_randn(shapes[k], 4, dtype, TG_CPU),
                *xd = tg_tensor_to(xh, CUDA0);
      tg_tensor *rm[2], *rv[2], *y[2];
      for (int d = 0; d < 2; d++) {
        const tg_device dev = d ? CUDA0 : TG_CPU;
        rm[d] = tg_arange(-1, 0.25, 0.5, dtype, dev);
        rv[d] = tg_arange(0.5, 1.125, 0.25, dtype, dev);
        for (int step = 0; step < 2; step++)
          assert_non_null(
              tg_batch_norm(d ? xd : xh, NULL, NULL, rm[d], rv[d], true, 0.3, 1e-5));
        y[d] = tg_batch_norm(d ? xd : xh, NULL, NULL, rm[d], rv[d], false, 0.3, 1e-5);
        assert_non_null(y[d]);
      }
      const double tol = dt ? 1e-12 : 1e-5;
      assert_close(tg_tensor_to(rm[1], TG_CPU), rm[0], tol, tol);
      assert_close(tg_tensor_to(rv[1], TG_CPU), rv[0], tol, tol);
      assert_close(tg_tensor_to(y[1], TG_CPU), y[0], tol, tol);
      tg_scope_end();
    }
}

static const bn_ctx bn_train = {true, true, true, true, 1e-5},
                    bn_train_none = {false, false, true, false, 1e-5},
                    bn_train_w = {true, false, true, true, -1e-3},
                    bn_train_b = {false, true, true, false, 0},
                    bn_eval = {true, true, false, true, 1e-5},
                    bn_eval_none = {false, false, false, true, 1e-5};

static const tg_reduction r_mean = TG_REDUCTION_MEAN, r_sum = TG_REDUCTION_SUM,
                          r_none = TG_REDUCTION_NONE;

/* Pools (pool.cu): kind 'm' tg_max_pool2d, 'a' tg_avg_pool2d, 'M' tg_max_pool2d_ex
 * (with indices: y + indices, so both are compared), 'A' tg_avg_pool2d_ex, 'd'
 * tg_adaptive_avg_pool2d to out, 'u' tg_max_unpool2d of max_pool2d_ex's output and
 * indices back to x's size (overlapping windows: duplicate indices). */
typedef struct {
  char kind;
  bool indices;
  int64_t k[2], s[2], p[2], d[2], out[2];
  bool ceil_mode, include_pad;
  int64_t divisor;
} pool_ctx;

static tg_tensor *pool_fn(tg_tensor *const *in, int n, void *vctx) {
  const pool_ctx *c = vctx;
  (void)n;
  switch (c->kind) {
  case 'm':
    return tg_max_pool2d(in[0], c->k, c->s, c->p);
  case 'a':
    return tg_avg_pool2d(in[0], c->k, c->s, c->p);
  case 'd':
    return tg_adaptive_avg_pool2d(in[0], c->out);
  case 'u': {
    const tg_max_pool2d_options o = {
        {c->k[0], c->k[1]}, {c->s[0], c->s[1]}, {c->p[0], c->p[1]}, {1, 1}, false};
    tg_tensor *idx = NULL, *y = tg_max_pool2d_ex(in[0], &o, &idx);
    const int64_t *sh = tg_shape(in[0]), nd = tg_ndim(in[0]);
    tg_tensor *r = y ? tg_max_unpool2d(y, idx, c->k, c->s, c->p, sh + nd - 2) : NULL;
    tg_tensor_free(y);
    tg_tensor_free(idx);
    return r;
  }
  case 'A': {
    const tg_avg_pool2d_options o = {{c->k[0], c->k[1]}, {c->s[0], c->s[1]},
                                     {c->p[0], c->p[1]}, c->ceil_mode,
                                     c->include_pad,     c->divisor};
    return tg_avg_pool2d_ex(in[0], &o);
  }
  default: {
    const tg_max_pool2d_options o = {{c->k[0], c->k[1]},
                                     {c->s[0], c->s[1]},
                                     {c->p[0], c->p[1]},
                                     {c->d[0] ? c->d[0] : 1, c->d[1] ? c->d[1] : 1},
                                     c->ceil_mode};
    tg_tensor *idx = NULL;
    tg_tensor *y = tg_max_pool2d_ex(in[0], &o, c->indices ? &idx : NULL);
    if (!idx)
      return y;
    tg_tensor *fi = tg_to_dtype(idx, tg_dtype_of(y)), *r = tg_add(y, fi);
    tg_tensor_free(idx);
    tg_tensor_free(fi);
    tg_tensor_free(y);
    return r;
  }
  }
}

/* overlapping windows (stride < kernel), padding; the CPU's 2x2 fast path */
#define POOL(kd, ...)                                                                    \
  { .kind = kd, __VA_ARGS__ }
static const pool_ctx pm_3s2p1 = POOL('m', .k = {3, 3}, .s = {2, 2}, .p = {1, 1}),
                      pm_2x2 = POOL('m', .k = {2, 2}, .s = {2, 2}),
                      pm_32 = POOL('m', .k = {3, 2}, .s = {1, 2}, .p = {1, 0}),
                      pa_3s2p1 = POOL('a', .k = {3, 3}, .s = {2, 2}, .p = {1, 1}),
                      pa_23 = POOL('a', .k = {2, 3}, .s = {1, 2}, .p = {1, 1});
/* dilation, ceil_mode, indices */
static const pool_ctx pM_dil = POOL('M', .k = {3, 2}, .s = {2, 1}, .p = {1, 1},
                                    .d = {2, 3}, .ceil_mode = true),
                      pM_ceil = POOL('M', .k = {3, 3}, .s = {2, 2}, .p = {0, 1},
                                     .ceil_mode = true),
                      pM_idx = POOL('M', .indices = true, .k = {2, 3}, .s = {1, 2},
                                    .p = {1, 1}, .d = {2, 1}, .ceil_mode = true),
                      pM_idx_plain = POOL('M', .indices = true, .k = {2, 2}, .s = {2, 2});
/* ceil_mode, count_include_pad = false, divisor_override */
static const pool_ctx pA_ceil = POOL('A', .k = {3, 3}, .s = {2, 2}, .p = {1, 1},
                                     .ceil_mode = true, .include_pad = true),
                      pA_nopad = POOL('A', .k = {3, 2}, .s = {2, 1}, .p = {1, 1},
                                      .ceil_mode = true),
                      pA_div = POOL('A', .k = {2, 3}, .s = {2, 2}, .p = {1, 1},
                                    .ceil_mode = true, .include_pad = true, .divisor = 5);
/* unpool: overlapping windows (duplicate indices: its gradient, PyTorch's, counts
 * each, so these rows are too large for the gradcheck), then disjoint ones */
static const pool_ctx pu_3s1 = POOL('u', .k = {3, 3}, .s = {1, 1}, .p = {1, 1}),
                      pu_23 = POOL('u', .k = {2, 3}, .s = {2, 3}, .p = {1, 1});
/* adaptive: shrinking, growing (overlapping windows), to 1x1 */
static const pool_ctx pd_34 = POOL('d', .out = {3, 4}), pd_47 = POOL('d', .out = {4, 7}),
                      pd_11 = POOL('d', .out = {1, 1});
#undef POOL

#define F32 TG_F32
#define F64 TG_F64
static const cuda_case cases[] = {
    /* op            fn           ctx    input shapes                    dtype tol */
    {"group_norm", gn_fn, &g3, {SH(2, 6, 7, 13), SH(6), SH(6)}, F32, 1e-10, "fff"},
    {"group_norm", gn_fn, &g3, {SH(2, 6, 7, 13), SH(6), SH(6)}, F64, 1e-24, "fff"},
    {"group_norm", gn_fn, &g2, {SH(3, 4, 5), SH(4), SH(4)}, F64, 1e-24, "fff"},
    {"group_norm", gn_fn, &g2, {SH(2, 4, 3), SH(4), SH(4)}, F64, 1e-24, "fff"},
    {"group_norm", gn_fn, &g1, {SH(2, 3), SH(3), SH(3)}, F32, 1e-10, "fff"},
    {"group_norm", gn_fn, &g4_noaffine, {SH(2, 8, 3, 3)}, F32, 1e-10, "f"},
    {"group_norm", gn_fn, &g2_bias, {SH(2, 4, 9), SH(4)}, F64, 1e-24, "ff"},
    {"group_norm", gn_fn, &g3, {SH(0, 6, 4), SH(6), SH(6)}, F32, 1e-10, "fff"},
    {"group_norm", gn_fn, &g3, {SH(2, 6, 1), SH(6), SH(6)}, F64, 1e-24, "fff"},
    /* fused path (groups >= multiprocessors): 8*32 groups */
    {"group_norm", gn_fn, &g32, {SH(8, 64, 4, 4), SH(64), SH(64)}, F32, 1e-10, "fff"},
    {"group_norm", gn_fn, &g32, {SH(8, 64, 3, 3), SH(64), SH(64)}, F64, 1e-24, "fff"},
    /* split path (few large groups) */
    {"group_norm", gn_fn, &g8, {SH(1, 16, 40, 40), SH(16), SH(16)}, F32, 1e-10, "fff"},
    {"group_norm", gn_fn, &g8, {SH(1, 16, 37, 41), SH(16), SH(16)}, F64, 1e-24, "fff"},
    /* fused ReLU, labelled with shape and groups (odd HW: scalar loads) */
    {"gnr 2x6x7x13/3", gn_fn, &r3, {SH(2, 6, 7, 13), SH(6), SH(6)}, F32, 1e-10, "fff"},
    {"gnr 2x6x7x13/3", gn_fn, &r3, {SH(2, 6, 7, 13), SH(6), SH(6)}, F64, 1e-24, "fff"},
    {"gnr 2x3x4/1", gn_fn, &r1, {SH(2, 3, 4), SH(3), SH(3)}, F64, 1e-24, "fff"},
    {"gnr 2x3x5/1", gn_fn, &r1, {SH(2, 3, 5), SH(3), SH(3)}, F32, 1e-10, "fff"},
    {"gnr 2x4x5/4", gn_fn, &r4, {SH(2, 4, 5), SH(4), SH(4)}, F64, 1e-24, "fff"},
    {"gnr 2x4x8/4", gn_fn, &r4, {SH(2, 4, 8), SH(4), SH(4)}, F32, 1e-10, "fff"},
    {"gnr 2x8x3x3/8", gn_fn, &r8_noaffine, {SH(2, 8, 3, 3)}, F32, 1e-10, "f"},
    {"gnr 2x4x3/2", gn_fn, &r2_noaffine, {SH(2, 4, 3)}, F64, 1e-24, "f"},
    {"gnr 2x4x9/2", gn_fn, &r2_bias, {SH(2, 4, 9), SH(4)}, F64, 1e-24, "ff"},
    {"gnr 0x6x4/3", gn_fn, &r3, {SH(0, 6, 4), SH(6), SH(6)}, F32, 1e-10, "fff"},
    {"gnr 8x64x4x4/32",
     gn_fn,
     &r32,
     {SH(8, 64, 4, 4), SH(64), SH(64)},
     F32,
     1e-10,
     "fff"},
    {"gnr 8x64x3x3/32",
     gn_fn,
     &r32,
     {SH(8, 64, 3, 3), SH(64), SH(64)},
     F64,
     1e-24,
     "fff"},
    {"gnr 1x16x40x40/8",
     gn_fn,
     &r8,
     {SH(1, 16, 40, 40), SH(16), SH(16)},
     F32,
     1e-10,
     "fff"},
    {"gnr 1x16x37x41/8",
     gn_fn,
     &r8,
     {SH(1, 16, 37, 41), SH(16), SH(16)},
     F64,
     1e-24,
     "fff"},

    /* layer_norm: rows of odd and large D, many rows (parameter-gradient chunks) */
    {"layer_norm", ln_fn, &ln7, {SH(3, 7), SH(7), SH(7)}, F64, 1e-24, "fff"},
    {"layer_norm", ln_fn, &ln7, {SH(5, 2, 7), SH(7), SH(7)}, F32, 1e-10, "fff"},
    {"layer_norm", ln_fn, &ln5_none, {SH(4, 5)}, F64, 1e-24, "f"},
    {"layer_norm", ln_fn, &ln5_none, {SH(3, 3, 5)}, F32, 1e-10, "f"},
    {"layer_norm", ln_fn, &ln6_w, {SH(4, 6), SH(6)}, F64, 1e-24, "ff"},
    {"layer_norm", ln_fn, &ln6_b, {SH(4, 6), SH(6)}, F64, 1e-24, "ff"},
    {"layer_norm", ln_fn, &ln3x5, {SH(2, 3, 5), SH(3, 5), SH(3, 5)}, F64, 1e-24, "fff"},
    {"layer_norm", ln_fn, &ln9_neg, {SH(2, 9), SH(9), SH(9)}, F64, 1e-24, "fff"},
    {"layer_norm", ln_fn, &ln1000, {SH(3, 1000), SH(1000), SH(1000)}, F32, 1e-10, "fff"},
    {"layer_norm", ln_fn, &ln4, {SH(3000, 4), SH(4), SH(4)}, F32, 1e-10, "fff"},
    {"layer_norm", ln_fn, &ln4, {SH(1037, 4), SH(4), SH(4)}, F64, 1e-24, "fff"},
    {"layer_norm", ln_fn, &ln4, {SH(0, 4), SH(4), SH(4)}, F32, 1e-10, "fff"},
    {"layer_norm", ln_fn, &ln0, {SH(3, 0), SH(0), SH(0)}, F32, 1e-10, "fff"},

    /* batch_norm: training (several blocks per channel for the large ones), evaluation,
     * affine or not, empty batch / channels / trailing dims */
    {"batch_norm", bn_fn, &bn_train, {SH(2, 3, 5), SH(3), SH(3)}, F64, 1e-24, "fff"},
    {"batch_norm", bn_fn, &bn_train, {SH(5, 3, 7), SH(3), SH(3)}, F32, 1e-10, "fff"},
    {"batch_norm", bn_fn, &bn_train, {SH(4, 6), SH(6), SH(6)}, F64, 1e-24, "fff"},
    {"batch_norm", bn_fn, &bn_train_none, {SH(3, 2, 3, 5)}, F64, 1e-24, "f"},
    {"batch_norm", bn_fn, &bn_train_w, {SH(3, 4, 3), SH(4)}, F64, 1e-24, "ff"},
    {"batch_norm", bn_fn, &bn_train_b, {SH(3, 4, 3), SH(4)}, F64, 1e-24, "ff"},
    {"batch_norm",
     bn_fn,
     &bn_train,
     {SH(2, 3, 101, 53), SH(3), SH(3)},
     F32,
     1e-10,
     "fff"},
    {"batch_norm", bn_fn, &bn_train, {SH(3, 2, 61, 59), SH(2), SH(2)}, F64, 1e-24, "fff"},
    {"batch_norm",
     bn_fn,
     &bn_train,
     {SH(8, 64, 3, 3), SH(64), SH(64)},
     F32,
     1e-10,
     "fff"},
    {"batch_norm", bn_fn, &bn_eval, {SH(3, 4, 2), SH(4), SH(4)}, F64, 1e-24, "fff"},
    {"batch_norm", bn_fn, &bn_eval, {SH(5, 3, 7, 3), SH(3), SH(3)}, F32, 1e-10, "fff"},
    {"batch_norm", bn_fn, &bn_eval_none, {SH(4, 5)}, F64, 1e-24, "f"},
    {"batch_norm", bn_fn, &bn_train, {SH(0, 3, 4), SH(3), SH(3)}, F32, 1e-10, "fff"},
    {"batch_norm", bn_fn, &bn_train, {SH(3, 4, 0), SH(4), SH(4)}, F32, 1e-10, "fff"},
    {"batch_norm", bn_fn, &bn_train, {SH(2, 0, 4), SH(0), SH(0)}, F32, 1e-10, "fff"},
    {"batch_norm", bn_fn, &bn_eval, {SH(0, 3), SH(3), SH(3)}, F64, 1e-24, "fff"},

    {"add", add_fn, NULL, {SH(4, 1, 5), SH(3, 5)}, F64, 1e-24, "ff"},
    {"add", add_fn, NULL, {SH(3, 5), SH(4, 1, 5)}, F32, 1e-12, "ff"},
    {"add", add_fn, NULL, {SH(7), SCALAR}, F32, 1e-12, "ff"},
    {"sub", sub_fn, NULL, {SH(2, 3, 1), SH(1, 3, 4)}, F64, 1e-24, "ff"},
    {"mul", mul_fn, NULL, {SH(5, 3), SH(5, 3)}, F32, 1e-12, "ff"},
    {"mul", mul_fn, NULL, {SH(0, 3), SH(1, 3)}, F32, 1e-12, "ff"},
    {"div", div_fn, NULL, {SH(6, 1), SH(1, 7)}, F64, 1e-24, "fp"},
    {"neg", neg_fn, NULL, {SH(3, 7)}, F32, 1e-12, "f"},
    {"exp", exp_fn, NULL, {SH(33)}, F32, 1e-12, "f"},
    {"log", log_fn, NULL, {SH(5, 5)}, F64, 1e-24, "p"},
    {"sqrt", sqrt_fn, NULL, {SH(2, 9)}, F32, 1e-12, "p"},
    {"abs", abs_fn, NULL, {SH(17)}, F64, 1e-24, "f"},
    {"relu", relu_fn, NULL, {SH(4, 5)}, F32, 1e-12, "f"},
    {"leaky_relu", leaky_fn, NULL, {SH(4, 5)}, F64, 1e-24, "f"},
    {"sigmoid", sigmoid_fn, NULL, {SH(31)}, F32, 1e-12, "f"},
    {"tanh", tanh_fn, NULL, {SH(3, 3)}, F64, 1e-24, "f"},
    {"gelu", gelu_fn, NULL, {SH(6, 7)}, F32, 1e-12, "f"},
    {"add_scalar", adds_fn, NULL, {SH(5)}, F32, 1e-12, "f"},
    {"sub_scalar", subs_fn, NULL, {SH(5)}, F64, 1e-24, "f"},
    {"mul_scalar", muls_fn, NULL, {SH(2, 2)}, F32, 1e-12, "f"},
    {"div_scalar", divs_fn, NULL, {SH(2, 2)}, F64, 1e-24, "f"},
    {"pow", pow_fn, NULL, {SH(9)}, F64, 1e-24, "p"},
    {"sum", sum_fn, NULL, {SH(3, 4, 5)}, F32, 1e-12, "f"},
    {"sum", sum_fn, NULL, {SH(0, 4)}, F64, 1e-24, "f"},
    {"mean", mean_fn, NULL, {SH(7, 3)}, F64, 1e-24, "f"},
    {"sum_dims", sum_d1_fn, NULL, {SH(3, 4, 5)}, F32, 1e-12, "f"},
    {"sum_dims", sum_d02_fn, NULL, {SH(3, 4, 5)}, F64, 1e-24, "f"},
    {"mean_dims", mean_dl_fn, NULL, {SH(2, 3, 6)}, F32, 1e-12, "f"},
    {"max_dim", max_fn, NULL, {SH(3, 5, 2)}, F64, 1e-24, "f"},
    {"permute", permute_fn, NULL, {SH(2, 3, 4)}, F32, 1e-12, "f"},
    {"transpose", transpose_fn, NULL, {SH(3, 5)}, F64, 1e-24, "f"},
    {"narrow", narrow_fn, NULL, {SH(2, 5, 3)}, F32, 1e-12, "f"},
    {"cat", cat_fn, NULL, {SH(2, 3, 2), SH(2, 1, 2), SH(2, 4, 2)}, F64, 1e-24, "fff"},
    {"to_dtype", to_f64_fn, NULL, {SH(4, 3)}, F32, 1e-12, "f"},
    {"clone", clone_fn, NULL, {SH(4, 3)}, F32, 1e-12, "f"},
    {"matmul", matmul_fn, NULL, {SH(4, 3), SH(3, 5)}, F32, 1e-12, "ff"},
    {"matmul", matmul_fn, NULL, {SH(2, 4, 3), SH(3, 2)}, F64, 1e-24, "ff"},
    {"matmul", matmul_fn, NULL, {SH(2, 1, 4, 3), SH(3, 3, 2)}, F64, 1e-24, "ff"},
    {"matmul", matmul_fn, NULL, {SH(3), SH(3)}, F32, 1e-12, "ff"},
    {"linear", linear_fn, NULL, {SH(5, 3), SH(4, 3), SH(4)}, F32, 1e-12, "fff"},
    {"linear", linear_fn, NULL, {SH(2, 2, 3), SH(4, 3)}, F64, 1e-24, "ff"},
    {"softmax", softmax_fn, NULL, {SH(3, 5, 2)}, F32, 1e-12, "f"},
    {"log_softmax", logsoftmax_fn, NULL, {SH(4, 7)}, F64, 1e-24, "f"},
    {"cross_entropy", ce_fn, &r_mean, {SH(5, 4), SH(5)}, F32, 1e-12, "fi"},
    {"cross_entropy", ce_fn, &r_none, {SH(2, 3, 2, 2), SH(2, 2, 2)}, F64, 1e-24, "fi"},
    {"nll_loss", nll_fn, &r_sum, {SH(6, 3), SH(6)}, F64, 1e-24, "fi"},
    {"mse_loss", mse_fn, &r_mean, {SH(4, 3), SH(4, 3)}, F32, 1e-12, "fk"},
    {"bce_logits", bce_fn, &r_sum, {SH(7), SH(7)}, F64, 1e-24, "fu"},

    /* #18's arguments. Rounded quotients are piecewise constant, so their float64
     * rows are larger than the gradcheck's 80 elements: finite differences across a
     * jump would be meaningless. */
    {"div_trunc", div_trunc_fn, NULL, {SH(4, 1, 5), SH(3, 5)}, F32, 1e-12, "ff"},
    {"div_trunc", div_trunc_fn, NULL, {SH(9, 10), SH(10)}, F64, 1e-24, "ff"},
    {"div_floor", div_floor_fn, NULL, {SH(6, 1), SH(1, 7)}, F32, 1e-12, "ff"},
    {"div_floor", div_floor_fn, NULL, {SH(2, 9, 5), SH(9, 1)}, F64, 1e-24, "ff"},
    {"div_floor", div_floor_fn, NULL, {SH(7), SCALAR}, F32, 1e-12, "fk"},
    {"pow_tensor", pow_tensor_fn, NULL, {SH(3, 1, 4), SH(5, 1)}, F64, 1e-24, "pf"},
    {"pow_tensor", pow_tensor_fn, NULL, {SH(6, 5), SH(5)}, F32, 1e-12, "pf"},
    {"pow_tensor", pow_tensor_fn, NULL, {SCALAR, SH(2, 3)}, F64, 1e-24, "pf"},
    {"rpow_scalar", rpow_fn, NULL, {SH(4, 3)}, F64, 1e-24, "f"},
    {"rpow_scalar", rpow_fn, NULL, {SH(17)}, F32, 1e-12, "f"},
    {"rsub_scalar", rsub_fn, NULL, {SH(3, 4)}, F32, 1e-12, "f"},
    {"rdiv_scalar", rdiv_fn, NULL, {SH(3, 4)}, F64, 1e-24, "p"},
    {"add_alpha", add_alpha_fn, NULL, {SH(2, 3, 1), SH(1, 3, 4)}, F64, 1e-24, "ff"},
    {"sub_alpha", sub_alpha_fn, NULL, {SH(5), SH(4, 5)}, F32, 1e-12, "ff"},
    {"gelu_tanh", gelu_tanh_fn, NULL, {SH(6, 7)}, F32, 1e-12, "f"},
    {"gelu_tanh", gelu_tanh_fn, NULL, {SH(3, 5)}, F64, 1e-24, "f"},
    {"min_dim", min_dim_fn, NULL, {SH(3, 5, 2)}, F64, 1e-24, "f"},
    {"argmin", argmin_fn, NULL, {SH(4, 6)}, F32, 0, "f"},
    {"max_all", max_all_fn, NULL, {SH(3, 4, 2)}, F32, 1e-12, "f"},
    {"min_all", min_all_fn, NULL, {SH(5, 3)}, F64, 1e-24, "f"},
    {"argmax_all", argmax_all_fn, NULL, {SH(3, 4, 2)}, F32, 0, "f"},
    {"argmin_all", argmin_all_fn, NULL, {SH(7, 3)}, F32, 0, "f"},
    {"amax", amax_fn, NULL, {SH(3, 4, 5)}, F64, 1e-24, "f"},
    {"amin", amin_fn, NULL, {SH(2, 3, 4)}, F32, 1e-12, "f"},
    {"softmax_dtype", softmax_f64_fn, NULL, {SH(3, 5, 2)}, F32, 1e-12, "f"},
    /* float64 in, float32 out: too many elements for a (float32) gradcheck */
    {"log_softmax_dtype", logsoftmax_f32_fn, NULL, {SH(9, 10)}, F64, 1e-12, "f"},
    {"nll_ex", nll_x_fn, &cx_mean, {SH(6, 3), SH(6), SH(3)}, F64, 1e-24, "fiw"},
    {"nll_ex", nll_x_fn, &cx_none, {SH(2, 4, 6), SH(2, 6), SH(4)}, F32, 1e-12, "fiw"},
    {"ce_ex", ce_x_fn, &cx_mean, {SH(2, 3, 4, 5), SH(2, 4, 5), SH(3)}, F32, 1e-12, "fiw"},
    {"ce_ex", ce_x_fn, &cx_sum, {SH(5, 4), SH(5), SH(4)}, F64, 1e-24, "fiw"},
    /* examples/segmentation's loss: class-weighted sum over [N, C, H, W] */
    {"ce_ex", ce_x_fn, &cx_sum, {SH(2, 4, 8, 8), SH(2, 8, 8), SH(4)}, F32, 1e-12, "fiw"},
    {"ce_ex", ce_x_fn, &cx_smooth, {SH(4, 3, 2), SH(4, 2), SH(3)}, F64, 1e-24, "fiw"},
    {"ce_ex", ce_x_fn, &cx_smooth_none, {SH(6, 4), SH(6)}, F32, 1e-12, "fi"},
    {"ce_ex", ce_x_fn, &cx_sum, {SH(2, 3, 0), SH(2, 0), SH(3)}, F32, 1e-12, "fiw"},
    {"ce_ex", ce_x_fn, &cx_sum, {SH(0, 3), SH(0), SH(3)}, F64, 1e-24, "fiw"},
    /* loss.cu's fused kernels with weights and smoothing: every reduction, [N, C] and
     * [N, C, H, W] with a class ignored, an empty [N, C, 0] */
    {"ce_ex", ce_x_fn, &cx_mean, {SH(7, 3), SH(7), SH(3)}, F64, 1e-24, "fiw"},
    {"ce_ex", ce_x_fn, &cx_wn, {SH(2, 3, 3, 2), SH(2, 3, 2), SH(3)}, F64, 1e-24, "fiw"},
    {"ce_ex", ce_x_fn, &cx_lsm, {SH(2, 3, 4, 5), SH(2, 4, 5), SH(3)}, F32, 1e-12, "fiw"},
    {"ce_ex", ce_x_fn, &cx_lss, {SH(2, 3, 2, 3), SH(2, 2, 3), SH(3)}, F64, 1e-24, "fiw"},
    {"ce_ex", ce_x_fn, &cx_lsm, {SH(2, 3, 3, 2), SH(2, 3, 2), SH(3)}, F64, 1e-24, "fiw"},
    {"ce_ex", ce_x_fn, &cx_smooth_none, {SH(2, 3, 2, 2), SH(2, 2, 2)}, F64, 1e-24, "fi"},
    {"ce_ex", ce_x_fn, &cx_lss, {SH(9, 3), SH(9)}, F32, 1e-12, "fi"},
    {"ce_ex", ce_x_fn, &cx_smooth_none, {SH(5, 3), SH(5), SH(3)}, F32, 1e-12, "fiw"},
    {"ce_ex", ce_x_fn, &cx_lss, {SH(2, 3, 0), SH(2, 0), SH(3)}, F64, 1e-24, "fiw"},
    {"ce_ex", ce_x_fn, &cx_smooth_none, {SH(2, 3, 0), SH(2, 0)}, F32, 1e-12, "fi"},
    /* probability targets */
    {"ce_ex", ce_x_fn, &cx_smooth, {SH(3, 4, 2), SH(3, 4, 2), SH(4)}, F64, 1e-24, "fuw"},
    {"ce_ex", ce_x_fn, &cx_none, {SH(5, 3), SH(5, 3)}, F32, 1e-12, "fu"},
    {"bce_ex", bce_x_fn, &bce_m, {SH(4, 3), SH(4, 3), SH(3), SH(3)}, F64, 1e-24, "fuww"},
    {"bce_ex", bce_x_fn, &bce_n, {SH(2, 5), SH(2, 5), SH(2, 1)}, F32, 1e-12, "fup"},
    {"bce_ex", bce_x_fn, &bce_ps, {SH(3, 4), SH(3, 4), SH(4)}, F64, 1e-24, "fuw"},
    /* pools (pool.cu): float64 rows of at most 80 elements are gradchecked too */
    {"max_pool2d", pool_fn, &pm_3s2p1, {SH(2, 3, 7, 9)}, F32, 1e-12, "f"},
    {"max_pool2d", pool_fn, &pm_3s2p1, {SH(1, 2, 5, 6)}, F64, 1e-24, "f"},
    {"max_pool2d", pool_fn, &pm_2x2, {SH(2, 3, 6, 8)}, F32, 1e-12, "f"},
    {"max_pool2d", pool_fn, &pm_2x2, {SH(2, 2, 5, 7)}, F64, 1e-24, "f"},
    {"max_pool2d", pool_fn, &pm_32, {SH(3, 7, 7)}, F64, 1e-24, "f"},
    {"max_pool2d_ex", pool_fn, &pM_dil, {SH(2, 2, 9, 8)}, F32, 1e-12, "f"},
    {"max_pool2d_ex", pool_fn, &pM_dil, {SH(1, 1, 7, 8)}, F64, 1e-24, "f"},
    {"max_pool2d_ex", pool_fn, &pM_ceil, {SH(2, 3, 8, 7)}, F32, 1e-12, "f"},
    {"max_pool2d_ex", pool_fn, &pM_ceil, {SH(2, 5, 6)}, F64, 1e-24, "f"},
    {"max_pool2d_ex", pool_fn, &pM_ceil, {SH(0, 3, 5, 5)}, F32, 1e-12, "f"},
    {"max_pool_idx", pool_fn, &pM_idx, {SH(2, 2, 6, 7)}, F32, 1e-12, "f"},
    {"max_pool_idx", pool_fn, &pM_idx, {SH(1, 2, 5, 7)}, F64, 1e-24, "f"},
    {"max_pool_idx", pool_fn, &pM_idx_plain, {SH(2, 6, 5)}, F64, 1e-24, "f"},
    {"avg_pool2d", pool_fn, &pa_3s2p1, {SH(2, 3, 7, 9)}, F32, 1e-12, "f"},
    {"avg_pool2d", pool_fn, &pa_3s2p1, {SH(1, 2, 5, 6)}, F64, 1e-24, "f"},
    {"avg_pool2d", pool_fn, &pa_23, {SH(3, 5, 7)}, F64, 1e-24, "f"},
    {"avg_pool2d_ex", pool_fn, &pA_ceil, {SH(2, 3, 8, 7)}, F32, 1e-12, "f"},
    {"avg_pool2d_ex", pool_fn, &pA_ceil, {SH(1, 2, 6, 5)}, F64, 1e-24, "f"},
    {"avg_pool2d_ex", pool_fn, &pA_nopad, {SH(2, 2, 7, 5)}, F32, 1e-12, "f"},
    {"avg_pool2d_ex", pool_fn, &pA_nopad, {SH(2, 7, 5)}, F64, 1e-24, "f"},
    {"avg_pool2d_ex", pool_fn, &pA_div, {SH(1, 2, 5, 7)}, F64, 1e-24, "f"},
    {"adaptive_avg", pool_fn, &pd_34, {SH(2, 3, 7, 9)}, F32, 1e-12, "f"},
    {"adaptive_avg", pool_fn, &pd_34, {SH(1, 2, 5, 7)}, F64, 1e-24, "f"},
    {"adaptive_avg", pool_fn, &pd_47, {SH(1, 2, 3, 5)}, F64, 1e-24, "f"},
    {"adaptive_avg", pool_fn, &pd_11, {SH(2, 4, 5)}, F64, 1e-24, "f"},
    {"max_unpool2d", pool_fn, &pu_3s1, {SH(2, 3, 7, 6)}, F32, 1e-12, "f"},
    {"max_unpool2d", pool_fn, &pu_3s1, {SH(2, 3, 5, 6)}, F64, 1e-24, "f"},
    {"max_unpool2d", pool_fn, &pu_23, {SH(1, 2, 5, 6)}, F64, 1e-24, "f"},
    {"max_unpool2d", pool_fn, &pu_23, {SH(3, 4, 6)}, F64, 1e-24, "f"},
};

/* ---- running one row ---- */

static tg_tensor *make_input(const shape_spec *s, char kind, tg_dtype dt) {
  const int nd = s->nd1 - 1;
  tg_tensor *t;
  if (kind == 'i') {
    t = tg_empty(s->d, nd, TG_I64, TG_CPU);
    int64_t *p = tg_data(t);
    for (int64_t i = 0; i < tg_numel(t); i++)
      p[i] = rand() % CLASSES;
    return t;
  }
  if (kind == 'p' || kind == 'w')
    t = tg_uniform(s->d, nd, 0.5, 2, dt, TG_CPU);
  else if (kind == 'u')
    t = tg_uniform(s->d, nd, 0.05, 0.95, dt, TG_CPU);
  else
    t = tg_randn(s->d, nd, dt, TG_CPU);
  if (kind != 'k' && kind != 'w')
    tg_set_requires_grad(t, true);
  return t;
}

/* Compares one output or gradient; returns false (after printing) on a mismatch. */
static bool compare(const cuda_case *c, const char *what, const tg_tensor *dev,
                    const tg_tensor *cpu) {
  if (!dev || !cpu) {
    printf("  %-14s %s %s: missing (%s)\n", c->op, tg_dtype_name(c->dtype), what,
           tg_last_error());
    return false;
  }
  int64_t worst;
  double got = 0, want = 0;
  const double e = cuda_nmse(dev, cpu, &worst, &got, &want);
  if (e <= c->tol)
    return true;
  printf("  %-14s %s %s: nmse %.3g > %.3g, worst element %lld: cuda %.17g, cpu %.17g\n",
         c->op, tg_dtype_name(c->dtype), what, e, c->tol, (long long)worst, got, want);
  return false;
}

typedef enum { ROW_OK, ROW_FAIL, ROW_NO_KERNEL } row_result;

static row_result run_case(const cuda_case *c) {
  tg_scope_begin();
  tg_tensor *h[MAX_IN] = {0}, *d[MAX_IN] = {0};
  int n = 0;
  while (n < MAX_IN && c->in[n].nd1 > 0) {
    h[n] = make_input(&c->in[n], c->kinds[n], c->dtype);
    d[n] = cuda_leaf(h[n]);
    assert_ok(h[n] && d[n]);
    n++;
  }
  tg_tensor *yh = c->fn(h, n, (void *)c->ctx);
  assert_ok(yh);
  tg_clear_error();
  tg_tensor *yd = c->fn(d, n, (void *)c->ctx);
  if (!yd && strstr(tg_last_error(), "no kernel")) {
    printf("  %-14s %-7s no kernel (%s)\n", c->op, tg_dtype_name(c->dtype),
           tg_last_error());
    tg_clear_error();
    tg_scope_end();
    return ROW_NO_KERNEL;
  }
  bool ok = compare(c, "output", yd, yh);
  if (ok && tg_requires_grad(yh)) {
    tg_tensor *dy = tg_randn(tg_shape(yh), tg_ndim(yh), tg_dtype_of(yh), TG_CPU);
    tg_tensor *dyd = tg_tensor_to(dy, CUDA0);
    assert_ok(tg_backward_ex(yh, dy, false) == 0);
    if (tg_backward_ex(yd, dyd, false) < 0) {
      printf("  %-14s %s backward failed: %s\n", c->op, tg_dtype_name(c->dtype),
             tg_last_error());
      ok = false;
    }
    for (int i = 0; ok && i < n; i++) {
      if (!tg_requires_grad(h[i]))
        continue;
      char what[32];
      snprintf(what, sizeof what, "grad of input %d", i);
      ok = compare(c, what, tg_grad(d[i]), tg_grad(h[i]));
      if (ok && tg_device_of(tg_grad(d[i])).type != TG_DEVICE_CUDA) {
        printf("  %-14s %s is not on the device\n", c->op, what);
        ok = false;
      }
    }
  }
  for (int i = 0; i < n; i++) {
    tg_zero_grad(h[i]);
    tg_zero_grad(d[i]);
  }
  tg_scope_end();
  if (ok)
    printf("  %-14s %-7s ok\n", c->op, tg_dtype_name(c->dtype));
  return ok ? ROW_OK : ROW_FAIL;
}

static void test_ops_vs_cpu(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  int fails = 0, missing = 0;
  const int rows = (int)(sizeof cases / sizeof cases[0]);
  for (int i = 0; i < rows; i++) {
    tg_manual_seed(1000 + (uint64_t)i);
    srand(1000 + (unsigned)i);
    row_result r = run_case(&cases[i]);
    fails += r == ROW_FAIL;
    missing += r == ROW_NO_KERNEL;
    if (tg_cuda_memory_allocated(0) != base) {
      printf("  %-14s leaked %lld device bytes\n", cases[i].op,
             (long long)(tg_cuda_memory_allocated(0) - base));
      fails++;
    }
  }
  printf("ops vs cpu: %d rows, %d failed, %d without a CUDA kernel\n", rows, fails,
         missing);
  assert_int_equal(fails, 0);
  assert_int_equal(missing, 0); /* every op in the table has CUDA kernels */
}

/* ---- float64 gradcheck through the device: inputs stay on the CPU, the fn moves
 * them to cuda:0 (tg_tensor_to is differentiable), runs the op there and brings the
 * result back, so finite differences and the analytic Jacobian both go through the
 * device kernels, forward and backward. ---- */

static tg_tensor *on_device_fn(tg_tensor *const *in, int n, void *vctx) {
  const cuda_case *c = vctx;
  tg_tensor *d[MAX_IN];
  for (int i = 0; i < n; i++)
    d[i] = tg_tensor_to(in[i], CUDA0);
  tg_tensor *y = c->fn(d, n, (void *)c->ctx);
  return tg_tensor_to(y, TG_CPU);
}

static void test_gradcheck_on_device(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  int fails = 0;
  const int rows = (int)(sizeof cases / sizeof cases[0]);
  for (int i = 0; i < rows; i++) {
    const cuda_case *c = &cases[i];
    int64_t numel = 0; /* finite differences cost two evaluations per element */
    for (int k = 0; k < MAX_IN && c->in[k].nd1 > 0; k++) {
      int64_t e = 1;
      for (int d = 0; d < c->in[k].nd1 - 1; d++)
        e *= c->in[k].d[d];
      numel += e;
    }
    if (c->dtype != TG_F64 || numel > 80)
      continue;
    tg_manual_seed(2000 + (uint64_t)i);
    srand(2000 + (unsigned)i);
    tg_scope_begin();
    tg_tensor *h[MAX_IN] = {0};
    int n = 0;
    while (n < MAX_IN && c->in[n].nd1 > 0) {
      h[n] = make_input(&c->in[n], c->kinds[n], c->dtype);
      n++;
    }
    tg_clear_error();
    int rc = tg_gradcheck(on_device_fn, (void *)c, h, n, NULL);
    if (rc < 0) {
      printf("  gradcheck %-14s FAILED: %s\n", c->op, tg_last_error());
      fails++;
    } else {
      printf("  gradcheck %-14s ok\n", c->op);
    }
    tg_clear_error();
    tg_scope_end();
  }
  assert_int_equal(fails, 0);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* ------------------------------------------------- GroupNorm's hard cases -- */

/* y and dx on the device against float64 math on the CPU for a group of mean 1e4 and
 * std 1e-3, a constant group and one-element groups. */
static void check_gn_case(const tg_tensor *x, int64_t groups, double tol_y) {
  tg_scope_begin();
  tg_tensor *x64 = tg_to_dtype(x, TG_F64);
  tg_tensor *ref = tg_group_norm(x64, groups, NULL, NULL, 1e-5);
  tg_tensor *xd = tg_tensor_to(x, CUDA0);
  tg_tensor *yd = tg_group_norm(xd, groups, NULL, NULL, 1e-5);
  assert_ok(ref && yd);
  tg_tensor *y = tg_to_dtype(tg_tensor_to(yd, TG_CPU), TG_F64);
  assert_close(y, ref, tol_y, 0);
  tg_scope_end();
}

static void test_group_norm_hard(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  for (int dt = 0; dt < 2; dt++) {
    const tg_dtype dtype = dt ? TG_F64 : TG_F32;
    tg_scope_begin();
    /* mean 1e4, std 1e-3: y must keep its digits (what the naive E[x^2]-E[x]^2 loses) */
    tg_tensor *x = tg_randn(TG_SHAPE(2, 4, 50), dtype, TG_CPU);
    tg_tensor *xs = tg_add_scalar(tg_mul_scalar(x, 1e-3), 1e4);
    /* In float32 the inputs themselves are quantised to 1e4's ulp (~1e-3): y then
     * differs from float64 maths on the same float32 values only by rounding. */
    check_gn_case(xs, 2, dt ? 1e-6 : 2e-3);
    /* constant groups: y = 0 exactly */
    check_gn_case(tg_full(TG_SHAPE(2, 4, 5), 3.25, dtype, TG_CPU), 2, 0);
    /* one-element groups: y = 0 */
    check_gn_case(tg_randn(TG_SHAPE(3, 4), dtype, TG_CPU), 4, 0);
    /* the split path with an off-centre large group */
    check_gn_case(tg_add_scalar(tg_randn(TG_SHAPE(1, 4, 3000), dtype, TG_CPU), 100), 2,
                  dt ? 1e-12 : 1e-5);
    assert_int_equal(tg_scope_end(), 0);
  }
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* Parameter gradients are reduced in a fixed order: two backward passes give the
 * same bits, on the fused and the split/plane paths. */
static void test_group_norm_reproducible(void **state) {
  (void)state;
  require_gpu();
  const int64_t shapes[2][4] = {{8, 64, 4, 4}, {2, 8, 33, 33}};
  for (int s = 0; s < 2; s++) {
    tg_scope_begin();
    tg_tensor *x = tg_randn(shapes[s], 4, TG_F32, CUDA0);
    tg_tensor *w = tg_randn(TG_SHAPE(shapes[s][1]), TG_F32, CUDA0);
    tg_tensor *b = tg_randn(TG_SHAPE(shapes[s][1]), TG_F32, CUDA0);
    tg_tensor *dy = tg_randn(shapes[s], 4, TG_F32, CUDA0);
    tg_set_requires_grad(w, true);
    tg_set_requires_grad(b, true);
    float first[2][64];
    for (int run = 0; run < 2; run++) {
      tg_tensor *y = tg_group_norm(x, 8, w, b, 1e-5);
      assert_ok(y && tg_backward_ex(y, dy, false) == 0);
      float got[2][64];
      const size_t bytes = (size_t)shapes[s][1] * sizeof(float);
      assert_ok(tg_tensor_copy_to_host(tg_grad(w), got[0], bytes) == 0);
      assert_ok(tg_tensor_copy_to_host(tg_grad(b), got[1], bytes) == 0);
      if (run == 0)
        memcpy(first, got, sizeof got);
      else
        assert_memory_equal(first, got, sizeof got);
      tg_zero_grad(w);
      tg_zero_grad(b);
    }
    assert_int_equal(tg_scope_end(), 0);
  }
}

/* The fused ReLU on NaN inputs, on the fused and the split/plane paths: a NaN group's
 * outputs stay NaN (not 0), and its dy passes the ReLU into dbias as on the CPU (a
 * mask of y > 0 would drop it). */
static void test_group_norm_relu_nan(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  const int64_t shapes[2][4] = {{8, 64, 2, 2}, {1, 8, 33, 33}};
  for (int s = 0; s < 2; s++) {
    tg_scope_begin();
    const int64_t C = shapes[s][1];
    tg_tensor *x = tg_randn(shapes[s], 4, TG_F64, TG_CPU);
    ((double *)tg_data(x))[5] = NAN; /* sample 0, group 0 */
    tg_tensor *w = tg_randn(TG_SHAPE(C), TG_F64, TG_CPU);
    tg_tensor *b = tg_randn(TG_SHAPE(C), TG_F64, TG_CPU);
    tg_tensor *dy = tg_randn(shapes[s], 4, TG_F64, TG_CPU);
    tg_tensor *h[3] = {x, w, b}, *d[3], *got[4], *want[4];
    for (int i = 0; i < 3; i++) {
      assert_ok(tg_set_requires_grad(h[i], true) == 0);
      d[i] = cuda_leaf(h[i]);
    }
    for (int dev = 0; dev < 2; dev++) {
      tg_tensor **in = dev ? d : h, **out = dev ? got : want;
      tg_tensor *y = tg_group_norm_relu(in[0], 8, in[1], in[2], 1e-5);
      assert_ok(y && tg_backward_ex(y, dev ? tg_tensor_to(dy, CUDA0) : dy, false) == 0);
      out[0] = tg_tensor_to(y, TG_CPU);
      for (int i = 0; i < 3; i++)
        out[i + 1] = tg_tensor_to(tg_grad(in[i]), TG_CPU);
    }
    assert_true(isnan(((const double *)tg_data(got[0]))[0]));
    for (int i = 0; i < 4; i++)
      assert_close(got[i], want[i], 1e-12, 1e-12);
    assert_int_equal(tg_scope_end(), 0);
  }
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* Max pools on NaN and -inf inputs as the CPU: the output NaN where a window holds
 * one, the gradient to the same element (tg_max_pool2d: the last NaN, its 2x2 fast
 * path and the general loop; tg_max_pool2d_ex: the first NaN, its indices too), an
 * all -inf window to its first element; and every pool's backward over overlapping
 * windows gives the same bits twice. */
static void test_pool_nan_and_repeat(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  tg_scope_begin();
  tg_tensor *x = tg_randn(TG_SHAPE(2, 2, 6, 7), TG_F64, TG_CPU);
  double *v = tg_data(x);
  v[0] = v[1] = v[8] = NAN; /* two NaNs in one 2x2 window, a third in the next row */
  v[22] = NAN;              /* plane 0, (3, 1) */
  v[42 + 9] = v[42 + 10] = -INFINITY;
  v[42 + 2] = v[42 + 3] = v[42 + 16] = v[42 + 17] = -INFINITY; /* a 2x2 window */
  assert_ok(tg_set_requires_grad(x, true) == 0);
  tg_tensor *xd = cuda_leaf(x), *dy = NULL;
  const tg_max_pool2d_options ceil3 = {{3, 3}, {2, 2}, {1, 1}, {1, 1}, true},
                              dil = {{2, 3}, {1, 2}, {1, 1}, {2, 1}, false};
  for (int c = 0; c < 4; c++) {
    tg_tensor *y[2], *g[2], *idx[2] = {NULL, NULL};
    for (int dev = 0; dev < 2; dev++) {
      tg_tensor *in = dev ? xd : x;
      tg_tensor *out = c == 0   ? tg_max_pool2d(in, (int64_t[]){2, 2}, NULL, NULL)
                       : c == 1 ? tg_max_pool2d(in, (int64_t[]){3, 3}, (int64_t[]){1, 1},
                                                (int64_t[]){1, 1})
                                : tg_max_pool2d_ex(in, c == 2 ? &ceil3 : &dil, &idx[dev]);
      assert_ok(out);
      if (!dev)
        dy = tg_randn(tg_shape(out), 4, TG_F64, TG_CPU);
      assert_ok(tg_backward_ex(out, dev ? tg_tensor_to(dy, CUDA0) : dy, false) == 0);
      y[dev] = tg_tensor_to(out, TG_CPU);
      g[dev] = tg_tensor_to(tg_grad(in), TG_CPU);
      if (idx[dev])
        idx[dev] = tg_to_dtype(tg_tensor_to(idx[dev], TG_CPU), TG_F64);
      tg_zero_grad(in);
    }
    assert_true(isnan(((const double *)tg_data(y[1]))[0]));
    assert_close(y[1], y[0], 0, 0);
    assert_close(g[1], g[0], 0, 0);
    if (c >= 2)
      assert_close(idx[1], idx[0], 0, 0);
  }
  /* overlapping windows, float32: two backward passes on the device */
  tg_tensor *xf = tg_randn(TG_SHAPE(3, 4, 17, 19), TG_F32, CUDA0);
  tg_set_requires_grad(xf, true);
  const tg_avg_pool2d_options avg = {{3, 3}, {1, 2}, {1, 1}, true, false, 0};
  for (int c = 0; c < 3; c++) {
    tg_tensor *first = NULL;
    for (int run = 0; run < 2; run++) {
      tg_tensor *out = c == 0   ? tg_max_pool2d_ex(xf, &dil, NULL)
                       : c == 1 ? tg_avg_pool2d_ex(xf, &avg)
                                : tg_adaptive_avg_pool2d(xf, (int64_t[]){7, 13});
      assert_ok(out);
      tg_manual_seed(77 + (uint64_t)c); /* the same dy both runs */
      tg_tensor *dyf = tg_randn(tg_shape(out), 4, TG_F32, CUDA0);
      assert_ok(tg_backward_ex(out, dyf, false) == 0);
      tg_tensor *gr = tg_tensor_to(tg_grad(xf), TG_CPU);
      if (run == 0)
        first = gr;
      else
        assert_close(gr, first, 0, 0);
      tg_zero_grad(xf);
    }
  }
  assert_int_equal(tg_scope_end(), 0);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* ---------------------------------------------------------------- runtime -- */

static void test_creation_and_copies(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  tg_scope_begin();
  /* the same seed gives the same values on both devices */
  tg_manual_seed(7);
  tg_tensor *rh = tg_randn(TG_SHAPE(3, 5), TG_F64, TG_CPU);
  tg_manual_seed(7);
  tg_tensor *rd = tg_randn(TG_SHAPE(3, 5), TG_F64, CUDA0);
  assert_ok(rd && tg_device_of(rd).type == TG_DEVICE_CUDA);
  assert_close(tg_tensor_to(rd, TG_CPU), rh, 0, 0);
  tg_manual_seed(8);
  tg_tensor *uh = tg_uniform(TG_SHAPE(9), -2, 3, TG_F32, TG_CPU);
  tg_manual_seed(8);
  assert_close(tg_tensor_to(tg_uniform(TG_SHAPE(9), -2, 3, TG_F32, CUDA0), TG_CPU), uh, 0,
               0);
  tg_manual_seed(9);
  tg_tensor *qh = tg_rand(TG_SHAPE(4), TG_F32, TG_CPU);
  tg_manual_seed(9);
  assert_close(tg_tensor_to(tg_rand(TG_SHAPE(4), TG_F32, CUDA0), TG_CPU), qh, 0, 0);
  /* fills, including non-zero values and int64 */
  assert_close(tg_tensor_to(tg_full(TG_SHAPE(2, 3), -1.5, TG_F32, CUDA0), TG_CPU),
               tg_full(TG_SHAPE(2, 3), -1.5, TG_F32, TG_CPU), 0, 0);
  assert_close(tg_tensor_to(tg_ones(TG_SHAPE(1000), TG_F64, CUDA0), TG_CPU),
               tg_ones(TG_SHAPE(1000), TG_F64, TG_CPU), 0, 0);
  assert_close(tg_tensor_to(tg_zeros(TG_SHAPE(7), TG_F32, CUDA0), TG_CPU),
               tg_zeros(TG_SHAPE(7), TG_F32, TG_CPU), 0, 0);
  tg_tensor *ai = tg_arange(0, 10, 3, TG_I64, CUDA0);
  int64_t iv[4];
  assert_ok(tg_tensor_copy_to_host(ai, iv, sizeof iv) == 0);
  assert_int_equal(iv[3], 9);
  tg_tensor *fi = tg_full(TG_SHAPE(3), 42, TG_I64, CUDA0);
  assert_ok(tg_tensor_copy_to_host(fi, iv, 3 * sizeof *iv) == 0);
  assert_int_equal(iv[2], 42);
  /* from_data, item, copy_ between devices */
  const double v[3] = {1.25, -2, 1e300};
  tg_tensor *t = tg_tensor_from_data(v, TG_SHAPE(3), TG_F64, CUDA0);
  assert_ok(t);
  assert_true(tg_item(tg_narrow(t, 0, 2, 1)) == 1e300);
  tg_tensor *h = tg_zeros(TG_SHAPE(3), TG_F64, TG_CPU);
  assert_ok(tg_copy_(h, t) == 0);
  assert_true(((double *)tg_data(h))[1] == -2);
  tg_tensor *t2 = tg_zeros(TG_SHAPE(3), TG_F64, CUDA0);
  assert_ok(tg_copy_(t2, t) == 0 && tg_fill_(t, 5) == 0);
  assert_true(tg_item(tg_sum(t2)) == 1.25 - 2 + 1e300);
  assert_true(tg_item(tg_mean(t)) == 5);
  /* dtype conversions on the device: float64 -> float32 -> int64 (saturating) */
  tg_tensor *f = tg_to_dtype(t2, TG_F32);
  float fv[3];
  assert_ok(tg_tensor_copy_to_host(f, fv, sizeof fv) == 0);
  assert_true(fv[0] == 1.25f && isinf(fv[2]));
  tg_tensor *i64 = tg_to_dtype(f, TG_I64);
  assert_ok(tg_tensor_copy_to_host(i64, iv, 3 * sizeof *iv) == 0);
  assert_true(iv[0] == 1 && iv[1] == -2 && iv[2] == INT64_MAX);
  /* printing goes through a host copy */
  char buf[512] = {0};
  FILE *mem = fmemopen(buf, sizeof buf, "w");
  tg_tensor_print(tg_tensor_from_data(v, TG_SHAPE(2), TG_F64, CUDA0), mem);
  fclose(mem);
  assert_non_null(strstr(buf, "cuda"));
  assert_non_null(strstr(buf, "1.25"));
  assert_int_equal(tg_scope_end(), 0);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

/* tg_tensor_to is differentiable both ways: a CPU leaf used on the device gets its
 * gradient on the CPU, and a device leaf used on the CPU gets it on the device. */
static void test_transfer_gradients(void **state) {
  (void)state;
  require_gpu();
  tg_scope_begin();
  tg_tensor *a = rand_leaf(TG_SHAPE(4, 3), TG_F64);
  tg_tensor *y = tg_sum(tg_mul_scalar(tg_tensor_to(a, CUDA0), 3));
  if (!y) { /* needs the elementwise and reduction kernels */
    assert_non_null(strstr(tg_last_error(), "no kernel"));
    tg_clear_error();
    tg_scope_end();
    skip();
  }
  assert_ok(tg_backward(y) == 0);
  assert_int_equal(tg_device_of(tg_grad(a)).type, TG_DEVICE_CPU);
  assert_close(tg_grad(a), tg_full(TG_SHAPE(4, 3), 3, TG_F64, TG_CPU), 0, 0);
  tg_tensor *b = tg_randn(TG_SHAPE(5), TG_F32, CUDA0);
  tg_set_requires_grad(b, true);
  tg_tensor *z = tg_sum(tg_tensor_to(b, TG_CPU));
  assert_ok(tg_backward(z) == 0);
  assert_int_equal(tg_device_of(tg_grad(b)).type, TG_DEVICE_CUDA);
  assert_close(tg_tensor_to(tg_grad(b), TG_CPU), tg_ones(TG_SHAPE(5), TG_F32, TG_CPU), 0,
               0);
  /* accumulation on the device: b used twice */
  tg_zero_grad(b);
  tg_tensor *w = tg_add(tg_sum(b), tg_sum(tg_mul_scalar(b, 2)));
  assert_ok(w && tg_backward(w) == 0);
  assert_close(tg_tensor_to(tg_grad(b), TG_CPU), tg_full(TG_SHAPE(5), 3, TG_F32, TG_CPU),
               0, 0);
  assert_int_equal(tg_scope_end(), 0);
}

/* New device buffers are NaN under TG_CUDA_FILL_NAN (set by the suite): tg_empty
 * shows it; tg_zeros writes every element. */
static void test_nan_fill(void **state) {
  (void)state;
  require_gpu();
  const char *env = getenv("TG_CUDA_FILL_NAN");
  if (!env || strcmp(env, "1") != 0)
    skip();
  tg_scope_begin();
  float v[5];
  tg_tensor *e = tg_empty(TG_SHAPE(5), TG_F32, CUDA0);
  assert_ok(tg_tensor_copy_to_host(e, v, sizeof v) == 0);
  for (int i = 0; i < 5; i++)
    assert_true(isnan(v[i]));
  tg_tensor_free(e);
  tg_tensor *z = tg_zeros(TG_SHAPE(5), TG_F32, CUDA0); /* reuses e's cached block */
  assert_ok(tg_tensor_copy_to_host(z, v, sizeof v) == 0);
  for (int i = 0; i < 5; i++)
    assert_true(v[i] == 0);
  assert_int_equal(tg_scope_end(), 0);
}

/* Anomaly mode reads device tensors: a NaN produced on the device is reported. */
/* The losses' forward and backward on the device never wait for it (their sums,
 * reductions and target checks stay there): a whole loss step's host waits are
 * counted (tg__cuda_waits) and must be none, and the values then read back equal the
 * CPU's. */
static void test_losses_do_not_wait(void **state) {
  (void)state;
  require_gpu();
  tg_scope_begin();
  const int64_t tv[8] = {0, 2, 1, -100, 2, 0, 1, 1};
  tg_tensor *xh = tg_randn(TG_SHAPE(2, 3, 4), TG_F64, TG_CPU);
  tg_tensor *th = tg_tensor_from_data(tv, TG_SHAPE(2, 4), TG_I64, TG_CPU);
  tg_tensor *wh = tg_uniform(TG_SHAPE(3), 0.5, 1.5, TG_F64, TG_CPU);
  tg_tensor *ph = tg_randn(TG_SHAPE(2, 3, 4), TG_F64, TG_CPU);
  tg_tensor *loss[2];
  tg_tensor *grad[2];
  int64_t waits = 0;
  for (int d = 0; d < 2; d++) { /* d = 1: on cuda:0 */
    const tg_device dev = d ? CUDA0 : TG_CPU;
    tg_tensor *x = tg_tensor_to(xh, dev), *t = tg_tensor_to(th, dev);
    tg_tensor *w = tg_tensor_to(wh, dev), *p = tg_tensor_to(ph, dev);
    assert_ok(x && t && w && p && tg_set_requires_grad(x, true) == 0);
    if (d)
      waits = tg__cuda_waits();
    tg_cross_entropy_options ce = tg_cross_entropy_options_default();
    ce.weight = w;
    ce.label_smoothing = 0.1;
    tg_nll_loss_options nl = tg_nll_loss_options_default();
    nl.weight = w;
    nl.reduction = TG_REDUCTION_SUM;
    tg_tensor *terms[6] = {tg_cross_entropy(x, t, TG_REDUCTION_MEAN, -100),
                           tg_cross_entropy_ex(x, t, &ce),
                           tg_nll_loss(tg_log_softmax(x, 1), t, TG_REDUCTION_MEAN, -100),
                           tg_nll_loss_ex(tg_log_softmax(x, 1), t, &nl),
                           tg_mse_loss(x, p, TG_REDUCTION_MEAN),
                           tg_binary_cross_entropy_with_logits(x, p, TG_REDUCTION_SUM)};
    tg_tensor *sum = terms[0];
    for (int k = 1; k < 6; k++)
      sum = tg_add(sum, terms[k]);
    tg_tensor *none = tg_cross_entropy(x, t, TG_REDUCTION_NONE, -100);
    sum = tg_add(sum, tg_sum(none));
    assert_ok(sum && tg_backward(sum) == 0);
    const char *lb = getenv("TG_CUDA_LAUNCH_BLOCKING");
    if (d && !(lb && !strcmp(lb, "1"))) /* (which waits after every launch) */
      assert_int_equal(tg__cuda_waits() - waits, 0);
    loss[d] = tg_tensor_to(sum, TG_CPU);
    grad[d] = tg_tensor_to(tg_grad(x), TG_CPU);
    assert_ok(loss[d] && grad[d]);
  }
  assert_true(tg__cuda_waits() > waits); /* reading back waited */
  assert_close(loss[1], loss[0], 1e-12, 1e-12);
  assert_close(grad[1], grad[0], 1e-12, 1e-12);
  assert_int_equal(tg_scope_end(), 0);
}

static void test_anomaly_on_device(void **state) {
  (void)state;
  require_gpu();
  tg_scope_begin();
  tg_tensor *x = tg_full(TG_SHAPE(2, 6, 3), 1, TG_F32, CUDA0);
  tg_set_requires_grad(x, true);
  tg_tensor *w = tg_full(TG_SHAPE(6), NAN, TG_F32, CUDA0);
  tg_set_detect_anomaly(true);
  tg_tensor *y = tg_group_norm(x, 3, w, NULL, 1e-5);
  tg_set_detect_anomaly(false);
  assert_error(y == NULL, "anomaly", "tg_group_norm", "NaN");
  assert_int_equal(tg_scope_end(), 0);
}

/* The caching allocator: a freed block is kept (reserved) and reused; tg_empty_cache
 * gives it back; figures are in bytes. */
static void test_memory_figures(void **state) {
  (void)state;
  require_gpu();
  tg_empty_cache();
  const int64_t a0 = tg_cuda_memory_allocated(0), r0 = tg_cuda_memory_reserved(0);
  assert_int_equal(a0, r0);
  tg_tensor *t = tg_empty(TG_SHAPE(1 << 18), TG_F32, CUDA0); /* 1 MiB */
  assert_ok(t);
  assert_true(tg_cuda_memory_allocated(0) >= a0 + (1 << 20));
  const int64_t r1 = tg_cuda_memory_reserved(0);
  tg_tensor_free(t);
  assert_int_equal(tg_cuda_memory_allocated(0), a0);
  assert_int_equal(tg_cuda_memory_reserved(0), r1);
  for (int i = 0; i < 10; i++) /* the same size again: no new reservation */
    tg_tensor_free(tg_empty(TG_SHAPE(1 << 18), TG_F32, CUDA0));
  assert_int_equal(tg_cuda_memory_reserved(0), r1);
  tg_empty_cache();
  assert_int_equal(tg_cuda_memory_reserved(0), r0);
  assert_ok(tg_cuda_synchronize() == 0);
}

/* Errors: mixed devices, an allocation larger than the device, a bad device index;
 * the library keeps working after each. */
static void test_errors(void **state) {
  (void)state;
  require_gpu();
  const int64_t base = tg_cuda_memory_allocated(0);
  tg_scope_begin();
  tg_tensor *h = tg_randn(TG_SHAPE(2, 6, 4), TG_F32, TG_CPU);
  tg_tensor *c = tg_tensor_to(h, CUDA0);
  tg_tensor *w = tg_ones(TG_SHAPE(6), TG_F32, TG_CPU);
  assert_error(tg_group_norm(c, 3, w, NULL, 1e-5) == NULL, "tg_group_norm",
               "Expected all tensors to be on the same device, but found at least two "
               "devices, cuda:0 and cpu!");
  assert_error(tg_add(h, c) == NULL, "tg_add", "same device", "cpu and cuda:0");
  /* 2^46 floats = 256 TiB: more than any GPU has */
  tg_tensor *big = tg_empty(TG_SHAPE((int64_t)1 << 46), TG_F32, CUDA0);
  assert_error(big == NULL, "out of memory", "bytes", "free");
  assert_error(tg_zeros(TG_SHAPE(2), TG_F32, tg_cuda(tg_cuda_device_count())) == NULL,
               "not available");
  assert_error(tg_tensor_to(h, tg_cuda(-1)) == NULL, "cuda:-1", "not available");
  /* a class index out of range, found on the device without waiting: the loss is NaN
   * and the next call that waits for the device reports it, once */
  const int64_t bad[2] = {1, 7};
  tg_tensor *logits = tg_randn(TG_SHAPE(2, 4), TG_F32, CUDA0);
  tg_tensor *target = tg_tensor_from_data(bad, TG_SHAPE(2), TG_I64, CUDA0);
  const char *lb = getenv("TG_CUDA_LAUNCH_BLOCKING");
  if (lb && !strcmp(lb, "1")) { /* every launch waits: the loss call itself fails */
    assert_error(!tg_cross_entropy(logits, target, TG_REDUCTION_MEAN, -100),
                 "tg_cross_entropy", "Target 7 is out of bounds", "element 1");
    assert_error(!tg_nll_loss(logits, target, TG_REDUCTION_NONE, -100), "tg_nll_loss",
                 "Target 7 is out of bounds");
  } else {
    tg_tensor *bad_loss = tg_cross_entropy(logits, target, TG_REDUCTION_MEAN, -100);
    assert_ok(bad_loss);
    float v = 0;
    assert_error(tg_tensor_copy_to_host(bad_loss, &v, sizeof v) < 0, "tg_cross_entropy",
                 "Target 7 is out of bounds", "[0, 4)", "element 1", "cuda:0");
    assert_ok(tg_tensor_copy_to_host(bad_loss, &v, sizeof v) == 0);
    assert_true(isnan(v));
    assert_ok(tg_nll_loss(logits, target, TG_REDUCTION_NONE, -100));
    assert_error(tg_cuda_synchronize() < 0, "tg_nll_loss", "Target 7 is out of bounds");
    assert_ok(tg_cuda_synchronize() == 0);
  }
  /* max_unpool2d's indices, checked on the host, and on x's device */
  const int64_t ui[4] = {0, 3, 17, 2};
  tg_tensor *ux = tg_randn(TG_SHAPE(1, 1, 2, 2), TG_F32, CUDA0);
  tg_tensor *uid = tg_tensor_from_data(ui, TG_SHAPE(1, 1, 2, 2), TG_I64, CUDA0);
  tg_tensor *uih = tg_tensor_from_data(ui, TG_SHAPE(1, 1, 2, 2), TG_I64, TG_CPU);
  const int64_t k2[2] = {2, 2};
  assert_error(tg_max_unpool2d(ux, uid, k2, NULL, NULL, NULL) == NULL, "tg_max_unpool2d",
               "Found an invalid max index: 17", "4x4");
  assert_error(tg_max_unpool2d(ux, uih, k2, NULL, NULL, NULL) == NULL, "tg_max_unpool2d",
               "same device", "cuda:0 and cpu");
  /* still usable */
  tg_tensor *y = tg_group_norm(c, 3, NULL, NULL, 1e-5);
  assert_ok(y);
  assert_close(tg_tensor_to(y, TG_CPU), tg_group_norm(h, 3, NULL, NULL, 1e-5), 1e-6,
               1e-5);
  assert_int_equal(tg_scope_end(), 0);
  assert_int_equal(tg_cuda_memory_allocated(0), base);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_creation_and_copies),
      cmocka_unit_test(test_memory_figures),
      cmocka_unit_test(test_nan_fill),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_ops_vs_cpu),
      cmocka_unit_test(test_gradcheck_on_device),
      cmocka_unit_test(test_batch_norm_running_stats),
      cmocka_unit_test(test_group_norm_hard),
      cmocka_unit_test(test_group_norm_reproducible),
      cmocka_unit_test(test_group_norm_relu_nan),
      cmocka_unit_test(test_pool_nan_and_repeat),
      cmocka_unit_test(test_transfer_gradients),
      cmocka_unit_test(test_anomaly_on_device),
      cmocka_unit_test(test_losses_do_not_wait),
  };
  cuda_suite_filter();
  return cuda_suite_exit(cmocka_run_group_tests(tests, test_setup, NULL));
}
