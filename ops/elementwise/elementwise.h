/* Elementwise ops' kinds, shared by the CPU kernels (elementwise.c) and the CUDA
 * kernels (elementwise.cu), and the CUDA launchers. Plain C. */
#ifndef TG_OPS_ELEMENTWISE_H
#define TG_OPS_ELEMENTWISE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { B_ADD, B_SUB, B_MUL, B_DIV } binary_kind;

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
} unary_kind;

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
