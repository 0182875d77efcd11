// Row-major sgemm: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
// op(A) = A [M,K] (lda >= K) or, with trans_a, A stored [K,M] (lda >= M); likewise B.
// sgemm goes to OpenBLAS (OpenMP build: inside an omp parallel region it runs single-threaded,
// so callers may spread independent GEMMs over threads). sgemm_ref is the plain triple loop
// (double accumulation) it is tested against.
#pragma once

namespace moe {

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

void sgemm_ref(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
               int lda, const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace moe
