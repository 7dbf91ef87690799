/* Direct float32 convolution kernels (stride 1, one group) for AVX2 + FMA.
 *
 * Why: im2col + GEMM copies every input pixel kh*kw times into columns and then packs
 * them again inside the GEMM; with the small channel counts of typical conv nets
 * (16-96) those copies cost about as much as the multiply-adds. Here nothing is
 * copied but a zero-padded slab of input rows: with stride 1, output pixel (oy, ox)
 * and kernel tap k = (c, i, j) read slab[c][oy + i*dh][ox + j*dw], so a run of output
 * pixels of one row reads a run of the slab at a fixed offset off[k] — the columns of
 * an implicit GEMM, read in place.
 *
 *   forward   tile of 4 output channels x 16 pixels of a row in 8 AVX registers:
 *             acc[r] += w[o+r][k] * slab[off[k] + ox .. +16] over all k;
 *   dx        the same kernel on dy with the flipped, transposed weight (stride 1);
 *   dw        tile of 4 output channels x 3 taps, 12 registers, summed over pixels:
 *             acc[r][t] += dy[o+r][pixels] * slab[off[k+t] + pixels].
 *
 * Work is split over (image, block of output rows) items, each on one thread with its
 * own slab (sized to stay in L2); the weight gradient sums per thread and adds the
 * partial sums at the end. */
#include "ops/conv/direct.h"

#include "runtime/internal.h"

#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_DIRECT 1
#include <immintrin.h>
#define TARGET __attribute__((target("avx2,fma")))
#define INLINE __attribute__((always_inline)) inline
#else
#define HAVE_DIRECT 0
#endif

bool conv_direct_available(void) {
#if HAVE_DIRECT
  static atomic_int state; /* 0 unknown, 1 yes, 2 no; racing threads store the same */
  int s = atomic_load_explicit(&state, memory_order_relaxed);
  if (!s) {
    static _Atomic bool warned;
    bool on = tg__env_int("TG_CONV_DIRECT", 0, 1, 1, &warned) != 0;
    __builtin_cpu_init();
    s = on && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 2;
    atomic_store_explicit(&state, s, memory_order_relaxed);
  }
  return s == 1;
#else
  return false;
#endif
}

#if HAVE_DIRECT

