/* The optimizers' per-element updates, shared by optim.c's CPU loops and optim.cu's
 * CUDA kernels, so both devices evaluate one expression in the parameter's dtype, and
 * the CUDA launchers. Plain C (optim.cu includes it as C++).
 *
 * The coefficients of a step are doubles, computed once per parameter on the host
 * (Adam's bias corrections from its step count, kept on the host: no device value is
 * read back during a step); the element functions round each to the dtype, as the
 * CPU loops always did, so float32 parameters update in float32 arithmetic as in
 * torch.optim. */
#ifndef TG_NN_OPTIM_H
#define TG_NN_OPTIM_H

#include "runtime/cuda.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* torch.optim.SGD's step on one parameter: lr, momentum, 1 - dampening, weight decay,
 * nesterov, and fresh: the momentum buffer was just created and takes d as it is. */
typedef struct {
  double lr, momentum, keep, weight_decay;
  bool nesterov, fresh;
} tg__sgd_coefs;

/* torch.optim.Adam / AdamW's step t on one parameter: betas and 1 - betas, eps, the
 * L2 term added to the gradient (Adam's weight decay, 0 for AdamW), the decay factor
 * of the weight (AdamW's 1 - lr*wd, 1 for Adam), lr / (1 - beta1^t) and
 * sqrt(1 - beta2^t). */
typedef struct {
  double beta1, beta2, a1, a2, eps, l2, decay, step_size, bc2_sqrt;
} tg__adam_coefs;

/* CUDA launchers (optim.cu): one fused kernel over the n elements of a parameter w
 * (dtype float32 or float64) and its gradient g on device `device`'s stream, returning
 * without waiting for it. b, the momentum buffer, may be NULL (no momentum). Return 0
 * or -1 with the error. */
int tg__sgd_cuda(const tg__sgd_coefs *c, int dtype, void *w, const void *g, void *b,
                 int64_t n, int device);
int tg__adam_cuda(const tg__adam_coefs *c, int dtype, void *w, const void *g, void *m,
                  void *v, int64_t n, int device);

#ifdef __cplusplus
}
#endif

/* The element functions for float and double (nn/optim_tmpl.h): in C suffixed _f and
 * _d and picked by tg__sgd_elem / tg__adam_elem from the pointer's type; in C++ the
 * two instances are overloads of the plain names (outside extern "C", which allows
 * no overloads). */
#ifdef __cplusplus
#define OPT_F(name) name
#define OPT_D(name) name
#else
#define OPT_F(name) name##_f
#define OPT_D(name) name##_d
#endif

#define T float
#define OPT(name) OPT_F(name)
#include "nn/optim_tmpl.h"
#undef T
#undef OPT

#define T double
#define OPT(name) OPT_D(name)
#include "nn/optim_tmpl.h"
#undef T
#undef OPT

#ifndef __cplusplus
#define TG__OPT_PICK(name, w) _Generic((w), float * : name##_f, double * : name##_d)
#define tg__sgd_elem(c, w, ...) TG__OPT_PICK(tg__sgd_elem, w)(c, w, __VA_ARGS__)
#define tg__adam_elem(c, w, ...) TG__OPT_PICK(tg__adam_elem, w)(c, w, __VA_ARGS__)
#endif

#endif
