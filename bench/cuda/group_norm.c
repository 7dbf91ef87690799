/* GroupNorm on CUDA: `bench/group_norm --device cuda [reps] [--small]`.
 * Per shape (float32): median times over reps runs of forward and forward+backward
 * (tg_group_norm + its node's backward, weight and bias requiring grad), timed with
 * CUDA events on the library's stream, the L2 flushed (a memset of twice its size)
 * before every run and the inputs rotated over three sets; beside them, in the same
 * run, a device-to-device cudaMemcpy of the same tensor. Prints achieved GB/s counting
 * the minimum bytes (forward: read x, write y; backward: read x and dy, write dx), the
 * fraction of the copy's bandwidth that is (targets: forward >= 0.8, forward+backward
 * >= 0.7), and PyTorch CUDA's F.group_norm medians, measured the same way, when
 * `python3` (TG_BENCH_PYTHON) has torch with CUDA. --small runs tiny shapes (the host
 * SIMT build, to prove the benchmark itself works). */
#include "../common.h"
#include "graph/internal.h"
#include "runtime/cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TG_HAVE_CUDA
#include <cuda_runtime_api.h>

typedef struct {
  int64_t n, c, h, w, g;
} gn_shape;

static const gn_shape LARGE[] = {
    {8, 256, 56, 56, 32}, {2, 320, 64, 64, 32}, {1, 320, 64, 64, 32},
    {16, 64, 32, 32, 8},  {4, 512, 28, 28, 32},
};
static const gn_shape SMALL[] = {{2, 8, 6, 6, 4}, {1, 16, 9, 9, 8}};
enum { SETS = 3 };

typedef struct {
  cudaStream_t stream;
  cudaEvent_t start, stop;
  void *flush;
  size_t flush_bytes;
} timer;

/* Milliseconds between the events, after flushing L2 (outside the timed region). */
static int begin(timer *t) {
  if (TG_CUDA(cudaMemsetAsync(t->flush, 0, t->flush_bytes, t->stream)) < 0)
    return -1;
  return TG_CUDA(cudaEventRecord(t->start, t->stream));
}

static int end(timer *t, double *ms) {
  float f = 0;
  if (TG_CUDA(cudaEventRecord(t->stop, t->stream)) < 0 ||
      TG_CUDA(cudaEventSynchronize(t->stop)) < 0 ||
      TG_CUDA(cudaEventElapsedTime(&f, t->start, t->stop)) < 0)
    return -1;
  *ms = f;
  return 0;
}

/* Medians (ms) of memcpy, forward and forward+backward for one shape. */
static int bench_shape(const gn_shape *s, int reps, timer *t, double out[3]) {
  const int64_t dims[4] = {s->n, s->c, s->h, s->w};
  const tg_device dev = tg_cuda(0);
  tg_scope_begin();
  tg_tensor *x[SETS], *dy[SETS], *dst = tg_empty(dims, 4, TG_F32, dev);
  for (int k = 0; k < SETS; k++) {
    x[k] = tg_randn(dims, 4, TG_F32, dev);
    dy[k] = tg_randn(dims, 4, TG_F32, dev);
  }
  tg_tensor *w = tg_uniform(TG_SHAPE(s->c), 0.5, 1.5, TG_F32, dev);
  tg_tensor *b = tg_randn(TG_SHAPE(s->c), TG_F32, dev);
  int rc = !dst || !w || !b ? -1 : 0;
  for (int k = 0; k < SETS && rc == 0; k++)
    rc = x[k] && dy[k] ? 0 : -1;
  if (rc == 0)
    rc = tg_set_requires_grad(w, true) | tg_set_requires_grad(b, true);
  const size_t bytes = (size_t)tg_numel(dst) * sizeof(float);
  double *v = malloc((size_t)reps * sizeof *v);
  for (int m = 0; m < 3 && rc == 0; m++) {
    for (int r = -2; r < reps && rc == 0; r++) { /* two warm-ups */
      const int k = (r + 2) % SETS;
      double ms = 0;
      tg_scope_begin();
      rc = begin(t);
      if (rc == 0 && m == 0) {
        rc = TG_CUDA(cudaMemcpyAsync(tg__data(dst), tg__data(x[k]), bytes,
                                     cudaMemcpyDeviceToDevice, t->stream));
      } else if (rc == 0) {
        tg_tensor *y = tg_group_norm(x[k], s->g, w, b, 1e-5);
        if (!y) {
          rc = -1;
        } else if (m == 2) {
          tg_tensor *gi[3] = {NULL, NULL, NULL};
          tg_no_grad_begin();
          tg_scope_begin();
          rc = y->grad_fn->backward(y->grad_fn, dy[k], gi);
          tg_scope_end();
          tg_no_grad_end();
        }
      }
      if (rc == 0)
        rc = end(t, &ms);
      tg_scope_end();
      if (r >= 0)
        v[r] = ms;
    }
    out[m] = bench_median(v, reps);
  }
  free(v);
  tg_scope_end();
  return rc;
}

