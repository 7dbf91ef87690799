/* Data loading as tch-rs does it (tch::vision::mnist::load_dir, Dataset::train_iter):
 * IDX files, gzipped or not, and a batch iterator over (images, labels) that shuffles
 * from a seed, shards per rank as torch's DistributedSampler does, and may gather the
 * next batch on a background thread.
 *
 * The order of an epoch is a function of (seed, epoch) alone, drawn from a generator
 * of the iterator's own (not the global one), so it does not depend on what else drew
 * random numbers, on prefetching, or on where a resumed run picked up. */
#include "nn/internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* ------------------------------------------------------------- IDX files -- */

/* Reads exactly n bytes; names the file and what was being read when it cannot. */
static int gz_read_all(gzFile f, const char *op, const char *path, void *buf, size_t n,
                       const char *what) {
  size_t got = 0;
  while (got < n) {
    size_t chunk = n - got > (1u << 30) ? (1u << 30) : n - got;
    int r = gzread(f, (char *)buf + got, (unsigned)chunk);
    if (r < 0) {
      int errnum;
      const char *msg = gzerror(f, &errnum);
      size_t skip = strlen(path); /* zlib prefixes its message with the path */
      if (!strncmp(msg, path, skip) && !strncmp(msg + skip, ": ", 2))
        msg += skip + 2;
      return tg__error("%s: %s: cannot read %s: %s", op, path, what,
                       errnum == Z_ERRNO ? strerror(errno) : msg);
    }
    if (r == 0)
      break;
    got += (size_t)r;
  }
  if (got < n)
    return tg__error("%s: %s: truncated: expected %zu bytes (%s), found only %zu", op,
                     path, n, what, got);
  return 0;
}

