// moe eval: mean cross-entropy of a checkpoint over a validation split, cut into consecutive
// non-overlapping windows of block_size + 1 tokens, each predicting its last block_size tokens.
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "data/token_file.h"
#include "moe/checked.h"
#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/runtime.h"
#include "moe/trainer.h"
#include "moe/hf_model.h"
#include "moe/safetensors.h"
#include "tools/checked_flags.h"
#include "tools/hf_tools.h"
#include "tools/command.h"

namespace moe::tools {

struct EvalOptions {
    std::string ckpt, data, split = "auto", prompt_ids, dump_logits;
    int batch = 32, threads = 0, block = 0;
    bool json = false;
};

// A Hugging Face folder: --data FILE (encoded with the folder's tokenizer, --split all by
// default: such a model has no training split) in windows of --block + 1 tokens, or --prompt-ids
// with --dump-logits (one forward; logits [S, V] to a safetensors file, for the PyTorch peer).
static int run_eval_hf(const EvalOptions& o) {
    auto model = load_hf_model(o.ckpt);
    const HfConfig& c = model->config();
    if (!o.prompt_ids.empty()) {
        if (!o.data.empty()) usage_fail("--prompt-ids: give either --data or --prompt-ids");
        std::vector<int32_t> ids = parse_prompt_ids(o.prompt_ids, c.vocab_size, "--prompt-ids");
        if ((int64_t)ids.size() > c.max_positions)
            fail("--prompt-ids: {} ids, more than the model's context of {}", ids.size(),
                 c.max_positions);
        print_hf_summary(*model);
        const float* logits = model->cache_feed(ids.data(), (int)ids.size(), true);
        double loss = 0;
        for (size_t t = 0; t + 1 < ids.size(); t++) {
            const float* z = logits + t * c.vocab_size;
            double mx = z[0], sum = 0;
            for (int v = 1; v < c.vocab_size; v++) mx = std::max(mx, (double)z[v]);
            for (int v = 0; v < c.vocab_size; v++) sum += std::exp((double)z[v] - mx);
            loss += mx + std::log(sum) - z[ids[t + 1]];
        }
        if (ids.size() > 1) loss /= (double)(ids.size() - 1);
        if (!o.dump_logits.empty()) {
            SafetensorsWriter w;
            w.add("logits", {(int64_t)ids.size(), (int64_t)c.vocab_size}, logits);
            w.save(o.dump_logits);
        }
        std::printf("%s on %zu ids: loss %.6f over %zu predicted tokens\n", o.ckpt.c_str(),
                    ids.size(), loss, ids.size() - 1);
        if (o.json)
            std::printf("%s\n", nlohmann::json({{"val_loss", loss},
                                                 {"tokens", ids.size() - 1},
                                                 {"checkpoint", o.ckpt}})
                                    .dump()
                                    .c_str());
        return 0;
    }
    if (!o.dump_logits.empty()) usage_fail("--dump-logits: needs --prompt-ids");
    if (o.data.empty()) usage_fail("{}: give --data FILE (a text to evaluate on)", o.ckpt);
    std::unique_ptr<Tokenizer> tok = load_tokenizer(o.ckpt);
    std::string text = read_corpus_text(o.data);
    std::string split = o.split == "auto" ? "all" : o.split, what = o.data;
    if (split != "all") {
        std::string tr, va;
        split_text(text, 0.1, &tr, &va);
        text = split == "val" ? va : tr;
        what += " (" + split + " split: the last 10% is val)";
    }
    std::vector<int32_t> ids;
    if (tok->special().add_bos && tok->special().bos >= 0) ids.push_back(tok->special().bos);
    try {
        std::vector<int32_t> body = tok->encode(text);
        ids.insert(ids.end(), body.begin(), body.end());
    } catch (const Error& e) {
        fail("{}: {}", o.data, e.what());
    }
    const int block = o.block > 0 ? o.block : std::min(c.max_positions - 1, 512);
    if (block > c.max_positions)  // a window feeds `block` tokens (its last is only a target)
        usage_fail("--block: {} positions exceed the model's context of {}", block,
                   c.max_positions);
    if (ids.size() < (size_t)block + 1)
        fail("{}: {} tokens, fewer than one window of --block + 1 = {}; give a longer text or a "
             "smaller --block",
             o.data, ids.size(), block + 1);
    print_hf_summary(*model);
    const double t0 = now_seconds();
    int64_t n_pred = 0;
    double loss = hf_eval_windows(*model, ids, block, &n_pred);
    const double dt = now_seconds() - t0;
    std::printf("%s on %s: val loss %.4f over %lld predicted tokens (%lld windows of %d), %.1f s\n",
                o.ckpt.c_str(), what.c_str(), loss, (long long)n_pred, (long long)(n_pred / block),
                block + 1, dt);
    if (o.json)
        std::printf("%s\n", nlohmann::json({{"val_loss", loss},
                                             {"tokens", n_pred},
                                             {"checkpoint", o.ckpt},
                                             {"data", what},
                                             {"block", block},
                                             {"seconds", dt}})
                                .dump()
                                .c_str());
    return 0;
}

static std::string parent_dir(const std::string& p) {
    auto s = p.find_last_of('/');
    return s == std::string::npos ? "." : p.substr(0, s);
}

// Tokens to evaluate: --data (a token file: all of it; a text: its validation split unless
// --split says otherwise), else the run folder's data/val.tok, else the training config's text.
static std::vector<int32_t> eval_tokens(const EvalOptions& o, const LoadedModel& lm,
                                        std::string* what) {
    const Tokenizer& tok = *lm.tokenizer;
    const int V = lm.model->config().vocab_size;
    double val_fraction = 0.1;
    std::string data = o.data;
    if (file_exists(lm.dir + "/trainer_state.json")) {
        auto st = load_trainer_state(lm.dir);
        if (st.contains("config")) {
            const std::string where = lm.dir + "/trainer_state.json: config";
            val_fraction = json_num(st["config"], "val_fraction", where, Range::in_open(0, 1), 0.1);
            if (data.empty()) {
                std::string vt = parent_dir(lm.dir) + "/data/val.tok";
                if (file_exists(vt))
                    data = vt;
                else
                    data = json_str(st["config"], "data", where, Range(), "");
            }
        }
    }
    if (data.empty()) usage_fail("{}: has no training record; give --data FILE", lm.dir);
    if (is_token_file(data)) {
        TokenFile t = read_token_file(data);
        if (t.vocab != V)
            fail(
                "{}: token file has vocab {} but the model has {}; give a token file made with "
                "this model's tokenizer",
                data, t.vocab, V);
        *what = data;
        return t.ids;
    }
    std::string text = read_corpus_text(data);
    std::string split = o.split == "auto" ? "val" : o.split;
    std::string tr, va;
    split_text(text, val_fraction, &tr, &va);
    *what = data + " (" + split + " split)";
    try {
        if (split == "val") return tok.encode(va);
        if (split == "train") return tok.encode(tr);
        if (split == "all") return tok.encode(text);
    } catch (const Error& e) {
        fail("{}: {}; give text the model's tokenizer knows, or a token file", data, e.what());
    }
    usage_fail("--split: '{}' is not allowed (expected one of: auto | val | train | all)", o.split);
}

static int run_eval(const EvalOptions& o) {
    set_threads(o.threads);
    if (is_hf_model_dir(o.ckpt)) return run_eval_hf(o);
    if (!o.prompt_ids.empty() || !o.dump_logits.empty())
        usage_fail("--prompt-ids/--dump-logits: only for Hugging Face model folders");
    LoadedModel lm = load_model(o.ckpt);
    std::string what;
    std::vector<int32_t> toks = eval_tokens(o, lm, &what);
    int S = lm.model->config().block_size;
    if (o.block > S)
        usage_fail("--block: {} is longer than the model's block_size {}", o.block, S);
    if (o.block > 0) S = o.block;
    const double t0 = now_seconds();
    int64_t n_pred = 0;
    double loss = 0;
    try {
        loss = evaluate_windows(*lm.model, toks, S, o.batch, &n_pred);
    } catch (const Error& e) {
        fail("{}: {}", what, e.what());
    }
    const double dt = now_seconds() - t0;
    std::printf("%s on %s: val loss %.4f over %lld predicted tokens (%lld windows of %d), %.1f s\n",
                lm.dir.c_str(), what.c_str(), loss, (long long)n_pred, (long long)(n_pred / S),
                S + 1, dt);
    if (o.json) {
        nlohmann::json j = {{"val_loss", loss},
                            {"tokens", n_pred},
                            {"checkpoint", lm.dir},
                            {"data", what},
                            {"seconds", dt}};
        std::printf("%s\n", j.dump().c_str());
    }
    return 0;
}

static void register_eval(CLI::App& app) {
    auto o = std::make_shared<EvalOptions>();
    CLI::App* sub = app.add_subcommand(
        "eval",
        "Mean cross-entropy of a checkpoint on the validation split (consecutive windows).\n"
        "Example: moe eval runs/shakespeare-char-moe --json");
    sub->add_option("ckpt", o->ckpt,
                    "checkpoint folder, run folder (its best checkpoint), or Hugging Face folder")
        ->required();
    sub->add_option("--data", o->data, "text or token file (default: the run's validation split)");
    add_choice(sub, "--split", o->split, "auto|val|train|all",
               "for a text file: which split (auto: val)");
    add_checked(sub, "--block", o->block, Range::in(0, 1 << 24),
                "window length N (windows of N+1 tokens; 0: the model's block size, or 512)");
    sub->add_option("--prompt-ids", o->prompt_ids,
                    "Hugging Face folders: evaluate these ids (1,2,3) instead of --data");
    sub->add_option("--dump-logits", o->dump_logits,
                    "with --prompt-ids: write the logits [S, V] as tensor 'logits' to FILE "
                    "(safetensors)");
    add_checked(sub, "--batch", o->batch, Range::in(1, 1 << 16), "windows per forward");
    add_checked(sub, "--threads", o->threads, Range::in(0, 4096), "threads (0: all cores)");
    sub->add_flag("--json", o->json, "last stdout line: {\"val_loss\": ...}");
    sub->callback([o]() { exit_code() = run_eval(*o); });
}

static RegisterCommand reg_eval("eval", register_eval);

}  // namespace moe::tools
