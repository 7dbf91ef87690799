/* 2-D convolution and its adjoint, transposed convolution.
 *
 * float32 convolutions with stride 1 and one group (most of a conv net's) run on the
 * direct kernels of direct.c where the CPU has AVX2 and FMA: forward, input gradient
 * and weight gradient; the 3x3 ones among them through Winograd (winograd.c) where the
 * CPU has AVX-512 and the layer gains by it. Everything else, and every CPU without
 * AVX2 and FMA, runs on im2col + GEMM, below. On CUDA, conv.cu runs the same two
 * products as kernels around cuBLAS GEMMs (the kernel table near the end picks).
 *
 * Both ops share one geometry: an image [C, H, W] and a grid of oh x ow kernel
 * positions; position (oy, ox) and kernel tap (i, j) meet at image pixel
 *   (oy*sh - ph + i*dh, ox*sw - pw + j*dw).
 * im2col gathers an image into columns [C*kh*kw, oh*ow]; col2im adds columns back
 * into an image. The other side of the op is "flat", [Cf, oh*ow] per image, and the
 * weight is [Cf, C/groups, kh, kw] per group row-major in both ops:
 *   conv2d            image = x, flat = y:   y  = W · im2col(x)
 *   conv_transpose2d  image = y, flat = x:   y  = col2im(Wᵀ · x)
 * so each op's forward is the other's input gradient, and both weight gradients are
 * dW = Σ_n flat_n · im2col(image_n)ᵀ. Two drivers below do all six products.
 *
 * Threads: the drivers split the batch (and, when it is small, the pixels or the
 * channels) into items and run each item's im2col, GEMM and col2im on one thread,
 * calling single-threaded OpenBLAS (runtime/threads.c keeps it so). A thread's
 * columns stay in its own cache. */
#include "graph/internal.h"
#include "ops/conv/conv_cuda.h"
#include "ops/conv/direct.h"
#include "ops/conv/winograd.h"
#include "ops/reduce/reduce.h"
#include "ops/unbatched.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ geometry -- */

typedef tg__conv_geom geom; /* ops/conv/conv_cuda.h, shared with the CUDA kernels */

/* 1x1 kernel, stride 1, no padding, same size: the columns are the image itself. */
static bool geom_is_identity(const geom *g) {
  return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 &&
         g->pw == 0 && g->oh == g->h && g->ow == g->w;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/* [*lo, *hi): grid positions o whose pixel o*s + off lies in [0, n). */
static void valid_range(int64_t off, int64_t s, int64_t n, int64_t grid, int64_t *lo,
                        int64_t *hi) {
  *lo = clamp64(off >= 0 ? 0 : (-off + s - 1) / s, 0, grid);
  *hi = clamp64(n - off <= 0 ? 0 : (n - off + s - 1) / s, *lo, grid);
}

/* Columns [l0, l1) of im2col(img), l = oy*ow + ox, for one image:
 *   cols[(c*kh + i)*kw + j][l - l0] = img[c][oy*sh - ph + i*dh][ox*sw - pw + j*dw],
 * zero outside the image. */
static void im2col(tg_dtype dtype, const void *img, void *cols, int64_t l0, int64_t l1,
                   const geom *g) {
  const int64_t n = l1 - l0;
  TG_DISPATCH_FLOAT(dtype, T, {
    T *row = cols;
    for (int64_t c = 0; c < g->c; c++) {
      const T *plane = (const T *)img + c * g->h * g->w;
      for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++, row += n) {
          int64_t off = j * g->dw - g->pw, xlo, xhi;
          valid_range(off, g->sw, g->w, g->ow, &xlo, &xhi);
          for (int64_t l = l0; l < l1;) {
            int64_t oy = l / g->ow, ox0 = l % g->ow;
            int64_t ox1 = ox0 + (l1 - l) < g->ow ? ox0 + (l1 - l) : g->ow;
            int64_t iy = oy * g->sh - g->ph + i * g->dh;
            T *dst = row + (l - l0) - ox0; /* dst[ox] is position (oy, ox) */
            l += ox1 - ox0;
            if (iy < 0 || iy >= g->h) {
              memset(dst + ox0, 0, (size_t)(ox1 - ox0) * sizeof(T));
              continue;
            }
            const T *src = plane + iy * g->w + off;
            int64_t a = clamp64(xlo, ox0, ox1), b = clamp64(xhi, a, ox1);
            for (int64_t ox = ox0; ox < a; ox++) /* rows are short: plain loops */
              dst[ox] = 0;
            if (g->sw == 1)
              for (int64_t ox = a; ox < b; ox++)
                dst[ox] = src[ox];
            else
              for (int64_t ox = a; ox < b; ox++)
                dst[ox] = src[ox * g->sw];
            for (int64_t ox = b; ox < ox1; ox++)
              dst[ox] = 0;
          }
        }
    }
  });
}

/* Channels [c0, c1) of one image: img[c] = init[c] (0 when init is NULL) plus every
 * column entry landing on the pixel; cols holds those channels' rows. The adjoint of
 * im2col. */
