#include "kernels/q8_gemm.h"

#include "core/aligned_vector.h"
#include "kernels/transpose_avx2.h"

// GCC 12 warns about the "undefined" register its own AVX-512 intrinsics start from.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/typed_gemm.h"

namespace moe {

// ---- the format -------------------------------------------------------------------------------

uint16_t quantize_block_q8_0(const float* x, int8_t* q) {
    float amax = 0;
    for (int i = 0; i < kQ8Block; i++) amax = std::fmax(amax, std::fabs(x[i]));
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    // |x * id| <= 127 up to rounding, so round() stays in [-127, 127]
    for (int i = 0; i < kQ8Block; i++) q[i] = (int8_t)std::round(x[i] * id);
    return f32_to_f16(d);
}

void quantize_row_q8_0(const float* x, int64_t k, void* out) {
    uint8_t* o = (uint8_t*)out;
    for (int64_t b = 0; b < k / kQ8Block; b++, o += kQ8BlockBytes) {
        const uint16_t d = quantize_block_q8_0(x + b * kQ8Block, (int8_t*)(o + 2));
        std::memcpy(o, &d, 2);
    }
}

void dequantize_row_q8_0(const void* in, int64_t k, float* out) {
    const uint8_t* p = (const uint8_t*)in;
    for (int64_t b = 0; b < k / kQ8Block; b++, p += kQ8BlockBytes) {
        uint16_t h;
        std::memcpy(&h, p, 2);
        const float d = f16_to_f32(h);
        const int8_t* q = (const int8_t*)(p + 2);
        for (int i = 0; i < kQ8Block; i++) out[b * kQ8Block + i] = d * (float)q[i];
    }
}

void ggml_blocks_to_split(WType t, uint8_t* p, int64_t rows, int64_t k) {
    const int64_t nb = k / kQ8Block;
    const size_t bb = t == WType::q4_0 ? kQ4BlockBytes : kQ8BlockBytes, qb = bb - 2;
    const size_t bytes = (size_t)rows * (size_t)nb * bb;
    std::vector<uint8_t> blocks(p, p + bytes);
    uint8_t* q = p;
    uint8_t* d = p + (size_t)rows * (size_t)nb * qb;
#pragma omp parallel for schedule(static) if (bytes >= ((size_t)1 << 20))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            const size_t i = (size_t)r * nb + b;
            std::memcpy(d + i * 2, &blocks[i * bb], 2);
            std::memcpy(q + i * qb, &blocks[i * bb + 2], qb);
        }
}

// Q4_0, from GGML's definition (see q8_gemm.h). The first value of largest |x| sets d (strict >,
// so the first of equal magnitudes wins, as in GGML); x * id + 8.5 truncated as an int8, then
// clamped to 15 (x * id is in [-8, 8] up to rounding, so the sum lies in [0.5, 16.5]).
uint16_t quantize_block_q4_0(const float* x, uint8_t* qs) {
    float amax = 0, m = 0;
    for (int i = 0; i < kQ8Block; i++)
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            m = x[i];
        }
    const float d = m / -8.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    for (int j = 0; j < kQ8Block / 2; j++) {
        const int q0 = std::min(15, (int)(int8_t)(x[j] * id + 8.5f));
        const int q1 = std::min(15, (int)(int8_t)(x[j + 16] * id + 8.5f));
        qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
    return f32_to_f16(d);
}

void quantize_row_q4_0(const float* x, int64_t k, void* out) {
    uint8_t* o = (uint8_t*)out;
    for (int64_t b = 0; b < k / kQ8Block; b++, o += kQ4BlockBytes) {
        const uint16_t d = quantize_block_q4_0(x + b * kQ8Block, o + 2);
        std::memcpy(o, &d, 2);
    }
}

// Value i of a Q4_0 block's nibbles qs, as the int8 q_i - 8 in [-8, 7].
static inline int8_t q4_value(const uint8_t* qs, int i) {
    return (int8_t)((i < 16 ? qs[i] & 15 : qs[i - 16] >> 4) - 8);
}

void dequantize_row_q4_0(const void* in, int64_t k, float* out) {
    const uint8_t* p = (const uint8_t*)in;
    for (int64_t b = 0; b < k / kQ8Block; b++, p += kQ4BlockBytes) {
        uint16_t h;
        std::memcpy(&h, p, 2);
        const float d = f16_to_f32(h);
        for (int i = 0; i < kQ8Block; i++) out[b * kQ8Block + i] = d * (float)q4_value(p + 2, i);
    }
}

uint16_t Q8Rows::scale_bits(int64_t r, int64_t b) const {
    uint16_t h;
    std::memcpy(&h, d + (size_t)r * d_row + (size_t)b * d_blk, 2);
    return h;
}

Q8Rows q8_rows(const WeightView& w) {
    Q8Rows r;
    const size_t nb = (size_t)(w.cols / kQ8Block);
    if (w.scales) {  // split: int8 [rows, cols] (Q4_0: nibbles [rows, cols / 2]), fp16 [rows, cols / 32]
        const size_t qb = w.type == WType::q4_0 ? kQ8Block / 2 : kQ8Block;
        r.q = (const uint8_t*)w.data;
        r.q_row = nb * qb;
        r.q_blk = qb;
        r.d = (const uint8_t*)w.scales;
        r.d_row = nb * 2;
        r.d_blk = 2;
    } else {  // GGML blocks {d, q[32]} (Q4_0: {d, qs[16]})
        const size_t bb = w.type == WType::q4_0 ? kQ4BlockBytes : kQ8BlockBytes;
        r.d = (const uint8_t*)w.data;
        r.q = r.d + 2;
        r.q_row = r.d_row = nb * bb;
        r.q_blk = r.d_blk = bb;
    }
    return r;
}

void q8_widen_rows(float* out, const WeightView& w, int64_t r0, int64_t n) {
    const Q8Rows R = q8_rows(w);
    const int64_t nb = w.cols / kQ8Block;
    if (w.type == WType::q4_0) {
        for (int64_t r = 0; r < n; r++)
            for (int64_t b = 0; b < nb; b++) {
                const float d = f16_to_f32(R.scale_bits(r0 + r, b));
                const uint8_t* qs = (const uint8_t*)R.qs(r0 + r, b);
                float* o = out + r * w.cols + b * kQ8Block;
                for (int i = 0; i < kQ8Block; i++) o[i] = d * (float)q4_value(qs, i);
            }
        return;
    }
    for (int64_t r = 0; r < n; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float d = f16_to_f32(R.scale_bits(r0 + r, b));
            const int8_t* q = R.qs(r0 + r, b);
            float* o = out + r * w.cols + b * kQ8Block;
            for (int i = 0; i < kQ8Block; i++) o[i] = d * (float)q[i];
        }
}

// ---- the activation side ----------------------------------------------------------------------

// As the weights, but the scale stays fp32 (it never goes to a file). The plain loop is the
// reference; the AVX2 one computes the same bits (the same max, the same d = amax / 127 and
// 1 / d in scalar, the same x * id products, rounding half away from zero as std::round does),
// so decode and prefill round alike on every CPU.
void q8_quantize_activation_ref(const float* x, int64_t k, int8_t* qx, float* dx) {
    for (int64_t b = 0; b < k / kQ8Block; b++) {
        const float* xb = x + b * kQ8Block;
        float amax = 0;
        for (int i = 0; i < kQ8Block; i++) amax = std::fmax(amax, std::fabs(xb[i]));
        const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
        for (int i = 0; i < kQ8Block; i++) qx[b * kQ8Block + i] = (int8_t)std::round(xb[i] * id);
        dx[b] = d;
    }
}