/* PyTorch CUDA's medians (ms): one "fwd fwdbwd" line per shape. */
static const char *TORCH_SCRIPT =
    "import sys, torch, torch.nn.functional as F\n"
    "assert torch.cuda.is_available()\n"
    "reps = int(sys.argv[1]); shapes = eval(sys.argv[2])\n"
    "flush = torch.empty(int(sys.argv[3]), dtype=torch.uint8, device='cuda')\n"
    "med = lambda v: sorted(v)[len(v) // 2]\n"
    "ev = lambda: torch.cuda.Event(enable_timing=True)\n"
    "for n, c, h, w, g in shapes:\n"
    "    xs = [torch.randn(n, c, h, w, device='cuda', requires_grad=True) for _ in "
    "range(3)]\n"
    "    dys = [torch.randn(n, c, h, w, device='cuda') for _ in range(3)]\n"
    "    wt = torch.rand(c, device='cuda', requires_grad=True)\n"
    "    bt = torch.randn(c, device='cuda', requires_grad=True)\n"
    "    res = []\n"
    "    for bwd in (0, 1):\n"
    "        ts = []\n"
    "        for r in range(reps + 2):\n"
    "            x, dy = xs[r % 3], dys[r % 3]\n"
    "            flush.zero_(); a, b = ev(), ev(); a.record()\n"
    "            y = F.group_norm(x, g, wt, bt, 1e-5)\n"
    "            if bwd: y.backward(dy)\n"
    "            b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))\n"
    "            x.grad = wt.grad = bt.grad = None; del y\n"
    "        res.append(med(ts[2:]))\n"
    "    print('%.4f %.4f' % tuple(res), flush=True)\n";

static int torch_times(const gn_shape *shapes, int n, int reps, size_t flush,
                       double (*ms)[2]) {
  char list[512] = "[";
  for (int i = 0; i < n; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list),
             "(%lld,%lld,%lld,%lld,%lld),", (long long)shapes[i].n,
             (long long)shapes[i].c, (long long)shapes[i].h, (long long)shapes[i].w,
             (long long)shapes[i].g);
  strcat(list, "]");
  bench_python py;
  FILE *p =
      bench_python_open(&py, "python3", TORCH_SCRIPT, "%d '%s' %zu", reps, list, flush);
  int got = 0;
  for (int i = 0; p && i < n; i++)
    got += fscanf(p, "%lf %lf", &ms[i][0], &ms[i][1]) == 2;
  bench_python_close(&py);
  return got == n ? 0 : -1;
}

