/* safetensors checkpoints: of a var store, or of any named tensors (tg_tensor_dict).
 *
 * Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
 *   {"__metadata__": {str: str} (optional),
 *    "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
 * padded with spaces to a multiple of 8, then the little-endian data buffer, each
 * tensor at [begin, end) of it. We write what the safetensors package writes, byte for
 * byte: tensors ordered by dtype (I64, F64, F32: its enum order, descending) then by
 * name, the header in that order, __metadata__ first when there is any.
 *
 * Loading parses the header with a strict, schema-driven parser (no recursion, every
 * read bounded by the header length), validates the whole file against itself, reads
 * the tensors the options select into a dict (F16/BF16 widened to float32, exactly),
 * matches that against the store and converts dtypes where allowed, and only then
 * writes into the variables: a bad file is an error that leaves the store as it was. */
#include "nn/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER_BYTES (100u << 20) /* as safetensors' own limit */
#define MAX_FILE_DIMS 64

/* ---------------------------------------------------------------- dtypes -- */

/* Every dtype safetensors names, with its element size; only three map to ours. */
static const struct {
  const char *name;
  size_t size;
} st_dtypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
    {"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8},     {"C64", 8},
};
#define N_ST_DTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

static const char *st_name(tg_dtype d) {
  return d == TG_F32 ? "F32" : d == TG_F64 ? "F64" : "I64";
}

static int st_lookup(const char *name) {
  for (int i = 0; i < N_ST_DTYPES; i++)
    if (!strcmp(st_dtypes[i].name, name))
      return i;
  return -1;
}

/* Position in safetensors' Dtype enum among the dtypes we write. */
static int st_rank(tg_dtype d) { return d == TG_F32 ? 0 : d == TG_F64 ? 1 : 2; }

static bool host_is_little_endian(void) {
  const uint16_t one = 1;
  return *(const uint8_t *)&one == 1;
}

/* Little-endian bytes <-> host order, in place (a no-op on little-endian hosts). */
static void to_little_endian(void *data, size_t bytes, size_t elem) {
  if (host_is_little_endian() || elem == 1)
    return;
  uint8_t *p = data;
  for (size_t i = 0; i + elem <= bytes; i += elem)
    for (size_t a = 0, b = elem - 1; a < b; a++, b--) {
      uint8_t t = p[i + a];
      p[i + a] = p[i + b];
      p[i + b] = t;
    }
}

/* ------------------------------------------------------------------ saving -- */

typedef struct {
  char *s;
  size_t len, cap;
  bool oom;
} strbuf;

static void sb_add(strbuf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->s, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->s = p;
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = '\0';
}

