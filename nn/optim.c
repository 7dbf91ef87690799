/* Optimizers: torch.optim.SGD, Adam and AdamW, step for step.
 *
 * State is kept per parameter, as PyTorch does: the parameter (retained), its
 * momentum buffer or Adam moments, created at the first step where the parameter
 * has a gradient. Gradients stay in each variable's own .grad tensor, so data
 * parallel training can all-reduce them (per tensor, or packed into one buffer)
 * between tg_backward and tg_optimizer_step without changing anything here.
 * Parameters whose gradient is NULL (unused, or dropped by zero_grad) are skipped,
 * state included, as PyTorch skips p.grad is None. Steps write the data directly,
 * outside the tape.
 *
 * State lives on its parameter's device. A step picks its kernels by that device
 * (optim_kernels below): one fused loop or CUDA kernel per parameter, with the
 * per-element formulas of nn/optim_tmpl.h that both devices share; on CUDA it only
 * queues kernels, never waiting for the device.
 *
 * Parameter groups are torch.optim's param_groups: each parameter belongs to one
 * group, whose own config (lr, momentum or beta1, weight decay...) its update uses.
 * The state dict holds everything a step reads, so a run resumed from it continues
 * bit for bit. */
#include "nn/optim.h"
#include "nn/internal.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum { OPT_SGD, OPT_ADAM } opt_kind;

typedef struct {
  tg_tensor *param; /* retained: the optimizer may outlive its var store */
  char *name;       /* its name in the var store, for the state dict */
  int group;
  tg_tensor *buf1; /* SGD momentum_buffer / Adam exp_avg */
  tg_tensor *buf2; /* Adam exp_avg_sq */
  int64_t step;    /* Adam: steps this parameter took (for bias correction) */
  bool fresh;      /* SGD: buf1 was just created and takes the gradient as is */
} opt_param;

/* A group's config: sgd or adam by the optimizer's kind. lr lives in it. */
typedef struct {
  tg_sgd_config sgd;
  tg_adam_config adam;
  double initial_lr; /* the lr schedulers start from (NAN until one is made) */
} opt_group;

struct tg_optimizer {
  opt_kind kind;
  opt_group *groups;
  int n_groups;
  opt_param *params;
  int n;
};

tg_sgd_config tg_sgd_config_default(double lr) {
  return (tg_sgd_config){lr, 0.0, 0.0, 0.0, false};
}

tg_adam_config tg_adam_config_default(double lr) {
  return (tg_adam_config){lr, 0.9, 0.999, 1e-8, 0.0, false};
}

tg_param_group tg_param_group_default(void) {
  return (tg_param_group){NULL, NULL, NULL, NAN, NAN, NAN};
}

static int sgd_check(const tg_sgd_config *c, const char *op) {
  if (!(c->lr >= 0))
    return tg__error("%s: Invalid learning rate: %g", op, c->lr);
  if (!(c->momentum >= 0))
    return tg__error("%s: Invalid momentum value: %g", op, c->momentum);
  if (!(c->weight_decay >= 0))
    return tg__error("%s: Invalid weight_decay value: %g", op, c->weight_decay);
  if (!isfinite(c->dampening))
    return tg__error("%s: Invalid dampening value: %g", op, c->dampening);
  if (c->nesterov && (c->momentum <= 0 || c->dampening != 0))
    return tg__error("%s: Nesterov momentum requires a momentum and zero dampening "
                     "(got momentum %g, dampening %g)",
                     op, c->momentum, c->dampening);
  return 0;
}

static int adam_check(const tg_adam_config *c, const char *op) {
  if (!(c->lr >= 0))
    return tg__error("%s: Invalid learning rate: %g", op, c->lr);
  if (!(c->eps >= 0))
    return tg__error("%s: Invalid epsilon value: %g", op, c->eps);
  if (!(c->beta1 >= 0 && c->beta1 < 1))
    return tg__error("%s: Invalid beta parameter at index 0: %g", op, c->beta1);
  if (!(c->beta2 >= 0 && c->beta2 < 1))
    return tg__error("%s: Invalid beta parameter at index 1: %g", op, c->beta2);
  if (!(c->weight_decay >= 0))
    return tg__error("%s: Invalid weight_decay value: %g", op, c->weight_decay);
  return 0;
}

