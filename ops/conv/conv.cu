/* The convolutions on CUDA (conv.c's table calls these): the CPU drivers' two
 * products, im2col and col2im kernels around cuBLAS GEMMs (TF32 off, runtime/cuda.c).
 *
 * A batch runs in chunks of images whose columns fit the scratch budget; in a
 * chunk, each (image, group) pair is one GEMM, launched as one strided-batched call
 * per group over the chunk's images or per image over its groups, whichever makes
 * fewer calls (cuBLAS takes one stride per operand).
 *  - im2col: one thread per column element, zero outside the image;
 *  - col2im: one thread per image element, gathering its taps' column entries in tap
 *    order from the bias (the order in which the CPU's scatter adds them): no atomics;
 *  - the weight gradient: every (image, group) product into its own slice of a
 *    partial buffer, then one thread per weight element adds the chunk's slices in
 *    image order, in double, to the previous chunks' sum: the same bits every run.
 * A 1x1 kernel with stride 1 and no padding reads (col2im: writes) the image itself in
 * place of the columns. */
#include "runtime/cuda_common.cuh"

#include "ops/conv/conv_cuda.h"

#include <limits.h>

namespace {

bool is_identity(const tg__conv_geom &g) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 &&
         g.oh == g.h && g.ow == g.w;
}

size_t elem_size(tg_dtype dt) { return dt == TG_F32 ? sizeof(float) : sizeof(double); }

/* Images per chunk when each needs per_image bytes of scratch. */
int64_t chunk_images(int64_t n, size_t per_image, size_t chunk_bytes) {
  int64_t nb = per_image ? (int64_t)(chunk_bytes / per_image) : n;
  nb = nb < 1 ? 1 : nb > n ? n : nb;
  return nb > INT_MAX ? INT_MAX : nb; /* cuBLAS's batch count is an int */
}

/* cols[b][(c*kh + i)*kw + j][oy*ow + ox] = img[b][c][oy*sh - ph + i*dh][ox*sw - pw +
 * j*dw], zero outside the image, for n images. */
template <typename T>
__global__ void im2col_kernel(tg__conv_geom g, int64_t n, const T *img, T *cols) {
  const int64_t L = g.oh * g.ow, kk = g.kh * g.kw, rows = g.c * kk, total = n * rows * L;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t l = e % L, r = e / L % rows, b = e / (L * rows);
    const int64_t c = r / kk, i = r % kk / g.kw, j = r % g.kw;
    const int64_t iy = l / g.ow * g.sh - g.ph + i * g.dh;
    const int64_t ix = l % g.ow * g.sw - g.pw + j * g.dw;
    cols[e] = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w
                  ? img[((b * g.c + c) * g.h + iy) * g.w + ix]
                  : T(0);
  }
}

/* The grid position along one axis whose tap k meets pixel p (o*s - pad + k*d = p),
 * or -1 when there is none. */
__device__ inline int64_t position_of(int64_t p, int64_t pad, int64_t k, int64_t d,
                                      int64_t s, int64_t grid) {
  const int64_t t = p + pad - k * d;
  if (t < 0 || t % s != 0 || t / s >= grid)
    return -1;
  return t / s;
}

/* img[b][c][y][x] = bias[c] (0 without) + the column entries of every tap meeting the
 * pixel, taps in order (i, j): the adjoint of im2col_kernel, for n images. */
template <typename T>
__global__ void col2im_kernel(tg__conv_geom g, int64_t n, const T *cols, const T *bias,
                              T *img) {
  const int64_t L = g.oh * g.ow, kk = g.kh * g.kw, hw = g.h * g.w, total = n * g.c * hw;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t x = e % g.w, y = e / g.w % g.h, bc = e / hw, c = bc % g.c;
    const T *col = cols + bc * kk * L; /* rows c*kk... of image bc / g.c */
    T v = bias ? bias[c] : T(0);
    for (int64_t i = 0; i < g.kh; i++) {
      const int64_t oy = position_of(y, g.ph, i, g.dh, g.sh, g.oh);
      if (oy < 0)
        continue;
      for (int64_t j = 0; j < g.kw; j++) {
        const int64_t ox = position_of(x, g.pw, j, g.dw, g.sw, g.ow);
        if (ox >= 0)
          v += col[(i * g.kw + j) * L + oy * g.ow + ox];
      }
    }
    img[e] = v;
  }
}

