// `moe convert --to gguf` (include via src/infer/gguf_model.h): an HF folder of the four families,
// a moe.cpp checkpoint (Mixtral family, char or SentencePiece tokenizer) or a .gguf, written as
// the GGUF llama.cpp reads for the family: its hyper-parameter keys, its tensor names (merged 3-D
// expert tensors, q/k rows reordered for arch llama), its vocabulary. docs/formats.md, "GGUF".
#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "infer/gguf_model.h"
#include "kernels/q8_gemm.h"
#include "kernels/typed_gemm.h"
#include "moe/checked.h"
#include "moe/checkpoint.h"
#include "moe/config.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/gguf.h"
#include "moe/hf_model.h"
#include "moe/tokenizer.h"

namespace moe {

using json = nlohmann::json;

namespace {
struct GgufExportOptions {
    std::string src, out;
};
}  // namespace

namespace {

const char* kSpace = "\xe2\x96\x81";

// llama.cpp's general.file_type (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q4_0, MOSTLY_Q8_0,
// MOSTLY_BF16).
uint32_t file_type(GgmlType t) {
    switch (t) {
        case GgmlType::f32: return 0;
        case GgmlType::f16: return 1;
        case GgmlType::q4_0: return 2;
        case GgmlType::q8_0: return 7;
        case GgmlType::bf16: return 32;
    }
    return 0;
}

// A moe.cpp checkpoint of the Mixtral family: only what Mixtral itself computes can go to a
// llama-arch GGUF (softmax top-k renormalised, SwiGLU experts in every layer, no shared expert).
void check_mixtral_checkpoint(const json& j, const std::string& where) {
    const json& o = j["moe_cpp"];
    auto bad = [&](const char* key, const std::string& val, const char* need) {
        fail("{}: moe_cpp '{}' is {}; a llama-arch GGUF (Mixtral) holds only {} (train with "
             "those settings to export)",
             where, key, val, need);
    };
    if (o.value("router", "topk") != "topk") bad("router", o.value("router", ""), "router topk");
    if (o.value("activation", "swiglu") != "swiglu")
        bad("activation", o.value("activation", ""), "swiglu experts");
    if (o.value("moe_every", 1) != 1)
        bad("moe_every", std::to_string(o.value("moe_every", 0)), "an MoE block in every layer");
    if (o.value("n_shared_experts", 0) != 0)
        bad("n_shared_experts", std::to_string(o.value("n_shared_experts", 0)),
            "routed experts (no shared expert)");
    if (!o.value("renormalize", true)) bad("renormalize", "false", "renormalised top-k weights");
    if (o.value("score", "softmax") != "softmax")
        bad("score", o.value("score", ""), "softmax router scores");
    if (o.contains("router_temperature") && o["router_temperature"].is_number() &&
        o["router_temperature"].get<double>() != 1.0)
        bad("router_temperature", o["router_temperature"].dump(), "temperature 1");
}

// SentencePiece pieces as llama.cpp's "llama" vocabulary.
void spm_vocab(GgufWriter& w, const std::string& model_bytes, const std::string& where, int V,
               bool moe_own) {
    sentencepiece::SentencePieceProcessor sp;
    if (!sp.LoadFromSerializedProto(model_bytes).ok())
        fail("{}: cannot load the SentencePiece model; restore the tokenizer", where);
    if (sp.GetPieceSize() > V)
        fail("{}: {} pieces but the model has {} embedding rows; the tokenizer does not belong "
             "to the model",
             where, sp.GetPieceSize(), V);
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<int32_t> types;
    for (int i = 0; i < V; i++) {
        if (i >= sp.GetPieceSize()) {  // rows past the tokenizer: llama.cpp's [PAD] convention
            tokens.push_back("[PAD" + std::to_string(i) + "]");
            scores.push_back(-1000.f);
            types.push_back(5);
            continue;
        }
        tokens.push_back(sp.IdToPiece(i));
        scores.push_back(sp.GetScore(i));
        types.push_back(sp.IsUnknown(i) ? 2 : sp.IsControl(i) ? 3 : sp.IsByte(i) ? 6
                                                             : sp.IsUnused(i) ? 5 : 1);
    }
    std::vector<std::string> pieces;
    const bool prefix = sp.Encode("a", &pieces).ok() && !pieces.empty() &&
                        pieces[0].rfind(kSpace, 0) == 0;
    w.set("tokenizer.ggml.model", GgufValue::string("llama"));
    w.set("tokenizer.ggml.tokens", GgufValue::strings(tokens));
    w.set("tokenizer.ggml.scores", GgufValue::f32s(scores));
    w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
    w.set("tokenizer.ggml.add_space_prefix", GgufValue::boolean(prefix));
    if (sp.unk_id() >= 0) w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(sp.unk_id()));
    if (moe_own) {
        w.set("moe.tokenizer.kind", GgufValue::string("sentencepiece"));
        GgufValue raw;
        raw.type = GgufType::arr;
        raw.arr_type = GgufType::u8;
        for (unsigned char c : model_bytes) raw.arr.push_back(c);
        w.set("moe.tokenizer.model", raw);
    }
}

// A tokenizer.json's byte-level BPE as llama.cpp's "gpt2" vocabulary.
void bpe_vocab(GgufWriter& w, const std::string& path, const std::string& arch, int V) {
    const json j = parse_json_text(read_file(path), path, "a tokenizer.json");
    const json& m = j.at("model");
    std::vector<std::string> tokens(V);
    std::vector<int32_t> types(V, 0);
    auto put = [&](const std::string& s, int64_t id, int32_t type) {
        if (id < 0 || id >= V)
            fail("{}: token '{}' has id {} outside the model's {} embedding rows; the tokenizer "
                 "does not belong to the model",
                 path, s, id, V);
        tokens[id] = s;
        types[id] = type;
    };
    for (auto& [s, id] : m.at("vocab").items()) put(s, checked_int(id, path + ": vocab", Range()), 1);
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
        for (auto& a : j["added_tokens"])
            put(a.at("content").get<std::string>(), checked_int(a.at("id"), path, Range()),
                a.value("special", false) ? 3 : 4);
    for (int i = 0; i < V; i++)
        if (types[i] == 0) tokens[i] = "[PAD" + std::to_string(i) + "]", types[i] = 5;
    std::vector<std::string> merges;
    for (auto& mg : m.at("merges")) {
        if (mg.is_string()) merges.push_back(mg.get<std::string>());
        else if (mg.is_array() && mg.size() == 2)
            merges.push_back(mg[0].get<std::string>() + " " + mg[1].get<std::string>());
        else fail("{}: a merge is neither \"a b\" nor [a, b]; the tokenizer is damaged", path);
    }
    // tokenizer.ggml.pre: llama.cpp names the pre-tokenizer; ours are Qwen2's split or GPT-2's.
    std::string pre = arch == "olmoe" ? "olmo" : "gpt-2";
    const json& p = j.value("pre_tokenizer", json());
    if (p.is_object() && p.value("type", "") == "Sequence") pre = "qwen2";
    w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
    w.set("tokenizer.ggml.pre", GgufValue::string(pre));
    w.set("tokenizer.ggml.tokens", GgufValue::strings(tokens));
    w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
    w.set("tokenizer.ggml.merges", GgufValue::strings(merges));
}

// The source's tokenizer into the writer, with the special ids the engine would use.
void write_vocab(GgufWriter& w, const std::string& src, const HfConfig& c, const std::string& arch,
                 bool moe_ckpt) {
    const int V = c.vocab_size;
    if (file_exists(src + "/vocab.json")) {
        // A character vocabulary as a SentencePiece-type ("llama") vocabulary of single symbols:
        // llama.cpp's SPM tokenizer then looks each symbol up as a whole token (no merges apply),
        // a space written as U+2581 as its SPM expects, no dummy prefix, no BOS.
        auto tok = load_tokenizer(src);
        std::vector<std::string> tokens;
        for (int i = 0; i < tok->vocab_size(); i++) {
            std::string s = tok->piece(i);
            if (s.find(kSpace) != std::string::npos)
                fail("{}/vocab.json: symbol {} is U+2581, which llama.cpp reads as a space; this "
                     "vocabulary cannot be written as GGUF",
                     src, i);
            for (size_t p = 0; (p = s.find(' ', p)) != std::string::npos; p += 3)
                s.replace(p, 1, kSpace);
            tokens.push_back(s);
        }
        if ((int)tokens.size() != V)
            fail("{}/vocab.json: {} symbols for {} embedding rows; restore the checkpoint", src,
                 tokens.size(), V);
        w.set("tokenizer.ggml.model", GgufValue::string("llama"));
        w.set("tokenizer.ggml.tokens", GgufValue::strings(tokens));
        w.set("tokenizer.ggml.scores", GgufValue::f32s(std::vector<float>(V, 0.f)));
        w.set("tokenizer.ggml.token_type", GgufValue::i32s(std::vector<int32_t>(V, 1)));
        w.set("tokenizer.ggml.add_space_prefix", GgufValue::boolean(false));
        w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
        w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
        w.set("moe.tokenizer.kind", GgufValue::string("char"));
        return;
    }
    if (file_exists(src + "/tokenizer.json")) {
        bpe_vocab(w, src + "/tokenizer.json", arch, V);
    } else if (file_exists(src + "/tokenizer.model")) {
        spm_vocab(w, read_file(src + "/tokenizer.model"), src + "/tokenizer.model", V, moe_ckpt);
    } else {
        fail("{}: no tokenizer (vocab.json, tokenizer.json or tokenizer.model); llama.cpp needs "
             "one in the GGUF",
             src);
    }
    const SpecialTokens s = load_tokenizer(src)->special();
    const int bos = s.bos >= 0 ? s.bos : c.bos_token_id;
    if (bos >= 0) w.set("tokenizer.ggml.bos_token_id", GgufValue::u32((uint32_t)bos));
    std::vector<int32_t> eos = s.eos.empty() ? c.eos_token_ids : s.eos;
    if (!eos.empty()) w.set("tokenizer.ggml.eos_token_id", GgufValue::u32((uint32_t)eos[0]));
    if (eos.size() > 1) w.set("tokenizer.ggml.eot_token_id", GgufValue::u32((uint32_t)eos[1]));
    w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(s.add_bos && bos >= 0));
    w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(s.add_eos));
    if (!s.chat_template.empty())
        w.set("tokenizer.chat_template", GgufValue::string(s.chat_template));
}

