// The whole MoE layer: finite differences of dx and every parameter (router matrices, every
// expert, shared experts) for each router, with the random draws fed in so each check is exact;
// the documented noise order; capacity vs dropless; statistics by hand; determinism for 1 and 2
// threads; bad input.
#include "moe/moe_layer.h"

#include <cmath>
#include <cstring>

#include <tuple>

#include "kernels/gemm.h"
#include "moe/experts.h"
#include "moe/runtime.h"
#include "test_util.h"

using namespace moe;

namespace {

MoeConfig small_config(const std::string& router) {
    MoeConfig c;
    c.router = router;
    c.d_model = 5;
    c.d_ff = 4;
    c.n_experts = 4;
    c.top_k = 2;
    c.seed = 11;
    return c;
}

// Fixed random draws for T tokens (so a noisy forward is a deterministic function of the
// parameters and finite differences are exact).
struct Noise {
    std::vector<float> normal, uniform, jitter, gshard_u;
    RouterNoise rn;
    Noise(int T, int d, int E, uint64_t seed) {
        Rng r(seed);
        normal.resize(T * E);
        uniform.resize(T * E);
        jitter.resize(T * d);
        gshard_u.resize(T);
        r.fill_normal(normal.data(), T * E);
        r.fill_uniform(uniform.data(), T * E);
        r.fill_uniform(jitter.data(), T * d);
        r.fill_uniform(gshard_u.data(), T);
        rn.normal = normal.data();
        rn.uniform = uniform.data();
        rn.jitter = jitter.data();
        rn.gshard_u = gshard_u.data();
    }
};

// L = <y, g> + weighted aux losses, accumulated in double.
double loss(MoeLayer& L, const std::vector<float>& x, const std::vector<float>& g, int T,
            bool training, const RouterNoise* rn) {
    const int d = L.config().d_model;
    std::vector<float> y(T * d);
    L.forward({x.data(), {T, d}}, {y.data(), {T, d}}, training, rn);
    double s = L.aux().weighted_total;
    for (size_t i = 0; i < y.size(); i++) s += (double)y[i] * g[i];
    return s;
}

// Central differences on every input element and every parameter. fp32 layer, so eps is large
// enough to beat rounding and small enough to stay on one side of every routing decision.
void check_gradients(const MoeConfig& cfg, int T, bool training, const char* what) {
    SCOPED_TRACE(what);
    MoeLayer L(cfg);
    const int d = cfg.d_model;
    // Router weights larger than the default init, so routing is decisive and aux losses matter.
    for (auto& s : L.params())
        if (s.name.rfind("router.", 0) == 0) {
            auto w = test::randn(s.shape.numel(), 77 + s.offset, 0.7f);
            std::memcpy(L.param_data() + s.offset, w.data(), sizeof(float) * w.size());
        }
    Noise noise(T, d, cfg.n_experts, 5);
    auto x = test::randn((size_t)T * d, 3);
    auto g = test::randn((size_t)T * d, 4);
    std::vector<float> y(T * d), dx(T * d, NAN);
    L.zero_grad();
    L.forward({x.data(), {T, d}}, {y.data(), {T, d}}, training, &noise.rn);
    L.backward({g.data(), {T, d}}, {dx.data(), {T, d}});
    std::vector<float> grad(L.grad_data(), L.grad_data() + L.n_params());

    const float eps = 2e-3f;
    auto near = [&](double num, double ana, const std::string& name) {
        double tol = 2e-3 + 2e-2 * std::fabs(num);
        EXPECT_NEAR(ana, num, tol) << name;
        return std::fabs(ana - num) <= tol;
    };
    int bad = 0;
    for (int i = 0; i < T * d && bad < 5; i++) {
        auto xp = x, xm = x;
        xp[i] += eps;
        xm[i] -= eps;
        double num = (loss(L, xp, g, T, training, &noise.rn) - loss(L, xm, g, T, training, &noise.rn)) /
                     (2 * eps);
        bad += !near(num, dx[i], "dx[" + std::to_string(i) + "]");
    }
    float* p = L.param_data();
    for (auto& s : L.params()) {
        for (int64_t i = 0; i < s.shape.numel() && bad < 5; i++) {
            float keep = p[s.offset + i];
            p[s.offset + i] = keep + eps;
            double lp = loss(L, x, g, T, training, &noise.rn);
            p[s.offset + i] = keep - eps;
            double lm = loss(L, x, g, T, training, &noise.rn);
            p[s.offset + i] = keep;
            bad += !near((lp - lm) / (2 * eps), grad[s.offset + i],
                         s.name + "[" + std::to_string(i) + "]");
        }
    }
}

}  // namespace

