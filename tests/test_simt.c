/* The SIMT layer of the host build (runtime/simt) on its own: kernels of
 * tests/test_simt_kernels.cu, the cudart stand-in's memory, errors, streams and events,
 * and the cuBLAS stand-in's GEMMs against a naive reference. Built in every mode. */
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "tests/test_simt.h"

#define CHECK(call) assert_int_equal((call), cudaSuccess)

static void *dev_alloc(size_t bytes) {
  void *p = NULL;
  CHECK(cudaMalloc(&p, bytes));
  assert_non_null(p);
  return p;
}

static void *to_dev(const void *host, size_t bytes) {
  void *p = dev_alloc(bytes);
  CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
  return p;
}

static void from_dev(void *host, const void *dev, size_t bytes) {
  CHECK(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}

static double uniform(void) { return rand() / (double)RAND_MAX * 2.0 - 1.0; }

static void test_device(void **state) {
  (void)state;
  int n = -1, dev = -1, v = 0;
  CHECK(cudaGetDeviceCount(&n));
  assert_int_equal(n, 1);
  CHECK(cudaSetDevice(0));
  CHECK(cudaGetDevice(&dev));
  assert_int_equal(dev, 0);
  assert_int_equal(cudaSetDevice(1), cudaErrorInvalidDevice);
  assert_int_equal(cudaGetLastError(), cudaErrorInvalidDevice);
  assert_int_equal(cudaGetLastError(), cudaSuccess);
  struct cudaDeviceProp p;
  CHECK(cudaGetDeviceProperties(&p, 0));
  assert_int_equal(p.multiProcessorCount, 132);
  assert_int_equal(p.major, 9);
  assert_int_equal(p.minor, 0);
  assert_int_equal(p.warpSize, 32);
  assert_int_equal(p.maxThreadsPerBlock, 1024);
  assert_int_equal(p.sharedMemPerBlock, 48 * 1024);
  assert_int_equal(p.sharedMemPerBlockOptin, 227 * 1024);
  assert_int_equal(p.sharedMemPerMultiprocessor, 228 * 1024);
  CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0));
  assert_int_equal(v, 132);
  CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  assert_int_equal(v, 227 * 1024);
  size_t free_b = 0, total = 0;
  CHECK(cudaMemGetInfo(&free_b, &total));
  assert_int_equal(total, p.totalGlobalMem);
  assert_true(free_b <= total);
  assert_string_equal(cudaGetErrorName(cudaErrorInvalidConfiguration),
                      "cudaErrorInvalidConfiguration");
  assert_string_equal(cudaGetErrorString(cudaErrorInvalidConfiguration),
                      "invalid configuration argument");
  assert_int_equal(cudaErrorIllegalAddress, 700);
  assert_int_equal(cudaErrorLaunchFailure, 719);
}

static void test_block_reduction(void **state) {
  (void)state;
  const int n = 5000;
  const int threads[] = {32, 256, 1024};
  float *x = malloc(n * sizeof *x);
  for (int i = 0; i < n; i++)
    x[i] = (float)(i % 17) - 8.0f;
  float *dx = to_dev(x, n * sizeof *x);
  for (int t = 0; t < 3; t++) {
    int blocks = (n + threads[t] - 1) / threads[t];
    float *dout = dev_alloc(blocks * sizeof(float)), out[160];
    for (int rep = 0; rep < 2; rep++) { /* both sweep orders */
      CHECK(simt_block_sum(dx, dout, n, threads[t]));
      from_dev(out, dout, blocks * sizeof(float));
      for (int b = 0; b < blocks; b++) {
        float want = 0;
        for (int i = b * threads[t]; i < n && i < (b + 1) * threads[t]; i++)
          want += x[i];
        assert_float_equal(out[b], want, 1e-3);
      }
    }
    CHECK(cudaFree(dout));
  }
  CHECK(cudaFree(dx));
  free(x);
}

