/* Pooling and resampling on [N, C, H, W]: max/avg pooling, adaptive average pooling,
 * nearest and bilinear upsampling. Every op works plane by plane (one image channel),
 * planes in parallel; each backward scatters the output gradient back along the same
 * windows or source indices, PyTorch's formulas throughout. */
#include "graph/internal.h"
#include "ops/pool/pool_cuda.h"
#include "ops/pool/resample.h"
#include "ops/unbatched.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2 1
#include <immintrin.h>
#include <stdatomic.h>
#define TARGET __attribute__((target("avx2")))
#define INLINE __attribute__((always_inline)) inline
#else
#define HAVE_AVX2 0
#endif

typedef struct {
  int64_t kh, kw, sh, sw, ph, pw;
} window;

static int check_input(const char *op, const tg_tensor *x) {
  if (!tg__nonnull(x, op, "input") || tg__check_same(op, 1, &x, true) < 0)
    return -1;
  if (x->ndim != 4) {
    char s[TG_SHAPE_STR_LEN];
    return tg__error("%s: expected a 4D (batch mode) tensor [N, C, H, W] for input, but "
                     "got input of size %s",
                     op, tg_shape_str(x, s, sizeof s));
  }
  return 0;
}

/* The output [N, C, oh, ow] of a CPU kernel (the ops send other devices to the tables
 * of pool_ex.c first); an impossible size fails naming op and x's shape. */
static tg_tensor *new_output(const char *op, const tg_tensor *x, int64_t oh, int64_t ow) {
  int64_t shape[4] = {x->shape[0], x->shape[1], oh, ow};
  if (tg__check_shape(shape, 4, x->dtype, op) < 0) {
    char msg[512], s[TG_SHAPE_STR_LEN];
    snprintf(msg, sizeof msg, "%s", tg_last_error());
    return tg__error("%s (input of size %s)", msg, tg_shape_str(x, s, sizeof s)), NULL;
  }
  return tg__new(shape, 4, x->dtype, x->device);
}

/* floor(a / b) for b > 0, without overflow. */
static int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -(-(a + 1) / b) - 1;
}

/* PyTorch's pool2d_shape_check (dilation 1, ceil_mode false). */
static int window_check(const char *op, const tg_tensor *x, const int64_t kernel[2],
                        const int64_t stride[2], const int64_t padding[2], window *w,
                        int64_t *oh, int64_t *ow) {
  if (check_input(op, x) < 0)
    return -1;
  if (!kernel)
    return tg__error("%s: argument 'kernel' is NULL", op);
  *w = (window){kernel[0],
                kernel[1],
                stride ? stride[0] : kernel[0],
                stride ? stride[1] : kernel[1],
                padding ? padding[0] : 0,
                padding ? padding[1] : 0};
  if (w->kh <= 0 || w->kw <= 0)
    return tg__error("%s: kernel size should be greater than zero, but got kH: %lld kW: "
                     "%lld",
                     op, (long long)w->kh, (long long)w->kw);
  if (w->sh <= 0 || w->sw <= 0)
    return tg__error("%s: stride should be greater than zero, but got dH: %lld dW: %lld",
                     op, (long long)w->sh, (long long)w->sw);
  if (w->ph < 0 || w->pw < 0)
    return tg__error("%s: pad must be non-negative, but got padH: %lld padW: %lld", op,
                     (long long)w->ph, (long long)w->pw);
  if (w->kw / 2 < w->pw || w->kh / 2 < w->ph)
    return tg__error(
        "%s: pad should be smaller than or equal to half of kernel size, but "
        "got padW = %lld, padH = %lld, kW = %lld, kH = %lld",
        op, (long long)w->pw, (long long)w->ph, (long long)w->kw, (long long)w->kh);
  const int64_t *s = x->shape;
  int64_t padded, area;
  if (__builtin_add_overflow(s[2], 2 * w->ph, &padded) || /* 2p <= k: no overflow */
      __builtin_add_overflow(s[3], 2 * w->pw, &padded) ||
      __builtin_mul_overflow(w->kh, w->kw, &area))
    return tg__error("%s: sizes overflow int64 (input of size (%lldx%lldx%lld), kernel "
                     "%lld x %lld, padding %lld x %lld)",
                     op, (long long)s[1], (long long)s[2], (long long)s[3],
                     (long long)w->kh, (long long)w->kw, (long long)w->ph,
                     (long long)w->pw);
  /* (s - k) + 2p cannot overflow: s >= 0 < k and 2p <= k */
  *oh = floor_div(s[2] - w->kh + 2 * w->ph, w->sh) + 1;
  *ow = floor_div(s[3] - w->kw + 2 * w->pw, w->sw) + 1;
  if (*oh < 1 || *ow < 1)
    return tg__error("%s: Given input size: (%lldx%lldx%lld). Calculated output size: "
                     "(%lldx%lldx%lld). Output size is too small",
                     op, (long long)s[1], (long long)s[2], (long long)s[3],
                     (long long)s[1], (long long)*oh, (long long)*ow);
  return 0;
}

