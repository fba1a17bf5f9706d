// bias_gelu.c: the GEMM epilogues, bias then activation, in place.
//
//   bias_gelu:  y[t, j] = gelu(y[t, j] + bias[j]),  gelu(x) = x * Phi(x) = x * (1 + erf(x / sqrt 2)) / 2
//   bias_add:   y[t, j] = y[t, j] + bias[j]         (the Q|K|V projection's bias: ops.linear)
//
// Shapes: y (T, N), bias (N,), float32, rows contiguous. Rows row_begin..row_end-1 only.
// Exact (erf) GELU as BERT and XLM-R use, to float32 rounding: the erf below is a minimax
// polynomial pair (after N. Juffa's erff, <= 1 ulp), and in its tail Phi is formed from
// erfc = e^p directly, so negative inputs keep their relative precision (no 1 + erf cancellation).
// Numpy twin: NumpyOps.bias_gelu (ops/numpy_ops.py: a table of gelu - relu read by interpolation,
// ten numpy passes per row block). CUDA twin: kernels/cuda/gelu.cu.
//
// Versions, simple to fast:
//   bias_gelu_naive  libm erff per element: one call each, so the loop cannot be vectorized.
//   bias_gelu        both polynomial branches computed and one selected, te_exp instead of expf:
//                    straight-line float arithmetic that -O3 -march=native turns into 8 or 16
//                    lanes per instruction. ~30 flops per element, still faster than one pass of
//                    memory traffic per numpy operator.
//
// Test:  python -m pytest tests/test_ops_c.py -k gelu
// Bench: python -m bench.breakdown (the GELU row); docs/cpu-kernel-walkthrough.md
#include "common.h"

void bias_gelu_naive(float* y, const float* bias, int width, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++)
        for (int j = 0; j < width; j++) {
            float x = y[t * width + j] + bias[j];
            y[t * width + j] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        }
}

// Phi(x) = (1 + erf(x / sqrt 2)) / 2 for float32 x, branch-free.
static inline float te_phi(float x) {
    float a = x * 0.70710678118654752f;
    float t = fabsf(a), s = a * a;
    // |a| < 0.921875: erf(a) = a + a * s * P(s)
    float r = -5.96761703e-4f;
    r = fmaf(r, s, 4.99119423e-3f);
    r = fmaf(r, s, -2.67681349e-2f);
    r = fmaf(r, s, 1.12819925e-1f);
    r = fmaf(r, s, -3.76125336e-1f);
    r = fmaf(r, s, 1.28379166e-1f);
    float erf_small = fmaf(r, a, a);
    // |a| >= 0.921875: erfc(|a|) = e^Q(|a|)
    float q = fmaf(-1.72853470e-5f, t, 3.83197126e-4f);
    float u = fmaf(-3.88396438e-3f, t, 2.42546219e-2f);
    q = fmaf(q, s, u);
    q = fmaf(q, t, -1.06777877e-1f);
    q = fmaf(q, t, -6.34846687e-1f);
    q = fmaf(q, t, -1.28717512e-1f);
    q = fmaf(q, t, -t);
    float erfc_tail = te_exp(q);
    float phi_tail = a < 0.0f ? 0.5f * erfc_tail : 1.0f - 0.5f * erfc_tail;
    return t < 0.921875f ? 0.5f + 0.5f * erf_small : phi_tail;
}

void bias_gelu(float* restrict y, const float* restrict bias, int width, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        float* restrict row = y + t * width;
        for (int j = 0; j < width; j++) {
            float x = row[j] + bias[j];
            row[j] = x * te_phi(x);
        }
    }
}

void bias_add(float* restrict y, const float* restrict bias, int width, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        float* restrict row = y + t * width;
        for (int j = 0; j < width; j++) row[j] += bias[j];
    }
}
