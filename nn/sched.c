/* Learning-rate schedulers, as torch.optim.lr_scheduler computes them, step for step.
 *
 * Each is a small object over an optimizer's parameter groups. The chainable ones
 * (StepLR, MultiStepLR, LinearLR, CosineAnnealingLR) compute the next lr from the
 * group's current one with PyTorch's own recurrences, so composing them (SequentialLR:
 * linear warm-up then cosine) gives PyTorch's numbers, not a closed form's that
 * differ in the last bits. A scheduler's first step happens at construction, as in
 * PyTorch: the lr after tg_*_lr_new is the one of step 0. */
#include "nn/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
  S_STEP,
  S_MULTISTEP,
  S_LINEAR,
  S_COSINE,
  S_SEQUENTIAL,
  S_ONECYCLE,
  S_PLATEAU
} sched_kind;

struct tg_scheduler {
  sched_kind kind;
  tg_optimizer *opt;
  int n_groups;
  double *base_lrs; /* each group's initial_lr */
  int64_t last_epoch;
  int64_t step_size; /* StepLR */
  double gamma;      /* StepLR, MultiStepLR */
  int64_t *milestones;
  int n_milestones; /* MultiStepLR (sorted), SequentialLR */
  double start_factor, end_factor;
  int64_t total_iters; /* LinearLR */
  int64_t t_max;
  double eta_min; /* CosineAnnealingLR */
  tg_scheduler **children;
  int n_children; /* SequentialLR */
  tg_one_cycle_config oc;
  tg_plateau_config pc;
  double best; /* ReduceLROnPlateau */
  int64_t num_bad_epochs, cooldown_counter;
};

void tg_scheduler_free(tg_scheduler *s) {
  if (!s)
    return;
  for (int i = 0; i < s->n_children; i++)
    tg_scheduler_free(s->children[i]);
  free(s->children);
  free(s->milestones);
  free(s->base_lrs);
  free(s);
}

/* A scheduler of kind over opt whose base lrs are the groups' initial_lr (set to the
 * current lr where no scheduler set it yet, as torch's setdefault). */
static tg_scheduler *sched_new(tg_optimizer *opt, sched_kind kind, const char *op) {
  if (!opt) {
    if (!tg_last_error()[0])
      tg__error("%s: argument 'opt' is NULL (an earlier call probably failed)", op);
    return NULL;
  }
  tg_scheduler *s = calloc(1, sizeof *s);
  int n = tg_optimizer_num_groups(opt);
  double *base = s ? malloc((size_t)n * sizeof *base) : NULL;
  if (!base) {
    free(s);
    tg__error("%s: out of memory", op);
    return NULL;
  }
  s->kind = kind;
  s->opt = opt;
  s->n_groups = n;
  s->base_lrs = base;
  s->last_epoch = -1;
  for (int g = 0; g < n; g++) {
    double *initial = tg__optimizer_initial_lr(opt, g);
    if (isnan(*initial))
      *initial = tg_optimizer_group_lr(opt, g);
    base[g] = *initial;
  }
  return s;
}

/* Python's a % m for m > 0 (never negative). */
static int64_t py_mod(int64_t a, int64_t m) { return (a % m + m) % m; }

static double anneal(const tg_one_cycle_config *c, double start, double end, double pct) {
  if (c->anneal_linear)
    return (end - start) * pct + start;
  double cos_out = cos(M_PI * pct) + 1;
  return end + (start - end) / 2.0 * cos_out;
}