__attribute__((target("avx2,fma"))) static void quantize_activation_avx2(const float* x, int64_t k,
                                                                      int8_t* qx, float* dx) {
    const __m256 sign = _mm256_set1_ps(-0.f), half = _mm256_set1_ps(0.5f),
                 one = _mm256_set1_ps(1.f);
    for (int64_t b = 0; b < k / kQ8Block; b++) {
        const float* xb = x + b * kQ8Block;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            // max(|x|, m): maxps returns its second operand when one is NaN, so a NaN input
            // is skipped as std::fmax skips it (what it then rounds to is undefined either way)
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v[j]), m);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q32[4];
        for (int j = 0; j < 4; j++) {
            const __m256 y = _mm256_mul_ps(v[j], vid);
            // round half away from zero: truncate, then step away from zero when the dropped
            // fraction is at least one half (y - trunc(y) is exact)
            const __m256 t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(y, t));
            const __m256 step = _mm256_or_ps(_mm256_and_ps(y, sign), one);  // +-1 with y's sign
            const __m256 r = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), step));
            q32[j] = _mm256_cvtps_epi32(r);  // an integer already: exact
        }
        // 32 int32 in [-127, 127] -> 32 int8 in order (packs work per 128-bit lane: permute back)
        const __m256i p01 = _mm256_packs_epi32(q32[0], q32[1]), p23 = _mm256_packs_epi32(q32[2], q32[3]);
        const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i*)(qx + b * kQ8Block), p);
        dx[b] = d;
    }
}

void q8_quantize_activation(const float* x, int64_t k, int8_t* qx, float* dx) {
    if (wgemm_isa() != WIsa::scalar) return quantize_activation_avx2(x, k, qx, dx);
    q8_quantize_activation_ref(x, k, qx, dx);
}

void q8_round_activation_rows(float* out, int64_t ldo, const float* x, int64_t ldx, int M,
                              int64_t k) {
    // rows are independent: threads change nothing but the time
#pragma omp parallel for schedule(static) if ((int64_t)M * k >= (1 << 16))
    for (int m = 0; m < M; m++) {
        int8_t q[kQ8Block];
        float dx;
        for (int64_t b = 0; b < k / kQ8Block; b++) {
            q8_quantize_activation(x + m * ldx + b * kQ8Block, kQ8Block, q, &dx);
            for (int i = 0; i < kQ8Block; i++) out[m * ldo + b * kQ8Block + i] = dx * (float)q[i];
        }
    }
}

// ---- one row's dot product ------------------------------------------------------------------

// Value i of block b of row r as an int8: the stored q (Q8_0) or q_i - 8 (Q4_0).
template <bool Q4>
static inline int8_t q_at(const Q8Rows& w, int64_t r, int64_t b, int i) {
    if constexpr (Q4) return q4_value((const uint8_t*)w.qs(r, b), i);
    return w.qs(r, b)[i];
}

// Integer sum per block (exact), then the block's two scales in fp32.
// Blocks b0 .. b1 - 1.
template <bool Q4>
static float dot_scalar(const Q8Rows& w, int64_t r, const int8_t* qx, const float* dx, int64_t b0,
                        int64_t b1) {
    float acc = 0;
    for (int64_t b = b0; b < b1; b++) {
        const int8_t* a = qx + b * kQ8Block;
        int32_t s = 0;
        for (int i = 0; i < kQ8Block; i++) s += (int32_t)q_at<Q4>(w, r, b, i) * (int32_t)a[i];
        acc += f16_to_f32(w.scale_bits(r, b)) * dx[b] * (float)s;
    }
    return acc;
}

// Decode reads each weight row once, front to back, and the rows of a piece follow each other in
// memory: one stream per thread. The hardware prefetcher alone kept it at 13-14 GB/s on one
// thread here (the loads of the weights stalled; perf put half the kernel's samples on them);
// asking for the line 2 KB ahead every two blocks reads 17-20 GB/s (bench_q8_dot, 14336 x 4096,
// three rounds; 512 bytes ahead: 14-15, 1 KB: 16-19). 4 KB: m795 decode (2 threads, split
// layout) +2-7% at q8_0 (two sets of adjacent pairs) and +5.5% at q4_0 over 2 KB; 8 KB the same
// as 4 (session 11). A core here reads ~11 GB/s at ~200 ns from memory: ~2 KB in flight, so
// 2 KB ahead left no slack.
static const int kQ8PrefetchBytes = 4096;

// The tail of every eight-block decode loop below: lanes 2i and 2i + 1 of t added into lane i
// (i < 8: the eight block sums), then acc += sums * d_w * dx (the eight fp16 scales side by side
// at d16), and at the end the eight lanes of acc added in one fixed order.
__attribute__((target("avx2,fma,f16c,avx512f"))) static inline __m256i pair_sums8(__m512i t) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return _mm512_castsi512_si256(
        _mm512_add_epi32(_mm512_permutexvar_epi32(ev, t), _mm512_permutexvar_epi32(od, t)));
}
__attribute__((target("avx2,fma,f16c"))) static inline __m256 add_scaled8(__m256 acc, __m256i v,
                                                                         const uint8_t* d16,
                                                                         const float* dx) {
    const __m256 sc = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)d16)),
                                    _mm256_loadu_ps(dx));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), sc, acc);
}
__attribute__((target("avx2,fma,f16c"))) static inline float hsum8(__m256 acc) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
}

// Eight blocks at a time (AVX2, and AVX-512 VNNI with dpbusd for maddubs + madd): each block's
// integer sum as eight int32 lanes, the eight blocks reduced into one vector (lane j = block
// b + j) by a tree of hadds, then one convert and one FMA with the eight blocks' scales
// d_w * dx, loaded as a vector (the fp16 d's by one gather in GGML's 34-byte blocks, one load
// in the split layout). A loop over single blocks spent ~20 instructions per 34-byte block, most
// on its scalar scale (load, convert, multiply, broadcast), and read only ~10-13 GB/s on one
// thread even from L2 (bench_q8_dot, session 8's Intel machine): compute-bound; this loop reads
// 16-20 GB/s there. Each block's product isum * (d_w * dx) is the same; lane j sums the blocks
// j, j + 8, ... and the lanes are added at the end.
// both multiply unsigned by signed bytes: |w| and a with w's sign (pairs in maddubs sum to at
// most 2 * 128 * 127 < 32768: no saturation; dpbusd's four per lane fit int32)
__attribute__((target("avx2,fma,f16c"))) static inline __m256i block_isum_avx2(const int8_t* q,
                                                                             const int8_t* a,
                                                                             __m256i ones) {
    const __m256i qw = _mm256_loadu_si256((const __m256i*)q);
    const __m256i qa = _mm256_loadu_si256((const __m256i*)a);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qa, qw)),
                             ones);
}

__attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni"))) static inline __m256i block_isum_vnni(
    const int8_t* q, const int8_t* a, __m256i) {
    const __m256i qw = _mm256_loadu_si256((const __m256i*)q);
    const __m256i qa = _mm256_loadu_si256((const __m256i*)a);
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(qw, qw),
                               _mm256_sign_epi8(qa, qw));
}

