/* LayerNorm with PyTorch's semantics: each row of the trailing dims normalized_shape
 * (D elements) is normalised with its own mean and biased variance, then scaled and
 * shifted per element:  y = (x - mean) * rstd * gamma + beta.
 * The forward saves each row's statistics (norm_stats, float64 [M, 3]) for the
 * backward. */
#include "norm.h"

#include "layer_norm.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

static const char *const OP = "tg_layer_norm";

typedef struct {
  int64_t M, D; /* rows, elements per row */
} ln_dims;

/* Shape and argument rules, independent of the device. */
static int ln_check(const tg_tensor *x, const int64_t *ns, int n_norm, const tg_tensor *w,
                    const tg_tensor *b, double eps, ln_dims *d) {
  char sx[TG_SHAPE_STR_LEN], sn[TG_SHAPE_STR_LEN], sp[TG_SHAPE_STR_LEN];
  const tg_tensor *all[3] = {x, w, b};
  if (tg__check_same(OP, 3, all, true) < 0)
    return -1;
  if (n_norm < 1 || !ns)
    return tg__error("%s: Expected normalized_shape to be at least 1-dimensional, i.e., "
                     "containing at least one element, but got normalized_shape = []",
                     OP);
  if (n_norm > TG_MAX_DIMS)
    return tg__error("%s: normalized_shape has %d dims, more than the %d supported", OP,
                     n_norm, TG_MAX_DIMS);
  tg__shape_fmt(ns, n_norm, sn, sizeof sn);
  bool match = x->ndim >= n_norm;
  for (int i = 0; match && i < n_norm; i++)
    match = x->shape[x->ndim - n_norm + i] == ns[i];
  if (!match) {
    char star[TG_SHAPE_STR_LEN + 4];
    snprintf(star, sizeof star, "[*, %s", sn + 1);
    return tg__error("%s: Given normalized_shape=%s, expected input with shape %s, but "
                     "got input of size%s",
                     OP, sn, star, tg_shape_str(x, sx, sizeof sx));
  }
  const char *names[2] = {"weight", "bias"};
  for (int k = 0; k < 2; k++) {
    const tg_tensor *p = k ? b : w;
    bool same = p && p->ndim == n_norm;
    for (int i = 0; same && i < n_norm; i++)
      same = p->shape[i] == ns[i];
    if (p && !same)
      return tg__error("%s: Expected %s to be of same shape as normalized_shape, but got "
                       "%s of shape %s and normalized_shape = %s",
                       OP, names[k], names[k], tg_shape_str(p, sp, sizeof sp), sn);
  }
  d->D = 1;
  for (int i = 0; i < n_norm; i++)
    d->D *= ns[i];
  d->M = 1;
  for (int i = 0; i < x->ndim - n_norm; i++)
    d->M *= x->shape[i];
  return norm_check_eps(OP, eps);
}

/* ---------------------------------------------------------------- forward -- */

/* Row r: y = (x - p) * rstd + s with s = -dmean * rstd, then gamma and beta
 * (either may be NULL only when both are: a missing one is passed as ones/zeros). */
static void ln_forward_cpu(const tg_tensor *x, const void *gamma, const void *beta,
                           ln_dims d, double eps, tg_tensor *y, norm_stats *stats) {
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *W = gamma, *B = beta;
    T *Y = tg__data(y);
    _Pragma("omp parallel for num_threads(tg__threads(x->numel))") for (int64_t r = 0;
                                                                        r < d.M; r++) {
      norm_stats st;
      norm_moments(X + r * d.D, 1, d.D, 0, eps, &st);
      if (stats)
        stats[r] = st;
      const T p = (T)st.pivot, rstd = (T)st.rstd, s = (T)(-st.dmean * st.rstd);
      if (W)
        norm_affine_vec(X + r * d.D, Y + r * d.D, d.D, p, rstd, s, W, B);
      else
        norm_affine(X + r * d.D, Y + r * d.D, d.D, p, rstd, s, NULL, false);
    }
  });
}

/* --------------------------------------------------------------- backward -- */

/* Per row, with gd = gamma * dy, A = sum(gd), B = sum(gd * (x - mean)):
 *   dx = (gd - A/D)*rstd + c2*(x - mean),  c2 = -rstd^3*B/D. */
