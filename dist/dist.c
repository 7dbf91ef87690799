/* Data-parallel training: the process's place in the job, and collectives on tensors
 * and var stores. Each call checks its input, agrees with the other ranks on a
 * signature of what it will exchange (tg__dist_agree), then moves bytes through the
 * table of the tensors' device: MPI for the CPU (dist/mpi.c), NCCL for CUDA
 * (dist/nccl.c). */
#include "dist/internal.h"
#include "nn/internal.h"

#include <stdlib.h>
#include <string.h>

enum { UNINIT, ACTIVE, FINALIZED };

static struct {
  int phase;
  int rank, world;
  int64_t bucket_bytes;
} st = {UNINIT, 0, 1, 25 << 20};

int tg__dist_rank(void) { return st.rank; }
int tg__dist_world(void) { return st.world; }

static int active(const char *op) {
  if (st.phase == ACTIVE)
    return 0;
  if (st.phase == UNINIT)
    return tg__error("%s: tg_dist_init() has not been called", op);
  return tg__error("%s: called after tg_dist_finalize()", op);
}

/* Puts "<op>: " before the error a transport call left. */
static int prefixed(const char *op) {
  char why[1024];
  snprintf(why, sizeof why, "%s", tg_last_error());
  return tg__error("%s: %s", op, why);
}

