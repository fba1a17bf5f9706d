// emu_types.h: the CUDA types and scalar intrinsics the kernels use, on the CPU.
//
// __half and __nv_bfloat16 are 16-bit structs holding the bits; conversions from float round to
// nearest even (subnormals, infinities and NaN included), written out on the bits so that they
// do not depend on the compiler's _Float16 support. No implicit conversions: a kernel that
// relies on one fails to compile here (loudly) rather than being guessed at.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };

struct __half { unsigned short x; };
struct __attribute__((aligned(4))) __half2 { __half x, y; };
struct __nv_bfloat16 { unsigned short x; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };

__forceinline__ float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
__forceinline__ unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
__forceinline__ float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
__forceinline__ int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }

namespace te {
// float -> IEEE binary16 bits, round to nearest even.
inline unsigned short f32_to_f16_bits(float f) {
    const unsigned int u = __float_as_uint(f);
    const unsigned int sign = (u >> 16) & 0x8000u;
    const unsigned int exp = (u >> 23) & 0xffu;
    unsigned int man = u & 0x7fffffu;
    if (exp == 0xffu) return (unsigned short)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));  // inf / NaN
    const int e = (int)exp - 127 + 15;
    if (e >= 31) return (unsigned short)(sign | 0x7c00u);  // overflow -> inf
    if (e <= 0) {                                           // subnormal half (or zero)
        if (e < -10) return (unsigned short)sign;
        man |= 0x800000u;
        const int shift = 14 - e;  // 24-bit significand -> 10 - (1 - e) bits
        const unsigned int half = 1u << (shift - 1);
        unsigned int r = man >> shift;
        const unsigned int rest = man & ((1u << shift) - 1);
        if (rest > half || (rest == half && (r & 1u))) ++r;
        return (unsigned short)(sign | r);
    }
    unsigned int r = ((unsigned int)e << 10) | (man >> 13);
    const unsigned int rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;  // may carry into the exponent: right
    return (unsigned short)(sign | r);
}

inline float f16_bits_to_f32(unsigned short h) {
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    const unsigned int exp = (h >> 10) & 0x1fu;
    const unsigned int man = h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        const float v = (float)man * 5.9604644775390625e-8f;  // 2^-24
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline unsigned short f32_to_bf16_bits(float f) {
    const unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // quiet NaN
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_f32(unsigned short b) { return __uint_as_float((unsigned int)b << 16); }
}  // namespace te

__forceinline__ float __half2float(__half h) { return te::f16_bits_to_f32(h.x); }
__forceinline__ __half __float2half_rn(float f) { return __half{te::f32_to_f16_bits(f)}; }
__forceinline__ __half __float2half(float f) { return __float2half_rn(f); }
__forceinline__ __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }
__forceinline__ __half2 __float2half2_rn(float f) { return __floats2half2_rn(f, f); }
__forceinline__ float __low2float(__half2 h) { return __half2float(h.x); }
__forceinline__ float __high2float(__half2 h) { return __half2float(h.y); }
__forceinline__ float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }

__forceinline__ float __bfloat162float(__nv_bfloat16 b) { return te::bf16_bits_to_f32(b.x); }
__forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{te::f32_to_bf16_bits(f)}; }
__forceinline__ __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
__forceinline__ __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
__forceinline__ float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
__forceinline__ float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }

// Math: the CPU's libm. The fast intrinsics (__expf ...) are the accurate functions here, so
// a result that depends on their error on the GPU is not reproduced: compare with tolerances.
__forceinline__ float __expf(float x) { return expf(x); }
__forceinline__ float __logf(float x) { return logf(x); }
__forceinline__ float __fdividef(float a, float b) { return a / b; }
__forceinline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
__forceinline__ float __frcp_rn(float x) { return 1.0f / x; }
__forceinline__ float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
__forceinline__ int __popc(unsigned int x) { return __builtin_popcount(x); }
__forceinline__ int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
__forceinline__ int __ffs(int x) { return __builtin_ffs(x); }

// Atomics: a block's threads are fibers on one OS thread and blocks run one at a time, so a
// plain read-modify-write is atomic here. Blocks that wait for each other would deadlock.
template <typename U> __forceinline__ U atomicAdd(U* p, U v) { U old = *p; *p = old + v; return old; }
template <typename U> __forceinline__ U atomicSub(U* p, U v) { U old = *p; *p = old - v; return old; }
template <typename U> __forceinline__ U atomicMax(U* p, U v) { U old = *p; if (v > old) *p = v; return old; }
template <typename U> __forceinline__ U atomicMin(U* p, U v) { U old = *p; if (v < old) *p = v; return old; }
template <typename U> __forceinline__ U atomicExch(U* p, U v) { U old = *p; *p = v; return old; }
template <typename U> __forceinline__ U atomicCAS(U* p, U cmp, U v) { U old = *p; if (old == cmp) *p = v; return old; }
__forceinline__ unsigned int atomicOr(unsigned int* p, unsigned int v) { unsigned int o = *p; *p = o | v; return o; }
__forceinline__ unsigned int atomicAnd(unsigned int* p, unsigned int v) { unsigned int o = *p; *p = o & v; return o; }
