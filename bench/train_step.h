/* What bench/train_step.c shares with its CUDA half (bench/cuda/train_step.c). */
#ifndef TG_BENCH_TRAIN_STEP_H
#define TG_BENCH_TRAIN_STEP_H

#include <stdint.h>

enum { BENCH_CONVNET, BENCH_UNET };

/* "convnet" or "unet". */
const char *bench_net_name(int kind);
/* Floating-point operations of one training step of the net at this batch: the
 * convolutions and the linear layer (forward, weight and input gradients); everything
 * else is a few operations per element. */
double bench_step_flops(int kind, int64_t batch);

#endif
