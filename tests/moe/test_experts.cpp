// Expert FFN (BLAS + fast activations) against the reference (triple-loop GEMM in double, libm
// activations), one expert and grouped over a permuted buffer, with both threading schemes.
#include "moe/experts.h"

#include <omp.h>

#include "moe/runtime.h"
#include "test_util.h"

using namespace moe;

namespace {

struct FfnCase {
    Activation act;
    int n, d, f;
};

}  // namespace

TEST(Experts, FfnForwardBackwardMatchReference) {
    const FfnCase cases[] = {{Activation::swiglu, 1, 3, 1},  {Activation::swiglu, 7, 5, 3},
                             {Activation::swiglu, 33, 17, 9}, {Activation::gelu, 1, 1, 1},
                             {Activation::gelu, 9, 7, 33},    {Activation::relu, 3, 3, 3},
                             {Activation::relu, 40, 16, 8}};
    int seed = 100;
    for (auto& c : cases) {
        const int hf = ffn_hidden(c.act, c.f);
        auto x = test::randn((size_t)c.n * c.d, seed++);
        auto w = test::randn((size_t)ffn_weight_floats(c.act, c.d, c.f), seed++, 0.5f);
        const float* w13 = w.data();
        const float* w2 = w.data() + (size_t)hf * c.d;
        std::vector<float> h0(c.n * hf), h1(c.n * hf), a0(c.n * c.f), a1(c.n * c.f);
        auto out0 = test::randn((size_t)c.n * c.d, seed++);  // beta_out = 1 adds to it
        std::vector<float> out1(c.n * c.d);
        auto base = out0;
        ffn_forward(c.act, c.n, c.d, c.f, x.data(), w13, w2, h0.data(), a0.data(), out0.data(),
                    1.f, true);
        ffn_forward_ref(c.act, c.n, c.d, c.f, x.data(), w13, w2, h1.data(), a1.data(),
                        out1.data());
        for (size_t i = 0; i < out1.size(); i++) out1[i] += base[i];
        SCOPED_TRACE(std::string(activation_name(c.act)) + " n=" + std::to_string(c.n) +
                     " d=" + std::to_string(c.d) + " f=" + std::to_string(c.f));
        EXPECT_TRUE(test::all_close(h0, h1, 1e-5, 1e-5));
        EXPECT_TRUE(test::all_close(a0, a1, 1e-5, 1e-5));
        EXPECT_TRUE(test::all_close(out0, out1, 1e-4, 1e-5));

        auto dout = test::randn((size_t)c.n * c.d, seed++);
        auto dx0 = test::randn((size_t)c.n * c.d, seed++);  // beta_dx = 0 overwrites garbage
        std::vector<float> dx1(c.n * c.d);
        auto g0 = test::randn(w.size(), seed++);  // grads accumulate onto what is there
        auto g1 = g0;
        std::vector<float> da(c.n * c.f), dh(c.n * hf);
        ffn_backward(c.act, c.n, c.d, c.f, x.data(), w13, w2, h0.data(), a0.data(), dout.data(),
                     dx0.data(), 0.f, g0.data(), g0.data() + (size_t)hf * c.d, da.data(),
                     dh.data(), true);
        ffn_backward_ref(c.act, c.n, c.d, c.f, x.data(), w13, w2, h1.data(), a1.data(),
                         dout.data(), dx1.data(), g1.data(), g1.data() + (size_t)hf * c.d,
                         da.data(), dh.data());
        EXPECT_TRUE(test::all_close(dx0, dx1, 1e-4, 1e-5));
        EXPECT_TRUE(test::all_close(g0, g1, 1e-4, 1e-5));
    }
}