// Q4_0 runs the same loop (Q4 true): BLOCK_ISUM gives sum_i q_i * qx_i with the nibbles q_i in
// 0..15, and after the reduction 8 * sum_i qx_i of each block (sx8, once per input row) comes off
// each lane: the integers of (q_i - 8) * qx_i, exactly.
#define MOE_DOT_G8_BODY(BLOCK_ISUM, Q4, SX8)                                                      \
    const uint8_t* q = w.q + (size_t)r * w.q_row;                                                  \
    const uint8_t* d = w.d + (size_t)r * w.d_row;                                                  \
    const size_t qb = w.q_blk, db = w.d_blk;                                                       \
    const __m256i ones = _mm256_set1_epi16(1);                                                     \
    const __m256i gidx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),            \
                                            _mm256_set1_epi32((int)db));                          \
    __m256 acc = _mm256_setzero_ps();                                                              \
    int64_t b = 0;                                                                                 \
    for (; b + 8 <= nb; b += 8) {                                                                  \
        const uint8_t* qg = q + b * qb;                                                            \
        for (size_t o = 0; o < 8 * qb; o += 64)                                                    \
            _mm_prefetch((const char*)qg + kQ8PrefetchBytes + o, _MM_HINT_T0);                     \
        const int8_t* ag = qx + b * kQ8Block;                                                      \
        __m256i p[8];                                                                              \
        for (int j = 0; j < 8; j++)                                                                \
            p[j] = BLOCK_ISUM((const int8_t*)(qg + j * qb), ag + j * kQ8Block, ones);              \
        /* hadds within 128-bit halves: u0 = [s0 s1 s2 s3 | s0' s1' s2' s3'] (half sums) */        \
        const __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]),                        \
                                             _mm256_hadd_epi32(p[2], p[3]));                       \
        const __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]),                        \
                                             _mm256_hadd_epi32(p[6], p[7]));                       \
        __m256i v = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),                      \
                                     _mm256_permute2x128_si256(u0, u1, 0x31));                     \
        if (Q4) v = _mm256_sub_epi32(v, _mm256_loadu_si256((const __m256i*)(SX8 + b)));            \
        __m128i h;                                                                                 \
        if (db == 2) { /* split layout: the row's fp16 scales side by side */                      \
            h = _mm_loadu_si128((const __m128i*)(d + 2 * b));                                      \
        } else { /* GGML blocks: 32 bits at each d (d and the block's first two values) */         \
            const __m256i g = _mm256_and_si256(                                                    \
                _mm256_i32gather_epi32((const int*)(d + b * db), gidx, 1),                         \
                _mm256_set1_epi32(0xffff));                                                        \
            h = _mm_packus_epi32(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));       \
        }                                                                                          \
        const __m256 sc = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(dx + b));             \
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), sc, acc);                                     \
    }                                                                                              \
    float out = hsum8(acc);                                                                        \
    if (b < nb) out += dot_scalar<Q4>(w, r, qx, dx, b, nb); /* blocks past the last group */       \
    return out;

// Q8_0 has no input sums to subtract: its SX8 is never read (the `if (Q4)` above is false), but
// the expression is formed, and on a null pointer clang warns about the arithmetic.
static const int32_t kNoInputSums[8] = {};

__attribute__((target("avx2,fma,f16c"))) static float dot_g8_avx2(const Q8Rows& w, int64_t r,
                                                                  const int8_t* qx,
                                                                  const float* dx, int64_t nb) {
    MOE_DOT_G8_BODY(block_isum_avx2, false, kNoInputSums)
}

__attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni"))) static float dot_g8_vnni(
    const Q8Rows& w, int64_t r, const int8_t* qx, const float* dx, int64_t nb) {
    MOE_DOT_G8_BODY(block_isum_vnni, false, kNoInputSums)
}

// The split layout (`moe quantize --type int8`: a row's int8 values side by side, its fp16 scales
// in another array) on AVX-512 VNNI: two blocks per 512-bit dpbusd. The sign trick without
// vpsignb (no 512-bit form): |w| as the unsigned side, the inputs negated under w's sign mask.
// The four vectors of eight blocks are folded by three rounds of even/odd lane permutes into the
// eight block sums, exactly the integers of the loop above, then the same convert and FMA: the
// same numbers as dot_g8_vnni (the 256-bit loop: ~70 instructions per eight blocks, here ~45).
__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))) static float
dot_split_vnni512(const Q8Rows& w, int64_t r, const int8_t* qx, const float* dx, int64_t nb) {
    const uint8_t* q = w.q + (size_t)r * w.q_row;
    const uint8_t* d = w.d + (size_t)r * w.d_row;
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i zero = _mm512_setzero_si512();
    __m256 acc = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const uint8_t* qg = q + b * kQ8Block;
        for (int o = 0; o < 8 * kQ8Block; o += 64)
            _mm_prefetch((const char*)qg + kQ8PrefetchBytes + o, _MM_HINT_T0);
        __m512i z[4];  // z[j]: lanes 0-7 block b + 2j, lanes 8-15 block b + 2j + 1
        for (int j = 0; j < 4; j++) {
            const __m512i qw = _mm512_loadu_si512((const void*)(qg + 64 * j));
            const __m512i qa = _mm512_loadu_si512((const void*)(qx + (b + 2 * j) * kQ8Block));
            const __mmask64 neg = _mm512_movepi8_mask(qw);
            z[j] = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(qw), _mm512_mask_sub_epi8(qa, neg, zero, qa));
        }
        // pairs of lanes added: blocks 0-3 (four sums each), 4-7, then 0-7 (two each), then one
        const __m512i s01 = _mm512_add_epi32(_mm512_permutex2var_epi32(z[0], ev, z[1]),
                                             _mm512_permutex2var_epi32(z[0], od, z[1]));
        const __m512i s23 = _mm512_add_epi32(_mm512_permutex2var_epi32(z[2], ev, z[3]),
                                             _mm512_permutex2var_epi32(z[2], od, z[3]));
        const __m512i t = _mm512_add_epi32(_mm512_permutex2var_epi32(s01, ev, s23),
                                           _mm512_permutex2var_epi32(s01, od, s23));
        acc = add_scaled8(acc, pair_sums8(t), d + 2 * b, dx + b);
    }
    float out = hsum8(acc);
    if (b < nb) out += dot_scalar<false>(w, r, qx, dx, b, nb);
    return out;
}

// A Q4_0 block's nibbles in value order (the low nibbles are values 0..15, the high 16..31): a
// 128-bit broadcast load, a shift by 0 (low half) or 4 (high half), an and.
__attribute__((target("avx2,fma,f16c"))) static inline __m256i q4_nibbles(const int8_t* q) {
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)q));
    return _mm256_and_si256(_mm256_srlv_epi32(raw, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                            _mm256_set1_epi8(15));
}

// The nibbles go in as the unsigned side against the signed activations: no sign trick
// (maddubs pairs at most 2 * 15 * 127 < 32768).
__attribute__((target("avx2,fma,f16c"))) static inline __m256i q4_isum_avx2(const int8_t* q,
                                                                            const int8_t* a,
                                                                            __m256i ones) {
    return _mm256_madd_epi16(
        _mm256_maddubs_epi16(q4_nibbles(q), _mm256_loadu_si256((const __m256i*)a)), ones);
}

__attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni"))) static inline __m256i q4_isum_vnni(
    const int8_t* q, const int8_t* a, __m256i) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q4_nibbles(q),
                               _mm256_loadu_si256((const __m256i*)a));
}

__attribute__((target("avx2,fma,f16c"))) static float dot_q4_g8_avx2(const Q8Rows& w, int64_t r,
                                                                     const int8_t* qx,
                                                                     const int32_t* sx8,
                                                                     const float* dx, int64_t nb) {
    MOE_DOT_G8_BODY(q4_isum_avx2, true, sx8)
}

__attribute__((target("avx2,fma,f16c,avx512vl,avx512vnni"))) static float dot_q4_g8_vnni(
    const Q8Rows& w, int64_t r, const int8_t* qx, const int32_t* sx8, const float* dx,
    int64_t nb) {
    MOE_DOT_G8_BODY(q4_isum_vnni, true, sx8)
}
#undef MOE_DOT_G8_BODY