/* The description of a pooling with window w (dilation 1, no ceil_mode) of x into
 * oh x ow, for the device kernels (pool_cuda.h). */
static tg__pool_desc window_desc(int kind, const tg_tensor *x, const window *w,
                                 int64_t oh, int64_t ow) {
  return (tg__pool_desc){.kind = kind,
                         .planes = x->shape[0] * x->shape[1],
                         .in = {x->shape[2], x->shape[3]},
                         .out = {oh, ow},
                         .k = {w->kh, w->kw},
                         .s = {w->sh, w->sw},
                         .p = {w->ph, w->pw},
                         .d = {1, 1},
                         .include_pad = true};
}

/* One job over all planes (n, c): input planes [h, w], output planes [oh, ow]. In a
 * backward, src is the output gradient and dst the input gradient. */
typedef struct {
  tg_dtype dtype;
  int64_t h, w, oh, ow;
  window win;
  const void *src;
  void *dst;
  int64_t *idx;
  const tg__tap *xtaps;      /* bilinear: the taps of every output column */
  const void *aux, *aux_out; /* 2x2 max pool backward: the forward's x and y */
} plane_job;

typedef void (*plane_fn)(const plane_job *job, int64_t p);

static plane_job job_of(const tg_tensor *x, const tg_tensor *y, const void *src,
                        void *dst) {
  return (plane_job){.dtype = x->dtype,
                     .h = x->shape[2],
                     .w = x->shape[3],
                     .oh = y->shape[2],
                     .ow = y->shape[3],
                     .src = src,
                     .dst = dst};
}

/* Planes in parallel; `cost` is the work per output element (the product saturates:
 * it only picks a thread count). */
static void for_each_plane(plane_fn fn, const plane_job *job, int64_t planes,
                           int64_t cost) {
  int64_t work;
  if (__builtin_mul_overflow(planes * job->oh * job->ow, cost, &work))
    work = INT64_MAX;
#pragma omp parallel for num_threads(tg__threads(work))
  for (int64_t p = 0; p < planes; p++)
    fn(job, p);
}

static int64_t planes_of(const tg_tensor *x) { return x->shape[0] * x->shape[1]; }

/* What a window covers along one axis: input [lo, hi), clipped to the image, and its
 * size before clipping, the factor of the count a mean divides by. Rows and columns
 * are separate so that a plane loop finds a row's extent once per row. */
typedef struct {
  int64_t lo, hi, size;
} extent;

/* Output o of a window of size k, stride s and padding pad over `in` inputs; size is
 * clipped to the padded image (count_include_pad, as PyTorch's avg_pool). */
static extent window_extent(int64_t o, int64_t k, int64_t s, int64_t pad, int64_t in) {
  const int64_t a = o * s - pad, b = a + k;
  return (extent){a > 0 ? a : 0, b < in ? b : in, (b < in + pad ? b : in + pad) - a};
}

/* ------------------------------------------------------------ max pool -- */

/* out = max over the window clipped to the image; idx = its flat index in the plane
 * (the first maximum, or a NaN, as PyTorch). idx may be NULL. */
static void max_pool_plane(const plane_job *j, int64_t p) {
  const window *w = &j->win;
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *src = (const T *)j->src + p * j->h * j->w;
    T *out = (T *)j->dst + p * j->oh * j->ow;
    int64_t *idx = j->idx ? j->idx + p * j->oh * j->ow : NULL;
    for (int64_t oy = 0; oy < j->oh; oy++) {
      const extent ey = window_extent(oy, w->kh, w->sh, w->ph, j->h);
      for (int64_t ox = 0; ox < j->ow; ox++) {
        const extent ex = window_extent(ox, w->kw, w->sw, w->pw, j->w);
        int64_t best = ey.lo * j->w + ex.lo;
        T m = -INFINITY;
        for (int64_t y = ey.lo; y < ey.hi; y++)
          for (int64_t x = ex.lo; x < ex.hi; x++) {
            T v = src[y * j->w + x];
            if (v > m || isnan(v)) {
              m = v;
              best = y * j->w + x;
            }
          }
        out[oy * j->ow + ox] = m;
        if (idx)
          idx[oy * j->ow + ox] = best;
      }
    }
  });
}

/* dx[plane][idx] += g: every output routes its gradient to its argmax. */
static void max_unpool_plane(const plane_job *j, int64_t p) {
  const int64_t n = j->oh * j->ow;
  const int64_t *idx = j->idx + p * n;
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *g = (const T *)j->src + p * n;
    T *dx = (T *)j->dst + p * j->h * j->w;
    for (int64_t k = 0; k < n; k++)
      dx[idx[k]] += g[k];
  });
}

