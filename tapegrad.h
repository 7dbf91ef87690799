/*
 * tapegrad — tensors, a tape that records differentiable ops, backward passes,
 * nn layers on a variable store and SGD, in plain C11.
 *
 * Ownership, in one place:
 *  - Every function that returns a tg_tensor * returns a NEW REFERENCE unless its
 *    comment says "borrowed". Release a reference with tg_tensor_free().
 *  - Scopes make training loops free of bookkeeping: between tg_scope_begin() and
 *    tg_scope_end(), every new reference returned to you is also recorded in the
 *    scope, and tg_scope_end() releases them all. Inside a scope you may still call
 *    tg_tensor_free() early (the scope forgets that tensor). To keep a result alive
 *    past the scope, take an extra reference with tg_tensor_retain() before ending it.
 *    Scopes nest and are per thread.
 *  - The tape is owned by the tensors: a result holds its producing node, a node
 *    holds the inputs it needs. Releasing the last reference to the loss releases the
 *    whole graph behind it. Parameters are owned by their tg_varstore.
 *  - Pointers returned as "borrowed" stay valid as long as their owner does.
 *
 * Errors are values: a fallible call returns NULL or a negative status and
 * tg_last_error() says what rule was broken, with the shapes and dtypes involved.
 * Any op given a NULL tensor returns NULL and keeps the earlier message, so a chain
 * of ops can be checked once at its end. Nothing aborts on bad input.
 *
 * Threads: errors, scopes, grad mode and anomaly mode are per thread. Separate
 * tensors, tapes, var stores and optimizers may be used from separate threads at once,
 * and a tensor may be read (used as an op input) by several threads at once, as its
 * reference count is atomic. A graph (backward), a var store, an optimizer or a
 * tensor being written must be used by one thread at a time. The random generator
 * (tg_manual_seed) is global and guarded by a lock.
 */
#ifndef TAPEGRAD_H
#define TAPEGRAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TG_MAX_DIMS 8

/* ---------------------------------------------------------------- types -- */

typedef enum { TG_F32 = 0, TG_F64 = 1, TG_I64 = 2 } tg_dtype;

typedef enum { TG_DEVICE_CPU = 0, TG_DEVICE_CUDA = 1 } tg_device_type;
typedef struct {
  tg_device_type type;
  int index;
} tg_device;

#define TG_CPU ((tg_device){TG_DEVICE_CPU, 0})
tg_device tg_cuda(int index);
bool tg_cuda_is_available(void);
int tg_cuda_device_count(void);

typedef struct tg_tensor tg_tensor;

/* Shape literal helper: tg_zeros(TG_SHAPE(2, 3), TG_F32, TG_CPU). */
#define TG_SHAPE(...)                                                          \
  (const int64_t[]){__VA_ARGS__},                                              \
      (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t))

typedef enum {
  TG_REDUCTION_NONE = 0,
  TG_REDUCTION_MEAN = 1,
  TG_REDUCTION_SUM = 2
} tg_reduction;

/* --------------------------------------------------------------- errors -- */

/* Borrowed: the last error message of this thread ("" when none). */
const char *tg_last_error(void);
void tg_clear_error(void);

/* -------------------------------------------------------------- runtime -- */

const char *tg_dtype_name(tg_dtype dtype);
size_t tg_dtype_size(tg_dtype dtype);

/* Seeds the global generator used by rand/randn/uniform/dropout/init. */
void tg_manual_seed(uint64_t seed);
/* Threads used by tapegrad's kernels (OpenMP); OpenBLAS is kept on one thread and
 * called per thread, so the two never oversubscribe the cores. Default: env
 * TG_NUM_THREADS, else the number of cores. Returns 0, or -1 for n < 1. On machines
 * shared with busy processes, OMP_WAIT_POLICY=passive avoids spin-waiting. */
int tg_set_num_threads(int n);
int tg_get_num_threads(void);

/* Large freed CPU buffers are cached (up to 1 GiB) for reuse by the next tensors of
 * the same size, so training steps do not go back to the OS; this returns them, and
 * the cached device memory of every CUDA device. */
void tg_empty_cache(void);

void tg_scope_begin(void);
/* Releases every reference recorded since the matching tg_scope_begin(). Returns 0,
 * or -1 when no scope is open. */
int tg_scope_end(void);

/* Creation. Each returns a new tensor, or NULL on bad shape/dtype/device, or a value
 * the dtype cannot hold (as PyTorch: a finite value beyond float32's range, an int64
 * value or tg_arange end outside int64's); messages name the function called. */
tg_tensor *tg_tensor_from_data(const void *data, const int64_t *shape, int ndim,
                               tg_dtype dtype, tg_device device);
tg_tensor *tg_empty(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device);
tg_tensor *tg_zeros(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device);
tg_tensor *tg_ones(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device);
tg_tensor *tg_full(const int64_t *shape, int ndim, double value, tg_dtype dtype,
                   tg_device device);
tg_tensor *tg_scalar(double value, tg_dtype dtype, tg_device device); /* 0-dim */
/* [start, end) by step, like torch.arange; int64 values are computed exactly. */
tg_tensor *tg_arange(double start, double end, double step, tg_dtype dtype,
                     tg_device device);
tg_tensor *tg_rand(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device);
tg_tensor *tg_randn(const int64_t *shape, int ndim, tg_dtype dtype, tg_device device);
/* lo, hi and hi - lo must lie within the dtype's range (PyTorch's uniform_ rules). */
tg_tensor *tg_uniform(const int64_t *shape, int ndim, double lo, double hi,
                      tg_dtype dtype, tg_device device);
tg_tensor *tg_zeros_like(const tg_tensor *t);
tg_tensor *tg_ones_like(const tg_tensor *t);

/* Adds a reference to t and returns t. */
tg_tensor *tg_tensor_retain(tg_tensor *t);
/* Releases one reference (NULL is a no-op). */
void tg_tensor_free(tg_tensor *t);

int tg_ndim(const tg_tensor *t);
/* Borrowed: tg_ndim(t) sizes. */
const int64_t *tg_shape(const tg_tensor *t);
/* Size of dim (negative counts from the end); -1 on error. */
int64_t tg_size(const tg_tensor *t, int dim);
int64_t tg_numel(const tg_tensor *t);
tg_dtype tg_dtype_of(const tg_tensor *t);
tg_device tg_device_of(const tg_tensor *t);
/* Borrowed pointer to the elements of a CPU tensor (row-major, contiguous);
 * NULL for GPU tensors. Writing through it bypasses the tape and its in-place
 * detection (see tg_tensor_bump_version), as PyTorch's .data does. */
void *tg_data(tg_tensor *t);
/* Copies all elements to host memory; dst_bytes must be at least numel*dtype size.
 * Returns 0 or -1. */
int tg_tensor_copy_to_host(const tg_tensor *t, void *dst, size_t dst_bytes);
/* Value of a one-element tensor as double; NAN with an error otherwise. */
double tg_item(const tg_tensor *t);
/* Copy converted to dtype (differentiable between float dtypes). */
tg_tensor *tg_to_dtype(const tg_tensor *t, tg_dtype dtype);
/* Copy on device (differentiable). A same-device call returns a new reference to t. */
tg_tensor *tg_tensor_to(const tg_tensor *t, tg_device device);
/* Differentiable copy with its own storage. */
tg_tensor *tg_clone(const tg_tensor *t);
/* In-place fill / copy, outside the tape (for init and optimizers); each bumps the
 * version of dst's storage, so a backward that needs the old values fails. Return 0
 * or -1. */
int tg_fill_(tg_tensor *t, double value);
int tg_copy_(tg_tensor *dst, const tg_tensor *src);
/* Prints dtype, shape and (up to a few elements per dim) the values. */
void tg_tensor_print(const tg_tensor *t, FILE *out);
/* Writes "[2, 3, 4]" into buf; returns buf. */
char *tg_shape_str(const tg_tensor *t, char *buf, size_t len);

