/* PyTorch's further pooling arguments: max_pool2d with dilation, ceil_mode and
 * indices, max_unpool2d, avg_pool2d with ceil_mode, count_include_pad = false and
 * divisor_override; unbatched [C, H, W] inputs for every pool; resampling of 1 to 3
 * spatial dims by size or scale_factor. The plain cases go to the kernels of pool.c;
 * these loops are PyTorch's general ones, plane by plane. */
#include "graph/internal.h"
#include "ops/pool/pool_cuda.h"
#include "ops/pool/resample.h"
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

/* The description of a pooling of geometry g on x (planes N * C). */
static tg__pool_desc pool_desc(int kind, const tg_tensor *x, const pool_geom *g) {
  tg__pool_desc d = {.kind = kind, .planes = x->shape[0] * x->shape[1]};
  for (int i = 0; i < 2; i++) {
    d.in[i] = g->in[i];
    d.out[i] = g->out[i];
    d.k[i] = g->k[i];
    d.s[i] = g->s[i];
    d.p[i] = g->p[i];
    d.d[i] = g->d[i];
  }
  return d;
}

/* One kernel table per device (the dispatch section below). */
typedef struct {
  int (*forward)(const tg__pool_desc *d, const tg_tensor *x, tg_tensor *y,
                 tg_tensor *idx);
  /* dx: uninitialised; every element is written */
  int (*backward)(const tg__pool_desc *d, const tg_tensor *g, const tg_tensor *idx,
                  tg_tensor *dx);
  /* max_unpool2d: backward false, dst[idx[k]] = src[k] in order of k (dst zeroed,
   * the last of duplicate indices wins); true, dst[k] = src[idx[k]] */
  int (*unpool)(const tg_tensor *src, const tg_tensor *idx, tg_tensor *dst,
                bool backward);
} pool_kernels;
static const pool_kernels *pool_pick(const char *op, const tg_tensor *x);

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
  tg__pool_desc d = pool_desc(TG__POOL_MAX, x, &g);
  d.first_nan = true;
  return tg__pool_run(op, x, &d, indices);
}

/* -------------------------------------------------------- max unpool -- */

static int max_unpool_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  const pool_kernels *k = pool_pick(node->op, x);
  tg_tensor *dx = k ? tg__new_like(x) : NULL;
  if (!dx)
    return -1;
  if (k->unpool(g, node->saved[0], dx, true) < 0) {
    tg_tensor_free(dx);
    return -1;
  }
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
  if (x->device.type != indices->device.type ||
      x->device.index != indices->device.index) {
    char a[32], b[32];
    return tg__error("%s: Expected all tensors to be on the same device, but found at "
                     "least two devices, %s and %s!",
                     op, tg__device_str(x->device, a, sizeof a),
                     tg__device_str(indices->device, b, sizeof b)),
           NULL;
  }
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
  const pool_kernels *kern = pool_pick(op, x);
  if (!kern)
    return NULL;
  /* the indices are checked on the host (a copy of device ones) */
  tg_tensor *host = tg__on_cuda(indices) ? tg_tensor_to(indices, TG_CPU) : NULL;
  if (tg__on_cuda(indices) && !host)
    return NULL;
  const int64_t *I = tg__data(host ? host : indices), n = out[0] * out[1];
  for (int64_t k = 0; k < indices->numel; k++)
    if (I[k] < 0 || I[k] >= n) {
      tg__error("%s: Found an invalid max index: %lld (output volumes are of size "
                "%lldx%lld)",
                op, (long long)I[k], (long long)out[0], (long long)out[1]);
      tg_tensor_free(host);
      return NULL;
    }
  tg_tensor_free(host);
  tg_tensor *y =
      tg_zeros(TG_SHAPE(x->shape[0], x->shape[1], out[0], out[1]), x->dtype, x->device);
  /* Duplicate indices come from overlapping windows that chose one input element:
   * PyTorch stores each, the same value; adding them would count it twice. */
  if (!y || kern->unpool(x, indices, y, false) < 0) {
    tg_tensor_free(y);
    return NULL;
  }
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

/* ---------------------------------------------------------- dispatch -- */
/* Every pool of this file, and pool.c's on devices other than the CPU (whose CPU
 * kernels are its own tuned loops), goes through one kernel table per device. */

