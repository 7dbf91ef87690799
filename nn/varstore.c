/* The var store: named variables in creation order, the paths that name them and the
 * modules built on them, all owned by the store. Names join path components with '.',
 * so they read like PyTorch state_dict keys ("enc.conv1.weight"). */
#include "nn/internal.h"

#include <stdlib.h>
#include <string.h>

/* Error for a NULL non-tensor argument, unless an earlier error is pending (so the
 * first failure of a chain stays visible), as tg__nonnull does for tensors. */
static bool nonnull(const void *p, const char *op, const char *arg) {
  if (p)
    return true;
  if (!tg_last_error()[0])
    tg__error("%s: argument '%s' is NULL (an earlier call probably failed)", op, arg);
  return false;
}

/* Makes room for one more element in *items (capacity *cap, *n used). */
static int reserve(void **items, int *cap, int n, size_t elem, const char *op) {
  if (n < *cap)
    return 0;
  int ncap = *cap ? *cap * 2 : 16;
  void *p = realloc(*items, (size_t)ncap * elem);
  if (!p)
    return tg__error("%s: out of memory", op);
  *items = p;
  *cap = ncap;
  return 0;
}

/* A path component: non-empty, without '.' (which separates components), and UTF-8,
 * which safetensors requires of names (checked here so that a store always saves). */
static int check_component(const char *name, const char *op) {
  char q[TG_QUOTE_LEN];
  size_t bad;
  if (!nonnull(name, op, "name"))
    return -1;
  if (!name[0])
    return tg__error("%s: variable and path names must not be empty", op);
  if (strchr(name, '.'))
    return tg__error("%s: name %s must not contain '.', which separates path "
                     "components (use tg_path_sub)",
                     op, tg__quote(name, q, sizeof q));
  if (!tg__valid_utf8((const uint8_t *)name, strlen(name), &bad))
    return tg__error("%s: name %s is not valid UTF-8 (byte %zu), which safetensors "
                     "requires of names",
                     op, tg__quote(name, q, sizeof q), bad);
  return 0;
}

static const char *var_name(const void *vs, int i) {
  return ((const tg_varstore *)vs)->vars[i].name;
}
static const char *path_name(const void *vs, int i) {
  return ((const tg_varstore *)vs)->paths[i]->prefix;
}

static char *join(const char *prefix, const char *name) {
  size_t lp = strlen(prefix), ln = strlen(name);
  char *s = malloc(lp + ln + 2);
  if (!s)
    return NULL;
  if (lp) {
    memcpy(s, prefix, lp);
    s[lp++] = '.';
  }
  memcpy(s + lp, name, ln + 1);
  return s;
}

/* ----------------------------------------------------------- the store -- */

static tg_path *path_new(tg_varstore *vs, const char *prefix, const char *op) {
  if (reserve((void **)&vs->paths, &vs->cap_paths, vs->n_paths, sizeof *vs->paths, op) <
          0 ||
      tg__name_reserve(&vs->path_index, vs, vs->n_paths, op) < 0)
    return NULL;
  tg_path *p = malloc(sizeof *p);
  char *copy = strdup(prefix);
  if (!p || !copy) {
    free(p);
    free(copy);
    tg__error("%s: out of memory", op);
    return NULL;
  }
  p->vs = vs;
  p->prefix = copy;
  vs->paths[vs->n_paths++] = p;
  tg__name_add(&vs->path_index, vs, vs->n_paths - 1);
  return p;
}

tg_varstore *tg_varstore_new(tg_device device) {
  if (device.type != TG_DEVICE_CPU &&
      (device.type != TG_DEVICE_CUDA || device.index < 0 ||
       device.index >= tg_cuda_device_count())) {
    tg__error("tg_varstore_new: device %s:%d is not available",
              device.type == TG_DEVICE_CUDA ? "cuda" : "unknown", device.index);
    return NULL;
  }
  tg_varstore *vs = calloc(1, sizeof *vs);
  if (!vs) {
    tg__error("tg_varstore_new: out of memory");
    return NULL;
  }
  vs->device = device;
  vs->dtype = TG_F32;
  vs->var_index.at = var_name;
  vs->path_index.at = path_name;
  if (!path_new(vs, "", "tg_varstore_new")) { /* the root is paths[0] */
    free(vs->paths);
    tg__name_index_free(&vs->path_index);
    free(vs);
    return NULL;
  }
  return vs;
}

