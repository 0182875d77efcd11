// AdamW (Loshchilov & Hutter): decoupled weight decay, bias-corrected moments.
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
// `step` t is 1-based. adamw_update_ref is the plain loop; adamw_update spreads the elements over
// threads (elementwise, so the result does not depend on the thread count) and lets the compiler
// vectorise; both do the same float operations in the same order.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

struct AdamWParams {
    float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
    int64_t step = 1;
};

void adamw_update_ref(float* p, const float* g, float* m, float* v, size_t n, const AdamWParams& h);
void adamw_update(float* p, const float* g, float* m, float* v, size_t n, const AdamWParams& h);

// Global L2 norm of x[0..n) in double, summed in fixed 16384-element blocks and then over the
// blocks in order: the same bits for any thread count.
double l2_norm(const float* x, size_t n);
double l2_norm_ref(const float* x, size_t n);
void scale_inplace(float* x, size_t n, float s);

}  // namespace moe

namespace moe {
// Global-norm clipping: scales g so its L2 norm is at most max_norm (when max_norm > 0 and the
// norm exceeds it: g *= max_norm / (norm + 1e-6)). Returns the norm before clipping.
double clip_grad_norm(float* g, size_t n, double max_norm);
}  // namespace moe
