/* Tensors, storage, scopes and creation. */
#include "graph/internal.h"
#include "runtime/cuda.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

/* ------------------------------------------------------------- dtypes -- */

const char *tg_dtype_name(tg_dtype dtype) {
  switch (dtype) {
  case TG_F32:
    return "float32";
  case TG_F64:
    return "float64";
  case TG_I64:
    return "int64";
  }
  return "unknown";
}

size_t tg_dtype_size(tg_dtype dtype) {
  switch (dtype) {
  case TG_F32:
    return 4;
  case TG_F64:
  case TG_I64:
    return 8;
  }
  return 0;
}

static bool valid_dtype(tg_dtype d) { return d == TG_F32 || d == TG_F64 || d == TG_I64; }

/* ------------------------------------------------------------- scopes -- */

/* A scope is a small block (backward opens one per node): its first tensors are
 * recorded in the block itself, more in a heap array. */
struct tg_scope {
  tg_tensor **items;
  int64_t len, cap;
  tg_scope *parent;
  tg_tensor *inline_items[];
};

enum { SCOPE_INLINE = (TG_SMALL_BYTES - sizeof(tg_scope)) / sizeof(tg_tensor *) };

static _Thread_local tg_scope *current_scope;

void tg_scope_begin(void) {
  tg_scope *s = tg__small_alloc();
  if (!s)
    return; /* without a scope, references are simply not recorded */
  *s = (tg_scope){.items = s->inline_items, .cap = SCOPE_INLINE, .parent = current_scope};
  current_scope = s;
}

int tg_scope_end(void) {
  tg_scope *s = current_scope;
  if (!s)
    return tg__error("tg_scope_end: no scope is open (unbalanced tg_scope_begin/end)");
  current_scope = s->parent;
  for (int64_t i = s->len - 1; i >= 0; i--) {
    tg_tensor *t = s->items[i];
    if (!t)
      continue;
    t->scope = NULL;
    tg__release(t);
  }
  if (s->items != s->inline_items)
    free(s->items);
  tg__small_free(s);
  return 0;
}

static void scope_add(tg_tensor *t) {
  tg_scope *s = current_scope;
  if (!s)
    return;
  if (s->len == s->cap) {
    int64_t cap = s->cap * 2;
    bool on_heap = s->items != s->inline_items;
    tg_tensor **items = realloc(on_heap ? s->items : NULL, (size_t)cap * sizeof *items);
    if (!items)
      return; /* the caller keeps the reference; it is only not auto-released */
    if (!on_heap)
      memcpy(items, s->inline_items, sizeof(tg_tensor *) * SCOPE_INLINE);
    s->items = items;
    s->cap = cap;
  }
  t->scope = s;
  t->scope_slot = s->len;
  s->items[s->len++] = t;
}

tg_tensor *tg__unscope(tg_tensor *t) {
  if (t && t->scope) {
    t->scope->items[t->scope_slot] = NULL;
    t->scope = NULL;
  }
  return t;
}

/* ------------------------------------------------------------ storage -- */

/* A new tensor, its storage and, when it is small enough, its data share one small
 * block (runtime/alloc.c): one allocation per op instead of three. A view (tg__alias)
 * takes a block for its tensor alone. A block is freed when the tensor and the storage
 * it holds are both gone: a storage outlives its first tensor while views use it, and
 * tg_varstore_set_dtype swaps storages between tensors, so either may go first. */
typedef struct {
  _Atomic int users; /* 2 for a tensor and its storage, 1 for a view's tensor */
  tg_storage storage;
  tg_tensor tensor;
  _Alignas(64) unsigned char data[]; /* tg__host_alloc's alignment */
} tensor_block;

enum { INLINE_DATA_BYTES = TG_SMALL_BYTES - sizeof(tensor_block) };
_Static_assert(sizeof(tensor_block) + 256 <= TG_SMALL_BYTES,
               "a tensor block holds 256 bytes of data at least");

#define BLOCK_OF(p, member)                                                              \
  ((tensor_block *)(void *)((char *)(p)-offsetof(tensor_block, member)))

static tensor_block *block_new(int users, const char *op) {
  tensor_block *b = tg__small_alloc();
  if (!b) {
    tg__oom(TG_SMALL_BYTES, "cpu", op);
    return NULL;
  }
  memset(b, 0, sizeof *b);
  b->users = users;
  return b;
}

/* Under ASan, the inline data past what bytes needs, rounded up to 64 as
 * tg__host_alloc rounds, is out of bounds: kernels that write past a small tensor's
 * end are caught as they are on a buffer of its own. More than INLINE_DATA_BYTES:
 * all of it (a freed storage's). */
