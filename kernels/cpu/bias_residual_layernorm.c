// bias_residual_layernorm.c: the add & norm after attention and after the FFN, fused, in place.
//
//   y[t, :] = LayerNorm(y[t, :] + bias[:] + residual[t, :]) * ln_w + ln_b
//
// Shapes: y, residual (T, H); bias, ln_w, ln_b (H,); float32, rows contiguous. Rows
// row_begin..row_end-1 only (callers' threads split T).
// Numpy twin: NumpyOps.bias_residual_layernorm (ops/numpy_ops.py): += bias, += residual, mean,
// subtract, einsum, scale, *w, +b: eight passes. CUDA twin: kernels/cuda/layernorm.cu.
//
// Versions, simple to fast:
//   bias_residual_layernorm_naive  scalar, running sums in double.
//   bias_residual_layernorm        one fused add pass that writes the row once, then
//                                  te_layernorm's vectorized passes while it is in L1.
//
// Test:  python -m pytest tests/test_ops_c.py -k layernorm
// Bench: python -m bench.breakdown (the LayerNorm row)
#include "common.h"

void bias_residual_layernorm_naive(float* y, const float* bias, const float* residual,
                                   const float* ln_w, const float* ln_b, float eps, int width,
                                   long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        float* x = y + t * width;
        double sum = 0.0, sumsq = 0.0;
        for (int j = 0; j < width; j++) {
            x[j] = x[j] + bias[j] + residual[t * width + j];
            sum += x[j];
        }
        double mean = sum / width;
        for (int j = 0; j < width; j++) sumsq += (x[j] - mean) * (x[j] - mean);
        double rstd = 1.0 / sqrt(sumsq / width + eps);
        for (int j = 0; j < width; j++) x[j] = (float)((x[j] - mean) * rstd) * ln_w[j] + ln_b[j];
    }
}

void bias_residual_layernorm(float* restrict y, const float* restrict bias,
                             const float* restrict residual, const float* restrict ln_w,
                             const float* restrict ln_b, float eps, int width, long row_begin,
                             long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        float* restrict x = y + t * width;
        const float* restrict r = residual + t * width;
        for (int j = 0; j < width; j++) x[j] = x[j] + bias[j] + r[j];
        te_layernorm(x, ln_w, ln_b, eps, width);
    }
}
