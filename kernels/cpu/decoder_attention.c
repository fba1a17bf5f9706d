// decoder_attention.c: the decoders' attention over a packed batch: causal or bidirectional, an
// optional sliding window, an optional soft-cap, grouped KV heads; never an (L x L) buffer.
//
//   s(i, j)  = scale * q_i . k_j;  s = tanh(s / cap) * cap when cap > 0 (Gemma2), before the mask
//   visible  = not causal, or (j <= i and (window == 0 or i - j < window))
//   out[i]   = sum over visible j of softmax_j(s(i, j)) v_j
//
// qkv (T, (nH + 2 nKV) d) float32: all query heads, then key heads, then value heads; query head
// h reads kv head h / (nH / nKV). cu_seqlens (n+1,) int32; out (T, nH d). Work items are
// (sequence, kv head) pairs numbered s * nKV + g; a call runs items item_begin..item_end-1
// (callers' threads split them). Returns 0, -1 when scratch allocation fails, -2 for d > 256.
// Numpy twin: DecoderNumpyOps.decoder_attention (ops/numpy_decoder.py: query blocks x key blocks
// of 1024 with an online softmax, per-head GEMMs). CUDA twin: kernels/cuda/decoder_attention.cu.
//
// Versions, simple to fast:
//   decoder_attention_naive  per query: the visible scores in an L-float row buffer, max, libm
//                            expf, sum, weighted sum of V. Scalar.
//   decoder_attention        flash-attention shaped, as attention.c: K packed transposed (d, L) and
//                            V (L, d) once per (sequence, kv head) and shared by the group's query
//                            heads; queries in blocks of TE_DQ rows, keys in blocks of TE_DK, an
//                            online softmax (running max, running sum, rescaled context). A query
//                            block visits only the key blocks it can see (causal: up to its last
//                            row; window: from its first row - W + 1), and masks element-wise only
//                            in the blocks that straddle an edge. Scores never exceed TE_DQ x TE_DK
//                            floats, whatever L. d = 64, 128, 256 get copies with d known.
// Compute-bound for long inputs: about 2 L^2 d FLOPs per query head when causal, 4 L^2 d when not.
//
// Test:  python -m pytest tests/test_ops_c_decoder.py -k attention
// Bench: python -m bench.decoder
#include <float.h>
#include <stdlib.h>

#include "decoder_common.h"

#define TE_DMAX 256
#define TE_DQ 4
#define TE_DK 64

static inline int is_visible(long i, long j, int causal, int window) {
    return !causal || (j <= i && (window <= 0 || i - j < window));
}

static inline float soft_cap(float s, float cap) {
    return cap > 0.0f ? te_tanh(s / cap) * cap : s;
}

int decoder_attention_naive(const float* qkv, float* out, const int32_t* cu_seqlens, int heads, int kv_heads, int d,
                            float scale, int causal, int window, float softcap, long item_begin, long item_end) {
    if (d > TE_DMAX) return -2;
    const long ld = (long)(heads + 2 * kv_heads) * d, width = (long)heads * d;
    const int group = heads / kv_heads;
    for (long item = item_begin; item < item_end; item++) {
        const long a = cu_seqlens[item / kv_heads], len = cu_seqlens[item / kv_heads + 1] - a;
        const int g = (int)(item % kv_heads);
        float* p = malloc(sizeof(float) * (size_t)(len > 0 ? len : 1));
        if (!p) return -1;
        const float* k = qkv + a * ld + (long)(heads + g) * d;
        const float* v = qkv + a * ld + (long)(heads + kv_heads + g) * d;
        for (int h = g * group; h < (g + 1) * group; h++)
            for (long i = 0; i < len; i++) {
                const float* q = qkv + (a + i) * ld + (long)h * d;
                float m = -FLT_MAX, sum = 0.0f;
                for (long j = 0; j < len; j++) {
                    float s = 0.0f;
                    for (int c = 0; c < d; c++) s += q[c] * k[j * ld + c];
                    s *= scale;
                    if (softcap > 0.0f) s = tanhf(s / softcap) * softcap;
                    p[j] = s;
                    if (is_visible(i, j, causal, window) && s > m) m = s;
                }
                for (long j = 0; j < len; j++) sum += p[j] = is_visible(i, j, causal, window) ? expf(p[j] - m) : 0.0f;
                float* o = out + (a + i) * width + (long)h * d;
                for (int c = 0; c < d; c++) {
                    float acc = 0.0f;
                    for (long j = 0; j < len; j++) acc += p[j] * v[j * ld + c];
                    o[c] = acc / sum;
                }
            }
        free(p);
    }
    return 0;
}

