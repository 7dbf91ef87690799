/* Timing helpers shared by the benchmarks (bench/common.c): clocks, medians and the
 * load average each benchmark prints beside its figures. */
#ifndef TG_BENCH_COMMON_H
#define TG_BENCH_COMMON_H

#include <stddef.h>
#include <stdio.h>

/* Seconds on CLOCK_MONOTONIC (wall) and on this thread's CPU clock: on a shared
 * machine the thread's CPU time hardly moves when other processes take the cores. */
double bench_now(void);
double bench_thread_cpu_now(void);
/* memcpy split over `threads` OpenMP threads, one contiguous part each: the
 * bandwidth baseline of the benchmarks that compare a kernel with a copy. */
void bench_parallel_memcpy(void *dst, const void *src, size_t bytes, int threads);
/* Median of v[0..n) (sorts v); NaN when n is 0. */
double bench_median(double *v, int n);
/* The 1-minute load average from /proc/loadavg, NaN when unreadable. */
double bench_load_average(void);
/* Reads argv[1..argc) as "--name N" pairs, names[i] setting values[i]; -1 on any
 * other argument (the caller prints its usage). */
int bench_int_flags(int argc, char **argv, int n, const char *const *names, int *values);

/* PyTorch's side of a benchmark: script (Python source, in a temporary file) run by
 * $TG_BENCH_PYTHON, else by `python`, with args (a printf format) after it; its
 * stderr is dropped. The pipe to read its output from, or NULL when that Python has
 * no torch or the script cannot be run. bench_python_close ends it. */
typedef struct {
  FILE *out;
  char path[64];
} bench_python;
FILE *bench_python_open(bench_python *b, const char *python, const char *script,
                        const char *args, ...) __attribute__((format(printf, 4, 5)));
void bench_python_close(bench_python *b);

#endif
