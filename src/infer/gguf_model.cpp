// GGUF files in the engine: metadata -> HfConfig, tensors -> zero-copy views under their HF names
// (a merged expert tensor [E, rows, cols] gives E views, one per expert). The conventions are
// llama.cpp's (convert_hf_to_gguf.py, src/llama-model.cpp): arch "llama" for Mixtral with its q/k
// rows reordered for pairwise RoPE, "qwen2moe", "qwen3moe", "olmoe".
#include "infer/gguf_model.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "infer/weight_store_impl.h"
#include "moe/error.h"
#include "moe/file_io.h"

namespace moe {

const char* gguf_arch_of(const std::string& mt) {
    if (mt == "mixtral") return "llama";
    if (mt == "qwen2_moe") return "qwen2moe";
    if (mt == "qwen3_moe") return "qwen3moe";
    if (mt == "olmoe") return "olmoe";
    fail("model_type '{}' has no GGUF architecture in moe.cpp; give mixtral, qwen2_moe, qwen3_moe "
         "or olmoe",
         mt);
}

std::vector<GgufSlot> gguf_layout(const HfConfig& c) {
    std::vector<GgufSlot> out;
    const bool llama = c.model_type == "mixtral";
    for (auto& [hf, shape] : hf_tensor_shapes(c)) {
        GgufSlot s;
        s.hf = hf;
        s.hf_shape = shape;
        if (hf == "model.embed_tokens.weight") s.gguf = "token_embd.weight";
        else if (hf == "model.norm.weight") s.gguf = "output_norm.weight";
        else if (hf == "lm_head.weight") s.gguf = "output.weight";
        else {
            // model.layers.L.<rest>
            const size_t a = std::strlen("model.layers."), b = hf.find('.', a);
            const std::string L = hf.substr(a, b - a), rest = hf.substr(b + 1);
            const std::string blk = "blk." + L + ".";
            const auto ends = [&](const char* suf) {
                const size_t n = std::strlen(suf);
                return rest.size() >= n && rest.compare(rest.size() - n, n, suf) == 0;
            };
            const std::string kind = ends(".bias") ? "bias" : "weight";
            static const std::pair<const char*, const char*> plain[] = {
                {"input_layernorm.", "attn_norm"},
                {"post_attention_layernorm.", "ffn_norm"},
                {"self_attn.q_proj.", "attn_q"},
                {"self_attn.k_proj.", "attn_k"},
                {"self_attn.v_proj.", "attn_v"},
                {"self_attn.o_proj.", "attn_output"},
                {"self_attn.q_norm.", "attn_q_norm"},
                {"self_attn.k_norm.", "attn_k_norm"},
                {"block_sparse_moe.gate.", "ffn_gate_inp"},
                {"mlp.gate.", "ffn_gate_inp"},
                {"mlp.shared_expert.gate_proj.", "ffn_gate_shexp"},
                {"mlp.shared_expert.up_proj.", "ffn_up_shexp"},
                {"mlp.shared_expert.down_proj.", "ffn_down_shexp"},
                {"mlp.shared_expert_gate.", "ffn_gate_inp_shexp"},
                {"mlp.gate_proj.", "ffn_gate"},
                {"mlp.up_proj.", "ffn_up"},
                {"mlp.down_proj.", "ffn_down"},
            };
            for (auto& [from, to] : plain)
                if (rest.rfind(from, 0) == 0 && rest.size() == std::strlen(from) + kind.size()) {
                    s.gguf = blk + to + "." + kind;
                    break;
                }
            const size_t ex = rest.find("experts.");
            if (s.gguf.empty() && ex != std::string::npos) {
                // ...experts.J.{w1,w3,w2 | gate_proj,up_proj,down_proj}.weight
                const size_t j0 = ex + 8, j1 = rest.find('.', j0);
                s.expert = std::stoi(rest.substr(j0, j1 - j0));
                s.n_experts = c.n_experts;
                const std::string w = rest.substr(j1 + 1);
                const char* m = (w == "w1.weight" || w == "gate_proj.weight")  ? "ffn_gate_exps"
                                : (w == "w3.weight" || w == "up_proj.weight")  ? "ffn_up_exps"
                                : (w == "w2.weight" || w == "down_proj.weight") ? "ffn_down_exps"
                                                                                : nullptr;
                MOE_CHECK(m, "no GGUF name for {}", hf);
                s.gguf = blk + m + ".weight";
            }
            MOE_CHECK(!s.gguf.empty(), "no GGUF name for {}", hf);
            if (llama && (rest == "self_attn.q_proj.weight" || rest == "self_attn.q_proj.bias"))
                s.permute_heads = c.n_heads;
            if (llama && (rest == "self_attn.k_proj.weight" || rest == "self_attn.k_proj.bias"))
                s.permute_heads = c.n_kv_heads;
        }
        out.push_back(std::move(s));
    }
    return out;
}

std::vector<int64_t> gguf_ne(const GgufSlot& s) {
    if (s.hf_shape.size() == 1) return {s.hf_shape[0]};
    if (s.hf_shape[0] == 1 && s.gguf.find("_inp_shexp") != std::string::npos)
        return {s.hf_shape[1]};  // the shared-expert gate [1, d] is a vector in llama.cpp
    if (s.expert >= 0) return {s.hf_shape[1], s.hf_shape[0], s.n_experts};
    return {s.hf_shape[1], s.hf_shape[0]};
}

void gguf_permute_rows(const uint8_t* src, uint8_t* dst, int64_t n_rows, size_t row_bytes,
                       int n_heads, bool to_gguf) {
    const int64_t hd = n_rows / n_heads, half = hd / 2;
    MOE_CHECK(hd * n_heads == n_rows && hd % 2 == 0, "{} rows in {} heads", n_rows, n_heads);
    for (int64_t h = 0; h < n_heads; h++)
        for (int64_t i = 0; i < half; i++)
            for (int64_t s = 0; s < 2; s++) {
                const int64_t g = h * hd + 2 * i + s, f = h * hd + s * half + i;
                const int64_t from = to_gguf ? f : g, to = to_gguf ? g : f;
                std::memcpy(dst + (size_t)to * row_bytes, src + (size_t)from * row_bytes,
                            row_bytes);
            }
}

HfConfig hf_config_from_gguf(const GgufFile& f) {
    const std::string& where = f.path();
    const std::string arch = f.get_str("general.architecture");
    HfConfig c;
    if (arch == "llama") c.model_type = "mixtral";
    else if (arch == "qwen2moe") c.model_type = "qwen2_moe";
    else if (arch == "qwen3moe") c.model_type = "qwen3_moe";
    else if (arch == "olmoe") c.model_type = "olmoe";
    else
        fail("{}: key 'general.architecture': '{}' is not supported; moe.cpp runs GGUF "
             "architectures llama (Mixtral: with experts), qwen2moe, qwen3moe and olmoe",
             where, arch);
    const std::string k = arch + ".";
    const GgufTensor* embd = f.tensor("token_embd.weight");
    if (!embd || embd->ne.size() != 2)
        fail("{}: tensor token_embd.weight is missing or not 2-D; the file is not a complete "
             "model",
             where);
    c.hidden_size = (int)f.get_int(k + "embedding_length", 1, 1 << 17);
    c.vocab_size = (int)f.get_int(k + "vocab_size", 1, 1 << 24, embd->ne[1]);
    if (c.vocab_size != embd->ne[1] || embd->ne[0] != c.hidden_size)
        fail("{}: tensor token_embd.weight has ne [{}, {}] but the metadata says embedding_length "
             "{} and vocab_size {}; the metadata and the tensors do not match",
             where, embd->ne[0], embd->ne[1], c.hidden_size, c.vocab_size);
    c.n_layers = (int)f.get_int(k + "block_count", 1, 4096);
    c.n_heads = (int)f.get_int(k + "attention.head_count", 1, 4096);
    c.n_kv_heads = (int)f.get_int(k + "attention.head_count_kv", 1, 4096, c.n_heads);
    c.max_positions = (int)f.get_int(k + "context_length", 1, 1 << 24);
    c.rms_eps = (float)f.get_num(k + "attention.layer_norm_rms_epsilon", 1e-12, 1);
    c.rope_theta = (float)f.get_num(k + "rope.freq_base", 1, 1e12, 10000.0);
    const std::string scaling = f.get_str(k + "rope.scaling.type", "none");
    if (scaling != "none")
        fail("{}: key '{}rope.scaling.type': '{}' is not supported; moe.cpp implements plain RoPE",
             where, k, scaling);
    if (c.hidden_size % c.n_heads != 0 && !f.find(k + "attention.key_length"))
        fail("{}: key '{}attention.head_count': {} does not divide embedding_length {}; the file "
             "is damaged",
             where, k, c.n_heads, c.hidden_size);
    c.head_dim = (int)f.get_int(k + "attention.key_length", 2, 1 << 14,
                                c.hidden_size / std::max(c.n_heads, 1));
    const int64_t vlen = f.get_int(k + "attention.value_length", 1, 1 << 14, c.head_dim);
    if (vlen != c.head_dim)
        fail("{}: key '{}attention.value_length': {} differs from key_length {}; moe.cpp needs "
             "equal key and value head sizes",
             where, k, vlen, c.head_dim);
    const int64_t rope_dim = f.get_int(k + "rope.dimension_count", 1, 1 << 14, c.head_dim);
    if (rope_dim != c.head_dim)
        fail("{}: key '{}rope.dimension_count': {} is not the head size {}; partial rotary "
             "embeddings are not implemented",
             where, k, rope_dim, c.head_dim);
    if (c.head_dim % 2 != 0)
        fail("{}: key '{}attention.key_length': {} is odd; rotary embeddings need an even head "
             "size",
             where, k, c.head_dim);
    if (c.n_heads % c.n_kv_heads != 0)
        fail("{}: key '{}attention.head_count_kv': {} does not divide head_count {}; the file is "
             "damaged",
             where, k, c.n_kv_heads, c.n_heads);
    c.n_experts = (int)f.get_int(k + "expert_count", 0, 1 << 16, 0);
    if (c.n_experts < 1)
        fail("{}: key '{}expert_count' is missing or 0: a dense model; moe.cpp runs mixture-of-"
             "experts models only",
             where, k);
    c.top_k = (int)f.get_int(k + "expert_used_count", 1, c.n_experts);
    const int ff = (int)f.get_int(k + "feed_forward_length", 1, 1 << 20, 0);
    if (arch == "llama") {
        c.expert_ff = (int)f.get_int(k + "expert_feed_forward_length", 1, 1 << 20, ff);
    } else {
        c.expert_ff = (int)f.get_int(k + "expert_feed_forward_length", 1, 1 << 20, 0);
        c.dense_ff = ff;
    }
    if (c.expert_ff < 1)
        fail("{}: key '{}expert_feed_forward_length' is missing; the file lacks metadata its "
             "architecture needs",
             where, k);
    if (arch == "qwen2moe")
        c.shared_ff = (int)f.get_int(k + "expert_shared_feed_forward_length", 1, 1 << 20);
    // Renormalisation of the top-k weights: what llama.cpp's graph does for the arch, unless the
    // file says otherwise (expert_weights_norm, a key of newer llama.cpp).
    c.norm_topk_prob = f.get_bool(k + "expert_weights_norm",
                                  arch == "llama" || arch == "qwen3moe");
    c.clip_qkv = (float)f.get_num(k + "attention.clamp_kqv", 0, 1e30, 0.0);
    if (c.clip_qkv > 0 && arch != "olmoe")
        fail("{}: key '{}attention.clamp_kqv' is only implemented for olmoe", where, k);
    if (arch == "qwen3moe") c.qk_norm = HfConfig::QkNorm::per_head;
    if (arch == "olmoe") c.qk_norm = HfConfig::QkNorm::whole;
    // What the tensors say: dense layers, biases, a tied head.
    c.moe_layer.assign(c.n_layers, 0);
    for (int l = 0; l < c.n_layers; l++) {
        const std::string b = "blk." + std::to_string(l) + ".";
        c.moe_layer[l] = f.tensor(b + "ffn_gate_inp.weight") != nullptr;
        if (!c.moe_layer[l] && (arch == "llama" || c.dense_ff < 1))
            fail("{}: layer {} has no tensor {}ffn_gate_inp.weight (a dense layer) and the "
                 "metadata gives no feed_forward_length for it; the file is not a complete model",
                 where, l, b);
    }
    c.qkv_bias = f.tensor("blk.0.attn_q.bias") != nullptr;
    c.o_bias = f.tensor("blk.0.attn_output.bias") != nullptr;
    if (arch == "qwen2moe" && !c.qkv_bias)
        fail("{}: tensor blk.0.attn_q.bias is missing; qwen2moe attention has q/k/v biases", where);
    if (c.o_bias && !c.qkv_bias)
        fail("{}: tensor blk.0.attn_output.bias without blk.0.attn_q.bias; moe.cpp's families "
             "have both or neither",
             where);
    c.tie_embeddings = f.tensor("output.weight") == nullptr;
    const int V = c.vocab_size;
    c.bos_token_id = (int)f.get_int("tokenizer.ggml.bos_token_id", -1, V - 1, -1);
    const int eos = (int)f.get_int("tokenizer.ggml.eos_token_id", -1, V - 1, -1);
    if (eos >= 0) c.eos_token_ids.push_back(eos);
    const int eot = (int)f.get_int("tokenizer.ggml.eot_token_id", -1, V - 1, -1);
    if (eot >= 0 && eot != eos) c.eos_token_ids.push_back(eot);
    return c;
}

static const char* st_dtype(GgmlType t) {
    switch (t) {
        case GgmlType::f32: return "F32";
        case GgmlType::f16: return "F16";
        case GgmlType::bf16: return "BF16";
        case GgmlType::q8_0: return "Q8_0";
        case GgmlType::q4_0: return "Q4_0";
    }
    return "?";
}

static std::string ne_str(const std::vector<int64_t>& ne) {
    std::string r = "[";
    for (size_t i = 0; i < ne.size(); i++) r += (i ? ", " : "") + std::to_string(ne[i]);
    return r + "]";
}

std::unique_ptr<WeightStore> WeightStore::from_gguf(const std::string& path, HfConfig* cfg,
                                                    bool model_weights) {
    return from_gguf(std::make_shared<GgufFile>(GgufFile::open(path, model_weights)), cfg);
}

std::unique_ptr<WeightStore> WeightStore::from_gguf(std::shared_ptr<const GgufFile> file,
                                                    HfConfig* cfg) {
    const GgufFile& f = *file;
    const std::string& path = f.path();
    *cfg = hf_config_from_gguf(f);
    const HfConfig& c = *cfg;
    const std::vector<GgufSlot> layout = gguf_layout(c);

    std::unique_ptr<WeightStore> ws(new WeightStore());
    Impl& m = *ws->impl_;
    m.dir = path;
    m.keep.push_back(file);
    Mapping fm;
    fm.path = path;
    fm.base = f.base();
    fm.size = (size_t)f.file_size();
    fm.data_start = f.data_offset();
    fm.owned = false;
    m.maps.push_back(fm);

    // Check every tensor against the metadata before anything is used; tally the permuted bytes.
    std::set<std::string> wanted;
    uint64_t permuted_bytes = 0;
    for (const GgufSlot& s : layout) {
        wanted.insert(s.gguf);
        const GgufTensor* t = f.tensor(s.gguf);
        if (!t)
            fail("{}: tensor {} is missing; the metadata ({} layers, {} experts, ...) implies it",
                 path, s.gguf, c.n_layers, c.n_experts);
        const std::vector<int64_t> ne = gguf_ne(s);
        std::vector<int64_t> got = t->ne;
        // A [d, 1] shared-expert gate is the same as [d] (llama.cpp accepts both).
        if (ne.size() == 1 && got.size() == 2 && got[1] == 1) got.pop_back();
        if (got != ne)
            fail("{}: tensor {}: ne {} but the metadata implies {}; the metadata and the tensors "
                 "do not match (e.g. expert_count, feed_forward_length)",
                 path, s.gguf, ne_str(t->ne), ne_str(ne));
        const bool vec = s.hf_shape.size() == 1 || s.gguf.find("_inp_shexp") != std::string::npos;
        if (vec && t->type != GgmlType::f32 && t->type != GgmlType::f16 &&
            t->type != GgmlType::bf16)
            fail("{}: tensor {}: a vector stored as {}; give F32, F16 or BF16", path, s.gguf,
                 ggml_type_name(t->type));
        if (s.permute_heads > 0) permuted_bytes += t->bytes;
    }
    for (const GgufTensor& t : f.tensors())
        if (!wanted.count(t.name))
            fail("{}: tensor {} is not part of a {} model as the metadata describes it; moe.cpp "
                 "would ignore it and compute something else",
                 path, t.name, f.get_str("general.architecture"));

    // Arch llama: q and k back into HF's row order, in anonymous memory (only attention's q and
    // k: everything else stays a view into the file).
    uint8_t* perm = nullptr;
    if (permuted_bytes > 0) {
        check_fits_in_memory((double)permuted_bytes, path + ": q/k rows in HF order",
                             "free memory");
        void* p = mmap(nullptr, permuted_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fail("{}: cannot map {} bytes for q/k", path, permuted_bytes);
        perm = (uint8_t*)p;
        Mapping pm;
        pm.path = path;
        pm.base = perm;
        pm.size = permuted_bytes;
        m.maps.push_back(pm);
    }
    uint64_t perm_off = 0;
    for (const GgufSlot& s : layout) {
        const GgufTensor* t = f.tensor(s.gguf);
        StHeaderEntry e;
        e.dtype = st_dtype(t->type);
        e.shape = Shape(s.hf_shape);
        if (s.permute_heads > 0) {
            const int64_t rows = s.hf_shape.size() == 1 ? s.hf_shape[0] : s.hf_shape[0];
            const size_t rb = (size_t)(t->bytes / (uint64_t)rows);
            gguf_permute_rows(t->data, perm + perm_off, rows, rb, s.permute_heads, false);
            e.begin = perm_off;
            e.end = perm_off + t->bytes;
            perm_off += t->bytes;
            m.tensors[s.hf] = {1, e};
            continue;
        }
        const uint64_t slice = s.expert >= 0 ? t->bytes / (uint64_t)s.n_experts : t->bytes;
        e.begin = t->offset + (s.expert >= 0 ? (uint64_t)s.expert * slice : 0);
        e.end = e.begin + slice;
        m.tensors[s.hf] = {0, e};
    }
    // Q8_0 / Q4_0 matrices in memory of our own into the split layout
    // (WeightStore::Impl::split_blocks): the permuted q/k always, the rest when the file is a
    // huge-page copy (a mapped file is the page cache's and is read in GGML's blocks).
    if (perm) m.split_blocks(1);
    if (f.is_private_copy()) {
        f.set_writable(true);
        m.split_blocks(0);
        f.set_writable(false);
    }
    return ws;
}

}  // namespace moe
