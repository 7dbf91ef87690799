/* Shape ops. Tensors are always contiguous, so reshape-like ops are free aliases of
 * the storage and permute/narrow/cat copy. */
#include "graph/internal.h"
#include "runtime/cuda.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ reshape -- */

static int reshape_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = n->inputs[0];
  gi[0] = tg__alias(g, x->shape, x->ndim);
  return gi[0] ? 0 : -1;
}

static tg_tensor *reshape_impl(const tg_tensor *t, const int64_t *shape, int ndim,
                               const char *op) {
  if (!tg__nonnull(t, op, "input"))
    return NULL;
  if (ndim < 0 || ndim > TG_MAX_DIMS || (ndim > 0 && !shape))
    return tg__error("%s: expected 0..%d dims and a non-NULL shape, got ndim %d", op,
                     TG_MAX_DIMS, ndim),
           NULL;
  int64_t s[TG_MAX_DIMS], span = 1;
  bool overflow = false, zero = false;
  int infer = -1;
  for (int i = 0; i < ndim; i++) {
    s[i] = shape[i];
    if (s[i] == -1) {
      if (infer >= 0)
        return tg__error("%s: only one dimension can be inferred", op), NULL;
      infer = i;
    } else if (s[i] < 0) {
      return tg__error("%s: invalid shape dimension %lld", op, (long long)s[i]), NULL;
    } else if (s[i] == 0) {
      zero = true;
    } else { /* the sizes other than 0 multiply within int64, as tg__check_shape asks */
      overflow |= __builtin_mul_overflow(span, s[i], &span);
    }
  }
  const int64_t known = zero ? 0 : span;
  bool valid = !overflow;
  if (valid && infer >= 0) {
    valid = known > 0 && t->numel % known == 0;
    if (valid)
      s[infer] = t->numel / known;
  } else if (valid) {
    valid = known == t->numel;
  }
  if (!valid) {
    char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
    return tg__error("%s: shape '%s' is invalid for input of size %lld (input shape %s)",
                     op, tg__shape_fmt(shape, ndim, a, sizeof a), (long long)t->numel,
                     tg_shape_str(t, b, sizeof b)),
           NULL;
  }
  tg_tensor *out = tg__alias(t, s, ndim);
  return tg__finish(op, out, 1, &t, reshape_backward, NULL);
}

tg_tensor *tg_reshape(const tg_tensor *t, const int64_t *shape, int ndim) {
  return reshape_impl(t, shape, ndim, "tg_reshape");
}

tg_tensor *tg_view(const tg_tensor *t, const int64_t *shape, int ndim) {
  return reshape_impl(t, shape, ndim, "tg_view");
}

tg_tensor *tg_flatten(const tg_tensor *t, int start_dim, int end_dim) {
  if (!tg__nonnull(t, "tg_flatten", "input"))
    return NULL;
  if (t->ndim == 0)
    return reshape_impl(t, (int64_t[]){1}, 1, "tg_flatten");
  int s = tg__wrap_dim(start_dim, t->ndim, "tg_flatten");
  int e = s < 0 ? -1 : tg__wrap_dim(end_dim, t->ndim, "tg_flatten");
  if (e < 0)
    return NULL;
  if (s > e)
    return tg__error("tg_flatten: start_dim (%d) cannot come after end_dim (%d)", s, e),
           NULL;
  int64_t shape[TG_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i <= s || i > e)
      shape[nd++] = t->shape[i];
    else
      shape[nd - 1] *= t->shape[i];
  }
  return reshape_impl(t, shape, nd, "tg_flatten");
}

tg_tensor *tg_squeeze(const tg_tensor *t, int dim) {
  if (!tg__nonnull(t, "tg_squeeze", "input"))
    return NULL;
  int d = tg__wrap_dim(dim, t->ndim, "tg_squeeze");
  if (d < 0)
    return NULL;
  int64_t shape[TG_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++)
    if (i != d || t->shape[i] != 1)
      shape[nd++] = t->shape[i];
  return reshape_impl(t, shape, nd, "tg_squeeze");
}

