/* CUDA runtime: devices, one stream and one cuBLAS handle per device, the caching
 * allocator, copies and status checks (runtime/cuda.h). Plain C over cudart's C API;
 * without CUDA every request fails with a message saying so (stubs at the end). */
#include "runtime/cuda.h"
#include "runtime/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TG_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

enum { MAX_DEVICES = 16 };

typedef struct {
  void *ptr;
  size_t size;
} block;

/* A device's state. The cache is a list of free blocks, each of a size class; a
 * request takes a free block of exactly its class. */
/* What a deferred check of class targets (tg__cuda_check_targets) reports. */
enum { CHECK_SLOTS = 64 };
typedef struct {
  char op[64];
  int64_t classes, ignore;
} check_info;

typedef struct {
  bool ready;
  cudaStream_t stream;
  cublasHandle_t blas;
  int sms;
  size_t smem_optin;
  block *free;
  int n_free, cap_free;
  int64_t allocated, reserved;
  unsigned long long *checks; /* 2 words a slot on the device, CHECK_SLOTS slots */
  check_info info[CHECK_SLOTS];
  int n_checks; /* slots handed out since the last wait */
} device_state;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static device_state devices[MAX_DEVICES];
static _Atomic int64_t waits; /* tg__cuda_waits */

int64_t tg__cuda_waits(void) { return waits; }

/* ------------------------------------------------------------- status -- */

static int current_device(void) {
  int d = -1;
  if (cudaGetDevice(&d) != cudaSuccess)
    d = -1;
  return d;
}

int tg__cuda_status(int err, const char *call, const char *file, int line) {
  if (err == (int)cudaSuccess)
    return 0;
  /* Reading the last error clears it unless it is sticky: a sticky error (illegal
   * address, kernel fault) stays, and every later call on the device fails. */
  cudaGetLastError();
  bool sticky = cudaGetLastError() != cudaSuccess;
  return tg__error("CUDA error: %s (%s) in %s at %s:%d (cuda:%d)%s",
                   cudaGetErrorString((cudaError_t)err),
                   cudaGetErrorName((cudaError_t)err), call, file, line, current_device(),
                   sticky ? "; this error is sticky: the CUDA context is lost and "
                            "the process must restart to use this GPU again"
                          : "");
}

int tg__cublas_status(int status, const char *call, const char *file, int line) {
  if (status == (int)CUBLAS_STATUS_SUCCESS)
    return 0;
  return tg__error("CUDA error: %s (%s) in %s at %s:%d (cuda:%d)",
                   cublasGetStatusString((cublasStatus_t)status),
                   cublasGetStatusName((cublasStatus_t)status), call, file, line,
                   current_device());
}

static bool env_flag(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

/* Read once: environment variables are set before the first launch. */
static bool launch_blocking(void) {
  static int flag = -1;
  if (flag < 0)
    flag = env_flag("TG_CUDA_LAUNCH_BLOCKING");
  return flag;
}

static bool fill_nan(void) {
  static int flag = -1;
  if (flag < 0)
    flag = env_flag("TG_CUDA_FILL_NAN");
  return flag;
}

/* After a wait on device d's stream: the first failed deferred check since the last
 * wait becomes this call's error (-1); all of them are cleared either way. */
static int report_checks(int d) {
  device_state *s = &devices[d];
  pthread_mutex_lock(&lock);
  const int n = s->n_checks;
  check_info info[CHECK_SLOTS];
  memcpy(info, s->info, (size_t)n * sizeof *info);
  s->n_checks = 0;
  pthread_mutex_unlock(&lock);
  if (n == 0)
    return 0;
  unsigned long long h[2 * CHECK_SLOTS];
  waits++;
  if (TG_CUDA(cudaMemcpyAsync(h, s->checks, (size_t)(2 * n) * sizeof *h,
                              cudaMemcpyDeviceToHost, s->stream)) < 0 ||
      TG_CUDA(cudaStreamSynchronize(s->stream)) < 0)
    return -1;
  for (int k = 0; k < n; k++)
    if (h[2 * k] != ~0ull)
      return tg__error("%s: Target %lld is out of bounds: expected a class index in "
                       "[0, %lld) or ignore_index (%lld), found at target element %lld "
                       "(checked on cuda:%d without waiting; reported by the next call "
                       "that waited for the device)",
                       info[k].op, (long long)h[2 * k + 1], (long long)info[k].classes,
                       (long long)info[k].ignore, (long long)h[2 * k], d);
  return 0;
}

int tg__cuda_launched(const char *kernel, const char *file, int line) {
  if (tg__cuda_status(cudaGetLastError(), kernel, file, line) < 0)
    return -1;
  if (!launch_blocking())
    return 0;
  int d = current_device();
  if (d < 0 || d >= MAX_DEVICES || !devices[d].ready)
    return 0;
  waits++;
  if (tg__cuda_status(cudaStreamSynchronize(devices[d].stream), kernel, file, line) < 0)
    return -1;
  return report_checks(d);
}

/* ------------------------------------------------------------ devices -- */

/* Counted once: cudaGetDeviceCount is not free and every device tensor asks. */
static _Atomic int count_cache = -1;

int tg_cuda_device_count(void) {
  if (count_cache < 0) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError(); /* clear the "no device" status */
      n = 0;
    }
    count_cache = n < MAX_DEVICES ? n : MAX_DEVICES;
  }
  return count_cache;
}

