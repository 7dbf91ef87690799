/* GroupNorm (Wu & He, 2018) with PyTorch's semantics: x [N, C, *] is split into G
 * groups of D = C / G consecutive channels; each (n, g) is normalised with its own
 * mean and biased variance, then scaled and shifted per channel:
 *   y = (x - mean[n,g]) * rstd[n,g] * gamma[c] + beta[c],  rstd = 1/sqrt(var + eps).
 * The forward saves mean and rstd (norm_stats, float64 [N, G, 3]) for the backward. */
#include "group_norm.h"
#include "norm.h"

#include <stdlib.h>
#include <string.h>

static const char *const OP = "tg_group_norm";

typedef struct {
  int64_t N, C, G, HW; /* HW: product of the trailing dims */
  bool relu;           /* tg_group_norm_relu: a ReLU fused onto the output */
} gn_dims;

/* Shape and argument rules, independent of the device. */
static int gn_check(const tg_tensor *x, int64_t G, const tg_tensor *w, const tg_tensor *b,
                    double eps, gn_dims *d) {
  char sx[TG_SHAPE_STR_LEN], sp[TG_SHAPE_STR_LEN];
  const tg_tensor *all[3] = {x, w, b};
  if (tg__check_same(OP, 3, all, true) < 0)
    return -1;
  if (x->ndim < 2)
    return tg__error("%s: Expected at least 2 dimensions for input tensor but received "
                     "%d (input of shape %s)",
                     OP, x->ndim, tg_shape_str(x, sx, sizeof sx));
  if (G <= 0)
    return tg__error("%s: Expected num groups to be greater than 0, got %lld", OP,
                     (long long)G);
  *d = (gn_dims){0};
  d->N = x->shape[0];
  d->C = x->shape[1];
  d->G = G;
  d->HW = 1;
  for (int i = 2; i < x->ndim; i++)
    d->HW *= x->shape[i];
  if (d->C <= 0 || d->HW <= 0)
    return tg__error("%s: Expected %s to be greater than 0, got %lld (input of shape %s)",
                     OP, d->C <= 0 ? "number of channels" : "HxW",
                     (long long)(d->C <= 0 ? d->C : d->HW),
                     tg_shape_str(x, sx, sizeof sx));
  if (d->C % G != 0)
    return tg__error("%s: Expected number of channels in input to be divisible by "
                     "num_groups, but got input of shape %s and num_groups=%lld",
                     OP, tg_shape_str(x, sx, sizeof sx), (long long)G);
  const char *names[2] = {"weight", "bias"};
  for (int i = 0; i < 2; i++) {
    const tg_tensor *p = i ? b : w;
    if (p && (p->ndim != 1 || p->shape[0] != d->C))
      return tg__error("%s: Expected %s to be a vector of size equal to the number of "
                       "channels in input, but got %s of shape %s and input of shape %s",
                       OP, names[i], names[i], tg_shape_str(p, sp, sizeof sp),
                       tg_shape_str(x, sx, sizeof sx));
  }
  return norm_check_eps(OP, eps);
}

/* Tensors from an eighth of the last-level cache on are written with non-temporal
 * stores: from there the four tensors of a training step's GroupNorm (x, y, dy, dx)
 * fill more than half of a cache that other threads and processes share, so outputs
 * would be evicted before anyone reads them anyway. TG_NORM_STREAM_BYTES overrides the
 * size in bytes (0: always, a huge value: never; anything else that is not a
 * non-negative integer is ignored with a warning); the tests run both paths with it. */
static int64_t stream_bytes(void) {
  static _Atomic bool warned;
  return tg__env_int("TG_NORM_STREAM_BYTES", 0, INT64_MAX, tg__llc_bytes() / 8, &warned);
}

/* ---------------------------------------------------------------- forward -- */

/* What the pass over channel k (of D, hw elements each) of a group prefetches of the
 * thread's next group, as an offset into it, or -1 for nothing. Inputs from
 * NORM_PREFETCH_BYTES on come from DRAM: the same channel of the next group, so
 * reading it overlaps writing this one. Smaller ones: the next group's first channel,
 * during the last channel. The hardware prefetcher follows a statistics pass, but
 * stops during the passes that read the group back from L2, so without the hint every
 * group's statistics start with a DRAM miss (128 groups of 32-50 KB in the 4-6 MB
 * tensors of bench/group_norm; bench/NOTES.md has the figures). Prefetching all of
 * the next group there was no faster (and slower warm on the earlier machine). */
