// Reading metrics.jsonl and routing traces back (docs/metrics.md). A run killed mid-write leaves
// a truncated last line, so a bad line is skipped and counted, never fatal: the report says how
// many it skipped.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "moe/checked.h"
#include "moe/error.h"
#include "moe/file_io.h"
#include "moe/report.h"

namespace moe {

using json = nlohmann::json;

std::vector<int> MetricsLog::moe_layers() const {
    std::set<int> s;
    for (auto& r : rows)
        for (auto& l : r.layers) s.insert(l.layer);
    return {s.begin(), s.end()};
}

static double num_or_nan(const json& j, const char* key) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number()) return NAN;
    double x = it->get<double>();
    return std::isfinite(x) ? x : NAN;
}

// Ranges of what a metrics line or a trace line may hold (checked with include/moe/checked.h;
// a value outside makes the line skipped, with the reason).
static const Range kStepRange = Range::in(0, 1e15), kLayerRange = Range::in(0, 1023),
                   kExpertRange = Range::in(0, 65535), kTokenRange = Range::in(-1, (1 << 24) - 1),
                   kPosRange = Range::in(0, 1e12), kCountRange = Range::in(0, 1e15);

// Splits into lines, calling fn(line_number, line, ends_with_newline) for each non-blank one.
template <typename Fn>
static void for_each_line(const std::string& text, Fn fn) {
    size_t pos = 0;
    int lineno = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        bool complete = nl != std::string::npos;
        size_t end = complete ? nl : text.size();
        lineno++;
        std::string line = text.substr(pos, end - pos);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") != std::string::npos) fn(lineno, line, complete);
        pos = end + 1;
    }
}

// A count logged as a JSON number: finite and inside int64 (a cast from outside is undefined).

static LayerMetrics parse_layer(const json& l) {
    LayerMetrics m;
    if (!l.is_object()) throw std::runtime_error("a layers entry is not an object");
    if (!l.contains("layer")) throw std::runtime_error("a layers entry has no \"layer\"");
    m.layer = (int)checked_int(l["layer"], "\"layer\"", kLayerRange);
    if (l.contains("tokens_per_expert")) {
        const json& t = l["tokens_per_expert"];
        if (!t.is_array()) throw std::runtime_error("tokens_per_expert is not an array");
        for (auto& v : t) {
            if (m.tokens_per_expert.size() > (size_t)kExpertRange.hi)
                throw std::runtime_error("tokens_per_expert has too many entries");
            m.tokens_per_expert.push_back(checked_int(v, "tokens_per_expert", kCountRange));
        }
    }
    double d = num_or_nan(l, "dropped"), r = num_or_nan(l, "routed");
    m.dropped = kCountRange.contains(d) ? (int64_t)d : 0;
    m.routed = kCountRange.contains(r) ? (int64_t)r : 0;
    m.load_cv = num_or_nan(l, "load_cv");
    m.router_entropy = num_or_nan(l, "router_entropy");
    m.mean_top1_weight = num_or_nan(l, "mean_top1_weight");
    m.router_logit_max = num_or_nan(l, "router_logit_max");
    m.routing_change = num_or_nan(l, "routing_change");
    if (l.contains("experts_per_token")) {
        const json& e = l["experts_per_token"];
        if (!e.is_object()) throw std::runtime_error("experts_per_token is not an object");
        m.experts_per_token_mean = num_or_nan(e, "mean");
        if (e.contains("histogram")) {
            const json& h = e["histogram"];
            if (!h.is_array()) throw std::runtime_error("experts_per_token.histogram is not an array");
            if (h.size() > 4096) throw std::runtime_error("experts_per_token.histogram is too long");
            for (auto& v : h) {
                if (!v.is_number()) throw std::runtime_error("experts_per_token has a non-number");
                m.experts_per_token.push_back((int64_t)v.get<double>());
            }
        }
    }
    return m;
}

