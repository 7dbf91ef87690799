/* Elementwise ops: broadcasting binary arithmetic, scalar arithmetic, unary math and
 * activations. Each backward is the derivative applied to the saved input (or, for
 * ops whose derivative is cheaper from the result, the node's output). */
#include "elementwise.h"
#include "graph/internal.h"

#include <tgmath.h>

/* Kernels, one table per device (defined after the CPU kernels); the ops check and
 * record once, then call the table of their input's device. */
typedef struct {
  int (*binary)(binary_kind kind, const tg_tensor *a, const tg_tensor *b, tg_tensor *out);
  int (*unary)(unary_kind kind, double param, const tg_tensor *x, tg_tensor *y);
  int (*unary_grad)(unary_kind kind, double param, const tg_tensor *x, const tg_tensor *y,
                    const tg_tensor *g, tg_tensor *dx);
} ew_kernels;

static const ew_kernels tg__ew_cpu;
#ifdef TG_HAVE_CUDA
static const ew_kernels tg__ew_cuda;
#endif

/* ------------------------------------------------------------- binary -- */

static const char *const binary_names[] = {
    "tg_add",    "tg_sub",        "tg_mul",        "tg_div",       "tg_div_ex",
    "tg_div_ex", "tg_pow_tensor", "tg_pow_tensor", "tg_pow_tensor"};

#define BINARY_LOOP(K, EXPR)                                                             \
  case K:                                                                                \
    for (int64_t j = 0; j < len; j++) {                                                  \
      T x = pa[j * sa], y = pb[j * sb];                                                  \
      po[j] = EXPR;                                                                      \
    }                                                                                    \
    break;

/* out = a (op) b over the broadcast shape of out: rows of the last dim, each row's
 * offsets in a and b found from the broadcast strides; operands of out's shape are one
 * flat run cut into rows of FLAT_ROW elements, so that threads share it. */
typedef struct {
  binary_kind kind;
  const tg_tensor *a, *b;
  tg_tensor *out;
  int nd;
  int64_t inner, sa, sb, sa_all[TG_MAX_DIMS], sb_all[TG_MAX_DIMS];
  bool flat;
} binary_job;

enum { FLAT_ROW = 4096 };

static void binary_rows(void *ctx, int64_t r0, int64_t r1) {
  const binary_job *j = ctx;
  const int64_t inner = j->inner, sa = j->sa, sb = j->sb, *shape = j->out->shape;
  TG_DISPATCH_FLOAT(j->out->dtype, T, {
    const T *A = tg__data(j->a), *B = tg__data(j->b);
    T *O = tg__data(j->out);
    for (int64_t r = r0; r < r1; r++) {
      int64_t oa = 0, ob = 0, rem = r, len = inner;
      if (j->flat) {
        oa = ob = r * inner;
        len = inner < j->out->numel - oa ? inner : j->out->numel - oa;
      }
      for (int d = j->nd - 2; d >= 0; d--) {
        int64_t idx = rem % shape[d];
        rem /= shape[d];
        oa += idx * j->sa_all[d];
        ob += idx * j->sb_all[d];
      }
      const T *pa = A + oa, *pb = B + ob;
      T *po = O + r * inner;
      switch (j->kind) {
        BINARY_LOOP(B_ADD, x + y)
        BINARY_LOOP(B_SUB, x - y)
        BINARY_LOOP(B_MUL, x * y)
        BINARY_LOOP(B_DIV, x / y)
        BINARY_LOOP(B_DIV_TRUNC, (T)trunc((double)x / (double)y))
        BINARY_LOOP(B_DIV_FLOOR, (T)tg__div_floor(x, y))
        BINARY_LOOP(B_POW, (T)pow((double)x, (double)y))
        BINARY_LOOP(B_POW_DA, (T)tg__pow_da(x, y))
        BINARY_LOOP(B_POW_DB, (T)tg__pow_db(x, y))
      }
    }
  });
}