void tg_varstore_free(tg_varstore *vs) {
  if (!vs)
    return;
  for (int i = vs->n_modules - 1; i >= 0; i--) {
    tg_module *m = vs->modules[i];
    if (m->release)
      m->release(m);
    free(m);
  }
  tg__varstore_truncate(vs, 0);
  for (int i = 0; i < vs->n_paths; i++) {
    free(vs->paths[i]->prefix);
    free(vs->paths[i]);
  }
  free(vs->modules);
  free(vs->vars);
  free(vs->paths);
  tg__name_index_free(&vs->var_index);
  tg__name_index_free(&vs->path_index);
  free(vs);
}

void tg__varstore_truncate(tg_varstore *vs, int mark) {
  if (vs->n_vars <= mark)
    return;
  while (vs->n_vars > mark) {
    tg__var *v = &vs->vars[--vs->n_vars];
    free(v->name);
    tg_tensor_free(v->t);
  }
  /* Linear probing has no cheap removal, and failed constructors are rare: the index
   * is refilled in place (it keeps its size, so this cannot fail). */
  tg__name_refill(&vs->var_index, vs, vs->n_vars);
}

tg_device tg_varstore_device(const tg_varstore *vs) { return vs ? vs->device : TG_CPU; }
tg_dtype tg_varstore_dtype(const tg_varstore *vs) { return vs ? vs->dtype : TG_F32; }

tg_path *tg_varstore_root(tg_varstore *vs) {
  if (!nonnull(vs, "tg_varstore_root", "vs"))
    return NULL;
  return vs->paths[0];
}

tg_path *tg_path_sub(tg_path *path, const char *name) {
  if (!nonnull(path, "tg_path_sub", "path") || check_component(name, "tg_path_sub") < 0)
    return NULL;
  tg_varstore *vs = path->vs;
  char *full = join(path->prefix, name);
  if (!full) {
    tg__error("tg_path_sub: out of memory");
    return NULL;
  }
  int i = tg__name_find(&vs->path_index, vs, full);
  tg_path *p = i >= 0 ? vs->paths[i] /* the same name gives the same path */
                      : path_new(vs, full, "tg_path_sub");
  free(full);
  return p;
}

int tg_varstore_len(const tg_varstore *vs) { return vs ? vs->n_vars : 0; }

tg_tensor *tg_varstore_var(const tg_varstore *vs, int i, const char **name) {
  if (name)
    *name = NULL;
  if (!nonnull(vs, "tg_varstore_var", "vs"))
    return NULL;
  if (i < 0 || i >= vs->n_vars) {
    tg__error("tg_varstore_var: index %d is out of range for a var store of %d "
              "variables",
              i, vs->n_vars);
    return NULL;
  }
  if (name)
    *name = vs->vars[i].name;
  return vs->vars[i].t;
}

int tg__varstore_find(const tg_varstore *vs, const char *name) {
  return tg__name_find(&vs->var_index, vs, name);
}

tg_tensor *tg_varstore_get(const tg_varstore *vs, const char *name) {
  if (!vs || !name)
    return NULL;
  int i = tg__varstore_find(vs, name);
  return i < 0 ? NULL : vs->vars[i].t;
}

bool tg_varstore_is_trainable(const tg_varstore *vs, int i) {
  return vs && i >= 0 && i < vs->n_vars && vs->vars[i].trainable;
}

static void set_trainable_requires_grad(tg_varstore *vs, bool on) {
  if (!vs)
    return;
  for (int i = 0; i < vs->n_vars; i++)
    if (vs->vars[i].trainable)
      vs->vars[i].t->requires_grad = on;
}

void tg_varstore_freeze(tg_varstore *vs) { set_trainable_requires_grad(vs, false); }
void tg_varstore_unfreeze(tg_varstore *vs) { set_trainable_requires_grad(vs, true); }

