#include "common.h"

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TG_TEST_DATA
#error "TG_TEST_DATA must name tests/data"
#endif

typedef struct {
  char label[64];
  char *note; /* text of a note line, NULL for tensors */
  tg_dtype dtype;
  int ndim;
  int64_t shape[TG_MAX_DIMS];
  int64_t numel;
  double *values;
} ref_tensor;

typedef struct {
  char name[128];
  ref_tensor *tensors;
  int n;
} ref_case;

struct ref_file {
  ref_case *cases;
  int n;
  int last; /* case of the last lookup: tests read one case's labels in a row */
};

void *read_file_or_null(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  if (buf) {
    buf[n] = '\0';
    if (len)
      *len = (size_t)n;
  }
  fclose(f);
  return buf;
}

void *read_file(const char *path, size_t *len) {
  void *buf = read_file_or_null(path, len);
  if (!buf)
    fail_msg("cannot read %s", path);
  return buf;
}

ref_file *ref_open(const char *family) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.txt", TG_TEST_DATA, family);
  char *text = read_file_or_null(path, NULL);
  if (!text)
    fail_msg("reference data %s is missing (run tests/ref/gen_%s.py)", path, family);
  ref_file *f = calloc(1, sizeof *f);
  char *p = text, *end;
  ref_case *cur = NULL;
  char word[64];
  int used;
  while (sscanf(p, " %63s%n", word, &used) == 1) {
    p += used;
    if (!strcmp(word, "case")) {
      f->cases = realloc(f->cases, (size_t)(f->n + 1) * sizeof *f->cases);
      cur = &f->cases[f->n++];
      memset(cur, 0, sizeof *cur);
      if (sscanf(p, " %127s%n", cur->name, &used) != 1)
        fail_msg("%s: case without a name", path);
      p += used;
    } else if (!strcmp(word, "tensor")) {
      if (!cur)
        fail_msg("%s: tensor outside a case", path);
      cur->tensors = realloc(cur->tensors, (size_t)(cur->n + 1) * sizeof *cur->tensors);
      ref_tensor *t = &cur->tensors[cur->n++];
      memset(t, 0, sizeof *t);
      char dt[16];
      if (sscanf(p, " %63s %15s %d%n", t->label, dt, &t->ndim, &used) != 3)
        fail_msg("%s: bad tensor line in case %s", path, cur->name);
      p += used;
      t->dtype = !strcmp(dt, "i64") ? TG_I64 : TG_F64;
      /* f32: values written as float32, read back exactly as float32. */
      bool f32 = !strcmp(dt, "f32");
      t->numel = 1;
      for (int i = 0; i < t->ndim; i++) {
        t->shape[i] = strtoll(p, &end, 10);
        p = end;
        t->numel *= t->shape[i];
      }
      t->values = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(double));
      for (int64_t i = 0; i < t->numel; i++) {
        t->values[i] = f32 ? (double)strtof(p, &end) : strtod(p, &end);
        if (end == p)
          fail_msg("%s: too few values for %s/%s", path, cur->name, t->label);
        p = end;
      }
    } else if (!strcmp(word, "note")) {
      if (!cur)
        fail_msg("%s: note outside a case", path);
      cur->tensors = realloc(cur->tensors, (size_t)(cur->n + 1) * sizeof *cur->tensors);
      ref_tensor *t = &cur->tensors[cur->n++];
      memset(t, 0, sizeof *t);
      if (sscanf(p, " %63s%n", t->label, &used) != 1)
        fail_msg("%s: note without a label in case %s", path, cur->name);
      p += used + strspn(p + used, " \t");
      size_t len = strcspn(p, "\n");
      t->note = strndup(p, len);
      p += len;
    } else if (!strcmp(word, "end")) {
      cur = NULL;
    } else {
      fail_msg("%s: unexpected word '%s'", path, word);
    }
  }
  free(text);
  return f;
}

void ref_close(ref_file *f) {
  if (!f)
    return;
  for (int i = 0; i < f->n; i++) {
    for (int k = 0; k < f->cases[i].n; k++) {
      free(f->cases[i].tensors[k].values);
      free(f->cases[i].tensors[k].note);
    }
    free(f->cases[i].tensors);
  }
  free(f->cases);
  free(f);
}

int ref_num_cases(ref_file *f) { return f->n; }
const char *ref_case_name(ref_file *f, int i) { return f->cases[i].name; }

static ref_tensor *find_in(ref_case *c, const char *label, bool note) {
  for (int k = 0; k < c->n; k++)
    if (!strcmp(c->tensors[k].label, label) && !c->tensors[k].note == !note)
      return &c->tensors[k];
  return NULL;
}

