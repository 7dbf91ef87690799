/* Host stand-in for the CUDA runtime API (-Dcuda=host): one device, cuda:0, whose
 * memory is an mmap'd arena that is PROT_NONE except while a kernel, a copy or a
 * memset runs, so host code that dereferences a device pointer faults as on a GPU.
 * Fresh and freed memory reads as NaN (0xFF bytes); each allocation is followed by a
 * redzone, poisoned for ASan and checked after each launch for the kernel's stray
 * writes. Streams and events run in order: every call is
 * synchronous, events carry host timestamps. */
#include "runtime/simt/internal.h"

#include <sanitizer/asan_interface.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

namespace tg_simt {

static std::recursive_mutex big_lock;
std::unique_lock<std::recursive_mutex> hold() {
  return std::unique_lock<std::recursive_mutex>(big_lock);
}

/* ---- errors ---- */
static thread_local cudaError_t last_error = cudaSuccess;
static cudaError_t pending_error = cudaSuccess; /* for the next synchronising call */

cudaError_t fail(cudaError_t e) {
  if (e != cudaSuccess)
    last_error = e;
  return e;
}

void fail_async(cudaError_t e) {
  fail(e);
  if (pending_error == cudaSuccess)
    pending_error = e;
}

static cudaError_t take_pending() {
  cudaError_t e = pending_error;
  pending_error = cudaSuccess;
  return e;
}

/* A byte count from the environment, or fallback when unset or malformed. */
static size_t env_bytes(const char *name, size_t fallback) {
  const char *s = getenv(name);
  if (!s || !*s)
    return fallback;
  char *end = nullptr;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v == 0) {
    fprintf(stderr, "tg_simt: ignoring %s=%s (not a positive byte count)\n", name, s);
    return fallback;
  }
  return static_cast<size_t>(v);
}

static int device_count() {
  static const int n = [] {
    const char *s = getenv("TG_SIMT_DEVICES");
    return s && s[0] == '0' && !s[1] ? 0 : 1;
  }();
  return n;
}

cudaError_t device_check() { return device_count() ? cudaSuccess : cudaErrorNoDevice; }

/* ---- the arena ---- */
namespace {
struct allocation {
  size_t size, block; /* requested bytes; bytes held, redzone included */
};
struct arena {
  char *base = nullptr;
  size_t bytes = 0, page = 4096;
  size_t bump = 0; /* end of the highest block ever handed out */
  size_t used = 0, used_high = 0;
  std::map<size_t, size_t> free_blocks; /* offset -> size */
  std::map<size_t, allocation> live;    /* offset -> allocation */
  int open = 0;
};
} /* namespace */
static arena heap;

static size_t arena_bytes() {
  static const size_t b = env_bytes("TG_SIMT_MEMORY_BYTES", size_t(1) << 30);
  return b;
}

