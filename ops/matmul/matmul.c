/* Matrix products: tg_matmul (1-D, 2-D and batched with broadcast batch dims) and
 * tg_linear (x·Wᵀ + b). Every product is a cblas GEMM; backward passes use the
 * transpose flags of GEMM instead of materialising transposed copies:
 *   C = A·B   =>   dA = dC·Bᵀ,   dB = Aᵀ·dC   (summed over broadcast batch dims). */
#include "graph/internal.h"
#include "runtime/cuda.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------- GEMM -- */

/* C[M,N] = op(A)·op(B) + beta·C, row-major, op(X) = Xᵀ when tX, ldc = N, beta 0 or 1.
 * The degenerate sizes BLAS rejects are settled here: K == 0 leaves beta·C, the sum
 * of no products. */
static int gemm_cpu(tg_dtype dt, int device, bool ta, bool tb, int64_t M, int64_t N,
                    int64_t K, const void *A, int64_t lda, const void *B, int64_t ldb,
                    double beta, void *C) {
  (void)device;
  if (M == 0 || N == 0)
    return 0;
  if (K == 0) {
    if (beta == 0)
      memset(C, 0, (size_t)(M * N) * tg_dtype_size(dt));
    return 0;
  }
  enum CBLAS_TRANSPOSE opa = ta ? CblasTrans : CblasNoTrans;
  enum CBLAS_TRANSPOSE opb = tb ? CblasTrans : CblasNoTrans;
  if (dt == TG_F32)
    cblas_sgemm(CblasRowMajor, opa, opb, (int)M, (int)N, (int)K, 1.0f, A, (int)lda, B,
                (int)ldb, (float)beta, C, (int)N);
  else
    cblas_dgemm(CblasRowMajor, opa, opb, (int)M, (int)N, (int)K, 1.0, A, (int)lda, B,
                (int)ldb, beta, C, (int)N);
  return 0;
}

/* Kernels, one table per device: the ops plan and record once, then run the GEMMs of
 * their plan through the table of their inputs' device. */
typedef struct {
  /* C[M,N] = op(A)·op(B) + beta·C as gemm_cpu */
  int (*gemm)(tg_dtype dt, int device, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
              const void *A, int64_t lda, const void *B, int64_t ldb, double beta,
              void *C);
  /* batch such products, matrix i at A + i*sa, B + i*sb, C + i*sc (elements) */
  int (*gemm_batched)(tg_dtype dt, int device, bool ta, bool tb, int64_t M, int64_t N,
                      int64_t K, const void *A, int64_t lda, int64_t sa, const void *B,
                      int64_t ldb, int64_t sb, double beta, void *C, int64_t sc,
                      int64_t batch);
  /* db[j] = sum over rows of g[r, j] */
  int (*column_sums)(const tg_tensor *g, int64_t rows, int64_t cols, tg_tensor *db);
  /* every row of out [rows, cols] = bias [cols] */
  int (*bias_rows)(tg_tensor *out, const tg_tensor *bias, int64_t rows);
} mm_kernels;
static const mm_kernels tg__mm_cpu;
#ifdef TG_HAVE_CUDA
static const mm_kernels tg__mm_cuda;
#endif
#define MM_PICK(op, t) tg__pick(op, t, &tg__mm_cpu, TG_IF_CUDA(&tg__mm_cuda))

static int gemm_batched_cpu(tg_dtype dt, int device, bool ta, bool tb, int64_t M,
                            int64_t N, int64_t K, const void *A, int64_t lda, int64_t sa,
                            const void *B, int64_t ldb, int64_t sb, double beta, void *C,
                            int64_t sc, int64_t batch) {
  const size_t es = tg_dtype_size(dt);
  for (int64_t i = 0; i < batch; i++)
    gemm_cpu(dt, device, ta, tb, M, N, K, (const char *)A + (size_t)(i * sa) * es, lda,
             (const char *)B + (size_t)(i * sb) * es, ldb, beta,
             (char *)C + (size_t)(i * sc) * es);
  return 0;
}

