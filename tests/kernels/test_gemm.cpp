#include <omp.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/gemm.h"
#include "moe/error.h"
#include "test_util.h"

using namespace moe;

using Gemm = void (*)(bool, bool, int, int, int, float, const float*, int, const float*, int,
                     float, float*, int);

// fast against ref on random shapes, odd sizes and every transpose combination, with alpha/beta
// and leading dimensions larger than the rows; fp32-accumulation tolerance.
static void check_random_shapes(Gemm fast, Gemm ref, const std::vector<std::array<int, 3>>& sizes,
                                int seed, const char* what) {
    for (auto& s : sizes) {
        int M = s[0], N = s[1], K = s[2];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                auto A = test::randn((size_t)(ta ? K : M) * lda, seed++);
                auto B = test::randn((size_t)(tb ? N : K) * ldb, seed++);
                auto C0 = test::randn((size_t)M * ldc, seed++);
                auto C1 = C0;
                fast(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.3f, C0.data(), ldc);
                ref(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.3f, C1.data(), ldc);
                EXPECT_TRUE(test::all_close(C0, C1, 1e-5, 1e-6 * K + 1e-6))
                    << what << " M=" << M << " N=" << N << " K=" << K << " ta=" << ta
                    << " tb=" << tb;
            }
    }
}

// sgemm (OpenBLAS) against the triple-loop reference.
TEST(Gemm, MatchesReferenceOnRandomShapes) {
    check_random_shapes(sgemm, sgemm_ref,
                        {{1, 1, 1}, {1, 7, 3}, {3, 1, 5}, {7, 33, 9}, {33, 17, 65}, {64, 64, 64},
                         {97, 130, 31}, {5, 4097, 2}},
                        1, "sgemm");
}

TEST(Gemm, BetaZeroIgnoresGarbageInC) {
    int M = 4, N = 5, K = 3;
    auto A = test::randn(M * K, 1), B = test::randn(K * N, 2);
    std::vector<float> C0(M * N, NAN), C1(M * N, NAN);
    sgemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C0.data(), N);
    sgemm_ref(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C1.data(), N);
    EXPECT_TRUE(test::all_close(C0, C1, 1e-5, 1e-5));
}

TEST(Gemm, KZeroScalesC) {
    std::vector<float> C(6, 2.f);
    sgemm(false, false, 2, 3, 0, 1.f, nullptr, 1, nullptr, 3, 0.5f, C.data(), 3);
    for (float c : C) EXPECT_EQ(c, 1.f);
}

// Inside an OpenMP parallel region each thread's sgemm must stay correct (OpenBLAS OpenMP build
// runs single-threaded there); this is how the MoE layer spreads experts over threads.
TEST(Gemm, CorrectInsideParallelRegion) {
    const int n_jobs = 6, M = 37, N = 29, K = 41;
    std::vector<std::vector<float>> A(n_jobs), B(n_jobs), C(n_jobs), R(n_jobs);
    for (int j = 0; j < n_jobs; j++) {
        A[j] = test::randn(M * K, 10 + j);
        B[j] = test::randn(K * N, 20 + j);
        C[j].assign(M * N, 0.f);
        R[j].assign(M * N, 0.f);
        sgemm_ref(false, true, M, N, K, 1.f, A[j].data(), K, B[j].data(), K, 0.f, R[j].data(), N);
    }
#pragma omp parallel for schedule(dynamic)
    for (int j = 0; j < n_jobs; j++)
        sgemm(false, true, M, N, K, 1.f, A[j].data(), K, B[j].data(), K, 0.f, C[j].data(), N);
    for (int j = 0; j < n_jobs; j++) EXPECT_TRUE(test::all_close(C[j], R[j], 1e-5, 1e-4));
}

// ---- the GEMM layer: precisions and engines (docs/precision.md) -------------------------------

static uint32_t bits(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
}
static float from_bits(uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}

