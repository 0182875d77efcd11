#include "kernels/bf16_gemm.h"

// GCC 12 warns about the "undefined" register its own AVX-512 intrinsics start from.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <cstring>
#include <vector>

#include "core/aligned_vector.h"
#include "kernels/bf16.h"
#include "kernels/q8_gemm.h"
#include "kernels/transpose_avx2.h"
#include "kernels/typed_gemm.h"
#include "moe/runtime.h"

namespace moe {

static bool detect_bf16_dp() {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512bf16 && __builtin_cpu_supports("avx512vl") &&
           cpu_os_saves_zmm();
}

bool bf16_cpu_has_dp() {
    static const bool has = detect_bf16_dp();
    return has;
}

// Opt-in (MOE_BF16_DOT=1): on the Intel AVX-512 BF16 machine of session 8 vdpbf16ps ran at
// about half the multiply-adds per second of fp32 FMAs on widened weights (bench_wgemm), so the
// default stays the FMA kernels and their fp32 inputs.
static bool& bf16_dot_wanted() {
    static bool want = [] {
        const char* e = std::getenv("MOE_BF16_DOT");
        return e && std::string(e) == "1";
    }();
    return want;
}

void bf16_dot_enable(bool on) { bf16_dot_wanted() = on; }

bool bf16_dp_active() {
    return bf16_dot_wanted() && wgemm_isa() == WIsa::avx512 && bf16_cpu_has_dp();
}

static const int kBMR = 6, kBNR = 16, kBKC = 256;  // tile rows, panel rows, columns per pass
static const int kBNP = 4;  // panels per tile: 6 x 64 outputs, 24 accumulators

static inline uint32_t ld_bf16(const uint8_t* row, int64_t k) {  // rows need not be aligned
    uint16_t h;
    std::memcpy(&h, row + 2 * k, 2);
    return h;
}

// ---- inputs ---------------------------------------------------------------------------------

static inline int64_t pairs_of(int64_t K) { return (K + 1) / 2; }

size_t bf16_prefill_input_size(int M, int64_t K) {
    return (size_t)((M + kBMR - 1) / kBMR * kBMR) * (size_t)(2 * pairs_of(K));
}

void bf16_prefill_convert(const float* x, int ldx, int M, int64_t K, uint16_t* xg) {
    const int64_t P = pairs_of(K);
    const int Mp = (M + kBMR - 1) / kBMR * kBMR;
    // the last group whole, zero: the kernel always runs six rows, and an odd K's last pair
    std::fill(xg + (size_t)(Mp - kBMR) * 2 * P, xg + (size_t)Mp * 2 * P, (uint16_t)0);
#pragma omp parallel for schedule(static) if ((int64_t)M * K >= (1 << 16))
    for (int m = 0; m < M; m++) {
        uint16_t* g = xg + (size_t)(m / kBMR) * kBMR * 2 * P + 2 * (m % kBMR);
        const float* xm = x + (size_t)m * ldx;
        for (int64_t p = 0; p < P; p++) {
            g[p * 2 * kBMR] = bf16_bits_rne(xm[2 * p]);
            g[p * 2 * kBMR + 1] = 2 * p + 1 < K ? bf16_bits_rne(xm[2 * p + 1]) : (uint16_t)0;
        }
    }
}

int64_t bf16_row_stride(int64_t K) { return 2 * pairs_of(K); }

void bf16_decode_convert(const float* x, int ldx, int M, int64_t K, uint16_t* xb) {
    const int64_t S = bf16_row_stride(K);
    for (int m = 0; m < M; m++) {
        for (int64_t k = 0; k < K; k++) xb[m * S + k] = bf16_bits_rne(x[(size_t)m * ldx + k]);
        if (S > K) xb[m * S + K] = 0;
    }
}

// ---- prefill ----------------------------------------------------------------------------------

// Panel rows n0 .. n0 + nr - 1, columns k0 .. k0 + kc - 1 (k0 even) as pairs: bq[p][j].
// Eight rows at a time, eight pairs (32 bytes of a row) at a time through the 8 x 8 32-bit
// transpose; a short or odd tail and rows past nr by plain loops.
__attribute__((target("avx2,fma"))) static void pack_bf16_pairs(uint32_t* bq, const WeightView& w,
                                                               int n0, int nr, int k0, int kc) {
    const int K = (int)w.cols, np = (kc + 1) / 2;
    int j0 = 0;
    for (; j0 + 8 <= nr; j0 += 8) {
        const uint8_t* src[8];
        for (int r = 0; r < 8; r++) src[r] = w.row(n0 + j0 + r) + 2 * (size_t)k0;
        int p = 0;
        for (; p + 8 <= np && k0 + 2 * (p + 8) <= K; p += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps((const float*)(src[i] + 4 * p));
            transpose8_store_avx2(r, (float*)(bq + (size_t)p * kBNR + j0), kBNR);
        }
        for (; p < np; p++)
            for (int r = 0; r < 8; r++) {
                const uint8_t* s = w.row(n0 + j0 + r);
                const int64_t k = k0 + 2 * p;
                bq[(size_t)p * kBNR + j0 + r] = ld_bf16(s, k) | (k + 1 < K ? ld_bf16(s, k + 1) << 16 : 0u);
            }
    }
    for (int j = j0; j < kBNR; j++)
        for (int p = 0; p < np; p++) {
            uint32_t v = 0;
            if (j < nr) {
                const uint8_t* s = w.row(n0 + j);
                const int64_t k = k0 + 2 * p;
                v = ld_bf16(s, k) | (k + 1 < K ? ld_bf16(s, k + 1) << 16 : 0u);
            }
            bq[(size_t)p * kBNR + j] = v;
        }
}

// 6 rows x NP panels of 16 outputs over np pairs: per pair step the NP panel vectors, then per
// row one broadcast input pair and NP vdpbf16ps. Accumulators start from y (a later pass over
// K, or accumulate) or zero; rows past mr and columns past nc are neither read nor written.
template <int NP>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void ukernel_bf16(
    int np, const uint16_t* xg, const uint32_t* bq, size_t panel, float* c, int ldc, bool add,
    int mr, int nc) {
    __m512 acc[kBMR][NP];
    __mmask16 mk[NP];
    for (int p = 0; p < NP; p++) {
        const int n = std::min(kBNR, nc - p * kBNR);
        mk[p] = n <= 0 ? 0 : n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    }
    for (int i = 0; i < kBMR; i++)
        for (int p = 0; p < NP; p++)
            acc[i][p] = add && i < mr ? _mm512_maskz_loadu_ps(mk[p], c + (size_t)i * ldc + p * kBNR)
                                      : _mm512_setzero_ps();
    for (int s = 0; s < np; s++) {
        __m512bh b[NP];
        for (int p = 0; p < NP; p++)
            b[p] = (__m512bh)_mm512_loadu_si512(bq + p * panel + (size_t)s * kBNR);
        const uint16_t* xs = xg + (size_t)s * 2 * kBMR;
        for (int i = 0; i < kBMR; i++) {
            int32_t pair;
            std::memcpy(&pair, xs + 2 * i, 4);
            const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
            for (int p = 0; p < NP; p++) acc[i][p] = _mm512_dpbf16_ps(acc[i][p], a, b[p]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int p = 0; p < NP; p++)
            if (mk[p]) _mm512_mask_storeu_ps(c + (size_t)i * ldc + p * kBNR, mk[p], acc[i][p]);
}

void bf16_prefill_rows(float* y, int ldy, const uint16_t* xg, const WeightView& w, int M,
                       bool accumulate, int n0, int n1) {
    const int K = (int)w.cols;
    const int64_t P = pairs_of(K);
    if (K == 0) {  // an empty sum
        for (int m = 0; m < M && !accumulate; m++)
            std::fill(y + (size_t)m * ldy + n0, y + (size_t)m * ldy + n1, 0.f);
        return;
    }
    const int kNC = 128;  // rows of W per pass: 8 panels of 16
    const size_t panel = (size_t)(kBKC / 2) * kBNR;
    static thread_local AlignedVector<uint32_t> bq;  // panels read by 512-bit loads
    if (bq.size() < (size_t)(kNC / kBNR) * panel) bq.resize((size_t)(kNC / kBNR) * panel);
    for (int c0 = n0; c0 < n1; c0 += kNC) {
        const int nc = std::min(kNC, n1 - c0), npan = (nc + kBNR - 1) / kBNR;
        for (int k0 = 0; k0 < K; k0 += kBKC) {
            const int kc = std::min(kBKC, K - k0), np = (kc + 1) / 2;
            for (int p = 0; p < npan; p++)
                pack_bf16_pairs(bq.data() + p * panel, w, c0 + p * kBNR,
                                std::min(kBNR, nc - p * kBNR), k0, kc);
            const bool add = accumulate || k0 > 0;
            for (int m0 = 0; m0 < M; m0 += kBMR) {
                const int mr = std::min(kBMR, M - m0);
                const uint16_t* xa = xg + (size_t)m0 * 2 * P + (size_t)k0 * kBMR;
                for (int p = 0; p < npan; p += kBNP) {
                    float* ya = y + (size_t)m0 * ldy + c0 + p * kBNR;
                    const int ncols = nc - p * kBNR;
                    const uint32_t* b = bq.data() + p * panel;
                    switch (std::min(kBNP, npan - p)) {
                        case 4: ukernel_bf16<4>(np, xa, b, panel, ya, ldy, add, mr, ncols); break;
                        case 3: ukernel_bf16<3>(np, xa, b, panel, ya, ldy, add, mr, ncols); break;
                        case 2: ukernel_bf16<2>(np, xa, b, panel, ya, ldy, add, mr, ncols); break;
                        default: ukernel_bf16<1>(np, xa, b, panel, ya, ldy, add, mr, ncols);
                    }
                }
            }
        }
    }
}

// ---- decode -----------------------------------------------------------------------------------

// Four weight rows against one input row: 32 values per vector, the tail masked (whole pairs:
// the input's padding is zero, and a weight row's value past K is masked off).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void dot4_bf16(
    const uint16_t* x, const uint16_t* w, size_t rs, int K, float* out) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const uint16_t *w0 = w, *w1 = w + rs, *w2 = w + 2 * rs, *w3 = w + 3 * rs;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
        a0 = _mm512_dpbf16_ps(a0, xv, (__m512bh)_mm512_loadu_si512(w0 + k));
        a1 = _mm512_dpbf16_ps(a1, xv, (__m512bh)_mm512_loadu_si512(w1 + k));
        a2 = _mm512_dpbf16_ps(a2, xv, (__m512bh)_mm512_loadu_si512(w2 + k));
        a3 = _mm512_dpbf16_ps(a3, xv, (__m512bh)_mm512_loadu_si512(w3 + k));
    }
    if (k < K) {
        const __mmask32 m = (__mmask32)((1ull << (K - k)) - 1);
        const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, x + k);
        a0 = _mm512_dpbf16_ps(a0, xv, (__m512bh)_mm512_maskz_loadu_epi16(m, w0 + k));
        a1 = _mm512_dpbf16_ps(a1, xv, (__m512bh)_mm512_maskz_loadu_epi16(m, w1 + k));
        a2 = _mm512_dpbf16_ps(a2, xv, (__m512bh)_mm512_maskz_loadu_epi16(m, w2 + k));
        a3 = _mm512_dpbf16_ps(a3, xv, (__m512bh)_mm512_maskz_loadu_epi16(m, w3 + k));
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
}