static void test_warp_shuffles(void **state) {
  (void)state;
  const int blocks = 3, threads = 128, n = blocks * threads;
  double x[384], r[5][384];
  for (int i = 0; i < n; i++)
    x[i] = (double)(rand() % 1000) / 8.0;
  double *dx = to_dev(x, sizeof x), *d[5];
  for (int k = 0; k < 5; k++)
    d[k] = dev_alloc(sizeof x);
  CHECK(simt_warp_ops(dx, d[0], d[1], d[2], d[3], d[4], blocks, threads));
  for (int k = 0; k < 5; k++) {
    from_dev(r[k], d[k], sizeof x);
    CHECK(cudaFree(d[k]));
  }
  for (int i = 0; i < n; i++) {
    int w = i / 32 * 32, lane = i % 32;
    double total = 0, scan = 0, down = 0, group = 0;
    for (int l = 0; l < 32; l++)
      total += x[w + l];
    for (int l = 0; l <= lane; l++)
      scan += x[w + l];
    /* shfl_down leaves a lane's own value where the source is past the warp: lane
     * l ends with the sum of a butterfly over lanes l.. clipped at 31 */
    double partial[32];
    for (int l = 0; l < 32; l++)
      partial[l] = x[w + l];
    for (int o = 16; o > 0; o /= 2) {
      double next[32];
      for (int l = 0; l < 32; l++)
        next[l] = partial[l] + (l + o < 32 ? partial[l + o] : partial[l]);
      memcpy(partial, next, sizeof next);
    }
    down = partial[lane];
    for (int l = lane / 8 * 8; l < lane / 8 * 8 + 8; l++)
      group += x[w + l];
    assert_float_equal(r[0][i], total, 1e-9);
    assert_float_equal(r[1][i], down, 1e-9);
    assert_float_equal(r[2][i], x[w + 5], 0);
    assert_float_equal(r[3][i], scan, 1e-9);
    assert_float_equal(r[4][i], group, 1e-9);
    if (lane == 0)
      assert_float_equal(r[1][i], total, 1e-9);
  }
  CHECK(cudaFree(dx));
}

/* The neighbour exchange is right with its barrier and wrong without it, whichever
 * way the scheduler sweeps the block (launches alternate), with static and with
 * dynamic shared memory. Inputs change every launch, as stale shared data from an
 * earlier launch would otherwise pass for the right answer. */
static void test_missing_barrier(void **state) {
  (void)state;
  const int blocks = 2, threads = 256, n = blocks * threads;
  float in[512], out[512];
  float *din = dev_alloc(sizeof in), *dout = dev_alloc(sizeof out);
  for (int dynamic = 0; dynamic < 2; dynamic++)
    for (int launch = 0; launch < 4; launch++)
      for (int barrier = 1; barrier >= 0; barrier--) {
        for (int i = 0; i < n; i++)
          in[i] = (float)uniform();
        CHECK(cudaMemcpy(din, in, sizeof in, cudaMemcpyHostToDevice));
        CHECK(simt_neighbours(din, dout, blocks, threads, barrier, dynamic));
        from_dev(out, dout, sizeof out);
        int wrong = 0;
        for (int b = 0; b < blocks; b++)
          for (int t = 0; t < threads; t++) {
            const float *s = in + b * threads;
            float want = s[(t + 1) % threads] + s[(t + threads - 1) % threads];
            wrong += !(out[b * threads + t] == want);
          }
        if (barrier)
          assert_int_equal(wrong, 0);
        else if (wrong < threads) /* almost every thread reads one unstored neighbour */
          fail_msg(
              "missing barrier went unnoticed: %d of %d wrong (dynamic %d, launch %d)",
              wrong, n, dynamic, launch);
      }
  CHECK(cudaFree(din));
  CHECK(cudaFree(dout));
}

/* The block's threads run in one order on a launch and in the reverse on the next. */
static void test_order_alternates(void **state) {
  (void)state;
  int order[2][64];
  int *counter = dev_alloc(sizeof(int)), *dorder = dev_alloc(64 * sizeof(int));
  for (int k = 0; k < 2; k++) {
    CHECK(cudaMemset(counter, 0, sizeof(int)));
    CHECK(simt_run_order(counter, dorder, 64));
    from_dev(order[k], dorder, sizeof order[k]);
  }
  for (int i = 0; i < 64; i++)
    assert_int_equal(order[0][i], order[1][63 - i]);
  assert_true(order[0][0] == 0 || order[0][0] == 63);
  CHECK(cudaFree(counter));
  CHECK(cudaFree(dorder));
}

