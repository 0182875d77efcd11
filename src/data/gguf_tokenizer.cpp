// The tokenizer a GGUF file carries in its metadata (tokenizer.ggml.*), rebuilt as one of our
// tokenizer objects in memory:
//   model "gpt2"  -> byte-level BPE: a tokenizer.json text made from tokens, merges and
//                    token_type (control / user-defined tokens become added specials), the
//                    pre-tokenizer chosen by tokenizer.ggml.pre (qwen2: Qwen2's regex split;
//                    gpt-2, olmo, default: GPT-2's), read by bpe_tokenizer_from_json;
//   model "llama" -> SentencePiece: a ModelProto serialised here from tokens, scores and
//                    token_type (BPE, byte fallback when <0x..> pieces exist, the dummy prefix
//                    from tokenizer.ggml.add_space_prefix), loaded by libsentencepiece;
//   moe.cpp's own checkpoints written by `moe convert` also carry moe.tokenizer.kind: "char"
//   (the symbols, a space written as U+2581 for llama.cpp) or "sentencepiece" with the
//   original tokenizer.model bytes in moe.tokenizer.model (exact round trip).
#include <cstring>
#include <nlohmann/json.hpp>

#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/gguf.h"
#include "moe/tokenizer.h"

namespace moe {

using json = nlohmann::json;

namespace {

const char* kSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's and llama.cpp's space

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size())
        s.replace(p, from.size(), to);
    return s;
}

// Protocol buffers, the three wire types SentencePiece's ModelProto needs.
struct Proto {
    std::string b;
    void varint(uint64_t v) {
        while (v >= 0x80) {
            b += (char)(0x80 | (v & 0x7f));
            v >>= 7;
        }
        b += (char)v;
    }
    void tag(int field, int wire) { varint((uint64_t)field << 3 | (uint64_t)wire); }
    void u(int field, uint64_t v) { tag(field, 0), varint(v); }
    void bytes(int field, const std::string& s) { tag(field, 2), varint(s.size()), b += s; }
    void f32(int field, float v) {
        tag(field, 5);
        char c[4];
        std::memcpy(c, &v, 4);
        b.append(c, 4);
    }
};

// token_type values (llama.cpp's LLAMA_TOKEN_TYPE_*), the same numbers as SentencePiece's Type.
enum { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

std::vector<int32_t> token_types(const GgufFile& f, size_t n) {
    std::vector<int32_t> t(n, kNormal);
    if (const GgufValue* v = f.get_array("tokenizer.ggml.token_type", GgufType::i32, false)) {
        if (v->size() != n)
            fail("{}: key 'tokenizer.ggml.token_type': {} entries for {} tokens; the file is "
                 "damaged",
                 f.path(), v->size(), n);
        for (size_t i = 0; i < n; i++) {
            const int64_t x = v->arr_int(i);
            if (x < 1 || x > 6)
                fail("{}: key 'tokenizer.ggml.token_type': entry {} is {} (not 1..6); the file "
                     "is damaged",
                     f.path(), i, x);
            t[i] = (int32_t)x;
        }
    }
    return t;
}

std::unique_ptr<Tokenizer> spm_from_gguf(const GgufFile& f, const std::vector<std::string>& tokens) {
    const size_t n = tokens.size();
    const std::vector<int32_t> types = token_types(f, n);
    const GgufValue* scores = f.get_array("tokenizer.ggml.scores", GgufType::f32, false);
    if (scores && scores->size() != n)
        fail("{}: key 'tokenizer.ggml.scores': {} entries for {} tokens; the file is damaged",
             f.path(), scores->size(), n);
    Proto m;
    bool bytes = false, unk = false;
    std::vector<std::pair<std::string, int32_t>> added;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i].empty())
            fail("{}: key 'tokenizer.ggml.tokens': token {} is empty; SentencePiece needs a text "
                 "for every piece",
                 f.path(), i);
        Proto p;
        p.bytes(1, tokens[i]);
        p.f32(2, scores ? (float)scores->arr_double(i) : 0.f);
        p.u(3, (uint64_t)types[i]);
        m.bytes(1, p.b);
        bytes |= types[i] == kByte;
        unk |= types[i] == kUnknown;
        if (types[i] == kUserDefined) added.push_back({tokens[i], (int32_t)i});
    }
    if (!unk)
        fail("{}: the SentencePiece vocabulary has no unknown token (token_type 2); the file's "
             "tokenizer is incomplete (give --prompt-ids to run without it)",
             f.path());
    Proto trainer;
    trainer.u(3, 2);  // model_type BPE: pieces merge by score, as llama.cpp's SPM tokenizer does
    if (bytes) trainer.u(35, 1);  // byte_fallback
    m.bytes(2, trainer.b);
    Proto norm;
    norm.bytes(1, "identity");
    norm.u(3, f.get_bool("tokenizer.ggml.add_space_prefix", true) ? 1 : 0);
    norm.u(4, 0);  // remove_extra_whitespaces: llama.cpp keeps runs of spaces
    norm.u(5, 1);  // escape_whitespaces: ' ' -> U+2581
    m.bytes(3, norm.b);
    return sentencepiece_hf_from_model(m.b, f.path() + ": tokenizer.ggml.*", added);
}

