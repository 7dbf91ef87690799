/* The tape: nodes recorded by ops, reverse-topological backward, no-grad, anomaly
 * mode. It knows nothing about any particular op. */
#include "graph/internal.h"
#include "runtime/cuda.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local int no_grad_depth;
static _Thread_local bool anomaly;
static atomic_llong next_seq;

void tg_no_grad_begin(void) { no_grad_depth++; }
void tg_no_grad_end(void) {
  if (no_grad_depth > 0)
    no_grad_depth--;
}
bool tg_is_grad_enabled(void) { return no_grad_depth == 0; }
void tg_set_detect_anomaly(bool enabled) { anomaly = enabled; }
bool tg_is_anomaly_enabled(void) { return anomaly; }

/* -------------------------------------------------------------- leaves -- */

int tg_set_requires_grad(tg_tensor *t, bool requires_grad) {
  if (!tg__nonnull(t, "tg_set_requires_grad", "t"))
    return -1;
  if (t->grad_fn)
    return tg__error("tg_set_requires_grad: you can only change requires_grad flags of "
                     "leaf variables (this tensor was produced by %s); use tg_detach "
                     "first",
                     t->grad_fn->op);
  if (requires_grad && !tg__is_float(t->dtype))
    return tg__error("tg_set_requires_grad: only tensors of floating point dtype can "
                     "require gradients, got %s",
                     tg_dtype_name(t->dtype));
  t->requires_grad = requires_grad;
  return 0;
}

bool tg_requires_grad(const tg_tensor *t) { return t && t->requires_grad; }

tg_tensor *tg_grad(const tg_tensor *t) { return t ? t->grad : NULL; }

void tg_zero_grad(tg_tensor *t) {
  if (!t)
    return;
  tg__release(t->grad);
  t->grad = NULL;
}

tg_tensor *tg_detach(const tg_tensor *t) {
  if (!tg__nonnull(t, "tg_detach", "t"))
    return NULL;
  return tg__alias(t, t->shape, t->ndim);
}

/* --------------------------------------------------------------- nodes -- */

bool tg__should_record(int n, const tg_tensor *const *inputs) {
  if (no_grad_depth)
    return false;
  for (int i = 0; i < n; i++)
    if (inputs[i] && inputs[i]->requires_grad)
      return true;
  return false;
}

/* Drops a node's reference to t (an input or saved tensor). */
static void tape_release(tg_tensor *t) {
  if (!t)
    return;
  t->tape_refs--;
  tg__release(t);
}

_Static_assert(sizeof(tg_node) <= TG_SMALL_BYTES, "a node fits a small block");

static void ctx_free(tg_node *n) {
  if (n->ctx != n->inline_ctx)
    free(n->ctx);
  n->ctx = NULL;
}

static void node_release_saved(tg_node *n) {
  for (int i = 0; i < n->n_inputs; i++) {
    tape_release(n->inputs[i]);
    n->inputs[i] = NULL;
  }
  for (int i = 0; i < n->n_saved; i++) {
    tape_release(n->saved[i]);
    n->saved[i] = NULL;
  }
  ctx_free(n);
  n->released = true;
}

void tg__node_unref(tg_node *n) {
  if (!n || --n->refcount > 0)
    return;
  node_release_saved(n);
  if (n->inputs != n->inline_inputs)
    free(n->inputs);
  tg__small_free(n);
}

/* The first non-finite element of a device tensor (*bad = -1 when none). */
static int cuda_first_nonfinite(const tg_tensor *t, int64_t *bad, double *value) {
  if (tg__cuda_first_nonfinite(tg__data(t), t->dtype, t->numel, t->device.index, bad) < 0)
    return -1;
  union {
    float f;
    double d;
  } v;
  const size_t es = tg_dtype_size(t->dtype);
  if (*bad >= 0 && tg__cuda_memcpy(&v, TG_CPU, (char *)tg__data(t) + (size_t)*bad * es,
                                   t->device, es) < 0)
    return -1;
  *value = t->dtype == TG_F32 ? v.f : v.d;
  return 0;
}

