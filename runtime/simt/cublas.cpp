/* Host stand-in for cuBLAS (-Dcuda=host): the GEMMs run through OpenBLAS's cblas in
 * column-major order, with cuBLAS's argument checks. Operands must lie inside device
 * allocations; one that does not is what a GPU reports as an illegal address when the
 * kernel runs, so it is reported the same way (at the next synchronising call, with a
 * line on stderr) and nothing is computed. */
#include "runtime/simt/internal.h"

#include <cublas_v2.h>

#include <cblas.h>

#include <cstdio>

struct cublasContext {
  cudaStream_t stream;
  cublasMath_t math;
  cublasPointerMode_t pointer_mode;
};

using namespace tg_simt;

namespace {

bool valid_op(cublasOperation_t op) {
  return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

CBLAS_TRANSPOSE to_cblas(cublasOperation_t op) {
  return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; /* real types: C is T */
}

/* Whether the columns of an rows x cols column-major operand with leading dimension ld,
 * batch times stride elements apart, lie inside one device allocation. */
template <class T>
bool operand_ok(const T *p, int rows, int cols, int ld, long long stride, int batch) {
  long long extent = 1ll * (cols - 1) * ld + rows; /* elements of one matrix */
  long long lo = 0, hi = extent;
  long long span = 1ll * (batch - 1) * stride;
  if (span < 0)
    lo = span;
  else
    hi += span;
  const T *first = p + lo;
  return p && is_device(first) &&
         in_allocation(first, static_cast<size_t>(hi - lo) * sizeof(T));
}

template <class T>
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                    int n, int k, const T *alpha, const T *A, int lda, long long sa,
                    const T *B, int ldb, long long sb, const T *beta, T *C, int ldc,
                    long long sc, int batch, const char *name) {
  if (!h)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  int arows = ta == CUBLAS_OP_N ? m : k, acols = ta == CUBLAS_OP_N ? k : m;
  int brows = tb == CUBLAS_OP_N ? k : n, bcols = tb == CUBLAS_OP_N ? n : k;
  if (!valid_op(ta) || !valid_op(tb) || m < 0 || n < 0 || k < 0 || batch < 0 ||
      lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) ||
      ldc < (m > 1 ? m : 1) || !alpha || !beta)
    return CUBLAS_STATUS_INVALID_VALUE;
  auto lock = hold();
  if (!valid_stream(h->stream))
    return CUBLAS_STATUS_EXECUTION_FAILED;
  if (m == 0 || n == 0 || batch == 0)
    return CUBLAS_STATUS_SUCCESS;
  bool device_scalars = h->pointer_mode == CUBLAS_POINTER_MODE_DEVICE;
  bool reads_ab = k > 0;
  if (!operand_ok(C, m, n, ldc, sc, batch) ||
      (reads_ab && (!operand_ok(A, arows, acols, lda, sa, batch) ||
                    !operand_ok(B, brows, bcols, ldb, sb, batch))) ||
      (device_scalars &&
       (!in_allocation(alpha, sizeof(T)) || !in_allocation(beta, sizeof(T))))) {
    fprintf(
        stderr,
        "tg_simt: %s(m=%d, n=%d, k=%d, lda=%d, ldb=%d, ldc=%d, batch=%d) would access "
        "memory outside a device allocation\n",
        name, m, n, k, lda, ldb, ldc, batch);
    fail_async(cudaErrorIllegalAddress);
    return CUBLAS_STATUS_SUCCESS;
  }
  T a = T(0), b = T(0);
  if (!device_scalars) { /* host memory: read before the arena opens, as cuBLAS does */
    a = *alpha;
    b = *beta;
  }
  device_access open; /* OpenBLAS's threads touch the operands: open them first */
  for (int i = 0; i < batch; i++) {
    if (reads_ab) {
      open.open(A + i * sa, (static_cast<size_t>(acols - 1) * lda + arows) * sizeof(T));
      open.open(B + i * sb, (static_cast<size_t>(bcols - 1) * ldb + brows) * sizeof(T));
    }
    open.open(C + i * sc, (static_cast<size_t>(n - 1) * ldc + m) * sizeof(T));
  }
  if (device_scalars) {
    open.open(alpha, sizeof(T));
    open.open(beta, sizeof(T));
    a = *alpha;
    b = *beta;
  }
  for (int i = 0; i < batch; i++) {
    const T *Ai = A + i * sa, *Bi = B + i * sb;
    T *Ci = C + i * sc;
    if constexpr (std::is_same<T, float>::value)
      cblas_sgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, a, Ai, lda, Bi, ldb,
                  b, Ci, ldc);
    else
      cblas_dgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, a, Ai, lda, Bi, ldb,
                  b, Ci, ldc);
  }
  return CUBLAS_STATUS_SUCCESS;
}

} /* namespace */

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
  if (!handle)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (device_check() != cudaSuccess)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  *handle = new cublasContext{nullptr, CUBLAS_DEFAULT_MATH, CUBLAS_POINTER_MODE_HOST};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion(cublasHandle_t handle, int *version) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!version)
    return CUBLAS_STATUS_INVALID_VALUE;
  *version = CUBLAS_VERSION;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!stream)
    return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  unsigned base =
      mode & ~static_cast<unsigned>(CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
  if (base > CUBLAS_TF32_TENSOR_OP_MATH)
    return CUBLAS_STATUS_INVALID_VALUE;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode)
    return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
    return CUBLAS_STATUS_INVALID_VALUE;
  handle->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode(cublasHandle_t handle, cublasPointerMode_t *mode) {
  if (!handle)
    return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!mode)
    return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->pointer_mode;
  return CUBLAS_STATUS_SUCCESS;
}