static void col2im(tg_dtype dtype, const void *cols, void *img, const void *init,
                   int64_t c0, int64_t c1, const geom *g) {
  const int64_t L = g->oh * g->ow, hw = g->h * g->w;
  TG_DISPATCH_FLOAT(dtype, T, {
    const T *row = cols;
    for (int64_t c = c0; c < c1; c++) {
      T *plane = (T *)img + c * hw;
      T v = init ? ((const T *)init)[c] : (T)0;
      for (int64_t k = 0; k < hw; k++)
        plane[k] = v;
      for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++, row += L) {
          int64_t off = j * g->dw - g->pw, xlo, xhi;
          valid_range(off, g->sw, g->w, g->ow, &xlo, &xhi);
          for (int64_t oy = 0; oy < g->oh; oy++) {
            int64_t iy = oy * g->sh - g->ph + i * g->dh;
            if (iy < 0 || iy >= g->h)
              continue;
            T *d = plane + iy * g->w + off;
            const T *s = row + oy * g->ow;
            if (g->sw == 1)
              for (int64_t ox = xlo; ox < xhi; ox++)
                d[ox] += s[ox];
            else
              for (int64_t ox = xlo; ox < xhi; ox++)
                d[ox * g->sw] += s[ox];
          }
        }
    }
  });
}

/* rows x n block (row stride ld) = bias[r]. */
static void fill_rows(tg_dtype dtype, void *out, const void *bias, int64_t rows,
                      int64_t n, int64_t ld) {
  TG_DISPATCH_FLOAT(dtype, T, {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t k = 0; k < n; k++)
        ((T *)out)[r * ld + k] = ((const T *)bias)[r];
  });
}

/* --------------------------------------------------------------- BLAS -- */

