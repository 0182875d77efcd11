// Reading metrics.jsonl and routing traces back (docs/metrics.md). A run killed mid-write leaves
// a truncated last line, so a bad line is skipped and counted, never fatal: the report says how
// many it skipped.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

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
    return it->get<double>();
}

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
static bool is_count(double x) { return std::isfinite(x) && std::fabs(x) < 9.2e18; }

static LayerMetrics parse_layer(const json& l) {
    LayerMetrics m;
    if (!l.is_object()) throw std::runtime_error("a layers entry is not an object");
    if (!l.contains("layer") || !l["layer"].is_number_integer())
        throw std::runtime_error("a layers entry has no integer \"layer\"");
    m.layer = l["layer"].get<int>();
    if (l.contains("tokens_per_expert")) {
        const json& t = l["tokens_per_expert"];
        if (!t.is_array()) throw std::runtime_error("tokens_per_expert is not an array");
        for (auto& v : t) {
            if (!v.is_number() || !is_count(v.get<double>()))
                throw std::runtime_error("tokens_per_expert has a value that is not a count");
            m.tokens_per_expert.push_back((int64_t)v.get<double>());
        }
    }
    double d = num_or_nan(l, "dropped"), r = num_or_nan(l, "routed");
    m.dropped = is_count(d) ? (int64_t)d : 0;
    m.routed = is_count(r) ? (int64_t)r : 0;
    m.load_cv = num_or_nan(l, "load_cv");
    m.router_entropy = num_or_nan(l, "router_entropy");
    m.mean_top1_weight = num_or_nan(l, "mean_top1_weight");
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
        if (!j.contains("step") || !j["step"].is_number_integer())
            return skip("no integer \"step\"");
        MetricsRow r;
        r.step = j["step"].get<int64_t>();
        r.lr = num_or_nan(j, "lr");
        r.train_loss = num_or_nan(j, "train_loss");
        r.val_loss = num_or_nan(j, "val_loss");
        r.tokens_per_s = num_or_nan(j, "tokens_per_s");
        r.elapsed_s = num_or_nan(j, "elapsed_s");
        for (auto it = j.begin(); it != j.end(); ++it)
            if (it->is_number() && it.key() != "step") r.scalars[it.key()] = it->get<double>();
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
    if (!dir_exists(run_dir)) fail("{}: no such run folder", run_dir);
    if (!file_exists(path))
        fail(
            "{}: no metrics.jsonl in this folder; `moe report` needs a run folder written by "
            "`moe train --out {}`",
            path, run_dir);
    return parse_metrics(read_file(path), path);
}

// Ids in a trace: tokens below 2^22 and experts below 1024 (far above any model here), so no
// id + 1 overflows and what `moe inspect` sizes from them stays small: its tables and its output
// (one row per expert: a trace naming expert 32511 made a 1 kB trace print megabytes, slowly).
static constexpr int64_t kMaxTraceToken = 1 << 22, kMaxTraceExpert = 1 << 10;

// An optional integer key of a trace line: absent -> def; else an integer in [0, limit).
static bool trace_int(const json& o, const char* key, int64_t def, int64_t limit, int64_t* out) {
    auto it = o.find(key);
    if (it == o.end()) {
        *out = def;
        return true;
    }
    if (!it->is_number_integer() ||
        (it->is_number_unsigned() && it->get<uint64_t>() >= (uint64_t)limit))
        return false;
    *out = it->get<int64_t>();
    return *out >= 0 && *out < limit;
}

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
        int64_t pos, token;
        if (!trace_int(j, "pos", (int64_t)out.size(), INT32_MAX, &pos))
            return skip("\"pos\" is not an integer in [0, 2^31)");
        if (!trace_int(j, "token", -1, kMaxTraceToken, &token))
            return skip("\"token\" is not an integer in [0, 2^22)");
        t.pos = (int)pos;
        t.token = (int32_t)token;
        t.text = j.contains("text") && j["text"].is_string() ? j["text"].get<std::string>() : "";
        for (auto& l : j["layers"]) {
            if (!l.is_object() || !l.contains("experts") || !l["experts"].is_array())
                return skip("a layer without \"experts\"");
            LayerChoice c;
            int64_t layer;
            if (!trace_int(l, "layer", (int64_t)t.layers.size(), INT32_MAX, &layer))
                return skip("a \"layer\" is not an integer in [0, 2^31)");
            c.layer = (int)layer;
            std::vector<std::pair<float, int>> ew;
            const json& ws =
                l.contains("weights") && l["weights"].is_array() ? l["weights"] : json::array();
            for (size_t i = 0; i < l["experts"].size(); i++) {
                const json& ej = l["experts"][i];
                if (!ej.is_number_integer() || ej.get<int64_t>() < 0 ||
                    ej.get<uint64_t>() >= (uint64_t)kMaxTraceExpert)
                    return skip("an expert is not an integer in [0, 1024)");
                float w = i < ws.size() && ws[i].is_number() ? ws[i].get<float>() : NAN;
                ew.push_back({w, ej.get<int>()});
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
    if (!file_exists(path)) fail("{}: trace file not found", path);
    return parse_trace(read_file(path), path, skipped);
}

}  // namespace moe
