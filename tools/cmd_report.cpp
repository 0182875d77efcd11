// moe report RUN_DIR [--out FILE.html]: a training run's metrics (and checkpoint, and traces) as
// one self-contained HTML file plus PNG copies of every figure (docs/report.md).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "moe/report.h"
#include "tools/checked_flags.h"
#include "tools/command.h"

namespace moe::tools {

static void register_report(CLI::App& app) {
    auto opt = std::make_shared<ReportOptions>();
    auto json_out = std::make_shared<bool>(false);
    auto no_sim = std::make_shared<bool>(false);
    CLI::App* c = app.add_subcommand(
        "report",
        "Turn a training run into one self-contained HTML report with PNG copies of its figures.\n"
        "Example: moe report runs/shakespeare   (writes runs/shakespeare/report/report.html)");
    c->add_option("run_dir", opt->run_dir, "run folder written by `moe train` (has metrics.jsonl)")
        ->required();
    c->add_option("--out", opt->out,
                  "HTML file to write (default RUN_DIR/report/report.html); "
                  "the PNGs go beside it");
    using R = Range;
    add_checked(c, "--collapse-share", opt->collapse_share, R::in(0, 1),
                "an expert has collapsed when its load share stays below this / E");
    add_checked(c, "--collapse-steps", opt->collapse_steps, R::in(1, 1e9),
                "... for this many consecutive logged steps");
    add_checked(c, "--dominance-share", opt->dominance_share, R::in(0, 1),
                "an expert dominates when its share stays above max(this, 1.5/E)");
    add_checked(c, "--dominance-steps", opt->dominance_steps, R::in(1, 1e9),
                "... for this many consecutive logged steps");
    add_checked(c, "--redundant", opt->redundant, R::in(-1, 1),
                "cosine similarity above which two experts are named redundant");
    add_checked(c, "--probe-tokens", opt->probe_tokens, R::in(1, 1 << 20),
                "tokens of the probe batch for expert output similarity");
    c->add_option("--probe-text", opt->probe_text,
                  "text file for the probe batch (default: the run's validation split)");
    c->add_flag("--no-similarity", *no_sim, "skip the checkpoint's expert similarity section");
    c->add_flag("--json", *json_out, "end stdout with one JSON object of the results");
    c->callback([opt, json_out, no_sim]() {
        opt->similarity = !*no_sim;
        ReportResult r = run_report(*opt);
        if (r.lines_skipped > 0)
            std::fprintf(stderr, "moe report: skipped %d incomplete line(s) of metrics.jsonl\n",
                         r.lines_skipped);
        for (auto& w : r.warnings) std::printf("warning: %s\n", w.c_str());
        if (!r.similarity_note.empty())
            std::printf("note: expert similarity %s\n", r.similarity_note.c_str());
        std::printf("report: %s (%zu figures, PNGs beside it)\n", r.html.c_str(), r.pngs.size());
        if (*json_out) {
            nlohmann::json j = {{"report", r.html},
                                {"pngs", r.pngs},
                                {"lines_used", r.lines_used},
                                {"lines_skipped", r.lines_skipped},
                                {"warnings", r.warnings},
                                {"checkpoint", r.checkpoint},
                                {"similarity_note", r.similarity_note},
                                {"traces", r.n_traces}};
            std::printf("%s\n", j.dump().c_str());
        }
    });
}

static RegisterCommand reg("report", register_report);

}  // namespace moe::tools
