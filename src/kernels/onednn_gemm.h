// oneDNN (libdnnl-dev 2.6) behind plain functions, so only onednn_gemm.cpp sees dnnl.hpp. Built
// without oneDNN (MOE_WITH_ONEDNN off) every function says "not available" and gemm falls back.
#pragma once
#include <cstdint>

namespace moe {

bool onednn_built();
// dnnl_sgemm (row-major, same contract as sgemm). false: not built in (nothing written).
bool onednn_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc);
// True when oneDNN has an optimised (not reference) bf16 x bf16 -> f32 matmul on this CPU: probed
// once. With ONEDNN_MAX_CPU_ISA capping it below AVX-512 (or on an AVX2 CPU) it is false.
bool onednn_bf16_available();
// C [M,N] (row stride ldc) = op(A) op(B), A and B bf16 bit patterns, fp32 accumulation.
// false: unavailable (nothing written). Primitives are cached per shape (thread-safe).
bool onednn_gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const uint16_t* A, int lda,
                      const uint16_t* B, int ldb, float* C, int ldc);

}  // namespace moe
