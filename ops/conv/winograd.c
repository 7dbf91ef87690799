/* Winograd F(4x4, 3x3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional
 * Neural Networks", 2015) for float32 3x3 stride-1 dilation-1 convolutions, AVX-512.
 *
 * Why: the direct kernels of direct.c already run at 85-90% of the core's sgemm rate,
 * so the 3x3 layers of a conv net can only get faster by doing fewer multiplications.
 * F(4x4, 3x3) computes a 4x4 block of outputs from a 6x6 block of inputs with 36
 * products per (input, output) channel pair instead of 144:
 *
 *   y_tile = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A      (A 6x4, B 6x6, G 6x3; points 0, ±1, ±2)
 *
 * summed over input channels, which makes each of the 36 points ξ of the 6x6 domain a
 * GEMM:  M[ξ][o][t] = Σ_c U[ξ][o][c] V[ξ][c][t]  over the tiles t. The weight gradient
 * is its adjoint:  dU[ξ][o][c] = Σ_t Z[ξ][o][t] V[ξ][c][t]  with Z = A dy Aᵀ per tile,
 * and dg = Gᵀ dU G. The input gradient is the forward of dy with the flipped weight
 * (conv.c, as for the direct kernels).
 *
 * Layout: tiles are numbered row by row (image, tile row ty, tile column tx) and
 * processed in blocks of whole tile rows sized to stay in L2; each block's V, M (or Z)
 * are [36][channels][tiles]. The transforms work on vectors of 16 tiles, 4 quads of 4
 * tiles side by side (see wplan): 16 pixels of a row hold a quad's 4 columns
 * interleaved, split apart with permutes on the way in and merged with unpack/shuffles
 * on the way out. The 36 GEMMs
 * of a block are single-threaded OpenBLAS calls (runtime/threads.c keeps it so);
 * threads take blocks.
 *
 * Accuracy: F(4x4, 3x3)'s transforms have entries up to 8 (and 1/24 in G), so float32
 * errors are ~10x those of the direct sum; tests/test_winograd.c checks every conv test
 * shape against float64 at 1e-5 normalised error. F(2x2, 3x3) would be more exact but
 * saves 2.25x multiplications instead of 4x. */
#include "ops/conv/winograd.h"

#include "runtime/internal.h"

#include <cblas.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_WINOGRAD 1
#include <immintrin.h>
#define TARGET __attribute__((target("avx512f")))
#define INLINE __attribute__((always_inline)) inline
#else
#define HAVE_WINOGRAD 0
#endif

enum {
  MODE_OFF = 1,  /* TG_CONV_WINOGRAD=0, or no AVX-512 */
  MODE_ON = 2,   /* TG_CONV_WINOGRAD=1: every 3x3 layer that it can run */
  MODE_RULE = 3, /* default: the measured rule of worth_it */
};

static int winograd_mode(void) {
  static atomic_int state; /* 0 unknown; racing threads store the same */
  int s = atomic_load_explicit(&state, memory_order_relaxed);
  if (!s) {
    const char *env = getenv("TG_CONV_WINOGRAD");
    s = env && !strcmp(env, "0")   ? MODE_OFF
        : env && !strcmp(env, "1") ? MODE_ON
                                   : MODE_RULE;
#if HAVE_WINOGRAD
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f"))
      s = MODE_OFF;
#else
    s = MODE_OFF;
#endif
    atomic_store_explicit(&state, s, memory_order_relaxed);
  }
  return s;
}

/* The measured rule (bench/conv_layers, thread CPU time; bench/NOTES.md "Winograd"):
 * with 8 input and 8 output channels and more, Winograd took 0.35-0.92x the direct
 * kernels' time for every kernel (forward, input and weight gradient) of every layer
 * measured, 4x4 to 64x64 images, batches 1-64, 8-128 channels. With 3 input channels
 * the transforms cost more than the multiplications saved (1.09-1.16x). (3 output
 * channels gained, 0.88x, but float32 Winograd's larger elementwise error is kept away
 * from layers that gain little.) */