static uint32_t be32(const uint8_t *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* An unsigned-byte IDX file: magic 0x0000 0x08 ndim, ndim big-endian sizes, the bytes.
 * want_ndim > 0 requires that rank (kind names it in the message). Fills dims and a
 * new buffer of their product. */
static int idx_read(const char *op, const char *path, int want_ndim, const char *kind,
                    int64_t *dims, int *ndim, uint8_t **bytes_out) {
  *bytes_out = NULL;
  /* Through the library's opener: a FIFO or a device is refused instead of blocking. */
  int fd = tg_file_open_read(path, op);
  if (fd < 0)
    return -1;
  gzFile f = gzdopen(fd, "rb");
  if (!f) {
    close(fd);
    return tg__error("%s: cannot open %s: out of memory", op, path);
  }
  uint8_t head[4 + 4 * TG_MAX_DIMS];
  int rc = gz_read_all(f, op, path, head, 4, "the IDX header");
  uint32_t magic = rc == 0 ? be32(head) : 0;
  int nd = (int)(magic & 0xff);
  if (rc == 0 && want_ndim > 0 && magic != (0x800u | (uint32_t)want_ndim))
    rc = tg__error("%s: %s: bad magic number 0x%08x (expected 0x%08x, an IDX file of %s)",
                   op, path, magic, 0x800u | (uint32_t)want_ndim, kind);
  else if (rc == 0 && ((magic >> 8) != 0x08 || nd < 1 || nd > TG_MAX_DIMS))
    rc = tg__error("%s: %s: bad magic number 0x%08x (expected 0x0000080N: an IDX file "
                   "of unsigned bytes with 1 to %d dimensions)",
                   op, path, magic, TG_MAX_DIMS);
  if (rc == 0)
    rc = gz_read_all(f, op, path, head + 4, 4 * (size_t)nd, "the IDX header");
  size_t total = 1;
  for (int i = 0; rc == 0 && i < nd; i++) {
    dims[i] = be32(head + 4 + 4 * i);
    if (dims[i] == 0 || (uint64_t)total * (uint64_t)dims[i] > ((uint64_t)1 << 40)) {
      char sh[TG_SHAPE_STR_LEN];
      for (int k = i + 1; k < nd; k++)
        dims[k] = be32(head + 4 + 4 * k);
      rc = tg__error("%s: %s: unusable sizes %s in the header (each must be positive, "
                     "1 TiB in all at most)",
                     op, path, tg__shape_fmt(dims, nd, sh, sizeof sh));
    }
    total *= (size_t)dims[i];
  }
  char what[TG_SHAPE_STR_LEN + 32];
  if (rc == 0) {
    char sh[TG_SHAPE_STR_LEN];
    snprintf(what, sizeof what, "%s bytes", tg__shape_fmt(dims, nd, sh, sizeof sh));
  }
  uint8_t *bytes = rc == 0 ? malloc(total) : NULL;
  if (rc == 0 && !bytes)
    rc = tg__error("%s: %s: out of memory for %s", op, path, what);
  if (rc == 0)
    rc = gz_read_all(f, op, path, bytes, total, what);
  uint8_t extra;
  if (rc == 0 && gzread(f, &extra, 1) == 1)
    rc = tg__error("%s: %s: the file holds more data than its header declares (%s)", op,
                   path, what);
  gzclose(f);
  if (rc < 0) {
    free(bytes);
    return -1;
  }
  *ndim = nd;
  *bytes_out = bytes;
  return 0;
}

/* A new tensor of dtype holding bytes[0..numel) / divisor. */
static tg_tensor *bytes_tensor(const uint8_t *bytes, const int64_t *shape, int ndim,
                               tg_dtype dtype, double divisor) {
  tg_tensor *t = tg_empty(shape, ndim, dtype, TG_CPU);
  if (!t)
    return NULL;
  int64_t n = t->numel;
  if (dtype == TG_I64) {
    int64_t *p = tg__data(t);
    for (int64_t i = 0; i < n; i++)
      p[i] = bytes[i];
  } else {
    TG_DISPATCH_FLOAT(dtype, T, {
      T *p = tg__data(t);
      for (int64_t i = 0; i < n; i++)
        p[i] = (T)bytes[i] / (T)divisor;
    });
  }
  return t;
}

tg_tensor *tg_idx_load(const char *path, tg_dtype dtype) {
  const char *op = "tg_idx_load";
  if (!path)
    return tg__error("%s: argument 'path' is NULL", op), NULL;
  int64_t dims[TG_MAX_DIMS];
  int nd;
  uint8_t *bytes;
  if (idx_read(op, path, 0, NULL, dims, &nd, &bytes) < 0)
    return NULL;
  tg_tensor *t = bytes_tensor(bytes, dims, nd, dtype, 1.0);
  free(bytes);
  return t;
}

/* DIR/NAME if it exists, else DIR/NAME.gz: a new string. */
static char *idx_path(const char *op, const char *dir, const char *name) {
  size_t len = strlen(dir) + strlen(name) + 5;
  char *buf = malloc(len);
  if (!buf)
    return tg__error("%s: out of memory", op), NULL;
  for (int gz = 0; gz < 2; gz++) {
    snprintf(buf, len, "%s/%s%s", dir, name, gz ? ".gz" : "");
    if (access(buf, F_OK) == 0)
      return buf;
  }
  free(buf);
  tg__error("%s: neither %s/%s nor %s/%s.gz exists", op, dir, name, dir, name);
  return NULL;
}

/* One split: images [N, 1, rows, cols] in [0, 1] and labels [N] in [0, 10). */
static int mnist_split(const char *dir, const char *images_name, const char *labels_name,
                       tg_tensor **images, tg_tensor **labels) {
  const char *op = "tg_mnist_load_dir";
  char *ipath = idx_path(op, dir, images_name);
  char *lpath = ipath ? idx_path(op, dir, labels_name) : NULL;
  int64_t idims[3], ldims[1];
  int nd;
  uint8_t *ib = NULL, *lb = NULL;
  int rc = lpath ? 0 : -1;
  if (rc == 0)
    rc = idx_read(op, ipath, 3, "unsigned-byte images", idims, &nd, &ib);
  if (rc == 0)
    rc = idx_read(op, lpath, 1, "unsigned-byte labels", ldims, &nd, &lb);
  if (rc == 0 && ldims[0] != idims[0])
    rc = tg__error("%s: %s holds %lld images but %s holds %lld labels", op, ipath,
                   (long long)idims[0], lpath, (long long)ldims[0]);
  for (int64_t i = 0; rc == 0 && i < ldims[0]; i++)
    if (lb[i] >= 10)
      rc = tg__error("%s: %s: label %d at index %lld is out of range (expected 0..9)", op,
                     lpath, lb[i], (long long)i);
  if (rc == 0) {
    *images = tg__unscope(
        bytes_tensor(ib, TG_SHAPE(idims[0], 1, idims[1], idims[2]), TG_F32, 255));
    *labels = tg__unscope(bytes_tensor(lb, ldims, 1, TG_I64, 1.0));
    rc = *images && *labels ? 0 : -1;
  }
  free(ib);
  free(lb);
  free(ipath);
  free(lpath);
  return rc;
}

int tg_mnist_load_dir(const char *dir, tg_mnist *out) {
  if (!out)
    return tg__error("tg_mnist_load_dir: argument 'out' is NULL");
  memset(out, 0, sizeof *out);
  if (!dir)
    return tg__error("tg_mnist_load_dir: argument 'dir' is NULL");
  out->labels = 10;
  if (mnist_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  &out->train_images, &out->train_labels) < 0 ||
      mnist_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                  &out->test_images, &out->test_labels) < 0) {
    tg_mnist_free(out);
    return -1;
  }
  return 0;
}