// One block of up to TE_DQ queries (rows i0..i0+rows-1) of one head against the keys it sees.
// kt: K transposed (d, stride), v: (stride, d); both zero from len up to len rounded to TE_LANES.
static inline __attribute__((always_inline)) void query_block(
    const float* restrict qsrc, long ld, float* restrict dst, long width, long i0, int rows, long len,
    long stride, const float* restrict kt, const float* restrict v, const int d, float scale, int causal,
    int window, float cap) {
    float q[TE_DQ][TE_DMAX], o[TE_DQ][TE_DMAX], s[TE_DQ][TE_DK], m[TE_DQ], l[TE_DQ];
    for (int i = 0; i < TE_DQ; i++) {
        const float* src = qsrc + (i0 + (i < rows ? i : 0)) * ld;  // rows past the end repeat row 0
        for (int c = 0; c < d; c++) {
            q[i][c] = src[c] * scale;
            o[i][c] = 0.0f;
        }
        m[i] = -FLT_MAX;
        l[i] = 0.0f;
    }
    const long last = i0 + rows - 1;
    long lo = 0, hi = causal ? last + 1 : len;
    if (causal && window > 0 && i0 - window + 1 > 0) lo = (i0 - window + 1) / TE_DK * TE_DK;
    for (long j0 = lo; j0 < hi; j0 += TE_DK) {
        const int keys = hi - j0 < TE_DK ? (int)(hi - j0) : TE_DK;
        const int span = (keys + TE_LANES - 1) / TE_LANES * TE_LANES;
        // every (row, key) of this block visible: no element-wise mask
        const int all = !causal || (j0 + keys - 1 <= i0 && (window <= 0 || last - j0 < window));
        for (int i = 0; i < TE_DQ; i++)
            for (int j = 0; j < TE_DK; j++) s[i][j] = 0.0f;
        for (int c = 0; c < d; c++) {  // S = Q K^T: a rank-1 update per head dimension
            const float* restrict krow = kt + c * stride + j0;
            for (int i = 0; i < TE_DQ; i++) {
                const float qc = q[i][c];
                if (span == TE_DK)
                    for (int j = 0; j < TE_DK; j++) s[i][j] = fmaf(qc, krow[j], s[i][j]);
                else
                    for (int j = 0; j < span; j++) s[i][j] = fmaf(qc, krow[j], s[i][j]);
            }
        }
        for (int i = 0; i < TE_DQ; i++) {
            const long row = i0 + (i < rows ? i : 0);
            if (cap > 0.0f)
                for (int j = 0; j < span; j++) s[i][j] = soft_cap(s[i][j], cap);
            if (!all)
                for (int j = 0; j < span; j++)
                    s[i][j] = is_visible(row, j0 + j, causal, window) ? s[i][j] : -FLT_MAX;
            float lane[TE_LANES];
            for (int k = 0; k < TE_LANES; k++) lane[k] = -FLT_MAX;
            for (int j = 0; j < span; j += TE_LANES)
                for (int k = 0; k < TE_LANES; k++) {
                    const float x = j + k < keys ? s[i][j + k] : -FLT_MAX;
                    lane[k] = x > lane[k] ? x : lane[k];
                }
            float block_max = lane[0];
            for (int k = 1; k < TE_LANES; k++) block_max = lane[k] > block_max ? lane[k] : block_max;
            const float new_max = block_max > m[i] ? block_max : m[i];
            const float rescale = te_exp(m[i] - new_max);
            m[i] = new_max;
            for (int j = 0; j < span; j++)  // masked and padding keys weigh exactly 0
                s[i][j] = (j < keys && s[i][j] != -FLT_MAX) ? te_exp(s[i][j] - new_max) : 0.0f;
            l[i] = l[i] * rescale + te_sum(s[i], span);
            for (int c = 0; c < d; c++) o[i][c] *= rescale;
        }
        for (int j = 0; j < keys; j++) {  // O += P V: a rank-1 update per key
            const float* restrict vrow = v + (j0 + j) * d;
            for (int i = 0; i < TE_DQ; i++) {
                const float p = s[i][j];
                for (int c = 0; c < d; c++) o[i][c] = fmaf(p, vrow[c], o[i][c]);
            }
        }
    }
    for (int i = 0; i < rows; i++) {
        float* restrict row = dst + (i0 + i) * width;
        const float inv = 1.0f / l[i];
        for (int c = 0; c < d; c++) row[c] = o[i][c] * inv;
    }
}

