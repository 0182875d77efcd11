#include "kernels/adamw.h"

#include <cmath>
#include <vector>

namespace moe {

void adamw_update_ref(float* p, const float* g, float* m, float* v, size_t n,
                      const AdamWParams& h) {
    const float bc1 = 1.0f - (float)std::pow((double)h.beta1, (double)h.step);
    const float bc2 = 1.0f - (float)std::pow((double)h.beta2, (double)h.step);
    for (size_t i = 0; i < n; i++) {
        m[i] = h.beta1 * m[i] + (1.0f - h.beta1) * g[i];
        v[i] = h.beta2 * v[i] + (1.0f - h.beta2) * g[i] * g[i];
        float mhat = m[i] / bc1, vhat = v[i] / bc2;
        p[i] -= h.lr * (mhat / (std::sqrt(vhat) + h.eps) + h.weight_decay * p[i]);
    }
}

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, const AdamWParams& h) {
    const float b1 = h.beta1, b2 = h.beta2, lr = h.lr, eps = h.eps, wd = h.weight_decay;
    const float bc1 = 1.0f - (float)std::pow((double)b1, (double)h.step);
    const float bc2 = 1.0f - (float)std::pow((double)b2, (double)h.step);
    const float omb1 = 1.0f - b1, omb2 = 1.0f - b2;
    const long nn = (long)n;
    // Small ranges (norm weights) are not worth waking the thread pool.
#pragma omp parallel for schedule(static) if (nn > 32768)
    for (long i = 0; i < nn; i++) {
        float gi = g[i];
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi / bc1, vhat = vi / bc2;
        p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p[i]);
    }
}

static constexpr size_t kNormBlock = 16384;

double l2_norm_ref(const float* x, size_t n) {
    double total = 0;
    for (size_t b = 0; b < n; b += kNormBlock) {
        double s = 0;
        size_t e = b + kNormBlock < n ? b + kNormBlock : n;
        for (size_t i = b; i < e; i++) s += (double)x[i] * (double)x[i];
        total += s;
    }
    return std::sqrt(total);
}

double l2_norm(const float* x, size_t n) {
    const long nb = (long)((n + kNormBlock - 1) / kNormBlock);
    std::vector<double> partial(nb);
#pragma omp parallel for schedule(static) if (nb > 4)
    for (long b = 0; b < nb; b++) {
        size_t s0 = (size_t)b * kNormBlock, e = s0 + kNormBlock < n ? s0 + kNormBlock : n;
        double s = 0;
        for (size_t i = s0; i < e; i++) s += (double)x[i] * (double)x[i];
        partial[b] = s;
    }
    double total = 0;
    for (long b = 0; b < nb; b++) total += partial[b];
    return std::sqrt(total);
}

void scale_inplace(float* x, size_t n, float s) {
    const long nn = (long)n;
#pragma omp parallel for schedule(static) if (nn > 32768)
    for (long i = 0; i < nn; i++) x[i] *= s;
}

}  // namespace moe

namespace moe {
double clip_grad_norm(float* g, size_t n, double max_norm) {
    double norm = l2_norm(g, n);
    if (max_norm > 0 && std::isfinite(norm) && norm > max_norm)
        scale_inplace(g, n, (float)(max_norm / (norm + 1e-6)));
    return norm;
}
}  // namespace moe