static int group_check(const tg_optimizer *opt, const opt_group *g, const char *op) {
  return opt->kind == OPT_SGD ? sgd_check(&g->sgd, op) : adam_check(&g->adam, op);
}

/* The fields a group may override (and schedulers set), by the optimizer's kind. */
static double *group_lr(opt_group *g, opt_kind k) {
  return k == OPT_SGD ? &g->sgd.lr : &g->adam.lr;
}
static double *group_momentum(opt_group *g, opt_kind k) {
  return k == OPT_SGD ? &g->sgd.momentum : &g->adam.beta1;
}
static double *group_weight_decay(opt_group *g, opt_kind k) {
  return k == OPT_SGD ? &g->sgd.weight_decay : &g->adam.weight_decay;
}

static bool in_group(const tg_param_group *g, const tg__var *v) {
  if (g->prefix && strncmp(v->name, g->prefix, strlen(g->prefix)))
    return false;
  return !g->filter || g->filter(v->name, v->t, g->ctx);
}

/* The optimizer over vs's trainable variables in n_groups + 1 groups, base (sgd or
 * adam, by kind) with each group's overrides; the last group takes the rest. */
static tg_optimizer *optimizer_new(tg_varstore *vs, opt_kind kind, opt_group base,
                                   const tg_param_group *groups, int n_groups,
                                   const char *op) {
  if (!vs) {
    if (!tg_last_error()[0])
      tg__error("%s: argument 'vs' is NULL (an earlier call probably failed)", op);
    return NULL;
  }
  if (n_groups < 0 || (n_groups > 0 && !groups))
    return tg__error("%s: %d parameter groups at %p", op, n_groups, (const void *)groups),
           NULL;
  tg_optimizer *opt = calloc(1, sizeof *opt);
  opt_param *params = calloc((size_t)(vs->n_vars > 0 ? vs->n_vars : 1), sizeof *params);
  opt_group *gs = calloc((size_t)n_groups + 1, sizeof *gs);
  if (!opt || !params || !gs) {
    free(opt);
    free(params);
    free(gs);
    tg__error("%s: out of memory", op);
    return NULL;
  }
  opt->kind = kind;
  opt->params = params;
  opt->groups = gs;
  opt->n_groups = n_groups + 1;
  base.initial_lr = NAN;
  for (int g = 0; g <= n_groups; g++) {
    gs[g] = base;
    const tg_param_group *pg = g < n_groups ? &groups[g] : NULL;
    if (pg && !isnan(pg->lr))
      *group_lr(&gs[g], kind) = pg->lr;
    if (pg && !isnan(pg->momentum))
      *group_momentum(&gs[g], kind) = pg->momentum;
    if (pg && !isnan(pg->weight_decay))
      *group_weight_decay(&gs[g], kind) = pg->weight_decay;
    if (group_check(opt, &gs[g], op) < 0) {
      tg_optimizer_free(opt);
      return NULL;
    }
  }
  for (int i = 0; i < vs->n_vars; i++) {
    if (!vs->vars[i].trainable)
      continue;
    int g = 0;
    while (g < n_groups && !in_group(&groups[g], &vs->vars[i]))
      g++;
    opt_param *p = &params[opt->n];
    if (!(p->name = strdup(vs->vars[i].name))) {
      tg_optimizer_free(opt);
      return tg__error("%s: out of memory", op), NULL;
    }
    p->param = tg_tensor_retain(vs->vars[i].t);
    p->group = g;
    opt->n++;
  }
  return opt;
}