// Q4_0 in the split layout on AVX-512 VNNI: four blocks' nibbles per 512-bit load (block b + L in
// 128-bit lane L), the low nibbles (values 0-15) and the high ones (16-31) as the unsigned sides
// of two dpbusd against the inputs arranged to match once per input row (q4_split_inputs: per
// four blocks their first 16 inputs, then their last 16). Two vectors of four blocks folded into
// the eight block sums by lane permutes: the integers of dot_q4_g8_vnni, then its operations, so
// its bits (~25 instructions per eight blocks against ~70). m795 q4_0 decode (the GGUF copied
// into huge pages, so split): 1.25x the GGML loop's tokens/s, median of 10 adjacent pairs.
static void q4_split_inputs(const int8_t* qx, int64_t nb, int8_t* out) {
    for (int64_t b = 0; b + 4 <= nb; b += 4)
        for (int L = 0; L < 4; L++) {
            std::memcpy(out + b * kQ8Block + 16 * L, qx + (b + L) * kQ8Block, 16);
            std::memcpy(out + b * kQ8Block + 64 + 16 * L, qx + (b + L) * kQ8Block + 16, 16);
        }
}

__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))) static float
dot_q4_split_vnni512(const Q8Rows& w, int64_t r, const int8_t* qx, const int8_t* qxs,
                     const int32_t* sx8, const float* dx, int64_t nb) {
    const uint8_t* q = w.q + (size_t)r * w.q_row;
    const uint8_t* d = w.d + (size_t)r * w.d_row;
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i m4 = _mm512_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const uint8_t* qg = q + b * 16;
        for (int o = 0; o < 128; o += 64)
            _mm_prefetch((const char*)qg + kQ8PrefetchBytes + o, _MM_HINT_T0);
        __m512i z[2];  // z[h]: lanes 4L .. 4L + 3 block b + 4h + L
        for (int h = 0; h < 2; h++) {
            const __m512i v = _mm512_loadu_si512((const void*)(qg + 64 * h));
            const int8_t* a = qxs + (b + 4 * h) * kQ8Block;
            const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            z[h] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo,
                                                           _mm512_loadu_si512((const void*)a)),
                                       hi, _mm512_loadu_si512((const void*)(a + 64)));
        }
        const __m512i t = _mm512_add_epi32(_mm512_permutex2var_epi32(z[0], ev, z[1]),
                                           _mm512_permutex2var_epi32(z[0], od, z[1]));
        const __m256i v = _mm256_sub_epi32(pair_sums8(t), _mm256_loadu_si256((const __m256i*)(sx8 + b)));
        acc = add_scaled8(acc, v, d + 2 * b, dx + b);
    }
    float out = hsum8(acc);
    if (b < nb) out += dot_scalar<true>(w, r, qx, dx, b, nb);
    return out;
}

// 8 * the sum of each block's quantised inputs (what the nibbles' offset of 8 contributes).
static void q4_input_sums8(const int8_t* qx, int64_t nb, int32_t* sx8) {
    for (int64_t b = 0; b < nb; b++) {
        int32_t t = 0;
        for (int i = 0; i < kQ8Block; i++) t += qx[b * kQ8Block + i];
        sx8[b] = 8 * t;
    }
}

float q8_dot_row(int isa, const Q8Rows& w, int64_t r, const int8_t* qx, const float* dx,
                 int64_t k) {
    const int64_t nb = k / kQ8Block;
    if (isa == 2 && w.d_blk == 2) return dot_split_vnni512(w, r, qx, dx, nb);
    if (isa == 2) return dot_g8_vnni(w, r, qx, dx, nb);
    if (isa == 1) return dot_g8_avx2(w, r, qx, dx, nb);
    return dot_scalar<false>(w, r, qx, dx, 0, nb);
}

float q4_dot_row(int isa, const Q8Rows& w, int64_t r, const int8_t* qx, const float* dx,
                 int64_t k) {
    const int64_t nb = k / kQ8Block;
    if (isa >= 1) {
        std::vector<int32_t> sx8((size_t)nb);
        q4_input_sums8(qx, nb, sx8.data());
        if (isa == 2 && w.d_blk == 2) {
            std::vector<int8_t> qxs((size_t)k);
            q4_split_inputs(qx, nb, qxs.data());
            return dot_q4_split_vnni512(w, r, qx, qxs.data(), sx8.data(), dx, nb);
        }
        return isa == 2 ? dot_q4_g8_vnni(w, r, qx, sx8.data(), dx, nb)
                        : dot_q4_g8_avx2(w, r, qx, sx8.data(), dx, nb);
    }
    return dot_scalar<true>(w, r, qx, dx, 0, nb);
}

static bool detect_vnni() {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool f = b & (1u << 16), bw = b & (1u << 30), vl = b & (1u << 31), vnni = c & (1u << 11);
    return f && bw && vl && vnni && cpu_os_saves_zmm();
}

bool cpu_os_saves_zmm() {  // XCR0 bits 1, 2, 5, 6, 7: SSE, AVX and the three AVX-512 states
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return false;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6) == 0xe6;
}

bool q8_cpu_has_vnni() {
    static const bool has = detect_vnni();
    return has;
}

