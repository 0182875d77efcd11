// wgemm (weights in F32/BF16/F16, widened on the fly) against the plain double-accumulating
// reference, on random odd shapes, for every kernel this CPU can run (AVX-512, AVX2, scalar) and
// both paths (decode M < 4, panel + sgemm M >= 4); and the float <-> bf16/f16 conversions.
#include <cstring>

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
