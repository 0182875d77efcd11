// BF16 weights on CPUs with AVX-512 BF16: vdpbf16ps multiplies bf16 pairs and adds both products
// into an fp32 lane, so the inputs are rounded to bf16 too (round to nearest even, once per
// product), as llama.cpp does for its BF16 tensors. Twice the multiply-adds of an fp32 FMA per
// instruction, no widening of the weights. Both prefill (M >= 4) and decode (M < 4) multiply the
// same rounded inputs, so a KV-cache decode equals the full forward to fp32 rounding. CPUs
// without AVX-512 BF16 (and MOE_CPU_CAP=avx2|scalar) keep fp32 inputs and widened weights
// (typed_gemm.cpp): the numbers then differ by the inputs' bf16 rounding. Opt-in (see below).
//
// Prefill: weight panels of 16 rows x up to 256 columns packed as bf16 pairs, bq[k / 2][j]
// (uint32: w[j][k], w[j][k + 1]), and the inputs in groups of 6 rows, pairs interleaved
// (xg[(k / 2) * 12 + 2 * i]: row i of the group), so one 32-bit broadcast serves a row's step;
// 6 x 32 output tiles (two panels) of twelve fp32 accumulators. Odd K: a zero pads the last pair.
// Decode: the input row rounded once, four weight rows per step, 32 values a vector.
// Each output is summed in a fixed order that depends on neither the thread count nor the split.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/hf_model.h"

namespace moe {

// AVX-512 F, BW, VL and BF16, with the OS saving the ZMM state.
bool bf16_cpu_has_dp();
// True where wgemm runs BF16 weights by these kernels: asked for (MOE_BF16_DOT=1 in the
// environment, or bf16_dot_enable), the CPU has them and wgemm_isa() is avx512. Off by default:
// on the Intel AVX-512 BF16 machine of session 8 they were slower than the FMA kernels.
bool bf16_dp_active();
void bf16_dot_enable(bool on);

// Inputs in prefill's layout: uint16 [bf16_prefill_input_size(M, K)].
size_t bf16_prefill_input_size(int M, int64_t K);
void bf16_prefill_convert(const float* x, int ldx, int M, int64_t K, uint16_t* xg);
// Output columns n0 .. n1 - 1 of y [M, N] (= or +=) x W^T, W bf16 [N, K].
void bf16_prefill_rows(float* y, int ldy, const uint16_t* xg, const WeightView& w, int M,
                       bool accumulate, int n0, int n1);

// Decode's inputs: M rows of bf16_row_stride(K) values (K rounded up to a pair, zero padded).
int64_t bf16_row_stride(int64_t K);
void bf16_decode_convert(const float* x, int ldx, int M, int64_t K, uint16_t* xb);
void bf16_decode_rows(float* y, int ldy, const uint16_t* xb, const WeightView& w, int M,
                      bool accumulate, int n0, int n1);

// The plain loop both are checked against: inputs rounded to bf16, products summed in double.
void bf16_gemm_ref(float* y, int ldy, const float* x, int ldx, const WeightView& w, int M,
                   bool accumulate);

}  // namespace moe
