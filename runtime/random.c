/* The global generator: xoshiro256** seeded through splitmix64, behind a lock so
 * several threads may draw from it. Same seed, same numbers on every platform. */
#include "runtime/internal.h"

#include <math.h>
#include <pthread.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t state[4] = {0x9e3779b97f4a7c15ull, 0xbf58476d1ce4e5b9ull,
                            0x94d049bb133111ebull, 0x2545f4914f6cdd1dull};

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_locked(void) {
  uint64_t result = rotl(state[1] * 5, 7) * 9;
  uint64_t t = state[1] << 17;
  state[2] ^= state[0];
  state[3] ^= state[1];
  state[1] ^= state[2];
  state[0] ^= state[3];
  state[2] ^= t;
  state[3] = rotl(state[3], 45);
  return result;
}

void tg_manual_seed(uint64_t seed) {
  pthread_mutex_lock(&lock);
  for (int i = 0; i < 4; i++)
    state[i] = splitmix64(&seed);
  pthread_mutex_unlock(&lock);
}

void tg_random_get_state(uint64_t out[4]) {
  pthread_mutex_lock(&lock);
  for (int i = 0; i < 4; i++)
    out[i] = state[i];
  pthread_mutex_unlock(&lock);
}

void tg_random_set_state(const uint64_t in[4]) {
  pthread_mutex_lock(&lock);
  for (int i = 0; i < 4; i++)
    state[i] = in[i];
  pthread_mutex_unlock(&lock);
}

uint64_t tg__rand_u64(void) {
  pthread_mutex_lock(&lock);
  uint64_t r = next_locked();
  pthread_mutex_unlock(&lock);
  return r;
}

/* 53 random bits -> [0, 1). */
static double to_unit(uint64_t r) { return (double)(r >> 11) * 0x1.0p-53; }

void tg__rand_fill_uniform(double *out, int64_t n) {
  pthread_mutex_lock(&lock);
  for (int64_t i = 0; i < n; i++)
    out[i] = to_unit(next_locked());
  pthread_mutex_unlock(&lock);
}

/* Box-Muller, two normals per pair of uniforms. */
void tg__rand_fill_normal(double *out, int64_t n) {
  pthread_mutex_lock(&lock);
  for (int64_t i = 0; i < n; i += 2) {
    double u1 = 1.0 - to_unit(next_locked()); /* (0, 1]: log is finite */
    double u2 = to_unit(next_locked());
    double r = sqrt(-2.0 * log(u1));
    out[i] = r * cos(2.0 * M_PI * u2);
    if (i + 1 < n)
      out[i + 1] = r * sin(2.0 * M_PI * u2);
  }
  pthread_mutex_unlock(&lock);
}
