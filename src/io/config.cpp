// Training config <-> JSON and flags; the checkpoint's config.json <-> ModelConfig.
#include "moe/config.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>

#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/hf_model.h"

namespace moe {

using json = nlohmann::json;

std::vector<ConfigField> config_fields(TrainConfig& c) {
    using F = ConfigField;
    using R = Range;
    ModelConfig& m = c.model;
    MoeConfig& e = c.model.moe;
    return {
        {"data", F::String, &c.data, "training text (UTF-8) or a token file"},
        {"val_fraction", F::Double, &c.val_fraction,
         "share of the corpus (its end) kept for validation", R::in_open(0, 1)},
        {"tokenizer", F::String, &c.tokenizer, "char | sentencepiece | bpe (bpe: from --init-from)",
         R::one_of("char|sentencepiece|bpe")},
        {"vocab_size", F::Int, &c.vocab_size,
         "sentencepiece vocabulary size (char: from the corpus)", R::in(2, 1 << 20)},
        {"sp_model_type", F::String, &c.sp_model_type, "sentencepiece model: bpe | unigram",
         R::one_of("bpe|unigram")},
        {"n_layers", F::Int, &m.n_layers, "Transformer blocks (num_hidden_layers)", R::in(1, 1024)},
        {"d_model", F::Int, &m.d_model, "hidden size d", R::in(2, 1 << 16)},
        {"n_heads", F::Int, &m.n_heads, "attention heads", R::in(1, 4096)},
        {"n_kv_heads", F::Int, &m.n_kv_heads, "key/value heads (< n_heads: grouped-query)",
         R::in(1, 4096)},
        {"d_ff", F::Int, &m.d_ff, "dense SwiGLU FFN width (dense layers)", R::in(1, 1 << 20)},
        {"block_size", F::Int, &m.block_size, "context length S", R::in(1, 1 << 20)},
        {"rms_eps", F::Float, &m.rms_eps, "RMSNorm epsilon", R::in_open(0, 1)},
        {"rope_theta", F::Float, &m.rope_theta, "RoPE base", R::in(1, 1e9)},
        {"tie_embeddings", F::Bool, &m.tie_embeddings, "LM head shares the embedding matrix"},
        {"init_std", F::Float, &m.init_std, "normal init std of weights", R::in(0, 10)},
        {"moe_every", F::Int, &m.moe_every, "1: every FFN is MoE; N: every Nth; 0: all dense",
         R::in(0, 1024)},
        {"n_experts", F::Int, &e.n_experts, "experts per MoE layer E (>= 1 when moe_every > 0)",
         R::in(0, 1 << 16)},
        {"top_k", F::Int, &e.top_k, "experts per token k", R::in(1, 1 << 16)},
        {"expert_d_ff", F::Int, &e.d_ff, "expert FFN width (>= 1 when moe_every > 0)",
         R::in(0, 1 << 20)},
        {"router", F::String, &e.router,
         "softmax | noisy-topk | topk | switch | gshard | expert-choice | hierarchical | top-p",
         R::one_of("softmax|noisy-topk|topk|switch|gshard|expert-choice|hierarchical|top-p")},
        {"activation", F::String, nullptr, "expert activation: swiglu | gelu | relu",
         R::one_of("swiglu|gelu|relu")},
        {"n_shared_experts", F::Int, &e.n_shared_experts, "always-on shared experts", R::in(0, 64)},
        {"d_ff_shared", F::Int, &e.d_ff_shared, "shared expert width (0: expert_d_ff)",
         R::in(0, 1 << 20)},
        {"dropless", F::Bool, &e.dropless, "no capacity limit (token-choice routers)"},
        {"capacity_factor", F::Float, &e.capacity_factor, "C = ceil(cf * T * k / E)",
         R::in(0, 1000)},
        {"priority", F::String, &e.priority, "capacity priority: token | weight",
         R::one_of("token|weight")},
        {"router_temperature", F::Float, &e.temperature, "router logits / temperature",
         R::in_open(0, 1e6)},
        {"renormalize", F::Bool, &e.renormalize, "topk: renormalise the k weights"},
        {"score", F::String, &e.score, "topk scores: softmax | sigmoid",
         R::one_of("softmax|sigmoid")},
        {"jitter", F::Float, &e.jitter, "multiplicative router-input noise (training)",
         R::in_open_hi(0, 1)},
        {"gate_dropout", F::Float, &e.gate_dropout, "dropout on gate probabilities (training)",
         R::in_open_hi(0, 1)},
        {"n_groups", F::Int, &e.n_groups, "hierarchical: expert groups", R::in(0, 1 << 16)},
        {"topk_groups", F::Int, &e.topk_groups, "hierarchical: groups per token",
         R::in(1, 1 << 16)},
        {"threshold", F::Float, &e.threshold,
         "top-p: cumulative probability to reach (top_k is max_k)", R::in_open_lo(0, 1)},
        {"w_importance", F::Float, &e.w_importance, "importance loss weight", R::in(0, 1e6)},
        {"w_load", F::Float, &e.w_load, "load loss weight", R::in(0, 1e6)},
        {"w_switch", F::Float, &e.w_switch, "switch loss weight", R::in(0, 1e6)},
        {"w_zloss", F::Float, &e.w_zloss, "router z-loss weight", R::in(0, 1e6)},
        {"bias_update_rate", F::Float, &e.bias_update_rate, "aux-loss-free balancing rate (0: off)",
         R::in(0, 1)},
        {"family", F::String, &m.family,
         "tensor names and config.json flavour: mixtral | qwen2_moe | qwen3_moe | olmoe",
         R::one_of("mixtral|qwen2_moe|qwen3_moe|olmoe")},
        {"head_dim", F::Int, &m.head_dim, "per-head width (0: d_model / n_heads)",
         R::in(0, 1 << 14)},
        {"qkv_bias", F::Bool, &m.qkv_bias, "q/k/v projections have biases (qwen2_moe)"},
        {"o_bias", F::Bool, &m.o_bias, "o_proj has a bias"},
        {"qk_norm", F::String, &m.qk_norm,
         "RMSNorm of q and k: none | head (per head, qwen3_moe) | whole (all of q, k; olmoe)",
         R::one_of("none|head|whole")},
        {"clip_qkv", F::Float, &m.clip_qkv, "clamp q, k, v to [-c, c] before RoPE (0: off)",
         R::in(0, 1e6)},
        {"moe_layers", F::String, nullptr,
         "per-layer FFN kind, one 0 (dense) or 1 (MoE) per layer, e.g. 1011 (empty: moe_every)"},
        {"shared_ff", F::Int, &m.shared_ff,
         "gated shared expert width on MoE layers (qwen2_moe; 0: none)", R::in(0, 1 << 20)},
        {"batch_size", F::Int, &c.batch_size, "sequences per step B", R::in(1, 1 << 20)},
        {"max_steps", F::Int, &c.max_steps, "optimizer steps (the schedule's length)",
         R::in(1, 1e9)},
        {"stop_after", F::Int, &c.stop_after, "stop and save after this step (0: max_steps)",
         R::in(0, 1e9)},
        {"lr", F::Double, &c.lr, "peak learning rate", R::in(0, 10)},
        {"min_lr", F::Double, &c.min_lr, "learning rate at the end of the cosine", R::in(0, 10)},
        {"warmup_steps", F::Int, &c.warmup_steps, "linear warmup steps", R::in(0, 1e9)},
        {"lr_decay_steps", F::Int, &c.lr_decay_steps, "cosine decay length (0: max_steps)",
         R::in(0, 1e9)},
        {"weight_decay", F::Double, &c.weight_decay, "AdamW decoupled weight decay", R::in(0, 10)},
        {"beta1", F::Double, &c.beta1, "AdamW beta1", R::in_open_hi(0, 1)},
        {"beta2", F::Double, &c.beta2, "AdamW beta2", R::in_open_hi(0, 1)},
        {"adam_eps", F::Double, &c.adam_eps, "AdamW epsilon", R::in_open(0, 1)},
        {"grad_clip", F::Double, &c.grad_clip, "global gradient-norm clip (0: off)", R::in(0, 1e6)},
        {"eval_every", F::Int, &c.eval_every, "evaluate every N steps (0: only at the end)",
         R::in(0, 1e9)},
        {"eval_batches", F::Int, &c.eval_batches, "validation batches per evaluation",
         R::in(1, 1e6)},
        {"log_every", F::Int, &c.log_every, "metrics.jsonl line every N steps", R::in(1, 1e9)},
        {"save_every", F::Int, &c.save_every, "latest/ checkpoint every N steps (0: each eval)",
         R::in(0, 1e9)},
        {"print_every", F::Int, &c.print_every, "progress line every N steps (not a terminal)",
         R::in(0, 1e9)},
        {"max_time_s", F::Double, &c.max_time_s, "stop when training time exceeds this (0: off)",
         R::in(0, 1e9)},
        {"init_from", F::String, &c.init_from,
         "fine-tune: start from this checkpoint or run folder (its best/)"},
        {"upcycle_from", F::String, &c.upcycle_from,
         "sparse upcycling: experts start as this dense checkpoint's FFNs"},
        {"upcycle_noise", F::Double, &c.upcycle_noise,
         "upcycled expert weights *= 1 + noise * N(0,1) (0: exact copies)", R::in_open_hi(0, 1)},
        {"freeze", F::String, &c.freeze,
         "frozen groups (experts, router, attention, embeddings, norms, non-expert, moe) and "
         "tensor-name globs, comma-separated"},
        {"unknown_symbol", F::String, &c.unknown_symbol,
         "char vocabulary: replace symbols outside it by this one (empty: error)"},
        {"eval_also", F::String, &c.eval_also,
         "a second text whose validation split is evaluated at every evaluation"},
        {"precision", F::String, &c.precision,
         "GEMM operands: fp32 | bf16 (rounded to bf16, fp32 accumulation; docs/precision.md)",
         R::one_of("fp32|bf16")},
        {"router_precision", F::String, &c.router_precision,
         "the MoE router's GEMM: fp32 (default) | bf16 (stability experiment)",
         R::one_of("fp32|bf16")},
        {"seed", F::U64, &c.seed, "seed of init, data order and router noise"},
        {"threads", F::Int, &c.threads, "threads (0: all cores)", R::in(0, 4096)},
    };
}

// block_size is not among them: RoPE has no position parameters, so the context a run trains on
// is its own choice (a Hugging Face folder's max_position_embeddings is often 32k or more; a
// fine-tune on a CPU takes a few hundred). Not given, it comes from the checkpoint.
const std::vector<std::string>& model_shape_keys() {
    static const std::vector<std::string> k = {
        "n_layers", "d_model", "n_heads",      "n_kv_heads", "d_ff",
        "rms_eps",  "rope_theta", "tie_embeddings", "moe_every", "n_experts", "expert_d_ff",
        "activation", "n_shared_experts", "d_ff_shared", "family", "head_dim", "qkv_bias",
        "o_bias", "qk_norm", "clip_qkv", "moe_layers", "shared_ff"};
    return k;
}

bool is_model_key(const std::string& key) {
    TrainConfig c;
    for (auto& f : config_fields(c))
        if (key == f.name) {
            if (!f.ptr) return true;  // activation
            const char* p = (const char*)f.ptr;
            return p >= (const char*)&c.model && p < (const char*)(&c.model + 1);
        }
    return false;
}

static const char* type_name(ConfigField::Type t) {
    switch (t) {
        case ConfigField::Int:
            return "integer";
        case ConfigField::U64:
            return "uint64";
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

// Integer keys are C ints: their range never exceeds what an int holds.
static Range int_field_range(const ConfigField& f) {
    Range r = f.range;
    r.lo = std::max(r.lo, (double)INT32_MIN);
    r.hi = std::min(r.hi, (double)INT32_MAX);
    return r;
}

// moe_layers: "1011" -> {1, 0, 1, 1}; "" -> {} (moe_every decides).
static std::vector<uint8_t> parse_moe_layers(const std::string& s, const std::string& what) {
    if (s.size() > 4096)
        fail("{}: {} entries; at most 4096 layers", what, s.size());
    std::vector<uint8_t> out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] != '0' && s[i] != '1')
            fail("{}: character {} ('{}') is not 0 or 1; give one 0 (dense) or 1 (MoE) per layer, "
                 "e.g. 1011",
                 what, i, s[i] >= 32 && s[i] < 127 ? std::string(1, s[i]) : std::string("?"));
        out.push_back((uint8_t)(s[i] - '0'));
    }
    return out;
}