/* The CPU loops' plan of d: max (whose loop stops at the first NaN, the d.first_nan
 * this file asks for) or avg; adaptive pools stay in pool.c on the CPU. */
static avg_plan plan_of(const tg__pool_desc *d) {
  avg_plan a = {.include_pad = d->include_pad, .divisor = d->divisor};
  for (int i = 0; i < 2; i++) {
    a.g.k[i] = d->k[i];
    a.g.s[i] = d->s[i];
    a.g.p[i] = d->p[i];
    a.g.d[i] = d->d[i];
    a.g.in[i] = d->in[i];
    a.g.out[i] = d->out[i];
  }
  return a;
}

static int pool_forward_cpu(const tg__pool_desc *d, const tg_tensor *x, tg_tensor *y,
                            tg_tensor *idx) {
  const avg_plan a = plan_of(d);
  if (d->kind == TG__POOL_MAX)
    max_pool_ex_kernel(x, &a.g, y, idx);
  else
    avg_ex_kernel(&a, x, y, d->planes, false);
  return 0;
}

static int pool_backward_cpu(const tg__pool_desc *d, const tg_tensor *g,
                             const tg_tensor *idx, tg_tensor *dx) {
  const avg_plan a = plan_of(d);
  if (dx->numel) /* the loops add into dx */
    memset(tg__data(dx), 0, (size_t)dx->numel * tg_dtype_size(dx->dtype));
  if (d->kind == TG__POOL_MAX)
    move_planes(g, idx, dx, d->planes, SCATTER_ADD);
  else
    avg_ex_kernel(&a, g, dx, d->planes, true);
  return 0;
}

static int unpool_cpu(const tg_tensor *src, const tg_tensor *idx, tg_tensor *dst,
                      bool backward) {
  move_planes(src, idx, dst, idx->shape[0] * idx->shape[1],
              backward ? GATHER : SCATTER_STORE);
  return 0;
}

static const pool_kernels pool_cpu = {pool_forward_cpu, pool_backward_cpu, unpool_cpu};

#ifdef TG_HAVE_CUDA
static int pool_forward_cuda(const tg__pool_desc *d, const tg_tensor *x, tg_tensor *y,
                             tg_tensor *idx) {
  return tg__pool_cuda_forward(x->dtype, d, tg__data(x), tg__data(y),
                               idx ? tg__data(idx) : NULL, x->device.index);
}

static int pool_backward_cuda(const tg__pool_desc *d, const tg_tensor *g,
                              const tg_tensor *idx, tg_tensor *dx) {
  return tg__pool_cuda_backward(g->dtype, d, tg__data(g), idx ? tg__data(idx) : NULL,
                                tg__data(dx), g->device.index);
}

static int unpool_cuda(const tg_tensor *src, const tg_tensor *idx, tg_tensor *dst,
                       bool backward) {
  const int64_t planes = idx->shape[0] * idx->shape[1];
  const int64_t n_idx = planes ? idx->numel / planes : 0;
  const int64_t n_big = planes ? (backward ? src : dst)->numel / planes : 0;
  return tg__unpool_cuda(src->dtype, planes, n_idx, n_big, tg__data(src), tg__data(idx),
                         tg__data(dst), backward, src->device.index);
}

static const pool_kernels pool_cuda = {pool_forward_cuda, pool_backward_cuda,
                                       unpool_cuda};
#endif

static const pool_kernels *pool_pick(const char *op, const tg_tensor *x) {
  return tg__pick(op, x, &pool_cpu, TG_IF_CUDA(&pool_cuda));
}

static int pool_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg__pool_desc *d = node->ctx;
  const pool_kernels *k = pool_pick(node->op, node->inputs[0]);
  tg_tensor *dx = k ? tg__new_like(node->inputs[0]) : NULL;
  if (!dx)
    return -1;
  if (k->backward(d, g, d->kind == TG__POOL_MAX ? node->saved[0] : NULL, dx) < 0) {
    tg_tensor_free(dx);
    return -1;
  }
  gi[0] = dx;
  return 0;
}

