/* tg_module_summary: a var store's variables as a table, as torchinfo prints a
 * model. */
#include "nn/internal.h"

#include <string.h>

int tg_module_summary(const tg_varstore *vs, FILE *out) {
  if (!vs || !out)
    return tg__error("tg_module_summary: argument '%s' is NULL", vs ? "out" : "vs");
  int name_w = 4;
  for (int i = 0; i < vs->n_vars; i++)
    if ((int)strlen(vs->vars[i].name) > name_w)
      name_w = (int)strlen(vs->vars[i].name);
  fprintf(out, "%-*s  %-20s %-8s %-7s %s\n", name_w, "name", "shape", "dtype", "device",
          "trainable");
  int64_t trainable = 0, other = 0;
  for (int i = 0; i < vs->n_vars; i++) {
    const tg__var *v = &vs->vars[i];
    char shape[TG_SHAPE_STR_LEN], device[16];
    if (v->t->device.type == TG_DEVICE_CPU)
      snprintf(device, sizeof device, "cpu");
    else
      snprintf(device, sizeof device, "cuda:%d", v->t->device.index);
    fprintf(out, "%-*s  %-20s %-8s %-7s %s\n", name_w, v->name,
            tg_shape_str(v->t, shape, sizeof shape), tg_dtype_name(v->t->dtype), device,
            v->trainable ? "yes" : "no");
    *(v->trainable ? &trainable : &other) += v->t->numel;
  }
  fprintf(out,
          "%d variables; parameters: %lld trainable, %lld in frozen variables and "
          "buffers, %lld in all\n",
          vs->n_vars, (long long)trainable, (long long)other,
          (long long)(trainable + other));
  return ferror(out) ? tg__error("tg_module_summary: writing failed") : 0;
}