static void test_host_dereference_faults(void **state) {
  (void)state;
  float one = 1.0f, back = 0;
  float *d = to_dev(&one, sizeof one);
  from_dev(&back, d, sizeof back); /* a valid device pointer */
  assert_float_equal(back, 1.0f, 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL); /* not cmocka's handler, which would report a failure */
    volatile float *p = d;
    float v = *p; /* as on a GPU, the host cannot read device memory */
    _exit(v == 1.0f ? 0 : 1);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGSEGV);
  CHECK(cudaFree(d));
}

static void test_atomics(void **state) {
  (void)state;
  const int blocks = 4, threads = 256, n = blocks * threads;
  atomic_results r = {0, -1, 1 << 30, 0, -1, 0, 0, 0.0f, 0.0};
  atomic_results *dr = to_dev(&r, sizeof r);
  int *dold = dev_alloc(n * sizeof(int)), old[1024];
  CHECK(simt_atomics(dr, dold, blocks, threads));
  from_dev(&r, dr, sizeof r);
  from_dev(old, dold, sizeof old);
  int want_max = -1, want_min = 1 << 30;
  for (int id = 0; id < n; id++) {
    want_max = (id * 7919) % 1000 > want_max ? (id * 7919) % 1000 : want_max;
    want_min =
        500 - (id * 104729) % 1000 < want_min ? 500 - (id * 104729) % 1000 : want_min;
  }
  assert_int_equal(r.add_i, n);
  assert_int_equal(r.add_u, 2 * n);
  assert_int_equal(r.add_ull, 3ull * n);
  assert_float_equal(r.add_f, 0.5 * n, 0);
  assert_float_equal(r.add_d, 0.25 * n, 0);
  assert_int_equal(r.max_i, want_max);
  assert_int_equal(r.min_i, want_min);
  assert_int_equal(r.cas_count, n);
  /* Exchanges chain: the values returned plus the last stored are -1 and every id. */
  char seen[1025] = {0};
  for (int id = 0; id < n; id++)
    seen[old[id] + 1]++;
  seen[r.exch_last + 1]++;
  for (int v = 0; v <= n; v++)
    assert_int_equal(seen[v], 1);
  CHECK(cudaFree(dr));
  CHECK(cudaFree(dold));
}

static void test_grid_stride(void **state) {
  (void)state;
  const int n = 10007;
  float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
  for (int i = 0; i < n; i++)
    x[i] = (float)i * 0.5f;
  float *dx = to_dev(x, n * sizeof *x), *dy = dev_alloc(n * sizeof *y);
  CHECK(simt_axpb(dx, dy, n, 3, 128)); /* 384 threads, 27 elements each */
  from_dev(y, dy, n * sizeof *y);
  for (int i = 0; i < n; i++)
    assert_float_equal(y[i], 2.0f * x[i] + 1.0f, 0);
  CHECK(cudaFree(dx));
  CHECK(cudaFree(dy));
  free(x);
  free(y);
}

static void test_dynamic_shared(void **state) {
  (void)state;
  const size_t sizes[] = {4, 4096, 48 * 1024, 100 * 1024};
  unsigned *out = malloc(100 * 1024), *first = malloc(100 * 1024);
  unsigned *dout = dev_alloc(100 * 1024), *dfirst = dev_alloc(100 * 1024);
  assert_int_equal(simt_dynamic_reverse(dout, dfirst, 25600, 256, 100 * 1024),
                   cudaErrorInvalidValue); /* over 48 KiB without opting in */
  CHECK(simt_raise_dynamic_limit(100 * 1024));
  for (int s = 0; s < 4; s++) {
    unsigned words = (unsigned)(sizes[s] / 4);
    CHECK(simt_dynamic_reverse(dout, dfirst, words, 256, sizes[s]));
    from_dev(out, dout, sizes[s]);
    from_dev(first, dfirst, sizes[s]);
    for (unsigned w = 0; w < words; w++) {
      assert_int_equal(out[w], words - 1 - w);
      assert_int_equal(first[w], 0xFFFFFFFFu); /* fresh shared memory reads as NaN */
    }
  }
  assert_int_equal(simt_raise_dynamic_limit(228 * 1024), cudaErrorInvalidValue);
  assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
  CHECK(cudaFree(dout));
  CHECK(cudaFree(dfirst));
  free(out);
  free(first);
}

