/* tg_upsample_nearest2d_cat: cat([upsample_nearest2d(a, skip's size), skip], dim 1),
 * the decoder step of a U-Net, in one pass: the upsampled a is written straight into
 * its channels of the output, and the backward sums the output gradient's blocks into
 * da and copies the skip part, so neither the upsampled tensor nor its gradient is
 * ever made (in a training step they were a tensor of the output's first channels,
 * written and read twice each way). Integer scale factors only: for them nearest
 * sampling is source pixel (oy / sh, ox / sw) exactly. */
#include "ops/shape/upsample_cat.h"
#include "graph/internal.h"

#include <string.h>

static const char *const OP = "tg_upsample_nearest2d_cat";

typedef tg__ucat_dims ucat_dims;

/* Output plane p = (image b, channel c): the upsampled a for c < ca, skip after. */
static void ucat_forward_plane(const ucat_dims *d, const tg_tensor *a,
                               const tg_tensor *skip, tg_tensor *out, int64_t p) {
  const int64_t H = d->h * d->sh, W = d->w * d->sw, C = d->ca + d->cs;
  const int64_t b = p / C, c = p % C;
  const size_t es = tg_dtype_size(a->dtype);
  char *y = (char *)tg__data(out) + (size_t)(p * H * W) * es;
  if (c >= d->ca) {
    memcpy(y,
           (const char *)tg__data(skip) + (size_t)((b * d->cs + c - d->ca) * H * W) * es,
           (size_t)(H * W) * es);
    return;
  }
  const int64_t src = (b * d->ca + c) * d->h * d->w;
  TG_DISPATCH_FLOAT(a->dtype, T, {
    const T *x = (const T *)tg__data(a) + src;
    for (int64_t i = 0; i < d->h; i++) {
      T *row = (T *)y + i * d->sh * W;
      for (int64_t j = 0; j < d->w; j++)
        for (int64_t v = 0; v < d->sw; v++)
          row[j * d->sw + v] = x[i * d->w + j];
      for (int64_t u = 1; u < d->sh; u++)
        memcpy(row + u * W, row, (size_t)W * sizeof(T));
    }
  });
}

/* Gradient plane p: into da, each pixel the sum of its sh x sw block (summed in the
 * order tg_upsample_nearest2d's backward sums it), or into dskip, a copy. */
static void ucat_backward_plane(const ucat_dims *d, const tg_tensor *g, tg_tensor *da,
                                tg_tensor *ds, int64_t p) {
  const int64_t H = d->h * d->sh, W = d->w * d->sw, C = d->ca + d->cs;
  const int64_t b = p / C, c = p % C;
  const size_t es = tg_dtype_size(g->dtype);
  const char *gp = (const char *)tg__data(g) + (size_t)(p * H * W) * es;
  if (c >= d->ca) {
    if (ds)
      memcpy((char *)tg__data(ds) + (size_t)((b * d->cs + c - d->ca) * H * W) * es, gp,
             (size_t)(H * W) * es);
    return;
  }
  if (!da)
    return;
  const int64_t dst = (b * d->ca + c) * d->h * d->w;
  TG_DISPATCH_FLOAT(g->dtype, T, {
    const T *G = (const T *)gp;
    T *D = (T *)tg__data(da) + dst;
    for (int64_t i = 0; i < d->h; i++)
      for (int64_t j = 0; j < d->w; j++) {
        T s = 0;
        for (int64_t u = 0; u < d->sh; u++)
          for (int64_t v = 0; v < d->sw; v++)
            s += G[(i * d->sh + u) * W + j * d->sw + v];
        D[i * d->w + j] = s;
      }
  });
}

/* One kernel table per device. backward: da and ds may be NULL (inputs that need no
 * gradient); every element of the others is written. */
typedef struct {
  int (*forward)(const ucat_dims *d, const tg_tensor *a, const tg_tensor *skip,
                 tg_tensor *out);
  int (*backward)(const ucat_dims *d, const tg_tensor *g, tg_tensor *da, tg_tensor *ds);
} ucat_kernels;

static int ucat_forward_cpu(const ucat_dims *d, const tg_tensor *a, const tg_tensor *skip,
                            tg_tensor *out) {
#pragma omp parallel for num_threads(tg__threads(out->numel))
  for (int64_t p = 0; p < d->n * (d->ca + d->cs); p++)
    ucat_forward_plane(d, a, skip, out, p);
  return 0;
}