static bool arena_map() {
  if (heap.base)
    return true;
  heap.page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  heap.bytes = (arena_bytes() + heap.page - 1) / heap.page * heap.page;
  void *p = mmap(nullptr, heap.bytes, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return false;
  heap.base = static_cast<char *>(p);
  return true;
}

/* ---- access windows ----
 * Inside a device_access (one stand-in call) the ranges it opens are readable and
 * writable; when the call ends they close again. mprotect costs about 0.3 us a
 * populated page, so opening only what a call uses keeps a launch's cost independent
 * of how much device memory is allocated. */
namespace {
struct window {
  size_t lo, hi; /* page-aligned offsets */
};
constexpr int kMaxWindows = 4096;
window windows[kMaxWindows];
int window_count = 0; /* the last window, once reached, spans the whole arena */
int access_depth = 0;
} /* namespace */

static size_t arena_top() { return (heap.bump + heap.page - 1) / heap.page * heap.page; }

static void open_window(size_t lo, size_t hi) {
  if (hi <= lo || (window_count == kMaxWindows))
    return;
  if (window_count == kMaxWindows - 1) /* out of records: open everything */
    lo = 0, hi = arena_top();
  if (mprotect(heap.base + lo, hi - lo, PROT_READ | PROT_WRITE) != 0)
    perror("tg_simt: mprotect of device memory");
  windows[window_count++] = window{lo, hi};
}

static void close_windows() {
  for (int i = 0; i < window_count; i++)
    mprotect(heap.base + windows[i].lo, windows[i].hi - windows[i].lo, PROT_NONE);
  window_count = 0;
}

device_access::device_access() { access_depth++; }
device_access::~device_access() {
  if (--access_depth == 0)
    close_windows();
}

void device_access::open_pointed(const void *bytes, size_t n) {
  const unsigned char *b = static_cast<const unsigned char *>(bytes);
  for (size_t i = 0; i + sizeof(void *) <= n; i += alignof(void *)) {
    const char *p;
    memcpy(&p, b + i, sizeof p);
    if (!is_device(p) || heap.live.empty())
      continue;
    /* the allocation holding p, or ending at p (a one-past-the-end pointer) */
    auto it = heap.live.upper_bound(static_cast<size_t>(p - heap.base));
    if (it == heap.live.begin())
      continue;
    --it;
    open(heap.base + it->first, it->second.block);
  }
}

void device_access::open(const void *p, size_t bytes) {
  if (!bytes || !is_device(p))
    return;
  size_t off = static_cast<size_t>(static_cast<const char *>(p) - heap.base);
  size_t lo = off / heap.page * heap.page, hi = arena_top();
  if (bytes < hi - off)
    hi = (off + bytes + heap.page - 1) / heap.page * heap.page;
  open_window(lo, hi);
}

bool is_device(const void *p) {
  const char *c = static_cast<const char *>(p);
  return heap.base && c >= heap.base && c < heap.base + heap.bytes;
}

bool in_allocation(const void *p, size_t bytes) {
  if (!is_device(p))
    return false;
  size_t off = static_cast<size_t>(static_cast<const char *>(p) - heap.base);
  auto it = heap.live.upper_bound(off);
  if (it == heap.live.begin())
    return false;
  --it;
  return off >= it->first && off - it->first <= it->second.size &&
         bytes <= it->second.size - (off - it->first);
}

/* Redzone after each allocation: an eighth of its size, 256 B to 64 KiB. */
static size_t block_bytes(size_t size) {
  size_t rz = size / 8;
  rz = rz < 256 ? 256 : (rz > 65536 ? 65536 : rz);
  return (size + rz + 255) / 256 * 256;
}

/* The part of a's redzone inside [lo, hi) (offsets), as offsets; empty when none. */
static window redzone_part(size_t off, const allocation &a, size_t lo, size_t hi) {
  size_t b = off + a.size > lo ? off + a.size : lo,
         e = off + a.block < hi ? off + a.block : hi;
  return window{b, e > b ? e : b};
}

/* Reads the redzone, which ASan keeps poisoned to catch the kernels' accesses. */
__attribute__((no_sanitize_address)) static bool redzone_intact(window w) {
  const unsigned char *p = reinterpret_cast<unsigned char *>(heap.base);
  for (size_t i = w.lo; i < w.hi; i++)
    if (p[i] != 0xFF)
      return false;
  return true;
}

__attribute__((no_sanitize_address)) static void restore_redzone(window w) {
  memset(heap.base + w.lo, 0xFF, w.hi - w.lo);
}

static cudaError_t arena_alloc(void **out, size_t size) {
  if (!out)
    return cudaErrorInvalidValue;
  *out = nullptr;
  if (size == 0)
    return cudaSuccess;
  if (size > arena_bytes() || !arena_map())
    return cudaErrorMemoryAllocation;
  size_t need = block_bytes(size), off = SIZE_MAX;
  for (auto it = heap.free_blocks.begin(); it != heap.free_blocks.end(); ++it)
    if (it->second >= need) {
      off = it->first;
      size_t rest = it->second - need;
      heap.free_blocks.erase(it);
      if (rest)
        heap.free_blocks[off + need] = rest;
      break;
    }
  if (off == SIZE_MAX) {
    if (heap.bytes - heap.bump < need)
      return cudaErrorMemoryAllocation;
    off = heap.bump;
    heap.bump += need;
  }
  heap.live[off] = allocation{size, need};
  heap.used += size;
  if (heap.used > heap.used_high)
    heap.used_high = heap.used;
  char *p = heap.base + off;
  ASAN_UNPOISON_MEMORY_REGION(p, need);
  {
    device_access open;
    open.open(p, need);
    memset(p, 0xFF, need);
  }
  ASAN_POISON_MEMORY_REGION(p + size, need - size);
  *out = p;
  return cudaSuccess;
}

static cudaError_t arena_free(void *ptr) {
  if (!ptr)
    return cudaSuccess;
  if (!is_device(ptr))
    return cudaErrorInvalidValue;
  size_t off = static_cast<size_t>(static_cast<char *>(ptr) - heap.base);
  auto it = heap.live.find(off);
  if (it == heap.live.end())
    return cudaErrorInvalidValue;
  allocation a = it->second;
  heap.live.erase(it);
  heap.used -= a.size;
  char *p = heap.base + off;
  ASAN_UNPOISON_MEMORY_REGION(p, a.block);
  {
    device_access open;
    open.open(p, a.block);
    memset(p, 0xFF, a.block); /* a use after free reads NaN */
  }
  ASAN_POISON_MEMORY_REGION(p, a.block);
  /* Coalesce with the free neighbours; the top block returns to the bump pointer. */
  size_t start = off, len = a.block;
  auto next = heap.free_blocks.lower_bound(off);
  if (next != heap.free_blocks.end() && next->first == start + len) {
    len += next->second;
    next = heap.free_blocks.erase(next);
  }
  if (next != heap.free_blocks.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      len += prev->second;
      heap.free_blocks.erase(prev);
    }
  }
  if (start + len == heap.bump)
    heap.bump = start;
  else
    heap.free_blocks[start] = len;
  return cudaSuccess;
}