void tg_mnist_free(tg_mnist *d) {
  if (!d)
    return;
  tg_tensor_free(d->train_images);
  tg_tensor_free(d->train_labels);
  tg_tensor_free(d->test_images);
  tg_tensor_free(d->test_labels);
  memset(d, 0, sizeof *d);
}

/* -------------------------------------------------------- batch iterator -- */

tg_batch_config tg_batch_config_default(void) {
  return (tg_batch_config){false, 0, false, false, 0, 1};
}

/* One batch to gather: the rows it takes, and what came of it. */
typedef struct {
  const tg_tensor *src[2]; /* images, labels (may be NULL) */
  int64_t *rows, n;
  tg_tensor *out[2];
  char err[512];
} gather_job;

struct tg_batch_iter {
  tg_tensor *src[2];
  int64_t batch, per_rank, n_batches;
  tg_batch_config c;
  int64_t *order;      /* this rank's rows of order_epoch */
  int64_t order_epoch; /* -1: none yet */
  int64_t epoch, pos;  /* the batch next() returns */
  bool pending;        /* a thread gathers (pending_epoch, pending_pos) */
  int64_t pending_epoch, pending_pos;
  pthread_t thread;
  gather_job job;
};

/* splitmix64 seeding xoshiro256**, as runtime/random.c, on a local state. */
static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro(uint64_t s[4]) {
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

/* Uniform in [0, n) without modulo bias. */
static int64_t below(uint64_t s[4], uint64_t n) {
  uint64_t limit = UINT64_MAX - UINT64_MAX % n, r;
  do
    r = xoshiro(s);
  while (r >= limit);
  return (int64_t)(r % n);
}

/* This rank's rows of epoch e into it->order: the (shuffled) dataset padded by
 * wrapping around to a multiple of world, then every world-th row from rank. */
static int make_order(tg_batch_iter *it, int64_t e) {
  if (it->order_epoch == e)
    return 0;
  int64_t n = it->src[0]->shape[0], world = it->c.world;
  int64_t *perm = malloc((size_t)(n > 0 ? n : 1) * sizeof *perm);
  if (!perm)
    return tg__error("tg_batch_iter_next: out of memory");
  for (int64_t i = 0; i < n; i++)
    perm[i] = i;
  if (it->c.shuffle) {
    uint64_t x = it->c.seed ^ (0x632be59bd9b4e019ull * (uint64_t)(e + 1)), s[4];
    for (int i = 0; i < 4; i++)
      s[i] = splitmix64(&x);
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
      int64_t j = below(s, (uint64_t)i + 1), t = perm[i];
      perm[i] = perm[j];
      perm[j] = t;
    }
  }
  for (int64_t k = 0; k < it->per_rank; k++)
    it->order[k] = perm[(it->c.rank + k * world) % n];
  free(perm);
  it->order_epoch = e;
  return 0;
}

