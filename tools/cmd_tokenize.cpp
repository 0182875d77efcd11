// moe tokenize: a folder's tokenizer on a text, or its ids back to text (docs/tokenizers.md).
//   moe tokenize DIR --text "Hello world" [--json] [--special]   ids
//   moe tokenize DIR --file FILE [--json]                       ids of a file's bytes
//   moe tokenize DIR --ids 9707,1879 [--json]                   decoded text
// DIR: a Hugging Face model folder (tokenizer.json / tokenizer.model), a moe checkpoint, or a run
// folder (its best checkpoint). The PyTorch peers (bench/peers) take their token ids from here.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "moe/checked.h"
#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/gguf.h"
#include "moe/file_io.h"
#include "moe/tokenizer.h"
#include "tools/command.h"

namespace moe::tools {

struct TokenizeOptions {
    std::string dir, text, file, ids;
    bool text_given = false, json = false, special = false;
};

static std::vector<int32_t> parse_ids(const std::string& s) {
    std::vector<int32_t> ids;
    size_t p = 0;
    while (p <= s.size()) {
        size_t c = s.find(',', p);
        if (c == std::string::npos) c = s.size();
        std::string item = s.substr(p, c - p);
        while (!item.empty() && item.front() == ' ') item.erase(0, 1);
        while (!item.empty() && item.back() == ' ') item.pop_back();
        ids.push_back((int32_t)parse_int(item, fmt::format("--ids (item {})", ids.size() + 1),
                                         Range::in(0, 2147483647)));
        p = c + 1;
    }
    return ids;
}

static std::unique_ptr<Tokenizer> open_tokenizer(const std::string& dir) {
    if (is_gguf_file(dir)) return load_tokenizer(dir);  // the vocabulary in its metadata
    if (!dir_exists(dir)) fail("{}: no such folder; give a model or checkpoint folder", dir);
    bool has_files = false;
    for (const char* f :
         {"vocab.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json"})
        has_files = has_files || file_exists(dir + "/" + f);
    // A run folder holds its tokenizer in best/ (or latest/).
    if (!has_files && (dir_exists(dir + "/best") || dir_exists(dir + "/latest")))
        return load_tokenizer(resolve_checkpoint_dir(dir));
    return load_tokenizer(dir);
}

void run_tokenize(const TokenizeOptions& o) {
    int n_src = o.text_given + !o.file.empty() + !o.ids.empty();
    if (n_src != 1) usage_fail("moe tokenize: give exactly one of --text, --file, --ids");
    if (o.special && !o.ids.empty())
        usage_fail("moe tokenize: --special adds BOS/EOS when encoding; not with --ids");
    std::unique_ptr<Tokenizer> tok = open_tokenizer(o.dir);
    const SpecialTokens& sp = tok->special();
    if (!o.ids.empty()) {
        std::vector<int32_t> ids = parse_ids(o.ids);
        std::string text;
        try {
            text = tok->decode(ids);
        } catch (const Error& e) {
            fail("--ids: {}", e.what());
        }
        if (o.json)
            std::printf("%s\n", nlohmann::json({{"text", text}, {"n", ids.size()}})
                                    .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                                    .c_str());
        else
            std::fwrite(text.data(), 1, text.size(), stdout);
        return;
    }
    std::string text = o.text_given ? o.text : read_file(o.file);
    std::vector<int32_t> ids;
    try {
        ids = tok->encode(text);
    } catch (const Error& e) {
        fail("{}: {}", o.text_given ? "--text" : o.file, e.what());
    }
    // What moe eval/generate feed the model: BOS first and EOS last when the config says so.
    if (o.special && sp.add_bos) ids.insert(ids.begin(), sp.bos);
    if (o.special && sp.add_eos) ids.push_back(sp.eos[0]);
    if (o.json) {
        nlohmann::json j = {{"ids", ids},
                            {"n", ids.size()},
                            {"tokenizer", tok->kind()},
                            {"vocab_size", tok->vocab_size()},
                            {"bos", sp.bos},
                            {"eos", sp.eos},
                            {"add_bos", sp.add_bos}};
        std::printf("%s\n", j.dump().c_str());
    } else {
        std::string line;
        for (size_t i = 0; i < ids.size(); i++) line += (i ? " " : "") + std::to_string(ids[i]);
        std::printf("%s\n", line.c_str());
    }
}

static void register_tokenize(CLI::App& app) {
    auto o = std::make_shared<TokenizeOptions>();
    CLI::App* c = app.add_subcommand(
        "tokenize",
        "Encode a text with a folder's tokenizer (Hugging Face tokenizer.json / tokenizer.model, "
        "or a moe checkpoint's), or decode ids.\n"
        "Examples: moe tokenize models/Qwen1.5-MoE-A2.7B --text \"Hello world\" --json\n"
        "          moe tokenize runs/shakespeare --file data/tinyshakespeare.txt\n"
        "          moe tokenize models/Mixtral-8x7B-v0.1 --ids 1,22557,1526");
    c->add_option("dir", o->dir, "model folder, checkpoint folder or run folder")->required();
    c->add_option("--text", o->text, "text to encode, taken as is (no escapes)")
        ->each([o](const std::string&) { o->text_given = true; });
    c->add_option("--file", o->file, "encode this file's bytes");
    c->add_option("--ids", o->ids, "decode these comma-separated ids instead");
    c->add_flag("--special", o->special,
                "add BOS/EOS as tokenizer_config.json says (what the model is fed)");
    c->add_flag("--json", o->json,
                "one JSON object: {\"ids\": [...], \"n\": N, ...} or {\"text\": ..., \"n\": N}");
    c->callback([o]() { run_tokenize(*o); });
}

static RegisterCommand reg("tokenize", register_tokenize);

}  // namespace moe::tools
