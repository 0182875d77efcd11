#include "kernels/typed_gemm.h"

// GCC 12 warns about the "undefined" register its own AVX-512 conversion intrinsics start from.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/q8_gemm.h"
#include "moe/runtime.h"

namespace moe {

// ---- scalar conversions ---------------------------------------------------------------------

float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000;
    const uint32_t a = u & 0x7fffffff;
    if (a > 0x7f800000) return (uint16_t)(sign | 0x7e00);         // NaN
    if (a >= 0x477ff000) return (uint16_t)(sign | 0x7c00);         // rounds to >= 65536: inf
    if (a < 0x38800000) {                                           // below 2^-14: subnormal
        if (a < 0x33000000) return (uint16_t)sign;                  // below half the least
        const uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000;  // 1.m * 2^(e-127)
        const int shift = 126 - (int)e;                             // 14..24
        uint32_t r = m >> shift;
        const uint32_t rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = a - 0x38000000;  // rebias 127 -> 15 (exponent field moves by 112 << 23)
    r = (r + 0xfff + ((r >> 13) & 1)) >> 13;
    return (uint16_t)(sign | r);
}

// ---- ISA choice -----------------------------------------------------------------------------

static bool cpu_has_f16c() {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static WIsa best_isa() {
    const CpuFeatures& f = cpu_features();
    if (f.avx512f && f.avx512bw) return WIsa::avx512;
    if (f.avx2 && f.fma && cpu_has_f16c()) return WIsa::avx2;
    return WIsa::scalar;
}

static WIsa clamp_isa(WIsa want) { return std::min(want, best_isa()); }

static WIsa& isa_state() {
    static WIsa isa = [] {
        WIsa i = best_isa();
        if (const char* cap = std::getenv("MOE_CPU_CAP")) {
            std::string s = cap;
            if (s == "scalar") i = WIsa::scalar;
            if (s == "avx2") i = clamp_isa(WIsa::avx2);
        }
        return i;
    }();
    return isa;
}

WIsa wgemm_isa() { return isa_state(); }
void wgemm_set_isa(WIsa isa) { isa_state() = clamp_isa(isa); }
const char* wisa_name(WIsa isa) {
    return isa == WIsa::avx512 ? "avx512" : isa == WIsa::avx2 ? "avx2" : "scalar";
}

// ---- dot products of one weight row with one fp32 vector --------------------------------------

static float dot_scalar(const float* x, const uint8_t* w, WType t, int K) {
    float acc[4] = {0, 0, 0, 0};  // four partial sums: the same association as a short vector
    int k = 0;
    if (t == WType::f32) {
        for (; k + 4 <= K; k += 4)
            for (int j = 0; j < 4; j++) {
                float v;
                std::memcpy(&v, w + 4 * (k + j), 4);
                acc[j] += x[k + j] * v;
            }
        for (; k < K; k++) {
            float v;
            std::memcpy(&v, w + 4 * k, 4);
            acc[0] += x[k] * v;
        }
    } else {
        auto widen = [&](int i) {
            uint16_t h;
            std::memcpy(&h, w + 2 * i, 2);
            return t == WType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
        };
        for (; k + 4 <= K; k += 4)
            for (int j = 0; j < 4; j++) acc[j] += x[k + j] * widen(k + j);
        for (; k < K; k++) acc[0] += x[k] * widen(k);
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

__attribute__((target("avx2,fma,f16c"))) static inline __m256 load8_avx2(const uint8_t* w, WType t,
                                                                         int k) {
    if (t == WType::f32) return _mm256_loadu_ps((const float*)(w + 4 * k));
    __m128i h = _mm_loadu_si128((const __m128i*)(w + 2 * k));
    if (t == WType::f16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma,f16c"))) static float dot_avx2(const float* x, const uint8_t* w,
                                                               WType t, int K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8_avx2(w, t, k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), load8_avx2(w, t, k + 8), a1);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8_avx2(w, t, k), a0);
    a0 = _mm256_add_ps(a0, a1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float r = _mm_cvtss_f32(s);
    if (k < K) r += dot_scalar(x + k, w + wtype_size(t) * k, t, K - k);
    return r;
}

__attribute__((target("avx512f,avx512bw"))) static inline __m512 load16_avx512(const uint8_t* w,
                                                                               WType t, int k) {
    if (t == WType::f32) return _mm512_loadu_ps((const float*)(w + 4 * k));
    __m256i h = _mm256_loadu_si256((const __m256i*)(w + 2 * k));
    if (t == WType::f16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx512f,avx512bw"))) static float dot_avx512(const float* x,
                                                                    const uint8_t* w, WType t,
                                                                    int K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), load16_avx512(w, t, k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), load16_avx512(w, t, k + 16), a1);
    }
    for (; k + 16 <= K; k += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), load16_avx512(w, t, k), a0);
    float r = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    if (k < K) r += dot_scalar(x + k, w + wtype_size(t) * k, t, K - k);
    return r;
}

using DotFn = float (*)(const float*, const uint8_t*, WType, int);

static DotFn dot_fn() {
    switch (wgemm_isa()) {
        case WIsa::avx512: return dot_avx512;
        case WIsa::avx2: return dot_avx2;
        default: return dot_scalar;
    }
}

// ---- widening rows ----------------------------------------------------------------------------

void widen_rows(float* out, const WeightView& w, int64_t r0, int64_t n) {
    if (w.type == WType::q8_0) return q8_widen_rows(out, w, r0, n);
    const int64_t K = w.cols;
    for (int64_t r = 0; r < n; r++) {
        const uint8_t* src = w.row(r0 + r);
        float* o = out + r * K;
        if (w.type == WType::f32) {
            std::memcpy(o, src, (size_t)K * 4);
        } else if (w.type == WType::bf16) {
            for (int64_t k = 0; k < K; k++) {  // a shift: the compiler vectorises it
                uint16_t h;
                std::memcpy(&h, src + 2 * k, 2);
                uint32_t u = (uint32_t)h << 16;
                std::memcpy(&o[k], &u, 4);
            }
        } else {
            for (int64_t k = 0; k < K; k++) {
                uint16_t h;
                std::memcpy(&h, src + 2 * k, 2);
                o[k] = f16_to_f32(h);
            }
        }
    }
}

// ---- the product ------------------------------------------------------------------------------

void wgemm(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
           bool accumulate) {
    const int N = (int)w.rows, K = (int)w.cols;
    if (M <= 0 || N <= 0) return;
    if (M < 4 && w.type == WType::q8_0) return q8_gemm_decode(y, ldy, x, ldx, w, M, accumulate);
    if (M < 4) {
        // Decode: bound by reading W once; rows spread over the threads.
        const DotFn dot = dot_fn();
#pragma omp parallel for schedule(static) if ((int64_t)N * K >= 65536)
        for (int n = 0; n < N; n++) {
            const uint8_t* wr = w.row(n);
            for (int m = 0; m < M; m++) {
                const float v = dot(x + (size_t)m * ldx, wr, w.type, K);
                float& o = y[(size_t)m * ldy + n];
                o = accumulate ? o + v : v;
            }
        }
        return;
    }
    const float beta = accumulate ? 1.f : 0.f;
    if (w.type == WType::f32 && ((uintptr_t)w.data % 4) == 0) {
        sgemm(false, true, M, N, K, 1.f, x, ldx, (const float*)w.data, K, beta, y, ldy);
        return;
    }
    // Panels of about 1 MB of widened rows: widen (threads), then one sgemm per panel.
    const int panel = std::max(16, std::min(N, (int)((1 << 18) / std::max(1, K))));
    static thread_local std::vector<float> scratch;
    scratch.resize((size_t)panel * K);
    for (int n0 = 0; n0 < N; n0 += panel) {
        const int pn = std::min(panel, N - n0);
        float* s = scratch.data();
#pragma omp parallel for schedule(static) if ((int64_t)pn * K >= 65536)
        for (int r = 0; r < pn; r++) widen_rows(s + (size_t)r * K, w, n0 + r, 1);
        sgemm(false, true, M, pn, K, 1.f, x, ldx, s, K, beta, y + n0, ldy);
    }
}

void wgemm_ref(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
               bool accumulate) {
    const int N = (int)w.rows, K = (int)w.cols;
    std::vector<float> row(K);
    for (int n = 0; n < N; n++) {
        widen_rows(row.data(), w, n, 1);
        for (int m = 0; m < M; m++) {
            double acc = 0;
            for (int k = 0; k < K; k++) acc += (double)x[(size_t)m * ldx + k] * row[k];
            float& o = y[(size_t)m * ldy + n];
            o = accumulate ? (float)(o + acc) : (float)acc;
        }
    }
}

}  // namespace moe