/* C[m,n] = op(A)[m,k] · op(B)[k,n] + beta*C, row-major, on the calling thread. */
static void gemm(tg_dtype dtype, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                 const void *a, int64_t lda, const void *b, int64_t ldb, double beta,
                 void *c, int64_t ldc) {
  if (m == 0 || n == 0)
    return;
  if (k == 0) { /* BLAS may not accept k == 0: C = beta*C by hand */
    size_t es = tg_dtype_size(dtype);
    for (int64_t r = 0; r < m && beta == 0.0; r++)
      memset((char *)c + (size_t)(r * ldc) * es, 0, (size_t)n * es);
    return;
  }
  enum CBLAS_TRANSPOSE tra = ta ? CblasTrans : CblasNoTrans;
  enum CBLAS_TRANSPOSE trb = tb ? CblasTrans : CblasNoTrans;
  if (dtype == TG_F32)
    cblas_sgemm(CblasRowMajor, tra, trb, (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b,
                (int)ldb, (float)beta, c, (int)ldc);
  else
    cblas_dgemm(CblasRowMajor, tra, trb, (int)m, (int)n, (int)k, 1.0, a, (int)lda, b,
                (int)ldb, beta, c, (int)ldc);
}

/* ---------------------------------------------------------- workspace -- */

/* Column buffers up to this size are kept per thread between calls: training loops
 * call the same convs again and again, and a fresh large allocation costs a page
 * fault per 4 KiB. Larger buffers (huge images) are freed after each call. */
#define WORKSPACE_KEEP_BYTES ((size_t)16 << 20)
/* Target size of one thread's block of columns: big enough for efficient GEMMs. */
#define COL_BLOCK_BYTES ((size_t)1 << 20)

/* Per-thread slices start on their own cache line. */
static size_t round_up(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;
static _Thread_local struct {
  void *p;
  size_t bytes;
} ws;

static void ws_key_init(void) { pthread_key_create(&ws_key, free); }

void *conv_workspace_get(size_t bytes) {
  if (bytes > WORKSPACE_KEEP_BYTES)
    return aligned_alloc(64, round_up(bytes));
  if (ws.bytes < bytes) {
    pthread_once(&ws_once, ws_key_init);
    free(ws.p);
    ws.p = aligned_alloc(64, WORKSPACE_KEEP_BYTES);
    ws.bytes = ws.p ? WORKSPACE_KEEP_BYTES : 0;
    pthread_setspecific(ws_key, ws.p); /* frees it when the thread exits */
  }
  return ws.p;
}

void conv_workspace_put(void *p) {
  if (p != ws.p)
    free(p);
}

/* ------------------------------------------------------------- drivers -- */

/* One conv-like product over a batch (image side, flat side, weight per group). */
typedef tg__conv_plan conv_plan;

static void *at(const void *base, int64_t elems, size_t es) {
  return (char *)base + (size_t)elems * es;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* dst[k] += Σ_t parts[t * stride + k], split over threads by k. */
static void add_partials(tg_dtype dtype, void *dst, const void *parts, int np,
                         size_t stride, int64_t n) {
  const int64_t block = 4096, nblk = (n + block - 1) / block;
#pragma omp parallel for num_threads(tg__threads(n *np))
  for (int64_t b = 0; b < nblk; b++) {
    const int64_t k1 = (b + 1) * block < n ? (b + 1) * block : n;
    TG_DISPATCH_FLOAT(dtype, T, {
      for (int t = 0; t < np; t++)
        for (int64_t k = b * block; k < k1; k++)
          ((T *)dst)[k] += ((const T *)parts)[(size_t)t * stride + (size_t)k];
    });
  }
}

/* Items are (image, block of `blk` grid positions). With cols = im2col(image):
 *   flat_out = W · cols (+ bias[cf])             when flat_out is given;
 *   dw = Σ_n flat_in_n · cols_nᵀ                 when dw is given
 * (each thread sums its items into its own copy of dw, added up at the end). */
static int im2col_drive(const conv_plan *p, const void *image, const void *w,
                        const void *bias, void *flat_out, const void *flat_in, void *dw) {
  const geom *g = &p->g;
  const size_t es = tg_dtype_size(p->dtype);
  const int64_t L = g->oh * g->ow, kg = g->c / p->groups * g->kh * g->kw;
  const int64_t cfg = p->cf / p->groups, rows = kg * p->groups, img = g->c * g->h * g->w;
  const int64_t dw_n = p->cf * kg;
  const bool direct = geom_is_identity(g);
  /* nt pieces of work: the threads, or with dw the parts of its sum (each summed on one
   * thread into its own partial dw, added in part order): tg__reduce_parts makes the
   * result independent of the threads in deterministic mode. */
  const int64_t work = p->n * p->cf * L * kg;
  int nt = dw ? tg__reduce_parts(work) : tg__threads(work);
  /* Blocks of equal size, at most COL_BLOCK_BYTES of columns, and enough of them for
   * every piece when the batch is small. */
  int64_t blk = clamp64((int64_t)(COL_BLOCK_BYTES / ((size_t)rows * es + 1)), g->ow, L);
  int64_t nblk = L ? ceil_div(L, blk) : 0;
  if (p->n > 0 && p->n * nblk < nt)
    nblk = ceil_div(nt, p->n) < L ? ceil_div(nt, p->n) : L;
  blk = nblk ? ceil_div(L, nblk) : 0;
  nblk = blk ? ceil_div(L, blk) : 0;
  const int64_t items = p->n * nblk;
  if (items < nt)
    nt = items > 0 ? (int)items : 1;
  const int nth = tg__threads(work) < nt ? tg__threads(work) : nt;
  size_t col_bytes = direct ? 0 : round_up((size_t)(rows * blk) * es);
  size_t dw_bytes = dw ? round_up((size_t)dw_n * es) : 0;
  const size_t bytes = (size_t)nth * col_bytes + (size_t)(nt - 1) * dw_bytes + 1;
  char *buf = conv_workspace_get(bytes);
  if (!buf) /* the column buffers: named by the op running */
    return tg__oom(bytes, "cpu", NULL);
  if (dw)
    memset(dw, 0, dw_bytes);
#pragma omp parallel num_threads(nth)
  {
    void *cols = buf + (size_t)omp_get_thread_num() * col_bytes;
#pragma omp for schedule(static)
    for (int t = 0; t < nt; t++) {
      void *my_dw =
          t == 0 ? dw : buf + (size_t)nth * col_bytes + (size_t)(t - 1) * dw_bytes;
      if (dw && t > 0)
        memset(my_dw, 0, dw_bytes);
      for (int64_t it = items * t / nt; it < items * (t + 1) / nt; it++) {
        const int64_t b = it / nblk, l0 = it % nblk * blk;
        const int64_t l1 = l0 + blk < L ? l0 + blk : L, n = l1 - l0;
        const void *cb = direct ? at(image, b * img + l0, es) : cols;
        const int64_t ldb = direct ? L : n;
        if (!direct)
          im2col(p->dtype, at(image, b * img, es), cols, l0, l1, g);
        for (int64_t q = 0; dw && q < p->groups; q++)
          gemm(p->dtype, false, true, cfg, kg, n,
               at(flat_in, (b * p->cf + q * cfg) * L + l0, es), L,
               at(cb, q * kg * ldb, es), ldb, 1.0, at(my_dw, q * cfg * kg, es), kg);
        if (flat_out) {
          void *out = at(flat_out, b * p->cf * L + l0, es);
          if (bias)
            fill_rows(p->dtype, out, bias, p->cf, n, L);
          for (int64_t q = 0; q < p->groups; q++)
            gemm(p->dtype, false, false, cfg, n, kg, at(w, q * cfg * kg, es), kg,
                 at(cb, q * kg * ldb, es), ldb, bias ? 1.0 : 0.0,
                 at(out, q * cfg * L, es), L);
        }
      }
    }
  }
  if (dw && nt > 1)
    add_partials(p->dtype, dw, buf + (size_t)nth * col_bytes, nt - 1, dw_bytes / es,
                 dw_n);
  conv_workspace_put(buf);
  return 0;
}

/* image_out = col2im(Wᵀ · flat_in) (+ bias[c] on every image channel). Items are
 * (image, group, block of channels): col2im adds up columns of neighbouring pixels,
 * so an item must own whole planes. */
static int col2im_drive(const conv_plan *p, const void *flat_in, const void *w,
                        const void *bias, void *image_out) {
  const geom *g = &p->g;
  const size_t es = tg_dtype_size(p->dtype);
  const int64_t L = g->oh * g->ow, kk = g->kh * g->kw, cg = g->c / p->groups;
  const int64_t kg = cg * kk, cfg = p->cf / p->groups, img = g->c * g->h * g->w;
  const bool direct = geom_is_identity(g);
  int nt = tg__threads(p->n * p->cf * L * kg);
  int64_t cblk = cg; /* channels per item */
  if (p->n > 0 && p->n * p->groups < nt)
    cblk = ceil_div(cg, ceil_div(nt, p->n * p->groups));
  const int64_t nblk = cg ? ceil_div(cg, cblk) : 0, items = p->n * p->groups * nblk;
  if (items < nt)
    nt = items > 0 ? (int)items : 1;
  size_t col_bytes = direct ? 0 : round_up((size_t)(cblk * kk * L) * es);
  const size_t bytes = (size_t)nt * col_bytes + 1;
  char *buf = conv_workspace_get(bytes);
  if (!buf) /* the column buffers: named by the op running */
    return tg__oom(bytes, "cpu", NULL);
#pragma omp parallel num_threads(nt)
  {
    void *cols = buf + (size_t)omp_get_thread_num() * col_bytes;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; it++) {
      const int64_t b = it / (p->groups * nblk), q = it / nblk % p->groups;
      const int64_t c0 = q * cg + it % nblk * cblk;
      const int64_t c1 = c0 + cblk < (q + 1) * cg ? c0 + cblk : (q + 1) * cg;
      void *dst = at(image_out, b * img, es);
      const void *a = at(w, q * cfg * kg + (c0 - q * cg) * kk, es);
      const void *f = at(flat_in, (b * p->cf + q * cfg) * L, es);
      if (direct) {
        if (bias)
          fill_rows(p->dtype, at(dst, c0 * L, es), at(bias, c0, es), c1 - c0, L, L);
        gemm(p->dtype, true, false, c1 - c0, L, cfg, a, kg, f, L, bias ? 1.0 : 0.0,
             at(dst, c0 * L, es), L);
      } else {
        gemm(p->dtype, true, false, (c1 - c0) * kk, L, cfg, a, kg, f, L, 0.0, cols, L);
        col2im(p->dtype, cols, dst, bias, c0, c1, g);
      }
    }
  }
  conv_workspace_put(buf);
  return 0;
}

/* Sums in double, vectorised (a plain double loop is one long dependency chain). */
static double sum_f32(const float *x, int64_t n) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; i++)
    acc += x[i];
  return acc;
}

