// wgemm (weights in F32/BF16/F16, widened on the fly) against the plain double-accumulating
// reference, on random odd shapes, for every kernel this CPU can run (AVX-512, AVX2, scalar) and
// both paths (decode M < 4, panel + sgemm M >= 4); and the float <-> bf16/f16 conversions.
#include <omp.h>

#include <array>
#include <cmath>
#include <cstring>

#include "kernels/bf16_gemm.h"
#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "moe/rng.h"
#include "test_util.h"

namespace moe {
namespace {

struct TypedMatrix {  // a weight matrix stored as the file would hold it
    WType type;
    int rows, cols;
    std::vector<uint8_t> bytes;
    WeightView view() const { return {type, rows, cols, bytes.data()}; }
};

TypedMatrix make_matrix(WType t, int rows, int cols, uint64_t seed, int offset_bytes = 0) {
    std::vector<float> v = test::randn((size_t)rows * cols, seed);
    TypedMatrix m{t, rows, cols, {}};
    m.bytes.resize(offset_bytes + v.size() * wtype_size(t));
    for (size_t i = 0; i < v.size(); i++) {
        uint8_t* dst = m.bytes.data() + offset_bytes + i * wtype_size(t);
        if (t == WType::f32) std::memcpy(dst, &v[i], 4);
        uint16_t h = t == WType::bf16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
        if (t != WType::f32) std::memcpy(dst, &h, 2);
    }
    m.bytes.erase(m.bytes.begin(), m.bytes.begin() + offset_bytes);
    return m;
}

class WgemmTest : public ::testing::TestWithParam<WIsa> {
   protected:
    void SetUp() override {
        saved_ = wgemm_isa();
        wgemm_set_isa(GetParam());
        if (wgemm_isa() != GetParam()) GTEST_SKIP() << "this CPU lacks " << wisa_name(GetParam());
    }
    void TearDown() override { wgemm_set_isa(saved_); }
    WIsa saved_ = WIsa::scalar;
};

TEST_P(WgemmTest, MatchesReferenceOnOddShapes) {
    Rng r(7);
    const int shapes[][3] = {{1, 1, 1},  {1, 17, 33}, {2, 31, 15}, {3, 64, 47},
                             {4, 9, 100}, {7, 70, 129}, {33, 65, 31}, {1, 300, 1000},
                             {5, 300, 70}, {9, 257, 64}, {11, 40, 600}};  // several panels, K blocks
    for (WType t : {WType::f32, WType::bf16, WType::f16})
        for (auto& s : shapes)
            for (bool acc : {false, true}) {
                const int M = s[0], N = s[1], K = s[2];
                TypedMatrix w = make_matrix(t, N, K, 100 + N * K);
                const int ldx = K + 3, ldy = N + 5;  // strided rows, as the engine uses them
                std::vector<float> x = test::randn((size_t)M * ldx, 200 + M);
                std::vector<float> y = test::randn((size_t)M * ldy, 300), y_ref = y;
                wgemm(y.data(), ldy, x.data(), ldx, w.view(), M, acc);
                wgemm_ref(y_ref.data(), ldy, x.data(), ldx, w.view(), M, acc);
                SCOPED_TRACE(::testing::Message() << wtype_name(t) << " M=" << M << " N=" << N
                                                  << " K=" << K << " acc=" << acc);
                // fp32 sums of K products against double: error grows like sqrt(K) eps |x||w|
                EXPECT_TRUE(test::all_close(y, y_ref, 1e-4, 2e-5 * std::sqrt((double)K)));
            }
}

TEST_P(WgemmTest, DecodeKernelIsDeterministicAndIndependentOfThreads) {
    TypedMatrix w = make_matrix(WType::bf16, 257, 515, 5);
    std::vector<float> x = test::randn(515, 6), y1(257), y2(257);
    wgemm(y1.data(), 257, x.data(), 515, w.view(), 1);
    wgemm(y2.data(), 257, x.data(), 515, w.view(), 1);
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * 4));
}

