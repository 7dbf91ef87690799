/* Internal runtime API shared by runtime/, graph/, ops/ and nn/. Not installed. */
#ifndef TG_RUNTIME_INTERNAL_H
#define TG_RUNTIME_INTERNAL_H

#include "tapegrad.h"

#include <stdarg.h>
#include <stdio.h>

typedef struct tg_node tg_node;
typedef struct tg_scope tg_scope;

typedef struct {
  _Atomic int refcount; /* atomic: tensors may be read by several threads at once */
  void *data;
  size_t bytes;
  tg_device device;
  int64_t version; /* +1 per in-place write (tg__bump_version); views share it */
} tg_storage;

/* All tensors are contiguous and row-major; views (reshape, detach) share storage. */
struct tg_tensor {
  _Atomic int refcount;
  tg_dtype dtype;
  tg_device device;
  int ndim;
  /* The sizes other than 0 multiply within int64 (an empty tensor's too:
   * tg__check_shape), so every partial product of sizes a kernel forms fits. */
  int64_t shape[TG_MAX_DIMS];
  int64_t numel;
  tg_storage *storage;
  bool requires_grad;
  tg_tensor *grad;  /* accumulated gradient of a leaf (owned) */
  tg_node *grad_fn; /* producing node (owned reference); NULL for leaves */
  tg_scope *scope;  /* scope holding one reference, or NULL */
  int64_t scope_slot;
  tg_tensor *bwd_grad;   /* scratch used while backward runs */
  _Atomic int tape_refs; /* live nodes holding it as an input or saved tensor */
};

/* ---- errors ---- */
/* Sets this thread's error message (printf-style) and returns -1. */
int tg__error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* True when t is non-NULL. When NULL, sets "<op>: argument '<arg>' is NULL" unless
 * an earlier error is pending, so the first failure of a chain is what users see. */
bool tg__nonnull(const tg_tensor *t, const char *op, const char *arg);
/* -1 with "<op>: out of memory: failed to allocate <bytes> bytes on <where>". op NULL
 * means the op running: the last one whose arguments tg__nonnull or tg__check_same
 * checked, or during a backward the node being differentiated ("tg_backward: out of
 * memory in the backward of tg_conv2d (tape position 7): ..."), which the tape sets
 * with tg__backward_enter/leave around each node. */
int tg__oom(size_t bytes, const char *where, const char *op);
void tg__op_enter(const char *op);
const char *tg__running_op(void); /* NULL when none */
void tg__backward_enter(const char *op, int64_t seq);
void tg__backward_leave(void);
/* "[2, 3]" of a raw shape, into buf. */
char *tg__shape_fmt(const int64_t *shape, int ndim, char *buf, size_t len);
#define TG_SHAPE_STR_LEN 160
/* s quoted for a message ('name ' shows a trailing space), control characters escaped
 * and names longer than about 128 bytes cut in the middle ('abc...xyz' (3000 bytes)),
 * so the rule a message states is never lost to truncation. Into buf, which it
 * returns; TG_QUOTE_LEN bytes always suffice. */
const char *tg__quote(const char *s, char *buf, size_t len);
#define TG_QUOTE_LEN 512
/* The same in double quotes ("name"), as PyTorch's load_state_dict lists keys. */
const char *tg__dquote(const char *s, char *buf, size_t len);
/* UTF-8 as Rust's str::from_utf8 accepts it (safetensors' names and headers); when it
 * is not, *bad (may be NULL) gets the offset of the first bad byte. */
bool tg__valid_utf8(const uint8_t *s, size_t n, size_t *bad);
/* The integer in environment variable `name`, or fallback when it is unset or empty.
 * A value that is not an integer in [lo, hi] is ignored with a warning on stderr,
 * once per *warned flag (one per variable), as PyTorch does for OMP_NUM_THREADS. */
int64_t tg__env_int(const char *name, int64_t lo, int64_t hi, int64_t fallback,
                    _Atomic bool *warned);

/* ---- tensors ---- */
/* New uninitialised tensor recorded in the current scope (if one is open). Its
 * messages (bad shape, device, out of memory) name op, else the calling function when
 * it is a public tg_ function, else the op running (see tg__oom). */
tg_tensor *tg__new_in(const char *op, const char *caller, const int64_t *shape, int ndim,
                      tg_dtype dtype, tg_device device);
/* tg__new(shape, ndim, dtype, device); variadic so that TG_SHAPE(...) expands. */
#define tg__new(...) tg__new_in(NULL, __func__, __VA_ARGS__)
#define tg__new_like(t) tg__new((t)->shape, (t)->ndim, (t)->dtype, (t)->device)
/* New tensor object sharing t's storage with another shape of equal numel. */
tg_tensor *tg__alias(const tg_tensor *t, const int64_t *shape, int ndim);
/* Removes t from its scope: the caller now holds that reference for good (grads,
 * variables, optimizer state and other long-lived tensors). Returns t. */
