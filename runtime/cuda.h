/* The CUDA runtime's internal interface (runtime/cuda.c), plain C, shared by the C
 * files of the library and by the extern "C" launchers of the .cu files, which must
 * not see runtime/internal.h (_Atomic) nor the ops' headers (_Generic).
 *
 * One stream and one cuBLAS handle per device carry every kernel and copy, so work is
 * ordered without events, and memory freed into the cache is reusable at once by the
 * next launch (the same stream runs after whatever still reads it). */
#ifndef TG_RUNTIME_CUDA_H
#define TG_RUNTIME_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Declared here too so .cu files can report errors without runtime/internal.h. */
int tg__error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Status checks are expressions: each call runs once, nothing aborts. 0, or -1 with
 * "CUDA error: <why> in <call> at <file>:<line> (cuda:N)"; a sticky error (an illegal
 * address, a kernel fault) says that the context is lost. */
#define TG_CUDA(call) tg__cuda_status((int)(call), #call, __FILE__, __LINE__)
#define TG_CUBLAS(call) tg__cublas_status((int)(call), #call, __FILE__, __LINE__)
int tg__cuda_status(int err, const char *call, const char *file, int line);
int tg__cublas_status(int status, const char *call, const char *file, int line);
/* After a launch: the launch's own status, and with TG_CUDA_LAUNCH_BLOCKING=1 a
 * synchronisation, so a fault is reported by the kernel that caused it. */
#define TG_CUDA_LAUNCHED(kernel) tg__cuda_launched(#kernel, __FILE__, __LINE__)
int tg__cuda_launched(const char *kernel, const char *file, int line);

/* Makes `device` current for this thread and returns its stream (a cudaStream_t), or
 * NULL with an error. */
void *tg__cuda_stream(int device);
/* Waits for the device's stream; then the first failed deferred check since the last
 * wait (tg__cuda_check_targets) is this call's error (-1). Every call that waits for
 * the device (copies to the host, tg_item, tg_cuda_synchronize, TG_CUDA_LAUNCH_BLOCKING)
 * goes through here. */
int tg__cuda_wait(int device);
/* How many times the host has waited for a device so far (all devices): what the tests
 * count to show that a training step does not wait. */
int64_t tg__cuda_waits(void);
/* A check of class targets that kernels make without the host waiting for them: a slot
 * of two words on the device, reset here (in stream order): [0] the smallest failing
 * position (kernels atomicMin into it; all bits set: none), [1] the target found there
 * (written after, in stream order). The next tg__cuda_wait reports a failure as "op:
 * Target v is out of bounds ..." naming the classes and ignore_index, as the CPU does
 * at once. This is how a training step's losses avoid waiting for the device (PyTorch
 * reports such targets with device-side asserts, later too). NULL with an error. */
unsigned long long *tg__cuda_check_targets(int device, const char *op, int64_t classes,
                                           int64_t ignore);
/* The device's cuBLAS handle (a cublasHandle_t) bound to its stream, TF32 off. */
void *tg__cuda_cublas(int device);
/* Multiprocessors of the device, and the opt-in shared memory limit per block. */
int tg__cuda_sm_count(int device);
size_t tg__cuda_smem_optin(int device);

/* Device memory through the caching allocator: sizes rounded up to a class, freed
 * blocks kept per device and class and reused (stream-ordered: one stream per
 * device). On out-of-memory the device's cache is emptied and the request retried
 * once; then the error names the op being dispatched, the bytes asked for and free.
 * With TG_CUDA_FILL_NAN=1 every block handed out is filled with all-one bytes (NaN
 * in float32 and float64), so elements a kernel fails to write fail the tests. */
void *tg__cuda_malloc(size_t bytes, int device);
void tg__cuda_free(void *p, size_t bytes, int device);
/* Returns every cached block of every device to the driver. */
void tg__cuda_empty_cache(void);
/* Bytes handed out and held (handed out + cached) on a device, as torch.cuda's
 * memory_allocated / memory_reserved. */
int64_t tg__cuda_allocated(int device);
int64_t tg__cuda_reserved(int device);

/* Row-major C = op(A)·op(B) + beta·C (op(X) = Xᵀ when tX, ldc = N, beta 0 or 1) for
 * `batch` products, matrix i at A + i*sa, B + i*sb, C + i*sc (elements), through the
 * device's cuBLAS handle (strided-batched when batch > 1); dtype a tg_dtype. K == 0
 * leaves beta·C (C contiguous over the batch). Matmul's and the convolutions' GEMMs. */
int tg__cuda_gemm(int dtype, int device, bool ta, bool tb, int64_t M, int64_t N,
                  int64_t K, const void *A, int64_t lda, int64_t sa, const void *B,
                  int64_t ldb, int64_t sb, double beta, void *C, int64_t sc,
                  int64_t batch);

/* Kernels of the runtime (runtime/tensor.cu) behind the device-independent helpers
 * of runtime/tensor.c and broadcast.c; dtype is a tg_dtype. Each returns 0 or -1. */
int tg__cuda_fill(void *p, int dtype, int64_t n, double value, int device);
int tg__cuda_cast(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n,
                  int device);
/* dst = alpha * dst + beta * src, both of dtype. */
int tg__cuda_axpby(void *dst, double alpha, const void *src, double beta, int dtype,
                   int64_t n, int device);
/* *out = sum of squares (float64 accumulation); waits for the result. */
int tg__cuda_sumsq(const void *p, int dtype, int64_t n, int device, double *out);
/* *index = first element that is NaN or infinite, -1 when none; waits. */
int tg__cuda_first_nonfinite(const void *p, int dtype, int64_t n, int device,
                             int64_t *index);

/* dst[dst_off + sum_d i_d * dst_strides[d]] = src[src_off + sum_d i_d * src_strides[d]]
 * over every index i of shape (nd dims, n elements), elements of elem (4 or 8) bytes:
 * permutes, narrows, concatenations and scatters. */
int tg__cuda_strided_copy(void *dst, const int64_t *dst_strides, int64_t dst_off,
                          const void *src, const int64_t *src_strides, int64_t src_off,
                          const int64_t *shape, int nd, int64_t n, size_t elem,
                          int device);

/* Per-element formulas that the CPU and CUDA kernels share are static inline
 * functions marked TG_HOST_DEVICE: __host__ __device__ under nvcc, nothing for the C
 * compiler, so the CPU tests exercise the same code. */
#ifdef __CUDACC__
#define TG_HOST_DEVICE __host__ __device__
#else
#define TG_HOST_DEVICE
#endif

/* Launch geometry helper: blocks of `threads` covering n elements, capped. */
static inline unsigned tg__cuda_blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 1 ? 1 : b > 65535 * 32 ? 65535 * 32 : b);
}

#ifdef __cplusplus
}
#endif

#endif