static void sb_str(strbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_fmt(strbuf *b, const char *fmt, long long v) {
  char tmp[32];
  int n = snprintf(tmp, sizeof tmp, fmt, v);
  sb_add(b, tmp, (size_t)n);
}

/* A JSON string escaped as serde_json does (so our headers match safetensors'). */
static void sb_json_string(strbuf *b, const char *s) {
  sb_add(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    const char *esc = NULL;
    char u[8];
    switch (*p) {
    case '"':
      esc = "\\\"";
      break;
    case '\\':
      esc = "\\\\";
      break;
    case '\b':
      esc = "\\b";
      break;
    case '\f':
      esc = "\\f";
      break;
    case '\n':
      esc = "\\n";
      break;
    case '\r':
      esc = "\\r";
      break;
    case '\t':
      esc = "\\t";
      break;
    default:
      if (*p < 0x20) {
        snprintf(u, sizeof u, "\\u%04x", *p);
        esc = u;
      }
    }
    if (esc)
      sb_str(b, esc);
    else
      sb_add(b, (const char *)p, 1);
  }
  sb_add(b, "\"", 1);
}

static int by_dtype_then_name(const void *pa, const void *pb) {
  const tg__var *a = *(const tg__var *const *)pa, *b = *(const tg__var *const *)pb;
  int ra = st_rank(a->t->dtype), rb = st_rank(b->t->dtype);
  if (ra != rb)
    return rb - ra;
  return strcmp(a->name, b->name);
}

/* vars[0..n) in file order (a new array). */
static const tg__var **file_order(const tg__var *vars, int n) {
  const tg__var **order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
  if (!order)
    return NULL;
  for (int i = 0; i < n; i++)
    order[i] = &vars[i];
  qsort(order, (size_t)n, sizeof *order, by_dtype_then_name);
  return order;
}

static int write_all(FILE *f, const void *p, size_t n) {
  return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -1;
}

/* Writes header (with meta's __metadata__ when it has any) and data to f. */
static int write_file(const tg__var **order, int n, const tg_tensor_dict *meta, FILE *f,
                      const char *filename, const char *op) {
  char q[TG_QUOTE_LEN];
  strbuf h = {0};
  uint64_t offset = 0;
  sb_add(&h, "{", 1);
  if (meta && meta->n_meta) {
    sb_str(&h, "\"__metadata__\":{");
    for (int i = 0; i < 2 * meta->n_meta; i++) {
      if (i)
        sb_add(&h, i % 2 ? ":" : ",", 1);
      sb_json_string(&h, meta->meta[i]);
    }
    sb_add(&h, n ? "}," : "}", n ? 2 : 1);
  }
  for (int k = 0; k < n; k++) {
    const tg__var *v = order[k];
    uint64_t bytes = (uint64_t)v->t->numel * tg_dtype_size(v->t->dtype);
    if (k)
      sb_add(&h, ",", 1);
    sb_json_string(&h, v->name);
    sb_str(&h, ":{\"dtype\":\"");
    sb_str(&h, st_name(v->t->dtype));
    sb_str(&h, "\",\"shape\":[");
    for (int d = 0; d < v->t->ndim; d++)
      sb_fmt(&h, d ? ",%lld" : "%lld", (long long)v->t->shape[d]);
    sb_fmt(&h, "],\"data_offsets\":[%lld,", (long long)offset);
    sb_fmt(&h, "%lld]}", (long long)(offset + bytes));
    offset += bytes;
  }
  sb_add(&h, "}", 1);
  while (!h.oom && h.len % 8)
    sb_add(&h, " ", 1);
  if (h.oom) {
    free(h.s);
    return tg__error("%s: out of memory", op);
  }
  uint8_t len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
  int rc = 0;
  if (write_all(f, len8, 8) < 0 || write_all(f, h.s, h.len) < 0)
    rc = tg__error("%s: writing %s failed: %s", op, tg__quote(filename, q, sizeof q),
                   strerror(errno));
  free(h.s);

  void *tmp = NULL; /* host copy for non-CPU tensors and big-endian hosts */
  for (int k = 0; rc == 0 && k < n; k++) {
    const tg_tensor *t = order[k]->t;
    size_t esize = tg_dtype_size(t->dtype), bytes = (size_t)t->numel * esize;
    const void *src = tg__data(t);
    if (t->device.type != TG_DEVICE_CPU || !host_is_little_endian()) {
      free(tmp);
      tmp = malloc(bytes ? bytes : 1);
      if (!tmp) {
        rc = tg__error("%s: out of memory", op);
        break;
      }
      if (tg_tensor_copy_to_host(t, tmp, bytes) < 0) {
        rc = -1;
        break;
      }
      to_little_endian(tmp, bytes, esize);
      src = tmp;
    }
    if (write_all(f, src, bytes) < 0)
      rc = tg__error("%s: writing %s failed: %s", op, tg__quote(filename, q, sizeof q),
                     strerror(errno));
  }
  free(tmp);
  return rc;
}

static int check_utf8(const char *s, const char *what, const char *op) {
  if (tg__valid_utf8((const uint8_t *)s, strlen(s), NULL))
    return 0;
  char q[TG_QUOTE_LEN];
  return tg__error("%s: %s %s is not valid UTF-8, which safetensors requires", op, what,
                   tg__quote(s, q, sizeof q));
}

/* A tensor name a file can hold and give back: var stores check theirs when a variable
 * is created, tensor dicts only here. */
static int check_name(const char *s, const char *op) {
  if (!s[0])
    return tg__error("%s: tensor names must not be empty", op);
  if (!strcmp(s, "__metadata__"))
    return tg__error("%s: the name '__metadata__' is reserved (safetensors keeps the "
                     "file's metadata under it); choose another tensor name",
                     op);
  return check_utf8(s, "tensor name", op);
}

typedef struct {
  const tg__var **order;
  int n;
  const tg_tensor_dict *meta;
  const char *filename, *op;
} save_job;

static int write_job(FILE *f, void *ctx) {
  const save_job *j = ctx;
  return write_file(j->order, j->n, j->meta, f, j->filename, j->op);
}

/* Writes vars[0..n) and meta's __metadata__ (meta may be NULL) to filename. Names
 * made by a var store are valid already; a dict's are checked here. */
static int save_entries(const tg__var *vars, int n, const tg_tensor_dict *meta,
                        const char *filename, const char *op) {
  for (int i = 0; i < n; i++)
    if (check_name(vars[i].name, op) < 0)
      return -1;
  for (int i = 0; meta && i < 2 * meta->n_meta; i++)
    if (check_utf8(meta->meta[i], "metadata string", op) < 0)
      return -1;
  const tg__var **order = file_order(vars, n);
  if (!order)
    return tg__error("%s: out of memory", op);
  save_job job = {order, n, meta, filename, op};
  int rc = tg__write_atomic(filename, op, write_job, &job);
  free((void *)order);
  return rc;
}

int tg_varstore_save(const tg_varstore *vs, const char *filename) {
  if (!vs || !filename)
    return tg__error("tg_varstore_save: argument '%s' is NULL", vs ? "filename" : "vs");
  return save_entries(vs->vars, vs->n_vars, NULL, filename, "tg_varstore_save");
}

int tg_save_tensors(const tg_tensor_dict *d, const char *filename) {
  const char *op = "tg_save_tensors";
  if (!d || !filename)
    return tg__error("%s: argument '%s' is NULL", op, d ? "filename" : "d");
  tg__var *vars = malloc((size_t)(d->n > 0 ? d->n : 1) * sizeof *vars);
  if (!vars)
    return tg__error("%s: out of memory", op);
  for (int i = 0; i < d->n; i++)
    vars[i] = (tg__var){d->items[i].name, d->items[i].t, false};
  int rc = save_entries(vars, d->n, d, filename, op);
  free(vars);
  return rc;
}

/* ----------------------------------------------------------------- parsing -- */

typedef struct {
  char *name;
  int dtype; /* index in st_dtypes */
  int ndim;
  int64_t shape[MAX_FILE_DIMS];
  uint64_t begin, end;
} st_entry;

typedef struct {
  const char *start, *p, *end;
  st_entry *entries;
  int n, cap;
  tg_tensor_dict *meta; /* receives __metadata__, when non-NULL */
  char err[512];
} parser;

/* The reason a file is invalid, into ps->err; returns -1. */
static int invalid(parser *ps, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int invalid(parser *ps, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ps->err, sizeof ps->err, fmt, ap);
  va_end(ap);
  return -1;
}

/* As invalid(), for the parser, adding where in the header it stopped. */
static int fail(parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(parser *ps, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(ps->err, sizeof ps->err, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < sizeof ps->err)
    snprintf(ps->err + n, sizeof ps->err - (size_t)n, " (header byte %lld)",
             (long long)(ps->p - ps->start));
  return -1;
}

static void skip_ws(parser *ps) {
  while (ps->p < ps->end &&
         (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static int expect(parser *ps, char c) {
  skip_ws(ps);
  if (ps->p >= ps->end)
    return fail(ps, "invalid JSON: unexpected end of the header, expected '%c'", c);
  if (*ps->p != c)
    return fail(ps, "invalid JSON: expected '%c'", c);
  ps->p++;
  return 0;
}

/* Consumes c when it comes next (after whitespace). */
static bool accept(parser *ps, char c) {
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == c) {
    ps->p++;
    return true;
  }
  return false;
}

static int hex4(parser *ps, uint32_t *out) {
  if (ps->end - ps->p < 4)
    return fail(ps, "invalid JSON: truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char c = *ps->p++;
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0)
      return fail(ps, "invalid JSON: bad \\u escape");
    v = v << 4 | (uint32_t)d;
  }
  *out = v;
  return 0;
}

static void put_utf8(char **o, uint32_t cp) {
  unsigned char *q = (unsigned char *)*o;
  if (cp < 0x80) {
    *q++ = (unsigned char)cp;
  } else if (cp < 0x800) {
    *q++ = (unsigned char)(0xc0 | cp >> 6);
    *q++ = (unsigned char)(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    *q++ = (unsigned char)(0xe0 | cp >> 12);
    *q++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    *q++ = (unsigned char)(0x80 | (cp & 0x3f));
  } else {
    *q++ = (unsigned char)(0xf0 | cp >> 18);
    *q++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    *q++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    *q++ = (unsigned char)(0x80 | (cp & 0x3f));
  }
  *o = (char *)q;
}

/* A JSON string, unescaped into a new allocation (never longer than its source). The
 * header was checked to be UTF-8, and escapes produce valid UTF-8. NUL characters are
 * refused: names are C strings. */
static int parse_string(parser *ps, char **out) {
  *out = NULL;
  if (expect(ps, '"') < 0)
    return -1;
  const char *q = ps->p;
  while (q < ps->end && *q != '"')
    q += *q == '\\' && q + 1 < ps->end ? 2 : 1;
  if (q >= ps->end)
    return fail(ps, "invalid JSON: unterminated string");
  char *s = malloc((size_t)(q - ps->p) + 1), *o = s;
  if (!s)
    return fail(ps, "out of memory");
  while (*ps->p != '"') {
    unsigned char c = (unsigned char)*ps->p++;
    if (c < 0x20) {
      free(s);
      ps->p--;
      return fail(ps, "invalid JSON: control character in a string");
    }
    if (c != '\\') {
      *o++ = (char)c;
      continue;
    }
    char e = *ps->p++;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (e && simple) {
      *o++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
      continue;
    }
    uint32_t cp, lo = 0;
    if (e != 'u' || hex4(ps, &cp) < 0) {
      if (e != 'u')
        fail(ps, "invalid JSON: unknown escape in a string");
      free(s);
      return -1;
    }
    bool high = cp >= 0xd800 && cp < 0xdc00; /* needs a low half next */
    bool paired = high && ps->end - ps->p >= 2 && ps->p[0] == '\\' && ps->p[1] == 'u';
    if (paired) {
      ps->p += 2;
      paired = hex4(ps, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff;
      cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if ((high && !paired) || (cp >= 0xdc00 && cp <= 0xdfff)) {
      free(s);
      return fail(ps, "invalid JSON: lone surrogate in a \\u escape");
    }
    if (cp == 0) {
      free(s);
      return fail(ps, "names and metadata must not contain NUL characters");
    }
    put_utf8(&o, cp);
  }
  ps->p++; /* closing quote */
  *o = '\0';
  *out = s;
  return 0;
}

/* A non-negative integer as safetensors' usize: digits only, no sign, fraction,
 * exponent or leading zeros. */
static int parse_uint(parser *ps, uint64_t *out) {
  skip_ws(ps);
  const char *s = ps->p;
  uint64_t v = 0;
  while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
    unsigned d = (unsigned)(*ps->p - '0');
    if (v > (UINT64_MAX - d) / 10)
      return fail(ps, "integer too large");
    v = v * 10 + d;
    ps->p++;
  }
  if (ps->p == s)
    return fail(ps, "expected a non-negative integer");
  if (ps->p - s > 1 && *s == '0')
    return fail(ps, "a number with a leading zero");
  if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
    return fail(ps, "expected an integer, found a floating point number");
  *out = v;
  return 0;
}

/* Tensor e's entry breaks the schema in a value that starts at `at`: names the tensor
 * and the rule, then why (a sub-parser's message in ps->err, when `detail`) or what
 * was found there. */
static int schema_fail(parser *ps, const st_entry *e, const char *at, const char *rule,
                       bool detail) {
  char q[TG_QUOTE_LEN], qf[TG_QUOTE_LEN], found[32], why[sizeof ps->err + 8];
  if (detail) {
    snprintf(why, sizeof why, ": %s", ps->err);
  } else {
    size_t n = ps->end - at < 24 ? (size_t)(ps->end - at) : 24;
    memcpy(found, at, n);
    found[n] = '\0';
    snprintf(why, sizeof why, ", found %s%s (header byte %lld)",
             n ? tg__quote(found, qf, sizeof qf) : "the end of the header",
             at + n < ps->end ? "..." : "", (long long)(at - ps->start));
  }
  return invalid(ps, "tensor %s: %s%s", tg__quote(e->name, q, sizeof q), rule, why);
}

/* [n, ...] of non-negative integers that fit int64_t. */
static int parse_shape(parser *ps, st_entry *e) {
  static const char rule[] = "shape must be a list of non-negative integers";
  char q[TG_QUOTE_LEN];
  skip_ws(ps);
  const char *at = ps->p;
  if (!accept(ps, '['))
    return schema_fail(ps, e, at, rule, false);
  if (accept(ps, ']'))
    return 0;
  do {
    uint64_t v;
    if (e->ndim == MAX_FILE_DIMS)
      return fail(ps, "tensor %s: more than %d dimensions",
                  tg__quote(e->name, q, sizeof q), MAX_FILE_DIMS);
    if (parse_uint(ps, &v) < 0)
      return schema_fail(ps, e, at, rule, true);
    if (v > INT64_MAX)
      return fail(ps, "tensor %s: dimension too large", tg__quote(e->name, q, sizeof q));
    e->shape[e->ndim++] = (int64_t)v;
  } while (accept(ps, ','));
  return accept(ps, ']') ? 0 : schema_fail(ps, e, at, rule, false);
}

/* [begin, end] */
static int parse_offsets(parser *ps, st_entry *e) {
  static const char rule[] = "data_offsets must be [begin, end]";
  skip_ws(ps);
  const char *at = ps->p;
  if (!accept(ps, '['))
    return schema_fail(ps, e, at, rule, false);
  if (parse_uint(ps, &e->begin) < 0)
    return schema_fail(ps, e, at, rule, true);
  if (!accept(ps, ','))
    return schema_fail(ps, e, at, rule, false);
  if (parse_uint(ps, &e->end) < 0)
    return schema_fail(ps, e, at, rule, true);
  return accept(ps, ']') ? 0 : schema_fail(ps, e, at, rule, false);
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]}: each key exactly once. */
static int parse_info(parser *ps, st_entry *e) {
  enum { DTYPE = 1, SHAPE = 2, OFFSETS = 4 };
  int seen = 0;
  char q[TG_QUOTE_LEN], qk[TG_QUOTE_LEN];
  skip_ws(ps);
  const char *at = ps->p;
  if (!accept(ps, '{'))
    return schema_fail(ps, e, at,
                       "expected an object {\"dtype\": ..., \"shape\": [...], "
                       "\"data_offsets\": [begin, end]}",
                       false);
  do {
    char *key;
    if (parse_string(ps, &key) < 0 || expect(ps, ':') < 0) {
      free(key);
      return -1;
    }
    int which = !strcmp(key, "dtype")          ? DTYPE
                : !strcmp(key, "shape")        ? SHAPE
                : !strcmp(key, "data_offsets") ? OFFSETS
                                               : 0;
    if (!which || (seen & which)) {
      fail(ps, "tensor %s: %s key %s (expected dtype, shape and data_offsets)",
           tg__quote(e->name, q, sizeof q), which ? "repeated" : "unknown",
           tg__quote(key, qk, sizeof qk));
      free(key);
      return -1;
    }
    free(key);
    seen |= which;
    if (which == DTYPE) {
      char *dt;
      skip_ws(ps);
      at = ps->p;
      if (at >= ps->end || *at != '"')
        return schema_fail(ps, e, at, "dtype must be a string such as \"F32\"", false);
      if (parse_string(ps, &dt) < 0)
        return -1;
      e->dtype = st_lookup(dt);
      if (e->dtype < 0)
        fail(ps, "tensor %s: unknown dtype %s", tg__quote(e->name, q, sizeof q),
             tg__quote(dt, qk, sizeof qk));
      free(dt);
      if (e->dtype < 0)
        return -1;
    } else if (which == SHAPE) {
      if (parse_shape(ps, e) < 0)
        return -1;
    } else if (parse_offsets(ps, e) < 0) {
      return -1;
    }
  } while (accept(ps, ','));
  if (expect(ps, '}') < 0)
    return -1;
  if (seen != (DTYPE | SHAPE | OFFSETS))
    return fail(ps, "tensor %s lacks one of dtype, shape, data_offsets",
                tg__quote(e->name, q, sizeof q));
  return 0;
}

/* {str: str, ...} */
static int parse_metadata(parser *ps) {
  if (!accept(ps, '{'))
    return fail(ps, "__metadata__ must be an object of strings, expected '{'");
  if (accept(ps, '}'))
    return 0;
  do {
    char *k = NULL, *v = NULL;
    int rc = parse_string(ps, &k);
    if (rc == 0)
      rc = expect(ps, ':');
    skip_ws(ps);
    if (rc == 0 && (ps->p >= ps->end || *ps->p != '"'))
      rc = fail(ps, "__metadata__ values must be strings");
    if (rc == 0)
      rc = parse_string(ps, &v);
    if (rc == 0 && ps->meta && tg_tensor_dict_set_metadata(ps->meta, k, v) < 0)
      rc = fail(ps, "out of memory");
    free(k);
    free(v);
    if (rc < 0)
      return -1;
  } while (accept(ps, ','));
  return expect(ps, '}');
}

static int parse_header(parser *ps) {
  bool metadata = false;
  if (!accept(ps, '{'))
    return fail(ps, "the header must be a JSON object, expected '{'");
  if (!accept(ps, '}')) {
    do {
      char *name;
      if (parse_string(ps, &name) < 0)
        return -1;
      if (expect(ps, ':') < 0) {
        free(name);
        return -1;
      }
      if (!strcmp(name, "__metadata__")) {
        free(name);
        if (metadata)
          return fail(ps, "__metadata__ appears twice");
        metadata = true;
        if (parse_metadata(ps) < 0)
          return -1;
        continue;
      }
      if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 64;
        st_entry *p = realloc(ps->entries, (size_t)cap * sizeof *p);
        if (!p) {
          free(name);
          return fail(ps, "out of memory");
        }
        ps->entries = p;
        ps->cap = cap;
      }
      st_entry *e = &ps->entries[ps->n++];
      memset(e, 0, sizeof *e);
      e->name = name;
      if (parse_info(ps, e) < 0)
        return -1;
    } while (accept(ps, ','));
    if (expect(ps, '}') < 0)
      return -1;
  }
  skip_ws(ps);
  if (ps->p != ps->end)
    return fail(ps, "invalid JSON: trailing characters after the header object");
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}

static int by_offsets(const void *pa, const void *pb) {
  const st_entry *a = *(st_entry *const *)pa, *b = *(st_entry *const *)pb;
  if (a->begin != b->begin)
    return a->begin < b->begin ? -1 : 1;
  return a->end < b->end ? -1 : a->end > b->end;
}

/* The file's own consistency: unique names, byte sizes equal to data_offsets, and
 * offsets that tile the data buffer exactly, without overlap or gaps. Leaves the
 * entries sorted by name. */
static int check_entries(parser *ps, uint64_t data_bytes) {
  typedef unsigned long long ull;
  char q[TG_QUOTE_LEN];
  if (ps->n > 1)
    qsort(ps->entries, (size_t)ps->n, sizeof *ps->entries, by_name);
  for (int i = 1; i < ps->n; i++)
    if (!strcmp(ps->entries[i].name, ps->entries[i - 1].name))
      return invalid(ps, "duplicate tensor name %s",
                     tg__quote(ps->entries[i].name, q, sizeof q));
  for (int i = 0; i < ps->n; i++) {
    st_entry *e = &ps->entries[i];
    uint64_t numel = 1, esize = st_dtypes[e->dtype].size;
    bool overflow = false;
    for (int d = 0; d < e->ndim; d++) {
      uint64_t s = (uint64_t)e->shape[d];
      if (s && numel > UINT64_MAX / s)
        overflow = true;
      else
        numel *= s;
    }
    overflow = overflow || numel > UINT64_MAX / esize;
    if (e->end < e->begin)
      return invalid(ps,
                     "tensor %s: data_offsets [%llu, %llu] end before they "
                     "begin",
                     tg__quote(e->name, q, sizeof q), (ull)e->begin, (ull)e->end);
    if (overflow || numel * esize != e->end - e->begin) {
      char sh[TG_SHAPE_STR_LEN], need[32] = "more than 2^64";
      tg__shape_fmt(e->shape, e->ndim < TG_MAX_DIMS ? e->ndim : TG_MAX_DIMS, sh,
                    sizeof sh);
      if (!overflow)
        snprintf(need, sizeof need, "%llu", (ull)(numel * esize));
      return invalid(ps,
                     "tensor %s: shape %s%s of %s needs %s bytes but "
                     "data_offsets [%llu, %llu] span %llu",
                     tg__quote(e->name, q, sizeof q), sh,
                     e->ndim > TG_MAX_DIMS ? "..." : "", st_dtypes[e->dtype].name, need,
                     (ull)e->begin, (ull)e->end, (ull)(e->end - e->begin));
    }
    if (e->end > data_bytes)
      return invalid(ps,
                     "tensor %s: data_offsets [%llu, %llu] run past the end "
                     "of the %llu-byte data buffer",
                     tg__quote(e->name, q, sizeof q), (ull)e->begin, (ull)e->end,
                     (ull)data_bytes);
  }
  st_entry **by_off = malloc((size_t)(ps->n > 0 ? ps->n : 1) * sizeof *by_off);
  if (!by_off)
    return invalid(ps, "out of memory");
  for (int i = 0; i < ps->n; i++)
    by_off[i] = &ps->entries[i];
  qsort(by_off, (size_t)ps->n, sizeof *by_off, by_offsets);
  uint64_t next = 0;
  int rc = 0;
  for (int i = 0; i < ps->n && rc == 0; i++) {
    const st_entry *e = by_off[i];
    if (e->begin != next)
      rc = invalid(ps,
                   "tensor %s: data_offsets [%llu, %llu] %s (the tensors "
                   "before it end at %llu)",
                   tg__quote(e->name, q, sizeof q), (ull)e->begin, (ull)e->end,
                   e->begin < next ? "overlap another tensor" : "leave a gap", (ull)next);
    next = e->end;
  }
  free(by_off);
  if (rc == 0 && next != data_bytes)
    rc = invalid(ps, "the tensors cover %llu bytes but the data buffer holds %llu",
                 (ull)next, (ull)data_bytes);
  return rc;
}

/* ----------------------------------------------------------------- loading -- */

/* A list of names in an error message, cut short (with a count) when long. */
typedef struct {
  char text[600]; /* three lists fit in one error message */
  size_t len;
  int count, shown;
} name_list;

static void list_add(name_list *l, const char *item) {
  l->count++;
  size_t n = strlen(item);
  if (l->len + n + 2 >= sizeof l->text - 24)
    return;
  if (l->shown++) {
    memcpy(l->text + l->len, ", ", 2);
    l->len += 2;
  }
  memcpy(l->text + l->len, item, n + 1);
  l->len += n;
}

static void list_end(name_list *l) {
  if (l->count > l->shown)
    snprintf(l->text + l->len, sizeof l->text - l->len, "%s... (%d more)",
             l->shown ? ", " : "", l->count - l->shown);
}

/* The name a tensor called `name` loads as under o: without o->prefix, or NULL when
 * o leaves it out. */
static const char *selected(const char *name, const tg_load_options *o) {
  size_t n;
  if (o->exclude_prefix && (n = strlen(o->exclude_prefix)) &&
      !strncmp(name, o->exclude_prefix, n))
    return NULL;
  if (o->prefix && (n = strlen(o->prefix)))
    return strncmp(name, o->prefix, n) ? NULL : name + n;
  return name;
}

static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in float */
    float f = (float)man * 0x1p-24f;
    return sign ? -f : f;
  }
  uint32_t bits = sign | (exp == 31 ? 0x7f800000u : (exp + 112) << 23) | man << 13;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* A new tensor (out of every scope) holding entry e's little-endian bytes. */
static tg_tensor *entry_tensor(const st_entry *e, uint8_t *bytes, const char *op,
                               const char *filename) {
  const char *dt = st_dtypes[e->dtype].name;
  bool half = !strcmp(dt, "F16"), bf16 = !strcmp(dt, "BF16");
  tg_dtype dtype = !strcmp(dt, "F64") ? TG_F64 : !strcmp(dt, "I64") ? TG_I64 : TG_F32;
  char qf[TG_QUOTE_LEN], qn[TG_QUOTE_LEN];
  if (!half && !bf16 && strcmp(dt, st_name(dtype))) {
    tg__error("%s: %s: tensor %s has dtype %s, which tapegrad does not hold (it reads "
              "F16, BF16, F32, F64 and I64)",
              op, tg__quote(filename, qf, sizeof qf), tg__quote(e->name, qn, sizeof qn),
              dt);
    return NULL;
  }
  if (e->ndim > TG_MAX_DIMS) {
    tg__error("%s: %s: tensor %s has %d dimensions, more than the %d tapegrad holds", op,
              tg__quote(filename, qf, sizeof qf), tg__quote(e->name, qn, sizeof qn),
              e->ndim, TG_MAX_DIMS);
    return NULL;
  }
  tg_tensor *t = tg__unscope(tg_empty(e->shape, e->ndim, dtype, TG_CPU));
  if (!t)
    return NULL;
  size_t esize = st_dtypes[e->dtype].size, bytes_n = (size_t)(e->end - e->begin);
  to_little_endian(bytes, bytes_n, esize);
  if (half || bf16) {
    float *p = tg__data(t);
    for (int64_t i = 0; i < t->numel; i++) {
      uint16_t h;
      memcpy(&h, bytes + 2 * i, 2);
      p[i] = half ? half_to_float(h) : bf16_to_float(h);
    }
  } else if (bytes_n) {
    memcpy(tg__data(t), bytes, bytes_n);
  }
  return t;
}

static int read_exact(FILE *f, void *p, size_t n) {
  return n == 0 || fread(p, 1, n, f) == n ? 0 : -1;
}

/* Reads and checks all of filename, then the tensors o selects (under the names they
 * load as) and the metadata into a new dict. */
static tg_tensor_dict *read_file(const char *filename, const char *op,
                                 const tg_load_options *o) {
  int fd = tg_file_open_read(filename, op);
  FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
  if (!f) {
    if (fd >= 0) {
      close(fd);
      tg__error("%s: out of memory", op);
    }
    return NULL;
  }
  tg_tensor_dict *d = tg_tensor_dict_new();
  parser ps = {.meta = d};
  char q[TG_QUOTE_LEN], *header = NULL;
  uint8_t *data = NULL;
  int rc = -1;
  struct stat st;
  uint8_t len8[8];
  uint64_t hlen = 0;
  if (!d)
    goto done;
  if (fstat(fileno(f), &st) != 0) {
    tg__error("%s: cannot read %s: %s", op, tg__quote(filename, q, sizeof q),
              strerror(errno));
    goto done;
  }
  uint64_t fsize = (uint64_t)st.st_size;
  if (fsize < 8 || read_exact(f, len8, 8) < 0) {
    invalid(&ps, "the file has %llu bytes, fewer than the 8 of the header length",
            (unsigned long long)fsize);
    goto invalid;
  }
  for (int i = 0; i < 8; i++)
    hlen |= (uint64_t)len8[i] << (8 * i);
  if (hlen > MAX_HEADER_BYTES) {
    invalid(&ps, "header length %llu exceeds the limit of %u bytes",
            (unsigned long long)hlen, MAX_HEADER_BYTES);
    goto invalid;
  }
  if (hlen > fsize - 8) {
    invalid(&ps,
            "header length %llu runs past the end of the file (%llu bytes): "
            "truncated?",
            (unsigned long long)hlen, (unsigned long long)fsize);
    goto invalid;
  }
  header = malloc(hlen ? hlen : 1);
  if (!header) {
    tg__error("%s: out of memory for a %llu-byte header", op, (unsigned long long)hlen);
    goto done;
  }
  if (read_exact(f, header, hlen) < 0) {
    tg__error("%s: reading %s failed: %s", op, tg__quote(filename, q, sizeof q),
              strerror(errno));
    goto done;
  }
  size_t bad_at;
  if (!tg__valid_utf8((const uint8_t *)header, hlen, &bad_at)) {
    invalid(&ps, "the header is not valid UTF-8 (byte %zu)", bad_at);
    goto invalid;
  }
  ps.start = ps.p = header;
  ps.end = header + hlen;
  uint64_t data_bytes = fsize - 8 - hlen;
  if (parse_header(&ps) < 0 || check_entries(&ps, data_bytes) < 0)
    goto invalid;

  data = malloc(data_bytes ? data_bytes : 1);
  if (!data) {
    tg__error("%s: out of memory for %llu bytes of data", op,
              (unsigned long long)data_bytes);
    goto done;
  }
  if (read_exact(f, data, data_bytes) < 0) {
    tg__error("%s: reading %s failed (did it change while loading?)", op,
              tg__quote(filename, q, sizeof q));
    goto done;
  }
  rc = 0;
  for (int i = 0; i < ps.n && rc == 0; i++) {
    const st_entry *e = &ps.entries[i];
    const char *name = selected(e->name, o);
    if (!name)
      continue;
    tg_tensor *t = entry_tensor(e, data + e->begin, op, filename);
    rc = t ? tg__dict_take(d, name, t, op) : -1;
    if (rc == 0)
      d->items[d->n - 1].file_dtype = st_dtypes[e->dtype].name;
  }
  goto done;
invalid:
  tg__error("%s: %s is not a valid safetensors file: %s", op,
            tg__quote(filename, q, sizeof q), ps.err);
done:
  for (int i = 0; i < ps.n; i++)
    free(ps.entries[i].name);
  free(ps.entries);
  free(header);
  free(data);
  fclose(f);
  if (rc < 0) {
    tg_tensor_dict_free(d);
    return NULL;
  }
  return d;
}

tg_load_options tg_load_options_default(void) {
  return (tg_load_options){true, false, NULL, NULL};
}

void tg_load_report_free(tg_load_report *r) {
  if (!r)
    return;
  for (int i = 0; i < r->n_missing; i++)
    free(r->missing[i]);
  for (int i = 0; i < r->n_unexpected; i++)
    free(r->unexpected[i]);
  free(r->missing);
  free(r->unexpected);
  memset(r, 0, sizeof *r);
}

/* A copy of names[0..n) into *out; 0 or -1. */
static int copy_names(const char *const *names, int n, char ***out, const char *op) {
  *out = n ? calloc((size_t)n, sizeof **out) : NULL;
  if (n && !*out)
    return tg__error("%s: out of memory", op);
  for (int i = 0; i < n; i++)
    if (!((*out)[i] = strdup(names[i])))
      return tg__error("%s: out of memory", op);
  return 0;
}

/* Loads d's tensors (named as o selects when filter is set) into vs's variables:
 * matches every variable with its tensor, checks shapes and dtypes, converts what
 * needs it, and only then writes. `source` names d in messages. */
static int apply(tg_varstore *vs, const tg_tensor_dict *d, const tg_load_options *o,
                 bool filter, tg_load_report *report, const char *op,
                 const char *source) {
  int nv = vs->n_vars, rc = 0;
  int *match = malloc((size_t)(nv > 0 ? nv : 1) * sizeof *match);
  bool *used = calloc((size_t)(d->n > 0 ? d->n : 1), sizeof *used);
  tg_tensor **conv = calloc((size_t)(nv > 0 ? nv : 1), sizeof *conv);
  const char **left = malloc((size_t)(nv + d->n + 1) * sizeof *left);
  if (!match || !used || !conv || !left) {
    rc = tg__error("%s: out of memory", op);
    goto done;
  }
  /* Names in double quotes, as PyTorch's load_state_dict lists its missing and
   * unexpected keys: a name with ", " in it cannot be read as two. */
  name_list missing = {0}, extra = {0}, bad = {0};
  char q[TG_QUOTE_LEN];
  int n_missing = 0;
  for (int i = 0; i < nv; i++)
    match[i] = -1;
  for (int k = 0; k < d->n; k++) { /* hashed lookups: linear in the number of names */
    const char *name = filter ? selected(d->items[k].name, o) : d->items[k].name;
    int i = name ? tg__varstore_find(vs, name) : -1;
    if (i >= 0 && match[i] < 0)
      match[i] = k;
  }
  for (int i = 0; i < nv; i++) {
    const tg__var *v = &vs->vars[i];
    if (match[i] < 0) {
      list_add(&missing, tg__dquote(v->name, q, sizeof q));
      left[n_missing++] = v->name;
      continue;
    }
    const tg__dict_entry *e = &d->items[match[i]];
    used[match[i]] = true;
    const tg_tensor *t = e->t;
    bool same_shape = t->ndim == v->t->ndim;
    for (int k = 0; same_shape && k < t->ndim; k++)
      same_shape = t->shape[k] == v->t->shape[k];
    const char *fd = e->file_dtype ? e->file_dtype : st_name(t->dtype);
    bool dtype_ok = o->strict_dtype
                        ? !strcmp(fd, st_name(v->t->dtype))
                        : t->dtype == v->t->dtype ||
                              (tg__is_float(t->dtype) && tg__is_float(v->t->dtype));
    if (same_shape && dtype_ok)
      continue;
    char item[TG_QUOTE_LEN + 2 * TG_SHAPE_STR_LEN + 40], fs[TG_SHAPE_STR_LEN],
        ss[TG_SHAPE_STR_LEN];
    snprintf(item, sizeof item, "%s (file %s %s, store %s %s)",
             tg__dquote(v->name, q, sizeof q), fd, tg_shape_str(t, fs, sizeof fs),
             st_name(v->t->dtype), tg_shape_str(v->t, ss, sizeof ss));
    list_add(&bad, item);
  }
  int n_extra = 0;
  for (int k = 0; k < d->n; k++) {
    const char *name = filter ? selected(d->items[k].name, o) : d->items[k].name;
    if (name && !used[k]) {
      list_add(&extra, tg__dquote(name, q, sizeof q));
      left[n_missing + n_extra++] = name;
    }
  }
  if (bad.count || (o->strict && (missing.count || extra.count))) {
    name_list *lists[3] = {&missing, &extra, &bad};
    const char *titles[3] = {
        "missing from the file: ", "not in the var store: ", "dtype or shape mismatch: "};
    char msg[2000];
    size_t len = 0;
    for (int k = 0; k < 3; k++) {
      if (!lists[k]->count || (k < 2 && !o->strict))
        continue;
      list_end(lists[k]);
      len += (size_t)snprintf(msg + len, sizeof msg - len, "%s%s%s", len ? "; " : " ",
                              titles[k], lists[k]->text);
    }
    rc = tg__error("%s: %s does not match the var store:%s", op, source, msg);
    goto done;
  }
  /* Conversions first (they allocate), so a failure changes no variable. */
  tg_no_grad_begin();
  for (int i = 0; i < nv && rc == 0; i++) {
    const tg_tensor *t = match[i] >= 0 ? d->items[match[i]].t : NULL;
    if (t && t->dtype != vs->vars[i].t->dtype &&
        !(conv[i] = tg__unscope(tg_to_dtype(t, vs->vars[i].t->dtype))))
      rc = -1;
  }
  tg_no_grad_end();
  if (rc == 0 && report) {
    memset(report, 0, sizeof *report);
    if (copy_names(left, n_missing, &report->missing, op) < 0 ||
        copy_names(left + n_missing, n_extra, &report->unexpected, op) < 0)
      rc = -1;
    report->n_missing = n_missing;
    report->n_unexpected = n_extra;
    if (rc < 0)
      tg_load_report_free(report);
  }
  for (int i = 0; i < nv && rc == 0; i++) {
    const tg_tensor *t = conv[i] ? conv[i] : match[i] >= 0 ? d->items[match[i]].t : NULL;
    tg_tensor *v = vs->vars[i].t;
    size_t bytes = (size_t)v->numel * tg_dtype_size(v->dtype);
    if (t)
      tg__bump_version(v);
    if (t && bytes)
      rc = tg__cuda_memcpy(tg__data(v), v->device, tg__data(t), t->device, bytes);
  }
done:
  for (int i = 0; conv && i < nv; i++)
    tg_tensor_free(conv[i]);
  free(match);
  free(used);
  free(conv);
  free(left);
  return rc;
}

int tg_varstore_load_ex(tg_varstore *vs, const char *filename, const tg_load_options *o,
                        tg_load_report *report) {
  const char *op = "tg_varstore_load";
  if (!vs || !filename)
    return tg__error("%s: argument '%s' is NULL", op, vs ? "filename" : "vs");
  tg_load_options defaults = tg_load_options_default();
  if (!o)
    o = &defaults;
  tg_tensor_dict *d = read_file(filename, op, o);
  char q[TG_QUOTE_LEN];
  int rc = d ? apply(vs, d, o, false, report, op, tg__quote(filename, q, sizeof q)) : -1;
  tg_tensor_dict_free(d);
  return rc;
}

int tg_varstore_load(tg_varstore *vs, const char *filename) {
  tg_load_options o = tg_load_options_default();
  o.strict_dtype = true;
  return tg_varstore_load_ex(vs, filename, &o, NULL);
}

int tg_varstore_load_dict(tg_varstore *vs, const tg_tensor_dict *d,
                          const tg_load_options *o, tg_load_report *report) {
  const char *op = "tg_varstore_load_dict";
  if (!vs || !d)
    return tg__error("%s: argument '%s' is NULL", op, vs ? "d" : "vs");
  tg_load_options defaults = tg_load_options_default();
  return apply(vs, d, o ? o : &defaults, true, report, op, "the tensor dict");
}

tg_tensor_dict *tg_load_tensors(const char *filename, const tg_load_options *o) {
  if (!filename) {
    tg__error("tg_load_tensors: argument 'filename' is NULL");
    return NULL;
  }
  tg_load_options defaults = tg_load_options_default();
  return read_file(filename, "tg_load_tensors", o ? o : &defaults);
}