// The hyper-parameters llama.cpp reads for the arch (llama-model.cpp load_hparams).
void write_hparams(GgufWriter& w, const HfConfig& c, const std::string& arch, GgmlType type,
                   const std::string& name) {
    const std::string k = arch + ".";
    w.set("general.architecture", GgufValue::string(arch));
    w.set("general.name", GgufValue::string(name));
    w.set("general.file_type", GgufValue::u32(file_type(type)));
    w.set(k + "vocab_size", GgufValue::u32(c.vocab_size));
    w.set(k + "context_length", GgufValue::u32(c.max_positions));
    w.set(k + "embedding_length", GgufValue::u32(c.hidden_size));
    w.set(k + "block_count", GgufValue::u32(c.n_layers));
    w.set(k + "feed_forward_length",
          GgufValue::u32(arch == "llama" || arch == "olmoe" || c.dense_ff < 1 ? c.expert_ff
                                                                              : c.dense_ff));
    w.set(k + "attention.head_count", GgufValue::u32(c.n_heads));
    w.set(k + "attention.head_count_kv", GgufValue::u32(c.n_kv_heads));
    w.set(k + "rope.freq_base", GgufValue::f32(c.rope_theta));
    w.set(k + "rope.dimension_count", GgufValue::u32(c.head_dim));
    w.set(k + "attention.layer_norm_rms_epsilon", GgufValue::f32(c.rms_eps));
    if (c.head_dim * c.n_heads != c.hidden_size) {
        w.set(k + "attention.key_length", GgufValue::u32(c.head_dim));
        w.set(k + "attention.value_length", GgufValue::u32(c.head_dim));
    }
    w.set(k + "expert_count", GgufValue::u32(c.n_experts));
    w.set(k + "expert_used_count", GgufValue::u32(c.top_k));
    if (arch != "llama") w.set(k + "expert_feed_forward_length", GgufValue::u32(c.expert_ff));
    if (c.shared_ff > 0)
        w.set(k + "expert_shared_feed_forward_length", GgufValue::u32(c.shared_ff));
    // Renormalisation where it differs from what llama.cpp's graph does for the arch.
    const bool norm_default = arch == "llama" || arch == "qwen3moe";
    if (c.norm_topk_prob != norm_default)
        w.set(k + "expert_weights_norm", GgufValue::boolean(c.norm_topk_prob));
    if (c.clip_qkv > 0) w.set(k + "attention.clamp_kqv", GgufValue::f32(c.clip_qkv));
}

