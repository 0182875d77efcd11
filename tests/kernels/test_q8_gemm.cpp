// Q8_0 weights: the format (quantise / dequantise against its definition, both memory layouts),
// the decode kernels (scalar, AVX2, AVX-512 VNNI where the CPU has it) against the plain
// reference wgemm_ref with the bound that quantising the activations allows, the ISAs against
// each other, and the prefill kernel (integer block sums on int16 panels) against its plain loop
// bit for bit and against the reference on rounded inputs.
#include <omp.h>

#include <cstring>

#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "moe/rng.h"
#include "test_util.h"

namespace moe {
namespace {

// A q8_0 matrix in both layouts from the same values.
struct Q8Matrix {
    int rows, cols;
    std::vector<uint8_t> blocks;  // GGML block_q8_0
    std::vector<int8_t> q;        // split: values
    std::vector<uint16_t> d;      // split: scales
    WeightView ggml() const { return {WType::q8_0, rows, cols, blocks.data()}; }
    WeightView split() const { return {WType::q8_0, rows, cols, q.data(), d.data()}; }
};

Q8Matrix make_q8(int rows, int cols, uint64_t seed) {
    std::vector<float> v = test::randn((size_t)rows * cols, seed);
    // rows of very different scales, and one all-zero block: d = 0 must give zeros
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < cols; k++) v[(size_t)r * cols + k] *= std::ldexp(1.0f, (r % 7) - 3);
    if (rows > 1) std::fill(v.begin() + cols, v.begin() + cols + 32, 0.f);
    Q8Matrix m{rows, cols, {}, {}, {}};
    m.blocks.resize((size_t)rows * (cols / 32) * kQ8BlockBytes);
    m.q.resize(v.size());
    m.d.resize(v.size() / 32);
    for (int r = 0; r < rows; r++)
        quantize_row_q8_0(&v[(size_t)r * cols], cols,
                          m.blocks.data() + (size_t)r * (cols / 32) * kQ8BlockBytes);
    for (size_t b = 0; b < v.size() / 32; b++)
        m.d[b] = quantize_block_q8_0(&v[b * 32], &m.q[b * 32]);
    return m;
}

TEST(Q8Format, BlockFollowsTheDefinition) {
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = 0.37f * (float)(i - 13);  // max |x| = 0.37 * 18 at i = 31
    uint8_t blk[kQ8BlockBytes];
    quantize_row_q8_0(x, 32, blk);
    uint16_t dbits;
    std::memcpy(&dbits, blk, 2);  // d first, then the 32 int8
    const float amax = 0.37f * 18.f;
    EXPECT_EQ(f32_to_f16(amax / 127.f), dbits);
    // GGML's definition: id = 1 / d in fp32, q = roundf(x * id) (half away from zero); the
    // values here hit exact ties (x * id = +-63.5), where x / d could round the other way.
    const float id = 1.f / (amax / 127.f);
    for (int i = 0; i < 32; i++) {
        const int want = (int)std::lround(x[i] * id);
        EXPECT_EQ(want, (int)(int8_t)blk[2 + i]) << "i=" << i;
    }
    EXPECT_EQ(127, (int)(int8_t)blk[2 + 31]);
    EXPECT_EQ(-92, (int)(int8_t)blk[2 + 0]);  // -13 * 127 / 18 = -91.7
}

TEST(Q8Format, RoundTripErrorIsHalfAStepPlusTheScaleRounding) {
    for (int k : {32, 64, 352}) {
        std::vector<float> x = test::randn(k, 10 + k, 3.f);
        x[5] = 0;                                                               // zeros stay zeros
        for (int i = 32; i < 64 && i < k; i++) x[i] = 1e-3f * (float)(i - 40);  // small block
        std::vector<uint8_t> blocks((k / 32) * kQ8BlockBytes);
        std::vector<float> y(k);
        quantize_row_q8_0(x.data(), k, blocks.data());
        dequantize_row_q8_0(blocks.data(), k, y.data());
        for (int b = 0; b < k / 32; b++) {
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = std::max(amax, std::fabs(x[b * 32 + i]));
            const double d = amax / 127.0;
            uint16_t h;
            std::memcpy(&h, &blocks[b * kQ8BlockBytes], 2);
            const double d16 = f16_to_f32(h);
            // q = round(x / d): |x - d q| <= d / 2; the stored d16 moves d q by |d16 - d| |q|
            const double bound = 0.5 * d + 127 * std::fabs(d16 - d) + 1e-7 * amax;
            int qmax = 0;
            for (int i = 0; i < 32; i++) {
                const int idx = b * 32 + i;
                EXPECT_LE(std::fabs((double)y[idx] - x[idx]), bound) << "k=" << k << " i=" << idx;
                qmax = std::max(qmax, std::abs((int)(int8_t)blocks[b * kQ8BlockBytes + 2 + i]));
            }
            EXPECT_EQ(amax > 0 ? 127 : 0, qmax) << "block " << b;  // the largest value maps to 127
        }
        EXPECT_EQ(0.f, y[5]);
    }
}

TEST(Q8Format, BothLayoutsWidenToTheSameValues) {
    Q8Matrix m = make_q8(9, 96, 3);
    std::vector<float> a(9 * 96), b(9 * 96), c(96);
    q8_widen_rows(a.data(), m.ggml(), 0, 9);
    q8_widen_rows(b.data(), m.split(), 0, 9);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
    dequantize_row_q8_0(m.blocks.data() + 4 * 3 * kQ8BlockBytes, 96, c.data());
    EXPECT_EQ(0, std::memcmp(c.data(), &a[4 * 96], 96 * 4));
    for (int k = 0; k < 32; k++) EXPECT_EQ(0.f, a[96 + k]);  // the zero block
    EXPECT_EQ(m.ggml().row(2), m.blocks.data() + 2 * 3 * kQ8BlockBytes);
    EXPECT_EQ(m.split().row(2), (const uint8_t*)m.q.data() + 2 * 96);
    EXPECT_EQ(3 * kQ8BlockBytes, wtype_row_bytes(WType::q8_0, 96));
}

// The loaders' in-place rewrite of GGML blocks (kernels/q8_gemm.h): exactly make_q8's split
// arrays, values then scales, in the same bytes.
TEST(Q8Format, BlocksRewrittenInPlaceAreTheSplitLayout) {
    for (int K : {32, 96, 1056}) {
        Q8Matrix m = make_q8(7, K, 40 + K);
        std::vector<uint8_t> p = m.blocks;
        ggml_blocks_to_split(WType::q8_0, p.data(), 7, K);
        EXPECT_EQ(0, std::memcmp(p.data(), m.q.data(), m.q.size())) << K;
        EXPECT_EQ(0, std::memcmp(p.data() + m.q.size(), m.d.data(), m.d.size() * 2)) << K;
    }
}

// The ISAs: 0 scalar, 1 AVX2, 2 AVX-512 VNNI (each test skips what this CPU lacks).
class Q8Isa : public ::testing::TestWithParam<WIsa> {
   protected:
    void SetUp() override {
        saved_ = wgemm_isa();
        wgemm_set_isa(GetParam());
        if (wgemm_isa() != GetParam()) GTEST_SKIP() << "this CPU lacks " << wisa_name(GetParam());
        if (GetParam() == WIsa::avx512 && !q8_cpu_has_vnni())
            GTEST_SKIP() << "this CPU has AVX-512 but not VNNI";
    }
    void TearDown() override { wgemm_set_isa(saved_); }
    int kern() const { return GetParam() == WIsa::avx512 ? 2 : GetParam() == WIsa::avx2 ? 1 : 0; }
    WIsa saved_ = WIsa::scalar;
};

// The decode kernel computes sum_b dw dx sum_i qw qx exactly up to fp32 rounding; against the
// exact product it differs by the activations' quantisation, |x - dx qx| <= dx / 2 per value:
//   |y - y_ref| <= sum_b |dw_b| sum_i |qw_i| dx_b / 2  (+ fp32 rounding of the sums)
TEST_P(Q8Isa, DecodeMatchesReferenceWithinTheActivationBound) {
    const int shapes[][3] = {{1, 1, 32},     {1, 7, 64},  {2, 33, 96}, {3, 65, 160},
                             {1, 300, 1056}, {2, 17, 32}, {3, 5, 4096}};
    for (auto& s : shapes)
        for (int layout = 0; layout < 2; layout++)
            for (bool acc : {false, true}) {
                const int M = s[0], N = s[1], K = s[2];
                Q8Matrix m = make_q8(N, K, 100 + N + K);
                const WeightView w = layout ? m.split() : m.ggml();
                const int ldx = K + 3, ldy = N + 5;
                std::vector<float> x = test::randn((size_t)M * ldx, 200 + M);
                std::vector<float> y = test::randn((size_t)M * ldy, 300), y_ref = y;
                wgemm(y.data(), ldy, x.data(), ldx, w, M, acc);
                wgemm_ref(y_ref.data(), ldy, x.data(), ldx, w, M, acc);
                std::vector<float> wf((size_t)N * K);
                widen_rows(wf.data(), w, 0, N);
                const Q8Rows R = q8_rows(w);
                for (int mi = 0; mi < M; mi++)
                    for (int n = 0; n < N; n++) {
                        double bound = 0, mag = 0;
                        for (int b = 0; b < K / 32; b++) {
                            double amax = 0, qsum = 0;
                            for (int i = 0; i < 32; i++) {
                                const int k = b * 32 + i;
                                amax = std::max(amax, (double)std::fabs(x[mi * ldx + k]));
                                qsum += std::abs((int)R.qs(n, b)[i]);
                                mag += std::fabs((double)wf[(size_t)n * K + k] * x[mi * ldx + k]);
                            }
                            bound += std::fabs(f16_to_f32(R.scale_bits(n, b))) * qsum * amax / 254;
                        }
                        bound = bound * (1 + 1e-5) + 1e-5 * mag + 1e-6 * std::fabs(y_ref[0]);
                        const size_t at = (size_t)mi * ldy + n;
                        ASSERT_LE(std::fabs((double)y[at] - y_ref[at]), bound)
                            << "M=" << M << " N=" << N << " K=" << K << " layout " << layout
                            << " acc " << acc << " at m=" << mi << " n=" << n << ": " << y[at]
                            << " vs " << y_ref[at];
                    }
                // The bound is a worst case; typically the rounding errors cancel: the rms error
                // is about (max|x| / 127) / sqrt(12) per value relative to an rms |x| of 1, i.e.
                // under 1% of the outputs' rms here (2% allowed). A wrong scale or block is 10x
                // off.
                double e2 = 0, y2 = 0;
                for (int mi = 0; mi < M; mi++)
                    for (int n = 0; n < N; n++) {
                        const size_t at = (size_t)mi * ldy + n;
                        e2 += std::pow((double)y[at] - y_ref[at], 2);
                        y2 += std::pow((double)y_ref[at], 2);
                    }
                if (N * M >= 30 && !acc) {
                    EXPECT_LT(std::sqrt(e2 / y2), 0.02) << "N=" << N << " K=" << K;
                }
            }
}

// Every ISA computes the same integer sums; only the fp32 order of the block sums differs.
TEST_P(Q8Isa, AgreesWithTheScalarKernel) {
    for (int K : {32, 64, 96, 1056}) {
        Q8Matrix m = make_q8(13, K, 7 + K);
        std::vector<float> x = test::randn(K, 8);
        std::vector<int8_t> qx(K);
        std::vector<float> dx(K / 32);
        q8_quantize_activation(x.data(), K, qx.data(), dx.data());
        for (const WeightView& w : {m.ggml(), m.split()}) {
            const Q8Rows R = q8_rows(w);
            for (int r = 0; r < 13; r++) {
                const float a = q8_dot_row(kern(), R, r, qx.data(), dx.data(), K);
                const float b = q8_dot_row(0, R, r, qx.data(), dx.data(), K);
                double mag = 0;
                for (int bl = 0; bl < K / 32; bl++) {
                    int32_t s = 0;
                    for (int i = 0; i < 32; i++) s += std::abs(R.qs(r, bl)[i] * qx[bl * 32 + i]);
                    mag += std::fabs(f16_to_f32(R.scale_bits(r, bl)) * dx[bl]) * s;
                }
                EXPECT_NEAR(a, b, 1e-6 * mag + 1e-30) << "K=" << K << " row " << r;
            }
        }
    }
}

// M >= 4: the inputs rounded as decode rounds them (q8_round_activation_rows), the weights widened
// exactly, fp32 FMAs: only fp32 rounding separates it from the double-accumulating reference on
// the rounded inputs.
TEST_P(Q8Isa, PrefillMatchesReferenceOnRoundedInputs) {
    const int shapes[][3] = {{4, 9, 32}, {7, 70, 128}, {33, 65, 96}, {9, 150, 608}};
    for (auto& s : shapes) {
        const int M = s[0], N = s[1], K = s[2];
        Q8Matrix m = make_q8(N, K, 50 + N);
        for (const WeightView& w : {m.ggml(), m.split()}) {
            std::vector<float> x = test::randn((size_t)M * K, 60), xr((size_t)M * K);
            q8_round_activation_rows(xr.data(), K, x.data(), K, M, K);
            std::vector<float> y(M * N), y_ref(M * N);
            wgemm(y.data(), N, x.data(), K, w, M);
            wgemm_ref(y_ref.data(), N, xr.data(), K, w, M);
            EXPECT_TRUE(test::all_close(y, y_ref, 1e-4, 2e-5 * std::sqrt((double)K) * 8))
                << "M=" << M << " N=" << N << " K=" << K;
        }
    }
}

// The AVX2 quantiser (decode's and prefill's) against the plain loop, bit for bit: random rows,
// exact ties (x * id landing on k + 0.5, rounded away from zero), zeros, an all-zero block, huge
// and tiny magnitudes.
TEST(Q8Format, VectorQuantiserEqualsTheReference) {
    // (on a CPU without AVX2 both sides are the plain loop; the tie checks below still bind it)
    for (int K : {32, 64, 1024, 3584}) {
        std::vector<float> x = test::randn(K, 90 + K);
        for (int i = 0; i < K; i += 7) x[i] *= 1e-30f;
        for (int i = 3; i < K; i += 11) x[i] *= 1e30f;
        for (int i = 0; i < 32; i++) x[i] = i == 0 ? 127.f : (float)(i - 16) + 0.5f;  // ties
        if (K >= 64)
            for (int i = 32; i < 64; i++) x[i] = 0.f;
        std::vector<int8_t> qa(K), qb(K);
        std::vector<float> da(K / 32), db(K / 32);
        q8_quantize_activation(x.data(), K, qa.data(), da.data());
        q8_quantize_activation_ref(x.data(), K, qb.data(), db.data());
        EXPECT_EQ(0, std::memcmp(qa.data(), qb.data(), K)) << "K=" << K;
        EXPECT_EQ(0, std::memcmp(da.data(), db.data(), da.size() * 4)) << "K=" << K;
        // block 0 has d = 127 / 127 = 1: x = -14.5, 0.5, 1.5 round away from zero (half to
        // even would give -14, 0, 2)
        EXPECT_EQ(-15, (int)qa[1]);
        EXPECT_EQ(1, (int)qa[16]);
        EXPECT_EQ(2, (int)qa[17]);
    }
}

// The rounded inputs are decode's: per 32-block dx * qx with q8_quantize_activation's dx and qx.
TEST(Q8Format, RoundedActivationsAreDecodesValues) {
    const int M = 3, K = 96, ldx = 100, ldo = 97;
    std::vector<float> x = test::randn((size_t)M * ldx, 21), out((size_t)M * ldo, -7.f);
    x[5] = 0.f;
    for (int i = 32; i < 64; i++) x[ldx + i] = 0.f;  // an all-zero block: dx = 0, values 0
    q8_round_activation_rows(out.data(), ldo, x.data(), ldx, M, K);
    for (int r = 0; r < M; r++) {
        std::vector<int8_t> q(K);
        std::vector<float> dx(K / 32);
        q8_quantize_activation(&x[(size_t)r * ldx], K, q.data(), dx.data());
        for (int i = 0; i < K; i++)
            ASSERT_EQ(dx[i / 32] * (float)q[i], out[(size_t)r * ldo + i]) << "row " << r << " " << i;
        EXPECT_EQ(-7.f, out[(size_t)r * ldo + K]);  // past k: untouched
    }
}

// Prefill (M >= 4) and decode (M = 1, integer dots) compute the same products: a row of the one
// equals the other up to fp32 rounding of the sums, not up to the input quantisation.
TEST_P(Q8Isa, PrefillEqualsDecodeRowByRow) {
    for (int K : {32, 160, 1024}) {
        const int M = 6, N = 37;
        Q8Matrix m = make_q8(N, K, 70 + K);
        for (const WeightView& w : {m.ggml(), m.split()}) {
            std::vector<float> x = test::randn((size_t)M * K, 80 + K), yp(M * N), yd(N);
            wgemm(yp.data(), N, x.data(), K, w, M);
            const Q8Rows R = q8_rows(w);
            for (int r = 0; r < M; r++) {
                wgemm(yd.data(), N, &x[(size_t)r * K], K, w, 1);
                std::vector<int8_t> q(K);
                std::vector<float> dx(K / 32);
                q8_quantize_activation(&x[(size_t)r * K], K, q.data(), dx.data());
                for (int n = 0; n < N; n++) {
                    double mag = 0;  // sum of |products|: the scale of fp32 rounding
                    for (int b = 0; b < K / 32; b++)
                        for (int i = 0; i < 32; i++)
                            mag += std::fabs((double)f16_to_f32(R.scale_bits(n, b)) *
                                             R.qs(n, b)[i] * dx[b] * q[b * 32 + i]);
                    ASSERT_NEAR(yd[n], yp[(size_t)r * N + n], 4e-6 * mag + 1e-30)
                        << "K=" << K << " row " << r << " n " << n;
                }
            }
        }
    }
}

// The prefill kernel (int16 panels, integer block sums, one fma per block in block order)
// against its plain loop, bit for bit: odd M (the kernel pads to groups of six rows), N across
// panel (16) and chunk (128) edges, K across the 256-column passes, both layouts, = and +=,
// one thread and two.
TEST_P(Q8Isa, PrefillKernelEqualsItsReferenceBitForBit) {
    const int shapes[][3] = {{1, 1, 32}, {4, 15, 64}, {5, 17, 288}, {7, 130, 256},
                             {13, 257, 544}, {37, 33, 96}, {6, 144, 1024}};
    const int saved = omp_get_max_threads();
    for (auto& s : shapes) {
        const int M = s[0], N = s[1], K = s[2];
        Q8Matrix m = make_q8(N, K, 90 + N + K);
        for (const WeightView& w : {m.ggml(), m.split()})
            for (bool acc : {false, true})
                for (int threads : {1, 2}) {
                    std::vector<float> x = test::randn((size_t)M * (K + 3), 91 + M);
                    std::vector<float> y0 = test::randn((size_t)M * (N + 2), 92), y = y0, y_ref = y0;
                    omp_set_num_threads(threads);
                    q8_gemm_prefill(y.data(), N + 2, x.data(), K + 3, w, M, acc);
                    omp_set_num_threads(saved);
                    q8_gemm_prefill_ref(y_ref.data(), N + 2, x.data(), K + 3, w, M, acc);
                    EXPECT_EQ(0, std::memcmp(y.data(), y_ref.data(), y.size() * 4))
                        << "M=" << M << " N=" << N << " K=" << K << " acc=" << acc
                        << " threads=" << threads << " split=" << (w.scales != nullptr);
                }
    }
}

TEST_P(Q8Isa, DecodeIsIndependentOfThreads) {
    Q8Matrix m = make_q8(513, 1024, 5);
    std::vector<float> x = test::randn(2 * 1024, 6), y1(2 * 513), y2(2 * 513);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    wgemm(y1.data(), 513, x.data(), 1024, m.split(), 2);
    omp_set_num_threads(std::max(2, saved));
    wgemm(y2.data(), 513, x.data(), 1024, m.split(), 2);
    omp_set_num_threads(saved);
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * 4));
}