static ref_case *find_case(ref_file *f, const char *case_name) {
  if (f->last < f->n && !strcmp(f->cases[f->last].name, case_name))
    return &f->cases[f->last];
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->cases[i].name, case_name))
      return &f->cases[f->last = i];
  return NULL;
}

static ref_tensor *find(ref_file *f, const char *case_name, const char *label) {
  ref_case *c = find_case(f, case_name);
  return c ? find_in(c, label, false) : NULL;
}

const char *ref_note(ref_file *f, const char *case_name, const char *label) {
  ref_case *c = find_case(f, case_name);
  ref_tensor *t = c ? find_in(c, label, true) : NULL;
  return t ? t->note : NULL;
}

tg_dtype ref_dtype(ref_file *f, const char *case_name, const char *label) {
  ref_tensor *r = find(f, case_name, label);
  if (!r)
    fail_msg("reference %s/%s not found", case_name, label);
  return r->dtype;
}

int ref_has(ref_file *f, const char *case_name, const char *label) {
  return find(f, case_name, label) != NULL;
}

tg_tensor *ref_get(ref_file *f, const char *case_name, const char *label,
                   tg_dtype dtype) {
  ref_tensor *r = find(f, case_name, label);
  if (!r)
    fail_msg("reference %s/%s not found", case_name, label);
  tg_tensor *t = tg_empty(r->shape, r->ndim, dtype, TG_CPU);
  assert_non_null(t);
  void *d = tg_data(t);
  for (int64_t i = 0; i < r->numel; i++) {
    if (dtype == TG_F32)
      ((float *)d)[i] = (float)r->values[i];
    else if (dtype == TG_F64)
      ((double *)d)[i] = r->values[i];
    else
      ((int64_t *)d)[i] = (int64_t)r->values[i];
  }
  return t;
}

static double get(const tg_tensor *t, int64_t i) {
  const void *d = tg_data((tg_tensor *)t);
  switch (tg_dtype_of(t)) {
  case TG_F32:
    return ((const float *)d)[i];
  case TG_F64:
    return ((const double *)d)[i];
  default:
    return (double)((const int64_t *)d)[i];
  }
}

void assert_close_impl(const tg_tensor *a, const tg_tensor *b, double atol, double rtol,
                       const char *what, const char *file, int line) {
  char sa[128], sb[128];
  if (!a || !b) {
    print_error("%s:%d: %s: NULL tensor (%s)\n", file, line, what, tg_last_error());
    _fail(file, line);
  }
  int same = tg_numel(a) == tg_numel(b);
  if (same && tg_ndim(a) == tg_ndim(b))
    for (int i = 0; i < tg_ndim(a); i++)
      same &= tg_shape(a)[i] == tg_shape(b)[i];
  else if (same)
    same = 0;
  if (!same) {
    print_error("%s:%d: %s: shapes %s and %s differ\n", file, line, what,
                tg_shape_str(a, sa, sizeof sa), tg_shape_str(b, sb, sizeof sb));
    _fail(file, line);
  }
  double worst = 0;
  int64_t wi = -1;
  for (int64_t i = 0; i < tg_numel(a); i++) {
    double x = get(a, i), y = get(b, i);
    double excess = fabs(x - y) - (atol + rtol * fabs(y));
    if (isnan(x) != isnan(y))
      excess = INFINITY;
    if (excess > worst) {
      worst = excess;
      wi = i;
    }
  }
  if (wi >= 0) {
    print_error("%s:%d: %s: element %lld of %s: %.10g vs %.10g (atol %g rtol %g)\n", file,
                line, what, (long long)wi, tg_shape_str(a, sa, sizeof sa), get(a, wi),
                get(b, wi), atol, rtol);
    _fail(file, line);
  }
}

void assert_error_impl(int failed, const char *file, int line, ...) {
  if (!failed) {
    print_error("%s:%d: expected the call to fail, but it succeeded\n", file, line);
    _fail(file, line);
  }
  const char *msg = tg_last_error();
  va_list ap;
  va_start(ap, line);
  const char *frag;
  while ((frag = va_arg(ap, const char *))) {
    if (!strstr(msg, frag)) {
      print_error("%s:%d: error message \"%s\" lacks \"%s\"\n", file, line, msg, frag);
      va_end(ap);
      _fail(file, line);
    }
  }
  va_end(ap);
  tg_clear_error();
}

