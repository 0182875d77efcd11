#include "kernels/rmsnorm.h"

#include <cmath>
#include <vector>

namespace moe {

template <typename F>
void rmsnorm_forward_ref(F* y, F* rstd, const F* x, const F* w, int T, int d, F eps) {
    for (int t = 0; t < T; t++) {
        const F* xt = x + (long)t * d;
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)xt[i] * xt[i];
        F r = (F)(1.0 / std::sqrt(ss / d + (double)eps));
        rstd[t] = r;
        for (int i = 0; i < d; i++) y[(long)t * d + i] = xt[i] * r * w[i];
    }
}

// y_i = w_i x_i r, r = (mean x^2 + eps)^(-1/2), dr/dx_j = -r^3 x_j / d, so
// dx_j = r (w_j dy_j - x_j r^2 (1/d) sum_i w_i dy_i x_i).
template <typename F>
void rmsnorm_backward_ref(F* dx, F* dw, const F* dy, const F* x, const F* w, const F* rstd, int T,
                          int d) {
    for (int t = 0; t < T; t++) {
        const F* xt = x + (long)t * d;
        const F* dyt = dy + (long)t * d;
        F r = rstd[t];
        double dot = 0;
        for (int i = 0; i < d; i++) dot += (double)w[i] * dyt[i] * xt[i];
        F c = (F)(dot / d) * r * r;
        for (int i = 0; i < d; i++) {
            dx[(long)t * d + i] += r * (w[i] * dyt[i] - xt[i] * c);
            dw[i] += dyt[i] * xt[i] * r;
        }
    }
}

template void rmsnorm_forward_ref<float>(float*, float*, const float*, const float*, int, int, float);
template void rmsnorm_forward_ref<double>(double*, double*, const double*, const double*, int, int,
                                          double);
template void rmsnorm_backward_ref<float>(float*, float*, const float*, const float*, const float*,
                                          const float*, int, int);
template void rmsnorm_backward_ref<double>(double*, double*, const double*, const double*,
                                           const double*, const double*, int, int);

// Rows are independent: threads over rows; sums in float with a fixed order per row.
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int T, int d,
                     float eps) {
#pragma omp parallel for schedule(static) if (T >= 64)
    for (int t = 0; t < T; t++) {
        const float* xt = x + (long)t * d;
        float* yt = y + (long)t * d;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < d; i++) ss += xt[i] * xt[i];
        float r = 1.f / std::sqrt(ss / d + eps);
        rstd[t] = r;
#pragma omp simd
        for (int i = 0; i < d; i++) yt[i] = xt[i] * r * w[i];
    }
}

// dx by rows in parallel; dw summed serially over rows afterwards in row order, so the result
// does not depend on the thread count.
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                      const float* rstd, int T, int d) {
#pragma omp parallel for schedule(static) if (T >= 64)
    for (int t = 0; t < T; t++) {
        const float* xt = x + (long)t * d;
        const float* dyt = dy + (long)t * d;
        float* dxt = dx + (long)t * d;
        float r = rstd[t];
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int i = 0; i < d; i++) dot += w[i] * dyt[i] * xt[i];
        float c = dot / d * r * r;
#pragma omp simd
        for (int i = 0; i < d; i++) dxt[i] += r * (w[i] * dyt[i] - xt[i] * c);
    }
    if (!dw) return;  // a frozen norm: no weight gradient
    for (int t = 0; t < T; t++) {
        const float* xt = x + (long)t * d;
        const float* dyt = dy + (long)t * d;
        float r = rstd[t];
#pragma omp simd
        for (int i = 0; i < d; i++) dw[i] += dyt[i] * xt[i] * r;
    }
}

}  // namespace moe
