// Tiny random-weight Hugging Face model folders for the engine's tests: config.json with the
// family's real keys, tensors under the family's real names, F32/BF16/F16, one file or shards
// with model.safetensors.index.json. (The PyTorch peer, bench/peers/, makes its own folders.)
#pragma once
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "moe/file_io.h"
#include "moe/safetensors.h"
#include "test_util.h"

namespace moe::test {

struct HfTensor {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> data;
};

inline nlohmann::json tiny_hf_config(const std::string& family) {
    nlohmann::json j = {{"model_type", family},
                        {"vocab_size", 97},
                        {"hidden_size", 32},
                        {"num_hidden_layers", 3},
                        {"num_attention_heads", 4},
                        {"num_key_value_heads", 2},
                        {"max_position_embeddings", 64},
                        {"rms_norm_eps", 1e-6},
                        {"rope_theta", 10000.0},
                        {"tie_word_embeddings", false},
                        {"hidden_act", "silu"},
                        {"num_experts_per_tok", 2},
                        {"bos_token_id", 1},
                        {"eos_token_id", 2}};
    if (family == "mixtral") {
        j["num_local_experts"] = 4;
        j["intermediate_size"] = 24;
        j["sliding_window"] = nullptr;
    } else {
        j["num_experts"] = 4;
        j["norm_topk_prob"] = family == "qwen3_moe";
    }
    if (family == "qwen2_moe") {
        j["moe_intermediate_size"] = 24;
        j["intermediate_size"] = 40;
        j["shared_expert_intermediate_size"] = 36;
        j["mlp_only_layers"] = {1};  // layer 1 dense
        j["decoder_sparse_step"] = 1;
    }
    if (family == "qwen3_moe") {
        j["moe_intermediate_size"] = 24;
        j["intermediate_size"] = 40;
        j["head_dim"] = 12;  // not hidden / heads (8): q_proj is [48, 32]
        j["decoder_sparse_step"] = 2;  // layers 1 sparse, 0 and 2 dense
        j["mlp_only_layers"] = nlohmann::json::array();
    }
    if (family == "olmoe") {
        j["intermediate_size"] = 24;
        j["clip_qkv"] = 0.6;  // small enough to clip some values
    }
    return j;
}

// The family's tensors for config j, random (norm weights around 1).
inline std::vector<HfTensor> tiny_hf_tensors(const nlohmann::json& j, uint64_t seed) {
    const std::string fam = j["model_type"];
    const int64_t V = j["vocab_size"], d = j["hidden_size"], L = j["num_hidden_layers"],
                  H = j["num_attention_heads"], Hkv = j["num_key_value_heads"];
    const int64_t hd = j.contains("head_dim") ? (int64_t)j["head_dim"] : d / H;
    const bool mixtral = fam == "mixtral";
    const int64_t E = mixtral ? (int64_t)j["num_local_experts"] : (int64_t)j["num_experts"];
    const int64_t fe = (mixtral || fam == "olmoe") ? (int64_t)j["intermediate_size"]
                                                   : (int64_t)j["moe_intermediate_size"];
    std::vector<HfTensor> out;
    uint64_t s = seed;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, float std, float mean = 0) {
        int64_t n = 1;
        for (auto v : shape) n *= v;
        std::vector<float> v = randn((size_t)n, ++s, std);
        for (auto& x : v) x += mean;
        out.push_back({name, shape, v});
    };
    add("model.embed_tokens.weight", {V, d}, 1.0f);
    add("model.norm.weight", {d}, 0.1f, 1.0f);
    add("lm_head.weight", {V, d}, 0.2f);
    for (int64_t l = 0; l < L; l++) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        add(p + "input_layernorm.weight", {d}, 0.1f, 1.0f);
        add(p + "post_attention_layernorm.weight", {d}, 0.1f, 1.0f);
        add(p + "self_attn.q_proj.weight", {H * hd, d}, 0.25f);
        add(p + "self_attn.k_proj.weight", {Hkv * hd, d}, 0.25f);
        add(p + "self_attn.v_proj.weight", {Hkv * hd, d}, 0.2f);
        add(p + "self_attn.o_proj.weight", {d, H * hd}, 0.2f);
        if (fam == "qwen2_moe") {
            add(p + "self_attn.q_proj.bias", {H * hd}, 0.1f);
            add(p + "self_attn.k_proj.bias", {Hkv * hd}, 0.1f);
            add(p + "self_attn.v_proj.bias", {Hkv * hd}, 0.1f);
        }
        if (fam == "qwen3_moe") {
            add(p + "self_attn.q_norm.weight", {hd}, 0.1f, 1.0f);
            add(p + "self_attn.k_norm.weight", {hd}, 0.1f, 1.0f);
        }
        if (fam == "olmoe") {
            add(p + "self_attn.q_norm.weight", {H * hd}, 0.1f, 1.0f);
            add(p + "self_attn.k_norm.weight", {Hkv * hd}, 0.1f, 1.0f);
        }
        bool sparse = true;
        if (fam == "qwen2_moe" || fam == "qwen3_moe") {
            int step = j.value("decoder_sparse_step", 1);
            bool dense_only = false;
            for (auto& x : j["mlp_only_layers"]) dense_only |= (int64_t)x == l;
            sparse = !dense_only && (l + 1) % step == 0;
        }
        const std::string f = p + (mixtral ? "block_sparse_moe." : "mlp.");
        if (!sparse) {
            const int64_t fd = j["intermediate_size"];
            add(f + "gate_proj.weight", {fd, d}, 0.2f);
            add(f + "up_proj.weight", {fd, d}, 0.2f);
            add(f + "down_proj.weight", {d, fd}, 0.2f);
            continue;
        }
        add(f + "gate.weight", {E, d}, 0.5f);  // clear routing margins
        for (int64_t e = 0; e < E; e++) {
            const std::string x = f + "experts." + std::to_string(e) + ".";
            add(x + (mixtral ? "w1" : "gate_proj") + ".weight", {fe, d}, 0.2f);
            add(x + (mixtral ? "w3" : "up_proj") + ".weight", {fe, d}, 0.2f);
            add(x + (mixtral ? "w2" : "down_proj") + ".weight", {d, fe}, 0.2f);
        }
        if (fam == "qwen2_moe") {
            const int64_t fs = j["shared_expert_intermediate_size"];
            add(f + "shared_expert.gate_proj.weight", {fs, d}, 0.2f);
            add(f + "shared_expert.up_proj.weight", {fs, d}, 0.2f);
            add(f + "shared_expert.down_proj.weight", {d, fs}, 0.2f);
            add(f + "shared_expert_gate.weight", {1, d}, 0.3f);
        }
    }
    return out;
}

