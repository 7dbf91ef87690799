/* conv2d's string paddings, as PyTorch: "valid" (none) and "same" (the output keeps
 * the input's size; stride 1 only). When dilation * (kernel - 1) is odd, "same" pads
 * one more row or column at the end, as PyTorch does, by concatenating zeros before a
 * symmetric convolution. */
#include "graph/internal.h"

tg_conv2d_options tg_conv2d_options_default(void) {
  return (tg_conv2d_options){{1, 1}, {0, 0}, {1, 1}, 1, TG_PADDING_EXPLICIT};
}

/* x with `extra` zeros appended along dim. */
static tg_tensor *pad_end(const tg_tensor *x, int dim, int64_t extra) {
  int64_t shape[TG_MAX_DIMS];
  for (int i = 0; i < tg_ndim(x); i++)
    shape[i] = i == dim ? extra : tg_shape(x)[i];
  tg_tensor *z = tg_zeros(shape, tg_ndim(x), tg_dtype_of(x), tg_device_of(x));
  tg_tensor *parts[2] = {(tg_tensor *)x, z};
  tg_tensor *r = z ? tg_cat(parts, 2, dim) : NULL;
  tg_tensor_free(z);
  return r;
}

tg_tensor *tg_conv2d_ex(const tg_tensor *x, const tg_tensor *weight,
                        const tg_tensor *bias, const tg_conv2d_options *o) {
  const char *op = "tg_conv2d_ex";
  if (!o)
    return tg__error("%s: argument 'options' is NULL", op), NULL;
  if (o->padding_mode == TG_PADDING_EXPLICIT)
    return tg_conv2d(x, weight, bias, o->stride, o->padding, o->dilation, o->groups);
  if (o->padding_mode == TG_PADDING_VALID)
    return tg_conv2d(x, weight, bias, o->stride, NULL, o->dilation, o->groups);
  if (o->padding_mode != TG_PADDING_SAME)
    return tg__error("%s: Invalid padding mode %d (expected explicit, valid or same)", op,
                     (int)o->padding_mode),
           NULL;
  if (!tg__nonnull(x, op, "input") || !tg__nonnull(weight, op, "weight"))
    return NULL;
  if (o->groups <= 0)
    return tg__error("%s: non-positive groups is not supported", op), NULL;
  if (o->stride[0] != 1 || o->stride[1] != 1)
    return tg__error("%s: padding='same' is not supported for strided convolutions", op),
           NULL;
  if (weight->ndim != 4 || (x->ndim != 3 && x->ndim != 4))
    /* tg_conv2d words the shape rule */
    return tg_conv2d(x, weight, bias, o->stride, NULL, o->dilation, o->groups);
  int64_t left[2], extra[2];
  for (int i = 0; i < 2; i++) {
    if (o->dilation[i] <= 0 || weight->shape[2 + i] <= 0) /* tg_conv2d words these */
      return tg_conv2d(x, weight, bias, o->stride, NULL, o->dilation, o->groups);
    int64_t total;
    if (__builtin_mul_overflow(o->dilation[i], weight->shape[2 + i] - 1, &total))
      return tg__error("%s: padding='same' needs dilation * (kernel size - 1) padding, "
                       "which overflows int64 (dilation %lld, kernel size %lld)",
                       op, (long long)o->dilation[i], (long long)weight->shape[2 + i]),
             NULL;
    left[i] = total / 2;
    extra[i] = total - 2 * left[i];
  }
  tg_tensor *xh = extra[0] ? pad_end(x, x->ndim - 2, extra[0]) : NULL;
  const tg_tensor *xp = extra[0] ? xh : x;
  tg_tensor *xw = xp && extra[1] ? pad_end(xp, x->ndim - 1, extra[1]) : NULL;
  xp = extra[1] ? xw : xp;
  tg_tensor *y =
      xp ? tg_conv2d(xp, weight, bias, o->stride, left, o->dilation, o->groups) : NULL;
  tg_tensor_free(xh);
  tg_tensor_free(xw);
  return y;
}
