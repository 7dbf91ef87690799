/* Host stand-in for CUDA's vector_functions.h (-Dcuda=host): make_<type>(). */
#ifndef TG_SIMT_VECTOR_FUNCTIONS_H
#define TG_SIMT_VECTOR_FUNCTIONS_H

#include "vector_types.h"

#define TG_SIMT_MAKE2(T, name)                                                           \
  static inline name make_##name(T x, T y) {                                             \
    name v = {x, y};                                                                     \
    return v;                                                                            \
  }
#define TG_SIMT_MAKE3(T, name)                                                           \
  static inline name make_##name(T x, T y, T z) {                                        \
    name v = {x, y, z};                                                                  \
    return v;                                                                            \
  }
#define TG_SIMT_MAKE4(T, name)                                                           \
  static inline name make_##name(T x, T y, T z, T w) {                                   \
    name v = {x, y, z, w};                                                               \
    return v;                                                                            \
  }

TG_SIMT_MAKE2(float, float2)
TG_SIMT_MAKE3(float, float3)
TG_SIMT_MAKE4(float, float4)
TG_SIMT_MAKE2(double, double2)
TG_SIMT_MAKE3(double, double3)
TG_SIMT_MAKE4(double, double4)
TG_SIMT_MAKE2(int, int2)
TG_SIMT_MAKE3(int, int3)
TG_SIMT_MAKE4(int, int4)
TG_SIMT_MAKE2(unsigned int, uint2)
TG_SIMT_MAKE3(unsigned int, uint3)
TG_SIMT_MAKE4(unsigned int, uint4)
TG_SIMT_MAKE2(long long, longlong2)
TG_SIMT_MAKE2(unsigned long long, ulonglong2)

#undef TG_SIMT_MAKE2
#undef TG_SIMT_MAKE3
#undef TG_SIMT_MAKE4

#endif
