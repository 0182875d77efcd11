#include "kernels/attention.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/simd.h"
#include "moe/error.h"

namespace moe {

void attention_check(const AttnDims& a) {
    if (a.B < 1 || a.Sq < 1 || a.H < 1 || a.Hkv < 1 || a.hd < 1 || a.pos0 < 0)
        fail("attention: bad dims B={} Sq={} H={} Hkv={} hd={} pos0={}", a.B, a.Sq, a.H, a.Hkv,
             a.hd, a.pos0);
    if (a.H % a.Hkv != 0)
        fail("attention: n_kv_heads {} does not divide n_heads {}", a.Hkv, a.H);
    if (a.pos0 + a.Sq > a.Sk)
        fail("attention: queries at positions {}..{} need {} keys, got Sk={}", a.pos0,
             a.pos0 + a.Sq - 1, a.pos0 + a.Sq, a.Sk);
}

template <typename F>
void attention_forward_ref(F* y, int ldy, F* att, const F* q, int ldq, const F* k, int ldk,
                           const F* v, int ldv, const AttnDims& a) {
    attention_check(a);
    const int G = a.H / a.Hkv, hd = a.hd;
    const double scale = 1.0 / std::sqrt((double)hd);
    for (int b = 0; b < a.B; b++)
        for (int h = 0; h < a.H; h++) {
            int g = h / G;
            for (int s = 0; s < a.Sq; s++) {
                const F* qs = q + ((long)b * a.Sq + s) * ldq + (long)h * hd;
                F* p = att + (((long)b * a.H + h) * a.Sq + s) * a.Sk;
                int n = a.pos0 + s + 1;  // keys visible to this query
                double m = -INFINITY;
                std::vector<double> sc(n);
                for (int j = 0; j < n; j++) {
                    const F* kj = k + ((long)b * a.Sk + j) * ldk + (long)g * hd;
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += (double)qs[i] * kj[i];
                    sc[j] = dot * scale;
                    m = std::max(m, sc[j]);
                }
                double sum = 0;
                for (int j = 0; j < n; j++) sum += (sc[j] = std::exp(sc[j] - m));
                for (int j = 0; j < a.Sk; j++) p[j] = j < n ? (F)(sc[j] / sum) : (F)0;
                F* ys = y + ((long)b * a.Sq + s) * ldy + (long)h * hd;
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int j = 0; j < n; j++)
                        acc += (double)p[j] * v[((long)b * a.Sk + j) * ldv + (long)g * hd + i];
                    ys[i] = (F)acc;
                }
            }
        }
}

// With P = softmax(S), S = scale q k^T: dP_j = dy . v_j, dS_j = P_j (dP_j - sum_l P_l dP_l),
// dq = scale sum_j dS_j k_j, dk_j += scale dS_j q, dv_j += P_j dy.
template <typename F>
void attention_backward_ref(F* dq, F* dk, F* dv, const F* dy, int ldy, const F* att, const F* q,
                            int ldq, const F* k, int ldk, const F* v, int ldv, const AttnDims& a) {
    attention_check(a);
    const int G = a.H / a.Hkv, hd = a.hd;
    const double scale = 1.0 / std::sqrt((double)hd);
    for (int b = 0; b < a.B; b++)
        for (int j = 0; j < a.Sk; j++)
            for (int c = 0; c < a.Hkv * hd; c++) {
                dk[((long)b * a.Sk + j) * ldk + c] = 0;
                dv[((long)b * a.Sk + j) * ldv + c] = 0;
            }
    for (int b = 0; b < a.B; b++)
        for (int h = 0; h < a.H; h++) {
            int g = h / G;
            for (int s = 0; s < a.Sq; s++) {
                const F* p = att + (((long)b * a.H + h) * a.Sq + s) * a.Sk;
                const F* dys = dy + ((long)b * a.Sq + s) * ldy + (long)h * hd;
                const F* qs = q + ((long)b * a.Sq + s) * ldq + (long)h * hd;
                F* dqs = dq + ((long)b * a.Sq + s) * ldq + (long)h * hd;
                int n = a.pos0 + s + 1;
                std::vector<double> dp(n);
                double sum = 0;
                for (int j = 0; j < n; j++) {
                    const F* vj = v + ((long)b * a.Sk + j) * ldv + (long)g * hd;
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += (double)dys[i] * vj[i];
                    dp[j] = dot;
                    sum += (double)p[j] * dot;
                }
                std::vector<double> dqa(hd, 0.0);
                for (int j = 0; j < n; j++) {
                    double ds = (double)p[j] * (dp[j] - sum) * scale;
                    const F* kj = k + ((long)b * a.Sk + j) * ldk + (long)g * hd;
                    F* dkj = dk + ((long)b * a.Sk + j) * ldk + (long)g * hd;
                    F* dvj = dv + ((long)b * a.Sk + j) * ldv + (long)g * hd;
                    for (int i = 0; i < hd; i++) {
                        dqa[i] += ds * kj[i];
                        dkj[i] += (F)(ds * qs[i]);
                        dvj[i] += (F)((double)p[j] * dys[i]);
                    }
                }
                for (int i = 0; i < hd; i++) dqs[i] = (F)dqa[i];
            }
        }
}