const char* kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

std::unique_ptr<Tokenizer> bpe_from_gguf(const GgufFile& f, const std::vector<std::string>& tokens) {
    const size_t n = tokens.size();
    const std::vector<int32_t> types = token_types(f, n);
    const GgufValue* merges = f.get_array("tokenizer.ggml.merges", GgufType::str, true);
    const std::string pre = f.get_str("tokenizer.ggml.pre", "default");
    json vocab = json::object(), added = json::array();
    for (size_t i = 0; i < n; i++) {
        if (types[i] == kControl || types[i] == kUserDefined) {
            added.push_back({{"id", i}, {"content", tokens[i]}, {"special", types[i] == kControl},
                             {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                             {"normalized", types[i] != kControl}});
        } else if (!vocab.contains(tokens[i])) {
            vocab[tokens[i]] = i;
        }
    }
    json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
               {"use_regex", true}};
    json pre_tok, normalizer;
    if (pre == "qwen2") {
        bl["use_regex"] = false;
        pre_tok = {{"type", "Sequence"},
                   {"pretokenizers",
                    {{{"type", "Split"},
                      {"pattern", {{"Regex", kQwen2Pattern}}},
                      {"behavior", "Isolated"},
                      {"invert", false}},
                     bl}}};
        normalizer = {{"type", "NFC"}};
    } else if (pre == "default" || pre == "gpt-2" || pre == "olmo") {
        pre_tok = bl;
    } else {
        fail("{}: key 'tokenizer.ggml.pre': '{}' is not supported; moe.cpp reads qwen2, gpt-2, "
             "olmo and default (give --prompt-ids to run without the tokenizer)",
             f.path(), pre);
    }
    json tj = {{"version", "1.0"},
               {"added_tokens", added},
               {"normalizer", normalizer},
               {"pre_tokenizer", pre_tok},
               {"decoder", bl},
               {"model",
                {{"type", "BPE"},
                 {"byte_fallback", false},
                 {"vocab", vocab},
                 {"merges", merges->arr_str}}}};
    std::string text;
    try {
        text = tj.dump();
    } catch (const json::exception&) {  // a token or merge that is not UTF-8
        fail("{}: tokenizer.ggml.tokens or merges hold bytes that are not UTF-8; a byte-level "
             "BPE vocabulary is UTF-8 text (the file is damaged)",
             f.path());
    }
    return bpe_tokenizer_from_json(text, f.path() + ": tokenizer.ggml.*");
}

}  // namespace

std::unique_ptr<Tokenizer> gguf_tokenizer(const GgufFile& f) {
    const GgufValue* tv = f.get_array("tokenizer.ggml.tokens", GgufType::str, true);
    const std::vector<std::string>& tokens = tv->arr_str;
    if (tokens.empty()) fail("{}: key 'tokenizer.ggml.tokens' is empty; the file is damaged", f.path());
    const std::string kind = f.get_str("moe.tokenizer.kind", "");
    const std::string model = f.get_str("tokenizer.ggml.model");
    std::unique_ptr<Tokenizer> tok;
    if (kind == "char") {
        std::vector<std::string> syms;
        for (auto& t : tokens) syms.push_back(replace_all(t, kSpace, " "));
        tok = char_tokenizer_from_symbols(syms);
    } else if (kind == "sentencepiece") {
        const GgufValue* raw = f.get_array("moe.tokenizer.model", GgufType::u8, true);
        std::string bytes(raw->arr.size(), '\0');
        for (size_t i = 0; i < bytes.size(); i++) bytes[i] = (char)raw->arr[i];
        tok = sentencepiece_from_model(bytes, f.path() + ": moe.tokenizer.model");
    } else if (!kind.empty()) {
        fail("{}: key 'moe.tokenizer.kind': '{}' is not char or sentencepiece; the file is "
             "damaged",
             f.path(), kind);
    } else if (model == "gpt2") {
        tok = bpe_from_gguf(f, tokens);
    } else if (model == "llama") {
        tok = spm_from_gguf(f, tokens);
    } else {
        fail("{}: key 'tokenizer.ggml.model': '{}' is not supported; moe.cpp reads gpt2 (byte-"
             "level BPE) and llama (SentencePiece) vocabularies (give --prompt-ids to run "
             "without the tokenizer)",
             f.path(), model);
    }
    const int V = tok->vocab_size();
    SpecialTokens s;
    s.bos = (int32_t)f.get_int("tokenizer.ggml.bos_token_id", -1, V - 1, -1);
    const int32_t eos = (int32_t)f.get_int("tokenizer.ggml.eos_token_id", -1, V - 1, -1);
    if (eos >= 0) s.eos.push_back(eos);
    const int32_t eot = (int32_t)f.get_int("tokenizer.ggml.eot_token_id", -1, V - 1, -1);
    if (eot >= 0 && eot != eos) s.eos.push_back(eot);
    // llama.cpp's defaults: a SentencePiece vocabulary adds BOS unless told, a BPE one does not.
    s.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", model == "llama" && kind.empty() && s.bos >= 0);
    s.add_eos = f.get_bool("tokenizer.ggml.add_eos_token", false);
    if (s.add_bos && s.bos < 0)
        fail("{}: key 'tokenizer.ggml.add_bos_token' is true but no bos_token_id is given; the "
             "file is damaged",
             f.path());
    s.chat_template = f.get_str("tokenizer.chat_template", "");
    tok->set_special(std::move(s));
    return tok;
}

