#include "kernels/typed_gemm.h"

#include "core/aligned_vector.h"
#include "kernels/bf16.h"

// GCC 12 warns about the "undefined" register its own AVX-512 conversion intrinsics start from.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/transpose_avx2.h"
#include "kernels/q8_gemm.h"
#include "kernels/bf16_gemm.h"
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

uint16_t f32_to_bf16(float f) { return bf16_bits_rne(f); }  // kernels/bf16.h

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
    // VL too: the AVX-512 kernels are compiled with it (every CPU with F and BW has it)
    if (f.avx512f && f.avx512bw && __builtin_cpu_supports("avx512vl")) return WIsa::avx512;
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

// Four weight rows (row stride rb bytes) against one vector: out[r] = x . w_r. Decode is bound
// by reading W, and the single-row kernel keeps only two FMA chains in flight and reloads x for
// every row; four rows at once give eight chains and one x load per four rows. Each row keeps
// the single-row kernel's association (even and odd blocks of the vector width summed apart),
// so the result does not depend on which kernel a row went through.
template <WType T>
__attribute__((target("avx2,fma,f16c"))) static inline __m256 load8_t(const uint8_t* w, int k) {
    if constexpr (T == WType::f32) return _mm256_loadu_ps((const float*)(w + 4 * k));
    __m128i h = _mm_loadu_si128((const __m128i*)(w + 2 * k));
    if constexpr (T == WType::f16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma,f16c"))) static inline float hsum_avx2(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <WType T>
__attribute__((target("avx2,fma,f16c"))) static void dot4_avx2(const float* x, const uint8_t* w,
                                                               size_t rb, int K, float* out,
                                                               const char* pf) {
    __m256 a[4][2];
    for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    // Rows are short streams (a few KB) that the hardware prefetcher barely learns before they
    // end: pf (rows further on, decode_rows says which) is fetched into L2 at the rate this
    // loop eats its own rows (4 x 16 values per step: pf's bytes spread over this group's steps).
    const size_t step_bytes = 4 * 16 * sizeof(float) * wtype_size(T) / 4;  // 4 rows x 16 values
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        _mm_prefetch(pf, _MM_HINT_T1);
        _mm_prefetch(pf + 64, _MM_HINT_T1);
        if (step_bytes > 128) {
            _mm_prefetch(pf + 128, _MM_HINT_T1);
            _mm_prefetch(pf + 192, _MM_HINT_T1);
        }
        pf += step_bytes;
        const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int r = 0; r < 4; r++) {
            a[r][0] = _mm256_fmadd_ps(x0, load8_t<T>(w + r * rb, k), a[r][0]);
            a[r][1] = _mm256_fmadd_ps(x1, load8_t<T>(w + r * rb, k + 8), a[r][1]);
        }
    }
    for (; k + 8 <= K; k += 8) {
        const __m256 x0 = _mm256_loadu_ps(x + k);
        for (int r = 0; r < 4; r++) a[r][0] = _mm256_fmadd_ps(x0, load8_t<T>(w + r * rb, k), a[r][0]);
    }
    for (int r = 0; r < 4; r++) {
        out[r] = hsum_avx2(_mm256_add_ps(a[r][0], a[r][1]));
        if (k < K) out[r] += dot_scalar(x + k, w + r * rb + wtype_size(T) * k, T, K - k);
    }
}