#define INST(F)                                                                                 \
    template void attention_forward_ref<F>(F*, int, F*, const F*, int, const F*, int, const F*, \
                                           int, const AttnDims&);                               \
    template void attention_backward_ref<F>(F*, F*, F*, const F*, int, const F*, const F*, int, \
                                            const F*, int, const F*, int, const AttnDims&);
INST(float)
INST(double)
#undef INST

// ---------------------------------------------------------------------------------------------
// Fast path. At the model's shapes (S = 64, hd = 32) a (batch, head) pair is ~0.3 MFLOP, so
// per-call BLAS overheads and the masked upper triangle would dominate: instead direct loops that
// touch only the causal part, laid out so every inner loop runs over contiguous memory and
// vectorises (scores over keys against a transposed K, outputs over the head dimension), compiled
// for AVX-512, AVX2 and the baseline and picked at load time (target_clones). exp is a polynomial
// (no libm call) so the softmax vectorises too.

#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vector types in inlined helpers only
#define MOE_ATTN_CLONES MOE_SIMD_CLONES

namespace {

// e^x for x <= 0 (softmax arguments after max subtraction): 2^n * p(r), n = round(x / ln2),
// r in [-ln2/2, ln2/2], degree-6 Taylor polynomial, relative error ~2e-7. Written so GCC 12
// vectorises it: the clamp to -87 is an unsigned min on the bits (for x <= 0 a larger magnitude
// is a larger bit pattern), rounding is a truncation of x/ln2 - 0.5 (x <= 0), and the 2^n scale
// is built with bit_cast; a float select or std::floor in the loop stops vectorisation.
__attribute__((always_inline)) inline float exp_neg(float x) {
    const uint32_t xb = __builtin_bit_cast(uint32_t, x);
    const uint32_t lo = __builtin_bit_cast(uint32_t, -87.f);
    x = __builtin_bit_cast(float, xb < lo ? xb : lo);
    const int32_t ni = (int32_t)(x * 1.44269504088896341f - 0.5f);
    const float n = (float)ni;
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
    float p = 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    // unsigned shift: for a NaN input (a poisoned model; the trainer then reports the NaN loss)
    // ni is INT_MIN and a signed shift of it would be undefined behaviour
    return p * __builtin_bit_cast(float, (uint32_t)(ni + 127) << 23);
}

// kT [hd, Sk] = transpose of the Sk rows (stride ld) of one kv head.
MOE_ATTN_CLONES void transpose_head(float* kT, const float* k, int ld, int Sk, int hd) {
    for (int j = 0; j < Sk; j++)
        for (int i = 0; i < hd; i++) kT[(long)i * Sk + j] = k[(long)j * ld + i];
}

// One (batch, head): p [Sq, Sk] probabilities, y rows (stride ldy).
MOE_ATTN_CLONES void head_forward(float* y, int ldy, float* p, const float* q, int ldq,
                                  const float* kT, const float* v, int ldv, int Sq, int Sk,
                                  int hd, int pos0, float scale) {
    for (int s = 0; s < Sq; s++) {
        const float* qs = q + (long)s * ldq;
        float* row = p + (long)s * Sk;
        const int n = pos0 + s + 1;
        for (int j = 0; j < n; j++) row[j] = 0.f;
        for (int i = 0; i < hd; i++) {
            const float qi = qs[i] * scale;
            const float* kr = kT + (long)i * Sk;
            for (int j = 0; j < n; j++) row[j] += qi * kr[j];
        }
        float m = row[0];
        for (int j = 1; j < n; j++) m = row[j] > m ? row[j] : m;
        // exp and sum in separate loops: a float sum in the exp loop would stop it vectorising
        for (int j = 0; j < n; j++) row[j] = exp_neg(row[j] - m);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) sum += row[j];
        const float inv = 1.f / sum;
        for (int j = 0; j < n; j++) row[j] *= inv;
        for (int j = n; j < Sk; j++) row[j] = 0.f;
        float* ys = y + (long)s * ldy;
        for (int i = 0; i < hd; i++) ys[i] = 0.f;
        for (int j = 0; j < n; j++) {
            const float pj = row[j];
            const float* vj = v + (long)j * ldv;
            for (int i = 0; i < hd; i++) ys[i] += pj * vj[i];
        }
    }
}

