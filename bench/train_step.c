/* Training-step benchmark: SGD steps of the two example nets of examples/nets.h, which
 * examples/mnist.c and examples/segmentation.c train,
 *   convnet  conv 1->32, GN(8), ReLU, pool; conv 32->64, GN(8), ReLU, pool; linear
 *            3136->10; cross-entropy; batch 64 of 1x28x28
 *   unet     GroupNorm U-Net 3->16->32->64->32->16->4; per-pixel cross-entropy;
 *            batch 8 of 3x64x64
 * at 1 and 2 threads. For each it prints the median step time (after a warm-up),
 * images/s, the achieved GFLOP/s next to an sgemm measured in the same run, and the
 * peak resident memory of a step; with PyTorch (/usr/bin/python3 and torch), its
 * figures for the identical net, batch and step (bench/train_step.py) and the ratios.
 *
 *   bench/train_step [--steps N] [--warmup N] [--rounds N] [--net convnet|unet]
 *                    [--threads 1|2] [--no-torch]
 *   bench/train_step --device cuda [--steps N] [--small] [--no-torch]
 *                                                    (bench/cuda/train_step.c)
 *
 * Every measurement runs in a process of its own (fork for ours, python3 for
 * PyTorch's, which gets OMP_NUM_THREADS = the thread count as well), so memory figures
 * start from the same state and one net's caches do not count against the next. Ours
 * and PyTorch's alternate for `rounds` rounds and the medians pool every round's
 * steps: the machine may be shared, and alternating puts both sides under the same
 * load. The CPU time per step (all threads) is printed too: on one thread it hardly
 * moves when other processes compete for the cores, unlike the wall time.
 *
 * Memory: the peak resident set (VmHWM, reset through /proc/self/clear_refs) during
 * the warm-up and timed steps, minus the resident set just before the first step —
 * activations, gradients, optimizer state, workspaces and allocator caches, but not
 * the code, the libraries or the (identical) parameters and batch. */
#include "train_step.h"
#include "nets.h"
#include "tapegrad.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef TG_BENCH_DIR
#define TG_BENCH_DIR "bench"
#endif

void openblas_set_num_threads(int num_threads);

enum { MAX_STEPS = 1000, N_NETS = 2, N_THREADS = 2 };
static const int THREADS[N_THREADS] = {1, 2};

static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
static double cpu_now(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  if (n == 0)
    return NAN;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* A field of /proc/self/status in bytes (VmRSS, VmHWM). */
static int64_t status_bytes(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  int64_t kib = -1;
  size_t n = strlen(field);
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, field, n) && line[n] == ':')
      kib = strtoll(line + n + 1, NULL, 10);
  if (f)
    fclose(f);
  return kib * 1024;
}

/* Sets VmHWM to the current VmRSS (Linux >= 4.0). */
static void reset_peak(void) {
  FILE *f = fopen("/proc/self/clear_refs", "w");
  if (f) {
    fputs("5", f);
    fclose(f);
  }
}

/* ------------------------------------------------------------------ nets -- */

typedef enum { CONVNET = BENCH_CONVNET, UNET = BENCH_UNET } net_kind;
static const char *const NET_NAMES[N_NETS] = {"convnet", "unet"};

const char *bench_net_name(int kind) { return NET_NAMES[kind]; }
static const int64_t BATCH[N_NETS] = {64, 8};

typedef struct {
  net_kind kind;
  ex_convnet convnet;
  ex_unet unet;
  tg_varstore *vs; /* the built one's */
} net;

static int net_build(net *m, net_kind kind) {
  memset(m, 0, sizeof *m);
  m->kind = kind;
  int rc = kind == CONVNET ? ex_convnet_build(&m->convnet, TG_CPU)
                           : ex_unet_build(&m->unet, TG_CPU);
  m->vs = kind == CONVNET ? m->convnet.vs : m->unet.vs;
  return rc;
}

