// common.cuh: what every tinyembed kernel shares.
//
// * The storage type `T` of activations and matrix weights, chosen at compile time:
//     -DTE_DTYPE=0  float      (float32 mode: exact path, no tensor cores in attention)
//     -DTE_DTYPE=1  __half     (default)
//     -DTE_DTYPE=2  __nv_bfloat16
//   Arithmetic is always float32: values are widened on load and rounded once on store.
//   LayerNorm weights, biases and the token-type row stay float32 (`const float*`).
// * Vec: 16 bytes of T (8 halves or 4 floats), the unit of every wide load and store.
// * Block and warp sums.
//
// Written for both nvcc (CI: kernels/compile_all.sh) and NVRTC (run time: cupy.RawModule), so
// it includes only the CUDA headers NVRTC ships (no <cstdint>, no standard library).
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef TE_DTYPE
#define TE_DTYPE 1
#endif

#if TE_DTYPE == 0
typedef float T;
#elif TE_DTYPE == 1
typedef __half T;
#elif TE_DTYPE == 2
typedef __nv_bfloat16 T;
#else
#error "TE_DTYPE must be 0 (float32), 1 (float16) or 2 (bfloat16)"
#endif

// Dynamic shared memory, for a kernel that needs it: the CPU emulator (kernels/cuda/emulate/)
// cannot compile `extern __shared__` and defines this macro its own way.
#ifndef TE_EXTERN_SHARED
#define TE_EXTERN_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

// -inf without <cmath> (NVRTC has no INFINITY macro).
#define TE_NEG_INF __uint_as_float(0xff800000u)

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename U> __device__ __forceinline__ U from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// 16 bytes of T, loaded and stored in one instruction. Addresses must be 16-byte aligned: the
// host side checks that row widths are multiples of VEC (CuPy allocations are 256-aligned).
#define VEC (16 / (int)sizeof(T))
struct __align__(16) Vec {
    T v[16 / sizeof(T)];
};

__device__ __forceinline__ void load_vec(const T* p, float (&out)[16 / sizeof(T)]) {
    Vec x = *reinterpret_cast<const Vec*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_f(x.v[i]);
}

__device__ __forceinline__ void store_vec(T* p, const float (&in)[16 / sizeof(T)]) {
    Vec x;
#pragma unroll
    for (int i = 0; i < VEC; ++i) x.v[i] = from_f<T>(in[i]);
    *reinterpret_cast<Vec*>(p) = x;
}

// VEC consecutive float32 values (biases, LayerNorm weights): VEC/4 float4 loads.
__device__ __forceinline__ void load_f32_vec(const float* p, float (&out)[16 / sizeof(T)]) {
#pragma unroll
    for (int i = 0; i < VEC; i += 4) {
        float4 x = *reinterpret_cast<const float4*>(p + i);
        out[i] = x.x;
        out[i + 1] = x.y;
        out[i + 2] = x.z;
        out[i + 3] = x.w;
    }
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Sum over the whole block, returned to every thread. blockDim.x must be a multiple of 32
// (at most 1024). `scratch` holds 32 floats; the trailing barrier lets the caller reuse it.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    x = warp_sum(x);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : 0.0f;
    x = warp_sum(x);  // every warp reduces the partials itself: no second broadcast needed
    __syncthreads();
    return x;
}

// LayerNorm of one row held in registers, VEC values per thread (`valid` false for threads past
// the row's end, which contribute 0): two passes over the registers, as ops_numpy does.
__device__ __forceinline__ void layernorm_vec(float (&x)[16 / sizeof(T)], bool valid, int width,
                                             const float* ln_w, const float* ln_b, int col,
                                             float eps, float* scratch) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) s += x[i];
    const float mean = block_sum(valid ? s : 0.0f, scratch) / (float)width;
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        x[i] -= mean;
        sq += x[i] * x[i];
    }
    const float var = block_sum(valid ? sq : 0.0f, scratch) / (float)width;
    const float rstd = rsqrtf(var + eps);
    if (!valid) return;
    float w[16 / sizeof(T)], b[16 / sizeof(T)];
    load_f32_vec(ln_w + col, w);
    load_f32_vec(ln_b + col, b);
#pragma unroll
    for (int i = 0; i < VEC; ++i) x[i] = x[i] * rstd * w[i] + b[i];
}