static void poison_data_tail(tensor_block *b, size_t bytes) {
#ifdef __SANITIZE_ADDRESS__
  size_t used = bytes > INLINE_DATA_BYTES ? 0 : bytes ? (bytes + 63) / 64 * 64 : 64;
  ASAN_POISON_MEMORY_REGION(b->data + used, INLINE_DATA_BYTES - used);
#else
  (void)b;
  (void)bytes;
#endif
}

static void block_release(tensor_block *b) {
  if (--b->users > 0)
    return;
#ifdef __SANITIZE_ADDRESS__
  ASAN_UNPOISON_MEMORY_REGION(b->data, INLINE_DATA_BYTES);
#endif
  tg__small_free(b);
}

/* Fills the storage of block b with bytes of data on device. */
static int storage_init(tensor_block *b, size_t bytes, tg_device device, const char *op) {
  tg_storage *s = &b->storage;
  s->refcount = 1;
  s->bytes = bytes;
  s->device = device;
  if (device.type != TG_DEVICE_CPU)
    return (s->data = tg__cuda_malloc(bytes ? bytes : 1, device.index))
               ? 0
               : -1; /* tg__cuda_malloc set the message */
  if (bytes > INLINE_DATA_BYTES)
    return (s->data = tg__host_alloc(bytes)) ? 0 : tg__oom(bytes, "cpu", op);
  s->data = b->data;
  poison_data_tail(b, bytes);
  return 0;
}

static void storage_unref(tg_storage *s) {
  if (!s || --s->refcount > 0)
    return;
  tensor_block *b = BLOCK_OF(s, storage);
  if (s->device.type != TG_DEVICE_CPU)
    tg__cuda_free(s->data, s->bytes, s->device.index);
  else if (s->data != b->data)
    tg__host_free(s->data, s->bytes);
  else /* the block may outlive its storage (a view's tensor in it, see above) */
    poison_data_tail(b, INLINE_DATA_BYTES + 1);
  block_release(b);
}

/* ------------------------------------------------------------ tensors -- */

int tg__check_shape(const int64_t *shape, int ndim, tg_dtype dtype, const char *op) {
  if (ndim < 0 || ndim > TG_MAX_DIMS)
    return tg__error("%s: tensors have at most %d dimensions, got %d", op, TG_MAX_DIMS,
                     ndim);
  if (ndim > 0 && !shape)
    return tg__error("%s: shape is NULL for a %d-dimensional tensor", op, ndim);
  if (!valid_dtype(dtype))
    return tg__error("%s: unknown dtype %d", op, (int)dtype);
  /* The sizes other than 0 must multiply within int64, whatever their order: then every
   * partial product of sizes the kernels form (strides, [outer, r, inner] views) fits,
   * empty tensors' too (PyTorch refuses only some of these: [0, 2^40, 2^40] but not
   * [2^40, 0, 2^40]). */
  int64_t numel = 1, span = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) {
      char buf[TG_SHAPE_STR_LEN];
      return tg__error("%s: negative dimension %lld in shape %s", op, (long long)shape[i],
                       tg__shape_fmt(shape, ndim, buf, sizeof buf));
    }
    if (shape[i] > 0 && __builtin_mul_overflow(span, shape[i], &span)) {
      char buf[TG_SHAPE_STR_LEN];
      return tg__error("%s: shape %s has more elements than int64 can count%s", op,
                       tg__shape_fmt(shape, ndim, buf, sizeof buf),
                       numel ? "" : " (its sizes other than 0 multiply past int64)");
    }
    numel *= shape[i];
  }
  if (numel > (int64_t)(SIZE_MAX / 2 / tg_dtype_size(dtype))) {
    char buf[TG_SHAPE_STR_LEN];
    return tg__error("%s: shape %s of %s is too large to allocate", op,
                     tg__shape_fmt(shape, ndim, buf, sizeof buf), tg_dtype_name(dtype));
  }
  return 0;
}

static int check_device(tg_device d, const char *op) {
  if (d.type == TG_DEVICE_CPU)
    return 0;
  if (d.type != TG_DEVICE_CUDA)
    return tg__error("%s: unknown device type %d", op, (int)d.type);
  int n = tg_cuda_device_count();
  if (d.index < 0 || d.index >= n)
    return tg__error("%s: cuda:%d is not available (%d CUDA device%s found%s)", op,
                     d.index, n, n == 1 ? "" : "s",
                     tg_cuda_is_available() || n ? "" : "; built without CUDA or no GPU");
  return 0;
}

