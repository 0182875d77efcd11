// Routers and balancing losses: backward vs central differences, hand-computed losses, invariants,
// the samplers' statistics and bad configs. See docs/routers.md for the conventions tested here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "moe/balance.h"
#include "moe/router.h"
#include "test_util.h"

namespace moe {
namespace {

// One router call's inputs, owning its buffers.
struct Case {
    MoeConfig cfg;
    int T = 0, ld = 0;
    bool training = false;
    std::vector<float> logits, normal, uniform, gshard_u, bias;
    bool use_bias = false;

    RouterInput input(const float* l) const {
        RouterInput in;
        in.T = T;
        in.d = 1;
        in.E = cfg.n_experts;
        in.cfg = &cfg;
        in.logits = l;
        in.ld = ld;
        in.normal = normal.data();
        in.uniform = uniform.data();
        in.gshard_u = gshard_u.data();
        in.bias = use_bias ? bias.data() : nullptr;
        in.training = training;
        return in;
    }
};

MoeConfig config(const std::string& router, int E, int k) {
    MoeConfig c;
    c.router = router;
    c.n_experts = E;
    c.top_k = k;
    c.d_model = 1;
    c.d_ff = 1;
    return c;
}

Case make_case(const MoeConfig& cfg, int T, bool training, uint64_t seed) {
    Case c;
    c.cfg = cfg;
    c.T = T;
    c.training = training;
    auto r = make_router(cfg);
    for (auto& m : r->logit_matrices(cfg)) c.ld += m.second;
    c.ld += 1;  // a spare column: routers must leave stride > their columns alone
    const int E = cfg.n_experts;
    Rng rng(seed);
    c.logits.resize((size_t)T * c.ld);
    rng.fill_normal(c.logits.data(), (int64_t)c.logits.size(), 0.f, 1.f);
    c.normal.resize((size_t)T * E);
    rng.fill_normal(c.normal.data(), (int64_t)c.normal.size());
    c.uniform.resize((size_t)T * E);
    rng.fill_uniform(c.uniform.data(), (int64_t)c.uniform.size());
    c.gshard_u.resize(T);
    rng.fill_uniform(c.gshard_u.data(), T);
    c.bias.resize(E);
    rng.fill_normal(c.bias.data(), E, 0.f, 0.1f);
    return c;
}

// The scalar the gradient check differentiates: Σ_a c_a weight_a + aux.weighted_total, plus a
// signature of the discrete choices (assignments) so a step that changes them is skipped.
struct Eval {
    double f = 0;
    std::vector<int32_t> sig;
};

Eval evaluate(const Case& c, const float* l, const std::vector<float>& coef) {
    auto r = make_router(c.cfg);
    Routing out;
    AuxLosses aux;
    r->forward(c.input(l), out, aux);
    Eval e;
    for (int a = 0; a < out.n(); a++) e.f += (double)coef[a % coef.size()] * out.weight[a];
    e.f += aux.weighted_total;
    e.sig = out.expert;
    e.sig.insert(e.sig.end(), out.token.begin(), out.token.end());
    // GShard's g1 depends on the second expert even when it is not dispatched: its identity counts.
    if (c.cfg.router == "gshard") {
        const int E = c.cfg.n_experts;
        for (int t = 0; t < c.T; t++) {
            std::vector<int> o(E);
            std::iota(o.begin(), o.end(), 0);
            const float* p = &r->probs()[(size_t)t * E];
            std::sort(o.begin(), o.end(), [&](int a, int b) { return p[a] > p[b]; });
            e.sig.insert(e.sig.end(), o.begin(), o.end());
        }
    }
    // Noisy top-k's load loss also depends on the full order of H (its thresholds).
    if (c.cfg.router == "noisy-topk" && c.training) {
        const int E = c.cfg.n_experts;
        for (int t = 0; t < c.T; t++) {
            std::vector<float> H(E);
            for (int i = 0; i < E; i++)
                H[i] = l[(size_t)t * c.ld + i] / c.cfg.temperature +
                       c.normal[(size_t)t * E + i] * softplusf(l[(size_t)t * c.ld + E + i]);
            std::vector<int> o(E);
            std::iota(o.begin(), o.end(), 0);
            std::sort(o.begin(), o.end(), [&](int a, int b) { return H[a] > H[b]; });
            e.sig.insert(e.sig.end(), o.begin(), o.end());
        }
    }
    return e;
}

// Analytic dlogits vs Richardson-extrapolated central differences. fp32 routers: h = 1e-2 on
// O(1) logits. The objective is accumulated in double from fp32 weights (relative error ~1e-7,
// < 1e-5 absolute over these sizes), so the difference quotient carries ~1e-3 of rounding noise at
// worst; Richardson removes the O(h²) truncation term. A wrong gradient term is off by O(0.1).
// Returns {checked, total} coordinates; callers require most of them checked.
std::pair<int, int> check_grad(const Case& c, uint64_t seed, const std::string& what) {
    SCOPED_TRACE(what);
    auto r = make_router(c.cfg);
    Routing out;
    AuxLosses aux;
    RouterInput in = c.input(c.logits.data());
    r->forward(in, out, aux);
    std::vector<float> coef(std::max(1, out.n()));
    Rng rng(seed);
    rng.fill_normal(coef.data(), (int64_t)coef.size());
    std::vector<float> dw(out.n());
    for (int a = 0; a < out.n(); a++) dw[a] = out.expert[a] >= 0 ? coef[a] : 0.f;
    std::vector<float> dl((size_t)c.T * c.ld, 123.f);
    r->backward(in, out, dw.data(), dl.data());

    const Eval base = evaluate(c, c.logits.data(), coef);
    const float h = 1e-2f;
    int checked = 0, skipped = 0;
    std::vector<float> l = c.logits;
    for (size_t j = 0; j < l.size(); j++) {
        double f[4];
        bool same = true;
        const float steps[4] = {h, -h, h / 2, -h / 2};
        for (int s = 0; s < 4; s++) {
            l[j] = c.logits[j] + steps[s];
            Eval e = evaluate(c, l.data(), coef);
            f[s] = e.f;
            same = same && e.sig == base.sig;
        }
        l[j] = c.logits[j];
        if (!same) {
            skipped++;
            continue;
        }
        const double d1 = (f[0] - f[1]) / (2 * h), d2 = (f[2] - f[3]) / h;
        const double fd = (4 * d2 - d1) / 3;
        EXPECT_NEAR(dl[j], fd, 1e-3 + 1e-2 * std::fabs(fd))
            << "logit [" << j / c.ld << ", " << j % c.ld << "]";
        checked++;
    }
    return {checked, checked + skipped};
}

struct Weights {
    float imp, load, sw, z;
};
const Weights kAllLosses[] = {{0.7f, 0.9f, 0.5f, 0.3f}, {1.3f, 0, 0, 0}, {0, 1.7f, 0, 0},
                              {0, 0, 1.1f, 0},          {0, 0, 0, 0.6f}, {0, 0, 0, 0}};

void sweep(const std::string& router, const std::vector<std::array<int, 2>>& ek,
           const std::function<void(MoeConfig&)>& tweak = nullptr) {
    uint64_t seed = 100;
    int checked = 0, total = 0;
    for (auto [E, k] : ek)
        for (int T : {1, 3, 6})
            for (bool training : {false, true})
                for (const Weights& w : kAllLosses) {
                    MoeConfig cfg = config(router, E, k);
                    cfg.temperature = 0.8f;
                    cfg.w_importance = w.imp;
                    cfg.w_load = w.load;
                    cfg.w_switch = w.sw;
                    cfg.w_zloss = w.z;
                    if (tweak) tweak(cfg);
                    Case c = make_case(cfg, T, training, seed++);
                    auto [ch, tot] =
                        check_grad(c, seed++,
                                   fmt::format("{} E={} k={} T={} training={} w=({},{},{},{})",
                                               router, E, k, T, training, w.imp, w.load, w.sw, w.z));
                    checked += ch;
                    total += tot;
                }
    // Coordinates whose ±h step changes a discrete choice are skipped (the function has a kink
    // there); almost all must be checked, or the sweep would prove nothing.
    EXPECT_GE(checked, (int)(0.9 * total)) << router << ": skipped " << total - checked;
}

TEST(RouterGrad, Softmax) {
    sweep("softmax", {{1, 1}, {3, 1}, {5, 2}});
    sweep("softmax", {{4, 1}}, [](MoeConfig& c) { c.gate_dropout = 0.3f; });
}
TEST(RouterGrad, Topk) {
    sweep("topk", {{1, 1}, {4, 2}, {5, 5}, {6, 3}});
    sweep("topk", {{5, 2}}, [](MoeConfig& c) { c.renormalize = false; });
    sweep("topk", {{5, 2}, {4, 4}}, [](MoeConfig& c) { c.score = "sigmoid"; });
    sweep("topk", {{5, 2}}, [](MoeConfig& c) {
        c.score = "sigmoid";
        c.renormalize = false;
    });
    sweep("topk", {{6, 2}}, [](MoeConfig& c) { c.gate_dropout = 0.25f; });
}
TEST(RouterGrad, TopkWithBias) {
    MoeConfig cfg = config("topk", 5, 2);
    cfg.w_importance = 0.5f;
    cfg.w_switch = 0.5f;
    Case c = make_case(cfg, 4, true, 7);
    c.use_bias = true;
    auto [checked, total] = check_grad(c, 8, "topk + bias");
    EXPECT_GE(checked, (int)(0.9 * total));
}
TEST(RouterGrad, NoisyTopk) { sweep("noisy-topk", {{1, 1}, {3, 1}, {5, 2}, {4, 4}, {6, 3}}); }
TEST(RouterGrad, Switch) {
    sweep("switch", {{1, 1}, {4, 1}});
    sweep("switch", {{5, 1}}, [](MoeConfig& c) { c.gate_dropout = 0.2f; });
}
TEST(RouterGrad, Gshard) {
    sweep("gshard", {{2, 2}, {5, 2}});
    sweep("gshard", {{5, 2}}, [](MoeConfig& c) { c.gate_dropout = 0.2f; });
}
TEST(RouterGrad, ExpertChoice) {
    sweep("expert-choice", {{1, 1}, {4, 1}, {5, 2}});
    sweep("expert-choice", {{4, 2}}, [](MoeConfig& c) { c.capacity_factor = 0.5f; });
}
TEST(RouterGrad, Hierarchical) {
    sweep("hierarchical", {{6, 2}}, [](MoeConfig& c) { c.n_groups = 3, c.topk_groups = 1; });
    sweep("hierarchical", {{8, 4}}, [](MoeConfig& c) { c.n_groups = 4, c.topk_groups = 2; });
    sweep("hierarchical", {{4, 4}}, [](MoeConfig& c) { c.n_groups = 2, c.topk_groups = 2; });
    sweep("hierarchical", {{1, 1}}, [](MoeConfig& c) { c.n_groups = 1, c.topk_groups = 1; });
}

// ---- hand-computed 4-token, 3-expert examples -------------------------------------------------------

// Switch router on logits log(counts): softmax is counts/8 exactly.
//   t0 log[1,2,5] -> p = [1,2,5]/8, argmax e2, weight 5/8
//   t1 log[6,1,1] -> p = [6,1,1]/8, e0, 6/8
//   t2 log[2,5,1] -> p = [2,5,1]/8, e1, 5/8
//   t3 log[4,3,1] -> p = [4,3,1]/8, e0, 4/8
// importance: Importance = [10/8, 5/8, 5/8] ∝ [2,1,1]: mean 4/3, var ((2/3)² + 2 (1/3)²)/3 = 2/9,
//   cv² = (2/9) / (16/9) = 0.125.
// switch: f = [2,1,1]/4; P = column means = [1+6+2+4, 2+1+5+3, 5+1+1+1]/32 = [13,11,8]/32;
//   E Σ f P = 3 (0.5*13 + 0.25*11 + 0.25*8)/32 = 3*11.25/32 = 1.0546875.
// z-loss: every row sums to 8, so lse = ln 8 and z = (ln 8)² = 4.324077125263812.
TEST(RouterHand, ImportanceSwitchZ) {
    MoeConfig cfg = config("switch", 3, 1);
    const float counts[4][3] = {{1, 2, 5}, {6, 1, 1}, {2, 5, 1}, {4, 3, 1}};
    std::vector<float> l(12);
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 3; i++) l[t * 3 + i] = std::log(counts[t][i]);
    Case c;
    c.cfg = cfg;
    c.T = 4;
    c.ld = 3;
    auto r = make_router(cfg);
    Routing out;
    AuxLosses aux;
    r->forward(c.input(l.data()), out, aux);
    EXPECT_EQ(out.expert, (std::vector<int32_t>{2, 0, 1, 0}));
    EXPECT_NEAR(out.weight[0], 5.0 / 8, 1e-6);
    EXPECT_NEAR(aux.importance, 0.125, 1e-6);
    EXPECT_NEAR(aux.switch_loss, 1.0546875, 1e-6);
    EXPECT_NEAR(aux.z_loss, 4.324077125263812, 1e-5);
    EXPECT_EQ(aux.load, 0.0);  // not a noisy router
    EXPECT_EQ(aux.weighted_total, 0.0);
}

// Importance from a hand-made routing (top-1 weights, unused slot ignored):
//   t0 -> e0 0.5, t1 -> e0 0.7, t2 -> e1 0.6, t3 -> e2 0.2, plus one unused slot (-1, 0.9).
//   Importance = [1.2, 0.6, 0.2], mean 2/3; deviations 0.5333, -0.0667, -0.4667;
//   var = (0.284444 + 0.004444 + 0.217778)/3 = 0.168889; cv² = 0.168889/0.444444 = 0.38.
TEST(RouterHand, ImportanceDirect) {
    Routing r;
    r.T = 4, r.E = 3, r.k = 1;
    r.token = {0, 1, 2, 3, 3};
    r.expert = {0, 0, 1, 2, -1};
    r.weight = {0.5f, 0.7f, 0.6f, 0.2f, 0.9f};
    std::vector<double> imp;
    EXPECT_NEAR(importance_loss(r, imp), 0.38, 1e-6);
    EXPECT_NEAR(imp[0], 1.2, 1e-6);
}

// Load (noisy top-1, training) with zero noise draws and softplus(noise logit) = 1
// (noise logit ln(e-1) = 0.5413248546), so H = clean and P(t,i) = Φ(clean_i - threshold):
//   t0 clean [1,0,-1]: e0 in top-1, threshold = 2nd largest 0 -> Φ(1); e1, e2 out, threshold 1
//      -> Φ(-1), Φ(-2)
//   t1 [0,1,-1] -> Φ(-1), Φ(1), Φ(-2);  t2 = t0;  t3 [0,0,0] (tie: e0 chosen) -> Φ(0) = 0.5 each.
//   Φ(1) = 0.8413447461, Φ(-1) = 0.1586552539, Φ(-2) = 0.0227501319.
//   Load = [2Φ(1)+Φ(-1)+0.5, 2Φ(-1)+Φ(1)+0.5, 3Φ(-2)+0.5] = [2.3413447, 1.6586553, 0.5682504]
//   mean 1.5227501, var 0.5332124, cv² = 0.5332124 / 2.3187680 = 0.2299550.
TEST(RouterHand, Load) {
    MoeConfig cfg = config("noisy-topk", 3, 1);
    const float clean[4][3] = {{1, 0, -1}, {0, 1, -1}, {1, 0, -1}, {0, 0, 0}};
    Case c;
    c.cfg = cfg;
    c.T = 4;
    c.ld = 6;
    c.training = true;
    c.normal.assign(12, 0.f);
    std::vector<float> l(24);
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 3; i++) {
            l[t * 6 + i] = clean[t][i];
            l[t * 6 + 3 + i] = 0.541324854612918f;
        }
    auto r = make_router(cfg);
    Routing out;
    AuxLosses aux;
    r->forward(c.input(l.data()), out, aux);
    EXPECT_EQ(out.expert, (std::vector<int32_t>{0, 1, 0, 0}));
    EXPECT_NEAR(aux.load, 0.22995503290195862, 1e-5);
    c.training = false;  // load is a training-only loss
    r->forward(c.input(l.data()), out, aux);
    EXPECT_EQ(aux.load, 0.0);
}