TEST(Bf16, RoundsToNearestEven) {
    EXPECT_EQ(round_bf16(1.f), 1.f);                                   // exact
    EXPECT_EQ(bits(round_bf16(from_bits(0x3f808000))), 0x3f800000u);   // tie, even below
    EXPECT_EQ(bits(round_bf16(from_bits(0x3f818000))), 0x3f820000u);   // tie, even above
    EXPECT_EQ(bits(round_bf16(from_bits(0x3f808001))), 0x3f810000u);   // just past the tie
    EXPECT_EQ(bits(round_bf16(from_bits(0x3f807fff))), 0x3f800000u);   // just below it
    EXPECT_EQ(bits(round_bf16(-from_bits(0x3f808001))), 0xbf810000u);  // sign kept
    EXPECT_TRUE(std::isinf(round_bf16(from_bits(0x7f7fffff))));        // FLT_MAX rounds up to inf
    EXPECT_TRUE(std::isinf(round_bf16(INFINITY)));
    EXPECT_TRUE(std::isnan(round_bf16(NAN)));
    EXPECT_TRUE(std::isnan(round_bf16(from_bits(0x7f800001))));  // a NaN whose carry would be inf
    // Every output is a bf16 value (low 16 bits zero) within half an ulp: 8 significant bits, so
    // at most 2^-8 relative.
    auto x = test::randn(1000, 7);
    for (float v : x) {
        float r = round_bf16(v);
        EXPECT_EQ(bits(r) & 0xffffu, 0u);
        EXPECT_LE(std::fabs(r - v), std::ldexp(std::fabs(v), -8) + 1e-30f);
    }
}