/* 2x2 windows with stride 2 and no padding, the pooling of most conv nets, have plain
 * loops of their own, and keep no indices: the backward finds each window's maximum
 * again from x and y, by the same rule (the first maximum, or the last NaN). */
static bool is_2x2(const window *w) {
  return w->kh == 2 && w->kw == 2 && w->sh == 2 && w->sw == 2 && w->ph == 0 && w->pw == 0;
}

/* m, or v when v wins the scan (larger, or NaN). */
#define MAX_STEP(m, v) ((v) > (m) || (v) != (v) ? (v) : (m))

static void max_pool_2x2_plane(const plane_job *j, int64_t p) {
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *src = (const T *)j->src + p * j->h * j->w;
    T *out = (T *)j->dst + p * j->oh * j->ow;
    for (int64_t oy = 0; oy < j->oh; oy++) {
      const T *r0 = src + 2 * oy * j->w, *r1 = r0 + j->w;
      T *o = out + oy * j->ow;
      for (int64_t ox = 0; ox < j->ow; ox++) {
        T m = r0[2 * ox];
        m = MAX_STEP(m, r0[2 * ox + 1]);
        m = MAX_STEP(m, r1[2 * ox]);
        o[ox] = MAX_STEP(m, r1[2 * ox + 1]);
      }
    }
  });
}

/* dx of a plane: each window's gradient to the position the forward picked, zero
 * elsewhere (including a last odd row or column, which no window covers). src is the
 * output gradient; j->aux the forward's input x and j->aux_out its output y. */
static void max_unpool_2x2_plane(const plane_job *j, int64_t p) {
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *x = (const T *)j->aux + p * j->h * j->w;
    const T *y = (const T *)j->aux_out + p * j->oh * j->ow;
    const T *g = (const T *)j->src + p * j->oh * j->ow;
    T *dx = (T *)j->dst + p * j->h * j->w;
    for (int64_t oy = 0; oy < j->oh; oy++) {
      const T *x0 = x + 2 * oy * j->w, *x1 = x0 + j->w;
      T *d0 = dx + 2 * oy * j->w, *d1 = d0 + j->w;
      for (int64_t ox = 0; ox < j->ow; ox++) {
        const T a = x0[2 * ox], b = x0[2 * ox + 1], c = x1[2 * ox], d = x1[2 * ox + 1];
        const T m = y[oy * j->ow + ox], gv = g[oy * j->ow + ox];
        int k; /* the last NaN, or the first maximum */
        if (m != m)
          k = d != d ? 3 : c != c ? 2 : b != b ? 1 : 0;
        else
          k = a == m ? 0 : b == m ? 1 : c == m ? 2 : 3;
        d0[2 * ox] = k == 0 ? gv : 0;
        d0[2 * ox + 1] = k == 1 ? gv : 0;
        d1[2 * ox] = k == 2 ? gv : 0;
        d1[2 * ox + 1] = k == 3 ? gv : 0;
      }
      if (j->w % 2)
        d0[j->w - 1] = d1[j->w - 1] = 0;
    }
    if (j->h % 2)
      memset(dx + (j->h - 1) * j->w, 0, (size_t)j->w * sizeof(T));
  });
}

#if HAVE_AVX2
/* float32 versions of the two loops above, 8 windows at a time (the scalar loops mix
 * stride-2 loads with NaN tests, which compilers vectorise poorly). Rows end in
 * masked loads and stores, so a row of any length is one loop. */

static bool has_avx2(void) {
  static atomic_int state; /* 0 unknown, 1 yes, 2 no; racing threads store the same */
  int s = atomic_load_explicit(&state, memory_order_relaxed);
  if (!s) {
    __builtin_cpu_init();
    s = __builtin_cpu_supports("avx2") ? 1 : 2;
    atomic_store_explicit(&state, s, memory_order_relaxed);
  }
  return s == 1;
}

/* Lanes [0, n) of a vector. */
TARGET static INLINE __m256i lanes(int64_t n) {
  n = n < 0 ? 0 : n > 8 ? 8 : n;
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

TARGET static INLINE __m256 load_n(const float *p, int64_t n) {
  return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(n));
}

TARGET static INLINE void store_n(float *p, int64_t n, __m256 v) {
  if (n >= 8)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, lanes(n), v);
}

/* The even and odd elements of the first n (<= 16) floats at p, in order. */
TARGET static INLINE void split_pairs(const float *p, int64_t n, __m256 *even,
                                      __m256 *odd) {
  const __m256 lo = load_n(p, n), hi = load_n(p + 8, n - 8);
  /* shuffle_ps works per 128-bit half: e = [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6] */
  const __m256 e = _mm256_shuffle_ps(lo, hi, 0x88), o = _mm256_shuffle_ps(lo, hi, 0xDD);
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
}