static std::string moe_layers_str(const std::vector<uint8_t>& v) {
    std::string s;
    for (uint8_t b : v) s += b ? '1' : '0';
    return s;
}

// Every value, from a file or a flag, goes through the checked readers with the key's range.
static void set_from_json(TrainConfig& c, ConfigField& f, const json& v, const std::string& what) {
    if (f.ptr == nullptr && std::string(f.name) == "moe_layers") {
        c.model.moe_layers = parse_moe_layers(checked_str(v, what, f.range), what);
        return;
    }
    if (f.ptr == nullptr) {  // activation: an enum kept as its name
        c.model.moe.activation = activation_from_string(checked_str(v, what, f.range));
        return;
    }
    switch (f.type) {
        case ConfigField::Int:
            *(int*)f.ptr = (int)checked_int(v, what, int_field_range(f));
            break;
        case ConfigField::U64:
            *(uint64_t*)f.ptr = checked_u64(v, what);
            break;
        case ConfigField::Double:
            *(double*)f.ptr = checked_num(v, what, f.range);
            break;
        case ConfigField::Float: {
            double x = checked_num(v, what, f.range);
            if (std::fabs(x) > 3.4e38)
                fail("{}: {} does not fit a float; use a smaller value", what, x);
            *(float*)f.ptr = (float)x;
            break;
        }
        case ConfigField::Bool:
            *(bool*)f.ptr = checked_bool(v, what);
            break;
        case ConfigField::String: {
            std::string s = checked_str(v, what, f.range);
            if (s.find('\0') != std::string::npos)
                fail("{}: contains a NUL character; fix the value", what);
            *(std::string*)f.ptr = s;
            break;
        }
    }
}

