/* The collectives for CUDA tensors: NCCL, one communicator per device, made on the
 * device's first exchange from a unique id that rank 0 sends over MPI. Exchanges run
 * on a stream of their own that first waits on an event recorded on tapegrad's
 * stream for the device (so they see finished gradients), and tapegrad's stream then
 * waits on an event recorded after them (so later kernels see the results), as
 * llm.c's zero.cuh does; the host never blocks. Without NCCL (stubs at the end),
 * CUDA tensors cannot be exchanged and tg_dist says so. */
#include "dist/internal.h"

#ifdef TG_HAVE_NCCL
#include "runtime/cuda.h" /* TG_CUDA, tg__cuda_stream */

#include <cuda_runtime_api.h>
#include <nccl.h>

static int nccl_status(ncclResult_t r, const char *call, const char *file, int line) {
  if (r == ncclSuccess)
    return 0;
  return tg__error("NCCL error: %s in %s at %s:%d (rank %d of %d)", ncclGetErrorString(r),
                   call, file, line, tg__dist_rank(), tg__dist_world());
}
#define TG_NCCL(call) nccl_status((call), #call, __FILE__, __LINE__)

enum { MAX_DEVICES = 64 };
typedef struct {
  ncclComm_t comm; /* NULL until the device's first exchange */
  cudaStream_t stream;
  cudaEvent_t queued, done; /* tapegrad's stream -> ours, ours -> tapegrad's */
} nccl_device;
static nccl_device devices[MAX_DEVICES];

static void release_device(nccl_device *d) {
  if (d->comm)
    ncclCommDestroy(d->comm);
  if (d->stream)
    cudaStreamDestroy(d->stream);
  if (d->queued)
    cudaEventDestroy(d->queued);
  if (d->done)
    cudaEventDestroy(d->done);
  *d = (nccl_device){0};
}

static int make_stream(nccl_device *d, int device) {
  if (TG_CUDA(cudaSetDevice(device)) < 0 ||
      TG_CUDA(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking)) < 0 ||
      TG_CUDA(cudaEventCreateWithFlags(&d->queued, cudaEventDisableTiming)) < 0)
    return -1;
  return TG_CUDA(cudaEventCreateWithFlags(&d->done, cudaEventDisableTiming));
}

/* The device's communicator, stream and events, made collectively on first use:
 * every rank reaches its own device's first exchange in the same call. */
static nccl_device *device_state(int device) {
  if (device >= 0 && device < MAX_DEVICES && devices[device].comm)
    return &devices[device];
  /* Everything that can fail on one rank alone comes before the agreement, so that
   * no rank is left waiting in ncclCommInitRank for one that gave up. */
  ncclUniqueId id = {{0}};
  int rc = 0;
  if (device < 0 || device >= MAX_DEVICES)
    rc = tg__error("NCCL: device cuda:%d is beyond the %d devices tapegrad supports",
                   device, MAX_DEVICES);
  else
    rc = make_stream(&devices[device], device);
  if (rc == 0 && tg__dist_rank() == 0)
    rc = TG_NCCL(ncclGetUniqueId(&id));
  if (tg__dist_agree("NCCL setup", rc, TG__DIST_FNV, "the NCCL id", 0, NULL, NULL, NULL) <
      0) {
    if (device >= 0 && device < MAX_DEVICES)
      release_device(&devices[device]);
    return NULL;
  }
  nccl_device *d = &devices[device];
  if (tg__dist_mpi_bcast(&id, sizeof id, 0) < 0 ||
      TG_NCCL(ncclCommInitRank(&d->comm, tg__dist_world(), id, tg__dist_rank())) < 0) {
    release_device(d);
    return NULL;
  }
  return d;
}

static int nccl_begin(int device) {
  nccl_device *d = device_state(device);
  cudaStream_t tapegrad = d ? (cudaStream_t)tg__cuda_stream(device) : NULL;
  return tapegrad && TG_CUDA(cudaEventRecord(d->queued, tapegrad)) == 0 &&
                 TG_CUDA(cudaStreamWaitEvent(d->stream, d->queued, 0)) == 0
             ? 0
             : -1;
}

static int nccl_end(int device) {
  nccl_device *d = &devices[device];
  cudaStream_t tapegrad = (cudaStream_t)tg__cuda_stream(device);
  return tapegrad && TG_CUDA(cudaEventRecord(d->done, d->stream)) == 0 &&
                 TG_CUDA(cudaStreamWaitEvent(tapegrad, d->done, 0)) == 0
             ? 0
             : -1;
}

static int nccl_copy(void *dst, const void *src, size_t bytes, int device) {
  return TG_CUDA(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, devices[device].stream));
}

static int nccl_all_reduce(void *buf, int64_t n, tg_dtype dtype, tg_dist_op op,
                           int device) {
  ncclDataType_t type = dtype == TG_F32   ? ncclFloat32
                        : dtype == TG_F64 ? ncclFloat64
                                          : ncclInt64;
  nccl_device *d = &devices[device];
  return TG_NCCL(ncclAllReduce(buf, buf, (size_t)n, type,
                               op == TG_DIST_AVERAGE ? ncclAvg : ncclSum, d->comm,
                               d->stream));
}

static int nccl_broadcast(void *buf, size_t bytes, int root, int device) {
  nccl_device *d = &devices[device];
  return TG_NCCL(ncclBroadcast(buf, buf, bytes, ncclUint8, root, d->comm, d->stream));
}

const tg__dist_kernels tg__dist_nccl = {"NCCL",    nccl_begin,      nccl_end,
                                        nccl_copy, nccl_all_reduce, nccl_broadcast};

void tg__dist_nccl_release(void) {
  for (int i = 0; i < MAX_DEVICES; i++)
    release_device(&devices[i]);
}

bool tg_dist_nccl_is_available(void) { return true; }

#else /* ----------------------------------------------------- without NCCL -- */

void tg__dist_nccl_release(void) {}
bool tg_dist_nccl_is_available(void) { return false; }

#endif