enum {
  MR = 4,                 /* output channels per tile */
  NR = 16,                /* pixels per forward tile (two vectors) */
  KT = 3,                 /* taps per weight-gradient tile */
  SLAB_BYTES = 192 << 10, /* target size of one thread's input slab */
};

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static size_t round_up(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* ------------------------------------------------------------- slabs -- */

/* Items are (image, block of `rows` output rows); the slab of a block holds its input
 * rows zero-padded, [cin][rows + (kh-1)*dh][ow + (kw-1)*dw], or is the image itself
 * when there is no padding. */
typedef struct {
  int64_t rows, nblk, items;
  int64_t sw, srows, cs; /* slab row length, rows, channel stride */
  int64_t simg;          /* image stride of consecutive slabs */
  int64_t group;         /* whole-image items: images per slab group (weight grad) */
  bool copy;             /* false: no padding, the slab is the image */
  int nt;                /* pieces of work: threads (forward) or reduction parts */
} layout;

/* Items for `pieces` pieces of work of `work` operations in all. */
static layout plan_layout(const direct_conv *d, int pieces) {
  layout l;
  l.copy = d->ph > 0 || d->pw > 0;
  l.sw = l.copy ? d->ow + (d->kw - 1) * d->dw : d->w;
  const int64_t halo = (d->kh - 1) * d->dh;
  const int64_t row_bytes = d->cin * l.sw * (int64_t)sizeof(float);
  int64_t rows = SLAB_BYTES / (row_bytes ? row_bytes : 1) - halo;
  rows = rows < 1 ? 1 : rows > d->oh ? d->oh : rows;
  l.nt = pieces;
  if (d->n * ceil_div(d->oh, rows) < l.nt) /* small batch: split the rows more */
    rows = ceil_div(d->oh, ceil_div(l.nt, d->n));
  l.nblk = ceil_div(d->oh, rows);
  l.rows = ceil_div(d->oh, l.nblk); /* equal blocks */
  l.items = d->n * l.nblk;
  if (l.items < l.nt)
    l.nt = (int)l.items;
  l.srows = l.copy ? l.rows + halo : d->h;
  l.cs = l.srows * l.sw;
  l.simg = d->cin * l.cs;
  const int64_t img_bytes = l.simg * (int64_t)sizeof(float);
  l.group = l.nblk == 1 && img_bytes ? SLAB_BYTES / img_bytes : 1;
  l.group = l.group < 1 ? 1 : l.group;
  return l;
}

/* The slab of output rows [oy0, oy1) of image x (all channels); returns a pointer to
 * the slab row of output row oy0. Rows are short (tens of floats): plain loops, which
 * the compiler vectorises inline, cost less than a memcpy and two memset calls each. */
static const float *make_slab(const direct_conv *d, const layout *l, const float *x,
                              int64_t oy0, int64_t oy1, float *slab) {
  if (!l->copy)
    return x + oy0 * d->w;
  const int64_t srows = oy1 - oy0 + (d->kh - 1) * d->dh, pw = d->pw, w = d->w;
  const int64_t right = l->sw - pw - w; /* >= 0 for stride 1 */
  for (int64_t c = 0; c < d->cin; c++)
    for (int64_t r = 0; r < srows; r++) {
      float *restrict dst = slab + c * l->cs + r * l->sw;
      const int64_t iy = oy0 - d->ph + r;
      if (iy < 0 || iy >= d->h) {
        for (int64_t k = 0; k < l->sw; k++)
          dst[k] = 0;
        continue;
      }
      const float *restrict src = x + (c * d->h + iy) * w;
      for (int64_t k = 0; k < pw; k++)
        dst[k] = 0;
      for (int64_t k = 0; k < w; k++)
        dst[pw + k] = src[k];
      for (int64_t k = 0; k < right; k++)
        dst[pw + w + k] = 0;
    }
  return slab;
}

/* off[k] for tap k = (c, i, j): where it reads, relative to the output pixel. */
static void tap_offsets(const direct_conv *d, const layout *l, int64_t *off) {
  for (int64_t c = 0, k = 0; c < d->cin; c++)
    for (int64_t i = 0; i < d->kh; i++)
      for (int64_t j = 0; j < d->kw; j++)
        off[k++] = c * l->cs + i * d->dh * l->sw + j * d->dw;
}

/* Lanes [0, n) of a vector. */
TARGET static INLINE __m256i lane_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ----------------------------------------------------------- forward -- */

/* wp[cb][k][MR] = W[cb*MR + r][k] (rows past cout are zero); with flip, W comes from
 * the transposed, flipped w2 [cin, cout, kh, kw] (see direct.h). */
static void pack_weights(const direct_conv *d, const float *w, bool flip, float *wp) {
  const int64_t kk = d->kh * d->kw, K = d->cin * kk, nb = ceil_div(d->cout, MR);
  for (int64_t cb = 0; cb < nb; cb++)
    for (int64_t r = 0; r < MR; r++) {
      const int64_t o = cb * MR + r;
      float *dst = wp + cb * K * MR + r;
      if (o >= d->cout) {
        for (int64_t k = 0; k < K; k++)
          dst[k * MR] = 0;
      } else if (!flip) {
        for (int64_t k = 0; k < K; k++)
          dst[k * MR] = w[o * K + k];
      } else {
        for (int64_t c = 0; c < d->cin; c++)
          for (int64_t t = 0; t < kk; t++)
            dst[(c * kk + t) * MR] = w[(c * d->cout + o) * kk + kk - 1 - t];
      }
    }
}

/* Stores row r of a tile: vectors v0 (and v1 when nv == 2), the last one masked. */
TARGET static INLINE void store_row(int nv, bool masked, __m256i m, float *dst, __m256 v0,
                                    __m256 v1) {
  if (nv == 1) {
    if (masked)
      _mm256_maskstore_ps(dst, m, v0);
    else
      _mm256_storeu_ps(dst, v0);
    return;
  }
  _mm256_storeu_ps(dst, v0);
  if (masked)
    _mm256_maskstore_ps(dst + 8, m, v1);
  else
    _mm256_storeu_ps(dst + 8, v1);
}

/* One tile: rows r < mr of y (channel stride ldy) at pixels [0, n), n <= nv*8,
 *   y[r][p] = bias[r] + Σ_k wp[k][r] * src[off[k] + p].
 * nv vectors per row; with `masked`, the last one covers only n - (nv-1)*8 lanes and
 * its loads never touch memory past them. The accumulators are named variables, not
 * an array: GCC keeps arrays of vectors in memory. */
TARGET static INLINE void fwd_tile(int nv, bool masked, const float *wp, const float *src,
                                   const int64_t *off, int64_t K, const float *bias,
                                   float *y, int64_t ldy, int mr, int64_t n) {
  const __m256i m = lane_mask(n - (nv - 1) * 8);
  __m256 c00, c01, c10, c11, c20, c21, c30, c31;
  c00 = c10 = c20 = c30 = _mm256_setzero_ps();
  if (bias) {
    c00 = _mm256_set1_ps(bias[0]);
    c10 = mr > 1 ? _mm256_set1_ps(bias[1]) : c10;
    c20 = mr > 2 ? _mm256_set1_ps(bias[2]) : c20;
    c30 = mr > 3 ? _mm256_set1_ps(bias[3]) : c30;
  }
  c01 = c00, c11 = c10, c21 = c20, c31 = c30;
  for (int64_t k = 0; k < K; k++) {
    const float *s = src + off[k], *w = wp + k * MR;
    __m256 b0, b1 = _mm256_setzero_ps();
    if (nv == 1) {
      b0 = masked ? _mm256_maskload_ps(s, m) : _mm256_loadu_ps(s);
    } else {
      b0 = _mm256_loadu_ps(s);
      b1 = masked ? _mm256_maskload_ps(s + 8, m) : _mm256_loadu_ps(s + 8);
    }
    __m256 a = _mm256_broadcast_ss(w);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = nv == 2 ? _mm256_fmadd_ps(a, b1, c01) : c01;
    a = _mm256_broadcast_ss(w + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10);
    c11 = nv == 2 ? _mm256_fmadd_ps(a, b1, c11) : c11;
    a = _mm256_broadcast_ss(w + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20);
    c21 = nv == 2 ? _mm256_fmadd_ps(a, b1, c21) : c21;
    a = _mm256_broadcast_ss(w + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30);
    c31 = nv == 2 ? _mm256_fmadd_ps(a, b1, c31) : c31;
  }
  store_row(nv, masked, m, y, c00, c01);
  if (mr > 1)
    store_row(nv, masked, m, y + ldy, c10, c11);
  if (mr > 2)
    store_row(nv, masked, m, y + 2 * ldy, c20, c21);
  if (mr > 3)
    store_row(nv, masked, m, y + 3 * ldy, c30, c31);
}

#define FWD_TILE(NAME, NV, MASKED)                                                       \
  TARGET static void NAME(const float *wp, const float *src, const int64_t *off,         \
                          int64_t K, const float *bias, float *y, int64_t ldy, int mr,   \
                          int64_t n) {                                                   \
    fwd_tile(NV, MASKED, wp, src, off, K, bias, y, ldy, mr, n);                          \
  }
FWD_TILE(fwd_tile_16, 2, false)
FWD_TILE(fwd_tile_16m, 2, true)
FWD_TILE(fwd_tile_8m, 1, true)

/* Output rows [oy0, oy1) of one image. */
static void fwd_rows(const direct_conv *d, const layout *l, const float *slab,
                     const float *wp, const int64_t *off, const float *bias, float *y,
                     int64_t oy0, int64_t oy1) {
  const int64_t K = d->cin * d->kh * d->kw, plane = d->oh * d->ow;
  for (int64_t oy = oy0; oy < oy1; oy++) {
    const float *src = slab + (oy - oy0) * l->sw;
    for (int64_t o = 0; o < d->cout; o += MR) {
      const int mr = d->cout - o < MR ? (int)(d->cout - o) : MR;
      const float *w = wp + o * K, *b = bias ? bias + o : NULL;
      float *dst = y + o * plane + oy * d->ow;
      int64_t ox = 0;
      for (; ox + NR <= d->ow; ox += NR)
        fwd_tile_16(w, src + ox, off, K, b, dst + ox, plane, mr, NR);
      if (d->ow - ox > 8)
        fwd_tile_16m(w, src + ox, off, K, b, dst + ox, plane, mr, d->ow - ox);
      else if (d->ow > ox)
        fwd_tile_8m(w, src + ox, off, K, b, dst + ox, plane, mr, d->ow - ox);
    }
  }
}

int conv_direct_forward(const direct_conv *d, const float *x, const float *w, bool flip,
                        const float *bias, float *y) {
  const int64_t K = d->cin * d->kh * d->kw;
  layout l = plan_layout(d, tg__threads(d->n * d->cout * d->oh * d->ow * K));
  const size_t wp_bytes = round_up((size_t)(ceil_div(d->cout, MR) * MR * K) * 4);
  const size_t off_bytes = round_up((size_t)K * sizeof(int64_t));
  const size_t slab_bytes = l.copy ? round_up((size_t)(d->cin * l.cs) * 4) : 0;
  const size_t bytes = wp_bytes + off_bytes + (size_t)l.nt * slab_bytes;
  char *buf = conv_workspace_get(bytes);
  if (!buf) /* named by the op running (tg_conv2d, tg_conv_transpose2d, a backward) */
    return tg__oom(bytes, "cpu", NULL);
  float *wp = (float *)buf;
  int64_t *off = (int64_t *)(buf + wp_bytes);
  pack_weights(d, w, flip, wp);
  tap_offsets(d, &l, off);
  const int64_t img = d->cin * d->h * d->w, out = d->cout * d->oh * d->ow;
  /* dynamic: items write disjoint outputs, and a thread that the OS preempts (a busy
   * machine) does not hold up the others for its whole share */
#pragma omp parallel for schedule(dynamic, 1) num_threads(l.nt)
  for (int64_t it = 0; it < l.items; it++) {
    float *slab =
        (float *)(buf + wp_bytes + off_bytes + (size_t)omp_get_thread_num() * slab_bytes);
    const int64_t b = it / l.nblk, oy0 = it % l.nblk * l.rows;
    const int64_t oy1 = oy0 + l.rows < d->oh ? oy0 + l.rows : d->oh;
    const float *s = make_slab(d, &l, x + b * img, oy0, oy1, slab);
    fwd_rows(d, &l, s, wp, off, bias, y + b * out, oy0, oy1);
  }
  conv_workspace_put(buf);
  return 0;
}

/* ------------------------------------------------------- weight grad -- */

/* Sums of the 4 vectors v[0..3] into one 128-bit vector {Σv0, Σv1, Σv2, Σv3}. */
TARGET static INLINE __m128 hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* Pixels of a weight-gradient tile: `rows` output rows of `nimg` images; image i's
 * rows start at dy + i*dy_img (row stride ow, channel stride ldy) and at
 * src + i*src_img (row stride sw). */
typedef struct {
  int64_t ldy, dy_img, sw, src_img, rows, ow, nimg;
} wgrad_px;

/* One vector of pixels at p: x<t> = src[off[t] + p..], d = dy[r][p..] for each row r,
 * a<r><t> += d * x<t>. LOAD(ptr) reads a vector. x and d are pinned in registers: as
 * memory operands of the FMAs (GCC's choice) they would be loaded once per use, 15
 * loads for 12 FMAs instead of 7. */
#define WGRAD_STEP(LOAD, p)                                                              \
  do {                                                                                   \
    __m256 x0 = LOAD(s + o0 + (p)), x1 = kt > 1 ? LOAD(s + o1 + (p)) : z;                \
    __m256 x2 = kt > 2 ? LOAD(s + o2 + (p)) : z, d = LOAD(g + (p));                      \
    __asm__("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(d));                                 \
    a00 = _mm256_fmadd_ps(d, x0, a00);                                                   \
    a01 = kt > 1 ? _mm256_fmadd_ps(d, x1, a01) : a01;                                    \
    a02 = kt > 2 ? _mm256_fmadd_ps(d, x2, a02) : a02;                                    \
    if (mr > 1) {                                                                        \
      d = LOAD(g + ldy + (p));                                                           \
      __asm__("" : "+x"(d));                                                             \
      a10 = _mm256_fmadd_ps(d, x0, a10);                                                 \
      a11 = kt > 1 ? _mm256_fmadd_ps(d, x1, a11) : a11;                                  \
      a12 = kt > 2 ? _mm256_fmadd_ps(d, x2, a12) : a12;                                  \
    }                                                                                    \
    if (mr > 2) {                                                                        \
      d = LOAD(g + 2 * ldy + (p));                                                       \
      __asm__("" : "+x"(d));                                                             \
      a20 = _mm256_fmadd_ps(d, x0, a20);                                                 \
      a21 = kt > 1 ? _mm256_fmadd_ps(d, x1, a21) : a21;                                  \
      a22 = kt > 2 ? _mm256_fmadd_ps(d, x2, a22) : a22;                                  \
    }                                                                                    \
    if (mr > 3) {                                                                        \
      d = LOAD(g + 3 * ldy + (p));                                                       \
      __asm__("" : "+x"(d));                                                             \
      a30 = _mm256_fmadd_ps(d, x0, a30);                                                 \
      a31 = kt > 1 ? _mm256_fmadd_ps(d, x1, a31) : a31;                                  \
      a32 = kt > 2 ? _mm256_fmadd_ps(d, x2, a32) : a32;                                  \
    }                                                                                    \
  } while (0)

/* dw[r][t] += Σ over the pixels of dy[r][pixel] * src[pixel + off[t]], for r < mr and
 * t < kt; dw has row stride ldw. Accumulator a<r><t> is a named variable (see
 * fwd_tile).
 * A row's last ow % 8 pixels: when ow >= 8, the vector ending at the row's end, its
 * lanes already counted zeroed by an AND on both operands (x too, so that an Inf
 * there cannot turn into 0 * Inf); masked loads would need one more register and
 * spill an accumulator. Rows shorter than 8 use masked loads. */
TARGET static INLINE void wgrad_tile(int mr, int kt, const float *dy, const float *src,
                                     const int64_t *off, const wgrad_px *px, float *dw,
                                     int64_t ldw) {
  const int64_t ldy = px->ldy, ow = px->ow, full = ow / 8 * 8, rem = ow - full;
  const __m256 z = _mm256_setzero_ps();
  __m256 a00 = z, a01 = z, a02 = z, a10 = z, a11 = z, a12 = z;
  __m256 a20 = z, a21 = z, a22 = z, a30 = z, a31 = z, a32 = z;
  const __m256i m = lane_mask(rem);                           /* lanes [0, rem) */
  const __m256 top = _mm256_castsi256_ps(lane_mask(8 - rem)); /* lanes [8 - rem, 8) */
  const int64_t o0 = off[0], o1 = kt > 1 ? off[1] : 0, o2 = kt > 2 ? off[2] : 0;
#define LOADU(ptr) _mm256_loadu_ps(ptr)
#define LOADTOP(ptr) _mm256_andnot_ps(top, _mm256_loadu_ps(ptr))
#define LOADMASK(ptr) _mm256_maskload_ps(ptr, m)
  for (int64_t i = 0; i < px->nimg; i++)
    for (int64_t row = 0; row < px->rows; row++) {
      const float *g = dy + i * px->dy_img + row * ow;
      const float *s = src + i * px->src_img + row * px->sw;
      for (int64_t p = 0; p < full; p += 8)
        WGRAD_STEP(LOADU, p);
      if (rem && full)
        WGRAD_STEP(LOADTOP, ow - 8);
      else if (rem)
        WGRAD_STEP(LOADMASK, 0);
    }
#undef LOADU
#undef LOADTOP
#undef LOADMASK
  float sums[KT][4];
  _mm_storeu_ps(sums[0], hsum4(a00, a10, a20, a30));
  _mm_storeu_ps(sums[1], hsum4(a01, a11, a21, a31));
  _mm_storeu_ps(sums[2], hsum4(a02, a12, a22, a32));
  for (int t = 0; t < kt; t++)
    for (int r = 0; r < mr; r++)
      dw[r * ldw + t] += sums[t][r];
}

/* The 12 shapes of tile, each compiled with constant loop bounds. */
#define WGRAD_TILE(MRV, KTV)                                                             \
  TARGET static void wgrad_tile_##MRV##_##KTV(const float *dy, const float *src,         \
                                              const int64_t *off, const wgrad_px *px,    \
                                              float *dw, int64_t ldw) {                  \
    wgrad_tile(MRV, KTV, dy, src, off, px, dw, ldw);                                     \
  }
#define WGRAD_TILES(MRV) WGRAD_TILE(MRV, 1) WGRAD_TILE(MRV, 2) WGRAD_TILE(MRV, 3)
WGRAD_TILES(1)
WGRAD_TILES(2)
WGRAD_TILES(3)
WGRAD_TILES(4)

typedef void (*wgrad_fn)(const float *, const float *, const int64_t *, const wgrad_px *,
                         float *, int64_t);
static const wgrad_fn WGRAD[MR][KT] = {
    {wgrad_tile_1_1, wgrad_tile_1_2, wgrad_tile_1_3},
    {wgrad_tile_2_1, wgrad_tile_2_2, wgrad_tile_2_3},
    {wgrad_tile_3_1, wgrad_tile_3_2, wgrad_tile_3_3},
    {wgrad_tile_4_1, wgrad_tile_4_2, wgrad_tile_4_3},
};

/* db[o] += Σ dy[o][p] over a block of n pixels per channel (channel stride ld). */
TARGET static void bias_sums(const float *dy, int64_t ld, int64_t cout, int64_t n,
                             float *db) {
  const int64_t full = n / 8 * 8;
  const __m256i m = lane_mask(n - full);
  for (int64_t o = 0; o < cout; o++) {
    const float *g = dy + o * ld;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 16 <= full; p += 16) {
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(g + p));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(g + p + 8));
    }
    if (p < full)
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(g + p));
    if (n > full)
      a1 = _mm256_add_ps(a1, _mm256_maskload_ps(g + full, m));
    const __m128 s = hsum4(_mm256_add_ps(a0, a1), _mm256_setzero_ps(),
                           _mm256_setzero_ps(), _mm256_setzero_ps());
    db[o] += _mm_cvtss_f32(s);
  }
}

