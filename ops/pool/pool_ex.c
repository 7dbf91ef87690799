/* PyTorch's further pooling arguments: max_pool2d with dilation, ceil_mode and
 * indices, max_unpool2d, avg_pool2d with ceil_mode, count_include_pad = false and
 * divisor_override; unbatched [C, H, W] inputs for every pool. The plain cases go to
 * the kernels of pool.c; these loops are PyTorch's general ones, plane by plane. */
#include "graph/internal.h"
#include "ops/unbatched.h"

#include <math.h>
#include <string.h>

/* One pooling geometry along both axes. */
typedef struct {
  int64_t k[2], s[2], p[2], d[2];
  int64_t in[2], out[2];
  bool ceil_mode;
} pool_geom;

/* PyTorch's pooling_output_shape: floor or ceil of the window count, the last window
 * starting inside the image or its left padding. */
static int64_t pool_out(int64_t in, int64_t k, int64_t p, int64_t s, int64_t d,
                        bool ceil_mode) {
  int64_t span = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t o = (span >= 0 ? span / s : -((-span + s - 1) / s)) + 1;
  if (ceil_mode && (o - 1) * s >= in + p)
    o--;
  return o;
}

/* PyTorch's pool2d_shape_check; x is [N, C, H, W] (N may be 0) or [C, H, W]. */
static int geom_check(const char *op, const tg_tensor *x, const int64_t kernel[2],
                      const int64_t stride[2], const int64_t padding[2],
                      const int64_t dilation[2], bool ceil_mode, pool_geom *g) {
  char s[TG_SHAPE_STR_LEN];
  if (!tg__nonnull(x, op, "input") || tg__check_same(op, 1, &x, true) < 0)
    return -1;
  bool ok = x->ndim == 3 || x->ndim == 4;
  for (int i = x->ndim - 3; ok && i < x->ndim; i++)
    ok = x->shape[i] > 0;
  if (!ok)
    return tg__error("%s: Expected 3D or 4D (batch mode) tensor with optional 0 dim "
                     "batch size for input, but got: %s",
                     op, tg_shape_str(x, s, sizeof s));
  for (int i = 0; i < 2; i++) {
    g->k[i] = kernel[i];
    g->s[i] = stride && stride[i] ? stride[i] : kernel[i];
    g->p[i] = padding ? padding[i] : 0;
    g->d[i] = dilation ? dilation[i] : 1;
    g->in[i] = x->shape[x->ndim - 2 + i];
  }
  g->ceil_mode = ceil_mode;
  if (g->k[0] <= 0 || g->k[1] <= 0)
    return tg__error("%s: kernel size should be greater than zero, but got kH: %lld kW: "
                     "%lld",
                     op, (long long)g->k[0], (long long)g->k[1]);
  if (g->s[0] <= 0 || g->s[1] <= 0)
    return tg__error("%s: stride should be greater than zero, but got dH: %lld dW: %lld",
                     op, (long long)g->s[0], (long long)g->s[1]);
  if (g->d[0] <= 0 || g->d[1] <= 0)
    return tg__error("%s: dilation should be greater than zero, but got dilationH: %lld "
                     "dilationW: %lld",
                     op, (long long)g->d[0], (long long)g->d[1]);
  for (int i = 0; i < 2; i++) {
    if (g->p[i] < 0)
      return tg__error("%s: pad must be non-negative, but got pad: %lld", op,
                       (long long)g->p[i]);
    if (g->k[i] > INT32_MAX || g->d[i] > INT32_MAX || g->p[i] > INT32_MAX ||
        g->s[i] > INT32_MAX)
      return tg__error("%s: window arguments must fit in 32 bits", op);
    if (g->p[i] > ((g->k[i] - 1) * g->d[i] + 1) / 2)
      return tg__error("%s: pad should be at most half of effective kernel size, but got "
                       "pad=%lld, kernel_size=%lld and dilation=%lld",
                       op, (long long)g->p[i], (long long)g->k[i], (long long)g->d[i]);
    g->out[i] = pool_out(g->in[i], g->k[i], g->p[i], g->s[i], g->d[i], ceil_mode);
  }
  const int64_t C = x->shape[x->ndim - 3];
  if (g->out[0] < 1 || g->out[1] < 1)
    return tg__error("%s: Given input size: (%lldx%lldx%lld). Calculated output size: "
                     "(%lldx%lldx%lld). Output size is too small",
                     op, (long long)C, (long long)g->in[0], (long long)g->in[1],
                     (long long)C, (long long)g->out[0], (long long)g->out[1]);
  return 0;
}