// wgemm_batch: several products in one parallel region give the very bits of wgemm on each in
// turn, whatever thread computes which piece: mixed types (q8_0 too), decode and prefill sizes,
// jobs sharing one input (quantised once), = and +=, one thread and two.
TEST_P(WgemmTest, BatchEqualsProductsOneByOne) {
    struct Spec { WType t; int M, N, K; int input; bool acc; };
    const Spec specs[] = {{WType::f32, 13, 300, 64, 0, false},  {WType::bf16, 13, 130, 64, 0, true},
                          {WType::q8_0, 13, 257, 64, 0, false}, {WType::q8_0, 13, 40, 64, 0, true},
                          {WType::f16, 1, 515, 96, 1, false},   {WType::q8_0, 1, 200, 96, 1, false},
                          {WType::q8_0, 2, 70, 96, 2, true},    {WType::f16, 5, 33, 96, 3, false}};
    const int n = (int)(sizeof(specs) / sizeof(specs[0]));
    std::vector<std::vector<uint8_t>> wbytes(n);
    std::vector<WeightView> views(n);
    for (int j = 0; j < n; j++) {
        const Spec& s = specs[j];
        if (s.t == WType::q8_0) {
            std::vector<float> v = test::randn((size_t)s.N * s.K, 40 + j);
            wbytes[j].resize((size_t)s.N * (s.K / 32) * kQ8BlockBytes);
            for (int r = 0; r < s.N; r++)
                quantize_row_q8_0(&v[(size_t)r * s.K], s.K, &wbytes[j][(size_t)r * (s.K / 32) * kQ8BlockBytes]);
        } else {
            wbytes[j] = make_matrix(s.t, s.N, s.K, 40 + j).bytes;
        }
        views[j] = {s.t, s.N, s.K, wbytes[j].data()};
    }
    // four inputs (row stride 100: every K fits), each product its own output
    std::vector<std::vector<float>> xs(4);
    for (int i = 0; i < 4; i++) xs[i] = test::randn(13 * 100, 50 + i);
    std::vector<std::vector<float>> y0(n);
    for (int j = 0; j < n; j++) y0[j] = test::randn((size_t)specs[j].M * (specs[j].N + 1), 60 + j);
    auto jobs_for = [&](std::vector<std::vector<float>>& ys) {
        std::vector<WgemmJob> jobs;
        for (int j = 0; j < n; j++)
            jobs.push_back({ys[j].data(), specs[j].N + 1, xs[specs[j].input].data(), 100, views[j],
                            specs[j].M, specs[j].acc});
        return jobs;
    };
    std::vector<std::vector<float>> one = y0;
    for (const WgemmJob& J : jobs_for(one)) wgemm(J.y, J.ldy, J.x, J.ldx, J.w, J.M, J.accumulate);
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2}) {
        std::vector<std::vector<float>> batch = y0;
        std::vector<WgemmJob> jobs = jobs_for(batch);
        omp_set_num_threads(threads);
        wgemm_batch(jobs.data(), n);
        omp_set_num_threads(saved);
        for (int j = 0; j < n; j++)
            EXPECT_EQ(0, std::memcmp(one[j].data(), batch[j].data(), one[j].size() * 4))
                << "job " << j << " (" << wtype_name(specs[j].t) << " M=" << specs[j].M
                << ") threads=" << threads;
    }
}

