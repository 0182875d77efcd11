// The Hugging Face families in the training model (issue 8): qwen2_moe (q/k/v biases, a dense
// layer by mask, the gated shared expert, top-k without renormalisation), qwen3_moe (head_dim
// of its own, per-head q/k RMSNorm, attention biases), olmoe (RMSNorm over all of q and k,
// clip_qkv clipping some values). Every backward against finite differences; the logits against
// the inference engine (src/infer/, an independent forward written from the HF modelling code) on
// the same weights; config.json written in the family's HF keys and read back; the weights
// loaded from an HF folder (BF16 shards) equal to the rounded originals; bad configs refused.
#include <cmath>
#include <filesystem>
#include <functional>

#include "infer/hf_fixture.h"
#include "moe/checkpoint.h"
#include "moe/config.h"
#include "moe/error.h"
#include "moe/finetune.h"
#include "moe/hf_model.h"
#include "moe/model.h"
#include "moe/tokenizer.h"
#include "test_util.h"

using namespace moe;
using json = nlohmann::json;

namespace {

std::vector<int32_t> rand_tokens(int n, int V, uint64_t seed) {
    Rng r(seed);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = (int32_t)r.below(V);
    return t;
}

ModelConfig family_config(const std::string& fam) {
    ModelConfig c;
    c.family = fam;
    c.vocab_size = 23;
    c.d_model = 16;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_ff = 20;
    c.block_size = 12;
    c.tie_embeddings = false;
    c.init_std = 0.3f;
    c.seed = 5;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.d_ff = 10;
    c.moe.router = "topk";
    c.moe.w_switch = 0.05f;  // aux losses still train through the families' layers
    if (fam == "qwen2_moe") {
        c.qkv_bias = true;
        c.moe_layers = {0, 1};  // layer 0 dense (mlp_only_layers)
        c.shared_ff = 14;
        c.moe.renormalize = false;  // norm_topk_prob false
    } else if (fam == "qwen3_moe") {
        c.head_dim = 6;  // != d / H = 4: q_proj [24, 16]
        c.qk_norm = "head";
        c.qkv_bias = c.o_bias = true;
        c.moe_layers = {1, 0};
    } else if (fam == "olmoe") {
        c.qk_norm = "whole";
        c.clip_qkv = 1.0f;  // normalised q, k of RMS ~1: about a third of them clipped
        c.moe.renormalize = false;
    }
    return c;
}

// Norm weights around 1, everything else (biases, gates too) random: init_params leaves biases
// at 0 and norms at 1, which would hide a wrong bias or norm weight.
void randomise(Model& m, uint64_t seed, float std = 0.3f) {
    Rng r(seed);
    float* P = m.param_data();
    for (const ParamSpec& p : m.params()) {
        float* w = P + p.offset;
        const int64_t n = p.shape.numel();
        const bool norm = p.name.find("norm.weight") != std::string::npos;
        r.fill_normal(w, n, norm ? 1.f : 0.f, norm ? 0.15f : std);
    }
}

// As tests/model/test_model.cpp: a directional finite difference per tensor, step shrunk when
// routing (or, with clip_qkv, which values are clamped) changes between +eps and -eps.
void check_model_grads(Model& m, int B, int S, double rtol, double atol) {
    const int V = m.config().vocab_size;
    auto tok = rand_tokens(B * S, V, 1), tgt = rand_tokens(B * S, V, 2);
    m.zero_grad();
    m.forward(tok.data(), tgt.data(), B, S, true);
    m.backward();
    std::vector<float> g(m.grad_data(), m.grad_data() + m.n_params());
    float* P = m.param_data();
    auto loss = [&] { return (double)m.forward(tok.data(), tgt.data(), B, S, true) + m.aux_loss(); };
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

bool has_tensor(const Model& m, const std::string& name) {
    for (auto& p : m.params())
        if (p.name == name) return true;
    return false;
}

double grad_norm(Model& m, const std::string& name) {
    for (auto& p : m.params())
        if (p.name == name) {
            double s = 0;
            for (int64_t i = 0; i < p.shape.numel(); i++) {
                double v = m.grad_data()[p.offset + i];
                s += v * v;
            }
            return std::sqrt(s);
        }
    return -1;
}

// |a - b| <= tol * max|b|
::testing::AssertionResult close_scaled(const float* a, const float* b, size_t n, double tol) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = std::max(mx, (double)std::fabs(b[i]));
    return test::all_close(a, b, n, 0, tol * std::max(mx, 1e-6));
}

std::vector<test::HfTensor> tensors_of(Model& m) {
    std::vector<test::HfTensor> ts;
    for (const ParamSpec& p : m.params())
        ts.push_back({p.name, p.shape.dims,
                      std::vector<float>(m.param_data() + p.offset,
                                         m.param_data() + p.offset + p.shape.numel())});
    return ts;
}

class Fam : public ::testing::TestWithParam<std::string> {};

TEST_P(Fam, TensorNamesAreTheFamilysHfNames) {
    if (GetParam() == "mixtral") GTEST_SKIP() << "Mixtral's names: tests/model/test_model.cpp";
    ModelConfig c = family_config(GetParam());
    Model m(c);
    const std::string f = GetParam();
    EXPECT_TRUE(has_tensor(m, "model.layers.1.mlp.gate.weight") ||
                has_tensor(m, "model.layers.0.mlp.gate.weight"));
    EXPECT_FALSE(has_tensor(m, "model.layers.0.block_sparse_moe.gate.weight"));
    const int moe_l = c.is_moe_layer(0) ? 0 : 1;
    const std::string e = "model.layers." + std::to_string(moe_l) + ".mlp.experts.3.";
    EXPECT_TRUE(has_tensor(m, e + "gate_proj.weight") && has_tensor(m, e + "up_proj.weight") &&
                has_tensor(m, e + "down_proj.weight"));
    EXPECT_EQ(f == "qwen2_moe", has_tensor(m, "model.layers.1.mlp.shared_expert_gate.weight"));
    EXPECT_EQ(f != "olmoe", has_tensor(m, "model.layers.0.self_attn.q_proj.bias"));
    EXPECT_EQ(f == "qwen3_moe", has_tensor(m, "model.layers.0.self_attn.o_proj.bias"));
    EXPECT_EQ(f != "qwen2_moe", has_tensor(m, "model.layers.1.self_attn.k_norm.weight"));
    // The table tiles the flat buffer; q, k, v biases follow each other (one broadcast add).
    size_t off = 0;
    for (const ParamSpec& p : m.params()) {
        EXPECT_EQ(off, p.offset) << p.name;
        off += (size_t)p.shape.numel();
    }
    EXPECT_EQ(off, m.n_params());
}

TEST_P(Fam, GradientsMatchFiniteDifferences) {
    ModelConfig c = family_config(GetParam());
    Model m(c);
    randomise(m, 17);
    check_model_grads(m, 2, 5, 2e-2, 2e-3);
    // Every feature carries gradient (a path that is cut would pass the check with 0 = 0).
    for (const char* n :
         {"model.layers.0.self_attn.q_proj.bias", "model.layers.1.self_attn.q_norm.weight",
          "model.layers.0.self_attn.k_norm.weight", "model.layers.1.self_attn.o_proj.bias",
          "model.layers.1.mlp.shared_expert_gate.weight",
          "model.layers.1.mlp.shared_expert.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"})
        if (has_tensor(m, n)) {
            EXPECT_GT(grad_norm(m, n), 1e-6) << n;
        }
}

TEST_P(Fam, LogitsEqualTheEngineOnTheSameWeights) {
    ModelConfig c = family_config(GetParam());
    Model m(c);
    randomise(m, 3);
    // The checkpoint's config.json: the family's HF keys plus moe_cpp, which the engine ignores.
    json j = model_config_to_hf(c);
    EXPECT_TRUE(j.contains("moe_cpp"));
    const std::string dir = test::temp_model_dir("fam_" + GetParam());
    test::write_hf_dir(dir, j, tensors_of(m), WType::f32);
    EXPECT_EQ(GetParam() != "mixtral", is_hf_model_dir(dir))
        << "a family checkpoint goes to the engine, a Mixtral one to load_model";
    HfModel hf(dir);
    auto ids = rand_tokens(c.block_size, c.vocab_size, 8);
    hf.cache_reset();
    const float* got = hf.cache_feed(ids.data(), (int)ids.size(), true);
    m.forward(ids.data(), nullptr, 1, (int)ids.size(), false);
    EXPECT_TRUE(close_scaled(m.logits(), got, ids.size() * c.vocab_size, 1e-5));
    // The training model's own KV-cache path equals its full forward with every feature on.
    m.cache_reset();
    const float* lg = m.cache_feed(ids.data(), 5);
    EXPECT_TRUE(close_scaled(lg, m.logits() + (size_t)4 * c.vocab_size, c.vocab_size, 1e-5));
    for (int i = 5; i < c.block_size; i++) lg = m.cache_feed(&ids[i], 1);
    EXPECT_TRUE(close_scaled(lg, m.logits() + (size_t)(c.block_size - 1) * c.vocab_size,
                             c.vocab_size, 1e-5));
    std::filesystem::remove_all(dir);
}

TEST_P(Fam, ConfigRoundTripsAndHfWeightsLoad) {
    ModelConfig c = family_config(GetParam());
    c.moe.w_switch = 0.f;
    Model m(c);
    randomise(m, 4);
    json j = model_config_to_hf(c);
    ModelConfig back = model_config_from_hf(j, "config.json");
    EXPECT_EQ(j.dump(), model_config_to_hf(back).dump());
    EXPECT_EQ(c.family, back.family);
    EXPECT_EQ(c.hd(), back.hd());
    for (int l = 0; l < c.n_layers; l++) EXPECT_EQ(c.is_moe_layer(l), back.is_moe_layer(l));
    // A downloaded folder: no moe_cpp, BF16 in 2 shards with an index.
    j.erase("moe_cpp");
    ModelConfig dl = model_config_from_hf(j, "config.json");
    EXPECT_EQ("topk", dl.moe.router);
    EXPECT_EQ(c.moe.renormalize, dl.moe.renormalize);
    EXPECT_EQ(0.f, dl.moe.w_switch);
    auto ts = tensors_of(m);
    const std::string dir = test::temp_model_dir("famload_" + GetParam());
    test::write_hf_dir(dir, j, ts, WType::bf16, 2);
    EXPECT_EQ(dir, resolve_checkpoint_dir(dir));
    ModelConfig lc = load_model_config(dir);
    check_checkpoint_sizes(lc, dir, true);
    Model loaded(lc);
    load_params(loaded, dir);
    ASSERT_EQ(loaded.n_params(), m.n_params());
    for (size_t k = 0; k < ts.size(); k++) {
        const ParamSpec& p = loaded.params()[k];
        ASSERT_EQ(p.name, ts[k].name);
        for (size_t i = 0; i < ts[k].data.size(); i++)
            ASSERT_EQ(bf16_to_f32(f32_to_bf16(ts[k].data[i])), loaded.param_data()[p.offset + i])
                << p.name << "[" << i << "]";
    }
    std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Hf, Fam, ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

// --freeze groups under the families' names: the router is mlp.gate (not a dense layer's
// mlp.gate_proj), the experts include qwen2_moe's gated shared expert and its gate.
TEST(Families, FreezeGroupsKnowTheFamilyNames) {
    Model m(family_config("qwen2_moe"));
    auto names = [&](const std::string& spec) {
        std::vector<uint8_t> f = resolve_freeze(m.params(), spec);
        std::vector<std::string> out;
        for (size_t i = 0; i < f.size(); i++)
            if (f[i]) out.push_back(m.params()[i].name);
        return out;
    };
    EXPECT_EQ(std::vector<std::string>{"model.layers.1.mlp.gate.weight"}, names("router"));
    auto ex = names("experts");
    EXPECT_EQ(4u * 3 + 4, ex.size());  // 4 experts x 3, shared expert 3 + its gate
    for (auto& n : ex) EXPECT_NE(std::string::npos, n.find("model.layers.1.mlp.")) << n;
    auto ne = names("non-expert");
    for (const char* n : {"model.layers.0.mlp.gate_proj.weight", "model.layers.0.self_attn.q_proj.bias"})
        EXPECT_NE(ne.end(), std::find(ne.begin(), ne.end(), n)) << n;
    auto at = names("attention");
    EXPECT_NE(at.end(), std::find(at.begin(), at.end(), "model.layers.1.self_attn.v_proj.bias"));
}

// HF folders pad the embedding beyond the tokenizer (Qwen, OLMoE): a family checkpoint loads
// with fewer tokenizer ids than vocab_size; a Mixtral-family (moe.cpp) checkpoint must match.
TEST(Families, PaddedVocabularyLoadsForFamiliesOnly) {
    auto tok = build_char_tokenizer("abcdefg");  // 7 symbols, vocab_size 23
    for (const char* fam : {"qwen3_moe", "mixtral"}) {
        ModelConfig c = family_config(fam);
        Model m(c);
        const std::string dir = test::temp_model_dir(std::string("pad_") + fam);
        save_checkpoint(dir, m, *tok, nullptr, nullptr, nullptr);
        std::string e = "(no error)";
        try {
            LoadedModel lm = load_model(dir);
            EXPECT_EQ(c.vocab_size, lm.model->config().vocab_size);
        } catch (const Error& err) {
            e = err.what();
        }
        if (std::string(fam) == "mixtral")
            EXPECT_NE(std::string::npos, e.find("vocab_size")) << e;
        else
            EXPECT_EQ("(no error)", e);
        std::filesystem::remove_all(dir);
    }
}

TEST(Families, ClipQkvClipsSomeValues) {
    ModelConfig c = family_config("olmoe");
    Model clipped(c);
    randomise(clipped, 3);
    c.clip_qkv = 0;
    Model free(c);
    std::copy(clipped.param_data(), clipped.param_data() + clipped.n_params(), free.param_data());
    auto ids = rand_tokens(c.block_size, c.vocab_size, 8);
    clipped.forward(ids.data(), nullptr, 1, c.block_size, false);
    free.forward(ids.data(), nullptr, 1, c.block_size, false);
    const size_t n = (size_t)c.block_size * c.vocab_size;
    double diff = 0;
    for (size_t i = 0; i < n; i++) diff = std::max(diff, (double)std::fabs(clipped.logits()[i] - free.logits()[i]));
    EXPECT_GT(diff, 1e-3) << "clip_qkv=1 clipped nothing";
}

// --init-from a broken HF folder: the key, the tensor or the shape is named before training.
TEST(Families, BrokenHfFoldersAreRefusedNamingTheProblem) {
    ModelConfig c = family_config("qwen3_moe");
    Model m(c);
    const json j0 = [&] {
        json j = model_config_to_hf(c);
        j.erase("moe_cpp");
        return j;
    }();
    auto error_of = [&](const json& j, std::vector<test::HfTensor> ts) {
        const std::string dir = test::temp_model_dir("broken");
        test::write_hf_dir(dir, j, ts, WType::bf16, 2);
        std::string e = "(no error)";
        try {
            ModelConfig lc = load_model_config(dir);
            check_checkpoint_sizes(lc, dir, true);
            Model mm(lc);
            load_params(mm, dir);
        } catch (const Error& err) {
            e = err.what();
        }
        std::filesystem::remove_all(dir);
        return e;
    };
    json j = j0;
    j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}};
    EXPECT_NE(std::string::npos, error_of(j, tensors_of(m)).find("'rope_scaling'"));
    j = j0;
    j.erase("num_experts");
    EXPECT_NE(std::string::npos, error_of(j, tensors_of(m)).find("num_experts"));
    j = j0;
    j["clip_qkv"] = 2;  // ignored for qwen3_moe; the shapes still fit
    EXPECT_EQ("(no error)", error_of(j, tensors_of(m)));
    auto ts = tensors_of(m);
    ts.erase(ts.begin() + 5);  // a tensor missing
    std::string e = error_of(j0, ts);
    EXPECT_NE(std::string::npos, e.find(tensors_of(m)[5].name)) << e;
    ts = tensors_of(m);
    ts.push_back({"model.layers.0.self_attn.o_proj.bias_extra", {16}, std::vector<float>(16)});
    e = error_of(j0, ts);
    EXPECT_NE(std::string::npos, e.find("o_proj.bias_extra")) << e;
    ts = tensors_of(m);
    for (auto& t : ts)
        if (t.name == "model.layers.1.self_attn.q_norm.weight") t.shape = {2, 3}, t.data.resize(6);
    e = error_of(j0, ts);
    EXPECT_NE(std::string::npos, e.find("q_norm.weight")) << e;
    ts = tensors_of(m);
    ts[3].data[1] = NAN;
    e = error_of(j0, ts);
    EXPECT_NE(std::string::npos, e.find("not finite")) << e;
}

