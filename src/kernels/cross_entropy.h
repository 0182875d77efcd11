// Softmax cross-entropy fused over the vocabulary: logits [T,V], targets [T] in [0,V).
// forward writes lse [T] (logsumexp of each row, kept for backward) and returns the mean over the
// T rows of lse - logit[target], summed in row order in double (deterministic).
// backward writes dlogits = dloss * (softmax(logits) - onehot(target)) / T (overwritten), i.e. the
// gradient of dloss * mean CE. Throws moe::Error for a target outside [0,V).
#pragma once
#include <cstdint>

namespace moe {

double cross_entropy_forward(float* lse, const float* logits, const int32_t* targets, int T, int V);
void cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                            const int32_t* targets, int T, int V, float dloss);

template <typename F>
double cross_entropy_forward_ref(F* lse, const F* logits, const int32_t* targets, int T, int V);
template <typename F>
void cross_entropy_backward_ref(F* dlogits, const F* logits, const F* lse, const int32_t* targets,
                                int T, int V, F dloss);

}  // namespace moe
