/* The pools on devices other than the CPU: one description of a pooling (max, avg or
 * adaptive avg, PyTorch's full arguments) shared by pool.c / pool_ex.c and the CUDA
 * kernels of pool.cu. Plain C. */
#ifndef TG_OPS_POOL_POOL_CUDA_H
#define TG_OPS_POOL_POOL_CUDA_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { TG__POOL_MAX, TG__POOL_AVG, TG__POOL_ADAPTIVE };

/* Planes of in[0] x in[1] pooled to out[0] x out[1]; axis 0 is H, 1 is W. k, s, p,
 * d: kernel, stride, padding, dilation (max; avg has d = 1; adaptive uses none).
 * first_nan: a max window stops at its first NaN (pool_ex.c), else the last NaN wins
 * (pool.c); either way the first maximum otherwise. include_pad, divisor: avg's
 * count_include_pad and divisor_override (0: none). */
typedef struct {
  int kind;
  int64_t planes, in[2], out[2], k[2], s[2], p[2], d[2];
  bool first_nan, include_pad;
  int64_t divisor;
} tg__pool_desc;

/* CUDA launchers (pool.cu) on device `device`'s stream; dtype float32 or float64.
 * Forward: y [planes, out] and, for max, idx [planes, out] (flat index in the input
 * plane). Backward: dx [planes, in] from dy [planes, out] (and idx for max), every
 * element written, each one gathered from the windows that contain it in output
 * order: no atomics, the same bits on every run. Return 0 or -1 with the error. */
int tg__pool_cuda_forward(int dtype, const tg__pool_desc *d, const void *x, void *y,
                          int64_t *idx, int device);
int tg__pool_cuda_backward(int dtype, const tg__pool_desc *d, const void *dy,
                           const int64_t *idx, void *dx, int device);

/* max_unpool2d over planes of n_idx indices into planes of n_big elements:
 * backward false, dst[idx[k]] = src[k] in order of k (one thread per plane, so
 * duplicate indices store the last, as the CPU; dst zeroed before); true,
 * dst[k] = src[idx[k]]. Indices already checked in [0, n_big). */
int tg__unpool_cuda(int dtype, int64_t planes, int64_t n_idx, int64_t n_big,
                    const void *src, const int64_t *idx, void *dst, bool backward,
                    int device);

#ifdef __cplusplus
}
#else
#include "tapegrad.h"

/* The pool d of x [N, C, H, W] (d's sizes x's, planes = N * C), after the caller's
 * checks, on x's device through the table of pool_ex.c: on the CPU, its loops (max
 * and avg; pool.c keeps its own), on CUDA pool.cu's. indices (may be NULL; max only)
 * gets a new reference to the argmax indices. */
tg_tensor *tg__pool_run(const char *op, const tg_tensor *x, const tg__pool_desc *d,
                        tg_tensor **indices);
#endif

#endif