tg_batch_iter *tg_batch_iter_new(const tg_tensor *images, const tg_tensor *labels,
                                 int64_t batch, tg_batch_config c) {
  const char *op = "tg_batch_iter_new";
  if (!tg__nonnull(images, op, "images"))
    return NULL;
  /* Rows are gathered by memcpy on the host (on the prefetch thread too): a data set
   * stays on the CPU and each batch moves once, as the examples do (ex_to_device). */
  const tg_tensor *off = images->device.type != TG_DEVICE_CPU             ? images
                         : labels && labels->device.type != TG_DEVICE_CPU ? labels
                                                                          : NULL;
  if (off) {
    char dev[16];
    return tg__error("%s: %s are on %s, but the batch iterator gathers batches on the "
                     "CPU: keep the data set on the CPU and move each batch to the "
                     "device with tg_tensor_to",
                     op, off == images ? "images" : "labels",
                     tg__device_str(off->device, dev, sizeof dev)),
           NULL;
  }
  if (images->ndim < 1 || images->shape[0] < 1)
    return tg__error("%s: images must have a first (example) dimension of at least 1, "
                     "got %d dims",
                     op, images->ndim),
           NULL;
  if (labels && (labels->ndim < 1 || labels->shape[0] != images->shape[0]))
    return tg__error("%s: labels hold %lld examples but images hold %lld", op,
                     (long long)(labels->ndim ? labels->shape[0] : 0),
                     (long long)images->shape[0]),
           NULL;
  if (batch < 1)
    return tg__error("%s: batch_size should be a positive integer value, but got "
                     "batch_size=%lld",
                     op, (long long)batch),
           NULL;
  if (c.world < 1 || c.rank < 0 || c.rank >= c.world)
    return tg__error("%s: Invalid rank %d, rank should be in the interval [0, %d] "
                     "(world %d)",
                     op, c.rank, c.world - 1, c.world),
           NULL;
  tg_batch_iter *it = calloc(1, sizeof *it);
  int64_t n = images->shape[0];
  int64_t per_rank = (n + c.world - 1) / c.world;
  if (it)
    it->order = malloc((size_t)per_rank * sizeof *it->order);
  if (!it || !it->order) {
    free(it);
    return tg__error("%s: out of memory", op), NULL;
  }
  it->src[0] = tg_tensor_retain((tg_tensor *)images);
  it->src[1] = tg_tensor_retain((tg_tensor *)labels);
  it->batch = batch;
  it->per_rank = per_rank;
  it->n_batches = c.drop_last ? per_rank / batch : (per_rank + batch - 1) / batch;
  it->c = c;
  it->order_epoch = -1;
  return it;
}

/* Rows [0, n) of each source gathered into new tensors. Runs on any thread. */
static void gather(gather_job *j) {
  for (int k = 0; k < 2; k++) {
    const tg_tensor *s = j->src[k];
    if (!s)
      continue;
    int64_t shape[TG_MAX_DIMS];
    memcpy(shape, s->shape, (size_t)s->ndim * sizeof *shape);
    shape[0] = j->n;
    tg_tensor *t = tg_empty(shape, s->ndim, s->dtype, TG_CPU);
    if (!t) {
      snprintf(j->err, sizeof j->err, "%s", tg_last_error());
      return;
    }
    size_t row = (size_t)(s->numel / s->shape[0]) * tg_dtype_size(s->dtype);
    const char *from = tg__data(s);
    char *to = tg__data(t);
    for (int64_t i = 0; i < j->n; i++)
      memcpy(to + (size_t)i * row, from + (size_t)j->rows[i] * row, row);
    j->out[k] = tg__unscope(t);
  }
}

static void *gather_thread(void *arg) {
  gather(arg);
  return NULL;
}

static void job_clear(gather_job *j) {
  tg_tensor_free(j->out[0]);
  tg_tensor_free(j->out[1]);
  free(j->rows);
  memset(j, 0, sizeof *j);
}

/* Sets up it->job for batch (e, p), which exists. */
static int job_prepare(tg_batch_iter *it, int64_t e, int64_t p) {
  if (make_order(it, e) < 0)
    return -1;
  int64_t start = p * it->batch;
  int64_t n = it->per_rank - start < it->batch ? it->per_rank - start : it->batch;
  gather_job *j = &it->job;
  memset(j, 0, sizeof *j);
  j->src[0] = it->src[0];
  j->src[1] = it->src[1];
  j->n = n;
  j->rows = malloc((size_t)n * sizeof *j->rows);
  if (!j->rows)
    return tg__error("tg_batch_iter_next: out of memory");
  memcpy(j->rows, it->order + start, (size_t)n * sizeof *j->rows);
  return 0;
}

/* Waits for the background gather, if any; leaves its result in it->job. */
static void join_pending(tg_batch_iter *it) {
  if (it->pending)
    pthread_join(it->thread, NULL);
  it->pending = false;
}

/* (e, p) advanced by one batch, across epochs. */
static void advance(const tg_batch_iter *it, int64_t *e, int64_t *p) {
  if (++*p >= it->n_batches) {
    *p = 0;
    ++*e;
  }
}