/* The inverse: [a0 b0 a1 b1 ...], first n (<= 16) floats stored at p. */
TARGET static INLINE void store_pairs(float *p, int64_t n, __m256 a, __m256 b) {
  const __m256 l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);
  store_n(p, n, _mm256_permute2f128_ps(l, h, 0x20));
  store_n(p + 8, n - 8, _mm256_permute2f128_ps(l, h, 0x31));
}

/* m, or v where v wins the scan (larger, or NaN). */
TARGET static INLINE __m256 max_step(__m256 m, __m256 v) {
  const __m256 win =
      _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_ps(m, v, win);
}

TARGET static void max_pool_2x2_plane_f32(const plane_job *j, int64_t p) {
  const float *src = (const float *)j->src + p * j->h * j->w;
  float *out = (float *)j->dst + p * j->oh * j->ow;
  for (int64_t oy = 0; oy < j->oh; oy++) {
    const float *r0 = src + 2 * oy * j->w, *r1 = r0 + j->w;
    for (int64_t ox = 0; ox < j->ow; ox += 8) {
      const int64_t n = j->ow - ox;
      __m256 a, b, c, d;
      split_pairs(r0 + 2 * ox, 2 * n, &a, &b);
      split_pairs(r1 + 2 * ox, 2 * n, &c, &d);
      store_n(out + oy * j->ow + ox, n, max_step(max_step(max_step(a, b), c), d));
    }
  }
}

TARGET static void max_unpool_2x2_plane_f32(const plane_job *j, int64_t p) {
  const float *x = (const float *)j->aux + p * j->h * j->w;
  const float *y = (const float *)j->aux_out + p * j->oh * j->ow;
  const float *g = (const float *)j->src + p * j->oh * j->ow;
  float *dx = (float *)j->dst + p * j->h * j->w;
  for (int64_t oy = 0; oy < j->oh; oy++) {
    const float *x0 = x + 2 * oy * j->w, *x1 = x0 + j->w;
    float *d0 = dx + 2 * oy * j->w, *d1 = d0 + j->w;
    for (int64_t ox = 0; ox < j->ow; ox += 8) {
      const int64_t n = j->ow - ox;
      __m256 a, b, c, d;
      split_pairs(x0 + 2 * ox, 2 * n, &a, &b);
      split_pairs(x1 + 2 * ox, 2 * n, &c, &d);
      const __m256 m = load_n(y + oy * j->ow + ox, n),
                   gv = load_n(g + oy * j->ow + ox, n);
      /* first maximum: e* ; last NaN: n* ; the window's NaN-ness picks */
      const __m256 ea = _mm256_cmp_ps(a, m, _CMP_EQ_OQ);
      const __m256 eb = _mm256_andnot_ps(ea, _mm256_cmp_ps(b, m, _CMP_EQ_OQ));
      const __m256 eab = _mm256_or_ps(ea, eb);
      const __m256 ec = _mm256_andnot_ps(eab, _mm256_cmp_ps(c, m, _CMP_EQ_OQ));
      const __m256 nd = _mm256_cmp_ps(d, d, _CMP_UNORD_Q);
      const __m256 nc = _mm256_andnot_ps(nd, _mm256_cmp_ps(c, c, _CMP_UNORD_Q));
      const __m256 ncd = _mm256_or_ps(nc, nd);
      const __m256 nb = _mm256_andnot_ps(ncd, _mm256_cmp_ps(b, b, _CMP_UNORD_Q));
      const __m256 nan = _mm256_cmp_ps(m, m, _CMP_UNORD_Q),
                   ones = _mm256_cmp_ps(m, m, _CMP_TRUE_UQ);
      const __m256 sa =
          _mm256_blendv_ps(ea, _mm256_andnot_ps(_mm256_or_ps(nb, ncd), ones), nan);
      const __m256 sb = _mm256_blendv_ps(eb, nb, nan);
      const __m256 sc = _mm256_blendv_ps(ec, nc, nan);
      const __m256 sd =
          _mm256_blendv_ps(_mm256_andnot_ps(_mm256_or_ps(eab, ec), ones), nd, nan);
      store_pairs(d0 + 2 * ox, 2 * n, _mm256_and_ps(sa, gv), _mm256_and_ps(sb, gv));
      store_pairs(d1 + 2 * ox, 2 * n, _mm256_and_ps(sc, gv), _mm256_and_ps(sd, gv));
    }
    if (j->w % 2)
      d0[j->w - 1] = d1[j->w - 1] = 0;
  }
  if (j->h % 2)
    memset(dx + (j->h - 1) * j->w, 0, (size_t)j->w * sizeof(float));
}
#endif

/* The 2x2 kernels for a dtype: AVX2 for float32 where the CPU has it. */
static plane_fn max_pool_2x2_fn(tg_dtype dtype, bool backward) {
#if HAVE_AVX2
  if (dtype == TG_F32 && has_avx2())
    return backward ? max_unpool_2x2_plane_f32 : max_pool_2x2_plane_f32;
#else
  (void)dtype;
#endif
  return backward ? max_unpool_2x2_plane : max_pool_2x2_plane;
}