static tg_tensor *new_pooled(const tg_tensor *x, const pool_geom *g, tg_dtype dtype) {
  int64_t shape[4] = {x->shape[0], x->shape[1], g->out[0], g->out[1]};
  return tg__new(shape, 4, dtype, x->device);
}

/* ---------------------------------------------------------- max pool -- */

/* Element i of a float32 or float64 buffer, as double, and the store back. The
 * dtype test is the same for every element of a loop, so it costs a predicted branch;
 * these loops are for the less common arguments, pool.c keeps the tuned ones. */
static inline double ld(const void *p, int64_t i, bool f32) {
  return f32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}
static inline void st(void *p, int64_t i, double v, bool f32) {
  if (f32)
    ((float *)p)[i] = (float)v;
  else
    ((double *)p)[i] = v;
}

/* The maximum over a dilated window's taps inside the image and its flat index in
 * the plane (the first maximum, or the first NaN, as PyTorch). */
static void max_window(const void *X, bool f32, const pool_geom *g, int64_t oy,
                       int64_t ox, double *m, int64_t *best) {
  const int64_t H = g->in[0], W = g->in[1];
  const int64_t y0 = oy * g->s[0] - g->p[0], x0 = ox * g->s[1] - g->p[1];
  *m = -INFINITY;
  *best = -1;
  for (int64_t i = 0; i < g->k[0]; i++) {
    const int64_t yy = y0 + i * g->d[0];
    for (int64_t j = 0; yy >= 0 && yy < H && j < g->k[1]; j++) {
      const int64_t xx = x0 + j * g->d[1];
      if (xx < 0 || xx >= W)
        continue;
      const double v = ld(X, yy * W + xx, f32);
      if (*best < 0 || v > *m || isnan(v)) {
        *m = v;
        *best = yy * W + xx;
      }
      if (isnan(v))
        return;
    }
  }
}

static void max_pool_ex_kernel(const tg_tensor *x, const pool_geom *g, tg_tensor *y,
                               tg_tensor *idx) {
  const int64_t planes = x->shape[0] * x->shape[1], plane = g->in[0] * g->in[1];
  const int64_t OH = g->out[0], OW = g->out[1];
  const bool f32 = x->dtype == TG_F32;
  const size_t es = tg_dtype_size(x->dtype);
  const char *X = tg__data(x);
  int64_t *I = tg__data(idx);
  void *Y = tg__data(y);
#pragma omp parallel for num_threads(tg__threads(y->numel * g->k[0] * g->k[1]))
  for (int64_t p = 0; p < planes; p++)
    for (int64_t oy = 0; oy < OH; oy++)
      for (int64_t ox = 0; ox < OW; ox++) {
        const int64_t o = (p * OH + oy) * OW + ox;
        double m;
        max_window(X + (size_t)(p * plane) * es, f32, g, oy, ox, &m, &I[o]);
        st(Y, o, m, f32);
      }
}

/* Moves values between a plane of n_idx elements and one of indices into another
 * (n_big elements), plane by plane: */
typedef enum {
  SCATTER_ADD,   /* dst[idx[k]] += src[k]: max pool's backward */
  SCATTER_STORE, /* dst[idx[k]] = src[k]: max_unpool's forward */
  GATHER,        /* dst[k] = src[idx[k]]: max_unpool's backward */
} plane_move;