/* Creates the stream and reads the properties on first use; lock held. */
static int init_device(int d) {
  device_state *s = &devices[d];
  if (s->ready)
    return 0;
  struct cudaDeviceProp prop;
  if (TG_CUDA(cudaGetDeviceProperties(&prop, d)) < 0 ||
      TG_CUDA(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking)) < 0)
    return -1;
  s->sms = prop.multiProcessorCount;
  s->smem_optin = prop.sharedMemPerBlockOptin;
  s->ready = true;
  return 0;
}

static device_state *get_device(int d) {
  int n = tg_cuda_device_count();
  if (d < 0 || d >= n) {
    tg__error("cuda:%d is not available (%d CUDA device%s found)", d, n,
              n == 1 ? "" : "s");
    return NULL;
  }
  if (TG_CUDA(cudaSetDevice(d)) < 0)
    return NULL;
  pthread_mutex_lock(&lock);
  int rc = init_device(d);
  pthread_mutex_unlock(&lock);
  return rc < 0 ? NULL : &devices[d];
}

void *tg__cuda_stream(int d) {
  device_state *s = get_device(d);
  return s ? (void *)s->stream : NULL;
}

void *tg__cuda_cublas(int d) {
  device_state *s = get_device(d);
  if (!s)
    return NULL;
  pthread_mutex_lock(&lock);
  int rc = 0;
  if (!s->blas) {
    /* Default math: no TF32 tensor-core rounding, so float32 products match the
     * CPU's to float32 accuracy. */
    rc = TG_CUBLAS(cublasCreate(&s->blas));
    if (rc == 0 && (TG_CUBLAS(cublasSetStream(s->blas, s->stream)) < 0 ||
                    TG_CUBLAS(cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH)) < 0)) {
      cublasDestroy(s->blas);
      s->blas = NULL;
      rc = -1;
    }
  }
  pthread_mutex_unlock(&lock);
  return rc < 0 ? NULL : (void *)s->blas;
}

/* Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: the same buffers with
 * the operands swapped. */
int tg__cuda_gemm(int dtype, int device, bool ta, bool tb, int64_t M, int64_t N,
                  int64_t K, const void *A, int64_t lda, int64_t sa, const void *B,
                  int64_t ldb, int64_t sb, double beta, void *C, int64_t sc,
                  int64_t batch) {
  cublasHandle_t h = tg__cuda_cublas(device);
  if (!h)
    return -1;
  if (M == 0 || N == 0 || batch == 0)
    return 0;
  if (K == 0) /* no products: C = beta * C */
    return beta != 0 ? 0 : tg__cuda_fill(C, dtype, sc * (batch - 1) + M * N, 0, device);
  const cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = (int)N, n = (int)M, k = (int)K;
  if (dtype == TG_F32) {
    const float one = 1, bf = (float)beta;
    if (batch == 1)
      return TG_CUBLAS(cublasSgemm(h, ob, oa, m, n, k, &one, B, (int)ldb, A, (int)lda,
                                   &bf, C, (int)N));
    return TG_CUBLAS(cublasSgemmStridedBatched(h, ob, oa, m, n, k, &one, B, (int)ldb, sb,
                                               A, (int)lda, sa, &bf, C, (int)N, sc,
                                               (int)batch));
  }
  const double one = 1;
  if (batch == 1)
    return TG_CUBLAS(cublasDgemm(h, ob, oa, m, n, k, &one, B, (int)ldb, A, (int)lda,
                                 &beta, C, (int)N));
  return TG_CUBLAS(cublasDgemmStridedBatched(h, ob, oa, m, n, k, &one, B, (int)ldb, sb, A,
                                             (int)lda, sa, &beta, C, (int)N, sc,
                                             (int)batch));
}

