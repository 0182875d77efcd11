// Fine-tuning helpers (include/moe/finetune.h): freeze specs, sparse upcycling, unknown symbols.
#include "moe/finetune.h"

#include <cstring>
#include <set>

#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/rng.h"
#include "moe/safetensors.h"

namespace moe {

// ---- freeze ----

const std::vector<std::string>& freeze_group_names() {
    static const std::vector<std::string> g = {"experts",    "router", "attention", "embeddings",
                                               "norms",      "non-expert", "moe"};
    return g;
}

static bool contains(const std::string& s, const char* part) {
    return s.find(part) != std::string::npos;
}

// Routed and shared experts are both "experts"; the router is the gate (and its noise/group
// matrices). A dense model's mlp.* is neither: it belongs to non-expert.
// The other families (qwen2_moe, qwen3_moe, olmoe) name the block mlp: mlp.experts.J.*,
// qwen2_moe's gated shared expert mlp.shared_expert.* and its gate mlp.shared_expert_gate (an
// expert part: it scales the shared expert), the router mlp.gate.weight.
static bool is_expert(const std::string& t) {
    return contains(t, ".block_sparse_moe.experts.") ||
           contains(t, ".block_sparse_moe.shared_experts.") || contains(t, ".mlp.experts.") ||
           contains(t, ".mlp.shared_expert.") || contains(t, ".mlp.shared_expert_gate.");
}
static bool is_router(const std::string& t) {
    return contains(t, ".block_sparse_moe.gate.") || contains(t, ".mlp.gate.");
}

bool in_freeze_group(const std::string& group, const std::string& t) {
    if (group == "experts") return is_expert(t);
    if (group == "router") return is_router(t);
    if (group == "attention") return contains(t, ".self_attn.");
    if (group == "embeddings") return t == "model.embed_tokens.weight" || t == "lm_head.weight";
    if (group == "norms") {
        const std::string e = "norm.weight";
        return t.size() >= e.size() && t.compare(t.size() - e.size(), e.size(), e) == 0;
    }
    if (group == "non-expert") return !is_expert(t) && !is_router(t);
    if (group == "moe") return is_expert(t) || is_router(t);
    fail("unknown freeze group '{}'", group);
}

bool glob_match(const std::string& p, const std::string& s) {
    // Iterative matcher with one backtrack point (the last '*'): linear in practice.
    size_t i = 0, j = 0, star = std::string::npos, mark = 0;
    while (j < s.size()) {
        if (i < p.size() && (p[i] == '?' || p[i] == s[j])) {
            i++, j++;
        } else if (i < p.size() && p[i] == '*') {
            star = i++;
            mark = j;
        } else if (star != std::string::npos) {
            i = star + 1;
            j = ++mark;
        } else {
            return false;
        }
    }
    while (i < p.size() && p[i] == '*') i++;
    return i == p.size();
}

static std::string group_list() {
    std::string s;
    for (auto& g : freeze_group_names()) s += (s.empty() ? "" : ", ") + g;
    return s;
}

std::vector<uint8_t> resolve_freeze(const std::vector<ParamSpec>& params, const std::string& spec,
                                    const std::string& where) {
    std::vector<uint8_t> frozen(params.size(), 0);
    size_t start = 0;
    while (start <= spec.size()) {
        size_t comma = spec.find(',', start);
        if (comma == std::string::npos) comma = spec.size();
        std::string item = spec.substr(start, comma - start);
        start = comma + 1;
        while (!item.empty() && item.front() == ' ') item.erase(item.begin());
        while (!item.empty() && item.back() == ' ') item.pop_back();
        if (item.empty()) continue;
        const bool glob = item.find_first_of(".*?") != std::string::npos;
        if (!glob) {
            bool known = false;
            for (auto& g : freeze_group_names()) known = known || g == item;
            if (!known)
                fail(
                    "{}: unknown group '{}'; groups: {}, or a tensor-name glob such as "
                    "model.layers.*.self_attn.*",
                    where, item, group_list());
        }
        int hits = 0;
        for (size_t i = 0; i < params.size(); i++)
            if (glob ? glob_match(item, params[i].name) : in_freeze_group(item, params[i].name)) {
                frozen[i] = 1;
                hits++;
            }
        if (hits == 0)
            fail(
                "{}: '{}' matches no tensor of this model; groups: {}, or a glob over the tensor "
                "names (e.g. model.layers.*.self_attn.*, model.layers.0.*)",
                where, item, group_list());
    }
    size_t n_frozen = 0;
    for (uint8_t f : frozen) n_frozen += f;
    if (!params.empty() && n_frozen == params.size())
        fail("{}: '{}' freezes every tensor ({} of {}); leave something to train", where, spec,
             n_frozen, params.size());
    return frozen;
}

// ---- sparse upcycling ----

int upcycle_params(Model& model, const std::string& dense_dir, float noise, uint64_t seed) {
    const std::string path = dense_dir + "/model.safetensors";
    ModelConfig dense = load_model_config(dense_dir);
    const ModelConfig& mc = model.config();
    if (mc.family != "mixtral")
        fail("upcycle_from {}: the MoE config's family is {}; upcycling makes Mixtral-family "
             "models (family mixtral)",
             dense_dir, mc.family);
    for (int l = 0; l < dense.n_layers; l++)
        if (dense.is_moe_layer(l))
            fail("upcycle_from {}: layer {} is already an MoE layer; upcycling starts from a dense "
                 "checkpoint (moe_every 0)",
                 dense_dir, l);
    if (dense.n_layers != mc.n_layers)
        fail("upcycle_from {}: the dense model has {} layers, the MoE config n_layers={}; they "
             "must match",
             dense_dir, dense.n_layers, mc.n_layers);
    if (dense.tie_embeddings != mc.tie_embeddings)
        fail("upcycle_from {}: tie_embeddings is {} there and {} in the config; they must match",
             dense_dir, dense.tie_embeddings, mc.tie_embeddings);
    SafetensorsReader r(path);
    auto take = [&](const std::string& src, const ParamSpec& dst) -> const StTensor& {
        if (!r.has(src)) fail("{}: missing tensor {} (needed for {})", path, src, dst.name);
        const StTensor& t = r.get(src);
        if (!(t.shape == dst.shape))
            fail(
                "upcycle_from: {} is {} in {} but the MoE model's {} is {}; {}",
                src, t.shape.str(), path, dst.name, dst.shape.str(),
                contains(dst.name, ".experts.")
                    ? "expert_d_ff must equal the dense d_ff (slicing is not supported)"
                    : "the shape keys other than the MoE ones must match the dense checkpoint");
        return t;
    };
    float* P = model.param_data();
    int copies = 0;
    for (const ParamSpec& s : model.params()) {
        const std::string& n = s.name;
        float* dst = P + s.offset;
        if (is_router(n) || contains(n, ".block_sparse_moe.shared_experts.")) continue;  // fresh
        if (!contains(n, ".block_sparse_moe.experts.")) {
            const StTensor& t = take(n, s);
            std::memcpy(dst, t.data.data(), sizeof(float) * t.data.size());
            continue;
        }
        // model.layers.L.block_sparse_moe.experts.J.wX.weight
        int layer = -1, expert = -1;
        char w[8] = {0};
        if (std::sscanf(n.c_str(), "model.layers.%d.block_sparse_moe.experts.%d.%2s", &layer,
                        &expert, w) != 3)
            fail("upcycle_from: cannot parse tensor name {}", n);
        const char* src_kind = !std::strcmp(w, "w1")   ? "gate_proj"
                               : !std::strcmp(w, "w3") ? "up_proj"
                                                       : "down_proj";
        if (mc.moe.activation != Activation::swiglu)
            fail("upcycle_from: the dense FFN is SwiGLU; the MoE config's activation must be swiglu");
        const StTensor& t =
            take(fmt::format("model.layers.{}.mlp.{}.weight", layer, src_kind), s);
        std::memcpy(dst, t.data.data(), sizeof(float) * t.data.size());
        if (noise > 0.f) {
            Rng rng(seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(layer * 1024 + expert + 1)) ^
                    (uint64_t)(w[1] * 0x100000001b3ULL));
            for (int64_t i = 0; i < s.shape.numel(); i++) dst[i] *= 1.f + noise * rng.normal();
        }
        if (w[1] == '1') copies++;
    }
    // Every dense tensor must have a place: an extra one means the shapes differ in kind.
    std::set<std::string> known;
    for (const ParamSpec& s : model.params()) known.insert(s.name);
    for (const std::string& n : r.names()) {
        if (known.count(n)) continue;
        int layer = -1;
        if (contains(n, ".mlp.") && std::sscanf(n.c_str(), "model.layers.%d.", &layer) == 1 &&
            mc.is_moe_layer(layer))
            continue;  // the dense FFN that became experts
        fail("upcycle_from: {} has tensor {}, which the MoE model has no place for", path, n);
    }
    return copies;
}