static void move_planes(const tg_tensor *src, const tg_tensor *idx, tg_tensor *dst,
                        int64_t planes, plane_move how) {
  const int64_t *I = tg__data(idx);
  const int64_t n_idx = idx->numel / (planes ? planes : 1);
  const int64_t n_big = (how == GATHER ? src->numel : dst->numel) / (planes ? planes : 1);
  const bool f32 = src->dtype == TG_F32;
  const void *S = tg__data(src);
  void *D = tg__data(dst);
#pragma omp parallel for num_threads(tg__threads(idx->numel))
  for (int64_t p = 0; p < planes; p++)
    for (int64_t k = 0; k < n_idx; k++) {
      const int64_t big = p * n_big + I[p * n_idx + k], small = p * n_idx + k;
      if (how == GATHER)
        st(D, small, ld(S, big, f32), f32);
      else
        st(D, big, (how == SCATTER_ADD ? ld(D, big, f32) : 0) + ld(S, small, f32), f32);
    }
}

static int max_pool_ex_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  tg_tensor *dx = tg_zeros_like(x);
  if (!dx)
    return -1;
  move_planes(g, node->saved[0], dx, x->shape[0] * x->shape[1], SCATTER_ADD);
  gi[0] = dx;
  return 0;
}

tg_max_pool2d_options tg_max_pool2d_options_default(int64_t kh, int64_t kw) {
  return (tg_max_pool2d_options){{kh, kw}, {kh, kw}, {0, 0}, {1, 1}, false};
}

tg_tensor *tg_max_pool2d_ex(const tg_tensor *x, const tg_max_pool2d_options *o,
                            tg_tensor **indices) {
  const char *op = "tg_max_pool2d_ex";
  pool_geom g;
  if (indices)
    *indices = NULL;
  if (!o)
    return tg__error("%s: argument 'options' is NULL", op), NULL;
  if (geom_check(op, x, o->kernel, o->stride, o->padding, o->dilation, o->ceil_mode, &g) <
      0)
    return NULL;
  if (x->ndim == 3) {
    tg_tensor *xb = tg__add_batch(x), *ib = NULL;
    tg_tensor *y = tg__drop_batch(tg_max_pool2d_ex(xb, o, indices ? &ib : NULL));
    tg_tensor_free(xb);
    if (indices && y)
      *indices = tg__drop_batch(ib);
    return y;
  }
  if (!indices && !o->ceil_mode && o->dilation[0] == 1 && o->dilation[1] == 1)
    return tg_max_pool2d(x, g.k, g.s, g.p); /* pool.c's kernels, 2x2 and all */
  if (x->device.type != TG_DEVICE_CPU)
    return tg__unsupported_device(op, x), NULL;
  tg_tensor *y = new_pooled(x, &g, x->dtype), *idx = new_pooled(x, &g, TG_I64);
  if (!y || !idx) {
    tg_tensor_free(y);
    tg_tensor_free(idx);
    return NULL;
  }
  max_pool_ex_kernel(x, &g, y, idx);
  tg_node *node;
  y = tg__finish(op, y, 1, &x, max_pool_ex_backward, &node);
  if (node)
    tg__save(node, idx);
  if (indices && y)
    *indices = idx;
  else
    tg_tensor_free(idx);
  return y;
}

/* -------------------------------------------------------- max unpool -- */

