/* The SIMT layer of the host build (-Dcuda=host): what a .cu file sees of CUDA when g++
 * compiles it as C++17 with TG_SIMT defined. A launch runs its blocks one after another
 * on the calling thread; the threads of a block are cooperative fibers that switch only
 * at __syncthreads(), __syncwarp() and the warp intrinsics, in an order that alternates
 * between launches, so a missing barrier reads data that was not written yet.
 * Kernels include runtime/cuda_compat.cuh, never this header directly. */
#ifndef TG_SIMT_H
#define TG_SIMT_H

#ifndef __cplusplus
#error "runtime/simt/simt.h is C++: compile .cu files with g++ -x c++ -std=c++17"
#endif

#include <cuda_runtime.h> /* runtime/simt/include/ */

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <math.h> /* the float overloads (exp(float), ...) in the global namespace */
#include <tuple>
#include <type_traits>
#include <utility>

/* ---- declaration specifiers ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
/* One object per kernel: blocks run one after another and a block's fibers share it. */
#define __shared__ static
#define __constant__
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

namespace tg_simt {

/* The running thread and block (set by the scheduler before each fiber switch). */
struct thread_info {
  uint3 idx;
  unsigned lane; /* linear index % 32 */
};
struct block_info {
  uint3 idx;
  dim3 dim, grid;
  unsigned char *dynamic_shared; /* the launch's smem bytes, NaN-filled per block */
};
extern thread_info *self;
extern block_info block;

/* Block barrier: returns how many of the block's live threads passed pred != 0 and
 * how many took part (threads that returned count as arrived). */
struct block_vote {
  int count, total;
};
block_vote sync_block(int pred);

/* Warp rendezvous of the lanes named in mask (the caller's lane is always in): every
 * lane deposits value and names the lane src whose value it wants, then all read.
 * A lane outside the rendezvous (absent, exited, another mask) yields all-ones bits. */
struct warp_vote {
  uint64_t value;
  unsigned ballot;  /* lanes whose pred != 0 */
  unsigned members; /* lanes that took part */
};
warp_vote sync_warp(unsigned mask, uint64_t value, int src, int pred);
unsigned active_mask();

/* Runs run(args) as every thread of every block; sets the error cudaGetLastError
 * returns (configuration checked as CUDA does, the kernel not run when it fails).
 * Device memory is reachable from the kernel through the pointers in params, the
 * arguments' bytes. */
cudaError_t launch(const void *kernel, const char *name, dim3 grid, dim3 block,
                   size_t smem, cudaStream_t stream, void (*run)(void *), void *args,
                   const void *params, size_t params_bytes);

/* TG_LAUNCH(k, grid, block, smem, stream)(args...): the arguments are converted to the
 * kernel's parameter types once, as <<<>>> does, and every thread gets its own copy. */
template <class... P> class launcher {
public:
  launcher(void (*kernel)(P...), const char *name, dim3 grid, dim3 block, size_t smem,
           cudaStream_t stream)
      : kernel_(kernel), name_(name), grid_(grid), block_(block), smem_(smem),
        stream_(stream) {}
  template <class... A> void operator()(A &&...args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    struct frame {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } f{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    launch(
        reinterpret_cast<const void *>(kernel_), name_, grid_, block_, smem_, stream_,
        [](void *p) {
          frame *fr = static_cast<frame *>(p);
          std::apply(fr->kernel, fr->args);
        },
        &f, &f.args, sizeof f.args);
  }

private:
  void (*kernel_)(P...);
  const char *name_;
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
};
template <class... P>
launcher<P...> prepare(void (*kernel)(P...), const char *name, dim3 grid, dim3 block,
                       size_t smem, cudaStream_t stream) {
  return launcher<P...>(kernel, name, grid, block, smem, stream);
}

template <class T> inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "warp intrinsics exchange values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}
template <class T> inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

} /* namespace tg_simt */

#define TG_LAUNCH(kernel, grid, block, smem, stream, ...)                                \
  ::tg_simt::prepare(kernel, #kernel, grid, block, smem, stream)(__VA_ARGS__)
#define TG_DYNAMIC_SHARED(T, name)                                                       \
  T *name = reinterpret_cast<T *>(::tg_simt::block.dynamic_shared)

/* ---- built-in variables ---- */
#define threadIdx (static_cast<const uint3 &>(::tg_simt::self->idx))
#define blockIdx (static_cast<const uint3 &>(::tg_simt::block.idx))
#define blockDim (static_cast<const dim3 &>(::tg_simt::block.dim))
#define gridDim (static_cast<const dim3 &>(::tg_simt::block.grid))
constexpr int warpSize = 32;

/* ---- synchronisation ---- */
inline void __syncthreads() { ::tg_simt::sync_block(0); }
inline int __syncthreads_count(int pred) { return ::tg_simt::sync_block(pred).count; }
inline int __syncthreads_and(int pred) {
  ::tg_simt::block_vote v = ::tg_simt::sync_block(pred);
  return v.count == v.total;
}
inline int __syncthreads_or(int pred) { return ::tg_simt::sync_block(pred).count > 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::tg_simt::sync_warp(mask, 0, static_cast<int>(::tg_simt::self->lane), 0);
}
inline unsigned __activemask() { return ::tg_simt::active_mask(); }
/* Fibers never run at the same time: fences only keep the compiler in order. */
inline void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

/* ---- warp intrinsics ---- */
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return ::tg_simt::sync_warp(mask, 0, static_cast<int>(::tg_simt::self->lane), pred != 0)
      .ballot;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  ::tg_simt::warp_vote v =
      ::tg_simt::sync_warp(mask, 0, static_cast<int>(::tg_simt::self->lane), pred != 0);
  return v.ballot == v.members;
}
/* Source lanes follow the CUDA guide: width splits the warp into groups; an index
 * past the caller's group returns the caller's own value. */
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  int lane = static_cast<int>(::tg_simt::self->lane);
  int src = (lane & ~(width - 1)) + (srcLane & (width - 1));
  return ::tg_simt::from_bits<T>(
      ::tg_simt::sync_warp(mask, ::tg_simt::to_bits(var), src, 0).value);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  int lane = static_cast<int>(::tg_simt::self->lane);
  int src = (lane & (width - 1)) >= static_cast<int>(delta)
                ? lane - static_cast<int>(delta)
                : lane;
  return ::tg_simt::from_bits<T>(
      ::tg_simt::sync_warp(mask, ::tg_simt::to_bits(var), src, 0).value);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  int lane = static_cast<int>(::tg_simt::self->lane);
  int src = (lane & (width - 1)) + static_cast<int>(delta) < width
                ? lane + static_cast<int>(delta)
                : lane;
  return ::tg_simt::from_bits<T>(
      ::tg_simt::sync_warp(mask, ::tg_simt::to_bits(var), src, 0).value);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  int lane = static_cast<int>(::tg_simt::self->lane);
  int src = lane ^ laneMask;
  if (src >= (lane & ~(width - 1)) + width)
    src = lane;
  return ::tg_simt::from_bits<T>(
      ::tg_simt::sync_warp(mask, ::tg_simt::to_bits(var), src, 0).value);
}

