/* GroupNorm CPU benchmark: median times of forward, forward+backward and, as the
 * baseline measured in the same run, a memcpy of the same tensor (read + write, split
 * over the same number of threads). Prints the ratios; PyTorch's times beside ours
 * when the Python of TG_BENCH_PYTHON (default /usr/bin/python3, Debian's) has torch.
 *
 *   bench/group_norm [reps] [--shape N,C,H,W,G | --shape I] [--threads T] [--cold]
 *                    [--no-torch] [--pieces] [--cpu]
 *   bench/group_norm --device cuda [reps] [--small]     (bench/cuda/group_norm.c)
 *
 * reps: repetitions per measurement (default 15). --shape runs one shape (I: the row
 * of the table below, from 0), --threads one thread count, --cold the cold state only,
 * --no-torch skips PyTorch: quick runs of one row, e.g. `--shape 2 --threads 2 --cold`.
 * --pieces times the parts of a call instead (bench_pieces). --cpu measures the
 * process's CPU time divided by the thread count instead of wall time: what a loaded
 * machine moves least (use OMP_WAIT_POLICY=passive, so waiting threads don't count),
 * but it leaves out waiting (thread wake-up, imbalance), which wall time includes;
 * the targets are judged on wall time.
 *
 * fwd+bwd calls the node's backward directly (what a training step spends in
 * GroupNorm); "api" is forward + tg_backward_ex, which also clones grad_output.
 *
 * glibc returns freed blocks of tens of MB to the kernel and page-faults them back on
 * the next allocation (several ms for 25 MB), which would swamp the kernels: main()
 * raises the mmap and trim thresholds first, as a long-running trainer would. */
#include "common.h"
#include "graph/internal.h"
#include "ops/norm/norm.h"

#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  int64_t n, c, h, w, g;
} shape;

static const shape SHAPES[] = {
    {8, 256, 56, 56, 32},
    {2, 320, 64, 64, 32},
    {16, 64, 32, 32, 8},
    {4, 512, 28, 28, 32},
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof *SHAPES))
static const int THREADS[] = {1, 2};
#define N_THREADS ((int)(sizeof THREADS / sizeof *THREADS))

/* What one run measures: the shapes and thread counts (all, or one picked by the
 * options), and the cache states (0 warm, 1 cold) from first_state on. */
typedef struct {
  shape shapes[N_SHAPES];
  int threads[N_THREADS], n_shapes, n_threads, first_state, reps;
  bool torch, pieces;
} config;

/* --cpu: the process's CPU time divided by the thread count instead of wall time. */
static bool cpu_clock;

