/* Named tensors and string metadata: what a safetensors file holds, in memory. Var
 * stores, optimizers and schedulers write their state into one (under a prefix each),
 * so a single file can hold all that a resumed run needs. */
#include "nn/internal.h"

#include <stdlib.h>
#include <string.h>

static const char *item_name(const void *d, int i) {
  return ((const tg_tensor_dict *)d)->items[i].name;
}

tg_tensor_dict *tg_tensor_dict_new(void) {
  tg_tensor_dict *d = calloc(1, sizeof *d);
  if (!d)
    tg__error("tg_tensor_dict_new: out of memory");
  else
    d->index.at = item_name;
  return d;
}

void tg_tensor_dict_free(tg_tensor_dict *d) {
  if (!d)
    return;
  for (int i = 0; i < d->n; i++) {
    free(d->items[i].name);
    tg__release(d->items[i].t);
  }
  for (int i = 0; i < 2 * d->n_meta; i++)
    free(d->meta[i]);
  free(d->items);
  free(d->meta);
  tg__name_index_free(&d->index);
  free(d);
}

char *tg__concat(const char *prefix, const char *name, const char *op) {
  size_t lp = prefix ? strlen(prefix) : 0, ln = strlen(name);
  char *s = malloc(lp + ln + 1);
  if (!s) {
    tg__error("%s: out of memory", op);
    return NULL;
  }
  if (lp)
    memcpy(s, prefix, lp);
  memcpy(s + lp, name, ln + 1);
  return s;
}

tg__dict_entry *tg__dict_find(const tg_tensor_dict *d, const char *name) {
  int i = tg__name_find(&d->index, d, name);
  return i < 0 ? NULL : &d->items[i];
}

int tg__dict_take(tg_tensor_dict *d, const char *name, tg_tensor *t, const char *op) {
  tg__dict_entry *e = tg__dict_find(d, name);
  if (e) {
    tg__release(e->t);
    e->t = t;
    e->file_dtype = NULL;
    return 0;
  }
  char *copy = NULL;
  if (d->n == d->cap) {
    int cap = d->cap ? 2 * d->cap : 16;
    tg__dict_entry *p = realloc(d->items, (size_t)cap * sizeof *p);
    if (!p)
      goto oom;
    d->items = p;
    d->cap = cap;
  }
  if (tg__name_reserve(&d->index, d, d->n, op) < 0 || !(copy = strdup(name)))
    goto oom;
  d->items[d->n++] = (tg__dict_entry){copy, t, NULL};
  tg__name_add(&d->index, d, d->n - 1);
  return 0;
oom:
  tg__release(t);
  return tg__error("%s: out of memory", op);
}

int tg_tensor_dict_set(tg_tensor_dict *d, const char *name, tg_tensor *t) {
  const char *op = "tg_tensor_dict_set";
  if (!d || !name)
    return tg__error("%s: argument '%s' is NULL", op, d ? "name" : "d");
  if (!tg__nonnull(t, op, "t"))
    return -1;
  /* A reference of the dict's own beside the caller's, which stays in its scope (the
   * dict drops its reference with tg__release, never touching scopes). */
  return tg__dict_take(d, name, tg_tensor_retain(t), op);
}

tg_tensor *tg_tensor_dict_get(const tg_tensor_dict *d, const char *name) {
  tg__dict_entry *e = d && name ? tg__dict_find(d, name) : NULL;
  return e ? e->t : NULL;
}

int tg_tensor_dict_len(const tg_tensor_dict *d) { return d ? d->n : 0; }

tg_tensor *tg_tensor_dict_at(const tg_tensor_dict *d, int i, const char **name) {
  if (name)
    *name = NULL;
  if (!d || i < 0 || i >= d->n) {
    tg__error("tg_tensor_dict_at: index %d is out of range for a dict of %d tensors", i,
              d ? d->n : 0);
    return NULL;
  }
  if (name)
    *name = d->items[i].name;
  return d->items[i].t;
}

int tg_tensor_dict_set_metadata(tg_tensor_dict *d, const char *key, const char *value) {
  const char *op = "tg_tensor_dict_set_metadata";
  if (!d || !key || !value)
    return tg__error("%s: argument '%s' is NULL", op, !d ? "d" : !key ? "key" : "value");
  char *v = strdup(value);
  if (!v)
    return tg__error("%s: out of memory", op);
  for (int i = 0; i < d->n_meta; i++)
    if (!strcmp(d->meta[2 * i], key)) {
      free(d->meta[2 * i + 1]);
      d->meta[2 * i + 1] = v;
      return 0;
    }
  char *k = strdup(key);
  if (k && d->n_meta == d->cap_meta) {
    int cap = d->cap_meta ? 2 * d->cap_meta : 8;
    char **p = realloc(d->meta, 2 * (size_t)cap * sizeof *p);
    if (p) {
      d->meta = p;
      d->cap_meta = cap;
    }
  }
  if (!k || d->n_meta == d->cap_meta) {
    free(k);
    free(v);
    return tg__error("%s: out of memory", op);
  }
  d->meta[2 * d->n_meta] = k;
  d->meta[2 * d->n_meta + 1] = v;
  d->n_meta++;
  return 0;
}

const char *tg_tensor_dict_metadata(const tg_tensor_dict *d, const char *key) {
  for (int i = 0; d && key && i < d->n_meta; i++)
    if (!strcmp(d->meta[2 * i], key))
      return d->meta[2 * i + 1];
  return NULL;
}

int tg_tensor_dict_metadata_len(const tg_tensor_dict *d) { return d ? d->n_meta : 0; }

const char *tg_tensor_dict_metadata_at(const tg_tensor_dict *d, int i,
                                       const char **value) {
  if (value)
    *value = NULL;
  if (!d || i < 0 || i >= d->n_meta) {
    tg__error("tg_tensor_dict_metadata_at: index %d is out of range for %d entries", i,
              d ? d->n_meta : 0);
    return NULL;
  }
  if (value)
    *value = d->meta[2 * i + 1];
  return d->meta[2 * i];
}

int tg_varstore_state_dict(const tg_varstore *vs, tg_tensor_dict *d, const char *prefix) {
  const char *op = "tg_varstore_state_dict";
  if (!vs || !d)
    return tg__error("%s: argument '%s' is NULL", op, vs ? "d" : "vs");
  for (int i = 0; i < vs->n_vars; i++) {
    char *name = tg__concat(prefix, vs->vars[i].name, op);
    int rc = name ? tg__dict_take(d, name, tg_tensor_retain(vs->vars[i].t), op) : -1;
    free(name);
    if (rc < 0)
      return -1;
  }
  return 0;
}