/* dw[k] = (accumulate ? dw[k] : 0) + Σ_b part[b * nw + k], in image order, in double. */
template <typename T>
__global__ void sum_images(const T *part, int64_t n, int64_t nw, bool accumulate, T *dw) {
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < nw;
       k += (int64_t)gridDim.x * blockDim.x) {
    double acc = accumulate ? (double)dw[k] : 0.0;
    for (int64_t b = 0; b < n; b++)
      acc += (double)part[b * nw + k];
    dw[k] = (T)acc;
  }
}

/* An operand of the per-(image, group) GEMMs: matrix (b, q) starts at
 * p + b*img + q*grp elements, rows ld apart. */
struct operand {
  const void *p;
  int64_t ld, img, grp;
};

const void *offset(const void *p, int64_t elems, size_t es) {
  return (const char *)p + (size_t)elems * es;
}

/* C_bq = op(A_bq) · op(B_bq) + beta·C_bq for the nb images of a chunk and every group,
 * C_bq at c + b*c_img + q*c_grp: one strided-batched call per group (over the images)
 * or per image (over the groups), the fewer. */
int gemm_grid(const tg__conv_plan &p, int device, int64_t nb, bool ta, bool tb, int64_t M,
              int64_t N, int64_t K, operand a, operand b, double beta, void *c,
              int64_t c_img, int64_t c_grp) {
  const size_t es = elem_size(p.dtype);
  const bool over_images = nb >= p.groups;
  const int64_t calls = over_images ? p.groups : nb, batch = over_images ? nb : p.groups;
  for (int64_t t = 0; t < calls; t++) {
    const int64_t ao = t * (over_images ? a.grp : a.img),
                  as = over_images ? a.img : a.grp;
    const int64_t bo = t * (over_images ? b.grp : b.img),
                  bs = over_images ? b.img : b.grp;
    const int64_t co = t * (over_images ? c_grp : c_img),
                  cs = over_images ? c_img : c_grp;
    if (tg__cuda_gemm(p.dtype, device, ta, tb, M, N, K, offset(a.p, ao, es), a.ld, as,
                      offset(b.p, bo, es), b.ld, bs, beta, (void *)offset(c, co, es), cs,
                      batch) < 0)
      return -1;
  }
  return 0;
}

/* out [n, ch, len] = bias[ch] broadcast (a strided copy with stride 0). */
int broadcast_bias(const tg__conv_plan &p, const void *bias, int64_t n, int64_t ch,
                   int64_t len, void *out, int device) {
  const int64_t shape[3] = {n, ch, len}, dst[3] = {ch * len, len, 1}, src[3] = {0, 1, 0};
  return tg__cuda_strided_copy(out, dst, 0, bias, src, 0, shape, 3, n * ch * len,
                               elem_size(p.dtype), device);
}

} // namespace

extern "C" int tg__conv_cuda_im2col(const tg__conv_plan *pp, const void *image,
                                    const void *w, const void *bias, void *flat_out,
                                    const void *flat_in, void *dw, size_t chunk_bytes,
                                    int device) {
  const tg__conv_plan &p = *pp;
  const tg__conv_geom &g = p.g;
  const size_t es = elem_size(p.dtype);
  const int64_t L = g.oh * g.ow, kg = g.c / p.groups * g.kh * g.kw, cfg = p.cf / p.groups;
  const int64_t rows = g.c * g.kh * g.kw, nw = p.cf * kg;
  if (!tg_stream(device))
    return -1;
  /* The bias first (the GEMMs add to it, as the CPU's), zeros where no GEMM runs (no
   * input channels); a weight gradient of no images is zero. */
  int rc = 0;
  if (flat_out && bias)
    rc = broadcast_bias(p, bias, p.n, p.cf, L, flat_out, device);
  else if (flat_out && kg == 0)
    rc = tg__cuda_fill(flat_out, p.dtype, p.n * p.cf * L, 0, device);
  if (rc == 0 && dw && (p.n == 0 || L == 0))
    rc = tg__cuda_fill(dw, p.dtype, nw, 0, device);
  if (rc < 0 || p.n == 0 || L == 0 || kg == 0)
    return rc;
  const bool direct = is_identity(g);
  const size_t col_bytes = direct ? 0 : (size_t)(rows * L) * es;
  const size_t part_bytes = dw ? (size_t)nw * es : 0;
  const int64_t nb = chunk_images(p.n, col_bytes + part_bytes, chunk_bytes);
  const size_t scratch_bytes = (size_t)nb * (col_bytes + part_bytes);
  char *scratch = NULL;
  if (scratch_bytes && !(scratch = (char *)tg__cuda_malloc(scratch_bytes, device)))
    return -1;
  char *part = dw ? scratch + (size_t)nb * col_bytes : NULL;
  for (int64_t b0 = 0; rc == 0 && b0 < p.n; b0 += nb) {
    const int64_t m = nb < p.n - b0 ? nb : p.n - b0;
    const void *img = offset(image, b0 * g.c * g.h * g.w, es);
    const void *cols = direct ? img : scratch;
    if (!direct)
      rc = tg_launch_float(p.dtype, m * rows * L, device,
                           [&](auto z, unsigned blocks, cudaStream_t st) {
                             using T = decltype(z);
                             TG_LAUNCH(im2col_kernel<T>, blocks, TG_THREADS, 0, st, g, m,
                                       (const T *)img, (T *)scratch);
                             return TG_CUDA_LAUNCHED(im2col_kernel);
                           });
    const operand col_op = {cols, L, rows * L, kg * L};
    if (rc == 0 && flat_out)
      rc = gemm_grid(p, device, m, false, false, cfg, L, kg, {w, kg, 0, cfg * kg}, col_op,
                     bias ? 1.0 : 0.0, (void *)offset(flat_out, b0 * p.cf * L, es),
                     p.cf * L, cfg * L);
    if (rc == 0 && dw)
      rc = gemm_grid(p, device, m, false, true, cfg, kg, L,
                     {offset(flat_in, b0 * p.cf * L, es), L, p.cf * L, cfg * L}, col_op,
                     0.0, part, nw, cfg * kg);
    if (rc == 0 && dw)
      rc = tg_launch_float(p.dtype, nw, device,
                           [&](auto z, unsigned blocks, cudaStream_t st) {
                             using T = decltype(z);
                             TG_LAUNCH(sum_images<T>, blocks, TG_THREADS, 0, st,
                                       (const T *)part, m, nw, b0 > 0, (T *)dw);
                             return TG_CUDA_LAUNCHED(sum_images);
                           });
  }
  if (scratch)
    tg__cuda_free(scratch, scratch_bytes, device); /* stream-ordered: after the above */
  return rc;
}