tg_optimizer *tg_sgd_new_groups(tg_varstore *vs, tg_sgd_config c,
                                const tg_param_group *groups, int n_groups) {
  return optimizer_new(vs, OPT_SGD, (opt_group){.sgd = c}, groups, n_groups,
                       "tg_sgd_new");
}

tg_optimizer *tg_sgd_new(tg_varstore *vs, tg_sgd_config c) {
  return tg_sgd_new_groups(vs, c, NULL, 0);
}

tg_optimizer *tg_adam_new_groups(tg_varstore *vs, tg_adam_config c,
                                 const tg_param_group *groups, int n_groups) {
  return optimizer_new(vs, OPT_ADAM, (opt_group){.adam = c}, groups, n_groups,
                       c.decoupled ? "tg_adam_new (AdamW)" : "tg_adam_new");
}

tg_optimizer *tg_adam_new(tg_varstore *vs, tg_adam_config c) {
  return tg_adam_new_groups(vs, c, NULL, 0);
}

void tg_optimizer_free(tg_optimizer *opt) {
  if (!opt)
    return;
  for (int i = 0; i < opt->n; i++) {
    tg_tensor_free(opt->params[i].param);
    tg_tensor_free(opt->params[i].buf1);
    tg_tensor_free(opt->params[i].buf2);
    free(opt->params[i].name);
  }
  free(opt->params);
  free(opt->groups);
  free(opt);
}

void tg_optimizer_zero_grad(tg_optimizer *opt) {
  if (!opt)
    return;
  for (int i = 0; i < opt->n; i++)
    tg_zero_grad(opt->params[i].param);
}

void tg_optimizer_set_lr(tg_optimizer *opt, double lr) {
  for (int g = 0; opt && g < opt->n_groups; g++)
    *group_lr(&opt->groups[g], opt->kind) = lr;
}

double tg_optimizer_lr(const tg_optimizer *opt) {
  return opt ? *group_lr(&opt->groups[0], opt->kind) : NAN;
}

int tg_optimizer_num_groups(const tg_optimizer *opt) { return opt ? opt->n_groups : 0; }

static opt_group *group_at(const tg_optimizer *opt, int g, const char *op) {
  if (!opt) {
    tg__error("%s: argument 'opt' is NULL", op);
    return NULL;
  }
  if (g < 0 || g >= opt->n_groups) {
    tg__error("%s: group %d is out of range for an optimizer of %d groups", op, g,
              opt->n_groups);
    return NULL;
  }
  return &opt->groups[g];
}

int tg_optimizer_group_len(const tg_optimizer *opt, int g) {
  if (!group_at(opt, g, "tg_optimizer_group_len"))
    return -1;
  int n = 0;
  for (int i = 0; i < opt->n; i++)
    n += opt->params[i].group == g;
  return n;
}

/* Sets field (lr or momentum) of group g to v after checking the group with it. */
static int set_group_field(tg_optimizer *opt, int g,
                           double *(*field)(opt_group *, opt_kind), double v,
                           const char *op) {
  opt_group *grp = group_at(opt, g, op);
  if (!grp)
    return -1;
  opt_group tried = *grp;
  *field(&tried, opt->kind) = v;
  if (group_check(opt, &tried, op) < 0)
    return -1;
  *grp = tried;
  return 0;
}

int tg_optimizer_set_group_lr(tg_optimizer *opt, int g, double lr) {
  return set_group_field(opt, g, group_lr, lr, "tg_optimizer_set_group_lr");
}

double tg_optimizer_group_lr(const tg_optimizer *opt, int g) {
  opt_group *grp = group_at(opt, g, "tg_optimizer_group_lr");
  return grp ? *group_lr(grp, opt->kind) : NAN;
}

int tg_optimizer_set_group_momentum(tg_optimizer *opt, int g, double momentum) {
  return set_group_field(opt, g, group_momentum, momentum,
                         "tg_optimizer_set_group_momentum");
}