tg_tensor *tg_squeeze_dims(const tg_tensor *t, const int *dims, int n_dims) {
  const char *op = "tg_squeeze_dims";
  if (!tg__nonnull(t, op, "input"))
    return NULL;
  bool seen[TG_MAX_DIMS] = {false};
  for (int i = 0; i < n_dims; i++) {
    int d = tg__wrap_dim(dims[i], t->ndim, op);
    if (d < 0)
      return NULL;
    if (seen[d])
      return tg__error("%s: dim %d appears multiple times in the list of dims", op, d),
             NULL;
    seen[d] = true;
  }
  int64_t shape[TG_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++)
    if (!seen[i] || t->shape[i] != 1)
      shape[nd++] = t->shape[i];
  return reshape_impl(t, shape, nd, op);
}

tg_tensor *tg_squeeze_all(const tg_tensor *t) {
  if (!tg__nonnull(t, "tg_squeeze_all", "input"))
    return NULL;
  int64_t shape[TG_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++)
    if (t->shape[i] != 1)
      shape[nd++] = t->shape[i];
  return reshape_impl(t, shape, nd, "tg_squeeze_all");
}

tg_tensor *tg_unsqueeze(const tg_tensor *t, int dim) {
  if (!tg__nonnull(t, "tg_unsqueeze", "input"))
    return NULL;
  if (t->ndim == TG_MAX_DIMS)
    return tg__error("tg_unsqueeze: tensor already has the maximum of %d dims",
                     TG_MAX_DIMS),
           NULL;
  int d = tg__wrap_dim(dim, t->ndim + 1, "tg_unsqueeze");
  if (d < 0)
    return NULL;
  int64_t shape[TG_MAX_DIMS];
  int nd = 0;
  for (int i = 0; i <= t->ndim; i++) {
    if (i == d)
      shape[nd++] = 1;
    if (i < t->ndim)
      shape[nd++] = t->shape[i];
  }
  return reshape_impl(t, shape, nd, "tg_unsqueeze");
}

/* ------------------------------------------------------------ permute -- */

/* Kernels, one table per device (defined after the CPU kernels). */
typedef struct {
  int (*permute)(const tg_tensor *x, const int *perm, tg_tensor *out);
  /* dst's [outer, dst_start .. +len, inner] block = src's [outer, src_start .., inner],
   * the two tensors differing only in `dim` */
  int (*copy_block)(const tg_tensor *src, int64_t src_start, tg_tensor *dst,
                    int64_t dst_start, int dim, int64_t len);
} shape_kernels;
static const shape_kernels tg__shape_cpu;
#ifdef TG_HAVE_CUDA
static const shape_kernels tg__shape_cuda;
#endif
#define SHAPE_PICK(op, t) tg__pick(op, t, &tg__shape_cpu, TG_IF_CUDA(&tg__shape_cuda))

/* Strides in elements of x's contiguous layout and, per dim i of out, the stride in x
 * of out's dim i. */
static void permute_strides(const tg_tensor *x, const int *perm, int64_t *xstride,
                            int64_t *ostr) {
  int64_t s = 1;
  for (int i = x->ndim - 1; i >= 0; i--) {
    xstride[i] = s;
    s *= x->shape[i];
  }
  for (int i = 0; i < x->ndim; i++)
    ostr[i] = xstride[perm[i]];
}

/* out[i_0..i_k] = x[i_perm^-1...]: walk out in order, map to x offsets. */
static int permute_cpu(const tg_tensor *x, const int *perm, tg_tensor *out) {
  int nd = x->ndim;
  int64_t xstride[TG_MAX_DIMS], ostr[TG_MAX_DIMS];
  permute_strides(x, perm, xstride, ostr);
  size_t es = tg_dtype_size(x->dtype);
  const char *X = tg__data(x);
  char *O = tg__data(out);
  int64_t inner = nd ? out->shape[nd - 1] : 1;
  int64_t rows = inner ? out->numel / inner : 0;
  int64_t istride = nd ? ostr[nd - 1] : 1;
  _Pragma("omp parallel for num_threads(tg__threads(out->numel))") for (int64_t r = 0;
                                                                        r < rows; r++) {
    int64_t off = 0, rem = r;
    for (int d = nd - 2; d >= 0; d--) {
      off += (rem % out->shape[d]) * ostr[d];
      rem /= out->shape[d];
    }
    char *po = O + (size_t)(r * inner) * es;
    if (es == 4)
      for (int64_t j = 0; j < inner; j++)
        ((float *)po)[j] = ((const float *)X)[off + j * istride];
    else
      for (int64_t j = 0; j < inner; j++)
        ((double *)po)[j] = ((const double *)X)[off + j * istride];
  }
  return 0;
}

