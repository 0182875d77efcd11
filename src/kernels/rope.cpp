#include "kernels/rope.h"

#include <cmath>

#include "moe/error.h"

namespace moe {

void rope_tables(float* cos_t, float* sin_t, int n_pos, int hd, float theta) {
    MOE_CHECK(hd % 2 == 0, "rope: head_dim {} must be even", hd);
    int half = hd / 2;
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            // HF: inv_freq = 1 / theta^(2i/hd) in fp32, angle = p * inv_freq in fp32.
            float inv_freq = (float)(1.0 / std::pow((double)theta, 2.0 * i / hd));
            float ang = (float)p * inv_freq;
            cos_t[(long)p * half + i] = (float)std::cos((double)ang);
            sin_t[(long)p * half + i] = (float)std::sin((double)ang);
        }
}

template <typename F>
static void rope_apply_ref(F* x, int B, int S, int ld, int n_heads, int hd, int pos0, float theta,
                           F sign) {
    int half = hd / 2;
    for (int b = 0; b < B; b++)
        for (int s = 0; s < S; s++)
            for (int h = 0; h < n_heads; h++) {
                F* v = x + ((long)b * S + s) * ld + (long)h * hd;
                for (int i = 0; i < half; i++) {
                    float inv_freq = (float)(1.0 / std::pow((double)theta, 2.0 * i / hd));
                    double ang = (double)((float)(pos0 + s) * inv_freq);
                    F c = (F)std::cos(ang), sn = sign * (F)std::sin(ang);
                    F a = v[i], bb = v[i + half];
                    v[i] = a * c - bb * sn;
                    v[i + half] = bb * c + a * sn;
                }
            }
}

template <typename F>
void rope_forward_ref(F* x, int B, int S, int ld, int n_heads, int hd, int pos0, float theta) {
    rope_apply_ref(x, B, S, ld, n_heads, hd, pos0, theta, (F)1);
}
// The rotation is orthogonal: its transpose (the gradient map) is the rotation by -angle.
template <typename F>
void rope_backward_ref(F* dx, int B, int S, int ld, int n_heads, int hd, int pos0, float theta) {
    rope_apply_ref(dx, B, S, ld, n_heads, hd, pos0, theta, (F)-1);
}
template void rope_forward_ref<float>(float*, int, int, int, int, int, int, float);
template void rope_forward_ref<double>(double*, int, int, int, int, int, int, float);
template void rope_backward_ref<float>(float*, int, int, int, int, int, int, float);
template void rope_backward_ref<double>(double*, int, int, int, int, int, int, float);

static void rope_apply(float* x, int B, int S, int ld, int n_heads, int hd, int pos0,
                       const float* cos_t, const float* sin_t, float sign) {
    int half = hd / 2;
    long rows = (long)B * S;
#pragma omp parallel for schedule(static) if (rows * n_heads * hd >= 16384)
    for (long r = 0; r < rows; r++) {
        int p = pos0 + (int)(r % S);
        const float* c = cos_t + (long)p * half;
        const float* sn = sin_t + (long)p * half;
        for (int h = 0; h < n_heads; h++) {
            float* v = x + r * ld + (long)h * hd;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half], s = sign * sn[i];
                v[i] = a * c[i] - b * s;
                v[i + half] = b * c[i] + a * s;
            }
        }
    }
}

void rope_forward(float* x, int B, int S, int ld, int n_heads, int hd, int pos0,
                  const float* cos_t, const float* sin_t) {
    rope_apply(x, B, S, ld, n_heads, hd, pos0, cos_t, sin_t, 1.f);
}
void rope_backward(float* dx, int B, int S, int ld, int n_heads, int hd, int pos0,
                   const float* cos_t, const float* sin_t) {
    rope_apply(dx, B, S, ld, n_heads, hd, pos0, cos_t, sin_t, -1.f);
}

}  // namespace moe