static void tensor_init(tg_tensor *t, const int64_t *shape, int ndim, tg_dtype dtype,
                        tg_device device) {
  t->refcount = 1;
  t->dtype = dtype;
  t->device = device;
  t->ndim = ndim;
  t->numel = 1;
  for (int i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->numel *= shape[i];
  }
}

/* A public function's name names what the user called; internal helpers defer to the
 * op running. */
static bool is_public(const char *fn) {
  return fn && !strncmp(fn, "tg_", 3) && fn[3] != '_';
}

tg_tensor *tg__new_in(const char *op, const char *caller, const int64_t *shape, int ndim,
                      tg_dtype dtype, tg_device device) {
  if (!op && is_public(caller))
    op = caller;
  const char *name = op ? op : tg__running_op() ? tg__running_op() : "tg_empty";
  if (tg__check_shape(shape, ndim, dtype, name) < 0 || check_device(device, name) < 0)
    return NULL;
  tensor_block *b = block_new(2, op);
  if (!b)
    return NULL;
  tg_tensor *t = &b->tensor;
  tensor_init(t, shape, ndim, dtype, device);
  if (storage_init(b, (size_t)t->numel * tg_dtype_size(dtype), device, op) < 0) {
    tg__small_free(b);
    return NULL;
  }
  t->storage = &b->storage;
  scope_add(t);
  return t;
}

tg_tensor *tg__alias(const tg_tensor *src, const int64_t *shape, int ndim) {
  tensor_block *b = block_new(1, NULL);
  if (!b)
    return NULL;
  tg_tensor *t = &b->tensor;
  tensor_init(t, shape, ndim, src->dtype, src->device);
  t->storage = src->storage;
  t->storage->refcount++;
  scope_add(t);
  return t;
}

tg_tensor *tg_tensor_retain(tg_tensor *t) {
  if (t)
    t->refcount++;
  return t;
}

/* Destroying a tensor releases its node, whose inputs may hold the last references
 * to their own tensors, and so on down the graph: recursing would take stack per op
 * (about 100,000 chained ops overflow 8 MiB). So the outermost release of this thread
 * drains a list of the tensors whose count reached zero meanwhile, in a loop; the
 * first entries live here, more on the heap (freed when drained, so exiting threads
 * leak nothing). */
enum { DOOMED_INLINE = 256 };
static _Thread_local struct {
  tg_tensor *inline_items[DOOMED_INLINE];
  tg_tensor **items;
  int64_t len, cap;
  bool draining;
} doomed;

static void tensor_destroy(tg_tensor *t) {
  if (t->scope)
    tg__unscope(t);
  tg__release(t->grad);
  tg__release(t->bwd_grad);
  if (t->grad_fn)
    tg__node_unref(t->grad_fn);
  storage_unref(t->storage);
  block_release(BLOCK_OF(t, tensor));
}

/* Queues t; false when the list cannot grow (the caller then destroys t at once). */
static bool doomed_push(tg_tensor *t) {
  if (!doomed.items) {
    doomed.items = doomed.inline_items;
    doomed.cap = DOOMED_INLINE;
  }
  if (doomed.len == doomed.cap) {
    int64_t cap = 2 * doomed.cap;
    bool on_heap = doomed.items != doomed.inline_items;
    tg_tensor **items =
        realloc(on_heap ? doomed.items : NULL, (size_t)cap * sizeof *items);
    if (!items)
      return false;
    if (!on_heap)
      memcpy(items, doomed.inline_items, sizeof doomed.inline_items);
    doomed.items = items;
    doomed.cap = cap;
  }
  doomed.items[doomed.len++] = t;
  return true;
}

void tg__release(tg_tensor *t) {
  if (!t || --t->refcount > 0)
    return;
  if (doomed.draining) {
    if (!doomed_push(t))
      tensor_destroy(t); /* out of memory: recurse this once */
    return;
  }
  doomed.draining = true;
  tensor_destroy(t);
  while (doomed.len > 0)
    tensor_destroy(doomed.items[--doomed.len]);
  if (doomed.items != doomed.inline_items)
    free(doomed.items);
  doomed.items = NULL;
  doomed.draining = false;
}

void tg_tensor_free(tg_tensor *t) {
  if (!t)
    return;
  tg__unscope(t);
  tg__release(t);
}

