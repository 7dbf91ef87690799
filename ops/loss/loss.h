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
 * targets' values: the number of targets not ignored, or -1 with the error. */
int64_t tg__class_targets(const char *op, const char *in_name, const tg_tensor *input,
                          const tg_tensor *target, tg_reduction reduction,
                          int64_t ignore_index);

#endif