TEST(MoeLayer, ParameterLayout) {
    MoeConfig c = small_config("noisy-topk");
    c.n_shared_experts = 1;
    c.d_ff_shared = 3;
    MoeLayer L(c);
    const int d = 5, f = 4, E = 4;
    EXPECT_EQ(L.param("router.weight").offset, 0u);
    EXPECT_EQ(L.param("router.noise_weight").offset, (size_t)E * d);  // contiguous: one GEMM
    size_t e0 = 2 * E * d;
    EXPECT_EQ(L.param("experts.0.w1").offset, e0);
    EXPECT_EQ(L.param("experts.0.w3").offset, e0 + f * d);  // w1|w3 adjacent
    EXPECT_EQ(L.param("experts.0.w2").offset, e0 + 2 * f * d);
    EXPECT_EQ(L.param("experts.0.w2").shape, (Shape{d, f}));
    EXPECT_EQ(L.param("experts.1.w1").offset, e0 + 3 * f * d);
    EXPECT_EQ(L.param("shared_experts.0.w3").shape, (Shape{3, d}));
    EXPECT_EQ(L.n_params(), (size_t)(2 * E * d + E * 3 * f * d + 3 * 3 * d));
    EXPECT_THROW(L.param("experts.4.w1"), Error);
    MoeConfig r = small_config("topk");
    r.activation = Activation::relu;
    MoeLayer R(r);
    EXPECT_EQ(R.param("experts.0.w2").offset, (size_t)(E * d + f * d));
    EXPECT_THROW(R.param("experts.0.w3"), Error);
}

TEST(MoeLayer, GradientsTopk) {
    MoeConfig c = small_config("topk");
    c.w_importance = 0.3f;
    c.w_switch = 0.2f;
    c.w_zloss = 0.1f;
    check_gradients(c, 6, true, "topk renormalised");
    c.renormalize = false;
    check_gradients(c, 6, true, "topk no renormalisation");
    c.score = "sigmoid";
    c.renormalize = true;
    check_gradients(c, 6, true, "topk sigmoid");
}

TEST(MoeLayer, GradientsSoftmaxAndActivations) {
    MoeConfig c = small_config("softmax");
    c.w_importance = 0.3f;
    check_gradients(c, 5, true, "softmax swiglu");
    c.activation = Activation::gelu;
    check_gradients(c, 5, true, "softmax gelu");
    c.activation = Activation::relu;
    check_gradients(c, 5, true, "softmax relu");
}

TEST(MoeLayer, GradientsNoisyTopk) {
    MoeConfig c = small_config("noisy-topk");
    c.w_importance = 0.2f;
    c.w_load = 0.3f;
    check_gradients(c, 6, true, "noisy-topk (train, noise fed)");
    check_gradients(c, 6, false, "noisy-topk (eval)");
}

TEST(MoeLayer, GradientsSwitchWithJitter) {
    MoeConfig c = small_config("switch");
    c.top_k = 1;
    c.jitter = 0.1f;
    c.w_switch = 0.5f;
    c.w_zloss = 0.2f;
    check_gradients(c, 6, true, "switch + jitter");
}

TEST(MoeLayer, GradientsGshardExpertChoiceHierarchical) {
    MoeConfig g = small_config("gshard");
    g.w_switch = 0.3f;
    check_gradients(g, 7, true, "gshard (u fed)");
    MoeConfig e = small_config("expert-choice");
    e.capacity_factor = 1.0f;
    check_gradients(e, 8, true, "expert-choice");
    MoeConfig h = small_config("hierarchical");
    h.n_groups = 2;
    h.topk_groups = 1;
    check_gradients(h, 6, true, "hierarchical");
}

TEST(MoeLayer, GradientsGateDropoutSharedCapacity) {
    MoeConfig c = small_config("topk");
    c.gate_dropout = 0.3f;
    check_gradients(c, 6, true, "gate dropout (u fed)");
    c.gate_dropout = 0.f;
    c.n_shared_experts = 2;
    c.d_ff_shared = 3;
    check_gradients(c, 6, true, "shared experts");
    c.n_shared_experts = 0;
    c.dropless = false;
    c.capacity_factor = 0.5f;  // C = ceil(0.5 * 6 * 2 / 4) = 2: drops
    check_gradients(c, 6, true, "capacity drops, token priority");
    c.priority = "weight";
    check_gradients(c, 6, true, "capacity drops, weight priority");
}

