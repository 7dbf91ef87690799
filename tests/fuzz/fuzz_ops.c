/* libFuzzer harness for the ops' argument checks: the input bytes are a small program
 * of calls on a pool of tensors — creations of any dtype and small shape (empty dims
 * too), views of them (transposed, narrowed: non-contiguous), and then ops with
 * arguments drawn from the bytes, a quarter of them from a table of edge values
 * (0, -1, huge, INT64_MIN, NaN, ...), so that most calls are invalid in some way, some
 * are valid, and results feed later calls, backward passes included. Every call must
 * return a result or fail with a message (tg_last_error), never crash, leak or trip
 * the sanitizers. Build: CC=clang meson setup build-fuzz -Dfuzz=true; run as .ci/run
 * does (ASAN_OPTIONS=allocator_may_return_null=1:max_allocation_size_mb=2048, so that
 * requests past 2 GiB fail as on a small machine, and UBSAN_OPTIONS=halt_on_error=1).
 * TG_FUZZ_TRACE=1 prints each call and its CPU time, for replaying a failure. */
#include "tapegrad.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SLOTS = 8, MAX_CALLS = 48 };

typedef struct {
  const uint8_t *p;
  size_t n;
} bytes;

static unsigned u8(bytes *b) {
  if (!b->n)
    return 0;
  b->n--;
  return *b->p++;
}

/* A value for a size-like or index-like argument: small ones mostly, edge values
 * a quarter of the time. */
static int64_t arg(bytes *b) {
  static const int64_t edge[] = {
      0,         -1,        -2,   1, 2, 3, 7, 64, 1000, INT32_MAX, (int64_t)1 << 40,
      INT64_MAX, INT64_MIN, -1000};
  unsigned v = u8(b);
  if (v < 64)
    return edge[v % (sizeof edge / sizeof *edge)];
  return (int64_t)(v % 8) - 1; /* -1 .. 6 */
}

static double real(bytes *b) {
  static const double edge[] = {0.0,       -0.0,  1.0,  -1.0,  0.5,
                                1e-5,      -1e-5, 1e30, -1e30, INFINITY,
                                -INFINITY, NAN,   2.0,  0.1,   1.0 - 1e-12};
  return edge[u8(b) % (sizeof edge / sizeof *edge)];
}

static int dim_arg(bytes *b) {
  int64_t v = arg(b);
  return v > INT32_MAX || v < INT32_MIN ? (int)(v & 0x7fffffff) : (int)v;
}

static tg_tensor *pool[SLOTS];

static tg_tensor *slot(bytes *b) {
  unsigned v = u8(b);
  return v % 16 == 15 ? NULL : pool[v % SLOTS]; /* NULL now and then */
}

/* Keeps t (a new reference or NULL) in a pool slot; a failed call must say why. */
static void keep(bytes *b, tg_tensor *t) {
  if (!t) {
    if (!tg_last_error()[0])
      abort(); /* a failure without a message */
    tg_clear_error();
    return;
  }
  pool[u8(b) % SLOTS] = t; /* the scope frees it */
}

static void status(int rc) {
  if (rc < 0 && !tg_last_error()[0])
    abort();
  tg_clear_error();
}

static tg_tensor *create(bytes *b) {
  int64_t shape[5];
  const int ndim = (int)(u8(b) % 5);
  for (int i = 0; i < ndim; i++)
    shape[i] = u8(b) % 6; /* 0 .. 5: empty dims too */
  const unsigned kind = u8(b);
  const tg_dtype dt = kind % 3 == 0 ? TG_F64 : kind % 3 == 1 ? TG_F32 : TG_I64;
  tg_tensor *t = dt == TG_I64 ? tg_full(shape, ndim, (double)(u8(b) % 5), TG_I64, TG_CPU)
                              : tg_randn(shape, ndim, dt, TG_CPU);
  if (t && dt != TG_I64 && (kind & 8))
    status(tg_set_requires_grad(t, true));
  if (t && (kind & 16) && ndim >= 2) /* non-contiguous */
    t = tg_transpose(t, 0, ndim - 1);
  return t;
}

