/* Reductions: sum and mean over all or some dims, max/argmax over one dim. */
#include "reduce.h"
#include "graph/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* View of a reduction as [outer, r, inner] after merging dims: the reduced dims must
 * be handled one contiguous run at a time, so reductions over several dims are done
 * as a chain over a mask; for the common cases (one dim, trailing dims, all dims)
 * this is a single pass. */
typedef struct {
  bool mask[TG_MAX_DIMS];
  int64_t out_shape[TG_MAX_DIMS]; /* keepdim shape */
  int64_t count;                  /* elements reduced into each output */
} reduce_plan;

static int plan_dims(const tg_tensor *t, const int *dims, int n_dims, const char *op,
                     reduce_plan *p) {
  memset(p, 0, sizeof *p);
  if (n_dims < 0 || (n_dims > 0 && !dims))
    return tg__error("%s: dims is NULL or n_dims negative (%d)", op, n_dims);
  for (int i = 0; i < n_dims; i++) {
    int d = tg__wrap_dim(dims[i], t->ndim, op);
    if (d < 0)
      return -1;
    if (t->ndim == 0)
      continue;
    if (p->mask[d])
      return tg__error("%s: dim %d appears multiple times in the list of dims", op, d);
    p->mask[d] = true;
  }
  p->count = 1;
  for (int i = 0; i < t->ndim; i++) {
    p->out_shape[i] = p->mask[i] ? 1 : t->shape[i];
    if (p->mask[i])
      p->count *= t->shape[i];
  }
  return 0;
}

/* Kernels, one table per device (defined after the CPU kernels). */
typedef struct {
  int (*sum)(const tg_tensor *x, const reduce_plan *p, tg_tensor *out);
  /* x as [outer, r, inner]: first maximum over r; val may be NULL */
  int (*max)(const tg_tensor *x, int64_t outer, int64_t r, int64_t inner, tg_tensor *idx,
             tg_tensor *val);
  /* dx (zeroed) at the maxima = g */
  int (*max_scatter)(const tg_tensor *g, const tg_tensor *idx, int64_t outer, int64_t r,
                     int64_t inner, tg_tensor *dx);
} reduce_kernels;
static const reduce_kernels tg__reduce_cpu;
#ifdef TG_HAVE_CUDA
static const reduce_kernels tg__reduce_cuda;
#endif
#define REDUCE_PICK(op, t) tg__pick(op, t, &tg__reduce_cpu, TG_IF_CUDA(&tg__reduce_cuda))

/* out[o] = sum over masked dims of x; out has the keepdim shape. Accumulates in
 * double for float32 so long reductions do not drift. */
static int sum_cpu(const tg_tensor *x, const reduce_plan *p, tg_tensor *out) {
  int nd = x->ndim;
  int64_t ostride[TG_MAX_DIMS], s = 1;
  for (int i = nd - 1; i >= 0; i--) {
    ostride[i] = p->mask[i] ? 0 : s;
    s *= p->out_shape[i];
  }
  int64_t n_out = out->numel, n_in = x->numel;
  /* Fast path: reduce a trailing contiguous block (e.g. all dims, or [N, C, H*W]). */
  int first_masked = nd;
  bool trailing = true;
  for (int i = 0; i < nd; i++)
    if (p->mask[i] && first_masked == nd)
      first_masked = i;
  for (int i = first_masked; i < nd; i++)
    trailing &= p->mask[i];
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x);
    T *O = tg__data(out);
    if (trailing) {
      int64_t r = n_out ? n_in / n_out : 0;
      _Pragma("omp parallel for num_threads(tg__threads(n_in))") for (int64_t o = 0;
                                                                      o < n_out; o++) {
        double acc = 0;
        const T *row = X + o * r;
        for (int64_t j = 0; j < r; j++)
          acc += row[j];
        O[o] = (T)acc;
      }
    } else {
      double *acc = calloc((size_t)(n_out ? n_out : 1), sizeof *acc);
      int64_t idx[TG_MAX_DIMS] = {0}, o = 0;
      for (int64_t i = 0; i < n_in; i++) {
        acc[o] += X[i];
        for (int d = nd - 1; d >= 0; d--) { /* odometer over x's indices */
          o += ostride[d];
          if (++idx[d] < x->shape[d])
            break;
          o -= ostride[d] * idx[d];
          idx[d] = 0;
        }
      }
      for (int64_t k = 0; k < n_out; k++)
        O[k] = (T)acc[k];
      free(acc);
    }
  });
  return 0;
}

typedef struct {
  double scale; /* 1 for sum, 1/count for mean */
  int64_t keep_shape[TG_MAX_DIMS];
} sum_ctx;

/* d(sum)/dx = g broadcast back over the reduced dims (times 1/count for a mean). */
static int sum_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = n->inputs[0];
  const sum_ctx *c = n->ctx;
  tg_tensor *gk = tg_reshape(g, c->keep_shape, x->ndim);
  tg_tensor *z = tg_zeros(x->shape, x->ndim, x->dtype, x->device);
  tg_tensor *full = tg_add(z, gk);
  if (!full)
    return -1;
  if (c->scale != 1.0)
    tg__scale_(full, c->scale);
  gi[0] = full;
  return 0;
}