static int permute_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  const int *perm = n->ctx;
  int inv[TG_MAX_DIMS];
  for (int i = 0; i < g->ndim; i++)
    inv[perm[i]] = i;
  gi[0] = tg_permute(g, inv, g->ndim);
  return gi[0] ? 0 : -1;
}

tg_tensor *tg_permute(const tg_tensor *t, const int *dims, int ndim) {
  if (!tg__nonnull(t, "tg_permute", "input"))
    return NULL;
  if (ndim != t->ndim || (ndim && !dims)) {
    char a[TG_SHAPE_STR_LEN];
    return tg__error("tg_permute: number of dims don't match in permute: the input has "
                     "%d dims (shape %s) but %d were given",
                     t->ndim, tg_shape_str(t, a, sizeof a), ndim),
           NULL;
  }
  int perm[TG_MAX_DIMS];
  bool seen[TG_MAX_DIMS] = {false};
  int64_t shape[TG_MAX_DIMS];
  for (int i = 0; i < ndim; i++) {
    int d = tg__wrap_dim(dims[i], ndim, "tg_permute");
    if (d < 0)
      return NULL;
    if (seen[d])
      return tg__error("tg_permute: repeated dim %d in permute", d), NULL;
    seen[d] = true;
    perm[i] = d;
    shape[i] = t->shape[d];
  }
  const shape_kernels *k = SHAPE_PICK("tg_permute", t);
  tg_tensor *out = k ? tg__new(shape, ndim, t->dtype, t->device) : NULL;
  if (!out)
    return NULL;
  if (k->permute(t, perm, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  tg_node *node;
  out = tg__finish("tg_permute", out, 1, &t, permute_backward, &node);
  if (node)
    memcpy(tg__ctx(node, sizeof perm), perm, sizeof perm);
  return out;
}

tg_tensor *tg_transpose(const tg_tensor *t, int dim0, int dim1) {
  if (!tg__nonnull(t, "tg_transpose", "input"))
    return NULL;
  int a = tg__wrap_dim(dim0, t->ndim, "tg_transpose");
  int b = a < 0 ? -1 : tg__wrap_dim(dim1, t->ndim, "tg_transpose");
  if (b < 0)
    return NULL;
  if (t->ndim == 0)
    return tg_reshape(t, NULL, 0);
  int perm[TG_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++)
    perm[i] = i;
  perm[a] = b;
  perm[b] = a;
  return tg_permute(t, perm, t->ndim);
}

tg_tensor *tg_contiguous(const tg_tensor *t) { return tg_clone(t); }

/* ------------------------------------------------------------- narrow & cat -- */

/* Copies a [outer, len, inner] block between tensors that differ only in `dim`. */
static int copy_block_cpu(const tg_tensor *src, int64_t src_start, tg_tensor *dst,
                          int64_t dst_start, int dim, int64_t len) {
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; i++)
    outer *= src->shape[i];
  for (int i = dim + 1; i < src->ndim; i++)
    inner *= src->shape[i];
  size_t es = tg_dtype_size(src->dtype);
  const char *S = tg__data(src);
  char *D = tg__data(dst);
  int64_t sd = src->shape[dim], dd = dst->shape[dim];
#pragma omp parallel for num_threads(tg__threads(outer *len *inner))
  for (int64_t o = 0; o < outer; o++)
    memcpy(D + (size_t)((o * dd + dst_start) * inner) * es,
           S + (size_t)((o * sd + src_start) * inner) * es, (size_t)(len * inner) * es);
  return 0;
}

static const shape_kernels tg__shape_cpu = {permute_cpu, copy_block_cpu};

#ifdef TG_HAVE_CUDA
static int permute_cuda(const tg_tensor *x, const int *perm, tg_tensor *out) {
  int64_t xstride[TG_MAX_DIMS], ostr[TG_MAX_DIMS], contiguous[TG_MAX_DIMS], s = 1;
  permute_strides(x, perm, xstride, ostr);
  for (int i = out->ndim - 1; i >= 0; i--) {
    contiguous[i] = s;
    s *= out->shape[i];
  }
  return tg__cuda_strided_copy(tg__data(out), contiguous, 0, tg__data(x), ostr, 0,
                               out->shape, out->ndim, out->numel, tg_dtype_size(x->dtype),
                               x->device.index);
}

static int copy_block_cuda(const tg_tensor *src, int64_t src_start, tg_tensor *dst,
                           int64_t dst_start, int dim, int64_t len) {
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; i++)
    outer *= src->shape[i];
  for (int i = dim + 1; i < src->ndim; i++)
    inner *= src->shape[i];
  const int64_t shape[3] = {outer, len, inner};
  const int64_t ss[3] = {src->shape[dim] * inner, inner, 1};
  const int64_t ds[3] = {dst->shape[dim] * inner, inner, 1};
  return tg__cuda_strided_copy(tg__data(dst), ds, dst_start * inner, tg__data(src), ss,
                               src_start * inner, shape, 3, outer * len * inner,
                               tg_dtype_size(src->dtype), src->device.index);
}

