/* NumPy/PyTorch broadcasting rules and small in-place helpers outside the tape. */
#include "runtime/cuda.h"
#include "runtime/internal.h"

#include <math.h>

int tg__broadcast_shape(const tg_tensor *a, const tg_tensor *b, int64_t *out,
                        int *out_ndim, const char *op) {
  int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int i = 0; i < nd; i++) {
    int ia = a->ndim - nd + i, ib = b->ndim - nd + i;
    int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      char x[TG_SHAPE_STR_LEN], y[TG_SHAPE_STR_LEN];
      return tg__error("%s: The size of tensor a (%lld) must match the size of tensor b "
                       "(%lld) at non-singleton dimension %d (shapes %s and %s are not "
                       "broadcastable)",
                       op, (long long)sa, (long long)sb, i, tg_shape_str(a, x, sizeof x),
                       tg_shape_str(b, y, sizeof y));
    }
    out[i] = sa == 1 ? sb : sa;
  }
  *out_ndim = nd;
  return 0;
}

void tg__broadcast_strides(const tg_tensor *t, const int64_t *out_shape, int out_ndim,
                           int64_t *strides) {
  int64_t s = 1;
  for (int i = out_ndim - 1; i >= 0; i--) {
    int it = t->ndim - out_ndim + i;
    if (it < 0 || t->shape[it] == 1) {
      strides[i] = 0;
    } else {
      strides[i] = s;
      s *= t->shape[it];
    }
  }
  (void)out_shape;
}

tg_tensor *tg__sum_to_shape(const tg_tensor *g, const int64_t *shape, int ndim) {
  bool same = g->ndim == ndim;
  for (int i = 0; same && i < ndim; i++)
    same = g->shape[i] == shape[i];
  if (same)
    return tg__alias(g, shape, ndim);
  int dims[TG_MAX_DIMS], n = 0;
  int lead = g->ndim - ndim;
  for (int i = 0; i < g->ndim; i++)
    if (i < lead || (shape[i - lead] == 1 && g->shape[i] != 1))
      dims[n++] = i;
  tg_tensor *s = tg_sum_dims(g, dims, n, true);
  if (!s)
    return NULL;
  tg_tensor *r = tg_reshape(s, shape, ndim);
  tg_tensor_free(s);
  return r;
}

static int check_pair(const char *op, const tg_tensor *dst, const tg_tensor *src) {
  if (dst->numel != src->numel || dst->dtype != src->dtype ||
      dst->device.type != src->device.type || dst->device.index != src->device.index) {
    char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
    return tg__error("%s: shapes/dtypes differ: %s %s vs %s %s", op,
                     tg_dtype_name(dst->dtype), tg_shape_str(dst, a, sizeof a),
                     tg_dtype_name(src->dtype), tg_shape_str(src, b, sizeof b));
  }
  return 0;
}

/* dst += alpha * src, or dst *= alpha when src is NULL, on the CPU. */
typedef struct {
  tg_tensor *dst;
  const tg_tensor *src;
  double alpha;
} axpy_job;

static void axpy_range(void *ctx, int64_t lo, int64_t hi) {
  const axpy_job *j = ctx;
  TG_DISPATCH_FLOAT(j->dst->dtype, T, {
    T *d = tg__data(j->dst);
    const T a = (T)j->alpha, *s = j->src ? tg__data(j->src) : NULL;
    if (s)
      _Pragma("omp simd") for (int64_t i = lo; i < hi; i++) d[i] += a * s[i];
    else
      _Pragma("omp simd") for (int64_t i = lo; i < hi; i++) d[i] *= a;
  });
}

int tg__axpy_(tg_tensor *dst, double alpha, const tg_tensor *src) {
  if (check_pair("axpy", dst, src) < 0)
    return -1;
  tg__bump_version(dst);
  int64_t n = dst->numel;
  if (tg__on_cuda(dst))
    return tg__cuda_axpby(tg__data(dst), 1.0, tg__data(src), alpha, dst->dtype, n,
                          dst->device.index);
  tg__parallel_for(n, n, axpy_range, &(axpy_job){dst, src, alpha});
  return 0;
}

int tg__scale_(tg_tensor *dst, double alpha) {
  tg__bump_version(dst);
  int64_t n = dst->numel;
  if (tg__on_cuda(dst))
    return tg__cuda_axpby(tg__data(dst), alpha, NULL, 0, dst->dtype, n,
                          dst->device.index);
  tg__parallel_for(n, n, axpy_range, &(axpy_job){dst, NULL, alpha});
  return 0;
}

double tg__sumsq(const tg_tensor *t) {
  double acc = 0;
  int64_t n = t->numel;
  if (tg__on_cuda(t))
    return tg__cuda_sumsq(tg__data(t), t->dtype, n, t->device.index, &acc) < 0 ? NAN
                                                                               : acc;
  const int nt = tg__reduce_threads(n); /* the reduction's order depends on it */
  TG_DISPATCH_FLOAT(t->dtype, T, {
    const T *d = tg__data(t);
    _Pragma("omp parallel for reduction(+ : acc) num_threads(nt)") for (int64_t i = 0;
                                                                        i < n; i++) acc +=
        (double)d[i] * (double)d[i];
  });
  return acc;
}