void config_apply_json(TrainConfig& c, const json& j, const std::string& where) {
    if (!j.is_object())
        fail("{}: a config must be a JSON object ({{\"key\": value, ...}}); see configs/*.json",
             where);
    auto fields = config_fields(c);
    for (auto& [k, v] : j.items()) {
        if (k == "comment" || k.rfind("_", 0) == 0) continue;  // free-text notes
        ConfigField* f = find_field(fields, k);
        if (!f) fail("{}: unknown config key '{}'; known keys: {}", where, k, known_keys(c));
        set_from_json(c, *f, v, fmt::format("{}: key '{}'", where, k));
    }
}

// Relative paths in a config file are relative to the file's folder (so a config works from any
// working directory). The bundled configs say "data/tinyshakespeare.txt" from configs/: when the
// file's folder has no such path but the working directory does, the latter is kept (older
// configs were written relative to the repository root).
static std::string resolve_data_path(const std::string& config_path, const std::string& data) {
    if (data.empty() || data[0] == '/') return data;
    auto slash = config_path.find_last_of('/');
    std::string dir = slash == std::string::npos ? "." : config_path.substr(0, slash);
    std::string beside = dir + "/" + data;
    if (dir != "." && !file_exists(beside) && file_exists(data)) return data;
    return dir == "." ? data : beside;
}

