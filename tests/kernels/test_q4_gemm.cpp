// Q4_0 weights: the format against GGML's definition (written out here as a plain loop: the
// first value of largest |x| sets d = m / -8, q = min(15, trunc(x / d + 8.5)), nibbles low for
// values 0..15 and high for 16..31), an all-zero block and ties; the decode kernels (scalar,
// AVX2) against the plain reference wgemm_ref within the activation-quantisation bound and
// against each other; the prefill kernel against its plain loop bit for bit and against decode
// row by row.
#include <omp.h>

#include <cstring>

#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "test_util.h"

namespace moe {
namespace {

struct Q4Matrix {
    int rows, cols;
    std::vector<uint8_t> blocks;  // GGML block_q4_0
    std::vector<uint8_t> split_bytes;  // the same, split: nibbles [rows, cols / 2], then scales
    WeightView view() const { return {WType::q4_0, rows, cols, blocks.data()}; }
    WeightView split() const {
        return {WType::q4_0, rows, cols, split_bytes.data(),
                split_bytes.data() + (size_t)rows * cols / 2};
    }
};

Q4Matrix make_q4(int rows, int cols, uint64_t seed) {
    std::vector<float> v = test::randn((size_t)rows * cols, seed);
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < cols; k++) v[(size_t)r * cols + k] *= std::ldexp(1.0f, (r % 7) - 3);
    if (rows > 1) std::fill(v.begin() + cols, v.begin() + cols + 32, 0.f);  // d = 0: zeros
    Q4Matrix m{rows, cols, std::vector<uint8_t>((size_t)rows * (cols / 32) * kQ4BlockBytes), {}};
    for (int r = 0; r < rows; r++)
        quantize_row_q4_0(&v[(size_t)r * cols], cols,
                          m.blocks.data() + (size_t)r * (cols / 32) * kQ4BlockBytes);
    m.split_bytes = m.blocks;
    ggml_blocks_to_split(WType::q4_0, m.split_bytes.data(), rows, cols);
    return m;
}

// The definition, value by value (q as ints 0..15 in element order).
void definition(const float* x, float* d, int* q) {
    float amax = 0, m = 0;
    for (int i = 0; i < 32; i++)
        if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), m = x[i];
    *d = m / -8.f;
    const float id = *d != 0.f ? 1.f / *d : 0.f;
    for (int i = 0; i < 32; i++) q[i] = std::min(15, (int)(int8_t)(x[i] * id + 8.5f));
}

TEST(Q4Format, BlockFollowsTheDefinition) {
    std::vector<std::vector<float>> cases;
    std::vector<float> x(32);
    for (int i = 0; i < 32; i++) x[i] = 0.37f * (float)(i - 13);  // max |x| at i = 31 (positive)
    cases.push_back(x);
    // d = 1: x + 8.5 lands on integers and halfway points (-7.5 + 8.5 = 1: truncation, no
    // rounding to even)
    for (int i = 0; i < 32; i++) x[i] = -8.f + 0.5f * (float)i;
    cases.push_back(x);
    for (int i = 0; i < 32; i++) x[i] = (i % 2 ? 1.f : -1.f) * 2.f;  // equal |x|: the first wins
    cases.push_back(x);
    cases.push_back(std::vector<float>(32, 0.f));  // all zero: d = 0, every q = 8
    for (auto& c : cases) {
        float d;
        int q[32];
        definition(c.data(), &d, q);
        uint8_t blk[kQ4BlockBytes];
        quantize_row_q4_0(c.data(), 32, blk);
        uint16_t dbits;
        std::memcpy(&dbits, blk, 2);
        EXPECT_EQ(f32_to_f16(d), dbits);
        for (int j = 0; j < 16; j++) {
            EXPECT_EQ(q[j], blk[2 + j] & 15) << "j=" << j;
            EXPECT_EQ(q[j + 16], blk[2 + j] >> 4) << "j=" << j + 16;
        }
        float y[32];
        dequantize_row_q4_0(blk, 32, y);
        for (int i = 0; i < 32; i++) EXPECT_EQ(f16_to_f32(dbits) * (float)(q[i] - 8), y[i]);
    }
    // spot values. Case 2: the first of the equal |x| is x0 = -2, so d = 0.25 (positive) and
    // x = -2 -> q = 0 (x0 and x16), x = 2 -> 16.5 truncated to 16, clamped to 15 (x1 and x17).
    uint8_t blk[kQ4BlockBytes];
    quantize_row_q4_0(cases[2].data(), 32, blk);
    EXPECT_EQ(0x00, blk[2]);
    EXPECT_EQ(0xff, blk[3]);
    uint16_t h;
    std::memcpy(&h, blk, 2);
    EXPECT_EQ(0.25f, f16_to_f32(h));
    // Case 1: d = 1; x1 = -7.5 -> trunc(1.0) = 1, x2 = -7 -> trunc(1.5) = 1, x3 -> 2.
    quantize_row_q4_0(cases[1].data(), 32, blk);
    EXPECT_EQ(0x80, blk[2]);  // x0 = -8 -> 0, x16 = 0 -> trunc(8.5) = 8
    EXPECT_EQ(1, blk[3] & 15);
    EXPECT_EQ(1, blk[4] & 15);
    EXPECT_EQ(2, blk[5] & 15);
    uint8_t zero[kQ4BlockBytes];
    quantize_row_q4_0(cases[3].data(), 32, zero);
    for (int j = 0; j < 16; j++) EXPECT_EQ(0x88, zero[2 + j]);
    EXPECT_EQ(18u, wtype_row_bytes(WType::q4_0, 32));
}