static void test_launch_errors(void **state) {
  (void)state;
  int *flag = dev_alloc(sizeof(int)), got = -1;
  CHECK(cudaMemset(flag, 0, sizeof(int)));
  const struct {
    unsigned g[3], b[3];
    size_t smem;
    int want;
  } cases[] = {
      {{1, 1, 1}, {1025, 1, 1}, 0, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {32, 33, 1}, 0, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {1, 1, 65}, 0, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {2048, 1, 1}, 0, cudaErrorInvalidConfiguration},
      {{0, 1, 1}, {32, 1, 1}, 0, cudaErrorInvalidConfiguration},
      {{1, 0, 1}, {32, 1, 1}, 0, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {0, 1, 1}, 0, cudaErrorInvalidConfiguration},
      {{1, 65536, 1}, {32, 1, 1}, 0, cudaErrorInvalidConfiguration},
      {{1, 1, 1}, {32, 1, 1}, 48 * 1024 + 1, cudaErrorInvalidValue},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(simt_mark(flag, cases[i].g[0], cases[i].g[1], cases[i].g[2],
                               cases[i].b[0], cases[i].b[1], cases[i].b[2],
                               cases[i].smem),
                     cases[i].want);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* read and cleared */
    from_dev(&got, flag, sizeof got);
    assert_int_equal(got, 0); /* the kernel did not run */
  }
  /* cudaPeekAtLastError keeps the error, cudaGetLastError clears it */
  assert_int_equal(cudaSetDevice(3), cudaErrorInvalidDevice);
  assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidDevice);
  assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidDevice);
  assert_int_equal(cudaGetLastError(), cudaErrorInvalidDevice);
  assert_int_equal(cudaPeekAtLastError(), cudaSuccess);
  /* the largest legal shapes run */
  CHECK(simt_mark(flag, 1, 1, 1, 1024, 1, 1, 48 * 1024));
  CHECK(simt_mark(flag, 1, 1, 1, 16, 1, 64, 0));
  from_dev(&got, flag, sizeof got);
  assert_int_equal(got, 1);
  CHECK(cudaFree(flag));
}

static void test_votes(void **state) {
  (void)state;
  const int n = 96;
  unsigned ballot[96];
  int any[96], all[96], count[96];
  unsigned *db = dev_alloc(sizeof ballot);
  int *da = dev_alloc(sizeof any), *dl = dev_alloc(sizeof all),
      *dc = dev_alloc(sizeof count);
  CHECK(simt_votes(db, da, dl, dc, n));
  from_dev(ballot, db, sizeof ballot);
  from_dev(any, da, sizeof any);
  from_dev(all, dl, sizeof all);
  from_dev(count, dc, sizeof count);
  for (int t = 0; t < n; t++) {
    assert_int_equal(ballot[t], 0xAAAAAAAAu);
    assert_int_equal(any[t], 1);
    assert_int_equal(all[t], 0);
    assert_int_equal(count[t], 32); /* 0, 3, ..., 93 */
  }
  CHECK(cudaFree(db));
  CHECK(cudaFree(da));
  CHECK(cudaFree(dl));
  CHECK(cudaFree(dc));
}