static int max_pool_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  const bool fast = *(const bool *)node->ctx;
  tg_tensor *dx = fast ? tg__new_like(x) : tg_zeros_like(x);
  if (!dx)
    return -1;
  plane_job job = job_of(x, g, tg__data(g), tg__data(dx));
  if (fast) {
    job.aux = tg__data(x);
    job.aux_out = tg__data(node->output);
    for_each_plane(max_pool_2x2_fn(x->dtype, true), &job, planes_of(x), 4);
  } else {
    job.idx = tg__data(node->saved[0]);
    for_each_plane(max_unpool_plane, &job, planes_of(x), 1);
  }
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_max_pool2d(const tg_tensor *x, const int64_t kernel[2],
                         const int64_t stride[2], const int64_t padding[2]) {
  const char *op = "tg_max_pool2d";
  if (x && x->ndim == 3) { /* unbatched [C, H, W] */
    tg_tensor *xb = tg__add_batch(x);
    tg_tensor *y = tg__drop_batch(tg_max_pool2d(xb, kernel, stride, padding));
    tg_tensor_free(xb);
    return y;
  }
  window w;
  int64_t oh, ow;
  if (window_check(op, x, kernel, stride, padding, &w, &oh, &ow) < 0)
    return NULL;
  if (x->device.type != TG_DEVICE_CPU) {
    const tg__pool_desc d = window_desc(TG__POOL_MAX, x, &w, oh, ow);
    return tg__pool_run(op, x, &d, NULL);
  }
  tg_tensor *out = new_output(op, x, oh, ow), *idx = NULL;
  if (!out)
    return NULL;
  const bool fast = is_2x2(&w);
  if (!fast && tg__should_record(1, &x) &&
      !(idx = tg__new(out->shape, 4, TG_I64, x->device))) {
    tg_tensor_free(out);
    return NULL;
  }
  plane_job job = job_of(x, out, tg__data(x), tg__data(out));
  job.win = w;
  job.idx = idx ? tg__data(idx) : NULL;
  for_each_plane(fast ? max_pool_2x2_fn(x->dtype, false) : max_pool_plane, &job,
                 planes_of(x), w.kh * w.kw);
  tg_node *node;
  out = tg__finish(op, out, 1, &x, max_pool_backward, &node);
  if (node) {
    *(bool *)tg__ctx(node, sizeof(bool)) = fast;
    if (idx)
      tg__save(node, idx);
  }
  tg_tensor_free(idx);
  return out;
}

/* ------------------------------- avg pool (fixed and adaptive windows) -- */

/* Output o of `out` covers input [floor(o*in/out), ceil((o+1)*in/out)). */
static int64_t adaptive_start(int64_t o, int64_t out, int64_t in) {
  return (o / out) * in + ((o % out) * in) / out;
}
static int64_t adaptive_end(int64_t o, int64_t out, int64_t in) {
  return 1 + ((o + 1) * in - 1) / out;
}

static extent adaptive_extent(int64_t o, int64_t out, int64_t in) {
  int64_t a = adaptive_start(o, out, in), b = adaptive_end(o, out, in);
  return (extent){a, b, b - a};
}

/* avg_pool (fixed windows) and adaptive_avg_pool. backward = false: out = the mean of
 * the window; true: dx[window] += g / count. Inline: each of the four entry points
 * below gets its own loop with the two flags fixed. */
static inline void mean_plane(const plane_job *j, int64_t p, bool adaptive,
                              bool backward) {
  const window *w = &j->win;
  if (j->oh == 0 || j->ow == 0) /* nothing to write (the backward's dx is zeros): no */
    return;                     /* walk over 2^31 rows of an [2^31, 0] output either */
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *src = (const T *)j->src + p * (backward ? j->oh * j->ow : j->h * j->w);
    T *dst = (T *)j->dst + p * (backward ? j->h * j->w : j->oh * j->ow);
    for (int64_t oy = 0; oy < j->oh; oy++) {
      const extent ey = adaptive ? adaptive_extent(oy, j->oh, j->h)
                                 : window_extent(oy, w->kh, w->sh, w->ph, j->h);
      for (int64_t ox = 0; ox < j->ow; ox++) {
        const extent ex = adaptive ? adaptive_extent(ox, j->ow, j->w)
                                   : window_extent(ox, w->kw, w->sw, w->pw, j->w);
        const double count = (double)(ey.size * ex.size);
        if (backward) {
          T share = (T)(src[oy * j->ow + ox] / count);
          for (int64_t y = ey.lo; y < ey.hi; y++)
            for (int64_t x = ex.lo; x < ex.hi; x++)
              dst[y * j->w + x] += share;
        } else {
          double acc = 0;
          for (int64_t y = ey.lo; y < ey.hi; y++)
            for (int64_t x = ex.lo; x < ex.hi; x++)
              acc += src[y * j->w + x];
          dst[oy * j->ow + ox] = (T)(acc / count);
        }
      }
    }
  });
}

