// encoder_layer.c: all L encoder layers of a small batch in one call, on the calling thread.
//
//   per layer:  qkv = x Wqkv + b                      (T, 3H)   gemm, epilogue + bias
//               ctx = attention(qkv)                  (T, H)    attention.c
//               x1  = LayerNorm(ctx Wo + bo + x)      (T, H)    gemm, bias_residual_layernorm.c
//               h   = gelu(x1 Wi + bi)                (T, I)    gemm, epilogue bias + GELU
//               x   = LayerNorm(h Wo2 + bo2 + x1)     (T, H)    gemm, bias_residual_layernorm.c
//
// The same kernels COps calls one by one for big batches (split over threads), called here
// back to back: a 16-token text costs a handful of Python calls instead of 7 per layer, and
// every intermediate stays in L1/L2. Weights are packed at load (ops/c_int8.py); precision 0
// runs gemm_f32_packed, 1 gemm_int8 (VNNI when built with it), 2 gemm_int8_portable.
// Scratch from the caller: qkv (T, 3H), ctx (T, H), h (T, I) float32; xq (T, max K rounded up to
// 4) uint8 and xs (2T,) float32 (scales, then int32 zero points) for the int8 activations.
// Returns attention's status (0 = ok).
// Numpy twin: the layer loop of EncoderModel.forward_arrays (families/bert.py) on NumpyOps.
//
// Test:  python -m pytest tests/test_ops_c_fused.py
// Bench: python -m bench.engine (latency rows: one 16- and 128-token text)
#include "common.h"

typedef struct {
    const void* w;         // packed float32 panels or int8 panels
    const float* scale;    // int8: per output column
    const int32_t* sum;    // int8: column sums of the quantized weight
    const float* bias;
    int k, n;
} te_linear;

typedef struct {
    te_linear qkv, out, ffn_in, ffn_out;
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
} te_layer;

void gemm_f32_packed(const float* x, const float* packed, const float* bias, float* y, int k, int n,
                     int epilogue, long row_begin, long row_end);
void quantize_rows(const float* x, int k, int kp, uint8_t* xq, float* scales, int32_t* zeros, long row_begin,
                   long row_end);
void gemm_int8(const uint8_t* xq, const float* xs, const int32_t* xz, const int8_t* packed, const float* ws, const int32_t* wsum,
               const float* bias, float* y, int kp, int n, int epilogue, long row_begin, long row_end);
void gemm_int8_portable(const uint8_t* xq, const float* xs, const int32_t* xz, const int8_t* packed, const float* ws,
                        const int32_t* wsum, const float* bias, float* y, int kp, int n, int epilogue,
                        long row_begin, long row_end);
int attention(const float* qkv, float* out, const int32_t* cu_seqlens, int heads, int width,
              long item_begin, long item_end);
void bias_residual_layernorm(float* y, const float* bias, const float* residual, const float* ln_w,
                             const float* ln_b, float eps, int width, long row_begin, long row_end);

static void linear(const te_linear* l, const float* x, float* y, long rows, int epilogue, int precision,
                   uint8_t* xq, float* xs) {
    int32_t* xz = (int32_t*)(xs + rows);  // xs holds 2 * rows: scales, then zero points
    if (precision == 0) {
        gemm_f32_packed(x, (const float*)l->w, l->bias, y, l->k, l->n, epilogue, 0, rows);
        return;
    }
    const int kp = (l->k + 3) / 4 * 4;
    quantize_rows(x, l->k, kp, xq, xs, xz, 0, rows);
    if (precision == 1)
        gemm_int8(xq, xs, xz, (const int8_t*)l->w, l->scale, l->sum, l->bias, y, kp, l->n, epilogue, 0, rows);
    else
        gemm_int8_portable(xq, xs, xz, (const int8_t*)l->w, l->scale, l->sum, l->bias, y, kp, l->n, epilogue, 0, rows);
}

int encoder_layers(const te_layer* layers, int num_layers, int heads, float eps, int precision, float* x,
                   const int32_t* cu_seqlens, int n, long rows, float* qkv, float* ctx, float* h,
                   uint8_t* xq, float* xs) {
    for (int i = 0; i < num_layers; i++) {
        const te_layer* l = layers + i;
        const int width = l->qkv.k;
        linear(&l->qkv, x, qkv, rows, 1, precision, xq, xs);
        const int status = attention(qkv, ctx, cu_seqlens, heads, width, 0, (long)n * heads);
        if (status) return status;
        float* x1 = qkv;  // Q|K|V is spent: its first T x H floats hold x1
        linear(&l->out, ctx, x1, rows, 0, precision, xq, xs);
        bias_residual_layernorm(x1, l->out.bias, x, l->ln1_w, l->ln1_b, eps, width, 0, rows);
        linear(&l->ffn_in, x1, h, rows, 2, precision, xq, xs);
        linear(&l->ffn_out, h, x, rows, 0, precision, xq, xs);
        bias_residual_layernorm(x, l->ffn_out.bias, x1, l->ln2_w, l->ln2_b, eps, width, 0, rows);
    }
    return 0;
}
