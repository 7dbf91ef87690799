/* What the files of runtime/simt share: the lock every stand-in call holds, the error
 * state, the device arena and its access window. */
#ifndef TG_SIMT_INTERNAL_H
#define TG_SIMT_INTERNAL_H

#include "runtime/simt/simt.h"

#include <mutex>

namespace tg_simt {

/* Held by every stand-in call and for a whole launch: one host thread at a time
 * touches the device, so the arena's access window belongs to that call. */
std::unique_lock<std::recursive_mutex> hold();

/* Records e as the calling thread's last error (cudaGetLastError) and returns it;
 * cudaSuccess records nothing. */
cudaError_t fail(cudaError_t e);
/* An error of a kernel's execution (deadlock, out-of-bounds cuBLAS operand): the last
 * error, and what the next synchronising call returns, as a GPU reports it. */
void fail_async(cudaError_t e);

/* cudaErrorNoDevice when TG_SIMT_DEVICES=0 asks for a machine without one. */
cudaError_t device_check();

/* Device memory: an mmap'd arena, PROT_NONE except inside an access window. */
bool is_device(const void *p);
/* Whether [p, p + bytes) lies inside one live allocation. */
bool in_allocation(const void *p, size_t bytes);
/* A stand-in call's access to device memory (nests): while one lives, the ranges
 * given to open() are readable and writable. */
class device_access {
public:
  device_access();
  ~device_access();
  device_access(const device_access &) = delete;
  device_access &operator=(const device_access &) = delete;
  void open(const void *p, size_t bytes);
  /* Opens every allocation that a pointer-sized word of bytes[0, n) points into: a
   * kernel's arguments, structs included. */
  void open_pointed(const void *bytes, size_t n);
  /* After a launch: false (with a line on stderr naming kernel) when it wrote into the
   * redzone after an allocation it touched; the redzone is then restored. */
  bool redzones_intact(const char *kernel);
};

bool valid_stream(cudaStream_t s);
/* The dynamic shared memory a launch of func may request (48 KiB unless raised by
 * cudaFuncSetAttribute). */
size_t max_dynamic_shared(const void *func);

/* The device's fixed limits (an H100 SXM's). */
constexpr int kSMs = 132;
constexpr size_t kSharedPerBlock = 48 * 1024;
constexpr size_t kSharedPerBlockOptin = 227 * 1024;
constexpr size_t kSharedPerSM = 228 * 1024;
constexpr int kMaxThreads = 1024;

} /* namespace tg_simt */

#endif
