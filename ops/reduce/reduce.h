/* CUDA launchers of the reductions (reduce.cu), plain C; dtype a tg_dtype. */
#ifndef TG_OPS_REDUCE_H
#define TG_OPS_REDUCE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[o] = sum over the reduced dims of x, accumulated in double: output o's elements
 * start at x + sum of o's kept-dim indices times kstride, and element j of those at
 * the offset of j's reduced-dim indices times rstride. */
int tg__reduce_cuda_sum(int dtype, const void *x, int kn, const int64_t *kshape,
                        const int64_t *kstride, int rn, const int64_t *rshape,
                        const int64_t *rstride, int64_t n_out, int64_t count, void *out,
                        int device);
/* x viewed as [outer, r, inner]: idx (int64) and val (may be NULL) of the first
 * maximum over r of each (outer, inner); NaN wins, as on the CPU. */
int tg__reduce_cuda_max(int dtype, const void *x, int64_t outer, int64_t r, int64_t inner,
                        int64_t *idx, void *val, int device);
/* dx (zeroed, [outer, r, inner]) at each maximum = g ([outer, inner]). */
int tg__reduce_cuda_max_scatter(int dtype, const void *g, const int64_t *idx,
                                int64_t outer, int64_t r, int64_t inner, void *dx,
                                int device);

#ifdef __cplusplus
}
#endif

#endif
