/* The tape: nodes recorded by ops, and how ops register their backward. */
#ifndef TG_GRAPH_INTERNAL_H
#define TG_GRAPH_INTERNAL_H

#include "runtime/internal.h"

#define TG_NODE_MAX_SAVED 8
/* Inputs (with their versions) and ctx bytes a node holds in itself; more are on the
 * heap. Nodes are small blocks (tg__small_alloc), so recording costs no malloc. */
#define TG_NODE_INLINE_INPUTS 8
#define TG_NODE_INLINE_CTX 96

/* Computes the gradient of each input i from grad_out (the gradient of the node's
 * output). Sets grad_in[i] to a tensor with inputs[i]'s shape, or leaves it NULL where
 * no gradient is needed: check tg__input_needs_grad(node, i) first.
 * Runs in no-grad mode inside a scope of its own: every tensor it creates (ops,
 * tg__new, tg__alias) belongs to that scope, the engine keeps grad_in[i] and the scope
 * frees the rest. So never retain grad_in[i] or return grad_out itself; return
 * tg__alias(grad_out, ...) to pass it through. Returns 0 or -1 (with an error). */
typedef int (*tg_backward_fn)(tg_node *node, const tg_tensor *grad_out,
                              tg_tensor **grad_in);

struct tg_node {
  int refcount;
  const char *op; /* static string: the op's public name, e.g. "tg_mul" */
  int64_t seq;    /* creation order: a valid topological order */
  tg_backward_fn backward;
  int n_inputs;
  tg_tensor **inputs;   /* owned references; NULL entries for absent inputs */
  int64_t *in_versions; /* storage version of each input when recorded (same block) */
  tg_tensor *output;    /* not owned: alive whenever the node can be reached. Ops whose
                           backward needs their result read it here; saving it with
                           tg__save would make a reference cycle. */
  tg_tensor *saved[TG_NODE_MAX_SAVED]; /* owned; released with the graph */
  int64_t saved_versions[TG_NODE_MAX_SAVED];
  int n_saved;
  int64_t out_version; /* the output's storage version when recorded */
  void *ctx;           /* op-specific plain data, free()d with the graph */
  bool released;       /* saved state dropped after backward */
  int64_t visit;       /* id of the last backward pass that collected it */
  tg_tensor *inline_inputs[TG_NODE_INLINE_INPUTS]; /* inputs when they fit */
  int64_t inline_versions[TG_NODE_INLINE_INPUTS];
  _Alignas(16) unsigned char inline_ctx[TG_NODE_INLINE_CTX]; /* ctx when it fits */
};

/* True when grad mode is on and any non-NULL input requires grad. */
bool tg__should_record(int n, const tg_tensor *const *inputs);
/* Records out as produced by op from inputs (retained; NULL entries allowed). Marks
 * out requires_grad. In anomaly mode checks out for NaN/Inf first: on a bad value
 * it sets the error and returns NULL (the caller then frees out and returns NULL).
 * Returns the node, whose ctx/saved slots the op may fill. */
tg_node *tg__record(const char *op, tg_tensor *out, int n_inputs,
                    const tg_tensor *const *inputs, tg_backward_fn backward);
/* Saves t (retained) for backward; returns its index in node->saved. */
int tg__save(tg_node *node, const tg_tensor *t);
/* Zeroed ctx of `bytes` (16-byte aligned), owned by node. */
void *tg__ctx(tg_node *node, size_t bytes);
static inline bool tg__input_needs_grad(const tg_node *n, int i) {
  return n->inputs[i] != NULL && n->inputs[i]->requires_grad;
}
/* Anomaly mode: -1 with "<op> produced NaN/Inf at tape position <seq> ..." if t has
 * a non-finite value. */
int tg__check_finite(const char *op, int64_t seq, const char *what, const tg_tensor *t);

/* Used by tensor destruction. */
void tg__node_unref(tg_node *n);

/* The typical tail of an op (out already computed). Records when needed and
 * returns out, or frees out and returns NULL when recording failed. */
tg_tensor *tg__finish(const char *op, tg_tensor *out, int n_inputs,
                      const tg_tensor *const *inputs, tg_backward_fn backward,
                      tg_node **node_out);

#endif