int tg__cuda_sm_count(int d) {
  device_state *s = get_device(d);
  return s ? s->sms : 1;
}

size_t tg__cuda_smem_optin(int d) {
  device_state *s = get_device(d);
  return s ? s->smem_optin : 48 << 10;
}

int tg_cuda_synchronize(void) {
  int n = tg_cuda_device_count();
  for (int d = 0; d < n; d++)
    if (devices[d].ready && tg__cuda_wait(d) < 0)
      return -1;
  return 0;
}

int tg__cuda_wait(int d) {
  if (!get_device(d))
    return -1;
  waits++;
  if (TG_CUDA(cudaStreamSynchronize(devices[d].stream)) < 0)
    return -1;
  return report_checks(d);
}

unsigned long long *tg__cuda_check_targets(int d, const char *op, int64_t classes,
                                           int64_t ignore) {
  device_state *s = get_device(d);
  if (!s)
    return NULL;
  pthread_mutex_lock(&lock);
  bool full = s->n_checks == CHECK_SLOTS;
  pthread_mutex_unlock(&lock);
  if (full && tg__cuda_wait(d) < 0) /* every slot taken since the last wait */
    return NULL;
  pthread_mutex_lock(&lock);
  int rc = 0;
  if (!s->checks) /* cudaMalloc, not the cache: not counted as the program's memory */
    rc = TG_CUDA(cudaMalloc((void **)&s->checks, CHECK_SLOTS * 2 * sizeof *s->checks));
  unsigned long long *slot = NULL;
  if (rc == 0) {
    const int k = s->n_checks++;
    slot = s->checks + 2 * k;
    check_info *in = &s->info[k];
    snprintf(in->op, sizeof in->op, "%s", op);
    in->classes = classes;
    in->ignore = ignore;
    /* all bits set: no failed position */
    if (TG_CUDA(cudaMemsetAsync(slot, 0xff, 2 * sizeof *slot, s->stream)) < 0) {
      s->n_checks--;
      slot = NULL;
    }
  }
  pthread_mutex_unlock(&lock);
  return slot;
}

/* ------------------------------------------------------------- memory -- */

/* Size classes as PyTorch's caching allocator with four divisions per power of two:
 * multiples of 512 bytes up to 1 MiB, then steps of a quarter of the power of two
 * below the size (at most 25% slack), so a training step's shapes map to a few
 * classes that are reused every iteration. */
