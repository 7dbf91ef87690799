/* Cross-entropy CPU benchmark: median times of the loss's forward and forward+backward
 * (tg_backward of the scalar loss, as a training step runs it) on the examples' shapes
 * and, as the baseline measured in the same run, a memcpy of the logits (read + write,
 * split over the same number of threads). Prints the ratios; PyTorch's times beside
 * ours when the Python of TG_BENCH_PYTHON (default /usr/bin/python3) has torch.
 *
 *   bench/loss [reps]          (default 30 repetitions per measurement)
 *
 * Cases: the U-Net's per-pixel loss as bench/train_step calls it (plain mean) and as
 * examples/segmentation.c does (class weights [1, 10, 10, 10], sum), the same with
 * label smoothing, and the conv net's [64, 10] batch. Runs are warm (the logits come
 * from the layer before, so they are in the cache in a training step too). */
#include "common.h"
#include "tapegrad.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  int64_t n, c, hw; /* hw = 0: [n, c] logits */
  double fg_weight; /* 0: no class weights */
  double smoothing;
  tg_reduction reduction;
} lcase;

static const lcase CASES[] = {
    {"unet mean", 8, 4, 64 * 64, 0, 0, TG_REDUCTION_MEAN},
    {"unet weighted sum", 8, 4, 64 * 64, 10, 0, TG_REDUCTION_SUM},
    {"unet weighted smooth", 8, 4, 64 * 64, 10, 0.1, TG_REDUCTION_MEAN},
    {"convnet mean", 64, 10, 0, 0, 0, TG_REDUCTION_MEAN},
};
#define N_CASES ((int)(sizeof CASES / sizeof *CASES))
static const int THREADS[] = {1, 2};
#define N_THREADS ((int)(sizeof THREADS / sizeof *THREADS))

static tg_tensor *loss_of(const lcase *c, tg_tensor *x, tg_tensor *y, tg_tensor *w) {
  if (!w && c->smoothing == 0)
    return tg_cross_entropy(x, y, c->reduction, -100);
  tg_cross_entropy_options o = tg_cross_entropy_options_default();
  o.weight = w;
  o.reduction = c->reduction;
  o.label_smoothing = c->smoothing;
  return tg_cross_entropy_ex(x, y, &o);
}

/* med[k], min[k]: memcpy, forward, forward+backward (seconds). */
static int bench_one(const lcase *c, int threads, int reps, double med[3],
                     double min[3]) {
  tg_set_num_threads(threads);
  tg_manual_seed(0);
  tg_scope_begin();
  int64_t xs[4] = {c->n, c->c, 64, 64}, ys[3] = {c->n, 64, 64};
  const int nd = c->hw ? 4 : 2;
  tg_tensor *x = tg_randn(xs, nd, TG_F32, TG_CPU);
  tg_tensor *dst = tg_empty(xs, nd, TG_F32, TG_CPU);
  int64_t npos = c->n * (c->hw ? c->hw : 1);
  int64_t *labels = malloc((size_t)npos * sizeof *labels);
  float wv[64];
  for (int k = 0; k < c->c; k++)
    wv[k] = k ? (float)c->fg_weight : 1.0f;
  tg_tensor *w =
      c->fg_weight ? tg_tensor_from_data(wv, TG_SHAPE(c->c), TG_F32, TG_CPU) : NULL;
  srand(0);
  for (int64_t i = 0; labels && i < npos; i++)
    labels[i] = rand() % c->c;
  tg_tensor *y =
      labels ? tg_tensor_from_data(labels, ys, c->hw ? 3 : 1, TG_I64, TG_CPU) : NULL;
  free(labels);
  if (!x || !dst || !y || (c->fg_weight && !w) || tg_set_requires_grad(x, true) < 0)
    return tg_scope_end(), -1;
  double *t[3];
  for (int k = 0; k < 3; k++)
    t[k] = malloc((size_t)reps * sizeof(double));
  /* The measurements take turns in rounds of ROUND runs (after two warm-ups each), so
   * that a burst of load from another process lands on all three. */
  enum { ROUND = 5 };
  int rc = 0;
  const size_t bytes = (size_t)tg_numel(x) * sizeof(float);
  for (int r0 = 0; r0 < reps && rc == 0; r0 += ROUND)
    for (int k = 0; k < 3 && rc == 0; k++)
      for (int r = r0 - 2; r < r0 + ROUND && r < reps && rc == 0; r++) {
        tg_scope_begin();
        double t0 = bench_now();
        if (k == 0) {
          bench_parallel_memcpy(tg_data(dst), tg_data(x), bytes, threads);
        } else {
          tg_tensor *l = loss_of(c, x, y, w);
          if (!l)
            rc = -1;
          else if (k == 2)
            rc = tg_backward(l);
        }
        double t1 = bench_now();
        tg_scope_end();
        tg_zero_grad(x);
        if (r >= r0)
          t[k][r] = t1 - t0;
      }
  for (int k = 0; k < 3; k++) {
    med[k] = bench_median(t[k], reps); /* sorts t[k] */
    min[k] = t[k][0];
    free(t[k]);
  }
  tg_scope_end();
  return rc;
}