uint64_t tg__dist_hash(uint64_t h, const void *bytes, size_t n) {
  const unsigned char *p = bytes;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static uint64_t hash_i64(uint64_t h, int64_t v) { return tg__dist_hash(h, &v, sizeof v); }

/* What every rank's tensor must share: dtype, shape and device type (not the index:
 * each rank usually drives its own GPU). */
static uint64_t hash_tensor(uint64_t h, const tg_tensor *t) {
  h = hash_i64(h, t->dtype);
  h = hash_i64(h, t->device.type);
  h = hash_i64(h, t->ndim);
  return tg__dist_hash(h, t->shape, (size_t)t->ndim * sizeof *t->shape);
}

int tg__dist_agree(const char *op, int local_rc, uint64_t sig, const char *what,
                   int n_counts, const int64_t *counts, const char *const *names,
                   uint64_t *loose) {
  enum { MAX_COUNTS = 3, N = 5 + 2 * MAX_COUNTS };
  sig = tg__dist_hash(sig, op, strlen(op)); /* another call on another rank differs */
  for (int i = 0; i < n_counts; i++)
    sig = hash_i64(sig, counts[i]);
  /* Maxima of each value and of its negation give every rank the range over the
   * ranks in one exchange: the lowest failing rank, and whether signatures, loose
   * values and counts differ. Hashes keep 62 bits so that their negations fit. */
  int64_t h = (int64_t)(sig >> 2), l = loose ? (int64_t)(*loose >> 2) : 0;
  int64_t buf[N] = {local_rc < 0 ? st.world - st.rank : 0, h, -h, l, -l};
  for (int i = 0; i < n_counts && i < MAX_COUNTS; i++) {
    buf[5 + 2 * i] = counts[i];
    buf[6 + 2 * i] = -counts[i];
  }
  if (st.world > 1 && tg__dist_mpi_max(buf, N) < 0)
    return prefixed(op);
  if (loose)
    *loose = buf[3] == -buf[4];
  if (buf[0]) {
    int bad = st.world - (int)buf[0];
    char msg[1024] = "";
    if (bad == st.rank)
      snprintf(msg, sizeof msg, "%s", tg_last_error());
    if (st.world > 1 && tg__dist_mpi_bcast(msg, sizeof msg, bad) < 0)
      return prefixed(op);
    if (local_rc < 0) /* a rank that failed itself keeps its own message */
      return -1;
    msg[sizeof msg - 1] = '\0';
    return tg__error("%s: rank %d failed: %s", op, bad, msg);
  }
  if (buf[1] == -buf[2])
    return 0;
  char detail[512] = "";
  size_t pos = 0;
  for (int i = 0; i < n_counts && i < MAX_COUNTS && pos < sizeof detail; i++)
    if (buf[5 + 2 * i] != -buf[6 + 2 * i])
      pos += (size_t)snprintf(detail + pos, sizeof detail - pos, "%s%s from %lld to %lld",
                              pos ? ", " : "", names[i], (long long)-buf[6 + 2 * i],
                              (long long)buf[5 + 2 * i]);
  return tg__error("%s: ranks disagree on %s: %s (every rank must make the same "
                   "tg_dist calls in the same order, with the same shapes, dtypes and "
                   "arguments)",
                   op, what, pos ? detail : "other shapes, dtypes or arguments");
}

/* The collectives for tensors on d. */
static int identity_all_reduce(void *buf, int64_t n, tg_dtype dtype, tg_dist_op op,
                               int device) {
  (void)buf, (void)n, (void)dtype, (void)op, (void)device;
  return 0;
}

static int identity_broadcast(void *buf, size_t bytes, int root, int device) {
  (void)buf, (void)bytes, (void)root, (void)device;
  return 0;
}

/* A world of one exchanges nothing: its sums, averages and broadcasts are the tensor
 * itself. Device tensors take this table when there is no NCCL to run them. */
static const tg__dist_kernels identity = {"none", NULL, NULL, NULL, identity_all_reduce,
                                          identity_broadcast};

static const tg__dist_kernels *pick(const char *op, tg_device d) {
  if (d.type == TG_DEVICE_CPU)
    return &tg__dist_mpi;
#ifdef TG_HAVE_NCCL
  if (d.type == TG_DEVICE_CUDA)
    return &tg__dist_nccl;
#endif
  if (st.world == 1)
    return &identity;
  tg__error("%s: no collectives for tensors on cuda:%d: tapegrad was built without "
            "NCCL",
            op, d.index);
  return NULL;
}

/* Ends a bracket opened by k->begin, keeping the first failure. */
static int finish(const char *op, const tg__dist_kernels *k, int device, int rc) {
  if (k->end && k->end(device) < 0 && rc == 0)
    rc = -1;
  return rc < 0 ? prefixed(op) : 0;
}

static int begin(const char *op, const tg__dist_kernels *k, int device) {
  return k->begin && k->begin(device) < 0 ? prefixed(op) : 0;
}

/* --------------------------------------------------------------- process -- */

bool tg_dist_is_available(void) {
#ifdef TG_HAVE_MPI
  return true;
#else
  return false;
#endif
}

int tg_dist_init(void) {
  if (st.phase == ACTIVE)
    return tg__error("tg_dist_init: already initialised (rank %d of %d)", st.rank,
                     st.world);
  if (st.phase == FINALIZED)
    return tg__error("tg_dist_init: called after tg_dist_finalize() (MPI cannot be "
                     "initialised twice in a process)");
  int rank = 0, world = 1;
  if (tg__dist_mpi_init(&rank, &world) < 0)
    return prefixed("tg_dist_init");
  st.rank = rank;
  st.world = world;
  st.phase = ACTIVE;
  return 0;
}

int tg_dist_finalize(void) {
  if (active("tg_dist_finalize") < 0)
    return -1;
  tg__dist_nccl_release();
  st.phase = FINALIZED;
  return tg__dist_mpi_finalize() < 0 ? prefixed("tg_dist_finalize") : 0;
}

int tg_dist_rank(void) { return active("tg_dist_rank") < 0 ? -1 : st.rank; }
int tg_dist_world_size(void) { return active("tg_dist_world_size") < 0 ? -1 : st.world; }

int tg_dist_barrier(void) {
  const char *op = "tg_dist_barrier";
  /* The exchange of signatures is itself a barrier: no rank leaves it before every
   * rank has entered. */
  return active(op) < 0
             ? -1
             : tg__dist_agree(op, 0, TG__DIST_FNV, "the call", 0, NULL, NULL, NULL);
}

int tg_dist_set_bucket_bytes(int64_t bytes) {
  if (active("tg_dist_set_bucket_bytes") < 0)
    return -1;
  if (bytes < 1)
    return tg__error("tg_dist_set_bucket_bytes: bucket size must be at least 1 byte, "
                     "got %lld",
                     (long long)bytes);
  st.bucket_bytes = bytes;
  return 0;
}

/* ---------------------------------------------------------------- tensors -- */

/* The start of the one-tensor collectives, on every rank: the ranks agree on t (sig
 * chained with its dtype, shape and device type, and its element count; rc is this
 * rank's status so far), the exchanges begin on k, and t's version moves on (a tape
 * that saved t must not use the new values unawares). 0, or -1 on every rank. */
static int agree_on_tensor(const char *op, int rc, uint64_t sig, tg_tensor *t,
                           const char *what, const tg__dist_kernels *k) {
  static const char *const elements_name[] = {"elements"};
  int64_t count = rc == 0 ? t->numel : 0;
  if (tg__dist_agree(op, rc, rc == 0 ? hash_tensor(sig, t) : 0, what, 1, &count,
                     elements_name, NULL) < 0 ||
      begin(op, k, t->device.index) < 0)
    return -1;
  tg__bump_version(t);
  return 0;
}

int tg_dist_all_reduce(tg_tensor *t, tg_dist_op op) {
  const char *OP = "tg_dist_all_reduce";
  if (active(OP) < 0)
    return -1;
  const tg__dist_kernels *k = NULL;
  int rc = 0;
  if (!tg__nonnull(t, OP, "tensor"))
    rc = -1;
  else if (op != TG_DIST_SUM && op != TG_DIST_AVERAGE)
    rc = tg__error("%s: unknown reduction %d (TG_DIST_SUM or TG_DIST_AVERAGE)", OP, op);
  else if (!tg__is_float(t->dtype) && !(t->dtype == TG_I64 && op == TG_DIST_SUM))
    rc =
        tg__error("%s: %s needs a float tensor, got %s", OP,
                  op == TG_DIST_SUM ? "the sum" : "the average", tg_dtype_name(t->dtype));
  else if (!(k = pick(OP, t->device)))
    rc = -1;
  if (agree_on_tensor(OP, rc, hash_i64(TG__DIST_FNV, op), t, "the tensor to reduce", k) <
      0)
    return -1;
  int dev = t->device.index;
  return finish(OP, k, dev, k->all_reduce(tg__data(t), t->numel, t->dtype, op, dev));
}

static int check_root(const char *op, int root) {
  if (root < 0 || root >= st.world)
    return tg__error("%s: root %d is out of range for a world of %d processes", op, root,
                     st.world);
  return 0;
}

int tg_dist_broadcast(tg_tensor *t, int root) {
  const char *OP = "tg_dist_broadcast";
  if (active(OP) < 0)
    return -1;
  const tg__dist_kernels *k = NULL;
  int rc = !tg__nonnull(t, OP, "tensor") || check_root(OP, root) < 0 ||
                   !(k = pick(OP, t->device))
               ? -1
               : 0;
  if (agree_on_tensor(OP, rc, hash_i64(TG__DIST_FNV, root), t, "the tensor to broadcast",
                      k) < 0)
    return -1;
  int dev = t->device.index;
  size_t bytes = (size_t)t->numel * tg_dtype_size(t->dtype);
  return finish(OP, k, dev, bytes ? k->broadcast(tg__data(t), bytes, root, dev) : 0);
}

/* ------------------------------------------------------------- var stores -- */

int tg_dist_broadcast_varstore(tg_varstore *vs, int root) {
  const char *OP = "tg_dist_broadcast_varstore";
  if (active(OP) < 0)
    return -1;
  const tg__dist_kernels *k = NULL;
  int rc = 0;
  if (!vs)
    rc = tg__error("%s: argument 'vs' is NULL", OP);
  else if (check_root(OP, root) < 0 || !(k = pick(OP, vs->device)))
    rc = -1;
  uint64_t sig = hash_i64(TG__DIST_FNV, root);
  int64_t counts[2] = {0, 0};
  for (int i = 0; rc == 0 && i < vs->n_vars; i++) {
    sig = tg__dist_hash(hash_tensor(sig, vs->vars[i].t), vs->vars[i].name,
                        strlen(vs->vars[i].name));
    counts[0]++;
    counts[1] += vs->vars[i].t->numel;
  }
  static const char *const names[] = {"variables", "elements"};
  if (tg__dist_agree(OP, rc, sig, "the var store", 2, counts, names, NULL) < 0)
    return -1;
  int dev = vs->device.index;
  if (begin(OP, k, dev) < 0)
    return -1;
  for (int i = 0; rc == 0 && i < vs->n_vars; i++) {
    tg_tensor *t = vs->vars[i].t;
    size_t bytes = (size_t)t->numel * tg_dtype_size(t->dtype);
    tg__bump_version(t);
    if (bytes)
      rc = k->broadcast(tg__data(t), bytes, root, dev);
  }
  return finish(OP, k, dev, rc);
}

/* A gradient to average: variable i of the store and its size. */
typedef struct {
  tg_tensor *var;
  int64_t numel;
  size_t bytes;
} grad_item;

/* End (exclusive) of the bucket starting at items[start]: the following gradients
 * of the same dtype while they fit in cap bytes; a gradient larger than cap alone. */
static int bucket_end(const grad_item *items, int n, int start, int64_t cap) {
  size_t bytes = items[start].bytes;
  int end = start + 1;
  while (end < n && items[end].var->dtype == items[start].var->dtype &&
         bytes + items[end].bytes <= (size_t)cap)
    bytes += items[end++].bytes;
  return end;
}

/* Averages the gradients of items[0..n) (all present), bucket by bucket, through
 * staging (room for the largest bucket of several gradients). */
static int average_buckets(const tg__dist_kernels *k, int dev, const grad_item *items,
                           int n, char *staging) {
  for (int b = 0, e; b < n; b = e) {
    e = bucket_end(items, n, b, st.bucket_bytes);
    tg_dtype dtype = items[b].var->dtype;
    if (e == b + 1) { /* alone: in place, no copies */
      tg_tensor *g = items[b].var->grad;
      if (k->all_reduce(tg__data(g), items[b].numel, dtype, TG_DIST_AVERAGE, dev) < 0)
        return -1;
      continue;
    }
    size_t off = 0;
    int64_t numel = 0;
    for (int i = b; i < e; off += items[i].bytes, numel += items[i].numel, i++)
      if (k->copy(staging + off, tg__data(items[i].var->grad), items[i].bytes, dev) < 0)
        return -1;
    if (k->all_reduce(staging, numel, dtype, TG_DIST_AVERAGE, dev) < 0)
      return -1;
    off = 0;
    for (int i = b; i < e; off += items[i].bytes, i++)
      if (k->copy(tg__data(items[i].var->grad), staging + off, items[i].bytes, dev) < 0)
        return -1;
  }
  return 0;
}

/* Staging for the buckets of several gradients, which hold only gradients of at most
 * cap bytes and at most cap bytes in all: enough for any subset of items. NULL when
 * no bucket needs one (then *failed stays 0) or out of memory (*failed -1). */
static tg_tensor *new_staging(const grad_item *items, int n, tg_device device,
                              int *failed) {
  size_t small = 0, cap = (size_t)st.bucket_bytes;
  for (int i = 0; i < n; i++)
    small += items[i].bytes <= cap ? items[i].bytes : 0;
  size_t bytes = small < cap ? small : cap;
  if (!bytes)
    return NULL;
  /* Bytes, in float64 units for alignment; the device's allocator orders its reuse. */
  tg_tensor *t = tg_empty(TG_SHAPE((int64_t)((bytes + 7) / 8)), TG_F64, device);
  *failed = t ? 0 : -1;
  return t;
}

int tg_dist_average_gradients(tg_varstore *vs) {
  const char *OP = "tg_dist_average_gradients";
  if (active(OP) < 0)
    return -1;
  const tg__dist_kernels *k = NULL;
  int rc = 0;
  if (!vs) /* a training step that failed passes NULL: its error stays, and is sent */
    rc = tg_last_error()[0] ? -1 : tg__error("%s: argument 'vs' is NULL", OP);
  else if (!(k = pick(OP, vs->device)))
    rc = -1;
  /* A world of one on the CPU, or on a device without NCCL, has nothing to exchange
   * (CUDA gradients with NCCL still take its path, so that one GPU runs it). */
  if (st.world == 1 && (rc < 0 || vs->device.type == TG_DEVICE_CPU || k == &identity))
    return rc;
  int n = 0;
  grad_item *items = NULL;
  int64_t *has = NULL;
  if (rc == 0 && vs->n_vars > 0) {
    items = malloc((size_t)vs->n_vars * sizeof *items);
    has = malloc((size_t)vs->n_vars * sizeof *has);
    if (!items || !has)
      rc = tg__error("%s: out of memory", OP);
  }
  uint64_t sig = hash_i64(TG__DIST_FNV, st.bucket_bytes), presence = TG__DIST_FNV;
  int64_t counts[2] = {0, 0};
  for (int i = 0; rc == 0 && i < vs->n_vars; i++) {
    tg_tensor *t = vs->vars[i].t;
    if (!vs->vars[i].trainable || !t->requires_grad || !tg__is_float(t->dtype))
      continue;
    has[n] = t->grad != NULL;
    presence = hash_i64(presence, has[n]);
    items[n++] = (grad_item){t, t->numel, (size_t)t->numel * tg_dtype_size(t->dtype)};
    sig = hash_tensor(hash_i64(sig, i), t);
    counts[1] += t->numel;
  }
  counts[0] = n;
  tg_tensor *staging = rc == 0 ? new_staging(items, n, vs->device, &rc) : NULL;
  static const char *const names[] = {"trainable variables", "elements"};
  /* One exchange in the usual case, where every rank has the same gradients. */
  if ((rc = tg__dist_agree(OP, rc, sig, "the gradients to average", 2, counts, names,
                           &presence)) < 0)
    goto done;
  if (!presence) {
    /* Some variables have a gradient on some ranks only: those lacking one take
     * zeros, so every rank steps alike; the variables without one anywhere are left
     * alone. Out of memory there is reported on every rank before any exchange. */
    if (tg__dist_mpi_max(has, n) < 0) {
      rc = prefixed(OP);
      goto done;
    }
    for (int i = 0; i < n && rc == 0; i++)
      if (has[i] && !items[i].var->grad &&
          !(items[i].var->grad = tg__unscope(tg_zeros_like(items[i].var))))
        rc = tg__error("%s: out of memory for a zero gradient of %lld elements", OP,
                       (long long)items[i].numel);
    if ((rc = tg__dist_agree(OP, rc, sig, "the gradients to average", 0, NULL, NULL,
                             NULL)) < 0)
      goto done;
  }
  int m = 0;
  for (int i = 0; i < n; i++)
    if (has[i]) {
      tg__bump_version(items[i].var->grad);
      items[m++] = items[i];
    }
  int dev = vs->device.index;
  if ((rc = begin(OP, k, dev)) == 0)
    rc = finish(OP, k, dev,
                average_buckets(k, dev, items, m, staging ? tg__data(staging) : NULL));
done:
  tg_tensor_free(staging);
  free(items);
  free(has);
  return rc < 0 ? -1 : 0;
}
