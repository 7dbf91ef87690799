/* Thread policy: tapegrad parallelises its own kernels with OpenMP and keeps OpenBLAS
 * on one thread, so the two pools never run at once on the same cores.
 *
 * Why not let OpenBLAS have the cores too: its worker threads busy-wait (with
 * sched_yield) for a long while after every call, and OpenMP's workers busy-wait
 * between parallel regions; with both pools sized to the machine, a training step that
 * alternates BLAS and OpenMP kernels has twice as many runnable threads as cores, and
 * two threads ran slower than one. Kernels that want a parallel GEMM split it into
 * per-thread blocks themselves (ops/conv), calling single-threaded BLAS from each
 * thread.
 *
 * OpenMP's own waiting is set by the environment, not by an API: GOMP_SPINCOUNT and
 * OMP_WAIT_POLICY are read once when libgomp loads. On a machine shared with other
 * busy processes, OMP_WAIT_POLICY=passive avoids spinning threads stealing the CPU
 * from the thread everyone waits for (bench/NOTES.md has figures). */
#include "runtime/internal.h"

#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void openblas_set_num_threads(int num_threads);

static atomic_int num_threads; /* 0: not initialised yet */

static int initial_threads(void) {
  static _Atomic bool warned;
  return (int)tg__env_int("TG_NUM_THREADS", 1, 4096, omp_get_num_procs(), &warned);
}

int tg_get_num_threads(void) {
  int n = atomic_load(&num_threads);
  if (n == 0) {
    n = initial_threads();
    int expected = 0;
    if (atomic_compare_exchange_strong(&num_threads, &expected, n))
      openblas_set_num_threads(1);
    else
      n = expected;
  }
  return n;
}

int tg_set_num_threads(int n) {
  if (n < 1)
    return tg__error("tg_set_num_threads: expected a thread count >= 1, got %d", n);
  atomic_store(&num_threads, n);
  openblas_set_num_threads(1);
  return 0;
}

/* The largest cache of cpu0 in sysfs (cache/indexN/level and size, "32768K"). */
static int64_t sysfs_llc_bytes(void) {
  int64_t best = 0;
  for (int i = 0; i < 8; i++) {
    char path[96];
    long level = 0, size = 0;
    char unit = 0;
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
    FILE *f = fopen(path, "r");
    if (!f)
      break;
    int ok = fscanf(f, "%ld", &level) == 1;
    fclose(f);
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
    if (!ok || !(f = fopen(path, "r")))
      continue;
    ok = fscanf(f, "%ld%c", &size, &unit) >= 1;
    fclose(f);
    int64_t bytes = (int64_t)size * (unit == 'K' ? 1024 : unit == 'M' ? 1 << 20 : 1);
    if (ok && level >= 2 && bytes > best)
      best = bytes;
  }
  return best;
}

int64_t tg__llc_bytes(void) {
  static _Atomic int64_t cached; /* 0: not read yet; racing threads store the same */
  int64_t b = atomic_load_explicit(&cached, memory_order_relaxed);
  if (!b) {
    b = sysfs_llc_bytes();
    if (b <= 0) {
      long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
      b = l3 > 0 ? (int64_t)l3 : (int64_t)32 << 20;
    }
    atomic_store_explicit(&cached, b, memory_order_relaxed);
  }
  return b;
}

/* At load time, so that BLAS calls made before any tapegrad kernel already run on one
 * thread (OpenBLAS, a dependency, is initialised before this). */
__attribute__((constructor)) static void threads_init(void) { tg_get_num_threads(); }

int tg__threads(int64_t work) {
  /* Below ~32k elementary operations a parallel region costs more than it saves. */
  if (work < 32768)
    return 1;
  int n = tg_get_num_threads();
  int64_t useful = work / 16384;
  return useful < n ? (int)useful : n;
}

void tg__parallel_for(int64_t n, int64_t work, tg__range_fn body, void *ctx) {
  const int threads = tg__threads(work);
  if (n <= 0)
    return;
  if (threads == 1 || n == 1) {
    body(ctx, 0, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), m = omp_get_num_threads();
    const int64_t part = n / m, rem = n % m;
    const int64_t lo = t * part + (t < rem ? t : rem), hi = lo + part + (t < rem);
    if (lo < hi)
      body(ctx, lo, hi);
  }
}

/* ---- deterministic mode ----
 * Reductions split over threads add their partial sums in a fixed order, so a given
 * thread count always gives the same bits; deterministic mode also fixes the split
 * itself (tg__reduce_parts), so that every thread count gives the same bits. */
static atomic_int deterministic; /* 0: not read yet, 1: off, 2: on */

bool tg_get_deterministic(void) {
  int s = atomic_load(&deterministic);
  if (!s) {
    const char *env = getenv("TG_DETERMINISTIC");
    int expected = 0;
    s = env && !strcmp(env, "1") ? 2 : 1;
    if (!atomic_compare_exchange_strong(&deterministic, &expected, s))
      s = expected;
  }
  return s == 2;
}

void tg_set_deterministic(bool on) { atomic_store(&deterministic, on ? 2 : 1); }

int tg__reduce_parts(int64_t work) {
  return tg_get_deterministic() ? (work < 32768 ? 1 : TG_DET_PARTS) : tg__threads(work);
}

int tg__reduce_threads(int64_t work) {
  return tg_get_deterministic() ? 1 : tg__threads(work);
}
