/* Optimizers: torch.optim.SGD, Adam and AdamW, step for step.
 *
 * State is kept per parameter, as PyTorch does: the parameter (retained), its
 * momentum buffer or Adam moments, created at the first step where the parameter
 * has a gradient. Gradients stay in each variable's own .grad tensor, so data
 * parallel training can all-reduce them (per tensor, or packed into one buffer)
 * between tg_backward and tg_optimizer_step without changing anything here.
 * Parameters whose gradient is NULL (unused, or dropped by zero_grad) are skipped,
 * state included, as PyTorch skips p.grad is None. Steps write the data directly,
 * outside the tape. */
#include "nn/internal.h"

#include <math.h>
#include <stdlib.h>

typedef enum { OPT_SGD, OPT_ADAM } opt_kind;

typedef struct {
  tg_tensor *param; /* retained: the optimizer may outlive its var store */
  tg_tensor *buf1;  /* SGD momentum_buffer / Adam exp_avg */
  tg_tensor *buf2;  /* Adam exp_avg_sq */
  int64_t step;     /* Adam: steps this parameter took (for bias correction) */
  bool fresh;       /* SGD: buf1 was just created and takes the gradient as is */
} opt_param;

struct tg_optimizer {
  opt_kind kind;
  double lr;
  tg_sgd_config sgd;
  tg_adam_config adam;
  opt_param *params;
  int n;
};

tg_sgd_config tg_sgd_config_default(double lr) {
  return (tg_sgd_config){lr, 0.0, 0.0, 0.0, false};
}

tg_adam_config tg_adam_config_default(double lr) {
  return (tg_adam_config){lr, 0.9, 0.999, 1e-8, 0.0, false};
}

static tg_optimizer *optimizer_new(tg_varstore *vs, opt_kind kind, double lr,
                                   const char *op) {
  if (!vs) {
    if (!tg_last_error()[0])
      tg__error("%s: argument 'vs' is NULL (an earlier call probably failed)", op);
    return NULL;
  }
  tg_optimizer *opt = calloc(1, sizeof *opt);
  opt_param *params = calloc((size_t)(vs->n_vars > 0 ? vs->n_vars : 1), sizeof *params);
  if (!opt || !params) {
    free(opt);
    free(params);
    tg__error("%s: out of memory", op);
    return NULL;
  }
  opt->kind = kind;
  opt->lr = lr;
  opt->params = params;
  for (int i = 0; i < vs->n_vars; i++)
    if (vs->vars[i].trainable)
      params[opt->n++].param = tg_tensor_retain(vs->vars[i].t);
  return opt;
}

tg_optimizer *tg_sgd_new(tg_varstore *vs, tg_sgd_config c) {
  const char *op = "tg_sgd_new";
  if (!(c.lr >= 0))
    return tg__error("%s: Invalid learning rate: %g", op, c.lr), NULL;
  if (!(c.momentum >= 0))
    return tg__error("%s: Invalid momentum value: %g", op, c.momentum), NULL;
  if (!(c.weight_decay >= 0))
    return tg__error("%s: Invalid weight_decay value: %g", op, c.weight_decay), NULL;
  if (!isfinite(c.dampening))
    return tg__error("%s: Invalid dampening value: %g", op, c.dampening), NULL;
  if (c.nesterov && (c.momentum <= 0 || c.dampening != 0))
    return tg__error("%s: Nesterov momentum requires a momentum and zero dampening "
                     "(got momentum %g, dampening %g)",
                     op, c.momentum, c.dampening),
           NULL;
  tg_optimizer *opt = optimizer_new(vs, OPT_SGD, c.lr, op);
  if (opt)
    opt->sgd = c;
  return opt;
}

