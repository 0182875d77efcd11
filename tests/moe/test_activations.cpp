// Fast activations (polynomial exp/erf, vectorised) against the libm references, forward and
// backward, on sizes that cover the vector tails; the references' backward against central
// differences in double.
#include "kernels/activations.h"

#include <cmath>
#include <functional>

#include "test_util.h"

using namespace moe;

namespace {

// Wide inputs reach the clamps of the fast exp (|x| up to ~90) as well as the usual range.
std::vector<float> inputs(size_t n, uint64_t seed) {
    auto v = test::randn(n, seed, 3.f);
    if (n > 4) {
        v[0] = 0.f;
        v[1] = -95.f;
        v[2] = 95.f;
        v[3] = -1e-7f;
    }
    return v;
}

}  // namespace

TEST(Activations, ElementwiseFastMatchesRef) {
    for (int n : {1, 3, 7, 16, 33, 4097}) {
        auto h = inputs(n, 10 + n), da = test::randn(n, 20 + n);
        std::vector<float> a0(n), a1(n), d0(n), d1(n);
        relu_forward(h.data(), a0.data(), n);
        relu_forward_ref(h.data(), a1.data(), n);
        EXPECT_TRUE(test::all_close(a0, a1, 0, 0)) << "relu n=" << n;
        relu_backward(h.data(), da.data(), d0.data(), n);
        relu_backward_ref(h.data(), da.data(), d1.data(), n);
        EXPECT_TRUE(test::all_close(d0, d1, 0, 0)) << "relu' n=" << n;
        gelu_forward(h.data(), a0.data(), n);
        gelu_forward_ref(h.data(), a1.data(), n);
        EXPECT_TRUE(test::all_close(a0, a1, 2e-6, 1e-6)) << "gelu n=" << n;
        gelu_backward(h.data(), da.data(), d0.data(), n);
        gelu_backward_ref(h.data(), da.data(), d1.data(), n);
        EXPECT_TRUE(test::all_close(d0, d1, 2e-6, 2e-6)) << "gelu' n=" << n;
    }
}

TEST(Activations, SwigluFastMatchesRef) {
    const int shapes[][2] = {{1, 1}, {1, 3}, {3, 7}, {5, 16}, {2, 33}, {7, 257}};
    for (auto& s : shapes) {
        int rows = s[0], f = s[1];
        auto h = inputs((size_t)rows * 2 * f, rows * 100 + f);
        auto da = test::randn((size_t)rows * f, 7 + f);
        std::vector<float> a0(rows * f), a1(rows * f), d0(rows * 2 * f), d1(rows * 2 * f);
        swiglu_forward(h.data(), a0.data(), rows, f);
        swiglu_forward_ref(h.data(), a1.data(), rows, f);
        EXPECT_TRUE(test::all_close(a0, a1, 2e-6, 1e-6)) << rows << "x" << f;
        swiglu_backward(h.data(), da.data(), d0.data(), rows, f);
        swiglu_backward_ref(h.data(), da.data(), d1.data(), rows, f);
        EXPECT_TRUE(test::all_close(d0, d1, 4e-6, 2e-6)) << rows << "x" << f;
    }
}

// The reference backward is the derivative of the reference forward (central differences on
// the double-precision formula through float inputs is too coarse, so use a scalar double f).
TEST(Activations, ReferenceBackwardMatchesFiniteDifferences) {
    auto gelu = [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); };
    auto silu = [](double x) { return x / (1 + std::exp(-x)); };
    for (float x : {-4.f, -1.3f, -0.2f, 0.f, 0.5f, 1.7f, 3.f}) {
        const double eps = 1e-5;
        float da = 1.f, dh;
        gelu_backward_ref(&x, &da, &dh, 1);
        EXPECT_NEAR(dh, (gelu(x + eps) - gelu(x - eps)) / (2 * eps), 1e-6) << x;
        // swiglu with f = 1: h = [h1, h3]
        float h[2] = {x, 0.8f}, d[2];
        swiglu_backward_ref(h, &da, d, 1, 1);
        EXPECT_NEAR(d[0], 0.8 * (silu(x + eps) - silu(x - eps)) / (2 * eps), 1e-6) << x;
        EXPECT_NEAR(d[1], silu(x), 1e-6) << x;
    }
    float h = 0.3f, da = 2.f, dh;
    relu_backward_ref(&h, &da, &dh, 1);
    EXPECT_EQ(dh, 2.f);
    h = -0.3f;
    relu_backward_ref(&h, &da, &dh, 1);
    EXPECT_EQ(dh, 0.f);
}

TEST(Activations, SaturateWithoutNan) {
    float h[4] = {-1000.f, 1000.f, -90.f, 90.f}, a[2], dh[4], da[2] = {1.f, 1.f};
    swiglu_forward(h, a, 1, 2);  // h1 = {-1000, 1000}, h3 = {-90, 90}
    EXPECT_TRUE(std::isfinite(a[0]) && std::isfinite(a[1]));
    EXPECT_NEAR(a[0], 0.f, 1e-30);
    EXPECT_FLOAT_EQ(a[1], 1000.f * 90.f);
    swiglu_backward(h, da, dh, 1, 2);
    for (float v : dh) EXPECT_TRUE(std::isfinite(v));
    float g[2] = {-1000.f, 1000.f}, ga[2];
    gelu_forward(g, ga, 2);
    EXPECT_EQ(ga[0], 0.f);
    EXPECT_EQ(ga[1], 1000.f);
}
