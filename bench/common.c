#include "common.h"

#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double bench_now(void) { return clock_s(CLOCK_MONOTONIC); }
double bench_thread_cpu_now(void) { return clock_s(CLOCK_THREAD_CPUTIME_ID); }

void bench_parallel_memcpy(void *dst, const void *src, size_t bytes, int threads) {
#pragma omp parallel num_threads(threads)
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    size_t lo = bytes * (size_t)t / (size_t)nt, hi = bytes * (size_t)(t + 1) / (size_t)nt;
    memcpy((char *)dst + lo, (const char *)src + lo, hi - lo);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

double bench_median(double *v, int n) {
  if (n <= 0)
    return NAN;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double bench_load_average(void) {
  double l = NAN;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f && fscanf(f, "%lf", &l) != 1)
    l = NAN;
  if (f)
    fclose(f);
  return l;
}

int bench_int_flags(int argc, char **argv, int n, const char *const *names, int *values) {
  for (int i = 1; i < argc; i++) {
    int k = 0;
    while (k < n && (strncmp(argv[i], "--", 2) || strcmp(argv[i] + 2, names[k])))
      k++;
    if (k == n || i + 1 >= argc)
      return -1;
    values[k] = atoi(argv[++i]);
  }
  return 0;
}

FILE *bench_python_open(bench_python *b, const char *python, const char *script,
                        const char *args, ...) {
  const char *py = getenv("TG_BENCH_PYTHON");
  py = py && *py ? py : python;
  char cmd[4096];
  b->out = NULL;
  snprintf(b->path, sizeof b->path, "/tmp/tg_bench_XXXXXX");
  snprintf(cmd, sizeof cmd, "%s -c 'import torch' 2>/dev/null", py);
  FILE *probe = popen(cmd, "r");
  if (!probe || pclose(probe) != 0)
    return NULL;
  int fd = mkstemp(b->path);
  if (fd < 0)
    return NULL;
  FILE *f = fdopen(fd, "w");
  if (!f) {
    close(fd);
    remove(b->path);
    return NULL;
  }
  int wrote = fputs(script, f);
  if (fclose(f) != 0 || wrote < 0) {
    remove(b->path);
    return NULL;
  }
  int len = snprintf(cmd, sizeof cmd, "%s %s ", py, b->path);
  va_list ap;
  va_start(ap, args);
  vsnprintf(cmd + len, sizeof cmd - (size_t)len, args, ap);
  va_end(ap);
  strncat(cmd, " 2>/dev/null", sizeof cmd - strlen(cmd) - 1);
  if (!(b->out = popen(cmd, "r")))
    remove(b->path);
  return b->out;
}

void bench_python_close(bench_python *b) {
  if (!b->out)
    return;
  pclose(b->out);
  b->out = NULL;
  remove(b->path);
}