__attribute__((target("avx2,fma,f16c"))) float q8_dot_row_widen_avx2(const Q8Rows& w, int64_t r,
                                                                     const float* x, int64_t k) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < k / kQ8Block; b++) {
        const int8_t* q = w.qs(r, b);
        const float* xb = x + b * kQ8Block;
        __m256 s = _mm256_setzero_ps();
        for (int j = 0; j < kQ8Block; j += 8) {
            const __m256 wf =
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + j))));
            s = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xb + j), s);
        }
        acc = _mm256_fmadd_ps(s, _mm256_set1_ps(_cvtsh_ss(w.scale_bits(r, b))), acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// ---- prefill: integer products on packed panels (AVX2) ------------------------------------------
// y [M, N] (+)= x [M, K] W^T for M >= 4 with the inputs quantised as decode quantises them: every
// 32-block's products summed exactly in int32, then scaled once, as in decode:
//   y[m][n] = fma(sum_b (float)isum[m][n][b], dw[n][b] * dx[m][b]) in block order.
// Why integers: vpmaddwd multiplies 16 int16 pairs and adds each pair into an int32 (16
// multiply-adds per instruction, exact), where an fp32 FMA does 8; with vpaddd on the other
// vector pipes that is up to twice the FMA kernel's multiply-adds per cycle, and the panel is
// int16 instead of fp32 (half the packing stores, no scale multiply while packing).
// Layout: a panel of kQNR weight rows and kc columns (kc % 32 == 0) is bq[k / 2][j] (int32 = the
// int16 pair q[j][k], q[j][k + 1]) and bd[k / 32][j] (the rows' fp32 block scales; rows past nr
// zero); the inputs are quantised into groups of kQMR rows, pairs interleaved: row i of a group,
// columns k, k + 1 at xg[(k / 2) * 2 * kQMR + 2 * i] (int16; one pointer serves the six
// broadcasts of a step), and dx[m][k / 32].
static const int kQMR = 6, kQNR = 16, kQKC = 256, kQNC = 128;

// Eight weight rows j0 .. j0 + 7 of the panel, whole 16-column steps: int8 -> int16 per row,
// then the 8 x 8 transpose of int32 pairs (the fp32 transpose on the same bits); their scales.
// Q4_0: the 16 values at i = 0 of a block are its low nibbles, those at i = 16 the high ones.
template <bool Q4>
__attribute__((target("avx2,fma,f16c"))) static void pack_i16_avx2(int32_t* bq, float* bd, const Q8Rows& R,
                                                                   int n0, int j0, int k0,
                                                                   int kc) {
    for (int k = 0; k < kc; k += 16) {
        const int64_t b = (k0 + k) / kQ8Block, i = (k0 + k) % kQ8Block;
        __m256 r[8];
        for (int j = 0; j < 8; j++) {
            __m128i q;
            if constexpr (Q4) {
                const __m128i raw = _mm_loadu_si128((const __m128i*)R.qs(n0 + j0 + j, b));
                q = _mm_sub_epi8(_mm_and_si128(i == 0 ? raw : _mm_srli_epi16(raw, 4),
                                               _mm_set1_epi8(15)),
                                 _mm_set1_epi8(8));
            } else {
                q = _mm_loadu_si128((const __m128i*)(R.qs(n0 + j0 + j, b) + i));
            }
            r[j] = _mm256_castsi256_ps(_mm256_cvtepi8_epi16(q));
        }
        transpose8_store_avx2(r, (float*)(bq + (size_t)(k / 2) * kQNR + j0), kQNR);
    }
    for (int kb = 0; kb < kc / kQ8Block; kb++)
        for (int j = 0; j < 8; j++)
            bd[kb * kQNR + j0 + j] = _cvtsh_ss(R.scale_bits(n0 + j0 + j, k0 / kQ8Block + kb));
}

// Rows n0 .. n0 + nr - 1, columns k0 .. k0 + kc - 1 (whole blocks) asked into the cache.
static void prefetch_q8_rows(const Q8Rows& R, int n0, int nr, int k0, int kc) {
    const int64_t b0 = k0 / kQ8Block, b1 = (k0 + kc) / kQ8Block;
    for (int j = 0; j < nr; j++) {
        const char* first = (const char*)R.qs(n0 + j, b0);
        const char* last = (const char*)R.qs(n0 + j, b1 - 1) + kQ8Block - 1;
        for (const char* p = first; p <= last; p += 64) __builtin_prefetch(p, 0, 3);
        __builtin_prefetch(last, 0, 3);
    }
}

template <bool Q4>
static void pack_q8_i16(int32_t* bq, float* bd, const Q8Rows& R, int n0, int nr, int k0, int kc,
                        bool avx2) {
    int j0 = 0;
    if (avx2)
        for (; j0 + 8 <= nr; j0 += 8) pack_i16_avx2<Q4>(bq, bd, R, n0, j0, k0, kc);
    for (int j = j0; j < kQNR; j++)
        for (int k = 0; k < kc; k += 2) {
            int16_t pair[2] = {0, 0};
            if (j < nr) {
                const int64_t b = (k0 + k) / kQ8Block, i = (k0 + k) % kQ8Block;
                pair[0] = q_at<Q4>(R, n0 + j, b, (int)i);
                pair[1] = q_at<Q4>(R, n0 + j, b, (int)i + 1);
            }
            std::memcpy(&bq[(size_t)(k / 2) * kQNR + j], pair, 4);
        }
    for (int kb = 0; kb < kc / kQ8Block; kb++)
        for (int j = j0; j < kQNR; j++)
            bd[kb * kQNR + j] = j < nr ? f16_to_f32(R.scale_bits(n0 + j, k0 / kQ8Block + kb)) : 0.f;
}

// 6 x 16 outputs over nblk blocks (the inputs are padded to whole groups of 6 rows; only mr
// rows are stored). Per k-pair step: the panel's two vectors, then per row a broadcast input
// pair, two vpmaddwd and two vpaddd into twelve int32 accumulators: all sixteen vector
// registers, so the step is written in asm (g++ 12 spilled an accumulator and moved every
// other one between registers on each step, a third more instructions). After each block the
// int32 sums are scaled into the fp32 tile t (in L1): t += (float)isum * (dw * dx).
__attribute__((target("avx2,fma"))) static void ukernel_i16_avx2(int nblk, const int16_t* xg,
                                                                 const float* dx,
                                                                 int lddx, const int32_t* bq,
                                                                 const float* bd, float* c,
                                                                 int ldc, bool add, int mr,
                                                                 int nr) {
    alignas(32) float t[kQMR][kQNR];
    for (int i = 0; i < kQMR; i++)
        for (int j = 0; j < kQNR; j++)
            t[i][j] = add && i < mr && j < nr ? c[(size_t)i * ldc + j] : 0.f;
    for (int blk = 0; blk < nblk; blk++) {
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00,
                c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
        const int32_t* bb = bq + (size_t)blk * (kQ8Block / 2) * kQNR;
        const int16_t* xb = xg + (size_t)blk * kQ8Block * kQMR;
        for (int p = 0; p < kQ8Block / 2; p++) {
            __m256i b0, b1, a, tmp;
            __asm__(
                "vmovdqu (%[b]), %[b0]\n\t"
                "vmovdqu 32(%[b]), %[b1]\n\t"
#define MOE_QK_ROW(ADDR, C0, C1)                      \
    "vpbroadcastd " ADDR ", %[a]\n\t"                 \
    "vpmaddwd %[b0], %[a], %[t]\n\t"                  \
    "vpaddd %[t], %[" C0 "], %[" C0 "]\n\t"           \
    "vpmaddwd %[b1], %[a], %[a]\n\t"                  \
    "vpaddd %[a], %[" C1 "], %[" C1 "]\n\t"
                MOE_QK_ROW("(%[x])", "c00", "c01")
                MOE_QK_ROW("4(%[x])", "c10", "c11")
                MOE_QK_ROW("8(%[x])", "c20", "c21")
                MOE_QK_ROW("12(%[x])", "c30", "c31")
                MOE_QK_ROW("16(%[x])", "c40", "c41")
                MOE_QK_ROW("20(%[x])", "c50", "c51")
#undef MOE_QK_ROW
                : [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11),
                  [c20] "+x"(c20), [c21] "+x"(c21), [c30] "+x"(c30), [c31] "+x"(c31),
                  [c40] "+x"(c40), [c41] "+x"(c41), [c50] "+x"(c50), [c51] "+x"(c51),
                  [b0] "=&x"(b0), [b1] "=&x"(b1), [a] "=&x"(a), [t] "=&x"(tmp)
                : [b] "r"(bb + p * kQNR), [x] "r"(xb + (size_t)p * 2 * kQMR)
                : "memory");
        }
        const __m256 d0 = _mm256_loadu_ps(bd + blk * kQNR), d1 = _mm256_loadu_ps(bd + blk * kQNR + 8);
        const __m256i acc[kQMR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                      {c30, c31}, {c40, c41}, {c50, c51}};
        for (int i = 0; i < kQMR; i++) {
            const __m256 s = _mm256_set1_ps(dx[(size_t)i * lddx + blk]);
            _mm256_store_ps(t[i], _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][0]),
                                                  _mm256_mul_ps(d0, s), _mm256_load_ps(t[i])));
            _mm256_store_ps(t[i] + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][1]),
                                                      _mm256_mul_ps(d1, s),
                                                      _mm256_load_ps(t[i] + 8)));
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) c[(size_t)i * ldc + j] = t[i][j];
}