TEST(MoeLayer, GradientsTopP) {
    MoeConfig c = small_config("top-p");
    c.top_k = 3;  // max_k
    c.threshold = 0.6f;
    c.w_importance = 0.3f;
    c.w_switch = 0.2f;
    c.w_zloss = 0.1f;
    check_gradients(c, 7, true, "top-p 0.6, max_k 3");
    c.threshold = 0.9f;
    c.gate_dropout = 0.2f;
    check_gradients(c, 7, true, "top-p 0.9 + gate dropout (u fed)");
    c.gate_dropout = 0.f;
    c.dropless = false;
    c.capacity_factor = 0.5f;  // C = ceil(0.5 * 7 * 3 / 4) = 3: drops
    check_gradients(c, 7, true, "top-p, capacity drops, token priority");
    c.priority = "weight";
    check_gradients(c, 7, true, "top-p, capacity drops, weight priority");
}

// Shared experts add FFN_s(x) to every token, on top of the routed output.
TEST(MoeLayer, SharedExpertsAddTheirFfn) {
    MoeConfig c = small_config("topk");
    const int T = 9, d = c.d_model;
    MoeLayer A(c);
    c.n_shared_experts = 1;
    c.d_ff_shared = 6;
    MoeLayer B(c);
    std::memcpy(B.param_data(), A.param_data(), sizeof(float) * A.n_params());  // same prefix
    auto x = test::randn(T * d, 1);
    std::vector<float> ya(T * d), yb(T * d), h(T * 12), a(T * 6), s(T * d);
    A.forward({x.data(), {T, d}}, {ya.data(), {T, d}}, false);
    B.forward({x.data(), {T, d}}, {yb.data(), {T, d}}, false);
    const float* w = B.param_data() + B.param("shared_experts.0.w1").offset;
    ffn_forward_ref(Activation::swiglu, T, d, 6, x.data(), w, w + 12 * d, h.data(), a.data(),
                    s.data());
    for (int i = 0; i < T * d; i++) ya[i] += s[i];
    EXPECT_TRUE(test::all_close(yb, ya, 1e-5, 1e-6));
}

// With a capacity large enough for everything the capped layer equals the dropless one; with a
// small one it drops, keeps at most C per expert, and a token with every slot dropped gets 0.
TEST(MoeLayer, DroplessVersusCapacity) {
    MoeConfig c = small_config("topk");
    c.d_model = 8;
    c.n_experts = 4;
    const int T = 40, d = 8;
    auto x = test::randn(T * d, 2);
    MoeLayer free_layer(c);
    for (auto& s : free_layer.params())  // decisive router, so loads are uneven
        if (s.name == "router.weight") {
            auto w = test::randn(s.shape.numel(), 9, 1.f);
            std::memcpy(free_layer.param_data() + s.offset, w.data(), sizeof(float) * w.size());
        }
    std::vector<float> y0(T * d), y1(T * d);
    free_layer.forward({x.data(), {T, d}}, {y0.data(), {T, d}}, false);
    EXPECT_EQ(free_layer.stats().dropped, 0);
    EXPECT_EQ(free_layer.stats().routed, T * 2);

    c.dropless = false;
    c.capacity_factor = 4.f;  // C = 80 >= T
    MoeLayer big(c);
    std::memcpy(big.param_data(), free_layer.param_data(), sizeof(float) * big.n_params());
    big.forward({x.data(), {T, d}}, {y1.data(), {T, d}}, false);
    EXPECT_TRUE(test::all_close(y1, y0, 0, 0));

    c.capacity_factor = 0.25f;  // C = ceil(0.25 * 40 * 2 / 4) = 5
    MoeLayer tight(c);
    std::memcpy(tight.param_data(), free_layer.param_data(), sizeof(float) * tight.n_params());
    tight.forward({x.data(), {T, d}}, {y1.data(), {T, d}}, false);
    const MoeStats& st = tight.stats();
    int64_t kept = 0;
    for (auto v : st.tokens_per_expert) {
        EXPECT_LE(v, 5);
        kept += v;
    }
    EXPECT_EQ(kept + st.dropped, st.routed);
    EXPECT_GT(st.dropped, 0);
    auto asg = tight.last_assignments();
    std::vector<int> kept_slots(T, 0);
    for (auto& a : asg) kept_slots[a.token] += a.kept;
    int zero_tokens = 0;
    for (int t = 0; t < T; t++)
        if (kept_slots[t] == 0) {
            zero_tokens++;
            for (int j = 0; j < d; j++) EXPECT_EQ(y1[t * d + j], 0.f) << "token " << t;
        }
    EXPECT_GT(zero_tokens, 0);
}