static bool worth_it(const direct_conv *d) { return d->cin >= 8 && d->cout >= 8; }

bool conv_winograd_use(const direct_conv *d) {
  if (d->kh != 3 || d->kw != 3 || d->dh != 1 || d->dw != 1)
    return false;
  int mode = winograd_mode();
  return mode == MODE_ON || (mode == MODE_RULE && worth_it(d));
}

#if HAVE_WINOGRAD /* the rest of the kernels: x86-64 only */

/* ---------------------------------------------------------- weights -- */

/* G of F(4x4, 3x3). */
static const float G[6][3] = {
    {1.f / 4, 0, 0},
    {-1.f / 6, -1.f / 6, -1.f / 6},
    {-1.f / 6, 1.f / 6, -1.f / 6},
    {1.f / 24, 1.f / 12, 1.f / 6},
    {1.f / 24, -1.f / 12, 1.f / 6},
    {0, 0, 1},
};

/* U[ξ][o][c] = (G g Gᵀ)[ξ] for g = W[o][c] (with flip, read from w2 as in direct.h).
 * Runs of CB channels c at once, the innermost loops over them (vectorised), so that U
 * is written in contiguous runs: one scalar store per ξ and pair was 6% of a U-Net
 * step. Rows of o are split over the threads of the enclosing parallel region. */
enum { CB = 16 };
static void transform_weights(const direct_conv *d, const float *w, bool flip, float *U) {
  const int64_t co = d->cout, ci = d->cin;
#pragma omp for schedule(static)
  for (int64_t o = 0; o < co; o++)
    for (int64_t c0 = 0; c0 < ci; c0 += CB) {
      const int n = ci - c0 < CB ? (int)(ci - c0) : CB;
      float g[9][CB] = {{0}}, t[6][3][CB], u[CB];
      for (int e = 0; e < n; e++)
        for (int k = 0; k < 9; k++) {
          const int64_t c = c0 + e;
          g[k][e] = flip ? w[(c * co + o) * 9 + 8 - k] : w[(o * ci + c) * 9 + k];
        }
      for (int k = 0; k < 6; k++)
        for (int j = 0; j < 3; j++)
          for (int e = 0; e < CB; e++)
            t[k][j][e] =
                G[k][0] * g[j][e] + G[k][1] * g[3 + j][e] + G[k][2] * g[6 + j][e];
      for (int k = 0; k < 6; k++)
        for (int l = 0; l < 6; l++) {
          for (int e = 0; e < CB; e++)
            u[e] = t[k][0][e] * G[l][0] + t[k][1][e] * G[l][1] + t[k][2][e] * G[l][2];
          memcpy(U + ((k * 6 + l) * co + o) * ci + c0, u, (size_t)n * sizeof(float));
        }
    }
}

/* dw[o][c] = Gᵀ dU[o][c] G, the adjoint of transform_weights (no flip), CB channels
 * at a time as there. */
static void untransform_weights(const direct_conv *d, const float *dU, float *dw) {
  const int64_t co = d->cout, ci = d->cin;
#pragma omp for schedule(static)
  for (int64_t o = 0; o < co; o++)
    for (int64_t c0 = 0; c0 < ci; c0 += CB) {
      const int n = ci - c0 < CB ? (int)(ci - c0) : CB;
      float u[36][CB] = {{0}}, t[6][3][CB], g[9][CB];
      for (int x = 0; x < 36; x++)
        memcpy(u[x], dU + (x * co + o) * ci + c0, (size_t)n * sizeof(float));
      for (int k = 0; k < 6; k++)
        for (int j = 0; j < 3; j++)
          for (int e = 0; e < CB; e++) {
            float s = 0;
            for (int l = 0; l < 6; l++)
              s += u[k * 6 + l][e] * G[l][j];
            t[k][j][e] = s;
          }
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
          for (int e = 0; e < CB; e++) {
            float s = 0;
            for (int k = 0; k < 6; k++)
              s += G[k][i] * t[k][j][e];
            g[i * 3 + j][e] = s;
          }
      for (int e = 0; e < n; e++)
        for (int k = 0; k < 9; k++)
          dw[(o * ci + c0 + e) * 9 + k] = g[k][e];
    }
}

