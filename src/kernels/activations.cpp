#include "kernels/activations.h"

#include "core/simd.h"

#include <cmath>
#include <cstring>

namespace moe {

// ---------------------------------------------------------------------------------------------
// References: libm, double where it is cheap, written straight from the definitions.

void relu_forward_ref(const float* h, float* a, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = h[i] > 0.f ? h[i] : 0.f;
}

void relu_backward_ref(const float* h, const float* da, float* dh, int64_t n) {
    for (int64_t i = 0; i < n; i++) dh[i] = h[i] > 0.f ? da[i] : 0.f;
}

void gelu_forward_ref(const float* h, float* a, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double x = h[i];
        a[i] = (float)(0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))));
    }
}

void gelu_backward_ref(const float* h, const float* da, float* dh, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double x = h[i];
        double cdf = 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
        double pdf = std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
        dh[i] = (float)(da[i] * (cdf + x * pdf));
    }
}

void swiglu_forward_ref(const float* h, float* a, int64_t rows, int f) {
    for (int64_t r = 0; r < rows; r++) {
        const float* h1 = h + r * 2 * f;
        const float* h3 = h1 + f;
        for (int j = 0; j < f; j++) {
            double x = h1[j];
            double s = 1.0 / (1.0 + std::exp(-x));
            a[r * f + j] = (float)(x * s * h3[j]);
        }
    }
}

void swiglu_backward_ref(const float* h, const float* da, float* dh, int64_t rows, int f) {
    for (int64_t r = 0; r < rows; r++) {
        const float* h1 = h + r * 2 * f;
        const float* h3 = h1 + f;
        float* d1 = dh + r * 2 * f;
        float* d3 = d1 + f;
        for (int j = 0; j < f; j++) {
            double x = h1[j], g = da[r * f + j];
            double s = 1.0 / (1.0 + std::exp(-x));
            d1[j] = (float)(g * h3[j] * s * (1.0 + x * (1.0 - s)));
            d3[j] = (float)(g * x * s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fast kernels. exp by range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial (about 1 ulp),
// with the scale 2^n built in the exponent bits; erf by Abramowitz & Stegun 7.1.26 (|err| < 1.5e-7).
// No libm calls, so each loop vectorises; MOE_CLONES compiles it for AVX-512, AVX2 and baseline.

#define MOE_CLONES MOE_SIMD_CLONES  // src/core/simd.h: AVX-512, AVX2, baseline

// always_inline: GCC will not inline a default-target function into a target_clones body
// (different arch), and a call in the loop stops vectorisation. The bit casts go through a union
// (memcpy also blocked the vectoriser here).
#define MOE_INLINE __attribute__((always_inline)) static inline

MOE_INLINE float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    // Round x/ln2 to the nearest integer n with the 1.5 * 2^23 trick: t's low mantissa bits
    // then hold n, so they also give the exponent field of 2^n without a float->int convert.
    float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = x - n * 0.693145751953125f;  // ln2 split in a high part exact in float
    r = r - n * 1.428606765330187045e-06f;  // and the rest
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        float f;
        uint32_t u;
    } a, b;
    a.f = t;
    b.u = (a.u - 0x4B400000u + 127u) << 23;
    return p * b.f;
}

MOE_INLINE float erf_fast(float x) {
    float ax = std::fabs(x);
    float t = 1.0f / (1.0f + 0.3275911f * ax);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    float y = 1.0f - p * t * exp_fast(-ax * ax);
    return std::copysign(y, x);
}

MOE_CLONES void relu_forward(const float* h, float* a, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = h[i] > 0.f ? h[i] : 0.f;
}

MOE_CLONES void relu_backward(const float* h, const float* da, float* dh, int64_t n) {
    for (int64_t i = 0; i < n; i++) dh[i] = h[i] > 0.f ? da[i] : 0.f;
}

MOE_CLONES void gelu_forward(const float* h, float* a, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = h[i];
        a[i] = 0.5f * x * (1.0f + erf_fast(x * 0.70710678118654752f));
    }
}

MOE_CLONES void gelu_backward(const float* h, const float* da, float* dh, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = h[i];
        float cdf = 0.5f * (1.0f + erf_fast(x * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * exp_fast(-0.5f * x * x);
        dh[i] = da[i] * (cdf + x * pdf);
    }
}

MOE_CLONES void swiglu_forward(const float* h, float* a, int64_t rows, int f) {
    for (int64_t r = 0; r < rows; r++) {
        const float* __restrict h1 = h + r * 2 * f;
        const float* __restrict h3 = h1 + f;
        float* __restrict ar = a + r * f;
        for (int j = 0; j < f; j++) {
            float x = h1[j];
            ar[j] = x / (1.0f + exp_fast(-x)) * h3[j];
        }
    }
}

MOE_CLONES void swiglu_backward(const float* h, const float* da, float* dh, int64_t rows, int f) {
    for (int64_t r = 0; r < rows; r++) {
        const float* __restrict h1 = h + r * 2 * f;
        const float* __restrict h3 = h1 + f;
        const float* __restrict g = da + r * f;
        float* __restrict d1 = dh + r * 2 * f;
        float* __restrict d3 = d1 + f;
        for (int j = 0; j < f; j++) {
            float x = h1[j];
            float s = 1.0f / (1.0f + exp_fast(-x));
            float xs = x * s;
            d1[j] = g[j] * h3[j] * (s + xs * (1.0f - s));
            d3[j] = g[j] * xs;
        }
    }
}

}  // namespace moe