// Statistics by hand: a zero router gives uniform scores, so entropy = log E; top-1 without
// renormalisation has weight 1/E; load CV is std/mean of tokens_per_expert.
TEST(MoeLayer, StatisticsByHand) {
    MoeConfig c = small_config("topk");
    c.top_k = 1;
    c.renormalize = false;
    const int T = 12, d = c.d_model, E = c.n_experts;
    MoeLayer L(c);
    std::memset(L.param_data(), 0, sizeof(float) * E * d);
    auto x = test::randn(T * d, 4);
    std::vector<float> y(T * d);
    L.forward({x.data(), {T, d}}, {y.data(), {T, d}}, false);
    const MoeStats& st = L.stats();
    EXPECT_NEAR(st.router_entropy, std::log((double)E), 1e-6);
    EXPECT_NEAR(st.mean_top1_weight, 1.0 / E, 1e-6);
    double mean = (double)T / E, var = 0;
    for (auto v : st.tokens_per_expert) var += (v - mean) * (v - mean);
    EXPECT_NEAR(st.load_cv, std::sqrt(var / E) / mean, 1e-12);
    EXPECT_EQ(st.routed, T);
    EXPECT_EQ(st.dropped, 0);
}

// Experts per token: a zero router gives p = 1/4 exactly, so top-p with threshold 0.5 takes
// exactly 2 experts on every token (0.25 + 0.25 >= 0.5); with capacity the histogram counts the
// kept slots: it always sums to T and its mean is kept slots / T.
TEST(MoeLayer, ExpertsPerTokenByHand) {
    MoeConfig c = small_config("top-p");
    c.top_k = 3;
    c.threshold = 0.5f;
    const int T = 12, d = c.d_model, E = c.n_experts;
    auto x = test::randn(T * d, 4);
    std::vector<float> y(T * d);
    {
        MoeLayer L(c);
        std::memset(L.param_data(), 0, sizeof(float) * E * d);
        L.forward({x.data(), {T, d}}, {y.data(), {T, d}}, false);
        EXPECT_EQ(L.stats().experts_per_token, (std::vector<int64_t>{0, 0, T, 0}));
        EXPECT_DOUBLE_EQ(L.stats().mean_experts_per_token, 2.0);
        EXPECT_EQ(L.stats().routed, 2 * T);
    }
    c = small_config("topk");
    c.dropless = false;
    c.capacity_factor = 0.5f;  // C = 3 per expert, 12 kept of 24
    MoeLayer L(c);
    L.forward({x.data(), {T, d}}, {y.data(), {T, d}}, false);
    const MoeStats& st = L.stats();
    ASSERT_EQ(st.experts_per_token.size(), 3u);
    int64_t tokens = 0, used = 0;
    for (int n = 0; n <= 2; n++) {
        tokens += st.experts_per_token[n];
        used += n * st.experts_per_token[n];
    }
    EXPECT_EQ(tokens, T);
    EXPECT_EQ(used, st.routed - st.dropped);
    EXPECT_GT(st.dropped, 0);
    EXPECT_DOUBLE_EQ(st.mean_experts_per_token, (double)used / T);
}