static double sum_f64(const double *x, int64_t n) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; i++)
    acc += x[i];
  return acc;
}

/* db[c] = Σ over images and pixels of g[n, c, :]. */
static void bias_grad_channel(const tg_tensor *g, tg_tensor *db, int64_t k) {
  const int64_t n = g->shape[0], c = g->shape[1], len = g->shape[2] * g->shape[3];
  double acc = 0;
  for (int64_t i = 0; i < n; i++) {
    const void *row = at(tg__data(g), (i * c + k) * len, tg_dtype_size(g->dtype));
    acc += g->dtype == TG_F32 ? sum_f32(row, len) : sum_f64(row, len);
  }
  tg__set(db, k, acc);
}

static void bias_grad(const tg_tensor *g, tg_tensor *db) {
#pragma omp parallel for num_threads(tg__threads(g->numel))
  for (int64_t k = 0; k < g->shape[1]; k++)
    bias_grad_channel(g, db, k);
}

/* ------------------------------------------------------- validation -- */

typedef struct {
  int64_t stride[2], padding[2], dilation[2], output_padding[2], groups;
  bool transposed;
} conv_params;

static void pair_or(int64_t out[2], const int64_t in[2], int64_t dflt) {
  out[0] = in ? in[0] : dflt;
  out[1] = in ? in[1] : dflt;
}

/* PyTorch's checks (ATen's check_shape_forward and slow_conv_transpose2d's), its
 * wording; on success fills the plan of the forward product and the output shape. */