/* ------------------------------------------------------ shape ops ------- */
/* All tensors are contiguous. reshape/view/flatten/squeeze/unsqueeze share storage
 * with their input; permute/transpose/narrow/cat/contiguous produce new storage. All
 * are differentiable. */
tg_tensor *tg_reshape(const tg_tensor *t, const int64_t *shape, int ndim); /* one -1 */
tg_tensor *tg_view(const tg_tensor *t, const int64_t *shape, int ndim);
tg_tensor *tg_flatten(const tg_tensor *t, int start_dim, int end_dim);
tg_tensor *tg_squeeze(const tg_tensor *t, int dim); /* no-op if size != 1 */
tg_tensor *tg_squeeze_all(const tg_tensor *t);
tg_tensor *tg_unsqueeze(const tg_tensor *t, int dim);
tg_tensor *tg_permute(const tg_tensor *t, const int *dims, int ndim);
tg_tensor *tg_transpose(const tg_tensor *t, int dim0, int dim1);
tg_tensor *tg_narrow(const tg_tensor *t, int dim, int64_t start, int64_t length);
tg_tensor *tg_cat(tg_tensor *const *tensors, int n, int dim);
tg_tensor *tg_contiguous(const tg_tensor *t);

/* ------------------------------------ shape ops: PyTorch's further arguments -- */
/* squeeze(dims): drops the listed dims that have size 1 (others stay); a dim listed
 * twice is an error. Shares storage. tg_cat also skips 1-D tensors of size 0 whatever
 * the others' shapes, PyTorch's legacy rule. */
tg_tensor *tg_squeeze_dims(const tg_tensor *t, const int *dims, int n_dims);

/* --------------------------------------------------------------- autograd -- */

/* Leaves only (tensors no op produced). Float dtypes only. Returns 0 or -1. */
int tg_set_requires_grad(tg_tensor *t, bool requires_grad);
bool tg_requires_grad(const tg_tensor *t);
/* Backpropagates from a one-element loss: fills .grad of every leaf that requires
 * grad, accumulating into what is there. Releases the graph's saved tensors; a second
 * backward through the same graph is an error. Returns 0 or -1. */
int tg_backward(tg_tensor *loss);
/* As tg_backward for any shape: grad_output has t's shape (NULL = ones for a
 * one-element t); retain_graph keeps saved tensors for another backward. */
int tg_backward_ex(tg_tensor *t, const tg_tensor *grad_output, bool retain_graph);
/* Borrowed: the accumulated gradient of t, or NULL before any backward. */
tg_tensor *tg_grad(const tg_tensor *t);
/* Drops the gradient of t (next backward starts from zero). */
void tg_zero_grad(tg_tensor *t);
/* No-grad mode: ops record nothing. Calls nest. */
void tg_no_grad_begin(void);
void tg_no_grad_end(void);
bool tg_is_grad_enabled(void);
/* New tensor sharing t's storage, with no history and requires_grad false. */
tg_tensor *tg_detach(const tg_tensor *t);
/* Anomaly mode (per thread): every op checks its forward and backward results for
 * NaN/Inf and fails naming the op, its position on the tape and the shapes. */
void tg_set_detect_anomaly(bool enabled);
bool tg_is_anomaly_enabled(void);

/* Gradient check: compares the analytic Jacobian of fn with central differences.
 * Inputs that require grad must be float64 (leaves or not: fn gets leaves sharing
 * their storage, so the inputs' own gradients are left untouched). fn returns a new
 * reference (any shape; an input itself, retained, is fine). Returns 0 when every
 * element agrees (|a - n| <= atol + rtol*|n|; a NaN in either Jacobian never does),
 * -1 otherwise with the worst element in tg_last_error(). */
typedef tg_tensor *(*tg_gradcheck_fn)(tg_tensor *const *inputs, int n_inputs,
                                      void *ctx);
typedef struct {
  double eps, atol, rtol;
} tg_gradcheck_options;
tg_gradcheck_options tg_gradcheck_options_default(void); /* 1e-6, 1e-5, 1e-3 */
int tg_gradcheck(tg_gradcheck_fn fn, void *ctx, tg_tensor *const *inputs,
                 int n_inputs, const tg_gradcheck_options *options);

/* ------------------------------------------------------- elementwise ops -- */
/* Binary ops broadcast like NumPy/PyTorch; dtypes must match. */
tg_tensor *tg_add(const tg_tensor *a, const tg_tensor *b);
tg_tensor *tg_sub(const tg_tensor *a, const tg_tensor *b);
tg_tensor *tg_mul(const tg_tensor *a, const tg_tensor *b);
tg_tensor *tg_div(const tg_tensor *a, const tg_tensor *b);
tg_tensor *tg_add_scalar(const tg_tensor *a, double s);
tg_tensor *tg_sub_scalar(const tg_tensor *a, double s);
tg_tensor *tg_mul_scalar(const tg_tensor *a, double s);
tg_tensor *tg_div_scalar(const tg_tensor *a, double s);
tg_tensor *tg_pow(const tg_tensor *a, double exponent);
tg_tensor *tg_neg(const tg_tensor *a);
tg_tensor *tg_exp(const tg_tensor *a);
tg_tensor *tg_log(const tg_tensor *a);
tg_tensor *tg_sqrt(const tg_tensor *a);
tg_tensor *tg_abs(const tg_tensor *a);
tg_tensor *tg_relu(const tg_tensor *a);
tg_tensor *tg_leaky_relu(const tg_tensor *a, double negative_slope);
tg_tensor *tg_sigmoid(const tg_tensor *a);
tg_tensor *tg_tanh(const tg_tensor *a);
tg_tensor *tg_gelu(const tg_tensor *a); /* exact (erf) form, PyTorch's default */

/* ------------------------------ elementwise: PyTorch's further arguments -- */
/* Devices: all of these run on the CPU and on CUDA (tg_pow_tensor, tg_rpow_scalar,
 * tg_div_ex's rounding modes and tg_gelu_ex's tanh are kinds of the elementwise
 * kernels; the rest are made of the plain ops). */
/* a + alpha * b and a - alpha * b (torch.add/sub's alpha), broadcasting. */
tg_tensor *tg_add_alpha(const tg_tensor *a, const tg_tensor *b, double alpha);
tg_tensor *tg_sub_alpha(const tg_tensor *a, const tg_tensor *b, double alpha);
/* The scalar on the left: s - t, s / t, s ** t. */
tg_tensor *tg_rsub_scalar(const tg_tensor *t, double s);
tg_tensor *tg_rdiv_scalar(const tg_tensor *t, double s);
tg_tensor *tg_rpow_scalar(const tg_tensor *t, double s);
/* a ** exponent elementwise, broadcasting; differentiable in both (PyTorch's rules:
 * no gradient to a where exponent is 0, none to exponent where a is 0 and exponent
 * >= 0). */
tg_tensor *tg_pow_tensor(const tg_tensor *a, const tg_tensor *exponent);
typedef enum {
  TG_ROUNDING_NONE = 0, /* true division, tg_div */
  TG_ROUNDING_TRUNC,    /* trunc(a / b) */
  TG_ROUNDING_FLOOR,    /* floor(a / b), Python's // */
} tg_rounding_mode;
/* torch.div(a, b, rounding_mode=...). Rounded quotients have zero gradients. */
tg_tensor *tg_div_ex(const tg_tensor *a, const tg_tensor *b, tg_rounding_mode mode);
typedef enum { TG_GELU_NONE = 0, TG_GELU_TANH } tg_gelu_approximate;
/* gelu(x, approximate='none' | 'tanh'). */
tg_tensor *tg_gelu_ex(const tg_tensor *a, tg_gelu_approximate approximate);