static tg_tensor *reduce_sum(const tg_tensor *t, const int *dims, int n_dims, bool all,
                             bool keepdim, bool mean, const char *op) {
  if (!tg__nonnull(t, op, "input"))
    return NULL;
  const reduce_kernels *k;
  if (tg__check_same(op, 1, &t, true) < 0 || !(k = REDUCE_PICK(op, t)))
    return NULL;
  reduce_plan p;
  int all_dims[TG_MAX_DIMS];
  if (all || n_dims == 0) { /* PyTorch: an empty dim list reduces everything */
    for (int i = 0; i < t->ndim; i++)
      all_dims[i] = i;
    dims = all_dims;
    n_dims = t->ndim;
  }
  if (plan_dims(t, dims, n_dims, op, &p) < 0)
    return NULL;
  tg_tensor *out = tg__new(p.out_shape, t->ndim, t->dtype, t->device);
  if (!out)
    return NULL;
  if (k->sum(t, &p, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  double scale = 1.0;
  if (mean) {
    scale = 1.0 / (double)p.count; /* count 0 gives NaN, as PyTorch's mean of empty */
    tg__scale_(out, scale);
  }
  if (!keepdim || all) {
    int64_t sq[TG_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i < t->ndim && !all; i++)
      if (!p.mask[i])
        sq[nd++] = t->shape[i];
    tg_tensor *r = tg__alias(out, sq, nd);
    tg_tensor_free(out);
    out = r;
    if (!out)
      return NULL;
  }
  tg_node *node;
  out = tg__finish(op, out, 1, &t, sum_backward, &node);
  if (node) {
    sum_ctx *c = tg__ctx(node, sizeof *c);
    c->scale = scale;
    memcpy(c->keep_shape, p.out_shape, sizeof c->keep_shape);
  }
  return out;
}

tg_tensor *tg_sum(const tg_tensor *t) {
  return reduce_sum(t, NULL, 0, true, false, false, "tg_sum");
}
tg_tensor *tg_mean(const tg_tensor *t) {
  return reduce_sum(t, NULL, 0, true, false, true, "tg_mean");
}
tg_tensor *tg_sum_dims(const tg_tensor *t, const int *dims, int n_dims, bool keepdim) {
  return reduce_sum(t, dims, n_dims, false, keepdim, false, "tg_sum_dims");
}
tg_tensor *tg_mean_dims(const tg_tensor *t, const int *dims, int n_dims, bool keepdim) {
  return reduce_sum(t, dims, n_dims, false, keepdim, true, "tg_mean_dims");
}

/* ------------------------------------------------------------ max/argmax -- */

static int max_scatter_cpu(const tg_tensor *g, const tg_tensor *idx, int64_t outer,
                           int64_t r, int64_t inner, tg_tensor *dx) {
  const int64_t *I = tg__data(idx);
  TG_DISPATCH_FLOAT(dx->dtype, T, {
    const T *G = tg__data(g);
    T *D = tg__data(dx);
    for (int64_t o = 0; o < outer; o++)
      for (int64_t k = 0; k < inner; k++)
        D[(o * r + I[o * inner + k]) * inner + k] = G[o * inner + k];
  });
  return 0;
}

/* The first maximum (NaN wins) of each [o, :, k] slice. */
static int max_cpu(const tg_tensor *t, int64_t outer, int64_t r, int64_t inner,
                   tg_tensor *idx, tg_tensor *val) {
  int64_t *I = tg__data(idx);
  TG_DISPATCH_FLOAT(t->dtype, T, {
    const T *X = tg__data(t);
    T *V = val ? tg__data(val) : NULL;
    _Pragma(
        "omp parallel for num_threads(tg__threads(t->numel))") for (int64_t o = 0;
                                                                    o < outer;
                                                                    o++) for (int64_t k =
                                                                                  0;
                                                                              k < inner;
                                                                              k++) {
      const T *p = X + o * r * inner + k;
      int64_t best = 0;
      T bv = p[0];
      for (int64_t j = 1; j < r && !isnan(bv); j++)
        if (p[j * inner] > bv || isnan(p[j * inner])) {
          bv = p[j * inner];
          best = j;
        }
      I[o * inner + k] = best;
      if (V)
        V[o * inner + k] = bv;
    }
  });
  return 0;
}

static const reduce_kernels tg__reduce_cpu = {sum_cpu, max_cpu, max_scatter_cpu};

#ifdef TG_HAVE_CUDA
static int sum_cuda(const tg_tensor *x, const reduce_plan *p, tg_tensor *out) {
  int64_t kshape[TG_MAX_DIMS], kstride[TG_MAX_DIMS], rshape[TG_MAX_DIMS],
      rstride[TG_MAX_DIMS], s = 1;
  int kn = 0, rn = 0;
  int64_t strides[TG_MAX_DIMS];
  for (int i = x->ndim - 1; i >= 0; i--) {
    strides[i] = s;
    s *= x->shape[i];
  }
  for (int i = 0; i < x->ndim; i++) {
    if (p->mask[i]) {
      rshape[rn] = x->shape[i];
      rstride[rn++] = strides[i];
    } else {
      kshape[kn] = x->shape[i];
      kstride[kn++] = strides[i];
    }
  }
  return tg__reduce_cuda_sum(x->dtype, tg__data(x), kn, kshape, kstride, rn, rshape,
                             rstride, out->numel, p->count, tg__data(out),
                             x->device.index);
}

static int max_cuda(const tg_tensor *t, int64_t outer, int64_t r, int64_t inner,
                    tg_tensor *idx, tg_tensor *val) {
  return tg__reduce_cuda_max(t->dtype, tg__data(t), outer, r, inner, tg__data(idx),
                             val ? tg__data(val) : NULL, t->device.index);
}

static int max_scatter_cuda(const tg_tensor *g, const tg_tensor *idx, int64_t outer,
                            int64_t r, int64_t inner, tg_tensor *dx) {
  return tg__reduce_cuda_max_scatter(dx->dtype, tg__data(g), tg__data(idx), outer, r,
                                     inner, tg__data(dx), dx->device.index);
}

static const reduce_kernels tg__reduce_cuda = {sum_cuda, max_cuda, max_scatter_cuda};
#endif

/* Gradient flows to the (first) arg max of each slice. */
static int max_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = n->inputs[0], *idx = n->saved[0];
  int dim = *(int *)n->ctx;
  int64_t outer = 1, inner = 1, r = x->shape[dim];
  for (int i = 0; i < dim; i++)
    outer *= x->shape[i];
  for (int i = dim + 1; i < x->ndim; i++)
    inner *= x->shape[i];
  const reduce_kernels *k = REDUCE_PICK("tg_max_dim", x);
  tg_tensor *dx = k ? tg_zeros(x->shape, x->ndim, x->dtype, x->device) : NULL;
  if (!dx || k->max_scatter(g, idx, outer, r, inner, dx) < 0)
    return -1;
  gi[0] = dx;
  return 0;
}

static tg_tensor *max_impl(const tg_tensor *t, int dim, bool keepdim, tg_tensor **indices,
                           bool want_values, const char *op) {
  if (indices)
    *indices = NULL;
  if (!tg__nonnull(t, op, "input"))
    return NULL;
  const reduce_kernels *kt;
  if (tg__check_same(op, 1, &t, true) < 0 || !(kt = REDUCE_PICK(op, t)))
    return NULL;
  int d = tg__wrap_dim(dim, t->ndim, op);
  if (d < 0)
    return NULL;
  if (t->ndim == 0) { /* a 0-dim tensor is its own max, at index 0 */
    tg_tensor *idx = tg_zeros(NULL, 0, TG_I64, t->device);
    if (!want_values || !idx)
      return idx;
    tg_tensor *val = tg_reshape(t, NULL, 0);
    if (indices && val)
      *indices = idx;
    else
      tg_tensor_free(idx);
    return val;
  }
  if (t->shape[d] == 0) {
    char buf[TG_SHAPE_STR_LEN];
    return tg__error("%s: Expected reduction dim %d to have non-zero size (input shape "
                     "%s)",
                     op, d, tg_shape_str(t, buf, sizeof buf)),
           NULL;
  }
  int64_t oshape[TG_MAX_DIMS], outer = 1, inner = 1, r = t->shape[d];
  int ond = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i < d)
      outer *= t->shape[i];
    if (i > d)
      inner *= t->shape[i];
    if (i != d)
      oshape[ond++] = t->shape[i];
    else if (keepdim)
      oshape[ond++] = 1;
  }
  tg_tensor *idx = tg__new(oshape, ond, TG_I64, t->device);
  tg_tensor *val = want_values ? tg__new(oshape, ond, t->dtype, t->device) : NULL;
  if (!idx || (want_values && !val)) {
    tg_tensor_free(idx);
    tg_tensor_free(val);
    return NULL;
  }
  if (kt->max(t, outer, r, inner, idx, val) < 0) {
    tg_tensor_free(idx);
    tg_tensor_free(val);
    return NULL;
  }
  if (!want_values)
    return idx;
  tg_node *node;
  val = tg__finish(op, val, 1, &t, max_backward, &node);
  if (node) {
    tg__save(node, idx);
    *(int *)tg__ctx(node, sizeof(int)) = d;
  }
  if (indices && val)
    *indices = idx;
  else
    tg_tensor_free(idx);
  return val;
}

tg_tensor *tg_max_dim(const tg_tensor *t, int dim, bool keepdim, tg_tensor **indices) {
  return max_impl(t, dim, keepdim, indices, true, "tg_max_dim");
}

tg_tensor *tg_argmax(const tg_tensor *t, int dim, bool keepdim) {
  return max_impl(t, dim, keepdim, NULL, false, "tg_argmax");
}
