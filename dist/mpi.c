/* The MPI side: joining the job, the host exchanges every collective starts with, and
 * the collectives for CPU tensors. tapegrad talks on a duplicate of MPI_COMM_WORLD,
 * so the caller's own MPI traffic never matches ours, with MPI_ERRORS_RETURN set on
 * it, so MPI's failures come back as values. Without MPI (stubs at the end), and in a
 * process not launched by mpirun, the world is one process and every collective is
 * the identity. */
#include "dist/internal.h"

#include <stdlib.h>
#include <string.h>

#ifdef TG_HAVE_MPI
#include <mpi.h>

/* A world of one: a sum or a mean over one rank, or a broadcast from it, changes
 * nothing. */
static bool alone(void) { return tg__dist_world() == 1; }

static MPI_Comm comm = MPI_COMM_NULL;
static bool own_init; /* MPI_Init was ours, so MPI_Finalize is too */

static int mpi_status(int rc, const char *call, const char *file, int line) {
  if (rc == MPI_SUCCESS)
    return 0;
  char why[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  if (MPI_Error_string(rc, why, &len) != MPI_SUCCESS)
    snprintf(why, sizeof why, "error code %d", rc);
  return tg__error("MPI error: %s in %s at %s:%d (rank %d of %d)", why, call, file, line,
                   tg__dist_rank(), tg__dist_world());
}
#define TG_MPI(call) mpi_status((call), #call, __FILE__, __LINE__)

/* MPI counts are ints: larger buffers go in pieces of this many elements. */
enum { CHUNK = 1 << 30 };

static bool launched(void) {
  /* Open MPI's mpirun, and PMI/PMIx launchers (MPICH's hydra, Slurm's srun). */
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK",
                                     "PMI_SIZE"};
  for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
    if (getenv(vars[i]))
      return true;
  return false;
}

int tg__dist_mpi_init(int *rank, int *world) {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (finalized)
    return tg__error("MPI was finalised already in this process");
  if (!inited) {
    /* Not started by a launcher: a world of one without touching MPI, which would
     * otherwise start a singleton runtime for nothing. */
    if (!launched()) {
      *rank = 0;
      *world = 1;
      return 0;
    }
    int provided = 0; /* only the calling thread makes MPI calls; kernels use OpenMP */
    if (TG_MPI(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) < 0)
      return -1;
    own_init = true;
  }
  if (TG_MPI(MPI_Comm_dup(MPI_COMM_WORLD, &comm)) < 0 ||
      TG_MPI(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN)) < 0 ||
      TG_MPI(MPI_Comm_rank(comm, rank)) < 0 || TG_MPI(MPI_Comm_size(comm, world)) < 0)
    return -1;
  return 0;
}

int tg__dist_mpi_finalize(void) {
  int rc = 0;
  if (comm != MPI_COMM_NULL)
    rc = TG_MPI(MPI_Comm_free(&comm));
  if (own_init && TG_MPI(MPI_Finalize()) < 0)
    rc = -1;
  own_init = false;
  return rc;
}

int tg__dist_mpi_max(int64_t *buf, int n) {
  return alone()
             ? 0
             : TG_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_INT64_T, MPI_MAX, comm));
}

/* n elements of `size` bytes at buf, in pieces of at most CHUNK: broadcast from root,
 * or (root < 0) summed in place. */
static int in_chunks(void *buf, int64_t n, size_t size, MPI_Datatype type, int root) {
  for (int64_t off = 0; off < n; off += CHUNK) {
    int c = (int)(n - off < CHUNK ? n - off : CHUNK);
    void *p = (char *)buf + (size_t)off * size;
    if ((root < 0 ? TG_MPI(MPI_Allreduce(MPI_IN_PLACE, p, c, type, MPI_SUM, comm))
                  : TG_MPI(MPI_Bcast(p, c, type, root, comm))) < 0)
      return -1;
  }
  return 0;
}

int tg__dist_mpi_bcast(void *buf, size_t bytes, int root) {
  return alone() ? 0 : in_chunks(buf, (int64_t)bytes, 1, MPI_BYTE, root);
}

/* buf /= world, as DDP divides its summed gradients. */
static void divide(void *buf, int64_t n, tg_dtype dtype, int world) {
  if (dtype == TG_F32) {
    float *x = buf, w = (float)world;
#pragma omp parallel for simd num_threads(tg__threads(n))
    for (int64_t i = 0; i < n; i++)
      x[i] /= w;
  } else {
    double *x = buf, w = world;
#pragma omp parallel for simd num_threads(tg__threads(n))
    for (int64_t i = 0; i < n; i++)
      x[i] /= w;
  }
}

static int mpi_all_reduce(void *buf, int64_t n, tg_dtype dtype, tg_dist_op op,
                          int device) {
  (void)device;
  if (alone())
    return 0;
  MPI_Datatype type = dtype == TG_F32   ? MPI_FLOAT
                      : dtype == TG_F64 ? MPI_DOUBLE
                                        : MPI_INT64_T;
  if (in_chunks(buf, n, tg_dtype_size(dtype), type, -1) < 0)
    return -1;
  if (op == TG_DIST_AVERAGE)
    divide(buf, n, dtype, tg__dist_world());
  return 0;
}

#else /* ------------------------------------------ built without MPI: one rank -- */

int tg__dist_mpi_init(int *rank, int *world) {
  *rank = 0;
  *world = 1;
  return 0;
}
int tg__dist_mpi_finalize(void) { return 0; }
int tg__dist_mpi_max(int64_t *buf, int n) {
  (void)buf;
  (void)n;
  return 0;
}
int tg__dist_mpi_bcast(void *buf, size_t bytes, int root) {
  (void)buf;
  (void)bytes;
  (void)root;
  return 0;
}
static int mpi_all_reduce(void *buf, int64_t n, tg_dtype dtype, tg_dist_op op,
                          int device) {
  (void)buf;
  (void)n;
  (void)dtype;
  (void)op;
  (void)device;
  return 0;
}
#endif

static int mpi_broadcast(void *buf, size_t bytes, int root, int device) {
  (void)device;
  return tg__dist_mpi_bcast(buf, bytes, root);
}

static int host_copy(void *dst, const void *src, size_t bytes, int device) {
  (void)device;
  memcpy(dst, src, bytes);
  return 0;
}

const tg__dist_kernels tg__dist_mpi = {"MPI",     NULL,           NULL,
                                       host_copy, mpi_all_reduce, mpi_broadcast};
