// common.h: the pieces every CPU kernel shares, as static inline functions.
//
//   te_exp        e^x in float32 without libm: Cephes' expf polynomial (about 1 ulp on
//                 |x| <= 87), written with plain arithmetic and bit moves so that the compiler
//                 vectorizes the loops that call it (a libm expf call per element would not).
//   te_sum        sum of n floats in TE_LANES independent partial sums. Without -ffast-math the
//                 compiler may not reorder a float reduction, so a plain `s += x[i]` loop stays
//                 scalar; lanes make the reordering explicit, and vectorizable.
//   te_layernorm  LayerNorm of one row in place: two passes over the row (mean, then variance
//                 of x - mean, as the numpy twin), then x = (x - mean) * rstd * w + b.
//
// Plain C99 plus -O3 -march=native: AVX2 / AVX-512 come from auto-vectorization.
#ifndef TINYEMBED_CPU_COMMON_H
#define TINYEMBED_CPU_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define TE_LANES 16

static inline float te_bits_to_float(int32_t i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

static inline int32_t te_float_to_bits(float f) {
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}

// e^x = 2^n * e^r, n = round(x / ln 2), |r| <= ln(2) / 2; e^r by Cephes' degree-6 polynomial.
// Inputs below -87 give ~1e-38 (not 0) and above 88 give ~1.6e38: never inf, NaN or denormal.
static inline float te_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    float j = fmaf(x, 1.44269504088896341f, shifter);
    float n = j - shifter;
    float r = fmaf(n, -0.693359375f, x);  // ln 2 in two parts: r = x - n ln2, exactly
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    int32_t scale = (te_float_to_bits(j) - te_float_to_bits(shifter) + 127) << 23;  // 2^n
    return p * te_bits_to_float(scale);
}

static inline float te_sum(const float* x, int n) {
    float lane[TE_LANES] = {0};
    int i = 0;
    for (; i + TE_LANES <= n; i += TE_LANES)
        for (int k = 0; k < TE_LANES; k++) lane[k] += x[i + k];
    float s = 0.0f;
    for (; i < n; i++) s += x[i];
    for (int k = 0; k < TE_LANES; k++) s += lane[k];
    return s;
}

static inline float te_centered_sumsq(const float* x, int n, float mean) {
    float lane[TE_LANES] = {0};
    int i = 0;
    for (; i + TE_LANES <= n; i += TE_LANES)
        for (int k = 0; k < TE_LANES; k++) {
            float d = x[i + k] - mean;
            lane[k] = fmaf(d, d, lane[k]);
        }
    float s = 0.0f;
    for (; i < n; i++) s = fmaf(x[i] - mean, x[i] - mean, s);
    for (int k = 0; k < TE_LANES; k++) s += lane[k];
    return s;
}

static inline void te_layernorm(float* restrict x, const float* restrict w, const float* restrict b,
                                float eps, int n) {
    float mean = te_sum(x, n) / (float)n;
    float rstd = 1.0f / sqrtf(te_centered_sumsq(x, n, mean) / (float)n + eps);
    for (int i = 0; i < n; i++) x[i] = fmaf((x[i] - mean) * rstd, w[i], b[i]);
}

#endif