inline std::string temp_model_dir(const std::string& tag) {
    std::string d = std::filesystem::temp_directory_path().string() + "/moe_hf_" + tag + "_" +
                    std::to_string(getpid());
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    return d;
}

// A tensor's int8 form as moe.cpp's safetensors hold it (docs/formats.md): int8 values [rows,
// cols] and fp16 scales [rows, cols / 32], block by block as Q8_0 defines them.
inline void q8_split(const HfTensor& t, std::vector<int8_t>* q, std::vector<uint16_t>* d) {
    const size_t n = t.data.size();  // rows * cols, cols % 32 == 0: blocks never span rows
    q->resize(n);
    d->resize(n / 32);
    for (size_t b = 0; b < n / 32; b++)
        (*d)[b] = quantize_block_q8_0(&t.data[b * 32], q->data() + b * 32);
}

// The same tensors with every int8-eligible matrix replaced by its dequantised values: an F32
// folder of these holds exactly the numbers of the int8 folder.
inline std::vector<HfTensor> q8_rounded(std::vector<HfTensor> ts) {
    for (auto& t : ts) {
        if (!hf_q8_eligible(t.name, t.shape)) continue;
        std::vector<int8_t> q;
        std::vector<uint16_t> d;
        q8_split(t, &q, &d);
        for (size_t i = 0; i < q.size(); i++) t.data[i] = f16_to_f32(d[i / 32]) * (float)q[i];
    }
    return ts;
}

// Writes config j and tensors as `type` into dir: one model.safetensors, or `shards` files with
// model.safetensors.index.json (tensors dealt round-robin, as shard boundaries fall anywhere).
// Q8_0: the matrices hf_q8_eligible names as I8 + F16 <name>_scale (the scales in the next
// shard: a view then spans two mappings), the rest F32, and the moe_cpp_quantization block.
inline void write_hf_dir(const std::string& dir, nlohmann::json j,
                         const std::vector<HfTensor>& ts, WType type, int shards = 1) {
    if (type == WType::q8_0)
        j["moe_cpp_quantization"] = {
            {"type", "int8"}, {"format", "q8_0"}, {"block_size", 32}, {"scale_dtype", "F16"}};
    write_file_atomic(dir + "/config.json", j.dump(2));
    std::vector<SafetensorsWriter> w(shards);
    nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
    for (size_t i = 0; i < ts.size(); i++) {
        const HfTensor& t = ts[i];
        const int s = (int)(i % shards);
        const std::string file = shards == 1 ? "model.safetensors"
                                             : fmt::format("model-{:05d}-of-{:05d}.safetensors",
                                                           s + 1, shards);
        index["weight_map"][t.name] = file;
        if (type == WType::q8_0 && hf_q8_eligible(t.name, t.shape)) {
            std::vector<int8_t> q;
            std::vector<uint16_t> d;
            q8_split(t, &q, &d);
            w[s].add_raw(t.name, "I8", Shape(t.shape), q.data(), q.size());
            const int s2 = (s + 1) % shards;
            const std::string sn = hf_q8_scale_name(t.name);
            w[s2].add_raw(sn, "F16", Shape({t.shape[0], t.shape[1] / 32}), d.data(), d.size() * 2);
            index["weight_map"][sn] =
                shards == 1 ? "model.safetensors"
                            : fmt::format("model-{:05d}-of-{:05d}.safetensors", s2 + 1, shards);
        } else if (type == WType::f32 || type == WType::q8_0) {
            w[s].add(t.name, Shape(t.shape), t.data.data());
        } else {
            std::vector<uint16_t> h(t.data.size());
            for (size_t k = 0; k < h.size(); k++)
                h[k] = type == WType::bf16 ? f32_to_bf16(t.data[k]) : f32_to_f16(t.data[k]);
            w[s].add_raw(t.name, wtype_name(type), Shape(t.shape), h.data(), h.size() * 2);
        }
    }
    for (int s = 0; s < shards; s++)
        w[s].save(dir + "/" +
                  (shards == 1 ? "model.safetensors"
                               : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards)));
    if (shards > 1) write_file_atomic(dir + "/model.safetensors.index.json", index.dump(2));
}

}  // namespace moe::test