// One (batch, query head) into its kv head's dk, dv (accumulated) and its own dq (overwritten).
// vT [hd, Sk], dp scratch [Sk].
MOE_ATTN_CLONES void head_backward(float* dq, int ldq, float* dk, int ldk, float* dv, int ldv,
                                   const float* dy, int ldy, const float* p, const float* q,
                                   const float* k, const float* vT, float* dp, int Sq, int Sk,
                                   int hd, int pos0, float scale) {
    for (int s = 0; s < Sq; s++) {
        const float* pr = p + (long)s * Sk;
        const float* dys = dy + (long)s * ldy;
        const float* qs = q + (long)s * ldq;
        const int n = pos0 + s + 1;
        // dv_j += P_sj dy_s ; dP_sj = dy_s . v_j
        for (int j = 0; j < n; j++) {
            const float pj = pr[j];
            float* dvj = dv + (long)j * ldv;
            for (int i = 0; i < hd; i++) dvj[i] += pj * dys[i];
        }
        for (int j = 0; j < n; j++) dp[j] = 0.f;
        for (int i = 0; i < hd; i++) {
            const float di = dys[i];
            const float* vr = vT + (long)i * Sk;
            for (int j = 0; j < n; j++) dp[j] += di * vr[j];
        }
        float sum = 0.f;
        for (int j = 0; j < n; j++) sum += pr[j] * dp[j];
        for (int j = 0; j < n; j++) dp[j] = pr[j] * (dp[j] - sum) * scale;
        // dq_s = sum_j dS_sj k_j ; dk_j += dS_sj q_s
        float* dqs = dq + (long)s * ldq;
        for (int i = 0; i < hd; i++) dqs[i] = 0.f;
        for (int j = 0; j < n; j++) {
            const float dsj = dp[j];
            const float* kj = k + (long)j * ldk;
            float* dkj = dk + (long)j * ldk;
            for (int i = 0; i < hd; i++) {
                dqs[i] += dsj * kj[i];
                dkj[i] += dsj * qs[i];
            }
        }
    }
}


// Specialised for a compile-time head width HD (16, 32, 64, 128), with blocks of 16 floats held
// as two 8-float GCC vectors (one ymm each under AVX2 and AVX-512): per-query and per-key
// accumulators of HD floats stay in registers, and scores are computed 16 keys at a time against
// kT padded to Skp (a multiple of 16, zero-filled), so no loop has a ragged tail. (Plain loops
// over float acc[16] came out as 16 scalar FMAs; a single 64-byte vector type was kept in
// registers only by the AVX-512 clone: the AVX2 clone moved it through the stack in 16-byte
// pieces, 3-5x slower, measured with perf on an AVX2 machine.)
constexpr int KB = 16;
typedef float v8f __attribute__((vector_size(32)));
struct v16f {
    v8f lo, hi;
};
__attribute__((always_inline)) inline v16f& operator+=(v16f& a, const v16f& b) {
    a.lo += b.lo;
    a.hi += b.hi;
    return a;
}
__attribute__((always_inline)) inline v16f operator+(v16f a, const v16f& b) { return a += b; }
__attribute__((always_inline)) inline v16f operator*(float s, const v16f& b) {
    return {s * b.lo, s * b.hi};
}
__attribute__((always_inline)) inline v16f load16(const float* p) {
    v16f v;
    __builtin_memcpy(&v.lo, p, sizeof v.lo);
    __builtin_memcpy(&v.hi, p + 8, sizeof v.hi);
    return v;
}
__attribute__((always_inline)) inline void store16(float* p, const v16f& v) {
    __builtin_memcpy(p, &v.lo, sizeof v.lo);
    __builtin_memcpy(p + 8, &v.hi, sizeof v.hi);
}