int tg_bench_group_norm_cuda(int argc, char **argv) {
  int reps = 20;
  bool small = false;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--small"))
      small = true;
    else if (atoi(argv[i]) > 0)
      reps = atoi(argv[i]);
  }
  if (!tg_cuda_is_available()) {
    fprintf(stderr, "group_norm bench: no CUDA device (%s)\n", tg_last_error());
    return 1;
  }
  const gn_shape *shapes = small ? SMALL : LARGE;
  const int n =
      small ? (int)(sizeof SMALL / sizeof *SMALL) : (int)(sizeof LARGE / sizeof *LARGE);
  struct cudaDeviceProp prop;
  timer t = {0};
  if (TG_CUDA(cudaGetDeviceProperties(&prop, 0)) < 0 ||
      !(t.stream = tg__cuda_stream(0)) || TG_CUDA(cudaEventCreate(&t.start)) < 0 ||
      TG_CUDA(cudaEventCreate(&t.stop)) < 0) {
    fprintf(stderr, "group_norm bench: %s\n", tg_last_error());
    return 1;
  }
  t.flush_bytes = 2 * (size_t)(prop.l2CacheSize > 0 ? prop.l2CacheSize : 1 << 20);
  if (!(t.flush = tg__cuda_malloc(t.flush_bytes, 0))) {
    fprintf(stderr, "group_norm bench: %s\n", tg_last_error());
    return 1;
  }
  double(*torch_ms)[2] = calloc((size_t)n, sizeof *torch_ms);
  const bool have_torch =
      !small && torch_times(shapes, n, reps, t.flush_bytes, torch_ms) == 0;
  printf("GroupNorm float32 on %s (%d SMs): median of %d runs in ms, L2 flushed, inputs "
         "rotated;\nGB/s counts the minimum bytes (fwd: x + y, fwd+bwd: that + x, dy, "
         "dx); bw = fraction of the\nsame-size device memcpy's bandwidth (targets: fwd "
         ">= 0.80, fwd+bwd >= 0.70)%s\n",
         prop.name, prop.multiProcessorCount, reps,
         have_torch ? "; torch = PyTorch CUDA F.group_norm, same protocol" : "");
  printf("%-15s %3s | %7s %6s | %7s %6s %5s | %7s %6s %5s", "[N,C,H,W]", "G", "memcpy",
         "GB/s", "fwd", "GB/s", "bw", "fwd+bwd", "GB/s", "bw");
  if (have_torch)
    printf(" | %9s %9s %6s %6s", "torch fwd", "torch f+b", "x fwd", "x f+b");
  printf("\n");
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++) {
    const gn_shape *s = &shapes[i];
    double m[3];
    if ((rc = bench_shape(s, reps, &t, m)) < 0)
      break;
    const double e = (double)(s->n * s->c * s->h * s->w) * 4;
    const double gb_mc = 2 * e / (m[0] * 1e6), gb_f = 2 * e / (m[1] * 1e6),
                 gb_fb = 5 * e / (m[2] * 1e6);
    char name[64];
    snprintf(name, sizeof name, "[%lld,%lld,%lld,%lld]", (long long)s->n, (long long)s->c,
             (long long)s->h, (long long)s->w);
    printf("%-15s %3lld | %7.4f %6.0f | %7.4f %6.0f %5.2f | %7.4f %6.0f %5.2f", name,
           (long long)s->g, m[0], gb_mc, m[1], gb_f, gb_f / gb_mc, m[2], gb_fb,
           gb_fb / gb_mc);
    if (have_torch)
      printf(" | %9.4f %9.4f %6.2f %6.2f", torch_ms[i][0], torch_ms[i][1],
             m[1] / torch_ms[i][0], m[2] / torch_ms[i][1]);
    printf("\n");
    fflush(stdout);
  }
  if (rc < 0)
    fprintf(stderr, "group_norm bench failed: %s\n", tg_last_error());
  free(torch_ms);
  tg__cuda_free(t.flush, t.flush_bytes, 0);
  return rc < 0 ? 1 : 0;
}
#else
int tg_bench_group_norm_cuda(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "group_norm bench: tapegrad was built without CUDA\n");
  return 1;
}
#endif