TEST(Q4Format, RoundTripErrorIsHalfAStepPlusTheScaleRounding) {
    for (int k : {32, 64, 352}) {
        std::vector<float> x = test::randn(k, 10 + k, 3.f);
        std::vector<uint8_t> blocks((k / 32) * kQ4BlockBytes);
        std::vector<float> y(k);
        quantize_row_q4_0(x.data(), k, blocks.data());
        dequantize_row_q4_0(blocks.data(), k, y.data());
        for (int b = 0; b < k / 32; b++) {
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = std::max(amax, std::fabs(x[b * 32 + i]));
            const double d = amax / 8.0;
            uint16_t h;
            std::memcpy(&h, &blocks[b * kQ4BlockBytes], 2);
            const double d16 = std::fabs(f16_to_f32(h));
            // q - 8 = round(x / d) in [-8, 8] (8 clamped to 7: the side opposite m, at most
            // d away); the stored d16 moves d (q - 8) by |d16 - d| * 8
            const double bound = d + 8 * std::fabs(d16 - d) + 1e-6 * amax;
            for (int i = 0; i < 32; i++) {
                const int idx = b * 32 + i;
                EXPECT_LE(std::fabs((double)y[idx] - x[idx]), bound) << "k=" << k << " i=" << idx;
            }
        }
    }
}

// Widening (embeddings, references) is dequantize_row_q4_0 row by row.
TEST(Q4Format, WidenRowsIsTheDequantiser) {
    Q4Matrix m = make_q4(9, 96, 3);
    std::vector<float> a(9 * 96), c(96);
    widen_rows(a.data(), m.view(), 0, 9);
    for (int r = 0; r < 9; r++) {
        dequantize_row_q4_0(m.blocks.data() + r * 3 * kQ4BlockBytes, 96, c.data());
        EXPECT_EQ(0, std::memcmp(c.data(), &a[r * 96], 96 * 4)) << "row " << r;
    }
    for (int k = 0; k < 32; k++) EXPECT_EQ(0.f, a[96 + k]);  // the zero block
    EXPECT_EQ(m.view().row(2), m.blocks.data() + 2 * 3 * kQ4BlockBytes);
}

class Q4Isa : public ::testing::TestWithParam<WIsa> {
   protected:
    void SetUp() override {
        saved_ = wgemm_isa();
        wgemm_set_isa(GetParam());
        if (wgemm_isa() != GetParam()) GTEST_SKIP() << "this CPU lacks " << wisa_name(GetParam());
        if (GetParam() == WIsa::avx512 && !q8_cpu_has_vnni())
            GTEST_SKIP() << "this CPU has AVX-512 but not VNNI";
    }
    void TearDown() override { wgemm_set_isa(saved_); }
    WIsa saved_ = WIsa::scalar;
};

