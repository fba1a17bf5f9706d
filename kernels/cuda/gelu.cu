// gelu.cu: the GEMM epilogues, bias then activation, in place.
//
//   bias_gelu:  y[t, j] = gelu(y[t, j] + bias[j]),  gelu(x) = x * (1 + erf(x / sqrt(2))) / 2
//   bias_add:   y[t, j] = y[t, j] + bias[j]         (the Q|K|V projection's bias: ops.linear)
//
// Shapes: y (T, N) T, bias (N,) float32. Exact (erf) GELU in float32, as BERT and XLM-R use;
// CUDA's erff is accurate to 2 ulp, at least as close as the numpy twin's A&S 7.1.26 (1.5e-7).
// Numpy twin: NumpyOps.bias_gelu in ops/numpy_ops.py (bias_add is NumpyOps.linear's `y += b`).
//
// Versions, simple to fast:
//   *_naive  one thread per element, grid-stride loop, one 2-byte load and store each.
//   bias_gelu, bias_add
//            one thread per 16 bytes (8 halves), grid-stride over vectors: 16-byte loads and
//            stores, the 8 bias values as two float4 loads. Needs N % VEC == 0.
// Memory-bound: one read and one write of y. Figure of merit: GB/s against device copy.
//
// Test: python -m pytest tests/test_ops_cuda.py -k gelu
// Bench: python bench/gpu.py --only kernels
#include "common.cuh"

__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

extern "C" __global__ void bias_gelu_naive(T* __restrict__ y, const float* __restrict__ bias,
                                           long long total, int width) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = from_f<T>(gelu(to_f(y[i]) + bias[i % width]));
}

extern "C" __global__ void bias_add_naive(T* __restrict__ y, const float* __restrict__ bias,
                                          long long total, int width) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = from_f<T>(to_f(y[i]) + bias[i % width]);
}

template <bool GELU>
__device__ __forceinline__ void bias_act_vec(T* __restrict__ y, const float* __restrict__ bias,
                                             long long total, int width) {
    const long long vectors = total / VEC;  // total and width are multiples of VEC
    for (long long v = blockIdx.x * (long long)blockDim.x + threadIdx.x; v < vectors;
         v += (long long)gridDim.x * blockDim.x) {
        const long long i = v * VEC;
        float x[VEC], b[VEC];
        load_vec(y + i, x);
        load_f32_vec(bias + (int)(i % width), b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) x[k] = GELU ? gelu(x[k] + b[k]) : x[k] + b[k];
        store_vec(y + i, x);
    }
}

extern "C" __global__ void bias_gelu(T* __restrict__ y, const float* __restrict__ bias, long long total,
                                     int width) {
    bias_act_vec<true>(y, bias, total, width);
}

extern "C" __global__ void bias_add(T* __restrict__ y, const float* __restrict__ bias, long long total,
                                    int width) {
    bias_act_vec<false>(y, bias, total, width);
}