// JSON text with errors that name `where` (empty, not JSON at byte N); `what` is what it should be.
static json json_from_text(const std::string& text, const std::string& where, const char* what) {
    if (text.empty()) fail("{}: empty file; expected {}", where, what);
    return parse_json_text(text, where, what);
}

json read_json_file(const std::string& path, const char* what) {
    return json_from_text(read_file(path), path, what);
}

static const char* kTrainConfigWhat = "a training config (JSON object, see configs/*.json)";

TrainConfig config_from_text(const std::string& text, const std::string& where) {
    TrainConfig c;
    config_apply_json(c, json_from_text(text, where, kTrainConfigWhat), where);
    return c;
}

TrainConfig config_load(const std::string& path) {
    json j = read_json_file(path, kTrainConfigWhat);
    TrainConfig c;
    config_apply_json(c, j, path);
    if (j.is_object() && j.contains("data")) c.data = resolve_data_path(path, c.data);
    return c;
}

void config_set(TrainConfig& c, const std::string& key_in, const std::string& value) {
    std::string key = key_in;
    for (auto& ch : key)
        if (ch == '-') ch = '_';
    auto fields = config_fields(c);
    ConfigField* f = find_field(fields, key);
    if (!f)
        fail("--{}: unknown option; config keys: {} (see moe train --help)", key_in, known_keys(c));
    const std::string what = "--" + key_in;
    json v;
    switch (f->type) {
        case ConfigField::Int:
            v = parse_int(value, what, int_field_range(*f));
            break;
        case ConfigField::U64:
            v = parse_u64(value, what);
            break;
        case ConfigField::Double:
        case ConfigField::Float:
            v = parse_num(value, what, f->range);
            break;
        case ConfigField::Bool:
            v = parse_bool(value, what);
            break;
        case ConfigField::String:
            v = value;
            break;
    }
    set_from_json(c, *f, v, what);
}

std::string config_keys_help() {
    TrainConfig c;
    json d = config_to_json(c);
    std::string s =
        "Config keys (in the JSON file, or as --key VALUE; --key=VALUE; dashes or "
        "underscores):\n";
    for (auto& f : config_fields(c)) {
        std::string def = d[f.name].is_string() ? d[f.name].get<std::string>() : d[f.name].dump();
        std::string range =
            f.type == ConfigField::Bool  ? "true | false"
            : f.type == ConfigField::U64 ? "integer in [0, 2^64-1]"
            : f.type == ConfigField::String
                ? (f.range.choices ? f.range.describe(false) : std::string("path or text"))
            : f.type == ConfigField::Int ? int_field_range(f).describe(true)
                                         : f.range.describe(false);
        s += fmt::format("  {:<20} {:<8} default {:<24} {}\n  {:<20} {}\n", f.name,
                         type_name(f.type), def, range, "", f.help);
    }
    return s;
}

