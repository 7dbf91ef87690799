/* What the SIMT layer of -Dcuda=host costs (runtime/simt): nanoseconds per thread of
 * kernels that switch fibers 0, 5 and 10 times, and of a launch and a copy, each with
 * the same arithmetic done by a plain host loop in the same run as the baseline.
 * Built wherever the layer is (g++); run: ./build/bench/simt [elements]. */
#include "runtime/cuda_compat.cuh"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

__global__ void scale(const float *x, float *y, int n) {
  int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n)
    y[i] = 2.0f * x[i];
}

/* warp sum by five shuffles */
__global__ void warp_sum(const float *x, float *y, int n) {
  int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  float v = i < n ? x[i] : 0.0f;
  for (int o = 16; o > 0; o /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  if (i < n)
    y[i] = v;
}

/* block sum of 256 by a shared-memory tree: nine barriers */
__global__ void block_sum(const float *x, float *y, int n) {
  __shared__ float s[256];
  unsigned t = threadIdx.x;
  int i = static_cast<int>(blockIdx.x * blockDim.x + t);
  s[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
    if (t < h)
      s[t] += s[t + h];
    __syncthreads();
  }
  if (t == 0)
    y[blockIdx.x] = s[0];
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class F> double time_ns(F f) {
  std::vector<double> t;
  for (int r = 0; r < 5; r++) {
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - a)
            .count());
  }
  return median(t);
}

} // namespace

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1 << 18;
  if (n < 256 || n % 256) {
    fprintf(stderr, "usage: simt [elements, a multiple of 256]\n");
    return 2;
  }
  std::vector<float> hx(static_cast<size_t>(n), 1.0f), hy(static_cast<size_t>(n));
  float *x = nullptr, *y = nullptr;
  if (cudaMalloc(reinterpret_cast<void **>(&x), n * sizeof(float)) != cudaSuccess ||
      cudaMalloc(reinterpret_cast<void **>(&y), n * sizeof(float)) != cudaSuccess ||
      cudaMemcpy(x, hx.data(), n * sizeof(float), cudaMemcpyHostToDevice) !=
          cudaSuccess) {
    fprintf(stderr, "simt: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  volatile float sink = 0;
  double host = time_ns([&] {
    for (int i = 0; i < n; i++)
      hy[static_cast<size_t>(i)] = 2.0f * hx[static_cast<size_t>(i)];
    sink = sink + hy[0];
  });
  double k0 = time_ns([&] { TG_LAUNCH(scale, n / 256, 256, 0, 0, x, y, n); });
  double k5 = time_ns([&] { TG_LAUNCH(warp_sum, n / 256, 256, 0, 0, x, y, n); });
  double k9 = time_ns([&] { TG_LAUNCH(block_sum, n / 256, 256, 0, 0, x, y, n); });
  double tiny = time_ns([&] { TG_LAUNCH(scale, 1, 32, 0, 0, x, y, 32); });
  double copy = time_ns([&] { cudaMemcpy(y, x, 256, cudaMemcpyDeviceToDevice); });
  if (cudaGetLastError() != cudaSuccess)
    return 1;
  printf("SIMT layer, %d threads in blocks of 256 (median of 5; host loop %.2f "
         "ns/element)\n",
         n, host / n);
  printf("  %-36s %9.1f ns/thread  %8.0fx host loop\n", "no switch (y = 2x)", k0 / n,
         k0 / host);
  printf("  %-36s %9.1f ns/thread  %8.0fx host loop\n", "5 warp shuffles", k5 / n,
         k5 / host);
  printf("  %-36s %9.1f ns/thread  %8.0fx host loop\n", "9 __syncthreads (block sum)",
         k9 / n, k9 / host);
  printf("  %-36s %9.1f us (%zu KiB of arguments opened)\n", "launch of 32 threads",
         tiny / 1e3, 2 * n * sizeof(float) / 1024);
  printf("  %-36s %9.1f us\n", "cudaMemcpy of 256 bytes on device", copy / 1e3);
  cudaFree(x);
  cudaFree(y);
  return 0;
}