// cv² edge cases: equal values -> 0; one expert -> 0; all zero -> 0 (not NaN).
TEST(RouterHand, CvSquaredEdges) {
    const double eq[3] = {2, 2, 2}, one[1] = {5}, zero[3] = {0, 0, 0};
    EXPECT_EQ(cv_squared(eq, 3), 0.0);
    EXPECT_EQ(cv_squared(one, 1), 0.0);
    EXPECT_EQ(cv_squared(zero, 3), 0.0);
}

// ---- invariants -------------------------------------------------------------------------------------

TEST(RouterInvariant, TopkWeightsSumToOne) {
    for (int E : {1, 4, 7})
        for (int k = 1; k <= E; k++) {
            MoeConfig cfg = config("topk", E, k);
            Case c = make_case(cfg, 9, false, 31 + E * 10 + k);
            auto r = make_router(cfg);
            Routing out;
            AuxLosses aux;
            r->forward(c.input(c.logits.data()), out, aux);
            ASSERT_EQ(out.k, k);
            for (int t = 0; t < c.T; t++) {
                double s = 0;
                std::vector<int> seen;
                for (int j = 0; j < k; j++) {
                    s += out.weight[t * k + j];
                    seen.push_back(out.expert[t * k + j]);
                    if (j > 0) {
                        EXPECT_GE(out.weight[t * k + j - 1], out.weight[t * k + j]);
                    }
                }
                std::sort(seen.begin(), seen.end());
                EXPECT_TRUE(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
                EXPECT_NEAR(s, 1.0, 1e-6);
            }
        }
}

TEST(RouterInvariant, TopkBiasSelectsOnly) {
    MoeConfig cfg = config("topk", 4, 1);
    cfg.renormalize = false;
    Case c = make_case(cfg, 1, false, 5);
    c.logits = {2.f, 1.f, 0.f, -1.f, 0.f};
    c.bias = {0.f, 0.f, 0.f, 10.f};
    c.use_bias = true;
    auto r = make_router(cfg);
    Routing out;
    AuxLosses aux;
    r->forward(c.input(c.logits.data()), out, aux);
    EXPECT_EQ(out.expert[0], 3);  // the bias wins the choice ...
    EXPECT_NEAR(out.weight[0], r->probs()[3], 1e-7);  // ... but the weight is the plain softmax
}

TEST(RouterInvariant, ExpertChoiceCapacity) {
    for (float cf : {0.5f, 1.f, 2.f, 100.f}) {
        MoeConfig cfg = config("expert-choice", 4, 2);
        cfg.capacity_factor = cf;
        Case c = make_case(cfg, 7, false, 77);
        auto r = make_router(cfg);
        EXPECT_FALSE(r->causal());
        EXPECT_FALSE(r->token_choice());
        Routing out;
        AuxLosses aux;
        r->forward(c.input(c.logits.data()), out, aux);
        const int C = std::min(7, (int)std::ceil(cf * 7 * 2 / 4.0));
        ASSERT_EQ(out.n(), 4 * C);
        EXPECT_EQ(out.k, 0);
        for (int e = 0; e < 4; e++) {
            std::vector<float> col(7);
            for (int t = 0; t < 7; t++) col[t] = r->probs()[t * 4 + e];
            std::sort(col.rbegin(), col.rend());
            for (int j = 0; j < C; j++) {
                EXPECT_EQ(out.expert[e * C + j], e);
                EXPECT_EQ(out.weight[e * C + j], col[j]);  // the C best, in descending order
            }
        }
    }
}

TEST(RouterInvariant, GshardDropRule) {
    MoeConfig cfg = config("gshard", 5, 2);
    Case c = make_case(cfg, 50, true, 9);
    auto r = make_router(cfg);
    Routing out;
    AuxLosses aux;
    r->forward(c.input(c.logits.data()), out, aux);
    int used = 0;
    for (int t = 0; t < c.T; t++) {
        std::vector<float> p(r->probs().begin() + t * 5, r->probs().begin() + t * 5 + 5);
        std::vector<float> s = p;
        std::sort(s.rbegin(), s.rend());
        const double g2 = s[1] / ((double)s[0] + s[1]);
        EXPECT_NEAR(out.weight[2 * t], s[0] / ((double)s[0] + s[1]), 1e-6);
        const bool use2 = 2 * g2 > c.gshard_u[t];
        EXPECT_EQ(out.expert[2 * t + 1] >= 0, use2) << "token " << t;
        if (use2) EXPECT_NEAR(out.weight[2 * t + 1], g2, 1e-6);
        else EXPECT_EQ(out.weight[2 * t + 1], 0.f);
        used += use2;
    }
    EXPECT_GT(used, 0);
    EXPECT_LT(used, c.T);
    c.training = false;  // inference: the second expert always runs
    r->forward(c.input(c.logits.data()), out, aux);
    for (int t = 0; t < c.T; t++) EXPECT_GE(out.expert[2 * t + 1], 0);
}

TEST(RouterInvariant, HierarchicalGroups) {
    MoeConfig cfg = config("hierarchical", 12, 4);
    cfg.n_groups = 4;
    cfg.topk_groups = 2;
    Case c = make_case(cfg, 10, false, 21);
    auto r = make_router(cfg);
    ASSERT_EQ(r->logit_matrices(cfg).size(), 2u);
    Routing out;
    AuxLosses aux;
    r->forward(c.input(c.logits.data()), out, aux);
    for (int t = 0; t < c.T; t++) {
        double ps = 0;
        for (int e = 0; e < 12; e++) ps += r->probs()[t * 12 + e];
        EXPECT_NEAR(ps, 1.0, 1e-5);
        // Slots 0,1 share a group, slots 2,3 share another one.
        EXPECT_EQ(out.expert[t * 4] / 3, out.expert[t * 4 + 1] / 3);
        EXPECT_EQ(out.expert[t * 4 + 2] / 3, out.expert[t * 4 + 3] / 3);
        EXPECT_NE(out.expert[t * 4] / 3, out.expert[t * 4 + 2] / 3);
    }
}

TEST(RouterInvariant, DenseSoftmaxAndDropout) {
    MoeConfig cfg = config("softmax", 6, 1);
    cfg.gate_dropout = 0.5f;
    Case c = make_case(cfg, 5, true, 3);
    auto r = make_router(cfg);
    EXPECT_TRUE(r->needs_uniform(cfg));
    Routing out;
    AuxLosses aux;
    r->forward(c.input(c.logits.data()), out, aux);
    ASSERT_EQ(out.k, 6);
    for (int a = 0; a < out.n(); a++) {
        const float p = r->probs()[a];
        EXPECT_EQ(out.weight[a], c.uniform[a] >= 0.5f ? p * 2.f : 0.f);
    }
    c.training = false;  // no dropout at inference: weights are the softmax
    r->forward(c.input(c.logits.data()), out, aux);
    for (int a = 0; a < out.n(); a++) EXPECT_EQ(out.weight[a], r->probs()[a]);
}

// ---- samplers ---------------------------------------------------------------------------------------

// Noisy top-k: P(x,i) is the probability that i stays in the top k when only its own noise is
// redrawn. Check it against the frequency over N fresh draws of eps_i (others fixed), counting
// membership by hand (how many others beat H_i). 5 binomial standard deviations.
TEST(RouterSampler, NoisyTopkLoadProbability) {
    const int E = 6, k = 2, N = 40000;
    Rng rng(2024);
    for (int trial = 0; trial < 4; trial++) {
        std::vector<float> clean(E), sigma(E), eps(E), H(E), P(E);
        for (int i = 0; i < E; i++) {
            clean[i] = rng.normal();
            sigma[i] = softplusf(rng.normal());
            eps[i] = rng.normal();
            H[i] = clean[i] + eps[i] * sigma[i];
        }
        std::vector<int> thr(E), scratch(E);
        load_probs(clean.data(), H.data(), sigma.data(), 1, E, k, P.data(), thr.data(),
                   scratch.data());
        for (int i = 0; i < E; i++) {
            int in = 0;
            for (int n = 0; n < N; n++) {
                const float h = clean[i] + rng.normal() * sigma[i];
                int above = 0;
                for (int j = 0; j < E; j++) above += (j != i && H[j] > h);
                in += above < k;
            }
            const double freq = (double)in / N, p = P[i];
            EXPECT_NEAR(freq, p, 5 * std::sqrt(p * (1 - p) / N) + 1e-3)
                << "trial " << trial << " expert " << i;
        }
    }
}

// GShard: the second expert is dispatched with probability min(1, 2 g2) over u ~ U(0,1).
TEST(RouterSampler, GshardSecondExpertRate) {
    const int T = 40000;
    for (float gap : {0.f, 0.4f, 1.5f}) {
        MoeConfig cfg = config("gshard", 3, 2);
        Case c;
        c.cfg = cfg;
        c.T = T;
        c.ld = 3;
        c.training = true;
        c.logits.resize(3 * T);
        for (int t = 0; t < T; t++) {
            c.logits[3 * t] = gap;
            c.logits[3 * t + 1] = 0.f;
            c.logits[3 * t + 2] = -3.f;
        }
        c.gshard_u.resize(T);
        Rng rng(11);
        rng.fill_uniform(c.gshard_u.data(), T);
        auto r = make_router(cfg);
        Routing out;
        AuxLosses aux;
        r->forward(c.input(c.logits.data()), out, aux);
        int used = 0;
        for (int t = 0; t < T; t++) used += out.expert[2 * t + 1] >= 0;
        const double g2 = 1.0 / (1.0 + std::exp((double)gap));
        const double want = std::min(1.0, 2 * g2), rate = (double)used / T;
        EXPECT_NEAR(rate, want, 5 * std::sqrt(want * (1 - want) / T) + 1e-3) << "gap " << gap;
    }
}

// ---- top-p (threshold) routing ------------------------------------------------------------------

MoeConfig top_p_config(int E, int max_k, float threshold) {
    MoeConfig c = config("top-p", E, max_k);
    c.threshold = threshold;
    return c;
}

// One token's routing: the used experts in slot order and their weights; checks that every
// slot after the first unused one is unused too.
struct TokenRoute {
    std::vector<int> experts;
    std::vector<float> weights;
};
std::vector<TokenRoute> route_tokens(const MoeConfig& cfg, const std::vector<float>& logits,
                                     const std::vector<float>* bias = nullptr,
                                     AuxLosses* aux_out = nullptr) {
    const int E = cfg.n_experts, k = cfg.top_k, T = (int)logits.size() / E;
    Case c;
    c.cfg = cfg;
    c.T = T;
    c.ld = E;
    if (bias) {
        c.bias = *bias;
        c.use_bias = true;
    }
    auto r = make_router(cfg);
    Routing out;
    AuxLosses aux;
    r->forward(c.input(logits.data()), out, aux);
    EXPECT_EQ(out.k, k);
    std::vector<TokenRoute> v(T);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            const size_t a = (size_t)t * k + j;
            EXPECT_EQ(out.token[a], t);
            if (out.expert[a] < 0) {
                EXPECT_EQ(out.weight[a], 0.f);
                continue;
            }
            EXPECT_EQ((int)v[t].experts.size(), j) << "used slot after an unused one";
            v[t].experts.push_back(out.expert[a]);
            v[t].weights.push_back(out.weight[a]);
        }
    if (aux_out) *aux_out = aux;
    return v;
}