static int64_t prefetch_offset(int64_t k, int64_t D, int64_t hw, bool full) {
  return full ? k * hw : k == D - 1 ? 0 : -1;
}

/* One (n, g) at a time: its D*HW elements are contiguous and stay in L2 between the
 * statistics pass and the normalising pass; each thread takes a contiguous run of
 * groups and prefetches from its next group while writing this one
 * (prefetch_offset), and large inputs write y with non-temporal stores. stats (may be
 * NULL) gets the statistics. */
static void gn_forward_cpu(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                           gn_dims d, double eps, tg_tensor *y, norm_stats *stats) {
  const int64_t D = d.C / d.G, len = D * d.HW, groups = d.N * d.G;
  const int64_t bytes = x->numel * (int64_t)tg_dtype_size(x->dtype);
  const bool prefetch = bytes >= NORM_PREFETCH_BYTES, stream = bytes >= stream_bytes();
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *W = w ? tg__data(w) : NULL, *B = b ? tg__data(b) : NULL;
    T *Y = tg__data(y);
    _Pragma("omp parallel num_threads(tg__threads(x->numel))") {
      _Pragma("omp for schedule(static) nowait") for (int64_t ng = 0; ng < groups; ng++) {
        const T *xg = X + ng * len, *next = ng + 1 < groups ? xg + len : NULL;
        T *yg = Y + ng * len;
        norm_stats st;
        norm_moments(xg, 1, len, 0, eps, &st);
        if (stats)
          stats[ng] = st;
        const T p = (T)st.pivot;
        const int64_t c0 = (ng % d.G) * D;
        for (int64_t k = 0; k < D; k++) {
          double a, sh;
          tg__gn_affine(st.rstd, st.dmean, W ? (double)W[c0 + k] : 1.0,
                        B ? (double)B[c0 + k] : 0.0, &a, &sh);
          const int64_t pf = next ? prefetch_offset(k, D, d.HW, prefetch) : -1;
          norm_affine_act(xg + k * d.HW, yg + k * d.HW, d.HW, p, (T)a, (T)sh,
                          pf >= 0 ? next + pf : NULL, stream, d.relu);
        }
      }
      if (stream)
        norm_stream_fence();
    }
  });
}

/* --------------------------------------------------------------- backward -- */

/* PyTorch's GroupNorm backward, with x centred on the pivot p so float32 keeps its
 * digits. Per (n, c): db = sum(dy), ds = sum(dy * (x - mean)). Per (n, g), with
 * s = 1 / (D*HW), dbg = sum_c gamma_c db, dsg = sum_c gamma_c ds:
 *   dx = (gamma_c*dy - dbg*s)*rstd + c2*(x - mean),  c2 = -dsg*rstd^3*s
 * and over the batch: dgamma_c = sum_n ds*rstd, dbeta_c = sum_n db. With d.relu, dy is
 * first masked by the fused ReLU (norm_tmpl.h act_grad), the forward's output
 * recomputed from x, the statistics, w and b, so nothing but the statistics is saved.
 * sums gets (db, ds) per (n, c); dx may be NULL. */