// |y - y_ref| <= sum_b |d_b| sum_i |q_i - 8| dx_b / 2 (the activations' quantisation), plus
// fp32 rounding of the sums.
TEST_P(Q4Isa, DecodeMatchesReferenceWithinTheActivationBound) {
    const int shapes[][3] = {{1, 1, 32}, {1, 7, 64}, {2, 33, 96}, {3, 65, 160}, {1, 300, 1056}};
    for (auto& s : shapes)
        for (bool acc : {false, true}) {
            const int M = s[0], N = s[1], K = s[2];
            Q4Matrix m = make_q4(N, K, 100 + N + K);
            const WeightView w = m.view();
            const int ldx = K + 3, ldy = N + 5;
            std::vector<float> x = test::randn((size_t)M * ldx, 200 + M);
            std::vector<float> y = test::randn((size_t)M * ldy, 300), y_ref = y;
            wgemm(y.data(), ldy, x.data(), ldx, w, M, acc);
            wgemm_ref(y_ref.data(), ldy, x.data(), ldx, w, M, acc);
            std::vector<float> wf((size_t)N * K);
            widen_rows(wf.data(), w, 0, N);
            const Q8Rows R = q8_rows(w);
            double e2 = 0, y2 = 0;
            for (int mi = 0; mi < M; mi++)
                for (int n = 0; n < N; n++) {
                    double bound = 0, mag = 0;
                    for (int b = 0; b < K / 32; b++) {
                        const float db = f16_to_f32(R.scale_bits(n, b));
                        double amax = 0, qsum = 0;
                        for (int i = 0; i < 32; i++) {
                            const int k = b * 32 + i;
                            amax = std::max(amax, (double)std::fabs(x[mi * ldx + k]));
                            qsum += db != 0.f ? std::fabs(wf[(size_t)n * K + k] / db) : 0.0;
                            mag += std::fabs((double)wf[(size_t)n * K + k] * x[mi * ldx + k]);
                        }
                        bound += std::fabs(db) * qsum * amax / 254;
                    }
                    bound = bound * (1 + 1e-5) + 1e-5 * mag + 1e-6 * std::fabs(y_ref[0]);
                    const size_t at = (size_t)mi * ldy + n;
                    ASSERT_LE(std::fabs((double)y[at] - y_ref[at]), bound)
                        << "M=" << M << " N=" << N << " K=" << K << " acc " << acc << " at m=" << mi
                        << " n=" << n << ": " << y[at] << " vs " << y_ref[at];
                    e2 += std::pow((double)y[at] - y_ref[at], 2);
                    y2 += std::pow((double)y_ref[at], 2);
                }
            if (N * M >= 30 && !acc) {
                EXPECT_LT(std::sqrt(e2 / y2), 0.02) << "N=" << N << " K=" << K;
            }
        }
}

TEST_P(Q4Isa, AgreesWithTheScalarKernel) {
    for (int K : {32, 64, 96, 256, 288, 1056}) {  // the eight-block steps and their tails
        Q4Matrix m = make_q4(13, K, 7 + K);
        std::vector<float> x = test::randn(K, 8);
        std::vector<int8_t> qx(K);
        std::vector<float> dx(K / 32);
        q8_quantize_activation(x.data(), K, qx.data(), dx.data());
        const Q8Rows R = q8_rows(m.view());
        const int kern = GetParam() == WIsa::avx512 ? 2 : GetParam() == WIsa::scalar ? 0 : 1;
        std::vector<float> wf(K);
        for (int r = 0; r < 13; r++) {
            const float a = q4_dot_row(kern, R, r, qx.data(), dx.data(), K);
            const float b = q4_dot_row(0, R, r, qx.data(), dx.data(), K);
            // the integer sums are exact in both: compare with the sum done here in double
            widen_rows(wf.data(), m.view(), r, 1);
            double want = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                want += (double)wf[k] * dx[k / 32] * qx[k];
                mag += std::fabs((double)wf[k] * dx[k / 32] * qx[k]);
            }
            EXPECT_NEAR(a, b, 1e-6 * mag + 1e-30) << "K=" << K << " row " << r;
            EXPECT_NEAR(b, want, 1e-6 * mag + 1e-30) << "K=" << K << " row " << r;
        }
    }
}