static int conv_check(const char *op, const tg_tensor *x, const tg_tensor *w,
                      const tg_tensor *bias, const conv_params *cp, conv_plan *plan,
                      int64_t out_shape[4]) {
  char sx[TG_SHAPE_STR_LEN], sw[TG_SHAPE_STR_LEN], sb[TG_SHAPE_STR_LEN];
  const int64_t *s = cp->stride, *pd = cp->padding, *dl = cp->dilation;
  const int64_t *op_ = cp->output_padding, groups = cp->groups;
  if (pd[0] < 0 || pd[1] < 0)
    return tg__error("%s: negative padding is not supported (padding [%lld, %lld])", op,
                     (long long)pd[0], (long long)pd[1]);
  if (op_[0] < 0 || op_[1] < 0)
    return tg__error("%s: negative output_padding is not supported (output_padding "
                     "[%lld, %lld])",
                     op, (long long)op_[0], (long long)op_[1]);
  if (s[0] <= 0 || s[1] <= 0)
    return tg__error("%s: non-positive stride is not supported (stride [%lld, %lld])", op,
                     (long long)s[0], (long long)s[1]);
  if (dl[0] <= 0 || dl[1] <= 0)
    return tg__error("%s: dilation should be greater than zero (dilation [%lld, %lld])",
                     op, (long long)dl[0], (long long)dl[1]);
  if (groups <= 0)
    return tg__error("%s: non-positive groups is not supported (groups %lld)", op,
                     (long long)groups);
  tg_shape_str(x, sx, sizeof sx);
  tg_shape_str(w, sw, sizeof sw);
  if (w->ndim != 4)
    return tg__error("%s: expected a 4-dimensional weight [%s, kH, kW], but got weight "
                     "of size %s",
                     op, cp->transposed ? "Cin, Cout/groups" : "Cout, Cin/groups", sw);
  if (x->ndim != 4)
    return tg__error("%s: Expected 4-dimensional input for 4-dimensional weight %s, but "
                     "got %d-dimensional input of size %s instead",
                     op, sw, x->ndim, sx);
  const int64_t *ws = w->shape, *xs = x->shape;
  if (ws[2] <= 0 || ws[3] <= 0)
    return tg__error(
        "%s: kernel size should be greater than zero, but got kernel_height: "
        "%lld kernel_width: %lld (weight of size %s)",
        op, (long long)ws[2], (long long)ws[3], sw);
  if (cp->transposed && (xs[2] == 0 || xs[3] == 0) && xs[0] != 0 && xs[1] != 0)
    return tg__error("%s: Only zero batch or zero channel inputs are supported, but got "
                     "input shape: %s",
                     op, sx);
  if (ws[0] < groups)
    return tg__error("%s: Given groups=%lld, expected weight to be at least %lld at "
                     "dimension 0, but got weight of size %s instead",
                     op, (long long)groups, (long long)groups, sw);
  if (ws[0] % groups != 0)
    return tg__error("%s: Given groups=%lld, expected weight to be divisible by %lld at "
                     "dimension 0, but got weight of size %s instead",
                     op, (long long)groups, (long long)groups, sw);
  int64_t cout = cp->transposed ? ws[1] * groups : ws[0];
  if (!cp->transposed && xs[1] != ws[1] * groups)
    return tg__error("%s: Given groups=%lld, weight of size %s, expected input%s to have "
                     "%lld channels, but got %lld channels instead",
                     op, (long long)groups, sw, sx, (long long)(ws[1] * groups),
                     (long long)xs[1]);
  if (cp->transposed && xs[1] != ws[0])
    return tg__error(
        "%s: Given transposed=1, weight of size %s, expected input%s to have "
        "%lld channels, but got %lld channels instead",
        op, sw, sx, (long long)ws[0], (long long)xs[1]);
  if (bias && (bias->ndim != 1 || bias->shape[0] != cout))
    return tg__error(
        "%s: Given weight of size %s, expected bias to be 1-dimensional with "
        "%lld elements, but got bias of size %s instead",
        op, sw, (long long)cout, tg_shape_str(bias, sb, sizeof sb));
  geom g = {.kh = ws[2],
            .kw = ws[3],
            .sh = s[0],
            .sw = s[1],
            .ph = pd[0],
            .pw = pd[1],
            .dh = dl[0],
            .dw = dl[1]};
  /* Per spatial dim: effective kernel ek = d*(k-1) + 1, and for conv2d the padded
   * input x + 2p, for conv_transpose2d the output (x-1)*s - 2p + ek + op; any of them
   * may overflow int64 with absurd arguments. */
  int64_t ek[2], sz[2];
  bool ovf = false;
  for (int i = 0; i < 2 && !ovf; i++) {
    int64_t p2 = 0, t = 0;
    ovf = __builtin_mul_overflow(dl[i], ws[2 + i] - 1, &ek[i]) ||
          __builtin_add_overflow(ek[i], 1, &ek[i]) ||
          __builtin_mul_overflow(pd[i], 2, &p2) ||
          (!cp->transposed && __builtin_add_overflow(xs[2 + i], p2, &sz[i])) ||
          (cp->transposed &&
           (__builtin_mul_overflow(xs[2 + i] - 1, s[i], &t) ||
            __builtin_sub_overflow(t, p2, &t) || __builtin_add_overflow(t, ek[i], &t) ||
            __builtin_add_overflow(t, op_[i], &sz[i])));
  }
  if (ovf)
    return tg__error("%s: sizes overflow int64 (input %s, weight %s, stride [%lld, "
                     "%lld], padding [%lld, %lld], dilation [%lld, %lld])",
                     op, sx, sw, (long long)s[0], (long long)s[1], (long long)pd[0],
                     (long long)pd[1], (long long)dl[0], (long long)dl[1]);
  if (!cp->transposed) {
    if (sz[0] < ek[0] || sz[1] < ek[1])
      return tg__error("%s: Calculated padded input size per channel: (%lld x %lld). "
                       "Kernel size: (%lld x %lld). Kernel size can't be greater than "
                       "actual input size (input %s, weight %s)",
                       op, (long long)sz[0], (long long)sz[1], (long long)ek[0],
                       (long long)ek[1], sx, sw);
    g.c = xs[1];
    g.h = xs[2];
    g.w = xs[3];
    g.oh = (sz[0] - ek[0]) / s[0] + 1;
    g.ow = (sz[1] - ek[1]) / s[1] + 1;
    *plan = (conv_plan){x->dtype, xs[0], groups, cout, g};
    int64_t o[4] = {xs[0], cout, g.oh, g.ow};
    memcpy(out_shape, o, sizeof o);
  } else {
    if (!(op_[0] < s[0] || op_[0] < dl[0]) || !(op_[1] < s[1] || op_[1] < dl[1]))
      return tg__error("%s: output padding must be smaller than either stride or "
                       "dilation, but got output_padding_height: %lld "
                       "output_padding_width: %lld stride_height: %lld stride_width: "
                       "%lld dilation_height: %lld dilation_width: %lld",
                       op, (long long)op_[0], (long long)op_[1], (long long)s[0],
                       (long long)s[1], (long long)dl[0], (long long)dl[1]);
    const int64_t oh = sz[0], ow = sz[1];
    if (oh < 1 || ow < 1)
      return tg__error("%s: Given input size per channel: (%lld x %lld). Calculated "
                       "output size per channel: (%lld x %lld). Output size is too small "
                       "(input %s, weight %s)",
                       op, (long long)xs[2], (long long)xs[3], (long long)oh,
                       (long long)ow, sx, sw);
    g.c = cout;
    g.h = oh;
    g.w = ow;
    g.oh = xs[2];
    g.ow = xs[3];
    *plan = (conv_plan){x->dtype, xs[0], groups, xs[1], g};
    int64_t o[4] = {xs[0], cout, oh, ow};
    memcpy(out_shape, o, sizeof o);
  }
  if (tg__check_shape(out_shape, 4, x->dtype, op) < 0)
    return -1;
  /* BLAS takes int sizes (kg is at most the weight's numel). */
  int64_t kg = g.c / groups * g.kh * g.kw, L, hw;
  if (__builtin_mul_overflow(g.oh, g.ow, &L) || __builtin_mul_overflow(g.h, g.w, &hw) ||
      kg > INT_MAX || L > INT_MAX || plan->cf > INT_MAX || hw > INT_MAX)
    return tg__error("%s: sizes too large for BLAS (input %s, weight %s)", op, sx, sw);
  return 0;
}