static void ln_dx_cpu(const tg_tensor *g, const tg_tensor *x, const void *gamma,
                      const norm_stats *stats, ln_dims d, tg_tensor *dx) {
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *G = tg__data(g), *W = gamma;
    T *DX = tg__data(dx);
    _Pragma("omp parallel for num_threads(tg__threads(2 * x->numel))") for (int64_t r = 0;
                                                                            r < d.M;
                                                                            r++) {
      const double rstd = stats[r].rstd;
      const T p = (T)stats[r].pivot;
      const int64_t off = r * d.D;
      double A = 0, B = 0;
      if (W)
        norm_grad_sums_vec(G + off, X + off, d.D, p, W, &A, &B);
      else
        norm_grad_sums(G + off, X + off, d.D, p, &A, &B);
      B -= A * stats[r].dmean;
      const double c2 = -rstd * rstd * rstd * B / (double)d.D;
      const T m = (T)(A / (double)d.D), c3 = (T)(-c2 * stats[r].dmean);
      if (W)
        norm_dx_vec(G + off, X + off, DX + off, d.D, p, W, m, (T)rstd, (T)c2, c3);
      else
        norm_dx(G + off, X + off, DX + off, d.D, p, (T)1, m, (T)rstd, (T)c2, c3, NULL,
                NULL, false);
    }
  });
}

/* Rows summed per thread in T over blocks of this many rows, merged in double. */
#define LN_ROW_BLOCK 32

/* dgamma_i = sum_r dy * xhat, dbeta_i = sum_r dy, xhat = (x - p_r)*rstd_r + s_r. Each
 * thread sums a range of rows into its own accumulators; acc holds, per thread,
 * 2*D doubles (dgamma, dbeta) and part 2*D elements of T. */
static void ln_param_grads_cpu(const tg_tensor *g, const tg_tensor *x,
                               const norm_stats *stats, ln_dims d, int nt, double *acc,
                               void *part, tg_tensor *dw, tg_tensor *db) {
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *G = tg__data(g);
    _Pragma("omp parallel num_threads(nt)") {
      const int t = omp_get_thread_num(), nth = omp_get_num_threads();
      const int64_t r0 = d.M * t / nth, r1 = d.M * (t + 1) / nth;
      double *aw = acc + 2 * d.D * t, *ab = aw + d.D;
      T *pw = (T *)part + 2 * d.D * t, *pb = pw + d.D;
      for (int64_t rb = r0; rb < r1; rb += LN_ROW_BLOCK) {
        const int64_t re = rb + LN_ROW_BLOCK < r1 ? rb + LN_ROW_BLOCK : r1;
        memset(pw, 0, 2 * (size_t)d.D * sizeof(T));
        for (int64_t r = rb; r < re; r++) {
          const norm_stats st = stats[r];
          const T p = (T)st.pivot, rs = (T)st.rstd, s = (T)(-st.dmean * st.rstd);
          const T *xr = X + r * d.D, *gr = G + r * d.D;
          for (int64_t i = 0; i < d.D; i++) {
            pw[i] += gr[i] * ((xr[i] - p) * rs + s);
            pb[i] += gr[i];
          }
        }
        for (int64_t i = 0; i < d.D; i++) {
          aw[i] += pw[i];
          ab[i] += pb[i];
        }
      }
    }
  });
  for (int64_t i = 0; i < d.D; i++) {
    double sw = 0, sb = 0;
    for (int t = 0; t < nt; t++) {
      sw += acc[2 * d.D * t + i];
      sb += acc[2 * d.D * t + d.D + i];
    }
    if (dw)
      tg__set(dw, i, sw);
    if (db)
      tg__set(db, i, sb);
  }
}

/* ------------------------------------------------------- kernel tables -- */

/* One signature per kernel, one table per device; tg_layer_norm and ln_backward check
 * and record once, then call the table of x's device. gamma and beta are both given or
 * both NULL; stats (may be NULL in forward) is [M, 3] float64 on x's device in the
 * same layout on every device; in backward, grads[i] is NULL where input i needs no
 * gradient. */
typedef struct {
  int (*forward)(const tg_tensor *x, const tg_tensor *gamma, const tg_tensor *beta,
                 ln_dims d, double eps, tg_tensor *y, tg_tensor *stats);
  int (*backward)(const tg_tensor *dy, const tg_tensor *x, const tg_tensor *w,
                  const tg_tensor *stats, ln_dims d, tg_tensor *grads[3]);
} ln_kernels;

static int ln_forward_cpu_k(const tg_tensor *x, const tg_tensor *gamma,
                            const tg_tensor *beta, ln_dims d, double eps, tg_tensor *y,
                            tg_tensor *stats) {
  ln_forward_cpu(x, norm_data_or_null(gamma), norm_data_or_null(beta), d, eps, y,
                 norm_data_or_null(stats));
  return 0;
}

