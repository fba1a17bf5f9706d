// layernorm.cu: the "add & norm" after attention and after the FFN, with the GEMM's bias fused.
//
//   y[t, :] = LayerNorm(y[t, :] + bias + residual[t, :]) * ln_w + ln_b        (in place in y)
//
// Shapes: y, residual (T, H) T; bias, ln_w, ln_b (H,) float32. The sum is formed in float32 and
// never rounded to T before the statistics: mean and centred variance in float32, two passes
// over values held on chip. Numpy twin: NumpyOps.bias_residual_layernorm in ops/numpy_ops.py.
//
// Versions, simple to fast:
//   bias_residual_layernorm_naive  one block of 256 threads per row, column-strided scalar
//                                  loops; y and residual are re-read in each of three passes.
//   bias_residual_layernorm        one block per row, one thread per 16 bytes: y, residual and
//                                  bias read once with 16-byte loads, kept in registers, warp
//                                  shuffle + shared-memory reductions, one 16-byte store.
//                                  Needs H % VEC == 0 and H / VEC <= 1024.
// The bytes moved are the floor here (read y and residual, write y: 3 * T * H * sizeof(T)),
// so the fast version's figure of merit is GB/s against the device's copy bandwidth.
//
// Test: python -m pytest tests/test_ops_cuda.py -k layernorm
// Bench: python bench/gpu.py --only kernels
#include "common.cuh"

extern "C" __global__ void bias_residual_layernorm_naive(T* __restrict__ y, const float* __restrict__ bias,
                                                         const T* __restrict__ residual,
                                                         const float* __restrict__ ln_w,
                                                         const float* __restrict__ ln_b, int width,
                                                         float eps) {
    __shared__ float scratch[32];
    T* row = y + (long long)blockIdx.x * width;
    const T* res = residual + (long long)blockIdx.x * width;
    float s = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) s += to_f(row[c]) + bias[c] + to_f(res[c]);
    const float mean = block_sum(s, scratch) / (float)width;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const float d = to_f(row[c]) + bias[c] + to_f(res[c]) - mean;
        sq += d * d;
    }
    const float rstd = rsqrtf(block_sum(sq, scratch) / (float)width + eps);
    // Each thread rewrites only the columns it read itself: no other thread reads them later.
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const float d = to_f(row[c]) + bias[c] + to_f(res[c]) - mean;
        row[c] = from_f<T>(d * rstd * ln_w[c] + ln_b[c]);
    }
}

extern "C" __global__ void bias_residual_layernorm(T* __restrict__ y, const float* __restrict__ bias,
                                                   const T* __restrict__ residual,
                                                   const float* __restrict__ ln_w,
                                                   const float* __restrict__ ln_b, int width, float eps) {
    __shared__ float scratch[32];
    const long long offset = (long long)blockIdx.x * width + threadIdx.x * VEC;
    const int col = threadIdx.x * VEC;
    const bool valid = col < width;
    float x[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) x[i] = 0.0f;
    if (valid) {
        float r[VEC], b[VEC];
        load_vec(y + offset, x);
        load_vec(residual + offset, r);
        load_f32_vec(bias + col, b);
#pragma unroll
        for (int i = 0; i < VEC; ++i) x[i] += r[i] + b[i];
    }
    layernorm_vec(x, valid, width, ln_w, ln_b, col, eps, scratch);
    if (valid) store_vec(y + offset, x);
}
