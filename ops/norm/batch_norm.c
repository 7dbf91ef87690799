/* BatchNorm with PyTorch's semantics: x [N, C, *] is normalised per channel over the
 * batch and the trailing dims, then scaled and shifted per channel:
 *   y = (x - mean_c) * rstd_c * gamma_c + beta_c,  rstd_c = 1/sqrt(var_c + eps).
 * Training uses the batch statistics (biased variance) and, when given, updates the
 * running stats in place: r = (1 - momentum) * r + momentum * stat, with the unbiased
 * variance. Evaluation uses the running stats. The forward saves the statistics it
 * used (norm_stats, float64 [C, 3]) for the backward. */
#include "norm.h"

#include "batch_norm.h"

#include <stdlib.h>
#include <string.h>

static const char *const OP = "tg_batch_norm";

typedef struct {
  int64_t N, C, HW; /* HW: product of the trailing dims */
  bool training;
} bn_dims;

/* Shape and argument rules, independent of the device. */
static int bn_check(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                    const tg_tensor *rm, const tg_tensor *rv, bool training,
                    double momentum, double eps, bn_dims *d) {
  char sx[TG_SHAPE_STR_LEN];
  const tg_tensor *all[5] = {x, w, b, rm, rv};
  if (tg__check_same(OP, 5, all, true) < 0)
    return -1;
  if (x->ndim < 2)
    return tg__error("%s: Expected 2D or more input [N, C, *], but got input of shape %s",
                     OP, tg_shape_str(x, sx, sizeof sx));
  d->N = x->shape[0];
  d->C = x->shape[1];
  d->HW = 1;
  for (int i = 2; i < x->ndim; i++)
    d->HW *= x->shape[i];
  d->training = training;
  if (!rm != !rv)
    return tg__error("%s: running_mean and running_var must both be given or both be "
                     "NULL (got running_%s only)",
                     OP, rm ? "mean" : "var");
  if (!training && !rm)
    return tg__error("%s: running_mean must be defined in evaluation mode", OP);
  const char *names[4] = {"weight", "bias", "running_mean", "running_var"};
  for (int i = 0; i < 4; i++) {
    const tg_tensor *p = all[i + 1];
    if (p && p->numel != d->C)
      return tg__error("%s: %s should contain %lld elements not %lld (input of shape %s)",
                       OP, names[i], (long long)d->C, (long long)p->numel,
                       tg_shape_str(x, sx, sizeof sx));
  }
  if (training && d->N * d->HW == 1)
    return tg__error("%s: Expected more than 1 value per channel when training, got "
                     "input size %s",
                     OP, tg_shape_str(x, sx, sizeof sx));
  if (!isfinite(momentum))
    return tg__error("%s: expected a finite momentum, but got %g", OP, momentum);
  return norm_check_eps(OP, eps);
}

/* ---------------------------------------------------------------- forward -- */

/* stats gets each channel's statistics: from the batch when training (and the running
 * stats are updated), from the running stats otherwise. Then y per (n, c) segment. */
static void bn_forward_cpu(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                           tg_tensor *rm, tg_tensor *rv, bn_dims d, double momentum,
                           double eps, tg_tensor *y, norm_stats *stats) {
  const int64_t count = d.N * d.HW, segs = d.N * d.C;
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *W = w ? tg__data(w) : NULL, *B = b ? tg__data(b) : NULL;
    T *Y = tg__data(y), *RM = rm ? tg__data(rm) : NULL, *RV = rv ? tg__data(rv) : NULL;
    if (d.training) {
      _Pragma("omp parallel for num_threads(tg__threads(x->numel))") for (int64_t c = 0;
                                                                          c < d.C; c++) {
        double var = norm_moments(X + c * d.HW, d.N, d.HW, d.C * d.HW, eps, &stats[c]);
        if (RM && count > 0) {
          double mean = stats[c].pivot + stats[c].dmean;
          double unbiased = var * (double)count / (double)(count - 1);
          RM[c] = (T)((1 - momentum) * (double)RM[c] + momentum * mean);
          RV[c] = (T)((1 - momentum) * (double)RV[c] + momentum * unbiased);
        }
      }
    } else {
      for (int64_t c = 0; c < d.C; c++)
        stats[c] = (norm_stats){(double)RM[c], 0.0, 1.0 / sqrt((double)RV[c] + eps)};
    }
    _Pragma("omp parallel for num_threads(tg__threads(x->numel))") for (int64_t s = 0;
                                                                        s < segs; s++) {
      const int64_t c = s % d.C;
      const double a = stats[c].rstd * (W ? (double)W[c] : 1.0);
      const double sh = (B ? (double)B[c] : 0.0) - stats[c].dmean * a;
      norm_affine(X + s * d.HW, Y + s * d.HW, d.HW, (T)stats[c].pivot, (T)a, (T)sh, NULL,
                  false);
    }
  });
}

