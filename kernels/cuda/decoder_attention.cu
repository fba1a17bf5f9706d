// decoder_attention.cu: attention for the decoder families, over the packed varlen layout.
//
//   out[t, h, :] = sum_k softmax_k(softcap(scale * q[t, h] . k[k, g(h)]) + mask) v[k, g(h)]
//
// qkv (T, (nH + 2 nKV) d): all query heads, then key heads, then value heads of each token
// (RoPE already applied). GQA: query head h reads kv head g(h) = h / (nH / nKV). Mask: key k is
// visible to query t of the same sequence when (not causal or k <= t) and (window <= 0 or
// t - k < window). softcap > 0: s -> tanh(s / softcap) * softcap before the mask (Gemma2).
// Numpy twin: DecoderNumpyOps.decoder_attention (ops/numpy_decoder.py).
//
// Versions:
//   decoder_attention  one warp per (query token, query head); the keys visited in order with
//                      an online softmax (running max and sum), so no score matrix exists and any
//                      length works; lane l holds components l, l + 32, ... of q and of the
//                      output: head_dim <= 256. Memory-bound: each warp re-reads its keys and
//                      values (the tensor-core flash kernels of attention.cu are the fast path
//                      to extend next: causal tiles skip above the diagonal).
//
// STATUS: written without a GPU or nvcc at hand: never compiled, never run.
// Test: python -m pytest tests/test_ops_cuda_decoder.py (skips without a device)
#include "common.cuh"

#define DA_MAX_PER_LANE 8  // head_dim <= 32 * 8 = 256

extern "C" __global__ void decoder_attention(const T* __restrict__ qkv, const int* __restrict__ cu_seqlens, int n_seqs,
                                             T* __restrict__ out, int tokens, int num_heads, int num_kv_heads,
                                             int head_dim, float scale, int causal, int window, float softcap) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= tokens * num_heads) return;
    const int t = warp / num_heads, h = warp % num_heads;
    int lo = 0, hi = n_seqs;  // the sequence s with cu_seqlens[s] <= t < cu_seqlens[s + 1]
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (cu_seqlens[mid] <= t) lo = mid; else hi = mid;
    }
    const int start = cu_seqlens[lo], end = cu_seqlens[lo + 1];
    const int kv = h / (num_heads / num_kv_heads);
    const long long stride = (long long)(num_heads + 2 * num_kv_heads) * head_dim;
    const T* q = qkv + (long long)t * stride + (long long)h * head_dim;
    const int k_off = (num_heads + kv) * head_dim, v_off = (num_heads + num_kv_heads + kv) * head_dim;

    float qv[DA_MAX_PER_LANE], acc[DA_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < DA_MAX_PER_LANE; ++i) {
        const int c = lane + 32 * i;
        qv[i] = c < head_dim ? to_f(q[c]) * scale : 0.0f;
        acc[i] = 0.0f;
    }
    int first = start, last = end;  // keys [first, last)
    if (causal) {
        last = t + 1;
        if (window > 0 && t - window + 1 > first) first = t - window + 1;
    }
    float m = TE_NEG_INF, l = 0.0f;
    for (int k = first; k < last; ++k) {
        const T* kp = qkv + (long long)k * stride + k_off;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < DA_MAX_PER_LANE; ++i) {
            const int c = lane + 32 * i;
            if (c < head_dim) s += qv[i] * to_f(kp[c]);
        }
        s = warp_sum(s);
        if (softcap > 0.0f) s = tanhf(s / softcap) * softcap;
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new);  // 0 on the first key (m = -inf)
        const float p = expf(s - m_new);
        l = l * correction + p;
        const T* vp = qkv + (long long)k * stride + v_off;
#pragma unroll
        for (int i = 0; i < DA_MAX_PER_LANE; ++i) {
            const int c = lane + 32 * i;
            if (c < head_dim) acc[i] = acc[i] * correction + p * to_f(vp[c]);
        }
        m = m_new;
    }
    T* o = out + (long long)t * num_heads * head_dim + (long long)h * head_dim;
    const float inv = 1.0f / l;  // l >= 1: the key with the running max contributes exp(0)
#pragma unroll
    for (int i = 0; i < DA_MAX_PER_LANE; ++i) {
        const int c = lane + 32 * i;
        if (c < head_dim) o[c] = from_f<T>(acc[i] * inv);
    }
}