// AVX-512 VNNI, int8 panels for vpdpbusd (four int8 products summed into an int32 lane per
// instruction): tiles of 6 rows x 32 columns (two 16-row panels; twelve int32 accumulators, and
// 32 vector registers leave room for the fp32 tile, which stays in registers across blocks),
// four columns k per step. vpdpbusd multiplies unsigned by signed bytes, so the inputs go in as
// qx + 128 (in 1..255) and each block's accumulators start at -128 * (the block's sum of q):
// they end at sum_k qx * q exactly, the integers of the int16 kernels, and the same fma after,
// so the same bits. (|sums| < 32 * 255 * 128: no overflow.) It replaced vpdpwssd on int16
// panels (two products per lane and instruction): m795 pp128 1.46x (q8_0) and 1.51x (q4_0) the
// tokens/s, medians of 5 adjacent pairs (session 11).
// Layout: a panel of kQNR weight rows and kc columns is b8[k / 4][j] (int32 = the four int8
// q[j][k .. k + 3]), bs[k / 32][j] (int32, -128 * the sum of row j's block) and bd[k / 32][j]
// (fp32 scales); rows past nr zero. The inputs: row i of a group of kQMR, columns k .. k + 3
// (k % 4 == 0) at xg8[k * kQMR + 4 * i] (one pointer serves the six broadcasts of a step).
template <bool Q4>
__attribute__((target("avx2,fma,f16c"))) static inline __m256i block_q_avx2(const Q8Rows& R,
                                                                           int64_t r, int64_t b) {
    if constexpr (Q4) {  // values 0..15: the low nibbles, 16..31: the high ones; minus 8
        const __m128i raw = _mm_loadu_si128((const __m128i*)R.qs(r, b)), m4 = _mm_set1_epi8(15);
        const __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4),
                                           _mm_and_si128(raw, m4));
        return _mm256_sub_epi8(v, _mm256_set1_epi8(8));
    } else {
        return _mm256_loadu_si256((const __m256i*)R.qs(r, b));
    }
}

// Eight weight rows j0 .. j0 + 7 of the panel: per block, each row's 32 int8 values are eight
// int32 quads, and the 8 x 8 transpose of those (the fp32 transpose on the same bits) stores
// quad s of the eight rows side by side; the block sums by vpsadbw on q ^ 0x80 (= q + 128).
template <bool Q4>
__attribute__((target("avx2,fma,f16c"))) static void pack_i8_avx2(int32_t* bq, int32_t* bs,
                                                                  float* bd, const Q8Rows& R,
                                                                  int n0, int j0, int k0, int kc) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    for (int kb = 0; kb < kc / kQ8Block; kb++) {
        const int64_t b = k0 / kQ8Block + kb;
        __m256 r[8];
        for (int j = 0; j < 8; j++) {
            const __m256i q = block_q_avx2<Q4>(R, n0 + j0 + j, b);
            const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(q, flip), zero);
            const __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sad), _mm256_extracti128_si256(sad, 1));
            const int32_t sum = (int32_t)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1)) - 32 * 128;
            bs[kb * kQNR + j0 + j] = -128 * sum;
            r[j] = _mm256_castsi256_ps(q);
        }
        transpose8_store_avx2(r, (float*)(bq + (size_t)kb * (kQ8Block / 4) * kQNR + j0), kQNR);
    }
    for (int kb = 0; kb < kc / kQ8Block; kb++)
        for (int j = 0; j < 8; j++)
            bd[kb * kQNR + j0 + j] = _cvtsh_ss(R.scale_bits(n0 + j0 + j, k0 / kQ8Block + kb));
}

template <bool Q4>
static void pack_q8_i8(int32_t* bq, int32_t* bs, float* bd, const Q8Rows& R, int n0, int nr,
                       int k0, int kc) {
    int j0 = 0;
    for (; j0 + 8 <= nr; j0 += 8) pack_i8_avx2<Q4>(bq, bs, bd, R, n0, j0, k0, kc);
    for (int j = j0; j < kQNR; j++)
        for (int kb = 0; kb < kc / kQ8Block; kb++) {
            const int64_t b = k0 / kQ8Block + kb;
            int32_t sum = 0;
            for (int s = 0; s < kQ8Block / 4; s++) {
                int8_t quad[4] = {0, 0, 0, 0};
                for (int t = 0; t < 4 && j < nr; t++) sum += quad[t] = q_at<Q4>(R, n0 + j, b, 4 * s + t);
                std::memcpy(&bq[((size_t)kb * (kQ8Block / 4) + s) * kQNR + j], quad, 4);
            }
            bs[kb * kQNR + j] = -128 * sum;
            bd[kb * kQNR + j] = j < nr ? f16_to_f32(R.scale_bits(n0 + j, b)) : 0.f;
        }
}

template <int NP>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void ukernel_i8_vnni(
    int nblk, const uint8_t* xg, const float* dx, int lddx, const int32_t* bq, const int32_t* bs,
    const float* bd, size_t panel_q, size_t panel_d, float* c, int ldc, bool add, int mr, int nc) {
    __m512 t[kQMR][NP];
    for (int i = 0; i < kQMR; i++)
        for (int p = 0; p < NP; p++) {
            const int n = std::min(kQNR, nc - p * kQNR);
            const __mmask16 mk = n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
            t[i][p] = add && i < mr ? _mm512_maskz_loadu_ps(mk, c + (size_t)i * ldc + p * kQNR)
                                    : _mm512_setzero_ps();
        }
    for (int blk = 0; blk < nblk; blk++) {
        __m512i acc[kQMR][NP];
        for (int p = 0; p < NP; p++) {
            const __m512i start = _mm512_loadu_si512(bs + p * panel_d + blk * kQNR);
            for (int i = 0; i < kQMR; i++) acc[i][p] = start;
        }
        const int32_t* bb = bq + (size_t)blk * (kQ8Block / 4) * kQNR;
        const uint8_t* xb = xg + (size_t)blk * kQ8Block * kQMR;
        for (int s = 0; s < kQ8Block / 4; s++) {
            __m512i b[NP];
            for (int p = 0; p < NP; p++) b[p] = _mm512_loadu_si512(bb + p * panel_q + s * kQNR);
            for (int i = 0; i < kQMR; i++) {
                int32_t quad;
                std::memcpy(&quad, xb + (size_t)s * 4 * kQMR + 4 * i, 4);
                const __m512i a = _mm512_set1_epi32(quad);
                for (int p = 0; p < NP; p++) acc[i][p] = _mm512_dpbusd_epi32(acc[i][p], a, b[p]);
            }
        }
        for (int i = 0; i < kQMR; i++) {
            const __m512 sx = _mm512_set1_ps(dx[(size_t)i * lddx + blk]);
            for (int p = 0; p < NP; p++) {
                const __m512 d = _mm512_loadu_ps(bd + p * panel_d + blk * kQNR);
                t[i][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][p]), _mm512_mul_ps(d, sx),
                                          t[i][p]);
            }
        }
    }
    for (int i = 0; i < mr; i++)
        for (int p = 0; p < NP; p++) {
            const int n = std::min(kQNR, nc - p * kQNR);
            if (n <= 0) continue;
            _mm512_mask_storeu_ps(c + (size_t)i * ldc + p * kQNR, (__mmask16)((1u << n) - 1), t[i][p]);
        }
}

// The same sums by plain loops (no AVX2): the panel's layout, one output at a time.
static void ukernel_i16_scalar(int mr, int nblk, const int16_t* xg, const float* dx,
                               int lddx, const int32_t* bq, const float* bd, float* c, int ldc,
                               bool add, int nr) {
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            float acc = add ? c[(size_t)i * ldc + j] : 0.f;
            for (int blk = 0; blk < nblk; blk++) {
                int32_t s = 0;
                for (int p = 0; p < kQ8Block / 2; p++) {
                    int16_t w2[2];
                    std::memcpy(w2, &bq[((size_t)blk * (kQ8Block / 2) + p) * kQNR + j], 4);
                    const int16_t* a = xg + ((size_t)blk * (kQ8Block / 2) + p) * 2 * kQMR + 2 * i;
                    s += (int32_t)a[0] * w2[0] + (int32_t)a[1] * w2[1];
                }
                acc = std::fma((float)s, bd[blk * kQNR + j] * dx[(size_t)i * lddx + blk], acc);
            }
            c[(size_t)i * ldc + j] = acc;
        }
}