// One tensor's bytes in `type` from the store's HF tensors (merged experts stacked, q/k rows in
// llama.cpp's order for arch llama).
void fill_tensor(WeightStore& store, const std::vector<const GgufSlot*>& parts, GgmlType type,
                 uint8_t* dst) {
    size_t at = 0;
    std::vector<float> row;
    for (const GgufSlot* s : parts) {
        const WeightView v = store.get(s->hf, s->hf_shape);
        const size_t rb = (size_t)ggml_row_bytes(type, (uint64_t)v.cols);
        uint8_t* out = dst + at;
        row.resize((size_t)v.cols);
        for (int64_t r = 0; r < v.rows; r++) {
            widen_rows(row.data(), v, r, 1);
            uint8_t* o = out + (size_t)r * rb;
            for (size_t i = 0; i < row.size(); i++) {
                if (type == GgmlType::f32) std::memcpy(o + 4 * i, &row[i], 4);
                uint16_t h = type == GgmlType::f16 ? f32_to_f16(row[i]) : f32_to_bf16(row[i]);
                if (type == GgmlType::f16 || type == GgmlType::bf16) std::memcpy(o + 2 * i, &h, 2);
            }
            if (type == GgmlType::q8_0) quantize_row_q8_0(row.data(), v.cols, o);
            if (type == GgmlType::q4_0) quantize_row_q4_0(row.data(), v.cols, o);
        }
        const size_t bytes = rb * (size_t)v.rows;
        if (s->permute_heads > 0) {
            std::vector<uint8_t> tmp(out, out + bytes);
            gguf_permute_rows(tmp.data(), out, v.rows, rb, s->permute_heads, true);
        }
        at += bytes;
    }
}

}  // namespace

