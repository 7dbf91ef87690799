/* The two example networks, shared by examples/mnist.c, examples/segmentation.c and
 * bench/train_step.c so that the benchmark times exactly the nets the examples train.
 * Uses tapegrad.h only (the benchmark builds without the examples' zlib and libpng).
 *
 * Variables are named as the state_dict of the equivalent PyTorch modules of
 * examples/pytorch_reference.py, so checkpoints move between the two unchanged. */
#ifndef TG_EXAMPLES_NETS_H
#define TG_EXAMPLES_NETS_H

#include "tapegrad.h"

#include <stdbool.h>

enum {
  EX_CONVNET_SIDE = 28, /* input [N, 1, 28, 28] */
  EX_CONVNET_CLASSES = 10,
  EX_UNET_SIDE = 64, /* input [N, 3, 64, 64] */
  EX_UNET_CLASSES = 4
};

/* conv 1->32 3x3 pad 1, GroupNorm(8, 32), ReLU, max-pool 2,
 * conv 32->64 3x3 pad 1, GroupNorm(8, 64), ReLU, max-pool 2, linear 64*7*7 -> 10.
 * Variables: conv1.weight, conv1.bias, gn1.weight, ..., fc.weight, fc.bias. */
typedef struct {
  tg_varstore *vs;
  tg_module *conv1, *gn1, *conv2, *gn2, *fc;
} ex_convnet;

/* GroupNorm U-Net, with block(in, out) = (conv 3x3 pad 1, GroupNorm(8, out), ReLU) x 2:
 *   enc1 = block(3, 16)                        64x64
 *   enc2 = block(16, 32) after max-pool 2      32x32
 *   mid  = block(32, 64) after max-pool 2      16x16
 *   dec2 = block(96, 32) on [upsample(mid), enc2]
 *   dec1 = block(48, 16) on [upsample(dec2), enc1]
 *   head = conv 1x1 16 -> 4
 * Blocks are named as nn.Sequential(Conv2d, GroupNorm, ReLU, Conv2d, GroupNorm, ReLU):
 * enc1.0.weight, enc1.1.bias, enc1.3.weight, ..., head.weight. */
typedef struct {
  tg_varstore *vs;
  tg_module *enc1, *enc2, *mid, *dec2, *dec1, *head;
} ex_unet;

/* Create the net's varstore on device and its layers, drawing the initial weights from
 * the library's generator. Return 0, or -1 (tg_last_error says why) with m->vs NULL
 * and nothing left to free; on success the caller frees m->vs. */
int ex_convnet_build(ex_convnet *m, tg_device device);
int ex_unet_build(ex_unet *m, tg_device device);

/* x -> logits ([N, 10] and [N, 4, 64, 64]); NULL on error. Intermediates belong to
 * the caller's scope. train selects training-mode layers. */
tg_tensor *ex_convnet_forward(const ex_convnet *m, const tg_tensor *x, bool train);
tg_tensor *ex_unet_forward(const ex_unet *m, const tg_tensor *x, bool train);

#endif
