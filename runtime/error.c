/* Per-thread error messages: errors are values, never aborts. */
#include "runtime/internal.h"

#include <stdio.h>
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