tg_tensor *tg__unscope(tg_tensor *t);
/* Drops one reference without touching scopes (used by scopes and the tape). */
void tg__release(tg_tensor *t);
/* y, the new reference a user callback returned from inputs, as an op's result: when
 * y is one of the inputs (tg_tensor_retain(in[0]), the identity), that reference is
 * not the one a scope records, and freeing y would make the scope forget the input;
 * so it is dropped and y becomes a recorded tg_reshape of the input. NULL stays NULL. */
tg_tensor *tg__callback_result(tg_tensor *y, int n, const tg_tensor *const *inputs);
static inline void *tg__data(const tg_tensor *t) { return t->storage->data; }
/* Every in-place write the library makes to a tensor that may already be recorded on
 * a tape calls this, so that tg_backward can tell that a value it needs has changed
 * since the forward (PyTorch's version counter). */
static inline void tg__bump_version(tg_tensor *t) { t->storage->version++; }
static inline bool tg__is_float(tg_dtype d) { return d == TG_F32 || d == TG_F64; }
/* Wraps a negative dim; sets an error like PyTorch's "Dimension out of range
 * (expected to be in range of [-2, 1], but got 2)" and returns -1 when invalid. */
int tg__wrap_dim(int dim, int ndim, const char *op);
/* Checks shape sizes (>= 0, ndim <= 8, numel and bytes without int64 overflow). */
int tg__check_shape(const int64_t *shape, int ndim, tg_dtype dtype, const char *op);
/* Same dtype and device for all non-NULL tensors; float dtype when need_float. */
int tg__check_same(const char *op, int n, const tg_tensor *const *ts, bool need_float);
/* Error for ops that have no kernel for t's device yet. */
int tg__unsupported_device(const char *op, const tg_tensor *t);
/* PyTorch's range rules, -1 with "<op>: ..." when broken: filling dtype with value
 * (finite values beyond float32, anything outside int64), and uniform bounds (each,
 * and hi - lo, within the dtype's range). */
int tg__check_fill(double value, tg_dtype dtype, const char *op);
int tg__check_uniform(double lo, double hi, tg_dtype dtype, const char *op);
/* Element i of a float tensor as double / set from double (slow; tests, init). */
double tg__get(const tg_tensor *t, int64_t i);
void tg__set(tg_tensor *t, int64_t i, double v);

/* ---- dtype dispatch: runs the body with T bound to float or double. ----
 *   TG_DISPATCH_FLOAT(t->dtype, T, { T *x = tg__data(t); ... });            */
#define TG_DISPATCH_FLOAT(dtype, T, ...)                                                 \
  do {                                                                                   \
    if ((dtype) == TG_F32) {                                                             \
      typedef float T;                                                                   \
      __VA_ARGS__                                                                        \
    } else {                                                                             \
      typedef double T;                                                                  \
      __VA_ARGS__                                                                        \
    }                                                                                    \
  } while (0)

/* ---- broadcasting ---- */
/* Output shape of broadcasting a with b; -1 with PyTorch's message on mismatch. */
int tg__broadcast_shape(const tg_tensor *a, const tg_tensor *b, int64_t *out,
                        int *out_ndim, const char *op);
/* Strides (in elements) of t viewed with out's shape: 0 on broadcast dims. */
void tg__broadcast_strides(const tg_tensor *t, const int64_t *out_shape, int out_ndim,
                           int64_t *strides);
/* Sums g (broadcast result) down to shape/ndim; returns a new reference (an alias
 * of g when the shapes already match). */
tg_tensor *tg__sum_to_shape(const tg_tensor *g, const int64_t *shape, int ndim);

/* ---- in-place helpers outside the tape ---- */
/* dst += alpha * src (same shape, dtype, device). */
int tg__axpy_(tg_tensor *dst, double alpha, const tg_tensor *src);
/* dst *= alpha. */
int tg__scale_(tg_tensor *dst, double alpha);
/* Sum of squares of all elements (float64 accumulation). */
double tg__sumsq(const tg_tensor *t);

/* ---- random numbers (global generator, locked) ---- */
uint64_t tg__rand_u64(void);
/* Fills n doubles uniform in [0, 1) / standard normal. */
void tg__rand_fill_uniform(double *out, int64_t n);
void tg__rand_fill_normal(double *out, int64_t n);