static void gn_backward_cpu(const tg_tensor *g, const tg_tensor *x, const tg_tensor *w,
                            const tg_tensor *b, const norm_stats *stats, gn_dims d,
                            tg_tensor *dx, double *sums) {
  const int64_t D = d.C / d.G, len = D * d.HW, groups = d.N * d.G;
  const int64_t bytes = x->numel * (int64_t)tg_dtype_size(x->dtype);
  const bool prefetch = bytes >= NORM_PREFETCH_BYTES, stream = bytes >= stream_bytes();
  const int nt = tg__threads(2 * x->numel);
  TG_DISPATCH_FLOAT(x->dtype, T, {
    const T *X = tg__data(x), *G = tg__data(g), *W = w ? tg__data(w) : NULL;
    const T *B = b ? tg__data(b) : NULL;
    T *DX = dx ? tg__data(dx) : NULL;
    _Pragma("omp parallel num_threads(nt)") {
      _Pragma("omp for schedule(static) nowait") for (int64_t ng = 0; ng < groups; ng++) {
        const int64_t off = ng * len, c0 = (ng % d.G) * D;
        const bool next = ng + 1 < groups;
        const norm_stats st = stats[ng];
        const double rstd = st.rstd;
        const T p = (T)st.pivot;
        double *sg = sums + 2 * ng * D;
        double dbg = 0, dsg = 0;
        for (int64_t k = 0; k < D; k++) {
          double db = 0, ds = 0, fa, fb;
          tg__gn_affine(st.rstd, st.dmean, W ? (double)W[c0 + k] : 1.0,
                        B ? (double)B[c0 + k] : 0.0, &fa, &fb);
          norm_grad_sums_act(G + off + k * d.HW, X + off + k * d.HW, d.HW, p, (T)fa,
                             (T)fb, d.relu, &db, &ds);
          ds -= db * st.dmean;
          sg[2 * k] = db;
          sg[2 * k + 1] = ds;
          double gamma = W ? (double)W[c0 + k] : 1.0;
          dbg += gamma * db;
          dsg += gamma * ds;
        }
        if (DX && len > 0) {
          double m, c2, c3;
          tg__gn_dx_coefs(dbg, dsg, rstd, st.dmean, len, &m, &c2, &c3);
          for (int64_t k = 0; k < D; k++) {
            const T gamma = W ? W[c0 + k] : (T)1;
            const int64_t o = off + k * d.HW;
            double fa, fb;
            tg__gn_affine(st.rstd, st.dmean, W ? (double)W[c0 + k] : 1.0,
                          B ? (double)B[c0 + k] : 0.0, &fa, &fb);
            const int64_t pf = next ? prefetch_offset(k, D, d.HW, prefetch) : -1;
            const int64_t o_pf = off + len + pf; /* in the next group */
            norm_dx_act(G + o, X + o, DX + o, d.HW, p, gamma, (T)m, (T)rstd, (T)c2, (T)c3,
                        pf >= 0 ? G + o_pf : NULL, pf >= 0 ? X + o_pf : NULL, stream,
                        (T)fa, (T)fb, d.relu);
          }
        }
      }
      if (stream)
        norm_stream_fence();
    }
  });
}

/* dgamma_c = sum_n ds[n,c] * rstd[n,g(c)], dbeta_c = sum_n db[n,c], each summed in
 * the order of n (so any thread count gives the same bits). sums, (db, ds) per (n, c),
 * is read in the order the backward's threads wrote it: going channel by channel
 * instead strode over N cache lines per channel, with two threads half of them in the
 * other core's cache. acc: 2*C doubles of scratch. */
static void gn_param_grads(const double *sums, const norm_stats *stats, gn_dims d,
                           double *acc, tg_tensor *dw, tg_tensor *db) {
  const int64_t D = d.C / d.G;
  memset(acc, 0, (size_t)(2 * d.C) * sizeof *acc);
  for (int64_t n = 0; n < d.N; n++)
    for (int64_t c = 0; c < d.C; c++) {
      const double *s = sums + 2 * (n * d.C + c);
      acc[2 * c] += s[0];
      acc[2 * c + 1] += s[1] * stats[n * d.G + c / D].rstd;
    }
  for (int64_t c = 0; c < d.C; c++) {
    if (dw)
      tg__set(dw, c, acc[2 * c + 1]);
    if (db)
      tg__set(db, c, acc[2 * c]);
  }
}

/* ------------------------------------------------------- kernel tables -- */

/* One signature per kernel, one table per device; tg_group_norm and gn_backward check
 * and record once, then call the table of x's device. y and stats (may be NULL) are
 * on x's device, stats in the same layout on every device; in backward, grads[i] is
 * NULL where input i needs no gradient. */
typedef struct {
  int (*forward)(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b, gn_dims d,
                 double eps, tg_tensor *y, tg_tensor *stats);
  int (*backward)(const tg_tensor *dy, const tg_tensor *x, const tg_tensor *w,
                  const tg_tensor *b, const tg_tensor *stats, gn_dims d,
                  tg_tensor *grads[3]);
} gn_kernels;

static int gn_forward_cpu_k(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                            gn_dims d, double eps, tg_tensor *y, tg_tensor *stats) {
  gn_forward_cpu(x, w, b, d, eps, y, stats ? tg__data(stats) : NULL);
  return 0;
}