size_t q8_prefill_input_size(int M, int64_t K) {
    return (size_t)((M + kQMR - 1) / kQMR * kQMR) * (size_t)K;
}

// The int8 panels (vpdpbusd) where the CPU has AVX-512 VNNI, else the int16 ones.
static bool prefill_int8() { return wgemm_isa() == WIsa::avx512 && q8_cpu_has_vnni(); }

void q8_prefill_quantize(const float* x, int ldx, int M, int64_t K, int16_t* xg, float* dx) {
    const int64_t nb = K / kQ8Block;
    // rows up to a multiple of kQMR, zero: the kernel always runs six rows
    const int Mp = (M + kQMR - 1) / kQMR * kQMR;
    const bool i8 = prefill_int8();
    uint8_t* xg8 = (uint8_t*)xg;  // the int8 layout: half the int16 one's bytes
    if (i8)
        std::fill(xg8 + (size_t)(Mp - kQMR) * K, xg8 + (size_t)Mp * K, (uint8_t)0);
    else
        std::fill(xg + (size_t)(Mp - kQMR) * K, xg + (size_t)Mp * K, (int16_t)0);  // the last group
    std::fill(dx + (size_t)M * nb, dx + (size_t)Mp * nb, 0.f);
#pragma omp parallel for schedule(static) if ((int64_t)M * K >= (1 << 16))
    for (int m = 0; m < M; m++) {
        static thread_local std::vector<int8_t> q;
        if (q.size() < (size_t)K) q.resize((size_t)K);
        q8_quantize_activation(x + (size_t)m * ldx, K, q.data(), &dx[(size_t)m * nb]);
        if (i8) {  // row m's quads (+ 128) go to every kQMR-th int32 of its group, from slot m % kQMR
            uint8_t* g = xg8 + (size_t)(m / kQMR) * kQMR * K + 4 * (m % kQMR);
            for (int64_t k = 0; k < K; k += 4) {
                const uint8_t quad[4] = {(uint8_t)(q[k] + 128), (uint8_t)(q[k + 1] + 128),
                                         (uint8_t)(q[k + 2] + 128), (uint8_t)(q[k + 3] + 128)};
                std::memcpy(g + (size_t)k * kQMR, quad, 4);
            }
            continue;
        }
        // row m's pairs go to every kQMR-th int32 of its group, from slot m % kQMR
        int16_t* g = xg + (size_t)(m / kQMR) * kQMR * K + 2 * (m % kQMR);
        for (int64_t k = 0; k < K; k += 2) {
            const int16_t pair[2] = {q[k], q[k + 1]};
            std::memcpy(g + (size_t)k * kQMR, pair, 4);
        }
    }
}

// The walk both panel kinds take over output columns n0 .. n1 - 1: chunks of kQNC weight rows,
// passes of kQKC columns; each pass's panels packed, pack(p, row0, rows, k0, kc), then
// tiles(c0, nc, np, k0, kc) runs every tile of input rows on them. While a panel is packed the
// next one's bytes (or the next pass's first panel) are asked into the cache: each row is read
// 256 columns at a time, too short a stream for the hardware prefetcher to learn.
template <class Pack, class Tiles>
static void prefill_walk(const Q8Rows& R, int K, int n0, int n1, Pack pack, Tiles tiles) {
    for (int c0 = n0; c0 < n1; c0 += kQNC) {
        const int nc = std::min(kQNC, n1 - c0), np = (nc + kQNR - 1) / kQNR;
        for (int k0 = 0; k0 < K; k0 += kQKC) {
            const int kc = std::min(kQKC, K - k0);
            for (int p = 0; p < np; p++) {
                if (p + 1 < np)
                    prefetch_q8_rows(R, c0 + (p + 1) * kQNR, std::min(kQNR, nc - (p + 1) * kQNR), k0, kc);
                else if (k0 + kQKC < K)
                    prefetch_q8_rows(R, c0, std::min(kQNR, nc), k0 + kQKC, std::min(kQKC, K - k0 - kQKC));
                pack(p, c0 + p * kQNR, std::min(kQNR, nc - p * kQNR), k0, kc);
            }
            tiles(c0, nc, np, k0, kc);
        }
    }
}

void q8_prefill_rows(float* y, int ldy, const int16_t* xg, const float* dx, const WeightView& w,
                     int M, bool accumulate, int n0, int n1) {
    const int K = (int)w.cols, nb = K / kQ8Block;
    if (K == 0) {  // an empty sum
        for (int m = 0; m < M && !accumulate; m++) std::fill(y + (size_t)m * ldy + n0, y + (size_t)m * ldy + n1, 0.f);
        return;
    }
    static thread_local AlignedVector<int32_t> bq;  // panels read by 512-bit loads
    static thread_local AlignedVector<float> bd;
    static thread_local AlignedVector<int32_t> bs;  // the int8 panels' block sums
    if (bq.size() < (size_t)kQNC * kQKC / 2) bq.resize((size_t)kQNC * kQKC / 2);
    if (bd.size() < (size_t)kQNC * kQKC / kQ8Block) bd.resize((size_t)kQNC * kQKC / kQ8Block);
    const Q8Rows R = q8_rows(w);
    const bool q4 = w.type == WType::q4_0;
    int32_t* bqp = bq.data();  // pointers, not the thread_local names, go into the lambdas
    float* bdp = bd.data();
    const size_t pd = (size_t)(kQKC / kQ8Block) * kQNR;  // a panel's scales (and block sums)
    if (prefill_int8()) {  // AVX-512 VNNI: int8 panels, tiles of two panels (6 x 32)
        if (bs.size() < (size_t)kQNC * kQKC / kQ8Block) bs.resize((size_t)kQNC * kQKC / kQ8Block);
        int32_t* bsp = bs.data();
        const uint8_t* xg8 = (const uint8_t*)xg;
        const size_t pq = (size_t)(kQKC / 4) * kQNR;
        const auto pack = q4 ? pack_q8_i8<true> : pack_q8_i8<false>;
        prefill_walk(
            R, K, n0, n1,
            [&](int p, int row0, int nr, int k0, int kc) {
                pack(bqp + p * pq, bsp + p * pd, bdp + p * pd, R, row0, nr, k0, kc);
            },
            [&](int c0, int nc, int np, int k0, int kc) {
                const bool add = accumulate || k0 > 0;
                for (int m0 = 0; m0 < M; m0 += kQMR) {
                    const int mr = std::min(kQMR, M - m0);
                    const uint8_t* xa = xg8 + (size_t)m0 * K + (size_t)k0 * kQMR;
                    const float* da = dx + (size_t)m0 * nb + k0 / kQ8Block;
                    for (int p = 0; p < np; p += 2) {
                        float* ya = y + (size_t)m0 * ldy + c0 + p * kQNR;
                        const int ncols = nc - p * kQNR;
                        if (p + 1 < np)
                            ukernel_i8_vnni<2>(kc / kQ8Block, xa, da, nb, bqp + p * pq, bsp + p * pd,
                                               bdp + p * pd, pq, pd, ya, ldy, add, mr, ncols);
                        else
                            ukernel_i8_vnni<1>(kc / kQ8Block, xa, da, nb, bqp + p * pq, bsp + p * pd,
                                               bdp + p * pd, pq, pd, ya, ldy, add, mr, ncols);
                    }
                }
            });
        return;
    }
    // AVX2 or plain: int16 panels, tiles of one panel (6 x 16)
    const bool avx2 = wgemm_isa() != WIsa::scalar;
    const size_t pq = (size_t)(kQKC / 2) * kQNR;
    const auto pack = q4 ? pack_q8_i16<true> : pack_q8_i16<false>;
    prefill_walk(
        R, K, n0, n1,
        [&](int p, int row0, int nr, int k0, int kc) {
            pack(bqp + p * pq, bdp + p * pd, R, row0, nr, k0, kc, avx2);
        },
        [&](int c0, int nc, int np, int k0, int kc) {
            const bool add = accumulate || k0 > 0;
            for (int m0 = 0; m0 < M; m0 += kQMR) {
                const int mr = std::min(kQMR, M - m0);
                const int16_t* xa = xg + (size_t)m0 * K + (size_t)k0 * kQMR;
                const float* da = dx + (size_t)m0 * nb + k0 / kQ8Block;
                for (int p = 0; p < np; p++) {
                    float* ya = y + (size_t)m0 * ldy + c0 + p * kQNR;
                    const int nr = std::min(kQNR, nc - p * kQNR);
                    if (avx2)
                        ukernel_i16_avx2(kc / kQ8Block, xa, da, nb, bqp + p * pq, bdp + p * pd, ya, ldy,
                                         add, mr, nr);
                    else
                        ukernel_i16_scalar(mr, kc / kQ8Block, xa, da, nb, bqp + p * pq, bdp + p * pd,
                                           ya, ldy, add, nr);
                }
            }
        });
}