// The prefill kernel against its plain loop, bit for bit (odd M, N across panel and chunk
// edges, K across the 256-column passes, = and +=, one thread and two).
TEST_P(Q4Isa, PrefillKernelEqualsItsReferenceBitForBit) {
    const int shapes[][3] = {{1, 1, 32},     {4, 15, 64},   {5, 17, 288}, {7, 130, 256},
                             {13, 257, 544}, {37, 33, 96}, {6, 144, 1024}};
    const int saved = omp_get_max_threads();
    for (auto& s : shapes) {
        const int M = s[0], N = s[1], K = s[2];
        Q4Matrix m = make_q4(N, K, 90 + N + K);
        for (bool acc : {false, true})
            for (int threads : {1, 2}) {
                std::vector<float> x = test::randn((size_t)M * (K + 3), 91 + M);
                std::vector<float> y0 = test::randn((size_t)M * (N + 2), 92), y = y0, y_ref = y0;
                omp_set_num_threads(threads);
                q8_gemm_prefill(y.data(), N + 2, x.data(), K + 3, m.view(), M, acc);
                omp_set_num_threads(saved);
                q8_gemm_prefill_ref(y_ref.data(), N + 2, x.data(), K + 3, m.view(), M, acc);
                EXPECT_EQ(0, std::memcmp(y.data(), y_ref.data(), y.size() * 4))
                    << "M=" << M << " N=" << N << " K=" << K << " acc=" << acc
                    << " threads=" << threads;
            }
    }
}

// Prefill (M >= 4) and decode (M = 1) compute the same products: equal up to fp32 rounding.
TEST_P(Q4Isa, PrefillEqualsDecodeRowByRow) {
    for (int K : {32, 160, 1024}) {
        const int M = 6, N = 37;
        Q4Matrix m = make_q4(N, K, 70 + K);
        std::vector<float> x = test::randn((size_t)M * K, 80 + K), yp(M * N), yd(N), wf(K);
        wgemm(yp.data(), N, x.data(), K, m.view(), M);
        for (int r = 0; r < M; r++) {
            wgemm(yd.data(), N, &x[(size_t)r * K], K, m.view(), 1);
            std::vector<int8_t> q(K);
            std::vector<float> dx(K / 32);
            q8_quantize_activation(&x[(size_t)r * K], K, q.data(), dx.data());
            for (int n = 0; n < N; n++) {
                widen_rows(wf.data(), m.view(), n, 1);
                double mag = 0;
                for (int k = 0; k < K; k++) mag += std::fabs((double)wf[k] * dx[k / 32] * q[k]);
                ASSERT_NEAR(yd[n], yp[(size_t)r * N + n], 4e-6 * mag + 1e-30)
                    << "K=" << K << " row " << r << " n " << n;
            }
        }
    }
}

// The split layout (`moe quantize --type int4`, a GGUF's Q4_0 copied into huge pages) holds the
// same blocks: every kernel gives the GGML layout's bits on it, prefill and decode.
TEST_P(Q4Isa, SplitLayoutGivesTheSameBits) {
    for (int K : {32, 96, 288, 1056})
        for (int M : {1, 2, 6}) {
            const int N = 37;
            Q4Matrix m = make_q4(N, K, 170 + K);
            std::vector<float> x = test::randn((size_t)M * K, 180 + K), a(M * N), b(M * N);
            wgemm(a.data(), N, x.data(), K, m.view(), M);
            wgemm(b.data(), N, x.data(), K, m.split(), M);
            EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << "M=" << M << " K=" << K;
            std::vector<float> wa((size_t)N * K), wb((size_t)N * K);
            widen_rows(wa.data(), m.view(), 0, N);
            widen_rows(wb.data(), m.split(), 0, N);
            EXPECT_EQ(0, std::memcmp(wa.data(), wb.data(), wa.size() * 4)) << "K=" << K;
        }
}

INSTANTIATE_TEST_SUITE_P(Isa, Q4Isa, ::testing::Values(WIsa::scalar, WIsa::avx2, WIsa::avx512),
                         [](const auto& info) { return std::string(wisa_name(info.param)); });

}  // namespace
}  // namespace moe
