/* PyTorch's further reductions: min and argmin over a dim, max/min/argmax/argmin over
 * all elements, amax/amin over several dims. All are compositions of tg_max_dim and
 * tg_argmax (the minimum of t is minus the maximum of -t, found at the same first
 * index), so they share its tie and NaN rules and its gradient. */
#include "graph/internal.h"

tg_tensor *tg_min_dim(const tg_tensor *t, int dim, bool keepdim, tg_tensor **indices) {
  if (indices)
    *indices = NULL;
  tg_tensor *n = tg_neg(t);
  tg_tensor *m = tg_max_dim(n, dim, keepdim, indices);
  tg_tensor *r = tg_neg(m);
  tg_tensor_free(n);
  tg_tensor_free(m);
  return r;
}

tg_tensor *tg_argmin(const tg_tensor *t, int dim, bool keepdim) {
  tg_tensor *n = tg_neg(t);
  tg_tensor *r = tg_argmax(n, dim, keepdim);
  tg_tensor_free(n);
  return r;
}

/* t as one dim [numel] (a 0-dim t as [1]). */
static tg_tensor *flat(const tg_tensor *t) {
  return t ? tg_reshape(t, TG_SHAPE(-1)) : NULL;
}

static tg_tensor *over_all(const tg_tensor *t, bool min, bool arg) {
  const char *op = arg ? (min ? "tg_argmin_all" : "tg_argmax_all")
                       : (min ? "tg_min_all" : "tg_max_all");
  if (!tg__nonnull(t, op, "input"))
    return NULL;
  if (t->numel == 0)
    return tg__error("%s: Expected reduction dim to be specified for input.numel() == 0. "
                     "Specify the reduction dim with the 'dim' argument.",
                     op),
           NULL;
  tg_tensor *f = flat(t);
  tg_tensor *r =
      arg ? (min ? tg_argmin(f, 0, false) : tg_argmax(f, 0, false))
          : (min ? tg_min_dim(f, 0, false, NULL) : tg_max_dim(f, 0, false, NULL));
  tg_tensor_free(f);
  return r;
}

tg_tensor *tg_max_all(const tg_tensor *t) { return over_all(t, false, false); }
tg_tensor *tg_min_all(const tg_tensor *t) { return over_all(t, true, false); }
tg_tensor *tg_argmax_all(const tg_tensor *t) { return over_all(t, false, true); }
tg_tensor *tg_argmin_all(const tg_tensor *t) { return over_all(t, true, true); }

/* The reduced dims moved last and merged into one, then max over it; keepdim puts
 * size-1 dims back in their places. */
static tg_tensor *amax_impl(const char *op, const tg_tensor *t, const int *dims,
                            int n_dims, bool keepdim, bool min) {
  if (!tg__nonnull(t, op, "input"))
    return NULL;
  const int nd = t->ndim;
  bool reduced[TG_MAX_DIMS] = {false};
  for (int i = 0; i < n_dims; i++) {
    const int d = tg__wrap_dim(dims[i], nd, op);
    if (d < 0)
      return NULL;
    const int slot = nd ? d : 0;
    if (reduced[slot])
      return tg__error("%s: dim %d appears multiple times in the list of dims", op, d),
             NULL;
    reduced[slot] = true;
  }
  if (n_dims == 0) /* PyTorch: no dims reduces all */
    for (int i = 0; i < nd; i++)
      reduced[i] = true;
  int perm[TG_MAX_DIMS], k = 0;
  int64_t kept[TG_MAX_DIMS + 1], keep_shape[TG_MAX_DIMS];
  for (int i = 0; i < nd; i++)
    if (!reduced[i]) {
      kept[k] = t->shape[i];
      perm[k++] = i;
    }
  const int n_kept = k;
  int64_t span = 1;
  for (int i = 0; i < nd; i++) {
    keep_shape[i] = reduced[i] ? 1 : t->shape[i];
    if (reduced[i]) {
      perm[k++] = i;
      span *= t->shape[i];
      if (t->shape[i] == 0)
        return tg__error("%s: Expected reduction dim %d to have non-zero size.", op, i),
               NULL;
    }
  }
  kept[n_kept] = span;
  tg_tensor *p = nd ? tg_permute(t, perm, nd) : tg_reshape(t, TG_SHAPE(1));
  tg_tensor *m = p ? tg_reshape(p, kept, n_kept + 1) : NULL;
  tg_tensor *r =
      m ? (min ? tg_min_dim(m, n_kept, false, NULL) : tg_max_dim(m, n_kept, false, NULL))
        : NULL;
  tg_tensor *out = r && keepdim && nd ? tg_reshape(r, keep_shape, nd) : NULL;
  tg_tensor_free(p);
  tg_tensor_free(m);
  if (out)
    tg_tensor_free(r);
  return out ? out : r;
}

tg_tensor *tg_amax(const tg_tensor *t, const int *dims, int n_dims, bool keepdim) {
  return amax_impl("tg_amax", t, dims, n_dims, keepdim, false);
}

tg_tensor *tg_amin(const tg_tensor *t, const int *dims, int n_dims, bool keepdim) {
  return amax_impl("tg_amin", t, dims, n_dims, keepdim, true);
}
