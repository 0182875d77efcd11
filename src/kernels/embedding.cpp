#include "kernels/embedding.h"

#include <cstring>

#include "moe/error.h"

namespace moe {

static void check_tokens(const int32_t* tokens, int T, int V) {
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= V)
            fail("embedding: token[{}] = {} outside the vocabulary [0, {})", t, tokens[t], V);
}

template <typename F>
void embedding_forward_ref(F* x, const int32_t* tokens, const F* wte, int T, int d, int V) {
    check_tokens(tokens, T, V);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++) x[(long)t * d + i] = wte[(long)tokens[t] * d + i];
}
template <typename F>
void embedding_backward_ref(F* dwte, const F* dx, const int32_t* tokens, int T, int d) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++) dwte[(long)tokens[t] * d + i] += dx[(long)t * d + i];
}
template void embedding_forward_ref<float>(float*, const int32_t*, const float*, int, int, int);
template void embedding_forward_ref<double>(double*, const int32_t*, const double*, int, int, int);
template void embedding_backward_ref<float>(float*, const float*, const int32_t*, int, int);
template void embedding_backward_ref<double>(double*, const double*, const int32_t*, int, int);

void embedding_forward(float* x, const int32_t* tokens, const float* wte, int T, int d, int V) {
    check_tokens(tokens, T, V);
    for (int t = 0; t < T; t++)
        std::memcpy(x + (long)t * d, wte + (long)tokens[t] * d, sizeof(float) * d);
}

void embedding_backward(float* dwte, const float* dx, const int32_t* tokens, int T, int d) {
    for (int t = 0; t < T; t++) {
        float* w = dwte + (long)tokens[t] * d;
        const float* g = dx + (long)t * d;
#pragma omp simd
        for (int i = 0; i < d; i++) w[i] += g[i];
    }
}

}  // namespace moe