// The AVX-512 prefill kernel (8 x 32 tiles on the AVX2 kernel's panels) gives the AVX2 kernel's
// bits: the same FMA chain per output (F32, F16; BF16 too where the CPU lacks BF16 dot products).
TEST(WgemmAvx512, PrefillEqualsTheAvx2KernelBitForBit) {
    const WIsa saved = wgemm_isa();
    wgemm_set_isa(WIsa::avx512);
    if (wgemm_isa() != WIsa::avx512) GTEST_SKIP() << "this CPU lacks AVX-512";
    wgemm_set_isa(saved);
    const int shapes[][3] = {{4, 9, 100}, {7, 70, 129}, {33, 65, 31}, {17, 300, 520}, {9, 257, 64}};
    for (WType t : {WType::f32, WType::f16, WType::bf16}) {
        if (t == WType::bf16 && bf16_cpu_has_dp()) continue;  // its own kernels (below)
        for (auto& s : shapes)
            for (bool acc : {false, true}) {
                const int M = s[0], N = s[1], K = s[2];
                TypedMatrix w = make_matrix(t, N, K, 400 + N + K);
                std::vector<float> x = test::randn((size_t)M * (K + 1), 401 + M);
                std::vector<float> y = test::randn((size_t)M * (N + 3), 402), y2 = y;
                wgemm_set_isa(WIsa::avx512);
                wgemm(y.data(), N + 3, x.data(), K + 1, w.view(), M, acc);
                wgemm_set_isa(WIsa::avx2);
                wgemm(y2.data(), N + 3, x.data(), K + 1, w.view(), M, acc);
                wgemm_set_isa(saved);
                EXPECT_EQ(0, std::memcmp(y.data(), y2.data(), y.size() * 4))
                    << wtype_name(t) << " M=" << M << " N=" << N << " K=" << K << " acc=" << acc;
            }
    }
}

// BF16 weights on a CPU with AVX-512 BF16 (vdpbf16ps on bf16-rounded inputs): prefill (M >= 4,
// packed pairs) and decode (one row at a time) multiply the same rounded inputs, so they agree to
// fp32 rounding; and against the fp32-input product the difference is the inputs' rounding
// (at most 2^-9 of each |x|, so of sum |x||w|).
TEST(WgemmBf16Dot, PrefillEqualsDecodeAndTheInputsRoundingIsBounded) {
    const WIsa saved = wgemm_isa();
    wgemm_set_isa(WIsa::avx512);
    bf16_dot_enable(true);
    const bool on = bf16_dp_active();
    wgemm_set_isa(saved);
    if (!on) {
        bf16_dot_enable(false);
        GTEST_SKIP() << "this CPU lacks AVX-512 BF16";
    }
    const int shapes[][3] = {{6, 16, 32}, {13, 33, 63}, {8, 130, 300}, {20, 257, 1025}};
    for (auto& s : shapes) {
        const int M = s[0], N = s[1], K = s[2];
        TypedMatrix w = make_matrix(WType::bf16, N, K, 500 + K);
        std::vector<float> x = test::randn((size_t)M * K, 501 + M), y((size_t)M * N), yd = y;
        wgemm_set_isa(WIsa::avx512);
        wgemm(y.data(), N, x.data(), K, w.view(), M);
        for (int m = 0; m < M; m++) wgemm(&yd[(size_t)m * N], N, &x[(size_t)m * K], K, w.view(), 1);
        wgemm_set_isa(saved);
        double max_abs = 0;
        for (float v : y) max_abs = std::max(max_abs, (double)std::fabs(v));
        EXPECT_TRUE(test::all_close(y, yd, 0, 1e-6 * max_abs + 1e-6 * std::sqrt((double)K)))
            << "prefill vs decode, M=" << M << " N=" << N << " K=" << K;
        // against the fp32 inputs: each |x_k w_k| moves by at most 2^-9 of itself
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double exact = 0, bound = 0;
                for (int k = 0; k < K; k++) {
                    uint16_t h;
                    std::memcpy(&h, w.bytes.data() + 2 * ((size_t)n * K + k), 2);
                    const double p = (double)x[(size_t)m * K + k] * bf16_to_f32(h);
                    exact += p;
                    bound += std::fabs(p);
                }
                ASSERT_LE(std::fabs(y[(size_t)m * N + n] - exact), bound * (1.0 / 512 + 1e-6))
                    << "m=" << m << " n=" << n << " K=" << K;
            }
    }
    // and against their plain loop on odd shapes (= and +=), as MatchesReferenceOnOddShapes
    for (auto& s : {std::array<int, 3>{4, 9, 100}, {7, 70, 129}, {33, 65, 31}, {1, 300, 1001},
                    {2, 31, 15}, {9, 257, 64}})
        for (bool acc : {false, true}) {
            const int M = s[0], N = s[1], K = s[2];
            TypedMatrix w = make_matrix(WType::bf16, N, K, 600 + N * K);
            std::vector<float> x = test::randn((size_t)M * (K + 3), 601 + M);
            std::vector<float> y = test::randn((size_t)M * (N + 5), 602), y_ref = y;
            wgemm_set_isa(WIsa::avx512);
            wgemm(y.data(), N + 5, x.data(), K + 3, w.view(), M, acc);
            wgemm_set_isa(saved);
            bf16_gemm_ref(y_ref.data(), N + 5, x.data(), K + 3, w.view(), M, acc);
            EXPECT_TRUE(test::all_close(y, y_ref, 1e-4, 2e-5 * std::sqrt((double)K)))
                << "M=" << M << " N=" << N << " K=" << K << " acc=" << acc;
        }
    bf16_dot_enable(false);
}

