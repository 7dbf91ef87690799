/* Winograd F(4x4, 3x3) float32 kernels for 3x3, stride-1, dilation-1, ungrouped
 * convolutions on CPUs with AVX-512: the forward product (and with it the input
 * gradient, a convolution of dy with the flipped weight) and the weight gradient.
 * conv.c calls conv_fast_*, which pick these or the direct kernels of direct.c. */
#ifndef TG_OPS_CONV_WINOGRAD_H
#define TG_OPS_CONV_WINOGRAD_H

#include "ops/conv/direct.h"

/* True when d is a 3x3, dilation-1 convolution that this CPU runs with Winograd and
 * TG_CONV_WINOGRAD allows: "0" never, "1" always (tests), unset by the measured
 * per-layer rule (winograd.c). */
bool conv_winograd_use(const direct_conv *d);

/* conv_direct_forward's and conv_direct_weight_grad's contracts, always through
 * Winograd (d: 3x3, dilation 1); -1 with a message on CPUs without AVX-512. For
 * bench/conv_layers, which times both paths on the same layer. */
int conv_winograd_forward(const direct_conv *d, const float *x, const float *w, bool flip,
                          const float *bias, float *y);
int conv_winograd_weight_grad(const direct_conv *d, const float *x, const float *dy,
                              float *dw, float *db);

/* conv_direct_forward's contract, through Winograd when conv_winograd_use(d). */
int conv_fast_forward(const direct_conv *d, const float *x, const float *w, bool flip,
                      const float *bias, float *y);

/* conv_direct_weight_grad's contract, through Winograd when conv_winograd_use(d). */
int conv_fast_weight_grad(const direct_conv *d, const float *x, const float *dy,
                          float *dw, float *db);

#endif
