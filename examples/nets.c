#include "nets.h"

#include <string.h>

/* Frees a half-built net's varstore (and with it every layer made so far). */
static int build_failed(tg_varstore **vs) {
  tg_varstore_free(*vs);
  *vs = NULL;
  return -1;
}

/* ----------------------------------------------------------------- convnet -- */
int ex_convnet_build(ex_convnet *m, tg_device device) {
  memset(m, 0, sizeof *m);
  if (!(m->vs = tg_varstore_new(device)))
    return -1;
  tg_path *root = tg_varstore_root(m->vs);
  tg_conv2d_config cc = tg_conv2d_config_default();
  cc.padding = 1;
  tg_group_norm_config gc = tg_group_norm_config_default();
  gc.relu = true; /* GroupNorm + ReLU fused (tg_group_norm_relu) */
  m->conv1 = tg_nn_conv2d(tg_path_sub(root, "conv1"), 1, 32, 3, cc);
  m->gn1 = tg_nn_group_norm(tg_path_sub(root, "gn1"), 8, 32, gc);
  m->conv2 = tg_nn_conv2d(tg_path_sub(root, "conv2"), 32, 64, 3, cc);
  m->gn2 = tg_nn_group_norm(tg_path_sub(root, "gn2"), 8, 64, gc);
  m->fc = tg_nn_linear(tg_path_sub(root, "fc"), 64 * 7 * 7, EX_CONVNET_CLASSES,
                       tg_linear_config_default());
  return m->conv1 && m->gn1 && m->conv2 && m->gn2 && m->fc ? 0 : build_failed(&m->vs);
}

tg_tensor *ex_convnet_forward(const ex_convnet *m, const tg_tensor *x, bool train) {
  const int64_t two[2] = {2, 2}, zero[2] = {0, 0};
  tg_tensor *h = tg_module_forward(m->conv1, x, train);
  h = tg_module_forward(m->gn1, h, train);
  h = tg_max_pool2d(h, two, two, zero);
  h = tg_module_forward(m->conv2, h, train);
  h = tg_module_forward(m->gn2, h, train);
  h = tg_max_pool2d(h, two, two, zero);
  return tg_module_forward(m->fc, tg_flatten(h, 1, -1), train);
}

/* -------------------------------------------------------------------- unet -- */
/* (conv 3x3, GroupNorm(8), ReLU) x 2 as an nn.Sequential: children 0,1,(2),3,4,(5);
 * each GroupNorm layer applies the ReLU after it (tg_group_norm_relu, one op). */
static tg_module *block(tg_varstore *vs, const char *name, int64_t in, int64_t out) {
  tg_path *p = tg_path_sub(tg_varstore_root(vs), name);
  tg_conv2d_config cc = tg_conv2d_config_default();
  cc.padding = 1;
  tg_group_norm_config gc = tg_group_norm_config_default();
  gc.relu = true;
  tg_module *seq = tg_nn_sequential(vs);
  if (!p || !seq)
    return NULL;
  bool ok =
      tg_sequential_add(seq, tg_nn_conv2d(tg_path_sub(p, "0"), in, out, 3, cc)) == 0 &&
      tg_sequential_add(seq, tg_nn_group_norm(tg_path_sub(p, "1"), 8, out, gc)) == 0 &&
      tg_sequential_add(seq, tg_nn_conv2d(tg_path_sub(p, "3"), out, out, 3, cc)) == 0 &&
      tg_sequential_add(seq, tg_nn_group_norm(tg_path_sub(p, "4"), 8, out, gc)) == 0;
  return ok ? seq : NULL;
}

int ex_unet_build(ex_unet *m, tg_device device) {
  memset(m, 0, sizeof *m);
  if (!(m->vs = tg_varstore_new(device)))
    return -1;
  m->enc1 = block(m->vs, "enc1", 3, 16);
  m->enc2 = block(m->vs, "enc2", 16, 32);
  m->mid = block(m->vs, "mid", 32, 64);
  m->dec2 = block(m->vs, "dec2", 64 + 32, 32);
  m->dec1 = block(m->vs, "dec1", 32 + 16, 16);
  m->head = tg_nn_conv2d(tg_path_sub(tg_varstore_root(m->vs), "head"), 16,
                         EX_UNET_CLASSES, 1, tg_conv2d_config_default());
  return m->enc1 && m->enc2 && m->mid && m->dec2 && m->dec1 && m->head
             ? 0
             : build_failed(&m->vs);
}

/* Nearest upsample x2 of a, then [a, skip] along channels, in one op. */
static tg_tensor *up_cat(const tg_tensor *a, tg_tensor *skip) {
  return tg_upsample_nearest2d_cat(a, skip);
}

tg_tensor *ex_unet_forward(const ex_unet *m, const tg_tensor *x, bool train) {
  const int64_t two[2] = {2, 2}, zero[2] = {0, 0};
  tg_tensor *e1 = tg_module_forward(m->enc1, x, train);
  tg_tensor *e2 = tg_module_forward(m->enc2, tg_max_pool2d(e1, two, two, zero), train);
  tg_tensor *mid = tg_module_forward(m->mid, tg_max_pool2d(e2, two, two, zero), train);
  if (!mid)
    return NULL;
  tg_tensor *d2 = tg_module_forward(m->dec2, up_cat(mid, e2), train);
  if (!d2)
    return NULL;
  tg_tensor *d1 = tg_module_forward(m->dec1, up_cat(d2, e1), train);
  return tg_module_forward(m->head, d1, train);
}