/* ------------------------------------------------------------ plan -- */

/* Target bytes of one block's V and M (or Z): half the 2 MiB L2 of the development
 * machine's cores, so that the transforms' outputs are still cached for the GEMMs. */
#define BLOCK_BYTES ((int64_t)1 << 20)

/* Tiles go in quads of 4 consecutive tiles of a tile row (16 pixel columns), and a
 * vector holds 4 quads, so narrow images (14 or 16 pixels wide: one quad a row) fill
 * whole vectors with 4 rows. A tile row takes qw quads, its last one padded: the
 * padding tiles are computed but never stored, and their dy reads as zero. */
typedef struct {
  int64_t tw, th, qw; /* tiles per row and column, quads per tile row */
  int64_t rows;       /* tile rows of all images, n * th */
  int64_t R, nblk;    /* tile rows per block, blocks */
  int64_t ld;         /* tile stride of V, M, Z: 4 * qw * R rounded up to 16 */
  int64_t twb;        /* row length of the vertical pass's output */
  int nt;             /* pieces of work: threads (forward) or reduction parts */
} wplan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Blocks for `pieces` pieces of work. */
static wplan make_plan(const direct_conv *d, int pieces) {
  wplan p;
  p.tw = ceil_div(d->ow, 4);
  p.th = ceil_div(d->oh, 4);
  p.qw = ceil_div(p.tw, 4);
  p.rows = d->n * p.th;
  p.twb = 16 * p.qw + 16; /* a quad's loads read 20 floats from its first column */
  int64_t tiles = BLOCK_BYTES / (36 * 4 * (d->cin + d->cout));
  tiles = tiles < 64 ? 64 : tiles > 512 ? 512 : tiles;
  p.R = tiles / (4 * p.qw) < 1 ? 1 : tiles / (4 * p.qw);
  p.R = p.R > p.rows ? p.rows : p.R;
  p.nt = pieces;
  if (ceil_div(p.rows, p.R) < p.nt) /* few tiles: smaller blocks for every thread */
    p.R = ceil_div(p.rows, p.nt);
  p.nblk = ceil_div(p.rows, p.R);
  if (p.nblk < p.nt)
    p.nt = (int)p.nblk;
  p.ld = (4 * p.qw * p.R + 15) / 16 * 16;
  return p;
}

/* Lanes [0, n) for n in [0, 16]. */
static INLINE __mmask16 first(int64_t n) {
  return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* E[t] = p[4t + j] for t < 16, from the 64 floats a0..a3 = p[0..63]. */
TARGET static INLINE __m512 deinterleave(__m512 a0, __m512 a1, __m512 a2, __m512 a3,
                                         int j) {
  const __m512i idx =
      _mm512_setr_epi32(j, j + 4, j + 8, j + 12, j + 16, j + 20, j + 24, j + 28, j, j + 4,
                        j + 8, j + 12, j + 16, j + 20, j + 24, j + 28);
  return _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(a0, idx, a1),
                              _mm512_permutex2var_ps(a2, idx, a3));
}

