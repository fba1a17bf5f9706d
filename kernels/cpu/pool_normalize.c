// pool_normalize.c: one vector per sequence, then unit length.
//
//   pooled[s] = hidden[cu[s]] (cls) | mean of hidden[cu[s]:cu[s+1]] (mean) | hidden[cu[s+1]-1] (last)
//   out[s]    = pooled[s] / max(||pooled[s]||, 1e-12)          (torch's F.normalize)
//
// Shapes: hidden (T, H) float32; cu_seqlens (n+1,) int32; out (n, H) float32. mode: 0 cls,
// 1 mean, 2 last (as ops_cuda.POOL_MODES). Sequences seq_begin..seq_end-1 only.
// Numpy twin: NumpyOps.pool_normalize (ops/numpy_ops.py). CUDA twin: kernels/cuda/pool.cu.
//
// Versions, simple to fast:
//   pool_normalize_naive  scalar, sums in double.
//   pool_normalize        the mean accumulates whole rows into out[s] (vectorized across H), the
//                         norm uses te_sum-style lanes. Cheap either way: one read of the rows.
//
// Test:  python -m pytest tests/test_ops_c.py -k pool
#include "common.h"

void pool_normalize_naive(const float* hidden, const int32_t* cu_seqlens, int width, int mode,
                          float* out, long seq_begin, long seq_end) {
    for (long s = seq_begin; s < seq_end; s++) {
        const long a = cu_seqlens[s], b = cu_seqlens[s + 1];
        float* o = out + s * width;
        double norm = 0.0;
        for (int j = 0; j < width; j++) {
            double x = 0.0;
            if (mode == 0) x = hidden[a * width + j];
            else if (mode == 2) x = hidden[(b - 1) * width + j];
            else {
                for (long t = a; t < b; t++) x += hidden[t * width + j];
                x /= (double)(b - a);
            }
            o[j] = (float)x;
            norm += (double)o[j] * o[j];
        }
        norm = sqrt(norm);
        for (int j = 0; j < width; j++) o[j] = (float)(o[j] / (norm > 1e-12 ? norm : 1e-12));
    }
}

void pool_normalize(const float* restrict hidden, const int32_t* restrict cu_seqlens, int width, int mode,
                    float* restrict out, long seq_begin, long seq_end) {
    for (long s = seq_begin; s < seq_end; s++) {
        const long a = cu_seqlens[s], b = cu_seqlens[s + 1];
        float* restrict o = out + s * width;
        if (mode == 1) {
            for (int j = 0; j < width; j++) o[j] = 0.0f;
            for (long t = a; t < b; t++)
                for (int j = 0; j < width; j++) o[j] += hidden[t * width + j];
            const float inv = 1.0f / (float)(b - a);
            for (int j = 0; j < width; j++) o[j] *= inv;
        } else {
            const float* restrict src = hidden + (mode == 0 ? a : b - 1) * width;
            for (int j = 0; j < width; j++) o[j] = src[j];
        }
        float lane[TE_LANES] = {0};
        int j = 0;
        for (; j + TE_LANES <= width; j += TE_LANES)
            for (int k = 0; k < TE_LANES; k++) lane[k] = fmaf(o[j + k], o[j + k], lane[k]);
        float sumsq = 0.0f;
        for (; j < width; j++) sumsq = fmaf(o[j], o[j], sumsq);
        for (int k = 0; k < TE_LANES; k++) sumsq += lane[k];
        const float norm = sqrtf(sumsq);
        const float inv = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
        for (j = 0; j < width; j++) o[j] *= inv;
    }
}