int tg_ndim(const tg_tensor *t) { return t ? t->ndim : -1; }
const int64_t *tg_shape(const tg_tensor *t) { return t ? t->shape : NULL; }
int64_t tg_numel(const tg_tensor *t) { return t ? t->numel : -1; }
tg_dtype tg_dtype_of(const tg_tensor *t) { return t ? t->dtype : TG_F32; }
tg_device tg_device_of(const tg_tensor *t) { return t ? t->device : TG_CPU; }

int64_t tg_size(const tg_tensor *t, int dim) {
  if (!tg__nonnull(t, "tg_size", "t"))
    return -1;
  if (t->ndim == 0)
    return tg__error("tg_size: Dimension specified as %d but tensor has no dimensions",
                     dim);
  int d = tg__wrap_dim(dim, t->ndim, "tg_size");
  return d < 0 ? -1 : t->shape[d];
}

void *tg_data(tg_tensor *t) {
  if (!tg__nonnull(t, "tg_data", "t"))
    return NULL;
  if (t->device.type != TG_DEVICE_CPU) {
    tg__error("tg_data: tensor is on cuda:%d; copy it with tg_tensor_copy_to_host",
              t->device.index);
    return NULL;
  }
  return t->storage->data;
}

int64_t tg_tensor_version(const tg_tensor *t) { return t ? t->storage->version : -1; }

void tg_tensor_bump_version(tg_tensor *t) {
  if (t)
    tg__bump_version(t);
}

int tg__wrap_dim(int dim, int ndim, const char *op) {
  int n = ndim > 0 ? ndim : 1;
  if (dim < -n || dim >= n)
    return tg__error("%s: Dimension out of range (expected to be in range of [%d, %d], "
                     "but got %d)",
                     op, -n, n - 1, dim);
  return dim < 0 ? dim + n : dim;
}

int tg__check_same(const char *op, int n, const tg_tensor *const *ts, bool need_float) {
  tg__op_enter(op);
  const tg_tensor *first = NULL;
  for (int i = 0; i < n; i++) {
    const tg_tensor *t = ts[i];
    if (!t)
      continue;
    if (need_float && !tg__is_float(t->dtype))
      return tg__error("%s: expected a floating point tensor (float32 or float64), "
                       "got %s",
                       op, tg_dtype_name(t->dtype));
    if (!first) {
      first = t;
      continue;
    }
    if (t->dtype != first->dtype)
      return tg__error("%s: expected all tensors to have the same dtype, but found "
                       "%s and %s",
                       op, tg_dtype_name(first->dtype), tg_dtype_name(t->dtype));
    if (t->device.type != first->device.type || t->device.index != first->device.index) {
      char d1[32], d2[32];
      return tg__error("%s: Expected all tensors to be on the same device, but found at "
                       "least two devices, %s and %s!",
                       op, tg__device_str(first->device, d1, sizeof d1),
                       tg__device_str(t->device, d2, sizeof d2));
    }
  }
  return 0;
}

int tg__unsupported_device(const char *op, const tg_tensor *t) {
  return tg__error("%s: no kernel for tensors on cuda:%d in this build", op,
                   t->device.index);
}

double tg__get(const tg_tensor *t, int64_t i) {
  switch (t->dtype) {
  case TG_F32:
    return ((const float *)tg__data(t))[i];
  case TG_F64:
    return ((const double *)tg__data(t))[i];
  case TG_I64:
    return (double)((const int64_t *)tg__data(t))[i];
  }
  return NAN;
}

/* double -> int64 without undefined behaviour: NaN and out-of-range values saturate
 * (NaN to INT64_MIN, as PyTorch's conversion gives on x86). */
static int64_t to_i64(double v) {
  if (isnan(v) || v <= -0x1p63)
    return INT64_MIN;
  if (v >= 0x1p63)
    return INT64_MAX;
  return (int64_t)v;
}

void tg__set(tg_tensor *t, int64_t i, double v) {
  switch (t->dtype) {
  case TG_F32:
    ((float *)tg__data(t))[i] = (float)v;
    break;
  case TG_F64:
    ((double *)tg__data(t))[i] = v;
    break;
  case TG_I64:
    ((int64_t *)tg__data(t))[i] = to_i64(v);
    break;
  }
}

/* ----------------------------------------------------------- creation -- */

tg_tensor *tg_empty(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device) {
  return tg__new(shape, ndim, dtype, device);
}

/* PyTorch's rule for filling dtype with value: int64 and float32 refuse finite values
 * out of their range (inf and NaN fill float32; NaN fills no int64). */