// AVX-512 VNNI reads the split layout with its own loop (two blocks per 512-bit load); it must
// give the 256-bit loop's numbers on GGML blocks bit for bit (the same block integers, the same
// fp32 operations in the same order), so a model copied into huge pages (split) and the same
// file mapped (GGML blocks) agree exactly. Weights of -128 (never written by the quantiser, but
// a file may hold them) and inputs at +-127 included.
TEST(Q8Vnni, SplitLoopEqualsTheGgmlLoopBitForBit) {
    if (!q8_cpu_has_vnni()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
    for (int K : {32, 256, 288, 1024, 1056, 4096 + 96}) {
        Q8Matrix m = make_q8(11, K, 300 + K);
        for (size_t i = 0; i < m.q.size(); i += 37) m.q[i] = -128;
        for (size_t b = 0; b < m.q.size() / 32; b++)  // the same values in GGML's blocks
            std::memcpy(&m.blocks[b * kQ8BlockBytes + 2], &m.q[b * 32], 32);
        std::vector<float> x = test::randn(K, 9 + K);
        x[0] = 1e6f;  // the block's largest: qx = 127
        std::vector<int8_t> qx(K);
        std::vector<float> dx(K / 32);
        q8_quantize_activation(x.data(), K, qx.data(), dx.data());
        const Q8Rows G = q8_rows(m.ggml()), S = q8_rows(m.split());
        for (int r = 0; r < 11; r++) {
            const float a = q8_dot_row(2, G, r, qx.data(), dx.data(), K);
            const float b = q8_dot_row(2, S, r, qx.data(), dx.data(), K);
            EXPECT_EQ(0, std::memcmp(&a, &b, 4)) << "K=" << K << " row " << r << ": " << a << " vs " << b;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Isa, Q8Isa, ::testing::Values(WIsa::scalar, WIsa::avx2, WIsa::avx512),
                         [](const auto& info) { return std::string(wisa_name(info.param)); });

}  // namespace
}  // namespace moe
