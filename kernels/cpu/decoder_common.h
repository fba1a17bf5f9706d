// decoder_common.h: what the decoder kernels (decoder_*.c) share, as static inline functions.
//
//   te_tanh       tanh(x) in float32 from te_exp (common.h): 1 - 2 / (e^{2|x|} + 1) with the
//                 sign put back; absolute error about 1e-7 (relative error grows below
//                 |x| ~ 1e-3, where tanh(x) ~ x: there the odd Taylor term is used). Vectorizes.
//   te_sumsq      sum of x^2 over n floats in TE_LANES partial sums (see te_sum in common.h).
//   te_rms_scale  1 / sqrt(mean(x^2) + eps) of one row, as the numpy twin computes it.
//   te_bf16       one bfloat16 (the high half of a float32) widened to float32, exactly.
//
// Kept out of common.h so the encoder kernels' header changes independently.
#ifndef TINYEMBED_CPU_DECODER_COMMON_H
#define TINYEMBED_CPU_DECODER_COMMON_H

#include "common.h"

static inline float te_tanh(float x) {
    const float a = fabsf(x);
    const float e = te_exp(2.0f * a);  // clamped: never inf, so 2 / (e + 1) -> ~1e-38 for big |x|
    float t = 1.0f - 2.0f / (e + 1.0f);
    const float a2 = a * a;
    const float small = a * fmaf(a2, fmaf(a2, 0.13333333f, -0.33333333f), 1.0f);  // x - x^3/3 + 2x^5/15
    t = a < 0.0625f ? small : t;
    return x < 0.0f ? -t : t;
}

static inline float te_sumsq(const float* x, int n) {
    float lane[TE_LANES] = {0};
    int i = 0;
    for (; i + TE_LANES <= n; i += TE_LANES)
        for (int k = 0; k < TE_LANES; k++) lane[k] = fmaf(x[i + k], x[i + k], lane[k]);
    float s = 0.0f;
    for (; i < n; i++) s = fmaf(x[i], x[i], s);
    for (int k = 0; k < TE_LANES; k++) s += lane[k];
    return s;
}

static inline float te_rms_scale(const float* x, int n, float eps) {
    return 1.0f / sqrtf(te_sumsq(x, n) * (1.0f / (float)n) + eps);
}

static inline float te_bf16(uint16_t bits) {
    return te_bits_to_float((int32_t)((uint32_t)bits << 16));
}

#endif