/* ----------------------------------------------------------------- ops -- */

/* With stride 1 the input gradient is itself a convolution, dx = conv2d(dy, W') with
 * W'[ci, co, i, j] = W[co, ci, kh-1-i, kw-1-j] per group and padding d*(k-1) - p. It
 * gathers columns of dy where col2im would scatter columns of x's size, which is
 * cheaper when dy has no more channels than x. Fills the plan of that product. */
static bool dgrad_as_conv(const conv_plan *p, conv_plan *q) {
  const geom *g = &p->g;
  if (g->sh != 1 || g->sw != 1 || p->cf > g->c)
    return false;
  geom f = {.c = p->cf,
            .h = g->oh,
            .w = g->ow,
            .kh = g->kh,
            .kw = g->kw,
            .sh = 1,
            .sw = 1,
            .ph = g->dh * (g->kh - 1) - g->ph,
            .pw = g->dw * (g->kw - 1) - g->pw,
            .dh = g->dh,
            .dw = g->dw,
            .oh = g->h,
            .ow = g->w};
  *q = (conv_plan){p->dtype, p->n, p->groups, g->c, f};
  return true;
}

/* W' of dgrad_as_conv: [cin, cout/groups, kh, kw] from w [cout, cin/groups, kh, kw]. */
static tg_tensor *flip_weight(const tg_tensor *w, int64_t groups) {
  const int64_t co = w->shape[0], cig = w->shape[1], kk = w->shape[2] * w->shape[3];
  const int64_t cog = co / groups;
  tg_tensor *f =
      tg__new(TG_SHAPE(cig * groups, cog, w->shape[2], w->shape[3]), w->dtype, w->device);
  if (!f)
    return NULL;
  TG_DISPATCH_FLOAT(w->dtype, T, {
    const T *W = tg__data(w);
    T *F = tg__data(f);
    for (int64_t o = 0; o < co; o++)
      for (int64_t c = 0; c < cig; c++)
        for (int64_t k = 0; k < kk; k++)
          F[(((o / cog) * cig + c) * cog + o % cog) * kk + kk - 1 - k] =
              W[(o * cig + c) * kk + k];
  });
  return f;
}

/* The direct kernels (direct.c) take float32 convolutions with stride 1 and one
 * group; fills their description of the forward product. */
static bool direct_forward_plan(const conv_plan *p, direct_conv *d) {
  const geom *g = &p->g;
  if (p->dtype != TG_F32 || p->groups != 1 || g->sh != 1 || g->sw != 1 || p->n == 0 ||
      g->c == 0 || p->cf == 0 || g->oh * g->ow == 0 || !conv_direct_available())
    return false;
  *d = (direct_conv){.n = p->n,
                     .cin = g->c,
                     .h = g->h,
                     .w = g->w,
                     .cout = p->cf,
                     .kh = g->kh,
                     .kw = g->kw,
                     .ph = g->ph,
                     .pw = g->pw,
                     .dh = g->dh,
                     .dw = g->dw,
                     .oh = g->oh,
                     .ow = g->ow};
  return true;
}

/* The input gradient as a direct convolution of dy (see dgrad_as_conv): needs the
 * padding d*(k-1) - p to be >= 0. */
static bool direct_dgrad_plan(const conv_plan *p, direct_conv *d) {
  const geom *g = &p->g;
  direct_conv f;
  if (!direct_forward_plan(p, &f) || g->ph > g->dh * (g->kh - 1) ||
      g->pw > g->dw * (g->kw - 1))
    return false;
  /* input dy [n, cout, oh, ow], output dx [n, cin, h, w] */
  *d = f;
  d->cin = f.cout, d->h = f.oh, d->w = f.ow;
  d->cout = f.cin, d->oh = f.h, d->ow = f.w;
  d->ph = f.dh * (f.kh - 1) - f.ph;
  d->pw = f.dw * (f.kw - 1) - f.pw;
  return true;
}