int tg__check_finite(const char *op, int64_t seq, const char *what, const tg_tensor *t) {
  if (!t || !tg__is_float(t->dtype))
    return 0;
  int64_t bad = -1;
  double value = 0;
  if (tg__on_cuda(t) && cuda_first_nonfinite(t, &bad, &value) < 0)
    return -1;
  const int64_t host_n = tg__on_cuda(t) ? 0 : t->numel;
  TG_DISPATCH_FLOAT(t->dtype, T, {
    const T *p = tg__data(t);
    for (int64_t i = 0; i < host_n && bad < 0; i++)
      if (!isfinite(p[i]))
        bad = i;
  });
  if (bad < 0)
    return 0;
  char buf[TG_SHAPE_STR_LEN];
  return tg__error("anomaly: %s produced %s in its %s (element %lld of shape %s) at "
                   "tape position %lld",
                   op, isnan(host_n ? tg__get(t, bad) : value) ? "NaN" : "Inf", what,
                   (long long)bad, tg_shape_str(t, buf, sizeof buf), (long long)seq);
}

tg_node *tg__record(const char *op, tg_tensor *out, int n_inputs,
                    const tg_tensor *const *inputs, tg_backward_fn backward) {
  int64_t seq = atomic_fetch_add(&next_seq, 1);
  if (anomaly && tg__check_finite(op, seq, "output", out) < 0)
    return NULL;
  tg_node *n = tg__small_alloc();
  if (!n)
    goto oom;
  memset(n, 0, sizeof *n);
  n->inputs = n->inline_inputs;
  n->in_versions = n->inline_versions;
  if (n_inputs > TG_NODE_INLINE_INPUTS) {
    /* Inputs and their versions in one block (pointers and int64 align alike). */
    n->inputs = calloc((size_t)n_inputs, sizeof *n->inputs + sizeof(int64_t));
    if (!n->inputs) {
      tg__small_free(n);
      goto oom;
    }
    n->in_versions = (int64_t *)(n->inputs + n_inputs);
  }
  n->refcount = 1;
  n->op = op;
  n->seq = seq;
  n->backward = backward;
  n->n_inputs = n_inputs;
  tg_tensor **ins = n->inputs;
  for (int i = 0; i < n_inputs; i++)
    if ((ins[i] = tg_tensor_retain((tg_tensor *)inputs[i]))) {
      ins[i]->tape_refs++;
      n->in_versions[i] = ins[i]->storage->version;
    }
  n->output = out;
  n->out_version = out->storage->version;
  if (out->grad_fn)
    tg__node_unref(out->grad_fn);
  out->grad_fn = n;
  out->requires_grad = true;
  return n;
oom:
  tg__error("%s: out of memory while recording the tape", op);
  return NULL;
}

int tg__save(tg_node *node, const tg_tensor *t) {
  int i = node->n_saved++;
  node->saved[i] = tg_tensor_retain((tg_tensor *)t);
  if (t) {
    node->saved[i]->tape_refs++;
    node->saved_versions[i] = t->storage->version;
  }
  return i;
}

void *tg__ctx(tg_node *node, size_t bytes) {
  ctx_free(node);
  if (bytes <= sizeof node->inline_ctx) {
    memset(node->inline_ctx, 0, bytes);
    return node->ctx = node->inline_ctx;
  }
  return node->ctx = calloc(1, bytes);
}

tg_tensor *tg__finish(const char *op, tg_tensor *out, int n_inputs,
                      const tg_tensor *const *inputs, tg_backward_fn backward,
                      tg_node **node_out) {
  if (node_out)
    *node_out = NULL;
  if (!out)
    return NULL;
  if (!tg__should_record(n_inputs, inputs))
    return out;
  tg_node *n = tg__record(op, out, n_inputs, inputs, backward);
  if (!n) {
    tg_tensor_free(out);
    return NULL;
  }
  if (node_out)
    *node_out = n;
  return out;
}

/* ------------------------------------------------------------ backward -- */

/* PyTorch's message for t, which node n read as `what`, written in place since it
 * was recorded at `version`. Returns -1. */
static int version_error(const tg_node *n, const tg_tensor *t, int64_t version,
                         const char *what) {
  char shape[TG_SHAPE_STR_LEN];
  return tg__error("tg_backward: one of the variables needed for gradient computation "
                   "has been modified by an inplace operation: [%s %s], %s %s (tape "
                   "position %lld), is at version %lld; expected version %lld instead. "
                   "Hint: in-place writes (tg_fill_, tg_copy_, an optimizer step, "
                   "tg_varstore_load) between the forward and tg_backward change values "
                   "the backward reads; make them after tg_backward, or on a tg_clone",
                   tg_dtype_name(t->dtype), tg_shape_str(t, shape, sizeof shape), what,
                   n->op, (long long)n->seq, (long long)t->storage->version,
                   (long long)version);
}