// The layer draws its noise from Rng(cfg.seed) in the documented order: jitter u [T,d],
// normal [T,E], uniform [T,E], gshard_u [T] (each only when the router needs it).
TEST(MoeLayer, NoiseOrderIsDocumented) {
    MoeConfig c = small_config("noisy-topk");
    c.jitter = 0.2f;
    c.gate_dropout = 0.25f;
    const int T = 16, d = c.d_model, E = c.n_experts;
    MoeLayer own(c), fed(c);
    Rng r(c.seed);
    std::vector<float> u(T * d), nrm(T * E), uni(T * E);
    r.fill_uniform(u.data(), T * d);
    r.fill_normal(nrm.data(), T * E);
    r.fill_uniform(uni.data(), T * E);
    RouterNoise rn;
    rn.jitter = u.data();
    rn.normal = nrm.data();
    rn.uniform = uni.data();
    auto x = test::randn(T * d, 8);
    std::vector<float> y0(T * d), y1(T * d);
    own.forward({x.data(), {T, d}}, {y0.data(), {T, d}}, true);
    fed.forward({x.data(), {T, d}}, {y1.data(), {T, d}}, true, &rn);
    EXPECT_TRUE(test::all_close(y0, y1, 0, 0));
    // The draws really matter: a second forward draws fresh noise.
    own.forward({x.data(), {T, d}}, {y1.data(), {T, d}}, true);
    EXPECT_FALSE(test::all_close(y0, y1, 0, 0));
}

// Same seed and thread count: bit-identical y, dx and gradients. Shapes that take both expert
// threading schemes (few big experts; many small ones).
TEST(MoeLayer, DeterministicForOneAndTwoThreads) {
    struct Case {
        const char* router;
        int E, k, f;
    } cases[] = {{"noisy-topk", 4, 2, 96}, {"topk", 32, 4, 24}, {"top-p", 16, 4, 24}};
    for (auto& cs : cases) {
        MoeConfig c;
        c.router = cs.router;
        c.d_model = 48;
        c.d_ff = cs.f;
        c.n_experts = cs.E;
        c.top_k = cs.k;
        c.n_shared_experts = 1;
        c.jitter = 0.05f;
        c.w_load = 0.1f;
        c.w_importance = 0.1f;
        const int T = 300, d = 48;
        auto x = test::randn(T * d, 1), dy = test::randn(T * d, 2);
        for (int threads : {1, 2}) {
            set_threads(threads);
            std::vector<float> first_y, first_dx, first_g;
            for (int rep = 0; rep < 2; rep++) {
                MoeLayer L(c);
                std::vector<float> y(T * d), dx(T * d);
                L.forward({x.data(), {T, d}}, {y.data(), {T, d}}, true);
                L.backward({dy.data(), {T, d}}, {dx.data(), {T, d}});
                std::vector<float> g(L.grad_data(), L.grad_data() + L.n_params());
                if (rep == 0) {
                    first_y = y;
                    first_dx = dx;
                    first_g = g;
                } else {
                    EXPECT_EQ(0, std::memcmp(y.data(), first_y.data(), 4 * y.size()))
                        << cs.router << " threads=" << threads;
                    EXPECT_EQ(0, std::memcmp(dx.data(), first_dx.data(), 4 * dx.size()))
                        << cs.router << " threads=" << threads;
                    EXPECT_EQ(0, std::memcmp(g.data(), first_g.data(), 4 * g.size()))
                        << cs.router << " threads=" << threads;
                }
            }
        }
    }
    set_threads(0);
}