/* "2x3x4" for PyTorch's "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)". */
static char *dims_x(const int64_t *shape, int ndim, char *buf, size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < ndim && used < len; i++)
    used += (size_t)snprintf(buf + used, len - used, i ? "x%lld" : "%lld",
                             (long long)shape[i]);
  return buf;
}

static int blas_size_error(const char *op, const tg_tensor *a, const tg_tensor *b) {
  char x[TG_SHAPE_STR_LEN], y[TG_SHAPE_STR_LEN];
  return tg__error("%s: matrix sizes above %d are not supported by the 32-bit BLAS "
                   "interface (shapes %s and %s)",
                   op, INT_MAX, tg_shape_str(a, x, sizeof x),
                   tg_shape_str(b, y, sizeof y));
}

/* ------------------------------------------------------------- matmul -- */

/* a viewed as [batch_a..., m, k] and b as [batch_b..., k, n]; a 1-D a is [1, k] and a
 * 1-D b is [k, 1], and the output drops those unit dims, as torch.matmul. */
typedef struct {
  int64_t m, k, n;
  int bnd;                      /* batch dims of the output */
  int64_t bshape[TG_MAX_DIMS];  /* broadcast batch shape */
  int64_t astride[TG_MAX_DIMS]; /* in matrices; 0 on broadcast dims */
  int64_t bstride[TG_MAX_DIMS];
  int64_t batch; /* number of output matrices */
  bool a_full;   /* a has the whole batch: matrix i of a is i */
  bool b_full;
  bool b_shared; /* one matrix of b serves every batch */
} mm_plan;

static void batch_offsets(const mm_plan *p, int64_t i, int64_t *oa, int64_t *ob) {
  int64_t ra = 0, rb = 0;
  for (int d = p->bnd - 1; d >= 0; d--) {
    int64_t idx = i % p->bshape[d];
    i /= p->bshape[d];
    ra += idx * p->astride[d];
    rb += idx * p->bstride[d];
  }
  *oa = ra;
  *ob = rb;
}

static int plan_matmul(const tg_tensor *a, const tg_tensor *b, mm_plan *p,
                       int64_t *out_shape, int *out_ndim) {
  char x[TG_SHAPE_STR_LEN], y[TG_SHAPE_STR_LEN];
  memset(p, 0, sizeof *p);
  if (a->ndim == 0 || b->ndim == 0)
    return tg__error("tg_matmul: both arguments to matmul need to be at least 1D, but "
                     "they are %dD and %dD",
                     a->ndim, b->ndim);
  p->m = a->ndim >= 2 ? a->shape[a->ndim - 2] : 1;
  p->k = a->shape[a->ndim - 1];
  int64_t kb = b->ndim >= 2 ? b->shape[b->ndim - 2] : b->shape[0];
  p->n = b->ndim >= 2 ? b->shape[b->ndim - 1] : 1;
  if (p->k != kb)
    return tg__error("tg_matmul: mat1 and mat2 shapes cannot be multiplied (%s and %s)",
                     dims_x(a->shape, a->ndim, x, sizeof x),
                     dims_x(b->shape, b->ndim, y, sizeof y));
  int abnd = a->ndim > 2 ? a->ndim - 2 : 0, bbnd = b->ndim > 2 ? b->ndim - 2 : 0;
  p->bnd = abnd > bbnd ? abnd : bbnd;
  int64_t sa = 1, sb = 1;
  p->batch = 1;
  p->a_full = p->b_full = p->b_shared = true;
  for (int i = p->bnd - 1; i >= 0; i--) {
    int ia = i - (p->bnd - abnd), ib = i - (p->bnd - bbnd);
    int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
    if (da != db && da != 1 && db != 1)
      return tg__error("tg_matmul: batch dimensions cannot be broadcast: the size of "
                       "tensor a (%lld) must match the size of tensor b (%lld) at "
                       "non-singleton batch dimension %d (shapes %s and %s)",
                       (long long)da, (long long)db, i, tg_shape_str(a, x, sizeof x),
                       tg_shape_str(b, y, sizeof y));
    p->bshape[i] = da == 1 ? db : da;
    p->astride[i] = da == 1 ? 0 : sa;
    p->bstride[i] = db == 1 ? 0 : sb;
    p->a_full &= da == p->bshape[i];
    p->b_full &= db == p->bshape[i];
    p->b_shared &= db == 1;
    sa *= da;
    sb *= db;
    p->batch *= p->bshape[i];
  }
  if (p->m > INT_MAX || p->k > INT_MAX || p->n > INT_MAX)
    return blas_size_error("tg_matmul", a, b);
  int nd = 0;
  for (int i = 0; i < p->bnd; i++)
    out_shape[nd++] = p->bshape[i];
  if (a->ndim >= 2)
    out_shape[nd++] = p->m;
  if (b->ndim >= 2)
    out_shape[nd++] = p->n;
  *out_ndim = nd;
  return 0;
}