static bool changed(const tg_tensor *t, int64_t version) {
  return t && t->storage->version != version;
}

/* The tape checks every input, saved tensor and output of a node before its backward
 * reads them: backward functions read their inputs freely, so this is a superset of
 * what PyTorch checks (it also refuses a change to an input whose value the backward
 * does not need, such as an operand of tg_add). */
static int check_versions(const tg_node *n) {
  char what[32];
  if (changed(n->output, n->out_version))
    return version_error(n, n->output, n->out_version, "the output of");
  for (int i = 0; i < n->n_inputs; i++)
    if (changed(n->inputs[i], n->in_versions[i])) {
      snprintf(what, sizeof what, "input %d of", i);
      return version_error(n, n->inputs[i], n->in_versions[i], what);
    }
  for (int i = 0; i < n->n_saved; i++)
    if (changed(n->saved[i], n->saved_versions[i]))
      return version_error(n, n->saved[i], n->saved_versions[i], "a tensor saved by");
  return 0;
}

static bool exclusive(const tg_tensor *t) {
  return t->refcount == 1 && t->storage->refcount == 1 && !t->grad_fn && !t->scope;
}

/* *slot += g, taking ownership of the reference g. Never writes into a tensor that
 * anything else may see. */
static int accumulate(tg_tensor **slot, tg_tensor *g, bool must_own) {
  if (!*slot) {
    if (must_own && !exclusive(g)) {
      tg_tensor *c = tg_clone(g);
      tg__release(g);
      if (!c)
        return -1;
      g = tg__unscope(c);
    }
    *slot = g;
    return 0;
  }
  if (exclusive(*slot)) {
    int rc = tg__axpy_(*slot, 1.0, g);
    tg__release(g);
    return rc;
  }
  tg_tensor *sum = tg_add(*slot, g);
  tg__release(g);
  if (!sum)
    return -1;
  tg__release(*slot);
  *slot = tg__unscope(sum);
  return 0;
}

typedef struct {
  tg_node **items;
  int64_t len, cap;
} node_list;

static int list_push(node_list *l, tg_node *n) {
  if (l->len == l->cap) {
    int64_t cap = l->cap ? l->cap * 2 : 64;
    tg_node **items = realloc(l->items, (size_t)cap * sizeof *items);
    if (!items)
      return tg__error("tg_backward: out of memory");
    l->items = items;
    l->cap = cap;
  }
  l->items[l->len++] = n;
  return 0;
}