static int max_unpool_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  tg_tensor *dx = tg__new_like(x);
  if (!dx)
    return -1;
  move_planes(g, node->saved[0], dx, x->shape[0] * x->shape[1], GATHER);
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_max_unpool2d(const tg_tensor *x, const tg_tensor *indices,
                           const int64_t kernel[2], const int64_t stride[2],
                           const int64_t padding[2], const int64_t output_size[2]) {
  const char *op = "tg_max_unpool2d";
  char sx[TG_SHAPE_STR_LEN], si[TG_SHAPE_STR_LEN];
  if (!tg__nonnull(x, op, "input") || !tg__nonnull(indices, op, "indices") ||
      tg__check_same(op, 1, &x, true) < 0)
    return NULL;
  if (!kernel)
    return tg__error("%s: argument 'kernel' is NULL", op), NULL;
  if (indices->dtype != TG_I64)
    return tg__error("%s: elements in indices should be type int64 but got: %s", op,
                     tg_dtype_name(indices->dtype)),
           NULL;
  bool same = x->ndim == indices->ndim;
  for (int i = 0; same && i < x->ndim; i++)
    same = x->shape[i] == indices->shape[i];
  if (!same)
    return tg__error("%s: Expected shape of indices to be same as that of the input "
                     "tensor (%s) but got indices tensor with shape: %s",
                     op, tg_shape_str(x, sx, sizeof sx),
                     tg_shape_str(indices, si, sizeof si)),
           NULL;
  if (x->ndim != 3 && x->ndim != 4)
    return tg__error(
               "%s: Input to max_unpooling2d should be a 3d or 4d Tensor, but got a "
               "tensor with %d dimensions",
               op, x->ndim),
           NULL;
  if (x->ndim == 3) {
    tg_tensor *xb = tg__add_batch(x), *ib = tg__add_batch(indices);
    tg_tensor *y =
        tg__drop_batch(tg_max_unpool2d(xb, ib, kernel, stride, padding, output_size));
    tg_tensor_free(xb);
    tg_tensor_free(ib);
    return y;
  }
  int64_t out[2];
  for (int i = 0; i < 2; i++) {
    int64_t s = stride && stride[i] ? stride[i] : kernel[i], p = padding ? padding[i] : 0;
    out[i] = output_size ? output_size[i] : (x->shape[2 + i] - 1) * s - 2 * p + kernel[i];
  }
  if (out[0] < 0 || out[1] < 0)
    return tg__error("%s: output size (%lld, %lld) must not be negative", op,
                     (long long)out[0], (long long)out[1]),
           NULL;
  const int64_t *I = tg__data(indices), n = out[0] * out[1];
  for (int64_t k = 0; k < indices->numel; k++)
    if (I[k] < 0 || I[k] >= n)
      return tg__error("%s: Found an invalid max index: %lld (output volumes are of size "
                       "%lldx%lld)",
                       op, (long long)I[k], (long long)out[0], (long long)out[1]),
             NULL;
  if (x->device.type != TG_DEVICE_CPU)
    return tg__unsupported_device(op, x), NULL;
  tg_tensor *y =
      tg_zeros(TG_SHAPE(x->shape[0], x->shape[1], out[0], out[1]), x->dtype, x->device);
  if (!y)
    return NULL;
  /* Duplicate indices come from overlapping windows that chose one input element:
   * PyTorch stores each, the same value; adding them would count it twice. */
  move_planes(x, indices, y, x->shape[0] * x->shape[1], SCATTER_STORE);
  const tg_tensor *in[2] = {x, NULL};
  tg_node *node;
  y = tg__finish(op, y, 2, in, max_unpool_backward, &node);
  if (node)
    tg__save(node, indices);
  return y;
}

/* ---------------------------------------------------------- avg pool -- */

/* Per output: the window clipped to the padded image (its size is the divisor with
 * count_include_pad), then to the image (the divisor without). */
typedef struct {
  pool_geom g;
  bool include_pad;
  int64_t divisor;
} avg_plan;

static void avg_window(const avg_plan *a, int axis, int64_t o, int64_t *lo, int64_t *hi,
                       int64_t *padded) {
  const pool_geom *g = &a->g;
  int64_t start = o * g->s[axis] - g->p[axis];
  int64_t end = start + g->k[axis];
  if (end > g->in[axis] + g->p[axis])
    end = g->in[axis] + g->p[axis];
  *padded = end - start;
  *lo = start < 0 ? 0 : start;
  *hi = end > g->in[axis] ? g->in[axis] : end;
}

