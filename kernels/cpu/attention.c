// attention.c: varlen multi-head self-attention over a packed batch, one (sequence, head) at a time.
//
//   out[a+i, h*d:(h+1)*d] = sum_j softmax_j(q_i . k_j / sqrt(d)) v_j    for i, j in 0..L-1
//
// qkv (T, 3H) float32 holds Q | K | V side by side (heads h*d..(h+1)*d within each); cu_seqlens
// (n+1,) int32 marks the sequences (a = cu[s], L = cu[s+1] - a); out (T, H). Work items are
// (sequence, head) pairs numbered s * heads + h; a call runs items item_begin..item_end-1, so
// callers' threads split the batch (ctypes releases the GIL). Returns 0, or -1 when the
// scratch allocation fails, -2 for a head size above TE_MAX_HEAD_DIM.
// Numpy twin: NumpyOps.attention (ops/numpy_ops.py: per sequence, batched per-head GEMMs through a
// (heads, rows, L) score buffer). CUDA twin: kernels/cuda/attention.cu.
//
// Versions, simple to fast:
//   attention_naive  per query: all L scores in a row buffer, max, exp, sum, weighted sum of V.
//                    Scalar, libm expf, L floats of scratch per query.
//   attention        flash-attention shaped: K is packed transposed (d, L) and V (L, d) once per
//                    (sequence, head), zero-padded to a multiple of TE_LANES; queries go in
//                    blocks of TE_QUERIES rows, keys in blocks of TE_KEYS columns, with an online
//                    softmax (running max m, running sum l, context rescaled when m grows). The
//                    scores never exceed TE_QUERIES x TE_KEYS floats, whatever L (1..8192 and
//                    beyond); every inner loop has a fixed trip count and vectorizes; the head
//                    sizes 32 and 64 get their own copies with d known at compile time.
// Compute-bound for long inputs: 4 L^2 d FLOPs per (sequence, head). Figure of merit: GFLOP/s
// against numpy's matmul peak (bench/breakdown.py).
//
// Test:  python -m pytest tests/test_ops_c.py -k attention
// Bench: python -m bench.breakdown --seq-len 16,128,512
#include <float.h>
#include <stdlib.h>

#include "common.h"

#define TE_MAX_HEAD_DIM 256
#ifndef TE_QUERIES
#define TE_QUERIES 4
#endif
#ifndef TE_KEYS
#define TE_KEYS 64
#endif

int attention_naive(const float* qkv, float* out, const int32_t* cu_seqlens, int heads, int width,
                    long item_begin, long item_end) {
    const int d = width / heads;
    const long ld = 3L * width;
    const float scale = 1.0f / sqrtf((float)d);
    for (long item = item_begin; item < item_end; item++) {
        const long a = cu_seqlens[item / heads], len = cu_seqlens[item / heads + 1] - a;
        const int h = (int)(item % heads);
        float* scores = malloc(sizeof(float) * (size_t)len);
        if (!scores) return -1;
        for (long i = 0; i < len; i++) {
            const float* q = qkv + (a + i) * ld + h * d;
            float m = -FLT_MAX, sum = 0.0f;
            for (long j = 0; j < len; j++) {
                const float* k = qkv + (a + j) * ld + width + h * d;
                float s = 0.0f;
                for (int c = 0; c < d; c++) s += q[c] * k[c];
                scores[j] = s * scale;
                m = scores[j] > m ? scores[j] : m;
            }
            for (long j = 0; j < len; j++) sum += scores[j] = expf(scores[j] - m);
            float* o = out + (a + i) * width + h * d;
            for (int c = 0; c < d; c++) {
                float acc = 0.0f;
                for (long j = 0; j < len; j++) acc += scores[j] * qkv[(a + j) * ld + 2 * width + h * d + c];
                o[c] = acc / sum;
            }
        }
        free(scores);
    }
    return 0;
}