int tg__check_fill(double value, tg_dtype dtype, const char *op) {
  if (dtype == TG_I64 && !(value >= -0x1p63 && value < 0x1p63))
    return tg__error("%s: value %g cannot be converted to type int64_t without overflow",
                     op, value);
  if (dtype == TG_F32 && isfinite(value) && fabs(value) > FLT_MAX &&
      (float)value != (float)FLT_MAX) /* values that round to FLT_MAX are in range */
    return tg__error("%s: value %g cannot be converted to type float without overflow",
                     op, value);
  return 0;
}

/* Fills t on its device (checked by the caller). Returns 0 or -1. */
static int fill_any(tg_tensor *t, double value) {
  if (tg__on_cuda(t))
    return tg__cuda_fill(tg__data(t), t->dtype, t->numel, value, t->device.index);
  switch (t->dtype) {
  case TG_F32: {
    float *p = tg__data(t);
    for (int64_t i = 0; i < t->numel; i++)
      p[i] = (float)value;
    break;
  }
  case TG_F64: {
    double *p = tg__data(t);
    for (int64_t i = 0; i < t->numel; i++)
      p[i] = value;
    break;
  }
  case TG_I64: {
    int64_t *p = tg__data(t);
    for (int64_t i = 0; i < t->numel; i++)
      p[i] = to_i64(value);
    break;
  }
  }
  return 0;
}

int tg_fill_(tg_tensor *t, double value) {
  if (!tg__nonnull(t, "tg_fill_", "t") || tg__check_fill(value, t->dtype, "tg_fill_") < 0)
    return -1;
  if (fill_any(t, value) < 0)
    return -1;
  tg__bump_version(t);
  return 0;
}

/* tg_full and the creation functions built on it, under the name op. */
static tg_tensor *full_in(const int64_t *shape, int ndim, double value, tg_dtype dtype,
                          tg_device device, const char *op) {
  if (tg__check_fill(value, dtype, op) < 0)
    return NULL;
  tg_tensor *t = tg__new_in(op, NULL, shape, ndim, dtype, device);
  if (t && fill_any(t, value) < 0) {
    tg_tensor_free(t);
    t = NULL;
  }
  return t;
}

tg_tensor *tg_full(const int64_t *shape, int ndim, double value, tg_dtype dtype,
                   tg_device device) {
  return full_in(shape, ndim, value, dtype, device, "tg_full");
}

tg_tensor *tg_zeros(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device) {
  return full_in(shape, ndim, 0.0, dtype, device, "tg_zeros");
}

tg_tensor *tg_ones(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device) {
  return full_in(shape, ndim, 1.0, dtype, device, "tg_ones");
}

tg_tensor *tg_scalar(double value, tg_dtype dtype, tg_device device) {
  return full_in(NULL, 0, value, dtype, device, "tg_scalar");
}

tg_tensor *tg_zeros_like(const tg_tensor *t) {
  if (!tg__nonnull(t, "tg_zeros_like", "t"))
    return NULL;
  return full_in(t->shape, t->ndim, 0.0, t->dtype, t->device, "tg_zeros_like");
}

tg_tensor *tg_ones_like(const tg_tensor *t) {
  if (!tg__nonnull(t, "tg_ones_like", "t"))
    return NULL;
  return full_in(t->shape, t->ndim, 1.0, t->dtype, t->device, "tg_ones_like");
}

/* host, moved to device under the name op (host is consumed). */
static tg_tensor *to_device_in(tg_tensor *host, tg_device device, const char *op) {
  if (!host || device.type == TG_DEVICE_CPU)
    return host;
  tg_tensor *t = tg__new_in(op, NULL, host->shape, host->ndim, host->dtype, device);
  if (t && tg_copy_(t, host) < 0) {
    tg_tensor_free(t);
    t = NULL;
  }
  tg_tensor_free(host);
  return t;
}

/* int64 arange exactly (doubles hold integers up to 2^53 only): start + i*step, each
 * element between start and end, so in range; the products are taken modulo 2^64
 * (unsigned), where i*step alone may pass 2^63 when end - start does. step must be an
 * integer of magnitude below 2^63 (the caller's test). */
static void arange_i64(tg_tensor *t, double start, double step) {
  int64_t *p = tg__data(t);
  const uint64_t s = (uint64_t)(int64_t)start, d = (uint64_t)(int64_t)step;
  for (int64_t i = 0; i < t->numel; i++)
    p[i] = (int64_t)(s + (uint64_t)i * d);
}

