// decoder_rope.c: rotate-half (NeoX) rotary embeddings on the Q and K heads of a fused Q|K|V,
// in place, from the cos / sin table (engine/ops/numpy_decoder.py's rope_table, built as
// transformers builds it).
//
//   for each Q and K head x of row t, p = positions[t], i < d/2:
//     x[i]       = x[i] * cos[p, i] - x[i + d/2] * sin[p, i]
//     x[i + d/2] = x[i + d/2] * cos[p, i] + x[i] * sin[p, i]
//
// Shapes: qkv (T, (nH + 2 nKV) d) float32; positions (T,) int32, each < the table's rows;
// cos, sin (P, d/2) float32. rotated = nH + nKV (the V heads follow and are left alone).
// Rows row_begin..row_end-1 only. Numpy twin: DecoderNumpyOps.rope. CUDA twin: decoder.cu.
//
// Versions, simple to fast:
//   rope_naive  scalar, one pair at a time.
//   rope        the table row is loaded once per token and reused by every head; the inner
//               loop over i has no dependencies and vectorizes.
// Memory-bound: one read and write of the Q and K halves.
//
// Test:  python -m pytest tests/test_ops_c_decoder.py -k rope
#include "decoder_common.h"

void rope_naive(float* qkv, const int32_t* positions, const float* cos_table, const float* sin_table,
                int rotated, int total_heads, int half, long row_begin, long row_end) {
    const int d = 2 * half;
    for (long t = row_begin; t < row_end; t++) {
        const float* c = cos_table + (long)positions[t] * half;
        const float* s = sin_table + (long)positions[t] * half;
        for (int h = 0; h < rotated; h++) {
            float* x = qkv + (t * total_heads + h) * (long)d;
            for (int i = 0; i < half; i++) {
                const float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * c[i] - x2 * s[i];
                x[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

void rope(float* restrict qkv, const int32_t* restrict positions, const float* restrict cos_table,
          const float* restrict sin_table, int rotated, int total_heads, int half, long row_begin, long row_end) {
    const int d = 2 * half;
    for (long t = row_begin; t < row_end; t++) {
        const float* restrict c = cos_table + (long)positions[t] * half;
        const float* restrict s = sin_table + (long)positions[t] * half;
        float* restrict row = qkv + t * total_heads * (long)d;
        for (int h = 0; h < rotated; h++) {
            float* restrict x1 = row + (long)h * d;
            float* restrict x2 = x1 + half;
            for (int i = 0; i < half; i++) {
                const float a = x1[i], b = x2[i];
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}
