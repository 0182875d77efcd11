// Arithmetic precision of the matrix products (issue 11, docs/precision.md).
//   fp32: operands and accumulation in fp32.
//   bf16: GEMM operands rounded to bf16 (round to nearest even), products summed in fp32 — what
//         bf16 hardware (AVX-512 BF16, AMX) computes. Master weights, gradients, optimizer state
//         and everything outside the GEMMs (router softmax and top-k, balancing losses, norms,
//         attention softmax, cross-entropy) stay fp32.
#pragma once
#include <string>

namespace moe {

enum class Precision { fp32, bf16 };

Precision precision_from_string(const std::string& s);  // throws moe::Error on other names
const char* precision_name(Precision p);

}  // namespace moe
