/* Direct (implicit-GEMM) float32 kernels for stride-1, ungrouped convolutions on CPUs
 * with AVX2 and FMA: the forward product, and with it the input gradient (a stride-1
 * convolution of dy with the flipped, transposed weight), and the weight and bias
 * gradients. conv.c uses them where they apply and im2col + GEMM elsewhere. */
#ifndef TG_OPS_CONV_DIRECT_H
#define TG_OPS_CONV_DIRECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A stride-1 convolution of x [n, cin, h, w] with a kernel [cout, cin, kh, kw] to
 * y [n, cout, oh, ow]: y[o][oy][ox] = Σ x[c][oy - ph + i*dh][ox - pw + j*dw]
 * w[o][c][i][j]. */
typedef struct {
  int64_t n, cin, h, w, cout, kh, kw, ph, pw, dh, dw, oh, ow;
} direct_conv;

/* True when this CPU runs the kernels (AVX2 and FMA) and TG_CONV_DIRECT is not "0". */
bool conv_direct_available(void);

/* y = conv(x, W) (+ bias[o]). W is [cout, cin, kh, kw]; with flip, W is instead read
 * as the weight w2 [cin, cout, kh, kw] of the convolution whose input gradient this
 * is: W[o][c][i][j] = w2[c][o][kh-1-i][kw-1-j]. Returns 0, or -1 (out of memory). */
int conv_direct_forward(const direct_conv *d, const float *x, const float *w, bool flip,
                        const float *bias, float *y);

/* dw = Σ over images and pixels of dy ⊗ x windows ([cout, cin, kh, kw]), and
 * db[o] = Σ dy[:, o] when db is not NULL. Returns 0, or -1 (out of memory). */
int conv_direct_weight_grad(const direct_conv *d, const float *x, const float *dy,
                            float *dw, float *db);

/* A buffer of at least `bytes` for the calling thread (conv.c): kept between calls up
 * to a size, so training steps do not allocate. NULL when out of memory. */
void *conv_workspace_get(size_t bytes);
void conv_workspace_put(void *p);

#endif