tg_tensor *tg_arange(double start, double end, double step, tg_dtype dtype,
                     tg_device device) {
  const char *op = "tg_arange";
  if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step))
    return tg__error("%s: step must be nonzero and bounds finite (got start=%g, end=%g, "
                     "step=%g)",
                     op, start, end, step),
           NULL;
  if ((step > 0 && end < start) || (step < 0 && end > start))
    return tg__error("%s: upper bound and larger bound inconsistent with step sign "
                     "(start=%g, end=%g, step=%g)",
                     op, start, end, step),
           NULL;
  if (tg__check_fill(start, dtype, op) < 0 || tg__check_fill(end, dtype, op) < 0)
    return NULL; /* as PyTorch: ends out of int64's range fail, not saturate */
  double count = ceil((end - start) / step);
  if (count > 1e15)
    return tg__error("%s: %g elements are too many", op, count), NULL;
  int64_t n = (int64_t)count;
  tg_tensor *host = tg__new_in(op, NULL, &n, 1, dtype, TG_CPU);
  if (host && dtype == TG_I64 && start == trunc(start) && step == trunc(step) &&
      fabs(step) < 0x1p63) /* a larger step makes at most two elements: the loop below */
    arange_i64(host, start, step);
  else
    for (int64_t i = 0; host && i < n; i++)
      tg__set(host, i, start + (double)i * step);
  return to_device_in(host, device, op);
}

static tg_tensor *random_tensor(const int64_t *shape, int ndim, tg_dtype dtype,
                                tg_device device, bool normal, double a, double b,
                                const char *op) {
  if (!tg__is_float(dtype))
    return tg__error("%s: expected a floating point dtype, got %s", op,
                     tg_dtype_name(dtype)),
           NULL;
  if (check_device(device, op) < 0)
    return NULL;
  tg_tensor *host = tg__new_in(op, NULL, shape, ndim, dtype, TG_CPU);
  if (!host)
    return NULL;
  size_t bytes = (size_t)(host->numel ? host->numel : 1) * sizeof(double);
  double *tmp = malloc(bytes);
  if (!tmp) {
    tg_tensor_free(host);
    return tg__oom(bytes, "cpu", op), NULL;
  }
  if (normal)
    tg__rand_fill_normal(tmp, host->numel);
  else
    tg__rand_fill_uniform(tmp, host->numel);
  for (int64_t i = 0; i < host->numel; i++)
    tg__set(host, i, normal ? a + b * tmp[i] : a + (b - a) * tmp[i]);
  free(tmp);
  return to_device_in(host, device, op);
}

tg_tensor *tg_rand(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device) {
  return random_tensor(shape, ndim, dtype, device, false, 0, 1, "tg_rand");
}

tg_tensor *tg_randn(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device) {
  return random_tensor(shape, ndim, dtype, device, true, 0, 1, "tg_randn");
}

tg_tensor *tg_uniform(const int64_t *shape, int ndim, double lo, double hi,
                      tg_dtype dtype, tg_device device) {
  const char *op = "tg_uniform";
  if (!(lo <= hi) || !isfinite(lo) || !isfinite(hi))
    return tg__error("%s: expects lo <= hi, both finite, but got lo=%g, hi=%g", op, lo,
                     hi),
           NULL;
  if (tg__check_uniform(lo, hi, dtype, op) < 0)
    return NULL;
  return random_tensor(shape, ndim, dtype, device, false, lo, hi, op);
}

int tg__check_uniform(double lo, double hi, tg_dtype dtype, const char *op) {
  /* PyTorch's rules: both bounds in the dtype's range, and hi - lo too (else a + (b -
   * a) * u overflows to infinity). */
  double max = dtype == TG_F32 ? FLT_MAX : DBL_MAX;
  if (tg__is_float(dtype) && (fabs(lo) > max || fabs(hi) > max))
    return tg__error("%s: %s is out of bounds for %s (lo=%g, hi=%g)", op,
                     fabs(lo) > max ? "lo" : "hi", tg_dtype_name(dtype), lo, hi);
  if (tg__is_float(dtype) && !(hi - lo <= max))
    return tg__error("%s: expects hi - lo <= the largest %s (%g), but got lo=%g and "
                     "hi=%g, whose difference exceeds it",
                     op, tg_dtype_name(dtype), max, lo, hi);
  return 0;
}