GgufExportSummary write_gguf_model(const std::string& src, GgmlType type, const std::string& out) {
    // A run folder (what `moe train --out` wrote) stands for its best/ checkpoint, as for --to hf.
    std::string dir = src;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (!is_gguf_file(dir) && dir_exists(dir) && !file_exists(dir + "/config.json"))
        dir = resolve_checkpoint_dir(dir);
    const GgufExportOptions o{dir, out};
    HfConfig c;
    std::unique_ptr<WeightStore> store;
    std::unique_ptr<GgufFile> src_gguf;
    bool moe_ckpt = false;
    if (is_gguf_file(o.src)) {
        store = WeightStore::from_gguf(o.src, &c);
        src_gguf = std::make_unique<GgufFile>(GgufFile::open(o.src));
    } else {
        const std::string cfg = o.src + "/config.json";
        if (!dir_exists(o.src))
            fail("{}: is neither a folder nor a .gguf file; give a model folder, a moe.cpp "
                 "checkpoint or a .gguf",
                 o.src);
        const json j = read_json_file(cfg, "a model config");
        moe_ckpt = j.is_object() && j.contains("moe_cpp");
        if (moe_ckpt && j.value("model_type", "") == "mixtral") check_mixtral_checkpoint(j, cfg);
        c = hf_config_from_json(j, cfg);
        store = std::make_unique<WeightStore>(o.src);
    }
    const std::string arch = gguf_arch_of(c.model_type);
    const std::vector<GgufSlot> layout = gguf_layout(c);
    // Every tensor the engine would read must exist with its shape (and nothing else: a tensor
    // the family does not have would be dropped silently).
    auto model = std::make_unique<HfModel>(c, std::move(store), o.src);
    GgufWriter w;
    std::string name = o.src;
    while (!name.empty() && name.back() == '/') name.pop_back();
    name = name.substr(name.find_last_of('/') + 1);
    write_hparams(w, c, arch, type, name);
    if (src_gguf) {
        for (auto& [k, v] : src_gguf->kv())
            if (k.rfind("tokenizer.", 0) == 0 || k.rfind("moe.tokenizer.", 0) == 0) w.set(k, v);
    } else {
        write_vocab(w, o.src, c, arch, moe_ckpt);
    }
    // Group the HF tensors by GGUF tensor (merged experts), in layout order.
    std::vector<std::string> order;
    std::map<std::string, std::vector<const GgufSlot*>> parts;
    for (const GgufSlot& s : layout) {
        if (!parts.count(s.gguf)) order.push_back(s.gguf);
        parts[s.gguf].push_back(&s);
    }
    WeightStore* st = &model->weights();
    for (const std::string& g : order) {
        const std::vector<const GgufSlot*>& ps = parts[g];
        const GgufSlot& s0 = *ps[0];
        const std::vector<int64_t> ne = gguf_ne(s0);
        // Vectors, the router and the shared-expert gate stay F32 (llama.cpp's converter keeps
        // them so: they are small and routing is sensitive).
        const bool small = ne.size() == 1 || g.find("ffn_gate_inp") != std::string::npos;
        const GgmlType t = small ? GgmlType::f32 : type;
        if ((t == GgmlType::q8_0 || t == GgmlType::q4_0) && ne[0] % 32 != 0) {
            const std::string q = t == GgmlType::q8_0 ? "q8_0" : "q4_0";
            fail("--type {}: tensor {} has rows of {} values, not a multiple of 32 ({} blocks); "
                 "this model cannot be held in {}: choose f16, bf16 or f32",
                 q, g, ne[0], ggml_type_name(t), q);
        }
        w.add_tensor(g, ne, t, [st, ps, t](uint8_t* dst) { fill_tensor(*st, ps, t, dst); });
    }
    w.write(o.out);
    uint64_t n = 0;
    for (auto& s : layout) {
        uint64_t e = 1;
        for (int64_t d : s.hf_shape) e *= (uint64_t)d;
        n += e;
    }
    GgufExportSummary r{arch, order.size(), (double)n, {}};
    bool dense = false;
    for (int l = 0; l < c.n_layers; l++) dense |= !c.moe_layer[l];
    if (dense)
        r.llama_cpp_caveats.push_back("dense layers (mlp_only_layers / decoder_sparse_step): "
                                      "llama.cpp's " + arch + " expects experts in every layer");
    if (c.clip_qkv > 0)
        r.llama_cpp_caveats.push_back("clip_qkv: llama.cpp's olmoe graph does not clamp q, k, v");
    if (c.norm_topk_prob != (arch == "llama" || arch == "qwen3moe"))
        r.llama_cpp_caveats.push_back(std::string("norm_topk_prob ") +
                                      (c.norm_topk_prob ? "true" : "false") +
                                      ": llama.cpp's " + arch + " graph does the opposite (" +
                                      arch + ".expert_weights_norm is written for readers that "
                                      "honour it)");
    if (arch == "olmoe" && c.n_kv_heads != c.n_heads)
        r.llama_cpp_caveats.push_back("grouped-query attention: llama.cpp's olmoe (Feb 2025) "
                                      "expects as many key/value heads as query heads");
    if ((arch == "qwen2moe" || arch == "olmoe") && c.head_dim * c.n_heads != c.hidden_size)
        r.llama_cpp_caveats.push_back("head_dim * heads != hidden_size: llama.cpp's " + arch +
                                      " expects square attention projections");
    if (arch == "olmoe" && c.o_bias)
        r.llama_cpp_caveats.push_back("attention biases: llama.cpp's olmoe has none");
    return r;
}

}  // namespace moe