int tg_varstore_set_dtype(tg_varstore *vs, tg_dtype dtype) {
  if (!nonnull(vs, "tg_varstore_set_dtype", "vs"))
    return -1;
  if (!tg__is_float(dtype))
    return tg__error("tg_varstore_set_dtype: a var store holds float32 or float64 "
                     "variables, got %s",
                     tg_dtype_name(dtype));
  /* A graph that holds a variable would run its backward on the converted tensor with
   * buffers sized for the old dtype. */
  for (int i = 0; i < vs->n_vars; i++) {
    const tg_tensor *t = vs->vars[i].t;
    if (t->tape_refs > 0 && tg__is_float(t->dtype) && t->dtype != dtype)
      return tg__error("tg_varstore_set_dtype: variable '%s' is held by a graph that is "
                       "still alive (a forward not yet backpropagated or freed); "
                       "converting it in place would corrupt that graph's backward. Run "
                       "tg_backward or free the graph's result first",
                       vs->vars[i].name);
  }
  /* Convert every variable first, then swap storages, so a failure changes nothing. */
  tg_tensor **conv = calloc((size_t)(vs->n_vars > 0 ? vs->n_vars : 1), sizeof *conv);
  if (!conv)
    return tg__error("tg_varstore_set_dtype: out of memory");
  int rc = 0;
  tg_no_grad_begin();
  for (int i = 0; i < vs->n_vars && rc == 0; i++) {
    tg_tensor *t = vs->vars[i].t;
    if (!tg__is_float(t->dtype) || t->dtype == dtype)
      continue;
    tg_tensor *host =
        t->device.type == TG_DEVICE_CPU ? tg_tensor_retain(t) : tg_tensor_to(t, TG_CPU);
    tg_tensor *c = host ? tg_to_dtype(host, dtype) : NULL;
    conv[i] = c ? tg__unscope(tg_tensor_to(c, t->device)) : NULL;
    tg_tensor_free(c);
    tg_tensor_free(host);
    if (!conv[i])
      rc = -1;
  }
  tg_no_grad_end();
  for (int i = 0; i < vs->n_vars; i++) {
    if (!conv[i])
      continue;
    if (rc == 0) {
      tg_tensor *t = vs->vars[i].t;
      tg_storage *s = t->storage;
      t->storage = conv[i]->storage;
      conv[i]->storage = s;
      t->dtype = dtype;
      tg_zero_grad(t);
    }
    tg_tensor_free(conv[i]);
  }
  free(conv);
  if (rc == 0)
    vs->dtype = dtype;
  return rc;
}

/* ----------------------------------------------------------- variables -- */

tg_tensor *tg__path_var_ex(tg_path *path, const char *name, const int64_t *shape,
                           int ndim, tg_init init, tg_dtype dtype, bool trainable) {
  const char *op = trainable ? "tg_path_var" : "tg_path_var_frozen";
  if (!nonnull(path, op, "path") || check_component(name, op) < 0)
    return NULL;
  tg_varstore *vs = path->vs;
  char *full = join(path->prefix, name);
  if (!full) {
    tg__error("%s: out of memory", op);
    return NULL;
  }
  tg_tensor *t = NULL;
  char q[TG_QUOTE_LEN];
  if (!strcmp(full, "__metadata__")) {
    tg__error("%s: the name '__metadata__' is reserved (safetensors keeps the file's "
              "metadata under it); choose another variable name",
              op);
    goto fail;
  }
  if (tg__name_find(&vs->var_index, vs, full) >= 0) {
    tg__error("%s: a variable named %s already exists in the var store", op,
              tg__quote(full, q, sizeof q));
    goto fail;
  }
  if (reserve((void **)&vs->vars, &vs->cap_vars, vs->n_vars, sizeof *vs->vars, op) < 0 ||
      tg__name_reserve(&vs->var_index, vs, vs->n_vars, op) < 0)
    goto fail;
  t = tg__init_tensor(shape, ndim, init, dtype, vs->device, full, op);
  if (!t)
    goto fail;
  tg__unscope(t);
  t->requires_grad = trainable;
  vs->vars[vs->n_vars++] = (tg__var){full, t, trainable};
  tg__name_add(&vs->var_index, vs, vs->n_vars - 1);
  return t;
fail:
  free(full);
  return NULL;
}

tg_tensor *tg_path_var(tg_path *path, const char *name, const int64_t *shape, int ndim,
                       tg_init init) {
  return tg__path_var_ex(path, name, shape, ndim, init, path ? path->vs->dtype : TG_F32,
                         true);
}

tg_tensor *tg_path_var_frozen(tg_path *path, const char *name, const int64_t *shape,
                              int ndim, tg_init init) {
  return tg__path_var_ex(path, name, shape, ndim, init, path ? path->vs->dtype : TG_F32,
                         false);
}

/* ------------------------------------------------------------- modules -- */

tg_module *tg__module_register(tg_varstore *vs, tg_module *m, const char *op) {
  if (!m) {
    tg__error("%s: out of memory", op);
    return NULL;
  }
  if (reserve((void **)&vs->modules, &vs->cap_modules, vs->n_modules, sizeof *vs->modules,
              op) < 0) {
    if (m->release)
      m->release(m);
    free(m);
    return NULL;
  }
  vs->modules[vs->n_modules++] = m;
  return m;
}