/* A batch [B, m, k] times one shared [k, n] is a single [B*m, k] x [k, n] GEMM. */
static bool fold_batch(const mm_plan *p) {
  return p->a_full && p->b_shared && p->batch * p->m <= INT_MAX;
}

static int matmul_forward(const mm_kernels *kt, const mm_plan *p, const tg_tensor *a,
                          const tg_tensor *b, tg_tensor *out) {
  const size_t es = tg_dtype_size(a->dtype);
  const char *A = tg__data(a), *B = tg__data(b);
  char *C = tg__data(out);
  const int64_t sza = p->m * p->k, szb = p->k * p->n, szc = p->m * p->n;
  const tg_dtype dt = a->dtype;
  const int dev = a->device.index;
  if (fold_batch(p))
    return kt->gemm(dt, dev, false, false, p->batch * p->m, p->n, p->k, A, p->k, B, p->n,
                    0, C);
  if (p->a_full && p->b_full)
    return kt->gemm_batched(dt, dev, false, false, p->m, p->n, p->k, A, p->k, sza, B,
                            p->n, szb, 0, C, szc, p->batch);
  int rc = 0;
  for (int64_t i = 0; i < p->batch && rc == 0; i++) {
    int64_t ia, ib;
    batch_offsets(p, i, &ia, &ib);
    rc = kt->gemm(dt, dev, false, false, p->m, p->n, p->k, A + (size_t)(ia * sza) * es,
                  p->k, B + (size_t)(ib * szb) * es, p->n, 0, C + (size_t)(i * szc) * es);
  }
  return rc;
}

/* dA_i = dC_i·B_iᵀ and dB_i = A_iᵀ·dC_i. A gradient whose input was broadcast over a
 * batch dim accumulates (beta = 1) the products of every batch that read it. */