static inline __attribute__((always_inline)) void sequence_group(
    const float* restrict qkv, float* restrict out, long a, long len, int g, int heads, int kv_heads,
    float* restrict kt, float* restrict v, const int d, float scale, int causal, int window, float cap) {
    const long ld = (long)(heads + 2 * kv_heads) * d, width = (long)heads * d;
    const long stride = (len + TE_DK - 1) / TE_DK * TE_DK;
    const float* k = qkv + a * ld + (long)(heads + g) * d;
    const float* vsrc = qkv + a * ld + (long)(heads + kv_heads + g) * d;
    const long packed = (len + TE_LANES - 1) / TE_LANES * TE_LANES;  // the last block reads no further
    for (long j = 0; j < packed; j++)
        for (int c = 0; c < d; c++) {
            kt[c * stride + j] = j < len ? k[j * ld + c] : 0.0f;
            v[j * d + c] = j < len ? vsrc[j * ld + c] : 0.0f;
        }
    const int group = heads / kv_heads;
    for (int h = g * group; h < (g + 1) * group; h++)
        for (long i = 0; i < len; i += TE_DQ) {
            const int rows = len - i < TE_DQ ? (int)(len - i) : TE_DQ;
            query_block(qkv + a * ld + (long)h * d, ld, out + a * width + (long)h * d, width, i, rows, len, stride,
                        kt, v, d, scale, causal, window, cap);
        }
}

#define TE_GROUP_FOR(D)                                                                                        \
    static void sequence_group_##D(const float* qkv, float* out, long a, long len, int g, int heads,          \
                                   int kv_heads, float* kt, float* v, float scale, int causal, int window,    \
                                   float cap) {                                                               \
        sequence_group(qkv, out, a, len, g, heads, kv_heads, kt, v, D, scale, causal, window, cap);           \
    }
TE_GROUP_FOR(64)
TE_GROUP_FOR(128)
TE_GROUP_FOR(256)

static void sequence_group_any(const float* qkv, float* out, long a, long len, int g, int heads, int kv_heads,
                               float* kt, float* v, int d, float scale, int causal, int window, float cap) {
    sequence_group(qkv, out, a, len, g, heads, kv_heads, kt, v, d, scale, causal, window, cap);
}

int decoder_attention(const float* qkv, float* out, const int32_t* cu_seqlens, int heads, int kv_heads, int d,
                      float scale, int causal, int window, float softcap, long item_begin, long item_end) {
    if (d > TE_DMAX) return -2;
    long longest = 0;
    for (long item = item_begin; item < item_end; item++) {
        const long len = cu_seqlens[item / kv_heads + 1] - cu_seqlens[item / kv_heads];
        longest = len > longest ? len : longest;
    }
    const long stride = (longest + TE_DK - 1) / TE_DK * TE_DK;
    float* scratch = malloc(sizeof(float) * (size_t)(2 * stride * d + 1));
    if (!scratch) return -1;
    float *kt = scratch, *v = scratch + stride * d;
    for (long item = item_begin; item < item_end; item++) {
        const long a = cu_seqlens[item / kv_heads], len = cu_seqlens[item / kv_heads + 1] - a;
        const int g = (int)(item % kv_heads);
        if (len <= 0) continue;
        if (d == 64)
            sequence_group_64(qkv, out, a, len, g, heads, kv_heads, kt, v, scale, causal, window, softcap);
        else if (d == 128)
            sequence_group_128(qkv, out, a, len, g, heads, kv_heads, kt, v, scale, causal, window, softcap);
        else if (d == 256)
            sequence_group_256(qkv, out, a, len, g, heads, kv_heads, kt, v, scale, causal, window, softcap);
        else
            sequence_group_any(qkv, out, a, len, g, heads, kv_heads, kt, v, d, scale, causal, window, softcap);
    }
    free(scratch);
    return 0;
}