static int gn_backward_cpu_k(const tg_tensor *g, const tg_tensor *x, const tg_tensor *w,
                             const tg_tensor *b, const tg_tensor *saved, gn_dims d,
                             tg_tensor *grads[3]) {
  /* (db, ds) per (n, c), then gn_param_grads' scratch */
  size_t n_sums = (size_t)(d.N * d.C * 2 + d.C * 2);
  double *sums = malloc(n_sums * sizeof *sums);
  if (!sums)
    return tg__error("%s: out of memory in backward (%zu bytes)", OP,
                     n_sums * sizeof *sums);
  const norm_stats *stats = tg__data(saved);
  gn_backward_cpu(g, x, w, b, stats, d, grads[0], sums);
  if (grads[1] || grads[2])
    gn_param_grads(sums, stats, d, sums + d.N * d.C * 2, grads[1], grads[2]);
  free(sums);
  return 0;
}

static const gn_kernels tg__gn_cpu = {gn_forward_cpu_k, gn_backward_cpu_k};

#ifdef TG_HAVE_CUDA
static int gn_forward_cuda(const tg_tensor *x, const tg_tensor *w, const tg_tensor *b,
                           gn_dims d, double eps, tg_tensor *y, tg_tensor *stats) {
  return tg__gn_cuda_forward(x->dtype, tg__data(x), norm_data_or_null(w),
                             norm_data_or_null(b), d.N, d.C, d.G, d.HW, eps, d.relu,
                             tg__data(y), norm_data_or_null(stats), x->device.index);
}

static int gn_backward_cuda(const tg_tensor *g, const tg_tensor *x, const tg_tensor *w,
                            const tg_tensor *b, const tg_tensor *stats, gn_dims d,
                            tg_tensor *grads[3]) {
  return tg__gn_cuda_backward(
      x->dtype, tg__data(g), tg__data(x), norm_data_or_null(w), norm_data_or_null(b),
      tg__data(stats), d.N, d.C, d.G, d.HW, d.relu, norm_data_or_null(grads[0]),
      norm_data_or_null(grads[1]), norm_data_or_null(grads[2]), x->device.index);
}

static const gn_kernels tg__gn_cuda = {gn_forward_cuda, gn_backward_cuda};
#endif

static const gn_kernels *pick(const char *op, const tg_tensor *x) {
  return tg__pick(op, x, &tg__gn_cpu, TG_IF_CUDA(&tg__gn_cuda));
}

static int gn_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0], *w = node->inputs[1], *b = node->inputs[2];
  gn_dims d = *(const gn_dims *)node->ctx;
  tg_tensor *grads[3];
  const gn_kernels *k = pick(node->op, x);
  if (!k || norm_new_grads(node, grads) < 0 ||
      k->backward(g, x, w, b, node->saved[0], d, grads) < 0)
    return -1;
  memcpy(gi, grads, sizeof grads);
  return 0;
}

static tg_tensor *group_norm(const char *op, const tg_tensor *x, int64_t num_groups,
                             const tg_tensor *weight, const tg_tensor *bias, double eps,
                             bool relu) {
  if (!tg__nonnull(x, op, "input"))
    return NULL;
  gn_dims d;
  const gn_kernels *k;
  if (gn_check(x, num_groups, weight, bias, eps, &d) < 0 || !(k = pick(op, x)))
    return NULL;
  d.relu = relu;
  const tg_tensor *in[3] = {x, weight, bias};
  tg_tensor *stats = NULL;
  if (tg__should_record(3, in)) {
    stats = tg__new(TG_SHAPE(d.N, d.G, 3), TG_F64, x->device);
    if (!stats)
      return NULL;
  }
  tg_tensor *y = tg__new_like(x);
  if (!y) {
    tg_tensor_free(stats);
    return NULL;
  }
  if (k->forward(x, weight, bias, d, eps, y, stats) < 0) {
    tg_tensor_free(stats);
    tg_tensor_free(y);
    return NULL;
  }
  tg_node *node;
  y = tg__finish(op, y, 3, in, gn_backward, &node);
  if (node) {
    tg__save(node, stats);
    *(gn_dims *)tg__ctx(node, sizeof d) = d;
  }
  tg_tensor_free(stats);
  return y;
}

tg_tensor *tg_group_norm(const tg_tensor *x, int64_t num_groups, const tg_tensor *weight,
                         const tg_tensor *bias, double eps) {
  return group_norm(OP, x, num_groups, weight, bias, eps, false);
}

tg_tensor *tg_group_norm_relu(const tg_tensor *x, int64_t num_groups,
                              const tg_tensor *weight, const tg_tensor *bias,
                              double eps) {
  return group_norm("tg_group_norm_relu", x, num_groups, weight, bias, eps, true);
}