/* ------------------------------------------------------------ reductions -- */
tg_tensor *tg_sum(const tg_tensor *t);  /* all elements -> 0-dim */
tg_tensor *tg_mean(const tg_tensor *t); /* all elements -> 0-dim */
tg_tensor *tg_sum_dims(const tg_tensor *t, const int *dims, int n_dims, bool keepdim);
tg_tensor *tg_mean_dims(const tg_tensor *t, const int *dims, int n_dims,
                        bool keepdim);
/* Max over dim; indices (TG_I64) returned in *indices when non-NULL (new ref). */
tg_tensor *tg_max_dim(const tg_tensor *t, int dim, bool keepdim, tg_tensor **indices);
tg_tensor *tg_argmax(const tg_tensor *t, int dim, bool keepdim); /* TG_I64 */

/* ------------------------------------ reductions: PyTorch's further ones -- */
/* Devices: made of tg_neg, tg_max_dim, tg_argmax, tg_permute and tg_reshape, these run
 * on every device those have kernels on. */
/* Min over dim, values and (when indices is non-NULL) their TG_I64 indices. */
tg_tensor *tg_min_dim(const tg_tensor *t, int dim, bool keepdim, tg_tensor **indices);
tg_tensor *tg_argmin(const tg_tensor *t, int dim, bool keepdim); /* TG_I64 */
/* Over all elements (an error for an empty t): 0-dim results; argmax/argmin give the
 * flat index of the first extremum, as PyTorch. */
tg_tensor *tg_max_all(const tg_tensor *t);
tg_tensor *tg_min_all(const tg_tensor *t);
tg_tensor *tg_argmax_all(const tg_tensor *t);
tg_tensor *tg_argmin_all(const tg_tensor *t);
/* Max/min over the listed dims (none: all), as torch.amax/amin. */
tg_tensor *tg_amax(const tg_tensor *t, const int *dims, int n_dims, bool keepdim);
tg_tensor *tg_amin(const tg_tensor *t, const int *dims, int n_dims, bool keepdim);

/* ---------------------------------------------------------------- matmul -- */
/* 2-D [m,k]x[k,n], or batched [...,m,k]x[...,k,n] with broadcast batch dims. A 1-D
 * operand acts as a row (a) or column (b) vector whose dim is dropped from the result,
 * as torch.matmul. */
tg_tensor *tg_matmul(const tg_tensor *a, const tg_tensor *b);
/* x [..., in] times weight [out, in] transposed, plus bias [out] (bias may be NULL):
 * one GEMM, -> [..., out]. */
tg_tensor *tg_linear(const tg_tensor *x, const tg_tensor *weight, const tg_tensor *bias);

/* ------------------------------------------------------ softmax & losses -- */
/* Over any dim (negative counts from the end); max-subtracted, so huge logits stay
 * finite. */
tg_tensor *tg_softmax(const tg_tensor *t, int dim);
tg_tensor *tg_log_softmax(const tg_tensor *t, int dim);
/* Losses return the target's shape for TG_REDUCTION_NONE, else a 0-dim tensor.
 * input [N, C] or [N, C, d1, ...] logits (or [C] with a 0-dim target); target TG_I64
 * [N] or [N, d1, ...] class indices in [0, C). Targets equal to ignore_index (PyTorch
 * default -100) are skipped; the mean divides by the number of targets not ignored
 * (NaN when all are). */
tg_tensor *tg_cross_entropy(const tg_tensor *input, const tg_tensor *target,
                            tg_reduction reduction, int64_t ignore_index);
tg_tensor *tg_nll_loss(const tg_tensor *log_probs, const tg_tensor *target,
                       tg_reduction reduction, int64_t ignore_index);
/* input and target of the same shape; both get gradients when they require them. */
tg_tensor *tg_mse_loss(const tg_tensor *input, const tg_tensor *target,
                       tg_reduction reduction);
tg_tensor *tg_binary_cross_entropy_with_logits(const tg_tensor *input,
                                               const tg_tensor *target,
                                               tg_reduction reduction);

/* ------------------------------------ losses: PyTorch's further arguments -- */
/* Devices: all of these run on the CPU and on CUDA with every argument (weighted nll
 * has a kernel per device; the other arguments are made of plain ops and a small
 * kernel for the kept targets). Without those arguments they are the plain losses. */
/* softmax(t, dim, dtype=...): t converted to dtype (float32 or float64) first. */
tg_tensor *tg_softmax_ex(const tg_tensor *t, int dim, tg_dtype dtype);
tg_tensor *tg_log_softmax_ex(const tg_tensor *t, int dim, tg_dtype dtype);
/* Options of the _ex losses; weight and pos_weight are borrowed for the call. */
typedef struct {
  tg_reduction reduction;
  int64_t ignore_index;
  const tg_tensor *weight; /* [C] class weights or NULL */
} tg_nll_loss_options;
tg_nll_loss_options tg_nll_loss_options_default(void); /* mean, -100, NULL */
/* nll_loss(weight=): loss_i = -weight[t_i] * log_probs[i, t_i]; the mean divides by
 * the sum of the weights of the targets not ignored (NaN when that is 0). As PyTorch,
 * the weight is not differentiated: one that requires grad is refused in grad mode. */
tg_tensor *tg_nll_loss_ex(const tg_tensor *log_probs, const tg_tensor *target,
                          const tg_nll_loss_options *options);
typedef struct {
  tg_reduction reduction;
  int64_t ignore_index;    /* index targets only */
  const tg_tensor *weight; /* [C] class weights or NULL */
  double label_smoothing;  /* in [0, 1] */
} tg_cross_entropy_options;
tg_cross_entropy_options tg_cross_entropy_options_default(void); /* mean, -100, NULL, 0 */
/* cross_entropy as PyTorch: target int64 class indices (as tg_cross_entropy; the
 * weighted mean divides by the sum of the targets' weights) or float class
 * probabilities of the input's shape (the mean divides by the number of positions
 * N * d1 * ..., and the target gets a gradient too); label_smoothing mixes in the
 * uniform distribution (1 - s) * target + s / C. With index targets a weight that
 * requires grad is refused in grad mode (as PyTorch); probability targets
 * differentiate it. */
tg_tensor *tg_cross_entropy_ex(const tg_tensor *input, const tg_tensor *target,
                               const tg_cross_entropy_options *options);
typedef struct {
  tg_reduction reduction;
  const tg_tensor *weight;     /* broadcasts to the input's shape, or NULL */
  const tg_tensor *pos_weight; /* weight of positive targets, broadcast (e.g. [C]) */
} tg_bce_with_logits_options;
tg_bce_with_logits_options tg_bce_with_logits_options_default(void); /* mean */
/* l = weight * [(1 - t) x + (1 + (pos_weight - 1) t) log(1 + exp(-x))];
 * differentiable in input, target, weight and pos_weight. */
tg_tensor *tg_binary_cross_entropy_with_logits_ex(const tg_tensor *input,
                                                  const tg_tensor *target,
                                                  const tg_bce_with_logits_options *options);

/* ------------------------------------------------------------ GroupNorm -- */
/* x [N, C, *] (any number of trailing dims, none included); weight/bias [C] or NULL;
 * C % num_groups == 0; biased variance, eps inside the sqrt. New reference.
 * Outputs (y, and dx in backward) of 1/8 of the CPU's L3 and more are written with
 * non-temporal stores, bypassing the cache; the environment variable
 * TG_NORM_STREAM_BYTES sets that size in bytes (0: always). Results are identical. */
tg_tensor *tg_group_norm(const tg_tensor *x, int64_t num_groups,
                         const tg_tensor *weight, const tg_tensor *bias, double eps);

/* ------------------------------------------------------- other norms -------- */
/* All three norms take any finite eps, 0 and negative ones too, as PyTorch (where
 * var + eps < 0 the result is NaN, as PyTorch's); NaN and Inf eps are errors. */
/* x [N, C, *]. In training, batch statistics normalize and the running stats (may be
 * NULL, both or neither) are updated in place with momentum (unbiased variance), as
 * PyTorch does; evaluation needs them. Running stats get no gradient. New reference. */