tg_optimizer *tg_adam_new(tg_varstore *vs, tg_adam_config c) {
  const char *op = c.decoupled ? "tg_adam_new (AdamW)" : "tg_adam_new";
  if (!(c.lr >= 0))
    return tg__error("%s: Invalid learning rate: %g", op, c.lr), NULL;
  if (!(c.eps >= 0))
    return tg__error("%s: Invalid epsilon value: %g", op, c.eps), NULL;
  if (!(c.beta1 >= 0 && c.beta1 < 1))
    return tg__error("%s: Invalid beta parameter at index 0: %g", op, c.beta1), NULL;
  if (!(c.beta2 >= 0 && c.beta2 < 1))
    return tg__error("%s: Invalid beta parameter at index 1: %g", op, c.beta2), NULL;
  if (!(c.weight_decay >= 0))
    return tg__error("%s: Invalid weight_decay value: %g", op, c.weight_decay), NULL;
  tg_optimizer *opt = optimizer_new(vs, OPT_ADAM, c.lr, op);
  if (opt)
    opt->adam = c;
  return opt;
}

void tg_optimizer_free(tg_optimizer *opt) {
  if (!opt)
    return;
  for (int i = 0; i < opt->n; i++) {
    tg_tensor_free(opt->params[i].param);
    tg_tensor_free(opt->params[i].buf1);
    tg_tensor_free(opt->params[i].buf2);
  }
  free(opt->params);
  free(opt);
}

void tg_optimizer_zero_grad(tg_optimizer *opt) {
  if (!opt)
    return;
  for (int i = 0; i < opt->n; i++)
    tg_zero_grad(opt->params[i].param);
}

void tg_optimizer_set_lr(tg_optimizer *opt, double lr) {
  if (opt)
    opt->lr = lr;
}

double tg_optimizer_lr(const tg_optimizer *opt) { return opt ? opt->lr : NAN; }

/* ------------------------------------------------------------------ step -- */

/* torch.optim.SGD on one parameter:
 *   d = g + wd*p;  b = d (first step) or momentum*b + (1-dampening)*d;
 *   d = nesterov ? d + momentum*b : b (when momentum != 0);  p -= lr*d. */
static void sgd_update(const tg_sgd_config *c, double lr, opt_param *s) {
  tg_tensor *p = s->param;
  int64_t n = p->numel;
  bool fresh = s->fresh;
  s->fresh = false;
  TG_DISPATCH_FLOAT(p->dtype, T, {
    T *w = tg__data(p);
    const T *g = tg__data(p->grad);
    T *b = s->buf1 ? tg__data(s->buf1) : NULL;
    const T wd = (T)c->weight_decay, mom = (T)c->momentum;
    const T keep = (T)(1 - c->dampening), step = (T)lr;
    const bool nesterov = c->nesterov;
_Pragma("omp parallel for simd num_threads(tg__threads(n))")
    for (int64_t i = 0; i < n; i++) {
      T d = g[i];
      if (wd != 0)
        d += wd * w[i];
      if (b) {
        b[i] = fresh ? d : mom * b[i] + keep * d;
        d = nesterov ? d + mom * b[i] : b[i];
      }
      w[i] -= step * d;
    }
  });
}

/* torch.optim.Adam / AdamW on one parameter, at step t:
 *   Adam: g += wd*p;  AdamW: p *= 1 - lr*wd;
 *   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
 *   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). */
static void adam_update(const tg_adam_config *c, double lr, opt_param *s) {
  tg_tensor *p = s->param;
  int64_t n = p->numel;
  s->step++;
  double bc1 = 1 - pow(c->beta1, (double)s->step);
  double bc2 = 1 - pow(c->beta2, (double)s->step);
  TG_DISPATCH_FLOAT(p->dtype, T, {
    T *w = tg__data(p), *m = tg__data(s->buf1), *v = tg__data(s->buf2);
    const T *g = tg__data(p->grad);
    const T b1 = (T)c->beta1, b2 = (T)c->beta2, eps = (T)c->eps;
    const T a1 = (T)(1 - c->beta1), a2 = (T)(1 - c->beta2);
    const T l2 = c->decoupled ? 0 : (T)c->weight_decay;
    const T decay = c->decoupled ? (T)(1 - lr * c->weight_decay) : 1;
    const T step_size = (T)(lr / bc1), bc2_sqrt = (T)sqrt(bc2);
_Pragma("omp parallel for simd num_threads(tg__threads(n))")
    for (int64_t i = 0; i < n; i++) {
      T gi = g[i] + l2 * w[i];
      w[i] *= decay;
      m[i] = b1 * m[i] + a1 * gi;
      v[i] = b2 * v[i] + a2 * gi * gi;
      T denom = (T)sqrt(v[i]) / bc2_sqrt + eps;
      w[i] -= step_size * m[i] / denom;
    }
  });
}