static tg_tensor *net_forward(const net *m, const tg_tensor *x) {
  return m->kind == CONVNET ? ex_convnet_forward(&m->convnet, x, true)
                            : ex_unet_forward(&m->unet, x, true);
}

/* Multiply-adds x 2 of a conv layer: forward, weight gradient and (when the layer's
 * input needs one) input gradient are each one such product. */
static double conv_flops(int64_t n, int64_t cin, int64_t cout, int64_t k, int64_t hw,
                         bool input_grad) {
  return (input_grad ? 3.0 : 2.0) * 2.0 * (double)(n * cin * cout * k * k * hw);
}

double bench_step_flops(int kind, int64_t n) {
  if (kind == CONVNET)
    return conv_flops(n, 1, 32, 3, 28 * 28, false) +
           conv_flops(n, 32, 64, 3, 14 * 14, true) +
           conv_flops(n, 64 * 7 * 7, 10, 1, 1, true);
  const int64_t s = 64 * 64;
  const int64_t layers[11][4] = {
      {3, 16, 3, s},       {16, 16, 3, s},      {16, 32, 3, s / 4}, {32, 32, 3, s / 4},
      {32, 64, 3, s / 16}, {64, 64, 3, s / 16}, {96, 32, 3, s / 4}, {32, 32, 3, s / 4},
      {48, 16, 3, s},      {16, 16, 3, s},      {16, 4, 1, s}};
  double f = 0;
  for (int i = 0; i < 11; i++)
    f += conv_flops(n, layers[i][0], layers[i][1], layers[i][2], layers[i][3], i > 0);
  return f;
}

/* The step of this benchmark's batch. */
static double step_flops(net_kind kind) { return bench_step_flops(kind, BATCH[kind]); }

/* ------------------------------------------------------------ measuring -- */

typedef struct {
  int ok, n;
  double ms[MAX_STEPS], cpu_ms[MAX_STEPS]; /* wall and CPU (all threads) time */
  int64_t peak, rss;                       /* bytes */
  char err[512];
} result;

/* One net at one thread count, in this process. */
static void measure_ours(net_kind kind, int threads, int warmup, int steps, result *r) {
  memset(r, 0, sizeof *r);
  tg_set_num_threads(threads);
  tg_manual_seed(0);
  net m;
  tg_optimizer *opt = NULL;
  tg_tensor *x = NULL, *y = NULL;
  const int64_t nb = BATCH[kind], side = kind == CONVNET ? EX_CONVNET_SIDE : EX_UNET_SIDE;
  const int64_t classes = kind == CONVNET ? EX_CONVNET_CLASSES : EX_UNET_CLASSES,
                ny = kind == CONVNET ? nb : nb * side * side;
  int64_t *labels = malloc((size_t)ny * sizeof *labels);
  if (net_build(&m, kind) < 0 || !labels)
    goto fail;
  for (int64_t i = 0; i < ny; i++)
    labels[i] = (int64_t)(rand() % classes);
  x = tg_randn(TG_SHAPE(nb, kind == CONVNET ? 1 : 3, side, side), TG_F32, TG_CPU);
  y = kind == CONVNET
          ? tg_tensor_from_data(labels, TG_SHAPE(nb), TG_I64, TG_CPU)
          : tg_tensor_from_data(labels, TG_SHAPE(nb, side, side), TG_I64, TG_CPU);
  tg_sgd_config sc = tg_sgd_config_default(0.01);
  sc.momentum = 0.9;
  if (!x || !y || !(opt = tg_sgd_new(m.vs, sc)))
    goto fail;
  r->rss = status_bytes("VmRSS");
  reset_peak();
  for (int i = 0; i < warmup + steps; i++) {
    double t0 = now(), c0 = cpu_now();
    tg_scope_begin();
    tg_tensor *loss = tg_cross_entropy(net_forward(&m, x), y, TG_REDUCTION_MEAN, -100);
    tg_optimizer_zero_grad(opt);
    bool ok = loss && tg_backward(loss) == 0 && tg_optimizer_step(opt) == 0;
    tg_scope_end();
    if (!ok)
      goto fail;
    if (i >= warmup) {
      r->cpu_ms[r->n] = (cpu_now() - c0) * 1e3;
      r->ms[r->n++] = (now() - t0) * 1e3;
    }
  }
  r->peak = status_bytes("VmHWM") - r->rss;
  r->ok = 1;
  goto done;
fail:
  snprintf(r->err, sizeof r->err, "%s", tg_last_error());
done:
  tg_optimizer_free(opt);
  tg_tensor_free(x);
  tg_tensor_free(y);
  tg_varstore_free(m.vs);
  free(labels);
}

