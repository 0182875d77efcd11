// moe inspect: which experts take which tokens.
//   moe inspect CKPT --text "..." [--layer L] [--html out.html]      per token and layer
//   moe inspect CKPT --corpus FILE --by char-class|token [--json]    aggregated over a corpus
//   moe inspect --trace FILE [--by ...]                              a `moe generate --trace` file
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/report.h"
#include "moe/tokenizer.h"
#include "moe/hf_model.h"
#include "tools/checked_flags.h"
#include "tools/hf_tools.h"
#include "tools/command.h"

namespace moe::tools {

struct InspectOptions {
    std::string ckpt, text, corpus, trace, html, by, color = "auto";
    int layer = -1;
    int max_tokens = 20000;
    int top = 8;
    bool json = false;
};

static std::string routing_json(const std::vector<TokenRouting>& r) {
    nlohmann::json a = nlohmann::json::array();
    for (auto& t : r) {  // the trace format of docs/metrics.md, plus "kept"
        nlohmann::json ls = nlohmann::json::array();
        for (auto& c : t.layers)
            ls.push_back({{"layer", c.layer},
                          {"experts", c.experts},
                          {"weights", c.weights},
                          {"kept", std::vector<int>(c.kept.begin(), c.kept.end())}});
        a.push_back({{"pos", t.pos}, {"token", t.token}, {"text", t.text}, {"layers", ls}});
    }
    return nlohmann::json({{"tokens", a}})
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// --text "ROMEO:\nBut soft": shells pass \n through as two characters; read \n, \t and \\ as
// the characters a user means.
static std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '\\' && i + 1 < s.size()) {
            char n = s[i + 1];
            if (n == 'n' || n == 't' || n == '\\') {
                out += n == 'n' ? '\n' : n == 't' ? '\t' : '\\';
                i++;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}

void run_inspect(const InspectOptions& o) {
    int n_src = !o.text.empty() + !o.corpus.empty() + !o.trace.empty();
    if (n_src != 1) usage_fail("moe inspect: give exactly one of --text, --corpus, --trace");
    if (o.trace.empty() && o.ckpt.empty())
        usage_fail(
            "moe inspect: --text and --corpus need a checkpoint (moe inspect CKPT --text ...)");
    if (!o.trace.empty() && !o.ckpt.empty())
        usage_fail("moe inspect: --trace reads its routing from the file; give no checkpoint");
    bool color = o.color == "always" || (o.color == "auto" && isatty(1) && !o.json);

    std::vector<TokenRouting> routing;
    std::vector<std::string> vocab_text;
    int n_experts = 0;
    std::string title, tok_kind = "char";
    if (!o.trace.empty()) {
        int skipped = 0;
        routing = read_trace(o.trace, &skipped);
        if (skipped)
            std::fprintf(stderr, "moe inspect: %s: skipped %d incomplete line(s)\n",
                         o.trace.c_str(), skipped);
        title = "routing trace " + o.trace;
        if (o.max_tokens > 0 && (int)routing.size() > o.max_tokens) routing.resize(o.max_tokens);
    } else if (is_hf_model_dir(o.ckpt)) {
        // A Hugging Face folder: its tokenizer, chunks of up to 512 tokens from an empty cache.
        auto model = load_hf_model(o.ckpt);
        std::unique_ptr<Tokenizer> tok = load_tokenizer(o.ckpt);
        tok_kind = tok->kind();
        n_experts = model->config().n_experts;
        for (int v = 0; v < tok->vocab_size(); v++) vocab_text.push_back(tok->piece(v));
        std::string text = o.corpus.empty() ? unescape(o.text) : read_file(o.corpus);
        if (text.empty()) fail("--corpus {}: is empty; give a text file", o.corpus);
        const size_t cap = (size_t)std::max(o.max_tokens, 1) * 16;
        if (o.max_tokens > 0 && text.size() > cap) text.resize(cap);
        std::vector<int32_t> ids;
        try {
            if (tok->special().add_bos && tok->special().bos >= 0)
                ids.push_back(tok->special().bos);
            std::vector<int32_t> body = tok->encode(text);
            ids.insert(ids.end(), body.begin(), body.end());
        } catch (const Error& e) {
            fail("{}: {}", o.corpus.empty() ? std::string("--text") : "--corpus " + o.corpus,
                 e.what());
        }
        if (o.max_tokens > 0 && (int)ids.size() > o.max_tokens) ids.resize(o.max_tokens);
        routing = route_ids_hf(*model, ids, [&](int32_t id) { return tok->piece(id); }, 512);
        title = (o.corpus.empty() ? std::string("routing of --text") : "routing of " + o.corpus) +
                " through " + o.ckpt;
    } else {
        LoadedModel lm = load_model(o.ckpt);
        tok_kind = lm.tokenizer->kind();
        n_experts = lm.model->config().moe.n_experts;
        for (int v = 0; v < lm.tokenizer->vocab_size(); v++)
            vocab_text.push_back(lm.tokenizer->piece(v));
        std::string text = unescape(o.text);
        if (!o.corpus.empty()) {
            text = read_file(o.corpus);
            if (text.empty()) fail("--corpus {}: is empty; give a text file", o.corpus);
            // Route only what --max-tokens keeps: cut the text early (at a line end) when it is
            // far longer, so encoding a big corpus does not dominate.
            size_t cap = (size_t)std::max(o.max_tokens, 1) * 16;
            if (o.max_tokens > 0 && text.size() > cap) {
                size_t nl = text.find('\n', cap);
                text.resize(nl == std::string::npos ? text.size() : nl + 1);
            }
        }
        try {
            // A corpus goes 16 chunks per forward: same routing for token-choice dropless
            // layers, much faster than one chunk at a time.
            routing = route_text(*lm.model, *lm.tokenizer, text,
                                 o.corpus.empty() ? -1 : o.max_tokens, o.corpus.empty() ? 1 : 16);
        } catch (const Error& e) {
            fail("{}: {}", o.corpus.empty() ? std::string("--text") : "--corpus " + o.corpus,
                 e.what());
        }
        title = o.corpus.empty() ? "routing of --text through " + lm.dir
                                 : "routing of " + o.corpus + " through " + lm.dir;
    }

    bool aggregate = !o.corpus.empty() || !o.by.empty();
    if (aggregate) {
        std::string by = !o.by.empty() ? o.by : (tok_kind == "char" ? "char-class" : "token");
        RoutingAggregate a = aggregate_routing(routing, vocab_text, n_experts, by);
        if (!o.html.empty()) {
            write_file_atomic(o.html, aggregate_html(a, o.layer, o.top, title + " by " + by));
            std::fprintf(stderr, "moe inspect: wrote %s\n", o.html.c_str());
        }
        if (o.json)
            std::printf("%s\n", aggregate_json(a, o.layer, o.top).c_str());
        else
            std::fputs(aggregate_text(a, o.layer, o.top).c_str(), stdout);
        return;
    }
    if (!o.html.empty()) {
        write_file_atomic(o.html, routing_html(routing, o.layer, title));
        std::fprintf(stderr, "moe inspect: wrote %s\n", o.html.c_str());
    }
    if (o.json)
        std::printf("%s\n", routing_json(routing).c_str());
    else
        std::fputs(routing_terminal(routing, o.layer, color).c_str(), stdout);
}

static void register_inspect(CLI::App& app) {
    auto o = std::make_shared<InspectOptions>();
    CLI::App* c = app.add_subcommand(
        "inspect",
        "Show which experts take which tokens: per token (--text, --trace) or aggregated over a "
        "corpus (--corpus, --by).\n"
        "Examples: moe inspect runs/shakespeare --text \"ROMEO:\\nBut soft\"\n"
        "          moe inspect runs/shakespeare --corpus data/tinyshakespeare.txt --by "
        "char-class --html classes.html\n"
        "          moe inspect --trace gen.trace.jsonl");
    c->add_option("ckpt", o->ckpt, "checkpoint folder, or a run folder (its best checkpoint)");
    c->add_option("--text", o->text,
                  "text to route, token by token (\\n and \\t read as "
                  "newline and tab)");
    c->add_option("--corpus", o->corpus, "text file to aggregate routing over");
    c->add_option("--trace", o->trace, "routing trace written by `moe generate --trace`");
    add_checked(c, "--layer", o->layer, Range::in(-1, 1023), "only this MoE layer (-1: all)");
    c->add_option("--html", o->html, "also write a self-contained HTML page here");
    add_choice(c, "--by", o->by, "char-class|token",
               "aggregate by (default for --corpus: char-class for a char tokenizer, else token)");
    add_checked(c, "--max-tokens", o->max_tokens, Range::in(0, 1 << 24),
                "route at most this many tokens (--corpus, --trace; 0: no limit)");
    add_checked(c, "--top", o->top, Range::in(1, 1000), "top tokens listed per expert");
    c->add_option("--color", o->color, "auto (when stdout is a terminal), always or never")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "always", "never"}));
    c->add_flag("--json", o->json, "print the result as one JSON object");
    c->callback([o]() { run_inspect(*o); });
}

static RegisterCommand reg("inspect", register_inspect);

}  // namespace moe::tools
