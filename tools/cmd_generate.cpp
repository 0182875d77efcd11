// moe generate: sample text from a checkpoint with the KV cache (prefill, then one token at a
// time); --trace writes each token's routing (docs/metrics.md).
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/hf_model.h"
#include "moe/process_group.h"
#include "moe/runtime.h"
#include "tools/checked_flags.h"
#include "tools/command.h"
#include "tools/hf_tools.h"
#include "train/generate.h"

namespace moe::tools {

struct GenerateOptions {
    std::string ckpt, prompt = "\n", prompt_ids, trace;
    SampleOptions sample;
    int threads = 0;
    bool json = false, stats = false, ignore_eos = false, prompt_given = false;
};

static FILE* open_trace(const std::string& path) {
    if (path.empty()) return nullptr;
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) fail("--trace {}: cannot create: {}; give a writable file path", path, std::strerror(errno));
    return f;
}

// A Hugging Face folder (src/infer/): mapped weights, the folder's tokenizer, EOS stops.
static int run_generate_hf(const GenerateOptions& o) {
    auto model = load_hf_model(o.ckpt);
    const HfConfig& c = model->config();
    std::unique_ptr<Tokenizer> tok;
    std::string tok_error;
    try {
        tok = load_tokenizer(o.ckpt);
    } catch (const Error& e) {
        tok_error = e.what();
    }
    std::vector<int32_t> prompt;
    if (!o.prompt_ids.empty()) {
        prompt = parse_prompt_ids(o.prompt_ids, c.vocab_size, "--prompt-ids");
    } else {
        if (!tok) {
            // (the GGUF reader's messages already name the flag)
            if (tok_error.find("--prompt-ids") != std::string::npos) fail("{}", tok_error);
            fail("{}; give --prompt-ids to run without a tokenizer", tok_error);
        }
        if (o.prompt.empty()) usage_fail("--prompt: is empty; give some text to continue");
        // BOS first when the tokenizer's config says so (Mixtral yes, Qwen no), as HF does.
        if (tok->special().add_bos && tok->special().bos >= 0) prompt.push_back(tok->special().bos);
        std::vector<int32_t> ids;
        try {
            ids = tok->encode(o.prompt);
        } catch (const Error& e) {
            fail("--prompt: {}", e.what());
        }
        prompt.insert(prompt.end(), ids.begin(), ids.end());
    }
    if ((int64_t)prompt.size() > c.max_positions)
        fail("{}: {} tokens, more than the model's context of {} (max_position_embeddings); "
             "give a shorter prompt",
             o.prompt_ids.empty() ? "--prompt" : "--prompt-ids", prompt.size(), c.max_positions);
    FILE* trace = open_trace(o.trace);
    print_hf_summary(*model);
    if (o.prompt_ids.empty()) std::fputs(o.prompt.c_str(), stdout);
    std::fflush(stdout);
    // End-of-sequence ids: generation_config.json / tokenizer_config.json, else config.json.
    std::vector<int32_t> eos = c.eos_token_ids;
    if (tok && !tok->special().eos.empty()) eos = tok->special().eos;
    if (o.ignore_eos) eos.clear();
    std::unique_ptr<StreamDecoder> stream;
    if (tok) stream = std::make_unique<StreamDecoder>(*tok);
    const HfRunCounters before = hf_counters(*model);
    std::string stop;
    std::vector<int32_t> out;
    try {
        out = generate_hf(
            *model, prompt, o.sample, eos,
            [&](int32_t id) {
                if (stream && id < tok->vocab_size())  // never half a UTF-8 character
                    std::fputs(stream->push(id).c_str(), stdout);
                else if (stream)
                    return;  // a padded embedding row the tokenizer has no text for
                else
                    std::printf(" %d", id);
                std::fflush(stdout);
            },
            &stop, trace,
            [&](int32_t id) { return tok ? tok->piece(id) : std::to_string(id); });
    } catch (...) {
        if (trace) std::fclose(trace);
        throw;
    }
    const double dt = now_seconds() - before.t;
    if (trace && std::fclose(trace) != 0) fail("cannot write {}: {}", o.trace, std::strerror(errno));
    std::string text;
    if (tok) {
        std::fputs(stream->flush().c_str(), stdout);
        text = generated_text(*tok, out);
    }
    std::printf("\n");
    std::fflush(stdout);
    std::fprintf(stderr, "generate: %zu prompt + %zu new tokens in %.2f s (%.1f tokens/s), stop: %s\n",
                 prompt.size(), out.size(), dt, out.size() / std::max(1e-9, dt), stop.c_str());
    nlohmann::json stats;
    if (o.stats || o.json) stats = hf_stats(*model, before, o.stats);
    if (o.json) {
        nlohmann::json j = {{"prompt", o.prompt_ids.empty() ? o.prompt : o.prompt_ids},
                            {"text", text},
                            {"prompt_tokens", prompt.size()},
                            {"prompt_ids", prompt},
                            {"tokens", out.size()},
                            {"token_ids", out},
                            {"stop", stop},
                            {"tokens_per_s", out.size() / std::max(1e-9, dt)},
                            {"checkpoint", o.ckpt},
                            {"stats", stats}};
        std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    return 0;
}

// Under mpirun (docs/distributed.md): every rank loads its share of each MoE layer's experts and
// runs the same generation on the same tokens; the layers all-gather the expert outputs, so each
// rank computes the single-process logits and draws the same tokens. Rank 0 prints.
static int run_generate_ckpt(const GenerateOptions& o, const ParallelGroups& g) {
    const int W = g.world_size();
    ExpertShard shard;
    if (W > 1) {
        const ModelConfig c = load_model_config(resolve_checkpoint_dir(o.ckpt));
        if (!c.any_moe())
            fail(
                "{}: a dense model; generate under mpirun splits MoE experts over the ranks: run "
                "it in one process",
                o.ckpt);
        if (c.moe.n_experts % W != 0)
            fail(
                "mpirun -np {}: the model's {} experts per layer do not split over {} ranks; use "
                "a number of ranks dividing {}",
                W, c.moe.n_experts, W, c.moe.n_experts);
        shard = {W, g.world_rank()};
    }
    LoadedModel lm = load_model(o.ckpt, shard);
    if (W > 1)
        for (int l = 0; l < lm.model->config().n_layers; l++)
            if (MoeLayer* ml = lm.model->moe_layer(l))
                ml->set_parallel(g, /*mean_grads=*/false, /*replicated_tokens=*/true);
    std::vector<int32_t> prompt;
    if (!o.prompt_ids.empty()) {
        prompt = parse_prompt_ids(o.prompt_ids, lm.model->config().vocab_size, "--prompt-ids");
    } else {
        if (o.prompt.empty()) usage_fail("--prompt: is empty; give some text to continue");
        try {
            prompt = lm.tokenizer->encode(o.prompt);
        } catch (const Error& e) {
            fail("--prompt: {}; use only characters of the model's vocabulary", e.what());
        }
    }
    if (prompt.empty()) fail("--prompt: encodes to no tokens; give other text");
    FILE* trace = open_trace(o.trace);
    if (o.prompt_ids.empty()) std::fputs(o.prompt.c_str(), stdout);
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
    if (g.world_rank() == 0)
        std::fprintf(stderr, "generate: %zu prompt + %zu new tokens in %.2f s (%.1f tokens/s)%s\n",
                     prompt.size(), out.size(), dt, out.size() / std::max(1e-9, dt),
                     W > 1 ? fmt::format(", experts over {} ranks", W).c_str() : "");
    if (o.json) {
        nlohmann::json j = {{"prompt", o.prompt},
                            {"text", generated_text(tok, out)},
                            {"prompt_tokens", prompt.size()},
                            {"tokens", out.size()},
                            {"token_ids", out},
                            {"tokens_per_s", out.size() / std::max(1e-9, dt)},
                            {"checkpoint", lm.dir}};
        std::printf("%s\n",
                    j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    return 0;
}

static int run_generate(const GenerateOptions& o) {
    set_threads(o.threads);
    if (!o.prompt_ids.empty() && o.prompt_given)
        usage_fail("--prompt-ids: give either --prompt or --prompt-ids, not both");
    const bool mpi = launched_by_mpirun();
    if (is_hf_model_dir(o.ckpt)) {
        if (mpi)
            fail(
                "{}: a Hugging Face folder runs in one process (its engine maps the weights); "
                "start moe generate without mpirun",
                o.ckpt);
        return run_generate_hf(o);
    }
    if (o.stats) usage_fail("--stats: only for Hugging Face model folders (mapped weights)");
    // One expert group of every rank; a rank that fails ends the job (no rank left waiting).
    ParallelGroups g = init_parallel(mpi, /*expert_parallel=*/0);
    const int rank = g.world_rank();
    if (rank != 0 && !std::freopen("/dev/null", "w", stdout))
        fail("cannot silence stdout of rank {}", rank);
    int rc = 0;
    try {
        GenerateOptions mine = o;
        if (rank != 0) mine.trace.clear();  // rank 0 writes the trace
        rc = run_generate_ckpt(mine, g);
    } catch (const Error& e) {
        if (g.world_size() > 1) g.world->abort(e.what());
        throw;
    }
    finalize_parallel();
    return rc;
}

static void register_generate(CLI::App& app) {
    auto o = std::make_shared<GenerateOptions>();
    CLI::App* sub = app.add_subcommand(
        "generate",
        "Generate text from a checkpoint or a Hugging Face MoE folder (KV cache; temperature 0 =\n"
        "greedy).\n"
        "Example: moe generate runs/shakespeare-char-moe --prompt \"ROMEO:\" --max-tokens 300 "
        "--temperature 0.8 --top-k 40");
    sub->add_option("ckpt", o->ckpt,
                    "checkpoint folder, run folder (its best checkpoint), or Hugging Face folder")
        ->required();
    sub->add_option("--prompt", o->prompt, "text to continue (default: a newline)")
        ->each([o](const std::string&) { o->prompt_given = true; });
    sub->add_option("--prompt-ids", o->prompt_ids,
                    "token ids to continue, e.g. 1,2,3 (bypasses the tokenizer)");
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
    sub->add_flag("--json", o->json,
                  "last stdout line: one JSON object (text, token_ids, tokens/s)");
    sub->add_flag("--stats", o->stats,
                  "Hugging Face folders: experts used per layer, mapped/resident memory, page-ins");
    sub->add_flag("--ignore-eos", o->ignore_eos,
                  "Hugging Face folders: do not stop at the end-of-sequence id");
    sub->callback([o]() { exit_code() = run_generate(*o); });
}

static RegisterCommand reg_generate("generate", register_generate);

}  // namespace moe::tools