tg_tensor *tg__pool_run(const char *op, const tg_tensor *x, const tg__pool_desc *d,
                        tg_tensor **indices) {
  const pool_kernels *k = pool_pick(op, x);
  if (!k)
    return NULL;
  int64_t shape[4] = {x->shape[0], x->shape[1], d->out[0], d->out[1]};
  const bool max = d->kind == TG__POOL_MAX;
  tg_tensor *y = tg__new(shape, 4, x->dtype, x->device);
  tg_tensor *idx = max && y ? tg__new(shape, 4, TG_I64, x->device) : NULL;
  if (!y || (max && !idx) || k->forward(d, x, y, idx) < 0) {
    tg_tensor_free(y);
    tg_tensor_free(idx);
    return NULL;
  }
  tg_node *node;
  y = tg__finish(op, y, 1, &x, pool_backward, &node);
  if (node) {
    *(tg__pool_desc *)tg__ctx(node, sizeof *d) = *d;
    if (idx)
      tg__save(node, idx);
  }
  if (indices && y)
    *indices = idx;
  else
    tg_tensor_free(idx);
  return y;
}

tg_avg_pool2d_options tg_avg_pool2d_options_default(int64_t kh, int64_t kw) {
  return (tg_avg_pool2d_options){{kh, kw}, {kh, kw}, {0, 0}, false, true, 0};
}

tg_tensor *tg_avg_pool2d_ex(const tg_tensor *x, const tg_avg_pool2d_options *o) {
  const char *op = "tg_avg_pool2d_ex";
  pool_geom g;
  if (!o)
    return tg__error("%s: argument 'options' is NULL", op), NULL;
  if (geom_check(op, x, o->kernel, o->stride, o->padding, NULL, o->ceil_mode, &g) < 0)
    return NULL;
  if (x->ndim == 3) {
    tg_tensor *xb = tg__add_batch(x);
    tg_tensor *y = tg__drop_batch(tg_avg_pool2d_ex(xb, o));
    tg_tensor_free(xb);
    return y;
  }
  if (!o->ceil_mode && o->count_include_pad && !o->divisor_override)
    return tg_avg_pool2d(x, g.k, g.s, g.p);
  tg__pool_desc d = pool_desc(TG__POOL_AVG, x, &g);
  d.include_pad = o->count_include_pad;
  d.divisor = o->divisor_override;
  return tg__pool_run(op, x, &d, NULL);
}

/* ----------------------------------------------------------- resampling -- */
/* 1 to 3 spatial dims (the input's dims after N and C); every axis runs the same
 * code, and a 1-D or 2-D input is a 3-D one whose leading axes have size 1. */

tg_upsample_options tg_upsample_options_default(void) {
  return (tg_upsample_options){{0, 0, 0}, {0, 0, 0}, false, false};
}

/* PyTorch's compute_scales_value: 1/scale_factor when one was given (and not
 * recomputed), else in/out. */
static double src_scale(const tg_upsample_options *o, int axis, int64_t in, int64_t out) {
  const double sf = o->scale_factor[axis];
  return sf > 0 && !o->recompute_scale_factor ? 1.0 / sf : (double)in / (double)out;
}

/* Output size of each of the nsp spatial axes; the sizes come from scale_factor
 * (floor(in * s)) when one is positive. */
