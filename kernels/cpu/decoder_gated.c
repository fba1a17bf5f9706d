// decoder_gated.c: the gated MLP's epilogue on the fused gate|up GEMM output.
//
//   out[t, i] = act(gate_up[t, i]) * gate_up[t, I + i]          i < I
//   act: 0 silu       g / (1 + e^-g)                            (Qwen, Mistral, Llama)
//        1 gelu_tanh  0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))   (Gemma2)
//
// Shapes: gate_up (T, 2I) float32; out (T, I), contiguous (the down GEMM reads it). Rows
// row_begin..row_end-1 only. Numpy twin: DecoderNumpyOps.gated_activation (ops/numpy_decoder.py),
// which writes over the gate half instead. CUDA twin: kernels/cuda/decoder.cu.
//
// Versions, simple to fast:
//   gated_activation_naive  scalar, libm expf / tanhf.
//   gated_activation        te_exp / te_tanh (plain arithmetic): the loop vectorizes.
// Memory-bound: reads 2I and writes I floats a row.
//
// Test:  python -m pytest tests/test_ops_c_decoder.py -k gated
#include "decoder_common.h"

#define TE_GELU_C 0.7978845608028654f  // sqrt(2 / pi)

void gated_activation_naive(const float* gate_up, float* out, int half, int activation, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++)
        for (int i = 0; i < half; i++) {
            const float g = gate_up[t * 2 * half + i], u = gate_up[t * 2 * half + half + i];
            float a;
            if (activation == 0)
                a = g / (1.0f + expf(-g));
            else
                a = 0.5f * g * (1.0f + tanhf(TE_GELU_C * (g + 0.044715f * g * g * g)));
            out[t * half + i] = a * u;
        }
}

void gated_activation(const float* restrict gate_up, float* restrict out, int half, int activation,
                      long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        const float* restrict g = gate_up + t * 2 * (long)half;
        const float* restrict u = g + half;
        float* restrict o = out + t * (long)half;
        if (activation == 0)
            for (int i = 0; i < half; i++) o[i] = g[i] / (1.0f + te_exp(-g[i])) * u[i];
        else
            for (int i = 0; i < half; i++) {
                const float x = g[i];
                const float inner = TE_GELU_C * (x + 0.044715f * x * x * x);
                o[i] = 0.5f * x * (1.0f + te_tanh(inner)) * u[i];
            }
    }
}