double tg_optimizer_group_momentum(const tg_optimizer *opt, int g) {
  opt_group *grp = group_at(opt, g, "tg_optimizer_group_momentum");
  return grp ? *group_momentum(grp, opt->kind) : NAN;
}

double *tg__optimizer_initial_lr(tg_optimizer *opt, int g) {
  return &opt->groups[g].initial_lr;
}

/* ------------------------------------------------------------------ step -- */

/* A step's kernels on one device: parameter p, its gradient g and its state buffers
 * (b NULL without momentum), all on p's device, with the coefficients of the step. */
typedef struct {
  int (*sgd)(const tg__sgd_coefs *c, tg_tensor *p, const tg_tensor *g, tg_tensor *b);
  int (*adam)(const tg__adam_coefs *c, tg_tensor *p, const tg_tensor *g, tg_tensor *m,
              tg_tensor *v);
} optim_kernels;

static int sgd_cpu(const tg__sgd_coefs *c, tg_tensor *p, const tg_tensor *g,
                   tg_tensor *buf) {
  int64_t n = p->numel;
  /* A loop each with and without the momentum buffer: with `b ? &b[i] : NULL` in one
   * loop GCC does not vectorise it (3x slower, bench/NOTES.md). */
  TG_DISPATCH_FLOAT(p->dtype, T, {
    T *w = tg__data(p), *b = buf ? tg__data(buf) : NULL;
    const T *gr = tg__data(g);
    if (b) {
      _Pragma("omp parallel for simd num_threads(tg__threads(n))") for (int64_t i = 0;
                                                                        i < n; i++)
          tg__sgd_elem(c, &w[i], gr[i], &b[i]);
    } else {
      _Pragma("omp parallel for simd num_threads(tg__threads(n))") for (int64_t i = 0;
                                                                        i < n; i++)
          tg__sgd_elem(c, &w[i], gr[i], NULL);
    }
  });
  return 0;
}

static int adam_cpu(const tg__adam_coefs *c, tg_tensor *p, const tg_tensor *g,
                    tg_tensor *m, tg_tensor *v) {
  int64_t n = p->numel;
  TG_DISPATCH_FLOAT(p->dtype, T, {
    T *w = tg__data(p), *mb = tg__data(m), *vb = tg__data(v);
    const T *gr = tg__data(g);
    _Pragma("omp parallel for simd num_threads(tg__threads(n))") for (int64_t i = 0;
                                                                      i < n; i++)
        tg__adam_elem(c, &w[i], gr[i], &mb[i], &vb[i]);
  });
  return 0;
}

static const optim_kernels optim_cpu = {sgd_cpu, adam_cpu};

#ifdef TG_HAVE_CUDA
static int sgd_cuda(const tg__sgd_coefs *c, tg_tensor *p, const tg_tensor *g,
                    tg_tensor *b) {
  return tg__sgd_cuda(c, p->dtype, tg__data(p), tg__data(g), b ? tg__data(b) : NULL,
                      p->numel, p->device.index);
}

static int adam_cuda(const tg__adam_coefs *c, tg_tensor *p, const tg_tensor *g,
                     tg_tensor *m, tg_tensor *v) {
  return tg__adam_cuda(c, p->dtype, tg__data(p), tg__data(g), tg__data(m), tg__data(v),
                       p->numel, p->device.index);
}

static const optim_kernels optim_cuda = {sgd_cuda, adam_cuda};
#endif

static const optim_kernels *kernels_for(const tg_tensor *p) {
  return tg__pick("tg_optimizer_step", p, &optim_cpu, TG_IF_CUDA(&optim_cuda));
}

/* torch.optim.SGD on one parameter (nn/optim_tmpl.h has the formula). */
static int sgd_update(const tg_sgd_config *c, opt_param *s) {
  tg_tensor *p = s->param;
  tg__sgd_coefs k = {c->lr,           c->momentum, 1 - c->dampening,
                     c->weight_decay, c->nesterov, s->fresh};
  s->fresh = false;
  return kernels_for(p)->sgd(&k, p, p->grad,
                             s->buf1 && c->momentum != 0 ? s->buf1 : NULL);
}

