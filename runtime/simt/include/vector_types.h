/* Host stand-in for CUDA's vector_types.h (-Dcuda=host): the built-in vector types,
 * dim3 and uint3, with CUDA's alignment. C-compatible; dim3 gets CUDA's constructor in
 * C++. */
#ifndef TG_SIMT_VECTOR_TYPES_H
#define TG_SIMT_VECTOR_TYPES_H

#define TG_SIMT_VEC2(T, name, align)                                                     \
  typedef struct __attribute__((aligned(align))) name {                                  \
    T x, y;                                                                              \
  } name;
#define TG_SIMT_VEC3(T, name)                                                            \
  typedef struct name {                                                                  \
    T x, y, z;                                                                           \
  } name;
#define TG_SIMT_VEC4(T, name, align)                                                     \
  typedef struct __attribute__((aligned(align))) name {                                  \
    T x, y, z, w;                                                                        \
  } name;

TG_SIMT_VEC2(float, float2, 8)
TG_SIMT_VEC3(float, float3)
TG_SIMT_VEC4(float, float4, 16)
TG_SIMT_VEC2(double, double2, 16)
TG_SIMT_VEC3(double, double3)
TG_SIMT_VEC4(double, double4, 32)
TG_SIMT_VEC2(int, int2, 8)
TG_SIMT_VEC3(int, int3)
TG_SIMT_VEC4(int, int4, 16)
TG_SIMT_VEC2(unsigned int, uint2, 8)
TG_SIMT_VEC3(unsigned int, uint3)
TG_SIMT_VEC4(unsigned int, uint4, 16)
TG_SIMT_VEC2(long long, longlong2, 16)
TG_SIMT_VEC2(unsigned long long, ulonglong2, 16)

#undef TG_SIMT_VEC2
#undef TG_SIMT_VEC3
#undef TG_SIMT_VEC4

typedef struct dim3 {
  unsigned int x, y, z;
#ifdef __cplusplus
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
#endif
} dim3;

#endif