static void avg_fwd_plane(const plane_job *j, int64_t p) {
  mean_plane(j, p, false, false);
}
static void avg_bwd_plane(const plane_job *j, int64_t p) {
  mean_plane(j, p, false, true);
}
static void adaptive_fwd_plane(const plane_job *j, int64_t p) {
  mean_plane(j, p, true, false);
}
static void adaptive_bwd_plane(const plane_job *j, int64_t p) {
  mean_plane(j, p, true, true);
}

static int avg_pool_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  tg_tensor *dx = tg_zeros_like(x);
  if (!dx)
    return -1;
  plane_job job = job_of(x, g, tg__data(g), tg__data(dx));
  job.win = *(const window *)node->ctx;
  for_each_plane(avg_bwd_plane, &job, planes_of(x), job.win.kh * job.win.kw);
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_avg_pool2d(const tg_tensor *x, const int64_t kernel[2],
                         const int64_t stride[2], const int64_t padding[2]) {
  const char *op = "tg_avg_pool2d";
  if (x && x->ndim == 3) { /* unbatched [C, H, W] */
    tg_tensor *xb = tg__add_batch(x);
    tg_tensor *y = tg__drop_batch(tg_avg_pool2d(xb, kernel, stride, padding));
    tg_tensor_free(xb);
    return y;
  }
  window w;
  int64_t oh, ow;
  if (window_check(op, x, kernel, stride, padding, &w, &oh, &ow) < 0)
    return NULL;
  if (x->device.type != TG_DEVICE_CPU) {
    const tg__pool_desc d = window_desc(TG__POOL_AVG, x, &w, oh, ow);
    return tg__pool_run(op, x, &d, NULL);
  }
  tg_tensor *out = new_output(op, x, oh, ow);
  if (!out)
    return NULL;
  plane_job job = job_of(x, out, tg__data(x), tg__data(out));
  job.win = w;
  for_each_plane(avg_fwd_plane, &job, planes_of(x), w.kh * w.kw);
  tg_node *node;
  out = tg__finish(op, out, 1, &x, avg_pool_backward, &node);
  if (node)
    *(window *)tg__ctx(node, sizeof w) = w;
  return out;
}

/* --------------------------------------------------- adaptive avg pool -- */

/* Work per output: about the input elements each window covers. */
static int64_t adaptive_cost(const plane_job *j) {
  return (j->h / (j->oh ? j->oh : 1) + 1) * (j->w / (j->ow ? j->ow : 1) + 1);
}

static int adaptive_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  tg_tensor *dx = tg_zeros_like(x);
  if (!dx)
    return -1;
  plane_job job = job_of(x, g, tg__data(g), tg__data(dx));
  for_each_plane(adaptive_bwd_plane, &job, planes_of(x), adaptive_cost(&job));
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_adaptive_avg_pool2d(const tg_tensor *x, const int64_t output_size[2]) {
  const char *op = "tg_adaptive_avg_pool2d";
  if (x && x->ndim == 3 && x->shape[0] > 0) { /* unbatched [C, H, W] */
    tg_tensor *xb = tg__add_batch(x);
    tg_tensor *y = tg__drop_batch(tg_adaptive_avg_pool2d(xb, output_size));
    tg_tensor_free(xb);
    return y;
  }
  if (check_input(op, x) < 0)
    return NULL;
  if (!output_size)
    return tg__error("%s: argument 'output_size' is NULL", op), NULL;
  char s[TG_SHAPE_STR_LEN];
  if (output_size[0] < 0 || output_size[1] < 0)
    return tg__error("%s: elements of output_size must be greater than or equal to 0 but "
                     "received {%lld, %lld}",
                     op, (long long)output_size[0], (long long)output_size[1]),
           NULL;
  for (int d = 2; d < 4; d++)
    if (x->shape[d] == 0)
      return tg__error("%s: Expected input to have non-zero size for non-batch "
                       "dimensions, but input has sizes %s with dimension %d being empty",
                       op, tg_shape_str(x, s, sizeof s), d),
             NULL;
  if (x->device.type != TG_DEVICE_CPU) {
    const window none = {1, 1, 1, 1, 0, 0};
    tg__pool_desc d =
        window_desc(TG__POOL_ADAPTIVE, x, &none, output_size[0], output_size[1]);
    return tg__pool_run(op, x, &d, NULL);
  }
  tg_tensor *out = new_output(op, x, output_size[0], output_size[1]);
  if (!out)
    return NULL;
  plane_job job = job_of(x, out, tg__data(x), tg__data(out));
  for_each_plane(adaptive_fwd_plane, &job, planes_of(x), adaptive_cost(&job));
  return tg__finish(op, out, 1, &x, adaptive_backward, NULL);
}

/* ------------------------------------------------------------ upsample -- */