// One block of up to TE_QUERIES queries against all keys of one (sequence, head).
// kt: K transposed, (d, stride) with stride = len rounded up to TE_KEYS, zero from len to len
// rounded up to TE_LANES (no further is read); v: (stride, d), the same.
static inline __attribute__((always_inline)) void query_block(
    const float* restrict qkv, float* restrict out, long ld, int width, long row0, int rows,
    long len, long stride, const float* restrict kt, const float* restrict v, const int d, float scale) {
    float q[TE_QUERIES][TE_MAX_HEAD_DIM], o[TE_QUERIES][TE_MAX_HEAD_DIM];
    float s[TE_QUERIES][TE_KEYS], m[TE_QUERIES], l[TE_QUERIES];
    for (int i = 0; i < TE_QUERIES; i++) {
        const float* src = qkv + (row0 + (i < rows ? i : 0)) * ld;  // rows past the end repeat row 0
        for (int c = 0; c < d; c++) {
            q[i][c] = src[c] * scale;
            o[i][c] = 0.0f;
        }
        m[i] = -FLT_MAX;
        l[i] = 0.0f;
    }
    for (long j0 = 0; j0 < len; j0 += TE_KEYS) {
        const int keys = len - j0 < TE_KEYS ? (int)(len - j0) : TE_KEYS;
        const int span = (keys + TE_LANES - 1) / TE_LANES * TE_LANES;  // short inputs: less padding
        for (int i = 0; i < TE_QUERIES; i++)
            for (int j = 0; j < TE_KEYS; j++) s[i][j] = 0.0f;
        for (int c = 0; c < d; c++) {  // S = Q K^T: a rank-1 update per head dimension
            const float* restrict krow = kt + c * stride + j0;
            for (int i = 0; i < TE_QUERIES; i++) {
                const float qc = q[i][c];
                if (span == TE_KEYS)
                    for (int j = 0; j < TE_KEYS; j++) s[i][j] = fmaf(qc, krow[j], s[i][j]);
                else
                    for (int j = 0; j < span; j++) s[i][j] = fmaf(qc, krow[j], s[i][j]);
            }
        }
        for (int i = 0; i < TE_QUERIES; i++) {
            float lane[TE_LANES];
            for (int k = 0; k < TE_LANES; k++) lane[k] = -FLT_MAX;
            for (int j = 0; j < span; j += TE_LANES)
                for (int k = 0; k < TE_LANES; k++) {
                    float x = j + k < keys ? s[i][j + k] : -FLT_MAX;
                    lane[k] = x > lane[k] ? x : lane[k];
                }
            float block_max = lane[0];
            for (int k = 1; k < TE_LANES; k++) block_max = lane[k] > block_max ? lane[k] : block_max;
            const float new_max = block_max > m[i] ? block_max : m[i];
            const float rescale = te_exp(m[i] - new_max);
            m[i] = new_max;
            for (int j = 0; j < span; j++) s[i][j] = j < keys ? te_exp(s[i][j] - new_max) : 0.0f;
            l[i] = l[i] * rescale + te_sum(s[i], span);
            for (int c = 0; c < d; c++) o[i][c] *= rescale;
        }
        for (int j = 0; j < keys; j++) {  // O += P V: a rank-1 update per key
            const float* restrict vrow = v + (j0 + j) * d;
            for (int i = 0; i < TE_QUERIES; i++) {
                const float p = s[i][j];
                for (int c = 0; c < d; c++) o[i][c] = fmaf(p, vrow[c], o[i][c]);
            }
        }
    }
    for (int i = 0; i < rows; i++) {
        float* restrict dst = out + (row0 + i) * width;
        const float inv = 1.0f / l[i];
        for (int c = 0; c < d; c++) dst[c] = o[i][c] * inv;
    }
}

static inline __attribute__((always_inline)) void sequence_head(
    const float* restrict qkv, float* restrict out, long a, long len, int h, int width,
    float* restrict kt, float* restrict v, const int d) {
    const long ld = 3L * width;
    const long stride = (len + TE_KEYS - 1) / TE_KEYS * TE_KEYS;
    const float* k = qkv + a * ld + width + h * d;
    const float* vsrc = qkv + a * ld + 2 * width + h * d;
    const long packed = (len + TE_LANES - 1) / TE_LANES * TE_LANES;  // the last block reads no further
    for (long j = 0; j < packed; j++)
        for (int c = 0; c < d; c++) {
            kt[c * stride + j] = j < len ? k[j * ld + c] : 0.0f;
            v[j * d + c] = j < len ? vsrc[j * ld + c] : 0.0f;
        }
    const float scale = 1.0f / sqrtf((float)d);
    for (long i = 0; i < len; i += TE_QUERIES) {
        const int rows = len - i < TE_QUERIES ? (int)(len - i) : TE_QUERIES;
        query_block(qkv + h * d + a * ld, out + h * d + a * width, ld, width, i, rows, len, stride, kt, v, d, scale);
    }
}

static void sequence_head_32(const float* qkv, float* out, long a, long len, int h, int width, float* kt, float* v) {
    sequence_head(qkv, out, a, len, h, width, kt, v, 32);
}

static void sequence_head_64(const float* qkv, float* out, long a, long len, int h, int width, float* kt, float* v) {
    sequence_head(qkv, out, a, len, h, width, kt, v, 64);
}

static void sequence_head_any(const float* qkv, float* out, long a, long len, int h, int width, float* kt,
                              float* v, int d) {
    sequence_head(qkv, out, a, len, h, width, kt, v, d);
}

int attention(const float* qkv, float* out, const int32_t* cu_seqlens, int heads, int width,
              long item_begin, long item_end) {
    const int d = width / heads;
    if (d > TE_MAX_HEAD_DIM) return -2;
    long longest = 0;
    for (long s = item_begin / heads; s <= (item_end - 1) / heads && item_begin < item_end; s++) {
        const long len = cu_seqlens[s + 1] - cu_seqlens[s];
        longest = len > longest ? len : longest;
    }
    const long stride = (longest + TE_KEYS - 1) / TE_KEYS * TE_KEYS;
    float* scratch = malloc(sizeof(float) * (size_t)(2 * stride * d + 1));
    if (!scratch) return -1;
    float *kt = scratch, *v = scratch + stride * d;
    for (long item = item_begin; item < item_end; item++) {
        const long a = cu_seqlens[item / heads], len = cu_seqlens[item / heads + 1] - a;
        const int h = (int)(item % heads);
        if (len <= 0) continue;
        if (d == 32)
            sequence_head_32(qkv, out, a, len, h, width, kt, v);
        else if (d == 64)
            sequence_head_64(qkv, out, a, len, h, width, kt, v);
        else
            sequence_head_any(qkv, out, a, len, h, width, kt, v, d);
    }
    free(scratch);
    return 0;
}