static const shape_kernels tg__shape_cuda = {permute_cuda, copy_block_cuda};
#endif

typedef struct {
  int dim;
  int64_t start;
} narrow_ctx;

static int narrow_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  const narrow_ctx *c = n->ctx;
  const tg_tensor *x = n->inputs[0];
  const shape_kernels *k = SHAPE_PICK("tg_narrow", x);
  tg_tensor *dx = k ? tg_zeros(x->shape, x->ndim, x->dtype, x->device) : NULL;
  if (!dx || k->copy_block(g, 0, dx, c->start, c->dim, g->shape[c->dim]) < 0)
    return -1;
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_narrow(const tg_tensor *t, int dim, int64_t start, int64_t length) {
  if (!tg__nonnull(t, "tg_narrow", "input"))
    return NULL;
  if (t->ndim == 0)
    return tg__error("tg_narrow: narrow() cannot be applied to a 0-dim tensor"), NULL;
  int d = tg__wrap_dim(dim, t->ndim, "tg_narrow");
  if (d < 0)
    return NULL;
  int64_t size = t->shape[d];
  if (start < -size || start > size)
    return tg__error("tg_narrow: start out of range (expected to be in range of [%lld, "
                     "%lld], but got %lld)",
                     (long long)-size, (long long)size, (long long)start),
           NULL;
  if (length < 0)
    return tg__error("tg_narrow: narrow(): length must be non-negative (got %lld)",
                     (long long)length),
           NULL;
  if (start < 0)
    start += size;
  if (start > size - length) {
    char a[TG_SHAPE_STR_LEN];
    return tg__error("tg_narrow: start (%lld) + length (%lld) exceeds dimension size "
                     "(%lld) of dim %d (shape %s)",
                     (long long)start, (long long)length, (long long)size, d,
                     tg_shape_str(t, a, sizeof a)),
           NULL;
  }
  const shape_kernels *k = SHAPE_PICK("tg_narrow", t);
  if (!k)
    return NULL;
  int64_t shape[TG_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  shape[d] = length;
  tg_tensor *out = tg__new(shape, t->ndim, t->dtype, t->device);
  if (!out)
    return NULL;
  if (k->copy_block(t, start, out, 0, d, length) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  if (!tg__is_float(t->dtype))
    return out;
  tg_node *node;
  out = tg__finish("tg_narrow", out, 1, &t, narrow_backward, &node);
  if (node) {
    narrow_ctx *c = tg__ctx(node, sizeof *c);
    c->dim = d;
    c->start = start;
  }
  return out;
}

static int cat_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  int dim = *(int *)n->ctx;
  int64_t off = 0;
  const shape_kernels *k = SHAPE_PICK("tg_cat", g);
  if (!k)
    return -1;
  for (int i = 0; i < n->n_inputs; i++) {
    const tg_tensor *x = n->inputs[i];
    if (tg__input_needs_grad(n, i)) {
      gi[i] = tg__new(x->shape, x->ndim, x->dtype, x->device);
      if (!gi[i] || k->copy_block(g, off, gi[i], 0, dim, x->shape[dim]) < 0)
        return -1;
    }
    off += x->shape[dim];
  }
  return 0;
}

/* PyTorch's legacy rule: 1-D tensors of size 0 are skipped, whatever the others'
 * shapes. Returns how many of tensors remain in kept (all of them when every one is
 * such an empty vector, so that the result is one too). */
static int cat_skip_legacy_empty(tg_tensor *const *tensors, int n, tg_tensor **kept) {
  int m = 0;
  for (int i = 0; i < n; i++)
    if (!(tensors[i]->ndim == 1 && tensors[i]->shape[0] == 0))
      kept[m++] = tensors[i];
  if (m == 0)
    for (; m < n; m++)
      kept[m] = tensors[m];
  return m;
}

tg_tensor *tg_cat(tg_tensor *const *tensors, int n, int dim) {
  if (n <= 0 || !tensors)
    return tg__error("tg_cat: expected a non-empty list of tensors"), NULL;
  for (int i = 0; i < n; i++)
    if (!tg__nonnull(tensors[i], "tg_cat", "tensors[i]"))
      return NULL;
  tg_tensor *kept_small[16],
      **kept = n <= 16 ? kept_small : malloc((size_t)n * sizeof *kept);
  if (!kept)
    return tg__error("tg_cat: out of memory"), NULL;
  int m = cat_skip_legacy_empty(tensors, n, kept);
  if (m < n) {
    tg_tensor *r = tg_cat(kept, m, dim);
    if (kept != kept_small)
      free(kept);
    return r;
  }
  if (kept != kept_small)
    free(kept);
  const tg_tensor *const *ts = (const tg_tensor *const *)tensors;
  if (tg__check_same("tg_cat", n, ts, false) < 0)
    return NULL;
  const tg_tensor *first = ts[0];
  int d = tg__wrap_dim(dim, first->ndim, "tg_cat");
  if (d < 0)
    return NULL;
  if (first->ndim == 0)
    return tg__error("tg_cat: zero-dimensional tensor (at position 0) cannot be "
                     "concatenated"),
           NULL;
  int64_t shape[TG_MAX_DIMS];
  memcpy(shape, first->shape, sizeof shape);
  shape[d] = 0;
  for (int i = 0; i < n; i++) {
    const tg_tensor *t = ts[i];
    bool ok = t->ndim == first->ndim;
    for (int k = 0; ok && k < t->ndim; k++)
      ok = k == d || t->shape[k] == first->shape[k];
    if (!ok) {
      char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
      return tg__error("tg_cat: Sizes of tensors must match except in dimension %d. "
                       "Expected a tensor like %s but got %s for tensor number %d in the "
                       "list",
                       d, tg_shape_str(first, a, sizeof a), tg_shape_str(t, b, sizeof b),
                       i),
             NULL;
    }
    shape[d] += t->shape[d];
  }
  const shape_kernels *k = SHAPE_PICK("tg_cat", first);
  tg_tensor *out = k ? tg__new(shape, first->ndim, first->dtype, first->device) : NULL;
  if (!out)
    return NULL;
  int64_t off = 0;
  for (int i = 0; i < n; i++) {
    if (k->copy_block(ts[i], 0, out, off, d, ts[i]->shape[d]) < 0) {
      tg_tensor_free(out);
      return NULL;
    }
    off += ts[i]->shape[d];
  }
  if (!tg__is_float(first->dtype))
    return out;
  tg_node *node;
  out = tg__finish("tg_cat", out, n, ts, cat_backward, &node);
  if (node)
    *(int *)tg__ctx(node, sizeof(int)) = d;
  return out;
}