static int ln_backward_cpu_k(const tg_tensor *g, const tg_tensor *x, const tg_tensor *w,
                             const tg_tensor *saved, ln_dims d, tg_tensor *grads[3]) {
  const norm_stats *stats = tg__data(saved);
  if (grads[0])
    ln_dx_cpu(g, x, norm_data_or_null(w), stats, d, grads[0]);
  if (!grads[1] && !grads[2])
    return 0;
  const int nt = tg__reduce_threads(2 * x->numel); /* per-thread partial sums */
  const size_t n = (size_t)nt * 2 * (size_t)(d.D ? d.D : 1);
  double *acc = calloc(n, sizeof *acc);
  void *part = malloc(n * tg_dtype_size(x->dtype));
  if (!acc || !part) {
    free(acc);
    free(part);
    return tg__error("%s: out of memory in backward", OP);
  }
  ln_param_grads_cpu(g, x, stats, d, nt, acc, part, grads[1], grads[2]);
  free(acc);
  free(part);
  return 0;
}

static const ln_kernels tg__ln_cpu = {ln_forward_cpu_k, ln_backward_cpu_k};

#ifdef TG_HAVE_CUDA
static int ln_forward_cuda(const tg_tensor *x, const tg_tensor *gamma,
                           const tg_tensor *beta, ln_dims d, double eps, tg_tensor *y,
                           tg_tensor *stats) {
  return tg__ln_cuda_forward(x->dtype, tg__data(x), norm_data_or_null(gamma),
                             norm_data_or_null(beta), d.M, d.D, eps, tg__data(y),
                             norm_data_or_null(stats), x->device.index);
}

static int ln_backward_cuda(const tg_tensor *g, const tg_tensor *x, const tg_tensor *w,
                            const tg_tensor *stats, ln_dims d, tg_tensor *grads[3]) {
  return tg__ln_cuda_backward(x->dtype, tg__data(g), tg__data(x), norm_data_or_null(w),
                              tg__data(stats), d.M, d.D, norm_data_or_null(grads[0]),
                              norm_data_or_null(grads[1]), norm_data_or_null(grads[2]),
                              x->device.index);
}

static const ln_kernels tg__ln_cuda = {ln_forward_cuda, ln_backward_cuda};
#endif

static const ln_kernels *pick(const char *op, const tg_tensor *x) {
  return tg__pick(op, x, &tg__ln_cpu, TG_IF_CUDA(&tg__ln_cuda));
}

static int ln_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0], *w = node->inputs[1];
  const ln_dims d = *(const ln_dims *)node->ctx;
  tg_tensor *grads[3];
  const ln_kernels *k = pick(node->op, x);
  if (!k || norm_new_grads(node, grads) < 0 ||
      k->backward(g, x, w, node->saved[0], d, grads) < 0)
    return -1;
  memcpy(gi, grads, sizeof grads);
  return 0;
}

tg_tensor *tg_layer_norm(const tg_tensor *x, const int64_t *normalized_shape, int n_norm,
                         const tg_tensor *weight, const tg_tensor *bias, double eps) {
  if (!tg__nonnull(x, OP, "input"))
    return NULL;
  ln_dims d;
  const ln_kernels *k;
  if (ln_check(x, normalized_shape, n_norm, weight, bias, eps, &d) < 0 ||
      !(k = pick(OP, x)))
    return NULL;
  const tg_tensor *in[3] = {x, weight, bias};
  /* The kernel takes gamma and beta together: ones or zeros stand in for a missing one */
  tg_tensor *ones = NULL, *zeros = NULL;
  if (weight && !bias)
    zeros = tg_zeros_like(weight);
  if (bias && !weight)
    ones = tg_ones_like(bias);
  tg_tensor *stats =
      tg__should_record(3, in) ? tg__new(TG_SHAPE(d.M, 3), TG_F64, x->device) : NULL;
  tg_tensor *y = tg__new_like(x);
  const tg_tensor *gamma = weight ? weight : ones, *beta = bias ? bias : zeros;
  if (!y || ((weight || bias) && (!gamma || !beta)) ||
      (tg__should_record(3, in) && !stats) ||
      k->forward(x, gamma, beta, d, eps, y, stats) < 0) {
    tg_tensor_free(y);
    y = NULL;
  }
  tg_node *node;
  y = tg__finish(OP, y, 3, in, ln_backward, &node);
  if (node) {
    tg__save(node, stats);
    *(ln_dims *)tg__ctx(node, sizeof d) = d;
  }
  tg_tensor_free(stats);
  tg_tensor_free(ones);
  tg_tensor_free(zeros);
  return y;
}