static size_t size_class(size_t bytes) {
  if (bytes <= (1 << 20))
    return bytes ? (bytes + 511) / 512 * 512 : 512;
  size_t p = (size_t)1 << (63 - __builtin_clzll((unsigned long long)bytes));
  size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

/* Frees device d's cached blocks; lock held. */
static void release_cached(int d) {
  device_state *s = &devices[d];
  if (!s->n_free)
    return;
  int prev = current_device();
  cudaSetDevice(d);
  for (int i = 0; i < s->n_free; i++) {
    cudaFree(s->free[i].ptr);
    s->reserved -= (int64_t)s->free[i].size;
  }
  s->n_free = 0;
  if (prev >= 0)
    cudaSetDevice(prev);
}

void tg__cuda_empty_cache(void) {
  pthread_mutex_lock(&lock);
  for (int d = 0; d < MAX_DEVICES; d++)
    release_cached(d);
  pthread_mutex_unlock(&lock);
}

static void *take_cached(device_state *s, size_t size) {
  for (int i = s->n_free - 1; i >= 0; i--)
    if (s->free[i].size == size) {
      void *p = s->free[i].ptr;
      s->free[i] = s->free[--s->n_free];
      return p;
    }
  return NULL;
}

void *tg__cuda_malloc(size_t bytes, int d) {
  device_state *s = get_device(d);
  if (!s)
    return NULL;
  size_t size = size_class(bytes);
  pthread_mutex_lock(&lock);
  void *p = take_cached(s, size);
  if (!p) {
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) { /* as PyTorch: empty the cache, retry once */
      cudaGetLastError();
      release_cached(d);
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      pthread_mutex_unlock(&lock);
      tg__error("%s: CUDA out of memory: tried to allocate %zu bytes on cuda:%d, which "
                "has %zu bytes free of %zu (%lld allocated by tapegrad): %s",
                tg__running_op() ? tg__running_op() : "tg_empty", bytes, d, free_b,
                total_b, (long long)s->allocated, cudaGetErrorString(e));
      return NULL;
    }
    s->reserved += (int64_t)size;
  }
  s->allocated += (int64_t)size;
  pthread_mutex_unlock(&lock);
  if (fill_nan() &&
      TG_CUDA(cudaMemsetAsync(p, 0xff, size, (cudaStream_t)s->stream)) < 0) {
    tg__cuda_free(p, bytes, d);
    return NULL;
  }
  return p;
}

void tg__cuda_free(void *p, size_t bytes, int d) {
  if (!p || d < 0 || d >= MAX_DEVICES)
    return;
  device_state *s = &devices[d];
  size_t size = size_class(bytes);
  pthread_mutex_lock(&lock);
  s->allocated -= (int64_t)size;
  if (s->n_free == s->cap_free) {
    int cap = s->cap_free ? 2 * s->cap_free : 64;
    block *f = realloc(s->free, (size_t)cap * sizeof *f);
    if (!f) { /* cannot cache it: give it back */
      cudaSetDevice(d);
      cudaFree(p);
      s->reserved -= (int64_t)size;
      pthread_mutex_unlock(&lock);
      return;
    }
    s->free = f;
    s->cap_free = cap;
  }
  s->free[s->n_free++] = (block){p, size};
  pthread_mutex_unlock(&lock);
}

int64_t tg__cuda_allocated(int d) {
  return d >= 0 && d < MAX_DEVICES ? devices[d].allocated : 0;
}
int64_t tg__cuda_reserved(int d) {
  return d >= 0 && d < MAX_DEVICES ? devices[d].reserved : 0;
}

int tg__cuda_memcpy(void *dst, tg_device dd, const void *src, tg_device sd, size_t n) {
  if (dd.type == TG_DEVICE_CPU && sd.type == TG_DEVICE_CPU) {
    memcpy(dst, src, n);
    return 0;
  }
  int d = dd.type == TG_DEVICE_CUDA ? dd.index : sd.index;
  cudaStream_t st = tg__cuda_stream(d);
  if (!st)
    return -1;
  enum cudaMemcpyKind kind = dd.type == TG_DEVICE_CPU   ? cudaMemcpyDeviceToHost
                             : sd.type == TG_DEVICE_CPU ? cudaMemcpyHostToDevice
                                                        : cudaMemcpyDeviceToDevice;
  if (TG_CUDA(cudaMemcpyAsync(dst, src, n, kind, st)) < 0)
    return -1;
  /* The host side is the caller's memory: done before returning. */
  if (kind != cudaMemcpyDeviceToDevice && tg__cuda_wait(d) < 0)
    return -1;
  return 0;
}

#else /* -------------------------------------------------- without CUDA -- */