static const struct {
  cublasStatus_t code;
  const char *name, *text;
} status_table[] = {
    {CUBLAS_STATUS_SUCCESS, "CUBLAS_STATUS_SUCCESS",
     "the operation completed successfully"},
    {CUBLAS_STATUS_NOT_INITIALIZED, "CUBLAS_STATUS_NOT_INITIALIZED",
     "the library was not initialized"},
    {CUBLAS_STATUS_ALLOC_FAILED, "CUBLAS_STATUS_ALLOC_FAILED",
     "the resource allocation failed"},
    {CUBLAS_STATUS_INVALID_VALUE, "CUBLAS_STATUS_INVALID_VALUE",
     "an invalid numeric value was used as an argument"},
    {CUBLAS_STATUS_ARCH_MISMATCH, "CUBLAS_STATUS_ARCH_MISMATCH",
     "an absent device architectural feature is required"},
    {CUBLAS_STATUS_MAPPING_ERROR, "CUBLAS_STATUS_MAPPING_ERROR",
     "an access to GPU memory space failed"},
    {CUBLAS_STATUS_EXECUTION_FAILED, "CUBLAS_STATUS_EXECUTION_FAILED",
     "the GPU program failed to execute"},
    {CUBLAS_STATUS_INTERNAL_ERROR, "CUBLAS_STATUS_INTERNAL_ERROR",
     "an internal operation failed"},
    {CUBLAS_STATUS_NOT_SUPPORTED, "CUBLAS_STATUS_NOT_SUPPORTED",
     "the functionality requested is not supported"},
    {CUBLAS_STATUS_LICENSE_ERROR, "CUBLAS_STATUS_LICENSE_ERROR",
     "error detected trying to check the license"},
};

const char *cublasGetStatusString(cublasStatus_t status) {
  for (const auto &s : status_table)
    if (s.code == status)
      return s.text;
  return "unknown error";
}

const char *cublasGetStatusName(cublasStatus_t status) {
  for (const auto &s : status_table)
    if (s.code == status)
      return s.name;
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B,
                           int ldb, const float *beta, float *C, int ldc) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc,
              0, 1, "cublasSgemm");
}

cublasStatus_t cublasDgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k,
                           const double *alpha, const double *A, int lda, const double *B,
                           int ldb, const double *beta, double *C, int ldc) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc,
              0, 1, "cublasDgemm");
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long int strideA, const float *B, int ldb,
                                         long long int strideB, const float *beta,
                                         float *C, int ldc, long long int strideC,
                                         int batchCount) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
              beta, C, ldc, strideC, batchCount, "cublasSgemmStridedBatched");
}

cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const double *alpha, const double *A, int lda,
                                         long long int strideA, const double *B, int ldb,
                                         long long int strideB, const double *beta,
                                         double *C, int ldc, long long int strideC,
                                         int batchCount) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
              beta, C, ldc, strideC, batchCount, "cublasDgemmStridedBatched");
}

} /* extern "C" */