int conv_direct_weight_grad(const direct_conv *d, const float *x, const float *dy,
                            float *dw, float *db) {
  const int64_t K = d->cin * d->kh * d->kw, nw = d->cout * K + d->cout;
  /* l.nt parts, each summed on one thread into its own partial dw and db, then added
   * in part order: tg__reduce_parts makes the result independent of the threads in
   * deterministic mode */
  const int64_t work = d->n * d->cout * d->oh * d->ow * K;
  layout l = plan_layout(d, tg__reduce_parts(work));
  const int nth = tg__threads(work) < l.nt ? tg__threads(work) : l.nt;
  const size_t off_bytes = round_up((size_t)K * sizeof(int64_t));
  const size_t slab_bytes = l.copy ? round_up((size_t)(l.group * l.simg) * 4) : 0;
  const size_t part_bytes = round_up((size_t)nw * 4);
  const size_t bytes = off_bytes + (size_t)nth * slab_bytes + (size_t)l.nt * part_bytes;
  char *buf = conv_workspace_get(bytes);
  if (!buf) /* slabs and partial sums: named by the op running */
    return tg__oom(bytes, "cpu", NULL);
  int64_t *off = (int64_t *)buf;
  tap_offsets(d, &l, off);
  const int64_t img = d->cin * d->h * d->w, plane = d->oh * d->ow;
  char *slabs = buf + off_bytes, *parts = slabs + (size_t)nth * slab_bytes;
  /* Each part is a contiguous run of items summed into its own dw; whole-image items go
   * in groups of l.group images, so that small images still make long tiles. */
#pragma omp parallel num_threads(nth)
  {
    float *slab = (float *)(slabs + (size_t)omp_get_thread_num() * slab_bytes);
#pragma omp for schedule(static)
    for (int t = 0; t < l.nt; t++) {
      float *part = (float *)(parts + (size_t)t * part_bytes), *pdb = part + d->cout * K;
      memset(part, 0, (size_t)nw * 4);
      const int64_t end = l.items * (t + 1) / l.nt;
      for (int64_t it = l.items * t / l.nt; it < end;) {
        const int64_t b = it / l.nblk, oy0 = it % l.nblk * l.rows;
        const int64_t oy1 = oy0 + l.rows < d->oh ? oy0 + l.rows : d->oh;
        const int64_t nimg = l.nblk == 1 && end - it < l.group ? end - it : l.group;
        const float *s = NULL;
        for (int64_t i = 0; i < nimg; i++) {
          const float *si =
              make_slab(d, &l, x + (b + i) * img, oy0, oy1, slab + i * l.simg);
          s = i ? s : si;
        }
        const float *g = dy + b * d->cout * plane + oy0 * d->ow;
        const wgrad_px px = {plane,     d->cout * plane, l.sw, l.copy ? l.simg : img,
                             oy1 - oy0, d->ow,           nimg};
        for (int64_t o = 0; o < d->cout; o += MR) {
          const int mr = d->cout - o < MR ? (int)(d->cout - o) : MR;
          for (int64_t k = 0; k < K; k += KT) {
            const int kt = K - k < KT ? (int)(K - k) : KT;
            WGRAD[mr - 1][kt - 1](g + o * plane, s, off + k, &px, part + o * K + k, K);
          }
        }
        for (int64_t i = 0; db && i < nimg; i++)
          for (int64_t row = oy0; row < oy1; row++)
            bias_sums(g + i * px.dy_img + (row - oy0) * d->ow, plane, d->cout, d->ow,
                      pdb);
        it += nimg;
      }
    }
    /* dw and db are the sums of the parts' partial sums, in part order */
#pragma omp for schedule(static)
    for (int64_t k = 0; k < nw; k++) {
      float sum = 0;
      for (int u = 0; u < l.nt; u++)
        sum += ((const float *)(parts + (size_t)u * part_bytes))[k];
      if (k < d->cout * K)
        dw[k] = sum;
      else if (db)
        db[k - d->cout * K] = sum;
    }
  }
  conv_workspace_put(buf);
  return 0;
}

#else /* no AVX2 kernels on this architecture: conv.c never calls these */

int conv_direct_forward(const direct_conv *d, const float *x, const float *w, bool flip,
                        const float *bias, float *y) {
  (void)d, (void)x, (void)w, (void)flip, (void)bias, (void)y;
  return tg__error("conv: direct kernels are not built for this CPU");
}

int conv_direct_weight_grad(const direct_conv *d, const float *x, const float *dy,
                            float *dw, float *db) {
  (void)d, (void)x, (void)dy, (void)dw, (void)db;
  return tg__error("conv: direct kernels are not built for this CPU");
}

#endif