static int matmul_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const mm_plan *p = node->ctx;
  const tg_tensor *a = node->inputs[0], *b = node->inputs[1];
  const tg_dtype dt = g->dtype;
  const size_t es = tg_dtype_size(dt);
  const char *A = tg__data(a), *B = tg__data(b), *G = tg__data(g);
  const int64_t m = p->m, k = p->k, n = p->n;
  const int64_t sza = m * k, szb = k * n, szc = m * n;
  const mm_kernels *kt = MM_PICK("tg_matmul", a);
  if (!kt)
    return -1;
  const int dev = a->device.index;
  int rc = 0;
  if (tg__input_needs_grad(node, 0)) {
    tg_tensor *da = tg__new_like(a);
    if (!da)
      return -1;
    char *DA = tg__data(da);
    if (fold_batch(p)) {
      rc = kt->gemm(dt, dev, false, true, p->batch * m, k, n, G, n, B, n, 0, DA);
    } else if (p->a_full && p->b_full) {
      rc = kt->gemm_batched(dt, dev, false, true, m, k, n, G, n, szc, B, n, szb, 0, DA,
                            sza, p->batch);
    } else {
      double beta = p->a_full ? 0 : 1;
      if (!p->a_full)
        rc = tg_fill_(da, 0);
      for (int64_t i = 0; i < p->batch && rc == 0; i++) {
        int64_t ia, ib;
        batch_offsets(p, i, &ia, &ib);
        rc = kt->gemm(dt, dev, false, true, m, k, n, G + (size_t)(i * szc) * es, n,
                      B + (size_t)(ib * szb) * es, n, beta, DA + (size_t)(ia * sza) * es);
      }
    }
    gi[0] = da;
  }
  if (rc == 0 && tg__input_needs_grad(node, 1)) {
    tg_tensor *db = tg__new_like(b);
    if (!db)
      return -1;
    char *DB = tg__data(db);
    if (fold_batch(p)) { /* dB = A_flatᵀ·dC_flat with A_flat [B*m, k] */
      rc = kt->gemm(dt, dev, true, false, k, n, p->batch * m, A, k, G, n, 0, DB);
    } else if (p->a_full && p->b_full) {
      rc = kt->gemm_batched(dt, dev, true, false, k, n, m, A, k, sza, G, n, szc, 0, DB,
                            szb, p->batch);
    } else {
      double beta = p->b_full ? 0 : 1;
      if (!p->b_full)
        rc = tg_fill_(db, 0);
      for (int64_t i = 0; i < p->batch && rc == 0; i++) {
        int64_t ia, ib;
        batch_offsets(p, i, &ia, &ib);
        rc = kt->gemm(dt, dev, true, false, k, n, m, A + (size_t)(ia * sza) * es, k,
                      G + (size_t)(i * szc) * es, n, beta, DB + (size_t)(ib * szb) * es);
      }
    }
    gi[1] = db;
  }
  return rc;
}

