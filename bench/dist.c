/* Data-parallel benchmark on the U-Net of examples/nets.h (the segmentation example's
 * net, batch 8 of 3x64x64 as bench/train_step), run as two ranks:
 *
 *   mpirun -np 2 --bind-to none build/bench/dist_bench [--steps N] [--reps N]
 *
 *  1. the training step (forward, backward, SGD) of one process on the whole batch
 *     with 2 threads and with 1, while rank 1 waits without spinning;
 *  2. the step of two ranks, 1 thread each, on 4 images each, with
 *     tg_dist_average_gradients between backward and SGD (its time there includes
 *     waiting for the slower rank);
 *  3. tg_dist_average_gradients alone on those gradients (25 MiB buckets, and one
 *     bucket per tensor) next to one MPI_Allreduce of a buffer of the same bytes,
 *     taking turns, after a barrier each.
 * Medians of rank 0's wall times. Under mpirun as root, Open MPI wants
 * OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1. */
#include "common.h"
#include "nets.h"
#include "tapegrad.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_REPS = 1000, BATCH = 8, WARMUP = 2 };

/* Waits for every rank while sleeping, so that a rank left out of a measurement
 * leaves the cores to the others (MPI_Barrier spins). */
static void idle_barrier(void) {
  MPI_Request req;
  int done = 0;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  while (MPI_Test(&req, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done)
    nanosleep(&(struct timespec){0, 5000000}, NULL);
}

static void die(const char *what) {
  fprintf(stderr, "bench/dist: %s: %s\n", what, tg_last_error());
  MPI_Abort(MPI_COMM_WORLD, 1);
}

typedef struct {
  ex_unet net;
  tg_optimizer *opt;
  tg_tensor *x, *y;
} trainer;

/* The net from seed 0 and `n` random scenes (a stand-in for data: speed does not
 * depend on the values). */
static void trainer_new(trainer *t, int64_t n, uint64_t data_seed) {
  tg_manual_seed(0);
  if (ex_unet_build(&t->net, TG_CPU) < 0)
    die("ex_unet_build");
  tg_manual_seed(data_seed);
  const int64_t s = EX_UNET_SIDE;
  t->x = tg_randn(TG_SHAPE(n, 3, s, s), TG_F32, TG_CPU);
  tg_tensor *u = tg_rand(TG_SHAPE(n, s, s), TG_F32, TG_CPU);
  t->y = u ? tg_zeros(TG_SHAPE(n, s, s), TG_I64, TG_CPU) : NULL;
  if (!t->x || !t->y)
    die("inputs");
  for (int64_t i = 0; i < n * s * s; i++)
    ((int64_t *)tg_data(t->y))[i] = (int64_t)(((float *)tg_data(u))[i] * EX_UNET_CLASSES);
  tg_tensor_free(u);
  tg_sgd_config sc = tg_sgd_config_default(0.01);
  sc.momentum = 0.9;
  if (!(t->opt = tg_sgd_new(t->net.vs, sc)))
    die("tg_sgd_new");
}

static void trainer_free(trainer *t) {
  tg_optimizer_free(t->opt);
  tg_tensor_free(t->x);
  tg_tensor_free(t->y);
  tg_varstore_free(t->net.vs);
}

/* One step; returns its wall ms and adds the averaging's to *avg_ms. */
static double step(trainer *t, bool dist, double *avg_ms) {
  double t0 = bench_now();
  tg_scope_begin();
  tg_tensor *loss = tg_cross_entropy(ex_unet_forward(&t->net, t->x, true), t->y,
                                     TG_REDUCTION_MEAN, -100);
  tg_optimizer_zero_grad(t->opt);
  if (!loss || tg_backward(loss) < 0)
    die("backward");
  double a0 = bench_now();
  if (dist && tg_dist_average_gradients(t->net.vs) < 0)
    die("tg_dist_average_gradients");
  *avg_ms += (bench_now() - a0) * 1e3;
  if (tg_optimizer_step(t->opt) < 0)
    die("step");
  tg_scope_end();
  return (bench_now() - t0) * 1e3;
}

static double train(trainer *t, int steps, bool dist, double *avg_ms) {
  double ms[MAX_REPS], ignored = 0;
  for (int i = 0; i < WARMUP; i++)
    step(t, dist, &ignored);
  *avg_ms = 0;
  for (int i = 0; i < steps; i++)
    ms[i] = step(t, dist, avg_ms);
  *avg_ms /= steps;
  return bench_median(ms, steps);
}

int main(int argc, char **argv) {
  int v[2] = {8, 30}; /* steps, reps */
  static const char *const names[2] = {"steps", "reps"};
  if (bench_int_flags(argc, argv, 2, names, v) < 0) {
    fprintf(stderr, "usage: mpirun -np 2 %s [--steps N] [--reps N]\n", argv[0]);
    return 2;
  }
  int steps = v[0], reps = v[1];
  if (steps < 1 || steps > MAX_REPS || reps < 1 || reps > MAX_REPS) {
    fprintf(stderr, "bench/dist: --steps and --reps take 1 to %d\n", MAX_REPS);
    return 2;
  }
  if (tg_dist_init() < 0) {
    fprintf(stderr, "bench/dist: %s\n", tg_last_error());
    return 1;
  }
  int rank = tg_dist_rank(), world = tg_dist_world_size();
  if (world != 2) {
    fprintf(stderr, "bench/dist: run it as two ranks: mpirun -np 2 --bind-to none %s\n",
            argv[0]);
    tg_dist_finalize();
    return 2;
  }

  /* 1. One process, whole batch, both cores. */
  double one_ms[2] = {NAN, NAN}, ignored; /* 2 threads, 1 thread */
  for (int i = 0; i < 2 && rank == 0; i++) {
    tg_set_num_threads(2 - i);
    trainer t;
    trainer_new(&t, BATCH, 1);
    one_ms[i] = train(&t, steps, false, &ignored);
    trainer_free(&t);
  }
  idle_barrier();

  /* 2. Two ranks, half the batch each, a core each. */
  tg_set_num_threads(1);
  trainer t;
  trainer_new(&t, BATCH / world, 1 + (uint64_t)rank);
  double avg_in_step_ms, two_ms = train(&t, steps, true, &avg_in_step_ms);

  /* 3. The averaging alone, next to one MPI_Allreduce of the same bytes. */
  int n_grads = 0;
  int64_t numel = 0;
  for (int i = 0; i < tg_varstore_len(t.net.vs); i++) {
    tg_tensor *g = tg_grad(tg_varstore_var(t.net.vs, i, NULL));
    n_grads += g != NULL;
    numel += g ? tg_numel(g) : 0;
  }
  float *flat = calloc((size_t)numel, sizeof *flat);
  if (!flat)
    die("out of memory");
  static const int64_t caps[2] = {25 << 20, 1};
  double ms[3][MAX_REPS];
  for (int r = 0; r < reps; r++) {
    for (int c = 0; c < 2; c++) {
      if (tg_dist_set_bucket_bytes(caps[c]) < 0)
        die("tg_dist_set_bucket_bytes");
      MPI_Barrier(MPI_COMM_WORLD);
      double t0 = bench_now();
      if (tg_dist_average_gradients(t.net.vs) < 0)
        die("tg_dist_average_gradients");
      ms[c][r] = (bench_now() - t0) * 1e3;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = bench_now();
    MPI_Allreduce(MPI_IN_PLACE, flat, (int)numel, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    ms[2][r] = (bench_now() - t0) * 1e3;
  }
  double bucketed = bench_median(ms[0], reps), per_tensor = bench_median(ms[1], reps),
         one_buffer = bench_median(ms[2], reps);
  if (rank == 0) {
    printf("bench/dist: U-Net, batch %d, %d gradients of %lld floats (%.2f MB); "
           "load %.2f\n",
           BATCH, n_grads, (long long)numel, (double)numel * 4 / 1e6,
           bench_load_average());
    printf("%-44s %9s | %-24s %9s | %6s\n", "2 ranks", "ms", "baseline", "ms", "ratio");
    printf("%-44s %9.3f | %-24s %9.3f | %6.2f\n",
           "tg_dist_average_gradients (25 MiB buckets)", bucketed,
           "MPI_Allreduce one buffer", one_buffer, bucketed / one_buffer);
    printf("%-44s %9.3f | %-24s %9.3f | %6.2f\n",
           "tg_dist_average_gradients (one per tensor)", per_tensor,
           "MPI_Allreduce one buffer", one_buffer, per_tensor / one_buffer);
    for (int i = 0; i < 2; i++)
      printf("%-44s %9.1f | %-24s %9.1f | %6.2f\n",
             "step, 2 ranks x 1 thread, 4 images each", two_ms,
             i ? "1 rank x 1 thread, 8" : "1 rank x 2 threads, 8", one_ms[i],
             two_ms / one_ms[i]);
    printf("%-44s %9.3f |\n", "  of which in tg_dist_average_gradients, mean",
           avg_in_step_ms);
  }
  free(flat);
  trainer_free(&t);
  return tg_dist_finalize() < 0 ? 1 : 0;
}
