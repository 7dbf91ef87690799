/* GroupNorm's per-element formulas, shared by the CPU kernels (group_norm.c) and the
 * CUDA kernels (group_norm.cu), and the CUDA launchers' interface. Plain C. */
#ifndef TG_OPS_NORM_GROUP_NORM_H
#define TG_OPS_NORM_GROUP_NORM_H

#include "runtime/cuda.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Forward, per channel c of a group with statistics mean = p + dmean, rstd:
 *   y = (x - p) * a + s,  a = rstd * gamma_c,  s = beta_c - dmean * a. */
static inline TG_HOST_DEVICE void tg__gn_affine(double rstd, double dmean, double gamma,
                                                double beta, double *a, double *s) {
  *a = rstd * gamma;
  *s = beta - dmean * *a;
}

/* Backward, per group of len elements with dbg = sum_c gamma_c sum(dy) and
 * dsg = sum_c gamma_c sum(dy * (x - mean)):
 *   dx = (gamma_c * dy - m) * rstd + c2 * (x - p) + c3,
 *   m = dbg / len,  c2 = -dsg * rstd^3 / len,  c3 = -c2 * dmean. */
static inline TG_HOST_DEVICE void tg__gn_dx_coefs(double dbg, double dsg, double rstd,
                                                  double dmean, int64_t len, double *m,
                                                  double *c2, double *c3) {
  const double s = 1.0 / (double)len;
  *m = dbg * s;
  *c2 = -dsg * rstd * rstd * rstd * s;
  *c3 = -*c2 * dmean;
}

/* CUDA launchers (group_norm.cu) on device `device`'s stream; dtype a tg_dtype
 * (float32 or float64). x is [N, C, HW] with C = G * D; w and b (C, may be NULL);
 * stats [N, G, 3] float64 (pivot, dmean, rstd), may be NULL in forward. relu: the
 * fused ReLU (forward writes max(y, 0), backward masks dy where y <= 0, y recomputed
 * from x, stats, w and b). In backward dx, dw and db may each be NULL. Return 0 or -1
 * with the error. */
int tg__gn_cuda_forward(int dtype, const void *x, const void *w, const void *b, int64_t N,
                        int64_t C, int64_t G, int64_t HW, double eps, bool relu, void *y,
                        double *stats, int device);
int tg__gn_cuda_backward(int dtype, const void *dy, const void *x, const void *w,
                         const void *b, const double *stats, int64_t N, int64_t C,
                         int64_t G, int64_t HW, bool relu, void *dx, void *dw, void *db,
                         int device);

#ifdef __cplusplus
}
#endif

#endif