/* OneCycleLR's lr and momentum at step e for a group of initial lr `initial`. */
static int one_cycle_at(const tg_scheduler *s, double initial, int64_t e, double *lr,
                        double *mom) {
  const tg_one_cycle_config *c = &s->oc;
  if (e > c->total_steps)
    return tg__error("tg_scheduler_step: Tried to step %lld times. The specified number "
                     "of total steps is %lld",
                     (long long)e, (long long)c->total_steps);
  double total = (double)c->total_steps, pct_steps = c->pct_start * total;
  double min_lr = initial / c->final_div_factor;
  /* Phases: end step, start and end lr, start and end momentum. */
  double ph[3][5] = {
      {pct_steps - 1, initial, c->max_lr, c->max_momentum, c->base_momentum},
      {total - 1, c->max_lr, min_lr, c->base_momentum, c->max_momentum},
      {0},
  };
  int n = 2;
  if (c->three_phase) {
    double p1[5] = {2 * pct_steps - 2, c->max_lr, initial, c->base_momentum,
                    c->max_momentum};
    double p2[5] = {total - 1, initial, min_lr, c->max_momentum, c->max_momentum};
    memcpy(ph[1], p1, sizeof p1);
    memcpy(ph[2], p2, sizeof p2);
    n = 3;
  }
  double start_step = 0;
  for (int i = 0; i < n; i++) {
    if ((double)e <= ph[i][0] || i == n - 1) {
      double pct = ((double)e - start_step) / (ph[i][0] - start_step);
      *lr = anneal(c, ph[i][1], ph[i][2], pct);
      *mom = anneal(c, ph[i][3], ph[i][4], pct);
      break;
    }
    start_step = ph[i][0];
  }
  return 0;
}

/* Number of milestones m[0..n) (sorted) at most e: Python's bisect_right. */
static int bisect_right(const int64_t *m, int n, int64_t e) {
  int k = 0;
  while (k < n && m[k] <= e)
    k++;
  return k;
}

/* Group g's next lr from its current one, lr, at s->last_epoch. closed: PyTorch's
 * _get_closed_form_lr (SequentialLR's step(0) at a milestone). */
static double next_lr(const tg_scheduler *s, int g, double lr, bool initial,
                      bool closed) {
  int64_t e = s->last_epoch;
  double base = s->base_lrs[g];
  switch (s->kind) {
  case S_STEP:
    if (closed)
      return base * pow(s->gamma, (double)(e / s->step_size));
    return e == 0 || e % s->step_size != 0 ? lr : lr * s->gamma;
  case S_MULTISTEP: {
    if (closed)
      return base * pow(s->gamma, bisect_right(s->milestones, s->n_milestones, e));
    int count = 0;
    for (int k = 0; k < s->n_milestones; k++)
      count += s->milestones[k] == e;
    return count ? lr * pow(s->gamma, count) : lr;
  }
  case S_LINEAR: {
    double d = s->end_factor - s->start_factor;
    if (closed)
      return base *
             (s->start_factor + d * (double)(e < s->total_iters ? e : s->total_iters) /
                                    (double)s->total_iters);
    if (e == 0)
      return lr * s->start_factor;
    if (initial || e > s->total_iters)
      return lr;
    return lr *
           (1.0 + d / ((double)s->total_iters * s->start_factor + (double)(e - 1) * d));
  }
  case S_COSINE: {
    double t = (double)s->t_max, eta = s->eta_min;
    if (closed)
      return eta + (base - eta) * (1 + cos(M_PI * (double)e / t)) / 2;
    if (initial)
      return lr;
    if (py_mod(e - 1 - s->t_max, 2 * s->t_max) == 0)
      return lr + (base - eta) * (1 - cos(M_PI / t)) / 2;
    return (1 + cos(M_PI * (double)e / t)) / (1 + cos(M_PI * (double)(e - 1) / t)) *
               (lr - eta) +
           eta;
  }
  default:
    return lr;
  }
}

/* PyTorch's _update_lr: one more epoch (or epoch 0 in closed form), new lrs. */
static int update_lr(tg_scheduler *s, bool initial, bool closed) {
  s->last_epoch = closed ? 0 : s->last_epoch + 1;
  for (int g = 0; g < s->n_groups; g++) {
    double lr = tg_optimizer_group_lr(s->opt, g), mom = NAN;
    if (s->kind == S_ONECYCLE) {
      if (one_cycle_at(s, s->base_lrs[g], s->last_epoch, &lr, &mom) < 0)
        return -1;
      if (s->oc.cycle_momentum && tg_optimizer_set_group_momentum(s->opt, g, mom) < 0)
        return -1;
    } else {
      lr = next_lr(s, g, lr, initial, closed);
    }
    if (tg_optimizer_set_group_lr(s->opt, g, lr) < 0)
      return -1;
  }
  return 0;
}