/* ------------------------------------------------------------ kernels -- */

/* The ops check, plan and record once, then run through the kernel table of their
 * input's device. forward writes y, the op's output (conv2d, or conv_transpose2d when
 * transposed); backward writes each grads[i] that is not NULL (input i needs it: x,
 * w, bias). All tensors on one device; p is the forward product's plan. */
typedef struct {
  int (*forward)(const conv_plan *p, bool transposed, const tg_tensor *x,
                 const tg_tensor *w, const tg_tensor *bias, tg_tensor *y);
  int (*backward)(const conv_plan *p, bool transposed, const tg_tensor *gy,
                  const tg_tensor *x, const tg_tensor *w, tg_tensor *grads[3]);
} conv_kernels;

static void *data_or_null(const tg_tensor *t) { return t ? tg__data(t) : NULL; }

static int forward_cpu(const conv_plan *p, bool transposed, const tg_tensor *x,
                       const tg_tensor *w, const tg_tensor *bias, tg_tensor *y) {
  const void *b = data_or_null(bias);
  direct_conv d;
  if (transposed)
    return col2im_drive(p, tg__data(x), tg__data(w), b, tg__data(y));
  if (direct_forward_plan(p, &d))
    return conv_fast_forward(&d, tg__data(x), tg__data(w), false, b, tg__data(y));
  return im2col_drive(p, tg__data(x), tg__data(w), b, tg__data(y), NULL, NULL);
}

/* conv2d's input gradient dx = col2im(Wᵀ · dy), or as a convolution of dy where that
 * is cheaper (direct kernels, dgrad_as_conv). */
static int conv2d_dgrad_cpu(const conv_plan *p, const tg_tensor *gy, const tg_tensor *w,
                            tg_tensor *dx) {
  conv_plan q;
  direct_conv d;
  if (direct_dgrad_plan(p, &d))
    return conv_fast_forward(&d, tg__data(gy), tg__data(w), true, NULL, tg__data(dx));
  if (dgrad_as_conv(p, &q)) {
    tg_tensor *wf = flip_weight(w, p->groups); /* freed with the backward's scope */
    return wf ? im2col_drive(&q, tg__data(gy), tg__data(wf), NULL, tg__data(dx), NULL,
                             NULL)
              : -1;
  }
  return col2im_drive(p, tg__data(gy), tg__data(w), NULL, tg__data(dx));
}

static int backward_cpu(const conv_plan *p, bool transposed, const tg_tensor *gy,
                        const tg_tensor *x, const tg_tensor *w, tg_tensor *grads[3]) {
  void *dx = data_or_null(grads[0]), *dw = data_or_null(grads[1]);
  tg_tensor *db = grads[2];
  direct_conv d;
  if (transposed) {
    /* dx = W · im2col(dy) and dw = Σ x · im2col(dy)ᵀ share the columns of dy */
    if ((dx || dw) &&
        im2col_drive(p, tg__data(gy), tg__data(w), NULL, dx, tg__data(x), dw) < 0)
      return -1;
  } else {
    if (dw && direct_forward_plan(p, &d)) {
      if (conv_fast_weight_grad(&d, tg__data(x), tg__data(gy), dw, data_or_null(db)) < 0)
        return -1;
      db = NULL; /* summed with dw */
    } else if (dw &&
               im2col_drive(p, tg__data(x), NULL, NULL, NULL, tg__data(gy), dw) < 0) {
      return -1;
    }
    if (dx && conv2d_dgrad_cpu(p, gy, w, grads[0]) < 0)
      return -1;
  }
  if (db)
    bias_grad(gy, db);
  return 0;
}

static const conv_kernels conv_cpu = {forward_cpu, backward_cpu};

#ifdef TG_HAVE_CUDA
/* Column scratch of one chunk of images: enough for large GEMMs, little next to a
 * GPU's memory (the caching allocator keeps it for the next step).
 * TG_CONV_CUDA_CHUNK_BYTES overrides it; the tests run a tiny one (several chunks). */
static size_t chunk_bytes(void) {
  static _Atomic bool warned;
  return (size_t)tg__env_int("TG_CONV_CUDA_CHUNK_BYTES", 1, INT64_MAX, (int64_t)64 << 20,
                             &warned);
}

/* conv.cu's two products, as the CPU's drivers; db a sum over images and pixels
 * (reduce.cu: in double, in a fixed order). */
static int forward_cuda(const conv_plan *p, bool transposed, const tg_tensor *x,
                        const tg_tensor *w, const tg_tensor *bias, tg_tensor *y) {
  const void *b = data_or_null(bias);
  const int dev = x->device.index;
  if (transposed)
    return tg__conv_cuda_col2im(p, tg__data(x), tg__data(w), b, tg__data(y),
                                chunk_bytes(), dev);
  return tg__conv_cuda_im2col(p, tg__data(x), tg__data(w), b, tg__data(y), NULL, NULL,
                              chunk_bytes(), dev);
}