/* ---- atomics: fibers never interleave inside one, so plain read-modify-writes are
 * atomic; CUDA's overload set, so code that compiles here compiles under nvcc ---- */
#define TG_SIMT_ATOMIC(name, T, expr)                                                    \
  inline T name(T *address, T val) {                                                     \
    T old = *address;                                                                    \
    *address = (expr);                                                                   \
    return old;                                                                          \
  }
TG_SIMT_ATOMIC(atomicAdd, int, old + val)
TG_SIMT_ATOMIC(atomicAdd, unsigned int, old + val)
TG_SIMT_ATOMIC(atomicAdd, unsigned long long int, old + val)
TG_SIMT_ATOMIC(atomicAdd, float, old + val)
TG_SIMT_ATOMIC(atomicAdd, double, old + val)
TG_SIMT_ATOMIC(atomicSub, int, old - val)
TG_SIMT_ATOMIC(atomicSub, unsigned int, old - val)
TG_SIMT_ATOMIC(atomicExch, int, val)
TG_SIMT_ATOMIC(atomicExch, unsigned int, val)
TG_SIMT_ATOMIC(atomicExch, unsigned long long int, val)
TG_SIMT_ATOMIC(atomicExch, float, val)
TG_SIMT_ATOMIC(atomicMax, int, old > val ? old : val)
TG_SIMT_ATOMIC(atomicMax, unsigned int, old > val ? old : val)
TG_SIMT_ATOMIC(atomicMax, long long int, old > val ? old : val)
TG_SIMT_ATOMIC(atomicMax, unsigned long long int, old > val ? old : val)
TG_SIMT_ATOMIC(atomicMin, int, old < val ? old : val)
TG_SIMT_ATOMIC(atomicMin, unsigned int, old < val ? old : val)
TG_SIMT_ATOMIC(atomicMin, long long int, old < val ? old : val)
TG_SIMT_ATOMIC(atomicMin, unsigned long long int, old < val ? old : val)
TG_SIMT_ATOMIC(atomicAnd, int, old &val)
TG_SIMT_ATOMIC(atomicAnd, unsigned int, old &val)
TG_SIMT_ATOMIC(atomicAnd, unsigned long long int, old &val)
TG_SIMT_ATOMIC(atomicOr, int, old | val)
TG_SIMT_ATOMIC(atomicOr, unsigned int, old | val)
TG_SIMT_ATOMIC(atomicOr, unsigned long long int, old | val)
TG_SIMT_ATOMIC(atomicXor, int, old ^ val)
TG_SIMT_ATOMIC(atomicXor, unsigned int, old ^ val)
TG_SIMT_ATOMIC(atomicXor, unsigned long long int, old ^ val)
TG_SIMT_ATOMIC(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
TG_SIMT_ATOMIC(atomicDec, unsigned int, (old == 0u || old > val) ? val : old - 1u)
#undef TG_SIMT_ATOMIC
#define TG_SIMT_CAS(T)                                                                   \
  inline T atomicCAS(T *address, T compare, T val) {                                     \
    T old = *address;                                                                    \
    if (old == compare)                                                                  \
      *address = val;                                                                    \
    return old;                                                                          \
  }
TG_SIMT_CAS(int)
TG_SIMT_CAS(unsigned int)
TG_SIMT_CAS(unsigned long long int)
TG_SIMT_CAS(unsigned short int)
#undef TG_SIMT_CAS

/* ---- loads and stores with cache hints: plain accesses on the host ---- */
template <class T> inline T __ldg(const T *p) { return *p; }
template <class T> inline T __ldcg(const T *p) { return *p; }
template <class T> inline T __ldcs(const T *p) { return *p; }
template <class T> inline void __stcg(T *p, T v) { *p = v; }
template <class T> inline void __stcs(T *p, T v) { *p = v; }
template <class T> inline void __stwt(T *p, T v) { *p = v; }

/* ---- math: <cmath> gives expf, erff, tanhf, fmaf...; CUDA's extras follow ---- */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline double __drcp_rn(double x) { return 1.0 / x; }
/* _rn: to nearest even (the default rounding mode); _rz/_rd/_ru: toward 0, -inf, +inf */
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(truncf(x)); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(nearbyintf(x)); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(nearbyintf(x)); }
inline int __double2int_rn(double x) { return static_cast<int>(nearbyint(x)); }
inline int __double2int_rz(double x) { return static_cast<int>(trunc(x)); }
inline long long __double2ll_rn(double x) { return static_cast<long long>(nearbyint(x)); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline double __int2double_rn(int x) { return static_cast<double>(x); }
inline double __ll2double_rn(long long x) { return static_cast<double>(x); }
inline int __float_as_int(float x) {
  return ::tg_simt::from_bits<int>(::tg_simt::to_bits(x));
}
inline unsigned __float_as_uint(float x) {
  return ::tg_simt::from_bits<unsigned>(::tg_simt::to_bits(x));
}
inline float __int_as_float(int x) {
  return ::tg_simt::from_bits<float>(::tg_simt::to_bits(x));
}
inline float __uint_as_float(unsigned x) {
  return ::tg_simt::from_bits<float>(::tg_simt::to_bits(x));
}
inline long long __double_as_longlong(double x) {
  return ::tg_simt::from_bits<long long>(::tg_simt::to_bits(x));
}
inline double __longlong_as_double(long long x) {
  return ::tg_simt::from_bits<double>(::tg_simt::to_bits(x));
}

/* ---- integer intrinsics ---- */
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; i++, x >>= 1)
    r = (r << 1) | (x & 1u);
  return r;
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
inline int __mulhi(int a, int b) {
  return static_cast<int>((static_cast<long long>(a) * b) >> 32);
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline long long clock64() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<long long>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}

/* CUDA's global min/max on arithmetic types (mixed types meet in their common type) */
template <class A, class B,
          class = std::enable_if_t<std::is_arithmetic<A>::value &&
                                   std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? static_cast<std::common_type_t<A, B>>(b)
               : static_cast<std::common_type_t<A, B>>(a);
}
template <class A, class B,
          class = std::enable_if_t<std::is_arithmetic<A>::value &&
                                   std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? static_cast<std::common_type_t<A, B>>(b)
               : static_cast<std::common_type_t<A, B>>(a);
}

#endif