tg_tensor *tg_tensor_from_data(const void *data, const int64_t *shape, int ndim,
                               tg_dtype dtype, tg_device device) {
  if (tg__check_shape(shape, ndim, dtype, "tg_tensor_from_data") < 0)
    return NULL;
  tg_tensor *t = tg__new(shape, ndim, dtype, device);
  if (!t)
    return NULL;
  size_t bytes = (size_t)t->numel * tg_dtype_size(dtype);
  if (bytes && !data) {
    tg__error("tg_tensor_from_data: data is NULL for %lld elements", (long long)t->numel);
    tg_tensor_free(t);
    return NULL;
  }
  if (bytes && tg__cuda_memcpy(t->storage->data, device, data, TG_CPU, bytes) < 0) {
    tg_tensor_free(t);
    return NULL;
  }
  return t;
}

int tg_tensor_copy_to_host(const tg_tensor *t, void *dst, size_t dst_bytes) {
  if (!tg__nonnull(t, "tg_tensor_copy_to_host", "t"))
    return -1;
  size_t bytes = (size_t)t->numel * tg_dtype_size(t->dtype);
  if (bytes && !dst)
    return tg__error("tg_tensor_copy_to_host: dst is NULL");
  if (dst_bytes < bytes)
    return tg__error("tg_tensor_copy_to_host: destination holds %zu bytes but the "
                     "tensor needs %zu",
                     dst_bytes, bytes);
  return bytes ? tg__cuda_memcpy(dst, TG_CPU, t->storage->data, t->device, bytes) : 0;
}

int tg_copy_(tg_tensor *dst, const tg_tensor *src) {
  if (!tg__nonnull(dst, "tg_copy_", "dst") || !tg__nonnull(src, "tg_copy_", "src"))
    return -1;
  if (dst->numel != src->numel || dst->dtype != src->dtype) {
    char a[TG_SHAPE_STR_LEN], b[TG_SHAPE_STR_LEN];
    return tg__error("tg_copy_: cannot copy %s %s into %s %s (same numel and dtype "
                     "required)",
                     tg_dtype_name(src->dtype), tg_shape_str(src, a, sizeof a),
                     tg_dtype_name(dst->dtype), tg_shape_str(dst, b, sizeof b));
  }
  size_t bytes = (size_t)src->numel * tg_dtype_size(src->dtype);
  if (!bytes || dst->storage->data == src->storage->data)
    return 0;
  tg__bump_version(dst);
  return tg__cuda_memcpy(dst->storage->data, dst->device, src->storage->data, src->device,
                         bytes);
}

double tg_item(const tg_tensor *t) {
  if (!tg__nonnull(t, "tg_item", "t"))
    return NAN;
  if (t->numel != 1) {
    char buf[TG_SHAPE_STR_LEN];
    tg__error("tg_item: a Tensor with %lld elements cannot be converted to Scalar "
              "(shape %s)",
              (long long)t->numel, tg_shape_str(t, buf, sizeof buf));
    return NAN;
  }
  if (t->device.type == TG_DEVICE_CPU)
    return tg__get(t, 0);
  union {
    float f;
    double d;
    int64_t i;
  } v;
  if (tg_tensor_copy_to_host(t, &v, sizeof v) < 0)
    return NAN;
  return t->dtype == TG_F32 ? v.f : t->dtype == TG_F64 ? v.d : (double)v.i;
}

/* --------------------------------------------------------- conversion -- */

static int to_dtype_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  gi[0] = tg_to_dtype(g, n->inputs[0]->dtype);
  return gi[0] ? 0 : -1;
}

tg_tensor *tg_to_dtype(const tg_tensor *t, tg_dtype dtype) {
  if (!tg__nonnull(t, "tg_to_dtype", "t"))
    return NULL;
  if (!valid_dtype(dtype))
    return tg__error("tg_to_dtype: unknown dtype %d", (int)dtype), NULL;
  tg_tensor *out = tg__new(t->shape, t->ndim, dtype, t->device);
  if (!out)
    return NULL;
  int64_t n = t->numel;
  if (tg__on_cuda(t)) {
    if (tg__cuda_cast(tg__data(out), dtype, tg__data(t), t->dtype, n, t->device.index) <
        0) {
      tg_tensor_free(out);
      return NULL;
    }
  } else if (t->dtype == dtype) {
    memcpy(tg__data(out), tg__data(t), (size_t)n * tg_dtype_size(dtype));
  } else if (t->dtype == TG_F32 && dtype == TG_F64) {
    const float *s = tg__data(t);
    double *d = tg__data(out);
    for (int64_t i = 0; i < n; i++)
      d[i] = s[i];
  } else if (t->dtype == TG_F64 && dtype == TG_F32) {
    const double *s = tg__data(t);
    float *d = tg__data(out);
    for (int64_t i = 0; i < n; i++)
      d[i] = (float)s[i];
  } else {
    for (int64_t i = 0; i < n; i++)
      tg__set(out, i, tg__get(t, i));
  }
  if (!tg__is_float(dtype) || !tg__is_float(t->dtype))
    return out;
  const tg_tensor *in[1] = {t};
  return tg__finish("tg_to_dtype", out, 1, in, to_dtype_backward, NULL);
}