tg_tensor *tg_matmul(const tg_tensor *a, const tg_tensor *b) {
  const char *op = "tg_matmul";
  if (!tg__nonnull(a, op, "a") || !tg__nonnull(b, op, "b"))
    return NULL;
  const tg_tensor *in[2] = {a, b};
  if (tg__check_same(op, 2, in, true) < 0)
    return NULL;
  mm_plan p;
  int64_t shape[TG_MAX_DIMS];
  int nd = 0;
  const mm_kernels *kt;
  if (plan_matmul(a, b, &p, shape, &nd) < 0 || !(kt = MM_PICK(op, a)))
    return NULL;
  tg_tensor *out = tg__new(shape, nd, a->dtype, a->device);
  if (!out)
    return NULL;
  if (matmul_forward(kt, &p, a, b, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  tg_node *node;
  out = tg__finish(op, out, 2, in, matmul_backward, &node);
  if (node)
    *(mm_plan *)tg__ctx(node, sizeof p) = p;
  return out;
}

/* ------------------------------------------------------------- linear -- */

/* x [..., in] is a [rows, in] matrix; weight [out, in]. */
typedef struct {
  int64_t rows, in, out;
} linear_plan;

/* db[j] = sum over rows of dY[r, j]: dYᵀ·1 as a GEMV. */
static int column_sums_cpu(const tg_tensor *g, int64_t rows, int64_t cols,
                           tg_tensor *db) {
  if (rows == 0) {
    memset(tg__data(db), 0, (size_t)cols * tg_dtype_size(g->dtype));
    return 0;
  }
  TG_DISPATCH_FLOAT(g->dtype, T, {
    T *ones = malloc((size_t)rows * sizeof(T));
    if (!ones)
      return tg__error("tg_linear: out of memory in backward");
    for (int64_t r = 0; r < rows; r++)
      ones[r] = 1;
    if (g->dtype == TG_F32)
      cblas_sgemv(CblasRowMajor, CblasTrans, (int)rows, (int)cols, 1.0f, tg__data(g),
                  (int)cols, (const float *)ones, 1, 0.0f, tg__data(db), 1);
    else
      cblas_dgemv(CblasRowMajor, CblasTrans, (int)rows, (int)cols, 1.0, tg__data(g),
                  (int)cols, (const double *)ones, 1, 0.0, tg__data(db), 1);
    free(ones);
  });
  return 0;
}

/* The copy is serial: OpenMP workers still spinning after a parallel region would slow
 * the BLAS threads that start right after it. */
static int bias_rows_cpu(tg_tensor *out, const tg_tensor *bias, int64_t rows) {
  const size_t row_bytes = (size_t)bias->numel * tg_dtype_size(out->dtype);
  char *Y = tg__data(out);
  for (int64_t r = 0; r < rows; r++)
    memcpy(Y + (size_t)r * row_bytes, tg__data(bias), row_bytes);
  return 0;
}

static const mm_kernels tg__mm_cpu = {gemm_cpu, gemm_batched_cpu, column_sums_cpu,
                                      bias_rows_cpu};

#ifdef TG_HAVE_CUDA
static int gemm_batched_cuda(tg_dtype dt, int device, bool ta, bool tb, int64_t M,
                             int64_t N, int64_t K, const void *A, int64_t lda, int64_t sa,
                             const void *B, int64_t ldb, int64_t sb, double beta, void *C,
                             int64_t sc, int64_t batch) {
  return tg__cuda_gemm(dt, device, ta, tb, M, N, K, A, lda, sa, B, ldb, sb, beta, C, sc,
                       batch);
}

static int gemm_cuda(tg_dtype dt, int device, bool ta, bool tb, int64_t M, int64_t N,
                     int64_t K, const void *A, int64_t lda, const void *B, int64_t ldb,
                     double beta, void *C) {
  return gemm_batched_cuda(dt, device, ta, tb, M, N, K, A, lda, 0, B, ldb, 0, beta, C, 0,
                           1);
}

/* A sum over dim 0 of g viewed as [rows, cols] (the reduction kernels). */
static int column_sums_cuda(const tg_tensor *g, int64_t rows, int64_t cols,
                            tg_tensor *db) {
  tg_tensor *s = tg_sum_dims(tg_reshape(g, TG_SHAPE(rows, cols)), (int[]){0}, 1, false);
  return s ? tg_copy_(db, s) : -1;
}

static int bias_rows_cuda(tg_tensor *out, const tg_tensor *bias, int64_t rows) {
  const int64_t cols = bias->numel, shape[2] = {rows, cols};
  return tg__cuda_strided_copy(tg__data(out), (int64_t[]){cols, 1}, 0, tg__data(bias),
                               (int64_t[]){0, 1}, 0, shape, 2, rows * cols,
                               tg_dtype_size(out->dtype), out->device.index);
}

static const mm_kernels tg__mm_cuda = {gemm_cuda, gemm_batched_cuda, column_sums_cuda,
                                       bias_rows_cuda};
#endif

/* Y = X·Wᵀ + b  =>  dX = dY·W,  dW = dYᵀ·X,  db = column sums of dY. */
static int linear_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const linear_plan *p = node->ctx;
  const tg_tensor *x = node->inputs[0], *w = node->inputs[1];
  const mm_kernels *kt = MM_PICK("tg_linear", x);
  if (!kt)
    return -1;
  const int dev = x->device.index;
  if (tg__input_needs_grad(node, 0)) {
    tg_tensor *dx = tg__new_like(x);
    if (!dx || kt->gemm(g->dtype, dev, false, false, p->rows, p->in, p->out, tg__data(g),
                        p->out, tg__data(w), p->in, 0, tg__data(dx)) < 0)
      return -1;
    gi[0] = dx;
  }
  if (tg__input_needs_grad(node, 1)) {
    tg_tensor *dw = tg__new_like(w);
    if (!dw || kt->gemm(g->dtype, dev, true, false, p->out, p->in, p->rows, tg__data(g),
                        p->out, tg__data(x), p->in, 0, tg__data(dw)) < 0)
      return -1;
    gi[1] = dw;
  }
  if (tg__input_needs_grad(node, 2)) {
    tg_tensor *db = tg__new_like(node->inputs[2]);
    if (!db || kt->column_sums(g, p->rows, p->out, db) < 0)
      return -1;
    gi[2] = db;
  }
  return 0;
}

static int plan_linear(const tg_tensor *x, const tg_tensor *w, const tg_tensor *bias,
                       linear_plan *p) {
  char s1[TG_SHAPE_STR_LEN], s2[TG_SHAPE_STR_LEN];
  if (w->ndim != 2)
    return tg__error("tg_linear: weight must be 2-D [out_features, in_features], got "
                     "shape %s",
                     tg_shape_str(w, s1, sizeof s1));
  if (x->ndim == 0)
    return tg__error("tg_linear: input must have at least 1 dimension [..., "
                     "in_features], got a 0-dim tensor");
  p->in = w->shape[1];
  p->out = w->shape[0];
  p->rows = 1;
  for (int i = 0; i < x->ndim - 1; i++)
    p->rows *= x->shape[i];
  if (x->shape[x->ndim - 1] != p->in) {
    int64_t wt[2] = {w->shape[1], w->shape[0]};
    char xs[TG_SHAPE_STR_LEN];
    return tg__error("tg_linear: mat1 and mat2 shapes cannot be multiplied (%lldx%lld "
                     "and %s) (input %s, weight %s: input's last dim must equal "
                     "in_features)",
                     (long long)p->rows, (long long)x->shape[x->ndim - 1],
                     dims_x(wt, 2, xs, sizeof xs), tg_shape_str(x, s1, sizeof s1),
                     tg_shape_str(w, s2, sizeof s2));
  }
  if (bias && (bias->ndim != 1 || bias->shape[0] != p->out))
    return tg__error("tg_linear: bias must have shape [%lld] (out_features of weight "
                     "%s), got %s",
                     (long long)p->out, tg_shape_str(w, s1, sizeof s1),
                     tg_shape_str(bias, s2, sizeof s2));
  if (p->rows > INT_MAX || p->in > INT_MAX || p->out > INT_MAX)
    return blas_size_error("tg_linear", x, w);
  return 0;
}

/* A 1-D weight [in], as PyTorch takes it: x·w with the last dim dropped. PyTorch
 * refuses a bias with it (its addmm wants a matrix), and so does this. */
static tg_tensor *linear_vector(const tg_tensor *x, const tg_tensor *w,
                                const tg_tensor *bias) {
  char s1[TG_SHAPE_STR_LEN];
  if (bias)
    return tg__error("tg_linear: mat2 must be a matrix, got 1-D tensor (weight %s with "
                     "a bias; without a bias a 1-D weight gives input·weight)",
                     tg_shape_str(w, s1, sizeof s1)),
           NULL;
  return tg_matmul(x, w);
}

tg_tensor *tg_linear(const tg_tensor *x, const tg_tensor *weight, const tg_tensor *bias) {
  const char *op = "tg_linear";
  if (!tg__nonnull(x, op, "input") || !tg__nonnull(weight, op, "weight"))
    return NULL;
  if (weight->ndim == 1 && x->ndim > 0)
    return linear_vector(x, weight, bias);
  const tg_tensor *in[3] = {x, weight, bias};
  if (tg__check_same(op, 3, in, true) < 0)
    return NULL;
  linear_plan p;
  const mm_kernels *kt;
  if (plan_linear(x, weight, bias, &p) < 0 || !(kt = MM_PICK(op, x)))
    return NULL;
  int64_t shape[TG_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[x->ndim - 1] = p.out;
  tg_tensor *out = tg__new(shape, x->ndim, x->dtype, x->device);
  if (!out)
    return NULL;
  /* Y starts as rows of b, then one GEMM adds X·Wᵀ (beta = 1). */
  if ((bias && kt->bias_rows(out, bias, p.rows) < 0) ||
      kt->gemm(x->dtype, x->device.index, false, true, p.rows, p.out, p.in, tg__data(x),
               p.in, tg__data(weight), p.in, bias ? 1 : 0, tg__data(out)) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  tg_node *node;
  out = tg__finish(op, out, 3, in, linear_backward, &node);
  if (node)
    *(linear_plan *)tg__ctx(node, sizeof p) = p;
  return out;
}