static void call(bytes *b) {
  tg_tensor *x = slot(b), *y = slot(b), *z = slot(b);
  int64_t a2[2] = {arg(b), arg(b)}, s2[2] = {arg(b), arg(b)}, p2[2] = {arg(b), arg(b)};
  int64_t d2[2] = {arg(b), arg(b)};
  const unsigned op = u8(b);
  static int trace = -1;
  if (trace < 0)
    trace = getenv("TG_FUZZ_TRACE") != NULL;
  if (trace) /* replaying a crash: which call it was */
    fprintf(stderr, "call %u: a %lld %lld s %lld %lld p %lld %lld d %lld %lld\n", op % 40,
            (long long)a2[0], (long long)a2[1], (long long)s2[0], (long long)s2[1],
            (long long)p2[0], (long long)p2[1], (long long)d2[0], (long long)d2[1]);
  switch (op % 40) {
  case 0:
  case 1:
    keep(b, create(b));
    break;
  case 2: {
    tg_tensor *(*f[])(const tg_tensor *, const tg_tensor *) = {tg_add, tg_sub, tg_mul,
                                                               tg_div};
    keep(b, f[u8(b) % 4](x, y));
    break;
  }
  case 3: {
    tg_tensor *(*f[])(const tg_tensor *) = {
        tg_neg,  tg_exp,  tg_log, tg_sqrt, tg_abs,   tg_relu,   tg_sigmoid,
        tg_tanh, tg_gelu, tg_sum, tg_mean, tg_clone, tg_detach, tg_contiguous};
    keep(b, f[u8(b) % 14](x));
    break;
  }
  case 4:
    keep(b, tg_pow(x, real(b)));
    break;
  case 5: {
    int64_t shape[4] = {arg(b), arg(b), arg(b), arg(b)};
    const int n = (int)(u8(b) % 5);
    keep(b, u8(b) & 1 ? tg_reshape(x, shape, n) : tg_view(x, shape, n));
    break;
  }
  case 6: {
    int dims[5] = {dim_arg(b), dim_arg(b), dim_arg(b), dim_arg(b), dim_arg(b)};
    keep(b, tg_permute(x, dims, (int)(u8(b) % 6)));
    break;
  }
  case 7:
    keep(b, tg_transpose(x, dim_arg(b), dim_arg(b)));
    break;
  case 8:
    keep(b, tg_narrow(x, dim_arg(b), arg(b), arg(b)));
    break;
  case 9: {
    tg_tensor *ts[3] = {x, y, z};
    keep(b, tg_cat(ts, (int)(u8(b) % 4), dim_arg(b)));
    break;
  }
  case 10: {
    const unsigned k = u8(b) % 4;
    keep(b, k == 0   ? tg_squeeze(x, dim_arg(b))
            : k == 1 ? tg_unsqueeze(x, dim_arg(b))
            : k == 2 ? tg_flatten(x, dim_arg(b), dim_arg(b))
                     : tg_squeeze_all(x));
    break;
  }
  case 11: {
    int dims[3] = {dim_arg(b), dim_arg(b), dim_arg(b)};
    const int n = (int)(u8(b) % 4);
    const bool keepdim = u8(b) & 1;
    const unsigned k = u8(b) % 3;
    keep(b, k == 0   ? tg_sum_dims(x, dims, n, keepdim)
            : k == 1 ? tg_mean_dims(x, dims, n, keepdim)
                     : tg_amax(x, dims, n, keepdim));
    break;
  }
  case 12: {
    tg_tensor *idx = NULL;
    keep(b, tg_max_dim(x, dim_arg(b), u8(b) & 1, u8(b) & 1 ? &idx : NULL));
    if (idx)
      keep(b, idx);
    break;
  }
  case 13:
    keep(b, tg_argmax(x, dim_arg(b), u8(b) & 1));
    break;
  case 14:
    keep(b, u8(b) & 1 ? tg_matmul(x, y) : tg_linear(x, y, z));
    break;
  case 15:
    keep(b, u8(b) & 1 ? tg_softmax(x, dim_arg(b)) : tg_log_softmax(x, dim_arg(b)));
    break;
  case 16: {
    tg_cross_entropy_options o = tg_cross_entropy_options_default();
    o.reduction = (tg_reduction)(u8(b) % 4); /* 3: not a reduction */
    o.ignore_index = arg(b);
    o.weight = u8(b) & 1 ? z : NULL;
    o.label_smoothing = real(b);
    keep(b, tg_cross_entropy_ex(x, y, &o));
    break;
  }
  case 17: {
    tg_nll_loss_options o = tg_nll_loss_options_default();
    o.reduction = (tg_reduction)(u8(b) % 4);
    o.ignore_index = arg(b);
    o.weight = u8(b) & 1 ? z : NULL;
    keep(b, tg_nll_loss_ex(x, y, &o));
    break;
  }
  case 18: {
    const tg_reduction r = (tg_reduction)(u8(b) % 4);
    keep(b,
         u8(b) & 1 ? tg_mse_loss(x, y, r) : tg_binary_cross_entropy_with_logits(x, y, r));
    break;
  }
  case 19:
    keep(b, u8(b) & 1 ? tg_group_norm(x, arg(b), y, z, real(b))
                      : tg_group_norm_relu(x, arg(b), y, z, real(b)));
    break;
  case 20: {
    tg_tensor *rm = u8(b) & 1 ? slot(b) : NULL, *rv = rm ? slot(b) : NULL;
    keep(b, tg_batch_norm(x, y, z, rm, rv, u8(b) & 1, real(b), real(b)));
    break;
  }
  case 21: {
    int64_t ns[3] = {arg(b), arg(b), arg(b)};
    keep(b, tg_layer_norm(x, ns, (int)(u8(b) % 4), y, z, real(b)));
    break;
  }
  case 22:
    keep(b, tg_conv2d(x, y, z, s2, p2, d2, arg(b)));
    break;
  case 23:
    keep(b, tg_conv_transpose2d(x, y, z, s2, p2, a2, d2, arg(b)));
    break;
  case 24: {
    tg_conv2d_options o = tg_conv2d_options_default();
    memcpy(o.stride, s2, sizeof s2);
    memcpy(o.padding, p2, sizeof p2);
    memcpy(o.dilation, d2, sizeof d2);
    o.groups = arg(b);
    o.padding_mode = (tg_padding_mode)(u8(b) % 4);
    keep(b, tg_conv2d_ex(x, y, z, &o));
    break;
  }
  case 25: {
    const unsigned k = u8(b) % 3;
    keep(b, k == 0   ? tg_max_pool2d(x, a2, u8(b) & 1 ? s2 : NULL, p2)
            : k == 1 ? tg_avg_pool2d(x, a2, s2, u8(b) & 1 ? p2 : NULL)
                     : tg_adaptive_avg_pool2d(x, a2));
    break;
  }
  case 26: {
    tg_max_pool2d_options o = tg_max_pool2d_options_default(a2[0], a2[1]);
    memcpy(o.stride, s2, sizeof s2);
    memcpy(o.padding, p2, sizeof p2);
    memcpy(o.dilation, d2, sizeof d2);
    o.ceil_mode = u8(b) & 1;
    tg_tensor *idx = NULL;
    tg_tensor *m = tg_max_pool2d_ex(x, &o, &idx);
    keep(b, m);
    if (m && idx) {
      keep(b, idx);
      keep(b, tg_max_unpool2d(m, idx, a2, s2, p2, u8(b) & 1 ? d2 : NULL));
    }
    break;
  }
  case 27: {
    tg_avg_pool2d_options o = tg_avg_pool2d_options_default(a2[0], a2[1]);
    memcpy(o.stride, s2, sizeof s2);
    memcpy(o.padding, p2, sizeof p2);
    o.ceil_mode = u8(b) & 1;
    o.count_include_pad = u8(b) & 1;
    o.divisor_override = arg(b);
    keep(b, tg_avg_pool2d_ex(x, &o));
    break;
  }
  case 28:
    keep(b, u8(b) & 1 ? tg_upsample_nearest2d(x, a2) : tg_upsample_bilinear2d(x, a2));
    break;
  case 29: {
    tg_upsample_options o = tg_upsample_options_default();
    for (int i = 0; i < 3; i++) {
      o.size[i] = arg(b);
      o.scale_factor[i] = u8(b) & 1 ? real(b) : 0;
    }
    o.align_corners = u8(b) & 1;
    o.recompute_scale_factor = u8(b) & 1;
    tg_tensor *(*f[])(const tg_tensor *, const tg_upsample_options *) = {
        tg_upsample_nearest1d_ex, tg_upsample_nearest2d_ex,  tg_upsample_nearest3d_ex,
        tg_upsample_linear1d_ex,  tg_upsample_bilinear2d_ex, tg_upsample_trilinear3d_ex};
    keep(b, f[u8(b) % 6](x, &o));
    break;
  }
  case 30:
    keep(b, tg_dropout(x, real(b), u8(b) & 1));
    break;
  case 31:
    keep(b, tg_upsample_nearest2d_cat(x, y));
    break;
  case 32:
    keep(b, tg_to_dtype(x, (tg_dtype)(u8(b) % 4)));
    break;
  case 33:
    keep(b, tg_leaky_relu(x, real(b)));
    break;
  case 34:
    keep(b, tg_div_ex(x, y, (tg_rounding_mode)(u8(b) % 4)));
    break;
  case 35: { /* a backward pass through whatever x came from */
    tg_tensor *loss = x ? tg_sum(x) : NULL;
    if (loss)
      status(tg_backward(loss));
    else
      tg_clear_error();
    break;
  }
  case 36:
    if (x)
      status(tg_backward_ex(x, y, u8(b) & 1));
    break;
  case 37:
    if (x)
      keep(b, tg_grad(x) ? tg_clone(tg_grad(x)) : tg_zeros_like(x));
    break;
  case 38:
    if (x)
      status(tg_set_requires_grad(x, u8(b) & 1));
    break;
  default: { /* 39: the rest, one more byte picks which */
    const unsigned k = u8(b) % 12;
    if (k == 0) {
      int dims[3] = {dim_arg(b), dim_arg(b), dim_arg(b)};
      keep(b, tg_squeeze_dims(x, dims, (int)(u8(b) % 4)));
    } else if (k == 1) { /* creation with any sizes, negative and huge too */
      int64_t shape[3] = {arg(b), arg(b), arg(b)};
      keep(b, tg_zeros(shape, (int)(u8(b) % 4), (tg_dtype)(u8(b) % 4), TG_CPU));
    } else if (k == 2) {
      keep(b, tg_arange(real(b), real(b), real(b), (tg_dtype)(u8(b) % 4), TG_CPU));
    } else if (k == 3) {
      keep(b, tg_softmax_ex(x, dim_arg(b), (tg_dtype)(u8(b) % 4)));
    } else if (k == 4) {
      tg_tensor *idx = NULL;
      keep(b, tg_min_dim(x, dim_arg(b), u8(b) & 1, u8(b) & 1 ? &idx : NULL));
      if (idx)
        keep(b, idx);
    } else if (k == 5) {
      keep(b, tg_argmin(x, dim_arg(b), u8(b) & 1));
    } else if (k == 6) {
      keep(b, tg_pow_tensor(x, y));
    } else if (k == 7) {
      keep(b, tg_add_alpha(x, y, real(b)));
    } else if (k == 8) {
      keep(b, tg_gelu_ex(x, (tg_gelu_approximate)(u8(b) % 3)));
    } else if (k == 9) {
      tg_bce_with_logits_options o = tg_bce_with_logits_options_default();
      o.reduction = (tg_reduction)(u8(b) % 4);
      o.weight = u8(b) & 1 ? z : NULL;
      o.pos_weight = u8(b) & 1 ? slot(b) : NULL;
      keep(b, tg_binary_cross_entropy_with_logits_ex(x, y, &o));
    } else if (k == 10) {
      const unsigned m = u8(b) % 3;
      keep(b, m == 0 ? tg_max_all(x) : m == 1 ? tg_min_all(x) : tg_argmax_all(x));
    } else {
      const unsigned m = u8(b) % 3;
      const double v = real(b);
      keep(b, m == 0   ? tg_rsub_scalar(x, v)
              : m == 1 ? tg_rdiv_scalar(x, v)
                       : tg_rpow_scalar(x, v));
    }
    break;
  }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bytes b = {data, size};
  tg_manual_seed(1);
  tg_scope_begin();
  for (int i = 0; i < SLOTS; i++) {
    pool[i] = create(&b);
    if (!pool[i])
      tg_clear_error();
  }
  for (int k = 0; k < MAX_CALLS && b.n; k++) {
    const clock_t t0 = clock();
    call(&b);
    if (getenv("TG_FUZZ_TRACE"))
      fprintf(stderr, "  %.3f s of CPU\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
  }
  memset(pool, 0, sizeof pool);
  if (tg_scope_end() != 0)
    abort();
  tg_clear_error();
  return 0;
}