int tg_batch_iter_next(tg_batch_iter *it, tg_tensor **x, tg_tensor **y) {
  if (x)
    *x = NULL;
  if (y)
    *y = NULL;
  if (!it || !x)
    return tg__error("tg_batch_iter_next: argument '%s' is NULL", it ? "x" : "it");
  if (it->pos >= it->n_batches) { /* the epoch is over: the next call starts another */
    it->epoch++;
    it->pos = 0;
    return 0;
  }
  bool have = it->pending && it->pending_epoch == it->epoch && it->pending_pos == it->pos;
  join_pending(it);
  if (!have) {
    job_clear(&it->job);
    if (job_prepare(it, it->epoch, it->pos) < 0)
      return -1;
    gather(&it->job);
  }
  gather_job done = it->job;
  memset(&it->job, 0, sizeof it->job);
  int rc = done.err[0] ? tg__error("tg_batch_iter_next: %s", done.err) : 0;
  /* Aliases made here, on the caller's thread, are recorded in its scope. */
  for (int k = 0; k < 2 && rc == 0; k++) {
    tg_tensor *t = done.out[k], **dst = k ? y : x;
    if (t && dst && !(*dst = tg__alias(t, t->shape, t->ndim)))
      rc = -1;
  }
  job_clear(&done);
  if (rc < 0) {
    tg_tensor_free(*x);
    *x = NULL;
    if (y) {
      tg_tensor_free(*y);
      *y = NULL;
    }
    return -1;
  }
  int64_t e = it->epoch, p = it->pos;
  advance(it, &e, &p);
  it->pos++;
  /* Gather the batch after this one meanwhile (a failure to start a thread only
   * means it is gathered when asked for). */
  if (it->c.prefetch && job_prepare(it, e, p) == 0) {
    it->pending_epoch = e;
    it->pending_pos = p;
    it->pending = pthread_create(&it->thread, NULL, gather_thread, &it->job) == 0;
    if (!it->pending)
      job_clear(&it->job);
  }
  return 1;
}

int64_t tg_batch_iter_len(const tg_batch_iter *it) { return it ? it->n_batches : -1; }

void tg_batch_iter_position(const tg_batch_iter *it, int64_t *epoch, int64_t *batch) {
  if (epoch)
    *epoch = it ? it->epoch : -1;
  if (batch)
    *batch = it ? it->pos : -1;
}

int tg_batch_iter_seek(tg_batch_iter *it, int64_t epoch, int64_t batch) {
  if (!it)
    return tg__error("tg_batch_iter_seek: argument 'it' is NULL");
  if (epoch < 0 || batch < 0 || batch > it->n_batches)
    return tg__error("tg_batch_iter_seek: position (epoch %lld, batch %lld) is out of "
                     "range: epochs are >= 0 and an epoch has %lld batches",
                     (long long)epoch, (long long)batch, (long long)it->n_batches);
  it->epoch = epoch;
  it->pos = batch;
  return 0;
}

void tg_batch_iter_free(tg_batch_iter *it) {
  if (!it)
    return;
  join_pending(it);
  job_clear(&it->job);
  tg_tensor_free(it->src[0]);
  tg_tensor_free(it->src[1]);
  free(it->order);
  free(it);
}

int tg_batch_iter_state_dict(const tg_batch_iter *it, tg_tensor_dict *d,
                             const char *prefix) {
  const char *op = "tg_batch_iter_state_dict";
  if (!it || !d)
    return tg__error("%s: argument '%s' is NULL", op, it ? "d" : "it");
  const int64_t pos[3] = {it->epoch, it->pos, (int64_t)it->c.seed};
  char *name = tg__concat(prefix, "position", op);
  tg_tensor *t =
      name ? tg__unscope(tg_tensor_from_data(pos, TG_SHAPE(3), TG_I64, TG_CPU)) : NULL;
  int rc = t ? tg__dict_take(d, name, t, op) : -1;
  free(name);
  return rc;
}

int tg_batch_iter_load_state_dict(tg_batch_iter *it, const tg_tensor_dict *d,
                                  const char *prefix) {
  const char *op = "tg_batch_iter_load_state_dict";
  if (!it || !d)
    return tg__error("%s: argument '%s' is NULL", op, it ? "d" : "it");
  char *name = tg__concat(prefix, "position", op);
  if (!name)
    return -1;
  const tg_tensor *t = tg_tensor_dict_get(d, name);
  int rc = 0;
  if (!t || t->dtype != TG_I64 || t->numel != 3)
    rc = tg__error("%s: the state dict %s '%s' (int64 [3]: epoch, batch, seed)", op,
                   t ? "has a malformed" : "lacks", name);
  const int64_t *p = rc == 0 ? tg__data(t) : NULL;
  if (rc == 0 && (uint64_t)p[2] != it->c.seed)
    rc = tg__error("%s: the state is of an iterator shuffling from seed %llu, this one "
                   "shuffles from %llu",
                   op, (unsigned long long)p[2], (unsigned long long)it->c.seed);
  free(name);
  return rc == 0 ? tg_batch_iter_seek(it, p[0], p[1]) : -1;
}
