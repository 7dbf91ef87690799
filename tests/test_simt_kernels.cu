/* Kernels for tests/test_simt.c, compiled with g++ against the SIMT layer in every build
 * (and valid CUDA: nvcc builds them unchanged). Each launcher returns
 * cudaGetLastError() after its launch. */
#include "runtime/cuda_compat.cuh"
#include "tests/test_simt.h"

/* Block sums of x (one per block) by a shared-memory tree; blockDim.x a power of 2. */
__global__ void block_sum(const float *x, float *out, int n) {
  __shared__ float s[1024];
  unsigned t = threadIdx.x;
  int i = static_cast<int>(blockIdx.x * blockDim.x + t);
  s[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half)
      s[t] += s[t + half];
    __syncthreads();
  }
  if (t == 0)
    out[blockIdx.x] = s[0];
}

/* Per thread: the warp total by xor butterfly, by shfl_down (lane 0's), lane 5's value
 * by broadcast, the inclusive prefix sum by shfl_up, and the sum within groups of 8. */
__global__ void warp_ops(const double *x, double *xor_sum, double *down_sum,
                         double *bcast, double *scan, double *group8) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  double v = x[i], a = v, b = v, c = v, g = v;
  for (int o = 16; o > 0; o /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, static_cast<unsigned>(o));
  }
  for (unsigned o = 1; o < 32; o *= 2) {
    double up = __shfl_up_sync(0xffffffffu, c, o);
    if (lane >= o)
      c += up;
  }
  for (int o = 4; o > 0; o /= 2)
    g += __shfl_xor_sync(0xffffffffu, g, o, 8);
  xor_sum[i] = a;
  down_sum[i] = b;
  bcast[i] = __shfl_sync(0xffffffffu, v, 5);
  scan[i] = c;
  group8[i] = g;
}

/* out[t] = in[t-1] + in[t+1] (cyclic in the block) through shared memory; without the
 * barrier a thread reads neighbours that have not stored yet. */
__global__ void neighbours(const float *in, float *out, int barrier) {
  __shared__ float s[256];
  unsigned t = threadIdx.x, n = blockDim.x;
  s[t] = in[blockIdx.x * n + t];
  if (barrier)
    __syncthreads();
  out[blockIdx.x * n + t] = s[(t + 1) % n] + s[(t + n - 1) % n];
}

__global__ void neighbours_dynamic(const float *in, float *out, int barrier) {
  TG_DYNAMIC_SHARED(float, s);
  unsigned t = threadIdx.x, n = blockDim.x;
  s[t] = in[blockIdx.x * n + t];
  if (barrier)
    __syncthreads();
  out[blockIdx.x * n + t] = s[(t + 1) % n] + s[(t + n - 1) % n];
}

__global__ void atomics(atomic_results *r, int *exch_old) {
  int id = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(&r->add_i, 1);
  atomicAdd(&r->add_u, 2u);
  atomicAdd(&r->add_ull, 3ull);
  atomicAdd(&r->add_f, 0.5f);
  atomicAdd(&r->add_d, 0.25);
  atomicMax(&r->max_i, (id * 7919) % 1000);
  atomicMin(&r->min_i, 500 - (id * 104729) % 1000);
  int old = r->cas_count, seen;
  while ((seen = atomicCAS(&r->cas_count, old, old + 1)) != old)
    old = seen;
  exch_old[id] = atomicExch(&r->exch_last, id);
}

/* Grid-stride loop: y = 2x + 1 over n elements with any grid. */
__global__ void axpb(const float *x, float *y, int n) {
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<int>(blockDim.x * gridDim.x))
    y[i] = 2.0f * x[i] + 1.0f;
}

/* Thread t stores t at the end of the dynamic buffer then reads it back reversed;
 * first[t] gets the word t held before the store (the fill pattern). */
__global__ void dynamic_reverse(unsigned *out, unsigned *first, unsigned words) {
  TG_DYNAMIC_SHARED(unsigned, s);
  for (unsigned w = threadIdx.x; w < words; w += blockDim.x) {
    first[w] = s[w];
    s[w] = w;
  }
  __syncthreads();
  for (unsigned w = threadIdx.x; w < words; w += blockDim.x)
    out[w] = s[words - 1 - w];
}