/* The inverse: r[4t + b] = y<b>[t], the 64 floats as r[0..3]. */
TARGET static INLINE void interleave(__m512 y0, __m512 y1, __m512 y2, __m512 y3,
                                     __m512 r[4]) {
  const __m512d p01l = _mm512_castps_pd(_mm512_unpacklo_ps(y0, y1));
  const __m512d p01h = _mm512_castps_pd(_mm512_unpackhi_ps(y0, y1));
  const __m512d p23l = _mm512_castps_pd(_mm512_unpacklo_ps(y2, y3));
  const __m512d p23h = _mm512_castps_pd(_mm512_unpackhi_ps(y2, y3));
  /* q<i> holds tile 4g + i in its 128-bit lane g */
  const __m512 q0 = _mm512_castpd_ps(_mm512_unpacklo_pd(p01l, p23l));
  const __m512 q1 = _mm512_castpd_ps(_mm512_unpackhi_pd(p01l, p23l));
  const __m512 q2 = _mm512_castpd_ps(_mm512_unpacklo_pd(p01h, p23h));
  const __m512 q3 = _mm512_castpd_ps(_mm512_unpackhi_pd(p01h, p23h));
  const __m512 s0 = _mm512_shuffle_f32x4(q0, q1, 0x88); /* tiles 0, 8, 1, 9 */
  const __m512 s1 = _mm512_shuffle_f32x4(q0, q1, 0xDD); /* 4, 12, 5, 13 */
  const __m512 s2 = _mm512_shuffle_f32x4(q2, q3, 0x88); /* 2, 10, 3, 11 */
  const __m512 s3 = _mm512_shuffle_f32x4(q2, q3, 0xDD); /* 6, 14, 7, 15 */
  r[0] = _mm512_shuffle_f32x4(s0, s2, 0x88);
  r[1] = _mm512_shuffle_f32x4(s1, s3, 0x88);
  r[2] = _mm512_shuffle_f32x4(s0, s2, 0xDD);
  r[3] = _mm512_shuffle_f32x4(s1, s3, 0xDD);
}

/* Bᵀ d of six values (one column or row of a 6x6 input tile). */
TARGET static INLINE void bt6(const __m512 d[6], __m512 o[6]) {
  const __m512 four = _mm512_set1_ps(4), five = _mm512_set1_ps(-5);
  const __m512 two = _mm512_set1_ps(2);
  o[0] = _mm512_fmadd_ps(four, d[0], _mm512_fmadd_ps(five, d[2], d[4]));
  o[1] = _mm512_fnmadd_ps(four, _mm512_add_ps(d[1], d[2]), _mm512_add_ps(d[3], d[4]));
  o[2] = _mm512_fmadd_ps(four, _mm512_sub_ps(d[1], d[2]), _mm512_sub_ps(d[4], d[3]));
  o[3] = _mm512_fmadd_ps(two, _mm512_sub_ps(d[3], d[1]), _mm512_sub_ps(d[4], d[2]));
  o[4] = _mm512_fmadd_ps(two, _mm512_sub_ps(d[1], d[3]), _mm512_sub_ps(d[4], d[2]));
  o[5] = _mm512_fmadd_ps(four, d[1], _mm512_fmadd_ps(five, d[3], d[5]));
}

/* Aᵀ m of six values: four outputs. */
TARGET static INLINE void at6(const __m512 m[6], __m512 o[4]) {
  const __m512 a = _mm512_add_ps(m[1], m[2]), b = _mm512_sub_ps(m[1], m[2]);
  const __m512 c = _mm512_add_ps(m[3], m[4]), e = _mm512_sub_ps(m[3], m[4]);
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], a), c);
  o[1] = _mm512_fmadd_ps(_mm512_set1_ps(2), e, b);
  o[2] = _mm512_fmadd_ps(_mm512_set1_ps(4), c, a);
  o[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8), e, b), m[5]);
}

/* A d of four values (the adjoint of at6): six outputs. */
TARGET static INLINE void a4(const __m512 d[4], __m512 o[6]) {
  const __m512 e = _mm512_add_ps(d[0], d[2]), f = _mm512_add_ps(d[1], d[3]);
  const __m512 g = _mm512_fmadd_ps(_mm512_set1_ps(4), d[2], d[0]);
  const __m512 h = _mm512_fmadd_ps(_mm512_set1_ps(4), d[3], d[1]);
  o[0] = d[0];
  o[1] = _mm512_add_ps(e, f);
  o[2] = _mm512_sub_ps(e, f);
  o[3] = _mm512_fmadd_ps(_mm512_set1_ps(2), h, g);
  o[4] = _mm512_fnmadd_ps(_mm512_set1_ps(2), h, g);
  o[5] = d[3];
}

