// The Transformer LM: parameter table, whole-model gradients against finite differences (dense
// and MoE), the KV-cache path against full recomputation, determinism, and bad input.
#include "moe/model.h"

#include <cmath>
#include <set>

#include "moe/error.h"
#include "test_util.h"

using namespace moe;

namespace {

ModelConfig tiny_dense() {
    ModelConfig c;
    c.vocab_size = 11;
    c.d_model = 8;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.d_ff = 12;
    c.block_size = 8;
    c.moe_every = 0;
    c.init_std = 0.3f;  // large enough that every path carries a visible gradient
    c.tie_embeddings = false;
    c.seed = 7;
    return c;
}

ModelConfig tiny_moe() {
    ModelConfig c = tiny_dense();
    c.moe_every = 2;  // layer 1 MoE, layer 0 dense
    c.tie_embeddings = true;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.d_ff = 6;
    c.moe.router = "topk";
    c.moe.dropless = true;
    c.moe.w_switch = 0.1f;
    c.moe.w_zloss = 0.01f;
    return c;
}

std::vector<int32_t> rand_tokens(int n, int V, uint64_t seed) {
    Rng r(seed);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = (int32_t)r.below(V);
    return t;
}

// For every tensor: the derivative of (CE + aux) along a random direction inside the tensor by
// central differences, against the analytic gradient dotted with that direction. A directional
// check sums many entries, so fp32 noise in the loss matters far less than per-entry checks.
void check_model_grads(Model& m, int B, int S, double rtol, double atol) {
    const int V = m.config().vocab_size;
    auto tok = rand_tokens(B * S, V, 1), tgt = rand_tokens(B * S, V, 2);
    m.zero_grad();
    m.forward(tok.data(), tgt.data(), B, S, true);
    m.backward();
    std::vector<float> g(m.grad_data(), m.grad_data() + m.n_params());
    float* P = m.param_data();
    auto loss = [&] { return (double)m.forward(tok.data(), tgt.data(), B, S, true) + m.aux_loss(); };
    // A top-k flip between +eps and -eps makes the loss jump: then retry with a smaller step.
    auto routing = [&] {
        std::vector<int32_t> e;
        for (int l = 0; l < m.config().n_layers; l++)
            if (MoeLayer* ml = m.moe_layer(l))
                for (auto& a : ml->last_assignments()) e.push_back(a.kept ? a.expert : -2);
        return e;
    };
    m.forward(tok.data(), tgt.data(), B, S, true);
    const std::vector<int32_t> route0 = routing();
    Rng r(99);
    for (const ParamSpec& p : m.params()) {
        size_t n = (size_t)p.shape.numel();
        std::vector<float> u(n);
        r.fill_normal(u.data(), (int64_t)n);
        double un = 0;
        for (float x : u) un += (double)x * x;
        for (float& x : u) x = (float)(x / std::sqrt(un));
        double gu = 0;
        for (size_t i = 0; i < n; i++) gu += (double)g[p.offset + i] * u[i];
        std::vector<float> saved(P + p.offset, P + p.offset + n);
        double fd = NAN;
        for (double eps = 1e-2; eps > 1e-4; eps /= 4) {
            for (size_t i = 0; i < n; i++) P[p.offset + i] = saved[i] + (float)eps * u[i];
            double lp = loss();
            bool same = routing() == route0;
            for (size_t i = 0; i < n; i++) P[p.offset + i] = saved[i] - (float)eps * u[i];
            double lm = loss();
            same = same && routing() == route0;
            std::copy(saved.begin(), saved.end(), P + p.offset);
            if (!same) continue;
            fd = (lp - lm) / (2 * eps);
            break;
        }
        if (std::isnan(fd)) {
            ADD_FAILURE() << p.name << ": routing flips at every step size; pick another seed";
            continue;
        }
        EXPECT_NEAR(gu, fd, atol + rtol * std::fabs(fd)) << p.name;
    }
}

}  // namespace