INSTANTIATE_TEST_SUITE_P(Isa, WgemmTest,
                         ::testing::Values(WIsa::scalar, WIsa::avx2, WIsa::avx512),
                         [](const auto& info) { return std::string(wisa_name(info.param)); });

TEST(TypedConversions, F16RoundTripsEveryValue) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = f16_to_f32((uint16_t)h);
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
            continue;
        }
        ASSERT_EQ(h, f32_to_f16(f)) << "half 0x" << std::hex << h << " = " << f;
    }
}

TEST(TypedConversions, KnownValues) {
    EXPECT_EQ(1.0f, f16_to_f32(0x3c00));
    EXPECT_EQ(-2.0f, f16_to_f32(0xc000));
    EXPECT_EQ(65504.0f, f16_to_f32(0x7bff));
    EXPECT_EQ(std::ldexp(1.0f, -24), f16_to_f32(0x0001));  // the least subnormal
    EXPECT_EQ(0x7c00, f32_to_f16(65520.f));                // rounds up past the largest: inf
    EXPECT_EQ(0x7bff, f32_to_f16(65519.f));
    EXPECT_EQ(0x3c00, f32_to_f16(1.0f + std::ldexp(1.0f, -11)));  // tie to even: down
    EXPECT_EQ(0x3c02, f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)));  // tie to even: up
    EXPECT_EQ(0x3f80, f32_to_bf16(1.0f));
    EXPECT_EQ(0x3f80, f32_to_bf16(1.0f + std::ldexp(1.0f, -8)));      // tie: even (down)
    EXPECT_EQ(0x3f82, f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)));  // tie: even (up)
    EXPECT_EQ(1.0f, bf16_to_f32(0x3f80));
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(TypedConversions, WidenRowsMatchesScalar) {
    for (WType t : {WType::f32, WType::bf16, WType::f16}) {
        TypedMatrix w = make_matrix(t, 5, 37, 9);
        std::vector<float> out(3 * 37);
        widen_rows(out.data(), w.view(), 2, 3);
        for (int r = 0; r < 3; r++)
            for (int k = 0; k < 37; k++) {
                const uint8_t* p = w.view().row(2 + r) + k * wtype_size(t);
                float want;
                uint16_t h;
                if (t == WType::f32) std::memcpy(&want, p, 4);
                if (t != WType::f32) std::memcpy(&h, p, 2);
                if (t == WType::bf16) want = bf16_to_f32(h);
                if (t == WType::f16) want = f16_to_f32(h);
                EXPECT_EQ(want, out[r * 37 + k]);
            }
    }
}

}  // namespace
}  // namespace moe
