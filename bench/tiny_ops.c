/* Per-op overhead on tiny tensors, where the kernel is a few instructions and what is
 * timed is the op's bookkeeping: checks, the tensor, its storage, the tape's node.
 *
 *   bench/tiny_ops [--reps N] [--ops N]
 *
 * Each case runs `ops` ops on [4] float32 tensors inside one tg_scope (as a training
 * loop does), then closes the scope, `reps` times; it prints the median per op of this
 * thread's CPU time (steady under load) and of the wall time:
 *   add            tg_add(a, b), nothing requires grad
 *   add grad       tg_add(a, b) with a requiring grad: each op records a node
 *   add chain+bwd  y = tg_add(y, b) chained `ops` times from a leaf, then tg_backward
 *                  (forward and backward, per op)
 *   empty          tg_empty of [4]: the allocation floor of any op
 *   omp region     an empty OpenMP `parallel for` on one thread, which every CPU kernel
 *                  opens (libgomp builds a team even for one thread): the baseline the
 *                  last column divides by */
#include "common.h"
#include "tapegrad.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_REPS = 1000 };

typedef enum { ADD, ADD_GRAD, CHAIN, EMPTY, OMP, N_CASES } bench_case;
static const char *const NAMES[N_CASES] = {"add", "add grad", "add chain+bwd", "empty",
                                           "omp region"};

/* One thread, as tg__threads gives a tiny kernel; not a constant, as it is not one in
 * the kernels either. */
static volatile int one_thread = 1;
static volatile float sink[4];

static void die(const char *what) {
  fprintf(stderr, "bench/tiny_ops: %s: %s\n", what, tg_last_error());
  exit(1);
}

/* One rep of case c: `ops` ops in a scope. */
static void run(bench_case c, int ops, tg_tensor *a, tg_tensor *b, tg_tensor *seed) {
  static const int64_t four = 4;
  tg_scope_begin();
  tg_tensor *y = a;
  for (int i = 0; i < ops; i++) {
    switch (c) {
    case ADD:
      y = tg_add(b, b);
      break;
    case ADD_GRAD:
      y = tg_add(a, b);
      break;
    case CHAIN:
      y = tg_add(y, b);
      break;
    case EMPTY:
      y = tg_empty(&four, 1, TG_F32, TG_CPU);
      break;
    case OMP:
#pragma omp parallel for num_threads(one_thread)
      for (int j = 0; j < 4; j++)
        sink[j] += 1;
      break;
    case N_CASES:
      break;
    }
    if (!y)
      die(NAMES[c]);
  }
  if (c == CHAIN && tg_backward_ex(y, seed, false) < 0)
    die("tg_backward");
  tg_scope_end();
  tg_zero_grad(a);
}

int main(int argc, char **argv) {
  int v[2] = {31, 256}; /* reps, ops */
  static const char *const names[2] = {"reps", "ops"};
  if (bench_int_flags(argc, argv, 2, names, v) < 0) {
    fprintf(stderr, "usage: %s [--reps N (1-%d)] [--ops N]\n", argv[0], MAX_REPS);
    return 2;
  }
  const int reps = v[0], ops = v[1];
  if (reps < 1 || reps > MAX_REPS || ops < 1) {
    fprintf(stderr, "bench/tiny_ops: --reps must be in 1-%d and --ops positive\n",
            MAX_REPS);
    return 2;
  }
  tg_set_num_threads(1);
  const int64_t four = 4;
  tg_tensor *a = tg_ones(&four, 1, TG_F32, TG_CPU),
            *b = tg_ones(&four, 1, TG_F32, TG_CPU),
            *seed = tg_ones(&four, 1, TG_F32, TG_CPU);
  if (!a || !b || !seed || tg_set_requires_grad(a, true) < 0)
    die("setup");
  static double cpu[N_CASES][MAX_REPS], wall[N_CASES][MAX_REPS];
  for (int c = 0; c < N_CASES; c++)
    run(c, ops, a, b, seed); /* warm-up: caches and allocator arenas */
  /* The cases take turns within each rep, so that a change in load hits all alike. */
  for (int r = 0; r < reps; r++)
    for (int c = 0; c < N_CASES; c++) {
      double w0 = bench_now(), c0 = bench_thread_cpu_now();
      run(c, ops, a, b, seed);
      cpu[c][r] = (bench_thread_cpu_now() - c0) * 1e9 / ops;
      wall[c][r] = (bench_now() - w0) * 1e9 / ops;
    }
  printf("tiny ops on [4] float32, 1 thread: median of %d reps of %d ops in a scope, ns "
         "per op (load average %.2f)\n",
         reps, ops, bench_load_average());
  printf("%-14s %10s %10s %12s\n", "case", "cpu ns", "wall ns", "cpu / omp");
  double med[N_CASES];
  for (int c = 0; c < N_CASES; c++)
    med[c] = bench_median(cpu[c], reps);
  for (int c = 0; c < N_CASES; c++)
    printf("%-14s %10.0f %10.0f %12.2f\n", NAMES[c], med[c], bench_median(wall[c], reps),
           med[c] / med[OMP]);
  tg_tensor_free(a);
  tg_tensor_free(b);
  tg_tensor_free(seed);
  return 0;
}
