#include "kernels/cross_entropy.h"

#include <cmath>
#include <vector>

#include "moe/error.h"

namespace moe {

static void check_targets(const int32_t* targets, int T, int V) {
    for (int t = 0; t < T; t++)
        if (targets[t] < 0 || targets[t] >= V)
            fail("cross_entropy: target[{}] = {} outside the vocabulary [0, {})", t, targets[t], V);
}

template <typename F>
double cross_entropy_forward_ref(F* lse, const F* logits, const int32_t* targets, int T, int V) {
    check_targets(targets, T, V);
    double total = 0;
    for (int t = 0; t < T; t++) {
        const F* l = logits + (long)t * V;
        double m = l[0];
        for (int v = 1; v < V; v++) m = std::max(m, (double)l[v]);
        double s = 0;
        for (int v = 0; v < V; v++) s += std::exp((double)l[v] - m);
        double ls = m + std::log(s);
        lse[t] = (F)ls;
        total += ls - (double)l[targets[t]];
    }
    return total / T;
}

template <typename F>
void cross_entropy_backward_ref(F* dlogits, const F* logits, const F* lse, const int32_t* targets,
                                int T, int V, F dloss) {
    check_targets(targets, T, V);
    for (int t = 0; t < T; t++)
        for (int v = 0; v < V; v++) {
            F p = (F)std::exp((double)logits[(long)t * V + v] - (double)lse[t]);
            dlogits[(long)t * V + v] = dloss * (p - (v == targets[t] ? (F)1 : (F)0)) / (F)T;
        }
}

template double cross_entropy_forward_ref<float>(float*, const float*, const int32_t*, int, int);
template double cross_entropy_forward_ref<double>(double*, const double*, const int32_t*, int, int);
template void cross_entropy_backward_ref<float>(float*, const float*, const float*, const int32_t*,
                                                int, int, float);
template void cross_entropy_backward_ref<double>(double*, const double*, const double*,
                                                 const int32_t*, int, int, double);

// Rows in parallel; each row's max, sum of exp in float with a fixed order; the per-row losses
// are summed serially afterwards so the mean does not depend on the thread count.
double cross_entropy_forward(float* lse, const float* logits, const int32_t* targets, int T,
                             int V) {
    check_targets(targets, T, V);
#pragma omp parallel for schedule(static) if ((long)T * V >= 32768)
    for (int t = 0; t < T; t++) {
        const float* l = logits + (long)t * V;
        float m = l[0];
        for (int v = 1; v < V; v++) m = l[v] > m ? l[v] : m;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int v = 0; v < V; v++) s += std::exp(l[v] - m);
        lse[t] = m + std::log(s);
    }
    double total = 0;
    for (int t = 0; t < T; t++) total += (double)lse[t] - (double)logits[(long)t * V + targets[t]];
    return total / T;
}

void cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                            const int32_t* targets, int T, int V, float dloss) {
    check_targets(targets, T, V);
    float scale = dloss / (float)T;
#pragma omp parallel for schedule(static) if ((long)T * V >= 32768)
    for (int t = 0; t < T; t++) {
        const float* l = logits + (long)t * V;
        float* dl = dlogits + (long)t * V;
        float m = lse[t];
#pragma omp simd
        for (int v = 0; v < V; v++) dl[v] = scale * std::exp(l[v] - m);
        dl[targets[t]] -= scale;
    }
}

}  // namespace moe
