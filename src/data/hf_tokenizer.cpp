// The tokenizer of a Hugging Face model folder (include/moe/tokenizer.h, docs/tokenizers.md):
// tokenizer.json (byte-level BPE) or tokenizer.model (SentencePiece), and the special tokens of
// tokenizer_config.json and generation_config.json.
#include <nlohmann/json.hpp>

#include "data/added_tokens.h"
#include "moe/checked.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/tokenizer.h"

namespace moe {

using json = nlohmann::json;

namespace {

json read_json_file(const std::string& path, const char* what) {
    check_readable_file(path);
    json j = parse_json_text(read_file(path), path, what);
    if (!j.is_object()) fail("{}: expected a JSON object; restore {} from the model's repository", path, what);
    return j;
}

// bos_token / eos_token: "<s>", {"content": "<s>", ...} (AddedToken), or null.
std::string token_text(const json& cfg, const char* key, const std::string& where) {
    if (!cfg.contains(key) || cfg[key].is_null()) return "";
    const json& v = cfg[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string())
        return v["content"].get<std::string>();
    fail("{}: key '{}' is neither a string nor an object with a \"content\" string; restore "
         "tokenizer_config.json from the model's repository",
         where, key);
}

int32_t resolve(const Tokenizer& tok, const std::string& text, const char* key,
                const std::string& where) {
    int32_t id = tok.token_id(text);
    if (id < 0)
        fail("{}: key '{}' is \"{}\", which is not a token of the tokenizer; use the tokenizer "
             "files of one model",
             where, key, text);
    return id;
}

// tokenizer_config.json's added_tokens_decoder {"151643": {"content": "<|endoftext|>", ...}}: the
// special tokens of a SentencePiece folder (a tokenizer.json's own added_tokens serve BPE).
std::vector<std::pair<std::string, int32_t>> added_from_config(const json& cfg,
                                                                const std::string& where) {
    std::vector<std::pair<std::string, int32_t>> out;
    if (!cfg.contains("added_tokens_decoder") || cfg["added_tokens_decoder"].is_null()) return out;
    const json& d = cfg["added_tokens_decoder"];
    if (!d.is_object())
        fail("{}: key 'added_tokens_decoder' is not an object; restore tokenizer_config.json",
             where);
    for (auto it = d.begin(); it != d.end(); ++it) {
        std::string key = "added_tokens_decoder." + it.key();
        int64_t id = parse_int(it.key(), where + ": key '" + key + "'", Range::in(0, (1 << 30)));
        if (!it.value().is_object())
            fail("{}: key '{}' is not an object; restore tokenizer_config.json", where, key);
        std::string content = json_str(it.value(), "content", where + ": " + key, {}, "");
        if (content.empty())
            fail("{}: key '{}.content' missing or empty; restore tokenizer_config.json", where,
                 key);
        out.emplace_back(content, (int32_t)id);
    }
    return out;
}

SpecialTokens read_special(const Tokenizer& tok, const json* cfg, const std::string& cfg_path,
                           const json* gen, const std::string& gen_path) {
    SpecialTokens s;
    const int64_t V = tok.vocab_size();
    bool sp = tok.kind() == "sentencepiece";
    std::string bos_text, eos_text;
    if (cfg) {
        bos_text = token_text(*cfg, "bos_token", cfg_path);
        eos_text = token_text(*cfg, "eos_token", cfg_path);
        if (!bos_text.empty()) s.bos = resolve(tok, bos_text, "bos_token", cfg_path);
        if (!eos_text.empty()) s.eos.push_back(resolve(tok, eos_text, "eos_token", cfg_path));
        if (cfg->contains("chat_template") && !(*cfg)["chat_template"].is_null()) {
            const json& t = (*cfg)["chat_template"];
            if (t.is_string()) {
                s.chat_template = t.get<std::string>();
            } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, ...]
                for (const json& e : t)
                    if (e.is_object() && e.contains("template") && e["template"].is_string() &&
                        (s.chat_template.empty() || e.value("name", json()) == "default"))
                        s.chat_template = e["template"].get<std::string>();
            }
            if (s.chat_template.empty())
                fail("{}: key 'chat_template' is neither a string nor a list of {{\"name\", "
                     "\"template\"}}; restore tokenizer_config.json",
                     cfg_path);
        }
    }
    if (gen) {
        auto id_of = [&](const json& v, const std::string& key) {
            return (int32_t)checked_int(v, gen_path + ": key '" + key + "'", Range::in(0, (double)V - 1));
        };
        if (s.bos < 0 && gen->contains("bos_token_id") && !(*gen)["bos_token_id"].is_null())
            s.bos = id_of((*gen)["bos_token_id"], "bos_token_id");
        if (gen->contains("eos_token_id") && !(*gen)["eos_token_id"].is_null()) {
            const json& e = (*gen)["eos_token_id"];
            std::vector<int32_t> ids;
            if (e.is_array()) {
                if (e.size() > 1024) fail("{}: key 'eos_token_id' lists {} ids; restore generation_config.json", gen_path, e.size());
                for (size_t i = 0; i < e.size(); i++)
                    ids.push_back(id_of(e[i], fmt::format("eos_token_id[{}]", i)));
            } else {
                ids.push_back(id_of(e, "eos_token_id"));
            }
            // generation_config's order first (what HF generate stops at), then the tokenizer's.
            for (int32_t id : s.eos)
                if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
            s.eos = ids;
        }
    }
    // A bare tokenizer.model: the model's own <s> and </s>.
    if (sp && !cfg && !gen) {
        s.bos = tok.token_id("<s>");
        int32_t e = tok.token_id("</s>");
        if (e >= 0) s.eos.push_back(e);
    }
    // HF's LlamaTokenizer adds BOS unless told not to; a byte-level BPE adds nothing by default.
    s.add_bos = cfg ? json_bool(*cfg, "add_bos_token", cfg_path, sp && s.bos >= 0) : sp && s.bos >= 0;
    s.add_eos = cfg ? json_bool(*cfg, "add_eos_token", cfg_path, false) : false;
    if (s.add_bos && s.bos < 0)
        fail("{}: key 'add_bos_token' is true but no bos_token is given; set bos_token or "
             "add_bos_token: false",
             cfg_path);
    if (s.add_eos && s.eos.empty())
        fail("{}: key 'add_eos_token' is true but no eos_token is given; set eos_token or "
             "add_eos_token: false",
             cfg_path);
    return s;
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& dir) {
    const std::string tj = dir + "/tokenizer.json", tm = dir + "/tokenizer.model",
                      tc = dir + "/tokenizer_config.json", gc = dir + "/generation_config.json";
    if (!dir_exists(dir))
        fail("{}: no such folder; give a model folder (config.json, tokenizer.json or "
             "tokenizer.model)",
             dir);
    json cfg, gen;
    bool has_cfg = file_exists(tc), has_gen = file_exists(gc);
    if (has_cfg) cfg = read_json_file(tc, "tokenizer_config.json");
    if (has_gen) gen = read_json_file(gc, "generation_config.json");

    std::unique_ptr<Tokenizer> tok;
    std::string why_not_json;
    if (file_exists(tj)) {
        check_readable_file(tj);
        try {
            tok = bpe_tokenizer_from_json(read_file(tj), tj);
        } catch (const NotByteLevelError& e) {
            why_not_json = e.what();
        }
    }
    if (!tok && file_exists(tm)) {
        check_readable_file(tm);
        std::vector<std::pair<std::string, int32_t>> added;
        if (has_cfg) added = added_from_config(cfg, tc);
        tok = sentencepiece_hf_from_model(read_file(tm), tm, added);
    }
    if (!tok) {
        if (!why_not_json.empty())
            fail("{} (and there is no tokenizer.model to use instead)", why_not_json);
        fail("{}: no tokenizer: looked for vocab.json and tokenizer.model (moe.cpp checkpoints), "
             "tokenizer.json (byte-level BPE) and tokenizer.model (SentencePiece); copy the "
             "model's tokenizer files into the folder",
             dir);
    }
    tok->set_special(read_special(*tok, has_cfg ? &cfg : nullptr, tc, has_gen ? &gen : nullptr, gc));
    return tok;
}

}  // namespace moe