tg_tensor *tg_batch_norm(const tg_tensor *x, const tg_tensor *weight,
                         const tg_tensor *bias, tg_tensor *running_mean,
                         tg_tensor *running_var, bool training, double momentum,
                         double eps);
/* Normalizes over the trailing n_norm dims whose sizes are normalized_shape; weight
 * and bias (each may be NULL) have that shape. New reference. */
tg_tensor *tg_layer_norm(const tg_tensor *x, const int64_t *normalized_shape,
                         int n_norm, const tg_tensor *weight, const tg_tensor *bias,
                         double eps);

/* ---------------------------------------------------------- conv & pool -- */
/* x [N, Cin, H, W], weight [Cout, Cin/groups, kH, kW], bias [Cout] or NULL.
 * stride/padding/dilation are {height, width}; NULL means 1 / 0 / 1 (also below). */
tg_tensor *tg_conv2d(const tg_tensor *x, const tg_tensor *weight, const tg_tensor *bias,
                     const int64_t stride[2], const int64_t padding[2],
                     const int64_t dilation[2], int64_t groups);
/* weight [Cin, Cout/groups, kH, kW], as PyTorch's conv_transpose2d. */
tg_tensor *tg_conv_transpose2d(const tg_tensor *x, const tg_tensor *weight,
                               const tg_tensor *bias, const int64_t stride[2],
                               const int64_t padding[2],
                               const int64_t output_padding[2],
                               const int64_t dilation[2], int64_t groups);
/* Pooling on [N, C, H, W]; stride NULL = kernel, padding NULL = 0 (<= kernel/2). */
tg_tensor *tg_max_pool2d(const tg_tensor *x, const int64_t kernel[2],
                         const int64_t stride[2], const int64_t padding[2]);
/* count_include_pad = true, as PyTorch's default. */
tg_tensor *tg_avg_pool2d(const tg_tensor *x, const int64_t kernel[2],
                         const int64_t stride[2], const int64_t padding[2]);
tg_tensor *tg_adaptive_avg_pool2d(const tg_tensor *x, const int64_t output_size[2]);
tg_tensor *tg_upsample_nearest2d(const tg_tensor *x, const int64_t output_size[2]);
/* align_corners = false. */
tg_tensor *tg_upsample_bilinear2d(const tg_tensor *x, const int64_t output_size[2]);

/* ------------------------------ convolution: PyTorch's further arguments -- */
/* tg_conv2d and tg_conv_transpose2d also take unbatched [C, H, W] inputs. On the CPU
 * and on CUDA, as the plain convolutions. */
typedef enum {
  TG_PADDING_EXPLICIT = 0, /* the padding field, as tg_conv2d */
  TG_PADDING_VALID,        /* padding="valid": none */
  TG_PADDING_SAME,         /* padding="same": output size = input size, stride 1 */
} tg_padding_mode;
typedef struct {
  int64_t stride[2], padding[2], dilation[2]; /* {height, width} */
  int64_t groups;
  tg_padding_mode padding_mode;
} tg_conv2d_options;
tg_conv2d_options tg_conv2d_options_default(void); /* 1, 0, 1, 1, explicit */
/* conv2d with PyTorch's string paddings; "same" pads one more at the end when
 * dilation * (kernel - 1) is odd, as PyTorch. */
tg_tensor *tg_conv2d_ex(const tg_tensor *x, const tg_tensor *weight, const tg_tensor *bias,
                        const tg_conv2d_options *options);

/* ------------------------------------ pooling: PyTorch's further arguments -- */
/* The pools above also take unbatched [C, H, W] inputs, as PyTorch's do. The pools,
 * max_unpool2d and the resamplings run on the CPU and on CUDA, as the plain pools. */
typedef struct {
  int64_t kernel[2], stride[2], padding[2], dilation[2]; /* {height, width} */
  bool ceil_mode;
} tg_max_pool2d_options;
/* kernel {kh, kw}, stride = kernel, padding 0, dilation 1, ceil_mode false. */
tg_max_pool2d_options tg_max_pool2d_options_default(int64_t kh, int64_t kw);
/* max_pool2d on [N, C, H, W] or [C, H, W] with dilation and ceil_mode; padding at most
 * half the dilated kernel. When indices is non-NULL, *indices (new reference, TG_I64,
 * the output's shape) gets each maximum's flat index in its input plane, as
 * PyTorch's return_indices. */
tg_tensor *tg_max_pool2d_ex(const tg_tensor *x, const tg_max_pool2d_options *options,
                            tg_tensor **indices);
/* The inverse of max_pool2d_ex: x and indices of the same shape [N, C, h, w] or
 * [C, h, w]; the output plane [oh, ow] is output_size, or, when NULL,
 * (h - 1) * stride - 2 * padding + kernel (stride NULL = kernel, padding NULL = 0).
 * Every index must lie in [0, oh * ow). Differentiable in x. */
tg_tensor *tg_max_unpool2d(const tg_tensor *x, const tg_tensor *indices,
                           const int64_t kernel[2], const int64_t stride[2],
                           const int64_t padding[2], const int64_t output_size[2]);
typedef struct {
  int64_t kernel[2], stride[2], padding[2];
  bool ceil_mode, count_include_pad;
  int64_t divisor_override; /* 0: none (divide by the window's count) */
} tg_avg_pool2d_options;
/* kernel {kh, kw}, stride = kernel, padding 0, ceil_mode false, count_include_pad
 * true, no divisor override. */
tg_avg_pool2d_options tg_avg_pool2d_options_default(int64_t kh, int64_t kw);
tg_tensor *tg_avg_pool2d_ex(const tg_tensor *x, const tg_avg_pool2d_options *options);
/* Resampling by size or by scale_factor, as F.interpolate: [N, C, L] (1d), [N, C, H, W]
 * (2d) or [N, C, D, H, W] (3d); size and scale_factor hold one entry per spatial dim,
 * in order, from the first (1d uses [0], 2d [0..1]). */
typedef struct {
  int64_t size[3];        /* the output size, used when scale_factor is 0 */
  double scale_factor[3]; /* > 0: output floor(in * scale); sources map with 1/scale */
  bool align_corners;     /* linear modes only: corners of input and output coincide */
  bool recompute_scale_factor; /* map sources with in/out instead of 1/scale */
} tg_upsample_options;
tg_upsample_options tg_upsample_options_default(void); /* all zero/false */
/* mode="nearest", "linear", "bilinear", "trilinear". New reference, differentiable
 * in x. */
tg_tensor *tg_upsample_nearest1d_ex(const tg_tensor *x, const tg_upsample_options *options);
tg_tensor *tg_upsample_nearest2d_ex(const tg_tensor *x, const tg_upsample_options *options);
tg_tensor *tg_upsample_nearest3d_ex(const tg_tensor *x, const tg_upsample_options *options);
tg_tensor *tg_upsample_linear1d_ex(const tg_tensor *x, const tg_upsample_options *options);
tg_tensor *tg_upsample_bilinear2d_ex(const tg_tensor *x,
                                     const tg_upsample_options *options);
tg_tensor *tg_upsample_trilinear3d_ex(const tg_tensor *x,
                                      const tg_upsample_options *options);

/* Zeroes elements with probability p and scales the rest by 1/(1-p) when train;
 * !train or p == 0 returns an alias of x. The mask comes from the global generator:
 * the same seed drops the same elements on the CPU and on CUDA. */
tg_tensor *tg_dropout(const tg_tensor *x, double p, bool train);

/* -------------------------------------------------------------------- nn -- */
typedef struct tg_varstore tg_varstore;
typedef struct tg_path tg_path;
typedef struct tg_module tg_module;

