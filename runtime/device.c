/* Devices and the per-op dispatch: each op checks its arguments and records the tape
 * once, then tg__pick chooses the kernel table of its input's device. The CUDA
 * runtime itself is runtime/cuda.c. */
#include "runtime/cuda.h"
#include "runtime/internal.h"

tg_device tg_cuda(int index) { return (tg_device){TG_DEVICE_CUDA, index}; }

bool tg_cuda_is_available(void) { return tg_cuda_device_count() > 0; }

const char *tg__device_str(tg_device d, char *buf, size_t len) {
  if (d.type == TG_DEVICE_CPU)
    snprintf(buf, len, "cpu");
  else
    snprintf(buf, len, "cuda:%d", d.index);
  return buf;
}

const void *tg__pick_table(const char *op, const tg_tensor *t, const void *cpu,
                           const void *cuda) {
  const void *k = t->device.type == TG_DEVICE_CPU    ? cpu
                  : t->device.type == TG_DEVICE_CUDA ? cuda
                                                     : NULL;
  if (!k) {
    char d[32];
    tg__error("%s: no kernel for %s", op, tg__device_str(t->device, d, sizeof d));
    return NULL;
  }
  tg__op_enter(op); /* device allocations failing below name the op */
  return k;
}