bool device_access::redzones_intact(const char *kernel) {
  bool intact = true;
  for (int i = 0; i < window_count; i++) {
    window w = windows[i];
    auto it = heap.live.upper_bound(w.lo);
    if (it != heap.live.begin())
      --it;
    for (; it != heap.live.end() && it->first < w.hi; ++it) {
      window rz = redzone_part(it->first, it->second, w.lo, w.hi);
      if (rz.hi > rz.lo && !redzone_intact(rz)) {
        fprintf(stderr,
                "tg_simt: kernel %s wrote past the end of the %zu-byte device allocation "
                "at %p\n",
                kernel, it->second.size, static_cast<void *>(heap.base + it->first));
        restore_redzone(rz);
        intact = false;
      }
    }
  }
  return intact;
}

/* ---- streams, events, function attributes ---- */
static std::set<cudaStream_t> streams;
static std::set<cudaEvent_t> events;
static std::map<const void *, int> dynamic_shared_limit;

bool valid_stream(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread ||
         streams.count(s);
}

size_t max_dynamic_shared(const void *func) {
  auto it = dynamic_shared_limit.find(func);
  return it == dynamic_shared_limit.end() ? kSharedPerBlock
                                          : static_cast<size_t>(it->second);
}

} /* namespace tg_simt */

using namespace tg_simt;

struct CUstream_st {
  unsigned flags;
};
struct CUevent_st {
  unsigned flags;
  bool recorded;
  double ms; /* host time of the last record */
};
struct CUmemPoolHandle_st {
  unsigned long long release_threshold;
  int reuse[3];
};
static CUmemPoolHandle_st default_pool = {0, {1, 1, 1}};

static double now_ms() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) * 1e-6;
}

