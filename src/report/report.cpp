// `moe report RUN_DIR`: metrics.jsonl (+ the run's checkpoint, + routing traces) -> one
// self-contained HTML file with every figure inlined as SVG, and a PNG copy of each figure
// beside it. docs/report.md explains how to read each figure.
#include "moe/report.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "moe/checked.h"
#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/finetune.h"
#include "moe/model.h"
#include "moe/rng.h"
#include "moe/stats.h"
#include "moe/tokenizer.h"
#include "report/html.h"
#include "report/plot.h"

namespace moe {

namespace fs = std::filesystem;
using report::Figure;
using report::html_escape;
using report::PlotSeries;

std::string find_gnuplot() {
    const char* env = std::getenv("MOE_GNUPLOT");
    if (env && *env) {
        if (access(env, X_OK) != 0)
            fail(
                "MOE_GNUPLOT={} is not an executable; `moe report` draws its figures with "
                "gnuplot: install it with `apt-get install gnuplot-nox` (scripts/setup.sh does)",
                env);
        return env;
    }
    const char* path = std::getenv("PATH");
    std::string p = path ? path : "/usr/bin:/bin";
    size_t start = 0;
    while (start <= p.size()) {
        size_t end = p.find(':', start);
        if (end == std::string::npos) end = p.size();
        std::string dir = p.substr(start, end - start);
        if (!dir.empty()) {
            std::string cand = dir + "/gnuplot";
            if (access(cand.c_str(), X_OK) == 0) return cand;
        }
        start = end + 1;
    }
    fail(
        "gnuplot not found on PATH; `moe report` draws its figures with gnuplot: install it "
        "with `apt-get install gnuplot-nox` (scripts/setup.sh does)");
}

namespace {

struct Page {
    std::vector<Figure> figs;
    std::string body;  // with @@FIG:id@@ placeholders, filled once gnuplot has run
    void add(Figure f, const std::string& caption) {
        body += fmt::format(
            "<figure class=\"fig\" id=\"fig-{}\" data-png=\"{}.png\">@@FIG:{}@@"
            "<figcaption>{}</figcaption></figure>\n",
            f.id, f.id, f.id, caption);
        figs.push_back(std::move(f));
    }
};

Figure line_fig(const std::string& id, const std::string& title, const std::string& ylabel) {
    Figure f;
    f.id = id;
    f.title = title;
    f.xlabel = "step";
    f.ylabel = ylabel;
    return f;
}

PlotSeries series_of(const MetricsLog& log, const std::string& title,
                     double (*get)(const MetricsRow&)) {
    PlotSeries s;
    s.title = title;
    for (auto& r : log.rows) {
        double v = get(r);
        if (std::isfinite(v)) {
            s.x.push_back((double)r.step);
            s.y.push_back(v);
        }
    }
    return s;
}

double last_finite(const std::vector<double>& v) {
    for (size_t i = v.size(); i-- > 0;)
        if (std::isfinite(v[i])) return v[i];
    return NAN;
}

std::string fmt_num(double v, const char* f = "{:.4g}") {
    return std::isfinite(v) ? fmt::format(fmt::runtime(f), v) : std::string("–");
}

// Rows of one layer: steps, load shares [n][E], and the scalar statistics.
struct LayerSeries {
    int layer = 0, E = 0;
    std::vector<int64_t> steps;
    std::vector<std::vector<double>> shares;
    std::vector<double> drop_rate, cv, entropy, top1;
    std::vector<double> logit_max, routing_change;  // NaN where not logged
    std::vector<double> experts_mean;                  // mean experts per token (NaN: not logged)
    std::vector<std::vector<int64_t>> experts_hist;  // tokens by experts used, 0..max
};

LayerSeries layer_series(const MetricsLog& log, int layer) {
    LayerSeries s;
    s.layer = layer;
    for (auto& r : log.rows)
        for (auto& l : r.layers)
            if (l.layer == layer) s.E = std::max(s.E, (int)l.tokens_per_expert.size());
    for (auto& r : log.rows)
        for (auto& l : r.layers) {
            if (l.layer != layer) continue;
            s.steps.push_back(r.step);
            std::vector<double> sh = load_share(l.tokens_per_expert);
            sh.resize(s.E, 0.0);
            s.shares.push_back(sh);
            s.drop_rate.push_back(l.routed > 0 ? (double)l.dropped / (double)l.routed : NAN);
            s.cv.push_back(l.load_cv);
            s.entropy.push_back(l.router_entropy);
            s.top1.push_back(l.mean_top1_weight);
            s.logit_max.push_back(l.router_logit_max);
            s.routing_change.push_back(l.routing_change);
            s.experts_mean.push_back(l.experts_per_token_mean);
            s.experts_hist.push_back(l.experts_per_token);
        }
    return s;
}

// True when the number of experts per token varies (a dynamic router such as top-p, or drops):
// some logged histogram has two non-empty bins. A fixed top-k without drops is a flat line at k,
// said in one sentence instead of two figures.
bool experts_per_token_varies(const std::vector<LayerSeries>& ls) {
    for (auto& s : ls)
        for (auto& h : s.experts_hist) {
            int nonzero = 0;
            for (int64_t v : h) nonzero += v > 0;
            if (nonzero > 1) return true;
        }
    return false;
}

// Histogram of experts per token over training, all MoE layers pooled: x = step (binned like the
// load heatmap), y = number of experts, colour = share of the tokens.
Figure experts_heatmap(const std::vector<LayerSeries>& ls, int max_bins) {
    Figure f;
    f.kind = Figure::Kind::heatmap;
    f.id = "experts-per-token-hist";
    f.title = "experts per token: share of tokens (all MoE layers)";
    f.xlabel = "step";
    f.ylabel = "experts used";
    f.cblabel = "share of tokens";
    std::map<int64_t, std::vector<double>> by_step;  // step -> pooled counts
    size_t nmax = 0;
    for (auto& s : ls)
        for (auto& h : s.experts_hist) nmax = std::max(nmax, h.size());
    for (auto& s : ls)
        for (size_t i = 0; i < s.steps.size(); i++) {
            auto& v = by_step[s.steps[i]];
            v.resize(nmax, 0.0);
            for (size_t n = 0; n < s.experts_hist[i].size(); n++)
                v[n] += (double)s.experts_hist[i][n];
        }
    f.height = std::clamp(120 + 24 * (int)nmax, 220, 420);
    const int nb = (int)std::min<size_t>(by_step.size(), (size_t)std::max(max_bins, 2));
    const double lo = (double)by_step.begin()->first, hi = (double)by_step.rbegin()->first;
    double w = nb > 1 ? (hi - lo) / (nb - 1) : 1.0;
    if (w <= 0) w = 1.0;
    std::vector<double> sum((size_t)nb * nmax, 0.0);
    for (auto& kv : by_step) {
        int b = std::clamp((int)std::lround(((double)kv.first - lo) / w), 0, nb - 1);
        for (size_t n = 0; n < nmax; n++) sum[(size_t)b * nmax + n] += kv.second[n];
    }
    for (int b = 0; b < nb; b++) f.hx.push_back(lo + b * w);
    for (size_t n = 0; n < nmax; n++) f.hy.push_back((double)n);
    f.z.assign(nmax * nb, 0.0);
    int prev = -1;
    for (int b = 0; b < nb; b++) {
        double tot = 0;
        for (size_t n = 0; n < nmax; n++) tot += sum[(size_t)b * nmax + n];
        int src = tot > 0 ? b : prev;  // an empty bin repeats the one before
        if (tot > 0) prev = b;
        if (src < 0) continue;
        double st = 0;
        for (size_t n = 0; n < nmax; n++) st += sum[(size_t)src * nmax + n];
        for (size_t n = 0; n < nmax; n++) f.z[n * nb + b] = sum[(size_t)src * nmax + n] / st;
    }
    f.zmin = 0;
    f.zmax = 1;
    f.labels = false;
    return f;
}

// Load heatmap on a regular step grid: gnuplot's image needs equal cells, and a long run is
// averaged into at most max_bins columns (each bin: the mean share of the logged steps in it).
Figure load_heatmap(const LayerSeries& s, int max_bins) {
    Figure f;
    f.kind = Figure::Kind::heatmap;
    f.id = fmt::format("layer{}-load", s.layer);
    f.title = fmt::format("layer {}: share of token-slots per expert (uniform = {:.3f})", s.layer,
                          1.0 / std::max(s.E, 1));
    f.xlabel = "step";
    f.ylabel = "expert";
    f.cblabel = "load share";
    f.height = std::clamp(120 + 18 * s.E, 220, 420);
    size_t n = s.steps.size();
    int nb = (int)std::min<size_t>(n, (size_t)std::max(max_bins, 2));
    double lo = (double)s.steps.front(), hi = (double)s.steps.back();
    double w = nb > 1 ? (hi - lo) / (nb - 1) : 1.0;
    if (w <= 0) w = 1.0;
    std::vector<double> sum((size_t)nb * s.E, 0.0), cnt(nb, 0.0);
    for (size_t i = 0; i < n; i++) {
        int b = std::clamp((int)std::lround(((double)s.steps[i] - lo) / w), 0, nb - 1);
        for (int e = 0; e < s.E; e++) sum[(size_t)b * s.E + e] += s.shares[i][e];
        cnt[b] += 1;
    }
    for (int b = 0; b < nb; b++) f.hx.push_back(lo + b * w);
    for (int e = 0; e < s.E; e++) f.hy.push_back(e);
    f.z.assign((size_t)s.E * nb, 0.0);
    int prev = -1;
    double zmax = 0;
    for (int b = 0; b < nb; b++) {
        int src = cnt[b] > 0 ? b : prev;  // an empty bin repeats the one before
        if (cnt[b] > 0) prev = b;
        if (src < 0) continue;
        for (int e = 0; e < s.E; e++) {
            double v = sum[(size_t)src * s.E + e] / cnt[src];
            f.z[(size_t)e * nb + b] = v;
            zmax = std::max(zmax, v);
        }
    }
    // Fixed lower end 0; the top at least twice the uniform share so a balanced run looks calm.
    f.zmin = 0;
    f.zmax = std::max(zmax, 2.0 / std::max(s.E, 1));
    return f;
}

Figure sim_heatmap(const std::string& id, const std::string& title, const std::vector<double>& m,
                   int E) {
    Figure f;
    f.kind = Figure::Kind::heatmap;
    f.id = id;
    f.title = title;
    f.xlabel = "expert";
    f.ylabel = "expert";
    f.cblabel = "cosine similarity";
    f.palette = "diverging";
    f.zmin = -1;
    f.zmax = 1;
    f.labels = E <= 12;
    f.square = true;
    f.width = 460;
    f.height = 400;
    for (int e = 0; e < E; e++) f.hx.push_back(e), f.hy.push_back(e);
    f.z = m;
    return f;
}

// Validation text for the probe: --probe-text, else the run's training config (its data file
// and val_fraction: the tail of the corpus is the validation split), else none.
std::string find_probe_text(const ReportOptions& opt, std::string* source,
                            std::string* unknown_symbol) {
    if (!opt.probe_text.empty()) {
        *source = opt.probe_text;
        return read_file(opt.probe_text);
    }
    for (const char* name : {"train_config.json", "config.json", "run.json"}) {
        std::string p = opt.run_dir + "/" + name;
        if (!file_exists(p)) continue;
        auto j = nlohmann::json::parse(read_file(p), nullptr, false);
        if (j.is_discarded() || !j.is_object() || !j.contains("data") || !j["data"].is_string())
            continue;
        // A relative path is relative to where `moe train` ran: try the working directory, then
        // the folders above the run (runs/NAME sits in the project folder).
        std::string data = j["data"].get<std::string>();
        double vf = json_num(j, "val_fraction", p, Range::in_open(0, 1), 0.1);
        if (!data.empty() && data[0] != '/' && !file_exists(data)) {
            for (const char* up : {"/..", "/../.."})
                if (file_exists(opt.run_dir + up + "/" + data)) {
                    data = opt.run_dir + up + "/" + data;
                    break;
                }
        }
        if (!file_exists(data)) continue;
        std::string text = read_file(data);
        size_t start = (size_t)((1.0 - std::clamp(vf, 0.0, 1.0)) * (double)text.size());
        // Start at a line boundary so a char tokenizer sees whole lines.
        size_t nl = text.find('\n', start);
        if (nl != std::string::npos && nl + 1 < text.size()) start = nl + 1;
        *source = fmt::format("{} (validation split: the last {:.0f}%)", data, 100 * vf);
        // A fine-tuned run maps symbols its checkpoint's vocabulary lacks (docs/training.md).
        if (j.contains("unknown_symbol") && j["unknown_symbol"].is_string())
            *unknown_symbol = j["unknown_symbol"].get<std::string>();
        return text.substr(start, 64 * 1024);
    }
    return "";
}

std::vector<int32_t> probe_tokens(const ReportOptions& opt, const Tokenizer& tok,
                                  std::string* source) {
    std::string unknown_symbol;
    std::string text = find_probe_text(opt, source, &unknown_symbol);
    if (!unknown_symbol.empty() && !text.empty())
        text = map_unknown_symbols(text, tok, unknown_symbol, *source);
    std::vector<int32_t> ids;
    if (!text.empty()) {
        // A byte-level cut can split a UTF-8 symbol: trim until the tokenizer accepts the text.
        for (int tries = 0; tries < 4 && ids.empty(); tries++) {
            try {
                ids = tok.encode(text);
            } catch (const Error&) {
                if (text.size() < 8) break;
                text = text.substr(1, text.size() - 2);
            }
        }
        if (ids.empty())
            fail("probe text {}: the checkpoint's tokenizer cannot encode it", *source);
    } else {
        // No validation text known: a fixed pseudo-random token sequence still compares the
        // experts on identical inputs, and the report says that is what it used.
        Rng rng(1234);
        for (int i = 0; i < opt.probe_tokens; i++)
            ids.push_back((int32_t)rng.below((uint32_t)tok.vocab_size()));
        *source = "uniformly random tokens (no validation text found: pass --probe-text FILE)";
    }
    if ((int)ids.size() > opt.probe_tokens) ids.resize(opt.probe_tokens);
    return ids;
}

std::string pairs_text(const std::vector<SimilarPair>& pairs) {
    std::string s;
    for (size_t i = 0; i < pairs.size() && i < 12; i++)
        s += fmt::format("{}e{}–e{} ({:.2f})", i ? ", " : "", pairs[i].a, pairs[i].b, pairs[i].sim);
    if (pairs.size() > 12) s += fmt::format(" and {} more", pairs.size() - 12);
    return s;
}

std::vector<std::string> find_traces(const std::string& run_dir) {
    std::vector<std::string> out;
    auto scan = [&](const fs::path& dir, bool any_jsonl) {
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) return;
        for (auto& ent : fs::directory_iterator(dir, ec)) {
            std::string name = ent.path().filename().string();
            auto ends = [&](const std::string& suf) {
                return name.size() >= suf.size() &&
                       name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
            };
            if (ent.is_regular_file() && (ends(".trace.jsonl") || (any_jsonl && ends(".jsonl"))))
                out.push_back(ent.path().string());
        }
    };
    scan(run_dir, false);
    scan(fs::path(run_dir) / "traces", true);
    std::sort(out.begin(), out.end());
    return out;
}

// Experts per token (docs/report.md): a line per layer of the mean, and the pooled histogram over
// training, when the count varies; else one sentence with the constant.
void add_experts_per_token(Page& page, const std::vector<LayerSeries>& ls, int max_bins) {
    std::string& b = page.body;
    bool logged = false;
    for (auto& s : ls)
        for (double v : s.experts_mean) logged |= std::isfinite(v);
    if (!logged) return;  // a log from before the key existed
    if (!experts_per_token_varies(ls)) {
        double k = NAN;
        for (auto& s : ls)
            for (double v : s.experts_mean)
                if (std::isfinite(v)) k = v;
        b += fmt::format(
            "<p class=\"note\" id=\"experts-per-token\">Experts per token: {} on every token "
            "of every logged step (a fixed top-k without drops; not plotted).</p>\n",
            fmt_num(k, "{:.0f}"));
        return;
    }
    b += "<h3 id=\"experts-per-token\">Experts per token</h3>\n<div class=\"grid\">\n";
    Figure f = line_fig("experts-per-token", "mean experts per token", "experts / token");
    f.height = 260;
    double all = 0;
    int n = 0;
    for (auto& s : ls) {
        PlotSeries p;
        p.title = fmt::format("layer {}", s.layer);
        for (size_t i = 0; i < s.steps.size(); i++)
            if (std::isfinite(s.experts_mean[i])) {
                p.x.push_back((double)s.steps[i]);
                p.y.push_back(s.experts_mean[i]);
                all += s.experts_mean[i];
                n++;
            }
        f.series.push_back(p);
    }
    page.add(f, fmt::format("Mean number of experts each token ran on (kept token-slots) at each "
                            "logged step, per MoE layer; mean over the logged steps and layers: "
                            "{:.3f}. A dynamic router (top-p) spends more experts where it is "
                            "unsure; capacity drops lower it.",
                            n ? all / n : 0.0));
    page.add(experts_heatmap(ls, max_bins),
             "Share of tokens that ran on 0, 1, 2, ... experts, all MoE layers pooled, over "
             "training (columns: logged steps or bins of them). 0 = every slot of the token was "
             "dropped by capacity.");
    b += "</div>\n";
}

// Router stability (docs/precision.md): the largest |router logit| per layer at each logged
// step and the routing change between evaluations, beside the loss they may explain. Drawn only
// when the log has them (older logs do not).
void add_router_stability(Page& page, const std::vector<LayerSeries>& ls) {
    auto any_finite = [&](std::vector<double> LayerSeries::*field) {
        for (auto& s : ls)
            for (double v : s.*field)
                if (std::isfinite(v)) return true;
        return false;
    };
    const bool have_logit = any_finite(&LayerSeries::logit_max);
    const bool have_change = any_finite(&LayerSeries::routing_change);
    if (!have_logit && !have_change) return;
    auto per_layer = [&](Figure& f, std::vector<double> LayerSeries::*field, bool points) {
        for (auto& s : ls) {
            PlotSeries p;
            p.title = fmt::format("layer {}", s.layer);
            p.points = points;
            const std::vector<double>& v = s.*field;
            for (size_t i = 0; i < s.steps.size(); i++)
                if (std::isfinite(v[i])) {
                    p.x.push_back((double)s.steps[i]);
                    p.y.push_back(v[i]);
                }
            if (!p.x.empty()) f.series.push_back(p);
        }
    };
    page.body += "<h3 id=\"router-stability\">Router stability</h3>\n<div class=\"grid\">\n";
    if (have_logit) {
        Figure f = line_fig("router-logit-max", "max |router logit|", "largest |logit|");
        f.height = 260;
        per_layer(f, &LayerSeries::logit_max, false);
        page.add(f,
                 "Largest absolute raw router logit (before softmax) over the tokens and experts "
                 "of each logged training batch, per MoE layer. The z-loss holds it down; large "
                 "logits are where bf16 round-off in the router is amplified by the softmax.");
    }
    if (have_change) {
        Figure f = line_fig("routing-change", "routing change between evaluations",
                            "share of probe tokens");
        f.height = 260;
        per_layer(f, &LayerSeries::routing_change, true);
        page.add(f,
                 "Share of the tokens of a fixed probe batch (the first validation batch) whose "
                 "top-1 expert changed since the previous evaluation, per MoE layer. High late in "
                 "training = routing that keeps flipping (unstable); near 0 = settled routing.");
    }
    page.body += "</div>\n";
}

}  // namespace