TEST(Model, ParamTableHasHfNamesAndTilesTheBuffer) {
    ModelConfig c = tiny_moe();
    c.tie_embeddings = false;
    Model m(c);
    std::set<std::string> names;
    size_t off = 0;
    for (const ParamSpec& p : m.params()) {
        names.insert(p.name);
        EXPECT_EQ(p.offset, off) << p.name;
        off += (size_t)p.shape.numel();
    }
    EXPECT_EQ(off, m.n_params());
    for (const char* n :
         {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
          "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
          "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
          "model.layers.0.post_attention_layernorm.weight", "model.layers.0.mlp.gate_proj.weight",
          "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
          "model.layers.1.block_sparse_moe.gate.weight",
          "model.layers.1.block_sparse_moe.experts.3.w1.weight",
          "model.layers.1.block_sparse_moe.experts.3.w2.weight",
          "model.layers.1.block_sparse_moe.experts.3.w3.weight", "model.norm.weight",
          "lm_head.weight"})
        EXPECT_TRUE(names.count(n)) << n;
    EXPECT_FALSE(names.count("model.layers.1.mlp.gate_proj.weight"));
    EXPECT_EQ(m.moe_layer(0), nullptr);
    ASSERT_NE(m.moe_layer(1), nullptr);
    // k_proj of a grouped-query model is [Hkv*hd, d]
    for (const ParamSpec& p : m.params()) {
        if (p.name == "model.layers.0.self_attn.k_proj.weight") {
            EXPECT_EQ(p.shape, Shape({4, 8}));
        }
    }
    // tied: no lm_head tensor
    c.tie_embeddings = true;
    Model t(c);
    for (const ParamSpec& p : t.params()) EXPECT_NE(p.name, "lm_head.weight");
    EXPECT_EQ(t.n_params() + (size_t)c.vocab_size * c.d_model, m.n_params());
    // no weight decay on norms
    for (const ParamSpec& p : m.params())
        EXPECT_EQ(m.is_no_decay(p), p.name.find("norm") != std::string::npos) << p.name;
}

TEST(Model, IsMoeLayerRule) {
    ModelConfig c;
    c.n_layers = 4;
    c.moe_every = 0;
    for (int i = 0; i < 4; i++) EXPECT_FALSE(c.is_moe_layer(i));
    c.moe_every = 1;
    for (int i = 0; i < 4; i++) EXPECT_TRUE(c.is_moe_layer(i));
    c.moe_every = 2;
    EXPECT_FALSE(c.is_moe_layer(0));
    EXPECT_TRUE(c.is_moe_layer(1));
    EXPECT_FALSE(c.is_moe_layer(2));
    EXPECT_TRUE(c.is_moe_layer(3));
}

TEST(Model, InitialLossIsNearLogVocab) {
    ModelConfig c = tiny_dense();
    c.vocab_size = 65;
    c.init_std = 0.02f;
    Model m(c);
    auto tok = rand_tokens(3 * 8, 65, 5), tgt = rand_tokens(3 * 8, 65, 6);
    float loss = m.forward(tok.data(), tgt.data(), 3, 8, true);
    EXPECT_NEAR(loss, std::log(65.0), 0.05);
}

// The FLOP count behind `moe train`'s GFLOP/s, by hand for tiny_moe (d 8, 2 heads of 4, 1 kv
// head, V 11, layer 0 dense d_ff 12, layer 1 MoE E 4 top-2 d_ff 6, dropless): B 3, S 5.
TEST(Model, ForwardFlopsCountTheProductsByHand) {
    Model m(tiny_moe());
    const int B = 3, S = 5, T = B * S;
    auto tok = rand_tokens(T, 11, 3), tgt = rand_tokens(T, 11, 4);
    m.forward(tok.data(), tgt.data(), B, S, true);
    const double qkv = 2.0 * T * 8 * (8 + 4 + 4), o = 2.0 * T * 8 * 8;
    const double att = 2 * 2.0 * B * 2 * 4 * (1 + 2 + 3 + 4 + 5);  // query i reads i + 1 keys
    const double dense = 2.0 * T * 8 * 12 * 3;
    const double router = 2.0 * T * 8 * 4, experts = 2.0 * T * 2 * 8 * 6 * 3;  // k = 2 per token
    const double head = 2.0 * T * 8 * 11;
    EXPECT_DOUBLE_EQ(2 * (qkv + o + att) + dense + router + experts + head,
                     m.last_forward_flops());
}