/* Median GFLOP/s of a square float32 GEMM with OpenBLAS on `threads` threads. */
static void measure_sgemm(int threads, result *r) {
  enum { S = 1024, REPS = 9 };
  memset(r, 0, sizeof *r);
  openblas_set_num_threads(threads);
  float *a = malloc(sizeof(float) * S * S), *b = malloc(sizeof(float) * S * S),
        *c = malloc(sizeof(float) * S * S);
  if (!a || !b || !c) {
    snprintf(r->err, sizeof r->err, "out of memory");
    return;
  }
  for (int i = 0; i < S * S; i++)
    a[i] = b[i] = (float)(i % 7) * 0.25f;
  for (int i = -2; i < REPS; i++) {
    double t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, S, S, 1.0f, a, S, b, S,
                0.0f, c, S);
    if (i >= 0)
      r->ms[r->n++] = 2.0 * S * S * S / (now() - t0) * 1e-9;
  }
  r->ok = 1;
  free(a);
  free(b);
  free(c);
}

/* Runs fn in a child process and copies its result back: every measurement starts
 * from a fresh heap, thread pool and peak-memory counter. */
typedef struct {
  net_kind kind;
  int threads, warmup, steps;
  bool sgemm;
} job;

static int in_child(const job *j, result *r) {
  int fd[2];
  if (pipe(fd) < 0)
    return -1;
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    close(fd[0]);
    result *mine = malloc(sizeof *mine);
    if (!mine)
      _exit(1);
    if (j->sgemm)
      measure_sgemm(j->threads, mine);
    else
      measure_ours(j->kind, j->threads, j->warmup, j->steps, mine);
    size_t done = 0;
    while (done < sizeof *mine) {
      ssize_t w = write(fd[1], (char *)mine + done, sizeof *mine - done);
      if (w <= 0)
        _exit(1);
      done += (size_t)w;
    }
    _exit(0);
  }
  close(fd[1]);
  size_t got = 0;
  while (got < sizeof *r) {
    ssize_t n = read(fd[0], (char *)r + got, sizeof *r - got);
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  close(fd[0]);
  int status;
  waitpid(pid, &status, 0);
  if (got != sizeof *r || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    memset(r, 0, sizeof *r);
    snprintf(r->err, sizeof r->err, "measuring process failed");
  }
  return r->ok ? 0 : -1;
}

static const char *python(void) {
  const char *p = getenv("TG_BENCH_PYTHON");
  return p && *p ? p : "/usr/bin/python3";
}

static bool have_torch(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s -c 'import torch' >/dev/null 2>&1", python());
  return system(cmd) == 0;
}

