/* Variable initialisation, with PyTorch's defaults for conv and linear layers:
 * kaiming_uniform_(w, a=sqrt(5)) is U(-b, b) with b = gain*sqrt(3/fan_in) and
 * gain = sqrt(2/(1+a^2)) = sqrt(1/3), so b = 1/sqrt(fan_in); the bias is
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's fan_in. */
#include "nn/internal.h"

#include <math.h>

tg_init tg_init_const(double value) { return (tg_init){TG_INIT_CONST, value, 0}; }
tg_init tg_init_uniform(double lo, double hi) {
  return (tg_init){TG_INIT_UNIFORM, lo, hi};
}
tg_init tg_init_randn(double mean, double std) {
  return (tg_init){TG_INIT_RANDN, mean, std};
}
tg_init tg_init_kaiming_uniform(void) { return (tg_init){TG_INIT_KAIMING_UNIFORM, 0, 0}; }

int64_t tg__fan_in(const int64_t *shape, int ndim) {
  if (ndim < 2)
    return -1;
  int64_t fan_in = shape[1];
  for (int d = 2; d < ndim; d++)
    fan_in *= shape[d];
  return fan_in;
}

tg_init tg__bias_init(tg_init init, int64_t weight_fan_in) {
  if (init.kind != TG_INIT_KAIMING_UNIFORM)
    return init;
  double bound = weight_fan_in > 0 ? 1.0 / sqrt((double)weight_fan_in) : 0.0;
  return tg_init_uniform(-bound, bound);
}

static tg_tensor *randn_init(const int64_t *shape, int ndim, double mean, double std,
                             tg_dtype dtype, tg_device device) {
  tg_tensor *host = tg_randn(shape, ndim, dtype, TG_CPU);
  if (!host)
    return NULL;
  TG_DISPATCH_FLOAT(dtype, T, {
    T *p = tg__data(host);
    for (int64_t i = 0; i < host->numel; i++)
      p[i] = (T)(mean + std * (double)p[i]);
  });
  if (device.type == TG_DEVICE_CPU)
    return host;
  tg_tensor *t = tg_tensor_to(host, device);
  tg_tensor_free(host);
  return t;
}

tg_tensor *tg__init_tensor(const int64_t *shape, int ndim, tg_init init, tg_dtype dtype,
                           tg_device device, const char *what, const char *op) {
  char buf[TG_SHAPE_STR_LEN], q[TG_QUOTE_LEN];
  if (tg__check_shape(shape, ndim, dtype, op) < 0)
    return NULL;
  if (!tg__is_float(dtype) && init.kind != TG_INIT_CONST) {
    tg__error("%s: %s has dtype %s, which only a constant init can fill", op,
              tg__quote(what, q, sizeof q), tg_dtype_name(dtype));
    return NULL;
  }
  switch (init.kind) {
  case TG_INIT_CONST:
    return tg_full(shape, ndim, init.a, dtype, device);
  case TG_INIT_UNIFORM:
    if (!(init.a <= init.b) || !isfinite(init.a) || !isfinite(init.b)) {
      tg__error("%s: uniform init of %s expects lo <= hi, both finite, but got "
                "lo=%g, hi=%g",
                op, tg__quote(what, q, sizeof q), init.a, init.b);
      return NULL;
    }
    return tg_uniform(shape, ndim, init.a, init.b, dtype, device);
  case TG_INIT_RANDN:
    if (!(init.b >= 0) || !isfinite(init.a) || !isfinite(init.b)) {
      tg__error("%s: normal init of %s expects a finite mean and std >= 0.0, but got "
                "mean=%g, std=%g",
                op, tg__quote(what, q, sizeof q), init.a, init.b);
      return NULL;
    }
    return randn_init(shape, ndim, init.a, init.b, dtype, device);
  case TG_INIT_KAIMING_UNIFORM: {
    int64_t fan_in = tg__fan_in(shape, ndim);
    if (fan_in < 0) {
      tg__error("%s: Fan in and fan out can not be computed for tensor with fewer than "
                "2 dimensions: Kaiming init of %s with shape %s (layers initialise "
                "biases from their weight's fan_in)",
                op, tg__quote(what, q, sizeof q),
                tg__shape_fmt(shape, ndim, buf, sizeof buf));
      return NULL;
    }
    double bound = fan_in > 0 ? 1.0 / sqrt((double)fan_in) : 0.0;
    return tg_uniform(shape, ndim, -bound, bound, dtype, device);
  }
  }
  tg__error("%s: unknown init kind %d for %s", op, (int)init.kind,
            tg__quote(what, q, sizeof q));
  return NULL;
}