/* torch.optim.Adam / AdamW on one parameter, at its step t (nn/optim_tmpl.h). */
static int adam_update(const tg_adam_config *c, opt_param *s) {
  tg_tensor *p = s->param;
  s->step++;
  double bc1 = 1 - pow(c->beta1, (double)s->step);
  double bc2 = 1 - pow(c->beta2, (double)s->step);
  tg__adam_coefs k = {c->beta1,
                      c->beta2,
                      1 - c->beta1,
                      1 - c->beta2,
                      c->eps,
                      c->decoupled ? 0 : c->weight_decay,
                      c->decoupled ? 1 - c->lr * c->weight_decay : 1,
                      c->lr / bc1,
                      sqrt(bc2)};
  return kernels_for(p)->adam(&k, p, p->grad, s->buf1, s->buf2);
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
    if (!kernels_for(p))
      return -1;
    if (g->device.type != p->device.type || g->device.index != p->device.index) {
      char a[16], b[16];
      return tg__error("tg_optimizer_step: the gradient of '%s' has data located on %s, "
                       "but its parameter is located on %s (a gradient must be on its "
                       "parameter's device)",
                       s->name, tg__device_str(g->device, a, sizeof a),
                       tg__device_str(p->device, b, sizeof b));
    }
    if (g->numel != p->numel || g->dtype != p->dtype || !tg__is_float(p->dtype)) {
      char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
      return tg__error("tg_optimizer_step: gradient %s %s does not match its "
                       "parameter %s %s",
                       tg_dtype_name(g->dtype), tg_shape_str(g, a, sizeof a),
                       tg_dtype_name(p->dtype), tg_shape_str(p, b, sizeof b));
    }
    bool need1 = opt->kind == OPT_ADAM || opt->groups[s->group].sgd.momentum != 0;
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
    const opt_group *g = &opt->groups[s->group];
    if ((opt->kind == OPT_SGD ? sgd_update(&g->sgd, s) : adam_update(&g->adam, s)) < 0)
      return -1; /* a failed launch: the device's context is lost */
  }
  return 0;
}

/* ------------------------------------------------------------ state dict -- */

/* Config fields of a group in the state dict, by kind (nesterov and decoupled as 0/1). */
typedef struct {
  const char *name;
  size_t offset; /* of a double in opt_group, or a bool when is_bool */
  bool is_bool;
} group_field;