// Dot products of w [HD] with the 16 columns j0.. of T [HD, Skp] (a0) and, when two, with the
// next 16 as well (a1): two blocks per pass keep four independent FMA chains (one block is bound
// by the FMA latency). Scores of the forward, dP of the backward.
template <int HD>
__attribute__((always_inline)) inline void block_dots(const float* w, const float* T, int Skp,
                                                      int j0, bool two, v16f& a0, v16f& a1) {
    a0 = v16f{};
    a1 = v16f{};
    if (two) {
        for (int i = 0; i < HD; i++) {
            a0 += w[i] * load16(T + (long)i * Skp + j0);
            a1 += w[i] * load16(T + (long)i * Skp + j0 + KB);
        }
    } else {
        for (int i = 0; i < HD; i++) a0 += w[i] * load16(T + (long)i * Skp + j0);
    }
}

template <int HD>
__attribute__((always_inline)) inline void head_forward_hd(float* y, int ldy, float* p,
                                                           const float* q, int ldq, const float* kT,
                                                           int Skp, const float* v, int ldv,
                                                           int Sq, int Sk, int pos0, float scale) {
    constexpr int NC = HD / KB;
    for (int s = 0; s < Sq; s++) {
        const float* qs = q + (long)s * ldq;
        float* row = p + (long)s * Sk;
        const int n = pos0 + s + 1;
        float qv[HD];
        for (int i = 0; i < HD; i++) qv[i] = qs[i] * scale;
        float m = -INFINITY;
        auto emit = [&](const v16f& acc, int j0) {
            float tmp[KB];
            store16(tmp, acc);
            const int w = n - j0 < KB ? n - j0 : KB;
            for (int jj = 0; jj < w; jj++) {
                row[j0 + jj] = tmp[jj];
                m = tmp[jj] > m ? tmp[jj] : m;
            }
        };
        for (int j0 = 0; j0 < n; j0 += 2 * KB) {  // the second block only when it holds keys
            v16f a0, a1;
            const bool two = j0 + KB < n;
            block_dots<HD>(qv, kT, Skp, j0, two, a0, a1);
            emit(a0, j0);
            if (two) emit(a1, j0 + KB);
        }
        for (int j = 0; j < n; j++) row[j] = exp_neg(row[j] - m);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) sum += row[j];
        const float inv = 1.f / sum;
        for (int j = 0; j < n; j++) row[j] *= inv;
        for (int j = n; j < Sk; j++) row[j] = 0.f;
        v16f acc[NC] = {};
        for (int j = 0; j < n; j++) {
            const float pj = row[j];
            const float* vj = v + (long)j * ldv;
            for (int c = 0; c < NC; c++) acc[c] += pj * load16(vj + c * KB);
        }
        float* ys = y + (long)s * ldy;
        for (int c = 0; c < NC; c++) store16(ys + c * KB, acc[c]);
    }
}

// dS [Sq, Sk] scratch; vT [HD, Skp] zero-padded. Query pass: dS rows and dq. Key pass: each
// key's dk, dv summed over the queries that see it, then added to the kv head's rows.
template <int HD>
__attribute__((always_inline)) inline void head_backward_hd(
    float* dq, int ldq, float* dk, int ldk, float* dv, int ldv, const float* dy, int ldy,
    const float* p, const float* q, const float* k, const float* vT, int Skp, float* dS, int Sq,
    int Sk, int pos0, float scale) {
    constexpr int NC = HD / KB;
    for (int s = 0; s < Sq; s++) {
        const float* pr = p + (long)s * Sk;
        const float* dys = dy + (long)s * ldy;
        float* dr = dS + (long)s * Sk;
        const int n = pos0 + s + 1;
        float dyv[HD];
        for (int i = 0; i < HD; i++) dyv[i] = dys[i];
        float sum = 0.f;
        auto emit = [&](const v16f& acc, int j0) {
            float tmp[KB];
            store16(tmp, acc);
            const int w = n - j0 < KB ? n - j0 : KB;
            for (int jj = 0; jj < w; jj++) {
                dr[j0 + jj] = tmp[jj];
                sum += pr[j0 + jj] * tmp[jj];
            }
        };
        for (int j0 = 0; j0 < n; j0 += 2 * KB) {
            v16f a0, a1;
            const bool two = j0 + KB < n;
            block_dots<HD>(dyv, vT, Skp, j0, two, a0, a1);
            emit(a0, j0);
            if (two) emit(a1, j0 + KB);
        }
        for (int j = 0; j < n; j++) dr[j] = pr[j] * (dr[j] - sum) * scale;
        v16f dqa[NC] = {};
        for (int j = 0; j < n; j++) {
            const float dsj = dr[j];
            const float* kj = k + (long)j * ldk;
            for (int c = 0; c < NC; c++) dqa[c] += dsj * load16(kj + c * KB);
        }
        float* dqs = dq + (long)s * ldq;
        for (int c = 0; c < NC; c++) store16(dqs + c * KB, dqa[c]);
    }
    for (int j = 0; j < Sk; j++) {
        v16f dka[NC] = {}, dva[NC] = {};
        const int s0 = j - pos0 > 0 ? j - pos0 : 0;  // first query that sees key j
        for (int s = s0; s < Sq; s++) {
            const float pj = p[(long)s * Sk + j], dsj = dS[(long)s * Sk + j];
            const float* dys = dy + (long)s * ldy;
            const float* qs = q + (long)s * ldq;
            for (int c = 0; c < NC; c++) {
                dva[c] += pj * load16(dys + c * KB);
                dka[c] += dsj * load16(qs + c * KB);
            }
        }
        float* dkj = dk + (long)j * ldk;
        float* dvj = dv + (long)j * ldv;
        for (int c = 0; c < NC; c++) {
            store16(dkj + c * KB, load16(dkj + c * KB) + dka[c]);
            store16(dvj + c * KB, load16(dvj + c * KB) + dva[c]);
        }
    }
}

