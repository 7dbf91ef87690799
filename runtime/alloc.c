/* Host memory for tensor storage. Large buffers are kept in a small cache keyed by
 * their exact (rounded) size when freed, so a training step that allocates the same
 * shapes every iteration reuses them instead of mapping fresh pages from the OS and
 * faulting them in again. Small buffers go straight to malloc. Below them, the
 * fixed-size blocks that hold tensor, storage and node headers (tg__small_alloc). */
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

/* ---------------------------------------------------------- small blocks -- */

/* Every op allocates a tensor header, a storage header, often a tiny buffer and, when
 * recording, a node: several small malloc/free pairs per op. Freed small chunks sit in
 * glibc's fastbins, and the next request of a large-bin size (OpenMP allocates each
 * parallel region's team, a few KiB, even for one thread) first runs
 * malloc_consolidate over all of them, which doubles the cost of a one-thread region
 * (bench/tiny_ops, bench/NOTES.md). So these headers come in blocks of one size, and
 * freed blocks wait in a per-thread list (linked through the blocks) for the next: no
 * lock (a block freed on another thread than the one that allocated it joins that
 * thread's list), at most SMALL_CACHED per thread, returned to malloc when the thread
 * exits (a pthread key's destructor) or, for the thread that runs exit handlers, by
 * the destructor below. Under ASan nothing is kept, so that ASan sees every use of a
 * freed header. */
#ifdef __SANITIZE_ADDRESS__
enum { SMALL_CACHED = 0 };
#else
/* Blocks kept per thread: 512 KiB at most. */
enum { SMALL_CACHED = 1024 };
#endif

typedef struct free_block {
  struct free_block *next;
} free_block;

typedef struct {
  free_block *head;
  int len;
  bool registered; /* with the thread-exit key */
  bool closed;     /* the thread is exiting: blocks go straight to free */
} small_cache;

static _Thread_local small_cache small;
static pthread_key_t small_key;
static bool small_key_ok;
static pthread_once_t small_key_once = PTHREAD_ONCE_INIT;

static void small_close(small_cache *c) {
  c->closed = true;
  while (c->head) {
    free_block *b = c->head;
    c->head = b->next;
    free(b);
  }
  c->len = 0;
}

static void small_thread_exit(void *c) { small_close(c); }
static void small_key_create(void) {
  small_key_ok = pthread_key_create(&small_key, small_thread_exit) == 0;
}

void *tg__small_alloc(void) {
  free_block *b = small.head;
  if (!b)
    return aligned_alloc(64, TG_SMALL_BYTES);
  small.head = b->next;
  small.len--;
  return b;
}

void tg__small_free(void *p) {
  if (!p)
    return;
  if (small.len < SMALL_CACHED && !small.closed) {
    if (!small.registered) {
      pthread_once(&small_key_once, small_key_create);
      small.registered = small_key_ok && pthread_setspecific(small_key, &small) == 0;
    }
    if (small.registered) {
      free_block *b = p;
      b->next = small.head;
      small.head = b;
      small.len++;
      return;
    }
  }
  free(p);
}

/* The thread running exit handlers (pthread key destructors do not run for it). The
 * key goes too, so that a thread outliving a dlclose of the library does not call
 * into unloaded code when it exits (its blocks are then left to the OS). */
__attribute__((destructor)) static void release_small_at_exit(void) {
  small_close(&small);
  if (small_key_ok)
    pthread_key_delete(small_key);
}
