/* Dropout: keeps each element with probability 1 - p, scaled by 1/(1 - p).
 *
 * The mask is a pure function of one key drawn from the global generator and the
 * element's index (splitmix64 of key + (i+1)*golden: the i-th output of a splitmix64
 * stream seeded with the key). The forward fills it in parallel, the same for a seed
 * whatever the thread count, and the backward regenerates it from the key instead of
 * keeping an [N, ...] mask in memory: dx = g * mask * scale. */
#include "graph/internal.h"

#include <math.h>

typedef struct {
  uint64_t key;
  uint64_t threshold; /* keep element i when its 53-bit draw is below this */
  double scale;
} dropout_mask;

static inline bool keep(const dropout_mask *m, int64_t i) {
  uint64_t z = m->key + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (z >> 11) < m->threshold;
}

/* dst[i] = mask_i * scale * src[i] for i in [i0, i1). */
static void mask_block(const dropout_mask *m, tg_dtype dtype, const void *src, void *dst,
                       int64_t i0, int64_t i1) {
  TG_DISPATCH_FLOAT(dtype, T, {
    const T *S = src;
    T *D = dst;
    const T scale = (T)m->scale;
    for (int64_t i = i0; i < i1; i++)
      D[i] = S[i] * (keep(m, i) ? scale : (T)0); /* NaN * 0 stays NaN, as PyTorch */
  });
}

/* dst = mask * scale * src: the forward on x, the backward on g. */
static void apply_mask(const dropout_mask *m, const tg_tensor *src, tg_tensor *dst) {
  const int64_t n = src->numel, block = 4096, nblk = (n + block - 1) / block;
#pragma omp parallel for num_threads(tg__threads(8 * n))
  for (int64_t b = 0; b < nblk; b++)
    mask_block(m, src->dtype, tg__data(src), tg__data(dst), b * block,
               (b + 1) * block < n ? (b + 1) * block : n);
}

static int dropout_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  tg_tensor *dx = tg__new_like(g);
  if (!dx)
    return -1;
  apply_mask(node->ctx, g, dx);
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
  if (x->device.type != TG_DEVICE_CPU)
    return tg__unsupported_device(op, x), NULL;
  dropout_mask m = {tg__rand_u64(), (uint64_t)ceil((1.0 - p) * 0x1p53),
                    p < 1.0 ? 1.0 / (1.0 - p) : 0.0};
  tg_tensor *out = tg__new_like(x);
  if (!out)
    return NULL;
  apply_mask(&m, x, out);
  tg_node *node;
  out = tg__finish(op, out, 1, &x, dropout_backward, &node);
  if (node)
    *(dropout_mask *)tg__ctx(node, sizeof m) = m;
  return out;
}