TEST(MoeLayer, BadConfigIsRejected) {
    auto msg = [](MoeConfig c) {
        try {
            MoeLayer L(c);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    MoeConfig c = small_config("topk");
    c.top_k = 5;
    EXPECT_NE(msg(c).find("top_k=5"), std::string::npos) << msg(c);
    c.top_k = 0;
    EXPECT_NE(msg(c).find("top_k=0"), std::string::npos) << msg(c);
    c = small_config("topk");
    c.dropless = false;
    c.capacity_factor = 0.f;
    EXPECT_NE(msg(c).find("capacity_factor"), std::string::npos) << msg(c);
    c.capacity_factor = -1.f;
    EXPECT_NE(msg(c).find("capacity_factor"), std::string::npos) << msg(c);
    c = small_config("topk");
    c.d_model = 0;
    EXPECT_NE(msg(c).find("d_model=0"), std::string::npos) << msg(c);
    c = small_config("topk");
    c.d_ff = 0;
    EXPECT_NE(msg(c).find("d_ff=0"), std::string::npos) << msg(c);
    c = small_config("tpok");
    EXPECT_NE(msg(c).find("unknown router 'tpok'"), std::string::npos) << msg(c);
    EXPECT_THROW(activation_from_string("silu"), Error);
    EXPECT_EQ(activation_from_string("gelu"), Activation::gelu);
}

TEST(MoeLayer, BadInputIsRejected) {
    MoeConfig c = small_config("topk");
    MoeLayer L(c);
    const int T = 4, d = c.d_model;
    auto x = test::randn(T * d, 1);
    std::vector<float> y(T * d), dx(T * d);
    for (float bad : {NAN, INFINITY, -INFINITY}) {
        auto xb = x;
        xb[3 * d + 2] = bad;
        try {
            L.forward({xb.data(), {T, d}}, {y.data(), {T, d}}, true);
            ADD_FAILURE() << "no error for " << bad;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("token 3"), std::string::npos) << e.what();
        }
    }
    auto expect_shapes = [](auto fn, const char* a, const char* b) {
        try {
            fn();
            ADD_FAILURE() << "no error";
        } catch (const Error& e) {
            std::string m = e.what();
            EXPECT_NE(m.find(a), std::string::npos) << m;
            EXPECT_NE(m.find(b), std::string::npos) << m;
        }
    };
    expect_shapes([&] { L.forward({x.data(), {T, d}}, {y.data(), {T, d + 1}}, true); }, "[4, 5]",
                  "[4, 6]");
    expect_shapes([&] { L.forward({x.data(), {2, 10}}, {y.data(), {2, 10}}, true); }, "[T, 5]",
                  "[2, 10]");
    EXPECT_THROW(L.backward({y.data(), {T, d}}, {dx.data(), {T, d}}), Error);  // no forward yet
    L.forward({x.data(), {T, d}}, {y.data(), {T, d}}, true);
    expect_shapes([&] { L.backward({y.data(), {T - 1, d}}, {dx.data(), {T, d}}); }, "[4, 5]",
                  "[3, 5]");
}

// Aux-loss-free balancing (DeepSeek-V3): with a router that sends most tokens to expert 0, the
// selection bias must move load away from it step by step, and never change the weights' formula
// (the combine weights still come from the unbiased scores).
TEST(MoeLayer, BalanceBiasEvensOutLoad) {
    MoeConfig c = small_config("topk");
    c.n_experts = 4;
    c.top_k = 1;
    c.bias_update_rate = 0.002f;
    MoeLayer layer(c);
    layer.init_params(3);
    const int T = 256, d = c.d_model;
    // Diverse tokens (random router rows, N(0,1) inputs) plus one input feature that only expert
    // 0's router row reads: expert 0 wins most tokens, but not all, so a bias can rebalance.
    float* wg = layer.param_data() + layer.param("router.weight").offset;
    std::vector<float> w = test::randn((size_t)c.n_experts * d, 9);
    for (int e = 0; e < c.n_experts; e++)
        for (int j = 0; j < d; j++) wg[(size_t)e * d + j] = j == 0 ? (e == 0 ? 3.0f : 0.f) : w[(size_t)e * d + j];
    std::vector<float> x = test::randn((size_t)T * d, 5), y((size_t)T * d);
    for (int t = 0; t < T; t++) x[(size_t)t * d] = 1.0f;
    layer.forward(ConstTensorView(x.data(), Shape{T, d}), TensorView(y.data(), Shape{T, d}), false);
    const double cv_before = layer.stats().load_cv;
    const int64_t load0_before = layer.stats().tokens_per_expert[0];
    ASSERT_GT(load0_before, T / 2) << "the set-up should overload expert 0";
    for (int step = 0; step < 300; step++) {
        layer.update_balance_bias();
        layer.forward(ConstTensorView(x.data(), Shape{T, d}), TensorView(y.data(), Shape{T, d}),
                      false);
    }
    EXPECT_LT(layer.balance_bias()[0], 0.f);
    EXPECT_LT(layer.stats().tokens_per_expert[0], load0_before);
    EXPECT_LT(layer.stats().load_cv, 0.5 * cv_before);
    // Weights are the unbiased softmax probabilities of the chosen expert: each in (0, 1].
    for (const auto& a : layer.last_assignments()) {
        EXPECT_GT(a.weight, 0.f);
        EXPECT_LE(a.weight, 1.f);
    }
}

// ---- precision (docs/precision.md) ------------------------------------------------------------

static double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return std::sqrt(num / std::max(den, 1e-300));
}

struct LayerRun {
    std::vector<float> y, dx, g;
    std::vector<MoeLayer::Assignment> assign;
    AuxLosses aux;
};

