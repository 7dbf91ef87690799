/* Thread count shared by tapegrad's OpenMP loops and OpenBLAS, so the two pools never
 * oversubscribe the cores: BLAS is called outside parallel regions only. */
#include "runtime/internal.h"

#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>

void openblas_set_num_threads(int num_threads);

static atomic_int num_threads; /* 0: not initialised yet */

static int initial_threads(void) {
  const char *env = getenv("TG_NUM_THREADS");
  if (env) {
    char *end;
    long n = strtol(env, &end, 10);
    if (*env && !*end && n >= 1 && n <= 4096)
      return (int)n;
  }
  return omp_get_num_procs();
}

int tg_get_num_threads(void) {
  int n = atomic_load(&num_threads);
  if (n == 0) {
    n = initial_threads();
    int expected = 0;
    if (atomic_compare_exchange_strong(&num_threads, &expected, n))
      openblas_set_num_threads(n);
    else
      n = expected;
  }
  return n;
}

int tg_set_num_threads(int n) {
  if (n < 1)
    return tg__error("tg_set_num_threads: expected a thread count >= 1, got %d", n);
  atomic_store(&num_threads, n);
  openblas_set_num_threads(n);
  return 0;
}

int tg__threads(int64_t work) {
  /* Below ~32k elementary operations a parallel region costs more than it saves. */
  if (work < 32768)
    return 1;
  int n = tg_get_num_threads();
  int64_t useful = work / 16384;
  return useful < n ? (int)useful : n;
}