void q8_gemm_prefill(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                     bool accumulate) {
    const int N = (int)w.rows, K = (int)w.cols;
    if (M <= 0 || N <= 0) return;
    static thread_local std::vector<int16_t> xg;
    static thread_local std::vector<float> dx;
    if (xg.size() < q8_prefill_input_size(M, K)) xg.resize(q8_prefill_input_size(M, K));
    if (dx.size() < q8_prefill_input_size(M, K) / kQ8Block) dx.resize(q8_prefill_input_size(M, K) / kQ8Block);
    q8_prefill_quantize(x, ldx, M, K, xg.data(), dx.data());
    int16_t* xgp = xg.data();  // pointers, not the thread_local names, go into the threads
    float* dxp = dx.data();
    // Threads take whole chunks of kQNC weight rows; each output's sum runs in block order
    // whatever the split, so the numbers depend on neither the thread count nor the chunks.
    const int n_chunks = (N + kQNC - 1) / kQNC;
#pragma omp parallel for schedule(static) if (n_chunks > 1 && (int64_t)M * N * K >= (1 << 20))
    for (int ch = 0; ch < n_chunks; ch++)
        q8_prefill_rows(y, ldy, xgp, dxp, w, M, accumulate, ch * kQNC, std::min(N, (ch + 1) * kQNC));
}

void q8_gemm_prefill_ref(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                         bool accumulate) {
    const int N = (int)w.rows;
    const int64_t K = w.cols, nb = K / kQ8Block;
    const Q8Rows R = q8_rows(w);
    const bool q4 = w.type == WType::q4_0;
    std::vector<int8_t> q((size_t)K);
    std::vector<float> dx((size_t)nb);
    for (int m = 0; m < M; m++) {
        q8_quantize_activation_ref(x + (size_t)m * ldx, K, q.data(), dx.data());
        for (int n = 0; n < N; n++) {
            float acc = accumulate ? y[(size_t)m * ldy + n] : 0.f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t s = 0;
                for (int i = 0; i < kQ8Block; i++)
                    s += (int32_t)(q4 ? q_at<true>(R, n, b, i) : q_at<false>(R, n, b, i)) *
                         q[b * kQ8Block + i];
                acc = std::fma((float)s, f16_to_f32(R.scale_bits(n, b)) * dx[b], acc);
            }
            y[(size_t)m * ldy + n] = acc;
        }
    }
}

// ---- the product ------------------------------------------------------------------------------

void q8_decode_quantize(const float* x, int ldx, int M, int64_t K, int8_t* qx, float* dx) {
    for (int m = 0; m < M; m++)
        q8_quantize_activation(x + (size_t)m * ldx, K, qx + (size_t)m * K, dx + (size_t)m * (K / kQ8Block));
}

void q8_decode_rows(float* y, int ldy, const int8_t* qx, const float* dx, const WeightView& w,
                    int M, bool accumulate, int n0, int n1) {
    const int64_t K = w.cols, nb = K / kQ8Block;
    const WIsa isa = wgemm_isa();
    const bool q4 = w.type == WType::q4_0;
    const bool vnni = isa == WIsa::avx512 && q8_cpu_has_vnni();
    const int kern = vnni ? 2 : isa == WIsa::scalar ? 0 : 1;
    const Q8Rows R = q8_rows(w);
    if (q4 && kern >= 1) {  // the inputs' block sums (and split order) once for the piece's rows
        static thread_local std::vector<int32_t> c;
        static thread_local std::vector<int8_t> xs;
        const bool split = kern == 2 && R.d_blk == 2;
        if (c.size() < (size_t)(M * nb)) c.resize((size_t)(M * nb));
        if (split && xs.size() < (size_t)(M * K)) xs.resize((size_t)(M * K));
        for (int m = 0; m < M; m++) {
            q4_input_sums8(qx + m * K, nb, c.data() + m * nb);
            if (split) q4_split_inputs(qx + m * K, nb, xs.data() + m * K);
        }
        for (int n = n0; n < n1; n++)
            for (int m = 0; m < M; m++) {
                const int32_t* sx = c.data() + m * nb;
                const float v =
                    split     ? dot_q4_split_vnni512(R, n, qx + m * K, xs.data() + m * K, sx, dx + m * nb, nb)
                    : kern == 2 ? dot_q4_g8_vnni(R, n, qx + m * K, sx, dx + m * nb, nb)
                                : dot_q4_g8_avx2(R, n, qx + m * K, sx, dx + m * nb, nb);
                float& o = y[(size_t)m * ldy + n];
                o = accumulate ? o + v : v;
            }
        return;
    }
    for (int n = n0; n < n1; n++)
        for (int m = 0; m < M; m++) {
            const float v = q4 ? q4_dot_row(kern, R, n, qx + m * K, dx + m * nb, K)
                               : q8_dot_row(kern, R, n, qx + m * K, dx + m * nb, K);
            float& o = y[(size_t)m * ldy + n];
            o = accumulate ? o + v : v;
        }
}

void q8_gemm_decode(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                    bool accumulate) {
    const int N = (int)w.rows;
    const int64_t K = w.cols, nb = K / kQ8Block;
    if (M <= 0 || N <= 0) return;
    // The quantised inputs, in scratch that grows once (no allocation per token).
    static thread_local std::vector<int8_t> qx_buf;
    static thread_local std::vector<float> dx_buf;
    if (qx_buf.size() < (size_t)(M * K)) qx_buf.resize((size_t)(M * K));
    if (dx_buf.size() < (size_t)(M * nb)) dx_buf.resize((size_t)(M * nb));
    int8_t* qx = qx_buf.data();  // pointers, not the thread_local names, go into the threads
    float* dx = dx_buf.data();
    q8_decode_quantize(x, ldx, M, K, qx, dx);
    const int n_pieces = (N + 63) / 64;
#pragma omp parallel for schedule(static) if ((int64_t)N * K >= 65536)
    for (int p = 0; p < n_pieces; p++)
        q8_decode_rows(y, ldy, qx, dx, w, M, accumulate, 64 * p, std::min(N, 64 * (p + 1)));
}

}  // namespace moe