/* Columns of the vertical pass: for tile row ty of one input plane [h][w],
 * tmp[k][pw + x] = Σ_i Bᵀ[k][i] plane[4ty - ph + i][x] (rows outside read as zero).
 * tmp holds 6 rows of twb floats whose columns [0, pw) and [pw + w, twb) stay zero.
 * The same rows `ahead` floats further (the next channel's; 0: none) are prefetched:
 * the loads of x were 10% of a U-Net step, most of it waiting for memory. */
TARGET static void input_columns(const direct_conv *d, const wplan *p, const float *plane,
                                 int64_t ty, int64_t ahead, float *tmp) {
  const int64_t w = d->w, iy0 = 4 * ty - d->ph;
  const float *row[6];
  for (int i = 0; i < 6; i++)
    row[i] = iy0 + i >= 0 && iy0 + i < d->h ? plane + (iy0 + i) * w : NULL;
  for (int64_t x = 0; x < w; x += 16) {
    const __mmask16 m = first(w - x);
    __m512 v[6], o[6];
    for (int i = 0; i < 6; i++)
      v[i] = row[i] ? _mm512_maskz_loadu_ps(m, row[i] + x) : _mm512_setzero_ps();
    for (int i = 0; ahead && i < 6; i++)
      if (row[i])
        _mm_prefetch((const char *)(row[i] + ahead + x), _MM_HINT_T0);
    bt6(v, o);
    for (int k = 0; k < 6; k++)
      _mm512_mask_storeu_ps(tmp + k * p->twb + d->pw + x, m, o[k]);
  }
}

/* The quads of a block: quad u is tile row r0 + u / qw, tiles 4 (u % qw) + [0, 4). */
typedef struct {
  int64_t r0, nquads, nslots; /* nslots = 4 * nquads */
} wblock;

/* Rows of the 6x6 transform: V[ξ][slot] (ξ stride xs) for the block's tiles, from the
 * columns of input_columns (tile row i of the block at tmp + i * 6 * twb). */
TARGET static void input_rows(const wplan *p, const wblock *b, const float *tmp, float *V,
                              int64_t xs) {
  for (int64_t seg = 0; seg * 16 < b->nslots; seg++) {
    const float *src[4] = {NULL, NULL, NULL, NULL};
    for (int q = 0; q < 4; q++) {
      const int64_t u = seg * 4 + q;
      if (u < b->nquads)
        src[q] = tmp + u / p->qw * 6 * p->twb + 16 * (u % p->qw);
    }
    const __mmask16 m = first(b->nslots - 16 * seg);
    for (int k = 0; k < 6; k++) {
      __m512 a[4], c[4], e[6], o[6];
      for (int q = 0; q < 4; q++) {
        a[q] = src[q] ? _mm512_loadu_ps(src[q] + k * p->twb) : _mm512_setzero_ps();
        c[q] = src[q] ? _mm512_loadu_ps(src[q] + k * p->twb + 4) : _mm512_setzero_ps();
      }
      for (int j = 0; j < 4; j++)
        e[j] = deinterleave(a[0], a[1], a[2], a[3], j);
      /* columns 4t + 4 and 4t + 5: the next tile's first two */
      e[4] = deinterleave(c[0], c[1], c[2], c[3], 0);
      e[5] = deinterleave(c[0], c[1], c[2], c[3], 1);
      bt6(e, o);
      for (int l = 0; l < 6; l++)
        _mm512_mask_storeu_ps(V + (k * 6 + l) * xs + 16 * seg, m, o[l]);
    }
  }
}

/* Output channel o of the block from M[ξ][slot] (ξ stride xs), plus bias, into
 * y [n][cout][oh][ow]. */