static int sequential_step(tg_scheduler *s) {
  s->last_epoch++;
  int idx = bisect_right(s->milestones, s->n_milestones, s->last_epoch);
  tg_scheduler *c = s->children[idx];
  if (c->kind == S_SEQUENTIAL)
    return sequential_step(c);
  bool at_milestone = idx > 0 && s->milestones[idx - 1] == s->last_epoch;
  return update_lr(c, false, at_milestone);
}

int tg_scheduler_step(tg_scheduler *s) {
  if (!s)
    return tg__error("tg_scheduler_step: argument 's' is NULL");
  if (s->kind == S_PLATEAU)
    return tg__error("tg_scheduler_step: ReduceLROnPlateau steps on a metric: call "
                     "tg_scheduler_step_metric");
  return s->kind == S_SEQUENTIAL ? sequential_step(s) : update_lr(s, false, false);
}

/* Constructs as PyTorch: the first step, then the lr of epoch 0 is set. */
static tg_scheduler *initial_step(tg_scheduler *s) {
  if (s && update_lr(s, true, false) < 0) {
    tg_scheduler_free(s);
    return NULL;
  }
  return s;
}

tg_scheduler *tg_step_lr_new(tg_optimizer *opt, int64_t step_size, double gamma) {
  const char *op = "tg_step_lr_new";
  if (step_size < 1)
    return tg__error("%s: step_size must be positive, got %lld", op,
                     (long long)step_size),
           NULL;
  tg_scheduler *s = sched_new(opt, S_STEP, op);
  if (s) {
    s->step_size = step_size;
    s->gamma = gamma;
  }
  return initial_step(s);
}

