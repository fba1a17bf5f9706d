// embed.c: the embedding layer, fused: gather three rows, add them, LayerNorm, one write.
//
//   out[t, :] = LayerNorm(word[ids[t], :] + position[pos[t], :] + type0[:]) * ln_w + ln_b
//
// Shapes: ids, pos (T,) int32; word (V, H), position (P, H), type0 (H,), ln_w, ln_b (H,);
// out (T, H), all float32, rows contiguous. Rows row_begin..row_end-1 only, so that callers'
// threads can split T (ctypes releases the GIL for the call).
// Numpy twin: NumpyOps.embed in tinyembed/engine/ops/numpy_ops.py (gather, +=, +=, LayerNorm: four
// passes over (T, H)). CUDA twin: kernels/cuda/embed.cu.
//
// Versions, simple to fast:
//   embed_naive  one row at a time, scalar LayerNorm with running sums in double.
//   embed        the sum is written once into out (still in L1), then te_layernorm's
//                vectorized two passes over that row: one trip to memory per row instead of
//                four full passes over (T, H).
//
// Test:  python -m pytest tests/test_ops_c.py -k embed
// Bench: python -m bench.breakdown (the "other" row), python -m bench.engine
#include "common.h"

void embed_naive(const int32_t* ids, const int32_t* pos, const float* word, const float* position,
                 const float* type0, const float* ln_w, const float* ln_b, float eps, int width,
                 float* out, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        float* y = out + t * width;
        double sum = 0.0, sumsq = 0.0;
        for (int j = 0; j < width; j++) {
            y[j] = word[(long)ids[t] * width + j] + position[(long)pos[t] * width + j] + type0[j];
            sum += y[j];
        }
        double mean = sum / width;
        for (int j = 0; j < width; j++) sumsq += (y[j] - mean) * (y[j] - mean);
        double rstd = 1.0 / sqrt(sumsq / width + eps);
        for (int j = 0; j < width; j++) y[j] = (float)((y[j] - mean) * rstd) * ln_w[j] + ln_b[j];
    }
}

void embed(const int32_t* restrict ids, const int32_t* restrict pos, const float* restrict word,
           const float* restrict position, const float* restrict type0, const float* restrict ln_w,
           const float* restrict ln_b, float eps, int width, float* restrict out, long row_begin,
           long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        float* restrict y = out + t * width;
        const float* restrict w = word + (long)ids[t] * width;
        const float* restrict p = position + (long)pos[t] * width;
        for (int j = 0; j < width; j++) y[j] = w[j] + p[j] + type0[j];
        te_layernorm(y, ln_w, ln_b, eps, width);
    }
}