/* ---- threads ---- */
/* Threads for one parallel loop of `work` elementary operations: 1 when the loop is
 * too small to be worth waking the pool. Use as
 *   #pragma omp parallel for num_threads(tg__threads(work))
 * Do not call BLAS from inside a parallel region. */
int tg__threads(int64_t work);
/* body(ctx, lo, hi) over [0, n) in one contiguous part per thread of
 * tg__threads(work); on one thread a plain call, no OpenMP region: libgomp builds and
 * frees a team for every region, even a region of one thread, which costs more than
 * a tiny kernel (bench/tiny_ops). For loops whose iterations are independent. */
typedef void (*tg__range_fn)(void *ctx, int64_t lo, int64_t hi);
void tg__parallel_for(int64_t n, int64_t work, tg__range_fn body, void *ctx);
/* Bytes of the last-level cache the calling CPU shares with its neighbours (one L3
 * slice, as Linux's sysfs reports it; glibc's sysconf gives the whole chip's total on
 * some AMD parts), 32 MiB when unknown. Read once. */
int64_t tg__llc_bytes(void);
/* Deterministic mode (tg_set_deterministic): a reduction whose partial sums are split
 * over threads splits its work into tg__reduce_parts(work) parts (the threads take
 * whole parts) and adds the parts' sums in part order: tg__threads(work) parts
 * normally, TG_DET_PARTS (1 for small work) in deterministic mode, whatever the thread
 * count. tg__reduce_threads(work) is for loops whose OpenMP `reduction` clause sums in
 * an order that depends on the thread count: 1 thread in deterministic mode. */
enum { TG_DET_PARTS = 12 }; /* divisible by 1, 2, 3, 4 and 6 threads */
int tg__reduce_parts(int64_t work);
int tg__reduce_threads(int64_t work);

/* ---- host memory (runtime/alloc.c): 64-byte aligned, large buffers cached ---- */
void *tg__host_alloc(size_t bytes);
void tg__host_free(void *p, size_t bytes);
/* Blocks of TG_SMALL_BYTES, 64-byte aligned, uninitialised, for the headers every op
 * allocates (tensors with their storage, tape nodes, scopes): freed blocks are kept
 * per thread for the next, so tiny ops do not churn malloc (runtime/alloc.c). */
enum { TG_SMALL_BYTES = 512 };
void *tg__small_alloc(void);
void tg__small_free(void *p);

/* ---- devices and per-op dispatch (runtime/device.c) ----
 * Each op keeps one table of kernels per device (one signature per kernel, declared in
 * its family's header); after its checks, the op picks the table of its input's
 * device:
 *   const gn_kernels *k = tg__pick(OP, x, &tg__gn_cpu, TG_IF_CUDA(&tg__gn_cuda));
 * NULL, with "<op>: no kernel for cuda:0", when that device's table is absent. */
#ifdef TG_HAVE_CUDA
#define TG_IF_CUDA(table) (table)
#else
#define TG_IF_CUDA(table) NULL
#endif
const void *tg__pick_table(const char *op, const tg_tensor *t, const void *cpu,
                           const void *cuda);
#define tg__pick(op, t, cpu, cuda)                                                       \
  ((__typeof__(cpu))tg__pick_table((op), (t), (cpu), (cuda)))
/* "cpu" or "cuda:1", into buf. */
const char *tg__device_str(tg_device d, char *buf, size_t len);
static inline bool tg__on_cuda(const tg_tensor *t) {
  return t->device.type == TG_DEVICE_CUDA;
}

/* ---- CUDA memory and copies (runtime/cuda.c; stubs when built without CUDA; the
 * rest of the CUDA runtime is in runtime/cuda.h) ---- */
void *tg__cuda_malloc(size_t bytes, int device);
void tg__cuda_free(void *p, size_t bytes, int device);
int tg__cuda_memcpy(void *dst, tg_device dd, const void *src, tg_device sd, size_t n);

/* ---- files (runtime/file.c; opening for reading is tg_file_open_read) ---- */
/* Writes the file at path atomically: write(f, ctx) fills a new temporary file in the
 * directory that path (after following symlinks) names; it is fsync'ed and renamed
 * over path, then the directory is fsync'ed. write returns 0, or -1 with an error
 * set; it may run twice (when the first temporary cannot be linked into place), so it
 * must depend only on ctx. Refuses to replace anything but a regular file. Returns 0,
 * or -1 with "<op>: ..." and no temporary left behind. */
typedef int (*tg__write_fn)(FILE *f, void *ctx);
int tg__write_atomic(const char *path, const char *op, tg__write_fn write, void *ctx);
/* Tests set this to exercise the named-temporary fallback used where the filesystem
 * lacks O_TMPFILE. */
extern _Atomic bool tg__file_no_tmpfile;

#endif
