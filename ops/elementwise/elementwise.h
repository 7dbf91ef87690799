/* Elementwise ops' kinds, shared by the CPU kernels (elementwise.c) and the CUDA
 * kernels (elementwise.cu), and the CUDA launchers. Plain C. */
#ifndef TG_OPS_ELEMENTWISE_H
#define TG_OPS_ELEMENTWISE_H

#include "runtime/cuda.h"

#include <math.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* B_DIV_TRUNC .. B_POW are elementwise_ex.c's ops; B_POW_DA and B_POW_DB map pow's
 * partial derivatives for its backward and are never recorded. */
typedef enum {
  B_ADD,
  B_SUB,
  B_MUL,
  B_DIV,
  B_DIV_TRUNC,
  B_DIV_FLOOR,
  B_POW,
  B_POW_DA,
  B_POW_DB,
} binary_kind;

typedef enum {
  U_NEG,
  U_EXP,
  U_LOG,
  U_SQRT,
  U_ABS,
  U_RELU,
  U_LEAKY_RELU,
  U_SIGMOID,
  U_TANH,
  U_GELU,
  U_ADD_S,
  U_MUL_S,
  U_POW,
  U_GELU_TANH,
} unary_kind;

/* The formulas of elementwise_ex.c's ops, shared by both devices' kernels. They work
 * in double whatever the dtype (the result is rounded once to it). */

/* Python's floor division, as PyTorch's div_floor_floating: from the exact remainder
 * fmod(a, b), so that a = b * q + r holds for the quotient q it rounds. */
static inline TG_HOST_DEVICE double tg__div_floor(double a, double b) {
  if (b == 0)
    return a / b;
  const double mod = fmod(a, b);
  double div = (a - mod) / b;
  if (mod != 0 && (b < 0) != (mod < 0))
    div -= 1;
  if (div == 0)
    return copysign(0.0, a / b);
  const double q = floor(div);
  return div - q > 0.5 ? q + 1 : q;
}

/* d(a^b)/da = b a^(b-1), 0 where b == 0; d/db = a^b log(a), 0 where a == 0 and b >= 0
 * (PyTorch's pow_backward_self / pow_backward_exponent). */
static inline TG_HOST_DEVICE double tg__pow_da(double a, double b) {
  return b == 0 ? 0 : b * pow(a, b - 1);
}
static inline TG_HOST_DEVICE double tg__pow_db(double a, double b) {
  return a == 0 && b >= 0 ? 0 : pow(a, b) * log(a);
}

/* gelu(approximate='tanh'): 0.5 x (1 + tanh(k (x + c x^3))), k = sqrt(2 / pi), c =
 * 0.044715, and g times its derivative (PyTorch's GeluBackward). */
static inline TG_HOST_DEVICE double tg__gelu_tanh(double x) {
  return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}
static inline TG_HOST_DEVICE double tg__gelu_tanh_grad(double x, double g) {
  const double k = 0.7978845608028654, c = 0.044715;
  const double t = tanh(k * (x + c * x * x * x)), dinner = k * (1 + 3 * c * x * x);
  return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dinner);
}

/* The broadcasting binary op `kind` and the unary op `kind` of elementwise.c, checked
 * and recorded as tg_add or tg_gelu are: the entry points of elementwise_ex.c. */
struct tg_tensor *tg__ew_binary(binary_kind kind, const struct tg_tensor *a,
                                const struct tg_tensor *b);
struct tg_tensor *tg__ew_unary(unary_kind kind, const struct tg_tensor *a, double param);

/* CUDA launchers (elementwise.cu); dtype a tg_dtype (float32 or float64). Binary: out
 * has nd dims of `shape`; sa and sb are a's and b's element strides over them (0 on
 * broadcast dims). Unary: y = f(x); backward dx = g * f'(x), given y = f(x). */
int tg__ew_cuda_binary(int kind, int dtype, const void *a, const int64_t *sa,
                       const void *b, const int64_t *sb, const int64_t *shape, int nd,
                       int64_t n, void *out, int device);
int tg__ew_cuda_unary(int kind, double param, int dtype, const void *x, int64_t n,
                      void *y, int device);
int tg__ew_cuda_unary_grad(int kind, double param, int dtype, const void *x,
                           const void *y, const void *g, int64_t n, void *dx, int device);

#ifdef __cplusplus
}
#endif

#endif
