/* What tests/test_simt.c and tests/test_simt_kernels.cu share: the launchers (each
 * returns cudaGetLastError() after its launch) and the atomics' result record. */
#ifndef TG_TEST_SIMT_H
#define TG_TEST_SIMT_H

#include <stddef.h>

typedef struct atomic_results {
  int add_i, max_i, min_i, cas_count, exch_last;
  unsigned add_u;
  unsigned long long add_ull;
  float add_f;
  double add_d;
} atomic_results;

#ifdef __cplusplus
extern "C" {
#endif
int simt_block_sum(const float *x, float *out, int n, int threads);
int simt_warp_ops(const double *x, double *xor_sum, double *down_sum, double *bcast,
                  double *scan, double *group8, int blocks, int threads);
int simt_neighbours(const float *in, float *out, int blocks, int threads, int barrier,
                    int dynamic);
int simt_atomics(atomic_results *r, int *exch_old, int blocks, int threads);
int simt_axpb(const float *x, float *y, int n, int blocks, int threads);
int simt_dynamic_reverse(unsigned *out, unsigned *first, unsigned words, int threads,
                         size_t smem);
int simt_raise_dynamic_limit(int bytes);
int simt_mark(int *flag, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
              unsigned bz, size_t smem);
int simt_run_order(int *counter, int *order, int threads);
int simt_votes(unsigned *ballot, int *any, int *all, int *count, int threads);
int simt_divergent_barrier(int *out, int threads);
int simt_overrun(float *x, int n);
#ifdef __cplusplus
}
#endif

#endif
