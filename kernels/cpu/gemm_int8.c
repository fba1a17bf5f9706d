// gemm_int8.c: y = x @ w with dynamic int8 activations and int8 weights (--precision int8).
//
//   quantize_rows:  xq[t, k] = round(x[t, k] / s_t) + z_t (uint8), asymmetric per row (token):
//                   s_t = (max(x_t, 0) - min(x_t, 0)) / 255, z_t = round(-min(x_t, 0) / s_t)
//   gemm_int8:      y[t, j] = (sum_k xq[t, k] wq[k, j] - z_t wsum[j]) * s_t * ws[j]
//                   then epilogue 0: nothing, 1: + bias, 2: gelu(+ bias) (gemm_packed.c)
//
// Weights are quantized once at load per output column (ws[j] = max_k |w[k, j]| / 127,
// symmetric) and packed by ops/c_int8.py's pack_int8 (its numpy twin defines the layout):
// ceil(N / 16) panels of 16 columns, each (K4, 16, 4) int8 with K4 = ceil(K / 4): four
// consecutive k of one column side by side, what one 32-bit lane of VPDPBUSD multiplies and adds.
// wsum[j] = sum_k wq[k, j] undoes the zero point z_t that makes the activations unsigned
// (VPDPBUSD multiplies unsigned by signed bytes); all 256 levels cover the row's own range, so
// a one-sided row (after GELU) gets twice the resolution of a symmetric code. xq is (T, K4 * 4),
// its padding columns any value (the weights there are 0). Integer sums are exact, so every
// path below gives bit-identical y.
// Numpy twin: ops/c_int8.py's gemm_int8_numpy. Used by COps(precision="int8").
//
// Versions, simple to fast:
//   gemm_int8_portable  plain C over the packed layout, int32 sums; the compiler vectorizes what
//                       it can. Any CPU; also the forced fallback (TINYEMBED_CPU_INT8=portable).
//   gemm_int8           AVX-512 VNNI (or AVX-VNNI): a tile of TE_IR rows x 32 columns in 12
//                       int32 accumulators; per 4 k, two 64-byte panel loads and TE_IR 4-byte
//                       broadcasts feed 2 * TE_IR VPDPBUSD (64 multiply-adds each: 4x the fp32
//                       FMA's work per instruction). Without VNNI it is gemm_int8_portable, and
//                       int8_isa() says so (0).
// Figure of merit: GOP/s against the fp32 GEMM (bench.breakdown --precision int8).
//
// Test:  python -m pytest tests/test_ops_c_int8.py
// Bench: python -m bench.breakdown --precision int8
#include "common.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define TE_VNNI 512
#elif defined(__AVXVNNI__)
#include <immintrin.h>
#define TE_VNNI 256
#else
#define TE_VNNI 0
#endif
#if TE_VNNI == 256
#define TE_IR 3  // 3 rows x 4 registers: 12 of the 16 ymm registers
#else
#define TE_IR 6  // 6 rows x 2 registers: 12 of the 32 zmm registers
#endif
#define TE_IMC 96

void te_epilogue(float* y, const float* bias, int n, int epilogue, long r0, long r1);

// Which instructions gemm_int8 uses: 512 (AVX-512 VNNI), 256 (AVX-VNNI) or 0 (portable C).
int int8_isa(void) { return TE_VNNI; }

void quantize_rows(const float* restrict x, int k, int kp, uint8_t* restrict xq, float* restrict scales,
                   int32_t* restrict zeros, long row_begin, long row_end) {
    for (long t = row_begin; t < row_end; t++) {
        const float* row = x + t * k;
        float lo[TE_LANES] = {0}, hi[TE_LANES] = {0};  // 0 is always in range: it stays exact
        int c = 0;
        for (; c + TE_LANES <= k; c += TE_LANES)
            for (int l = 0; l < TE_LANES; l++) {
                lo[l] = fminf(lo[l], row[c + l]);
                hi[l] = fmaxf(hi[l], row[c + l]);
            }
        float mn = 0.0f, mx = 0.0f;
        for (; c < k; c++) {
            mn = fminf(mn, row[c]);
            mx = fmaxf(mx, row[c]);
        }
        for (int l = 0; l < TE_LANES; l++) {
            mn = fminf(mn, lo[l]);
            mx = fmaxf(mx, hi[l]);
        }
        const float s = mx > mn ? (mx - mn) / 255.0f : 1.0f;
        const float inv = 1.0f / s;
        const float z = nearbyintf(-mn * inv);
        uint8_t* dst = xq + t * kp;
        for (c = 0; c < k; c++) {
            const float q = nearbyintf(row[c] * inv) + z;
            dst[c] = (uint8_t)(int)(q < 0.0f ? 0.0f : q > 255.0f ? 255.0f : q);
        }
        for (; c < kp; c++) dst[c] = 0;
        scales[t] = s;
        zeros[t] = (int32_t)z;
    }
}

// One output row's 16 columns of a panel, from its int32 sums: the dequantization both paths share.
static inline void dequantize16(const int32_t* acc, const int32_t* wsum, const float* ws, float s, int32_t z,
                                float* dst, int cols) {
    for (int c = 0; c < cols; c++) dst[c] = ((float)(acc[c] - z * wsum[c]) * s) * ws[c];
}

