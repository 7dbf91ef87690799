/* tg_upsample_nearest2d_cat on CUDA (upsample_cat.c's table calls these): one thread
 * per output element forward (source pixel (oy / sh, ox / sw) of a, or the skip
 * element); backward one thread per element of da, summing its block in the CPU's
 * order (no atomics: the same bits on every run), and one per element of dskip. */
#include "runtime/cuda_common.cuh"

#include "ops/shape/upsample_cat.h"

namespace {

template <typename T>
__global__ void ucat_fwd(tg__ucat_dims d, const T *a, const T *skip, T *out) {
  const int64_t H = d.h * d.sh, W = d.w * d.sw, C = d.ca + d.cs;
  const int64_t n = d.n * C * H * W;
  for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n;
       o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t ox = o % W, oy = o / W % H, c = o / (W * H) % C, b = o / (W * H * C);
    out[o] = c < d.ca ? a[((b * d.ca + c) * d.h + oy / d.sh) * d.w + ox / d.sw]
                      : skip[((b * d.cs + c - d.ca) * H + oy) * W + ox];
  }
}

/* da: n * ca * h * w elements, then dskip: n * cs * H * W, as one grid. */
template <typename T>
__global__ void ucat_bwd(tg__ucat_dims d, const T *g, T *da, T *ds) {
  const int64_t H = d.h * d.sh, W = d.w * d.sw, C = d.ca + d.cs;
  const int64_t na = da ? d.n * d.ca * d.h * d.w : 0, ns = ds ? d.n * d.cs * H * W : 0;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < na + ns;
       e += (int64_t)gridDim.x * blockDim.x) {
    if (e >= na) {
      const int64_t k = e - na, s = k % (H * W), c = k / (H * W) % d.cs,
                    b = k / (H * W * d.cs);
      ds[k] = g[(b * C + d.ca + c) * H * W + s];
      continue;
    }
    const int64_t j = e % d.w, i = e / d.w % d.h, c = e / (d.w * d.h) % d.ca,
                  b = e / (d.w * d.h * d.ca);
    const T *G = g + (b * C + c) * H * W + i * d.sh * W + j * d.sw;
    T s = 0;
    for (int64_t u = 0; u < d.sh; u++)
      for (int64_t v = 0; v < d.sw; v++)
        s += G[u * W + v];
    da[e] = s;
  }
}

} // namespace

extern "C" int tg__ucat_cuda_forward(int dtype, const tg__ucat_dims *d, const void *a,
                                     const void *skip, void *out, int device) {
  const int64_t n = d->n * (d->ca + d->cs) * d->h * d->sh * d->w * d->sw;
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned b, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(ucat_fwd<T>, b, TG_THREADS, 0, st, *d, (const T *)a, (const T *)skip,
              (T *)out);
    return TG_CUDA_LAUNCHED(ucat_fwd);
  });
}

extern "C" int tg__ucat_cuda_backward(int dtype, const tg__ucat_dims *d, const void *g,
                                      void *da, void *dskip, int device) {
  const int64_t n = (da ? d->n * d->ca * d->h * d->w : 0) +
                    (dskip ? d->n * d->cs * d->h * d->sh * d->w * d->sw : 0);
  return tg_launch_float(dtype, n, device, [&](auto z, unsigned b, cudaStream_t st) {
    using T = decltype(z);
    TG_LAUNCH(ucat_bwd<T>, b, TG_THREADS, 0, st, *d, (const T *)g, (T *)da, (T *)dskip);
    return TG_CUDA_LAUNCHED(ucat_bwd);
  });
}