// kT [hd, Skp] with the columns Sk..Skp-1 zero.
MOE_ATTN_CLONES void transpose_head_padded(float* kT, int Skp, const float* k, int ld, int Sk,
                                           int hd) {
    for (int i = 0; i < hd; i++)
        for (int j = Sk; j < Skp; j++) kT[(long)i * Skp + j] = 0.f;
    for (int j = 0; j < Sk; j++)
        for (int i = 0; i < hd; i++) kT[(long)i * Skp + j] = k[(long)j * ld + i];
}

#define MOE_ATTN_SPECIALISE(HD)                                                                  \
    MOE_ATTN_CLONES void head_forward_##HD(float* y, int ldy, float* p, const float* q, int ldq, \
                                           const float* kT, int Skp, const float* v, int ldv,    \
                                           int Sq, int Sk, int pos0, float scale) {              \
        head_forward_hd<HD>(y, ldy, p, q, ldq, kT, Skp, v, ldv, Sq, Sk, pos0, scale);            \
    }                                                                                            \
    MOE_ATTN_CLONES void head_backward_##HD(                                                     \
        float* dq, int ldq, float* dk, int ldk, float* dv, int ldv, const float* dy, int ldy,    \
        const float* p, const float* q, const float* k, const float* vT, int Skp, float* dS,     \
        int Sq, int Sk, int pos0, float scale) {                                                 \
        head_backward_hd<HD>(dq, ldq, dk, ldk, dv, ldv, dy, ldy, p, q, k, vT, Skp, dS, Sq, Sk,   \
                             pos0, scale);                                                       \
    }
MOE_ATTN_SPECIALISE(16)
MOE_ATTN_SPECIALISE(32)
MOE_ATTN_SPECIALISE(64)
MOE_ATTN_SPECIALISE(128)
#undef MOE_ATTN_SPECIALISE

using HeadForwardFn = void (*)(float*, int, float*, const float*, int, const float*, int,
                               const float*, int, int, int, int, float);
using HeadBackwardFn = void (*)(float*, int, float*, int, float*, int, const float*, int,
                                const float*, const float*, const float*, const float*, int,
                                float*, int, int, int, float);
HeadForwardFn pick_forward(int hd) {
    switch (hd) {
        case 16: return head_forward_16;
        case 32: return head_forward_32;
        case 64: return head_forward_64;
        case 128: return head_forward_128;
        default: return nullptr;
    }
}
HeadBackwardFn pick_backward(int hd) {
    switch (hd) {
        case 16: return head_backward_16;
        case 32: return head_backward_32;
        case 64: return head_backward_64;
        case 128: return head_backward_128;
        default: return nullptr;
    }
}

}  // namespace

