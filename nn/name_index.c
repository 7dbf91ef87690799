/* Hash indexes from names to positions in an array (a var store's variables and
 * paths): open addressing with linear probing, FNV-1a, at most half full, so a lookup
 * takes a few probes however many names there are. */
#include "nn/internal.h"

#include <stdlib.h>
#include <string.h>

static size_t hash_name(const char *s) { /* FNV-1a */
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return (size_t)(h ^ h >> 32);
}

/* The slot holding name, or the empty slot where it would go (ix->cap > 0). */
static size_t slot_of(const tg__name_index *ix, const void *owner, const char *name) {
  size_t mask = (size_t)ix->cap - 1, h = hash_name(name) & mask;
  while (ix->slots[h] >= 0 && strcmp(ix->at(owner, ix->slots[h]), name))
    h = (h + 1) & mask;
  return h;
}

int tg__name_find(const tg__name_index *ix, const void *owner, const char *name) {
  return ix->cap ? ix->slots[slot_of(ix, owner, name)] : -1;
}

void tg__name_refill(tg__name_index *ix, const void *owner, int n) {
  for (int i = 0; i < ix->cap; i++)
    ix->slots[i] = -1;
  for (int i = 0; i < n; i++)
    tg__name_add(ix, owner, i);
}

int tg__name_reserve(tg__name_index *ix, const void *owner, int n, const char *op) {
  if (2 * (n + 1) <= ix->cap)
    return 0;
  int cap = 64;
  while (cap < 4 * (n + 1))
    cap *= 2;
  int *slots = malloc((size_t)cap * sizeof *slots);
  if (!slots)
    return tg__error("%s: out of memory", op);
  free(ix->slots);
  ix->slots = slots;
  ix->cap = cap;
  tg__name_refill(ix, owner, n);
  return 0;
}

void tg__name_add(tg__name_index *ix, const void *owner, int i) {
  ix->slots[slot_of(ix, owner, ix->at(owner, i))] = i;
}

void tg__name_index_free(tg__name_index *ix) {
  free(ix->slots);
  ix->slots = NULL;
  ix->cap = 0;
}
