// Token embedding lookup: x[t] = wte[tokens[t]], wte [V,d], x [T,d].
// Backward accumulates dwte[tokens[t]] += dx[t], serially in token order: repeated tokens add up
// in a fixed order whatever the thread count. Throws moe::Error for a token outside [0,V).
#pragma once
#include <cstdint>

namespace moe {

void embedding_forward(float* x, const int32_t* tokens, const float* wte, int T, int d, int V);
void embedding_backward(float* dwte, const float* dx, const int32_t* tokens, int T, int d);

template <typename F>
void embedding_forward_ref(F* x, const int32_t* tokens, const F* wte, int T, int d, int V);
template <typename F>
void embedding_backward_ref(F* dwte, const F* dx, const int32_t* tokens, int T, int d);

}  // namespace moe