ReportResult run_report(const ReportOptions& opt_in) {
    ReportOptions opt = opt_in;
    MetricsLog log = read_metrics(opt.run_dir);
    // Inputs checked before the output folder is made: a refused run leaves nothing behind.
    if (!opt.probe_text.empty()) check_readable_file(opt.probe_text);
    std::string gnuplot = find_gnuplot();
    if (opt.out.empty()) opt.out = opt.run_dir + "/report/report.html";
    fs::path out_path(opt.out);
    std::string out_dir = out_path.has_parent_path() ? out_path.parent_path().string() : ".";
    make_dirs(out_dir);

    ReportResult res;
    res.html = opt.out;
    res.lines_used = log.lines_used;
    res.lines_skipped = log.lines_skipped;
    if (log.lines_skipped > 0)
        res.warnings.push_back(fmt::format(
            "{}: skipped {} line(s) that were not complete metrics records ({}); the report uses "
            "the {} complete line(s)",
            log.path, log.lines_skipped, log.skipped.empty() ? "" : log.skipped[0],
            log.lines_used));

    Page page;
    std::string& b = page.body;
    std::vector<int> layers = log.moe_layers();
    std::vector<LayerSeries> ls;
    for (int l : layers) ls.push_back(layer_series(log, l));

    // ---- training curves
    b += "<h2 id=\"training\">Training</h2>\n<div class=\"grid\">\n";
    {
        Figure f = line_fig("loss", "loss", "cross-entropy (nats)");
        f.series.push_back(
            series_of(log, "train", [](const MetricsRow& r) { return r.train_loss; }));
        PlotSeries v = series_of(log, "validation", [](const MetricsRow& r) { return r.val_loss; });
        v.points = true;
        f.series.push_back(v);
        // eval_also (fine-tuning): the second corpus' validation loss beside the main one.
        bool have_also = false;
        for (auto& r : log.rows) have_also |= r.scalars.count("eval_also_loss") > 0;
        if (have_also) {
            PlotSeries a = series_of(log, "validation (eval_also corpus)", [](const MetricsRow& r) {
                auto it = r.scalars.find("eval_also_loss");
                return it == r.scalars.end() ? NAN : it->second;
            });
            a.points = true;
            f.series.push_back(a);
        }
        page.add(f,
                 std::string("Training loss of each logged batch and validation loss at each "
                             "evaluation (mean cross-entropy, aux losses not included).") +
                     (have_also ? " The eval_also series is the validation split of the second "
                                  "corpus (train_config.json names it): when fine-tuning, what "
                                  "happens to the other domain (forgetting)."
                                : ""));
    }
    {
        Figure f = line_fig("lr", "learning rate", "learning rate");
        f.height = 260;
        f.series.push_back(series_of(log, "lr", [](const MetricsRow& r) { return r.lr; }));
        page.add(f, "Learning rate used at each step (warm-up, then the schedule).");
        Figure t = line_fig("tokens-per-s", "training throughput", "tokens/s");
        t.height = 260;
        t.series.push_back(
            series_of(log, "tokens/s", [](const MetricsRow& r) { return r.tokens_per_s; }));
        page.add(t, "Training tokens per second over each logging interval.");
        bool have_gnorm = false;
        for (auto& r : log.rows) have_gnorm |= r.scalars.count("grad_norm") > 0;
        if (have_gnorm) {
            Figure g = line_fig("grad-norm", "gradient norm (before clipping)", "global L2 norm");
            g.height = 260;
            g.series.push_back(series_of(log, "grad norm", [](const MetricsRow& r) {
                auto it = r.scalars.find("grad_norm");
                return it == r.scalars.end() ? NAN : it->second;
            }));
            page.add(g,
                     "Global gradient norm of each logged step; spikes often come with "
                     "routing changes.");
        }
    }
    b += "</div>\n";
    add_router_stability(page, ls);

    // Aux losses: small multiples, one per loss (their scales differ by orders of magnitude).
    std::vector<std::string> aux_keys, aux_zero;
    for (auto& r : log.rows)
        for (auto& kv : r.scalars)
            if (kv.first.rfind("aux_", 0) == 0 &&
                std::find(aux_keys.begin(), aux_keys.end(), kv.first) == aux_keys.end())
                aux_keys.push_back(kv.first);
    std::sort(aux_keys.begin(), aux_keys.end());
    if (!aux_keys.empty())
        b += "<h3>Auxiliary (balancing) losses</h3>\n<div class=\"grid small\">\n";
    for (auto& key : aux_keys) {
        PlotSeries s;
        s.title = key;
        bool nonzero = false;
        for (auto& r : log.rows) {
            auto it = r.scalars.find(key);
            if (it != r.scalars.end() && std::isfinite(it->second)) {
                s.x.push_back((double)r.step);
                s.y.push_back(it->second);
                nonzero |= it->second != 0;
            }
        }
        if (!nonzero) {  // a flat zero line says nothing a sentence cannot
            aux_zero.push_back(key);
            continue;
        }
        Figure f = line_fig("aux-" + key.substr(4), key, "loss");
        f.width = 480;
        f.height = 260;
        f.series.push_back(s);
        page.add(f, fmt::format("<code>{}</code> over steps, weighted and summed over MoE layers "
                                "(docs/metrics.md).",
                                html_escape(key)));
    }
    if (!aux_keys.empty()) b += "</div>\n";
    if (!aux_zero.empty())
        b += fmt::format("<p class=\"note\">Always 0 in this run (not plotted): {}.</p>\n",
                         html_escape(fmt::format("{}", fmt::join(aux_zero, ", "))));

    // ---- routing per MoE layer
    b += "<h2 id=\"routing\">Routing</h2>\n";
    if (layers.empty()) {
        b += "<p class=\"note\">No per-layer routing statistics in metrics.jsonl (a dense model, "
             "or a trainer that did not log <code>layers</code>).</p>\n";
    } else {
        std::string warn_html;
        auto add_warning = [&](const std::string& w) {  // one line in the page, one in the result
            warn_html += "<div class=\"warn\">&#9888; " + html_escape(w) + "</div>\n";
            res.warnings.push_back(w);
        };
        for (auto& s : ls) {
            if (s.E == 0 || s.steps.empty()) continue;
            double near_zero = opt.collapse_share / s.E;
            double max_share = std::max(opt.dominance_share, 1.5 / s.E);
            for (auto& ev : find_collapses(s.steps, s.shares, near_zero, opt.collapse_steps)) {
                std::string w = fmt::format(
                    "layer {}: expert {} collapsed: load share below {:.4f} for {} logged steps "
                    "(steps {}–{}{}, mean share {:.4f})",
                    s.layer, ev.expert, near_zero, ev.n_steps, ev.first_step, ev.last_step,
                    ev.last_step == s.steps.back() ? ", still at the end" : "", ev.mean_share);
                add_warning(w);
            }
            for (auto& ev : find_dominance(s.steps, s.shares, max_share, opt.dominance_steps)) {
                std::string w = fmt::format(
                    "layer {}: expert {} dominated: load share above {:.2f} for {} logged steps "
                    "(steps {}–{}{}, mean share {:.2f})",
                    s.layer, ev.expert, max_share, ev.n_steps, ev.first_step, ev.last_step,
                    ev.last_step == s.steps.back() ? ", still at the end" : "", ev.mean_share);
                add_warning(w);
            }
        }
        if (warn_html.empty())
            warn_html = fmt::format(
                "<div class=\"ok\">No expert collapsed (share &lt; {} / E for {} logged steps) and "
                "none dominated (share &gt; max({}, 1.5 / E) for {} logged steps).</div>\n",
                opt.collapse_share, opt.collapse_steps, opt.dominance_share, opt.dominance_steps);
        b += warn_html;
        // The state at the last logged step, one row per layer: the at-a-glance summary.
        b += "<table class=\"summary\" id=\"layer-summary\"><tr><th>layer</th><th>experts</th>"
             "<th>last step</th><th>least-used expert</th><th>most-used expert</th>"
             "<th>load CV</th><th>router entropy / log E</th><th>mean top-1 weight</th>"
             "<th>dropped</th></tr>\n";
        for (auto& s : ls) {
            if (s.E == 0 || s.steps.empty()) continue;
            const std::vector<double>& sh = s.shares.back();
            int lo = (int)(std::min_element(sh.begin(), sh.end()) - sh.begin());
            int hi = (int)(std::max_element(sh.begin(), sh.end()) - sh.begin());
            double ent = s.entropy.back();
            b += fmt::format(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>e{} ({:.1f}%)</td><td>e{} ({:.1f}%)</td>"
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                s.layer, s.E, s.steps.back(), lo, 100 * sh[lo], hi, 100 * sh[hi],
                fmt_num(s.cv.back(), "{:.3f}"),
                s.E > 1 && std::isfinite(ent) ? fmt::format("{:.3f}", ent / std::log(s.E)) : "–",
                fmt_num(s.top1.back(), "{:.3f}"),
                std::isfinite(s.drop_rate.back()) ? fmt::format("{:.2f}%", 100 * s.drop_rate.back())
                                                  : "–");
        }
        b += "</table>\n";
        b += "<h3>Expert load over time</h3>\n<div class=\"grid\">\n";
        for (auto& s : ls) {
            if (s.E == 0 || s.steps.empty()) continue;
            page.add(load_heatmap(s, opt.max_heatmap_steps),
                     fmt::format("Layer {}: each row is an expert, each column a logged step "
                                 "(or a bin of steps); colour = the expert's share of the "
                                 "token-slots. Balanced = every row near {:.3f}; a white row is a "
                                 "starved expert, a dark row one that takes too much.",
                                 s.layer, 1.0 / s.E));
        }
        b += "</div>\n<h3>Routing statistics per layer</h3>\n<div class=\"grid\">\n";
        struct Stat {
            const char* id;
            const char* title;
            const char* ylabel;
            std::vector<double> LayerSeries::*field;
            const char* caption;
        };
        const Stat stats[] = {
            {"dropped", "dropped token-slots", "dropped / routed", &LayerSeries::drop_rate,
             "Share of token-slots dropped by expert capacity (0 for dropless layers); a dropped "
             "slot adds nothing and the residual carries the token through."},
            {"load-cv", "load imbalance (CV)", "std / mean of tokens per expert", &LayerSeries::cv,
             "Coefficient of variation of the tokens per expert (population std / mean): 0 is "
             "perfectly balanced; sqrt(E-1) is everything on one expert."},
            {"entropy", "router entropy", "nats", &LayerSeries::entropy,
             "Mean over tokens of the entropy of the router's probabilities; the dashed line is "
             "log E (a uniform router). Falling entropy = a more decided router."},
            {"top1", "mean top-1 weight", "weight", &LayerSeries::top1,
             "Mean over tokens of the largest combine weight: near 1/k the router hedges, near 1 "
             "it commits to one expert."},
        };
        int maxE = 0;
        for (auto& s : ls) maxE = std::max(maxE, s.E);
        for (const Stat& st : stats) {
            Figure f = line_fig(st.id, st.title, st.ylabel);
            f.height = 260;
            for (auto& s : ls) {
                PlotSeries p;
                p.title = fmt::format("layer {}", s.layer);
                const std::vector<double>& v = s.*(st.field);
                for (size_t i = 0; i < s.steps.size(); i++) {
                    p.x.push_back((double)s.steps[i]);
                    p.y.push_back(v[i]);
                }
                f.series.push_back(p);
            }
            if (std::string(st.id) == "entropy" && maxE > 0) f.hlines.push_back(std::log(maxE));
            page.add(f, st.caption);
        }
        b += "</div>\n";
        add_experts_per_token(page, ls, opt.max_heatmap_steps);
    }

    // ---- expert similarity (needs the checkpoint)
    b += "<h2 id=\"similarity\">Expert similarity</h2>\n";
    std::string why_not;
    if (!opt.similarity) {
        why_not = "skipped (--no-similarity).";
    } else {
        std::string ckpt;
        try {
            ckpt = resolve_checkpoint_dir(opt.run_dir);
        } catch (const Error& e) {
            why_not = fmt::format("no checkpoint in {}, so this section is skipped ({}).",
                                  opt.run_dir, e.what());
        }
        LoadedModel lm;
        if (!ckpt.empty()) {
            // A broken checkpoint must not cost the user the rest of the report.
            try {
                lm = load_model(ckpt);
            } catch (const Error& e) {
                why_not = fmt::format(
                    "the checkpoint could not be loaded, so this section is "
                    "skipped: {}",
                    e.what());
                res.warnings.push_back(why_not);
            }
        }
        if (lm.model) {
            res.checkpoint = lm.dir;
            std::string source;
            std::vector<int32_t> probe = probe_tokens(opt, *lm.tokenizer, &source);
            auto sims = expert_similarity(*lm.model, probe);
            const ModelConfig& mc = lm.model->config();
            b += fmt::format(
                "<p class=\"sub\">Checkpoint <code>{}</code>: {} layers, d={}, {} experts, top-{}, "
                "router {}. Probe: {} tokens from {}. Weight similarity compares the flattened "
                "expert weights (independent random inits give about 0); output similarity "
                "compares the experts' outputs on the same probe inputs (every expert on every "
                "probe token), which is what matters for redundancy. Pairs above {} are named "
                "redundant.</p>\n",
                html_escape(lm.dir), mc.n_layers, mc.d_model, mc.moe.n_experts, mc.moe.top_k,
                html_escape(mc.moe.router), probe.size(), html_escape(source), opt.redundant);
            if (sims.empty()) b += "<p class=\"note\">The model has no MoE layer.</p>\n";
            for (auto& s : sims) {
                auto pw = redundant_pairs(s.weight_sim, s.n_experts, opt.redundant);
                auto po = redundant_pairs(s.output_sim, s.n_experts, opt.redundant);
                b += fmt::format("<h3>layer {}</h3>\n", s.layer);
                if (pw.empty() && po.empty()) {
                    b +=
                        fmt::format("<div class=\"ok\">No redundant pair (cosine &gt; {}).</div>\n",
                                    opt.redundant);
                } else {
                    if (!po.empty()) {
                        std::string w = fmt::format("layer {}: redundant experts by output: {}",
                                                    s.layer, pairs_text(po));
                        b += "<div class=\"warn\">&#9888; " + html_escape(w) + "</div>\n";
                        res.warnings.push_back(w);
                    }
                    if (!pw.empty()) {
                        std::string w = fmt::format("layer {}: redundant experts by weights: {}",
                                                    s.layer, pairs_text(pw));
                        b += "<div class=\"warn\">&#9888; " + html_escape(w) + "</div>\n";
                        res.warnings.push_back(w);
                    }
                }
                b += "<div class=\"grid\">\n";
                page.add(sim_heatmap(fmt::format("layer{}-weight-sim", s.layer),
                                     fmt::format("layer {}: cosine of expert weights", s.layer),
                                     s.weight_sim, s.n_experts),
                         "Cosine similarity of the experts' flattened weights (w1, w3, w2).");
                page.add(sim_heatmap(fmt::format("layer{}-output-sim", s.layer),
                                     fmt::format("layer {}: cosine of expert outputs", s.layer),
                                     s.output_sim, s.n_experts),
                         fmt::format("Cosine similarity of the experts' outputs on the {} probe "
                                     "tokens (all outputs of one expert as one vector).",
                                     s.probe_rows));
                b += "</div>\n";
            }
        }
    }
    if (!why_not.empty()) {
        res.similarity_note = why_not;
        b += "<p class=\"note\">" + html_escape(why_not) + "</p>\n";
    }

    // ---- routing traces from generation
    std::vector<std::string> traces = find_traces(opt.run_dir);
    if (!traces.empty()) {
        b += "<h2 id=\"traces\">Routing traces (moe generate --trace)</h2>\n";
        for (auto& t : traces) {
            int skipped = 0;
            std::vector<TokenRouting> tr;
            try {
                tr = read_trace(t, &skipped);
            } catch (const Error& e) {
                b += "<div class=\"warn\">" + html_escape(e.what()) + "</div>\n";
                res.warnings.push_back(e.what());
                continue;
            }
            res.n_traces++;
            size_t shown = std::min<size_t>(tr.size(), 1500);
            b +=
                fmt::format("<h3><code>{}</code></h3>\n<p class=\"sub\">{} tokens{}{}.</p>\n",
                            html_escape(fs::path(t).filename().string()), tr.size(),
                            shown < tr.size() ? fmt::format(", the first {} shown", shown) : "",
                            skipped ? fmt::format(", {} incomplete line(s) skipped", skipped) : "");
            tr.resize(shown);
            b += routing_html_body(tr, -1);
        }
    }

    // ---- render and assemble
    auto rendered = report::render_figures(page.figs, out_dir, gnuplot);
    std::string body = page.body;
    for (auto& f : page.figs) {
        std::string key = "@@FIG:" + f.id + "@@";
        size_t p = body.find(key);
        MOE_CHECK(p != std::string::npos, "figure {} has no place in the page", f.id);
        body.replace(p, key.size(), rendered.at(f.id).svg);
        res.pngs.push_back(rendered.at(f.id).png);
    }

    // Header: what run, how much of it, what went wrong.
    std::string head = report::page_begin("moe.cpp report: " + opt.run_dir);
    head += "<h1>moe.cpp training report</h1>\n";
    std::time_t now = std::time(nullptr);
    char when[64];
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M", std::localtime(&now));
    head += fmt::format(
        "<p class=\"sub\">Run <code>{}</code> &middot; generated {} &middot; "
        "figures drawn by gnuplot; PNG copies beside this file.</p>\n",
        html_escape(opt.run_dir), when);
    std::vector<double> tl, vl, tps, el;
    int64_t best_val_step = -1;
    double best_val = INFINITY;
    for (auto& r : log.rows) {
        tl.push_back(r.train_loss);
        vl.push_back(r.val_loss);
        tps.push_back(r.tokens_per_s);
        el.push_back(r.elapsed_s);
        if (std::isfinite(r.val_loss) && r.val_loss < best_val)
            best_val = r.val_loss, best_val_step = r.step;
    }
    std::vector<double> tps_f;
    for (double v : tps)
        if (std::isfinite(v)) tps_f.push_back(v);
    double tps_med = NAN;
    if (!tps_f.empty()) {
        std::sort(tps_f.begin(), tps_f.end());
        tps_med = tps_f[tps_f.size() / 2];
    }
    head += "<table class=\"summary\">\n";
    head += fmt::format("<tr><th class=\"l\">metrics lines</th><td>{} used, {} skipped</td></tr>\n",
                        log.lines_used, log.lines_skipped);
    head += fmt::format("<tr><th class=\"l\">steps logged</th><td>{} – {}</td></tr>\n",
                        log.rows.front().step, log.rows.back().step);
    head += fmt::format("<tr><th class=\"l\">last train loss</th><td>{}</td></tr>\n",
                        fmt_num(last_finite(tl)));
    head += fmt::format("<tr><th class=\"l\">best validation loss</th><td>{}{}</td></tr>\n",
                        fmt_num(std::isfinite(best_val) ? best_val : NAN),
                        best_val_step >= 0 ? fmt::format(" (step {})", best_val_step) : "");
    head += fmt::format("<tr><th class=\"l\">median tokens/s</th><td>{}</td></tr>\n",
                        fmt_num(tps_med, "{:.0f}"));
    head += fmt::format("<tr><th class=\"l\">training time</th><td>{} s</td></tr>\n",
                        fmt_num(last_finite(el), "{:.1f}"));
    head += fmt::format("<tr><th class=\"l\">MoE layers in metrics</th><td>{}</td></tr>\n",
                        layers.size());
    // Fine-tuning runs: what was frozen (frozen.json, written by moe train).
    if (file_exists(opt.run_dir + "/frozen.json")) {
        nlohmann::json fz = nlohmann::json::parse(read_file(opt.run_dir + "/frozen.json"), nullptr, false);
        if (fz.is_object() && fz.value("freeze", std::string()) != "")
            head += fmt::format(
                "<tr><th class=\"l\">frozen</th><td>{}: {} tensors, {} of {} params trainable"
                "</td></tr>\n",
                html_escape(fz.value("freeze", std::string())),
                fz.contains("frozen_tensors") ? fz["frozen_tensors"].size() : 0,
                fz.value("trainable_params", (int64_t)0), fz.value("n_params", (int64_t)0));
        if (fz.is_object() && fz.value("init_from", std::string()) != "")
            head += fmt::format("<tr><th class=\"l\">init from</th><td>{}</td></tr>\n",
                                html_escape(fz.value("init_from", std::string())));
        if (fz.is_object() && fz.value("upcycle_from", std::string()) != "")
            head += fmt::format("<tr><th class=\"l\">upcycled from</th><td>{}</td></tr>\n",
                                html_escape(fz.value("upcycle_from", std::string())));
    }
    head += "</table>\n";
    if (log.lines_skipped > 0) {
        head += fmt::format(
            "<div class=\"warn\">&#9888; Skipped {} incomplete or corrupt line(s) "
            "of metrics.jsonl; the figures use the {} complete ones.<br><small>{}"
            "</small></div>\n",
            log.lines_skipped, log.lines_used,
            html_escape(fmt::format("{}", fmt::join(log.skipped, "; "))));
    }
    head +=
        "<p><a href=\"#training\">Training</a> &middot; <a href=\"#routing\">Routing</a> "
        "&middot; <a href=\"#similarity\">Expert similarity</a>";
    if (res.n_traces) head += " &middot; <a href=\"#traces\">Traces</a>";
    head += "</p>\n";

    write_file_atomic(opt.out, head + body + report::page_end());
    return res;
}

}  // namespace moe