void bf16_decode_rows(float* y, int ldy, const uint16_t* xb, const WeightView& w, int M,
                      bool accumulate, int n0, int n1) {
    const int K = (int)w.cols;
    const int64_t S = bf16_row_stride(K);
    const size_t rs = (size_t)K;  // uint16 per weight row
    const uint16_t* W = (const uint16_t*)w.data;
    for (int g = n0; g < n1; g += 4)
        for (int m = 0; m < M; m++) {
            float v[4] = {0, 0, 0, 0};
            const uint16_t* xm = xb + m * S;
            if (g + 4 <= n1) {
                dot4_bf16(xm, W + (size_t)g * rs, rs, K, v);
            } else {  // the last rows one at a time, each as the first of a group of four
                for (int r = 0; g + r < n1; r++) {
                    float t[4];
                    const uint16_t* wr = W + (size_t)(g + r) * rs;
                    dot4_bf16(xm, wr, 0, K, t);  // four times the same row: reads one
                    v[r] = t[0];
                }
            }
            for (int r = 0; r < 4 && g + r < n1; r++) {
                float& o = y[(size_t)m * ldy + g + r];
                o = accumulate ? o + v[r] : v[r];
            }
        }
}

// ---- reference --------------------------------------------------------------------------------

void bf16_gemm_ref(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                   bool accumulate) {
    const int N = (int)w.rows, K = (int)w.cols;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            const uint8_t* wr = w.row(n);
            double acc = 0;
            for (int k = 0; k < K; k++)
                acc += (double)bf16_bits_to_f32(bf16_bits_rne(x[(size_t)m * ldx + k])) *
                       bf16_bits_to_f32((uint16_t)ld_bf16(wr, k));
            float& o = y[(size_t)m * ldy + n];
            o = accumulate ? (float)(o + acc) : (float)acc;
        }
}

}  // namespace moe