void gemm_int8_portable(const uint8_t* xq, const float* xs, const int32_t* xz, const int8_t* packed, const float* ws,
                        const int32_t* wsum, const float* bias, float* y, int kp, int n, int epilogue,
                        long row_begin, long row_end) {
    const int panels = (n + 15) / 16, k4 = kp / 4;
    for (long t = row_begin; t < row_end; t++)
        for (int p = 0; p < panels; p++) {
            int32_t acc[16] = {0};
            const int8_t* w = packed + (long)p * k4 * 64;
            const uint8_t* a = xq + t * kp;
            for (int q = 0; q < k4; q++)
                for (int c = 0; c < 16; c++)
                    for (int u = 0; u < 4; u++) acc[c] += (int32_t)a[4 * q + u] * (int32_t)w[q * 64 + c * 4 + u];
            const int cols = n - p * 16 < 16 ? n - p * 16 : 16;
            dequantize16(acc, wsum + p * 16, ws + p * 16, xs[t], xz[t], y + t * n + p * 16, cols);
        }
    te_epilogue(y, bias, n, epilogue, row_begin, row_end);
}

#if TE_VNNI
#if TE_VNNI == 512
typedef __m512i te_vi;
#define TE_DP(acc, a, b) _mm512_dpbusd_epi32(acc, a, b)
#define TE_BCAST(p) _mm512_set1_epi32(*(const int32_t*)(p))
#define TE_LOAD(p) _mm512_loadu_si512((const void*)(p))
#define TE_ZERO() _mm512_setzero_si512()
#define TE_STORE(p, v) _mm512_storeu_si512((void*)(p), v)
#define TE_VCOLS 16  // columns per register: one panel
#else
typedef __m256i te_vi;
#define TE_DP(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#define TE_BCAST(p) _mm256_set1_epi32(*(const int32_t*)(p))
#define TE_LOAD(p) _mm256_loadu_si256((const void*)(p))
#define TE_ZERO() _mm256_setzero_si256()
#define TE_STORE(p, v) _mm256_storeu_si256((void*)(p), v)
#define TE_VCOLS 8  // columns per register: half a panel
#endif
#define TE_REGS (32 / TE_VCOLS)  // registers per row of the 32-column tile

// rows (<= TE_IR) x 32 columns (panels p, p + 1; `panels` of them real, cols valid).
static inline void tile_vnni(const uint8_t* xq, const float* xs, const int32_t* xz, const int8_t* p0, const float* ws,
                             const int32_t* wsum, float* y, int kp, int n, int rows, int panels, int cols) {
    const int k4 = kp / 4;
    te_vi acc[TE_IR][TE_REGS];
    const uint8_t* xr[TE_IR];
    for (int r = 0; r < TE_IR; r++) {
        for (int v = 0; v < TE_REGS; v++) acc[r][v] = TE_ZERO();
        xr[r] = xq + (long)(r < rows ? r : 0) * kp;
    }
    const int8_t* p1 = p0 + (long)k4 * 64;
    const int8_t* second = panels == 2 ? p1 : p0;  // a lone last panel computes it twice, stores once
    for (int q = 0; q < k4; q++) {
        te_vi b[TE_REGS];
        for (int v = 0; v < TE_REGS; v++) {
            const int8_t* base = v < TE_REGS / 2 ? p0 : second;
            b[v] = TE_LOAD(base + q * 64 + (v % (TE_REGS / 2)) * TE_VCOLS * 4);
        }
        for (int r = 0; r < TE_IR; r++) {
            const te_vi a = TE_BCAST(xr[r] + 4 * q);
            for (int v = 0; v < TE_REGS; v++) acc[r][v] = TE_DP(acc[r][v], a, b[v]);
        }
    }
    for (int r = 0; r < rows; r++) {
        int32_t sums[32];
        for (int v = 0; v < TE_REGS; v++) TE_STORE(sums + v * TE_VCOLS, acc[r][v]);
        float* dst = y + (long)r * n;
        dequantize16(sums, wsum, ws, xs[r], xz[r], dst, cols < 16 ? cols : 16);
        if (cols > 16) dequantize16(sums + 16, wsum + 16, ws + 16, xs[r], xz[r], dst + 16, cols - 16);
    }
}

void gemm_int8(const uint8_t* xq, const float* xs, const int32_t* xz, const int8_t* packed, const float* ws, const int32_t* wsum,
               const float* bias, float* y, int kp, int n, int epilogue, long row_begin, long row_end) {
    const int panels = (n + 15) / 16, k4 = kp / 4;
    for (long m0 = row_begin; m0 < row_end; m0 += TE_IMC) {
        const long m1 = m0 + TE_IMC < row_end ? m0 + TE_IMC : row_end;
        for (int p = 0; p < panels; p += 2) {
            const int two = p + 1 < panels ? 2 : 1;
            const int cols = n - p * 16 < 16 * two ? n - p * 16 : 16 * two;
            for (long t = m0; t < m1; t += TE_IR) {
                const int rows = m1 - t < TE_IR ? (int)(m1 - t) : TE_IR;
                tile_vnni(xq + t * kp, xs + t, xz + t, packed + (long)p * k4 * 64, ws + p * 16, wsum + p * 16,
                          y + t * n + p * 16, kp, n, rows, two, cols);
            }
        }
        te_epilogue(y, bias, n, epilogue, m0, m1);
    }
}
#else
void gemm_int8(const uint8_t* xq, const float* xs, const int32_t* xz, const int8_t* packed, const float* ws, const int32_t* wsum,
               const float* bias, float* y, int kp, int n, int epilogue, long row_begin, long row_end) {
    gemm_int8_portable(xq, xs, xz, packed, ws, wsum, bias, y, kp, n, epilogue, row_begin, row_end);
}
#endif