TEST(Families, BadConfigsAreRefusedNamingTheField) {
    struct Case {
        const char* fam;
        std::function<void(ModelConfig&)> edit;
        const char* fragment;
    };
    const std::vector<Case> cases = {
        {"mixtral", [](ModelConfig& c) { c.family = "llama"; }, "family='llama'"},
        {"mixtral", [](ModelConfig& c) { c.qkv_bias = true; }, "family=mixtral needs"},
        {"mixtral", [](ModelConfig& c) { c.moe_layers = {1, 0}; }, "moe_layers off"},
        {"qwen2_moe", [](ModelConfig& c) { c.shared_ff = 0; }, "shared_ff >= 1"},
        {"qwen2_moe", [](ModelConfig& c) { c.moe_layers = {1}; }, "moe_layers has 1 entries"},
        {"qwen2_moe", [](ModelConfig& c) { c.moe_layers = {1, 2}; }, "moe_layers[1]=2"},
        {"qwen2_moe", [](ModelConfig& c) { c.moe.router = "noisy-topk"; }, "router topk"},
        {"qwen3_moe", [](ModelConfig& c) { c.head_dim = 5; }, "head_dim=5 must be even"},
        {"qwen3_moe", [](ModelConfig& c) { c.qk_norm = "rms"; }, "qk_norm='rms'"},
        {"qwen3_moe", [](ModelConfig& c) { c.o_bias = false; }, "qkv_bias == o_bias"},
        {"olmoe", [](ModelConfig& c) { c.clip_qkv = -1; }, "clip_qkv=-1"},
        {"olmoe", [](ModelConfig& c) { c.moe_layers = {1, 0}; }, "every layer MoE"},
    };
    for (const Case& k : cases) {
        ModelConfig c = family_config(k.fam);
        k.edit(c);
        try {
            c.validate();
            ADD_FAILURE() << k.fragment << ": accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string::npos, std::string(e.what()).find(k.fragment)) << e.what();
        }
    }
}

}  // namespace