typedef enum {
  TG_INIT_CONST,
  TG_INIT_UNIFORM,         /* a = lo, b = hi */
  TG_INIT_RANDN,           /* a = mean, b = std */
  TG_INIT_KAIMING_UNIFORM, /* PyTorch's default for conv/linear weights */
} tg_init_kind;
typedef struct {
  tg_init_kind kind;
  double a, b;
} tg_init;
tg_init tg_init_const(double value);
tg_init tg_init_uniform(double lo, double hi);
tg_init tg_init_randn(double mean, double std);
tg_init tg_init_kaiming_uniform(void);

/* A var store owns its variables, paths and modules: tg_varstore_free releases all. */
tg_varstore *tg_varstore_new(tg_device device);
void tg_varstore_free(tg_varstore *vs);
tg_device tg_varstore_device(const tg_varstore *vs);
/* Float dtype of the store's variables (default float32). Setting it converts the
 * existing float variables in place (their gradients are dropped; views made earlier
 * keep the old values) and applies to variables created later, as tch's
 * VarStore::set_kind. Call it before creating optimizers. Returns 0, or -1 (nothing
 * changed) when a graph that is still alive holds one of the variables. */
int tg_varstore_set_dtype(tg_varstore *vs, tg_dtype dtype);
tg_dtype tg_varstore_dtype(const tg_varstore *vs);
/* Borrowed (owned by vs). */
tg_path *tg_varstore_root(tg_varstore *vs);
/* Borrowed (owned by the var store): the path "<path>.<name>". */
tg_path *tg_path_sub(tg_path *path, const char *name);
/* Borrowed: new variable "<path>.<name>", trainable, initialised by init. NULL when
 * the name exists already, the shape is bad, or safetensors could not hold the name:
 * names are non-empty UTF-8 without '.', and "__metadata__" is reserved. Lookups by
 * name (here and in tg_varstore_get) are hashed. fan_in for Kaiming is
 * shape[1]*prod(shape[2:]) as in PyTorch. */
tg_tensor *tg_path_var(tg_path *path, const char *name, const int64_t *shape, int ndim,
                       tg_init init);
/* As tg_path_var, but not trainable (requires_grad false; e.g. running stats). */
tg_tensor *tg_path_var_frozen(tg_path *path, const char *name, const int64_t *shape,
                              int ndim, tg_init init);
int tg_varstore_len(const tg_varstore *vs);
/* Borrowed: i-th variable in creation order, and its full name. */
tg_tensor *tg_varstore_var(const tg_varstore *vs, int i, const char **name);
/* Borrowed: the variable called name, or NULL. */
tg_tensor *tg_varstore_get(const tg_varstore *vs, const char *name);
bool tg_varstore_is_trainable(const tg_varstore *vs, int i);
/* Freezes/unfreezes every trainable variable. */
void tg_varstore_freeze(tg_varstore *vs);
void tg_varstore_unfreeze(tg_varstore *vs);
/* safetensors checkpoints. Saving is atomic, also with concurrent writers (a
 * temporary file of its own in the target's directory, fsync, rename): readers see
 * the old file or the new one. A symlink is followed and its target replaced (a
 * dangling one creates it); a FIFO, device, directory or socket is refused, as when
 * loading, which never blocks.
 * Loading checks every name, shape and dtype (float64 files load into float32
 * stores and vice versa are rejected; tg_varstore_load_ex casts as load_state_dict
 * does) and names what is missing, extra or mismatched. */
int tg_varstore_save(const tg_varstore *vs, const char *filename);
int tg_varstore_load(tg_varstore *vs, const char *filename);

/* Modules. Borrowed: owned by the var store of the path they were created on. */
tg_tensor *tg_module_forward(tg_module *m, const tg_tensor *x, bool train);

typedef struct {
  bool bias;
  tg_init ws_init, bs_init; /* default: Kaiming uniform, as PyTorch */
} tg_linear_config;
tg_linear_config tg_linear_config_default(void);
tg_module *tg_nn_linear(tg_path *path, int64_t in_dim, int64_t out_dim,
                        tg_linear_config config);

typedef struct {
  int64_t stride, padding, dilation, groups;
  bool bias;
  tg_init ws_init, bs_init;
} tg_conv2d_config;
tg_conv2d_config tg_conv2d_config_default(void); /* 1, 0, 1, 1, true, Kaiming */
tg_module *tg_nn_conv2d(tg_path *path, int64_t in_channels, int64_t out_channels,
                        int64_t kernel_size, tg_conv2d_config config);

typedef struct {
  int64_t stride, padding, output_padding, dilation, groups;
  bool bias;
  tg_init ws_init, bs_init;
} tg_conv_transpose2d_config;
tg_conv_transpose2d_config tg_conv_transpose2d_config_default(void);
tg_module *tg_nn_conv_transpose2d(tg_path *path, int64_t in_channels,
                                  int64_t out_channels, int64_t kernel_size,
                                  tg_conv_transpose2d_config config);

/* As tch-rs's GroupNormConfig. cudnn_enabled is accepted for compatibility; tapegrad
 * always uses its own kernels. The norm layers check eps (and BatchNorm's momentum)
 * when they are built, by the rule of their op, and name the layer in the error; a
 * layer's forward names the layer when the input's dtype or device is not its
 * variables'. relu (not in tch-rs; default false): the layer computes
 * tg_group_norm_relu, GroupNorm and a ReLU in one op. */
typedef struct {
  bool cudnn_enabled;
  double eps;
  bool affine;
  tg_init ws_init, bs_init;
  bool relu;
} tg_group_norm_config;
tg_group_norm_config tg_group_norm_config_default(void); /* true,1e-5,true,1,0,false */
tg_module *tg_nn_group_norm(tg_path *path, int64_t num_groups, int64_t num_channels,
                            tg_group_norm_config config);

typedef struct {
  double eps, momentum;
  bool affine;
  tg_init ws_init, bs_init;
} tg_batch_norm_config;
tg_batch_norm_config tg_batch_norm_config_default(void); /* 1e-5, 0.1, true, 1, 0 */
/* Variables as in PyTorch's state_dict: weight, bias (when affine), and frozen
 * running_mean, running_var and num_batches_tracked (int64 scalar, counts training
 * forwards), so PyTorch checkpoints load by name. */
tg_module *tg_nn_batch_norm2d(tg_path *path, int64_t num_features,
                              tg_batch_norm_config config);

typedef struct {
  double eps;
  bool elementwise_affine;
  tg_init ws_init, bs_init;
} tg_layer_norm_config;
tg_layer_norm_config tg_layer_norm_config_default(void); /* 1e-5, true, 1, 0 */
tg_module *tg_nn_layer_norm(tg_path *path, const int64_t *normalized_shape, int n_dims,
                            tg_layer_norm_config config);

/* A module around a function of one tensor (tg_relu, a user function...). fn returns a
 * new reference (x itself, retained, is fine); a NULL without a message gets one. */
typedef tg_tensor *(*tg_module_fn)(const tg_tensor *x, bool train, void *ctx);
tg_module *tg_nn_func(tg_varstore *vs, tg_module_fn fn, void *ctx);
tg_module *tg_nn_relu(tg_varstore *vs);
/* Runs its modules in order. */
tg_module *tg_nn_sequential(tg_varstore *vs);
/* m must belong to seq's var store (which frees both). Returns 0 or -1. */
int tg_sequential_add(tg_module *seq, tg_module *m);

/* ------------------------------------------------------------- optimizers -- */
typedef struct tg_optimizer tg_optimizer;

/* torch.optim.SGD's update, exactly (dampening on the momentum buffer, nesterov). */
typedef struct {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
} tg_sgd_config;
tg_sgd_config tg_sgd_config_default(double lr); /* momentum 0, ..., nesterov false */
/* Optimizes the trainable variables of vs that exist now. Owned by the caller. */
tg_optimizer *tg_sgd_new(tg_varstore *vs, tg_sgd_config config);

typedef struct {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled; /* true: AdamW */
} tg_adam_config;
tg_adam_config tg_adam_config_default(double lr); /* 0.9, 0.999, 1e-8, 0, false */
tg_optimizer *tg_adam_new(tg_varstore *vs, tg_adam_config config);