TARGET static void output_tiles(const direct_conv *d, const wplan *p, const wblock *b,
                                const float *M, int64_t xs, int64_t o, float bias,
                                float *y) {
  const int64_t ow = d->ow, plane = d->oh * d->ow;
  const __m512 bv = _mm512_set1_ps(bias);
  for (int64_t seg = 0; seg * 16 < b->nslots; seg++) {
    const __mmask16 m = first(b->nslots - 16 * seg);
    __m512 t[4][6];
    for (int l = 0; l < 6; l++) { /* Aᵀ over k, for each column l of the 6x6 */
      __m512 v[6], r[4];
      for (int k = 0; k < 6; k++)
        v[k] = _mm512_maskz_loadu_ps(m, M + (k * 6 + l) * xs + 16 * seg);
      at6(v, r);
      for (int a = 0; a < 4; a++)
        t[a][l] = r[a];
    }
    for (int a = 0; a < 4; a++) {
      __m512 v[4], r[4];
      at6(t[a], v);
      interleave(_mm512_add_ps(v[0], bv), _mm512_add_ps(v[1], bv),
                 _mm512_add_ps(v[2], bv), _mm512_add_ps(v[3], bv), r);
      for (int q = 0; q < 4; q++) {
        const int64_t u = seg * 4 + q, row = b->r0 + u / p->qw, oy = row % p->th * 4 + a;
        if (u >= b->nquads || oy >= d->oh)
          continue;
        float *dst = y + (row / p->th * d->cout + o) * plane + oy * ow + 16 * (u % p->qw);
        _mm512_mask_storeu_ps(dst, first(ow - 16 * (u % p->qw)), r[q]);
      }
    }
  }
}

/* Output channel o of the block's dy [n][cout][oh][ow]: Z[ξ][slot] = (A dy Aᵀ)[ξ]
 * (ξ stride xs), pixels outside the plane (padding tiles) read as zero. */
TARGET static void grad_tiles(const direct_conv *d, const wplan *p, const wblock *b,
                              const float *dy, int64_t o, float *Z, int64_t xs) {
  const int64_t ow = d->ow, plane = d->oh * d->ow;
  for (int64_t seg = 0; seg * 16 < b->nslots; seg++) {
    __m512 rows[4][4], cols[6][4];
    for (int a = 0; a < 4; a++) {
      __m512 v[4];
      for (int q = 0; q < 4; q++) {
        const int64_t u = seg * 4 + q, row = b->r0 + u / p->qw, oy = row % p->th * 4 + a;
        const float *src =
            dy + (row / p->th * d->cout + o) * plane + oy * ow + 16 * (u % p->qw);
        v[q] = u < b->nquads && oy < d->oh
                   ? _mm512_maskz_loadu_ps(first(ow - 16 * (u % p->qw)), src)
                   : _mm512_setzero_ps();
      }
      for (int c = 0; c < 4; c++)
        rows[a][c] = deinterleave(v[0], v[1], v[2], v[3], c);
    }
    for (int c = 0; c < 4; c++) { /* A over the 4 rows, for each column */
      __m512 v[4] = {rows[0][c], rows[1][c], rows[2][c], rows[3][c]}, r[6];
      a4(v, r);
      for (int k = 0; k < 6; k++)
        cols[k][c] = r[k];
    }
    const __mmask16 m = first(b->nslots - 16 * seg);
    for (int k = 0; k < 6; k++) {
      __m512 r[6];
      a4(cols[k], r);
      for (int l = 0; l < 6; l++)
        _mm512_mask_storeu_ps(Z + (k * 6 + l) * xs + 16 * seg, m, r[l]);
    }
  }
}

static wblock block_of(const wplan *p, int64_t blk) {
  const int64_t r0 = blk * p->R, r1 = r0 + p->R < p->rows ? r0 + p->R : p->rows;
  return (wblock){r0, (r1 - r0) * p->qw, (r1 - r0) * p->qw * 4};
}

