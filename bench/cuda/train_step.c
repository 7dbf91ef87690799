/* Training step on CUDA: `bench/train_step --device cuda [--steps N] [--small]
 * [--no-torch]`. For the two example nets (examples/nets.h) at two batch sizes each
 * (conv net 64 and 256, U-Net 8 and 32; --small: 2 and 4, 1 and 2, for the host SIMT
 * build, to prove the benchmark itself works): the median time of a step (forward,
 * cross-entropy, backward, SGD momentum 0.9 on the device) between CUDA events on the
 * library's stream, after warm-up, the host's time to issue a step (what launches
 * and the tape cost: a step is launch-bound when it is close to the event time),
 * images/s and the achieved GFLOP/s next to a cuBLAS sgemm measured in the same run;
 * beside them PyTorch CUDA eager on the same nets, batches and optimizer, and PyTorch
 * replaying the whole step as a CUDA graph (torch.cuda.graph), when TG_BENCH_PYTHON
 * (default python3) has torch with CUDA. Targets (#13): each step <= 0.5x PyTorch
 * eager's time and <= its CUDA-graph time. */
#include "../train_step.h"
#include "../common.h"
#include "graph/internal.h"
#include "nets.h"
#include "runtime/cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tg_bench_train_step_cuda(int argc, char **argv);

#ifdef TG_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

enum { MAX_STEPS = 200, N_ROWS = 4 };

typedef struct {
  int kind; /* BENCH_CONVNET or BENCH_UNET */
  int64_t batch;
} row;

typedef struct {
  double ms, host_ms; /* medians: device time between events, host time to issue */
  char err[256];
} timing;

/* Median ms of `steps` steps of one net and batch on cuda:0. */
static int time_ours(const row *r, int warmup, int steps, timing *out) {
  const tg_device dev = tg_cuda(0);
  cudaStream_t st = tg__cuda_stream(0);
  cudaEvent_t ev[MAX_STEPS + 1];
  double ms[MAX_STEPS], host[MAX_STEPS];
  int made = 0, rc = st ? 0 : -1;
  for (; made <= steps && rc == 0; made++)
    rc = TG_CUDA(cudaEventCreate(&ev[made]));
  tg_manual_seed(0);
  ex_convnet cn = {0};
  ex_unet un = {0};
  const bool conv = r->kind == BENCH_CONVNET;
  const int64_t side = conv ? EX_CONVNET_SIDE : EX_UNET_SIDE;
  const int64_t classes = conv ? EX_CONVNET_CLASSES : EX_UNET_CLASSES;
  const int64_t ny = conv ? r->batch : r->batch * side * side;
  int64_t *labels = malloc((size_t)ny * sizeof *labels);
  tg_optimizer *opt = NULL;
  tg_tensor *x = NULL, *y = NULL;
  if (rc == 0 && labels &&
      (conv ? ex_convnet_build(&cn, dev) : ex_unet_build(&un, dev)) == 0) {
    for (int64_t i = 0; i < ny; i++)
      labels[i] = (int64_t)(rand() % classes);
    tg_tensor *yh = conv ? tg_tensor_from_data(labels, TG_SHAPE(r->batch), TG_I64, TG_CPU)
                         : tg_tensor_from_data(labels, TG_SHAPE(r->batch, side, side),
                                               TG_I64, TG_CPU);
    x = tg_randn(TG_SHAPE(r->batch, conv ? 1 : 3, side, side), TG_F32, dev);
    y = yh ? tg_tensor_to(yh, dev) : NULL;
    tg_tensor_free(yh);
    tg_sgd_config sc = tg_sgd_config_default(0.01);
    sc.momentum = 0.9;
    opt = x && y ? tg_sgd_new(conv ? cn.vs : un.vs, sc) : NULL;
  }
  rc = opt ? rc : -1;
  for (int i = 0; i < warmup + steps && rc == 0; i++) {
    const int k = i - warmup;
    if (k >= 0)
      rc = TG_CUDA(cudaEventRecord(ev[k], st));
    const double t0 = bench_now();
    tg_scope_begin();
    tg_tensor *logits =
        conv ? ex_convnet_forward(&cn, x, true) : ex_unet_forward(&un, x, true);
    tg_tensor *loss = tg_cross_entropy(logits, y, TG_REDUCTION_MEAN, -100);
    tg_optimizer_zero_grad(opt);
    if (rc == 0 && !(loss && tg_backward(loss) == 0 && tg_optimizer_step(opt) == 0))
      rc = -1;
    tg_scope_end();
    if (k >= 0)
      host[k] = (bench_now() - t0) * 1e3;
    if (rc == 0 && k == steps - 1)
      rc = TG_CUDA(cudaEventRecord(ev[steps], st));
  }
  if (rc == 0)
    rc = tg_cuda_synchronize();
  for (int k = 0; k < steps && rc == 0; k++) {
    float f = 0;
    rc = TG_CUDA(cudaEventElapsedTime(&f, ev[k], ev[k + 1]));
    ms[k] = f;
  }
  if (rc == 0) {
    out->ms = bench_median(ms, steps);
    out->host_ms = bench_median(host, steps);
  } else {
    snprintf(out->err, sizeof out->err, "%s", tg_last_error());
  }
  for (int k = 0; k < made; k++)
    cudaEventDestroy(ev[k]);
  tg_optimizer_free(opt);
  tg_tensor_free(x);
  tg_tensor_free(y);
  tg_varstore_free(conv ? cn.vs : un.vs);
  free(labels);
  return rc;
}