static int by_value(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* A sorted copy of m[0..n) into s->milestones. */
static int copy_milestones(tg_scheduler *s, const int64_t *m, int n, bool sort,
                           const char *op) {
  if (n < 0 || (n > 0 && !m))
    return tg__error("%s: %d milestones at %p", op, n, (const void *)m);
  s->milestones = malloc((size_t)(n > 0 ? n : 1) * sizeof *m);
  if (!s->milestones)
    return tg__error("%s: out of memory", op);
  if (n)
    memcpy(s->milestones, m, (size_t)n * sizeof *m);
  s->n_milestones = n;
  if (sort)
    qsort(s->milestones, (size_t)n, sizeof *m, by_value);
  return 0;
}

tg_scheduler *tg_multistep_lr_new(tg_optimizer *opt, const int64_t *milestones, int n,
                                  double gamma) {
  const char *op = "tg_multistep_lr_new";
  tg_scheduler *s = sched_new(opt, S_MULTISTEP, op);
  if (s && copy_milestones(s, milestones, n, true, op) < 0) {
    tg_scheduler_free(s);
    return NULL;
  }
  if (s)
    s->gamma = gamma;
  return initial_step(s);
}

tg_scheduler *tg_linear_lr_new(tg_optimizer *opt, double start_factor, double end_factor,
                               int64_t total_iters) {
  const char *op = "tg_linear_lr_new";
  if (!(start_factor > 0 && start_factor <= 1))
    return tg__error("%s: Starting multiplicative factor expected to be greater than 0 "
                     "and less or equal to 1, got %g",
                     op, start_factor),
           NULL;
  if (!(end_factor >= 0 && end_factor <= 1))
    return tg__error("%s: Ending multiplicative factor expected to be between 0 and 1, "
                     "got %g",
                     op, end_factor),
           NULL;
  if (total_iters < 1)
    return tg__error("%s: total_iters must be positive, got %lld", op,
                     (long long)total_iters),
           NULL;
  tg_scheduler *s = sched_new(opt, S_LINEAR, op);
  if (s) {
    s->start_factor = start_factor;
    s->end_factor = end_factor;
    s->total_iters = total_iters;
  }
  return initial_step(s);
}

tg_scheduler *tg_cosine_lr_new(tg_optimizer *opt, int64_t t_max, double eta_min) {
  const char *op = "tg_cosine_lr_new";
  if (t_max < 1)
    return tg__error("%s: T_max must be positive, got %lld", op, (long long)t_max), NULL;
  tg_scheduler *s = sched_new(opt, S_COSINE, op);
  if (s) {
    s->t_max = t_max;
    s->eta_min = eta_min;
  }
  return initial_step(s);
}

/* SequentialLR's recursive_undo: children built before it took a step each. */
static void undo(tg_scheduler *s) {
  if (s->kind == S_SEQUENTIAL)
    for (int i = 0; i < s->n_children; i++)
      undo(s->children[i]);
  else
    s->last_epoch--;
}

tg_scheduler *tg_sequential_lr_new(tg_optimizer *opt, tg_scheduler *const *schedulers,
                                   int n, const int64_t *milestones) {
  const char *op = "tg_sequential_lr_new";
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++)
    if (!schedulers[i])
      rc = tg_last_error()[0] ? -1
                              : tg__error("%s: scheduler %d is NULL (its constructor "
                                          "probably failed)",
                                          op, i);
    else if (schedulers[i]->opt != opt)
      rc = tg__error("%s: expects all schedulers to belong to the same optimizer, but "
                     "scheduler %d does not",
                     op, i);
    else if (schedulers[i]->kind == S_PLATEAU)
      rc = tg__error("%s: does not support ReduceLROnPlateau (scheduler %d), which steps "
                     "on a metric",
                     op, i);
  if (rc == 0 && n < 1)
    rc = tg__error("%s: expects at least one scheduler, but got none", op);
  for (int i = 1; rc == 0 && milestones && i < n - 1; i++)
    if (milestones[i] < milestones[i - 1])
      rc = tg__error("%s: milestones must be increasing", op);
  tg_scheduler *s = rc == 0 ? sched_new(opt, S_SEQUENTIAL, op) : NULL;
  if (s && copy_milestones(s, milestones, n - 1, false, op) == 0 &&
      (s->children = malloc((size_t)n * sizeof *s->children))) {
    memcpy(s->children, schedulers, (size_t)n * sizeof *s->children);
    s->n_children = n;
  } else {
    if (s && !s->children && s->milestones)
      tg__error("%s: out of memory", op);
    tg_scheduler_free(s);
    for (int i = 0; i < n; i++)
      tg_scheduler_free(schedulers[i]);
    return NULL;
  }
  s->last_epoch = 0;
  for (int g = 0; g < s->n_groups; g++)
    rc = rc < 0 ? rc
                : tg_optimizer_set_group_lr(opt, g, *tg__optimizer_initial_lr(opt, g));
  undo(s);
  tg_scheduler *first = s->children[bisect_right(s->milestones, s->n_milestones, 0)];
  if (rc < 0 || (first->kind == S_SEQUENTIAL ? sequential_step(first)
                                             : update_lr(first, true, false)) < 0) {
    tg_scheduler_free(s);
    return NULL;
  }
  return s;
}

tg_one_cycle_config tg_one_cycle_config_default(double max_lr, int64_t total_steps) {
  return (tg_one_cycle_config){max_lr, total_steps, 0.3,  false, true,
                               0.85,   0.95,        25.0, 1e4,   false};
}

tg_scheduler *tg_one_cycle_lr_new(tg_optimizer *opt, tg_one_cycle_config c) {
  const char *op = "tg_one_cycle_lr_new";
  if (c.total_steps < 1)
    return tg__error("%s: Expected positive integer total_steps, but got %lld", op,
                     (long long)c.total_steps),
           NULL;
  if (!(c.pct_start >= 0 && c.pct_start <= 1))
    return tg__error("%s: Expected float between 0 and 1 pct_start, but got %g", op,
                     c.pct_start),
           NULL;
  if (!(c.max_lr >= 0) || !(c.div_factor > 0) || !(c.final_div_factor > 0))
    return tg__error("%s: max_lr (%g) must be >= 0, div_factor (%g) and "
                     "final_div_factor (%g) > 0",
                     op, c.max_lr, c.div_factor, c.final_div_factor),
           NULL;
  for (int g = 0; opt && g < tg_optimizer_num_groups(opt); g++) {
    *tg__optimizer_initial_lr(opt, g) = c.max_lr / c.div_factor;
    if (c.cycle_momentum && tg_optimizer_set_group_momentum(opt, g, c.max_momentum) < 0)
      return NULL;
  }
  tg_scheduler *s = sched_new(opt, S_ONECYCLE, op);
  if (s)
    s->oc = c;
  return initial_step(s);
}