/* V of the block's tiles of x: [36][cin][ld]. */
static void input_block(const direct_conv *d, const wplan *p, const wblock *b,
                        const float *x, float *tmp, float *V) {
  const int64_t plane = d->h * d->w, nrows = b->nquads / p->qw;
  for (int64_t c = 0; c < d->cin; c++) {
    for (int64_t i = 0; i < nrows; i++) {
      const int64_t r = b->r0 + i;
      input_columns(d, p, x + (r / p->th * d->cin + c) * plane, r % p->th,
                    c + 1 < d->cin ? plane : 0, tmp + i * 6 * p->twb);
    }
    input_rows(p, b, tmp, V + c * p->ld, d->cin * p->ld);
  }
}

/* Per-thread buffers: V [36][cin][ld], M or Z [36][cout][ld], tmp [R][6][twb]. */
static size_t thread_floats(const direct_conv *d, const wplan *p) {
  const size_t n = (size_t)(36 * (d->cin + d->cout) * p->ld + p->R * 6 * p->twb);
  return (n + 15) / 16 * 16;
}

static int64_t work_of(const direct_conv *d) {
  return d->n * d->oh * d->ow * d->cin * d->cout * 9;
}

static int forward(const direct_conv *d, const float *x, const float *w, bool flip,
                   const float *bias, float *y) {
  /* The blocks set the GEMMs' sizes, and OpenBLAS's summation order may depend on
   * them: in deterministic mode they come from tg__reduce_parts, not the threads. */
  const wplan p = make_plan(d, tg__reduce_parts(work_of(d)));
  const int nth = tg__threads(work_of(d)) < p.nt ? tg__threads(work_of(d)) : p.nt;
  const size_t u_floats = (size_t)(36 * d->cout * d->cin + 15) / 16 * 16;
  const size_t per = thread_floats(d, &p);
  const size_t bytes = (u_floats + (size_t)nth * per) * sizeof(float);
  float *buf = conv_workspace_get(bytes);
  if (!buf) /* the Winograd buffers: named by the op running */
    return tg__oom(bytes, "cpu", NULL);
  float *U = buf;
#pragma omp parallel num_threads(nth)
  {
    float *V = buf + u_floats + (size_t)omp_get_thread_num() * per;
    float *M = V + 36 * d->cin * p.ld, *tmp = M + 36 * d->cout * p.ld;
    memset(tmp, 0, (size_t)(p.R * 6 * p.twb) * sizeof(float));
    transform_weights(d, w, flip, U); /* ends in a barrier */
    /* dynamic: blocks write disjoint outputs (see direct.c) */
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < p.nblk; blk++) {
      const wblock b = block_of(&p, blk);
      input_block(d, &p, &b, x, tmp, V);
      for (int xi = 0; xi < 36; xi++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d->cout,
                    (int)b.nslots, (int)d->cin, 1.0f, U + xi * d->cout * d->cin,
                    (int)d->cin, V + xi * d->cin * p.ld, (int)p.ld, 0.0f,
                    M + xi * d->cout * p.ld, (int)p.ld);
      for (int64_t o = 0; o < d->cout; o++)
        output_tiles(d, &p, &b, M + o * p.ld, d->cout * p.ld, o, bias ? bias[o] : 0.0f,
                     y);
    }
  }
  conv_workspace_put(buf);
  return 0;
}

/* p.nt parts, each a contiguous run of blocks summed on one thread into its own dU
 * and db, then added in part order: tg__reduce_parts makes the result independent of
 * the threads in deterministic mode. */