template <WType T>
__attribute__((target("avx512f,avx512bw"))) static inline __m512 load16_t(const uint8_t* w, int k) {
    if constexpr (T == WType::f32) return _mm512_loadu_ps((const float*)(w + 4 * k));
    __m256i h = _mm256_loadu_si256((const __m256i*)(w + 2 * k));
    if constexpr (T == WType::f16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <WType T>
__attribute__((target("avx512f,avx512bw"))) static void dot4_avx512(const float* x,
                                                                    const uint8_t* w, size_t rb,
                                                                    int K, float* out,
                                                                    const char* pf) {
    __m512 a[4][2];
    for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
    // pf fetched into L2 at the rate this loop reads its own rows, as in dot4_avx2 (without any
    // prefetch the loop read bf16 m795 at 27 tok/s, with the next rows into L1 at 35-40)
    const size_t step_bytes = 4 * 32 * wtype_size(T);  // 4 rows x 32 values
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        for (size_t o = 0; o < step_bytes; o += 64) _mm_prefetch(pf + o, _MM_HINT_T1);
        pf += step_bytes;
        const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
        for (int r = 0; r < 4; r++) {
            a[r][0] = _mm512_fmadd_ps(x0, load16_t<T>(w + r * rb, k), a[r][0]);
            a[r][1] = _mm512_fmadd_ps(x1, load16_t<T>(w + r * rb, k + 16), a[r][1]);
        }
    }
    for (; k + 16 <= K; k += 16) {
        const __m512 x0 = _mm512_loadu_ps(x + k);
        for (int r = 0; r < 4; r++)
            a[r][0] = _mm512_fmadd_ps(x0, load16_t<T>(w + r * rb, k), a[r][0]);
    }
    for (int r = 0; r < 4; r++) {
        out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
        if (k < K) out[r] += dot_scalar(x + k, w + r * rb + wtype_size(T) * k, T, K - k);
    }
}

static void dot4_scalar_f32(const float* x, const uint8_t* w, size_t rb, int K, float* out,
                            const char*) {
    for (int r = 0; r < 4; r++) out[r] = dot_scalar(x, w + r * rb, WType::f32, K);
}
static void dot4_scalar_f16(const float* x, const uint8_t* w, size_t rb, int K, float* out,
                            const char*) {
    for (int r = 0; r < 4; r++) out[r] = dot_scalar(x, w + r * rb, WType::f16, K);
}
static void dot4_scalar_bf16(const float* x, const uint8_t* w, size_t rb, int K, float* out,
                            const char*) {
    for (int r = 0; r < 4; r++) out[r] = dot_scalar(x, w + r * rb, WType::bf16, K);
}

using Dot4Fn = void (*)(const float*, const uint8_t*, size_t, int, float*, const char*);

static Dot4Fn dot4_fn(WType t) {
    const int ti = t == WType::f32 ? 0 : t == WType::f16 ? 1 : 2;
    static const Dot4Fn table[3][3] = {
        {dot4_scalar_f32, dot4_scalar_f16, dot4_scalar_bf16},
        {dot4_avx2<WType::f32>, dot4_avx2<WType::f16>, dot4_avx2<WType::bf16>},
        {dot4_avx512<WType::f32>, dot4_avx512<WType::f16>, dot4_avx512<WType::bf16>},
    };
    return table[(int)wgemm_isa()][ti];
}

// ---- widening rows ----------------------------------------------------------------------------

void widen_rows(float* out, const WeightView& w, int64_t r0, int64_t n) {
    if (w.type == WType::q8_0 || w.type == WType::q4_0) return q8_widen_rows(out, w, r0, n);
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

// ---- prefill: a packed micro-kernel (AVX2) ---------------------------------------------------
// y [M, N] (+)= x [M, K] W^T for M >= 4 (prompt chunks, the tokens of one expert). OpenBLAS
// reaches only 20-45 GFLOP/s per core on these shapes (M a few dozen, measured here) and would
// need W widened to fp32 first and then packed again by itself. Here W is widened straight into
// the packed layout the micro-kernel reads: for 16 rows of W and a block of kKC columns,
// bp[k][16] (transposed, fp32; rows past N are zero). x is not packed: the kernel broadcasts
// x[m][k] from its rows (a 6 x kKC block stays in L1). Each output keeps 2 x 6 x 8 running sums
// in registers; blocks of K are added to y in order, so the numbers depend on neither the thread
// count nor the split of N. Threads take whole chunks of kNC rows of W.
static const int kMR = 6, kNR = 16, kKC = 256, kNC = 128;

template <WType T>
static void pack_b_scalar(float* bp, const WeightView& w, int n0, int nr, int k0, int kc) {
    const size_t es = wtype_size(T);
    for (int j = 0; j < kNR; j++) {
        if (j >= nr) {
            for (int k = 0; k < kc; k++) bp[k * kNR + j] = 0.f;
            continue;
        }
        const uint8_t* src = w.row(n0 + j) + es * (size_t)k0;
        for (int k = 0; k < kc; k++) {
            if constexpr (T == WType::f32) {
                std::memcpy(&bp[k * kNR + j], src + 4 * k, 4);
            } else {
                uint16_t h;
                std::memcpy(&h, src + 2 * k, 2);
                bp[k * kNR + j] = T == WType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
            }
        }
    }
}

// Full panels (16 rows, kc a multiple of 8): 8 x 8 blocks widened and transposed in registers,
// so every store is 8 contiguous floats (the scalar packing's scattered stores cost as much as
// the arithmetic at a few dozen tokens per expert).
template <WType T>
__attribute__((target("avx2,fma,f16c"))) static void pack_b(float* bp, const WeightView& w,
                                                            int n0, int nr, int k0, int kc) {
    if (nr != kNR || kc % 8 != 0) return pack_b_scalar<T>(bp, w, n0, nr, k0, kc);
    const size_t es = wtype_size(T);
    for (int j0 = 0; j0 < kNR; j0 += 8) {
        const uint8_t* src[8];
        for (int r = 0; r < 8; r++) src[r] = w.row(n0 + j0 + r) + es * (size_t)k0;
        for (int k = 0; k < kc; k += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = load8_t<T>(src[i], k);
            transpose8_store_avx2(r, bp + (size_t)k * kNR + j0, kNR);
        }
    }
}

// Twelve named accumulators (an array of __m256 was spilled to the stack by g++ 12 on every
// step); rows past MR are compiled out.
template <int MR>
__attribute__((target("avx2,fma"))) static void ukernel_avx2(int kc, const float* x, int ldx,
                                                             const float* bp, float* c, int ldc,
                                                             bool add, int nr) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float* x0 = x;
    const float* x1 = x + (size_t)ldx;
    const float* x2 = x + 2 * (size_t)ldx;
    const float* x3 = x + 3 * (size_t)ldx;
    const float* x4 = x + 4 * (size_t)ldx;
    const float* x5 = x + 5 * (size_t)ldx;
    for (int k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_loadu_ps(bp + k * kNR), b1 = _mm256_loadu_ps(bp + k * kNR + 8);
        __m256 a;
#define MOE_UK_ROW(i)                                 \
    if constexpr (MR > i) {                           \
        a = _mm256_broadcast_ss(x##i + k);            \
        c##i##0 = _mm256_fmadd_ps(a, b0, c##i##0);    \
        c##i##1 = _mm256_fmadd_ps(a, b1, c##i##1);    \
    }
        MOE_UK_ROW(0) MOE_UK_ROW(1) MOE_UK_ROW(2) MOE_UK_ROW(3) MOE_UK_ROW(4) MOE_UK_ROW(5)
#undef MOE_UK_ROW
    }
    const __m256 acc[6][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                              {c30, c31}, {c40, c41}, {c50, c51}};
    for (int i = 0; i < MR; i++) {
        float* ci = c + (size_t)i * ldc;
        if (nr == kNR) {
            __m256 r0 = acc[i][0], r1 = acc[i][1];
            if (add) {
                r0 = _mm256_add_ps(_mm256_loadu_ps(ci), r0);
                r1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), r1);
            }
            _mm256_storeu_ps(ci, r0);
            _mm256_storeu_ps(ci + 8, r1);
        } else {
            float t[kNR];
            _mm256_storeu_ps(t, acc[i][0]);
            _mm256_storeu_ps(t + 8, acc[i][1]);
            for (int j = 0; j < nr; j++) ci[j] = add ? ci[j] + t[j] : t[j];
        }
    }
}