/* --------------------------------------------------------------- backward -- */

/* Per channel, over m = N*HW elements: db = sum(dy), ds = sum(dy * (x - mean)), then
 *   dgamma = ds * rstd,  dbeta = db,
 *   dx = (gamma*dy - md)*rstd + c2*(x - mean) with, when training,
 *   md = gamma*db/m, c2 = -gamma*rstd^3*ds/m (in evaluation the statistics are
 *   constants: md = c2 = 0). sums gets (db, ds) per channel; NULL skips them (eval, dx
 * only). */
static void bn_backward_cpu(const tg_tensor *g, const tg_tensor *x, const tg_tensor *w,
                            const norm_stats *stats, bn_dims d, tg_tensor *dx,
                            double *sums) {
  const int64_t count = d.N * d.HW, segs = d.N * d.C;
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *G = tg__data(g), *W = w ? tg__data(w) : NULL;
    if (sums) {
      _Pragma("omp parallel for num_threads(tg__threads(x->numel))") for (int64_t c = 0;
                                                                          c < d.C; c++) {
        const T p = (T)stats[c].pivot;
        double db = 0, ds = 0;
        for (int64_t n = 0; n < d.N; n++) {
          const int64_t off = (n * d.C + c) * d.HW;
          norm_grad_sums(G + off, X + off, d.HW, p, &db, &ds);
        }
        sums[2 * c] = db;
        sums[2 * c + 1] = ds - db * stats[c].dmean;
      }
    }
    if (dx) {
      T *DX = tg__data(dx);
      _Pragma("omp parallel for num_threads(tg__threads(x->numel))") for (int64_t s = 0;
                                                                          s < segs; s++) {
        const int64_t c = s % d.C;
        const double rstd = stats[c].rstd, gamma = W ? (double)W[c] : 1.0;
        double md = 0, c2 = 0;
        if (d.training) {
          md = gamma * sums[2 * c] / (double)count;
          c2 = -gamma * rstd * rstd * rstd * sums[2 * c + 1] / (double)count;
        }
        norm_dx(G + s * d.HW, X + s * d.HW, DX + s * d.HW, d.HW, (T)stats[c].pivot,
                (T)gamma, (T)md, (T)rstd, (T)c2, (T)(-c2 * stats[c].dmean), NULL, NULL,
                false);
      }
    }
  });
}

/* ------------------------------------------------------- kernel tables -- */

/* One signature per kernel, one table per device; tg_batch_norm and bn_backward check
 * and record once, then call the table of x's device. stats is [C, 3] float64 on x's
 * device in the same layout on every device; in backward, grads[i] is NULL where input
 * i needs no gradient. */
typedef struct {
  int (*forward)(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                 tg_tensor *rm, tg_tensor *rv, bn_dims d, double momentum, double eps,
                 tg_tensor *y, tg_tensor *stats);
  int (*backward)(const tg_tensor *dy, const tg_tensor *x, const tg_tensor *w,
                  const tg_tensor *stats, bn_dims d, tg_tensor *grads[3]);
} bn_kernels;

static int bn_forward_cpu_k(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                            tg_tensor *rm, tg_tensor *rv, bn_dims d, double momentum,
                            double eps, tg_tensor *y, tg_tensor *stats) {
  bn_forward_cpu(x, w, b, rm, rv, d, momentum, eps, y, tg__data(stats));
  return 0;
}

