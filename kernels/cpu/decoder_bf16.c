// decoder_bf16.c: bfloat16 weights, kept as the checkpoint stores them (memory-mapped), widened
// to float32 only where and when they are used.
//
//   widen_bf16      dst[i] = float32(src[i])        (bf16 is the high half of a float32: exact)
//   embedding_bf16  out[t] = float32(table[ids[t]]) * scale     (scale 1, or Gemma2's sqrt(H))
//
// A decoder layer's fused weight is widened into one float32 work buffer right before its GEMM
// (families/decoder.py), so the host holds the bf16 file pages plus one layer's float32 weights.
// Shapes: src, dst (n,); table (V, H) uint16; ids (T,) int32 (checked by the caller); out (T, H).
// Elements / rows begin..end-1 only. Numpy twins: DecoderNumpyOps.widen_bf16 / embedding.
//
// Versions, simple to fast:
//   *_naive  the same shift, written as the loops the callers need.
//   fast     restrict pointers and a branch-free loop: the compiler widens 16 lanes a step;
//            the embedding's scale runs only when it is not 1.
// Memory-bound: reads 2 bytes, writes 4 per weight.
//
// Test:  python -m pytest tests/test_ops_c_decoder.py -k bf16
#include "decoder_common.h"

void widen_bf16_naive(const uint16_t* src, float* dst, long begin, long end) {
    for (long i = begin; i < end; i++) dst[i] = te_bf16(src[i]);
}

void embedding_bf16_naive(const int32_t* ids, const uint16_t* table, int width, float scale, float* out,
                          long begin, long end) {
    for (long t = begin; t < end; t++)
        for (int j = 0; j < width; j++) out[t * width + j] = te_bf16(table[(long)ids[t] * width + j]) * scale;
}

void widen_bf16(const uint16_t* restrict src, float* restrict dst, long begin, long end) {
    for (long i = begin; i < end; i++) dst[i] = te_bf16(src[i]);
}

void embedding_bf16(const int32_t* restrict ids, const uint16_t* restrict table, int width, float scale,
                    float* restrict out, long begin, long end) {
    for (long t = begin; t < end; t++) {
        const uint16_t* restrict row = table + (long)ids[t] * width;
        float* restrict o = out + t * width;
        widen_bf16(row, o, 0, width);
        if (scale != 1.0f)
            for (int j = 0; j < width; j++) o[j] *= scale;
    }
}