static tg_tensor *new_state(const tg_tensor *p) {
  return tg__unscope(tg_zeros(p->shape, p->ndim, p->dtype, p->device));
}

/* Checks every parameter and creates the state it needs, so that the updates that
 * follow cannot fail half-way. */
static int prepare(tg_optimizer *opt) {
  for (int i = 0; i < opt->n; i++) {
    opt_param *s = &opt->params[i];
    tg_tensor *p = s->param, *g = p->grad;
    if (!g)
      continue;
    if (p->device.type != TG_DEVICE_CPU)
      return tg__unsupported_device("tg_optimizer_step", p);
    if (g->numel != p->numel || g->dtype != p->dtype || !tg__is_float(p->dtype)) {
      char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
      return tg__error("tg_optimizer_step: gradient %s %s does not match its "
                       "parameter %s %s",
                       tg_dtype_name(g->dtype), tg_shape_str(g, a, sizeof a),
                       tg_dtype_name(p->dtype), tg_shape_str(p, b, sizeof b));
    }
    bool need1 = opt->kind == OPT_ADAM || opt->sgd.momentum != 0;
    bool need2 = opt->kind == OPT_ADAM;
    if (s->buf1 && s->buf1->dtype != p->dtype)
      return tg__error("tg_optimizer_step: the optimizer state is %s but its parameter "
                       "is now %s (create optimizers after tg_varstore_set_dtype)",
                       tg_dtype_name(s->buf1->dtype), tg_dtype_name(p->dtype));
    if (need1 && !s->buf1) {
      if (!(s->buf1 = new_state(p)))
        return -1;
      s->fresh = true;
    }
    if (need2 && !s->buf2 && !(s->buf2 = new_state(p)))
      return -1;
  }
  return 0;
}

int tg_optimizer_step(tg_optimizer *opt) {
  if (!opt)
    return tg__error("tg_optimizer_step: argument 'opt' is NULL");
  if (prepare(opt) < 0)
    return -1;
  for (int i = 0; i < opt->n; i++) {
    opt_param *s = &opt->params[i];
    if (!s->param->grad)
      continue;
    tg__bump_version(s->param);
    if (opt->kind == OPT_SGD)
      sgd_update(&opt->sgd, opt->lr, s);
    else
      adam_update(&opt->adam, opt->lr, s);
  }
  return 0;
}

/* torch.nn.utils.clip_grad_norm_: total L2 norm over all gradients, each scaled by
 * max_norm / (norm + 1e-6) when that is below 1. */
double tg_clip_grad_norm(tg_varstore *vs, double max_norm) {
  if (!vs) {
    tg__error("tg_clip_grad_norm: argument 'vs' is NULL");
    return -1;
  }
  if (!(max_norm >= 0)) {
    tg__error("tg_clip_grad_norm: max_norm must be non-negative, got %g", max_norm);
    return -1;
  }
  double sumsq = 0;
  for (int i = 0; i < vs->n_vars; i++) {
    tg_tensor *g = vs->vars[i].trainable ? vs->vars[i].t->grad : NULL;
    if (!g)
      continue;
    if (g->device.type != TG_DEVICE_CPU) {
      tg__unsupported_device("tg_clip_grad_norm", g);
      return -1;
    }
    sumsq += tg__sumsq(g);
  }
  double norm = sqrt(sumsq);
  double coef = max_norm / (norm + 1e-6);
  if (!(coef >= 1)) /* a NaN norm makes every gradient NaN, as PyTorch's clamp */
    for (int i = 0; i < vs->n_vars; i++)
      if (vs->vars[i].trainable && vs->vars[i].t->grad)
        tg__scale_(vs->vars[i].t->grad, coef);
  return norm;
}