tg_tensor *tg__callback_result(tg_tensor *y, int n, const tg_tensor *const *inputs) {
  for (int i = 0; y && i < n; i++)
    if (y == inputs[i]) {
      tg_tensor *r = tg_reshape(y, y->shape, y->ndim);
      tg__release(y);
      return r;
    }
  return y;
}

tg_tensor *tg_clone(const tg_tensor *t) {
  if (!tg__nonnull(t, "tg_clone", "t"))
    return NULL;
  return tg_to_dtype(t, t->dtype);
}

static int to_device_backward(tg_node *n, const tg_tensor *g, tg_tensor **gi) {
  gi[0] = tg_tensor_to(g, n->inputs[0]->device);
  return gi[0] ? 0 : -1;
}

tg_tensor *tg_tensor_to(const tg_tensor *t, tg_device device) {
  if (!tg__nonnull(t, "tg_tensor_to", "t"))
    return NULL;
  if (check_device(device, "tg_tensor_to") < 0)
    return NULL;
  if (device.type == t->device.type && device.index == t->device.index)
    return tg_reshape(t, t->shape, t->ndim);
  tg_tensor *out = tg__new(t->shape, t->ndim, t->dtype, device);
  if (!out)
    return NULL;
  if (tg_copy_(out, t) < 0) {
    tg_tensor_free(out);
    return NULL;
  }
  if (!tg__is_float(t->dtype))
    return out;
  const tg_tensor *in[1] = {t};
  return tg__finish("tg_tensor_to", out, 1, in, to_device_backward, NULL);
}

/* ----------------------------------------------------------- printing -- */

static void print_rec(const tg_tensor *t, FILE *f, int dim, int64_t offset, int indent) {
  enum { EDGE = 3 };
  int64_t n = t->shape[dim];
  int64_t inner = 1;
  for (int d = dim + 1; d < t->ndim; d++)
    inner *= t->shape[d];
  fputc('[', f);
  for (int64_t i = 0; i < n; i++) {
    if (n > 2 * EDGE && i == EDGE) {
      fputs(dim == t->ndim - 1 ? "..., " : "...,\n", f);
      if (dim != t->ndim - 1)
        fprintf(f, "%*s", indent + 1, "");
      i = n - EDGE;
    }
    if (dim == t->ndim - 1) {
      double v = tg__get(t, offset + i);
      if (t->dtype == TG_I64)
        fprintf(f, "%lld", (long long)v);
      else
        fprintf(f, "%.4g", v);
    } else {
      print_rec(t, f, dim + 1, offset + i * inner, indent + 1);
    }
    if (i + 1 < n)
      fputs(dim == t->ndim - 1 ? ", " : ",\n", f);
    if (i + 1 < n && dim != t->ndim - 1)
      fprintf(f, "%*s", indent + 1, "");
  }
  fputc(']', f);
}

void tg_tensor_print(const tg_tensor *t, FILE *out) {
  if (!out)
    out = stdout;
  if (!t) {
    fprintf(out, "tensor(NULL)\n");
    return;
  }
  char buf[TG_SHAPE_STR_LEN];
  fprintf(out, "tensor(%s %s%s", tg_dtype_name(t->dtype),
          tg_shape_str(t, buf, sizeof buf),
          t->device.type == TG_DEVICE_CUDA ? " cuda" : "");
  if (t->requires_grad)
    fprintf(out, ", requires_grad");
  fprintf(out, ")\n");
  tg_tensor *host = NULL;
  if (tg__on_cuda(t)) { /* printed from a host copy */
    if (!(host = tg_tensor_to(t, TG_CPU))) {
      fprintf(out, "(cannot copy to the host: %s)\n", tg_last_error());
      return;
    }
    t = tg__unscope(host);
  }
  if (t->ndim == 0)
    fprintf(out, "%.6g\n", tg__get(t, 0));
  else if (t->numel > 0) {
    print_rec(t, out, 0, 0, 0);
    fputc('\n', out);
  }
  tg_tensor_free(host);
}