tg_plateau_config tg_plateau_config_default(void) {
  return (tg_plateau_config){false, 0.1, 10, 1e-4, false, 0, 0, 1e-8};
}

tg_scheduler *tg_reduce_lr_on_plateau_new(tg_optimizer *opt, tg_plateau_config c) {
  const char *op = "tg_reduce_lr_on_plateau_new";
  if (!(c.factor < 1.0))
    return tg__error("%s: Factor should be < 1.0, got %g", op, c.factor), NULL;
  if (c.patience < 0 || c.cooldown < 0)
    return tg__error("%s: patience (%lld) and cooldown (%lld) must be >= 0", op,
                     (long long)c.patience, (long long)c.cooldown),
           NULL;
  tg_scheduler *s = sched_new(opt, S_PLATEAU, op);
  if (s) {
    s->pc = c;
    s->last_epoch = 0;
    s->best = c.mode_max ? -INFINITY : INFINITY;
  }
  return s;
}

static bool is_better(const tg_plateau_config *c, double a, double best) {
  if (!c->mode_max)
    return c->threshold_abs ? a < best - c->threshold : a < best * (1.0 - c->threshold);
  return c->threshold_abs ? a > best + c->threshold : a > best * (c->threshold + 1.0);
}

int tg_scheduler_step_metric(tg_scheduler *s, double metric) {
  if (!s)
    return tg__error("tg_scheduler_step_metric: argument 's' is NULL");
  if (s->kind != S_PLATEAU)
    return tg__error("tg_scheduler_step_metric: only ReduceLROnPlateau steps on a "
                     "metric; call tg_scheduler_step");
  s->last_epoch++;
  if (is_better(&s->pc, metric, s->best)) {
    s->best = metric;
    s->num_bad_epochs = 0;
  } else {
    s->num_bad_epochs++;
  }
  if (s->cooldown_counter > 0) {
    s->cooldown_counter--;
    s->num_bad_epochs = 0; /* bad epochs in cooldown do not count */
  }
  if (s->num_bad_epochs > s->pc.patience) {
    for (int g = 0; g < s->n_groups; g++) {
      double old_lr = tg_optimizer_group_lr(s->opt, g);
      double new_lr = fmax(old_lr * s->pc.factor, s->pc.min_lr);
      if (old_lr - new_lr > s->pc.eps && tg_optimizer_set_group_lr(s->opt, g, new_lr) < 0)
        return -1;
    }
    s->cooldown_counter = s->pc.cooldown;
    s->num_bad_epochs = 0;
  }
  return 0;
}

int64_t tg_scheduler_last_epoch(const tg_scheduler *s) { return s ? s->last_epoch : -1; }

/* ------------------------------------------------------------ state dict -- */

static int put_scalar(tg_tensor_dict *d, const char *prefix, const char *name, double v,
                      tg_dtype dtype) {
  const char *op = "tg_scheduler_state_dict";
  char *full = tg__concat(prefix, name, op);
  tg_tensor *t = full ? tg__unscope(tg_scalar(v, dtype, TG_CPU)) : NULL;
  int rc = t ? tg__dict_take(d, full, t, op) : -1;
  free(full);
  return rc;
}