bool save_gguf_tokenizer(const GgufFile& f, const std::string& dir) {
    if (!f.find("tokenizer.ggml.tokens")) return false;  // runs with --prompt-ids, as the .gguf
    std::unique_ptr<Tokenizer> tok;
    try {
        tok = gguf_tokenizer(f);
    } catch (const Error& e) {
        // the reader's hint is for running the file; here the folder cannot be written at all
        std::string why = e.what();
        const size_t hint = why.find(" (give --prompt-ids");
        if (hint != std::string::npos) why.erase(hint);
        fail("{}; a folder cannot hold this vocabulary: run the .gguf itself (moe generate and "
             "eval take it, with --prompt-ids)",
             why);
    }
    tok->save(dir);  // vocab.json, tokenizer.model or tokenizer.json
    // moe.cpp's own vocabularies are read back from vocab.json / a bare tokenizer.model in moe's
    // settings: a tokenizer_config.json would turn the latter into an HF SentencePiece.
    const std::string kind = f.get_str("moe.tokenizer.kind", "");
    const SpecialTokens& s = tok->special();
    if (kind.empty()) {
        const std::vector<std::string>& tokens =
            f.get_array("tokenizer.ggml.tokens", GgufType::str, true)->arr_str;
        json cfg = {{"add_bos_token", s.add_bos}, {"add_eos_token", s.add_eos}};
        // Texts only where they name the id back (HF tools want them; read_special resolves
        // them), the ids themselves in generation_config.json.
        if (s.bos >= 0 && tok->token_id(tokens[s.bos]) == s.bos) cfg["bos_token"] = tokens[s.bos];
        if (!s.eos.empty() && tok->token_id(tokens[s.eos[0]]) == s.eos[0])
            cfg["eos_token"] = tokens[s.eos[0]];
        if (!s.chat_template.empty()) cfg["chat_template"] = s.chat_template;
        // A SentencePiece vocabulary's user-defined tokens are matched whole in the text, as
        // spm_from_gguf does; HF keeps them in added_tokens_decoder (a tokenizer.json has its own).
        if (tok->kind() == "sentencepiece") {
            const std::vector<int32_t> types = token_types(f, tokens.size());
            json added = json::object();
            for (size_t i = 0; i < tokens.size(); i++)
                if (types[i] == kUserDefined)
                    added[std::to_string(i)] = {{"content", tokens[i]}, {"special", false}};
            if (!added.empty()) cfg["added_tokens_decoder"] = added;
        }
        json gen = json::object();
        if (s.bos >= 0) gen["bos_token_id"] = s.bos;
        if (!s.eos.empty()) gen["eos_token_id"] = s.eos;
        try {
            write_file_atomic(dir + "/tokenizer_config.json", cfg.dump(2));
        } catch (const json::exception&) {  // a special token or template that is not UTF-8
            fail("{}: a special token or tokenizer.chat_template is not UTF-8; tokenizer_config.json "
                 "cannot hold it (the file is damaged)",
                 f.path());
        }
        write_file_atomic(dir + "/generation_config.json", gen.dump(2));
    }
    // The folder must give the tokenizer the .gguf gives: the same ids and special tokens.
    const std::unique_ptr<Tokenizer> back = load_tokenizer(dir);
    const SpecialTokens& b = back->special();
    const bool same = back->kind() == tok->kind() && back->vocab_size() == tok->vocab_size() &&
                      b.add_bos == s.add_bos && b.add_eos == s.add_eos &&
                      (!s.add_bos || b.bos == s.bos) && b.chat_template == s.chat_template &&
                      (b.eos == s.eos || b.eos.empty());
    if (!same)
        fail("{}: its tokenizer (special tokens: tokenizer.ggml.bos_token_id, add_bos_token, "
             "eos_token_id) cannot be written as the folder's tokenizer files; give --prompt-ids "
             "to the .gguf instead",
             f.path());
    return true;
}

}  // namespace moe