tg_tensor *rand_leaf(const int64_t *shape, int ndim, tg_dtype dtype) {
  tg_tensor *t = tg_randn(shape, ndim, dtype, TG_CPU);
  assert_non_null(t);
  assert_int_equal(tg_set_requires_grad(t, true), 0);
  return t;
}

tg_tensor *rand_labels(const int64_t *shape, int ndim, int64_t classes) {
  tg_tensor *u = tg_rand(shape, ndim, TG_F64, TG_CPU);
  assert_non_null(u);
  int64_t *labels = malloc((size_t)(tg_numel(u) > 0 ? tg_numel(u) : 1) * sizeof *labels);
  assert_non_null(labels);
  for (int64_t i = 0; i < tg_numel(u); i++)
    labels[i] = (int64_t)(((const double *)tg_data(u))[i] * (double)classes);
  tg_tensor *y = tg_tensor_from_data(labels, shape, ndim, TG_I64, TG_CPU);
  free(labels);
  tg_tensor_free(u);
  assert_non_null(y);
  return y;
}

void gradcheck_ok(tg_gradcheck_fn fn, void *ctx, tg_tensor *const *inputs, int n) {
  if (tg_gradcheck(fn, ctx, inputs, n, NULL) != 0)
    fail_msg("%s", tg_last_error());
}

void ref_check_one_input(ref_file *f, const char *name, tg_dtype dtype, double tol,
                         tg_gradcheck_fn fn, void *ctx) {
  tg_scope_begin();
  tg_tensor *x = ref_get(f, name, "x", dtype);
  assert_ok(tg_set_requires_grad(x, true) == 0);
  tg_tensor *y = fn(&x, 1, ctx);
  assert_ok(y);
  assert_close(y, ref_get(f, name, "y", dtype), tol, tol);
  assert_ok(tg_backward_ex(y, ref_get(f, name, "gy", dtype), false) == 0);
  assert_close(tg_grad(x), ref_get(f, name, "dx", dtype), tol, tol);
  tg_no_grad_begin(); /* the untaped path (max pool skips its indices): same values */
  assert_close(fn(&x, 1, ctx), y, 0, 0);
  tg_no_grad_end();
  if (dtype == TG_F64) {
    tg_tensor *fresh = rand_leaf(tg_shape(x), tg_ndim(x), TG_F64);
    gradcheck_ok(fn, ctx, &fresh, 1);
  }
  assert_int_equal(tg_scope_end(), 0);
}

void cuda_suite_filter(void) {
  const char *filter = getenv("TG_TEST_FILTER");
  if (filter && *filter)
    cmocka_set_test_filter(filter);
}

int cuda_suite_exit(int rc) {
  tg_empty_cache();
  return rc == 0 && !tg_cuda_is_available() ? 77 : rc;
}

tg_tensor *cuda_leaf(const tg_tensor *h) {
  tg_no_grad_begin();
  tg_tensor *d = tg_tensor_to(h, tg_cuda(0));
  tg_no_grad_end();
  if (d && tg_requires_grad(h))
    tg_set_requires_grad(d, true);
  return d;
}

double cuda_nmse(const tg_tensor *dev, const tg_tensor *cpu, int64_t *worst, double *got,
                 double *want) {
  *worst = -1;
  if (tg_ndim(dev) != tg_ndim(cpu) || tg_numel(dev) != tg_numel(cpu))
    return NAN;
  for (int i = 0; i < tg_ndim(cpu); i++)
    if (tg_shape(dev)[i] != tg_shape(cpu)[i])
      return NAN;
  const int64_t n = tg_numel(cpu);
  tg_tensor *a = tg_to_dtype(tg_tensor_to(dev, TG_CPU), TG_F64);
  tg_tensor *b = tg_to_dtype(cpu, TG_F64);
  assert_ok(a && b);
  const double *pa = tg_data(a), *pb = tg_data(b);
  double num = 0, den = 0, big = -1;
  for (int64_t i = 0; i < n; i++) {
    const double d = pa[i] - pb[i];
    if (!isfinite(pa[i]) || !isfinite(pb[i])) {
      *worst = i;
      *got = pa[i];
      *want = pb[i];
      return NAN;
    }
    num += d * d;
    den += pb[i] * pb[i];
    if (fabs(d) > big) {
      big = fabs(d);
      *worst = i;
      *got = pa[i];
      *want = pb[i];
    }
  }
  return n == 0 ? 0 : den > 0 ? num / den : num;
}

int test_setup(void **state) {
  (void)state;
  tg_manual_seed(1234);
  tg_clear_error();
  return 0;
}