/* PyTorch's figures from bench/train_step.py. */
static int measure_torch(net_kind kind, int threads, int warmup, int steps, result *r) {
  memset(r, 0, sizeof *r);
  char cmd[1024];
  /* OMP_NUM_THREADS too: with it, torch's helper pools also keep to the thread count
   * (a little faster on one thread than torch.set_num_threads alone) */
  snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=%d %s %s/train_step.py %s %d %d %d 2>&1",
           threads, python(), TG_BENCH_DIR, NET_NAMES[kind], threads, warmup, steps);
  fflush(stdout);
  FILE *p = popen(cmd, "r");
  if (!p)
    return -1;
  double v, c;
  char word[64];
  while (fscanf(p, "%63s", word) == 1 && strcmp(word, "|") != 0)
    if (sscanf(word, "%lf:%lf", &v, &c) == 2 && r->n < MAX_STEPS) {
      r->cpu_ms[r->n] = c;
      r->ms[r->n++] = v;
    }
  long long peak = 0, rss = 0;
  r->ok = fscanf(p, "%lld %lld", &peak, &rss) == 2 && r->n > 0;
  r->peak = peak;
  r->rss = rss;
  while (fgetc(p) != EOF)
    ;
  if (pclose(p) != 0)
    r->ok = 0;
  if (!r->ok)
    snprintf(r->err, sizeof r->err, "%.400s failed", cmd);
  return r->ok ? 0 : -1;
}

/* Pools the steps of every round; the peak is the largest round's. */
static void pool(result *all, const result *one) {
  for (int i = 0; i < one->n && all->n < MAX_STEPS; i++) {
    all->cpu_ms[all->n] = one->cpu_ms[i];
    all->ms[all->n++] = one->ms[i];
  }
  all->peak = one->peak > all->peak ? one->peak : all->peak;
  all->ok = 1;
}

/* The load of the machine (shared machines make noisy timings). */
static void uptime_line(const char *when) {
  double load[3] = {NAN, NAN, NAN};
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
      load[0] = NAN;
    fclose(f);
  }
  printf("%ld cores, load average %.2f %.2f %.2f at %s\n", sysconf(_SC_NPROCESSORS_ONLN),
         load[0], load[1], load[2], when);
}

static bool skip(int k, int t, const char *only_net, int only_threads) {
  return (only_net && strcmp(only_net, NET_NAMES[k]) != 0) ||
         (only_threads && only_threads != THREADS[t]);
}

static void usage(void) {
  fprintf(stderr,
          "usage: train_step [--steps N (>= 20, default 30)] [--warmup N (default "
          "5)] [--rounds N (default 2)] [--net convnet|unet] [--threads N] "
          "[--no-torch]\n");
}

int tg_bench_train_step_cuda(int argc, char **argv);

