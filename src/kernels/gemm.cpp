#include "kernels/gemm.h"

#include <cblas.h>

namespace moe {

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // BLAS would leave C untouched for K = 0 only when beta = 1
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(long)i * ldc + j] = beta == 0.f ? 0.f : beta * C[(long)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sgemm_ref(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
               int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int p = 0; p < K; p++) {
                float a = trans_a ? A[(long)p * lda + i] : A[(long)i * lda + p];
                float b = trans_b ? B[(long)j * ldb + p] : B[(long)p * ldb + j];
                acc += (double)a * b;
            }
            float& c = C[(long)i * ldc + j];
            c = (float)(alpha * acc + (beta == 0.f ? 0.0 : (double)beta * c));
        }
    }
}

}  // namespace moe