static int ucat_backward_cpu(const ucat_dims *d, const tg_tensor *g, tg_tensor *da,
                             tg_tensor *ds) {
  const int64_t planes = d->n * (d->ca + d->cs);
#pragma omp parallel for num_threads(tg__threads(g->numel))
  for (int64_t p = 0; p < planes; p++)
    ucat_backward_plane(d, g, da, ds, p);
  return 0;
}

static const ucat_kernels ucat_cpu = {ucat_forward_cpu, ucat_backward_cpu};

#ifdef TG_HAVE_CUDA
static int ucat_forward_cuda(const ucat_dims *d, const tg_tensor *a,
                             const tg_tensor *skip, tg_tensor *out) {
  return tg__ucat_cuda_forward(a->dtype, d, tg__data(a), tg__data(skip), tg__data(out),
                               a->device.index);
}

static int ucat_backward_cuda(const ucat_dims *d, const tg_tensor *g, tg_tensor *da,
                              tg_tensor *ds) {
  return tg__ucat_cuda_backward(g->dtype, d, tg__data(g), da ? tg__data(da) : NULL,
                                ds ? tg__data(ds) : NULL, g->device.index);
}

static const ucat_kernels ucat_cuda = {ucat_forward_cuda, ucat_backward_cuda};
#endif

static const ucat_kernels *ucat_pick(const tg_tensor *x) {
  return tg__pick(OP, x, &ucat_cpu, TG_IF_CUDA(&ucat_cuda));
}

static int ucat_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const ucat_dims *d = node->ctx;
  const ucat_kernels *k = ucat_pick(g);
  const bool need_a = tg__input_needs_grad(node, 0),
             need_s = tg__input_needs_grad(node, 1);
  if (!k || (need_a && !(gi[0] = tg__new_like(node->inputs[0]))) ||
      (need_s && !(gi[1] = tg__new_like(node->inputs[1]))))
    return -1;
  return k->backward(d, g, gi[0], gi[1]);
}

tg_tensor *tg_upsample_nearest2d_cat(const tg_tensor *a, const tg_tensor *skip) {
  if (!tg__nonnull(a, OP, "input") || !tg__nonnull(skip, OP, "skip"))
    return NULL;
  const tg_tensor *in[2] = {a, skip};
  if (tg__check_same(OP, 2, in, true) < 0)
    return NULL;
  char sa[TG_SHAPE_STR_LEN], ss[TG_SHAPE_STR_LEN];
  tg_shape_str(a, sa, sizeof sa);
  tg_shape_str(skip, ss, sizeof ss);
  if (a->ndim != 4 || skip->ndim != 4)
    return tg__error("%s: expected 4-dimensional input and skip [N, C, H, W], but got "
                     "input of size %s and skip of size %s",
                     OP, sa, ss),
           NULL;
  if (a->shape[0] != skip->shape[0])
    return tg__error("%s: Sizes of tensors must match except in dimension 1. Expected "
                     "size %lld but got size %lld for skip (input %s, skip %s)",
                     OP, (long long)a->shape[0], (long long)skip->shape[0], sa, ss),
           NULL;
  const int64_t h = a->shape[2], w = a->shape[3], H = skip->shape[2], W = skip->shape[3];
  if (h <= 0 || w <= 0 || H % h != 0 || W % w != 0 || H == 0 || W == 0)
    return tg__error("%s: skip's size must be a positive integer multiple of input's "
                     "(nearest upsampling by integer factors), but got input %s and "
                     "skip %s",
                     OP, sa, ss),
           NULL;
  const ucat_kernels *k = ucat_pick(a);
  if (!k)
    return NULL;
  ucat_dims d = {a->shape[0], a->shape[1], skip->shape[1], h, w, H / h, W / w};
  int64_t shape[4] = {d.n, d.ca + d.cs, H, W};
  if (tg__check_shape(shape, 4, a->dtype, OP) < 0)
    return NULL;
  tg_tensor *out = tg__new(shape, 4, a->dtype, a->device);
  if (!out || k->forward(&d, a, skip, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  tg_node *node;
  out = tg__finish(OP, out, 2, in, ucat_backward, &node);
  if (node)
    *(ucat_dims *)tg__ctx(node, sizeof d) = d;
  return out;
}