void tg_optimizer_zero_grad(tg_optimizer *opt);
int tg_optimizer_step(tg_optimizer *opt);
void tg_optimizer_set_lr(tg_optimizer *opt, double lr);
double tg_optimizer_lr(const tg_optimizer *opt);
void tg_optimizer_free(tg_optimizer *opt);
/* Scales the gradients of vs's trainable variables so their total L2 norm is at most
 * max_norm; returns the norm before clipping (negative on error). A NaN norm makes
 * every gradient NaN, as PyTorch. */
double tg_clip_grad_norm(tg_varstore *vs, double max_norm);

/* --------------------------------------- in-place detection (harden-core) -- */
/* Every storage has a version, shared by its views (reshape, detach...), as PyTorch's
 * t._version: each in-place write the library makes adds one (tg_fill_, tg_copy_,
 * optimizer steps, tg_clip_grad_norm, tg_varstore_load, BatchNorm's running stats in
 * training). The tape records the version of each input, saved tensor and output of
 * every node, and tg_backward fails with PyTorch's "one of the variables needed for
 * gradient computation has been modified by an inplace operation" when one changed
 * before that node's backward ran. Writes through tg_data are not seen (tg_data is
 * also how values are read, and a read must not count as a write): call
 * tg_tensor_bump_version(t) after writing through it. */
int64_t tg_tensor_version(const tg_tensor *t); /* -1 for NULL */
void tg_tensor_bump_version(tg_tensor *t);

/* ------------------------------------------------------------------ files -- */
/* How the library opens files, for programs that want the same guarantees (the
 * examples use them for their data and pictures). */

/* Opens an existing file for reading when it is a regular file; a FIFO, a device,
 * a directory or a socket is refused without blocking or reading it. Returns a
 * descriptor (close-on-exec, blocking; the caller closes it), or -1 with an error
 * naming op (NULL: "tg_file_open_read") and the path. */
int tg_file_open_read(const char *path, const char *op);
/* Replaces path with the n bytes at data atomically, as tg_varstore_save writes
 * its checkpoints: readers see the old file or the new one, never a mix, even with
 * concurrent writers. Returns 0, or -1 with an error naming op (NULL:
 * "tg_file_write_atomic"). */
int tg_file_write_atomic(const char *path, const void *data, size_t n,
                         const char *op);

/* ------------------------------------------------------------ CUDA devices -- */
/* Tensors on tg_cuda(i) take the same API as CPU tensors; ops run on their inputs'
 * device (all inputs on one device), kernels are queued on one stream per device, and
 * results are read back with tg_tensor_copy_to_host / tg_item, which wait for them.
 * Device memory goes through a caching allocator: freed blocks are kept for reuse and
 * tg_empty_cache() returns them to the driver. Environment: TG_CUDA_LAUNCH_BLOCKING=1
 * waits after every kernel so a fault is reported by the op that caused it;
 * TG_CUDA_FILL_NAN=1 fills new device buffers with NaN (the tests do). */
/* Waits for every queued kernel and copy on every device; 0 or -1 with the error. */
int tg_cuda_synchronize(void);
/* Bytes of device memory held by tensors (rounded to the allocator's size classes),
 * and held in all (tensors + cache), as torch.cuda.memory_allocated/_reserved. */
int64_t tg_cuda_memory_allocated(int device);
int64_t tg_cuda_memory_reserved(int device);

/* ---------------------------------------------- sequential naming, summary -- */
/* A sequential on a path names its children as nn.Sequential does: the module added
 * as the i-th (from 0) lives on "<path>.<i>", so PyTorch state_dicts load by name:
 *   tg_module *seq = tg_nn_sequential_path(tg_path_sub(root, "features"));
 *   tg_sequential_add(seq, tg_nn_conv2d(tg_sequential_path(seq), 1, 8, 3, cfg));
 *   tg_sequential_add(seq, tg_nn_relu(vs));  // index 1, no variables
 *   tg_sequential_add(seq, tg_nn_conv2d(tg_sequential_path(seq), 8, 8, 3, cfg));
 * gives features.0.weight, features.0.bias, features.2.weight, features.2.bias. */
tg_module *tg_nn_sequential_path(tg_path *path);
/* Borrowed: the path of the child the next tg_sequential_add appends. */
tg_path *tg_sequential_path(tg_module *seq);
/* Prints a table of vs's variables (name, shape, dtype, device, trainable) and the
 * parameter counts, as torchinfo does. Returns 0 or -1. */
int tg_module_summary(const tg_varstore *vs, FILE *out);

/* ------------------------------------------------- flexible checkpoints -- */
/* Named tensors and a string map (safetensors' __metadata__), as a file holds them.
 * A dict owns a reference to each tensor it holds, and copies of the strings. */
typedef struct tg_tensor_dict tg_tensor_dict;
tg_tensor_dict *tg_tensor_dict_new(void);
void tg_tensor_dict_free(tg_tensor_dict *d);
/* Stores a reference to t (shared, not copied) under name, replacing any earlier. */
int tg_tensor_dict_set(tg_tensor_dict *d, const char *name, tg_tensor *t);
/* Borrowed: the tensor called name, or NULL. */
tg_tensor *tg_tensor_dict_get(const tg_tensor_dict *d, const char *name);
int tg_tensor_dict_len(const tg_tensor_dict *d);
/* Borrowed: the i-th tensor (insertion order, file order after a load), its name. */
tg_tensor *tg_tensor_dict_at(const tg_tensor_dict *d, int i, const char **name);
int tg_tensor_dict_set_metadata(tg_tensor_dict *d, const char *key, const char *value);
/* Borrowed: the value of key, or NULL. */
const char *tg_tensor_dict_metadata(const tg_tensor_dict *d, const char *key);
int tg_tensor_dict_metadata_len(const tg_tensor_dict *d);
/* Borrowed: the i-th key, and its value in *value. */
const char *tg_tensor_dict_metadata_at(const tg_tensor_dict *d, int i,
                                       const char **value);
/* Adds references to vs's variables, named "<prefix><name>" (prefix may be NULL). */
int tg_varstore_state_dict(const tg_varstore *vs, tg_tensor_dict *d, const char *prefix);

/* How a checkpoint loads, as torch's load_state_dict. */
typedef struct {
  bool strict;       /* every variable must be found and every tensor used */
  bool strict_dtype; /* refuse to cast: F64 into a float32 store, F16/BF16, ... */
  /* Only tensors named "<prefix>..." are read, as "...": "module." of a DDP
   * checkpoint, or the part of a file one object wrote. NULL: all. */
  const char *prefix;
  /* Tensors named "<exclude_prefix>..." are skipped, as if absent (the optimizer
   * state beside the weights of a resume checkpoint). NULL: none. */
  const char *exclude_prefix;
} tg_load_options;
tg_load_options tg_load_options_default(void); /* strict, casts allowed, NULL, NULL */
/* What a non-strict load left out. Owned by the caller: tg_load_report_free. */
typedef struct {
  char **missing; /* variables the file lacks */
  int n_missing;
  char **unexpected; /* tensors of the file that are not variables */
  int n_unexpected;
} tg_load_report;
void tg_load_report_free(tg_load_report *r);
/* As tg_varstore_load, with options (NULL: defaults). Shapes must always match;
 * float tensors (F16, BF16, F32, F64) cast into the store's float dtype unless
 * strict_dtype; int64 loads into int64 only. Without strict, what matches is loaded
 * and the names left out go to *report (may be NULL). Nothing changes on error. */
int tg_varstore_load_ex(tg_varstore *vs, const char *filename, const tg_load_options *o,
                        tg_load_report *report);
/* The same from tensors in memory (prefix and exclude_prefix apply to their names). */
int tg_varstore_load_dict(tg_varstore *vs, const tg_tensor_dict *d,
                          const tg_load_options *o, tg_load_report *report);
