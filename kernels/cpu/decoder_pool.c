// decoder_pool.c: the decoders' pooling: the last token of each sequence, and unit length.
//
//   last_token    out[s] = hidden[cu[s+1] - 1]
//   l2_normalize  x[s] = x[s] / max(||x[s]||, 1e-12)     in place (torch's F.normalize)
//
// The final RMSNorm sits between the two (families/decoder.py: only the pooled rows are
// normalized). Shapes: hidden (T, H) float32; cu_seqlens (n+1,) int32; out, x (n, H).
// Sequences / rows begin..end-1 only. Numpy twins: DecoderNumpyOps.last_token / l2_normalize.
//
// Versions, simple to fast:
//   *_naive  scalar; the norm's sum in double.
//   fast     memcpy per row; the sum of squares in TE_LANES partial sums.
// Cheap either way: n rows, once per batch.
//
// Test:  python -m pytest tests/test_ops_c_decoder.py -k pool
#include "decoder_common.h"

void last_token_naive(const float* hidden, const int32_t* cu_seqlens, int width, float* out, long begin, long end) {
    for (long s = begin; s < end; s++)
        for (int j = 0; j < width; j++) out[s * width + j] = hidden[((long)cu_seqlens[s + 1] - 1) * width + j];
}

void l2_normalize_naive(float* x, int width, long begin, long end) {
    for (long s = begin; s < end; s++) {
        double sum = 0.0;
        for (int j = 0; j < width; j++) sum += (double)x[s * width + j] * x[s * width + j];
        const double norm = sqrt(sum) > 1e-12 ? sqrt(sum) : 1e-12;
        for (int j = 0; j < width; j++) x[s * width + j] = (float)(x[s * width + j] / norm);
    }
}

void last_token(const float* restrict hidden, const int32_t* restrict cu_seqlens, int width, float* restrict out,
                long begin, long end) {
    for (long s = begin; s < end; s++)
        memcpy(out + s * width, hidden + ((long)cu_seqlens[s + 1] - 1) * width, sizeof(float) * (size_t)width);
}

void l2_normalize(float* restrict x, int width, long begin, long end) {
    for (long s = begin; s < end; s++) {
        float* restrict row = x + s * width;
        const float norm = sqrtf(te_sumsq(row, width));
        const float inv = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
        for (int j = 0; j < width; j++) row[j] *= inv;
    }
}