static double now(void) {
  struct timespec ts;
  clock_gettime(cpu_clock ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return ((double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec) /
         (cpu_clock ? tg_get_num_threads() : 1);
}

/* Runs GroupNorm's backward on node as the engine does (no-grad, own scope). */
static int node_backward(tg_node *node, const tg_tensor *dy) {
  tg_tensor *gi[3] = {NULL, NULL, NULL};
  tg_no_grad_begin();
  tg_scope_begin();
  int rc = node->backward(node, dy, gi);
  tg_scope_end();
  tg_no_grad_end();
  return rc;
}

/* Median and minimum of each measurement (memcpy, fwd, fwd+bwd, api), warm and cold. */
typedef struct {
  double med[2][4], min[2][4];
} timing;

/* Cold runs start with the caches holding none of the tensors: a buffer of eight times
 * the L3 slice (tg__llc_bytes) is read first; twice was not enough here, the L3 being
 * a victim cache that does not evict in strict LRU order. Clean lines, so evicting them
 * later costs nothing, and the previous run's dirty outputs are written back before
 * the clock starts. */
static const float *flush_buf;
static size_t flush_len;
static volatile float flush_sink;

static int flush_init(void) {
  size_t bytes = 8 * (size_t)tg__llc_bytes();
  float *b = malloc(bytes);
  if (!b)
    return -1;
  memset(b, 0, bytes);
  flush_buf = b;
  flush_len = bytes / sizeof *b;
  return 0;
}

static void flush_caches(void) {
  float s = 0;
  for (size_t i = 0; i < flush_len; i += 16)
    s += flush_buf[i];
  flush_sink = s;
}

/* The tensors of one shape's runs, in the current scope: x, dy random, w in
 * [0.5, 1.5), b random, dst memcpy's destination; x, w and b require grad. */
typedef struct {
  tg_tensor *x, *dy, *w, *b, *dst;
} inputs;

static int make_inputs(const shape *s, inputs *in) {
  const int64_t dims[4] = {s->n, s->c, s->h, s->w};
  in->x = tg_randn(dims, 4, TG_F32, TG_CPU);
  in->dy = tg_randn(dims, 4, TG_F32, TG_CPU);
  in->w = tg_uniform(TG_SHAPE(s->c), 0.5, 1.5, TG_F32, TG_CPU);
  in->b = tg_randn(TG_SHAPE(s->c), TG_F32, TG_CPU);
  in->dst = tg_empty(dims, 4, TG_F32, TG_CPU);
  if (!in->x || !in->dy || !in->w || !in->b || !in->dst)
    return -1;
  tg_set_requires_grad(in->x, true);
  tg_set_requires_grad(in->w, true);
  tg_set_requires_grad(in->b, true);
  return 0;
}

static int bench_one(const shape *s, int threads, int reps, int first_state,
                     timing *out) {
  tg_set_num_threads(threads);
  tg_scope_begin();
  inputs in;
  if (make_inputs(s, &in) < 0)
    return tg_scope_end(), -1;
  tg_tensor *x = in.x, *dy = in.dy, *w = in.w, *b = in.b, *dst = in.dst;
  const size_t bytes = (size_t)tg_numel(x) * sizeof(float);
  double *t[4];
  for (int k = 0; k < 4; k++)
    t[k] = malloc((size_t)reps * sizeof(double));
  /* Runs of one measurement follow each other (after two warm-ups), so each sees its
   * own steady cache state rather than one another has flushed or warmed; and the
   * measurements take turns in rounds of ROUND runs, so that a burst of load from
   * another process lands on all four rather than on one of them. */
  enum { ROUND = 5 };
  int rc = 0;
  for (int cold = first_state; cold < 2; cold++) {
    for (int r0 = 0; r0 < reps && rc == 0; r0 += ROUND)
      for (int k = 0; k < 4 && rc == 0; k++)
        for (int r = r0 - 2; r < r0 + ROUND && r < reps && rc == 0; r++) {
          if (cold)
            flush_caches();
          tg_scope_begin();
          double t0 = now();
          if (k == 0) {
            bench_parallel_memcpy(tg_data(dst), tg_data(x), bytes, threads);
          } else {
            tg_tensor *y = tg_group_norm(x, s->g, w, b, 1e-5);
            if (!y)
              rc = -1;
            else if (k == 2)
              rc = node_backward(y->grad_fn, dy);
            else if (k == 3)
              rc = tg_backward_ex(y, dy, false);
          }
          double t1 = now();
          tg_scope_end();
          tg_zero_grad(x);
          tg_zero_grad(w);
          tg_zero_grad(b);
          if (r >= r0)
            t[k][r] = t1 - t0;
        }
    for (int k = 0; k < 4; k++) {
      out->med[cold][k] = bench_median(t[k], reps); /* sorts t[k] */
      out->min[cold][k] = t[k][0];
    }
  }
  for (int k = 0; k < 4; k++)
    free(t[k]);
  tg_scope_end();
  return rc;
}

/* --pieces: where a call's time goes, cold (caches flushed before each run), each piece
 * timed alone, with memcpy as in the table:
 *   region  an empty OpenMP parallel region of GroupNorm's thread count;
 *   alloc   the forward's allocations (y and the saved statistics), freed again;
 *   read    the same sums over each thread's share of x in one run: the floor of
 *           stats (no restart per group);
 *   stream  x copied to memcpy's destination through norm_affine (a = 1, b = 0) with
 *           the non-temporal stores that GroupNorm writes y and dx with from
 *           TG_NORM_STREAM_BYTES on; each thread its share;
 *   plain   the same with plain stores (what smaller tensors get);
 *   stats   the statistics pass alone (norm_moments per group, as the forward's first
 *           pass; x from memory);
 *   nograd  tg_group_norm without recording (kernel and allocation, no tape);
 *   fwd     tg_group_norm recorded, as in the table;
 *   bwd     the node's backward alone (x, dy from memory; y's node made before the
 *           flush). */
enum {
  P_MEMCPY,
  P_REGION,
  P_ALLOC,
  P_READ,
  P_STREAM,
  P_PLAIN,
  P_STATS,
  P_NOGRAD,
  P_FWD,
  P_BWD,
  N_PIECES
};
static const char *const PIECE_NAMES[N_PIECES] = {"memcpy", "region", "alloc", "read",
                                                  "stream", "plain",  "stats", "nograd",
                                                  "fwd",    "bwd"};

static volatile double piece_sink;

static int run_piece(int k, const shape *s, const inputs *in, int threads, double *t) {
  tg_tensor *x = in->x, *w = in->w, *b = in->b;
  const int64_t groups = s->n * s->g, len = tg_numel(x) / groups;
  const float *X = tg_data(x);
  tg_scope_begin();
  tg_node *node = NULL;
  if (k == P_BWD) {
    tg_tensor *y = tg_group_norm(x, s->g, w, b, 1e-5);
    if (!y)
      return tg_scope_end(), -1;
    node = y->grad_fn;
  }
  flush_caches();
  int rc = 0;
  double t0 = now(), acc = 0;
  const int nt = tg__threads(tg_numel(x));
  switch (k) {
  case P_MEMCPY:
    bench_parallel_memcpy(tg_data(in->dst), X, (size_t)tg_numel(x) * sizeof(float),
                          threads);
    break;
  case P_REGION:
#pragma omp parallel num_threads(nt)
    piece_sink = 0;
    break;
  case P_ALLOC:
    rc = tg__new_like(x) && tg__new(TG_SHAPE(s->n, s->g, 3), TG_F64, TG_CPU) ? 0 : -1;
    break;
  case P_READ:
  case P_STREAM:
  case P_PLAIN:
#pragma omp parallel for num_threads(nt) reduction(+ : acc)
    for (int p = 0; p < nt; p++) {
      const int64_t lo = groups * p / nt * len, hi = groups * (p + 1) / nt * len;
      norm_stats st = {0};
      if (k == P_READ)
        norm_moments(X + lo, 1, hi - lo, 0, 1e-5, &st);
      else
        norm_affine(X + lo, (float *)tg_data(in->dst) + lo, hi - lo, 0.0f, 1.0f, 0.0f,
                    NULL, k == P_STREAM);
      if (k == P_STREAM)
        norm_stream_fence();
      acc += st.rstd;
    }
    break;
  case P_STATS:
#pragma omp parallel for num_threads(nt) reduction(+ : acc)
    for (int64_t ng = 0; ng < groups; ng++) {
      norm_stats st;
      norm_moments(X + ng * len, 1, len, 0, 1e-5, &st);
      acc += st.rstd;
    }
    break;
  case P_NOGRAD:
    tg_no_grad_begin();
    rc = tg_group_norm(x, s->g, w, b, 1e-5) ? 0 : -1;
    tg_no_grad_end();
    break;
  case P_FWD:
    rc = tg_group_norm(x, s->g, w, b, 1e-5) ? 0 : -1;
    break;
  case P_BWD:
    rc = node_backward(node, in->dy);
    break;
  }
  *t = now() - t0;
  piece_sink = acc;
  tg_scope_end();
  tg_zero_grad(x);
  tg_zero_grad(w);
  tg_zero_grad(b);
  return rc;
}

/* Prints one line per piece: median and minimum ms, and the median's ratio to
 * memcpy's. The pieces take turns run by run. */
static int bench_pieces(const shape *s, int threads, int reps) {
  tg_set_num_threads(threads);
  tg_scope_begin();
  inputs in;
  double *t = malloc((size_t)(N_PIECES * reps) * sizeof *t);
  if (!t || make_inputs(s, &in) < 0)
    return free(t), tg_scope_end(), -1;
  int rc = 0;
  for (int r = -2; r < reps && rc == 0; r++)
    for (int k = 0; k < N_PIECES && rc == 0; k++) {
      double dt = 0;
      rc = run_piece(k, s, &in, threads, &dt);
      if (r >= 0)
        t[k * reps + r] = dt;
    }
  for (int k = 0; k < N_PIECES && rc == 0; k++) {
    double *v = t + k * reps, med = bench_median(v, reps); /* sorts v */
    double copy = k ? t[reps / 2] : med;                   /* memcpy's, sorted first */
    printf("[%lld,%lld,%lld,%lld] %3lld %3d cold %-7s | %7.3f %7.3f | %5.2f\n",
           (long long)s->n, (long long)s->c, (long long)s->h, (long long)s->w,
           (long long)s->g, threads, PIECE_NAMES[k], med * 1e3, v[0] * 1e3, med / copy);
  }
  free(t);
  tg_scope_end();
  return rc;
}

/* PyTorch's medians (ms) for every shape and thread count, one python run: lines of
 * "fwd fwdbwd" in the order of the loops below. */
static const char *TORCH_SCRIPT =
    "import sys, time, torch, torch.nn.functional as F\n"
    "reps = int(sys.argv[1]); shapes = eval(sys.argv[2]); threads = eval(sys.argv[3])\n"
    "flush = torch.zeros(int(sys.argv[4]))\n"
    "med = lambda v: sorted(v)[len(v) // 2]\n"
    "for nt in threads:\n"
    "    torch.set_num_threads(nt)\n"
    "    for n, c, h, w, g in shapes:\n"
    "        x = torch.randn(n, c, h, w, requires_grad=True); dy = torch.randn_like(x)\n"
    "        wt = torch.ones(c, requires_grad=True); bt = torch.zeros(c, "
    "requires_grad=True)\n"
    "        for cold in (0, 1):\n"
    "            tf, tb = [], []\n"
    "            for r in range(reps + 2):\n"
    "                if cold: flush.sum()\n"
    "                t0 = time.perf_counter(); y = F.group_norm(x, g, wt, bt, 1e-5)\n"
    "                t1 = time.perf_counter(); del y\n"
    "                if cold: flush.sum()\n"
    "                t2 = time.perf_counter(); y = F.group_norm(x, g, wt, bt, 1e-5)\n"
    "                y.backward(dy); t3 = time.perf_counter()\n"
    "                x.grad = wt.grad = bt.grad = None; del y\n"
    "                tf.append(t1 - t0); tb.append(t3 - t2)\n"
    "            print('%.4f %.4f' % (med(tf[2:]) * 1e3, med(tb[2:]) * 1e3), "
    "flush=True)\n";

static int torch_times(const config *cf, double torch_ms[N_THREADS][N_SHAPES][2][2]) {
  char shapes[512] = "[", threads[64] = "[";
  for (int i = 0; i < cf->n_shapes; i++) {
    const shape *sh = &cf->shapes[i];
    snprintf(shapes + strlen(shapes), sizeof shapes - strlen(shapes),
             "(%lld,%lld,%lld,%lld,%lld),", (long long)sh->n, (long long)sh->c,
             (long long)sh->h, (long long)sh->w, (long long)sh->g);
  }
  strcat(shapes, "]");
  for (int i = 0; i < cf->n_threads; i++)
    snprintf(threads + strlen(threads), sizeof threads - strlen(threads), "%d,",
             cf->threads[i]);
  strcat(threads, "]");
  bench_python py;
  FILE *p = bench_python_open(&py, "/usr/bin/python3", TORCH_SCRIPT, "%d '%s' '%s' %zu",
                              cf->reps, shapes, threads, flush_len);
  int got = 0;
  for (int t = 0; p && t < cf->n_threads; t++)
    for (int i = 0; i < cf->n_shapes; i++)
      for (int cold = 0; cold < 2; cold++)
        got +=
            fscanf(p, "%lf %lf", &torch_ms[t][i][cold][0], &torch_ms[t][i][cold][1]) == 2;
  bench_python_close(&py);
  return got == 2 * cf->n_threads * cf->n_shapes ? 0 : -1;
}

/* The options of the usage line at the top; returns -1 with a message on bad ones. */
static int parse_args(int argc, char **argv, config *cf) {
  *cf = (config){.n_shapes = N_SHAPES, .n_threads = N_THREADS, .reps = 15, .torch = true};
  memcpy(cf->shapes, SHAPES, sizeof SHAPES);
  memcpy(cf->threads, THREADS, sizeof THREADS);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    shape sh;
    int k;
    if (!strcmp(a, "--cold")) {
      cf->first_state = 1;
    } else if (!strcmp(a, "--no-torch")) {
      cf->torch = false;
    } else if (!strcmp(a, "--pieces")) {
      cf->pieces = true;
    } else if (!strcmp(a, "--cpu")) {
      cpu_clock = true;
      cf->torch = false; /* PyTorch's times are wall times */
    } else if (!strcmp(a, "--threads") && v && (k = atoi(v)) >= 1) {
      cf->threads[0] = k;
      cf->n_threads = 1;
      i++;
    } else if (!strcmp(a, "--shape") && v &&
               sscanf(v, "%" SCNd64 ",%" SCNd64 ",%" SCNd64 ",%" SCNd64 ",%" SCNd64,
                      &sh.n, &sh.c, &sh.h, &sh.w, &sh.g) == 5) {
      cf->shapes[0] = sh;
      cf->n_shapes = 1;
      i++;
    } else if (!strcmp(a, "--shape") && v && sscanf(v, "%d", &k) == 1 && k >= 0 &&
               k < N_SHAPES) {
      cf->shapes[0] = SHAPES[k];
      cf->n_shapes = 1;
      i++;
    } else if (a[0] != '-' && (k = atoi(a)) >= 1) {
      cf->reps = k;
    } else {
      fprintf(stderr,
              "usage: %s [reps] [--shape N,C,H,W,G | --shape 0-%d] [--threads T] "
              "[--cold] [--no-torch] [--pieces] [--cpu]\n",
              argv[0], N_SHAPES - 1);
      return -1;
    }
  }
  return 0;
}

int tg_bench_group_norm_cuda(int argc, char **argv);

int main(int argc, char **argv) {
  if (argc > 2 && !strcmp(argv[1], "--device") && !strncmp(argv[2], "cuda", 4))
    return tg_bench_group_norm_cuda(argc - 3, argv + 3);
  config cf;
  if (parse_args(argc, argv, &cf) < 0)
    return 2;
  mallopt(M_MMAP_THRESHOLD, 32 << 20); /* the largest value glibc accepts */
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  if (flush_init() < 0) {
    fprintf(stderr, "group_norm bench: out of memory\n");
    return 1;
  }
  if (cf.pieces) {
    printf("GroupNorm float32, pieces of a call (bench/group_norm.c, --pieces): median "
           "and min of %d runs in ms, x = median / memcpy's median\n",
           cf.reps);
    for (int t = 0; t < cf.n_threads; t++)
      for (int i = 0; i < cf.n_shapes; i++)
        if (bench_pieces(&cf.shapes[i], cf.threads[t], cf.reps) != 0) {
          fprintf(stderr, "group_norm bench failed: %s\n", tg_last_error());
          return 1;
        }
    return 0;
  }
  double torch_ms[N_THREADS][N_SHAPES][2][2];
  bool have_torch = cf.torch && torch_times(&cf, torch_ms) == 0;
  printf("GroupNorm float32: median of %d runs in ms, x = ratio to memcpy of the same "
         "tensor in the same cache state;\nmin x = the same ratio between minimum times "
         "(steadier on a busy machine). warm: runs back to back, tensors left in the "
         "cache;\ncold: caches flushed before every run (of memcpy too)%s\n",
         cf.reps,
         have_torch ? "; torch = PyTorch's medians, same threads and state" : "");
  printf("%-15s %3s %3s %4s | %6s | %6s %5s %5s | %7s %5s %5s | %6s %5s", "[N,C,H,W]",
         "G", "thr", "", "memcpy", "fwd", "x", "min x", "fwd+bwd", "x", "min x", "api",
         "x");
  if (have_torch)
    printf(" | %9s %9s", "torch fwd", "torch f+b");
  printf("\n");
  for (int t = 0; t < cf.n_threads; t++)
    for (int i = 0; i < cf.n_shapes; i++) {
      const shape *s = &cf.shapes[i];
      timing r;
      if (bench_one(s, cf.threads[t], cf.reps, cf.first_state, &r) != 0) {
        fprintf(stderr, "group_norm bench failed: %s\n", tg_last_error());
        return 1;
      }
      char name[64];
      snprintf(name, sizeof name, "[%lld,%lld,%lld,%lld]", (long long)s->n,
               (long long)s->c, (long long)s->h, (long long)s->w);
      for (int cold = cf.first_state; cold < 2; cold++) {
        const double *m = r.med[cold], *mn = r.min[cold];
        printf("%-15s %3lld %3d %4s | %6.3f | %6.3f %5.2f %5.2f | %7.3f %5.2f %5.2f | "
               "%6.3f %5.2f",
               name, (long long)s->g, cf.threads[t], cold ? "cold" : "warm", m[0] * 1e3,
               m[1] * 1e3, m[1] / m[0], mn[1] / mn[0], m[2] * 1e3, m[2] / m[0],
               mn[2] / mn[0], m[3] * 1e3, m[3] / m[0]);
        if (have_torch)
          printf(" | %9.3f %9.3f", torch_ms[t][i][cold][0], torch_ms[t][i][cold][1]);
        printf("\n");
      }
      fflush(stdout);
    }
  return 0;
}