TEST(Model, DenseGradientsMatchFiniteDifferences) {
    Model m(tiny_dense());
    check_model_grads(m, 2, 5, 2e-2, 2e-3);
}

TEST(Model, MoeGradientsMatchFiniteDifferences) {
    ModelConfig c = tiny_moe();
    c.moe_every = 1;  // every layer MoE
    Model m(c);
    check_model_grads(m, 2, 5, 2e-2, 2e-3);
    EXPECT_GT(m.aux_loss(), 0.0);
    auto rs = m.routing_stats();
    ASSERT_EQ(rs.size(), 2u);
    EXPECT_EQ(rs[1].layer, 1);
}

TEST(Model, MixedDenseMoeGradientsMatchFiniteDifferences) {
    Model m(tiny_moe());
    check_model_grads(m, 2, 5, 2e-2, 2e-3);
}

// Logits from the KV cache (prefill n tokens, then one at a time) equal the logits of a full
// forward at the same positions: causal attention means position i only sees the prefix.
static void check_cache(Model& m) {
    const int S = m.config().block_size, V = m.config().vocab_size;
    auto tok = rand_tokens(S, V, 31);
    m.forward(tok.data(), nullptr, 1, S, false);
    std::vector<float> full(m.logits(), m.logits() + (size_t)S * V);
    for (int prefill = 1; prefill <= S; prefill++) {
        m.cache_reset();
        const float* lg = m.cache_feed(tok.data(), prefill);
        EXPECT_TRUE(test::all_close(lg, full.data() + (size_t)(prefill - 1) * V, V, 1e-4, 1e-5))
            << "prefill " << prefill;
        for (int i = prefill; i < S && prefill <= 2; i++) {
            lg = m.cache_feed(tok.data() + i, 1);
            EXPECT_TRUE(test::all_close(lg, full.data() + (size_t)i * V, V, 1e-4, 1e-5))
                << "prefill " << prefill << " then token " << i;
        }
    }
    EXPECT_EQ(m.cache_pos(), S);
    EXPECT_THROW(m.cache_feed(tok.data(), 1), Error);  // past block_size
}

TEST(Model, CacheFeedMatchesFullForwardDense) {
    Model m(tiny_dense());
    check_cache(m);
}

TEST(Model, CacheFeedMatchesFullForwardWideHeads) {  // head dim 16: the specialised kernels
    ModelConfig c = tiny_moe();
    c.d_model = 32;
    c.n_heads = 2;
    c.n_kv_heads = 2;
    c.block_size = 20;
    Model m(c);
    check_cache(m);
}

TEST(Model, CacheFeedMatchesFullForwardMoe) {
    Model m(tiny_moe());
    check_cache(m);
}

TEST(Model, CacheFeedRejectsExpertChoice) {
    ModelConfig c = tiny_moe();
    c.moe.router = "expert-choice";
    Model m(c);
    auto tok = rand_tokens(4, c.vocab_size, 3);
    try {
        m.cache_feed(tok.data(), 4);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not causal"), std::string::npos) << e.what();
    }
}

TEST(Model, SameSeedSameBits) {
    ModelConfig c = tiny_moe();
    c.d_model = 16;
    c.block_size = 16;
    auto tok = rand_tokens(3 * 16, c.vocab_size, 8), tgt = rand_tokens(3 * 16, c.vocab_size, 9);
    std::vector<float> g[2];
    float loss[2];
    for (int run = 0; run < 2; run++) {
        Model m(c);
        m.zero_grad();
        loss[run] = m.forward(tok.data(), tgt.data(), 3, 16, true);
        m.backward();
        g[run].assign(m.grad_data(), m.grad_data() + m.n_params());
    }
    EXPECT_EQ(loss[0], loss[1]);
    EXPECT_TRUE(g[0] == g[1]) << "gradients differ between two identical runs";
}

