/* Shared test helpers: PyTorch reference data, comparisons, gradcheck shorthands.
 * Include after <cmocka.h>'s prerequisites; tests include this header only. */
#ifndef TG_TEST_COMMON_H
#define TG_TEST_COMMON_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tapegrad.h"

/* ---- reference data written by tests/ref/gen_*.py (PyTorch) ---- */
typedef struct ref_file ref_file;
/* Loads tests/data/<family>.txt; fails the test if missing. */
ref_file *ref_open(const char *family);
void ref_close(ref_file *f);
/* New tensor (caller frees) holding case/label converted to dtype; fails the test if
 * absent. */
tg_tensor *ref_get(ref_file *f, const char *case_name, const char *label, tg_dtype dtype);
/* Whether case/label exists. */
int ref_has(ref_file *f, const char *case_name, const char *label);
/* Stored dtype of case/label: TG_I64 for integers, else TG_F64. */
tg_dtype ref_dtype(ref_file *f, const char *case_name, const char *label);
/* Borrowed: the text of case/label's note line, or NULL when it has none. */
const char *ref_note(ref_file *f, const char *case_name, const char *label);
/* Number of cases and the name of case i (borrowed). */
int ref_num_cases(ref_file *f);
const char *ref_case_name(ref_file *f, int i);

/* ---- comparisons ---- */
/* Fails the test (with the worst element) unless |a-b| <= atol + rtol*|b| everywhere
 * and the shapes agree. */
void assert_close_impl(const tg_tensor *a, const tg_tensor *b, double atol, double rtol,
                       const char *what, const char *file, int line);
#define assert_close(a, b, atol, rtol)                                                   \
  assert_close_impl((a), (b), (atol), (rtol), #a " vs " #b, __FILE__, __LINE__)
/* Fails unless the call returned NULL/negative and tg_last_error() contains every
 * fragment given (NULL-terminated). Clears the error afterwards. */
void assert_error_impl(int failed, const char *file, int line, ...);
#define assert_error(failed, ...)                                                        \
  assert_error_impl((failed), __FILE__, __LINE__, __VA_ARGS__, (const char *)NULL)
/* Fails the test with tg_last_error() when cond is false. */
#define assert_ok(cond)                                                                  \
  do {                                                                                   \
    if (!(cond))                                                                         \
      fail_msg("%s failed: %s", #cond, tg_last_error());                                 \
  } while (0)

/* ---- inputs ---- */
/* Random normal tensor (float64 unless dtype says otherwise) that requires grad. */
tg_tensor *rand_leaf(const int64_t *shape, int ndim, tg_dtype dtype);
/* int64 class indices in [0, classes), uniform from the library's generator (a float64
 * tg_rand scaled down); a new CPU tensor of shape. */
tg_tensor *rand_labels(const int64_t *shape, int ndim, int64_t classes);
/* Runs tg_gradcheck with default options and fails the test with its message. */
void gradcheck_ok(tg_gradcheck_fn fn, void *ctx, tg_tensor *const *inputs, int n);

/* ---- reference cases of one input ---- */
/* Case `name` of f with tensors x, gy, y and dx (PyTorch's): fn(x) (one input, ctx)
 * must match y and, without the tape, give the same values; its gradient for gy must
 * match dx, all to tol; in float64 also a gradcheck of fn at a fresh random input of
 * x's shape. */
void ref_check_one_input(ref_file *f, const char *name, tg_dtype dtype, double tol,
                         tg_gradcheck_fn fn, void *ctx);

/* ---- CUDA against the CPU ---- */
/* A leaf copy of a CPU tensor on cuda:0, requiring grad as the original. */
tg_tensor *cuda_leaf(const tg_tensor *h);
/* Normalised squared error sum((a-b)^2) / sum(b^2) of a device result against the CPU
 * one (both copied to float64 on the host; sum((a-b)^2) where b is all zero, 0 when
 * empty); NaN when either has a non-finite element or the shapes differ. *worst gets
 * the index of the largest difference (or of the non-finite element), *got and *want
 * its values. */
double cuda_nmse(const tg_tensor *dev, const tg_tensor *cpu, int64_t *worst, double *got,
                 double *want);
/* The frame of a CUDA suite's main: cuda_suite_filter() before cmocka runs the group
 * (TG_TEST_FILTER=pattern selects tests: tests/gpu/run.sh's memcheck steps), then
 * return cuda_suite_exit(rc): the cached device blocks back to the driver, so
 * memcheck's leak check reports real leaks, and exit 77 (meson's SKIP) when there is
 * no device and every test skipped. */
void cuda_suite_filter(void);
int cuda_suite_exit(int rc);

/* The whole file at path, malloc'ed and NUL-terminated (*len, when not NULL, gets its
 * length without the NUL); read_file fails the test when it cannot be read,
 * read_file_or_null returns NULL. */
void *read_file_or_null(const char *path, size_t *len);
void *read_file(const char *path, size_t *len);

/* Group setup that seeds the generator and checks for leaked scopes/errors. */
int test_setup(void **state);

#endif
