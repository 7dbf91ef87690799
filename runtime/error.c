/* Per-thread error messages: errors are values, never aborts. */
#include "runtime/internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[2048];

/* The op running on this thread, for messages raised below it (out of memory): the
 * op whose arguments were checked last, or while a backward runs, the node whose
 * backward it is (which the ops it calls do not replace). */
static _Thread_local struct {
  const char *op;
  int64_t seq;
  bool backward;
} running;

void tg__op_enter(const char *op) {
  if (!running.backward)
    running.op = op;
}

const char *tg__running_op(void) { return running.op; }

void tg__backward_enter(const char *op, int64_t seq) {
  running.op = op;
  running.seq = seq;
  running.backward = true;
}

void tg__backward_leave(void) {
  running.op = NULL;
  running.backward = false;
}

int tg__oom(size_t bytes, const char *where, const char *op) {
  if (running.backward)
    return tg__error("tg_backward: out of memory in the backward of %s (tape position "
                     "%lld): failed to allocate %zu bytes on %s",
                     running.op, (long long)running.seq, bytes, where);
  if (!op)
    op = running.op;
  if (!op)
    return tg__error("out of memory: failed to allocate %zu bytes on %s", bytes, where);
  return tg__error("%s: out of memory: failed to allocate %zu bytes on %s", op, bytes,
                   where);
}

const char *tg_last_error(void) { return last_error; }

void tg_clear_error(void) { last_error[0] = '\0'; }

int tg__error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return -1;
}

bool tg__nonnull(const tg_tensor *t, const char *op, const char *arg) {
  tg__op_enter(op);
  if (t)
    return true;
  if (!last_error[0])
    tg__error("%s: argument '%s' is NULL (an earlier call probably failed)", op, arg);
  return false;
}

char *tg__shape_fmt(const int64_t *shape, int ndim, char *buf, size_t len) {
  size_t pos = 0;
  pos += (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < ndim && pos < len; i++)
    pos += (size_t)snprintf(buf + pos, len - pos, i ? ", %lld" : "%lld",
                            (long long)shape[i]);
  if (pos < len)
    snprintf(buf + pos, len - pos, "]");
  return buf;
}

char *tg_shape_str(const tg_tensor *t, char *buf, size_t len) {
  if (!buf || len == 0)
    return buf;
  if (!t) {
    snprintf(buf, len, "(null)");
    return buf;
  }
  return tg__shape_fmt(t->shape, t->ndim, buf, len);
}

/* No overlongs, surrogates or code points above U+10FFFF. */
bool tg__valid_utf8(const uint8_t *s, size_t n, size_t *bad) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    size_t len = c < 0x80         ? 1
                 : (c >> 5) == 6  ? 2
                 : (c >> 4) == 14 ? 3
                 : (c >> 3) == 30 ? 4
                                  : 0;
    if (!len || i + len > n)
      goto fail;
    uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80)
        goto fail;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      goto fail;
    i += len;
  }
  return true;
fail:
  if (bad)
    *bad = i;
  return false;
}

/* Appends c to buf (len bytes) at *pos, keeping room for the terminator. */
static void put_char(char *buf, size_t len, size_t *pos, char c) {
  if (*pos + 1 < len)
    buf[(*pos)++] = c;
}

/* s[0..n) with control characters and bytes that are not UTF-8 escaped (\n, \t,
 * \x01, \xff) so they show. */
static void put_escaped(char *buf, size_t len, size_t *pos, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    size_t seq = c < 0x80         ? 1
                 : (c >> 5) == 6  ? 2
                 : (c >> 4) == 14 ? 3
                 : (c >> 3) == 30 ? 4
                                  : 0;
    if (seq > 1 && i + seq <= n && tg__valid_utf8((const uint8_t *)s + i, seq, NULL)) {
      for (size_t k = 0; k < seq; k++)
        put_char(buf, len, pos, s[i + k]);
      i += seq - 1;
      continue;
    }
    if (c >= 0x20 && c < 0x7f) {
      put_char(buf, len, pos, (char)c);
      continue;
    }
    if (c == '\n' || c == '\t' || c == '\r')
      snprintf(esc, sizeof esc, "\\%c", c == '\n' ? 'n' : c == '\t' ? 't' : 'r');
    else
      snprintf(esc, sizeof esc, "\\x%02x", c);
    for (const char *e = esc; *e; e++)
      put_char(buf, len, pos, *e);
  }
}

static const char *quote_with(char q, const char *s, char *buf, size_t len) {
  enum { HEAD = 64, TAIL = 48 };
  size_t pos = 0, n = s ? strlen(s) : 0;
  if (!buf || len == 0)
    return "";
  if (!s) {
    snprintf(buf, len, "(null)");
    return buf;
  }
  put_char(buf, len, &pos, q);
  if (n <= HEAD + TAIL + 16) {
    put_escaped(buf, len, &pos, s, n);
  } else {
    /* Cut on UTF-8 character boundaries: continuation bytes are 10xxxxxx. */
    size_t head = HEAD, tail = n - TAIL;
    while (head > 0 && ((unsigned char)s[head] & 0xc0) == 0x80)
      head--;
    while (tail < n && ((unsigned char)s[tail] & 0xc0) == 0x80)
      tail++;
    put_escaped(buf, len, &pos, s, head);
    for (const char *e = "..."; *e; e++)
      put_char(buf, len, &pos, *e);
    put_escaped(buf, len, &pos, s + tail, n - tail);
  }
  put_char(buf, len, &pos, q);
  buf[pos] = '\0';
  if (n > HEAD + TAIL + 16 && pos + 1 < len)
    snprintf(buf + pos, len - pos, " (%zu bytes)", n);
  return buf;
}

const char *tg__quote(const char *s, char *buf, size_t len) {
  return quote_with('\'', s, buf, len);
}

const char *tg__dquote(const char *s, char *buf, size_t len) {
  return quote_with('"', s, buf, len);
}

int64_t tg__env_int(const char *name, int64_t lo, int64_t hi, int64_t fallback,
                    _Atomic bool *warned) {
  const char *env = getenv(name);
  if (!env || !*env)
    return fallback;
  char *end;
  errno = 0;
  long long v = strtoll(env, &end, 10);
  if (!*end && !errno && v >= lo && v <= hi)
    return v;
  if (!atomic_exchange(warned, true)) {
    char q[TG_QUOTE_LEN];
    fprintf(stderr,
            "tapegrad: warning: ignoring %s=%s: expected an integer in [%lld, %lld]; "
            "using the default (%lld)\n",
            name, tg__quote(env, q, sizeof q), (long long)lo, (long long)hi,
            (long long)fallback);
  }
  return fallback;
}