// bf16 GEMMs (docs/precision.md): the loss and every gradient within bf16 rounding of fp32, not
// equal to them; the same bits twice; and setting fp32 back gives the fp32 bits.
TEST(Model, Bf16PrecisionCloseToFp32) {
    ModelConfig c = tiny_moe();
    c.d_model = 32;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.block_size = 16;
    c.init_std = 0.1f;
    auto tok = rand_tokens(3 * 16, c.vocab_size, 8), tgt = rand_tokens(3 * 16, c.vocab_size, 9);
    Model m(c);
    auto run = [&](std::vector<float>& g) {
        m.zero_grad();
        float l = m.forward(tok.data(), tgt.data(), 3, 16, true);
        m.backward();
        g.assign(m.grad_data(), m.grad_data() + m.n_params());
        return l;
    };
    std::vector<float> g32, g16, g16b, g32b;
    const float l32 = run(g32);
    m.set_precision(Precision::bf16);
    EXPECT_EQ(m.precision(), Precision::bf16);
    EXPECT_EQ(m.moe_layer(1)->precision(), Precision::bf16);
    EXPECT_EQ(m.moe_layer(1)->router_precision(), Precision::fp32);
    const float l16 = run(g16);
    EXPECT_EQ(l16, run(g16b));
    EXPECT_TRUE(g16 == g16b);
    EXPECT_NEAR(l16, l32, 5e-3 * l32);
    EXPECT_NE(l16, l32);
    double num = 0, den = 0;
    for (size_t i = 0; i < g32.size(); i++) {
        num += ((double)g16[i] - g32[i]) * ((double)g16[i] - g32[i]);
        den += (double)g32[i] * g32[i];
    }
    EXPECT_LT(std::sqrt(num / den), 2e-2);
    EXPECT_GT(std::sqrt(num / den), 1e-5);
    m.set_precision(Precision::fp32);
    EXPECT_EQ(run(g32b), l32);
    EXPECT_TRUE(g32 == g32b);
}

TEST(Model, BackwardAccumulatesAndNeedsTargets) {
    Model m(tiny_dense());
    auto tok = rand_tokens(8, 11, 1), tgt = rand_tokens(8, 11, 2);
    m.zero_grad();
    m.forward(tok.data(), tgt.data(), 1, 8, true);
    m.backward();
    std::vector<float> g1(m.grad_data(), m.grad_data() + m.n_params());
    m.backward();
    for (size_t i = 0; i < g1.size(); i++)
        ASSERT_NEAR(m.grad_data()[i], 2 * g1[i], 1e-5 * std::fabs(g1[i]) + 1e-8) << i;
    m.forward(tok.data(), nullptr, 1, 8, false);
    EXPECT_THROW(m.backward(), Error);
}

TEST(Model, RejectsBadInput) {
    auto bad = [](auto edit) {
        ModelConfig c = tiny_moe();
        edit(c);
        EXPECT_THROW(Model m(c), Error);
    };
    bad([](ModelConfig& c) { c.n_heads = 3; });     // 3 does not divide 8
    bad([](ModelConfig& c) { c.n_kv_heads = 3; });  // does not divide heads
    bad([](ModelConfig& c) { c.vocab_size = 0; });
    bad([](ModelConfig& c) { c.moe.top_k = 5; });   // k > E
    bad([](ModelConfig& c) { c.d_model = 6; c.n_heads = 2; });  // head dim 3: odd for RoPE
    Model m(tiny_dense());
    auto tok = rand_tokens(9, 11, 1);
    EXPECT_THROW(m.forward(tok.data(), nullptr, 1, 9, false), Error);  // S > block_size
    tok[2] = 11;
    EXPECT_THROW(m.forward(tok.data(), nullptr, 1, 8, false), Error);  // token outside vocab
}
