// config.json of a Hugging Face MoE model -> HfConfig, family by family. The defaults for keys a
// file may leave out are those of the transformers config classes (MixtralConfig, ...); keys that
// fix a shape are required. Anything we would run differently from HF is refused by name.
#include <algorithm>
#include <cstring>

#include "moe/checked.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/gguf.h"
#include "moe/hf_model.h"

namespace moe {

using json = nlohmann::json;

const char* wtype_name(WType t) {
    switch (t) {
        case WType::f32: return "F32";
        case WType::f16: return "F16";
        case WType::bf16: return "BF16";
        case WType::q8_0: return "Q8_0";
        case WType::q4_0: return "Q4_0";
    }
    return "?";
}

size_t wtype_size(WType t) {
    switch (t) {
        case WType::f32: return 4;
        case WType::f16:
        case WType::bf16: return 2;
        case WType::q8_0: return 1;
        case WType::q4_0: return 0;  // two values a byte: only whole blocks have a size
    }
    return 0;
}

size_t wtype_row_bytes(WType t, int64_t cols) {
    if (t == WType::q8_0) return (size_t)(cols / 32) * 34;
    if (t == WType::q4_0) return (size_t)(cols / 32) * 18;
    return (size_t)cols * wtype_size(t);
}

bool hf_q8_eligible(const std::string& name, const std::vector<int64_t>& shape) {
    auto ends = [&](const char* s) {
        const size_t n = std::strlen(s);
        return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
    };
    if (shape.size() != 2 || shape[1] % 32 != 0 || shape[1] == 0) return false;
    return !ends(".gate.weight") && !ends("shared_expert_gate.weight");
}

std::string hf_q8_scale_name(const std::string& name) { return name + "_scale"; }

static const char* kFamilies = "mixtral | qwen2_moe | qwen3_moe | olmoe";

std::string HfConfig::ffn_prefix(int l) const {
    return "model.layers." + std::to_string(l) +
           (model_type == "mixtral" ? ".block_sparse_moe." : ".mlp.");
}

std::string HfConfig::expert_name(int l, int j, int which) const {
    static const char* mixtral[3] = {"w1", "w3", "w2"};
    static const char* hf[3] = {"gate_proj", "up_proj", "down_proj"};
    return ffn_prefix(l) + "experts." + std::to_string(j) + "." +
           (model_type == "mixtral" ? mixtral[which] : hf[which]) + ".weight";
}

double HfConfig::n_params() const {
    const double d = hidden_size, q = (double)n_heads * head_dim, kv = (double)n_kv_heads * head_dim;
    double n = (double)vocab_size * d * (tie_embeddings ? 1 : 2) + d;
    for (int l = 0; l < n_layers; l++) {
        n += 2 * d + d * q + 2 * d * kv + q * d;
        if (qkv_bias) n += q + 2 * kv;
        if (o_bias) n += d;
        if (qk_norm == QkNorm::per_head) n += 2.0 * head_dim;
        if (qk_norm == QkNorm::whole) n += q + kv;
        if (moe_layer[l]) {
            n += (double)n_experts * d + (double)n_experts * 3 * d * expert_ff;
            if (shared_ff) n += 3 * d * shared_ff + d;
        } else {
            n += 3 * d * dense_ff;
        }
    }
    return n;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> hf_tensor_shapes(const HfConfig& c) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> t;
    const int64_t d = c.hidden_size, V = c.vocab_size, hd = c.head_dim;
    const int64_t q = (int64_t)c.n_heads * hd, kv = (int64_t)c.n_kv_heads * hd;
    t.push_back({"model.embed_tokens.weight", {V, d}});
    t.push_back({"model.norm.weight", {d}});
    if (!c.tie_embeddings) t.push_back({"lm_head.weight", {V, d}});
    for (int l = 0; l < c.n_layers; l++) {
        const std::string p = "model.layers." + std::to_string(l) + ".", a = p + "self_attn.";
        t.push_back({p + "input_layernorm.weight", {d}});
        t.push_back({p + "post_attention_layernorm.weight", {d}});
        t.push_back({a + "q_proj.weight", {q, d}});
        t.push_back({a + "k_proj.weight", {kv, d}});
        t.push_back({a + "v_proj.weight", {kv, d}});
        t.push_back({a + "o_proj.weight", {d, q}});
        if (c.qkv_bias) {
            t.push_back({a + "q_proj.bias", {q}});
            t.push_back({a + "k_proj.bias", {kv}});
            t.push_back({a + "v_proj.bias", {kv}});
        }
        if (c.o_bias) t.push_back({a + "o_proj.bias", {d}});
        if (c.qk_norm == HfConfig::QkNorm::per_head) {
            t.push_back({a + "q_norm.weight", {hd}});
            t.push_back({a + "k_norm.weight", {hd}});
        } else if (c.qk_norm == HfConfig::QkNorm::whole) {
            t.push_back({a + "q_norm.weight", {q}});
            t.push_back({a + "k_norm.weight", {kv}});
        }
        const std::string f = c.ffn_prefix(l);
        if (c.moe_layer[l]) {
            const int64_t E = c.n_experts, fe = c.expert_ff;
            t.push_back({f + "gate.weight", {E, d}});
            for (int j = 0; j < E; j++) {
                t.push_back({c.expert_name(l, j, 0), {fe, d}});
                t.push_back({c.expert_name(l, j, 1), {fe, d}});
                t.push_back({c.expert_name(l, j, 2), {d, fe}});
            }
            if (c.shared_ff > 0) {
                const int64_t fs = c.shared_ff;
                t.push_back({f + "shared_expert.gate_proj.weight", {fs, d}});
                t.push_back({f + "shared_expert.up_proj.weight", {fs, d}});
                t.push_back({f + "shared_expert.down_proj.weight", {d, fs}});
                t.push_back({f + "shared_expert_gate.weight", {1, d}});
            }
        } else {
            const int64_t fd = c.dense_ff;
            t.push_back({f + "gate_proj.weight", {fd, d}});
            t.push_back({f + "up_proj.weight", {fd, d}});
            t.push_back({f + "down_proj.weight", {d, fd}});
        }
    }
    return t;
}

// eos_token_id / bos_token_id: an integer, a list of integers, or null.
static std::vector<int32_t> token_ids(const json& j, const char* key, const std::string& where,
                                      int vocab) {
    std::vector<int32_t> out;
    if (!j.contains(key) || j[key].is_null()) return out;
    const std::string what = where + ": key '" + key + "'";
    const Range r = Range::in(0, vocab - 1);
    if (j[key].is_array()) {
        if (j[key].size() > 1024) fail("{}: more than 1024 ids; fix config.json", what);
        for (auto& v : j[key]) out.push_back((int32_t)checked_int(v, what, r));
    } else {
        out.push_back((int32_t)checked_int(j[key], what, r));
    }
    return out;
}

HfConfig hf_config_from_json(const json& j, const std::string& where) {
    if (!j.is_object()) fail("{}: must be a JSON object; give a Hugging Face config.json", where);
    HfConfig c;
    c.model_type = json_str(j, "model_type", where, Range(), "");
    if (c.model_type.empty())
        fail("{}: key 'model_type' is missing; a Hugging Face config.json names its family ({})",
             where, kFamilies);
    const std::string& mt = c.model_type;
    if (mt != "mixtral" && mt != "qwen2_moe" && mt != "qwen3_moe" && mt != "olmoe")
        fail("{}: key 'model_type': '{}' is not supported; moe.cpp runs {}", where, mt, kFamilies);
    const bool qwen = mt == "qwen2_moe" || mt == "qwen3_moe";

    const Range dim = Range::in(1, 1 << 20);
    c.vocab_size = (int)json_int(j, "vocab_size", where, Range::in(1, 1 << 24));
    c.hidden_size = (int)json_int(j, "hidden_size", where, Range::in(1, 1 << 17));
    c.n_layers = (int)json_int(j, "num_hidden_layers", where, Range::in(1, 4096));
    c.n_heads = (int)json_int(j, "num_attention_heads", where, Range::in(1, 4096));
    c.n_kv_heads = (int)json_int(j, "num_key_value_heads", where, Range::in(1, 4096));
    c.max_positions = (int)json_int(j, "max_position_embeddings", where, Range::in(1, 1 << 24));
    const double eps_default = (mt == "mixtral" || mt == "olmoe") ? 1e-5 : 1e-6;
    const double eps = json_num(j, "rms_norm_eps", where, Range::in_open(0, 1), eps_default);
    c.rms_eps = (float)eps;
    // the engine keeps it in fp32: a value just under 1 (or a tiny one) must not round onto the
    // open range's ends (found by fuzz_hf_config: the written config.json was then refused)
    if (!(c.rms_eps > 0.f && c.rms_eps < 1.f))
        fail("{}: key 'rms_norm_eps': {:.17g} rounds to {} in fp32, outside (0, 1); give a value "
             "in that range", where, eps, c.rms_eps);
    c.rope_theta = (float)json_num(j, "rope_theta", where, Range::in(1, 1e12),
                                   mt == "mixtral" ? 1e6 : 10000.0);
    c.tie_embeddings = json_bool(j, "tie_word_embeddings", where, false);

    // head_dim: qwen3_moe (and newer mixtral files) give it; the modelling code falls back to
    // hidden_size / num_attention_heads.
    if (j.contains("head_dim") && !j["head_dim"].is_null())
        c.head_dim = (int)json_int(j, "head_dim", where, Range::in(2, 1 << 14));
    else if (c.hidden_size % c.n_heads != 0)
        fail("{}: key 'num_attention_heads': {} does not divide hidden_size {}; fix config.json",
             where, c.n_heads, c.hidden_size);
    else
        c.head_dim = c.hidden_size / c.n_heads;
    if (c.head_dim % 2 != 0)
        fail("{}: key 'head_dim': {} is odd; rotary embeddings need an even head dimension", where,
             c.head_dim);
    if (c.n_heads % c.n_kv_heads != 0)
        fail("{}: key 'num_key_value_heads': {} does not divide num_attention_heads {}; fix "
             "config.json",
             where, c.n_kv_heads, c.n_heads);

    const std::string act = json_str(j, "hidden_act", where, Range(), "silu");
    if (act != "silu")
        fail("{}: key 'hidden_act': '{}' is not supported; moe.cpp runs SwiGLU experts (silu)",
             where, act);
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
        fail("{}: key 'rope_scaling': {} is not supported; moe.cpp implements plain RoPE "
             "(rope_scaling null)",
             where, j["rope_scaling"].dump());
    // Sliding-window attention: accepted only where it never applies inside our context.
    const bool sliding = mt == "mixtral" || json_bool(j, "use_sliding_window", where, false);
    if (sliding && j.contains("sliding_window") && !j["sliding_window"].is_null()) {
        const int64_t w = json_int(j, "sliding_window", where, Range::in(1, 1 << 30));
        if (w < c.max_positions)
            fail("{}: key 'sliding_window': {} is shorter than max_position_embeddings {}; "
                 "sliding-window attention is not implemented (set it to null or >= the context)",
                 where, w, c.max_positions);
    }

    if (mt == "mixtral") {
        c.n_experts = (int)json_int(j, "num_local_experts", where, Range::in(1, 1 << 16));
        c.expert_ff = (int)json_int(j, "intermediate_size", where, dim);
        c.norm_topk_prob = true;  // Mixtral always renormalises
    } else {
        c.n_experts = (int)json_int(j, "num_experts", where, Range::in(1, 1 << 16));
        c.norm_topk_prob = json_bool(j, "norm_topk_prob", where, false);
        if (mt == "olmoe") {
            c.expert_ff = (int)json_int(j, "intermediate_size", where, dim);
        } else {
            c.expert_ff = (int)json_int(j, "moe_intermediate_size", where, dim);
            c.dense_ff = (int)json_int(j, "intermediate_size", where, dim);
        }
    }
    c.top_k = (int)json_int(j, "num_experts_per_tok", where, Range::in(1, 1 << 16));
    if (c.top_k > c.n_experts)
        fail("{}: key 'num_experts_per_tok': {} is more than the {} experts; fix config.json",
             where, c.top_k, c.n_experts);

    // Which layers are sparse: qwen's decoder_sparse_step and mlp_only_layers.
    c.moe_layer.assign(c.n_layers, 1);
    if (qwen) {
        const int step = (int)json_int(j, "decoder_sparse_step", where, Range::in(1, 4096), 1);
        std::vector<uint8_t> dense_only(c.n_layers, 0);
        if (j.contains("mlp_only_layers") && !j["mlp_only_layers"].is_null()) {
            const json& m = j["mlp_only_layers"];
            const std::string what = where + ": key 'mlp_only_layers'";
            if (!m.is_array()) fail("{}: must be a list of layer indices; fix config.json", what);
            for (auto& v : m) dense_only[checked_int(v, what, Range::in(0, c.n_layers - 1))] = 1;
        }
        for (int l = 0; l < c.n_layers; l++)
            c.moe_layer[l] = !dense_only[l] && (l + 1) % step == 0;
    }
    if (mt == "qwen2_moe") {
        c.shared_ff = (int)json_int(j, "shared_expert_intermediate_size", where, dim);
        c.qkv_bias = true;  // Qwen2 attention: q, k, v with bias, o without
    }
    if (mt == "qwen3_moe" || mt == "olmoe") {
        c.qkv_bias = c.o_bias = json_bool(j, "attention_bias", where, false);
        c.qk_norm = mt == "qwen3_moe" ? HfConfig::QkNorm::per_head : HfConfig::QkNorm::whole;
    }
    if (mt == "olmoe" && j.contains("clip_qkv") && !j["clip_qkv"].is_null())
        c.clip_qkv = (float)json_num(j, "clip_qkv", where, Range::above(0), 0);
    for (int l = 0; l < c.n_layers; l++)
        if (!c.moe_layer[l] && c.dense_ff < 1)
            fail("{}: layer {} is dense but 'intermediate_size' is not set; fix config.json", where,
                 l);

    auto bos = token_ids(j, "bos_token_id", where, c.vocab_size);
    if (bos.size() > 1) fail("{}: key 'bos_token_id': give one id", where);
    c.bos_token_id = bos.empty() ? -1 : bos[0];
    c.eos_token_ids = token_ids(j, "eos_token_id", where, c.vocab_size);
    if (j.contains("moe_cpp_quantization")) {
        const json& q = j["moe_cpp_quantization"];
        const std::string w = where + ": moe_cpp_quantization";
        if (!q.is_object())
            fail("{}: must be an object; restore the config.json moe quantize wrote", w);
        auto key = [&](const char* k) { return q.contains(k) ? q[k] : json(); };
        c.quantization = checked_str(key("type"), w + ": key 'type'", Range::one_of("int8|int4"));
        checked_str(key("format"), w + ": key 'format'",
                    Range::one_of(c.quantization == "int8" ? "q8_0" : "q4_0"));
        checked_int(key("block_size"), w + ": key 'block_size'", Range::in(32, 32));
        checked_str(key("scale_dtype"), w + ": key 'scale_dtype'", Range::one_of("F16"));
    }
    return c;
}

// The first field in which two configs describe different computations ("" when none): what
// hf_config_to_json checks its own output against.
static std::string first_difference(const HfConfig& a, const HfConfig& b) {
    const bool dense = std::find(a.moe_layer.begin(), a.moe_layer.end(), 0) != a.moe_layer.end();
    const std::pair<const char*, bool> same[] = {
        {"model_type", a.model_type == b.model_type},
        {"vocab_size", a.vocab_size == b.vocab_size},
        {"hidden_size", a.hidden_size == b.hidden_size},
        {"num_hidden_layers", a.n_layers == b.n_layers},
        {"num_attention_heads", a.n_heads == b.n_heads},
        {"num_key_value_heads", a.n_kv_heads == b.n_kv_heads},
        {"head_dim", a.head_dim == b.head_dim},
        {"max_position_embeddings", a.max_positions == b.max_positions},
        {"rms_norm_eps", a.rms_eps == b.rms_eps},
        {"rope_theta", a.rope_theta == b.rope_theta},
        {"tie_word_embeddings", a.tie_embeddings == b.tie_embeddings},
        {"num_experts", a.n_experts == b.n_experts},
        {"num_experts_per_tok", a.top_k == b.top_k},
        {"expert intermediate_size", a.expert_ff == b.expert_ff},
        {"shared_expert_intermediate_size", a.shared_ff == b.shared_ff},
        {"norm_topk_prob", a.norm_topk_prob == b.norm_topk_prob},
        {"which layers are MoE (mlp_only_layers)", a.moe_layer == b.moe_layer},
        {"dense intermediate_size", !dense || a.dense_ff == b.dense_ff},
        {"q/k norm", a.qk_norm == b.qk_norm},
        {"clip_qkv", a.clip_qkv == b.clip_qkv},
        {"q/k/v biases (attention_bias)", a.qkv_bias == b.qkv_bias},
        {"o_proj bias (attention_bias)", a.o_bias == b.o_bias},
        {"bos_token_id", a.bos_token_id == b.bos_token_id},
        {"eos_token_id", a.eos_token_ids == b.eos_token_ids},
    };
    for (auto& [name, ok] : same)
        if (!ok) return name;
    return "";
}

const char* hf_architecture(const std::string& model_type) {
    return model_type == "mixtral"     ? "MixtralForCausalLM"
           : model_type == "qwen2_moe" ? "Qwen2MoeForCausalLM"
           : model_type == "qwen3_moe" ? "Qwen3MoeForCausalLM"
                                       : "OlmoeForCausalLM";
}

json hf_config_to_json(const HfConfig& c, const std::string& where) {
    const std::string& mt = c.model_type;
    // A float as its shortest decimal (1e-06, not 9.99999997e-07): read as a double and rounded
    // back to float it is the same float.
    auto dec = [](float v) { return std::stod(fmt::format("{}", v)); };
    json j;
    j["architectures"] = {hf_architecture(mt)};
    j["model_type"] = mt;
    j["vocab_size"] = c.vocab_size;
    j["hidden_size"] = c.hidden_size;
    j["num_hidden_layers"] = c.n_layers;
    j["num_attention_heads"] = c.n_heads;
    j["num_key_value_heads"] = c.n_kv_heads;
    j["head_dim"] = c.head_dim;
    j["max_position_embeddings"] = c.max_positions;
    j["rms_norm_eps"] = dec(c.rms_eps);
    j["rope_theta"] = dec(c.rope_theta);
    j["rope_scaling"] = nullptr;
    j["tie_word_embeddings"] = c.tie_embeddings;
    j["hidden_act"] = "silu";
    j["num_experts_per_tok"] = c.top_k;
    if (mt == "mixtral") {
        j["num_local_experts"] = c.n_experts;
        j["intermediate_size"] = c.expert_ff;
        j["sliding_window"] = nullptr;
    } else {
        j["num_experts"] = c.n_experts;
        j["norm_topk_prob"] = c.norm_topk_prob;
    }
    if (mt == "olmoe") {
        j["intermediate_size"] = c.expert_ff;
        j["attention_bias"] = c.qkv_bias;
        j["clip_qkv"] = c.clip_qkv > 0 ? json(dec(c.clip_qkv)) : json(nullptr);
    }
    if (mt == "qwen2_moe" || mt == "qwen3_moe") {
        j["moe_intermediate_size"] = c.expert_ff;
        // The dense width matters only where a layer is dense; HF requires the key anyway.
        j["intermediate_size"] = c.dense_ff > 0 ? c.dense_ff : c.expert_ff;
        j["decoder_sparse_step"] = 1;
        json dense = json::array();
        for (int l = 0; l < c.n_layers; l++)
            if (!c.moe_layer[l]) dense.push_back(l);
        j["mlp_only_layers"] = dense;
        j["use_sliding_window"] = false;
        j["sliding_window"] = nullptr;
    }
    if (mt == "qwen2_moe") j["shared_expert_intermediate_size"] = c.shared_ff;
    if (mt == "qwen3_moe") j["attention_bias"] = c.qkv_bias;
    if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
    if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
    if (c.eos_token_ids.size() > 1) j["eos_token_id"] = c.eos_token_ids;
    // A model the family's config.json cannot describe (a dense layer in Mixtral, an o_proj bias
    // in Qwen2-MoE, ...) is refused rather than written as another model.
    const std::string diff = first_difference(c, hf_config_from_json(j, where + " as config.json"));
    if (!diff.empty())
        fail("{}: {} of this {} model cannot be written in a Hugging Face config.json of the "
             "family; the engine would run another model",
             where, diff, mt);
    return j;
}

bool is_hf_model_dir(const std::string& dir) {
    if (is_gguf_file(dir)) return true;
    const std::string p = dir + "/config.json";
    if (!file_exists(p)) return false;
    json j;
    try {
        j = json::parse(read_file(p));
    } catch (const std::exception&) {
        // Unreadable: moe.cpp's own checkpoints always have a readable config.json with a
        // "moe_cpp" key, so this is someone's HF folder; the engine's loader names the problem.
        return true;
    }
    if (!j.is_object()) return false;
    if (!j.contains("moe_cpp")) return true;
    // moe.cpp's Mixtral-family checkpoints (with "moe_cpp") load through load_model; its
    // checkpoints of the other families are real HF folders (the moe_cpp block only records
    // training settings, which the engine ignores).
    return j.contains("model_type") && j["model_type"].is_string() && j["model_type"] != "mixtral";
}

}  // namespace moe
