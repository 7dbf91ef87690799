/* Per-layer benchmark of the float32 3x3 convolution kernels: the direct kernels
 * (ops/conv/direct.c) against Winograd F(4x4, 3x3) (ops/conv/winograd.c) on the layers
 * of the example nets and a few more, for the forward, the input gradient (a forward
 * with the flipped weight) and the weight gradient. This is the measurement behind
 * winograd.c's per-layer rule.
 *
 *   bench/conv_layers [reps] [threads]      (default 15 repetitions, 1 thread)
 *
 * Each repetition runs the six kernels of a layer back to back in a rotating order, so
 * load from other processes lands on all of them; medians are printed (of the thread's
 * CPU time on one thread, of the wall time on more), with the
 * direct-equivalent GFLOP/s (2 * n * oh * ow * cout * cin * 9 per kernel) and an
 * OpenBLAS sgemm 1024^3 rate measured in the same run. */
#include "common.h"
#include "ops/conv/winograd.h"
#include "tapegrad.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

/* On one thread, the thread's CPU time: on a machine shared with busy processes the
 * wall clock counts the time other processes hold the core. */
static double (*now)(void) = bench_now;

static float *randf(size_t n) {
  float *p = malloc(n * sizeof *p);
  for (size_t i = 0; p && i < n; i++)
    p[i] = (float)rand() / RAND_MAX - 0.5f;
  return p;
}

static double sgemm_gflops(void) {
  const int n = 1024;
  float *a = randf((size_t)n * n), *b = randf((size_t)n * n), *c = randf((size_t)n * n);
  double best = 1e9;
  for (int r = 0; r < 3; r++) {
    double t = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c,
                n);
    t = now() - t;
    best = t < best ? t : best;
  }
  free(a), free(b), free(c);
  return 2.0 * n * n * n / best * 1e-9;
}

enum { MAX_REPS = 101, K = 6 };
static const char *KERNEL[K] = {"fwd direct", "fwd wino",     "dgrad direct",
                                "dgrad wino", "wgrad direct", "wgrad wino"};

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 15, threads = argc > 2 ? atoi(argv[2]) : 1;
  reps = reps < 1 ? 1 : reps > MAX_REPS ? MAX_REPS : reps;
  tg_set_num_threads(threads);
  if (threads == 1)
    now = bench_thread_cpu_now;
  const int64_t layers[][4] = {
      /* n, cin, cout, size */
      {64, 32, 64, 14}, {8, 3, 16, 64},   {8, 16, 16, 64}, {8, 16, 32, 32},
      {8, 32, 32, 32},  {8, 32, 64, 16},  {8, 64, 64, 16}, {8, 96, 32, 32},
      {8, 48, 16, 64},  {64, 8, 8, 28},   {8, 8, 8, 64},   {8, 128, 128, 8},
      {1, 64, 64, 56},  {16, 16, 16, 14}, {8, 16, 16, 8},  {8, 32, 32, 8},
      {8, 64, 64, 8},   {8, 64, 64, 4},   {8, 8, 16, 32},
  };
  {
    direct_conv probe = {1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1};
    float px = 1, pw[9] = {0}, py;
    if (conv_winograd_forward(&probe, &px, pw, false, NULL, &py) < 0) {
      printf("conv_layers: %s; nothing to compare\n", tg_last_error());
      return 0;
    }
  }
  const double gemm = sgemm_gflops();
  printf("3x3 conv layers, float32, pad 1, %d thread(s), median of %d (%s); load %.2f; "
         "sgemm 1024^3 %.1f GFLOP/s\n",
         threads, reps, threads == 1 ? "thread CPU time" : "wall time",
         bench_load_average(), gemm);
  printf("%-22s | %-25s | %-25s | %-25s\n", "n,cin->cout,size", "fwd ms d / w (w/d)",
         "dgrad ms d / w (w/d)", "wgrad ms d / w (w/d)");
  for (size_t l = 0; l < sizeof layers / sizeof *layers; l++) {
    const int64_t n = layers[l][0], ci = layers[l][1], co = layers[l][2],
                  s = layers[l][3];
    direct_conv f = {n, ci, s, s, co, 3, 3, 1, 1, 1, 1, s, s};
    direct_conv g = {n, co, s, s, ci, 3, 3, 1, 1, 1, 1, s, s}; /* dgrad as a forward */
    float *x = randf((size_t)(n * ci * s * s)), *y = randf((size_t)(n * co * s * s));
    float *w = randf((size_t)(co * ci * 9)), *b = randf((size_t)co);
    float *dx = randf((size_t)(n * ci * s * s)), *dw = randf((size_t)(co * ci * 9));
    double t[K][MAX_REPS];
    for (int r = -2; r < reps; r++)
      for (int k0 = 0; k0 < K; k0++) {
        const int k = (k0 + (r < 0 ? 0 : r)) % K;
        double t0 = now();
        int rc = k == 0   ? conv_direct_forward(&f, x, w, false, b, y)
                 : k == 1 ? conv_winograd_forward(&f, x, w, false, b, y)
                 : k == 2 ? conv_direct_forward(&g, y, w, true, NULL, dx)
                 : k == 3 ? conv_winograd_forward(&g, y, w, true, NULL, dx)
                 : k == 4 ? conv_direct_weight_grad(&f, x, y, dw, b)
                          : conv_winograd_weight_grad(&f, x, y, dw, b);
        if (rc < 0) {
          fprintf(stderr, "%s: %s\n", KERNEL[k], tg_last_error());
          return 1;
        }
        if (r >= 0)
          t[k][r] = now() - t0;
      }
    double m[K];
    for (int k = 0; k < K; k++)
      m[k] = bench_median(t[k], reps) * 1e3;
    const double gf = 2.0 * (double)(n * s * s * co * ci * 9) * 1e-6; /* per ms */
    char name[32];
    snprintf(name, sizeof name, "%lld,%lld->%lld,%lld", (long long)n, (long long)ci,
             (long long)co, (long long)s);
    printf("%-22s |", name);
    for (int k = 0; k < K; k += 2)
      printf(" %6.3f / %6.3f (%4.2f) %3.0f/%3.0f |", m[k], m[k + 1], m[k + 1] / m[k],
             gf / m[k], gf / m[k + 1]);
    printf("\n");
    free(x), free(y), free(w), free(b), free(dx), free(dw);
  }
  printf("(the two GFLOP/s figures per kernel: direct / Winograd, counted as a direct "
         "conv's multiply-adds)\n");
  return 0;
}