extern "C" int tg__conv_cuda_col2im(const tg__conv_plan *pp, const void *flat_in,
                                    const void *w, const void *bias, void *image_out,
                                    size_t chunk_bytes, int device) {
  const tg__conv_plan &p = *pp;
  const tg__conv_geom &g = p.g;
  const size_t es = elem_size(p.dtype);
  const int64_t L = g.oh * g.ow, kg = g.c / p.groups * g.kh * g.kw, cfg = p.cf / p.groups;
  const int64_t rows = g.c * g.kh * g.kw, img = g.c * g.h * g.w;
  if (!tg_stream(device))
    return -1;
  if (p.n == 0 || img == 0)
    return 0;
  const bool direct = is_identity(g);
  /* The 1x1 product adds to the bias in place, as the CPU's; with no grid positions
   * (no GEMM) the image is the bias alone. */
  int rc = 0;
  if ((direct || L == 0) && bias)
    rc = broadcast_bias(p, bias, p.n, g.c, g.h * g.w, image_out, device);
  else if (L == 0)
    rc = tg__cuda_fill(image_out, p.dtype, p.n * img, 0, device);
  if (rc < 0 || L == 0)
    return rc;
  const size_t col_bytes = direct ? 0 : (size_t)(rows * L) * es;
  const int64_t nb = chunk_images(p.n, col_bytes, chunk_bytes);
  const size_t scratch_bytes = (size_t)nb * col_bytes;
  char *scratch = NULL;
  if (scratch_bytes && !(scratch = (char *)tg__cuda_malloc(scratch_bytes, device)))
    return -1;
  for (int64_t b0 = 0; rc == 0 && b0 < p.n; b0 += nb) {
    const int64_t m = nb < p.n - b0 ? nb : p.n - b0;
    void *dst = (void *)offset(image_out, b0 * img, es);
    rc = gemm_grid(p, device, m, true, false, kg, L, cfg, {w, kg, 0, cfg * kg},
                   {offset(flat_in, b0 * p.cf * L, es), L, p.cf * L, cfg * L},
                   direct && bias ? 1.0 : 0.0, direct ? dst : scratch,
                   direct ? img : rows * L, kg * L);
    if (rc == 0 && !direct)
      rc = tg_launch_float(p.dtype, m * img, device,
                           [&](auto z, unsigned blocks, cudaStream_t st) {
                             using T = decltype(z);
                             TG_LAUNCH(col2im_kernel<T>, blocks, TG_THREADS, 0, st, g, m,
                                       (const T *)scratch, (const T *)bias, (T *)dst);
                             return TG_CUDA_LAUNCHED(col2im_kernel);
                           });
  }
  if (scratch)
    tg__cuda_free(scratch, scratch_bytes, device);
  return rc;
}