/* PyTorch's medians (ms), one python run: lines of "fwd fwdbwd" per thread count and
 * case, in the order of the loops in main. */
static const char *TORCH_SCRIPT =
    "import sys, time, torch, torch.nn.functional as F\n"
    "reps = int(sys.argv[1]); cases = eval(sys.argv[2]); threads = eval(sys.argv[3])\n"
    "med = lambda v: sorted(v)[len(v) // 2]\n"
    "red = ['none', 'mean', 'sum']\n"
    "for nt in threads:\n"
    "    torch.set_num_threads(nt)\n"
    "    for n, c, hw, fg, s, r in cases:\n"
    "        shape = (n, c, 64, 64) if hw else (n, c)\n"
    "        x = torch.randn(shape, requires_grad=True)\n"
    "        y = torch.randint(0, c, (n, 64, 64) if hw else (n,))\n"
    "        w = torch.tensor([1.0] + [fg] * (c - 1)) if fg else None\n"
    "        f = lambda: F.cross_entropy(x, y, weight=w, reduction=red[r], "
    "label_smoothing=s)\n"
    "        tf, tb = [], []\n"
    "        for i in range(reps + 2):\n"
    "            t0 = time.perf_counter(); l = f(); t1 = time.perf_counter(); del l\n"
    "            t2 = time.perf_counter(); f().backward(); t3 = time.perf_counter()\n"
    "            x.grad = None; tf.append(t1 - t0); tb.append(t3 - t2)\n"
    "        print('%.4f %.4f' % (med(tf[2:]) * 1e3, med(tb[2:]) * 1e3), flush=True)\n";

static int torch_times(int reps, double torch_ms[N_THREADS][N_CASES][2]) {
  char cases[1024] = "[", threads[64] = "[";
  for (int i = 0; i < N_CASES; i++)
    snprintf(cases + strlen(cases), sizeof cases - strlen(cases),
             "(%lld,%lld,%lld,%g,%g,%d),", (long long)CASES[i].n, (long long)CASES[i].c,
             (long long)CASES[i].hw, CASES[i].fg_weight, CASES[i].smoothing,
             (int)CASES[i].reduction);
  strcat(cases, "]");
  for (int i = 0; i < N_THREADS; i++)
    snprintf(threads + strlen(threads), sizeof threads - strlen(threads), "%d,",
             THREADS[i]);
  strcat(threads, "]");
  bench_python py;
  FILE *p = bench_python_open(&py, "/usr/bin/python3", TORCH_SCRIPT, "%d '%s' '%s'", reps,
                              cases, threads);
  int got = 0;
  for (int t = 0; p && t < N_THREADS; t++)
    for (int i = 0; i < N_CASES; i++)
      got += fscanf(p, "%lf %lf", &torch_ms[t][i][0], &torch_ms[t][i][1]) == 2;
  bench_python_close(&py);
  return got == N_THREADS * N_CASES ? 0 : -1;
}

int main(int argc, char **argv) {
  /* As bench/group_norm: keep freed blocks, as a long-running trainer's allocator. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  int reps = argc > 1 ? atoi(argv[1]) : 30;
  if (reps < 1)
    reps = 1;
  double torch_ms[N_THREADS][N_CASES][2];
  bool have_torch = torch_times(reps, torch_ms) == 0;
  printf("cross-entropy float32, warm: median of %d runs in ms, x = ratio to memcpy of "
         "the logits in this run; min x = the same between minimum times%s; load "
         "average %.2f\n",
         reps, have_torch ? "; torch = PyTorch's medians, same threads" : "",
         bench_load_average());
  printf("%-21s %-12s %3s | %7s | %6s %5s %5s | %7s %5s %5s", "case", "logits", "thr",
         "memcpy", "fwd", "x", "min x", "fwd+bwd", "x", "min x");
  if (have_torch)
    printf(" | %9s %9s", "torch fwd", "torch f+b");
  printf("\n");
  for (int t = 0; t < N_THREADS; t++)
    for (int i = 0; i < N_CASES; i++) {
      const lcase *c = &CASES[i];
      double m[3], mn[3];
      if (bench_one(c, THREADS[t], reps, m, mn) != 0) {
        fprintf(stderr, "loss bench failed: %s\n", tg_last_error());
        return 1;
      }
      char shape[64];
      if (c->hw)
        snprintf(shape, sizeof shape, "[%lld,%lld,64,64]", (long long)c->n,
                 (long long)c->c);
      else
        snprintf(shape, sizeof shape, "[%lld,%lld]", (long long)c->n, (long long)c->c);
      printf("%-21s %-12s %3d | %7.4f | %6.3f %5.2f %5.2f | %7.3f %5.2f %5.2f", c->name,
             shape, THREADS[t], m[0] * 1e3, m[1] * 1e3, m[1] / m[0], mn[1] / mn[0],
             m[2] * 1e3, m[2] / m[0], mn[2] / mn[0]);
      if (have_torch)
        printf(" | %9.3f %9.3f", torch_ms[t][i][0], torch_ms[t][i][1]);
      printf("\n");
      fflush(stdout);
    }
  return 0;
}