json config_to_json(const TrainConfig& cin) {
    TrainConfig c = cin;
    json j = json::object();
    for (auto& f : config_fields(c)) {
        if (!f.ptr) {
            j[f.name] = std::string(f.name) == "moe_layers" ? moe_layers_str(c.model.moe_layers)
                                                             : activation_name(c.model.moe.activation);
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
        if (!ok) throw Error("config: " + msg + "; fix the key in the config or its --flag");
    };
    need(c.tokenizer == "char" || c.tokenizer == "sentencepiece" || c.tokenizer == "bpe",
         fmt::format("tokenizer='{}' (char or sentencepiece; bpe comes with --init-from)",
                     c.tokenizer));
    need(c.sp_model_type == "bpe" || c.sp_model_type == "unigram",
         fmt::format("sp_model_type='{}' (bpe or unigram)", c.sp_model_type));
    need(c.val_fraction > 0 && c.val_fraction < 1,
         fmt::format("val_fraction={} (must be in (0, 1))", c.val_fraction));
    need(c.batch_size >= 1, fmt::format("batch_size={} (must be >= 1)", c.batch_size));
    need(c.max_steps >= 1, fmt::format("max_steps={} (must be >= 1)", c.max_steps));
    need(c.stop_after >= 0, fmt::format("stop_after={} (must be >= 0)", c.stop_after));
    need(c.lr >= 0 && c.min_lr >= 0, fmt::format("lr={} min_lr={} (must be >= 0)", c.lr, c.min_lr));
    need(c.min_lr <= c.lr,
         fmt::format("min_lr={} is above lr={} (min_lr must be <= lr)", c.min_lr, c.lr));
    need(std::isfinite(c.lr) && std::isfinite(c.adam_eps) && c.adam_eps > 0,
         fmt::format("lr={} adam_eps={} (adam_eps must be > 0, both finite)", c.lr, c.adam_eps));
    need(c.warmup_steps >= 0, fmt::format("warmup_steps={} (must be >= 0)", c.warmup_steps));
    need(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1,
         fmt::format("beta1={} beta2={} (must be in [0, 1))", c.beta1, c.beta2));
    need(c.grad_clip >= 0, fmt::format("grad_clip={} (must be >= 0)", c.grad_clip));
    need(c.eval_batches >= 1, fmt::format("eval_batches={} (must be >= 1)", c.eval_batches));
    need(c.log_every >= 1, fmt::format("log_every={} (must be >= 1)", c.log_every));
    need(c.eval_every >= 0 && c.save_every >= 0 && c.print_every >= 0,
         "eval_every, save_every and print_every must be >= 0");
    need(c.init_from.empty() || c.upcycle_from.empty(),
         "init_from and upcycle_from are exclusive (upcycle_from already starts from a checkpoint)");
    need(c.upcycle_noise >= 0 && c.upcycle_noise < 1,
         fmt::format("upcycle_noise={} (must be in [0, 1))", c.upcycle_noise));
    const ModelConfig& m = c.model;
    need(m.d_model >= 1 && m.n_heads >= 1 && m.n_layers >= 1 && m.block_size >= 1,
         fmt::format("d_model={} n_heads={} n_layers={} block_size={} (all must be >= 1)",
                     m.d_model, m.n_heads, m.n_layers, m.block_size));
    need(m.head_dim > 0 || m.d_model % m.n_heads == 0,
         fmt::format("n_heads={} does not divide d_model={}", m.n_heads, m.d_model));
    need(m.n_kv_heads >= 1 && m.n_heads % m.n_kv_heads == 0,
         fmt::format("n_kv_heads={} does not divide n_heads={}", m.n_kv_heads, m.n_heads));
    need(m.hd() % 2 == 0,
         fmt::format("head size {}={} must be even (RoPE rotates pairs)",
                     m.head_dim > 0 ? "head_dim" : "d_model/n_heads", m.hd()));
    need(m.moe_every >= 0, fmt::format("moe_every={} (must be >= 0)", m.moe_every));
    need(m.moe_layers.empty() || (int)m.moe_layers.size() == m.n_layers,
         fmt::format("moe_layers has {} entries for n_layers={} (one 0/1 per layer)",
                     m.moe_layers.size(), m.n_layers));
    if (m.moe_layers.empty() ? m.moe_every > 0 : m.any_moe()) {
        need(m.moe.n_experts >= 1,
             fmt::format("n_experts={} (must be >= 1 when moe_every > 0)", m.moe.n_experts));
        if (m.moe.router != "expert-choice")
            need(m.moe.top_k >= 1 && m.moe.top_k <= m.moe.n_experts,
                 fmt::format("top_k={} > n_experts={} (k must be in [1, E])", m.moe.top_k,
                             m.moe.n_experts));
        need(m.moe.d_ff >= 1, fmt::format("expert_d_ff={} (must be >= 1)", m.moe.d_ff));
        need(m.moe.threshold > 0 && m.moe.threshold <= 1,
             fmt::format("threshold={} (top-p: cumulative probability, must be in (0, 1])",
                         m.moe.threshold));
    } else {
        need(m.d_ff >= 1, fmt::format("d_ff={} (must be >= 1 for dense layers)", m.d_ff));
    }
    try {  // the model's and MoE layer's own checks (hierarchical groups, capacity, ...)
        ModelConfig probe = m;
        probe.vocab_size = std::max(probe.vocab_size, 1);
        probe.validate();
    } catch (const Error& e) {
        need(false, e.what());
    }
}

// ---- checkpoint config.json ----

static json mixtral_to_hf(const ModelConfig& m) {
    bool any_moe = false;
    for (int l = 0; l < m.n_layers; l++) any_moe = any_moe || m.is_moe_layer(l);
    json j;
    j["architectures"] = {hf_architecture("mixtral")};
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
        {"threshold", e.threshold},
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


// moe.cpp's own settings of a family checkpoint (the shape is in the family's HF keys).
static json family_moe_cpp(const ModelConfig& m) {
    const MoeConfig& e = m.moe;
    return {
        {"format_version", 1},  {"router", e.router},
        {"dropless", e.dropless}, {"capacity_factor", e.capacity_factor},
        {"priority", e.priority}, {"jitter", e.jitter},
        {"gate_dropout", e.gate_dropout}, {"w_importance", e.w_importance},
        {"w_load", e.w_load},     {"w_switch", e.w_switch},
        {"w_zloss", e.w_zloss},   {"seed", m.seed},
        {"moe_seed", e.seed},
    };
}

// qwen2_moe / qwen3_moe / olmoe: the keys their transformers config classes read, so the folder
// is a real HF checkpoint (the engine and transformers load it), plus "moe_cpp".
static json family_to_hf(const ModelConfig& m) {
    const std::string& fam = m.family;
    json j;
    j["architectures"] = {hf_architecture(fam)};
    j["model_type"] = fam;
    j["vocab_size"] = m.vocab_size;
    j["hidden_size"] = m.d_model;
    j["num_hidden_layers"] = m.n_layers;
    j["num_attention_heads"] = m.n_heads;
    j["num_key_value_heads"] = m.n_kv_heads;
    j["head_dim"] = m.hd();
    j["max_position_embeddings"] = m.block_size;
    j["rms_norm_eps"] = m.rms_eps;
    j["rope_theta"] = m.rope_theta;
    j["rope_scaling"] = nullptr;
    j["tie_word_embeddings"] = m.tie_embeddings;
    j["hidden_act"] = "silu";
    j["torch_dtype"] = "float32";
    j["initializer_range"] = m.init_std;
    j["attention_dropout"] = 0.0;
    j["num_experts"] = m.moe.n_experts;
    j["num_experts_per_tok"] = m.moe.top_k;
    j["norm_topk_prob"] = m.moe.renormalize;
    j["router_aux_loss_coef"] = m.moe.w_switch;
    j["output_router_logits"] = false;
    if (fam == "olmoe") {
        j["intermediate_size"] = m.moe.d_ff;
        j["attention_bias"] = m.qkv_bias;
        j["clip_qkv"] = m.clip_qkv > 0 ? json(m.clip_qkv) : json(nullptr);
    } else {
        j["moe_intermediate_size"] = m.moe.d_ff;
        j["intermediate_size"] = m.d_ff;
        j["decoder_sparse_step"] = 1;
        json dense = json::array();
        for (int l = 0; l < m.n_layers; l++)
            if (!m.is_moe_layer(l)) dense.push_back(l);
        j["mlp_only_layers"] = dense;
        j["use_sliding_window"] = false;
        j["sliding_window"] = nullptr;
        if (fam == "qwen2_moe")
            j["shared_expert_intermediate_size"] = m.shared_ff;
        else
            j["attention_bias"] = m.qkv_bias;
    }
    j["moe_cpp"] = family_moe_cpp(m);
    return j;
}

json model_config_to_hf(const ModelConfig& m) {
    return m.family == "mixtral" ? mixtral_to_hf(m) : family_to_hf(m);
}

static ModelConfig mixtral_from_hf(const json& j, const std::string& where) {
    if (!j.is_object())
        fail("{}: config.json is not a JSON object; the checkpoint is damaged (restore it)", where);
    using R = Range;
    auto i32 = [&](const json& o, const char* k, const Range& r, int def, bool required) -> int {
        return required ? (int)json_int(o, k, where, r) : (int)json_int(o, k, where, r, def);
    };
    auto f32 = [&](const json& o, const char* k, const Range& r, double def) -> float {
        return (float)json_num(o, k, where, r, def);
    };
    ModelConfig m;
    m.d_model = i32(j, "hidden_size", R::in(2, 1 << 16), 0, true);
    int inter = i32(j, "intermediate_size", R::in(1, 1 << 20), 0, true);
    m.n_layers = i32(j, "num_hidden_layers", R::in(1, 1024), 0, true);
    m.n_heads = i32(j, "num_attention_heads", R::in(1, 4096), 0, true);
    m.n_kv_heads = i32(j, "num_key_value_heads", R::in(1, 4096), m.n_heads, false);
    int E = i32(j, "num_local_experts", R::in(0, 1 << 16), 0, false);
    int k = i32(j, "num_experts_per_tok", R::in(0, 1 << 16), 0, false);
    if (E > 0 && k == 0)
        fail(
            "{}: key 'num_experts_per_tok': 0 with num_local_experts={} (expected an integer in "
            "[1, {}]); fix config.json",
            where, E, E);
    if (E == 0 && k != 0)
        fail(
            "{}: key 'num_experts_per_tok': {} but num_local_experts=0 (a dense model records 0); "
            "fix config.json",
            where, k);
    m.vocab_size = i32(j, "vocab_size", R::in(1, 1 << 24), 0, true);
    m.rms_eps = f32(j, "rms_norm_eps", R::in_open(0, 1), 1e-5);
    m.rope_theta = f32(j, "rope_theta", R::in(1, 1e9), 10000.0);
    m.block_size = i32(j, "max_position_embeddings", R::in(1, 1 << 20), 0, true);
    m.tie_embeddings = json_bool(j, "tie_word_embeddings", where, false);
    m.init_std = f32(j, "initializer_range", R::in(0, 10), 0.02);
    json_str(j, "torch_dtype", where, R::one_of("float32"), "float32");
    MoeConfig& e = m.moe;
    e.n_experts = E;
    e.top_k = k > 0 ? k : 1;
    e.d_ff = inter;
    e.w_switch = f32(j, "router_aux_loss_coef", R::in(0, 1e6), 0.0);
    m.moe_every = E > 0 ? 1 : 0;
    m.d_ff = inter;
    if (j.contains("moe_cpp")) {
        const json& o = j["moe_cpp"];
        const std::string w = where + ": moe_cpp";
        if (!o.is_object()) fail("{}: 'moe_cpp' must be an object; fix config.json", where);
        int version = (int)json_int(o, "format_version", w, R::in(1, 1), 1);
        (void)version;
        m.moe_every = (int)json_int(o, "moe_every", w, R::in(0, 1024), m.moe_every);
        m.d_ff = (int)json_int(o, "dense_intermediate_size", w, R::in(1, 1 << 20), m.d_ff);
        e.router = json_str(o, "router", w,
                            R::one_of("softmax|noisy-topk|topk|switch|gshard|expert-choice|"
                                      "hierarchical|top-p"),
                            e.router);
        e.activation = activation_from_string(
            json_str(o, "activation", w, R::one_of("swiglu|gelu|relu"), "swiglu"));
        e.n_shared_experts = (int)json_int(o, "n_shared_experts", w, R::in(0, 64), 0);
        e.d_ff_shared = (int)json_int(o, "shared_intermediate_size", w, R::in(0, 1 << 20), 0);
        e.dropless = json_bool(o, "dropless", w, e.dropless);
        e.capacity_factor =
            (float)json_num(o, "capacity_factor", w, R::in(0, 1000), e.capacity_factor);
        e.priority = json_str(o, "priority", w, R::one_of("token|weight"), e.priority);
        e.temperature =
            (float)json_num(o, "router_temperature", w, R::in_open(0, 1e6), e.temperature);
        e.renormalize = json_bool(o, "renormalize", w, e.renormalize);
        e.score = json_str(o, "score", w, R::one_of("softmax|sigmoid"), e.score);
        e.jitter = (float)json_num(o, "jitter", w, R::in_open_hi(0, 1), 0.0);
        e.gate_dropout = (float)json_num(o, "gate_dropout", w, R::in_open_hi(0, 1), 0.0);
        e.n_groups = (int)json_int(o, "n_groups", w, R::in(0, 1 << 16), 0);
        e.topk_groups = (int)json_int(o, "topk_groups", w, R::in(1, 1 << 16), 1);
        e.threshold = (float)json_num(o, "threshold", w, R::in_open_lo(0, 1), e.threshold);
        e.w_importance = (float)json_num(o, "w_importance", w, R::in(0, 1e6), 0.0);
        e.w_load = (float)json_num(o, "w_load", w, R::in(0, 1e6), 0.0);
        e.w_switch = (float)json_num(o, "w_switch", w, R::in(0, 1e6), e.w_switch);
        e.w_zloss = (float)json_num(o, "w_zloss", w, R::in(0, 1e6), 0.0);
        e.bias_update_rate = (float)json_num(o, "bias_update_rate", w, R::in(0, 1), 0.0);
        if (o.contains("seed")) m.seed = checked_u64(o["seed"], w + ": key 'seed'");
        if (o.contains("moe_seed")) e.seed = checked_u64(o["moe_seed"], w + ": key 'moe_seed'");
    }
    if (m.moe_every > 0 && E <= 0)
        fail("{}: moe_every={} but num_local_experts={}; fix config.json", where, m.moe_every, E);
    e.d_model = m.d_model;
    if (m.d_model <= 0 || m.n_heads <= 0 || m.d_model % m.n_heads != 0)
        fail("{}: num_attention_heads={} does not divide hidden_size={}; fix config.json", where,
             m.n_heads, m.d_model);
    if (m.moe_every > 0 && e.router != "expert-choice" && (e.top_k < 1 || e.top_k > E))
        fail("{}: num_experts_per_tok={} > num_local_experts={}; fix config.json", where, e.top_k,
             E);
    try {
        m.validate();
    } catch (const Error& err) {
        fail("{}: {}; fix config.json", where, err.what());
    }
    return m;
}


// A Hugging Face config.json (any family, with or without moe_cpp) -> ModelConfig through the
// engine's parser (hf_config_from_json: required keys, refused options), mapped onto the model:
// the router is topk with renormalize = norm_topk_prob, dropless, no aux losses unless moe_cpp
// says otherwise.
static ModelConfig family_from_hf(const json& j, const std::string& where) {
    const HfConfig h = hf_config_from_json(j, where);
    ModelConfig m;
    m.family = h.model_type;
    m.vocab_size = h.vocab_size;
    m.d_model = h.hidden_size;
    m.n_layers = h.n_layers;
    m.n_heads = h.n_heads;
    m.n_kv_heads = h.n_kv_heads;
    m.head_dim = (h.hidden_size % h.n_heads == 0 && h.hidden_size / h.n_heads == h.head_dim)
                     ? 0
                     : h.head_dim;
    m.block_size = h.max_positions;
    m.rms_eps = h.rms_eps;
    m.rope_theta = h.rope_theta;
    m.tie_embeddings = h.tie_embeddings;
    m.init_std = (float)json_num(j, "initializer_range", where, Range::in(0, 10), 0.02);
    m.qkv_bias = h.qkv_bias;
    m.o_bias = h.o_bias;
    m.qk_norm = h.qk_norm == HfConfig::QkNorm::per_head ? "head"
                : h.qk_norm == HfConfig::QkNorm::whole  ? "whole"
                                                        : "none";
    m.clip_qkv = h.clip_qkv;
    m.shared_ff = h.shared_ff;
    m.moe_every = 1;
    bool all_moe = true;
    for (uint8_t b : h.moe_layer) all_moe = all_moe && b;
    if (!all_moe) m.moe_layers = h.moe_layer;
    m.d_ff = h.dense_ff > 0 ? h.dense_ff : h.expert_ff;
    MoeConfig& e = m.moe;
    e.n_experts = h.n_experts;
    e.top_k = h.top_k;
    e.d_ff = h.expert_ff;
    e.router = "topk";
    e.renormalize = h.norm_topk_prob;
    e.dropless = true;
    if (j.contains("moe_cpp")) {
        const json& o = j["moe_cpp"];
        const std::string w = where + ": moe_cpp";
        if (!o.is_object()) fail("{}: 'moe_cpp' must be an object; fix config.json", where);
        json_int(o, "format_version", w, Range::in(1, 1), 1);
        e.router = json_str(o, "router", w, Range::one_of("topk"), e.router);
        e.dropless = json_bool(o, "dropless", w, e.dropless);
        e.capacity_factor =
            (float)json_num(o, "capacity_factor", w, Range::in(0, 1000), e.capacity_factor);
        e.priority = json_str(o, "priority", w, Range::one_of("token|weight"), e.priority);
        e.jitter = (float)json_num(o, "jitter", w, Range::in_open_hi(0, 1), 0.0);
        e.gate_dropout = (float)json_num(o, "gate_dropout", w, Range::in_open_hi(0, 1), 0.0);
        e.w_importance = (float)json_num(o, "w_importance", w, Range::in(0, 1e6), 0.0);
        e.w_load = (float)json_num(o, "w_load", w, Range::in(0, 1e6), 0.0);
        e.w_switch = (float)json_num(o, "w_switch", w, Range::in(0, 1e6), 0.0);
        e.w_zloss = (float)json_num(o, "w_zloss", w, Range::in(0, 1e6), 0.0);
        if (o.contains("seed")) m.seed = checked_u64(o["seed"], w + ": key 'seed'");
        if (o.contains("moe_seed")) e.seed = checked_u64(o["moe_seed"], w + ": key 'moe_seed'");
    }
    e.d_model = m.d_model;
    try {
        m.validate();
    } catch (const Error& err) {
        fail("{}: {}; fix config.json", where, err.what());
    }
    return m;
}

// moe.cpp's Mixtral checkpoints (config.json with "moe_cpp") keep their reader; every other
// config.json (a downloaded HF folder, a family checkpoint) goes through the engine's parser.
ModelConfig model_config_from_hf(const json& j, const std::string& where) {
    if (!j.is_object())
        fail("{}: config.json is not a JSON object; the checkpoint is damaged (restore it)", where);
    const bool ours = j.contains("moe_cpp");
    const bool mixtral = !j.contains("model_type") ||
                         (j["model_type"].is_string() && j["model_type"] == "mixtral");
    if (ours && mixtral) return mixtral_from_hf(j, where);
    if (!ours && !j.contains("model_type"))
        fail("{}: neither a moe.cpp checkpoint (no 'moe_cpp' key) nor a Hugging Face config (no "
             "'model_type' key); restore config.json",
             where);
    return family_from_hf(j, where);
}

ModelConfig model_config_from_text(const std::string& text, const std::string& where) {
    return model_config_from_hf(
        json_from_text(text, where, "a checkpoint's config.json (restore it from the run)"), where);
}

}  // namespace moe