static int resample_plan(const char *op, const tg_tensor *x, const tg_upsample_options *o,
                         int nsp, int64_t out[3]) {
  static const char *const layout[] = {"", "[N, C, L]", "[N, C, H, W]",
                                       "[N, C, D, H, W]"};
  static const char *const axes[][3] = {{""}, {"W"}, {"H", "W"}, {"D", "H", "W"}};
  char s[TG_SHAPE_STR_LEN];
  if (!o)
    return tg__error("%s: argument 'options' is NULL", op);
  if (!tg__nonnull(x, op, "input") || tg__check_same(op, 1, &x, true) < 0)
    return -1;
  if (x->ndim != nsp + 2)
    return tg__error("%s: expected a %dD tensor %s for input, but got input of size %s",
                     op, nsp + 2, layout[nsp], tg_shape_str(x, s, sizeof s));
  bool by_scale = false;
  for (int i = 0; i < nsp; i++)
    by_scale |= o->scale_factor[i] > 0;
  bool empty = false;
  for (int i = 0; i < nsp; i++) {
    const int64_t in = x->shape[2 + i];
    if (by_scale && !(o->scale_factor[i] > 0 && isfinite(o->scale_factor[i])))
      return tg__error("%s: scale_factor must be positive and finite, got %g", op,
                       o->scale_factor[i]);
    const double scaled = floor((double)in * o->scale_factor[i]);
    if (by_scale && !(scaled < 0x1p53)) /* the cast below would overflow */
      return tg__error("%s: scale_factor %g makes an output size of %g, too large", op,
                       o->scale_factor[i], scaled);
    out[i] = by_scale ? (int64_t)scaled : o->size[i];
    empty |= in <= 0 || out[i] <= 0;
  }
  if (empty) { /* PyTorch's message, naming every axis */
    char in_s[96] = "", out_s[96] = "";
    for (int i = 0; i < nsp; i++) {
      const size_t ni = strlen(in_s), no = strlen(out_s);
      snprintf(in_s + ni, sizeof in_s - ni, "%s%s: %lld", i ? ", " : "", axes[nsp][i],
               (long long)x->shape[2 + i]);
      snprintf(out_s + no, sizeof out_s - no, "%s%s: %lld", i ? ", " : "", axes[nsp][i],
               (long long)out[i]);
    }
    return tg__error("%s: Input and output sizes should be greater than 0, but got input "
                     "(%s) output (%s)",
                     op, in_s, out_s);
  }
  return 0;
}

/* backward false: y from x; true: dx += from dy, along the same taps (in double, as
 * PyTorch's CPU kernels; r is never in_dtype here). An axis of one tap contributes no
 * factor, so 1-D and 2-D inputs compute what PyTorch's 1-D and 2-D kernels do (no
 * 0 * x terms that would turn an Inf into NaN). */
static void resample_kernel(const tg__resample_desc *r, const tg_tensor *src,
                            tg_tensor *dst, bool backward) {
  const int64_t D = r->in[0], H = r->in[1], W = r->in[2], planes = r->planes;
  const int64_t OD = r->out[0], OH = r->out[1], OW = r->out[2];
  const bool f32 = src->dtype == TG_F32;
  const void *S = tg__data(src);
  void *X = tg__data(dst);
#pragma omp parallel for num_threads(tg__threads(planes *OD *OH *OW * 4))
  for (int64_t p = 0; p < planes; p++)
    for (int64_t od = 0; od < OD; od++) {
      const tg__tap td = tg__resample_tap(r, 0, od, f32);
      for (int64_t oy = 0; oy < OH; oy++) {
        const tg__tap ty = tg__resample_tap(r, 1, oy, f32);
        for (int64_t ox = 0; ox < OW; ox++) {
          const tg__tap tx = tg__resample_tap(r, 2, ox, f32);
          const int64_t o = ((p * OD + od) * OH + oy) * OW + ox, base = p * D * H * W;
          double acc = 0, g = backward ? ld(S, o, f32) : 0;
          for (int a = 0; a < r->taps[0]; a++)
            for (int b = 0; b < r->taps[1]; b++)
              for (int c = 0; c < r->taps[2]; c++) {
                const int64_t at = base + (td.i[a] * H + ty.i[b]) * W + tx.i[c];
                const double wt = td.w[a] * ty.w[b] * tx.w[c];
                if (backward)
                  st(X, at, ld(X, at, f32) + wt * g, f32);
                else
                  acc += wt * ld(S, at, f32);
              }
          if (!backward)
            st(X, o, acc, f32);
        }
      }
    }
}

/* One kernel table per device, as the pools': backward's dst is uninitialised and
 * every element is written. */
typedef struct {
  int (*run)(const tg__resample_desc *d, const tg_tensor *src, tg_tensor *dst,
             bool backward);
} resample_kernels;

static int resample_cpu(const tg__resample_desc *d, const tg_tensor *src, tg_tensor *dst,
                        bool backward) {
  if (backward && dst->numel) /* the loop adds into dx */
    memset(tg__data(dst), 0, (size_t)dst->numel * tg_dtype_size(dst->dtype));
  resample_kernel(d, src, dst, backward);
  return 0;
}