// Grouped experts: every scheme gives exactly what running each expert alone gives (no
// cross-expert reduction, so bit-identical), including empty experts.
TEST(Experts, GroupedMatchesPerExpert) {
    for (Activation act : {Activation::swiglu, Activation::relu}) {
        const int E = 5, d = 12, f = 7, hf = ffn_hidden(act, f);
        std::vector<int32_t> off = {0, 3, 3, 20, 21, 40};  // expert 1 empty
        const int n = off[E];
        const int64_t stride = ffn_weight_floats(act, d, f);
        auto W = test::randn((size_t)stride * E, 5, 0.4f);
        auto xp = test::randn((size_t)n * d, 6);
        auto dout = test::randn((size_t)n * d, 7);

        // Per-expert reference run, serial.
        std::vector<float> h1(n * hf), a1(n * f), out1(n * d), dx1(n * d), G1(W.size(), 0.f),
            da(n * f), dh(n * hf);
        for (int e = 0; e < E; e++) {
            int r0 = off[e], m = off[e + 1] - off[e];
            if (!m) continue;
            const float* w = W.data() + e * stride;
            ffn_forward_ref(act, m, d, f, xp.data() + r0 * d, w, w + hf * d, h1.data() + r0 * hf,
                            a1.data() + r0 * f, out1.data() + r0 * d);
            float* g = G1.data() + e * stride;
            ffn_backward_ref(act, m, d, f, xp.data() + r0 * d, w, w + hf * d, h1.data() + r0 * hf,
                             a1.data() + r0 * f, dout.data() + r0 * d, dx1.data() + r0 * d, g,
                             g + hf * d, da.data(), dh.data());
        }
        std::vector<float> first_out, first_dx, first_g;
        for (ExpertThreads how : {ExpertThreads::blas, ExpertThreads::experts}) {
            for (int threads : {1, 2}) {
                set_threads(threads);
                GroupedFfn g;
                g.act = act;
                g.E = E;
                g.d = d;
                g.f = f;
                g.offsets = off.data();
                g.weights = W.data();
                std::vector<float> G(W.size(), 0.f);
                g.grads = G.data();
                g.stride = stride;
                std::vector<float> h(n * hf), a(n * f), out(n * d), dxp(n * d);
                experts_forward(g, xp.data(), h.data(), a.data(), out.data(), how);
                experts_backward(g, xp.data(), h.data(), a.data(), dout.data(), dxp.data(),
                                 da.data(), dh.data(), how);
                EXPECT_TRUE(test::all_close(out, out1, 1e-4, 1e-5));
                EXPECT_TRUE(test::all_close(dxp, dx1, 1e-4, 1e-5));
                EXPECT_TRUE(test::all_close(G, G1, 1e-4, 1e-5));
                if (first_out.empty()) {
                    first_out = out;
                    first_dx = dxp;
                    first_g = G;
                } else {  // same numbers whatever the scheme and thread count
                    EXPECT_TRUE(test::all_close(out, first_out, 0, 0));
                    EXPECT_TRUE(test::all_close(dxp, first_dx, 0, 0));
                    EXPECT_TRUE(test::all_close(G, first_g, 0, 0));
                }
            }
        }
        set_threads(0);
    }
}

TEST(Experts, ChooseThreads) {
    std::vector<int32_t> balanced(65), skewed = {0, 1000, 1010, 1020, 1030, 1040};
    for (int e = 0; e <= 64; e++) balanced[e] = e * 512;
    EXPECT_EQ(choose_expert_threads(ExpertThreads::automatic, 64, balanced.data(), 512, 256, 2),
              ExpertThreads::experts);
    EXPECT_EQ(choose_expert_threads(ExpertThreads::automatic, 5, skewed.data(), 512, 256, 2),
              ExpertThreads::blas);
    EXPECT_EQ(choose_expert_threads(ExpertThreads::automatic, 64, balanced.data(), 512, 256, 1),
              ExpertThreads::blas);
    EXPECT_EQ(choose_expert_threads(ExpertThreads::experts, 5, skewed.data(), 512, 256, 1),
              ExpertThreads::experts);
}
