/* Internal API of dist/: one table of collectives per device type, picked once per
 * call as ops pick their kernels (CPU tensors over MPI, CUDA tensors over NCCL), and
 * the host-side exchanges every call starts with. Not installed. */
#ifndef TG_DIST_INTERNAL_H
#define TG_DIST_INTERNAL_H

#include "runtime/internal.h"

/* Collectives on raw buffers of one device; each returns 0, or -1 with an error that
 * names the transport call. All ranks have agreed on the arguments (tg__dist_agree)
 * before any of these runs, so every rank makes the same calls in the same order. */
typedef struct {
  const char *name; /* "MPI", "NCCL" */
  /* Bracket a call's exchanges: begin orders them after the work already queued on
   * the device, end orders later work after them. NULL where the host is in order. */
  int (*begin)(int device);
  int (*end)(int device);
  /* dst <- src on device, in the exchanges' order. */
  int (*copy)(void *dst, const void *src, size_t bytes, int device);
  /* In place over the ranks; dtype TG_I64 only with TG_DIST_SUM. */
  int (*all_reduce)(void *buf, int64_t n, tg_dtype dtype, tg_dist_op op, int device);
  int (*broadcast)(void *buf, size_t bytes, int root, int device);
} tg__dist_kernels;

extern const tg__dist_kernels tg__dist_mpi; /* dist/mpi.c; the identity at world 1 */
#ifdef TG_HAVE_NCCL
extern const tg__dist_kernels tg__dist_nccl; /* dist/nccl.c */
#endif

/* ---- the process's MPI side (dist/mpi.c; without MPI, a world of one) ---- */
/* Joins the MPI job this process was launched in (mpirun, or MPI already initialised
 * by the caller), or sets a world of one when there is none. 0 or -1. */
int tg__dist_mpi_init(int *rank, int *world);
int tg__dist_mpi_finalize(void);
/* Element-wise maximum over the ranks of n int64s, in place (host memory). */
int tg__dist_mpi_max(int64_t *buf, int n);
/* Host bytes from root to every rank. */
int tg__dist_mpi_bcast(void *buf, size_t bytes, int root);

/* Releases the NCCL communicators, streams and events (dist/nccl.c). */
void tg__dist_nccl_release(void);

/* ---- the shared state (dist/dist.c) ---- */
int tg__dist_rank(void);
int tg__dist_world(void);

/* Every collective starts here, on every rank, with the same call: local_rc is this
 * rank's own status so far (-1 with its error set when it failed: bad input, out of
 * memory), sig hashes everything the ranks must agree on, and counts (at most 3,
 * named by names) are reported as ranges when they differ. Returns 0 on every rank
 * when all succeeded and agree, else -1 on every rank: the failing rank keeps its
 * message, the others get "<op>: rank R failed: <its message>", or all get "<op>:
 * ranks disagree on <what>: ...". *loose (NULL: none) is a hash the ranks may differ
 * on; it becomes 1 when it is the same on every rank, else 0. One small
 * MPI_Allreduce; the failure path adds a broadcast of the message. */
int tg__dist_agree(const char *op, int local_rc, uint64_t sig, const char *what,
                   int n_counts, const int64_t *counts, const char *const *names,
                   uint64_t *loose);

/* FNV-1a over bytes, chained from h (start from TG__DIST_FNV). */
#define TG__DIST_FNV 0xcbf29ce484222325ULL
uint64_t tg__dist_hash(uint64_t h, const void *bytes, size_t n);

#endif
