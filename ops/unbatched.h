/* PyTorch's unbatched inputs ([C, H, W] for the 2-D convolutions and pools): ops run
 * them as a batch of one and drop the batch dim again, differentiably. */
#ifndef TG_OPS_UNBATCHED_H
#define TG_OPS_UNBATCHED_H

#include "tapegrad.h"

/* x as [1, ...]: a new reference sharing x's storage. */
static inline tg_tensor *tg__add_batch(const tg_tensor *x) { return tg_unsqueeze(x, 0); }

/* y [1, ...] without its batch dim; consumes the reference y (NULL passes through). */
static inline tg_tensor *tg__drop_batch(tg_tensor *y) {
  if (!y)
    return NULL;
  tg_tensor *r = tg_squeeze(y, 0);
  tg_tensor_free(y);
  return r;
}

#endif