static int binary_cpu(binary_kind kind, const tg_tensor *a, const tg_tensor *b,
                      tg_tensor *out) {
  binary_job j = {.kind = kind, .a = a, .b = b, .out = out, .nd = out->ndim};
  tg__broadcast_strides(a, out->shape, j.nd, j.sa_all);
  tg__broadcast_strides(b, out->shape, j.nd, j.sb_all);
  j.inner = j.nd ? out->shape[j.nd - 1] : 1;
  j.sa = j.nd ? j.sa_all[j.nd - 1] : 0;
  j.sb = j.nd ? j.sb_all[j.nd - 1] : 0;
  if (a->numel == out->numel && b->numel == out->numel) { /* same shape: flat rows */
    j.inner = FLAT_ROW;
    j.sa = j.sb = 1;
    j.nd = 1;
    j.flat = true;
  }
  const int64_t rows = j.flat    ? (out->numel + FLAT_ROW - 1) / FLAT_ROW
                       : j.inner ? out->numel / j.inner
                                 : 0;
  tg__parallel_for(rows, out->numel, binary_rows, &j);
  return 0;
}

static tg_tensor *binary_map(const char *op, binary_kind kind, const tg_tensor *a,
                             const tg_tensor *b);

/* d(a op b): sum the broadcast gradient back to each input's shape. */
static int binary_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  binary_kind kind = *(binary_kind *)n->ctx;
  const tg_tensor *a = n->inputs[0], *b = n->inputs[1];
  for (int i = 0; i < 2; i++) {
    if (!tg__input_needs_grad(n, i))
      continue;
    tg_tensor *full = NULL;
    switch (kind) {
    case B_ADD:
      full = tg__alias(g, g->shape, g->ndim);
      break;
    case B_SUB:
      full = i == 0 ? tg__alias(g, g->shape, g->ndim) : tg_neg(g);
      break;
    case B_MUL:
      full = tg_mul(g, i == 0 ? b : a);
      break;
    case B_DIV:
      if (i == 0) {
        full = tg_div(g, b);
      } else { /* -g * a / b^2 = -(g * out) / b */
        tg_tensor *go = tg_mul(g, n->output);
        tg_tensor *q = tg_div(go, b);
        full = tg_neg(q);
      }
      break;
    case B_DIV_TRUNC: /* the quotient is piecewise constant: zero, as PyTorch */
    case B_DIV_FLOOR:
      if (!(gi[i] = tg_zeros_like(n->inputs[i])))
        return -1;
      continue;
    case B_POW: { /* g * d(a^b)/da or g * d(a^b)/db, over the broadcast shape */
      tg_tensor *d = binary_map(n->op, i ? B_POW_DB : B_POW_DA, a, b);
      full = d ? tg_mul(d, g) : NULL;
      tg_tensor_free(d);
      break;
    }
    case B_POW_DA: /* never recorded */
    case B_POW_DB:
      break;
    }
    if (!full)
      return -1;
    gi[i] = tg__sum_to_shape(full, n->inputs[i]->shape, n->inputs[i]->ndim);
    if (!gi[i])
      return -1;
  }
  return 0;
}

