// gemm_packed.c: y = x @ w for a weight packed once at load, float32, then an epilogue.
//
//   y[t, j] = sum_k x[t, k] * w[k, j]        then epilogue 0: nothing, 1: + bias, 2: gelu(+ bias)
//
// x (T, K) and y (T, N) float32 row-major; w packed by ops/c_ops.py's pack_f32 (its numpy twin
// defines the layout): ceil(N / 16) panels of 16 columns, each (K, 16) contiguous, the columns
// past N zero. Rows row_begin..row_end-1 only (callers' threads split T).
// Numpy twin: NumpyOps.matmul / linear (BLAS). Used by COps for every linear layer of an encoder.
//
// Versions, simple to fast:
//   gemm_f32_naive   a dot product per output, reading the panels: the reference for the layout.
//   gemm_f32_packed  a register tile of TE_MR rows x 32 columns (12 AVX-512 accumulators): per k,
//                    two panel loads and TE_MR broadcasts feed 2 * TE_MR fused multiply-adds.
//                    Rows go in chunks of TE_MC so a chunk of x stays in L2 while every panel
//                    pair streams past it once; a panel pair (K x 32 floats) stays in L1/L2
//                    across the chunk's row tiles. The packing is what BLAS does on every call
//                    (for a 16-token input that copy of the weights costs as much as the GEMM);
//                    here it is done once. GCC vector types: 16 lanes on AVX-512, split into
//                    8- or 4-lane halves on other CPUs by the compiler, never wrong there.
// Compute-bound: 2 T K N FLOPs; figure of merit GFLOP/s against numpy's matmul (bench.breakdown).
//
// Test:  python -m pytest tests/test_ops_c_gemm.py
// Bench: python -m bench.breakdown --seq-len 16,128 (the GEMM rows)
#include "common.h"

#ifdef __AVX512F__
#define TE_MR 6
#else
#define TE_MR 3
#endif
#define TE_MC 96

typedef float te_v16 __attribute__((vector_size(64)));

void bias_add(float* y, const float* bias, int width, long row_begin, long row_end);
void bias_gelu(float* y, const float* bias, int width, long row_begin, long row_end);

// A 16-float load as a macro: a function returning te_v16 would warn (-Wpsabi) on CPUs without
// AVX-512, where the vector is not passed in one register.
#define TE_LOAD16(v, p) memcpy(&(v), (p), sizeof(te_v16))

// The epilogue after a block of rows is done, while they are in cache.
void te_epilogue(float* y, const float* bias, int n, int epilogue, long r0, long r1) {
    if (epilogue == 1) bias_add(y, bias, n, r0, r1);
    if (epilogue == 2) bias_gelu(y, bias, n, r0, r1);
}

void gemm_f32_naive(const float* x, const float* packed, const float* bias, float* y, int k, int n,
                    int epilogue, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++)
        for (int j = 0; j < n; j++) {
            const float* panel = packed + (long)(j / 16) * k * 16 + j % 16;
            float s = 0.0f;
            for (int c = 0; c < k; c++) s += x[t * k + c] * panel[c * 16];
            y[t * n + j] = s;
        }
    te_epilogue(y, bias, n, epilogue, row_begin, row_end);
}

// rows (<= TE_MR) x (16 * panels) outputs; panels is 1 or 2, cols the valid columns (<= 32).
static inline __attribute__((always_inline)) void tile(const float* restrict x, const float* restrict p0,
                                                       float* restrict y, int k, int n, int rows,
                                                       int panels, int cols) {
    te_v16 acc[TE_MR][2];
    const float* xr[TE_MR];
    for (int r = 0; r < TE_MR; r++) {
        acc[r][0] = (te_v16){0};
        acc[r][1] = (te_v16){0};
        xr[r] = x + (long)(r < rows ? r : 0) * k;  // rows past the end repeat row 0, never stored
    }
    const float* restrict p1 = p0 + (long)k * 16;
    if (panels == 2) {
        for (int c = 0; c < k; c++) {
            te_v16 b0, b1;
            TE_LOAD16(b0, p0 + c * 16);
            TE_LOAD16(b1, p1 + c * 16);
            for (int r = 0; r < TE_MR; r++) {
                const float a = xr[r][c];
                acc[r][0] += a * b0;
                acc[r][1] += a * b1;
            }
        }
    } else {
        for (int c = 0; c < k; c++) {
            te_v16 b0;
            TE_LOAD16(b0, p0 + c * 16);
            for (int r = 0; r < TE_MR; r++) acc[r][0] += xr[r][c] * b0;
        }
    }
    for (int r = 0; r < rows; r++) {
        float* dst = y + (long)r * n;
        if (cols == 32) {
            memcpy(dst, &acc[r][0], 64);
            memcpy(dst + 16, &acc[r][1], 64);
        } else {
            float tmp[32];
            memcpy(tmp, &acc[r][0], 64);
            memcpy(tmp + 16, &acc[r][1], 64);
            memcpy(dst, tmp, sizeof(float) * (size_t)cols);
        }
    }
}

void gemm_f32_packed(const float* x, const float* packed, const float* bias, float* y, int k, int n,
                     int epilogue, long row_begin, long row_end) {
    const int panels = (n + 15) / 16;
    for (long m0 = row_begin; m0 < row_end; m0 += TE_MC) {
        const long m1 = m0 + TE_MC < row_end ? m0 + TE_MC : row_end;
        for (int p = 0; p < panels; p += 2) {
            const int two = p + 1 < panels ? 2 : 1;
            const int cols = n - p * 16 < 16 * two ? n - p * 16 : 16 * two;
            const float* panel = packed + (long)p * k * 16;
            for (long t = m0; t < m1; t += TE_MR) {
                const int rows = m1 - t < TE_MR ? (int)(m1 - t) : TE_MR;
                if (two == 2 && cols == 32)
                    tile(x + t * k, panel, y + t * n + p * 16, k, n, rows, 2, 32);
                else
                    tile(x + t * k, panel, y + t * n + p * 16, k, n, rows, two, cols);
            }
        }
        te_epilogue(y, bias, n, epilogue, m0, m1);
    }
}