/* PyTorch's checks of an upsampling of x to size. */
static int upsample_check(const char *op, const tg_tensor *x, const int64_t size[2]) {
  if (check_input(op, x) < 0)
    return -1;
  if (!size)
    return tg__error("%s: argument 'output_size' is NULL", op);
  if (x->shape[2] <= 0 || x->shape[3] <= 0 || size[0] <= 0 || size[1] <= 0)
    return tg__error("%s: Input and output sizes should be greater than 0, but got input "
                     "(H: %lld, W: %lld) output (H: %lld, W: %lld)",
                     op, (long long)x->shape[2], (long long)x->shape[3],
                     (long long)size[0], (long long)size[1]);
  return 0;
}

/* The float scale of PyTorch's nearest and float32 linear formulas: in / out in float. */
static float float_scale(int64_t in, int64_t out) { return (float)in / (float)out; }

/* The upsampling of x [N, C, H, W] to size as the loops below compute it (weights and
 * sums in x's dtype), for the device tables of pool_ex.c. */
static tg_tensor *upsample_on_device(const char *op, const tg_tensor *x,
                                     const int64_t size[2], bool linear) {
  const int64_t H = x->shape[2], W = x->shape[3];
  const tg__resample_desc d = {
      .planes = x->shape[0] * x->shape[1],
      .in = {1, H, W},
      .out = {1, size[0], size[1]},
      .taps = {1, linear ? 2 : 1, linear ? 2 : 1},
      .in_dtype = true,
      .scale = {1, (double)H / (double)size[0], (double)W / (double)size[1]},
      .scale_f = {1, float_scale(H, size[0]), float_scale(W, size[1])}};
  return tg__resample_run(op, x, &d);
}

/* backward = false: out[dst] = x[src]; true: dx[src] += g[dst]. */
static void nearest_plane(const plane_job *j, int64_t p, bool backward) {
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *src = (const T *)j->src + p * (backward ? j->oh * j->ow : j->h * j->w);
    T *dst = (T *)j->dst + p * (backward ? j->h * j->w : j->oh * j->ow);
    const float sy = float_scale(j->h, j->oh), sx = float_scale(j->w, j->ow);
    for (int64_t oy = 0; oy < j->oh; oy++) {
      const int64_t row = tg__nearest_src(oy, j->h, j->oh, sy) * j->w;
      for (int64_t ox = 0; ox < j->ow; ox++) {
        int64_t s = row + tg__nearest_src(ox, j->w, j->ow, sx), d = oy * j->ow + ox;
        if (backward)
          dst[s] += src[d];
        else
          dst[d] = src[s];
      }
    }
  });
}

static void nearest_fwd_plane(const plane_job *j, int64_t p) {
  nearest_plane(j, p, false);
}
static void nearest_bwd_plane(const plane_job *j, int64_t p) {
  nearest_plane(j, p, true);
}

/* Exact doubling (the U-Net's upsampling): pixel (y, x) feeds the 2x2 block at
 * (2y, 2x). The backward writes every dx (no zero fill), adding the block in the
 * order of nearest_plane's loop, so both give the same bits. */
static bool is_double(const plane_job *j) {
  return j->oh == 2 * j->h && j->ow == 2 * j->w;
}

static void nearest2_fwd_plane(const plane_job *j, int64_t p) {
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *src = (const T *)j->src + p * j->h * j->w;
    T *dst = (T *)j->dst + p * j->oh * j->ow;
    for (int64_t y = 0; y < j->h; y++) {
      T *d0 = dst + 2 * y * j->ow, *d1 = d0 + j->ow;
      for (int64_t x = 0; x < j->w; x++) {
        const T v = src[y * j->w + x];
        d0[2 * x] = d0[2 * x + 1] = d1[2 * x] = d1[2 * x + 1] = v;
      }
    }
  });
}

static void nearest2_bwd_plane(const plane_job *j, int64_t p) {
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *g = (const T *)j->src + p * j->oh * j->ow;
    T *dx = (T *)j->dst + p * j->h * j->w;
    for (int64_t y = 0; y < j->h; y++) {
      const T *g0 = g + 2 * y * j->ow, *g1 = g0 + j->ow;
      for (int64_t x = 0; x < j->w; x++)
        dx[y * j->w + x] = (T)0 + g0[2 * x] + g0[2 * x + 1] + g1[2 * x] + g1[2 * x + 1];
    }
  });
}