// Equal logits: p = 1/4 exactly (exp(0) = 1, 1/4 exact), so the running sums are exact.
//   threshold 0.25: 0.25 >= 0.25 after one expert -> {0} (the exact threshold stops);
//   0.5 -> {0, 1}; 0.75 -> {0, 1, 2}; 1 -> all four. Ties: lower index first.
//   0.26 -> {0, 1}: one expert's 0.25 falls short. max_k = 2 caps threshold 1 at {0, 1}.
TEST(RouterTopP, EqualProbabilitiesExactThresholdAndTies) {
    const std::vector<float> zeros(4, 0.f);
    struct {
        float thr;
        int max_k;
        std::vector<int> want;
    } cases[] = {{0.25f, 4, {0}},       {0.5f, 4, {0, 1}}, {0.75f, 4, {0, 1, 2}},
                 {1.f, 4, {0, 1, 2, 3}}, {0.26f, 4, {0, 1}}, {1.f, 2, {0, 1}}, {1.f, 1, {0}}};
    for (auto& c : cases) {
        auto v = route_tokens(top_p_config(4, c.max_k, c.thr), zeros);
        EXPECT_EQ(v[0].experts, c.want) << "threshold " << c.thr << " max_k " << c.max_k;
        for (float w : v[0].weights) EXPECT_FLOAT_EQ(w, 1.f / (float)c.want.size());
    }
}

