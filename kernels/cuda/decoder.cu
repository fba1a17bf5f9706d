// decoder.cu: the decoder families' row and elementwise ops. Numpy twins (same names, same
// arguments): DecoderNumpyOps in engine/ops/numpy_decoder.py; host side: ops/cuda_decoder.py.
//
//   embedding         out[t, :] = table[ids[t], :] * scale                  one block per token
//   rmsnorm           out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w one block per row
//   add_rmsnorm       residual += y; y = rmsnorm(residual) * w (in place)   one block per row
//   head_rmsnorm      RMSNorm over head_dim of every Q and K head of a fused Q|K|V (Qwen3):
//                     one warp per (token, head)
//   rope              rotate-half RoPE on the Q and K heads, cos/sin from float32 tables
//                     (P, d/2) flattened: one thread per (token, head, pair)
//   gated_activation  out[t, i] = act(gu[t, i]) * gu[t, I + i], act = silu (0) or tanh-GELU (1)
//   last_token        out[s, :] = hidden[cu_seqlens[s + 1] - 1, :]          one block per sequence
//
// Storage T (common.cuh), arithmetic in float32, norm gains float32. Only the simple versions
// exist: these ops are memory-bound and small next to the GEMMs; vectorized versions like
// layernorm.cu's are the next step.
//
// STATUS: written without a GPU or nvcc at hand: never compiled, never run. The GPU tests
// (tests/test_ops_cuda_decoder.py) compare every op with its numpy twin on a device.
#include "common.cuh"

extern "C" __global__ void embedding(const int* __restrict__ ids, const T* __restrict__ table, T* __restrict__ out,
                                     int width, int vocab, float scale) {
    const int id = ids[blockIdx.x];
    T* dst = out + (long long)blockIdx.x * width;
    const bool valid = id >= 0 && id < vocab;  // ids are checked on the host; never read outside
    const T* src = table + (long long)(valid ? id : 0) * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = from_f<T>(valid ? to_f(src[c]) * scale : 0.0f);
}

// x and out may be the same array: each thread rewrites only the columns it read.
extern "C" __global__ void rmsnorm(const T* x, T* out, const float* __restrict__ w, int width, float eps) {
    __shared__ float scratch[32];
    const T* src = x + (long long)blockIdx.x * width;
    T* dst = out + (long long)blockIdx.x * width;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const float v = to_f(src[c]);
        sq += v * v;
    }
    const float scale = rsqrtf(block_sum(sq, scratch) / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = from_f<T>(to_f(src[c]) * scale * w[c]);
}

extern "C" __global__ void add_rmsnorm(T* __restrict__ y, T* __restrict__ residual, const float* __restrict__ w,
                                       int width, float eps) {
    __shared__ float scratch[32];
    T* row = y + (long long)blockIdx.x * width;
    T* res = residual + (long long)blockIdx.x * width;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const T sum = from_f<T>(to_f(res[c]) + to_f(row[c]));  // the residual stream is stored in T
        res[c] = sum;
        const float v = to_f(sum);
        sq += v * v;
    }
    const float scale = rsqrtf(block_sum(sq, scratch) / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) row[c] = from_f<T>(to_f(res[c]) * scale * w[c]);
}

extern "C" __global__ void head_rmsnorm(T* __restrict__ qkv, const float* __restrict__ q_w,
                                        const float* __restrict__ k_w, int tokens, int num_heads,
                                        int num_kv_heads, int head_dim, float eps) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int normed = num_heads + num_kv_heads;  // Q heads, then K heads; V is left alone
    if (warp >= tokens * normed) return;
    const int t = warp / normed, h = warp % normed;
    const float* w = h < num_heads ? q_w : k_w;
    T* x = qkv + (long long)t * (num_heads + 2 * num_kv_heads) * head_dim + (long long)h * head_dim;
    float sq = 0.0f;
    for (int c = lane; c < head_dim; c += 32) {
        const float v = to_f(x[c]);
        sq += v * v;
    }
    const float scale = rsqrtf(warp_sum(sq) / (float)head_dim + eps);
    for (int c = lane; c < head_dim; c += 32) x[c] = from_f<T>(to_f(x[c]) * scale * w[c]);
}

extern "C" __global__ void rope(T* __restrict__ qkv, const int* __restrict__ positions, const float* __restrict__ cos_table,
                                const float* __restrict__ sin_table, long long total, int rotated_heads,
                                int row_width, int half) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int pair = (int)(i % half);
        const long long head = i / half;  // over tokens x rotated heads
        const long long t = head / rotated_heads;
        const int h = (int)(head % rotated_heads);
        T* x = qkv + t * row_width + (long long)h * 2 * half;
        const long long at = (long long)positions[t] * half + pair;
        const float c = cos_table[at], s = sin_table[at];
        const float x1 = to_f(x[pair]), x2 = to_f(x[pair + half]);
        x[pair] = from_f<T>(x1 * c - x2 * s);  // q*cos + rotate_half(q)*sin, rotate_half = [-q2, q1]
        x[pair + half] = from_f<T>(x2 * c + x1 * s);
    }
}

extern "C" __global__ void gated_activation(const T* __restrict__ gate_up, T* __restrict__ out, long long total,
                                            int inner, int kind) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / inner;
        const int col = (int)(i % inner);
        const float g = to_f(gate_up[row * 2 * inner + col]);
        const float u = to_f(gate_up[row * 2 * inner + inner + col]);
        float a;
        if (kind == 0) {
            a = g / (1.0f + expf(-g));  // silu; expf(-g) = inf for g < -88 gives -0, as torch
        } else {
            a = 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
        }
        out[i] = from_f<T>(a * u);
    }
}

extern "C" __global__ void last_token(const T* __restrict__ hidden, const int* __restrict__ cu_seqlens,
                                      T* __restrict__ out, int width) {
    const long long row = cu_seqlens[blockIdx.x + 1] - 1;
    const T* src = hidden + row * width;
    T* dst = out + (long long)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src[c];
}
