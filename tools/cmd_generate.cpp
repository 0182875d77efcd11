// moe generate: sample text from a checkpoint with the KV cache (prefill, then one token at a
// time); --trace writes each token's routing (docs/metrics.md).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/runtime.h"
#include "tools/checked_flags.h"
#include "tools/command.h"
#include "train/generate.h"

namespace moe::tools {

struct GenerateOptions {
    std::string ckpt, prompt = "\n", trace;
    SampleOptions sample;
    int threads = 0;
    bool json = false;
};

static int run_generate(const GenerateOptions& o) {
    set_threads(o.threads);
    LoadedModel lm = load_model(o.ckpt);
    if (o.prompt.empty()) usage_fail("--prompt: is empty; give some text to continue");
    std::vector<int32_t> prompt;
    try {
        prompt = lm.tokenizer->encode(o.prompt);
    } catch (const Error& e) {
        fail("--prompt: {}; use only characters of the model's vocabulary", e.what());
    }
    if (prompt.empty()) fail("--prompt: encodes to no tokens; give other text");
    FILE* trace = nullptr;
    if (!o.trace.empty()) {
        trace = std::fopen(o.trace.c_str(), "w");
        if (!trace)
            fail("--trace {}: cannot create: {}; give a writable file path", o.trace,
                 std::strerror(errno));
    }
    std::fputs(o.prompt.c_str(), stdout);
    std::fflush(stdout);
    const Tokenizer& tok = *lm.tokenizer;
    const double t0 = now_seconds();
    std::vector<int32_t> out;
    try {
        out = generate(
            *lm.model, tok, prompt, o.sample,
            [&](int32_t id) {
                if (tok.kind() == "char") {  // SentencePiece pieces are decoded at the end
                    std::fputs(tok.piece(id).c_str(), stdout);
                    std::fflush(stdout);
                }
            },
            trace);
    } catch (...) {
        if (trace) std::fclose(trace);
        throw;
    }
    const double dt = now_seconds() - t0;
    if (trace && std::fclose(trace) != 0)
        fail("cannot write {}: {}", o.trace, std::strerror(errno));
    std::string text = tok.decode(out);
    if (tok.kind() != "char") std::fputs(text.c_str(), stdout);
    std::printf("\n");
    std::fflush(stdout);  // the sample before the figures, also when both go to one file
    std::fprintf(stderr, "generate: %zu prompt + %zu new tokens in %.2f s (%.1f tokens/s)\n",
                 prompt.size(), out.size(), dt, out.size() / std::max(1e-9, dt));
    if (o.json) {
        nlohmann::json j = {{"prompt", o.prompt},
                            {"text", text},
                            {"prompt_tokens", prompt.size()},
                            {"tokens", out.size()},
                            {"tokens_per_s", out.size() / std::max(1e-9, dt)},
                            {"checkpoint", lm.dir}};
        std::printf("%s\n",
                    j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    return 0;
}

static void register_generate(CLI::App& app) {
    auto o = std::make_shared<GenerateOptions>();
    CLI::App* sub = app.add_subcommand(
        "generate",
        "Generate text from a checkpoint (KV cache; temperature 0 = greedy).\n"
        "Example: moe generate runs/shakespeare-char-moe --prompt \"ROMEO:\" --max-tokens 300 "
        "--temperature 0.8 --top-k 40");
    sub->add_option("ckpt", o->ckpt, "checkpoint folder, or run folder (its best checkpoint)")
        ->required();
    sub->add_option("--prompt", o->prompt, "text to continue (default: a newline)");
    add_checked(sub, "--max-tokens", o->sample.max_tokens, Range::in(1, 1 << 20),
                "tokens to generate");
    add_checked(sub, "--temperature", o->sample.temperature, Range::in(0, 1e6),
                "softmax temperature; 0 = greedy");
    add_checked(sub, "--top-k", o->sample.top_k, Range::in(0, 1 << 24),
                "keep the k most likely tokens (0 = off)");
    add_checked(sub, "--top-p", o->sample.top_p, Range{0, 1, /*lo_open=*/true, false},
                "nucleus sampling mass (1 = off)");
    add_checked(sub, "--seed", o->sample.seed, Range::at_least(0), "sampling seed");
    sub->add_option("--trace", o->trace, "write per-token routing as JSON lines to FILE");
    add_checked(sub, "--threads", o->threads, Range::in(0, 4096), "threads (0: all cores)");
    sub->add_flag("--json", o->json, "last stdout line: one JSON object (text, tokens/s)");
    sub->callback([o]() { exit_code() = run_generate(*o); });
}

static RegisterCommand reg_generate("generate", register_generate);

}  // namespace moe::tools
