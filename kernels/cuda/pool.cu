// pool.cu: one vector per sequence, truncated and L2-normalized, in float32.
//
//   pooled[s, :] = hidden[start_s, :]                       mode 0 "cls"
//                = mean(hidden[start_s:end_s, :])           mode 1 "mean"
//                = hidden[end_s - 1, :]                     mode 2 "last"
//   out[s, :dims] = pooled[s, :dims] / max(||pooled[s, :dims]||, 1e-12)
//
// Shapes: hidden (T, H) T; cu_seqlens (n+1,) int32; out (n, dims) float32, 1 <= dims <= H
// (dims < H is Matryoshka truncation: keep the first dims components, then renormalize).
// An empty sequence gets a zero vector (numpy's twin would read a neighbour's row or divide by 0;
// the engine never sends one).
// Sums in float32. Numpy twin: NumpyOps.pool_normalize (+ model.truncate_dimensions).
//
// Versions, simple to fast:
//   pool_normalize_naive  one block of 256 threads per sequence, one column per thread per
//                         step, 2-byte loads; the pooled row is written to `out` and then
//                         rescaled in place once the block knows its norm.
//   pool_normalize        one block per sequence, one thread per 16 bytes of the kept columns
//                         (blockDim = ceil(dims / VEC) rounded up to 32, at most 1024): 16-byte
//                         loads, rows summed four at a time so several loads are in flight,
//                         the pooled vector kept in registers. Needs H % VEC == 0.
// Mean pooling reads every token once (T * H * sizeof(T) bytes); CLS/last read n rows.
// A single very long sequence is summed by one block: fine for embedding batches (many
// sequences), slower than the copy bandwidth for one 8192-token input (see gpu_notes.md).
//
// Test: python -m pytest tests/test_ops_cuda.py -k pool
// Bench: python bench/gpu.py --only kernels
#include "common.cuh"

extern "C" __global__ void pool_normalize_naive(const T* __restrict__ hidden, const int* __restrict__ cu_seqlens,
                                                float* __restrict__ out, int width, int dims, int mode) {
    __shared__ float scratch[32];
    const int seq = blockIdx.x;
    const int start = cu_seqlens[seq], end = cu_seqlens[seq + 1];
    const int first = mode == 2 ? end - 1 : start;
    const int last = mode == 1 ? end : first + 1;  // rows [first, last) are averaged
    float* o = out + (long long)seq * dims;
    if (end <= start) {  // an empty sequence (the engine never sends one): zeros, no stray reads
        for (int c = threadIdx.x; c < dims; c += blockDim.x) o[c] = 0.0f;
        return;
    }
    const float inv_rows = 1.0f / (float)(last - first);
    float sq = 0.0f;
    for (int c = threadIdx.x; c < dims; c += blockDim.x) {
        float s = 0.0f;
        for (int r = first; r < last; ++r) s += to_f(hidden[(long long)r * width + c]);
        s *= inv_rows;
        o[c] = s;
        sq += s * s;
    }
    const float inv_norm = 1.0f / fmaxf(sqrtf(block_sum(sq, scratch)), 1e-12f);
    for (int c = threadIdx.x; c < dims; c += blockDim.x) o[c] *= inv_norm;  // own columns only
}

extern "C" __global__ void pool_normalize(const T* __restrict__ hidden, const int* __restrict__ cu_seqlens,
                                          float* __restrict__ out, int width, int dims, int mode) {
    __shared__ float scratch[32];
    const int seq = blockIdx.x;
    const int start = cu_seqlens[seq], end = cu_seqlens[seq + 1];
    const int first = mode == 2 ? end - 1 : start;
    const int last = mode == 1 ? end : first + 1;
    const int col = threadIdx.x * VEC;
    if (end <= start) {  // an empty sequence (the engine never sends one): zeros, no stray reads
        for (int i = 0; i < VEC; ++i)
            if (col + i < dims) out[(long long)seq * dims + col + i] = 0.0f;
        return;  // uniform over the block: before any barrier
    }
    const bool valid = col < dims;  // the vector may reach past dims (not past H): masked below
    float acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = 0.0f;
    if (valid) {
        const T* p = hidden + (long long)first * width + col;
        int r = first;
        for (; r + 4 <= last; r += 4, p += 4LL * width) {
            float a[VEC], b[VEC], c[VEC], d[VEC];
            load_vec(p, a);
            load_vec(p + width, b);
            load_vec(p + 2LL * width, c);
            load_vec(p + 3LL * width, d);
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc[i] += (a[i] + b[i]) + (c[i] + d[i]);
        }
        for (; r < last; ++r, p += width) {
            float a[VEC];
            load_vec(p, a);
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc[i] += a[i];
        }
    }
    const float inv_rows = 1.0f / (float)(last - first);
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        acc[i] = col + i < dims ? acc[i] * inv_rows : 0.0f;
        sq += acc[i] * acc[i];
    }
    const float inv_norm = 1.0f / fmaxf(sqrtf(block_sum(sq, scratch)), 1e-12f);
    float* o = out + (long long)seq * dims + col;
#pragma unroll
    for (int i = 0; i < VEC; ++i)
        if (col + i < dims) o[i] = acc[i] * inv_norm;  // dims need not be a multiple of VEC
}
