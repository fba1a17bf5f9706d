// decoder_rmsnorm.c: the decoders' RMSNorms, in place where the forward pass allows.
//
//   rmsnorm       out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w
//   add_rmsnorm   residual[t] += y[t];  y[t] = rmsnorm(residual[t])   (the add fused in)
//   head_rmsnorm  the same over head_dim on every Q and K head of a fused Q|K|V row (Qwen3's
//                 q_norm / k_norm); V heads untouched
//
// Gemma's (1 + w) gain arrives folded: the family adds 1 to w once at load, in float32, which
// is the float32 sum HF computes on every call (families/gemma2.py). Shapes: x, y, residual,
// out (T, H) float32; w (H,); qkv (T, (nH + 2 nKV) d), q_w and k_w (d,). Rows row_begin..
// row_end-1 only (callers' threads split T).
// Numpy twins: DecoderNumpyOps.rmsnorm / add_rmsnorm / head_rmsnorm (ops/numpy_decoder.py).
// CUDA twins: kernels/cuda/decoder.cu.
//
// Versions, simple to fast:
//   *_naive  scalar, the sum of squares in double.
//   fast     one pass for the sum of squares in TE_LANES partial sums (vectorized), one pass
//            for the scale; add_rmsnorm adds while the row is in L1.
// Memory-bound: one read (two for add_rmsnorm) and one write of each row.
//
// Test:  python -m pytest tests/test_ops_c_decoder.py -k rmsnorm
// Bench: python -m bench.decoder (end to end)
#include "decoder_common.h"

static double rms_scale_double(const float* x, int n, float eps) {
    double s = 0.0;
    for (int j = 0; j < n; j++) s += (double)x[j] * x[j];
    return 1.0 / sqrt(s / n + eps);
}

void rmsnorm_naive(const float* x, const float* w, float eps, int width, float* out, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        const double scale = rms_scale_double(x + t * width, width, eps);
        for (int j = 0; j < width; j++) out[t * width + j] = (float)(x[t * width + j] * scale) * w[j];
    }
}

void add_rmsnorm_naive(float* y, float* residual, const float* w, float eps, int width, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        float *r = residual + t * width, *o = y + t * width;
        for (int j = 0; j < width; j++) r[j] += o[j];
        const double scale = rms_scale_double(r, width, eps);
        for (int j = 0; j < width; j++) o[j] = (float)(r[j] * scale) * w[j];
    }
}

void head_rmsnorm_naive(float* qkv, const float* q_w, const float* k_w, int heads, int kv_heads, int d,
                        float eps, long row_begin, long row_end) {
    const long ld = (long)(heads + 2 * kv_heads) * d;
    for (long t = row_begin; t < row_end; t++)
        for (int h = 0; h < heads + kv_heads; h++) {
            float* x = qkv + t * ld + (long)h * d;
            const float* w = h < heads ? q_w : k_w;
            const double scale = rms_scale_double(x, d, eps);
            for (int c = 0; c < d; c++) x[c] = (float)(x[c] * scale) * w[c];
        }
}

void rmsnorm(const float* restrict x, const float* restrict w, float eps, int width, float* restrict out,
             long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        const float* restrict src = x + t * width;
        float* restrict dst = out + t * width;
        const float scale = te_rms_scale(src, width, eps);
        for (int j = 0; j < width; j++) dst[j] = src[j] * scale * w[j];
    }
}

void add_rmsnorm(float* restrict y, float* restrict residual, const float* restrict w, float eps, int width,
                 long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        float* restrict r = residual + t * width;
        float* restrict o = y + t * width;
        for (int j = 0; j < width; j++) r[j] += o[j];
        const float scale = te_rms_scale(r, width, eps);
        for (int j = 0; j < width; j++) o[j] = r[j] * scale * w[j];
    }
}

void head_rmsnorm(float* restrict qkv, const float* restrict q_w, const float* restrict k_w, int heads,
                  int kv_heads, int d, float eps, long row_begin, long row_end) {
    const long ld = (long)(heads + 2 * kv_heads) * d;
    for (long t = row_begin; t < row_end; t++)
        for (int h = 0; h < heads + kv_heads; h++) {
            float* restrict x = qkv + t * ld + (long)h * d;
            const float* restrict w = h < heads ? q_w : k_w;
            const float scale = te_rms_scale(x, d, eps);
            for (int c = 0; c < d; c++) x[c] = x[c] * scale * w[c];
        }
}
