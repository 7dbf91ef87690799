/* Dropout's mask, shared by the CPU loop of dropout.c and the CUDA kernel of
 * dropout.cu, so that both devices drop the same elements for the same seed: a pure
 * function of one key drawn from the global generator and the element's index (the
 * i-th output of a splitmix64 stream seeded with the key: a counter-based generator,
 * as Philox is, but this one, so the CPU's masks stay as they were). Plain C, valid
 * C++. */
#ifndef TG_OPS_DROPOUT_DROPOUT_H
#define TG_OPS_DROPOUT_DROPOUT_H

#include "runtime/cuda.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  uint64_t key;
  uint64_t threshold; /* keep element i when its 53-bit draw is below this */
  double scale;
} tg__dropout_mask;

static inline TG_HOST_DEVICE bool tg__dropout_keep(const tg__dropout_mask *m, int64_t i) {
  uint64_t z = m->key + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (z >> 11) < m->threshold;
}

/* dst[i] = src[i] * (keep(m, i) ? scale : 0) for i in [0, n) on device's stream (the
 * forward on x, the backward on dy); dtype float32 or float64. 0 or -1 with the
 * error. */
int tg__dropout_cuda(int dtype, const tg__dropout_mask *m, const void *src, void *dst,
                     int64_t n, int device);

#ifdef __cplusplus
}
#endif

#endif
