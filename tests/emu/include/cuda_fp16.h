/* cuda_fp16.h for the CPU emulation (tests/emu/cuda_emu.h): __half and
 * __half2 with round-to-nearest-even conversions, as the GPU does them. */
#ifndef AMPR_EMU_CUDA_FP16_H
#define AMPR_EMU_CUDA_FP16_H

#include "../cuda_emu.h"

static inline float ampr_emu_h2f(unsigned short h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 1023u, x;
    if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else if (e == 0) {
        float v = (float)m * (1.0f / 16777216.0f); /* m * 2^-24, exact */
        memcpy(&x, &v, 4);
        x |= sign;
    } else {
        x = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline unsigned short ampr_emu_f2h(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                      /* NaN: the GPU's canonical one */
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u); /* rounds to inf */
    if (ax < 0x38800000u) {                                     /* half subnormal or zero */
        float v;
        memcpy(&v, &ax, 4);
        return (unsigned short)(sign | (uint32_t)nearbyintf(v * 16777216.0f));
    }
    uint32_t r = ax - 0x38000000u, h = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (unsigned short)(sign | h);
}

struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(ampr_emu_f2h(f)) {}
    operator float() const { return ampr_emu_h2f(__x); }
};
struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};
typedef __half half;
typedef __half2 half2;
typedef struct { unsigned short x; } __half_raw;

static inline float __half2float(__half h) { return ampr_emu_h2f(h.__x); }
static inline __half __float2half(float f) {
    __half h;
    h.__x = ampr_emu_f2h(f);
    return h;
}
static inline __half __float2half_rn(float f) { return __float2half(f); }
static inline __half __ushort_as_half(unsigned short u) {
    __half h;
    h.__x = u;
    return h;
}
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline short __half_as_short(__half h) { return (short)h.__x; }
static inline __half __short_as_half(short s) { return __ushort_as_half((unsigned short)s); }
static inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
static inline __half2 __floats2half2_rn(float a, float b) {
    return __half2{__float2half(a), __float2half(b)};
}
static inline __half2 __float2half2_rn(float a) { return __floats2half2_rn(a, a); }
static inline float2 __half22float2(__half2 h) {
    return make_float2(__half2float(h.x), __half2float(h.y));
}
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }
/* fp16 arithmetic rounds each result to fp16 (exact in fp32 first: the fp32
 * result of a + b or a * b of halves is exact or correctly rounded once) */
static inline __half __hadd(__half a, __half b) { return __float2half((float)a + (float)b); }
static inline __half __hsub(__half a, __half b) { return __float2half((float)a - (float)b); }
static inline __half __hmul(__half a, __half b) { return __float2half((float)a * (float)b); }
static inline __half __hfma(__half a, __half b, __half c) {
    return __float2half((float)fma((double)(float)a, (double)(float)b, (double)(float)c));
}
static inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
static inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}

#endif