// AVX-512: the same panels, two at a time: 8 rows x 32 columns (sixteen zmm accumulators of
// the 32 registers), each step two panel vectors and 8 broadcasts for 16 FMAs. Per output the
// same fp32 FMA chain in k order from zero, then added to y, as the AVX2 kernel: the same bits.
template <int MR, int NP>
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void ukernel_avx512(
    int kc, const float* x, int ldx, const float* bp, size_t panel, float* c, int ldc, bool add,
    int nc) {
    __m512 acc[MR][NP];
    __mmask16 mk[NP];
    for (int p = 0; p < NP; p++) {
        const int n = std::min(kNR, nc - p * kNR);
        mk[p] = n <= 0 ? 0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    }
    for (int i = 0; i < MR; i++)
        for (int p = 0; p < NP; p++) acc[i][p] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 b[NP];
        for (int p = 0; p < NP; p++) b[p] = _mm512_loadu_ps(bp + p * panel + (size_t)k * kNR);
        for (int i = 0; i < MR; i++) {
            const __m512 a = _mm512_set1_ps(x[(size_t)i * ldx + k]);
            for (int p = 0; p < NP; p++) acc[i][p] = _mm512_fmadd_ps(a, b[p], acc[i][p]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int p = 0; p < NP; p++) {
            if (!mk[p]) continue;
            float* ci = c + (size_t)i * ldc + p * kNR;
            const __m512 r = add ? _mm512_add_ps(_mm512_maskz_loadu_ps(mk[p], ci), acc[i][p]) : acc[i][p];
            _mm512_mask_storeu_ps(ci, mk[p], r);
        }
}

static const int kMR512 = 8;

using Ukernel512Fn = void (*)(int, const float*, int, const float*, size_t, float*, int, bool, int);

using UkernelFn = void (*)(int, const float*, int, const float*, float*, int, bool, int);
using PackFn = void (*)(float*, const WeightView&, int, int, int, int);

// Output columns n0 .. n1 - 1 (whole kNC chunks but the last), in the thread's own panel.
static void packed_rows_avx2(float* y, int ldy, const float* x, int ldx, const WeightView& w,
                             int M, bool accumulate, int n0, int n1) {
    static const UkernelFn uk[kMR + 1] = {nullptr,         ukernel_avx2<1>, ukernel_avx2<2>,
                                          ukernel_avx2<3>, ukernel_avx2<4>, ukernel_avx2<5>,
                                          ukernel_avx2<6>};
    // (Q8_0 never comes here: q8_gemm.cpp's integer kernel runs its prefill)
    const PackFn pack = w.type == WType::f32   ? pack_b<WType::f32>
                        : w.type == WType::f16 ? pack_b<WType::f16>
                                               : pack_b<WType::bf16>;
    const int K = (int)w.cols;
    if (K == 0) {  // an empty sum
        for (int m = 0; m < M && !accumulate; m++) std::fill(y + (size_t)m * ldy + n0, y + (size_t)m * ldy + n1, 0.f);
        return;
    }
    static const Ukernel512Fn uk512[2][kMR512 + 1] = {
        {nullptr, ukernel_avx512<1, 1>, ukernel_avx512<2, 1>, ukernel_avx512<3, 1>,
         ukernel_avx512<4, 1>, ukernel_avx512<5, 1>, ukernel_avx512<6, 1>, ukernel_avx512<7, 1>,
         ukernel_avx512<8, 1>},
        {nullptr, ukernel_avx512<1, 2>, ukernel_avx512<2, 2>, ukernel_avx512<3, 2>,
         ukernel_avx512<4, 2>, ukernel_avx512<5, 2>, ukernel_avx512<6, 2>, ukernel_avx512<7, 2>,
         ukernel_avx512<8, 2>}};
    const bool z = wgemm_isa() == WIsa::avx512;
    static thread_local AlignedVector<float> bp_store;
    if (bp_store.size() < (size_t)kNC * kKC) bp_store.resize((size_t)kNC * kKC);
    float* bp = bp_store.data();
    for (int c0 = n0; c0 < n1; c0 += kNC) {
        const int nc = std::min(kNC, n1 - c0), np = (nc + kNR - 1) / kNR;
        for (int k0 = 0; k0 < K; k0 += kKC) {
            const int kc = std::min(kKC, K - k0);
            for (int p = 0; p < np; p++)
                pack(bp + (size_t)p * kKC * kNR, w, c0 + p * kNR, std::min(kNR, nc - p * kNR),
                     k0, kc);
            const bool add = accumulate || k0 > 0;
            for (int m0 = 0; m0 < M && z; m0 += kMR512) {
                const int mr = std::min(kMR512, M - m0);
                const size_t panel = (size_t)kKC * kNR;
                for (int p = 0; p < np; p += 2)
                    uk512[p + 1 < np][mr](kc, x + (size_t)m0 * ldx + k0, ldx, bp + p * panel, panel,
                                          y + (size_t)m0 * ldy + c0 + p * kNR, ldy, add,
                                          nc - p * kNR);
            }
            for (int m0 = 0; m0 < M && !z; m0 += kMR) {
                const int mr = std::min(kMR, M - m0);
                for (int p = 0; p < np; p++)
                    uk[mr](kc, x + (size_t)m0 * ldx + k0, ldx, bp + (size_t)p * kKC * kNR,
                           y + (size_t)m0 * ldy + c0 + p * kNR, ldy, add,
                           std::min(kNR, nc - p * kNR));
            }
        }
    }
}

static const int kDecodePrefetchRows = 8;
static const size_t kDecodePieceBytes = (size_t)256 << 10;
// The last kDecodeTailBytes of a decode batch go in pieces of kDecodeTailPieceBytes: a thread
// that finds no piece left waits at the region's end for the other's last piece, on average half
// a piece; a token of m795 runs ~40 such regions (qkv, attention, wo, gate/up, down per layer),
// and perf put ~3% of q8_0 decode in libgomp's wait. Measured (10 adjacent pairs, session 10):
// decode +1.2% (q8_0) and +1.6% (f16) with 64 KB tail pieces; 32 KB gained at q8_0 but lost at
// f16 (16 rows: half of such a piece runs before its prefetch, two groups ahead, has started).
static const size_t kDecodeTailBytes = (size_t)512 << 10;
static const size_t kDecodeTailPieceBytes = (size_t)64 << 10;

// Decode (M < 4) of BF16/F16/F32 weights: output columns n0 .. n1 - 1 (n0 a multiple of 4),
// groups of four weight rows, each bound by reading W once.
static void decode_rows(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                        bool accumulate, int n0, int n1) {
    const DotFn dot = dot_fn();
    const Dot4Fn dot4 = dot4_fn(w.type);
    const int K = (int)w.cols;
    const size_t rb = (size_t)K * wtype_size(w.type);
    for (int g = n0; g < n1; g += 4)
        for (int m = 0; m < M; m++) {
            float v[4];
            const float* xm = x + (size_t)m * ldx;
            if (g + 4 <= n1) {
                // Fetched into L2 while this group runs: the group two on (16 KB ahead at f16,
                // d 1024), inside the piece (past its end the rows are another thread's); the
                // first input row only. One group on and into L1 read 15-22 GB/s in a 2-thread
                // f16 stream here, two on into L2 20-24 (the plain read: 24-26).
                const int pg = g + kDecodePrefetchRows;
                const char* pf = m == 0 && pg + 4 <= n1 ? (const char*)w.row(pg) : (const char*)w.row(g);
                dot4(xm, w.row(g), rb, K, v, pf);
            } else {
                for (int r = 0; g + r < n1; r++) v[r] = dot(xm, w.row(g + r), w.type, K);
            }
            for (int r = 0; r < 4 && g + r < n1; r++) {
                float& o = y[(size_t)m * ldy + g + r];
                o = accumulate ? o + v[r] : v[r];
            }
        }
}

// ---- the product ------------------------------------------------------------------------------

static const int kPanelRows = 128;

// CPUs without AVX2, prefill: OpenBLAS. (AVX-512 CPUs ran here until session 8; the packed
// micro-kernels above now serve them: on m795 pp128 the AVX-512 tile and the integer VNNI tile
// beat OpenBLAS's SkylakeX sgemm on widened panels, which also paid for the widening copy.)
// W's rows are cut into panels of kPanelRows (a count that does not depend on the thread count,
// so neither do the numbers); each thread takes whole panels, widens them into its own scratch
// (BF16/F16/Q8_0; F32 rows are used in place) and multiplies with one sgemm, which OpenBLAS runs
// single-threaded inside our parallel region. One parallel region per product: letting OpenBLAS
// thread these small products itself (M is a few dozen tokens per expert) made 2 threads spend
// most of their time in its spin-waits. Q8_0 multiplies the inputs rounded as decode rounds them
// (q8_round_activation_rows: dx * qx per 32-block), so prompt and decode compute the same
// products.
static void wgemm_sgemm_panels(float* y, int ldy, const float* x, int ldx, const WeightView& w,
                               int M, bool accumulate) {
    const int N = (int)w.rows, K = (int)w.cols;
    if (w.type == WType::q8_0 || w.type == WType::q4_0) {
        static thread_local std::vector<float> xq;
        if (xq.size() < (size_t)M * K) xq.resize((size_t)M * K);
        q8_round_activation_rows(xq.data(), K, x, ldx, M, K);
        x = xq.data();
        ldx = K;
    }
    const float beta = accumulate ? 1.f : 0.f;
    const bool in_place = w.type == WType::f32 && ((uintptr_t)w.data % 4) == 0;
    const int panel = kPanelRows;
    const int n_panels = (N + panel - 1) / panel;
#pragma omp parallel if (n_panels > 1 && (int64_t)M * N * K >= (1 << 20))
    {
        static thread_local std::vector<float> scratch;
        if (!in_place && scratch.size() < (size_t)panel * K) scratch.resize((size_t)panel * K);
#pragma omp for schedule(static)
        for (int p = 0; p < n_panels; p++) {
            const int n0 = p * panel, pn = std::min(panel, N - n0);
            const float* wp;
            if (in_place) {
                wp = (const float*)w.row(n0);
            } else {
                widen_rows(scratch.data(), w, n0, pn);
                wp = scratch.data();
            }
            sgemm(false, true, M, pn, K, 1.f, x, ldx, wp, K, beta, y + n0, ldy);
        }
    }
}

// How a job runs: decode kernels (every CPU), the packed AVX2 / AVX-512 prefill kernels, or the
// OpenBLAS panels (prefill without AVX2, a parallel region of its own).
// BF16 on CPUs with AVX-512 BF16: vdpbf16ps kernels on bf16-rounded inputs (bf16_gemm.h).
enum class JobKind { decode, decode_q8, decode_bf16, packed, packed_q8, packed_bf16, panels };

void wgemm(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
           bool accumulate) {
    const WgemmJob job{y, ldy, x, ldx, w, M, accumulate};
    wgemm_batch(&job, 1);
}

// Every job is cut into pieces of output columns (decode: ~256 KB of W; prefill: kNC / 128
// rows, one packed panel's worth), and all pieces of all jobs go to the threads in one parallel
// region, taken first come first served. Which thread computes a piece changes nothing: each
// output is summed inside one piece in a fixed order. One region instead of one per product
// saves the barrier after each product, where a thread that finished its share waited for
// the other (a token's decode ran ~100 products; the expert products of a prompt are a few
// dozen tokens each).
void wgemm_batch(const WgemmJob* jobs, int n_jobs) {
    struct Prep {
        JobKind kind = JobKind::decode;
        int pieces = 0, rows_per_piece = 0;
        int tail_row = INT_MAX, tail_rows_per_piece = 0;  // rows from tail_row on: smaller pieces
        size_t in_off = 0, sc_off = 0;  // the quantised inputs, in the arenas below
        int shares = -1;                // a job with the same inputs whose quantisation is reused
    };
    static thread_local std::vector<Prep> prep;
    static thread_local std::vector<int8_t> arena8;
    static thread_local std::vector<int16_t> arena16;  // q8 prefill's int16, or bf16 bits
    static thread_local std::vector<float> arena_sc;
    prep.assign((size_t)n_jobs, Prep{});
    const WIsa isa = wgemm_isa();
    const bool bf16_on = bf16_dp_active();
    size_t n8 = 0, n16 = 0, nsc = 0;
    int64_t work = 0;
    int total = 0;
    for (int j = 0; j < n_jobs; j++) {
        const WgemmJob& J = jobs[j];
        Prep& P = prep[j];
        const int N = (int)J.w.rows;
        const int64_t K = J.w.cols;
        if (J.M <= 0 || N <= 0) continue;
        const bool q8 = J.w.type == WType::q8_0 || J.w.type == WType::q4_0;  // int8 inputs
        const bool bf = J.w.type == WType::bf16 && bf16_on;                // bf16 inputs
        if (J.M < 4) {
            P.kind = q8 ? JobKind::decode_q8 : bf ? JobKind::decode_bf16 : JobKind::decode;
            // pieces of ~256 KB of W (at least 64 rows): m795 f16 decoded 45-47 tok/s beside
            // 42-44 with 64 rows (128 KB; alternated, session 9): a stream a thread reads alone
            // for longer, fewer restarts of its prefetch; q8_0 the same either way
            P.rows_per_piece = std::max<int>(
                64, (int)(kDecodePieceBytes / wtype_row_bytes(J.w.type, K)) / 4 * 4);
        } else if (bf) {
            P.kind = JobKind::packed_bf16;
            P.rows_per_piece = kNC;
        } else if (isa == WIsa::avx2 || isa == WIsa::avx512) {
            P.kind = q8 ? JobKind::packed_q8 : JobKind::packed;
            P.rows_per_piece = kNC;  // = q8_gemm.cpp's chunk
        } else {
            P.kind = JobKind::panels;
            continue;
        }
        P.pieces = (N + P.rows_per_piece - 1) / P.rows_per_piece;
        if (j == n_jobs - 1 && J.M < 4) {  // the batch's last rows (multiples of 4 rows)
            const size_t rb = wtype_row_bytes(J.w.type, K);
            const int tail = (int)std::min<int64_t>(N, (int64_t)(kDecodeTailBytes / rb));
            P.tail_row = std::min(N, (N - tail + 3) / 4 * 4);
            P.tail_rows_per_piece = std::max<int>(4, (int)(kDecodeTailPieceBytes / rb) / 4 * 4);
            P.pieces = (P.tail_row + P.rows_per_piece - 1) / P.rows_per_piece +
                       (N - P.tail_row + P.tail_rows_per_piece - 1) / P.tail_rows_per_piece;
        }
        total += P.pieces;
        work += (int64_t)J.M * N * K;
        if (!q8 && !bf) continue;
        for (int i = 0; i < j && P.shares < 0; i++)
            if (prep[i].kind == P.kind && prep[i].shares < 0 && jobs[i].x == J.x &&
                jobs[i].ldx == J.ldx && jobs[i].M == J.M && jobs[i].w.cols == K)
                P.shares = i;
        if (P.shares >= 0) {
            P.in_off = prep[P.shares].in_off;
            P.sc_off = prep[P.shares].sc_off;
            continue;
        }
        if (bf) {  // bf16 bits in the int16 arena, no scales
            P.in_off = n16;
            n16 += P.kind == JobKind::decode_bf16 ? (size_t)J.M * bf16_row_stride(K)
                                                  : bf16_prefill_input_size(J.M, K);
            continue;
        }
        const size_t in = P.kind == JobKind::decode_q8 ? (size_t)J.M * K : q8_prefill_input_size(J.M, K);
        P.sc_off = nsc;
        nsc += in / kQ8Block;
        if (P.kind == JobKind::decode_q8) {
            P.in_off = n8;
            n8 += in;
        } else {
            P.in_off = n16;
            n16 += in;
        }
    }
    if (arena8.size() < n8) arena8.resize(n8);
    if (arena16.size() < n16) arena16.resize(n16);
    if (arena_sc.size() < nsc) arena_sc.resize(nsc);
    // The products OpenBLAS runs, one after another, each threaded inside.
    for (int j = 0; j < n_jobs; j++)
        if (prep[j].kind == JobKind::panels)
            wgemm_sgemm_panels(jobs[j].y, jobs[j].ldy, jobs[j].x, jobs[j].ldx, jobs[j].w,
                               jobs[j].M, jobs[j].accumulate);
    if (total == 0) return;
    // The q8_0 inputs quantised once per distinct input, as decode quantises them.
    for (int j = 0; j < n_jobs; j++) {
        const Prep& P = prep[j];
        const WgemmJob& J = jobs[j];
        if (P.shares >= 0 || P.pieces == 0) continue;
        if (P.kind == JobKind::decode_q8)
            q8_decode_quantize(J.x, J.ldx, J.M, J.w.cols, &arena8[P.in_off], &arena_sc[P.sc_off]);
        else if (P.kind == JobKind::packed_q8)
            q8_prefill_quantize(J.x, J.ldx, J.M, J.w.cols, &arena16[P.in_off], &arena_sc[P.sc_off]);
        else if (P.kind == JobKind::decode_bf16)
            bf16_decode_convert(J.x, J.ldx, J.M, J.w.cols, (uint16_t*)&arena16[P.in_off]);
        else if (P.kind == JobKind::packed_bf16)
            bf16_prefill_convert(J.x, J.ldx, J.M, J.w.cols, (uint16_t*)&arena16[P.in_off]);
    }
    const Prep* pp = prep.data();  // pointers, not the thread_local names, go into the threads
    const int8_t* a8 = arena8.data();
    const int16_t* a16 = arena16.data();
    const float* asc = arena_sc.data();
    // Piece i of the whole list: the job it belongs to, found by a walk (a few dozen jobs).
    auto run_piece = [&](int i) {
        int j = 0;
        while (i >= pp[j].pieces) i -= pp[j++].pieces;
        const WgemmJob& J = jobs[j];
        const Prep& P = pp[j];
        const int N = (int)J.w.rows, head = std::min(N, P.tail_row);
        const int head_pieces = (head + P.rows_per_piece - 1) / P.rows_per_piece;
        int n0, n1;
        if (i < head_pieces) {
            n0 = i * P.rows_per_piece;
            n1 = std::min(head, n0 + P.rows_per_piece);
        } else {
            n0 = head + (i - head_pieces) * P.tail_rows_per_piece;
            n1 = std::min(N, n0 + P.tail_rows_per_piece);
        }
        switch (P.kind) {
            case JobKind::decode:
                decode_rows(J.y, J.ldy, J.x, J.ldx, J.w, J.M, J.accumulate, n0, n1);
                break;
            case JobKind::decode_q8:
                q8_decode_rows(J.y, J.ldy, a8 + P.in_off, asc + P.sc_off, J.w, J.M, J.accumulate, n0, n1);
                break;
            case JobKind::packed:
                packed_rows_avx2(J.y, J.ldy, J.x, J.ldx, J.w, J.M, J.accumulate, n0, n1);
                break;
            case JobKind::packed_q8:
                q8_prefill_rows(J.y, J.ldy, a16 + P.in_off, asc + P.sc_off, J.w, J.M, J.accumulate, n0, n1);
                break;
            case JobKind::decode_bf16:
                bf16_decode_rows(J.y, J.ldy, (const uint16_t*)(a16 + P.in_off), J.w, J.M, J.accumulate, n0, n1);
                break;
            case JobKind::packed_bf16:
                bf16_prefill_rows(J.y, J.ldy, (const uint16_t*)(a16 + P.in_off), J.w, J.M, J.accumulate, n0, n1);
                break;
            case JobKind::panels: break;
        }
    };
#pragma omp parallel for schedule(dynamic, 1) if (total > 1 && work >= 65536)
    for (int i = 0; i < total; i++) run_piece(i);
}

void wgemm_ref(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
               bool accumulate) {
    // BF16 weights where wgemm multiplies bf16-rounded inputs: those inputs
    if (w.type == WType::bf16 && bf16_dp_active()) return bf16_gemm_ref(y, ldy, x, ldx, w, M, accumulate);
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