static int by_seq_desc(const void *a, const void *b) {
  int64_t x = (*(tg_node *const *)a)->seq, y = (*(tg_node *const *)b)->seq;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* Collects every node reachable from root (iterative DFS; each node once). Each node
 * collected is retained until backward ends, so releasing inputs cannot free it. */
static int collect(tg_node *root, node_list *out) {
  static atomic_llong passes;
  int64_t pass = atomic_fetch_add(&passes, 1) + 1;
  root->visit = pass;
  node_list stack = {0};
  int rc = list_push(&stack, root);
  root->refcount++;
  if (rc == 0)
    rc = list_push(out, root);
  while (rc == 0 && stack.len) {
    tg_node *n = stack.items[--stack.len];
    if (n->released) {
      rc = tg__error("tg_backward: Trying to backward through the graph a second time "
                     "(or directly access saved tensors after they have already been "
                     "freed). Saved intermediate values of the graph are freed when "
                     "you call tg_backward(). Use tg_backward_ex(..., retain_graph = "
                     "true) if you need to backward through the graph a second time "
                     "(failed at %s, tape position %lld).",
                     n->op, (long long)n->seq);
      break;
    }
    for (int i = 0; i < n->n_inputs && rc == 0; i++) {
      tg_tensor *in = n->inputs[i];
      if (!in || !in->requires_grad || !in->grad_fn || in->grad_fn->visit == pass)
        continue;
      tg_node *p = in->grad_fn;
      p->visit = pass;
      p->refcount++;
      rc = list_push(out, p);
      if (rc == 0)
        rc = list_push(&stack, p);
    }
  }
  free(stack.items);
  return rc;
}

int tg_backward_ex(tg_tensor *t, const tg_tensor *grad_output, bool retain_graph) {
  if (!tg__nonnull(t, "tg_backward", "tensor"))
    return -1;
  if (!t->requires_grad)
    return tg__error("tg_backward: element 0 of tensors does not require grad and does "
                     "not have a grad_fn");
  tg_tensor *seed;
  if (grad_output) {
    bool same = grad_output->ndim == t->ndim && grad_output->dtype == t->dtype;
    for (int i = 0; same && i < t->ndim; i++)
      same = grad_output->shape[i] == t->shape[i];
    if (!same) {
      char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
      return tg__error("tg_backward: Mismatch in shape: grad_output has a shape of %s "
                       "(%s) and output has a shape of %s (%s)",
                       tg_shape_str(grad_output, a, sizeof a),
                       tg_dtype_name(grad_output->dtype), tg_shape_str(t, b, sizeof b),
                       tg_dtype_name(t->dtype));
    }
    /* An alias: backward functions never write into the gradient they are given, and
     * accumulation copies before writing into anything shared. */
    seed = tg__alias(grad_output, t->shape, t->ndim);
  } else {
    if (t->numel != 1) {
      char a[TG_SHAPE_STR_LEN];
      return tg__error("tg_backward: grad can be implicitly created only for scalar "
                       "outputs, got shape %s; use tg_backward_ex with a grad_output",
                       tg_shape_str(t, a, sizeof a));
    }
    seed = tg_ones(t->shape, t->ndim, t->dtype, t->device);
  }
  if (!seed)
    return -1;
  tg__unscope(seed);

  if (!t->grad_fn) /* a leaf: its gradient is the seed */
    return accumulate(&t->grad, seed, true);

  node_list nodes = {0};
  int rc = collect(t->grad_fn, &nodes);
  if (rc == 0) {
    qsort(nodes.items, (size_t)nodes.len, sizeof *nodes.items, by_seq_desc);
    t->bwd_grad = seed;
    seed = NULL;
  }
  tg_no_grad_begin();
  for (int64_t k = 0; rc == 0 && k < nodes.len; k++) {
    tg_node *n = nodes.items[k];
    tg_tensor *g = n->output->bwd_grad;
    if (!g)
      continue; /* this node's output does not reach the root */
    n->output->bwd_grad = NULL;
    tg_tensor *grads[64];
    tg_tensor **gi = n->n_inputs <= 64 ? grads : calloc((size_t)n->n_inputs, sizeof *gi);
    if (!gi) {
      tg__release(g);
      rc = tg__error("tg_backward: out of memory");
      break;
    }
    memset(gi, 0, (size_t)(n->n_inputs <= 64 ? 64 : n->n_inputs) * sizeof *gi);
    tg_scope_begin();
    rc = check_versions(n);
    tg__backward_enter(n->op, n->seq);
    if (rc == 0)
      rc = n->backward(n, g, gi);
    tg__backward_leave();
    for (int i = 0; i < n->n_inputs; i++)
      tg_tensor_retain(gi[i]);
    tg_scope_end();
    tg__release(g);
    for (int i = 0; i < n->n_inputs; i++) {
      tg_tensor *in = n->inputs[i];
      if (!gi[i])
        continue;
      if (rc == 0 && (!in || !in->requires_grad)) {
        tg__release(gi[i]);
        continue;
      }
      if (rc == 0 && gi[i]->numel != in->numel) {
        char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
        rc = tg__error("tg_backward: internal error: %s returned a gradient of shape %s "
                       "for an input of shape %s",
                       n->op, tg_shape_str(gi[i], a, sizeof a),
                       tg_shape_str(in, b, sizeof b));
      }
      if (rc == 0 && anomaly)
        rc = tg__check_finite(n->op, n->seq, "backward (gradient of an input)", gi[i]);
      if (rc != 0) {
        tg__release(gi[i]);
        continue;
      }
      rc = in->grad_fn ? accumulate(&in->bwd_grad, gi[i], false)
                       : accumulate(&in->grad, gi[i], true);
    }
    if (gi != grads)
      free(gi);
  }
  tg_no_grad_end();
  for (int64_t k = 0; k < nodes.len; k++) {
    tg_node *n = nodes.items[k];
    if (n->output && n->output->bwd_grad) {
      tg__release(n->output->bwd_grad);
      n->output->bwd_grad = NULL;
    }
  }
  if (!retain_graph)
    for (int64_t k = 0; k < nodes.len; k++)
      node_release_saved(nodes.items[k]);
  for (int64_t k = 0; k < nodes.len; k++)
    tg__node_unref(nodes.items[k]);
  free(nodes.items);
  tg__release(seed);
  return rc;
}

int tg_backward(tg_tensor *loss) { return tg_backward_ex(loss, NULL, false); }