static void test_deadlock_reported(void **state) {
  (void)state;
  int *out = dev_alloc(64 * sizeof(int));
  assert_int_equal(simt_divergent_barrier(out, 64), cudaErrorLaunchFailure);
  assert_int_equal(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
  assert_int_equal(cudaGetLastError(), cudaErrorLaunchFailure);
  CHECK(cudaDeviceSynchronize()); /* reported once; later launches run */
  int *flag = dev_alloc(sizeof(int)), got = 0;
  CHECK(simt_mark(flag, 1, 1, 1, 64, 1, 1, 0));
  from_dev(&got, flag, sizeof got);
  assert_int_equal(got, 1);
  CHECK(cudaFree(out));
  CHECK(cudaFree(flag));
}

static void test_memory(void **state) {
  (void)state;
  unsigned char bytes[1000];
  void *d = dev_alloc(sizeof bytes);
  from_dev(bytes, d, sizeof bytes);
  for (size_t i = 0; i < sizeof bytes; i++)
    assert_int_equal(bytes[i], 0xFF);
  float f;
  double g;
  memcpy(&f, bytes, sizeof f);
  memcpy(&g, bytes, sizeof g);
  assert_true(isnan(f) && isnan(g));
  /* copies in every direction, cudaMemcpyDefault included */
  unsigned char src[1000], back[1000];
  for (int i = 0; i < 1000; i++)
    src[i] = (unsigned char)(i * 7);
  void *d2 = dev_alloc(sizeof src);
  CHECK(cudaMemcpy(d, src, sizeof src, cudaMemcpyDefault));
  CHECK(cudaMemcpy(d2, d, sizeof src, cudaMemcpyDeviceToDevice));
  CHECK(cudaMemcpyAsync(back, d2, sizeof back, cudaMemcpyDefault, 0));
  assert_memory_equal(back, src, sizeof src);
  CHECK(cudaMemsetAsync(d2, 3, 10, 0));
  CHECK(cudaMemcpy(back, d2, 10, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 10; i++)
    assert_int_equal(back[i], 3);
  /* wrong directions, bounds and pointers fail as invalid values */
  assert_int_equal(cudaMemcpy(d, src, sizeof src, cudaMemcpyDeviceToHost),
                   cudaErrorInvalidValue);
  assert_int_equal(cudaMemcpy(d, src, sizeof src + 1, cudaMemcpyHostToDevice),
                   cudaErrorInvalidValue);
  assert_int_equal(cudaMemcpy(d, src, 1, (enum cudaMemcpyKind)7),
                   cudaErrorInvalidMemcpyDirection);
  assert_int_equal(cudaMemset(src, 0, 4), cudaErrorInvalidValue);
  assert_int_equal(cudaFree(src), cudaErrorInvalidValue);
  assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
  void *big = NULL;
  assert_int_equal(cudaMalloc(&big, (size_t)1 << 50), cudaErrorMemoryAllocation);
  assert_int_equal(cudaGetLastError(), cudaErrorMemoryAllocation);
  void *none = &big;
  CHECK(cudaMalloc(&none, 0));
  assert_null(none);
  CHECK(cudaFree(NULL));
  /* async allocation and the default pool */
  void *a = NULL;
  cudaMemPool_t pool;
  unsigned long long threshold = ~0ull, used = 0;
  CHECK(cudaDeviceGetDefaultMemPool(&pool, 0));
  CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  CHECK(cudaMallocAsync(&a, 4096, 0));
  CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
  assert_true(used >= 4096 + 2000);
  CHECK(cudaFreeAsync(a, 0));
  CHECK(cudaMemPoolTrimTo(pool, 0));
  CHECK(cudaFree(d));
  CHECK(cudaFree(d2));
}

/* A store past the end of an allocation: ASan stops it in the kernel; without ASan the
 * redzone check after the launch reports an illegal address. */
static void test_kernel_overrun_caught(void **state) {
  (void)state;
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    float *x = NULL;
    if (cudaMalloc((void **)&x, 10 * sizeof(float)) != cudaSuccess)
      _exit(2);
    int launch = simt_overrun(x, 10), sync = cudaDeviceSynchronize();
    _exit(launch == cudaErrorIllegalAddress && sync == cudaErrorIllegalAddress ? 3 : 0);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
#ifdef __SANITIZE_ADDRESS__
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 3);
#else
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 3);
#endif
}