// Logits log(counts): p = counts / 8 (to rounding).
//   [1,2,5]: threshold 0.6 -> {2} (5/8 = 0.625), weight 1; 0.7 -> {2, 1} (7/8), weights 5/7, 2/7;
//   0.9 -> {2, 1, 0}, weights 5/8, 2/8, 1/8; 0.9 with max_k 2 -> {2, 1} (capped), 5/7, 2/7.
//   [3,3,2] (a tie at the top): 0.3 -> {0} (3/8 >= 0.3, the lower index wins the tie);
//   0.5 -> {0, 1} weights 1/2, 1/2.
TEST(RouterTopP, HandWorkedChoices) {
    auto logs = [](std::vector<float> v) {
        for (float& x : v) x = std::log(x);
        return v;
    };
    struct {
        std::vector<float> counts;
        float thr;
        int max_k;
        std::vector<int> want;
        std::vector<float> w;
    } cases[] = {
        {{1, 2, 5}, 0.6f, 3, {2}, {1.f}},
        {{1, 2, 5}, 0.7f, 3, {2, 1}, {5.f / 7, 2.f / 7}},
        {{1, 2, 5}, 0.9f, 3, {2, 1, 0}, {5.f / 8, 2.f / 8, 1.f / 8}},
        {{1, 2, 5}, 0.9f, 2, {2, 1}, {5.f / 7, 2.f / 7}},
        {{3, 3, 2}, 0.3f, 3, {0}, {1.f}},
        {{3, 3, 2}, 0.5f, 3, {0, 1}, {0.5f, 0.5f}},
    };
    for (auto& c : cases) {
        auto v = route_tokens(top_p_config(3, c.max_k, c.thr), logs(c.counts));
        ASSERT_EQ(v[0].experts, c.want) << "threshold " << c.thr;
        for (size_t j = 0; j < c.w.size(); j++) EXPECT_NEAR(v[0].weights[j], c.w[j], 1e-6);
    }
}