// One (batch, head) pair per task; heads are independent, so any thread count gives the same bits.
void attention_forward(float* y, int ldy, float* att, const float* q, int ldq, const float* k,
                       int ldk, const float* v, int ldv, const AttnDims& a) {
    attention_check(a);
    const int G = a.H / a.Hkv, hd = a.hd, Sq = a.Sq, Sk = a.Sk;
    const int Skp = (Sk + KB - 1) / KB * KB;
    const float scale = 1.f / std::sqrt((float)hd);
    const int n_tasks = a.B * a.H;
    const HeadForwardFn fast = pick_forward(hd);
    static thread_local std::vector<float> kT_buf;
#pragma omp parallel for schedule(static) if (n_tasks > 1 && (long)n_tasks * Sq * Sk * hd >= 65536)
    for (int task = 0; task < n_tasks; task++) {
        int b = task / a.H, h = task % a.H, g = h / G;
        if (kT_buf.size() < (size_t)hd * Skp) kT_buf.resize((size_t)hd * Skp);
        const float* kb = k + (long)b * Sk * ldk + (long)g * hd;
        const float* qb = q + (long)b * Sq * ldq + (long)h * hd;
        const float* vb = v + (long)b * Sk * ldv + (long)g * hd;
        float* yb = y + (long)b * Sq * ldy + (long)h * hd;
        float* p = att + (long)task * Sq * Sk;
        if (fast) {
            transpose_head_padded(kT_buf.data(), Skp, kb, ldk, Sk, hd);
            fast(yb, ldy, p, qb, ldq, kT_buf.data(), Skp, vb, ldv, Sq, Sk, a.pos0, scale);
        } else {
            transpose_head(kT_buf.data(), kb, ldk, Sk, hd);
            head_forward(yb, ldy, p, qb, ldq, kT_buf.data(), vb, ldv, Sq, Sk, hd, a.pos0, scale);
        }
    }
}

// One (batch, kv head) pair per task: the G query heads sharing a kv head accumulate into its
// dk, dv in head order, so no two threads write the same rows (deterministic, no atomics).
void attention_backward(float* dq, float* dk, float* dv, const float* dy, int ldy,
                        const float* att, const float* q, int ldq, const float* k, int ldk,
                        const float* v, int ldv, const AttnDims& a) {
    attention_check(a);
    const int G = a.H / a.Hkv, hd = a.hd, Sq = a.Sq, Sk = a.Sk;
    const int Skp = (Sk + KB - 1) / KB * KB;
    const float scale = 1.f / std::sqrt((float)hd);
    const int n_tasks = a.B * a.Hkv;
    const HeadBackwardFn fast = pick_backward(hd);
    static thread_local std::vector<float> buf;
#pragma omp parallel for schedule(static) if (n_tasks > 1 && (long)n_tasks * Sq * Sk * hd >= 65536)
    for (int task = 0; task < n_tasks; task++) {
        int b = task / a.Hkv, g = task % a.Hkv;
        const size_t need = (size_t)hd * Skp + (size_t)Sq * Sk + Sk;
        if (buf.size() < need) buf.resize(need);
        float* vT = buf.data();
        float* dS = vT + (size_t)hd * Skp;  // fast path: [Sq, Sk]; generic: dp [Sk]
        const float* kb = k + (long)b * Sk * ldk + (long)g * hd;
        const float* vb = v + (long)b * Sk * ldv + (long)g * hd;
        float* dkb = dk + (long)b * Sk * ldk + (long)g * hd;
        float* dvb = dv + (long)b * Sk * ldv + (long)g * hd;
        for (int j = 0; j < Sk; j++)
            for (int i = 0; i < hd; i++) dkb[(long)j * ldk + i] = dvb[(long)j * ldv + i] = 0.f;
        if (fast)
            transpose_head_padded(vT, Skp, vb, ldv, Sk, hd);
        else
            transpose_head(vT, vb, ldv, Sk, hd);
        for (int h = g * G; h < (g + 1) * G; h++) {
            float* dqb = dq + (long)b * Sq * ldq + (long)h * hd;
            const float* dyb = dy + (long)b * Sq * ldy + (long)h * hd;
            const float* p = att + ((long)b * a.H + h) * Sq * Sk;
            const float* qb = q + (long)b * Sq * ldq + (long)h * hd;
            if (fast)
                fast(dqb, ldq, dkb, ldk, dvb, ldv, dyb, ldy, p, qb, kb, vT, Skp, dS, Sq, Sk, a.pos0,
                     scale);
            else
                head_backward(dqb, ldq, dkb, ldk, dvb, ldv, dyb, ldy, p, qb, kb, vT, dS, Sq, Sk, hd,
                              a.pos0, scale);
        }
    }
}

}  // namespace moe
