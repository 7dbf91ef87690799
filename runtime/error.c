/* Per-thread error messages: errors are values, never aborts. */
#include "runtime/internal.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[2048];

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
