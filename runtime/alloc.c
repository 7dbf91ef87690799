/* Host memory for tensor storage. Large buffers are kept in a small cache keyed by
 * their exact (rounded) size when freed, so a training step that allocates the same
 * shapes every iteration reuses them instead of mapping fresh pages from the OS and
 * faulting them in again. Small buffers go straight to malloc. */
#include "runtime/cuda.h"
#include "runtime/internal.h"

#include <pthread.h>
#include <stdlib.h>

enum {
  CACHE_MIN_BYTES = 64 << 10, /* below this, malloc's own bins do well */
  CACHE_SLOTS = 256,
};

#ifdef __SANITIZE_ADDRESS__
static const size_t cache_limit = 0; /* let ASan see every use after free */
#else
static const size_t cache_limit = (size_t)1 << 30; /* bytes held idle at most */
#endif

typedef struct {
  void *ptr;
  size_t bytes;
} slot;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static slot cache[CACHE_SLOTS];
static int n_cached;
static size_t cached_bytes;

static size_t round_size(size_t bytes) {
  size_t align = bytes >= CACHE_MIN_BYTES ? 4096 : 64;
  return bytes ? (bytes + align - 1) / align * align : align;
}

void *tg__host_alloc(size_t bytes) {
  size_t size = round_size(bytes);
  if (size >= CACHE_MIN_BYTES) {
    pthread_mutex_lock(&lock);
    for (int i = n_cached - 1; i >= 0; i--) {
      if (cache[i].bytes == size) {
        void *p = cache[i].ptr;
        cache[i] = cache[--n_cached];
        cached_bytes -= size;
        pthread_mutex_unlock(&lock);
        return p;
      }
    }
    pthread_mutex_unlock(&lock);
  }
  return aligned_alloc(64, size);
}

void tg__host_free(void *p, size_t bytes) {
  if (!p)
    return;
  size_t size = round_size(bytes);
  if (size >= CACHE_MIN_BYTES) {
    pthread_mutex_lock(&lock);
    if (n_cached < CACHE_SLOTS && cached_bytes + size <= cache_limit) {
      cache[n_cached++] = (slot){p, size};
      cached_bytes += size;
      pthread_mutex_unlock(&lock);
      return;
    }
    pthread_mutex_unlock(&lock);
  }
  free(p);
}

static void empty_host_cache(void) {
  pthread_mutex_lock(&lock);
  for (int i = 0; i < n_cached; i++)
    free(cache[i].ptr);
  n_cached = 0;
  cached_bytes = 0;
  pthread_mutex_unlock(&lock);
}

void tg_empty_cache(void) {
  empty_host_cache();
  tg__cuda_empty_cache();
}

/* Frees the host cache at exit so leak checkers see only real leaks (device memory
 * goes with the CUDA context, which may already be torn down by then). */
__attribute__((destructor)) static void release_cache_at_exit(void) {
  empty_host_cache();
}
