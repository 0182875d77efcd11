#include "kernels/gemm.h"

#include <omp.h>

#include "test_util.h"

using namespace moe;

// sgemm (OpenBLAS) against the triple-loop reference on random shapes, odd sizes and every
// transpose combination, with alpha/beta and leading dimensions larger than the rows.
TEST(Gemm, MatchesReferenceOnRandomShapes) {
    const int sizes[][3] = {{1, 1, 1},   {1, 7, 3},    {3, 1, 5},    {7, 33, 9},
                            {33, 17, 65}, {64, 64, 64}, {97, 130, 31}, {5, 4097, 2}};
    int seed = 1;
    for (auto& s : sizes) {
        int M = s[0], N = s[1], K = s[2];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                auto A = test::randn((size_t)(ta ? K : M) * lda, seed++);
                auto B = test::randn((size_t)(tb ? N : K) * ldb, seed++);
                auto C0 = test::randn((size_t)M * ldc, seed++);
                auto C1 = C0;
                sgemm(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.3f, C0.data(), ldc);
                sgemm_ref(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.3f, C1.data(),
                          ldc);
                double tol = 1e-6 * K + 1e-6;
                EXPECT_TRUE(test::all_close(C0, C1, 1e-5, tol))
                    << "M=" << M << " N=" << N << " K=" << K << " ta=" << ta << " tb=" << tb;
            }
    }
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
