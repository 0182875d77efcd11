// Training config <-> JSON and flags; the checkpoint's config.json <-> ModelConfig.
#include "moe/config.h"

#include <cmath>
#include <cstdlib>

#include "moe/error.h"
#include "moe/file_io.h"

namespace moe {

using json = nlohmann::json;

std::vector<ConfigField> config_fields(TrainConfig& c) {
    using F = ConfigField;
    ModelConfig& m = c.model;
    MoeConfig& e = c.model.moe;
    return {
        {"data", F::String, &c.data, "training text (UTF-8) or a token file"},
        {"val_fraction", F::Double, &c.val_fraction,
         "share of the corpus (its end) kept for validation"},
        {"tokenizer", F::String, &c.tokenizer, "char | sentencepiece"},
        {"vocab_size", F::Int, &c.vocab_size,
         "sentencepiece vocabulary size (char: from the corpus)"},
        {"sp_model_type", F::String, &c.sp_model_type, "sentencepiece model: bpe | unigram"},
        {"n_layers", F::Int, &m.n_layers, "Transformer blocks (num_hidden_layers)"},
        {"d_model", F::Int, &m.d_model, "hidden size d"},
        {"n_heads", F::Int, &m.n_heads, "attention heads"},
        {"n_kv_heads", F::Int, &m.n_kv_heads, "key/value heads (< n_heads: grouped-query)"},
        {"d_ff", F::Int, &m.d_ff, "dense SwiGLU FFN width (dense layers)"},
        {"block_size", F::Int, &m.block_size, "context length S"},
        {"rms_eps", F::Float, &m.rms_eps, "RMSNorm epsilon"},
        {"rope_theta", F::Float, &m.rope_theta, "RoPE base"},
        {"tie_embeddings", F::Bool, &m.tie_embeddings, "LM head shares the embedding matrix"},
        {"init_std", F::Float, &m.init_std, "normal init std of weights"},
        {"moe_every", F::Int, &m.moe_every, "1: every FFN is MoE; N: every Nth; 0: all dense"},
        {"n_experts", F::Int, &e.n_experts, "experts per MoE layer E"},
        {"top_k", F::Int, &e.top_k, "experts per token k"},
        {"expert_d_ff", F::Int, &e.d_ff, "expert FFN width"},
        {"router", F::String, &e.router,
         "softmax | noisy-topk | topk | switch | gshard | expert-choice | hierarchical"},
        {"activation", F::String, nullptr, "expert activation: swiglu | gelu | relu"},
        {"n_shared_experts", F::Int, &e.n_shared_experts, "always-on shared experts"},
        {"d_ff_shared", F::Int, &e.d_ff_shared, "shared expert width (0: expert_d_ff)"},
        {"dropless", F::Bool, &e.dropless, "no capacity limit (token-choice routers)"},
        {"capacity_factor", F::Float, &e.capacity_factor, "C = ceil(cf * T * k / E)"},
        {"priority", F::String, &e.priority, "capacity priority: token | weight"},
        {"router_temperature", F::Float, &e.temperature, "router logits / temperature"},
        {"renormalize", F::Bool, &e.renormalize, "topk: renormalise the k weights"},
        {"score", F::String, &e.score, "topk scores: softmax | sigmoid"},
        {"jitter", F::Float, &e.jitter, "multiplicative router-input noise (training)"},
        {"gate_dropout", F::Float, &e.gate_dropout, "dropout on gate probabilities (training)"},
        {"n_groups", F::Int, &e.n_groups, "hierarchical: expert groups"},
        {"topk_groups", F::Int, &e.topk_groups, "hierarchical: groups per token"},
        {"w_importance", F::Float, &e.w_importance, "importance loss weight"},
        {"w_load", F::Float, &e.w_load, "load loss weight"},
        {"w_switch", F::Float, &e.w_switch, "switch loss weight"},
        {"w_zloss", F::Float, &e.w_zloss, "router z-loss weight"},
        {"bias_update_rate", F::Float, &e.bias_update_rate,
         "aux-loss-free balancing rate (0: off)"},
        {"batch_size", F::Int, &c.batch_size, "sequences per step B"},
        {"max_steps", F::Int, &c.max_steps, "optimizer steps (the schedule's length)"},
        {"stop_after", F::Int, &c.stop_after, "stop and save after this step (0: max_steps)"},
        {"lr", F::Double, &c.lr, "peak learning rate"},
        {"min_lr", F::Double, &c.min_lr, "learning rate at the end of the cosine"},
        {"warmup_steps", F::Int, &c.warmup_steps, "linear warmup steps"},
        {"lr_decay_steps", F::Int, &c.lr_decay_steps, "cosine decay length (0: max_steps)"},
        {"weight_decay", F::Double, &c.weight_decay, "AdamW decoupled weight decay"},
        {"beta1", F::Double, &c.beta1, "AdamW beta1"},
        {"beta2", F::Double, &c.beta2, "AdamW beta2"},
        {"adam_eps", F::Double, &c.adam_eps, "AdamW epsilon"},
        {"grad_clip", F::Double, &c.grad_clip, "global gradient-norm clip (0: off)"},
        {"eval_every", F::Int, &c.eval_every, "evaluate every N steps (0: only at the end)"},
        {"eval_batches", F::Int, &c.eval_batches, "validation batches per evaluation"},
        {"log_every", F::Int, &c.log_every, "metrics.jsonl line every N steps"},
        {"save_every", F::Int, &c.save_every, "latest/ checkpoint every N steps (0: each eval)"},
        {"print_every", F::Int, &c.print_every, "progress line every N steps (not a terminal)"},
        {"max_time_s", F::Double, &c.max_time_s, "stop when training time exceeds this (0: off)"},
        {"seed", F::U64, &c.seed, "seed of init, data order and router noise"},
        {"threads", F::Int, &c.threads, "threads (0: all cores)"},
    };
}

static const char* type_name(ConfigField::Type t) {
    switch (t) {
        case ConfigField::Int:
            return "integer";
        case ConfigField::U64:
            return "unsigned integer";
        case ConfigField::Double:
        case ConfigField::Float:
            return "number";
        case ConfigField::Bool:
            return "boolean";
        default:
            return "string";
    }
}

static std::string known_keys(TrainConfig& c) {
    std::string s;
    for (auto& f : config_fields(c)) s += (s.empty() ? "" : ", ") + std::string(f.name);
    return s;
}

static ConfigField* find_field(std::vector<ConfigField>& fields, const std::string& key) {
    for (auto& f : fields)
        if (key == f.name) return &f;
    return nullptr;
}

static void set_from_json(TrainConfig& c, ConfigField& f, const json& v, const std::string& where) {
    auto bad = [&] {
        fail("{}: key '{}' must be a {}, got {}", where, f.name, type_name(f.type), v.dump());
    };
    if (f.ptr == nullptr) {  // activation: an enum kept as its name
        if (!v.is_string()) bad();
        c.model.moe.activation = activation_from_string(v.get<std::string>());
        return;
    }
    switch (f.type) {
        case ConfigField::Int:
            if (!v.is_number_integer()) bad();
            *(int*)f.ptr = v.get<int>();
            break;
        case ConfigField::U64:
            if (!v.is_number_integer() || v.get<int64_t>() < 0) bad();
            *(uint64_t*)f.ptr = v.get<uint64_t>();
            break;
        case ConfigField::Double:
            if (!v.is_number()) bad();
            *(double*)f.ptr = v.get<double>();
            break;
        case ConfigField::Float:
            if (!v.is_number()) bad();
            // Outside float range it would become inf, which train_config.json cannot hold.
            if (!(std::fabs(v.get<double>()) <= 3.4028234663852886e38))
                fail("{}: key '{}' = {} is outside the range of a float", where, f.name, v.dump());
            *(float*)f.ptr = v.get<float>();
            break;
        case ConfigField::Bool:
            if (!v.is_boolean()) bad();
            *(bool*)f.ptr = v.get<bool>();
            break;
        case ConfigField::String:
            if (!v.is_string()) bad();
            *(std::string*)f.ptr = v.get<std::string>();
            break;
    }
}

void config_apply_json(TrainConfig& c, const json& j, const std::string& where) {
    if (!j.is_object()) fail("{}: a config must be a JSON object", where);
    auto fields = config_fields(c);
    for (auto& [k, v] : j.items()) {
        if (k == "comment" || k.rfind("_", 0) == 0) continue;  // free-text notes
        ConfigField* f = find_field(fields, k);
        if (!f) fail("{}: unknown config key '{}' (known keys: {})", where, k, known_keys(c));
        set_from_json(c, *f, v, where);
    }
}

TrainConfig config_load(const std::string& path) { return config_from_text(read_file(path), path); }

TrainConfig config_from_text(const std::string& text, const std::string& where) {
    json j;
    try {
        j = json::parse(text, nullptr, true, /*ignore_comments=*/true);
    } catch (const std::exception& e) {
        fail("{}: not valid JSON: {}", where, e.what());
    }
    TrainConfig c;
    config_apply_json(c, j, where);
    return c;
}

void config_set(TrainConfig& c, const std::string& key_in, const std::string& value) {
    std::string key = key_in;
    for (auto& ch : key)
        if (ch == '-') ch = '_';
    auto fields = config_fields(c);
    ConfigField* f = find_field(fields, key);
    if (!f) fail("unknown option --{} (config keys: {})", key_in, known_keys(c));
    auto bad = [&] { fail("option --{}: '{}' is not a {}", key_in, value, type_name(f->type)); };
    const char* s = value.c_str();
    char* end = nullptr;
    json v;
    switch (f->type) {
        case ConfigField::Int:
        case ConfigField::U64: {
            long long x = std::strtoll(s, &end, 10);
            if (value.empty() || *end) bad();
            v = x;
            break;
        }
        case ConfigField::Double:
        case ConfigField::Float: {
            double x = std::strtod(s, &end);
            if (value.empty() || *end) bad();
            v = x;
            break;
        }
        case ConfigField::Bool:
            if (value == "true" || value == "1")
                v = true;
            else if (value == "false" || value == "0")
                v = false;
            else
                bad();
            break;
        case ConfigField::String:
            v = value;
            break;
    }
    set_from_json(c, *f, v, "command line");
}

json config_to_json(const TrainConfig& cin) {
    TrainConfig c = cin;
    json j = json::object();
    for (auto& f : config_fields(c)) {
        if (!f.ptr) {
            j[f.name] = activation_name(c.model.moe.activation);
            continue;
        }
        switch (f.type) {
            case ConfigField::Int:
                j[f.name] = *(int*)f.ptr;
                break;
            case ConfigField::U64:
                j[f.name] = *(uint64_t*)f.ptr;
                break;
            case ConfigField::Double:
                j[f.name] = *(double*)f.ptr;
                break;
            case ConfigField::Float:
                j[f.name] = (double)*(float*)f.ptr;
                break;
            case ConfigField::Bool:
                j[f.name] = *(bool*)f.ptr;
                break;
            case ConfigField::String:
                j[f.name] = *(std::string*)f.ptr;
                break;
        }
    }
    return j;
}

void config_validate(const TrainConfig& c) {
    auto need = [](bool ok, const std::string& msg) {
        if (!ok) throw Error("config: " + msg);
    };
    need(c.tokenizer == "char" || c.tokenizer == "sentencepiece",
         fmt::format("tokenizer='{}' (char or sentencepiece)", c.tokenizer));
    need(c.sp_model_type == "bpe" || c.sp_model_type == "unigram",
         fmt::format("sp_model_type='{}' (bpe or unigram)", c.sp_model_type));
    need(c.val_fraction > 0 && c.val_fraction < 1,
         fmt::format("val_fraction={} (must be in (0, 1))", c.val_fraction));
    need(c.batch_size >= 1, fmt::format("batch_size={} (must be >= 1)", c.batch_size));
    need(c.max_steps >= 1, fmt::format("max_steps={} (must be >= 1)", c.max_steps));
    need(c.stop_after >= 0, fmt::format("stop_after={} (must be >= 0)", c.stop_after));
    need(c.lr >= 0 && c.min_lr >= 0, fmt::format("lr={} min_lr={} (must be >= 0)", c.lr, c.min_lr));
    need(c.warmup_steps >= 0, fmt::format("warmup_steps={} (must be >= 0)", c.warmup_steps));
    need(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1,
         fmt::format("beta1={} beta2={} (must be in [0, 1))", c.beta1, c.beta2));
    need(c.grad_clip >= 0, fmt::format("grad_clip={} (must be >= 0)", c.grad_clip));
    need(c.eval_batches >= 1, fmt::format("eval_batches={} (must be >= 1)", c.eval_batches));
    need(c.log_every >= 1, fmt::format("log_every={} (must be >= 1)", c.log_every));
    need(c.eval_every >= 0 && c.save_every >= 0 && c.print_every >= 0,
         "eval_every, save_every and print_every must be >= 0");
    const ModelConfig& m = c.model;
    need(m.d_model >= 1 && m.n_heads >= 1 && m.n_layers >= 1 && m.block_size >= 1,
         fmt::format("d_model={} n_heads={} n_layers={} block_size={} (all must be >= 1)",
                     m.d_model, m.n_heads, m.n_layers, m.block_size));
    need(m.d_model % m.n_heads == 0,
         fmt::format("n_heads={} does not divide d_model={}", m.n_heads, m.d_model));
    need(m.n_kv_heads >= 1 && m.n_heads % m.n_kv_heads == 0,
         fmt::format("n_kv_heads={} does not divide n_heads={}", m.n_kv_heads, m.n_heads));
    need((m.d_model / m.n_heads) % 2 == 0,
         fmt::format("head size d_model/n_heads={} must be even (RoPE rotates pairs)",
                     m.d_model / m.n_heads));
    need(m.moe_every >= 0, fmt::format("moe_every={} (must be >= 0)", m.moe_every));
    if (m.moe_every > 0) {
        need(m.moe.n_experts >= 1,
             fmt::format("n_experts={} (must be >= 1 when moe_every > 0)", m.moe.n_experts));
        if (m.moe.router != "expert-choice")
            need(m.moe.top_k >= 1 && m.moe.top_k <= m.moe.n_experts,
                 fmt::format("top_k={} > n_experts={} (k must be in [1, E])", m.moe.top_k,
                             m.moe.n_experts));
        need(m.moe.d_ff >= 1, fmt::format("expert_d_ff={} (must be >= 1)", m.moe.d_ff));
    } else {
        need(m.d_ff >= 1, fmt::format("d_ff={} (must be >= 1 for dense layers)", m.d_ff));
    }
}

// ---- checkpoint config.json ----

json model_config_to_hf(const ModelConfig& m) {
    bool any_moe = false;
    for (int l = 0; l < m.n_layers; l++) any_moe = any_moe || m.is_moe_layer(l);
    json j;
    j["architectures"] = {"MixtralForCausalLM"};
    j["model_type"] = "mixtral";
    j["hidden_size"] = m.d_model;
    j["intermediate_size"] = any_moe ? m.moe.d_ff : m.d_ff;
    j["num_hidden_layers"] = m.n_layers;
    j["num_attention_heads"] = m.n_heads;
    j["num_key_value_heads"] = m.n_kv_heads;
    j["num_local_experts"] = any_moe ? m.moe.n_experts : 0;
    j["num_experts_per_tok"] = any_moe ? m.moe.top_k : 0;
    j["vocab_size"] = m.vocab_size;
    j["rms_norm_eps"] = m.rms_eps;
    j["rope_theta"] = m.rope_theta;
    j["max_position_embeddings"] = m.block_size;
    j["tie_word_embeddings"] = m.tie_embeddings;
    j["hidden_act"] = "silu";
    j["torch_dtype"] = "float32";
    j["router_aux_loss_coef"] = m.moe.w_switch;
    j["output_router_logits"] = false;
    j["initializer_range"] = m.init_std;
    const MoeConfig& e = m.moe;
    j["moe_cpp"] = {
        {"format_version", 1},
        // A model with no MoE layer (moe_every > n_layers) is dense-only: recorded as moe_every 0,
        // beside num_local_experts 0, or its config.json would not load back.
        {"moe_every", any_moe ? m.moe_every : 0},
        {"dense_intermediate_size", m.d_ff},
        {"router", e.router},
        {"activation", activation_name(e.activation)},
        {"n_shared_experts", e.n_shared_experts},
        {"shared_intermediate_size", e.d_ff_shared},
        {"dropless", e.dropless},
        {"capacity_factor", e.capacity_factor},
        {"priority", e.priority},
        {"router_temperature", e.temperature},
        {"renormalize", e.renormalize},
        {"score", e.score},
        {"jitter", e.jitter},
        {"gate_dropout", e.gate_dropout},
        {"n_groups", e.n_groups},
        {"topk_groups", e.topk_groups},
        {"w_importance", e.w_importance},
        {"w_load", e.w_load},
        {"w_switch", e.w_switch},
        {"w_zloss", e.w_zloss},
        {"bias_update_rate", e.bias_update_rate},
        {"seed", m.seed},
        {"moe_seed", e.seed},
    };
    return j;
}

ModelConfig model_config_from_hf(const json& j, const std::string& where) {
    if (!j.is_object()) fail("{}: config.json is not a JSON object", where);
    auto get_int = [&](const json& o, const char* k, bool required, int def) -> int {
        if (!o.contains(k)) {
            if (required) fail("{}: missing key '{}'", where, k);
            return def;
        }
        if (!o[k].is_number_integer())
            fail("{}: key '{}' must be an integer, got {}", where, k, o[k].dump());
        return o[k].get<int>();
    };
    auto get_num = [&](const json& o, const char* k, double def) -> double {
        if (!o.contains(k) || o[k].is_null()) return def;
        if (!o[k].is_number()) fail("{}: key '{}' must be a number, got {}", where, k, o[k].dump());
        double x = o[k].get<double>();
        // Every such key is stored as a float: one outside its range would become inf, which
        // config.json cannot hold (it is written back as null).
        if (!(std::fabs(x) <= 3.4028234663852886e38))
            fail("{}: key '{}' = {} is outside the range of a float", where, k, o[k].dump());
        return x;
    };
    auto get_bool = [&](const json& o, const char* k, bool def) -> bool {
        if (!o.contains(k)) return def;
        if (!o[k].is_boolean())
            fail("{}: key '{}' must be a boolean, got {}", where, k, o[k].dump());
        return o[k].get<bool>();
    };
    auto get_str = [&](const json& o, const char* k, const std::string& def) -> std::string {
        if (!o.contains(k)) return def;
        if (!o[k].is_string()) fail("{}: key '{}' must be a string, got {}", where, k, o[k].dump());
        return o[k].get<std::string>();
    };
    ModelConfig m;
    m.d_model = get_int(j, "hidden_size", true, 0);
    int inter = get_int(j, "intermediate_size", true, 0);
    m.n_layers = get_int(j, "num_hidden_layers", true, 0);
    m.n_heads = get_int(j, "num_attention_heads", true, 0);
    m.n_kv_heads = get_int(j, "num_key_value_heads", false, m.n_heads);
    int E = get_int(j, "num_local_experts", false, 0);
    int k = get_int(j, "num_experts_per_tok", false, 0);
    m.vocab_size = get_int(j, "vocab_size", true, 0);
    m.rms_eps = (float)get_num(j, "rms_norm_eps", 1e-5);
    m.rope_theta = (float)get_num(j, "rope_theta", 10000.0);
    m.block_size = get_int(j, "max_position_embeddings", true, 0);
    m.tie_embeddings = get_bool(j, "tie_word_embeddings", false);
    m.init_std = (float)get_num(j, "initializer_range", 0.02);
    MoeConfig& e = m.moe;
    e.n_experts = E;
    e.top_k = k > 0 ? k : 1;
    e.d_ff = inter;
    e.w_switch = (float)get_num(j, "router_aux_loss_coef", 0.0);
    m.moe_every = E > 0 ? 1 : 0;
    m.d_ff = inter;
    if (j.contains("moe_cpp")) {
        const json& o = j["moe_cpp"];
        if (!o.is_object()) fail("{}: 'moe_cpp' must be an object", where);
        m.moe_every = get_int(o, "moe_every", false, m.moe_every);
        m.d_ff = get_int(o, "dense_intermediate_size", false, m.d_ff);
        e.router = get_str(o, "router", e.router);
        e.activation = activation_from_string(get_str(o, "activation", "swiglu"));
        e.n_shared_experts = get_int(o, "n_shared_experts", false, 0);
        e.d_ff_shared = get_int(o, "shared_intermediate_size", false, 0);
        e.dropless = get_bool(o, "dropless", e.dropless);
        e.capacity_factor = (float)get_num(o, "capacity_factor", e.capacity_factor);
        e.priority = get_str(o, "priority", e.priority);
        e.temperature = (float)get_num(o, "router_temperature", e.temperature);
        e.renormalize = get_bool(o, "renormalize", e.renormalize);
        e.score = get_str(o, "score", e.score);
        e.jitter = (float)get_num(o, "jitter", 0.0);
        e.gate_dropout = (float)get_num(o, "gate_dropout", 0.0);
        e.n_groups = get_int(o, "n_groups", false, 0);
        e.topk_groups = get_int(o, "topk_groups", false, 1);
        e.w_importance = (float)get_num(o, "w_importance", 0.0);
        e.w_load = (float)get_num(o, "w_load", 0.0);
        e.w_switch = (float)get_num(o, "w_switch", e.w_switch);
        e.w_zloss = (float)get_num(o, "w_zloss", 0.0);
        e.bias_update_rate = (float)get_num(o, "bias_update_rate", 0.0);
        if (o.contains("seed") && o["seed"].is_number_unsigned())
            m.seed = o["seed"].get<uint64_t>();
        if (o.contains("moe_seed") && o["moe_seed"].is_number_unsigned())
            e.seed = o["moe_seed"].get<uint64_t>();
    }
    if (m.moe_every > 0 && E <= 0)
        fail("{}: moe_every={} but num_local_experts={}", where, m.moe_every, E);
    e.d_model = m.d_model;
    if (m.d_model <= 0 || m.n_heads <= 0 || m.d_model % m.n_heads != 0)
        fail("{}: num_attention_heads={} does not divide hidden_size={}", where, m.n_heads,
             m.d_model);
    if (m.moe_every > 0 && e.router != "expert-choice" && (e.top_k < 1 || e.top_k > E))
        fail("{}: num_experts_per_tok={} > num_local_experts={}", where, e.top_k, E);
    try {
        m.validate();
    } catch (const Error& err) {
        fail("{}: {}", where, err.what());
    }
    return m;
}

ModelConfig model_config_from_text(const std::string& text, const std::string& where) {
    json j;
    try {
        j = json::parse(text);
    } catch (const std::exception& e) {
        fail("{}: not valid JSON: {}", where, e.what());
    }
    return model_config_from_hf(j, where);
}

}  // namespace moe