static const resample_kernels resample_on_cpu = {resample_cpu};

#ifdef TG_HAVE_CUDA
static int resample_cuda(const tg__resample_desc *d, const tg_tensor *src, tg_tensor *dst,
                         bool backward) {
  return tg__resample_cuda(src->dtype, d, tg__data(src), tg__data(dst), backward,
                           src->device.index);
}

static const resample_kernels resample_on_cuda = {resample_cuda};
#endif

static const resample_kernels *resample_pick(const char *op, const tg_tensor *x) {
  return tg__pick(op, x, &resample_on_cpu, TG_IF_CUDA(&resample_on_cuda));
}

static int resample_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  const resample_kernels *k = resample_pick(node->op, x);
  tg_tensor *dx = k ? tg__new_like(x) : NULL;
  if (!dx)
    return -1;
  if (k->run(node->ctx, g, dx, true) < 0) {
    tg_tensor_free(dx);
    return -1;
  }
  gi[0] = dx;
  return 0;
}

tg_tensor *tg__resample_run(const char *op, const tg_tensor *x,
                            const tg__resample_desc *d) {
  const resample_kernels *k = resample_pick(op, x);
  if (!k)
    return NULL;
  const int nsp = x->ndim - 2;
  int64_t shape[5] = {x->shape[0], x->shape[1]};
  for (int i = 0; i < nsp; i++)
    shape[2 + i] = d->out[3 - nsp + i]; /* the spatial dims are the trailing axes */
  tg_tensor *y = tg__new(shape, x->ndim, x->dtype, x->device);
  if (!y || k->run(d, x, y, false) < 0) {
    tg_tensor_free(y);
    return NULL;
  }
  tg_node *node;
  y = tg__finish(op, y, 1, &x, resample_backward, &node);
  if (node)
    *(tg__resample_desc *)tg__ctx(node, sizeof *d) = *d;
  return y;
}

/* Resampling of nsp spatial dims, nearest or linear (bi-, trilinear). */
static tg_tensor *resample(const char *op, const tg_tensor *x,
                           const tg_upsample_options *o, int nsp, bool linear) {
  int64_t out[3] = {0};
  if (resample_plan(op, x, o, nsp, out) < 0)
    return NULL;
  tg__resample_desc r = {.planes = x->shape[0] * x->shape[1],
                         .in = {1, 1, 1},
                         .out = {1, 1, 1},
                         .taps = {1, 1, 1},
                         .align = linear && o->align_corners,
                         .scale = {1, 1, 1},
                         .scale_f = {1, 1, 1}};
  for (int i = 0; i < nsp; i++) {
    const int a = 3 - nsp + i; /* the spatial dims are the trailing axes */
    r.in[a] = x->shape[2 + i];
    r.out[a] = out[i];
    r.scale[a] = src_scale(o, i, r.in[a], out[i]);
    r.scale_f[a] = (float)r.scale[a];
    r.taps[a] = linear ? 2 : 1;
  }
  return tg__resample_run(op, x, &r);
}

tg_tensor *tg_upsample_nearest1d_ex(const tg_tensor *x, const tg_upsample_options *o) {
  return resample("tg_upsample_nearest1d_ex", x, o, 1, false);
}

tg_tensor *tg_upsample_nearest2d_ex(const tg_tensor *x, const tg_upsample_options *o) {
  return resample("tg_upsample_nearest2d_ex", x, o, 2, false);
}

tg_tensor *tg_upsample_nearest3d_ex(const tg_tensor *x, const tg_upsample_options *o) {
  return resample("tg_upsample_nearest3d_ex", x, o, 3, false);
}

tg_tensor *tg_upsample_linear1d_ex(const tg_tensor *x, const tg_upsample_options *o) {
  return resample("tg_upsample_linear1d_ex", x, o, 1, true);
}

tg_tensor *tg_upsample_bilinear2d_ex(const tg_tensor *x, const tg_upsample_options *o) {
  return resample("tg_upsample_bilinear2d_ex", x, o, 2, true);
}

tg_tensor *tg_upsample_trilinear3d_ex(const tg_tensor *x, const tg_upsample_options *o) {
  return resample("tg_upsample_trilinear3d_ex", x, o, 3, true);
}