int tg_cuda_device_count(void) { return 0; }
int tg_cuda_synchronize(void) { return 0; }
int tg__cuda_status(int err, const char *call, const char *file, int line) {
  (void)err;
  return tg__error("CUDA error: tapegrad was built without CUDA in %s at %s:%d", call,
                   file, line);
}
int tg__cublas_status(int status, const char *call, const char *file, int line) {
  return tg__cuda_status(status, call, file, line);
}
int tg__cuda_launched(const char *kernel, const char *file, int line) {
  return tg__cuda_status(1, kernel, file, line);
}
void *tg__cuda_stream(int d) {
  tg__error("cuda:%d is not available: tapegrad was built without CUDA", d);
  return NULL;
}
void *tg__cuda_cublas(int d) { return tg__cuda_stream(d); }
int tg__cuda_gemm(int dtype, int device, bool ta, bool tb, int64_t M, int64_t N,
                  int64_t K, const void *A, int64_t lda, int64_t sa, const void *B,
                  int64_t ldb, int64_t sb, double beta, void *C, int64_t sc,
                  int64_t batch) {
  (void)dtype, (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)A, (void)lda;
  (void)sa, (void)B, (void)ldb, (void)sb, (void)beta, (void)C, (void)sc, (void)batch;
  return !tg__cuda_stream(device) ? -1 : 0;
}
int tg__cuda_wait(int d) { return tg__cuda_stream(d) ? 0 : -1; }
int64_t tg__cuda_waits(void) { return 0; }
unsigned long long *tg__cuda_check_targets(int d, const char *op, int64_t classes,
                                           int64_t ignore) {
  (void)op;
  (void)classes;
  (void)ignore;
  return tg__cuda_stream(d);
}
int tg__cuda_sm_count(int d) {
  (void)d;
  return 1;
}
size_t tg__cuda_smem_optin(int d) {
  (void)d;
  return 0;
}
void *tg__cuda_malloc(size_t bytes, int d) {
  tg__error("%s: cannot allocate %zu bytes on cuda:%d: tapegrad was built without CUDA",
            tg__running_op() ? tg__running_op() : "tg_empty", bytes, d);
  return NULL;
}
void tg__cuda_free(void *p, size_t bytes, int d) {
  (void)p;
  (void)bytes;
  (void)d;
}
void tg__cuda_empty_cache(void) {}
int64_t tg__cuda_allocated(int d) {
  (void)d;
  return 0;
}
int64_t tg__cuda_reserved(int d) {
  (void)d;
  return 0;
}
int tg__cuda_memcpy(void *dst, tg_device dd, const void *src, tg_device sd, size_t n) {
  if (dd.type == TG_DEVICE_CPU && sd.type == TG_DEVICE_CPU) {
    memcpy(dst, src, n);
    return 0;
  }
  return tg__error("cannot copy to or from cuda: tapegrad was built without CUDA");
}
int tg__cuda_fill(void *p, int dtype, int64_t n, double value, int device) {
  (void)p, (void)dtype, (void)n, (void)value;
  return !tg__cuda_stream(device) ? -1 : 0;
}
int tg__cuda_cast(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n,
                  int device) {
  (void)dst, (void)dst_dtype, (void)src, (void)src_dtype, (void)n;
  return !tg__cuda_stream(device) ? -1 : 0;
}
int tg__cuda_axpby(void *dst, double alpha, const void *src, double beta, int dtype,
                   int64_t n, int device) {
  (void)dst, (void)alpha, (void)src, (void)beta, (void)dtype, (void)n;
  return !tg__cuda_stream(device) ? -1 : 0;
}
int tg__cuda_sumsq(const void *p, int dtype, int64_t n, int device, double *out) {
  (void)p, (void)dtype, (void)n, (void)out;
  return !tg__cuda_stream(device) ? -1 : 0;
}
int tg__cuda_first_nonfinite(const void *p, int dtype, int64_t n, int device,
                             int64_t *index) {
  (void)p, (void)dtype, (void)n, (void)index;
  return !tg__cuda_stream(device) ? -1 : 0;
}
int tg__cuda_strided_copy(void *dst, const int64_t *dst_strides, int64_t dst_off,
                          const void *src, const int64_t *src_strides, int64_t src_off,
                          const int64_t *shape, int nd, int64_t n, size_t elem,
                          int device) {
  (void)dst, (void)dst_strides, (void)dst_off, (void)src, (void)src_strides;
  (void)src_off, (void)shape, (void)nd, (void)n, (void)elem;
  return !tg__cuda_stream(device) ? -1 : 0;
}

#endif

int64_t tg_cuda_memory_allocated(int device) { return tg__cuda_allocated(device); }
int64_t tg_cuda_memory_reserved(int device) { return tg__cuda_reserved(device); }