/* GFLOP/s of a float32 cuBLAS GEMM of side s on the library's handle (median of 9). */
static double sgemm_rate(int s) {
  cublasHandle_t h = tg__cuda_cublas(0);
  cudaStream_t st = tg__cuda_stream(0);
  tg_scope_begin();
  tg_tensor *a = tg_randn(TG_SHAPE(s, s), TG_F32, tg_cuda(0));
  tg_tensor *c = tg_empty(TG_SHAPE(s, s), TG_F32, tg_cuda(0));
  cudaEvent_t e0, e1;
  double v[9];
  int rc = h && st && a && c ? 0 : -1;
  if (rc == 0)
    rc = TG_CUDA(cudaEventCreate(&e0)) | TG_CUDA(cudaEventCreate(&e1));
  const float one = 1, zero = 0;
  for (int i = -2; i < 9 && rc == 0; i++) {
    float f = 0;
    rc = TG_CUDA(cudaEventRecord(e0, st));
    if (rc == 0)
      rc = TG_CUBLAS(cublasSgemm(
          h, CUBLAS_OP_N, CUBLAS_OP_N, s, s, s, &one, (const float *)tg__data(a), s,
          (const float *)tg__data(a), s, &zero, (float *)tg__data(c), s));
    if (rc == 0)
      rc = TG_CUDA(cudaEventRecord(e1, st)) | TG_CUDA(cudaEventSynchronize(e1)) |
           TG_CUDA(cudaEventElapsedTime(&f, e0, e1));
    if (i >= 0)
      v[i] = 2.0 * s * s * (double)s / (f * 1e-3) * 1e-9;
  }
  if (rc == 0) {
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
  }
  tg_scope_end();
  return rc == 0 ? bench_median(v, 9) : -1;
}

/* PyTorch's medians (ms), eager and CUDA graph, one "eager graph" line per row (graph
 * -1 when capture fails). The nets are examples/pytorch_reference.py's. */
static const char *TORCH_SCRIPT =
    "import os, sys, torch, torch.nn.functional as F\n"
    "assert torch.cuda.is_available()\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from pytorch_reference import MnistNet, UNet\n"
    "warmup, steps, rows = int(sys.argv[2]), int(sys.argv[3]), eval(sys.argv[4])\n"
    "med = lambda v: sorted(v)[len(v) // 2]\n"
    "ev = lambda: torch.cuda.Event(enable_timing=True)\n"
    "def setup(kind, n):\n"
    "    torch.manual_seed(0)\n"
    "    if kind == 0:\n"
    "        m, x, y = MnistNet(), torch.randn(n, 1, 28, 28), torch.randint(0, 10, "
    "(n,))\n"
    "    else:\n"
    "        m, x, y = UNet(), torch.randn(n, 3, 64, 64), torch.randint(0, 4, (n, 64, "
    "64))\n"
    "    m = m.cuda()\n"
    "    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)\n"
    "    return m, x.cuda(), y.cuda(), opt\n"
    "def step(m, x, y, opt):\n"
    "    opt.zero_grad(set_to_none=True)\n"
    "    loss = F.cross_entropy(m(x), y)\n"
    "    loss.backward(); opt.step(); return loss\n"
    "def timed(fn):\n"
    "    for _ in range(warmup): fn()\n"
    "    es = [ev() for _ in range(steps + 1)]\n"
    "    for k in range(steps): es[k].record(); fn()\n"
    "    es[steps].record(); torch.cuda.synchronize()\n"
    "    return med([es[k].elapsed_time(es[k + 1]) for k in range(steps)])\n"
    "for kind, n in rows:\n"
    "    m, x, y, opt = setup(kind, n)\n"
    "    eager = timed(lambda: step(m, x, y, opt))\n"
    "    graph = -1.0\n"
    "    try:\n"
    "        m, x, y, opt = setup(kind, n)\n"
    "        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())\n"
    "        with torch.cuda.stream(s):\n"
    "            for _ in range(3): step(m, x, y, opt)\n"
    "        torch.cuda.current_stream().wait_stream(s)\n"
    "        g = torch.cuda.CUDAGraph(); opt.zero_grad(set_to_none=True)\n"
    "        with torch.cuda.graph(g):\n"
    "            loss = F.cross_entropy(m(x), y); loss.backward(); opt.step()\n"
    "        graph = timed(g.replay)\n"
    "    except Exception as e:\n"
    "        print('graph capture failed:', e, file=sys.stderr)\n"
    "    print('%.4f %.4f' % (eager, graph), flush=True)\n";