// gemm in each precision and on each engine against gemm_ref (operands rounded the same way,
// double accumulation).
template <Precision P>
static void gemm_in(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                    const float* B, int ldb, float beta, float* C, int ldc) {
    gemm(P, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
template <Precision P>
static void gemm_ref_in(bool ta, bool tb, int M, int N, int K, float alpha, const float* A,
                        int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    gemm_ref(P, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void check_gemm_matches_ref(Precision prec) {
    const std::vector<std::array<int, 3>> sizes = {
        {1, 1, 1},    {1, 7, 3},     {3, 1, 5},  {7, 33, 9},   {33, 17, 65},
        {64, 64, 64}, {97, 130, 31}, {5, 257, 2}, {130, 67, 300}};
    if (prec == Precision::fp32)
        check_random_shapes(gemm_in<Precision::fp32>, gemm_ref_in<Precision::fp32>, sizes, 100,
                            "fp32");
    else
        check_random_shapes(gemm_in<Precision::bf16>, gemm_ref_in<Precision::bf16>, sizes, 100,
                            "bf16");
}

TEST(GemmEngine, Fp32EveryEngineMatchesReference) {
    std::vector<int> engines = {(int)GemmEngine::openblas};
    if (gemm_have_onednn()) engines.push_back((int)GemmEngine::onednn);
    for (int e : engines) {
        gemm_force_engine(e);
        SCOPED_TRACE(gemm_engine_name((GemmEngine)e));
        EXPECT_EQ((int)gemm_engine(Precision::fp32, false, true, 64, 64, 64), e);
        check_gemm_matches_ref(Precision::fp32);
    }
    gemm_force_engine(-1);
}

TEST(GemmEngine, Bf16MatchesReferenceOnEveryAvailablePath) {
    gemm_force_engine((int)GemmEngine::own);  // rounded fp32 copies: every CPU
    EXPECT_EQ(gemm_engine(Precision::bf16, false, false, 8, 8, 8), GemmEngine::own);
    check_gemm_matches_ref(Precision::bf16);
    gemm_force_engine(-1);
    if (!gemm_onednn_bf16()) {
        EXPECT_EQ(gemm_engine(Precision::bf16, false, false, 8, 8, 8), GemmEngine::own);
        GTEST_SKIP() << "oneDNN has no bf16 kernel for this CPU (needs AVX-512 BF16 / AMX): "
                        "only the rounded-copy path was checked";
    }
    EXPECT_EQ(gemm_engine(Precision::bf16, false, false, 8, 8, 8), GemmEngine::onednn);
    check_gemm_matches_ref(Precision::bf16);
}

// ctest runs this once more with ONEDNN_MAX_CPU_ISA=AVX2 (tests/kernels/CMakeLists.txt): oneDNN
// then has no bf16 kernel on any CPU, and gemm must fall back, not fail.
TEST(GemmEngine, FallsBackWhenOneDnnIsCapped) {
    const char* cap = std::getenv("ONEDNN_MAX_CPU_ISA");
    if (!cap) GTEST_SKIP() << "ONEDNN_MAX_CPU_ISA not set";
    EXPECT_FALSE(gemm_onednn_bf16());
    EXPECT_EQ(gemm_engine(Precision::bf16, true, false, 16, 16, 16), GemmEngine::own);
    check_gemm_matches_ref(Precision::bf16);
}

// bf16 really rounds: the result differs from fp32 by bf16-sized errors, bounded by
// (2 * 2^-8 + 2^-16) * sum |a||b| (each operand off by at most half a bf16 ulp, 2^-8 relative).
TEST(GemmEngine, Bf16ErrorAgainstFp32IsBf16Sized) {
    const int M = 37, N = 29, K = 301;
    auto A = test::randn((size_t)M * K, 5), B = test::randn((size_t)K * N, 6);
    std::vector<float> C16((size_t)M * N), C32((size_t)M * N);
    gemm(Precision::bf16, false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C16.data(), N);
    sgemm_ref(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C32.data(), N);
    double max_err = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double bound = 0;
            for (int p = 0; p < K; p++) bound += std::fabs(A[i * K + p] * B[p * N + j]);
            bound = bound * (2 * std::ldexp(1.0, -8) + std::ldexp(1.0, -16)) * 1.01 + 1e-5;
            double err = std::fabs(C16[i * N + j] - C32[i * N + j]);
            EXPECT_LE(err, bound) << i << "," << j;
            max_err = std::max(max_err, err);
        }
    EXPECT_GT(max_err, 1e-3);  // fp32 alone would be ~1e-5 here: the operands were rounded
}

TEST(GemmEngine, Bf16CorrectInsideParallelRegion) {
    const int n_jobs = 6, M = 37, N = 29, K = 41;
    std::vector<std::vector<float>> A(n_jobs), B(n_jobs), C(n_jobs), R(n_jobs);
    for (int j = 0; j < n_jobs; j++) {
        A[j] = test::randn(M * K, 30 + j);
        B[j] = test::randn(K * N, 40 + j);
        C[j].assign(M * N, 0.f);
        R[j].assign(M * N, 0.f);
        gemm_ref(Precision::bf16, false, true, M, N, K, 1.f, A[j].data(), K, B[j].data(), K, 0.f,
                 R[j].data(), N);
    }
    // six threads whatever the machine: oneDNN's shared scratchpad raced with 2 only now and
    // then (3 runs in 10 failed with 6 threads before onednn_gemm.cpp took its own scratchpads)
#pragma omp parallel for schedule(dynamic) num_threads(n_jobs)
    for (int j = 0; j < n_jobs; j++)
        gemm(Precision::bf16, false, true, M, N, K, 1.f, A[j].data(), K, B[j].data(), K, 0.f,
             C[j].data(), N);
    for (int j = 0; j < n_jobs; j++) EXPECT_TRUE(test::all_close(C[j], R[j], 1e-5, 1e-4));
}

TEST(GemmEngine, PrecisionNames) {
    EXPECT_EQ(precision_from_string("bf16"), Precision::bf16);
    EXPECT_EQ(precision_from_string("fp32"), Precision::fp32);
    EXPECT_THROW(precision_from_string("fp16"), Error);
    EXPECT_STREQ(precision_name(Precision::bf16), "bf16");
}