// ---- unknown symbols ----

std::string map_unknown_symbols(const std::string& text, const Tokenizer& tok,
                                const std::string& replacement, const std::string& where,
                                int64_t* n_replaced) {
    if (n_replaced) *n_replaced = 0;
    if (tok.kind() != "char") return text;
    std::set<std::string> vocab;
    for (int i = 0; i < tok.vocab_size(); i++) vocab.insert(tok.piece(i));
    if (!replacement.empty() && !vocab.count(replacement))
        fail("unknown_symbol: {} is not in the character vocabulary ({} symbols); choose one of "
             "its symbols (e.g. ' ')",
             show_symbol(replacement), vocab.size());
    bool byte_known[256] = {};  // single-byte symbols: a table, not a set lookup per character
    for (auto& v : vocab)
        if (v.size() == 1) byte_known[(unsigned char)v[0]] = true;
    auto known = [&](size_t i, size_t len) {
        return len == 1 ? byte_known[(unsigned char)text[i]] : vocab.count(text.substr(i, len)) > 0;
    };
    std::string out;
    out.reserve(text.size());
    int64_t line = 1, n = 0;
    for (size_t i = 0; i < text.size();) {
        size_t len = utf8_symbol_len(text, i);
        if (known(i, len)) {
            out.append(text, i, len);
        } else if (replacement.empty()) {
            const std::string sym = text.substr(i, len);
            std::set<std::string> all;  // every unknown symbol, so one error tells the whole story
            for (size_t k = 0; k < text.size();) {
                size_t m = utf8_symbol_len(text, k);
                if (!known(k, m)) all.insert(show_symbol(text.substr(k, m)));
                k += m;
            }
            std::string list;
            for (auto& a : all) list += (list.empty() ? "" : " ") + a;
            fail(
                "{}: symbol {} at byte {} (line {}) is not in the checkpoint's character "
                "vocabulary ({} symbols; unknown here: {}); map them to a vocabulary symbol with "
                "--unknown-symbol SYMBOL, or clean the file",
                where, show_symbol(sym), i, line, vocab.size(), list);
        } else {
            out += replacement;
            n++;
        }
        if (text[i] == '\n') line++;
        i += len;
    }
    if (n_replaced) *n_replaced = n;
    return out;
}

}  // namespace moe