/* Any named tensors and metadata, to and from safetensors files. Saving is atomic as
 * tg_varstore_save. Loading reads F16 and BF16 tensors as float32 (exactly), F32, F64
 * and I64 as they are; other dtypes are an error, unless prefix/exclude_prefix of o
 * (NULL: defaults; strict and strict_dtype do not apply) leave them out. */
int tg_save_tensors(const tg_tensor_dict *d, const char *filename);
tg_tensor_dict *tg_load_tensors(const char *filename, const tg_load_options *o);

/* -------------------------------------------- parameter groups, resuming -- */
/* torch.optim's param_groups: the trainable variables a group selects get its lr,
 * momentum (SGD's momentum, Adam's beta1, as OneCycleLR cycles them) and weight decay
 * instead of the config's (NAN: the config's), e.g. no weight decay on norms and
 * biases. A variable belongs to the first group selecting it; the variables no group
 * selects form one more, last group with the config's values, so an optimizer made
 * with n groups has n + 1 (tg_sgd_new: 1). */
typedef bool (*tg_param_filter)(const char *name, const tg_tensor *var, void *ctx);
typedef struct {
  const char *prefix;     /* names starting with it (NULL: any) */
  tg_param_filter filter; /* and for which it returns true (NULL: any) */
  void *ctx;              /* passed to filter */
  double lr, momentum, weight_decay;
} tg_param_group;
tg_param_group tg_param_group_default(void); /* NULL, NULL, NULL, NAN, NAN, NAN */
tg_optimizer *tg_sgd_new_groups(tg_varstore *vs, tg_sgd_config config,
                                const tg_param_group *groups, int n_groups);
tg_optimizer *tg_adam_new_groups(tg_varstore *vs, tg_adam_config config,
                                 const tg_param_group *groups, int n_groups);
int tg_optimizer_num_groups(const tg_optimizer *opt);
int tg_optimizer_group_len(const tg_optimizer *opt, int group); /* parameters in it */
/* tg_optimizer_set_lr sets every group's lr; tg_optimizer_lr is group 0's. Setters
 * check the value as the constructors do and return 0 or -1. */
int tg_optimizer_set_group_lr(tg_optimizer *opt, int group, double lr);
double tg_optimizer_group_lr(const tg_optimizer *opt, int group);
int tg_optimizer_set_group_momentum(tg_optimizer *opt, int group, double momentum);
double tg_optimizer_group_momentum(const tg_optimizer *opt, int group);
/* Everything a step reads, under prefix (may be NULL), as torch's
 * optimizer.state_dict(): "<prefix>param_groups.<g>.<lr|momentum|...|size>" (float64
 * and int64 scalars) and "<prefix>state.<variable>.<momentum_buffer | exp_avg |
 * exp_avg_sq | step>" (the buffers are shared, not copied). */
int tg_optimizer_state_dict(const tg_optimizer *opt, tg_tensor_dict *d,
                            const char *prefix);
/* Restores it into an optimizer of the same kind over the same variables (matched by
 * name) and groups: configs, buffers (copied) and step counts, so training goes on bit
 * for bit. Every name under prefix must be used (NULL prefix: all of d). Nothing
 * changes on error. Returns 0 or -1. */
int tg_optimizer_load_state_dict(tg_optimizer *opt, const tg_tensor_dict *d,
                                 const char *prefix);
/* The global generator's state (tg_manual_seed's), to save and restore with a run. */
void tg_random_get_state(uint64_t state[4]);
void tg_random_set_state(const uint64_t state[4]);

/* ------------------------------------------------------- lr schedulers -- */
/* As torch.optim.lr_scheduler, over every parameter group of an optimizer, which
 * must outlive them. Made after the optimizer; their first step happens at
 * construction (the lr is then step 0's), so call tg_scheduler_step after each
 * tg_optimizer_step. Values match PyTorch's (the same recurrences). Each returns a
 * scheduler owned by the caller (tg_scheduler_free), or NULL. */
typedef struct tg_scheduler tg_scheduler;
tg_scheduler *tg_step_lr_new(tg_optimizer *opt, int64_t step_size, double gamma);
tg_scheduler *tg_multistep_lr_new(tg_optimizer *opt, const int64_t *milestones, int n,
                                  double gamma);
tg_scheduler *tg_linear_lr_new(tg_optimizer *opt, double start_factor, double end_factor,
                               int64_t total_iters);
tg_scheduler *tg_cosine_lr_new(tg_optimizer *opt, int64_t t_max, double eta_min);
/* SequentialLR: schedulers[i] from milestones[i-1] on (n - 1 milestones), e.g. linear
 * warm-up then cosine:
 *   tg_sequential_lr_new(opt, (tg_scheduler *[]){tg_linear_lr_new(opt, 0.1, 1, 5),
 *                        tg_cosine_lr_new(opt, total - 5, 0)}, 2, (int64_t[]){5});
 * Takes ownership of the schedulers, even when it fails (a NULL one among them is
 * such a failure). */
tg_scheduler *tg_sequential_lr_new(tg_optimizer *opt, tg_scheduler *const *schedulers,
                                   int n, const int64_t *milestones);
typedef struct {
  double max_lr;
  int64_t total_steps;
  double pct_start;
  bool anneal_linear;  /* false: cosine */
  bool cycle_momentum; /* SGD's momentum or Adam's beta1, from max to base and back */
  double base_momentum, max_momentum, div_factor, final_div_factor;
  bool three_phase;
} tg_one_cycle_config;
/* PyTorch's defaults: 0.3, cos, true, 0.85, 0.95, 25, 1e4, false. */
tg_one_cycle_config tg_one_cycle_config_default(double max_lr, int64_t total_steps);
tg_scheduler *tg_one_cycle_lr_new(tg_optimizer *opt, tg_one_cycle_config config);
typedef struct {
  bool mode_max; /* false: "min", the metric should decrease */
  double factor;
  int64_t patience;
  double threshold;
  bool threshold_abs; /* false: "rel" */
  int64_t cooldown;
  double min_lr, eps;
} tg_plateau_config;
/* min, factor 0.1, patience 10, threshold 1e-4 rel, cooldown 0, min_lr 0, eps 1e-8 */
tg_plateau_config tg_plateau_config_default(void);
tg_scheduler *tg_reduce_lr_on_plateau_new(tg_optimizer *opt, tg_plateau_config config);
/* One step (ReduceLROnPlateau: step_metric with the epoch's metric). 0 or -1. */
int tg_scheduler_step(tg_scheduler *s);
int tg_scheduler_step_metric(tg_scheduler *s, double metric);
int64_t tg_scheduler_last_epoch(const tg_scheduler *s); /* steps taken */
/* The scheduler's own state under prefix (the lrs themselves are the optimizer's). */
int tg_scheduler_state_dict(const tg_scheduler *s, tg_tensor_dict *d, const char *prefix);
int tg_scheduler_load_state_dict(tg_scheduler *s, const tg_tensor_dict *d,
                                 const char *prefix);
void tg_scheduler_free(tg_scheduler *s);

/* ----------------------------------------------------------- data loading -- */
/* As tch-rs's tch::vision::mnist and Dataset::train_iter. IDX is MNIST's format;
 * files may be gzipped. Errors name the file and what is wrong with it. */

/* A new tensor read from an IDX file of unsigned bytes (magic 0x0000080N, any rank
 * N from 1 to 8), with the file's shape and its byte values converted to dtype. */
tg_tensor *tg_idx_load(const char *path, tg_dtype dtype);

/* MNIST-format data set: images float32 [N, 1, rows, cols] holding pixel/255, labels
 * int64 [N] in [0, labels). Owned by the struct: tg_mnist_free releases them. */
typedef struct {
  tg_tensor *train_images, *train_labels, *test_images, *test_labels;
  int64_t labels; /* 10 */
} tg_mnist;
/* Reads DIR/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte
 * and t10k-labels-idx1-ubyte, each with or without .gz. Returns 0, or -1 with *out
 * empty. */