int main(int argc, char **argv) {
  if (argc > 2 && !strcmp(argv[1], "--device") && !strncmp(argv[2], "cuda", 4))
    return tg_bench_train_step_cuda(argc - 3, argv + 3);
  int steps = 30, warmup = 5, rounds = 2, only_threads = 0;
  const char *only_net = NULL;
  bool torch = true;
  for (int i = 1; i < argc; i++) {
    int *dst = !strcmp(argv[i], "--steps")     ? &steps
               : !strcmp(argv[i], "--warmup")  ? &warmup
               : !strcmp(argv[i], "--rounds")  ? &rounds
               : !strcmp(argv[i], "--threads") ? &only_threads
                                               : NULL;
    if (dst && i + 1 < argc) {
      *dst = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--net") && i + 1 < argc) {
      only_net = argv[++i];
    } else if (!strcmp(argv[i], "--no-torch")) {
      torch = false;
    } else {
      usage();
      return 2;
    }
  }
  if (steps < 20 || steps > MAX_STEPS / 4 || warmup < 1 || rounds < 1 || rounds > 4) {
    usage();
    return 2;
  }
  torch = torch && have_torch();

  const char *wait = getenv("OMP_WAIT_POLICY");
  printf("training step, float32, SGD momentum 0.9: median of %d steps x %d rounds after "
         "%d warm-up steps;\n%s; OMP_WAIT_POLICY=%s\n",
         steps, rounds, warmup,
         torch ? "PyTorch from " TG_BENCH_DIR "/train_step.py, same threads, alternating "
                 "with ours"
               : "PyTorch not run (--no-torch, or torch does not import)",
         wait ? wait : "(unset)");
  uptime_line("start");
  static result sgemm[N_THREADS], ours[N_NETS][N_THREADS], theirs[N_NETS][N_THREADS], one;
  for (int t = 0; t < N_THREADS; t++)
    if (in_child(&(job){.threads = THREADS[t], .sgemm = true}, &sgemm[t]) < 0) {
      fprintf(stderr, "sgemm: %s\n", sgemm[t].err);
      return 1;
    }
  for (int k = 0; k < N_NETS; k++)
    for (int t = 0; t < N_THREADS; t++)
      for (int r = 0; r < rounds && skip(k, t, only_net, only_threads) == false; r++) {
        if (in_child(&(job){k, THREADS[t], warmup, steps, false}, &one) < 0) {
          fprintf(stderr, "%s at %d threads: %s\n", NET_NAMES[k], THREADS[t], one.err);
          return 1;
        }
        pool(&ours[k][t], &one);
        if (torch && measure_torch(k, THREADS[t], warmup, steps, &one) == 0)
          pool(&theirs[k][t], &one);
        else if (torch)
          fprintf(stderr, "warning: %s\n", one.err);
      }

  /* Medians (sort the arrays: minima are then at [0]). */
  printf("\n%-7s %3s | %-52s | %-31s | %s\n", "", "", "tapegrad", "PyTorch",
         "tapegrad / PyTorch");
  printf("%-7s %3s | %7s %7s %7s %6s %7s %5s %7s | %7s %7s %7s %7s | %5s %5s %5s %5s\n",
         "net", "thr", "ms/step", "min", "cpu ms", "img/s", "GFLOP/s", "%gemm", "peak MB",
         "ms/step", "min", "cpu ms", "peak MB", "time", "min", "cpu", "mem");
  for (int k = 0; k < N_NETS; k++)
    for (int t = 0; t < N_THREADS; t++) {
      if (skip(k, t, only_net, only_threads))
        continue;
      result *o = &ours[k][t], *p = &theirs[k][t];
      const double ms = median(o->ms, o->n), cpu = median(o->cpu_ms, o->n);
      const double gf = step_flops(k) / ms * 1e-6, sg = median(sgemm[t].ms, sgemm[t].n);
      printf("%-7s %3d | %7.2f %7.2f %7.2f %6.0f %7.1f %4.0f%% %7.1f |", NET_NAMES[k],
             THREADS[t], ms, o->ms[0], cpu, (double)BATCH[k] / ms * 1e3, gf,
             100 * gf / sg, o->peak / 1048576.0);
      if (p->ok) {
        const double tms = median(p->ms, p->n), tcpu = median(p->cpu_ms, p->n);
        printf(" %7.2f %7.2f %7.2f %7.1f | %5.2f %5.2f %5.2f %5.2f\n", tms, p->ms[0],
               tcpu, p->peak / 1048576.0, ms / tms, o->ms[0] / p->ms[0], cpu / tcpu,
               (double)o->peak / (double)p->peak);
      } else {
        printf(" %7s %7s %7s %7s | %5s %5s %5s %5s\n", "-", "-", "-", "-", "-", "-", "-",
               "-");
      }
    }
  printf("\nsgemm 1024^3 (OpenBLAS, this run): %.1f GFLOP/s on 1 thread, %.1f on 2.\n",
         median(sgemm[0].ms, sgemm[0].n), median(sgemm[1].ms, sgemm[1].n));
  printf(
      "GFLOP/s: %.2f (convnet) and %.2f (unet) GFLOP per step (convolutions and linear: "
      "forward, weight and input\ngradients) over the median step; %%gemm: that over "
      "the sgemm figure. min: the fastest step. cpu ms: CPU time of\nall threads per "
      "step (median). peak MB: resident memory above the pre-step baseline. time, "
      "min, cpu,\nmem: ratios of the medians, minima, CPU times and peaks.\n",
      step_flops(CONVNET) * 1e-9, step_flops(UNET) * 1e-9);
  uptime_line("end");
  return 0;
}
