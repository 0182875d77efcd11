// Expert activations, forward beside backward, each with a plain `_ref` twin the tests compare
// against. Layouts follow the expert FFN (src/moe/experts.h):
//   relu / gelu:  h [n, f] (pre-activation)        -> a [n, f]
//   swiglu:       h [n, 2f] rows = [h1 | h3]        -> a [n, f] = silu(h1) * h3
// h1 and h3 sit side by side in one row because they come from one GEMM over [w1; w3] [2f, d].
// gelu is the exact one (erf), as in PyTorch's default and HF's "gelu".
// The fast kernels are plain loops over a polynomial exp/erf that the compiler vectorises; they
// are compiled per ISA (AVX-512, AVX2, baseline) and picked at load time, because the libm calls
// in the references cost more than the expert GEMMs' memory traffic at fine-grained shapes.
#pragma once
#include <cstdint>

namespace moe {

// x [n, f] -> y [n, f]; the backward takes the pre-activation h and writes dh (overwritten).
void relu_forward_ref(const float* h, float* a, int64_t n);
void relu_backward_ref(const float* h, const float* da, float* dh, int64_t n);
void gelu_forward_ref(const float* h, float* a, int64_t n);
void gelu_backward_ref(const float* h, const float* da, float* dh, int64_t n);
// rows x f: h [rows, 2f] -> a [rows, f]; backward: da [rows, f] -> dh [rows, 2f].
void swiglu_forward_ref(const float* h, float* a, int64_t rows, int f);
void swiglu_backward_ref(const float* h, const float* da, float* dh, int64_t rows, int f);

void relu_forward(const float* h, float* a, int64_t n);
void relu_backward(const float* h, const float* da, float* dh, int64_t n);
void gelu_forward(const float* h, float* a, int64_t n);
void gelu_backward(const float* h, const float* da, float* dh, int64_t n);
void swiglu_forward(const float* h, float* a, int64_t rows, int f);
void swiglu_backward(const float* h, const float* da, float* dh, int64_t rows, int f);

}  // namespace moe