static double avg_divisor(const avg_plan *a, int64_t ylo, int64_t yhi, int64_t xlo,
                          int64_t xhi, int64_t py, int64_t px) {
  if (a->divisor)
    return (double)a->divisor;
  return a->include_pad ? (double)(py * px) : (double)((yhi - ylo) * (xhi - xlo));
}

/* backward false: y = window sums / divisor; true: dx[window] += g / divisor. */
static void avg_ex_kernel(const avg_plan *a, const tg_tensor *src, tg_tensor *dst,
                          int64_t planes, bool backward) {
  const pool_geom *g = &a->g;
  const int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  const bool f32 = src->dtype == TG_F32;
  const void *S = tg__data(src);
  void *D = tg__data(dst);
#pragma omp parallel for num_threads(tg__threads(planes *OH *OW * g->k[0] * g->k[1]))
  for (int64_t p = 0; p < planes; p++)
    for (int64_t oy = 0; oy < OH; oy++) {
      int64_t ylo, yhi, py;
      avg_window(a, 0, oy, &ylo, &yhi, &py);
      for (int64_t ox = 0; ox < OW; ox++) {
        int64_t xlo, xhi, px;
        avg_window(a, 1, ox, &xlo, &xhi, &px);
        const double div = avg_divisor(a, ylo, yhi, xlo, xhi, py, px);
        const int64_t o = (p * OH + oy) * OW + ox;
        double acc = backward ? ld(S, o, f32) / div : 0;
        for (int64_t y = ylo; y < yhi; y++)
          for (int64_t x = xlo; x < xhi; x++) {
            const int64_t i = p * H * W + y * W + x;
            if (backward)
              st(D, i, ld(D, i, f32) + acc, f32);
            else
              acc += ld(S, i, f32);
          }
        if (!backward)
          st(D, o, acc / div, f32);
      }
    }
}

static int avg_ex_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  tg_tensor *dx = tg_zeros_like(x);
  if (!dx)
    return -1;
  avg_ex_kernel(node->ctx, g, dx, x->shape[0] * x->shape[1], true);
  gi[0] = dx;
  return 0;
}

tg_avg_pool2d_options tg_avg_pool2d_options_default(int64_t kh, int64_t kw) {
  return (tg_avg_pool2d_options){{kh, kw}, {kh, kw}, {0, 0}, false, true, 0};
}

tg_tensor *tg_avg_pool2d_ex(const tg_tensor *x, const tg_avg_pool2d_options *o) {
  const char *op = "tg_avg_pool2d_ex";
  avg_plan a;
  if (!o)
    return tg__error("%s: argument 'options' is NULL", op), NULL;
  if (geom_check(op, x, o->kernel, o->stride, o->padding, NULL, o->ceil_mode, &a.g) < 0)
    return NULL;
  if (x->ndim == 3) {
    tg_tensor *xb = tg__add_batch(x);
    tg_tensor *y = tg__drop_batch(tg_avg_pool2d_ex(xb, o));
    tg_tensor_free(xb);
    return y;
  }
  if (!o->ceil_mode && o->count_include_pad && !o->divisor_override)
    return tg_avg_pool2d(x, a.g.k, a.g.s, a.g.p);
  if (x->device.type != TG_DEVICE_CPU)
    return tg__unsupported_device(op, x), NULL;
  a.include_pad = o->count_include_pad;
  a.divisor = o->divisor_override;
  tg_tensor *y = new_pooled(x, &a.g, x->dtype);
  if (!y)
    return NULL;
  avg_ex_kernel(&a, x, y, x->shape[0] * x->shape[1], false);
  tg_node *node;
  y = tg__finish(op, y, 1, &x, avg_ex_backward, &node);
  if (node)
    *(avg_plan *)tg__ctx(node, sizeof a) = a;
  return y;
}