MetricsLog parse_metrics(const std::string& text, const std::string& where) {
    MetricsLog log;
    log.path = where;
    for_each_line(text, [&](int lineno, const std::string& line, bool complete) {
        auto skip = [&](const std::string& why) {
            log.lines_skipped++;
            if (log.skipped.size() < 20)
                log.skipped.push_back(fmt::format("line {}: {}{}", lineno, why,
                                                  complete ? ""
                                                           : " (last line, no newline: "
                                                             "truncated write?)"));
        };
        json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded()) return skip("not valid JSON");
        if (!j.is_object()) return skip("not a JSON object");
        if (!j.contains("step")) return skip("no integer \"step\"");
        MetricsRow r;
        try {
            r.step = checked_int(j["step"], "\"step\"", kStepRange);
        } catch (const Error& e) {
            return skip(e.what());
        }
        r.lr = num_or_nan(j, "lr");
        r.train_loss = num_or_nan(j, "train_loss");
        r.val_loss = num_or_nan(j, "val_loss");
        r.tokens_per_s = num_or_nan(j, "tokens_per_s");
        r.elapsed_s = num_or_nan(j, "elapsed_s");
        for (auto it = j.begin(); it != j.end(); ++it)
            if (it->is_number() && it.key() != "step")
                r.scalars[it.key()] = num_or_nan(j, it.key().c_str());
        if (j.contains("layers")) {
            if (!j["layers"].is_array()) return skip("\"layers\" is not an array");
            try {
                for (auto& l : j["layers"]) r.layers.push_back(parse_layer(l));
            } catch (const std::exception& e) {
                return skip(e.what());
            }
        }
        log.rows.push_back(std::move(r));
        log.lines_used++;
    });
    if (log.rows.empty()) {
        std::string why = log.skipped.empty() ? "the file is empty" : log.skipped[0];
        fail(
            "{}: no usable metrics line ({} skipped; {}). Is this the metrics.jsonl of a `moe "
            "train` run?",
            where, log.lines_skipped, why);
    }
    return log;
}

MetricsLog read_metrics(const std::string& run_dir) {
    std::string path = run_dir + "/metrics.jsonl";
    if (!dir_exists(run_dir))
        fail("{}: no such run folder; give a run folder written by `moe train`", run_dir);
    if (!file_exists(path))
        fail(
            "{}: no metrics.jsonl in this folder; `moe report` needs a run folder written by "
            "`moe train --out {}`",
            path, run_dir);
    return parse_metrics(read_file(path), path);
}

// Experts in a trace are below 1024 (far above any model here), so what `moe inspect` sizes from
// them stays small: its tables and its output (one row per expert: a trace naming expert 32511
// made a 1 kB trace print megabytes, slowly).
static const Range kTraceExpertRange = Range::in(0, 1023);

std::vector<TokenRouting> parse_trace(const std::string& text, const std::string& where,
                                      int* skipped) {
    std::vector<TokenRouting> out;
    int n_skipped = 0;
    std::string first_why;
    for_each_line(text, [&](int lineno, const std::string& line, bool complete) {
        auto skip = [&](const std::string& why) {
            if (first_why.empty()) first_why = fmt::format("line {}: {}", lineno, why);
            n_skipped++;
        };
        json j = json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object()) return skip("not a JSON object");
        if (!j.contains("layers") || !j["layers"].is_array()) return skip("no \"layers\" array");
        TokenRouting t;
        try {
            t.pos = (int)json_int(j, "pos", "", kPosRange, (int64_t)out.size());
            t.token = (int)json_int(j, "token", "", kTokenRange, -1);
        } catch (const Error& e) {
            return skip(e.what());
        }
        t.text = j.contains("text") && j["text"].is_string() ? j["text"].get<std::string>() : "";
        if (j["layers"].size() > (size_t)kLayerRange.hi) return skip("too many layers");
        for (auto& l : j["layers"]) {
            if (!l.is_object() || !l.contains("experts") || !l["experts"].is_array())
                return skip("a layer without \"experts\"");
            if (l["experts"].size() > (size_t)kExpertRange.hi) return skip("too many experts");
            LayerChoice c;
            std::vector<std::pair<float, int>> ew;
            try {
                c.layer = (int)json_int(l, "layer", "", kLayerRange, (int64_t)t.layers.size());
                const json& ws = l.contains("weights") ? l["weights"] : json::array();
                for (size_t i = 0; i < l["experts"].size(); i++) {
                    int e = (int)checked_int(l["experts"][i], "an expert", kTraceExpertRange);
                    float w = ws.is_array() && i < ws.size()
                                  ? (float)checked_num(ws[i], "a weight", Range::in(-1e30, 1e30))
                                  : NAN;
                    ew.push_back({w, e});
                }
            } catch (const Error& e) {
                return skip(e.what());
            }
            std::stable_sort(ew.begin(), ew.end(),
                             [](auto& a, auto& b) { return a.first > b.first; });
            for (auto& [w, e] : ew) {
                c.experts.push_back(e);
                c.weights.push_back(w);
                c.kept.push_back(1);
            }
            t.layers.push_back(std::move(c));
        }
        out.push_back(std::move(t));
    });
    if (skipped) *skipped = n_skipped;
    if (out.empty())
        fail("{}: no usable trace line ({} skipped{}{}); expected `moe generate --trace` output",
             where, n_skipped, first_why.empty() ? "" : "; ", first_why);
    return out;
}

std::vector<TokenRouting> read_trace(const std::string& path, int* skipped) {
    return parse_trace(read_file(path), path, skipped);
}

}  // namespace moe