// The aux losses over the used slots only. Threshold 0.7, max_k 3:
//   t0 log[1,2,5] -> e2 5/7, e1 2/7;  t1 log[1,6,1] -> e1 alone (6/8 >= 0.7), weight 1.
// importance: Importance = [0, 9/7, 5/7], mean 2/3, cv² = 61/98 = 0.6224489796.
// switch: 3 routed slots, f = [0, 2/3, 1/3]; P = [2, 8, 6]/16;
//   E Σ f P = 3 (2/3 * 8/16 + 1/3 * 6/16) = 1.375.
// z: both rows sum to 8 -> lse = ln 8, z = (ln 8)².
TEST(RouterTopP, AuxLossesOverUsedSlots) {
    std::vector<float> l = {std::log(1.f), std::log(2.f), std::log(5.f),
                            std::log(1.f), std::log(6.f), std::log(1.f)};
    AuxLosses aux;
    auto v = route_tokens(top_p_config(3, 3, 0.7f), l, nullptr, &aux);
    EXPECT_EQ(v[0].experts, (std::vector<int>{2, 1}));
    EXPECT_EQ(v[1].experts, (std::vector<int>{1}));
    EXPECT_NEAR(aux.importance, 61.0 / 98, 1e-6);
    EXPECT_NEAR(aux.switch_loss, 1.375, 1e-6);
    EXPECT_NEAR(aux.z_loss, 4.324077125263812, 1e-5);
    EXPECT_EQ(aux.load, 0.0);  // no noise: the load loss does not apply
}