static int weight_grad(const direct_conv *d, const float *x, const float *dy, float *dw,
                       float *db) {
  const wplan p = make_plan(d, tg__reduce_parts(work_of(d)));
  const int nth = tg__threads(work_of(d)) < p.nt ? tg__threads(work_of(d)) : p.nt;
  const size_t u_floats = (size_t)(36 * d->cout * d->cin + d->cout + 15) / 16 * 16;
  const size_t per = thread_floats(d, &p);
  const size_t bytes = ((size_t)p.nt * u_floats + (size_t)nth * per) * sizeof(float);
  float *buf = conv_workspace_get(bytes);
  if (!buf) /* the Winograd buffers: named by the op running */
    return tg__oom(bytes, "cpu", NULL);
  const int64_t nu = 36 * d->cout * d->cin;
#pragma omp parallel num_threads(nth)
  {
    float *V = buf + (size_t)p.nt * u_floats + (size_t)omp_get_thread_num() * per;
    float *Z = V + 36 * d->cin * p.ld, *tmp = Z + 36 * d->cout * p.ld;
    memset(tmp, 0, (size_t)(p.R * 6 * p.twb) * sizeof(float));
#pragma omp for schedule(static)
    for (int t = 0; t < p.nt; t++) {
      float *dU = buf + (size_t)t * u_floats;
      memset(dU, 0, u_floats * sizeof(float));
      const int64_t end = p.nblk * (t + 1) / p.nt;
      for (int64_t blk = p.nblk * t / p.nt; blk < end; blk++) {
        const wblock b = block_of(&p, blk);
        input_block(d, &p, &b, x, tmp, V);
        for (int64_t o = 0; o < d->cout; o++)
          grad_tiles(d, &p, &b, dy, o, Z + o * p.ld, d->cout * p.ld);
        for (int xi = 0; xi < 36; xi++)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)d->cout, (int)d->cin,
                      (int)b.nslots, 1.0f, Z + xi * d->cout * p.ld, (int)p.ld,
                      V + xi * d->cin * p.ld, (int)p.ld, 1.0f, dU + xi * d->cout * d->cin,
                      (int)d->cin);
        /* Σ over a tile of dy is its Z at ξ = (1, 1) (row 1 of A is all ones) */
        for (int64_t o = 0; o < d->cout; o++) {
          const float *z = Z + (7 * d->cout + o) * p.ld;
          float s = 0;
          for (int64_t k = 0; k < b.nslots; k++)
            s += z[k];
          dU[nu + o] += s;
        }
      }
    }
    /* the sums of the parts' dU and db, in part order, into part 0's */
#pragma omp for schedule(static)
    for (int64_t k = 0; k < nu + d->cout; k++)
      for (int u = 1; u < p.nt; u++)
        buf[k] += buf[(size_t)u * u_floats + (size_t)k];
    untransform_weights(d, buf, dw);
  }
  if (db)
    memcpy(db, buf + nu, (size_t)d->cout * sizeof(float));
  conv_workspace_put(buf);
  return 0;
}

#endif

int conv_winograd_forward(const direct_conv *d, const float *x, const float *w, bool flip,
                          const float *bias, float *y) {
#if HAVE_WINOGRAD
  if (__builtin_cpu_supports("avx512f"))
    return forward(d, x, w, flip, bias, y);
#endif
  (void)d, (void)x, (void)w, (void)flip, (void)bias, (void)y;
  return tg__error("conv: Winograd kernels need AVX-512");
}

int conv_winograd_weight_grad(const direct_conv *d, const float *x, const float *dy,
                              float *dw, float *db) {
#if HAVE_WINOGRAD
  if (__builtin_cpu_supports("avx512f"))
    return weight_grad(d, x, dy, dw, db);
#endif
  (void)d, (void)x, (void)dy, (void)dw, (void)db;
  return tg__error("conv: Winograd kernels need AVX-512");
}

int conv_fast_forward(const direct_conv *d, const float *x, const float *w, bool flip,
                      const float *bias, float *y) {
  if (conv_winograd_use(d))
    return conv_winograd_forward(d, x, w, flip, bias, y);
  return conv_direct_forward(d, x, w, flip, bias, y);
}

int conv_fast_weight_grad(const direct_conv *d, const float *x, const float *dy,
                          float *dw, float *db) {
  if (conv_winograd_use(d))
    return conv_winograd_weight_grad(d, x, dy, dw, db);
  return conv_direct_weight_grad(d, x, dy, dw, db);
}
