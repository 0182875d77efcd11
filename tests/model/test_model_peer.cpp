// The model against its PyTorch peer (bench/peers/torch_lm.py --check, float64): loss, aux loss,
// logits and the gradient of every tensor, for a dense/MoE mixed model with grouped-query
// attention and an untied head, and an all-MoE tied model. Labelled e2e: it runs /usr/bin/python3
// and skips only when torch is missing.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "moe/model.h"
#include "moe/safetensors.h"
#include "test_util.h"

using namespace moe;

namespace {

bool have_torch() {
    return std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
}

// |a-b| <= rtol*|b| + atol_rel * max|b| over the tensor: gradients of tiny entries are checked
// relative to the tensor's scale, not their own.
::testing::AssertionResult close_scaled(const float* a, const std::vector<float>& b, double rtol,
                                        double atol_rel) {
    double mx = 0;
    for (float v : b) mx = std::max(mx, (double)std::fabs(v));
    return test::all_close(a, b.data(), b.size(), rtol, atol_rel * mx + 1e-12);
}

void compare_with_peer(const ModelConfig& c, const std::string& tag) {
    if (!have_torch()) GTEST_SKIP() << "no torch for /usr/bin/python3";
    Model m(c);
    const int B = 3, S = c.block_size, V = c.vocab_size;
    Rng r(5);
    std::vector<int64_t> tok64(B * S), tgt64(B * S);
    std::vector<int32_t> tok(B * S), tgt(B * S);
    for (int i = 0; i < B * S; i++) {
        tok[i] = (int32_t)(tok64[i] = r.below(V));
        tgt[i] = (int32_t)(tgt64[i] = r.below(V));
    }
    m.zero_grad();
    float loss = m.forward(tok.data(), tgt.data(), B, S, true);
    m.backward();

    nlohmann::json j = {{"vocab_size", V},
                        {"hidden_size", c.d_model},
                        {"num_hidden_layers", c.n_layers},
                        {"num_attention_heads", c.n_heads},
                        {"num_key_value_heads", c.n_kv_heads},
                        {"intermediate_size", c.d_ff},
                        {"max_position_embeddings", c.block_size},
                        {"rms_norm_eps", c.rms_eps},
                        {"rope_theta", c.rope_theta},
                        {"tie_word_embeddings", c.tie_embeddings},
                        {"moe_every", c.moe_every},
                        {"num_local_experts", c.moe.n_experts},
                        {"num_experts_per_tok", c.moe.top_k},
                        {"expert_intermediate_size", c.moe.d_ff},
                        {"router", c.moe.router},
                        {"renormalize", c.moe.renormalize},
                        {"w_switch", c.moe.w_switch},
                        {"w_zloss", c.moe.w_zloss},
                        {"w_importance", c.moe.w_importance}};
    SafetensorsWriter w;
    for (const ParamSpec& p : m.params()) w.add(p.name, p.shape, m.param_data() + p.offset);
    w.add_i64("tokens", {B, S}, tok64.data());
    w.add_i64("targets", {B, S}, tgt64.data());
    w.set_metadata("config", j.dump());
    auto dir = std::filesystem::temp_directory_path() /
               ("moe_test_model_peer_" + tag + "_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    std::string in = (dir / "in.safetensors").string(), out = (dir / "out.safetensors").string();
    w.save(in);
    std::string cmd = "/usr/bin/python3 " + test::source_dir() + "/bench/peers/torch_lm.py --check " +
                      in + " " + out;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    SafetensorsReader peer(out);
    EXPECT_NEAR(loss, peer.get("loss").data[0], 1e-5 * std::fabs(peer.get("loss").data[0]));
    EXPECT_NEAR(m.aux_loss(), peer.get("aux_loss").data[0], 1e-5);
    EXPECT_TRUE(close_scaled(m.logits(), peer.get("logits", {B, S, V}).data, 1e-4, 1e-5));
    for (const ParamSpec& p : m.params())
        EXPECT_TRUE(close_scaled(m.grad_data() + p.offset, peer.get("grad." + p.name, p.shape).data,
                                 1e-4, 1e-4))
            << p.name;
    std::filesystem::remove_all(dir);
}

ModelConfig peer_config() {
    ModelConfig c;
    c.vocab_size = 65;
    c.d_model = 64;  // head dim 16: the specialised attention kernels
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_ff = 48;
    c.block_size = 16;
    c.moe_every = 2;
    c.tie_embeddings = false;
    c.init_std = 0.1f;
    c.moe.n_experts = 4;
    c.moe.top_k = 2;
    c.moe.d_ff = 24;
    c.moe.router = "topk";
    c.moe.w_switch = 0.01f;
    c.moe.w_zloss = 0.001f;
    c.moe.w_importance = 0.01f;
    return c;
}

}  // namespace

TEST(ModelPeer, MixedDenseMoeGqaUntiedMatchesPyTorch) { compare_with_peer(peer_config(), "mixed"); }

TEST(ModelPeer, AllMoeTiedMatchesPyTorch) {
    ModelConfig c = peer_config();
    c.moe_every = 1;
    c.tie_embeddings = true;
    c.n_kv_heads = 4;
    c.d_model = 32;  // head dim 8: the generic attention kernels
    c.rope_theta = 500.f;
    compare_with_peer(c, "moe");
}

TEST(ModelPeer, DenseMatchesPyTorch) {
    ModelConfig c = peer_config();
    c.moe_every = 0;
    compare_with_peer(c, "dense");
}