// The aux-loss-free bias reorders the candidates; the running sum and the weights use p.
//   p = [1,2,5]/8, bias +1 on e0: order e0, e2, e1. Threshold 0.6: e0 (1/8), then e2
//   (6/8 >= 0.6) -> {0, 2}, weights 1/6, 5/6.
TEST(RouterTopP, BiasReordersOnly) {
    std::vector<float> l = {std::log(1.f), std::log(2.f), std::log(5.f)};
    std::vector<float> bias = {1.f, 0.f, 0.f};
    auto v = route_tokens(top_p_config(3, 3, 0.6f), l, &bias);
    ASSERT_EQ(v[0].experts, (std::vector<int>{0, 2}));
    EXPECT_NEAR(v[0].weights[0], 1.0 / 6, 1e-6);
    EXPECT_NEAR(v[0].weights[1], 5.0 / 6, 1e-6);
}

// On random logits: 1 <= used <= max_k, weights descending and summing to 1, the used set is the
// shortest prefix of the order by p reaching the threshold (or max_k), and the same input gives
// the same bits twice.
TEST(RouterTopP, InvariantsAndDeterminism) {
    for (int E : {1, 5, 8})
        for (int max_k : {1, 2, E})
            for (float thr : {0.3f, 0.6f, 0.9f, 1.f}) {
                if (max_k > E) continue;
                MoeConfig cfg = top_p_config(E, max_k, thr);
                cfg.temperature = 0.7f;
                Case c = make_case(cfg, 11, false, 500 + E * 31 + max_k * 7 + (int)(thr * 10));
                auto r = make_router(cfg);
                Routing out, again;
                AuxLosses aux;
                r->forward(c.input(c.logits.data()), out, aux);
                make_router(cfg)->forward(c.input(c.logits.data()), again, aux);
                EXPECT_EQ(out.expert, again.expert);
                EXPECT_EQ(0, std::memcmp(out.weight.data(), again.weight.data(),
                                         sizeof(float) * out.weight.size()));
                for (int t = 0; t < c.T; t++) {
                    const float* p = &r->probs()[(size_t)t * E];
                    std::vector<int> order(E);
                    std::iota(order.begin(), order.end(), 0);
                    std::stable_sort(order.begin(), order.end(),
                                     [&](int a, int b) { return p[a] > p[b]; });
                    int n = 0;
                    double cum = 0, wsum = 0;
                    for (int j = 0; j < max_k; j++) {
                        const size_t a = (size_t)t * max_k + j;
                        if (out.expert[a] < 0) continue;
                        EXPECT_EQ(out.expert[a], order[j]);
                        cum += p[order[j]];
                        wsum += out.weight[a];
                        if (j > 0) {
                            EXPECT_LE(out.weight[a], out.weight[a - 1]);
                        }
                        if (j < max_k - 1 && out.expert[a + 1] >= 0) {
                            EXPECT_LT(cum, thr) << "took another expert after reaching p";
                        }
                        n++;
                    }
                    EXPECT_GE(n, 1);
                    EXPECT_LE(n, max_k);
                    if (n < max_k) {
                        EXPECT_GE(cum, thr) << "stopped before reaching p";
                    }
                    EXPECT_NEAR(wsum, 1.0, 1e-6);
                }
            }
}

