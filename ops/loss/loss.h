/* Internal entry points of the losses (loss.c) for loss_ex.c. */
#ifndef TG_OPS_LOSS_LOSS_H
#define TG_OPS_LOSS_LOSS_H

#include "graph/internal.h"

/* Cross-entropy over int64 class targets with optional [C] class weights (the
 * input's dtype and device; constants, no gradient) and label smoothing in [0, 1],
 * errors naming op; one kernel pair per device (loss.cu on cuda). */
tg_tensor *tg__cross_entropy(const char *op, const tg_tensor *input,
                             const tg_tensor *target, tg_reduction reduction,
                             int64_t ignore_index, const tg_tensor *weight,
                             double smoothing);
/* The checks of a class loss (input named in_name, target, reduction) and of the
 * targets' values: the number of targets not ignored, or -1 with the error. On CUDA
 * the values are checked by the loss's kernels (loss_cuda.h) and this returns 0. */
int64_t tg__class_targets(const char *op, const char *in_name, const tg_tensor *input,
                          const tg_tensor *target, tg_reduction reduction,
                          int64_t ignore_index);

/* The 4 doubles a CUDA loss keeps on the device (loss_cuda.h: sums, scale, W), saved
 * for its backward. */
static inline tg_tensor *tg__loss_new_acc(const tg_tensor *like) {
  static const int64_t four[1] = {4};
  return tg__new(four, 1, TG_F64, like->device);
}

#endif
