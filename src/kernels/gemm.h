// Row-major GEMM: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
// op(A) = A [M,K] (lda >= K) or, with trans_a, A stored [K,M] (lda >= M); likewise B.
//
// sgemm goes to OpenBLAS (OpenMP build: inside an omp parallel region it runs single-threaded,
// so callers may spread independent GEMMs over threads). sgemm_ref is the plain triple loop
// (double accumulation) it is tested against.
//
// gemm is the GEMM layer the layer and the model call (docs/precision.md): the same contract in a
// Precision. fp32 runs on the engine gemm_engine() picks for the shape; bf16 rounds A and B to
// bf16 and sums the products in fp32: on oneDNN's bf16 kernels where the CPU has them (AVX-512
// BF16 / AMX), otherwise on bf16-rounded fp32 copies through the fp32 engine (the products of
// bf16 values are exact in fp32, so both give bf16-operand, fp32-accumulate results; only the
// order of the sums differs). gemm_ref: operands rounded the same way, then sgemm_ref.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/precision.h"

namespace moe {

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

void sgemm_ref(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
               int lda, const float* B, int ldb, float beta, float* C, int ldc);

void gemm(Precision prec, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
          const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);
void gemm_ref(Precision prec, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);

// fp32 -> nearest bf16 value, kept in fp32 (round to nearest even; NaN stays NaN, inf stays inf).
float round_bf16(float x);
void round_bf16(const float* x, float* y, size_t n);

// The engines. openblas: cblas_sgemm. onednn: dnnl_sgemm (fp32) / a dnnl::matmul primitive with
// bf16 inputs and fp32 output (bf16). own: bf16 through rounded fp32 copies (any CPU).
enum class GemmEngine { openblas, onednn, own };
const char* gemm_engine_name(GemmEngine e);
// The engine gemm uses for this product: MOE_GEMM_ENGINE=openblas|onednn in the environment
// forces one for fp32 (tests, benchmarks); otherwise the rule measured on these shapes
// (docs/precision.md). A fixed rule, not timing at run time, so the same inputs give the same
// bits in every run.
GemmEngine gemm_engine(Precision prec, bool trans_a, bool trans_b, int M, int N, int K);
// For tests and `moe bench gemm`: force an engine (nullptr-like: pass -1 to clear).
void gemm_force_engine(int engine);  // -1: automatic; else (int)GemmEngine
bool gemm_have_onednn();             // built with oneDNN
bool gemm_onednn_bf16();             // oneDNN has a non-reference bf16 matmul for this CPU

}  // namespace moe
