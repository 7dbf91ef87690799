/* The optimizers' element updates written once for an element type T; nn/optim.h
 * includes this file for float and double, OPT(name) naming each instance. Each
 * coefficient is rounded to T where it is used, and the arithmetic is T's. */

/* torch.optim.SGD on one element w with gradient g and momentum buffer b (NULL
 * without momentum):
 *   d = g + wd*w;  b = d (fresh buffer) or momentum*b + (1-dampening)*d;
 *   d = nesterov ? d + momentum*b : b;  w -= lr*d. */
static inline TG_HOST_DEVICE void OPT(tg__sgd_elem)(const tg__sgd_coefs *c, T *w, T g,
                                                    T *b) {
  const T wd = (T)c->weight_decay, mom = (T)c->momentum;
  T d = g;
  if (wd != 0)
    d += wd * *w;
  if (b) {
    *b = c->fresh ? d : mom * *b + (T)c->keep * d;
    d = c->nesterov ? d + mom * *b : *b;
  }
  *w -= (T)c->lr * d;
}

/* torch.optim.Adam / AdamW on one element w with gradient g and moments m, v:
 *   Adam: g += wd*w;  AdamW: w *= 1 - lr*wd;
 *   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
 *   w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). */
static inline TG_HOST_DEVICE void OPT(tg__adam_elem)(const tg__adam_coefs *c, T *w, T g,
                                                     T *m, T *v) {
  const T gi = g + (T)c->l2 * *w;
  *w *= (T)c->decay;
  *m = (T)c->beta1 * *m + (T)c->a1 * gi;
  *v = (T)c->beta2 * *v + (T)c->a2 * gi * gi;
  const T denom = (T)sqrt(*v) / (T)c->bc2_sqrt + (T)c->eps;
  *w -= (T)c->step_size * *m / denom;
}
