// embed.cu: token ids -> the encoder's first hidden states.
//
//   out[t, :] = LayerNorm(word[ids[t]] + position[positions[t]] + token_type0) * ln_w + ln_b
//
// Shapes: ids, positions (T,) int32; word (V, H) T; position (P, H) T; token_type0, ln_w, ln_b
// (H,) float32; out (T, H) T. Sums, mean and variance in float32 (two passes, as numpy does).
// Numpy twin: NumpyOps.embed in tinyembed/engine/ops/numpy_ops.py.
//
// Versions, simple to fast:
//   embed_naive  one block of 256 threads per token; every thread strides over the columns and
//                the row is re-read from global memory in each of the three passes (sum,
//                centred sum of squares, normalize+store). Any H.
//   embed        one block per token, one thread per 16 bytes of the row (8 halves or 4 floats):
//                the row is gathered once into registers with 16-byte loads, reduced with warp
//                shuffles, normalized and written with 16-byte stores. Needs H % VEC == 0 and
//                H / VEC <= 1024; blockDim = H / VEC rounded up to a multiple of 32.
// Both clamp ids and positions into their tables: the engine validates them before they get
// here, and a wrong id must not become an out-of-bounds read that kills the CUDA context.
//
// Test: python -m pytest tests/test_ops_cuda.py -k embed     (needs CuPy and a GPU)
// Bench: python bench/gpu.py --only kernels                   (GB/s against device copy)
#include "common.cuh"

__device__ __forceinline__ int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

extern "C" __global__ void embed_naive(const int* __restrict__ ids, const int* __restrict__ positions,
                                       const T* __restrict__ word, const T* __restrict__ position,
                                       const float* __restrict__ token_type0,
                                       const float* __restrict__ ln_w, const float* __restrict__ ln_b,
                                       T* __restrict__ out, int width, int vocab, int max_positions,
                                       float eps) {
    __shared__ float scratch[32];
    const long long t = blockIdx.x;
    const T* w = word + (long long)clamp_index(ids[t], vocab) * width;
    const T* p = position + (long long)clamp_index(positions[t], max_positions) * width;
    float s = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) s += to_f(w[c]) + to_f(p[c]) + token_type0[c];
    const float mean = block_sum(s, scratch) / (float)width;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const float d = to_f(w[c]) + to_f(p[c]) + token_type0[c] - mean;
        sq += d * d;
    }
    const float rstd = rsqrtf(block_sum(sq, scratch) / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const float d = to_f(w[c]) + to_f(p[c]) + token_type0[c] - mean;
        out[t * width + c] = from_f<T>(d * rstd * ln_w[c] + ln_b[c]);
    }
}

extern "C" __global__ void embed(const int* __restrict__ ids, const int* __restrict__ positions,
                                 const T* __restrict__ word, const T* __restrict__ position,
                                 const float* __restrict__ token_type0,
                                 const float* __restrict__ ln_w, const float* __restrict__ ln_b,
                                 T* __restrict__ out, int width, int vocab, int max_positions, float eps) {
    __shared__ float scratch[32];
    const long long t = blockIdx.x;
    const int col = threadIdx.x * VEC;
    const bool valid = col < width;
    float x[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) x[i] = 0.0f;
    if (valid) {
        float w[VEC], p[VEC], tt[VEC];
        load_vec(word + (long long)clamp_index(ids[t], vocab) * width + col, w);
        load_vec(position + (long long)clamp_index(positions[t], max_positions) * width + col, p);
        load_f32_vec(token_type0 + col, tt);
#pragma unroll
        for (int i = 0; i < VEC; ++i) x[i] = w[i] + p[i] + tt[i];
    }
    layernorm_vec(x, valid, width, ln_w, ln_b, col, eps, scratch);
    if (valid) store_vec(out + t * width + col, x);
}