extern "C" {

/* ---- devices ---- */
cudaError_t cudaGetDeviceCount(int *count) {
  if (!count)
    return fail(cudaErrorInvalidValue);
  *count = device_count();
  return fail(device_check());
}

cudaError_t cudaSetDevice(int device) {
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  return fail(device == 0 ? cudaSuccess : cudaErrorInvalidDevice);
}

cudaError_t cudaGetDevice(int *device) {
  if (!device)
    return fail(cudaErrorInvalidValue);
  *device = 0;
  return fail(device_check());
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
  if (!prop)
    return fail(cudaErrorInvalidValue);
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  if (device != 0)
    return fail(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "tg_simt host device (H100 limits)");
  memcpy(prop->uuid.bytes, "tg_simt:device:0", 16);
  prop->totalGlobalMem = arena_bytes();
  prop->sharedMemPerBlock = kSharedPerBlock;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->memPitch = 2147483647;
  prop->maxThreadsPerBlock = kMaxThreads;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->totalConstMem = 65536;
  prop->major = 9;
  prop->minor = 0;
  prop->textureAlignment = 512;
  prop->multiProcessorCount = kSMs;
  prop->concurrentKernels = 1;
  prop->asyncEngineCount = 1;
  prop->unifiedAddressing = 1;
  prop->memoryBusWidth = 5120;
  prop->l2CacheSize = 50 * 1024 * 1024;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->sharedMemPerMultiprocessor = kSharedPerSM;
  prop->regsPerMultiprocessor = 65536;
  prop->sharedMemPerBlockOptin = kSharedPerBlockOptin;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->reservedSharedMemPerBlock = 1024;
  prop->memoryPoolsSupported = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
  struct cudaDeviceProp p;
  if (!value)
    return fail(cudaErrorInvalidValue);
  cudaError_t e = cudaGetDeviceProperties(&p, device);
  if (e != cudaSuccess)
    return e;
  switch (attr) {
  case cudaDevAttrMaxThreadsPerBlock:
    *value = p.maxThreadsPerBlock;
    break;
  case cudaDevAttrMaxBlockDimX:
    *value = p.maxThreadsDim[0];
    break;
  case cudaDevAttrMaxBlockDimY:
    *value = p.maxThreadsDim[1];
    break;
  case cudaDevAttrMaxBlockDimZ:
    *value = p.maxThreadsDim[2];
    break;
  case cudaDevAttrMaxGridDimX:
    *value = p.maxGridSize[0];
    break;
  case cudaDevAttrMaxGridDimY:
    *value = p.maxGridSize[1];
    break;
  case cudaDevAttrMaxGridDimZ:
    *value = p.maxGridSize[2];
    break;
  case cudaDevAttrMaxSharedMemoryPerBlock:
    *value = static_cast<int>(p.sharedMemPerBlock);
    break;
  case cudaDevAttrTotalConstantMemory:
    *value = static_cast<int>(p.totalConstMem);
    break;
  case cudaDevAttrWarpSize:
    *value = p.warpSize;
    break;
  case cudaDevAttrMaxRegistersPerBlock:
    *value = p.regsPerBlock;
    break;
  case cudaDevAttrMultiProcessorCount:
    *value = p.multiProcessorCount;
    break;
  case cudaDevAttrIntegrated:
    *value = p.integrated;
    break;
  case cudaDevAttrConcurrentKernels:
    *value = p.concurrentKernels;
    break;
  case cudaDevAttrPciBusId:
    *value = p.pciBusID;
    break;
  case cudaDevAttrGlobalMemoryBusWidth:
    *value = p.memoryBusWidth;
    break;
  case cudaDevAttrL2CacheSize:
    *value = p.l2CacheSize;
    break;
  case cudaDevAttrMaxThreadsPerMultiProcessor:
    *value = p.maxThreadsPerMultiProcessor;
    break;
  case cudaDevAttrAsyncEngineCount:
    *value = p.asyncEngineCount;
    break;
  case cudaDevAttrUnifiedAddressing:
    *value = p.unifiedAddressing;
    break;
  case cudaDevAttrComputeCapabilityMajor:
    *value = p.major;
    break;
  case cudaDevAttrComputeCapabilityMinor:
    *value = p.minor;
    break;
  case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
    *value = static_cast<int>(p.sharedMemPerMultiprocessor);
    break;
  case cudaDevAttrMaxRegistersPerMultiprocessor:
    *value = p.regsPerMultiprocessor;
    break;
  case cudaDevAttrManagedMemory:
    *value = p.managedMemory;
    break;
  case cudaDevAttrCooperativeLaunch:
    *value = p.cooperativeLaunch;
    break;
  case cudaDevAttrMaxSharedMemoryPerBlockOptin:
    *value = static_cast<int>(p.sharedMemPerBlockOptin);
    break;
  case cudaDevAttrMaxBlocksPerMultiprocessor:
    *value = p.maxBlocksPerMultiProcessor;
    break;
  case cudaDevAttrMemoryPoolsSupported:
    *value = p.memoryPoolsSupported;
    break;
  default:
    return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  auto lock = hold();
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  return fail(take_pending());
}

cudaError_t cudaDeviceReset(void) {
  auto lock = hold();
  take_pending();
  last_error = cudaSuccess;
  return device_check();
}

cudaError_t cudaDriverGetVersion(int *version) {
  if (!version)
    return fail(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *version) { return cudaDriverGetVersion(version); }

/* ---- errors ---- */
cudaError_t cudaGetLastError(void) {
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

static const struct {
  cudaError_t code;
  const char *name, *text;
} error_table[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError",
     "initialization error"},
    {cudaErrorCudartUnloading, "cudaErrorCudartUnloading", "driver shutting down"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration",
     "invalid configuration argument"},
    {cudaErrorInvalidPitchValue, "cudaErrorInvalidPitchValue", "invalid pitch argument"},
    {cudaErrorInvalidSymbol, "cudaErrorInvalidSymbol", "invalid device symbol"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer",
     "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection",
     "invalid copy direction for memcpy"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorInvalidDeviceFunction, "cudaErrorInvalidDeviceFunction",
     "invalid device function"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorDeviceUninitialized, "cudaErrorDeviceUninitialized",
     "invalid device context"},
    {cudaErrorNoKernelImageForDevice, "cudaErrorNoKernelImageForDevice",
     "no kernel image is available for execution on the device"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle",
     "invalid resource handle"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress",
     "an illegal memory access was encountered"},
    {cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources",
     "too many resources requested for launch"},
    {cudaErrorContextIsDestroyed, "cudaErrorContextIsDestroyed", "context is destroyed"},
    {cudaErrorAssert, "cudaErrorAssert", "device-side assert triggered"},
    {cudaErrorHardwareStackError, "cudaErrorHardwareStackError", "hardware stack error"},
    {cudaErrorIllegalInstruction, "cudaErrorIllegalInstruction",
     "an illegal instruction was encountered"},
    {cudaErrorMisalignedAddress, "cudaErrorMisalignedAddress", "misaligned address"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorNotPermitted, "cudaErrorNotPermitted", "operation not permitted"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
    {cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
     "operation not permitted when stream is capturing"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};

const char *cudaGetErrorString(cudaError_t error) {
  for (const auto &e : error_table)
    if (e.code == error)
      return e.text;
  return "unrecognized error code";
}

const char *cudaGetErrorName(cudaError_t error) {
  for (const auto &e : error_table)
    if (e.code == error)
      return e.name;
  return "cudaErrorUnknown";
}

/* ---- memory ---- */
cudaError_t cudaMalloc(void **devPtr, size_t size) {
  auto lock = hold();
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  return fail(arena_alloc(devPtr, size));
}

cudaError_t cudaFree(void *devPtr) {
  auto lock = hold();
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  return fail(arena_free(devPtr));
}

cudaError_t cudaMallocAsync(void **devPtr, size_t size, cudaStream_t stream) {
  auto lock = hold();
  if (!valid_stream(stream))
    return fail(cudaErrorInvalidResourceHandle);
  return cudaMalloc(devPtr, size);
}

cudaError_t cudaFreeAsync(void *devPtr, cudaStream_t stream) {
  auto lock = hold();
  if (!valid_stream(stream))
    return fail(cudaErrorInvalidResourceHandle);
  return cudaFree(devPtr);
}

cudaError_t cudaMallocHost(void **ptr, size_t size) {
  if (!ptr)
    return fail(cudaErrorInvalidValue);
  *ptr = size ? malloc(size) : nullptr;
  return fail(size && !*ptr ? cudaErrorMemoryAllocation : cudaSuccess);
}

cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned int flags) {
  (void)flags; /* portable/mapped/write-combined: all plain host memory here */
  return cudaMallocHost(ptr, size);
}

cudaError_t cudaFreeHost(void *ptr) {
  free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
  auto lock = hold();
  if (!free_bytes || !total)
    return fail(cudaErrorInvalidValue);
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  *total = arena_bytes();
  *free_bytes = *total - heap.used;
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes,
                                     const void *ptr) {
  auto lock = hold();
  if (!attributes)
    return fail(cudaErrorInvalidValue);
  bool dev = is_device(ptr);
  attributes->type = dev ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
  attributes->device = dev ? 0 : -1;
  attributes->devicePointer = dev ? const_cast<void *>(ptr) : nullptr;
  attributes->hostPointer = dev ? nullptr : const_cast<void *>(ptr);
  return cudaSuccess;
}

static cudaError_t copy(void *dst, const void *src, size_t count,
                        enum cudaMemcpyKind kind) {
  if (static_cast<unsigned>(kind) > cudaMemcpyDefault)
    return cudaErrorInvalidMemcpyDirection;
  if (count == 0)
    return cudaSuccess;
  if (!dst || !src)
    return cudaErrorInvalidValue;
  bool dd = is_device(dst), sd = is_device(src);
  bool ok = kind == cudaMemcpyDefault ||
            (dd == (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice) &&
             sd == (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice));
  if (!ok || (dd && !in_allocation(dst, count)) || (sd && !in_allocation(src, count)))
    return cudaErrorInvalidValue;
  device_access open;
  open.open(dst, count);
  open.open(src, count);
  memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count,
                       enum cudaMemcpyKind kind) {
  auto lock = hold();
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  cudaError_t e = take_pending(); /* synchronises: reports earlier kernels' failures */
  if (e != cudaSuccess)
    return fail(e);
  return fail(copy(dst, src, count, kind));
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count,
                            enum cudaMemcpyKind kind, cudaStream_t stream) {
  auto lock = hold();
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  if (!valid_stream(stream))
    return fail(cudaErrorInvalidResourceHandle);
  return fail(copy(dst, src, count, kind));
}

static cudaError_t set(void *devPtr, int value, size_t count) {
  if (count == 0)
    return cudaSuccess;
  if (!in_allocation(devPtr, count))
    return cudaErrorInvalidValue;
  device_access open;
  open.open(devPtr, count);
  memset(devPtr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void *devPtr, int value, size_t count) {
  auto lock = hold();
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  return fail(set(devPtr, value, count));
}

cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream) {
  auto lock = hold();
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  if (!valid_stream(stream))
    return fail(cudaErrorInvalidResourceHandle);
  return fail(set(devPtr, value, count));
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *memPool, int device) {
  if (!memPool)
    return fail(cudaErrorInvalidValue);
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  if (device != 0)
    return fail(cudaErrorInvalidDevice);
  *memPool = &default_pool;
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t memPool, enum cudaMemPoolAttr attr,
                                    void *value) {
  auto lock = hold();
  if (memPool != &default_pool || !value)
    return fail(cudaErrorInvalidValue);
  switch (attr) {
  case cudaMemPoolReuseFollowEventDependencies:
  case cudaMemPoolReuseAllowOpportunistic:
  case cudaMemPoolReuseAllowInternalDependencies:
    memPool->reuse[attr - cudaMemPoolReuseFollowEventDependencies] =
        *static_cast<int *>(value);
    return cudaSuccess;
  case cudaMemPoolAttrReleaseThreshold:
    memPool->release_threshold = *static_cast<unsigned long long *>(value);
    return cudaSuccess;
  case cudaMemPoolAttrReservedMemHigh:
  case cudaMemPoolAttrUsedMemHigh:
    if (*static_cast<unsigned long long *>(value) != 0) /* only a reset to 0 is allowed */
      return fail(cudaErrorInvalidValue);
    heap.used_high = heap.used;
    return cudaSuccess;
  default:
    return fail(cudaErrorInvalidValue);
  }
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t memPool, enum cudaMemPoolAttr attr,
                                    void *value) {
  auto lock = hold();
  if (memPool != &default_pool || !value)
    return fail(cudaErrorInvalidValue);
  unsigned long long *u = static_cast<unsigned long long *>(value);
  switch (attr) {
  case cudaMemPoolReuseFollowEventDependencies:
  case cudaMemPoolReuseAllowOpportunistic:
  case cudaMemPoolReuseAllowInternalDependencies:
    *static_cast<int *>(value) =
        memPool->reuse[attr - cudaMemPoolReuseFollowEventDependencies];
    return cudaSuccess;
  case cudaMemPoolAttrReleaseThreshold:
    *u = memPool->release_threshold;
    return cudaSuccess;
  case cudaMemPoolAttrReservedMemCurrent:
  case cudaMemPoolAttrReservedMemHigh:
    *u = heap.bump;
    return cudaSuccess;
  case cudaMemPoolAttrUsedMemCurrent:
    *u = heap.used;
    return cudaSuccess;
  case cudaMemPoolAttrUsedMemHigh:
    *u = heap.used_high;
    return cudaSuccess;
  default:
    return fail(cudaErrorInvalidValue);
  }
}

cudaError_t cudaMemPoolTrimTo(cudaMemPool_t memPool, size_t minBytesToKeep) {
  (void)minBytesToKeep; /* frees go straight back to the arena: nothing to trim */
  return fail(memPool == &default_pool ? cudaSuccess : cudaErrorInvalidValue);
}

/* ---- streams and events ---- */
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
  auto lock = hold();
  if (!stream || flags > cudaStreamNonBlocking)
    return fail(cudaErrorInvalidValue);
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  *stream = new CUstream_st{flags};
  streams.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  auto lock = hold();
  if (!streams.erase(stream))
    return fail(cudaErrorInvalidResourceHandle);
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  auto lock = hold();
  if (!valid_stream(stream))
    return fail(cudaErrorInvalidResourceHandle);
  return fail(take_pending());
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  auto lock = hold();
  return fail(valid_stream(stream) ? cudaSuccess : cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event,
                                unsigned int flags) {
  auto lock = hold();
  if (!valid_stream(stream) || !events.count(event))
    return fail(cudaErrorInvalidResourceHandle);
  return fail(flags ? cudaErrorInvalidValue : cudaSuccess);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  auto lock = hold();
  if (!event || (flags & ~0x7u))
    return fail(cudaErrorInvalidValue);
  if (device_check() != cudaSuccess)
    return fail(cudaErrorNoDevice);
  *event = new CUevent_st{flags, false, 0.0};
  events.insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  auto lock = hold();
  if (!events.count(event) || !valid_stream(stream))
    return fail(cudaErrorInvalidResourceHandle);
  event->recorded = true;
  event->ms = now_ms();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  auto lock = hold();
  if (!events.count(event))
    return fail(cudaErrorInvalidResourceHandle);
  return fail(take_pending());
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  auto lock = hold();
  return fail(events.count(event) ? cudaSuccess : cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
  auto lock = hold();
  if (!ms)
    return fail(cudaErrorInvalidValue);
  if (!events.count(start) || !events.count(end) || !start->recorded || !end->recorded ||
      ((start->flags | end->flags) & cudaEventDisableTiming))
    return fail(cudaErrorInvalidResourceHandle);
  *ms = static_cast<float>(end->ms - start->ms);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  auto lock = hold();
  if (!events.erase(event))
    return fail(cudaErrorInvalidResourceHandle);
  delete event;
  return cudaSuccess;
}

/* ---- kernels ---- */
cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr,
                                 int value) {
  auto lock = hold();
  if (!func)
    return fail(cudaErrorInvalidDeviceFunction);
  switch (attr) {
  case cudaFuncAttributeMaxDynamicSharedMemorySize:
    if (value < 0 || static_cast<size_t>(value) > kSharedPerBlockOptin)
      return fail(cudaErrorInvalidValue);
    dynamic_shared_limit[func] = value;
    return cudaSuccess;
  case cudaFuncAttributePreferredSharedMemoryCarveout: /* a hint: accepted, unused */
    return fail(value < -1 || value > 100 ? cudaErrorInvalidValue : cudaSuccess);
  default:
    return fail(cudaErrorInvalidValue);
  }
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *attr, const void *func) {
  auto lock = hold();
  if (!attr)
    return fail(cudaErrorInvalidValue);
  if (!func)
    return fail(cudaErrorInvalidDeviceFunction);
  memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = kMaxThreads;
  attr->numRegs = 32;
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  attr->maxDynamicSharedSizeBytes = static_cast<int>(max_dynamic_shared(func));
  attr->preferredShmemCarveout = -1;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks,
                                                          const void *func, int blockSize,
                                                          size_t dynamicSMemSize) {
  if (!numBlocks || blockSize <= 0)
    return fail(cudaErrorInvalidValue);
  if (!func)
    return fail(cudaErrorInvalidDeviceFunction);
  /* An SM holds 2048 threads, 32 blocks and 228 KiB of shared memory (1 KiB of it
   * reserved per block); registers are not modelled. */
  int by_threads = 2048 / blockSize;
  int by_smem = static_cast<int>(kSharedPerSM / (dynamicSMemSize + 1024));
  int n = by_threads < 32 ? by_threads : 32;
  *numBlocks = n < by_smem ? n : by_smem;
  return cudaSuccess;
}

} /* extern "C" */