static int nearest_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  plane_job job = job_of(x, g, NULL, NULL);
  const bool twice = is_double(&job);
  tg_tensor *dx = twice ? tg__new_like(x) : tg_zeros_like(x);
  if (!dx)
    return -1;
  job = job_of(x, g, tg__data(g), tg__data(dx));
  for_each_plane(twice ? nearest2_bwd_plane : nearest_bwd_plane, &job, planes_of(x), 1);
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_upsample_nearest2d(const tg_tensor *x, const int64_t output_size[2]) {
  const char *op = "tg_upsample_nearest2d";
  if (upsample_check(op, x, output_size) < 0)
    return NULL;
  if (x->device.type != TG_DEVICE_CPU)
    return upsample_on_device(op, x, output_size, false);
  tg_tensor *out = new_output(op, x, output_size[0], output_size[1]);
  if (!out)
    return NULL;
  plane_job job = job_of(x, out, tg__data(x), tg__data(out));
  for_each_plane(is_double(&job) ? nearest2_fwd_plane : nearest_fwd_plane, &job,
                 planes_of(x), 1);
  return tg__finish(op, out, 1, &x, nearest_backward, NULL);
}

/* Bilinear, align_corners = false: output o maps to src = (o + 0.5) * in/out - 0.5,
 * clamped at 0, between pixels i[0] = floor(src) and i[1] = min(i[0] + 1, in - 1) with
 * weights w[0] = 1 - w[1], w[1] = src - i[0]. In the tensor's dtype, as PyTorch. */
static tg__tap linear_tap_at(tg_dtype dtype, int64_t o, int64_t in, int64_t out) {
  return tg__linear_tap(o, in, out, (double)in / (double)out, float_scale(in, out), false,
                        dtype == TG_F32, true);
}

/* backward = false: out = the bilinear blend of x; true: dx gets g times each weight. */
static void bilinear_plane(const plane_job *j, int64_t p, bool backward) {
  TG_DISPATCH_FLOAT(j->dtype, T, {
    const T *src = (const T *)j->src + p * (backward ? j->oh * j->ow : j->h * j->w);
    T *dst = (T *)j->dst + p * (backward ? j->h * j->w : j->oh * j->ow);
    for (int64_t oy = 0; oy < j->oh; oy++) {
      const tg__tap ty = linear_tap_at(j->dtype, oy, j->h, j->oh);
      const int64_t r0 = ty.i[0] * j->w, r1 = ty.i[1] * j->w;
      const T ly0 = (T)ty.w[0], ly1 = (T)ty.w[1];
      for (int64_t ox = 0; ox < j->ow; ox++) {
        const tg__tap tx = j->xtaps[ox];
        const T lx0 = (T)tx.w[0], lx1 = (T)tx.w[1];
        const int64_t d = oy * j->ow + ox;
        if (backward) {
          T g = src[d];
          dst[r0 + tx.i[0]] += ly0 * lx0 * g;
          dst[r0 + tx.i[1]] += ly0 * lx1 * g;
          dst[r1 + tx.i[0]] += ly1 * lx0 * g;
          dst[r1 + tx.i[1]] += ly1 * lx1 * g;
        } else {
          dst[d] = ly0 * (lx0 * src[r0 + tx.i[0]] + lx1 * src[r0 + tx.i[1]]) +
                   ly1 * (lx0 * src[r1 + tx.i[0]] + lx1 * src[r1 + tx.i[1]]);
        }
      }
    }
  });
}

static void bilinear_fwd_plane(const plane_job *j, int64_t p) {
  bilinear_plane(j, p, false);
}
static void bilinear_bwd_plane(const plane_job *j, int64_t p) {
  bilinear_plane(j, p, true);
}

/* Runs one bilinear pass with the column taps computed once. */
static int bilinear_run(plane_job *job, int64_t planes, bool backward) {
  tg__tap *taps = malloc((size_t)job->ow * sizeof *taps);
  if (!taps)
    return tg__error("tg_upsample_bilinear2d: out of memory");
  for (int64_t ox = 0; ox < job->ow; ox++)
    taps[ox] = linear_tap_at(job->dtype, ox, job->w, job->ow);
  job->xtaps = taps;
  for_each_plane(backward ? bilinear_bwd_plane : bilinear_fwd_plane, job, planes, 4);
  free(taps);
  return 0;
}

static int bilinear_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const tg_tensor *x = node->inputs[0];
  tg_tensor *dx = tg_zeros_like(x);
  if (!dx)
    return -1;
  plane_job job = job_of(x, g, tg__data(g), tg__data(dx));
  if (bilinear_run(&job, planes_of(x), true) < 0)
    return -1;
  gi[0] = dx;
  return 0;
}

tg_tensor *tg_upsample_bilinear2d(const tg_tensor *x, const int64_t output_size[2]) {
  const char *op = "tg_upsample_bilinear2d";
  if (upsample_check(op, x, output_size) < 0)
    return NULL;
  if (x->device.type != TG_DEVICE_CPU)
    return upsample_on_device(op, x, output_size, true);
  tg_tensor *out = new_output(op, x, output_size[0], output_size[1]);
  if (!out)
    return NULL;
  plane_job job = job_of(x, out, tg__data(x), tg__data(out));
  if (bilinear_run(&job, planes_of(x), false) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  return tg__finish(op, out, 1, &x, bilinear_backward, NULL);
}