/* a (op) b over the broadcast shape, checked, on a's device; not recorded. */
static tg_tensor *binary_map(const char *op, binary_kind kind, const tg_tensor *a,
                             const tg_tensor *b) {
  if (!tg__nonnull(a, op, "a") || !tg__nonnull(b, op, "b"))
    return NULL;
  const tg_tensor *in[2] = {a, b};
  if (tg__check_same(op, 2, in, true) < 0)
    return NULL;
  int64_t shape[TG_MAX_DIMS];
  int nd;
  const ew_kernels *k;
  if (tg__broadcast_shape(a, b, shape, &nd, op) < 0 ||
      !(k = tg__pick(op, a, &tg__ew_cpu, TG_IF_CUDA(&tg__ew_cuda))))
    return NULL;
  tg_tensor *out = tg__new(shape, nd, a->dtype, a->device);
  if (out && k->binary(kind, a, b, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  return out;
}

static tg_tensor *binary(binary_kind kind, const tg_tensor *a, const tg_tensor *b) {
  const char *op = binary_names[kind];
  tg_tensor *out = binary_map(op, kind, a, b);
  if (!out)
    return NULL;
  const tg_tensor *in[2] = {a, b};
  tg_node *node;
  out = tg__finish(op, out, 2, in, binary_backward, &node);
  if (node)
    *(binary_kind *)tg__ctx(node, sizeof(binary_kind)) = kind;
  return out;
}

tg_tensor *tg_add(const tg_tensor *a, const tg_tensor *b) { return binary(B_ADD, a, b); }
tg_tensor *tg_sub(const tg_tensor *a, const tg_tensor *b) { return binary(B_SUB, a, b); }
tg_tensor *tg_mul(const tg_tensor *a, const tg_tensor *b) { return binary(B_MUL, a, b); }
tg_tensor *tg_div(const tg_tensor *a, const tg_tensor *b) { return binary(B_DIV, a, b); }
struct tg_tensor *tg__ew_binary(binary_kind kind, const tg_tensor *a,
                                const tg_tensor *b) {
  return binary(kind, a, b);
}

/* -------------------------------------------------------------- unary -- */

static const char *const unary_names[] = {
    "tg_neg",        "tg_exp",        "tg_log",     "tg_sqrt",   "tg_abs",
    "tg_relu",       "tg_leaky_relu", "tg_sigmoid", "tg_tanh",   "tg_gelu",
    "tg_add_scalar", "tg_mul_scalar", "tg_pow",     "tg_gelu_ex"};

typedef struct {
  unary_kind kind;
  double param;
} unary_ctx;

#define UNARY_LOOP(K, EXPR)                                                              \
  case K:                                                                                \
    _Pragma("omp simd") for (int64_t i = lo; i < hi; i++) {                              \
      T x = X[i];                                                                        \
      Y[i] = EXPR;                                                                       \
    }                                                                                    \
    break;

/* An elementwise job: y = f(x), or dx = g * f'(x) (g and y NULL for the forward). */
typedef struct {
  unary_kind kind;
  double param;
  const tg_tensor *x, *y, *g;
  tg_tensor *out;
} unary_job;

static void unary_range(void *ctx, int64_t lo, int64_t hi) {
  const unary_job *j = ctx;
  TG_DISPATCH_FLOAT(j->x->dtype, T, {
    const T *X = tg__data(j->x);
    T *Y = tg__data(j->out);
    const T p = (T)j->param;
    (void)p;
    switch (j->kind) {
      UNARY_LOOP(U_NEG, -x)
      UNARY_LOOP(U_EXP, exp(x))
      UNARY_LOOP(U_LOG, log(x))
      UNARY_LOOP(U_SQRT, sqrt(x))
      UNARY_LOOP(U_ABS, fabs(x))
      UNARY_LOOP(U_RELU, x <= 0 ? (T)0 : x) /* NaN passes, as PyTorch */
      UNARY_LOOP(U_LEAKY_RELU, x > 0 ? x : x * p)
      UNARY_LOOP(U_SIGMOID, (T)1 / ((T)1 + exp(-x)))
      UNARY_LOOP(U_TANH, tanh(x))
      UNARY_LOOP(U_GELU, (T)0.5 * x * ((T)1 + erf(x * (T)M_SQRT1_2)))
      UNARY_LOOP(U_ADD_S, x + p)
      UNARY_LOOP(U_MUL_S, x * p)
      UNARY_LOOP(U_POW, pow(x, p))
      UNARY_LOOP(U_GELU_TANH, (T)tg__gelu_tanh(x))
    }
  });
}

static int unary_cpu(unary_kind kind, double param, const tg_tensor *in, tg_tensor *out) {
  unary_job j = {kind, param, in, NULL, NULL, out};
  tg__parallel_for(in->numel, in->numel, unary_range, &j);
  return 0;
}

#define UNARY_GRAD(K, EXPR)                                                              \
  case K:                                                                                \
    _Pragma("omp simd") for (int64_t i = lo; i < hi; i++) {                              \
      T x = X[i], y = Y[i], g = G[i];                                                    \
      (void)x;                                                                           \
      (void)y;                                                                           \
      D[i] = EXPR;                                                                       \
    }                                                                                    \
    break;

/* dx = g * f'(x), with y = f(x) at hand for the ops whose derivative uses it. */
static void unary_grad_range(void *ctx, int64_t lo, int64_t hi) {
  const unary_job *j = ctx;
  TG_DISPATCH_FLOAT(j->x->dtype, T, {
    const T *X = tg__data(j->x), *Y = tg__data(j->y), *G = tg__data(j->g);
    T *D = tg__data(j->out);
    const T p = (T)j->param;
    (void)p;
    switch (j->kind) {
      UNARY_GRAD(U_NEG, -g)
      UNARY_GRAD(U_EXP, g * y)
      UNARY_GRAD(U_LOG, g / x)
      UNARY_GRAD(U_SQRT, g / ((T)2 * y))
      UNARY_GRAD(U_ABS, x > 0 ? g : x < 0 ? -g : (T)0)
      UNARY_GRAD(U_RELU, x <= 0 ? (T)0 : g) /* as PyTorch's threshold_backward */
      UNARY_GRAD(U_LEAKY_RELU, x > 0 ? g : g * p)
      UNARY_GRAD(U_SIGMOID, g * y * ((T)1 - y))
      UNARY_GRAD(U_TANH, g * ((T)1 - y * y))
      UNARY_GRAD(U_GELU,
                 g * ((T)0.5 * ((T)1 + erf(x * (T)M_SQRT1_2)) +
                      x * exp((T)-0.5 * x * x) * (T)(0.5 * M_2_SQRTPI * M_SQRT1_2)))
      UNARY_GRAD(U_ADD_S, g)
      UNARY_GRAD(U_MUL_S, g * p)
      UNARY_GRAD(U_POW, p == 0 ? (T)0 : g * p * pow(x, p - (T)1))
      UNARY_GRAD(U_GELU_TANH, (T)tg__gelu_tanh_grad(x, g))
    }
  });
}

static int unary_grad_cpu(unary_kind kind, double param, const tg_tensor *in,
                          const tg_tensor *out, const tg_tensor *g, tg_tensor *dx) {
  unary_job j = {kind, param, in, out, g, dx};
  tg__parallel_for(in->numel, in->numel, unary_grad_range, &j);
  return 0;
}

/* ------------------------------------------------------- kernel tables -- */

static const ew_kernels tg__ew_cpu = {binary_cpu, unary_cpu, unary_grad_cpu};

#ifdef TG_HAVE_CUDA
static int binary_cuda(binary_kind kind, const tg_tensor *a, const tg_tensor *b,
                       tg_tensor *out) {
  int64_t sa[TG_MAX_DIMS], sb[TG_MAX_DIMS];
  tg__broadcast_strides(a, out->shape, out->ndim, sa);
  tg__broadcast_strides(b, out->shape, out->ndim, sb);
  return tg__ew_cuda_binary(kind, out->dtype, tg__data(a), sa, tg__data(b), sb,
                            out->shape, out->ndim, out->numel, tg__data(out),
                            out->device.index);
}

static int unary_cuda(unary_kind kind, double param, const tg_tensor *x, tg_tensor *y) {
  return tg__ew_cuda_unary(kind, param, x->dtype, tg__data(x), x->numel, tg__data(y),
                           x->device.index);
}

static int unary_grad_cuda(unary_kind kind, double param, const tg_tensor *x,
                           const tg_tensor *y, const tg_tensor *g, tg_tensor *dx) {
  return tg__ew_cuda_unary_grad(kind, param, x->dtype, tg__data(x), tg__data(y),
                                tg__data(g), x->numel, tg__data(dx), x->device.index);
}

static const ew_kernels tg__ew_cuda = {binary_cuda, unary_cuda, unary_grad_cuda};
#endif

static int unary_backward(tg_node *node, const tg_tensor *g, tg_tensor **gi) {
  const unary_ctx *c = node->ctx;
  const tg_tensor *in = node->inputs[0];
  const ew_kernels *k =
      tg__pick(unary_names[c->kind], in, &tg__ew_cpu, TG_IF_CUDA(&tg__ew_cuda));
  tg_tensor *dx = k ? tg__new_like(in) : NULL;
  if (!dx || k->unary_grad(c->kind, c->param, in, node->output, g, dx) < 0)
    return -1;
  gi[0] = dx;
  return 0;
}

static tg_tensor *unary(unary_kind kind, const tg_tensor *a, double param) {
  const char *op = unary_names[kind];
  if (!tg__nonnull(a, op, "input"))
    return NULL;
  const ew_kernels *k;
  if (tg__check_same(op, 1, &a, true) < 0 ||
      !(k = tg__pick(op, a, &tg__ew_cpu, TG_IF_CUDA(&tg__ew_cuda))))
    return NULL;
  tg_tensor *out = tg__new_like(a);
  if (!out)
    return NULL;
  if (k->unary(kind, param, a, out) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  tg_node *node;
  out = tg__finish(op, out, 1, &a, unary_backward, &node);
  if (node) {
    unary_ctx *c = tg__ctx(node, sizeof *c);
    c->kind = kind;
    c->param = param;
  }
  return out;
}

struct tg_tensor *tg__ew_unary(unary_kind kind, const tg_tensor *a, double param) {
  return unary(kind, a, param);
}
tg_tensor *tg_neg(const tg_tensor *a) { return unary(U_NEG, a, 0); }
tg_tensor *tg_exp(const tg_tensor *a) { return unary(U_EXP, a, 0); }
tg_tensor *tg_log(const tg_tensor *a) { return unary(U_LOG, a, 0); }
tg_tensor *tg_sqrt(const tg_tensor *a) { return unary(U_SQRT, a, 0); }
tg_tensor *tg_abs(const tg_tensor *a) { return unary(U_ABS, a, 0); }
tg_tensor *tg_relu(const tg_tensor *a) { return unary(U_RELU, a, 0); }
tg_tensor *tg_leaky_relu(const tg_tensor *a, double slope) {
  return unary(U_LEAKY_RELU, a, slope);
}
tg_tensor *tg_sigmoid(const tg_tensor *a) { return unary(U_SIGMOID, a, 0); }
tg_tensor *tg_tanh(const tg_tensor *a) { return unary(U_TANH, a, 0); }
tg_tensor *tg_gelu(const tg_tensor *a) { return unary(U_GELU, a, 0); }
tg_tensor *tg_add_scalar(const tg_tensor *a, double s) { return unary(U_ADD_S, a, s); }
tg_tensor *tg_sub_scalar(const tg_tensor *a, double s) { return unary(U_ADD_S, a, -s); }
tg_tensor *tg_mul_scalar(const tg_tensor *a, double s) { return unary(U_MUL_S, a, s); }
tg_tensor *tg_div_scalar(const tg_tensor *a, double s) {
  return unary(U_MUL_S, a, 1.0 / s); /* s == 0 gives inf/nan, as x / 0 in PyTorch */
}
tg_tensor *tg_pow(const tg_tensor *a, double exponent) {
  return unary(U_POW, a, exponent);
}