#define SGD_FIELD(f)                                                                     \
  { #f, offsetof(opt_group, sgd.f), false }
#define ADAM_FIELD(f)                                                                    \
  { #f, offsetof(opt_group, adam.f), false }
static const group_field sgd_fields[] = {
    SGD_FIELD(lr),
    SGD_FIELD(momentum),
    SGD_FIELD(dampening),
    SGD_FIELD(weight_decay),
    {"nesterov", offsetof(opt_group, sgd.nesterov), true},
    {"initial_lr", offsetof(opt_group, initial_lr), false},
};
static const group_field adam_fields[] = {
    ADAM_FIELD(lr),
    ADAM_FIELD(beta1),
    ADAM_FIELD(beta2),
    ADAM_FIELD(eps),
    ADAM_FIELD(weight_decay),
    {"decoupled", offsetof(opt_group, adam.decoupled), true},
    {"initial_lr", offsetof(opt_group, initial_lr), false},
};

static const group_field *fields_of(const tg_optimizer *opt, int *n) {
  *n = opt->kind == OPT_SGD ? (int)(sizeof sgd_fields / sizeof *sgd_fields)
                            : (int)(sizeof adam_fields / sizeof *adam_fields);
  return opt->kind == OPT_SGD ? sgd_fields : adam_fields;
}

/* Stores a new tensor (taken) under "<prefix><fmt...>". */
static int put(tg_tensor_dict *d, tg_tensor *t, const char *prefix, const char *fmt,
               const char *a, const char *b) {
  const char *op = "tg_optimizer_state_dict";
  char name[1024];
  snprintf(name, sizeof name, fmt, a, b);
  char *full = tg__concat(prefix, name, op);
  int rc = full && t ? tg__dict_take(d, full, tg__unscope(t), op) : -1;
  if (!full)
    tg_tensor_free(t);
  free(full);
  return rc;
}

int tg_optimizer_state_dict(const tg_optimizer *opt, tg_tensor_dict *d,
                            const char *prefix) {
  if (!opt || !d)
    return tg__error("tg_optimizer_state_dict: argument '%s' is NULL", opt ? "d" : "opt");
  int nf, rc = 0;
  const group_field *fields = fields_of(opt, &nf);
  for (int g = 0; g < opt->n_groups && rc == 0; g++) {
    char gi[16];
    snprintf(gi, sizeof gi, "%d", g);
    const char *base = (const char *)&opt->groups[g];
    for (int f = 0; f < nf && rc == 0; f++) {
      const group_field *fl = &fields[f];
      double v = fl->is_bool ? *(const bool *)(base + fl->offset)
                             : *(const double *)(base + fl->offset);
      rc = put(d, tg_scalar(v, TG_F64, TG_CPU), prefix, "param_groups.%s.%s", gi,
               fl->name);
    }
    if (rc == 0)
      rc = put(d, tg_scalar(tg_optimizer_group_len(opt, g), TG_I64, TG_CPU), prefix,
               "param_groups.%s.%s", gi, "size");
  }
  const char *buf1 = opt->kind == OPT_SGD ? "momentum_buffer" : "exp_avg";
  for (int i = 0; i < opt->n && rc == 0; i++) {
    const opt_param *s = &opt->params[i];
    if (s->buf1)
      rc = put(d, tg_tensor_retain(s->buf1), prefix, "state.%s.%s", s->name, buf1);
    if (rc == 0 && s->buf2)
      rc =
          put(d, tg_tensor_retain(s->buf2), prefix, "state.%s.%s", s->name, "exp_avg_sq");
    if (rc == 0 && opt->kind == OPT_ADAM && s->buf1)
      rc = put(d, tg_scalar((double)s->step, TG_I64, TG_CPU), prefix, "state.%s.%s",
               s->name, "step");
  }
  return rc;
}

/* Reading a state dict: names looked up under prefix, each one ticked off in used. */
typedef struct {
  const tg_tensor_dict *d;
  const char *prefix;
  bool *used;
} reader;

static const tg_tensor *lookup(reader *r, const char *fmt, const char *a, const char *b) {
  char name[1024], full[2048];
  snprintf(name, sizeof name, fmt, a, b);
  snprintf(full, sizeof full, "%s%s", r->prefix ? r->prefix : "", name);
  const tg__dict_entry *e = tg__dict_find(r->d, full);
  if (!e)
    return NULL;
  r->used[e - r->d->items] = true;
  return e->t;
}

/* A one-element tensor's value; -1 with an error naming it otherwise. */
static int scalar_of(const tg_tensor *t, const char *what, const char *op, double *v) {
  if (!t)
    return tg__error("%s: the state dict lacks %s", op, what);
  if (t->numel != 1 || t->device.type != TG_DEVICE_CPU)
    return tg__error("%s: %s must be a one-element CPU tensor", op, what);
  *v = tg_item(t);
  return 0;
}

/* A copy of buffer t for param p (same shape and dtype required), in *out. */
static int buffer_of(const tg_tensor *t, const opt_param *p, const char *what,
                     const char *op, tg_tensor **out) {
  char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
  if (t->dtype != p->param->dtype || t->numel != p->param->numel ||
      t->ndim != p->param->ndim ||
      memcmp(t->shape, p->param->shape, (size_t)t->ndim * sizeof *t->shape))
    return tg__error("%s: %s is %s %s but its parameter is %s %s", op, what,
                     tg_dtype_name(t->dtype), tg_shape_str(t, a, sizeof a),
                     tg_dtype_name(p->param->dtype), tg_shape_str(p->param, b, sizeof b));
  /* A copy of its own on the parameter's device, wherever the dict's tensor is (a
   * file's on the CPU, another optimizer's state on its device): tg_tensor_to would
   * share the storage of a tensor already there. */
  bool here = t->device.type == p->param->device.type &&
              t->device.index == p->param->device.index;
  tg_no_grad_begin();
  tg_tensor *c = tg__unscope(here ? tg_clone(t) : tg_tensor_to(t, p->param->device));
  tg_no_grad_end();
  *out = c;
  return c ? 0 : -1;
}

int tg_optimizer_load_state_dict(tg_optimizer *opt, const tg_tensor_dict *d,
                                 const char *prefix) {
  const char *op = "tg_optimizer_load_state_dict";
  if (!opt || !d)
    return tg__error("%s: argument '%s' is NULL", op, opt ? "d" : "opt");
  reader r = {d, prefix, calloc((size_t)(d->n > 0 ? d->n : 1), sizeof(bool))};
  opt_group *groups = malloc((size_t)opt->n_groups * sizeof *groups);
  opt_param *params = calloc((size_t)(opt->n > 0 ? opt->n : 1), sizeof *params);
  int rc = r.used && groups && params ? 0 : tg__error("%s: out of memory", op);
  int nf;
  const group_field *fields = fields_of(opt, &nf);
  char what[1200];
  for (int g = 0; g < opt->n_groups && rc == 0; g++) {
    char gi[16];
    snprintf(gi, sizeof gi, "%d", g);
    groups[g] = opt->groups[g];
    char *base = (char *)&groups[g];
    for (int f = 0; f < nf && rc == 0; f++) {
      double v = 0;
      snprintf(what, sizeof what, "param_groups.%d.%s", g, fields[f].name);
      rc = scalar_of(lookup(&r, "param_groups.%s.%s", gi, fields[f].name), what, op, &v);
      if (rc == 0 && fields[f].is_bool)
        *(bool *)(base + fields[f].offset) = v != 0;
      else if (rc == 0)
        *(double *)(base + fields[f].offset) = v;
    }
    double size = 0;
    snprintf(what, sizeof what, "param_groups.%d.size", g);
    if (rc == 0)
      rc = scalar_of(lookup(&r, "param_groups.%s.%s", gi, "size"), what, op, &size);
    if (rc == 0 && size != tg_optimizer_group_len(opt, g))
      rc = tg__error("%s: parameter group %d holds %d parameters but the state dict's "
                     "holds %g",
                     op, g, tg_optimizer_group_len(opt, g), size);
    if (rc == 0)
      rc = group_check(opt, &groups[g], op);
  }
  const char *buf1_name = opt->kind == OPT_SGD ? "momentum_buffer" : "exp_avg";
  for (int i = 0; i < opt->n && rc == 0; i++) {
    const opt_param *s = &opt->params[i];
    opt_param *p = &params[i];
    const tg_tensor *b1 = lookup(&r, "state.%s.%s", s->name, buf1_name);
    const tg_tensor *b2 =
        opt->kind == OPT_ADAM ? lookup(&r, "state.%s.%s", s->name, "exp_avg_sq") : NULL;
    const tg_tensor *st =
        opt->kind == OPT_ADAM ? lookup(&r, "state.%s.%s", s->name, "step") : NULL;
    if (opt->kind == OPT_ADAM && (!b1 != !b2 || !b1 != !st))
      rc = tg__error("%s: the state of '%s' needs exp_avg, exp_avg_sq and step together",
                     op, s->name);
    snprintf(what, sizeof what, "state.%s.%s", s->name, buf1_name);
    if (rc == 0 && b1)
      rc = buffer_of(b1, s, what, op, &p->buf1);
    snprintf(what, sizeof what, "state.%s.exp_avg_sq", s->name);
    if (rc == 0 && b2)
      rc = buffer_of(b2, s, what, op, &p->buf2);
    double step = 0;
    snprintf(what, sizeof what, "state.%s.step", s->name);
    if (rc == 0 && st)
      rc = scalar_of(st, what, op, &step);
    if (rc == 0 && st && !(step >= 1 && step <= 9007199254740992.0))
      rc = tg__error("%s: %s is %g, not a positive step count", op, what, step);
    p->step = (int64_t)step;
  }
  /* Everything under prefix must have been used: a state dict of another optimizer or
   * model is an error, not a silent partial load. */
  size_t lp = prefix ? strlen(prefix) : 0;
  for (int k = 0; k < d->n && rc == 0; k++)
    if (!r.used[k] && !strncmp(d->items[k].name, prefix ? prefix : "", lp))
      rc = tg__error("%s: unexpected '%s' in the state dict (not state of this %s "
                     "optimizer's parameters)",
                     op, d->items[k].name, opt->kind == OPT_SGD ? "SGD" : "Adam");
  for (int i = 0; i < opt->n; i++) {
    opt_param *s = &opt->params[i];
    if (rc == 0) {
      tg_tensor_free(s->buf1);
      tg_tensor_free(s->buf2);
      s->buf1 = params[i].buf1;
      s->buf2 = params[i].buf2;
      s->step = params[i].step;
      s->fresh = false;
    } else {
      tg_tensor_free(params[i].buf1);
      tg_tensor_free(params[i].buf2);
    }
  }
  if (rc == 0)
    memcpy(opt->groups, groups, (size_t)opt->n_groups * sizeof *groups);
  free(r.used);
  free(groups);
  free(params);
  return rc;
}

/* *sumsq = the squared gradients of a device store's trainable variables, added in
 * creation order into one device double (the order the CPU loop adds them in), so
 * the norm costs one wait for the device instead of one per gradient. */
static int device_sumsq(const tg_varstore *vs, double *sumsq) {
  const char *op = "tg_clip_grad_norm";
  const int dev = vs->device.index;
  double *acc = tg__cuda_malloc(sizeof *acc, dev);
  int rc = acc ? tg__cuda_fill(acc, TG_F64, 1, 0, dev) : -1;
  for (int i = 0; i < vs->n_vars && rc == 0; i++) {
    const tg_tensor *g = vs->vars[i].trainable ? vs->vars[i].t->grad : NULL;
    char a[16], b[16];
    if (g && (g->device.type != vs->device.type || g->device.index != dev))
      rc = tg__error("%s: the gradient of '%s' is on %s but the var store is on %s", op,
                     vs->vars[i].name, tg__device_str(g->device, a, sizeof a),
                     tg__device_str(vs->device, b, sizeof b));
    else if (g)
      rc = tg__cuda_sumsq_add(tg__data(g), g->dtype, g->numel, dev, acc);
  }
  if (rc == 0)
    rc = tg__cuda_memcpy(sumsq, TG_CPU, acc, vs->device, sizeof *sumsq);
  if (acc)
    tg__cuda_free(acc, sizeof *acc, dev);
  return rc;
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
  if (vs->device.type == TG_DEVICE_CUDA) {
    if (device_sumsq(vs, &sumsq) < 0)
      return -1;
  } else {
    for (int i = 0; i < vs->n_vars; i++) {
      tg_tensor *g = vs->vars[i].trainable ? vs->vars[i].t->grad : NULL;
      if (g)
        sumsq += tg__sumsq(g);
    }
  }
  double norm = sqrt(sumsq);
  double coef = max_norm / (norm + 1e-6);
  if (!(coef >= 1)) /* a NaN norm makes every gradient NaN, as PyTorch's clamp */
    for (int i = 0; i < vs->n_vars; i++)
      if (vs->vars[i].trainable && vs->vars[i].t->grad)
        tg__scale_(vs->vars[i].t->grad, coef);
  return norm;
}