__global__ void mark(int *flag) { *flag = 1; }

/* Records the order in which a block's threads run to their first store. */
__global__ void run_order(int *counter, int *order) {
  order[atomicAdd(counter, 1)] = static_cast<int>(threadIdx.x);
}

/* Votes: ballot of odd lanes, any/all, and the block's count of multiples of 3. */
__global__ void votes(unsigned *ballot, int *any, int *all, int *count) {
  unsigned t = threadIdx.x, lane = t % 32;
  unsigned b = __ballot_sync(0xffffffffu, lane & 1u);
  int an = __any_sync(0xffffffffu, lane == 31);
  int al = __all_sync(0xffffffffu, lane < 31);
  int c = __syncthreads_count(t % 3 == 0);
  ballot[t] = b;
  any[t] = an;
  all[t] = al;
  count[t] = c;
}

/* Lane 0 waits at the block barrier while the other lanes of its warp wait for it in
 * __syncwarp: a deadlock on a GPU. */
__global__ void divergent_barrier(int *out) {
  if (threadIdx.x == 0)
    __syncthreads();
  else
    __syncwarp();
  out[threadIdx.x] = 1;
}

/* One store past the end of x[n]. */
__global__ void overrun(float *x, int n) {
  if (threadIdx.x == 0)
    x[n] = 1.0f;
}

int simt_block_sum(const float *x, float *out, int n, int threads) {
  TG_LAUNCH(block_sum, (n + threads - 1) / threads, threads, 0, 0, x, out, n);
  return cudaGetLastError();
}

int simt_warp_ops(const double *x, double *xor_sum, double *down_sum, double *bcast,
                  double *scan, double *group8, int blocks, int threads) {
  TG_LAUNCH(warp_ops, blocks, threads, 0, 0, x, xor_sum, down_sum, bcast, scan, group8);
  return cudaGetLastError();
}

int simt_neighbours(const float *in, float *out, int blocks, int threads, int barrier,
                    int dynamic) {
  if (dynamic)
    TG_LAUNCH(neighbours_dynamic, blocks, threads, threads * sizeof(float), 0, in, out,
              barrier);
  else
    TG_LAUNCH(neighbours, blocks, threads, 0, 0, in, out, barrier);
  return cudaGetLastError();
}

int simt_atomics(atomic_results *r, int *exch_old, int blocks, int threads) {
  TG_LAUNCH(atomics, blocks, threads, 0, 0, r, exch_old);
  return cudaGetLastError();
}

int simt_axpb(const float *x, float *y, int n, int blocks, int threads) {
  TG_LAUNCH(axpb, blocks, threads, 0, 0, x, y, n);
  return cudaGetLastError();
}

int simt_dynamic_reverse(unsigned *out, unsigned *first, unsigned words, int threads,
                         size_t smem) {
  TG_LAUNCH(dynamic_reverse, 1, threads, smem, 0, out, first, words);
  return cudaGetLastError();
}

int simt_raise_dynamic_limit(int bytes) {
  return cudaFuncSetAttribute(dynamic_reverse,
                              cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

int simt_mark(int *flag, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
              unsigned bz, size_t smem) {
  TG_LAUNCH(mark, dim3(gx, gy, gz), dim3(bx, by, bz), smem, 0, flag);
  return cudaGetLastError();
}

int simt_run_order(int *counter, int *order, int threads) {
  TG_LAUNCH(run_order, 1, threads, 0, 0, counter, order);
  return cudaGetLastError();
}

int simt_votes(unsigned *ballot, int *any, int *all, int *count, int threads) {
  TG_LAUNCH(votes, 1, threads, 0, 0, ballot, any, all, count);
  return cudaGetLastError();
}

int simt_divergent_barrier(int *out, int threads) {
  TG_LAUNCH(divergent_barrier, 1, threads, 0, 0, out);
  return cudaGetLastError();
}

int simt_overrun(float *x, int n) {
  TG_LAUNCH(overrun, 1, 32, 0, 0, x, n);
  return cudaGetLastError();
}
