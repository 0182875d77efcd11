// RMSNorm (Zhang & Sennrich 2019), the Llama/Mixtral norm: y = x / sqrt(mean(x^2) + eps) * w.
// x, y [T,d] row-major, w [d]; rstd [T] keeps 1/sqrt(mean(x^2)+eps) for backward.
// Backward accumulates (dx +=, dw +=): the model adds the norm's input gradient straight into the
// residual stream's gradient, llm.c style. dw is summed over rows in row order (deterministic).
// The _ref versions are plain loops, templated so tests can run them in double.
#pragma once

namespace moe {

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int T, int d, float eps);
// dw == nullptr: a frozen weight, only dx is accumulated.
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int T, int d);

template <typename F>
void rmsnorm_forward_ref(F* y, F* rstd, const F* x, const F* w, int T, int d, F eps);
template <typename F>
void rmsnorm_backward_ref(F* dx, F* dw, const F* dy, const F* x, const F* w, const F* rstd, int T,
                          int d);

}  // namespace moe
