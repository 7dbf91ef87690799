/* Internal API of nn/: the var store's layout, module plumbing and init helpers. */
#ifndef TG_NN_INTERNAL_H
#define TG_NN_INTERNAL_H

#include "graph/internal.h"

typedef struct {
  char *name;     /* full name, as in a PyTorch state_dict: "enc.conv1.weight" */
  tg_tensor *t;   /* owned reference, out of every scope */
  bool trainable; /* a parameter (tg_path_var); false for buffers (running stats) */
} tg__var;

struct tg_path {
  tg_varstore *vs;
  char *prefix; /* "" for the root */
};

typedef tg_tensor *(*tg__module_forward_fn)(tg_module *m, const tg_tensor *x, bool train);

/* Every layer embeds this as its first member. */
struct tg_module {
  const char *kind; /* static: "linear", "sequential"... */
  const char *name; /* the path prefix it was created on (owned by its path) */
  tg__module_forward_fn forward;
  void (*release)(tg_module *m); /* frees what the layer allocated besides itself */
};

/* ---- name indexes (name_index.c): names -> positions in an owner's array ---- */
/* The name of item i of owner (a var store's variable or path...). */
typedef const char *(*tg__name_at_fn)(const void *owner, int i);
/* Open addressing: slots hold positions, -1 when empty; cap is 0 or a power of two,
 * at most half full. Zero-initialise with `at` set. */
typedef struct {
  int *slots;
  int cap;
  tg__name_at_fn at;
} tg__name_index;
/* Position of the item called name, or -1. */
int tg__name_find(const tg__name_index *ix, const void *owner, const char *name);
/* Room for item n (items 0..n-1 indexed), so that tg__name_add cannot fail. */
int tg__name_reserve(tg__name_index *ix, const void *owner, int n, const char *op);
/* Indexes item i (its name must not be indexed yet). */
void tg__name_add(tg__name_index *ix, const void *owner, int i);
/* Indexes items 0..n-1 afresh, after items were removed (cannot fail). */
void tg__name_refill(tg__name_index *ix, const void *owner, int n);
void tg__name_index_free(tg__name_index *ix);

struct tg_varstore {
  tg_device device;
  tg_dtype dtype;
  tg__var *vars; /* creation order */
  int n_vars, cap_vars;
  tg__name_index var_index; /* full names -> vars */
  tg_path **paths;
  int n_paths, cap_paths;
  tg__name_index path_index; /* prefixes -> paths */
  tg_module **modules;
  int n_modules, cap_modules;
};

/* Frees the variables created after the first `mark` (a constructor failing half-way
 * leaves the store as it found it). */
void tg__varstore_truncate(tg_varstore *vs, int mark);
/* Index in vs->vars of the variable called name (hashed), or -1. */
int tg__varstore_find(const tg_varstore *vs, const char *name);
/* New variable of an explicit dtype (num_batches_tracked is int64 in PyTorch). */
tg_tensor *tg__path_var_ex(tg_path *path, const char *name, const int64_t *shape,
                           int ndim, tg_init init, tg_dtype dtype, bool trainable);
/* fan_in of a weight shape as PyTorch computes it: shape[1] * prod(shape[2:]). */
int64_t tg__fan_in(const int64_t *shape, int ndim);
/* PyTorch's bias init for conv/linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the
 * weight's fan_in when init is Kaiming uniform; any other init unchanged. */
tg_init tg__bias_init(tg_init init, int64_t weight_fan_in);
/* New tensor (recorded in the current scope) filled by init; `what` names it in
 * error messages of `op`. Random inits draw on the host, then copy to device. */
tg_tensor *tg__init_tensor(const int64_t *shape, int ndim, tg_init init, tg_dtype dtype,
                           tg_device device, const char *what, const char *op);
/* Hands m (malloc'ed, kind/forward set; NULL when that allocation failed) to vs,
 * which frees it with m->release and free(). Returns m, or NULL (m freed). */
tg_module *tg__module_register(tg_varstore *vs, tg_module *m, const char *op);

/* A named tensor in a tg_tensor_dict. */
typedef struct {
  char *name;
  tg_tensor *t;           /* owned reference, out of every scope */
  const char *file_dtype; /* static: the safetensors dtype it was read from, or NULL */
} tg__dict_entry;

struct tg_tensor_dict {
  tg__dict_entry *items; /* insertion order */
  int n, cap;
  int *slots; /* hash index of items by name: 1 + index, 0 empty; n_slots a power of 2 */
  int n_slots;
  char **meta; /* __metadata__: key, value, key, value... in insertion order */
  int n_meta, cap_meta;
};

/* The entry called name, or NULL. */
tg__dict_entry *tg__dict_find(const tg_tensor_dict *d, const char *name);
/* As tg_tensor_dict_set for a tensor that is not in a scope, taking the reference. */
int tg__dict_take(tg_tensor_dict *d, const char *name, tg_tensor *t, const char *op);
/* "<prefix><name>" in a new string, or NULL (out of memory: error set for op). */
char *tg__concat(const char *prefix, const char *name, const char *op);

/* optim.c: group g's initial_lr, which schedulers set once (torch's
 * group.setdefault("initial_lr", lr)); NAN until then. */
double *tg__optimizer_initial_lr(tg_optimizer *opt, int g);

#endif
