// decoder_bf16_gemm.c: a GEMM on bfloat16 weights with AVX512_BF16 dot products (--precision bf16).
//
//   out[m, n] = sum_k bf16(x[m, k]) * w[n, k]        accumulated in float32
//
// x (M, K) float32, rounded to bf16 (nearest even) as it is packed; w (N, K) bf16 bits in the
// checkpoint's torch (out, in) layout, read in place (memory-mapped); out row stride ldo (a
// fused q|k|v or gate|up output is written one part at a time at its column offset). K even.
// Rows m_begin..m_end-1 only (callers' threads split M). Returns 0, or -1 when this build has
// no AVX512_BF16 (the caller then widens the weights and runs BLAS), -2 for an odd K.
// Numpy twin: DecoderNumpyOps.bf16_matmul (ops/numpy_decoder.py: round x, widen w, matmul).
//
// Versions, simple to fast:
//   bf16_matmul_naive  scalar: each product of two bf16 values (exact in float32), summed in
//                      double; for the tests.
//   bf16_matmul        VDPBF16PS: x packed 32 rows at a time as (k, k+1) bf16 pairs, [K/2][32]
//                      words (64 KB for K = 1024: stays in L2); a micro-tile of 12 weight rows x
//                      32 tokens in 24 zmm accumulators; each step broadcasts one (k, k+1) pair
//                      of a weight row (adjacent in the torch layout: no weight packing, no copy)
//                      and does 2 x 16 pair products per instruction: twice the multiply-adds of
//                      a float32 FMA, half the weight bytes.
// Compute-bound: 2 M N K FLOPs. Figure of merit: GFLOP/s against numpy's float32 matmul.
//
// Test:  python -m pytest tests/test_ops_c_decoder.py -k bf16_matmul
// Bench: python -m bench.decoder (tinyembed-bf16 against tinyembed-fp32 and transformers)
#include <stdlib.h>

#include "decoder_common.h"

static inline uint16_t round_bf16(float f) {
    const uint32_t bits = (uint32_t)te_float_to_bits(f);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

int bf16_matmul_naive(const float* x, const uint16_t* w, float* out, int K, int N, long ldo, long m_begin, long m_end) {
    if (K % 2) return -2;
    for (long m = m_begin; m < m_end; m++)
        for (int n = 0; n < N; n++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) s += (double)(te_bf16(round_bf16(x[m * K + k])) * te_bf16(w[(long)n * K + k]));
            out[m * ldo + n] = (float)s;
        }
    return 0;
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>

#define TE_BM 32  // tokens per packed strip (2 zmm)
#define TE_BN 12  // weight rows per micro-tile

// xp[kp * 32 + r] = bf16(x[m0 + r, 2kp]) | bf16(x[m0 + r, 2kp + 1]) << 16; rows past `rows` are 0.
static void pack_strip(const float* restrict x, int K, long m0, int rows, uint32_t* restrict xp) {
    const int kp = K / 2;
    for (int r = 0; r < TE_BM; r++) {
        if (r >= rows) {
            for (int p = 0; p < kp; p++) xp[p * TE_BM + r] = 0;
            continue;
        }
        const float* src = x + (m0 + r) * (long)K;
        for (int p = 0; p < kp; p++)
            xp[p * TE_BM + r] = (uint32_t)round_bf16(src[2 * p]) | ((uint32_t)round_bf16(src[2 * p + 1]) << 16);
    }
}

static inline void store_tile(const __m512* acc, int nr, float* restrict out, long ldo, long m0, int rows, int n0) {
    float t[TE_BM];
    for (int i = 0; i < nr; i++) {
        _mm512_storeu_ps(t, acc[2 * i]);
        _mm512_storeu_ps(t + 16, acc[2 * i + 1]);
        for (int r = 0; r < rows; r++) out[(m0 + r) * ldo + n0 + i] = t[r];
    }
}

static inline __attribute__((always_inline)) void tile(const uint32_t* restrict xp, const uint16_t* restrict w, int K,
                                                        int n0, const int nr, float* restrict out, long ldo, long m0,
                                                        int rows) {
    __m512 acc[2 * TE_BN];
    const uint32_t* wr[TE_BN];
    for (int i = 0; i < nr; i++) {
        acc[2 * i] = acc[2 * i + 1] = _mm512_setzero_ps();
        wr[i] = (const uint32_t*)(w + (long)(n0 + i) * K);
    }
    const int kp = K / 2;
    for (int p = 0; p < kp; p++) {
        const __m512bh a0 = (__m512bh)_mm512_loadu_si512(xp + p * TE_BM);
        const __m512bh a1 = (__m512bh)_mm512_loadu_si512(xp + p * TE_BM + 16);
        for (int i = 0; i < nr; i++) {
            uint32_t pair;
            memcpy(&pair, wr[i] + p, sizeof pair);  // 4-byte aligned only when K is: memcpy is exact either way
            const __m512bh b = (__m512bh)_mm512_set1_epi32((int)pair);
            acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], b, a0);
            acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], b, a1);
        }
    }
    store_tile(acc, nr, out, ldo, m0, rows, n0);
}

int bf16_matmul(const float* restrict x, const uint16_t* restrict w, float* restrict out, int K, int N, long ldo,
                long m_begin, long m_end) {
    if (K % 2) return -2;
    uint32_t* xp = malloc(sizeof(uint32_t) * (size_t)(K / 2) * TE_BM);
    if (!xp) return -3;
    for (long m0 = m_begin; m0 < m_end; m0 += TE_BM) {
        const int rows = m_end - m0 < TE_BM ? (int)(m_end - m0) : TE_BM;
        pack_strip(x, K, m0, rows, xp);
        int n0 = 0;
        for (; n0 + TE_BN <= N; n0 += TE_BN) tile(xp, w, K, n0, TE_BN, out, ldo, m0, rows);
        for (; n0 < N; n0++) tile(xp, w, K, n0, 1, out, ldo, m0, rows);
    }
    free(xp);
    return 0;
}
#else
int bf16_matmul(const float* x, const uint16_t* w, float* out, int K, int N, long ldo, long m_begin, long m_end) {
    (void)x, (void)w, (void)out, (void)K, (void)N, (void)ldo, (void)m_begin, (void)m_end;
    return -1;  // no AVX512_BF16 in this build: the caller widens and runs BLAS
}
#endif