static void test_streams_events(void **state) {
  (void)state;
  cudaStream_t s;
  cudaEvent_t a, b, quiet;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  CHECK(cudaEventCreateWithFlags(&quiet, cudaEventDisableTiming));
  float ms = -1;
  assert_int_equal(cudaEventElapsedTime(&ms, a, b), cudaErrorInvalidResourceHandle);
  assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  CHECK(cudaEventRecord(a, s));
  float *d = dev_alloc(4096 * sizeof(float));
  CHECK(cudaMemsetAsync(d, 0, 4096 * sizeof(float), s));
  CHECK(simt_axpb(d, d, 4096, 4, 256));
  CHECK(cudaEventRecord(b, s));
  CHECK(cudaEventRecord(quiet, s));
  CHECK(cudaStreamWaitEvent(0, b, 0));
  CHECK(cudaEventSynchronize(b));
  CHECK(cudaEventQuery(b));
  CHECK(cudaStreamQuery(s));
  CHECK(cudaEventElapsedTime(&ms, a, b));
  assert_true(ms >= 0);
  assert_int_equal(cudaEventElapsedTime(&ms, a, quiet), cudaErrorInvalidResourceHandle);
  CHECK(cudaStreamSynchronize(s));
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  CHECK(cudaEventDestroy(quiet));
  CHECK(cudaStreamDestroy(s));
  assert_int_equal(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);
  assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  CHECK(cudaFree(d));
}

/* Column-major C = alpha op(A) op(B) + beta C, naively. */
static double ref_at(const double *M, int ld, int trans, int r, int c) {
  return trans ? M[c + (size_t)r * ld] : M[r + (size_t)c * ld];
}

static void check_gemm(int dbl, int batched) {
  const int m = 5, n = 3, k = 4, pad = 2, batch = batched ? 3 : 1;
  cublasHandle_t h;
  assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  assert_int_equal(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH),
                   CUBLAS_STATUS_SUCCESS);
  cublasMath_t mode;
  assert_int_equal(cublasGetMathMode(h, &mode), CUBLAS_STATUS_SUCCESS);
  assert_int_equal(mode, CUBLAS_TF32_TENSOR_OP_MATH);
  assert_int_equal(cublasSetStream(h, 0), CUBLAS_STATUS_SUCCESS);
  size_t es = dbl ? sizeof(double) : sizeof(float);
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int fresh_c = 0; fresh_c < 2; fresh_c++) {
        int arows = ta ? k : m, acols = ta ? m : k, brows = tb ? n : k,
            bcols = tb ? k : n;
        int lda = arows + pad, ldb = brows + pad, ldc = m + pad;
        long long sa = (long long)lda * acols + 1, sb = (long long)ldb * bcols + 3,
                  sc = (long long)ldc * n + 2;
        size_t na = (size_t)sa * batch, nb = (size_t)sb * batch, nc = (size_t)sc * batch;
        double *A = malloc(na * sizeof(double)), *B = malloc(nb * sizeof(double));
        double *C = malloc(nc * sizeof(double)), *out = malloc(nc * sizeof(double));
        for (size_t i = 0; i < na; i++)
          A[i] = uniform();
        for (size_t i = 0; i < nb; i++)
          B[i] = uniform();
        for (size_t i = 0; i < nc; i++)
          C[i] = uniform();
        double alpha = 0.75, beta = fresh_c ? 0.0 : -0.5;
        void *hA = malloc(na * es), *hB = malloc(nb * es), *hC = malloc(nc * es);
        for (size_t i = 0; i < na; i++)
          dbl ? (((double *)hA)[i] = A[i]) : (((float *)hA)[i] = (float)A[i]);
        for (size_t i = 0; i < nb; i++)
          dbl ? (((double *)hB)[i] = B[i]) : (((float *)hB)[i] = (float)B[i]);
        for (size_t i = 0; i < nc; i++)
          dbl ? (((double *)hC)[i] = C[i]) : (((float *)hC)[i] = (float)C[i]);
        void *dA = to_dev(hA, na * es), *dB = to_dev(hB, nb * es);
        void *dC =
            fresh_c ? dev_alloc(nc * es) : to_dev(hC, nc * es); /* NaN when fresh */
        cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                          ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        float fa = (float)alpha, fb = (float)beta;
        cublasStatus_t st;
        if (dbl && batched)
          st = cublasDgemmStridedBatched(h, oa, ob, m, n, k, &alpha, dA, lda, sa, dB, ldb,
                                         sb, &beta, dC, ldc, sc, batch);
        else if (dbl)
          st = cublasDgemm(h, oa, ob, m, n, k, &alpha, dA, lda, dB, ldb, &beta, dC, ldc);
        else if (batched)
          st = cublasSgemmStridedBatched(h, oa, ob, m, n, k, &fa, dA, lda, sa, dB, ldb,
                                         sb, &fb, dC, ldc, sc, batch);
        else
          st = cublasSgemm(h, oa, ob, m, n, k, &fa, dA, lda, dB, ldb, &fb, dC, ldc);
        assert_int_equal(st, CUBLAS_STATUS_SUCCESS);
        CHECK(cudaDeviceSynchronize());
        from_dev(hC, dC, nc * es);
        for (size_t i = 0; i < nc; i++)
          out[i] = dbl ? ((double *)hC)[i] : ((float *)hC)[i];
        for (int bi = 0; bi < batch; bi++)
          for (int r = 0; r < m; r++)
            for (int c = 0; c < n; c++) {
              double want = 0;
              for (int p = 0; p < k; p++)
                want += ref_at(A + bi * sa, lda, ta, r, p) *
                        ref_at(B + bi * sb, ldb, tb, p, c);
              size_t at = (size_t)(bi * sc) + r + (size_t)c * ldc;
              want = alpha * want + beta * (fresh_c ? 0.0 : C[at]);
              assert_float_equal(out[at], want, dbl ? 1e-12 : 1e-5);
            }
        /* the padding rows of C are left alone */
        if (!fresh_c)
          for (int c = 0; c < n; c++)
            assert_float_equal(
                out[m + (size_t)c * ldc],
                dbl ? C[m + (size_t)c * ldc] : (float)C[m + (size_t)c * ldc], 0);
        CHECK(cudaFree(dA));
        CHECK(cudaFree(dB));
        CHECK(cudaFree(dC));
        free(A), free(B), free(C), free(out), free(hA), free(hB), free(hC);
      }
  assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

