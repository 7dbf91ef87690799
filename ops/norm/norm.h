/* Internal to ops/norm: the CPU kernels GroupNorm, BatchNorm and LayerNorm share
 * (norm_tmpl.h, instantiated here for float and double) and common checks. */
#ifndef TG_OPS_NORM_H
#define TG_OPS_NORM_H

#include "graph/internal.h"

#include <math.h>
#include <string.h>

/* Statistics of one normalised set: mean = pivot + dmean, where the pivot is exactly
 * representable in the element type and dmean is small (see norm_tmpl.h). Saved for
 * backward as float64 tensors [..., 3]. */
typedef struct {
  double pivot, dmean, rstd;
} norm_stats;

/* Elements summed in T before a block is merged into a double. */
#define NORM_BLOCK 2048
/* Elements whose mean is the first pivot of a statistics pass. */
#define NORM_SAMPLE 64
/* From this size on the input of GroupNorm comes from DRAM rather than from the last
 * level cache, and its passes prefetch the next group while writing (a 15-20% gain
 * there; below it the extra lines only evict the group being worked on). */
#define NORM_PREFETCH_BYTES (16 << 20)

/* Non-temporal stores: outputs written with them go to memory without first being read
 * into the cache (no read-for-ownership) and without evicting the inputs, which the
 * backward reads again. Worth it only for tensors that would not stay in the cache
 * anyway (GroupNorm decides by size). The generic loops compute a block into an L1
 * buffer and norm_stream_T copies it out; after the last one a thread fences. */
#define NORM_STREAM_BLOCK 64
#if defined(__AVX__)
#include <immintrin.h>
enum { NORM_STREAM_ALIGN = 32 };
static inline void norm_stream_f(float *dst, const float *src, int64_t n) {
  for (int64_t i = 0; i < n; i += 8)
    _mm256_stream_ps(dst + i, _mm256_load_ps(src + i));
}
static inline void norm_stream_d(double *dst, const double *src, int64_t n) {
  for (int64_t i = 0; i < n; i += 4)
    _mm256_stream_pd(dst + i, _mm256_load_pd(src + i));
}
static inline void norm_stream_fence(void) { _mm_sfence(); }
#else
enum { NORM_STREAM_ALIGN = 1 };
static inline void norm_stream_f(float *dst, const float *src, int64_t n) {
  memcpy(dst, src, (size_t)n * sizeof *dst);
}
static inline void norm_stream_d(double *dst, const double *src, int64_t n) {
  memcpy(dst, src, (size_t)n * sizeof *dst);
}
static inline void norm_stream_fence(void) {}
#endif

/* With AVX-512 the float32 statistics sums are intrinsics (norm_tmpl.h sum_dev2):
 * the portable loop's lanes, blocks and order, so the same bits, in fewer cycles. */
#if defined(__AVX512F__)
#define NORM_SUMS_AVX512 1
#endif
#define T float
#define LANES 32
#define NK(name) norm_##name##_f
#include "norm_tmpl.h"
#undef T
#undef LANES
#undef NK
#undef NORM_SUMS_AVX512

#define T double
#define LANES 16
#define NK(name) norm_##name##_d
#include "norm_tmpl.h"
#undef T
#undef LANES
#undef NK

/* Picks the float or double instance from the type of the first pointer argument. */
#define NORM_PICK(name, p)                                                               \
  _Generic((p), const float *: norm_##name##_f, float *: norm_##name##_f,      \
           const double *: norm_##name##_d, double *: norm_##name##_d)
#define norm_moments(x, ...) NORM_PICK(moments, x)(x, __VA_ARGS__)
#define norm_affine(x, ...) NORM_PICK(affine, x)(x, __VA_ARGS__)
#define norm_affine_act(x, ...) NORM_PICK(affine_act, x)(x, __VA_ARGS__)
#define norm_affine_vec(x, ...) NORM_PICK(affine_vec, x)(x, __VA_ARGS__)
#define norm_grad_sums(dy, ...) NORM_PICK(grad_sums, dy)(dy, __VA_ARGS__)
#define norm_grad_sums_act(dy, ...) NORM_PICK(grad_sums_act, dy)(dy, __VA_ARGS__)
#define norm_grad_sums_vec(dy, ...) NORM_PICK(grad_sums_vec, dy)(dy, __VA_ARGS__)
#define norm_dx(dy, ...) NORM_PICK(dx, dy)(dy, __VA_ARGS__)
#define norm_dx_act(dy, ...) NORM_PICK(dx_act, dy)(dy, __VA_ARGS__)
#define norm_dx_vec(dy, ...) NORM_PICK(dx_vec, dy)(dy, __VA_ARGS__)

/* t's data, or NULL for a missing optional tensor. */
static inline void *norm_data_or_null(const tg_tensor *t) {
  return t ? tg__data(t) : NULL;
}

/* New gradients for the inputs (x, weight, bias) of a normalisation node that need
 * one, NULL for the others. Returns 0, or -1 (the backward's scope frees any made). */
static inline int norm_new_grads(const tg_node *node, tg_tensor *grads[3]) {
  for (int i = 0; i < 3; i++) {
    grads[i] = NULL;
    if (tg__input_needs_grad(node, i) && !(grads[i] = tg__new_like(node->inputs[i])))
      return -1;
  }
  return 0;
}

/* eps may be any finite number, as PyTorch takes it: 0, or negative (where var + eps < 0
 * the statistics are NaN, as in PyTorch). NaN and Inf are refused: PyTorch takes them
 * and returns NaN or zeros everywhere, which no caller means. */
static inline int norm_check_eps(const char *op, double eps) {
  if (!isfinite(eps))
    return tg__error("%s: expected eps to be a finite number, but got %g", op, eps);
  return 0;
}

#endif