TEST(RouterGrad, TopP) {
    for (float thr : {0.5f, 0.8f})
        sweep("top-p", {{1, 1}, {4, 2}, {5, 4}, {6, 6}},
              [thr](MoeConfig& c) { c.threshold = thr; });
    sweep("top-p", {{6, 3}}, [](MoeConfig& c) {
        c.threshold = 0.7f;
        c.gate_dropout = 0.25f;
    });
}
TEST(RouterGrad, TopPWithBias) {
    MoeConfig cfg = top_p_config(5, 3, 0.7f);
    cfg.w_importance = 0.5f;
    cfg.w_switch = 0.5f;
    cfg.w_zloss = 0.2f;
    Case c = make_case(cfg, 5, true, 17);
    c.use_bias = true;
    auto [checked, total] = check_grad(c, 18, "top-p + bias");
    EXPECT_GE(checked, (int)(0.9 * total));
}

// ---- bad configs ------------------------------------------------------------------------------------

void expect_error(const MoeConfig& c, const std::string& needle) {
    try {
        make_router(c);
        ADD_FAILURE() << "no error for router " << c.router << ", expected '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

TEST(RouterConfig, BadConfigsThrow) {
    expect_error(config("topk", 4, 5), "top_k=5 > n_experts=4");
    expect_error(config("topk", 4, 0), "top_k=0");
    expect_error(config("noisy-topk", 0, 1), "n_experts=0");
    expect_error(config("bogus", 4, 2),
                 "unknown router 'bogus' (valid: softmax, noisy-topk, topk, switch, gshard, "
                 "expert-choice, hierarchical, top-p)");
    MoeConfig h = config("hierarchical", 6, 2);
    h.n_groups = 4;
    expect_error(h, "not divisible by n_groups=4");
    h.n_groups = 0;
    expect_error(h, "n_groups=0");
    h.n_groups = 3, h.topk_groups = 4;
    expect_error(h, "topk_groups=4");
    h.topk_groups = 2, h.top_k = 3;
    expect_error(h, "top_k=3 is not divisible by topk_groups=2");
    h.n_groups = 3, h.topk_groups = 1, h.top_k = 3;
    expect_error(h, "top_k/topk_groups=3 > 2 experts per group");
    expect_error(config("switch", 4, 2), "top_k must be 1");
    expect_error(config("gshard", 4, 1), "top_k must be 2");
    MoeConfig ec = config("expert-choice", 4, 1);
    ec.capacity_factor = 0.f;
    expect_error(ec, "capacity_factor=0");
    MoeConfig t = config("topk", 4, 2);
    t.score = "relu";
    expect_error(t, "score='relu'");
    t.score = "softmax", t.temperature = 0.f;
    expect_error(t, "temperature=0");
    t.temperature = 1.f, t.gate_dropout = 1.f;
    expect_error(t, "gate_dropout=1");
    MoeConfig tp = config("top-p", 4, 2);
    tp.threshold = 0.f;
    expect_error(tp, "threshold=0 must be in (0, 1]");
    tp.threshold = 1.5f;
    expect_error(tp, "threshold=1.5 must be in (0, 1]");
    tp.threshold = std::nanf("");
    expect_error(tp, "threshold=nan");
}

TEST(RouterConfig, MissingDrawsThrow) {
    MoeConfig cfg = config("noisy-topk", 4, 2);
    Case c = make_case(cfg, 3, true, 1);
    RouterInput in = c.input(c.logits.data());
    in.normal = nullptr;
    auto r = make_router(cfg);
    Routing out;
    AuxLosses aux;
    EXPECT_THROW(r->forward(in, out, aux), Error);
    in = c.input(c.logits.data());
    in.ld = 4;  // needs 2E = 8 columns
    EXPECT_THROW(r->forward(in, out, aux), Error);
}

TEST(RouterConfig, NamesAndMatrices) {
    EXPECT_EQ(router_names().size(), 8u);
    for (auto& n : router_names()) {
        MoeConfig c = config(n, 4, n == "gshard" ? 2 : 1);
        c.n_groups = 2;
        auto r = make_router(c);
        EXPECT_EQ(r->logit_matrices(c)[0].first, "router.weight");
    }
}

}  // namespace
}  // namespace moe
