/* Dropout: keeps each element with probability 1 - p, scaled by 1/(1 - p).
 *
 * The mask is dropout.h's pure function of one key drawn from the global generator
 * and the element's index, the same on every device. The forward fills it in
 * parallel, the same for a seed whatever the thread count, and the backward
 * regenerates it from the key instead of keeping an [N, ...] mask in memory:
 * dx = g * mask * scale. */
#include "ops/dropout/dropout.h"
#include "graph/internal.h"

#include <math.h>

/* dst[i] = mask_i * scale * src[i] for i in [i0, i1). */
static void mask_block(const tg__dropout_mask *m, tg_dtype dtype, const void *src,
                       void *dst, int64_t i0, int64_t i1) {
  TG_DISPATCH_FLOAT(dtype, T, {
    const T *S = src;
    T *D = dst;
    const T scale = (T)m->scale;
    for (int64_t i = i0; i < i1; i++)
      D[i] = S[i] * (tg__dropout_keep(m, i) ? scale : (T)0); /* NaN * 0 stays NaN */
  });
}

/* One kernel table per device: dst = mask * scale * src, the forward on x, the
 * backward on g. */
typedef struct {
  int (*apply)(const tg__dropout_mask *m, const tg_tensor *src, tg_tensor *dst);
} dropout_kernels;

static int apply_cpu(const tg__dropout_mask *m, const tg_tensor *src, tg_tensor *dst) {
  const int64_t n = src->numel, block = 4096, nblk = (n + block - 1) / block;
#pragma omp parallel for num_threads(tg__threads(8 * n))
  for (int64_t b = 0; b < nblk; b++)
    mask_block(m, src->dtype, tg__data(src), tg__data(dst), b * block,
               (b + 1) * block < n ? (b + 1) * block : n);
  return 0;
}

static const dropout_kernels dropout_cpu = {apply_cpu};

#ifdef TG_HAVE_CUDA
static int apply_cuda(const tg__dropout_mask *m, const tg_tensor *src, tg_tensor *dst) {
  return tg__dropout_cuda(src->dtype, m, tg__data(src), tg__data(dst), src->numel,
                          src->device.index);
}

static const dropout_kernels dropout_cuda = {apply_cuda};
#endif

static const dropout_kernels *dropout_pick(const char *op, const tg_tensor *x) {
  return tg__pick(op, x, &dropout_cpu, TG_IF_CUDA(&dropout_cuda));
}

static int dropout_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const dropout_kernels *k = dropout_pick(node->op, g);
  tg_tensor *dx = k ? tg__new_like(g) : NULL;
  if (!dx)
    return -1;
  if (k->apply(node->ctx, g, dx) < 0) {
    tg_tensor_free(dx);
    return -1;
  }
  gi[0] = dx;
  return 0;
}

static int identity_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  (void)node;
  gi[0] = tg__alias(g, g->shape, g->ndim);
  return gi[0] ? 0 : -1;
}

tg_tensor *tg_dropout(const tg_tensor *x, double p, bool train) {
  const char *op = "tg_dropout";
  if (!tg__nonnull(x, op, "input") || tg__check_same(op, 1, &x, true) < 0)
    return NULL;
  if (!(p >= 0.0 && p <= 1.0))
    return tg__error("%s: dropout probability has to be between 0 and 1, but got %g", op,
                     p),
           NULL;
  if (!train || p == 0.0)
    return tg__finish(op, tg__alias(x, x->shape, x->ndim), 1, &x, identity_backward,
                      NULL);
  const dropout_kernels *k = dropout_pick(op, x);
  if (!k)
    return NULL;
  /* the key is drawn on the host whatever the device: no synchronisation, and the
   * same seed gives every device the same mask */
  tg__dropout_mask m = {tg__rand_u64(), (uint64_t)ceil((1.0 - p) * 0x1p53),
                        p < 1.0 ? 1.0 / (1.0 - p) : 0.0};
  tg_tensor *out = tg__new_like(x);
  if (!out || k->apply(&m, x, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  tg_node *node;
  out = tg__finish(op, out, 1, &x, dropout_backward, &node);
  if (node)
    *(tg__dropout_mask *)tg__ctx(node, sizeof m) = m;
  return out;
}