int tg_mnist_load_dir(const char *dir, tg_mnist *out);
void tg_mnist_free(tg_mnist *d);

/* Batches of rows of (images, labels), both CPU tensors with the same first dim
 * (labels may be NULL). An epoch's order is a function of (seed, epoch) only: the
 * same whatever else draws random numbers, whether prefetching or not, and after
 * tg_batch_iter_seek. Sharding follows torch's DistributedSampler: the (shuffled)
 * rows, padded by wrapping around to a multiple of world, dealt out round-robin, so
 * every rank gets ceil(N/world) rows and the same number of batches. */
typedef struct {
  bool shuffle;   /* reshuffle every epoch (false: rows in order) */
  uint64_t seed;  /* of the shuffles */
  bool drop_last; /* drop this rank's last batch when smaller than batch */
  bool prefetch;  /* gather the next batch on a background thread meanwhile */
  int rank, world;
} tg_batch_config;
tg_batch_config tg_batch_config_default(void); /* false, 0, false, false, 0, 1 */
typedef struct tg_batch_iter tg_batch_iter;
/* Retains images and labels; owned by the caller (tg_batch_iter_free). */
tg_batch_iter *tg_batch_iter_new(const tg_tensor *images, const tg_tensor *labels,
                                 int64_t batch, tg_batch_config config);
/* The next batch of the epoch: returns 1 with new references in *x and *y (y may be
 * NULL; *y is NULL without labels), 0 when the epoch is over (the next call starts
 * the next epoch), -1 on error. */
int tg_batch_iter_next(tg_batch_iter *it, tg_tensor **x, tg_tensor **y);
int64_t tg_batch_iter_len(const tg_batch_iter *it); /* batches per epoch, this rank */
/* Where the next call to tg_batch_iter_next reads: epoch (from 0) and batch index;
 * seek goes there (to resume a run). Seek returns 0 or -1. */
void tg_batch_iter_position(const tg_batch_iter *it, int64_t *epoch, int64_t *batch);
int tg_batch_iter_seek(tg_batch_iter *it, int64_t epoch, int64_t batch);
/* The position (and seed) as "<prefix>position" in d, and back (checking the seed),
 * to resume with the rest of a run's state. */
int tg_batch_iter_state_dict(const tg_batch_iter *it, tg_tensor_dict *d,
                             const char *prefix);
int tg_batch_iter_load_state_dict(tg_batch_iter *it, const tg_tensor_dict *d,
                                  const char *prefix);
void tg_batch_iter_free(tg_batch_iter *it);

/* ---- fused GroupNorm + ReLU (issue #17) ---- */
/* relu(tg_group_norm(x, ...)) in one pass forward and one backward, without the
 * intermediate tensor: the backward recomputes the ReLU's mask from x and the saved
 * statistics. Same arguments, rules and results as the two ops (NaN stays NaN). */
tg_tensor *tg_group_norm_relu(const tg_tensor *x, int64_t num_groups,
                              const tg_tensor *weight, const tg_tensor *bias, double eps);

/* ---- fused nearest upsampling + concatenation (issue #17) ---- */
/* tg_cat({tg_upsample_nearest2d(a, skip's [H, W]), skip}, 2, 1) in one op, for U-Net
 * decoders: a [N, Ca, h, w], skip [N, Cs, H, W] with H and W integer multiples of h
 * and w; returns [N, Ca + Cs, H, W] without making the upsampled tensor (or, in
 * backward, its gradient). Same results as the two ops. */
tg_tensor *tg_upsample_nearest2d_cat(const tg_tensor *a, const tg_tensor *skip);

/* ---- deterministic mode (issue #16 item 7) ---- */
/* With it on, results are bitwise identical whatever the thread count: reductions
 * (conv weight gradients, loss and norm sums) split their work into a fixed set of
 * parts, not one per thread, and add the parts in a fixed order. GroupNorm, BatchNorm
 * and the optimizers are deterministic anyway. Default: env TG_DETERMINISTIC=1 turns
 * it on, else off (see bench/NOTES.md for its cost). Applies to all threads. */
void tg_set_deterministic(bool on);
bool tg_get_deterministic(void);

/* ---------------------------------------------- data-parallel training (dist/) -- */
/* N processes, each training on its slice of every global batch, end with the
 * parameters one process gets on the whole batch (PyTorch DDP's contract), over MPI
 * for CPU tensors and NCCL for CUDA tensors. Launch with `mpirun -np N prog`; a
 * process not launched by MPI is a world of one, where every call below is a checked
 * no-op. Built without MPI (-Dmpi=disabled), the world is always one.
 *
 * The calls are process-wide (call them from one thread) and collective: every rank
 * makes the same calls in the same order. Each starts by comparing a signature of its
 * arguments across the ranks, so a rank that fails (bad input, out of memory) or
 * disagrees (other shapes, dtypes, variables or call) makes the call fail on every
 * rank, naming that rank and its error, rather than hang the others; MPI's own errors
 * are returned as values too (MPI_ERRORS_RETURN). A rank that dies outright is left
 * to mpirun, which stops the job. Calls before tg_dist_init or after
 * tg_dist_finalize are errors. */
typedef enum { TG_DIST_SUM = 0, TG_DIST_AVERAGE = 1 } tg_dist_op;

/* Whether tapegrad was built with MPI / with NCCL (CUDA tensors across processes). */
bool tg_dist_is_available(void);
bool tg_dist_nccl_is_available(void);
/* Joins the MPI job (initialising MPI unless the caller already has), or makes a
 * world of one when the process was not launched by mpirun. Once per process. 0/-1. */
int tg_dist_init(void);
/* Releases communicators; finalises MPI if tg_dist_init initialised it. 0/-1. */
int tg_dist_finalize(void);
/* This process's rank in [0, world size), and the number of processes; -1 (with an
 * error) outside init/finalize. */
int tg_dist_rank(void);
int tg_dist_world_size(void);
/* Returns on each rank once every rank has entered it. 0/-1. */
int tg_dist_barrier(void);
/* In place: t becomes the sum or the mean over the ranks of t (same shape and dtype
 * on every rank; float32/float64, or int64 for the sum; CPU or CUDA). 0/-1. */
int tg_dist_all_reduce(tg_tensor *t, tg_dist_op op);
/* In place: t becomes root's t (any dtype). 0/-1. */
int tg_dist_broadcast(tg_tensor *t, int root);
/* Every variable of vs (parameters and buffers, in creation order) becomes root's,
 * so all ranks start alike; call it before training (optimizer state is not sent).
 * Var stores must hold the same names, shapes and dtypes on every rank. 0/-1. */
int tg_dist_broadcast_varstore(tg_varstore *vs, int root);
/* After backward: every trainable variable's gradient becomes its mean over the
 * ranks, exchanged in flattened buckets of up to tg_dist_set_bucket_bytes (default
 * 25 MiB, as DDP) taken in creation order. Frozen variables (requires_grad false) are
 * skipped. A variable without a gradient on every rank is skipped too; one with a
 * gradient on some ranks only gets a zero gradient on the others first, so every rank
 * takes the same optimizer step. With a mean-reduced loss the result is the gradient
 * of the global batch's mean when every rank has the same number of samples; with
 * uneven shards multiply each rank's loss by world_size * n_rank / n_global before
 * backward. 0/-1; after a failure the gradients may be partly averaged. A rank
 * whose step failed passes vs NULL with its error pending: the call fails on every
 * rank with that error instead of leaving the others waiting. */
int tg_dist_average_gradients(tg_varstore *vs);
/* Bucket size of tg_dist_average_gradients in bytes (>= 1; must match on every
 * rank): variables larger than it are all-reduced alone, in place. 0/-1. */
int tg_dist_set_bucket_bytes(int64_t bytes);

#ifdef __cplusplus
}
#endif
#endif /* TAPEGRAD_H */