int tg_bench_train_step_cuda(int argc, char **argv) {
  int steps = 30, warmup = 5;
  bool small = false, torch = true;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--steps") && i + 1 < argc)
      steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--small"))
      small = true;
    else if (!strcmp(argv[i], "--no-torch"))
      torch = false;
    else {
      fprintf(stderr,
              "usage: train_step --device cuda [--steps N (2-%d)] [--small] "
              "[--no-torch]\n",
              MAX_STEPS);
      return 2;
    }
  }
  if (steps < 2 || steps > MAX_STEPS)
    return fprintf(stderr, "train_step: --steps must be in [2, %d]\n", MAX_STEPS), 2;
  if (tg_cuda_device_count() < 1) {
    fprintf(stderr, "train_step --device cuda: no CUDA device\n");
    return 77;
  }
  if (small)
    warmup = 1;
  const row rows[N_ROWS] = {{BENCH_CONVNET, small ? 2 : 64},
                            {BENCH_CONVNET, small ? 4 : 256},
                            {BENCH_UNET, small ? 1 : 8},
                            {BENCH_UNET, small ? 2 : 32}};
  timing ours[N_ROWS] = {0};
  for (int i = 0; i < N_ROWS; i++)
    if (time_ours(&rows[i], warmup, steps, &ours[i]) < 0) {
      fprintf(stderr, "train_step --device cuda: %s batch %lld: %s\n",
              bench_net_name(rows[i].kind), (long long)rows[i].batch, ours[i].err);
      return 1;
    }
  const double sgemm = sgemm_rate(small ? 256 : 4096);
  double theirs[N_ROWS][2];
  bool have = false;
  bench_python py;
  char list[256] = "[";
  for (int i = 0; i < N_ROWS; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "(%d, %lld),", rows[i].kind,
             (long long)rows[i].batch);
  strcat(list, "]");
  FILE *p = torch ? bench_python_open(&py, getenv("TG_BENCH_PYTHON"), TORCH_SCRIPT,
                                      "%s/../examples %d %d '%s'", TG_BENCH_DIR, warmup,
                                      steps, list)
                  : NULL;
  if (p) {
    have = true;
    for (int i = 0; i < N_ROWS && have; i++)
      have = fscanf(p, "%lf %lf", &theirs[i][0], &theirs[i][1]) == 2;
    bench_python_close(&py);
  }
  printf(
      "training step on cuda:0, float32, SGD momentum 0.9: median of %d steps after %d "
      "warm-up steps, CUDA events on the library's stream%s\n",
      steps, warmup, small ? " (--small: tiny batches)" : "");
  printf("%-7s %5s | %8s %8s %8s %8s %6s | %8s %8s | %6s %6s\n", "net", "batch",
         "ms/step", "host ms", "img/s", "GFLOP/s", "%gemm", "torch", "graph", "/eager",
         "/graph");
  for (int i = 0; i < N_ROWS; i++) {
    const double ms = ours[i].ms,
                 gf = bench_step_flops(rows[i].kind, rows[i].batch) / ms * 1e-6;
    printf("%-7s %5lld | %8.3f %8.3f %8.0f %8.1f %5.0f%% |", bench_net_name(rows[i].kind),
           (long long)rows[i].batch, ms, ours[i].host_ms,
           (double)rows[i].batch / ms * 1e3, gf, sgemm > 0 ? 100 * gf / sgemm : 0.0);
    if (have && theirs[i][1] > 0)
      printf(" %8.3f %8.3f | %6.2f %6.2f\n", theirs[i][0], theirs[i][1],
             ms / theirs[i][0], ms / theirs[i][1]);
    else if (have)
      printf(" %8.3f %8s | %6.2f %6s\n", theirs[i][0], "-", ms / theirs[i][0], "-");
    else
      printf(" %8s %8s | %6s %6s\n", "-", "-", "-", "-");
  }
  printf("cuBLAS sgemm %d^3 in this run: %.0f GFLOP/s. host ms: the host's time to issue "
         "a step (the device runs behind it); torch / graph: PyTorch CUDA eager and its "
         "whole step replayed as a CUDA graph%s. Targets: /eager <= 0.5, /graph <= 1.\n",
         small ? 256 : 4096, sgemm,
         have ? "" : " (not run: no torch with CUDA, or --no-torch)");
  return 0;
}

#else

int tg_bench_train_step_cuda(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "train_step --device cuda: tapegrad was built without CUDA\n");
  return 77;
}

#endif