static void test_gemm(void **state) {
  (void)state;
  for (int dbl = 0; dbl < 2; dbl++)
    for (int batched = 0; batched < 2; batched++)
      check_gemm(dbl, batched);
}

static void test_gemm_errors(void **state) {
  (void)state;
  cublasHandle_t h;
  assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  float one = 1, *d = dev_alloc(64 * sizeof(float));
  /* lda below the rows of op(A), a negative size, an unknown operation */
  assert_int_equal(
      cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 2, 3, &one, d, 3, d, 3, &one, d, 4),
      CUBLAS_STATUS_INVALID_VALUE);
  assert_int_equal(
      cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, -1, 2, 3, &one, d, 1, d, 3, &one, d, 1),
      CUBLAS_STATUS_INVALID_VALUE);
  assert_int_equal(cublasSgemm(h, (cublasOperation_t)5, CUBLAS_OP_N, 1, 1, 1, &one, d, 1,
                               d, 1, &one, d, 1),
                   CUBLAS_STATUS_INVALID_VALUE);
  assert_int_equal(
      cublasSgemm(NULL, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, d, 1, d, 1, &one, d, 1),
      CUBLAS_STATUS_NOT_INITIALIZED);
  /* an operand past its allocation is an illegal address at the next synchronisation */
  assert_int_equal(
      cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 9, 9, 9, &one, d, 9, d, 9, &one, d, 9),
      CUBLAS_STATUS_SUCCESS);
  assert_int_equal(cudaDeviceSynchronize(), cudaErrorIllegalAddress);
  assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress);
  assert_string_equal(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE),
                      "CUBLAS_STATUS_INVALID_VALUE");
  CHECK(cudaFree(d));
  assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device),
      cmocka_unit_test(test_block_reduction),
      cmocka_unit_test(test_warp_shuffles),
      cmocka_unit_test(test_missing_barrier),
      cmocka_unit_test(test_order_alternates),
      cmocka_unit_test(test_host_dereference_faults),
      cmocka_unit_test(test_atomics),
      cmocka_unit_test(test_grid_stride),
      cmocka_unit_test(test_dynamic_shared),
      cmocka_unit_test(test_launch_errors),
      cmocka_unit_test(test_votes),
      cmocka_unit_test(test_deadlock_reported),
      cmocka_unit_test(test_memory),
      cmocka_unit_test(test_kernel_overrun_caught),
      cmocka_unit_test(test_streams_events),
      cmocka_unit_test(test_gemm),
      cmocka_unit_test(test_gemm_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