int tg_scheduler_state_dict(const tg_scheduler *s, tg_tensor_dict *d,
                            const char *prefix) {
  const char *op = "tg_scheduler_state_dict";
  if (!s || !d)
    return tg__error("%s: argument '%s' is NULL", op, s ? "d" : "s");
  int rc = put_scalar(d, prefix, "kind", s->kind, TG_I64);
  if (rc == 0)
    rc = put_scalar(d, prefix, "last_epoch", (double)s->last_epoch, TG_I64);
  if (rc == 0 && s->kind == S_PLATEAU) {
    rc = put_scalar(d, prefix, "best", s->best, TG_F64);
    if (rc == 0)
      rc = put_scalar(d, prefix, "num_bad_epochs", (double)s->num_bad_epochs, TG_I64);
    if (rc == 0)
      rc = put_scalar(d, prefix, "cooldown_counter", (double)s->cooldown_counter, TG_I64);
  }
  char *name = rc == 0 ? tg__concat(prefix, "base_lrs", op) : NULL;
  tg_tensor *b = name ? tg__unscope(tg_tensor_from_data(
                            s->base_lrs, TG_SHAPE(s->n_groups), TG_F64, TG_CPU))
                      : NULL;
  rc = b ? tg__dict_take(d, name, b, op) : -1;
  free(name);
  for (int i = 0; i < s->n_children && rc == 0; i++) {
    char sub[32];
    snprintf(sub, sizeof sub, "%d.", i);
    char *p = tg__concat(prefix, sub, op);
    rc = p ? tg_scheduler_state_dict(s->children[i], d, p) : -1;
    free(p);
  }
  return rc;
}

/* The value of "<prefix><name>", a one-element tensor; -1 with an error otherwise. */
static int get_scalar(const tg_tensor_dict *d, const char *prefix, const char *name,
                      double *v) {
  const char *op = "tg_scheduler_load_state_dict";
  char *full = tg__concat(prefix, name, op);
  if (!full)
    return -1;
  tg__dict_entry *e = tg__dict_find(d, full);
  int rc = 0;
  if (!e || e->t->numel != 1)
    rc = tg__error("%s: the state dict %s '%s'", op, e ? "has no scalar" : "lacks", full);
  else
    *v = tg_item(e->t);
  free(full);
  return rc;
}

/* Reads s's state (and its children's) into copies first, so that a failure leaves s
 * unchanged: check fills nothing, then the second pass writes. */
static int load_state(tg_scheduler *s, const tg_tensor_dict *d, const char *prefix,
                      bool write) {
  const char *op = "tg_scheduler_load_state_dict";
  double kind = -1, epoch = 0, best = 0, bad = 0, cool = 0;
  if (get_scalar(d, prefix, "kind", &kind) < 0 ||
      get_scalar(d, prefix, "last_epoch", &epoch) < 0)
    return -1;
  if (kind != s->kind)
    return tg__error("%s: the state dict under '%s' is of another kind of scheduler", op,
                     prefix ? prefix : "");
  if (s->kind == S_PLATEAU && (get_scalar(d, prefix, "best", &best) < 0 ||
                               get_scalar(d, prefix, "num_bad_epochs", &bad) < 0 ||
                               get_scalar(d, prefix, "cooldown_counter", &cool) < 0))
    return -1;
  char *name = tg__concat(prefix, "base_lrs", op);
  tg__dict_entry *e = name ? tg__dict_find(d, name) : NULL;
  int rc = 0;
  if (name && (!e || e->t->dtype != TG_F64 || e->t->numel != s->n_groups))
    rc = tg__error("%s: %s must be float64 [%d], one lr per parameter group", op, name,
                   s->n_groups);
  free(name);
  if (!e || rc < 0)
    return -1;
  for (int i = 0; i < s->n_children && rc == 0; i++) {
    char sub[32];
    snprintf(sub, sizeof sub, "%d.", i);
    char *p = tg__concat(prefix, sub, op);
    rc = p ? load_state(s->children[i], d, p, write) : -1;
    free(p);
  }
  if (rc == 0 && write) {
    s->last_epoch = (int64_t)epoch;
    s->best = best;
    s->num_bad_epochs = (int64_t)bad;
    s->cooldown_counter = (int64_t)cool;
    memcpy(s->base_lrs, tg__data(e->t), (size_t)s->n_groups * sizeof *s->base_lrs);
  }
  return rc;
}

int tg_scheduler_load_state_dict(tg_scheduler *s, const tg_tensor_dict *d,
                                 const char *prefix) {
  if (!s || !d)
    return tg__error("tg_scheduler_load_state_dict: argument '%s' is NULL",
                     s ? "d" : "s");
  if (load_state(s, d, prefix, false) < 0)
    return -1;
  return load_state(s, d, prefix, true);
}