static int backward_cuda(const conv_plan *p, bool transposed, const tg_tensor *gy,
                         const tg_tensor *x, const tg_tensor *w, tg_tensor *grads[3]) {
  void *dx = data_or_null(grads[0]), *dw = data_or_null(grads[1]);
  const int dev = x->device.index;
  if (transposed) {
    if ((dx || dw) && tg__conv_cuda_im2col(p, tg__data(gy), tg__data(w), NULL, dx,
                                           tg__data(x), dw, chunk_bytes(), dev) < 0)
      return -1;
  } else if ((dw && tg__conv_cuda_im2col(p, tg__data(x), NULL, NULL, NULL, tg__data(gy),
                                         dw, chunk_bytes(), dev) < 0) ||
             (dx && tg__conv_cuda_col2im(p, tg__data(gy), tg__data(w), NULL, dx,
                                         chunk_bytes(), dev) < 0)) {
    return -1;
  }
  if (!grads[2])
    return 0;
  const int64_t n = gy->shape[0], c = gy->shape[1], hw = gy->shape[2] * gy->shape[3];
  return tg__reduce_cuda_sum(gy->dtype, tg__data(gy), 1, (int64_t[]){c}, (int64_t[]){hw},
                             2, (int64_t[]){n, hw}, (int64_t[]){c * hw, 1}, c, n * hw,
                             tg__data(grads[2]), dev);
}

static const conv_kernels conv_cuda = {forward_cuda, backward_cuda};
#endif

static const conv_kernels *pick(const char *op, const tg_tensor *x) {
  return tg__pick(op, x, &conv_cpu, TG_IF_CUDA(&conv_cuda));
}

static int conv_backward(tg_node *node, const tg_tensor *gy, tg_tensor **gi,
                         bool transposed) {
  const conv_kernels *k = pick(node->op, node->inputs[0]);
  if (!k)
    return -1;
  for (int i = 0; i < 3; i++)
    if (tg__input_needs_grad(node, i) && !(gi[i] = tg__new_like(node->inputs[i])))
      return -1;
  return k->backward(node->ctx, transposed, gy, node->inputs[0], node->inputs[1], gi);
}

static int conv2d_backward(tg_node *node, const tg_tensor *gy, tg_tensor **gi) {
  return conv_backward(node, gy, gi, false);
}

static int conv_transpose2d_backward(tg_node *node, const tg_tensor *gy, tg_tensor **gi) {
  return conv_backward(node, gy, gi, true);
}

static tg_tensor *conv_impl(const char *op, const tg_tensor *x, const tg_tensor *w,
                            const tg_tensor *bias, const conv_params *cp) {
  if (!tg__nonnull(x, op, "input") || !tg__nonnull(w, op, "weight"))
    return NULL;
  const tg_tensor *in[3] = {x, w, bias};
  if (tg__check_same(op, 3, in, true) < 0)
    return NULL;
  conv_plan plan;
  int64_t out_shape[4];
  const conv_kernels *k;
  if (conv_check(op, x, w, bias, cp, &plan, out_shape) < 0 || !(k = pick(op, x)))
    return NULL;
  tg_tensor *out = tg__new(out_shape, 4, x->dtype, x->device);
  if (!out || k->forward(&plan, cp->transposed, x, w, bias, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  tg_node *node;
  out = tg__finish(op, out, 3, in,
                   cp->transposed ? conv_transpose2d_backward : conv2d_backward, &node);
  if (node)
    *(conv_plan *)tg__ctx(node, sizeof plan) = plan;
  return out;
}

tg_tensor *tg_conv2d(const tg_tensor *x, const tg_tensor *weight, const tg_tensor *bias,
                     const int64_t stride[2], const int64_t padding[2],
                     const int64_t dilation[2], int64_t groups) {
  if (x && x->ndim == 3) { /* unbatched [C, H, W], as PyTorch */
    tg_tensor *xb = tg__add_batch(x);
    tg_tensor *y =
        tg__drop_batch(tg_conv2d(xb, weight, bias, stride, padding, dilation, groups));
    tg_tensor_free(xb);
    return y;
  }
  conv_params cp = {.groups = groups};
  pair_or(cp.stride, stride, 1);
  pair_or(cp.padding, padding, 0);
  pair_or(cp.dilation, dilation, 1);
  return conv_impl("tg_conv2d", x, weight, bias, &cp);
}

tg_tensor *tg_conv_transpose2d(const tg_tensor *x, const tg_tensor *weight,
                               const tg_tensor *bias, const int64_t stride[2],
                               const int64_t padding[2], const int64_t output_padding[2],
                               const int64_t dilation[2], int64_t groups) {
  if (x && x->ndim == 3) { /* unbatched [C, H, W], as PyTorch */
    tg_tensor *xb = tg__add_batch(x);
    tg_tensor *y = tg__drop_batch(tg_conv_transpose2d(xb, weight, bias, stride, padding,
                                                      output_padding, dilation, groups));
    tg_tensor_free(xb);
    return y;
  }
  conv_params cp = {.groups = groups, .transposed = true};
  pair_or(cp.stride, stride, 1);
  pair_or(cp.padding, padding, 0);
  pair_or(cp.output_padding, output_padding, 0);
  pair_or(cp.dilation, dilation, 1);
  return conv_impl("tg_conv_transpose2d", x, weight, bias, &cp);
}