static LayerRun run_layer(MoeLayer& L, const std::vector<float>& x, const std::vector<float>& dy,
                          int T) {
    const int d = L.config().d_model;
    LayerRun r;
    r.y.resize(T * d);
    r.dx.resize(T * d);
    L.zero_grad();
    L.forward({x.data(), {T, d}}, {r.y.data(), {T, d}}, true);
    L.backward({dy.data(), {T, d}}, {r.dx.data(), {T, d}});
    r.g.assign(L.grad_data(), L.grad_data() + L.n_params());
    r.assign = L.last_assignments();
    r.aux = L.aux();
    return r;
}

// bf16 GEMMs with the fp32 router: the same routing (the logits are fp32), outputs and gradients
// within bf16 rounding of fp32, and not equal to them (the rounding happened).
TEST(MoeLayer, Bf16ExpertsCloseToFp32WithTheSameRouting) {
    MoeConfig c;
    c.router = "topk";
    c.d_model = 64;
    c.d_ff = 48;
    c.n_experts = 8;
    c.top_k = 2;
    c.n_shared_experts = 1;
    c.w_switch = 0.01f;
    c.w_zloss = 0.001f;
    const int T = 97, d = 64;
    auto x = test::randn(T * d, 3), dy = test::randn(T * d, 4);
    MoeLayer L(c);
    LayerRun f32 = run_layer(L, x, dy, T);
    L.set_precision(Precision::bf16);
    EXPECT_EQ(L.precision(), Precision::bf16);
    EXPECT_EQ(L.router_precision(), Precision::fp32);
    LayerRun b16 = run_layer(L, x, dy, T);
    ASSERT_EQ(f32.assign.size(), b16.assign.size());
    for (size_t i = 0; i < f32.assign.size(); i++) {
        EXPECT_EQ(f32.assign[i].expert, b16.assign[i].expert) << i;
        EXPECT_EQ(f32.assign[i].weight, b16.assign[i].weight) << i;  // fp32 router: same bits
    }
    EXPECT_EQ(f32.aux.z_loss, b16.aux.z_loss);
    for (auto [name, a, b] : {std::tuple{"y", &b16.y, &f32.y}, std::tuple{"dx", &b16.dx, &f32.dx},
                              std::tuple{"grads", &b16.g, &f32.g}}) {
        double e = rel_l2(*a, *b);
        EXPECT_LT(e, 1e-2) << name;  // bf16 keeps 8 significant bits: <= 2^-8 per operand
        EXPECT_GT(e, 1e-5) << name;  // fp32 reorderings alone stay near 1e-7
    }
    L.set_precision(Precision::fp32);  // and back: fp32 bits again
    LayerRun again = run_layer(L, x, dy, T);
    EXPECT_EQ(0, std::memcmp(again.y.data(), f32.y.data(), 4 * f32.y.size()));
}

// A bf16 router (the stability experiment) hands bf16 logits to the softmax: its z-loss is that
// of the logits computed from bf16-rounded operands and rounded to bf16.
TEST(MoeLayer, Bf16RouterSeesBf16Logits) {
    MoeConfig c;
    c.router = "topk";
    c.d_model = 32;
    c.d_ff = 16;
    c.n_experts = 6;
    c.top_k = 2;
    c.w_zloss = 0.01f;
    const int T = 41, d = 32, E = 6;
    auto x = test::randn(T * d, 5), dy = test::randn(T * d, 6);
    MoeLayer L(c);
    // Larger router weights, so the logits have bits for bf16 to cut.
    float* W = L.param_data() + L.param("router.weight").offset;
    auto w = test::randn(E * d, 7);
    std::memcpy(W, w.data(), sizeof(float) * E * d);
    LayerRun f32 = run_layer(L, x, dy, T);
    L.set_precision(Precision::bf16, Precision::bf16);
    LayerRun b16 = run_layer(L, x, dy, T);
    std::vector<float> logits(T * E);
    gemm_ref(Precision::bf16, false, true, T, E, d, 1.f, x.data(), d, W, d, 0.f, logits.data(), E);
    double z = 0;
    for (int t = 0; t < T; t++) {
        double m = -1e30, s = 0;
        for (int e = 0; e < E; e++) m = std::max(m, (double)round_bf16(logits[t * E + e]));
        for (int e = 0; e < E; e++) s += std::exp(round_bf16(logits[t * E + e]) - m);
        z += (m + std::log(s)) * (m + std::log(s));
    }
    z /= T;
    EXPECT_NEAR(b16.aux.z_loss, z, 1e-5 * z);
    EXPECT_GT(std::fabs(b16.aux.z_loss - f32.aux.z_loss), 1e-4 * z);
}