static int bn_backward_cpu_k(const tg_tensor *g, const tg_tensor *x, const tg_tensor *w,
                             const tg_tensor *saved, bn_dims d, tg_tensor *grads[3]) {
  tg_tensor *dx = grads[0], *dw = grads[1], *db = grads[2];
  const norm_stats *stats = tg__data(saved);
  double *sums = NULL;
  if (d.training || dw || db) {
    sums = malloc((size_t)(d.C ? d.C : 1) * 2 * sizeof *sums);
    if (!sums)
      return tg__error("%s: out of memory in backward", OP);
  }
  bn_backward_cpu(g, x, w, stats, d, dx, sums);
  for (int64_t c = 0; c < d.C && (dw || db); c++) {
    if (dw)
      tg__set(dw, c, sums[2 * c + 1] * stats[c].rstd);
    if (db)
      tg__set(db, c, sums[2 * c]);
  }
  free(sums);
  return 0;
}

static const bn_kernels tg__bn_cpu = {bn_forward_cpu_k, bn_backward_cpu_k};

#ifdef TG_HAVE_CUDA
static int bn_forward_cuda(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                           tg_tensor *rm, tg_tensor *rv, bn_dims d, double momentum,
                           double eps, tg_tensor *y, tg_tensor *stats) {
  return tg__bn_cuda_forward(x->dtype, tg__data(x), norm_data_or_null(w),
                             norm_data_or_null(b), norm_data_or_null(rm),
                             norm_data_or_null(rv), d.N, d.C, d.HW, d.training, momentum,
                             eps, tg__data(y), tg__data(stats), x->device.index);
}

static int bn_backward_cuda(const tg_tensor *g, const tg_tensor *x, const tg_tensor *w,
                            const tg_tensor *stats, bn_dims d, tg_tensor *grads[3]) {
  return tg__bn_cuda_backward(x->dtype, tg__data(g), tg__data(x), norm_data_or_null(w),
                              tg__data(stats), d.N, d.C, d.HW, d.training,
                              norm_data_or_null(grads[0]), norm_data_or_null(grads[1]),
                              norm_data_or_null(grads[2]), x->device.index);
}

static const bn_kernels tg__bn_cuda = {bn_forward_cuda, bn_backward_cuda};
#endif

static const bn_kernels *pick(const char *op, const tg_tensor *x) {
  return tg__pick(op, x, &tg__bn_cpu, TG_IF_CUDA(&tg__bn_cuda));
}

static int bn_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0], *w = node->inputs[1];
  bn_dims d = *(const bn_dims *)node->ctx;
  tg_tensor *grads[3];
  const bn_kernels *k = pick(node->op, x);
  if (!k || norm_new_grads(node, grads) < 0 ||
      k->backward(g, x, w, node->saved[0], d, grads) < 0)
    return -1;
  memcpy(gi, grads, sizeof grads);
  return 0;
}

tg_tensor *tg_batch_norm(const tg_tensor *x, const tg_tensor *weight,
                         const tg_tensor *bias, tg_tensor *running_mean,
                         tg_tensor *running_var, bool training, double momentum,
                         double eps) {
  if (!tg__nonnull(x, OP, "input"))
    return NULL;
  bn_dims d;
  if (x->ndim == 1 && x->numel == 0) /* PyTorch: an empty vector stays empty */
    return tg_clone(x);
  const bn_kernels *k;
  if (bn_check(x, weight, bias, running_mean, running_var, training, momentum, eps, &d) <
          0 ||
      !(k = pick(OP, x)))
    return NULL;
  tg_tensor *stats = tg__new(TG_SHAPE(d.C, 3), TG_F64, x->device);
  tg_tensor *y = tg__new_like(x);
  if (!stats || !y ||
      k->forward(x, weight, bias, running_mean, running_var, d, momentum, eps, y, stats) <
          0) {
    tg_tensor_free(stats);
    tg_tensor_free(y);
    return NULL;
  }
  if (training && running_mean) {
    tg__bump_version(running_mean);
    tg__bump_version(running_var);
  }
  const tg_tensor *in[3] = {x, weight, bias};
  tg_node *node;
  y = tg__finish(OP, y, 3, in, bn_backward, &node);
  if (node) {
    tg__save(node, stats);
    *(bn_dims *)tg__ctx(node, sizeof d) = d;
  }
  tg_tensor_free(stats);
  return y;
}
